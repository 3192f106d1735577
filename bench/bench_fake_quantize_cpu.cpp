// CPU fake_quantize / fake_quantize_backward throughput against the machine's own ceilings,
// measured in the same run, on 1 and 2 threads:
//  * ceilings: a streaming read (u64 sum) and memcpy of 1 GiB (bytes read + written);
//  * lowbit (the kernels the plans select: fake_quantize_simd / fake_quantize_backward_simd)
//    on a large tensor (default 4096 x 8192): forward bf16 -> bf16 with int8:token (dynamic),
//    int4:block32:asym (static), fp8e4m3:token (dynamic), f32 -> f32 int8:channel (static);
//    backward with f32 x and dy: dx only, dx + dscale (LSQ), dx + dscale + dzero
//    (int8:channel:asym), and bf16 x / dy with dscale (int8:token).
//  * the peer: the same forward as quantize then dequantize through lowbit's own ops (what a
//    user without fake_quantize would run).
//
// GB/s counts bytes read + written once each (the backward with sums reads dy twice: the
// per-group max |dy| pass, then the main pass; the second read shows as lost bandwidth).
// Best of N timed runs (default 7) after one warm-up run.
//
// Usage: bench_fake_quantize_cpu [--rows R] [--cols K] [--reps N] [--copy-mib M]
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_cpu_harness.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/quantize.hpp"

namespace {

using namespace lowbit;

struct Options {
  int64_t rows = 4096;
  int64_t cols = 8192;
  int reps = 7;
  int64_t copy_bytes = int64_t{1} << 30;
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
    } else {
      std::fprintf(stderr,
                   "usage: bench_fake_quantize_cpu [--rows R] [--cols K] [--reps N] "
                   "[--copy-mib M]\n");
      std::exit(2);
    }
  }
  return o;
}

Tensor normal(const Shape& shape, Dtype dtype, float sigma, uint64_t seed) {
  Tensor f = Tensor::empty(shape, Dtype::f32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  for (int64_t i = 0; i < f.numel(); ++i) f.data_as<float>()[i] = d(rng);
  if (dtype == Dtype::f32) return f;
  Tensor t = Tensor::empty(shape, dtype);
  convert(t, f);
  return t;
}

Tensor filled(const Shape& shape, Dtype dtype, float v) {
  Tensor t = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = v;
  if (dtype == Dtype::f32) return t;
  Tensor c = Tensor::empty(shape, dtype);
  convert(c, t);
  return c;
}

Tensor zeros_i32(const Shape& shape, int32_t v) {
  Tensor t = Tensor::empty(shape, Dtype::i32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<int32_t>()[i] = v;
  return t;
}

struct Row {
  std::string name;
  double seconds;
  double bytes;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const Shape shape{o.rows, o.cols};
  const int64_t n = o.rows * o.cols;
  std::printf("bench_fake_quantize_cpu: %lld x %lld, best of %d\n", static_cast<long long>(o.rows),
              static_cast<long long>(o.cols), o.reps);

  // Inputs (shared by every thread count).
  const Tensor x32 = normal(shape, Dtype::f32, 1.0f, 1);
  const Tensor xbf = normal(shape, Dtype::bf16, 1.0f, 1);
  const Tensor dy32 = normal(shape, Dtype::f32, 0.01f, 2);
  const Tensor dybf = normal(shape, Dtype::bf16, 0.01f, 2);
  Tensor y32 = Tensor::empty(shape, Dtype::f32), ybf = Tensor::empty(shape, Dtype::bf16);
  Tensor dx32 = Tensor::empty(shape, Dtype::f32), dxbf = Tensor::empty(shape, Dtype::bf16);
  bench::prefault(y32.data(), n * 4);
  bench::prefault(ybf.data(), n * 2);
  bench::prefault(dx32.data(), n * 4);
  bench::prefault(dxbf.data(), n * 2);
  const QuantScheme tok = QuantScheme::parse("int8:token");
  const QuantScheme blk = QuantScheme::parse("int4:block32:asym");
  const QuantScheme fp8 = QuantScheme::parse("fp8e4m3:token");
  const QuantScheme chn = QuantScheme::parse("int8:channel");
  const QuantScheme chna = QuantScheme::parse("int8:channel:asym");
  Tensor s_tok = Tensor::empty(scale_shape(tok, shape), Dtype::f32);
  Tensor s_fp8 = Tensor::empty(scale_shape(fp8, shape), Dtype::f32);
  const Tensor s_blk = filled(scale_shape(blk, shape), Dtype::f32, 0.3f);
  const Tensor z_blk = zeros_i32(scale_shape(blk, shape), -1);
  const Tensor s_chn = filled(scale_shape(chn, shape), Dtype::f32, 0.02f);
  const Tensor z_chn = zeros_i32(scale_shape(chn, shape), 3);
  const Tensor s_tok_given = filled(scale_shape(tok, shape), Dtype::f32, 0.02f);
  Tensor ds = Tensor::empty(scale_shape(chn, shape), Dtype::f32);
  Tensor dz = Tensor::empty(scale_shape(chn, shape), Dtype::f32);
  Tensor ds_tok = Tensor::empty(scale_shape(tok, shape), Dtype::f32);
  const int64_t copy_n = o.copy_bytes / 8;
  std::vector<uint64_t> csrc(static_cast<size_t>(copy_n), 1), cdst(static_cast<size_t>(copy_n));

  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<Row> rows;
    volatile uint64_t sink = 0;
    rows.push_back(
        {"ceiling: streaming read",
         bench::best_seconds(o.reps, [&] { sink = bench::parallel_sum(csrc.data(), copy_n); }),
         static_cast<double>(copy_n * 8)});
    rows.push_back(
        {"ceiling: memcpy",
         bench::best_seconds(o.reps,
                             [&] { bench::parallel_memcpy(cdst.data(), csrc.data(), copy_n * 8); }),
         static_cast<double>(copy_n * 16)});
    (void)sink;
    auto fwd = [&](const char* name, const Tensor& x, Tensor& y, const QuantScheme& s,
                   const Tensor& scale, const Tensor& zero, bool given) {
      const FakeQuantizePlan plan =
          FakeQuantizePlan::select(FakeQuantizeDesc::for_views(y, x, s, given));
      const double bytes =
          static_cast<double>(storage_bytes(x.dtype(), n) + storage_bytes(y.dtype(), n));
      rows.push_back({fmt::format("fake_quantize {} {} ({})", dtype_name(x.dtype()), s.str(),
                                  given ? "static" : "dynamic"),
                      bench::best_seconds(o.reps,
                                          [&] {
                                            plan.run(Stream(), {}, {x, y, scale, zero});
                                          }),
                      bytes});
      (void)name;
      // The peer: quantize then dequantize.
      QuantizedTensor q = QuantizedTensor::allocate(s, shape);
      if (given) {
        copy(q.scale, scale);
        if (zero.numel() > 0) copy(q.zero, zero);
      }
      rows.push_back({"  peer: quantize + dequantize",
                      bench::best_seconds(o.reps,
                                          [&] {
                                            quantize_into(q.view(), x, given);
                                            dequantize_into(y, q.view());
                                          }),
                      bytes});
    };
    fwd("tok", xbf, ybf, tok, s_tok, Tensor(), false);
    fwd("blk", xbf, ybf, blk, s_blk, z_blk, true);
    fwd("fp8", xbf, ybf, fp8, s_fp8, Tensor(), false);
    fwd("chn", x32, y32, chn, s_chn, Tensor(), true);

    auto bwd = [&](const std::string& name, const Tensor& x, const Tensor& dy, Tensor& dx,
                   const QuantScheme& s, const Tensor& scale, const Tensor& zero, Tensor* dsc,
                   Tensor* dzr) {
      FakeQuantizeBackwardDesc d =
          FakeQuantizeBackwardDesc::for_views(dx, dy, x, s, dsc != nullptr, dzr != nullptr);
      d.lsq_grad_scale = dsc != nullptr;
      const FakeQuantizeBackwardPlan plan = FakeQuantizeBackwardPlan::select(d);
      FakeQuantizeBackwardArgs a{dy, x, scale, zero, dx, {}, {}};
      if (dsc) a.dscale = *dsc;
      if (dzr) a.dzero = *dzr;
      const double bytes =
          static_cast<double>(storage_bytes(x.dtype(), n) + 2 * storage_bytes(dy.dtype(), n));
      rows.push_back(
          {name, bench::best_seconds(o.reps, [&] { plan.run(Stream(), {}, a); }), bytes});
    };
    bwd("backward f32 int8:channel dx", x32, dy32, dx32, chn, s_chn, Tensor(), nullptr, nullptr);
    bwd("backward f32 int8:channel dx + dscale (LSQ)", x32, dy32, dx32, chn, s_chn, Tensor(), &ds,
        nullptr);
    bwd("backward f32 int8:channel:asym dx + dscale + dzero", x32, dy32, dx32, chna, s_chn, z_chn,
        &ds, &dz);
    bwd("backward bf16 int8:token dx + dscale", xbf, dybf, dxbf, tok, s_tok_given, Tensor(),
        &ds_tok, nullptr);

    const double read_gbps = rows[0].bytes / rows[0].seconds / 1e9;
    const double copy_gbps = rows[1].bytes / rows[1].seconds / 1e9;
    std::printf(
        "\n%d thread%s (kernel: %s)\n", threads, threads > 1 ? "s" : "",
        FakeQuantizePlan::select(FakeQuantizeDesc::for_views(ybf, xbf, tok)).sku().str().c_str());
    std::printf("  %-58s %9s %8s %7s %7s\n", "row", "ms", "GB/s", "%read", "%copy");
    for (const Row& r : rows) {
      const double gbps = r.bytes / r.seconds / 1e9;
      std::printf("  %-58s %9.2f %8.2f %6.1f%% %6.1f%%\n", r.name.c_str(), r.seconds * 1e3, gbps,
                  100 * gbps / read_gbps, 100 * gbps / copy_gbps);
    }
  }
  return 0;
}
