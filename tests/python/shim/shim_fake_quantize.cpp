// C ABI over lowbit's fake_quantize and fake_quantize_backward ops
// (include/lowbit/fake_quantize.hpp) for tests/python/test_fake_quantize.py (ctypes).
//
//   int lowbit_shim_fq_forward(const char* scheme, int device, int src_dtype, const void* src,
//                              const int64_t* shape, int ndim, int dst_dtype, void* dst,
//                              int given_scales, void* scale, void* zero)
//   int lowbit_shim_fq_backward(const char* scheme, int device, int x_dtype, const void* x,
//                               int dy_dtype, const void* dy, const int64_t* shape, int ndim,
//                               const void* scale, const void* zero, void* dx, float* dscale,
//                               float* dzero, int lsq_grad_scale)
//   int lowbit_shim_fq_cuda_devices(void)
//   const char* lowbit_shim_fq_last_error(void)
//
// Float dtypes: 0 f32, 1 f16, 2 bf16, 3 f64. device: 0 the CPU, 1 cuda:0 (the host buffers
// are copied there and back). scale has the scheme's scale dtype and scale shape (f32 for
// fp8), zero is i32 (affine schemes; may be null otherwise): inputs with given_scales (and
// always for the backward), outputs of a dynamic forward. dscale / dzero (f32, the scale's
// shape) may be null: then they are not computed. Every function returns 0, or -1 after an
// exception, whose what() lowbit_shim_fq_last_error then returns (per thread).
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>

#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

#define LOWBIT_SHIM_API extern "C" __attribute__((visibility("default")))

namespace {

using namespace lowbit;

thread_local std::string g_fq_error;

template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    g_fq_error.clear();
    return 0;
  } catch (const std::exception& e) {
    g_fq_error = e.what();
  } catch (...) {
    g_fq_error = "unknown exception";
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
      throw_error(ErrorCode::invalid_argument, "shim: float dtype code must be 0, 1, 2 or 3");
  }
}

Device device_of(int code) {
  if (code == 0) return Device::cpu();
  if (code == 1) return Device::cuda(0);
  throw_error(ErrorCode::invalid_argument, "shim: device must be 0 (cpu) or 1 (cuda:0)");
}

Shape make_shape(const int64_t* shape, int ndim) {
  if (ndim < 0 || ndim > kMaxDims || (ndim > 0 && shape == nullptr))
    throw_error(ErrorCode::invalid_argument, "shim: bad shape pointer or ndim");
  return Shape(std::span<const int64_t>(shape, static_cast<size_t>(ndim)));
}

/// A tensor on `device` holding the host buffer's bytes (or uninitialised without one).
Tensor upload(const void* host, Dtype dtype, const Shape& shape, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  if (host && t.nbytes() > 0)
    copy_bytes(t.data(), device, host, Device::cpu(), storage_bytes(dtype, t.numel()));
  return t;
}

void download(void* host, const Tensor& t) {
  if (host && t.numel() > 0)
    copy_bytes(host, Device::cpu(), t.data(), t.device(), storage_bytes(t.dtype(), t.numel()));
}

Dtype scale_dtype(const QuantScheme& s) { return s.is_integer() ? s.scale_dtype : Dtype::f32; }
bool affine(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }

}  // namespace

LOWBIT_SHIM_API int lowbit_shim_fq_forward(const char* scheme, int device, int src_dtype,
                                           const void* src, const int64_t* shape, int ndim,
                                           int dst_dtype, void* dst, int given_scales, void* scale,
                                           void* zero) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const Shape sh = make_shape(shape, ndim);
    const Device dev = device_of(device);
    const Shape ss = scale_shape(s, sh);
    const Tensor x = upload(src, float_dtype(src_dtype), sh, dev);
    const Tensor y = Tensor::empty(sh, float_dtype(dst_dtype), dev);
    const Tensor sc = upload(given_scales ? scale : nullptr, scale_dtype(s), ss, dev);
    const Tensor z =
        affine(s) ? upload(given_scales ? zero : nullptr, Dtype::i32, ss, dev) : Tensor();
    fake_quantize_into(y, x, s, sc, z, given_scales != 0);
    download(dst, y);
    if (!given_scales) {
      download(scale, sc);
      if (affine(s)) download(zero, z);
    }
  });
}

LOWBIT_SHIM_API int lowbit_shim_fq_backward(const char* scheme, int device, int x_dtype,
                                            const void* x, int dy_dtype, const void* dy,
                                            const int64_t* shape, int ndim, const void* scale,
                                            const void* zero, void* dx, float* dscale, float* dzero,
                                            int lsq_grad_scale) {
  return guarded([&] {
    const QuantScheme s = QuantScheme::parse(scheme);
    const Shape sh = make_shape(shape, ndim);
    const Device dev = device_of(device);
    const Shape ss = scale_shape(s, sh);
    const Tensor xt = upload(x, float_dtype(x_dtype), sh, dev);
    const Tensor dyt = upload(dy, float_dtype(dy_dtype), sh, dev);
    const Tensor sc = upload(scale, scale_dtype(s), ss, dev);
    const Tensor z = affine(s) ? upload(zero, Dtype::i32, ss, dev) : Tensor();
    const Tensor dxt = Tensor::empty(sh, float_dtype(dy_dtype), dev);
    const Tensor ds = dscale ? Tensor::empty(ss, Dtype::f32, dev) : Tensor();
    const Tensor dz = dzero ? Tensor::empty(ss, Dtype::f32, dev) : Tensor();
    FakeQuantizeBackwardArgs a{dyt, xt, sc, z, dxt, {}, {}};
    if (dscale) a.dscale = ds;
    if (dzero) a.dzero = dz;
    fake_quantize_backward_into(a, s, lsq_grad_scale != 0);
    download(dx, dxt);
    download(dscale, ds);
    download(dzero, dz);
  });
}

LOWBIT_SHIM_API int lowbit_shim_fq_cuda_devices(void) { return cuda_device_count(); }

LOWBIT_SHIM_API const char* lowbit_shim_fq_last_error(void) { return g_fq_error.c_str(); }
