// The per-element and per-group arithmetic of fake_quantize and its backward: the spec in
// code (docs/formats.md, "Fake quantization and its gradients"). Every kernel (reference,
// SIMD, CUDA) calls these functions or repeats their f32 operations in their order, so
// that every backend gives the same bits.
//
// Products that could feed an addition are spelled mul_rn (on the device __fmul_rn, which
// nvcc never contracts into an FMA; the host files are compiled with fp-contract off).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "formats/groups.hpp"
#include "formats/quant_math.hpp"
#include "lowbit/numeric.hpp"

namespace lowbit::fq {

LOWBIT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// A group's parameters: the scale (the stored value), its f32 reciprocal (0 for a zero
/// scale) and the zero point as an (integral) f32.
struct Params {
  float scale = 0.0f;
  float inv = 0.0f;
  float zero = 0.0f;
};

/// From a given scale and zero point (no validation: see given_scale_ok / given_zero_ok).
LOWBIT_HD Params given_params(float scale, int32_t zero) {
  Params p;
  p.scale = scale;
  p.inv = scale == 0.0f ? 0.0f : 1.0f / scale;
  p.zero = static_cast<float>(zero);
  return p;
}

/// quantize's check_given_scale: finite, >= 0, and 0 or at least 2^-126.
LOWBIT_HD bool given_scale_ok(float s) {
  return s >= 0.0f && s <= FLT_MAX && !(s > 0.0f && s < formats::kMinScale);
}

/// The parameters of a group whose values are not all finite (only reachable without
/// check_finite): NaN scale, zero point 0; every value of the group becomes NaN.
LOWBIT_HD Params non_finite_params() {
  Params p;
  p.scale = numeric_detail::float_of(0x7fc00000u);
  p.inv = p.scale;
  p.zero = 0.0f;
  return p;
}

/// quantize's dynamic rule for integer schemes, from the group's statistics: amax = max |x|,
/// lo = min(0, min x), hi = max(0, max x). `stored` receives the scale to write (the value
/// rounded to the scale dtype), `zero_out` the zero point.
LOWBIT_HD Params int_dynamic_params(float amax, float lo, float hi, bool symmetric, int qmin,
                                    int qmax, Dtype scale_dtype) {
  if (!(amax <= FLT_MAX)) return non_finite_params();
  const formats::IntParams p = symmetric
                                   ? formats::int_symmetric_params(amax, qmax, scale_dtype)
                                   : formats::int_affine_params(lo, hi, qmin, qmax, scale_dtype);
  Params r;
  r.scale = p.scale;
  r.inv = p.inv_scale;
  r.zero = static_cast<float>(p.zero);
  return r;
}

/// quantize's dynamic rule for fp8 (scale = amax / max finite).
LOWBIT_HD Params fp8_dynamic_params(float amax, bool e5m2) {
  if (!(amax <= FLT_MAX)) return non_finite_params();
  Params r;
  r.scale = formats::fp8_scale(amax, e5m2);
  r.inv = r.scale == 0.0f ? 0.0f : 1.0f / r.scale;
  return r;
}

LOWBIT_HD float fp8_max(bool e5m2) { return e5m2 ? 57344.0f : 448.0f; }

// ---- forward ------------------------------------------------------------------------------

/// dequantize(quantize(x)) for integer schemes: r = clamp(rne(x * inv) + zero, qmin, qmax),
/// y = (r - zero) * scale. Equal to formats::int_dequantize(int_quantize(x)): r and zero are
/// integers of at most 32 bits' range here (r - zero exact in f32 for the code ranges).
LOWBIT_HD float forward_int(float x, const Params& p, float qmin, float qmax) {
  float r = formats::round_half_even(mul_rn(x, p.inv)) + p.zero;
  r = r < qmin ? qmin : r;
  r = r > qmax ? qmax : r;
  return (r - p.zero) * p.scale;
}

/// The fp8 value nearest x * inv (saturating to +-max finite), as f32.
LOWBIT_HD float fp8_round(float v, bool e5m2) {
  return e5m2 ? f8e5m2_to_f32(f32_to_f8e5m2(v, Saturation::finite))
              : f8e4m3fn_to_f32(f32_to_f8e4m3fn(v, Saturation::finite));
}

/// dequantize(quantize(x)) for fp8: fp8_value(fp8(x * inv)) * scale.
LOWBIT_HD float forward_fp8(float x, const Params& p, bool e5m2) {
  return fp8_round(mul_rn(x, p.inv), e5m2) * p.scale;
}

// ---- backward -----------------------------------------------------------------------------

/// One element's gradient factors: `inside` (dx = dy there) and c, the derivative of the
/// fake-quantized value with respect to the scale (LSQ): dscale = sum dy * c.
struct Grad {
  bool inside = true;
  float c = 0.0f;
};

/// Integer schemes: v = x * inv, r = rne(v), q = r + zero; inside iff qmin <= q <= qmax;
/// c = r - v inside (exact in f32), qmin - zero below, qmax - zero above.
LOWBIT_HD Grad grad_int(float x, const Params& p, float qmin, float qmax) {
  const float v = mul_rn(x, p.inv);
  const float r = formats::round_half_even(v);
  const float q = r + p.zero;
  Grad g;
  g.inside = q >= qmin && q <= qmax;
  g.c = g.inside ? r - v : (q < qmin ? qmin : qmax) - p.zero;
  return g;
}

/// fp8: v = x * inv; inside iff |v| <= max finite; c = fp8_round(v) - v inside, +-max
/// finite (v's sign) outside.
LOWBIT_HD Grad grad_fp8(float x, const Params& p, bool e5m2) {
  const float v = mul_rn(x, p.inv);
  const float m = fp8_max(e5m2);
  Grad g;
  g.inside = (v < 0.0f ? -v : v) <= m;
  g.c = g.inside ? fp8_round(v, e5m2) - v : (v < 0.0f ? -m : m);
  return g;
}

// ---- exact per-group sums -------------------------------------------------------------------
//
// dscale = sum over the group of dy_i * c_i, where each product is exact in f64 (two f32
// factors). With D = max |dy| over the group (D < 2^eD) and |c| <= C <= 2^eC, every product
// is below 2^(eD + eC); scaled by 2^k, k = 61 - eD - eC, it is below 2^61 and is rounded to
// the nearest integer (ties to even): a fixed grid of 2^-k, 2^-61 of the bound. The
// integers are summed exactly (two int64 words), in any order, and the sum times 2^-k is
// rounded once to f32. So the result does not depend on the order of summation, threads
// or backend; it differs from the exactly rounded sum of the products only through the
// grid (at most n * 2^-62 of the bound D * 2^eC) before the one rounding to f32.

/// The smallest e with v < 2^e for the non-negative f32 of bits `b` (0: -149; Inf / NaN: 129).
LOWBIT_HD int bound_exp(uint32_t b) {
  if (b == 0) return -149;
  if (b >= 0x7f800000u) return 129;
  return formats::floor_log2(numeric_detail::float_of(b)) + 1;
}

/// The smallest e with C <= 2^e, C = max(0.5, |qmin - zero|, |qmax - zero|) (integer schemes;
/// fp8: C = max finite).
LOWBIT_HD int coeff_exp_int(float qmin, float qmax, float zero) {
  float c = 0.5f;
  const float a = qmin - zero < 0.0f ? zero - qmin : qmin - zero;
  const float b = qmax - zero < 0.0f ? zero - qmax : qmax - zero;
  c = a > c ? a : c;
  c = b > c ? b : c;
  int e = -1;
  float p = 0.5f;
  while (p < c && e < 64) {
    p *= 2.0f;
    ++e;
  }
  return e;
}
LOWBIT_HD int coeff_exp_fp8(bool e5m2) { return e5m2 ? 16 : 9; }

/// 2^k as f64, k in [-1022, 1023].
LOWBIT_HD double pow2(int k) {
  return numeric_detail::double_of(static_cast<uint64_t>(k + 1023) << 52);
}

/// The grid exponent k of a sum whose terms are below 2^(e_bound).
LOWBIT_HD int grid_k(int e_bound) { return 61 - e_bound; }

/// rne(a) as an integer, a = product * 2^k (|a| < 2^61 for finite inputs). Non-finite or
/// out-of-range values (only without check_finite) give 0.
LOWBIT_HD int64_t grid_round(double a) {
  if (!(a > -0x1p62 && a < 0x1p62)) return 0;
#if defined(__CUDA_ARCH__)
  return __double2ll_rn(a);
#else
  return static_cast<int64_t>(std::nearbyint(a));
#endif
}

/// An exact sum of grid integers: value = hi * 2^32 + lo. Each term adds its arithmetic-
/// shifted high part to hi (|.| <= 2^29) and its low 32 bits to lo, so up to 2^31 terms
/// fit both words.
struct ExactSum {
  int64_t hi = 0;
  int64_t lo = 0;
};

LOWBIT_HD void exact_add(ExactSum& s, int64_t k) {
  s.hi += k >> 32;
  s.lo += static_cast<int64_t>(static_cast<uint64_t>(k) & 0xffffffffull);
}

LOWBIT_HD int msb128(unsigned __int128 m) {
  const uint64_t h = static_cast<uint64_t>(m >> 64), l = static_cast<uint64_t>(m);
#if defined(__CUDA_ARCH__)
  return h ? 127 - __clzll(static_cast<long long>(h)) : 63 - __clzll(static_cast<long long>(l));
#else
  return h ? 127 - __builtin_clzll(h) : 63 - __builtin_clzll(l);
#endif
}

/// (hi * 2^32 + lo) * 2^-k rounded once to f32 (to nearest, ties to even; +0 for 0; +-Inf
/// past the f32 range). k in [-132, 211]: grid_k of bounds eD + eC in [-150, 193].
LOWBIT_HD float exact_to_f32(int64_t hi, int64_t lo, int k) {
  __extension__ typedef __int128 i128;
  __extension__ typedef unsigned __int128 u128;
  const i128 t = static_cast<i128>(hi) * static_cast<i128>(4294967296ll) + static_cast<i128>(lo);
  if (t == 0) return 0.0f;
  const bool neg = t < 0;
  const u128 m = neg ? static_cast<u128>(-t) : static_cast<u128>(t);
  const int p = msb128(m);
  // Keep the bits of m from position s up: 24 significant bits, or fewer where the result
  // is an f32 subnormal (whose last bit is worth 2^-149 = 2^(s - k)).
  const int s = p - 23 > k - 149 ? p - 23 : k - 149;
  double d;
  if (s <= 0) {
    d = static_cast<double>(static_cast<uint64_t>(m)) * pow2(-k);  // m < 2^24: exact
  } else {
    uint64_t mant = static_cast<uint64_t>(m >> s);
    const u128 rem = m & ((static_cast<u128>(1) << s) - 1);
    const u128 half = static_cast<u128>(1) << (s - 1);
    if (rem > half || (rem == half && (mant & 1u))) ++mant;  // mant <= 2^24
    d = static_cast<double>(mant) * pow2(s - k);             // exact
  }
  float f;
  if (d > static_cast<double>(FLT_MAX)) {
    f = numeric_detail::float_of(0x7f800000u);
  } else {
    f = static_cast<float>(d);  // exact: d is an f32 value
  }
  return neg ? -f : f;
}

/// Elements in group g (GroupMap of a tensor of n elements).
LOWBIT_HD int64_t group_numel(const formats::GroupMap& m, int64_t n, int64_t g) {
  switch (m.granularity) {
    case Granularity::tensor:
      return n;
    case Granularity::token:
      return m.k;
    case Granularity::channel:
      return m.channels > 0 ? n / m.channels : 0;
    case Granularity::block: {
      const int64_t b = g % m.blocks_k;
      const int64_t w = m.k - b * m.block;
      return w < m.block ? w : m.block;
    }
    case Granularity::block2d: {
      const int64_t bk = g % m.blocks_k, br = (g / m.blocks_k) % m.blocks_r;
      const int64_t w = m.k - bk * m.block, h = m.rows - br * m.block;
      return (w < m.block ? w : m.block) * (h < m.block ? h : m.block);
    }
  }
  return 0;
}

/// LSQ's gradient scale g = 1 / sqrt(n * qmax), computed in f64 and rounded once to f32
/// (1 for an empty group).
LOWBIT_HD float lsq_factor(int64_t n, float qmax) {
  if (n <= 0) return 1.0f;
  return static_cast<float>(1.0 / ::sqrt(static_cast<double>(n) * static_cast<double>(qmax)));
}

/// A group's gradient sums turned into dscale / dzero: dscale = f32(S) [* g], dzero =
/// -(f32(Z) * scale) [* g], where S, Z are the exact sums with grid exponents ks, kz. A
/// zero result is +0.
LOWBIT_HD float finish_dscale(const ExactSum& s, int ks, float g, bool lsq) {
  float v = exact_to_f32(s.hi, s.lo, ks);
  if (lsq) v = v * g;
  return v == 0.0f ? 0.0f : v;
}
LOWBIT_HD float finish_dzero(const ExactSum& z, int kz, float scale, float g, bool lsq) {
  float v = -(exact_to_f32(z.hi, z.lo, kz) * scale);
  if (lsq) v = v * g;
  return v == 0.0f ? 0.0f : v;
}

}  // namespace lowbit::fq
