// Shared by quantize_cuda.cu and dequantize_cuda.cu: host-side device facts and checks,
// source / destination element access, x86-faithful NaN products, a fast divisor, and the
// flag words through which kernels report the first bad element (or block, or group). The
// runtime checks, device scope, device facts and divisor are cuda/cuda_kernel_common.cuh's,
// shared with convert_cuda.cu and named here for the files that use them as quant_cuda's.
//
// Everything here keeps the reference's bits: conversions go through numeric.hpp's
// integer rules (or hardware conversions that are exact), and every f32 operation is one
// IEEE round-to-nearest-even operation (the library is built without --use_fast_math, so
// '/' is div.rn and denormals are kept; where a product feeds an addition we spell the
// operations out with __fmul_rn / __fadd_rn so that nvcc cannot contract them into an FMA).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_kernel_common.cuh"
#include "formats/quant_math.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"

namespace lowbit::quant_cuda {

using numeric_detail::bits_of;
using numeric_detail::float_of;

// ---- host: errors, devices, launches ----------------------------------------------------

using cuda_common::check_cuda;
using cuda_common::SmemOptIn;

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw_error(ErrorCode::device_error, std::string("launching ") + what + ": " +
                                             cudaGetErrorName(err) + " (" +
                                             cudaGetErrorString(err) + ")");
}

using cuda_common::device_facts;
using cuda_common::DeviceFacts;
using cuda_common::DeviceScope;

/// Blocks of `kernel` (with `threads` threads and `smem` bytes of dynamic shared memory, opted
/// in before the first call) that the device keeps resident, times SMs: the grid of a
/// grid-stride kernel. The occupancy query is cached per kernel, block size and shared memory
/// (every device of one process is assumed to share the arch this build targets).
template <class Kernel>
uint32_t resident_grid(Kernel kernel, int threads, int multiprocessors, int smem = 0) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> cache;
  const std::tuple<const void*, int, int> key{reinterpret_cast<const void*>(kernel), threads, smem};
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) per_sm = it->second;
  }
  if (per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) !=
            cudaSuccess ||
        per_sm < 1) {
      cudaGetLastError();
      per_sm = std::max(1, 2048 / threads);
    }
    std::lock_guard<std::mutex> lock(mutex);
    cache[key] = per_sm;
  }
  return static_cast<uint32_t>(per_sm * multiprocessors);
}

/// The largest grid of a streaming kernel (one pass over a tensor, grid-stride), in grids of
/// resident blocks: several waves of blocks, each taking a few steps, rather than one
/// resident grid striding over the whole tensor. Measured on the H100 (session 24,
/// BENCHMARKS.md; 16384 x 8192, % of copy, 1 -> 16 waves): quantize with the check
/// deferred int8:token 90.3 -> 93.3, fp8e4m3:token 92.1 -> 94.6, int4:block32 93.9 -> 96.2,
/// mxfp4 92.4 -> 97.5, q8_0 94.4 -> 99.7; dequantize int8:token 90.3 -> 93.4, int4:block32
/// 90.0 -> 92.8, nvfp4 90.2 -> 91.7; 64 waves lost again where blocks end with atomics.
inline constexpr uint32_t kStreamWaves = 16;

template <class Kernel>
uint32_t stream_grid(Kernel kernel, int threads, int multiprocessors, int smem = 0) {
  return kStreamWaves * resident_grid(kernel, threads, multiprocessors, smem);
}

/// min(ceil(items / per_block), cap), at least 1.
inline uint32_t grid_of(uint64_t items, uint64_t per_block, uint32_t cap) {
  const uint64_t want = (items + per_block - 1) / per_block;
  return static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(want, cap)));
}

/// The grid of a grid-stride kernel over `items` (per_block per block per step) with at most
/// `cap` blocks: as few blocks as give every block the same number of steps as the
/// resident grid would need, so that no block runs a last step alone while the others sit
/// idle (items 16.5 x the cap would leave half the grid idle for the last step).
inline uint32_t balanced_grid(uint64_t items, uint64_t per_block, uint32_t cap) {
  const uint64_t blocks = std::max<uint64_t>(1, (items + per_block - 1) / per_block);
  const uint64_t steps = (blocks + cap - 1) / std::max<uint32_t>(cap, 1);
  return static_cast<uint32_t>((blocks + steps - 1) / steps);
}

LOWBIT_HD bool aligned(const void* p, uintptr_t a) {
  return reinterpret_cast<uintptr_t>(p) % a == 0;
}

// ---- flags: the first bad index ------------------------------------------------------------

/// A flag word holds UINT64_MAX - index of the smallest bad index reported so far, or 0
/// (what a memset leaves) when none was: atomicMax of the complement is atomicMin of the
/// index, so the word is the same whatever order the threads report in.
__device__ __forceinline__ void report(unsigned long long* flag, uint64_t index) {
  atomicMax(flag, static_cast<unsigned long long>(~index));
  __threadfence();  // before the block's hand-off count (quantize_cuda.cu's hand_off)
}
inline bool flagged(uint64_t word, uint64_t& index) {
  index = ~word;
  return word != 0;
}

/// f32 bit pattern of a NaN or an infinity.
LOWBIT_HD bool non_finite_bits(uint32_t b) { return (b & 0x7f800000u) == 0x7f800000u; }

/// Host memory (pinned, one block per thread) for reading flag words back: run() calls
/// synchronise before they return, so one block per thread is never used twice at once.
inline uint64_t* pinned_flags() {
  thread_local uint64_t* block = [] {
    void* p = nullptr;
    if (cudaHostAlloc(&p, 64, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      p = nullptr;
    }
    return static_cast<uint64_t*>(p);
  }();
  return block;
}

/// Copies `count` flag words from the device and waits for the stream (every kernel queued
/// before has finished when this returns).
inline void read_flags(const void* device_words, uint64_t* out, int count, cudaStream_t stream) {
  uint64_t* host = pinned_flags();
  const size_t bytes = sizeof(uint64_t) * static_cast<size_t>(count);
  if (host) {
    check_cuda(cudaMemcpyAsync(host, device_words, bytes, cudaMemcpyDeviceToHost, stream),
               "quantize: reading the check words");
    check_cuda(cudaStreamSynchronize(stream), "quantize: cudaStreamSynchronize");
    std::memcpy(out, host, bytes);
  } else {
    check_cuda(cudaMemcpyAsync(out, device_words, bytes, cudaMemcpyDeviceToHost, stream),
               "quantize: reading the check words");
    check_cuda(cudaStreamSynchronize(stream), "quantize: cudaStreamSynchronize");
  }
}

// ---- host: the reference's error texts -----------------------------------------------------

/// The row-major multi-index of flat element `e` of `shape`, as "[i, j, k]".
inline std::string index_str(const Shape& shape, int64_t e) {
  std::vector<int64_t> idx(static_cast<size_t>(shape.size()));
  for (int i = shape.size() - 1; i >= 0; --i) {
    idx[static_cast<size_t>(i)] = shape[i] ? e % shape[i] : 0;
    e = shape[i] ? e / shape[i] : 0;
  }
  std::string s = "[";
  for (size_t i = 0; i < idx.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(idx[i]);
  }
  return s + "]";
}

/// A float as fmt's "{}" writes it (fmt cannot be compiled by nvcc): the shortest digits
/// that round-trip (std::to_chars picks the same ones as fmt's Dragonbox), in fixed
/// notation for decimal exponents in [-4, 16), else d.ddde+XX.
inline std::string fmt_float(float v) {
  if (std::isnan(v)) return std::signbit(v) ? "-nan" : "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (!sci.empty() && sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::stoi(sci.substr(e + 1));
  std::string out;
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 >= 0) {
      const size_t int_digits = static_cast<size_t>(exp10) + 1;
      if (digits.size() <= int_digits) {
        out = digits + std::string(int_digits - digits.size(), '0');
      } else {
        out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    } else {
      out = "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp10 < 0 ? "e-" : "e+";
    const int a = exp10 < 0 ? -exp10 : exp10;
    if (a < 10) out += "0";
    out += std::to_string(a);
  }
  return sign + out;
}

// ---- device: sources ------------------------------------------------------------------------

/// A contiguous source dtype read 16 bytes at a time.
template <Dtype S>
struct Src {
  static_assert(S == Dtype::f32 || S == Dtype::bf16 || S == Dtype::f16);
  static constexpr int kBytes = S == Dtype::f32 ? 4 : 2;
  static constexpr int kVec = 16 / kBytes;  ///< elements per 16-byte vector

  /// Element i (0 <= i < kVec) of a vector, as f32 (exact).
  __device__ __forceinline__ static float element(const uint4& v, int i) {
    const uint32_t w = i / (kVec / 4) == 0   ? v.x
                       : i / (kVec / 4) == 1 ? v.y
                       : i / (kVec / 4) == 2 ? v.z
                                             : v.w;
    if constexpr (S == Dtype::f32) {
      return __uint_as_float(w);
    } else if constexpr (S == Dtype::bf16) {
      return __uint_as_float(i % 2 ? (w & 0xffff0000u) : (w << 16));
    } else {
      // cvt.f32.f16 is exact for every finite and infinite input; NaN sources are refused
      // (or, with check_finite off, give unspecified codes), so its NaN payload rule is moot.
      return __half2float(__ushort_as_half(static_cast<unsigned short>(i % 2 ? w >> 16 : w)));
    }
  }
  /// Element i of the source as f32, any alignment.
  __device__ __forceinline__ static float load(const void* base, uint64_t i) {
    if constexpr (S == Dtype::f32) {
      return static_cast<const float*>(base)[i];
    } else if constexpr (S == Dtype::bf16) {
      return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
    } else {
      return __half2float(__ushort_as_half(static_cast<const uint16_t*>(base)[i]));
    }
  }
};

/// Any source dtype read at run time, one element (the generic paths).
__device__ __forceinline__ float load_any(const void* base, Dtype dt, uint64_t i) {
  switch (dt) {
    case Dtype::f32:
      return Src<Dtype::f32>::load(base, i);
    case Dtype::bf16:
      return Src<Dtype::bf16>::load(base, i);
    default:
      return Src<Dtype::f16>::load(base, i);
  }
}

// ---- device: products with x86's NaN results ---------------------------------------------

/// a * b in f32, with the NaN that the reference's x86 build produces: a NaN operand comes
/// back quieted (the first one when both are NaN), and an invalid product (0 * Inf) gives
/// x86's default NaN 0xffc00000. The GPU itself would give the canonical 0x7fffffff. Only
/// dequantize needs this: its inputs are arbitrary codes and scales.
__device__ __forceinline__ float mul_x86(float a, float b) {
  const float r = __fmul_rn(a, b);
  if (r == r) return r;
  const uint32_t ab = __float_as_uint(a), bb = __float_as_uint(b);
  if ((ab & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(ab | 0x00400000u);
  if ((bb & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(bb | 0x00400000u);
  return __uint_as_float(0xffc00000u);
}

// ---- device: fast exact conversions ----------------------------------------------------------
//
// The per-element conversions of the hot loops, each giving numeric.hpp's bits (the test
// test_quantize_cuda checks every f32 input, or every code, against numeric.hpp on the GPU):
// hardware cvt instructions where they round the same way, with NaN results fixed up to
// numeric.hpp's rules, and short branch-free integer forms otherwise.

/// Two f32 -> f8e4m3fn (kE5M2: f8e5m2) codes, round-to-nearest-even, overflow and +-Inf
/// saturating to +-max: f32_to_f8e4m3fn(x, Saturation::finite) for every input but NaN
/// (which the quantizers never convert). `a` lands in the low byte.
template <bool kE5M2>
__device__ __forceinline__ uint32_t fp8x2_satfinite(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short r;
  if constexpr (kE5M2) {
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(r) : "f"(a), "f"(b));
  } else {
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(r) : "f"(a), "f"(b));
  }
  return r;
#else
  if constexpr (kE5M2) {
    return f32_to_f8e5m2(a, Saturation::finite) |
           (static_cast<uint32_t>(f32_to_f8e5m2(b, Saturation::finite)) << 8);
  } else {
    return f32_to_f8e4m3fn(a, Saturation::finite) |
           (static_cast<uint32_t>(f32_to_f8e4m3fn(b, Saturation::finite)) << 8);
  }
#endif
}

/// f32 -> f4e2m1 code (low nibble), round-to-nearest-even, saturating to +-6; equals
/// f32_to_f4e2m1 for every input but NaN. From 1 up (e2m1's normals) the f32 pattern is
/// re-biased and its mantissa rounded to one bit in place (a carry bumps the exponent);
/// below 1 (steps of 0.5) one f32 addition of 2^22, whose ulp is 0.5, rounds |y| / 0.5 to
/// nearest-even in the low bits. Codes past 7 saturate.
__device__ __forceinline__ uint32_t e2m1_from_f32(float y) {
  const uint32_t b = __float_as_uint(y);
  const uint32_t a = b & 0x7fffffffu;
  uint32_t r = a - (126u << 23);
  r += (1u << 21) - 1u + ((r >> 22) & 1u);
  uint32_t code = r >> 22;
  const uint32_t sub = __float_as_uint(__fadd_rn(__uint_as_float(a), 4194304.0f)) - 0x4a800000u;
  code = a < 0x3f800000u ? sub : code;
  code = code < 7u ? code : 7u;
  return code | ((b >> 28) & 8u);
}

/// f4e2m1 code (low nibble) -> f32, exact (f4e2m1_to_f32).
__device__ __forceinline__ float e2m1_to_f32(uint32_t c) {
  const uint32_t m = c & 7u;
  const uint32_t mag =
      m < 2u ? (m ? 0x3f000000u : 0u) : ((((m >> 1) + 126u) << 23) | ((m & 1u) << 22));
  return __uint_as_float(mag | ((c & 8u) << 28));
}

/// f8e4m3fn code -> f32, exact; NaN gives 0x7fc00000 with the code's sign (f8e4m3fn_to_f32).
__device__ __forceinline__ float e4m3_to_f32(uint32_t c) {
  const uint32_t m = c & 0x7fu;
  uint32_t mag =
      (m >> 3) ? ((m << 20) + (120u << 23)) : __float_as_uint(static_cast<float>(m) * 0x1p-9f);
  mag = m == 0x7fu ? 0x7fc00000u : mag;
  return __uint_as_float(mag | ((c & 0x80u) << 24));
}

/// f8e5m2 code -> f32, exact; Inf, and NaN as 0x7fc00000 with the sign (f8e5m2_to_f32).
__device__ __forceinline__ float e5m2_to_f32(uint32_t c) {
  const uint32_t m = c & 0x7fu;
  uint32_t mag =
      (m >> 2) ? ((m << 21) + (112u << 23)) : __float_as_uint(static_cast<float>(m) * 0x1p-16f);
  mag = m >= 0x7cu ? (m == 0x7cu ? 0x7f800000u : 0x7fc00000u) : mag;
  return __uint_as_float(mag | ((c & 0x80u) << 24));
}

/// Two f32 -> bf16 (a in the low half), round-to-nearest-even, overflow to Inf: the
/// hardware cvt.rn.bf16x2.f32, with NaN given f32_to_bf16's 0x7fc0 and the input's sign.
__device__ __forceinline__ uint32_t bf16x2_rn(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  uint32_t r;
  memcpy(&r, &h, 4);
  const uint32_t lo = a == a ? (r & 0xffffu) : (((__float_as_uint(a) >> 16) & 0x8000u) | 0x7fc0u);
  const uint32_t hi = b == b ? (r >> 16) : (((__float_as_uint(b) >> 16) & 0x8000u) | 0x7fc0u);
  return lo | (hi << 16);
}

/// f32_to_f16's NaN: the top 10 payload bits (1 if they vanish), sign kept, not quieted.
__device__ __forceinline__ uint32_t f16_nan_bits(float v) {
  const uint32_t b = __float_as_uint(v);
  uint32_t h = 0x7c00u + ((b & 0x7fffffu) >> 13);
  h = h == 0x7c00u ? 0x7c01u : h;
  return ((b >> 16) & 0x8000u) | h;
}

/// Two f32 -> f16 (a in the low half), round-to-nearest-even, overflow to Inf: the hardware
/// cvt.rn.f16x2.f32 with f32_to_f16's NaN rule.
__device__ __forceinline__ uint32_t f16x2_rn(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  uint32_t r;
  memcpy(&r, &h, 4);
  const uint32_t lo = a == a ? (r & 0xffffu) : f16_nan_bits(a);
  const uint32_t hi = b == b ? (r >> 16) : f16_nan_bits(b);
  return lo | (hi << 16);
}

// ---- device: destinations -------------------------------------------------------------------

/// Two f32 -> bf16 / f16 (a in the low half) with the hardware conversion alone: right for
/// every input but NaN.
template <Dtype D>
__device__ __forceinline__ uint32_t pair_rn_no_nan(float a, float b) {
  uint32_t r;
  if constexpr (D == Dtype::bf16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    memcpy(&r, &h, 4);
  } else {
    const __half2 h = __floats2half2_rn(a, b);
    memcpy(&r, &h, 4);
  }
  return r;
}

/// Stores 8 consecutive f32 values as D at `p` (16-byte aligned): one 16-byte store for
/// 16-bit dtypes, two for f32. kNoNaN: the caller knows no value is NaN.
template <Dtype D, bool kNoNaN = false, bool kStream = false>
__device__ __forceinline__ void store8(void* p, const float (&v)[8]) {
  auto put = [&](uint4* q, const uint4& x) {
    if constexpr (kStream) {
      __stcs(q, x);
    } else {
      *q = x;
    }
  };
  if constexpr (D == Dtype::f32) {
    uint4* q = static_cast<uint4*>(p);
    put(q, make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3])));
    put(q + 1, make_uint4(__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]),
                          __float_as_uint(v[7])));
  } else {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (kNoNaN) {
        w[k] = pair_rn_no_nan<D>(v[2 * k], v[2 * k + 1]);
      } else {
        w[k] =
            D == Dtype::bf16 ? bf16x2_rn(v[2 * k], v[2 * k + 1]) : f16x2_rn(v[2 * k], v[2 * k + 1]);
      }
    }
    put(static_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
  }
}

/// Stores element i of a destination of any dtype read at run time.
__device__ __forceinline__ void store_any(void* base, Dtype dt, uint64_t i, float v) {
  switch (dt) {
    case Dtype::f32:
      static_cast<float*>(base)[i] = v;
      return;
    case Dtype::bf16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(v);
      return;
    default:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(v);
      return;
  }
}

// ---- scales ------------------------------------------------------------------------------------

/// A scale of dtype f32, f16 or bf16 as f32.
LOWBIT_HD float load_scale(const void* base, Dtype dt, uint64_t g) {
  switch (dt) {
    case Dtype::f16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[g]);
    case Dtype::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[g]);
    default:
      return static_cast<const float*>(base)[g];
  }
}
/// Stores a scale (already rounded to its dtype, so the conversion is exact), as the
/// reference's write_scale does (Saturation::finite).
LOWBIT_HD void store_scale(void* base, Dtype dt, uint64_t g, float v) {
  switch (dt) {
    case Dtype::f16:
      static_cast<uint16_t*>(base)[g] = f32_to_f16(v, Saturation::finite);
      return;
    case Dtype::bf16:
      static_cast<uint16_t*>(base)[g] = f32_to_bf16(v, Saturation::finite);
      return;
    default:
      static_cast<float*>(base)[g] = v;
      return;
  }
}

// ---- integer division by an invariant divisor ---------------------------------------------

using cuda_common::Divisor32;

// ---- GGUF helpers (ggml's x86 reference build, restated for the device) --------------------

/// gguf_block_codecs.hpp's float_to_byte_x86: cvttss2si, INT32_MIN for NaN and out-of-range
/// values, then the low byte.
LOWBIT_HD uint8_t float_to_byte_x86(float v) {
  int32_t i = INT32_MIN;
  if (v >= -2147483648.0f && v < 2147483648.0f) i = static_cast<int32_t>(v);
  return static_cast<uint8_t>(static_cast<uint32_t>(i));
}

inline constexpr int kQ8_0Bytes = 34;  ///< f16 d, 32 x int8
inline constexpr int kQ4_0Bytes = 18;  ///< f16 d, 16 bytes of nibbles

// ---- scale groups that are contiguous runs ---------------------------------------------------

inline int64_t last_dim(const Shape& s) { return s.size() > 0 ? s[s.size() - 1] : 1; }

/// The length of the contiguous runs of elements that form the scale groups of an int / fp8
/// scheme (per-tensor: n; token: K; channel with only extent-1 dims before the axis: the
/// product of the later extents; blockG over a last axis that G divides: G), or 0 when the
/// groups are not contiguous runs (other channels, 2-d blocks, ragged fp8 blocks).
inline int64_t flat_group_length(const QuantScheme& s, const Shape& shape, int64_t n) {
  switch (s.granularity) {
    case Granularity::tensor:
      return n;
    case Granularity::token:
      return last_dim(shape);
    case Granularity::channel: {
      const int nd = shape.size();
      const int axis = s.axis < 0 ? s.axis + nd : s.axis;
      for (int i = 0; i < axis; ++i)
        if (shape[i] != 1) return 0;
      int64_t inner = 1;
      for (int i = axis + 1; i < nd; ++i) inner *= shape[i];
      return inner;
    }
    case Granularity::block:
      return last_dim(shape) % s.block == 0 ? s.block : 0;
    default:
      return 0;
  }
}

inline bool is_mx(QuantFormat f) {
  return f == QuantFormat::mxfp4 || f == QuantFormat::mxfp8e4m3 || f == QuantFormat::mxfp8e5m2;
}
inline bool is_gguf_fast(const QuantScheme& s) {
  return s.format == QuantFormat::gguf &&
         (s.gguf_type == 8u /* q8_0 */ || s.gguf_type == 2u /* q4_0 */);
}

}  // namespace lowbit::quant_cuda
