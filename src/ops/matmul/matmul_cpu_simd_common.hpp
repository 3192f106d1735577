// What the SIMD matmul kernels of every instruction set share and that does not depend on it:
// the thread splits, the dispatch by rows of x and from a weight's format to the ISA's format
// traits, and q4_K's scale unpacking. Included
// by matmul_cpu_avx512_impl.hpp and matmul_cpu_avx2_impl.hpp after their target pragmas, in an
// anonymous namespace, so that each translation unit compiles its own copy for its own
// instruction set (nothing with external linkage: matmul_cpu_avx512.hpp says why).
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstring>

#include "ops/matmul/matmul_cpu_avx512.hpp"

namespace lowbit::matmul_cpu {
namespace {

using i64 = int64_t;

i64 min64(i64 a, i64 b) { return a < b ? a : b; }

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

/// A number of rows of x known at compile time (what with_rows passes).
template <int N>
struct RowCount {
  static constexpr int value = N;
};

/// fn(RowCount<r>{}) with r = min(n, kMax) (n >= 1): the loops instantiated per row count.
template <int kMax, class Fn>
void with_rows(i64 n, Fn&& fn) {
  if constexpr (kMax > 1) {
    if (n < kMax) return with_rows<kMax - 1>(n, fn);
  }
  fn(RowCount<kMax>{});
}

/// ggml's unpacking of a q4_K super-block's twelve scale bytes (at sb + 4) into its 8 six-bit
/// scales (out[0..7]) and mins (out[8..15]).
void q4k_scales_mins(const uint8_t* sb, uint8_t out[16]) {
  uint32_t u[4];
  std::memcpy(u, sb + 4, 12);
  constexpr uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
  u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
  const uint32_t aux = u[1] & k1;
  u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
  u[2] = aux;
  u[0] &= k1;
  std::memcpy(out, u, 16);
}

/// Calls fn(Fmt<format, G, c terms>{}) for w's format, parameter group and c terms, with the
/// instruction set's format traits Fmt.
template <template <WFmt, int, bool> class Fmt, class Fn>
void dispatch_format(const WeightRef& w, Fn&& fn) {
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

}  // namespace
}  // namespace lowbit::matmul_cpu
