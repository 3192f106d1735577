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

#include "bench_cuda_harness.cuh"
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;

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
  bench::program = "bench_convert_cuda";
  std::string json_path;
  int reps = 30;
  int log2n = 28;
  const bool parsed =
      bench::CommandLine()
          .value("--json", [&](const char* v) { json_path = v; })
          .value("--reps", [&](const char* v) { reps = std::max(20, std::atoi(v)); })
          .value("--log2", [&](const char* v) { log2n = std::clamp(std::atoi(v), 10, 30); })
          .parse(argc, argv, "[--json PATH] [--reps N>=20] [--log2 K]");
  if (!parsed) return 2;
  if (bench::skip_without_gpu()) return 0;
  try {
    const Device gpu = Device::cuda(0);
    const lowbit::CudaDeviceProperties props = lowbit::cuda_device_properties(0);
    const lowbit::Stream stream = lowbit::Stream::create(gpu);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int warmup = 5;
    std::vector<Row> rows;

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
      rows.push_back(r);
    }
    const double copy_gbps = rows[0].bytes / rows[0].ms / 1e6;

    const int64_t n = int64_t{1} << log2n;
    lowbit::Tensor normal = lowbit::Tensor::empty({n}, Dtype::f32, gpu, &stream);
    bench::fill_normal<<<1024, 256, 0, s>>>(normal.data_as<float>(), static_cast<uint64_t>(n),
                                            12345);
    bench::check(cudaGetLastError(), "fill_normal");

    const std::pair<Dtype, Dtype> pairs[] = {
        {Dtype::f32, Dtype::bf16}, {Dtype::bf16, Dtype::f8e4m3fn}, {Dtype::bf16, Dtype::f32},
        {Dtype::f16, Dtype::bf16}, {Dtype::f32, Dtype::f8e4m3fn},  {Dtype::bf16, Dtype::f4e2m1},
        {Dtype::f32, Dtype::e8m0},
    };
    for (auto [sdt, ddt] : pairs) {
      lowbit::Tensor src = lowbit::Tensor::empty({n}, sdt, gpu, &stream);
      lowbit::Tensor dst = lowbit::Tensor::empty({n}, ddt, gpu, &stream);
      if (sdt == Dtype::f32) {
        bench::check(cudaMemcpyAsync(src.data(), normal.data(), n * 4, cudaMemcpyDeviceToDevice, s),
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
      r.ms = bench::median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
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
    const bool written = bench::write_json_lines(json_path, rows, [&](FILE* f, const Row& r) {
      std::fprintf(f,
                   "{\"bench\": \"convert_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                   "\"elements\": %lld, \"bytes\": %lld, \"ms\": %.5f, \"gbps\": %.1f, "
                   "\"pct_of_copy\": %.2f, \"kernel\": \"%s\", \"check\": \"%s\"}\n",
                   bench::json_escape(props.name).c_str(), bench::json_escape(r.pair).c_str(),
                   static_cast<long long>(r.elements), static_cast<long long>(r.bytes), r.ms,
                   r.gbps, r.pct, bench::json_escape(r.kernel).c_str(), r.check.c_str());
    });
    if (!written) return 1;
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
