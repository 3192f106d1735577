// lowbit.fx (element-wise expressions) and lowbit.fuse over include/lowbit/fusion.hpp.
//
// A Python Expr is a lowbit::fusion::Expr plus the Arrays it reads (the expression's
// nodes hold non-owning views: the Arrays keep the caller's memory alive for as long as
// the expression lives) plus the framework of its first input (where a new result goes).
// Operators build nodes (+ - * / unary -, abs(), < <= > >=, ** with a constant
// exponent); NumPy and torch operands become inputs, Python and NumPy scalars constants.
// == and != stay Python's identity comparisons (fx.eq / fx.ne build the nodes), and an
// Expr has no truth value. fuse() evaluates one or several expressions in one pass, into
// the caller's arrays, new arrays, or a QuantizedTensor (the quantize epilogue), with the
// GIL released.
#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "lowbit/error.hpp"
#include "lowbit/fusion.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace lowbit::python {
namespace {

namespace fx = lowbit::fusion;

[[noreturn]] void bad(const std::string& message) {
  throw_error(ErrorCode::invalid_argument, message);
}

struct PyExpr {
  fx::Expr e;
  std::vector<Array> inputs;  ///< the tensors the nodes read, each once
  std::string origin;         ///< framework of the first input ("" for a constant)
};

bool same_view(const TensorView& a, const TensorView& b) {
  return a.data() == b.data() && a.dtype() == b.dtype() && a.shape() == b.shape() &&
         a.strides() == b.strides() && a.device() == b.device();
}

/// A node over `value` reading the inputs of `parts`.
PyExpr combine(fx::Expr value, std::initializer_list<const PyExpr*> parts) {
  PyExpr out{std::move(value), {}, {}};
  for (const PyExpr* p : parts) {
    if (out.origin.empty()) out.origin = p->origin;
    for (const Array& a : p->inputs) {
      const bool seen = std::any_of(out.inputs.begin(), out.inputs.end(),
                                    [&](const Array& b) { return same_view(a.view, b.view); });
      if (!seen) out.inputs.push_back(a);
    }
  }
  return out;
}

PyExpr input_expr(const Array& a, const std::string& origin) {
  if (is_packed(a.view.dtype()))
    bad(
        fmt::format("fx.input: {} is packed 4-bit; expressions read f64 f32 f16 bf16 fp8 and "
                    "8 to 32-bit integer tensors",
                    a.view.str()));
  return PyExpr{fx::input(a.view), {a}, origin};
}

/// A Python operand as an expression: an Expr, a Python / NumPy scalar (a constant), or an
/// array-like (an input, through lowbit.fx.input).
PyExpr operand(nb::handle h) {
  if (nb::isinstance<PyExpr>(h)) return nb::cast<PyExpr>(h);
  PyObject* o = h.ptr();
  if (PyBool_Check(o) || PyLong_Check(o)) {
    const long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) throw nb::python_error();
    if (v < INT_MIN || v > INT_MAX)
      bad(
          fmt::format("an integer constant in an expression must fit in int32, got {}; write it "
                      "as a float",
                      v));
    return PyExpr{fx::Expr(static_cast<int>(v)), {}, {}};
  }
  if (PyFloat_Check(o)) return PyExpr{fx::Expr(PyFloat_AsDouble(o)), {}, {}};
  nb::module_ np = nb::module_::import_("numpy");
  if (nb::isinstance(h, np.attr("generic"))) {  // NumPy scalars
    if (nb::cast<bool>(np.attr("issubdtype")(h.attr("dtype"), np.attr("integer"))) ||
        nb::cast<bool>(np.attr("issubdtype")(h.attr("dtype"), np.attr("bool_"))))
      return operand(nb::int_(h));
    if (nb::cast<bool>(np.attr("issubdtype")(h.attr("dtype"), np.attr("floating"))))
      return PyExpr{fx::Expr(nb::cast<double>(nb::float_(h))), {}, {}};
    throw nb::type_error(
        fmt::format("a NumPy scalar of dtype {} cannot be an expression's constant",
                    nb::cast<std::string>(nb::str(h.attr("dtype"))))
            .c_str());
  }
  // Arrays, tensors and DLPack producers: lowbit.fx.input converts them (and raises
  // TypeError for what is not numeric).
  return nb::cast<PyExpr>(nb::module_::import_("lowbit.fx").attr("input")(h));
}

using Unary = fx::Expr (*)(const fx::Expr&);
using Binary = fx::Expr (*)(const fx::Expr&, const fx::Expr&);

PyExpr unary(Unary f, nb::handle x) {
  const PyExpr a = operand(x);
  return combine(f(a.e), {&a});
}
PyExpr binary(Binary f, nb::handle x, nb::handle y) {
  const PyExpr a = operand(x), b = operand(y);
  return combine(f(a.e, b.e), {&a, &b});
}

/// The shape every output of these expressions has: their inputs' shapes broadcast
/// (right-aligned, extent 1 stretches).
Shape broadcast_shape(const std::vector<const PyExpr*>& exprs) {
  std::vector<int64_t> out;
  for (const PyExpr* e : exprs) {
    for (const Array& a : e->inputs) {
      const Shape& s = a.view.shape();
      const size_t rank = static_cast<size_t>(s.size());
      const size_t n = std::max(out.size(), rank);
      std::vector<int64_t> r(n, 1);
      std::copy(out.begin(), out.end(), r.begin() + static_cast<std::ptrdiff_t>(n - out.size()));
      for (size_t i = 0; i < rank; ++i) {
        int64_t& d = r[n - rank + i];
        const int64_t v = s[i];
        if (d == v || v == 1) continue;
        if (d != 1)
          bad(fmt::format("fuse: input shapes do not broadcast: {} against {}",
                          Shape(std::span<const int64_t>(out)).str(), s.str()));
        d = v;
      }
      out = std::move(r);
    }
  }
  return Shape(std::span<const int64_t>(out));
}

Device device_of(const std::vector<const PyExpr*>& exprs) {
  for (const PyExpr* e : exprs)
    if (!e->inputs.empty()) return e->inputs.front().view.device();
  bad("fuse: the expression reads no tensor (it is a constant); give an output with out=");
}

/// Evaluates the pairs (output, expression): outputs are Arrays or QuantizedTensors.
void fuse_into(const nb::list& pairs, bool check_finite, bool fast_math) {
  std::vector<FusedOutput> outputs;
  std::vector<PyExpr> keep;  // the expressions (and so their inputs) live across the call
  keep.reserve(nb::len(pairs));
  size_t i = 0;
  for (nb::handle item : pairs) {
    nb::tuple t = nb::cast<nb::tuple>(item);
    if (nb::len(t) != 2) throw nb::type_error("fuse: each output is a pair (out, expression)");
    keep.push_back(operand(t[1]));
    const fx::Expr& value = keep.back().e;
    nb::handle dst = t[0];
    if (nb::isinstance<PyQuantized>(dst)) {
      outputs.emplace_back(nb::cast<const PyQuantized&>(dst).view, value, check_finite);
    } else if (nb::isinstance<Array>(dst)) {
      const Array& a = nb::cast<const Array&>(dst);
      if (a.readonly) bad(fmt::format("fuse: output {} ({}) is read-only", i, a.view.str()));
      if (is_packed(a.view.dtype()))
        bad(
            fmt::format("fuse: output {} is packed 4-bit ({}); outputs are f64 f32 f16 bf16 fp8 "
                        "or 8 to 32-bit integers, or a QuantizedTensor",
                        i, a.view.str()));
      outputs.emplace_back(a.view, value);
    } else {
      throw nb::type_error(fmt::format("fuse: output {} is a {}; outputs are arrays (lowbit.Array) "
                                       "or QuantizedTensors",
                                       i, nb::type_name(dst.type()).c_str())
                               .c_str());
    }
    ++i;
  }
  nb::gil_scoped_release release;
  fuse(outputs, nullptr, fast_math);
}

/// Evaluates `exprs` into new arrays (of `dtype`, else each expression's dtype), or, with
/// `scheme`, the one expression into a new QuantizedTensor.
nb::object fuse_new(const nb::list& exprs_in, std::optional<std::string> dtype, nb::handle scheme_h,
                    bool check_finite, bool fast_math) {
  std::vector<PyExpr> exprs;
  for (nb::handle h : exprs_in) exprs.push_back(operand(h));
  if (exprs.empty()) bad("fuse: no expression given");
  std::vector<const PyExpr*> ptrs;
  for (const PyExpr& e : exprs) ptrs.push_back(&e);
  const Shape shape = broadcast_shape(ptrs);
  const Device device = device_of(ptrs);
  if (!scheme_h.is_none()) {
    if (exprs.size() != 1)
      bad("fuse: scheme= goes with one expression; got " + std::to_string(exprs.size()) +
          " (give several outputs as pairs (out, expression), a QuantizedTensor among them)");
    if (dtype) bad("fuse: give scheme= or dtype=, not both");
    QuantizedTensor q = QuantizedTensor::allocate(to_scheme(scheme_h), shape, device);
    {
      const std::vector<FusedOutput> outputs{FusedOutput(q.view(), exprs[0].e, check_finite)};
      nb::gil_scoped_release release;
      fuse(outputs, nullptr, fast_math);
    }
    PyQuantized p = own(std::move(q));
    p.origin = exprs[0].origin.empty() ? "numpy" : exprs[0].origin;
    return nb::cast(std::move(p));
  }
  const std::optional<Dtype> d = dtype ? std::optional<Dtype>(parse_dtype(*dtype)) : std::nullopt;
  std::vector<Tensor> results;
  std::vector<FusedOutput> outputs;
  for (const PyExpr& e : exprs) {
    results.push_back(Tensor::empty(shape, d.value_or(e.e.dtype()), device));
    outputs.emplace_back(results.back().view(), e.e);
  }
  {
    nb::gil_scoped_release release;
    fuse(outputs, nullptr, fast_math);
  }
  nb::list out;
  for (Tensor& t : results) out.append(own(std::move(t)));
  return out;
}

}  // namespace

void bind_fuse(nb::module_& m) {
  nb::module_ f = m.def_submodule("fx", "lowbit.fx's core (use lowbit.fx)");

  auto cls = nb::class_<PyExpr>(f, "Expr",
                                "An element-wise expression over tensors (lowbit.fx): build it "
                                "with fx.input and operators / fx functions, evaluate it with "
                                "lowbit.fuse.");
  cls.def_prop_ro("dtype", [](const PyExpr& e) { return std::string(dtype_name(e.e.dtype())); })
      .def_prop_ro("shape",
                   [](const PyExpr& e) {
                     const std::vector<const PyExpr*> one{&e};
                     return to_tuple(broadcast_shape(one));
                   })
      .def_prop_ro("device",
                   [](const PyExpr& e) -> std::optional<std::string> {
                     if (e.inputs.empty()) return std::nullopt;
                     return e.inputs.front().view.device().str();
                   })
      .def_prop_ro("is_scalar", [](const PyExpr& e) { return e.e.is_scalar(); })
      .def_prop_ro("is_bool", [](const PyExpr& e) { return e.e.is_bool(); })
      .def_prop_ro("op", [](const PyExpr& e) { return std::string(fx::op_name(e.e.op())); })
      .def_prop_ro("origin", [](const PyExpr& e) { return e.origin.empty() ? "numpy" : e.origin; })
      .def("__str__", [](const PyExpr& e) { return e.e.str(); })
      .def("__repr__", [](const PyExpr& e) { return "lowbit.fx.Expr(" + e.e.str() + ")"; })
      .def("__bool__",
           [](const PyExpr&) -> bool {
             throw nb::type_error(
                 "a lowbit.fx.Expr has no truth value (it is evaluated by lowbit.fuse); use "
                 "fx.where(cond, a, b) for a choice");
           })
      .def("__add__", [](nb::handle a, nb::handle b) { return binary(fx::add, a, b); })
      .def("__radd__", [](nb::handle a, nb::handle b) { return binary(fx::add, b, a); })
      .def("__sub__", [](nb::handle a, nb::handle b) { return binary(fx::sub, a, b); })
      .def("__rsub__", [](nb::handle a, nb::handle b) { return binary(fx::sub, b, a); })
      .def("__mul__", [](nb::handle a, nb::handle b) { return binary(fx::mul, a, b); })
      .def("__rmul__", [](nb::handle a, nb::handle b) { return binary(fx::mul, b, a); })
      .def("__truediv__", [](nb::handle a, nb::handle b) { return binary(fx::div, a, b); })
      .def("__rtruediv__", [](nb::handle a, nb::handle b) { return binary(fx::div, b, a); })
      .def("__lt__", [](nb::handle a, nb::handle b) { return binary(fx::lt, a, b); })
      .def("__le__", [](nb::handle a, nb::handle b) { return binary(fx::le, a, b); })
      .def("__gt__", [](nb::handle a, nb::handle b) { return binary(fx::gt, a, b); })
      .def("__ge__", [](nb::handle a, nb::handle b) { return binary(fx::ge, a, b); })
      .def("__neg__", [](nb::handle a) { return unary(fx::neg, a); })
      .def("__pos__", [](const PyExpr& a) { return a; })
      .def("__abs__", [](nb::handle a) { return unary(fx::abs, a); })
      .def("__pow__", [](nb::handle a, nb::handle p) {
        if (!PyFloat_Check(p.ptr()) && !PyLong_Check(p.ptr()))
          throw nb::type_error("Expr ** p takes a constant Python number p");
        const PyExpr x = operand(a);
        return combine(fx::pow(x.e, nb::cast<double>(nb::float_(p))), {&x});
      });
  // NumPy arrays and scalars on the left hand the operation to Expr's reflected operators.
  cls.attr("__array_ufunc__") = nb::none();

  f.def(
      "input", [](const Array& a, const std::string& origin) { return input_expr(a, origin); },
      "x"_a, "origin"_a = "numpy");
  f.def(
      "constant", [](nb::handle v) { return operand(v); }, "value"_a);

#define LOWBIT_FX_UNARY(name) \
  f.def(                      \
      #name, [](nb::handle x) { return unary(fx::name, x); }, "x"_a);
  LOWBIT_FX_UNARY(neg)
  LOWBIT_FX_UNARY(abs)
  LOWBIT_FX_UNARY(exp)
  LOWBIT_FX_UNARY(log)
  LOWBIT_FX_UNARY(sqrt)
  LOWBIT_FX_UNARY(rsqrt)
  LOWBIT_FX_UNARY(tanh)
  LOWBIT_FX_UNARY(sigmoid)
  LOWBIT_FX_UNARY(relu)
  LOWBIT_FX_UNARY(silu)
  LOWBIT_FX_UNARY(softplus)
#undef LOWBIT_FX_UNARY
#define LOWBIT_FX_BINARY(name) \
  f.def(                       \
      #name, [](nb::handle a, nb::handle b) { return binary(fx::name, a, b); }, "a"_a, "b"_a);
  LOWBIT_FX_BINARY(add)
  LOWBIT_FX_BINARY(sub)
  LOWBIT_FX_BINARY(mul)
  LOWBIT_FX_BINARY(div)
  LOWBIT_FX_BINARY(minimum)
  LOWBIT_FX_BINARY(maximum)
  LOWBIT_FX_BINARY(lt)
  LOWBIT_FX_BINARY(le)
  LOWBIT_FX_BINARY(gt)
  LOWBIT_FX_BINARY(ge)
  LOWBIT_FX_BINARY(eq)
  LOWBIT_FX_BINARY(ne)
#undef LOWBIT_FX_BINARY
  f.def(
      "gelu",
      [](nb::handle x, std::string_view approximate) {
        if (approximate != "none" && approximate != "tanh")
          bad("gelu: approximate must be \"none\" or \"tanh\", got \"" + std::string(approximate) +
              "\"");
        const PyExpr a = operand(x);
        return combine(fx::gelu(a.e, approximate), {&a});
      },
      "x"_a, "approximate"_a = "none");
  f.def(
      "leaky_relu",
      [](nb::handle x, double slope) {
        const PyExpr a = operand(x);
        return combine(fx::leaky_relu(a.e, slope), {&a});
      },
      "x"_a, "slope"_a = 0.01);
  f.def(
      "pow",
      [](nb::handle x, double exponent) {
        const PyExpr a = operand(x);
        return combine(fx::pow(a.e, exponent), {&a});
      },
      "x"_a, "exponent"_a);
  f.def(
      "scale",
      [](nb::handle x, double factor) {
        const PyExpr a = operand(x);
        return combine(fx::scale(a.e, factor), {&a});
      },
      "x"_a, "factor"_a);
  f.def(
      "cast",
      [](nb::handle x, const std::string& dtype) {
        const PyExpr a = operand(x);
        return combine(fx::cast(a.e, parse_dtype(dtype)), {&a});
      },
      "x"_a, "dtype"_a);
  f.def(
      "clamp",
      [](nb::handle x, nb::handle lo, nb::handle hi) {
        const PyExpr a = operand(x), l = operand(lo), h = operand(hi);
        return combine(fx::clamp(a.e, l.e, h.e), {&a, &l, &h});
      },
      "x"_a, "lo"_a, "hi"_a);
  f.def(
      "where",
      [](nb::handle cond, nb::handle x, nb::handle y) {
        const PyExpr c = operand(cond), a = operand(x), b = operand(y);
        return combine(fx::where(c.e, a.e, b.e), {&c, &a, &b});
      },
      "cond"_a, "a"_a, "b"_a);

  m.def("_fuse_into", &fuse_into, "pairs"_a, "check_finite"_a = true, "fast_math"_a = false);
  m.def("_fuse_new", &fuse_new, "exprs"_a, "dtype"_a = nb::none(), "scheme"_a = nb::none(),
        "check_finite"_a = true, "fast_math"_a = false);
}

}  // namespace lowbit::python
