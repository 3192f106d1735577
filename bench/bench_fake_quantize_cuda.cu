// bench_fake_quantize_cuda: lowbit's fake_quantize and fake_quantize_backward on GPU 0
// against the device-to-device copy ceiling, measured in one process, on a 16384 x 8192
// tensor; the peer is lowbit's own quantize + dequantize (what fake quantization costs
// without the fused op).
//
// Rows: forward bf16 -> bf16 int8:token and fp8e4m3:token (dynamic, check_finite on and
// off), int4:block32:asym (static), f32 int8:channel (static); the peer for int8:token;
// backward: bf16 int8:token dx only, dx + dscale (LSQ), f32 int8:channel:asym dx + dscale +
// dzero. Each row is timed with CUDA events around every repetition, queued back to back
// after warm-up runs; the median is reported. Bandwidth counts bytes read plus bytes
// written once each (x, y / dy, dx; scales are negligible), so passes that read an input
// twice (dynamic scales: statistics then values; sums: max |dy| then the main pass) show
// the second read as lost bandwidth. The first 64 rows of every output whose groups lie
// within rows are checked bit for bit against the reference kernels on the host.
//
// Usage: bench_fake_quantize_cuda [--json PATH] [--reps N] [--rows R] [--cols K]
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
#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/tensor.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;
using lowbit::Shape;
using lowbit::Tensor;
using lowbit::TensorView;

struct Row {
  std::string pair;
  int64_t bytes = 0;
  double ms = 0;
  double gbps = 0;
  double pct = 0;
  std::string kernel;
  std::string check = "-";
};

/// The first `rows` indices of dim 0 of a contiguous view, copied to the host.
Tensor head(const TensorView& v, int64_t rows) {
  Shape shape = v.shape();
  shape[0] = std::min(rows, shape[0]);
  const TensorView h(v.data(), v.dtype(), shape, v.device());
  Tensor t = Tensor::empty(shape, v.dtype());
  lowbit::copy(t, h);
  return t;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.numel() == b.numel() &&
         std::memcmp(a.data(), b.data(),
                     static_cast<size_t>(lowbit::storage_bytes(a.dtype(), a.numel()))) == 0;
}

Tensor filled(const Shape& shape, Dtype dtype, float v, Device device) {
  Tensor h = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < h.numel(); ++i) h.data_as<float>()[i] = v;
  Tensor d = Tensor::empty(shape, dtype, device);
  if (dtype == Dtype::f32) {
    lowbit::copy(d, h);
  } else {
    Tensor c = Tensor::empty(shape, dtype);
    lowbit::convert(c, h);
    lowbit::copy(d, c);
  }
  return d;
}

Tensor filled_i32(const Shape& shape, int32_t v, Device device) {
  Tensor h = Tensor::empty(shape, Dtype::i32);
  for (int64_t i = 0; i < h.numel(); ++i) h.data_as<int32_t>()[i] = v;
  Tensor d = Tensor::empty(shape, Dtype::i32, device);
  lowbit::copy(d, h);
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_fake_quantize_cuda";
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
    std::vector<Row> out;

    {  // the ceiling: cudaMemcpyAsync device to device, 1 GiB
      Row r;
      r.pair = "copy d2d (cudaMemcpyAsync, 1 GiB)";
      r.bytes = 2 * bench::kCopyBytes;
      r.ms = bench::copy_d2d_ms(gpu, stream, [&](const std::function<void()>& copy) {
        return bench::median_ms(s, warmup, reps, copy);
      });
      r.kernel = "cudaMemcpyAsync";
      out.push_back(r);
    }
    const double copy_gbps = out[0].bytes / out[0].ms / 1e6;

    const Shape shape{rows, cols};
    const int64_t n = rows * cols;
    auto normal = [&](Dtype dtype, float sigma, uint64_t seed) {
      Tensor f32 = Tensor::empty(shape, Dtype::f32, gpu, &stream);
      bench::fill_normal<<<1024, 256, 0, s>>>(f32.data_as<float>(), static_cast<uint64_t>(n), seed,
                                              sigma);
      bench::check(cudaGetLastError(), "fill_normal");
      if (dtype == Dtype::f32) return f32;
      Tensor t = Tensor::empty(shape, dtype, gpu, &stream);
      lowbit::convert(t, f32, lowbit::Saturation::none, &stream);
      return t;
    };
    const Tensor x32 = normal(Dtype::f32, 1.0f, 1), xbf = normal(Dtype::bf16, 1.0f, 1);
    const Tensor dy32 = normal(Dtype::f32, 0.01f, 2), dybf = normal(Dtype::bf16, 0.01f, 2);
    Tensor y32 = Tensor::empty(shape, Dtype::f32, gpu),
           ybf = Tensor::empty(shape, Dtype::bf16, gpu);
    Tensor dx32 = Tensor::empty(shape, Dtype::f32, gpu),
           dxbf = Tensor::empty(shape, Dtype::bf16, gpu);
    stream.synchronize();

    // ---- forward ----
    struct Fwd {
      const char* scheme;
      const Tensor* x;
      Tensor* y;
      bool given;
      float scale;
      int32_t zero;
    };
    const Fwd fwds[] = {{"int8:token", &xbf, &ybf, false, 0, 0},
                        {"fp8e4m3:token", &xbf, &ybf, false, 0, 0},
                        {"int4:block32:asym", &xbf, &ybf, true, 0.3f, -1},
                        {"int8:channel", &x32, &y32, true, 0.02f, 0}};
    for (const Fwd& f : fwds) {
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(f.scheme);
      const Shape ss = lowbit::scale_shape(scheme, shape);
      const Dtype sdt = scheme.is_integer() ? scheme.scale_dtype : Dtype::f32;
      const bool affine = scheme.is_integer() && !scheme.symmetric;
      Tensor scale = f.given ? filled(ss, sdt, f.scale, gpu) : Tensor::empty(ss, sdt, gpu);
      Tensor zero = affine ? filled_i32(ss, f.zero, gpu) : Tensor();
      for (bool check_finite : {true, false}) {
        if (f.given && !check_finite) continue;
        lowbit::FakeQuantizeDesc d =
            lowbit::FakeQuantizeDesc::for_views(*f.y, *f.x, scheme, f.given);
        d.check_finite = check_finite;
        const lowbit::FakeQuantizePlan plan = lowbit::FakeQuantizePlan::select(d);
        const lowbit::FakeQuantizeArgs args{*f.x, *f.y, scale, zero};
        Row r;
        r.pair = std::string("fake_quantize ") + std::string(lowbit::dtype_name(f.x->dtype())) +
                 " " + f.scheme + (f.given ? " static" : " dynamic") +
                 (check_finite ? "" : " (check off)");
        r.bytes = lowbit::storage_bytes(f.x->dtype(), n) + lowbit::storage_bytes(f.y->dtype(), n);
        r.ms = bench::median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
        r.kernel = plan.sku().str();
        stream.synchronize();
        // Check: the first rows against the reference (their groups lie within rows, or
        // the scales are given).
        const Tensor hx = head(*f.x, check_rows);
        Tensor hy = Tensor::empty(hx.shape(), f.y->dtype());
        const Shape hss = lowbit::scale_shape(scheme, hx.shape());
        Tensor hs = Tensor::empty(hss, sdt),
               hz = affine ? Tensor::empty(hss, Dtype::i32) : Tensor();
        if (f.given) {
          lowbit::copy(hs, head(scale, hss[0]));  // channel axis 0: channels = rows
          if (affine) lowbit::copy(hz, head(zero, hss[0]));
        }
        lowbit::Preference pref;
        pref.kernel = "fake_quantize_reference";
        lowbit::FakeQuantizePlan::select(
            lowbit::FakeQuantizeDesc::for_views(hy, hx, scheme, f.given), pref)
            .run(lowbit::Stream(), {}, {hx, hy, hs, hz});
        bool ok = same(hy, head(*f.y, check_rows));
        if (!f.given) ok = ok && same(hs, head(scale, hss[0]));
        r.check = ok ? "exact" : "MISMATCH";
        out.push_back(r);
      }
    }
    {  // the peer: quantize + dequantize, bf16 int8:token
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse("int8:token");
      lowbit::QuantizedTensor q = lowbit::QuantizedTensor::allocate(scheme, shape, gpu);
      const lowbit::QuantizePlan qp =
          lowbit::QuantizePlan::select(lowbit::QuantizeDesc::for_views(q.view(), xbf));
      const lowbit::DequantizePlan dp =
          lowbit::DequantizePlan::select(lowbit::DequantizeDesc::for_views(ybf, q.view()));
      Row r;
      r.pair = "peer: quantize + dequantize bf16 int8:token dynamic";
      r.bytes = 2 * lowbit::storage_bytes(Dtype::bf16, n);
      r.ms = bench::median_ms(s, warmup, reps, [&] {
        qp.run(stream, {}, {xbf, q.view()});
        dp.run(stream, {}, {q.view(), ybf});
      });
      r.kernel = qp.sku().str() + " + " + dp.sku().str();
      out.push_back(r);
    }

    // ---- backward ----
    struct Bwd {
      const char* name;
      const char* scheme;
      const Tensor* x;
      const Tensor* dy;
      Tensor* dx;
      bool scale_grad, zero_grad;
    };
    const Bwd bwds[] = {
        {"backward bf16 int8:token dx", "int8:token", &xbf, &dybf, &dxbf, false, false},
        {"backward bf16 int8:token dx + dscale (LSQ)", "int8:token", &xbf, &dybf, &dxbf, true,
         false},
        {"backward f32 int8:channel:asym dx + dscale + dzero", "int8:channel:asym", &x32, &dy32,
         &dx32, true, true}};
    for (const Bwd& b : bwds) {
      const lowbit::QuantScheme scheme = lowbit::QuantScheme::parse(b.scheme);
      const Shape ss = lowbit::scale_shape(scheme, shape);
      const bool affine = scheme.is_integer() && !scheme.symmetric;
      const Tensor scale = filled(ss, Dtype::f32, 0.02f, gpu);
      const Tensor zero = affine ? filled_i32(ss, 3, gpu) : Tensor();
      Tensor dscale = b.scale_grad ? Tensor::empty(ss, Dtype::f32, gpu) : Tensor();
      Tensor dzero = b.zero_grad ? Tensor::empty(ss, Dtype::f32, gpu) : Tensor();
      lowbit::FakeQuantizeBackwardDesc d = lowbit::FakeQuantizeBackwardDesc::for_views(
          *b.dx, *b.dy, *b.x, scheme, b.scale_grad, b.zero_grad);
      d.lsq_grad_scale = b.scale_grad;
      const lowbit::FakeQuantizeBackwardPlan plan = lowbit::FakeQuantizeBackwardPlan::select(d);
      const lowbit::FakeQuantizeBackwardArgs args{*b.dy, *b.x, scale, zero, *b.dx, dscale, dzero};
      Row r;
      r.pair = b.name;
      r.bytes =
          lowbit::storage_bytes(b.x->dtype(), n) + 2 * lowbit::storage_bytes(b.dy->dtype(), n);
      r.ms = bench::median_ms(s, warmup, reps, [&] { plan.run(stream, {}, args); });
      r.kernel = plan.sku().str();
      stream.synchronize();
      // Check dx of the first rows (and dscale where its groups lie within rows).
      const Tensor hx = head(*b.x, check_rows), hdy = head(*b.dy, check_rows);
      const Shape hss = lowbit::scale_shape(scheme, hx.shape());
      const bool per_row = scheme.granularity == lowbit::Granularity::token;
      Tensor hs = head(scale, hss[0]);  // token / channel axis 0: one scale per row
      Tensor hz = affine ? head(zero, hss[0]) : Tensor();
      Tensor hdx = Tensor::empty(hx.shape(), b.dy->dtype());
      Tensor hds = b.scale_grad && per_row ? Tensor::empty(hss, Dtype::f32) : Tensor();
      lowbit::Preference pref;
      pref.kernel = "fake_quantize_backward_reference";
      lowbit::FakeQuantizeBackwardDesc hd = lowbit::FakeQuantizeBackwardDesc::for_views(
          hdx, hdy, hx, scheme, hds.data() != nullptr, false);
      hd.lsq_grad_scale = b.scale_grad;
      lowbit::FakeQuantizeBackwardPlan::select(hd, pref).run(lowbit::Stream(), {},
                                                             {hdy, hx, hs, hz, hdx, hds, {}});
      bool ok = same(hdx, head(*b.dx, check_rows));
      if (hds.data()) ok = ok && same(hds, head(dscale, hss[0]));
      r.check = ok ? "exact" : "MISMATCH";
      out.push_back(r);
    }

    for (Row& r : out) {
      r.gbps = r.bytes / r.ms / 1e6;
      r.pct = 100.0 * r.gbps / copy_gbps;
    }
    std::printf(
        "\nlowbit fake_quantize / backward of [%lld, %lld] on %s (%d SMs), median of %d reps\n",
        static_cast<long long>(rows), static_cast<long long>(cols), props.name.c_str(),
        props.multiprocessors, reps);
    std::printf("| row | bytes moved | time ms | GB/s | %% of copy | check |\n");
    std::printf("| --- | --- | --- | --- | --- | --- |\n");
    bool all_exact = true;
    for (const Row& r : out) {
      std::printf("| %s | %lld | %.4f | %.0f | %.1f%% | %s |\n", r.pair.c_str(),
                  static_cast<long long>(r.bytes), r.ms, r.gbps, r.pct, r.check.c_str());
      all_exact = all_exact && (r.check == "-" || r.check == "exact");
    }
    std::printf("\nkernels:\n");
    for (const Row& r : out) std::printf("  %-52s %s\n", r.pair.c_str(), r.kernel.c_str());
    const bool written = bench::write_json_lines(json_path, out, [&](FILE* f, const Row& r) {
      std::fprintf(f,
                   "{\"bench\": \"fake_quantize_cuda\", \"device\": \"%s\", \"pair\": \"%s\", "
                   "\"bytes\": %lld, \"ms\": %.5f, \"gbps\": %.1f, \"pct_of_copy\": %.2f, "
                   "\"kernel\": \"%s\", \"check\": \"%s\"}\n",
                   bench::json_escape(props.name).c_str(), bench::json_escape(r.pair).c_str(),
                   static_cast<long long>(r.bytes), r.ms, r.gbps, r.pct,
                   bench::json_escape(r.kernel).c_str(), r.check.c_str());
    });
    if (!written) return 1;
    if (!all_exact) {
      std::fprintf(stderr, "bench_fake_quantize_cuda: a result differs from the reference\n");
      return 1;
    }
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "bench_fake_quantize_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
