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

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

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
/// (not for columns mode). Divisions only once per call: the walk steps its counters.
template <class Fn>
HWY_INLINE void ForEachRun(const Layout& L, int64_t e0, int64_t e1, Fn&& fn) {
  const formats::GroupMap& m = L.gm;
  if (e0 >= e1) return;
  switch (m.granularity) {
    case Granularity::tensor:
      fn(e0, e1 - e0, int64_t{0});
      return;
    case Granularity::token: {
      int64_t row = e0 / m.k, e = e0;
      while (e < e1) {
        const int64_t end = std::min(e1, (row + 1) * m.k);
        fn(e, end - e, row);
        e = end;
        ++row;
      }
      return;
    }
    case Granularity::channel: {
      int64_t run = e0 / m.inner, e = e0;
      int64_t g = run % m.channels;
      while (e < e1) {
        const int64_t end = std::min(e1, (run + 1) * m.inner);
        fn(e, end - e, g);
        e = end;
        ++run;
        if (++g == m.channels) g = 0;
      }
      return;
    }
    default: {  // block, block2d: runs of `block` along rows (the last one may be partial)
      int64_t row = e0 / m.k;
      int64_t col = e0 - row * m.k;
      int64_t b = col / m.block;
      const bool two_d = m.granularity == Granularity::block2d;
      int64_t rin = two_d ? row % m.rows : 0;  // row within its matrix
      int64_t base = two_d ? ((row / m.rows) * m.blocks_r + rin / m.block) * m.blocks_k
                           : row * m.blocks_k;  // group of the row's first block
      int64_t e = e0;
      while (e < e1) {
        const int64_t bend = std::min(m.k, (b + 1) * m.block);
        const int64_t len = std::min(e1 - e, bend - col);
        fn(e, len, base + b);
        e += len;
        col += len;
        if (col == bend) {
          ++b;
          if (col == m.k) {
            col = 0;
            b = 0;
            ++row;
            if (two_d) {
              if (++rin == m.rows) rin = 0;
              base = ((row / m.rows) * m.blocks_r + rin / m.block) * m.blocks_k;
            } else {
              base += m.blocks_k;
            }
          }
        }
      }
      return;
    }
  }
}

// ---- per-group maxima of a batch of groups -----------------------------------------------------

/// Where ReduceMaxGroups puts group b's maximum (a 4 x G transpose, G = N / 4).
HWY_INLINE size_t GroupLane(size_t b) {
  constexpr size_t G = kMaxLanes / 4;
  return 4 * (b % G) + b / G;
}

/// Within each 128-bit block: lane m of the result is the maximum of x[m]'s lanes there.
HWY_INLINE VI Reduce4(const VI* x) {
  const DI di;
  const hn::Repartition<int64_t, DI> d64;
  const VI a = hn::Max(hn::InterleaveLower(di, x[0], x[1]), hn::InterleaveUpper(di, x[0], x[1]));
  const VI b = hn::Max(hn::InterleaveLower(di, x[2], x[3]), hn::InterleaveUpper(di, x[2], x[3]));
  const auto a64 = hn::BitCast(d64, a), b64 = hn::BitCast(d64, b);
  return hn::Max(hn::BitCast(di, hn::InterleaveLower(d64, a64, b64)),
                 hn::BitCast(di, hn::InterleaveUpper(d64, a64, b64)));
}

/// N vectors (one per group) -> one vector: lane GroupLane(b) is the maximum (signed) of
/// all lanes of v[b]. A transpose-and-reduce tree: about 3 operations per group instead of
/// a horizontal reduction each.
HWY_INLINE VI ReduceMaxGroups(const VI* v) {
  const DI di;
#if HWY_TARGET <= HWY_AVX3
  VI w[8];
  for (int i = 0; i < 8; ++i)
    w[i] = hn::Max(hn::ConcatLowerLower(di, v[2 * i + 1], v[2 * i]),
                   hn::ConcatUpperUpper(di, v[2 * i + 1], v[2 * i]));
  VI x[4];
  for (int j = 0; j < 4; ++j) {
    const __m512i lo =
        _mm512_shuffle_i32x4(w[2 * j].raw, w[2 * j + 1].raw, _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i hi =
        _mm512_shuffle_i32x4(w[2 * j].raw, w[2 * j + 1].raw, _MM_SHUFFLE(3, 1, 3, 1));
    x[j] = hn::Max(VI{lo}, VI{hi});
  }
  return Reduce4(x);
#elif HWY_TARGET == HWY_AVX2
  VI w[4];
  for (int i = 0; i < 4; ++i)
    w[i] = hn::Max(hn::ConcatLowerLower(di, v[2 * i + 1], v[2 * i]),
                   hn::ConcatUpperUpper(di, v[2 * i + 1], v[2 * i]));
  return Reduce4(w);
#else
  static_assert(kMaxLanes == 4, "128-bit targets only");
  return Reduce4(v);
#endif
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

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_CPU_QUANT_SIMD_INL_H_
