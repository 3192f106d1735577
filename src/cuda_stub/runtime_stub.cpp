// The CUDA runtime interface in a build without CUDA: no devices; anything that
// would need one reports Error(unsupported).
#include "core/cuda_runtime.hpp"
#include "lowbit/error.hpp"

namespace lowbit::cuda_rt {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw_error(
      ErrorCode::unsupported,
      std::string(what) + ": lowbit was built without CUDA (configure with LOWBIT_CUDA=ON)");
}
}  // namespace

int device_count() noexcept { return 0; }
CudaDeviceProperties properties(int) { no_cuda("cuda_device_properties"); }
std::string version_string() { return "not built with CUDA"; }
void* stream_create(int) { no_cuda("Stream::create"); }
void stream_destroy(int, void*) noexcept {}
void stream_synchronize(int, void*) { no_cuda("Stream::synchronize"); }
void* allocate(int, std::size_t, void*) { no_cuda("Buffer"); }
void release(int, void*, void*) noexcept {}
void copy(int, void*, const void*, std::size_t, void*, bool) { no_cuda("copy"); }
void memset(int, void*, int, std::size_t, void*, bool) { no_cuda("fill_bytes"); }
void check_last_launch(const char*) {}
}  // namespace lowbit::cuda_rt
