// The convert op on every backend against its reference kernel: every pair of float
// dtypes, awkward shapes (1, 7, 4099, empty, 3-d), non-contiguous src and dst views,
// both saturation modes, random bits with NaN/Inf/subnormals/ties, outputs poisoned so
// unwritten elements show, and gaps of strided outputs checked to stay untouched.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "lowbit/convert.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::compare_bytes;
using testing::kPoison;

const Dtype kFloatDtypes[] = {Dtype::f64,      Dtype::f32,    Dtype::f16,    Dtype::bf16,
                              Dtype::f8e4m3fn, Dtype::f8e5m2, Dtype::f4e2m1, Dtype::e8m0};

/// A layout case: the shape of the logical tensor, and how its view sits in memory.
struct LayoutCase {
  std::string shape;
  std::string layout;  // "contiguous", "transposed" (last two dims), "sliced" (step 2 on dim 0)
};

const LayoutCase kLayouts[] = {
    {"1", "contiguous"},     {"7", "contiguous"},     {"4099", "contiguous"},
    {"0", "contiguous"},     {"3x0x5", "contiguous"}, {"2x3x257", "contiguous"},
    {"33x17", "transposed"}, {"9x4099", "sliced"},    {"5x7x3", "transposed"},
};

/// Memory for a view of `shape` with `layout`: a contiguous base buffer and the view in it.
struct Placed {
  Tensor base;
  TensorView view;
};

Placed place(const Shape& shape, Dtype dtype, const std::string& layout, Device device) {
  Placed p;
  if (layout == "transposed") {
    Shape base_shape = shape;
    std::swap(base_shape[shape.size() - 1], base_shape[shape.size() - 2]);
    p.base = Tensor::empty(base_shape, dtype, device);
    p.view = p.base.view().transpose(shape.size() - 1, shape.size() - 2);
  } else if (layout == "sliced") {
    Shape base_shape = shape;
    base_shape[0] = shape[0] * 2;
    p.base = Tensor::empty(base_shape, dtype, device);
    p.view = p.base.view().slice(0, 0, base_shape[0], 2);
  } else {
    p.base = Tensor::empty(shape, dtype, device);
    p.view = p.base.view();
  }
  return p;
}

/// Runs kernel `kernel` on `device`, src/dst laid out per `layout`, from host base `src_host`.
/// Returns the whole dst base buffer (gaps included) on the host.
Tensor run_on(const std::string& kernel, Device device, const Tensor& src_host, const Shape& shape,
              Dtype dst_dtype, const std::string& layout, Saturation sat) {
  Placed src = place(shape, src_host.dtype(), layout, device);
  copy(src.base, src_host);
  Placed dst = place(shape, dst_dtype, layout, device);
  fill_bytes(dst.base, kPoison);
  Preference pref;
  pref.kernel = kernel;
  const ConvertPlan plan =
      ConvertPlan::select(ConvertDesc::for_views(dst.view, src.view, sat), pref);
  const Stream stream = Stream::default_for(device);
  plan.run(stream, {}, {src.view, dst.view});
  stream.synchronize();
  return testing::to_host(dst.base);
}

/// Layouts whose view is not contiguous cannot hold packed dtypes.
bool layout_allows(const std::string& layout, Dtype a, Dtype b) {
  return layout == "contiguous" || (!is_packed(a) && !is_packed(b));
}

TEST(Convert, EveryKernelMatchesReferenceOnEveryBackend) {
  std::map<std::string, int> runs;  // kernel@device -> cases it ran
  auto rng = testing::make_rng(1);
  for (Device device : testing::test_devices()) {
    for (Dtype src_dtype : kFloatDtypes) {
      for (Dtype dst_dtype : kFloatDtypes) {
        for (const LayoutCase& lc : kLayouts) {
          if (!layout_allows(lc.layout, src_dtype, dst_dtype)) continue;
          for (Saturation sat : {Saturation::none, Saturation::finite}) {
            const Shape shape = testing::parse_shape(lc.shape);
            const std::string name =
                fmt::format("convert src={} dst={} shape={} layout={} sat={} on {}",
                            dtype_name(src_dtype), dtype_name(dst_dtype), lc.shape, lc.layout,
                            sat == Saturation::finite ? "finite" : "none", device.str());
            SCOPED_TRACE(name);
            // The source base buffer, random bits (for "transposed" the base is the
            // transposed shape; for "sliced" twice as many rows).
            Placed host_src = place(shape, src_dtype, lc.layout, Device::cpu());
            testing::fill_random(host_src.base.data(), src_dtype, host_src.base.numel(), rng);
            if (is_packed(src_dtype) && (host_src.base.numel() & 1))
              static_cast<uint8_t*>(host_src.base.data())[host_src.base.numel() / 2] &= 0x0f;
            const Tensor expected = run_on("convert_reference", Device::cpu(), host_src.base, shape,
                                           dst_dtype, lc.layout, sat);
            for (const Kernel<ConvertOp>* k : ConvertOp::kernels()) {
              if (k->name() == "convert_reference") continue;
              ConvertDesc probe;
              {
                Placed s = place(shape, src_dtype, lc.layout, device);
                Placed d = place(shape, dst_dtype, lc.layout, device);
                probe = ConvertDesc::for_views(d.view, s.view, sat);
              }
              if (!k->decline(probe).empty()) continue;
              const Tensor actual = run_on(std::string(k->name()), device, host_src.base, shape,
                                           dst_dtype, lc.layout, sat);
              const std::string diff = compare_bytes(expected, actual);
              EXPECT_TRUE(diff.empty()) << k->name() << ": " << diff;
              ++runs[std::string(k->name()) + "@" + device.str()];
            }
          }
        }
      }
    }
  }
  for (const auto& [kernel, count] : runs)
    std::printf("  %-28s ran %d cases\n", kernel.c_str(), count);
  // A kernel that declined everything would make this test pass vacuously.
  EXPECT_GT(runs["convert_simd@cpu"], 100) << "the SIMD kernel ran on too few cases";
  if (cuda_device_count() > 0) {
    EXPECT_GT(runs["convert_cuda@cuda:0"], 500) << "the CUDA kernel ran on too few cases";
  } else {
    std::printf("SKIPPED: no CUDA device (convert_cuda not run against the reference)\n");
  }
}

TEST(Convert, LargeRandomContiguousOnEveryBackend) {
  // One large tensor per common pair through the public one-liner (the plan select()
  // would pick), against the reference.
  auto rng = testing::make_rng(2);
  const std::pair<Dtype, Dtype> pairs[] = {
      {Dtype::f32, Dtype::bf16}, {Dtype::bf16, Dtype::f8e4m3fn}, {Dtype::f32, Dtype::f16},
      {Dtype::f16, Dtype::f32},  {Dtype::bf16, Dtype::f4e2m1},   {Dtype::f32, Dtype::e8m0}};
  for (Device device : testing::test_devices()) {
    for (auto [s, d] : pairs) {
      SCOPED_TRACE(fmt::format("{}->{} on {}", dtype_name(s), dtype_name(d), device.str()));
      const Shape shape{(1 << 20) + 3};
      const Tensor src_host = testing::random_tensor(shape, s, rng);
      const Tensor expected = run_on("convert_reference", Device::cpu(), src_host, shape, d,
                                     "contiguous", Saturation::none);
      const Tensor src_dev = testing::to_device(src_host, device);
      const Tensor dst_dev = Tensor::empty(shape, d, device);
      fill_bytes(dst_dev, kPoison);
      convert(dst_dev, src_dev);
      EXPECT_EQ(compare_bytes(expected, testing::to_host(dst_dev)), "");
    }
  }
}

TEST(Convert, BadArgumentsGiveClearErrors) {
  Tensor a = Tensor::empty({8}, Dtype::f32);
  Tensor b = Tensor::empty({8}, Dtype::bf16);
  Tensor c = Tensor::empty({7}, Dtype::bf16);
  Tensor i8 = Tensor::empty({8}, Dtype::i8);
  using testing::expect_error;
  expect_error([&] { convert(i8, a); }, ErrorCode::invalid_argument,
               "dst dtype i8 is not a float dtype");
  // A plan made for one shape refuses another.
  const ConvertPlan plan = ConvertPlan::select(ConvertDesc::for_views(b, a));
  expect_error(
      [&] {
        plan.run(Stream(), {}, {a, c});
      },
      ErrorCode::invalid_argument, "dst.shape [7] != planned [8]");
  expect_error(
      [&] {
        plan.can_implement({a, TensorView(a.data(), Dtype::bf16, {8})});
      },
      ErrorCode::invalid_argument, "dst overlaps src");
  // Broadcast (stride-0) outputs would write one element many times.
  expect_error([&] { convert(TensorView(b.data(), Dtype::bf16, {8}, {0}), a); },
               ErrorCode::invalid_argument, "dst stride 0 on dim 0");
  // A CUDA device that is not there.
  expect_error(
      [&] {
        convert(TensorView(b.data(), Dtype::bf16, {8}, Device::cuda(7)),
                TensorView(a.data(), Dtype::f32, {8}, Device::cuda(7)));
      },
      ErrorCode::invalid_argument, "cuda:7 does not exist");
  // Only the named kernel may be chosen; an unknown name lists why each declined.
  Preference pref;
  pref.kernel = "no_such_kernel";
  expect_error([&] { ConvertPlan::select(ConvertDesc::for_views(b, a), pref); },
               ErrorCode::unsupported,
               "convert_reference: not the requested kernel 'no_such_kernel'");
}

TEST(Convert, PlanReportsSkuPrecisionAndDispatchLog) {
  Tensor a = Tensor::empty({4099}, Dtype::f32);
  Tensor b = Tensor::empty({4099}, Dtype::bf16);
  setenv("LOWBIT_VERBOSE", "dispatch", 1);
  ::testing::internal::CaptureStderr();
  const ConvertPlan plan = ConvertPlan::select(ConvertDesc::for_views(b, a));
  const std::string log = ::testing::internal::GetCapturedStderr();
  unsetenv("LOWBIT_VERBOSE");
  EXPECT_NE(log.find("[lowbit dispatch] convert f32->bf16 [4099] on cpu: chose"), std::string::npos)
      << log;
  EXPECT_EQ(plan.sku().op, "convert");
  EXPECT_EQ(plan.sku().backend, Backend::cpu);
  EXPECT_TRUE(plan.precision().bit_stable);
  EXPECT_TRUE(plan.precision().deterministic);
  EXPECT_EQ(plan.workspace_size(), 0u);
  // Every kernel listed before the chosen one says why it declined, in the log too.
  for (const Declined& d : plan.declined()) {
    EXPECT_FALSE(d.reason.empty()) << d.kernel;
    EXPECT_NE(log.find("declined " + d.kernel + ": " + d.reason), std::string::npos) << log;
  }
  // Strided views fall through to a kernel that handles them.
  Tensor m = Tensor::empty({64, 32}, Dtype::f32);
  Tensor n = Tensor::empty({32, 64}, Dtype::bf16);
  const ConvertPlan strided =
      ConvertPlan::select(ConvertDesc::for_views(n, m.view().transpose(0, 1)));
  EXPECT_FALSE(strided.sku().kernel.empty());
}

}  // namespace
}  // namespace lowbit
