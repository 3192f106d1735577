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
#define LOWBIT_MATMUL_CPU_AVX2_TARGET 1

#include "ops/matmul/matmul_cpu_avx2_impl.hpp"

namespace lowbit::matmul_cpu::avx2 {
namespace {
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
        with_rows<kGemvRows>(m - i0, [&](auto r) {
          gemv_exact_rows<F, decltype(r)::value>(w, xp, cp, ldc, r0, r1);
        });
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
          with_rows<kRowsExact>(m - i0, [&](auto r) {
            tile_exact<decltype(r)::value>(xf + i0 * K + k0, K, P, kc, C + i0 * ldc + s, ldc, nc,
                                           k0 == 0);
          });
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
  stage_xq<G, F::kPerm, F::kC>(x, m, K, xq, nullptr, xs, xsq);
  if (path == Path::gemv) {
    parallel_cols(N, 16, m * N * K, [&](i64 r0, i64 r1) {
      for (i64 i0 = 0; i0 < m; i0 += kGemvRows) {
        const int16_t* q = xq + i0 * K;
        const float* s = xs + i0 * ng;
        const float* sq = xsq + i0 * ng;
        float* cp = C + i0 * ldc;
        with_rows<kGemvRows>(m - i0, [&](auto r) {
          gemv_int8_rows<F, decltype(r)::value>(w, q, s, sq, cp, ldc, r0, r1);
        });
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
          with_rows<kRowsInt8>(m - i0, [&](auto r) {
            tile_int8<decltype(r)::value, G, F::kC>(xq + i0 * K + k0, K, xs + g0, xsq + g0, ng, Q,
                                                    A, Cc, kc, C + i0 * ldc + s, ldc, nc, k0 == 0);
          });
        }
      }
    }
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
