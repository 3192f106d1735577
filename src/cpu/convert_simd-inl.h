// Vectorized, integer-only versions of numeric.hpp's conversions, for Highway's
// foreach_target pattern (include after hwy/highway.h, once per target).
//
// Every function here works on the f32 bit pattern in u32 lanes and mirrors one
// function of numeric.hpp branch for branch, with masks and selects in place of the
// branches, so each lane gets exactly the bits the scalar code gives. Nothing goes
// through floating-point arithmetic: FTZ/DAZ modes, rounding modes and the hardware's
// NaN rules cannot change a result. The one float instruction used, int -> f32 of a
// value below 2^24, is exact and normal in every mode; it serves as a leading-zero count.
#if defined(LOWBIT_CPU_CONVERT_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_CPU_CONVERT_SIMD_INL_H_
#undef LOWBIT_CPU_CONVERT_SIMD_INL_H_
#else
#define LOWBIT_CPU_CONVERT_SIMD_INL_H_
#endif

#include <hwy/highway.h>

#include <bit>
#include <cstdint>

#include "lowbit/numeric.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace simd_convert {

namespace hn = hwy::HWY_NAMESPACE;
using numeric_detail::MiniFloat;
using numeric_detail::Specials;

// ---- f32 -> narrow formats ------------------------------------------------------------

/// On EncodeMiniFloat's subnormal path, formats with at most this many subnormal codes
/// round by comparing against the midpoints instead of with variable shifts. SSE4 and
/// SSSE3 emulate variable shifts slowly: compares win up to f8e4m3fn's 8 codes. AVX2
/// and AVX3 shift natively (f8e4m3fn and f4e2m1 take EncodeMiniFloatOneShift there):
/// compares still win for f8e5m2's 4.
#if HWY_TARGET <= HWY_AVX2
inline constexpr int kMaxSubnormalThresholds = 4;
#else
inline constexpr int kMaxSubnormalThresholds = 8;
#endif

/// The f32 bit pattern of the midpoint between F's subnormal codes k and k + 1, i.e.
/// (2k + 1) * 2^(emin - M - 1), exact in f32.
template <MiniFloat F>
constexpr uint32_t SubnormalMidpoint(int k) {
  constexpr int p = 1 - F.bias - F.man_bits - 1;
  static_assert(p >= -126, "midpoints must be normal f32 numbers");
  return std::bit_cast<uint32_t>(static_cast<float>(2 * k + 1) *
                                 std::bit_cast<float>(static_cast<uint32_t>(p + 127) << 23));
}

/// encode_from_f32's subnormal branch for |x| (bits `a`) below F's smallest normal:
/// the count of midpoints below |x|, where a tie counts when it rounds up to an even
/// code. Since f32 bit patterns of positive numbers order like the numbers, the compares
/// are integer compares. Crossing the last midpoint gives the smallest normal code, as
/// numeric.hpp's rounding does.
template <MiniFloat F, class D, class V = hn::Vec<D>>
HWY_INLINE V SubnormalByThresholds(D d, V a) {
  const hn::RebindToSigned<D> di;
  const auto ai = hn::BitCast(di, a);
  auto code = hn::Zero(di);
  for (int k = 0; k < (1 << F.man_bits); ++k) {
    // Tie between k and k + 1: rounds to k + 1 when that is even, so count a >= t then.
    const uint32_t t = SubnormalMidpoint<F>(k) - ((k + 1) % 2 == 0 ? 1u : 0u);
    code = hn::Sub(code, hn::VecFromMask(di, hn::Gt(ai, hn::Set(di, static_cast<int32_t>(t)))));
  }
  return hn::BitCast(d, code);
}

/// encode_from_f32's subnormal branch with variable shifts, for formats with many
/// subnormal codes (f16). value = m * 2^(e - 23); the code is m >> s rounded to nearest
/// even, with s = 23 + emin - M - e = (151 - bias - M) - max(expf, 1). The exponent is
/// clamped into the subnormal range so every lane's shift count stays in [1, 25] (larger
/// counts give 0 as numeric.hpp's s > 25 case does, since m < 2^24 <= half).
template <MiniFloat F, class D, class V = hn::Vec<D>>
HWY_INLINE V SubnormalByShift(D d, V a) {
  constexpr int kEmin = 1 - F.bias;
  const V expf = hn::ShiftRight<23>(a);
  const V one = hn::Set(d, 1u);
  const V m = hn::Or(hn::And(a, hn::Set(d, 0x7fffffu)), hn::ShiftLeft<23>(hn::Min(expf, one)));
  const V expc = hn::Min(hn::Max(expf, one), hn::Set(d, static_cast<uint32_t>(kEmin + 127 - 1)));
  const V s = hn::Min(hn::Sub(hn::Set(d, static_cast<uint32_t>(151 - F.bias - F.man_bits)), expc),
                      hn::Set(d, 25u));
  const V half_minus_one = hn::Sub(hn::Shl(one, hn::Sub(s, one)), one);
  const V q_lsb = hn::And(hn::Shr(m, s), one);
  return hn::Shr(hn::Add(hn::Add(m, half_minus_one), q_lsb), s);
}

/// encode_from_f32's NaN rule on the lanes of `a` (|x| bits) that are NaN: `out` keeps
/// the other lanes. `sign` is x's sign at F's sign bit.
template <MiniFloat F, bool kNanPayload, class D, class V = hn::Vec<D>>
HWY_INLINE V ApplyNaN(D d, V a, V sign, V out) {
  const hn::RebindToSigned<D> di;
  const auto nan = hn::RebindMask(d, hn::Gt(hn::BitCast(di, a), hn::Set(di, 0x7f800000)));
  V nan_out;
  if constexpr (F.specials == Specials::none) {
    // ml_dtypes: NaN into a format without NaN gives a zero of the opposite sign.
    nan_out = hn::Xor(sign, hn::Set(d, F.sign_bit()));
  } else if constexpr (kNanPayload) {
    static_assert(F.exp_bits == 5 && F.man_bits == 10, "NaN payloads are kept for f16 only");
    const V payload =
        hn::Max(hn::ShiftRight<13>(hn::And(a, hn::Set(d, 0x7fffffu))), hn::Set(d, 1u));
    nan_out = hn::Or(sign, hn::Or(hn::Set(d, 0x7c00u), payload));
  } else {
    nan_out = hn::Or(sign, hn::Set(d, F.nan_code()));
  }
  return hn::IfThenElse(nan, nan_out, out);
}

/// encode_from_f32<F> without branches, for targets with native variable shifts (AVX2,
/// AVX3) and formats whose subnormal range is common in real data (fp8, fp4: values
/// under 2^-6 resp. 1.0). Normal and subnormal results share one rounding: the value
/// v = code-aligned mantissa (re-biased exponent above it for normal results) is shifted
/// right by s = shift (normal) or shift + (min normal exponent - max(expf, 1))
/// (subnormal, clamped to 25 as in numeric.hpp) and rounded to nearest even. A data-
/// dependent branch to a subnormal path would mispredict on a good share of vectors,
/// and each mispredict also drains the loads in flight.
template <MiniFloat F, bool kNanPayload, class D, class V = hn::Vec<D>>
HWY_INLINE V EncodeMiniFloatOneShift(D d, V x, V ovf_code) {
  const hn::RebindToSigned<D> di;
  constexpr int kShift = 23 - F.man_bits;
  constexpr int kMinNormalExp = 1 - F.bias + 127;  // biased f32 exponent of F's min normal
  constexpr int kCodeBits = F.exp_bits + F.man_bits;
  // f32 subnormals (expf == 0) get the largest shift, 25, and round to 0 from any m
  // below 2^24: so they may carry the implicit bit like everyone else.
  static_assert(kMinNormalExp + kShift >= 25, "expf == 0 must clamp to s = 25");
  const V one = hn::Set(d, 1u);

  const V a = hn::And(x, hn::Set(d, 0x7fffffffu));
  const V sign = hn::ShiftRight<31 - kCodeBits>(hn::And(x, hn::Set(d, 0x80000000u)));
  // s = shift + (kMinNormalExp - expf) clamped to [shift, 25]; signed, since large
  // exponents make the difference negative.
  const auto s_raw =
      hn::Sub(hn::Set(di, kMinNormalExp + kShift), hn::BitCast(di, hn::ShiftRight<23>(a)));
  const V s = hn::BitCast(d, hn::Max(hn::Min(s_raw, hn::Set(di, 25)), hn::Set(di, kShift)));
  const auto subnormal = hn::RebindMask(d, hn::Gt(hn::BitCast(di, s), hn::Set(di, kShift)));
  // Normal: the re-biased pattern (exponent above the mantissa); subnormal: the
  // mantissa with its implicit bit.
  const V normal_v = hn::Sub(a, hn::Set(d, static_cast<uint32_t>(127 - F.bias) << 23));
  const V m = hn::Or(hn::And(a, hn::Set(d, 0x7fffffu)), hn::Set(d, 0x800000u));
  const V v = hn::IfThenElse(subnormal, m, normal_v);
  // Round to nearest even: add half - 1 = 2^(s-1) - 1 and the lsb of the result.
  const V half_minus_one = hn::Shr(hn::Set(d, 0xffffffffu), hn::Sub(hn::Set(d, 33u), s));
  const V q_lsb = hn::And(hn::Shr(v, s), one);
  V code = hn::Shr(hn::Add(hn::Add(v, half_minus_one), q_lsb), s);
  // Overflow and +-Inf (NaN too, fixed below) have codes past max; ovf_code is max or
  // the next code up, so a min maps them all to it. Subnormal lanes never get there.
  code = hn::Min(code, ovf_code);
  return ApplyNaN<F, kNanPayload>(d, a, sign, hn::Or(sign, code));
}

/// numeric_detail::encode_from_f32<F> on every lane of `x` (f32 bit patterns). The code
/// is returned in the low bits of each u32 lane. `ovf_code` is the code (without sign)
/// of finite overflow under the caller's Saturation, see overflow_code() in
/// convert_simd.cpp; numeric.hpp gives +-Inf that same code in every format and mode.
/// kNanPayload selects f32_to_f16's NaN rule (keep the top 10 payload bits, 1 if they
/// vanish) over the canonical NaN.
template <MiniFloat F, bool kNanPayload = false, class D, class V = hn::Vec<D>>
HWY_INLINE V EncodeMiniFloat(D d, V x, V ovf_code) {
#if HWY_TARGET <= HWY_AVX2
  // Formats whose smallest normal is 2^-6 or more (f8e4m3fn, f4e2m1) see subnormal
  // results all the time; the others rarely, and their short path is cheaper.
  if constexpr (F.bias <= 7) return EncodeMiniFloatOneShift<F, kNanPayload>(d, x, ovf_code);
#endif
  const hn::RebindToSigned<D> di;
  constexpr int kShift = 23 - F.man_bits;
  constexpr int kEmin = 1 - F.bias;
  constexpr uint32_t kMinNormalSrc = static_cast<uint32_t>(kEmin + 127) << 23;
  constexpr int kCodeBits = F.exp_bits + F.man_bits;

  const V a = hn::And(x, hn::Set(d, 0x7fffffffu));
  const V sign = hn::ShiftRight<31 - kCodeBits>(hn::And(x, hn::Set(d, 0x80000000u)));
  const auto ai = hn::BitCast(di, a);

  // Normal range: re-bias in place and round to nearest even (numeric.hpp's first
  // branch). Lanes outside the normal range compute garbage here and are replaced below.
  V r = hn::Sub(a, hn::Set(d, static_cast<uint32_t>(127 - F.bias) << 23));
  r = hn::Add(r, hn::Add(hn::Set(d, (1u << (kShift - 1)) - 1u),
                         hn::And(hn::ShiftRight<kShift>(r), hn::Set(d, 1u))));
  V code = hn::ShiftRight<kShift>(r);
  // All values fit in 31 bits, so signed compares (native on every x86 target) are exact.
  const auto below_normal =
      hn::RebindMask(d, hn::Lt(ai, hn::Set(di, static_cast<int32_t>(kMinNormalSrc))));
  // Overflow of the normal-range code; Inf and NaN land here too (exponent all ones
  // gives a code past max in every format). Lanes below the normal range hold garbage
  // here: masked out.
  const auto overflow = hn::AndNot(
      below_normal, hn::RebindMask(d, hn::Gt(hn::BitCast(di, code),
                                             hn::Set(di, static_cast<int32_t>(F.max_code())))));

  // A format with f32's exponent range (bf16) rounds subnormal inputs with the same
  // formula: the dropped bits are the same bits. Others take numeric.hpp's second branch.
  constexpr bool kSubnormalPath = F.bias != 127;
  if constexpr (!kSubnormalPath) {
    if (HWY_LIKELY(hn::AllFalse(d, overflow))) return hn::Or(sign, code);
  } else {
    // Zeros are common (ReLU outputs, padding) and need no subnormal rounding: keep them
    // on the short path.
    const auto zero = hn::Eq(a, hn::Zero(d));
    const auto special = hn::Or(hn::AndNot(zero, below_normal), overflow);
    if (HWY_LIKELY(hn::AllFalse(d, special)))
      return hn::Or(sign, hn::IfThenZeroElse(below_normal, code));

    V code_sub;
    if constexpr ((1 << F.man_bits) <= kMaxSubnormalThresholds) {
      code_sub = SubnormalByThresholds<F>(d, a);
    } else {
      code_sub = SubnormalByShift<F>(d, a);
    }
    code = hn::IfThenElse(below_normal, code_sub, code);
  }
  // A subnormal that rounds up lands on the smallest normal code, never past max.
  code = hn::IfThenElse(overflow, ovf_code, code);
  V out = hn::Or(sign, code);

  return ApplyNaN<F, kNanPayload>(d, a, sign, out);
}

/// EncodeMiniFloatOneShift for bf16 patterns, in u16 lanes (twice the lanes per vector):
/// a bf16 pattern b is the f32 pattern b << 16, whose 16 low zero bits change neither
/// the rounding nor any comparison, so the same steps work on the top half. Only worth
/// it where 16-bit variable shifts are native (AVX3); for fp8 and fp4 codes only. The
/// caller may also pass f32 patterns rounded to odd at bit 16 (convert_simd.cpp).
template <MiniFloat F, class D16, class V16 = hn::Vec<D16>>
HWY_INLINE V16 EncodeMiniFloatFromBF16(D16 d, V16 b, V16 ovf_code) {
  static_assert(F.man_bits < 7 && F.exp_bits + F.man_bits <= 7, "codes must fit 8 bits");
  const hn::RebindToSigned<D16> di;
  constexpr int kShift = 7 - F.man_bits;
  constexpr int kMinNormalExp = 1 - F.bias + 127;
  constexpr int kCodeBits = F.exp_bits + F.man_bits;
  // m < 2^8, so a shift of 9 already rounds everything to 0 (half = 2^8 > m).
  constexpr int kMaxShift = 9;
  static_assert(kMinNormalExp + kShift >= kMaxShift, "expf == 0 must clamp to the max shift");
  const V16 one = hn::Set(d, uint16_t{1});

  const V16 a = hn::And(b, hn::Set(d, uint16_t{0x7fff}));
  const V16 sign = hn::ShiftRight<15 - kCodeBits>(hn::And(b, hn::Set(d, uint16_t{0x8000})));
  const auto s_raw =
      hn::Sub(hn::Set(di, int16_t{kMinNormalExp + kShift}), hn::BitCast(di, hn::ShiftRight<7>(a)));
  const V16 s = hn::BitCast(
      d, hn::Max(hn::Min(s_raw, hn::Set(di, int16_t{kMaxShift})), hn::Set(di, int16_t{kShift})));
  const auto subnormal =
      hn::RebindMask(d, hn::Gt(hn::BitCast(di, s), hn::Set(di, int16_t{kShift})));
  const V16 normal_v = hn::Sub(a, hn::Set(d, static_cast<uint16_t>((127 - F.bias) << 7)));
  const V16 m = hn::Or(hn::And(a, hn::Set(d, uint16_t{0x7f})), hn::Set(d, uint16_t{0x80}));
  const V16 v = hn::IfThenElse(subnormal, m, normal_v);
  const V16 half_minus_one =
      hn::Shr(hn::Set(d, uint16_t{0xffff}), hn::Sub(hn::Set(d, uint16_t{17}), s));
  const V16 q_lsb = hn::And(hn::Shr(v, s), one);
  V16 code = hn::Shr(hn::Add(hn::Add(v, half_minus_one), q_lsb), s);
  code = hn::Min(code, ovf_code);
  V16 out = hn::Or(sign, code);
  const auto nan = hn::RebindMask(d, hn::Gt(hn::BitCast(di, a), hn::Set(di, int16_t{0x7f80})));
  if constexpr (F.specials == Specials::none) {
    return hn::IfThenElse(nan, hn::Xor(sign, hn::Set(d, static_cast<uint16_t>(F.sign_bit()))), out);
  } else {
    return hn::IfThenElse(nan, hn::Or(sign, hn::Set(d, static_cast<uint16_t>(F.nan_code()))), out);
  }
}

/// f32_to_e8m0 on every lane (code in the low 8 bits). `ovf_code` is 0xff, or 0xfe
/// with Saturation::finite; +-Inf's exponent field overflows the same way.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V EncodeE8M0(D d, V x, V ovf_code) {
  const hn::RebindToSigned<D> di;
  const auto xi = hn::BitCast(di, x);
  // Negative, zero and NaN inputs have no code: NaN (0xff).
  const auto invalid =
      hn::RebindMask(d, hn::Or(hn::Lt(xi, hn::Set(di, 1)), hn::Gt(xi, hn::Set(di, 0x7f800000))));
  const V one = hn::Set(d, 1u);
  // Normal: the exponent rounds half up on the top mantissa bit.
  const V normal = hn::Add(hn::ShiftRight<23>(x), hn::And(hn::ShiftRight<22>(x), one));
  // Subnormal (x < 2^23): code 1 strictly above 2^-127 (pattern 0x400000), else 0.
  const V sub = hn::IfThenElseZero(hn::RebindMask(d, hn::Gt(xi, hn::Set(di, 0x400000))), one);
  V code = hn::IfThenElse(hn::RebindMask(d, hn::Lt(xi, hn::Set(di, 0x800000))), sub, normal);
  code = hn::IfThenElse(hn::Eq(code, hn::Set(d, 0xffu)), ovf_code, code);
  return hn::IfThenElse(invalid, hn::Set(d, 0xffu), code);
}

// ---- narrow formats -> f32 --------------------------------------------------------------

/// numeric_detail::decode_to_f32<F> on every lane (`c` holds a code in its low bits,
/// nothing above). kNanPayload gives f16_to_f32's rule: NaN keeps its payload.
template <MiniFloat F, bool kNanPayload = false, class D, class V = hn::Vec<D>>
HWY_INLINE V DecodeMiniFloat(D d, V c) {
  const hn::RebindToSigned<D> di;
  const hn::Rebind<float, D> df;
  constexpr int kCodeBits = F.exp_bits + F.man_bits;
  const V sign = hn::ShiftLeft<31 - kCodeBits>(hn::And(c, hn::Set(d, F.sign_bit())));
  const V mag = hn::And(c, hn::Set(d, F.sign_bit() - 1u));
  const auto magi = hn::BitCast(di, mag);

  const V normal = hn::Add(hn::ShiftLeft<23 - F.man_bits>(mag),
                           hn::Set(d, static_cast<uint32_t>(127 - F.bias) << 23));
  // Subnormal: man * 2^(1 - bias - M). int -> f32 of man (< 2^M) is exact and puts the
  // leading bit into the exponent; subtracting (bias + M - 1) from that exponent scales
  // it. Max() maps man == 0 to +0 instead of wrapping.
  const V man_f = hn::BitCast(d, hn::ConvertTo(df, magi));
  const V adjust = hn::Set(d, static_cast<uint32_t>(F.bias + F.man_bits - 1) << 23);
  const V sub = hn::Sub(hn::Max(man_f, adjust), adjust);
  V out =
      hn::IfThenElse(hn::RebindMask(d, hn::Lt(magi, hn::Set(di, 1 << F.man_bits))), sub, normal);

  if constexpr (F.specials == Specials::ieee) {
    const auto special =
        hn::RebindMask(d, hn::Gt(magi, hn::Set(di, static_cast<int32_t>(F.inf_code()) - 1)));
    V special_out;
    if constexpr (kNanPayload) {
      special_out =
          hn::Or(hn::Set(d, 0x7f800000u),
                 hn::ShiftLeft<23 - F.man_bits>(hn::And(mag, hn::Set(d, (1u << F.man_bits) - 1u))));
    } else {
      special_out = hn::IfThenElse(hn::Eq(mag, hn::Set(d, F.inf_code())), hn::Set(d, 0x7f800000u),
                                   hn::Set(d, 0x7fc00000u));
    }
    out = hn::IfThenElse(special, special_out, out);
  } else if constexpr (F.specials == Specials::nan_only) {
    out = hn::IfThenElse(hn::Eq(mag, hn::Set(d, F.nan_code())), hn::Set(d, 0x7fc00000u), out);
  }
  return hn::Or(sign, out);
}

/// e8m0_to_f32 on every lane.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V DecodeE8M0(D d, V c) {
  V out = hn::ShiftLeft<23>(c);
  out = hn::IfThenElse(hn::Eq(c, hn::Zero(d)), hn::Set(d, 0x00400000u), out);  // 2^-127
  return hn::IfThenElse(hn::Eq(c, hn::Set(d, 0xffu)), hn::Set(d, 0x7fc00000u), out);
}

// ---- f64 <-> f32 ---------------------------------------------------------------------

/// f64_to_f32 on every u64 lane of `b` (f64 bit patterns); the f32 bits are returned in
/// the low half of each lane.
template <class D64, class V64 = hn::Vec<D64>>
HWY_INLINE V64 F64ToF32Bits(D64 d, V64 b) {
  const hn::RebindToSigned<D64> di;
  const V64 one = hn::Set(d, uint64_t{1});
  const V64 a = hn::And(b, hn::Set(d, 0x7fffffffffffffffull));
  const auto ai = hn::BitCast(di, a);
  const V64 sign = hn::ShiftRight<32>(hn::And(b, hn::Set(d, 0x8000000000000000ull)));

  // Normal result (e >= -126): re-bias, round to nearest even, overflow to Inf.
  V64 r = hn::Sub(a, hn::Set(d, uint64_t{1023 - 127} << 52));
  r = hn::Add(r,
              hn::Add(hn::Set(d, (uint64_t{1} << 28) - 1u), hn::And(hn::ShiftRight<29>(r), one)));
  r = hn::ShiftRight<29>(r);
  const auto r_ovf =
      hn::RebindMask(d, hn::Gt(hn::BitCast(di, r), hn::Set(di, int64_t{0x7f7fffff})));
  V64 code = hn::IfThenElse(r_ovf, hn::Set(d, uint64_t{0x7f800000}), r);

  const auto below_normal =
      hn::RebindMask(d, hn::Lt(ai, hn::Set(di, static_cast<int64_t>(uint64_t{1023 - 126} << 52))));
  if (!hn::AllFalse(d, below_normal)) {
    // Subnormal or zero f32: s = 926 - max(expf, 1), clamped to [30, 54] (larger shifts
    // give 0, as numeric.hpp's s > 54 case; expf = 0 and 1 both clamp to 54).
    const V64 expf = hn::ShiftRight<52>(a);
    const V64 m =
        hn::Or(hn::And(a, hn::Set(d, 0xfffffffffffffull)),
               hn::IfThenElseZero(hn::Ne(expf, hn::Zero(d)), hn::Set(d, uint64_t{1} << 52)));
    const V64 ec =
        hn::IfThenElse(hn::RebindMask(d, hn::Gt(hn::BitCast(di, expf), hn::Set(di, int64_t{896}))),
                       hn::Set(d, uint64_t{896}), expf);
    const V64 s_raw = hn::Sub(hn::Set(d, uint64_t{926}), ec);
    const V64 s =
        hn::IfThenElse(hn::RebindMask(d, hn::Gt(hn::BitCast(di, s_raw), hn::Set(di, int64_t{54}))),
                       hn::Set(d, uint64_t{54}), s_raw);
    const V64 half_minus_one = hn::Sub(hn::Shl(one, hn::Sub(s, one)), one);
    const V64 q_lsb = hn::And(hn::Shr(m, s), one);
    const V64 code_sub = hn::Shr(hn::Add(hn::Add(m, half_minus_one), q_lsb), s);
    code = hn::IfThenElse(below_normal, code_sub, code);
  }
  const V64 inf = hn::Set(d, 0x7ff0000000000000ull);
  code = hn::IfThenElse(hn::Eq(a, inf), hn::Set(d, uint64_t{0x7f800000}), code);
  const V64 nan_code = hn::Or(hn::Set(d, uint64_t{0x7fc00000}),
                              hn::And(hn::ShiftRight<29>(a), hn::Set(d, uint64_t{0x7fffff})));
  code = hn::IfThenElse(hn::RebindMask(d, hn::Gt(ai, hn::BitCast(di, inf))), nan_code, code);
  return hn::Or(sign, code);
}

/// The two halves of f32_to_f64 that are lane-wise in u32: returns the f32 lanes
/// prepared so that f64 bits = (u64(body) << 29) + (u64(hi) << 32), see F32ToF64Bits.
template <class D, class V = hn::Vec<D>>
HWY_INLINE void F32ToF64Parts(D d, V x, V& body, V& hi) {
  const hn::RebindToSigned<D> di;
  const hn::Rebind<float, D> df;
  const V a = hn::And(x, hn::Set(d, 0x7fffffffu));
  const auto ai = hn::BitCast(di, a);
  const auto sub = hn::RebindMask(d, hn::Lt(ai, hn::Set(di, 0x800000)));
  const auto nan = hn::RebindMask(d, hn::Gt(ai, hn::Set(di, 0x7f800000)));
  const auto inf_nan = hn::RebindMask(d, hn::Gt(ai, hn::Set(di, 0x7f7fffff)));
  // A subnormal f32 a * 2^-149 is normal in f64: int -> f32 of a (exact) normalizes it,
  // and the f64 exponent is then lowered by 149 (747 = 896 - 149).
  const V a_norm = hn::BitCast(d, hn::ConvertTo(df, ai));
  body = hn::IfThenElse(sub, a_norm, a);
  // NaN: quieted (x86 cvtss2sd), payload kept.
  body = hn::IfThenElse(nan, hn::Or(body, hn::Set(d, 0x400000u)), body);
  // f64 exponent = f32 exponent + 896 (normal), + 747 (subnormal, via a_norm),
  // + 1792 (Inf/NaN: 255 -> 2047); zero stays zero.
  V adj = hn::IfThenElse(sub, hn::Set(d, 747u), hn::Set(d, 896u));
  adj = hn::IfThenElse(inf_nan, hn::Set(d, 1792u), adj);
  adj = hn::IfThenZeroElse(hn::Eq(a, hn::Zero(d)), adj);
  // The exponent sum stays below 2048, so the sign bit can ride in the same word.
  hi = hn::Or(hn::ShiftLeft<20>(adj), hn::And(x, hn::Set(d, 0x80000000u)));
}

/// Combines F32ToF64Parts' halves (promoted to u64 lanes) into f64 bit patterns.
template <class D64, class V64 = hn::Vec<D64>>
HWY_INLINE V64 F32ToF64Bits(D64, V64 body, V64 hi) {
  return hn::Add(hn::ShiftLeft<29>(body), hn::ShiftLeft<32>(hi));
}

}  // namespace simd_convert
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_CPU_CONVERT_SIMD_INL_H_
