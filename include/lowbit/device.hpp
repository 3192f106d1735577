// Devices (cpu, cuda:N), streams, and what the machine offers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lowbit {

enum class DeviceType : uint8_t { cpu, cuda };

/// Where a tensor lives and a kernel runs.
struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::cpu, 0}; }
  static constexpr Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  constexpr bool is_cpu() const { return type == DeviceType::cpu; }
  constexpr bool is_cuda() const { return type == DeviceType::cuda; }
  /// "cpu" or "cuda:N".
  std::string str() const;
  friend constexpr bool operator==(const Device&, const Device&) = default;
};

/// Parses "cpu", "cuda" (= cuda:0) or "cuda:N"; throws Error(invalid_argument) otherwise.
Device parse_device(std::string_view text);

/// Number of CUDA devices usable now: 0 when built without CUDA, with no driver, or no GPU.
int cuda_device_count();
/// Throws Error(invalid_argument) if `device` names a CUDA device that is not present.
void check_device(Device device);

struct CudaDeviceProperties {
  std::string name;
  int sm_major = 0;
  int sm_minor = 0;
  int multiprocessors = 0;
  std::size_t total_memory = 0;  ///< bytes
  std::size_t l2_cache = 0;      ///< bytes
  std::string str() const;       ///< one line for `lowbit info`
};
/// Properties of CUDA device `index`; throws Error(invalid_argument) for a bad index.
CudaDeviceProperties cuda_device_properties(int index);
/// CUDA runtime and driver versions as "runtime 13.0, driver 13.0", or why none.
std::string cuda_version_string();

/// The CPU's SIMD features, read once at start-up (cpuid through Highway).
struct CpuFeatures {
  bool avx2 = false;         ///< AVX2 with FMA and F16C
  bool avx512 = false;       ///< F + BW + DQ + VL (Highway's AVX3 target)
  bool avx512_vnni = false;  ///< also VNNI, VPOPCNTDQ, VBMI2... (Highway's AVX3_DL target)
  bool avx512_bf16 = false;  ///< Zen 4 / Sapphire Rapids class (Highway's AVX3_ZEN4 or SPR)
  int threads = 1;           ///< OpenMP's max threads
  std::string best_target;   ///< Highway's name for the best target it will dispatch to
  std::string str() const;
};
const CpuFeatures& cpu_features();

/// An ordered queue of device work. On the CPU work runs at once and a Stream is a
/// no-op; on CUDA it wraps a cudaStream_t. Move-only; owns the stream it created.
class Stream {
 public:
  Stream() = default;  ///< the CPU stream
  /// The legacy default stream of a CUDA device (not owned), or the CPU stream.
  static Stream default_for(Device device);
  /// A new non-blocking CUDA stream on `device` (owned); the CPU stream for cpu.
  static Stream create(Device device);
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  Device device() const { return device_; }
  /// The cudaStream_t, as void* so that no CUDA header leaks into the API.
  void* native_handle() const { return handle_; }
  /// Waits until all work queued so far has finished; throws Error(device_error) on a fault.
  void synchronize() const;

 private:
  Stream(Device device, void* handle, bool owned)
      : device_(device), handle_(handle), owned_(owned) {}
  Device device_ = Device::cpu();
  void* handle_ = nullptr;
  bool owned_ = false;
};

}  // namespace lowbit
