// lowbit._lowbit: the nanobind extension under the `lowbit` Python package.
//
// The Python layer (python/lowbit/__init__.py) turns NumPy / PyTorch / DLPack inputs into
// Arrays (zero-copy, dlpack.cpp) and the results back into the caller's framework; this
// file binds the library: schemes, quantized tensors, the ops (with the GIL released
// around every kernel), plan introspection, and the mapping from lowbit::Error to Python
// exceptions.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "dlpack.hpp"
#include "files.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace lowbit::python {
namespace {

// ---- errors -----------------------------------------------------------------------------------

PyObject* g_corrupt_file_error = nullptr;  // lowbit.CorruptFileError (a ValueError)

PyObject* exception_type(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return PyExc_ValueError;
    case ErrorCode::unsupported:
      return PyExc_NotImplementedError;
    case ErrorCode::out_of_memory:
      return PyExc_MemoryError;
    case ErrorCode::io_error:
      return PyExc_OSError;
    case ErrorCode::corrupt_file:
      return g_corrupt_file_error;
    case ErrorCode::device_error:
    case ErrorCode::internal:
      return PyExc_RuntimeError;
  }
  return PyExc_RuntimeError;
}

/// lowbit::Error -> the Python exception of its code, carrying lowbit's message; the
/// exception's `code` attribute is the code's name ("invalid_argument", ...).
void translate_error(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    PyObject* type = exception_type(e.code());
    PyObject* exc = PyObject_CallFunction(type, "s", e.message().c_str());
    if (!exc) return;  // the constructor's own error is set
    const std::string_view code = to_string(e.code());
    PyObject* code_str =
        PyUnicode_FromStringAndSize(code.data(), static_cast<Py_ssize_t>(code.size()));
    if (code_str) {
      PyObject_SetAttrString(exc, "code", code_str);
      Py_DECREF(code_str);
    }
    PyErr_Clear();
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
  }
}

}  // namespace

// ---- helpers ----------------------------------------------------------------------------------

nb::tuple to_tuple(const Dims& d) {
  nb::list l;
  for (int64_t v : d) l.append(v);
  return nb::tuple(l);
}

Shape to_shape(const std::vector<int64_t>& v) { return Shape(std::span<const int64_t>(v)); }

QuantScheme to_scheme(nb::handle h) {
  if (nb::isinstance<QuantScheme>(h)) return nb::cast<QuantScheme>(h);
  if (nb::isinstance<nb::str>(h)) return QuantScheme::parse(nb::cast<std::string>(h));
  throw nb::type_error(
      ("a scheme is a lowbit.Scheme or its text form (\"int4:block32:asym\"), got " +
       std::string(nb::type_name(h.type()).c_str()))
          .c_str());
}

/// An Array owning a freshly made Tensor.
Array own(Tensor t) {
  auto holder = std::make_shared<Tensor>(std::move(t));
  Array a;
  a.view = holder->view();
  a.owner = std::move(holder);
  return a;
}

PyQuantized own(QuantizedTensor q) {
  auto holder = std::make_shared<QuantizedTensor>(std::move(q));
  PyQuantized p;
  p.view = holder->view();
  p.owner = std::move(holder);
  return p;
}

namespace {

Saturation to_saturation(std::string_view s) {
  if (s == "none") return Saturation::none;
  if (s == "finite") return Saturation::finite;
  throw_error(ErrorCode::invalid_argument,
              "saturation must be \"none\" or \"finite\", got \"" + std::string(s) + "\"");
}

std::string_view format_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::int8:
      return "int8";
    case QuantFormat::uint8:
      return "uint8";
    case QuantFormat::int4:
      return "int4";
    case QuantFormat::uint4:
      return "uint4";
    case QuantFormat::fp8e4m3:
      return "fp8e4m3";
    case QuantFormat::fp8e5m2:
      return "fp8e5m2";
    case QuantFormat::nvfp4:
      return "nvfp4";
    case QuantFormat::mxfp4:
      return "mxfp4";
    case QuantFormat::mxfp8e4m3:
      return "mxfp8e4m3";
    case QuantFormat::mxfp8e5m2:
      return "mxfp8e5m2";
    case QuantFormat::gguf:
      return "gguf";
  }
  return "?";
}

std::string_view granularity_name(Granularity g) {
  switch (g) {
    case Granularity::tensor:
      return "tensor";
    case Granularity::channel:
      return "channel";
    case Granularity::token:
      return "token";
    case Granularity::block:
      return "block";
    case Granularity::block2d:
      return "block2d";
  }
  return "?";
}

// Which parts a scheme has, and their dtypes (as QuantizedTensor::allocate makes them).
bool has_scale(const QuantScheme& s) { return s.format != QuantFormat::gguf; }
bool has_zero(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }
bool has_global_scale(const QuantScheme& s) { return s.format == QuantFormat::nvfp4; }
Dtype codes_dtype(const QuantScheme& s) {
  return s.format == QuantFormat::gguf ? Dtype::u8 : s.code_dtype();
}
Dtype scale_dtype(const QuantScheme& s) {
  if (s.is_integer()) return s.scale_dtype;
  if (s.format == QuantFormat::nvfp4) return Dtype::f8e4m3fn;
  if (s.format == QuantFormat::mxfp4 || s.format == QuantFormat::mxfp8e4m3 ||
      s.format == QuantFormat::mxfp8e5m2)
    return Dtype::e8m0;
  return Dtype::f32;
}

/// A caller's array as one part of a quantized tensor: contiguous, on `device`, with the
/// part's dtype (or integers of the same width holding its bits; u8 bytes for packed 4-bit
/// codes) and its number of elements (any shape). Returns the view with the part's own
/// dtype and shape over the caller's memory.
TensorView adopt_part(const char* which, const Array& a, Dtype want, const Shape& want_shape,
                      Device device) {
  const TensorView& v = a.view;
  const int64_t want_n = numel(want_shape);
  auto fail = [&](const std::string& why) {
    throw_error(ErrorCode::invalid_argument,
                std::string(which) + ": " + why + " (the scheme needs " +
                    std::string(dtype_name(want)) + want_shape.str() + ", got " + v.str() + ")");
  };
  if (!(v.device() == device)) fail("on " + v.device().str() + ", not " + device.str());
  if (!v.is_contiguous()) fail("must be contiguous");
  const bool raw_int = !is_float(v.dtype()) && !is_packed(v.dtype());
  if (v.dtype() == want || is_packed(want) == is_packed(v.dtype())) {
    if (v.dtype() != want && !(raw_int && bit_width(v.dtype()) == bit_width(want)))
      fail("wrong dtype");
    if (v.numel() != want_n) fail("wrong number of elements");
  } else if (is_packed(want)) {
    if (v.dtype() != Dtype::u8 && v.dtype() != Dtype::i8) fail("packed codes come as uint8 bytes");
    if (v.numel() != storage_bytes(want, want_n)) fail("wrong number of bytes");
  } else {
    fail("wrong dtype");
  }
  return TensorView(v.data(), want, want_shape, device);
}

// ---- QuantizedTensor --------------------------------------------------------------------------

/// Copies the caller's given parts into `q` (static quantization).
void copy_given_parts(QuantizedTensor& q, const std::optional<Array>& scale,
                      const std::optional<Array>& zero, const std::optional<Array>& global_scale) {
  const QuantScheme& s = q.scheme;
  // A given part is copied in; float scales of another float dtype are converted (one
  // round-to-nearest-even), e.g. f32 scales for a scale=f16 scheme.
  auto give = [&](const char* which, const std::optional<Array>& a, const Tensor& part) {
    const TensorView& v = a->view;
    if (is_float(part.dtype()) && is_float(v.dtype()) && v.dtype() != part.dtype() &&
        !is_packed(v.dtype()) && v.numel() == part.numel() && v.is_contiguous()) {
      const TensorView src(v.data(), v.dtype(), part.shape(), v.device());
      if (!(v.device() == part.device())) {
        Tensor staged = Tensor::empty(part.shape(), v.dtype(), part.device());
        copy(staged.view(), src);
        convert(part.view(), staged.view());
      } else {
        convert(part.view(), src);
      }
      return;
    }
    const TensorView given = adopt_part(which, *a, part.dtype(), part.shape(), v.device());
    copy(part.view(), given);
  };
  if (s.format == QuantFormat::nvfp4) {
    if (!global_scale || scale || zero)
      throw_error(ErrorCode::invalid_argument,
                  "quantize: nvfp4 takes a given global_scale only (its block scales are "
                  "computed from the data and the global scale)");
    give("global_scale", global_scale, q.global_scale);
    return;
  }
  if (global_scale)
    throw_error(ErrorCode::invalid_argument,
                "quantize: global_scale belongs to nvfp4, not " + s.str());
  if (!scale)
    throw_error(ErrorCode::invalid_argument, "quantize: static quantization with " + s.str() +
                                                 " needs scale" + (has_zero(s) ? " and zero" : ""));
  if (!has_scale(s) || s.format == QuantFormat::mxfp4 || s.format == QuantFormat::mxfp8e4m3 ||
      s.format == QuantFormat::mxfp8e5m2)
    throw_error(ErrorCode::invalid_argument,
                "quantize: scheme " + s.str() +
                    " computes its scales from the data; given scales apply to int, fp8 and "
                    "nvfp4 (global scale) schemes");
  if (has_zero(s) != zero.has_value())
    throw_error(ErrorCode::invalid_argument,
                "quantize: " + s.str() +
                    (has_zero(s) ? " is affine and needs a zero point (zero=)"
                                 : " is symmetric and takes no zero point"));
  give("scale", scale, q.scale);
  if (zero) give("zero", zero, q.zero);
}

// ---- plan introspection -----------------------------------------------------------------------

nb::dict info_dict() {
  nb::dict d;
  d["version"] = LOWBIT_VERSION;
#if LOWBIT_HAS_CUDA
  d["cuda_built"] = true;
  d["cuda"] = cuda_version_string();
#else
  d["cuda_built"] = false;
  d["cuda"] = "not built (configure with LOWBIT_CUDA=ON)";
#endif
  nb::list devices;
  const int n = cuda_device_count();
  for (int i = 0; i < n; ++i) {
    const CudaDeviceProperties p = cuda_device_properties(i);
    nb::dict dev;
    dev["index"] = i;
    dev["name"] = p.name;
    dev["sm"] = std::to_string(p.sm_major) + std::to_string(p.sm_minor);
    dev["multiprocessors"] = p.multiprocessors;
    dev["total_memory"] = p.total_memory;
    dev["description"] = p.str();
    devices.append(dev);
  }
  d["cuda_devices"] = devices;
  const CpuFeatures& f = cpu_features();
  nb::dict cpu;
  cpu["avx2"] = f.avx2;
  cpu["avx512"] = f.avx512;
  cpu["avx512_vnni"] = f.avx512_vnni;
  cpu["avx512_bf16"] = f.avx512_bf16;
  cpu["threads"] = f.threads;
  cpu["best_target"] = f.best_target;
  cpu["description"] = f.str();
  d["cpu"] = cpu;
  return d;
}

std::string array_repr(const Array& a) {
  const TensorView v = bytes_view(a.view);
  std::string s = "lowbit.Array(" + std::string(dtype_name(v.dtype())) + v.shape().str();
  if (!v.is_contiguous()) s += " strides " + v.strides().str();
  return s + " on " + v.device().str() + ")";
}

/// Same memory, same shape, as unsigned / signed integers of the element width (NumPy and
/// PyTorch take these everywhere; their .view() then restores bf16 / fp8 / e8m0).
Array raw_array(const Array& a) {
  const TensorView v = bytes_view(a.view);
  Dtype d = Dtype::u8;
  switch (bit_width(v.dtype())) {
    case 8:
      d = Dtype::u8;
      break;
    case 16:
      d = Dtype::i16;
      break;
    case 32:
      d = Dtype::u32;
      break;
    default:
      throw_error(ErrorCode::unsupported,
                  "raw(): no integer dtype of " + std::to_string(bit_width(v.dtype())) + " bits");
  }
  Array r = a;
  r.view = TensorView(v.data(), d, v.shape(), v.strides(), v.device());
  return r;
}

nb::object dlpack_export(const Array& a, nb::handle stream, nb::handle max_version,
                         nb::handle dl_device_req, nb::handle copy_req) {
  const TensorView v = bytes_view(a.view);
  const dl::Device dev = dl_device(v.device());
  if (!dl_device_req.is_none()) {
    const int type = nb::cast<int>(dl_device_req[0]);
    const int id = nb::cast<int>(dl_device_req[1]);
    if (type != dev.device_type || id != dev.device_id) {
      PyErr_SetString(PyExc_BufferError, ("lowbit.Array lives on " + v.device().str() +
                                          " and does not copy across devices on export")
                                             .c_str());
      throw nb::python_error();
    }
  }
  (void)stream;  // lowbit's results are complete when returned: nothing to order
  bool versioned = false;
  uint32_t minor = 0;
  if (!max_version.is_none()) {
    const int major = nb::cast<int>(max_version[0]);
    versioned = major >= 1;
    minor = major > 1 ? 1u : static_cast<uint32_t>(std::min(nb::cast<int>(max_version[1]), 1));
  }
  Array out = a;
  if (!copy_req.is_none() && nb::cast<bool>(copy_req)) {
    Tensor t = Tensor::empty(v.shape(), v.dtype(), v.device());
    {
      nb::gil_scoped_release release;
      lowbit::copy(t.view(), v);
    }
    out = own(std::move(t));
  }
  return nb::steal(export_capsule(out, versioned, minor));
}

nb::dict interface_dict(const Array& a, bool cuda) {
  const TensorView v = bytes_view(a.view);
  const std::string typestr = numpy_typestr(v.dtype());
  if (typestr.empty() || v.device().is_cuda() != cuda)
    throw nb::attribute_error(cuda ? "__cuda_array_interface__: not a CUDA array of a "
                                     "NumPy-native dtype (use __dlpack__)"
                                   : "__array_interface__: not a CPU array of a NumPy-native "
                                     "dtype (use __array__ or __dlpack__)");
  nb::dict d;
  d["shape"] = to_tuple(v.shape());
  d["typestr"] = typestr;
  d["data"] = nb::make_tuple(reinterpret_cast<uintptr_t>(v.data()), a.readonly);
  if (v.is_contiguous()) {
    d["strides"] = nb::none();
  } else {
    nb::list s;
    const int64_t item = bit_width(v.dtype()) / 8;
    for (int64_t st : v.strides()) s.append(st * item);
    d["strides"] = nb::tuple(s);
  }
  d["version"] = 3;
  if (cuda) d["stream"] = nb::none();
  return d;
}

}  // namespace
}  // namespace lowbit::python

NB_MODULE(_lowbit, m) {
  using namespace lowbit;
  using namespace lowbit::python;
  m.doc() = "lowbit's C++ core (use the `lowbit` package, not this module)";
  m.attr("__version__") = LOWBIT_VERSION;

  g_corrupt_file_error =
      PyErr_NewExceptionWithDoc("lowbit.CorruptFileError",
                                "A file's contents break its format's rules (lowbit's "
                                "corrupt_file error).",
                                PyExc_ValueError, nullptr);
  m.attr("CorruptFileError") = nb::handle(g_corrupt_file_error);
  nb::register_exception_translator(translate_error);
  bind_files(m);

  // ---- Array ----------------------------------------------------------------------------------
  nb::class_<Array>(m, "Array",
                    "Memory lowbit made or read, with the array protocols: __dlpack__, "
                    "__array_interface__ (CPU), __cuda_array_interface__ (CUDA), __array__.")
      .def_prop_ro("shape", [](const Array& a) { return to_tuple(bytes_view(a.view).shape()); })
      .def_prop_ro("strides", [](const Array& a) { return to_tuple(bytes_view(a.view).strides()); })
      .def_prop_ro(
          "dtype",
          [](const Array& a) { return std::string(dtype_name(bytes_view(a.view).dtype())); })
      .def_prop_ro("device", [](const Array& a) { return a.view.device().str(); })
      .def_prop_ro("data_ptr",
                   [](const Array& a) { return reinterpret_cast<uintptr_t>(a.view.data()); })
      .def_prop_ro("nbytes",
                   [](const Array& a) {
                     const TensorView v = bytes_view(a.view);
                     return storage_bytes(v.dtype(), v.numel());
                   })
      .def_prop_ro("ndim", [](const Array& a) { return bytes_view(a.view).ndim(); })
      .def_prop_ro("size", [](const Array& a) { return bytes_view(a.view).numel(); })
      .def_prop_ro("itemsize",
                   [](const Array& a) { return bit_width(bytes_view(a.view).dtype()) / 8; })
      .def_prop_ro("is_contiguous", [](const Array& a) { return a.view.is_contiguous(); })
      .def_prop_ro("readonly", [](const Array& a) { return a.readonly; })
      .def("__len__",
           [](const Array& a) {
             const TensorView v = bytes_view(a.view);
             if (v.ndim() == 0) throw nb::type_error("len() of a 0-d array");
             return v.dim(0);
           })
      .def("__repr__", &array_repr)
      .def("raw", &raw_array,
           "The same memory as unsigned (8, 32 bits) or signed (16 bits) integers.")
      .def("__dlpack__", &dlpack_export, nb::kw_only(), "stream"_a = nb::none(),
           "max_version"_a = nb::none(), "dl_device"_a = nb::none(), "copy"_a = nb::none())
      .def("__dlpack_device__",
           [](const Array& a) {
             const dl::Device d = dl_device(a.view.device());
             return std::make_pair(d.device_type, d.device_id);
           })
      .def_prop_ro("__array_interface__", [](const Array& a) { return interface_dict(a, false); })
      .def_prop_ro("__cuda_array_interface__",
                   [](const Array& a) { return interface_dict(a, true); });

  m.def(
      "from_dlpack",
      [](nb::handle obj, std::optional<std::string> dtype,
         std::optional<std::vector<int64_t>> shape) {
        if (nb::isinstance<Array>(obj) && !dtype) return nb::cast<Array>(obj);
        std::optional<Dtype> d;
        if (dtype) d = parse_dtype(*dtype);
        std::optional<Shape> s;
        if (shape) s = to_shape(*shape);
        return import_array(obj.ptr(), d, s);
      },
      "obj"_a, "dtype"_a = nb::none(), "shape"_a = nb::none(),
      "Wraps an object with __dlpack__ as an Array without copying. `dtype` reads the elements "
      "as another lowbit dtype of the same width; a packed 4-bit dtype reads uint8 bytes and "
      "needs the logical `shape`.");

  // ---- Scheme ---------------------------------------------------------------------------------
  nb::class_<QuantScheme>(m, "Scheme",
                          "A quantization scheme, parsed from its text form "
                          "(\"int4:block32:asym\", \"fp8e4m3:token\", \"nvfp4\", \"q4_K\", ...).")
      .def(
          "__init__",
          [](QuantScheme* self, nb::handle text) { new (self) QuantScheme(to_scheme(text)); },
          "text"_a)
      .def("__str__", &QuantScheme::str)
      .def("__repr__", [](const QuantScheme& s) { return "lowbit.Scheme('" + s.str() + "')"; })
      .def("__eq__",
           [](const QuantScheme& s, nb::handle other) -> nb::object {
             if (nb::isinstance<QuantScheme>(other))
               return nb::bool_(s == nb::cast<QuantScheme>(other));
             if (nb::isinstance<nb::str>(other)) {
               try {
                 return nb::bool_(s == QuantScheme::parse(nb::cast<std::string>(other)));
               } catch (const Error&) {
                 return nb::bool_(false);  // not a scheme's text: not equal
               }
             }
             return nb::borrow(Py_NotImplemented);
           })
      .def("__hash__", [](const QuantScheme& s) { return nb::hash(nb::str(s.str().c_str())); })
      .def("__getstate__", &QuantScheme::str)
      .def("__setstate__",
           [](QuantScheme& s, const std::string& text) {
             new (&s) QuantScheme(QuantScheme::parse(text));
           })
      .def_prop_ro("format",
                   [](const QuantScheme& s) { return std::string(format_name(s.format)); })
      .def_prop_ro(
          "granularity",
          [](const QuantScheme& s) { return std::string(granularity_name(s.granularity)); })
      .def_prop_ro(
          "block",
          [](const QuantScheme& s) -> std::optional<int> {
            if (s.granularity == Granularity::block || s.granularity == Granularity::block2d)
              return s.block;
            return std::nullopt;
          })
      .def_prop_ro("axis",
                   [](const QuantScheme& s) -> std::optional<int> {
                     if (s.granularity == Granularity::channel) return s.axis;
                     return std::nullopt;
                   })
      .def_prop_ro("symmetric", [](const QuantScheme& s) { return !has_zero(s); })
      .def_prop_ro("is_integer", &QuantScheme::is_integer)
      .def_prop_ro("code_dtype",
                   [](const QuantScheme& s) { return std::string(dtype_name(codes_dtype(s))); })
      .def_prop_ro("scale_dtype",
                   [](const QuantScheme& s) -> std::optional<std::string> {
                     if (!has_scale(s)) return std::nullopt;
                     return std::string(dtype_name(scale_dtype(s)));
                   })
      .def_prop_ro("qmin",
                   [](const QuantScheme& s) -> std::optional<int> {
                     if (!s.is_integer()) return std::nullopt;
                     return s.qmin();
                   })
      .def_prop_ro("qmax",
                   [](const QuantScheme& s) -> std::optional<int> {
                     if (!s.is_integer()) return std::nullopt;
                     return s.qmax();
                   })
      .def_prop_ro("gguf_type",
                   [](const QuantScheme& s) -> std::optional<int> {
                     if (s.format != QuantFormat::gguf) return std::nullopt;
                     return static_cast<int>(s.gguf_type);
                   })
      .def(
          "scale_shape",
          [](const QuantScheme& s, const std::vector<int64_t>& shape) -> nb::object {
            if (!has_scale(s)) return nb::none();
            return to_tuple(scale_shape(s, to_shape(shape)));
          },
          "shape"_a, "Shape of the scale (and zero point) for a tensor of `shape`; None for GGUF.")
      .def(
          "code_shape",
          [](const QuantScheme& s, const std::vector<int64_t>& shape) {
            return to_tuple(code_shape(s, to_shape(shape)));
          },
          "shape"_a, "Logical shape of the codes (GGUF: [rows, row bytes]).");

  // ---- QuantizedTensor ------------------------------------------------------------------------
  nb::class_<PyQuantized>(m, "QuantizedTensor",
                          "Codes plus scales (plus zero points, plus a global scale) plus "
                          "scheme plus logical shape. Parts are Arrays over lowbit's memory.")
      .def_prop_ro("scheme", [](const PyQuantized& q) { return q.view.scheme; })
      .def_prop_ro("shape", [](const PyQuantized& q) { return to_tuple(q.view.shape); })
      .def_prop_ro("device", [](const PyQuantized& q) { return q.view.device().str(); })
      .def_prop_ro(
          "code_dtype",
          [](const PyQuantized& q) { return std::string(dtype_name(q.view.codes.dtype())); })
      .def_prop_ro("data", [](const PyQuantized& q) { return *q.part(q.view.codes, true); })
      .def_prop_ro(
          "scale",
          [](const PyQuantized& q) { return q.part(q.view.scale, has_scale(q.view.scheme)); })
      .def_prop_ro(
          "zero", [](const PyQuantized& q) { return q.part(q.view.zero, has_zero(q.view.scheme)); })
      .def_prop_ro("global_scale",
                   [](const PyQuantized& q) {
                     return q.part(q.view.global_scale, has_global_scale(q.view.scheme));
                   })
      .def_prop_ro("nbytes", &PyQuantized::nbytes)
      .def_rw("_origin", &PyQuantized::origin)
      .def("__repr__",
           [](const PyQuantized& q) {
             return "lowbit.QuantizedTensor(" + q.view.scheme.str() + ", shape " +
                    q.view.shape.str() + ", " + q.view.device().str() + ", " +
                    std::to_string(q.nbytes()) + " bytes)";
           })
      .def_static(
          "_from_parts",
          [](nb::handle scheme_h, const std::vector<int64_t>& shape_v, const Array& data,
             std::optional<Array> scale, std::optional<Array> zero,
             std::optional<Array> global_scale) {
            const QuantScheme s = to_scheme(scheme_h);
            const Shape shape = to_shape(shape_v);
            const Device dev = data.view.device();
            auto parts = std::make_shared<std::vector<Array>>();
            PyQuantized q;
            q.view.scheme = s;
            q.view.shape = shape;
            q.view.codes = adopt_part("data", data, codes_dtype(s), code_shape(s, shape), dev);
            parts->push_back(data);
            auto take = [&](const char* which, bool needed, const std::optional<Array>& a, Dtype dt,
                            const Shape& sh, TensorView& into) {
              if (needed && !a)
                throw_error(ErrorCode::invalid_argument,
                            std::string(which) + ": scheme " + s.str() + " has this part; give it");
              if (!needed && a)
                throw_error(ErrorCode::invalid_argument,
                            std::string(which) + ": scheme " + s.str() + " has no such part");
              if (!a) return;
              into = adopt_part(which, *a, dt, sh, dev);
              parts->push_back(*a);
            };
            const Shape ss = has_scale(s) ? scale_shape(s, shape) : Shape{};
            take("scale", has_scale(s), scale, scale_dtype(s), ss, q.view.scale);
            take("zero", has_zero(s), zero, Dtype::i32, ss, q.view.zero);
            take("global_scale", has_global_scale(s), global_scale, Dtype::f32, Shape{1},
                 q.view.global_scale);
            q.owner = std::move(parts);
            return q;
          },
          "scheme"_a, "shape"_a, "data"_a, "scale"_a = nb::none(), "zero"_a = nb::none(),
          "global_scale"_a = nb::none());

  // ---- ops ------------------------------------------------------------------------------------
  m.def(
      "quantize",
      [](const Array& x, nb::handle scheme_h, std::optional<Array> scale, std::optional<Array> zero,
         std::optional<Array> global_scale) {
        const QuantScheme s = to_scheme(scheme_h);
        const bool given = scale || zero || global_scale;
        QuantizedTensor q;
        if (!given) {
          nb::gil_scoped_release release;
          q = lowbit::quantize(x.view, s);
        } else {
          q = QuantizedTensor::allocate(s, x.view.shape(), x.view.device());
          copy_given_parts(q, scale, zero, global_scale);
          nb::gil_scoped_release release;
          quantize_into(q.view(), x.view, true);
        }
        return own(std::move(q));
      },
      "x"_a, "scheme"_a, "scale"_a = nb::none(), "zero"_a = nb::none(),
      "global_scale"_a = nb::none());

  m.def(
      "dequantize",
      [](const PyQuantized& q, const std::string& dtype) {
        const Dtype d = parse_dtype(dtype);
        Tensor t;
        {
          nb::gil_scoped_release release;
          t = lowbit::dequantize(q.view, d);
        }
        return own(std::move(t));
      },
      "q"_a, "dtype"_a = "f32");

  m.def(
      "fake_quantize",
      [](const Array& x, nb::handle scheme_h) {
        const QuantScheme s = to_scheme(scheme_h);
        Tensor t;
        {
          nb::gil_scoped_release release;
          t = lowbit::fake_quantize(x.view, s);
        }
        return own(std::move(t));
      },
      "x"_a, "scheme"_a);

  m.def(
      "convert",
      [](const Array& x, const std::string& dtype, std::string_view saturation) {
        const Dtype d = parse_dtype(dtype);
        const Saturation sat = to_saturation(saturation);
        Tensor t = Tensor::empty(x.view.shape(), d, x.view.device());
        {
          nb::gil_scoped_release release;
          lowbit::convert(t.view(), x.view, sat);
        }
        return own(std::move(t));
      },
      "x"_a, "dtype"_a, "saturation"_a = "none");

  // ---- plans ----------------------------------------------------------------------------------
  nb::class_<PlanInfo>(m, "PlanInfo", "The kernel lowbit selects for one call, and why.")
      .def_ro("op", &PlanInfo::op)
      .def_ro("description", &PlanInfo::description)
      .def_prop_ro("sku", [](const PlanInfo& p) { return p.sku.str(); })
      .def_prop_ro("kernel", [](const PlanInfo& p) { return p.sku.kernel; })
      .def_prop_ro("backend",
                   [](const PlanInfo& p) { return std::string(to_string(p.sku.backend)); })
      .def_prop_ro("arch", [](const PlanInfo& p) { return p.sku.arch; })
      .def_prop_ro("dtypes", [](const PlanInfo& p) { return p.sku.dtypes; })
      .def_prop_ro("scheme", [](const PlanInfo& p) { return p.sku.scheme; })
      .def_prop_ro("precision", [](const PlanInfo& p) { return p.precision.str(); })
      .def_prop_ro("math", [](const PlanInfo& p) { return p.precision.math; })
      .def_prop_ro("accumulator",
                   [](const PlanInfo& p) -> std::optional<std::string> {
                     if (!p.precision.accumulator) return std::nullopt;
                     return std::string(dtype_name(*p.precision.accumulator));
                   })
      .def_prop_ro("deterministic", [](const PlanInfo& p) { return p.precision.deterministic; })
      .def_prop_ro("bit_stable", [](const PlanInfo& p) { return p.precision.bit_stable; })
      .def_ro("declined", &PlanInfo::declined)
      .def_ro("workspace_size", &PlanInfo::workspace_size)
      .def_ro("weight_layout", &PlanInfo::weight_layout)
      .def_ro("prepared_bytes", &PlanInfo::prepared_bytes)
      .def("__repr__", [](const PlanInfo& p) {
        return "lowbit.PlanInfo(" + p.op + ": " + p.description + " -> " + p.sku.str() + ")";
      });

  m.def(
      "plan_quantize",
      [](const Array& x, nb::handle scheme_h, bool given_scales) {
        QuantizeDesc d;
        d.shape = x.view.shape();
        d.src = x.view.dtype();
        d.src_strides = x.view.strides();
        d.scheme = to_scheme(scheme_h);
        d.device = x.view.device();
        d.given_scales = given_scales;
        return plan_info_of(QuantizePlan::select(d), "quantize", QuantizeOp::describe(d));
      },
      "x"_a, "scheme"_a, "given_scales"_a = false);
  m.def(
      "plan_dequantize",
      [](const PyQuantized& q, const std::string& dtype) {
        const DequantizeDesc d{q.view.scheme, q.view.shape, parse_dtype(dtype), q.view.device()};
        return plan_info_of(DequantizePlan::select(d), "dequantize", DequantizeOp::describe(d));
      },
      "q"_a, "dtype"_a = "f32");
  m.def(
      "plan_convert",
      [](const Array& x, const std::string& dtype, std::string_view saturation) {
        ConvertDesc d;
        d.shape = x.view.shape();
        d.src = x.view.dtype();
        d.dst = parse_dtype(dtype);
        d.device = x.view.device();
        d.src_strides = x.view.strides();
        d.dst_strides = contiguous_strides(d.shape);
        d.saturation = to_saturation(saturation);
        return plan_info_of(ConvertPlan::select(d), "convert", ConvertOp::describe(d));
      },
      "x"_a, "dtype"_a, "saturation"_a = "none");

  bind_matmul(m);
  bind_fuse(m);

  // ---- machine --------------------------------------------------------------------------------
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices usable now (0 without CUDA).");
  m.def("info", &info_dict, "lowbit's version and the backends this build and machine offer.");
  m.def(
      "dtype_names",
      [] {
        std::vector<std::string> v;
        for (const DtypeTraits& t : kDtypeTraits) v.emplace_back(t.name);
        return v;
      },
      "Every lowbit dtype's canonical name.");
  m.def(
      "_raise_error",
      [](std::string_view code, const std::string& message) {
        for (ErrorCode c : {ErrorCode::invalid_argument, ErrorCode::unsupported,
                            ErrorCode::out_of_memory, ErrorCode::device_error, ErrorCode::io_error,
                            ErrorCode::corrupt_file, ErrorCode::internal})
          if (to_string(c) == code) throw_error(c, message);
        throw_error(ErrorCode::invalid_argument, "no error code '" + std::string(code) + "'");
      },
      "code"_a, "message"_a, "Raises lowbit::Error(code, message) (tests the error mapping).");
  m.def(
      "canonical_dtype",
      [](std::string_view text) -> std::optional<std::string> {
        const std::optional<Dtype> d = try_parse_dtype(text);
        if (!d) return std::nullopt;
        return std::string(dtype_name(*d));
      },
      "text"_a, "The canonical name of a lowbit dtype name or alias; None if unknown.");
}
