// The 32-value GGUF block types of the SIMD quantize kernel (gguf_quantize_simd.cpp):
// Q4_1, Q5_0 and Q5_1 (Blocks) and Q8_1 (Q8_1Blocks), a block's 32 values in f32 lanes,
// byte-identical to formats/gguf_legacy.cpp's quantizers. For Highway's foreach_target
// pattern; the including file turns FMA contraction off (x * id + 16.5 must round twice).
#if defined(LOWBIT_OPS_QUANTIZE_GGUF_LEGACY_BLOCKS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_GGUF_LEGACY_BLOCKS_INL_H_
#undef LOWBIT_OPS_QUANTIZE_GGUF_LEGACY_BLOCKS_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_GGUF_LEGACY_BLOCKS_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>
#include <cstring>

#include "cpu/quant_simd-inl.h"
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/numeric.hpp"
#include "ops/quantize/gguf_quant_lanes-inl.h"
#include "ops/quantize/gguf_quantize_simd.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

using gguf::GgmlType;
using lowbit::gguf_simd::Call;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- Q4_1, Q5_0 and Q5_1 ------------------------------------------------------------------------

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

// ---- Q8_1 --------------------------------------------------------------------------------------

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

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_GGUF_LEGACY_BLOCKS_INL_H_
