// CPU fusion: the 8-op element-wise chain over two bf16 inputs, against the machine's own
// streaming ceilings measured in the same run.
//
//   y = clamp(silu(a * 1.25 + b) * b - a * 0.5, -8, 8)     (bf16 in, bf16 out)
//   ops: mul, add, silu, mul, mul, sub, clamp, cast to bf16 = 8
//
// Ceilings (1 thread unless --threads): memcpy of 1 GiB, and "triad": y[i] = a[i] ^ b[i]
// on u16, the same bytes read and written as the chain with no arithmetic. Peers: the
// same chain unfused (one lowbit fuse() per op, bf16 intermediates in memory, as eager
// PyTorch runs it), and a scalar loop over numeric.hpp calls. Bandwidth counts bytes read
// plus written (6 bytes per element); medians of --reps timed runs after one warm-up.
//
// Usage: bench_fusion_cpu [--elements N] [--reps R] [--threads T]
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Dtype;
using lowbit::Tensor;
using lowbit::fusion::Expr;

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// The last measurement's median CPU time of the calling thread (meaningful with one
/// thread: on a shared machine it leaves out the time other processes held the core).
double g_cpu_seconds = 0;

double median_seconds(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> t, c;
  for (int r = 0; r < reps; ++r) {
    const double c0 = thread_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    c.push_back(thread_cpu_seconds() - c0);
  }
  std::sort(t.begin(), t.end());
  std::sort(c.begin(), c.end());
  g_cpu_seconds = c[c.size() / 2];
  return t[t.size() / 2];
}

void prefault(void* p, int64_t bytes) {
  auto* c = static_cast<uint8_t*>(p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < bytes; i += 4096) c[i] = 0;
}

void parallel_memcpy(void* dst, const void* src, int64_t bytes) {
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t per = (bytes / n) & ~int64_t{63};
    const int64_t lo = per * t, hi = t == n - 1 ? bytes : lo + per;
    std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo,
                static_cast<size_t>(hi - lo));
  }
}

void triad_u16(const uint16_t* a, const uint16_t* b, uint16_t* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<uint16_t>(a[i] ^ b[i]);
}

Expr chain(const Expr& a, const Expr& b) {
  using namespace lowbit::fusion;
  return clamp(silu(a * 1.25 + b) * b - a * 0.5, -8.0, 8.0);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = int64_t{1} << 26;
  int reps = 7;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--elements" && i + 1 < argc) {
      n = std::atoll(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--elements N] [--reps R] [--threads T]\n", argv[0]);
      return 2;
    }
  }
  omp_set_num_threads(threads);
  try {
    Tensor a = Tensor::empty({n}, Dtype::bf16), b = Tensor::empty({n}, Dtype::bf16);
    Tensor y = Tensor::empty({n}, Dtype::bf16), t = Tensor::empty({n}, Dtype::bf16);
    {
      auto* pa = a.data_as<uint16_t>();
      auto* pb = b.data_as<uint16_t>();
#pragma omp parallel
      {
        std::mt19937 rng(99u + static_cast<unsigned>(omp_get_thread_num()));
        std::normal_distribution<float> normal(0.0f, 1.0f);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
          pa[i] = lowbit::f32_to_bf16(normal(rng));
          pb[i] = lowbit::f32_to_bf16(normal(rng));
        }
      }
    }
    prefault(y.data(), y.nbytes());
    prefault(t.data(), t.nbytes());
    const double bytes = 6.0 * static_cast<double>(n);

    struct Row {
      std::string what;
      double seconds, bytes;
      double cpu = g_cpu_seconds;
    };
    std::vector<Row> rows;
    const int64_t copy_bytes = int64_t{1} << 30;
    std::vector<uint8_t> src(static_cast<size_t>(copy_bytes), 1),
        dst(static_cast<size_t>(copy_bytes));
    prefault(dst.data(), copy_bytes);
    const double t_copy =
        median_seconds(reps, [&] { parallel_memcpy(dst.data(), src.data(), copy_bytes); });
    rows.push_back({"memcpy 1 GiB (ceiling)", t_copy, 2.0 * copy_bytes});
    const double t_triad = median_seconds(reps, [&] {
      triad_u16(a.data_as<uint16_t>(), b.data_as<uint16_t>(), y.data_as<uint16_t>(), n);
    });
    rows.push_back({"triad y = a ^ b, u16 (ceiling)", t_triad, bytes});

    using namespace lowbit::fusion;
    const Expr ea = input(a), eb = input(b);
    const lowbit::FusedDesc desc = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
    const lowbit::FusedPlan plan = lowbit::FusedPlan::select(desc);
    const lowbit::FusedArgs args = desc.bound_args();
    const lowbit::Stream cpu;
    const double t_fused = median_seconds(reps, [&] { plan.run(cpu, {}, args); });
    rows.push_back(
        {"lowbit fused (" + plan.sku().kernel + ", " + plan.sku().arch + ")", t_fused, bytes});

    // Unfused: one pass per op through bf16 tensors in memory (eager PyTorch's traffic).
    const Expr et = input(t), ey = input(y);
    std::vector<lowbit::FusedPlan> steps;
    std::vector<lowbit::FusedArgs> step_args;
    double unfused_bytes = 0;
    auto add_step = [&](const Tensor& out, const Expr& e, int reads) {
      const lowbit::FusedDesc d = lowbit::FusedDesc::make({{out, e}});
      steps.push_back(lowbit::FusedPlan::select(d));
      step_args.push_back(d.bound_args());
      unfused_bytes += 2.0 * static_cast<double>(n) * (reads + 1);
    };
    add_step(t, ea * 1.25, 1);             // t = a * 1.25
    add_step(t, et + eb, 2);               // t = t + b
    add_step(t, silu(et), 1);              // t = silu(t)
    add_step(t, et * eb, 2);               // t = t * b
    add_step(y, ea * 0.5, 1);              // y = a * 0.5
    add_step(y, et - ey, 2);               // y = t - y
    add_step(y, clamp(ey, -8.0, 8.0), 1);  // y = clamp(y)
    const double t_unfused = median_seconds(reps, [&] {
      for (size_t i = 0; i < steps.size(); ++i) steps[i].run(cpu, {}, step_args[i]);
    });
    rows.push_back({"lowbit unfused (7 passes, bf16 in memory)", t_unfused, bytes});

    // A scalar loop a user would write with numeric.hpp (not bit-identical: it may contract).
    const double t_scalar = median_seconds(reps, [&] {
      const auto* pa = a.data_as<const uint16_t>();
      const auto* pb = b.data_as<const uint16_t>();
      auto* py = y.data_as<uint16_t>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        const float av = lowbit::bf16_to_f32(pa[i]), bv = lowbit::bf16_to_f32(pb[i]);
        const float x = av * 1.25f + bv;
        const float s = x / (1.0f + std::exp(-x)) * bv - av * 0.5f;
        py[i] = lowbit::f32_to_bf16(std::min(std::max(s, -8.0f), 8.0f));
      }
    });
    rows.push_back({"scalar loop (numeric.hpp + libm expf)", t_scalar, bytes});
    // Leave y holding the fused result.
    plan.run(cpu, {}, args);

    const double copy_gbs = 2.0 * copy_bytes / t_copy / 1e9;
    const double triad_gbs = bytes / t_triad / 1e9;
    std::printf(
        "bench_fusion_cpu: y = clamp(silu(a*1.25 + b)*b - a*0.5, -8, 8), %lld bf16 "
        "elements x 2 inputs, %d thread(s), median of %d; %s\n\n",
        static_cast<long long>(n), threads, reps, lowbit::cpu_features().str().c_str());
    std::printf("| what | ms | GB/s (read + written) | %% of memcpy | %% of triad | cpu ms |\n");
    std::printf("|---|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows) {
      const double gbs = r.bytes / r.seconds / 1e9;
      std::printf("| %s | %.2f | %.1f | %.0f%% | %.0f%% | %.2f |\n", r.what.c_str(),
                  r.seconds * 1e3, gbs, 100.0 * gbs / copy_gbs, 100.0 * gbs / triad_gbs,
                  r.cpu * 1e3);
    }
    if (threads == 1)
      std::printf(
          "\ncpu ms: the thread's CPU time (median); wall time above. On a shared "
          "machine the two differ by the time other processes held the core.\n");
    std::printf("\nunfused moves %.1fx the bytes of the fused pass; fused is %.1fx faster\n",
                unfused_bytes / bytes, t_unfused / t_fused);
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_fusion_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
