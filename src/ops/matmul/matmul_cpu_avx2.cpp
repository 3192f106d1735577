// AVX2 CPU matmul kernels, y[m, n] = x[m, k] . dequant(W)[n, k]^T, W in its plain layout: the
// kernels a CPU without AVX-512 VNNI gets instead of the reference.
//
// The arithmetic is the AVX-512 kernels' (matmul_cpu_avx512.cpp's file comment) on 8-lane
// vectors. Every format but fp8 is read as small integer code values v (|v| <= 128) with, per
// parameter group of G = 16 or 32 consecutive k, w = a * v + c. A decoder per format turns 32
// consecutive codes of one row into one ymm of signed bytes v (in the staged order: for the
// lowbit 4-bit formats, per group the even k then the odd ones, x staged to match), and a
// group's parameters into a and c.
//
//  * exact (float x): w = v * a (+ c) in f32, then f32 FMAs; x widened to f32 exactly.
//  * int8 (x quantized to int8 codes q with scales s per group): per group and output an
//    exact i32 sum J = sum v q (vpmaddwd on the codes widened to 16 bits: no saturating
//    vpmaddubsw, so every code of either operand, -128 included, is exact), then
//    y += (a * s) * J + c * (s * sum q) in f32.
//
// Loops: gemv (m <= 4: per output an 8-lane dot product straight from W's bytes, up to 4 rows
// of x per decoded weight) and gemm (a panel of 16 columns decoded once, transposed so that a
// vector holds 8 columns, and reused by every row of x: tiles of R rows x 16 columns, x
// broadcast). Order of operations (fixed: results are deterministic and independent of the
// thread count, which splits the columns of y):
//  * exact gemv: lane l of accumulator t (of 4 for m <= 2, else 2) sums in k order the products
//    of the k with k % 32 in [8u + l], u = t mod the accumulators; the accumulators are added
//    ((0 + 1) + (2 + 3)), then the lanes.
//  * exact gemm: per panel of kc = 256 k, a sum in k order from 0 per output; panels added in
//    k order into the f32 accumulator of y (y itself when y is f32).
//  * int8 gemv: per group an i32 J per lane pair, then f32 accumulators (two, alternating
//    chunks for G = 32, one per group parity for G = 16) reduced across lanes, plus the c terms
//    (an 8-lane dot product over the groups).
//  * int8 gemm: per group one f32 update per output, in k order within a panel of kc = 512;
//    panels added in k order.
// Bias and the rounding to y (RNE, once) come last.
//
// Compiled for AVX2 + FMA + F16C; like the AVX-512 translation unit, nothing here has
// external linkage but the entry points (matmul_cpu_avx512.hpp says why).
#include "ops/matmul/matmul_cpu_avx2.hpp"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace lowbit::matmul_cpu::avx2 {
namespace {

using i64 = int64_t;

constexpr int kChunk = 32;     // codes per decoded ymm
constexpr i64 kKcExact = 256;  // k per panel, exact gemm (f32 panel 16 KiB)
constexpr i64 kKcInt8 = 512;   // k per panel, int8 gemm (16-bit code pairs 16 KiB)
constexpr int kCols = 16;      // columns of y per panel and tile
constexpr int kRowsExact = 6;  // rows of x per exact tile (12 f32 accumulators)
constexpr int kRowsInt8 = 3;   // rows of x per int8 tile (6 i32 + 6 f32 accumulators)
constexpr int kGemvRows = 4;   // rows of x per gemv pass

i64 min64(i64 a, i64 b) { return a < b ? a : b; }

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
        // ggml's unpacking of the twelve scale bytes into 8 six-bit scales and mins.
        uint32_t u[4];
        std::memcpy(u, sb + 4, 12);
        constexpr uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
        u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
        const uint32_t aux = u[1] & k1;
        u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
        u[2] = aux;
        u[0] &= k1;
        uint8_t sc[16];
        std::memcpy(sc, u, 16);
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

/// Runs body(i) for i in [0, n) over the OpenMP threads (static split), or inline for few.
template <class Body>
void parallel_rows(i64 n, i64 work, Body&& body) {
  if (n > 1 && work >= (i64{1} << 16) && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) body(i);
  } else {
    for (i64 i = 0; i < n; ++i) body(i);
  }
}

/// Splits [0, n) between the threads in blocks of `unit` and runs body(begin, end).
template <class Body>
void parallel_cols(i64 n, i64 unit, i64 work, Body&& body) {
  const i64 units = (n + unit - 1) / unit;
  int threads = omp_get_max_threads();
  if (work < (i64{1} << 18) || units < 2) threads = 1;
  if (threads > units) threads = static_cast<int>(units);
  if (threads <= 1) {
    body(i64{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const i64 u0 = units * t / nt, u1 = units * (t + 1) / nt;
    if (u1 > u0) body(u0 * unit, min64(n, u1 * unit));
  }
}

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

/// x codes widened to i16 [m, k] (permuted for the 4-bit formats), per group its scale (xs)
/// and, for formats with c terms, scale times the sum of its codes (xsq).
template <int G, bool kPerm, bool kC>
void stage_x16(const XQuantRef& x, i64 m, i64 k, int16_t* xq, float* xs, float* xsq) {
  const i64 ng = k / G;
  parallel_rows(m, m * k, [&](i64 i) {
    int16_t* q = xq + i * k;
    for (i64 c = 0; c < k / kChunk; ++c) {
      const int8_t* src = x_codes(x, i, c);
      for (int h = 0; h < kChunk / G; ++h) {
        int32_t sum = 0;
        for (int e = 0; e < G; ++e) {
          const int v = src[h * G + e];
          sum += v;
          q[c * kChunk + h * G + (kPerm ? staged_pos<G>(e) : e)] = static_cast<int16_t>(v);
        }
        const i64 gi = i * ng + (c * kChunk + h * G) / G;
        const float s = x_scale(x, i, c * kChunk + h * G);
        xs[gi] = s;
        if constexpr (kC) xsq[gi] = s * static_cast<float>(sum);
      }
    }
  });
}

// ---- gemv ---------------------------------------------------------------------------------------

template <class F, int MR>
void gemv_exact_rows(const WeightRef& w, const float* xf, float* out, i64 ldc, i64 r0, i64 r1) {
  constexpr int G = F::kG;
  constexpr int NA = MR <= 2 ? 4 : 2;  // accumulators per row (registers: 16 ymm)
  const i64 K = w.k, ng = K / G;
  alignas(32) float a[16], cc[16];
  for (i64 r = r0; r < r1; ++r) {
    const Row row = row_of(w, r);
    __m256 acc[MR][NA];
    for (int i = 0; i < MR; ++i)
      for (int t = 0; t < NA; ++t) acc[i][t] = _mm256_setzero_ps();
    for (i64 g0 = 0; g0 < ng; g0 += 16) {
      const i64 cnt = min64(16, ng - g0);
      F::params(w, row, g0, cnt, a, cc);
      const i64 c0 = g0 * G / kChunk, c1 = (g0 + cnt) * G / kChunk;
      for (i64 c = c0; c < c1; ++c) {
        const i64 lg = (c - c0) * (kChunk / G);
        __m256 wv[4];
        F::values(row, c, a + lg, cc + lg, wv);
        for (int i = 0; i < MR; ++i) {
          const float* xp = xf + i * K + kChunk * c;
          for (int t = 0; t < 4; ++t)
            acc[i][t % NA] = _mm256_fmadd_ps(_mm256_load_ps(xp + 8 * t), wv[t], acc[i][t % NA]);
        }
      }
    }
    for (int i = 0; i < MR; ++i) {
      __m256 s = _mm256_add_ps(acc[i][0], acc[i][1]);
      if constexpr (NA == 4) s = _mm256_add_ps(s, _mm256_add_ps(acc[i][2], acc[i][3]));
      out[i * ldc + r] = hsum(s);
    }
  }
}

template <class F, int MR>
void gemv_int8_rows(const WeightRef& w, const int16_t* xq, const float* xs, const float* xsq,
                    float* out, i64 ldc, i64 r0, i64 r1) {
  constexpr int G = F::kG;
  const i64 K = w.k, ng = K / G;
  alignas(32) float a[16], cc[16];
  for (i64 r = r0; r < r1; ++r) {
    const Row row = row_of(w, r);
    __m256 acc[MR][2], accc[MR];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = accc[i] = _mm256_setzero_ps();
    for (i64 g0 = 0; g0 < ng; g0 += 16) {
      const i64 cnt = min64(16, ng - g0);
      F::params(w, row, g0, cnt, a, cc);
      const i64 c0 = g0 * G / kChunk, c1 = (g0 + cnt) * G / kChunk;
      // One chunk into acc (two accumulators alternate between chunks for G = 32, so that
      // consecutive FMAs do not wait on each other; G = 16 has one per group of the chunk).
      auto chunk = [&](i64 c, int which) {
        const __m256i v = F::codes(row, c);
        const __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
        const __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1));
        const i64 lg = (c - c0) * (kChunk / G);  // the chunk's first group, local
        for (int i = 0; i < MR; ++i) {
          const int16_t* q = xq + i * K + kChunk * c;
          const __m256i j0 =
              _mm256_madd_epi16(lo, _mm256_load_si256(reinterpret_cast<const __m256i*>(q)));
          const __m256i j1 =
              _mm256_madd_epi16(hi, _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 16)));
          const float* s = xs + i * ng + g0 + lg;
          if constexpr (G == 32) {
            __m256& into = which == 0 ? acc[i][0] : acc[i][1];
            into = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(j0, j1)),
                                   _mm256_set1_ps(a[lg] * s[0]), into);
          } else {
            acc[i][0] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(j0), _mm256_set1_ps(a[lg] * s[0]), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(j1), _mm256_set1_ps(a[lg + 1] * s[1]),
                                        acc[i][1]);
          }
        }
      };
      i64 c = c0;
      for (; c + 1 < c1; c += 2) {
        chunk(c, 0);
        chunk(c + 1, 1);
      }
      if (c < c1) chunk(c, 0);
      if constexpr (F::kC) {
        // Past cnt, cc is 0 and xsq is not read (masked loads).
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cnt)), lane);
        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cnt) - 8), lane);
        for (int i = 0; i < MR; ++i) {
          const float* p = xsq + i * ng + g0;
          accc[i] = _mm256_fmadd_ps(_mm256_load_ps(cc), _mm256_maskload_ps(p, m0), accc[i]);
          accc[i] = _mm256_fmadd_ps(_mm256_load_ps(cc + 8), _mm256_maskload_ps(p + 8, m1), accc[i]);
        }
      }
    }
    for (int i = 0; i < MR; ++i) {
      float v = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
      if constexpr (F::kC) v += hsum(accc[i]);
      out[i * ldc + r] = v;
    }
  }
}

// ---- gemm: panels -------------------------------------------------------------------------------

/// Stores (first panel) or adds 16 accumulator columns into C, nc <= 16 valid.
void flush_tile(float* C, __m256 v0, __m256 v1, i64 nc, bool first) {
  if (nc == kCols) {
    if (!first) {
      v0 = _mm256_add_ps(_mm256_loadu_ps(C), v0);
      v1 = _mm256_add_ps(_mm256_loadu_ps(C + 8), v1);
    }
    _mm256_storeu_ps(C, v0);
    _mm256_storeu_ps(C + 8, v1);
    return;
  }
  alignas(32) float t[kCols];
  _mm256_store_ps(t, v0);
  _mm256_store_ps(t + 8, v1);
  for (i64 j = 0; j < nc; ++j) C[j] = first ? t[j] : C[j] + t[j];
}

/// The f32 weights of columns n0 .. n0 + nc - 1, k in [k0, k0 + kc), as P [kc, 16] (columns
/// past nc are 0); D is scratch [16, kc].
template <class F>
void decode_panel_f32(const WeightRef& w, i64 n0, i64 nc, i64 k0, i64 kc, float* D, float* P) {
  constexpr int G = F::kG;
  alignas(32) float a[16], cc[16];
  for (int j = 0; j < kCols; ++j) {
    float* dst = D + j * kKcExact;
    if (j >= nc) {
      for (i64 e = 0; e < kc; e += 8) _mm256_store_ps(dst + e, _mm256_setzero_ps());
      continue;
    }
    const Row row = row_of(w, n0 + j);
    F::params(w, row, k0 / G, kc / G, a, cc);
    for (i64 c = k0 / kChunk; c < (k0 + kc) / kChunk; ++c) {
      __m256 wv[4];
      const i64 lg = (c * kChunk - k0) / G;
      F::values(row, c, a + lg, cc + lg, wv);
      for (int t = 0; t < 4; ++t) _mm256_store_ps(dst + (c * kChunk - k0) + 8 * t, wv[t]);
    }
  }
  for (int h = 0; h < 2; ++h)
    for (i64 k = 0; k < kc; k += 8) {
      __m256i r[8];
      for (int j = 0; j < 8; ++j)
        r[j] = _mm256_castps_si256(_mm256_load_ps(D + (8 * h + j) * kKcExact + k));
      transpose8(r);
      for (int s = 0; s < 8; ++s)
        _mm256_store_ps(P + (k + s) * kCols + 8 * h, _mm256_castsi256_ps(r[s]));
    }
}

/// R rows of x (f32, row stride ldx, at the panel's first k) times P [kc, 16].
template <int R>
void tile_exact(const float* x, i64 ldx, const float* P, i64 kc, float* C, i64 ldc, i64 nc,
                bool first) {
  __m256 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(P + kCols * k), w1 = _mm256_load_ps(P + kCols * k + 8);
    for (int i = 0; i < R; ++i) {
      const __m256 xb = _mm256_broadcast_ss(x + i * ldx + k);
      acc[i][0] = _mm256_fmadd_ps(xb, w0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(xb, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) flush_tile(C + i * ldc, acc[i][0], acc[i][1], nc, first);
}

/// The codes of columns n0 .. n0 + nc - 1, k in [k0, k0 + kc), as 16-bit pairs Q [kc / 2, 16]
/// (a dword per column holds k and k + 1), with per group A / Cc [kc / G, 16] (columns past
/// nc: 0); D is scratch [16, kc] of 16-bit codes.
template <class F>
void decode_panel_i16(const WeightRef& w, i64 n0, i64 nc, i64 k0, i64 kc, int16_t* D, int32_t* Q,
                      float* A, float* Cc) {
  constexpr int G = F::kG;
  alignas(32) float a[16], cc[16];
  for (int j = 0; j < kCols; ++j) {
    int16_t* dst = D + j * kKcInt8;
    if (j >= nc) {
      for (i64 e = 0; e < kc; e += 16)
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + e), _mm256_setzero_si256());
      for (i64 g = 0; g < kc / G; ++g) A[g * kCols + j] = Cc[g * kCols + j] = 0.0f;
      continue;
    }
    const Row row = row_of(w, n0 + j);
    for (i64 c = k0 / kChunk; c < (k0 + kc) / kChunk; ++c) {
      const __m256i v = F::codes(row, c);
      int16_t* p = dst + (c * kChunk - k0);
      _mm256_store_si256(reinterpret_cast<__m256i*>(p),
                         _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(p + 16),
                         _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
    }
    for (i64 g = 0; g < kc / G; g += 16) {
      const i64 cnt = min64(16, kc / G - g);
      F::params(w, row, k0 / G + g, cnt, a, cc);
      for (i64 e = 0; e < cnt; ++e) {
        A[(g + e) * kCols + j] = a[e];
        Cc[(g + e) * kCols + j] = cc[e];
      }
    }
  }
  for (int h = 0; h < 2; ++h)
    for (i64 p = 0; p < kc / 2; p += 8) {
      __m256i r[8];
      for (int j = 0; j < 8; ++j)
        r[j] =
            _mm256_load_si256(reinterpret_cast<const __m256i*>(D + (8 * h + j) * kKcInt8 + 2 * p));
      transpose8(r);
      for (int s = 0; s < 8; ++s)
        _mm256_store_si256(reinterpret_cast<__m256i*>(Q + (p + s) * kCols + 8 * h), r[s]);
    }
}

/// R rows of staged 16-bit x codes times the decoded panel: per group i32 sums, f32 updates.
template <int R, int G, bool kC>
void tile_int8(const int16_t* xq, i64 ldx, const float* xs, const float* xsq, i64 ldg,
               const int32_t* Q, const float* A, const float* Cc, i64 kc, float* C, i64 ldc, i64 nc,
               bool first) {
  __m256 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (i64 g = 0; g < kc / G; ++g) {
    __m256i J[R][2];
    for (int i = 0; i < R; ++i) J[i][0] = J[i][1] = _mm256_setzero_si256();
    for (int s = 0; s < G / 2; ++s) {
      const i64 p = g * (G / 2) + s;
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(Q + p * kCols));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(Q + p * kCols + 8));
      for (int i = 0; i < R; ++i) {
        int32_t pair;
        std::memcpy(&pair, xq + i * ldx + 2 * p, 4);
        const __m256i xb = _mm256_set1_epi32(pair);
        J[i][0] = _mm256_add_epi32(J[i][0], _mm256_madd_epi16(w0, xb));
        J[i][1] = _mm256_add_epi32(J[i][1], _mm256_madd_epi16(w1, xb));
      }
    }
    const __m256 a0 = _mm256_load_ps(A + g * kCols), a1 = _mm256_load_ps(A + g * kCols + 8);
    for (int i = 0; i < R; ++i) {
      const __m256 sb = _mm256_set1_ps(xs[i * ldg + g]);
      acc[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(J[i][0]), _mm256_mul_ps(a0, sb), acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(J[i][1]), _mm256_mul_ps(a1, sb), acc[i][1]);
    }
    if constexpr (kC) {
      const __m256 c0 = _mm256_load_ps(Cc + g * kCols), c1 = _mm256_load_ps(Cc + g * kCols + 8);
      for (int i = 0; i < R; ++i) {
        const __m256 qb = _mm256_set1_ps(xsq[i * ldg + g]);
        acc[i][0] = _mm256_fmadd_ps(c0, qb, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(c1, qb, acc[i][1]);
      }
    }
  }
  for (int i = 0; i < R; ++i) flush_tile(C + i * ldc, acc[i][0], acc[i][1], nc, first);
}

template <int R>
void tile_exact_rows(int rows, const float* x, i64 ldx, const float* P, i64 kc, float* C, i64 ldc,
                     i64 nc, bool first) {
  if constexpr (R > 1) {
    if (rows < R) return tile_exact_rows<R - 1>(rows, x, ldx, P, kc, C, ldc, nc, first);
  }
  tile_exact<R>(x, ldx, P, kc, C, ldc, nc, first);
}

template <int R, int G, bool kC>
void tile_int8_rows(int rows, const int16_t* xq, i64 ldx, const float* xs, const float* xsq,
                    i64 ldg, const int32_t* Q, const float* A, const float* Cc, i64 kc, float* C,
                    i64 ldc, i64 nc, bool first) {
  if constexpr (R > 1) {
    if (rows < R)
      return tile_int8_rows<R - 1, G, kC>(rows, xq, ldx, xs, xsq, ldg, Q, A, Cc, kc, C, ldc, nc,
                                          first);
  }
  tile_int8<R, G, kC>(xq, ldx, xs, xsq, ldg, Q, A, Cc, kc, C, ldc, nc, first);
}

// ---- the loops ----------------------------------------------------------------------------------

template <class F>
void exact_impl(const WeightRef& w, const XFloatRef& x, i64 m, Path path, float* xf, float* C,
                i64 ldc) {
  const i64 K = w.k, N = w.n;
  stage_xf<F::kG, F::kPerm>(x, m, K, xf);
  if (path == Path::gemv) {
    parallel_cols(N, 16, m * N * K, [&](i64 r0, i64 r1) {
      for (i64 i0 = 0; i0 < m; i0 += kGemvRows) {
        const float* xp = xf + i0 * K;
        float* cp = C + i0 * ldc;
        switch (min64(kGemvRows, m - i0)) {
          case 1:
            gemv_exact_rows<F, 1>(w, xp, cp, ldc, r0, r1);
            break;
          case 2:
            gemv_exact_rows<F, 2>(w, xp, cp, ldc, r0, r1);
            break;
          case 3:
            gemv_exact_rows<F, 3>(w, xp, cp, ldc, r0, r1);
            break;
          default:
            gemv_exact_rows<F, 4>(w, xp, cp, ldc, r0, r1);
            break;
        }
      }
    });
    return;
  }
  parallel_cols(N, kCols, m * N * K, [&](i64 n0, i64 n1) {
    alignas(32) float D[kCols * kKcExact], P[kKcExact * kCols];
    for (i64 k0 = 0; k0 < K; k0 += kKcExact) {
      const i64 kc = min64(kKcExact, K - k0);
      for (i64 s = n0; s < n1; s += kCols) {
        const i64 nc = min64(kCols, n1 - s);
        decode_panel_f32<F>(w, s, nc, k0, kc, D, P);
        for (i64 i0 = 0; i0 < m; i0 += kRowsExact)
          tile_exact_rows<kRowsExact>(static_cast<int>(min64(kRowsExact, m - i0)), xf + i0 * K + k0,
                                      K, P, kc, C + i0 * ldc + s, ldc, nc, k0 == 0);
      }
    }
  });
}

template <class F>
void int8_impl(const WeightRef& w, const XQuantRef& x, i64 m, Path path, const WsLayout& L,
               char* ws, float* C, i64 ldc) {
  constexpr int G = F::kG;
  const i64 K = w.k, N = w.n, ng = K / G;
  auto* xq = reinterpret_cast<int16_t*>(ws + L.xq);
  auto* xs = reinterpret_cast<float*>(ws + L.xs);
  auto* xsq = reinterpret_cast<float*>(ws + L.xsq);
  stage_x16<G, F::kPerm, F::kC>(x, m, K, xq, xs, xsq);
  if (path == Path::gemv) {
    parallel_cols(N, 16, m * N * K, [&](i64 r0, i64 r1) {
      for (i64 i0 = 0; i0 < m; i0 += kGemvRows) {
        const int16_t* q = xq + i0 * K;
        const float* s = xs + i0 * ng;
        const float* sq = xsq + i0 * ng;
        float* cp = C + i0 * ldc;
        switch (min64(kGemvRows, m - i0)) {
          case 1:
            gemv_int8_rows<F, 1>(w, q, s, sq, cp, ldc, r0, r1);
            break;
          case 2:
            gemv_int8_rows<F, 2>(w, q, s, sq, cp, ldc, r0, r1);
            break;
          case 3:
            gemv_int8_rows<F, 3>(w, q, s, sq, cp, ldc, r0, r1);
            break;
          default:
            gemv_int8_rows<F, 4>(w, q, s, sq, cp, ldc, r0, r1);
            break;
        }
      }
    });
    return;
  }
  parallel_cols(N, kCols, m * N * K, [&](i64 n0, i64 n1) {
    alignas(32) int16_t D[kCols * kKcInt8];
    alignas(32) int32_t Q[kKcInt8 / 2 * kCols];
    alignas(32) float A[kKcInt8 / 16 * kCols], Cc[kKcInt8 / 16 * kCols];
    for (i64 k0 = 0; k0 < K; k0 += kKcInt8) {
      const i64 kc = min64(kKcInt8, K - k0);
      for (i64 s = n0; s < n1; s += kCols) {
        const i64 nc = min64(kCols, n1 - s);
        decode_panel_i16<F>(w, s, nc, k0, kc, D, Q, A, Cc);
        for (i64 i0 = 0; i0 < m; i0 += kRowsInt8) {
          const i64 g0 = i0 * ng + k0 / G;
          tile_int8_rows<kRowsInt8, G, F::kC>(static_cast<int>(min64(kRowsInt8, m - i0)),
                                              xq + i0 * K + k0, K, xs + g0, xsq + g0, ng, Q, A, Cc,
                                              kc, C + i0 * ldc + s, ldc, nc, k0 == 0);
        }
      }
    }
  });
}

/// Calls fn(Fmt<...>{}) for w's format, group and c terms.
template <class Fn>
void with_format(const WeightRef& w, Fn&& fn) {
  const bool z = w.affine;
  const bool g16 = w.group == 16;
  switch (w.fmt) {
    case WFmt::i8:
      if (g16) {
        if (z) return fn(Fmt<WFmt::i8, 16, true>{});
        return fn(Fmt<WFmt::i8, 16, false>{});
      }
      if (z) return fn(Fmt<WFmt::i8, 32, true>{});
      return fn(Fmt<WFmt::i8, 32, false>{});
    case WFmt::u8:
      if (g16) return fn(Fmt<WFmt::u8, 16, true>{});
      return fn(Fmt<WFmt::u8, 32, true>{});
    case WFmt::i4:
      if (g16) {
        if (z) return fn(Fmt<WFmt::i4, 16, true>{});
        return fn(Fmt<WFmt::i4, 16, false>{});
      }
      if (z) return fn(Fmt<WFmt::i4, 32, true>{});
      return fn(Fmt<WFmt::i4, 32, false>{});
    case WFmt::u4:
      if (g16) return fn(Fmt<WFmt::u4, 16, true>{});
      return fn(Fmt<WFmt::u4, 32, true>{});
    case WFmt::e4m3:
      if (g16) return fn(Fmt<WFmt::e4m3, 16, false>{});
      return fn(Fmt<WFmt::e4m3, 32, false>{});
    case WFmt::e5m2:
      if (g16) return fn(Fmt<WFmt::e5m2, 16, false>{});
      return fn(Fmt<WFmt::e5m2, 32, false>{});
    case WFmt::nvfp4:
      return fn(Fmt<WFmt::nvfp4, 16, false>{});
    case WFmt::mxfp4:
      return fn(Fmt<WFmt::mxfp4, 32, false>{});
    case WFmt::q4_0:
      return fn(Fmt<WFmt::q4_0, 32, false>{});
    case WFmt::q8_0:
      return fn(Fmt<WFmt::q8_0, 32, false>{});
    case WFmt::q4_K:
      return fn(Fmt<WFmt::q4_K, 32, true>{});
    case WFmt::q6_K:
      return fn(Fmt<WFmt::q6_K, 16, false>{});
  }
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

void run_exact(const WeightRef& w, const XFloatRef& x, const YRef& y, int64_t m, Path path,
               void* workspace) {
  if (m == 0 || w.n == 0) return;
  const WsLayout L = exact_layout(w, m, y, path);
  char* ws = static_cast<char*>(workspace);
  float* C = y.dt == FDt::f32 ? static_cast<float*>(y.data) : reinterpret_cast<float*>(ws + L.c);
  const i64 ldc = y.dt == FDt::f32 ? y.row_stride : w.n;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    exact_impl<F>(w, x, m, path, reinterpret_cast<float*>(ws + L.xf), C, ldc);
  });
  finish(y, m, w.n, C, ldc);
}

void run_int8(const WeightRef& w, const XQuantRef& x, const YRef& y, int64_t m, Path path,
              void* workspace) {
  if (m == 0 || w.n == 0) return;
  const WsLayout L = int8_layout(w, m, y);
  char* ws = static_cast<char*>(workspace);
  float* C = y.dt == FDt::f32 ? static_cast<float*>(y.data) : reinterpret_cast<float*>(ws + L.c);
  const i64 ldc = y.dt == FDt::f32 ? y.row_stride : w.n;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat) int8_impl<F>(w, x, m, path, L, ws, C, ldc);
  });
  finish(y, m, w.n, C, ldc);
}

}  // namespace lowbit::matmul_cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
