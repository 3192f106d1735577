// CPU convert throughput against the machine's own streaming ceilings, measured in the
// same run: memcpy of 1 GiB (bytes read + written) and a streaming read/sum, on 1 and 2
// threads; then lowbit::convert through the public API (ConvertPlan) on 2^26 elements of
// roughly normal data (mean 0, sigma 1), and peers for the same pairs: the scalar loop a
// user would write with numeric.hpp, and the F16C / AVX-512 hardware f32 <-> f16
// conversion (a speed peer only: it differs from numpy's rules on NaN payloads).
//
// Usage: bench_convert_cpu [--elements N] [--reps R] [--copy-mib M]
// Prints one markdown table; GB/s counts bytes read + written; "% of copy" compares with
// the memcpy ceiling on the same number of threads. Medians of R timed runs after one
// warm-up run.
#include <fmt/format.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Dtype;
using lowbit::Shape;
using lowbit::Tensor;
using lowbit::TensorView;

struct Options {
  int64_t elements = int64_t{1} << 26;
  int reps = 7;
  int64_t copy_bytes = int64_t{1} << 30;
};

Options parse(int argc, char** argv) {
  Options o;
  for (bench::ArgWalker a(argc, argv); a.next();) {
    if (a.name() == "--elements") {
      o.elements = std::atoll(a.value());
    } else if (a.name() == "--reps") {
      o.reps = static_cast<int>(std::atoll(a.value()));
    } else if (a.name() == "--copy-mib") {
      o.copy_bytes = std::atoll(a.value()) << 20;
    } else {
      std::fprintf(stderr, "usage: %s [--elements N] [--reps R] [--copy-mib M]\n", argv[0]);
      std::exit(2);
    }
  }
  return o;
}

// ---- peers ------------------------------------------------------------------------------

// What a user would write: one numeric.hpp call per element (OpenMP across threads, like
// lowbit), compiled with the project's flags.
void scalar_f32_to_bf16(const float* s, uint16_t* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) d[i] = lowbit::f32_to_bf16(s[i]);
}
void scalar_bf16_to_f32(const uint16_t* s, float* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) d[i] = lowbit::bf16_to_f32(s[i]);
}
void scalar_f32_to_f16(const float* s, uint16_t* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) d[i] = lowbit::f32_to_f16(s[i]);
}
void scalar_f16_to_f32(const uint16_t* s, float* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) d[i] = lowbit::f16_to_f32(s[i]);
}

// Hardware conversion (round to nearest even), the fastest a CPU offers for f16.
__attribute__((target("avx512f"))) void avx512_f32_to_f16(const float* s, uint16_t* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n - 15; i += 16)
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(d + i),
        _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
__attribute__((target("avx512f"))) void avx512_f16_to_f32(const uint16_t* s, float* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n - 15; i += 16)
    _mm512_storeu_ps(d + i,
                     _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
}
__attribute__((target("avx,f16c"))) void f16c_f32_to_f16(const float* s, uint16_t* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n - 7; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("avx,f16c"))) void f16c_f16_to_f32(const uint16_t* s, float* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n - 7; i += 8)
    _mm256_storeu_ps(d + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
}

// ---- the table ----------------------------------------------------------------------------

struct Row {
  std::string pair, impl;
  int threads;
  double seconds, bytes;
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const int64_t n = opt.elements;
  const int max_threads = std::min(2, omp_get_max_threads());
  const lowbit::CpuFeatures& cpu = lowbit::cpu_features();

  // Inputs: roughly normal f32 (a sum of four uniforms, scaled to sigma 1), and its
  // bf16 and f16 conversions. Made in parallel; only the timings matter here.
  Tensor f32 = Tensor::empty(Shape{n}, Dtype::f32);
  Tensor bf16 = Tensor::empty(Shape{n}, Dtype::bf16);
  Tensor f16 = Tensor::empty(Shape{n}, Dtype::f16);
  {
    bench::fill_roughly_normal(f32.data_as<float>(), n);
    lowbit::convert(bf16, f32);
    lowbit::convert(f16, f32);
  }
  // Outputs, one per destination dtype.
  Tensor out_f32 = Tensor::empty(Shape{n}, Dtype::f32);
  Tensor out_bf16 = Tensor::empty(Shape{n}, Dtype::bf16);
  Tensor out_f16 = Tensor::empty(Shape{n}, Dtype::f16);
  Tensor out_e4m3 = Tensor::empty(Shape{n}, Dtype::f8e4m3fn);
  Tensor out_f4 = Tensor::empty(Shape{n}, Dtype::f4e2m1);
  Tensor out_e8m0 = Tensor::empty(Shape{n}, Dtype::e8m0);
  for (const Tensor* t : {&out_f32, &out_bf16, &out_f16, &out_e4m3, &out_f4, &out_e8m0})
    bench::prefault(t->data(), t->nbytes());

  std::vector<uint8_t> copy_src(static_cast<size_t>(opt.copy_bytes), 1),
      copy_dst(static_cast<size_t>(opt.copy_bytes));
  bench::prefault(copy_dst.data(), opt.copy_bytes);

  struct Pair {
    const char* name;
    const Tensor* src;
    const Tensor* dst;
  };
  const Pair pairs[] = {
      {"f32->bf16", &f32, &out_bf16},       {"bf16->f32", &bf16, &out_f32},
      {"bf16->f8e4m3fn", &bf16, &out_e4m3}, {"f32->f8e4m3fn", &f32, &out_e4m3},
      {"f32->f16", &f32, &out_f16},         {"f16->f32", &f16, &out_f32},
      {"f32->f4e2m1", &f32, &out_f4},       {"f32->e8m0", &f32, &out_e8m0},
  };

  std::vector<Row> rows;
  std::vector<double> copy_gbs(3, 0.0);
  std::string arch;
  volatile uint64_t sink = 0;
  for (int threads = 1; threads <= max_threads; ++threads) {
    omp_set_num_threads(threads);
    const double cb = static_cast<double>(opt.copy_bytes);
    const double t_copy = bench::median_seconds(opt.reps, [&] {
      bench::parallel_memcpy(copy_dst.data(), copy_src.data(), opt.copy_bytes);
    });
    rows.push_back({"memcpy 1 GiB (ceiling)", "libc memcpy", threads, t_copy, 2 * cb});
    copy_gbs[threads] = 2 * cb / t_copy / 1e9;
    const double t_read = bench::median_seconds(opt.reps, [&] {
      sink = sink + bench::parallel_sum(reinterpret_cast<const uint64_t*>(copy_src.data()),
                                        opt.copy_bytes / 8);
    });
    rows.push_back({"read/sum 1 GiB", "u64 sum loop", threads, t_read, cb});

    for (const Pair& p : pairs) {
      const lowbit::ConvertPlan plan =
          lowbit::ConvertPlan::select(lowbit::ConvertDesc::for_views(*p.dst, *p.src));
      arch = plan.sku().arch;
      const double bytes =
          static_cast<double>(p.src->nbytes() + lowbit::storage_bytes(p.dst->dtype(), n));
      const lowbit::Stream stream;
      const double t = bench::median_seconds(opt.reps, [&] {
        plan.run(stream, {}, {*p.src, *p.dst});
      });
      rows.push_back({p.name, "lowbit " + plan.sku().kernel, threads, t, bytes});

      // Peers for the same pair.
      const std::string name = p.name;
      auto peer = [&](const char* impl, const std::function<void()>& f) {
        rows.push_back({p.name, impl, threads, bench::median_seconds(opt.reps, f), bytes});
      };
      const auto* sf = f32.data_as<const float>();
      const auto* sb = bf16.data_as<const uint16_t>();
      const auto* sh = f16.data_as<const uint16_t>();
      if (name == "f32->bf16")
        peer("scalar numeric.hpp loop",
             [&] { scalar_f32_to_bf16(sf, out_bf16.data_as<uint16_t>(), n); });
      if (name == "bf16->f32")
        peer("scalar numeric.hpp loop",
             [&] { scalar_bf16_to_f32(sb, out_f32.data_as<float>(), n); });
      if (name == "f32->f16") {
        peer("scalar numeric.hpp loop",
             [&] { scalar_f32_to_f16(sf, out_f16.data_as<uint16_t>(), n); });
        if (__builtin_cpu_supports("avx512f"))
          peer("_mm512_cvtps_ph (hw)",
               [&] { avx512_f32_to_f16(sf, out_f16.data_as<uint16_t>(), n); });
        if (__builtin_cpu_supports("f16c"))
          peer("_mm256_cvtps_ph (hw)",
               [&] { f16c_f32_to_f16(sf, out_f16.data_as<uint16_t>(), n); });
      }
      if (name == "f16->f32") {
        peer("scalar numeric.hpp loop",
             [&] { scalar_f16_to_f32(sh, out_f32.data_as<float>(), n); });
        if (__builtin_cpu_supports("avx512f"))
          peer("_mm512_cvtph_ps (hw)", [&] { avx512_f16_to_f32(sh, out_f32.data_as<float>(), n); });
        if (__builtin_cpu_supports("f16c"))
          peer("_mm256_cvtph_ps (hw)", [&] { f16c_f16_to_f32(sh, out_f32.data_as<float>(), n); });
      }
    }
  }

  std::printf(
      "bench_convert_cpu: %lld elements (roughly normal, sigma 1), median of %d runs; lowbit "
      "dispatches to %s; %s\n\n",
      static_cast<long long>(n), opt.reps, arch.c_str(), cpu.str().c_str());
  std::printf(
      "| pair | implementation | threads | ms | GB/s (read + written) | %% of copy ceiling |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  // Grouped by pair, then threads, so that each pair's rows sit together.
  for (const std::string& pair : bench::first_seen_order(rows, [](const Row& r) { return r.pair; }))
    for (const Row& r : rows)
      if (r.pair == pair) {
        const double gbs = r.bytes / r.seconds / 1e9;
        std::printf("| %s | %s | %d | %.2f | %.1f | %.0f%% |\n", r.pair.c_str(), r.impl.c_str(),
                    r.threads, r.seconds * 1e3, gbs, 100.0 * gbs / copy_gbs[r.threads]);
      }
  return 0;
}
