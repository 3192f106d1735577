#include "lowbit/tensor.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/cuda_runtime.hpp"
#include "lowbit/error.hpp"

namespace lowbit {

// ---- Dims ---------------------------------------------------------------------------

Dims::Dims(std::initializer_list<int64_t> values)
    : Dims(std::span<const int64_t>(values.begin(), values.size())) {}

Dims::Dims(std::span<const int64_t> values) {
  if (values.size() > static_cast<size_t>(kMaxDims))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("{} dims given, at most {} supported", values.size(), kMaxDims));
  for (int64_t v : values) v_[static_cast<size_t>(ndim_++)] = v;
}

void Dims::push_back(int64_t value) {
  if (ndim_ == kMaxDims)
    throw_error(ErrorCode::invalid_argument, fmt::format("more than {} dims", kMaxDims));
  v_[static_cast<size_t>(ndim_++)] = value;
}

std::string Dims::str() const { return fmt::format("[{}]", fmt::join(begin(), end(), ", ")); }

bool operator==(const Dims& a, const Dims& b) {
  if (a.ndim_ != b.ndim_) return false;
  for (int i = 0; i < a.ndim_; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("shape {} has a negative extent", shape.str()));
    if (d != 0 && n > INT64_MAX / d)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("shape {}: element count overflows int64", shape.str()));
    n *= d;
  }
  return n;
}

Strides contiguous_strides(const Shape& shape) {
  Strides s;
  for (int i = 0; i < shape.size(); ++i) s.push_back(0);
  int64_t step = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    s[i] = step;
    step *= shape[i] > 0 ? shape[i] : 1;
  }
  return s;
}

// ---- TensorView ---------------------------------------------------------------------

TensorView::TensorView(void* data, Dtype dtype, const Shape& shape, Device device)
    : TensorView(data, dtype, shape, contiguous_strides(shape), device) {}

TensorView::TensorView(void* data, Dtype dtype, const Shape& shape, const Strides& strides,
                       Device device)
    : data_(data), dtype_(dtype), shape_(shape), strides_(strides), device_(device) {
  if (strides.size() != shape.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("strides {} do not match shape {}", strides.str(), shape.str()));
  for (int64_t s : strides)
    if (s < 0)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("strides {}: negative strides are not supported", strides.str()));
  numel_ = lowbit::numel(shape);
  if (numel_ > 0 && data == nullptr)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("null data for a non-empty {} tensor of shape {}", dtype_name(dtype),
                            shape.str()));
  if (is_packed(dtype) && !is_contiguous())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("packed dtype {} needs a contiguous view, got strides {} for shape {}",
                            dtype_name(dtype), strides.str(), shape.str()));
}

bool TensorView::is_contiguous() const {
  if (numel_ == 0) return true;  // nothing is addressed
  int64_t expected = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

int64_t TensorView::span_bytes() const {
  if (numel_ == 0) return 0;
  if (is_packed(dtype_)) return storage_bytes(dtype_, numel_);
  int64_t last = 0;
  for (int i = 0; i < ndim(); ++i) last += (shape_[i] - 1) * strides_[i];
  return (last + 1) * (bit_width(dtype_) / 8);
}

std::string TensorView::str() const {
  std::string s = fmt::format("{}{}", dtype_name(dtype_), shape_.str());
  if (!is_contiguous()) s += fmt::format(" strides {}", strides_.str());
  return s + " on " + device_.str();
}

TensorView TensorView::slice(int dim, int64_t begin, int64_t end, int64_t step) const {
  if (dim < 0 || dim >= ndim())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("slice: dim {} out of range for {}", dim, str()));
  if (step < 1 || begin < 0 || end < begin || end > shape_[dim])
    throw_error(ErrorCode::invalid_argument,
                fmt::format("slice: [{}:{}:{}] out of range for dim {} of {}", begin, end, step,
                            dim, str()));
  if (is_packed(dtype_))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("slice of packed dtype {}", dtype_name(dtype_)));
  Shape shape = shape_;
  shape[dim] = (end - begin + step - 1) / step;
  Strides strides = strides_;
  strides[dim] *= step;
  char* base = static_cast<char*>(data_) + begin * strides_[dim] * (bit_width(dtype_) / 8);
  return TensorView(base, dtype_, shape, strides, device_);
}

TensorView TensorView::transpose(int dim0, int dim1) const {
  if (dim0 < 0 || dim0 >= ndim() || dim1 < 0 || dim1 >= ndim())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("transpose: dims {}, {} out of range for {}", dim0, dim1, str()));
  Shape shape = shape_;
  Strides strides = strides_;
  std::swap(shape[dim0], shape[dim1]);
  std::swap(strides[dim0], strides[dim1]);
  return TensorView(data_, dtype_, shape, strides, device_);
}

// ---- Buffer / Tensor ------------------------------------------------------------------

Buffer::Buffer(int64_t bytes, Device device, const Stream* stream) : size_(bytes), device_(device) {
  if (bytes < 0)
    throw_error(ErrorCode::invalid_argument, fmt::format("Buffer: negative size {}", bytes));
  check_device(device);
  if (device.is_cpu()) {
    // aligned_alloc wants a multiple of the alignment; never 0 so data() is non-null.
    const size_t rounded = static_cast<size_t>((bytes + 63) / 64 * 64) + (bytes == 0 ? 64 : 0);
    data_ = std::aligned_alloc(64, rounded);
    if (!data_)
      throw_error(ErrorCode::out_of_memory, fmt::format("allocating {} bytes on the cpu", bytes));
  } else {
    stream_ = stream && stream->device() == device ? stream->native_handle() : nullptr;
    data_ = cuda_rt::allocate(device.index, static_cast<size_t>(bytes > 0 ? bytes : 1), stream_);
  }
}

void Buffer::release() noexcept {
  if (!data_) return;
  if (device_.is_cpu())
    std::free(data_);
  else
    cuda_rt::release(device_.index, data_, stream_);
  data_ = nullptr;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      device_(other.device_),
      stream_(other.stream_) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = other.device_;
    stream_ = other.stream_;
  }
  return *this;
}

Tensor Tensor::empty(const Shape& shape, Dtype dtype, Device device, const Stream* stream) {
  Tensor t;
  t.buffer_ = Buffer(storage_bytes(dtype, lowbit::numel(shape)), device, stream);
  t.view_ = TensorView(t.buffer_.data(), dtype, shape, device);
  return t;
}

// ---- copies -------------------------------------------------------------------------

namespace {

// Copies a strided CPU view element by element (any layout, same shape and dtype).
void copy_strided_cpu(const TensorView& dst, const TensorView& src) {
  const int64_t esize = bit_width(src.dtype()) / 8;
  const int nd = src.ndim();
  std::array<int64_t, kMaxDims> idx{};
  auto* d = static_cast<char*>(dst.data());
  const auto* s = static_cast<const char*>(src.data());
  for (int64_t n = 0; n < src.numel(); ++n) {
    int64_t so = 0, dof = 0;
    for (int i = 0; i < nd; ++i) {
      so += idx[i] * src.stride(i);
      dof += idx[i] * dst.stride(i);
    }
    std::memcpy(d + dof * esize, s + so * esize, static_cast<size_t>(esize));
    for (int i = nd - 1; i >= 0; --i) {
      if (++idx[i] < src.dim(i)) break;
      idx[i] = 0;
    }
  }
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, int64_t bytes,
                const Stream* stream) {
  if (bytes < 0)
    throw_error(ErrorCode::invalid_argument, fmt::format("copy_bytes: negative size {}", bytes));
  if (bytes == 0) return;
  check_device(dst_device);
  check_device(src_device);
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, static_cast<size_t>(bytes));
    return;
  }
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  void* s = stream && stream->device().is_cuda() ? stream->native_handle() : nullptr;
  cuda_rt::copy(device, dst, src, static_cast<size_t>(bytes), s, stream == nullptr || s == nullptr);
}

void copy(const TensorView& dst, const TensorView& src, const Stream* stream) {
  if (dst.dtype() != src.dtype())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("copy: dst dtype {} != src dtype {} (use convert)",
                            dtype_name(dst.dtype()), dtype_name(src.dtype())));
  if (!(dst.shape() == src.shape()))
    throw_error(ErrorCode::invalid_argument, fmt::format("copy: dst shape {} != src shape {}",
                                                         dst.shape().str(), src.shape().str()));
  if (src.numel() == 0) return;
  if (src.is_contiguous() && dst.is_contiguous()) {
    copy_bytes(dst.data(), dst.device(), src.data(), src.device(),
               storage_bytes(src.dtype(), src.numel()), stream);
    return;
  }
  if (src.device().is_cpu() && dst.device().is_cpu()) {
    copy_strided_cpu(dst, src);
    return;
  }
  // A strided view on a GPU: stage through the host, synchronously (the staging buffers
  // live only in this call). The source's whole span crosses and a strided CPU copy picks
  // its elements; a strided GPU destination's span is read, patched and written back, so
  // the bytes between its elements keep their values.
  if (stream) stream->synchronize();
  Buffer src_stage;
  TensorView s = src;
  if (!src.device().is_cpu()) {
    const int64_t span = src.span_bytes();
    src_stage = Buffer(span, Device::cpu());
    copy_bytes(src_stage.data(), Device::cpu(), src.data(), src.device(), span);
    s = TensorView(src_stage.data(), src.dtype(), src.shape(), src.strides(), Device::cpu());
  }
  if (dst.device().is_cpu()) {
    copy_strided_cpu(dst, s);
    return;
  }
  const int64_t span =
      dst.is_contiguous() ? storage_bytes(dst.dtype(), dst.numel()) : dst.span_bytes();
  Buffer dst_stage(span, Device::cpu());
  if (!dst.is_contiguous())
    copy_bytes(dst_stage.data(), Device::cpu(), dst.data(), dst.device(), span);
  copy_strided_cpu(
      TensorView(dst_stage.data(), dst.dtype(), dst.shape(), dst.strides(), Device::cpu()), s);
  copy_bytes(dst.data(), dst.device(), dst_stage.data(), Device::cpu(), span);
}

void fill_bytes(const TensorView& dst, uint8_t byte, const Stream* stream) {
  if (!dst.is_contiguous())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fill_bytes: {} is not contiguous", dst.str()));
  const int64_t bytes = storage_bytes(dst.dtype(), dst.numel());
  if (bytes == 0) return;
  if (dst.device().is_cpu()) {
    std::memset(dst.data(), byte, static_cast<size_t>(bytes));
    return;
  }
  void* s = stream && stream->device().is_cuda() ? stream->native_handle() : nullptr;
  cuda_rt::memset(dst.device().index, dst.data(), byte, static_cast<size_t>(bytes), s,
                  s == nullptr);
}

}  // namespace lowbit
