// The CPU fusion kernel's vector steps (src/jit/cpu_eval_simd.cpp) against its scalar
// loops, bit for bit (NaN compared as NaN: payloads and signs are not specified).
//
//  - Each vectorised op run directly on about a million f32 bit patterns (a stride through
//    all 2^32, plus zeros, infinities, NaNs, subnormals and the formulas' own branch
//    points), against jit_math.inc's scalar function, with tile lengths that leave a
//    partial last vector.
//  - Random expressions of every op over inputs of many dtypes (broadcast, transposed and
//    sliced views, specials and subnormals from the test support's fill_random), sizes
//    around the 1024-element tile (ragged last tiles), run by fuse() with the vector
//    steps and again with the scalar loops; the outputs must have the same bits.
#pragma GCC optimize("fp-contract=off")  // the scalar formulas, as the kernels run them

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "jit/cpu_eval_simd.hpp"
#include "jit/jit.hpp"
#include "jit/jit_math_host.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using fusion::Expr;
using fusion::Instr;
using fusion::Num;
using fusion::Op;
using namespace jit_math;

/// Restores the vector steps when a test ends (also on failure).
struct SimdOn {
  ~SimdOn() { fusion::set_cpu_simd_for_testing(true); }
};

fusion::SimdSteps steps_or_skip() {
  fusion::set_cpu_simd_for_testing(true);
  return fusion::cpu_simd_steps();
}

/// Runs fn(steps) once per target this CPU supports that has the vector steps (x86 with
/// FMA: AVX2 and the AVX-512 ones), each forced in turn; returns how many ran.
template <class Fn>
int for_each_target(Fn fn) {
  int ran = 0;
  hwy::SetSupportedTargetsForTest(0);
  for (int64_t m = hwy::SupportedTargets(); m != 0; m &= m - 1) {
    hwy::SetSupportedTargetsForTest(m & -m);
    const fusion::SimdSteps s = steps_or_skip();
    if (!s.step) continue;
    SCOPED_TRACE(s.target);
    std::printf("vector steps built for %s\n", s.target);
    fn(s);
    ++ran;
  }
  hwy::SetSupportedTargetsForTest(0);
  return ran;
}

bool same_f32(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (a != a && b != b);
}

/// f32 bit patterns: a stride through all of them, then specials and branch points.
std::vector<float> swept_values() {
  std::vector<float> v;
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 4093)
    v.push_back(std::bit_cast<float>(static_cast<uint32_t>(b)));
  const float points[] = {
      0.0f,    -0.0f,  1.0f,   -1.0f,   0.55f,           -0.55f,        4.0f,           -4.0f,
      20.0f,   -20.0f, 88.8f,  -86.5f,  -104.0f,         88.0f,         -87.0f,         -103.0f,
      0.5f,    2.0f,   1e-40f, -1e-40f, 1.17549435e-38f, 3.4028235e38f, -3.4028235e38f, 1e-45f,
      0.0001f, 10.0f,  -10.0f, 0.999f,  1.001f};
  for (float p : points) {
    v.push_back(p);
    v.push_back(std::nextafter(p, INFINITY));
    v.push_back(std::nextafter(p, -INFINITY));
  }
  for (uint32_t b : {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu,
                     0x00000001u, 0x807fffffu, 0x00800000u, 0x80800000u})
    v.push_back(std::bit_cast<float>(b));
  // Ordinary values, where most of the arithmetic happens.
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int i = 0; i < 200000; ++i) v.push_back(normal(rng));
  return v;
}

Instr f32_instr(Op op, Dtype dtype = Dtype::f32) {
  Instr in;
  in.op = op;
  in.num = Num::f32;
  in.arg_num = Num::f32;
  in.dtype = dtype;
  return in;
}

/// Runs `in` through the vector step over x (and y, z) in tiles of `tile` elements, and
/// checks every element against `ref`.
template <class Ref>
void check_op(const fusion::SimdSteps& s, const Instr& in, const std::vector<float>& x,
              const std::vector<float>& y, const std::vector<float>& z, Ref ref, const char* name) {
  const int tile = 1021;  // a partial vector at the end of each tile
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> out(x.size(), std::bit_cast<float>(0xa5a5a5a5u));
  for (int64_t i = 0; i < n; i += tile) {
    const int m = static_cast<int>(std::min<int64_t>(tile, n - i));
    ASSERT_TRUE(s.step(in, out.data() + i, x.data() + i, y.data() + i, z.data() + i, m))
        << name << " is not vectorised";
  }
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float want = ref(x[i], y[i], z[i]);
    if (!same_f32(want, out[i]) && bad++ < 5)
      ADD_FAILURE() << fmt::format(
          "{}({:a}, {:a}, {:a}): vector {:a} ({:08x}), scalar {:a} ({:08x})", name, x[i], y[i],
          z[i], out[i], std::bit_cast<uint32_t>(out[i]), want, std::bit_cast<uint32_t>(want));
  }
  EXPECT_EQ(bad, 0) << name;
}

TEST(FusionCpuSimd, EveryVectorStepGivesTheScalarFormulasBits) {
  SimdOn restore;
  const std::vector<float> x = swept_values();
  // Second and third operands: the same values in two other orders.
  std::vector<float> y = x, z = x;
  std::mt19937_64 rng(5);
  std::shuffle(y.begin(), y.end(), rng);
  std::shuffle(z.begin(), z.end(), rng);
  // A share of equal operands (ties of min / max / compares) and signed zeros.
  for (size_t i = 0; i < y.size(); i += 7) y[i] = x[i];
  for (size_t i = 3; i < y.size(); i += 11) y[i] = -x[i];
  // where's condition: mostly 0 / 1 as compares give, plus the swept values (NaN is true).
  std::vector<float> cond = x;
  for (size_t i = 0; i < cond.size(); ++i)
    if (i % 3) cond[i] = (i % 3 == 1) ? 0.0f : 1.0f;
  // Every target with the vector steps (AVX2 and AVX-512 differ in places: exp's scaling).
  const int ran = for_each_target([&](const fusion::SimdSteps& s) {
#define UN(op, expr) \
  check_op(          \
      s, f32_instr(Op::op), x, y, z, [](float a, float, float) { return expr; }, #op)
#define BIN(op, expr) \
  check_op(           \
      s, f32_instr(Op::op), x, y, z, [](float a, float b, float) { return expr; }, #op)
    UN(neg, lb_neg(a));
    UN(abs, lb_abs(a));
    UN(relu, lb_relu(a));
    UN(sqrt, lb_sqrt(a));
    UN(rsqrt, lb_rsqrt(a));
    UN(exp, lb_exp(a));
    UN(log, lb_log(a));
    UN(tanh, lb_tanh(a));
    UN(sigmoid, lb_sigmoid(a));
    UN(silu, lb_silu(a));
    UN(softplus, lb_softplus(a));
    UN(gelu, lb_gelu_erf(a));
    UN(gelu_tanh, lb_gelu_tanh(a));
    check_op(
        s, f32_instr(Op::cast, Dtype::bf16), x, y, z,
        [](float a, float, float) { return float_of(lb_bf16_bits(a) << 16); }, "cast bf16");
    check_op(
        s, f32_instr(Op::cast, Dtype::f32), x, y, z, [](float a, float, float) { return a; },
        "cast f32");
    BIN(add, lb_add(a, b));
    BIN(sub, lb_sub(a, b));
    BIN(mul, lb_mul(a, b));
    BIN(div, lb_div(a, b));
    BIN(minimum, lb_min(a, b));
    BIN(maximum, lb_max(a, b));
    BIN(leaky_relu, lb_leaky_relu(a, b));
    BIN(lt, lb_lt(a, b));
    BIN(le, lb_le(a, b));
    BIN(gt, lb_gt(a, b));
    BIN(ge, lb_ge(a, b));
    BIN(eq, lb_eq(a, b));
    BIN(ne, lb_ne(a, b));
#undef UN
#undef BIN
    check_op(
        s, f32_instr(Op::clamp), x, y, z,
        [](float a, float b, float c) { return lb_clamp(a, b, c); }, "clamp");
    check_op(
        s, f32_instr(Op::where), cond, y, z,
        [](float c, float a, float b) { return lb_where(c, a, b); }, "where");

    // pow and f64 steps are not vectorised: the step declines, touching nothing.
    Instr pw = f32_instr(Op::pow);
    pw.param = 2.5;
    float o = 7.0f;
    EXPECT_FALSE(s.step(pw, &o, x.data(), nullptr, nullptr, 1));
    EXPECT_EQ(o, 7.0f);
    Instr f64_add = f32_instr(Op::add);
    f64_add.num = f64_add.arg_num = Num::f64;
    EXPECT_FALSE(s.step(f64_add, &o, x.data(), x.data(), nullptr, 1));
  });
  if (ran == 0) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
}

// sigmoid / silu take e^-x scaled by vscalefps on AVX-512 with the clamp mirrored
// (lb_exp_n1p_neg): every f32 value where the scaling meets the clamps, overflows or
// underflows (|x| in [64, 128]) and near zero (|x| below 2^-20) against the scalar formulas.
TEST(FusionCpuSimd, SigmoidAndSiluAtTheEndsOfTheExponentRange) {
  SimdOn restore;
  std::vector<float> x;
  for (uint32_t b = 0x42800000u; b < 0x43000000u; ++b)  // [64, 128)
    for (uint32_t sign : {0u, 0x80000000u}) x.push_back(std::bit_cast<float>(b | sign));
  for (uint32_t b = 0; b < 0x35800000u; b += 97)  // [0, 2^-20), strided
    for (uint32_t sign : {0u, 0x80000000u}) x.push_back(std::bit_cast<float>(b | sign));
  const std::vector<float> none(x.size(), 0.0f);
  // Every target: AVX-512 scales by vscalefps, AVX2 through the exponent's bits.
  const int ran = for_each_target([&](const fusion::SimdSteps& s) {
    check_op(
        s, f32_instr(Op::sigmoid), x, none, none,
        [](float a, float, float) { return lb_sigmoid(a); }, "sigmoid");
    check_op(
        s, f32_instr(Op::silu), x, none, none, [](float a, float, float) { return lb_silu(a); },
        "silu");
  });
  if (ran == 0) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  std::printf("sigmoid and silu: %zu values each, %d targets\n", x.size(), ran);
}

TEST(FusionCpuSimd, Bf16LoadAndStoreMatchNumeric) {
  SimdOn restore;
  const fusion::SimdSteps s = steps_or_skip();
  if (!s.step) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  const std::vector<float> x = swept_values();
  const int n = 1000;  // not a multiple of any vector length
  // 64-byte aligned: every other call takes the non-temporal stores.
  Tensor buf = Tensor::empty({n + 8}, Dtype::bf16);
  uint16_t* codes = buf.data_as<uint16_t>();
  std::fill_n(codes, n + 8, uint16_t{0xa5a5});
  for (size_t i = 0; i + n <= x.size(); i += n) {
    s.store_bf16(x.data() + i, codes, n, (i / n) % 2 == 1);
    for (int k = 0; k < n; ++k)
      ASSERT_EQ(codes[k], f32_to_bf16(x[i + k])) << std::hex << std::bit_cast<uint32_t>(x[i + k]);
    ASSERT_EQ(codes[n], 0xa5a5) << "wrote past the end";
  }
  std::vector<uint16_t> all(65536);
  for (uint32_t c = 0; c < 65536; ++c) all[c] = static_cast<uint16_t>(c);
  std::vector<float> back(65536 + 1, 1.5f);
  s.load_bf16(all.data(), back.data(), 65535);
  for (uint32_t c = 0; c < 65535; ++c)
    ASSERT_EQ(std::bit_cast<uint32_t>(back[c]), c << 16) << std::hex << c;
  EXPECT_EQ(back[65535], 1.5f);
}

// ---- whole expressions through fuse(): vector steps against the scalar loops ----------------

const Dtype kInputs[] = {Dtype::f32,      Dtype::bf16, Dtype::f16, Dtype::f64,
                         Dtype::f8e4m3fn, Dtype::i8,   Dtype::u8,  Dtype::i32};
const Dtype kOutputs[] = {Dtype::f32, Dtype::bf16,   Dtype::f16, Dtype::f64,
                          Dtype::i32, Dtype::f8e5m2, Dtype::u8};
const Dtype kCasts[] = {Dtype::f32, Dtype::bf16, Dtype::f16, Dtype::f8e4m3fn, Dtype::i8};

Expr random_expr(std::mt19937_64& rng, const std::vector<Expr>& leaves, int depth) {
  if (depth == 0 || rng() % 6 == 0) {
    if (rng() % 5 == 0) {
      static const double consts[] = {0.0,  1.0,  -2.0,         0.5,  1.25,   -8.0,  8.0,
                                      1e-3, 30.0, std::nan(""), -0.0, -1e300, 1e300, -INFINITY};
      return Expr(consts[rng() % std::size(consts)]);
    }
    return leaves[rng() % leaves.size()];
  }
  auto sub = [&] { return random_expr(rng, leaves, depth - 1); };
  switch (rng() % 30) {
    case 0:
      return sub() + sub();
    case 1:
      return sub() - sub();
    case 2:
      return sub() * sub();
    case 3:
      return sub() / sub();
    case 4:
      return -sub();
    case 5:
      return fusion::abs(sub());
    case 6:
      return fusion::minimum(sub(), sub());
    case 7:
      return fusion::maximum(sub(), sub());
    case 8:
      return fusion::clamp(sub(), rng() % 8 ? -8.0 : std::nan(""), 8.0);
    case 9:
      return fusion::clamp(sub(), sub(), sub());
    case 10:
      return fusion::where(sub() > sub(), sub(), sub());
    case 11:
      return fusion::where(fusion::ne(sub(), 0), sub(), -0.5);
    case 12:
      return fusion::lt(sub(), sub()) + fusion::le(sub(), sub());
    case 13:
      return fusion::ge(sub(), sub()) - fusion::eq(sub(), sub());
    case 14:
      return fusion::exp(sub());
    case 15:
      return fusion::log(sub());
    case 16:
      return fusion::sqrt(sub());
    case 17:
      return fusion::rsqrt(sub());
    case 18:
      return fusion::tanh(sub());
    case 19:
      return fusion::sigmoid(sub());
    case 20:
      return fusion::relu(sub());
    case 21:
      return fusion::leaky_relu(sub(), 0.2);
    case 22:
      return fusion::gelu(sub());
    case 23:
      return fusion::gelu(sub(), "tanh");
    case 24:
      return fusion::silu(sub());
    case 25:
      return fusion::softplus(sub());
    case 26:
      return fusion::pow(sub(), rng() % 2 ? 2.0 : -0.75);
    case 27:
      return fusion::cast(sub(), kCasts[rng() % std::size(kCasts)]);
    case 28:
      return fusion::silu(sub() * 1.25 + sub()) * sub() - sub() * 0.5;
    default:
      return fusion::scale(sub(), 0.375);
  }
}

/// A tensor that `view` lies in (kept alive beside it).
struct Placed {
  Tensor base;
  TensorView view;
};

/// An operand of `shape`: contiguous, transposed (last two dims swapped in memory) or
/// every other element of the last dim.
Placed place(const Shape& shape, Dtype dt, std::mt19937_64& rng, bool fill) {
  const int nd = shape.size();
  const int how = nd == 0 ? 0 : static_cast<int>(rng() % 3);
  Placed p;
  if (how == 1 && nd >= 2) {
    Shape t = shape;
    std::swap(t[nd - 1], t[nd - 2]);
    p.base = Tensor::empty(t, dt);
    p.view = p.base.view().transpose(nd - 2, nd - 1);
  } else if (how == 2 && !is_packed(dt)) {
    Shape t = shape;
    t[nd - 1] *= 2;
    p.base = Tensor::empty(t, dt);
    p.view = p.base.view().slice(nd - 1, 0, t[nd - 1], 2);
  } else {
    p.base = Tensor::empty(shape, dt);
    p.view = p.base.view();
  }
  if (fill) testing::fill_random(p.base.data(), dt, numel(p.base.shape()), rng);
  return p;
}

bool same_element(const void* x, const void* y, Dtype dt, int64_t i) {
  switch (dt) {
    case Dtype::f32: {
      float a, b;
      std::memcpy(&a, static_cast<const float*>(x) + i, 4);
      std::memcpy(&b, static_cast<const float*>(y) + i, 4);
      return same_f32(a, b);
    }
    case Dtype::f64: {
      const double a = static_cast<const double*>(x)[i], b = static_cast<const double*>(y)[i];
      return std::memcmp(&a, &b, 8) == 0 || (a != a && b != b);
    }
    case Dtype::bf16:
    case Dtype::f16: {
      const uint16_t a = static_cast<const uint16_t*>(x)[i], b = static_cast<const uint16_t*>(y)[i];
      const uint16_t m = dt == Dtype::bf16 ? 0x7f80 : 0x7c00;
      const bool na = (a & m) == m && (a & ~m & 0x7fff), nb = (b & m) == m && (b & ~m & 0x7fff);
      return a == b || (na && nb);
    }
    default: {
      const int64_t size = bit_width(dt) / 8;
      return std::memcmp(static_cast<const char*>(x) + i * size,
                         static_cast<const char*>(y) + i * size, static_cast<size_t>(size)) == 0 ||
             (dt == Dtype::f8e5m2 && (static_cast<const uint8_t*>(x)[i] & 0x7f) > 0x7c &&
              (static_cast<const uint8_t*>(y)[i] & 0x7f) > 0x7c);
    }
  }
}

TEST(FusionCpuSimd, RandomExpressionsMatchTheScalarLoopsBitForBit) {
  SimdOn restore;
  const fusion::SimdSteps s = steps_or_skip();
  if (!s.step) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  static const int64_t lasts[] = {1, 3, 16, 17, 1000, 1024, 1025, 2049, 3001};
  const int kCases = 600;
  int64_t elements = 0;
  for (int k = 0; k < kCases; ++k) {
    std::mt19937_64 rng(500 + k);
    // Shapes from a scalar to a few tiles, so that last tiles are ragged.
    Shape shape;
    const int nd = static_cast<int>(rng() % 4);
    for (int d = 0; d + 1 < nd; ++d) shape.push_back(1 + static_cast<int64_t>(rng() % 3));
    if (nd > 0) shape.push_back(lasts[rng() % std::size(lasts)]);
    std::vector<Placed> ins;
    std::vector<Expr> leaves;
    const int n_in = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < n_in; ++i) {
      Shape sh;  // broadcastable: leading dims dropped, extents set to 1
      const int drop = nd > 0 ? static_cast<int>(rng() % (nd + 1)) : 0;
      for (int d = drop; d < nd; ++d) sh.push_back(rng() % 4 == 0 ? 1 : shape[d]);
      ins.push_back(place(sh, kInputs[rng() % std::size(kInputs)], rng, true));
      leaves.push_back(fusion::input(ins.back().view));
    }
    // One or two outputs (a second one shares the inputs and often sub-expressions).
    const Expr e = random_expr(rng, leaves, 1 + static_cast<int>(rng() % 4));
    const int n_out = 1 + static_cast<int>(rng() % 2);
    std::vector<Expr> values{e};
    if (n_out == 2)
      values.push_back(rng() % 2 ? random_expr(rng, leaves, 2) : fusion::silu(e) * leaves[0]);
    std::vector<Placed> simd;
    std::vector<Tensor> scalar;
    std::vector<FusedOutput> on, off;
    std::string what = fmt::format("case {} shape {}:", k, shape.str());
    for (const Expr& v : values) {
      const Dtype odt = kOutputs[rng() % std::size(kOutputs)];
      simd.push_back(place(shape, odt, rng, false));
      scalar.push_back(Tensor::empty(shape, odt));
      std::memset(simd.back().base.data(), testing::kPoison,
                  static_cast<size_t>(simd.back().base.nbytes()));
      std::memset(scalar.back().data(), testing::kPoison,
                  static_cast<size_t>(scalar.back().nbytes()));
      on.push_back({simd.back().view, v});
      off.push_back({scalar.back().view(), v});
      what += fmt::format("\n  -> {}: {}", dtype_name(odt), v.str());
    }
    if (std::getenv("FUSION_TRACE")) std::fprintf(stderr, "%s\n", what.c_str());
    fusion::set_cpu_simd_for_testing(true);
    fuse(on);
    fusion::set_cpu_simd_for_testing(false);
    fuse(off);
    fusion::set_cpu_simd_for_testing(true);
    const int64_t n = numel(shape);
    for (size_t o = 0; o < values.size(); ++o) {
      const Tensor got = testing::to_host(simd[o].view);  // contiguous copy
      const Dtype odt = scalar[o].dtype();
      for (int64_t i = 0; i < n; ++i)
        ASSERT_TRUE(same_element(got.data(), scalar[o].data(), odt, i))
            << what << "\n  output " << o << " element " << i;
    }
    elements += n;
  }
  std::printf("%d random expressions, %lld elements identical\n", kCases,
              static_cast<long long>(elements));
}

TEST(FusionCpuSimd, InPlaceChainsMatchTheScalarLoops) {
  // y = chain(y, b) in place, and a second output z that reads y after it: the chain
  // that would store y itself must not (it runs before the tile's later reads of y).
  SimdOn restore;
  const fusion::SimdSteps s = steps_or_skip();
  if (!s.step) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  for (int64_t n : {int64_t{1}, int64_t{63}, int64_t{1000}, int64_t{4099}, int64_t{70001}}) {
    std::mt19937_64 rng(static_cast<uint64_t>(n));
    Tensor y = testing::random_tensor({n}, Dtype::bf16, rng);
    Tensor b = testing::random_tensor({n}, Dtype::bf16, rng);
    Tensor y2 = Tensor::empty({n}, Dtype::bf16);
    std::memcpy(y2.data(), y.data(), static_cast<size_t>(y.nbytes()));
    Tensor z = Tensor::empty({n}, Dtype::bf16), z2 = Tensor::empty({n}, Dtype::bf16);
    auto outputs = [&](const Tensor& yt, const Tensor& zt) {
      const Expr a = fusion::input(yt), c = fusion::input(b);
      return std::vector<FusedOutput>{
          {yt, fusion::clamp(fusion::silu(a * 1.25 + c) * c - a * 0.5, -8.0, 8.0)},
          {zt, fusion::sigmoid(a * 2.0) + c}};
    };
    fuse(outputs(y, z));
    fusion::set_cpu_simd_for_testing(false);
    fuse(outputs(y2, z2));
    fusion::set_cpu_simd_for_testing(true);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(same_element(y.data(), y2.data(), Dtype::bf16, i)) << "n " << n << " y " << i;
      ASSERT_TRUE(same_element(z.data(), z2.data(), Dtype::bf16, i)) << "n " << n << " z " << i;
    }
  }
}

TEST(FusionCpuSimd, ChainsWithASideValueMatchTheScalarLoops) {
  // A step that does not read the chain's value but feeds the next step joins the chain as
  // its side value (cpu_eval.cpp's make_chains): the branch `a * 0.5` of chain8, both
  // operands of a product, a side made from a side-free input, and a chain that goes on
  // after the side is consumed. Sizes around the 64-element blocks and the 1024-element
  // tiles, so that the partial last block (StepF32 on local buffers) takes the side too.
  SimdOn restore;
  const fusion::SimdSteps s = steps_or_skip();
  if (!s.step) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  using fusion::clamp;
  using fusion::relu;
  using fusion::sigmoid;
  using fusion::silu;
  using fusion::tanh;
  const std::vector<std::function<Expr(const Expr&, const Expr&)>> exprs = {
      [](const Expr& a, const Expr& b) {
        return clamp(silu(a * 1.25 + b) * b - a * 0.5, -8.0, 8.0);
      },
      [](const Expr& a, const Expr& b) { return (a + b) * (a - b); },
      [](const Expr& a, const Expr& b) { return relu(a * 2.0) + sigmoid(b); },
      [](const Expr& a, const Expr& b) { return tanh((a * b - sigmoid(b)) * 0.5) + 1.0; },
  };
  int cases = 0;
  for (int64_t n :
       {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{1000}, int64_t{4099}}) {
    for (size_t e = 0; e < exprs.size(); ++e) {
      for (Dtype odt : {Dtype::bf16, Dtype::f32}) {
        std::mt19937_64 rng(static_cast<uint64_t>(n * 16 + e));
        Tensor a = testing::random_tensor({n}, Dtype::bf16, rng);
        Tensor b = testing::random_tensor({n}, Dtype::bf16, rng);
        Tensor y = Tensor::empty({n}, odt), y2 = Tensor::empty({n}, odt);
        std::memset(y.data(), testing::kPoison, static_cast<size_t>(y.nbytes()));
        std::memset(y2.data(), testing::kPoison, static_cast<size_t>(y2.nbytes()));
        const Expr v = exprs[e](fusion::input(a), fusion::input(b));
        fuse({{y, v}});
        fusion::set_cpu_simd_for_testing(false);
        fuse({{y2, v}});
        fusion::set_cpu_simd_for_testing(true);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_TRUE(same_element(y.data(), y2.data(), odt, i))
              << v.str() << " -> " << dtype_name(odt) << ", n " << n << ", element " << i;
        ++cases;
      }
    }
  }
  std::printf("%d chains with a side value identical to the scalar loops\n", cases);
}

TEST(FusionCpuSimd, TheBenchmarkChainTakesTheVectorSteps) {
  // The plan reports the vector steps' target as its arch (the scalar loops' clone when
  // they are switched off), so a plan that silently lost them shows.
  SimdOn restore;
  const fusion::SimdSteps s = steps_or_skip();
  if (!s.step) GTEST_SKIP() << "SKIPPED: this CPU has no x86 target with FMA (scalar loops only)";
  std::mt19937_64 rng(3);
  Tensor a = testing::random_tensor({4099}, Dtype::bf16, rng);
  Tensor b = testing::random_tensor({4099}, Dtype::bf16, rng);
  Tensor y = Tensor::empty({4099}, Dtype::bf16);
  const Expr ea = fusion::input(a), eb = fusion::input(b);
  const FusedDesc d = FusedDesc::make(
      {{y, fusion::clamp(fusion::silu(ea * 1.25 + eb) * eb - ea * 0.5, -8.0, 8.0)}});
  const FusedPlan plan = FusedPlan::select(d);
  EXPECT_EQ(plan.sku().arch, s.target) << plan.sku().str();
  fusion::set_cpu_simd_for_testing(false);
  EXPECT_NE(FusedPlan::select(d).sku().arch, s.target);
}

}  // namespace
}  // namespace lowbit
