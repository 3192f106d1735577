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
//  * No FMA contraction anywhere in this file and its -inl.h files (below): x * id + 8.5
//    must round twice.
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
//
// The code by job: quantize_simd_elements-inl.h (element rules), quantize_simd_passes-inl.h
// (statistics and code passes), quantize_simd_fused-inl.h (the fused per-row pass),
// quantize_simd_gguf-inl.h (Q8_0, Q4_0); here: the per-target selection and the kernel
// (checks, parameters, threads).

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
#include "ops/quantize/quantize_simd_elements-inl.h"
#include "ops/quantize/quantize_simd_fused-inl.h"
#include "ops/quantize/quantize_simd_gguf-inl.h"
#include "ops/quantize/quantize_simd_passes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Fmt;
using lowbit::quant_simd::GroupParams;
using lowbit::quant_simd::QCall;
using lowbit::quant_simd::QuantFns;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

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
