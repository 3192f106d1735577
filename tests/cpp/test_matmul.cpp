// Every matmul kernel on every backend against the f64 product of the dequantized operands.
//
// For each kernel of MatmulOp::kernels() (selected by name) on every device of
// testing::test_devices(), over the weight schemes of kWeightSchemes (weight-only, f32 / f16 /
// bf16 activations) and kW8A8 (quantized activations, given quantized or quantized by the plan),
// and over awkward M, N, K: a kernel that declines a case is skipped; one that accepts it must
// produce y within the tolerance of kTolerance below, with every unwritten element showing
// (y is poisoned first, and y's row-stride gaps must stay poisoned).
//
// Tolerance (the per-path tolerances of docs/matmul.md): with ref = the f64 product of the
// operands as the dequantize op defines them, and s = sqrt(sum_k (x_k w_k)^2) (the magnitude
// a sum of K random-sign products has), |y - ref| <= tol * (|ref| + s) where tol is 1e-5 for
// an f32 y and 1e-2 for f16 / bf16. NaN in the reference must be NaN in y, +-Inf the same Inf.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/matmul/matmul_cuda_w8a8_wgmma_knobs.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::kPoison;

const char* const kWeightSchemes[] = {"int8:block32",
                                      "int8:block32:asym",
                                      "int8:block128",
                                      "int8:channel",
                                      "int4:block32",
                                      "int4:block64",
                                      "int4:block128",
                                      "int4:block32:asym",
                                      "int4:block128:asym",
                                      "int4:channel",
                                      "fp8e4m3:channel",
                                      "fp8e5m2:channel",
                                      "fp8e4m3:tensor",
                                      "fp8e4m3:block128x128",
                                      "nvfp4",
                                      "mxfp4",
                                      "q8_0",
                                      "q4_0",
                                      "q4_K",
                                      "q6_K"};

struct W8A8Case {
  const char* x_scheme;
  const char* w_scheme;
};
const W8A8Case kW8A8[] = {
    {"int8:token", "int8:channel"},
    {"fp8e4m3:tensor", "fp8e4m3:tensor"},
    {"fp8e4m3:token", "fp8e4m3:channel"},
    {"fp8e4m3:block128", "fp8e4m3:block128x128"},
};

double tolerance(Dtype y) { return y == Dtype::f32 ? 1e-5 : 1e-2; }

/// Random finite values of moderate magnitude (a matmul test is about sums, not about the
/// encoders' edge cases, which test_quantize_backends covers).
Tensor random_values(const Shape& shape, Dtype dtype, std::mt19937_64& rng, float scale = 1.f) {
  Tensor t = Tensor::empty(shape, dtype);
  std::normal_distribution<float> nd(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i)
    convert_detail::store_f32(t.data(), dtype, i, nd(rng), Saturation::none);
  return t;
}

std::vector<double> as_f64(const TensorView& host) {
  std::vector<double> v(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i)
    v[static_cast<size_t>(i)] = convert_detail::load_f32(host.data(), host.dtype(), i);
  return v;
}

QuantizedTensor quantized_to_device(const QuantizedTensor& h, Device device) {
  QuantizedTensor q;
  q.scheme = h.scheme;
  q.shape = h.shape;
  auto move = [&](const Tensor& t) {
    return t.data() || t.numel() ? testing::to_device(t, device) : Tensor();
  };
  q.codes = move(h.codes);
  q.scale = move(h.scale);
  q.zero = move(h.zero);
  q.global_scale = move(h.global_scale);
  return q;
}

struct Case {
  int64_t m, n, k;
  Dtype x;
  Dtype y;
  std::string w_scheme;
  std::string x_scheme;  // "" weight-only
  bool x_given_quantized = false;
  bool bias = false;
  int64_t y_pad = 0;     // extra elements per row of y
  bool special = false;  // NaN / Inf in x
  int64_t x_pad = 0;     // extra elements per row of x (weight-only cases)
  /// x's row i is 1 at k = i % K and 0 elsewhere: then every sum order gives y[i][j] = W[j][i %
  /// K] exactly, so y must be the dequantized weight rounded once to y's dtype, bit for bit
  /// (what a kernel's decode makes of each code, without the tolerance of a random sum).
  bool one_hot = false;
};

std::string case_name(const Case& c) {
  return fmt::format("m={} n={} k={} x={} y={} w={} xs={}{} bias={} y_pad={} x_pad={}{}", c.m, c.n,
                     c.k, dtype_name(c.x), dtype_name(c.y), c.w_scheme, c.x_scheme,
                     c.x_given_quantized ? "(given)" : "", c.bias, c.y_pad, c.x_pad,
                     c.special ? " special" : "");
}

/// Runs `kernel` on `device` for `c`; returns false if the kernel declined. Checks y, and
/// gives its [m][n] bytes (the gaps of a padded y left out) in `y_bytes` if asked.
bool run_case(std::string_view kernel, Device device, const Case& c, uint64_t seed,
              std::vector<uint8_t>* y_bytes = nullptr) {
  SCOPED_TRACE(
      fmt::format("kernel {} on {}: {} seed {}", kernel, device.str(), case_name(c), seed));
  std::mt19937_64 rng(seed);
  const QuantScheme ws = QuantScheme::parse(c.w_scheme);
  Tensor w_f32 = random_values({c.n, c.k}, Dtype::f32, rng, 0.5f);
  // Blocks of zeros in W: whole rows and the first 32 elements of row 1.
  if (c.n > 2) std::fill_n(w_f32.data_as<float>() + 2 * c.k, c.k, 0.f);
  if (c.n > 1) std::fill_n(w_f32.data_as<float>() + 1 * c.k, std::min<int64_t>(32, c.k), 0.f);
  const QuantizedTensor wq_host = quantize(w_f32, ws);
  Tensor x_host = random_values({c.m, c.k}, c.x_given_quantized ? Dtype::f32 : c.x, rng);
  if (c.one_hot)
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t t = 0; t < c.k; ++t)
        convert_detail::store_f32(x_host.data(), x_host.dtype(), i * c.k + t,
                                  t == i % c.k ? 1.0f : 0.0f, Saturation::none);
  if (c.special && c.m > 0 && c.k > 2) {
    convert_detail::store_f32(x_host.data(), x_host.dtype(), 1, NAN, Saturation::none);
    if (c.m > 1)
      convert_detail::store_f32(x_host.data(), x_host.dtype(), c.k + 2, INFINITY, Saturation::none);
  }
  std::optional<QuantizedTensor> xq_host;
  if (!c.x_scheme.empty() && c.x_given_quantized)
    xq_host = quantize(x_host, QuantScheme::parse(c.x_scheme));
  Tensor bias_host = c.bias ? random_values({c.n}, c.y, rng) : Tensor();

  // The oracle: f64 products of the dequantized operands.
  const std::vector<double> wd = as_f64(dequantize(wq_host.view(), Dtype::f32));
  std::vector<double> xd;
  if (xq_host)
    xd = as_f64(dequantize(xq_host->view(), Dtype::f32));
  else if (!c.x_scheme.empty())
    xd = as_f64(dequantize(quantize(x_host, QuantScheme::parse(c.x_scheme)).view(), Dtype::f32));
  else
    xd = as_f64(x_host);
  const std::vector<double> bd = c.bias ? as_f64(bias_host) : std::vector<double>();

  MatmulDesc d;
  d.m = c.m;
  d.n = c.n;
  d.k = c.k;
  d.x = xq_host ? xq_host->scheme.code_dtype() : c.x;
  if (!c.x_scheme.empty()) d.x_scheme = QuantScheme::parse(c.x_scheme);
  d.w = ws;
  d.y = c.y;
  d.bias = c.bias;
  d.y_row_stride = c.n + c.y_pad;
  if (c.x_pad) d.x_row_stride = c.k + c.x_pad;
  d.device = device;
  Preference pref;
  pref.kernel = std::string(kernel);
  std::optional<MatmulPlan> plan;
  try {
    plan = MatmulPlan::select(d, pref);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::unsupported) return false;
    throw;
  }

  const QuantizedTensor wq = quantized_to_device(wq_host, device);
  // x with rows k + x_pad apart (the gaps poisoned), else as it is.
  Tensor x_rows;
  if (c.x_pad) {
    x_rows = Tensor::empty({std::max<int64_t>(c.m * (c.k + c.x_pad), 1)}, c.x);
    fill_bytes(x_rows, kPoison);
    const size_t eb = storage_bytes(c.x, 1);
    for (int64_t i = 0; i < c.m; ++i)
      std::memcpy(static_cast<uint8_t*>(x_rows.data()) + i * (c.k + c.x_pad) * eb,
                  static_cast<const uint8_t*>(x_host.data()) + i * c.k * eb, c.k * eb);
  }
  const Tensor x = testing::to_device(c.x_pad ? x_rows : x_host, device);
  std::optional<QuantizedTensor> xq;
  if (xq_host) xq = quantized_to_device(*xq_host, device);
  const Tensor bias = c.bias ? testing::to_device(bias_host, device) : Tensor();
  const int64_t ys = c.n + c.y_pad;
  Tensor y_store = Tensor::empty({std::max<int64_t>(c.m * ys, 1)}, c.y, device);
  fill_bytes(y_store, kPoison);
  const TensorView y(y_store.data(), c.y, {c.m, c.n}, {ys, 1}, device);

  Tensor packed;
  const TensorView x_view =
      c.x_pad ? TensorView(x.data(), c.x, {c.m, c.k}, {c.k + c.x_pad, 1}, device) : x.view();
  MatmulArgs args{xq ? TensorView() : x_view,
                  xq ? xq->view() : QuantizedView(),
                  wq.view(),
                  {},
                  c.bias ? bias.view() : TensorView(),
                  y};
  if (const int64_t bytes = prepared_bytes(*plan); bytes > 0) {
    packed = Tensor::empty({bytes}, Dtype::u8, device);
    prepare_weight(*plan, wq.view(), packed);
    args.w_packed = packed;
  }
  const Stream stream = Stream::default_for(device);
  Buffer scratch;
  Workspace ws_mem;
  if (const size_t bytes = plan->workspace_size(); bytes > 0) {
    scratch = Buffer(static_cast<int64_t>(bytes), device);
    ws_mem = {scratch.data(), bytes};
  }
  plan->run(stream, ws_mem, args);
  stream.synchronize();

  const Tensor y_back = testing::to_host(y_store);
  if (y_bytes) {
    const size_t eb = storage_bytes(c.y, 1);
    y_bytes->resize(static_cast<size_t>(c.m * c.n) * eb);
    for (int64_t i = 0; i < c.m; ++i)
      std::memcpy(y_bytes->data() + static_cast<size_t>(i * c.n) * eb,
                  static_cast<const uint8_t*>(y_back.data()) + static_cast<size_t>(i * ys) * eb,
                  static_cast<size_t>(c.n) * eb);
  }
  const double tol = tolerance(c.y);
  int failures = 0;
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < ys; ++j) {
      const int64_t at = i * ys + j;
      if (j >= c.n) {  // a gap of a padded row: never written
        const auto* bytes = static_cast<const uint8_t*>(y_back.data()) +
                            at * static_cast<int>(storage_bytes(c.y, 1));
        for (int b = 0; b < static_cast<int>(storage_bytes(c.y, 1)); ++b)
          if (bytes[b] != kPoison && failures++ < 5) ADD_FAILURE() << "gap written at " << at;
        continue;
      }
      double ref = c.bias ? bd[static_cast<size_t>(j)] : 0.0, s2 = 0.0;
      for (int64_t t = 0; t < c.k; ++t) {
        const double p =
            xd[static_cast<size_t>(i * c.k + t)] * wd[static_cast<size_t>(j * c.k + t)];
        ref += p;
        s2 += p * p;
      }
      const double got = convert_detail::load_f32(y_back.data(), c.y, at);
      bool ok;
      if (std::isnan(ref))
        ok = std::isnan(got);
      else if (std::isinf(ref))
        ok = got == ref;
      else
        ok = std::fabs(got - ref) <= tol * (std::fabs(ref) + std::sqrt(s2)) + 1e-30;
      if (c.one_hot && !c.bias) {  // the dequantized value (an f32) rounded once to y's dtype
        uint32_t one = 0;
        convert_detail::store_f32(&one, c.y, 0, static_cast<float>(ref), Saturation::none);
        ok = got == convert_detail::load_f32(&one, c.y, 0);
      }
      if (!ok && failures++ < 5)
        ADD_FAILURE() << fmt::format("y[{},{}] = {} vs f64 {} (s = {})", i, j, got, ref,
                                     std::sqrt(s2));
    }
  }
  return true;
}

std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (const Kernel<MatmulOp>* k : MatmulOp::kernels()) names.emplace_back(k->name());
  return names;
}

/// The cases one kernel runs on one device; `big` adds sizes that take the fast paths'
/// tiling (several N tiles, several K blocks, M beyond a GEMV).
std::vector<Case> cases(bool reference) {
  std::vector<Case> out;
  const int64_t ms[] = {1, 3, 17};
  const int64_t ns[] = {1, 7, 67};
  for (const char* w : kWeightSchemes) {
    const QuantScheme ws = QuantScheme::parse(w);
    const int64_t kb = ws.format == QuantFormat::gguf && ws.str().find("_K") != std::string::npos
                           ? 256
                           : (ws.granularity == Granularity::block2d ? 128 : 128);
    for (Dtype xd : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
      for (int64_t m : ms)
        for (int64_t n : ns) {
          const int64_t k = (reference && m * n > 100) ? kb : 2 * kb + (n == 7 ? kb : 0);
          out.push_back({m, n, k, xd, xd, w, "", false, n == 7, n == 67 ? 5 : 0, false});
        }
      if (!reference) {
        out.push_back({1, 300, 2048, xd, xd, w, "", false, false, 0, false});
        out.push_back({33, 130, 1024, xd, xd, w, "", false, true, 0, false});
        out.push_back({70, 64, 512, xd, Dtype::f32, w, "", false, false, 0, false});
      }
    }
    out.push_back({4, 9, kb, Dtype::f32, Dtype::f32, w, "", false, false, 0, true});
    out.push_back({0, 9, kb, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, false});
    out.push_back({3, 0, kb, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, false});
  }
  for (const W8A8Case& c : kW8A8) {
    for (bool given : {true, false})
      for (Dtype y : {Dtype::bf16, Dtype::f32}) {
        out.push_back({1, 7, 256, given ? Dtype::f32 : Dtype::bf16, y, c.w_scheme, c.x_scheme,
                       given, false, 0, false});
        out.push_back({17, 130, 512, given ? Dtype::f32 : Dtype::f32, y, c.w_scheme, c.x_scheme,
                       given, true, 3, false});
        if (!reference)
          out.push_back({150, 256, 1024, given ? Dtype::f32 : Dtype::bf16, y, c.w_scheme,
                         c.x_scheme, given, false, 0, false});
      }
  }
  return out;
}

TEST(Matmul, EveryKernelOnEveryDeviceMatchesTheF64Product) {
  for (Device device : testing::test_devices()) {
    for (const std::string& kernel : kernel_names()) {
      const bool reference = kernel == "matmul_reference";
      int ran = 0;
      uint64_t seed = 1;
      for (const Case& c : cases(reference)) {
        // The reference is checked on the CPU; a W8A8 case with NaN is meaningless (quantize
        // refuses).
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return;
      }
      std::printf("%-32s on %-7s ran %d cases\n", kernel.c_str(), device.str().c_str(), ran);
      if (reference && device.is_cpu()) EXPECT_GT(ran, 100);
    }
  }
}

/// matmul_cuda_medium_tc (the tensor-core GEMM for 32 < M <= 128) on the M its tiling finds
/// awkward: a block takes 64 rows of x and 128 rows of W (a warp 16 x 64), so M = 33, 47, 64,
/// 65, 100, 113, 127, 128 cover partial and full 64-row blocks; N = 200 (13 tiles, the
/// second block of W partial), y padded, bias; K = 512 runs one k-range, K = 2048 splits K
/// (partial sums in the workspace, added in order by a second kernel). Every scheme of the
/// layout, bf16 and f16 x. M = 129 is declined (select() then takes dequantize + cuBLASLt).
TEST(Matmul, MediumKernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_medium_tc";
  const int64_t ms[] = {33, 47, 64, 65, 100, 113, 127, 128};
  int ran = 0, i = 0;
  uint64_t seed = 1000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    for (const char* w : kWeightSchemes) {
      for (Dtype xd : {Dtype::bf16, Dtype::f16}) {
        for (int rep = 0; rep < 2; ++rep, ++i) {
          const int64_t m = ms[i % 8];
          const int64_t k = rep == 0 ? 512 : 2048;
          const Dtype yd = rep == 0 ? xd : Dtype::f32;
          const Case c{m, 200, k, xd, yd, w, "", false, rep == 1, rep == 0 ? 3 : 0, false};
          if (run_case(kernel, device, c, seed++)) ++ran;
          if (::testing::Test::HasFailure()) return;
        }
      }
      // NaN / Inf in x propagate (symmetric formats: an affine one adds b · sum(x), where
      // b = 0 · Inf is NaN although the weight is finite, as in the skinny kernel).
      const QuantScheme ws = QuantScheme::parse(w);
      if (ws.symmetric && ws.str().find("_K") == std::string::npos) {
        const Case c{70, 67, 512, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, true};
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return;
      }
    }
    // The kernel serves every scheme of the layout: all of them ran.
    EXPECT_GE(ran, 4 * 20);
    std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
    Case over{};  // a case the kernel takes but for its M
    over.m = 129, over.n = 200, over.k = 512, over.x = over.y = Dtype::bf16;
    over.w_scheme = "int4:block32";
    EXPECT_FALSE(run_case(kernel, device, over, seed++)) << "M = 129 is past the kernel's range";
  }
}

/// matmul_cuda_skinny_tc (M <= 32: a block per 16-row tile of W and 8 or 16 rows of x, its
/// warps taking the tile's 128-k segments in turn) on the shapes it finds awkward: K = 128
/// (one segment), 384 (three), 2048 with N = 300 (19 tiles, several warps per tile), K = 20736
/// with N = 7 (one tile, 162 segments for 16 warps: the last round has 2); M = 1 .. 32 across
/// the 8-row (M <= 8) and 16-row instantiations and two blocks of x (M > 16); x with rows 8
/// elements apart (8-byte aligned rows: read in place) and 1 or 3 apart (not: the plan copies
/// x into its workspace first); bias, padded y, f32 y, NaN / Inf. M = 33 is declined.
TEST(Matmul, SkinnyKernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_skinny_tc";
  int ran = 0;
  uint64_t seed = 3000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    for (const char* w : kWeightSchemes) {
      const QuantScheme ws = QuantScheme::parse(w);
      const bool kquant = ws.str().find("_K") != std::string::npos;
      for (Dtype xd : {Dtype::bf16, Dtype::f16}) {
        std::vector<Case> cs = {
            {1, 300, 2048, xd, xd, w, "", false, true, 3, false, 0},
            {8, 300, 2048, xd, xd, w, "", false, false, 0, false, 8},
            {5, 7, 20736, xd, xd, w, "", false, true, 0, false, 0},
            {13, 67, kquant ? 1024 : 384, xd, Dtype::f32, w, "", false, false, 0, false, 3},
            {32, 40, 1024, xd, xd, w, "", false, true, 1, false, 0},
        };
        if (!kquant) cs.push_back({21, 40, 128, xd, xd, w, "", false, false, 0, false, 8});
        for (const Case& c : cs) {
          if (run_case(kernel, device, c, seed++)) ++ran;
          if (::testing::Test::HasFailure()) return;
        }
      }
      if (ws.symmetric && !kquant) {
        const Case c{7, 67, 512, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, true, 0};
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return;
      }
    }
    // The kernel serves every scheme of the layout: all of them ran.
    EXPECT_GE(ran, 20 * 10);
    std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
    Case over{};  // a case the kernel takes but for its M
    over.m = 33, over.n = 200, over.k = 512, over.x = over.y = Dtype::bf16;
    over.w_scheme = "int4:block32";
    EXPECT_FALSE(run_case(kernel, device, over, seed++)) << "M = 33 is past the kernel's range";
  }
}

/// matmul_cuda_skinny_w8a8 (fp8 x and W on the skinny kernel, M <= 8): every pair of fp8
/// element formats, x per token and per tensor, W per channel and per tensor, x given quantized
/// and quantized by the plan (bf16 and f32 x), y bf16 / f16 (padded rows, bias); M = 1, 3, 5, 8
/// (one 8-row block, rows past M re-read); N = 7 (one tile), 67 and 300; K = 384 (three
/// segments), 2048, 20736 (162 segments). Declined: M = 9, f32 y, int8, block-scaled W.
TEST(Matmul, SkinnyW8A8OnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_skinny_w8a8";
  int ran = 0;
  uint64_t seed = 4000;
  const W8A8Case pairs[] = {{"fp8e4m3:token", "fp8e4m3:channel"},
                            {"fp8e4m3:tensor", "fp8e4m3:tensor"},
                            {"fp8e5m2:token", "fp8e4m3:channel"},
                            {"fp8e4m3:token", "fp8e5m2:channel"},
                            {"fp8e5m2:tensor", "fp8e5m2:tensor"}};
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    for (const W8A8Case& p : pairs) {
      std::vector<Case> cs;
      for (bool given : {true, false}) {
        const Dtype x = given ? Dtype::f32 : Dtype::bf16;
        cs.push_back({1, 300, 2048, x, Dtype::bf16, p.w_scheme, p.x_scheme, given, true, 3, false});
        cs.push_back({3, 67, 384, x, Dtype::f16, p.w_scheme, p.x_scheme, given, false, 0, false});
        cs.push_back({5, 7, 20736, x, Dtype::bf16, p.w_scheme, p.x_scheme, given, false, 0, false});
        cs.push_back({8, 67, 2048, given ? x : Dtype::f32, Dtype::bf16, p.w_scheme, p.x_scheme,
                      given, true, 5, false});
      }
      for (const Case& c : cs) {
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return;
      }
    }
    EXPECT_EQ(ran, 5 * 8) << "the kernel declined a case it serves";
    std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
    const Case declined[] = {
        {9, 67, 384, Dtype::f32, Dtype::bf16, "fp8e4m3:channel", "fp8e4m3:token", true},
        {4, 67, 384, Dtype::f32, Dtype::f32, "fp8e4m3:channel", "fp8e4m3:token", true},
        {4, 67, 384, Dtype::f32, Dtype::bf16, "int8:channel", "int8:token", true},
        {4, 67, 384, Dtype::f32, Dtype::bf16, "fp8e4m3:block128", "fp8e4m3:token", true},
    };
    for (const Case& c : declined)
      EXPECT_FALSE(run_case(kernel, device, c, seed++)) << case_name(c);
    // Unforced, it leaves to cuBLASLt what cuBLASLt does faster: per-tensor fp8, and few
    // rows over few tiles (M = 16, N = 1000: 16 tiles).
    const Case to_lt[] = {
        {300, 520, 256, Dtype::f32, Dtype::bf16, "fp8e4m3:tensor", "fp8e4m3:tensor", true},
        {16, 1000, 256, Dtype::f32, Dtype::bf16, "int8:channel", "int8:token", true},
    };
    for (const Case& c : to_lt) EXPECT_FALSE(run_case(kernel, device, c, seed++)) << case_name(c);
  }
}

/// matmul_cuda_w8a8_wgmma (lowbit's own W8A8 GEMM on sm_90a): int8 and every pair of fp8
/// element formats, x per token and per tensor, W per channel and per tensor, x given quantized
/// and quantized by the plan, bf16 / f16 / f32 (int8) y, bias, a padded y whose rows are an odd
/// number of elements apart (the single-element stores); each tile width (64 / 128 / 256 rows
/// of W, forced) on M = 9 (one partial tile of x), 130 and 257 (partial second and third
/// tiles), N = 67 and 300 (partial tiles of W), K = 48 (one partial stage), 384 and 1040 (the
/// last stage partial), and M = 200, N = 264 with y's rows 16-byte aligned (the staged 16-byte
/// stores beside the element-wise ones); the plan's own width on a larger case. int8 results are
/// demanded bit for bit from matmul_cuda_w8a8_lt (exact i32 sums, the same epilogue). Declined: M =
/// 8, K not a multiple of 16, fp8 with f32 y, block-scaled fp8, asymmetric int8.
TEST(Matmul, WgmmaW8A8OnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_w8a8_wgmma";
  const W8A8Case pairs[] = {
      {"int8:token", "int8:channel"},       {"int8:tensor", "int8:tensor"},
      {"fp8e4m3:token", "fp8e4m3:channel"}, {"fp8e4m3:tensor", "fp8e4m3:tensor"},
      {"fp8e5m2:token", "fp8e4m3:channel"}, {"fp8e4m3:token", "fp8e5m2:channel"},
      {"fp8e5m2:tensor", "fp8e5m2:channel"}};
  uint64_t seed = 4500;
  struct WidthReset {
    ~WidthReset() { w8a8_wgmma::g_width.store(0); }
  } reset;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    int ran = 0, expected = 0;
    for (int width : {64, 128, 256, 0}) {
      w8a8_wgmma::g_width.store(width);
      for (const W8A8Case& p : pairs) {
        // Unforced, per-tensor fp8 is cuBLASLt's (checked below).
        if (width == 0 && std::string(p.x_scheme) == "fp8e4m3:tensor") continue;
        const bool int8 = std::string(p.x_scheme).rfind("int8", 0) == 0;
        std::vector<Case> cs;
        if (width != 0) {
          cs.push_back({9, 67, 48, Dtype::bf16, Dtype::bf16, p.w_scheme, p.x_scheme, false, true});
          cs.push_back(
              {130, 300, 384, Dtype::f32, Dtype::f16, p.w_scheme, p.x_scheme, true, true, 3});
          cs.push_back({257, 67, 1040, Dtype::bf16, int8 ? Dtype::f32 : Dtype::bf16, p.w_scheme,
                        p.x_scheme, false, false, 1});
          // y's rows 16-byte aligned: whole 16 x 64 pieces leave through the staging rows, the
          // rest (rows past 192, columns past 256) element by element.
          cs.push_back(
              {200, 264, 512, Dtype::bf16, Dtype::bf16, p.w_scheme, p.x_scheme, false, false, 8});
        } else {
          cs.push_back(
              {300, 520, 2048, Dtype::f32, Dtype::bf16, p.w_scheme, p.x_scheme, true, true});
        }
        for (const Case& c : cs) {
          ++expected;
          std::vector<uint8_t> mine, lt;
          if (run_case(kernel, device, c, seed, &mine)) ++ran;
          if (::testing::Test::HasFailure()) return;
          if (ran == 0) {
            std::printf("%s declined on %s (not an sm_90a device or build): nothing ran\n", kernel,
                        device.str().c_str());
            return;
          }
          if (int8 && run_case("matmul_cuda_w8a8_lt", device, c, seed, &lt))
            EXPECT_TRUE(mine == lt)
                << "int8 bits differ from matmul_cuda_w8a8_lt: " << case_name(c);
          ++seed;
        }
      }
    }
    EXPECT_EQ(ran, expected) << "the kernel declined a case it serves";
    std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
    const Case declined[] = {
        {8, 67, 384, Dtype::f32, Dtype::bf16, "fp8e4m3:channel", "fp8e4m3:token", true},
        {64, 67, 40, Dtype::f32, Dtype::bf16, "int8:channel", "int8:token", true},
        {64, 67, 384, Dtype::f32, Dtype::f32, "fp8e4m3:channel", "fp8e4m3:token", true},
        {64, 67, 384, Dtype::f32, Dtype::bf16, "fp8e4m3:block128x128", "fp8e4m3:block128", true},
        {64, 67, 384, Dtype::f32, Dtype::bf16, "int8:channel", "int8:token:asym", true},
    };
    for (const Case& c : declined)
      EXPECT_FALSE(run_case(kernel, device, c, seed++)) << case_name(c);
  }
}

/// The shapes both wgmma kernels' tests sweep, for every scheme of kWeightSchemes and bf16 /
/// f16 x (y in x's dtype): three cases per pair, M from `ms` in turn (N = 200: K = 512 with a
/// padded y, K = 2048 with a bias) and from `long_ms` in turn (N = 520, K = 8192); K = 128 and
/// 384 (one and three segments: the loop's last segment without a next one) at M = `short_m`,
/// N = 40, but for the K-quants (blocks of 256, declined anyway); NaN / Inf in x at M =
/// `special_m` for the symmetric schemes. Returns how many cases ran (the rest declined).
struct WgmmaSweep {
  std::vector<int64_t> ms, long_ms;
  int64_t short_m, special_m;
};

int run_wgmma_sweep(const char* kernel, Device device, const WgmmaSweep& sw, uint64_t& seed) {
  int ran = 0, i = 0;
  for (const char* w : kWeightSchemes) {
    for (Dtype xd : {Dtype::bf16, Dtype::f16}) {
      for (int rep = 0; rep < 3; ++rep, ++i) {
        const int64_t m = rep == 2 ? sw.long_ms[static_cast<size_t>(i) % sw.long_ms.size()]
                                   : sw.ms[static_cast<size_t>(i) % sw.ms.size()];
        const int64_t n = rep == 2 ? 520 : 200;
        const int64_t k = rep == 0 ? 512 : rep == 1 ? 2048 : 8192;
        const Case c{m, n, k, xd, xd, w, "", false, rep == 1, rep == 0 ? 3 : 0, false};
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return ran;
      }
    }
    const QuantScheme ws = QuantScheme::parse(w);
    if (ws.str().find("_K") == std::string::npos) {
      for (int64_t k : {128, 384}) {
        const Case c{sw.short_m, 40, k, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, false};
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return ran;
      }
      if (ws.symmetric) {
        const Case c{sw.special_m, 67, 512, Dtype::bf16, Dtype::bf16, w, "", false, false, 0, true};
        if (run_case(kernel, device, c, seed++)) ++ran;
        if (::testing::Test::HasFailure()) return ran;
      }
    }
  }
  return ran;
}

/// What every wgmma kernel's test does first on a device: the sweep (at least 8 schemes x 2
/// dtypes x 3 cases ran), then the cases it declines: an f32 y (its 1e-5 bound asks for the
/// f32 GEMM) at M = `in_range`, and M = `below` and `past`, one outside each end of its range.
/// False where the rest of the test should not run: nothing ran (not an sm_90a device or
/// build: said on stdout) or a case failed.
bool run_wgmma_sweep_and_range(const char* kernel, Device device, const WgmmaSweep& sw,
                               int64_t in_range, int64_t below, int64_t past, uint64_t& seed) {
  const int ran = run_wgmma_sweep(kernel, device, sw, seed);
  if (::testing::Test::HasFailure()) return false;
  if (ran == 0) {
    std::printf("%s declined on %s (not an sm_90a device or build): nothing ran\n", kernel,
                device.str().c_str());
    return false;
  }
  // int4 (block32/64/128, asym, channel), nvfp4, mxfp4, q4_0: 8 schemes x 2 dtypes x 3.
  EXPECT_GE(ran, 8 * 6);
  std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
  Case f32y{};  // y in f32: declined
  f32y.m = in_range, f32y.n = 200, f32y.k = 512, f32y.x = Dtype::bf16, f32y.y = Dtype::f32;
  f32y.w_scheme = "int4:block32";
  EXPECT_FALSE(run_case(kernel, device, f32y, seed++)) << "an f32 y is declined";
  Case out = f32y;
  out.y = Dtype::bf16;
  for (int64_t m : {below, past}) {
    out.m = m;
    EXPECT_FALSE(run_case(kernel, device, out, seed++))
        << "M = " << m << " is outside the kernel's range";
  }
  return !::testing::Test::HasFailure();
}

/// matmul_cuda_wgmma_tc (wgmma with W decoded in registers; sm_90a) on the shapes its tiling
/// finds awkward: a block takes 128 rows of x and 128 rows of W (a warpgroup 64 x 128), so
/// M = 65, 77, 127, 128, 129, 200, 255, 256 cover partial and full blocks; N = 200 (13 tiles,
/// the second block of W partial), y padded, bias; K = 512 (4 segments: fewer than the
/// pipeline's stages, one k-range), K = 2048 (split into k-ranges, partial sums added in
/// order by a second kernel), K = 8192 with M = 250, N = 520 (ranges of 7-8 segments: the stage
/// ring wraps, odd counts end the two-segment loop early), K = 128 and 384 (one and three
/// segments). Every scheme it serves, bf16 and
/// f16 x; y in x's dtype (an f32 y is declined: the tolerance there is f32's), M = 64 and
/// M = 257 declined (select() then takes the medium kernel / dequantize + cuBLASLt).
TEST(Matmul, WgmmaKernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_wgmma_tc";
  const WgmmaSweep sweep{{65, 77, 127, 128, 129, 200, 255, 256}, {250}, 100, 130};
  uint64_t seed = 2000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    if (!run_wgmma_sweep_and_range(kernel, device, sweep, 200, 64, 257, seed)) {
      if (::testing::Test::HasFailure()) return;
      continue;
    }
    // One wave of 128 x 128 blocks at most: M = 200 (two blocks of x) takes N up to
    // 128 * (SMs / 2) and declines one more block of W, naming the waves.
    const int sms = cuda_device_properties(device.index).multiprocessors;
    MatmulDesc d;
    d.m = 200, d.k = 512, d.x = d.y = Dtype::bf16, d.device = device;
    d.w = QuantScheme::parse("int4:block32");
    Preference pref;
    pref.kernel = kernel;
    d.n = 128 * (sms / 2);
    EXPECT_EQ(MatmulPlan::select(d, pref).sku().kernel, kernel) << "one wave: " << d.n;
    d.n += 128;
    testing::expect_error([&] { (void)MatmulPlan::select(d, pref); }, ErrorCode::unsupported,
                          "one wave");
  }
}

/// Cases whose grid is short of a wave, so the warp-specialized kernel splits K: N = 5120 at
/// K = 2304 (18 segments) is 40 blocks of W (two ranges of 9 segments in a cluster, added
/// through distributed shared memory) or 80 with two blocks of x (two ranges through the
/// workspace: more clusters than the device runs at once); N = 2048 is 16 blocks (four
/// ranges of 4 and 5 segments through the workspace).
int run_ws_split_cases(const char* kernel, Device device, const std::vector<Case>& cases,
                       uint64_t& seed) {
  int ran = 0;
  for (const Case& c : cases) {
    if (run_case(kernel, device, c, seed++)) ++ran;
    if (::testing::Test::HasFailure()) break;
  }
  return ran;
}

/// matmul_cuda_wgmma_ws_tc (the warp-specialized wgmma kernel; sm_90a): a block takes 256
/// rows of x and 128 rows of W, a stage one 128-k segment, three stages: M = 129, 200, 255,
/// 256, 257, 300, 511, 600 cover partial and full blocks of x (one to three), N = 200 and 520
/// a partial block of W (13 and 33 tiles: tiles past the last re-read the last), K = 512 (4
/// segments: the stage ring wraps once), 2048 (split into k-ranges where the grid is short of
/// a wave), 8192 (ranges of odd lengths), 128 and 384 (one and three segments), y padded,
/// bias, and M = 1024 (its largest for int4 on any grid; to 2048 where its blocks fill their
/// waves to >= 90%; nvfp4 at 2048, mxfp4 at 2049 declined). Every
/// scheme it serves, bf16 and f16 x; M = 128, M = 1025 (int4) and an f32 y declined. Both blocks of
/// a cluster share x's tile (multicast): N = 200 (two blocks of W: one cluster) and 520 (five: a
/// third cluster with a block past the last tile).
TEST(Matmul, WgmmaWsKernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_wgmma_ws_tc";
  const WgmmaSweep sweep{{129, 200, 255, 256, 257, 300, 511, 600}, {250, 347, 444}, 300, 260};
  uint64_t seed = 3000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    // int4 (the scheme of the range cases) ends at 1024.
    if (!run_wgmma_sweep_and_range(kernel, device, sweep, 300, 128, 1025, seed)) {
      if (::testing::Test::HasFailure()) return;
      continue;
    }
    // A 1024-row x: four blocks of x, the largest grid the kernel takes for int4; e2m1 formats
    // go to 2048 (eight blocks of x).
    const Case top{1024, 136,   1024, Dtype::bf16, Dtype::bf16, "int4:block32",
                   "",   false, true, 0,           false};
    EXPECT_TRUE(run_case(kernel, device, top, seed++));
    // Past 1024 (to 2048) int4 runs only where its blocks fill their waves to >= 90%: 8
    // blocks of x times 16 * (SMs / 16) blocks of W (128 of 132 SMs); N = 200 fills 16.
    const int sms = cuda_device_properties(device.index).multiprocessors;
    Case waves{
        2048, 256 * (sms / 16), 256, Dtype::bf16, Dtype::bf16, "int4:block128", "", false, false, 0,
        false};
    EXPECT_TRUE(run_case(kernel, device, waves, seed++)) << "a full wave at M = 2048";
    waves.n = 200;
    EXPECT_FALSE(run_case(kernel, device, waves, seed++)) << "16 blocks at M = 2048";
    Case e2m1{2048, 136, 256, Dtype::bf16, Dtype::bf16, "nvfp4", "", false, true, 0, false};
    EXPECT_TRUE(run_case(kernel, device, e2m1, seed++)) << "nvfp4 runs to M = 2048";
    e2m1.m = 2049, e2m1.w_scheme = "mxfp4";
    EXPECT_FALSE(run_case(kernel, device, e2m1, seed++)) << "M = 2049 is past the kernel's range";
    // 40 and 80 blocks: two k-ranges.
    const std::vector<Case> split{
        {200, 5120, 2304, Dtype::bf16, Dtype::bf16, "int4:block32", "", false, true, 0, false},
        {300, 5120, 2304, Dtype::f16, Dtype::f16, "nvfp4", "", false, false, 3, false}};
    EXPECT_EQ(run_ws_split_cases(kernel, device, split, seed), 2);
  }
}

/// matmul_cuda_wgmma_ws64_tc (the warp-specialized kernel with 64 rows of x per block,
/// wgmma.m64n64k16; sm_90a) on the same sweep at M = 33-128 (one and two blocks of x, partial
/// and full), N = 200 and 520 (one and three pairs of W blocks, one past the last tile), K =
/// 512-8192 (the small grids split K into 4-16 ranges through the workspace); two ranges in a
/// cluster (N = 5120, M = 64), two and four through the workspace, of unequal lengths (N = 5120
/// at M = 100, N = 2048); M = 32, 129 and an f32 y declined.
TEST(Matmul, WgmmaWs64KernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_wgmma_ws64_tc";
  const WgmmaSweep sweep{{33, 40, 63, 64, 65, 100, 127, 128}, {50, 97, 120}, 64, 70};
  uint64_t seed = 5000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    if (!run_wgmma_sweep_and_range(kernel, device, sweep, 64, 32, 129, seed)) {
      if (::testing::Test::HasFailure()) return;
      continue;
    }
    // 40 and 80 blocks: two k-ranges of 9 segments; 16 blocks: four of 4 and 5.
    const std::vector<Case> split{
        {64, 5120, 2304, Dtype::bf16, Dtype::bf16, "int4:block32:asym", "", false, true, 0, false},
        {100, 5120, 2304, Dtype::bf16, Dtype::bf16, "q4_0", "", false, false, 0, false},
        {64, 2048, 2304, Dtype::f16, Dtype::f16, "mxfp4", "", false, true, 5, false}};
    EXPECT_EQ(run_ws_split_cases(kernel, device, split, seed), 3);
  }
}

/// matmul_cuda_wgmma_ws128_tc (the warp-specialized kernel with 128 rows of x per block,
/// wgmma.m64n128k16; sm_90a) for 8-bit codes: with one scale per row (int8:channel, fp8e4m3 /
/// e5m2:channel, fp8e4m3:tensor, and int8:block128 / fp8e4m3:block128x128 at K = 128) the
/// codes are exact operands and the row's scale comes at the end; in groups along K (int8 /
/// uint8 blocks, sym and asym, q8_0, fp8 blocks of 128 and 128x128 tiles) each operand is
/// dequantize()'s value rounded to x's dtype. The sweep: M = 33-1000 (one to eight blocks of
/// x, partial and full; M = 33, 48, 129, 300: the last block's second half of x wholly past M,
/// re-read from the first half), N = 200 and 520 (one and three pairs of W blocks, one past the
/// last tile), K = 512-8192 (short grids split K), y padded, bias, NaN / Inf in x; one-hot x for
/// every decode bit for bit. Two ranges in a cluster (M = 100, N = 5120: 40 blocks), four as
/// two chained pairs (N = 2048: 16 blocks), ranges through the workspace (M = 200, N = 5120:
/// 80 blocks), M = 1024 (512 for codes in groups). Declined: 4-bit codes, q6_K, fp8 blocks
/// shorter than 128, an f32 y, M = 32 and 1025 (513 for codes in groups).
TEST(Matmul, WgmmaWs128KernelOnAwkwardShapes) {
  const char* const kernel = "matmul_cuda_wgmma_ws128_tc";
  const WgmmaSweep sweep{{33, 48, 65, 100, 128, 129, 200, 300}, {250, 500, 1000}, 130, 200};
  uint64_t seed = 5500;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    const int ran = run_wgmma_sweep(kernel, device, sweep, seed);
    if (::testing::Test::HasFailure()) return;
    if (ran == 0) {
      std::printf("%s declined on %s (not an sm_90a device or build): nothing ran\n", kernel,
                  device.str().c_str());
      continue;
    }
    // The 8-bit schemes of the list (int8:block32, its asym form, int8:block128, int8:channel,
    // fp8e4m3 / e5m2:channel, fp8e4m3:tensor, fp8e4m3:block128x128, q8_0): 9 x 2 dtypes x the
    // two cases at M <= 300, K = 128 and 384 for each; the third case's M (250, 500 or 1000)
    // is past the range of codes in groups when it is 1000.
    EXPECT_GE(ran, 9 * 4 + 9 * 2);
    std::printf("%s on %s ran %d cases\n", kernel, device.str().c_str(), ran);
    // Each code's decode, bit for bit: one-hot rows of x make y the dequantized weight rounded
    // to y's dtype (row scales: the code times its scale in f32, then rounded; groups:
    // dequantize()'s value rounded to x's dtype; both that value's rounding).
    int exact = 0;
    for (const char* w :
         {"int8:channel", "int8:tensor", "int8:block32", "int8:block64:asym", "uint8:block128",
          "int8:block256:asym", "q8_0", "fp8e4m3:channel", "fp8e5m2:channel",
          "fp8e4m3:block128x128", "fp8e5m2:block128", "fp8e4m3:tensor"}) {
      for (Dtype xd : {Dtype::bf16, Dtype::f16}) {
        Case oh{200, 72, 1024, xd, xd, w, "", false, false, 0, false};
        oh.one_hot = true;
        if (run_case(kernel, device, oh, seed++)) ++exact;
        if (::testing::Test::HasFailure()) return;
      }
    }
    EXPECT_EQ(exact, 24);
    Case c{200, 200, 512, Dtype::bf16, Dtype::bf16, "int8:channel", "", false, false, 0, false};
    for (const char* w : {"int4:block32", "q6_K", "fp8e4m3:block32"}) {
      c.w_scheme = w;
      EXPECT_FALSE(run_case(kernel, device, c, seed++)) << w << " is declined";
    }
    c.w_scheme = "int8:channel";
    c.y = Dtype::f32;
    EXPECT_FALSE(run_case(kernel, device, c, seed++)) << "an f32 y is declined";
    c.y = Dtype::bf16;
    for (int64_t m : {32, 1025}) {
      c.m = m;
      EXPECT_FALSE(run_case(kernel, device, c, seed++)) << "M = " << m << " is outside the range";
    }
    // Codes in groups end at 512 (row scales at 1024).
    Case g{512, 200, 512, Dtype::bf16, Dtype::bf16, "q8_0", "", false, false, 0, false};
    EXPECT_TRUE(run_case(kernel, device, g, seed++)) << "q8_0 at M = 512";
    g.m = 513;
    EXPECT_FALSE(run_case(kernel, device, g, seed++)) << "q8_0 at M = 513";
    const std::vector<Case> split{
        {100, 5120, 2304, Dtype::bf16, Dtype::bf16, "int8:channel", "", false, true, 0, false},
        {100, 2048, 2304, Dtype::f16, Dtype::f16, "fp8e4m3:channel", "", false, false, 0, true},
        {200, 5120, 2304, Dtype::bf16, Dtype::bf16, "fp8e5m2:tensor", "", false, false, 3, false},
        {1024, 200, 384, Dtype::f16, Dtype::f16, "int8:tensor", "", false, true, 0, false}};
    EXPECT_EQ(run_ws_split_cases(kernel, device, split, seed), 4);
  }
}

/// Both warp-specialized kernels write y through the copy engine where one k-range makes it
/// and its rows are 16 bytes apart (multiples of), else row by row from an f32 tile: the same
/// case with y's rows n and n + 1 elements apart gives the same bits either way. Blocks of x
/// and of W partial (M = 300 / 100, N = 200: the second block's second 64-row box partial;
/// N = 40: the first box partial, no second; NaN / Inf in x), bias or not, bf16 / f16, integer,
/// e2m1 and
/// flush-mode formats; K = 512 and 384 (one k-range); and N = 10000 (158 blocks: a second
/// wave, a block past N).
TEST(Matmul, WgmmaWsCopyEngineStoresMatchTheRowLoop) {
  struct Ws {
    const char* kernel;
    int64_t m;
  };
  const Case cases[] = {
      {0, 200, 512, Dtype::bf16, Dtype::bf16, "int4:block32", "", false, true, 0, false},
      {0, 200, 512, Dtype::f16, Dtype::f16, "nvfp4", "", false, false, 0, false},
      {0, 40, 384, Dtype::bf16, Dtype::bf16, "mxfp4", "", false, true, 0, true},
      {0, 520, 384, Dtype::f16, Dtype::f16, "int4:block128:asym", "", false, true, 0, false},
      // 2 x 79 blocks (the last W pair's second block past N): more than one wave.
      {0, 10000, 256, Dtype::bf16, Dtype::bf16, "nvfp4", "", false, true, 0, false},
      // 8-bit codes: the 128-row tiling only.
      {0, 200, 512, Dtype::bf16, Dtype::bf16, "int8:channel", "", false, true, 0, false},
      {0, 40, 384, Dtype::f16, Dtype::f16, "fp8e4m3:channel", "", false, false, 0, true},
  };
  uint64_t seed = 7000;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    int ran = 0;
    for (const Ws ws : {Ws{"matmul_cuda_wgmma_ws_tc", 300}, Ws{"matmul_cuda_wgmma_ws64_tc", 100},
                        Ws{"matmul_cuda_wgmma_ws128_tc", 300}}) {
      for (Case c : cases) {
        c.m = ws.m;
        std::vector<uint8_t> tma, rows;
        const uint64_t s = seed++;
        if (!run_case(ws.kernel, device, c, s, &tma)) continue;
        c.y_pad = 1;  // rows n + 1 elements apart: the row loop
        ASSERT_TRUE(run_case(ws.kernel, device, c, s, &rows));
        if (::testing::Test::HasFailure()) return;
        EXPECT_TRUE(tma == rows) << ws.kernel << ": " << case_name(c);
        ++ran;
      }
    }
    if (ran == 0) {
      std::printf("the ws kernels declined on %s (not an sm_90a device or build): nothing ran\n",
                  device.str().c_str());
      continue;
    }
    EXPECT_EQ(ran, 5 * 2 + 2);  // 4-bit cases on ws and ws64, 8-bit ones on ws128
  }
}

/// The warp-specialized kernels' operands are the one-wave kernel's exactly (dequantize()'s
/// value in x's dtype: matmul_cuda_wgmma_ws.cuh), and so, with one k-range and the same k
/// order, are their sums: the same bits from matmul_cuda_wgmma_tc and ws_tc (M = 200) or
/// ws64_tc (M = 100), for the 4-bit integer codes (sym / asym, groups of 32 to 128, q4_0's f16
/// scales; the ws kernels decode them without shifts, wgmma::NibbleDecoder) and the e2m1
/// formats. ws64's flush mode (int4 / uint4 in groups of 64 or more, q4_0) sums otherwise and
/// is left out there.
TEST(Matmul, WgmmaWsKernelsGiveTheOneWaveKernelsBits) {
  struct Pair {
    const char* kernel;
    int64_t m;
    bool flush_mode;  ///< int4 groups of 64 or more and q4_0 sum otherwise here
  };
  const Case cases[] = {
      {0, 200, 512, Dtype::bf16, Dtype::bf16, "int4:block32", "", false, true, 0, true},
      {0, 250, 384, Dtype::f16, Dtype::f16, "int4:block32:asym", "", false, false, 0, false},
      {0, 200, 512, Dtype::bf16, Dtype::bf16, "q4_0", "", false, true, 0, false},
      {0, 136, 512, Dtype::f16, Dtype::f16, "q4_0", "", false, false, 0, true},
      {0, 200, 512, Dtype::bf16, Dtype::bf16, "int4:block64", "", false, false, 0, false},
      {0, 130, 384, Dtype::bf16, Dtype::bf16, "int4:block128:asym", "", false, true, 0, false},
      {0, 200, 512, Dtype::f16, Dtype::f16, "nvfp4", "", false, true, 0, false},
      {0, 200, 384, Dtype::bf16, Dtype::bf16, "mxfp4", "", false, false, 0, true},
  };
  uint64_t seed = 7500;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    int ran = 0;
    for (const Pair ws : {Pair{"matmul_cuda_wgmma_ws_tc", 200, false},
                          Pair{"matmul_cuda_wgmma_ws64_tc", 100, true}}) {
      for (Case c : cases) {
        const bool flush = c.w_scheme.find("block64") != std::string::npos ||
                           c.w_scheme.find("block128") != std::string::npos || c.w_scheme == "q4_0";
        if (ws.flush_mode && flush) continue;
        c.m = ws.m;
        std::vector<uint8_t> one_wave, warp_specialized;
        const uint64_t s = seed++;
        if (!run_case("matmul_cuda_wgmma_tc", device, c, s, &one_wave)) continue;
        ASSERT_TRUE(run_case(ws.kernel, device, c, s, &warp_specialized)) << case_name(c);
        if (::testing::Test::HasFailure()) return;
        EXPECT_TRUE(one_wave == warp_specialized) << ws.kernel << ": " << case_name(c);
        ++ran;
      }
    }
    if (ran == 0) {
      std::printf("the wgmma kernels declined on %s (not an sm_90a device or build): nothing ran\n",
                  device.str().c_str());
      continue;
    }
    EXPECT_EQ(ran, 8 + 4);
  }
}

TEST(Matmul, PlanStatesItsKernelAndPrecision) {
  MatmulDesc d;
  d.m = 1;
  d.n = 8;
  d.k = 64;
  d.x = Dtype::bf16;
  d.w = QuantScheme::parse("int4:block32");
  d.y = Dtype::bf16;
  Preference pref;
  pref.kernel = "matmul_reference";
  const MatmulPlan plan = MatmulPlan::select(d, pref);
  EXPECT_EQ(plan.sku().op, "matmul");
  EXPECT_EQ(plan.precision().accumulator, Dtype::f64);
  EXPECT_TRUE(plan.precision().deterministic);
  EXPECT_EQ(weight_layout(plan), "plain");
}

TEST(Matmul, BadArgumentsGiveClearErrors) {
  std::mt19937_64 rng(7);
  const Tensor w = random_values({8, 64}, Dtype::f32, rng);
  const QuantizedTensor q = quantize(w, QuantScheme::parse("int4:block32"));
  const Tensor x = random_values({2, 64}, Dtype::bf16, rng);
  const Tensor x_bad_k = random_values({2, 96}, Dtype::bf16, rng);
  const Tensor x_i32 = Tensor::empty({2, 64}, Dtype::i32);
  // K not matching the weight.
  testing::expect_error([&] { (void)matmul(x_bad_k, q.view()); }, ErrorCode::invalid_argument, "k");
  // K not a multiple of the block.
  MatmulDesc d;
  d.m = 1;
  d.n = 8;
  d.k = 4097;
  d.w = QuantScheme::parse("int4:block32");
  testing::expect_error([&] { (void)MatmulPlan::select(d); }, ErrorCode::invalid_argument, "32");
  d.k = 64;
  d.x = Dtype::i32;
  testing::expect_error([&] { (void)MatmulPlan::select(d); }, ErrorCode::invalid_argument,
                        "x dtype i32");
  // Wrong y shape.
  Tensor y = Tensor::empty({2, 9}, Dtype::bf16);
  testing::expect_error([&] { matmul_into(y, x, q.view()); }, ErrorCode::invalid_argument,
                        "y has shape [2, 9]");
  // Bias of the wrong length.
  Tensor bias = Tensor::empty({7}, Dtype::bf16);
  testing::expect_error([&] { (void)matmul(x, q.view(), &bias.view()); },
                        ErrorCode::invalid_argument, "bias");
  // A 3-d x works (leading dims are rows); the result has x's leading shape.
  const Tensor x3 = random_values({2, 3, 64}, Dtype::f32, rng);
  const Tensor y3 = matmul(x3, q.view());
  EXPECT_EQ(y3.shape(), (Shape{2, 3, 8}));
}

/// The kernels of the prepared tc layout refuse a call without prepare_weight()'s bytes, or
/// with a buffer of another size (they read the layout's parts at their offsets), naming what
/// they need.
TEST(Matmul, PreparedLayoutKernelsRefuseAMissingOrShortPreparedWeight) {
  struct Use {
    const char* kernel;
    int64_t m;
  };
  const Use uses[] = {{"matmul_cuda_skinny_tc", 4},
                      {"matmul_cuda_medium_tc", 40},
                      {"matmul_cuda_wgmma_tc", 100},
                      {"matmul_cuda_dequant_tc_lt", 300}};
  int checked = 0;
  for (Device device : testing::test_devices()) {
    if (!device.is_cuda()) continue;
    std::mt19937_64 rng(17);
    const QuantizedTensor wq = quantized_to_device(
        quantize(random_values({64, 256}, Dtype::f32, rng), QuantScheme::parse("int4:block32")),
        device);
    for (const Use& u : uses) {
      MatmulDesc d;
      d.m = u.m, d.n = 64, d.k = 256, d.x = d.y = Dtype::bf16, d.device = device;
      d.w = wq.scheme;
      Preference pref;
      pref.kernel = u.kernel;
      std::optional<MatmulPlan> plan;
      try {
        plan = MatmulPlan::select(d, pref);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::unsupported) continue;  // e.g. no sm_90a for wgmma
        throw;
      }
      SCOPED_TRACE(u.kernel);
      const Tensor x = testing::to_device(random_values({d.m, d.k}, Dtype::bf16, rng), device);
      const Tensor y = Tensor::empty({d.m, d.n}, Dtype::bf16, device);
      Buffer scratch(static_cast<int64_t>(std::max<size_t>(plan->workspace_size(), 1)), device);
      const Workspace ws{scratch.data(), plan->workspace_size()};
      const Stream stream = Stream::default_for(device);
      MatmulArgs args{x.view(), {}, wq.view(), {}, {}, y.view()};
      testing::expect_error([&] { plan->run(stream, ws, args); }, ErrorCode::invalid_argument,
                            "prepare_weight()'s");
      const Tensor short_packed = Tensor::empty({prepared_bytes(*plan) - 256}, Dtype::u8, device);
      args.w_packed = short_packed;
      testing::expect_error([&] { plan->run(stream, ws, args); }, ErrorCode::invalid_argument,
                            "prepare_weight()'s");
      ++checked;
    }
    EXPECT_GE(checked, 3) << "skinny, medium and dequantize + GEMM run on every CUDA device";
  }
}

TEST(Matmul, QuantizedLinearCachesPlansAndAgreesWithTheOneLiner) {
  std::mt19937_64 rng(11);
  const Tensor w = random_values({40, 256}, Dtype::f32, rng);
  QuantizedLinear layer(quantize(w, QuantScheme::parse("q4_0")));
  for (int64_t m : {1, 5, 33}) {
    const Tensor x = random_values({m, 256}, Dtype::bf16, rng);
    const Tensor a = layer(x);
    const Tensor b = matmul(x, layer.weight().view());
    EXPECT_EQ(testing::compare_bytes(a, b), "") << "m=" << m;
  }
}

}  // namespace
}  // namespace lowbit
