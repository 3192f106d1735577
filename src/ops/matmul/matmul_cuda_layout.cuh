// The prepared weight layout of the CUDA tensor-core matmul kernels ("cuda_tc16x128"), the
// host code that builds it, and the per-lane rules (LOWBIT_HD) that the kernels and the CPU
// emulation in tests/cpp/test_matmul_cuda_layout.cu share.
//
// The kernels compute y^T = W · x^T with mma.sync.m16n8k16: W is the A operand (16 rows of W,
// 16 k), x^T the B operand (16 k, 8 rows of x), f32 accumulators. The sum over k does not care
// in which order the 16 k of a step sit in the fragments, as long as A and B agree; we pick,
// for lane l (r = l / 4, q = l % 4) and step j of a 128-k segment s,
//
//     logical k {2q, 2q + 1}     <->  true k = 128 s + 16 j + 4 q + {0, 1}
//     logical k {2q + 8, 2q + 9} <->  true k = 128 s + 16 j + 4 q + {2, 3}
//
// so that (a) a step covers 16 consecutive k, inside one scale group of every format (groups
// are multiples of 16), and the group's scale can be applied to the f32 accumulator after the
// mma (codes stay exact in the 16-bit operand); (b) the B registers of a lane are x[c][k..k+3]
// in memory order: one 8-byte load per step, no shuffles. The prepared codes put, for each
// 16-row tile, segment and half (rows 0-7 / 8-15), the 32 values lane l needs in its own
// 16 bytes (4-bit codes; 32 bytes for 8-bit codes), so that a warp reads 512 contiguous bytes
// per load instruction, 16 bytes per lane.
//
// Codes are re-encoded so that one bit operation and one exact 16-bit subtraction give the
// operand (see decode below): 4-bit integers as u = code + 8 (A = u - 8), unsigned 8-bit codes
// as u ^ 0x80 (A = signed byte), GGUF q6_K as q - 32; zero points shift with them. Scales keep
// their own dtype, in row-major tables [rows padded to 16][groups]; GGUF block headers are split
// into such tables once.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/numeric.hpp"
#include "lowbit/scheme.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace lowbit::tc {

// ---- formats ------------------------------------------------------------------------------

/// How the codes of a format become the 16-bit A operand.
enum class Code : uint8_t {
  u4,    ///< 4-bit integer stored as u = code + 8 (any 4-bit int format, q4_0, q4_K): A = u - 8
  fp4,   ///< e2m1 (nvfp4, mxfp4)
  i8,    ///< signed byte (int8, uint8 ^ 0x80, q8_0, q6_K as q - 32)
  e4m3,  ///< f8e4m3fn
  e5m2,  ///< f8e5m2
};

/// How a group's scale (and offset) is stored.
enum class Scale : uint8_t {
  integer,  ///< int formats: scale in its dtype, optional i8 zero point (shifted like the codes)
  f32,      ///< fp8: f32 scale (block2d tables repeat the tile's scale on each row)
  e4m3,     ///< nvfp4: e4m3 block scale per 16, and the f32 global scale
  e8m0,     ///< mxfp4: e8m0 scale per 32
  f16d,     ///< q4_0 / q8_0: f16 d per 32
  q4k,      ///< q4_K: f16 d, dmin per 256; u8 (sc, m) per 32
  q6k,      ///< q6_K: f16 d per 256; i8 sc per 16
};

/// A weight scheme as the tensor-core kernels see it.
struct Format {
  Code code = Code::u4;
  Scale scale = Scale::integer;
  int64_t group = 0;   ///< elements per scale group along K (K for channel / tensor)
  int group_log2 = 0;  ///< log2(group) when a power of two, else 31 (one group per row)
  int steps_log2 = 0;  ///< log2(steps of 16 k per group within a segment): 0..3
  Dtype scale_dtype = Dtype::f32;
  bool zero = false;        ///< affine integers: i8 zero points
  bool per_tensor = false;  ///< one scale for the tensor (tables repeat it per row)
  int64_t block_rows = 1;   ///< fp8 block2d: rows per tile (tables repeat per row)
  int zero_shift = 0;       ///< stored zero = zero - zero_shift (8 for uint4, 128 for uint8)
  uint8_t code_xor = 0;     ///< stored code = code ^ code_xor (8 for int4 nibbles, 0x80 uint8)
  bool affine() const { return zero || scale == Scale::q4k; }
  /// 8-bit codes (i8, e4m3, e5m2).
  static constexpr bool wide(Code c) { return c != Code::u4 && c != Code::fp4; }
  int code_bits() const { return wide(code) ? 8 : 4; }
  /// Bytes of codes per lane per half-tile per segment.
  int lane_bytes() const { return code_bits() == 4 ? 16 : 32; }
};

/// The format for `scheme` on a weight [n, k], or nullopt with the reason in `why`.
std::optional<Format> format_of(const QuantScheme& scheme, int64_t n, int64_t k, std::string* why);

/// Where each part of the prepared buffer lives (byte offsets, 256-aligned).
struct Layout {
  int64_t n = 0, k = 0;
  int64_t tiles = 0;     ///< ceil(n / 16)
  int64_t segments = 0;  ///< k / 128
  int64_t rows = 0;      ///< tiles * 16
  int64_t groups = 0;    ///< scale groups per row in the tables (ceil(k / group))
  int64_t codes = 0;     ///< offset of the codes
  int64_t scale = 0;     ///< offset of the scale table [rows][groups]
  int64_t zero = 0;      ///< offset of the i8 zero table, or -1
  int64_t aux = 0;     ///< q4_K: u8 (sc, m) [rows][k / 32][2]; q6_K: i8 sc [rows][k / 16]; else -1
  int64_t global = 0;  ///< nvfp4: f32 global scale, else -1
  int64_t bytes = 0;   ///< total
};
Layout layout_of(const Format& f, int64_t n, int64_t k);

/// Builds the prepared bytes of `layout` on the host from the host copies of a quantized
/// weight's parts (codes; scale, zero, global_scale where the scheme has them).
void prepare_host(const QuantScheme& scheme, const Format& f, const Layout& layout,
                  const uint8_t* codes, const void* scale, const int32_t* zero, const float* global,
                  uint8_t* out);

/// The prepared layout's name (MatmulKernel::weight_layout).
inline constexpr const char* kLayoutName = "cuda_tc16x128";

// ---- per-lane rules (host and device) -----------------------------------------------------

/// The first true k of lane quad position q in step j of segment s.
LOWBIT_HD int64_t step_k(int64_t segment, int j, int q) { return 128 * segment + 16 * j + 4 * q; }

/// Byte offset of lane l's codes for (tile, segment, half) in the code region.
LOWBIT_HD int64_t lane_code_offset(int64_t segments, int lane_bytes, int64_t tile, int64_t segment,
                                   int half, int lane) {
  return (((tile * segments + segment) * 2 + half) * 32 + lane) * lane_bytes;
}

/// 4-bit codes: position (nibble index in its word) of value m (0..7) of a word, where
/// values 0..3 are step 2w (i = 0..3) and 4..7 step 2w + 1: pair p of a word (nibbles p and
/// p + 4, the low and high halves after a shift by 4p) is then (v_2p, v_2p+1).
LOWBIT_HD int nibble_slot(int m) { return (m >> 1) + 4 * (m & 1); }

/// Byte permute (PTX prmt, default mode): byte i of the result is byte sel_i of {b:a}.
LOWBIT_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t s = (sel >> (4 * i)) & 7u;
    r |= static_cast<uint32_t>((v >> (8 * s)) & 0xffu) << (8 * i);
  }
  return r;
#endif
}

/// The 16-bit patterns of pair p (0..3) of a 4-bit code word, before the exact fix-up:
///  u4, f16:  0x6400 | u   (1024 + u; subtract 1032)
///  u4, bf16: 0x4300 | u   (128 + u; subtract 136)
///  fp4, f16: s << 15 | e2m1 magnitude bits << 9   (the value times 2^-14; the kernel folds
///            2^14 into the group scale, kFp4F16Factor)
///  fp4, bf16: s << 15 | magnitude bits << 6       (the value times 2^-126; multiply by 2^126)
template <Code C, bool kBf16>
LOWBIT_HD uint32_t pattern4(uint32_t word, int p) {
  const uint32_t t = word >> (4 * p);
  if constexpr (C == Code::u4) {
    return (t & 0x000f000fu) | (kBf16 ? 0x43004300u : 0x64006400u);
  } else {
    return ((t & 0x00070007u) << (kBf16 ? 6 : 9)) | ((t & 0x00080008u) << 12);
  }
}

/// The patterns of pair p (0, 1: bytes 2p, 2p + 1) of an 8-bit code word for f16 operands:
///  i8:   0x6400 | (b ^ 0x80)   (1024 + b + 128; subtract 1152)
///  e5m2: b << 8                (exact f16: e5m2 is the top byte of an f16)
/// (e4m3 and every 8-bit code for bf16 go through hardware conversions, see decode.)
template <Code C>
LOWBIT_HD uint32_t pattern8_f16(uint32_t word, int p) {
  if constexpr (C == Code::i8) {
    return byte_perm(word ^ 0x80808080u, 0x64646464u, p ? 0x7362u : 0x5140u);
  } else {
    return byte_perm(word, 0u, p ? 0x3424u : 0x1404u);
  }
}

inline constexpr float kFp4F16Factor = 16384.0f;  // 2^14

/// The value of a 16-bit operand pattern (host emulation and tests).
template <bool kBf16>
LOWBIT_HD float half_value(uint32_t h16) {
  return kBf16 ? bf16_to_f32(static_cast<uint16_t>(h16)) : f16_to_f32(static_cast<uint16_t>(h16));
}

/// Host emulation of the decode: the two operand values of pair p of `word` (4-bit: p in
/// 0..3; 8-bit: p in 0..1), exactly as the device computes them (before kFp4F16Factor).
template <Code C, bool kBf16>
inline void decode_pair_host(uint32_t word, int p, float& lo, float& hi) {
  if constexpr (C == Code::u4 || C == Code::fp4) {
    const uint32_t pat = pattern4<C, kBf16>(word, p);
    lo = half_value<kBf16>(pat & 0xffffu);
    hi = half_value<kBf16>(pat >> 16);
    if constexpr (C == Code::u4) {
      const float off = kBf16 ? 136.0f : 1032.0f;
      lo -= off;
      hi -= off;
    } else if constexpr (kBf16) {
      lo *= 0x1p126f;
      hi *= 0x1p126f;
    }
  } else {
    const uint32_t b0 = (word >> (16 * p)) & 0xffu, b1 = (word >> (16 * p + 8)) & 0xffu;
    if constexpr (C == Code::i8) {
      if constexpr (!kBf16) {
        const uint32_t pat = pattern8_f16<C>(word, p);
        lo = half_value<false>(pat & 0xffffu) - 1152.0f;
        hi = half_value<false>(pat >> 16) - 1152.0f;
      } else {
        lo = static_cast<float>(static_cast<int8_t>(b0));
        hi = static_cast<float>(static_cast<int8_t>(b1));
      }
    } else if constexpr (C == Code::e5m2) {
      if constexpr (!kBf16) {
        const uint32_t pat = pattern8_f16<C>(word, p);
        lo = half_value<false>(pat & 0xffffu);
        hi = half_value<false>(pat >> 16);
      } else {
        lo = f8e5m2_to_f32(static_cast<uint8_t>(b0));
        hi = f8e5m2_to_f32(static_cast<uint8_t>(b1));
      }
    } else {
      lo = f8e4m3fn_to_f32(static_cast<uint8_t>(b0));
      hi = f8e4m3fn_to_f32(static_cast<uint8_t>(b1));
    }
  }
}

#if defined(__CUDACC__)
/// a - b for two 16-bit values of x's dtype (bf16 or f16), one rounding (exact where the
/// decoders use it).
template <bool kBf16>
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b) {
  uint32_t r;
  if constexpr (kBf16) {
    const __nv_bfloat162 v = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&a),
                                     *reinterpret_cast<const __nv_bfloat162*>(&b));
    r = *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v =
        __hsub2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
    r = *reinterpret_cast<const uint32_t*>(&v);
  }
  return r;
}

/// Pair p (bytes 2p, 2p + 1) of an fp8 code word as two exact f16 values: e4m3 through the
/// sm_89 conversion, e5m2 the top byte of an f16 (pattern8_f16).
template <Code C>
__device__ __forceinline__ uint32_t fp8_pair_f16(uint32_t word, int p) {
  static_assert(C == Code::e4m3 || C == Code::e5m2);
  if constexpr (C == Code::e4m3) {
    uint32_t h2;
    const unsigned short b16 = static_cast<unsigned short>((word >> (16 * p)) & 0xffffu);
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(b16));
    return h2;
  } else {
    return pattern8_f16<C>(word, p);
  }
}

/// Device decode: the A register (two 16-bit operands, low = smaller k) of pair p.
template <Code C, bool kBf16>
__device__ __forceinline__ uint32_t decode_pair(uint32_t word, int p) {
  uint32_t r;
  if constexpr (C == Code::u4) {
    // pattern4's (t & 0x000f000f) | base as one lop3 (ptxas emits an AND and an OR for the C
    // expression): (a & b) | c is LUT 0xea.
    uint32_t pat;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;"
        : "=r"(pat)
        : "r"(word >> (4 * p)), "n"(0x000f000f), "n"(kBf16 ? 0x43004300 : 0x64006400));
    r = sub2<kBf16>(pat, kBf16 ? 0x43084308u : 0x64086408u);  // minus (136, 136) / (1032, 1032)
  } else if constexpr (C == Code::fp4) {
    const uint32_t pat = pattern4<C, kBf16>(word, p);
    if constexpr (kBf16) {
      // 2^126 as bf16 (0x7e80): exact, the products are powers of two apart.
      const uint32_t two126 = 0x7e807e80u;
      const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pat),
                                       *reinterpret_cast<const __nv_bfloat162*>(&two126));
      r = *reinterpret_cast<const uint32_t*>(&v);
    } else {
      r = pat;
    }
  } else if constexpr (kBf16 && C == Code::i8) {
    // c = (128 + (b & 0x7f)) - (128 + (b & 0x80)) in bf16: 0x43 above a byte is 128 plus its
    // low seven bits, and bit 7 carries into the exponent (128 + 128 = 256), so both terms
    // are exact, and so is their difference (an integer in [-128, 127]). One permute, two
    // masks and one bf16 subtraction, against two f32 subtractions and a pack before.
    const uint32_t t = byte_perm(word, 0x43434343u, p ? 0x4342u : 0x4140u);
    const uint32_t low = t & 0xff7fff7fu, sign = t & 0xff80ff80u;
    r = sub2<true>(low, sign);
  } else if constexpr (!kBf16 && (C == Code::i8 || C == Code::e5m2)) {
    const uint32_t pat = pattern8_f16<C>(word, p);
    if constexpr (C == Code::i8) {
      r = sub2<false>(pat, 0x64806480u);  // minus (1152, 1152) as f16
    } else {
      r = pat;
    }
  } else {
    // fp8 (i8 is decoded above): two exact f16 values (f16 x e4m3 here: e5m2 with f16 x is
    // above), for bf16 through f32.
    const uint32_t h2 = fp8_pair_f16<C>(word, p);
    if constexpr (!kBf16) return h2;
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h2));
    const __nv_bfloat162 v = __floats2bfloat162_rn(f.x, f.y);
    r = *reinterpret_cast<const uint32_t*>(&v);
  }
  return r;
}
#endif

// ---- scale groups and dequantized values (host and device) ----------------------------------

/// A prepared weight as the kernels (and the host emulation) index it.
struct TcWeights {
  const uint8_t* codes = nullptr;
  const uint8_t* scale = nullptr;  ///< [rows][groups] (q4_K: (d, dmin) [rows][k/256]; q6_K: d)
  const int8_t* zero = nullptr;    ///< [rows][groups] or null
  const uint8_t* aux = nullptr;    ///< q4_K: (sc, m) [rows][k/32]; q6_K: i8 sc [rows][k/16]
  const float* global = nullptr;   ///< nvfp4
  int64_t segments = 0;
  int64_t groups = 0;
  int64_t k = 0;
  int group_log2 = 0;
  Dtype scale_dtype = Dtype::f32;
};

/// One IEEE f32 product / difference, never contracted into an FMA.
LOWBIT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // ISO C++ mode: no contraction
#endif
}
LOWBIT_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

LOWBIT_HD float scale_value(const uint8_t* base, Dtype dt, int64_t g) {
  if (dt == Dtype::f16) return f16_to_f32(reinterpret_cast<const uint16_t*>(base)[g]);
  if (dt == Dtype::bf16) return bf16_to_f32(reinterpret_cast<const uint16_t*>(base)[g]);
  return reinterpret_cast<const float*>(base)[g];
}

/// The group of row `row` that holds k0, as w = a * A + b for every element of the group, where
/// A is the decoded operand (u - 8 for 4-bit integers, the signed byte, the fp8 / e2m1 value).
/// Factors that are products (q4_K's d * sc, q6_K's d * sc) are rounded as the reference rounds
/// them.
template <Scale S>
LOWBIT_HD void group_ab(const TcWeights& w, int64_t row, int64_t k0, float& a, float& b) {
  b = 0.0f;
  if constexpr (S == Scale::integer) {
    const int64_t g = row * w.groups + (k0 >> w.group_log2);
    a = scale_value(w.scale, w.scale_dtype, g);
    if (w.zero) b = -mul_rn(a, static_cast<float>(w.zero[g]));
  } else if constexpr (S == Scale::f32) {
    a = reinterpret_cast<const float*>(w.scale)[row * w.groups + (k0 >> w.group_log2)];
  } else if constexpr (S == Scale::e4m3) {
    a = f8e4m3fn_to_f32(w.scale[row * w.groups + (k0 >> 4)]);
  } else if constexpr (S == Scale::e8m0) {
    a = e8m0_to_f32(w.scale[row * w.groups + (k0 >> 5)]);
  } else if constexpr (S == Scale::f16d) {
    a = f16_to_f32(reinterpret_cast<const uint16_t*>(w.scale)[row * w.groups + (k0 >> 5)]);
  } else if constexpr (S == Scale::q4k) {
    const auto* dd =
        reinterpret_cast<const uint16_t*>(w.scale) + (row * (w.k >> 8) + (k0 >> 8)) * 2;
    const uint8_t* sm = w.aux + (row * (w.k >> 5) + (k0 >> 5)) * 2;
    a = mul_rn(f16_to_f32(dd[0]), static_cast<float>(sm[0]));
    // A = q - 8: d1 * q - m1 = d1 * A + (8 d1 - m1).
    b = sub_rn(8.0f * a, mul_rn(f16_to_f32(dd[1]), static_cast<float>(sm[1])));
  } else {  // q6k
    const float d =
        f16_to_f32(reinterpret_cast<const uint16_t*>(w.scale)[row * (w.k >> 8) + (k0 >> 8)]);
    a = mul_rn(d, static_cast<float>(
                      reinterpret_cast<const int8_t*>(w.aux)[row * (w.k >> 4) + (k0 >> 4)]));
  }
}

/// The dequantized value of stored code `u` (the layout's re-encoded code) at (row, k0's group),
/// with the reference's operations in its order (bit-identical to the dequantize op).
template <Code C, Scale S>
LOWBIT_HD float dense_value(uint32_t u, const TcWeights& w, int64_t row, int64_t k0) {
  if constexpr (S == Scale::integer) {
    const int64_t g = row * w.groups + (k0 >> w.group_log2);
    const float s = scale_value(w.scale, w.scale_dtype, g);
    const int32_t z = w.zero ? w.zero[g] : 0;
    const int32_t a =
        C == Code::u4 ? static_cast<int32_t>(u) - 8 : static_cast<int32_t>(static_cast<int8_t>(u));
    return mul_rn(static_cast<float>(a - z), s);
  } else if constexpr (S == Scale::f32) {
    const float s = reinterpret_cast<const float*>(w.scale)[row * w.groups + (k0 >> w.group_log2)];
    const auto c = static_cast<uint8_t>(u);
    return mul_rn(C == Code::e4m3 ? f8e4m3fn_to_f32(c) : f8e5m2_to_f32(c), s);
  } else if constexpr (S == Scale::e4m3) {
    const float bs = f8e4m3fn_to_f32(w.scale[row * w.groups + (k0 >> 4)]);
    return mul_rn(mul_rn(f4e2m1_to_f32(static_cast<uint8_t>(u)), bs), w.global[0]);
  } else if constexpr (S == Scale::e8m0) {
    return mul_rn(f4e2m1_to_f32(static_cast<uint8_t>(u)),
                  e8m0_to_f32(w.scale[row * w.groups + (k0 >> 5)]));
  } else if constexpr (S == Scale::f16d) {
    const float d =
        f16_to_f32(reinterpret_cast<const uint16_t*>(w.scale)[row * w.groups + (k0 >> 5)]);
    const int32_t a =
        C == Code::u4 ? static_cast<int32_t>(u) - 8 : static_cast<int32_t>(static_cast<int8_t>(u));
    return mul_rn(static_cast<float>(a), d);
  } else if constexpr (S == Scale::q4k) {
    const auto* dd =
        reinterpret_cast<const uint16_t*>(w.scale) + (row * (w.k >> 8) + (k0 >> 8)) * 2;
    const uint8_t* sm = w.aux + (row * (w.k >> 5) + (k0 >> 5)) * 2;
    const float d1 = mul_rn(f16_to_f32(dd[0]), static_cast<float>(sm[0]));
    const float m1 = mul_rn(f16_to_f32(dd[1]), static_cast<float>(sm[1]));
    return sub_rn(mul_rn(d1, static_cast<float>(u)), m1);
  } else {  // q6k: d * sc * q, left to right
    const float d =
        f16_to_f32(reinterpret_cast<const uint16_t*>(w.scale)[row * (w.k >> 8) + (k0 >> 8)]);
    const float sc =
        static_cast<float>(reinterpret_cast<const int8_t*>(w.aux)[row * (w.k >> 4) + (k0 >> 4)]);
    return mul_rn(mul_rn(d, sc), static_cast<float>(static_cast<int8_t>(u)));
  }
}

// ---- one row's scales for one segment, as the skinny kernel loads them -----------------------

/// The raw scale words of one row for one 128-k segment (loaded with one or two vector loads):
///  integer: w = the segment's f32 scales (1, 2 or 4 groups), aux[0] = its i8 zero points
///  f32: w[0]; e4m3: 8 bytes; e8m0: 4 bytes; f16d: 4 x f16; q4_K: w[0] = (d, dmin),
///  aux = 4 x (sc, m); q6_K: w[0] = d, aux = 8 x i8 sc.
struct SegScales {
  uint32_t w[4];
  uint32_t aux[2];
};

/// Loads of 4, 8 or 16 bytes (device: one vector load, read-only path).
template <int kBytes>
LOWBIT_HD void load_words(const void* src, uint32_t* dst) {
#if defined(__CUDA_ARCH__)
  // volatile: issued where written (the skinny kernel orders its loads before its arithmetic).
  if constexpr (kBytes == 16) {
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(dst[0]), "=r"(dst[1]), "=r"(dst[2]), "=r"(dst[3])
                 : "l"(src));
  } else if constexpr (kBytes == 8) {
    asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(dst[0]), "=r"(dst[1]) : "l"(src));
  } else if constexpr (kBytes == 4) {
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(dst[0]) : "l"(src));
  } else if constexpr (kBytes == 2) {
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=r"(dst[0]) : "l"(src));
  } else {
    asm volatile("ld.global.nc.u8 %0, [%1];" : "=r"(dst[0]) : "l"(src));
  }
#else
  dst[0] = 0;
  std::memcpy(dst, src, kBytes);
#endif
}

template <Scale S, int kStepsLog2>
LOWBIT_HD SegScales load_seg_scales(const TcWeights& w, int64_t row, int64_t s) {
  SegScales r{};
  constexpr int kGroups = 8 >> kStepsLog2;  // groups in a segment (1 when groups >= 128)
  if constexpr (S == Scale::integer || S == Scale::f32) {
    const int64_t g = row * w.groups + ((s * 128) >> w.group_log2);
    load_words<4 * kGroups>(reinterpret_cast<const float*>(w.scale) + g, r.w);
    if constexpr (S == Scale::integer)
      if (w.zero) load_words<kGroups>(w.zero + g, r.aux);
  } else if constexpr (S == Scale::e4m3) {
    load_words<8>(w.scale + row * w.groups + s * 8, r.w);
  } else if constexpr (S == Scale::e8m0) {
    load_words<4>(w.scale + row * w.groups + s * 4, r.w);
  } else if constexpr (S == Scale::f16d) {
    load_words<8>(reinterpret_cast<const uint16_t*>(w.scale) + row * w.groups + s * 4, r.w);
  } else if constexpr (S == Scale::q4k) {
    load_words<4>(reinterpret_cast<const uint16_t*>(w.scale) + (row * (w.k >> 8) + (s >> 1)) * 2,
                  r.w);
    load_words<8>(w.aux + (row * (w.k >> 5) + s * 4) * 2, r.aux);
  } else {  // q6k
    load_words<2>(reinterpret_cast<const uint16_t*>(w.scale) + row * (w.k >> 8) + (s >> 1), r.w);
    load_words<8>(w.aux + row * (w.k >> 4) + s * 8, r.aux);
  }
  return r;
}

LOWBIT_HD uint32_t byte_of(const uint32_t* words, int i) {
  return (words[i >> 2] >> (8 * (i & 3))) & 0xffu;
}

/// f16 / e4m3 -> f32, exact (hardware conversions on the device).
LOWBIT_HD float h2f(uint32_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
  return f16_to_f32(static_cast<uint16_t>(h));
#endif
}
LOWBIT_HD float e4m3_2f(uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t h2;
  const unsigned short b16 = static_cast<unsigned short>(c);
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(b16));
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h2 & 0xffffu)));
#else
  return f8e4m3fn_to_f32(static_cast<uint8_t>(c));
#endif
}

/// Group f (0 .. groups per segment - 1) of a segment's scales as w = a * A + b (group_ab's
/// numbers, from the raw words).
template <Scale S>
LOWBIT_HD void seg_group_ab(const SegScales& r, int f, bool zero, float& a, float& b) {
  b = 0.0f;
  if constexpr (S == Scale::integer) {
    // Branch-free (the skinny kernel's inner loop is one basic block): without zero points
    // the zero bytes are 0 and b is -0, which the kernel does not add.
    (void)zero;
    a = numeric_detail::float_of(r.w[f]);
    b = -mul_rn(a, static_cast<float>(static_cast<int8_t>(byte_of(r.aux, f))));
  } else if constexpr (S == Scale::f32) {
    a = numeric_detail::float_of(r.w[0]);
  } else if constexpr (S == Scale::e4m3) {
    a = e4m3_2f(byte_of(r.w, f));
  } else if constexpr (S == Scale::e8m0) {
    a = e8m0_to_f32(static_cast<uint8_t>(byte_of(r.w, f)));
  } else if constexpr (S == Scale::f16d) {
    a = h2f((r.w[f >> 1] >> (16 * (f & 1))) & 0xffffu);
  } else if constexpr (S == Scale::q4k) {
    a = mul_rn(h2f(r.w[0] & 0xffffu), static_cast<float>(byte_of(r.aux, 2 * f)));
    b = sub_rn(8.0f * a, mul_rn(h2f(r.w[0] >> 16), static_cast<float>(byte_of(r.aux, 2 * f + 1))));
  } else {  // q6k
    a = mul_rn(h2f(r.w[0] & 0xffffu), static_cast<float>(static_cast<int8_t>(byte_of(r.aux, f))));
  }
}

/// The stored code of value i (0..3) of step j in a lane's words.
LOWBIT_HD uint32_t stored_code(const uint32_t* words, int code_bits, int j, int i) {
  if (code_bits == 4) return (words[j >> 1] >> (4 * nibble_slot(4 * (j & 1) + i))) & 0xfu;
  return (words[j] >> (8 * i)) & 0xffu;
}

/// For 4-bit codes, word w of a lane's 16 bytes holds steps 2w and 2w + 1; for 8-bit codes
/// word w holds step w. The A registers of step j for the lane's row half h come from
///   4-bit: word j / 2, pairs 2 (j % 2) (a0 / a1: k + 0, 1) and 2 (j % 2) + 1 (a2 / a3: k + 2, 3)
///   8-bit: word j, pairs 0 and 1.
LOWBIT_HD int step_word(int code_bits, int j) { return code_bits == 4 ? j >> 1 : j; }
LOWBIT_HD int step_pair(int code_bits, int j, int second) {
  return code_bits == 4 ? 2 * (j & 1) + second : second;
}

}  // namespace lowbit::tc
