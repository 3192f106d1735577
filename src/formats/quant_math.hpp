// The per-element and per-group arithmetic of every non-GGUF format: the spec in code.
//
// docs/formats.md describes each rule; the reference kernels call these functions, and so
// do the SIMD and CUDA kernels (LOWBIT_HD), so that all backends give the same bits. All
// arithmetic is f32 with round-to-nearest-even; the order of operations is part of the spec.
#pragma once

#include <cmath>
#include <cstdint>

#include "lowbit/numeric.hpp"

namespace lowbit::formats {

/// Round to nearest, ties to even, in f32 (rintf under the default rounding mode; the
/// magic-number form keeps it exact for |x| < 2^22 without depending on the mode).
LOWBIT_HD float round_half_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// ---- integer formats (int8, uint8, int4, uint4) -------------------------------------------

/// A group's integer quantization parameters. `scale` is the stored value (after rounding
/// to the scheme's scale dtype); `inv_scale` is 1 / scale in f32, or 0 when scale is 0.
struct IntParams {
  float scale = 0.0f;
  float inv_scale = 0.0f;
  int32_t zero = 0;
};

/// Rounds a computed f32 scale to the stored scale dtype (f32, f16, bf16), saturating.
LOWBIT_HD float round_scale(float scale, Dtype scale_dtype) {
  switch (scale_dtype) {
    case Dtype::f16:
      return f16_to_f32(f32_to_f16(scale, Saturation::finite));
    case Dtype::bf16:
      return bf16_to_f32(f32_to_bf16(scale, Saturation::finite));
    default:
      return scale;
  }
}

/// f32's smallest normal, 2^-126. A computed scale below it is flushed to 0: its
/// reciprocal could overflow to Inf (0 * Inf = NaN), and a group that small (amax under
/// ~1e-36) is zero for every practical purpose, so it quantizes to exact zeros.
inline constexpr float kMinScale = 1.17549435e-38f;

LOWBIT_HD float flush_tiny_scale(float scale) { return scale < kMinScale ? 0.0f : scale; }

LOWBIT_HD IntParams int_params_from_scale(float scale, int32_t zero) {
  IntParams p;
  p.scale = scale;
  p.inv_scale = scale == 0.0f ? 0.0f : 1.0f / scale;
  p.zero = zero;
  return p;
}

/// Symmetric dynamic rule: scale = absmax / qmax (qmax = 127 or 7: the restricted range),
/// zero point 0. An all-zero group gets scale 0: every code 0, dequantizing to exact zeros.
LOWBIT_HD IntParams int_symmetric_params(float absmax, int qmax, Dtype scale_dtype) {
  return int_params_from_scale(
      flush_tiny_scale(round_scale(absmax / static_cast<float>(qmax), scale_dtype)), 0);
}

/// Affine dynamic rule: the range [min(lo, 0), max(hi, 0)] (it always contains 0, so 0 is
/// exact) maps onto [qmin, qmax]: scale = (hi - lo) / (qmax - qmin), zero = qmin - rne(lo / scale)
/// (computed as lo * inv_scale), clamped to [qmin, qmax].
LOWBIT_HD IntParams int_affine_params(float lo, float hi, int qmin, int qmax, Dtype scale_dtype) {
  lo = lo < 0.0f ? lo : 0.0f;
  hi = hi > 0.0f ? hi : 0.0f;
  IntParams p = int_params_from_scale(
      flush_tiny_scale(round_scale((hi - lo) / static_cast<float>(qmax - qmin), scale_dtype)), 0);
  float z = static_cast<float>(qmin) - round_half_even(lo * p.inv_scale);
  z = z < static_cast<float>(qmin) ? static_cast<float>(qmin)
                                   : (z > static_cast<float>(qmax) ? static_cast<float>(qmax) : z);
  p.zero = static_cast<int32_t>(z);
  return p;
}

/// q = clamp(rne(x * inv_scale) + zero, qmin, qmax): PyTorch's quantize_per_tensor /
/// quantize_per_channel arithmetic (x times the f32 reciprocal of the scale).
LOWBIT_HD int32_t int_quantize(float x, const IntParams& p, int qmin, int qmax) {
  float r = round_half_even(x * p.inv_scale) + static_cast<float>(p.zero);
  r = r < static_cast<float>(qmin) ? static_cast<float>(qmin) : r;
  r = r > static_cast<float>(qmax) ? static_cast<float>(qmax) : r;
  return static_cast<int32_t>(r);
}

/// x' = (q - zero) * scale, the subtraction exact in integers, one f32 rounding.
LOWBIT_HD float int_dequantize(int32_t q, float scale, int32_t zero) {
  return static_cast<float>(q - zero) * scale;
}

// ---- FP8 (e4m3fn, e5m2) with f32 scales ----------------------------------------------------

/// scale = amax / max_finite (448 for e4m3fn, 57344 for e5m2); an all-zero group gets 0.
LOWBIT_HD float fp8_scale(float amax, bool e5m2) {
  return flush_tiny_scale(amax / (e5m2 ? 57344.0f : 448.0f));
}

/// code = fp8(x * (1 / scale)), round-to-nearest-even, saturating to +-max_finite.
LOWBIT_HD uint8_t fp8_quantize(float x, float inv_scale, bool e5m2) {
  const float y = x * inv_scale;
  return e5m2 ? f32_to_f8e5m2(y, Saturation::finite) : f32_to_f8e4m3fn(y, Saturation::finite);
}

LOWBIT_HD float fp8_dequantize(uint8_t code, float scale, bool e5m2) {
  return (e5m2 ? f8e5m2_to_f32(code) : f8e4m3fn_to_f32(code)) * scale;
}

// ---- NVFP4 (torchao's two-level scaling) --------------------------------------------------

inline constexpr float kNvfp4BlockScaleMin =
    0.015625f;  // 2^-6: e4m3fn's smallest normal (torchao's E4M3_EPS)

/// global = amax / (6 * 448), torchao's per_tensor_amax_to_scale.
/// A global scale under 2^-126 is flushed to 0 (the tensor quantizes to zeros), so that
/// global * block_scale cannot underflow to 0 and make x / 0.
LOWBIT_HD float nvfp4_global_scale(float amax) { return flush_tiny_scale(amax / 2688.0f); }

/// The block's e4m3 scale code: e4m3(clamp(block_amax / 6 / global, 2^-6, 448)).
LOWBIT_HD uint8_t nvfp4_block_scale(float block_amax, float global) {
  float s = block_amax / 6.0f / global;
  s = s < kNvfp4BlockScaleMin ? kNvfp4BlockScaleMin : (s > 448.0f ? 448.0f : s);
  return f32_to_f8e4m3fn(s);
}

/// The element code: e2m1(clamp(x / (global * block_scale), -6, 6)). A zero global scale
/// (an all-zero tensor) gives code 0 (torchao would divide by zero).
LOWBIT_HD uint8_t nvfp4_quantize(float x, float global, uint8_t block_scale_code) {
  if (global == 0.0f) return 0;
  const float total = global * f8e4m3fn_to_f32(block_scale_code);
  float y = x / total;
  y = y < -6.0f ? -6.0f : (y > 6.0f ? 6.0f : y);
  return f32_to_f4e2m1(y);
}

/// x' = (e2m1 * block_scale) * global: the first product is exact, so one rounding.
LOWBIT_HD float nvfp4_dequantize(uint8_t code, uint8_t block_scale_code, float global) {
  return (f4e2m1_to_f32(code) * f8e4m3fn_to_f32(block_scale_code)) * global;
}

// ---- OCP MX (mxfp4, mxfp8) ------------------------------------------------------------------

/// floor(log2(v)) of a positive finite f32, exactly from its bits (subnormals too).
LOWBIT_HD int floor_log2(float v) {
  const uint32_t b = numeric_detail::bits_of(v);
  const int expf = static_cast<int>(b >> 23);
  if (expf != 0) return expf - 127;
  return numeric_detail::msb_index(b & 0x7fffffu) - 149;
}

/// The shared e8m0 scale code: floor(log2(amax)) - emax_elem, clamped to [-127, 127],
/// biased by 127 (OCP MX v1.0 section 6.3). emax_elem: 2 (e2m1), 8 (e4m3), 15 (e5m2).
/// An all-zero block gets code 0 (2^-127).
LOWBIT_HD uint8_t mx_scale_code(float amax, int emax_elem) {
  if (!(amax > 0.0f)) return 0;
  int e = floor_log2(amax) - emax_elem;
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return static_cast<uint8_t>(e + 127);
}

/// x / 2^e computed as x * 2^-e (exact: a power of two) for the scale code.
LOWBIT_HD float mx_unscale(float x, uint8_t scale_code) {
  // 2^(127 - code): codes 0..253 give normal f32 factors 2^127 .. 2^-126; 254 gives 2^-127.
  const int e = 127 - static_cast<int>(scale_code);
  const float factor = e >= -126 ? numeric_detail::float_of(static_cast<uint32_t>(e + 127) << 23)
                                 : numeric_detail::float_of(0x00400000u);
  return x * factor;
}

/// Element codes: round-to-nearest-even, saturating to the element format's max normal.
LOWBIT_HD uint8_t mxfp4_quantize(float x, uint8_t scale_code) {
  return f32_to_f4e2m1(mx_unscale(x, scale_code));
}
LOWBIT_HD uint8_t mxfp8_quantize(float x, uint8_t scale_code, bool e5m2) {
  const float y = mx_unscale(x, scale_code);
  return e5m2 ? f32_to_f8e5m2(y, Saturation::finite) : f32_to_f8e4m3fn(y, Saturation::finite);
}

LOWBIT_HD float mx_dequantize(float element, uint8_t scale_code) {
  return element * e8m0_to_f32(scale_code);
}

}  // namespace lowbit::formats
