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
// rows in cache (16 Ki elements) give the arithmetic's cost per element. The bound of the
// exact arithmetic: the same chain as one hand-written Highway loop over the same vector
// formulas (jit/cpu_math_simd-inl.h), compiled ahead of time, so no interpreter or JIT could
// beat it with these bits; its output is compared with lowbit's, bit for bit. Bandwidth counts
// bytes read plus written (6 bytes per element); after one warm-up each row runs once per
// round, --reps rounds interleaved; best-of and median reported.
//
// Usage: bench_fusion_cpu [--elements N] [--reps R] [--threads T]
#ifndef BENCH_FUSION_CPU_SHARED_
#define BENCH_FUSION_CPU_SHARED_
#include <omp.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "jit/cpu_eval_simd.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/tensor.hpp"
#endif  // BENCH_FUSION_CPU_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench_fusion_cpu.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "jit/cpu_math_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
namespace fusion_simd {

/// The chain as one loop, U vectors at a time (8 measured fastest here: more independent
/// divisions and exps in flight), the formulas lowbit's vector steps use (silu as x /
/// lb_exp_n1p(-x), the clamp's constant bounds as minps / maxps, bf16 by lb_bf16_code).
/// n a multiple of U vectors; non-temporal stores with `stream` (y 64-byte aligned).
void chain8_loop(const uint16_t* pa, const uint16_t* pb, uint16_t* py, int64_t n, bool stream) {
  const D d;
  const hn::Rebind<uint16_t, D> d16;
  constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(D()));
  constexpr int U = 8;
  for (int64_t i = 0; i + U * N <= n; i += U * N) {
    V r[U];
    for (int u = 0; u < U; ++u) {
      const V a = load_bf16(pa + i + u * N), b = load_bf16(pb + i + u * N);
      const V x = a * F(1.25f) + b;
      const V t = (x / lb_exp_n1p(hn::Neg(x))) * b - a * F(0.5f);
      r[u] = lt_select(F(8.0f), gt_select(F(-8.0f), t));
    }
    for (int u = 0; u < U; ++u) {
      const auto codes = hn::DemoteTo(d16, hn::BitCast(DI(), lb_bf16_code(r[u])));
      if (stream) {
        hn::Stream(codes, d16, py + i + u * N);
      } else {
        hn::StoreU(codes, d16, py + i + u * N);
      }
    }
  }
}

}  // namespace fusion_simd

/// The loop over [0, n) on the caller's OpenMP threads; false where the target has no vector
/// math (not x86 with FMA) or n is not a multiple of 128.
bool Chain8Loop(const uint16_t* a, const uint16_t* b, uint16_t* y, int64_t n) {
  if (n % 128) return false;
  const bool stream = reinterpret_cast<uintptr_t>(y) % 64 == 0 && n >= (int64_t{1} << 20);
#pragma omp parallel
  {
    const int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t b0 = n / 128 * me / parts * 128, b1 = n / 128 * (me + 1) / parts * 128;
    fusion_simd::chain8_loop(a + b0, b + b0, y + b0, b1 - b0, stream);
    if (stream) _mm_sfence();  // order the non-temporal stores before the call returns
  }
  return true;
}
#else
bool Chain8Loop(const uint16_t*, const uint16_t*, uint16_t*, int64_t) { return false; }
#endif

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {
HWY_EXPORT(Chain8Loop);
}  // namespace lowbit

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
  // The CPU JIT's rows compile every size (its default leaves calls under 2^20 elements,
  // such as the in-cache rows, to the interpreter); LOWBIT_FUSION_CPU_JIT=0 turns it off.
  setenv("LOWBIT_FUSION_CPU_JIT", "1", 0);
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
    lowbit::Preference interp;
    interp.kernel = "fused_cpu";
    const lowbit::FusedDesc desc = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
    const lowbit::FusedPlan plan = lowbit::FusedPlan::select(desc, interp);
    const lowbit::FusedArgs args = desc.bound_args();
    plan.run(cpu, {}, args);
    lowbit::fusion::set_cpu_simd_for_testing(false);
    const lowbit::FusedDesc desc_scalar = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
    const lowbit::FusedPlan plan_scalar = lowbit::FusedPlan::select(desc_scalar, interp);
    plan_scalar.run(cpu, {}, desc_scalar.bound_args());
    lowbit::fusion::set_cpu_simd_for_testing(true);
    rows.push_back({"lowbit fused, interpreter: vector steps (" + plan.sku().arch + ")", bytes,
                    [&] { plan.run(cpu, {}, args); }});
    rows.push_back({"lowbit fused, interpreter: scalar loops (" + plan_scalar.sku().arch + ")",
                    bytes, [&] { plan_scalar.run(cpu, {}, args); }});
    // The CPU JIT (fused_cpu_jit): the chain compiled by the host's C++ compiler, exact and
    // with the opt-in fast math; its first run compiles, or loads the disk cache's object.
    lowbit::Preference jit;
    jit.kernel = "fused_cpu_jit";
    const std::string jit_why = lowbit::fused_cpu_jit_kernel().decline(desc);
    std::optional<lowbit::FusedPlan> plan_jit, plan_fast;
    std::optional<lowbit::FusedDesc> desc_jit, desc_fast;
    if (jit_why.empty()) {
      auto first_run = [&](std::optional<lowbit::FusedDesc>& d,
                           std::optional<lowbit::FusedPlan>& pl, bool fast, const char* what) {
        d = lowbit::FusedDesc::make({{y, chain(ea, eb)}});
        d->fast_math = fast;
        pl = lowbit::FusedPlan::select(*d, jit);
        const auto t0 = std::chrono::steady_clock::now();
        pl->run(cpu, {}, d->bound_args());
        std::printf("fused_cpu_jit %s: first run (compile, or load from the disk cache) %.1f ms\n",
                    what,
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count());
      };
      first_run(desc_jit, plan_jit, false, "exact");
      first_run(desc_fast, plan_fast, true, "fast math");
      rows.push_back(
          {"lowbit fused, compiled (fused_cpu_jit)", bytes, [&] { plan_jit->run(cpu, {}, args); }});
      rows.push_back({"lowbit fused, compiled, fast math (fused_cpu_jit_fast)", bytes,
                      [&] { plan_fast->run(cpu, {}, args); }});
    } else {
      std::printf("fused_cpu_jit not run: %s\n", jit_why.c_str());
    }

    // The bound of these bits: the hand-written loop (skipped where it does not run).
    const bool have_loop = HWY_DYNAMIC_DISPATCH(lowbit::Chain8Loop)(
        a.data_as<uint16_t>(), b.data_as<uint16_t>(), t.data_as<uint16_t>(), n);
    if (have_loop) {
      rows.push_back({"bound: hand-written loop, the same exact arithmetic", bytes, [&] {
                        HWY_DYNAMIC_DISPATCH(lowbit::Chain8Loop)
                        (a.data_as<uint16_t>(), b.data_as<uint16_t>(), t.data_as<uint16_t>(), n);
                      }});
    }

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
    const size_t unfused_row = rows.size();
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
    const lowbit::FusedPlan cplan = lowbit::FusedPlan::select(cdesc, interp);
    const lowbit::FusedArgs cargs = cdesc.bound_args();
    lowbit::fusion::set_cpu_simd_for_testing(false);
    const lowbit::FusedDesc cdesc_s = lowbit::FusedDesc::make({{cy, chain(input(ca), input(cb))}});
    const lowbit::FusedPlan cplan_s = lowbit::FusedPlan::select(cdesc_s, interp);
    cplan_s.run(cpu, {}, cargs);  // the schedule (and its choice) is made at the first run
    lowbit::fusion::set_cpu_simd_for_testing(true);
    const double cbytes = 6.0 * static_cast<double>(nc) * kCalls;
    rows.push_back({"in cache (16 Ki elements x 256): vector steps", cbytes, [&] {
                      for (int k = 0; k < kCalls; ++k) cplan.run(cpu, {}, cargs);
                    }});
    const size_t cache_vector_row = rows.size() - 1;  // the in-cache vector steps, just above
    rows.push_back({"in cache (16 Ki elements x 256): scalar loops", cbytes, [&] {
                      for (int k = 0; k < kCalls; ++k) cplan_s.run(cpu, {}, cargs);
                    }});
    std::optional<lowbit::FusedPlan> cplan_jit, cplan_fast;
    std::optional<lowbit::FusedDesc> cdesc_jit, cdesc_fast;
    if (jit_why.empty()) {  // (the bench sets LOWBIT_FUSION_CPU_JIT=1: every size compiles)
      cdesc_jit = lowbit::FusedDesc::make({{cy, chain(input(ca), input(cb))}});
      cdesc_fast = lowbit::FusedDesc::make({{cy, chain(input(ca), input(cb))}});
      cdesc_fast->fast_math = true;
      cplan_jit = lowbit::FusedPlan::select(*cdesc_jit, jit);
      cplan_fast = lowbit::FusedPlan::select(*cdesc_fast, jit);
      rows.push_back({"in cache (16 Ki elements x 256): compiled", cbytes, [&] {
                        for (int k = 0; k < kCalls; ++k) cplan_jit->run(cpu, {}, cargs);
                      }});
      rows.push_back({"in cache (16 Ki elements x 256): compiled, fast math", cbytes, [&] {
                        for (int k = 0; k < kCalls; ++k) cplan_fast->run(cpu, {}, cargs);
                      }});
    }
    if (have_loop) {
      rows.push_back({"in cache (16 Ki elements x 256): bound, hand-written loop", cbytes, [&] {
                        for (int k = 0; k < kCalls; ++k) HWY_DYNAMIC_DISPATCH(lowbit::Chain8Loop)
                        (a.data_as<uint16_t>(), b.data_as<uint16_t>(), t.data_as<uint16_t>(), nc);
                      }});
    }

    std::vector<std::function<void()>> runs;
    for (const Row& r : rows) runs.push_back(r.run);
    const std::vector<bench::RunTimes> times = bench::interleaved_runs(reps, runs);
    plan.run(cpu, {}, args);   // leave y holding the fused result
    int64_t loop_differs = 0;  // elements where the hand-written loop's bits are not lowbit's
    if (have_loop) {
      HWY_DYNAMIC_DISPATCH(lowbit::Chain8Loop)
      (a.data_as<uint16_t>(), b.data_as<uint16_t>(), t.data_as<uint16_t>(), n);
      for (int64_t i = 0; i < n; ++i)
        loop_differs += t.data_as<uint16_t>()[i] != y.data_as<uint16_t>()[i];
    }

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
                unfused_bytes / bytes, best_of(times[unfused_row].wall) / best_of(times[2].wall));
    if (have_loop)
      std::printf(
          "hand-written loop: %s lowbit's output (%lld of %lld elements differ); lowbit's vector "
          "steps take %.2fx its time in cache\n",
          loop_differs ? "NOT bit-identical to" : "bit-identical to",
          static_cast<long long>(loop_differs), static_cast<long long>(n),
          best_of(times[cache_vector_row].wall) / best_of(times.back().wall));
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_fusion_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif  // HWY_ONCE
