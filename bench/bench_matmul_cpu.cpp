// CPU quantized matmul y[M, N] = x[M, K] . dequant(W)[N, K]^T against the machine's streaming
// ceiling and against ggml, all measured in the same run, on 1 and 2 threads:
//  * ceiling: a streaming read (u64 sum) of 1 GiB, per thread count;
//  * lowbit: the kernel select() picks for a weight-only descriptor (x f32, the exact path)
//    and for the same descriptor with x_scheme (x quantized by the plan to q8_0, q8_K for the
//    K-quants, int8:token for int8:channel: the int8-activation path), W prepared as the
//    plan wants (the plain layout);
//  * the peer: ggml's own ggml_mul_mat from ggml-python's compiled libggml (dlopen), in a
//    graph computed on a ggml threadpool, with W in a plain CPU buffer and, where this ggml
//    repacks the type, in llama.cpp's CPU_REPACK buffer type (the interleaved layouts
//    llama.cpp uses at run time on x86). ggml quantizes x itself (q8_0 / q8_K), inside the
//    timed call, as lowbit's int8 path does.
// W is N x K = 4096 x 14336 by default, M = 1, 16, 512; formats Q4_0, Q8_0, Q4_K, Q6_K, MXFP4,
// NVFP4 (ggml's peer for these two: its own MXFP4 / NVFP4 blocks of the same f32 weights),
// int4:block32 with f32 scales (5 bits per weight) and with f16 scales (4.5 bits, as ggml's
// Q4_0: the peer of both) and int8:channel (peer: Q8_0).
//
// Implementations run in turn, rep by rep (best of N each), so that a busy moment of this
// shared machine does not fall on one side only; short calls get an untimed call first (see
// best_interleaved). At M = 1 the table gives weight bytes / time
// and its fraction of the streaming-read ceiling; at M = 512, GFLOP/s (2 M N K / time). The
// "vs exact" column is ||y - y_exact|| / ||y_exact|| over the output (what quantizing x costs).
//
// --isa avx2 runs lowbit's AVX2 kernels (matmul_cpu_avx2, _avx2_int8_packed, and _avx2_int8
// for 8-bit weights beyond M = 16: what a CPU without AVX-512 VNNI gets) instead of
// select()'s choice; the peer
// is whatever libggml was built for
// (--ggml-dir: a build for AVX2 only is the fair peer there).
//
// Usage: bench_matmul_cpu [--n N] [--k K] [--m 1,16,512] [--types q4_0,...] [--reps R]
//                         [--threads 1,2] [--copy-mib M] [--ggml-dir DIR] [--isa avx2]
#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Dtype;
using lowbit::QuantizedTensor;
using lowbit::QuantScheme;
using lowbit::Tensor;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

struct Options {
  int64_t n = 4096, k = 14336;
  std::vector<int64_t> ms{1, 16, 512};
  std::vector<std::string> types{"q4_0",        "q8_0",  "q4_K",         "q6_K",
                                 "mxfp4",       "nvfp4", "int4:block32", "int4:block32:scale=f16",
                                 "int8:channel"};
  std::vector<int> threads{1, 2};
  int reps = 5;
  int64_t copy_bytes = int64_t{1} << 30;
  std::string ggml_dir;
  std::string isa;  ///< "avx2": lowbit's AVX2 kernels by name; empty: select()'s choice
};

Options parse(int argc, char** argv) {
  Options o;
  for (bench::ArgWalker a(argc, argv); a.next();) {
    if (a.name() == "--n") {
      o.n = std::atoll(a.value());
    } else if (a.name() == "--k") {
      o.k = std::atoll(a.value());
    } else if (a.name() == "--m") {
      o.ms.clear();
      for (const std::string& s : split(a.value())) o.ms.push_back(std::atoll(s.c_str()));
    } else if (a.name() == "--types") {
      o.types = split(a.value());
    } else if (a.name() == "--threads") {
      o.threads.clear();
      for (const std::string& s : split(a.value())) o.threads.push_back(std::atoi(s.c_str()));
    } else if (a.name() == "--reps") {
      o.reps = std::atoi(a.value());
    } else if (a.name() == "--copy-mib") {
      o.copy_bytes = std::atoll(a.value()) << 20;
    } else if (a.name() == "--isa") {
      o.isa = a.value();
      if (o.isa != "avx2") {
        std::fprintf(stderr, "--isa: only avx2 is known (got %s)\n", o.isa.c_str());
        std::exit(2);
      }
    } else if (a.name() == "--ggml-dir") {
      o.ggml_dir = a.value();
    } else {
      std::fprintf(stderr,
                   "usage: %s [--n N] [--k K] [--m 1,16,512] [--types q4_0,...] [--reps R] "
                   "[--threads 1,2] [--copy-mib M] [--ggml-dir DIR] [--isa avx2]\n",
                   argv[0]);
      std::exit(2);
    }
  }
  return o;
}

// ---- ggml (dlopen) --------------------------------------------------------------------------

// ggml.h / ggml-cpu.h / ggml-backend.h declarations, restated (ggml-python 0.0.45's libggml).
struct ggml_init_params {
  size_t mem_size;
  void* mem_buffer;
  bool no_alloc;
};
struct ggml_threadpool_params {
  bool cpumask[512];
  int n_threads;
  int prio;
  uint32_t poll;
  bool strict_cpu;
  bool paused;
};
struct ggml_cplan {
  size_t work_size;
  uint8_t* work_data;
  int n_threads;
  void* threadpool;
  bool (*abort_callback)(void*);
  void* abort_callback_data;
  bool use_ref;
};

struct Ggml {
  bool ok = false;
  std::string why;
  void* (*init)(ggml_init_params) = nullptr;
  void (*free)(void*) = nullptr;
  void* (*new_tensor_2d)(void*, int, int64_t, int64_t) = nullptr;
  void* (*mul_mat)(void*, void*, void*) = nullptr;
  void* (*new_graph)(void*) = nullptr;
  void (*build_forward_expand)(void*, void*) = nullptr;
  void* (*get_data)(const void*) = nullptr;
  size_t (*nbytes)(const void*) = nullptr;
  size_t (*tensor_overhead)() = nullptr;
  size_t (*graph_overhead)() = nullptr;
  size_t (*quantize_chunk)(int, const float*, void*, int64_t, int64_t, int64_t,
                           const float*) = nullptr;
  ggml_threadpool_params (*threadpool_params_default)(int) = nullptr;
  void* (*threadpool_new)(ggml_threadpool_params*) = nullptr;
  void (*threadpool_free)(void*) = nullptr;
  ggml_cplan (*graph_plan)(const void*, int, void*) = nullptr;
  int (*graph_compute)(void*, ggml_cplan*) = nullptr;
  void (*cpu_init)() = nullptr;
  int (*has_avx512)() = nullptr;
  int (*has_avx512_vnni)() = nullptr;
  void* (*repack_buft)() = nullptr;
  void* (*alloc_ctx_tensors_from_buft)(void*, void*) = nullptr;
  void (*tensor_set)(void*, const void*, size_t, size_t) = nullptr;
  void (*buffer_free)(void*) = nullptr;
};

template <class T>
bool sym(void* lib, const char* name, T* out) {
  *out = reinterpret_cast<T>(dlsym(lib, name));
  return *out != nullptr;
}

Ggml load_ggml(const std::string& dir_opt) {
  Ggml g;
  const auto bind = [&g](void* base, void* cpu) -> std::string {
    const bool ok =
        sym(base, "ggml_init", &g.init) && sym(base, "ggml_free", &g.free) &&
        sym(base, "ggml_new_tensor_2d", &g.new_tensor_2d) &&
        sym(base, "ggml_mul_mat", &g.mul_mat) && sym(base, "ggml_new_graph", &g.new_graph) &&
        sym(base, "ggml_build_forward_expand", &g.build_forward_expand) &&
        sym(base, "ggml_get_data", &g.get_data) && sym(base, "ggml_nbytes", &g.nbytes) &&
        sym(base, "ggml_tensor_overhead", &g.tensor_overhead) &&
        sym(base, "ggml_graph_overhead", &g.graph_overhead) &&
        sym(base, "ggml_quantize_chunk", &g.quantize_chunk) &&
        sym(base, "ggml_threadpool_params_default", &g.threadpool_params_default) &&
        sym(cpu, "ggml_threadpool_new", &g.threadpool_new) &&
        sym(cpu, "ggml_threadpool_free", &g.threadpool_free) &&
        sym(cpu, "ggml_graph_plan", &g.graph_plan) &&
        sym(cpu, "ggml_graph_compute", &g.graph_compute);
    if (!ok) return "a ggml symbol is missing";
    sym(cpu, "ggml_cpu_init", &g.cpu_init);
    sym(cpu, "ggml_cpu_has_avx512", &g.has_avx512);
    sym(cpu, "ggml_cpu_has_avx512_vnni", &g.has_avx512_vnni);
    sym(cpu, "_Z35ggml_backend_cpu_repack_buffer_typev", &g.repack_buft);
    sym(base, "ggml_backend_alloc_ctx_tensors_from_buft", &g.alloc_ctx_tensors_from_buft);
    sym(base, "ggml_backend_tensor_set", &g.tensor_set);
    sym(base, "ggml_backend_buffer_free", &g.buffer_free);
    return "";
  };
  g.ok = bench::open_ggml(dir_opt, bind, g.why);
  if (g.ok && g.cpu_init) g.cpu_init();
  return g;
}

/// A ggml weight tensor [K, N] (ggml's ne order) holding `bytes`: in a plain CPU buffer, or in
/// the CPU_REPACK buffer type (repacked by ggml_backend_tensor_set).
struct GgmlWeight {
  void* ctx = nullptr;
  void* tensor = nullptr;
  void* buffer = nullptr;
  size_t bytes = 0;
};

GgmlWeight ggml_weight(const Ggml& g, int type, int64_t n, int64_t k, const void* bytes,
                       bool repack) {
  GgmlWeight w;
  ggml_init_params p{};
  p.no_alloc = repack;
  p.mem_size = g.tensor_overhead() + 1024;
  if (!repack) {
    // Sized after the tensor is known: a first context only to ask ggml for the byte count.
    ggml_init_params q{g.tensor_overhead() + 1024, nullptr, true};
    void* c = g.init(q);
    const size_t nb = g.nbytes(g.new_tensor_2d(c, type, k, n));
    g.free(c);
    p.mem_size += nb + 256;
  }
  w.ctx = g.init(p);
  w.tensor = g.new_tensor_2d(w.ctx, type, k, n);
  w.bytes = g.nbytes(w.tensor);
  if (repack) {
    w.buffer = g.alloc_ctx_tensors_from_buft(w.ctx, g.repack_buft());
    g.tensor_set(w.tensor, bytes, 0, w.bytes);
  } else {
    std::memcpy(g.get_data(w.tensor), bytes, w.bytes);
  }
  return w;
}

void free_weight(const Ggml& g, GgmlWeight& w) {
  if (w.buffer && g.buffer_free) g.buffer_free(w.buffer);
  if (w.ctx) g.free(w.ctx);
  w = GgmlWeight();
}

/// Whether this ggml repacks `type` here: tried in a child process first, because ggml
/// aborts on a type without a repacked layout on this CPU.
bool ggml_repacks(const Ggml& g, int type, int64_t n, int64_t k, const void* bytes) {
  if (!g.repack_buft || !g.alloc_ctx_tensors_from_buft || !g.tensor_set) return false;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    // Small rows of the same type: enough to see whether ggml has a layout for it.
    const int fd = open("/dev/null", 1);
    if (fd >= 0) dup2(fd, 2);
    GgmlWeight w = ggml_weight(g, type, std::min<int64_t>(n, 64), k, bytes, true);
    _exit(w.tensor ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/// y = x . W^T through ggml_mul_mat: the graph built once, computed per call.
struct GgmlMatmul {
  void* ctx = nullptr;
  void* graph = nullptr;
  void* y = nullptr;
  void* pool = nullptr;
  ggml_cplan plan{};
  std::vector<uint8_t> work;
};

GgmlMatmul ggml_matmul(const Ggml& g, const GgmlWeight& w, const float* x, int64_t m, int64_t k,
                       int64_t n, int threads) {
  GgmlMatmul mm;
  ggml_init_params p{};
  p.mem_size =
      3 * g.tensor_overhead() + g.graph_overhead() + static_cast<size_t>(m * k + m * n) * 4 + 4096;
  mm.ctx = g.init(p);
  void* xt = g.new_tensor_2d(mm.ctx, 0 /* f32 */, k, m);
  std::memcpy(g.get_data(xt), x, static_cast<size_t>(m * k) * 4);
  mm.y = g.mul_mat(mm.ctx, w.tensor, xt);
  mm.graph = g.new_graph(mm.ctx);
  g.build_forward_expand(mm.graph, mm.y);
  ggml_threadpool_params tp = g.threadpool_params_default(threads);
  mm.pool = g.threadpool_new(&tp);
  mm.plan = g.graph_plan(mm.graph, threads, mm.pool);
  mm.work.resize(mm.plan.work_size + 64);
  mm.plan.work_data = mm.work.data();
  return mm;
}

void free_matmul(const Ggml& g, GgmlMatmul& mm) {
  if (mm.pool) g.threadpool_free(mm.pool);
  if (mm.ctx) g.free(mm.ctx);
  mm = GgmlMatmul();
}

/// int4:block32 with any scale dtype (int4:block32, int4:block32:scale=f16, ...): ggml's q4_0
/// holds the same symmetric int4 codes per 32 weights with an f16 scale.
bool is_int4_block32(const std::string& t) { return t.rfind("int4:block32", 0) == 0; }

int ggml_type_of(const std::string& t) {
  if (t == "q4_0" || is_int4_block32(t)) return 2;
  if (t == "q8_0" || t == "int8:channel") return 8;
  if (t == "q4_K") return 12;
  if (t == "q6_K") return 14;
  if (t == "mxfp4") return 39;
  if (t == "nvfp4") return 40;
  return -1;
}

/// x's scheme on lowbit's int8 path: q8_0 (ggml's choice for its 32-blocks; lowbit's kernel
/// takes per-32 x scales with any weight, so the K-quants get q8_0 too: finer than ggml's
/// q8_K, and the quantize op has a vectorised q8_0 but only the reference q8_K), int8:token
/// for W8A8 int8:channel.
std::string x_scheme_for(const std::string& t) {
  if (t == "int8:channel") return "int8:token";
  return "q8_0";
}

double rel_diff(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

struct Row {
  std::string type;
  int64_t m;
  int threads;
  std::string impl;
  double seconds;
  double weight_bytes;
  std::string note;
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const int64_t N = opt.n, K = opt.k;
  const int64_t max_m = *std::max_element(opt.ms.begin(), opt.ms.end());
  const Ggml ggml = load_ggml(opt.ggml_dir);

  // W: roughly normal values (sigma 0.02, like trained weights); x: sigma 1.
  Tensor wf = Tensor::empty({N, K}, Dtype::f32);
  Tensor xf = Tensor::empty({max_m, K}, Dtype::f32);
  {
    auto fill = [](float* p, int64_t n, float sigma, unsigned seed) {
#pragma omp parallel
      {
        std::mt19937 rng(seed + 977u * static_cast<unsigned>(omp_get_thread_num()));
        std::normal_distribution<float> nd(0.f, sigma);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) p[i] = nd(rng);
      }
    };
    fill(wf.data_as<float>(), N * K, 0.02f, 1u);
    fill(xf.data_as<float>(), max_m * K, 1.0f, 2u);
  }
  std::vector<uint8_t> copy_src(static_cast<size_t>(opt.copy_bytes), 1);
  std::vector<double> read_gbs(9, 0.0);
  volatile uint64_t sink = 0;
  for (int t : opt.threads) {
    omp_set_num_threads(t);
    double best = 1e30;
    for (int r = 0; r < opt.reps + 1; ++r)
      best = std::min(best, bench::seconds_of([&] {
                        sink = sink + bench::parallel_sum(
                                          reinterpret_cast<const uint64_t*>(copy_src.data()),
                                          opt.copy_bytes / 8);
                      }));
    read_gbs[t] = static_cast<double>(opt.copy_bytes) / best / 1e9;
  }
  copy_src.clear();
  copy_src.shrink_to_fit();

  std::vector<Row> rows;
  std::string arch;
  for (const std::string& type : opt.types) {
    const QuantScheme ws = QuantScheme::parse(type);
    const QuantizedTensor wq = lowbit::quantize(wf, ws);
    const double w_bytes = static_cast<double>(wq.nbytes());
    // ggml's weight bytes: lowbit's GGUF bytes are ggml's (byte-identical quantizers); for
    // the others ggml quantizes the same f32 weights into its own type.
    const int gtype = ggml_type_of(type);
    std::vector<uint8_t> gbytes;
    std::string peer_note;
    if (ggml.ok && gtype >= 0) {
      if (ws.format == lowbit::QuantFormat::gguf) {
        gbytes.assign(wq.codes.data_as<const uint8_t>(),
                      wq.codes.data_as<const uint8_t>() + wq.codes.nbytes());
      } else {
        ggml_init_params q{ggml.tensor_overhead() + 1024, nullptr, true};
        void* c = ggml.init(q);
        gbytes.resize(ggml.nbytes(ggml.new_tensor_2d(c, gtype, K, N)));
        ggml.free(c);
        ggml.quantize_chunk(gtype, wf.data_as<const float>(), gbytes.data(), 0, N, K, nullptr);
      }
      if (is_int4_block32(type)) {
        // Bits per weight: 4 for the code, the scale's bits over its 32 weights (f32 scales
        // make lowbit's W 11% larger than q4_0's; f16 / bf16 scales the same size).
        const double bits = 4.0 + lowbit::bit_width(ws.scale_dtype) / 32.0;
        peer_note = fmt::format("peer is ggml q4_0 (4.5 bits/weight; this W {:.2g})", bits);
      }
      if (type == "int8:channel") peer_note = "peer is ggml q8_0";
    }
    const bool repack = ggml.ok && gtype >= 0 && ggml_repacks(ggml, gtype, N, K, gbytes.data());
    GgmlWeight gplain, grepack;
    if (ggml.ok && gtype >= 0) {
      gplain = ggml_weight(ggml, gtype, N, K, gbytes.data(), false);
      if (repack) grepack = ggml_weight(ggml, gtype, N, K, gbytes.data(), true);
    }
    for (const int64_t M : opt.ms) {
      // lowbit plans: exact (weight-only) and int8 activations.
      lowbit::MatmulDesc d;
      d.m = M;
      d.n = N;
      d.k = K;
      d.x = Dtype::f32;
      d.w = ws;
      d.y = Dtype::f32;
      lowbit::MatmulDesc d8 = d;
      d8.x_scheme = QuantScheme::parse(x_scheme_for(type));
      // --isa avx2: the AVX2 kernels by name, as an AVX2 machine's select() would take them
      // (the prepared int8 kernel where it does not decline, else the plain one).
      auto pick = [&](const lowbit::MatmulDesc& desc, std::vector<std::string> names) {
        lowbit::Preference pref;
        for (size_t i = 0; opt.isa == "avx2" && i + 1 < names.size(); ++i) {
          pref.kernel = names[i];
          try {
            return lowbit::MatmulPlan::select(desc, pref);
          } catch (const lowbit::Error&) {  // declined: the next one
          }
        }
        pref.kernel = opt.isa == "avx2" ? names.back() : "";
        return lowbit::MatmulPlan::select(desc, pref);
      };
      const lowbit::MatmulPlan pe = pick(d, {"matmul_cpu_avx2"});
      const lowbit::MatmulPlan p8 =
          pick(d8, {"matmul_cpu_avx2_int8_packed", "matmul_cpu_avx2_int8"});
      arch = pe.sku().arch;
      Tensor ye = Tensor::empty({M, N}, Dtype::f32), y8 = Tensor::empty({M, N}, Dtype::f32);
      bench::prefault(ye.data(), ye.nbytes());
      bench::prefault(y8.data(), y8.nbytes());
      const lowbit::TensorView xv(xf.data(), Dtype::f32, {M, K});
      const size_t wsb = std::max(pe.workspace_size(), p8.workspace_size());
      lowbit::Buffer scratch(static_cast<int64_t>(std::max<size_t>(wsb, 64)),
                             lowbit::Device::cpu());
      bench::prefault(scratch.data(), static_cast<int64_t>(wsb));
      const lowbit::Workspace wspace{scratch.data(), wsb};
      const lowbit::Stream stream;
      const lowbit::MatmulArgs ae{xv, {}, wq.view(), {}, {}, ye};
      lowbit::MatmulArgs a8{xv, {}, wq.view(), {}, {}, y8};
      // The int8 plan's prepared weight, once (as QuantizedLinear keeps it).
      Tensor packed;
      std::string prep_note;
      if (const int64_t pb = lowbit::prepared_bytes(p8); pb > 0) {
        packed = Tensor::empty({pb}, Dtype::u8);
        const double tp = bench::seconds_of([&] { lowbit::prepare_weight(p8, wq.view(), packed); });
        a8.w_packed = packed;
        prep_note = fmt::format("W prepared once ({}, {:.0f} ms, {} threads)",
                                lowbit::weight_layout(p8), tp * 1e3, omp_get_max_threads());
      }
      for (int t : opt.threads) {
        omp_set_num_threads(t);
        std::vector<std::function<void()>> fs{[&] { pe.run(stream, wspace, ae); },
                                              [&] { p8.run(stream, wspace, a8); }};
        std::vector<std::string> names{
            "lowbit exact (" + std::string(pe.sku().kernel) + ")",
            "lowbit int8 x " + d8.x_scheme->str() + " (" + std::string(p8.sku().kernel) + ")"};
        GgmlMatmul gp, gr;
        if (gplain.tensor) {
          gp = ggml_matmul(ggml, gplain, xf.data_as<const float>(), M, K, N, t);
          fs.push_back([&] { ggml.graph_compute(gp.graph, &gp.plan); });
          names.push_back("ggml mul_mat (plain layout)");
          if (grepack.tensor) {
            gr = ggml_matmul(ggml, grepack, xf.data_as<const float>(), M, K, N, t);
            fs.push_back([&] { ggml.graph_compute(gr.graph, &gr.plan); });
            names.push_back("ggml mul_mat (CPU_REPACK layout)");
          }
        }
        const std::vector<double> best = bench::best_interleaved(opt.reps, fs, true);
        const float* yref = ye.data_as<const float>();
        for (size_t i = 0; i < fs.size(); ++i) {
          std::string note;
          const float* yi = i == 0 ? yref
                            : i == 1
                                ? y8.data_as<const float>()
                                : static_cast<const float*>(ggml.get_data(i == 2 ? gp.y : gr.y));
          if (i > 0) note = fmt::format("vs exact {:.1e}", rel_diff(yi, yref, M * N));
          if (i == 1 && !prep_note.empty()) note += "; " + prep_note;
          if (i >= 2 && !peer_note.empty()) note += "; " + peer_note;
          const double wb =
              i < 2 ? w_bytes : static_cast<double>(i == 2 ? gplain.bytes : grepack.bytes);
          rows.push_back({type, M, t, names[i], best[i], wb, note});
        }
        free_matmul(ggml, gp);
        free_matmul(ggml, gr);
      }
    }
    free_weight(ggml, gplain);
    free_weight(ggml, grepack);
  }

  std::printf(
      "bench_matmul_cpu: W N x K = %lld x %lld (sigma 0.02), x f32 (sigma 1), y f32; best of %d "
      "runs, implementations interleaved; %s; lowbit arch %s; peer: %s (avx512 %d, vnni %d)\n",
      static_cast<long long>(N), static_cast<long long>(K), opt.reps,
      lowbit::cpu_features().str().c_str(), arch.c_str(), ggml.why.c_str(),
      ggml.has_avx512 ? ggml.has_avx512() : -1, ggml.has_avx512_vnni ? ggml.has_avx512_vnni() : -1);
  for (int t : opt.threads)
    std::printf("streaming-read ceiling, %d thread%s: %.1f GB/s\n", t, t > 1 ? "s" : "",
                read_gbs[t]);
  std::printf(
      "\n| type | M | threads | implementation | us | weights GB/s | %% of read ceiling | "
      "GFLOP/s | x ggml best | note |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
  for (const Row& r : rows) {
    double ggml_best = 0;
    for (const Row& o : rows)
      if (o.type == r.type && o.m == r.m && o.threads == r.threads &&
          o.impl.rfind("ggml", 0) == 0 && (ggml_best == 0 || o.seconds < ggml_best))
        ggml_best = o.seconds;
    const double gbs = r.weight_bytes / r.seconds / 1e9;
    const double gflops = 2.0 * static_cast<double>(r.m * N * K) / r.seconds / 1e9;
    std::printf("| %s | %lld | %d | %s | %.0f | %.1f | %.0f%% | %.1f | %s | %s |\n", r.type.c_str(),
                static_cast<long long>(r.m), r.threads, r.impl.c_str(), r.seconds * 1e6, gbs,
                100.0 * gbs / read_gbs[r.threads], gflops,
                ggml_best > 0 ? fmt::format("{:.2f}", ggml_best / r.seconds).c_str() : "-",
                r.note.c_str());
  }
  return 0;
}
