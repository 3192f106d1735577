// The two unfused passes of the SIMD quantize kernel (quantize_simd.cpp), for Highway's
// foreach_target pattern: the statistics pass (per-group maxima of a run, of flat chunks, of
// columns) and the code pass (codes from parameters already computed). The including file
// turns FMA contraction off.
#if defined(LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_PASSES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_PASSES_INL_H_
#undef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_PASSES_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_PASSES_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>

#include "cpu/quant_simd-inl.h"
#include "cpu/quant_simd.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/quantize/quantize_simd_elements-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Fmt;
using lowbit::quant_simd::GroupParams;
using lowbit::quant_simd::QCall;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- statistics ---------------------------------------------------------------------------

/// Maxima of a run as non-negative float bit patterns: |x| (symmetric) or max(0, x) and
/// max(0, -x) (affine; |x| is the larger of the two). Signed integer maxima from 0: a
/// negative x's pattern is a negative integer and never wins, and x's pattern with the
/// sign flipped is -x's.
struct RunMax {
  uint32_t amax = 0, hi = 0, neglo = 0;
};

template <Dtype S, bool kAffine>
HWY_INLINE RunMax RunStats(const void* src, int64_t e, int64_t len) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  VI a0 = hn::Zero(di), a1 = hn::Zero(di), n0 = hn::Zero(di), n1 = hn::Zero(di);
  auto acc = [&](VF x, VI& a, VI& nl) {
    if constexpr (kAffine) {
      const VI b = hn::BitCast(di, x);
      a = hn::Max(a, b);
      nl = hn::Max(nl, hn::Xor(b, sign));
    } else {
      a = hn::Max(a, AbsBits(x));
    }
  };
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    acc(LoadSrc<S>(df, src, e + i), a0, n0);
    acc(LoadSrc<S>(df, src, e + i + N), a1, n1);
  }
  for (; i + N <= len; i += N) acc(LoadSrc<S>(df, src, e + i), a0, n0);
  if (i < len) acc(LoadSrcPartial<S>(df, src, e + i, len - i), a1, n1);
  RunMax r;
  if constexpr (kAffine) {
    r.hi = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(a0, a1))));
    r.neglo = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(n0, n1))));
    r.amax = std::max(r.hi, r.neglo);
  } else {
    r.amax = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(a0, a1))));
  }
  return r;
}

template <Dtype S, bool kAffine>
void StatsChunk(const QCall& q, int64_t e0, int64_t e1) {
  ForEachRun(q.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    const RunMax r = RunStats<S, kAffine>(q.src, e, len);
    if (r.amax >= kNonFinite) NonFinite(q);
    lowbit::quant_simd::atomic_max(q.amax + g, r.amax);
    if constexpr (kAffine) {
      lowbit::quant_simd::atomic_max(q.hi + g, r.hi);
      lowbit::quant_simd::atomic_max(q.neglo + g, r.neglo);
    }
  });
}

/// Columns [c0, c1) of the period over every row: elementwise maxima into q.amax / q.hi /
/// q.neglo (indexed by column; this thread owns those columns).
template <Dtype S, bool kAffine>
void StatsCols(const QCall& q, int64_t c0, int64_t c1) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t P = q.L.period;
  const int64_t rows = P > 0 ? q.L.n / P : 0;
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  auto* am = reinterpret_cast<int32_t*>(q.amax);
  auto* hi = reinterpret_cast<int32_t*>(q.hi);
  auto* nl = reinterpret_cast<int32_t*>(q.neglo);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * P;
    int64_t c = c0;
    for (; c + N <= c1; c += N) {
      const VF x = LoadSrc<S>(df, q.src, base + c);
      hn::StoreU(hn::Max(hn::LoadU(di, am + c), AbsBits(x)), di, am + c);
      if constexpr (kAffine) {
        const VI b = hn::BitCast(di, x);
        hn::StoreU(hn::Max(hn::LoadU(di, hi + c), b), di, hi + c);
        hn::StoreU(hn::Max(hn::LoadU(di, nl + c), hn::Xor(b, sign)), di, nl + c);
      }
    }
    for (; c < c1; ++c) {
      const float x = convert_detail::load_f32(q.src, S, base + c);
      const int32_t b = static_cast<int32_t>(lowbit::quant_simd::bits_of(x));
      am[c] = std::max(am[c], b & 0x7fffffff);
      if constexpr (kAffine) {
        hi[c] = std::max(hi[c], b);
        nl[c] = std::max(nl[c], static_cast<int32_t>(static_cast<uint32_t>(b) ^ 0x80000000u));
      }
    }
  }
}

// ---- passes ---------------------------------------------------------------------------------

template <Dtype S, Fmt F>
void CodesChunk(const QCall& q, int64_t e0, int64_t e1) {
  VI amax = hn::Zero(DI());
  HWY_ALIGN uint8_t tmp[kTmp];
  // 4-bit codes: byte codes for pieces of kTmp elements, packed once per piece.
  const int64_t piece = q.packed ? kTmp : e1 - e0;
  for (int64_t p0 = e0; p0 < e1; p0 += piece) {
    const int64_t p1 = std::min(e1, p0 + piece);
    // Element e's byte code goes here.
    auto out = [&](int64_t e) { return q.packed ? tmp + (e - p0) : q.codes + e; };
    if (q.L.columns) {
      ForEachRowPiece(q.L.period, p0, p1, [&](int64_t e, int64_t len, int64_t col) {
        EncodeCols<S, F>(q, e, len, col, out(e), amax);
      });
    } else {
      ForEachRun(q.L, p0, p1, [&](int64_t e, int64_t len, int64_t g) {
        GroupParams p;
        p.mul = q.mul[g];
        p.add = q.add[g];
        EncodeRun<S, F>(q, e, len, p, out(e), amax);
      });
    }
    if (q.packed) PackNibbles(tmp, p1 - p0, q.codes, p0);
  }
  if (static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(DI(), amax))) >= kNonFinite) NonFinite(q);
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_PASSES_INL_H_
