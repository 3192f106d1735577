// The convert op: descriptor checks, argument checks, and its ordered kernel list.
#include <fmt/format.h>

#include "lowbit/convert.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {

ConvertDesc ConvertDesc::for_views(const TensorView& dst, const TensorView& src,
                                   Saturation saturation) {
  ConvertDesc d;
  d.shape = src.shape();
  d.src = src.dtype();
  d.dst = dst.dtype();
  d.device = src.device();
  d.src_strides = src.strides();
  d.dst_strides = dst.strides();
  d.saturation = saturation;
  return d;
}

int64_t ConvertDesc::numel() const { return lowbit::numel(shape); }

namespace {
bool strides_contiguous(const Shape& shape, const Strides& strides) {
  for (int64_t d : shape)
    if (d == 0) return true;  // an empty tensor addresses nothing
  int64_t expected = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    if (shape[i] == 1) continue;
    if (strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}
}  // namespace

bool ConvertDesc::src_contiguous() const { return strides_contiguous(shape, src_strides); }
bool ConvertDesc::dst_contiguous() const { return strides_contiguous(shape, dst_strides); }

void ConvertOp::validate(const Desc& d) {
  for (auto [which, dt] : {std::pair{"src", d.src}, std::pair{"dst", d.dst}})
    if (!is_float(dt))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("convert: {} dtype {} is not a float dtype (convert casts between "
                              "f64, f32, f16, bf16, f8e4m3fn, f8e5m2, f4e2m1 and e8m0)",
                              which, dtype_name(dt)));
  check_device(d.device);
  lowbit::numel(d.shape);  // throws on negative extents or overflow
  if (d.src_strides.size() != d.shape.size() || d.dst_strides.size() != d.shape.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("convert: strides src {} / dst {} do not match shape {}",
                            d.src_strides.str(), d.dst_strides.str(), d.shape.str()));
  for (int i = 0; i < d.shape.size(); ++i)
    if (d.shape[i] > 1 && d.dst_strides[i] == 0)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("convert: dst stride 0 on dim {} of extent {} would write one "
                              "element many times",
                              i, d.shape[i]));
  if ((is_packed(d.src) && !d.src_contiguous()) || (is_packed(d.dst) && !d.dst_contiguous()))
    throw_error(ErrorCode::invalid_argument, "convert: packed f4e2m1 tensors must be contiguous");
}

void ConvertOp::check_args(const Desc& d, const Args& a) {
  auto check = [&](const char* which, const TensorView& v, Dtype dt, const Strides& strides) {
    if (v.dtype() != dt)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("convert: {}.dtype {} != planned {}", which, dtype_name(v.dtype()),
                              dtype_name(dt)));
    if (!(v.shape() == d.shape))
      throw_error(ErrorCode::invalid_argument, fmt::format("convert: {}.shape {} != planned {}",
                                                           which, v.shape().str(), d.shape.str()));
    if (!(v.strides() == strides))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("convert: {}.strides {} != planned {}", which, v.strides().str(),
                              strides.str()));
    if (!(v.device() == d.device))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("convert: {} is on {}, the plan runs on {} (copy it there first)",
                              which, v.device().str(), d.device.str()));
  };
  check("src", a.src, d.src, d.src_strides);
  check("dst", a.dst, d.dst, d.dst_strides);
  // Overlapping src and dst memory would make the result depend on the kernel's order.
  const auto* s0 = static_cast<const char*>(a.src.data());
  const auto* d0 = static_cast<const char*>(a.dst.data());
  if (a.src.numel() > 0 && s0 < d0 + a.dst.span_bytes() && d0 < s0 + a.src.span_bytes())
    throw_error(ErrorCode::invalid_argument, "convert: dst overlaps src in memory");
}

std::string ConvertOp::describe(const Desc& d) {
  std::string s = fmt::format("{}->{} {}", dtype_name(d.src), dtype_name(d.dst), d.shape.str());
  if (!d.src_contiguous()) s += fmt::format(" src strides {}", d.src_strides.str());
  if (!d.dst_contiguous()) s += fmt::format(" dst strides {}", d.dst_strides.str());
  if (d.saturation == Saturation::finite) s += " satfinite";
  return s + " on " + d.device.str();
}

KernelList<ConvertOp> ConvertOp::kernels() {
  // Most specialised first, reference last.
  static const Kernel<ConvertOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &convert_cuda_kernel(),
#endif
    &convert_simd_kernel(),
    &convert_reference_kernel(),
  };
  return list;
}

void convert(const TensorView& dst, const TensorView& src, Saturation saturation,
             const Stream* stream) {
  run_plan(ConvertPlan::select(ConvertDesc::for_views(dst, src, saturation)), src.device(), stream,
           {src, dst});
}

}  // namespace lowbit
