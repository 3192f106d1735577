// C ABI over lowbit's quantize / dequantize ops (include/lowbit/quantize.hpp) for
// tests/python/test_formats_oracle.py, through the ctypes wrapper
// tests/python/lowbit_shim_quant.py.
//
//   int lowbit_shim_quantize(const char* scheme, int src_dtype, const void* src,
//                            const int64_t* shape, int ndim, int given_scales,
//                            void* codes, void* scale, void* zero, void* global_scale)
//   int lowbit_shim_dequantize(const char* scheme, const int64_t* shape, int ndim,
//                              const void* codes, const void* scale, const void* zero,
//                              const void* global_scale, int dst_dtype, void* dst)
//   int lowbit_shim_fake_quantize(const char* scheme, int dtype, const void* src,
//                                 const int64_t* shape, int ndim, void* dst)
//   int lowbit_shim_part_sizes(const char* scheme, const int64_t* shape, int ndim,
//                              int64_t* sizes_out)
//   int lowbit_shim_part_info(const char* scheme, const int64_t* shape, int ndim,
//                             int64_t* sizes_out, char* dtypes_out, int64_t dtypes_len,
//                             int64_t* scale_shape_out, int* scale_ndim_out)
//   int lowbit_shim_scheme_info(const char* scheme, char* canonical, int64_t len,
//                               int* qmin_qmax_out)
//   const char* lowbit_shim_quantize_last_error(void)
//
// Float dtypes (src_dtype, dst_dtype, dtype): 0 f32, 1 f16, 2 bf16, 3 f64. The parts are
// the contiguous bytes of QuantizedTensor's codes, scale, zero and global_scale (see
// docs/formats.md for their layouts); sizes_out receives their byte counts in that order
// (0 for a part the scheme does not have) and dtypes_out their dtype names, comma
// separated ("-" for an absent part). A null part pointer is allowed where the scheme has
// no such part. With given_scales != 0, quantize reads scale / zero / global_scale from the
// caller's buffers (static quantization); either way every part is written back (given
// ones unchanged; NVFP4's block scales are computed from the given global scale). Every
// function returns 0, or -1 after a lowbit::Error (or any other exception), whose what()
// lowbit_shim_quantize_last_error then returns (per thread).
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>

#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

#define LOWBIT_SHIM_API extern "C" __attribute__((visibility("default")))

namespace {

using namespace lowbit;

thread_local std::string g_last_error;

template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    g_last_error.clear();
    return 0;
  } catch (const std::exception& e) {
    g_last_error = e.what();
  } catch (...) {
    g_last_error = "unknown exception";
  }
  return -1;
}

Dtype float_dtype(int code) {
  switch (code) {
    case 0:
      return Dtype::f32;
    case 1:
      return Dtype::f16;
    case 2:
      return Dtype::bf16;
    case 3:
      return Dtype::f64;
    default:
      throw_error(ErrorCode::invalid_argument,
                  "shim: float dtype code must be 0 (f32), 1 (f16), 2 (bf16) or 3 (f64)");
  }
}

Shape make_shape(const int64_t* shape, int ndim) {
  if (ndim < 0 || ndim > kMaxDims || (ndim > 0 && shape == nullptr))
    throw_error(ErrorCode::invalid_argument, "shim: bad shape pointer or ndim");
  return Shape(std::span<const int64_t>(shape, static_cast<size_t>(ndim)));
}

/// Copies `bytes` from a caller buffer into a part (the caller must pass a buffer when the
/// part exists).
void copy_in(const Tensor& part, const void* from, const char* which) {
  if (part.nbytes() == 0) return;
  if (from == nullptr)
    throw_error(ErrorCode::invalid_argument,
                std::string("shim: the scheme has a ") + which + " part but its buffer is null");
  std::memcpy(part.data(), from, static_cast<size_t>(part.nbytes()));
}

void copy_out(const Tensor& part, void* to, const char* which) {
  if (part.nbytes() == 0) return;
  if (to == nullptr)
    throw_error(ErrorCode::invalid_argument,
                std::string("shim: the scheme has a ") + which + " part but its buffer is null");
  std::memcpy(to, part.data(), static_cast<size_t>(part.nbytes()));
}

std::string dtype_or_dash(const Tensor& t) {
  return t.nbytes() == 0 && t.data() == nullptr ? std::string("-")
                                                : std::string(dtype_name(t.dtype()));
}

}  // namespace

LOWBIT_SHIM_API int lowbit_shim_quantize(const char* scheme, int src_dtype, const void* src,
                                         const int64_t* shape, int ndim, int given_scales,
                                         void* codes, void* scale, void* zero, void* global_scale) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const Shape sh = make_shape(shape, ndim);
    QuantizedTensor q = QuantizedTensor::allocate(s, sh);
    if (given_scales) {
      copy_in(q.scale, scale, "scale");
      copy_in(q.zero, zero, "zero");
      copy_in(q.global_scale, global_scale, "global_scale");
    }
    const TensorView x(const_cast<void*>(src), float_dtype(src_dtype), sh);
    quantize_into(q.view(), x, given_scales != 0);
    // Every part goes back, given ones too (quantize leaves those as they were; NVFP4
    // computes its block scales also when the global scale is given).
    copy_out(q.codes, codes, "codes");
    copy_out(q.scale, scale, "scale");
    copy_out(q.zero, zero, "zero");
    copy_out(q.global_scale, global_scale, "global_scale");
  });
}

LOWBIT_SHIM_API int lowbit_shim_dequantize(const char* scheme, const int64_t* shape, int ndim,
                                           const void* codes, const void* scale, const void* zero,
                                           const void* global_scale, int dst_dtype, void* dst) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const Shape sh = make_shape(shape, ndim);
    QuantizedTensor q = QuantizedTensor::allocate(s, sh);
    copy_in(q.codes, codes, "codes");
    copy_in(q.scale, scale, "scale");
    copy_in(q.zero, zero, "zero");
    copy_in(q.global_scale, global_scale, "global_scale");
    dequantize_into(TensorView(dst, float_dtype(dst_dtype), sh), q.view());
  });
}

LOWBIT_SHIM_API int lowbit_shim_fake_quantize(const char* scheme, int dtype, const void* src,
                                              const int64_t* shape, int ndim, void* dst) {
  return guarded([&] {
    const Shape sh = make_shape(shape, ndim);
    const Dtype d = float_dtype(dtype);
    const Tensor y =
        fake_quantize(TensorView(const_cast<void*>(src), d, sh), QuantScheme::parse(scheme));
    std::memcpy(dst, y.data(), static_cast<size_t>(y.nbytes()));
  });
}

LOWBIT_SHIM_API int lowbit_shim_part_sizes(const char* scheme, const int64_t* shape, int ndim,
                                           int64_t* sizes_out) {
  return guarded([&] {
    const QuantizedTensor q =
        QuantizedTensor::allocate(QuantScheme::parse(scheme), make_shape(shape, ndim));
    sizes_out[0] = q.codes.nbytes();
    sizes_out[1] = q.scale.nbytes();
    sizes_out[2] = q.zero.nbytes();
    sizes_out[3] = q.global_scale.nbytes();
  });
}

LOWBIT_SHIM_API int lowbit_shim_part_info(const char* scheme, const int64_t* shape, int ndim,
                                          int64_t* sizes_out, char* dtypes_out, int64_t dtypes_len,
                                          int64_t* scale_shape_out, int* scale_ndim_out) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const Shape sh = make_shape(shape, ndim);
    const QuantizedTensor q = QuantizedTensor::allocate(s, sh);
    sizes_out[0] = q.codes.nbytes();
    sizes_out[1] = q.scale.nbytes();
    sizes_out[2] = q.zero.nbytes();
    sizes_out[3] = q.global_scale.nbytes();
    const std::string names = dtype_or_dash(q.codes) + "," + dtype_or_dash(q.scale) + "," +
                              dtype_or_dash(q.zero) + "," + dtype_or_dash(q.global_scale);
    if (static_cast<int64_t>(names.size()) + 1 > dtypes_len)
      throw_error(ErrorCode::invalid_argument, "shim: dtypes_out buffer too small");
    std::memcpy(dtypes_out, names.c_str(), names.size() + 1);
    // The scale shape (GGUF schemes have none: 0 dims); the code shape is the logical shape,
    // or [rows, row bytes] for GGUF.
    const Shape ss = s.format == QuantFormat::gguf ? Shape{} : scale_shape(s, sh);
    for (int i = 0; i < ss.size(); ++i) scale_shape_out[i] = ss[i];
    *scale_ndim_out = ss.size();
  });
}

LOWBIT_SHIM_API int lowbit_shim_scheme_info(const char* scheme, char* canonical, int64_t len,
                                            int* qmin_qmax_out) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const std::string text = s.str();
    if (static_cast<int64_t>(text.size()) + 1 > len)
      throw_error(ErrorCode::invalid_argument, "shim: canonical buffer too small");
    std::memcpy(canonical, text.c_str(), text.size() + 1);
    qmin_qmax_out[0] = s.qmin();
    qmin_qmax_out[1] = s.qmax();
  });
}

LOWBIT_SHIM_API const char* lowbit_shim_quantize_last_error() { return g_last_error.c_str(); }
