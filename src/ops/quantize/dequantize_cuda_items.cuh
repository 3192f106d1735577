// dequantize_cuda's items: what one chunk (8 elements) or quad (4 elements, f32
// destinations) of a quantized tensor needs from memory (ChunkRaw, read before any
// arithmetic), its decoding to f32 (a plain path and the careful, x86-faithful NaN path;
// dequantize_cuda.cu's file comment says which applies when), and its store. Shared by the
// lanes kernel (dequantize_cuda.cu) and the bulk kernels (dequantize_cuda_bulk.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lowbit/dtype.hpp"
#include "ops/quantize/quantize_cuda_common.cuh"

namespace lowbit::dequant_cuda {

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
  /// Shared memory a block may opt in to when the device has TMA bulk copies (sm_90 and
  /// later), else 0: the bulk path runs where its stages fit (dequantize_cuda_bulk.cuh).
  int bulk_smem;
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

/// Decodes item r and stores its N values as D at p: the plain path, or the careful one
/// where a NaN can come out (chunk_is_plain). kStream: see store_item.
template <DCode F, Dtype D, int N, bool kStream = true>
__device__ __forceinline__ void decode_store(const ChunkRaw& r, float global, uint8_t* p) {
  if (chunk_is_plain<F>(r, global)) {
    float v[N];
    decode_chunk<F, true, N>(r, global, v);
    store_item<D, true, N, kStream>(p, v);
  } else {
    decode_store_careful<F, D, N, kStream>(r, global, p);
  }
}

}  // namespace lowbit::dequant_cuda
