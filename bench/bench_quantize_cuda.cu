// bench_quantize_cuda: lowbit's quantize and dequantize on GPU 0 against the device-to-device
// copy ceiling, measured in one process, on a 16384 x 8192 tensor.
//
// Rows: bf16 -> int8:token, fp8e4m3:token, int4:block32, nvfp4, mxfp4 and f32 -> q8_0, q4_0,
// each with check_finite on (the default: the kernels flag NaN / Inf and run() waits for them
// to read the flag), off, and on with a CheckReport (the flag recorded, no wait); then each
// dequantized back to bf16 (f32 for the GGUF types). Each row is timed with CUDA events around
// every repetition, repetitions queued back to back after warm-up runs; the median is reported.
// Bandwidth counts bytes read plus bytes written once each (source, codes, scales), so two-pass
// schemes (nvfp4's global absmax reads the source twice) show the second read as lost bandwidth.
// Inputs are normally distributed values (what torch.randn gives the peer,
// bench_quantize_torch.py). After timing, the first 64 rows of every row's output are checked bit
// for bit against the reference kernels on the host (nvfp4 with the GPU's global scale as a given
// scale, since that scale depends on the whole tensor). nvfp4 also runs with its global scale given
// (static quantization: QuantizeDesc::given_scales, the scale the dynamic run computed),
// which needs one pass over the source; the dynamic rows print their two-pass bound.
//
// Usage: bench_quantize_cuda [--json PATH] [--reps N] [--rows R] [--cols K]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_cuda_harness.cuh"
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;

/// Reads n 16-byte vectors (four independent loads per thread in flight) and writes one
/// word per thread: the streaming-read ceiling.
__global__ void read_only(const uint4* x, uint64_t n, uint32_t* sink) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = i + u * stride < n ? x[i + u * stride] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  sink[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

/// Reads n 16-byte vectors and writes K 16-byte vectors for each (U loads per thread in
/// flight, the stores evict-first unless kPlain): the traffic of a dequantizer that writes K
/// times the bytes it reads, with no arithmetic. Each output vector is its input vector
/// xor its index, so that nothing is optimised away.
template <int K, int U, bool kPlain>
__global__ void expand(const uint4* x, uint64_t n, uint4* y) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      v[u] = i + u * stride < n ? x[i + u * stride] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i + u * stride >= n) continue;
      // Lane-contiguous output: vector k of input j at (j / 32) * 32 K + k * 32 + j % 32,
      // so that each store instruction of a warp writes 512 contiguous bytes.
      const uint64_t j = i + u * stride;
      uint4* o = y + (j / 32) * 32 * K + j % 32;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint4 w = make_uint4(v[u].x ^ k, v[u].y, v[u].z, v[u].w);
        if (kPlain) {
          o[32 * k] = w;
        } else {
          __stcs(o + 32 * k, w);
        }
      }
    }
  }
}

/// Does nothing: the launch + synchronisation round trip that a checked call pays.
__global__ void empty_kernel() {}

struct Row {
  std::string pair;
  int64_t elements = 0;
  int64_t bytes = 0;
  double ms = 0;
  double gbps = 0;
  double pct = 0;
  std::string kernel;
  std::string check = "-";
  /// Bytes the kernels must move over the counted bytes: 1 for one pass; nvfp4 with a
  /// computed global scale reads the source twice (the global absmax first), so its best
  /// possible share of the copy is 1 / moved.
  double moved = 1.0;
};

/// The first `rows` indices of dim 0 of a contiguous view (a view of the same memory).
lowbit::TensorView first_rows(const lowbit::TensorView& v, int64_t rows) {
  if (!v.data()) return v;
  lowbit::Shape shape = v.shape();
  shape[0] = rows;
  return lowbit::TensorView(v.data(), v.dtype(), shape, v.device());
}

/// The parts of the first `rows` rows of a quantized [R, K] tensor whose scale groups lie
/// within rows (every scheme here): views of the same memory; the global scale is shared.
lowbit::QuantizedView first_rows(const lowbit::QuantizedView& q, int64_t rows) {
  lowbit::QuantizedView s = q;
  s.shape = {rows, q.shape[1]};
  s.codes = first_rows(q.codes, rows);
  s.scale = first_rows(q.scale, rows);
  s.zero = first_rows(q.zero, rows);
  return s;
}

bool same_bytes(const lowbit::TensorView& host, const lowbit::TensorView& device) {
  if (!host.data()) return true;
  lowbit::Tensor h = lowbit::Tensor::empty(device.shape(), device.dtype());
  lowbit::copy(h, device);
  return std::memcmp(h.data(), host.data(),
                     static_cast<size_t>(lowbit::storage_bytes(host.dtype(), host.numel()))) == 0;
}

/// Checks the first `rows` rows of a GPU quantization against the reference kernel.
std::string check_quantize(const lowbit::TensorView& src, const lowbit::QuantizedTensor& q,
                           int64_t rows) {
  const lowbit::TensorView xs = first_rows(src, rows);
  lowbit::Tensor hx = lowbit::Tensor::empty(xs.shape(), xs.dtype());
  lowbit::copy(hx, xs);
  lowbit::QuantizedTensor want = lowbit::QuantizedTensor::allocate(q.scheme, xs.shape());
  const bool nvfp4 = q.scheme.format == lowbit::QuantFormat::nvfp4;
  if (nvfp4) lowbit::copy(want.global_scale, q.global_scale);
  lowbit::Preference ref;
  ref.kernel = "quantize_reference";
  lowbit::QuantizePlan::select(lowbit::QuantizeDesc::for_views(want.view(), hx, nvfp4), ref)
      .run(lowbit::Stream(), {}, {hx, want.view()});
  const lowbit::QuantizedView got = first_rows(q.view(), rows);
  const bool ok = same_bytes(want.codes, got.codes) && same_bytes(want.scale, got.scale) &&
                  same_bytes(want.zero, got.zero);
  return ok ? "exact" : "MISMATCH";
}

/// Checks the first `rows` rows of a GPU dequantization against the reference kernel.
std::string check_dequantize(const lowbit::QuantizedTensor& q, const lowbit::TensorView& y,
                             int64_t rows) {
  const lowbit::QuantizedView qs = first_rows(q.view(), rows);
  lowbit::QuantizedTensor hq = lowbit::QuantizedTensor::allocate(q.scheme, qs.shape);
  lowbit::copy(hq.codes, qs.codes);
  if (hq.scale.data()) lowbit::copy(hq.scale, qs.scale);
  if (hq.zero.data()) lowbit::copy(hq.zero, qs.zero);
  if (hq.global_scale.data()) lowbit::copy(hq.global_scale, q.global_scale);
  lowbit::Tensor want = lowbit::Tensor::empty(qs.shape, y.dtype());
  lowbit::Preference ref;
  ref.kernel = "dequantize_reference";
  lowbit::DequantizePlan::select(lowbit::DequantizeDesc::for_views(want, hq.view()), ref)
      .run(lowbit::Stream(), {}, {hq.view(), want});
  return same_bytes(want, first_rows(y, rows)) ? "exact" : "MISMATCH";
}

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_quantize_cuda";
  std::string json_path;
  int reps = 30;
  int64_t rows = 16384, cols = 8192;
  if (!bench::parse_matrix_options(argc, argv, json_path, reps, rows, cols)) return 2;
  if (bench::skip_without_gpu()) return 0;
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int warmup = 5;
    const int64_t check_rows = 64;
    std::vector<Row> rows_out;

    // The ceiling: cudaMemcpyAsync device to device, 1 GiB.
    {
      Row r;
      r.pair = "copy d2d (cudaMemcpyAsync, 1 GiB)";
      r.elements = bench::kCopyBytes;
      r.bytes = 2 * bench::kCopyBytes;
      r.ms = bench::copy_d2d_ms(gpu, stream, [&](const std::function<void()>& copy) {
        return bench::median_ms(s, warmup, reps, copy);
      });
      r.kernel = "cudaMemcpyAsync";
      rows_out.push_back(r);
    }
    const double copy_gbps = rows_out[0].bytes / rows_out[0].ms / 1e6;
    // Write-only and read-only rates of the same memory: dequantizers write 2-4x the bytes
    // they read, quantizers the reverse, so these bound them beside the 1:1 copy.
    {
      const int64_t bytes = int64_t{1} << 30;
      lowbit::Buffer a(bytes, gpu, &stream);
      lowbit::Buffer sink(int64_t{4} << 20, gpu, &stream);
      bench::check(cudaMemsetAsync(a.data(), 1, bytes, s), "cudaMemsetAsync");
      Row w;
      w.pair = "write only (cudaMemsetAsync, 1 GiB)";
      w.elements = bytes;
      w.bytes = bytes;
      w.ms = bench::median_ms(s, warmup, reps, [&] {
        bench::check(cudaMemsetAsync(a.data(), 2, bytes, s), "cudaMemsetAsync");
      });
      w.kernel = "cudaMemsetAsync";
      rows_out.push_back(w);
      Row r;
      r.pair = "read only (16-byte loads, 1 GiB)";
      r.elements = bytes;
      r.bytes = bytes;
      const int grid = props.multiprocessors * 8;
      r.ms = bench::median_ms(s, warmup, reps, [&] {
        read_only<<<grid, 256, 0, s>>>(static_cast<const uint4*>(a.data()), bytes / 16,
                                       static_cast<uint32_t*>(sink.data()));
      });
      bench::check(cudaGetLastError(), "read_only");
      r.kernel = "read_only";
      rows_out.push_back(r);
    }

    // Expansions: the traffic of each dequantizer (read bytes, K times as many written)
    // with no arithmetic, beside it as its own ceiling; variants of the launch for the 1:4
    // row (grid per SM, loads in flight, store hint).
    {
      const int64_t n_el = rows * cols;
      struct Expansion {
        const char* what;
        int64_t read;
        int k;
        int per_sm;   // blocks of 256 per SM, 0: the occupancy calculator's resident grid
        int variant;  // 0: U = 4 evict-first; 1: U = 2; 2: plain stores
      };
      const Expansion expansions[] = {
          {"expand 1:2, read = elements (int8 / fp8 -> bf16)", n_el, 2, 0, 0},
          {"expand 1:4, read = elements / 2 (int4 / e2m1 -> bf16)", n_el / 2, 4, 0, 0},
          {"expand 1:4, read = elements (q8_0 -> f32)", n_el, 4, 0, 0},
          {"expand 1:8, read = elements / 2 (q4_0 -> f32)", n_el / 2, 8, 0, 0},
          {"expand 1:4, read = elements / 2, 2 x resident grid", n_el / 2, 4, 16, 0},
          {"expand 1:4, read = elements / 2, 4 blocks per SM", n_el / 2, 4, 4, 0},
          {"expand 1:4, read = elements / 2, U = 2", n_el / 2, 4, 0, 1},
          {"expand 1:4, read = elements / 2, plain stores", n_el / 2, 4, 0, 2},
      };
      lowbit::Buffer in(n_el, gpu, &stream), out(8 * n_el / 2, gpu, &stream);
      bench::check(cudaMemsetAsync(in.data(), 3, n_el, s), "cudaMemsetAsync");
      for (const Expansion& e : expansions) {
        const uint64_t vecs = static_cast<uint64_t>(e.read / 16);
        void (*kernel)(const uint4*, uint64_t, uint4*) = nullptr;
        if (e.k == 2) kernel = expand<2, 4, false>;
        if (e.k == 4)
          kernel = e.variant == 1   ? expand<4, 2, false>
                   : e.variant == 2 ? expand<4, 4, true>
                                    : expand<4, 4, false>;
        if (e.k == 8) kernel = expand<8, 4, false>;
        int per_sm = e.per_sm;
        if (per_sm == 0) {
          bench::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 256, 0),
                       "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
        }
        const int grid = props.multiprocessors * per_sm;
        Row r;
        r.pair = e.what;
        r.elements = e.read;
        r.bytes = e.read * (1 + e.k);
        r.ms = bench::median_ms(s, warmup, reps, [&] {
          kernel<<<grid, 256, 0, s>>>(static_cast<const uint4*>(in.data()), vecs,
                                      static_cast<uint4*>(out.data()));
        });
        bench::check(cudaGetLastError(), "expand");
        r.kernel = "expand";
        rows_out.push_back(r);
      }
    }

    // The floor of a checked call's overhead: a launch and a stream synchronisation, timed as
    // the rows below are (events around each repetition).
    double round_trip_ms = 0;
    {
      round_trip_ms = bench::median_ms(s, warmup, reps, [&] {
        empty_kernel<<<1, 32, 0, s>>>();
        bench::check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      });
    }
    // Host time of one unchecked call (descriptor checks + launch), per scheme.
    std::vector<std::pair<std::string, double>> host_us;

    const lowbit::Shape shape{rows, cols};
    const int64_t n = rows * cols;
    lowbit::Tensor f32 = lowbit::Tensor::empty(shape, Dtype::f32, gpu, &stream);
    bench::fill_normal<<<1024, 256, 0, s>>>(f32.data_as<float>(), static_cast<uint64_t>(n), 12345);
    bench::check(cudaGetLastError(), "fill_normal");
    lowbit::Tensor bf16 = lowbit::Tensor::empty(shape, Dtype::bf16, gpu, &stream);
    lowbit::convert(bf16, f32, lowbit::Saturation::none, &stream);
    stream.synchronize();

    const char* schemes[] = {"int8:token", "fp8e4m3:token", "int4:block32", "nvfp4",
                             "mxfp4",      "q8_0",          "q4_0"};
    for (const char* text : schemes) {
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(text);
      const bool gguf = scheme.format == lowbit::QuantFormat::gguf;
      const lowbit::Tensor& src = gguf ? f32 : bf16;
      const std::string sname(lowbit::dtype_name(src.dtype()));
      lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(scheme, shape, gpu);
      // nvfp4 twice more with the global scale given (static: one pass over the source),
      // the one the dynamic runs computed.
      const bool nvfp4 = scheme.format == lowbit::QuantFormat::nvfp4;
      // Per pass: check on (run() waits for the kernels), off, and on with a CheckReport
      // (the kernels record a refusal, run() does not wait).
      for (int pass = 0; pass < (nvfp4 ? 6 : 3); ++pass) {
        const int mode = pass % 3;
        const bool check_finite = mode != 1;
        const bool given = pass >= 3;
        lowbit::QuantizeDesc d = lowbit::QuantizeDesc::for_views(q.view(), src, given);
        d.check_finite = check_finite;
        const lowbit::QuantizePlan plan = lowbit::QuantizePlan::select(d);
        lowbit::CheckReport report(gpu);
        const lowbit::QuantizeArgs args{src.view(), q.view(), mode == 2 ? &report : nullptr};
        Row r;
        r.pair = sname + "->" + text + (given ? " (given global scale)" : "") +
                 (mode == 1   ? " (check off)"
                  : mode == 2 ? " (check deferred)"
                              : "");
        r.elements = n;
        r.bytes = lowbit::storage_bytes(src.dtype(), n) + bench::quantized_bytes(q);
        if (nvfp4 && !given)
          r.moved = static_cast<double>(r.bytes + lowbit::storage_bytes(src.dtype(), n)) / r.bytes;
        r.ms = bench::median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
        r.kernel = plan.sku().str();
        stream.synchronize();
        if (report.failed()) {
          std::fprintf(stderr, "%s: the CheckReport says %s\n", r.pair.c_str(),
                       report.message().c_str());
          return 1;
        }
        if (!check_finite) {
          // Host time per call: 8 calls queued back to back (the GPU runs behind).
          const auto t0 = std::chrono::steady_clock::now();
          for (int k = 0; k < 8; ++k) plan.run(stream, {}, args);
          const auto t1 = std::chrono::steady_clock::now();
          stream.synchronize();
          host_us.emplace_back(r.pair,
                               std::chrono::duration<double, std::micro>(t1 - t0).count() / 8);
        }
        r.check = check_quantize(src, q, check_rows);
        rows_out.push_back(r);
      }
      const Dtype back = gguf ? Dtype::f32 : Dtype::bf16;
      lowbit::Tensor y = lowbit::Tensor::empty(shape, back, gpu, &stream);
      const lowbit::DequantizePlan dplan =
          lowbit::DequantizePlan::select(lowbit::DequantizeDesc::for_views(y, q.view()));
      const lowbit::DequantizeArgs dargs{q.view(), y.view()};
      Row r;
      r.pair = std::string(text) + "->" + std::string(lowbit::dtype_name(back));
      r.elements = n;
      r.bytes = bench::quantized_bytes(q) + lowbit::storage_bytes(back, n);
      r.ms = bench::median_ms(s, warmup, reps, [&] { dplan.run(stream, {}, dargs); });
      r.kernel = dplan.sku().str();
      stream.synchronize();
      r.check = check_dequantize(q, y, check_rows);
      rows_out.push_back(r);
    }

    for (Row& r : rows_out) {
      r.gbps = r.bytes / r.ms / 1e6;
      r.pct = 100.0 * r.gbps / copy_gbps;
    }
    std::printf(
        "\nlowbit quantize / dequantize of [%lld, %lld] on %s (%d SMs), median of %d reps\n",
        static_cast<long long>(rows), static_cast<long long>(cols), props.name.c_str(),
        props.multiprocessors, reps);
    std::printf(
        "| pair | elements | bytes counted | time ms | GB/s | %% of copy | bound (%% of copy) |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (const Row& r : rows_out)
      std::printf("| %s | %lld | %lld | %.4f | %.0f | %.1f%% | %.1f%% |\n", r.pair.c_str(),
                  static_cast<long long>(r.elements), static_cast<long long>(r.bytes), r.ms, r.gbps,
                  r.pct, 100.0 / r.moved);
    // What the check costs: on - off per scheme, against the launch + synchronise floor.
    std::printf("\nlaunch + cudaStreamSynchronize round trip (empty kernel): %.1f us\n",
                1e3 * round_trip_ms);
    std::printf(
        "| pair | check on - off (us) | host us per unchecked call |\n| --- | --- | --- |\n");
    for (size_t i = 0; i + 1 < rows_out.size(); ++i) {
      const Row& on = rows_out[i];
      const Row& off = rows_out[i + 1];
      if (on.check == "-" || off.pair != on.pair + " (check off)") continue;
      double hu = 0;
      for (const auto& h : host_us)
        if (h.first == off.pair) hu = h.second;
      std::printf("| %s | %.1f | %.1f |\n", on.pair.c_str(), 1e3 * (on.ms - off.ms), hu);
    }
    std::printf("\nkernels (first %lld rows checked against the reference kernels):\n",
                static_cast<long long>(check_rows));
    bool all_exact = true;
    for (const Row& r : rows_out) {
      if (r.check == "-") continue;
      std::printf("  %-34s %-8s %s\n", r.pair.c_str(), r.check.c_str(), r.kernel.c_str());
      all_exact = all_exact && r.check == "exact";
    }
    const bool written = bench::write_json_lines(json_path, rows_out, [&](FILE* f, const Row& r) {
      std::fprintf(f,
                   "{\"bench\": \"quantize_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                   "\"elements\": %lld, \"bytes\": %lld, \"ms\": %.5f, \"gbps\": %.1f, "
                   "\"pct_of_copy\": %.2f, \"bound_pct\": %.2f, \"kernel\": \"%s\", "
                   "\"check\": \"%s\"}\n",
                   bench::json_escape(props.name).c_str(), bench::json_escape(r.pair).c_str(),
                   static_cast<long long>(r.elements), static_cast<long long>(r.bytes), r.ms,
                   r.gbps, r.pct, 100.0 / r.moved, bench::json_escape(r.kernel).c_str(),
                   r.check.c_str());
    });
    if (!written) return 1;
    if (!all_exact) {
      std::fprintf(stderr, "bench_quantize_cuda: a result differs from the reference\n");
      return 1;
    }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_quantize_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
