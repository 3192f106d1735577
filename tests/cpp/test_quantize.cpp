// Schemes and the reference quantize / dequantize: the rules of docs/formats.md checked on
// hand-computed values, error bounds on random data, edge cases and errors.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "lowbit/convert.hpp"
#include "lowbit/quantize.hpp"
#include "lowbit/scheme.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::expect_error;

TEST(Scheme, TextFormsRoundTrip) {
  const char* canonical[] = {"int8:tensor",
                             "int8:channel",
                             "int8:channel:axis=1",
                             "int8:token",
                             "int4:block32:asym",
                             "int4:block128",
                             "uint8:tensor",
                             "uint4:block64:scale=bf16",
                             "int8:block16:scale=f16",
                             "fp8e4m3:tensor",
                             "fp8e4m3:token",
                             "fp8e5m2:channel",
                             "fp8e4m3:block128",
                             "fp8e4m3:block128x128",
                             "nvfp4",
                             "mxfp4",
                             "mxfp8e4m3",
                             "mxfp8e5m2",
                             "q8_0",
                             "q4_0",
                             "q4_1",
                             "q5_0",
                             "q5_1",
                             "q2_K",
                             "q3_K",
                             "q4_K",
                             "q5_K",
                             "q6_K",
                             "q8_K"};
  for (const char* text : canonical) {
    const QuantScheme s = QuantScheme::parse(text);
    EXPECT_EQ(s.str(), text);
    EXPECT_EQ(QuantScheme::parse(s.str()), s);
  }
  EXPECT_EQ(QuantScheme::parse("int8").str(), "int8:tensor");
  EXPECT_EQ(QuantScheme::parse("fp8").str(), "fp8e4m3:tensor");
  EXPECT_EQ(QuantScheme::parse("int4:block32:asym").qmin(), -8);
  EXPECT_EQ(QuantScheme::parse("int4:block32").qmin(), -7);
  EXPECT_EQ(QuantScheme::parse("uint4:block32").qmax(), 15);
  expect_error([] { QuantScheme::parse("int5"); }, ErrorCode::invalid_argument,
               "unknown format 'int5'");
  expect_error([] { QuantScheme::parse("int4:block48"); }, ErrorCode::invalid_argument,
               "block size '48'");
  expect_error([] { QuantScheme::parse("nvfp4:block32"); }, ErrorCode::invalid_argument,
               "fixed layout");
  expect_error([] { QuantScheme::parse("uint8:sym"); }, ErrorCode::invalid_argument,
               "unsigned formats are affine");
  expect_error([] { QuantScheme::parse("fp8e4m3:asym"); }, ErrorCode::invalid_argument,
               "symmetric");
  expect_error([] { QuantScheme::parse("int8:token:axis=1"); }, ErrorCode::invalid_argument,
               "per-channel");
  expect_error([] { QuantScheme::parse("int8:scale=i8"); }, ErrorCode::invalid_argument,
               "scale dtype 'i8'");
}

TEST(Scheme, ScaleShapes) {
  auto ss = [](const char* s, Shape shape) { return scale_shape(QuantScheme::parse(s), shape); };
  EXPECT_EQ(ss("int8", {7, 9}), (Shape{1}));
  EXPECT_EQ(ss("int8:channel", {7, 9}), (Shape{7}));
  EXPECT_EQ(ss("int8:channel:axis=-1", {7, 9}), (Shape{9}));
  EXPECT_EQ(ss("int8:token", {2, 3, 9}), (Shape{2, 3}));
  EXPECT_EQ(ss("int4:block32", {5, 64}), (Shape{5, 2}));
  EXPECT_EQ(ss("fp8e4m3:block128", {5, 300}), (Shape{5, 3}));  // partial last block allowed
  EXPECT_EQ(ss("fp8e4m3:block128x128", {300, 200}), (Shape{3, 2}));
  EXPECT_EQ(ss("nvfp4", {3, 32}), (Shape{3, 2}));
  expect_error(
      [&] {
        ss("int4:block32", {5, 33});
      },
      ErrorCode::invalid_argument,
      "the last axis (33) of shape [5, 33] is not a multiple of the block size 32");
  expect_error(
      [&] {
        ss("int8:channel:axis=2", {5, 33});
      },
      ErrorCode::invalid_argument, "axis 2 out of range");
  expect_error(
      [&] {
        QuantizedTensor::allocate(QuantScheme::parse("q4_K"), {4, 100});
      },
      ErrorCode::invalid_argument, "100");
}

Tensor from_values(const std::vector<float>& v, Shape shape) {
  Tensor t = Tensor::empty(shape, Dtype::f32);
  std::copy(v.begin(), v.end(), t.data_as<float>());
  return t;
}

TEST(Quantize, IntSymmetricHandComputed) {
  // absmax 2.54 -> scale 0.02; codes rne(x / 0.02) computed as x * (1 / 0.02f).
  const Tensor x = from_values({2.54f, -1.0f, 0.01f, 0.03f}, {4});
  const QuantizedTensor q = quantize(x, QuantScheme::parse("int8"));
  const float scale = q.scale.data_as<float>()[0];
  EXPECT_EQ(scale, 2.54f / 127.0f);
  const auto* c = q.codes.data_as<int8_t>();
  const float inv = 1.0f / scale;
  EXPECT_EQ(c[0], 127);
  EXPECT_EQ(c[1], static_cast<int8_t>(std::nearbyint(-1.0f * inv)));
  EXPECT_EQ(c[2], static_cast<int8_t>(std::nearbyint(0.01f * inv)));
  const Tensor y = dequantize(q.view());
  EXPECT_EQ(y.data_as<float>()[0], 127 * scale);
}

TEST(Quantize, IntAffineAndPackingHandComputed) {
  // Range [-1, 3] (contains 0) -> uint4: scale 4/15, zero = 0 - rne(-1 * 15/4) = 4.
  const Tensor x = from_values({-1.0f, 3.0f, 0.0f, 1.0f, 2.0f}, {5});
  const QuantizedTensor q = quantize(x, QuantScheme::parse("uint4:tensor"));
  const float scale = q.scale.data_as<float>()[0];
  EXPECT_EQ(scale, 4.0f / 15.0f);
  EXPECT_EQ(q.zero.data_as<int32_t>()[0], 4);
  const auto* c = q.codes.data_as<uint8_t>();
  // Codes 0, 15, 4, 8, 11 packed low nibble first; the unused high nibble of byte 2 is 0.
  EXPECT_EQ(c[0], 0xF0);
  EXPECT_EQ(c[1], 0x84);
  EXPECT_EQ(c[2], 0x0B);
  const Tensor y = dequantize(q.view());
  EXPECT_EQ(y.data_as<float>()[2], 0.0f);  // zero is exact in affine schemes
}

TEST(Quantize, AllZeroGroupsGiveZeroScalesAndExactZeros) {
  const char* schemes[] = {
      "int8:token", "int4:block32:asym", "uint8:channel", "fp8e4m3:token", "nvfp4",
      "mxfp4",      "mxfp8e5m2",         "q8_0",          "q4_K"};
  for (const char* s : schemes) {
    SCOPED_TRACE(s);
    Tensor x = Tensor::empty({2, 256}, Dtype::f32);
    std::fill(x.data_as<float>(), x.data_as<float>() + 512, 0.0f);
    for (int i = 256; i < 512; ++i)
      x.data_as<float>()[i] = std::sin(static_cast<float>(i));  // row 1 non-zero
    const Tensor y = dequantize(quantize(x, QuantScheme::parse(s)).view());
    for (int i = 0; i < 256; ++i) ASSERT_EQ(y.data_as<float>()[i], 0.0f) << i;
  }
}

TEST(Quantize, ErrorBoundsOnRandomData) {
  // max |x - x'| <= bound(scale) per scheme, checked against f64.
  auto rng = testing::make_rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    const char* scheme;
    double max_rel_rmse;  // sqrt(NMSE) bound, written from the format's resolution
  };
  const Case cases[] = {{"int8:token", 0.02},
                        {"int8:channel", 0.02},
                        {"int4:block32:asym", 0.15},
                        {"int4:block128", 0.2},
                        {"fp8e4m3:token", 0.06},
                        {"fp8e5m2:block128", 0.12},
                        {"fp8e4m3:block128x128", 0.06},
                        {"nvfp4", 0.15},
                        {"mxfp4", 0.2},
                        {"mxfp8e4m3", 0.06},
                        {"q8_0", 0.01},
                        {"q4_0", 0.15},
                        {"q4_K", 0.1},
                        {"q6_K", 0.03}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.scheme);
    const Shape shape{7, 512};
    Tensor x = Tensor::empty(shape, Dtype::f32);
    for (int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = nd(rng) * (1 + (i / 512));
    const Tensor y = fake_quantize(x, QuantScheme::parse(c.scheme));
    double err = 0, ref = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double a = x.data_as<float>()[i], b = y.data_as<float>()[i];
      err += (a - b) * (a - b);
      ref += a * a;
    }
    const double rel_rmse = std::sqrt(err / ref);
    std::printf("  %-22s relative RMSE %.4f (bound %.3f)\n", c.scheme, rel_rmse, c.max_rel_rmse);
    EXPECT_LT(rel_rmse, c.max_rel_rmse);
    EXPECT_GT(rel_rmse, 0.0);  // a lossy format that returns its input exactly is broken
  }
}

TEST(Quantize, StaticScalesAreUsedAsGiven) {
  const Tensor x = from_values({0.5f, -0.26f, 100.0f, -100.0f}, {2, 2});
  QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("int8:channel:asym"), {2, 2});
  q.scale.data_as<float>()[0] = 0.1f;
  q.scale.data_as<float>()[1] = 1.0f;
  q.zero.data_as<int32_t>()[0] = 3;
  q.zero.data_as<int32_t>()[1] = -5;
  quantize_into(q.view(), x, /*given_scales=*/true);
  const auto* c = q.codes.data_as<int8_t>();
  const float inv = 1.0f / 0.1f;
  EXPECT_EQ(c[0], static_cast<int>(std::nearbyint(0.5f * inv)) + 3);
  EXPECT_EQ(c[1], static_cast<int>(std::nearbyint(-0.26f * inv)) + 3);
  EXPECT_EQ(c[2], 95);                           // 100 - 5
  EXPECT_EQ(c[3], -105);                         // -100 - 5
  EXPECT_EQ(q.scale.data_as<float>()[0], 0.1f);  // untouched
  q.zero.data_as<int32_t>()[0] = 300;
  expect_error([&] { quantize_into(q.view(), x, true); }, ErrorCode::invalid_argument,
               "zero point 300");
}

TEST(Quantize, NonFiniteInputsNameTheFirstBadIndex) {
  Tensor x = Tensor::empty({3, 32}, Dtype::f32);
  std::fill(x.data_as<float>(), x.data_as<float>() + 96, 1.0f);
  x.data_as<float>()[40] = NAN;
  x.data_as<float>()[70] = INFINITY;
  for (const char* s : {"int8", "fp8e4m3:token", "nvfp4", "mxfp4", "q8_0"})
    expect_error([&] { quantize(x, QuantScheme::parse(s)); }, ErrorCode::invalid_argument,
                 "src element [1, 8] (flat index 40) is NaN");
}

TEST(Quantize, SourcesAndDestinationsOfEveryFloatDtype) {
  auto rng = testing::make_rng(6);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  Tensor x = Tensor::empty({4, 64}, Dtype::f32);
  for (int i = 0; i < 256; ++i) x.data_as<float>()[i] = u(rng);
  const QuantScheme s = QuantScheme::parse("int8:token");
  const QuantizedTensor q32 = quantize(x, s);
  for (Dtype src : {Dtype::f16, Dtype::bf16, Dtype::f64}) {
    // Sources are read exactly (f64 rounds to f32): quantizing a bf16 copy equals
    // quantizing the f32 values of that copy.
    Tensor xs = Tensor::empty(x.shape(), src);
    convert(xs, x);
    Tensor back = Tensor::empty(x.shape(), Dtype::f32);
    convert(back, xs);
    EXPECT_EQ(testing::compare_bytes(quantize(back, s).codes, quantize(xs, s).codes), "")
        << dtype_name(src);
  }
  for (Dtype dst : {Dtype::f16, Dtype::bf16, Dtype::f64}) {
    const Tensor y = dequantize(q32.view(), dst);
    Tensor y32 = dequantize(q32.view(), Dtype::f32);
    Tensor expect = Tensor::empty(x.shape(), dst);
    convert(expect, y32);
    EXPECT_EQ(testing::compare_bytes(expect, y), "") << dtype_name(dst);
  }
  // A strided source gives the same codes as its contiguous copy.
  Tensor t = Tensor::empty({64, 4}, Dtype::f32);
  copy(TensorView(t.data(), Dtype::f32, {4, 64}, {1, 4}), x);
  EXPECT_EQ(testing::compare_bytes(
                q32.codes, quantize(TensorView(t.data(), Dtype::f32, {4, 64}, {1, 4}), s).codes),
            "");
}

}  // namespace
}  // namespace lowbit
