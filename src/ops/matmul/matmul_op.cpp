// The matmul op: descriptor and argument checks, the kernel list, prepared weights,
// one-liners and QuantizedLinear.
#include <fmt/format.h>

#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

bool is_float_activation(Dtype d) { return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16; }

[[noreturn]] void bad(const std::string& what) {
  throw_error(ErrorCode::invalid_argument, "matmul: " + what);
}

const MatmulKernel& matmul_kernel_of(const MatmulPlan& plan) {
  return static_cast<const MatmulKernel&>(plan.kernel());
}

/// A 2-D view [rows, cols] with unit column stride and rows `row_stride` apart.
void check_matrix(const char* which, const TensorView& v, Dtype dtype, int64_t rows, int64_t cols,
                  int64_t row_stride, Device device) {
  if (v.dtype() != dtype)
    bad(fmt::format("{} is {}, the plan needs {}", which, dtype_name(v.dtype()),
                    dtype_name(dtype)));
  if (v.ndim() != 2 || v.dim(0) != rows || v.dim(1) != cols)
    bad(fmt::format("{} has shape {}, the plan needs [{}, {}]", which, v.shape().str(), rows,
                    cols));
  if (rows > 0 && cols > 0) {
    if (cols > 1 && v.stride(1) != 1)
      bad(fmt::format("{} needs unit column stride, has strides {}", which, v.strides().str()));
    if (rows > 1 && v.stride(0) != row_stride)
      bad(fmt::format("{} has row stride {}, the plan {}", which, v.stride(0), row_stride));
  }
  if (!(v.device() == device))
    bad(fmt::format("{} is on {}, the plan runs on {}", which, v.device().str(), device.str()));
}

void check_quantized_header(const char* which, const QuantizedView& q, const QuantScheme& s,
                            int64_t rows, int64_t cols) {
  if (!(q.scheme == s))
    bad(fmt::format("{} has scheme {}, the plan {}", which, q.scheme.str(), s.str()));
  if (!(q.shape == Shape{rows, cols}))
    bad(fmt::format("{} has shape {}, the plan needs [{}, {}]", which, q.shape.str(), rows, cols));
}

/// The parts of a plain quantized view: the dequantize op's own checks. The dst view only
/// has to pass the shape check (a TensorView refuses null data for a non-empty shape), so it
/// points at a byte that is never read.
void check_quantized_parts(const QuantizedView& q, Device device) {
  static char never_read;
  DequantizeOp::check_args(DequantizeDesc{q.scheme, q.shape, Dtype::f32, device},
                           DequantizeArgs{q, TensorView(&never_read, Dtype::f32, q.shape, device)});
}

Shape rows_by_k(const TensorView& x) {
  if (x.ndim() < 1) bad("x must have at least one dimension (K)");
  const int64_t k = x.dim(x.ndim() - 1);
  int64_t m = 1;
  for (int i = 0; i + 1 < x.ndim(); ++i) m *= x.dim(i);
  return {m, k};
}

}  // namespace

MatmulDesc MatmulDesc::for_views(const TensorView& y, const TensorView& x, const QuantizedView& w,
                                 bool bias) {
  MatmulDesc d;
  d.m = x.ndim() == 2 ? x.dim(0) : 0;
  d.k = x.ndim() == 2 ? x.dim(1) : 0;
  d.n = w.shape.size() == 2 ? w.shape[0] : 0;
  d.x = x.dtype();
  d.w = w.scheme;
  d.y = y.dtype();
  d.bias = bias;
  d.x_row_stride = x.ndim() == 2 && d.m > 1 ? x.stride(0) : 0;
  d.y_row_stride = y.ndim() == 2 && d.m > 1 ? y.stride(0) : 0;
  d.device = x.device();
  return d;
}

MatmulDesc MatmulDesc::for_views(const TensorView& y, const QuantizedView& xq,
                                 const QuantizedView& w, bool bias) {
  MatmulDesc d;
  d.m = xq.shape.size() == 2 ? xq.shape[0] : 0;
  d.k = xq.shape.size() == 2 ? xq.shape[1] : 0;
  d.n = w.shape.size() == 2 ? w.shape[0] : 0;
  d.x = xq.scheme.code_dtype();
  d.x_scheme = xq.scheme;
  d.w = w.scheme;
  d.y = y.dtype();
  d.bias = bias;
  d.y_row_stride = y.ndim() == 2 && d.m > 1 ? y.stride(0) : 0;
  d.device = xq.device();
  return d;
}

void MatmulOp::validate(const Desc& d) {
  check_device(d.device);
  if (d.m < 0 || d.n < 0 || d.k < 0)
    bad(fmt::format("negative extent m={} n={} k={}", d.m, d.n, d.k));
  if (!is_float_activation(d.y))
    bad(fmt::format("y dtype {} is not f32, f16 or bf16", dtype_name(d.y)));
  // Shapes the weight scheme accepts (block multiples etc): scale_shape throws with the reason.
  if (d.w.format != QuantFormat::gguf)
    (void)scale_shape(d.w, Shape{d.n, d.k});
  else
    (void)code_shape(d.w, Shape{d.n, d.k});
  if (d.x_scheme) {
    const QuantScheme& xs = *d.x_scheme;
    if (d.x_quantized() && d.x != xs.code_dtype())
      bad(fmt::format("x dtype {} is not the code dtype {} of x's scheme {}", dtype_name(d.x),
                      dtype_name(xs.code_dtype()), xs.str()));
    if (xs.format == QuantFormat::gguf)
      (void)code_shape(xs, Shape{d.m, d.k});
    else
      (void)scale_shape(xs, Shape{d.m, d.k});
  } else if (!is_float_activation(d.x)) {
    bad(fmt::format("x dtype {} is not f32, f16 or bf16 (a quantized x needs x_scheme)",
                    dtype_name(d.x)));
  }
  if (d.x_row_stride != 0 && d.x_row_stride < d.k)
    bad(fmt::format("x row stride {} < k {}", d.x_row_stride, d.k));
  if (d.y_row_stride != 0 && d.y_row_stride < d.n)
    bad(fmt::format("y row stride {} < n {}", d.y_row_stride, d.n));
}

void MatmulOp::check_args(const Desc& d, const Args& a) {
  if (d.x_quantized()) {
    check_quantized_header("xq", a.xq, *d.x_scheme, d.m, d.k);
    check_quantized_parts(a.xq, d.device);
  } else {
    check_matrix("x", a.x, d.x, d.m, d.k, d.x_stride(), d.device);
  }
  check_quantized_header("w", a.w, d.w, d.n, d.k);
  if (a.w_packed.data() == nullptr && a.w_packed.numel() == 0) {
    check_quantized_parts(a.w, d.device);
  } else {
    if (a.w_packed.dtype() != Dtype::u8 || !a.w_packed.is_contiguous())
      bad("w_packed must be a contiguous u8 tensor");
    if (!(a.w_packed.device() == d.device))
      bad(fmt::format("w_packed is on {}, the plan runs on {}", a.w_packed.device().str(),
                      d.device.str()));
  }
  check_matrix("y", a.y, d.y, d.m, d.n, d.y_stride(), d.device);
  if (d.bias) {
    if (a.bias.dtype() != d.y || !(a.bias.shape() == Shape{d.n}) || !a.bias.is_contiguous() ||
        !(a.bias.device() == d.device))
      bad(fmt::format("bias is {}, the plan needs a contiguous {}[{}] on {}", a.bias.str(),
                      dtype_name(d.y), d.n, d.device.str()));
  } else if (a.bias.data() != nullptr) {
    bad("a bias was given to a plan made without one (MatmulDesc::bias)");
  }
  // Inputs and the output must not overlap the output (y is written while x, w are read).
}

std::string MatmulOp::describe(const Desc& d) {
  return fmt::format("y[{},{}]:{} = x[{},{}]:{}{} * w[{},{}]:{}^T{} on {}", d.m, d.n,
                     dtype_name(d.y), d.m, d.k, dtype_name(d.x),
                     d.x_scheme ? "(" + d.x_scheme->str() + ")" : std::string(), d.n, d.k,
                     d.w.str(), d.bias ? " + bias" : "", d.device.str());
}

KernelList<MatmulOp> MatmulOp::kernels() {
  // Most specialised first, reference last.
  static const Kernel<MatmulOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &matmul_cuda_skinny_w8a8_kernel(),
    &matmul_cuda_w8a8_wgmma_kernel(),
    &matmul_cuda_w8a8_kernel(),
    &matmul_cuda_skinny_kernel(),
    &matmul_cuda_wgmma_ws_kernel(),
    &matmul_cuda_wgmma_ws64_kernel(),
    &matmul_cuda_wgmma_ws128_kernel(),
    &matmul_cuda_wgmma_kernel(),
    &matmul_cuda_medium_kernel(),
    &matmul_cuda_dequant_tc_kernel(),
    &matmul_cuda_dequant_kernel(),
#endif
    &matmul_cpu_avx512_vnni_packed_kernel(),
    &matmul_cpu_avx512_vnni_kernel(),
    &matmul_cpu_avx512_kernel(),
    &matmul_cpu_avx2_int8_packed_kernel(),
    &matmul_cpu_avx2_int8_kernel(),
    &matmul_cpu_avx2_kernel(),
    &matmul_reference_kernel(),
  };
  return list;
}

// ---- prepared weights -------------------------------------------------------------------------

std::string weight_layout(const MatmulPlan& plan) {
  return matmul_kernel_of(plan).weight_layout(plan.desc());
}

int64_t prepared_bytes(const MatmulPlan& plan) {
  return matmul_kernel_of(plan).prepared_bytes(plan.desc());
}

void prepare_weight(const MatmulPlan& plan, const QuantizedView& w, const TensorView& packed,
                    const Stream* stream) {
  const MatmulDesc& d = plan.desc();
  check_quantized_header("w", w, d.w, d.n, d.k);
  check_quantized_parts(w, d.device);
  const int64_t bytes = prepared_bytes(plan);
  if (packed.dtype() != Dtype::u8 || packed.numel() != bytes || !packed.is_contiguous() ||
      !(packed.device() == d.device))
    bad(fmt::format("prepare_weight: packed is {}, the plan needs a contiguous u8[{}] on {}",
                    packed.str(), bytes, d.device.str()));
  if (bytes == 0) return;
  const Stream fallback = stream ? Stream() : Stream::default_for(d.device);
  const Stream& s = stream ? *stream : fallback;
  matmul_kernel_of(plan).prepare(d, w, packed, s);
  if (!stream) s.synchronize();
}

// ---- one-liners -----------------------------------------------------------------------------

void matmul_into(const TensorView& y, const TensorView& x, const QuantizedView& w,
                 const TensorView* bias, const Stream* stream) {
  const MatmulPlan plan = MatmulPlan::select(MatmulDesc::for_views(y, x, w, bias != nullptr));
  MatmulArgs args{x, {}, w, {}, bias ? *bias : TensorView(), y};
  Tensor packed;
  if (const int64_t bytes = prepared_bytes(plan); bytes > 0) {
    packed = Tensor::empty({bytes}, Dtype::u8, x.device(), stream);
    prepare_weight(plan, w, packed, stream);
    args.w_packed = packed;
  }
  run_plan(plan, x.device(), stream, args);
}

Tensor matmul(const TensorView& x, const QuantizedView& w, const TensorView* bias,
              std::optional<Dtype> y_dtype) {
  const Shape mk = rows_by_k(x);
  if (!x.is_contiguous()) bad("x must be contiguous (or call matmul_into with a 2-D strided view)");
  if (w.shape.size() != 2) bad(fmt::format("w has shape {}, needs [N, K]", w.shape.str()));
  if (mk[1] != w.shape[1]) bad(fmt::format("x has k = {}, w has k = {}", mk[1], w.shape[1]));
  const TensorView x2(x.data(), x.dtype(), mk, x.device());
  Shape out_shape;
  for (int i = 0; i + 1 < x.ndim(); ++i) out_shape.push_back(x.dim(i));
  out_shape.push_back(w.shape[0]);
  Tensor y = Tensor::empty(out_shape, y_dtype.value_or(x.dtype()), x.device());
  matmul_into(TensorView(y.data(), y.dtype(), {mk[0], w.shape[0]}, y.device()), x2, w, bias);
  return y;
}

// ---- QuantizedLinear --------------------------------------------------------------------------

QuantizedLinear::QuantizedLinear(QuantizedTensor w, std::optional<Tensor> bias)
    : w_(std::move(w)), bias_(std::move(bias)) {
  if (w_.shape.size() != 2)
    bad(fmt::format("QuantizedLinear: weight shape {} is not [N, K]", w_.shape.str()));
}

MatmulPlan QuantizedLinear::plan_for(int64_t m, Dtype x_dtype, std::optional<Dtype> y_dtype) const {
  MatmulDesc d;
  d.m = m;
  d.n = w_.shape[0];
  d.k = w_.shape[1];
  d.x = x_dtype;
  d.w = w_.scheme;
  d.y = y_dtype.value_or(x_dtype);
  d.bias = bias_.has_value();
  d.device = w_.device();
  return MatmulPlan::select(d);
}

const TensorView& QuantizedLinear::packed_for(const MatmulPlan& plan) const {
  static const TensorView kNone;
  const int64_t bytes = prepared_bytes(plan);
  if (bytes == 0) return kNone;
  const std::string layout = weight_layout(plan);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = packed_.find(layout);
  if (it == packed_.end()) {
    Tensor t = Tensor::empty({bytes}, Dtype::u8, w_.device());
    prepare_weight(plan, w_.view(), t);
    it = packed_.emplace(layout, std::move(t)).first;
  }
  return it->second.view();
}

Tensor QuantizedLinear::operator()(const TensorView& x, std::optional<Dtype> y_dtype) const {
  const Shape mk = rows_by_k(x);
  if (!x.is_contiguous()) bad("QuantizedLinear: x must be contiguous");
  if (mk[1] != w_.shape[1])
    bad(fmt::format("QuantizedLinear: x has K = {}, the weight {}", mk[1], w_.shape[1]));
  const MatmulPlan plan = plan_for(mk[0], x.dtype(), y_dtype);
  Shape out_shape;
  for (int i = 0; i + 1 < x.ndim(); ++i) out_shape.push_back(x.dim(i));
  out_shape.push_back(w_.shape[0]);
  Tensor y = Tensor::empty(out_shape, plan.desc().y, x.device());
  MatmulArgs args{TensorView(x.data(), x.dtype(), mk, x.device()),
                  {},
                  w_.view(),
                  packed_for(plan),
                  bias_ ? bias_->view() : TensorView(),
                  TensorView(y.data(), y.dtype(), {mk[0], w_.shape[0]}, y.device())};
  run_plan(plan, x.device(), nullptr, args);
  return y;
}

}  // namespace lowbit
