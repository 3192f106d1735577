// A CPU SIMD quantize kernel for GGUF Q4_1, Q5_0 and Q5_1 (the legacy types that the gguf
// Python package also quantizes; quantize_simd serves Q8_0 and Q4_0) and Q2_K ... Q6_K (their
// scale searches run one sub-block per lane: FitQkx2Lanes, FitQ3Lanes, FitQ6Lanes): Highway,
// dispatched at run time to the best target the CPU supports (AVX3, AVX2, SSE4), OpenMP across
// rows. Contiguous f32 / f16 / bf16 sources. Byte-identical to quantize_reference, i.e. to ggml's
// quantize_row_q4_1_ref / q5_0_ref / q5_1_ref as formats/gguf_legacy.cpp restates them
// (tests/cpp/test_quantize_backends.cpp checks every block byte).
//
// How the bytes stay the reference's:
//  * Block statistics: max |x| as the maximum of |x|'s bit patterns (exact in any order);
//    min and max as vector minima / maxima, exact too, except that the reference keeps the
//    FIRST of equal values (`x < min`, `x > max`) and +0 / -0 compare equal: when the
//    minimum or maximum is zero, its sign is taken from the first zero of the block. Q5_0's
//    signed maximum is the first value whose |x| is the maximum (+0 for a block of zeros).
//  * d, 1/d and the f16 fields are scalar, the reference's own operations.
//  * Codes are the reference's f32 operations in its order, one rounding each (this file
//    and its -inl.h files are compiled without FMA contraction: x * id + 16.5 must round
//    twice), then x86's truncating conversion (cvttps2dq: INT32_MIN for NaN and
//    out-of-range values), the int8_t narrowing, MIN(15 / 31, .) and the uint8_t
//    narrowing, all in 32-bit lanes, so that blocks whose 1/d overflows (values near
//    FLT_MIN) give ggml's bytes too.
//  * Errors: a non-finite block (with desc.check_finite) or a finite block whose f16 d or m
//    overflows hands the whole call to quantize_reference, which throws its exact Error.
//
// The code by job: gguf_quant_lanes-inl.h (lane types, ggml's conversions as lane
// operations), gguf_legacy_blocks-inl.h (Q4_1, Q5_0, Q5_1, Q8_1), gguf_kquant_fit-inl.h (the
// sub-block scale searches), gguf_kquant_blocks-inl.h (Q2_K ... Q6_K, Q8_K super-blocks);
// here: rows, the per-target selection and the kernel.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include "ops/quantize/gguf_quantize_simd.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "formats/gguf_block_codecs.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_kernels.hpp"

#endif  // LOWBIT_OPS_GGUF_QUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/quantize/gguf_quantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"
#include "ops/quantize/gguf_kquant_blocks-inl.h"
#include "ops/quantize/gguf_legacy_blocks-inl.h"
#include "ops/quantize/gguf_quant_lanes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

using gguf::GgmlType;
using lowbit::gguf_simd::Call;
using lowbit::gguf_simd::RowsFn;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

/// Rows of Q2_K ... Q6_K and Q8_K super-blocks. False: quantize_reference must judge the call.
template <Dtype S, GgmlType T>
HWY_INLINE bool KBlocks(const Call& c, int64_t e0, int64_t nb, uint8_t* y) {
  constexpr int64_t kB = T == GgmlType::q5_K   ? 176
                         : T == GgmlType::q6_K ? 210
                         : T == GgmlType::q2_K ? 84
                         : T == GgmlType::q3_K ? 110
                         : T == GgmlType::q8_K ? 292
                                               : 144;
  const DF df;
  HWY_ALIGN float x[256];
  for (int64_t b = 0; b < nb; ++b, y += kB) {
    uint32_t amax = 0;
    for (int64_t v = 0; v < 256; v += kN) {
      const VF xv = LoadSrc<S>(df, c.src, e0 + b * 256 + v);
      hn::Store(xv, df, x + v);
    }
    for (int i = 0; i < 256; ++i) {
      uint32_t bits;
      std::memcpy(&bits, x + i, 4);
      amax = std::max(amax, bits & 0x7fffffffu);
    }
    if (amax >= kNonFinite) {
      if (c.check_finite) return false;
      continue;  // unspecified (memory-safe) bytes: left as they are
    }
    if constexpr (T == GgmlType::q6_K) {
      if (!Q6Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q2_K) {
      if (!Q2Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q3_K) {
      if (!Q3Block(x, y)) return false;
    } else if constexpr (T == GgmlType::q8_K) {
      Q8KBlock(x, y);
    } else {
      if (!KBlock<T>(x, y)) return false;
    }
  }
  return true;
}

template <Dtype S, GgmlType T>
void Rows(const Call& c, int64_t r0, int64_t r1) {
  constexpr bool kK = T == GgmlType::q2_K || T == GgmlType::q3_K || T == GgmlType::q4_K ||
                      T == GgmlType::q5_K || T == GgmlType::q6_K || T == GgmlType::q8_K;
  for (int64_t r = r0; r < r1; ++r) {
    bool ok;
    if constexpr (kK) {
      ok = KBlocks<S, T>(c, r * c.k, c.k / 256, c.codes + r * c.row_bytes);
    } else if constexpr (T == GgmlType::q8_1) {
      ok = Q8_1Blocks<S>(c, r * c.k, c.k / 32, c.codes + r * c.row_bytes);
    } else {
      ok = Blocks<S, T>(c, r * c.k, c.k / 32, c.codes + r * c.row_bytes);
    }
    if (!ok) {
      c.refuse->store(true);
      return;
    }
  }
}

template <Dtype S>
RowsFn RowsFor(GgmlType type) {
  switch (type) {
    case GgmlType::q4_1:
      return &Rows<S, GgmlType::q4_1>;
    case GgmlType::q5_0:
      return &Rows<S, GgmlType::q5_0>;
    case GgmlType::q5_1:
      return &Rows<S, GgmlType::q5_1>;
    case GgmlType::q4_K:
      return &Rows<S, GgmlType::q4_K>;
    case GgmlType::q5_K:
      return &Rows<S, GgmlType::q5_K>;
    case GgmlType::q6_K:
      return &Rows<S, GgmlType::q6_K>;
    case GgmlType::q2_K:
      return &Rows<S, GgmlType::q2_K>;
    case GgmlType::q3_K:
      return &Rows<S, GgmlType::q3_K>;
    case GgmlType::q8_K:
      return &Rows<S, GgmlType::q8_K>;
    case GgmlType::q8_1:
      return &Rows<S, GgmlType::q8_1>;
    default:
      return nullptr;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd

/// This target's rows function; nullptr on HWY_SCALAR / EMU128 (the kernel declines there).
lowbit::gguf_simd::RowsFn SelectGgufRows(Dtype src, uint32_t type) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)src;
  (void)type;
  return nullptr;
#else
  const auto t = static_cast<gguf::GgmlType>(type);
  switch (src) {
    case Dtype::f32:
      return gguf_simd::RowsFor<Dtype::f32>(t);
    case Dtype::f16:
      return gguf_simd::RowsFor<Dtype::f16>(t);
    case Dtype::bf16:
      return gguf_simd::RowsFor<Dtype::bf16>(t);
    default:
      return nullptr;
  }
#endif
}

const char* GgufTargetName() { return hwy::TargetName(HWY_TARGET); }
bool GgufTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectGgufRows);
HWY_EXPORT(GgufTargetName);
HWY_EXPORT(GgufTargetIsSimd);

namespace {

bool served(const QuantScheme& s) {
  using gguf::GgmlType;
  return s.format == QuantFormat::gguf && (s.gguf_type == static_cast<uint32_t>(GgmlType::q4_1) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_0) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_1) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q4_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q5_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q6_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q2_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q3_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q8_K) ||
                                           s.gguf_type == static_cast<uint32_t>(GgmlType::q8_1));
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

class GgufQuantizeSimd final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "gguf_quantize_simd"; }

  std::string decline(const QuantizeDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!served(d.scheme)) return "GGUF types other than q8_0 / q4_0 (quantize_simd) only";
    if (!HWY_DYNAMIC_DISPATCH(GgufTargetIsSimd)())
      return "no SIMD target on this CPU (Highway chose SCALAR)";
    if (d.src != Dtype::f32 && d.src != Dtype::f16 && d.src != Dtype::bf16)
      return "f32, f16 and bf16 sources only (f64: the reference rounds it to f32 first)";
    if (!contiguous(d.shape, d.src_strides)) return "src not contiguous";
    return {};
  }

  KernelSku sku(const QuantizeDesc& d) const override {
    return {"quantize",
            Backend::cpu,
            std::string(dtype_name(d.src)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(GgufTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {
        "ggml's quantize_row_*_ref in f32, operation for operation; byte-identical to "
        "quantize_reference",
        std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream& stream,
           Workspace ws) const override {
    const int64_t n = numel(d.shape);
    const int64_t k = d.shape.size() > 0 ? d.shape[d.shape.size() - 1] : 1;
    if (n == 0 || k == 0) return;
    const auto type = static_cast<gguf::GgmlType>(d.scheme.gguf_type);
    std::atomic<bool> refuse{false};
    gguf_simd::Call c{
        a.src.data(),   k,      static_cast<uint8_t*>(a.dst.codes.data()), gguf::row_bytes(type, k),
        d.check_finite, &refuse};
    const gguf_simd::RowsFn fn = HWY_DYNAMIC_DISPATCH(SelectGgufRows)(d.src, d.scheme.gguf_type);
    const int64_t rows = n / k;
    // Pieces of about 64 Ki values, one row at least.
    const int64_t per = std::max<int64_t>(1, (int64_t{1} << 16) / k);
    const int64_t pieces = (rows + per - 1) / per;
    auto piece = [&](int64_t p) { fn(c, p * per, std::min(rows, (p + 1) * per)); };
    if (pieces > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    } else {
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    }
    // The reference throws its exact Error (non-finite input or an f16 overflow).
    if (refuse.load()) quantize_reference_kernel().run(d, a, stream, ws);
  }
};

}  // namespace

const Kernel<QuantizeOp>& gguf_quantize_simd_kernel() {
  static const GgufQuantizeSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
