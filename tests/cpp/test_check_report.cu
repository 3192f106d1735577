// CheckReport (check_report.hpp): checked quantize and fused-epilogue calls that record a
// refused input instead of waiting for their kernels. On the GPU every path of quantize_cuda
// (rows, tensor statistics, blocks, nvfp4's two passes, the generic path of unaligned views),
// gguf_quantize_cuda and the fusion JIT's quantize epilogue: the first refusal in stream
// order is the one reported, with its call number and index; the words are clean afterwards
// (a later call's outputs are the reference's bits); a refusal is found whatever the call
// order; a call captured into a CUDA graph reports on every replay. On the CPU a report
// changes nothing: the kernels throw at once.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "lowbit/check_report.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

const Device gpu = Device::cuda(0);

/// Finite values of a chosen dtype on the host, with `bad` elements set to NaN.
Tensor host_values(const Shape& shape, Dtype dtype, const std::vector<int64_t>& bad,
                   uint64_t salt) {
  auto rng = testing::make_rng(salt);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Tensor f32 = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < f32.numel(); ++i) f32.data_as<float>()[i] = normal(rng);
  for (int64_t i : bad) f32.data_as<float>()[i] = NAN;
  if (dtype == Dtype::f32) return f32;
  Tensor out = Tensor::empty(shape, dtype);
  convert(out, f32);
  return out;
}

/// A device copy of `host`, `offset` elements into its allocation (1: the generic path).
struct DeviceSource {
  Tensor storage;
  TensorView view;
  DeviceSource(const Tensor& host, int64_t offset) {
    const int64_t esize = bit_width(host.dtype()) / 8;
    storage = Tensor::empty({host.nbytes() + 16}, Dtype::u8, gpu);
    view = TensorView(static_cast<uint8_t*>(storage.data()) + offset * esize, host.dtype(),
                      host.shape(), gpu);
    copy(view, host);
  }
};

QuantizePlan plan_for(const QuantizedView& q, const TensorView& x, bool given = false) {
  return QuantizePlan::select(QuantizeDesc::for_views(q, x, given));
}

/// The reference's parts for `host` (finite) quantized with `scheme`.
QuantizedTensor reference(const QuantScheme& scheme, const Tensor& host) {
  QuantizedTensor q = QuantizedTensor::allocate(scheme, host.shape(), Device::cpu());
  Preference p;
  p.kernel = "quantize_reference";
  QuantizePlan::select(QuantizeDesc::for_views(q.view(), host.view()), p)
      .run(Stream(), {}, {host.view(), q.view()});
  return q;
}

std::string compare_parts(const QuantizedView& want, const QuantizedView& got) {
  const TensorView* w[] = {&want.codes, &want.scale, &want.zero, &want.global_scale};
  const TensorView* g[] = {&got.codes, &got.scale, &got.zero, &got.global_scale};
  const char* names[] = {"codes", "scale", "zero", "global scale"};
  for (int i = 0; i < 4; ++i) {
    if (!w[i]->data()) continue;
    if (std::string d = testing::compare_bytes(*w[i], testing::to_host(*g[i])); !d.empty())
      return std::string(names[i]) + ": " + d;
  }
  return {};
}

TEST(CheckReport, CpuKernelsThrowAtOnceAndRecordNothing) {
  CheckReport report(Device::cpu());
  EXPECT_FALSE(report.failed());
  EXPECT_EQ(report.message(), "");
  const Tensor x = host_values({4, 64}, Dtype::f32, {70}, 1);
  QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("int8:token"), x.shape());
  const QuantizePlan plan = plan_for(q.view(), x.view());
  testing::expect_error(
      [&] {
        plan.run(Stream(), {}, {x.view(), q.view(), &report});
      },
      ErrorCode::invalid_argument, "(flat index 70) is NaN");
  EXPECT_FALSE(report.failed());
  report.throw_if_failed();  // nothing recorded: no throw
  // A moved-from report is refused with a clear error, not dereferenced.
  CheckReport moved = std::move(report);
  EXPECT_EQ(moved.device(), Device::cpu());
  testing::expect_error(
      [&] {
        plan.run(Stream(), {}, {x.view(), q.view(), &report});
      },
      ErrorCode::invalid_argument, "used after being moved from");
}

TEST(CheckReportCuda, QuantizeReportsTheFirstRefusedCallOnEveryPath) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{64, 1024};
  struct Case {
    const char* scheme;
    Dtype src;
    const char* kernel;
  };
  const Case cases[] = {{"int8:token", Dtype::bf16, "quantize_cuda"},
                        {"int8:tensor", Dtype::bf16, "quantize_cuda"},
                        {"uint4:block32", Dtype::f16, "quantize_cuda"},
                        {"fp8e4m3:token", Dtype::bf16, "quantize_cuda"},
                        {"int8:channel:axis=1", Dtype::f32, "quantize_cuda"},
                        {"fp8e4m3:block128x128", Dtype::bf16, "quantize_cuda"},
                        {"nvfp4", Dtype::bf16, "quantize_cuda"},
                        {"mxfp4", Dtype::f32, "quantize_cuda"},
                        {"q8_0", Dtype::f32, "quantize_cuda"},
                        {"q4_0", Dtype::f32, "quantize_cuda"},
                        {"q4_K", Dtype::f32, "gguf_quantize_cuda"},
                        {"q6_K", Dtype::bf16, "gguf_quantize_cuda"}};
  for (const Case& c : cases) {
    for (const int64_t offset : {0, 1}) {
      SCOPED_TRACE(std::string(c.scheme) + (offset ? " (unaligned source)" : ""));
      const QuantScheme s = QuantScheme::parse(c.scheme);
      const Tensor clean = host_values(shape, c.src, {}, 7);
      const Tensor late = host_values(shape, c.src, {50 * 1024 + 9}, 7);
      const Tensor early = host_values(shape, c.src, {3 * 1024 + 100, 60 * 1024}, 7);
      const DeviceSource x_clean(clean, offset), x_late(late, offset), x_early(early, offset);
      QuantizedTensor q = QuantizedTensor::allocate(s, shape, gpu);
      const QuantizePlan plan = plan_for(q.view(), x_clean.view);
      ASSERT_EQ(plan.sku().kernel, c.kernel);
      const Stream stream = Stream::create(gpu);
      CheckReport report(gpu);
      // Calls 1-4: clean, refused (element 51209), refused (3172: smaller, but later), clean.
      plan.run(stream, {}, {x_clean.view, q.view(), &report});
      plan.run(stream, {}, {x_late.view, q.view(), &report});
      plan.run(stream, {}, {x_early.view, q.view(), &report});
      fill_bytes(q.codes, testing::kPoison);
      plan.run(stream, {}, {x_clean.view, q.view(), &report});
      stream.synchronize();
      ASSERT_TRUE(report.failed());
      const std::string m = report.message();
      EXPECT_NE(m.find("the 2nd " + std::string(c.kernel) + " call given this CheckReport"),
                std::string::npos)
          << m;
      EXPECT_NE(m.find("flat index 51209 is NaN or Inf"), std::string::npos) << m;
      // The words were clean for call 4: the reference's bits.
      EXPECT_EQ(compare_parts(reference(s, clean).view(), q.view()), "");
      testing::expect_error([&] { report.throw_if_failed(); }, ErrorCode::invalid_argument,
                            "flat index 51209");
      EXPECT_FALSE(report.failed());
      // Counting goes on: the next refusal is the 6th call.
      plan.run(stream, {}, {x_clean.view, q.view(), &report});
      plan.run(stream, {}, {x_early.view, q.view(), &report});
      stream.synchronize();
      EXPECT_NE(report.message().find("the 6th "), std::string::npos) << report.message();
      EXPECT_NE(report.message().find("flat index 3172 "), std::string::npos);
      report.clear();
      EXPECT_FALSE(report.failed());
      // Without a report the same plan still throws from run(), and its words are clean.
      testing::expect_error(
          [&] {
            plan.run(stream, {}, {x_early.view, q.view()});
          },
          ErrorCode::invalid_argument, "(flat index 3172)");
    }
  }
}

TEST(CheckReportCuda, InvalidGivenScalesAndGgufOverflowAreReported) {
  LOWBIT_REQUIRE_CUDA();
  // A given scale of -1 for group 5 (int8 per token).
  {
    const Shape shape{16, 64};
    const Tensor host = host_values(shape, Dtype::f32, {}, 3);
    const QuantScheme s = QuantScheme::parse("int8:token");
    QuantizedTensor ref = reference(s, host);
    ref.scale.data_as<float>()[5] = -1.0f;
    QuantizedTensor q = QuantizedTensor::allocate(s, shape, gpu);
    copy(q.scale.view(), ref.scale);
    const Tensor x = testing::to_device(host, gpu);
    const QuantizePlan plan = plan_for(q.view(), x.view(), /*given=*/true);
    CheckReport report(gpu);
    const Stream stream = Stream::create(gpu);
    plan.run(stream, {}, {x.view(), q.view(), &report});
    stream.synchronize();
    EXPECT_NE(report.message().find("scale, zero point or global scale of group 5 "),
              std::string::npos)
        << report.message();
  }
  // q8_0: row 5's block 3 holds 3e7 (its f16 scale overflows): GGUF block 5 * 8 + 3.
  {
    const Shape shape{8, 256};
    Tensor host = Tensor::empty(shape, Dtype::f32);
    for (int64_t i = 0; i < host.numel(); ++i) host.data_as<float>()[i] = 1.0f;
    host.data_as<float>()[5 * 256 + 100] = 3e7f;
    const QuantScheme s = QuantScheme::parse("q8_0");
    QuantizedTensor q = QuantizedTensor::allocate(s, shape, gpu);
    const Tensor x = testing::to_device(host, gpu);
    CheckReport report(gpu);
    const Stream stream = Stream::create(gpu);
    plan_for(q.view(), x.view()).run(stream, {}, {x.view(), q.view(), &report});
    stream.synchronize();
    EXPECT_NE(report.message().find("GGUF block 43's f16 scale"), std::string::npos)
        << report.message();
  }
}

TEST(CheckReportCuda, AReportOfAnotherDeviceIsRefused) {
  LOWBIT_REQUIRE_CUDA();
  const Tensor x = testing::to_device(host_values({4, 64}, Dtype::f32, {}, 1), gpu);
  QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("int8:token"), x.shape(), gpu);
  CheckReport cpu_report(Device::cpu());
  testing::expect_error(
      [&] {
        plan_for(q.view(), x.view())
            .run(Stream::default_for(gpu), {}, {x.view(), q.view(), &cpu_report});
      },
      ErrorCode::invalid_argument, "the CheckReport is for cpu");
}

TEST(CheckReportCuda, ACapturedCallReportsOnReplay) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{128, 512};
  const Tensor clean = host_values(shape, Dtype::bf16, {}, 9);
  const Tensor bad = host_values(shape, Dtype::bf16, {77 * 512 + 1}, 9);
  Tensor x = testing::to_device(clean, gpu);
  const QuantScheme s = QuantScheme::parse("fp8e4m3:token");
  QuantizedTensor q = QuantizedTensor::allocate(s, shape, gpu);
  const QuantizePlan plan = plan_for(q.view(), x.view());
  CheckReport report(gpu);
  const Stream stream = Stream::create(gpu);
  auto cs = static_cast<cudaStream_t>(stream.native_handle());
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  plan.run(stream, {}, {x.view(), q.view(), &report});  // no wait inside: capturable
  ASSERT_EQ(cudaStreamEndCapture(cs, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
  stream.synchronize();
  EXPECT_FALSE(report.failed());
  EXPECT_EQ(compare_parts(reference(s, clean).view(), q.view()), "");
  copy(x.view(), bad);
  ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
  stream.synchronize();
  EXPECT_NE(report.message().find("the 2nd quantize_cuda call"), std::string::npos)
      << report.message();
  EXPECT_NE(report.message().find("flat index 39425 "), std::string::npos);
  report.clear();
  copy(x.view(), clean);
  ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
  stream.synchronize();
  EXPECT_FALSE(report.failed());
  EXPECT_EQ(compare_parts(reference(s, clean).view(), q.view()), "");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST(CheckReportCuda, FakeQuantizeForwardAndBackwardAreReported) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{64, 256};
  const QuantScheme s = QuantScheme::parse("int8:token");
  const Tensor clean = testing::to_device(host_values(shape, Dtype::f32, {}, 11), gpu);
  const Tensor bad = testing::to_device(host_values(shape, Dtype::f32, {5000}, 11), gpu);
  Tensor y = Tensor::empty(shape, Dtype::f32, gpu);
  Tensor scale = Tensor::empty(scale_shape(s, shape), Dtype::f32, gpu);
  const FakeQuantizePlan fwd =
      FakeQuantizePlan::select(FakeQuantizeDesc::for_views(y.view(), clean.view(), s));
  ASSERT_EQ(fwd.sku().kernel, "fake_quantize_cuda");
  const Stream stream = Stream::create(gpu);
  CheckReport report(gpu);
  FakeQuantizeArgs fa{clean.view(), y.view(), scale.view(), {}, &report};
  fwd.run(stream, {}, fa);  // call 1: clean (and the scales for the backward)
  fa.src = bad.view();
  fwd.run(stream, {}, fa);  // call 2: refused, no throw
  stream.synchronize();
  EXPECT_NE(report.message().find("fake_quantize (the 2nd fake_quantize_cuda call given this "
                                  "CheckReport): src element at flat index 5000 is NaN"),
            std::string::npos)
      << report.message();
  report.clear();
  // The backward: dy with a NaN at 77 (its 1st call).
  fa.src = clean.view();
  fwd.run(stream, {}, fa);
  const Tensor dy = testing::to_device(host_values(shape, Dtype::f32, {77}, 12), gpu);
  Tensor dx = Tensor::empty(shape, Dtype::f32, gpu);
  const FakeQuantizeBackwardPlan bwd = FakeQuantizeBackwardPlan::select(
      FakeQuantizeBackwardDesc::for_views(dx.view(), dy.view(), clean.view(), s));
  FakeQuantizeBackwardArgs ba{};
  ba.dy = dy.view();
  ba.x = clean.view();
  ba.scale = scale.view();
  ba.dx = dx.view();
  ba.report = &report;
  bwd.run(stream, {}, ba);
  stream.synchronize();
  EXPECT_NE(report.message().find("the 1st fake_quantize_backward_cuda call given this "
                                  "CheckReport): dy element at flat index 77 is NaN"),
            std::string::npos)
      << report.message();
  // Without the report the same call throws from run().
  ba.report = nullptr;
  testing::expect_error([&] { bwd.run(stream, {}, ba); }, ErrorCode::invalid_argument, "dy");
}

TEST(CheckReportCuda, FusedQuantizeEpilogueReportsTheFirstRefusedCall) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{300, 256};
  Tensor a = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < a.numel(); ++i) a.data_as<float>()[i] = 1.0f + static_cast<float>(i % 7);
  Tensor bad = Tensor::empty(shape, Dtype::f32);
  std::memcpy(bad.data(), a.data(), static_cast<size_t>(a.nbytes()));
  bad.data_as<float>()[250 * 256 + 3] = -1.0f;  // log(-1): NaN
  const Tensor da = testing::to_device(a, gpu);
  const Tensor dbad = testing::to_device(bad, gpu);
  const QuantizedTensor q =
      QuantizedTensor::allocate(QuantScheme::parse("fp8e4m3:token"), shape, gpu);
  const Stream stream = Stream::create(gpu);
  CheckReport report(gpu);
  for (const Tensor* src : {&da, &dbad, &da}) {
    const FusedDesc d = FusedDesc::make({FusedOutput(q.view(), fusion::log(fusion::input(*src)))});
    FusedArgs args = d.bound_args();
    args.report = &report;
    FusedPlan::select(d).run(stream, {}, args);  // does not throw
  }
  stream.synchronize();
  const std::string m = report.message();
  EXPECT_NE(m.find("the 2nd fused_cuda call given this CheckReport"), std::string::npos) << m;
  EXPECT_NE(m.find("flat index 64003 is NaN"), std::string::npos) << m;
  // The flag word was zeroed: a checked call without the report passes.
  fuse({{q.view(), fusion::log(fusion::input(da))}});
}

}  // namespace
}  // namespace lowbit
