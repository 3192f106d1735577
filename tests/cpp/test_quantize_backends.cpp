// Every quantize and dequantize kernel on every backend against the reference kernels,
// bit for bit: codes, scales, zero points, global scales and dequantized values, and the
// same Error (code and message) wherever the reference refuses an input.
//
// Each kernel of QuantizeOp::kernels() / DequantizeOp::kernels() except the references is
// selected by name on every device of testing::test_devices() (inputs copied to the device,
// outputs poisoned with kPoison first and copied back), on:
//  * every scheme of test_quantize.cpp's list, scale=f16 / bf16 variants, channel axis=1,
//    affine variants, and every GGUF type (kernels decline what they do not implement);
//  * f32, f16 and bf16 sources; f32, f16 and bf16 destinations;
//  * shapes with rows of 1, 7 and 4099 elements, 3-d shapes, empty tensors and tensors large
//    enough for several threads' chunks (a scheme whose block does not divide the last axis
//    must refuse the shape with a clear Error);
//  * data built group by group: random magnitudes, all-zero groups, one outlier per group,
//    subnormals, exact ties at .5 of a power-of-two scale, negative maxima and +-max pairs,
//    and (separately) huge values (1e30);
//  * static (given) scales for integer, fp8 and nvfp4 schemes, including invalid ones;
//  * NaN and Inf inputs, which must give the reference's Error;
//  * dequantization of the reference's codes and of random codes.
// On the CPU every Highway target the SIMD kernels were built for and the CPU supports is
// forced in turn (the full matrix on the best one, a smaller one on the others). Each
// kernel@device counts its runs; a kernel that exists here must have run on many cases.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cpu/convert_simd.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::compare_bytes;
using testing::kPoison;

const char* const kSchemes[] = {
    // test_quantize.cpp's list
    "int8:tensor", "int8:channel", "int8:channel:axis=1", "int8:token", "int4:block32:asym",
    "int4:block128", "uint8:tensor", "uint4:block64:scale=bf16", "int8:block16:scale=f16",
    "fp8e4m3:tensor", "fp8e4m3:token", "fp8e5m2:channel", "fp8e4m3:block128",
    "fp8e4m3:block128x128", "nvfp4", "mxfp4", "mxfp8e4m3", "mxfp8e5m2", "q8_0", "q4_0", "q4_1",
    "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "q8_1",
    // scale dtypes, channel axis=1, affine and unsigned variants
    "int8:token:scale=f16", "int8:token:scale=bf16", "int4:block32:scale=f16",
    "uint8:token:scale=bf16", "int8:tensor:asym", "int8:channel:asym", "int8:channel:axis=1:asym",
    "uint8:channel:axis=1", "int4:channel:axis=1", "uint4:token", "int4:token", "int4:tensor",
    "uint4:channel", "int8:block32:asym", "int4:block16:asym:scale=bf16", "fp8e4m3:channel:axis=1",
    "fp8e5m2:token", "fp8e5m2:tensor", "fp8e5m2:block128x128", "fp8e4m3:channel:axis=-1"};

const Dtype kSources[] = {Dtype::f32, Dtype::f16, Dtype::bf16};
const Dtype kDsts[] = {Dtype::f32, Dtype::f16, Dtype::bf16};

const char* const kShapes[] = {"1",      "7",       "4099",    "3x1",     "5x7",
                               "2x4099", "2x3x64",  "4x256",   "0",       "3x0x5",
                               "0x32",   "300x200", "40x4096", "33x4099", "17x96"};
// The smaller matrix for the other Highway targets.
const char* const kShapesLite[] = {"5x7", "2x3x64", "4x256", "17x96", "33x4099"};
// More shapes for GGUF types, whose rows must be whole blocks (32 or 256 values), so most
// shapes above do not fit them: one block, one row, odd row counts (7, 129, 65), 3-d.
const char* const kShapesGguf[] = {"32", "256", "1x256", "7x768", "3x5x256", "129x32", "65x512"};

// ---- inputs --------------------------------------------------------------------------------

enum class Data { mixed, huge };

/// f32 values group by group (segments of `seg` elements), each segment one pattern.
std::vector<float> make_values(int64_t n, int64_t seg, Data mode, std::mt19937_64& rng) {
  std::vector<float> x(static_cast<size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 7), expo(-8, 6);
  for (int64_t s0 = 0; s0 < n; s0 += seg) {
    const int64_t s1 = std::min(n, s0 + seg);
    const int pattern = pick(rng);
    const float mag = std::ldexp(1.0f, expo(rng));
    auto at = [&](int64_t i) -> float& { return x[static_cast<size_t>(i)]; };
    auto pos = [&] { return s0 + static_cast<int64_t>(rng() % static_cast<uint64_t>(s1 - s0)); };
    for (int64_t i = s0; i < s1; ++i) at(i) = normal(rng) * mag;
    switch (pattern) {
      case 0:  // all zero (with signed zeros)
        for (int64_t i = s0; i < s1; ++i) at(i) = (rng() & 1) ? -0.0f : 0.0f;
        break;
      case 1:  // one outlier
        for (int64_t i = s0; i < s1; ++i) at(i) *= 0.01f;
        at(pos()) = ((rng() & 1) ? -1.0f : 1.0f) * mag * 300.0f;
        break;
      case 2:  // subnormals (f32), some normal tiny values
        for (int64_t i = s0; i < s1; ++i)
          at(i) = std::ldexp(normal(rng), -130 - static_cast<int>(rng() % 16));
        if (rng() & 1) at(pos()) = 1e-37f;
        break;
      case 3: {  // ties: multiples of half a power of two, the extreme qmax * 2^e
        const int qmax = (rng() & 1) ? 127 : 7;
        const float unit = std::ldexp(1.0f, expo(rng));
        for (int64_t i = s0; i < s1; ++i) {
          // Often +-0.5 and +-1.5 units: where round-half-away and its imitations part.
          const int k = (rng() & 1) ? static_cast<int>(rng() % 4) - 2
                                    : static_cast<int>(rng() % (2 * qmax + 1)) - qmax;
          at(i) = (static_cast<float>(k) + 0.5f) * unit;
        }
        // Half of the ties move by one ulp either way: rounding rules that agree on exact
        // ties (roundf vs trunc(x + 0.5)) differ just beside them.
        for (int64_t i = s0; i < s1; ++i)
          if (rng() & 1) at(i) = std::nextafter(at(i), (rng() & 1) ? INFINITY : -INFINITY);
        at(pos()) = static_cast<float>(qmax) * unit * ((rng() & 1) ? -1.0f : 1.0f);
        break;
      }
      case 4:  // negative maximum
        at(pos()) = -std::fabs(at(s0)) * 50.0f - mag;
        break;
      case 5: {  // +max and -max both present: the first one decides (q4_0)
        const int64_t a = pos(), b = pos();
        at(a) = mag * 40.0f;
        at(b) = -mag * 40.0f;
        break;
      }
      case 6:  // fp8 / fp4 / bf16 rounding ties and format edges
        for (int64_t i = s0; i < s1; ++i) {
          static const float edges[] = {
              448.0f, 464.0f, 57344.0f,          6.0f,         5.0f,         0.25f, 0.75f,
              1.5f,   3.5f,   1.0f + 1.0f / 256, 0.001953125f, 0.0009765625f};
          const float m1 = std::min(mag, 1.0f);  // f16 sources stay finite
          at(i) = edges[rng() % std::size(edges)] * ((rng() & 1) ? -m1 : m1);
        }
        break;
      default:
        break;  // plain random
    }
    if (mode == Data::huge && (rng() % 3 == 0)) at(pos()) = (rng() & 1) ? 1e30f : -1e30f;
  }
  return x;
}

/// The values as a host tensor of `dtype` (rounded to it; f16 may overflow to Inf only in
/// huge mode: normal values stay below 65504).
Tensor make_source(const std::vector<float>& x, const Shape& shape, Dtype dtype) {
  Tensor f = Tensor::empty(shape, Dtype::f32);
  if (!x.empty()) std::memcpy(f.data(), x.data(), x.size() * sizeof(float));
  if (dtype == Dtype::f32) return f;
  Tensor t = Tensor::empty(shape, dtype);
  if (t.numel() > 0) convert(t, f);
  return t;
}

// ---- running one kernel -----------------------------------------------------------------------

struct QOut {
  bool threw = false;
  ErrorCode code = ErrorCode::internal;
  std::string message;
  Tensor codes, scale, zero, global;
};

Tensor host_copy(const Tensor& t) {
  if (t.numel() == 0) return Tensor();
  return testing::to_host(t);
}

void poison(const Tensor& t) {
  if (t.numel() > 0) fill_bytes(t, kPoison);
}

/// Runs quantize kernel `kernel` on `device`. `given`: host scales / zero points / global
/// scale to use (static quantization), copied into the destination first.
QOut run_quantize(const std::string& kernel, Device device, const Tensor& src_host,
                  const QuantScheme& scheme, const QuantizedTensor* given,
                  bool check_finite = true) {
  QOut out;
  QuantizedTensor q = QuantizedTensor::allocate(scheme, src_host.shape(), device);
  poison(q.codes);
  poison(q.scale);
  poison(q.zero);
  poison(q.global_scale);
  if (given) {
    if (scheme.format != QuantFormat::nvfp4) {
      if (given->scale.numel() > 0) copy(q.scale, given->scale);
      if (given->zero.numel() > 0) copy(q.zero, given->zero);
    } else {
      copy(q.global_scale, given->global_scale);
    }
  }
  const Tensor src = testing::to_device(src_host, device);
  Preference pref;
  pref.kernel = kernel;
  QuantizeDesc desc = QuantizeDesc::for_views(q.view(), src, given != nullptr);
  desc.check_finite = check_finite;
  const QuantizePlan plan = QuantizePlan::select(desc, pref);
  EXPECT_EQ(plan.sku().kernel, kernel);
  const Stream stream = Stream::default_for(device);
  try {
    plan.run(stream, {}, {src, q.view()});
    stream.synchronize();
  } catch (const Error& e) {
    out.threw = true;
    out.code = e.code();
    out.message = e.message();
  }
  out.codes = host_copy(q.codes);
  out.scale = host_copy(q.scale);
  out.zero = host_copy(q.zero);
  out.global = host_copy(q.global_scale);
  return out;
}

Tensor run_dequantize(const std::string& kernel, Device device, const QuantizedTensor& host_q,
                      Dtype dst_dtype) {
  QuantizedTensor q = QuantizedTensor::allocate(host_q.scheme, host_q.shape, device);
  if (host_q.codes.numel() > 0) copy(q.codes, host_q.codes);
  if (host_q.scale.numel() > 0) copy(q.scale, host_q.scale);
  if (host_q.zero.numel() > 0) copy(q.zero, host_q.zero);
  if (host_q.global_scale.numel() > 0) copy(q.global_scale, host_q.global_scale);
  const Tensor dst = Tensor::empty(host_q.shape, dst_dtype, device);
  poison(dst);
  Preference pref;
  pref.kernel = kernel;
  const DequantizePlan plan =
      DequantizePlan::select(DequantizeDesc::for_views(dst, q.view()), pref);
  EXPECT_EQ(plan.sku().kernel, kernel);
  const Stream stream = Stream::default_for(device);
  plan.run(stream, {}, {q.view(), dst});
  stream.synchronize();
  return testing::to_host(dst);
}

std::string compare_out(const QOut& want, const QOut& got) {
  if (want.threw != got.threw)
    return fmt::format("reference {} but the kernel {}",
                       want.threw ? "threw '" + want.message + "'" : "succeeded",
                       got.threw ? "threw '" + got.message + "'" : "succeeded");
  if (want.threw) {
    if (want.code != got.code || want.message != got.message)
      return fmt::format("errors differ: reference '{}', kernel '{}'", want.message, got.message);
    return {};
  }
  std::string diff;
  auto part = [&](const char* name, const Tensor& a, const Tensor& b) {
    if (a.numel() == 0 && b.numel() == 0) return;
    const std::string d = compare_bytes(a, b);
    if (!d.empty() && diff.empty()) diff = std::string(name) + ": " + d;
  };
  part("codes", want.codes, got.codes);
  part("scale", want.scale, got.scale);
  part("zero", want.zero, got.zero);
  part("global_scale", want.global, got.global);
  return diff;
}

/// A QuantizedTensor (host) holding a quantize output.
QuantizedTensor as_quantized(const QuantScheme& s, const Shape& shape, const QOut& o) {
  QuantizedTensor q = QuantizedTensor::allocate(s, shape);
  if (q.codes.numel() > 0) copy(q.codes, o.codes);
  if (q.scale.numel() > 0) copy(q.scale, o.scale);
  if (q.zero.numel() > 0) copy(q.zero, o.zero);
  if (q.global_scale.numel() > 0) copy(q.global_scale, o.global);
  return q;
}

QOut as_out(const QuantizedTensor& q) {
  QOut o;
  if (q.codes.numel() > 0) o.codes = testing::to_host(q.codes);
  if (q.scale.numel() > 0) o.scale = testing::to_host(q.scale);
  if (q.zero.numel() > 0) o.zero = testing::to_host(q.zero);
  if (q.global_scale.numel() > 0) o.global = testing::to_host(q.global_scale);
  return o;
}

/// Random code bytes; GGUF blocks keep finite f16 scale fields (a NaN scale's payload
/// would depend on the compiler's operand order, which no kernel promises).
void randomize_codes(QuantizedTensor& q, std::mt19937_64& rng) {
  auto* p = q.codes.data_as<uint8_t>();
  const int64_t bytes = storage_bytes(q.codes.dtype(), q.codes.numel());
  for (int64_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(rng());
  if (q.scheme.format != QuantFormat::gguf) return;
  const auto type = static_cast<gguf::GgmlType>(q.scheme.gguf_type);
  const gguf::BlockLayout* layout = gguf::block_layout(type);
  std::vector<int> fields;
  switch (type) {
    case gguf::GgmlType::q4_1:
    case gguf::GgmlType::q5_1:
    case gguf::GgmlType::q8_1:
    case gguf::GgmlType::q4_K:
    case gguf::GgmlType::q5_K:
      fields = {0, 2};
      break;
    case gguf::GgmlType::q2_K:
      fields = {80, 82};
      break;
    case gguf::GgmlType::q3_K:
      fields = {108};
      break;
    case gguf::GgmlType::q6_K:
      fields = {208};
      break;
    case gguf::GgmlType::q8_K:
      fields = {};  // f32 d: make it finite below
      break;
    default:
      fields = {0};
      break;
  }
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t b = 0; b < bytes / layout->block_bytes; ++b) {
    uint8_t* blk = p + b * layout->block_bytes;
    for (int off : fields) {
      const uint16_t h = f32_to_f16(u(rng));
      std::memcpy(blk + off, &h, 2);
    }
    if (type == gguf::GgmlType::q8_K) {
      const float d = u(rng);
      std::memcpy(blk, &d, 4);
    }
  }
}

// ---- the matrix -------------------------------------------------------------------------------

struct Counter {
  std::map<std::string, int> runs;
  std::map<std::string, int> gguf_runs;  ///< "kernel@device scheme", GGUF schemes only
  void add(const std::string& kernel, Device d, const QuantScheme& s) {
    ++runs[kernel + "@" + d.str()];
    if (s.format == QuantFormat::gguf) ++gguf_runs[kernel + "@" + d.str() + " " + s.str()];
  }
};

bool has_divisor_error(const QuantScheme& s, const Shape& shape, std::string* why) {
  try {
    code_shape(s, shape);
    scale_shape(s, shape);
    if (s.format == QuantFormat::gguf)
      gguf::row_bytes(static_cast<gguf::GgmlType>(s.gguf_type),
                      shape.empty() ? 1 : shape[shape.size() - 1]);
    return false;
  } catch (const Error& e) {
    *why = e.what();
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument) << e.what();
    return true;
  }
}

/// Group length used to pattern the data (so patterns fill whole groups).
int64_t pattern_segment(const QuantScheme& s, const Shape& shape) {
  if (s.granularity == Granularity::block || s.granularity == Granularity::block2d) return s.block;
  if (s.granularity == Granularity::token && !shape.empty())
    return std::max<int64_t>(1, shape[shape.size() - 1]);
  return 32;
}

struct Matrix {
  Counter& count;
  bool lite;  // the smaller matrix (non-best Highway targets)
  bool with_cuda;
  std::mt19937_64 rng;

  std::vector<const Kernel<QuantizeOp>*> qkernels(const QuantizeDesc& probe, Device dev) {
    std::vector<const Kernel<QuantizeOp>*> out;
    for (const Kernel<QuantizeOp>* k : QuantizeOp::kernels()) {
      if (k->name() == "quantize_reference") continue;
      if (!with_cuda && dev.is_cuda()) continue;
      QuantizeDesc d = probe;
      d.device = dev;
      if (k->decline(d).empty()) out.push_back(k);
    }
    return out;
  }
  std::vector<const Kernel<DequantizeOp>*> dkernels(const DequantizeDesc& probe, Device dev) {
    std::vector<const Kernel<DequantizeOp>*> out;
    for (const Kernel<DequantizeOp>* k : DequantizeOp::kernels()) {
      if (k->name() == "dequantize_reference") continue;
      if (!with_cuda && dev.is_cuda()) continue;
      DequantizeDesc d = probe;
      d.device = dev;
      if (k->decline(d).empty()) out.push_back(k);
    }
    return out;
  }

  /// Quantize `src` with every kernel (given: static) and compare with the reference.
  /// Returns the reference's output.
  std::optional<QOut> check_quantize(const std::string& what, const Tensor& src,
                                     const QuantScheme& s, const QuantizedTensor* given,
                                     bool also_unchecked = false) {
    SCOPED_TRACE(what);
    QuantizeDesc probe;
    probe.shape = src.shape();
    probe.src = src.dtype();
    probe.src_strides = contiguous_strides(src.shape());
    probe.scheme = s;
    probe.given_scales = given != nullptr;
    std::vector<std::pair<const Kernel<QuantizeOp>*, Device>> todo;
    for (Device dev : testing::test_devices())
      for (const Kernel<QuantizeOp>* k : qkernels(probe, dev)) todo.push_back({k, dev});
    if (todo.empty()) return std::nullopt;
    QOut want = run_quantize("quantize_reference", Device::cpu(), src, s, given);
    for (auto [k, dev] : todo) {
      const QOut got = run_quantize(std::string(k->name()), dev, src, s, given);
      const std::string diff = compare_out(want, got);
      EXPECT_TRUE(diff.empty()) << k->name() << " on " << dev.str() << ": " << diff;
      count.add(std::string(k->name()), dev, s);
      if (!also_unchecked) continue;
      // check_finite off: the same bits for finite inputs; for non-finite ones no Error
      // (unspecified but memory-safe codes), except what the reference refuses for other
      // reasons (GGUF scale overflow, invalid given scales).
      const QOut loose = run_quantize(std::string(k->name()), dev, src, s, given, false);
      if (!want.threw) {
        const std::string d2 = compare_out(want, loose);
        EXPECT_TRUE(d2.empty()) << k->name() << " on " << dev.str()
                                << " (check_finite off): " << d2;
      } else if (want.message.find("finite inputs") != std::string::npos) {
        EXPECT_FALSE(loose.threw) << k->name() << " on " << dev.str()
                                  << " (check_finite off) threw: " << loose.message;
      }
    }
    return std::optional<QOut>(std::move(want));
  }

  void check_dequantize(const std::string& what, const QuantizedTensor& q) {
    for (Dtype dst : kDsts) {
      SCOPED_TRACE(what + " -> " + std::string(dtype_name(dst)));
      const DequantizeDesc probe{q.scheme, q.shape, dst, Device::cpu()};
      std::vector<std::pair<const Kernel<DequantizeOp>*, Device>> todo;
      for (Device dev : testing::test_devices())
        for (const Kernel<DequantizeOp>* k : dkernels(probe, dev)) todo.push_back({k, dev});
      if (todo.empty()) continue;
      const Tensor want = run_dequantize("dequantize_reference", Device::cpu(), q, dst);
      for (auto [k, dev] : todo) {
        const Tensor got = run_dequantize(std::string(k->name()), dev, q, dst);
        const std::string diff = compare_bytes(want, got);
        EXPECT_TRUE(diff.empty()) << k->name() << " on " << dev.str() << ": " << diff;
        count.add(std::string(k->name()), dev, q.scheme);
      }
    }
  }

  void run_scheme(const char* text) {
    const QuantScheme s = QuantScheme::parse(text);
    std::vector<const char*> shapes =
        lite ? std::vector<const char*>(std::begin(kShapesLite), std::end(kShapesLite))
             : std::vector<const char*>(std::begin(kShapes), std::end(kShapes));
    if (s.format == QuantFormat::gguf && !lite)
      shapes.insert(shapes.end(), std::begin(kShapesGguf), std::end(kShapesGguf));
    for (const char* shape_text : shapes) {
      const Shape shape = testing::parse_shape(shape_text);
      std::string why;
      if (has_divisor_error(s, shape, &why)) {
        // The shape does not fit the scheme: the plan refuses it with a clear Error.
        if (s.granularity == Granularity::block && !shape.empty() &&
            shape[shape.size() - 1] % s.block != 0)
          EXPECT_NE(why.find("multiple"), std::string::npos) << text << " " << why;
        continue;
      }
      const int64_t n = numel(shape);
      const bool big = n > 100000;
      for (Dtype src_dtype : kSources) {
        const std::string what =
            fmt::format("{} {} src={}", text, shape_text, dtype_name(src_dtype));
        const std::vector<float> x = make_values(n, pattern_segment(s, shape), Data::mixed, rng);
        const Tensor src = make_source(x, shape, src_dtype);
        const std::optional<QOut> refo =
            check_quantize("dynamic " + what, src, s, nullptr, !lite && src_dtype == Dtype::f32);
        QuantizedTensor q;
        if (refo && !refo->threw) {
          q = as_quantized(s, shape, *refo);
        } else if (!refo) {
          // No kernel but the reference quantizes this scheme (its K-quant searches are
          // slow: one source dtype for large shapes): dequantize its output.
          if (big && src_dtype != Dtype::f32) continue;
          const QOut r = run_quantize("quantize_reference", Device::cpu(), src, s, nullptr);
          if (r.threw) continue;
          q = as_quantized(s, shape, r);
        } else {
          continue;
        }
        check_dequantize("dequantize " + what, q);
        if (lite) continue;
        if (src_dtype == Dtype::f32 && n > 0 && !big) {
          QuantizedTensor r = as_quantized(s, shape, as_out(q));
          randomize_codes(r, rng);
          check_dequantize("dequantize random codes " + what, r);
        }
        if (src_dtype == Dtype::bf16 || big) continue;
        // Huge values (1e30): GGUF scales overflow f16 (the reference's Error); others scale.
        {
          const std::vector<float> h = make_values(n, pattern_segment(s, shape), Data::huge, rng);
          check_quantize("huge " + what, make_source(h, shape, src_dtype), s, nullptr);
        }
        // NaN and Inf: the same Error.
        if (n > 2) {
          std::vector<float> bad = x;
          const int64_t i = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
          bad[static_cast<size_t>(i)] = (rng() & 1) ? NAN : -NAN;
          bad[static_cast<size_t>(std::min(n - 1, i + 1 + static_cast<int64_t>(rng() % 3)))] =
              (rng() & 1) ? INFINITY : -INFINITY;
          const std::optional<QOut> e =
              check_quantize("non-finite " + what, make_source(bad, shape, src_dtype), s, nullptr);
          if (e) EXPECT_TRUE(e->threw) << what;
          std::vector<float> inf = x;
          inf[static_cast<size_t>(n - 1)] = INFINITY;
          check_quantize("last Inf " + what, make_source(inf, shape, src_dtype), s, nullptr);
        }
        // Static scales.
        if (!refo) continue;
        if (s.format == QuantFormat::gguf || s.format == QuantFormat::mxfp4 ||
            s.format == QuantFormat::mxfp8e4m3 || s.format == QuantFormat::mxfp8e5m2)
          continue;
        check_quantize("static as computed " + what, src, s, &q);
        QuantizedTensor g = as_quantized(s, shape, *refo);
        if (s.format == QuantFormat::nvfp4) {
          g.global_scale.data_as<float>()[0] *= 0.75f;
          check_quantize("static global*0.75 " + what, src, s, &g);
          g.global_scale.data_as<float>()[0] = -1.0f;
          check_quantize("static bad global " + what, src, s, &g);
          continue;
        }
        // Half the scales (codes clamp), scale 0 for group 0; then invalid values.
        for (int64_t k = 0; k < g.scale.numel(); ++k) {
          const float v = convert_detail_load(g.scale, k);
          convert_detail_store(g.scale, k, k == 0 ? 0.0f : v * 0.5f);
        }
        check_quantize("static halved " + what, src, s, &g);
        if (g.scale.numel() > 0) {
          convert_detail_store(g.scale, g.scale.numel() - 1, -1.0f);
          check_quantize("static negative scale " + what, src, s, &g);
          convert_detail_store(g.scale, g.scale.numel() - 1, 1e-39f);
          check_quantize("static tiny scale " + what, src, s, &g);
          convert_detail_store(g.scale, g.scale.numel() - 1, 0.5f);
          if (g.zero.numel() > 0) {
            g.zero.data_as<int32_t>()[0] = s.qmax() + 1;
            check_quantize("static zero out of range " + what, src, s, &g);
          }
        }
      }
    }
  }

  static float convert_detail_load(const Tensor& t, int64_t i) {
    switch (t.dtype()) {
      case Dtype::f16:
        return f16_to_f32(t.data_as<uint16_t>()[i]);
      case Dtype::bf16:
        return bf16_to_f32(t.data_as<uint16_t>()[i]);
      default:
        return t.data_as<float>()[i];
    }
  }
  static void convert_detail_store(const Tensor& t, int64_t i, float v) {
    switch (t.dtype()) {
      case Dtype::f16:
        t.data_as<uint16_t>()[i] = f32_to_f16(v);
        break;
      case Dtype::bf16:
        t.data_as<uint16_t>()[i] = f32_to_bf16(v);
        break;
      default:
        t.data_as<float>()[i] = v;
        break;
    }
  }
};

struct Target {
  int64_t bit;
  std::string name;
};

/// The Highway targets the SIMD kernels are built for that this CPU supports, best first.
std::vector<Target> simd_targets() {
  hwy::SetSupportedTargetsForTest(0);
  std::vector<Target> t;
  for (int64_t bit : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SSE4}})
    if (hwy::SupportedTargets() & bit) t.push_back({bit, hwy::TargetName(bit)});
  return t;
}

TEST(QuantizeBackends, EveryKernelMatchesReferenceOnEveryBackend) {
  Counter count;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<Target> targets = simd_targets();
  ASSERT_FALSE(targets.empty()) << "no SIMD target on this CPU";
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    hwy::SetSupportedTargetsForTest(targets[ti].bit);
    // The SIMD kernels must report the forced target.
    {
      Tensor x = Tensor::empty({4, 64}, Dtype::f32);
      const QuantizedTensor q =
          QuantizedTensor::allocate(QuantScheme::parse("int8:token"), {4, 64});
      Preference pref;
      pref.kernel = "quantize_simd";
      EXPECT_EQ(QuantizePlan::select(QuantizeDesc::for_views(q.view(), x), pref).sku().arch,
                targets[ti].name);
    }
    Matrix m{count, ti > 0, ti == 0, testing::make_rng(100 + ti)};
    for (const char* s : kSchemes) m.run_scheme(s);
    std::printf("  target %-6s %s matrix done at %.1f s\n", targets[ti].name.c_str(),
                ti == 0 ? "full" : "lite",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  hwy::SetSupportedTargetsForTest(0);
  for (const auto& [kernel, n] : count.runs)
    std::printf("  %-32s ran %d cases\n", kernel.c_str(), n);
  // Kernels that exist on this machine must have run: a test that cannot fail is a defect.
  EXPECT_GT(count.runs["quantize_simd@cpu"], 1000);
  EXPECT_GT(count.runs["dequantize_simd@cpu"], 1000);
  for (const char* type :
       {"q4_1", "q5_0", "q5_1", "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"})
    EXPECT_GE(count.gguf_runs[std::string("gguf_quantize_simd@cpu ") + type], 30) << type;
  for (const char* type : {"q8_1", "q2_K", "q3_K", "q5_K", "q8_K"})
    EXPECT_GE(count.gguf_runs[std::string("gguf_dequantize_simd@cpu ") + type], 30) << type;
  if (cuda_device_count() > 0) {
    EXPECT_GT(count.runs["quantize_cuda@cuda:0"], 200) << "the CUDA quantize kernel ran too little";
    EXPECT_GT(count.runs["dequantize_cuda@cuda:0"], 200)
        << "the CUDA dequantize kernel ran too little";
    // Every GGUF block type on the GGUF kernels, several shapes and dtypes each.
    for (const char* type : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_1", "q2_K", "q3_K", "q4_K",
                             "q5_K", "q6_K", "q8_K"}) {
      EXPECT_GE(count.gguf_runs[std::string("gguf_quantize_cuda@cuda:0 ") + type], 10) << type;
      EXPECT_GE(count.gguf_runs[std::string("gguf_dequantize_cuda@cuda:0 ") + type], 30) << type;
    }
  } else {
    std::printf("SKIPPED: no CUDA device (quantize_cuda / dequantize_cuda not run)\n");
  }
}

TEST(QuantizeBackends, LargeTensorsPastTheStreamingThreshold) {
  // Dequantized f32 outputs this large leave through non-temporal stores: a path the
  // matrix's smaller shapes do not reach. Many threads' chunks too.
  const int64_t K = 4096;
  const int64_t rows = convert_simd_detail::stream_threshold_bytes() / (K * 4) + 3;
  const Shape shape{rows, K};
  auto rng = testing::make_rng(77);
  const std::vector<float> x = make_values(rows * K, 32, Data::mixed, rng);
  const Tensor src = make_source(x, shape, Dtype::f32);
  Counter count;
  Matrix m{count, false, true, testing::make_rng(78)};
  for (const char* text : {"q8_0", "q4_0", "int8:token"}) {
    SCOPED_TRACE(text);
    const QuantScheme s = QuantScheme::parse(text);
    const std::optional<QOut> ref = m.check_quantize(std::string("large ") + text, src, s, nullptr);
    ASSERT_TRUE(ref && !ref->threw);
    const QuantizedTensor q = as_quantized(s, shape, *ref);
    const Tensor want = run_dequantize("dequantize_reference", Device::cpu(), q, Dtype::f32);
    for (const Kernel<DequantizeOp>* k : DequantizeOp::kernels()) {
      if (k->name() == "dequantize_reference") continue;
      for (Device dev : testing::test_devices()) {
        DequantizeDesc d{s, shape, Dtype::f32, dev};
        if (!k->decline(d).empty()) continue;
        EXPECT_EQ(compare_bytes(want, run_dequantize(std::string(k->name()), dev, q, Dtype::f32)),
                  "")
            << k->name() << " on " << dev.str();
        count.add(std::string(k->name()), dev, s);
      }
    }
  }
  EXPECT_GE(count.runs["quantize_simd@cpu"], 3);
  EXPECT_GE(count.runs["dequantize_simd@cpu"], 3);
}

TEST(QuantizeBackends, SimdDeclinesWithReasons) {
  // Strided sources, f64 and the K-quant quantizers fall to the reference, with a reason.
  const Kernel<QuantizeOp>* simd = nullptr;
  for (const Kernel<QuantizeOp>* k : QuantizeOp::kernels())
    if (k->name() == "quantize_simd") simd = k;
  ASSERT_NE(simd, nullptr);
  QuantizeDesc d;
  d.shape = {4, 64};
  d.src_strides = {1, 4};
  d.scheme = QuantScheme::parse("int8:token");
  EXPECT_NE(simd->decline(d).find("contiguous"), std::string::npos);
  d.src_strides = contiguous_strides(d.shape);
  EXPECT_EQ(simd->decline(d), "");
  d.src = Dtype::f64;
  EXPECT_NE(simd->decline(d).find("f64"), std::string::npos);
  d.src = Dtype::f32;
  d.shape = {4, 256};
  d.src_strides = contiguous_strides(d.shape);
  d.scheme = QuantScheme::parse("q4_K");
  EXPECT_NE(simd->decline(d).find("q4_K"), std::string::npos);
  // Strided views still quantize (through the reference) with the same codes.
  Tensor t = Tensor::empty({64, 4}, Dtype::f32);
  auto rng = testing::make_rng(9);
  const std::vector<float> v = make_values(256, 32, Data::mixed, rng);
  std::memcpy(t.data(), v.data(), 1024);
  const TensorView strided(t.data(), Dtype::f32, {4, 64}, {1, 4});
  Tensor c = Tensor::empty({4, 64}, Dtype::f32);
  copy(c, strided);
  const QuantScheme token = QuantScheme::parse("int8:token");
  EXPECT_EQ(compare_bytes(quantize(c, token).codes, quantize(strided, token).codes), "");
}

}  // namespace
}  // namespace lowbit
