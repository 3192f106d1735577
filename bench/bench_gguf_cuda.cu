// bench_gguf_cuda: the GGUF block kernels on GPU 0 (gguf_quantize_cuda, gguf_dequantize_cuda)
// for every block type, against the device-to-device copy ceiling measured in the same
// process, on a 16384 x 8192 f32 tensor of normal(0, 1) values.
//
// Rows: f32 -> type with gguf_quantize_cuda (check_finite on, the default: run() reads the
// check words back, which synchronises the stream), then type -> f32 with
// gguf_dequantize_cuda; for q8_0 and q4_0 also the tuned quantize_cuda / dequantize_cuda
// kernels, which the plans select for those two types. Median of the timed repetitions
// (CUDA events), after warm-up runs. Bandwidth counts bytes read plus bytes written once.
// After timing, the first 16 rows of each output are compared bit for bit with the
// reference kernels on the host.
//
// Usage: bench_gguf_cuda [--json PATH] [--reps N] [--rows R] [--cols K]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_cuda_harness.cuh"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;

using bench::check;
using bench::median_ms;

/// Host copies of the first `rows` rows of a device tensor [R, C] (contiguous).
lowbit::Tensor head(const lowbit::TensorView& v, int64_t rows) {
  lowbit::Shape shape = v.shape();
  shape[0] = rows;
  lowbit::Tensor h = lowbit::Tensor::empty(shape, v.dtype());
  lowbit::copy(h, lowbit::TensorView(v.data(), v.dtype(), shape, v.device()));
  return h;
}

bool same(const lowbit::Tensor& a, const lowbit::Tensor& b) {
  const int64_t bytes = lowbit::storage_bytes(a.dtype(), a.numel());
  return bytes == lowbit::storage_bytes(b.dtype(), b.numel()) &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(bytes)) == 0;
}

struct Row {
  std::string what, kernel, check;
  int64_t bytes = 0;
  double ms = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_gguf_cuda";
  int reps = 21;
  int64_t rows = 16384, cols = 8192;
  const char* json = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(5, std::atoi(argv[++i]));
    } else if (a == "--rows" && i + 1 < argc) {
      rows = std::max<int64_t>(16, std::atoll(argv[++i]));
    } else if (a == "--cols" && i + 1 < argc) {
      cols = std::max<int64_t>(256, std::atoll(argv[++i]) / 256 * 256);
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--reps N>=5] [--rows R>=16] [--cols K]\n",
                   argv[0]);
      return 2;
    }
  }
  if (bench::skip_without_gpu()) return 0;
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int warmup = 3;
    const int64_t check_rows = 16;
    std::vector<Row> out;

    // The ceiling: cudaMemcpyAsync device to device, 1 GiB.
    double copy_gbps = 0;
    {
      Row r{"copy d2d (cudaMemcpyAsync, 1 GiB)", "cudaMemcpyAsync", "-", 2 * bench::kCopyBytes};
      r.ms = bench::copy_d2d_ms(gpu, stream, [&](const std::function<void()>& copy) {
        return median_ms(s, warmup, reps, copy);
      });
      copy_gbps = r.bytes / r.ms / 1e6;
      out.push_back(r);
    }

    const lowbit::Shape shape{rows, cols};
    const int64_t n = rows * cols;
    lowbit::Tensor x = lowbit::Tensor::empty(shape, Dtype::f32, gpu, &stream);
    bench::fill_normal<<<1024, 256, 0, s>>>(x.data_as<float>(), static_cast<uint64_t>(n), 12345);
    check(cudaGetLastError(), "fill_normal");
    stream.synchronize();
    const lowbit::Tensor x_head = head(x, check_rows);

    for (const char* text : {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K", "q4_K",
                             "q5_K", "q6_K", "q8_K"}) {
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(text);
      const bool tuned = std::string(text) == "q8_0" || std::string(text) == "q4_0";
      lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(scheme, shape, gpu);
      lowbit::Tensor y = lowbit::Tensor::empty(shape, Dtype::f32, gpu, &stream);
      const int64_t qbytes = lowbit::storage_bytes(q.codes.dtype(), q.codes.numel());
      // Host references for the first rows.
      lowbit::QuantizedTensor want_q =
          lowbit::QuantizedTensor::allocate(scheme, {check_rows, cols});
      lowbit::quantize_into(want_q.view(), x_head);
      const lowbit::Tensor want_y = lowbit::dequantize(want_q.view(), Dtype::f32);
      for (const char* qk : {"gguf_quantize_cuda", "quantize_cuda"}) {
        if (!tuned && std::string(qk) == "quantize_cuda") continue;
        lowbit::Preference pref;
        pref.kernel = qk;
        const lowbit::QuantizePlan plan =
            lowbit::QuantizePlan::select(lowbit::QuantizeDesc::for_views(q.view(), x), pref);
        const lowbit::QuantizeArgs args{x.view(), q.view()};
        Row r{std::string("f32->") + text, plan.sku().str(), "", n * 4 + qbytes};
        r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
        stream.synchronize();
        r.check = same(head(q.codes, check_rows), want_q.codes) ? "ok" : "MISMATCH";
        out.push_back(r);
      }
      for (const char* dk : {"gguf_dequantize_cuda", "dequantize_cuda"}) {
        if (!tuned && std::string(dk) == "dequantize_cuda") continue;
        lowbit::Preference pref;
        pref.kernel = dk;
        const lowbit::DequantizePlan plan =
            lowbit::DequantizePlan::select(lowbit::DequantizeDesc::for_views(y, q.view()), pref);
        const lowbit::DequantizeArgs args{q.view(), y.view()};
        Row r{std::string(text) + "->f32", plan.sku().str(), "", qbytes + n * 4};
        r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
        stream.synchronize();
        r.check = same(head(y, check_rows), want_y) ? "ok" : "MISMATCH";
        out.push_back(r);
      }
    }

    std::printf("\nGGUF block kernels on [%lld, %lld] f32 on %s (%d SMs), median of %d reps\n",
                static_cast<long long>(rows), static_cast<long long>(cols), props.name.c_str(),
                props.multiprocessors, reps);
    std::printf("| pair | bytes counted | time ms | GB/s | %% of copy | kernel | check |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    bool ok = true;
    FILE* jf = json ? std::fopen(json, "w") : nullptr;
    for (const Row& r : out) {
      const double gbps = r.bytes / r.ms / 1e6;
      std::printf("| %s | %lld | %.3f | %.1f | %.1f | %s | %s |\n", r.what.c_str(),
                  static_cast<long long>(r.bytes), r.ms, gbps, 100.0 * gbps / copy_gbps,
                  r.kernel.c_str(), r.check.c_str());
      // One JSON line per row (gpu-check's summary reads pair, ms, gbps, pct_of_copy, check).
      if (jf)
        std::fprintf(jf,
                     "{\"pair\": \"%s [%s]\", \"ms\": %.4f, \"gbps\": %.2f, "
                     "\"pct_of_copy\": %.2f, \"check\": \"%s\"}\n",
                     r.what.c_str(), r.kernel.c_str(), r.ms, gbps, 100.0 * gbps / copy_gbps,
                     r.check.c_str());
      ok = ok && r.check != "MISMATCH";
    }
    if (jf) std::fclose(jf);
    return ok ? 0 : 1;
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_gguf_cuda: %s\n", e.what());
    return 1;
  }
}
