// quantize_cuda / dequantize_cuda on the GPU against the reference kernels, bit for bit:
// the benchmark's schemes on 16384 x 8192 tensors; a sweep of schemes x shapes x sources
// (odd shapes, misaligned views, given scales, arbitrary code bytes for dequantize) that
// reaches every path of the CUDA kernels (rows, tensor, blocks, chunks, generic); the error
// texts (non-finite inputs, GGUF scale overflow, invalid given scales); check_finite off;
// and identical bits over repeated runs. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::compare_bytes;

constexpr const char* kRef = "quantize_reference";
constexpr const char* kCuda = "quantize_cuda";
constexpr const char* kDqRef = "dequantize_reference";
constexpr const char* kDqCuda = "dequantize_cuda";

// ---- buffers with chosen misalignment ---------------------------------------------------------

/// A contiguous tensor view `offset` elements into a larger allocation (offset 0: aligned).
struct OffsetTensor {
  Tensor storage;
  TensorView view;
  static OffsetTensor make(const Shape& shape, Dtype dtype, Device device, int64_t offset_bytes) {
    OffsetTensor t;
    const int64_t bytes = storage_bytes(dtype, numel(shape)) + offset_bytes;
    t.storage = Tensor::empty({std::max<int64_t>(bytes, 1) + 16}, Dtype::u8, device);
    fill_bytes(t.storage, testing::kPoison);
    t.view =
        TensorView(static_cast<uint8_t*>(t.storage.data()) + offset_bytes, dtype, shape, device);
    return t;
  }
};

/// The parts of a quantized tensor, each at a chosen byte offset (0: as allocated).
struct QBuf {
  OffsetTensor codes, scale, zero, global;
  QuantizedView view;
  static QBuf make(const QuantScheme& s, const Shape& shape, Device device, bool misalign) {
    const QuantizedTensor proto = QuantizedTensor::allocate(s, shape, Device::cpu());
    QBuf b;
    auto part = [&](const Tensor& p, OffsetTensor& out) -> TensorView {
      if (p.data() == nullptr && p.numel() == 0 && p.shape().empty()) return {};
      const int64_t elem = std::max<int64_t>(1, bit_width(p.dtype()) / 8);
      out = OffsetTensor::make(p.shape(), p.dtype(), device, misalign ? elem : 0);
      return out.view;
    };
    b.view.scheme = s;
    b.view.shape = shape;
    b.view.codes = part(proto.codes, b.codes);
    b.view.scale = part(proto.scale, b.scale);
    b.view.zero = part(proto.zero, b.zero);
    b.view.global_scale = part(proto.global_scale, b.global);
    return b;
  }
};

bool has_part(const TensorView& v) { return v.data() != nullptr || !v.shape().empty(); }

/// Copies every part of `src` into the parts of `dst` (same scheme and shape).
void copy_parts(const QuantizedView& dst, const QuantizedView& src) {
  copy(dst.codes, src.codes);
  if (has_part(src.scale)) copy(dst.scale, src.scale);
  if (has_part(src.zero)) copy(dst.zero, src.zero);
  if (has_part(src.global_scale)) copy(dst.global_scale, src.global_scale);
}

/// Empty if every part holds the same bytes, else which part differs and how.
std::string compare_parts(const QuantizedView& want, const QuantizedView& got) {
  const char* names[] = {"codes", "scale", "zero", "global_scale"};
  const TensorView* w[] = {&want.codes, &want.scale, &want.zero, &want.global_scale};
  const TensorView* g[] = {&got.codes, &got.scale, &got.zero, &got.global_scale};
  for (int i = 0; i < 4; ++i) {
    if (!has_part(*w[i])) continue;
    const std::string d = compare_bytes(testing::to_host(*w[i]), testing::to_host(*g[i]));
    if (!d.empty()) return std::string(names[i]) + ": " + d;
  }
  return {};
}

// ---- running one kernel
// --------------------------------------------------------------------------

/// Runs the named quantize kernel; returns the error text, or "" on success.
std::string run_quantize(const char* kernel, const TensorView& x, const QuantizedView& q,
                         bool given = false, bool check = true) {
  try {
    QuantizeDesc d = QuantizeDesc::for_views(q, x, given);
    d.check_finite = check;
    Preference p;
    p.kernel = kernel;
    const QuantizePlan plan = QuantizePlan::select(d, p);
    const Stream s = Stream::default_for(x.device());
    plan.run(s, {}, {x, q});
    s.synchronize();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
  return {};
}

std::string run_dequantize(const char* kernel, const QuantizedView& q, const TensorView& y) {
  try {
    Preference p;
    p.kernel = kernel;
    const DequantizePlan plan = DequantizePlan::select(DequantizeDesc::for_views(y, q), p);
    const Stream s = Stream::default_for(y.device());
    plan.run(s, {}, {q, y});
    s.synchronize();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
  return {};
}

std::string sku_of(const TensorView& x, const QuantizedView& q) {
  return QuantizePlan::select(QuantizeDesc::for_views(q, x)).sku().str();
}

// ---- inputs
// ---------------------------------------------------------------------------------------

/// Finite test values, row by row: normal values with a random per-row magnitude, all-zero
/// rows, rows of special finite values (ties of the narrow formats, subnormals, format
/// maxima), and (unless `tame`) rows of random finite f32 bit patterns over the whole range.
void fill_values(float* x, int64_t rows, int64_t k, std::mt19937_64& rng, bool tame) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-20, 20);
  static const float specials[] = {0.0f,   -0.0f,   448.0f, 464.0f,   6.0f,     5.0f,
                                   0.25f,  1.5f,    0.75f,  1.0f,     -1.0f,    3.0f,
                                   1e-40f, -1e-39f, 1e-30f, 65504.0f, 127.0f,   -8.0f,
                                   0.5f,   2.5f,    1.25f,  -0.125f,  57344.0f, 1e-3f};
  for (int64_t r = 0; r < rows; ++r) {
    const int mode = static_cast<int>(rng() % (tame ? 3 : 4));
    const float scale = std::ldexp(1.0f, expo(rng));
    for (int64_t j = 0; j < k; ++j) {
      float v;
      switch (mode) {
        case 0:
          v = normal(rng) * scale;
          break;
        case 1:
          v = (rng() % 16 == 0) ? normal(rng) * 1e-3f : 0.0f;
          break;
        case 2:
          v = rng() % 4 ? specials[rng() % std::size(specials)] * scale
                        : specials[rng() % std::size(specials)];
          break;
        default: {
          uint32_t b = static_cast<uint32_t>(rng());
          if ((b & 0x7f800000u) == 0x7f800000u) b ^= 0x40000000u;
          v = numeric_detail::float_of(b);
          break;
        }
      }
      x[r * k + j] = v;
    }
  }
}

/// A host tensor of `dtype` holding `values` (rounded; values that f16 cannot hold finitely
/// are clamped first).
Tensor host_source(const std::vector<float>& values, const Shape& shape, Dtype dtype) {
  std::vector<float> v = values;
  if (dtype == Dtype::f16)
    for (float& f : v)
      if (std::isfinite(f)) f = std::fmax(-65000.0f, std::fmin(65000.0f, f));
  Tensor f32 = Tensor::empty(shape, Dtype::f32);
  std::memcpy(f32.data(), v.data(), v.size() * sizeof(float));
  if (dtype == Dtype::f32) return f32;
  Tensor out = Tensor::empty(shape, dtype);
  convert(out, f32);
  return out;
}

/// A device copy of a host tensor, `offset_elems` elements into its allocation.
OffsetTensor device_source(const Tensor& host, int64_t offset_elems) {
  OffsetTensor t = OffsetTensor::make(host.shape(), host.dtype(), Device::cuda(0),
                                      offset_elems * (bit_width(host.dtype()) / 8));
  copy(t.view, host);
  return t;
}

bool fits(const QuantScheme& s, const Shape& shape) {
  try {
    code_shape(s, shape);
    scale_shape(s, shape);
    return true;
  } catch (const Error&) {
    return false;
  }
}

/// Quantizes `host` with the reference (host) and with CUDA (device, at the given
/// misalignment), then dequantizes both results with both kernels; returns "" if every byte
/// and every error text agrees.
std::string check_case(const QuantScheme& s, const Tensor& host, bool misalign, bool check = true) {
  const Shape& shape = host.shape();
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  const std::string ref_err = run_quantize(kRef, host, ref.view, false, check);
  OffsetTensor x = device_source(host, misalign ? 1 : 0);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  const std::string dev_err = run_quantize(kCuda, x.view, dev.view, false, check);
  if (ref_err != dev_err) return "quantize: reference '" + ref_err + "' vs cuda '" + dev_err + "'";
  if (!ref_err.empty()) return {};
  if (std::string d = compare_parts(ref.view, dev.view); !d.empty()) return "quantize " + d;
  // Dequantize the (identical) parts with both kernels to every destination.
  for (Dtype dt : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
    OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
    OffsetTensor got =
        OffsetTensor::make(shape, dt, Device::cuda(0), misalign ? bit_width(dt) / 8 : 0);
    const std::string e1 = run_dequantize(kDqRef, ref.view, want.view);
    const std::string e2 = run_dequantize(kDqCuda, dev.view, got.view);
    if (e1 != e2) return "dequantize: reference '" + e1 + "' vs cuda '" + e2 + "'";
    if (std::string d = compare_bytes(want.view, testing::to_host(got.view)); !d.empty())
      return std::string("dequantize to ") + std::string(dtype_name(dt)) + ": " + d;
  }
  return {};
}

/// Dequantizes arbitrary bytes (NaN / Inf codes and scales included) with both kernels.
std::string check_dequantize_random(const QuantScheme& s, const Shape& shape, bool misalign,
                                    std::mt19937_64& rng) {
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  auto randomize = [&](const TensorView& v) {
    if (!has_part(v)) return;
    auto* p = static_cast<uint8_t*>(v.data());
    if (v.dtype() == Dtype::i32) {  // zero points: mostly in range, some anywhere
      for (int64_t i = 0; i < v.numel(); ++i) {
        const int32_t z =
            rng() % 8 ? static_cast<int32_t>(rng() % 256) - 128 : static_cast<int32_t>(rng());
        std::memcpy(p + 4 * i, &z, 4);
      }
    } else {
      testing::fill_random(p, v.dtype(), v.numel(), rng);
    }
  };
  randomize(ref.view.codes);
  randomize(ref.view.scale);
  randomize(ref.view.zero);
  randomize(ref.view.global_scale);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  copy_parts(dev.view, ref.view);
  for (Dtype dt : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
    OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
    OffsetTensor got =
        OffsetTensor::make(shape, dt, Device::cuda(0), misalign ? bit_width(dt) / 8 : 0);
    const std::string e1 = run_dequantize(kDqRef, ref.view, want.view);
    const std::string e2 = run_dequantize(kDqCuda, dev.view, got.view);
    if (e1 != e2) return "dequantize: reference '" + e1 + "' vs cuda '" + e2 + "'";
    if (std::string d = compare_bytes(want.view, testing::to_host(got.view)); !d.empty())
      return std::string("dequantize random bytes to ") + std::string(dtype_name(dt)) + ": " + d;
  }
  return {};
}

std::string dims(const Shape& s) {
  std::string out;
  for (int i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out.empty() ? "scalar" : out;
}

// ---- a sweep over schemes, shapes, sources and alignments ---------------------------------------

TEST(QuantizeCuda, SweepMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA();
  const char* schemes[] = {"int8:tensor",
                           "int8:tensor:asym",
                           "uint8:tensor",
                           "int4:tensor",
                           "uint4:tensor",
                           "int8:token",
                           "int8:token:asym",
                           "uint8:token:scale=bf16",
                           "int4:token",
                           "uint4:token",
                           "int8:channel",
                           "int8:channel:axis=1",
                           "uint8:channel:axis=-1",
                           "int4:channel",
                           "int8:block16:scale=f16",
                           "int8:block32:asym",
                           "int4:block32",
                           "uint4:block64:scale=bf16",
                           "int4:block128:asym",
                           "int8:block256",
                           "fp8e4m3:tensor",
                           "fp8e5m2:tensor",
                           "fp8e4m3:token",
                           "fp8e5m2:token",
                           "fp8e4m3:channel",
                           "fp8e5m2:channel:axis=1",
                           "fp8e4m3:block128",
                           "fp8e5m2:block32",
                           "fp8e4m3:block128x128",
                           "fp8e5m2:block16x16",
                           "nvfp4",
                           "mxfp4",
                           "mxfp8e4m3",
                           "mxfp8e5m2",
                           "q8_0",
                           "q4_0"};
  const Shape shapes[] = {{4, 64},   {3, 5, 96}, {1, 4096},    {7, 128},  {2, 1, 640}, {130, 256},
                          {5, 7},    {0, 64},    {256, 24},    {9, 1024}, {3, 33},     {1000},
                          {2, 4100}, {1, 40960}, {1, 1, 2048}, {300, 160}};
  auto rng = testing::make_rng(202);
  int cases = 0, failures = 0;
  for (const char* text : schemes) {
    const QuantScheme s = QuantScheme::parse(text);
    const bool tame = s.format == QuantFormat::gguf;
    for (const Shape& shape : shapes) {
      if (!fits(s, shape)) continue;
      const int64_t n = numel(shape);
      const int64_t k = shape.size() ? shape[shape.size() - 1] : 1;
      std::vector<float> values(static_cast<size_t>(n));
      if (n > 0) fill_values(values.data(), n / k, k, rng, tame);
      for (Dtype src : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
        const Tensor host = host_source(values, shape, src);
        for (bool misalign : {false, true}) {
          ++cases;
          const std::string d = check_case(s, host, misalign);
          if (!d.empty() && ++failures <= 40)
            ADD_FAILURE() << text << " " << dims(shape) << " " << dtype_name(src)
                          << (misalign ? " misaligned" : "") << ": " << d;
        }
      }
      for (bool misalign : {false, true}) {
        const std::string d = check_dequantize_random(s, shape, misalign, rng);
        if (!d.empty() && ++failures <= 40)
          ADD_FAILURE() << text << " " << dims(shape) << (misalign ? " misaligned" : "") << ": "
                        << d;
      }
    }
  }
  std::printf("  %d quantize cases (+ dequantize of each), %d failures\n", cases, failures);
}

TEST(QuantizeCuda, GivenScalesMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(303);
  for (const char* text : {"int8:token", "uint8:tensor", "int4:block32:asym", "uint4:channel",
                           "fp8e4m3:token", "fp8e5m2:block128x128", "nvfp4"}) {
    const QuantScheme s = QuantScheme::parse(text);
    const Shape shape{130, 256};
    std::vector<float> values(130 * 256);
    fill_values(values.data(), 130, 256, rng, true);
    const Tensor host = host_source(values, shape, Dtype::f32);
    // Scales (and zero points) from a dynamic quantization of other data, then scaled.
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    std::vector<float> other(values.size());
    fill_values(other.data(), 130, 256, rng, true);
    ASSERT_EQ(run_quantize(kRef, host_source(other, shape, Dtype::f32), ref.view), "") << text;
    for (bool misalign : {false, true}) {
      QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
      copy_parts(dev.view, ref.view);
      OffsetTensor x = device_source(host, misalign ? 1 : 0);
      const std::string e1 = run_quantize(kRef, host, ref.view, true);
      const std::string e2 = run_quantize(kCuda, x.view, dev.view, true);
      EXPECT_EQ(e1, e2) << text;
      EXPECT_EQ(compare_parts(ref.view, dev.view), "") << text << (misalign ? " misaligned" : "");
    }
  }
}

// ---- error texts
// ---------------------------------------------------------------------------------

/// The reference's and CUDA's error texts for `values` quantized with `text`.
void expect_same_error(const char* text, const Shape& shape, const std::vector<float>& values,
                       Dtype src = Dtype::f32, bool misalign = false) {
  const QuantScheme s = QuantScheme::parse(text);
  const Tensor host = host_source(values, shape, src);
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  const std::string e1 = run_quantize(kRef, host, ref.view);
  OffsetTensor x = device_source(host, misalign ? 1 : 0);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  const std::string e2 = run_quantize(kCuda, x.view, dev.view);
  EXPECT_NE(e1, "") << text;
  EXPECT_EQ(e1, e2) << text << " " << dtype_name(src) << " " << sku_of(x.view, dev.view);
}

TEST(QuantizeCuda, NonFiniteInputsGiveTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{64, 512};
  std::vector<float> base(64 * 512);
  auto rng = testing::make_rng(404);
  fill_values(base.data(), 64, 512, rng, true);
  const char* schemes[] = {"int8:token",
                           "int8:tensor",
                           "uint8:tensor",
                           "int4:block32",
                           "fp8e4m3:token",
                           "int8:channel:axis=1",
                           "fp8e4m3:block128x128",
                           "nvfp4",
                           "mxfp4",
                           "mxfp8e5m2",
                           "q8_0",
                           "q4_0"};
  for (const char* text : schemes) {
    for (Dtype src : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
      // A NaN after an Inf (the Inf is first), and a lone NaN, in different rows.
      std::vector<float> v = base;
      v[3 * 512 + 77] = INFINITY;
      v[40 * 512 + 5] = NAN;
      expect_same_error(text, shape, v, src);
      v = base;
      v[63 * 512 + 511] = -NAN;
      v[64 * 512 - 2] = -INFINITY;
      expect_same_error(text, shape, v, src, true);
    }
  }
  // A large tensor: the first bad element wins over later ones in other blocks.
  std::vector<float> big(4096 * 1024, 0.5f);
  big[4095 * 1024 + 3] = NAN;
  big[2000 * 1024 + 1000] = INFINITY;
  big[2000 * 1024 + 1001] = NAN;
  for (const char* text : {"int8:token", "int8:tensor", "nvfp4", "q8_0"})
    expect_same_error(text, {4096, 1024}, big, Dtype::bf16);
}

TEST(QuantizeCuda, GgufScaleOverflowGivesTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  std::vector<float> v(8 * 256, 1.0f);
  v[5 * 256 + 100] = 3e7f;  // row 5, block 3: d = 3e7 / 127 overflows f16
  v[6 * 256 + 10] = -9e6f;
  expect_same_error("q8_0", {8, 256}, v);
  expect_same_error("q4_0", {8, 256}, v);
  expect_same_error("q8_0", {8, 256}, v, Dtype::bf16, true);
}

TEST(QuantizeCuda, InvalidGivenScalesGiveTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{16, 64};
  const std::vector<float> values(16 * 64, 0.25f);
  const Tensor host = host_source(values, shape, Dtype::f32);
  struct Case {
    const char* scheme;
    int64_t group;
    float scale;
    int32_t zero;
  };
  const Case cases[] = {{"int8:token", 5, -1.0f, 0},
                        {"int8:token", 3, 1e-40f, 0},
                        {"uint8:token", 7, 0.5f, 300},
                        {"uint4:block32", 4, 0.5f, -1},
                        {"fp8e4m3:token", 2, NAN, 0},
                        {"fp8e5m2:tensor", 0, INFINITY, 0},
                        {"nvfp4", 0, -2.0f, 0},
                        {"int8:token:scale=bf16", 9, -1e-3f, 0},
                        {"int8:block16:scale=f16", 11, 65504.0f * 2, 0}};
  for (const Case& c : cases) {
    const QuantScheme s = QuantScheme::parse(c.scheme);
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    ASSERT_EQ(run_quantize(kRef, host, ref.view), "") << c.scheme;
    if (s.format == QuantFormat::nvfp4) {
      ref.view.global_scale.data_as<float>()[0] = c.scale;
    } else {
      Tensor one = Tensor::empty({1}, Dtype::f32);
      one.data_as<float>()[0] = c.scale;
      // The group's scale in the scale dtype (flat index c.group).
      Tensor conv = Tensor::empty({1}, ref.view.scale.dtype());
      convert(conv, one);
      const int64_t bytes = bit_width(ref.view.scale.dtype()) / 8;
      std::memcpy(static_cast<uint8_t*>(ref.view.scale.data()) + c.group * bytes, conv.data(),
                  static_cast<size_t>(bytes));
      if (has_part(ref.view.zero)) ref.view.zero.data_as<int32_t>()[c.group] = c.zero;
    }
    QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
    copy_parts(dev.view, ref.view);
    OffsetTensor x = device_source(host, 0);
    const std::string e1 = run_quantize(kRef, host, ref.view, true);
    const std::string e2 = run_quantize(kCuda, x.view, dev.view, true);
    EXPECT_NE(e1, "") << c.scheme;
    EXPECT_EQ(e1, e2) << c.scheme;
  }
}

// ---- check_finite = false
// ------------------------------------------------------------------------

TEST(QuantizeCuda, CheckFiniteOffGivesTheSameBitsAndSkipsTheCheck) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(505);
  const Shape shape{96, 1024};
  std::vector<float> values(96 * 1024);
  fill_values(values.data(), 96, 1024, rng, true);
  for (const char* text : {"int8:token", "int8:tensor", "int4:block32", "fp8e4m3:token", "nvfp4",
                           "mxfp4", "q8_0", "q4_0", "fp8e4m3:block128x128"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (Dtype src : {Dtype::f32, Dtype::bf16}) {
      const Tensor host = host_source(values, shape, src);
      EXPECT_EQ(check_case(s, host, false, /*check=*/false), "") << text;
      // Non-finite inputs: no error, no fault; the stream stays usable.
      std::vector<float> bad = values;
      bad[17] = NAN;
      bad[5000] = INFINITY;
      OffsetTensor x = device_source(host_source(bad, shape, src), 0);
      QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
      EXPECT_EQ(run_quantize(kCuda, x.view, dev.view, false, /*check=*/false), "") << text;
      EXPECT_NE(run_quantize(kCuda, x.view, dev.view, false, /*check=*/true), "") << text;
    }
  }
}

// ---- determinism
// ---------------------------------------------------------------------------------

TEST(QuantizeCuda, RepeatedRunsGiveIdenticalBits) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(606);
  const Shape shape{2048, 2048};
  std::vector<float> values(2048 * 2048);
  fill_values(values.data(), 2048, 2048, rng, true);
  const Tensor host = host_source(values, shape, Dtype::bf16);
  OffsetTensor x = device_source(host, 0);
  OffsetTensor xm = device_source(host, 1);
  for (const char* text :
       {"int8:tensor", "uint8:tensor", "fp8e4m3:tensor", "nvfp4", "int8:channel:axis=1",
        "uint8:channel:axis=1", "fp8e4m3:block128x128", "int8:token", "mxfp4", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (bool misalign : {false, true}) {
      const TensorView& src = misalign ? xm.view : x.view;
      QBuf first = QBuf::make(s, shape, Device::cuda(0), false);
      ASSERT_EQ(run_quantize(kCuda, src, first.view), "") << text;
      for (int rep = 0; rep < 3; ++rep) {
        QBuf again = QBuf::make(s, shape, Device::cuda(0), false);
        ASSERT_EQ(run_quantize(kCuda, src, again.view), "") << text;
        EXPECT_EQ(compare_parts(first.view, again.view), "") << text << " run " << rep;
      }
    }
  }
}

// ---- the benchmark's schemes, full size --------------------------------------------------------

TEST(QuantizeCuda, BenchmarkSchemesAtFullSizeMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  const int64_t rows = 16384, k = 8192;
  auto rng = testing::make_rng(101);
  std::vector<float> values(static_cast<size_t>(rows * k));
  // Normal values with a per-row magnitude (the bench's data is plain N(0, 1)).
  {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> expo(-8, 8);
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = std::ldexp(1.0f, expo(rng));
      for (int64_t j = 0; j < k; ++j) values[static_cast<size_t>(r * k + j)] = normal(rng) * scale;
    }
  }
  const Tensor bf16 = host_source(values, {rows, k}, Dtype::bf16);
  const Tensor f32 = host_source(values, {rows, k}, Dtype::f32);
  for (const char* text :
       {"int8:token", "fp8e4m3:token", "int4:block32", "nvfp4", "mxfp4", "q8_0", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    const bool gguf = s.format == QuantFormat::gguf;
    const Tensor& host = gguf ? f32 : bf16;
    SCOPED_TRACE(text);
    QBuf ref = QBuf::make(s, {rows, k}, Device::cpu(), false);
    ASSERT_EQ(run_quantize(kRef, host, ref.view), "");
    OffsetTensor x = device_source(host, 0);
    QBuf dev = QBuf::make(s, {rows, k}, Device::cuda(0), false);
    std::printf("  %-14s %s\n", text, sku_of(x.view, dev.view).c_str());
    ASSERT_EQ(run_quantize(kCuda, x.view, dev.view), "");
    EXPECT_EQ(compare_parts(ref.view, dev.view), "");
    const Dtype dt = gguf ? Dtype::f32 : Dtype::bf16;
    OffsetTensor want = OffsetTensor::make({rows, k}, dt, Device::cpu(), 0);
    OffsetTensor got = OffsetTensor::make({rows, k}, dt, Device::cuda(0), 0);
    ASSERT_EQ(run_dequantize(kDqRef, ref.view, want.view), "");
    ASSERT_EQ(run_dequantize(kDqCuda, dev.view, got.view), "");
    EXPECT_EQ(compare_bytes(want.view, testing::to_host(got.view)), "");
  }
}

}  // namespace
}  // namespace lowbit
