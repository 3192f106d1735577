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

#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "bench_gguf_cuda: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

/// Normal(0, 1) samples from a counter hash and Box-Muller (as bench_quantize_cuda).
__global__ void fill_normal(float* out, uint64_t n, uint64_t seed) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = (static_cast<uint32_t>(z) + 1.0f) * 0x1p-32f;  // (0, 1]
    const float u2 = static_cast<uint32_t>(z >> 32) * 0x1p-32f;
    out[i] = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

/// Median milliseconds of `reps` runs of `fn` on `stream` after `warmup` runs.
double median_ms(cudaStream_t stream, int warmup, int reps, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<cudaEvent_t> events(2 * static_cast<size_t>(reps));
  for (cudaEvent_t& e : events) check(cudaEventCreate(&e), "cudaEventCreate");
  for (int r = 0; r < reps; ++r) {
    check(cudaEventRecord(events[2 * r], stream), "cudaEventRecord");
    fn();
    check(cudaEventRecord(events[2 * r + 1], stream), "cudaEventRecord");
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<double> ms(static_cast<size_t>(reps));
  for (int r = 0; r < reps; ++r) {
    float t = 0;
    check(cudaEventElapsedTime(&t, events[2 * r], events[2 * r + 1]), "cudaEventElapsedTime");
    ms[r] = t;
  }
  for (cudaEvent_t& e : events) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
}

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
  if (lowbit::cuda_device_count() == 0) {
    std::printf("bench_gguf_cuda: SKIPPED: no CUDA device, nothing measured\n");
    return 0;
  }
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
      const int64_t bytes = int64_t{1} << 30;
      lowbit::Buffer a(bytes, gpu, &stream), b(bytes, gpu, &stream);
      check(cudaMemsetAsync(a.data(), 1, bytes, s), "cudaMemsetAsync");
      Row r{"copy d2d (cudaMemcpyAsync, 1 GiB)", "cudaMemcpyAsync", "-", 2 * bytes};
      r.ms = median_ms(s, warmup, reps, [&] {
        check(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
      });
      copy_gbps = r.bytes / r.ms / 1e6;
      out.push_back(r);
    }

    const lowbit::Shape shape{rows, cols};
    const int64_t n = rows * cols;
    lowbit::Tensor x = lowbit::Tensor::empty(shape, Dtype::f32, gpu, &stream);
    fill_normal<<<1024, 256, 0, s>>>(x.data_as<float>(), static_cast<uint64_t>(n), 12345);
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
