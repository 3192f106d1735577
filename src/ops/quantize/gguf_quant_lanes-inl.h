// The lane vocabulary of the GGUF SIMD quantize kernel (gguf_quantize_simd.cpp and its
// -inl.h files), for Highway's foreach_target pattern: the f32 vector types and block
// constants, and ggml's scalar conversions as lane operations (x86's truncating cvttps2dq,
// the int8_t narrowing, nearest_int), each the reference's result lane by lane.
#if defined(LOWBIT_OPS_QUANTIZE_GGUF_QUANT_LANES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_GGUF_QUANT_LANES_INL_H_
#undef LOWBIT_OPS_QUANTIZE_GGUF_QUANT_LANES_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_GGUF_QUANT_LANES_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

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

/// ggml's nearest_int, lane-wise.
template <class V>
HWY_INLINE auto GgmlNearestIntV(V f) {
  const hn::DFromV<V> d;
  const hn::RebindToSigned<decltype(d)> di;
  const auto bits = hn::BitCast(di, hn::Add(f, hn::Set(d, 12582912.0f)));
  return hn::Sub(hn::And(bits, hn::Set(di, 0x007fffff)), hn::Set(di, 0x00400000));
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_GGUF_QUANT_LANES_INL_H_
