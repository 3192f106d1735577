// bench_gguf_cpu: GGUF quantize (every type but Q8_0 / Q4_0) on the CPU,
// gguf_quantize_simd against quantize_reference (the scalar restatement of ggml's
// quantize_row_*_ref, which is what ggml_quantize_chunk runs for these types), beside a
// streaming-read ceiling measured in the same run, on 1 and 2 threads.
//
// Source: f32 [rows, cols] of normal(0, 1) values (default 2048 x 8192, 64 MiB). GB/s counts
// f32 read + blocks written; best of N timed runs after one warm-up; the SIMD bytes are
// compared with the reference's. The streaming read sums 256 MiB as u64 words.
//
// Usage: bench_gguf_cpu [--rows R] [--cols K] [--reps N]   (K rounded down to a multiple of 256)
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

/// Best milliseconds of `reps` timed runs after one warm-up run.
double best_ms(int reps, const std::function<void()>& fn) {
  return bench::best_seconds(reps, fn) * 1e3;
}

/// Streaming read of the u64 words of buf on the current OpenMP threads: GB/s.
double read_ceiling(const std::vector<uint64_t>& buf, int reps) {
  volatile uint64_t sink = 0;
  const auto words = static_cast<int64_t>(buf.size());
  const double ms = best_ms(reps, [&] { sink = sink + bench::parallel_sum(buf.data(), words); });
  return static_cast<double>(words) * 8 / ms / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 2048, cols = 8192;
  int reps = 5;
  for (bench::ArgWalker a(argc, argv); a.next();) {
    if (a.name() == "--rows") {
      rows = std::max<int64_t>(1, std::atoll(a.value()));
    } else if (a.name() == "--cols") {
      // Whole K-type super-blocks (the table always has the K types).
      cols = std::max<int64_t>(256, std::atoll(a.value()) / 256 * 256);
    } else if (a.name() == "--reps") {
      reps = std::max(1, std::atoi(a.value()));
    } else {
      std::fprintf(stderr, "usage: %s [--rows R] [--cols K] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  const lowbit::Shape shape{rows, cols};
  const int64_t n = rows * cols;
  lowbit::Tensor x = lowbit::Tensor::empty(shape, lowbit::Dtype::f32);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) x.data_as<float>()[i] = normal(rng);
  std::vector<uint64_t> stream_buf((size_t{256} << 20) / 8, 1);

  std::printf("GGUF quantize on the CPU, f32 [%lld, %lld], best of %d\n",
              static_cast<long long>(rows), static_cast<long long>(cols), reps);
  std::printf(
      "| type | kernel | threads | ms | GB/s | %% of read ceiling | bytes vs reference |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  int status = 0;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    const double ceiling = read_ceiling(stream_buf, reps);
    std::printf("| - | streaming read (u64 sum, 256 MiB) | %d | - | %.1f | 100.0 | - |\n", threads,
                ceiling);
    for (const char* text :
         {"q4_1", "q5_0", "q5_1", "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"}) {
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(text);
      lowbit::QuantizedTensor want = lowbit::QuantizedTensor::allocate(scheme, shape);
      for (const char* kernel : {"quantize_reference", "gguf_quantize_simd"}) {
        lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(scheme, shape);
        lowbit::Preference pref;
        pref.kernel = kernel;
        const lowbit::QuantizePlan plan =
            lowbit::QuantizePlan::select(lowbit::QuantizeDesc::for_views(q.view(), x), pref);
        const lowbit::QuantizeArgs args{x.view(), q.view()};
        const double ms = best_ms(reps, [&] { plan.run(lowbit::Stream(), {}, args); });
        const int64_t qbytes = lowbit::storage_bytes(q.codes.dtype(), q.codes.numel());
        const double gbps = static_cast<double>(n * 4 + qbytes) / ms / 1e6;
        const bool ref = std::string(kernel) == "quantize_reference";
        if (ref) std::memcpy(want.codes.data(), q.codes.data(), static_cast<size_t>(qbytes));
        const bool same =
            std::memcmp(want.codes.data(), q.codes.data(), static_cast<size_t>(qbytes)) == 0;
        if (!same) status = 1;
        std::printf("| %s | %s (%s) | %d | %.2f | %.2f | %.1f | %s |\n", text, kernel,
                    plan.sku().arch.c_str(), threads, ms, gbps, 100.0 * gbps / ceiling,
                    ref ? "-" : (same ? "identical" : "DIFFER"));
      }
    }
  }
  return status;
}
