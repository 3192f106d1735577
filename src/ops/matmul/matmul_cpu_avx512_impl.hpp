// Internals of the AVX-512 matmul kernels, shared by matmul_cpu_avx512.cpp (plain layout) and
// matmul_cpu_avx512_packed.cpp (the prepared layout). Included only by those translation
// units, after their AVX-512 target pragma; everything is in an anonymous namespace, so each
// of them compiles its own copy and nothing here has external linkage (see
// matmul_cpu_avx512.hpp for why that matters). The file comment of matmul_cpu_avx512.cpp
// describes the arithmetic.
#pragma once

#ifndef LOWBIT_MATMUL_CPU_AVX512_TARGET
#error "include matmul_cpu_avx512_impl.hpp only after the AVX-512 target pragma of its users"
#endif

// Each including translation unit uses only part of what follows.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunneeded-internal-declaration"
#pragma clang diagnostic ignored "-Wunused-function"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/matmul/matmul_cpu_avx512.hpp"
#include "ops/matmul/matmul_cpu_simd_common.hpp"

namespace lowbit::matmul_cpu {
namespace {

constexpr int kChunk = 64;      // codes per decoded zmm
constexpr i64 kKcExact = 256;   // k per panel, exact gemm (f32 panel 32 KiB)
constexpr i64 kKcInt8 = 512;    // k per panel, int8 gemm (codes 16 KiB)
constexpr int kRowsExact = 12;  // rows of x per exact gemm tile (24 accumulators)
constexpr int kRowsInt8 = 6;    // rows of x per int8 gemm tile (12 i32 + 12 f32 accumulators)
constexpr int kGemvRows = 4;    // rows of x per gemv pass

/// 128-bit quarter t of v: the intrinsic's index must be a constant for clang (the loops
/// that call this unroll, so the switch folds away).
inline __m128i quarter_of(__m512i v, int t) {
  switch (t) {
    case 0:
      return _mm512_extracti32x4_epi32(v, 0);
    case 1:
      return _mm512_extracti32x4_epi32(v, 1);
    case 2:
      return _mm512_extracti32x4_epi32(v, 2);
    default:
      return _mm512_extracti32x4_epi32(v, 3);
  }
}

__mmask16 first_n16(i64 n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

__m512i bcast_bytes16(const uint8_t t[16]) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}

// ---- scalar and vector conversions ----------------------------------------------------------

float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

float load_float(const void* p, FDt dt, i64 i) {
  switch (dt) {
    case FDt::f32:
      return static_cast<const float*>(p)[i];
    case FDt::f16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: {
      const uint32_t b = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &b, 4);
      return f;
    }
  }
}

/// `count` (<= 16) floats of type dt from p + first as f32 (0 beyond count).
__m512 load16(const void* p, FDt dt, i64 first, i64 count) {
  const __mmask16 m = first_n16(count);
  switch (dt) {
    case FDt::f32:
      return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + first);
    case FDt::f16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + first));
    default:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                                                       m, static_cast<const uint16_t*>(p) + first)),
                                                   16));
  }
}

/// 16 x values as f32 (exact widening).
__m512 load_x16(const void* p, FDt dt, i64 i) {
  switch (dt) {
    case FDt::f32:
      return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    case FDt::f16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
    default:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i))),
          16));
  }
}

/// e4m3fn bytes (one per 16-bit lane) as f32 / 256: placed into f16 bits (same exponent
/// field, bias 15 instead of 7), widened exactly; NaN (S.1111.111) kept NaN.
__m512 e4m3_div256(__m256i w16) {
  const __m256i mag = _mm256_and_si256(w16, _mm256_set1_epi16(0x7F));
  const __m256i h =
      _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w16, _mm256_set1_epi16(0x80)), 8),
                      _mm256_slli_epi16(mag, 7));
  const __m512 f = _mm512_cvtph_ps(h);
  return _mm512_mask_mov_ps(f, _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7F)),
                            _mm512_set1_ps(NAN));
}
/// e5m2 bytes (one per 16-bit lane) as f32: e5m2 is the top byte of an f16.
__m512 e5m2_f32(__m256i w16) { return _mm512_cvtph_ps(_mm256_slli_epi16(w16, 8)); }

/// e8m0 bytes as 2^(e - 127): 0 -> 2^-127 (subnormal), 255 -> NaN.
__m512 e8m0_f32(__m128i b) {
  const __m512i e = _mm512_cvtepu8_epi32(b);
  __m512i bits = _mm512_slli_epi32(e, 23);
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()),
                               _mm512_set1_epi32(0x00400000));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)),
                               _mm512_set1_epi32(0x7FC00000));
  return _mm512_castsi512_ps(bits);
}

// ---- transposes ---------------------------------------------------------------------------------

/// r[j] (16 dwords each) -> r[s] = dword s of every r[j].
void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int d = 0; d < 4; ++d) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[d], u[4 + d], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[d], u[4 + d], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + d], u[12 + d], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + d], u[12 + d], 0xEE);
    r[0 + d] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + d] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + d] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + d] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// ---- formats ------------------------------------------------------------------------------------

/// One row of W: its code bytes and the index of its first scale.
struct Row {
  const uint8_t* codes;
  i64 sbase;
};

Row row_of(const WeightRef& w, i64 r) {
  return {w.codes + r * w.row_bytes, (r / w.scale_row_div) * w.scale_row_stride};
}

// Code tables of the 4-bit formats, nibble -> v + 128.
alignas(16) constexpr uint8_t kTabI4[16] = {128, 129, 130, 131, 132, 133, 134, 135,
                                            120, 121, 122, 123, 124, 125, 126, 127};
alignas(16) constexpr uint8_t kTabU4[16] = {128, 129, 130, 131, 132, 133, 134, 135,
                                            136, 137, 138, 139, 140, 141, 142, 143};
// e2m1 values doubled (0, 1, 2, 3, 4, 6, 8, 12; sign in bit 3).
alignas(16) constexpr uint8_t kTabE2M1x2[16] = {128, 129, 130, 131, 132, 134, 136, 140,
                                                128, 127, 126, 125, 124, 122, 120, 116};

/// The format traits: F, parameter group G, c terms (affine / K-quant mins) or not.
template <WFmt F, int G, bool C>
struct Fmt {
  static constexpr WFmt kFmt = F;
  static constexpr int kG = G;
  static constexpr bool kC = C;
  /// lowbit's packed 4-bit codes: x is staged [evens, odds] per group.
  static constexpr bool kPerm =
      F == WFmt::i4 || F == WFmt::u4 || F == WFmt::nvfp4 || F == WFmt::mxfp4;
  /// fp8: float codes, exact path only.
  static constexpr bool kFloat = F == WFmt::e4m3 || F == WFmt::e5m2;

  /// Codes k in [64c, 64c + 64) of `r` (in the staged order): u = v + 128; fp8: the raw bytes.
  static __m512i codes(const Row& r, i64 c) {
    if constexpr (F == WFmt::i8) {
      return _mm512_xor_si512(_mm512_loadu_si512(r.codes + 64 * c), _mm512_set1_epi8(char(0x80)));
    } else if constexpr (F == WFmt::u8 || kFloat) {
      return _mm512_loadu_si512(r.codes + 64 * c);
    } else if constexpr (kPerm) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.codes + 32 * c));
      // G = 32: 128-bit lanes [bytes 0-15, bytes 0-15, 16-31, 16-31], the second of each pair
      // shifted to its high nibbles; G = 16: the same per 8 bytes.
      const __m512i idx = G == 32 ? _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0)
                                  : _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0);
      __m512i v = _mm512_permutexvar_epi64(idx, _mm512_castsi256_si512(b));
      v = _mm512_mask_srli_epi16(v, G == 32 ? __mmask32(0xFF00FF00u) : __mmask32(0xF0F0F0F0u), v,
                                 4);
      v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
      const uint8_t* tab = F == WFmt::i4 ? kTabI4 : (F == WFmt::u4 ? kTabU4 : kTabE2M1x2);
      return _mm512_shuffle_epi8(bcast_bytes16(tab), v);
    } else if constexpr (F == WFmt::q4_0) {
      // Two blocks of 18 bytes (f16 d, 16 bytes: element j low nibble, j + 16 high).
      const uint8_t* p = r.codes + 2 * c * 18 + 2;
      const __m256i b = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p + 18),
                                            reinterpret_cast<const __m128i*>(p));
      __m512i v = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
                                           _mm512_castsi256_si512(b));
      v = _mm512_mask_srli_epi16(v, __mmask32(0xFF00FF00u), v, 4);
      v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
      return _mm512_add_epi8(v, _mm512_set1_epi8(120));  // q - 8 + 128
    } else if constexpr (F == WFmt::q8_0) {
      const uint8_t* p = r.codes + 2 * c * 34 + 2;
      const __m512i v = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 34)), 1);
      return _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80)));
    } else if constexpr (F == WFmt::q4_K) {
      // Super-block of 144 bytes: d, dmin, 12 scale bytes, 128 code bytes; 32 bytes hold
      // sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
      const uint8_t* p = r.codes + (c >> 2) * 144 + 16 + (c & 3) * 32;
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(b), b, 1);
      v = _mm512_mask_srli_epi16(v, __mmask32(0xFFFF0000u), v, 4);
      return _mm512_ternarylogic_epi32(v, _mm512_set1_epi8(0x0F), _mm512_set1_epi8(char(0x80)),
                                       0xEA);  // (v & 0x0F) | 0x80
    } else {                                   // q6_K
      // Super-block of 210 bytes: ql[128], qh[64], 16 int8 scales, d. Half h (128 values):
      // ql + 64h, qh + 32h; element l / l+32 / l+64 / l+96 takes low / low / high / high
      // nibbles of ql[l], ql[l+32], ql[l], ql[l+32] and bits 0-1 / 2-3 / 4-5 / 6-7 of qh[l].
      const uint8_t* sb = r.codes + (c >> 2) * 210;
      const int h = static_cast<int>((c >> 1) & 1);
      const __m512i l = _mm512_loadu_si512(sb + 64 * h);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h));
      const __m512i hh = _mm512_inserti64x4(_mm512_castsi256_si512(q), q, 1);
      __m512i lo, hs;
      if ((c & 1) == 0) {
        lo = l;
        hs = _mm512_sllv_epi16(hh,
                               _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
      } else {
        lo = _mm512_srli_epi16(l, 4);
        hs = _mm512_srlv_epi16(hh,
                               _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1));
      }
      const __m512i t = _mm512_and_si512(hs, _mm512_set1_epi8(0x30));
      const __m512i v = _mm512_ternarylogic_epi32(lo, t, _mm512_set1_epi8(0x0F), 0xEC);
      return _mm512_add_epi8(v, _mm512_set1_epi8(96));  // q - 32 + 128
    }
  }

  /// a and c of groups g0 .. g0 + cnt - 1 of row r (cnt <= 16; entries past cnt are 0).
  /// g0 is a multiple of 16. fp8: a includes the factor 256 of e4m3_div256.
  static void params(const WeightRef& w, const Row& r, i64 g0, i64 cnt, float* a, float* c) {
    if constexpr (F == WFmt::q4_0 || F == WFmt::q8_0) {
      const int bytes = F == WFmt::q4_0 ? 18 : 34;
      const __m512i idx =
          _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                             _mm512_set1_epi32(bytes));
      const __m512i d = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), first_n16(cnt), idx,
                                                    r.codes + g0 * bytes, 1);
      _mm512_store_ps(a, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
      if constexpr (C) _mm512_store_ps(c, _mm512_setzero_ps());
    } else if constexpr (F == WFmt::q4_K) {
      for (int half = 0; half < 2; ++half) {
        if (half * 8 >= cnt) {
          _mm256_store_ps(a + 8 * half, _mm256_setzero_ps());
          _mm256_store_ps(c + 8 * half, _mm256_setzero_ps());
          continue;
        }
        const uint8_t* sb = r.codes + ((g0 >> 3) + half) * 144;
        const float d = f16_to_f32(static_cast<uint16_t>(sb[0] | (sb[1] << 8)));
        const float dmin = f16_to_f32(static_cast<uint16_t>(sb[2] | (sb[3] << 8)));
        alignas(16) uint8_t u[16];  // ggml's 8 six-bit scales, then 8 mins
        q4k_scales_mins(sb, u);
        const __m256 sc = _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(u))));
        const __m256 mn = _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(u + 8))));
        // ggml: d1 = d * sc, m1 = dmin * m, value = d1 * q - m1.
        _mm256_store_ps(a + 8 * half, _mm256_mul_ps(_mm256_set1_ps(d), sc));
        _mm256_store_ps(c + 8 * half, _mm256_sub_ps(_mm256_setzero_ps(),
                                                    _mm256_mul_ps(_mm256_set1_ps(dmin), mn)));
      }
    } else if constexpr (F == WFmt::q6_K) {
      const uint8_t* sb = r.codes + (g0 >> 4) * 210;
      const float d = f16_to_f32(static_cast<uint16_t>(sb[208] | (sb[209] << 8)));
      const __m512 sc = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 192))));
      _mm512_store_ps(a, _mm512_maskz_mul_ps(first_n16(cnt), _mm512_set1_ps(d), sc));
    } else {
      // Scales (and zero points) in their own tensors, 16 groups from element first.
      __m512 av;
      __m512i zv = _mm512_setzero_si512();
      if (w.scale_col_div >= kNoDiv) {
        const i64 i = r.sbase;
        av = _mm512_set1_ps(
            F == WFmt::nvfp4 || F == WFmt::mxfp4 ? 0.0f : load_float(w.scale, w.scale_dt, i));
        if constexpr (C) zv = _mm512_set1_epi32(w.zero[i]);
      } else {
        const i64 per = w.scale_col_div / G;  // groups per scale: 1, 2, 4, ... (<= 16)
        const i64 first = r.sbase + g0 / per;
        const i64 n = (cnt + per - 1) / per;
        const __mmask16 m = first_n16(n);
        if constexpr (F == WFmt::nvfp4) {
          const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(w.scale) + first);
          const __m512 bs =
              _mm512_mul_ps(e4m3_div256(_mm256_cvtepu8_epi16(b)), _mm512_set1_ps(256.0f));
          // e2m1 doubled: a = (block scale * global) / 2.
          av = _mm512_mul_ps(_mm512_mul_ps(bs, _mm512_set1_ps(w.global)), _mm512_set1_ps(0.5f));
        } else if constexpr (F == WFmt::mxfp4) {
          const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(w.scale) + first);
          av = _mm512_mul_ps(e8m0_f32(b), _mm512_set1_ps(0.5f));
        } else {
          av = load16(w.scale, w.scale_dt, first, n);
          if constexpr (C) zv = _mm512_maskz_loadu_epi32(m, w.zero + first);
        }
        if (per > 1) {
          const __m512i rep = _mm512_srlv_epi32(
              _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
              _mm512_set1_epi32(__builtin_ctzll(static_cast<unsigned long long>(per))));
          av = _mm512_permutexvar_ps(rep, av);
          if constexpr (C) zv = _mm512_permutexvar_epi32(rep, zv);
        }
      }
      const __mmask16 valid = first_n16(cnt);
      if constexpr (F == WFmt::e4m3) av = _mm512_mul_ps(av, _mm512_set1_ps(256.0f));
      av = _mm512_maskz_mov_ps(valid, av);
      _mm512_store_ps(a, av);
      if constexpr (C) {
        __m512 cv;
        if constexpr (F == WFmt::u8) {
          // v = q - 128: w = a * (q - z) = a * v + a * (128 - z).
          cv = _mm512_mul_ps(av, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_set1_epi32(128), zv)));
        } else {
          cv = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(av, _mm512_cvtepi32_ps(zv)));
        }
        _mm512_store_ps(c, _mm512_maskz_mov_ps(valid, cv));
      }
    }
  }

  /// The dequantized weights of chunk c (64 k, staged order) of row r, given the a / c of
  /// the chunk's groups (pointers to the chunk's first group).
  static void values(const Row& r, i64 c, const float* a, const float* cc, __m512 out[4]) {
    if constexpr (kFloat) {
      for (int t = 0; t < 4; ++t) {
        const __m256i w16 = _mm256_cvtepu8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + 64 * c + 16 * t)));
        const __m512 v = F == WFmt::e4m3 ? e4m3_div256(w16) : e5m2_f32(w16);
        out[t] = _mm512_mul_ps(v, _mm512_set1_ps(a[(16 * t) / G]));
      }
    } else {
      const __m512i s = _mm512_xor_si512(codes(r, c), _mm512_set1_epi8(char(0x80)));
      for (int t = 0; t < 4; ++t) {
        const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(quarter_of(s, t)));
        const int g = (16 * t) / G;
        if constexpr (C) {
          out[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(a[g]), _mm512_set1_ps(cc[g]));
        } else {
          out[t] = _mm512_mul_ps(v, _mm512_set1_ps(a[g]));
        }
      }
    }
  }
};

// ---- x staging ----------------------------------------------------------------------------------

/// x as f32 [m, k], permuted per group for the 4-bit formats.
template <int G, bool kPerm>
void stage_xf(const XFloatRef& x, i64 m, i64 k, float* xf) {
  parallel_rows(m, m * k, [&](i64 i) {
    const char* src =
        static_cast<const char*>(x.data) + i * x.row_stride * (x.dt == FDt::f32 ? 4 : 2);
    float* dst = xf + i * k;
    if constexpr (!kPerm) {
      for (i64 e = 0; e < k; e += 16) _mm512_store_ps(dst + e, load_x16(src, x.dt, e));
    } else if constexpr (G == 32) {
      const __m512i ev =
          _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
      const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
      for (i64 e = 0; e < k; e += 32) {
        const __m512 lo = load_x16(src, x.dt, e), hi = load_x16(src, x.dt, e + 16);
        _mm512_store_ps(dst + e, _mm512_permutex2var_ps(lo, ev, hi));
        _mm512_store_ps(dst + e + 16, _mm512_permutex2var_ps(lo, od, hi));
      }
    } else {
      const __m512i p = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
      for (i64 e = 0; e < k; e += 16)
        _mm512_store_ps(dst + e, _mm512_permutexvar_ps(p, load_x16(src, x.dt, e)));
    }
  });
}

/// 64 int8 codes of x row i at k = 64c, natural order.
__m512i x_codes(const XQuantRef& x, i64 i, i64 c) {
  const uint8_t* row = x.data + i * x.row_bytes;
  switch (x.kind) {
    case XQKind::int8:
      return _mm512_loadu_si512(row + 64 * c);
    case XQKind::q8_0: {
      const uint8_t* p = row + 2 * c * 34 + 2;
      return _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 34)), 1);
    }
    default:  // q8_K: f32 d, 256 codes, 16 i16 sums (292 bytes)
      return _mm512_loadu_si512(row + (c >> 2) * 292 + 4 + (c & 3) * 64);
  }
}

/// The x scale of row i for the group holding column e.
float x_scale(const XQuantRef& x, i64 i, i64 e) {
  const uint8_t* row = x.data + i * x.row_bytes;
  switch (x.kind) {
    case XQKind::int8:
      return load_float(
          x.scale, x.scale_dt,
          i * x.scale_row_stride + (x.scale_col_div >= kNoDiv ? 0 : e / x.scale_col_div));
    case XQKind::q8_0: {
      const uint8_t* p = row + (e >> 5) * 34;
      return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8)));
    }
    default: {
      float d;
      std::memcpy(&d, row + (e >> 8) * 292, 4);
      return d;
    }
  }
}

/// Bytes permuted to the staged order of the 4-bit formats: per group of G, evens then odds.
template <int G>
__m512i permute_codes(__m512i v) {
  const __m256i ev = _mm512_cvtepi16_epi8(v);                               // bytes 0, 2, 4, ...
  const __m256i od = _mm512_cvtepi16_epi8(_mm512_srli_epi16(v, 8));         // bytes 1, 3, 5, ...
  const __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(ev), od, 1);  // [ev | od]
  if constexpr (G == 32) {
    return _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 1, 2, 0));  // [ev0, od0, ev1, od1] x 128 bits
  } else {
    return _mm512_permutexvar_epi64(_mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0), t);
  }
}

/// x codes staged for the int8 path: codes [m, k] (permuted for the 4-bit formats); gemv:
/// per 4 codes -128 * their sum (init) and their group's scale (xs); gemm: per group -128 *
/// sum (init) and scale (xs); both: xs * sum per group (xsq) when the format has c terms.
template <int G, bool kPerm, bool kC>
void stage_x8(const XQuantRef& x, i64 m, i64 k, Path path, int8_t* xq, int32_t* init, float* xs,
              float* xsq, int offset = 128) {
  const i64 ng = k / G, chunks = k / kChunk;
  parallel_rows(m, m * k, [&](i64 i) {
    int8_t* q = xq + i * k;
    for (i64 c = 0; c < chunks; ++c) {
      __m512i v = x_codes(x, i, c);
      if constexpr (kPerm) v = permute_codes<G>(v);
      _mm512_store_si512(q + 64 * c, v);
      const __m512i sum4 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), v);
      constexpr int kGroups = kChunk / G;  // 2 or 4 groups per chunk
      float s[kGroups];
      int32_t qs[kGroups];
      for (int g = 0; g < kGroups; ++g) {
        s[g] = x_scale(x, i, 64 * c + g * G);
        const __mmask16 lanes = static_cast<__mmask16>(((1u << (G / 4)) - 1) << (g * G / 4));
        qs[g] = _mm512_mask_reduce_add_epi32(lanes, sum4);
        const i64 gi = i * ng + c * kGroups + g;
        if constexpr (kC) xsq[gi] = s[g] * static_cast<float>(qs[g]);
        if (path == Path::gemm) {
          init[gi] = -offset * qs[g];
          xs[gi] = s[g];
        }
      }
      if (path == Path::gemv) {
        _mm512_store_si512(init + i * (k / 4) + 16 * c,
                           _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum4, 7)));
        __m512 sv;
        if constexpr (G == 32) {
          sv = _mm512_mask_mov_ps(_mm512_set1_ps(s[0]), 0xFF00, _mm512_set1_ps(s[1]));
        } else {
          sv = _mm512_mask_mov_ps(
              _mm512_mask_mov_ps(
                  _mm512_mask_mov_ps(_mm512_set1_ps(s[0]), 0xFFF0, _mm512_set1_ps(s[1])), 0xFF00,
                  _mm512_set1_ps(s[2])),
              0xF000, _mm512_set1_ps(s[3]));
        }
        _mm512_store_ps(xs + i * (k / 4) + 16 * c, sv);
      }
    }
  });
}

// ---- gemv ---------------------------------------------------------------------------------------

template <class F, int MR>
void gemv_exact_rows(const WeightRef& w, const float* xf, float* out, i64 ldc, i64 r0, i64 r1) {
  constexpr int G = F::kG;
  const i64 K = w.k, ng = K / G;
  alignas(64) float a[16], cc[16];
  for (i64 r = r0; r < r1; ++r) {
    const Row row = row_of(w, r);
    __m512 acc[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_setzero_ps();
    for (i64 g0 = 0; g0 < ng; g0 += 16) {
      const i64 cnt = min64(16, ng - g0);
      F::params(w, row, g0, cnt, a, cc);
      const i64 c0 = g0 * G / kChunk, c1 = (g0 + cnt) * G / kChunk;
      for (i64 c = c0; c < c1; ++c) {
        const i64 lg = (c - c0) * (kChunk / G);
        __m512 wv[4];
        F::values(row, c, a + lg, cc + lg, wv);
        for (int i = 0; i < MR; ++i) {
          const float* xp = xf + i * K + kChunk * c;
          for (int t = 0; t < 4; ++t)
            acc[i][t] = _mm512_fmadd_ps(_mm512_load_ps(xp + 16 * t), wv[t], acc[i][t]);
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      out[i * ldc + r] = _mm512_reduce_add_ps(
          _mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3])));
  }
}

template <class F, int MR>
void gemv_int8_rows(const WeightRef& w, const int8_t* xq, const int32_t* init, const float* xs,
                    const float* xsq, float* out, i64 ldc, i64 r0, i64 r1) {
  constexpr int G = F::kG;
  constexpr int kGroupsPerChunk = kChunk / G;
  const i64 K = w.k, ng = K / G, K4 = K / 4;
  alignas(64) float a[16], cc[16];
  const __m512i base = G == 32 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                               : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (i64 r = r0; r < r1; ++r) {
    const Row row = row_of(w, r);
    // Two accumulators per row (even and odd chunks), for two independent FMA chains.
    __m512 acc0[MR], acc1[MR], accc[MR];
    for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = accc[i] = _mm512_setzero_ps();
    for (i64 g0 = 0; g0 < ng; g0 += 16) {
      const i64 cnt = min64(16, ng - g0);
      F::params(w, row, g0, cnt, a, cc);
      const __m512 av = _mm512_load_ps(a);
      const i64 c0 = g0 / kGroupsPerChunk, c1 = (g0 + cnt) / kGroupsPerChunk;
      // One chunk into acc: per row i, J = init + sum u x (i32 per 4 codes), then
      // acc += J * (a * xs) lane by lane.
      auto chunk = [&](i64 c, __m512* acc) {
        const __m512i u = F::codes(row, c);
        const __m512 A = _mm512_permutexvar_ps(
            _mm512_add_epi32(base, _mm512_set1_epi32(static_cast<int>((c - c0) * kGroupsPerChunk))),
            av);
        for (int i = 0; i < MR; ++i) {
          const __m512i J = _mm512_dpbusd_epi32(_mm512_load_si512(init + i * K4 + 16 * c), u,
                                                _mm512_load_si512(xq + i * K + kChunk * c));
          const __m512 S = _mm512_mul_ps(A, _mm512_load_ps(xs + i * K4 + 16 * c));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(J), S, acc[i]);
        }
      };
      i64 c = c0;
      for (; c + 1 < c1; c += 2) {
        chunk(c, acc0);
        chunk(c + 1, acc1);
      }
      if (c < c1) chunk(c, acc0);
      if constexpr (F::kC) {
        const __m512 cv = _mm512_load_ps(cc);
        for (int i = 0; i < MR; ++i)
          accc[i] = _mm512_fmadd_ps(cv, _mm512_maskz_loadu_ps(first_n16(cnt), xsq + i * ng + g0),
                                    accc[i]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
      if constexpr (F::kC) v += _mm512_reduce_add_ps(accc[i]);
      out[i * ldc + r] = v;
    }
  }
}

// ---- gemm: panels -------------------------------------------------------------------------------

/// Codes of columns n0 .. n0 + nc - 1 (nc <= 32), k in [k0, k0 + kc), transposed: T holds per
/// 4 k (a dword step) 32 columns x 4 bytes; A / Cc per group 32 columns of a / c. Missing
/// columns decode as v = 0, a = c = 0.
template <class F>
void decode_panel(const WeightRef& w, i64 n0, i64 nc, i64 k0, i64 kc, uint8_t* T, float* A,
                  float* Cc) {
  constexpr int G = F::kG;
  const __m512i zero_code = F::kFloat ? _mm512_setzero_si512() : _mm512_set1_epi8(char(0x80));
  alignas(64) float pa[16][16], pc[16][16];
  for (int h = 0; h < 2; ++h) {
    const i64 cols = min64(16, nc - 16 * h);
    Row rows[16];
    for (int j = 0; j < 16; ++j) rows[j] = row_of(w, j < cols ? n0 + 16 * h + j : n0);
    for (i64 c = k0 / kChunk; c < (k0 + kc) / kChunk; ++c) {
      __m512i v[16];
      for (int j = 0; j < 16; ++j) v[j] = j < cols ? F::codes(rows[j], c) : zero_code;
      transpose16(v);
      uint8_t* dst = T + ((c * kChunk - k0) / 4) * 128 + 64 * h;
      for (int s = 0; s < 16; ++s) _mm512_store_si512(dst + 128 * s, v[s]);
    }
    for (i64 g0 = k0 / G; g0 < (k0 + kc) / G; g0 += 16) {
      const i64 cnt = min64(16, (k0 + kc) / G - g0);
      for (int j = 0; j < 16; ++j) {
        if (j < cols) {
          F::params(w, rows[j], g0, cnt, pa[j], pc[j]);
        } else {
          _mm512_store_ps(pa[j], _mm512_setzero_ps());
          _mm512_store_ps(pc[j], _mm512_setzero_ps());
        }
      }
      __m512i va[16], vc[16];
      for (int j = 0; j < 16; ++j) {
        va[j] = _mm512_castps_si512(_mm512_load_ps(pa[j]));
        vc[j] = _mm512_castps_si512(_mm512_load_ps(pc[j]));
      }
      transpose16(va);
      if constexpr (F::kC) transpose16(vc);
      const i64 gl = g0 - k0 / G;
      for (i64 g = 0; g < cnt; ++g) {
        _mm512_store_si512(A + (gl + g) * 32 + 16 * h, va[g]);
        if constexpr (F::kC) _mm512_store_si512(Cc + (gl + g) * 32 + 16 * h, vc[g]);
      }
    }
  }
}

/// The f32 weights of a decoded panel: P [kc, 32].
template <class F>
void expand_panel(const uint8_t* T, const float* A, const float* Cc, i64 kc, float* P) {
  constexpr int G = F::kG;
  for (i64 s = 0; s < kc / 4; ++s) {
    const i64 g = (4 * s) / G;
    for (int h = 0; h < 2; ++h) {
      const __m512i u = _mm512_load_si512(T + 128 * s + 64 * h);
      const __m512 a = _mm512_load_ps(A + g * 32 + 16 * h);
      for (int b = 0; b < 4; ++b) {
        __m512 wv;
        if constexpr (F::kFloat) {
          const __m256i w16 = _mm512_cvtepi32_epi16(
              _mm512_and_si512(_mm512_srli_epi32(u, 8 * b), _mm512_set1_epi32(0xFF)));
          wv = _mm512_mul_ps(F::kFmt == WFmt::e4m3 ? e4m3_div256(w16) : e5m2_f32(w16), a);
        } else {
          const __m512i sv = _mm512_xor_si512(u, _mm512_set1_epi8(char(0x80)));
          const __m512 v =
              _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(sv, 24 - 8 * b), 24));
          if constexpr (F::kC) {
            wv = _mm512_fmadd_ps(v, a, _mm512_load_ps(Cc + g * 32 + 16 * h));
          } else {
            wv = _mm512_mul_ps(v, a);
          }
        }
        _mm512_store_ps(P + (4 * s + b) * 32 + 16 * h, wv);
      }
    }
  }
}

/// Stores (first panel) or adds 32 accumulators' columns into C, nc <= 32 valid.
void flush_tile(float* C, __m512 v0, __m512 v1, i64 nc, bool first) {
  const __mmask16 m0 = first_n16(nc), m1 = first_n16(nc - 16 > 0 ? nc - 16 : 0);
  if (!first) {
    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, C), v0);
    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, C + 16), v1);
  }
  _mm512_mask_storeu_ps(C, m0, v0);
  _mm512_mask_storeu_ps(C + 16, m1, v1);
}

/// R rows of x (f32, row stride ldx, at the panel's first k) times P [kc, 32].
template <int R>
void tile_exact(const float* x, i64 ldx, const float* P, i64 kc, float* C, i64 ldc, i64 nc,
                bool first) {
  __m512 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(P + 32 * k), w1 = _mm512_load_ps(P + 32 * k + 16);
    for (int i = 0; i < R; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
      acc[i][0] = _mm512_fmadd_ps(xb, w0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(xb, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) flush_tile(C + i * ldc, acc[i][0], acc[i][1], nc, first);
}

/// R rows of staged x codes times the decoded panel: per group i32 sums, f32 updates.
template <int R, int G, bool kC>
void tile_int8(const int8_t* xq, i64 ldx, const int32_t* init, const float* xs, const float* xsq,
               i64 ldg, const uint8_t* T, const float* A, const float* Cc, i64 kc, float* C,
               i64 ldc, i64 nc, bool first) {
  __m512 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (i64 g = 0; g < kc / G; ++g) {
    __m512i J[R][2];
    for (int i = 0; i < R; ++i) J[i][0] = J[i][1] = _mm512_set1_epi32(init[i * ldg + g]);
    for (int s = 0; s < G / 4; ++s) {
      const uint8_t* tp = T + (g * (G / 4) + s) * 128;
      const __m512i u0 = _mm512_load_si512(tp), u1 = _mm512_load_si512(tp + 64);
      for (int i = 0; i < R; ++i) {
        int32_t xv;
        std::memcpy(&xv, xq + i * ldx + g * G + 4 * s, 4);
        const __m512i xb = _mm512_set1_epi32(xv);
        J[i][0] = _mm512_dpbusd_epi32(J[i][0], u0, xb);
        J[i][1] = _mm512_dpbusd_epi32(J[i][1], u1, xb);
      }
    }
    const __m512 a0 = _mm512_load_ps(A + g * 32), a1 = _mm512_load_ps(A + g * 32 + 16);
    for (int i = 0; i < R; ++i) {
      const __m512 sb = _mm512_set1_ps(xs[i * ldg + g]);
      acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(J[i][0]), _mm512_mul_ps(a0, sb), acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(J[i][1]), _mm512_mul_ps(a1, sb), acc[i][1]);
    }
    if constexpr (kC) {
      const __m512 c0 = _mm512_load_ps(Cc + g * 32), c1 = _mm512_load_ps(Cc + g * 32 + 16);
      for (int i = 0; i < R; ++i) {
        const __m512 qb = _mm512_set1_ps(xsq[i * ldg + g]);
        acc[i][0] = _mm512_fmadd_ps(c0, qb, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(c1, qb, acc[i][1]);
      }
    }
  }
  for (int i = 0; i < R; ++i) flush_tile(C + i * ldc, acc[i][0], acc[i][1], nc, first);
}

/// Calls fn(Fmt<...>{}) for w's format, group and c terms.
template <class Fn>
void with_format(const WeightRef& w, Fn&& fn) {
  dispatch_format<Fmt>(w, fn);
}

/// y = C (+ bias), rounded once to y's type; C is y itself when y is f32.
void finish(const YRef& y, i64 m, i64 n, const float* C, i64 ldc) {
  if (y.dt == FDt::f32 && y.bias == nullptr) return;
  parallel_rows(m, m * n * 4, [&](i64 i) {
    const float* c = C + i * ldc;
    for (i64 j = 0; j < n; j += 16) {
      const __mmask16 msk = first_n16(n - j);
      __m512 v = _mm512_maskz_loadu_ps(msk, c + j);
      if (y.bias) v = _mm512_add_ps(v, load16(y.bias, y.dt, j, n - j));
      if (y.dt == FDt::f32) {
        _mm512_mask_storeu_ps(static_cast<float*>(y.data) + i * y.row_stride + j, msk, v);
        continue;
      }
      __m256i h;
      if (y.dt == FDt::f16) {
        h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      } else {
        // bf16: round to nearest even on the bits; NaN stays NaN (quiet).
        const __m512i b = _mm512_castps_si512(v);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb), 16);
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        r = _mm512_mask_mov_epi32(
            r, nan, _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40)));
        h = _mm512_cvtepi32_epi16(r);
      }
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y.data) + i * y.row_stride + j, msk, h);
    }
  });
}

}  // namespace
}  // namespace lowbit::matmul_cpu
