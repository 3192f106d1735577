// A CUDA dequantize kernel for every GGUF block type (q4_0 ... q8_1, q2_K ... q8_K) to f32,
// f16 or bf16, bit-identical to dequantize_reference.cpp (which calls
// gguf::dequantize_row_reference, formats/gguf_legacy.cpp and gguf_kquants.cpp).
//
// dequantize_cuda (listed before this kernel) serves q8_0 and q4_0 with a tuned path; this
// kernel serves the other types, and q8_0 / q4_0 too when it is asked for by name (the
// backend test runs it on every type).
//
// Work split: a GGUF codes tensor [rows, row bytes] is one flat run of blocks (a row is a
// whole number of blocks), and every type's values come in runs of 32 that one block (legacy
// types) or one 32-value slice of a super-block (K-quants) decodes from the same scale
// fields. One thread decodes one such "chunk" of 32 values into registers and stores them
// (16-byte stores when the destination is 16-byte aligned, one element at a time
// otherwise); consecutive threads take consecutive chunks, so a warp reads one run of blocks.
//
// Bits: every value is the reference's f32 expression with the same operands in the same
// order, each operation rounded once: __fmul_rn / __fsub_rn / __fadd_rn are spelled out so
// that nvcc cannot contract a product and a sum into an FMA (the reference is compiled
// without contraction, as ggml's x86 build runs). Products and sums whose result is NaN (an
// f16 scale field holding Inf or NaN) give the NaN that x86's SSE gives (the first NaN
// operand, quieted; 0 * Inf and Inf - Inf give the default NaN 0xffc00000); when both
// operands are NaN the reference compiler's operand order decides, which is not promised.
// Then one rounding to the destination with numeric.hpp's rules.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "lowbit/gguf_blocks.hpp"
#include "lowbit/quantize.hpp"  // before quantize_cuda_common.cuh, which needs Dtype
#include "ops/quantize/gguf_cuda_x86.cuh"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using namespace quant_cuda;
using namespace gguf_cuda;
using gguf::GgmlType;

constexpr int kThreads = 256;

/// The little-endian u32 at p (q5_0 / q5_1's high bits, q8_K's f32 d).
__device__ __forceinline__ uint32_t u32_at(const uint8_t* p) {
  return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// ---- one chunk: 32 values --------------------------------------------------------------------

/// Bytes per block and chunks (of 32 values) per block.
template <GgmlType T>
constexpr int kBlockBytes = T == GgmlType::q4_0   ? 18
                            : T == GgmlType::q4_1 ? 20
                            : T == GgmlType::q5_0 ? 22
                            : T == GgmlType::q5_1 ? 24
                            : T == GgmlType::q8_0 ? 34
                            : T == GgmlType::q8_1 ? 36
                            : T == GgmlType::q2_K ? 84
                            : T == GgmlType::q3_K ? 110
                            : T == GgmlType::q4_K ? 144
                            : T == GgmlType::q5_K ? 176
                            : T == GgmlType::q6_K ? 210
                                                  : 292;  // q8_K
template <GgmlType T>
constexpr int kChunksPerBlock =
    T == GgmlType::q2_K || T == GgmlType::q3_K || T == GgmlType::q4_K || T == GgmlType::q5_K ||
            T == GgmlType::q6_K || T == GgmlType::q8_K
        ? 8
        : 1;

/// Chunk j (0 .. kChunksPerBlock - 1) of block y, in the reference's output order.
template <GgmlType T>
__device__ __forceinline__ void decode_chunk(const uint8_t* y, int j, float (&v)[32]) {
  if constexpr (T == GgmlType::q4_0 || T == GgmlType::q4_1) {
    // x = (q - 8) * d  |  q * d + m; byte l: value l (low nibble), l + 16 (high).
    const float d = f16_at(y);
    const uint8_t* qs = y + (T == GgmlType::q4_0 ? 2 : 4);
    if constexpr (T == GgmlType::q4_0) {
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        v[l] = mul(fl((qs[l] & 0x0F) - 8), d);
        v[l + 16] = mul(fl((qs[l] >> 4) - 8), d);
      }
    } else {
      const float m = f16_at(y + 2);
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        v[l] = add(mul(fl(qs[l] & 0x0F), d), m);
        v[l + 16] = add(mul(fl(qs[l] >> 4), d), m);
      }
    }
  } else if constexpr (T == GgmlType::q5_0 || T == GgmlType::q5_1) {
    // Fifth bits in a u32: bit l for value l, bit l + 16 for value l + 16.
    constexpr bool k51 = T == GgmlType::q5_1;
    const float d = f16_at(y);
    const uint32_t qh = u32_at(y + (k51 ? 4 : 2));
    const uint8_t* qs = y + (k51 ? 8 : 6);
    const float m = k51 ? f16_at(y + 2) : 0.0f;
#pragma unroll
    for (int l = 0; l < 16; ++l) {
      const int q0 = (qs[l] & 0x0F) | static_cast<int>(((qh >> l) << 4) & 0x10);
      const int q1 = (qs[l] >> 4) | static_cast<int>((qh >> (l + 12)) & 0x10);
      if constexpr (k51) {
        v[l] = add(mul(fl(q0), d), m);
        v[l + 16] = add(mul(fl(q1), d), m);
      } else {
        v[l] = mul(fl(q0 - 16), d);
        v[l + 16] = mul(fl(q1 - 16), d);
      }
    }
  } else if constexpr (T == GgmlType::q8_0 || T == GgmlType::q8_1) {
    const float d = f16_at(y);
    const uint8_t* qs = y + (T == GgmlType::q8_0 ? 2 : 4);
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = mul(fl(static_cast<int8_t>(qs[l])), d);
  } else if constexpr (T == GgmlType::q2_K || T == GgmlType::q3_K) {
    // Chunk j = 4 * half + shift / 2: bits `shift` of the 32 bytes of its half, as two
    // sub-blocks of 16 (scales 2j, 2j + 1).
    const int half = j >> 2, shift = 2 * (j & 3);
    constexpr int kQs = T == GgmlType::q2_K ? 16 : 32;  // offset of the 2-bit codes
    const uint8_t* q = y + kQs + 32 * half;
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      const int is = 2 * j + part;
      if constexpr (T == GgmlType::q2_K) {
        const uint8_t sc = y[is];
        const float dl = mul(f16_at(y + 80), fl(sc & 0xF));
        const float ml = mul(f16_at(y + 82), fl(sc >> 4));
#pragma unroll
        for (int l = 0; l < 16; ++l)
          v[16 * part + l] = sub(mul(dl, fl((q[16 * part + l] >> shift) & 3)), ml);
      } else {
        const float dl = mul(f16_at(y + 108), fl(q3_k_scale(y + 96, is)));
        const uint8_t m = static_cast<uint8_t>(1u << j);
#pragma unroll
        for (int l = 0; l < 16; ++l) {
          const int k = 16 * part + l;
          // A clear hmask bit means the code is q - 4.
          const int c = ((q[k] >> shift) & 3) - ((y[k] & m) ? 0 : 4);
          v[k] = mul(dl, fl(c));
        }
      }
    }
  } else if constexpr (T == GgmlType::q4_K || T == GgmlType::q5_K) {
    // Sub-block j: the low (j even) or high (j odd) nibbles of the 32 bytes of pair j / 2,
    // plus (q5_K) bit j of qh[l].
    constexpr bool k5 = T == GgmlType::q5_K;
    int sc, m;
    scale_min_k4(j, y + 4, sc, m);
    const float d1 = mul(f16_at(y), fl(sc));
    const float m1 = mul(f16_at(y + 2), fl(m));
    const uint8_t* ql = y + (k5 ? 48 : 16) + 32 * (j >> 1);
    const int nib = 4 * (j & 1);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      int c = (ql[l] >> nib) & 0xF;
      if constexpr (k5) c += (y[16 + l] >> j) & 1 ? 16 : 0;
      v[l] = sub(mul(d1, fl(c)), m1);
    }
  } else if constexpr (T == GgmlType::q6_K) {
    // Half h = j / 4 (128 values), quarter k = j % 4: value l + 32k of the half.
    const int h = j >> 2, k = j & 3;
    const uint8_t* ql = y + 64 * h + (k & 1 ? 32 : 0);
    const uint8_t* qh = y + 128 + 32 * h;
    const auto* sc = reinterpret_cast<const int8_t*>(y + 192 + 8 * h);
    const float d = f16_at(y + 208);
    const int lo_shift = k & 2 ? 4 : 0;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const int c = (((ql[l] >> lo_shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
      // ggml: d * sc[is] * q, left to right.
      v[l] = mul(mul(d, fl(sc[l / 16 + 2 * k])), fl(c));
    }
  } else {  // q8_K: f32 d, int8 codes
    const float d = __uint_as_float(u32_at(y));
    const auto* qs = reinterpret_cast<const int8_t*>(y + 4 + 32 * j);
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = mul(d, fl(qs[l]));
  }
}

struct ChunkArgs {
  const uint8_t* codes;
  void* dst;
  uint64_t chunks;  ///< numel / 32
  bool vector;      ///< dst is 16-byte aligned: 16-byte stores
};

template <GgmlType T, Dtype D>
__global__ void __launch_bounds__(kThreads) gguf_dequantize_kernel(ChunkArgs a) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t c = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < a.chunks;
       c += stride) {
    const uint64_t b = c / kChunksPerBlock<T>;
    const int j = static_cast<int>(c - b * kChunksPerBlock<T>);
    float v[32];
    decode_chunk<T>(a.codes + b * kBlockBytes<T>, j, v);
    if (a.vector) {
      constexpr int kBytes = D == Dtype::f32 ? 4 : 2;
      uint8_t* p = static_cast<uint8_t*>(a.dst) + c * 32 * kBytes;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float(&v8)[8] = *reinterpret_cast<const float(*)[8]>(v + 8 * k);
        store8<D>(p + 8 * k * kBytes, v8);
      }
    } else {
#pragma unroll
      for (int l = 0; l < 32; ++l) store_any(a.dst, D, c * 32 + l, v[l]);
    }
  }
}

template <GgmlType T>
void launch_type(Dtype dst, const ChunkArgs& a, int sms, cudaStream_t s) {
  auto go = [&](auto kernel) {
    const uint32_t grid = grid_of(a.chunks, kThreads, resident_grid(kernel, kThreads, sms));
    kernel<<<grid, kThreads, 0, s>>>(a);
    check_launch("gguf_dequantize_kernel");
  };
  switch (dst) {
    case Dtype::f32:
      return go(gguf_dequantize_kernel<T, Dtype::f32>);
    case Dtype::f16:
      return go(gguf_dequantize_kernel<T, Dtype::f16>);
    default:
      return go(gguf_dequantize_kernel<T, Dtype::bf16>);
  }
}

/// Launches the kernel for `type`; false if this file has none for it.
bool launch(GgmlType type, Dtype dst, const ChunkArgs& a, int sms, cudaStream_t s) {
  switch (type) {
    case GgmlType::q4_0:
      launch_type<GgmlType::q4_0>(dst, a, sms, s);
      break;
    case GgmlType::q4_1:
      launch_type<GgmlType::q4_1>(dst, a, sms, s);
      break;
    case GgmlType::q5_0:
      launch_type<GgmlType::q5_0>(dst, a, sms, s);
      break;
    case GgmlType::q5_1:
      launch_type<GgmlType::q5_1>(dst, a, sms, s);
      break;
    case GgmlType::q8_0:
      launch_type<GgmlType::q8_0>(dst, a, sms, s);
      break;
    case GgmlType::q8_1:
      launch_type<GgmlType::q8_1>(dst, a, sms, s);
      break;
    case GgmlType::q2_K:
      launch_type<GgmlType::q2_K>(dst, a, sms, s);
      break;
    case GgmlType::q3_K:
      launch_type<GgmlType::q3_K>(dst, a, sms, s);
      break;
    case GgmlType::q4_K:
      launch_type<GgmlType::q4_K>(dst, a, sms, s);
      break;
    case GgmlType::q5_K:
      launch_type<GgmlType::q5_K>(dst, a, sms, s);
      break;
    case GgmlType::q6_K:
      launch_type<GgmlType::q6_K>(dst, a, sms, s);
      break;
    case GgmlType::q8_K:
      launch_type<GgmlType::q8_K>(dst, a, sms, s);
      break;
    default:
      return false;
  }
  return true;
}

bool block_type(const QuantScheme& s) {
  if (s.format != QuantFormat::gguf) return false;
  const gguf::BlockLayout* layout = gguf::block_layout(static_cast<GgmlType>(s.gguf_type));
  return layout != nullptr && layout->block_elems > 1;
}

class GgufDequantizeCuda final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "gguf_dequantize_cuda"; }

  std::string decline(const DequantizeDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    if (!block_type(d.scheme)) return "GGUF block types only";
    const DeviceFacts& f = facts(d.device.index);
    if (!f.has_image)
      return "this build has no kernel image for " + f.arch + " (" + f.image_error +
             "; add it to LOWBIT_CUDA_ARCHS)";
    if (d.dst != Dtype::f32 && d.dst != Dtype::f16 && d.dst != Dtype::bf16)
      return "dst must be f32, f16 or bf16 (f64: the reference kernel, on the CPU only)";
    return {};
  }

  KernelSku sku(const DequantizeDesc& d) const override {
    return {"dequantize",
            Backend::cuda,
            std::string(dtype_name(d.dst)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const DequantizeDesc&) const override {
    return {
        "ggml's dequantize_row_* in f32 (no FMA), one rounding to the destination "
        "(bit-identical to the reference)",
        std::nullopt, true, true};
  }

  void run(const DequantizeDesc& d, const DequantizeArgs& a, const Stream& stream,
           Workspace) const override {
    const int64_t n = numel(d.shape);
    if (n == 0) return;
    DeviceScope scope(d.device.index);
    ChunkArgs ga{};
    ga.codes = static_cast<const uint8_t*>(a.src.codes.data());
    ga.dst = a.dst.data();
    ga.chunks = static_cast<uint64_t>(n) / 32;  // every block type holds 32k values
    ga.vector = aligned(a.dst.data(), 16);
    const auto type = static_cast<GgmlType>(d.scheme.gguf_type);
    if (!launch(type, d.dst, ga, facts(d.device.index).multiprocessors,
                static_cast<cudaStream_t>(stream.native_handle())))
      throw_error(ErrorCode::internal, "gguf_dequantize_cuda: no kernel for " + d.scheme.str());
  }

 private:
  static const DeviceFacts& facts(int device) {
    return device_facts(device, gguf_dequantize_kernel<GgmlType::q8_0, Dtype::f32>);
  }
};

}  // namespace

const Kernel<DequantizeOp>& gguf_dequantize_cuda_kernel() {
  static const GgufDequantizeCuda kernel;
  return kernel;
}

}  // namespace lowbit
