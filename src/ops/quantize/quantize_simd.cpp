// The CPU SIMD quantize kernel: Highway, dispatched at run time (once per call) to the
// best target the CPU supports (AVX3, AVX2, SSE4), OpenMP across rows / chunks. Contiguous
// f32 / f16 / bf16 sources; every non-GGUF scheme (int8 / uint8 / int4 / uint4 symmetric
// or affine at every granularity, fp8 e4m3 / e5m2 at every granularity, nvfp4, mxfp4,
// mxfp8), dynamic and static, and GGUF Q8_0 and Q4_0. Bit-identical to quantize_reference
// (tests/cpp/test_quantize_backends.cpp checks codes, scales, zero points and global
// scales on every scheme).
//
// How the bits stay the reference's:
//  * Per-group scales, zero points and block codes come from formats/quant_math.hpp's own
//    scalar functions (cpu/quant_simd.hpp), fed with statistics that are exact: max |x|,
//    max(0, max x) and max(0, -min x) are maxima of bit patterns of non-negative floats,
//    which order like integers, so the vector reductions (and the atomic maxima that merge
//    threads' partial results) give the reference's values in any order.
//  * The element rules are the reference's f32 operations in its order: rne(x * inv) +
//    zero, clamped (integers); fp8(x * inv) with numeric.hpp's rounding done in integers
//    (cpu/convert_simd-inl.h); e2m1(clamp(x / total)) (nvfp4); elem(x * 2^-e) (MX).
//  * GGUF: ggml's quantize_row_q8_0_ref / q4_0_ref arithmetic (formats/gguf_legacy.cpp):
//    roundf as trunc(v + copysign(0.49999997, v)) (checked against roundf over all 2^32
//    inputs), Q4_0's truncation of x * id + 8.5, f16 scales through lowbit::f32_to_f16.
//    Blocks whose scale is an f32 subnormal (1/d overflows or loses its bound) take the
//    reference codec itself for that block.
//  * No FMA contraction anywhere in this file (below): x * id + 8.5 must round twice.
//  * Errors: non-finite inputs (any scheme) and GGUF scales that overflow f16 are detected
//    during the passes (from the same |x| maxima), and invalid given scales before them;
//    the call is then handed to quantize_reference, which throws its exact Error (first
//    bad element's multi-index and flat index, or the block and field).
//
// Passes: GGUF, MX, NVFP4 (after a tensor-amax pass) and dynamic token / block / leading-
// axis-channel schemes run fused per row: each group's statistics, parameters and codes
// while its data is in L1/L2. Per-tensor, other per-channel and 2-D-tile schemes run a
// statistics pass, the scalar parameters, then the code pass. Static schemes run the code
// pass alone. 4-bit codes are packed from a small byte buffer, any start parity.

// ggml's reference rounds every a*b+c twice (see formats/gguf_legacy.cpp); the Highway
// targets enable FMA, and GCC would otherwise fuse vector and scalar products with sums.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_QUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_QUANTIZE_SIMD_SHARED_

// SSSE3 adds little over SSE4's coverage and compile time; SCALAR (the static baseline with
// GCC < 12.3) is compiled but declines.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/quant_simd.hpp"
#include "formats/gguf_block_codecs.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit::quant_simd {

/// A call's range functions for one (source dtype, element rule), from the dispatched
/// target. Each processes [begin, end) of its unit: flat elements, columns or rows.
struct QuantFns {
  using Fn = void (*)(const QCall&, int64_t, int64_t);
  Fn stats_chunk = nullptr;  ///< flat elements: per-group maxima (atomic)
  Fn stats_cols = nullptr;   ///< columns of the period, every row (columns mode)
  Fn codes_chunk = nullptr;  ///< flat elements: codes from q.mul / q.add
  Fn fused_rows = nullptr;   ///< rows: statistics, parameters and codes per group
  Fn gguf_rows = nullptr;    ///< rows of GGUF blocks
};

}  // namespace lowbit::quant_simd

#endif  // LOWBIT_OPS_QUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/quantize/quantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Fmt;
using lowbit::quant_simd::GroupParams;
using lowbit::quant_simd::QCall;
using lowbit::quant_simd::QuantFns;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

/// Codes of byte-buffered 4-bit runs go through this many elements at a time.
constexpr int64_t kTmp = 4096;

// ---- element rules --------------------------------------------------------------------------

/// x86's truncating f32 -> i32 (cvttps2dq): INT32_MIN for NaN and out-of-range values, the
/// behaviour ggml's reference casts have on x86-64 (Highway's ConvertTo saturates instead).
HWY_INLINE VI CvttI32(VF v) {
#if HWY_TARGET <= HWY_AVX3
  return VI{_mm512_cvttps_epi32(v.raw)};
#elif HWY_TARGET == HWY_AVX2
  return VI{_mm256_cvttps_epi32(v.raw)};
#else
  return VI{_mm_cvttps_epi32(v.raw)};
#endif
}

/// Flags a non-finite input; true if the pass should stop (the reference will throw).
HWY_INLINE bool NonFinite(const QCall& q) {
  q.bad->fetch_or(lowbit::quant_simd::kFlagNonFinite, std::memory_order_relaxed);
  return q.check_finite;
}
/// Flags what the reference refuses besides non-finite inputs.
HWY_INLINE void Refuse(const QCall& q) {
  q.bad->fetch_or(lowbit::quant_simd::kFlagRefuse, std::memory_order_relaxed);
}

/// The f32 value an fp8 / fp4 rule encodes: x * mul, or nvfp4's clamp(x / total, -6, 6)
/// (a division, as the reference).
template <Fmt F>
HWY_INLINE VF Scaled(VF x, VF mul) {
  if constexpr (F == Fmt::nvfp4) {
    const DF df;
    const VF y = hn::Div(x, mul);
    return hn::Min(hn::Max(y, hn::Set(df, -6.0f)), hn::Set(df, 6.0f));
  } else {
    return hn::Mul(x, mul);
  }
}

/// The narrow format of an fp8 / fp4 rule; codes saturate (Saturation::finite).
template <Fmt F>
constexpr nd::MiniFloat kElem = F == Fmt::e5m2 || F == Fmt::mx8e5m2   ? nd::kF8E5M2
                                : F == Fmt::e4m3 || F == Fmt::mx8e4m3 ? nd::kF8E4M3FN
                                                                      : nd::kF4E2M1;

/// The codes of N elements x under a group's parameters (low 8 bits of each lane).
template <Fmt F>
HWY_INLINE VI Encode(VF x, VF mul, VF add, VF qmin, VF qmax) {
  if constexpr (F == Fmt::integer) {
    // int_quantize: clamp(rne(x * inv_scale) + zero, qmin, qmax).
    VF r = hn::Add(hn::Round(hn::Mul(x, mul)), add);
    r = hn::Min(hn::Max(r, qmin), qmax);
    return CvttI32(r);  // integral and in range: exact
  } else {
    const DU du;
    constexpr nd::MiniFloat M = kElem<F>;
    return hn::BitCast(DI(),
                       simd_convert::EncodeMiniFloat<M>(du, hn::BitCast(du, Scaled<F>(x, mul)),
                                                        hn::Set(du, M.max_code())));
  }
}

#if HWY_TARGET <= HWY_AVX3
/// AVX3: 2N fp8 / fp4 codes from two vectors of encode inputs, encoded in u16 lanes (twice
/// the lanes per instruction). Each f32 input is cut to its top 16 bits with the dropped
/// bits' OR kept in the last bit (round to odd): fp8 and fp4 round at bit 20 or above, so
/// every rounding decision and compare reads the same bits; convert's exhaustive test
/// checks this path against numeric.hpp for all 2^32 inputs.
template <Fmt F>
HWY_INLINE void EncodePairU16(VF y0, VF y1, uint8_t* out) {
  const DU du;
  const hn::Repartition<uint16_t, DF> d16;
  const hn::RebindToSigned<decltype(d16)> di16;
  const hn::Rebind<uint8_t, decltype(d16)> d8;
  constexpr nd::MiniFloat M = kElem<F>;
  auto to_odd = [&](VF y) {
    const VU x = hn::BitCast(du, y);
    const VU sticky = hn::Min(hn::And(x, hn::Set(du, 0xffffu)), hn::Set(du, 1u));
    return hn::Or(hn::ShiftRight<16>(x), sticky);
  };
  // packus works per 128-bit block; the 64-bit permute restores element order.
  const __m512i packed = _mm512_packus_epi32(to_odd(y0).raw, to_odd(y1).raw);
  const hn::Vec<decltype(d16)> w{
      _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), packed)};
  const auto c = simd_convert::EncodeMiniFloatFromBF16<M>(
      d16, w, hn::Set(d16, static_cast<uint16_t>(M.max_code())));
  hn::StoreU(hn::DemoteTo(d8, hn::BitCast(di16, c)), d8, out);
}
template <Fmt F>
constexpr bool kPairU16 = F != Fmt::integer&& F != Fmt::q8_0&& F != Fmt::q4_0;
#else
template <Fmt F>
constexpr bool kPairU16 = false;
template <Fmt F>
HWY_INLINE void EncodePairU16(VF, VF, uint8_t*) {}
#endif

/// Byte codes of `len` elements from e with uniform parameters; `amax` collects |x| bits
/// (the non-finite check of passes without statistics).
template <Dtype S, Fmt F>
HWY_INLINE void EncodeRun(const QCall& q, int64_t e, int64_t len, const GroupParams& p,
                          uint8_t* out, VI& amax) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  if (p.zero_codes) {
    std::memset(out, 0, static_cast<size_t>(len));
    return;
  }
  const VF mul = hn::Set(df, p.mul), add = hn::Set(df, p.add);
  const VF lo = hn::Set(df, static_cast<float>(q.qmin)),
           hi = hn::Set(df, static_cast<float>(q.qmax));
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    const VF x0 = LoadSrc<S>(df, q.src, e + i);
    const VF x1 = LoadSrc<S>(df, q.src, e + i + N);
    amax = hn::Max(amax, hn::Max(AbsBits(x0), AbsBits(x1)));
    if constexpr (kPairU16<F>) {
      EncodePairU16<F>(Scaled<F>(x0, mul), Scaled<F>(x1, mul), out + i);
    } else {
      StoreBytes(Encode<F>(x0, mul, add, lo, hi), out + i);
      StoreBytes(Encode<F>(x1, mul, add, lo, hi), out + i + N);
    }
  }
  for (; i + N <= len; i += N) {
    const VF x = LoadSrc<S>(df, q.src, e + i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytes(Encode<F>(x, mul, add, lo, hi), out + i);
  }
  if (i < len) {
    const VF x = LoadSrcPartial<S>(df, q.src, e + i, len - i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytesPartial(Encode<F>(x, mul, add, lo, hi), out + i, len - i);
  }
}

/// Byte codes with per-column parameters q.mul[col..], q.add[col..] (columns mode).
template <Dtype S, Fmt F>
HWY_INLINE void EncodeCols(const QCall& q, int64_t e, int64_t len, int64_t col, uint8_t* out,
                           VI& amax) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF lo = hn::Set(df, static_cast<float>(q.qmin)),
           hi = hn::Set(df, static_cast<float>(q.qmax));
  int64_t i = 0;
  for (; i + N <= len; i += N) {
    const VF x = LoadSrc<S>(df, q.src, e + i);
    amax = hn::Max(amax, AbsBits(x));
    const VF mul = hn::LoadU(df, q.mul + col + i), add = hn::LoadU(df, q.add + col + i);
    StoreBytes(Encode<F>(x, mul, add, lo, hi), out + i);
  }
  if (i < len) {
    HWY_ALIGN float m[kMaxLanes] = {}, a[kMaxLanes] = {};
    std::memcpy(m, q.mul + col + i, static_cast<size_t>(len - i) * sizeof(float));
    std::memcpy(a, q.add + col + i, static_cast<size_t>(len - i) * sizeof(float));
    const VF x = LoadSrcPartial<S>(df, q.src, e + i, len - i);
    amax = hn::Max(amax, AbsBits(x));
    StoreBytesPartial(Encode<F>(x, hn::Load(df, m), hn::Load(df, a), lo, hi), out + i, len - i);
  }
}

/// A run's codes into the code tensor (through a byte buffer for 4-bit codes).
template <Dtype S, Fmt F>
HWY_INLINE void QuantRun(const QCall& q, int64_t e, int64_t len, const GroupParams& p, VI& amax) {
  if (!q.packed) {
    EncodeRun<S, F>(q, e, len, p, q.codes + e, amax);
    return;
  }
  HWY_ALIGN uint8_t tmp[kTmp];
  for (int64_t off = 0; off < len; off += kTmp) {
    const int64_t m = std::min(kTmp, len - off);
    EncodeRun<S, F>(q, e + off, m, p, tmp, amax);
    PackNibbles(tmp, m, q.codes, e + off);
  }
}

template <Dtype S, Fmt F>
HWY_INLINE void QuantCols(const QCall& q, int64_t e, int64_t len, int64_t col, VI& amax) {
  if (!q.packed) {
    EncodeCols<S, F>(q, e, len, col, q.codes + e, amax);
    return;
  }
  HWY_ALIGN uint8_t tmp[kTmp];
  for (int64_t off = 0; off < len; off += kTmp) {
    const int64_t m = std::min(kTmp, len - off);
    EncodeCols<S, F>(q, e + off, m, col + off, tmp, amax);
    PackNibbles(tmp, m, q.codes, e + off);
  }
}

// ---- statistics ---------------------------------------------------------------------------

/// Maxima of a run as non-negative float bit patterns: |x| (symmetric) or max(0, x) and
/// max(0, -x) (affine; |x| is the larger of the two). Signed integer maxima from 0: a
/// negative x's pattern is a negative integer and never wins, and x's pattern with the
/// sign flipped is -x's.
struct RunMax {
  uint32_t amax = 0, hi = 0, neglo = 0;
};

template <Dtype S, bool kAffine>
HWY_INLINE RunMax RunStats(const void* src, int64_t e, int64_t len) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  VI a0 = hn::Zero(di), a1 = hn::Zero(di), n0 = hn::Zero(di), n1 = hn::Zero(di);
  auto acc = [&](VF x, VI& a, VI& nl) {
    if constexpr (kAffine) {
      const VI b = hn::BitCast(di, x);
      a = hn::Max(a, b);
      nl = hn::Max(nl, hn::Xor(b, sign));
    } else {
      a = hn::Max(a, AbsBits(x));
    }
  };
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    acc(LoadSrc<S>(df, src, e + i), a0, n0);
    acc(LoadSrc<S>(df, src, e + i + N), a1, n1);
  }
  for (; i + N <= len; i += N) acc(LoadSrc<S>(df, src, e + i), a0, n0);
  if (i < len) acc(LoadSrcPartial<S>(df, src, e + i, len - i), a1, n1);
  RunMax r;
  if constexpr (kAffine) {
    r.hi = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(a0, a1))));
    r.neglo = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(n0, n1))));
    r.amax = std::max(r.hi, r.neglo);
  } else {
    r.amax = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(a0, a1))));
  }
  return r;
}

constexpr uint32_t kNonFinite = 0x7f800000u;

template <Dtype S, bool kAffine>
void StatsChunk(const QCall& q, int64_t e0, int64_t e1) {
  ForEachRun(q.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    const RunMax r = RunStats<S, kAffine>(q.src, e, len);
    if (r.amax >= kNonFinite) NonFinite(q);
    lowbit::quant_simd::atomic_max(q.amax + g, r.amax);
    if constexpr (kAffine) {
      lowbit::quant_simd::atomic_max(q.hi + g, r.hi);
      lowbit::quant_simd::atomic_max(q.neglo + g, r.neglo);
    }
  });
}

/// Columns [c0, c1) of the period over every row: elementwise maxima into q.amax / q.hi /
/// q.neglo (indexed by column; this thread owns those columns).
template <Dtype S, bool kAffine>
void StatsCols(const QCall& q, int64_t c0, int64_t c1) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t P = q.L.period;
  const int64_t rows = P > 0 ? q.L.n / P : 0;
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  auto* am = reinterpret_cast<int32_t*>(q.amax);
  auto* hi = reinterpret_cast<int32_t*>(q.hi);
  auto* nl = reinterpret_cast<int32_t*>(q.neglo);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * P;
    int64_t c = c0;
    for (; c + N <= c1; c += N) {
      const VF x = LoadSrc<S>(df, q.src, base + c);
      hn::StoreU(hn::Max(hn::LoadU(di, am + c), AbsBits(x)), di, am + c);
      if constexpr (kAffine) {
        const VI b = hn::BitCast(di, x);
        hn::StoreU(hn::Max(hn::LoadU(di, hi + c), b), di, hi + c);
        hn::StoreU(hn::Max(hn::LoadU(di, nl + c), hn::Xor(b, sign)), di, nl + c);
      }
    }
    for (; c < c1; ++c) {
      const float x = convert_detail::load_f32(q.src, S, base + c);
      const int32_t b = static_cast<int32_t>(lowbit::quant_simd::bits_of(x));
      am[c] = std::max(am[c], b & 0x7fffffff);
      if constexpr (kAffine) {
        hi[c] = std::max(hi[c], b);
        nl[c] = std::max(nl[c], static_cast<int32_t>(static_cast<uint32_t>(b) ^ 0x80000000u));
      }
    }
  }
}

// ---- passes ---------------------------------------------------------------------------------

template <Dtype S, Fmt F>
void CodesChunk(const QCall& q, int64_t e0, int64_t e1) {
  VI amax = hn::Zero(DI());
  HWY_ALIGN uint8_t tmp[kTmp];
  // 4-bit codes: byte codes for pieces of kTmp elements, packed once per piece.
  const int64_t piece = q.packed ? kTmp : e1 - e0;
  for (int64_t p0 = e0; p0 < e1; p0 += piece) {
    const int64_t p1 = std::min(e1, p0 + piece);
    // Element e's byte code goes here.
    auto out = [&](int64_t e) { return q.packed ? tmp + (e - p0) : q.codes + e; };
    if (q.L.columns) {
      ForEachRowPiece(q.L.period, p0, p1, [&](int64_t e, int64_t len, int64_t col) {
        EncodeCols<S, F>(q, e, len, col, out(e), amax);
      });
    } else {
      ForEachRun(q.L, p0, p1, [&](int64_t e, int64_t len, int64_t g) {
        GroupParams p;
        p.mul = q.mul[g];
        p.add = q.add[g];
        EncodeRun<S, F>(q, e, len, p, out(e), amax);
      });
    }
    if (q.packed) PackNibbles(tmp, p1 - p0, q.codes, p0);
  }
  if (static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(DI(), amax))) >= kNonFinite) NonFinite(q);
}

// ---- batches of groups ------------------------------------------------------------------------

/// The parameters of N groups g0 .. g0 + N - 1 from their maxima (lanes in GroupLane
/// order), vectorised: the same f32 operations as formats/quant_math.hpp's functions, the
/// narrow-float roundings through numeric.hpp's integer rules. Writes the groups' scales
/// (or block codes) and mul / add per lane. False where the scalar rules serve (affine
/// integers, nvfp4 with a zero global scale).
template <Fmt F>
HWY_INLINE bool BatchParams(const QCall& q, VI amax_bits, int64_t g0, float* mul_l, float* add_l) {
  const DF df;
  const DU du;
  const DI di;
  constexpr size_t N = kMaxLanes;
  const VF amax = hn::BitCast(df, amax_bits);
  const VF zero = hn::Zero(df);
  const VF min_scale = hn::Set(df, formats::kMinScale);
  hn::Store(zero, df, add_l);
  if constexpr (F == Fmt::integer || F == Fmt::e4m3 || F == Fmt::e5m2) {
    VF s;
    if constexpr (F == Fmt::integer) {
      if (!q.symmetric) return false;
      // int_symmetric_params: flush(round_scale(amax / qmax)).
      s = hn::Div(amax, hn::Set(df, static_cast<float>(q.qmax)));
      if (q.scale_dtype == Dtype::f16) {
        const VU c = simd_convert::EncodeMiniFloat<nd::kF16>(du, hn::BitCast(du, s),
                                                             hn::Set(du, nd::kF16.max_code()));
        s = hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF16>(du, c));
      } else if (q.scale_dtype == Dtype::bf16) {
        const VU c = simd_convert::EncodeMiniFloat<nd::kBF16>(du, hn::BitCast(du, s),
                                                              hn::Set(du, nd::kBF16.max_code()));
        s = hn::BitCast(df, hn::ShiftLeft<16>(c));
      }
    } else {
      s = hn::Div(amax, hn::Set(df, F == Fmt::e5m2 ? 57344.0f : 448.0f));  // fp8_scale
    }
    s = hn::IfThenZeroElse(hn::Lt(s, min_scale), s);
    hn::Store(hn::IfThenZeroElse(hn::Eq(s, zero), hn::Div(hn::Set(df, 1.0f), s)), df, mul_l);
    HWY_ALIGN float s_l[N];
    hn::Store(s, df, s_l);
    for (size_t b = 0; b < N; ++b)
      convert_detail::store_f32(q.scale, q.fmt == Fmt::integer ? q.scale_dtype : Dtype::f32,
                                g0 + static_cast<int64_t>(b), s_l[GroupLane(b)],
                                Saturation::finite);
    return true;
  } else if constexpr (F == Fmt::nvfp4) {
    if (q.global == 0.0f) return false;
    const VF global = hn::Set(df, q.global);
    // nvfp4_block_scale: e4m3(clamp(amax / 6 / global, 2^-6, 448)).
    VF s = hn::Div(hn::Div(amax, hn::Set(df, 6.0f)), global);
    s = hn::Min(hn::Max(s, hn::Set(df, formats::kNvfp4BlockScaleMin)), hn::Set(df, 448.0f));
    const VU code = simd_convert::EncodeMiniFloat<nd::kF8E4M3FN>(
        du, hn::BitCast(du, s), hn::Set(du, nd::kF8E4M3FN.nan_code()));
    hn::Store(
        hn::Mul(global, hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF8E4M3FN>(du, code))),
        df, mul_l);
    HWY_ALIGN uint32_t c_l[N];
    hn::Store(code, du, c_l);
    auto* out = static_cast<uint8_t*>(q.scale) + g0;
    for (size_t b = 0; b < N; ++b) out[b] = static_cast<uint8_t>(c_l[GroupLane(b)]);
    return true;
  } else if constexpr (F == Fmt::mxfp4 || F == Fmt::mx8e4m3 || F == Fmt::mx8e5m2) {
    // mx_scale_code: floor(log2(amax)) - emax clamped to [-127, 127], + 127; 0 for amax 0.
    const VI expf = hn::ShiftRight<23>(amax_bits);
    const VI mant = hn::And(amax_bits, hn::Set(di, 0x7fffff));
    const VI msb = hn::Sub(hn::ShiftRight<23>(hn::BitCast(di, hn::ConvertTo(df, mant))),
                           hn::Set(di, 127));  // exact: mant < 2^23
    const VI fl = hn::IfThenElse(hn::Eq(expf, hn::Zero(di)), hn::Sub(msb, hn::Set(di, 149)),
                                 hn::Sub(expf, hn::Set(di, 127)));
    VI e = hn::Sub(fl, hn::Set(di, lowbit::quant_simd::mx_emax(F)));
    e = hn::Min(hn::Max(e, hn::Set(di, -127)), hn::Set(di, 127));
    const VI code =
        hn::IfThenZeroElse(hn::Eq(amax_bits, hn::Zero(di)), hn::Add(e, hn::Set(di, 127)));
    // mx_unscale's factor 2^(127 - code).
    const VI e2 = hn::Sub(hn::Set(di, 127), code);
    const VI fbits =
        hn::IfThenElse(hn::Gt(e2, hn::Set(di, -127)),
                       hn::ShiftLeft<23>(hn::Add(e2, hn::Set(di, 127))), hn::Set(di, 0x00400000));
    hn::Store(hn::BitCast(df, fbits), df, mul_l);
    HWY_ALIGN int32_t c_l[N];
    hn::Store(code, di, c_l);
    auto* out = static_cast<uint8_t*>(q.scale) + g0;
    for (size_t b = 0; b < N; ++b) out[b] = static_cast<uint8_t>(c_l[GroupLane(b)]);
    return true;
  } else {
    return false;
  }
}

/// N whole groups of `glen` elements (a multiple of N) from element e0, groups g0 ..:
/// statistics of all, one reduction, parameters, then codes (4-bit: packed once).
/// False after a non-finite input (flagged).
template <Dtype S, Fmt F, bool kAffine>
HWY_INLINE bool FusedBatch(const QCall& q, int64_t e0, int64_t glen, int64_t g0, uint8_t* tmp) {
  const DF df;
  const DI di;
  constexpr size_t N = kMaxLanes;
  const int64_t n = static_cast<int64_t>(N);
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  VI a[N], nl[N];
  for (size_t b = 0; b < N; ++b) {
    const int64_t e = e0 + static_cast<int64_t>(b) * glen;
    VI ab = hn::Zero(di), nb = hn::Zero(di);
    for (int64_t i = 0; i < glen; i += n) {
      const VF x = LoadSrc<S>(df, q.src, e + i);
      if constexpr (kAffine) {
        const VI bits = hn::BitCast(di, x);
        ab = hn::Max(ab, bits);
        nb = hn::Max(nb, hn::Xor(bits, sign));
      } else {
        ab = hn::Max(ab, AbsBits(x));
      }
    }
    a[b] = ab;
    nl[b] = nb;
  }
  VI amax, hi, neglo;
  if constexpr (kAffine) {
    hi = ReduceMaxGroups(a);
    neglo = ReduceMaxGroups(nl);
    amax = hn::Max(hi, neglo);
  } else {
    amax = ReduceMaxGroups(a);
    hi = neglo = amax;
  }
  if (!hn::AllTrue(di, hn::Lt(amax, hn::Set(di, static_cast<int32_t>(kNonFinite)))) && NonFinite(q))
    return false;
  HWY_ALIGN float mul_l[N], add_l[N];
  bool zero_codes = false;
  if (!BatchParams<F>(q, amax, g0, mul_l, add_l)) {
    HWY_ALIGN uint32_t am_l[N], hi_l[N], nl_l[N];
    hn::Store(hn::BitCast(DU(), amax), DU(), am_l);
    hn::Store(hn::BitCast(DU(), hi), DU(), hi_l);
    hn::Store(hn::BitCast(DU(), neglo), DU(), nl_l);
    for (size_t b = 0; b < N; ++b) {
      const size_t l = GroupLane(b);
      const GroupParams p = lowbit::quant_simd::dynamic_params(q, am_l[l], hi_l[l], nl_l[l],
                                                               g0 + static_cast<int64_t>(b));
      mul_l[l] = p.mul;
      add_l[l] = p.add;
      zero_codes = p.zero_codes;
    }
  }
  VI unused = hn::Zero(di);
  uint8_t* out = q.packed ? tmp : q.codes + e0;
  if constexpr (kPairU16<F>) {
    if (glen == n && !zero_codes) {  // one vector per group (nvfp4 on AVX3): two at a time
      for (size_t b = 0; b < N; b += 2) {
        const int64_t off = static_cast<int64_t>(b) * glen;
        const VF y0 = Scaled<F>(LoadSrc<S>(df, q.src, e0 + off), hn::Set(df, mul_l[GroupLane(b)]));
        const VF y1 =
            Scaled<F>(LoadSrc<S>(df, q.src, e0 + off + n), hn::Set(df, mul_l[GroupLane(b + 1)]));
        EncodePairU16<F>(y0, y1, out + off);
      }
      if (q.packed) PackNibbles(tmp, n * glen, q.codes, e0);
      return true;
    }
  }
  for (size_t b = 0; b < N; ++b) {
    const int64_t off = static_cast<int64_t>(b) * glen;
    GroupParams p;
    p.mul = mul_l[GroupLane(b)];
    p.add = add_l[GroupLane(b)];
    p.zero_codes = zero_codes;
    EncodeRun<S, F>(q, e0 + off, glen, p, out + off, unused);
  }
  if (q.packed) PackNibbles(tmp, n * glen, q.codes, e0);
  return true;
}

/// Rows [r0, r1): a row is the last axis (token, block, nvfp4, MX) or one channel
/// (leading-axis channel); its groups are runs of `block` (the last one may be partial:
/// fp8 blocks) or the whole row.
template <Dtype S, Fmt F, bool kAffine>
void FusedRows(const QCall& q, int64_t r0, int64_t r1) {
  const formats::GroupMap& m = q.L.gm;
  const int64_t row_len = m.granularity == Granularity::channel ? m.inner : m.k;
  const int64_t glen = m.granularity == Granularity::block ? m.block : row_len;
  const int64_t gpr = (row_len + glen - 1) / glen;
  const int64_t n = static_cast<int64_t>(kMaxLanes);
  // Batches of N whole groups when groups are short vector multiples.
  const bool batch = glen % n == 0 && n * glen <= kTmp && gpr >= n;
  const int64_t whole = row_len / glen;  // groups that are not partial
  HWY_ALIGN uint8_t tmp[kTmp];
  VI amax = hn::Zero(DI());
  int64_t r = r0;
  if (gpr == 1 && glen == row_len && glen % n == 0 && n * glen <= kTmp) {
    // One group per row (token, leading-axis channel) and short rows: batches of N rows.
    for (; r + n <= r1; r += n)
      if (!FusedBatch<S, F, kAffine>(q, r * row_len, glen, r, tmp)) return;
  }
  for (; r < r1; ++r) {
    int64_t j = 0;
    if (batch) {
      for (; j + n <= whole; j += n)
        if (!FusedBatch<S, F, kAffine>(q, r * row_len + j * glen, glen, r * gpr + j, tmp)) return;
    }
    for (; j < gpr; ++j) {
      const int64_t e = r * row_len + j * glen;
      const int64_t len = std::min(glen, row_len - j * glen);
      const int64_t g = r * gpr + j;
      const RunMax st = RunStats<S, kAffine>(q.src, e, len);
      if (st.amax >= kNonFinite && NonFinite(q)) return;
      const GroupParams p = lowbit::quant_simd::dynamic_params(q, st.amax, st.hi, st.neglo, g);
      QuantRun<S, F>(q, e, len, p, amax);
    }
  }
}

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
  {
    const int64_t er = e0;
    int64_t b = 0;
    for (; b + N <= nb; b += N) {
      VI am[NL];
      for (size_t i = 0; i < NL; ++i) {
        const int64_t e = er + (b + static_cast<int64_t>(i)) * kQK;
        VI a = AbsBits(LoadSrc<S>(df, q.src, e));
        for (int64_t v = 1; v < kNV; ++v) a = hn::Max(a, AbsBits(LoadSrc<S>(df, q.src, e + v * N)));
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
      for (size_t i = 0; i < NL; ++i) {
        const size_t l = GroupLane(i);
        const int64_t e = er + (b + static_cast<int64_t>(i)) * kQK;
        uint8_t* y = yr + (b + static_cast<int64_t>(i)) * kBytes;
        VF x[kNV];
        for (int64_t v = 0; v < kNV; ++v) x[v] = LoadSrc<S>(df, q.src, e + v * N);
        if (d_l[l] != 0.0f && d_l[l] < FLT_MIN) {  // x * id may leave [-127.5, 127.5]
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
/// output is a quarter of the input at most.)
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

// ---- selection ------------------------------------------------------------------------------

template <Dtype S, Fmt F>
QuantFns FnsFor(bool affine) {
  QuantFns f;
  if constexpr (F == Fmt::q8_0) {
    f.gguf_rows = &Q8_0Rows<S>;
  } else if constexpr (F == Fmt::q4_0) {
    f.gguf_rows = &Q4_0Rows<S>;
  } else {
    f.codes_chunk = &CodesChunk<S, F>;
    if constexpr (F == Fmt::integer) {
      f.stats_chunk = affine ? &StatsChunk<S, true> : &StatsChunk<S, false>;
      f.stats_cols = affine ? &StatsCols<S, true> : &StatsCols<S, false>;
      f.fused_rows = affine ? &FusedRows<S, F, true> : &FusedRows<S, F, false>;
    } else {
      f.stats_chunk = &StatsChunk<S, false>;
      f.stats_cols = &StatsCols<S, false>;
      f.fused_rows = &FusedRows<S, F, false>;
    }
  }
  return f;
}

template <Dtype S>
QuantFns FnsForSource(Fmt fmt, bool affine) {
  switch (fmt) {
    case Fmt::integer:
      return FnsFor<S, Fmt::integer>(affine);
    case Fmt::e4m3:
      return FnsFor<S, Fmt::e4m3>(affine);
    case Fmt::e5m2:
      return FnsFor<S, Fmt::e5m2>(affine);
    case Fmt::nvfp4:
      return FnsFor<S, Fmt::nvfp4>(affine);
    case Fmt::mxfp4:
      return FnsFor<S, Fmt::mxfp4>(affine);
    case Fmt::mx8e4m3:
      return FnsFor<S, Fmt::mx8e4m3>(affine);
    case Fmt::mx8e5m2:
      return FnsFor<S, Fmt::mx8e5m2>(affine);
    case Fmt::q8_0:
      return FnsFor<S, Fmt::q8_0>(affine);
    case Fmt::q4_0:
      return FnsFor<S, Fmt::q4_0>(affine);
  }
  return {};
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd

/// This target's range functions; all nullptr on HWY_SCALAR (the kernel declines there).
lowbit::quant_simd::QuantFns SelectQuantFns(Dtype src, lowbit::quant_simd::Fmt fmt, bool affine) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)src;
  (void)fmt;
  (void)affine;
  return {};
#else
  switch (src) {
    case Dtype::f32:
      return quant_simd::FnsForSource<Dtype::f32>(fmt, affine);
    case Dtype::f16:
      return quant_simd::FnsForSource<Dtype::f16>(fmt, affine);
    case Dtype::bf16:
      return quant_simd::FnsForSource<Dtype::bf16>(fmt, affine);
    default:
      return {};
  }
#endif
}

const char* QuantTargetName() { return hwy::TargetName(HWY_TARGET); }
bool QuantTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectQuantFns);
HWY_EXPORT(QuantTargetName);
HWY_EXPORT(QuantTargetIsSimd);

namespace {

using quant_simd::Fmt;
using quant_simd::GroupParams;
using quant_simd::Layout;
using quant_simd::QCall;
using quant_simd::QuantFns;

/// Flat chunks (an even element count) and the row chunks' target size.
constexpr int64_t kChunk = int64_t{1} << 16;

template <class Fn>
void parallel_for(int64_t count, Fn&& fn) {
  if (count > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < count; ++c) fn(c);
  } else {
    for (int64_t c = 0; c < count; ++c) fn(c);
  }
}

/// Runs fn(q, begin, end) over [0, total) in pieces of `piece` (the last one shorter).
void over_range(const QCall& q, QuantFns::Fn fn, int64_t total, int64_t piece) {
  if (total <= 0) return;
  const int64_t chunks = (total + piece - 1) / piece;
  parallel_for(chunks, [&](int64_t c) { fn(q, c * piece, std::min(total, (c + 1) * piece)); });
}

/// Rows per chunk for rows of `row_len` elements: about kChunk elements, and an even count
/// when rows of 4-bit codes are odd, so that no two chunks share a byte.
int64_t rows_per_chunk(int64_t row_len, bool packed) {
  int64_t r = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, row_len));
  if (packed && (row_len & 1) && (r & 1)) ++r;
  return r;
}

/// Row-major contiguous (extent-1 dims may have any stride; empty tensors always are).
bool contiguous(const Shape& shape, const Strides& strides) {
  int64_t expect = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

bool supported_gguf(uint32_t type) {
  return type == static_cast<uint32_t>(gguf::GgmlType::q8_0) ||
         type == static_cast<uint32_t>(gguf::GgmlType::q4_0);
}

Fmt fmt_of(const QuantScheme& s) {
  switch (s.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
    case QuantFormat::int4:
    case QuantFormat::uint4:
      return Fmt::integer;
    case QuantFormat::fp8e4m3:
      return Fmt::e4m3;
    case QuantFormat::fp8e5m2:
      return Fmt::e5m2;
    case QuantFormat::nvfp4:
      return Fmt::nvfp4;
    case QuantFormat::mxfp4:
      return Fmt::mxfp4;
    case QuantFormat::mxfp8e4m3:
      return Fmt::mx8e4m3;
    case QuantFormat::mxfp8e5m2:
      return Fmt::mx8e5m2;
    case QuantFormat::gguf:
      return s.gguf_type == static_cast<uint32_t>(gguf::GgmlType::q8_0) ? Fmt::q8_0 : Fmt::q4_0;
  }
  return Fmt::integer;
}

class QuantizeSimd final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "quantize_simd"; }

  std::string decline(const QuantizeDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!HWY_DYNAMIC_DISPATCH(QuantTargetIsSimd)())
      return "no SIMD target on this CPU (Highway chose SCALAR)";
    if (d.src == Dtype::f64) return "f64 sources: the reference rounds them to f32 first";
    if (!contiguous(d.shape, d.src_strides)) return "src not contiguous";
    if (d.scheme.format == QuantFormat::gguf && !supported_gguf(d.scheme.gguf_type))
      return fmt::format(
          "GGUF {}: only q8_0 and q4_0 are vectorised; the other types' reference quantizers "
          "(scale searches, sums of squares) stay scalar",
          d.scheme.str());
    return {};
  }

  KernelSku sku(const QuantizeDesc& d) const override {
    return {"quantize",
            Backend::cpu,
            std::string(dtype_name(d.src)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(QuantTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {
        "the rules of docs/formats.md (GGUF: ggml's reference) in f32, operation for "
        "operation; bit-identical to quantize_reference",
        std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream& stream,
           Workspace ws) const override {
    const QuantScheme& s = d.scheme;
    QCall q;
    q.src = a.src.data();
    q.L = Layout::make(s, d.shape);
    q.fmt = fmt_of(s);
    q.symmetric = s.symmetric;
    if (s.is_integer()) {
      q.qmin = s.qmin();
      q.qmax = s.qmax();
      q.scale_dtype = s.scale_dtype;
    }
    q.packed = s.format != QuantFormat::gguf && is_packed(s.code_dtype());
    q.codes = static_cast<uint8_t*>(a.dst.codes.data());
    q.scale = a.dst.scale.data();
    q.zero = a.dst.zero.data_as<int32_t>();
    std::atomic<int> bad{0};
    q.bad = &bad;
    q.check_finite = d.check_finite;
    // Whether the reference must judge this call (and throw its exact Error).
    auto failed = [&] {
      const int f = bad.load();
      return (f & quant_simd::kFlagRefuse) || ((f & quant_simd::kFlagNonFinite) && d.check_finite);
    };
    const bool affine = s.is_integer() && !s.symmetric;
    const QuantFns f = HWY_DYNAMIC_DISPATCH(SelectQuantFns)(d.src, q.fmt, affine);
    auto reference = [&] { quantize_reference_kernel().run(d, a, stream, ws); };
    const formats::GroupMap& gm = q.L.gm;
    const int64_t n = q.L.n;

    if (s.format == QuantFormat::gguf) {
      const int64_t rows = gm.k > 0 ? n / gm.k : 0;
      q.row_bytes = gguf::row_bytes(static_cast<gguf::GgmlType>(s.gguf_type), gm.k);
      over_range(q, f.gguf_rows, rows, rows_per_chunk(gm.k, false));
      if (failed()) reference();
      return;
    }

    if (s.format == QuantFormat::nvfp4) {
      auto* global_out = a.dst.global_scale.data_as<float>();
      if (d.given_scales) {
        q.global = global_out[0];
        if (!quant_simd::given_scale_ok(q.global)) return reference();
      } else {
        // Pass 1: the tensor's amax (every element is in one "tensor" group).
        QCall t = q;
        t.L.gm.granularity = Granularity::tensor;
        uint32_t amax = 0;
        t.amax = &amax;
        over_range(t, f.stats_chunk, n, kChunk);
        if (failed()) return reference();
        q.global = formats::nvfp4_global_scale(quant_simd::float_of(amax));
        global_out[0] = q.global;
      }
      const int64_t rows = gm.k > 0 ? n / gm.k : 0;
      over_range(q, f.fused_rows, rows, rows_per_chunk(gm.k, true));
      if (failed()) reference();
      return;
    }

    if (s.format == QuantFormat::mxfp4 || s.format == QuantFormat::mxfp8e4m3 ||
        s.format == QuantFormat::mxfp8e5m2) {
      const int64_t rows = gm.k > 0 ? n / gm.k : 0;
      over_range(q, f.fused_rows, rows, rows_per_chunk(gm.k, q.packed));
      if (failed()) reference();
      return;
    }

    // Integer and fp8 schemes.
    std::vector<float> mul, add;
    if (d.given_scales) {
      mul.resize(static_cast<size_t>(gm.count));
      add.resize(static_cast<size_t>(gm.count));
      for (int64_t g = 0; g < gm.count; ++g) {
        GroupParams p;
        if (!quant_simd::given_params(q, g, &p)) return reference();
        mul[static_cast<size_t>(g)] = p.mul;
        add[static_cast<size_t>(g)] = p.add;
      }
      code_pass(q, f, mul, add);
      if (failed()) reference();
      return;
    }

    const int64_t outer = gm.channels * gm.inner > 0 ? n / (gm.channels * gm.inner) : 0;
    const bool fused =
        n > 0 && (gm.granularity == Granularity::token || gm.granularity == Granularity::block ||
                  (gm.granularity == Granularity::channel && !q.L.columns && outer == 1));
    if (fused) {
      const int64_t row_len = gm.granularity == Granularity::channel ? gm.inner : gm.k;
      over_range(q, f.fused_rows, n / row_len, rows_per_chunk(row_len, q.packed));
      if (failed()) reference();
      return;
    }

    // Two passes: statistics, parameters, codes.
    const int64_t slots = q.L.columns ? q.L.period : gm.count;
    std::vector<uint32_t> amax(static_cast<size_t>(slots), 0), hi, neglo;
    q.amax = amax.data();
    if (affine) {
      hi.assign(static_cast<size_t>(slots), 0);
      neglo.assign(static_cast<size_t>(slots), 0);
      q.hi = hi.data();
      q.neglo = neglo.data();
    }
    if (q.L.columns) {
      const int64_t P = q.L.period;
      const int64_t threads = std::max(1, omp_get_max_threads());
      const int64_t width =
          std::max<int64_t>(64, ((P + 4 * threads - 1) / (4 * threads) + 63) / 64 * 64);
      over_range(q, f.stats_cols, P, width);
      // Columns -> groups: group g is columns [g * inner, (g + 1) * inner).
      std::vector<uint32_t> ga(static_cast<size_t>(gm.count), 0), gh, gn;
      if (affine) {
        gh.assign(static_cast<size_t>(gm.count), 0);
        gn.assign(static_cast<size_t>(gm.count), 0);
      }
      for (int64_t c = 0; c < P; ++c) {
        const size_t g = static_cast<size_t>(c / gm.inner), cc = static_cast<size_t>(c);
        ga[g] = std::max(ga[g], amax[cc]);
        if (affine) {
          gh[g] = std::max(gh[g], hi[cc]);
          gn[g] = std::max(gn[g], neglo[cc]);
        }
      }
      amax.swap(ga);
      hi.swap(gh);
      neglo.swap(gn);
    } else {
      over_range(q, f.stats_chunk, n, kChunk);
    }
    if (failed()) return reference();
    if (d.check_finite)  // columns mode's statistics do not raise the flag
      for (uint32_t v : amax)
        if (v >= 0x7f800000u) return reference();
    mul.resize(static_cast<size_t>(gm.count));
    add.resize(static_cast<size_t>(gm.count));
    const int64_t pchunks = (gm.count + 4095) / 4096;
    parallel_for(pchunks, [&](int64_t c) {
      for (int64_t g = c * 4096; g < std::min(gm.count, (c + 1) * 4096); ++g) {
        const size_t gi = static_cast<size_t>(g);
        const GroupParams p =
            quant_simd::dynamic_params(q, amax[gi], affine ? hi[gi] : 0, affine ? neglo[gi] : 0, g);
        mul[gi] = p.mul;
        add[gi] = p.add;
      }
    });
    code_pass(q, f, mul, add);
    if (failed()) reference();
  }

 private:
  /// The code pass from per-group parameters (expanded per column in columns mode).
  static void code_pass(QCall& q, const QuantFns& f, const std::vector<float>& mul,
                        const std::vector<float>& add) {
    std::vector<float> cm, ca;
    if (q.L.columns) {
      const int64_t P = q.L.period;
      cm.resize(static_cast<size_t>(P));
      ca.resize(static_cast<size_t>(P));
      for (int64_t c = 0; c < P; ++c) {
        cm[static_cast<size_t>(c)] = mul[static_cast<size_t>(c / q.L.gm.inner)];
        ca[static_cast<size_t>(c)] = add[static_cast<size_t>(c / q.L.gm.inner)];
      }
      q.mul = cm.data();
      q.add = ca.data();
    } else {
      q.mul = mul.data();
      q.add = add.data();
    }
    over_range(q, f.codes_chunk, q.L.n, kChunk);
  }
};

}  // namespace

const Kernel<QuantizeOp>& quantize_simd_kernel() {
  static const QuantizeSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
