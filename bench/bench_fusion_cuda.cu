// bench_fusion_cuda: fused element-wise expressions on GPU 0 against the device-to-device
// copy ceiling, and the JIT's own costs, measured in one process.
//
// Rows:
//  - copy d2d (cudaMemcpyAsync, 1 GiB): the ceiling;
//  - chain8: y = clamp(silu(a * 1.25 + b) * b - a * 0.5, -8, 8) over 2^28 bf16 elements,
//    two inputs (8 ops: mul, add, silu, mul, mul, sub, clamp, cast), bytes = 6 per element;
//  - silu(a) * b, the gated-MLP pattern, same size;
//  - chain8 unfused: seven lowbit passes through bf16 tensors (eager PyTorch's traffic);
//  - bias + gelu over [2^14, 2^14] with a [2^14] bf16 bias (broadcast: the strided kernel);
//  - the quantize epilogue: silu(a) * b over [2^28 / 8192, 8192] quantized per token to
//    fp8e4m3 (and int8, mxfp4) in the same kernel, bytes = 4 per element in, the codes and
//    scales out; with the finiteness check off (no synchronisation), on, and on with a
//    CheckReport (the refusal recorded, no wait);
//  - JIT costs: cold compile (NVRTC, empty caches), disk-cache load (a new process would
//    see: memory cache cleared), in-memory hit plus launch (a new descriptor each call:
//    program build, plan selection, cache lookup, launch; CPU microseconds per call, on
//    4096-element tensors so that the queue never fills), and a plan's steady-state
//    launch overhead.
// Kernel timings: CUDA events around each repetition, repetitions queued back to back
// after warm-up, median reported. Every fused row's first 2^20 elements are checked bit for
// bit against the CPU kernel ("exact"). The disk cache lives in a fresh temporary directory
// ($LOWBIT_CACHE_DIR is set before the first use), so "cold" is cold.
//
// Usage: bench_fusion_cuda [--json PATH] [--reps N] [--log2 K]   (K: log2 of elements, 28)
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bench_cuda_harness.cuh"
#include "jit/jit.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;
using lowbit::FusedArgs;
using lowbit::FusedDesc;
using lowbit::FusedPlan;
using lowbit::Tensor;
using lowbit::fusion::Expr;

using bench::check;
using bench::json_escape;
using bench::median_ms;

/// Normal(0, 1) samples as bf16 (a counter hash and Box-Muller).
__global__ void fill_normal_bf16(uint16_t* out, uint64_t n, uint64_t seed) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = (static_cast<uint32_t>(z) + 1.0f) * 0x1p-32f;
    const float u2 = static_cast<uint32_t>(z >> 32) * 0x1p-32f;
    const float v = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    out[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);  // truncation is fine here
  }
}

struct Row {
  std::string pair;
  int64_t elements = 0;
  double bytes = 0;
  double ms = 0;
  double gbps = 0;
  double pct = 0;
  std::string kernel;
  std::string check = "-";
};

/// CPU time of the calling thread.
double cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return 1e3 * static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_nsec);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// A contiguous view of the first n elements of t (on its device).
lowbit::TensorView head(const Tensor& t, int64_t n) {
  return lowbit::TensorView(t.data(), t.dtype(), {n}, t.device());
}

/// Runs `make(views)` on host copies of the first n elements of `inputs` with the CPU
/// kernel and compares with the first n elements of the GPU output `out`.
std::string check_prefix(const std::vector<const Tensor*>& inputs, const Tensor& out, int64_t n,
                         const std::function<Expr(const std::vector<Expr>&)>& make,
                         bool fast = false) {
  std::vector<Tensor> host;
  std::vector<Expr> leaves;
  for (const Tensor* t : inputs) {
    host.push_back(Tensor::empty({n}, t->dtype()));
    lowbit::copy(host.back(), head(*t, n));
  }
  for (const Tensor& h : host) leaves.push_back(lowbit::fusion::input(h));
  Tensor want = Tensor::empty({n}, out.dtype());
  lowbit::fuse({{want, make(leaves)}});
  Tensor got = Tensor::empty({n}, out.dtype());
  lowbit::copy(got, head(out, n));
  if (!fast)
    return std::memcmp(want.data(), got.data(), static_cast<size_t>(want.nbytes())) == 0
               ? "exact"
               : "MISMATCH";
  // Fast math: the largest difference from the exact kernel, relative to max(|exact|, 1),
  // and the share of elements whose bits differ (bf16 outputs: one rounding apart).
  Tensor w32 = Tensor::empty({n}, Dtype::f32), g32 = Tensor::empty({n}, Dtype::f32);
  lowbit::convert(w32, want);
  lowbit::convert(g32, got);
  double worst = 0;
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double w = w32.data_as<float>()[i], g = g32.data_as<float>()[i];
    if (std::isnan(w) != std::isnan(g)) return "MISMATCH (NaN)";
    if (std::isnan(w)) continue;
    differ += w != g;
    worst = std::max(worst, std::fabs(g - w) / std::max(std::fabs(w), 1.0));
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "fast: max err %.1e, %.2f%% differ", worst,
                100.0 * static_cast<double>(differ) / static_cast<double>(n));
  // Two bf16 roundings apart at most (2^-7 relative): anything larger is a defect.
  return worst <= 0x1p-7 ? buf : std::string("MISMATCH (") + buf + ")";
}

Expr chain8(const std::vector<Expr>& x) {
  using namespace lowbit::fusion;
  return clamp(silu(x[0] * 1.25 + x[1]) * x[1] - x[0] * 0.5, -8.0, 8.0);
}
Expr gated(const std::vector<Expr>& x) { return lowbit::fusion::silu(x[0]) * x[1]; }

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_fusion_cuda";
  std::string json_path;
  int reps = 30;
  int log2n = 28;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(5, std::atoi(argv[++i]));
    } else if (a == "--log2" && i + 1 < argc) {
      log2n = std::clamp(std::atoi(argv[++i]), 12, 30);
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--reps N>=5] [--log2 K]\n", argv[0]);
      return 2;
    }
  }
  if (bench::skip_without_gpu()) return 0;
  // A fresh disk cache, so that the first compile is cold.
  const std::filesystem::path cache_dir =
      std::filesystem::temp_directory_path() / ("lowbit_bench_cache_" + std::to_string(::getpid()));
  ::setenv("LOWBIT_CACHE_DIR", cache_dir.c_str(), 1);
  int rc = 0;
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int warmup = 5;
    std::vector<Row> rows;

    {
      Row r;
      r.pair = "copy d2d (cudaMemcpyAsync, 1 GiB)";
      r.elements = bench::kCopyBytes;
      r.bytes = 2.0 * bench::kCopyBytes;
      r.ms = bench::copy_d2d_ms(gpu, stream, [&](const std::function<void()>& copy) {
        return median_ms(s, warmup, reps, copy);
      });
      r.kernel = "cudaMemcpyAsync";
      rows.push_back(r);
    }

    const int64_t n = int64_t{1} << log2n;
    Tensor a = Tensor::empty({n}, Dtype::bf16, gpu, &stream);
    Tensor b = Tensor::empty({n}, Dtype::bf16, gpu, &stream);
    Tensor y = Tensor::empty({n}, Dtype::bf16, gpu, &stream);
    Tensor t = Tensor::empty({n}, Dtype::bf16, gpu, &stream);
    fill_normal_bf16<<<1024, 256, 0, s>>>(a.data_as<uint16_t>(), static_cast<uint64_t>(n), 1);
    fill_normal_bf16<<<1024, 256, 0, s>>>(b.data_as<uint16_t>(), static_cast<uint64_t>(n), 2);
    check(cudaGetLastError(), "fill_normal_bf16");
    stream.synchronize();
    const int64_t check_n = std::min<int64_t>(n, int64_t{1} << 20);

    using namespace lowbit::fusion;
    const Expr ea = input(a), eb = input(b);
    lowbit::fusion::ModuleCache& cache = lowbit::fusion::ModuleCache::global();

    // ---- JIT costs --------------------------------------------------------------------------
    // Cold: plan, compile, load, launch of chain8 with empty caches.
    double cold_ms = 0, compile_ms = 0, disk_ms = 0;
    {
      const double t0 = now_ms();
      const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
      FusedPlan::select(d).run(stream, {}, d.bound_args());
      stream.synchronize();
      cold_ms = now_ms() - t0;
      compile_ms = d.state->kernels[0] ? d.state->kernels[0]->compiled->compile_ms : 0;
    }
    // Cold again, NVRTC started (by the compile above, as fusion::warm_up() would): a new
    // expression's plan, compile, load and launch.
    double cold2_ms = 0, compile2_ms = 0;
    {
      const double t0 = now_ms();
      const FusedDesc d = FusedDesc::make({{y, chain8({eb, ea}) + ea}});
      FusedPlan::select(d).run(stream, {}, d.bound_args());
      stream.synchronize();
      cold2_ms = now_ms() - t0;
      compile2_ms = d.state->kernels[0] ? d.state->kernels[0]->compiled->compile_ms : 0;
    }
    // Disk: the same expression in a "new process": memory cache cleared.
    {
      cache.clear_memory();
      const double t0 = now_ms();
      const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
      FusedPlan::select(d).run(stream, {}, d.bound_args());
      stream.synchronize();
      disk_ms = now_ms() - t0;
      if (!d.state->kernels[0] || d.state->kernels[0]->compiled->origin != "disk")
        std::fprintf(stderr,
                     "bench_fusion_cuda: note: the second run did not come from disk "
                     "(%s)\n",
                     cache.dir().empty() ? "disk cache off" : "unexpected");
    }
    // In-memory hit + launch: a new descriptor per call, host time per call. Small tensors
    // (same kernel: the shape is a kernel argument), so that the GPU keeps up with the
    // launches and the host never waits for a full launch queue.
    // Host CPU time of this thread (the target is CPU time; on a shared host the wall
    // clock also counts other processes), best of `rounds` rounds of `calls` calls, the
    // stream drained between rounds: 256 launches stay far below the launch queue's depth,
    // so a round times the host's work, not the GPU's rate of tiny kernels.
    double hit_us = 0, launch_us = 0, make_us = 0, select_us = 0, driver_us = 0;
    const int rounds = 20;
    auto best_us = [&](int calls, const std::function<void()>& fn) {
      double best = 1e300;
      for (int r = 0; r < rounds; ++r) {
        const double t0 = cpu_ms();
        for (int i = 0; i < calls; ++i) fn();
        best = std::min(best, (cpu_ms() - t0) * 1e3 / calls);
        stream.synchronize();
      }
      return best;
    };
    {
      const int64_t small = 4096;
      Tensor sa = Tensor::empty({small}, Dtype::bf16, gpu, &stream);
      Tensor sb = Tensor::empty({small}, Dtype::bf16, gpu, &stream);
      Tensor sy = Tensor::empty({small}, Dtype::bf16, gpu, &stream);
      check(cudaMemcpyAsync(sa.data(), a.data(), sa.nbytes(), cudaMemcpyDeviceToDevice, s), "copy");
      check(cudaMemcpyAsync(sb.data(), b.data(), sb.nbytes(), cudaMemcpyDeviceToDevice, s), "copy");
      stream.synchronize();
      const Expr ea = input(sa), eb = input(sb);
      const Tensor& y = sy;
      const int calls = 256;
      hit_us = best_us(calls, [&] {
        const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
        FusedPlan::select(d).run(stream, {}, d.bound_args());
      });
      // Where a new descriptor's time goes: building it, then selecting its plan.
      make_us = best_us(calls, [&] {
        const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
        (void)d;
      });
      select_us = best_us(calls,
                          [&] {
                            const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
                            const FusedPlan plan = FusedPlan::select(d);
                            (void)plan;
                          }) -
                  make_us;
      const FusedDesc d = FusedDesc::make({{y, chain8({ea, eb})}});
      const FusedPlan plan = FusedPlan::select(d);
      const FusedArgs args = d.bound_args();
      plan.run(stream, {}, args);
      stream.synchronize();
      launch_us = best_us(calls, [&] { plan.run(stream, {}, args); });
      // The driver's part alone: launch_cuda (device check, cuLaunchKernel) with the
      // resolved kernel and a packed parameter block.
      if (const auto* k = d.state->kernels[0].get()) {  // the vector kernel (aligned)
        const lowbit::fusion::Layout& L = d.state->get_layout(d);
        const std::vector<unsigned char> params =
            lowbit::fusion::pack_params(*d.program, k->variant, L, args);
        driver_us = best_us(calls, [&] {
          lowbit::fusion::launch_cuda(*k->compiled, k->shape, k->variant, params, L, 0,
                                      stream.native_handle());
        });
      }
      stream.synchronize();
    }

    // ---- bandwidth rows ------------------------------------------------------------------------
    auto fused_row = [&](const std::string& name, const std::vector<const Tensor*>& ins,
                         const Tensor& out, const std::function<Expr(const std::vector<Expr>&)>& f,
                         bool fast = false) {
      std::vector<Expr> leaves;
      double bytes = static_cast<double>(out.nbytes());
      for (const Tensor* x : ins) {
        leaves.push_back(input(*x));
        bytes += static_cast<double>(x->nbytes());
      }
      FusedDesc d = FusedDesc::make({{out, f(leaves)}});
      d.fast_math = fast;
      const FusedPlan plan = FusedPlan::select(d);
      const FusedArgs args = d.bound_args();
      Row r;
      r.pair = name;
      r.elements = out.numel();
      r.bytes = bytes;
      r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
      stream.synchronize();
      const int slot = fast ? lowbit::fusion::PlanState::kSlots : 0;
      r.kernel = plan.sku().str() + " " +
                 (d.state->kernels[slot]       ? d.state->kernels[slot]->variant.key()
                  : d.state->kernels[slot + 1] ? d.state->kernels[slot + 1]->variant.key()
                                               : "?");
      r.check = check_prefix(ins, out, std::min<int64_t>(out.numel(), check_n), f, fast);
      rows.push_back(r);
    };
    fused_row("chain8 fused (2 x bf16 -> bf16)", {&a, &b}, y, chain8);
    fused_row("silu(a) * b fused (2 x bf16 -> bf16)", {&a, &b}, y, gated);
    fused_row("chain8 fused, fast math (opt-in)", {&a, &b}, y, chain8, true);
    fused_row("silu(a) * b fused, fast math (opt-in)", {&a, &b}, y, gated, true);

    // The quantize epilogue: silu(a) * b quantized per token (rows of 8192), scales computed
    // in the same kernel. Bytes: two bf16 inputs, the codes and the f32 row scales.
    auto quant_row = [&](const std::string& name, const char* scheme_text, bool check,
                         bool fast = false, bool deferred = false, int64_t cols = 8192) {
      const int64_t rows_n = n / cols;
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(scheme_text);
      const lowbit::QuantizedTensor q =
          lowbit::QuantizedTensor::allocate(scheme, {rows_n, cols}, gpu);
      const lowbit::TensorView a2(a.data(), Dtype::bf16, {rows_n, cols}, gpu);
      const lowbit::TensorView b2(b.data(), Dtype::bf16, {rows_n, cols}, gpu);
      FusedDesc d =
          FusedDesc::make({lowbit::FusedOutput(q.view(), silu(input(a2)) * input(b2), check)});
      d.fast_math = fast;
      const FusedPlan plan = FusedPlan::select(d);
      FusedArgs args = d.bound_args();
      lowbit::CheckReport report(gpu);  // deferred: the kernels record a refusal, no wait
      if (deferred) args.report = &report;
      Row r;
      r.pair = name;
      r.elements = n;
      r.bytes = static_cast<double>(a.nbytes() + b.nbytes() + q.nbytes());
      const lowbit::Buffer ws(static_cast<int64_t>(plan.workspace_size()), gpu);  // nvfp4
      const lowbit::Workspace w{ws.data(), plan.workspace_size()};
      r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, w, args); });
      stream.synchronize();
      report.throw_if_failed();
      if (scheme.format == lowbit::QuantFormat::nvfp4) {
        // The global scale is the whole tensor's: the definition, quantize() of the unfused
        // result, on the GPU (quantize_cuda is bit-identical to the reference), all bytes.
        Tensor y2 = Tensor::empty({rows_n, cols}, Dtype::bf16, gpu);
        lowbit::fuse({{y2, silu(input(a2)) * input(b2)}});
        const lowbit::QuantizedTensor want = lowbit::quantize(y2, scheme);
        bool same = true;
        for (auto [x, y] : {std::pair{&want.codes, &q.codes}, std::pair{&want.scale, &q.scale},
                            std::pair{&want.global_scale, &q.global_scale}}) {
          const Tensor hx = Tensor::empty(x->shape(), x->dtype());
          const Tensor hy = Tensor::empty(y->shape(), y->dtype());
          lowbit::copy(hx, *x);
          lowbit::copy(hy, *y);
          same = same && std::memcmp(hx.data(), hy.data(), static_cast<size_t>(hx.nbytes())) == 0;
        }
        r.kernel = plan.sku().str() + " statistics + row kernels";
        for (int i = 0; i < 2 * lowbit::fusion::PlanState::kSlots; ++i)
          if (d.state->kernels[i]) r.kernel += " " + d.state->kernels[i]->variant.key();
        r.check = same ? "exact (whole tensor)" : "MISMATCH";
        rows.push_back(r);
        return;
      }
      r.kernel = plan.sku().str() + " row kernel";
      for (int i = 0; i < 2 * lowbit::fusion::PlanState::kSlots; ++i)
        if (d.state->kernels[i]) r.kernel += " " + d.state->kernels[i]->variant.key();
      // The first 64 rows against the CPU epilogue (the bits of quantize() on the unfused
      // result, test_fusion_quant).
      const int64_t check_rows = 64;
      Tensor ha = Tensor::empty({check_rows, cols}, Dtype::bf16);
      Tensor hb = Tensor::empty({check_rows, cols}, Dtype::bf16);
      lowbit::copy(ha, lowbit::TensorView(a.data(), Dtype::bf16, {check_rows, cols}, gpu));
      lowbit::copy(hb, lowbit::TensorView(b.data(), Dtype::bf16, {check_rows, cols}, gpu));
      const lowbit::QuantizedTensor want =
          lowbit::QuantizedTensor::allocate(scheme, {check_rows, cols});
      lowbit::fuse({{want.view(), silu(input(ha)) * input(hb)}});
      Tensor codes = Tensor::empty(want.codes.shape(), want.codes.dtype());
      Tensor scales = Tensor::empty(want.scale.shape(), want.scale.dtype());
      lowbit::copy(codes,
                   lowbit::TensorView(q.codes.data(), want.codes.dtype(), want.codes.shape(), gpu));
      lowbit::copy(scales,
                   lowbit::TensorView(q.scale.data(), want.scale.dtype(), want.scale.shape(), gpu));
      const bool same =
          std::memcmp(codes.data(), want.codes.data(), static_cast<size_t>(codes.nbytes())) == 0 &&
          std::memcmp(scales.data(), want.scale.data(), static_cast<size_t>(scales.nbytes())) == 0;
      if (fast) {  // codes may differ where a value lies near a rounding boundary
        int64_t differ = 0;
        for (int64_t i = 0; i < codes.nbytes(); ++i)
          differ += static_cast<const uint8_t*>(codes.data())[i] !=
                    static_cast<const uint8_t*>(want.codes.data())[i];
        char buf[64];
        std::snprintf(buf, sizeof buf, "fast: %.3f%% of code bytes differ",
                      100.0 * static_cast<double>(differ) / static_cast<double>(codes.nbytes()));
        r.check = buf;
      } else {
        r.check = same ? "exact" : "MISMATCH";
      }
      rows.push_back(r);
    };
    quant_row("silu(a) * b -> fp8e4m3:token fused, check off [32768 x 8192]", "fp8e4m3:token",
              false);
    quant_row("silu(a) * b -> fp8e4m3:token fused, finiteness check", "fp8e4m3:token", true);
    quant_row("silu(a) * b -> fp8e4m3:token fused, finiteness check deferred (CheckReport)",
              "fp8e4m3:token", true, false, true);
    quant_row("silu(a) * b -> fp8e4m3:token fused, check off, fast math", "fp8e4m3:token", false,
              true);
    {  // Fast math on the shared-memory row kernel (the register-row kernel off).
      const int keep = lowbit::fusion::g_quant_reg_units.exchange(0);
      quant_row("silu(a) * b -> fp8e4m3:token fused, check off, shared-memory, fast math",
                "fp8e4m3:token", false, true);
      lowbit::fusion::g_quant_reg_units.store(keep);
    }
    {  // Exact on the register-row kernel (fast math's; exact programs take the
       // shared-memory row kernel: launch.cpp).
      lowbit::fusion::g_quant_reg_exact.store(true);
      quant_row("silu(a) * b -> fp8e4m3:token fused, check off, register-row, exact",
                "fp8e4m3:token", false);
      quant_row("silu(a) * b -> fp8e4m3:token fused, finiteness check, register-row, exact",
                "fp8e4m3:token", true);
      quant_row("silu(a) * b -> int8:token fused, check off, register-row, exact", "int8:token",
                false);
      lowbit::fusion::g_quant_reg_exact.store(false);
    }
    quant_row("silu(a) * b -> int8:token fused, check off", "int8:token", false);
    // Rows longer than shared memory holds: the recomputing row kernel (pass 2 reads the row
    // again, mostly from L2).
    quant_row("silu(a) * b -> fp8e4m3:token fused, check off, rows of 65536 (recomputing)",
              "fp8e4m3:token", false, false, false, 65536);
    quant_row("silu(a) * b -> fp8e4m3:token fused, finiteness check, rows of 65536",
              "fp8e4m3:token", true, false, false, 65536);
    {  // The same kernel on rows of 8192 (which fit in shared memory)
      lowbit::fusion::g_quant_recompute_always.store(true);
      quant_row("silu(a) * b -> fp8e4m3:token fused, check off, recomputing row kernel",
                "fp8e4m3:token", false);
      lowbit::fusion::g_quant_recompute_always.store(false);
    }
    quant_row("silu(a) * b -> mxfp4 fused, check off", "mxfp4", false);
    quant_row("silu(a) * b -> mxfp4 fused, finiteness check", "mxfp4", true);
    quant_row("silu(a) * b -> int4:block32 fused, check off", "int4:block32", false);
    {  // Per-block groups on the shared-memory row kernel (the lane kernel off).
      lowbit::fusion::g_quant_lane.store(false);
      quant_row("silu(a) * b -> mxfp4 fused, check off, shared-memory", "mxfp4", false);
      quant_row("silu(a) * b -> nvfp4 fused (two passes), check off, shared-memory", "nvfp4",
                false);
      lowbit::fusion::g_quant_lane.store(true);
    }
    // nvfp4: two passes over the inputs (the global scale needs the tensor's absmax); bytes
    // counted once, so one pass's worth is the bound: (4 + 0.5625) / (8 + 0.5625) = 53%.
    quant_row("silu(a) * b -> nvfp4 fused (two passes), check off", "nvfp4", false);
    quant_row("silu(a) * b -> nvfp4 fused (two passes), finiteness check", "nvfp4", true);
    // Other outputs beside the codes: h = bf16(a + b) kept and silu(h) quantized per token
    // (fp8e4m3, check off), one call; against the same in two calls (h, then the epilogue
    // reading h back: the same bits, as the cast rounds h first) and torch's h = a + b;
    // silu(h) -> fp8 (bench_fusion_torch). Bytes: a and b read, h written, codes and row
    // scales (the two calls move h twice more: their time is compared, the bytes are the
    // fused call's).
    {
      const int64_t cols = 8192, rows_n = n / cols;
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse("fp8e4m3:token");
      const lowbit::QuantizedTensor q =
          lowbit::QuantizedTensor::allocate(scheme, {rows_n, cols}, gpu);
      const lowbit::TensorView a2(a.data(), Dtype::bf16, {rows_n, cols}, gpu);
      const lowbit::TensorView b2(b.data(), Dtype::bf16, {rows_n, cols}, gpu);
      const lowbit::TensorView h(y.data(), Dtype::bf16, {rows_n, cols}, gpu);
      const Expr sum = lowbit::fusion::cast(input(a2) + input(b2), Dtype::bf16);
      const double bytes = static_cast<double>(a.nbytes() + b.nbytes() + y.nbytes() + q.nbytes());
      for (const bool fused : {true, false}) {
        FusedDesc d1 =
            fused ? FusedDesc::make({{h, sum}, lowbit::FusedOutput(q.view(), silu(sum), false)})
                  : FusedDesc::make({{h, sum}});
        std::optional<FusedDesc> d2;
        if (!fused) d2 = FusedDesc::make({lowbit::FusedOutput(q.view(), silu(input(h)), false)});
        const FusedPlan p1 = FusedPlan::select(d1);
        std::optional<FusedPlan> p2;
        if (d2) p2.emplace(FusedPlan::select(*d2));
        const FusedArgs args1 = d1.bound_args();
        const FusedArgs args2 = d2 ? d2->bound_args() : FusedArgs{};
        Row r;
        r.pair = fused ? "h = bf16(a + b), silu(h) -> fp8e4m3:token fused, one call, check off"
                       : "h = bf16(a + b), then silu(h) -> fp8e4m3:token (two calls)";
        r.elements = n;
        r.bytes = bytes;
        r.ms = median_ms(s, warmup, reps, [&] {
          p1.run(stream, {}, args1);
          if (p2) p2->run(stream, {}, args2);
        });
        stream.synchronize();
        r.kernel = p1.sku().str();
        // The first 64 rows of h and of the codes against the CPU epilogue.
        const int64_t check_rows = 64;
        Tensor ha = Tensor::empty({check_rows, cols}, Dtype::bf16);
        Tensor hb = Tensor::empty({check_rows, cols}, Dtype::bf16);
        lowbit::copy(ha, lowbit::TensorView(a.data(), Dtype::bf16, {check_rows, cols}, gpu));
        lowbit::copy(hb, lowbit::TensorView(b.data(), Dtype::bf16, {check_rows, cols}, gpu));
        Tensor want_h = Tensor::empty({check_rows, cols}, Dtype::bf16);
        const lowbit::QuantizedTensor want_q =
            lowbit::QuantizedTensor::allocate(scheme, {check_rows, cols});
        const Expr hsum = lowbit::fusion::cast(input(ha) + input(hb), Dtype::bf16);
        lowbit::fuse({{want_h, hsum}, {want_q.view(), silu(hsum)}});
        Tensor got_h = Tensor::empty({check_rows, cols}, Dtype::bf16);
        Tensor codes = Tensor::empty(want_q.codes.shape(), want_q.codes.dtype());
        Tensor scales = Tensor::empty(want_q.scale.shape(), want_q.scale.dtype());
        lowbit::copy(got_h, lowbit::TensorView(h.data(), Dtype::bf16, {check_rows, cols}, gpu));
        lowbit::copy(codes, lowbit::TensorView(q.codes.data(), want_q.codes.dtype(),
                                               want_q.codes.shape(), gpu));
        lowbit::copy(scales, lowbit::TensorView(q.scale.data(), want_q.scale.dtype(),
                                                want_q.scale.shape(), gpu));
        auto same = [](const Tensor& x, const Tensor& y2) {
          return std::memcmp(x.data(), y2.data(), static_cast<size_t>(x.nbytes())) == 0;
        };
        r.check = same(want_h, got_h) && same(want_q.codes, codes) && same(want_q.scale, scales)
                      ? "exact"
                      : "MISMATCH";
        rows.push_back(r);
      }
    }
    // The check's fixed cost: the same fp8 epilogue on one row (8192 elements), timed as
    // above (events around each call). A checked call returns only once its kernel is done,
    // so the GPU idles for one host round trip per call (the launch before the kernel, the
    // hand-off and the next call after it); unchecked calls queue ahead and do not.
    double one_row_ms[3] = {0, 0, 0};
    for (const int mode : {0, 1, 2}) {  // check off, on, on with a CheckReport
      const bool check = mode != 0;
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse("fp8e4m3:token");
      const lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(scheme, {1, 8192}, gpu);
      const lowbit::TensorView a1(a.data(), Dtype::bf16, {1, 8192}, gpu);
      const lowbit::TensorView b1(b.data(), Dtype::bf16, {1, 8192}, gpu);
      const FusedDesc d =
          FusedDesc::make({lowbit::FusedOutput(q.view(), silu(input(a1)) * input(b1), check)});
      const FusedPlan plan = FusedPlan::select(d);
      FusedArgs args = d.bound_args();
      lowbit::CheckReport report(gpu);
      if (mode == 2) args.report = &report;
      one_row_ms[mode] = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
      stream.synchronize();
      report.throw_if_failed();
    }

    {  // Unfused: one pass per op, bf16 intermediates in memory.
      const Expr et = input(t), ey = input(y);
      std::vector<FusedPlan> plans;
      std::vector<FusedArgs> args;
      auto add = [&](const Tensor& out, const Expr& e) {
        const FusedDesc d = FusedDesc::make({{out, e}});
        plans.push_back(FusedPlan::select(d));
        args.push_back(d.bound_args());
      };
      add(t, ea * 1.25);
      add(t, et + eb);
      add(t, silu(et));
      add(t, et * eb);
      add(y, ea * 0.5);
      add(y, et - ey);
      add(y, clamp(ey, -8.0, 8.0));
      Row r;
      r.pair = "chain8 unfused (7 lowbit passes, bf16 between)";
      r.elements = n;
      r.bytes = 6.0 * static_cast<double>(n);  // the fused pass's bytes: comparable speed
      r.ms = median_ms(s, 2, std::max(5, reps / 3), [&] {
        for (size_t i = 0; i < plans.size(); ++i) plans[i].run(stream, {}, args[i]);
      });
      r.kernel = "7 x fused_cuda_jit";
      rows.push_back(r);
    }
    {  // Broadcast operands: a bias over rows (gelu(x + bias)), RMSNorm's scaling (x times a
       // per-row rstd and a per-column weight). The vector kernel reads them as broadcast
       // rows / columns where the layout allows it (else the strided kernel).
      const int64_t rows_n = int64_t{1} << (log2n / 2), cols = n / rows_n;
      Tensor x2 = Tensor::empty({rows_n, cols}, Dtype::bf16, gpu, &stream);
      Tensor bias = Tensor::empty({cols}, Dtype::bf16, gpu, &stream);
      Tensor rstd = Tensor::empty({rows_n, 1}, Dtype::f32, gpu, &stream);
      Tensor y2 = Tensor::empty({rows_n, cols}, Dtype::bf16, gpu, &stream);
      check(cudaMemcpyAsync(x2.data(), a.data(), x2.nbytes(), cudaMemcpyDeviceToDevice, s), "copy");
      check(cudaMemcpyAsync(bias.data(), b.data(), bias.nbytes(), cudaMemcpyDeviceToDevice, s),
            "copy");
      check(cudaMemcpyAsync(rstd.data(), b.data(), rstd.nbytes(), cudaMemcpyDeviceToDevice, s),
            "copy");
      auto broadcast_row = [&](const std::string& name, const Expr& value, double extra_bytes) {
        const FusedDesc d = FusedDesc::make({{y2, value}});
        const FusedPlan plan = FusedPlan::select(d);
        const FusedArgs args = d.bound_args();
        Row r;
        r.pair = name;
        r.elements = n;
        r.bytes = static_cast<double>(x2.nbytes() + y2.nbytes()) + extra_bytes;
        r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
        for (const auto& k : d.state->kernels)
          if (k) {
            r.kernel = plan.sku().str() + " " + k->variant.key();
            break;
          }
        rows.push_back(r);
      };
      broadcast_row("gelu(x + bias[N]) fused, broadcast (bf16)", gelu(input(x2) + input(bias)),
                    static_cast<double>(bias.nbytes()));
      broadcast_row("x * rstd[M, 1] * w[N] fused, broadcast (bf16, f32 rstd)",
                    input(x2) * input(rstd) * input(bias),
                    static_cast<double>(bias.nbytes() + rstd.nbytes()));
    }

    for (Row& r : rows) {
      r.gbps = r.bytes / r.ms / 1e6;
      r.pct = 100.0 * r.gbps / rows[0].gbps;
    }
    auto cost = [&](const std::string& what, double ms) {
      Row r;
      r.pair = what;
      r.ms = ms;
      r.kernel = "-";
      rows.push_back(r);
    };
    cost("jit cold: plan + NVRTC compile + load + launch (chain8)", cold_ms);
    cost("jit NVRTC compile alone (chain8)", compile_ms);
    cost("jit cold, NVRTC started: plan + compile + load + launch (chain8 + a)", cold2_ms);
    cost("jit disk-cache load + launch (chain8)", disk_ms);
    cost("jit in-memory hit + launch, new descriptor (host CPU ms per call)", hit_us / 1e3);
    cost("plan.run launch overhead, resolved plan (host CPU ms per call)", launch_us / 1e3);
    cost("launch_cuda alone: cuLaunchKernel (host CPU ms per call)", driver_us / 1e3);
    cost("silu(a) * b -> fp8e4m3:token, one row of 8192: check off (GPU ms per call)",
         one_row_ms[0]);
    cost("silu(a) * b -> fp8e4m3:token, one row of 8192: finiteness check (GPU ms per call)",
         one_row_ms[1]);
    cost("silu(a) * b -> fp8e4m3:token, one row of 8192: check deferred (GPU ms per call)",
         one_row_ms[2]);

    std::printf("\nlowbit fusion on %s (%d SMs), median of %d reps, %lld elements\n",
                props.name.c_str(), props.multiprocessors, reps, static_cast<long long>(n));
    std::printf(
        "| what | time ms | GB/s | %% of copy | check |\n| --- | --- | --- | --- | --- |\n");
    for (const Row& r : rows)
      std::printf("| %s | %.4f | %.0f | %.1f%% | %s |\n", r.pair.c_str(), r.ms, r.gbps, r.pct,
                  r.check.c_str());
    std::printf(
        "\nJIT: cold %.1f ms (NVRTC %.1f ms); cold with NVRTC started %.1f ms (NVRTC %.1f ms); "
        "disk load %.2f ms; in-memory hit + launch %.2f us, resolved plan launch %.2f us (CPU "
        "time per call, best of %d rounds)\n",
        cold_ms, compile_ms, cold2_ms, compile2_ms, disk_ms, hit_us, launch_us, rounds);
    std::printf(
        "hit + launch, split: FusedDesc::make %.2f us, FusedPlan::select %.2f us, first run "
        "(layout, kernel lookup, launch) %.2f us; launch_cuda alone (cuLaunchKernel) %.2f us\n",
        make_us, select_us, hit_us - make_us - select_us, driver_us);
    std::printf("kernels:\n");
    for (const Row& r : rows)
      if (r.kernel != "-") std::printf("  %-48s %s\n", r.pair.c_str(), r.kernel.c_str());
    const auto st = cache.stats();
    std::printf("cache: %llu compiles, %llu disk hits, %llu memory hits, dir %s\n",
                static_cast<unsigned long long>(st.compiles),
                static_cast<unsigned long long>(st.disk_hits),
                static_cast<unsigned long long>(st.memory_hits), cache.dir().c_str());

    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (!f) {
        std::fprintf(stderr, "bench_fusion_cuda: cannot write %s\n", json_path.c_str());
        rc = 1;
      } else {
        for (const Row& r : rows)
          std::fprintf(f,
                       "{\"bench\": \"fusion_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                       "\"elements\": %lld, \"bytes\": %.0f, \"ms\": %.5f, \"gbps\": %.1f, "
                       "\"pct_of_copy\": %.2f, \"kernel\": \"%s\", \"check\": \"%s\"}\n",
                       json_escape(props.name).c_str(), json_escape(r.pair).c_str(),
                       static_cast<long long>(r.elements), r.bytes, r.ms, r.gbps, r.pct,
                       json_escape(r.kernel).c_str(), r.check.c_str());
        std::fclose(f);
      }
    }
    for (const Row& r : rows)
      if (r.check.rfind("MISMATCH", 0) == 0) {
        std::fprintf(stderr, "bench_fusion_cuda: %s differs from the CPU kernel\n", r.pair.c_str());
        rc = 1;
      }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_fusion_cuda: %s\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  std::filesystem::remove_all(cache_dir, ec);
  return rc;
}
