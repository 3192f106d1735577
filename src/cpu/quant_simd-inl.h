// Per-target helpers of the SIMD quantize / dequantize kernels, for Highway's
// foreach_target pattern (include after hwy/highway.h, once per target): loading f32 /
// f16 / bf16 sources as f32 lanes, storing f32 lanes as f32 / f16 / bf16, storing codes
// as bytes, packing and unpacking 4-bit codes, and the walk over runs of elements that
// share a scale group.
//
// Every conversion here is exact or is numeric.hpp's rounding (through the integer-only
// vector versions of cpu/convert_simd-inl.h), so the bits are the reference's.
#if defined(LOWBIT_CPU_QUANT_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_CPU_QUANT_SIMD_INL_H_
#undef LOWBIT_CPU_QUANT_SIMD_INL_H_
#else
#define LOWBIT_CPU_QUANT_SIMD_INL_H_
#endif

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/convert_simd-inl.h"
#include "cpu/quant_simd.hpp"
#include "lowbit/numeric.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

namespace hn = hwy::HWY_NAMESPACE;
namespace nd = numeric_detail;
using lowbit::quant_simd::Layout;

#if HWY_TARGET != HWY_SCALAR

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VU = hn::Vec<DU>;
using DI = hn::RebindToSigned<DF>;
using VI = hn::Vec<DI>;
using DU16 = hn::Rebind<uint16_t, DF>;  ///< one u16 per f32 lane (half a vector)
using DU8 = hn::Rebind<uint8_t, DF>;    ///< one u8 per f32 lane (a quarter vector)
using DI8 = hn::Rebind<int8_t, DF>;

/// Lanes of an f32 vector on this target (compile-time on x86).
constexpr size_t kMaxLanes = hn::MaxLanes(DF());

// ---- sources ---------------------------------------------------------------------------

/// N source elements at index i as f32 lanes: exact for every finite value, and NaN / Inf
/// stay NaN / Inf (which is all the non-finite check needs).
template <Dtype S>
HWY_INLINE VF LoadSrc(DF df, const void* p, int64_t i) {
  if constexpr (S == Dtype::f32) {
    return hn::LoadU(df, static_cast<const float*>(p) + i);
  } else if constexpr (S == Dtype::bf16) {
    const VU w = hn::PromoteTo(DU(), hn::LoadU(DU16(), static_cast<const uint16_t*>(p) + i));
    return hn::BitCast(df, hn::ShiftLeft<16>(w));
  } else {
#if HWY_TARGET <= HWY_AVX2
    // F16C: exact for every f16 value (NaN stays NaN).
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(p) + i));
#else
    const VU w = hn::PromoteTo(DU(), hn::LoadU(DU16(), static_cast<const uint16_t*>(p) + i));
    return hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF16, true>(DU(), w));
#endif
  }
}

template <Dtype S>
using SrcT = std::conditional_t<S == Dtype::f32, float, uint16_t>;

/// `count` (< N) source elements at index i, the other lanes 0.
template <Dtype S>
HWY_INLINE VF LoadSrcPartial(DF df, const void* p, int64_t i, int64_t count) {
  HWY_ALIGN SrcT<S> buf[kMaxLanes] = {};
  std::memcpy(buf, static_cast<const SrcT<S>*>(p) + i, static_cast<size_t>(count) * sizeof(buf[0]));
  return LoadSrc<S>(df, buf, 0);
}

/// |x| as integer bits: their maximum is amax's pattern, and >= 0x7f800000 means Inf / NaN.
HWY_INLINE VI AbsBits(VF x) { return hn::And(hn::BitCast(DI(), x), hn::Set(DI(), 0x7fffffff)); }

// ---- destinations (dequantize) -------------------------------------------------------------

template <Dtype D>
using DstT = std::conditional_t<D == Dtype::f32, float, uint16_t>;

/// f32 lanes as D codes (f16 / bf16: numeric.hpp's RNE, overflow to Inf), as u16 lanes.
template <Dtype D>
HWY_INLINE hn::Vec<DU16> EncodeDst16(VF v) {
  const DU du;
  VU code;
  if constexpr (D == Dtype::bf16) {
    code = simd_convert::EncodeMiniFloat<nd::kBF16>(du, hn::BitCast(du, v),
                                                    hn::Set(du, nd::kBF16.inf_code()));
  } else {
    code = simd_convert::EncodeMiniFloat<nd::kF16, true>(du, hn::BitCast(du, v),
                                                         hn::Set(du, nd::kF16.inf_code()));
  }
  return hn::DemoteTo(DU16(), hn::BitCast(DI(), code));
}

/// Stores N f32 lanes as D at element i; `stream`: non-temporal (aligned destination).
template <Dtype D>
HWY_INLINE void StoreDst(VF v, void* p, int64_t i, bool stream) {
  if constexpr (D == Dtype::f32) {
    float* out = static_cast<float*>(p) + i;
    if (stream) {
      hn::Stream(v, DF(), out);
    } else {
      hn::StoreU(v, DF(), out);
    }
  } else {
    hn::StoreU(EncodeDst16<D>(v), DU16(), static_cast<uint16_t*>(p) + i);
  }
}

template <Dtype D>
HWY_INLINE void StoreDstPartial(VF v, void* p, int64_t i, int64_t count) {
  HWY_ALIGN DstT<D> buf[kMaxLanes];
  StoreDst<D>(v, buf, 0, false);
  std::memcpy(static_cast<DstT<D>*>(p) + i, buf, static_cast<size_t>(count) * sizeof(buf[0]));
}

// ---- codes ---------------------------------------------------------------------------------

/// N codes (low 8 bits of each lane; two's complement for negative integers) as bytes.
HWY_INLINE void StoreBytes(VI code, uint8_t* out) {
  hn::StoreU(hn::DemoteTo(DU8(), hn::And(code, hn::Set(DI(), 0xff))), DU8(), out);
}
HWY_INLINE void StoreBytesPartial(VI code, uint8_t* out, int64_t count) {
  HWY_ALIGN uint8_t buf[kMaxLanes];
  StoreBytes(code, buf);
  std::memcpy(out, buf, static_cast<size_t>(count));
}

/// Writes the low nibbles of m byte codes `tmp` as elements e.. e+m-1 of a packed code
/// stream (element i in the low nibble of byte i / 2 when even, the high one when odd).
/// An odd e fills the high nibble of a byte whose low nibble this thread wrote before;
/// an odd end writes its byte with a zero high nibble, for the next run (or nobody) to fill.
HWY_INLINE void PackNibbles(const uint8_t* tmp, int64_t m, uint8_t* codes, int64_t e) {
  if (m <= 0) return;
  int64_t k = 0;
  if (e & 1) {
    uint8_t& b = codes[e >> 1];
    b = static_cast<uint8_t>((b & 0x0f) | ((tmp[0] & 0x0f) << 4));
    k = 1;
  }
  uint8_t* out = codes + ((e + k) >> 1);
  const hn::ScalableTag<uint16_t> d16;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  const hn::RebindToSigned<decltype(d16)> di16;
  const size_t N = hn::Lanes(d16);
  int64_t j = 0;  // pairs written
  const int64_t pairs = (m - k) / 2;
  for (; j + static_cast<int64_t>(N) <= pairs; j += static_cast<int64_t>(N)) {
    const auto w = hn::LoadU(d16, reinterpret_cast<const uint16_t*>(tmp + k + 2 * j));
    const auto b = hn::Or(hn::And(w, hn::Set(d16, uint16_t{0x0f})),
                          hn::And(hn::ShiftRight<4>(w), hn::Set(d16, uint16_t{0xf0})));
    hn::StoreU(hn::DemoteTo(d8, hn::BitCast(di16, b)), d8, out + j);
  }
  for (; j < pairs; ++j)
    out[j] = static_cast<uint8_t>((tmp[k + 2 * j] & 0x0f) | ((tmp[k + 2 * j + 1] & 0x0f) << 4));
  if ((m - k) & 1) out[pairs] = static_cast<uint8_t>(tmp[m - 1] & 0x0f);
}

/// Elements e .. e+m-1 of a packed code stream as one byte each (0..15).
HWY_INLINE void UnpackNibbles(const uint8_t* codes, int64_t e, int64_t m, uint8_t* tmp) {
  if (m <= 0) return;
  int64_t k = 0;
  if (e & 1) {
    tmp[0] = static_cast<uint8_t>(codes[e >> 1] >> 4);
    k = 1;
  }
  const uint8_t* in = codes + ((e + k) >> 1);
  const hn::ScalableTag<uint16_t> d16;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  const size_t N = hn::Lanes(d16);
  const int64_t pairs = (m - k) / 2;
  int64_t j = 0;
  for (; j + static_cast<int64_t>(N) <= pairs; j += static_cast<int64_t>(N)) {
    const auto w = hn::PromoteTo(d16, hn::LoadU(d8, in + j));
    const auto split = hn::Or(hn::And(w, hn::Set(d16, uint16_t{0x0f})),
                              hn::ShiftLeft<4>(hn::And(w, hn::Set(d16, uint16_t{0xf0}))));
    hn::StoreU(split, d16, reinterpret_cast<uint16_t*>(tmp + k + 2 * j));
  }
  for (; j < pairs; ++j) {
    tmp[k + 2 * j] = static_cast<uint8_t>(in[j] & 0x0f);
    tmp[k + 2 * j + 1] = static_cast<uint8_t>(in[j] >> 4);
  }
  if ((m - k) & 1) tmp[m - 1] = static_cast<uint8_t>(in[pairs] & 0x0f);
}

// ---- groups ----------------------------------------------------------------------------------

/// Calls fn(e, len, g) for each maximal run of elements in [e0, e1) that share group g
/// (not for columns mode).
template <class Fn>
HWY_INLINE void ForEachRun(const Layout& L, int64_t e0, int64_t e1, Fn&& fn) {
  const formats::GroupMap& m = L.gm;
  int64_t e = e0;
  while (e < e1) {
    int64_t end, g;
    switch (m.granularity) {
      case Granularity::tensor:
        end = e1;
        g = 0;
        break;
      case Granularity::token: {
        const int64_t row = e / m.k;
        end = std::min(e1, (row + 1) * m.k);
        g = row;
        break;
      }
      case Granularity::channel: {
        const int64_t run = e / m.inner;
        end = std::min(e1, (run + 1) * m.inner);
        g = run % m.channels;
        break;
      }
      case Granularity::block: {
        const int64_t row = e / m.k, b = (e - row * m.k) / m.block;
        end = std::min(e1, row * m.k + std::min(m.k, (b + 1) * m.block));
        g = row * m.blocks_k + b;
        break;
      }
      default: {  // block2d
        const int64_t row = e / m.k, b = (e - row * m.k) / m.block;
        end = std::min(e1, row * m.k + std::min(m.k, (b + 1) * m.block));
        g = ((row / m.rows) * m.blocks_r + (row % m.rows) / m.block) * m.blocks_k + b;
        break;
      }
    }
    fn(e, end - e, g);
    e = end;
  }
}

/// Columns mode: calls fn(e, len, col) for each piece of a period-P row in [e0, e1).
template <class Fn>
HWY_INLINE void ForEachRowPiece(int64_t period, int64_t e0, int64_t e1, Fn&& fn) {
  int64_t e = e0;
  while (e < e1) {
    const int64_t col = e % period;
    const int64_t end = std::min(e1, e - col + period);
    fn(e, end - e, col);
    e = end;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_CPU_QUANT_SIMD_INL_H_
