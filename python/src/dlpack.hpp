// DLPack (v1.1 ABI) and lowbit's Array: the one object that carries tensors across the
// Python boundary in both directions.
//
// In: any object with __dlpack__ / __dlpack_device__ (NumPy >= 1.22, PyTorch, JAX, CuPy...)
// becomes an Array whose view points at the producer's memory (no copy); the producer's
// deleter runs when the last reference to that memory goes away.
// Out: an Array exports __dlpack__ (versioned and legacy capsules), __dlpack_device__,
// __array_interface__ (CPU, NumPy-native dtypes) and __cuda_array_interface__ (CUDA), all
// pointing at lowbit's own buffers, which the exported capsule keeps alive.
#pragma once

#include <Python.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "lowbit/dtype.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit::python {

// ---- the DLPack ABI (dlpack.h v1.1, restated) ------------------------------------------------
namespace dl {

enum DeviceType : int32_t {
  kCPU = 1,
  kCUDA = 2,
  kCUDAHost = 3,
  kCUDAManaged = 13,
};

enum TypeCode : uint8_t {
  kInt = 0,
  kUInt = 1,
  kFloat = 2,
  kBfloat = 4,
  kBool = 6,
  kFloat8_e4m3fn = 10,
  kFloat8_e5m2 = 12,
  kFloat8_e8m0fnu = 14,
  kFloat4_e2m1fn = 17,
};

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

struct PackVersion {
  uint32_t major;
  uint32_t minor;
};

inline constexpr uint64_t kFlagReadOnly = 1ull << 0;

struct ManagedTensorVersioned {
  PackVersion version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned* self);
  uint64_t flags;
  Tensor dl_tensor;
};

}  // namespace dl

/// A view of typed memory plus whatever keeps that memory alive. Exported to Python as
/// lowbit.Array. Arrays handed to users are never of a packed 4-bit dtype: packed parts are
/// presented as their bytes (u8), see bytes_view().
struct Array {
  std::shared_ptr<const void> owner;
  TensorView view;
  bool readonly = false;  ///< the producer marked its memory read-only (inputs only)
};

/// The DLPack type of a lowbit dtype; nullopt for packed 4-bit dtypes.
std::optional<dl::DataType> dl_dtype(Dtype dtype);
/// The lowbit dtype of a DLPack type; nullopt if lowbit has none.
std::optional<Dtype> from_dl_dtype(dl::DataType dtype);

/// A packed view's bytes as u8: shape [..., K / 2] when the last extent is even, else the
/// flat [(n + 1) / 2]; other views are returned unchanged.
TensorView bytes_view(const TensorView& view);

/// Imports `obj` through __dlpack__ (zero-copy). `dtype` reinterprets the elements: a
/// same-width dtype keeps shape and strides (bf16 over uint16 bits, fp8 over uint8); a
/// packed 4-bit dtype needs `shape` (the logical shape) and contiguous u8 bytes holding
/// storage_bytes(numel(shape)). Needs the GIL. Throws lowbit::Error(invalid_argument)
/// for dtypes, devices or layouts lowbit cannot take, and Python's own errors from the
/// producer.
Array import_array(PyObject* obj, std::optional<Dtype> dtype = std::nullopt,
                   std::optional<Shape> shape = std::nullopt);

/// A new DLPack capsule over `array` ("dltensor_versioned" when `versioned`, else the
/// legacy "dltensor"); the capsule shares ownership of the memory. New reference.
PyObject* export_capsule(const Array& array, bool versioned, uint32_t minor_version);

/// DLPack's (device_type, device_id) of a lowbit device.
dl::Device dl_device(Device device);

/// NumPy's __array_interface__ typestr of a dtype ("<f4"), or "" if NumPy has none.
std::string numpy_typestr(Dtype dtype);

}  // namespace lowbit::python
