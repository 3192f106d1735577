#include "lowbit/device.hpp"

#include <cpuid.h>
#include <fmt/format.h>
#include <omp.h>

#include <charconv>

#include "core/cuda_runtime.hpp"
#include "lowbit/error.hpp"

namespace lowbit {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index);
}

Device parse_device(std::string_view text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int index = -1;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && ptr == digits.data() + digits.size() && index >= 0)
      return Device::cuda(index);
  }
  throw_error(ErrorCode::invalid_argument,
              fmt::format("device '{}' is not valid (expected cpu, cuda or cuda:N)", text));
}

int cuda_device_count() { return cuda_rt::device_count(); }

void check_device(Device device) {
  if (device.is_cpu()) return;
  const int n = cuda_device_count();
  if (device.index < 0 || device.index >= n)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("device {} does not exist ({} CUDA devices present)", device.str(), n));
}

std::string CudaDeviceProperties::str() const {
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB, L2 {} MiB)", name, sm_major, sm_minor,
                     multiprocessors, total_memory / double(1ull << 30), l2_cache >> 20);
}

CudaDeviceProperties cuda_device_properties(int index) {
  check_device(Device::cuda(index));
  return cuda_rt::properties(index);
}

std::string cuda_version_string() { return cuda_rt::version_string(); }

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
    __builtin_cpu_init();
    // F16C comes with every AVX2 CPU; the AVX2 kernels use it, so it is part of the test
    // (CPUID leaf 1, ECX bit 29: clang's __builtin_cpu_supports has no "f16c").
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
    f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    f.threads = omp_get_max_threads();
    f.best_target = f.avx512 ? "avx512" : f.avx2 ? "avx2" : "sse4/scalar";
    return f;
  }();
  return features;
}

std::string CpuFeatures::str() const {
  return fmt::format("x86-64 {} (avx2 {}, avx512 {}, avx512-vnni {}, avx512-bf16 {}), {} threads",
                     best_target, avx2 ? "yes" : "no", avx512 ? "yes" : "no",
                     avx512_vnni ? "yes" : "no", avx512_bf16 ? "yes" : "no", threads);
}

Stream Stream::default_for(Device device) {
  check_device(device);
  return Stream(device, nullptr, false);
}

Stream Stream::create(Device device) {
  check_device(device);
  if (device.is_cpu()) return Stream();
  return Stream(device, cuda_rt::stream_create(device.index), true);
}

Stream::~Stream() {
  if (owned_) cuda_rt::stream_destroy(device_.index, handle_);
}

Stream::Stream(Stream&& other) noexcept
    : device_(other.device_), handle_(other.handle_), owned_(other.owned_) {
  other.owned_ = false;
  other.handle_ = nullptr;
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (owned_) cuda_rt::stream_destroy(device_.index, handle_);
    device_ = other.device_;
    handle_ = other.handle_;
    owned_ = other.owned_;
    other.owned_ = false;
    other.handle_ = nullptr;
  }
  return *this;
}

void Stream::synchronize() const {
  if (device_.is_cuda()) cuda_rt::stream_synchronize(device_.index, handle_);
}

}  // namespace lowbit
