// The fusion JIT's quantize epilogue: an expression quantized in the same pass.
//
//  - The epilogue's formulas (jit_math.inc's lbq_*, which generated CUDA code runs) against
//    src/formats/quant_math.hpp on many values: the same bits.
//  - CPU: fuse({{q.view(), expr}}) gives the bits of quantize(expr evaluated and stored in
//    its dtype) for every supported scheme (int8/uint8/int4/uint4 per token and per block,
//    symmetric and affine, f32/f16/bf16 scales; fp8 per token and block; mxfp4/mxfp8), for
//    broadcast and strided inputs, f32/f16/bf16/f64 expressions, one and many threads.
//  - Non-finite values: Error(invalid_argument) with the first bad element, as quantize.
//  - Unsupported schemes and combinations: clear errors.
//  - NVRTC: the generated row kernels of every scheme and kernel shape compile (no GPU).
//  - Host emulator: generated row kernels run on the CPU, one std::thread per CUDA thread
//    (barriers and warp shuffles emulated), against the CPU epilogue.
//  - On a GPU: the CUDA epilogue gives the CPU epilogue's bits; the check reports NaN.
#pragma GCC optimize("fp-contract=off")

#include <dlfcn.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "lowbit/dtype.hpp"
// clang-format off: quant_math.hpp uses Dtype without including dtype.hpp
#include "formats/quant_math.hpp"
// clang-format on
#include "jit/jit.hpp"
#include "jit/jit_math_host.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using fusion::Expr;

const char* const kSchemes[] = {
    "int8:token",
    "int8:token:asym",
    "uint8:token:asym",
    "int8:token:scale=bf16",
    "int8:token:scale=f16",
    "int4:token",
    "uint4:token:asym",
    "int4:block32",
    "int4:block32:asym",
    "int8:block64",
    "fp8e4m3:token",
    "fp8e5m2:token",
    "fp8e4m3:block128",
    "fp8e5m2:block32",
    "mxfp4",
    "mxfp8e4m3",
    "mxfp8e5m2",
    "nvfp4",
};

/// Normal values of a spread of scales (finite), per row a different magnitude.
void fill(const Tensor& t, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = normal(rng) * scale * std::ldexp(1.0, static_cast<int>(rng() % 9) - 4);
    const float f = static_cast<float>(v);
    switch (t.dtype()) {
      case Dtype::f64:
        t.data_as<double>()[i] = v;
        break;
      case Dtype::f32:
        t.data_as<float>()[i] = f;
        break;
      case Dtype::f16:
        t.data_as<uint16_t>()[i] = f32_to_f16(f);
        break;
      case Dtype::bf16:
        t.data_as<uint16_t>()[i] = f32_to_bf16(f);
        break;
      default:
        break;
    }
  }
}

/// Random bytes in every part of q (so that stale bytes cannot pass for results).
void scribble(const QuantizedTensor& q, std::mt19937_64& rng) {
  for (const Tensor* t : {&q.codes, &q.scale, &q.zero, &q.global_scale}) {
    if (!t->data()) continue;
    const int64_t bytes = t->nbytes();
    if (t->device().is_cpu()) {
      auto* p = static_cast<uint8_t*>(t->data());
      for (int64_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(rng());
    }
  }
}

/// Byte-compares every part of two quantized tensors; "" or the first difference.
std::string same_parts(const QuantizedView& want, const QuantizedView& got) {
  auto cmp = [](const char* what, const TensorView& a, const TensorView& b) -> std::string {
    if (!a.data() && !b.data()) return {};
    const int64_t bytes = storage_bytes(a.dtype(), a.numel());
    const auto* x = static_cast<const uint8_t*>(a.data());
    const auto* y = static_cast<const uint8_t*>(b.data());
    for (int64_t i = 0; i < bytes; ++i)
      if (x[i] != y[i])
        return fmt::format("{} byte {} of {}: want {:#04x}, got {:#04x}", what, i, bytes, x[i],
                           y[i]);
    return {};
  };
  for (auto r :
       {cmp("codes", want.codes, got.codes), cmp("scale", want.scale, got.scale),
        cmp("zero", want.zero, got.zero), cmp("global scale", want.global_scale, got.global_scale)})
    if (!r.empty()) return r;
  return {};
}

struct QCase {
  Shape shape;
  std::vector<Tensor> inputs;  // owners
  std::vector<TensorView> views;
  Expr value = Expr(0.0);
  std::string text;
};

/// Case `kind`'s expression over inputs a and b (its text in *text).
Expr case_expr(const TensorView& a, const TensorView& b, int kind, std::string* text) {
  const Expr x = fusion::input(a), y = fusion::input(b);
  switch (kind % 4) {
    case 0:
      *text = "silu(a) * b";
      return fusion::silu(x) * y;
    case 1:
      *text = "gelu(a + b) * 3";
      return fusion::gelu(x + y) * 3.0;
    case 2:
      *text = "a * sigmoid(b) - 0.25";
      return x * fusion::sigmoid(y) - 0.25;
    default:
      *text = "clamp(a * 1.25 + b, -4, 6)";
      return fusion::clamp(x * 1.25 + y, -4.0, 6.0);
  }
}

/// A case: inputs a (the full shape, maybe transposed storage), b (full or a row vector
/// broadcast over rows, or a column broadcast over the row), an expression of dtype
/// `dt` over them.
QCase make_case(std::mt19937_64& rng, const Shape& shape, Dtype in_dt, int kind) {
  QCase c;
  c.shape = shape;
  const int nd = shape.size();
  Tensor a = Tensor::empty(shape, in_dt);
  fill(a, rng);
  c.views.push_back(a.view());
  c.inputs.push_back(std::move(a));
  Shape bs = shape;
  if (kind % 3 == 1) {
    bs = Shape{shape[nd - 1]};  // a per-column vector, broadcast over rows
  } else if (kind % 3 == 2 && nd >= 2) {
    bs[nd - 1] = 1;  // a per-row value, broadcast along the row
  }
  Tensor b = Tensor::empty(bs, in_dt);
  fill(b, rng);
  c.views.push_back(b.view());
  c.inputs.push_back(std::move(b));
  c.value = case_expr(c.views[0], c.views[1], kind, &c.text);
  return c;
}

/// quantize(expr evaluated into a tensor of its dtype): the definition.
QuantizedTensor unfused(const QCase& c, const QuantScheme& scheme) {
  Tensor y = Tensor::empty(c.shape, c.value.dtype());
  fuse({{y, c.value}});
  return quantize(y, scheme);
}

/// A call with other outputs beside the quantized one: s1 stores the quantized
/// expression's own value, s2 `other`; the quantized output at position qpos (0-2).
std::vector<FusedOutput> with_sides(const QuantizedView& q, const Expr& value, const TensorView& s1,
                                    const TensorView& s2, const Expr& other, int qpos) {
  std::vector<FusedOutput> out{{s1, value}, {s2, other}};
  out.insert(out.begin() + qpos % 3, FusedOutput(q, value));
  return out;
}

/// A tensor whose every byte is 0xff (NaN in f32 / bf16): unwritten elements show.
Tensor poisoned(const Shape& shape, Dtype dt, Device dev = Device::cpu()) {
  Tensor t = Tensor::empty(shape, dt);
  std::memset(t.data(), 0xff, static_cast<size_t>(t.nbytes()));
  return dev.is_cpu() ? std::move(t) : testing::to_device(t, dev);
}

// ---- the formulas -----------------------------------------------------------------------------

TEST(FusionQuantMath, EpilogueFormulasMatchQuantMath) {
  std::mt19937_64 rng(11);
  std::vector<float> xs;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t b = static_cast<uint32_t>(rng());
    const float f = std::bit_cast<float>(b);
    if (std::isfinite(f)) xs.push_back(f);
    xs.push_back(static_cast<float>(std::ldexp(static_cast<double>(rng() % 100000) / 1e4 - 5.0,
                                               static_cast<int>(rng() % 40) - 20)));
  }
  xs.push_back(0.0f);
  xs.push_back(-0.0f);  // codes keep the sign of zero (e2m1 -0)
  xs.push_back(1e-40f);
  xs.push_back(-1e-40f);
  xs.push_back(3.4e38f);
  using namespace jit_math;
  const Dtype sds[] = {Dtype::f32, Dtype::f16, Dtype::bf16};
  for (size_t i = 0; i + 1 < xs.size(); ++i) {
    const float amax = std::fabs(xs[i]), x = xs[i + 1];
    for (int sd = 0; sd < 3; ++sd) {
      for (int qmax : {127, 7}) {
        const formats::IntParams want = formats::int_symmetric_params(amax, qmax, sds[sd]);
        const float sc = lbq_int_sym_scale(amax, qmax, sd);
        ASSERT_EQ(std::bit_cast<uint32_t>(sc), std::bit_cast<uint32_t>(want.scale)) << amax;
        ASSERT_EQ(std::bit_cast<uint32_t>(lbq_inv(sc)), std::bit_cast<uint32_t>(want.inv_scale));
        ASSERT_EQ(lbq_int_code(x, want.inv_scale, 0, -qmax, qmax),
                  formats::int_quantize(x, want, -qmax, qmax))
            << x << " " << amax;
      }
      const float lo = std::min(xs[i], 0.0f) * 0.5f, hi = std::max(xs[i + 1], 0.0f);
      for (auto [qmin, qmax] : {std::pair{0, 255}, std::pair{-128, 127}, std::pair{0, 15}}) {
        const formats::IntParams want = formats::int_affine_params(lo, hi, qmin, qmax, sds[sd]);
        const float sc = lbq_int_affine_scale(lo, hi, qmin, qmax, sd);
        ASSERT_EQ(std::bit_cast<uint32_t>(sc), std::bit_cast<uint32_t>(want.scale));
        ASSERT_EQ(lbq_int_affine_zero(lo, lbq_inv(sc), qmin, qmax), want.zero) << lo << " " << hi;
        ASSERT_EQ(lbq_int_code(x, want.inv_scale, want.zero, qmin, qmax),
                  formats::int_quantize(x, want, qmin, qmax));
      }
    }
    for (bool e5m2 : {false, true}) {
      const float sc = lbq_fp8_scale(amax, e5m2);
      ASSERT_EQ(std::bit_cast<uint32_t>(sc),
                std::bit_cast<uint32_t>(formats::fp8_scale(amax, e5m2)));
      const float inv = lbq_inv(sc);
      ASSERT_EQ(lbq_fp8_code(x, inv, e5m2), formats::fp8_quantize(x, inv, e5m2));
    }
    {
      const float global = lbq_nvfp4_global(amax);
      ASSERT_EQ(std::bit_cast<uint32_t>(global),
                std::bit_cast<uint32_t>(formats::nvfp4_global_scale(amax)));
      // Globals of the tensor's amax and of others (a block's amax up to the tensor's).
      for (const float g : {global, lbq_nvfp4_global(std::fabs(x)), 1.0f / 2688.0f, 0.0f}) {
        const float block_amax = std::min(amax, std::fabs(x) * 3.0f);
        const unsigned code = lbq_nvfp4_block_scale(block_amax, g);
        ASSERT_EQ(code, g == 0.0f ? 0u : formats::nvfp4_block_scale(block_amax, g))
            << block_amax << " " << g;
        const float total = lbq_nvfp4_total(g, code);
        ASSERT_EQ(lbq_nvfp4_code(x, total, lbq_inv(total)),
                  formats::nvfp4_quantize(x, g, static_cast<uint8_t>(code)))
            << x << " " << g << " " << code;
      }
    }
    for (int emax : {2, 8, 15}) {
      const unsigned code = lbq_mx_scale(amax, emax);
      ASSERT_EQ(code, formats::mx_scale_code(amax, emax)) << amax;
      ASSERT_EQ(lbq_mxfp4_code(x, code), formats::mxfp4_quantize(x, static_cast<uint8_t>(code)));
      ASSERT_EQ(lbq_mxfp8_code(x, code, emax == 15),
                formats::mxfp8_quantize(x, static_cast<uint8_t>(code), emax == 15));
    }
  }
}

// nvfp4's element codes near every e2m1 rounding boundary (x / total on a tie and a few ulps
// either side), over block totals across the range, against formats::nvfp4_quantize: the
// reciprocal-and-correction quotient must give the IEEE quotient's codes.
TEST(FusionQuantMath, Nvfp4CodesNearRoundingBoundaries) {
  using namespace jit_math;
  std::mt19937_64 rng(29);
  const float bounds[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 0.5f, 1.0f};
  int checked = 0;
  for (int t = 0; t < 4000; ++t) {
    // A global of a random tensor absmax, then a block code of a random block absmax.
    const float amax = std::ldexp(1.0f + static_cast<float>(rng() % 1000) / 1000.0f,
                                  static_cast<int>(rng() % 200) - 100);
    const float global = lbq_nvfp4_global(amax);
    const float block_amax = amax * std::ldexp(1.0f, -static_cast<int>(rng() % 12));
    const unsigned code = lbq_nvfp4_block_scale(block_amax, global);
    const float total = lbq_nvfp4_total(global, code);
    if (total == 0.0f) continue;
    for (const float z : {0.0f, -0.0f, 1e-45f, -1e-45f})  // zeros and the smallest subnormal
      ASSERT_EQ(lbq_nvfp4_code(z, total, lbq_inv(total)),
                formats::nvfp4_quantize(z, global, static_cast<uint8_t>(code)))
          << z << " / " << total;
    for (const float b : bounds)
      for (const float sign : {1.0f, -1.0f}) {
        float x = b * total * sign;
        for (int k = 0; k < 3; ++k) x = std::nextafter(x, 0.0f);
        for (int k = 0; k < 7; ++k, x = std::nextafter(x, sign * INFINITY)) {
          ASSERT_EQ(lbq_nvfp4_code(x, total, lbq_inv(total)),
                    formats::nvfp4_quantize(x, global, static_cast<uint8_t>(code)))
              << x << " / " << total << " (global " << global << ", code " << code << ")";
          ++checked;
        }
      }
  }
  std::printf("%d nvfp4 element codes near e2m1 boundaries match formats::\n", checked);
}

// ---- CPU ----------------------------------------------------------------------------------------

TEST(FusionQuantCpu, MatchesQuantizeOfTheUnfusedResult) {
  std::mt19937_64 rng(5);
  const Shape shapes[] = {{3, 128}, {2, 3, 256}, {7, 96 * 2}, {1, 64}, {33, 384}};
  const Dtype dts[] = {Dtype::bf16, Dtype::f32, Dtype::f16};
  int cases = 0;
  for (const char* text : kSchemes) {
    const QuantScheme scheme = QuantScheme::parse(text);
    for (int k = 0; k < 6; ++k) {
      const Shape& shape = shapes[(k + cases) % std::size(shapes)];
      const int64_t K = shape[shape.size() - 1];
      if (scheme.granularity == Granularity::block && K % scheme.block != 0) continue;
      const QCase c = make_case(rng, shape, dts[k % 3], k);
      const QuantizedTensor want = unfused(c, scheme);
      const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
      scribble(got, rng);
      fuse({{got.view(), c.value}});
      ASSERT_EQ(same_parts(want.view(), got.view()), "")
          << text << " " << shape.str() << " " << dtype_name(c.value.dtype()) << " " << c.text;
      ++cases;
    }
  }
  std::printf("%d quantize-epilogue cases bit-identical to quantize() of the unfused result\n",
              cases);
}

TEST(FusionQuantCpu, F64ExpressionsStridedInputsAndThreads) {
  std::mt19937_64 rng(9);
  // f64 inputs: the value rounds to f32 as quantize rounds an f64 tensor.
  {
    const QCase c = make_case(rng, {5, 64}, Dtype::f64, 0);
    ASSERT_EQ(c.value.dtype(), Dtype::f64);
    for (const char* text : {"int8:token", "fp8e4m3:block32", "mxfp4"}) {
      const QuantScheme scheme = QuantScheme::parse(text);
      const QuantizedTensor want = unfused(c, scheme);
      const QuantizedTensor got = QuantizedTensor::allocate(scheme, c.shape);
      fuse({{got.view(), c.value}});
      ASSERT_EQ(same_parts(want.view(), got.view()), "") << text;
    }
  }
  // A transposed input, and a large case run by several threads (and by one).
  for (const Shape& shape : {Shape{96, 64}, Shape{600, 512}}) {
    Tensor base = Tensor::empty({shape[1], shape[0]}, Dtype::bf16);
    fill(base, rng);
    const TensorView at = base.view().transpose(0, 1);
    Tensor b = Tensor::empty(shape, Dtype::bf16);
    fill(b, rng);
    const Expr e = fusion::silu(fusion::input(at)) * fusion::input(b);
    for (const char* text : {"fp8e4m3:token", "int4:block32:asym"}) {
      const QuantScheme scheme = QuantScheme::parse(text);
      Tensor y = Tensor::empty(shape, Dtype::bf16);
      fuse({{y, e}});
      const QuantizedTensor want = quantize(y, scheme);
      for (int threads : {1, 4}) {
        omp_set_num_threads(threads);
        const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
        fuse({{got.view(), e}});
        ASSERT_EQ(same_parts(want.view(), got.view()), "")
            << text << " " << shape.str() << " threads " << threads;
      }
    }
  }
  omp_set_num_threads(omp_get_num_procs());
}

TEST(FusionQuantCpu, NonFiniteValuesAreRefusedWithTheirIndex) {
  Tensor a = Tensor::empty({300, 256}, Dtype::f32);
  for (int64_t i = 0; i < a.numel(); ++i) a.data_as<float>()[i] = 1.0f + (i % 7);
  a.data_as<float>()[250 * 256 + 3] = -1.0f;  // log(-1): NaN
  a.data_as<float>()[260 * 256 + 5] = 0.0f;   // log(0): -inf, later
  const Expr e = fusion::log(fusion::input(a));
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    const QuantizedTensor q =
        QuantizedTensor::allocate(QuantScheme::parse("fp8e4m3:token"), a.shape());
    testing::expect_error(
        [&] {
          fuse({{q.view(), e}});
        },
        ErrorCode::invalid_argument, "[250, 3] (flat index 64003) is NaN");
  }
  omp_set_num_threads(omp_get_num_procs());
  // Unchecked: no error.
  const QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("int8:token"), a.shape());
  fuse({FusedOutput(q.view(), e, /*check_finite=*/false)});
}

TEST(FusionQuantCpu, OtherOutputsBesideTheQuantizedOne) {
  std::mt19937_64 rng(23);
  const char* schemes[] = {"fp8e4m3:token", "int8:token:asym", "int4:block32:asym", "mxfp4",
                           "nvfp4"};
  int cases = 0;
  for (const char* text : schemes) {
    const QuantScheme scheme = QuantScheme::parse(text);
    for (int k = 0; k < 3; ++k) {
      const Shape shape = k == 2 ? Shape{600, 512} : Shape{7, 192};  // 600 x 512: threads
      const QCase c = make_case(rng, shape, k == 1 ? Dtype::f32 : Dtype::bf16, k + cases);
      const Expr other = fusion::input(c.views[0]) * 0.5 + 1.0;
      const QuantizedTensor want = unfused(c, scheme);
      Tensor w1 = Tensor::empty(shape, Dtype::bf16), w2 = Tensor::empty(shape, Dtype::f32);
      fuse({{w1, c.value}});
      fuse({{w2, other}});
      for (const int threads : {1, 4}) {
        if (threads > 1 && k < 2) continue;
        omp_set_num_threads(threads);
        const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
        scribble(got, rng);
        const Tensor s1 = poisoned(shape, Dtype::bf16), s2 = poisoned(shape, Dtype::f32);
        fuse(with_sides(got.view(), c.value, s1, s2, other, k + cases));
        const std::string where = fmt::format("{} {} {} quantized output at {}, {} threads", text,
                                              shape.str(), c.text, (k + cases) % 3, threads);
        ASSERT_EQ(same_parts(want.view(), got.view()), "") << where;
        ASSERT_EQ(testing::compare_bytes(w1, s1), "") << where;
        ASSERT_EQ(testing::compare_bytes(w2, s2), "") << where;
      }
      ++cases;
    }
  }
  omp_set_num_threads(omp_get_num_procs());
  // In place: an output that is also an input. nvfp4's first pass must leave it alone (the
  // second reads it again).
  for (const char* text : {"nvfp4", "fp8e4m3:token"}) {
    const Shape shape{600, 512};
    Tensor a = Tensor::empty(shape, Dtype::bf16), b = Tensor::empty(shape, Dtype::bf16);
    fill(a, rng);
    fill(b, rng);
    const Expr value = fusion::silu(fusion::input(a)) * fusion::input(b);
    const Expr twice = fusion::input(a) * 2.0;
    Tensor y = Tensor::empty(shape, Dtype::bf16), doubled = Tensor::empty(shape, Dtype::bf16);
    fuse({{y, value}});
    fuse({{doubled, twice}});
    const QuantizedTensor want = quantize(y, QuantScheme::parse(text));
    const QuantizedTensor got = QuantizedTensor::allocate(QuantScheme::parse(text), shape);
    fuse({{a, twice}, {got.view(), value}});
    ASSERT_EQ(same_parts(want.view(), got.view()), "") << text << " in place";
    ASSERT_EQ(testing::compare_bytes(doubled, a), "") << text << " in place";
  }
  // An output of other strides (transposed storage).
  {
    const QCase c = make_case(rng, {96, 64}, Dtype::bf16, 0);
    const QuantScheme scheme = QuantScheme::parse("int4:block32");
    Tensor wbase = Tensor::empty({64, 96}, Dtype::bf16);
    fuse({{wbase.view().transpose(0, 1), c.value}});
    Tensor gbase = poisoned({64, 96}, Dtype::bf16);
    const QuantizedTensor got = QuantizedTensor::allocate(scheme, c.shape);
    fuse({{gbase.view().transpose(0, 1), c.value}, {got.view(), c.value}});
    ASSERT_EQ(same_parts(unfused(c, scheme).view(), got.view()), "") << "transposed output";
    ASSERT_EQ(testing::compare_bytes(wbase, gbase), "") << "transposed output";
  }
  std::printf("%d quantize-epilogue cases with two other outputs\n", cases);
}

TEST(FusionQuantCpu, UnsupportedSchemesAndCombinations) {
  using testing::expect_error;
  Tensor a = Tensor::empty({4, 64}, Dtype::bf16), y = Tensor::empty({4, 64}, Dtype::bf16);
  fill(a, *std::make_unique<std::mt19937_64>(1));
  const Expr x = fusion::input(a);
  for (const char* text : {"int8", "int8:channel", "fp8e4m3:block32x32", "q8_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    Shape shape = a.shape();
    const QuantizedTensor q = QuantizedTensor::allocate(s, shape);
    expect_error([&] { fuse({{q.view(), x}}); }, ErrorCode::unsupported, "quantize epilogue");
  }
  const QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("int8:token"), a.shape());
  const QuantizedTensor q2 = QuantizedTensor::allocate(QuantScheme::parse("mxfp4"), a.shape());
  expect_error(
      [&] {
        fuse({{q.view(), x}, {q2.view(), x}});
      },
      ErrorCode::unsupported, "at most one quantized output");
  Tensor packed = Tensor::empty({4, 64}, Dtype::f4e2m1);
  expect_error([&] { fuse({{q.view(), x}, {packed, x}}); }, ErrorCode::unsupported, "packed 4-bit");
  // The quantized output's parts may not overlap another output.
  {
    QuantizedView over = q.view();
    over.codes = TensorView(y.data(), Dtype::i8, a.shape());
    expect_error(
        [&] {
          fuse({{over, x}, {y, x}});
        },
        ErrorCode::invalid_argument, "overlaps output 1");
  }
  Tensor i = Tensor::empty({4, 64}, Dtype::i32);
  expect_error(
      [&] {
        fuse({{q.view(), fusion::input(i) + 1}});
      },
      ErrorCode::invalid_argument, "f32, f16, bf16 or f64");
  // Parts that do not fit the scheme.
  const QuantizedTensor other =
      QuantizedTensor::allocate(QuantScheme::parse("int8:token"), Shape{8, 32});
  QuantizedView bad = other.view();
  bad.shape = a.shape();
  expect_error([&] { fuse({{bad, x}}); }, ErrorCode::invalid_argument, "codes");
  // The quantized output may not overlap an input.
  QuantizedView alias = q.view();
  alias.codes = TensorView(a.data(), Dtype::i8, a.shape());
  expect_error([&] { fuse({{alias, x}}); }, ErrorCode::invalid_argument, "overlaps input");
}

// ---- generated kernels: NVRTC and the host emulator ------------------------------------------

#if LOWBIT_HAS_CUDA
constexpr bool kHasNvrtc = true;
#else
constexpr bool kHasNvrtc = false;
#endif

/// The variants of a quantize-epilogue program (as launch.cpp picks them).
std::vector<fusion::Variant> quant_variants(const FusedDesc& d) {
  const fusion::Layout L = fusion::make_layout(d);
  std::vector<fusion::Variant> out;
  for (int vec = 0; vec < 2; ++vec)
    for (int qstore = 0; qstore < 2; ++qstore) {
      fusion::Variant v;
      v.idx32 = L.idx32;
      v.nd = L.nd;
      v.cls = L.cls;
      v.quant = true;
      v.vec = vec && L.vec_ok;
      const int64_t K = d.shape[d.shape.size() - 1];
      if (v.vec && K % fusion::generate_cuda(*d.program, v, false).group != 0) continue;
      if (vec && !v.vec) continue;
      const bool block = d.scheme.granularity == Granularity::block;
      v.qstore = qstore;
      if (qstore && !(K % 4 == 0 && (!block || d.scheme.block % 4 == 0))) continue;
      out.push_back(v);
      if (d.scheme.format == QuantFormat::nvfp4 && !qstore)  // its statistics kernel
        out.push_back(v.stats_variant());
      // Per-row groups: the recomputing row kernel (launch.cpp takes it for rows longer
      // than shared memory holds).
      if (v.vec && !block && !qstore) {
        fusion::Variant rv = v;
        rv.qrecompute = true;
        out.push_back(rv);
      }
      // Per-block groups of at most a warp's units: the lane kernel (launch.cpp's rule).
      if (v.vec && block && !qstore) {
        const int group = fusion::generate_cuda(*d.program, v, false).group;
        const int b = d.scheme.block;
        const int code_bytes = is_packed(d.scheme.code_dtype()) ? group / 2 : group;
        if (b % group == 0 && b / group <= 32 && 32 % (b / group) == 0 && code_bytes >= 2) {
          fusion::Variant lv = v;
          lv.qlane = true;
          out.push_back(lv);
        }
      }
      // Per-row scales on whole groups: the register-row kernel too (launch.cpp takes it
      // with fast math, for rows of at most 8 groups per thread).
      if (v.vec && !block && qstore) {
        const int64_t units = K / fusion::generate_cuda(*d.program, v, false).group;
        v.qreg = static_cast<int>((units + fusion::kThreads - 1) / fusion::kThreads);
        if (v.qreg <= 8) out.push_back(v);
      }
    }
  return out;
}

/// The block size launch.cpp gives variant v of a row of K elements (group: its G).
unsigned quant_threads(const fusion::Variant& v, int64_t K, int group) {
  const int64_t units = K / group;
  if (v.qreg > 0) return static_cast<unsigned>(((units + v.qreg - 1) / v.qreg + 31) / 32 * 32);
  return static_cast<unsigned>(std::clamp<int64_t>((units + 31) / 32 * 32, 32, fusion::kThreads));
}

TEST(FusionQuantNvrtc, RowKernelsCompileForSm90a) {
  if (!kHasNvrtc) {
    std::printf("SKIPPED: this build has no CUDA toolkit (NVRTC)\n");
    GTEST_SKIP() << "no NVRTC";
  }
  std::mt19937_64 rng(3);
  int kernels = 0;
  double total_ms = 0, max_ms = 0;
  for (const char* text : kSchemes) {
    const QuantScheme scheme = QuantScheme::parse(text);
    const QCase c = make_case(rng, {4, 256}, kernels % 2 ? Dtype::f32 : Dtype::bf16,
                              static_cast<int>(rng() % 6));
    const QuantizedTensor q = QuantizedTensor::allocate(scheme, c.shape);
    for (bool check : {true, false}) {
      const FusedDesc d = FusedDesc::make({FusedOutput(q.view(), c.value, check)});
      for (const fusion::Variant& v : quant_variants(d)) {
        const fusion::KernelSource src = fusion::generate_cuda(*d.program, v);
        double ms = 0;
        try {
          const std::string cubin = fusion::compile_cuda(src, "sm_90a", "test", &ms);
          EXPECT_FALSE(cubin.empty());
        } catch (const Error& e) {
          FAIL() << text << " " << v.key() << ": " << e.what();
        }
        total_ms += ms;
        max_ms = std::max(max_ms, ms);
        ++kernels;
      }
    }
  }
  // Other outputs beside the codes (a bf16 and an f32 one; transposed: strided kernels).
  for (const char* text : {"fp8e4m3:token", "int4:block32:asym", "nvfp4"}) {
    for (const bool transposed : {false, true}) {
      const QCase c = make_case(rng, {4, 256}, Dtype::bf16, kernels);
      Tensor s1 = Tensor::empty(transposed ? Shape{256, 4} : Shape{4, 256}, Dtype::bf16);
      Tensor s2 = Tensor::empty({4, 256}, Dtype::f32);
      const QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse(text), c.shape);
      const FusedDesc d = FusedDesc::make(
          with_sides(q.view(), c.value, transposed ? s1.view().transpose(0, 1) : s1.view(), s2,
                     fusion::input(c.views[0]) + 1.0, kernels));
      for (const fusion::Variant& v : quant_variants(d)) {
        try {
          double ms = 0;
          EXPECT_FALSE(
              fusion::compile_cuda(fusion::generate_cuda(*d.program, v), "sm_90a", "test", &ms)
                  .empty());
        } catch (const Error& e) {
          FAIL() << text << " with other outputs, " << v.key() << ": " << e.what();
        }
        ++kernels;
      }
    }
  }
  std::printf("NVRTC: %d quantize-epilogue kernels compiled, mean %.0f ms, max %.0f ms\n", kernels,
              total_ms / std::max(kernels, 1), max_ms);
}

/// CUDA built-ins for running a row kernel on the CPU with one std::thread per CUDA
/// thread: __syncthreads is a barrier, warp shuffles go through memory between two
/// barriers (every thread of the row kernel reaches them together).
const char* const kThreadShim = R"(#pragma once
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local Dim3 blockIdx, threadIdx;
static Dim3 gridDim, blockDim;
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __int_as_float(int u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline double __longlong_as_double(long long u) { return std::bit_cast<double>(u); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
using std::exp; using std::log; using std::sqrt; using std::tanh; using std::erf;
using std::log1p; using std::pow; using std::trunc;
inline float sqrtf(float x) { return std::sqrt(x); }
inline float rintf(float x) { return std::nearbyint(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
static std::barrier<>* lb_emu_barrier = nullptr;
static float lb_emu_shfl[1024];
static char* lb_emu_dyn = nullptr;
inline void __syncthreads() { lb_emu_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  lb_emu_shfl[threadIdx.x] = v;
  __syncthreads();
  const float r = lb_emu_shfl[threadIdx.x ^ o];
  __syncthreads();
  return r;
}
static unsigned lb_emu_red[1024];
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned __reduce_max_sync(unsigned, unsigned v) {
  lb_emu_red[threadIdx.x] = v;
  __syncthreads();
  unsigned m = 0;
  for (unsigned i = threadIdx.x & ~31u; i < (threadIdx.x | 31u) + 1 && i < blockDim.x; ++i)
    m = max(m, lb_emu_red[i]);
  __syncthreads();
  return m;
}
static std::mutex lb_emu_atomic;
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> lock(lb_emu_atomic);
  const unsigned long long old = *p;
  if (v > old) *p = v;
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::lock_guard<std::mutex> lock(lb_emu_atomic);
  const unsigned old = *p;
  if (v > old) *p = v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> lock(lb_emu_atomic);
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> lock(lb_emu_atomic);
  const unsigned long long old = *p;
  *p = v;
  return old;
}
inline void __threadfence() {}
inline void __threadfence_system() {}
#define LB_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(lb_emu_dyn)
)";

const char* const kThreadMain = R"(
extern "C" int lowbit_emulate(const void* params, unsigned blocks, unsigned threads,
                              unsigned smem) {
  Params p;
  std::memcpy(&p, params, sizeof p);
  std::vector<double> dyn(smem / 8 + 4);
  lb_emu_dyn = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(dyn.data()) + 15) & ~uintptr_t{15});
  gridDim.x = blocks;
  blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b) {
    std::barrier<> bar(threads);
    lb_emu_barrier = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        blockIdx.x = b;
        threadIdx.x = t;
        lowbit_fused(p);
      });
    for (std::thread& th : ts) th.join();
  }
  return static_cast<int>(sizeof(Params));
}
)";

TEST(FusionQuantCodegen, RowKernelsRunOnAHostEmulator) {
  const char* cxx_env = std::getenv("CXX");
  const std::string cxx = cxx_env && *cxx_env ? cxx_env : "c++";
  if (std::system((cxx + " --version > /dev/null 2>&1").c_str()) != 0) {
    std::printf("SKIPPED: no host C++ compiler (%s) to emulate kernels\n", cxx.c_str());
    GTEST_SKIP() << "no host compiler";
  }
  const std::string dir = ::testing::TempDir() + fmt::format("lowbit_qemu_{}", ::getpid());
  std::filesystem::create_directories(dir + "/lowbit");
  const fusion::HeaderSet& h = fusion::jit_headers();
  for (size_t i = 0; i < h.names.size(); ++i) {
    if (h.names[i] == "cstdint" || h.names[i] == "bit") continue;
    std::ofstream(dir + "/" + h.names[i]) << h.contents[i];
  }
  std::ofstream(dir + "/shim.h") << kThreadShim;
  std::mt19937_64 rng(21);
  int kernels = 0;
  std::map<std::string, std::string> built;  // kernel source -> its library's stem
  // Variant v of d's kernel built against the shim and run on two blocks (the row loop
  // wraps), its check words at `flag` (two), the hand-off's at `host` (two, or null);
  // `size` gets what the kernel says sizeof(Params) is.
  // nvfp4: `amax` the statistics kernel's word.
  auto emulate = [&](const FusedDesc& d, const fusion::Variant& v, const Shape& shape,
                     unsigned long long* flag, unsigned long long* host, int& size,
                     int& param_bytes, unsigned* amax = nullptr) {
    const FusedArgs args = d.bound_args();
    const fusion::Layout L = fusion::make_layout(d);
    const fusion::KernelSource src = fusion::generate_cuda(*d.program, v);
    const std::vector<unsigned char> params =
        fusion::pack_params(*d.program, v, L, args, flag, host, amax);
    std::string& stem = built[src.code];  // each kernel is compiled once
    if (stem.empty()) {
      stem = fmt::format("{}/q{}", dir, kernels++);
      std::ofstream(stem + ".cpp") << "#include \"shim.h\"\n" << src.code << kThreadMain;
      const std::string cmd = fmt::format(
          "{} -std=c++20 -O0 -w -fPIC -shared -pthread -I{} {}.cpp -o {}.so", cxx, dir, stem, stem);
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << src.code;
    }
    void* so = ::dlopen((stem + ".so").c_str(), RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(so, nullptr) << ::dlerror();
    auto run = reinterpret_cast<int (*)(const void*, unsigned, unsigned, unsigned)>(
        ::dlsym(so, "lowbit_emulate"));
    ASSERT_NE(run, nullptr);
    const int64_t K = shape[shape.size() - 1];
    const int group = v.vec ? src.group : 1;
    const int64_t nb = d.scheme.granularity == Granularity::block ? K / d.scheme.block : 0;
    size = v.qstats || v.qlane
               ? run(params.data(), 2, fusion::kThreads, 0u)
               : run(params.data(), 2, quant_threads(v, K, group),
                     v.qreg > 0 || v.qrecompute ? 0u : static_cast<unsigned>(4 * K + 8 * nb));
    param_bytes = src.param_bytes;
    ::dlclose(so);
  };
  // Variant v of d's kernel after, for nvfp4, the statistics kernel of the same path (vec /
  // strided) into the absmax word; the check words at flag / host as emulate's.
  auto emulate_call = [&](const FusedDesc& d, const fusion::Variant& v, const Shape& shape,
                          unsigned long long* flag, unsigned long long* host, int& size,
                          int& param_bytes) {
    unsigned amax[4] = {0, 0, 0, 0};
    if (d.scheme.format == QuantFormat::nvfp4) {
      unsigned long long none[2] = {0, 0};
      emulate(d, v.stats_variant(), shape, none, nullptr, size, param_bytes, amax);
      if (HasFatalFailure()) return;
    }
    emulate(d, v, shape, flag, host, size, param_bytes, amax);
  };
  const char* schemes[] = {
      "int8:token:asym", "fp8e4m3:token",           "int4:block32", "uint4:token:asym",
      "mxfp4",           "int8:block64:scale=bf16", "nvfp4"};
  int si = 0;
  for (const char* text : schemes) {
    const QuantScheme scheme = QuantScheme::parse(text);
    const Shape shape = si % 2 ? Shape{5, 192} : Shape{3, 2, 64};
    const QCase c = make_case(rng, shape, si % 3 == 2 ? Dtype::f32 : Dtype::bf16, si);
    ++si;
    const QuantizedTensor want = QuantizedTensor::allocate(scheme, shape);
    fuse({{want.view(), c.value}});
    const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
    const FusedDesc d = FusedDesc::make({{got.view(), c.value}});
    unsigned long long flag[2] = {0, 0};
    const std::vector<fusion::Variant> variants = quant_variants(d);
    for (const fusion::Variant& v : variants) {
      if (v.qstats) continue;  // run before each nvfp4 row kernel below
      scribble(got, rng);
      int size = 0, param_bytes = -1;
      unsigned amax[4] = {0, 0, 0, 0};
      if (scheme.format == QuantFormat::nvfp4) {
        // The statistics kernel of the same path (vec / strided), then the row kernel.
        const fusion::Variant sv = v.stats_variant();
        ASSERT_NE(std::find(variants.begin(), variants.end(), sv), variants.end());
        unsigned long long none[2] = {0, 0};
        emulate(d, sv, shape, none, nullptr, size, param_bytes, amax);
        if (HasFatalFailure()) return;
        EXPECT_EQ(size, param_bytes);
        EXPECT_NE(amax[0], 0u) << "the statistics kernel found no absmax";
      }
      unsigned long long host[2] = {7, 0};
      emulate(d, v, shape, flag, host, size, param_bytes, amax);
      if (HasFatalFailure()) return;
      EXPECT_EQ(size, param_bytes);
      ASSERT_EQ(same_parts(want.view(), got.view()), "") << text << " variant " << v.key();
      EXPECT_EQ(flag[0], 0u);
      EXPECT_EQ(flag[1], 0u) << "the last block zeroes the count";
      EXPECT_EQ(host[0], 0u) << "the hand-off writes the (clean) flag";
      EXPECT_EQ(host[1], 1u) << "the hand-off raises done";
    }
  }
  // The lane kernel over several steps of its grid (2 blocks of 256 threads: 768 bf16 units
  // or 1536 f32 ones), the last step's lanes partly past the end.
  int lane_runs = 0, lane_schemes = 0;
  for (const char* text : {"int4:block32", "int4:block32:asym", "mxfp4", "nvfp4",
                           "fp8e4m3:block128", "int8:block64:scale=bf16", "mxfp8e5m2"}) {
    const QuantScheme scheme = QuantScheme::parse(text);
    const Shape shape{24, 256};
    // kind 3i: full inputs (the vector path), expressions of every form.
    const int i = lane_schemes++;
    const QCase c = make_case(rng, shape, i % 2 ? Dtype::f32 : Dtype::bf16, 3 * i);
    const QuantizedTensor want = unfused(c, scheme);
    const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
    const FusedDesc d = FusedDesc::make({{got.view(), c.value}});
    for (const fusion::Variant& v : quant_variants(d)) {
      if (!v.qlane) continue;
      scribble(got, rng);
      int size = 0, param_bytes = -1;
      unsigned long long flag[2] = {0, 0}, host[2] = {0, 0};
      emulate_call(d, v, shape, flag, host, size, param_bytes);
      if (HasFatalFailure()) return;
      EXPECT_EQ(size, param_bytes);
      ASSERT_EQ(same_parts(want.view(), got.view()), "") << text << " variant " << v.key();
      EXPECT_EQ(host[0], 0u) << "the hand-off writes the (clean) flag";
      ++lane_runs;
    }
  }
  EXPECT_EQ(lane_runs, 7) << "every scheme takes the lane kernel";
  // Other outputs beside the codes (a bf16 one, maybe transposed, and an f32 one; or an
  // fp8 one, whose 1-byte elements make the groups 16 wide, and an f64 one): pass 1 of every
  // row kernel stores them, in 16-byte words (the vector, register-row and lane kernels) or
  // element by element (the strided kernel); the codes are unchanged.
  int side_cases = 0;
  for (const char* text : {"fp8e4m3:token", "int4:block32:asym", "nvfp4", "int8:token"}) {
    const QuantScheme scheme = QuantScheme::parse(text);
    for (const int config : {0, 1, 2}) {
      const bool transposed = config == 1;
      const Dtype d1 = config == 2 ? Dtype::f8e4m3fn : Dtype::bf16;
      const Dtype d2 = config == 2 ? Dtype::f64 : Dtype::f32;
      const Shape shape{5, 192};
      const Shape base_shape = transposed ? Shape{192, 5} : shape;
      const QCase c = make_case(rng, shape, Dtype::bf16, side_cases);
      const Expr other = fusion::input(c.views[0]) * 0.5 + 1.0;
      const int qpos = side_cases++;
      auto view1 = [&](const Tensor& base) {
        return transposed ? base.view().transpose(0, 1) : base.view();
      };
      // The CPU epilogue's results (FusionQuantCpu checks them against the definition).
      const QuantizedTensor want = QuantizedTensor::allocate(scheme, shape);
      Tensor w1 = Tensor::empty(base_shape, d1), w2 = Tensor::empty(shape, d2);
      fuse(with_sides(want.view(), c.value, view1(w1), w2, other, qpos));
      const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
      Tensor g1 = Tensor::empty(base_shape, d1), g2 = Tensor::empty(shape, d2);
      const FusedDesc d =
          FusedDesc::make(with_sides(got.view(), c.value, view1(g1), g2, other, qpos));
      const std::vector<fusion::Variant> variants = quant_variants(d);
      int run = 0;
      for (const fusion::Variant& v : variants) {
        if (v.qstats) continue;
        EXPECT_FALSE(transposed && v.vec) << "a strided output takes the strided kernel";
        scribble(got, rng);
        std::memset(g1.data(), 0xff, static_cast<size_t>(g1.nbytes()));
        std::memset(g2.data(), 0xff, static_cast<size_t>(g2.nbytes()));
        int size = 0, param_bytes = -1;
        unsigned long long flag[2] = {0, 0}, host[2] = {0, 0};
        emulate_call(d, v, shape, flag, host, size, param_bytes);
        if (HasFatalFailure()) return;
        const std::string where = fmt::format(
            "{} variant {}{}, outputs {} / {}, quantized output at {}", text, v.key(),
            transposed ? " (transposed)" : "", dtype_name(d1), dtype_name(d2), qpos % 3);
        ASSERT_EQ(same_parts(want.view(), got.view()), "") << where;
        ASSERT_EQ(testing::compare_bytes(w1, g1), "") << where;
        ASSERT_EQ(testing::compare_bytes(w2, g2), "") << where;
        ++run;
      }
      EXPECT_GE(run, transposed ? 1 : 2) << text;
    }
  }
  // A NaN, then an Inf in a later row: every variant's flag names the NaN (the shared-memory
  // kernel finds it by its row search, the others per element), through the hand-off and
  // in the device word where there is none.
  for (const char* text : {"fp8e4m3:token", "mxfp4"}) {
    const QuantScheme scheme = QuantScheme::parse(text);
    const Shape shape{4, 192};
    Tensor x = Tensor::empty(shape, Dtype::f32);
    for (int64_t i = 0; i < x.numel(); ++i)
      x.data_as<float>()[i] = 1.0f + static_cast<float>(i % 7);
    x.data_as<float>()[2 * 192 + 37] = -1.0f;  // log: NaN
    x.data_as<float>()[3 * 192 + 5] = 0.0f;    // log: -inf
    const QuantizedTensor got = QuantizedTensor::allocate(scheme, shape);
    const FusedDesc d = FusedDesc::make({{got.view(), fusion::log(fusion::input(x.view()))}});
    const uint64_t want = ~(uint64_t{2 * 192 + 37} * 2 + 1);
    for (const fusion::Variant& v : quant_variants(d)) {
      for (const bool hand_off : {true, false}) {
        unsigned long long flag[2] = {0, 0}, host[2] = {0, 0};
        int size = 0, param_bytes = -1;
        emulate(d, v, shape, flag, hand_off ? host : nullptr, size, param_bytes);
        if (HasFatalFailure()) return;
        if (hand_off) {
          EXPECT_EQ(host[0], want) << "variant " << v.key();
          EXPECT_EQ(host[1], 1u) << "variant " << v.key();
          EXPECT_EQ(flag[0], 0u) << "variant " << v.key() << ": the hand-off zeroes the flag";
        } else {
          EXPECT_EQ(flag[0], want) << "variant " << v.key();
          EXPECT_EQ(host[1], 0u);
        }
      }
    }
  }
  std::filesystem::remove_all(dir);
  std::printf("emulated %d quantize-epilogue row kernels on the host\n", kernels);
  EXPECT_GT(kernels, 8);
}

// ---- GPU ----------------------------------------------------------------------------------------

/// A device quantized tensor's parts copied to the host.
struct HostParts {
  Tensor codes, scale, zero, global;
  QuantizedView view;
  explicit HostParts(const QuantizedTensor& dq) {
    view.scheme = dq.scheme;
    view.shape = dq.shape;
    codes = testing::to_host(dq.codes);
    scale = testing::to_host(dq.scale);
    view.codes = codes;
    view.scale = scale;
    if (dq.zero.data()) {
      zero = testing::to_host(dq.zero);
      view.zero = zero;
    }
    if (dq.global_scale.data()) {
      global = testing::to_host(dq.global_scale);
      view.global_scale = global;
    }
  }
};

TEST(FusionQuantCuda, MatchesTheCpuEpilogue) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  std::mt19937_64 rng(17);
  const Shape shapes[] = {{64, 4096}, {3, 5, 256}, {130, 96}, {1000, 1024}, {16, 8192 + 32}};
  int cases = 0;
  // Both row kernels: the shared-memory one alone (exact programs' default), then the
  // register-row one wherever it applies (fast math's; allowed here for these exact
  // programs), which must give the same bits.
  const int units = fusion::g_quant_reg_units.load();
  for (const bool reg : {false, true}) {
    fusion::g_quant_reg_exact.store(reg);
    fusion::g_quant_reg_units.store(reg ? units : 0);
    fusion::g_quant_lane.store(reg);  // per-block groups: the lane kernel with the second pass
    for (const char* text : kSchemes) {
      const QuantScheme scheme = QuantScheme::parse(text);
      for (int k = 0; k < 4; ++k) {
        const Shape& shape = shapes[(k + cases) % std::size(shapes)];
        const int64_t K = shape[shape.size() - 1];
        if (scheme.granularity == Granularity::block && K % scheme.block != 0) continue;
        const QCase c = make_case(rng, shape, k % 2 ? Dtype::f32 : Dtype::bf16, k + cases);
        const QuantizedTensor want = QuantizedTensor::allocate(scheme, shape);
        fuse({{want.view(), c.value}});
        // The same program on the GPU: inputs copied, a device quantized tensor.
        std::vector<Tensor> din;
        FusedArgs args;
        for (const Tensor& t : c.inputs) {
          din.push_back(testing::to_device(t, gpu));
          args.inputs.push_back(din.back());
        }
        const QuantizedTensor dq = QuantizedTensor::allocate(scheme, shape, gpu);
        args.outputs.push_back(TensorView());
        args.quantized = dq.view();
        FusedDesc dd = FusedDesc::make({{want.view(), c.value}});
        dd.device = gpu;
        dd.state = std::make_shared<fusion::PlanState>();
        const FusedPlan plan = FusedPlan::select(dd);
        ASSERT_EQ(plan.sku().backend, Backend::cuda);
        // nvfp4: the statistics kernel's word.
        const Buffer ws(static_cast<int64_t>(plan.workspace_size()), gpu);
        EXPECT_EQ(plan.workspace_size() > 0, scheme.format == QuantFormat::nvfp4);
        try {
          plan.run(Stream::default_for(gpu), {ws.data(), plan.workspace_size()}, args);
          Stream::default_for(gpu).synchronize();
        } catch (const Error& e) {
          FAIL() << text << " " << shape.str() << ": " << e.what();
        }
        const HostParts back(dq);
        ASSERT_EQ(same_parts(want.view(), back.view), "")
            << text << " " << shape.str() << " " << c.text << " (cuda"
            << (reg ? ", register-row kernel allowed)" : ")");
        ++cases;
      }
    }
  }
  fusion::g_quant_reg_exact.store(false);
  fusion::g_quant_reg_units.store(units);
  fusion::g_quant_lane.store(true);
  std::printf(
      "cuda: %d quantize-epilogue cases bit-identical to the cpu epilogue (half of them with "
      "the register-row and lane kernels allowed)\n",
      cases);
}

TEST(FusionQuantCuda, OtherOutputsBesideTheCodes) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  std::mt19937_64 rng(29);
  const int units = fusion::g_quant_reg_units.load();
  int cases = 0;
  for (const bool reg : {false, true}) {
    fusion::g_quant_reg_exact.store(reg);
    fusion::g_quant_reg_units.store(reg ? units : 0);
    for (const char* text :
         {"fp8e4m3:token", "int8:token:asym", "int4:block32", "mxfp4", "nvfp4"}) {
      const QuantScheme scheme = QuantScheme::parse(text);
      for (int k = 0; k < 3; ++k) {
        // Vector kernels (the register-row one where allowed), and a transposed output:
        // the strided kernel.
        const Shape shape = k == 0 ? Shape{64, 4096} : k == 1 ? Shape{130, 96} : Shape{3, 5, 256};
        const bool transposed = k == 1;
        const Shape base_shape = transposed ? Shape{96, 130} : shape;
        auto view1 = [&](const Tensor& base) {
          return transposed ? base.view().transpose(0, 1) : base.view();
        };
        const int kind = k + cases;
        const QCase c = make_case(rng, shape, k == 2 ? Dtype::f32 : Dtype::bf16, kind);
        const Expr other = fusion::input(c.views[0]) * 0.5 + 1.0;
        const QuantizedTensor want = QuantizedTensor::allocate(scheme, shape);
        Tensor w1 = Tensor::empty(base_shape, Dtype::bf16), w2 = Tensor::empty(shape, Dtype::f32);
        fuse(with_sides(want.view(), c.value, view1(w1), w2, other, kind));
        // The same call on the GPU: inputs copied, the expressions over them.
        const Tensor da = testing::to_device(c.inputs[0], gpu);
        const Tensor db = testing::to_device(c.inputs[1], gpu);
        std::string unused;
        const Expr dvalue = case_expr(da.view(), db.view(), kind, &unused);
        const Expr dother = fusion::input(da.view()) * 0.5 + 1.0;
        const QuantizedTensor dq = QuantizedTensor::allocate(scheme, shape, gpu);
        const Tensor g1 = poisoned(base_shape, Dtype::bf16, gpu);
        const Tensor g2 = poisoned(shape, Dtype::f32, gpu);
        try {
          fuse(with_sides(dq.view(), dvalue, view1(g1), g2, dother, kind));
          Stream::default_for(gpu).synchronize();
        } catch (const Error& e) {
          FAIL() << text << " " << shape.str() << ": " << e.what();
        }
        const std::string where =
            fmt::format("{} {} {} quantized output at {}{}", text, shape.str(), c.text, kind % 3,
                        reg ? " (register-row kernel allowed)" : "");
        ASSERT_EQ(same_parts(want.view(), HostParts(dq).view), "") << where;
        ASSERT_EQ(testing::compare_bytes(w1, testing::to_host(g1)), "") << where;
        ASSERT_EQ(testing::compare_bytes(w2, testing::to_host(g2)), "") << where;
        ++cases;
      }
    }
  }
  fusion::g_quant_reg_exact.store(false);
  fusion::g_quant_reg_units.store(units);
  std::printf("cuda: %d quantize-epilogue calls with other outputs match the cpu\n", cases);
}

TEST(FusionQuantCuda, RowsLongerThanSharedMemory) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  std::mt19937_64 rng(31);
  // 70000 values of 4 bytes: more than the 227 KiB a block may have on an H100, so per-row
  // scales take the recomputing row kernel.
  const Shape shape{3, 70000};
  int cases = 0;
  for (const char* text :
       {"fp8e4m3:token", "int8:token", "int8:token:asym", "int4:token", "uint4:token:asym"}) {
    const QuantScheme scheme = QuantScheme::parse(text);
    for (const bool other : {false, true}) {
      const QCase c = make_case(rng, shape, Dtype::bf16, 3 * cases);  // full inputs: vec
      const QuantizedTensor want = unfused(c, scheme);
      const Tensor da = testing::to_device(c.inputs[0], gpu);
      const Tensor db = testing::to_device(c.inputs[1], gpu);
      std::string unused;
      const Expr dvalue = case_expr(da.view(), db.view(), 3 * cases, &unused);
      const QuantizedTensor dq = QuantizedTensor::allocate(scheme, shape, gpu);
      Tensor kept;
      try {
        if (other) {  // and another output beside the codes
          kept = poisoned(shape, Dtype::bf16, gpu);
          fuse({{kept, dvalue}, {dq.view(), dvalue}});
        } else {
          fuse({{dq.view(), dvalue}});
        }
        Stream::default_for(gpu).synchronize();
      } catch (const Error& e) {
        FAIL() << text << ": " << e.what();
      }
      ASSERT_EQ(same_parts(want.view(), HostParts(dq).view), "") << text << " " << c.text;
      if (other) {
        Tensor y = Tensor::empty(shape, Dtype::bf16);
        fuse({{y, c.value}});
        ASSERT_EQ(testing::compare_bytes(y, testing::to_host(kept)), "") << text;
      }
      ++cases;
    }
  }
  // A NaN in the last row is named.
  Tensor a = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < a.numel(); ++i) a.data_as<float>()[i] = 1.0f + static_cast<float>(i % 7);
  a.data_as<float>()[2 * 70000 + 68001] = -1.0f;  // log: NaN
  const Tensor da = testing::to_device(a, gpu);
  const QuantizedTensor q =
      QuantizedTensor::allocate(QuantScheme::parse("fp8e4m3:token"), shape, gpu);
  testing::expect_error(
      [&] {
        fuse({{q.view(), fusion::log(fusion::input(da))}});
      },
      ErrorCode::invalid_argument, "[2, 68001] (flat index 208001) is NaN");
  std::printf("cuda: %d epilogue calls on rows of 70000 match the cpu\n", cases);
}

TEST(FusionQuantCuda, NonFiniteValuesAreRefused) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  Tensor a = Tensor::empty({300, 256}, Dtype::f32);
  for (int64_t i = 0; i < a.numel(); ++i) a.data_as<float>()[i] = 1.0f + (i % 7);
  a.data_as<float>()[250 * 256 + 3] = -1.0f;
  a.data_as<float>()[270 * 256 + 1] = 0.0f;
  const Tensor da = testing::to_device(a, gpu);
  const QuantizedTensor q =
      QuantizedTensor::allocate(QuantScheme::parse("fp8e4m3:token"), a.shape(), gpu);
  // The shared-memory row kernel alone (exact programs' default), then the register-row
  // kernel (fast math's; for these short rows, exact programs' when allowed).
  const int units = fusion::g_quant_reg_units.load();
  for (const bool reg : {false, true}) {
    SCOPED_TRACE(reg ? "register-row kernel allowed" : "shared-memory row kernel");
    fusion::g_quant_reg_exact.store(reg);
    fusion::g_quant_reg_units.store(reg ? units : 0);
    testing::expect_error(
        [&] {
          fuse({{q.view(), fusion::log(fusion::input(da))}});
        },
        ErrorCode::invalid_argument, "[250, 3] (flat index 64003) is NaN");
    // The thread's check word is zero again: a finite call passes, and a later refusal names
    // its own first bad element (a stale word would still say 64003, the smaller index).
    Tensor b = Tensor::empty({300, 256}, Dtype::f32);
    for (int64_t i = 0; i < b.numel(); ++i) b.data_as<float>()[i] = 1.0f + (i % 5);
    const Tensor db = testing::to_device(b, gpu);
    fuse({{q.view(), fusion::log(fusion::input(db))}});
    b.data_as<float>()[280 * 256 + 5] = -2.0f;
    const Tensor db2 = testing::to_device(b, gpu);
    testing::expect_error(
        [&] {
          fuse({{q.view(), fusion::log(fusion::input(db2))}});
        },
        ErrorCode::invalid_argument, "[280, 5] (flat index 71685) is NaN");
    fuse({{q.view(), fusion::log(fusion::input(db))}});
  }
  fusion::g_quant_reg_exact.store(false);
  fusion::g_quant_reg_units.store(units);
}

}  // namespace
}  // namespace lowbit
