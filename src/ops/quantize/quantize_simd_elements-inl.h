// The element rules of the SIMD quantize kernel (quantize_simd.cpp), for Highway's
// foreach_target pattern: the codes of a run of elements under given parameters (integer
// rne + zero point, fp8 / fp4 through numeric.hpp's integer rounding, nvfp4's division, MX's
// power-of-two factor), per group or per column, 4-bit codes packed from a byte buffer; and
// the flags a pass raises for what the reference refuses. The including file turns FMA
// contraction off.
#if defined(LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_ELEMENTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_ELEMENTS_INL_H_
#undef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_ELEMENTS_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_ELEMENTS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "cpu/convert_simd-inl.h"
#include "cpu/quant_simd-inl.h"
#include "cpu/quant_simd.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Fmt;
using lowbit::quant_simd::GroupParams;
using lowbit::quant_simd::QCall;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

/// Codes of byte-buffered 4-bit runs go through this many elements at a time.
constexpr int64_t kTmp = 4096;

// ---- element rules --------------------------------------------------------------------------

/// x86's truncating f32 -> i32 (cvttps2dq): INT32_MIN for NaN and out-of-range values, the
/// behaviour ggml's reference casts have on x86-64 (Highway's ConvertTo saturates instead).
HWY_INLINE VI CvttI32(VF v) {
#if HWY_TARGET <= HWY_AVX3
  return VI{_mm512_cvttps_epi32(v.raw)};
#elif HWY_TARGET == HWY_AVX2
  return VI{_mm256_cvttps_epi32(v.raw)};
#else
  return VI{_mm_cvttps_epi32(v.raw)};
#endif
}

/// |x| bit patterns at or above this are Inf or NaN.
constexpr uint32_t kNonFinite = 0x7f800000u;

/// Flags a non-finite input; true if the pass should stop (the reference will throw).
HWY_INLINE bool NonFinite(const QCall& q) {
  q.bad->fetch_or(lowbit::quant_simd::kFlagNonFinite, std::memory_order_relaxed);
  return q.check_finite;
}
/// Flags what the reference refuses besides non-finite inputs.
HWY_INLINE void Refuse(const QCall& q) {
  q.bad->fetch_or(lowbit::quant_simd::kFlagRefuse, std::memory_order_relaxed);
}

/// The f32 value an fp8 / fp4 rule encodes: x * mul, or nvfp4's clamp(x / total, -6, 6)
/// (a division, as the reference).
template <Fmt F>
HWY_INLINE VF Scaled(VF x, VF mul) {
  if constexpr (F == Fmt::nvfp4) {
    const DF df;
    const VF y = hn::Div(x, mul);
    return hn::Min(hn::Max(y, hn::Set(df, -6.0f)), hn::Set(df, 6.0f));
  } else {
    return hn::Mul(x, mul);
  }
}

/// The narrow format of an fp8 / fp4 rule; codes saturate (Saturation::finite).
template <Fmt F>
constexpr nd::MiniFloat kElem = F == Fmt::e5m2 || F == Fmt::mx8e5m2   ? nd::kF8E5M2
                                : F == Fmt::e4m3 || F == Fmt::mx8e4m3 ? nd::kF8E4M3FN
                                                                      : nd::kF4E2M1;

/// The codes of N elements x under a group's parameters (low 8 bits of each lane).
template <Fmt F>
HWY_INLINE VI Encode(VF x, VF mul, VF add, VF qmin, VF qmax) {
  if constexpr (F == Fmt::integer) {
    // int_quantize: clamp(rne(x * inv_scale) + zero, qmin, qmax).
    VF r = hn::Add(hn::Round(hn::Mul(x, mul)), add);
    r = hn::Min(hn::Max(r, qmin), qmax);
    return CvttI32(r);  // integral and in range: exact
  } else {
    const DU du;
    constexpr nd::MiniFloat M = kElem<F>;
    return hn::BitCast(DI(),
                       simd_convert::EncodeMiniFloat<M>(du, hn::BitCast(du, Scaled<F>(x, mul)),
                                                        hn::Set(du, M.max_code())));
  }
}

#if HWY_TARGET <= HWY_AVX3
/// AVX3: 2N fp8 / fp4 codes from two vectors of encode inputs, encoded in u16 lanes (twice
/// the lanes per instruction). Each f32 input is cut to its top 16 bits with the dropped
/// bits' OR kept in the last bit (round to odd): fp8 and fp4 round at bit 20 or above, so
/// every rounding decision and compare reads the same bits; convert's exhaustive test
/// checks this path against numeric.hpp for all 2^32 inputs.
template <Fmt F>
HWY_INLINE void EncodePairU16(VF y0, VF y1, uint8_t* out) {
  const DU du;
  const hn::Repartition<uint16_t, DF> d16;
  const hn::RebindToSigned<decltype(d16)> di16;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  constexpr nd::MiniFloat M = kElem<F>;
  auto to_odd = [&](VF y) {
    const VU x = hn::BitCast(du, y);
    const VU sticky = hn::Min(hn::And(x, hn::Set(du, 0xffffu)), hn::Set(du, 1u));
    return hn::Or(hn::ShiftRight<16>(x), sticky);
  };
  // packus works per 128-bit block; the 64-bit permute restores element order.
  const __m512i packed = _mm512_packus_epi32(to_odd(y0).raw, to_odd(y1).raw);
  const hn::Vec<decltype(d16)> w{
      _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), packed)};
  const auto c = simd_convert::EncodeMiniFloatFromBF16<M>(
      d16, w, hn::Set(d16, static_cast<uint16_t>(M.max_code())));
  hn::StoreU(hn::DemoteTo(d8, hn::BitCast(di16, c)), d8, out);
}
template <Fmt F>
constexpr bool kPairU16 = F != Fmt::integer&& F != Fmt::q8_0&& F != Fmt::q4_0;
#else
template <Fmt F>
constexpr bool kPairU16 = false;
template <Fmt F>
HWY_INLINE void EncodePairU16(VF, VF, uint8_t*) {}
#endif

/// Byte codes of `len` elements from e with uniform parameters; `amax` collects |x| bits
/// (the non-finite check of passes without statistics).
template <Dtype S, Fmt F>
HWY_INLINE void EncodeRun(const QCall& q, int64_t e, int64_t len, const GroupParams& p,
                          uint8_t* out, VI& amax) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  if (p.zero_codes) {
    std::memset(out, 0, static_cast<size_t>(len));
    return;
  }
  const VF mul = hn::Set(df, p.mul), add = hn::Set(df, p.add);
  const VF lo = hn::Set(df, static_cast<float>(q.qmin)),
           hi = hn::Set(df, static_cast<float>(q.qmax));
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    const VF x0 = LoadSrc<S>(df, q.src, e + i);
    const VF x1 = LoadSrc<S>(df, q.src, e + i + N);
    amax = hn::Max(amax, hn::Max(AbsBits(x0), AbsBits(x1)));
    if constexpr (kPairU16<F>) {
      EncodePairU16<F>(Scaled<F>(x0, mul), Scaled<F>(x1, mul), out + i);
    } else {
      StoreBytes(Encode<F>(x0, mul, add, lo, hi), out + i);
      StoreBytes(Encode<F>(x1, mul, add, lo, hi), out + i + N);
    }
  }
  for (; i + N <= len; i += N) {
    const VF x = LoadSrc<S>(df, q.src, e + i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytes(Encode<F>(x, mul, add, lo, hi), out + i);
  }
  if (i < len) {
    const VF x = LoadSrcPartial<S>(df, q.src, e + i, len - i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytesPartial(Encode<F>(x, mul, add, lo, hi), out + i, len - i);
  }
}

/// Byte codes with per-column parameters q.mul[col..], q.add[col..] (columns mode).
template <Dtype S, Fmt F>
HWY_INLINE void EncodeCols(const QCall& q, int64_t e, int64_t len, int64_t col, uint8_t* out,
                           VI& amax) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF lo = hn::Set(df, static_cast<float>(q.qmin)),
           hi = hn::Set(df, static_cast<float>(q.qmax));
  int64_t i = 0;
  for (; i + N <= len; i += N) {
    const VF x = LoadSrc<S>(df, q.src, e + i);
    amax = hn::Max(amax, AbsBits(x));
    const VF mul = hn::LoadU(df, q.mul + col + i), add = hn::LoadU(df, q.add + col + i);
    StoreBytes(Encode<F>(x, mul, add, lo, hi), out + i);
  }
  if (i < len) {
    HWY_ALIGN float m[kMaxLanes] = {}, a[kMaxLanes] = {};
    std::memcpy(m, q.mul + col + i, static_cast<size_t>(len - i) * sizeof(float));
    std::memcpy(a, q.add + col + i, static_cast<size_t>(len - i) * sizeof(float));
    const VF x = LoadSrcPartial<S>(df, q.src, e + i, len - i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytesPartial(Encode<F>(x, hn::Load(df, m), hn::Load(df, a), lo, hi), out + i, len - i);
  }
}

/// A run's codes into the code tensor (through a byte buffer for 4-bit codes).
template <Dtype S, Fmt F>
HWY_INLINE void QuantRun(const QCall& q, int64_t e, int64_t len, const GroupParams& p, VI& amax) {
  if (!q.packed) {
    EncodeRun<S, F>(q, e, len, p, q.codes + e, amax);
    return;
  }
  HWY_ALIGN uint8_t tmp[kTmp];
  for (int64_t off = 0; off < len; off += kTmp) {
    const int64_t m = std::min(kTmp, len - off);
    EncodeRun<S, F>(q, e + off, m, p, tmp, amax);
    PackNibbles(tmp, m, q.codes, e + off);
  }
}

template <Dtype S, Fmt F>
HWY_INLINE void QuantCols(const QCall& q, int64_t e, int64_t len, int64_t col, VI& amax) {
  if (!q.packed) {
    EncodeCols<S, F>(q, e, len, col, q.codes + e, amax);
    return;
  }
  HWY_ALIGN uint8_t tmp[kTmp];
  for (int64_t off = 0; off < len; off += kTmp) {
    const int64_t m = std::min(kTmp, len - off);
    EncodeCols<S, F>(q, e + off, m, col + off, tmp, amax);
    PackNibbles(tmp, m, q.codes, e + off);
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_ELEMENTS_INL_H_
