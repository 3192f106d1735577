// The CUDA kernels of convert.
//
// Four ways to run, chosen per call:
//  - copy: f32->f32, f16->f16 and f64->f64 give back their input bits (the reference's
//    round trip through f32 is the identity there, but for f16 with Saturation::finite,
//    which clamps Inf), so contiguous views are one cudaMemcpyAsync.
//  - vec16: contiguous views of a common pair (f32/bf16/f16 -> f32/bf16/f16/f8e4m3fn/
//    f8e5m2). The pair and the saturation mode are template arguments, so the per-element
//    work is a short branch-free integer sequence. A thread moves a "group": the elements
//    of one 16-byte vector of the narrower side (8 for f32->bf16, 16 for bf16->f8e4m3fn),
//    i.e. 16-byte loads and stores on both sides, and keeps several groups' loads in
//    flight before it converts.
//  - vec_generic: contiguous views of every other pair; groups of 8 elements with the
//    dtypes read at run time (a uniform switch once per group, not per element).
//  - strided: any strides (up to 8 dims, collapsed where they nest), and contiguous views
//    whose src and dst cannot both reach 16-byte alignment at the same element; one
//    element (or one packed byte) per step.
// The vector kernels index in 32 bits: tensors of more than kMaxGroupsPerLaunch groups are
// split over several launches with advanced base pointers. The strided kernel uses 32-bit
// indices and offsets when they fit, 64-bit otherwise.
//
// Bits: every element follows numeric.hpp's rules. The packed pairs use numeric.hpp's
// functions directly; the common pairs use encode_bits/decode_bits below, which restate
// those rules without branches. test_numeric_cuda checks them against numeric.hpp on every
// f32 and every 16-bit input, through this op.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>

#include "core/cuda_runtime.hpp"
#include "cuda/cuda_kernel_common.cuh"
#include "lowbit/error.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {
namespace {

using numeric_detail::bits_of;
using numeric_detail::float_of;
using numeric_detail::MiniFloat;
using numeric_detail::Specials;

// ---- per-element conversions on f32 bit patterns ------------------------------------

/// a + b in f32, round to nearest even, keeping subnormal inputs and results even if this
/// file is ever built with -ftz=true (inline PTX add.rn.f32 has no .ftz).
LOWBIT_HD float add_keep_subnormals(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;
#endif
}
/// a * b in f32 like add_keep_subnormals.
LOWBIT_HD float mul_keep_subnormals(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a * b;
#endif
}

template <Dtype D>
struct Format;
template <>
struct Format<Dtype::bf16> {
  static constexpr MiniFloat value = numeric_detail::kBF16;
};
template <>
struct Format<Dtype::f16> {
  static constexpr MiniFloat value = numeric_detail::kF16;
};
template <>
struct Format<Dtype::f8e4m3fn> {
  static constexpr MiniFloat value = numeric_detail::kF8E4M3FN;
};
template <>
struct Format<Dtype::f8e5m2> {
  static constexpr MiniFloat value = numeric_detail::kF8E5M2;
};

/// numeric_detail::encode_from_f32<F> (plus f32_to_f16's NaN rule) without branches:
/// - the normal-range rounding (re-bias, add half-minus-one plus the kept lsb, shift) is
///   computed for every input;
/// - subnormal results come from one f32 addition: |x| + 2^(emin - M + 23) has a ulp of
///   F's subnormal unit, so the hardware's round-to-nearest-even leaves round(|x| / unit)
///   in the low mantissa bits. bf16 shares f32's exponent range and needs no such step;
/// - overflow is one min(): for each format and mode the code past max_code is exactly
///   the next one up (Inf, NaN, or max itself under Saturation::finite), and for
///   f8e4m3fn without saturation NaN inputs land there too;
/// - the remaining NaN cases are one select.
template <MiniFloat F, Saturation S>
LOWBIT_HD uint32_t encode_narrow(uint32_t x) {
  constexpr int shift = 23 - F.man_bits;
  constexpr uint32_t rebias = static_cast<uint32_t>(127 - F.bias) << 23;
  const uint32_t a = x & 0x7fffffffu;
  uint32_t r = a - rebias;
  r += ((1u << (shift - 1)) - 1u) + ((r >> shift) & 1u);
  uint32_t code = r >> shift;
  if constexpr (rebias != 0) {
    constexpr int emin = 1 - F.bias;
    constexpr uint32_t min_normal = static_cast<uint32_t>(emin + 127) << 23;
    constexpr uint32_t magic = static_cast<uint32_t>(emin - F.man_bits + 23 + 127) << 23;
    const uint32_t sub = bits_of(add_keep_subnormals(float_of(a), float_of(magic))) - magic;
    code = a < min_normal ? sub : code;
  }
  constexpr uint32_t limit = S == Saturation::finite        ? F.max_code()
                             : F.specials == Specials::ieee ? F.inf_code()
                                                            : F.nan_code();
  code = code < limit ? code : limit;
  if constexpr (F.specials == Specials::ieee || S == Saturation::finite) {
    uint32_t nan = F.nan_code();
    if constexpr (F.exp_bits == 5 && F.man_bits == 10) {
      // f16 keeps the top 10 payload bits, and a payload that would vanish becomes 1.
      const uint32_t payload = (a & 0x7fffffu) >> 13;
      nan = 0x7c00u | (payload > 1u ? payload : 1u);
    }
    code = a > 0x7f800000u ? nan : code;
  }
  return code | ((x >> (32 - F.width())) & F.sign_bit());
}

/// The code of dst dtype D for the f32 bit pattern x (the value itself for D = f32).
template <Dtype D, Saturation S>
LOWBIT_HD uint32_t encode_bits(uint32_t x) {
  if constexpr (D == Dtype::f32) {
    return x;
  } else {
    return encode_narrow<Format<D>::value, S>(x);
  }
}

/// The f32 bit pattern of code `c` of src dtype D (f32, bf16 or f16), exactly as
/// load_f32 gives it.
template <Dtype D>
LOWBIT_HD uint32_t decode_bits(uint32_t c) {
  if constexpr (D == Dtype::f32) {
    return c;
  } else if constexpr (D == Dtype::bf16) {
    return c << 16;
  } else {
    static_assert(D == Dtype::f16);
    // f16's bits shifted into f32's place read as 2^-112 times the value: one exact
    // multiply rescales normals and subnormals alike. Inf/NaN only re-bias the exponent
    // (payload kept, not quieted, like f16_to_f32).
    const uint32_t a = c & 0x7fffu;
    const uint32_t shifted = a << 13;
    const uint32_t finite = bits_of(mul_keep_subnormals(float_of(shifted), 0x1p112f));
    const uint32_t mag = a >= 0x7c00u ? shifted + 0x70000000u : finite;
    return mag | ((c & 0x8000u) << 16);
  }
}

template <Dtype D>
constexpr int kBytes = bit_width(D) / 8;

// ---- the vector kernel (contiguous views) -------------------------------------------

constexpr int kThreads = 256;
/// Groups per launch, so that group and 16-byte vector indices (at most 4 vectors per
/// group) stay below 2^31.
constexpr uint32_t kMaxGroupsPerLaunch = 1u << 28;

/// A contiguous conversion split into head elements (before the first aligned group),
/// the aligned groups, and tail elements; edge elements are converted one unit at a time
/// (a unit is one element, or the two elements of one byte when dst is packed).
struct VectorArgs {
  const uint8_t* src_head;
  uint8_t* dst_head;
  const uint8_t* src_body;  ///< 16-byte aligned (4 / 8 for narrow generic groups)
  uint8_t* dst_body;
  const uint8_t* src_tail;
  uint8_t* dst_tail;
  uint32_t head;        ///< elements before the body
  uint32_t tail;        ///< elements after the body
  uint32_t head_units;  ///< edge units of the head
  uint32_t edge_units;  ///< edge units of head and tail
  uint32_t groups;      ///< aligned groups in the body
};

LOWBIT_HD uint32_t word_of(const uint4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

/// A common pair with both dtypes fixed at compile time.
template <Dtype S, Dtype D, Saturation Sat>
struct StaticPair {
  static constexpr int kGroup = 16 / (kBytes<S> < kBytes<D> ? kBytes<S> : kBytes<D>);
  static constexpr int kSrcVecs = kGroup * kBytes<S> / 16;
  static constexpr int kDstVecs = kGroup * kBytes<D> / 16;
  // Enough groups per iteration for four 16-byte loads in flight per thread.
  static constexpr int kUnroll = kSrcVecs >= 4 ? 1 : 4 / kSrcVecs;

  __device__ static uint32_t element(const uint4 (&in)[kSrcVecs], int i) {
    constexpr int per_word = 4 / kBytes<S>;
    const uint32_t w = word_of(in[i / per_word / 4], (i / per_word) % 4);
    if constexpr (per_word == 1) return w;
    return (w >> (16 * (i % 2))) & 0xffffu;
  }

  template <int U>
  __device__ void convert_groups(const uint8_t* src, uint8_t* dst, uint32_t g,
                                 uint32_t stride) const {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    uint4 in[U][kSrcVecs];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int v = 0; v < kSrcVecs; ++v) in[u][v] = s[(g + u * stride) * kSrcVecs + v];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      uint32_t out[kDstVecs * 4];
#pragma unroll
      for (int k = 0; k < kDstVecs * 4; ++k) out[k] = 0;
#pragma unroll
      for (int i = 0; i < kGroup; ++i) {
        const uint32_t code = encode_bits<D, Sat>(decode_bits<S>(element(in[u], i)));
        constexpr int per_word = 4 / kBytes<D>;
        out[i / per_word] |= code << (8 * kBytes<D> * (i % per_word));
      }
#pragma unroll
      for (int v = 0; v < kDstVecs; ++v)
        d[(g + u * stride) * kDstVecs + v] =
            make_uint4(out[4 * v], out[4 * v + 1], out[4 * v + 2], out[4 * v + 3]);
    }
  }

  __device__ void convert_unit(const uint8_t* src, uint8_t* dst, uint32_t i, uint32_t) const {
    using SrcT = std::conditional_t<kBytes<S> == 4, uint32_t, uint16_t>;
    using DstT = std::conditional_t<kBytes<D> == 4, uint32_t,
                                    std::conditional_t<kBytes<D> == 2, uint16_t, uint8_t>>;
    const uint32_t x = decode_bits<S>(reinterpret_cast<const SrcT*>(src)[i]);
    reinterpret_cast<DstT*>(dst)[i] = static_cast<DstT>(encode_bits<D, Sat>(x));
  }
};

/// encode_bits with the saturation mode read at run time (a uniform branch).
template <Dtype D>
__device__ uint32_t encode_runtime(uint32_t x, Saturation sat) {
  return sat == Saturation::finite ? encode_bits<D, Saturation::finite>(x)
                                   : encode_bits<D, Saturation::none>(x);
}

/// Element i of any float dtype at `base` as f32 bits, for the generic paths.
__device__ uint32_t load_bits(const uint8_t* base, Dtype dt, uint64_t i) {
  switch (dt) {
    case Dtype::f32:
      return reinterpret_cast<const uint32_t*>(base)[i];
    case Dtype::bf16:
      return decode_bits<Dtype::bf16>(reinterpret_cast<const uint16_t*>(base)[i]);
    case Dtype::f16:
      return decode_bits<Dtype::f16>(reinterpret_cast<const uint16_t*>(base)[i]);
    default:
      return bits_of(convert_detail::load_f32(base, dt, static_cast<int64_t>(i)));
  }
}

/// The code of f32 bits x in any float dtype but f64 (f4e2m1 in the low nibble).
__device__ uint32_t encode_any(uint32_t x, Dtype dt, Saturation sat) {
  switch (dt) {
    case Dtype::f32:
      return x;
    case Dtype::bf16:
      return encode_runtime<Dtype::bf16>(x, sat);
    case Dtype::f16:
      return encode_runtime<Dtype::f16>(x, sat);
    case Dtype::f8e4m3fn:
      return encode_runtime<Dtype::f8e4m3fn>(x, sat);
    case Dtype::f8e5m2:
      return encode_runtime<Dtype::f8e5m2>(x, sat);
    default:
      return convert_detail::encode_f32(float_of(x), dt, sat);
  }
}

/// Stores f32 bits x as element i of a non-packed dst.
__device__ void store_bits(uint8_t* base, Dtype dt, uint64_t i, uint32_t x, Saturation sat) {
  switch (dt) {
    case Dtype::f64:
      reinterpret_cast<double*>(base)[i] = f32_to_f64(float_of(x));
      return;
    case Dtype::f32:
      reinterpret_cast<uint32_t*>(base)[i] = x;
      return;
    case Dtype::f16:
    case Dtype::bf16:
      reinterpret_cast<uint16_t*>(base)[i] = static_cast<uint16_t>(encode_any(x, dt, sat));
      return;
    default:
      base[i] = static_cast<uint8_t>(encode_any(x, dt, sat));
      return;
  }
}

/// One edge unit of a generic conversion: element i, or for a packed dst the elements
/// 2i and 2i + 1 of byte i (the high nibble is 0 when 2i + 1 == n, as in the reference).
__device__ void convert_unit_any(const uint8_t* src, Dtype sdt, uint8_t* dst, Dtype ddt,
                                 Saturation sat, uint64_t i, uint64_t n) {
  if (ddt == Dtype::f4e2m1) {
    const uint32_t lo = encode_any(load_bits(src, sdt, 2 * i), ddt, sat);
    const uint32_t hi = 2 * i + 1 < n ? encode_any(load_bits(src, sdt, 2 * i + 1), ddt, sat) : 0u;
    dst[i] = static_cast<uint8_t>(lo | (hi << 4));
  } else {
    store_bits(dst, ddt, i, load_bits(src, sdt, i), sat);
  }
}

/// Any pair of float dtypes (but f64->f64, which is a copy), read at run time.
struct DynamicPair {
  Dtype src;
  Dtype dst;
  Saturation sat;
  uint8_t src_align;  ///< the body alignment its group loads need (4, 8 or 16)
  uint8_t dst_align;

  static constexpr int kGroup = 8;
  static constexpr int kUnroll = 2;

  static int group_align(Dtype dt) {
    const int bytes = static_cast<int>(storage_bytes(dt, kGroup));
    return bytes < 16 ? bytes : 16;
  }

  /// Loads U groups of 8 elements of `Bytes`-byte storage (1: 8 bytes, 2: 16, 4: 32, 8: 64;
  /// 0 stands for packed 4-bit: 4 bytes) and widens each with `decode`.
  template <int U, int Bytes, class Decode>
  __device__ static void load_with(const uint8_t* base, uint32_t g, uint32_t stride,
                                   uint32_t (&f)[U][kGroup], Decode decode) {
    if constexpr (Bytes == 0) {
      const uint32_t* p = reinterpret_cast<const uint32_t*>(base);
      uint32_t v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = p[g + u * stride];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int i = 0; i < 8; ++i) f[u][i] = decode((v[u] >> (4 * i)) & 0xfu);
    } else if constexpr (Bytes == 1) {
      const uint2* p = reinterpret_cast<const uint2*>(base);
      uint2 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = p[g + u * stride];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int i = 0; i < 8; ++i)
          f[u][i] = decode(((i < 4 ? v[u].x : v[u].y) >> (8 * (i % 4))) & 0xffu);
    } else {
      constexpr int kVecs = Bytes / 2;  // 16-byte vectors per group
      const uint4* p = reinterpret_cast<const uint4*>(base);
      uint4 v[U][kVecs];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int k = 0; k < kVecs; ++k) v[u][k] = p[(g + u * stride) * kVecs + k];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if constexpr (Bytes == 8) {
            const uint4& q = v[u][i / 2];
            f[u][i] = decode(i % 2 ? (uint64_t{q.w} << 32) | q.z : (uint64_t{q.y} << 32) | q.x);
          } else if constexpr (Bytes == 4) {
            f[u][i] = decode(word_of(v[u][i / 4], i % 4));
          } else {
            f[u][i] = decode((word_of(v[u][0], i / 2) >> (16 * (i % 2))) & 0xffffu);
          }
        }
    }
  }

  /// Narrows U groups of f32 bits with `encode` and stores them as `Bytes`-byte storage
  /// (as in load_with).
  template <int U, int Bytes, class Encode>
  __device__ static void store_with(uint8_t* base, uint32_t g, uint32_t stride,
                                    const uint32_t (&f)[U][kGroup], Encode encode) {
    if constexpr (Bytes == 0) {
      uint32_t* p = reinterpret_cast<uint32_t*>(base);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        uint32_t w = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) w |= static_cast<uint32_t>(encode(f[u][i])) << (4 * i);
        p[g + u * stride] = w;
      }
    } else if constexpr (Bytes == 1) {
      uint2* p = reinterpret_cast<uint2*>(base);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        uint32_t w[2] = {0, 0};
#pragma unroll
        for (int i = 0; i < 8; ++i)
          w[i / 4] |= static_cast<uint32_t>(encode(f[u][i])) << (8 * (i % 4));
        p[g + u * stride] = make_uint2(w[0], w[1]);
      }
    } else {
      constexpr int kVecs = Bytes / 2;
      uint4* p = reinterpret_cast<uint4*>(base);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        uint32_t w[kVecs * 4];
#pragma unroll
        for (int k = 0; k < kVecs * 4; ++k) {
          if constexpr (Bytes == 8) {
            const uint64_t e = encode(f[u][k / 2]);
            w[k] = static_cast<uint32_t>(k % 2 ? e >> 32 : e);
          } else if constexpr (Bytes == 4) {
            w[k] = static_cast<uint32_t>(encode(f[u][k]));
          } else {
            w[k] = static_cast<uint32_t>(encode(f[u][2 * k])) |
                   (static_cast<uint32_t>(encode(f[u][2 * k + 1])) << 16);
          }
        }
#pragma unroll
        for (int k = 0; k < kVecs; ++k)
          p[(g + u * stride) * kVecs + k] =
              make_uint4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
      }
    }
  }

  // The switches below run once per U groups; each case's loop is fully unrolled.
  template <int U>
  __device__ void load_groups(const uint8_t* base, uint32_t g, uint32_t stride,
                              uint32_t (&f)[U][kGroup]) const {
    switch (src) {
      case Dtype::f64:
        return load_with<U, 8>(base, g, stride, f, [](uint64_t c) {
          return bits_of(f64_to_f32(numeric_detail::double_of(c)));
        });
      case Dtype::f32:
        return load_with<U, 4>(base, g, stride, f, [](uint32_t c) { return c; });
      case Dtype::bf16:
        return load_with<U, 2>(base, g, stride, f,
                               [](uint32_t c) { return decode_bits<Dtype::bf16>(c); });
      case Dtype::f16:
        return load_with<U, 2>(base, g, stride, f,
                               [](uint32_t c) { return decode_bits<Dtype::f16>(c); });
      case Dtype::f8e4m3fn:
        return load_with<U, 1>(base, g, stride, f, [](uint32_t c) {
          return bits_of(f8e4m3fn_to_f32(static_cast<uint8_t>(c)));
        });
      case Dtype::f8e5m2:
        return load_with<U, 1>(base, g, stride, f, [](uint32_t c) {
          return bits_of(f8e5m2_to_f32(static_cast<uint8_t>(c)));
        });
      case Dtype::e8m0:
        return load_with<U, 1>(base, g, stride, f, [](uint32_t c) {
          return bits_of(e8m0_to_f32(static_cast<uint8_t>(c)));
        });
      case Dtype::f4e2m1:
        return load_with<U, 0>(base, g, stride, f, [](uint32_t c) {
          return bits_of(f4e2m1_to_f32(static_cast<uint8_t>(c)));
        });
      default:
        return;
    }
  }

  template <int U, Saturation Sat>
  __device__ void store_groups_sat(uint8_t* base, uint32_t g, uint32_t stride,
                                   const uint32_t (&f)[U][kGroup]) const {
    switch (dst) {
      case Dtype::f64:
        return store_with<U, 8>(base, g, stride, f,
                                [](uint32_t x) { return bits_of(f32_to_f64(float_of(x))); });
      case Dtype::f32:
        return store_with<U, 4>(base, g, stride, f, [](uint32_t x) { return x; });
      case Dtype::bf16:
        return store_with<U, 2>(base, g, stride, f,
                                [](uint32_t x) { return encode_bits<Dtype::bf16, Sat>(x); });
      case Dtype::f16:
        return store_with<U, 2>(base, g, stride, f,
                                [](uint32_t x) { return encode_bits<Dtype::f16, Sat>(x); });
      case Dtype::f8e4m3fn:
        return store_with<U, 1>(base, g, stride, f,
                                [](uint32_t x) { return encode_bits<Dtype::f8e4m3fn, Sat>(x); });
      case Dtype::f8e5m2:
        return store_with<U, 1>(base, g, stride, f,
                                [](uint32_t x) { return encode_bits<Dtype::f8e5m2, Sat>(x); });
      case Dtype::e8m0:
        return store_with<U, 1>(base, g, stride, f,
                                [](uint32_t x) { return f32_to_e8m0(float_of(x), Sat); });
      case Dtype::f4e2m1:
        return store_with<U, 0>(base, g, stride, f,
                                [](uint32_t x) { return f32_to_f4e2m1(float_of(x)); });
      default:
        return;
    }
  }

  template <int U>
  __device__ void store_groups(uint8_t* base, uint32_t g, uint32_t stride,
                               const uint32_t (&f)[U][kGroup]) const {
    if (sat == Saturation::finite) {
      store_groups_sat<U, Saturation::finite>(base, g, stride, f);
    } else {
      store_groups_sat<U, Saturation::none>(base, g, stride, f);
    }
  }

  template <int U>
  __device__ void convert_groups(const uint8_t* src_base, uint8_t* dst_base, uint32_t g,
                                 uint32_t stride) const {
    uint32_t f[U][kGroup];
    load_groups<U>(src_base, g, stride, f);
    store_groups<U>(dst_base, g, stride, f);
  }

  __device__ void convert_unit(const uint8_t* s, uint8_t* d, uint32_t i, uint32_t n) const {
    convert_unit_any(s, src, d, dst, sat, i, n);
  }
};

template <class Pair>
__global__ void __launch_bounds__(kThreads) convert_vector_kernel(VectorArgs a, Pair pair) {
  const uint32_t tid = blockIdx.x * kThreads + threadIdx.x;
  const uint32_t stride = gridDim.x * kThreads;
  if (tid < a.edge_units) {
    if (tid < a.head_units) {
      pair.convert_unit(a.src_head, a.dst_head, tid, a.head);
    } else {
      pair.convert_unit(a.src_tail, a.dst_tail, tid - a.head_units, a.tail);
    }
  }
  constexpr int U = Pair::kUnroll;
  uint32_t g = tid;
  // groups + U * stride stays far below 2^32 (kMaxGroupsPerLaunch), so no wrap-around.
  for (; g + (U - 1) * stride < a.groups; g += U * stride)
    pair.template convert_groups<U>(a.src_body, a.dst_body, g, stride);
  for (; g < a.groups; g += stride)
    pair.template convert_groups<1>(a.src_body, a.dst_body, g, stride);
}

// ---- the strided kernel ---------------------------------------------------------------

using cuda_common::Divisor32;

struct StridedArgs {
  const uint8_t* src;
  uint8_t* dst;
  uint64_t units;  ///< elements, or bytes of a packed dst
  uint64_t numel;
  Dtype src_dtype;
  Dtype dst_dtype;
  Saturation sat;
  int ndim;  ///< after collapsing, >= 1
  std::array<uint64_t, kMaxDims> extent;
  std::array<Divisor32, kMaxDims> divisor;  ///< of extent, for 32-bit indices
  std::array<int64_t, kMaxDims> src_stride;
  std::array<int64_t, kMaxDims> dst_stride;
};

/// Element offsets in src and dst of linear (row-major) element index e.
template <class Index>
__device__ void offsets(const StridedArgs& a, Index e, Index& so, Index& dof) {
  so = 0;
  dof = 0;
  for (int k = a.ndim - 1; k > 0; --k) {
    Index q;
    if constexpr (sizeof(Index) == 4) {
      q = a.divisor[k].div(e);
    } else {
      q = e / a.extent[k];
    }
    const Index r = e - q * static_cast<Index>(a.extent[k]);
    so += r * static_cast<Index>(a.src_stride[k]);
    dof += r * static_cast<Index>(a.dst_stride[k]);
    e = q;
  }
  so += e * static_cast<Index>(a.src_stride[0]);
  dof += e * static_cast<Index>(a.dst_stride[0]);
}

template <class Index>
__global__ void __launch_bounds__(kThreads) convert_strided_kernel(StridedArgs a) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  const bool packed_dst = a.dst_dtype == Dtype::f4e2m1;
  const bool copy64 = a.src_dtype == Dtype::f64 && a.dst_dtype == Dtype::f64;
  for (Index u = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; u < a.units;
       u += stride) {
    if (packed_dst) {
      // dst is contiguous (ConvertOp::validate): byte u holds elements 2u and 2u + 1.
      Index so, dof;
      offsets<Index>(a, 2 * u, so, dof);
      const uint32_t lo = encode_any(load_bits(a.src, a.src_dtype, so), a.dst_dtype, a.sat);
      uint32_t hi = 0;
      if (2 * u + 1 < a.numel) {
        offsets<Index>(a, 2 * u + 1, so, dof);
        hi = encode_any(load_bits(a.src, a.src_dtype, so), a.dst_dtype, a.sat);
      }
      a.dst[u] = static_cast<uint8_t>(lo | (hi << 4));
    } else {
      Index so, dof;
      offsets<Index>(a, u, so, dof);
      if (copy64) {
        reinterpret_cast<uint64_t*>(a.dst)[dof] = reinterpret_cast<const uint64_t*>(a.src)[so];
      } else {
        store_bits(a.dst, a.dst_dtype, dof, load_bits(a.src, a.src_dtype, so), a.sat);
      }
    }
  }
}

// ---- host side: devices, launches -----------------------------------------------------

using cuda_common::check_cuda;
using cuda_common::DeviceFacts;
using cuda_common::DeviceScope;

/// The facts of `device`, probed with the strided kernel (every build instantiates it).
const DeviceFacts& device_facts(int device) {
  return cuda_common::device_facts(device, convert_strided_kernel<uint32_t>);
}

/// Resident blocks per SM of `kernel` (read once per kernel; every device of one
/// process is assumed to share the arch this build targets).
template <class Tag, class Kernel>
int blocks_per_sm(Kernel kernel) {
  static std::atomic<int> cached{0};
  int v = cached.load(std::memory_order_relaxed);
  if (v == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, kThreads, 0) != cudaSuccess ||
        v < 1) {
      cudaGetLastError();
      v = 2048 / kThreads;
    }
    cached.store(v, std::memory_order_relaxed);
  }
  return v;
}

uint32_t grid_for(uint64_t work_items, int per_thread, int multiprocessors, int per_sm) {
  const uint64_t wanted =
      (work_items + uint64_t{kThreads} * per_thread - 1) / (uint64_t{kThreads} * per_thread);
  const uint64_t resident = static_cast<uint64_t>(multiprocessors) * per_sm;
  return static_cast<uint32_t>(std::max<uint64_t>(1, std::min(wanted, resident)));
}

/// Byte offset of element e (even for a packed dtype).
int64_t byte_offset(Dtype dt, int64_t e) { return is_packed(dt) ? e / 2 : e * (bit_width(dt) / 8); }

/// Launches the vector kernel of `pair` over a contiguous conversion; false (nothing
/// launched) if src and dst cannot reach their alignments at one common element.
template <class Pair>
bool launch_vector(const Pair& pair, int src_align, int dst_align, Dtype sdt, Dtype ddt,
                   const void* src, void* dst, int64_t n, int multiprocessors,
                   cudaStream_t stream) {
  constexpr int G = Pair::kGroup;
  const auto s0 = reinterpret_cast<uintptr_t>(src);
  const auto d0 = reinterpret_cast<uintptr_t>(dst);
  int64_t head = -1;
  for (int h = 0; h < G; ++h) {
    if ((is_packed(sdt) || is_packed(ddt)) && (h & 1)) continue;
    if ((s0 + byte_offset(sdt, h)) % src_align == 0 &&
        (d0 + byte_offset(ddt, h)) % dst_align == 0) {
      head = h;
      break;
    }
  }
  if (head < 0) return false;
  int64_t groups = 0;
  if (head >= n) {
    head = n;  // too short for a group: edges only
  } else {
    groups = (n - head) / G;
  }
  const int64_t tail = n - head - groups * G;
  const bool packed_dst = is_packed(ddt);
  auto units = [&](int64_t elems) { return packed_dst ? (elems + 1) / 2 : elems; };

  auto kernel = convert_vector_kernel<Pair>;
  const int per_sm = blocks_per_sm<Pair>(kernel);
  const auto* sb = static_cast<const uint8_t*>(src);
  auto* db = static_cast<uint8_t*>(dst);
  int64_t done = 0;  // groups launched so far
  do {
    const int64_t chunk = std::min<int64_t>(groups - done, kMaxGroupsPerLaunch);
    const bool first = done == 0;
    const bool last = done + chunk == groups;
    VectorArgs a{};
    a.src_head = sb;
    a.dst_head = db;
    const int64_t body0 = head + done * G;
    a.src_body = sb + byte_offset(sdt, body0);
    a.dst_body = db + byte_offset(ddt, body0);
    const int64_t tail0 = head + groups * G;
    a.src_tail = sb + byte_offset(sdt, tail0);
    a.dst_tail = db + byte_offset(ddt, tail0);
    a.head = first ? static_cast<uint32_t>(head) : 0;
    a.tail = last ? static_cast<uint32_t>(tail) : 0;
    a.head_units = static_cast<uint32_t>(units(a.head));
    a.edge_units = a.head_units + static_cast<uint32_t>(units(a.tail));
    a.groups = static_cast<uint32_t>(chunk);
    const uint32_t grid =
        std::max(grid_for(static_cast<uint64_t>(chunk), Pair::kUnroll, multiprocessors, per_sm),
                 (a.edge_units + kThreads - 1) / kThreads);
    kernel<<<grid, kThreads, 0, stream>>>(a, pair);
    cuda_rt::check_last_launch("convert_vector_kernel");
    done += chunk;
  } while (done < groups);
  return true;
}

// The common pairs: src f32/bf16/f16, dst f32/bf16/f16/f8e4m3fn/f8e5m2, less the copies.
constexpr bool is_copy(Dtype s, Dtype d) {
  return s == d && (s == Dtype::f64 || s == Dtype::f32 || s == Dtype::f16);
}
// A copy gives the reference's bits except for f16 -> f16 with Saturation::finite, where
// the round trip through f32 clamps +-Inf to +-65504; that case takes the generic kernel.
constexpr bool is_copy(Dtype s, Dtype d, Saturation sat) {
  return is_copy(s, d) && !(s == Dtype::f16 && sat == Saturation::finite);
}
constexpr bool is_static_pair(Dtype s, Dtype d) {
  const bool src_ok = s == Dtype::f32 || s == Dtype::bf16 || s == Dtype::f16;
  const bool dst_ok = d == Dtype::f32 || d == Dtype::bf16 || d == Dtype::f16 ||
                      d == Dtype::f8e4m3fn || d == Dtype::f8e5m2;
  return src_ok && dst_ok && !is_copy(s, d);
}

template <Dtype S, Dtype D>
bool launch_static_sat(Saturation sat, const void* src, void* dst, int64_t n, int sms,
                       cudaStream_t stream) {
  if constexpr (D == Dtype::f32) {  // nothing to saturate: one instantiation
    return launch_vector(StaticPair<S, D, Saturation::none>{}, 16, 16, S, D, src, dst, n, sms,
                         stream);
  } else if (sat == Saturation::finite) {
    return launch_vector(StaticPair<S, D, Saturation::finite>{}, 16, 16, S, D, src, dst, n, sms,
                         stream);
  } else {
    return launch_vector(StaticPair<S, D, Saturation::none>{}, 16, 16, S, D, src, dst, n, sms,
                         stream);
  }
}

template <Dtype S>
bool launch_static_dst(Dtype d, Saturation sat, const void* src, void* dst, int64_t n, int sms,
                       cudaStream_t stream) {
  switch (d) {
    case Dtype::f32:
      if constexpr (S != Dtype::f32)
        return launch_static_sat<S, Dtype::f32>(sat, src, dst, n, sms, stream);
      break;
    case Dtype::bf16:
      return launch_static_sat<S, Dtype::bf16>(sat, src, dst, n, sms, stream);
    case Dtype::f16:
      if constexpr (S != Dtype::f16)
        return launch_static_sat<S, Dtype::f16>(sat, src, dst, n, sms, stream);
      break;
    case Dtype::f8e4m3fn:
      return launch_static_sat<S, Dtype::f8e4m3fn>(sat, src, dst, n, sms, stream);
    case Dtype::f8e5m2:
      return launch_static_sat<S, Dtype::f8e5m2>(sat, src, dst, n, sms, stream);
    default:
      break;
  }
  throw_error(ErrorCode::internal, "convert_cuda: no static kernel for this pair");
}

bool launch_static(Dtype s, Dtype d, Saturation sat, const void* src, void* dst, int64_t n, int sms,
                   cudaStream_t stream) {
  switch (s) {
    case Dtype::f32:
      return launch_static_dst<Dtype::f32>(d, sat, src, dst, n, sms, stream);
    case Dtype::bf16:
      return launch_static_dst<Dtype::bf16>(d, sat, src, dst, n, sms, stream);
    case Dtype::f16:
      return launch_static_dst<Dtype::f16>(d, sat, src, dst, n, sms, stream);
    default:
      throw_error(ErrorCode::internal, "convert_cuda: no static kernel for this src");
  }
}

/// Drops extent-1 dims and merges neighbours that nest in both src and dst, so that
/// typical views index with one or two divisions per element.
void collapse(const ConvertDesc& d, StridedArgs& a) {
  a.ndim = 0;
  for (int i = 0; i < d.shape.size(); ++i) {
    if (d.shape[i] == 1) continue;
    const auto ext = static_cast<uint64_t>(d.shape[i]);
    if (a.ndim > 0) {
      const int k = a.ndim - 1;
      if (a.src_stride[k] == d.src_strides[i] * d.shape[i] &&
          a.dst_stride[k] == d.dst_strides[i] * d.shape[i]) {
        a.extent[k] *= ext;
        a.src_stride[k] = d.src_strides[i];
        a.dst_stride[k] = d.dst_strides[i];
        continue;
      }
    }
    a.extent[a.ndim] = ext;
    a.src_stride[a.ndim] = d.src_strides[i];
    a.dst_stride[a.ndim] = d.dst_strides[i];
    ++a.ndim;
  }
  if (a.ndim == 0) {  // a single element
    a.extent[0] = 1;
    a.src_stride[0] = 0;
    a.dst_stride[0] = 0;
    a.ndim = 1;
  }
}

void launch_strided(const ConvertDesc& d, const ConvertArgs& args, int sms, cudaStream_t stream) {
  StridedArgs a{};
  a.src = static_cast<const uint8_t*>(args.src.data());
  a.dst = static_cast<uint8_t*>(args.dst.data());
  a.numel = static_cast<uint64_t>(d.numel());
  a.units = is_packed(d.dst) ? (a.numel + 1) / 2 : a.numel;
  a.src_dtype = d.src;
  a.dst_dtype = d.dst;
  a.sat = d.saturation;
  collapse(d, a);
  // 32-bit when every linear index and every element offset fits.
  uint64_t src_last = 0, dst_last = 0;
  for (int k = 0; k < a.ndim; ++k) {
    src_last += (a.extent[k] - 1) * static_cast<uint64_t>(a.src_stride[k]);
    dst_last += (a.extent[k] - 1) * static_cast<uint64_t>(a.dst_stride[k]);
  }
  constexpr uint64_t kLimit = uint64_t{1} << 31;
  const bool narrow = a.numel < kLimit && src_last < kLimit && dst_last < kLimit;
  if (narrow)
    for (int k = 0; k < a.ndim; ++k)
      a.divisor[k] = Divisor32::make(static_cast<uint32_t>(a.extent[k]));
  if (narrow) {
    auto kernel = convert_strided_kernel<uint32_t>;
    kernel<<<grid_for(a.units, 4, sms, blocks_per_sm<uint32_t>(kernel)), kThreads, 0, stream>>>(a);
  } else {
    auto kernel = convert_strided_kernel<uint64_t>;
    kernel<<<grid_for(a.units, 4, sms, blocks_per_sm<uint64_t>(kernel)), kThreads, 0, stream>>>(a);
  }
  cuda_rt::check_last_launch("convert_strided_kernel");
}

// ---- the kernel object ----------------------------------------------------------------

class ConvertCuda final : public Kernel<ConvertOp> {
 public:
  std::string_view name() const override { return "convert_cuda"; }

  std::string decline(const ConvertDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    const DeviceFacts& f = device_facts(d.device.index);
    if (!f.has_image)
      return "this build has no kernel image for " + f.arch + " (" + f.image_error +
             "; add it to LOWBIT_CUDA_ARCHS)";
    return {};
  }

  KernelSku sku(const ConvertDesc& d) const override {
    std::string variant;
    if (!(d.src_contiguous() && d.dst_contiguous())) {
      variant = "convert_cuda_strided";
    } else if (is_copy(d.src, d.dst, d.saturation)) {
      variant = "convert_cuda_copy";
    } else if (is_static_pair(d.src, d.dst)) {
      variant = "convert_cuda_vec16";  // misaligned views fall back to the strided kernel
    } else {
      variant = "convert_cuda_vec_generic";
    }
    return {"convert",
            Backend::cuda,
            std::string(dtype_name(d.src)) + "->" + std::string(dtype_name(d.dst)),
            "",
            device_facts(d.device.index).arch,
            variant};
  }

  PrecisionGuarantee precision(const ConvertDesc&) const override {
    return {"exact: one round-to-nearest-even per element (f64 sources via f32)", std::nullopt,
            true, true};
  }

  void run(const ConvertDesc& d, const ConvertArgs& a, const Stream& stream,
           Workspace) const override {
    const int64_t n = d.numel();
    if (n == 0) return;
    DeviceScope scope(d.device.index);
    const int sms = device_facts(d.device.index).multiprocessors;
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    if (d.src_contiguous() && d.dst_contiguous()) {
      if (is_copy(d.src, d.dst, d.saturation)) {
        check_cuda(cudaMemcpyAsync(a.dst.data(), a.src.data(),
                                   static_cast<size_t>(storage_bytes(d.src, n)),
                                   cudaMemcpyDeviceToDevice, s),
                   "convert: cudaMemcpyAsync");
        return;
      }
      if (is_static_pair(d.src, d.dst)) {
        if (launch_static(d.src, d.dst, d.saturation, a.src.data(), a.dst.data(), n, sms, s))
          return;
      } else {
        const DynamicPair pair{d.src, d.dst, d.saturation,
                               static_cast<uint8_t>(DynamicPair::group_align(d.src)),
                               static_cast<uint8_t>(DynamicPair::group_align(d.dst))};
        if (launch_vector(pair, pair.src_align, pair.dst_align, d.src, d.dst, a.src.data(),
                          a.dst.data(), n, sms, s))
          return;
      }
    }
    launch_strided(d, a, sms, s);
  }
};

}  // namespace

const Kernel<ConvertOp>& convert_cuda_kernel() {
  static const ConvertCuda kernel;
  return kernel;
}

}  // namespace lowbit
