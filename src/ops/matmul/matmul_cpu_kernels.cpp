// The CPU matmul kernels of the list (AVX-512): what each accepts and why it declines, the
// translation of descriptors and views into matmul_cpu_avx512.hpp's plain structs, dynamic
// quantization of x for the int8 kernel, and the workspace layout. The arithmetic is in
// matmul_cpu_avx512.cpp; docs/matmul.md (CPU) describes both kernels.
//
//  matmul_cpu_avx512_vnni  x_scheme int8 (symmetric; tensor / token / blocks >= the weight's
//                          parameter group), q8_0 or q8_K; given quantized or quantized here
//                          by the quantize op (same codes as lowbit::quantize); W any integer
//                          format below. int8 dot products (vpdpbusd), i32 per group.
//  matmul_cpu_avx512       weight-only, x f32 / f16 / bf16: W int8 / uint8 / int4 / uint4
//                          (tensor, channel, blocks), fp8 e4m3 / e5m2 (tensor, channel,
//                          blocks, 128x128 tiles), nvfp4, mxfp4, q4_0, q8_0, q4_K, q6_K;
//                          dequantize on the fly, f32 FMAs.
//  matmul_cpu_avx2_int8,   the same two on AVX2 + FMA + F16C (matmul_cpu_avx2.cpp), for CPUs
//  matmul_cpu_avx2         without AVX-512 VNNI; int8 dot products with vpmaddwd.
//  matmul_cpu_avx2_int8_packed  the int8 one on W prepared in strips of 8 rows
//                          (matmul_cpu_avx2_packed.cpp); 8-bit weights up to m = 16.
#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "lowbit/gguf_blocks.hpp"
#include "lowbit/quantize.hpp"
#include "ops/matmul/matmul_cpu_avx2.hpp"
#include "ops/matmul/matmul_cpu_avx512.hpp"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace matmul_cpu {

namespace {

size_t align64(size_t v) { return (v + 63) & ~size_t{63}; }

size_t c_bytes(const WeightRef& w, int64_t m, const YRef& y) {
  return y.dt == FDt::f32 ? 0 : align64(static_cast<size_t>(m * w.n) * 4);
}

}  // namespace

WsLayout exact_layout(const WeightRef& w, int64_t m, const YRef& y, Path) {
  WsLayout L;
  const size_t mk = static_cast<size_t>(m * w.k);
  L.xf = 0;
  L.c = align64(mk * 4);
  L.total = L.c + c_bytes(w, m, y);
  return L;
}

WsLayout int8_layout(const WeightRef& w, int64_t m, const YRef& y, Path path) {
  WsLayout L;
  const size_t mk = static_cast<size_t>(m * w.k);
  const size_t per_group = static_cast<size_t>(m * (w.k / w.group)) * 4;
  const size_t per_lane = mk;  // one i32 / f32 per 4 codes
  size_t at = align64(mk);     // xq
  L.init = at;
  at += align64(path == Path::gemv ? per_lane : per_group);
  L.xs = at;
  at += align64(path == Path::gemv ? per_lane : per_group);
  L.xsq = at;
  at += align64(per_group);
  L.c = at;
  L.total = at + c_bytes(w, m, y);
  return L;
}

WsLayout avx2::int8_layout(const WeightRef& w, int64_t m, const YRef& y) {
  WsLayout L;
  const size_t per_group = static_cast<size_t>(m * (w.k / w.group)) * 4;
  size_t at = align64(static_cast<size_t>(m * w.k) * 2);  // xq (i16)
  L.xs = at;
  at += align64(per_group);
  L.xsq = at;
  at += align64(per_group);
  L.c = at;
  L.total = at + c_bytes(w, m, y);
  return L;
}

}  // namespace matmul_cpu

namespace {

using matmul_cpu::FDt;
using matmul_cpu::kNoDiv;
using matmul_cpu::Path;
using matmul_cpu::WeightRef;
using matmul_cpu::WFmt;
using matmul_cpu::WsLayout;
using matmul_cpu::XFloatRef;
using matmul_cpu::XQKind;
using matmul_cpu::XQuantRef;
using matmul_cpu::YRef;

/// At most this many rows of x take the gemv loop; more take the panel (gemm) loop.
constexpr int64_t kGemvMaxRowsExact = 4;
constexpr int64_t kGemvMaxRowsInt8 = 4;

FDt fdt(Dtype d) { return d == Dtype::f16 ? FDt::f16 : (d == Dtype::bf16 ? FDt::bf16 : FDt::f32); }

bool channel_axis0(const QuantScheme& s) {
  return s.granularity == Granularity::channel && (s.axis == 0 || s.axis == -2);
}

/// The weight format of `s`, or a reason why the CPU kernels do not read it.
std::string weight_format(const QuantScheme& s, WFmt* out) {
  using gguf::GgmlType;
  switch (s.format) {
    case QuantFormat::int8:
      *out = WFmt::i8;
      break;
    case QuantFormat::uint8:
      *out = WFmt::u8;
      break;
    case QuantFormat::int4:
      *out = WFmt::i4;
      break;
    case QuantFormat::uint4:
      *out = WFmt::u4;
      break;
    case QuantFormat::fp8e4m3:
      *out = WFmt::e4m3;
      break;
    case QuantFormat::fp8e5m2:
      *out = WFmt::e5m2;
      break;
    case QuantFormat::nvfp4:
      *out = WFmt::nvfp4;
      return {};
    case QuantFormat::mxfp4:
      *out = WFmt::mxfp4;
      return {};
    case QuantFormat::gguf:
      switch (static_cast<GgmlType>(s.gguf_type)) {
        case GgmlType::q4_0:
          *out = WFmt::q4_0;
          return {};
        case GgmlType::q8_0:
          *out = WFmt::q8_0;
          return {};
        case GgmlType::q4_K:
          *out = WFmt::q4_K;
          return {};
        case GgmlType::q6_K:
          *out = WFmt::q6_K;
          return {};
        default:
          return fmt::format("GGUF {} weights: the CPU kernels read q4_0, q8_0, q4_K and q6_K",
                             s.str());
      }
    default:
      return fmt::format("{} weights: not implemented on the CPU kernels", s.str());
  }
  // Integer and fp8 schemes: scales along k in groups the kernels can follow.
  if (s.granularity == Granularity::channel && !channel_axis0(s))
    return fmt::format("{}: per-channel scales along k (axis {}) vary inside a dot product",
                       s.str(), s.axis);
  return {};
}

int param_group(const QuantScheme& s) {
  if (s.format == QuantFormat::nvfp4) return 16;
  if (s.format == QuantFormat::gguf &&
      static_cast<gguf::GgmlType>(s.gguf_type) == gguf::GgmlType::q6_K)
    return 16;
  if ((s.granularity == Granularity::block || s.granularity == Granularity::block2d) &&
      s.block == 16)
    return 16;
  return 32;
}

/// Why the CPU kernels cannot take W of `d` (empty if they can).
std::string weight_reason(const MatmulDesc& d) {
  WFmt f;
  if (std::string why = weight_format(d.w, &f); !why.empty()) return why;
  if (d.k % 64 != 0)
    return fmt::format("k = {} is not a multiple of 64 (the kernels read 64 codes at a time)", d.k);
  return {};
}

/// W's shape-only part (for workspace sizes) or, with `q`, the whole reference.
WeightRef weight_ref(const MatmulDesc& d, const QuantizedView* q) {
  WeightRef w;
  weight_format(d.w, &w.fmt);
  w.group = param_group(d.w);
  w.n = d.n;
  w.k = d.k;
  w.affine = d.w.is_integer() && !d.w.symmetric;
  const QuantScheme& s = d.w;
  const int64_t K = d.k;
  switch (s.format) {
    case QuantFormat::int4:
    case QuantFormat::uint4:
    case QuantFormat::nvfp4:
    case QuantFormat::mxfp4:
      w.row_bytes = K / 2;
      break;
    case QuantFormat::gguf:
      w.row_bytes = gguf::row_bytes(static_cast<gguf::GgmlType>(s.gguf_type), K);
      break;
    default:
      w.row_bytes = K;
  }
  switch (s.granularity) {
    case Granularity::tensor:
      w.scale_row_div = kNoDiv;
      w.scale_row_stride = 0;
      w.scale_col_div = kNoDiv;
      break;
    case Granularity::channel:
    case Granularity::token:
      w.scale_row_div = 1;
      w.scale_row_stride = 1;
      w.scale_col_div = kNoDiv;
      break;
    case Granularity::block:
      w.scale_row_div = 1;
      w.scale_row_stride = (K + s.block - 1) / s.block;
      w.scale_col_div = s.block;
      break;
    case Granularity::block2d:
      w.scale_row_div = s.block;
      w.scale_row_stride = (K + s.block - 1) / s.block;
      w.scale_col_div = s.block;
      break;
  }
  if (s.format == QuantFormat::nvfp4 || s.format == QuantFormat::mxfp4) {
    const int b = s.format == QuantFormat::nvfp4 ? 16 : 32;
    w.scale_row_div = 1;
    w.scale_row_stride = K / b;
    w.scale_col_div = b;
  }
  if (s.is_integer()) w.scale_dt = fdt(s.scale_dtype);
  if (!q) return w;
  w.codes = static_cast<const uint8_t*>(q->codes.data());
  if (s.format != QuantFormat::gguf) {
    w.scale = q->scale.data();
    w.scale_dt = fdt(q->scale.dtype());
  }
  if (s.is_integer() && !s.symmetric) w.zero = q->zero.data_as<const int32_t>();
  if (s.format == QuantFormat::nvfp4) w.global = q->global_scale.data_as<const float>()[0];
  return w;
}

YRef y_ref(const MatmulDesc& d, const MatmulArgs* a) {
  YRef y;
  y.dt = fdt(d.y);
  y.row_stride = d.y_stride();
  if (a) {
    y.data = a->y.data();
    y.bias = d.bias ? a->bias.data() : nullptr;
  }
  return y;
}

std::string cpu_reason() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512 && f.avx512_vnni) return {};
  return "needs AVX-512 (F, BW, DQ, VL) with VNNI; this CPU: " + f.str();
}

std::string avx2_reason() {
  if (cpu_features().avx2) return {};
  return "needs AVX2 with FMA and F16C; this CPU: " + cpu_features().str();
}

KernelSku cpu_sku(const MatmulDesc& d, std::string_view kernel, std::string_view isa) {
  std::string dtypes = std::string(dtype_name(d.x)) +
                       (d.x_scheme ? "(" + d.x_scheme->str() + ")" : std::string()) + "x" +
                       d.w.str() + "->" + std::string(dtype_name(d.y));
  return {"matmul", Backend::cpu, dtypes, d.w.str(), std::string(isa), std::string(kernel)};
}

// ---- weight-only
// ----------------------------------------------------------------------------------

/// The instruction set of a weight-only kernel: its name, the int8 kernel that takes x_scheme
/// descriptors instead, what the CPU needs, the lanes of its gemv and its entry point.
struct ExactIsa {
  std::string_view name, int8_kernel, isa;
  std::string (*reason)();
  int lanes;
  void (*run)(const WeightRef&, const XFloatRef&, const YRef&, int64_t, Path, void*);
};

/// Weight-only: x widened to f32, W dequantized to f32, f32 FMAs (matmul_cpu_avx512.cpp, and
/// matmul_cpu_avx2.cpp on 8-lane vectors).
class MatmulCpuExact final : public MatmulKernel {
 public:
  explicit constexpr MatmulCpuExact(const ExactIsa& isa) : isa_(isa) {}

  std::string_view name() const override { return isa_.name; }

  std::string decline(const MatmulDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (d.x_scheme)
      return fmt::format("the descriptor asks for quantized activations (x_scheme {}): {}'s",
                         d.x_scheme->str(), isa_.int8_kernel);
    if (std::string why = isa_.reason(); !why.empty()) return why;
    return weight_reason(d);
  }

  KernelSku sku(const MatmulDesc& d) const override { return cpu_sku(d, name(), isa_.isa); }

  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {fmt::format("x widened to f32, W dequantized to f32 ({}), f32 FMAs in a fixed order "
                        "({} lanes along k for m <= {}, else k order per 256 with panel sums), "
                        "one rounding to y",
                        d.w.str(), isa_.lanes, kGemvMaxRowsExact),
            Dtype::f32, true, false};
  }

  std::size_t workspace_size(const MatmulDesc& d) const override {
    return matmul_cpu::exact_layout(weight_ref(d, nullptr), d.m, y_ref(d, nullptr), path(d)).total;
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace ws) const override {
    const WeightRef w = weight_ref(d, &a.w);
    const XFloatRef x{a.x.data(), fdt(d.x), d.x_stride()};
    isa_.run(w, x, y_ref(d, &a), d.m, path(d), ws.data);
  }

 private:
  static Path path(const MatmulDesc& d) {
    return d.m <= kGemvMaxRowsExact ? Path::gemv : Path::gemm;
  }
  ExactIsa isa_;
};

// ---- int8 activations
// -------------------------------------------------------------------------------

/// Why x_scheme does not suit the int8 kernel (empty if it does), with W's parameter group.
std::string x_scheme_reason(const QuantScheme& xs, int group) {
  using gguf::GgmlType;
  if (xs.format == QuantFormat::gguf) {
    const auto t = static_cast<GgmlType>(xs.gguf_type);
    if (t == GgmlType::q8_0 || t == GgmlType::q8_K) return {};
    return fmt::format("x_scheme {}: int8 activations are int8 (symmetric), q8_0 or q8_K",
                       xs.str());
  }
  if (xs.format != QuantFormat::int8 || !xs.symmetric)
    return fmt::format("x_scheme {}: int8 activations are int8 (symmetric), q8_0 or q8_K",
                       xs.str());
  switch (xs.granularity) {
    case Granularity::tensor:
    case Granularity::token:
      return {};
    case Granularity::channel:
      if (channel_axis0(xs)) return {};
      return fmt::format("x_scheme {}: per-channel x scales along k", xs.str());
    case Granularity::block:
      if (xs.block >= group) return {};
      return fmt::format("x_scheme {}: x blocks of {} are shorter than W's parameter groups ({})",
                         xs.str(), xs.block, group);
    default:
      return fmt::format("x_scheme {}: not supported", xs.str());
  }
}

/// Bytes of x's codes when the plan quantizes x (64-byte aligned).
size_t x_code_bytes(const MatmulDesc& d) {
  if (d.x_quantized()) return 0;
  const Shape cs = code_shape(*d.x_scheme, Shape{d.m, d.k});
  return (static_cast<size_t>(cs[0] * cs[1]) + 63) & ~size_t{63};
}

/// Bytes of x's codes and scales when the plan quantizes x.
size_t x_quant_bytes(const MatmulDesc& d) {
  if (d.x_quantized()) return 0;
  const QuantScheme& xs = *d.x_scheme;
  size_t scale = 0;
  if (xs.format != QuantFormat::gguf) {
    int64_t n = 1;
    for (int64_t e : scale_shape(xs, Shape{d.m, d.k})) n *= e;
    scale = static_cast<size_t>(storage_bytes(xs.scale_dtype, n));
  }
  return x_code_bytes(d) + ((scale + 63) & ~size_t{63});
}

/// x as int8 codes: a's xq when given, else x quantized into the workspace at `base` by the
/// quantize op (the same codes and scales as lowbit::quantize, and as the reference kernel).
XQuantRef quantized_x(const MatmulDesc& d, const MatmulArgs& a, char* base) {
  const QuantScheme& xs = *d.x_scheme;
  const Shape mk{d.m, d.k};
  QuantizedView xq;
  if (d.x_quantized()) {
    xq = a.xq;
  } else {
    const Shape cs = code_shape(xs, mk);
    xq.scheme = xs;
    xq.shape = mk;
    xq.codes = TensorView(base, xs.format == QuantFormat::gguf ? Dtype::u8 : xs.code_dtype(), cs);
    if (xs.format != QuantFormat::gguf)
      xq.scale = TensorView(base + x_code_bytes(d), xs.scale_dtype, scale_shape(xs, mk));
    const TensorView xv(a.x.data(), d.x, mk, {d.x_stride(), 1});
    quantize_into(xq, xv);
  }
  XQuantRef x;
  x.data = static_cast<const uint8_t*>(xq.codes.data());
  if (xs.format == QuantFormat::gguf) {
    x.kind = static_cast<gguf::GgmlType>(xs.gguf_type) == gguf::GgmlType::q8_0 ? XQKind::q8_0
                                                                               : XQKind::q8_K;
    x.row_bytes = gguf::row_bytes(static_cast<gguf::GgmlType>(xs.gguf_type), d.k);
  } else {
    x.kind = XQKind::int8;
    x.row_bytes = d.k;
    x.scale = xq.scale.data();
    x.scale_dt = fdt(xq.scale.dtype());
    if (xs.granularity == Granularity::tensor) {
      x.scale_row_stride = 0;
      x.scale_col_div = kNoDiv;
    } else if (xs.granularity == Granularity::block) {
      x.scale_row_stride = d.k / xs.block;
      x.scale_col_div = xs.block;
    } else {  // token, channel along rows
      x.scale_row_stride = 1;
      x.scale_col_div = kNoDiv;
    }
  }
  return x;
}

/// Why the int8 kernels decline `d` (empty if they take it); `isa_reason` is the CPU's part,
/// `exact` the weight-only kernel of the same instruction set.
std::string int8_reason(const MatmulDesc& d, std::string (*isa_reason)(), std::string_view exact) {
  if (!d.device.is_cpu()) return "runs on the cpu only";
  if (!d.x_scheme) return fmt::format("weight-only descriptor (no x_scheme): {}'s", exact);
  if (std::string why = isa_reason(); !why.empty()) return why;
  if (d.w.format == QuantFormat::fp8e4m3 || d.w.format == QuantFormat::fp8e5m2)
    return fmt::format("{} weights: int8 dot products need integer weight codes", d.w.str());
  if (std::string why = weight_reason(d); !why.empty()) return why;
  return x_scheme_reason(*d.x_scheme, param_group(d.w));
}

std::string int8_math(const MatmulDesc& d) {
  return fmt::format(
      "x quantized with {} (the quantize op's codes), per group of {} an exact i32 dot product "
      "of the codes, scales and sums in f32 in a fixed order, one rounding to y",
      d.x_scheme ? d.x_scheme->str() : std::string("-"), param_group(d.w));
}

/// int8 activations, W in its plain layout.
class MatmulCpuAvx512Vnni final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cpu_avx512_vnni"; }
  std::string decline(const MatmulDesc& d) const override {
    return int8_reason(d, cpu_reason, "matmul_cpu_avx512");
  }
  KernelSku sku(const MatmulDesc& d) const override { return cpu_sku(d, name(), "avx512"); }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {int8_math(d), Dtype::i32, true, false};
  }
  std::size_t workspace_size(const MatmulDesc& d) const override {
    return x_quant_bytes(d) +
           matmul_cpu::int8_layout(weight_ref(d, nullptr), d.m, y_ref(d, nullptr), path(d)).total;
  }
  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    auto* base = static_cast<char*>(ws.data);
    const XQuantRef x = quantized_x(d, a, base);
    matmul_cpu::run_int8(weight_ref(d, &a.w), x, y_ref(d, &a), d.m, path(d),
                         base + x_quant_bytes(d));
  }

 private:
  static Path path(const MatmulDesc& d) {
    return d.m <= kGemvMaxRowsInt8 ? Path::gemv : Path::gemm;
  }
};

/// int8 activations, W prepared once into 16-row interleaved strips (matmul_cpu_avx512_packed.cpp).
class MatmulCpuAvx512VnniPacked final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cpu_avx512_vnni_packed"; }
  std::string decline(const MatmulDesc& d) const override {
    return int8_reason(d, cpu_reason, "matmul_cpu_avx512");
  }
  KernelSku sku(const MatmulDesc& d) const override { return cpu_sku(d, name(), "avx512"); }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {int8_math(d), Dtype::i32, true, false};
  }
  std::string weight_layout(const MatmulDesc&) const override { return "cpu_avx512_vnni_x16"; }
  int64_t prepared_bytes(const MatmulDesc& d) const override {
    return static_cast<int64_t>(matmul_cpu::packed_bytes(weight_ref(d, nullptr)));
  }
  void prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
               const Stream&) const override {
    matmul_cpu::pack_weight(weight_ref(d, &w), packed.data());
  }
  std::size_t workspace_size(const MatmulDesc& d) const override {
    return x_quant_bytes(d) +
           matmul_cpu::int8_layout(weight_ref(d, nullptr), d.m, y_ref(d, nullptr), Path::gemm)
               .total;
  }
  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    const WeightRef w = weight_ref(d, nullptr);
    if (a.w_packed.data() == nullptr ||
        a.w_packed.numel() != static_cast<int64_t>(matmul_cpu::packed_bytes(w)) ||
        !matmul_cpu::packed_header_matches(w, a.w_packed.data()))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("matmul: {} reads W in its prepared layout cpu_avx512_vnni_x16: pass "
                              "prepare_weight()'s {} bytes as w_packed (got {})",
                              name(), matmul_cpu::packed_bytes(w), a.w_packed.str()));
    auto* base = static_cast<char*>(ws.data);
    const XQuantRef x = quantized_x(d, a, base);
    matmul_cpu::run_int8_packed(w, a.w_packed.data(), x, y_ref(d, &a), d.m,
                                d.m <= kGemvMaxRowsInt8 ? Path::gemv : Path::gemm,
                                base + x_quant_bytes(d));
  }
};

// ---- AVX2 (no AVX-512 VNNI)
// -------------------------------------------------------------------------

/// With 8-bit weight codes, at most this many rows of x take the prepared AVX2 kernel: it reads
/// W once per 8 rows, and beyond 16 rows the plain kernel's panels, which read it once, were
/// faster (q8_0 / int8:channel at M = 64 and 512, BENCHMARKS.md). With 4-bit and q6_K codes
/// the prepared kernel was faster at every M measured (up to 512).
constexpr int64_t kAvx2PackedMaxRows8Bit = 16;

bool eight_bit_codes(const QuantScheme& w) {
  if (w.format == QuantFormat::int8 || w.format == QuantFormat::uint8) return true;
  return w.format == QuantFormat::gguf &&
         static_cast<gguf::GgmlType>(w.gguf_type) == gguf::GgmlType::q8_0;
}

/// int8 activations on AVX2, W prepared into strips of 8 interleaved rows
/// (matmul_cpu_avx2_packed.cpp); 8-bit weight codes up to m = 16.
class MatmulCpuAvx2Int8Packed final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cpu_avx2_int8_packed"; }
  std::string decline(const MatmulDesc& d) const override {
    if (std::string why = int8_reason(d, avx2_reason, "matmul_cpu_avx2"); !why.empty()) return why;
    if (d.m > kAvx2PackedMaxRows8Bit && eight_bit_codes(d.w))
      return fmt::format(
          "m = {} > {} with 8-bit weight codes: matmul_cpu_avx2_int8's panels "
          "read W once",
          d.m, kAvx2PackedMaxRows8Bit);
    return {};
  }
  KernelSku sku(const MatmulDesc& d) const override { return cpu_sku(d, name(), "avx2"); }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {int8_math(d), Dtype::i32, true, false};
  }
  std::string weight_layout(const MatmulDesc&) const override { return "cpu_avx2_x8"; }
  int64_t prepared_bytes(const MatmulDesc& d) const override {
    return static_cast<int64_t>(matmul_cpu::avx2::packed_bytes(weight_ref(d, nullptr)));
  }
  void prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
               const Stream&) const override {
    matmul_cpu::avx2::pack_weight(weight_ref(d, &w), packed.data());
  }
  std::size_t workspace_size(const MatmulDesc& d) const override {
    const WeightRef w = weight_ref(d, nullptr);
    const YRef y = y_ref(d, nullptr);
    return x_quant_bytes(d) + std::max(matmul_cpu::avx2::packed_layout(w, d.m, y).total,
                                       matmul_cpu::avx2::int8_layout(w, d.m, y).total);
  }
  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    const WeightRef shape = weight_ref(d, nullptr);
    if (a.w_packed.data() == nullptr ||
        a.w_packed.numel() != static_cast<int64_t>(matmul_cpu::avx2::packed_bytes(shape)) ||
        !matmul_cpu::avx2::packed_header_matches(shape, a.w_packed.data()))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("matmul: {} reads W in its prepared layout cpu_avx2_x8: pass "
                              "prepare_weight()'s {} bytes as w_packed (got {})",
                              name(), matmul_cpu::avx2::packed_bytes(shape), a.w_packed.str()));
    auto* base = static_cast<char*>(ws.data);
    const XQuantRef x = quantized_x(d, a, base);
    if (matmul_cpu::avx2::run_int8_packed(shape, a.w_packed.data(), x, y_ref(d, &a), d.m,
                                          base + x_quant_bytes(d)))
      return;
    // x holds a code of -128 and W 8-bit codes: the plain layout's exact path.
    matmul_cpu::avx2::run_int8(weight_ref(d, &a.w), x, y_ref(d, &a), d.m,
                               d.m <= kGemvMaxRowsInt8 ? Path::gemv : Path::gemm,
                               base + x_quant_bytes(d));
  }
};

/// int8 activations on AVX2, W in its plain layout: exact i32 dot products per group
/// (vpmaddwd on 16-bit codes), then f32 scales.
class MatmulCpuAvx2Int8 final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cpu_avx2_int8"; }
  std::string decline(const MatmulDesc& d) const override {
    return int8_reason(d, avx2_reason, "matmul_cpu_avx2");
  }
  KernelSku sku(const MatmulDesc& d) const override { return cpu_sku(d, name(), "avx2"); }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {int8_math(d), Dtype::i32, true, false};
  }
  std::size_t workspace_size(const MatmulDesc& d) const override {
    return x_quant_bytes(d) +
           matmul_cpu::avx2::int8_layout(weight_ref(d, nullptr), d.m, y_ref(d, nullptr)).total;
  }
  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    auto* base = static_cast<char*>(ws.data);
    const XQuantRef x = quantized_x(d, a, base);
    matmul_cpu::avx2::run_int8(weight_ref(d, &a.w), x, y_ref(d, &a), d.m,
                               d.m <= kGemvMaxRowsInt8 ? Path::gemv : Path::gemm,
                               base + x_quant_bytes(d));
  }
};

}  // namespace

const MatmulKernel& matmul_cpu_avx512_kernel() {
  static const MatmulCpuExact kernel({"matmul_cpu_avx512", "matmul_cpu_avx512_vnni", "avx512",
                                      cpu_reason, 16, matmul_cpu::run_exact});
  return kernel;
}

const MatmulKernel& matmul_cpu_avx512_vnni_packed_kernel() {
  static const MatmulCpuAvx512VnniPacked kernel;
  return kernel;
}

const MatmulKernel& matmul_cpu_avx512_vnni_kernel() {
  static const MatmulCpuAvx512Vnni kernel;
  return kernel;
}

const MatmulKernel& matmul_cpu_avx2_int8_packed_kernel() {
  static const MatmulCpuAvx2Int8Packed kernel;
  return kernel;
}

const MatmulKernel& matmul_cpu_avx2_int8_kernel() {
  static const MatmulCpuAvx2Int8 kernel;
  return kernel;
}

const MatmulKernel& matmul_cpu_avx2_kernel() {
  static const MatmulCpuExact kernel({"matmul_cpu_avx2", "matmul_cpu_avx2_int8", "avx2",
                                      avx2_reason, 8, matmul_cpu::avx2::run_exact});
  return kernel;
}

}  // namespace lowbit
