// fused_cpu_jit: the fusion op's CPU kernel compiled at run time (codegen_cpu.cpp,
// cpu_compile.cpp). It takes the large calls of programs the generator handles, on
// machines with a C++ compiler and Highway's headers; the interpreter (fused_cpu) takes
// the rest, and any call whose compile fails (unless LOWBIT_FUSION_CPU_JIT=1, which tests
// and benchmarks set: every size, and failures throw).
//
// LOWBIT_FUSION_CPU_JIT: unset: calls of at least kMinElements elements; 0: never;
// 1: every call, failures are errors.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "jit/cpu_jit.hpp"

namespace lowbit {
namespace {

using fusion::CpuCompiled;
using fusion::Layout;
using fusion::Program;

/// Below this many elements the interpreter starts at once, where a compile (0.3-1 s,
/// once per expression and machine: the disk cache keeps it) would not pay for itself.
constexpr int64_t kMinElements = int64_t{1} << 20;
/// Elements per thread's range boundary: whole iterations of the generated loop (8
/// AVX-512 vectors), so that each range's vectors stay aligned for non-temporal stores.
constexpr int64_t kGrain = 128;

enum class Mode { off, automatic, always };

Mode mode() {
  const char* v = std::getenv("LOWBIT_FUSION_CPU_JIT");
  if (!v || !*v) return Mode::automatic;
  if (v[0] == '0') return Mode::off;
  return Mode::always;
}

/// A descriptor's compiled kernel, resolved at its first run.
struct Resolved {
  std::shared_ptr<const CpuCompiled> compiled;  ///< null: the compile failed (automatic mode)
  std::vector<uint8_t> uniform;
};

class FusedCpuJit final : public Kernel<FusedOp> {
 public:
  std::string_view name() const override { return "fused_cpu_jit"; }

  std::string decline(const FusedDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    const Mode m = mode();
    if (m == Mode::off) return "turned off by LOWBIT_FUSION_CPU_JIT=0";
    if (!d.program || !d.state) return "no program";
    const fusion::CpuToolchain& t = fusion::cpu_toolchain();
    if (!t.why_not.empty()) return t.why_not;
    const Layout& L = d.state->get_layout(d);
    if (m == Mode::automatic && L.numel < kMinElements)
      return "fewer than 2^20 elements: the interpreter starts at once (a compile costs "
             "0.3-1 s, once per expression and machine; LOWBIT_FUSION_CPU_JIT=1 compiles "
             "every size)";
    return fusion::cpu_codegen_unsupported(*d.program, L);
  }

  KernelSku sku(const FusedDesc& d) const override {
    return {"fused", Backend::cpu, fused_dtypes(d),
            "",      "native",     d.fast_math ? "fused_cpu_jit_fast" : "fused_cpu_jit"};
  }

  PrecisionGuarantee precision(const FusedDesc& d) const override {
    if (d.fast_math)
      return {
          "f32 math, one rounding per output; opt-in fast math (AVX-512 and AVX2): exp, "
          "sigmoid and silu through an approximate exp (2^f by a degree-4 polynomial), "
          "relative error <= 7e-6 (docs/jit.md), multiply-adds contracted; bf16 outputs "
          "by vcvtneps2bf16 where the CPU has it (subnormals flushed to zero)",
          std::nullopt, true, false};
    return {
        "f32 math, one rounding per output; lowbit's own f32 formulas (<= 2.5 ulp), "
        "bit-identical to fused_cpu and fused_cuda",
        std::nullopt, true, true};
  }

  void run(const FusedDesc& d, const FusedArgs& a, const Stream& stream,
           Workspace ws) const override {
    const Layout& L = d.state->get_layout(d);
    if (L.numel == 0) return;
    const Program& p = *d.program;
    fusion::PlanState& st = *d.state;
    std::call_once(st.cpu_jit_once, [&] { st.cpu_jit = resolve(d, L); });
    const auto& r = *static_cast<const Resolved*>(st.cpu_jit.get());
    if (!r.compiled) return fused_cpu_kernel().run(d, a, stream, ws);
    // The uniform values of this call (constants are arguments: they may differ per call).
    std::vector<double> values;
    fusion::uniform_values(p, a, r.uniform, values);
    std::vector<float> uf(values.size());
    for (size_t i = 0; i < values.size(); ++i) std::memcpy(&uf[i], &values[i], sizeof(float));
    std::vector<const void*> in(a.inputs.size());
    for (size_t k = 0; k < in.size(); ++k) in[k] = a.inputs[k].data();
    std::vector<void*> out(a.outputs.size());
    for (size_t o = 0; o < out.size(); ++o) out[o] = a.outputs[o].data();
    const fusion::CpuKernelFn fn = r.compiled->fn;
    const int64_t n = L.numel;
    const int stream_out = streams(p, n);
    const int threads = omp_get_max_threads();
    const int64_t grains = (n + kGrain - 1) / kGrain;
    if (threads <= 1 || n < kMinElements / 4) {
      fn(in.data(), out.data(), uf.data(), 0, n, stream_out);
      return;
    }
    const int nt = static_cast<int>(std::min<int64_t>(threads, grains));
#pragma omp parallel num_threads(nt)
    {
      const int64_t t = omp_get_thread_num(), tn = omp_get_num_threads();
      const int64_t b = std::min(n, grains * t / tn * kGrain);
      const int64_t e = std::min(n, grains * (t + 1) / tn * kGrain);
      if (b < e) fn(in.data(), out.data(), uf.data(), b, e, stream_out);
    }
  }

 private:
  static std::shared_ptr<const void> resolve(const FusedDesc& d, const Layout& L) {
    auto r = std::make_shared<Resolved>();
    const Program& p = *d.program;
    r->uniform = fusion::uniform_steps(p, L);
    const std::string key = fusion::cpu_jit_key(p.canonical(), d.fast_math);
    try {
      r->compiled = fusion::cpu_compile(key, fusion::generate_cpu(p, r->uniform, d.fast_math, key),
                                        d.fast_math);
    } catch (const Error& e) {
      if (mode() == Mode::always) throw;
      if (fusion::jit_verbose())
        std::fprintf(stderr, "[lowbit jit] cpu: %s; the interpreter runs it\n", e.what());
    }
    return r;
  }

  /// Non-temporal stores when the outputs are too large to stay in cache.
  static int streams(const Program& p, int64_t n) {
    int64_t bytes = 0;
    for (Dtype dt : p.output_dtypes) bytes += n * (bit_width(dt) / 8);
    return bytes >= fusion::nontemporal_bytes();
  }
};

}  // namespace

const Kernel<FusedOp>& fused_cpu_jit_kernel() {
  static const FusedCpuJit kernel;
  return kernel;
}

}  // namespace lowbit
