// Memory: Shape, the owning Buffer, the non-owning TensorView, and copies between devices.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

#include "lowbit/device.hpp"
#include "lowbit/dtype.hpp"

namespace lowbit {

class Stream;

inline constexpr int kMaxDims = 8;

/// Up to kMaxDims extents (or strides). Values are int64_t.
class Dims {
 public:
  constexpr Dims() = default;
  Dims(std::initializer_list<int64_t> values);
  explicit Dims(std::span<const int64_t> values);

  constexpr int size() const { return ndim_; }
  constexpr bool empty() const { return ndim_ == 0; }
  constexpr int64_t operator[](int i) const { return v_[static_cast<size_t>(i)]; }
  constexpr int64_t& operator[](int i) { return v_[static_cast<size_t>(i)]; }
  constexpr const int64_t* begin() const { return v_.data(); }
  constexpr const int64_t* end() const { return v_.data() + ndim_; }
  void push_back(int64_t value);
  /// "[7, 4099]".
  std::string str() const;
  friend bool operator==(const Dims& a, const Dims& b);

 private:
  std::array<int64_t, kMaxDims> v_{};
  int ndim_ = 0;
};

using Shape = Dims;
using Strides = Dims;  ///< in elements, not bytes

/// Product of the extents; throws Error(invalid_argument) on a negative extent or overflow.
int64_t numel(const Shape& shape);
/// Row-major strides of a contiguous tensor of `shape`.
Strides contiguous_strides(const Shape& shape);

/// A non-owning view of typed memory: data, dtype, shape, strides (in elements), device.
/// Packed 4-bit dtypes must be contiguous: element i is nibble i % 2 of byte i / 2.
class TensorView {
 public:
  TensorView() = default;
  /// A contiguous view.
  TensorView(void* data, Dtype dtype, const Shape& shape, Device device = Device::cpu());
  /// A strided view; throws Error(invalid_argument) for negative strides or packed
  /// dtypes that are not contiguous.
  TensorView(void* data, Dtype dtype, const Shape& shape, const Strides& strides,
             Device device = Device::cpu());

  void* data() const { return data_; }
  template <class T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  Dtype dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  Device device() const { return device_; }
  int ndim() const { return shape_.size(); }
  int64_t numel() const { return numel_; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t stride(int i) const { return strides_[i]; }

  /// True if the strides are the row-major ones (extent-1 dims may have any stride).
  bool is_contiguous() const;
  /// Bytes from data() to one past the last element addressed (0 when empty).
  int64_t span_bytes() const;
  /// "bf16[7, 4099] strides [4099, 1] on cuda:0".
  std::string str() const;

  /// Elements [begin, end) with `step` along `dim` (a view of the same memory).
  TensorView slice(int dim, int64_t begin, int64_t end, int64_t step = 1) const;
  /// Swaps two dims (a view of the same memory).
  TensorView transpose(int dim0, int dim1) const;

 private:
  void* data_ = nullptr;
  Dtype dtype_ = Dtype::f32;
  Shape shape_;
  Strides strides_;
  Device device_ = Device::cpu();
  int64_t numel_ = 0;
};

/// Owning memory on one device: 64-byte aligned on the CPU; on CUDA taken from a
/// stream-ordered caching pool, so repeated allocations are cheap. Move-only.
/// Throws Error(out_of_memory) when the allocation fails, Error(invalid_argument)
/// for a CUDA device that does not exist.
class Buffer {
 public:
  Buffer() = default;
  Buffer(int64_t bytes, Device device, const Stream* stream = nullptr);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  int64_t size() const { return size_; }
  Device device() const { return device_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  int64_t size_ = 0;
  Device device_ = Device::cpu();
  void* stream_ = nullptr;  // the CUDA stream the memory is ordered on
};

/// A Buffer with a contiguous view over it.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, Dtype dtype, Device device = Device::cpu(),
                      const Stream* stream = nullptr);
  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }
  void* data() const { return view_.data(); }
  template <class T>
  T* data_as() const {
    return view_.data_as<T>();
  }
  Dtype dtype() const { return view_.dtype(); }
  const Shape& shape() const { return view_.shape(); }
  Device device() const { return view_.device(); }
  int64_t numel() const { return view_.numel(); }
  int64_t nbytes() const { return buffer_.size(); }

 private:
  Buffer buffer_;
  TensorView view_;
};

/// Copies `src` into `dst` (same dtype and shape) between any two devices, any strides.
/// Contiguous views cross directly; a strided view on a GPU is staged through the host
/// (synchronously: slower, for convenience rather than hot paths).
/// With a CUDA stream the copy is ordered on it (the caller synchronizes); without,
/// the copy is finished on return.
void copy(const TensorView& dst, const TensorView& src, const Stream* stream = nullptr);
/// Copies `bytes` raw bytes between devices.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, int64_t bytes,
                const Stream* stream = nullptr);
/// Fills the bytes of a contiguous view with `byte` (tests poison outputs with it).
void fill_bytes(const TensorView& dst, uint8_t byte, const Stream* stream = nullptr);

}  // namespace lowbit
