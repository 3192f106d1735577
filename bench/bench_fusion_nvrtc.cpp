// bench_fusion_nvrtc: the JIT's cold compile without a GPU. Generates the kernels the GPU
// benchmark compiles (chain8's vector kernel over bf16, silu(a) * b's, and the fp8
// per-token quantize epilogue's row kernel), compiles each with NVRTC for sm_90a (NVRTC
// needs no device) several times and prints the median of the compiling thread's CPU time
// (the wall time on an idle machine), split into NVRTC's phases:
//  - "empty": a kernel with no body and the same headers (the floor: NVRTC's start-up
//    and the front end's header parse);
//  - the generated kernel with the flags every compile uses (nvrtc.cpp's kFlags);
//  - the same to PTX only (no ptxas: the front end and NVVM), by --gpu-architecture
//    compute_90a.
// --dump DIR writes the generated sources there; --flags "..." adds NVRTC flags to every
// compile and --source FILE compiles a (hand-edited) kernel too: for experiments.
//
// --warm-up calls fusion::warm_up() and waits 3 s before the first compile (what a
// process that warmed NVRTC while loading pays); --host prints only the host-path table:
// the per-call CPU cost of a cached kernel's descriptor, plan and launch preparation (no
// GPU: the driver's launch is not in it); --cuda makes a CUDA context on cuda:0 before the
// first compile (as in a GPU process).
//
// Usage: bench_fusion_nvrtc [--reps N] [--dump DIR] [--flags "F1 F2"] [--source FILE]...
//                           [--warm-up] [--host] [--cuda]
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "jit/jit.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

#if LOWBIT_HAS_CUDA
#include <nvrtc.h>
#endif

namespace {

using lowbit::Dtype;
using lowbit::FusedArgs;
using lowbit::FusedDesc;
using lowbit::FusedPlan;
using lowbit::Tensor;
using lowbit::fusion::Expr;

#if LOWBIT_HAS_CUDA

/// CPU time of this thread: NVRTC compiles on the calling thread, and on a shared machine
/// its CPU time is steadier than the wall clock.
double now_ms() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return 1e3 * static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_nsec);
}

/// One NVRTC compile of `code` with the JIT's headers; CPU milliseconds, or -1 on failure.
double compile_once(const std::string& code, const std::vector<std::string>& flags,
                    const std::string& arch, bool want_cubin, std::string* log_out) {
  const lowbit::fusion::HeaderSet& h = lowbit::fusion::jit_headers();
  std::vector<const char*> text, names;
  for (size_t i = 0; i < h.names.size(); ++i) {
    text.push_back(h.contents[i].c_str());
    names.push_back(h.names[i].c_str());
  }
  const double t0 = now_ms();
  nvrtcProgram prog = nullptr;
  if (nvrtcCreateProgram(&prog, code.c_str(), "k.cu", static_cast<int>(text.size()), text.data(),
                         names.data()) != NVRTC_SUCCESS)
    return -1;
  std::vector<const char*> opts;
  for (const std::string& f : flags) opts.push_back(f.c_str());
  const std::string arch_flag = "--gpu-architecture=" + arch;
  opts.push_back(arch_flag.c_str());
  const nvrtcResult r = nvrtcCompileProgram(prog, static_cast<int>(opts.size()), opts.data());
  size_t size = 0;
  if (r == NVRTC_SUCCESS) {
    if (want_cubin)
      nvrtcGetCUBINSize(prog, &size);
    else
      nvrtcGetPTXSize(prog, &size);
  }
  const double ms = now_ms() - t0;
  if (r != NVRTC_SUCCESS && log_out) {
    size_t n = 0;
    nvrtcGetProgramLogSize(prog, &n);
    log_out->resize(n);
    nvrtcGetProgramLog(prog, log_out->data());
  }
  nvrtcDestroyProgram(&prog);
  return r == NVRTC_SUCCESS && size > 0 ? ms : -1;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// CPU microseconds per call of `fn`: the best of `rounds` rounds of `calls` calls (the
/// round the shared machine disturbed least).
template <class Fn>
double best_us(int rounds, int calls, Fn&& fn) {
  double best = 1e300;
  for (int r = 0; r < rounds; ++r) {
    const double t0 = now_ms();
    for (int i = 0; i < calls; ++i) fn();
    best = std::min(best, (now_ms() - t0) * 1e3 / calls);
  }
  return best;
}

/// The per-call host work of a cached kernel, without a GPU: what a caller pays to build
/// chain8's expression, its descriptor and plan, and what the CUDA kernel's run() does
/// before cuLaunchKernel (layout, variant, cache key and lookup, parameter block), each
/// step timed alone, CPU time of this thread.
int host_path_table(int rounds) {
  using namespace lowbit::fusion;
  const int64_t n = 4096;
  Tensor a = Tensor::empty({n}, Dtype::bf16), b = Tensor::empty({n}, Dtype::bf16);
  Tensor y = Tensor::empty({n}, Dtype::bf16);
  const Expr ea = input(a), eb = input(b);
  auto chain8 = [&] { return clamp(silu(ea * 1.25 + eb) * eb - ea * 0.5, -8.0, 8.0); };
  const Expr e = chain8();
  const std::string arch = "sm_90a";
  const int calls = 2000;
  const FusedDesc d0 = FusedDesc::make({{y, e}});
  const Layout L0 = make_layout(d0);
  Variant v;
  v.vec = L0.vec_ok;
  v.idx32 = L0.idx32;
  v.nd = L0.nd;
  v.cls = L0.cls;
  const std::string key0 = ModuleCache::key_for(d0.program->canonical() + "|" + v.key(), arch);
  // A fresh disk cache in a temporary directory (removed at the end): nothing of ours left
  // in the user's cache.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("lowbit_bench_nvrtc_" + std::to_string(::getpid()));
  ::setenv("LOWBIT_CACHE_DIR", dir.c_str(), 1);
  ::setenv("LOWBIT_JIT_ARCH", arch.c_str(), 0);  // prepare_launch's arch without a device
  ModuleCache& cache = ModuleCache::global();
  cache.get(key0, arch, [&] { return generate_cuda(*d0.program, v); });  // one compile
  const FusedArgs args0 = d0.bound_args();

  struct Step {
    const char* what;
    double us;
  };
  std::vector<Step> steps;
  steps.push_back({"build chain8's Expr (8 ops)", best_us(rounds, calls, [&] {
                     const Expr x = chain8();
                     asm volatile("" ::"r"(x.node().get()));
                   })});
  steps.push_back({"FusedDesc::make (Expr given)", best_us(rounds, calls, [&] {
                     const FusedDesc d = FusedDesc::make({{y, e}});
                     asm volatile("" ::"r"(d.program.get()));
                   })});
  steps.push_back({"FusedPlan::select (cpu device)", best_us(rounds, calls, [&] {
                     const FusedPlan p = FusedPlan::select(d0);
                     asm volatile("" ::"r"(&p));
                   })});
  steps.push_back({"FusedOp::check_args",
                   best_us(rounds, calls, [&] { lowbit::FusedOp::check_args(d0, args0); })});
  steps.push_back({"bound_args()", best_us(rounds, calls, [&] {
                     const FusedArgs a2 = d0.bound_args();
                     asm volatile("" ::"r"(&a2));
                   })});
  steps.push_back({"make_layout", best_us(rounds, calls, [&] {
                     const Layout L = make_layout(d0);
                     asm volatile("" ::"r"(&L));
                   })});
  steps.push_back({"cache key (canonical + variant + key_for)", best_us(rounds, calls, [&] {
                     const std::string k =
                         ModuleCache::key_for(d0.program->canonical() + "|" + v.key(), arch);
                     asm volatile("" ::"r"(k.data()));
                   })});
  steps.push_back({"ModuleCache::lookup (memory hit)", best_us(rounds, calls, [&] {
                     auto c = cache.lookup(key0);
                     asm volatile("" ::"r"(c.get()));
                   })});
  steps.push_back({"generate_cuda without code (launch shape)", best_us(rounds, calls, [&] {
                     const KernelSource k = generate_cuda(*d0.program, v, false);
                     asm volatile("" ::"r"(&k));
                   })});
  steps.push_back({"pack_params", best_us(rounds, calls, [&] {
                     const auto p = pack_params(*d0.program, v, L0, args0);
                     asm volatile("" ::"r"(p.data()));
                   })});
  steps.push_back({"resolve_kernel (table hit: hash, compare)", best_us(rounds, calls, [&] {
                     auto r = resolve_kernel(d0.program, v, arch);
                     asm volatile("" ::"r"(r.get()));
                   })});
  std::vector<unsigned char> params;
  {
    const Layout& L = d0.state->get_layout(d0);
    prepare_launch(d0, args0, L, params);  // resolves once
    steps.push_back({"prepare_launch, resolved plan (variant, pack)", best_us(rounds, calls, [&] {
                       prepare_launch(d0, args0, d0.state->get_layout(d0), params);
                     })});
  }
  // Everything a caller pays for a new descriptor of a cached expression, but the driver's
  // launch: what FusedPlan::select(FusedDesc::make(...)).run(...) does on a GPU before
  // cuLaunchKernel (here the plan is the CPU kernel's: select's CUDA sku differs by the
  // arch string).
  steps.push_back({"all: Expr + make + select + check_args + layout + prepare_launch",
                   best_us(rounds, calls, [&] {
                     const FusedDesc d = FusedDesc::make({{y, chain8()}});
                     const FusedPlan plan = FusedPlan::select(d);
                     const FusedArgs a2 = d.bound_args();
                     plan.can_implement(a2);
                     prepare_launch(d, a2, d.state->get_layout(d), params);
                   })});
  std::printf(
      "\nhost path of a cached kernel (chain8, 4096 bf16), CPU us per call, best of %d "
      "rounds of %d calls\n| step | us |\n| --- | --- |\n",
      rounds, calls);
  for (const Step& s : steps) std::printf("| %s | %.3f |\n", s.what, s.us);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}

#endif

}  // namespace

int main(int argc, char** argv) {
#if !LOWBIT_HAS_CUDA
  (void)argc;
  (void)argv;
  std::printf("bench_fusion_nvrtc: SKIPPED: this build has no CUDA toolkit (NVRTC)\n");
  return 0;
#else
  int reps = 5;
  std::string dump, extra;
  std::vector<std::string> sources;
  bool host_only = false, warm = false, with_context = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--dump" && i + 1 < argc) {
      dump = argv[++i];
    } else if (a == "--flags" && i + 1 < argc) {
      extra = argv[++i];
    } else if (a == "--source" && i + 1 < argc) {
      sources.push_back(argv[++i]);
    } else if (a == "--host") {
      host_only = true;
    } else if (a == "--warm-up") {
      warm = true;
    } else if (a == "--cuda") {
      with_context = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--reps N] [--dump DIR] [--flags \"F1 F2\"] [--source FILE]... "
                   "[--warm-up] [--host] [--cuda]\n",
                   argv[0]);
      return 2;
    }
  }
  if (host_only) return host_path_table(std::max(reps, 5));
  using namespace lowbit::fusion;
  // Host tensors: only dtypes, shapes and strides matter to codegen.
  const int64_t n = 1 << 16, cols = 8192;
  Tensor a = Tensor::empty({n}, Dtype::bf16), b = Tensor::empty({n}, Dtype::bf16);
  Tensor y = Tensor::empty({n}, Dtype::bf16);
  const Expr ea = input(a), eb = input(b);
  const Expr chain8 = clamp(silu(ea * 1.25 + eb) * eb - ea * 0.5, -8.0, 8.0);
  const lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(
      lowbit::QuantScheme::parse("fp8e4m3:token"), {n / cols, cols});
  const lowbit::TensorView a2(a.data(), Dtype::bf16, {n / cols, cols});
  const lowbit::TensorView b2(b.data(), Dtype::bf16, {n / cols, cols});

  struct Job {
    std::string name;
    KernelSource src;
  };
  std::vector<Job> jobs;
  auto add = [&](const std::string& name, const FusedDesc& d, bool quant, bool reg = false) {
    const Layout L = make_layout(d);
    Variant v;
    v.vec = L.vec_ok;
    v.idx32 = L.idx32;
    v.nd = L.nd;
    v.cls = L.cls;
    v.quant = quant;
    v.qstore = quant;
    if (reg) {  // per-row scales in registers: fast math's kernel (launch.cpp)
      const int64_t units = cols / generate_cuda(*d.program, v, false).group;
      v.qreg = static_cast<int>((units + kThreads - 1) / kThreads);
    }
    jobs.push_back({name + " (" + v.key() + ")", generate_cuda(*d.program, v)});
  };
  add("chain8", FusedDesc::make({{y, chain8}}), false);
  add("silu(a)*b", FusedDesc::make({{y, silu(ea) * eb}}), false);
  // Exact programs take the shared-memory row kernel (launch.cpp); the register-row kernel is
  // fast math's (timed here with the exact flags: the same loop structure).
  add("silu(a)*b -> fp8e4m3:token",
      FusedDesc::make({lowbit::FusedOutput(q.view(), silu(input(a2)) * input(b2), false)}), true);
  add("silu(a)*b -> fp8e4m3:token, register rows",
      FusedDesc::make({lowbit::FusedOutput(q.view(), silu(input(a2)) * input(b2), false)}), true,
      true);
  jobs.push_back({"empty kernel, same headers",
                  {"lowbit_fused",
                   "#include \"lowbit_jit_prelude.h\"\nextern \"C\" __global__ void "
                   "lowbit_fused() {}\n",
                   1, 1, 0}});

  for (const std::string& path : sources) {  // hand-edited kernels, for experiments
    std::ifstream f(path);
    std::ostringstream text;
    text << f.rdbuf();
    jobs.push_back({path, {"lowbit_fused", text.str(), 1, 1, 0}});
  }
  std::vector<std::string> flags = split(nvrtc_flags());
  for (const std::string& f : split(extra)) flags.push_back(f);
  std::string flag_text;
  for (const std::string& f : flags) flag_text += f + " ";
  std::printf("NVRTC %s, flags: %s\n", nvrtc_version().c_str(), flag_text.c_str());
  if (warm) {  // fusion::warm_up() well before the first compile (a model load's time)
    lowbit::fusion::warm_up();
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  if (with_context) {  // a GPU process: the CUDA context exists before the first compile
    try {
      const Tensor t = Tensor::empty({1}, Dtype::f32, lowbit::Device::cuda(0));
      std::printf("CUDA context made on cuda:0 before compiling\n");
    } catch (const lowbit::Error& e) {
      std::fprintf(stderr, "bench_fusion_nvrtc: --cuda: %s\n", e.what());
      return 1;
    }
  }
  // The process's first compile (NVRTC's start-up included: what a cold plan pays), then a
  // second kernel's (what a new expression costs once NVRTC runs), both in wall and in this
  // thread's CPU time (NVRTC may use other threads).
  for (int k = 0; k < 2; ++k) {
    const auto w0 = std::chrono::steady_clock::now();
    const double c0 = now_ms();
    std::string log;
    compile_once(jobs[static_cast<size_t>(k)].src.code, flags, "sm_90a", true, &log);
    const double cpu = now_ms() - c0;
    const double wall =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count();
    if (k == 1) {
      std::printf("second compile in this process (%s): %.1f ms wall, %.1f ms CPU\n",
                  jobs[1].name.c_str(), wall, cpu);
      break;
    }
    std::printf("first compile in this process (%s, %s): %.1f ms wall, %.1f ms CPU\n",
                jobs[0].name.c_str(),
                warm ? "after fusion::warm_up() finished" : "NVRTC start-up included", wall, cpu);
  }
  std::printf(
      "| kernel | source bytes | cubin sm_90a, CPU ms | PTX only, CPU ms |\n| --- | --- | --- | "
      "--- |\n");
  int rc = 0;
  for (const Job& j : jobs) {
    if (!dump.empty()) {
      std::filesystem::create_directories(dump);
      std::string stem = j.name.substr(0, j.name.find(' '));
      for (char& c : stem)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      std::ofstream(std::filesystem::path(dump) / (stem + ".cu")) << j.src.code;
    }
    std::vector<double> cubin_ms, ptx_ms;
    std::string log;
    for (int r = 0; r < reps; ++r) {
      cubin_ms.push_back(compile_once(j.src.code, flags, "sm_90a", true, &log));
      ptx_ms.push_back(compile_once(j.src.code, flags, "compute_90a", false, &log));
    }
    if (*std::min_element(cubin_ms.begin(), cubin_ms.end()) < 0) {
      std::fprintf(stderr, "bench_fusion_nvrtc: %s did not compile:\n%s\n", j.name.c_str(),
                   log.c_str());
      rc = 1;
      continue;
    }
    std::printf("| %s | %zu | %.1f | %.1f |\n", j.name.c_str(), j.src.code.size(), median(cubin_ms),
                median(ptx_ms));
  }
  if (!dump.empty()) {
    const HeaderSet& h = jit_headers();
    for (size_t i = 0; i < h.names.size(); ++i) {
      const std::filesystem::path p = std::filesystem::path(dump) / "include" / h.names[i];
      std::filesystem::create_directories(p.parent_path());
      std::ofstream(p) << h.contents[i];
    }
  }
  return rc;
#endif
}
