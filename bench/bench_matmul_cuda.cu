// bench_matmul_cuda: lowbit's CUDA matmul kernels on GPU 0 beside cuBLAS bf16 (cuBLASLt, the
// library torch.nn.functional.linear calls) and the device-to-device copy ceiling, all measured
// in this process; bench_matmul_torch.py measures the PyTorch peers (F.linear, tinygemm,
// _int_mm, _scaled_mm) in the same device call and joins both tables.
//
// Linear layers y[M, N] = x[M, K] · W[N, K]^T, bf16 x and y, N x K = 8192x8192, 14336x4096,
// 4096x14336, M = 1, 16, 64, 256, 2048:
//  * weight-only, every M: int4:block32, int4:block128, nvfp4, mxfp4, int8:channel,
//    fp8e4m3:channel; GEMV rows only (M = 1, 16) on 4096x14336: int4:block64,
//    int4:block32:asym, int8:block32, fp8e5m2:channel, fp8e4m3:tensor, q4_0, q8_0, q4_K, q6_K.
//  * W8A8, every M: int8:token x int8:channel, fp8e4m3:token x fp8e4m3:channel,
//    fp8e4m3:tensor x fp8e4m3:tensor, with x given as bf16 (quantized in front, "dyn") and
//    given quantized ("pre").
// Each row is timed with CUDA events around the call alone, after writing a 256 MiB buffer
// (so that every call reads its weights from HBM, as triton.testing.do_bench does for the
// peers); the median of the repetitions is reported. That flush leaves L2 full of dirty lines
// which a call's reads evict to HBM (measured on the H200: it costs cuBLAS bf16's 134 MB read
// 15-22% and the skinny kernel 0-10%), so the "clean-L2" rows (M = 1, 16: cuBLAS bf16 and the
// skinny kernel) time the same calls after the write and then a read of another 256 MiB
// buffer, which leaves clean lines in L2. The "read-floor" rows (M = 1) time a kernel that
// only reads as many bytes as the scheme's weight, under the same flush: no GEMV over that
// weight can be faster, so its "x cuBLAS bf16" is the most any kernel could show there. Weight
// bytes are the scheme's own (codes + scales + zero points, the plain layout's size); GB/s =
// (weight + x + y bytes) / time, shown as a share of the copy ceiling. Every weight-only row is
// checked against the plain dequantize + cuBLASLt path (relative Frobenius error <= 1e-2) and
// reports its kernel; from M = 16 on, the other tensor-core kernels (the medium, wgmma and
// warp-specialized wgmma kernels where they take the M, dequantize + cuBLASLt) are timed and
// checked beside the selected one.
//
// Usage: bench_matmul_cuda [--json PATH] [--reps N] [--quick] [--scheme S] [--shape NxK] [--m M]
//                          [--w8a8]   (the W8A8 rows alone)
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_cuda_harness.cuh"
#include "lowbit/convert.hpp"
#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "ops/matmul/matmul_cuda_common.cuh"

namespace {

using lowbit::Device;
using lowbit::Dtype;

using bench::check;

/// sum((a - b)^2), sum(b^2) over n bf16 values.
__global__ void diff_norms(const uint16_t* a, const uint16_t* b, uint64_t n, double* out) {
  double d = 0, r = 0;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const float x = __uint_as_float(static_cast<uint32_t>(a[i]) << 16);
    const float y = __uint_as_float(static_cast<uint32_t>(b[i]) << 16);
    d += static_cast<double>(x - y) * (x - y);
    r += static_cast<double>(y) * y;
  }
  atomicAdd(out, d);
  atomicAdd(out + 1, r);
}

struct Row {
  std::string group;  // "weight-only", "w8a8", "bf16", "copy"
  std::string scheme;
  int64_t n = 0, k = 0, m = 0;
  int64_t wbytes = 0, bytes = 0;
  double ms = 0, gbps = 0, pct = 0, tflops = 0, vs_bf16 = 0;
  std::string kernel;
  std::string check = "-";
  /// A row for scripts/gpu-check's short summary.
  bool key() const {
    if (group == "copy") return true;
    if (n != 8192 || k != 8192) return false;
    if (group == "bf16") return m == 1 || m == 16 || m == 2048;
    if (group == "weight-only")
      return (m == 1 || m == 16) &&
             (scheme == "int4:block32" || scheme == "nvfp4" || scheme == "int8:channel");
    return m == 2048 && scheme == "fp8e4m3:tokenxfp8e4m3:channel pre";
  }
  std::string pair() const {
    return group + " " + scheme + " " + std::to_string(n) + "x" + std::to_string(k) +
           " M=" + std::to_string(m);
  }
};

/// Reads n 16-byte words: afterwards L2 holds clean lines of this buffer only.
__global__ void read_words(const uint4* p, uint64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // keeps the loads; the buffer is zeros
}

/// The fastest plain read of n 16-byte words measured here (the read-floor rows): loads that
/// skip L1, four in flight per thread (launched with 8 blocks of 512 threads per SM).
__global__ void read_floor(const uint4* p, uint64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
#pragma unroll 4
  for (; i < n; i += stride) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p + i));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

struct Timer {
  cudaStream_t s;
  void* flush = nullptr;
  size_t flush_bytes = size_t{256} << 20;
  void* clean = nullptr;  ///< flush_bytes of zeros, read after the flush for clean-L2 timings
  int reps = 15;
  /// Median ms of `fn`, each repetition after a write of the flush buffer (and, when
  /// `clean_l2`, a read of the clean buffer).
  double median(const std::function<void()>& fn, int reps_override = 0, bool clean_l2 = false) {
    return bench::median_ms(s, 2, reps_override ? reps_override : reps, fn, [&](int r) {
      check(cudaMemsetAsync(flush, r & 0xff, flush_bytes, s), "flush");
      if (clean_l2) {
        read_words<<<1024, 256, 0, s>>>(static_cast<const uint4*>(clean), flush_bytes / 16,
                                        static_cast<uint32_t*>(flush));
        check(cudaGetLastError(), "read_words");
      }
    });
  }
};

/// A quantized copy of `w` (f32 [n, k] on the GPU) on the GPU. GGUF K-quants have no CUDA
/// quantizer: 128 rows are quantized on the host and repeated (the speed does not depend on
/// the values).
lowbit::QuantizedTensor quantize_weight(const lowbit::Tensor& w, const lowbit::QuantScheme& s,
                                        const lowbit::Stream& stream) {
  const Device gpu = w.device();
  const int64_t n = w.shape()[0], k = w.shape()[1];
  stream.synchronize();  // w is written on `stream`; the copies below use the legacy stream
  if (s.format == lowbit::QuantFormat::gguf && !lowbit::quant_cuda::is_gguf_fast(s)) {
    const int64_t rows = 128;
    lowbit::Tensor h = lowbit::Tensor::empty({rows, k}, Dtype::f32);
    check(cudaMemcpy(h.data(), w.data(), static_cast<size_t>(rows * k * 4), cudaMemcpyDefault),
          "copy rows");
    const lowbit::QuantizedTensor qh = lowbit::quantize(h, s);
    lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(s, {n, k}, gpu);
    const size_t rb =
        static_cast<size_t>(lowbit::storage_bytes(qh.codes.dtype(), qh.codes.numel()));
    for (int64_t r = 0; r < n; r += rows)
      check(cudaMemcpy(static_cast<uint8_t*>(q.codes.data()) + r / rows * rb, qh.codes.data(),
                       std::min<size_t>(rb, static_cast<size_t>((n - r) / rows) * rb),
                       cudaMemcpyDefault),
            "copy blocks");
    return q;
  }
  lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(s, {n, k}, gpu);
  lowbit::quantize_into(q.view(), w, false, &stream);
  stream.synchronize();
  return q;
}

/// The named kernel's own reason in select()'s "no kernel implements ..." message, which
/// lists every kernel's ("...; matmul_x: why; matmul_y: why"); the whole message if absent.
std::string own_reason(const std::string& what, const std::string& kernel) {
  const std::string key = "; " + kernel + ": ";
  const size_t at = what.find(key);
  if (at == std::string::npos) return what;
  const size_t from = at + key.size();
  const size_t end = what.find("; matmul_", from);
  return what.substr(from, end == std::string::npos ? std::string::npos : end - from);
}

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_matmul_cuda";
  std::string json_path;
  int reps = 15;
  bool quick = false;
  std::string only_scheme, only_shape, only_m;  // --scheme S --shape NxK --m M: one case
  bool w8a8_only = false;                       // --w8a8: the W8A8 rows alone
  const bool parsed =
      bench::CommandLine()
          .value("--json", [&](const char* v) { json_path = v; })
          .value("--reps", [&](const char* v) { reps = std::max(3, std::atoi(v)); })
          .flag("--quick", &quick)
          .flag("--w8a8", &w8a8_only)
          .value("--scheme", [&](const char* v) { only_scheme = v; })
          .value("--shape", [&](const char* v) { only_shape = v; })
          .value("--m", [&](const char* v) { only_m = v; })
          .parse(argc, argv,
                 "[--json PATH] [--reps N] [--quick] [--scheme S] [--shape NxK] [--m M]");
  if (!parsed) return 2;
  if (bench::skip_without_gpu()) return 0;
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    lowbit::Buffer flush(static_cast<int64_t>(256) << 20, gpu, &stream);
    lowbit::Buffer clean(static_cast<int64_t>(256) << 20, gpu, &stream);
    check(cudaMemsetAsync(clean.data(), 0, static_cast<size_t>(256) << 20, s), "memset");
    Timer timer{s, flush.data()};
    timer.clean = clean.data();
    timer.reps = reps;
    std::vector<Row> rows;

    // The copy ceiling: 1 GiB device to device.
    double copy_gbps = 0;
    {
      Row r;
      r.group = "copy";
      r.scheme = "d2d 1 GiB";
      r.bytes = 2 * bench::kCopyBytes;
      r.ms = bench::copy_d2d_ms(
          gpu, stream, [&](const std::function<void()>& copy) { return timer.median(copy); });
      r.gbps = r.bytes / r.ms / 1e6;
      copy_gbps = r.gbps;
      r.pct = 100;
      r.kernel = "cudaMemcpyAsync";
      rows.push_back(r);
    }

    // --shape NxK picks one of the three, or times any other N x K (experiments).
    std::vector<std::array<int64_t, 2>> shapes = {{8192, 8192}, {14336, 4096}, {4096, 14336}};
    if (!only_shape.empty()) {
      int64_t sn = 0, sk = 0;
      if (std::sscanf(only_shape.c_str(), "%" SCNd64 "x%" SCNd64, &sn, &sk) != 2 || sn <= 0 ||
          sk <= 0) {
        std::fprintf(stderr, "bench_matmul_cuda: --shape wants NxK, got %s\n", only_shape.c_str());
        return 2;
      }
      shapes = {{sn, sk}};
    }
    std::vector<int64_t> ms = {1, 16, 64, 256, 2048};
    if (quick) ms = {1, 16, 256};
    if (!only_m.empty()) ms = {std::atoll(only_m.c_str())};
    const char* full_schemes[] = {"int4:block32", "int4:block128", "nvfp4",
                                  "mxfp4",        "int8:channel",  "fp8e4m3:channel"};
    const char* gemv_schemes[] = {"int4:block64",
                                  "int4:block32:asym",
                                  "int8:block32",
                                  "fp8e5m2:channel",
                                  "fp8e4m3:tensor",
                                  "q4_0",
                                  "q8_0",
                                  "q4_K",
                                  "q6_K"};
    struct W8A8 {
      const char* x;
      const char* w;
    };
    const W8A8 w8a8[] = {{"int8:token", "int8:channel"},
                         {"fp8e4m3:token", "fp8e4m3:channel"},
                         {"fp8e4m3:tensor", "fp8e4m3:tensor"}};

    for (const auto& shape : shapes) {
      const int64_t n = shape[0], k = shape[1];
      const int64_t mmax = ms.back();
      lowbit::Tensor wf = lowbit::Tensor::empty({n, k}, Dtype::f32, gpu, &stream);
      bench::fill_normal<<<2048, 256, 0, s>>>(wf.data_as<float>(), static_cast<uint64_t>(n * k), 7,
                                              0.02f);
      lowbit::Tensor wb = lowbit::Tensor::empty({n, k}, Dtype::bf16, gpu, &stream);
      lowbit::convert(wb, wf, lowbit::Saturation::none, &stream);
      lowbit::Tensor xf = lowbit::Tensor::empty({mmax, k}, Dtype::f32, gpu, &stream);
      bench::fill_normal<<<2048, 256, 0, s>>>(xf.data_as<float>(), static_cast<uint64_t>(mmax * k),
                                              99, 1.0f);
      lowbit::Tensor xb = lowbit::Tensor::empty({mmax, k}, Dtype::bf16, gpu, &stream);
      lowbit::convert(xb, xf, lowbit::Saturation::none, &stream);
      lowbit::Tensor y = lowbit::Tensor::empty({mmax, n}, Dtype::bf16, gpu, &stream);
      lowbit::Tensor yref = lowbit::Tensor::empty({mmax, n}, Dtype::bf16, gpu, &stream);
      lowbit::Buffer lt_ws(static_cast<int64_t>(lowbit::mm_cuda::kLtWorkspace), gpu, &stream);
      lowbit::Buffer norms(16, gpu, &stream);
      stream.synchronize();

      auto xv = [&](int64_t m) { return lowbit::TensorView(xb.data(), Dtype::bf16, {m, k}, gpu); };
      auto yv = [&](const lowbit::Tensor& t, int64_t m) {
        return lowbit::TensorView(t.data(), Dtype::bf16, {m, n}, gpu);
      };

      // cuBLAS bf16 (cuBLASLt, y = x W^T), per M.
      std::vector<double> bf16_ms(ms.size()), bf16_clean_ms(ms.size());
      for (size_t mi = 0; mi < ms.size(); ++mi) {
        const int64_t m = ms[mi];
        lowbit::mm_cuda::LtGemm g;
        g.n = n;
        g.m = m;
        g.k = k;
        g.lda = k;
        g.ldb = k;
        g.ldd = n;
        const float one = 1.0f;
        Row r;
        r.group = "bf16";
        r.scheme = "cuBLASLt bf16";
        r.n = n, r.k = k, r.m = m;
        r.wbytes = n * k * 2;
        r.bytes = r.wbytes + m * k * 2 + m * n * 2;
        r.ms = timer.median([&] {
          lowbit::mm_cuda::lt_run(g, wb.data(), xb.data(), y.data(), nullptr, nullptr, nullptr,
                                  &one, lt_ws.data(), lowbit::mm_cuda::kLtWorkspace, s);
        });
        r.kernel = "cublasLtMatmul";
        bf16_ms[mi] = r.ms;
        rows.push_back(r);
        if (m <= 16) {
          r.group = "clean-L2";
          r.ms = timer.median(
              [&] {
                lowbit::mm_cuda::lt_run(g, wb.data(), xb.data(), y.data(), nullptr, nullptr,
                                        nullptr, &one, lt_ws.data(), lowbit::mm_cuda::kLtWorkspace,
                                        s);
              },
              0, true);
          bf16_clean_ms[mi] = r.ms;
          rows.push_back(r);
        }
      }

      // y against yref (the dequantize path's result): "ok 3.1e-03" or "BAD ...".
      auto check_y = [&](int64_t m) {
        check(cudaMemsetAsync(norms.data(), 0, 16, s), "memset");
        diff_norms<<<256, 256, 0, s>>>(y.data_as<const uint16_t>(), yref.data_as<const uint16_t>(),
                                       static_cast<uint64_t>(m * n),
                                       static_cast<double*>(norms.data()));
        double h[2];
        check(cudaMemcpyAsync(h, norms.data(), 16, cudaMemcpyDefault, s), "norms");
        stream.synchronize();
        const double rel = std::sqrt(h[0] / std::max(h[1], 1e-300));
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s %.1e", rel <= 1e-2 ? "ok" : "BAD", rel);
        return std::string(buf);
      };

      auto run_weight_only = [&](const char* text, const std::vector<int64_t>& m_list) {
        const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(text);
        const lowbit::QuantizedTensor q = quantize_weight(wf, scheme, stream);
        const int64_t wbytes = bench::quantized_bytes(q);
        std::vector<std::pair<std::string, lowbit::Tensor>> packed;  // layout -> bytes
        for (const int64_t m : m_list) {
          const size_t mi = static_cast<size_t>(std::find(ms.begin(), ms.end(), m) - ms.begin());
          const lowbit::MatmulDesc d = lowbit::MatmulDesc::for_views(yv(y, m), xv(m), q.view());
          const lowbit::MatmulPlan plan = lowbit::MatmulPlan::select(d);
          lowbit::MatmulArgs args{xv(m), {}, q.view(), {}, {}, yv(y, m)};
          if (const int64_t pb = lowbit::prepared_bytes(plan); pb > 0) {
            const std::string layout = lowbit::weight_layout(plan);
            auto it = std::find_if(packed.begin(), packed.end(),
                                   [&](const auto& p) { return p.first == layout; });
            if (it == packed.end()) {
              lowbit::Tensor t = lowbit::Tensor::empty({pb}, Dtype::u8, gpu);
              lowbit::prepare_weight(plan, q.view(), t);
              packed.emplace_back(layout, std::move(t));
              it = packed.end() - 1;
            }
            args.w_packed = it->second;
          }
          lowbit::Buffer ws(static_cast<int64_t>(std::max<size_t>(plan.workspace_size(), 1)), gpu,
                            &stream);
          const lowbit::Workspace wsp{ws.data(), plan.workspace_size()};
          Row r;
          r.group = "weight-only";
          r.scheme = text;
          r.n = n, r.k = k, r.m = m;
          r.wbytes = wbytes;
          r.bytes = wbytes + m * k * 2 + m * n * 2;
          r.ms = timer.median([&] { plan.run(stream, wsp, args); });
          r.kernel = plan.sku().kernel;
          if (mi < bf16_ms.size()) r.vs_bf16 = bf16_ms[mi] / r.ms;
          // Check against the dequantize + cuBLASLt path (the plain layout's when it has one).
          std::string verdict = "-";
          try {
            lowbit::Preference ref;
            ref.kernel = lowbit::quant_cuda::is_gguf_fast(scheme) ||
                                 scheme.format != lowbit::QuantFormat::gguf
                             ? "matmul_cuda_dequant_lt"
                             : "matmul_cuda_dequant_tc_lt";
            const lowbit::MatmulDesc dr =
                lowbit::MatmulDesc::for_views(yv(yref, m), xv(m), q.view());
            const lowbit::MatmulPlan rp = lowbit::MatmulPlan::select(dr, ref);
            lowbit::MatmulArgs rargs{xv(m), {}, q.view(), {}, {}, yv(yref, m)};
            lowbit::Tensor rpacked;
            if (const int64_t pb = lowbit::prepared_bytes(rp); pb > 0) {
              rpacked = lowbit::Tensor::empty({pb}, Dtype::u8, gpu);
              lowbit::prepare_weight(rp, q.view(), rpacked);
              rargs.w_packed = rpacked;
            }
            lowbit::Buffer rws(static_cast<int64_t>(rp.workspace_size()), gpu, &stream);
            rp.run(stream, {rws.data(), rp.workspace_size()}, rargs);
            verdict = check_y(m);
          } catch (const lowbit::Error& e) {
            verdict = "no ref (" + std::string(e.what()).substr(0, 60) + ")";
          }
          r.check = verdict;
          rows.push_back(r);
          std::fprintf(stderr, "  %-60s %.4f ms %s\n", r.pair().c_str(), r.ms, r.check.c_str());
          if (m <= 16 && r.kernel == "matmul_cuda_skinny_tc") {
            Row rc = r;
            rc.group = "clean-L2";
            rc.ms = timer.median([&] { plan.run(stream, wsp, args); }, 0, true);
            rc.vs_bf16 = bf16_clean_ms[mi] > 0 ? bf16_clean_ms[mi] / rc.ms : 0;
            rc.check = "-";
            rows.push_back(rc);
            std::fprintf(stderr, "  %-60s %.4f ms (clean L2)\n", rc.pair().c_str(), rc.ms);
          }
          // The floor for these weight bytes: a kernel that only reads them (read_floor, the
          // same flush), and what it would give against cuBLAS bf16. A GEMV cannot beat it
          // by more than the noise, whatever its arithmetic.
          if (m == 1) {
            Row rf = r;
            rf.group = "read-floor";
            rf.bytes = wbytes;
            const auto words = static_cast<uint64_t>(wbytes / 16);
            rf.ms = timer.median([&] {
              read_floor<<<static_cast<unsigned>(props.multiprocessors * 8), 512, 0, s>>>(
                  static_cast<const uint4*>(timer.clean), words,
                  static_cast<uint32_t*>(timer.flush));
            });
            rf.kernel = "read_floor";
            rf.vs_bf16 = mi < bf16_ms.size() ? bf16_ms[mi] / rf.ms : 0;
            rf.check = "-";
            rows.push_back(rf);
            std::fprintf(stderr, "  %-60s %.4f ms (reading the weight bytes only)\n",
                         rf.pair().c_str(), rf.ms);
          }
          // From M = 16 on, the other tensor-core kernels beside the selected one (the
          // crossovers select() uses): the medium and wgmma GEMMs and dequantize + cuBLASLt.
          struct Alt {
            const char* kernel;
            const char* label;
          };
          const Alt alts[] = {{"matmul_cuda_medium_tc", " (medium tc)"},
                              {"matmul_cuda_wgmma_tc", " (wgmma tc)"},
                              {"matmul_cuda_wgmma_ws_tc", " (wgmma ws)"},
                              {"matmul_cuda_wgmma_ws64_tc", " (wgmma ws64)"},
                              {"matmul_cuda_wgmma_ws128_tc", " (wgmma ws128)"},
                              {"matmul_cuda_dequant_tc_lt", " (dequant+GEMM)"}};
          for (const Alt& al : alts) {
            if (m < 16 || r.kernel == al.kernel) continue;
            try {
              lowbit::Preference alt;
              alt.kernel = al.kernel;
              const lowbit::MatmulPlan ap = lowbit::MatmulPlan::select(d, alt);
              lowbit::MatmulArgs aargs = args;
              lowbit::Tensor apacked;
              if (lowbit::weight_layout(ap) != lowbit::weight_layout(plan)) {
                apacked = lowbit::Tensor::empty({lowbit::prepared_bytes(ap)}, Dtype::u8, gpu);
                lowbit::prepare_weight(ap, q.view(), apacked);
                aargs.w_packed = apacked;
              }
              lowbit::Buffer aws(static_cast<int64_t>(std::max<size_t>(ap.workspace_size(), 1)),
                                 gpu, &stream);
              Row ra = r;
              ra.scheme = std::string(text) + al.label;
              ra.ms = timer.median([&] {
                ap.run(stream, {aws.data(), ap.workspace_size()}, aargs);
              });
              ra.kernel = ap.sku().kernel;
              ra.vs_bf16 = mi < bf16_ms.size() ? bf16_ms[mi] / ra.ms : 0;
              ra.check = verdict.rfind("ok", 0) == 0 ? check_y(m) : "-";
              rows.push_back(ra);
              std::fprintf(stderr, "  %-60s %.4f ms %s\n", ra.pair().c_str(), ra.ms,
                           ra.check.c_str());
            } catch (const lowbit::Error& e) {
              std::fprintf(stderr, "  %s declines: %s\n", al.kernel,
                           own_reason(e.what(), al.kernel).c_str());
            }
          }
        }
      };

      auto guarded = [&](const char* text, const std::vector<int64_t>& m_list) {
        try {
          run_weight_only(text, m_list);
        } catch (const lowbit::Error& e) {
          std::fprintf(stderr, "  %s %lldx%lld: FAILED: %s\n", text, static_cast<long long>(n),
                       static_cast<long long>(k), e.what());
          Row r;
          r.group = "weight-only";
          r.scheme = text;
          r.n = n, r.k = k;
          r.check = "BAD (error)";
          r.kernel = e.what();
          rows.push_back(r);
        }
      };
      if (!only_scheme.empty()) {
        guarded(only_scheme.c_str(), ms);
        continue;
      }
      if (!w8a8_only)
        for (const char* text : full_schemes) guarded(text, ms);
      // The GEMV schemes at M = 1 and 16 where this run measures them (x holds ms.back() rows:
      // a larger M would read past it).
      std::vector<int64_t> gemv_ms;
      for (const int64_t m : {int64_t{1}, int64_t{16}})
        if (std::find(ms.begin(), ms.end(), m) != ms.end()) gemv_ms.push_back(m);
      if (n == 4096 && k == 14336 && !gemv_ms.empty() && !w8a8_only)
        for (const char* text : gemv_schemes) guarded(text, gemv_ms);

      for (const W8A8& c : w8a8) {
        const lowbit::QuantScheme xs = lowbit::QuantScheme::parse(c.x);
        const lowbit::QuantScheme ws_ = lowbit::QuantScheme::parse(c.w);
        const lowbit::QuantizedTensor q = quantize_weight(wf, ws_, stream);
        for (size_t mi = 0; mi < ms.size(); ++mi) {
          const int64_t m = ms[mi];
          for (const bool dynamic : {true, false}) {
            lowbit::QuantizedTensor xq;
            lowbit::MatmulDesc d;
            lowbit::MatmulArgs args;
            if (dynamic) {
              d = lowbit::MatmulDesc::for_views(yv(y, m), xv(m), q.view());
              d.x_scheme = xs;
              args = {xv(m), {}, q.view(), {}, {}, yv(y, m)};
            } else {
              xq = lowbit::QuantizedTensor::allocate(xs, {m, k}, gpu);
              lowbit::quantize_into(xq.view(), xv(m), false, &stream);
              d = lowbit::MatmulDesc::for_views(yv(y, m), xq.view(), q.view());
              args = {{}, xq.view(), q.view(), {}, {}, yv(y, m)};
            }
            Row r;
            r.group = "w8a8";
            r.scheme = std::string(c.x) + "x" + c.w + (dynamic ? " dyn" : " pre");
            r.n = n, r.k = k, r.m = m;
            r.wbytes = bench::quantized_bytes(q);
            r.bytes = r.wbytes + m * k * (dynamic ? 2 : 1) + m * n * 2;
            // The selected plan, and where that is not cuBLASLt's, cuBLASLt's beside it.
            auto time_plan = [&](Row& row, const lowbit::Preference& pref) {
              try {
                const lowbit::MatmulPlan plan = lowbit::MatmulPlan::select(d, pref);
                lowbit::Buffer wsb(static_cast<int64_t>(std::max<size_t>(plan.workspace_size(), 1)),
                                   gpu, &stream);
                const lowbit::Workspace wsp{wsb.data(), plan.workspace_size()};
                lowbit::MatmulArgs pargs = args;
                lowbit::Tensor packed;
                if (const int64_t pb = lowbit::prepared_bytes(plan); pb > 0) {
                  packed = lowbit::Tensor::empty({pb}, Dtype::u8, gpu);
                  lowbit::prepare_weight(plan, q.view(), packed, &stream);
                  pargs.w_packed = packed;
                }
                row.ms = timer.median([&] { plan.run(stream, wsp, pargs); });
                row.kernel = plan.sku().kernel;
                row.vs_bf16 = bf16_ms[mi] / row.ms;
                if (!plan.declined().empty() && mi == 0)
                  std::fprintf(stderr, "    %s declined: %s\n", plan.declined()[0].kernel.c_str(),
                               plan.declined()[0].reason.c_str());
              } catch (const lowbit::Error& e) {
                row.kernel = std::string("none: ") + e.what();
                row.ms = 0;
              }
              rows.push_back(row);
              std::fprintf(stderr, "  %-60s %.4f ms %s\n", row.pair().c_str(), row.ms,
                           row.kernel.c_str());
            };
            time_plan(r, lowbit::Preference{});
            if (r.ms > 0 && r.kernel != "matmul_cuda_w8a8_lt") {
              Row rl = r;
              rl.scheme += " (cuBLASLt)";
              lowbit::Preference lt;
              lt.kernel = "matmul_cuda_w8a8_lt";
              time_plan(rl, lt);
            }
          }
        }
      }
    }

    for (Row& r : rows) {
      if (r.ms <= 0) continue;
      r.gbps = r.bytes / r.ms / 1e6;
      r.pct = 100.0 * r.gbps / copy_gbps;
      r.tflops = r.m > 0 ? 2.0 * r.m * r.n * r.k / r.ms / 1e9 : 0;
    }
    std::printf(
        "\nlowbit matmul on %s (%d SMs), bf16 x and y, median of %d reps after an L2 flush\n",
        props.name.c_str(), props.multiprocessors, reps);
    std::printf("copy ceiling: %.0f GB/s\n", copy_gbps);
    std::printf(
        "| what | N x K | M | ms | x cuBLAS bf16 | GB/s | %% of copy | TFLOP/s | kernel | check "
        "|\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const Row& r : rows) {
      if (r.group == "copy") continue;
      std::printf("| %s %s | %lldx%lld | %lld | %.4f | %.2f | %.0f | %.1f%% | %.1f | %s | %s |\n",
                  r.group.c_str(), r.scheme.c_str(), static_cast<long long>(r.n),
                  static_cast<long long>(r.k), static_cast<long long>(r.m), r.ms, r.vs_bf16, r.gbps,
                  r.pct, r.tflops, r.kernel.c_str(), r.check.c_str());
    }
    bool all_ok = true;
    for (const Row& r : rows)
      if (r.check.rfind("BAD", 0) == 0) all_ok = false;
    const bool written = bench::write_json_lines(json_path, rows, [&](FILE* f, const Row& r) {
      std::fprintf(f,
                   "{\"bench\": \"matmul_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                   "\"group\": \"%s\", \"scheme\": \"%s\", \"n\": %lld, \"k\": %lld, \"m\": "
                   "%lld, \"weight_bytes\": %lld, \"bytes\": %lld, \"ms\": %.5f, \"gbps\": %.1f, "
                   "\"pct_of_copy\": %.2f, \"tflops\": %.2f, \"vs_bf16\": %.3f, \"kernel\": "
                   "\"%s\", \"check\": \"%s\", \"key\": %s}\n",
                   props.name.c_str(), r.pair().c_str(), r.group.c_str(), r.scheme.c_str(),
                   static_cast<long long>(r.n), static_cast<long long>(r.k),
                   static_cast<long long>(r.m), static_cast<long long>(r.wbytes),
                   static_cast<long long>(r.bytes), r.ms, r.gbps, r.pct, r.tflops, r.vs_bf16,
                   bench::json_escape(r.kernel).c_str(), bench::json_escape(r.check).c_str(),
                   r.key() ? "true" : "false");
    });
    if (!written) return 1;
    if (!all_ok) {
      std::fprintf(stderr, "bench_matmul_cuda: a result differs from the dequantize path\n");
      return 1;
    }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_matmul_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
