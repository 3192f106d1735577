// The CPU SIMD kernels of fake_quantize and its backward: Highway, dispatched at run time
// (once per call) to the best target the CPU supports (AVX3, AVX2, SSE4), OpenMP across
// chunks of 64 Ki elements. Contiguous f32 / f16 / bf16 tensors, every integer and fp8
// scheme. Scale groups that come in runs of at least 64 elements (tensor, token, block,
// 2-D tiles, channel along an axis with >= 64 elements after it) take the vector passes;
// channel scales along a late axis (shorter runs) take a scalar per-element path in which
// threads own ranges of channels (ShortRuns). Bit-identical to the reference kernels
// (tests/cpp/test_fake_quantize.cpp).
//
// How the bits stay the reference's:
//  * Per-group parameters come from fake_quantize_math.hpp's scalar functions, fed with
//    statistics that are exact and order-free: maxima of the bit patterns of non-negative
//    floats (max |x|, max(0, max x), max(0, -min x), max |dy|), merged across threads with
//    atomic maxima.
//  * The element rules are the reference's f32 operations in its order: clamp(rne(x * inv)
//    + zero) - zero, times scale; fp8 through numeric.hpp's integer rounding (vectorised in
//    cpu/convert_simd-inl.h). No FMA contraction in this file (pragma below).
//  * dscale / dzero: each product dy * c is exact in f64, scaled by the group's 2^k and
//    rounded to an integer (roundpd); the integers are split into 32-bit halves and summed
//    exactly in f64 lanes within a run (< 2^53), then added as int64 into the group's
//    accumulators with atomic adds: integer sums, so neither order nor threads matter.
//  * Errors: non-finite inputs and invalid given scales are detected during the passes;
//    the call is then handed to the reference kernel, which throws its exact Error.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_FAKE_QUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_FAKE_QUANTIZE_SIMD_SHARED_

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/quant_simd.hpp"
#include "ops/fake_quantize/fake_quantize_kernels.hpp"
#include "ops/fake_quantize/fake_quantize_math.hpp"

namespace lowbit::fq_simd {

/// The element rule: integer schemes, fp8 e4m3fn, fp8 e5m2.
enum class Kind : uint8_t { integer, e4m3, e5m2 };

/// One call's operands, shared read-only by the threads except the outputs (each thread
/// writes its own elements) and the per-group statistics / sums (atomic).
struct FqCall {
  quant_simd::Layout L;
  const void* x = nullptr;
  void* y = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  float qmin = 0.0f, qmax = 0.0f;
  const fq::Params* params = nullptr;  ///< per group
  // forward statistics per group (f32 bit patterns of non-negative values)
  uint32_t* amax = nullptr;
  uint32_t* hi = nullptr;
  uint32_t* neglo = nullptr;
  // backward
  uint32_t* dmax = nullptr;         ///< max |dy| bits per group
  const double* ms = nullptr;       ///< 2^ks per group
  const double* mz = nullptr;       ///< 2^kz per group
  int64_t* acc = nullptr;           ///< per group: dscale hi, lo, dzero hi, lo
  bool sums = false;                ///< dscale or dzero wanted (the dmax pass ran)
  bool want_s = false;              ///< dscale's sums
  bool want_z = false;              ///< dzero's sums
  std::atomic<int>* bad = nullptr;  ///< set on a non-finite input
};

struct FqFns {
  using Fn = void (*)(const FqCall&, int64_t, int64_t);
  Fn stats = nullptr;     ///< forward statistics of [e0, e1)
  Fn forward = nullptr;   ///< y of [e0, e1) from c.params
  Fn dmax = nullptr;      ///< max |dy| of [e0, e1)
  Fn backward = nullptr;  ///< dx (and sums) of [e0, e1)
};

inline void atomic_add(int64_t* p, int64_t v) {
  if (v != 0) std::atomic_ref<int64_t>(*p).fetch_add(v, std::memory_order_relaxed);
}

}  // namespace lowbit::fq_simd

#endif  // LOWBIT_OPS_FAKE_QUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/fake_quantize/fake_quantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace fq_simd {

using lowbit::fq_simd::FqCall;
using lowbit::fq_simd::FqFns;
using lowbit::fq_simd::Kind;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

namespace hn = hwy::HWY_NAMESPACE;
namespace nd = numeric_detail;
using quant_simd::AbsBits;
using quant_simd::DF;
using quant_simd::DI;
using quant_simd::DU;
using quant_simd::ForEachRun;
using quant_simd::LoadSrc;
using quant_simd::LoadSrcPartial;
using quant_simd::StoreDst;
using quant_simd::StoreDstPartial;
using quant_simd::VF;
using quant_simd::VI;
using quant_simd::VU;
using DD = hn::Repartition<double, DF>;  ///< f64 lanes, half as many
using VD = hn::Vec<DD>;

constexpr uint32_t kNonFinite = 0x7f800000u;

HWY_INLINE void Flag(const FqCall& c) { c.bad->store(1, std::memory_order_relaxed); }

template <Kind K>
constexpr nd::MiniFloat kElem = K == Kind::e5m2 ? nd::kF8E5M2 : nd::kF8E4M3FN;

/// fp8_round: the fp8 value nearest v, saturating to +-max finite.
template <Kind K>
HWY_INLINE VF Fp8Round(VF v) {
  const DU du;
  constexpr nd::MiniFloat M = kElem<K>;
  const VU code =
      simd_convert::EncodeMiniFloat<M>(du, hn::BitCast(du, v), hn::Set(du, M.max_code()));
  return hn::BitCast(DF(), simd_convert::DecodeMiniFloat<M>(du, code));
}

/// One group's parameters as vectors.
struct VParams {
  VF inv, zero, scale, lo, hi;
};

HWY_INLINE VParams Broadcast(const FqCall& c, const fq::Params& p) {
  const DF df;
  return {hn::Set(df, p.inv), hn::Set(df, p.zero), hn::Set(df, p.scale), hn::Set(df, c.qmin),
          hn::Set(df, c.qmax)};
}

/// forward_int / forward_fp8 on N lanes.
template <Kind K>
HWY_INLINE VF Forward(VF x, const VParams& p) {
  const VF v = hn::Mul(x, p.inv);
  if constexpr (K == Kind::integer) {
    VF r = hn::Add(hn::Round(v), p.zero);
    r = hn::Min(hn::Max(r, p.lo), p.hi);
    return hn::Mul(hn::Sub(r, p.zero), p.scale);
  } else {
    return hn::Mul(Fp8Round<K>(v), p.scale);
  }
}

/// grad_int / grad_fp8 on N lanes: the inside mask and c.
template <Kind K>
HWY_INLINE VF Grad(VF x, const VParams& p, hn::Mask<DF>& inside) {
  const DF df;
  const VF v = hn::Mul(x, p.inv);
  if constexpr (K == Kind::integer) {
    const VF r = hn::Round(v);
    const VF q = hn::Add(r, p.zero);
    inside = hn::And(hn::Ge(q, p.lo), hn::Le(q, p.hi));
    const VF edge = hn::Sub(hn::IfThenElse(hn::Lt(q, p.lo), p.lo, p.hi), p.zero);
    return hn::IfThenElse(inside, hn::Sub(r, v), edge);
  } else {
    const VF m = hn::Set(df, fq::fp8_max(K == Kind::e5m2));
    inside = hn::Le(hn::Abs(v), m);
    const VF edge = hn::IfThenElse(hn::Lt(v, hn::Zero(df)), hn::Neg(m), m);
    return hn::IfThenElse(inside, hn::Sub(Fp8Round<K>(v), v), edge);
  }
}

// ---- forward ------------------------------------------------------------------------------

/// Maxima of the run's bit patterns: |x|, and for affine schemes x and x with its sign
/// flipped (signed integer maxima from 0, so only positive values of each count).
template <Dtype S, bool kAffine>
void StatsChunk(const FqCall& c, int64_t e0, int64_t e1) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VI sign = hn::Set(di, static_cast<int32_t>(0x80000000u));
  ForEachRun(c.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    VI a = hn::Zero(di), h = hn::Zero(di), nl = hn::Zero(di);
    auto acc = [&](VF x) {
      a = hn::Max(a, AbsBits(x));
      if constexpr (kAffine) {
        const VI b = hn::BitCast(di, x);
        h = hn::Max(h, b);
        nl = hn::Max(nl, hn::Xor(b, sign));
      }
    };
    int64_t i = 0;
    for (; i + N <= len; i += N) acc(LoadSrc<S>(df, c.x, e + i));
    if (i < len) acc(LoadSrcPartial<S>(df, c.x, e + i, len - i));
    const uint32_t am = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, a)));
    if (am >= kNonFinite) Flag(c);
    lowbit::quant_simd::atomic_max(c.amax + g, am);
    if constexpr (kAffine) {
      lowbit::quant_simd::atomic_max(c.hi + g,
                                     static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, h))));
      lowbit::quant_simd::atomic_max(c.neglo + g,
                                     static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, nl))));
    }
  });
}

template <Dtype S, Dtype D, Kind K>
void ForwardChunk(const FqCall& c, int64_t e0, int64_t e1) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VI amax = hn::Zero(di);
  ForEachRun(c.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    const VParams p = Broadcast(c, c.params[g]);
    int64_t i = 0;
    for (; i + N <= len; i += N) {
      const VF x = LoadSrc<S>(df, c.x, e + i);
      amax = hn::Max(amax, AbsBits(x));
      StoreDst<D>(Forward<K>(x, p), c.y, e + i, false);
    }
    if (i < len) {
      const VF x = LoadSrcPartial<S>(df, c.x, e + i, len - i);
      amax = hn::Max(amax, AbsBits(x));
      StoreDstPartial<D>(Forward<K>(x, p), c.y, e + i, len - i);
    }
  });
  if (static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax))) >= kNonFinite) Flag(c);
}

// ---- backward -----------------------------------------------------------------------------

template <Dtype S>
void DmaxChunk(const FqCall& c, int64_t e0, int64_t e1) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  ForEachRun(c.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    VI a = hn::Zero(di);
    int64_t i = 0;
    for (; i + N <= len; i += N) a = hn::Max(a, AbsBits(LoadSrc<S>(df, c.dy, e + i)));
    if (i < len) a = hn::Max(a, AbsBits(LoadSrcPartial<S>(df, c.dy, e + i, len - i)));
    const uint32_t am = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, a)));
    if (am >= kNonFinite) Flag(c);
    lowbit::quant_simd::atomic_max(c.dmax + g, am);
  });
}

/// Exact running sums of rne(t * m) for f64 lanes t: the integers' high and low 32-bit
/// parts (floor(k / 2^32) and k - that * 2^32), each sum exact while below 2^53.
struct VSum {
  VD hi, lo;
};

HWY_INLINE void AddGrid(VSum& s, VD t, VD m) {
  const DD dd;
  const VD a = hn::Mul(t, m);
  // grid_round: 0 where |a| >= 2^62 or a is NaN (non-finite inputs, unchecked)
  const VD k = hn::IfThenElseZero(hn::Lt(hn::Abs(a), hn::Set(dd, 0x1p62)), hn::Round(a));
  const VD h = hn::Floor(hn::Mul(k, hn::Set(dd, 0x1p-32)));
  s.hi = hn::Add(s.hi, h);
  s.lo = hn::Add(s.lo, hn::Sub(k, hn::Mul(h, hn::Set(dd, 0x1p32))));
}

/// Adds the f32 lanes' terms (promoted to f64, exact) to the sums.
HWY_INLINE void AddTerms(VSum& s, VF a, VF b, VD m, bool product) {
  const DD dd;
  const hn::Half<DF> dh;
  const VD a0 = hn::PromoteTo(dd, hn::LowerHalf(dh, a));
  const VD a1 = hn::PromoteTo(dd, hn::UpperHalf(dh, a));
  if (product) {
    AddGrid(s, hn::Mul(a0, hn::PromoteTo(dd, hn::LowerHalf(dh, b))), m);
    AddGrid(s, hn::Mul(a1, hn::PromoteTo(dd, hn::UpperHalf(dh, b))), m);
  } else {
    AddGrid(s, a0, m);
    AddGrid(s, a1, m);
  }
}

HWY_INLINE int64_t LaneSum(VD v) {
  return static_cast<int64_t>(hn::GetLane(hn::SumOfLanes(DD(), v)));
}

template <Dtype SX, Dtype SD, Kind K>
void BackwardChunk(const FqCall& c, int64_t e0, int64_t e1) {
  const DF df;
  const DI di;
  const DD dd;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF sign = hn::SignBit(df);
  VI amax = hn::Zero(di);
  ForEachRun(c.L, e0, e1, [&](int64_t e, int64_t len, int64_t g) {
    const VParams p = Broadcast(c, c.params[g]);
    VSum s{hn::Zero(dd), hn::Zero(dd)}, z{hn::Zero(dd), hn::Zero(dd)};
    const VD ms = hn::Set(dd, c.sums ? c.ms[g] : 0.0);
    const VD mz = hn::Set(dd, c.sums ? c.mz[g] : 0.0);
    auto step = [&](VF x, VF d, int64_t at, int64_t count) {
      amax = hn::Max(amax, hn::Max(AbsBits(x), AbsBits(d)));
      hn::Mask<DF> inside;
      const VF cf = Grad<K>(x, p, inside);
      const VF dxv = hn::IfThenElse(inside, d, hn::And(d, sign));
      if (count == N) {
        StoreDst<SD>(dxv, c.dx, at, false);
      } else {
        StoreDstPartial<SD>(dxv, c.dx, at, count);
      }
      // (the partial vector's other lanes hold d = 0: they add 0)
      if (c.want_s) AddTerms(s, d, cf, ms, true);
      if (c.want_z) AddTerms(z, hn::IfThenZeroElse(inside, d), d, mz, false);
    };
    int64_t i = 0;
    for (; i + N <= len; i += N)
      step(LoadSrc<SX>(df, c.x, e + i), LoadSrc<SD>(df, c.dy, e + i), e + i, N);
    if (i < len)
      step(LoadSrcPartial<SX>(df, c.x, e + i, len - i),
           LoadSrcPartial<SD>(df, c.dy, e + i, len - i), e + i, len - i);
    if (c.sums) {
      int64_t* acc = c.acc + 4 * g;
      lowbit::fq_simd::atomic_add(acc + 0, LaneSum(s.hi));
      lowbit::fq_simd::atomic_add(acc + 1, LaneSum(s.lo));
      lowbit::fq_simd::atomic_add(acc + 2, LaneSum(z.hi));
      lowbit::fq_simd::atomic_add(acc + 3, LaneSum(z.lo));
    }
  });
  if (static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax))) >= kNonFinite) Flag(c);
}

// ---- selection ------------------------------------------------------------------------------

template <Dtype S, Dtype D>
FqFns FnsFor(Kind k, bool affine) {
  FqFns f;
  f.stats = affine ? &StatsChunk<S, true> : &StatsChunk<S, false>;
  f.dmax = &DmaxChunk<D>;
  switch (k) {
    case Kind::integer:
      f.forward = &ForwardChunk<S, D, Kind::integer>;
      f.backward = &BackwardChunk<S, D, Kind::integer>;
      break;
    case Kind::e4m3:
      f.forward = &ForwardChunk<S, D, Kind::e4m3>;
      f.backward = &BackwardChunk<S, D, Kind::e4m3>;
      break;
    case Kind::e5m2:
      f.forward = &ForwardChunk<S, D, Kind::e5m2>;
      f.backward = &BackwardChunk<S, D, Kind::e5m2>;
      break;
  }
  return f;
}

template <Dtype S>
FqFns FnsForSecond(Dtype d, Kind k, bool affine) {
  switch (d) {
    case Dtype::f32:
      return FnsFor<S, Dtype::f32>(k, affine);
    case Dtype::f16:
      return FnsFor<S, Dtype::f16>(k, affine);
    case Dtype::bf16:
      return FnsFor<S, Dtype::bf16>(k, affine);
    default:
      return {};
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace fq_simd

/// This target's range functions for (x / src dtype, y / dy dtype); all nullptr on
/// HWY_SCALAR / EMU128 (the kernels decline there).
lowbit::fq_simd::FqFns SelectFqFns(Dtype first, Dtype second, lowbit::fq_simd::Kind kind,
                                   bool affine) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)first;
  (void)second;
  (void)kind;
  (void)affine;
  return {};
#else
  switch (first) {
    case Dtype::f32:
      return fq_simd::FnsForSecond<Dtype::f32>(second, kind, affine);
    case Dtype::f16:
      return fq_simd::FnsForSecond<Dtype::f16>(second, kind, affine);
    case Dtype::bf16:
      return fq_simd::FnsForSecond<Dtype::bf16>(second, kind, affine);
    default:
      return {};
  }
#endif
}

const char* FqTargetName() { return hwy::TargetName(HWY_TARGET); }
bool FqTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectFqFns);
HWY_EXPORT(FqTargetName);
HWY_EXPORT(FqTargetIsSimd);

namespace {

using fq_simd::FqCall;
using fq_simd::FqFns;
using fq_simd::Kind;

constexpr int64_t kChunk = int64_t{1} << 16;

/// Runs fn(c, begin, end) over [0, n) in chunks of kChunk, in parallel.
void over_chunks(const FqCall& c, FqFns::Fn fn, int64_t n) {
  if (n <= 0) return;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < chunks; ++i) fn(c, i * kChunk, std::min(n, (i + 1) * kChunk));
  } else {
    for (int64_t i = 0; i < chunks; ++i) fn(c, i * kChunk, std::min(n, (i + 1) * kChunk));
  }
}

bool contiguous(const Shape& shape, const Strides& strides) {
  int64_t expect = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

bool simd_dtype(Dtype d) { return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16; }

Kind kind_of(const QuantScheme& s) {
  if (s.format == QuantFormat::fp8e4m3) return Kind::e4m3;
  if (s.format == QuantFormat::fp8e5m2) return Kind::e5m2;
  return Kind::integer;
}

Dtype scale_dtype(const QuantScheme& s) { return s.is_integer() ? s.scale_dtype : Dtype::f32; }
bool is_affine(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }

/// Channel scales along a late axis: runs of `inner` < 64 elements of one group, too short
/// for the vector passes. These go through ShortRuns below.
bool short_runs(const formats::GroupMap& gm) {
  return gm.granularity == Granularity::channel && gm.inner > 0 && gm.inner < 64 && gm.channels > 1;
}

std::string common_decline(const Device& device) {
  if (!device.is_cpu()) return "runs on the cpu only";
  if (!HWY_DYNAMIC_DISPATCH(FqTargetIsSimd)())
    return "no SIMD target on this CPU (Highway chose SCALAR)";
  return {};
}

/// The short-run layout (channel scales with runs of inner < 64 elements, period P =
/// channels * inner): threads own ranges of groups and walk every row, so that no
/// accumulator is shared; per element with fake_quantize_math.hpp's scalar functions (the
/// reference's own code). Not vectorised.
struct ShortRuns {
  int64_t inner = 1, channels = 1, rows = 0;
  explicit ShortRuns(const formats::GroupMap& gm, int64_t n)
      : inner(gm.inner), channels(gm.channels), rows(n / (gm.channels * gm.inner)) {}

  /// fn(g0, g1) over ranges of groups, in parallel.
  template <class Fn>
  void for_groups(Fn&& fn) const {
    const int64_t pieces =
        std::min<int64_t>(channels, 4 * static_cast<int64_t>(std::max(1, omp_get_max_threads())));
    if (pieces > 1 && rows * channels * inner >= kChunk) {
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t p = 0; p < pieces; ++p) fn(channels * p / pieces, channels * (p + 1) / pieces);
    } else {
      fn(int64_t{0}, channels);
    }
  }
  /// fn(e, g) for the elements of groups [g0, g1), row by row.
  template <class Fn>
  void walk(int64_t g0, int64_t g1, Fn&& fn) const {
    const int64_t P = channels * inner;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t base = r * P + g * inner;
        for (int64_t j = 0; j < inner; ++j) fn(base + j, g);
      }
  }
};

uint32_t abs_bits(float v) { return quant_simd::bits_of(v) & 0x7fffffffu; }

/// dy's element e with only its sign kept unless `inside` (dx's bits).
void store_dx(void* dx, const void* dy, Dtype dtype, int64_t e, bool inside) {
  if (dtype == Dtype::f32) {
    const uint32_t b = static_cast<const uint32_t*>(dy)[e];
    static_cast<uint32_t*>(dx)[e] = inside ? b : (b & 0x80000000u);
  } else {
    const uint16_t b = static_cast<const uint16_t*>(dy)[e];
    static_cast<uint16_t*>(dx)[e] = inside ? b : static_cast<uint16_t>(b & 0x8000u);
  }
}

/// Given scales / zero points as parameters; false where the reference refuses them.
bool given_params(const QuantScheme& s, const TensorView& scale, const TensorView& zero,
                  int64_t count, bool check, std::vector<fq::Params>& out) {
  out.resize(static_cast<size_t>(count));
  for (int64_t g = 0; g < count; ++g) {
    const float sc = convert_detail::load_f32(scale.data(), scale_dtype(s), g);
    const int32_t z = is_affine(s) ? zero.data_as<const int32_t>()[g] : 0;
    if (check && (!fq::given_scale_ok(sc) || (s.is_integer() && (z < s.qmin() || z > s.qmax()))))
      return false;
    out[static_cast<size_t>(g)] = fq::given_params(sc, z);
  }
  return true;
}

FqCall make_call(const QuantScheme& s, const Shape& shape) {
  FqCall c;
  c.L = quant_simd::Layout::make(s, shape);
  c.L.columns = false;  // short runs take ShortRuns instead
  if (s.is_integer()) {
    c.qmin = static_cast<float>(s.qmin());
    c.qmax = static_cast<float>(s.qmax());
  }
  return c;
}

class FakeQuantizeSimd final : public Kernel<FakeQuantizeOp> {
 public:
  std::string_view name() const override { return "fake_quantize_simd"; }

  std::string decline(const FakeQuantizeDesc& d) const override {
    if (std::string why = common_decline(d.device); !why.empty()) return why;
    if (!simd_dtype(d.src) || !simd_dtype(d.dst))
      return "f64 src or dst: the reference kernel serves them";
    if (!contiguous(d.shape, d.src_strides)) return "src not contiguous";
    return {};
  }

  KernelSku sku(const FakeQuantizeDesc& d) const override {
    return {"fake_quantize",
            Backend::cpu,
            std::string(dtype_name(d.src)) + "->" + std::string(dtype_name(d.dst)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(FqTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const FakeQuantizeDesc&) const override {
    return {
        "quantize then dequantize (docs/formats.md) in f32, operation for operation; "
        "bit-identical to fake_quantize_reference",
        std::nullopt, true, true};
  }

  void run(const FakeQuantizeDesc& d, const FakeQuantizeArgs& a, const Stream& stream,
           Workspace ws) const override {
    const QuantScheme& s = d.scheme;
    auto reference = [&] { fake_quantize_reference_kernel().run(d, a, stream, ws); };
    FqCall c = make_call(s, d.shape);
    std::atomic<int> bad{0};
    c.bad = &bad;
    c.x = a.src.data();
    c.y = a.dst.data();
    const FqFns f = HWY_DYNAMIC_DISPATCH(SelectFqFns)(d.src, d.dst, kind_of(s), is_affine(s));
    const formats::GroupMap& gm = c.L.gm;
    const int64_t n = c.L.n;
    std::vector<fq::Params> params;
    if (d.given_scales) {
      if (!given_params(s, a.scale, a.zero, gm.count, d.check_finite, params)) return reference();
    } else {
      std::vector<uint32_t> amax(static_cast<size_t>(gm.count), 0), hi(amax), neglo(amax);
      c.amax = amax.data();
      c.hi = hi.data();
      c.neglo = neglo.data();
      if (short_runs(gm)) {
        const ShortRuns sr(gm, n);
        sr.for_groups([&](int64_t g0, int64_t g1) {
          bool nonfinite = false;
          sr.walk(g0, g1, [&](int64_t e, int64_t g) {
            const uint32_t b = quant_simd::bits_of(convert_detail::load_f32(c.x, d.src, e));
            const size_t gi = static_cast<size_t>(g);
            amax[gi] = std::max(amax[gi], b & 0x7fffffffu);
            hi[gi] = static_cast<uint32_t>(
                std::max(static_cast<int32_t>(hi[gi]), static_cast<int32_t>(b)));
            neglo[gi] = static_cast<uint32_t>(
                std::max(static_cast<int32_t>(neglo[gi]), static_cast<int32_t>(b ^ 0x80000000u)));
            nonfinite |= (b & 0x7fffffffu) >= 0x7f800000u;
          });
          if (nonfinite) bad.store(1);
        });
      } else {
        over_chunks(c, f.stats, n);
      }
      if (d.check_finite && bad.load()) return reference();
      params.resize(static_cast<size_t>(gm.count));
      for (int64_t g = 0; g < gm.count; ++g) {
        const size_t gi = static_cast<size_t>(g);
        const fq::Params p = s.is_integer()
                                 ? fq::int_dynamic_params(quant_simd::float_of(amax[gi]),
                                                          -quant_simd::float_of(neglo[gi]),
                                                          quant_simd::float_of(hi[gi]), s.symmetric,
                                                          s.qmin(), s.qmax(), s.scale_dtype)
                                 : fq::fp8_dynamic_params(quant_simd::float_of(amax[gi]),
                                                          s.format == QuantFormat::fp8e5m2);
        convert_detail::store_f32(a.scale.data(), scale_dtype(s), g, p.scale, Saturation::finite);
        if (is_affine(s)) a.zero.data_as<int32_t>()[g] = static_cast<int32_t>(p.zero);
        params[gi] = p;
      }
    }
    c.params = params.data();
    if (short_runs(gm)) {
      const ShortRuns sr(gm, n);
      const bool fp8 = !s.is_integer(), e5m2 = s.format == QuantFormat::fp8e5m2;
      sr.for_groups([&](int64_t g0, int64_t g1) {
        bool nonfinite = false;
        sr.walk(g0, g1, [&](int64_t e, int64_t g) {
          const float xe = convert_detail::load_f32(c.x, d.src, e);
          nonfinite |= abs_bits(xe) >= 0x7f800000u;
          const fq::Params& p = params[static_cast<size_t>(g)];
          const float y =
              fp8 ? fq::forward_fp8(xe, p, e5m2) : fq::forward_int(xe, p, c.qmin, c.qmax);
          convert_detail::store_f32(c.y, d.dst, e, y, Saturation::none);
        });
        if (nonfinite) bad.store(1);
      });
    } else {
      over_chunks(c, f.forward, n);
    }
    if (d.check_finite && bad.load()) reference();
  }
};

class FakeQuantizeBackwardSimd final : public Kernel<FakeQuantizeBackwardOp> {
 public:
  std::string_view name() const override { return "fake_quantize_backward_simd"; }

  std::string decline(const FakeQuantizeBackwardDesc& d) const override {
    if (std::string why = common_decline(d.device); !why.empty()) return why;
    if (!simd_dtype(d.x) || !simd_dtype(d.dy))
      return "f64 x or dy: the reference kernel serves them";
    if (!contiguous(d.shape, d.x_strides) || !contiguous(d.shape, d.dy_strides))
      return "x or dy not contiguous";
    return {};
  }

  KernelSku sku(const FakeQuantizeBackwardDesc& d) const override {
    return {"fake_quantize_backward",
            Backend::cpu,
            std::string(dtype_name(d.x)) + "," + std::string(dtype_name(d.dy)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(FqTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const FakeQuantizeBackwardDesc&) const override {
    return {
        "dx exact; dscale / dzero: exact integer sums on the reference's grid, rounded once "
        "to f32; bit-identical to fake_quantize_backward_reference",
        Dtype::f32, true, true};
  }

  void run(const FakeQuantizeBackwardDesc& d, const FakeQuantizeBackwardArgs& a,
           const Stream& stream, Workspace ws) const override {
    const QuantScheme& s = d.scheme;
    auto reference = [&] { fake_quantize_backward_reference_kernel().run(d, a, stream, ws); };
    FqCall c = make_call(s, d.shape);
    std::atomic<int> bad{0};
    c.bad = &bad;
    c.x = a.x.data();
    c.dy = a.dy.data();
    c.dx = a.dx.data();
    const FqFns f = HWY_DYNAMIC_DISPATCH(SelectFqFns)(d.x, d.dy, kind_of(s), is_affine(s));
    const formats::GroupMap& gm = c.L.gm;
    const int64_t n = c.L.n;
    std::vector<fq::Params> params;
    if (!given_params(s, a.scale, a.zero, gm.count, d.check_finite, params)) return reference();
    c.params = params.data();
    c.sums = d.scale_grad || d.zero_grad;
    c.want_s = d.scale_grad;
    c.want_z = d.zero_grad;
    const bool fp8 = !s.is_integer();
    const bool e5m2 = s.format == QuantFormat::fp8e5m2;
    std::vector<uint32_t> dmax;
    std::vector<int> ks, kz;
    std::vector<double> ms, mz;
    std::vector<int64_t> acc;
    if (c.sums) {
      dmax.assign(static_cast<size_t>(gm.count), 0);
      c.dmax = dmax.data();
      if (short_runs(gm)) {
        const ShortRuns sr(gm, n);
        sr.for_groups([&](int64_t g0, int64_t g1) {
          bool nonfinite = false;
          sr.walk(g0, g1, [&](int64_t e, int64_t g) {
            const uint32_t b = abs_bits(convert_detail::load_f32(c.dy, d.dy, e));
            dmax[static_cast<size_t>(g)] = std::max(dmax[static_cast<size_t>(g)], b);
            nonfinite |= b >= 0x7f800000u;
          });
          if (nonfinite) bad.store(1);
        });
      } else {
        over_chunks(c, f.dmax, n);
      }
      if (d.check_finite && bad.load()) return reference();
      ks.resize(static_cast<size_t>(gm.count));
      kz.resize(ks.size());
      ms.resize(ks.size());
      mz.resize(ks.size());
      for (size_t g = 0; g < ks.size(); ++g) {
        const int ed = fq::bound_exp(dmax[g]);
        const int ec =
            fp8 ? fq::coeff_exp_fp8(e5m2) : fq::coeff_exp_int(c.qmin, c.qmax, params[g].zero);
        ks[g] = fq::grid_k(ed + ec);
        kz[g] = fq::grid_k(ed);
        ms[g] = fq::pow2(ks[g]);
        mz[g] = fq::pow2(kz[g]);
      }
      acc.assign(4 * ks.size(), 0);
      c.ms = ms.data();
      c.mz = mz.data();
      c.acc = acc.data();
    }
    if (short_runs(gm)) {
      const ShortRuns sr(gm, n);
      sr.for_groups([&](int64_t g0, int64_t g1) {
        bool nonfinite = false;
        sr.walk(g0, g1, [&](int64_t e, int64_t g) {
          const float xe = convert_detail::load_f32(c.x, d.x, e);
          const float de = convert_detail::load_f32(c.dy, d.dy, e);
          nonfinite |= abs_bits(xe) >= 0x7f800000u || abs_bits(de) >= 0x7f800000u;
          const size_t gi = static_cast<size_t>(g);
          const fq::Grad gr = fp8 ? fq::grad_fp8(xe, params[gi], e5m2)
                                  : fq::grad_int(xe, params[gi], c.qmin, c.qmax);
          store_dx(c.dx, c.dy, d.dy, e, gr.inside);
          // This thread owns group g's words: plain (exact, integer) additions.
          const double dd = static_cast<double>(de);
          if (c.want_s) {
            fq::ExactSum sum{acc[4 * gi], acc[4 * gi + 1]};
            fq::exact_add(sum, fq::grid_round(dd * static_cast<double>(gr.c) * ms[gi]));
            acc[4 * gi] = sum.hi;
            acc[4 * gi + 1] = sum.lo;
          }
          if (c.want_z && !gr.inside) {
            fq::ExactSum sum{acc[4 * gi + 2], acc[4 * gi + 3]};
            fq::exact_add(sum, fq::grid_round(dd * mz[gi]));
            acc[4 * gi + 2] = sum.hi;
            acc[4 * gi + 3] = sum.lo;
          }
        });
        if (nonfinite) bad.store(1);
      });
    } else {
      over_chunks(c, f.backward, n);
    }
    if (d.check_finite && bad.load()) return reference();
    if (!c.sums) return;
    const float lsq_q = fp8 ? fq::fp8_max(e5m2) : c.qmax;
    for (int64_t g = 0; g < gm.count; ++g) {
      const size_t gi = static_cast<size_t>(g);
      const float gf = d.lsq_grad_scale ? fq::lsq_factor(fq::group_numel(gm, n, g), lsq_q) : 1.0f;
      if (d.scale_grad)
        a.dscale.data_as<float>()[g] =
            fq::finish_dscale({acc[4 * gi], acc[4 * gi + 1]}, ks[gi], gf, d.lsq_grad_scale);
      if (d.zero_grad)
        a.dzero.data_as<float>()[g] = fq::finish_dzero({acc[4 * gi + 2], acc[4 * gi + 3]}, kz[gi],
                                                       params[gi].scale, gf, d.lsq_grad_scale);
    }
  }
};

}  // namespace

const Kernel<FakeQuantizeOp>& fake_quantize_simd_kernel() {
  static const FakeQuantizeSimd kernel;
  return kernel;
}

const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_simd_kernel() {
  static const FakeQuantizeBackwardSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
