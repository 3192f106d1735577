// The fake_quantize and fake_quantize_backward ops: descriptor and argument checks, kernel
// lists, one-liners, and the error texts the kernels share.
#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "core/check_report_impl.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/quantized.hpp"
#include "ops/fake_quantize/fake_quantize_kernels.hpp"

namespace lowbit {

// ---- shared error texts -----------------------------------------------------------------------

namespace fq {

namespace {
std::string index_str(const Shape& shape, int64_t e) {
  std::vector<int64_t> idx(static_cast<size_t>(shape.size()));
  for (int i = shape.size() - 1; i >= 0; --i) {
    idx[static_cast<size_t>(i)] = shape[i] ? e % shape[i] : 0;
    e = shape[i] ? e / shape[i] : 0;
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}
}  // namespace

void throw_non_finite(std::string_view op, std::string_view which, const Shape& shape, int64_t flat,
                      float value) {
  throw_error(
      ErrorCode::invalid_argument,
      fmt::format("{}: {} element {} (flat index {}) is {}; fake quantization needs "
                  "finite inputs (replace or mask non-finite values first)",
                  op, which, index_str(shape, flat), flat, std::isnan(value) ? "NaN" : "Inf"));
}

void throw_bad_scale(std::string_view op, float scale, int64_t group) {
  throw_error(ErrorCode::invalid_argument,
              fmt::format("{}: given scale {} of group {} must be finite and >= 0, and 0 or at "
                          "least 2^-126 (the reciprocal of a smaller scale overflows)",
                          op, scale, group));
}

void throw_bad_zero(std::string_view op, int32_t zero, int64_t group, int qmin, int qmax) {
  throw_error(ErrorCode::invalid_argument,
              fmt::format("{}: given zero point {} of group {} is outside [{}, {}]", op, zero,
                          group, qmin, qmax));
}

int64_t largest_group(const QuantScheme& s, const Shape& shape) {
  const int64_t n = numel(shape);
  const int nd = shape.size();
  const int64_t k = nd > 0 ? shape[nd - 1] : 1;
  switch (s.granularity) {
    case Granularity::tensor:
      return n;
    case Granularity::token:
      return k;
    case Granularity::channel: {
      const int axis = s.axis < 0 ? s.axis + nd : s.axis;
      return shape[axis] > 0 ? n / shape[axis] : 0;
    }
    case Granularity::block:
      return std::min<int64_t>(k, s.block);
    case Granularity::block2d:
      return std::min<int64_t>(k, s.block) * std::min<int64_t>(shape[nd - 2], s.block);
  }
  return n;
}

}  // namespace fq

namespace {

bool is_float_io(Dtype d) {
  return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16 || d == Dtype::f64;
}

bool supported_scheme(const QuantScheme& s) {
  switch (s.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
    case QuantFormat::int4:
    case QuantFormat::uint4:
    case QuantFormat::fp8e4m3:
    case QuantFormat::fp8e5m2:
      return true;
    default:
      return false;
  }
}

void check_scheme(std::string_view op, const QuantScheme& s) {
  if (!supported_scheme(s))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("{}: scheme {}: fake quantization supports int8, uint8, int4, uint4, "
                            "fp8e4m3 and fp8e5m2 schemes (quantize then dequantize for others)",
                            op, s.str()));
}

Dtype scale_dtype(const QuantScheme& s) { return s.is_integer() ? s.scale_dtype : Dtype::f32; }

bool affine(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }

void check_view(std::string_view op, const char* which, const TensorView& v, Dtype dtype,
                const Shape& shape, Device device, bool contiguous) {
  if (v.dtype() != dtype || !(v.shape() == shape))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("{}: {} is {}{}, the plan needs {}{}", op, which, dtype_name(v.dtype()),
                            v.shape().str(), dtype_name(dtype), shape.str()));
  if (contiguous && !v.is_contiguous())
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: {} must be contiguous", op, which));
  if (!(v.device() == device))
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: {} is on {}, the plan runs on {}", op,
                                                         which, v.device().str(), device.str()));
}

void check_strided(std::string_view op, const char* which, const TensorView& v, Dtype dtype,
                   const Shape& shape, const Strides& strides, Device device) {
  check_view(op, which, v, dtype, shape, device, false);
  if (!(v.strides() == strides))
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: {} has strides {}, the plan {}", op,
                                                         which, v.strides().str(), strides.str()));
}

bool present(const TensorView& v) { return v.data() != nullptr || v.ndim() > 0; }

std::string layout_note(const Shape& shape, const Strides& strides) {
  return strides == contiguous_strides(shape) ? "" : " strided";
}

}  // namespace

// ---- forward --------------------------------------------------------------------------------

FakeQuantizeDesc FakeQuantizeDesc::for_views(const TensorView& dst, const TensorView& src,
                                             const QuantScheme& scheme, bool given_scales) {
  FakeQuantizeDesc d;
  d.shape = src.shape();
  d.src = src.dtype();
  d.src_strides = src.strides();
  d.dst = dst.dtype();
  d.scheme = scheme;
  d.device = src.device();
  d.given_scales = given_scales;
  return d;
}

void FakeQuantizeOp::validate(const Desc& d) {
  check_scheme(name, d.scheme);
  if (!is_float_io(d.src) || !is_float_io(d.dst))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize: src {} and dst {} must be f32, f16, bf16 or f64",
                            dtype_name(d.src), dtype_name(d.dst)));
  check_device(d.device);
  if (d.src_strides.size() != d.shape.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize: src strides {} do not match shape {}",
                            d.src_strides.str(), d.shape.str()));
  scale_shape(d.scheme, d.shape);  // throws if the shape does not fit the scheme
}

void FakeQuantizeOp::check_args(const Desc& d, const Args& a) {
  check_strided(name, "src", a.src, d.src, d.shape, d.src_strides, d.device);
  check_view(name, "dst", a.dst, d.dst, d.shape, d.device, true);
  const Shape ss = scale_shape(d.scheme, d.shape);
  check_view(name, "scale", a.scale, scale_dtype(d.scheme), ss, d.device, true);
  if (affine(d.scheme)) check_view(name, "zero", a.zero, Dtype::i32, ss, d.device, true);
  check_report::check_arg(name, a.report, d.device);
}

std::string FakeQuantizeOp::describe(const Desc& d) {
  return fmt::format("{} {}{}{} -> {} -> {} on {}", d.given_scales ? "static" : "dynamic",
                     dtype_name(d.src), d.shape.str(), layout_note(d.shape, d.src_strides),
                     d.scheme.str(), dtype_name(d.dst), d.device.str());
}

KernelList<FakeQuantizeOp> FakeQuantizeOp::kernels() {
  // Most specialised first, reference last.
  static const Kernel<FakeQuantizeOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &fake_quantize_cuda_kernel(),
#endif
    &fake_quantize_simd_kernel(),
    &fake_quantize_reference_kernel(),
  };
  return list;
}

// ---- backward -------------------------------------------------------------------------------

FakeQuantizeBackwardDesc FakeQuantizeBackwardDesc::for_views(const TensorView& dx,
                                                             const TensorView& dy,
                                                             const TensorView& x,
                                                             const QuantScheme& scheme,
                                                             bool scale_grad, bool zero_grad) {
  FakeQuantizeBackwardDesc d;
  d.shape = x.shape();
  d.x = x.dtype();
  d.x_strides = x.strides();
  d.dy = dy.dtype();
  d.dy_strides = dy.strides();
  d.scheme = scheme;
  d.device = x.device();
  d.scale_grad = scale_grad;
  d.zero_grad = zero_grad;
  (void)dx;
  return d;
}

void FakeQuantizeBackwardOp::validate(const Desc& d) {
  check_scheme(name, d.scheme);
  if (!is_float_io(d.x) || !is_float_io(d.dy))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize_backward: x {} and dy {} must be f32, f16, bf16 or f64",
                            dtype_name(d.x), dtype_name(d.dy)));
  check_device(d.device);
  if (d.x_strides.size() != d.shape.size() || d.dy_strides.size() != d.shape.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize_backward: strides {} / {} do not match shape {}",
                            d.x_strides.str(), d.dy_strides.str(), d.shape.str()));
  scale_shape(d.scheme, d.shape);
  if (d.zero_grad && !affine(d.scheme))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize_backward: zero_grad needs an affine integer scheme, "
                            "not {}",
                            d.scheme.str()));
  if ((d.scale_grad || d.zero_grad) && fq::largest_group(d.scheme, d.shape) > (int64_t{1} << 31))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fake_quantize_backward: scheme {} on {} has groups of {} elements; "
                            "dscale / dzero are exact sums over at most 2^31 elements per group",
                            d.scheme.str(), d.shape.str(), fq::largest_group(d.scheme, d.shape)));
}

void FakeQuantizeBackwardOp::check_args(const Desc& d, const Args& a) {
  check_strided(name, "dy", a.dy, d.dy, d.shape, d.dy_strides, d.device);
  check_strided(name, "x", a.x, d.x, d.shape, d.x_strides, d.device);
  const Shape ss = scale_shape(d.scheme, d.shape);
  check_view(name, "scale", a.scale, scale_dtype(d.scheme), ss, d.device, true);
  if (affine(d.scheme)) check_view(name, "zero", a.zero, Dtype::i32, ss, d.device, true);
  check_view(name, "dx", a.dx, d.dy, d.shape, d.device, true);
  if (d.scale_grad) check_view(name, "dscale", a.dscale, Dtype::f32, ss, d.device, true);
  if (d.zero_grad) check_view(name, "dzero", a.dzero, Dtype::f32, ss, d.device, true);
  check_report::check_arg(name, a.report, d.device);
}

std::string FakeQuantizeBackwardOp::describe(const Desc& d) {
  return fmt::format("dy {}{}, x {}{}{}, {}{}{}{} on {}", dtype_name(d.dy),
                     layout_note(d.shape, d.dy_strides), dtype_name(d.x), d.shape.str(),
                     layout_note(d.shape, d.x_strides), d.scheme.str(),
                     d.scale_grad ? ", dscale" : "", d.zero_grad ? ", dzero" : "",
                     d.lsq_grad_scale ? " (LSQ grad scale)" : "", d.device.str());
}

KernelList<FakeQuantizeBackwardOp> FakeQuantizeBackwardOp::kernels() {
  static const Kernel<FakeQuantizeBackwardOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &fake_quantize_backward_cuda_kernel(),
#endif
    &fake_quantize_backward_simd_kernel(),
    &fake_quantize_backward_reference_kernel(),
  };
  return list;
}

// ---- one-liners -----------------------------------------------------------------------------

void fake_quantize_into(const TensorView& dst, const TensorView& src, const QuantScheme& scheme,
                        const TensorView& scale, const TensorView& zero, bool given_scales,
                        const Stream* stream) {
  run_plan(FakeQuantizePlan::select(FakeQuantizeDesc::for_views(dst, src, scheme, given_scales)),
           src.device(), stream, {src, dst, scale, zero});
}

Tensor fake_quantize(const TensorView& src, const QuantScheme& scheme, const TensorView& scale,
                     const TensorView& zero) {
  Tensor y = Tensor::empty(src.shape(), src.dtype(), src.device());
  fake_quantize_into(y, src, scheme, scale, zero, true);
  return y;
}

void fake_quantize_backward_into(const FakeQuantizeBackwardArgs& a, const QuantScheme& scheme,
                                 bool lsq_grad_scale, const Stream* stream) {
  FakeQuantizeBackwardDesc d = FakeQuantizeBackwardDesc::for_views(
      a.dx, a.dy, a.x, scheme, present(a.dscale), present(a.dzero));
  d.lsq_grad_scale = lsq_grad_scale;
  run_plan(FakeQuantizeBackwardPlan::select(d), a.x.device(), stream, a);
}

FakeQuantizeGrads fake_quantize_backward(const TensorView& dy, const TensorView& x,
                                         const QuantScheme& scheme, const TensorView& scale,
                                         const TensorView& zero,
                                         const FakeQuantizeBackwardOptions& o) {
  FakeQuantizeGrads g;
  g.dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
  const Shape ss = scale_shape(scheme, x.shape());
  if (o.scale_grad) g.dscale = Tensor::empty(ss, Dtype::f32, x.device());
  if (o.zero_grad) g.dzero = Tensor::empty(ss, Dtype::f32, x.device());
  FakeQuantizeBackwardArgs a{dy, x, scale, zero, g.dx, {}, {}};
  if (o.scale_grad) a.dscale = g.dscale;
  if (o.zero_grad) a.dzero = g.dzero;
  FakeQuantizeBackwardDesc d =
      FakeQuantizeBackwardDesc::for_views(g.dx, dy, x, scheme, o.scale_grad, o.zero_grad);
  d.lsq_grad_scale = o.lsq_grad_scale;
  run_plan(FakeQuantizeBackwardPlan::select(d), x.device(), nullptr, a);
  return g;
}

}  // namespace lowbit
