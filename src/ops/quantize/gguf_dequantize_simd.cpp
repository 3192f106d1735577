// A CPU SIMD dequantize kernel for the GGUF types dequantize_simd leaves to the reference:
// q8_1, q2_K, q3_K, q5_K and q8_K, to f32, f16 or bf16. Highway, dispatched at run time
// (AVX3, AVX2, SSE4), OpenMP across rows. Bit-identical to dequantize_reference, i.e. to
// ggml's dequantize_row_* as formats/gguf_legacy.cpp and gguf_kquants.cpp restate them:
// the per-sub-block factors (d * sc, dmin * m) are the reference's scalar products, and each
// value is the reference's vector-wide f32 operations in its order (dl * q - ml; d * q),
// which x86's SIMD instructions round, and turn NaN operands into NaNs, as its scalar ones
// do. No FMA contraction in this file (dl * q - ml must round twice). The destination is
// rounded once with numeric.hpp's rules (cpu/quant_simd-inl.h's StoreDst).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_GGUF_DEQUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_GGUF_DEQUANTIZE_SIMD_SHARED_

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit::gguf_deq_simd {

/// One call: rows of blocks in, rows of K values out.
struct Call {
  const uint8_t* codes;
  void* dst;
  int64_t k;          ///< values per row
  int64_t row_bytes;  ///< block bytes per row
};

using RowsFn = void (*)(const Call&, int64_t, int64_t);

}  // namespace lowbit::gguf_deq_simd

#endif  // LOWBIT_OPS_GGUF_DEQUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/quantize/gguf_dequantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_deq_simd {

using gguf::GgmlType;
using lowbit::gguf_deq_simd::Call;
using lowbit::gguf_deq_simd::RowsFn;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

using quant_simd::DF;
using quant_simd::DI;
using quant_simd::DI8;
using quant_simd::DU;
using quant_simd::DU8;
using quant_simd::StoreDst;
using quant_simd::VF;
using quant_simd::VI;
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE float F16At(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

/// N bytes at p as unsigned 32-bit lanes.
HWY_INLINE VI Bytes(const uint8_t* p) {
  return hn::BitCast(DI(), hn::PromoteTo(DU(), hn::LoadU(DU8(), p)));
}

template <GgmlType T>
constexpr int64_t kElems = T == GgmlType::q8_1 ? 32 : 256;
template <GgmlType T>
constexpr int64_t kBytes = T == GgmlType::q8_1   ? 36
                           : T == GgmlType::q2_K ? 84
                           : T == GgmlType::q3_K ? 110
                           : T == GgmlType::q5_K ? 176
                                                 : 292;  // q8_K

/// One block at y into x[0 .. kElems).
template <GgmlType T, Dtype D>
HWY_INLINE void Block(const uint8_t* y, void* dst, int64_t e) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  if constexpr (T == GgmlType::q8_1 || T == GgmlType::q8_K) {
    // q8_1: float(q) * d (f16 d); q8_K: d * float(q) (f32 d).
    float d;
    if constexpr (T == GgmlType::q8_1) {
      d = F16At(y);
    } else {
      std::memcpy(&d, y, 4);
    }
    const VF vd = hn::Set(df, d);
    const auto* qs = reinterpret_cast<const int8_t*>(y + 4);
    for (int64_t l = 0; l < kElems<T>; l += N) {
      const VF q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(DI8(), qs + l)));
      StoreDst<D>(T == GgmlType::q8_1 ? hn::Mul(q, vd) : hn::Mul(vd, q), dst, e + l, false);
    }
  } else if constexpr (T == GgmlType::q2_K || T == GgmlType::q3_K) {
    // Sub-block is = 8 * half + 2 * (shift / 2) + part: 16 values, bits `shift` of bytes
    // part * 16 .. + 16 of the half's 32 code bytes.
    constexpr bool k2 = T == GgmlType::q2_K;
    const uint8_t* q = y + (k2 ? 16 : 32);
    const uint8_t* hm = y;  // q3_K's high bits
    const float d = F16At(y + (k2 ? 80 : 108));
    const float dmin = k2 ? F16At(y + 82) : 0.0f;
    const VI three = hn::Set(di, 3), zero = hn::Zero(di), four = hn::Set(di, 4);
    int is = 0;
    uint32_t m = 1;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
        for (int part = 0; part < 2; ++part, ++is, e += 16) {
          float dl, ml = 0.0f;
          if constexpr (k2) {
            const uint8_t sc = y[is];
            dl = d * static_cast<float>(sc & 0xF);
            ml = dmin * static_cast<float>(sc >> 4);
          } else {
            const uint8_t* s = y + 96;
            const int low = is < 8 ? (s[is] & 0xF) : (s[is - 8] >> 4);
            const int high = (s[8 + is % 4] >> (2 * (is / 4))) & 3;
            dl = d * static_cast<float>((low | (high << 4)) - 32);
          }
          const VF vdl = hn::Set(df, dl), vml = hn::Set(df, ml);
          for (int64_t l = 0; l < 16; l += N) {
            const int64_t k = part * 16 + l;
            VI c = hn::And(hn::ShiftRightSame(Bytes(q + k), shift), three);
            if constexpr (k2) {
              StoreDst<D>(hn::Sub(hn::Mul(vdl, hn::ConvertTo(df, c)), vml), dst, e + l, false);
            } else {
              // A clear hmask bit means the code is q - 4.
              const VI bit = hn::And(Bytes(hm + k), hn::Set(di, static_cast<int32_t>(m)));
              c = hn::Sub(c, hn::IfThenElseZero(hn::Eq(bit, zero), four));
              StoreDst<D>(hn::Mul(vdl, hn::ConvertTo(df, c)), dst, e + l, false);
            }
          }
        }
      }
    }
  } else {  // q5_K
    const float d = F16At(y);
    const float dmin = F16At(y + 2);
    const uint8_t* sc = y + 4;
    const uint8_t* qh = y + 16;
    const uint8_t* ql = y + 48;
    auto scale_min = [&](int j, float* dd, float* mm) {
      uint8_t s, mn;
      if (j < 4) {
        s = sc[j] & 63;
        mn = sc[j + 4] & 63;
      } else {
        s = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
        mn = static_cast<uint8_t>((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
      }
      *dd = d * static_cast<float>(s);
      *mm = dmin * static_cast<float>(mn);
    };
    const VI low = hn::Set(di, 0x0f), one = hn::Set(di, 1);
    for (int is = 0; is < 8; is += 2, ql += 32, e += 64) {
      float d1, m1, d2, m2;
      scale_min(is, &d1, &m1);
      scale_min(is + 1, &d2, &m2);
      const VF vd1 = hn::Set(df, d1), vm1 = hn::Set(df, m1);
      const VF vd2 = hn::Set(df, d2), vm2 = hn::Set(df, m2);
      for (int64_t l = 0; l < 32; l += N) {
        const VI b = Bytes(ql + l);
        const VI h = Bytes(qh + l);
        // Bit `is` of qh[l] is the fifth bit of the low-nibble value, bit is + 1 of the high.
        const VI lo =
            hn::Or(hn::And(b, low), hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(h, is), one)));
        const VI hi = hn::Or(hn::ShiftRight<4>(b),
                             hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(h, is + 1), one)));
        StoreDst<D>(hn::Sub(hn::Mul(vd1, hn::ConvertTo(df, lo)), vm1), dst, e + l, false);
        StoreDst<D>(hn::Sub(hn::Mul(vd2, hn::ConvertTo(df, hi)), vm2), dst, e + 32 + l, false);
      }
    }
  }
}

template <GgmlType T, Dtype D>
void Rows(const Call& c, int64_t r0, int64_t r1) {
  const int64_t nb = c.k / kElems<T>;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* y = c.codes + r * c.row_bytes;
    for (int64_t b = 0; b < nb; ++b, y += kBytes<T>) Block<T, D>(y, c.dst, r * c.k + b * kElems<T>);
  }
}

template <Dtype D>
RowsFn RowsFor(GgmlType type) {
  switch (type) {
    case GgmlType::q8_1:
      return &Rows<GgmlType::q8_1, D>;
    case GgmlType::q2_K:
      return &Rows<GgmlType::q2_K, D>;
    case GgmlType::q3_K:
      return &Rows<GgmlType::q3_K, D>;
    case GgmlType::q5_K:
      return &Rows<GgmlType::q5_K, D>;
    case GgmlType::q8_K:
      return &Rows<GgmlType::q8_K, D>;
    default:
      return nullptr;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_deq_simd

/// This target's rows function; nullptr on HWY_SCALAR / EMU128 (the kernel declines there).
lowbit::gguf_deq_simd::RowsFn SelectGgufDeqRows(Dtype dst, uint32_t type) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)dst;
  (void)type;
  return nullptr;
#else
  const auto t = static_cast<gguf::GgmlType>(type);
  switch (dst) {
    case Dtype::f32:
      return gguf_deq_simd::RowsFor<Dtype::f32>(t);
    case Dtype::f16:
      return gguf_deq_simd::RowsFor<Dtype::f16>(t);
    case Dtype::bf16:
      return gguf_deq_simd::RowsFor<Dtype::bf16>(t);
    default:
      return nullptr;
  }
#endif
}

const char* GgufDeqTargetName() { return hwy::TargetName(HWY_TARGET); }
bool GgufDeqTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectGgufDeqRows);
HWY_EXPORT(GgufDeqTargetName);
HWY_EXPORT(GgufDeqTargetIsSimd);

namespace {

bool served(const QuantScheme& s) {
  using gguf::GgmlType;
  if (s.format != QuantFormat::gguf) return false;
  switch (static_cast<GgmlType>(s.gguf_type)) {
    case GgmlType::q8_1:
    case GgmlType::q2_K:
    case GgmlType::q3_K:
    case GgmlType::q5_K:
    case GgmlType::q8_K:
      return true;
    default:
      return false;
  }
}

class GgufDequantizeSimd final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "gguf_dequantize_simd"; }

  std::string decline(const DequantizeDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!served(d.scheme)) return "GGUF q8_1, q2_K, q3_K, q5_K and q8_K only";
    if (!HWY_DYNAMIC_DISPATCH(GgufDeqTargetIsSimd)())
      return "no SIMD target on this CPU (Highway chose SCALAR)";
    if (d.dst != Dtype::f32 && d.dst != Dtype::f16 && d.dst != Dtype::bf16)
      return "f32, f16 and bf16 destinations only (f64: the reference serves it)";
    return {};
  }

  KernelSku sku(const DequantizeDesc& d) const override {
    return {"dequantize",
            Backend::cpu,
            std::string(dtype_name(d.dst)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(GgufDeqTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const DequantizeDesc&) const override {
    return {
        "ggml's dequantize_row_* in f32, one rounding to the destination; bit-identical "
        "to dequantize_reference",
        std::nullopt, true, true};
  }

  void run(const DequantizeDesc& d, const DequantizeArgs& a, const Stream&,
           Workspace) const override {
    const int64_t n = numel(d.shape);
    const int64_t k = d.shape.size() > 0 ? d.shape[d.shape.size() - 1] : 1;
    if (n == 0 || k == 0) return;
    const auto type = static_cast<gguf::GgmlType>(d.scheme.gguf_type);
    const gguf_deq_simd::Call c{static_cast<const uint8_t*>(a.src.codes.data()), a.dst.data(), k,
                                gguf::row_bytes(type, k)};
    const gguf_deq_simd::RowsFn fn =
        HWY_DYNAMIC_DISPATCH(SelectGgufDeqRows)(d.dst, d.scheme.gguf_type);
    if (!fn) throw_error(ErrorCode::internal, "gguf_dequantize_simd: no function");
    const int64_t rows = n / k;
    const int64_t per = std::max<int64_t>(1, (int64_t{1} << 16) / k);
    const int64_t pieces = (rows + per - 1) / per;
    auto piece = [&](int64_t p) { fn(c, p * per, std::min(rows, (p + 1) * per)); };
    if (pieces > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    } else {
      for (int64_t p = 0; p < pieces; ++p) piece(p);
    }
  }
};

}  // namespace

const Kernel<DequantizeOp>& gguf_dequantize_simd_kernel() {
  static const GgufDequantizeSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
