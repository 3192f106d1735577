// Shared by the CUDA op files (convert_cuda.cu, and the quantize family through
// quantize_cuda_common.cuh): checked runtime calls, the device-scope guard, per-device facts
// read once, and exact division by an invariant 32-bit divisor.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/numeric.hpp"

namespace lowbit::cuda_common {

// ---- host: errors, devices ------------------------------------------------------------------

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw_error(ErrorCode::device_error, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                             cudaGetErrorString(err) + ")");
}

/// Makes `device` current for the scope of a run and restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

/// A kernel's opt-in to more than 48 KiB of dynamic shared memory, once per device. The
/// attribute belongs to the function in each device's context, so a process that runs the
/// kernel on a second GPU must set it there too (setting it once per process made launches on
/// any other device fail). One instance per launch site (a function-local static):
///   static SmemOptIn optin;
///   check_cuda(optin.allow(kernel, bytes), "what");
class SmemOptIn {
 public:
  template <class Kernel>
  cudaError_t allow(Kernel kernel, int bytes) {
    int device = 0;
    if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
    const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
    if (bit && (devices_.load(std::memory_order_acquire) & bit)) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(
        reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess && bit) devices_.fetch_or(bit, std::memory_order_acq_rel);
    return err;
  }

 private:
  std::atomic<uint64_t> devices_{0};
};

/// Per-device facts read once: SM count, "sm_XY", whether this build has code for it
/// (probed with one of the calling file's kernels).
struct DeviceFacts {
  int multiprocessors = 0;
  int sm = 0;          ///< compute capability as 10 * major + minor (90: Hopper)
  int smem_optin = 0;  ///< dynamic shared memory a block may opt in to, bytes
  std::string arch;
  bool has_image = false;
  std::string image_error;
};

/// The facts of `device`, read on first use; one cache per probe kernel type.
template <class ProbeKernel>
const DeviceFacts& device_facts(int device, ProbeKernel probe) {
  static std::mutex mutex;
  static std::array<DeviceFacts, 64> facts;
  static std::array<bool, 64> known{};
  if (device < 0 || device >= 64)
    throw_error(ErrorCode::invalid_argument, "cuda:" + std::to_string(device) + " is out of range");
  std::lock_guard<std::mutex> lock(mutex);
  if (!known[device]) {
    const CudaDeviceProperties p = cuda_device_properties(device);
    DeviceFacts f;
    f.multiprocessors = p.multiprocessors;
    f.sm = 10 * p.sm_major + p.sm_minor;
    f.arch = "sm_" + std::to_string(p.sm_major) + std::to_string(p.sm_minor);
    DeviceScope scope(device);
    if (cudaDeviceGetAttribute(&f.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
        cudaSuccess) {
      cudaGetLastError();
      f.smem_optin = 48 * 1024;
    }
    cudaFuncAttributes attr{};
    const cudaError_t err = cudaFuncGetAttributes(&attr, probe);
    if (err == cudaSuccess) {
      f.has_image = true;
    } else {
      cudaGetLastError();
      f.image_error = std::string(cudaGetErrorName(err));
    }
    facts[device] = f;
    known[device] = true;
  }
  return facts[device];
}

// ---- integer division by an invariant divisor ---------------------------------------------

/// Unsigned division by an invariant 32-bit divisor (Granlund & Montgomery, "Division by
/// invariant integers using multiplication", fig. 4.1): exact for every 32-bit dividend.
struct Divisor32 {
  uint32_t d = 1, m = 1, s1 = 0, s2 = 0;
  static Divisor32 make(uint32_t d) {
    int l = 0;
    while (l < 32 && (uint64_t{1} << l) < d) ++l;
    Divisor32 v;
    v.d = d;
    v.m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1);
    v.s1 = l < 1 ? l : 1;
    v.s2 = l > 1 ? l - 1 : 0;
    return v;
  }
  LOWBIT_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, m);
#else
    const uint32_t t = static_cast<uint32_t>((uint64_t{n} * m) >> 32);
#endif
    return (t + ((n - t) >> s1)) >> s2;
  }
};

}  // namespace lowbit::cuda_common
