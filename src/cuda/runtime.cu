// The core's CUDA runtime interface (core/cuda_runtime.hpp) on the CUDA runtime API.
// Device memory comes from each device's stream-ordered pool (cudaMallocAsync) with
// its release threshold raised, so freed blocks stay cached for the next allocation.
#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include "core/cuda_runtime.hpp"
#include "lowbit/error.hpp"

namespace lowbit::cuda_rt {
namespace {

[[noreturn]] void fail(ErrorCode code, const std::string& what, cudaError_t err) {
  throw_error(code, what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}
void check(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) fail(ErrorCode::device_error, what, err);
}

void use_device(int device) {
  const int n = device_count();
  if (device < 0 || device >= n)
    throw_error(ErrorCode::invalid_argument, "device cuda:" + std::to_string(device) +
                                                 " does not exist (" + std::to_string(n) +
                                                 " CUDA devices present)");
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
}

void configure_pool_once(int device) {
  static std::once_flag flags[64];
  if (device >= 64) return;
  std::call_once(flags[device], [device] {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      uint64_t keep = UINT64_MAX;  // never trim cached blocks at synchronisation points
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
  });
}

}  // namespace

int device_count() noexcept {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver" / "no device" error
      return 0;
    }
    return n;
  }();
  return count;
}

CudaDeviceProperties properties(int device) {
  use_device(device);
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  CudaDeviceProperties out;
  out.name = p.name;
  out.sm_major = p.major;
  out.sm_minor = p.minor;
  out.multiprocessors = p.multiProcessorCount;
  out.total_memory = p.totalGlobalMem;
  out.l2_cache = static_cast<std::size_t>(p.l2CacheSize);
  return out;
}

std::string version_string() {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  auto fmt = [](int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); };
  return "runtime " + fmt(runtime) + ", driver " + (driver ? fmt(driver) : std::string("none"));
}

void* stream_create(int device) {
  use_device(device);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return s;
}

void stream_destroy(int device, void* stream) noexcept {
  if (!stream) return;
  cudaSetDevice(device);
  cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

void stream_synchronize(int device, void* stream) {
  use_device(device);
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

void* allocate(int device, std::size_t bytes, void* stream) {
  use_device(device);
  configure_pool_once(device);
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Give cached blocks back to the driver and try once more before failing.
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
      cudaMemPoolTrimTo(pool, 0);
      err = cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream));
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      fail(ErrorCode::out_of_memory,
           "allocating " + std::to_string(bytes) + " bytes on cuda:" + std::to_string(device), err);
    }
  }
  check(err, "cudaMallocAsync(" + std::to_string(bytes) + " bytes)");
  return p;
}

void release(int device, void* ptr, void* stream) noexcept {
  if (!ptr) return;
  cudaSetDevice(device);
  cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream));
}

void copy(int device, void* dst, const void* src, std::size_t bytes, void* stream,
          bool synchronize) {
  use_device(device);
  auto s = static_cast<cudaStream_t>(stream);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), "cudaMemcpyAsync");
  if (synchronize) check(cudaStreamSynchronize(s), "cudaStreamSynchronize after copy");
}

void memset(int device, void* dst, int byte, std::size_t bytes, void* stream, bool synchronize) {
  use_device(device);
  auto s = static_cast<cudaStream_t>(stream);
  check(cudaMemsetAsync(dst, byte, bytes, s), "cudaMemsetAsync");
  if (synchronize) check(cudaStreamSynchronize(s), "cudaStreamSynchronize after memset");
}

void check_last_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail(ErrorCode::device_error, std::string("launching ") + what, err);
}

}  // namespace lowbit::cuda_rt
