// DLPack import and export for lowbit.Array (see dlpack.hpp).
#include "dlpack.hpp"

#include <nanobind/nanobind.h>

#include <array>
#include <span>
#include <string>

#include "lowbit/error.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace lowbit::python {
namespace {

const char* const kVersionedName = "dltensor_versioned";
const char* const kUsedVersionedName = "used_dltensor_versioned";
const char* const kLegacyName = "dltensor";
const char* const kUsedLegacyName = "used_dltensor";

std::string dl_dtype_text(dl::DataType t) {
  const char* kind = "code";
  switch (t.code) {
    case dl::kInt:
      kind = "int";
      break;
    case dl::kUInt:
      kind = "uint";
      break;
    case dl::kFloat:
      kind = "float";
      break;
    case dl::kBfloat:
      kind = "bfloat";
      break;
    case 5:
      kind = "complex";
      break;
    case dl::kBool:
      return "bool";
    default:
      return "DLPack type code " + std::to_string(t.code) + " with " + std::to_string(t.bits) +
             " bits";
  }
  std::string s = std::string(kind) + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

/// Owns an imported DLPack tensor; runs the producer's deleter (with the GIL, which NumPy's
/// deleter needs) when the last Array over it goes away.
struct Imported {
  dl::ManagedTensor* legacy = nullptr;
  dl::ManagedTensorVersioned* versioned = nullptr;
  Imported() = default;
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;
  ~Imported() {
    if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than crash
    PyGILState_STATE state = PyGILState_Ensure();
    if (legacy && legacy->deleter) legacy->deleter(legacy);
    if (versioned && versioned->deleter) versioned->deleter(versioned);
    PyGILState_Release(state);
  }
};

/// What an exported capsule keeps alive: the memory's owner, and the shape / strides arrays
/// the DLTensor points at.
struct ExportContext {
  std::shared_ptr<const void> owner;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};
};

template <class Managed>
void export_deleter(Managed* m) {
  delete static_cast<ExportContext*>(m->manager_ctx);
  delete m;
}

template <class Managed>
void capsule_destructor(PyObject* capsule, const char* name) {
  // A consumer renames the capsule to "used_..." and then owns the tensor; otherwise the
  // capsule was never consumed and the tensor is ours to free. Keep any pending error.
  if (!PyCapsule_IsValid(capsule, name)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  if (m && m->deleter) m->deleter(m);
  PyErr_Restore(type, value, traceback);
}

void versioned_capsule_destructor(PyObject* capsule) {
  capsule_destructor<dl::ManagedTensorVersioned>(capsule, kVersionedName);
}
void legacy_capsule_destructor(PyObject* capsule) {
  capsule_destructor<dl::ManagedTensor>(capsule, kLegacyName);
}

Device device_of(const dl::Device& d) {
  switch (d.device_type) {
    case dl::kCPU:
    case dl::kCUDAHost:  // pinned host memory: the CPU reads it directly
      return Device::cpu();
    case dl::kCUDA:
      return Device::cuda(d.device_id);
    default:
      throw_error(ErrorCode::invalid_argument,
                  "lowbit takes tensors on the cpu or on cuda devices; this one is on DLPack "
                  "device type " +
                      std::to_string(d.device_type) + " (id " + std::to_string(d.device_id) + ")");
  }
}

}  // namespace

std::optional<dl::DataType> dl_dtype(Dtype dtype) {
  switch (dtype) {
    case Dtype::f64:
      return dl::DataType{dl::kFloat, 64, 1};
    case Dtype::f32:
      return dl::DataType{dl::kFloat, 32, 1};
    case Dtype::f16:
      return dl::DataType{dl::kFloat, 16, 1};
    case Dtype::bf16:
      return dl::DataType{dl::kBfloat, 16, 1};
    case Dtype::i32:
      return dl::DataType{dl::kInt, 32, 1};
    case Dtype::u32:
      return dl::DataType{dl::kUInt, 32, 1};
    case Dtype::i16:
      return dl::DataType{dl::kInt, 16, 1};
    case Dtype::i8:
      return dl::DataType{dl::kInt, 8, 1};
    case Dtype::u8:
      return dl::DataType{dl::kUInt, 8, 1};
    case Dtype::f8e4m3fn:
      return dl::DataType{dl::kFloat8_e4m3fn, 8, 1};
    case Dtype::f8e5m2:
      return dl::DataType{dl::kFloat8_e5m2, 8, 1};
    case Dtype::e8m0:
      return dl::DataType{dl::kFloat8_e8m0fnu, 8, 1};
    case Dtype::i4:
    case Dtype::u4:
    case Dtype::f4e2m1:
      return std::nullopt;
  }
  return std::nullopt;
}

std::optional<Dtype> from_dl_dtype(dl::DataType t) {
  if (t.lanes != 1) return std::nullopt;
  for (const DtypeTraits& tr : kDtypeTraits) {
    const std::optional<dl::DataType> d = dl_dtype(tr.dtype);
    if (d && d->code == t.code && d->bits == t.bits) return tr.dtype;
  }
  return std::nullopt;
}

dl::Device dl_device(Device device) {
  return device.is_cuda() ? dl::Device{dl::kCUDA, device.index} : dl::Device{dl::kCPU, 0};
}

TensorView bytes_view(const TensorView& view) {
  if (!is_packed(view.dtype())) return view;
  const int64_t bytes = storage_bytes(view.dtype(), view.numel());
  Shape s;
  const int nd = view.ndim();
  if (nd >= 1 && view.dim(nd - 1) % 2 == 0) {
    for (int i = 0; i < nd - 1; ++i) s.push_back(view.dim(i));
    s.push_back(view.dim(nd - 1) / 2);
  } else {
    s.push_back(bytes);
  }
  return TensorView(view.data(), Dtype::u8, s, view.device());
}

std::string numpy_typestr(Dtype dtype) {
  switch (dtype) {
    case Dtype::f64:
      return "<f8";
    case Dtype::f32:
      return "<f4";
    case Dtype::f16:
      return "<f2";
    case Dtype::i32:
      return "<i4";
    case Dtype::u32:
      return "<u4";
    case Dtype::i16:
      return "<i2";
    case Dtype::i8:
      return "|i1";
    case Dtype::u8:
      return "|u1";
    default:
      return "";
  }
}

Array import_array(PyObject* obj, std::optional<Dtype> dtype, std::optional<Shape> shape) {
  nb::handle h(obj);
  if (!nb::hasattr(h, "__dlpack__") || !nb::hasattr(h, "__dlpack_device__"))
    throw nb::type_error(
        ("lowbit expects an array that implements __dlpack__ (NumPy, PyTorch, ...), got " +
         std::string(nb::type_name(h.type()).c_str()))
            .c_str());
  nb::object dev = h.attr("__dlpack_device__")();
  const int dev_type = nb::cast<int>(dev[0]);
  // CUDA: ask the producer to order its pending work before the legacy default stream
  // (DLPack's stream 1), the stream lowbit's one-liners run on.
  nb::object stream = dev_type == dl::kCUDA ? nb::object(nb::int_(1)) : nb::none();
  nb::object capsule;
  try {
    capsule = h.attr("__dlpack__")("stream"_a = stream, "max_version"_a = nb::make_tuple(1, 1));
  } catch (nb::python_error& e) {
    if (!e.matches(PyExc_TypeError)) throw;  // an older producer without max_version
    capsule = stream.is_none() ? h.attr("__dlpack__")() : h.attr("__dlpack__")("stream"_a = stream);
  }

  PyObject* cap = capsule.ptr();
  auto owner = std::make_shared<Imported>();
  dl::Tensor* t = nullptr;
  bool readonly = false;
  if (PyCapsule_IsValid(cap, kVersionedName)) {
    auto* m = static_cast<dl::ManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedName));
    if (m->version.major > 1) {
      PyErr_SetString(PyExc_BufferError,
                      ("lowbit reads DLPack 1.x; the producer gave version " +
                       std::to_string(m->version.major) + "." + std::to_string(m->version.minor))
                          .c_str());
      throw nb::python_error();
    }
    PyCapsule_SetName(cap, kUsedVersionedName);
    owner->versioned = m;
    t = &m->dl_tensor;
    readonly = (m->flags & dl::kFlagReadOnly) != 0;
  } else if (PyCapsule_IsValid(cap, kLegacyName)) {
    auto* m = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(cap, kLegacyName));
    PyCapsule_SetName(cap, kUsedLegacyName);
    owner->legacy = m;
    t = &m->dl_tensor;
  } else {
    throw nb::type_error("__dlpack__ did not return a DLPack capsule");
  }

  const Device device = device_of(t->device);
  if (t->ndim < 0 || t->ndim > kMaxDims)
    throw_error(ErrorCode::invalid_argument, "lowbit takes tensors of at most " +
                                                 std::to_string(kMaxDims) + " dims, got " +
                                                 std::to_string(t->ndim));
  const auto nd = static_cast<size_t>(t->ndim);
  const Shape dl_shape(std::span<const int64_t>(t->shape, nd));
  const Strides dl_strides =
      t->strides ? Strides(std::span<const int64_t>(t->strides, nd)) : contiguous_strides(dl_shape);
  void* data = static_cast<char*>(t->data) + t->byte_offset;

  Array a;
  a.readonly = readonly;
  if (dtype && is_packed(*dtype)) {
    if (!shape)
      throw_error(ErrorCode::invalid_argument, "a packed 4-bit dtype needs its logical shape");
    const std::optional<Dtype> src = from_dl_dtype(t->dtype);
    const TensorView bytes(data, src.value_or(Dtype::u8), dl_shape, dl_strides, device);
    const int64_t need = storage_bytes(*dtype, numel(*shape));
    if ((src != Dtype::u8 && src != Dtype::i8) || !bytes.is_contiguous() || bytes.numel() != need)
      throw_error(ErrorCode::invalid_argument, "packed " + std::string(dtype_name(*dtype)) +
                                                   shape->str() + " needs " + std::to_string(need) +
                                                   " contiguous bytes (uint8), got " +
                                                   dl_dtype_text(t->dtype) + dl_shape.str() +
                                                   (bytes.is_contiguous() ? "" : " (strided)"));
    a.view = TensorView(data, *dtype, *shape, device);
  } else if (dtype) {
    if (t->dtype.lanes != 1 || t->dtype.bits != bit_width(*dtype))
      throw_error(ErrorCode::invalid_argument,
                  "cannot read " + dl_dtype_text(t->dtype) + " elements as " +
                      std::string(dtype_name(*dtype)) + " (the widths differ)");
    a.view = TensorView(data, *dtype, dl_shape, dl_strides, device);
  } else {
    const std::optional<Dtype> d = from_dl_dtype(t->dtype);
    if (!d)
      throw_error(ErrorCode::invalid_argument,
                  "dtype " + dl_dtype_text(t->dtype) +
                      " has no lowbit equivalent (lowbit takes f64, f32, f16, bf16, i32, u32, "
                      "i16, i8, u8, f8e4m3fn, f8e5m2, e8m0)");
    a.view = TensorView(data, *d, dl_shape, dl_strides, device);
  }
  a.owner = std::move(owner);
  return a;
}

PyObject* export_capsule(const Array& array, bool versioned, uint32_t minor_version) {
  const TensorView v = bytes_view(array.view);
  const std::optional<dl::DataType> dt = dl_dtype(v.dtype());
  if (!dt)
    throw_error(ErrorCode::internal,
                "no DLPack type for " + std::string(dtype_name(v.dtype())));  // unreachable
  auto ctx = std::make_unique<ExportContext>();
  ctx->owner = array.owner;
  for (int i = 0; i < v.ndim(); ++i) {
    ctx->shape[static_cast<size_t>(i)] = v.dim(i);
    ctx->strides[static_cast<size_t>(i)] = v.stride(i);
  }
  dl::Tensor t{};
  t.data = v.data();
  t.device = dl_device(v.device());
  t.ndim = v.ndim();
  t.dtype = *dt;
  t.shape = ctx->shape.data();
  t.strides = ctx->strides.data();
  t.byte_offset = 0;

  PyObject* capsule = nullptr;
  if (versioned) {
    auto* m = new dl::ManagedTensorVersioned{};
    m->version = {1, minor_version};
    m->manager_ctx = ctx.release();
    m->deleter = export_deleter<dl::ManagedTensorVersioned>;
    m->flags = array.readonly ? dl::kFlagReadOnly : 0;
    m->dl_tensor = t;
    capsule = PyCapsule_New(m, kVersionedName, versioned_capsule_destructor);
    if (!capsule) m->deleter(m);
  } else {
    auto* m = new dl::ManagedTensor{};
    m->dl_tensor = t;
    m->manager_ctx = ctx.release();
    m->deleter = export_deleter<dl::ManagedTensor>;
    capsule = PyCapsule_New(m, kLegacyName, legacy_capsule_destructor);
    if (!capsule) m->deleter(m);
  }
  if (!capsule) throw nb::python_error();
  return capsule;
}

}  // namespace lowbit::python
