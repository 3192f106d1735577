// Internals of the AVX2 matmul kernels, shared by matmul_cpu_avx2.cpp (plain layout) and
// matmul_cpu_avx2_packed.cpp (the prepared layout). Included only by those translation units,
// after their AVX2 target pragma; everything is in an anonymous namespace, so each of them
// compiles its own copy and nothing here has external linkage (matmul_cpu_avx512.hpp says why
// that matters). The file comment of matmul_cpu_avx2.cpp describes the arithmetic.
#pragma once

#ifndef LOWBIT_MATMUL_CPU_AVX2_TARGET
#error "include matmul_cpu_avx2_impl.hpp only after the AVX2 target pragma of its users"
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

#include "ops/matmul/matmul_cpu_avx2.hpp"
#include "ops/matmul/matmul_cpu_simd_common.hpp"

namespace lowbit::matmul_cpu::avx2 {
namespace {

constexpr int kChunk = 32;     // codes per decoded ymm
constexpr i64 kKcExact = 256;  // k per panel, exact gemm (f32 panel 16 KiB)
constexpr i64 kKcInt8 = 512;   // k per panel, int8 gemm (16-bit code pairs 16 KiB)
constexpr int kCols = 16;      // columns of y per panel and tile
constexpr int kRowsExact = 6;  // rows of x per exact tile (12 f32 accumulators)
constexpr int kRowsInt8 = 3;   // rows of x per int8 tile (6 i32 + 6 f32 accumulators)
constexpr int kGemvRows = 4;   // rows of x per gemv pass

// ---- scalar and vector conversions ----------------------------------------------------------

float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
float bits_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

float load_float(const void* p, FDt dt, i64 i) {
  switch (dt) {
    case FDt::f32:
      return static_cast<const float*>(p)[i];
    case FDt::f16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default:
      return bits_f32(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
  }
}

/// e4m3fn byte as f32 (exact; S.1111.111 is NaN): the bits put together (normal: exponent
/// e - 7 + 127, the three mantissa bits on top), subnormals m * 2^-9.
float e4m3_f32(uint8_t b) {
  const uint32_t e = (b >> 3) & 15u, m = b & 7u;
  if ((b & 0x7F) == 0x7F) return NAN;
  const float mag =
      e == 0 ? static_cast<float>(m) * 0.001953125f : bits_f32(((e + 120u) << 23) | (m << 20));
  return (b & 0x80) ? -mag : mag;
}
/// e8m0 byte as 2^(e - 127): 0 -> 2^-127 (subnormal), 255 -> NaN.
float e8m0_f32(uint8_t e) {
  if (e == 255) return NAN;
  return bits_f32(e == 0 ? 0x00400000u : static_cast<uint32_t>(e) << 23);
}

/// 8 floats of type dt at p + i as f32 (exact widening).
__m256 load8(const void* p, FDt dt, i64 i) {
  switch (dt) {
    case FDt::f32:
      return _mm256_loadu_ps(static_cast<const float*>(p) + i);
    case FDt::f16:
      return _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
    default:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i))),
          16));
  }
}

/// Bytes 8t .. 8t + 7 of v in the low half of an xmm.
__m128i octet(__m256i v, int t) {
  switch (t) {
    case 0:
      return _mm256_castsi256_si128(v);
    case 1:
      return _mm_srli_si128(_mm256_castsi256_si128(v), 8);
    case 2:
      return _mm256_extracti128_si256(v, 1);
    default:
      return _mm_srli_si128(_mm256_extracti128_si256(v, 1), 8);
  }
}

/// 8 e4m3fn bytes (low half of b) as f32 / 256: placed into f16 bits (same exponent field,
/// bias 15 instead of 7), widened exactly; NaN (S.1111.111) kept NaN.
__m256 e4m3_div256(__m128i b) {
  const __m128i w16 = _mm_cvtepu8_epi16(b);
  const __m128i mag = _mm_and_si128(w16, _mm_set1_epi16(0x7F));
  const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w16, _mm_set1_epi16(0x80)), 8),
                                 _mm_slli_epi16(mag, 7));
  const __m256i is_nan = _mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7F)));
  return _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(NAN), _mm256_castsi256_ps(is_nan));
}
/// 8 e5m2 bytes as f32: e5m2 is the top byte of an f16.
__m256 e5m2_f32(__m128i b) { return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(b), 8)); }

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// r[j] (8 dwords each) -> r[s] = dword s of every r[j].
void transpose8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int d = 0; d < 4; ++d) {
    r[d] = _mm256_permute2x128_si256(u[d], u[4 + d], 0x20);
    r[4 + d] = _mm256_permute2x128_si256(u[d], u[4 + d], 0x31);
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

// Code tables of the 4-bit formats, nibble -> v (signed byte).
alignas(16) constexpr int8_t kTabI4[16] = {0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1};
alignas(16) constexpr int8_t kTabU4[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
// e2m1 values doubled (0, 1, 2, 3, 4, 6, 8, 12; sign in bit 3).
alignas(16) constexpr int8_t kTabE2M1x2[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                               0, -1, -2, -3, -4, -6, -8, -12};

__m256i nibbles_lo(__m256i b) { return _mm256_and_si256(b, _mm256_set1_epi8(0x0F)); }
__m256i nibbles_hi(__m256i b) {
  return _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(0x0F));
}

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

  /// Codes k in [32c, 32c + 32) of `r` (staged order) as signed bytes v; fp8: the raw bytes.
  static __m256i codes(const Row& r, i64 c) {
    if constexpr (F == WFmt::i8 || kFloat) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.codes + 32 * c));
    } else if constexpr (F == WFmt::u8) {
      return _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.codes + 32 * c)),
          _mm256_set1_epi8(char(0x80)));
    } else if constexpr (kPerm) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + 16 * c));
      const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
      // G = 32: [16 low nibbles (even k), 16 high (odd k)]; G = 16: the same per 8 bytes.
      const __m256i v =
          G == 32 ? _mm256_set_m128i(hi, lo)
                  : _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
      const int8_t* tab = F == WFmt::i4 ? kTabI4 : (F == WFmt::u4 ? kTabU4 : kTabE2M1x2);
      return _mm256_shuffle_epi8(
          _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(tab))), v);
    } else if constexpr (F == WFmt::q4_0) {
      // A block of 18 bytes: f16 d, 16 bytes (element j low nibble, j + 16 high).
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.codes + c * 18 + 2));
      const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
      return _mm256_sub_epi8(nibbles_lo(v), _mm256_set1_epi8(8));
    } else if constexpr (F == WFmt::q8_0) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.codes + c * 34 + 2));
    } else if constexpr (F == WFmt::q4_K) {
      // Super-block of 144 bytes: d, dmin, 12 scale bytes, 128 code bytes; 32 bytes hold
      // sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
      const int j = static_cast<int>(c & 7);
      const __m256i b = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(r.codes + (c >> 3) * 144 + 16 + (j >> 1) * 32));
      return (j & 1) ? nibbles_hi(b) : nibbles_lo(b);
    } else {  // q6_K
      // Super-block of 210 bytes: ql[128], qh[64], 16 int8 scales, d. Quarter q of half h
      // (32 values): the low (q < 2) or high nibbles of ql[64h + 32 (q & 1) + l] and bits
      // 2q, 2q + 1 of qh[32h + l] as bits 4-5; v = that - 32.
      const uint8_t* sb = r.codes + (c >> 3) * 210;
      const int j = static_cast<int>(c & 7), h = j >> 2, q = j & 3;
      const __m256i l =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 64 * h + 32 * (q & 1)));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h));
      const __m256i lo = (q >> 1) ? nibbles_hi(l) : nibbles_lo(l);
      const __m256i hb =
          _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * q)), _mm256_set1_epi8(0x03));
      return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), _mm256_set1_epi8(32));
    }
  }

  /// a and c of groups g0 .. g0 + cnt - 1 of row r (cnt <= 16; entries past cnt are 0). g0 is
  /// a multiple of 8 (16 for q6_K). fp8: a includes the factor 256 of e4m3_div256.
  static void params(const WeightRef& w, const Row& r, i64 g0, i64 cnt, float* a, float* c) {
    for (int g = 0; g < 16; ++g) a[g] = c[g] = 0.0f;
    if constexpr (F == WFmt::q4_0 || F == WFmt::q8_0) {
      const int bytes = F == WFmt::q4_0 ? 18 : 34;
      for (i64 g = 0; g < cnt; ++g) a[g] = f16_to_f32(rd16(r.codes + (g0 + g) * bytes));
    } else if constexpr (F == WFmt::q4_K) {
      for (i64 s = 0; s < cnt; s += 8) {
        const uint8_t* sb = r.codes + ((g0 + s) >> 3) * 144;
        const float d = f16_to_f32(rd16(sb)), dmin = f16_to_f32(rd16(sb + 2));
        uint8_t sc[16];
        q4k_scales_mins(sb, sc);
        // ggml: d1 = d * sc, m1 = dmin * m, value = d1 * q - m1.
        for (int j = 0; j < 8 && s + j < cnt; ++j) {
          a[s + j] = d * static_cast<float>(sc[j]);
          c[s + j] = -(dmin * static_cast<float>(sc[8 + j]));
        }
      }
    } else if constexpr (F == WFmt::q6_K) {
      const uint8_t* sb = r.codes + (g0 >> 4) * 210;
      const float d = f16_to_f32(rd16(sb + 208));
      for (i64 g = 0; g < cnt; ++g) a[g] = d * static_cast<float>(static_cast<int8_t>(sb[192 + g]));
    } else {
      // Scales (and zero points) in their own tensors.
      for (i64 g = 0; g < cnt; ++g) {
        const i64 i =
            w.scale_col_div >= kNoDiv ? r.sbase : r.sbase + ((g0 + g) * G) / w.scale_col_div;
        float av;
        if constexpr (F == WFmt::nvfp4) {
          // e2m1 doubled: a = (block scale * global) / 2.
          av = e4m3_f32(static_cast<const uint8_t*>(w.scale)[i]) * w.global * 0.5f;
        } else if constexpr (F == WFmt::mxfp4) {
          av = e8m0_f32(static_cast<const uint8_t*>(w.scale)[i]) * 0.5f;
        } else {
          av = load_float(w.scale, w.scale_dt, i);
        }
        if constexpr (F == WFmt::e4m3) av *= 256.0f;
        a[g] = av;
        if constexpr (C) {
          const int32_t z = w.zero[i];
          // uint8: v = q - 128, so w = a * (q - z) = a * v + a * (128 - z).
          c[g] = F == WFmt::u8 ? av * static_cast<float>(128 - z) : -(av * static_cast<float>(z));
        }
      }
    }
  }

  /// The dequantized weights of chunk c (32 k, staged order) of row r, given the a / c of the
  /// chunk's groups (pointers to the chunk's first group).
  static void values(const Row& r, i64 c, const float* a, const float* cc, __m256 out[4]) {
    const __m256i v = codes(r, c);
    for (int t = 0; t < 4; ++t) {
      const int g = (8 * t) / G;
      if constexpr (kFloat) {
        const __m256 f = F == WFmt::e4m3 ? e4m3_div256(octet(v, t)) : e5m2_f32(octet(v, t));
        out[t] = _mm256_mul_ps(f, _mm256_broadcast_ss(a + g));
      } else {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(octet(v, t)));
        if constexpr (C) {
          out[t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(a + g), _mm256_broadcast_ss(cc + g));
        } else {
          out[t] = _mm256_mul_ps(f, _mm256_broadcast_ss(a + g));
        }
      }
    }
  }
};

// ---- threads ------------------------------------------------------------------------------------

// ---- x staging ----------------------------------------------------------------------------------

/// Position of element e of a group of G in the staged order of the 4-bit formats (evens,
/// then odds).
template <int G>
int staged_pos(int e) {
  return (e & 1) ? G / 2 + e / 2 : e / 2;
}

/// x as f32 [m, k], permuted per group for the 4-bit formats.
template <int G, bool kPerm>
void stage_xf(const XFloatRef& x, i64 m, i64 k, float* xf) {
  parallel_rows(m, m * k, [&](i64 i) {
    const char* src =
        static_cast<const char*>(x.data) + i * x.row_stride * (x.dt == FDt::f32 ? 4 : 2);
    float* dst = xf + i * k;
    if constexpr (!kPerm) {
      for (i64 e = 0; e < k; e += 8) _mm256_store_ps(dst + e, load8(src, x.dt, e));
    } else {
      for (i64 e0 = 0; e0 < k; e0 += G)
        for (int e = 0; e < G; ++e) dst[e0 + staged_pos<G>(e)] = load_float(src, x.dt, e0 + e);
    }
  });
}

/// The 32 int8 codes of x row i at k = 32c, natural order.
const int8_t* x_codes(const XQuantRef& x, i64 i, i64 c) {
  const uint8_t* row = x.data + i * x.row_bytes;
  switch (x.kind) {
    case XQKind::int8:
      return reinterpret_cast<const int8_t*>(row + 32 * c);
    case XQKind::q8_0:
      return reinterpret_cast<const int8_t*>(row + c * 34 + 2);
    default:  // q8_K: f32 d, 256 codes, 16 i16 sums (292 bytes)
      return reinterpret_cast<const int8_t*>(row + (c >> 3) * 292 + 4 + (c & 7) * 32);
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
    case XQKind::q8_0:
      return f16_to_f32(rd16(row + (e >> 5) * 34));
    default:
      return bits_f32(static_cast<uint32_t>(row[(e >> 8) * 292]) |
                      (static_cast<uint32_t>(row[(e >> 8) * 292 + 1]) << 8) |
                      (static_cast<uint32_t>(row[(e >> 8) * 292 + 2]) << 16) |
                      (static_cast<uint32_t>(row[(e >> 8) * 292 + 3]) << 24));
  }
}

/// x codes [m, k] as T (i16 for the plain kernel, i8 for the prepared one; permuted for the
/// 4-bit formats), per group its scale (xs), the sum of its codes (xsum, when given) and, for
/// formats with c terms, scale times that sum (xsq). Returns whether some code is -128.
template <int G, bool kPerm, bool kC, class T>
bool stage_xq(const XQuantRef& x, i64 m, i64 k, T* xq, int32_t* xsum, float* xs, float* xsq) {
  const i64 ng = k / G;
  int has_min = 0;
  parallel_rows(m, m * k, [&](i64 i) {
    T* q = xq + i * k;
    int row_min = 0;
    for (i64 c = 0; c < k / kChunk; ++c) {
      const int8_t* src = x_codes(x, i, c);
      for (int h = 0; h < kChunk / G; ++h) {
        int32_t sum = 0;
        for (int e = 0; e < G; ++e) {
          const int v = src[h * G + e];
          sum += v;
          row_min = v < row_min ? v : row_min;
          q[c * kChunk + h * G + (kPerm ? staged_pos<G>(e) : e)] = static_cast<T>(v);
        }
        const i64 gi = i * ng + (c * kChunk + h * G) / G;
        const float s = x_scale(x, i, c * kChunk + h * G);
        xs[gi] = s;
        if (xsum) xsum[gi] = sum;
        if constexpr (kC) xsq[gi] = s * static_cast<float>(sum);
      }
    }
    if (row_min == -128) {
#pragma omp atomic write
      has_min = 1;
    }
  });
  return has_min != 0;
}

/// Calls fn(Fmt<...>{}) for w's format, group and c terms.
template <class Fn>
void with_format(const WeightRef& w, Fn&& fn) {
  dispatch_format<Fmt>(w, fn);
}

/// y's 8 values from f32 v, rounded once (RNE; NaN stays NaN, quiet), stored at p.
void store8(void* p, FDt dt, __m256 v) {
  if (dt == FDt::f32) {
    _mm256_storeu_ps(static_cast<float*>(p), v);
    return;
  }
  __m128i h;
  if (dt == FDt::f16) {
    h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x40));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i t = _mm256_blendv_epi8(r, q, nan);
    h = _mm256_castsi256_si128(
        _mm256_permute4x64_epi64(_mm256_packus_epi32(t, t), 0x08));  // 32 -> 16 bits, in order
  }
  _mm_storeu_si128(static_cast<__m128i*>(p), h);
}

/// One value of y (the tail of a row), rounded as store8 does.
void store1(void* p, FDt dt, float v) {
  if (dt == FDt::f32) {
    *static_cast<float*>(p) = v;
  } else if (dt == FDt::f16) {
    *static_cast<uint16_t*>(p) = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    *static_cast<uint16_t*>(p) =
        static_cast<uint16_t>(v != v ? (b >> 16) | 0x40 : (b + 0x7FFF + ((b >> 16) & 1)) >> 16);
  }
}

/// y = C (+ bias), rounded once to y's type; C is y itself when y is f32.
void finish(const YRef& y, i64 m, i64 n, const float* C, i64 ldc) {
  if (y.dt == FDt::f32 && y.bias == nullptr) return;
  const i64 esize = y.dt == FDt::f32 ? 4 : 2;
  parallel_rows(m, m * n * 4, [&](i64 i) {
    const float* c = C + i * ldc;
    char* out = static_cast<char*>(y.data) + i * y.row_stride * esize;
    i64 j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 v = _mm256_loadu_ps(c + j);
      if (y.bias) v = _mm256_add_ps(v, load8(y.bias, y.dt, j));
      store8(out + j * esize, y.dt, v);
    }
    for (; j < n; ++j)
      store1(out + j * esize, y.dt, c[j] + (y.bias ? load_float(y.bias, y.dt, j) : 0.0f));
  });
}

}  // namespace
}  // namespace lowbit::matmul_cpu::avx2
