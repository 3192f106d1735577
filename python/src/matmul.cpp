// lowbit.matmul and lowbit.QuantizedLinear over include/lowbit/matmul.hpp.
//
// y[..., N] = x[..., K] · dequant(W)[N, K]^T (+ bias[N]). The weight is a lowbit
// QuantizedTensor (its parts may be the caller's or a mapped file's memory: nothing is
// copied); x a float array (weight-only, or W8A8 with x_scheme: the plan quantizes x
// dynamically) or a quantized x (W8A8). The one-liner prepares the weight per call when
// the kernel wants its own layout; the layer (like C++'s QuantizedLinear, which owns its
// weight and so would need a copy here) prepares it once per layout and keeps it. The GIL
// is released around preparing and running.
#include "lowbit/matmul.hpp"

#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "common.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/error.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace lowbit::python {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw_error(ErrorCode::invalid_argument, message);
}

std::optional<Dtype> to_dtype(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  return parse_dtype(*name);
}

std::optional<QuantScheme> to_opt_scheme(nb::handle h) {
  if (h.is_none()) return std::nullopt;
  return to_scheme(h);
}

void check_weight(const char* who, const QuantizedView& w) {
  if (w.shape.size() != 2)
    bad(
        fmt::format("{}: the weight has shape {}; it must be 2-D [N, K] (out_features, "
                    "in_features)",
                    who, w.shape.str()));
}

/// x of shape [..., K] as the [M, K] matrix the op reads, and y's shape [..., N].
struct Rows {
  TensorView x;
  Shape y_shape;
};

Rows as_rows(const char* who, const TensorView& x, const QuantizedView& w) {
  check_weight(who, w);
  if (x.ndim() == 0) bad(fmt::format("{}: x is a scalar; it needs the shape [..., K]", who));
  const int64_t k = x.dim(x.ndim() - 1);
  if (k != w.shape[1])
    bad(fmt::format("{}: x has shape {}, so K = {}; the weight has shape [N, K] = {}, K = {}", who,
                    x.shape().str(), k, w.shape.str(), w.shape[1]));
  int64_t m = 1;
  Shape y_shape;
  for (int i = 0; i + 1 < x.ndim(); ++i) {
    m *= x.dim(i);
    y_shape.push_back(x.dim(i));
  }
  y_shape.push_back(w.shape[0]);
  if (x.is_contiguous()) return {TensorView(x.data(), x.dtype(), {m, k}, x.device()), y_shape};
  // A 2-D view with contiguous rows some distance apart (a slice of a wider matrix): the
  // op takes the row stride.
  if (x.ndim() == 2 && (x.stride(1) == 1 || k == 1) && (m <= 1 || x.stride(0) >= k))
    return {TensorView(x.data(), x.dtype(), {m, k}, {m > 1 ? x.stride(0) : k, 1}, x.device()),
            y_shape};
  bad(
      fmt::format("{}: x{} with strides {} is not contiguous; matmul reads contiguous rows "
                  "(copy it first: np.ascontiguousarray(x) / x.contiguous())",
                  who, x.shape().str(), x.strides().str()));
}

bool is_activation(Dtype d) { return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16; }

/// Checks the dtypes of a float x and of y, naming the caller's arguments.
void check_dtypes(const char* who, Dtype x, Dtype y) {
  if (!is_activation(x))
    bad(
        fmt::format("{}: x has dtype {}; it must be f32, f16 or bf16 (cast it first; for W8A8 "
                    "give x_scheme=, or an x quantized by lowbit.quantize)",
                    who, dtype_name(x)));
  if (!is_activation(y))
    bad(fmt::format("{}: out_dtype {} is not f32, f16 or bf16", who, dtype_name(y)));
}

MatmulDesc make_desc(const TensorView& x2, const QuantizedView& w,
                     const std::optional<QuantScheme>& x_scheme, Dtype y, bool bias) {
  MatmulDesc d;
  d.m = x2.dim(0);
  d.k = x2.dim(1);
  d.n = w.shape[0];
  d.x = x2.dtype();
  d.x_scheme = x_scheme;
  d.w = w.scheme;
  d.y = y;
  d.bias = bias;
  d.x_row_stride = d.m > 1 && !x2.is_contiguous() ? x2.stride(0) : 0;
  d.device = x2.device();
  return d;
}

/// The bias as the op takes it: a contiguous [N] vector of y's dtype on the plan's device.
/// The caller's memory when it already is one; otherwise converted into `holder` (one
/// rounding, as convert()).
TensorView bias_view(const char* who, const Array& b, Dtype y, int64_t n, Device device,
                     Tensor& holder) {
  const TensorView& v = b.view;
  if (v.ndim() != 1 || v.dim(0) != n)
    bad(fmt::format("{}: bias has shape {}; it must be [N] = [{}]", who, v.shape().str(), n));
  if (!(v.device() == device))
    bad(fmt::format("{}: bias is on {}, x on {}", who, v.device().str(), device.str()));
  if (!is_float(v.dtype()) || is_packed(v.dtype()))
    bad(fmt::format("{}: bias has dtype {}; it must be a float dtype", who, dtype_name(v.dtype())));
  if (v.dtype() == y && v.is_contiguous()) return v;
  holder = Tensor::empty({n}, y, device);
  convert(holder.view(), v);
  return holder.view();
}

/// Runs `plan` into a new y of `y_shape`, preparing the weight first if the kernel wants
/// its own layout and `packed` is empty. Releases the GIL.
Array run_matmul(const MatmulPlan& plan, MatmulArgs args, const Shape& y_shape) {
  const MatmulDesc& d = plan.desc();
  Tensor y = Tensor::empty(y_shape, d.y, d.device);
  args.y = TensorView(y.data(), d.y, {d.m, d.n}, d.device);
  {
    nb::gil_scoped_release release;
    Tensor packed;
    if (args.w_packed.data() == nullptr) {
      if (const int64_t bytes = prepared_bytes(plan); bytes > 0) {
        packed = Tensor::empty({bytes}, Dtype::u8, d.device);
        prepare_weight(plan, args.w, packed.view());
        args.w_packed = packed.view();
      }
    }
    run_plan(plan, d.device, nullptr, args);
  }
  return own(std::move(y));
}

PlanInfo matmul_plan_info(const MatmulPlan& plan) {
  PlanInfo info = plan_info_of(plan, "matmul", MatmulOp::describe(plan.desc()));
  info.weight_layout = weight_layout(plan);
  info.prepared_bytes = prepared_bytes(plan);
  return info;
}

/// W8A8 with an already quantized x: [M, K] codes + scales of x_scheme.
Array matmul_quantized_x(const PyQuantized& xq, const PyQuantized& w,
                         const std::optional<Array>& bias, std::optional<Dtype> y_dtype,
                         const std::optional<QuantScheme>& x_scheme) {
  check_weight("matmul", w.view);
  const QuantizedView& xv = xq.view;
  if (xv.shape.size() != 2)
    bad(fmt::format("matmul: a quantized x must be 2-D [M, K], got shape {}", xv.shape.str()));
  if (xv.shape[1] != w.view.shape[1])
    bad(fmt::format("matmul: x has shape {}, so K = {}; the weight has shape [N, K] = {}, K = {}",
                    xv.shape.str(), xv.shape[1], w.view.shape.str(), w.view.shape[1]));
  if (x_scheme && !(*x_scheme == xv.scheme))
    bad(fmt::format("matmul: x is quantized with {}, but x_scheme is {}", xv.scheme.str(),
                    x_scheme->str()));
  const Dtype y = y_dtype.value_or(Dtype::f32);
  if (!is_activation(y))
    bad(fmt::format("matmul: out_dtype {} is not f32, f16 or bf16", dtype_name(y)));
  const Device device = xv.device();
  const Shape y_shape{xv.shape[0], w.view.shape[0]};
  MatmulDesc d;
  d.m = xv.shape[0];
  d.k = xv.shape[1];
  d.n = w.view.shape[0];
  d.x = xv.scheme.code_dtype();
  d.x_scheme = xv.scheme;
  d.w = w.view.scheme;
  d.y = y;
  d.bias = bias.has_value();
  d.device = device;
  const MatmulPlan plan = MatmulPlan::select(d);
  Tensor bias_holder;
  MatmulArgs args;
  args.xq = xv;
  args.w = w.view;
  if (bias) args.bias = bias_view("matmul", *bias, y, d.n, device, bias_holder);
  return run_matmul(plan, args, y_shape);
}

// ---- the layer --------------------------------------------------------------------------------

/// lowbit.QuantizedLinear's core: the weight (kept referenced), the bias, the activations'
/// scheme for W8A8, and the prepared weights by layout.
struct Linear {
  PyQuantized w;
  std::optional<Array> bias;
  std::optional<QuantScheme> x_scheme;

  struct Cache {
    std::mutex mu;
    std::map<std::string, Tensor> packed;  // layout -> prepared weight
  };
  std::shared_ptr<Cache> cache = std::make_shared<Cache>();

  MatmulPlan plan(int64_t m, Dtype x, std::optional<Dtype> y) const {
    MatmulDesc d;
    d.m = m;
    d.n = w.view.shape[0];
    d.k = w.view.shape[1];
    d.x = x;
    d.x_scheme = x_scheme;
    d.w = w.view.scheme;
    d.y = y.value_or(x);
    d.bias = bias.has_value();
    d.device = w.view.device();
    return MatmulPlan::select(d);
  }

  /// The prepared weight for `plan` (empty for the plain layout). Call without the GIL.
  TensorView packed_for(const MatmulPlan& plan) const {
    const int64_t bytes = prepared_bytes(plan);
    if (bytes == 0) return {};
    const std::string layout = weight_layout(plan);
    std::lock_guard<std::mutex> lock(cache->mu);
    auto it = cache->packed.find(layout);
    if (it == cache->packed.end()) {
      Tensor t = Tensor::empty({bytes}, Dtype::u8, w.view.device());
      prepare_weight(plan, w.view, t.view());
      it = cache->packed.emplace(layout, std::move(t)).first;
    }
    return it->second.view();
  }

  Array call(const Array& x, std::optional<Dtype> y_dtype) const {
    const Rows rows = as_rows("QuantizedLinear", x.view, w.view);
    const Dtype y = y_dtype.value_or(rows.x.dtype());
    check_dtypes("QuantizedLinear", rows.x.dtype(), y);
    if (!(rows.x.device() == w.view.device()))
      bad(fmt::format("QuantizedLinear: x is on {}, the weight on {}", rows.x.device().str(),
                      w.view.device().str()));
    const MatmulDesc d = make_desc(rows.x, w.view, x_scheme, y, bias.has_value());
    const MatmulPlan plan = MatmulPlan::select(d);
    Tensor bias_holder;
    MatmulArgs args;
    args.x = rows.x;
    args.w = w.view;
    if (bias) args.bias = bias_view("QuantizedLinear", *bias, y, d.n, d.device, bias_holder);
    {
      nb::gil_scoped_release release;
      args.w_packed = packed_for(plan);
    }
    return run_matmul(plan, args, rows.y_shape);
  }
};

}  // namespace

void bind_matmul(nb::module_& m) {
  m.def(
      "matmul",
      [](nb::handle x_h, const PyQuantized& w, std::optional<Array> bias,
         std::optional<std::string> out_dtype, nb::handle x_scheme_h) {
        const std::optional<Dtype> y_dtype = to_dtype(out_dtype);
        const std::optional<QuantScheme> x_scheme = to_opt_scheme(x_scheme_h);
        if (nb::isinstance<PyQuantized>(x_h))
          return matmul_quantized_x(nb::cast<const PyQuantized&>(x_h), w, bias, y_dtype, x_scheme);
        const Array& x = nb::cast<const Array&>(x_h);
        const Rows rows = as_rows("matmul", x.view, w.view);
        const Dtype y = y_dtype.value_or(rows.x.dtype());
        check_dtypes("matmul", rows.x.dtype(), y);
        const MatmulDesc d = make_desc(rows.x, w.view, x_scheme, y, bias.has_value());
        const MatmulPlan plan = MatmulPlan::select(d);
        Tensor bias_holder;
        MatmulArgs args;
        args.x = rows.x;
        args.w = w.view;
        if (bias) args.bias = bias_view("matmul", *bias, y, d.n, d.device, bias_holder);
        return run_matmul(plan, args, rows.y_shape);
      },
      "x"_a, "w"_a, "bias"_a = nb::none(), "out_dtype"_a = nb::none(), "x_scheme"_a = nb::none());

  m.def(
      "plan_matmul",
      [](const Array& x, const PyQuantized& w, bool bias, std::optional<std::string> out_dtype,
         nb::handle x_scheme_h) {
        const Rows rows = as_rows("plan_info(\"matmul\")", x.view, w.view);
        const Dtype y = to_dtype(out_dtype).value_or(rows.x.dtype());
        check_dtypes("plan_info(\"matmul\")", rows.x.dtype(), y);
        return matmul_plan_info(
            MatmulPlan::select(make_desc(rows.x, w.view, to_opt_scheme(x_scheme_h), y, bias)));
      },
      "x"_a, "w"_a, "bias"_a = false, "out_dtype"_a = nb::none(), "x_scheme"_a = nb::none());

  nb::class_<Linear>(m, "_Linear", "The core of lowbit.QuantizedLinear.")
      .def(
          "__init__",
          [](Linear* self, const PyQuantized& w, std::optional<Array> bias, nb::handle x_scheme_h) {
            check_weight("QuantizedLinear", w.view);
            if (bias) {
              const TensorView& b = bias->view;
              if (b.ndim() != 1 || b.dim(0) != w.view.shape[0])
                bad(fmt::format("QuantizedLinear: bias has shape {}; it must be [N] = [{}]",
                                b.shape().str(), w.view.shape[0]));
              if (!is_float(b.dtype()) || is_packed(b.dtype()))
                bad(fmt::format("QuantizedLinear: bias has dtype {}; it must be a float dtype",
                                dtype_name(b.dtype())));
              if (!(b.device() == w.view.device()))
                bad(fmt::format("QuantizedLinear: bias is on {}, the weight on {}",
                                b.device().str(), w.view.device().str()));
            }
            new (self) Linear{w, std::move(bias), to_opt_scheme(x_scheme_h)};
          },
          "w"_a, "bias"_a = nb::none(), "x_scheme"_a = nb::none())
      .def(
          "call",
          [](const Linear& l, const Array& x, std::optional<std::string> out_dtype) {
            return l.call(x, to_dtype(out_dtype));
          },
          "x"_a, "out_dtype"_a = nb::none())
      .def(
          "plan_for",
          [](const Linear& l, int64_t m, const std::string& dtype,
             std::optional<std::string> out_dtype) {
            return matmul_plan_info(l.plan(m, parse_dtype(dtype), to_dtype(out_dtype)));
          },
          "m"_a, "dtype"_a, "out_dtype"_a = nb::none())
      .def_prop_ro("weight", [](const Linear& l) { return l.w; })
      .def_prop_ro("bias", [](const Linear& l) { return l.bias; })
      .def_prop_ro("x_scheme", [](const Linear& l) { return l.x_scheme; })
      .def_prop_ro("prepared_layouts", [](const Linear& l) {
        std::lock_guard<std::mutex> lock(l.cache->mu);
        nb::list out;
        for (const auto& [layout, t] : l.cache->packed) out.append(layout);
        return out;
      });
}

}  // namespace lowbit::python
