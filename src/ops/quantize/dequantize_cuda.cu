// The CUDA kernel of dequantize: bit-identical to dequantize_reference.cpp for f32, f16 and
// bf16 destinations, every non-GGUF scheme, and GGUF q8_0 / q4_0.
//
// Paths, chosen per call (all under the one kernel name):
//  - chunks: a thread decodes 8 consecutive elements ("a chunk") and writes them with one
//    16-byte store, consecutive threads writing consecutive chunks. f32 destinations take
//    quads instead (4 elements, one 16-byte store; a warp's 32 chunks are its 64 quads, lane
//    and lane + 32), so that every store instruction writes 512 contiguous bytes: with two
//    stores 32 bytes apart per lane, each instruction wrote half of every 32-byte sector
//    (H100, 16384 x 8192: q8_0 / q4_0 -> f32 82.7 / 81.2% of copy -> 88.5 / 86.3%). A chunk
//    never straddles a scale group when every group is a contiguous run whose length is a
//    multiple of 8 (per-tensor, per-token, per-channel on axis 0, blockG, nvfp4, mx, GGUF),
//    so the thread reads its group's scale (and zero point) once: group = chunk / (chunks
//    per group), by multiplication with a precomputed reciprocal. Codes are read as one
//    4- or 8-byte word per chunk (2 or 4 per quad; coalesced across the warp); GGUF: a
//    warp's 32 chunks are 8 whole blocks, loaded with 16-byte loads into shared memory
//    (codes 16-byte aligned; else each lane reads its slice of the 18- / 34-byte block in
//    2-byte words: measured with quads on every block too, 55.8 / 63.1% of copy, staged
//    88.5 / 86.3%).
//    Four chunks (eight quads) per thread per step, loads first, keep several loads in flight; the
//    grid gives every block the same number of steps (balanced_grid). Stores carry the evict-first
//    hint (st.global.cs), as do the 4-byte code loads of the 4-bit formats (measured gains
//    beside the code and in BENCHMARKS.md).
//  - bulk (int4 / uint4 to bf16 / f16, kBulk; GGUF q8_0 / q4_0 to f32 with 16-byte aligned
//    codes): the chunks path, but a block's step is 2048 consecutive chunks (GGUF: 256
//    blocks, staged whole in shared memory) decoded into shared memory and written by one
//    TMA bulk store (dequantize_cuda_bulk.cuh;
//    bench/bench_write_stream.cu measured why).
//  - generic: any other layout (2-d blocks, per-channel on a later axis, ragged fp8 blocks,
//    element counts that are not a multiple of 8, misaligned views): one element per
//    thread step, its group from formats::GroupMap.
//
// Bits: each element is quant_math.hpp's dequantize rule, one or two f32 products rounded to
// nearest-even, then numeric.hpp's rounding to the destination (hardware cvt.rn, which
// agrees with it on every input but NaN). Inputs here are arbitrary codes and scales (an
// e4m3 NaN code, an e8m0 0xff scale, an Inf scale times a zero code), and a NaN result must
// carry the bits the reference's x86 build gives: a chunk whose scale or codes could make a
// NaN takes mul_x86 and the NaN-fixing conversions; every other chunk (one test of its
// scale and code bytes) takes plain products, plain conversions and code decoding without
// integer-to-float instructions (plain_code). When both factors of
// a product are NaN, x86 returns the first one, and which is first is the reference
// compiler's choice: that case is not promised (the backend test avoids it too).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "formats/groups.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/dequantize_cuda_bulk.cuh"
#include "ops/quantize/dequantize_cuda_items.cuh"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using namespace quant_cuda;
using namespace dequant_cuda;

/// kQuads (f32 destinations): a lane's items are quads, 4 elements stored with one 16-byte
/// store, so that each store instruction of a warp writes 512 contiguous bytes. A chunk of 8
/// f32 takes two stores 32 bytes apart per lane, each instruction then writing every 32-byte
/// sector half (twice the L2 write requests per byte).
template <DCode F, Dtype D, bool kQuads>
__global__ void __launch_bounds__(kThreads) dequantize_chunks_kernel(ChunkArgs a) {
  // Chunks per thread and step, their loads issued first (8 measured no better on the H100,
  // and worse for the 4-bit float formats: 78% of copy against 85%). With quads, each of
  // the U slots is two quads: the warp's 32 chunks are 64 quads, lane and lane + 32.
  constexpr int U = 4;
  constexpr int kPer = kQuads ? 2 : 1;  // items per slot
  constexpr int kItems = U * kPer;
  constexpr int N = kQuads ? 4 : 8;                    // elements per item
  constexpr int kOut = N * (D == Dtype::f32 ? 4 : 2);  // bytes per item
  float global = 0.0f;
  if constexpr (F == DCode::nvfp4) global = a.global[0];
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t step = U * stride;
  const uint64_t items = static_cast<uint64_t>(a.chunks) * kPer;
  // The loops are warp-uniform (GGUF's staging synchronises the warp): w0 is the warp's
  // first chunk of a step. Each step's loads are issued during the previous step's
  // arithmetic (software pipelining), so that loads stay in flight while a warp computes.
  const uint64_t first = blockIdx.x * static_cast<uint64_t>(blockDim.x) + (threadIdx.x - lane);
  // Item k of the lane in the step at w0 (slot k / kPer).
  auto item_of = [&](uint64_t w0, int k) -> uint64_t {
    const uint64_t c0 = w0 + (k / kPer) * stride;
    return kQuads ? 2 * c0 + 32 * (k % kPer) + lane : c0 + lane;
  };
  auto decode_store = [&](uint64_t w0, const ChunkRaw(&raw)[kItems]) {
    ChunkRaw r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      r[k] = raw[k];
      if constexpr (kIntScale<F>)
        r[k].scale = widen_scale(__float_as_uint(r[k].scale), a.scale_dtype);
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint64_t i = item_of(w0, k);
      if (i < items) {
        // Spelled out rather than through decode_store: that helper moved the register
        // allocation of two of these kernels (59 -> 56, 79 -> 80), and these are measured.
        if (chunk_is_plain<F>(r[k], global)) {
          float v[N];
          decode_chunk<F, true, N>(r[k], global, v);
          store_item<D, true, N>(a.dst + i * kOut, v);
        } else {
          decode_store_careful<F, D, N>(r[k], global, a.dst + i * kOut);
        }
      }
    }
  };
  if constexpr (kGguf<F>) {
    if (a.staged) {
      constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
      constexpr int kStage = 8 * kBytes;  // 8 blocks: a warp's 32 chunks
      __shared__ __align__(16) uint8_t stage[kThreads / 32][U][kStage];
      uint8_t(*st)[kStage] = stage[threadIdx.x / 32];
      uint4 next[U];
      auto fetch = [&](uint64_t w0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const uint64_t c = w0 + u * stride;
          next[u] = c + 32 <= a.chunks && lane < kStage / 16
                        ? reinterpret_cast<const uint4*>(a.codes + c / 4 * kBytes)[lane]
                        : make_uint4(0, 0, 0, 0);
        }
      };
      if (first < a.chunks) fetch(first);
      for (uint64_t w0 = first; w0 < a.chunks; w0 += step) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = next[u];
        if (w0 + step < a.chunks) fetch(w0 + step);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const uint64_t c = w0 + u * stride;
          if (c + 32 <= a.chunks) {
            if (lane < kStage / 16) reinterpret_cast<uint4*>(st[u])[lane] = v[u];
          } else if (c < a.chunks) {  // the last, partial step: 2-byte copies
            const uint32_t half_words = static_cast<uint32_t>((a.chunks - c) / 4) * kBytes / 2;
            const auto* src = reinterpret_cast<const uint16_t*>(a.codes + c / 4 * kBytes);
            for (uint32_t k = lane; k < half_words; k += 32)
              reinterpret_cast<uint16_t*>(st[u])[k] = src[k];
          }
        }
        __syncwarp();
        ChunkRaw r[kItems];
#pragma unroll
        for (int k = 0; k < kItems; ++k)
          if (item_of(w0, k) < items)
            r[k] = staged_item<F, kQuads>(st[k / kPer], 32 * (k % kPer) + lane);
        __syncwarp();
        decode_store(w0, r);
      }
      return;
    }
  }
  ChunkRaw next[kItems];
  auto fetch = [&](uint64_t w0) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint64_t i = item_of(w0, k);
      if (i < items) next[k] = load_item<F, kQuads>(a, i);
    }
  };
  if (first < a.chunks) fetch(first);
  for (uint64_t w0 = first; w0 < a.chunks; w0 += step) {
    ChunkRaw r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) r[k] = next[k];
    if (w0 + step < a.chunks) fetch(w0 + step);
    decode_store(w0, r);
  }
}

// ---- the generic path -------------------------------------------------------------------------

struct GenericArgs {
  const uint8_t* codes;
  const void* scale;
  const int32_t* zero;
  const float* global;
  void* dst;
  Dtype dst_dtype;
  uint64_t n;
  formats::GroupMap gm;
  QuantFormat format;
  Dtype code_dtype;
  Dtype scale_dtype;
  bool q8_0;  ///< GGUF: q8_0, else q4_0
};

__device__ __forceinline__ uint32_t nibble_at(const uint8_t* codes, uint64_t i) {
  return (codes[i >> 1] >> ((i & 1) * 4)) & 0xfu;
}

__device__ __forceinline__ float generic_value(const GenericArgs& a, uint64_t i) {
  if (a.format == QuantFormat::gguf) {
    const uint64_t b = i / 32;
    const uint32_t e = static_cast<uint32_t>(i % 32);
    const uint8_t* blk = a.codes + b * (a.q8_0 ? kQ8_0Bytes : kQ4_0Bytes);
    const float d = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));
    if (a.q8_0) return mul_x86(static_cast<float>(static_cast<int8_t>(blk[2 + e])), d);
    const uint32_t byte = blk[2 + (e & 15)];
    const uint32_t q = e < 16 ? (byte & 0x0fu) : (byte >> 4);
    return mul_x86(static_cast<float>(static_cast<int32_t>(q) - 8), d);
  }
  const auto g = static_cast<uint64_t>(a.gm.group_of(static_cast<int64_t>(i)));
  switch (a.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
    case QuantFormat::int4:
    case QuantFormat::uint4: {
      int32_t c;
      switch (a.code_dtype) {
        case Dtype::i8:
          c = static_cast<int8_t>(a.codes[i]);
          break;
        case Dtype::u8:
          c = a.codes[i];
          break;
        case Dtype::i4:
          c = static_cast<int32_t>(nibble_at(a.codes, i) ^ 8u) - 8;
          break;
        default:
          c = static_cast<int32_t>(nibble_at(a.codes, i));
          break;
      }
      const int32_t z = a.zero ? a.zero[g] : 0;
      return mul_x86(static_cast<float>(c - z), load_scale(a.scale, a.scale_dtype, g));
    }
    case QuantFormat::fp8e4m3:
      return mul_x86(f8e4m3fn_to_f32(a.codes[i]), static_cast<const float*>(a.scale)[g]);
    case QuantFormat::fp8e5m2:
      return mul_x86(f8e5m2_to_f32(a.codes[i]), static_cast<const float*>(a.scale)[g]);
    case QuantFormat::nvfp4:
      return mul_x86(mul_x86(f4e2m1_to_f32(static_cast<uint8_t>(nibble_at(a.codes, i))),
                             f8e4m3fn_to_f32(static_cast<const uint8_t*>(a.scale)[g])),
                     a.global[0]);
    case QuantFormat::mxfp4:
      return mul_x86(f4e2m1_to_f32(static_cast<uint8_t>(nibble_at(a.codes, i))),
                     e8m0_to_f32(static_cast<const uint8_t*>(a.scale)[g]));
    case QuantFormat::mxfp8e4m3:
      return mul_x86(f8e4m3fn_to_f32(a.codes[i]),
                     e8m0_to_f32(static_cast<const uint8_t*>(a.scale)[g]));
    default:
      return mul_x86(f8e5m2_to_f32(a.codes[i]),
                     e8m0_to_f32(static_cast<const uint8_t*>(a.scale)[g]));
  }
}

__global__ void __launch_bounds__(kThreads) dequantize_generic_kernel(GenericArgs a) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < a.n;
       i += stride)
    store_any(a.dst, a.dst_dtype, i, generic_value(a, i));
}

// ---- host side --------------------------------------------------------------------------------

DCode dcode_of(const QuantScheme& s) {
  switch (s.format) {
    case QuantFormat::int8:
      return DCode::i8;
    case QuantFormat::uint8:
      return DCode::u8;
    case QuantFormat::int4:
      return DCode::i4;
    case QuantFormat::uint4:
      return DCode::u4;
    case QuantFormat::fp8e4m3:
      return DCode::e4m3;
    case QuantFormat::fp8e5m2:
      return DCode::e5m2;
    case QuantFormat::nvfp4:
      return DCode::nvfp4;
    case QuantFormat::mxfp4:
      return DCode::mxfp4;
    case QuantFormat::mxfp8e4m3:
      return DCode::mxe4m3;
    case QuantFormat::mxfp8e5m2:
      return DCode::mxe5m2;
    default:
      return s.gguf_type == 8u ? DCode::q8_0 : DCode::q4_0;
  }
}

/// Elements per scale group when groups are contiguous runs (GGUF: 32, the block), else 0.
int64_t chunk_group_length(const QuantScheme& s, const Shape& shape, int64_t n) {
  if (s.format == QuantFormat::gguf) return 32;
  if (s.format == QuantFormat::nvfp4 || is_mx(s.format)) return s.block;
  return flat_group_length(s, shape, n);
}

/// Whether the chunks path applies to the descriptor (views aligned).
bool chunks_fit(const DequantizeDesc& d) {
  const int64_t n = numel(d.shape);
  const int64_t g = chunk_group_length(d.scheme, d.shape, n);
  return n > 0 && n % 8 == 0 && g > 0 && g % 8 == 0 && n / 8 < (int64_t{1} << 32);
}

/// Twice stream_grid's waves for the formats where two resident grids had measured faster than one
/// (H100, 16384 x 8192, two runs each, % of copy one wave -> two: int8 -> bf16 89.7 -> 90.3,
/// fp8 89.6 -> 89.8, int4:block32 86.9 -> 87.3, q8_0 -> f32 89.0 -> 89.9, q4_0 -> f32 87.7
/// -> 88.3); e2m1 codes (nvfp4 89.9 -> 89.4, mxfp4 89.8 -> 89.2) keep one wave, and so do
/// the MX fp8 formats (not measured: they share mxfp4's scales).
template <DCode F>
inline constexpr uint32_t kWaves =
    F == DCode::nvfp4 || F == DCode::mxfp4 || F == DCode::mxe4m3 || F == DCode::mxe5m2 ? 1 : 2;

template <DCode F, Dtype D>
void launch_chunks(const ChunkArgs& a, int sms, cudaStream_t stream) {
  // GGUF -> f32 with 16-byte aligned codes: the bulk path, 3 stages (H100, 16384 x 8192, two
  // runs, % of copy, lanes -> 1 / 2 / 3 stages: q8_0 89.9-90.0 -> 90.5-90.7 / 90.4-90.8 /
  // 90.7-91.2, q4_0 88.0-88.2 -> 89.0-89.9 / 89.9-90.2 / 90.3).
  if constexpr (kGguf<F> && D == Dtype::f32) {
    if (a.staged && gguf_bulk_smem<F, 3>() <= a.bulk_smem)
      return launch_gguf_bulk<F, 3>(a, sms, stream);
  }
  if constexpr (kBulk<F, D>) {
    if (bulk_smem<D, 2, 8>() <= a.bulk_smem) return launch_bulk<F, D, 2, 8>(a, sms, stream);
  }
  auto kernel = dequantize_chunks_kernel<F, D, D == Dtype::f32>;
  const uint32_t grid =
      balanced_grid(a.chunks, kThreads * 4, kWaves<F> * stream_grid(kernel, kThreads, sms));
  kernel<<<grid, kThreads, 0, stream>>>(a);
  check_launch("dequantize_chunks_kernel");
}

template <DCode F>
void launch_chunks_dst(Dtype dst, const ChunkArgs& a, int sms, cudaStream_t stream) {
  switch (dst) {
    case Dtype::f32:
      return launch_chunks<F, Dtype::f32>(a, sms, stream);
    case Dtype::bf16:
      return launch_chunks<F, Dtype::bf16>(a, sms, stream);
    default:
      return launch_chunks<F, Dtype::f16>(a, sms, stream);
  }
}

void launch_chunks_any(DCode f, Dtype dst, const ChunkArgs& a, int sms, cudaStream_t stream) {
  switch (f) {
    case DCode::i8:
      return launch_chunks_dst<DCode::i8>(dst, a, sms, stream);
    case DCode::u8:
      return launch_chunks_dst<DCode::u8>(dst, a, sms, stream);
    case DCode::i4:
      return launch_chunks_dst<DCode::i4>(dst, a, sms, stream);
    case DCode::u4:
      return launch_chunks_dst<DCode::u4>(dst, a, sms, stream);
    case DCode::e4m3:
      return launch_chunks_dst<DCode::e4m3>(dst, a, sms, stream);
    case DCode::e5m2:
      return launch_chunks_dst<DCode::e5m2>(dst, a, sms, stream);
    case DCode::nvfp4:
      return launch_chunks_dst<DCode::nvfp4>(dst, a, sms, stream);
    case DCode::mxfp4:
      return launch_chunks_dst<DCode::mxfp4>(dst, a, sms, stream);
    case DCode::mxe4m3:
      return launch_chunks_dst<DCode::mxe4m3>(dst, a, sms, stream);
    case DCode::mxe5m2:
      return launch_chunks_dst<DCode::mxe5m2>(dst, a, sms, stream);
    case DCode::q8_0:
      return launch_chunks_dst<DCode::q8_0>(dst, a, sms, stream);
    case DCode::q4_0:
      return launch_chunks_dst<DCode::q4_0>(dst, a, sms, stream);
  }
}

class DequantizeCuda final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "dequantize_cuda"; }

  std::string decline(const DequantizeDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    const DeviceFacts& f = facts(d.device.index);
    if (!f.has_image)
      return "this build has no kernel image for " + f.arch + " (" + f.image_error +
             "; add it to LOWBIT_CUDA_ARCHS)";
    if (d.dst != Dtype::f32 && d.dst != Dtype::f16 && d.dst != Dtype::bf16)
      return "dst must be f32, f16 or bf16 (f64: the reference kernel, on the CPU only)";
    if (d.scheme.format == QuantFormat::gguf && !is_gguf_fast(d.scheme))
      return "GGUF " + d.scheme.str() +
             " has no CUDA kernel (q8_0 and q4_0 do; the reference kernel serves the other "
             "types, on the CPU only)";
    return {};
  }

  KernelSku sku(const DequantizeDesc& d) const override {
    // One kernel name for both paths (chunks, generic: see the file comment).
    return {"dequantize",
            Backend::cuda,
            std::string(dtype_name(d.dst)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const DequantizeDesc&) const override {
    return {
        "the rules of docs/formats.md in f32, one rounding to the destination "
        "(bit-identical to the reference, NaN bits included)",
        std::nullopt, true, true};
  }

  void run(const DequantizeDesc& d, const DequantizeArgs& a, const Stream& stream,
           Workspace) const override {
    const int64_t n = numel(d.shape);
    if (n == 0) return;
    DeviceScope scope(d.device.index);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int sms = facts(d.device.index).multiprocessors;
    const QuantScheme& q = d.scheme;
    const bool affine = q.is_integer() && !q.symmetric;
    const DCode f = dcode_of(q);
    if (chunks_fit(d)) {
      const bool gguf = q.format == QuantFormat::gguf;
      const int code_align = gguf ? 2 : (is_packed(q.code_dtype()) ? 4 : 8);
      if (aligned(a.dst.data(), 16) && aligned(a.src.codes.data(), code_align)) {
        ChunkArgs ca{};
        ca.codes = static_cast<const uint8_t*>(a.src.codes.data());
        ca.scale = a.src.scale.data();
        ca.zero = affine ? a.src.zero.data_as<const int32_t>() : nullptr;
        ca.global =
            q.format == QuantFormat::nvfp4 ? a.src.global_scale.data_as<const float>() : nullptr;
        ca.dst = static_cast<uint8_t*>(a.dst.data());
        ca.chunks = static_cast<uint32_t>(n / 8);
        ca.per_group =
            Divisor32::make(static_cast<uint32_t>(chunk_group_length(q, d.shape, n) / 8));
        ca.scale_dtype = q.is_integer() ? q.scale_dtype : Dtype::f32;
        ca.staged = gguf && aligned(ca.codes, 16);
        // The bulk kernels' bodies are compiled for sm_90 and later only (cp.async.bulk).
        const DeviceFacts& dev = facts(d.device.index);
        ca.bulk_smem = dev.sm >= 90 ? dev.smem_optin : 0;
        // LOWBIT_DEQUANT_BULK=0: the lanes' stores everywhere (what pre-Hopper devices run;
        // tests use it to keep that path covered on the GPU machine). Read on every call.
        if (const char* e = std::getenv("LOWBIT_DEQUANT_BULK"); e && e[0] == '0') ca.bulk_smem = 0;
        launch_chunks_any(f, d.dst, ca, sms, s);
        return;
      }
    }
    GenericArgs ga{};
    ga.codes = static_cast<const uint8_t*>(a.src.codes.data());
    ga.scale = a.src.scale.data();
    ga.zero = affine ? a.src.zero.data_as<const int32_t>() : nullptr;
    ga.global =
        q.format == QuantFormat::nvfp4 ? a.src.global_scale.data_as<const float>() : nullptr;
    ga.dst = a.dst.data();
    ga.dst_dtype = d.dst;
    ga.n = static_cast<uint64_t>(n);
    if (q.format != QuantFormat::gguf) ga.gm = formats::GroupMap::make(q, d.shape);
    ga.format = q.format;
    ga.code_dtype = q.format == QuantFormat::gguf ? Dtype::u8 : q.code_dtype();
    ga.scale_dtype = q.is_integer() ? q.scale_dtype : Dtype::f32;
    ga.q8_0 = q.gguf_type == 8u;
    const uint32_t grid = grid_of(static_cast<uint64_t>(n), kThreads * 4,
                                  resident_grid(dequantize_generic_kernel, kThreads, sms));
    dequantize_generic_kernel<<<grid, kThreads, 0, s>>>(ga);
    check_launch("dequantize_generic_kernel");
  }

 private:
  static const DeviceFacts& facts(int device) {
    return device_facts(device, dequantize_generic_kernel);
  }
};

}  // namespace

const Kernel<DequantizeOp>& dequantize_cuda_kernel() {
  static const DequantizeCuda kernel;
  return kernel;
}

}  // namespace lowbit
