// AVX-512 CPU matmul kernels, y[m, n] = x[m, k] . dequant(W)[n, k]^T, W in its plain layout.
//
// Every format but fp8 is read as small integer code values v (|v| <= 128) with, per
// parameter group of G = 16 or 32 consecutive k, w = a * v + c (c: zero points, K-quant
// mins; 0 for symmetric formats). A decoder per format turns 64 consecutive codes of one row
// into one zmm of bytes u = v + 128 (the unsigned operand of vpdpbusd), and 16 groups of one
// row into the vectors a and c. Two paths consume them:
//
//  * exact (float x): w = v * a (+ c) in f32, then f32 FMAs. x is read as f32 (f16 / bf16
//    widened exactly). Accumulators are f32, in a fixed order (below).
//  * int8 (x quantized to int8 codes q with scales s per group): per group and output an
//    exact i32 sum J = sum (u - 128) q = sum v q (vpdpbusd, started at -128 * sum q), then
//    y += (a * s) * J + c * (s * sum q) in f32.
//
// Each path has two loops: gemv (few rows of x: per output a 16-lane dot product along k,
// straight from W's bytes) and gemm (W decoded once per panel of 32 columns x kc, transposed
// so that a vector holds 16 columns, and reused by every row of x: R rows x 32 columns of
// accumulators in registers, x broadcast).
//
// Order of operations (fixed, so results are deterministic and independent of the thread
// count; threads split the columns of y):
//  * exact gemv: lane l of 4 accumulators per row sums, in k order, the products of the k
//    with k % 64 in [16t + l] (t = accumulator); then ((acc0 + acc1) + (acc2 + acc3)) is
//    reduced across lanes by _mm512_reduce_add_ps.
//  * exact gemm: per panel of kc = 256 k, a sum in k order from 0; panels added in k order
//    into the f32 accumulator of y (which is y itself when y is f32).
//  * int8 gemv: per lane (4 codes) i32 sums per 64 k, f32 accumulators (2 alternating, per 64
//    k), reduced like exact gemv, plus the c terms (a 16-lane dot product over the groups).
//  * int8 gemm: per group f32 updates in k order within a panel of kc = 512; panels added
//    in k order.
// Bias and the rounding to y (RNE, once) come last.
//
// Layout of x within a group for the lowbit 4-bit formats (int4, uint4, nvfp4, mxfp4: two
// codes per byte, low nibble first): a 16-byte load holds G = 32 codes as 16 low and 16 high
// nibbles, so x is staged permuted to match: per group of G, the even elements then the odd
// ones (G = 16: per 16). GGUF blocks and 8-bit codes need no permutation.
//
// Compiled for AVX-512 F/BW/DQ/VL + VNNI; see matmul_cpu_avx512.hpp for why nothing here has
// external linkage but the entry points.
#include "ops/matmul/matmul_cpu_avx512.hpp"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns inside its own intrinsics (_mm512_undefined_* is a self-initialised variable).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(                                                                    \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c,bmi2"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c,bmi2")
#endif
#define LOWBIT_MATMUL_CPU_AVX512_TARGET 1

#include "ops/matmul/matmul_cpu_avx512_impl.hpp"

namespace lowbit::matmul_cpu {
namespace {

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
  parallel_cols(N, 32, m * N * K, [&](i64 n0, i64 n1) {
    alignas(64) uint8_t T[kKcExact * 32];
    alignas(64) float A[kKcExact / 16 * 32], Cc[kKcExact / 16 * 32];
    alignas(64) float P[kKcExact * 32];
    for (i64 k0 = 0; k0 < K; k0 += kKcExact) {
      const i64 kc = min64(kKcExact, K - k0);
      for (i64 s = n0; s < n1; s += 32) {
        const i64 nc = min64(32, n1 - s);
        decode_panel<F>(w, s, nc, k0, kc, T, A, Cc);
        expand_panel<F>(T, A, Cc, kc, P);
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
  auto* xq = reinterpret_cast<int8_t*>(ws + L.xq);
  auto* init = reinterpret_cast<int32_t*>(ws + L.init);
  auto* xs = reinterpret_cast<float*>(ws + L.xs);
  auto* xsq = reinterpret_cast<float*>(ws + L.xsq);
  stage_x8<G, F::kPerm, F::kC>(x, m, K, path, xq, init, xs, xsq);
  if (path == Path::gemv) {
    parallel_cols(N, 16, m * N * K, [&](i64 r0, i64 r1) {
      for (i64 i0 = 0; i0 < m; i0 += kGemvRows) {
        const int8_t* q = xq + i0 * K;
        const int32_t* in = init + i0 * (K / 4);
        const float* s = xs + i0 * (K / 4);
        const float* sq = xsq + i0 * ng;
        float* cp = C + i0 * ldc;
        with_rows<kGemvRows>(m - i0, [&](auto r) {
          gemv_int8_rows<F, decltype(r)::value>(w, q, in, s, sq, cp, ldc, r0, r1);
        });
      }
    });
    return;
  }
  parallel_cols(N, 32, m * N * K, [&](i64 n0, i64 n1) {
    alignas(64) uint8_t T[kKcInt8 * 32];
    alignas(64) float A[kKcInt8 / 16 * 32], Cc[kKcInt8 / 16 * 32];
    for (i64 k0 = 0; k0 < K; k0 += kKcInt8) {
      const i64 kc = min64(kKcInt8, K - k0);
      for (i64 s = n0; s < n1; s += 32) {
        const i64 nc = min64(32, n1 - s);
        decode_panel<F>(w, s, nc, k0, kc, T, A, Cc);
        for (i64 i0 = 0; i0 < m; i0 += kRowsInt8) {
          const i64 g0 = i0 * ng + k0 / G;
          with_rows<kRowsInt8>(m - i0, [&](auto r) {
            tile_int8<decltype(r)::value, G, F::kC>(xq + i0 * K + k0, K, init + g0, xs + g0,
                                                    xsq + g0, ng, T, A, Cc, kc, C + i0 * ldc + s,
                                                    ldc, nc, k0 == 0);
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
  const WsLayout L = int8_layout(w, m, y, path);
  char* ws = static_cast<char*>(workspace);
  float* C = y.dt == FDt::f32 ? static_cast<float*>(y.data) : reinterpret_cast<float*>(ws + L.c);
  const i64 ldc = y.dt == FDt::f32 ? y.row_stride : w.n;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat) int8_impl<F>(w, x, m, path, L, ws, C, ldc);
  });
  finish(y, m, w.n, C, ldc);
}

}  // namespace lowbit::matmul_cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
