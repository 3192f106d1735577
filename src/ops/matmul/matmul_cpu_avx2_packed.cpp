// The AVX2 int8-activation kernel on a prepared layout, `cpu_avx2_x8`: W's rows interleaved in
// strips of 8, so that one ymm holds consecutive k of 8 outputs, x is broadcast, and a group's
// scale reaches 8 outputs with one FMA. (On the plain layout every output is its own 8-lane dot
// product, with its own per-group scalars and a horizontal sum: about 35 instructions per 32
// weights on Zen 4; here about 5.)
//
// Layout: a 64-byte header (magic, format, n, k, nvfp4's global scale), then strips of 8 rows of W
// (rows past n are zero), each strip the same number of bytes: per parameter group of G k (in the
// staged order of matmul_cpu_avx2.cpp: the lowbit 4-bit formats' evens, then odds, per group):
//  * codes, 32 bytes per step, a dword per row:
//      4-bit formats (int4, uint4, q4_0, q4_K, nvfp4, mxfp4): 8 k per step; byte b of a row's
//        dword holds k + b in its low nibble and k + 4 + b in its high one, as n = v + o
//        (o = 8 for int4 and q4_0, 0 for uint4 and q4_K) or, for e2m1, the e2m1 code (a
//        16-entry table gives 2 e2m1 + 12);
//      q6_K: 4 k per step, a byte u = v + 32 (0..63) per code;
//      8-bit formats (int8, uint8, q8_0): 4 k per step, the signed byte v;
//  * a[8] (f32, one per row; f16 where a is an f16 value: q4_0, q8_0, symmetric int4 / int8
//    with f16 scales; nvfp4 / mxfp4: the rows' e4m3 / e8m0 scale bytes, nvfp4's global scale
//    in the header), then c[8] for formats with c terms (w = a v + c); q4_K instead
//    keeps GGUF's compact form: per super-block of 8 groups the rows' f16 d, then f16 dmin (32
//    bytes, before the super-block's first group), per group the rows' six-bit scales, then
//    mins, as bytes (16 bytes), turned into a and c by 4 vector operations per group.
// Sizes: q4_0 and int4:block32 with f16 scales 4.5 bits per weight (as GGUF's q4_0), with f32
// scales 5, q4_K 4.6 (4.5), nvfp4 4.5 (4.5), mxfp4 4.25 (4.25), q6_K 10 (6.56), q8_0 8.5 (8.5),
// other 8-bit formats 9: the f32 parameters and q6_K's byte codes trade size for a decode of
// a few instructions.
//
// Arithmetic: per group and output the exact i32 J = sum v q, formed as sum u q - o sum q
// with vpmaddubsw (u unsigned, q signed) + vpmaddwd by ones; its 16-bit pair sums cannot
// saturate: 4-bit u <= 24 (two steps' sums <= 12288), q6_K u <= 63 (<= 16128); 8-bit codes go
// through the sign trick (|v| times q with v's sign, |v| <= 128), exact only when no x code is
// -128: a call whose x holds one runs the plain-layout kernel instead (same results up to f32
// rounding order; both exact in J). Then y += (a s) J + c (s sum q) in f32, per group in k
// order. Rows of x are taken 8 at a time (W is read once per 8 rows; 4 at a time was 1.2-1.45x
// slower at M = 16): with 4-bit and q6_K codes this beat the plain kernel's panels up to M =
// 512; with 8-bit codes select() sends M > 16 to the plain kernel.
#include <omp.h>

#include <cstdint>
#include <cstring>

#include "ops/matmul/matmul_cpu_avx2.hpp"

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
#define LOWBIT_MATMUL_CPU_AVX2_TARGET 1

#include "ops/matmul/matmul_cpu_avx2_impl.hpp"

namespace lowbit::matmul_cpu::avx2 {
namespace {

constexpr uint32_t kMagic = 0x3258424Cu;  // "LBX2"
constexpr int kStripRows = 8;
constexpr i64 kHeader = 64;
constexpr int kPackedRows = 8;  // rows of x per pass over W

enum class Kind { k4, k6, k8 };

template <class F>
constexpr Kind kind_of() {
  if constexpr (F::kFmt == WFmt::q6_K) return Kind::k6;
  if constexpr (F::kFmt == WFmt::i8 || F::kFmt == WFmt::u8 || F::kFmt == WFmt::q8_0)
    return Kind::k8;
  return Kind::k4;
}

/// The offset o of u = v + o (4-bit formats' nibbles, q6_K's bytes).
template <class F>
constexpr int offset_of() {
  switch (F::kFmt) {
    case WFmt::i4:
    case WFmt::q4_0:
      return 8;
    case WFmt::nvfp4:
    case WFmt::mxfp4:
      return 12;
    case WFmt::q6_K:
      return 32;
    default:
      return 0;
  }
}

constexpr bool is_e2m1(WFmt f) { return f == WFmt::nvfp4 || f == WFmt::mxfp4; }

// nibble -> 2 e2m1 + 12 (the e2m1 code's doubled value plus the offset).
alignas(16) constexpr uint8_t kTabE2M1u[16] = {12, 13, 14, 15, 16, 18, 20, 24,
                                               12, 11, 10, 9,  8,  6,  4,  0};

/// q4_K keeps its parameters compact: per super-block of 8 groups the rows' f16 d and dmin (32
/// bytes), per group the rows' six-bit scales and mins as bytes (16 bytes).
template <class F>
constexpr bool kCompactQ4K = F::kFmt == WFmt::q4_K;
constexpr i64 kQ4KHeader = 32;

/// Whether a group's a is stored as f16 (8 x 2 bytes): where it is an f16 value (GGUF's d,
/// symmetric integer formats with f16 scales), so the conversion is exact.
template <class F>
bool half_a(const WeightRef& w) {
  if constexpr (F::kFmt == WFmt::q4_0 || F::kFmt == WFmt::q8_0) return true;
  if constexpr ((F::kFmt == WFmt::i4 || F::kFmt == WFmt::i8) && !F::kC)
    return w.scale_dt == FDt::f16;
  return false;
}

template <class F>
i64 group_bytes(bool half) {
  const i64 codes = kind_of<F>() == Kind::k4 ? F::kG * kStripRows / 2 : F::kG * kStripRows;
  if constexpr (kCompactQ4K<F>) return codes + 16;
  if constexpr (is_e2m1(F::kFmt)) return codes + 8;  // the rows' e4m3 / e8m0 scale bytes
  return codes + (half ? 16 : 32 * (F::kC ? 2 : 1));
}

/// Where group g's codes start in a strip.
template <class F>
i64 group_offset(i64 g, bool half) {
  if constexpr (kCompactQ4K<F>) return (g / 8 + 1) * kQ4KHeader + g * group_bytes<F>(half);
  return g * group_bytes<F>(half);
}

template <class F>
i64 strip_bytes(const WeightRef& w) {
  return group_offset<F>(w.k / F::kG, half_a<F>(w));
}

/// The nibble of v for the 4-bit formats (e2m1: its code, found in the doubled-value table).
template <class F>
uint8_t nibble_of(int v) {
  if constexpr (is_e2m1(F::kFmt)) {
    for (int n = 0; n < 16; ++n)
      if (kTabE2M1x2[n] == v) return static_cast<uint8_t>(n);
    return 0;
  } else {
    return static_cast<uint8_t>(v + offset_of<F>());
  }
}

template <class F>
void pack_strip(const WeightRef& w, i64 s, uint8_t* dst) {
  constexpr int G = F::kG;
  constexpr Kind kK = kind_of<F>();
  const i64 K = w.k, ng = K / G;
  const bool half = half_a<F>(w);
  alignas(32) float a[kStripRows][16], c[kStripRows][16];
  alignas(32) int8_t v[kStripRows][kChunk];
  Row rows[kStripRows];
  int live = 0;
  for (int j = 0; j < kStripRows; ++j)
    if (s * kStripRows + j < w.n) {
      rows[j] = row_of(w, s * kStripRows + j);
      live = j + 1;
    }
  for (i64 g0 = 0; g0 < ng; g0 += 16) {
    const i64 cnt = min64(16, ng - g0);
    for (int j = 0; j < kStripRows; ++j) {
      if (j < live) {
        F::params(w, rows[j], g0, cnt, a[j], c[j]);
      } else {
        for (int e = 0; e < 16; ++e) a[j][e] = c[j][e] = 0.0f;
      }
    }
    for (i64 ch = g0 * G / kChunk; ch < (g0 + cnt) * G / kChunk; ++ch) {
      for (int j = 0; j < kStripRows; ++j) {
        if (j < live) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(v[j]), F::codes(rows[j], ch));
        } else {
          // A missing row: the code of v = 0 (its a and c are 0 anyway).
          for (int e = 0; e < kChunk; ++e) v[j][e] = 0;
        }
      }
      for (int h = 0; h < kChunk / G; ++h) {
        const i64 g = ch * (kChunk / G) + h;
        uint8_t* out = dst + group_offset<F>(g, half);
        if constexpr (kCompactQ4K<F>) {
          if (g % 8 == 0)  // the super-block's d and dmin, f16 as stored
            for (int j = 0; j < kStripRows; ++j) {
              const uint8_t* sb = j < live ? rows[j].codes + (g / 8) * 144 : nullptr;
              for (int b = 0; b < 2; ++b) {
                out[-kQ4KHeader + 2 * j + b] = sb ? sb[b] : 0;
                out[-kQ4KHeader + 16 + 2 * j + b] = sb ? sb[2 + b] : 0;
              }
            }
        }
        const int8_t* base = nullptr;
        if constexpr (kK == Kind::k4) {
          for (int t = 0; t < G / 8; ++t)
            for (int j = 0; j < kStripRows; ++j)
              for (int b = 0; b < 4; ++b) {
                base = v[j] + h * G + 8 * t;
                out[t * 32 + 4 * j + b] =
                    static_cast<uint8_t>(nibble_of<F>(base[b]) | (nibble_of<F>(base[4 + b]) << 4));
              }
          out += G * kStripRows / 2;
        } else {
          for (int t = 0; t < G / 4; ++t)
            for (int j = 0; j < kStripRows; ++j)
              for (int b = 0; b < 4; ++b) {
                const int x = v[j][h * G + 4 * t + b];
                out[t * 32 + 4 * j + b] =
                    static_cast<uint8_t>(kK == Kind::k6 ? x + offset_of<F>() : x);
              }
          out += G * kStripRows;
        }
        if constexpr (kCompactQ4K<F>) {
          for (int j = 0; j < kStripRows; ++j) {
            uint8_t sm[16] = {};
            if (j < live) q4k_scales_mins(rows[j].codes + (g / 8) * 144, sm);
            out[j] = sm[g % 8];
            out[8 + j] = sm[8 + g % 8];
          }
        } else if constexpr (is_e2m1(F::kFmt)) {
          for (int j = 0; j < kStripRows; ++j)
            out[j] = j < live ? static_cast<const uint8_t*>(
                                    w.scale)[rows[j].sbase + (g * G) / w.scale_col_div]
                              : 0;
        } else if (half) {
          for (int j = 0; j < kStripRows; ++j) {
            const uint16_t h16 = _cvtss_sh(a[j][g - g0], _MM_FROUND_TO_NEAREST_INT);  // exact
            std::memcpy(out + 2 * j, &h16, 2);
          }
        } else {
          float fa[kStripRows], fc[kStripRows];
          for (int j = 0; j < kStripRows; ++j) {
            fa[j] = a[j][g - g0];
            fc[j] = c[j][g - g0];
          }
          std::memcpy(out, fa, 32);
          if constexpr (F::kC) std::memcpy(out + 32, fc, 32);
        }
      }
    }
  }
}

struct Header {
  uint32_t magic;
  uint32_t format;
  int64_t n, k;
  float global;  ///< nvfp4's global scale
};

int32_t load_dword(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

/// Strips [s0, s1) for MR rows of staged x: y rows i (ldc apart) at columns 8 s.
template <class F, int MR>
void strips_rows(const WeightRef& w, const uint8_t* packed, const int8_t* xq, const int32_t* xsum,
                 const float* xs, const float* xsq, float* out, i64 ldc, i64 s0, i64 s1) {
  constexpr int G = F::kG;
  constexpr Kind kK = kind_of<F>();
  constexpr int o = offset_of<F>();
  const i64 K = w.k, ng = K / G, sb = strip_bytes<F>(w);
  const bool half = half_a<F>(w);
  Header h;
  std::memcpy(&h, packed, sizeof h);
  const __m256 global = _mm256_set1_ps(h.global);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i tab =
      _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kTabE2M1u)));
  for (i64 s = s0; s < s1; ++s) {
    const uint8_t* p = packed + kHeader + s * sb;
    __m256 acc[MR];
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
    __m256 d = _mm256_setzero_ps(), dmin = _mm256_setzero_ps();  // q4_K's super-block
    for (i64 g = 0; g < ng; ++g) {
      if constexpr (kCompactQ4K<F>) {
        if (g % 8 == 0) {
          d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
          dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
          p += kQ4KHeader;
        }
      }
      __m256i J[MR];
      for (int i = 0; i < MR; ++i) J[i] = _mm256_setzero_si256();
      const i64 k0 = g * G;
      if constexpr (kK == Kind::k4) {
        for (int t = 0; t < G / 8; ++t) {
          const __m256i cv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
          __m256i lo = _mm256_and_si256(cv, low4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(cv, 4), low4);
          if constexpr (is_e2m1(F::kFmt)) {
            lo = _mm256_shuffle_epi8(tab, lo);
            hi = _mm256_shuffle_epi8(tab, hi);
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* xp = xq + i * K + k0 + 8 * t;
            const __m256i x0 = _mm256_set1_epi32(load_dword(xp));
            const __m256i x1 = _mm256_set1_epi32(load_dword(xp + 4));
            const __m256i pair =
                _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
            J[i] = _mm256_add_epi32(J[i], _mm256_madd_epi16(pair, ones));
          }
        }
        p += G * kStripRows / 2;
      } else {
        for (int t = 0; t < G / 4; ++t) {
          const __m256i cv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
          const __m256i av = kK == Kind::k8 ? _mm256_abs_epi8(cv) : cv;
          for (int i = 0; i < MR; ++i) {
            __m256i xb = _mm256_set1_epi32(load_dword(xq + i * K + k0 + 4 * t));
            if constexpr (kK == Kind::k8) xb = _mm256_sign_epi8(xb, cv);
            J[i] = _mm256_add_epi32(J[i], _mm256_madd_epi16(_mm256_maddubs_epi16(av, xb), ones));
          }
        }
        p += G * kStripRows;
      }
      __m256 a, c;
      if constexpr (kCompactQ4K<F>) {
        // ggml: d1 = d * sc, m1 = dmin * m, value = d1 * q - m1 (as params() computes them).
        const __m128i sm = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        a = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)));
        c = _mm256_xor_ps(
            _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)))),
            _mm256_set1_ps(-0.0f));
        p += 16;
      } else if constexpr (is_e2m1(F::kFmt)) {
        // As params(): nvfp4 a = (e4m3 * global) / 2, mxfp4 a = 2^(e - 127) / 2.
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        if constexpr (F::kFmt == WFmt::nvfp4) {
          a = _mm256_mul_ps(
              _mm256_mul_ps(_mm256_mul_ps(e4m3_div256(b), _mm256_set1_ps(256.0f)), global),
              _mm256_set1_ps(0.5f));
        } else {
          const __m256i e = _mm256_cvtepu8_epi32(b);
          __m256i bits = _mm256_slli_epi32(e, 23);
          bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x00400000),
                                    _mm256_cmpeq_epi32(e, _mm256_setzero_si256()));
          bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7FC00000),
                                    _mm256_cmpeq_epi32(e, _mm256_set1_epi32(255)));
          a = _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0.5f));
        }
        c = a;
        p += 8;
      } else if (half) {
        c = a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        p += 16;
      } else {
        a = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
        c = F::kC ? _mm256_loadu_ps(reinterpret_cast<const float*>(p + 32)) : a;
        p += F::kC ? 64 : 32;
      }
      for (int i = 0; i < MR; ++i) {
        const i64 gi = i * ng + g;
        __m256i j = J[i];
        if constexpr (o != 0) j = _mm256_sub_epi32(j, _mm256_set1_epi32(o * xsum[gi]));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(j), _mm256_mul_ps(a, _mm256_set1_ps(xs[gi])),
                                 acc[i]);
      }
      if constexpr (F::kC)
        for (int i = 0; i < MR; ++i)
          acc[i] = _mm256_fmadd_ps(c, _mm256_set1_ps(xsq[i * ng + g]), acc[i]);
    }
    const i64 cols = min64(kStripRows, w.n - s * kStripRows);
    for (int i = 0; i < MR; ++i) {
      float* dst = out + i * ldc + s * kStripRows;
      if (cols == kStripRows) {
        _mm256_storeu_ps(dst, acc[i]);
      } else {
        alignas(32) float t[kStripRows];
        _mm256_store_ps(t, acc[i]);
        for (i64 j = 0; j < cols; ++j) dst[j] = t[j];
      }
    }
  }
}

template <class F>
bool packed_impl(const WeightRef& w, const uint8_t* packed, const XQuantRef& x, i64 m,
                 const WsLayout& L, char* ws, float* C, i64 ldc) {
  constexpr int G = F::kG;
  const i64 K = w.k, ng = K / G;
  auto* xq = reinterpret_cast<int8_t*>(ws + L.xq);
  auto* xsum = reinterpret_cast<int32_t*>(ws + L.init);
  auto* xs = reinterpret_cast<float*>(ws + L.xs);
  auto* xsq = reinterpret_cast<float*>(ws + L.xsq);
  const bool has_min = stage_xq<G, F::kPerm, F::kC>(x, m, K, xq, xsum, xs, xsq);
  if (kind_of<F>() == Kind::k8 && has_min) return false;
  const i64 strips = (w.n + kStripRows - 1) / kStripRows;
  parallel_cols(strips, 1, m * w.n * K, [&](i64 s0, i64 s1) {
    for (i64 i0 = 0; i0 < m; i0 += kPackedRows) {
      const int8_t* q = xq + i0 * K;
      const int32_t* su = xsum + i0 * ng;
      const float* sc = xs + i0 * ng;
      const float* sq = xsq + i0 * ng;
      float* cp = C + i0 * ldc;
      with_rows<kPackedRows>(m - i0, [&](auto r) {
        strips_rows<F, decltype(r)::value>(w, packed, q, su, sc, sq, cp, ldc, s0, s1);
      });
    }
  });
  return true;
}

}  // namespace

WsLayout packed_layout(const WeightRef& w, int64_t m, const YRef& y) {
  auto align64 = [](size_t v) { return (v + 63) & ~size_t{63}; };
  WsLayout L;
  const size_t per_group = align64(static_cast<size_t>(m * (w.k / w.group)) * 4);
  L.xq = 0;
  L.init = align64(static_cast<size_t>(m * w.k));
  L.xs = L.init + per_group;
  L.xsq = L.xs + per_group;
  L.c = L.xsq + per_group;
  L.total = L.c + (y.dt == FDt::f32 ? 0 : align64(static_cast<size_t>(m * w.n) * 4));
  return L;
}

size_t packed_bytes(const WeightRef& w) {
  size_t strip = 0;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat) strip = static_cast<size_t>(strip_bytes<F>(w));
  });
  return static_cast<size_t>(kHeader) +
         static_cast<size_t>((w.n + kStripRows - 1) / kStripRows) * strip;
}

void pack_weight(const WeightRef& w, void* packed) {
  auto* dst = static_cast<uint8_t*>(packed);
  std::memset(dst, 0, kHeader);
  const Header h{kMagic, static_cast<uint32_t>(w.fmt), w.n, w.k, w.global};
  std::memcpy(dst, &h, sizeof h);
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat) {
      const i64 strips = (w.n + kStripRows - 1) / kStripRows, sb = strip_bytes<F>(w);
#pragma omp parallel for schedule(static)
      for (i64 s = 0; s < strips; ++s) pack_strip<F>(w, s, dst + kHeader + s * sb);
    }
  });
}

bool packed_header_matches(const WeightRef& w, const void* packed) {
  Header h;
  std::memcpy(&h, packed, sizeof h);
  return h.magic == kMagic && h.format == static_cast<uint32_t>(w.fmt) && h.n == w.n && h.k == w.k;
}

bool run_int8_packed(const WeightRef& w, const void* packed, const XQuantRef& x, const YRef& y,
                     int64_t m, void* workspace) {
  if (m == 0 || w.n == 0) return true;
  const WsLayout L = packed_layout(w, m, y);
  char* ws = static_cast<char*>(workspace);
  float* C = y.dt == FDt::f32 ? static_cast<float*>(y.data) : reinterpret_cast<float*>(ws + L.c);
  const i64 ldc = y.dt == FDt::f32 ? y.row_stride : w.n;
  bool ran = true;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat)
      ran = packed_impl<F>(w, static_cast<const uint8_t*>(packed), x, m, L, ws, C, ldc);
  });
  if (ran) finish(y, m, w.n, C, ldc);
  return ran;
}

}  // namespace lowbit::matmul_cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
