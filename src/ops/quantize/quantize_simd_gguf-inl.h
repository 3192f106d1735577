// GGUF Q8_0 and Q4_0 in the SIMD quantize kernel (quantize_simd.cpp), for Highway's
// foreach_target pattern: ggml's quantize_row_q8_0_ref / q4_0_ref arithmetic on blocks of 32
// values, in batches of N blocks whose d, 1/d and f16(d) are computed as vectors; blocks
// with an f32-subnormal d take the reference codec. The including file turns FMA
// contraction off (x * id + 8.5 must round twice).
#if defined(LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_GGUF_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_GGUF_INL_H_
#undef LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_GGUF_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_GGUF_INL_H_
#endif

#include <hwy/highway.h>
#include <omp.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/convert_simd-inl.h"
#include "cpu/quant_simd-inl.h"
#include "cpu/quant_simd.hpp"
#include "formats/gguf_block_codecs.hpp"
#include "lowbit/numeric.hpp"
#include "ops/quantize/quantize_simd_elements-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::QCall;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- GGUF ---------------------------------------------------------------------------------------

constexpr int kQK = 32;
constexpr int64_t kNV = kQK / static_cast<int64_t>(kMaxLanes) > 0 ? kQK / kMaxLanes : 1;

/// Loads block b's 32 values; returns max |x| as bits.
template <Dtype S>
HWY_INLINE uint32_t LoadBlock(const void* src, int64_t e, VF* x) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VI am = hn::Zero(DI());
  for (int64_t v = 0; v < kNV; ++v) {
    x[v] = LoadSrc<S>(df, src, e + v * N);
    am = hn::Max(am, AbsBits(x[v]));
  }
  return static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(DI(), am)));
}

/// A block through the reference codec (degenerate scales): its 32 values as f32 first.
template <class Codec>
HWY_INLINE void ReferenceBlock(const VF* x, uint8_t* y, Codec codec) {
  const DF df;
  HWY_ALIGN float tmp[kQK];
  for (int64_t v = 0; v < kNV; ++v) hn::Store(x[v], df, tmp + v * hn::Lanes(df));
  codec(tmp, y, 1);
}

/// One Q8_0 block's codes (d normal or 0, so |x * id| <= 127.00002).
HWY_INLINE void Q8_0Codes(const VF* x, float id, uint8_t* y) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF vid = hn::Set(df, id);
  const VF half = hn::Set(df, 0.49999997f);  // the float below 0.5
#if HWY_TARGET <= HWY_AVX3
  if constexpr (kNV == 2) {
    // Both vectors' codes in one 32-byte store: packssdw / packsswb interleave the two
    // vectors per 128-bit lane (dword j of lane k: codes 4k..4k+3 of vector j), one vpermd
    // puts them in order. Saturation cannot bite: |x * id| <= 127.00002 rounds into int8.
    const VF t0 = hn::Mul(x[0], vid), t1 = hn::Mul(x[1], vid);
    const __m512i c0 = CvttI32(hn::Add(t0, hn::CopySign(half, t0))).raw;
    const __m512i c1 = CvttI32(hn::Add(t1, hn::CopySign(half, t1))).raw;
    const __m512i w = _mm512_packs_epi32(c0, c1);
    const __m512i b = _mm512_packs_epi16(w, w);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y),
                        _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, b)));
    return;
  }
#endif
  for (int64_t v = 0; v < kNV; ++v) {
    const VF t = hn::Mul(x[v], vid);
    // roundf (half away from zero) then the int8 cast.
    const VI c = CvttI32(hn::Add(t, hn::CopySign(half, t)));
    hn::StoreU(hn::DemoteTo(DI8(), c), DI8(), reinterpret_cast<int8_t*>(y + v * N));
  }
}

/// ggml's quantize_row_q8_0_ref: d = amax / 127, id = 1/d (or 0), q = roundf(x * id).
/// Blocks go in batches of N: their maxima in one reduction, d, 1/d and f16(d) as vectors.
template <Dtype S>
HWY_INLINE bool Q8_0Blocks(const QCall& q, int64_t e0, int64_t nb, uint8_t* yr) {
  const DF df;
  const DU du;
  const DI di;
  constexpr size_t NL = kMaxLanes;
  const int64_t N = static_cast<int64_t>(NL);
  constexpr int64_t kBytes = 2 + kQK;
  // The codes' byte stores may alias q (for the compiler): the source pointer in a local.
  const void* const src = q.src;
  {
    const int64_t er = e0;
    int64_t b = 0;
    // The next batch's source lines are prefetched (for f32, 2 KiB ahead on AVX-512): on two
    // threads of the 2-core Zen 4 dev machine, bench_quantize_cpu in 5 alternating pairs of
    // processes measured 0.79-1.08x ggml's from_float with it against 0.68-0.86x without
    // (one thread: no clear change); 4 KiB ahead was no better, 8 KiB worse. The hardware
    // prefetcher alone falls behind when both cores stream.
    // One thread streams faster without it (2-core Zen 4, session 24: 13.8-14.8 ms against
    // 16.3-16.8 for 4096 x 16384 f32, 1.05-1.14x ggml's from_float instead of 0.93-0.99x):
    // only calls inside a parallel region of several threads prefetch.
    const int64_t batch_bytes = N * kQK * static_cast<int64_t>(sizeof(SrcT<S>));
    const bool prefetch = omp_get_num_threads() > 1;
    for (; b + N <= nb; b += N) {
      VI am[NL];
      if (prefetch) {
        const char* ahead =
            static_cast<const char*>(src) + (er + b * kQK) * static_cast<int64_t>(sizeof(SrcT<S>));
        for (int64_t o = batch_bytes; o < 2 * batch_bytes; o += 64) hwy::Prefetch(ahead + o);
      }
      for (size_t i = 0; i < NL; ++i) {
        const int64_t e = er + (b + static_cast<int64_t>(i)) * kQK;
        VI a = AbsBits(LoadSrc<S>(df, src, e));
        for (int64_t v = 1; v < kNV; ++v) a = hn::Max(a, AbsBits(LoadSrc<S>(df, src, e + v * N)));
        am[i] = a;
      }
      const VI amax = ReduceMaxGroups(am);
      const auto finite = hn::Lt(amax, hn::Set(di, static_cast<int32_t>(kNonFinite)));
      if (!hn::AllTrue(di, finite) && NonFinite(q)) return false;
      const VF d = hn::Div(hn::BitCast(df, amax), hn::Set(df, 127.0f));
      const VF id = hn::IfThenZeroElse(hn::Eq(d, hn::Zero(df)), hn::Div(hn::Set(df, 1.0f), d));
      const VU h = simd_convert::EncodeMiniFloat<nd::kF16, true>(du, hn::BitCast(du, d),
                                                                 hn::Set(du, nd::kF16.inf_code()));
      // store_scale_f16 refuses a scale that overflows f16 (from finite values).
      if (!hn::AllFalse(du,
                        hn::And(hn::RebindMask(du, finite),
                                hn::Eq(hn::And(h, hn::Set(du, 0x7fffu)), hn::Set(du, 0x7c00u))))) {
        Refuse(q);
        return false;
      }
      HWY_ALIGN float id_l[NL], d_l[NL];
      HWY_ALIGN uint32_t h_l[NL];
      hn::Store(id, df, id_l);
      hn::Store(d, df, d_l);
      hn::Store(h, du, h_l);
      // A subnormal d (x * id may leave [-127.5, 127.5]) sends its block to the reference;
      // batches without one (almost all) skip the test per block.
      const bool tiny =
          !hn::AllFalse(df, hn::And(hn::Gt(d, hn::Zero(df)), hn::Lt(d, hn::Set(df, FLT_MIN))));
      for (size_t i = 0; i < NL; ++i) {
        const size_t l = GroupLane(i);
        const int64_t e = er + (b + static_cast<int64_t>(i)) * kQK;
        uint8_t* y = yr + (b + static_cast<int64_t>(i)) * kBytes;
        VF x[kNV];
        for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, src, e + v * N);
        if (tiny && d_l[l] != 0.0f && d_l[l] < FLT_MIN) {
          ReferenceBlock(x, y, gguf::detail::quantize_q8_0);
          continue;
        }
        const uint16_t h16 = static_cast<uint16_t>(h_l[l]);
        std::memcpy(y, &h16, 2);
        Q8_0Codes(x, id_l[l], y + 2);
      }
    }
    for (; b < nb; ++b) {
      uint8_t* y = yr + b * kBytes;
      VF x[kNV];
      const uint32_t amax_bits = LoadBlock<S>(q.src, er + b * kQK, x);
      if (amax_bits >= kNonFinite && NonFinite(q)) return false;
      const float d = lowbit::quant_simd::float_of(amax_bits) / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const uint16_t h = f32_to_f16(d);
      if ((h & 0x7fffu) == 0x7c00u && amax_bits < kNonFinite) {
        Refuse(q);
        return false;
      }
      if (d != 0.0f && d < FLT_MIN) {
        ReferenceBlock(x, y, gguf::detail::quantize_q8_0);
        continue;
      }
      std::memcpy(y, &h, 2);
      Q8_0Codes(x, id, y + 2);
    }
  }
  return true;
}

/// ggml's quantize_row_q4_0_ref: max = the first value of largest |x|, d = max / -8,
/// q = min(15, (int8)(x * id + 8.5)).
template <Dtype S>
HWY_INLINE bool Q4_0Blocks(const QCall& q, int64_t e0, int64_t nb, uint8_t* y) {
  const DF df;
  const DU du;
  const DI di;
  constexpr size_t NL = kMaxLanes;
  const int64_t N = static_cast<int64_t>(NL);
  constexpr int64_t kBytes = 2 + kQK / 2;
  const VF bias = hn::Set(df, 8.5f);
  const VI fifteen = hn::Set(di, 15);
  // The first value of largest |x| (ggml's max; +0 for an all-zero block).
  auto signed_max = [&](const VF* x, uint32_t amax_bits) {
    if (amax_bits == 0) return 0.0f;
    const VI target = hn::Set(di, static_cast<int32_t>(amax_bits));
    for (int64_t v = 0; v < kNV; ++v) {
      const intptr_t lane = hn::FindFirstTrue(di, hn::Eq(AbsBits(x[v]), target));
      if (lane >= 0) return hn::ExtractLane(x[v], static_cast<size_t>(lane));
    }
    return 0.0f;  // not reached
  };
  auto codes = [&](const VF* x, float id, uint8_t* out) {
    const VF vid = hn::Set(df, id);
    VI c[kNV];
    for (int64_t v = 0; v < kNV; ++v)
      c[v] = hn::Min(CvttI32(hn::Add(hn::Mul(x[v], vid), bias)), fifteen);
    // Byte j holds element j (low nibble) and j + 16 (high nibble).
    for (int64_t v = 0; v < kNV / 2; ++v)
      hn::StoreU(hn::DemoteTo(DU8(), hn::Or(c[v], hn::ShiftLeft<4>(c[v + kNV / 2]))), DU8(),
                 out + v * N);
  };
  int64_t b = 0;
  // Batches of N blocks: maxima in one reduction, d, 1/d and f16(d) as vectors.
  for (; b + N <= nb; b += N) {
    VI am[NL];
    for (size_t i = 0; i < NL; ++i) {
      const int64_t e = e0 + (b + static_cast<int64_t>(i)) * kQK;
      VI a = AbsBits(LoadSrc<S>(df, q.src, e));
      for (int64_t v = 1; v < kNV; ++v) a = hn::Max(a, AbsBits(LoadSrc<S>(df, q.src, e + v * N)));
      am[i] = a;
    }
    const VI amax = ReduceMaxGroups(am);
    const auto finite = hn::Lt(amax, hn::Set(di, static_cast<int32_t>(kNonFinite)));
    if (!hn::AllTrue(di, finite) && NonFinite(q)) return false;
    HWY_ALIGN uint32_t am_l[NL];
    HWY_ALIGN float max_l[NL], id_l[NL], d_l[NL];
    HWY_ALIGN uint32_t h_l[NL];
    hn::Store(hn::BitCast(du, amax), du, am_l);
    for (size_t i = 0; i < NL; ++i) {
      const size_t l = GroupLane(i);
      const int64_t e = e0 + (b + static_cast<int64_t>(i)) * kQK;
      VF x[kNV];
      for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, q.src, e + v * N);
      max_l[l] = signed_max(x, am_l[l]);
    }
    const VF d = hn::Div(hn::Load(df, max_l), hn::Set(df, -8.0f));
    const VF id = hn::IfThenZeroElse(hn::Eq(d, hn::Zero(df)), hn::Div(hn::Set(df, 1.0f), d));
    const VU h = simd_convert::EncodeMiniFloat<nd::kF16, true>(du, hn::BitCast(du, d),
                                                               hn::Set(du, nd::kF16.inf_code()));
    if (!hn::AllFalse(du,
                      hn::And(hn::RebindMask(du, finite),
                              hn::Eq(hn::And(h, hn::Set(du, 0x7fffu)), hn::Set(du, 0x7c00u))))) {
      Refuse(q);
      return false;
    }
    hn::Store(id, df, id_l);
    hn::Store(d, df, d_l);
    hn::Store(h, du, h_l);
    for (size_t i = 0; i < NL; ++i) {
      const size_t l = GroupLane(i);
      const int64_t e = e0 + (b + static_cast<int64_t>(i)) * kQK;
      uint8_t* yb = y + (b + static_cast<int64_t>(i)) * kBytes;
      VF x[kNV];
      for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, q.src, e + v * N);
      if (d_l[l] != 0.0f && std::fabs(d_l[l]) < FLT_MIN) {  // 1/d overflows: ggml's own path
        ReferenceBlock(x, yb, gguf::detail::quantize_q4_0);
        continue;
      }
      const uint16_t h16 = static_cast<uint16_t>(h_l[l]);
      std::memcpy(yb, &h16, 2);
      codes(x, id_l[l], yb + 2);
    }
  }
  for (; b < nb; ++b) {
    uint8_t* yb = y + b * kBytes;
    VF x[kNV];
    const uint32_t amax_bits = LoadBlock<S>(q.src, e0 + b * kQK, x);
    if (amax_bits >= kNonFinite && NonFinite(q)) return false;
    const float d = signed_max(x, amax_bits) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t h = f32_to_f16(d);
    if ((h & 0x7fffu) == 0x7c00u && amax_bits < kNonFinite) {
      Refuse(q);
      return false;
    }
    if (d != 0.0f && std::fabs(d) < FLT_MIN) {
      ReferenceBlock(x, yb, gguf::detail::quantize_q4_0);
      continue;
    }
    std::memcpy(yb, &h, 2);
    codes(x, id, yb + 2);
  }
  return true;
}

/// GGUF rows through a per-type block function. (Streaming the blocks past the caches,
/// 32 blocks at a time from an L1 buffer, was measured slower here than plain stores: the
/// output is a quarter of the input at most. Re-measured in session 17 on a quiet machine,
/// whole lines staged across groups for any row alignment: q8_0 on one thread ran 18.6 GiB/s
/// in some processes and 13.4-13.9 in others, plain stores a steady 17.2-18.1: not kept.)
template <class Blocks>
HWY_INLINE void GgufRows(const QCall& q, int64_t r0, int64_t r1, Blocks blocks) {
  const int64_t K = q.L.gm.k, nb = K / kQK;
  for (int64_t r = r0; r < r1; ++r)
    if (!blocks(q, r * K, nb, q.codes + r * q.row_bytes)) return;
}

template <Dtype S>
void Q8_0Rows(const QCall& q, int64_t r0, int64_t r1) {
  GgufRows(q, r0, r1, &Q8_0Blocks<S>);
}
template <Dtype S>
void Q4_0Rows(const QCall& q, int64_t r0, int64_t r1) {
  GgufRows(q, r0, r1, &Q4_0Blocks<S>);
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_QUANTIZE_SIMD_GGUF_INL_H_
