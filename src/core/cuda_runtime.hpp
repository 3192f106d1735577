// The narrow interface between the core and the CUDA runtime. Implemented by
// src/cuda/runtime.cu, or by src/cuda_stub/runtime_stub.cpp in builds without CUDA.
// Streams are passed as void* (cudaStream_t) so that no CUDA header is needed here.
#pragma once

#include <cstddef>
#include <string>

#include "lowbit/device.hpp"

namespace lowbit::cuda_rt {

/// 0 without CUDA, driver or GPU (never throws).
int device_count() noexcept;
CudaDeviceProperties properties(int device);
std::string version_string();
void* stream_create(int device);
void stream_destroy(int device, void* stream) noexcept;
void stream_synchronize(int device, void* stream);
/// Stream-ordered allocation from the device's caching pool; throws Error(out_of_memory).
void* allocate(int device, std::size_t bytes, void* stream);
void release(int device, void* ptr, void* stream) noexcept;
/// cudaMemcpyAsync(kind = default, unified addressing) on `stream`; synchronous if
/// `synchronize` is set.
void copy(int device, void* dst, const void* src, std::size_t bytes, void* stream,
          bool synchronize);
void memset(int device, void* dst, int byte, std::size_t bytes, void* stream, bool synchronize);
/// Throws Error(device_error) if the last kernel launch failed.
void check_last_launch(const char* what);

}  // namespace lowbit::cuda_rt
