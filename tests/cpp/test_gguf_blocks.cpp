// GGUF block formats (include/lowbit/gguf_blocks.hpp): layouts and parsing, round trips
// with per-type error bounds, zeros, extreme magnitudes, rejected inputs, and two worked
// examples byte for byte (the ones docs/formats/gguf.md walks through).
//
// Byte identity with ggml and the gguf package is checked in tests/python/test_gguf_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "support/testing.hpp"

namespace lowbit::gguf {
namespace {

struct TypeCase {
  GgmlType type;
  int64_t block_elems;
  int64_t block_bytes;
  // Normalized MSE sum((y-x)^2)/sum(x^2) of a round trip of N(0,1) data must stay below
  // this. Measured on 64K values (ggml's reference gives the same numbers): q4_0 7.3e-3,
  // q4_1 6.1e-3, q5_0 1.8e-3, q5_1 1.4e-3, q8_0 2.9e-5, q8_1 2.9e-5, q2_K 8.8e-2, q3_K
  // 2.3e-2, q4_K 5.0e-3, q5_K 1.3e-3, q6_K 3.1e-4, q8_K 4.8e-5; the bounds leave ~1.5x for
  // other seeds and for scales down to 1e-3, where f16 d fields start losing bits.
  double nmse_bound;
  bool f16_scales;  // has an f16 scale field that overflows for huge inputs
};

const std::vector<TypeCase>& block_types() {
  static const std::vector<TypeCase> cases = {
      {GgmlType::q4_0, 32, 18, 1.2e-2, true},   {GgmlType::q4_1, 32, 20, 1.0e-2, true},
      {GgmlType::q5_0, 32, 22, 3.0e-3, true},   {GgmlType::q5_1, 32, 24, 2.5e-3, true},
      {GgmlType::q8_0, 32, 34, 5.0e-5, true},   {GgmlType::q8_1, 32, 36, 5.0e-5, true},
      {GgmlType::q2_K, 256, 84, 1.3e-1, true},  {GgmlType::q3_K, 256, 110, 3.5e-2, true},
      {GgmlType::q4_K, 256, 144, 8.0e-3, true}, {GgmlType::q5_K, 256, 176, 2.0e-3, true},
      {GgmlType::q6_K, 256, 210, 6.0e-4, true}, {GgmlType::q8_K, 256, 292, 8.0e-5, false},
  };
  return cases;
}

std::string type_name(GgmlType t) { return std::string(block_layout(t)->name); }

template <class Fn>
void expect_error(Fn&& fn, ErrorCode code, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing '" << needles.front() << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<float> gaussian(int64_t n, double scale, std::mt19937_64& rng) {
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(dist(rng) * scale);
  return x;
}

std::vector<float> round_trip(GgmlType t, const std::vector<float>& x) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes(t, n)), testing::kPoison);
  quantize_row_reference(t, x.data(), bytes.data(), n);
  std::vector<float> y(x.size(), std::numeric_limits<float>::quiet_NaN());
  dequantize_row_reference(t, bytes.data(), y.data(), n);
  return y;
}

double nmse(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0.0;
  double sig = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(y[i]) - x[i];
    err += d * d;
    sig += static_cast<double>(x[i]) * x[i];
  }
  return err / sig;
}

TEST(GgufBlocks, LayoutsMatchGgml) {
  // ids and sizes as in ggml.h's enum ggml_type and ggml-common.h's block structs
  struct Row {
    GgmlType type;
    uint32_t id;
    int64_t elems;
    int64_t bytes;
    const char* name;
  };
  const Row rows[] = {
      {GgmlType::f32, 0, 1, 4, "f32"},        {GgmlType::f16, 1, 1, 2, "f16"},
      {GgmlType::q4_0, 2, 32, 18, "q4_0"},    {GgmlType::q4_1, 3, 32, 20, "q4_1"},
      {GgmlType::q5_0, 6, 32, 22, "q5_0"},    {GgmlType::q5_1, 7, 32, 24, "q5_1"},
      {GgmlType::q8_0, 8, 32, 34, "q8_0"},    {GgmlType::q8_1, 9, 32, 36, "q8_1"},
      {GgmlType::q2_K, 10, 256, 84, "q2_K"},  {GgmlType::q3_K, 11, 256, 110, "q3_K"},
      {GgmlType::q4_K, 12, 256, 144, "q4_K"}, {GgmlType::q5_K, 13, 256, 176, "q5_K"},
      {GgmlType::q6_K, 14, 256, 210, "q6_K"}, {GgmlType::q8_K, 15, 256, 292, "q8_K"},
      {GgmlType::bf16, 30, 1, 2, "bf16"},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(static_cast<uint32_t>(r.type), r.id);
    const BlockLayout* layout = block_layout(r.type);
    ASSERT_NE(layout, nullptr);
    EXPECT_EQ(layout->block_elems, r.elems);
    EXPECT_EQ(layout->block_bytes, r.bytes);
    EXPECT_EQ(layout->name, r.name);
    EXPECT_EQ(parse_ggml_type(r.name), r.type);
    EXPECT_EQ(row_bytes(r.type, 4 * r.elems), 4 * r.bytes);
  }
  EXPECT_EQ(block_layout(static_cast<GgmlType>(4)), nullptr);  // Q4_2, removed from ggml
  EXPECT_EQ(block_layout(static_cast<GgmlType>(99)), nullptr);
}

TEST(GgufBlocks, ParseIgnoresCase) {
  EXPECT_EQ(parse_ggml_type("Q4_K"), GgmlType::q4_K);
  EXPECT_EQ(parse_ggml_type("q4_k"), GgmlType::q4_K);
  EXPECT_EQ(parse_ggml_type("Q8_0"), GgmlType::q8_0);
  EXPECT_EQ(parse_ggml_type("BF16"), GgmlType::bf16);
  EXPECT_FALSE(parse_ggml_type("q4_K_M").has_value());  // a file type, not a tensor type
  EXPECT_FALSE(parse_ggml_type("").has_value());
  EXPECT_FALSE(parse_ggml_type("iq2_xxs").has_value());
}

TEST(GgufBlocks, RowLengthMustBeWholeBlocks) {
  expect_error([] { row_bytes(GgmlType::q4_K, 100); }, ErrorCode::invalid_argument,
               {"q4_K", "n = 100", "block size 256"});
  expect_error([] { row_bytes(GgmlType::q4_0, -32); }, ErrorCode::invalid_argument, {"n = -32"});
  std::vector<float> x(48, 1.0f);
  std::vector<uint8_t> bytes(64);
  expect_error([&] { quantize_row_reference(GgmlType::q8_0, x.data(), bytes.data(), 48); },
               ErrorCode::invalid_argument, {"quantize q8_0", "n = 48", "block size 32"});
  expect_error([&] { dequantize_row_reference(GgmlType::q6_K, bytes.data(), x.data(), 48); },
               ErrorCode::invalid_argument, {"dequantize q6_K", "n = 48", "block size 256"});
  expect_error(
      [&] { quantize_row_reference(static_cast<GgmlType>(20), x.data(), bytes.data(), 32); },
      ErrorCode::invalid_argument, {"ggml type id 20 is not supported"});
  EXPECT_EQ(row_bytes(GgmlType::q2_K, 0), 0);
  quantize_row_reference(GgmlType::q2_K, nullptr, nullptr, 0);  // an empty row is fine
}

TEST(GgufBlocks, RoundTripErrorWithinBounds) {
  auto rng = testing::make_rng(1);
  for (const TypeCase& tc : block_types()) {
    for (const int64_t blocks : {1, 3, 16, 64}) {
      const int64_t n = blocks * tc.block_elems;
      SCOPED_TRACE(type_name(tc.type) + " n=" + std::to_string(n));
      const std::vector<float> x = gaussian(n, 1.0, rng);
      const std::vector<float> y = round_trip(tc.type, x);
      // A row of one or a few blocks is a small sample: its NMSE scatters ~2x around the mean.
      EXPECT_LT(nmse(x, y), n < 1024 ? 3 * tc.nmse_bound : tc.nmse_bound);
      // Deterministic: quantizing twice gives the same bytes.
      std::vector<uint8_t> a(static_cast<size_t>(row_bytes(tc.type, n)));
      std::vector<uint8_t> b(a.size(), 0xff);
      quantize_row_reference(tc.type, x.data(), a.data(), n);
      quantize_row_reference(tc.type, x.data(), b.data(), n);
      EXPECT_EQ(a, b);
    }
  }
}

TEST(GgufBlocks, ErrorBoundsHoldAcrossMagnitudes) {
  // The formats are scale-invariant while the f16 scales keep their precision: from 1e-3
  // up to where a scale would overflow f16 (q8_1's d * sum(q) field overflows first).
  auto rng = testing::make_rng(2);
  for (const TypeCase& tc : block_types()) {
    for (const double scale : {1e-3, 1e-1, 1e2, 1e3, 1e4}) {
      if (tc.type == GgmlType::q8_1 && scale > 1e3) continue;
      SCOPED_TRACE(type_name(tc.type) + " scale=" + std::to_string(scale));
      const std::vector<float> x = gaussian(16 * tc.block_elems, scale, rng);
      EXPECT_LT(nmse(x, round_trip(tc.type, x)), tc.nmse_bound);
    }
  }
}

TEST(GgufBlocks, AllZeroBlocksDecodeToZeros) {
  auto rng = testing::make_rng(3);
  for (const TypeCase& tc : block_types()) {
    SCOPED_TRACE(type_name(tc.type));
    // Block 0 all zeros, block 1 random, block 2 zeros except one value.
    std::vector<float> x = gaussian(3 * tc.block_elems, 1.0, rng);
    std::fill(x.begin(), x.begin() + tc.block_elems, 0.0f);
    std::fill(x.begin() + 2 * tc.block_elems, x.end(), 0.0f);
    x[2 * tc.block_elems + 5] = -0.75f;
    const std::vector<float> y = round_trip(tc.type, x);
    for (int64_t i = 0; i < tc.block_elems; ++i) ASSERT_EQ(y[i], 0.0f) << "index " << i;
    EXPECT_LT(nmse(x, y), tc.nmse_bound);
    // The lone value survives to within its block's resolution; its zeros stay small.
    const float* z = y.data() + 2 * tc.block_elems;
    EXPECT_NEAR(z[5], -0.75f, 0.75f * 0.35f);
    for (int64_t i = 0; i < tc.block_elems; ++i)
      if (i != 5) EXPECT_LE(std::fabs(z[i]), 0.75f * 0.35f) << "index " << i;
  }
}

TEST(GgufBlocks, TinyMagnitudesStayFiniteAndBounded) {
  // Near FLT_MIN and in the subnormals, 1/d overflows and f16 scales underflow; ggml's
  // reference (which we follow) then decodes to zeros or to values of the same tiny size.
  auto rng = testing::make_rng(4);
  for (const TypeCase& tc : block_types()) {
    for (const double scale : {1e-30, 1e-38, 1e-42}) {
      SCOPED_TRACE(type_name(tc.type) + " scale=" + std::to_string(scale));
      const std::vector<float> x = gaussian(4 * tc.block_elems, scale, rng);
      float amax = 0.0f;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      const std::vector<float> y = round_trip(tc.type, x);
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_TRUE(std::isfinite(y[i])) << "index " << i;
        ASSERT_LE(std::fabs(y[i] - x[i]), 2.0f * amax) << "index " << i;
      }
    }
  }
}

TEST(GgufBlocks, ScaleOverflowIsRejected) {
  // 1e9 needs block scales far past f16's 65504: ggml would store Inf and decode NaN/Inf.
  auto rng = testing::make_rng(5);
  for (const TypeCase& tc : block_types()) {
    SCOPED_TRACE(type_name(tc.type));
    std::vector<float> x = gaussian(3 * tc.block_elems, 1.0, rng);
    for (int64_t i = tc.block_elems; i < 2 * tc.block_elems; ++i) x[i] *= 1e9f;
    if (!tc.f16_scales) {  // q8_K's scale is an f32
      EXPECT_LT(nmse(x, round_trip(tc.type, x)), tc.nmse_bound);
      continue;
    }
    std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes(tc.type, 3 * tc.block_elems)));
    expect_error(
        [&] { quantize_row_reference(tc.type, x.data(), bytes.data(), 3 * tc.block_elems); },
        ErrorCode::invalid_argument,
        {"quantize " + type_name(tc.type), "block 1 ", "overflows f16"});
  }
}

TEST(GgufBlocks, NonFiniteInputsAreRejectedWithTheirIndex) {
  auto rng = testing::make_rng(6);
  const float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  const char* kBadText[] = {"non-finite value nan at index", "non-finite value inf at index",
                            "non-finite value -inf at index"};
  for (const TypeCase& tc : block_types()) {
    const int64_t n = 2 * tc.block_elems;
    std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes(tc.type, n)));
    for (int k = 0; k < 3; ++k) {
      SCOPED_TRACE(type_name(tc.type) + " " + kBadText[k]);
      std::vector<float> x = gaussian(n, 1.0, rng);
      const int64_t at = tc.block_elems + 7;
      x[at] = kBad[k];
      x[n - 1] = kBad[(k + 1) % 3];  // a later one is not the one named
      expect_error(
          [&] { quantize_row_reference(tc.type, x.data(), bytes.data(), n); },
          ErrorCode::invalid_argument,
          {"quantize " + type_name(tc.type), std::string(kBadText[k]) + " " + std::to_string(at)});
    }
  }
}

TEST(GgufBlocks, PlainTypes) {
  const std::vector<float> x = {1.0f, -2.5f, 65504.0f, 1e-8f, 3.14159274f, -0.0f, 1e38f, 0.1f};
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size());
  std::vector<uint8_t> bytes(x.size() * 4);

  quantize_row_reference(GgmlType::f32, x.data(), bytes.data(), n);
  dequantize_row_reference(GgmlType::f32, bytes.data(), y.data(), n);
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4));

  quantize_row_reference(GgmlType::bf16, x.data(), bytes.data(), n);
  dequantize_row_reference(GgmlType::bf16, bytes.data(), y.data(), n);
  EXPECT_EQ(y[1], -2.5f);
  EXPECT_EQ(y[4], 3.140625f);  // 0x4049 (RNE of 0x40490fdb)
  EXPECT_EQ(bytes[8], 0x49);
  EXPECT_EQ(bytes[9], 0x40);

  std::vector<float> h = x;
  h[6] = 1.0f;  // 1e38 does not fit f16
  quantize_row_reference(GgmlType::f16, h.data(), bytes.data(), n);
  dequantize_row_reference(GgmlType::f16, bytes.data(), y.data(), n);
  EXPECT_EQ(y[2], 65504.0f);
  EXPECT_EQ(y[3], 0.0f);  // 1e-8 is below half of f16's smallest subnormal (5.96e-8)
  EXPECT_TRUE(std::signbit(y[5]));
  expect_error([&] { quantize_row_reference(GgmlType::f16, x.data(), bytes.data(), n); },
               ErrorCode::invalid_argument, {"value 1e+38 at index 6 overflows f16"});
}

// ---- worked examples of docs/formats/gguf.md: x_j = j - 16, j = 0..31 -----------------

std::vector<float> ramp32() {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);
  return x;
}

TEST(GgufBlocks, WorkedExampleQ8_0) {
  // d = 16/127 -> f16 0x3008 (0.12597656); 1/d in f32 = 7.9375; q = roundf(x * 7.9375):
  // -16 -> -127 (0x81), -8 -> roundf(-63.5) = -64 (0xc0, half away from zero), 15 -> 119.
  const std::vector<uint8_t> expected = {0x08, 0x30, 0x81, 0x89, 0x91, 0x99, 0xa1, 0xa9, 0xb1,
                                         0xb9, 0xc0, 0xc8, 0xd0, 0xd8, 0xe0, 0xe8, 0xf0, 0xf8,
                                         0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40,
                                         0x47, 0x4f, 0x57, 0x5f, 0x67, 0x6f, 0x77};
  const std::vector<float> x = ramp32();
  std::vector<uint8_t> bytes(34);
  quantize_row_reference(GgmlType::q8_0, x.data(), bytes.data(), 32);
  EXPECT_EQ(bytes, expected);
  std::vector<float> y(32);
  dequantize_row_reference(GgmlType::q8_0, bytes.data(), y.data(), 32);
  EXPECT_EQ(y[0], -127.0f * 0.1259765625f);
  EXPECT_EQ(y[8], -64.0f * 0.1259765625f);
  EXPECT_EQ(y[16], 0.0f);
}

TEST(GgufBlocks, WorkedExampleQ4_0) {
  // The first value of largest magnitude is -16, so d = -16 / -8 = 2 (f16 0x4000) and
  // q = min(15, trunc(x/2 + 8.5)): -15 -> trunc(1.0) = 1 (-7.5 rounds up to -7), 15 ->
  // trunc(16.0) = 16, clipped to 15. Byte j holds q[j] (low nibble) and q[j+16] (high).
  const std::vector<uint8_t> expected = {0x00, 0x40, 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3, 0xb3,
                                         0xc4, 0xc4, 0xd5, 0xd5, 0xe6, 0xe6, 0xf7, 0xf7, 0xf8};
  const std::vector<float> x = ramp32();
  std::vector<uint8_t> bytes(18);
  quantize_row_reference(GgmlType::q4_0, x.data(), bytes.data(), 32);
  EXPECT_EQ(bytes, expected);
  std::vector<float> y(32);
  dequantize_row_reference(GgmlType::q4_0, bytes.data(), y.data(), 32);
  EXPECT_EQ(y[0], -16.0f);
  EXPECT_EQ(y[1], -14.0f);
  EXPECT_EQ(y[31], 14.0f);
}

TEST(GgufBlocks, DequantizeAcceptsAnyBytes) {
  // Every type decodes random bytes without complaint; finite f16 fields give finite values.
  auto rng = testing::make_rng(7);
  for (const TypeCase& tc : block_types()) {
    SCOPED_TRACE(type_name(tc.type));
    std::vector<uint8_t> bytes(static_cast<size_t>(8 * tc.block_bytes));
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    std::vector<float> y(static_cast<size_t>(8 * tc.block_elems));
    dequantize_row_reference(tc.type, bytes.data(), y.data(), 8 * tc.block_elems);
  }
}

}  // namespace
}  // namespace lowbit::gguf
