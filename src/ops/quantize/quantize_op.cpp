// The quantize and dequantize ops: descriptor and argument checks, kernel lists, one-liners.
#include <fmt/format.h>

#include "core/check_report_impl.hpp"
#include "lowbit/quantize.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

bool is_quantize_source(Dtype d) {
  return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16 || d == Dtype::f64;
}

Dtype scale_dtype_of(const QuantScheme& s) {
  if (s.is_integer()) return s.scale_dtype;
  if (s.format == QuantFormat::nvfp4) return Dtype::f8e4m3fn;
  if (s.format == QuantFormat::mxfp4 || s.format == QuantFormat::mxfp8e4m3 ||
      s.format == QuantFormat::mxfp8e5m2)
    return Dtype::e8m0;
  return Dtype::f32;
}

void check_part(std::string_view op, const char* which, const TensorView& v, Dtype dtype,
                const Shape& shape, Device device) {
  if (v.dtype() != dtype || !(v.shape() == shape))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("{}: {} is {}{}, the scheme needs {}{}", op, which, dtype_name(v.dtype()),
                    v.shape().str(), dtype_name(dtype), shape.str()));
  if (!v.is_contiguous())
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: {} must be contiguous", op, which));
  if (!(v.device() == device))
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: {} is on {}, the plan runs on {}", op,
                                                         which, v.device().str(), device.str()));
}

/// Checks every part of a quantized view against its scheme and shape.
void check_quantized(std::string_view op, const QuantizedView& q, const QuantScheme& scheme,
                     const Shape& shape, Device device) {
  if (!(q.scheme == scheme))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("{}: quantized tensor has scheme {}, the plan {}", op, q.scheme.str(),
                            scheme.str()));
  if (!(q.shape == shape))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("{}: quantized tensor has shape {}, the plan {}", op, q.shape.str(),
                            shape.str()));
  check_part(op, "codes", q.codes,
             scheme.format == QuantFormat::gguf ? Dtype::u8 : scheme.code_dtype(),
             code_shape(scheme, shape), device);
  if (scheme.format == QuantFormat::gguf) return;
  check_part(op, "scale", q.scale, scale_dtype_of(scheme), scale_shape(scheme, shape), device);
  if (scheme.is_integer() && !scheme.symmetric)
    check_part(op, "zero", q.zero, Dtype::i32, scale_shape(scheme, shape), device);
  if (scheme.format == QuantFormat::nvfp4)
    check_part(op, "global_scale", q.global_scale, Dtype::f32, {1}, device);
}

}  // namespace

// ---- quantize -------------------------------------------------------------------------------

QuantizeDesc QuantizeDesc::for_views(const QuantizedView& dst, const TensorView& src,
                                     bool given_scales) {
  QuantizeDesc d;
  d.shape = src.shape();
  d.src = src.dtype();
  d.src_strides = src.strides();
  d.scheme = dst.scheme;
  d.device = src.device();
  d.given_scales = given_scales;
  return d;
}

void QuantizeOp::validate(const Desc& d) {
  if (!is_quantize_source(d.src))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("quantize: src dtype {} is not f32, f16, bf16 or f64", dtype_name(d.src)));
  check_device(d.device);
  if (d.src_strides.size() != d.shape.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("quantize: src strides {} do not match shape {}", d.src_strides.str(),
                            d.shape.str()));
  code_shape(d.scheme, d.shape);  // throws if the shape does not fit the scheme
  if (d.given_scales &&
      (d.scheme.format == QuantFormat::gguf || d.scheme.format == QuantFormat::mxfp4 ||
       d.scheme.format == QuantFormat::mxfp8e4m3 || d.scheme.format == QuantFormat::mxfp8e5m2))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("quantize: scheme {} computes its scales from the data; given scales apply "
                    "to int, fp8 and nvfp4 (global scale) schemes",
                    d.scheme.str()));
}

void QuantizeOp::check_args(const Desc& d, const Args& a) {
  if (a.src.dtype() != d.src || !(a.src.shape() == d.shape) ||
      !(a.src.strides() == d.src_strides) || !(a.src.device() == d.device))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("quantize: src {} does not match the plan's {}", a.src.str(), describe(d)));
  check_quantized("quantize", a.dst, d.scheme, d.shape, d.device);
  check_report::check_arg("quantize", a.report, d.device);
}

std::string QuantizeOp::describe(const Desc& d) {
  return fmt::format("{} {}{}{} -> {} on {}", d.given_scales ? "static" : "dynamic",
                     dtype_name(d.src), d.shape.str(),
                     d.src_strides == contiguous_strides(d.shape) ? "" : " strided", d.scheme.str(),
                     d.device.str());
}

KernelList<QuantizeOp> QuantizeOp::kernels() {
  // Most specialised first, reference last.
  static const Kernel<QuantizeOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &quantize_cuda_kernel(),
    &gguf_quantize_cuda_kernel(),
#endif
    &quantize_simd_kernel(),
    &gguf_quantize_simd_kernel(),
    &quantize_reference_kernel(),
  };
  return list;
}

// ---- dequantize -----------------------------------------------------------------------------

DequantizeDesc DequantizeDesc::for_views(const TensorView& dst, const QuantizedView& src) {
  return {src.scheme, src.shape, dst.dtype(), src.device()};
}

void DequantizeOp::validate(const Desc& d) {
  if (!is_quantize_source(d.dst))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("dequantize: dst dtype {} is not f32, f16, bf16 or f64", dtype_name(d.dst)));
  check_device(d.device);
  code_shape(d.scheme, d.shape);
}

void DequantizeOp::check_args(const Desc& d, const Args& a) {
  check_quantized("dequantize", a.src, d.scheme, d.shape, d.device);
  check_part("dequantize", "dst", a.dst, d.dst, d.shape, d.device);
}

std::string DequantizeOp::describe(const Desc& d) {
  return fmt::format("{}{} -> {} on {}", d.scheme.str(), d.shape.str(), dtype_name(d.dst),
                     d.device.str());
}

KernelList<DequantizeOp> DequantizeOp::kernels() {
  static const Kernel<DequantizeOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &dequantize_cuda_kernel(),
    &gguf_dequantize_cuda_kernel(),
#endif
    &dequantize_simd_kernel(),
    &gguf_dequantize_simd_kernel(),
    &dequantize_reference_kernel(),
  };
  return list;
}

// ---- one-liners -----------------------------------------------------------------------------

void quantize_into(const QuantizedView& dst, const TensorView& src, bool given_scales,
                   const Stream* stream) {
  run_plan(QuantizePlan::select(QuantizeDesc::for_views(dst, src, given_scales)), src.device(),
           stream, {src, dst});
}

QuantizedTensor quantize(const TensorView& src, const QuantScheme& scheme) {
  QuantizedTensor q = QuantizedTensor::allocate(scheme, src.shape(), src.device());
  quantize_into(q.view(), src, false);
  return q;
}

void dequantize_into(const TensorView& dst, const QuantizedView& src, const Stream* stream) {
  run_plan(DequantizePlan::select(DequantizeDesc::for_views(dst, src)), src.device(), stream,
           {src, dst});
}

Tensor dequantize(const QuantizedView& src, Dtype dtype) {
  Tensor t = Tensor::empty(src.shape, dtype, src.device());
  dequantize_into(t, src);
  return t;
}

Tensor fake_quantize(const TensorView& src, const QuantScheme& scheme) {
  const QuantizedTensor q = quantize(src, scheme);
  return dequantize(q.view(), src.dtype());
}

}  // namespace lowbit
