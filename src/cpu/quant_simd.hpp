// Shared, target-independent parts of the SIMD quantize / dequantize kernels
// (ops/quantize/quantize_simd.cpp, dequantize_simd.cpp): how the elements of a tensor fall
// into scale groups in the form the vector passes walk, the per-call argument blocks the
// per-target range functions receive, and the scalar per-group rules (which are
// formats/quant_math.hpp's own functions, so every scale, zero point and block code is
// the reference's by construction).
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>

#include "formats/groups.hpp"
#include "formats/quant_math.hpp"
#include "lowbit/scheme.hpp"
#include "ops/convert/convert_element.hpp"

namespace lowbit::quant_simd {

/// The element rule of a scheme, as the vector code sees it. int8 / uint8 / int4 / uint4
/// share one rule (clamp range and packing are run-time values).
enum class Fmt : uint8_t { integer, e4m3, e5m2, nvfp4, mxfp4, mx8e4m3, mx8e5m2, q8_0, q4_0 };

/// Where the elements' groups are, for the passes: `gm` maps a flat index to its group.
/// Channel granularity with short runs (fewer than kMinRun elements between group changes,
/// e.g. the last axis) is walked in "columns" mode instead: rows of a period P =
/// channels * inner elements in which column c belongs to group c / inner, with per-column
/// parameter arrays.
struct Layout {
  formats::GroupMap gm;
  int64_t n = 0;         ///< elements
  bool columns = false;  ///< columns mode (see above)
  int64_t period = 1;    ///< P, columns mode only
  static constexpr int64_t kMinRun = 64;
  static constexpr int64_t kMaxPeriod = int64_t{1} << 22;

  static Layout make(const QuantScheme& s, const Shape& shape) {
    Layout l;
    l.gm = formats::GroupMap::make(s, shape);
    l.n = 1;
    for (int64_t e : shape) l.n *= e;
    if (l.gm.granularity == Granularity::channel && l.gm.inner < kMinRun &&
        l.gm.channels * l.gm.inner <= kMaxPeriod && l.gm.inner > 0) {
      l.columns = true;
      l.period = l.gm.channels * l.gm.inner;
    }
    return l;
  }
};

/// A group's parameters for the element pass. Integer: mul = 1/scale (or 0), add = zero
/// point; fp8: mul = 1/scale; nvfp4: mul = global * block scale (a divisor), zero_codes when
/// the global scale is 0; MX: mul = 2^-e.
struct GroupParams {
  float mul = 0.0f;
  float add = 0.0f;
  bool zero_codes = false;
};

/// Everything one quantize call's range functions need. Plain pointers; shared read-only
/// by the threads except the outputs (each thread writes its own ranges) and the stats
/// arrays (atomic maxima).
struct QCall {
  const void* src = nullptr;
  Layout L;
  Fmt fmt = Fmt::integer;
  bool symmetric = true;
  int qmin = 0, qmax = 0;
  Dtype scale_dtype = Dtype::f32;
  bool packed = false;  ///< 4-bit codes, two per byte
  uint8_t* codes = nullptr;
  void* scale = nullptr;    ///< scale output (dynamic) / input (given)
  int32_t* zero = nullptr;  ///< zero points (affine integer schemes)
  float global = 0.0f;      ///< nvfp4's global scale, once known
  // Two-pass statistics, per group (or per column in columns mode): bit patterns of
  // non-negative floats, which order like unsigned integers: max |x|, max(0, max x),
  // max(0, -min x).
  uint32_t* amax = nullptr;
  uint32_t* hi = nullptr;
  uint32_t* neglo = nullptr;
  bool affine_stats = false;  ///< hi / neglo wanted
  // Element-pass parameters per group (or per column in columns mode).
  const float* mul = nullptr;
  const float* add = nullptr;
  // GGUF rows
  int64_t row_bytes = 0;
  /// Flags (kFlag*) raised when the data needs the reference's judgement: a non-finite
  /// input, a block whose f16 scale overflows. The kernel then hands the call to the
  /// reference kernel, which throws its exact error (or, were a flag ever raised wrongly,
  /// computes the result). Non-finite inputs count only with check_finite; without it they
  /// give unspecified but memory-safe codes, as on CUDA.
  std::atomic<int>* bad = nullptr;
  bool check_finite = true;
};

inline constexpr int kFlagNonFinite = 1;  ///< a NaN or Inf input
inline constexpr int kFlagRefuse = 2;     ///< anything else the reference refuses

/// One dequantize call's operands.
struct DCall {
  const uint8_t* codes = nullptr;
  Layout L;
  Fmt fmt = Fmt::integer;
  Dtype code_dtype = Dtype::i8;
  Dtype scale_dtype = Dtype::f32;
  const void* scale = nullptr;
  const int32_t* zero = nullptr;  ///< nullptr for symmetric schemes
  float global = 0.0f;
  void* dst = nullptr;
  bool stream = false;  ///< non-temporal stores (large outputs)
  // columns mode: per-column scale and zero point
  const float* col_scale = nullptr;
  const int32_t* col_zero = nullptr;
  // GGUF rows
  int64_t K = 0;
  int64_t row_bytes = 0;
};

inline void atomic_max(uint32_t* p, uint32_t v) {
  std::atomic_ref<uint32_t> a(*p);
  uint32_t cur = a.load(std::memory_order_relaxed);
  while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

inline uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
inline float float_of(uint32_t u) { return std::bit_cast<float>(u); }

/// mx_unscale's factor 2^(127 - code) (formats/quant_math.hpp).
inline float mx_factor(uint8_t code) {
  const int e = 127 - static_cast<int>(code);
  return e >= -126 ? float_of(static_cast<uint32_t>(e + 127) << 23) : float_of(0x00400000u);
}

inline int mx_emax(Fmt f) { return f == Fmt::mxfp4 ? 2 : (f == Fmt::mx8e4m3 ? 8 : 15); }

/// The dynamic rule of docs/formats.md for group g from its statistics; writes the
/// group's scale (and zero point / block code) exactly as the reference does.
inline GroupParams dynamic_params(const QCall& q, uint32_t amax_bits, uint32_t hi_bits,
                                  uint32_t neglo_bits, int64_t g) {
  const float amax = float_of(amax_bits);
  GroupParams gp;
  switch (q.fmt) {
    case Fmt::integer: {
      const formats::IntParams p =
          q.symmetric ? formats::int_symmetric_params(amax, q.qmax, q.scale_dtype)
                      : formats::int_affine_params(-float_of(neglo_bits), float_of(hi_bits), q.qmin,
                                                   q.qmax, q.scale_dtype);
      convert_detail::store_f32(q.scale, q.scale_dtype, g, p.scale, Saturation::finite);
      if (!q.symmetric) q.zero[g] = p.zero;
      gp.mul = p.inv_scale;
      gp.add = static_cast<float>(p.zero);
      return gp;
    }
    case Fmt::e4m3:
    case Fmt::e5m2: {
      const float sc = formats::fp8_scale(amax, q.fmt == Fmt::e5m2);
      static_cast<float*>(q.scale)[g] = sc;
      gp.mul = sc == 0.0f ? 0.0f : 1.0f / sc;
      return gp;
    }
    case Fmt::nvfp4: {
      const uint8_t code = q.global == 0.0f ? 0 : formats::nvfp4_block_scale(amax, q.global);
      static_cast<uint8_t*>(q.scale)[g] = code;
      gp.mul = q.global * f8e4m3fn_to_f32(code);
      gp.zero_codes = q.global == 0.0f;
      return gp;
    }
    case Fmt::mxfp4:
    case Fmt::mx8e4m3:
    case Fmt::mx8e5m2: {
      const uint8_t code = formats::mx_scale_code(amax, mx_emax(q.fmt));
      static_cast<uint8_t*>(q.scale)[g] = code;
      gp.mul = mx_factor(code);
      return gp;
    }
    default:
      return gp;
  }
}

/// A given (static) scale is usable iff the reference's check_given_scale accepts it.
inline bool given_scale_ok(float s) {
  return std::isfinite(s) && s >= 0.0f && !(s > 0.0f && s < formats::kMinScale);
}

/// The parameters of group g from given scales (integer and fp8 schemes); false where the
/// reference would refuse them.
inline bool given_params(const QCall& q, int64_t g, GroupParams* out) {
  const float sc = convert_detail::load_f32(q.scale, q.scale_dtype, g);
  if (!given_scale_ok(sc)) return false;
  if (q.fmt == Fmt::integer) {
    const int32_t z = q.symmetric ? 0 : q.zero[g];
    if (z < q.qmin || z > q.qmax) return false;
    const formats::IntParams p = formats::int_params_from_scale(sc, z);
    out->mul = p.inv_scale;
    out->add = static_cast<float>(z);
  } else {
    out->mul = sc == 0.0f ? 0.0f : 1.0f / sc;
    out->add = 0.0f;
  }
  return true;
}

}  // namespace lowbit::quant_simd
