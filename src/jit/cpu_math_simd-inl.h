// jit_math.inc's f32 formulas on Highway vectors, for Highway's foreach_target pattern:
// the vector math of the CPU fusion kernel (cpu_eval_simd.cpp), and of bench_fusion_cpu's
// hand-written loop, which measures what the same arithmetic costs with no interpreter.
//
// Each formula restates its scalar form with the same operations in the same order (see
// cpu_eval_simd.cpp's comment for the rules that make the bits equal). x86 targets with FMA
// only (HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2); the including file turns FMA contraction
// off.
#if defined(LOWBIT_JIT_CPU_MATH_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_JIT_CPU_MATH_SIMD_INL_H_
#undef LOWBIT_JIT_CPU_MATH_SIMD_INL_H_
#else
#define LOWBIT_JIT_CPU_MATH_SIMD_INL_H_
#endif

#include <hwy/highway.h>

#include <cstddef>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace fusion_simd {

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2

namespace hn = hwy::HWY_NAMESPACE;
using D = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<D>;
using DU = hn::RebindToUnsigned<D>;
using V = hn::Vec<D>;
using VI = hn::Vec<DI>;
using VU = hn::Vec<DU>;

HWY_INLINE V F(float x) { return hn::Set(D(), x); }
HWY_INLINE VI I(int32_t x) { return hn::Set(DI(), x); }
HWY_INLINE VU U(uint32_t x) { return hn::Set(DU(), x); }
HWY_INLINE VU bits(V v) { return hn::BitCast(DU(), v); }
HWY_INLINE V from_bits(VU v) { return hn::BitCast(D(), v); }
HWY_INLINE V from_bits(VI v) { return hn::BitCast(D(), v); }

/// `a < b ? a : b` and `a > b ? a : b` (x86 minps / maxps, see the file comment).
HWY_INLINE V lt_select(V a, V b) { return hn::Min(a, b); }
HWY_INLINE V gt_select(V a, V b) { return hn::Max(a, b); }

/// c0 + z (c1 + z (c2 + ... + z cn)), plain multiplies and adds (no FMA), innermost first,
/// as jit_math's nested polynomials are written.
template <size_t K>
HWY_INLINE V horner(V z, const float (&c)[K]) {
  V acc = F(c[K - 1]);
  for (size_t i = K - 1; i-- > 0;) acc = F(c[i]) + z * acc;
  return acc;
}

// ---- jit_math.inc, f32, on vectors --------------------------------------------------------

HWY_INLINE V sign_of(V x) { return from_bits(bits(x) & U(0x80000000u)); }
HWY_INLINE V with_sign(V mag, V x) { return from_bits(bits(mag) | (bits(x) & U(0x80000000u))); }

HWY_INLINE V lb_min(V a, V b) { return hn::IfThenElse(hn::IsNaN(b), b, lt_select(b, a)); }
HWY_INLINE V lb_max(V a, V b) { return hn::IfThenElse(hn::IsNaN(b), b, gt_select(b, a)); }

/// lb_exp_poly's polynomial: e^r for the reduced argument r.
HWY_INLINE V exp_poly_r(V r) {
  const V q = hn::MulAdd(hn::MulAdd(hn::MulAdd(hn::MulAdd(F(0x1.6a23ccp-10f), r, F(0x1.123a1p-7f)),
                                               r, F(0x1.5558f2p-5f)),
                                    r, F(0x1.555492p-3f)),
                         r, F(0x1.fffffcp-2f));
  return F(1.0f) + hn::MulAdd(r * r, q, r);
}

/// lb_exp_poly: e^r for xc = k ln2 + r, and kb (k in its low mantissa bits).
HWY_INLINE V exp_poly(V xc, V& kb) {
  kb = hn::MulAdd(xc, F(0x1.715476p+0f), F(0x1.8p+23f));
  const V kf = kb - F(0x1.8p+23f);
  const V r = hn::MulAdd(kf, F(-0x1.7f7d1cp-20f), hn::MulAdd(kf, F(-0x1.62e4p-1f), xc));
  return exp_poly_r(r);
}
HWY_INLINE VI exp_k(V kb) { return hn::BitCast(DI(), bits(kb) - U(0x4b400000u)); }

HWY_INLINE V lb_exp(V x) {
  const V xc = gt_select(F(-104.0f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  const VI k = exp_k(kb);
  const VI k1 = hn::ShiftRight<1>(k);  // arithmetic, as C++20's >> on int
  const VI k2 = k - k1;
  const V s1 = from_bits(hn::ShiftLeft<23>(k1 + I(127)));
  const V s2 = from_bits(hn::ShiftLeft<23>(k2 + I(127)));
  return (p * s1) * s2;
}

HWY_INLINE V lb_exp_n(V x) {
  const V xc = gt_select(F(-86.5f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  return (p * from_bits(hn::ShiftLeft<23>(exp_k(kb) + I(126)))) * F(2.0f);
}

/// 1 + lb_exp_n(x) with the doubling and the addition in one FMA: p s 2 is exact (or
/// overflows, and then so does the sum), so fma(p s, 2, 1) rounds 1 + e once, as the two
/// operations do: the same bits as `1 + lb_exp_n(x)`, one instruction fewer.
HWY_INLINE V lb_exp_n1p(V x) {
  const V xc = gt_select(F(-86.5f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  return hn::MulAdd(p * from_bits(hn::ShiftLeft<23>(exp_k(kb) + I(126))), F(2.0f), F(1.0f));
}

/// lb_exp_n1p(-x), sigmoid's and silu's denominator, without the negation and, on AVX-512,
/// with the scaling in one vscalefps: the same bits as lb_exp_n1p(hn::Neg(x)) for every x
/// but NaN (a NaN stays NaN; its sign may differ). The clamp mirrored: m = min(86.5,
/// max(-88.8, x)) is exactly -xc, signed zeros and infinities included; kb = fma(xc, log2e,
/// magic) is -(m log2e) + magic and the reduction's first step fma(kf, -ln2_hi, xc) is
/// -(kf ln2_hi) - m: the same exact values, rounded once. e = p 2^k rounds to itself for
/// k in [-125, 128] (p in [0.7, 1.42]: a normal value, or at k = 128 with p >= 1 infinity,
/// as the FMA's sum is then), so 1 + e rounds what fma(p 2^(k-1), 2, 1) rounds. Three
/// instructions fewer on AVX-512, one elsewhere.
HWY_INLINE V lb_exp_n1p_neg(V x) {
  const V m = lt_select(F(86.5f), gt_select(F(-88.8f), x));
  const V kb = hn::NegMulAdd(m, F(0x1.715476p+0f), F(0x1.8p+23f));
  const V kf = kb - F(0x1.8p+23f);
  const V r = hn::MulAdd(kf, F(-0x1.7f7d1cp-20f), hn::NegMulSub(kf, F(0x1.62e4p-1f), m));
  const V p = exp_poly_r(r);
#if HWY_TARGET <= HWY_AVX3
  return F(1.0f) + V{_mm512_scalef_ps(p.raw, kf.raw)};
#else
  return hn::MulAdd(p * from_bits(hn::ShiftLeft<23>(exp_k(kb) + I(126))), F(2.0f), F(1.0f));
#endif
}

HWY_INLINE V lb_log(V x) {
  const DI di;
  const VU ux = bits(x);
  const auto sub = hn::ShiftRight<23>(ux) == U(0);  // ux < 0x00800000u
  VU ix = bits(hn::IfThenElse(hn::RebindMask(D(), sub), x * F(0x1p25f), x));
  ix = ix + U(0x3f800000u - 0x3f3504f3u);
  const VI k = hn::BitCast(di, hn::ShiftRight<23>(ix)) - I(0x7f) -
               hn::IfThenElseZero(hn::RebindMask(di, sub), I(25));
  ix = (ix & U(0x007fffffu)) + U(0x3f3504f3u);
  const V f = from_bits(ix) - F(1.0f);
  const V s = f / (F(2.0f) + f);
  const V z = s * s;
  const V w = z * z;
  const V t1 = w * (F(0xccce13.0p-25f) + w * F(0xf89e26.0p-26f));
  const V t2 = z * (F(0xaaaaaa.0p-24f) + w * F(0x91e9ee.0p-25f));
  const V R = t2 + t1;
  const V hfsq = F(0.5f) * f * f;
  const V dk = hn::ConvertTo(D(), k);
  const V r = s * (hfsq + R) + dk * F(0x1.2fefa2p-17f) - hfsq + f + dk * F(0x1.62e3p-1f);
  // The checks in the reverse order of jit_math's chain of ternaries.
  const VI sx = hn::BitCast(di, ux);
  V res = hn::IfThenElse(hn::RebindMask(D(), sx > I(0x7f7fffff)), x, r);
  res = hn::IfThenElse(hn::RebindMask(D(), sx < I(0)), from_bits(U(0x7fc00000u)), res);
  res = hn::IfThenElse(hn::RebindMask(D(), (ux & U(0x7fffffffu)) == U(0)),
                       from_bits(U(0xff800000u)), res);
  return res;
}

HWY_INLINE V lb_log1p_pos(V u) {
  const V w = F(1.0f) + u;
  const V d = w - F(1.0f);
  return hn::IfThenElse(d == F(0.0f), u, lb_log(w) * (u / d));
}

HWY_INLINE V lb_tanh(V x) {
  const V a = hn::Abs(x);
  const V e = lb_exp_n(F(2.0f) * a);
  const V z = x * x;
  static constexpr float kQ[] = {-0x1.555556p-2f, 0x1.111106p-3f,  -0x1.ba146p-5f,
                                 0x1.657ccep-6f,  -0x1.177f24p-7f, 0x1.4bb278p-9f};
  const V q = horner(z, kQ);
  const V small = x + (x * z) * q;
  const V big = F(1.0f) - F(2.0f) / (e + F(1.0f));
  return hn::IfThenElse(a < F(0.55f), small, with_sign(big, x));
}

HWY_INLINE V lb_erf(V x) {
  const V a = hn::Abs(x);
  const V z = x * x;
  static constexpr float kQ[] = {0x1.20dd74p+0f, -0x1.81273ep-2f,  0x1.ce2cf8p-4f, -0x1.b7f90cp-6f,
                                 0x1.5405acp-8f, -0x1.a3f6d8p-11f, 0x1.4969cap-14f};
  const V small = x * horner(z, kQ);
  const V ac = hn::IfThenElse(a < F(4.0f), a, F(4.0f));
  const V t = ac - F(2.5f);
  static constexpr float kH[] = {-0x1.8e8b72p+0f, -0x1.69252p-2f,   0x1.cb9fa2p-5f,
                                 -0x1.63cf98p-7f, 0x1.1bc816p-9f,   -0x1.b89558p-12f,
                                 0x1.44de6ep-14f, -0x1.be5506p-17f, 0x1.ad752ap-20f};
  const V h = horner(t, kH);
  const V big = F(1.0f) - lb_exp_n(h - ac * ac);
  const V nan_or_big = hn::IfThenElse(hn::IsNaN(x), x, with_sign(big, x));
  return hn::IfThenElse(a < F(1.0f), small, nan_or_big);
}

/// lb_bf16_bits(v) in the low 16 bits of each lane. The rounding is done on the signed pattern:
/// for every non-NaN v, |v| + 0x8000 stays below 2^31, so adding the rounding increment to
/// sign | magnitude never reaches the sign, and the shift leaves sign | rounded magnitude,
/// jit_math's `code | sign` (8 operations instead of 12).
HWY_INLINE VU lb_bf16_code(V v) {
  const VU x = bits(v);
  const VU hi = hn::ShiftRight<16>(x);
  const VU rounded = hn::ShiftRight<16>(x + U(0x7fffu) + (hi & U(1u)));
  const VU nan_code = hn::OrAnd(U(0x7fc0u), hi, U(0x8000u));  // 0x7fc0 | sign
  return hn::IfThenElse(hn::RebindMask(DU(), hn::IsNaN(v)), nan_code, rounded);
}

/// N bf16 values from p (unaligned) as f32: the bits shifted into the high half.
HWY_INLINE V load_bf16(const uint16_t* p) {
  return from_bits(hn::ShiftLeft<16>(hn::PromoteTo(DU(), hn::LoadU(hn::Rebind<uint16_t, D>(), p))));
}

HWY_INLINE V lb_bf16_round(V v) {  // float_of(lb_bf16_bits(v) << 16)
  return from_bits(hn::ShiftLeft<16>(lb_bf16_code(v)));
}

#endif  // HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2

}  // namespace fusion_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_JIT_CPU_MATH_SIMD_INL_H_
