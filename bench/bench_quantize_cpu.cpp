// CPU quantize / dequantize throughput against the machine's own ceilings and against ggml,
// all measured in the same run, on 1 and 2 threads:
//  * ceilings: a streaming read (u64 sum) and memcpy of 1 GiB (bytes read + written);
//  * lowbit (the kernel the plan selects: quantize_simd / dequantize_simd) on a large
//    tensor (default 4096 x 16384): Q8_0 and Q4_0 from f32 and back to f32; bf16 ->
//    int8:token, fp8e4m3:token, int4:block32, nvfp4, mxfp4 and back to bf16;
//  * the peer: ggml's own code from ggml-python's compiled libggml (dlopen):
//    ggml_quantize_chunk (ggml's reference quantizer, what llama-quantize runs without an
//    imatrix), the CPU backend's from_float (ggml_get_type_traits_cpu: the fast path
//    llama.cpp uses for activations; Q8_0's rounds half to even, so it is not byte-identical
//    to the reference) and to_float (ggml_get_type_traits). The lowbit Q8_0 / Q4_0 bytes
//    are compared with ggml_quantize_chunk's, and the dequantized floats with to_float's.
//
// lowbit and ggml run in turn, rep by rep (best of each), so that a busy moment of this
// shared machine does not fall on one side only.
//
// Usage: bench_quantize_cpu [--rows R] [--cols K] [--reps N] [--copy-mib M] [--ggml-dir DIR]
// GB/s counts bytes read + written; "f32 GiB/s" is the f32-side rate ggml's own benchmarks
// report (4 bytes per value / time, GiB); the percentages compare GB/s with the streaming-
// read and the copy ceilings on the same number of threads. Best of N timed runs (default 7)
// after one warm-up run.
#include <dlfcn.h>
#include <fmt/format.h>
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
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Dtype;
using lowbit::QuantizedTensor;
using lowbit::QuantScheme;
using lowbit::Shape;
using lowbit::Tensor;

struct Options {
  int64_t rows = 4096;
  int64_t cols = 16384;
  int reps = 7;
  int64_t copy_bytes = int64_t{1} << 30;
  std::string ggml_dir;
};

Options parse(int argc, char** argv) {
  Options o;
  for (bench::ArgWalker a(argc, argv); a.next();) {
    if (a.name() == "--rows") {
      o.rows = std::atoll(a.value());
    } else if (a.name() == "--cols") {
      o.cols = std::atoll(a.value());
    } else if (a.name() == "--reps") {
      o.reps = std::atoi(a.value());
    } else if (a.name() == "--copy-mib") {
      o.copy_bytes = std::atoll(a.value()) << 20;
    } else if (a.name() == "--ggml-dir") {
      o.ggml_dir = a.value();
    } else {
      std::fprintf(stderr,
                   "usage: %s [--rows R] [--cols K] [--reps N] [--copy-mib M] [--ggml-dir DIR]\n",
                   argv[0]);
      std::exit(2);
    }
  }
  return o;
}

// ---- ggml (dlopen) --------------------------------------------------------------------------

// ggml.h's declarations, restated (ggml-python 0.0.45's libggml).
using ggml_to_float_t = void (*)(const void* x, float* y, int64_t k);
using ggml_from_float_t = void (*)(const float* x, void* y, int64_t k);
struct ggml_type_traits {
  const char* type_name;
  int64_t blck_size;
  int64_t blck_size_interleave;
  size_t type_size;
  bool is_quantized;
  ggml_to_float_t to_float;
  ggml_from_float_t from_float_ref;
};
struct ggml_type_traits_cpu {
  ggml_from_float_t from_float;
  void* vec_dot;
  int vec_dot_type;
  int64_t nrows;
};

struct Ggml {
  bool ok = false;
  std::string why;
  size_t (*quantize_chunk)(int type, const float* src, void* dst, int64_t start, int64_t nrows,
                           int64_t n_per_row, const float* imatrix) = nullptr;
  const ggml_type_traits* (*traits)(int type) = nullptr;
  const ggml_type_traits_cpu* (*traits_cpu)(int type) = nullptr;
  void (*cpu_init)() = nullptr;
};

Ggml load_ggml(const std::string& dir_opt) {
  Ggml g;
  const auto bind = [&g](void* base, void* cpu) -> std::string {
    g.quantize_chunk =
        reinterpret_cast<decltype(g.quantize_chunk)>(dlsym(base, "ggml_quantize_chunk"));
    g.traits = reinterpret_cast<decltype(g.traits)>(dlsym(base, "ggml_get_type_traits"));
    g.traits_cpu = reinterpret_cast<decltype(g.traits_cpu)>(dlsym(cpu, "ggml_get_type_traits_cpu"));
    g.cpu_init = reinterpret_cast<decltype(g.cpu_init)>(dlsym(cpu, "ggml_cpu_init"));
    if (!g.quantize_chunk || !g.traits)
      return "ggml_quantize_chunk / ggml_get_type_traits not exported";
    return "";
  };
  g.ok = bench::open_ggml(dir_opt, bind, g.why);
  if (g.ok && g.cpu_init) g.cpu_init();
  return g;
}

constexpr int kGgmlQ4_0 = 2;
constexpr int kGgmlQ8_0 = 8;

/// Runs fn(row_begin, row_end) over the rows, split evenly between the OpenMP threads.
void split_rows(int64_t rows, const std::function<void(int64_t, int64_t)>& fn) {
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t lo = rows * t / n, hi = rows * (t + 1) / n;
    if (hi > lo) fn(lo, hi);
  }
}

// ---- the table ------------------------------------------------------------------------------

struct Row {
  std::string op, impl;
  int threads;
  double seconds, bytes, f32_bytes;
  std::string note;
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const int64_t R = opt.rows, K = opt.cols, n = R * K;
  const Shape shape{R, K};
  const int max_threads = std::min(2, omp_get_max_threads());
  const lowbit::CpuFeatures& cpu = lowbit::cpu_features();
  const Ggml ggml = load_ggml(opt.ggml_dir);

  Tensor f32 = Tensor::empty(shape, Dtype::f32);
  Tensor bf16 = Tensor::empty(shape, Dtype::bf16);
  {
    bench::fill_roughly_normal(f32.data_as<float>(), n);
    lowbit::convert(bf16, f32);
  }
  Tensor out_f32 = Tensor::empty(shape, Dtype::f32);
  Tensor out_bf16 = Tensor::empty(shape, Dtype::bf16);
  Tensor out_ggml = Tensor::empty(shape, Dtype::f32);
  bench::prefault(out_f32.data(), out_f32.nbytes());
  bench::prefault(out_ggml.data(), out_ggml.nbytes());
  bench::prefault(out_bf16.data(), out_bf16.nbytes());
  std::vector<uint8_t> copy_src(static_cast<size_t>(opt.copy_bytes), 1),
      copy_dst(static_cast<size_t>(opt.copy_bytes));
  bench::prefault(copy_dst.data(), opt.copy_bytes);

  struct Case {
    const char* scheme;
    const Tensor* src;
    Tensor* back;   // dequantize destination
    int ggml_type;  // 0: no ggml peer
  };
  const Case cases[] = {
      {"q8_0", &f32, &out_f32, kGgmlQ8_0},   {"q4_0", &f32, &out_f32, kGgmlQ4_0},
      {"int8:token", &bf16, &out_bf16, 0},   {"fp8e4m3:token", &bf16, &out_bf16, 0},
      {"int4:block32", &bf16, &out_bf16, 0}, {"nvfp4", &bf16, &out_bf16, 0},
      {"mxfp4", &bf16, &out_bf16, 0},
  };
  std::vector<QuantizedTensor> qs;
  for (const Case& c : cases) {
    qs.push_back(QuantizedTensor::allocate(QuantScheme::parse(c.scheme), shape));
    bench::prefault(qs.back().codes.data(), qs.back().codes.nbytes());
  }
  std::vector<uint8_t> ggml_q(
      static_cast<size_t>(lowbit::gguf::row_bytes(lowbit::gguf::GgmlType::q8_0, K) * R));
  bench::prefault(ggml_q.data(), static_cast<int64_t>(ggml_q.size()));

  std::vector<Row> rows;
  std::vector<double> copy_gbs(3, 0.0), read_gbs(3, 0.0);
  std::vector<std::string> notes;
  std::string qarch, darch;
  volatile uint64_t sink = 0;
  for (int threads = 1; threads <= max_threads; ++threads) {
    omp_set_num_threads(threads);
    const double cb = static_cast<double>(opt.copy_bytes);
    const double t_copy = bench::best_seconds(opt.reps, [&] {
      bench::parallel_memcpy(copy_dst.data(), copy_src.data(), opt.copy_bytes);
    });
    rows.push_back({"ceiling", "memcpy 1 GiB", threads, t_copy, 2 * cb, 0, ""});
    copy_gbs[threads] = 2 * cb / t_copy / 1e9;
    const double t_read = bench::best_seconds(opt.reps, [&] {
      sink = sink + bench::parallel_sum(reinterpret_cast<const uint64_t*>(copy_src.data()),
                                        opt.copy_bytes / 8);
    });
    rows.push_back({"ceiling", "streaming read (u64 sum) 1 GiB", threads, t_read, cb, 0, ""});
    read_gbs[threads] = cb / t_read / 1e9;

    for (size_t ci = 0; ci < std::size(cases); ++ci) {
      const Case& c = cases[ci];
      QuantizedTensor& q = qs[ci];
      const double src_bytes = static_cast<double>(c.src->nbytes());
      const double q_bytes = static_cast<double>(q.nbytes());
      const double f32_side = 4.0 * static_cast<double>(n);
      const std::string from = std::string(lowbit::dtype_name(c.src->dtype()));
      const std::string qname = fmt::format("quantize {} -> {}", from, c.scheme);
      const std::string dname = fmt::format("dequantize {} -> {}", c.scheme, from);

      const lowbit::QuantizePlan qp =
          lowbit::QuantizePlan::select(lowbit::QuantizeDesc::for_views(q.view(), *c.src));
      qarch = qp.sku().arch;
      const lowbit::DequantizePlan dp =
          lowbit::DequantizePlan::select(lowbit::DequantizeDesc::for_views(*c.back, q.view()));
      darch = dp.sku().arch;
      const lowbit::Stream stream;
      auto lowbit_q = [&] { qp.run(stream, {}, {*c.src, q.view()}); };
      auto lowbit_d = [&] { dp.run(stream, {}, {q.view(), *c.back}); };
      const double q_rw = src_bytes + q_bytes;
      const double d_rw = q_bytes + static_cast<double>(c.back->nbytes());
      if (!c.ggml_type || !ggml.ok) {
        rows.push_back({qname, "lowbit " + qp.sku().kernel, threads,
                        bench::best_seconds(opt.reps, lowbit_q), q_rw, f32_side, ""});
        rows.push_back({dname, "lowbit " + dp.sku().kernel, threads,
                        bench::best_seconds(opt.reps, lowbit_d), d_rw, f32_side, ""});
        if (c.ggml_type) rows.push_back({qname, "ggml", threads, 0, 0, 0, "skipped: " + ggml.why});
        continue;
      }
      // GGUF: lowbit and ggml measured in turn; outputs compared first.
      const float* x = f32.data_as<const float>();
      const int64_t rb = lowbit::gguf::row_bytes(
          c.ggml_type == kGgmlQ8_0 ? lowbit::gguf::GgmlType::q8_0 : lowbit::gguf::GgmlType::q4_0,
          K);
      uint8_t* y = ggml_q.data();
      const size_t qbytes = static_cast<size_t>(rb * R);
      auto ggml_chunk = [&] {
        split_rows(R, [&](int64_t r0, int64_t r1) {
          ggml.quantize_chunk(c.ggml_type, x, y, r0 * K, r1 - r0, K, nullptr);
        });
      };
      const ggml_type_traits_cpu* tc = ggml.traits_cpu ? ggml.traits_cpu(c.ggml_type) : nullptr;
      auto ggml_fast = [&] {
        split_rows(R, [&](int64_t r0, int64_t r1) {
          tc->from_float(x + r0 * K, y + r0 * rb, (r1 - r0) * K);
        });
      };
      lowbit_q();
      ggml_chunk();
      const bool same = std::memcmp(y, q.codes.data(), qbytes) == 0;
      std::vector<std::function<void()>> qf{lowbit_q, ggml_chunk};
      bool same_fast = false;
      if (tc && tc->from_float) {
        ggml_fast();
        same_fast = std::memcmp(y, q.codes.data(), qbytes) == 0;
        qf.push_back(ggml_fast);
      }
      const std::vector<double> tq = bench::best_interleaved(opt.reps, qf);
      rows.push_back({qname, "lowbit " + qp.sku().kernel, threads, tq[0], q_rw, f32_side, ""});
      rows.push_back({qname, "ggml_quantize_chunk (reference)", threads, tq[1], q_rw, f32_side,
                      same ? "lowbit bytes identical" : "lowbit bytes DIFFER"});
      if (tc && tc->from_float) {
        rows.push_back({qname, "ggml CPU from_float", threads, tq[2], q_rw, f32_side,
                        same_fast ? "bytes identical to lowbit"
                                  : "differs from the reference (round-half-even)"});
      } else {
        rows.push_back({qname, "ggml CPU from_float", threads, 0, 0, 0,
                        "skipped: ggml_get_type_traits_cpu not exported"});
      }
      const ggml_type_traits* tt = ggml.traits(c.ggml_type);
      if (!tt || !tt->to_float) {
        rows.push_back({dname, "lowbit " + dp.sku().kernel, threads,
                        bench::best_seconds(opt.reps, lowbit_d), d_rw, f32_side, ""});
        continue;
      }
      // ggml dequantizes the same bytes (lowbit's, identical to its reference's) into its
      // own buffer.
      const uint8_t* qb = q.codes.data_as<const uint8_t>();
      float* out = out_ggml.data_as<float>();
      auto ggml_d = [&] {
        split_rows(R, [&](int64_t r0, int64_t r1) {
          tt->to_float(qb + r0 * rb, out + r0 * K, (r1 - r0) * K);
        });
      };
      lowbit_d();
      ggml_d();
      const bool same_d =
          std::memcmp(c.back->data(), out, static_cast<size_t>(c.back->nbytes())) == 0;
      const std::vector<double> td = bench::best_interleaved(opt.reps, {lowbit_d, ggml_d});
      rows.push_back({dname, "lowbit " + dp.sku().kernel, threads, td[0], d_rw, f32_side, ""});
      rows.push_back({dname, "ggml to_float", threads, td[1], d_rw, f32_side,
                      same_d ? "lowbit floats identical" : "lowbit floats DIFFER"});
    }
  }

  std::printf(
      "bench_quantize_cpu: %lld x %lld (roughly normal, sigma 1), best of %d runs; lowbit "
      "dispatches quantize to %s, dequantize to %s; %s; peer: %s\n\n",
      static_cast<long long>(R), static_cast<long long>(K), opt.reps, qarch.c_str(), darch.c_str(),
      cpu.str().c_str(), ggml.why.c_str());
  std::printf(
      "| op | implementation | threads | ms | GB/s (read + written) | f32 GiB/s | %% of read "
      "ceiling | %% of copy ceiling | note |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
  for (const std::string& op : bench::first_seen_order(rows, [](const Row& r) { return r.op; }))
    for (const Row& r : rows) {
      if (r.op != op) continue;
      if (r.seconds == 0) {
        std::printf("| %s | %s | %d | - | - | - | - | - | %s |\n", r.op.c_str(), r.impl.c_str(),
                    r.threads, r.note.c_str());
        continue;
      }
      const double gbs = r.bytes / r.seconds / 1e9;
      const std::string f32s =
          r.f32_bytes > 0 ? fmt::format("{:.1f}", r.f32_bytes / r.seconds / (1 << 30)) : "-";
      std::printf("| %s | %s | %d | %.2f | %.1f | %s | %.0f%% | %.0f%% | %s |\n", r.op.c_str(),
                  r.impl.c_str(), r.threads, r.seconds * 1e3, gbs, f32s.c_str(),
                  100.0 * gbs / read_gbs[r.threads], 100.0 * gbs / copy_gbs[r.threads],
                  r.note.c_str());
    }
  return 0;
}
