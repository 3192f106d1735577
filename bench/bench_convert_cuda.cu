// bench_convert_cuda: lowbit's convert on GPU 0 against the device-to-device copy ceiling,
// measured in one process.
//
// Each row is timed with CUDA events around every repetition, all repetitions queued
// back to back (so host-side planning never leaves the GPU idle inside a measurement),
// after warm-up runs; the median is reported. Bandwidth counts bytes read plus bytes
// written. Inputs are normally distributed values (what torch.randn gives the peer
// script, bench_convert_torch.py), converted to the source dtype first. After timing,
// the first 2^20 elements of every row are checked bit for bit against the reference
// kernel on the host.
//
// Usage: bench_convert_cuda [--json PATH] [--reps N] [--log2 K]   (K: log2 of elements, 28)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "bench_convert_cuda: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

/// Normal(0, 1) samples from a counter hash and Box-Muller (quality is irrelevant here; the
/// values only need the spread of real activations, subnormal-range tails included).
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

struct Row {
  std::string pair;
  int64_t elements = 0;
  int64_t bytes = 0;
  double ms = 0;
  double gbps = 0;
  double pct = 0;
  std::string kernel;
  std::string check = "-";
};

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

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

/// Bit-exact check of the first `n` elements of a GPU conversion against the reference.
std::string check_prefix(const lowbit::TensorView& src, const lowbit::TensorView& dst, int64_t n) {
  n = std::min(n, src.numel()) & ~int64_t{1};  // whole bytes of packed dtypes
  const lowbit::TensorView s(src.data(), src.dtype(), {n}, src.device());
  const lowbit::TensorView d(dst.data(), dst.dtype(), {n}, dst.device());
  lowbit::Tensor hs = lowbit::Tensor::empty({n}, src.dtype());
  lowbit::Tensor hd = lowbit::Tensor::empty({n}, dst.dtype());
  lowbit::Tensor want = lowbit::Tensor::empty({n}, dst.dtype());
  lowbit::copy(hs, s);
  lowbit::copy(hd, d);
  lowbit::Preference ref;
  ref.kernel = "convert_reference";
  lowbit::ConvertPlan::select(lowbit::ConvertDesc::for_views(want, hs), ref)
      .run(lowbit::Stream(), {}, {hs, want});
  const int64_t bytes = lowbit::storage_bytes(dst.dtype(), n);
  return std::memcmp(want.data(), hd.data(), static_cast<size_t>(bytes)) == 0 ? "exact"
                                                                              : "MISMATCH";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 30;
  int log2n = 28;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(20, std::atoi(argv[++i]));
    } else if (a == "--log2" && i + 1 < argc) {
      log2n = std::clamp(std::atoi(argv[++i]), 10, 30);
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--reps N>=20] [--log2 K]\n", argv[0]);
      return 2;
    }
  }
  if (lowbit::cuda_device_count() == 0) {
    std::printf("bench_convert_cuda: SKIPPED: no CUDA device, nothing measured\n");
    return 0;
  }
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int warmup = 5;
    std::vector<Row> rows;

    // The ceiling: cudaMemcpyAsync device to device, 1 GiB.
    {
      const int64_t bytes = int64_t{1} << 30;
      lowbit::Buffer a(bytes, gpu, &stream), b(bytes, gpu, &stream);
      check(cudaMemsetAsync(a.data(), 1, bytes, s), "cudaMemsetAsync");
      Row r;
      r.pair = "copy d2d (cudaMemcpyAsync, 1 GiB)";
      r.elements = bytes;
      r.bytes = 2 * bytes;
      r.ms = median_ms(s, warmup, reps, [&] {
        check(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
      });
      r.kernel = "cudaMemcpyAsync";
      rows.push_back(r);
    }
    const double copy_gbps = rows[0].bytes / rows[0].ms / 1e6;

    const int64_t n = int64_t{1} << log2n;
    lowbit::Tensor normal = lowbit::Tensor::empty({n}, Dtype::f32, gpu, &stream);
    fill_normal<<<1024, 256, 0, s>>>(normal.data_as<float>(), static_cast<uint64_t>(n), 12345);
    check(cudaGetLastError(), "fill_normal");

    const std::pair<Dtype, Dtype> pairs[] = {
        {Dtype::f32, Dtype::bf16}, {Dtype::bf16, Dtype::f8e4m3fn}, {Dtype::bf16, Dtype::f32},
        {Dtype::f16, Dtype::bf16}, {Dtype::f32, Dtype::f8e4m3fn},  {Dtype::bf16, Dtype::f4e2m1},
        {Dtype::f32, Dtype::e8m0},
    };
    for (auto [sdt, ddt] : pairs) {
      lowbit::Tensor src = lowbit::Tensor::empty({n}, sdt, gpu, &stream);
      lowbit::Tensor dst = lowbit::Tensor::empty({n}, ddt, gpu, &stream);
      if (sdt == Dtype::f32) {
        check(cudaMemcpyAsync(src.data(), normal.data(), n * 4, cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
      } else {
        lowbit::convert(src, normal, lowbit::Saturation::none, &stream);
      }
      const lowbit::ConvertPlan plan =
          lowbit::ConvertPlan::select(lowbit::ConvertDesc::for_views(dst, src));
      const lowbit::ConvertArgs args{src.view(), dst.view()};
      Row r;
      r.pair = std::string(lowbit::dtype_name(sdt)) + "->" + std::string(lowbit::dtype_name(ddt));
      r.elements = n;
      r.bytes = lowbit::storage_bytes(sdt, n) + lowbit::storage_bytes(ddt, n);
      r.ms = median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
      r.kernel = plan.sku().str();
      stream.synchronize();
      r.check = check_prefix(src, dst, int64_t{1} << 20);
      rows.push_back(r);
    }

    for (Row& r : rows) {
      r.gbps = r.bytes / r.ms / 1e6;
      r.pct = 100.0 * r.gbps / copy_gbps;
    }
    std::printf("\nlowbit convert on %s (%d SMs), median of %d reps\n", props.name.c_str(),
                props.multiprocessors, reps);
    std::printf("| pair | elements | bytes moved | time ms | GB/s | %% of copy |\n");
    std::printf("| --- | --- | --- | --- | --- | --- |\n");
    for (const Row& r : rows)
      std::printf("| %s | %lld | %lld | %.4f | %.0f | %.1f%% |\n", r.pair.c_str(),
                  static_cast<long long>(r.elements), static_cast<long long>(r.bytes), r.ms, r.gbps,
                  r.pct);
    std::printf("\nkernels (first 2^20 elements checked against convert_reference):\n");
    bool all_exact = true;
    for (const Row& r : rows) {
      if (r.check == "-") continue;
      std::printf("  %-16s %-8s %s\n", r.pair.c_str(), r.check.c_str(), r.kernel.c_str());
      all_exact = all_exact && r.check == "exact";
    }
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (!f) {
        std::fprintf(stderr, "bench_convert_cuda: cannot write %s\n", json_path.c_str());
        return 1;
      }
      for (const Row& r : rows)
        std::fprintf(f,
                     "{\"bench\": \"convert_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                     "\"elements\": %lld, \"bytes\": %lld, \"ms\": %.5f, \"gbps\": %.1f, "
                     "\"pct_of_copy\": %.2f, \"kernel\": \"%s\", \"check\": \"%s\"}\n",
                     json_escape(props.name).c_str(), json_escape(r.pair).c_str(),
                     static_cast<long long>(r.elements), static_cast<long long>(r.bytes), r.ms,
                     r.gbps, r.pct, json_escape(r.kernel).c_str(), r.check.c_str());
      std::fclose(f);
    }
    if (!all_exact) {
      std::fprintf(stderr, "bench_convert_cuda: a conversion differs from the reference\n");
      return 1;
    }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_convert_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
