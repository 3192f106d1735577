// The fused pass of the SIMD quantize kernel (quantize_simd.cpp), for Highway's
// foreach_target pattern: per row, each group's statistics, parameters and codes while its
// data is in L1 / L2 (GGUF aside: MX, NVFP4, dynamic token / block / leading-axis-channel
// schemes), in batches of N groups whose parameters are computed as vectors. The including
// file turns FMA contraction off.
#if defined(LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_FUSED_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_FUSED_INL_H_
#undef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_FUSED_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_FUSED_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>

#include "cpu/convert_simd-inl.h"
#include "cpu/quant_simd-inl.h"
#include "cpu/quant_simd.hpp"
#include "formats/quant_math.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/quantize/quantize_simd_elements-inl.h"
#include "ops/quantize/quantize_simd_passes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Fmt;
using lowbit::quant_simd::GroupParams;
using lowbit::quant_simd::QCall;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- batches of groups ------------------------------------------------------------------------

/// The parameters of N groups g0 .. g0 + N - 1 from their maxima (lanes in GroupLane
/// order), vectorised: the same f32 operations as formats/quant_math.hpp's functions, the
/// narrow-float roundings through numeric.hpp's integer rules. Writes the groups' scales
/// (or block codes) and mul / add per lane. False where the scalar rules serve (affine
/// integers, nvfp4 with a zero global scale).
template <Fmt F>
HWY_INLINE bool BatchParams(const QCall& q, VI amax_bits, int64_t g0, float* mul_l, float* add_l) {
  const DF df;
  const DU du;
  const DI di;
  constexpr size_t N = kMaxLanes;
  const VF amax = hn::BitCast(df, amax_bits);
  const VF zero = hn::Zero(df);
  const VF min_scale = hn::Set(df, formats::kMinScale);
  hn::Store(zero, df, add_l);
  if constexpr (F == Fmt::integer || F == Fmt::e4m3 || F == Fmt::e5m2) {
    VF s;
    if constexpr (F == Fmt::integer) {
      if (!q.symmetric) return false;
      // int_symmetric_params: flush(round_scale(amax / qmax)).
      s = hn::Div(amax, hn::Set(df, static_cast<float>(q.qmax)));
      if (q.scale_dtype == Dtype::f16) {
        const VU c = simd_convert::EncodeMiniFloat<nd::kF16>(du, hn::BitCast(du, s),
                                                             hn::Set(du, nd::kF16.max_code()));
        s = hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF16>(du, c));
      } else if (q.scale_dtype == Dtype::bf16) {
        const VU c = simd_convert::EncodeMiniFloat<nd::kBF16>(du, hn::BitCast(du, s),
                                                              hn::Set(du, nd::kBF16.max_code()));
        s = hn::BitCast(df, hn::ShiftLeft<16>(c));
      }
    } else {
      s = hn::Div(amax, hn::Set(df, F == Fmt::e5m2 ? 57344.0f : 448.0f));  // fp8_scale
    }
    s = hn::IfThenZeroElse(hn::Lt(s, min_scale), s);
    hn::Store(hn::IfThenZeroElse(hn::Eq(s, zero), hn::Div(hn::Set(df, 1.0f), s)), df, mul_l);
    HWY_ALIGN float s_l[N];
    hn::Store(s, df, s_l);
    for (size_t b = 0; b < N; ++b)
      convert_detail::store_f32(q.scale, q.fmt == Fmt::integer ? q.scale_dtype : Dtype::f32,
                                g0 + static_cast<int64_t>(b), s_l[GroupLane(b)],
                                Saturation::finite);
    return true;
  } else if constexpr (F == Fmt::nvfp4) {
    if (q.global == 0.0f) return false;
    const VF global = hn::Set(df, q.global);
    // nvfp4_block_scale: e4m3(clamp(amax / 6 / global, 2^-6, 448)).
    VF s = hn::Div(hn::Div(amax, hn::Set(df, 6.0f)), global);
    s = hn::Min(hn::Max(s, hn::Set(df, formats::kNvfp4BlockScaleMin)), hn::Set(df, 448.0f));
    const VU code = simd_convert::EncodeMiniFloat<nd::kF8E4M3FN>(
        du, hn::BitCast(du, s), hn::Set(du, nd::kF8E4M3FN.nan_code()));
    hn::Store(
        hn::Mul(global, hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF8E4M3FN>(du, code))),
        df, mul_l);
    HWY_ALIGN uint32_t c_l[N];
    hn::Store(code, du, c_l);
    auto* out = static_cast<uint8_t*>(q.scale) + g0;
    for (size_t b = 0; b < N; ++b) out[b] = static_cast<uint8_t>(c_l[GroupLane(b)]);
    return true;
  } else if constexpr (F == Fmt::mxfp4 || F == Fmt::mx8e4m3 || F == Fmt::mx8e5m2) {
    // mx_scale_code: floor(log2(amax)) - emax clamped to [-127, 127], + 127; 0 for amax 0.
    const VI expf = hn::ShiftRight<23>(amax_bits);
    const VI mant = hn::And(amax_bits, hn::Set(di, 0x7fffff));
    const VI msb = hn::Sub(hn::ShiftRight<23>(hn::BitCast(di, hn::ConvertTo(df, mant))),
                           hn::Set(di, 127));  // exact: mant < 2^23
    const VI fl = hn::IfThenElse(hn::Eq(expf, hn::Zero(di)), hn::Sub(msb, hn::Set(di, 149)),
                                 hn::Sub(expf, hn::Set(di, 127)));
    VI e = hn::Sub(fl, hn::Set(di, lowbit::quant_simd::mx_emax(F)));
    e = hn::Min(hn::Max(e, hn::Set(di, -127)), hn::Set(di, 127));
    const VI code =
        hn::IfThenZeroElse(hn::Eq(amax_bits, hn::Zero(di)), hn::Add(e, hn::Set(di, 127)));
    // mx_unscale's factor 2^(127 - code).
    const VI e2 = hn::Sub(hn::Set(di, 127), code);
    const VI fbits =
        hn::IfThenElse(hn::Gt(e2, hn::Set(di, -127)),
                       hn::ShiftLeft<23>(hn::Add(e2, hn::Set(di, 127))), hn::Set(di, 0x00400000));
    hn::Store(hn::BitCast(df, fbits), df, mul_l);
    HWY_ALIGN int32_t c_l[N];
    hn::Store(code, di, c_l);
    auto* out = static_cast<uint8_t*>(q.scale) + g0;
    for (size_t b = 0; b < N; ++b) out[b] = static_cast<uint8_t>(c_l[GroupLane(b)]);
    return true;
  } else {
    return false;
  }
}

/// N whole groups of `glen` elements (a multiple of N) from element e0, groups g0 ..:
/// statistics of all, one reduction, parameters, then codes (4-bit: packed once).
/// False after a non-finite input (flagged).
template <Dtype S, Fmt F, bool kAffine>
HWY_INLINE bool FusedBatch(const QCall& q, int64_t e0, int64_t glen, int64_t g0, uint8_t* tmp) {
  const DF df;
  const DI di;
  constexpr size_t N = kMaxLanes;
  const int64_t n = static_cast<int64_t>(N);
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  VI a[N], nl[N];
  for (size_t b = 0; b < N; ++b) {
    const int64_t e = e0 + static_cast<int64_t>(b) * glen;
    VI ab = hn::Zero(di), nb = hn::Zero(di);
    for (int64_t i = 0; i < glen; i += n) {
      const VF x = LoadSrc<S>(df, q.src, e + i);
      if constexpr (kAffine) {
        const VI bits = hn::BitCast(di, x);
        ab = hn::Max(ab, bits);
        nb = hn::Max(nb, hn::Xor(bits, sign));
      } else {
        ab = hn::Max(ab, AbsBits(x));
      }
    }
    a[b] = ab;
    nl[b] = nb;
  }
  VI amax, hi, neglo;
  if constexpr (kAffine) {
    hi = ReduceMaxGroups(a);
    neglo = ReduceMaxGroups(nl);
    amax = hn::Max(hi, neglo);
  } else {
    amax = ReduceMaxGroups(a);
    hi = neglo = amax;
  }
  if (!hn::AllTrue(di, hn::Lt(amax, hn::Set(di, static_cast<int32_t>(kNonFinite)))) && NonFinite(q))
    return false;
  HWY_ALIGN float mul_l[N], add_l[N];
  bool zero_codes = false;
  if (!BatchParams<F>(q, amax, g0, mul_l, add_l)) {
    HWY_ALIGN uint32_t am_l[N], hi_l[N], nl_l[N];
    hn::Store(hn::BitCast(DU(), amax), DU(), am_l);
    hn::Store(hn::BitCast(DU(), hi), DU(), hi_l);
    hn::Store(hn::BitCast(DU(), neglo), DU(), nl_l);
    for (size_t b = 0; b < N; ++b) {
      const size_t l = GroupLane(b);
      const GroupParams p = lowbit::quant_simd::dynamic_params(q, am_l[l], hi_l[l], nl_l[l],
                                                               g0 + static_cast<int64_t>(b));
      mul_l[l] = p.mul;
      add_l[l] = p.add;
      zero_codes = p.zero_codes;
    }
  }
  VI unused = hn::Zero(di);
  uint8_t* out = q.packed ? tmp : q.codes + e0;
  if constexpr (kPairU16<F>) {
    if (glen == n && !zero_codes) {  // one vector per group (nvfp4 on AVX3): two at a time
      for (size_t b = 0; b < N; b += 2) {
        const int64_t off = static_cast<int64_t>(b) * glen;
        const VF y0 = Scaled<F>(LoadSrc<S>(df, q.src, e0 + off), hn::Set(df, mul_l[GroupLane(b)]));
        const VF y1 =
            Scaled<F>(LoadSrc<S>(df, q.src, e0 + off + n), hn::Set(df, mul_l[GroupLane(b + 1)]));
        EncodePairU16<F>(y0, y1, out + off);
      }
      if (q.packed) PackNibbles(tmp, n * glen, q.codes, e0);
      return true;
    }
  }
  for (size_t b = 0; b < N; ++b) {
    const int64_t off = static_cast<int64_t>(b) * glen;
    GroupParams p;
    p.mul = mul_l[GroupLane(b)];
    p.add = add_l[GroupLane(b)];
    p.zero_codes = zero_codes;
    EncodeRun<S, F>(q, e0 + off, glen, p, out + off, unused);
  }
  if (q.packed) PackNibbles(tmp, n * glen, q.codes, e0);
  return true;
}

/// Rows [r0, r1): a row is the last axis (token, block, nvfp4, MX) or one channel
/// (leading-axis channel); its groups are runs of `block` (the last one may be partial:
/// fp8 blocks) or the whole row.
template <Dtype S, Fmt F, bool kAffine>
void FusedRows(const QCall& q, int64_t r0, int64_t r1) {
  const formats::GroupMap& m = q.L.gm;
  const int64_t row_len = m.granularity == Granularity::channel ? m.inner : m.k;
  const int64_t glen = m.granularity == Granularity::block ? m.block : row_len;
  const int64_t gpr = (row_len + glen - 1) / glen;
  const int64_t n = static_cast<int64_t>(kMaxLanes);
  // Batches of N whole groups when groups are short vector multiples.
  const bool batch = glen % n == 0 && n * glen <= kTmp && gpr >= n;
  const int64_t whole = row_len / glen;  // groups that are not partial
  HWY_ALIGN uint8_t tmp[kTmp];
  VI amax = hn::Zero(DI());
  int64_t r = r0;
  if (gpr == 1 && glen == row_len && glen % n == 0 && n * glen <= kTmp) {
    // One group per row (token, leading-axis channel) and short rows: batches of N rows.
    for (; r + n <= r1; r += n)
      if (!FusedBatch<S, F, kAffine>(q, r * row_len, glen, r, tmp)) return;
  }
  for (; r < r1; ++r) {
    int64_t j = 0;
    if (batch) {
      for (; j + n <= whole; j += n)
        if (!FusedBatch<S, F, kAffine>(q, r * row_len + j * glen, glen, r * gpr + j, tmp)) return;
    }
    for (; j < gpr; ++j) {
      const int64_t e = r * row_len + j * glen;
      const int64_t len = std::min(glen, row_len - j * glen);
      const int64_t g = r * gpr + j;
      const RunMax st = RunStats<S, kAffine>(q.src, e, len);
      if (st.amax >= kNonFinite && NonFinite(q)) return;
      const GroupParams p = lowbit::quant_simd::dynamic_params(q, st.amax, st.hi, st.neglo, g);
      QuantRun<S, F>(q, e, len, p, amax);
    }
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_FUSED_INL_H_
