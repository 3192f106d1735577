// The CPU matmul kernels beyond test_matmul's driver:
//  * matmul_cpu_avx512_vnni and _vnni_packed (W prepared), and matmul_cpu_avx2_int8, on every
//  integer weight format and every x_scheme they take
//    (int8 block / token / tensor, q8_0, q8_K; dynamic and given quantized x), on both
//    loops (gemv for m <= 4, panels beyond), against the f64 product of the dequantized
//    operands: the dots are exact integers, so the bound is 2e-6 (f32 y) relative to
//    |ref| + sqrt(sum (x w)^2), not test_matmul's 1e-5;
//  * x quantized by the plan gives bit for bit what the plan gives for the same x
//    quantized by lowbit::quantize (the same codes);
//  * every kernel gives the same bits on 1 and 2 threads and on every run;
//  * strided x and y, K = 4096 on the exact kernels (AVX-512 and AVX2);
//  * the AVX2 kernels (what a CPU without AVX-512 VNNI gets) on every format, the tails of
//    their panels and strips (columns past a multiple of 16 / 8, K past a multiple of the
//    panel) and x codes of -128 (the prepared kernel hands those to the plain one);
//  * select(): which kernel each kind of descriptor gets, and the reasons of the others.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "ops/convert/convert_element.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

Tensor random_values(const Shape& shape, Dtype dtype, std::mt19937_64& rng, float scale = 1.f) {
  Tensor t = Tensor::empty(shape, dtype);
  std::normal_distribution<float> nd(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i)
    convert_detail::store_f32(t.data(), dtype, i, nd(rng), Saturation::none);
  return t;
}

std::vector<double> as_f64(const TensorView& v) {
  std::vector<double> out(static_cast<size_t>(v.numel()));
  for (int64_t i = 0; i < v.numel(); ++i)
    out[static_cast<size_t>(i)] = convert_detail::load_f32(v.data(), v.dtype(), i);
  return out;
}

bool cpu_kernels_run() { return cpu_features().avx512 && cpu_features().avx512_vnni; }
bool avx2_kernels_run() { return cpu_features().avx2; }

/// The int8-activation kernels this CPU runs.
std::vector<std::string> int8_kernels() {
  std::vector<std::string> out;
  if (cpu_kernels_run()) {
    out.emplace_back("matmul_cpu_avx512_vnni");
    out.emplace_back("matmul_cpu_avx512_vnni_packed");
  }
  if (avx2_kernels_run()) {
    out.emplace_back("matmul_cpu_avx2_int8");
    out.emplace_back("matmul_cpu_avx2_int8_packed");  // m <= 16
  }
  return out;
}

struct Result {
  Tensor y;
  std::string kernel;
};

/// y = x . W^T through a plan with `kernel` (empty: select's choice); x floats, or xq when
/// given; y rows y_pad elements longer than n.
Result run_plan_with(const std::string& kernel, const MatmulDesc& d, const Tensor& x,
                     const QuantizedTensor* xq, const QuantizedTensor& w, int64_t y_pad = 0,
                     const Tensor* bias = nullptr) {
  Preference pref;
  pref.kernel = kernel;
  const MatmulPlan plan = MatmulPlan::select(d, pref);
  const int64_t ys = d.n + y_pad;
  Tensor y_store = Tensor::empty({std::max<int64_t>(1, d.m * ys)}, d.y);
  fill_bytes(y_store, testing::kPoison);
  const TensorView y(y_store.data(), d.y, {d.m, d.n}, {ys, 1});
  TensorView xv;
  if (!xq) xv = TensorView(x.data(), d.x, {d.m, d.k}, {d.x_stride(), 1});
  MatmulArgs args{xv, xq ? xq->view() : QuantizedView(),  w.view(),
                  {}, bias ? bias->view() : TensorView(), y};
  Tensor packed;
  if (const int64_t bytes = prepared_bytes(plan); bytes > 0) {
    packed = Tensor::empty({bytes}, Dtype::u8);
    prepare_weight(plan, w.view(), packed);
    args.w_packed = packed;
  }
  Buffer scratch;
  Workspace ws;
  if (const size_t bytes = plan.workspace_size(); bytes > 0) {
    scratch = Buffer(static_cast<int64_t>(bytes), Device::cpu());
    ws = {scratch.data(), bytes};
  }
  plan.run(Stream(), ws, args);
  return {std::move(y_store), std::string(plan.sku().kernel)};
}

/// Checks y (rows ys apart) against the f64 product of xd [m, k] and wd [n, k] (+ bias).
void check(const Tensor& y, int64_t ys, const std::vector<double>& xd,
           const std::vector<double>& wd, const std::vector<double>& bd, int64_t m, int64_t n,
           int64_t k, double tol) {
  int failures = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double ref = bd.empty() ? 0.0 : bd[static_cast<size_t>(j)], s2 = 0;
      for (int64_t t = 0; t < k; ++t) {
        const double p = xd[static_cast<size_t>(i * k + t)] * wd[static_cast<size_t>(j * k + t)];
        ref += p;
        s2 += p * p;
      }
      const double got = convert_detail::load_f32(y.data(), y.dtype(), i * ys + j);
      if (!(std::fabs(got - ref) <= tol * (std::fabs(ref) + std::sqrt(s2)) + 1e-30) &&
          failures++ < 5)
        ADD_FAILURE() << fmt::format("y[{},{}] = {} vs f64 {} (s = {})", i, j, got, ref,
                                     std::sqrt(s2));
    }
}

const char* const kIntWeights[] = {"int8:block32",
                                   "int8:block32:asym",
                                   "int8:block128",
                                   "int8:channel",
                                   "int8:tensor",
                                   "uint8:block64",
                                   "int8:block16",
                                   "int4:block32",
                                   "int4:block64",
                                   "int4:block128",
                                   "int4:block32:asym",
                                   "int4:block128:asym",
                                   "int4:channel",
                                   "int4:block16",
                                   "uint4:block32",
                                   "int4:block32:scale=f16",
                                   "int8:channel:scale=bf16",
                                   "nvfp4",
                                   "mxfp4",
                                   "q8_0",
                                   "q4_0",
                                   "q4_K",
                                   "q6_K"};

TEST(MatmulCpu, Int8ActivationsOnEveryIntegerWeightFormat) {
  if (int8_kernels().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 VNNI";
  std::mt19937_64 rng(2024);
  const char* const x_schemes[] = {"int8:block32", "int8:token", "int8:tensor",
                                   "q8_0",         "q8_K",       "int8:block128:scale=f16"};
  int ran = 0;
  for (const char* wname : kIntWeights) {
    const QuantScheme ws = QuantScheme::parse(wname);
    for (const char* xname : x_schemes) {
      const QuantScheme xs = QuantScheme::parse(xname);
      for (const int64_t m : {1, 3, 4, 5, 17}) {
        const bool given = m == 3 || m == 17;
        const int64_t n = m == 17 ? 67 : 37, k = m == 5 ? 512 : 768;
        const Dtype yd = m == 4 ? Dtype::bf16 : Dtype::f32;
        SCOPED_TRACE(fmt::format("w {} x {} m {} given {}", wname, xname, m, given));
        const Tensor wf = random_values({n, k}, Dtype::f32, rng, 0.3f);
        const QuantizedTensor wq = quantize(wf, ws);
        const Tensor x = random_values({m, k}, Dtype::f32, rng);
        const QuantizedTensor xq = quantize(x, xs);
        MatmulDesc d;
        d.m = m;
        d.n = n;
        d.k = k;
        d.x = given ? xs.code_dtype() : Dtype::f32;
        if (given && xs.format == QuantFormat::gguf) d.x = Dtype::u8;
        d.x_scheme = xs;
        d.w = ws;
        d.y = yd;
        d.y_row_stride = n + 3;
        for (const std::string& kernel : int8_kernels()) {
          if (kernel == "matmul_cpu_avx2_int8_packed" && m > 16 &&
              (ws.format == QuantFormat::int8 || ws.format == QuantFormat::uint8 ||
               ws.str() == "q8_0"))
            continue;  // declined: the plain kernel's panels serve 8-bit codes there
          SCOPED_TRACE(kernel);
          const Result r = run_plan_with(kernel, d, x, given ? &xq : nullptr, wq, 3);
          check(r.y, n + 3, as_f64(dequantize(xq.view())), as_f64(dequantize(wq.view())), {}, m, n,
                k, yd == Dtype::f32 ? 2e-6 : 1e-2);
          // The unused tail of each y row stays poisoned.
          for (int64_t i = 0; i < m; ++i)
            EXPECT_EQ(static_cast<const uint8_t*>(
                          r.y.data())[(i * (n + 3) + n) * (yd == Dtype::f32 ? 4 : 2)],
                      testing::kPoison);
        }
        ++ran;
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
  EXPECT_EQ(ran, static_cast<int>(std::size(kIntWeights)) * 6 * 5);
}

TEST(MatmulCpu, PlanQuantizedXEqualsGivenQuantizedX) {
  if (!cpu_kernels_run()) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937_64 rng(7);
  for (const char* xname : {"int8:block32", "q8_0", "int8:token"}) {
    for (const int64_t m : {2, 9}) {
      const int64_t n = 40, k = 512;
      const QuantScheme xs = QuantScheme::parse(xname);
      const QuantizedTensor wq =
          quantize(random_values({n, k}, Dtype::f32, rng), QuantScheme::parse("q4_0"));
      const Tensor x = random_values({m, k}, Dtype::bf16, rng);
      MatmulDesc d;
      d.m = m;
      d.n = n;
      d.k = k;
      d.x = Dtype::bf16;
      d.x_scheme = xs;
      d.w = wq.scheme;
      d.y = Dtype::f32;
      const Result dyn = run_plan_with("", d, x, nullptr, wq);
      EXPECT_EQ(dyn.kernel, "matmul_cpu_avx512_vnni_packed");
      const QuantizedTensor xq = quantize(x, xs);
      d.x = xs.format == QuantFormat::gguf ? Dtype::u8 : xs.code_dtype();
      const Result given = run_plan_with("", d, x, &xq, wq);
      EXPECT_EQ(testing::compare_bytes(dyn.y, given.y), "") << xname << " m=" << m;
    }
  }
}

TEST(MatmulCpu, SameBitsOnOneAndTwoThreadsAndEveryRun) {
  if (!cpu_kernels_run()) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937_64 rng(11);
  const int saved = omp_get_max_threads();
  for (const char* wname : {"q4_K", "int4:block32:asym", "fp8e4m3:channel"}) {
    for (const int64_t m : {1, 40}) {
      for (const bool int8x : {false, true}) {
        if (int8x && std::string(wname).rfind("fp8", 0) == 0) continue;
        const int64_t n = 300, k = 1024;
        const QuantizedTensor wq =
            quantize(random_values({n, k}, Dtype::f32, rng), QuantScheme::parse(wname));
        const Tensor x = random_values({m, k}, Dtype::f32, rng);
        MatmulDesc d;
        d.m = m;
        d.n = n;
        d.k = k;
        d.x = Dtype::f32;
        if (int8x) d.x_scheme = QuantScheme::parse("int8:block32");
        d.w = wq.scheme;
        d.y = Dtype::f32;
        std::vector<std::string> names{""};
        if (avx2_kernels_run()) {
          names.emplace_back(int8x ? "matmul_cpu_avx2_int8" : "matmul_cpu_avx2");
          if (int8x) names.emplace_back("matmul_cpu_avx2_int8_packed");
        }
        for (const std::string& name : names) {
          SCOPED_TRACE(name);
          omp_set_num_threads(1);
          const Result one = run_plan_with(name, d, x, nullptr, wq);
          omp_set_num_threads(2);
          const Result two = run_plan_with(name, d, x, nullptr, wq);
          const Result again = run_plan_with(name, d, x, nullptr, wq);
          EXPECT_EQ(testing::compare_bytes(one.y, two.y), "") << wname << " m=" << m;
          EXPECT_EQ(testing::compare_bytes(two.y, again.y), "") << wname << " m=" << m;
        }
      }
    }
  }
  omp_set_num_threads(saved);
}

TEST(MatmulCpu, StridedXLongKAndBias) {
  if (!cpu_kernels_run()) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937_64 rng(5);
  for (const char* wname : {"q4_0", "int4:block128:asym", "nvfp4", "fp8e5m2:block128x128"}) {
    for (const int64_t m : {2, 30}) {
      const int64_t n = 70, k = 4096, xs = k + 64;
      const QuantizedTensor wq =
          quantize(random_values({n, k}, Dtype::f32, rng, 0.2f), QuantScheme::parse(wname));
      const Tensor x = random_values({m, xs}, Dtype::f32, rng);
      const Tensor bias = random_values({n}, Dtype::f32, rng);
      MatmulDesc d;
      d.m = m;
      d.n = n;
      d.k = k;
      d.x = Dtype::f32;
      d.x_row_stride = xs;
      d.w = wq.scheme;
      d.y = Dtype::f32;
      d.bias = true;
      std::vector<double> xd(static_cast<size_t>(m * k));
      const auto* xp = x.data_as<const float>();
      for (int64_t i = 0; i < m; ++i)
        for (int64_t t = 0; t < k; ++t) xd[static_cast<size_t>(i * k + t)] = xp[i * xs + t];
      SCOPED_TRACE(fmt::format("w {} m {}", wname, m));
      const Result r = run_plan_with("", d, x, nullptr, wq, 0, &bias);
      EXPECT_EQ(r.kernel, "matmul_cpu_avx512");
      check(r.y, n, xd, as_f64(dequantize(wq.view())), as_f64(bias), m, n, k, 1e-5);
      if (avx2_kernels_run()) {
        const Result r2 = run_plan_with("matmul_cpu_avx2", d, x, nullptr, wq, 0, &bias);
        check(r2.y, n, xd, as_f64(dequantize(wq.view())), as_f64(bias), m, n, k, 1e-5);
      }
    }
  }
}

TEST(MatmulCpu, Avx2KernelsOnEveryFormatAndTheirPanelTails) {
  if (!avx2_kernels_run()) GTEST_SKIP() << "no AVX2";
  std::mt19937_64 rng(31);
  std::vector<const char*> weights(std::begin(kIntWeights), std::end(kIntWeights));
  for (const char* f : {"fp8e4m3:channel", "fp8e5m2:block128", "fp8e4m3:block128x128",
                        "fp8e4m3:tensor", "int8:block64:scale=f16"})
    weights.push_back(f);
  int ran = 0;
  for (const char* wname : weights) {
    const QuantScheme ws = QuantScheme::parse(wname);
    const bool fp8 = ws.format == QuantFormat::fp8e4m3 || ws.format == QuantFormat::fp8e5m2;
    // n = 37: two panels of 16 and a tail of 5; k = 1408: five exact panels of 256 and a
    // tail of 128, two int8 panels of 512 and a tail of 384 (GGUF: k = 1280, the K-quants'
    // super-blocks of 256); m = 4 (gemv, 4 rows), 5 and 8 (tiles of 6 / 3 rows and tails).
    for (const int64_t m : {1, 4, 5, 8}) {
      const int64_t n = 37, k = ws.format == QuantFormat::gguf ? 1280 : 1408;
      SCOPED_TRACE(fmt::format("w {} m {}", wname, m));
      const QuantizedTensor wq = quantize(random_values({n, k}, Dtype::f32, rng, 0.3f), ws);
      const Tensor x = random_values({m, k}, Dtype::bf16, rng);
      const std::vector<double> wd = as_f64(dequantize(wq.view()));
      MatmulDesc d;
      d.m = m;
      d.n = n;
      d.k = k;
      d.x = Dtype::bf16;
      d.w = ws;
      d.y = Dtype::f32;
      check(run_plan_with("matmul_cpu_avx2", d, x, nullptr, wq).y, n, as_f64(x), wd, {}, m, n, k,
            1e-5);
      if (!fp8) {
        d.x_scheme = QuantScheme::parse("q8_0");
        const QuantizedTensor xq = quantize(x, *d.x_scheme);
        for (const char* kernel : {"matmul_cpu_avx2_int8", "matmul_cpu_avx2_int8_packed"}) {
          SCOPED_TRACE(kernel);
          check(run_plan_with(kernel, d, x, nullptr, wq).y, n, as_f64(dequantize(xq.view())), wd,
                {}, m, n, k, 2e-6);
        }
      }
      ++ran;
      if (::testing::Test::HasFailure()) return;
    }
  }
  EXPECT_EQ(ran, static_cast<int>(weights.size()) * 4);
}

// x given quantized may hold -128 (static scales, or a caller's own codes): the dot products
// stay exact (vpdpbusd's signed operand; vpmaddwd on 16 bits), where a saturating
// vpmaddubsw would not be.
TEST(MatmulCpu, GivenXCodesOfMinus128AreExact) {
  if (int8_kernels().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 VNNI";
  std::mt19937_64 rng(3);
  for (const char* wname : {"int8:channel", "uint8:block64", "q8_0", "int4:block32"}) {
    for (const int64_t m : {1, 7}) {
      const int64_t n = 20, k = 512;
      const QuantizedTensor wq =
          quantize(random_values({n, k}, Dtype::f32, rng), QuantScheme::parse(wname));
      const QuantScheme xs = QuantScheme::parse("int8:token");
      QuantizedTensor xq = quantize(random_values({m, k}, Dtype::f32, rng), xs);
      auto* codes = static_cast<int8_t*>(xq.codes.data());
      for (int64_t i = 0; i < m * k; ++i) codes[i] = static_cast<int8_t>(-128 + (i % 3) * 255 / 2);
      MatmulDesc d;
      d.m = m;
      d.n = n;
      d.k = k;
      d.x = Dtype::i8;
      d.x_scheme = xs;
      d.w = wq.scheme;
      d.y = Dtype::f32;
      for (const std::string& kernel : int8_kernels()) {
        SCOPED_TRACE(fmt::format("{} w {} m {}", kernel, wname, m));
        const Result r = run_plan_with(kernel, d, Tensor(), &xq, wq);
        check(r.y, n, as_f64(dequantize(xq.view())), as_f64(dequantize(wq.view())), {}, m, n, k,
              2e-6);
      }
    }
  }
}

TEST(MatmulCpu, SelectPicksByDescriptor) {
  if (!cpu_kernels_run()) GTEST_SKIP() << "no AVX-512 VNNI";
  MatmulDesc d;
  d.m = 1;
  d.n = 64;
  d.k = 256;
  d.x = Dtype::bf16;
  d.y = Dtype::bf16;
  d.w = QuantScheme::parse("q4_K");
  auto pick = [](const MatmulDesc& desc) {
    return std::string(MatmulPlan::select(desc).sku().kernel);
  };
  // Weight-only: the exact kernel; the int8 one says why not.
  {
    const MatmulPlan p = MatmulPlan::select(d);
    EXPECT_EQ(p.sku().kernel, "matmul_cpu_avx512");
    ASSERT_FALSE(p.declined().empty());
    EXPECT_EQ(p.declined().back().kernel, "matmul_cpu_avx512_vnni");
    EXPECT_EQ(weight_layout(p), "plain");
    EXPECT_NE(p.declined().back().reason.find("no x_scheme"), std::string::npos);
    EXPECT_EQ(p.precision().accumulator, Dtype::f32);
    EXPECT_TRUE(p.precision().deterministic);
  }
  // x_scheme: the int8 kernel.
  d.x_scheme = QuantScheme::parse("q8_K");
  EXPECT_EQ(pick(d), "matmul_cpu_avx512_vnni_packed");
  d.x_scheme = QuantScheme::parse("int8:token");
  {
    const MatmulPlan p = MatmulPlan::select(d);
    EXPECT_EQ(p.sku().kernel, "matmul_cpu_avx512_vnni_packed");
    EXPECT_EQ(weight_layout(p), "cpu_avx512_vnni_x16");
    EXPECT_GT(prepared_bytes(p), 0);
    EXPECT_EQ(p.precision().accumulator, Dtype::i32);
  }
  // What they decline, the reference serves, with reasons.
  d.x_scheme = QuantScheme::parse("fp8e4m3:token");
  {
    const MatmulPlan p = MatmulPlan::select(d);
    EXPECT_EQ(p.sku().kernel, "matmul_reference");
    bool saw = false;
    for (const Declined& dc : p.declined())
      if (dc.kernel == "matmul_cpu_avx512_vnni") {
        saw = true;
        EXPECT_NE(dc.reason.find("fp8e4m3:token"), std::string::npos) << dc.reason;
      }
    EXPECT_TRUE(saw);
  }
  d.x_scheme = QuantScheme::parse("int8:block32:asym");
  EXPECT_EQ(pick(d), "matmul_reference");
  d.x_scheme.reset();
  d.w = QuantScheme::parse("int4:block32");
  d.k = 96;  // not a multiple of 64
  {
    const MatmulPlan p = MatmulPlan::select(d);
    EXPECT_EQ(p.sku().kernel, "matmul_reference");
    EXPECT_NE(p.declined().back().reason.find("multiple of 64"), std::string::npos);
  }
  d.k = 256;
  d.w = QuantScheme::parse("q5_K");
  EXPECT_EQ(pick(d), "matmul_reference");
  d.w = QuantScheme::parse("int8:channel:axis=1");
  EXPECT_EQ(pick(d), "matmul_reference");
  d.w = QuantScheme::parse("fp8e4m3:block128x128");
  EXPECT_EQ(pick(d), "matmul_cpu_avx512");
  d.x_scheme = QuantScheme::parse("int8:token");
  EXPECT_EQ(pick(d), "matmul_reference");  // fp8 weights: no integer codes for vpdpbusd
}

}  // namespace
}  // namespace lowbit
