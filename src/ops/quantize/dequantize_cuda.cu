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
//    TMA bulk store (dequantize_bulk_kernel, dequantize_gguf_bulk_kernel;
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
#include <string>

#include "formats/groups.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using namespace quant_cuda;

constexpr int kThreads = 256;

enum class DCode : int { i8, u8, i4, u4, e4m3, e5m2, nvfp4, mxfp4, mxe4m3, mxe5m2, q8_0, q4_0 };

template <DCode F>
constexpr bool kNibbles =
    F == DCode::i4 || F == DCode::u4 || F == DCode::nvfp4 || F == DCode::mxfp4;
template <DCode F>
constexpr bool kGguf = F == DCode::q8_0 || F == DCode::q4_0;
/// Integer formats: a scale of the scheme's dtype (f32, f16, bf16), loaded as raw bits.
template <DCode F>
constexpr bool kIntScale = F == DCode::i8 || F == DCode::u8 || F == DCode::i4 || F == DCode::u4;

struct ChunkArgs {
  const uint8_t* codes;
  const void* scale;
  const int32_t* zero;  ///< null: symmetric (zero point 0)
  const float* global;  ///< nvfp4
  uint8_t* dst;
  uint32_t chunks;
  Divisor32 per_group;  ///< chunks per scale group (GGUF: per block)
  Dtype scale_dtype;
  bool staged;  ///< GGUF with 16-byte aligned codes: blocks come in through shared memory
};

/// What one chunk needs from memory, read before any arithmetic.
struct ChunkRaw {
  uint32_t lo, hi;  ///< codes (4 bytes in lo for nibbles)
  float scale;      ///< the group's scale as f32 (int / fp8 scale, nvfp4 block scale, mx
                    ///< 2^e, GGUF d); integer formats: its raw bits until widen_scale
  int32_t zero;
  uint32_t aux;  ///< GGUF: the chunk's position in its block
};

/// f16 bits -> f32 as f16_to_f32 gives it: the hardware conversion (exact for every finite
/// and infinite value), a NaN with its payload kept and not quieted; no branch.
__device__ __forceinline__ float f16_bits_to_f32(uint32_t h) {
  const float f = __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
  const uint32_t nan = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13);
  return (h & 0x7fffu) > 0x7c00u ? __uint_as_float(nan) : f;
}

/// An integer format's scale g as raw bits (f32, or a 16-bit pattern zero-extended), by one
/// predicated load of the dtype's width: no branch, so that a step's loads all issue before
/// any of them is waited on (a switch on the dtype put each conversion, and its wait for the
/// load, inside its own branch, between the chunks' loads). widen_scale converts later.
__device__ __forceinline__ uint32_t load_scale_bits(const void* base, bool wide, uint32_t g) {
  const char* p = static_cast<const char*>(base) + (static_cast<uint64_t>(g) << (wide ? 2 : 1));
  uint32_t v;
  asm volatile(
      "{\n .reg .pred w;\n setp.ne.u32 w, %2, 0;\n @w ld.global.nc.u32 %0, [%1];\n"
      " @!w ld.global.nc.u16 %0, [%1];\n}"
      : "=r"(v)
      : "l"(p), "r"(static_cast<uint32_t>(wide)));
  return v;
}

/// The raw scale bits of load_scale_bits as f32 (load_scale's values, bit for bit).
__device__ __forceinline__ float widen_scale(uint32_t bits, Dtype dt) {
  return dt == Dtype::f32    ? __uint_as_float(bits)
         : dt == Dtype::bf16 ? __uint_as_float(bits << 16)
                             : f16_bits_to_f32(bits);
}

/// Item j of a GGUF block (f16 d, then the codes; 2-byte aligned): chunk j (0..3) or quad j
/// (0..7). q4_0's elements 0..15 are the low nibbles of code bytes 0..15, 16..31 the high
/// ones; aux is the chunk the item lies in (< 2: low nibbles).
template <DCode F, bool kQuads>
__device__ __forceinline__ ChunkRaw gguf_item(const uint16_t* blk, uint32_t j) {
  ChunkRaw r{};
  r.scale = f16_bits_to_f32(blk[0]);
  if constexpr (kQuads) {
    const uint16_t* q = blk + 1 + (F == DCode::q8_0 ? 2 * j : 2 * (j & 3));
    r.lo = q[0] | (static_cast<uint32_t>(q[1]) << 16);
    r.aux = j / 2;
  } else {
    const uint16_t* q = blk + 1 + (F == DCode::q8_0 ? 4 * j : 4 * (j & 1));
    r.lo = q[0] | (static_cast<uint32_t>(q[1]) << 16);
    r.hi = q[2] | (static_cast<uint32_t>(q[3]) << 16);
    r.aux = j;
  }
  return r;
}

/// Item c: chunk c (8 elements) or, kQuads, quad c (4 elements, codes in lo's low 4 bytes or
/// 2 nibble bytes; hi stays 0, which every plainness test accepts).
template <DCode F, bool kQuads>
__device__ __forceinline__ ChunkRaw load_item(const ChunkArgs& a, uint64_t c) {
  ChunkRaw r{};
  // A quad lies in chunk c / 2 (chunks < 2^32: chunks_fit).
  const uint32_t g = a.per_group.div(static_cast<uint32_t>(kQuads ? c >> 1 : c));
  if constexpr (kGguf<F>) {
    constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
    const auto j = static_cast<uint32_t>(c - uint64_t{g} * (kQuads ? 8 : 4));
    return gguf_item<F, kQuads>(
        reinterpret_cast<const uint16_t*>(a.codes + static_cast<uint64_t>(g) * kBytes), j);
  } else {
    if constexpr (kQuads) {
      if constexpr (kNibbles<F>) {
        r.lo = reinterpret_cast<const uint16_t*>(a.codes)[c];
      } else {
        r.lo = reinterpret_cast<const uint32_t*>(a.codes)[c];
      }
    } else if constexpr (kNibbles<F>) {
      // 4-byte code words load with the evict-first hint (ld.global.cs): H100, int4:block32,
      // nvfp4, mxfp4 -> bf16 87-88% of copy against 85-86%; 8-byte words lost 2-3.5 points
      // with it.
      r.lo = __ldcs(reinterpret_cast<const uint32_t*>(a.codes) + c);
    } else {
      const uint2 v = reinterpret_cast<const uint2*>(a.codes)[c];
      r.lo = v.x;
      r.hi = v.y;
    }
    if constexpr (F == DCode::nvfp4) {
      r.scale = e4m3_to_f32(static_cast<const uint8_t*>(a.scale)[g]);
    } else if constexpr (F == DCode::mxfp4 || F == DCode::mxe4m3 || F == DCode::mxe5m2) {
      r.scale = e8m0_to_f32(static_cast<const uint8_t*>(a.scale)[g]);
    } else if constexpr (F == DCode::e4m3 || F == DCode::e5m2) {
      r.scale = static_cast<const float*>(a.scale)[g];
    } else {
      r.scale = __uint_as_float(load_scale_bits(a.scale, a.scale_dtype == Dtype::f32, g));
      r.zero = a.zero ? a.zero[g] : 0;
    }
  }
  return r;
}

/// x * y for a chunk: mul_x86 where a NaN can come out, a plain product where none can.
template <bool kPlain>
__device__ __forceinline__ float product(float x, float y) {
  if constexpr (kPlain) {
    return __fmul_rn(x, y);
  } else {
    return mul_x86(x, y);
  }
}

/// Whether no product of this chunk can be NaN (finite scales, no NaN / Inf codes), so that
/// plain products and plain conversions to the destination give the reference's bits. The
/// other chunks take the careful path (mul_x86, NaN fix-ups), a divergence only where the
/// data holds NaN / Inf codes or scales.
template <DCode F>
__device__ __forceinline__ bool chunk_is_plain(const ChunkRaw& r, float global) {
  const bool finite = (__float_as_uint(r.scale) & 0x7f800000u) != 0x7f800000u;
  if constexpr (F == DCode::e4m3 || F == DCode::mxe4m3) {
    // A byte of t equals 0x7f (NaN) iff adding 1 sets its top bit (no carries: bytes <= 0x7f).
    const uint32_t lo = r.lo & 0x7f7f7f7fu, hi = r.hi & 0x7f7f7f7fu;
    return finite && !(((lo + 0x01010101u) | (hi + 0x01010101u)) & 0x80808080u);
  } else if constexpr (F == DCode::e5m2 || F == DCode::mxe5m2) {
    // Exponent field all ones (Inf, NaN): bits 0x7c of a byte all set.
    const uint32_t lo = r.lo & 0x7c7c7c7cu, hi = r.hi & 0x7c7c7c7cu;
    return finite && !(((lo + 0x04040404u) | (hi + 0x04040404u)) & 0x80808080u);
  } else if constexpr (F == DCode::nvfp4) {
    return finite && (__float_as_uint(global) & 0x7f800000u) != 0x7f800000u;
  } else if constexpr (F == DCode::i8 || F == DCode::u8 || F == DCode::i4 || F == DCode::u4) {
    return finite && r.zero > -(1 << 22) && r.zero < (1 << 22);  // plain_code's exact range
  } else {
    return finite;
  }
}

/// 2^23 + k as f32 for 0 <= k < 2^23: the bits 0x4B000000 | k.
__device__ __forceinline__ float magic_plus(uint32_t k) { return __uint_as_float(0x4B000000u | k); }

/// The plain path's decoding, without I2F (integer to float conversions run on the SM's
/// conversion unit, at a small fraction of the FP32 rate, and would be one per element). Integer
/// codes: (2^23 + u) - (2^23 + off) = u - off exactly, u the code made non-negative (u < 256), off
/// its offset plus the zero point (|zero| < 2^22, chunk_is_plain's condition, keeps both terms and
/// the difference exact). Float codes: the magnitude bits placed at the top of an f32 mantissa /
/// exponent (an f32 subnormal for the format's subnormals) times 2^(127 - bias), a power of two, so
/// exact; the sign is set first (-0 stays -0). Each equals numeric.hpp's conversion for every
/// non-NaN, non-Inf code (which chunk_is_plain rules out).
template <DCode F>
__device__ __forceinline__ float plain_code(uint32_t byte, uint32_t nib, const ChunkRaw& r) {
  if constexpr (F == DCode::i8 || F == DCode::q8_0) {
    const float off = magic_plus(128u) + static_cast<float>(F == DCode::q8_0 ? 0 : r.zero);
    return __fsub_rn(magic_plus(byte ^ 0x80u), off);
  } else if constexpr (F == DCode::u8) {
    return __fsub_rn(magic_plus(byte), magic_plus(0u) + static_cast<float>(r.zero));
  } else if constexpr (F == DCode::i4) {
    return __fsub_rn(magic_plus(nib ^ 8u), magic_plus(8u) + static_cast<float>(r.zero));
  } else if constexpr (F == DCode::u4) {
    return __fsub_rn(magic_plus(nib), magic_plus(0u) + static_cast<float>(r.zero));
  } else if constexpr (F == DCode::q4_0) {
    return __fsub_rn(magic_plus(r.aux < 2 ? (byte & 0x0fu) : (byte >> 4)), magic_plus(8u));
  } else if constexpr (F == DCode::e4m3 || F == DCode::mxe4m3) {
    return __fmul_rn(__uint_as_float(((byte & 0x7fu) << 20) | ((byte & 0x80u) << 24)), 0x1p120f);
  } else if constexpr (F == DCode::e5m2 || F == DCode::mxe5m2) {
    return __fmul_rn(__uint_as_float(((byte & 0x7fu) << 21) | ((byte & 0x80u) << 24)), 0x1p112f);
  } else {  // e2m1: nvfp4, mxfp4
    return __fmul_rn(__uint_as_float(((nib & 7u) << 22) | ((nib & 8u) << 28)), 0x1p126f);
  }
}

template <DCode F, bool kPlain, int N>
__device__ __forceinline__ void decode_chunk(const ChunkRaw& r, float global, float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (kPlain) {
      const uint32_t byte = ((i < 4 ? r.lo : r.hi) >> (8 * (i % 4))) & 0xffu;
      const uint32_t nib = (r.lo >> (4 * i)) & 0xfu;
      v[i] = __fmul_rn(plain_code<F>(byte, nib, r), r.scale);
      if constexpr (F == DCode::nvfp4) v[i] = __fmul_rn(v[i], global);
      continue;
    }
    const uint32_t byte = ((i < 4 ? r.lo : r.hi) >> (8 * (i % 4))) & 0xffu;
    const uint32_t nib = (r.lo >> (4 * i)) & 0xfu;
    float x;
    if constexpr (F == DCode::i8) {
      x = static_cast<float>(static_cast<int32_t>(static_cast<int8_t>(byte)) - r.zero);
    } else if constexpr (F == DCode::u8) {
      x = static_cast<float>(static_cast<int32_t>(byte) - r.zero);
    } else if constexpr (F == DCode::i4) {
      x = static_cast<float>((static_cast<int32_t>(nib ^ 8u) - 8) - r.zero);
    } else if constexpr (F == DCode::u4) {
      x = static_cast<float>(static_cast<int32_t>(nib) - r.zero);
    } else if constexpr (F == DCode::e4m3 || F == DCode::mxe4m3) {
      x = e4m3_to_f32(byte);
    } else if constexpr (F == DCode::e5m2 || F == DCode::mxe5m2) {
      x = e5m2_to_f32(byte);
    } else if constexpr (F == DCode::nvfp4 || F == DCode::mxfp4) {
      x = e2m1_to_f32(nib);
    } else if constexpr (F == DCode::q8_0) {
      x = static_cast<float>(static_cast<int8_t>(byte));
    } else {  // q4_0: chunks 0, 1 hold low nibbles of bytes 0..15, chunks 2, 3 the high ones
      x = static_cast<float>(static_cast<int32_t>(r.aux < 2 ? (byte & 0x0fu) : (byte >> 4)) - 8);
    }
    // r.scale: the int / fp8 scale, nvfp4's e4m3 block scale, mx's 2^(code - 127), GGUF's d.
    v[i] = product<kPlain>(x, r.scale);
    if constexpr (F == DCode::nvfp4) v[i] = product<kPlain>(v[i], global);
  }
}

/// GGUF items through shared memory: the 32 chunks (64 quads) of a warp step are 8 whole
/// blocks (272 or 144 bytes, 16-byte aligned when the codes are), loaded with 16-byte loads;
/// each lane then reads its item's code bytes and the block's f16 scale from there. `k`: the
/// lane's item in the step (the lane itself, or lane + 32 for the second quad).
template <DCode F, bool kQuads>
__device__ __forceinline__ ChunkRaw staged_item(const uint8_t* blocks, uint32_t k) {
  constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
  constexpr uint32_t kPerBlock = kQuads ? 8 : 4;
  return gguf_item<F, kQuads>(reinterpret_cast<const uint16_t*>(blocks + (k / kPerBlock) * kBytes),
                              k % kPerBlock);
}

/// Stores an item's N values as D at p (16-byte aligned): a chunk through store8, a quad
/// (f32 only) as one 16-byte store. kStream: global memory, with the evict-first hint; else
/// a plain store (the bulk path's shared-memory stage).
template <Dtype D, bool kNoNaN, int N, bool kStream = true>
__device__ __forceinline__ void store_item(uint8_t* p, const float (&v)[N]) {
  if constexpr (N == 8) {
    store8<D, kNoNaN, kStream>(p, v);
  } else {
    static_assert(D == Dtype::f32 && N == 4);
    const uint4 w = make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                               __float_as_uint(v[3]));
    if constexpr (kStream) {
      __stcs(reinterpret_cast<uint4*>(p), w);
    } else {
      *reinterpret_cast<uint4*>(p) = w;
    }
  }
}

/// The careful path of a chunk (NaN / Inf codes or scales, large zero points): out of line,
/// so that the compiler cannot if-convert it into the plain path, where its instructions
/// would issue for every chunk.
template <DCode F, Dtype D, int N, bool kStream = true>
__device__ __noinline__ void decode_store_careful(ChunkRaw r, float global, uint8_t* dst) {
  float v[N];
  decode_chunk<F, false, N>(r, global, v);
  store_item<D, false, N, kStream>(dst, v);
}

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

/// The chunks path with the stores through shared memory: a block's step is kThreads x
/// kItems consecutive items (item k * kThreads + t of the step in thread t), decoded into a
/// stage buffer and written by one TMA bulk store (cp.async.bulk, global <- shared) of the
/// whole step; kStages buffers, a buffer reused once its store has read it. A write-heavy
/// stream goes faster this way on the H100 (bench_write_stream: 1:4 92% of copy against 89-90%
/// with 16-byte stores from the lanes, 1:2 91% against 89%). Not for the GGUF formats.
template <DCode F, Dtype D, bool kQuads, int kStages, int U>
__global__ void __launch_bounds__(kThreads) dequantize_bulk_kernel(ChunkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(!kGguf<F>);
  constexpr int kPer = kQuads ? 2 : 1;
  constexpr int kItems = U * kPer;
  constexpr int N = kQuads ? 4 : 8;
  constexpr int kOut = N * (D == Dtype::f32 ? 4 : 2);
  constexpr uint32_t kStepItems = kThreads * kItems;
  extern __shared__ __align__(128) uint8_t stage[];
  float global = 0.0f;
  if constexpr (F == DCode::nvfp4) global = a.global[0];
  const uint32_t t = threadIdx.x;
  const uint64_t items = static_cast<uint64_t>(a.chunks) * kPer;
  const uint64_t steps = (items + kStepItems - 1) / kStepItems;
  ChunkRaw next[kItems];
  auto fetch = [&](uint64_t s) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint64_t i = s * kStepItems + k * kThreads + t;
      if (i < items) next[k] = load_item<F, kQuads>(a, i);
    }
  };
  uint64_t s = blockIdx.x;
  if (s < steps) fetch(s);
  for (uint32_t it = 0; s < steps; s += gridDim.x, ++it) {
    ChunkRaw r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      r[k] = next[k];
      if constexpr (kIntScale<F>)
        r[k].scale = widen_scale(__float_as_uint(r[k].scale), a.scale_dtype);
    }
    if (s + gridDim.x < steps) fetch(s + gridDim.x);
    uint8_t* buf = stage + (it % kStages) * (kStepItems * kOut);
    if (t == 0) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    __syncthreads();
    const uint64_t first = s * kStepItems;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      if (first + k * kThreads + t < items) {
        uint8_t* p = buf + (k * kThreads + t) * kOut;
        if (chunk_is_plain<F>(r[k], global)) {
          float v[N];
          decode_chunk<F, true, N>(r[k], global, v);
          store_item<D, true, N, false>(p, v);
        } else {
          decode_store_careful<F, D, N, false>(r[k], global, p);
        }
      }
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (t == 0) {
      const uint32_t bytes = static_cast<uint32_t>(
          (items - first < kStepItems ? items - first : uint64_t{kStepItems}) * kOut);
      asm volatile(
          "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
          "cp.async.bulk.commit_group;" ::"l"(a.dst + first * kOut),
          "r"(static_cast<uint32_t>(__cvta_generic_to_shared(buf))), "r"(bytes)
          : "memory");
    }
  }
  if (t == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

/// GGUF q8_0 / q4_0 -> f32 through the bulk path: a block's step is 256 GGUF blocks (2048
/// quads, 32 KiB of f32), their bytes loaded with 16-byte loads into a shared-memory input
/// stage (the next step's loads in flight during this step's work), each thread's 8 quads
/// decoded from there into an output stage written by one TMA bulk store. Codes 16-byte
/// aligned (ChunkArgs::staged).
template <DCode F, int kStages>
__global__ void __launch_bounds__(kThreads) dequantize_gguf_bulk_kernel(ChunkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(kGguf<F>);
  constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
  constexpr uint32_t kStepBlocks = 256, kStepQuads = kStepBlocks * 8;
  constexpr uint32_t kInBytes = kStepBlocks * kBytes;  // a multiple of 16
  constexpr int kVecs = (kInBytes / 16 + kThreads - 1) / kThreads;
  constexpr int kItems = kStepQuads / kThreads;  // 8
  constexpr uint32_t kOutBytes = kStepQuads * 16;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* in = smem + kStages * kOutBytes;
  const uint32_t t = threadIdx.x;
  const uint64_t quads = static_cast<uint64_t>(a.chunks) * 2;
  const uint64_t blocks = quads / 8;
  const uint64_t steps = (blocks + kStepBlocks - 1) / kStepBlocks;
  uint4 next[kVecs];
  // Step s's input vectors into registers; a partial last step is copied later, in 2-byte
  // words (its bytes may end inside a vector).
  auto fetch = [&](uint64_t s) {
    if ((s + 1) * kStepBlocks > blocks) return;
    const uint4* src = reinterpret_cast<const uint4*>(a.codes + s * kInBytes);
#pragma unroll
    for (int v = 0; v < kVecs; ++v)
      if (v * kThreads + t < kInBytes / 16) next[v] = src[v * kThreads + t];
  };
  uint64_t s = blockIdx.x;
  if (s < steps) fetch(s);
  for (uint32_t it = 0; s < steps; s += gridDim.x, ++it) {
    uint8_t* out = smem + (it % kStages) * kOutBytes;
    if (t == 0) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    __syncthreads();  // the stage is free, and every thread is done with the last input
    const uint64_t first_block = s * kStepBlocks;
    const uint64_t n_blocks =
        blocks - first_block < kStepBlocks ? blocks - first_block : kStepBlocks;
    if (n_blocks == kStepBlocks) {
#pragma unroll
      for (int v = 0; v < kVecs; ++v)
        if (v * kThreads + t < kInBytes / 16)
          reinterpret_cast<uint4*>(in)[v * kThreads + t] = next[v];
    } else {
      const auto* src = reinterpret_cast<const uint16_t*>(a.codes + first_block * kBytes);
      for (uint32_t k = t; k < n_blocks * kBytes / 2; k += kThreads)
        reinterpret_cast<uint16_t*>(in)[k] = src[k];
    }
    if (s + gridDim.x < steps) fetch(s + gridDim.x);
    __syncthreads();
    const uint32_t n_quads = static_cast<uint32_t>(n_blocks * 8);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint32_t q = k * kThreads + t;
      if (q < n_quads) {
        const ChunkRaw r = staged_item<F, true>(in, q);
        uint8_t* p = out + q * 16;
        if (chunk_is_plain<F>(r, 0.0f)) {
          float v[4];
          decode_chunk<F, true, 4>(r, 0.0f, v);
          store_item<Dtype::f32, true, 4, false>(p, v);
        } else {
          decode_store_careful<F, Dtype::f32, 4, false>(r, 0.0f, p);
        }
      }
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (t == 0) {
      asm volatile(
          "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
          "cp.async.bulk.commit_group;" ::"l"(a.dst + first_block * 8 * 16),
          "r"(static_cast<uint32_t>(__cvta_generic_to_shared(out))), "r"(n_quads * 16)
          : "memory");
    }
  }
  if (t == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
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

/// Grids of twice the resident blocks (two waves) for the formats where that measured faster
/// (H100, 16384 x 8192, two runs each, % of copy one wave -> two: int8 -> bf16 89.7 -> 90.3,
/// fp8 89.6 -> 89.8, int4:block32 86.9 -> 87.3, q8_0 -> f32 89.0 -> 89.9, q4_0 -> f32 87.7
/// -> 88.3); e2m1 codes (nvfp4 89.9 -> 89.4, mxfp4 89.8 -> 89.2) keep one wave, and so do
/// the MX fp8 formats (not measured: they share mxfp4's scales).
template <DCode F>
inline constexpr uint32_t kWaves =
    F == DCode::nvfp4 || F == DCode::mxfp4 || F == DCode::mxe4m3 || F == DCode::mxe5m2 ? 1 : 2;

/// Which formats and destinations write through the bulk path (H100, 16384 x 8192 -> bf16,
/// two interleaved runs each, % of copy, lanes -> bulk with 2 stages of 8 items per thread):
/// int4:block32 87.2 / 87.3 -> 90.1 / 90.2 (3 stages of 4 items: 89.9 / 90.1). The others
/// lost: int8:token 90.0 -> 88.0-88.7, fp8e4m3:token 89.9 -> 88.3-89.6, mxfp4 89.6-89.9 ->
/// 84.5-88.6, and nvfp4 89.8 -> 52-79% (fewer stages and items per thread lost less; its
/// cause not found). f32 destinations (quads, a 64 KiB step) were not measured: lanes.
template <DCode F, Dtype D>
inline constexpr bool kBulk = (F == DCode::i4 || F == DCode::u4) && D != Dtype::f32;

template <DCode F, Dtype D, int kStages, int U>
void launch_bulk(const ChunkArgs& a, int sms, cudaStream_t stream) {
  constexpr bool kQuads = D == Dtype::f32;
  auto kernel = dequantize_bulk_kernel<F, D, kQuads, kStages, U>;
  constexpr int kStepBytes = kThreads * U * 16 * (kQuads ? 2 : 1);
  constexpr int kSmem = kStages * kStepBytes;
  static const int per_sm = [&] {
    // Every device of a process shares the arch (resident_grid's assumption), so once.
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, kSmem) !=
            cudaSuccess ||
        blocks < 1) {
      cudaGetLastError();
      blocks = 1;
    }
    return blocks;
  }();
  const uint64_t steps =
      (static_cast<uint64_t>(a.chunks) * (kQuads ? 2 : 1) + kThreads * U * (kQuads ? 2 : 1) - 1) /
      (kThreads * U * (kQuads ? 2 : 1));
  const uint32_t grid = balanced_grid(steps, 1, static_cast<uint32_t>(per_sm * sms));
  kernel<<<grid, kThreads, kSmem, stream>>>(a);
  check_launch("dequantize_bulk_kernel");
}

template <DCode F, int kStages>
void launch_gguf_bulk(const ChunkArgs& a, int sms, cudaStream_t stream) {
  auto kernel = dequantize_gguf_bulk_kernel<F, kStages>;
  constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
  constexpr int kSmem = kStages * 2048 * 16 + 256 * kBytes;
  static const int per_sm = [&] {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, kSmem) !=
            cudaSuccess ||
        blocks < 1) {
      cudaGetLastError();
      blocks = 1;
    }
    return blocks;
  }();
  const uint64_t steps = (static_cast<uint64_t>(a.chunks) / 4 + 255) / 256;
  const uint32_t grid = balanced_grid(steps, 1, static_cast<uint32_t>(per_sm * sms));
  kernel<<<grid, kThreads, kSmem, stream>>>(a);
  check_launch("dequantize_gguf_bulk_kernel");
}

template <DCode F, Dtype D>
void launch_chunks(const ChunkArgs& a, int sms, cudaStream_t stream) {
  // GGUF -> f32 with 16-byte aligned codes: the bulk path, 3 stages (H100, 16384 x 8192, two
  // runs, % of copy, lanes -> 1 / 2 / 3 stages: q8_0 89.9-90.0 -> 90.5-90.7 / 90.4-90.8 /
  // 90.7-91.2, q4_0 88.0-88.2 -> 89.0-89.9 / 89.9-90.2 / 90.3).
  if constexpr (kGguf<F> && D == Dtype::f32) {
    if (a.staged) return launch_gguf_bulk<F, 3>(a, sms, stream);
  }
  if constexpr (kBulk<F, D>) {
    return launch_bulk<F, D, 2, 8>(a, sms, stream);
  } else {
    auto kernel = dequantize_chunks_kernel<F, D, D == Dtype::f32>;
    const uint32_t grid =
        balanced_grid(a.chunks, kThreads * 4, kWaves<F> * resident_grid(kernel, kThreads, sms));
    kernel<<<grid, kThreads, 0, stream>>>(a);
    check_launch("dequantize_chunks_kernel");
  }
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
