// bench_cuda_harness: what the CUDA benchmarks share: checked CUDA calls, the normal-values
// fill kernel, the median-of-repetitions timer on CUDA events, the device-to-device copy
// ceiling, the command line, the "no GPU" skip line and JSON-lines output.
//
// Each benchmark sets bench::program to its name first thing in main(): every message this
// header prints starts with it, as the benchmarks' own messages do.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/device.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace bench {

/// The running benchmark's name, the prefix of every message printed here.
inline const char* program = "bench";

/// Exits with a message naming `what` when a CUDA call failed (a benchmark has nothing
/// sensible to do after one).
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s: %s\n", program, what, cudaGetErrorString(err));
    std::exit(1);
  }
}

/// Normal(0, sigma) samples from a counter hash and Box-Muller (quality is irrelevant here;
/// the values only need the spread of real activations, subnormal-range tails included).
/// Grid-stride: the values depend on the index and seed only, not on the launch shape.
__global__ inline void fill_normal(float* out, uint64_t n, uint64_t seed, float sigma = 1.0f) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = (static_cast<uint32_t>(z) + 1.0f) * 0x1p-32f;  // (0, 1]
    const float u2 = static_cast<uint32_t>(z >> 32) * 0x1p-32f;
    out[i] = sigma * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

/// Median milliseconds of `reps` runs of `fn` on `stream` after `warmup` runs. Every
/// repetition is bracketed by its own pair of events and all are queued back to back, so
/// host-side work never leaves the GPU idle inside a measurement. `before(r)`, when given,
/// queues work ahead of repetition r outside its events (an L2 flush).
inline double median_ms(cudaStream_t stream, int warmup, int reps, const std::function<void()>& fn,
                        const std::function<void(int)>& before = {}) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<cudaEvent_t> events(2 * static_cast<size_t>(reps));
  for (cudaEvent_t& e : events) check(cudaEventCreate(&e), "cudaEventCreate");
  for (int r = 0; r < reps; ++r) {
    if (before) before(r);
    check(cudaEventRecord(events[2 * r], stream), "cudaEventRecord");
    fn();
    check(cudaEventRecord(events[2 * r + 1], stream), "cudaEventRecord");
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<double> ms(static_cast<size_t>(reps));
  for (int r = 0; r < reps; ++r) {
    float t = 0;
    check(cudaEventElapsedTime(&t, events[2 * r], events[2 * r + 1]), "cudaEventElapsedTime");
    ms[r] = t;
  }
  for (cudaEvent_t& e : events) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
}

/// Bytes of the copy ceiling's buffers: large enough that L2 (50-60 MB on Hopper) plays
/// no part.
inline constexpr int64_t kCopyBytes = int64_t{1} << 30;

/// The ceiling: milliseconds of one device-to-device cudaMemcpyAsync of kCopyBytes on
/// `stream`, as `time` measures the callable it is given (it moves 2 * kCopyBytes).
inline double copy_d2d_ms(const lowbit::Device& gpu, const lowbit::Stream& stream,
                          const std::function<double(const std::function<void()>&)>& time) {
  const auto s = static_cast<cudaStream_t>(stream.native_handle());
  lowbit::Buffer a(kCopyBytes, gpu, &stream), b(kCopyBytes, gpu, &stream);
  check(cudaMemsetAsync(a.data(), 1, kCopyBytes, s), "cudaMemsetAsync");
  return time([&] {
    check(cudaMemcpyAsync(b.data(), a.data(), kCopyBytes, cudaMemcpyDeviceToDevice, s),
          "cudaMemcpyAsync");
  });
}

/// Prints the skip line and returns true when there is no GPU to measure on.
inline bool skip_without_gpu() {
  if (lowbit::cuda_device_count() != 0) return false;
  std::printf("%s: SKIPPED: no CUDA device, nothing measured\n", program);
  return true;
}

/// `--name value` and `--name` options, matched in the order given; parse() prints
/// "usage: <argv[0]> <usage>" and returns false on any argument no option takes (an
/// option whose value is missing included).
class CommandLine {
 public:
  /// `--name value`: `set` receives the value.
  CommandLine& value(std::string name, std::function<void(const char*)> set) {
    options_.push_back({std::move(name), std::move(set), nullptr});
    return *this;
  }
  /// `--name`: `*set` becomes true.
  CommandLine& flag(std::string name, bool* set) {
    options_.push_back({std::move(name), nullptr, set});
    return *this;
  }
  bool parse(int argc, char** argv, const char* usage) const {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto it = std::find_if(options_.begin(), options_.end(), [&](const Option& o) {
        return o.name == a && (o.flag || i + 1 < argc);
      });
      if (it == options_.end()) {
        std::fprintf(stderr, "usage: %s %s\n", argv[0], usage);
        return false;
      }
      if (it->flag) {
        *it->flag = true;
      } else {
        it->set(argv[++i]);
      }
    }
    return true;
  }

 private:
  struct Option {
    std::string name;
    std::function<void(const char*)> set;
    bool* flag;
  };
  std::vector<Option> options_;
};

/// The options of the benchmarks on an [R, K] matrix: --json PATH, --reps N (at least 5),
/// --rows R (at least 64), --cols K (rounded down to a multiple of 256, at least 256).
inline bool parse_matrix_options(int argc, char** argv, std::string& json_path, int& reps,
                                 int64_t& rows, int64_t& cols) {
  return CommandLine()
      .value("--json", [&](const char* v) { json_path = v; })
      .value("--reps", [&](const char* v) { reps = std::max(5, std::atoi(v)); })
      .value("--rows", [&](const char* v) { rows = std::max<int64_t>(64, std::atoll(v)); })
      .value("--cols",
             [&](const char* v) { cols = std::max<int64_t>(256, std::atoll(v) / 256 * 256); })
      .parse(argc, argv, "[--json PATH] [--reps N>=5] [--rows R] [--cols K]");
}

/// `s` with '"' and '\' escaped and newlines turned into spaces, for a JSON string.
inline std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

/// Writes one JSON line per row to `path` through `line(file, row)`; nothing when `path`
/// is empty. Returns false, after saying so, when the file cannot be opened.
template <class Row, class Line>
bool write_json_lines(const std::string& path, const std::vector<Row>& rows, Line&& line) {
  if (path.empty()) return true;
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "%s: cannot write %s\n", program, path.c_str());
    return false;
  }
  for (const Row& r : rows) line(f, r);
  std::fclose(f);
  return true;
}

/// Bytes of a tensor's storage, 0 for an absent part.
inline int64_t part_bytes(const lowbit::Tensor& t) {
  return t.data() ? lowbit::storage_bytes(t.dtype(), t.numel()) : 0;
}

/// Bytes of a quantized tensor: codes, scales, zero points and the global scale.
inline int64_t quantized_bytes(const lowbit::QuantizedTensor& q) {
  return part_bytes(q.codes) + part_bytes(q.scale) + part_bytes(q.zero) +
         part_bytes(q.global_scale);
}

}  // namespace bench
