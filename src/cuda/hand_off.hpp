// The host side of a checked kernel's hand-off (the quantize op's checked paths and the
// fusion JIT's quantize epilogue). Kernels report into device words; the last block to
// finish copies them into pinned, mapped host memory, zeroes the device words for the next
// call and raises a `done` word there (device side: quantize_cuda.cu's and codegen_cuda.cpp's
// hand_off). The host spins on `done` instead of copying the words back and synchronising
// the stream: no copy in the stream, and the kernels' end is seen a few microseconds sooner
// (H100: a checked quantize call 12.3 -> 8.7 us of overhead).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lowbit::hand_off {

/// One thread's words on one device: kept for the thread's lifetime (a checked call waits
/// for its kernels, so two calls never share them).
struct Words {
  void* device = nullptr;
  void* host = nullptr;            ///< pinned, mapped
  void* host_on_device = nullptr;  ///< `host` as kernels address it
};

/// `bytes` of device memory and of pinned, mapped host memory on the current device. False
/// (nothing kept, the CUDA error cleared) when an allocation fails: the caller then uses
/// per-call words and a stream synchronisation.
inline bool allocate(size_t bytes, Words& w) {
  void* d = nullptr;
  void* h = nullptr;
  void* hd = nullptr;
  if (cudaMalloc(&d, bytes) != cudaSuccess ||
      cudaHostAlloc(&h, bytes, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess ||
      cudaHostGetDevicePointer(&hd, h, 0) != cudaSuccess) {
    cudaGetLastError();
    if (d) cudaFree(d);
    if (h) cudaFreeHost(h);
    return false;
  }
  w = {d, h, hd};
  return true;
}

/// Spins until `*done` is set. The stream is polled every 256 spins, so that a launch
/// failure, or a stream that finished without a hand-off (nothing launched), does not hang
/// the caller: returns cudaErrorNotReady when `done` was seen, else what cudaStreamQuery
/// said (cudaSuccess: finished without the hand-off; an error: the stream failed).
inline cudaError_t wait(const volatile unsigned long long* done, cudaStream_t stream) {
  for (uint32_t spin = 1; !*done; ++spin)
    if (spin % 256 == 0)
      if (const cudaError_t q = cudaStreamQuery(stream); q != cudaErrorNotReady) return q;
  return cudaErrorNotReady;
}

}  // namespace lowbit::hand_off
