// A CPU SIMD quantize kernel for GGUF Q4_1, Q5_0 and Q5_1 (the legacy types that the gguf
// Python package also quantizes; quantize_simd serves Q8_0 and Q4_0) and Q2_K ... Q6_K (their
// scale searches run one sub-block per lane: FitQkx2Lanes, FitQ3Lanes, FitQ6Lanes): Highway,
// dispatched at run time to the best target the CPU supports (AVX3, AVX2, SSE4), OpenMP across
// rows. Contiguous f32 / f16 / bf16 sources. Byte-identical to quantize_reference, i.e. to ggml's
// quantize_row_q4_1_ref / q5_0_ref / q5_1_ref as formats/gguf_legacy.cpp restates them
// (tests/cpp/test_quantize_backends.cpp checks every block byte).
//
// How the bytes stay the reference's:
//  * Block statistics: max |x| as the maximum of |x|'s bit patterns (exact in any order);
//    min and max as vector minima / maxima, exact too, except that the reference keeps the
//    FIRST of equal values (`x < min`, `x > max`) and +0 / -0 compare equal: when the
//    minimum or maximum is zero, its sign is taken from the first zero of the block. Q5_0's
//    signed maximum is the first value whose |x| is the maximum (+0 for a block of zeros).
//  * d, 1/d and the f16 fields are scalar, the reference's own operations.
//  * Codes are the reference's f32 operations in its order, one rounding each (this file
//    is compiled without FMA contraction: x * id + 16.5 must round twice), then x86's
//    truncating conversion (cvttps2dq: INT32_MIN for NaN and out-of-range values), the
//    int8_t narrowing, MIN(15 / 31, .) and the uint8_t narrowing, all in 32-bit lanes, so
//    that blocks whose 1/d overflows (values near FLT_MIN) give ggml's bytes too.
//  * Errors: a non-finite block (with desc.check_finite) or a finite block whose f16 d or m
//    overflows hands the whole call to quantize_reference, which throws its exact Error.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "formats/gguf_block_codecs.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit::gguf_simd {

/// One call: the source, its rows of K values, and the output rows.
struct Call {
  const void* src;
  int64_t k;          ///< values per row (a multiple of 32)
  uint8_t* codes;     ///< rows of row_bytes bytes
  int64_t row_bytes;  ///< bytes per output row
  bool check_finite;
  std::atomic<bool>* refuse;  ///< set when quantize_reference must judge the call
};

using RowsFn = void (*)(const Call&, int64_t, int64_t);

}  // namespace lowbit::gguf_simd

#endif  // LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/quantize/gguf_quantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

using gguf::GgmlType;
using lowbit::gguf_simd::Call;
using lowbit::gguf_simd::RowsFn;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

using quant_simd::AbsBits;
using quant_simd::DF;
using quant_simd::DI;
using quant_simd::DU8;
using quant_simd::kMaxLanes;
using quant_simd::LoadSrc;
using quant_simd::VF;
using quant_simd::VI;
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kN = static_cast<int64_t>(kMaxLanes);
constexpr int64_t kNV = 32 / kN;  ///< vectors per 32-value block
constexpr uint32_t kNonFinite = 0x7f800000u;

/// x86's cvttps2dq: truncation toward zero, INT32_MIN for NaN and out-of-range values (the
/// reference's float_to_byte_x86 before its narrowing). Highway's ConvertTo saturates.
HWY_INLINE VI CvttI32(VF v) {
#if HWY_TARGET <= HWY_AVX3
  return VI{_mm512_cvttps_epi32(v.raw)};
#elif HWY_TARGET == HWY_AVX2
  return VI{_mm256_cvttps_epi32(v.raw)};
#else
  return VI{_mm_cvttps_epi32(v.raw)};
#endif
}

/// (int)(int8_t)c: the low byte, sign-extended.
HWY_INLINE VI SignExtend8(VI c) { return hn::ShiftRight<24>(hn::ShiftLeft<24>(c)); }

template <GgmlType T>
constexpr int64_t kBytes = T == GgmlType::q4_1   ? 20
                           : T == GgmlType::q5_0 ? 22
                                                 : 24;
template <GgmlType T>
constexpr bool kAffine = T != GgmlType::q5_0;

/// The first value of the block equal to `v` (which is in it), for v = +-0: its sign.
HWY_INLINE float FirstEqual(const VF* x, float v) {
  const DF df;
  for (int64_t i = 0; i < kNV; ++i) {
    const intptr_t lane = hn::FindFirstTrue(df, hn::Eq(x[i], hn::Set(df, v)));
    if (lane >= 0) return hn::ExtractLane(x[i], static_cast<size_t>(lane));
  }
  return v;
}

/// Quantizes nb blocks from element e0 into y. False: quantize_reference must judge.
template <Dtype S, GgmlType T>
HWY_INLINE bool Blocks(const Call& c, int64_t e0, int64_t nb, uint8_t* y) {
  const DF df;
  const DI di;
  for (int64_t b = 0; b < nb; ++b, y += kBytes<T>) {
    VF x[kNV];
    for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, c.src, e0 + b * 32 + v * kN);
    VI am = AbsBits(x[0]);
    for (int64_t v = 1; v < kNV; ++v) am = hn::Max(am, AbsBits(x[v]));
    const auto amax_bits = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, am)));
    const bool finite = amax_bits < kNonFinite;
    if (!finite && c.check_finite) return false;

    float lo = 0.0f, d;
    if constexpr (kAffine<T>) {
      // block_min_max: the first of equal minima / maxima (only +-0 tell apart).
      VF vmin = x[0], vmax = x[0];
      for (int64_t v = 1; v < kNV; ++v) {
        vmin = hn::Min(vmin, x[v]);
        vmax = hn::Max(vmax, x[v]);
      }
      lo = hn::GetLane(hn::MinOfLanes(df, vmin));
      float hi = hn::GetLane(hn::MaxOfLanes(df, vmax));
      if (lo == 0.0f) lo = FirstEqual(x, 0.0f);
      if (hi == 0.0f) hi = FirstEqual(x, 0.0f);
      d = (hi - lo) / (T == GgmlType::q4_1 ? 15.0f : 31.0f);
    } else {
      // signed_absmax: the first value of largest |x|; +0 for a block of zeros.
      float max = 0.0f;
      if (amax_bits != 0) {
        const VI target = hn::Set(di, static_cast<int32_t>(amax_bits));
        for (int64_t v = 0; v < kNV; ++v) {
          const intptr_t lane = hn::FindFirstTrue(di, hn::Eq(AbsBits(x[v]), target));
          if (lane >= 0) {
            max = hn::ExtractLane(x[v], static_cast<size_t>(lane));
            break;
          }
        }
      }
      d = max / -16.0f;
    }
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t hd = f32_to_f16(d);
    const uint16_t hm = f32_to_f16(lo);
    // store_scale_f16 refuses an f16 overflow (judged on finite blocks only).
    if (finite && ((hd & 0x7fffu) == 0x7c00u || (kAffine<T> && (hm & 0x7fffu) == 0x7c00u)))
      return false;
    std::memcpy(y, &hd, 2);
    if constexpr (kAffine<T>) std::memcpy(y + 2, &hm, 2);

    // Codes as 32-bit lanes, in element order.
    const VF vid = hn::Set(df, id);
    VI q[kNV];
    for (int64_t v = 0; v < kNV; ++v) {
      if constexpr (T == GgmlType::q4_1) {
        // MIN(15, (int8_t)((x - min) * id + 0.5f))
        const VF t = hn::Add(hn::Mul(hn::Sub(x[v], hn::Set(df, lo)), vid), hn::Set(df, 0.5f));
        q[v] = hn::Min(SignExtend8(CvttI32(t)), hn::Set(di, 15));
      } else if constexpr (T == GgmlType::q5_0) {
        // (uint8_t)MIN(31, (int8_t)(x * id + 16.5f))
        const VF t = hn::Add(hn::Mul(x[v], vid), hn::Set(df, 16.5f));
        q[v] = hn::And(hn::Min(SignExtend8(CvttI32(t)), hn::Set(di, 31)), hn::Set(di, 0xFF));
      } else {
        // (uint8_t)((x - min) * id + 0.5f)
        const VF t = hn::Add(hn::Mul(hn::Sub(x[v], hn::Set(df, lo)), vid), hn::Set(df, 0.5f));
        q[v] = hn::And(CvttI32(t), hn::Set(di, 0xFF));
      }
    }
    // Byte j: code j in the low nibble, code j + 16 in the high one (the uint8_t narrowing
    // of code | code << 4).
    uint8_t* qs = y + (T == GgmlType::q4_1 ? 4 : T == GgmlType::q5_0 ? 6 : 8);
    for (int64_t v = 0; v < kNV / 2; ++v) {
      const VI lo_n =
          T == GgmlType::q4_1 ? hn::And(q[v], hn::Set(di, 0xFF)) : hn::And(q[v], hn::Set(di, 0x0F));
      const VI byte = hn::Or(lo_n, hn::ShiftLeft<4>(hn::And(q[v + kNV / 2], hn::Set(di, 0x0F))));
      hn::StoreU(hn::DemoteTo(DU8(), byte), DU8(), qs + v * kN);
    }
    if constexpr (T != GgmlType::q4_1) {
      // pack_5bit: bit 4 of code j goes to bit j of qh.
      HWY_ALIGN int32_t codes[32];
      for (int64_t v = 0; v < kNV; ++v) hn::Store(q[v], di, codes + v * kN);
      uint32_t qh = 0;
      for (int j = 0; j < 32; ++j) qh |= ((static_cast<uint32_t>(codes[j]) & 0x10u) >> 4) << j;
      std::memcpy(y + (T == GgmlType::q5_0 ? 2 : 4), &qh, 4);
    }
  }
  return true;
}

// ---- Q4_K / Q5_K: make_qkx2_quants with one sub-block per lane ---------------------------------
//
// The reference fits each 32-value sub-block with a serial search (gguf_kquants.cpp's
// make_qkx2_quants); here up to 8 sub-blocks run side by side, one per lane, each lane doing
// exactly its sub-block's operations in the reference's order (the sums over i stay serial
// per lane; `x < min` / `cur_error < best_error` become per-lane selects), so every lane's
// result is the reference's. The 6-bit scale packing and the final re-rounding stay scalar.

/// ggml's nearest_int, lane-wise.
template <class V>
HWY_INLINE auto GgmlNearestIntV(V f) {
  const hn::DFromV<V> d;
  const hn::RebindToSigned<decltype(d)> di;
  const auto bits = hn::BitCast(di, hn::Add(f, hn::Set(d, 12582912.0f)));
  return hn::Sub(hn::And(bits, hn::Set(di, 0x007fffff)), hn::Set(di, 0x00400000));
}

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

/// One Q4_K / Q5_K super-block from the f32 values x (gguf_kquants.cpp's quantize_q4_K /
/// quantize_q5_K). False: an f16 field overflows (quantize_reference must judge).
template <GgmlType T>
HWY_INLINE bool KBlock(const float* x, uint8_t* y) {
  constexpr bool k5 = T == GgmlType::q5_K;
  constexpr int nmax = k5 ? 31 : 15;
  uint8_t L[256];
  float scales[8], mins[8];
  const int nl = static_cast<int>(hn::Lanes(hn::CappedTag<float, 8>()));
  for (int s0 = 0; s0 < 8; s0 += nl)
    FitQkx2Lanes<32, false>(x, s0, nmax, k5 ? -0.5f : -1.0f, 0.1f, k5 ? 15 : 20, L, scales, mins);
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  // finish_k4_superblock.
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<uint8_t>(
        63, static_cast<uint8_t>(gguf::detail::nearest_int(inv_scale * scales[j])));
    lm[j] =
        std::min<uint8_t>(63, static_cast<uint8_t>(gguf::detail::nearest_int(inv_min * mins[j])));
  }
  uint8_t* sc = y + 4;
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = ls[j];
      sc[j + 4] = lm[j];
    } else {
      sc[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      sc[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      sc[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
  const uint16_t hd = f32_to_f16(max_scale / 63.0f);
  const uint16_t hm = f32_to_f16(max_min / 63.0f);
  if ((hd & 0x7fffu) == 0x7c00u || (hm & 0x7fffu) == 0x7c00u) return false;
  std::memcpy(y, &hd, 2);
  std::memcpy(y + 2, &hm, 2);
  const float d_all = f16_to_f32(hd);
  const float dmin_all = f16_to_f32(hm);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    if (j < 4) {
      s = sc[j] & 63;
      m = sc[j + 4] & 63;
    } else {
      s = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
      m = static_cast<uint8_t>((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
    }
    const float dd = d_all * static_cast<float>(s);
    if (dd == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(m);
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] = static_cast<uint8_t>(
          std::clamp(gguf::detail::nearest_int((x[32 * j + i] + dm) / dd), 0, nmax));
  }
  if constexpr (!k5) {
    uint8_t* q = y + 16;
    for (int j = 0; j < 256; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  } else {
    uint8_t* qh = y + 16;
    uint8_t* ql = y + 48;
    std::memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < 256; n += 64, ql += 32) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[n + j];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        int l2 = L[n + j + 32];
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 = static_cast<uint8_t>(m1 << 2);
      m2 = static_cast<uint8_t>(m2 << 2);
    }
  }
  return true;
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

/// One Q6_K super-block (gguf_kquants.cpp's quantize_q6_K). False: d overflows f16.
HWY_INLINE bool Q6Block(const float* x, uint8_t* y) {
  int8_t L[256];
  float scales[16];
  const int nl = static_cast<int>(hn::Lanes(DQ()));
  for (int s0 = 0; s0 < 16; s0 += nl) FitQ6Lanes(x, s0, L, scales);
  float max_scale = 0.0f, max_abs_scale = 0.0f;
  for (int ib = 0; ib < 16; ++ib) {
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < 1e-15f) {
    std::memset(y, 0, 210);
    return true;
  }
  auto* scales_out = reinterpret_cast<int8_t*>(y + 192);
  const float iscale = -128.0f / max_scale;
  const uint16_t hd = f32_to_f16(1.0f / iscale);
  if ((hd & 0x7fffu) == 0x7c00u) return false;
  std::memcpy(y + 208, &hd, 2);
  for (int ib = 0; ib < 16; ++ib)
    scales_out[ib] =
        static_cast<int8_t>(std::min(127, gguf::detail::nearest_int(iscale * scales[ib])));
  const float d_all = f16_to_f32(hd);
  for (int j = 0; j < 16; ++j) {
    const float dd = d_all * static_cast<float>(scales_out[j]);
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(
          std::clamp(gguf::detail::nearest_int(x[16 * j + i] / dd), -32, 31) + 32);
  }
  uint8_t* ql = y;
  uint8_t* qh = y + 128;
  for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int v0 = L[j + l], v1 = L[j + l + 32], v2 = L[j + l + 64], v3 = L[j + l + 96];
      ql[l] = static_cast<uint8_t>((v0 & 0xF) | ((v2 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((v1 & 0xF) | ((v3 & 0xF) << 4));
      qh[l] =
          static_cast<uint8_t>((v0 >> 4) | ((v1 >> 4) << 2) | ((v2 >> 4) << 4) | ((v3 >> 4) << 6));
    }
  }
  return true;
}

// ---- Q2_K: make_qkx2_quants (|x| weights, absolute errors) with one sub-block per lane ----------

/// One Q2_K super-block (gguf_kquants.cpp's quantize_q2_K). False: an f16 field overflows.
HWY_INLINE bool Q2Block(const float* x, uint8_t* y) {
  constexpr float kQ4Scale = 15.0f;
  uint8_t L[256];
  float scales[16], mins[16];
  const int nl = static_cast<int>(hn::Lanes(hn::CappedTag<float, 16>()));
  for (int s0 = 0; s0 < 16; s0 += nl)
    FitQkx2Lanes<16, true>(x, s0, 3, -0.5f, 0.1f, 15, L, scales, mins);
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 16; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  uint8_t* scales_out = y;
  uint8_t* d_out = y + 80;
  if (max_scale > 0.0f) {
    const float iscale = kQ4Scale / max_scale;
    for (int j = 0; j < 16; ++j)
      scales_out[j] = static_cast<uint8_t>(gguf::detail::nearest_int(iscale * scales[j]));
    const uint16_t h = f32_to_f16(max_scale / kQ4Scale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(d_out, &h, 2);
  } else {
    std::memset(scales_out, 0, 16);
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(d_out, &h, 2);
  }
  if (max_min > 0.0f) {
    const float iscale = kQ4Scale / max_min;
    for (int j = 0; j < 16; ++j) {
      const auto l = static_cast<uint32_t>(gguf::detail::nearest_int(iscale * mins[j]));
      scales_out[j] = static_cast<uint8_t>(scales_out[j] | (l << 4));
    }
    const uint16_t h = f32_to_f16(max_min / kQ4Scale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(d_out + 2, &h, 2);
  } else {
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(d_out + 2, &h, 2);
  }
  uint16_t hd, hm;
  std::memcpy(&hd, d_out, 2);
  std::memcpy(&hm, d_out + 2, 2);
  const float d_all = f16_to_f32(hd);
  const float dmin_all = f16_to_f32(hm);
  for (int j = 0; j < 16; ++j) {
    const float dd = d_all * static_cast<float>(scales_out[j] & 0xF);
    if (dd == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(scales_out[j] >> 4);
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<uint8_t>(
          std::clamp(gguf::detail::nearest_int((x[16 * j + i] + dm) / dd), 0, 3));
  }
  uint8_t* qs = y + 16;
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
  return true;
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

/// One Q3_K super-block (gguf_kquants.cpp's quantize_q3_K). False: d overflows f16.
HWY_INLINE bool Q3Block(const float* x, uint8_t* y) {
  uint8_t* hmask = y;
  uint8_t* scales_out = y + 96;
  int8_t L[256];
  float scales[16];
  const int nl = static_cast<int>(hn::Lanes(DQ()));
  for (int s0 = 0; s0 < 16; s0 += nl) FitQ3Lanes(x, s0, L, scales);
  float max_scale = 0.0f, amax = 0.0f;
  for (int j = 0; j < 16; ++j) {
    const float scale = std::fabs(scales[j]);
    if (scale > amax) {
      amax = scale;
      max_scale = scales[j];
    }
  }
  std::memset(scales_out, 0, 12);
  if (max_scale != 0.0f) {
    const float iscale = -32.0f / max_scale;
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(gguf::detail::nearest_int(iscale * scales[j]));
      l = static_cast<int8_t>(std::clamp<int>(l, -32, 31) + 32);
      if (j < 8) {
        scales_out[j] = static_cast<uint8_t>(l & 0xF);
      } else {
        scales_out[j - 8] = static_cast<uint8_t>(scales_out[j - 8] | ((l & 0xF) << 4));
      }
      l = static_cast<int8_t>(l >> 4);
      scales_out[j % 4 + 8] = static_cast<uint8_t>(scales_out[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    const uint16_t h = f32_to_f16(1.0f / iscale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(y + 108, &h, 2);
  } else {
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(y + 108, &h, 2);
  }
  uint16_t hd;
  std::memcpy(&hd, y + 108, 2);
  const float d_all = f16_to_f32(hd);
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (scales_out[j] & 0xF) : (scales_out[j - 8] >> 4);
    const int high = (scales_out[8 + j % 4] >> (2 * (j / 4))) & 3;
    const float dd = d_all * static_cast<float>((low | (high << 4)) - 32);
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] =
          static_cast<int8_t>(std::clamp(gguf::detail::nearest_int(x[16 * j + i] / dd), -4, 3) + 4);
  }
  std::memset(hmask, 0, 32);
  uint8_t low[256];
  for (int j = 0; j < 256; ++j) {
    int l = L[j];
    if (l > 3) {
      hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1u << (j / 32)));
      l -= 4;
    }
    low[j] = static_cast<uint8_t>(l);
  }
  uint8_t* qs = y + 32;
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(low[j + l] | (low[j + l + 32] << 2) |
                                           (low[j + l + 64] << 4) | (low[j + l + 96] << 6));
  return true;
}

// ---- Q8_1 and Q8_K
// -------------------------------------------------------------------------------

/// gguf_legacy.cpp's quantize_q8_1: d = amax / 127, q = roundf(x * (1/d)) (roundf as
/// trunc(v + copysign(0.49999997, v)), quantize_simd's form, equal to roundf on every f32),
/// s = float(sum q) * d. False: quantize_reference must judge the call.
template <Dtype S>
HWY_INLINE bool Q8_1Blocks(const Call& c, int64_t e0, int64_t nb, uint8_t* y) {
  const DF df;
  const DI di;
  for (int64_t b = 0; b < nb; ++b, y += 36) {
    VF x[kNV];
    for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, c.src, e0 + b * 32 + v * kN);
    VI am = AbsBits(x[0]);
    for (int64_t v = 1; v < kNV; ++v) am = hn::Max(am, AbsBits(x[v]));
    const auto amax_bits = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, am)));
    const bool finite = amax_bits < kNonFinite;
    if (!finite && c.check_finite) return false;
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const VF vid = hn::Set(df, id);
    const VF half = hn::Set(df, 0.49999997f);
    VI sum = hn::Zero(di);
    for (int64_t v = 0; v < kNV; ++v) {
      const VF t = hn::Mul(x[v], vid);
      const VI q = SignExtend8(CvttI32(hn::Add(t, hn::CopySign(half, t))));
      sum = hn::Add(sum, q);
      hn::StoreU(hn::DemoteTo(DU8(), hn::And(q, hn::Set(di, 0xFF))), DU8(), y + 4 + v * kN);
    }
    const int32_t total = hn::GetLane(hn::SumOfLanes(di, sum));
    const uint16_t hd = f32_to_f16(d);
    const uint16_t hs = f32_to_f16(static_cast<float>(total) * d);
    if (finite && ((hd & 0x7fffu) == 0x7c00u || (hs & 0x7fffu) == 0x7c00u)) return false;
    std::memcpy(y, &hd, 2);
    std::memcpy(y + 2, &hs, 2);
  }
  return true;
}

/// gguf_kquants.cpp's quantize_q8_K: the first value of largest |x| maps to -127, q =
/// MIN(127, nearest_int(iscale * x)), sums of 16 codes as int16, d = 1 / iscale as f32.
HWY_INLINE void Q8KBlock(const float* x, uint8_t* y) {
  const DF df;
  const DI di;
  float max = 0.0f, amax = 0.0f;
  for (int j = 0; j < 256; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  if (amax == 0.0f) {
    std::memset(y, 0, 292);
    return;
  }
  const float iscale = -127.0f / max;
  const VF vs = hn::Set(df, iscale);
  HWY_ALIGN int32_t q[256];
  for (int64_t v = 0; v < 256; v += kN)
    hn::Store(hn::Min(GgmlNearestIntV(hn::Mul(vs, hn::Load(df, x + v))), hn::Set(di, 127)), di,
              q + v);
  for (int j = 0; j < 256; ++j) y[4 + j] = static_cast<uint8_t>(static_cast<int8_t>(q[j]));
  for (int j = 0; j < 16; ++j) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += static_cast<int8_t>(q[16 * j + i]);
    const auto s16 = static_cast<int16_t>(sum);
    std::memcpy(y + 4 + 256 + 2 * j, &s16, 2);
  }
  const float d = 1.0f / iscale;
  std::memcpy(y, &d, 4);
}

/// Rows of Q2_K ... Q6_K and Q8_K super-blocks. False: quantize_reference must judge the call.
template <Dtype S, GgmlType T>
HWY_INLINE bool KBlocks(const Call& c, int64_t e0, int64_t nb, uint8_t* y) {
  constexpr int64_t kB = T == GgmlType::q5_K   ? 176
                         : T == GgmlType::q6_K ? 210
                         : T == GgmlType::q2_K ? 84
                         : T == GgmlType::q3_K ? 110
                         : T == GgmlType::q8_K ? 292
                                               : 144;
  const DF df;
  HWY_ALIGN float x[256];
  for (int64_t b = 0; b < nb; ++b, y += kB) {
    uint32_t amax = 0;
    for (int64_t v = 0; v < 256; v += kN) {
      const VF xv = LoadSrc<S>(df, c.src, e0 + b * 256 + v);
      hn::Store(xv, df, x + v);
    }
    for (int i = 0; i < 256; ++i) {
      uint32_t bits;
      std::memcpy(&bits, x + i, 4);
      amax = std::max(amax, bits & 0x7fffffffu);
    }
    if (amax >= kNonFinite) {
      if (c.check_finite) return false;
      continue;  // unspecified (memory-safe) bytes: left as they are
    }
    if constexpr (T == GgmlType::q6_K) {
      if (!Q6Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q2_K) {
      if (!Q2Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q3_K) {
      if (!Q3Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q8_K) {
      Q8KBlock(x, y);
    } else {
      if (!KBlock<T>(x, y)) return false;
    }
  }
  return true;
}

template <Dtype S, GgmlType T>
void Rows(const Call& c, int64_t r0, int64_t r1) {
  constexpr bool kK = T == GgmlType::q2_K || T == GgmlType::q3_K || T == GgmlType::q4_K ||
                      T == GgmlType::q5_K || T == GgmlType::q6_K || T == GgmlType::q8_K;
  for (int64_t r = r0; r < r1; ++r) {
    bool ok;
    if constexpr (kK) {
      ok = KBlocks<S, T>(c, r * c.k, c.k / 256, c.codes + r * c.row_bytes);
    } else if constexpr (T == GgmlType::q8_1) {
      ok = Q8_1Blocks<S>(c, r * c.k, c.k / 32, c.codes + r * c.row_bytes);
    } else {
      ok = Blocks<S, T>(c, r * c.k, c.k / 32, c.codes + r * c.row_bytes);
    }
    if (!ok) {
      c.refuse->store(true);
      return;
    }
  }
}

template <Dtype S>
RowsFn RowsFor(GgmlType type) {
  switch (type) {
    case GgmlType::q4_1:
      return &Rows<S, GgmlType::q4_1>;
    case GgmlType::q5_0:
      return &Rows<S, GgmlType::q5_0>;
    case GgmlType::q5_1:
      return &Rows<S, GgmlType::q5_1>;
    case GgmlType::q4_K:
      return &Rows<S, GgmlType::q4_K>;
    case GgmlType::q5_K:
      return &Rows<S, GgmlType::q5_K>;
    case GgmlType::q6_K:
      return &Rows<S, GgmlType::q6_K>;
    case GgmlType::q2_K:
      return &Rows<S, GgmlType::q2_K>;
    case GgmlType::q3_K:
      return &Rows<S, GgmlType::q3_K>;
    case GgmlType::q8_K:
      return &Rows<S, GgmlType::q8_K>;
    case GgmlType::q8_1:
      return &Rows<S, GgmlType::q8_1>;
    default:
      return nullptr;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd

/// This target's rows function; nullptr on HWY_SCALAR / EMU128 (the kernel declines there).
lowbit::gguf_simd::RowsFn SelectGgufRows(Dtype src, uint32_t type) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)src;
  (void)type;
  return nullptr;
#else
  const auto t = static_cast<gguf::GgmlType>(type);
  switch (src) {
    case Dtype::f32:
      return gguf_simd::RowsFor<Dtype::f32>(t);
    case Dtype::f16:
      return gguf_simd::RowsFor<Dtype::f16>(t);
    case Dtype::bf16:
      return gguf_simd::RowsFor<Dtype::bf16>(t);
    default:
      return nullptr;
  }
#endif
}

const char* GgufTargetName() { return hwy::TargetName(HWY_TARGET); }
bool GgufTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectGgufRows);
HWY_EXPORT(GgufTargetName);
HWY_EXPORT(GgufTargetIsSimd);

namespace {

bool served(const QuantScheme& s) {
  using gguf::GgmlType;
  return s.format == QuantFormat::gguf && (s.gguf_type == static_cast<uint32_t>(GgmlType::q4_1) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_0) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_1) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q4_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q6_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q2_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q3_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q8_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q8_1));
}

/// Row-major contiguous (extent-1 dims may have any stride; empty tensors always are).
bool contiguous(const Shape& shape, const Strides& strides) {
  int64_t expect = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

class GgufQuantizeSimd final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "gguf_quantize_simd"; }

  std::string decline(const QuantizeDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!served(d.scheme)) return "GGUF types other than q8_0 / q4_0 (quantize_simd) only";
    if (!HWY_DYNAMIC_DISPATCH(GgufTargetIsSimd)())
      return "no SIMD target on this CPU (Highway chose SCALAR)";
    if (d.src != Dtype::f32 && d.src != Dtype::f16 && d.src != Dtype::bf16)
      return "f32, f16 and bf16 sources only (f64: the reference rounds it to f32 first)";
    if (!contiguous(d.shape, d.src_strides)) return "src not contiguous";
    return {};
  }

  KernelSku sku(const QuantizeDesc& d) const override {
    return {"quantize",
            Backend::cpu,
            std::string(dtype_name(d.src)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(GgufTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {
        "ggml's quantize_row_*_ref in f32, operation for operation; byte-identical to "
        "quantize_reference",
        std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream& stream,
           Workspace ws) const override {
    const int64_t n = numel(d.shape);
    const int64_t k = d.shape.size() > 0 ? d.shape[d.shape.size() - 1] : 1;
    if (n == 0 || k == 0) return;
    const auto type = static_cast<gguf::GgmlType>(d.scheme.gguf_type);
    std::atomic<bool> refuse{false};
    gguf_simd::Call c{
        a.src.data(),   k,      static_cast<uint8_t*>(a.dst.codes.data()), gguf::row_bytes(type, k),
        d.check_finite, &refuse};
    const gguf_simd::RowsFn fn = HWY_DYNAMIC_DISPATCH(SelectGgufRows)(d.src, d.scheme.gguf_type);
    const int64_t rows = n / k;
    // Pieces of about 64 Ki values, one row at least.
    const int64_t per = std::max<int64_t>(1, (int64_t{1} << 16) / k);
    const int64_t pieces = (rows + per - 1) / per;
    auto piece = [&](int64_t p) { fn(c, p * per, std::min(rows, (p + 1) * per)); };
    if (pieces > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    } else {
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    }
    // The reference throws its exact Error (non-finite input or an f16 overflow).
    if (refuse.load()) quantize_reference_kernel().run(d, a, stream, ws);
  }
};

}  // namespace

const Kernel<QuantizeOp>& gguf_quantize_simd_kernel() {
  static const GgufQuantizeSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
