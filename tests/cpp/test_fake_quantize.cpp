// fake_quantize and fake_quantize_backward (include/lowbit/fake_quantize.hpp,
// docs/formats.md "Fake quantization and its gradients"):
//  * the reference forward equals the quantize op then the dequantize op, bit for bit (values,
//    scales, zero points), dynamic and static, for every integer / fp8 scheme below;
//  * every other kernel (SIMD on every Highway target this CPU has, CUDA where a GPU is)
//    equals the reference bit for bit: y, scales, zero points, dx, dscale, dzero, and the
//    same Error (code and message) wherever the reference refuses an input; outputs are
//    poisoned first, so unwritten elements show;
//  * shapes with rows of 1, 7 and 4099 elements, 3-d shapes, empty tensors, tensors large
//    enough for several threads' chunks; data built group by group (zero groups, outliers,
//    subnormals, ties, fp8 edges, huge values); f32 / f16 / bf16 on both sides;
//  * dscale / dzero against an independent long-double computation of the definition
//    (within one f32 ulp plus 2^-40 of the sum of |terms|), LSQ's factor, determinism
//    across thread counts;
//  * NaN / Inf in x and dy, invalid given scales and zero points: the reference's Error
//    (first bad index), and check_finite = false runs without one;
//  * the descriptor checks, the one-liners and the worked examples of docs/formats.md.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hwy/targets.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.hpp"
#include "lowbit/fake_quantize.hpp"
#include "lowbit/quantize.hpp"
#include "ops/convert/convert_element.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::compare_bytes;
using testing::expect_error;
using testing::kPoison;

const char* const kSchemes[] = {"int8:tensor",
                                "int8:channel",
                                "int8:channel:axis=1",
                                "int8:token",
                                "int8:token:asym",
                                "uint8:tensor",
                                "uint8:channel",
                                "int4:block32:asym",
                                "int4:block128",
                                "uint4:block64:scale=bf16",
                                "int8:block16:scale=f16",
                                "int8:tensor:asym",
                                "int4:token",
                                "uint4:token",
                                "int8:token:scale=bf16",
                                "uint8:channel:axis=1",
                                "int4:channel:axis=-1:asym",
                                "fp8e4m3:tensor",
                                "fp8e4m3:token",
                                "fp8e5m2:channel",
                                "fp8e4m3:block128",
                                "fp8e4m3:block128x128",
                                "fp8e5m2:token",
                                "fp8e4m3:channel:axis=-1"};

const char* const kShapes[] = {"1",      "7",      "4099",    "3x1",    "5x7",  "2x4099",
                               "2x3x64", "4x256",  "0",       "3x0x5",  "0x32", "300x200",
                               "17x96",  "9x4099", "130x257", "33x4099"};
const char* const kShapesLite[] = {"5x7", "2x3x64", "4x256", "17x96", "9x4099"};

const Dtype kFloats[] = {Dtype::f32, Dtype::f16, Dtype::bf16};

// ---- inputs ----------------------------------------------------------------------------------

/// f32 values segment by segment (segments of `seg` elements), each one pattern.
std::vector<float> make_values(int64_t n, int64_t seg, bool huge, std::mt19937_64& rng) {
  std::vector<float> x(static_cast<size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 7), expo(-8, 6);
  seg = std::max<int64_t>(seg, 1);
  for (int64_t s0 = 0; s0 < n; s0 += seg) {
    const int64_t s1 = std::min(n, s0 + seg);
    const float mag = std::ldexp(1.0f, expo(rng));
    auto at = [&](int64_t i) -> float& { return x[static_cast<size_t>(i)]; };
    auto pos = [&] { return s0 + static_cast<int64_t>(rng() % static_cast<uint64_t>(s1 - s0)); };
    for (int64_t i = s0; i < s1; ++i) at(i) = normal(rng) * mag;
    switch (pick(rng)) {
      case 0:  // all zero, signed zeros
        for (int64_t i = s0; i < s1; ++i) at(i) = (rng() & 1) ? -0.0f : 0.0f;
        break;
      case 1:  // one outlier
        for (int64_t i = s0; i < s1; ++i) at(i) *= 0.01f;
        at(pos()) = ((rng() & 1) ? -1.0f : 1.0f) * mag * 300.0f;
        break;
      case 2:  // f32 subnormals and tiny normals
        for (int64_t i = s0; i < s1; ++i)
          at(i) = std::ldexp(normal(rng), -130 - static_cast<int>(rng() % 16));
        if (rng() & 1) at(pos()) = 1e-37f;
        break;
      case 3: {  // ties of a power-of-two unit, and one ulp beside them
        const float unit = std::ldexp(1.0f, expo(rng));
        for (int64_t i = s0; i < s1; ++i) {
          at(i) = (static_cast<float>(static_cast<int>(rng() % 300) - 150) + 0.5f) * unit;
          if (rng() & 1) at(i) = std::nextafter(at(i), (rng() & 1) ? INFINITY : -INFINITY);
        }
        break;
      }
      case 4:  // negative maximum
        at(pos()) = -std::fabs(at(s0)) * 50.0f - mag;
        break;
      case 5:  // fp8 edges (448, 464, 57344, ...)
        for (int64_t i = s0; i < s1; ++i) {
          static const float edges[] = {448.0f, 464.0f, 57344.0f, 6.0f,
                                        0.75f,  1.5f,   3.5f,     0.001953125f};
          at(i) =
              edges[rng() % std::size(edges)] * ((rng() & 1) ? -1.0f : 1.0f) * std::min(mag, 1.0f);
        }
        break;
      default:
        break;
    }
    if (huge && rng() % 3 == 0) at(pos()) = (rng() & 1) ? 1e30f : -1e30f;
  }
  return x;
}

Tensor from_values(const std::vector<float>& x, const Shape& shape, Dtype dtype) {
  Tensor f = Tensor::empty(shape, Dtype::f32);
  if (!x.empty()) std::memcpy(f.data(), x.data(), x.size() * sizeof(float));
  if (dtype == Dtype::f32) return f;
  Tensor t = Tensor::empty(shape, dtype);
  if (t.numel() > 0) convert(t, f);
  return t;
}

Dtype scale_dtype(const QuantScheme& s) { return s.is_integer() ? s.scale_dtype : Dtype::f32; }
bool is_affine(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }

int64_t segment_of(const QuantScheme& s, const Shape& shape) {
  const int64_t k = shape.size() ? shape[shape.size() - 1] : 1;
  if (s.granularity == Granularity::block || s.granularity == Granularity::block2d)
    return std::min<int64_t>(k, s.block);
  return std::max<int64_t>(k, 1);
}

void poison(const Tensor& t) {
  if (t.numel() > 0) fill_bytes(t, kPoison);
}

Tensor host_copy(const Tensor& t) {
  if (t.numel() == 0) return Tensor();
  return testing::to_host(t);
}

Tensor on_device(const Tensor& host, Device device) {
  if (!host.data() && host.numel() == 0 && host.shape().size() == 0) return Tensor();
  return testing::to_device(host, device);
}

// ---- running kernels ----------------------------------------------------------------------------

struct Out {
  bool threw = false;
  ErrorCode code = ErrorCode::internal;
  std::string message;
  Tensor a, b, c;  // forward: y, scale, zero; backward: dx, dscale, dzero
};

/// Given scales / zero points (host) for a static run.
struct Given {
  Tensor scale, zero;
};

Out run_forward(const std::string& kernel, Device device, const Tensor& src_host, Dtype dst_dtype,
                const QuantScheme& s, const Given* given, bool check_finite = true) {
  Out out;
  const Shape ss = scale_shape(s, src_host.shape());
  const Tensor src = testing::to_device(src_host, device);
  Tensor dst = Tensor::empty(src_host.shape(), dst_dtype, device);
  Tensor scale = Tensor::empty(ss, scale_dtype(s), device);
  Tensor zero = is_affine(s) ? Tensor::empty(ss, Dtype::i32, device) : Tensor();
  poison(dst);
  poison(scale);
  poison(zero);
  if (given) {
    if (scale.numel() > 0) copy(scale, given->scale);
    if (zero.numel() > 0) copy(zero, given->zero);
  }
  Preference pref;
  pref.kernel = kernel;
  FakeQuantizeDesc desc = FakeQuantizeDesc::for_views(dst, src, s, given != nullptr);
  desc.check_finite = check_finite;
  const FakeQuantizePlan plan = FakeQuantizePlan::select(desc, pref);
  EXPECT_EQ(plan.sku().kernel, kernel);
  const Stream stream = Stream::default_for(device);
  try {
    plan.run(stream, {}, {src, dst, scale, zero});
    stream.synchronize();
  } catch (const Error& e) {
    out.threw = true;
    out.code = e.code();
    out.message = e.message();
  }
  out.a = host_copy(dst);
  out.b = host_copy(scale);
  out.c = host_copy(zero);
  return out;
}

struct BwdOptions {
  bool scale_grad = false, zero_grad = false, lsq = false, check = true;
};

Out run_backward(const std::string& kernel, Device device, const Tensor& x_host,
                 const Tensor& dy_host, const QuantScheme& s, const Given& given,
                 const BwdOptions& o) {
  Out out;
  const Shape ss = scale_shape(s, x_host.shape());
  const Tensor x = testing::to_device(x_host, device);
  const Tensor dy = testing::to_device(dy_host, device);
  Tensor scale = Tensor::empty(ss, scale_dtype(s), device);
  Tensor zero = is_affine(s) ? Tensor::empty(ss, Dtype::i32, device) : Tensor();
  if (scale.numel() > 0) copy(scale, given.scale);
  if (zero.numel() > 0) copy(zero, given.zero);
  Tensor dx = Tensor::empty(x_host.shape(), dy_host.dtype(), device);
  Tensor dscale = o.scale_grad ? Tensor::empty(ss, Dtype::f32, device) : Tensor();
  Tensor dzero = o.zero_grad ? Tensor::empty(ss, Dtype::f32, device) : Tensor();
  poison(dx);
  poison(dscale);
  poison(dzero);
  Preference pref;
  pref.kernel = kernel;
  FakeQuantizeBackwardDesc desc =
      FakeQuantizeBackwardDesc::for_views(dx, dy, x, s, o.scale_grad, o.zero_grad);
  desc.lsq_grad_scale = o.lsq;
  desc.check_finite = o.check;
  const FakeQuantizeBackwardPlan plan = FakeQuantizeBackwardPlan::select(desc, pref);
  EXPECT_EQ(plan.sku().kernel, kernel);
  const Stream stream = Stream::default_for(device);
  try {
    plan.run(stream, {}, {dy, x, scale, zero, dx, dscale, dzero});
    stream.synchronize();
  } catch (const Error& e) {
    out.threw = true;
    out.code = e.code();
    out.message = e.message();
  }
  out.a = host_copy(dx);
  out.b = host_copy(dscale);
  out.c = host_copy(dzero);
  return out;
}

std::string compare_out(const Out& want, const Out& got, const char* const names[3]) {
  if (want.threw != got.threw)
    return fmt::format("reference {} but the kernel {}",
                       want.threw ? "threw '" + want.message + "'" : "succeeded",
                       got.threw ? "threw '" + got.message + "'" : "succeeded");
  if (want.threw) {
    if (want.code != got.code || want.message != got.message)
      return fmt::format("errors differ: reference '{}', kernel '{}'", want.message, got.message);
    return {};
  }
  const Tensor* w[] = {&want.a, &want.b, &want.c};
  const Tensor* g[] = {&got.a, &got.b, &got.c};
  for (int i = 0; i < 3; ++i) {
    if (w[i]->numel() == 0 && g[i]->numel() == 0) continue;
    const std::string d = compare_bytes(*w[i], *g[i]);
    if (!d.empty()) return std::string(names[i]) + ": " + d;
  }
  return {};
}

const char* const kFwdNames[] = {"y", "scale", "zero"};

/// quantize + dequantize against fake_quantize: the same values, or both an Error of the
/// same code (the texts name different ops).
std::string compare_with_ops(const Out& ops, const Out& fq, bool with_scales = true) {
  if (ops.threw && fq.threw)
    return ops.code == fq.code ? std::string()
                               : fmt::format("'{}' vs '{}'", ops.message, fq.message);
  if (ops.threw != fq.threw || with_scales) return compare_out(ops, fq, kFwdNames);
  if (ops.a.numel() == 0 && fq.a.numel() == 0) return {};
  const std::string d = compare_bytes(ops.a, fq.a);
  return d.empty() ? d : "y: " + d;
}
const char* const kBwdNames[] = {"dx", "dscale", "dzero"};

/// Static scales and zero points derived from the reference's dynamic ones: scaled by 1,
/// 0.5, 0.31 or 2 (more or less clipping), some groups 0; zero points random in range.
Given make_given(const QuantScheme& s, const Shape& shape, const Out& dynamic,
                 std::mt19937_64& rng) {
  Given g;
  const Shape ss = scale_shape(s, shape);
  g.scale = Tensor::empty(ss, scale_dtype(s));
  if (is_affine(s)) g.zero = Tensor::empty(ss, Dtype::i32);
  static const float factors[] = {1.0f, 0.5f, 0.31f, 1.0f, 2.0f};
  for (int64_t i = 0; i < g.scale.numel(); ++i) {
    float v = dynamic.b.numel() > 0 ? convert_detail::load_f32(dynamic.b.data(), scale_dtype(s), i)
                                    : 0.01f;
    if (!std::isfinite(v)) v = 0.01f;
    v *= factors[rng() % std::size(factors)];
    if (rng() % 11 == 0) v = 0.0f;
    if (v != 0.0f && v < 1.2e-38f) v = 1.2e-38f;
    convert_detail::store_f32(g.scale.data(), scale_dtype(s), i, v, Saturation::finite);
  }
  for (int64_t i = 0; i < g.zero.numel(); ++i)
    g.zero.data_as<int32_t>()[i] =
        s.qmin() + static_cast<int32_t>(rng() % static_cast<uint64_t>(s.qmax() - s.qmin() + 1));
  return g;
}

/// quantize then dequantize through the ops (CPU, default kernels), as an Out.
Out quantize_dequantize(const Tensor& src, Dtype dst_dtype, const QuantScheme& s,
                        const Given* given) {
  Out out;
  QuantizedTensor q = QuantizedTensor::allocate(s, src.shape());
  if (given) {
    if (q.scale.numel() > 0) copy(q.scale, given->scale);
    if (q.zero.numel() > 0) copy(q.zero, given->zero);
  }
  try {
    quantize_into(q.view(), src, given != nullptr);
    out.a = Tensor::empty(src.shape(), dst_dtype);
    if (src.numel() > 0) dequantize_into(out.a, q.view());
  } catch (const Error& e) {
    out.threw = true;
    out.code = e.code();
    out.message = e.message();
  }
  out.b = host_copy(q.scale);
  out.c = host_copy(q.zero);
  if (out.a.numel() == 0) out.a = Tensor();
  return out;
}

/// Random dy: normal values of random magnitude per segment, zeros, subnormals, and (f32)
/// huge values.
Tensor make_dy(const Shape& shape, Dtype dtype, int64_t seg, std::mt19937_64& rng) {
  const int64_t n = numel(shape);
  std::vector<float> v(static_cast<size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  seg = std::max<int64_t>(seg, 1);
  for (int64_t s0 = 0; s0 < n; s0 += seg) {
    const int kind = static_cast<int>(rng() % 6);
    const float mag = std::ldexp(1.0f, static_cast<int>(rng() % 30) - 15);
    for (int64_t i = s0; i < std::min(n, s0 + seg); ++i) {
      float d = normal(rng) * mag;
      if (kind == 0) d = (rng() & 1) ? 0.0f : -0.0f;
      if (kind == 1) d = std::ldexp(normal(rng), -135);
      if (kind == 2 && dtype != Dtype::f16 && rng() % 7 == 0) d = (rng() & 1) ? 3e37f : -3e37f;
      if (kind == 3) d = static_cast<float>(static_cast<int>(rng() % 9) - 4);  // cancellations
      v[static_cast<size_t>(i)] = d;
    }
  }
  return from_values(v, shape, dtype);
}

// ---- the matrix ---------------------------------------------------------------------------------

struct Counter {
  std::map<std::string, int> runs;
};

/// Runs the forward and backward kernels named on `device` against the references over
/// the schemes, shapes and dtypes; `lite`: the smaller matrix. Also checks the reference
/// against quantize + dequantize (once, on the CPU pass).
void run_matrix(const std::string& fwd_kernel, const std::string& bwd_kernel, Device device,
                bool lite, bool check_ops, Counter& count, uint64_t seed) {
  std::mt19937_64 rng = testing::make_rng(seed);
  const auto& shapes_all = kShapes;
  std::vector<std::string> shapes;
  if (lite) {
    for (const char* t : kShapesLite) shapes.push_back(t);
  } else {
    for (const char* t : shapes_all) shapes.push_back(t);
  }
  for (const char* text : kSchemes) {
    const QuantScheme s = QuantScheme::parse(text);
    for (const std::string& shape_text : shapes) {
      const Shape shape = testing::parse_shape(shape_text);
      bool fits = true;
      try {
        scale_shape(s, shape);
      } catch (const Error&) {
        fits = false;
      }
      if (!fits) {
        // A shape the scheme does not fit is a clear error from select.
        Tensor x = Tensor::empty(shape, Dtype::f32);
        expect_error([&] { FakeQuantizePlan::select(FakeQuantizeDesc::for_views(x, x, s)); },
                     ErrorCode::invalid_argument, "scheme");
        continue;
      }
      const int64_t n = numel(shape);
      const int64_t seg = segment_of(s, shape);
      for (int variant = 0; variant < (lite ? 1 : 2); ++variant) {
        const bool huge = variant == 1;
        const std::vector<float> values = make_values(n, seg, huge, rng);
        for (Dtype src_dt : kFloats) {
          if (lite && src_dt != Dtype::f32) continue;
          const Tensor src = from_values(values, shape, src_dt);
          for (Dtype dst_dt : {Dtype::f32, src_dt == Dtype::f32 ? Dtype::bf16 : src_dt}) {
            SCOPED_TRACE(fmt::format("{} {} {}->{}{} on {}", text, shape_text, dtype_name(src_dt),
                                     dtype_name(dst_dt), huge ? " huge" : "", device.str()));
            const Out ref_dyn =
                run_forward("fake_quantize_reference", Device::cpu(), src, dst_dt, s, nullptr);
            const Given given = make_given(s, shape, ref_dyn, rng);
            const Out ref_static =
                run_forward("fake_quantize_reference", Device::cpu(), src, dst_dt, s, &given);
            if (check_ops) {
              // (a 1-d empty tensor's per-token scale [1] belongs to no group: neither op
              // writes it)
              EXPECT_EQ(compare_with_ops(quantize_dequantize(src, dst_dt, s, nullptr), ref_dyn,
                                         n > 0 || s.granularity != Granularity::token),
                        "")
                  << "dynamic reference vs quantize + dequantize";
              // (the given scales are inputs: only the values are compared)
              EXPECT_EQ(
                  compare_with_ops(quantize_dequantize(src, dst_dt, s, &given), ref_static, false),
                  "")
                  << "static reference vs quantize + dequantize";
            }
            for (const Given* gv : {static_cast<const Given*>(nullptr), &given}) {
              try {
                const Out got = run_forward(fwd_kernel, device, src, dst_dt, s, gv);
                EXPECT_EQ(compare_out(gv ? ref_static : ref_dyn, got, kFwdNames), "")
                    << (gv ? "static" : "dynamic");
                ++count.runs[fwd_kernel + "@" + device.str()];
              } catch (const Error& e) {
                ASSERT_EQ(e.code(), ErrorCode::unsupported) << e.what();  // declined
              }
            }
            if (dst_dt != Dtype::f32) continue;
            // Backward: dy in src's dtype and in f32; the scales of the static run.
            for (Dtype dy_dt : {Dtype::f32, src_dt}) {
              if (dy_dt == Dtype::f32 && src_dt != Dtype::f32 && lite) continue;
              const Tensor dy = make_dy(shape, dy_dt, seg, rng);
              std::vector<BwdOptions> opts = {{false, false, false},
                                              {true, is_affine(s), false},
                                              {true, is_affine(s), true},
                                              {false, is_affine(s), false}};
              for (const BwdOptions& o : opts) {
                SCOPED_TRACE(fmt::format("backward dy {} scale_grad {} zero_grad {} lsq {}",
                                         dtype_name(dy_dt), o.scale_grad, o.zero_grad, o.lsq));
                const Out want = run_backward("fake_quantize_backward_reference", Device::cpu(),
                                              src, dy, s, given, o);
                try {
                  const Out got = run_backward(bwd_kernel, device, src, dy, s, given, o);
                  EXPECT_EQ(compare_out(want, got, kBwdNames), "");
                  ++count.runs[bwd_kernel + "@" + device.str()];
                } catch (const Error& e) {
                  ASSERT_EQ(e.code(), ErrorCode::unsupported) << e.what();
                }
              }
            }
          }
        }
      }
    }
  }
}

struct Target {
  int64_t bit;
  std::string name;
};

std::vector<Target> simd_targets() {
  hwy::SetSupportedTargetsForTest(0);
  std::vector<Target> t;
  for (int64_t bit : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SSE4}})
    if (hwy::SupportedTargets() & bit) t.push_back({bit, hwy::TargetName(bit)});
  return t;
}

TEST(FakeQuantize, SimdMatchesReferenceOnEveryTarget) {
  Counter count;
  const std::vector<Target> targets = simd_targets();
  ASSERT_FALSE(targets.empty()) << "no SIMD target on this CPU";
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    hwy::SetSupportedTargetsForTest(targets[ti].bit);
    {
      Tensor x = Tensor::empty({4, 64}, Dtype::f32);
      Preference pref;
      pref.kernel = "fake_quantize_simd";
      EXPECT_EQ(FakeQuantizePlan::select(
                    FakeQuantizeDesc::for_views(x, x, QuantScheme::parse("int8:token")), pref)
                    .sku()
                    .arch,
                targets[ti].name);
    }
    run_matrix("fake_quantize_simd", "fake_quantize_backward_simd", Device::cpu(), ti > 0, ti == 0,
               count, 10 + ti);
    std::printf("  target %s done\n", targets[ti].name.c_str());
  }
  hwy::SetSupportedTargetsForTest(0);
  for (const auto& [k, n] : count.runs) std::printf("  %-40s ran %d cases\n", k.c_str(), n);
  EXPECT_GT(count.runs["fake_quantize_simd@cpu"], 500);
  EXPECT_GT(count.runs["fake_quantize_backward_simd@cpu"], 500);
}

TEST(FakeQuantize, CudaMatchesReference) {
  LOWBIT_REQUIRE_CUDA();
  Counter count;
  run_matrix("fake_quantize_cuda", "fake_quantize_backward_cuda", Device::cuda(0), false, false,
             count, 20);
  for (const auto& [k, n] : count.runs) std::printf("  %-40s ran %d cases\n", k.c_str(), n);
  EXPECT_GT(count.runs["fake_quantize_cuda@cuda:0"], 500);
  EXPECT_GT(count.runs["fake_quantize_backward_cuda@cuda:0"], 500);
}

// ---- dscale / dzero against the definition in long double --------------------------------------

/// The definition restated independently: per element v = x * f32(1 / s), the code range
/// test and c; dscale = sum dy * c, dzero = -(sum over outside of dy) * s; sums in long
/// double with compensation (products of two f32 are exact in long double).
struct Exact {
  std::vector<long double> dscale, dzero, abs_sum;
};

Exact exact_sums(const QuantScheme& s, const std::vector<float>& x, const std::vector<float>& dy,
                 const std::vector<float>& scale, const std::vector<int32_t>& zero,
                 const Shape& shape) {
  // Which group: the same map as the library's (formats::GroupMap is the spec's table).
  const Shape ss = scale_shape(s, shape);
  const int64_t groups = numel(ss);
  Exact e;
  e.dscale.assign(static_cast<size_t>(groups), 0.0L);
  e.dzero = e.abs_sum = e.dscale;
  std::vector<long double> comp_s(e.dscale), comp_z(e.dscale);
  auto add = [](long double& sum, long double& comp, long double v) {  // Neumaier
    const long double t = sum + v;
    comp += std::fabs(sum) >= std::fabs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  };
  const int nd = shape.size();
  const int64_t k = shape[nd - 1];
  for (size_t i = 0; i < x.size(); ++i) {
    int64_t g = 0;
    switch (s.granularity) {
      case Granularity::tensor:
        break;
      case Granularity::token:
        g = static_cast<int64_t>(i) / k;
        break;
      case Granularity::block:
        g = static_cast<int64_t>(i) / k * ((k + s.block - 1) / s.block) +
            static_cast<int64_t>(i) % k / s.block;
        break;
      default:
        ADD_FAILURE() << "granularity not covered by this restatement";
    }
    const float sc = scale[static_cast<size_t>(g)];
    const float inv = sc == 0.0f ? 0.0f : 1.0f / sc;
    const float v = x[i] * inv;
    float c;
    bool inside;
    if (s.is_integer()) {
      const float z = static_cast<float>(zero.empty() ? 0 : zero[static_cast<size_t>(g)]);
      const float r = std::nearbyint(v);
      const float q = r + z;
      inside = q >= static_cast<float>(s.qmin()) && q <= static_cast<float>(s.qmax());
      c = inside ? r - v
                 : (q < s.qmin() ? static_cast<float>(s.qmin()) : static_cast<float>(s.qmax())) - z;
    } else {
      const float m = s.format == QuantFormat::fp8e5m2 ? 57344.0f : 448.0f;
      inside = std::fabs(v) <= m;
      const float f = s.format == QuantFormat::fp8e5m2
                          ? f8e5m2_to_f32(f32_to_f8e5m2(v, Saturation::finite))
                          : f8e4m3fn_to_f32(f32_to_f8e4m3fn(v, Saturation::finite));
      c = inside ? f - v : (v < 0 ? -m : m);
    }
    const long double t = static_cast<long double>(dy[i]) * static_cast<long double>(c);
    const size_t gi = static_cast<size_t>(g);
    add(e.dscale[gi], comp_s[gi], t);
    e.abs_sum[gi] += std::fabs(t);
    if (!inside) add(e.dzero[gi], comp_z[gi], static_cast<long double>(dy[i]));
  }
  for (size_t g = 0; g < e.dscale.size(); ++g) {
    e.dscale[g] += comp_s[g];
    e.dzero[g] = -((e.dzero[g] + comp_z[g]) * static_cast<long double>(scale[g]));
  }
  return e;
}

float ulp_of(long double v) {
  const float f = static_cast<float>(std::fabs(v));
  return std::nextafter(f, INFINITY) - f;
}

TEST(FakeQuantize, GradientSumsMatchTheDefinitionInLongDouble) {
  std::mt19937_64 rng = testing::make_rng(77);
  const char* const schemes[] = {"int8:tensor",     "uint8:token",   "int4:block32:asym",
                                 "int8:token:asym", "fp8e4m3:token", "fp8e5m2:tensor"};
  for (const char* text : schemes) {
    const QuantScheme s = QuantScheme::parse(text);
    for (const char* shape_text : {"7x4096", "3x64", "1x1024"}) {
      SCOPED_TRACE(fmt::format("{} {}", text, shape_text));
      const Shape shape = testing::parse_shape(shape_text);
      const int64_t n = numel(shape);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> x(static_cast<size_t>(n)), dy(x);
      for (auto& v : x) v = normal(rng) * 3.0f;
      for (auto& v : dy) v = normal(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 20) - 10);
      const Shape ss = scale_shape(s, shape);
      std::vector<float> sc(static_cast<size_t>(numel(ss)));
      std::vector<int32_t> zp(is_affine(s) ? sc.size() : 0);
      for (size_t g = 0; g < sc.size(); ++g) {
        sc[g] = s.is_integer() ? 0.7f / static_cast<float>(s.qmax()) * (1.0f + (rng() % 5))
                               : 0.01f * (1.0f + (rng() % 5));
        if (!zp.empty()) zp[g] = s.qmin() + static_cast<int32_t>(rng() % (s.qmax() - s.qmin()));
      }
      Given given;
      given.scale = Tensor::empty(ss, Dtype::f32);
      std::memcpy(given.scale.data(), sc.data(), sc.size() * 4);
      if (!zp.empty()) {
        given.zero = Tensor::empty(ss, Dtype::i32);
        std::memcpy(given.zero.data(), zp.data(), zp.size() * 4);
      }
      const Out got = run_backward(
          "fake_quantize_backward_reference", Device::cpu(), from_values(x, shape, Dtype::f32),
          from_values(dy, shape, Dtype::f32), s, given, {true, is_affine(s), false});
      ASSERT_FALSE(got.threw) << got.message;
      const Exact e = exact_sums(s, x, dy, sc, zp, shape);
      for (size_t g = 0; g < sc.size(); ++g) {
        const float ds = got.b.data_as<float>()[g];
        const long double tol = ulp_of(e.dscale[g]) + std::ldexp(e.abs_sum[g], -40);
        EXPECT_LE(std::fabs(static_cast<long double>(ds) - e.dscale[g]), tol)
            << "group " << g << " dscale " << ds << " exact " << static_cast<double>(e.dscale[g]);
        if (is_affine(s)) {
          const float dz = got.c.data_as<float>()[g];
          EXPECT_LE(std::fabs(static_cast<long double>(dz) - e.dzero[g]),
                    2 * ulp_of(e.dzero[g]) + 1e-30L)
              << "group " << g << " dzero " << dz << " exact " << static_cast<double>(e.dzero[g]);
        }
      }
      // LSQ: the same sums times 1 / sqrt(n_group * qmax), rounded once more.
      const Out lsq = run_backward(
          "fake_quantize_backward_reference", Device::cpu(), from_values(x, shape, Dtype::f32),
          from_values(dy, shape, Dtype::f32), s, given, {true, is_affine(s), true});
      const int64_t group_n = n / static_cast<int64_t>(sc.size());
      const double qmax =
          s.is_integer() ? s.qmax() : (s.format == QuantFormat::fp8e5m2 ? 57344.0 : 448.0);
      const float gf = static_cast<float>(1.0 / std::sqrt(static_cast<double>(group_n) * qmax));
      for (size_t g = 0; g < sc.size(); ++g) {
        EXPECT_EQ(lsq.b.data_as<float>()[g],
                  got.b.data_as<float>()[g] * gf == 0.0f ? 0.0f : got.b.data_as<float>()[g] * gf);
      }
    }
  }
}

TEST(FakeQuantize, GradientSumsDoNotDependOnTheThreadCount) {
  std::mt19937_64 rng = testing::make_rng(78);
  const QuantScheme s = QuantScheme::parse("int8:tensor:asym");
  const Shape shape{64, 4096};
  const Tensor x = from_values(make_values(numel(shape), 4096, false, rng), shape, Dtype::f32);
  const Tensor dy = make_dy(shape, Dtype::f32, 333, rng);
  Given given;
  given.scale = Tensor::empty({1}, Dtype::f32);
  given.scale.data_as<float>()[0] = 0.01f;
  given.zero = Tensor::empty({1}, Dtype::i32);
  given.zero.data_as<int32_t>()[0] = 3;
  const int threads = omp_get_max_threads();
  std::vector<Out> outs;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    outs.push_back(run_backward("fake_quantize_backward_simd", Device::cpu(), x, dy, s, given,
                                {true, true, true}));
  }
  omp_set_num_threads(threads);
  const Out ref = run_backward("fake_quantize_backward_reference", Device::cpu(), x, dy, s, given,
                               {true, true, true});
  for (const Out& o : outs) EXPECT_EQ(compare_out(ref, o, kBwdNames), "");
}

// ---- errors -------------------------------------------------------------------------------------

/// The kernels to run error cases on: every kernel of the op on every test device.
std::vector<std::pair<std::string, Device>> fwd_kernels() {
  std::vector<std::pair<std::string, Device>> k;
  for (Device d : testing::test_devices())
    for (const Kernel<FakeQuantizeOp>* kernel : FakeQuantizeOp::kernels())
      k.push_back({std::string(kernel->name()), d});
  return k;
}
std::vector<std::pair<std::string, Device>> bwd_kernels() {
  std::vector<std::pair<std::string, Device>> k;
  for (Device d : testing::test_devices())
    for (const Kernel<FakeQuantizeBackwardOp>* kernel : FakeQuantizeBackwardOp::kernels())
      k.push_back({std::string(kernel->name()), d});
  return k;
}

/// Runs fn(kernel, device) where the kernel implements the case (declines are skipped).
template <class Fn>
int on_each(const std::vector<std::pair<std::string, Device>>& ks, Fn&& fn) {
  int ran = 0;
  for (const auto& [name, device] : ks) {
    SCOPED_TRACE(name + "@" + device.str());
    try {
      fn(name, device);
      ++ran;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::unsupported) throw;
    }
  }
  return ran;
}

TEST(FakeQuantize, NonFiniteInputsAreErrorsNamingTheFirstOne) {
  const QuantScheme s = QuantScheme::parse("int8:token");
  const Shape shape{3, 70};
  for (Dtype dt : kFloats) {
    for (bool nan : {true, false}) {
      std::vector<float> v(210, 0.5f);
      v[69] = 1.0f;
      v[75] = nan ? NAN : -INFINITY;  // element [1, 5]
      v[200] = NAN;
      const Tensor x = from_values(v, shape, dt);
      const std::string want = fmt::format(
          "fake_quantize: src element [1, 5] (flat index 75) is {}", nan ? "NaN" : "Inf");
      Given given;
      given.scale = Tensor::empty({3}, Dtype::f32);
      for (int g = 0; g < 3; ++g) given.scale.data_as<float>()[g] = 0.01f;
      const int ran = on_each(fwd_kernels(), [&](const std::string& k, Device d) {
        for (const Given* gv :
             {static_cast<const Given*>(nullptr), static_cast<const Given*>(&given)}) {
          const Out o = run_forward(k, d, x, Dtype::f32, s, gv);
          EXPECT_TRUE(o.threw);
          EXPECT_EQ(o.code, ErrorCode::invalid_argument);
          EXPECT_NE(o.message.find(want), std::string::npos) << o.message;
          // Without the check: no error (values unspecified).
          EXPECT_FALSE(run_forward(k, d, x, Dtype::f32, s, gv, false).threw);
        }
      });
      EXPECT_GE(ran, 2);
      // Backward: x first, then dy.
      const Tensor finite = from_values(std::vector<float>(210, 0.25f), shape, dt);
      const std::string want_x = fmt::format(
          "fake_quantize_backward: x element [1, 5] (flat index 75) is {}", nan ? "NaN" : "Inf");
      const std::string want_dy = fmt::format(
          "fake_quantize_backward: dy element [1, 5] (flat index 75) is {}", nan ? "NaN" : "Inf");
      on_each(bwd_kernels(), [&](const std::string& k, Device d) {
        for (const BwdOptions& o :
             {BwdOptions{false, false, false}, BwdOptions{true, false, true}}) {
          Out r = run_backward(k, d, x, x, s, given, o);
          EXPECT_NE(r.message.find(want_x), std::string::npos) << r.message;
          r = run_backward(k, d, finite, x, s, given, o);
          EXPECT_NE(r.message.find(want_dy), std::string::npos) << r.message;
          BwdOptions off = o;
          off.check = false;
          EXPECT_FALSE(run_backward(k, d, x, x, s, given, off).threw);
        }
      });
    }
  }
}

TEST(FakeQuantize, InvalidGivenScalesAndZeroPointsAreErrors) {
  const Shape shape{4, 64};
  const Tensor x = from_values(std::vector<float>(256, 0.5f), shape, Dtype::f32);
  struct Case {
    const char* scheme;
    float scale;
    int32_t zero;
    const char* want;
  };
  const Case cases[] = {
      {"int8:token", -1.0f, 0, "given scale -1 of group 2 must be finite and >= 0"},
      {"int8:token", NAN, 0, "given scale nan of group 2"},
      {"fp8e4m3:token", INFINITY, 0, "given scale inf of group 2"},
      {"int8:token", 1e-40f, 0, "given scale 1e-40 of group 2"},
      {"uint8:token", 0.1f, 300, "given zero point 300 of group 2 is outside [0, 255]"},
      {"int4:token:asym", 0.1f, -9, "given zero point -9 of group 2 is outside [-8, 7]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.scheme);
    const QuantScheme s = QuantScheme::parse(c.scheme);
    Given g;
    g.scale = Tensor::empty({4}, Dtype::f32);
    for (int i = 0; i < 4; ++i) g.scale.data_as<float>()[i] = i == 2 ? c.scale : 0.1f;
    if (is_affine(s)) {
      g.zero = Tensor::empty({4}, Dtype::i32);
      for (int i = 0; i < 4; ++i) g.zero.data_as<int32_t>()[i] = i == 2 ? c.zero : 1;
    }
    on_each(fwd_kernels(), [&](const std::string& k, Device d) {
      const Out o = run_forward(k, d, x, Dtype::f32, s, &g);
      EXPECT_EQ(o.code, ErrorCode::invalid_argument);
      EXPECT_NE(o.message.find(std::string("fake_quantize: ") + c.want), std::string::npos)
          << o.message;
      EXPECT_FALSE(run_forward(k, d, x, Dtype::f32, s, &g, false).threw);
    });
    on_each(bwd_kernels(), [&](const std::string& k, Device d) {
      const Out o = run_backward(k, d, x, x, s, g, {true, false, false});
      EXPECT_NE(o.message.find(std::string("fake_quantize_backward: ") + c.want), std::string::npos)
          << o.message;
    });
  }
}

// ---- semantics, descriptors, one-liners
// ------------------------------------------------------------

TEST(FakeQuantize, StraightThroughGradientIsTorchs) {
  // int8 symmetric, scale 0.5: x / s = [0.6, 2, 200, -254.2, 126.6, -127.4, 0]
  const QuantScheme s = QuantScheme::parse("int8:tensor");
  const std::vector<float> xv = {0.3f, 1.0f, 100.0f, -127.1f, 63.3f, -63.7f, 0.0f};
  const std::vector<float> dyv = {1.0f, -2.0f, 3.0f, -4.0f, 5.0f, -6.0f, 7.0f};
  const Tensor x = from_values(xv, {7}, Dtype::f32), dy = from_values(dyv, {7}, Dtype::f32);
  Tensor scale = Tensor::empty({1}, Dtype::f32);
  scale.data_as<float>()[0] = 0.5f;
  const FakeQuantizeGrads g = fake_quantize_backward(dy, x, s, scale, {}, {true, false, false});
  const float* dx = g.dx.data_as<float>();
  // inside: rne(v) in [-127, 127]; 126.6 -> 127 inside, -127.4 -> -127 inside
  const float want[] = {1.0f, -2.0f, 0.0f, -0.0f, 5.0f, -6.0f, 7.0f};
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(dx[i], want[i]) << i;
    EXPECT_EQ(std::signbit(dx[i]), std::signbit(want[i])) << i;
  }
  // dscale = sum dy * c: c = r - v inside, 127 / -127 outside.
  double sum = 0;
  for (int i = 0; i < 7; ++i) {
    const float v = xv[static_cast<size_t>(i)] * 2.0f;
    const float r = std::nearbyint(v);
    const float c = (r >= -127 && r <= 127) ? r - v : (r < -127 ? -127.0f : 127.0f);
    sum += static_cast<double>(dyv[static_cast<size_t>(i)]) * c;
  }
  EXPECT_EQ(g.dscale.data_as<float>()[0], static_cast<float>(sum));
}

TEST(FakeQuantize, OneLinersAndDescriptorChecks) {
  std::mt19937_64 rng = testing::make_rng(5);
  const QuantScheme s = QuantScheme::parse("uint8:channel");
  const Shape shape{5, 300};
  const Tensor x = from_values(make_values(1500, 300, false, rng), shape, Dtype::bf16);
  Tensor scale = Tensor::empty({5}, Dtype::f32), zero = Tensor::empty({5}, Dtype::i32);
  for (int i = 0; i < 5; ++i) {
    scale.data_as<float>()[i] = 0.01f * (i + 1);
    zero.data_as<int32_t>()[i] = 100 + i;
  }
  // Static one-liner == quantize + dequantize with the same scales.
  const Tensor y = fake_quantize(x, s, scale, zero);
  QuantizedTensor q = QuantizedTensor::allocate(s, shape);
  copy(q.scale, scale);
  copy(q.zero, zero);
  quantize_into(q.view(), x, true);
  EXPECT_EQ(compare_bytes(dequantize(q.view(), Dtype::bf16), y), "");
  // Dynamic: fake_quantize_into == quantize.hpp's fake_quantize one-liner.
  Tensor y2 = Tensor::empty(shape, Dtype::bf16), s2 = Tensor::empty({5}, Dtype::f32),
         z2 = Tensor::empty({5}, Dtype::i32);
  fake_quantize_into(y2, x, s, s2, z2, false);
  EXPECT_EQ(compare_bytes(fake_quantize(x, s), y2), "");
  // Backward one-liner and the _into form agree.
  const Tensor dy = make_dy(shape, Dtype::f32, 300, rng);
  const FakeQuantizeGrads g = fake_quantize_backward(dy, x, s, scale, zero, {true, true, true});
  Tensor dx = Tensor::empty(shape, Dtype::f32), ds = Tensor::empty({5}, Dtype::f32),
         dz = Tensor::empty({5}, Dtype::f32);
  fake_quantize_backward_into({dy, x, scale, zero, dx, ds, dz}, s, true);
  EXPECT_EQ(compare_bytes(g.dx, dx), "");
  EXPECT_EQ(compare_bytes(g.dscale, ds), "");
  EXPECT_EQ(compare_bytes(g.dzero, dz), "");

  // Descriptor checks.
  Tensor f = Tensor::empty({4, 32}, Dtype::f32);
  expect_error(
      [&] {
        FakeQuantizePlan::select(FakeQuantizeDesc::for_views(f, f, QuantScheme::parse("nvfp4")));
      },
      ErrorCode::invalid_argument, "fake quantization supports int8");
  expect_error(
      [&] {
        FakeQuantizePlan::select(FakeQuantizeDesc::for_views(f, f, QuantScheme::parse("q8_0")));
      },
      ErrorCode::invalid_argument, "fake quantization supports int8");
  expect_error(
      [&] {
        FakeQuantizeBackwardPlan::select(FakeQuantizeBackwardDesc::for_views(
            f, f, f, QuantScheme::parse("int8:token"), true, true));
      },
      ErrorCode::invalid_argument, "zero_grad needs an affine integer scheme");
  {
    FakeQuantizeBackwardDesc d = FakeQuantizeBackwardDesc::for_views(
        f, f, f, QuantScheme::parse("int8:tensor"), true, false);
    d.shape = {int64_t{1} << 32};
    d.x_strides = d.dy_strides = {1};
    expect_error([&] { FakeQuantizeBackwardPlan::select(d); }, ErrorCode::invalid_argument,
                 "at most 2^31 elements per group");
    d.scale_grad = false;  // dx alone has no such limit
    EXPECT_NO_THROW(FakeQuantizeBackwardPlan::select(d));
  }
  const FakeQuantizePlan plan = FakeQuantizePlan::select(
      FakeQuantizeDesc::for_views(f, f, QuantScheme::parse("int8:token"), true));
  Tensor bad_scale = Tensor::empty({4}, Dtype::f16);
  expect_error(
      [&] {
        plan.can_implement({f, f, bad_scale, {}});
      },
      ErrorCode::invalid_argument, "fake_quantize: scale is f16[4], the plan needs f32[4]");
  Tensor sc4 = Tensor::empty({4}, Dtype::f32);
  Tensor wrong_dst = Tensor::empty({4, 32}, Dtype::f16);
  expect_error(
      [&] {
        plan.can_implement({f, wrong_dst, sc4, {}});
      },
      ErrorCode::invalid_argument, "fake_quantize: dst is f16[4, 32], the plan needs f32[4, 32]");
  expect_error(
      [&] {
        FakeQuantizePlan::select(
            FakeQuantizeDesc::for_views(f, f, QuantScheme::parse("int4:block64")));
      },
      ErrorCode::invalid_argument, "not a multiple of the block size 64");
}

TEST(FakeQuantize, ReferenceTakesStridedViews) {
  std::mt19937_64 rng = testing::make_rng(6);
  const QuantScheme s = QuantScheme::parse("int8:token:asym");
  const Tensor base = from_values(make_values(40 * 30, 30, false, rng), {40, 30}, Dtype::f32);
  const TensorView t = base.view().transpose(0, 1);  // [30, 40], strided
  Tensor contig = Tensor::empty({30, 40}, Dtype::f32);
  copy(contig, t);
  const Out a =
      run_forward("fake_quantize_reference", Device::cpu(), contig, Dtype::f32, s, nullptr);
  Tensor y = Tensor::empty({30, 40}, Dtype::f32), sc = Tensor::empty({30}, Dtype::f32),
         z = Tensor::empty({30}, Dtype::i32);
  fake_quantize_into(y, t, s, sc, z, false);  // strided: the reference serves
  EXPECT_EQ(compare_bytes(a.a, y), "");
  EXPECT_EQ(compare_bytes(a.b, sc), "");
  // Backward with a strided dy.
  const Tensor dy_base = make_dy({40, 30}, Dtype::f32, 7, rng);
  const TensorView dyt = dy_base.view().transpose(0, 1);
  Tensor dy_c = Tensor::empty({30, 40}, Dtype::f32);
  copy(dy_c, dyt);
  Given g;
  g.scale = Tensor::empty({30}, Dtype::f32);
  g.zero = Tensor::empty({30}, Dtype::i32);
  copy(g.scale, sc);
  copy(g.zero, z);
  const TensorView gs = g.scale, gz = g.zero;
  const Out want = run_backward("fake_quantize_backward_reference", Device::cpu(), contig, dy_c, s,
                                g, {true, true, false});
  Tensor dx = Tensor::empty({30, 40}, Dtype::f32), ds = Tensor::empty({30}, Dtype::f32),
         dz = Tensor::empty({30}, Dtype::f32);
  fake_quantize_backward_into({dyt, t, gs, gz, dx, ds, dz}, s);
  EXPECT_EQ(compare_bytes(want.a, dx), "");
  EXPECT_EQ(compare_bytes(want.b, ds), "");
  EXPECT_EQ(compare_bytes(want.c, dz), "");
}

TEST(FakeQuantize, WorkedExamplesOfTheDocs) {
  // docs/formats.md, "Fake quantization and its gradients".
  const QuantScheme s = QuantScheme::parse("uint4:tensor");
  const Tensor x = from_values({-0.7f, 0.05f, 1.0f, 2.0f}, {4}, Dtype::f32);
  const Tensor dy = from_values({1.0f, 2.0f, 3.0f, 4.0f}, {4}, Dtype::f32);
  Tensor scale = Tensor::empty({1}, Dtype::f32), zero = Tensor::empty({1}, Dtype::i32);
  scale.data_as<float>()[0] = 0.1f;
  zero.data_as<int32_t>()[0] = 5;
  for (const auto& [fk, bk] : {std::pair<std::string, std::string>{
                                   "fake_quantize_reference", "fake_quantize_backward_reference"},
                               {"fake_quantize_simd", "fake_quantize_backward_simd"}}) {
    SCOPED_TRACE(fk);
    Given g;
    g.scale = Tensor::empty({1}, Dtype::f32);
    g.zero = Tensor::empty({1}, Dtype::i32);
    copy(g.scale, scale);
    copy(g.zero, zero);
    const Out y = run_forward(fk, Device::cpu(), x, Dtype::f32, s, &g);
    const std::vector<float> want_y = {-0.5f, 0.0f, 1.0f, 1.0f};
    for (int i = 0; i < 4; ++i) EXPECT_EQ(y.a.data_as<float>()[i], want_y[static_cast<size_t>(i)]);
    const Out b = run_backward(bk, Device::cpu(), x, dy, s, g, {true, true, false});
    const std::vector<float> want_dx = {0.0f, 2.0f, 3.0f, 0.0f};
    for (int i = 0; i < 4; ++i) EXPECT_EQ(b.a.data_as<float>()[i], want_dx[static_cast<size_t>(i)]);
    EXPECT_EQ(b.b.data_as<float>()[0], 34.0f);
    EXPECT_EQ(b.c.data_as<float>()[0], -0.5f);
    const Out l = run_backward(bk, Device::cpu(), x, dy, s, g, {true, true, true});
    const float gf = 0.12909944f;
    EXPECT_EQ(gf, static_cast<float>(1.0 / std::sqrt(60.0)));
    EXPECT_EQ(l.b.data_as<float>()[0], 34.0f * gf);
    EXPECT_EQ(l.c.data_as<float>()[0], -0.5f * gf);
  }
  // int8:tensor, scale 0.5: dscale 889 (0x445E4000).
  const QuantScheme s8 = QuantScheme::parse("int8:tensor");
  const Tensor x8 = from_values({0.3f, 1.0f, 100.0f, -127.1f, 63.3f, -63.7f}, {6}, Dtype::f32);
  const Tensor dy8 = from_values({1.0f, -2.0f, 3.0f, -4.0f, 5.0f, -6.0f}, {6}, Dtype::f32);
  Tensor sc8 = Tensor::empty({1}, Dtype::f32);
  sc8.data_as<float>()[0] = 0.5f;
  const FakeQuantizeGrads g8 = fake_quantize_backward(dy8, x8, s8, sc8, {}, {true, false, false});
  uint32_t b8;
  std::memcpy(&b8, g8.dscale.data(), 4);
  EXPECT_EQ(b8, 0x445E4000u);
}

}  // namespace
}  // namespace lowbit
