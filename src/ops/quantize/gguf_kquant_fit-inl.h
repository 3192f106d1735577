// The scale searches of the GGUF K-quant types in the SIMD quantize kernel
// (gguf_quantize_simd.cpp): gguf_kquants.cpp's make_qkx2_quants (Q4_K, Q5_K, Q2_K),
// make_qx_quants (Q6_K) and make_q3_quants (Q3_K), one sub-block per lane, each lane doing
// its sub-block's reference operations in order. gguf_kquant_blocks-inl.h turns their
// scales and levels into super-blocks. For Highway's foreach_target pattern; the including
// file turns FMA contraction off.
#if defined(LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_FIT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_FIT_INL_H_
#undef LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_FIT_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_FIT_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

#include "ops/quantize/gguf_quant_lanes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- make_qkx2_quants (Q4_K / Q5_K, Q2_K) with one sub-block per lane ---------------------------
//
// The reference fits each 32-value sub-block with a serial search (gguf_kquants.cpp's
// make_qkx2_quants); here up to 8 sub-blocks run side by side, one per lane, each lane doing
// exactly its sub-block's operations in the reference's order (the sums over i stay serial
// per lane; `x < min` / `cur_error < best_error` become per-lane selects), so every lane's
// result is the reference's. The 6-bit scale packing and the final re-rounding stay scalar
// (gguf_kquant_blocks-inl.h).

/// make_qkx2_quants for sub-blocks s0 .. s0 + lanes - 1 (of kLen values each) of the
/// super-block x, with the weights its callers give it: fit_k4_subblocks's av_x + |x| and
/// squared errors (Q4_K / Q5_K, kLen 32), or quantize_q2_K's |x| and absolute errors (kQ2,
/// kLen 16). Writes the levels to L, scales and mins (its return value and *the_min).
template <int kLen, bool kQ2>
HWY_INLINE void FitQkx2Lanes(const float* x, int s0, int nmax, float rmin, float rdelta, int nstep,
                             uint8_t* L, float* scales, float* mins) {
  using DC = hn::CappedTag<float, kLen == 32 ? 8 : 16>;
  using VC = hn::Vec<DC>;
  using DCI = hn::RebindToSigned<DC>;
  using VCI = hn::Vec<DCI>;
  const DC d;
  const DCI di;
  const int nl = static_cast<int>(hn::Lanes(d));
  HWY_ALIGN float buf[16];
  VC xt[kLen], wt[kLen];
  for (int i = 0; i < kLen; ++i) {
    for (int j = 0; j < nl; ++j) buf[j] = x[kLen * (s0 + j) + i];
    xt[i] = hn::Load(d, buf);
  }
  const VC zero = hn::Zero(d);
  if constexpr (kQ2) {
    for (int i = 0; i < kLen; ++i) wt[i] = hn::Abs(xt[i]);
  } else {
    VC sum_x2 = zero;
    for (int i = 0; i < kLen; ++i) sum_x2 = hn::Add(sum_x2, hn::Mul(xt[i], xt[i]));
    const VC av_x = hn::Sqrt(hn::Div(sum_x2, hn::Set(d, 32.0f)));
    for (int i = 0; i < kLen; ++i) wt[i] = hn::Add(av_x, hn::Abs(xt[i]));
  }

  VC min = xt[0], max = xt[0];
  VC sum_w = wt[0];
  VC sum_x = hn::Mul(sum_w, xt[0]);
  for (int i = 1; i < kLen; ++i) {
    min = hn::IfThenElse(hn::Lt(xt[i], min), xt[i], min);
    max = hn::IfThenElse(hn::Gt(xt[i], max), xt[i], max);
    sum_w = hn::Add(sum_w, wt[i]);
    sum_x = hn::Add(sum_x, hn::Mul(wt[i], xt[i]));
  }
  min = hn::IfThenElse(hn::Gt(min, zero), zero, min);
  const auto flat = hn::Eq(max, min);  // the reference returns early: levels 0, scale 0
  const VC min0 = min;
  const VCI vnmax = hn::Set(di, nmax), izero = hn::Zero(di);
  VC iscale = hn::Div(hn::Set(d, static_cast<float>(nmax)), hn::Sub(max, min));
  VC scale = hn::Div(hn::Set(d, 1.0f), iscale);
  VCI lv[kLen];
  VC best_error = zero;
  for (int i = 0; i < kLen; ++i) {
    lv[i] = hn::Min(hn::Max(GgmlNearestIntV(hn::Mul(iscale, hn::Sub(xt[i], min))), izero), vnmax);
    VC diff = hn::Sub(hn::Add(hn::Mul(scale, hn::ConvertTo(d, lv[i])), min), xt[i]);
    diff = kQ2 ? hn::Abs(diff) : hn::Mul(diff, diff);
    best_error = hn::Add(best_error, hn::Mul(wt[i], diff));
  }
  for (int is = 0; is <= nstep; ++is) {
    // The numerator is the reference's scalar expression; `min` is the one the search has
    // moved to (ggml's quirk).
    const float num = rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax);
    iscale = hn::Div(hn::Set(d, num), hn::Sub(max, min));
    VC sum_l = zero, sum_l2 = zero, sum_xl = zero;
    VCI laux[kLen];
    for (int i = 0; i < kLen; ++i) {
      laux[i] =
          hn::Min(hn::Max(GgmlNearestIntV(hn::Mul(iscale, hn::Sub(xt[i], min))), izero), vnmax);
      const VC f = hn::ConvertTo(d, laux[i]);
      sum_l = hn::Add(sum_l, hn::Mul(wt[i], f));
      sum_l2 = hn::Add(sum_l2, hn::Mul(hn::Mul(wt[i], f), f));
      sum_xl = hn::Add(sum_xl, hn::Mul(hn::Mul(wt[i], f), xt[i]));
    }
    const VC D = hn::Sub(hn::Mul(sum_w, sum_l2), hn::Mul(sum_l, sum_l));
    const auto solvable = hn::Gt(D, zero);
    VC this_scale = hn::Div(hn::Sub(hn::Mul(sum_w, sum_xl), hn::Mul(sum_x, sum_l)), D);
    VC this_min = hn::Div(hn::Sub(hn::Mul(sum_l2, sum_x), hn::Mul(sum_l, sum_xl)), D);
    const auto positive = hn::Gt(this_min, zero);
    this_scale = hn::IfThenElse(positive, hn::Div(sum_xl, sum_l2), this_scale);
    this_min = hn::IfThenElse(positive, zero, this_min);
    VC cur_error = zero;
    for (int i = 0; i < kLen; ++i) {
      VC diff = hn::Sub(hn::Add(hn::Mul(this_scale, hn::ConvertTo(d, laux[i])), this_min), xt[i]);
      diff = kQ2 ? hn::Abs(diff) : hn::Mul(diff, diff);
      cur_error = hn::Add(cur_error, hn::Mul(wt[i], diff));
    }
    const auto better = hn::And(solvable, hn::Lt(cur_error, best_error));
    const auto better_i = hn::RebindMask(di, better);
    for (int i = 0; i < kLen; ++i) lv[i] = hn::IfThenElse(better_i, laux[i], lv[i]);
    best_error = hn::IfThenElse(better, cur_error, best_error);
    scale = hn::IfThenElse(better, this_scale, scale);
    min = hn::IfThenElse(better, this_min, min);
  }
  const auto flat_i = hn::RebindMask(di, flat);
  scale = hn::IfThenZeroElse(flat, scale);
  min = hn::IfThenElse(flat, min0, min);
  HWY_ALIGN int32_t lbuf[16];
  for (int i = 0; i < kLen; ++i) {
    hn::Store(hn::IfThenZeroElse(flat_i, lv[i]), di, lbuf);
    for (int j = 0; j < nl; ++j) L[kLen * (s0 + j) + i] = static_cast<uint8_t>(lbuf[j]);
  }
  HWY_ALIGN float sbuf[16], mbuf[16];
  hn::Store(scale, d, sbuf);
  hn::Store(hn::Neg(min), d, mbuf);  // *the_min = -min
  for (int j = 0; j < nl; ++j) {
    scales[s0 + j] = sbuf[j];
    mins[s0 + j] = mbuf[j];
  }
}

// ---- Q6_K: make_qx_quants with one 16-value sub-block per lane ----------------------------------

using DQ = hn::CappedTag<float, 16>;
using VQ = hn::Vec<DQ>;
using DQI = hn::RebindToSigned<DQ>;
using VQI = hn::Vec<DQI>;

/// Sub-blocks s0 .. s0 + lanes - 1 of 16 values of x, one per lane (xt[i]: value i of each),
/// and per lane the first value of largest |x| (max) and that |x| (amax): the reference's
/// scan `if (ax > amax) { amax = ax; max = x[i]; }`.
HWY_INLINE void LoadSubBlocks16(const float* x, int s0, VQ* xt, VQ& max, VQ& amax) {
  const DQ d;
  const int nl = static_cast<int>(hn::Lanes(d));
  HWY_ALIGN float buf[16];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < nl; ++j) buf[j] = x[16 * (s0 + j) + i];
    xt[i] = hn::Load(d, buf);
  }
  max = hn::Zero(d);
  amax = max;
  for (int i = 0; i < 16; ++i) {
    const VQ ax = hn::Abs(xt[i]);
    const auto bigger = hn::Gt(ax, amax);
    amax = hn::IfThenElse(bigger, ax, amax);
    max = hn::IfThenElse(bigger, xt[i], max);
  }
}

/// make_qx_quants_x2(16, 32, ...) for sub-blocks s0 .. s0 + lanes - 1 of the super-block x:
/// levels (l + 32) to L, scales to scales (gguf_kquants.cpp's reference, lane by lane).
HWY_INLINE void FitQ6Lanes(const float* x, int s0, int8_t* L, float* scales) {
  const DQ d;
  const DQI di;
  constexpr int nmax = 32;
  const int nl = static_cast<int>(hn::Lanes(d));
  VQ xt[16], max, amax;
  LoadSubBlocks16(x, s0, xt, max, amax);
  const VQ zero = hn::Zero(d);
  const auto tiny = hn::Lt(amax, hn::Set(d, 1e-15f));  // GROUP_MAX_EPS: levels 0, scale 0
  const VQI lo = hn::Set(di, -nmax), hi = hn::Set(di, nmax - 1), off = hn::Set(di, nmax);
  VQ iscale = hn::Div(hn::Set(d, static_cast<float>(-nmax)), max);
  VQ sumlx = zero, suml2 = zero;
  VQI lv[16];
  for (int i = 0; i < 16; ++i) {
    const VQI l = hn::Min(hn::Max(GgmlNearestIntV(hn::Mul(iscale, xt[i])), lo), hi);
    lv[i] = hn::Add(l, off);
    const VQ w = hn::Mul(xt[i], xt[i]);
    const VQ f = hn::ConvertTo(d, l);
    sumlx = hn::Add(sumlx, hn::Mul(hn::Mul(w, xt[i]), f));
    suml2 = hn::Add(suml2, hn::Mul(hn::Mul(w, f), f));
  }
  VQ scale = hn::IfThenElseZero(hn::Ne(suml2, zero), hn::Div(sumlx, suml2));
  VQ best = hn::Mul(scale, sumlx);
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    const float num = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is));
    iscale = hn::Div(hn::Set(d, num), max);
    sumlx = zero;
    suml2 = zero;
    VQI laux[16];
    for (int i = 0; i < 16; ++i) {
      const VQI l = hn::Min(hn::Max(GgmlNearestIntV(hn::Mul(iscale, xt[i])), lo), hi);
      laux[i] = hn::Add(l, off);
      const VQ w = hn::Mul(xt[i], xt[i]);
      const VQ f = hn::ConvertTo(d, l);
      sumlx = hn::Add(sumlx, hn::Mul(hn::Mul(w, xt[i]), f));
      suml2 = hn::Add(suml2, hn::Mul(hn::Mul(w, f), f));
    }
    const auto better =
        hn::And(hn::Gt(suml2, zero), hn::Gt(hn::Mul(sumlx, sumlx), hn::Mul(best, suml2)));
    const auto better_i = hn::RebindMask(di, better);
    for (int i = 0; i < 16; ++i) lv[i] = hn::IfThenElse(better_i, laux[i], lv[i]);
    scale = hn::IfThenElse(better, hn::Div(sumlx, suml2), scale);
    best = hn::IfThenElse(better, hn::Mul(scale, sumlx), best);
  }
  scale = hn::IfThenZeroElse(tiny, scale);
  const auto tiny_i = hn::RebindMask(di, tiny);
  HWY_ALIGN int32_t lbuf[16];
  for (int i = 0; i < 16; ++i) {
    hn::Store(hn::IfThenZeroElse(tiny_i, lv[i]), di, lbuf);
    for (int j = 0; j < nl; ++j) L[16 * (s0 + j) + i] = static_cast<int8_t>(lbuf[j]);
  }
  HWY_ALIGN float sbuf[16];
  hn::Store(scale, d, sbuf);
  for (int j = 0; j < nl; ++j) scales[s0 + j] = sbuf[j];
}

// ---- Q3_K: make_q3_quants (coordinate descent) with one 16-value sub-block per lane -----------

/// make_q3_quants_rmse(16, 4, ...) for sub-blocks s0 .. s0 + lanes - 1 of the super-block x:
/// levels (l + 4; 0 for a sub-block of near-zeros) to L, scales to scales. Each lane makes
/// the reference's passes over its values in order; a lane whose pass changed nothing stops
/// (its later passes are masked off), as the reference's loop breaks.
HWY_INLINE void FitQ3Lanes(const float* x, int s0, int8_t* L, float* scales) {
  const DQ d;
  const DQI di;
  constexpr int nmax = 4;
  const int nl = static_cast<int>(hn::Lanes(d));
  VQ xt[16], max, amax;
  LoadSubBlocks16(x, s0, xt, max, amax);
  const VQ zero = hn::Zero(d);
  const auto tiny = hn::Lt(amax, hn::Set(d, 1e-15f));  // levels 0, scale 0
  const VQI lo = hn::Set(di, -nmax), hi = hn::Set(di, nmax - 1);
  const VQ iscale = hn::Div(hn::Set(d, static_cast<float>(-nmax)), max);
  VQ sumlx = zero, suml2 = zero;
  VQI lv[16];
  for (int i = 0; i < 16; ++i) {
    lv[i] = hn::Min(hn::Max(GgmlNearestIntV(hn::Mul(iscale, xt[i])), lo), hi);
    const VQ w = hn::Mul(xt[i], xt[i]);
    const VQ f = hn::ConvertTo(d, lv[i]);
    sumlx = hn::Add(sumlx, hn::Mul(hn::Mul(w, xt[i]), f));
    suml2 = hn::Add(suml2, hn::Mul(hn::Mul(w, f), f));
  }
  auto active = hn::Not(tiny);
  for (int itry = 0; itry < 5 && !hn::AllFalse(d, active); ++itry) {
    auto changed = hn::Lt(zero, zero);  // all false
    for (int i = 0; i < 16; ++i) {
      const VQ w = hn::Mul(xt[i], xt[i]);
      const VQ li = hn::ConvertTo(d, lv[i]);
      VQ slx = hn::Sub(sumlx, hn::Mul(hn::Mul(w, xt[i]), li));
      VQ sl2 = hn::Sub(suml2, hn::Mul(hn::Mul(w, li), li));
      const VQI new_l =
          hn::Min(hn::Max(GgmlNearestIntV(hn::Div(hn::Mul(xt[i], sl2), slx)), lo), hi);
      const VQ f = hn::ConvertTo(d, new_l);
      slx = hn::Add(slx, hn::Mul(hn::Mul(w, xt[i]), f));
      sl2 = hn::Add(sl2, hn::Mul(hn::Mul(w, f), f));
      const VQ slx0 = hn::Sub(sumlx, hn::Mul(hn::Mul(w, xt[i]), li));
      const auto take =
          hn::And(hn::And(active, hn::Gt(slx0, zero)),
                  hn::And(hn::RebindMask(d, hn::Ne(new_l, lv[i])),
                          hn::And(hn::Gt(sl2, zero), hn::Gt(hn::Mul(hn::Mul(slx, slx), suml2),
                                                            hn::Mul(hn::Mul(sumlx, sumlx), sl2)))));
      lv[i] = hn::IfThenElse(hn::RebindMask(di, take), new_l, lv[i]);
      sumlx = hn::IfThenElse(take, slx, sumlx);
      suml2 = hn::IfThenElse(take, sl2, suml2);
      changed = hn::Or(changed, take);
    }
    active = hn::And(active, changed);
  }
  VQ scale = hn::IfThenElseZero(hn::Gt(suml2, zero), hn::Div(sumlx, suml2));
  scale = hn::IfThenZeroElse(tiny, scale);
  const auto tiny_i = hn::RebindMask(di, tiny);
  HWY_ALIGN int32_t lbuf[16];
  for (int i = 0; i < 16; ++i) {
    hn::Store(hn::IfThenZeroElse(tiny_i, hn::Add(lv[i], hn::Set(di, nmax))), di, lbuf);
    for (int j = 0; j < nl; ++j) L[16 * (s0 + j) + i] = static_cast<int8_t>(lbuf[j]);
  }
  HWY_ALIGN float sbuf[16];
  hn::Store(scale, d, sbuf);
  for (int j = 0; j < nl; ++j) scales[s0 + j] = sbuf[j];
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_FIT_INL_H_
