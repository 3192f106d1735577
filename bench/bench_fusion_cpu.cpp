// CPU fusion: the 8-op element-wise chain over two bf16 inputs, against the machine's own
// streaming ceilings measured in the same run.
//
//   y = clamp(silu(a * 1.25 + b) * b - a * 0.5, -8, 8)     (bf16 in, bf16 out)
//   ops: mul, add, silu, mul, mul, sub, clamp, cast to bf16 = 8
//
// Ceilings (1 thread unless --threads): memcpy of 1 GiB, and "triad": y[i] = a[i] ^ b[i]
// on u16, the same bytes read and written as the chain with no arithmetic. Peers: the
// same chain unfused (one lowbit fuse() per op, bf16 intermediates in memory, as eager
// PyTorch runs it), a scalar loop over numeric.hpp calls, and lowbit's fused kernel with
// its scalar loops instead of the vector steps (the kernel before cpu_eval_simd.cpp). Two
// rows in cache (16 Ki elements) give the arithmetic's cost per element. Bandwidth counts
// bytes read plus written (6 bytes per element); after one warm-up each row runs once per
// round, --reps rounds interleaved; best-of and median reported.
//
// Usage: bench_fusion_cpu [--elements N] [--reps R] [--threads T]
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "jit/cpu_eval_simd.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Dtype;
using lowbit::Tensor;
using lowbit::fusion::Expr;

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
  for (bench::ArgWalker a(argc, argv); a.next();) {
    if (a.name() == "--elements") {
      n = std::atoll(a.value());
    } else if (a.name() == "--reps") {
      reps = std::max(1, std::atoi(a.value()));
    } else if (a.name() == "--threads") {
      threads = std::max(1, std::atoi(a.value()));
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
    bench::prefault(y.data(), y.nbytes());
    bench::prefault(t.data(), t.nbytes());
    const double bytes = 6.0 * static_cast<double>(n);

    // Every row is timed once per round, rounds interleaved (a shared machine's load
    // changes over seconds, and then hits every row alike); best-of and median reported.
    struct Row {
      std::string what;
      double bytes;
      std::function<void()> run;
    };
    std::vector<Row> rows;
    const int64_t copy_bytes = int64_t{1} << 30;
    std::vector<uint8_t> src(static_cast<size_t>(copy_bytes), 1),
        dst(static_cast<size_t>(copy_bytes));
    bench::prefault(dst.data(), copy_bytes);
    rows.push_back({"memcpy 1 GiB (ceiling)", 2.0 * copy_bytes,
                    [&] { bench::parallel_memcpy(dst.data(), src.data(), copy_bytes); }});
    rows.push_back({"triad y = a ^ b, u16 (ceiling)", bytes, [&] {
                      triad_u16(a.data_as<uint16_t>(), b.data_as<uint16_t>(), y.data_as<uint16_t>(),
                                n);
                    }});

    using namespace lowbit::fusion;
    const Expr ea = input(a), eb = input(b);
    const lowbit::Stream cpu;
    // The same chain with the vector steps (cpu_eval_simd.cpp) and with the scalar loops
    // (the kernel before them): plans remember the choice made when their schedule is built.
    const lowbit::FusedDesc desc = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
    const lowbit::FusedPlan plan = lowbit::FusedPlan::select(desc);
    const lowbit::FusedArgs args = desc.bound_args();
    plan.run(cpu, {}, args);
    lowbit::fusion::set_cpu_simd_for_testing(false);
    const lowbit::FusedDesc desc_scalar = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
    const lowbit::FusedPlan plan_scalar = lowbit::FusedPlan::select(desc_scalar);
    plan_scalar.run(cpu, {}, desc_scalar.bound_args());
    lowbit::fusion::set_cpu_simd_for_testing(true);
    rows.push_back({"lowbit fused, vector steps (" + plan.sku().arch + ")", bytes,
                    [&] { plan.run(cpu, {}, args); }});
    rows.push_back({"lowbit fused, scalar loops (" + plan_scalar.sku().arch + ")", bytes,
                    [&] { plan_scalar.run(cpu, {}, args); }});

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
    rows.push_back({"lowbit unfused (7 passes, bf16 in memory)", bytes, [&] {
                      for (size_t i = 0; i < steps.size(); ++i) steps[i].run(cpu, {}, step_args[i]);
                    }});

    // A scalar loop a user would write with numeric.hpp (not bit-identical: it may contract).
    rows.push_back({"scalar loop (numeric.hpp + libm expf)", bytes, [&] {
                      const auto* pa = a.data_as<const uint16_t>();
                      const auto* pb = b.data_as<const uint16_t>();
                      auto* py = y.data_as<uint16_t>();
#pragma omp parallel for schedule(static)
                      for (int64_t i = 0; i < n; ++i) {
                        const float av = lowbit::bf16_to_f32(pa[i]),
                                    bv = lowbit::bf16_to_f32(pb[i]);
                        const float x = av * 1.25f + bv;
                        const float s = x / (1.0f + std::exp(-x)) * bv - av * 0.5f;
                        py[i] = lowbit::f32_to_bf16(std::min(std::max(s, -8.0f), 8.0f));
                      }
                    }});

    // In cache: the chain over 16 Ki elements (96 KiB: L2), 256 calls per timing: the
    // arithmetic's cost per element without DRAM.
    const int64_t nc = int64_t{1} << 14;
    const int kCalls = 256;
    const lowbit::TensorView ca(a.data(), Dtype::bf16, {nc}), cb(b.data(), Dtype::bf16, {nc}),
        cy(t.data(), Dtype::bf16, {nc});
    const lowbit::FusedDesc cdesc = lowbit::FusedDesc::make({{cy, chain(input(ca), input(cb))}});
    const lowbit::FusedPlan cplan = lowbit::FusedPlan::select(cdesc);
    const lowbit::FusedArgs cargs = cdesc.bound_args();
    lowbit::fusion::set_cpu_simd_for_testing(false);
    const lowbit::FusedDesc cdesc_s = lowbit::FusedDesc::make({{cy, chain(input(ca), input(cb))}});
    const lowbit::FusedPlan cplan_s = lowbit::FusedPlan::select(cdesc_s);
    cplan_s.run(cpu, {}, cargs);  // the schedule (and its choice) is made at the first run
    lowbit::fusion::set_cpu_simd_for_testing(true);
    const double cbytes = 6.0 * static_cast<double>(nc) * kCalls;
    rows.push_back({"in cache (16 Ki elements x 256): vector steps", cbytes, [&] {
                      for (int k = 0; k < kCalls; ++k) cplan.run(cpu, {}, cargs);
                    }});
    rows.push_back({"in cache (16 Ki elements x 256): scalar loops", cbytes, [&] {
                      for (int k = 0; k < kCalls; ++k) cplan_s.run(cpu, {}, cargs);
                    }});

    std::vector<std::function<void()>> runs;
    for (const Row& r : rows) runs.push_back(r.run);
    const std::vector<bench::RunTimes> times = bench::interleaved_runs(reps, runs);
    plan.run(cpu, {}, args);  // leave y holding the fused result

    using bench::best_of;
    using bench::median_of;
    const double copy_gbs = rows[0].bytes / best_of(times[0].wall) / 1e9;
    const double triad_gbs = rows[1].bytes / best_of(times[1].wall) / 1e9;
    std::printf(
        "bench_fusion_cpu: y = clamp(silu(a*1.25 + b)*b - a*0.5, -8, 8), %lld bf16 "
        "elements x 2 inputs, %d thread(s), %d interleaved rounds; %s\n\n",
        static_cast<long long>(n), threads, reps, lowbit::cpu_features().str().c_str());
    std::printf(
        "| what | best ms | median ms | GB/s (best) | ns/element | %% of memcpy | %% of triad | "
        "cpu ms (best) |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      const bench::RunTimes& t = times[i];
      const double gbs = r.bytes / best_of(t.wall) / 1e9;
      std::printf("| %s | %.2f | %.2f | %.1f | %.3f | %.0f%% | %.0f%% | %.2f |\n", r.what.c_str(),
                  best_of(t.wall) * 1e3, median_of(t.wall) * 1e3, gbs, 6.0 / gbs,
                  100.0 * gbs / copy_gbs, 100.0 * gbs / triad_gbs, best_of(t.cpu) * 1e3);
    }
    if (threads == 1)
      std::printf(
          "\ncpu ms: the thread's CPU time; wall time in the other columns. On a shared "
          "machine the two differ by the time other processes held the core.\n");
    std::printf("\nunfused moves %.1fx the bytes of the fused pass; fused is %.1fx faster\n",
                unfused_bytes / bytes, best_of(times[4].wall) / best_of(times[2].wall));
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_fusion_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
