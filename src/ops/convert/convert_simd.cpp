// The CPU SIMD convert kernel: Highway, dispatched at run time (once per call) to the
// best target the CPU supports (AVX3, AVX2, SSE4, SSSE3; with GCC < 12.3 the baseline is
// HWY_SCALAR, where the numeric.hpp loop serves), OpenMP across cores in chunks of 64Ki
// elements for larger tensors. Contiguous src and dst only; the reference kernel serves
// strided views.
//
// Every element goes src -> f32 bits -> dst code in u32 lanes (bf16 -> fp8/fp4 on AVX3:
// u16 lanes), with the integer-only vector versions of numeric.hpp in
// cpu/convert_simd-inl.h, so the results are bit-identical to convert_reference;
// tests/cpp/test_convert_simd_exhaustive.cpp proves it over every f32 bit pattern and
// every code of the narrow formats, on every target. Codes are packed into whole vectors
// before they are stored; outputs too large for the caches go out with streaming stores.
//
// Highway's foreach_target re-includes this file once per target: the shared
// declarations sit behind an include guard, the per-target code in HWY_NAMESPACE, and
// the kernel class in the HWY_ONCE section at the end.

#ifndef LOWBIT_OPS_CONVERT_SIMD_SHARED_
#define LOWBIT_OPS_CONVERT_SIMD_SHARED_

#include "cpu/convert_simd.hpp"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "lowbit/numeric.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace lowbit::convert_simd_detail {

/// One call's operands, shared by all chunks.
struct RangeArgs {
  const void* src;
  void* dst;
  Dtype src_dtype;
  Dtype dst_dtype;
  Saturation saturation;
  uint32_t ovf_code;  ///< dst code (without sign) for overflow and +-Inf, see overflow_code()
  bool stream;        ///< non-temporal stores: the output is too large to stay in cache
};

/// Converts elements [begin, end) of a contiguous tensor; begin is even.
using RangeFn = void (*)(const RangeArgs& args, int64_t begin, int64_t end);

/// The scalar path (numeric.hpp via convert_detail) for [begin, end): tails shorter than
/// a vector block and peels up to an aligned destination. begin must be even.
void convert_scalar(const RangeArgs& args, int64_t begin, int64_t end);

}  // namespace lowbit::convert_simd_detail

#endif  // LOWBIT_OPS_CONVERT_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/convert/convert_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "cpu/convert_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace simd_convert {

using convert_simd_detail::RangeArgs;
using convert_simd_detail::RangeFn;
namespace nd = numeric_detail;

// Highway's HWY_SCALAR target (the baseline with GCC < 12.3, where EMU128 is marked
// broken) has one-lane vectors without Combine/UpperHalf: there the numeric.hpp loop
// itself is the kernel.
#if HWY_TARGET == HWY_SCALAR

inline void ScalarRange(const RangeArgs& args, int64_t begin, int64_t end) {
  convert_simd_detail::convert_scalar(args, begin, end);
}
template <Dtype S>
RangeFn SelectForSource(Dtype) {
  return &ScalarRange;
}

#else  // HWY_TARGET != HWY_SCALAR

using DU = hn::ScalableTag<uint32_t>;
using VU = hn::Vec<DU>;

// ---- sources: N elements at index i -> N f32 bit patterns ----------------------------

template <Dtype S>
struct Source;

template <>
struct Source<Dtype::f32> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return hn::LoadU(d, static_cast<const uint32_t*>(p) + i);
  }
};

template <class D>
HWY_INLINE hn::Vec<D> LoadU16AsU32(D d, const void* p, int64_t i) {
  return hn::PromoteTo(d,
                       hn::LoadU(hn::Rebind<uint16_t, D>(), static_cast<const uint16_t*>(p) + i));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadU8AsU32(D d, const void* p, int64_t i) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<uint8_t, D>(), static_cast<const uint8_t*>(p) + i));
}

template <>
struct Source<Dtype::bf16> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return hn::ShiftLeft<16>(LoadU16AsU32(d, p, i));
  }
};
template <>
struct Source<Dtype::f16> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return DecodeMiniFloat<nd::kF16, /*kNanPayload=*/true>(d, LoadU16AsU32(d, p, i));
  }
};
template <>
struct Source<Dtype::f8e4m3fn> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return DecodeMiniFloat<nd::kF8E4M3FN>(d, LoadU8AsU32(d, p, i));
  }
};
template <>
struct Source<Dtype::f8e5m2> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return DecodeMiniFloat<nd::kF8E5M2>(d, LoadU8AsU32(d, p, i));
  }
};
template <>
struct Source<Dtype::e8m0> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    return DecodeE8M0(d, LoadU8AsU32(d, p, i));
  }
};
template <>
struct Source<Dtype::f4e2m1> {
  // i is even: N elements are N/2 bytes. Each byte b becomes the u16 (b & 0xf) |
  // ((b & 0xf0) << 4), whose two bytes are the two nibbles in element order.
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    const hn::Half<DU> dh;
    const hn::Rebind<uint16_t, decltype(dh)> d16;
    const auto bytes =
        hn::LoadU(hn::Rebind<uint8_t, decltype(dh)>(), static_cast<const uint8_t*>(p) + i / 2);
    const auto w = hn::PromoteTo(d16, bytes);
    const auto split = hn::Or(hn::And(w, hn::Set(d16, uint16_t{0xf})),
                              hn::ShiftLeft<4>(hn::And(w, hn::Set(d16, uint16_t{0xf0}))));
    const hn::Rebind<uint8_t, DU> d8;
    return DecodeMiniFloat<nd::kF4E2M1>(d, hn::PromoteTo(d, hn::BitCast(d8, split)));
  }
};
template <>
struct Source<Dtype::f64> {
  static HWY_INLINE VU Load(DU d, const void* p, int64_t i) {
    const hn::Repartition<uint64_t, DU> d64;
    const hn::Half<DU> dh;
    const auto* q = static_cast<const uint64_t*>(p) + i;
    const auto lo = F64ToF32Bits(d64, hn::LoadU(d64, q));
    const auto hi = F64ToF32Bits(d64, hn::LoadU(d64, q + hn::Lanes(d64)));
    return hn::Combine(d, hn::TruncateTo(dh, hi), hn::TruncateTo(dh, lo));
  }
};

// ---- destinations: kVecs vectors of f32 bits -> whole destination vectors -------------
//
// A block packs its codes into full vectors so that streaming stores write whole
// aligned vectors (and whole cache lines on AVX3).

template <class D>
HWY_INLINE void StoreVec(D d, hn::Vec<D> v, hn::TFromD<D>* p, bool stream) {
  if (stream) {
    hn::Stream(v, d, p);
  } else {
    hn::StoreU(v, d, p);
  }
}

// Narrowing packs. x86's pack instructions work within 128-bit blocks and saturate,
// which is exact here (every code fits); one lane permute then restores element order.
// Other targets use Highway's ordered demotions.
using DU16 = hn::Repartition<uint16_t, DU>;
using DU8 = hn::Repartition<uint8_t, DU>;

/// 2 vectors of u32 codes (< 2^16) -> one full vector of u16, in element order.
HWY_INLINE hn::Vec<DU16> PackU16(DU d, VU c0, VU c1) {
#if HWY_TARGET <= HWY_AVX3
  // Per block: c0's 4 codes, then c1's; gather c0's blocks first (64-bit granules).
  const __m512i packed = _mm512_packus_epi32(c0.raw, c1.raw);
  return hn::Vec<DU16>{_mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), packed)};
#elif HWY_TARGET == HWY_AVX2
  return hn::Vec<DU16>{_mm256_permute4x64_epi64(_mm256_packus_epi32(c0.raw, c1.raw), 0xD8)};
#else
  const hn::RebindToSigned<DU> di;
  const hn::Half<DU16> dh16;
  return hn::Combine(DU16(), hn::DemoteTo(dh16, hn::BitCast(di, c1)),
                     hn::DemoteTo(dh16, hn::BitCast(di, c0)));
#endif
}

/// 2 vectors of u16 values (< 2^8) -> one full vector of u8, in element order.
HWY_INLINE hn::Vec<DU8> PackU16ToU8(hn::Vec<DU16> w0, hn::Vec<DU16> w1) {
#if HWY_TARGET <= HWY_AVX3
  const __m512i packed = _mm512_packus_epi16(w0.raw, w1.raw);
  return hn::Vec<DU8>{_mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), packed)};
#elif HWY_TARGET == HWY_AVX2
  return hn::Vec<DU8>{_mm256_permute4x64_epi64(_mm256_packus_epi16(w0.raw, w1.raw), 0xD8)};
#else
  const hn::Repartition<int16_t, DU> di16;
  const hn::Half<DU8> dh8;
  return hn::Combine(DU8(), hn::DemoteTo(dh8, hn::BitCast(di16, w1)),
                     hn::DemoteTo(dh8, hn::BitCast(di16, w0)));
#endif
}

/// 4 vectors of u32 codes (< 2^8) -> one full vector of u8, in element order.
HWY_INLINE hn::Vec<DU8> PackU8(DU d, const VU* c) {
#if HWY_TARGET <= HWY_AVX3
  // After the two packs, block k holds codes 4k..4k+3 of c[0], c[1], c[2], c[3].
  const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(c[0].raw, c[1].raw),
                                            _mm512_packus_epi32(c[2].raw, c[3].raw));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return hn::Vec<DU8>{_mm512_permutexvar_epi32(order, bytes)};
#elif HWY_TARGET == HWY_AVX2
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(c[0].raw, c[1].raw),
                                            _mm256_packus_epi32(c[2].raw, c[3].raw));
  return hn::Vec<DU8>{
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))};
#else
  return PackU16ToU8(PackU16(d, c[0], c[1]), PackU16(d, c[2], c[3]));
#endif
}

template <Dtype Dd>
struct Sink;

template <>
struct Sink<Dtype::f32> {
  static constexpr int kVecs = 1;
  static HWY_INLINE VU Encode(DU, VU x, VU) { return x; }
  static HWY_INLINE void Store(DU d, const VU* c, void* p, int64_t i, bool stream) {
    StoreVec(d, c[0], static_cast<uint32_t*>(p) + i, stream);
  }
};
template <>
struct Sink<Dtype::f64> {
  static constexpr int kVecs = 1;
  static HWY_INLINE VU Encode(DU, VU x, VU) { return x; }
  static HWY_INLINE void Store(DU d, const VU* c, void* p, int64_t i, bool stream) {
    const hn::Repartition<uint64_t, DU> d64;
    const hn::Half<DU> dh;
    VU body, hi;
    F32ToF64Parts(d, c[0], body, hi);
    auto* q = static_cast<uint64_t*>(p) + i;
    StoreVec(d64,
             F32ToF64Bits(d64, hn::PromoteTo(d64, hn::LowerHalf(dh, body)),
                          hn::PromoteTo(d64, hn::LowerHalf(dh, hi))),
             q, stream);
    StoreVec(d64,
             F32ToF64Bits(d64, hn::PromoteTo(d64, hn::UpperHalf(dh, body)),
                          hn::PromoteTo(d64, hn::UpperHalf(dh, hi))),
             q + hn::Lanes(d64), stream);
  }
};

template <nd::MiniFloat F, bool kNanPayload = false>
struct Sink16 {
  static constexpr int kVecs = 2;
  static HWY_INLINE VU Encode(DU d, VU x, VU ovf) {
    return EncodeMiniFloat<F, kNanPayload>(d, x, ovf);
  }
  static HWY_INLINE void Store(DU d, const VU* c, void* p, int64_t i, bool stream) {
    StoreVec(hn::Repartition<uint16_t, DU>(), PackU16(d, c[0], c[1]), static_cast<uint16_t*>(p) + i,
             stream);
  }
};
template <>
struct Sink<Dtype::bf16> : Sink16<nd::kBF16> {};
template <>
struct Sink<Dtype::f16> : Sink16<nd::kF16, /*kNanPayload=*/true> {};

struct Sink8Store {
  static constexpr int kVecs = 4;
  static HWY_INLINE void Store(DU d, const VU* c, void* p, int64_t i, bool stream) {
    StoreVec(hn::Repartition<uint8_t, DU>(), PackU8(d, c), static_cast<uint8_t*>(p) + i, stream);
  }
};
template <nd::MiniFloat F>
struct Sink8 : Sink8Store {
  static HWY_INLINE VU Encode(DU d, VU x, VU ovf) { return EncodeMiniFloat<F>(d, x, ovf); }
};
template <>
struct Sink<Dtype::f8e4m3fn> : Sink8<nd::kF8E4M3FN> {};
template <>
struct Sink<Dtype::f8e5m2> : Sink8<nd::kF8E5M2> {};
template <>
struct Sink<Dtype::e8m0> : Sink8Store {
  static HWY_INLINE VU Encode(DU d, VU x, VU ovf) { return EncodeE8M0(d, x, ovf); }
};
template <>
struct Sink<Dtype::f4e2m1> {
  static constexpr int kVecs = 8;
  static HWY_INLINE VU Encode(DU d, VU x, VU ovf) {
    return EncodeMiniFloat<nd::kF4E2M1>(d, x, ovf);
  }
  // i is even. Codes become bytes first; then each u16 lane lo | hi << 8 (two codes
  // < 16) folds to lo | hi << 4, and narrowing to u8 keeps element order.
  static HWY_INLINE void Store(DU d, const VU* c, void* p, int64_t i, bool stream) {
    const DU16 d16;
    auto fold = [&](const VU* four) {
      const auto w = hn::BitCast(d16, PackU8(d, four));
      return hn::And(hn::Or(w, hn::ShiftRight<4>(w)), hn::Set(d16, uint16_t{0xff}));
    };
    StoreVec(DU8(), PackU16ToU8(fold(c), fold(c + 4)), static_cast<uint8_t*>(p) + i / 2, stream);
  }
};

/// How far ahead of the current block the source is prefetched. The hardware prefetchers
/// alone leave a single core well short of the memory bandwidth on some CPUs: on a
/// Sapphire Rapids host this distance made 1-thread conversions 25-70% faster and
/// 2-thread ones up to 2x; on Zen 4 it changed nothing measurable.
constexpr int64_t kPrefetchBytes = 4096;

/// Prefetches the source bytes that the block `kPrefetchBytes` ahead of `p` will read.
HWY_INLINE void PrefetchAhead(const void* p, int64_t bytes) {
  const char* ahead = static_cast<const char*>(p) + kPrefetchBytes;
  for (int64_t o = 0; o < bytes; o += 64) hwy::Prefetch(ahead + o);
}

/// Elements to convert with scalar code from i on so that the destination address
/// becomes aligned to `vec_bytes`; -1 if it never does (dst not element-aligned).
template <Dtype Dd>
int64_t StreamPeel(const void* dst, int64_t i, size_t vec_bytes) {
  const size_t addr = reinterpret_cast<uintptr_t>(dst) + static_cast<size_t>(storage_bytes(Dd, i));
  const size_t mis = addr % vec_bytes;
  if (mis == 0) return 0;
  const size_t bytes = vec_bytes - mis;
  if constexpr (Dd == Dtype::f4e2m1) {
    return static_cast<int64_t>(2 * bytes);
  } else {
    constexpr size_t es = bit_width(Dd) / 8;
    return bytes % es ? -1 : static_cast<int64_t>(bytes / es);
  }
}

// f32 / bf16 -> fp8 / fp4 on AVX3: the encoding runs in u16 lanes, twice as many per
// vector (EncodeMiniFloatFromBF16). bf16 sources are that already. f32 sources are first
// cut to their top 16 bits with the dropped bits' OR kept in the last bit (round to
// odd): fp8 and fp4 round at bit 20 or above of the f32 pattern, so every later rounding
// decision reads the same round bit (kept exactly) and the same sticky OR (bit 16 holds
// the rest), and every compare (NaN, overflow) reads the same answer. The exhaustive
// test checks all 2^32 inputs on this path.
#if HWY_TARGET <= HWY_AVX3
template <Dtype S, Dtype Dd>
constexpr bool kU16Lanes = (S == Dtype::bf16 || S == Dtype::f32) &&
                           (Dd == Dtype::f8e4m3fn || Dd == Dtype::f8e5m2 || Dd == Dtype::f4e2m1);
#else
template <Dtype S, Dtype Dd>
constexpr bool kU16Lanes = false;
#endif

template <Dtype Dd>
struct U16LaneFormat;
template <>
struct U16LaneFormat<Dtype::f8e4m3fn> {
  static constexpr nd::MiniFloat kF = nd::kF8E4M3FN;
};
template <>
struct U16LaneFormat<Dtype::f8e5m2> {
  static constexpr nd::MiniFloat kF = nd::kF8E5M2;
};
template <>
struct U16LaneFormat<Dtype::f4e2m1> {
  static constexpr nd::MiniFloat kF = nd::kF4E2M1;
};

/// Elements i .. i + 2N of a bf16 or f32 source as bf16-like u16 patterns (f32: round
/// to odd, see above).
template <Dtype S>
HWY_INLINE hn::Vec<DU16> LoadAsU16(const void* src, int64_t i) {
  const DU16 d16;
  if constexpr (S == Dtype::bf16) {
    return hn::LoadU(d16, static_cast<const uint16_t*>(src) + i);
  } else {
    const DU d;
    const auto* p = static_cast<const uint32_t*>(src) + i;
    auto to_odd = [&](VU x) {
      const VU sticky = hn::Min(hn::And(x, hn::Set(d, 0xffffu)), hn::Set(d, 1u));
      return hn::Or(hn::ShiftRight<16>(x), sticky);
    };
    return PackU16(d, to_odd(hn::LoadU(d, p)), to_odd(hn::LoadU(d, p + hn::Lanes(d))));
  }
}

/// One block of the u16-lane path at element i: 64 bytes of output.
template <Dtype S, Dtype Dd>
HWY_INLINE void U16LaneBlock(const RangeArgs& args, int64_t i, hn::Vec<DU16> ovf, bool stream) {
  const DU16 d16;
  const int64_t n16 = static_cast<int64_t>(hn::Lanes(d16));
  constexpr nd::MiniFloat F = U16LaneFormat<Dd>::kF;
  constexpr int kVecs16 = Dd == Dtype::f4e2m1 ? 4 : 2;
  PrefetchAhead(static_cast<const char*>(args.src) + storage_bytes(S, i),
                storage_bytes(S, kVecs16 * n16));
  auto enc = [&](int64_t k) {
    return EncodeMiniFloatFromBF16<F>(d16, LoadAsU16<S>(args.src, i + k * n16), ovf);
  };
  if constexpr (Dd == Dtype::f4e2m1) {
    // Codes < 16 in u16 lanes -> bytes -> nibble pairs, as Sink<f4e2m1>::Store.
    auto fold = [&](hn::Vec<DU8> bytes) {
      const auto w = hn::BitCast(d16, bytes);
      return hn::And(hn::Or(w, hn::ShiftRight<4>(w)), hn::Set(d16, uint16_t{0xff}));
    };
    const auto lo = fold(PackU16ToU8(enc(0), enc(1)));
    const auto hi = fold(PackU16ToU8(enc(2), enc(3)));
    StoreVec(DU8(), PackU16ToU8(lo, hi), static_cast<uint8_t*>(args.dst) + i / 2, stream);
  } else {
    StoreVec(DU8(), PackU16ToU8(enc(0), enc(1)), static_cast<uint8_t*>(args.dst) + i, stream);
  }
}

template <Dtype S, Dtype Dd>
void ConvertRange(const RangeArgs& args, int64_t begin, int64_t end) {
  const DU d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  constexpr int R = Sink<Dd>::kVecs;
  const int64_t block = n * R;
  int64_t i = begin;
  bool stream = args.stream;
  if (stream) {
    const int64_t peel = StreamPeel<Dd>(args.dst, i, hn::Lanes(d) * sizeof(uint32_t));
    // Packed f4e2m1 sources load whole bytes: the vector loop must start on an even index.
    if (peel < 0 || (S == Dtype::f4e2m1 && peel % 2 != 0)) {
      stream = false;
    } else if (peel > 0) {
      const int64_t stop = std::min(end, i + peel);
      convert_simd_detail::convert_scalar(args, i, stop);
      i = stop;
    }
  }
  if constexpr (kU16Lanes<S, Dd>) {
    // Same block size as below: 64 bytes of output per block.
    const hn::Vec<DU16> ovf16 = hn::Set(DU16(), static_cast<uint16_t>(args.ovf_code));
    for (; i + block <= end; i += block) U16LaneBlock<S, Dd>(args, i, ovf16, stream);
  }
  const VU ovf = hn::Set(d, args.ovf_code);
  const int64_t block_src_bytes = storage_bytes(S, block);
  for (; i + block <= end; i += block) {
    PrefetchAhead(static_cast<const char*>(args.src) + storage_bytes(S, i), block_src_bytes);
    VU codes[R];
    for (int r = 0; r < R; ++r)
      codes[r] = Sink<Dd>::Encode(d, Source<S>::Load(d, args.src, i + r * n), ovf);
    Sink<Dd>::Store(d, codes, args.dst, i, stream);
  }
  if (i < end) convert_simd_detail::convert_scalar(args, i, end);
  // Streaming stores are weakly ordered: make them visible before the caller (or the
  // OpenMP barrier) hands the output on.
  if (stream) hwy::FlushStream();
}

// f64 -> f64 is an exact copy, payloads included.
inline void CopyF64Range(const RangeArgs& args, int64_t begin, int64_t end) {
  std::memcpy(static_cast<double*>(args.dst) + begin, static_cast<const double*>(args.src) + begin,
              static_cast<size_t>(end - begin) * sizeof(double));
}

template <Dtype S>
RangeFn SelectForSource(Dtype dst) {
  switch (dst) {
    case Dtype::f32:
      return &ConvertRange<S, Dtype::f32>;
    case Dtype::f64:
      if constexpr (S == Dtype::f64) {
        return &CopyF64Range;
      } else {
        return &ConvertRange<S, Dtype::f64>;
      }
    case Dtype::f16:
      return &ConvertRange<S, Dtype::f16>;
    case Dtype::bf16:
      return &ConvertRange<S, Dtype::bf16>;
    case Dtype::f8e4m3fn:
      return &ConvertRange<S, Dtype::f8e4m3fn>;
    case Dtype::f8e5m2:
      return &ConvertRange<S, Dtype::f8e5m2>;
    case Dtype::e8m0:
      return &ConvertRange<S, Dtype::e8m0>;
    case Dtype::f4e2m1:
      return &ConvertRange<S, Dtype::f4e2m1>;
    default:
      return nullptr;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace simd_convert

// The two dispatched entry points (HWY_EXPORT needs them directly in HWY_NAMESPACE).

/// This target's converter for one dtype pair; nullptr for a non-float dtype.
convert_simd_detail::RangeFn SelectRange(Dtype src, Dtype dst) {
  using simd_convert::SelectForSource;
  switch (src) {
    case Dtype::f64:
      return SelectForSource<Dtype::f64>(dst);
    case Dtype::f32:
      return SelectForSource<Dtype::f32>(dst);
    case Dtype::f16:
      return SelectForSource<Dtype::f16>(dst);
    case Dtype::bf16:
      return SelectForSource<Dtype::bf16>(dst);
    case Dtype::f8e4m3fn:
      return SelectForSource<Dtype::f8e4m3fn>(dst);
    case Dtype::f8e5m2:
      return SelectForSource<Dtype::f8e5m2>(dst);
    case Dtype::e8m0:
      return SelectForSource<Dtype::e8m0>(dst);
    case Dtype::f4e2m1:
      return SelectForSource<Dtype::f4e2m1>(dst);
    default:
      return nullptr;
  }
}

const char* SelectedTargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectRange);
HWY_EXPORT(SelectedTargetName);

namespace convert_simd_detail {

int64_t compiled_targets() { return HWY_TARGETS; }

std::string dispatched_target() { return HWY_DYNAMIC_DISPATCH(SelectedTargetName)(); }

// A quarter of the last-level cache (what one call may reasonably leave there for the
// next op), within [4, 64] MiB, and 4 MiB when the OS does not say.
int64_t stream_threshold_bytes() {
  static const int64_t bytes = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    const int64_t quarter = l3 > 0 ? static_cast<int64_t>(l3) / 4 : 0;
    return std::clamp<int64_t>(quarter, int64_t{4} << 20, int64_t{64} << 20);
  }();
  return bytes;
}

void convert_scalar(const RangeArgs& a, int64_t begin, int64_t end) {
  if (a.src_dtype == Dtype::f64 && a.dst_dtype == Dtype::f64) {
    std::memcpy(static_cast<double*>(a.dst) + begin, static_cast<const double*>(a.src) + begin,
                static_cast<size_t>(end - begin) * sizeof(double));
    return;
  }
  if (a.dst_dtype == Dtype::f4e2m1) {
    // Whole bytes, low nibble first; an odd final element leaves the high nibble 0,
    // as the reference kernel does.
    auto* out = static_cast<uint8_t*>(a.dst);
    for (int64_t i = begin; i < end; i += 2) {
      uint32_t byte = convert_detail::encode_f32(convert_detail::load_f32(a.src, a.src_dtype, i),
                                                 Dtype::f4e2m1, a.saturation);
      if (i + 1 < end)
        byte |= convert_detail::encode_f32(convert_detail::load_f32(a.src, a.src_dtype, i + 1),
                                           Dtype::f4e2m1, a.saturation)
                << 4;
      out[i >> 1] = static_cast<uint8_t>(byte);
    }
    return;
  }
  for (int64_t i = begin; i < end; ++i)
    convert_detail::store_f32(a.dst, a.dst_dtype, i,
                              convert_detail::load_f32(a.src, a.src_dtype, i), a.saturation);
}

}  // namespace convert_simd_detail

namespace {

using convert_simd_detail::RangeArgs;
using convert_simd_detail::RangeFn;

/// numeric.hpp's code (without sign) for a finite value past the largest one; +-Inf
/// gets the same code in every format and mode.
uint32_t overflow_code(Dtype dst, Saturation sat) {
  namespace nd = numeric_detail;
  const bool finite = sat == Saturation::finite;
  switch (dst) {
    case Dtype::f16:
      return finite ? nd::kF16.max_code() : nd::kF16.inf_code();
    case Dtype::bf16:
      return finite ? nd::kBF16.max_code() : nd::kBF16.inf_code();
    case Dtype::f8e5m2:
      return finite ? nd::kF8E5M2.max_code() : nd::kF8E5M2.inf_code();
    case Dtype::f8e4m3fn:
      return finite ? nd::kF8E4M3FN.max_code() : nd::kF8E4M3FN.nan_code();
    case Dtype::f4e2m1:
      return nd::kF4E2M1.max_code();  // no Inf or NaN: always saturates
    case Dtype::e8m0:
      return finite ? 0xfeu : 0xffu;
    default:
      return 0;  // f32 and f64 destinations never overflow
  }
}

// Chunks of this many elements go to OpenMP threads (an even count, a multiple of every
// vector block). One chunk or fewer runs on the calling thread: below that, starting
// threads costs more than it saves.
constexpr int64_t kChunk = int64_t{1} << 16;

class ConvertSimd final : public Kernel<ConvertOp> {
 public:
  std::string_view name() const override { return "convert_simd"; }

  std::string decline(const ConvertDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!d.src_contiguous()) return "src not contiguous";
    if (!d.dst_contiguous()) return "dst not contiguous";
    return {};
  }

  KernelSku sku(const ConvertDesc& d) const override {
    return {"convert",
            Backend::cpu,
            std::string(dtype_name(d.src)) + "->" + std::string(dtype_name(d.dst)),
            "",
            convert_simd_detail::dispatched_target(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const ConvertDesc&) const override {
    return {
        "exact: one round-to-nearest-even per element (f64 sources via f32), integer "
        "arithmetic, bit-identical to convert_reference",
        std::nullopt, true, true};
  }

  void run(const ConvertDesc& d, const ConvertArgs& a, const Stream&, Workspace) const override {
    const int64_t n = d.numel();
    if (n == 0) return;
    // One dispatch per call: the chosen target's converter for this dtype pair.
    const RangeFn fn = HWY_DYNAMIC_DISPATCH(SelectRange)(d.src, d.dst);
    if (!fn)
      throw_error(ErrorCode::internal, "convert_simd: no converter for " +
                                           std::string(dtype_name(d.src)) + "->" +
                                           std::string(dtype_name(d.dst)));
    RangeArgs args{a.src.data(), a.dst.data(), d.src,
                   d.dst,        d.saturation, overflow_code(d.dst, d.saturation),
                   false};
    args.stream = storage_bytes(d.src, n) + storage_bytes(d.dst, n) >=
                  convert_simd_detail::stream_threshold_bytes();

    const int64_t chunks = (n + kChunk - 1) / kChunk;
    if (chunks > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < chunks; ++c) fn(args, c * kChunk, std::min(n, (c + 1) * kChunk));
    } else {
      fn(args, 0, n);
    }
  }
};

}  // namespace

const Kernel<ConvertOp>& convert_simd_kernel() {
  static const ConvertSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
