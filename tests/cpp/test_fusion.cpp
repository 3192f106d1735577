// The element-wise fusion JIT.
//
//  - Type promotion against a table of PyTorch's results.
//  - Property tests: thousands of random expressions (random ops, dtypes, broadcast shapes
//    with extent-1 dims, transposed and sliced views, scalars, several outputs) run by the
//    CPU kernel and checked element by element against an f64 interval interpreter written
//    here: every node's value is an interval that contains the exact result of the node on
//    any value its operands may hold, widened by what the implementation may deviate
//    (tolerances below); comparisons and where() follow both branches when undecided.
//    Outputs are poisoned first, and the gaps of strided outputs must stay untouched.
//  - The bf16 store fast path of the CPU kernel against numeric.hpp.
//  - NVRTC: generated kernels of a few hundred random expressions, both kernel shapes,
//    compile for sm_90a (no GPU needed); a compile error is an Error(internal) with the
//    NVRTC log and the source's location.
//  - The module cache: hits and misses, an entry reused by a second cache instance, a
//    corrupted entry (one flipped byte) detected and replaced, no temporary files left,
//    the directory created 0700.
//  - On a GPU (skipped here with a visible notice): the same random expressions on cuda:0
//    give the CPU kernel's bits (NaN payloads aside), and the interval check passes.
//
// Tolerances (widening of a node's interval, in units of the last place of the node's
// arithmetic type at the result, "ulp", plus an absolute term):
//   + - * / sqrt, f64 -> f32 conversions                         1 ulp (0.5 ulp rounding)
//   exp, log, pow (f32)                                           2 ulp (measured <= 1)
//   tanh                                                          3 ulp (measured 1.4)
//   sigmoid, silu, softplus                                       5 ulp; sigmoid and silu
//       also 2^-125 / 2^-121 absolute: exp(-x) overflows f32 before x e^x underflows
//   gelu (erf and tanh forms)                                     5 ulp + 2^-21 |x|: the
//       f32 formula x/2 (1 + erf(..)) cancels for negative x (as PyTorch's does)
//   leaky_relu                                                    2 ulp (slope rounded to f32)
//   f64 arithmetic 2 ulp of f64; f64 transcendental functions (libm / CUDA) 4 ulp of f64
//   casts and output stores: exact (the rounding of the interval's ends)
#pragma GCC optimize("fp-contract=off")  // the scalar formulas below, as the kernels run them

#include <dlfcn.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <thread>
#include <unordered_map>

#include "jit/jit.hpp"
#include "jit/jit_math_host.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "ops/convert/convert_element.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using fusion::Expr;
using fusion::Node;
using fusion::Op;
using testing::kPoison;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kF32Max = 3.4028234663852886e38;

// ---- promotion ----------------------------------------------------------------------------

TEST(FusionExpr, NodesMadeOnOneThreadAndDroppedOnAnotherStayIntact) {
  // Nodes come from per-thread free lists (jit/node_alloc.hpp): blocks freed on one thread
  // serve the next nodes made there, whatever thread made them first, and threads that only
  // free nodes hand theirs back at exit. Expressions built on a producer thread are
  // dropped on a consumer thread (which then builds its own from the blocks it got), and
  // every expression keeps its text while alive.
  Tensor a = Tensor::empty({8}, Dtype::bf16), b = Tensor::empty({8}, Dtype::f32);
  auto chain = [&] {
    const Expr ea = fusion::input(a), eb = fusion::input(b);
    return fusion::clamp(fusion::silu(ea * 1.25 + eb) * eb - ea * 0.5, -8.0, 8.0);
  };
  const std::string want = chain().str();
  for (int round = 0; round < 3; ++round) {
    std::vector<Expr> made;
    std::thread producer([&] {
      for (int i = 0; i < 300; ++i) made.push_back(chain());
    });
    producer.join();
    std::thread consumer([&] {
      for (const Expr& e : made) ASSERT_EQ(e.str(), want);
      made.clear();  // the producer's nodes go to this thread's list (up to its limit)
      for (int i = 0; i < 300; ++i) {
        const Expr e = chain();  // built from those blocks
        ASSERT_EQ(e.str(), want);
      }
    });
    consumer.join();
  }
}

TEST(FusionTypes, PromotionFollowsPyTorch) {
  using fusion::promote;
  using fusion::Type;
  auto t = [](Dtype d) { return Type{d, false, false}; };
  const Type fs{Dtype::f64, false, true}, is{Dtype::i32, false, true};
  struct Case {
    Type a, b;
    Dtype want;
  };
  const Case cases[] = {
      {t(Dtype::bf16), t(Dtype::f16), Dtype::f32},
      {t(Dtype::f16), t(Dtype::f32), Dtype::f32},
      {t(Dtype::bf16), t(Dtype::bf16), Dtype::bf16},
      {t(Dtype::f32), t(Dtype::f64), Dtype::f64},
      {t(Dtype::i32), t(Dtype::bf16), Dtype::bf16},
      {t(Dtype::u8), t(Dtype::f16), Dtype::f16},
      {t(Dtype::u8), t(Dtype::i8), Dtype::i16},
      {t(Dtype::i8), t(Dtype::i32), Dtype::i32},
      {t(Dtype::u8), t(Dtype::i16), Dtype::i16},
      {t(Dtype::bf16), fs, Dtype::bf16},
      {t(Dtype::i16), fs, Dtype::f32},
      {t(Dtype::i16), is, Dtype::i16},
      {t(Dtype::f8e4m3fn), t(Dtype::bf16), Dtype::bf16},
      {t(Dtype::f8e4m3fn), t(Dtype::f8e5m2), Dtype::f32},
      {t(Dtype::f4e2m1), t(Dtype::f8e4m3fn), Dtype::f8e4m3fn},
      {t(Dtype::e8m0), t(Dtype::f16), Dtype::f32},
      {Type{Dtype::u8, true, false}, t(Dtype::i8), Dtype::i16},
      {Type{Dtype::u8, true, false}, t(Dtype::bf16), Dtype::bf16},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(promote(c.a, c.b).dtype, c.want)
        << dtype_name(c.a.dtype) << " + " << dtype_name(c.b.dtype);
    EXPECT_EQ(promote(c.b, c.a).dtype, c.want);
  }
  // Through the API: float ops on integers give f32, compares give bool, casts their dtype.
  Tensor x = Tensor::empty({4}, Dtype::bf16), i = Tensor::empty({4}, Dtype::i16);
  const Expr a = fusion::input(x), b = fusion::input(i);
  EXPECT_EQ((a * 0.5).dtype(), Dtype::bf16);
  EXPECT_EQ((b * 2).dtype(), Dtype::i16);
  EXPECT_EQ((b * 2.5).dtype(), Dtype::f32);
  EXPECT_EQ(fusion::exp(b).dtype(), Dtype::f32);
  EXPECT_EQ((b / b).dtype(), Dtype::f32);
  EXPECT_TRUE((a < b).is_bool());
  EXPECT_EQ(fusion::cast(a, Dtype::f8e4m3fn).dtype(), Dtype::f8e4m3fn);
  EXPECT_EQ(fusion::where(a > 0.0, b, a).dtype(), Dtype::bf16);
  // Scalars fold on the host.
  const Expr s = Expr(2.0) * 3.0 + fusion::exp(Expr(0.0));
  EXPECT_TRUE(s.is_scalar());
  EXPECT_EQ(s.node()->value, 7.0);
}

// ---- values in memory -------------------------------------------------------------------------

/// Element `off` (in elements) of any supported dtype, as a double.
double read_value(const void* base, Dtype dt, int64_t off) {
  switch (dt) {
    case Dtype::f64:
      return static_cast<const double*>(base)[off];
    case Dtype::i8:
      return static_cast<const int8_t*>(base)[off];
    case Dtype::u8:
      return static_cast<const uint8_t*>(base)[off];
    case Dtype::i16:
      return static_cast<const int16_t*>(base)[off];
    case Dtype::i32:
      return static_cast<const int32_t*>(base)[off];
    case Dtype::u32:
      return static_cast<const uint32_t*>(base)[off];
    default:
      return convert_detail::load_f32(base, dt, off);
  }
}

/// The value of dtype dt nearest x (the cast / store rounding; NaN stays NaN, or 0 for
/// dtypes without NaN).
double round_to(double x, Dtype dt) {
  if (dt == Dtype::f64) return x;
  if (fusion::is_int(dt)) return jit_math::lb_to_int(x, fusion::int_min(dt), fusion::int_max(dt));
  const float f = f64_to_f32(x);
  if (dt == Dtype::f32) return f;
  const uint32_t code = convert_detail::encode_f32(f, dt, Saturation::none);
  uint8_t bytes[4] = {};
  std::memcpy(bytes, &code, 4);  // little-endian: the code's low bytes
  if (dt == Dtype::f4e2m1) bytes[0] &= 0xf;
  return convert_detail::load_f32(bytes, dt, 0);
}

float max_finite(Dtype dt) {
  switch (dt) {
    case Dtype::f16:
      return 65504.0f;
    case Dtype::bf16:
      return 0x1.fep127f;
    case Dtype::f8e4m3fn:
      return 448.0f;
    case Dtype::f8e5m2:
      return 57344.0f;
    case Dtype::f4e2m1:
      return 6.0f;
    default:
      return 3.4028234663852886e38f;
  }
}

// ---- the interval interpreter -------------------------------------------------------------

/// A set of possible values: [lo, hi] (ends may be infinite), and whether NaN is possible
/// or certain.
struct Iv {
  double lo = 0, hi = 0;
  bool maybe_nan = false;
  bool nan_only = false;
  static Iv point(double v) {
    if (std::isnan(v)) return nan();
    return {v, v, false, false};
  }
  static Iv nan() { return {0, 0, true, true}; }
  static Iv all() { return {-kInf, kInf, true, false}; }
};

double ulp_of(double x, bool f64) {
  const double a = std::fabs(x);
  if (std::isinf(a) || std::isnan(a)) return 0;
  if (f64) return a < 0x1p-1022 ? 0x1p-1074 : std::ldexp(1.0, std::ilogb(a) - 52);
  return a < 0x1p-126 ? 0x1p-149 : std::ldexp(1.0, std::ilogb(a) - 23);
}

/// Widens by `ulps` ulp of the arithmetic type plus `abs`, then models f32 overflow.
Iv widen(Iv v, bool f64, double ulps, double abs = 0) {
  if (v.nan_only) return v;
  v.lo -= ulps * ulp_of(v.lo, f64) + abs;
  v.hi += ulps * ulp_of(v.hi, f64) + abs;
  if (!f64) {
    if (v.hi > kF32Max) v.hi = kInf;
    if (v.lo > kF32Max) v.lo = kF32Max;
    if (v.lo < -kF32Max) v.lo = -kInf;
    if (v.hi < -kF32Max) v.hi = -kF32Max;
  }
  return v;
}

Iv hull(const Iv& a, const Iv& b) {
  if (a.nan_only && b.nan_only) return Iv::nan();
  if (a.nan_only) return {b.lo, b.hi, true, false};
  if (b.nan_only) return {a.lo, a.hi, true, false};
  return {std::min(a.lo, b.lo), std::max(a.hi, b.hi), a.maybe_nan || b.maybe_nan, false};
}

/// f applied to every pair of ends (f monotone in each argument on the box), NaN-aware.
template <class F>
Iv corners(const Iv& a, const Iv& b, F f) {
  if (a.nan_only || b.nan_only) return Iv::nan();
  Iv r{kInf, -kInf, a.maybe_nan || b.maybe_nan, false};
  for (double x : {a.lo, a.hi})
    for (double y : {b.lo, b.hi}) {
      const double v = f(x, y);
      if (std::isnan(v)) {
        r.maybe_nan = true;
        continue;
      }
      r.lo = std::min(r.lo, v);
      r.hi = std::max(r.hi, v);
    }
  if (r.lo > r.hi) return Iv::nan();
  return r;
}

/// A monotone (increasing or decreasing) f on [lo, hi].
template <class F>
Iv monotone(const Iv& a, F f) {
  if (a.nan_only) return Iv::nan();
  const double x = f(a.lo), y = f(a.hi);
  Iv r{std::min(x, y), std::max(x, y), a.maybe_nan, false};
  if (std::isnan(x) || std::isnan(y)) return Iv::all();
  return r;
}

/// f with one minimum at xc (decreasing before, increasing after).
template <class F>
Iv valley(const Iv& a, double xc, F f) {
  if (a.nan_only) return Iv::nan();
  const double x = f(a.lo), y = f(a.hi);
  if (std::isnan(x) || std::isnan(y)) return Iv::all();
  Iv r{std::min(x, y), std::max(x, y), a.maybe_nan, false};
  if (a.lo < xc && xc < a.hi) r.lo = std::min(r.lo, f(xc));
  return r;
}

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) {
  return 0.5 * x * (1 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}
double silu_ref(double x) { return x / (1 + std::exp(-x)); }

struct Interpreter {
  /// Values of the inputs at the current element, by node.
  std::unordered_map<const Node*, double> input_value;
  std::unordered_map<const Node*, Iv> memo;

  static bool is_f64(const fusion::Type& t) { return fusion::num_of(t) == fusion::Num::f64; }

  /// The operand's interval as the consumer sees it: rounded to f32 when an f64 value
  /// enters f32 arithmetic.
  Iv operand(const std::shared_ptr<const Node>& n, bool consumer_f64) {
    Iv v = eval(n);
    if (consumer_f64 || is_f64(n->type) == false || v.nan_only) return v;
    v.lo = f64_to_f32(v.lo);
    v.hi = f64_to_f32(v.hi);
    return v;
  }

  Iv eval(const std::shared_ptr<const Node>& np) {
    if (auto it = memo.find(np.get()); it != memo.end()) return it->second;
    const Iv r = compute(*np);
    memo[np.get()] = r;
    return r;
  }

  Iv compute(const Node& n) {
    const bool d = is_f64(n.type);
    auto arg = [&](int i, bool consumer_f64) { return operand(n.args[i], consumer_f64); };
    switch (n.op) {
      case Op::input:
        return Iv::point(input_value.at(&n));
      case Op::constant:
        return Iv::point(n.value);
      case Op::add:
        return widen(corners(arg(0, d), arg(1, d), [](double x, double y) { return x + y; }), d, 1);
      case Op::sub:
        return widen(corners(arg(0, d), arg(1, d), [](double x, double y) { return x - y; }), d, 1);
      case Op::mul: {
        const Iv a = arg(0, d), b = arg(1, d);
        Iv r = corners(a, b, [](double x, double y) { return x * y; });
        // 0 * inf inside the box, not at a corner
        auto zero = [](const Iv& v) { return v.lo <= 0 && v.hi >= 0; };
        auto inf = [](const Iv& v) { return std::isinf(v.lo) || std::isinf(v.hi); };
        if ((zero(a) && inf(b)) || (zero(b) && inf(a))) r.maybe_nan = true;
        return widen(r, d, 1);
      }
      case Op::div: {
        const Iv a = arg(0, d), b = arg(1, d);
        if (b.nan_only || a.nan_only) return Iv::nan();
        if (b.lo <= 0 && b.hi >= 0) return Iv::all();
        return widen(corners(a, b, [](double x, double y) { return x / y; }), d, 1);
      }
      case Op::neg: {
        const Iv a = arg(0, d);
        return {-a.hi, -a.lo, a.maybe_nan, a.nan_only};
      }
      case Op::abs: {
        const Iv a = arg(0, d);
        if (a.nan_only) return a;
        if (a.lo >= 0) return a;
        if (a.hi <= 0) return {-a.hi, -a.lo, a.maybe_nan, false};
        return {0, std::max(-a.lo, a.hi), a.maybe_nan, false};
      }
      case Op::minimum:
      case Op::maximum: {
        const Iv a = arg(0, d), b = arg(1, d);
        if (a.nan_only || b.nan_only) return Iv::nan();
        const bool mn = n.op == Op::minimum;
        return {mn ? std::min(a.lo, b.lo) : std::max(a.lo, b.lo),
                mn ? std::min(a.hi, b.hi) : std::max(a.hi, b.hi), a.maybe_nan || b.maybe_nan,
                false};
      }
      case Op::clamp: {
        const Iv x = arg(0, d), lo = arg(1, d), hi = arg(2, d);
        if (x.nan_only || lo.nan_only || hi.nan_only) return Iv::nan();
        const double l1 = std::max(x.lo, lo.lo), h1 = std::max(x.hi, lo.hi);
        return {std::min(l1, hi.lo), std::min(h1, hi.hi),
                x.maybe_nan || lo.maybe_nan || hi.maybe_nan, false};
      }
      case Op::where: {
        const Iv c = eval(n.args[0]);
        const Iv a = arg(1, d), b = arg(2, d);
        const bool nonzero = c.nan_only || c.lo > 0 || c.hi < 0;
        const bool zero = !c.maybe_nan && c.lo == 0 && c.hi == 0;
        if (nonzero) return a;
        if (zero) return b;
        return hull(a, b);
      }
      case Op::lt:
      case Op::le:
      case Op::gt:
      case Op::ge:
      case Op::eq:
      case Op::ne: {
        const bool cd = is_f64(fusion::promote(n.args[0]->type, n.args[1]->type));
        const Iv a = arg(0, cd), b = arg(1, cd);
        const Iv maybe{0, 1, false, false};
        if (a.nan_only || b.nan_only) return Iv::point(n.op == Op::ne ? 1 : 0);
        int certain = -1;  // 1 true, 0 false, -1 unknown (without NaN)
        switch (n.op) {
          case Op::lt:
            certain = a.hi < b.lo ? 1 : a.lo >= b.hi ? 0 : -1;
            break;
          case Op::le:
            certain = a.hi <= b.lo ? 1 : a.lo > b.hi ? 0 : -1;
            break;
          case Op::gt:
            certain = a.lo > b.hi ? 1 : a.hi <= b.lo ? 0 : -1;
            break;
          case Op::ge:
            certain = a.lo >= b.hi ? 1 : a.hi < b.lo ? 0 : -1;
            break;
          case Op::eq:
            certain = (a.lo == a.hi && b.lo == b.hi && a.lo == b.lo) ? 1
                      : (a.hi < b.lo || b.hi < a.lo)                 ? 0
                                                                     : -1;
            break;
          case Op::ne:
            certain = (a.lo == a.hi && b.lo == b.hi && a.lo == b.lo) ? 0
                      : (a.hi < b.lo || b.hi < a.lo)                 ? 1
                                                                     : -1;
            break;
          default:
            break;
        }
        if (certain < 0) return maybe;
        if (a.maybe_nan || b.maybe_nan) {
          const int nan_result = n.op == Op::ne ? 1 : 0;
          if (certain != nan_result) return maybe;
        }
        return Iv::point(certain);
      }
      case Op::exp:
        return widen(monotone(arg(0, d), [](double x) { return std::exp(x); }), d, d ? 4 : 2);
      case Op::log: {
        Iv a = arg(0, d);
        if (a.nan_only || a.hi < 0) return Iv::nan();
        if (a.lo < 0) {
          a.lo = 0;
          a.maybe_nan = true;
        }
        return widen(monotone(a, [](double x) { return std::log(x); }), d, d ? 4 : 2);
      }
      case Op::sqrt: {
        Iv a = arg(0, d);
        if (a.nan_only || a.hi < 0) return Iv::nan();
        if (a.lo < 0) {
          a.lo = 0;
          a.maybe_nan = true;
        }
        return widen(monotone(a, [](double x) { return std::sqrt(x); }), d, 1);
      }
      case Op::rsqrt: {
        Iv a = arg(0, d);
        if (a.nan_only || a.hi < 0) return Iv::nan();
        if (a.lo <= 0) return Iv::all();  // +-0 give +-inf
        return widen(monotone(a, [](double x) { return 1 / std::sqrt(x); }), d, 2);
      }
      case Op::tanh:
        return widen(monotone(arg(0, d), [](double x) { return std::tanh(x); }), d, d ? 4 : 3);
      case Op::sigmoid:
        return widen(monotone(arg(0, d), [](double x) { return 1 / (1 + std::exp(-x)); }), d,
                     d ? 4 : 5, d ? 0 : 0x1p-125);
      case Op::relu:
        return monotone(arg(0, d), [](double x) { return x <= 0 ? 0.0 : x; });
      case Op::leaky_relu: {
        // Piecewise linear with its kink at 0: the extremes are at the ends or at 0.
        const double s = n.value;
        auto f = [s](double x) { return x > 0 ? x : x * s; };
        const Iv a = arg(0, d);
        if (a.nan_only) return a;
        Iv r = hull(Iv::point(f(a.lo)), Iv::point(f(a.hi)));
        if (a.lo < 0 && a.hi > 0) r = hull(r, Iv::point(0));
        r.maybe_nan = a.maybe_nan;
        return widen(r, d, 2);
      }
      case Op::gelu:
      case Op::gelu_tanh: {
        const Iv a = arg(0, d);
        const bool t = n.op == Op::gelu_tanh;
        Iv r = valley(a, t ? -0.75224 : -0.75179, [t](double x) {
          if (x == -kInf) return 0.0;
          return t ? gelu_tanh_ref(x) : gelu_ref(x);
        });
        if (a.lo == -kInf) r.maybe_nan = true;  // -inf * 0
        const double m = std::max(std::fabs(a.lo), std::fabs(a.hi));
        return widen(r, d, d ? 4 : 5, (d ? 0x1p-50 : 0x1p-21) * (std::isinf(m) ? 0 : m));
      }
      case Op::silu: {
        const Iv a = arg(0, d);
        Iv r = valley(a, -1.2784645, [](double x) { return x == -kInf ? 0.0 : silu_ref(x); });
        if (a.lo == -kInf) r.maybe_nan = true;  // -inf / inf
        return widen(r, d, d ? 4 : 5, d ? 0 : 0x1p-121);
      }
      case Op::softplus:
        return widen(
            monotone(arg(0, d), [](double x) { return x > 20 ? x : std::log1p(std::exp(x)); }), d,
            d ? 4 : 5);
      case Op::pow:
        return pow_iv(arg(0, d), n.value, d);
      case Op::cast:
        return cast_iv(eval(n.args[0]), n.args[0]->type, n.type.dtype);
    }
    return Iv::all();
  }

  static Iv pow_iv(Iv a, double p, bool d) {
    if (p == 0) return Iv::point(1);
    if (a.nan_only) return Iv::nan();
    if (a.lo == -kInf) return Iv::all();  // pow(-inf, p): signs by C's rules
    auto f = [p](double x) { return std::pow(x, p); };
    const bool p_int = p == std::trunc(p);
    const bool even = p_int && std::fmod(p, 2.0) == 0;
    Iv r;
    if (!p_int) {
      if (a.hi < 0) return Iv::nan();
      if (a.lo < 0) {
        a.lo = 0;
        a.maybe_nan = true;
      }
      if (p < 0 && a.lo == 0) return Iv::all();
      r = monotone(a, f);
    } else if (p < 0 && a.lo <= 0 && a.hi >= 0) {
      return Iv::all();
    } else if (even) {
      r = corners(a, a, [&](double x, double) { return f(x); });
      if (a.lo < 0 && a.hi > 0) r = p > 0 ? Iv{0, r.hi, a.maybe_nan, false} : Iv::all();
    } else {
      r = monotone(a, f);
    }
    r.maybe_nan = r.maybe_nan || a.maybe_nan;
    return widen(r, d, d ? 4 : 3);
  }

  /// A value of type `from` (interval v) cast to dtype `to`.
  static Iv cast_iv(Iv v, const fusion::Type& from, Dtype to) {
    const bool has_nan = is_float(to) && to != Dtype::f4e2m1;
    if (!is_f64(from) && !v.nan_only) {
      // the operand as computed in f32 (the interval already covers it)
    }
    if (v.nan_only) return has_nan ? Iv::nan() : Iv::point(0);
    Iv r{round_to(v.lo, to), round_to(v.hi, to), v.maybe_nan, false};
    const double big = is_float(to) ? max_finite(to) : 0;
    if (std::isnan(r.lo)) {  // overflow to NaN (f8e4m3fn) at the low end
      r.lo = -kInf;
      r.maybe_nan = true;
    }
    if (std::isnan(r.hi)) {
      r.hi = kInf;
      r.maybe_nan = true;
    }
    (void)big;
    if (v.maybe_nan && !has_nan) {  // NaN becomes 0 (f4e2m1: a signed zero; ints: 0)
      r = hull(r, Iv::point(0));
      r.maybe_nan = false;
    }
    return r;
  }
};

// ---- random expressions -----------------------------------------------------------------

const Dtype kInputDtypes[] = {Dtype::f32,    Dtype::f32,    Dtype::bf16, Dtype::bf16,
                              Dtype::f16,    Dtype::f16,    Dtype::f64,  Dtype::f8e4m3fn,
                              Dtype::f8e5m2, Dtype::f4e2m1, Dtype::e8m0, Dtype::i8,
                              Dtype::u8,     Dtype::i16,    Dtype::i32,  Dtype::u32};
const Dtype kOutputDtypes[] = {Dtype::f32,    Dtype::f32, Dtype::bf16,     Dtype::bf16,
                               Dtype::f16,    Dtype::f64, Dtype::f8e4m3fn, Dtype::f8e5m2,
                               Dtype::f4e2m1, Dtype::i32, Dtype::u8,       Dtype::i8};
const Dtype kCastDtypes[] = {Dtype::f32,    Dtype::bf16,   Dtype::f16, Dtype::f64, Dtype::f8e4m3fn,
                             Dtype::f8e5m2, Dtype::f4e2m1, Dtype::i8,  Dtype::i32, Dtype::u8};

/// An operand's memory: a contiguous host buffer and the view of it the expression uses.
struct Placed {
  Tensor base;
  TensorView view;
  std::string layout;
};

Placed place(const Shape& shape, Dtype dt, std::mt19937_64& rng, bool allow_strided) {
  Placed p;
  const int nd = shape.size();
  const int pick = allow_strided && !is_packed(dt) ? static_cast<int>(rng() % 4) : 0;
  if (pick == 1 && nd >= 2) {
    const int i = static_cast<int>(rng() % nd), j = static_cast<int>(rng() % nd);
    Shape bs = shape;
    std::swap(bs[i], bs[j]);
    p.base = Tensor::empty(bs, dt);
    p.view = p.base.view().transpose(i, j);
    p.layout = fmt::format("transposed {} {}", i, j);
  } else if (pick == 2 && nd >= 1) {
    const int i = static_cast<int>(rng() % nd);
    Shape bs = shape;
    const int64_t begin = static_cast<int64_t>(rng() % 2);
    bs[i] = shape[i] * 2 + begin;
    p.base = Tensor::empty(bs, dt);
    p.view = p.base.view().slice(i, begin, bs[i], 2);
    p.layout = fmt::format("sliced dim {} from {} step 2", i, begin);
  } else {
    p.base = Tensor::empty(shape, dt);
    p.view = p.base.view();
    p.layout = "contiguous";
  }
  return p;
}

/// Ordinary values of a spread of magnitudes, with a few special ones.
void fill_values(const Tensor& t, std::mt19937_64& rng) {
  const Dtype dt = t.dtype();
  const int64_t n = t.numel();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    double v;
    const uint64_t r = rng() % 100;
    if (r < 4) {
      const double specials[] = {0.0,  -0.0,   kInf,    -kInf, std::nan(""),
                                 1e30, -1e-30, 65504.0, 448.0, 1e-40};
      v = specials[rng() % std::size(specials)];
    } else {
      const double scale = std::ldexp(1.0, static_cast<int>(rng() % 12) - 5);
      v = normal(rng) * scale;
    }
    switch (dt) {
      case Dtype::f64:
        t.data_as<double>()[i] = v;
        break;
      case Dtype::i8:
        t.data_as<int8_t>()[i] = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
        break;
      case Dtype::u8:
        t.data_as<uint8_t>()[i] = static_cast<uint8_t>(rng());
        break;
      case Dtype::i16:
        t.data_as<int16_t>()[i] = static_cast<int16_t>(static_cast<int>(rng() % 2000) - 1000);
        break;
      case Dtype::i32:
        t.data_as<int32_t>()[i] = static_cast<int32_t>(rng() % 200001) - 100000;
        break;
      case Dtype::u32:
        t.data_as<uint32_t>()[i] = static_cast<uint32_t>(rng() % 100000);
        break;
      case Dtype::e8m0:
        t.data_as<uint8_t>()[i] = static_cast<uint8_t>(110 + rng() % 36);
        break;
      default: {
        const float f = f64_to_f32(v);
        if (dt == Dtype::f4e2m1) {
          uint8_t* b = t.data_as<uint8_t>();
          const uint8_t code = f32_to_f4e2m1(f);
          b[i / 2] = static_cast<uint8_t>((i & 1) ? ((b[i / 2] & 0x0f) | (code << 4))
                                                  : ((b[i / 2] & 0xf0) | code));
        } else {
          convert_detail::store_f32(t.data(), dt, i, f, Saturation::none);
        }
      }
    }
  }
}

struct Case {
  uint64_t seed = 0;
  Shape shape;
  std::vector<Placed> inputs;
  std::vector<Placed> outputs;
  std::vector<Expr> values;
  std::vector<Expr> input_exprs;
  std::string describe() const {
    std::string s = fmt::format("seed {} shape {}", seed, shape.str());
    for (size_t i = 0; i < inputs.size(); ++i)
      s += fmt::format("\n  in{}: {} ({})", i, inputs[i].view.str(), inputs[i].layout);
    for (size_t o = 0; o < outputs.size(); ++o)
      s += fmt::format("\n  out{}: {} ({}) = {}", o, outputs[o].view.str(), outputs[o].layout,
                       values[o].str());
    return s;
  }
};

Shape random_shape(std::mt19937_64& rng, int64_t max_numel) {
  static const int64_t extents[] = {1, 2, 3, 5, 7, 8, 16, 33};
  for (;;) {
    const int nd = static_cast<int>(rng() % 5);  // 0-d .. 4-d
    Shape s;
    for (int i = 0; i < nd; ++i) s.push_back(extents[rng() % std::size(extents)]);
    if (numel(s) <= max_numel) return s;
  }
}

Expr random_expr(std::mt19937_64& rng, const std::vector<Expr>& leaves, int depth) {
  if (depth == 0 || rng() % 5 == 0) {
    if (rng() % 6 == 0) {
      static const double consts[] = {0.0, 1.0, -1.0, 0.5, 2.0, -3.25, 1e-3, 100.0, 0.1};
      if (rng() % 4 == 0) return Expr(static_cast<int>(rng() % 7) - 3);
      return Expr(consts[rng() % std::size(consts)]);
    }
    return leaves[rng() % leaves.size()];
  }
  auto sub = [&] { return random_expr(rng, leaves, depth - 1); };
  switch (rng() % 31) {
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
      return fusion::clamp(sub(), -1.5, 2.0);
    case 9:
      return fusion::where(sub() > sub(), sub(), sub());
    case 10: {
      const Expr a = sub(), b = sub();
      switch (rng() % 6) {
        case 0:
          return fusion::lt(a, b);
        case 1:
          return fusion::le(a, b);
        case 2:
          return fusion::gt(a, b);
        case 3:
          return fusion::ge(a, b);
        case 4:
          return fusion::eq(a, b);
        default:
          return fusion::ne(a, b);
      }
    }
    case 11:
      return fusion::exp(sub());
    case 12:
      return fusion::log(sub());
    case 13:
      return fusion::sqrt(sub());
    case 14:
      return fusion::rsqrt(sub());
    case 15:
      return fusion::tanh(sub());
    case 16:
      return fusion::sigmoid(sub());
    case 17:
      return fusion::relu(sub());
    case 18: {
      static const double slopes[] = {0.01, 0.2, 1.5};
      return fusion::leaky_relu(sub(), slopes[rng() % 3]);
    }
    case 19:
      return fusion::gelu(sub());
    case 20:
      return fusion::gelu(sub(), "tanh");
    case 21:
      return fusion::silu(sub());
    case 22:
      return fusion::softplus(sub());
    case 23: {
      static const double exps[] = {2, 3, 0.5, -1, -2, -0.5, 1.5, 2.5, -1.3, 0, 1, 4, 0.75};
      return fusion::pow(sub(), exps[rng() % std::size(exps)]);
    }
    case 24:
      return fusion::scale(sub(), 0.375);
    case 25:
      return fusion::cast(sub(), kCastDtypes[rng() % std::size(kCastDtypes)]);
    case 26:
      return fusion::clamp(sub(), sub(), sub());
    case 27:
      return fusion::silu(sub()) * sub();
    case 28:
      return sub() * 1.25 + sub();
    case 29:
      return fusion::where(fusion::ne(sub(), 0), sub(), -0.5);
    default:
      return sub();
  }
}

Case random_case(uint64_t seed, int64_t max_numel, bool allow_strided = true) {
  std::mt19937_64 rng(seed);
  Case c;
  c.seed = seed;
  c.shape = random_shape(rng, max_numel);
  const int n_in = 1 + static_cast<int>(rng() % 3);
  for (int i = 0; i < n_in; ++i) {
    // A broadcastable shape: some leading dims dropped, some extents set to 1.
    Shape s;
    const int drop = c.shape.size() > 0 ? static_cast<int>(rng() % (c.shape.size() + 1)) : 0;
    for (int d = drop; d < c.shape.size(); ++d) s.push_back(rng() % 3 == 0 ? 1 : c.shape[d]);
    const Dtype dt = kInputDtypes[rng() % std::size(kInputDtypes)];
    Placed p = place(s, dt, rng, allow_strided);
    fill_values(p.base, rng);
    c.input_exprs.push_back(fusion::input(p.view));
    c.inputs.push_back(std::move(p));
  }
  const int n_out = 1 + static_cast<int>(rng() % 2);
  for (int o = 0; o < n_out; ++o) {
    Expr e = random_expr(rng, c.input_exprs, 1 + static_cast<int>(rng() % 4));
    const Dtype dt = kOutputDtypes[rng() % std::size(kOutputDtypes)];
    Placed p = place(c.shape, dt, rng, allow_strided);
    c.values.push_back(e);
    c.outputs.push_back(std::move(p));
  }
  return c;
}

std::vector<FusedOutput> outputs_of(const Case& c, const std::vector<TensorView>& dst) {
  std::vector<FusedOutput> out;
  for (size_t o = 0; o < c.values.size(); ++o) out.push_back({dst[o], c.values[o]});
  return out;
}

/// Element offset of linear index e of `shape` in view v, with v broadcast to shape.
int64_t offset_in(const TensorView& v, const Shape& shape, int64_t e) {
  int64_t off = 0;
  const int extra = shape.size() - v.ndim();
  for (int d = shape.size() - 1; d >= 0; --d) {
    const int64_t i = e % shape[d];
    e /= shape[d];
    const int vd = d - extra;
    if (vd >= 0 && v.dim(vd) != 1) off += i * v.stride(vd);
  }
  return off;
}

/// Checks every output element of case c (outputs in `got`, host views laid out like the
/// case's) against the interval interpreter; returns "" or the first failure.
std::string check_case(const Case& c, const std::vector<TensorView>& got, int64_t* checked,
                       int64_t* vacuous) {
  const int64_t n = numel(c.shape);
  for (int64_t e = 0; e < n; ++e) {
    Interpreter it;
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      const TensorView& v = c.inputs[i].view;
      it.input_value[c.input_exprs[i].node().get()] =
          read_value(v.data(), v.dtype(), offset_in(v, c.shape, e));
    }
    for (size_t o = 0; o < c.values.size(); ++o) {
      const Dtype dt = got[o].dtype();
      Iv r = Interpreter::cast_iv(it.eval(c.values[o].node()), c.values[o].node()->type, dt);
      // The output takes the expression's value through its Num first (f32 for float
      // outputs but f64): an f64 value rounds to f32 before a narrow store, which the
      // cast above does; an f32 value stored as f64 is exact.
      const double g = read_value(got[o].data(), dt, offset_in(got[o], c.shape, e));
      ++*checked;
      bool ok;
      if (r.nan_only) {
        ok = std::isnan(g);
      } else if (std::isnan(g)) {
        ok = r.maybe_nan;
      } else {
        ok = r.lo <= g && g <= r.hi;
        if (std::isinf(r.lo) && std::isinf(r.hi)) ++*vacuous;
      }
      if (!ok) {
        std::string ins;
        for (size_t i = 0; i < c.inputs.size(); ++i)
          ins += fmt::format(" in{}={}", i, it.input_value[c.input_exprs[i].node().get()]);
        return fmt::format("{}\n  element {} of out{}: got {}, expected [{}, {}]{}{}; inputs:{}",
                           c.describe(), e, o, g, r.lo, r.hi, r.maybe_nan ? " or NaN" : "",
                           r.nan_only ? " (NaN)" : "", ins);
      }
    }
  }
  return {};
}

/// Bytes of an output's base buffer outside its view must keep the poison.
std::string check_gaps(const Placed& p, const Shape& shape) {
  if (p.layout == "contiguous") return {};
  const int64_t n = numel(shape);
  std::vector<uint8_t> inside(static_cast<size_t>(p.base.nbytes()), 0);
  const auto* base = static_cast<const uint8_t*>(p.base.data());
  const auto* v0 = static_cast<const uint8_t*>(p.view.data());
  const int64_t esize = bit_width(p.view.dtype()) / 8;
  for (int64_t e = 0; e < n; ++e) {
    const int64_t off = offset_in(p.view, shape, e) * esize + (v0 - base);
    for (int64_t b = 0; b < esize; ++b) inside[off + b] = 1;
  }
  for (size_t i = 0; i < inside.size(); ++i)
    if (!inside[i] && base[i] != kPoison)
      return fmt::format("byte {} outside the view was written", i);
  return {};
}

std::vector<TensorView> poisoned_outputs(const Case& c) {
  std::vector<TensorView> v;
  for (const Placed& p : c.outputs) {
    std::memset(p.base.data(), kPoison, static_cast<size_t>(p.base.nbytes()));
    v.push_back(p.view);
  }
  return v;
}

// ---- CPU property tests ------------------------------------------------------------------

TEST(FusionCpu, RandomExpressionsMatchTheIntervalReference) {
  const int kCases = 3000;
  int64_t checked = 0, vacuous = 0;
  std::map<std::string, int> errors;
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < kCases; ++k) {
    const Case c = random_case(1000 + k, k % 100 == 0 ? 70000 : 300);
    if (std::getenv("FUSION_TRACE")) std::fprintf(stderr, "%s\n", c.describe().c_str());
    const std::vector<TensorView> out = poisoned_outputs(c);
    try {
      fuse(outputs_of(c, out));
    } catch (const Error& e) {
      // Only documented refusals are allowed: outputs overlapping inputs cannot happen
      // here, so any error is a failure.
      ADD_FAILURE() << c.describe() << "\n  threw " << e.what();
      continue;
    }
    const std::string why = check_case(c, out, &checked, &vacuous);
    ASSERT_EQ(why, "");
    for (const Placed& p : c.outputs) ASSERT_EQ(check_gaps(p, c.shape), "") << c.describe();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "%d random expressions, %lld output elements checked (%lld with an unbounded "
      "interval) in %.1f s\n",
      kCases, static_cast<long long>(checked), static_cast<long long>(vacuous), s);
  EXPECT_LT(vacuous, checked / 4) << "too many elements with no bound: the test is too weak";
}

TEST(FusionCpu, ChainMatchesScalarFormulaBitForBit) {
  // bf16 inputs, the benchmark's 8-op chain, odd length (tail) and multi-tile.
  const int64_t n = 70001;
  std::mt19937_64 rng(7);
  Tensor a = Tensor::empty({n}, Dtype::bf16), b = Tensor::empty({n}, Dtype::bf16);
  fill_values(a, rng);
  fill_values(b, rng);
  Tensor y = Tensor::empty({n}, Dtype::bf16);
  const Expr x0 = fusion::input(a), x1 = fusion::input(b);
  const Expr t = fusion::silu(x0 * 1.25 + x1) * x1;
  fuse({{y, fusion::clamp(t - x0 * 0.5, -8.0, 8.0)}});
  for (int64_t i = 0; i < n; ++i) {
    const float av = bf16_to_f32(a.data_as<uint16_t>()[i]),
                bv = bf16_to_f32(b.data_as<uint16_t>()[i]);
    const float u = av * 1.25f + bv;  // no contraction: two roundings
    const float sv = jit_math::lb_silu(u) * bv;
    const float w = jit_math::lb_clamp(sv - av * 0.5f, -8.0f, 8.0f);
    const uint16_t want = f32_to_bf16(w);
    const uint16_t gotv = y.data_as<uint16_t>()[i];
    if (want != gotv && !((want & 0x7fff) > 0x7f80 && (gotv & 0x7fff) > 0x7f80))
      FAIL() << "element " << i << ": a " << av << " b " << bv << " want " << want << " got "
             << gotv;
  }
}

TEST(FusionCpu, Bf16StoreMatchesNumeric) {
  // Every high half with a set of low halves, and every low half with a set of high
  // halves: the rounding depends on both.
  const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000};
  const uint32_t highs[] = {0x0000, 0x0001, 0x007f, 0x0080, 0x3f80, 0x7f7f, 0x7f80, 0x7fc0,
                            0x7f81, 0x8000, 0xff7f, 0xff80, 0xffc0, 0x4049, 0x3400};
  std::vector<uint32_t> bits;
  for (uint32_t h = 0; h < 0x10000; ++h)
    for (uint32_t l : lows) bits.push_back(h << 16 | l);
  for (uint32_t l = 0; l < 0x10000; ++l)
    for (uint32_t h : highs) bits.push_back(h << 16 | l);
  const int64_t n = static_cast<int64_t>(bits.size());
  TensorView in(bits.data(), Dtype::f32, {n});
  Tensor out = Tensor::empty({n}, Dtype::bf16);
  fuse({{out, fusion::input(in)}});
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(out.data_as<uint16_t>()[i], f32_to_bf16(std::bit_cast<float>(bits[i])))
        << std::hex << bits[i];
}

TEST(FusionCpu, BroadcastInPlaceAndSeveralOutputs) {
  Tensor x = Tensor::empty({4, 3}, Dtype::f32), bias = Tensor::empty({3}, Dtype::bf16);
  for (int i = 0; i < 12; ++i) x.data_as<float>()[i] = static_cast<float>(i) - 5.5f;
  for (int j = 0; j < 3; ++j) bias.data_as<uint16_t>()[j] = f32_to_bf16(static_cast<float>(j));
  Tensor y = Tensor::empty({4, 3}, Dtype::f16);
  const Expr a = fusion::input(x), b = fusion::input(bias);
  // x is written in place (an exact alias of input 0) and y from the same pass.
  fuse({{x, fusion::relu(a + b)}, {y, fusion::maximum(a, b) * 2}});
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) {
      const float xv = static_cast<float>(i * 3 + j) - 5.5f;
      EXPECT_EQ(x.data_as<float>()[i * 3 + j], std::max(xv + j, 0.0f));
      EXPECT_EQ(f16_to_f32(y.data_as<uint16_t>()[i * 3 + j]), std::max(xv, float(j)) * 2);
    }
}

TEST(FusionCpu, PlanReuseWithOtherTensors) {
  Tensor a = Tensor::empty({100}, Dtype::bf16), b = Tensor::empty({100}, Dtype::bf16);
  Tensor y = Tensor::empty({100}, Dtype::bf16);
  const FusedDesc desc = FusedDesc::make({{y, fusion::silu(fusion::input(a)) * fusion::input(b)}});
  const FusedPlan plan = FusedPlan::select(desc);
  EXPECT_EQ(plan.sku().kernel, "fused_cpu_tiled");
  EXPECT_EQ(plan.sku().dtypes, "bf16,bf16->bf16");
  Tensor a2 = Tensor::empty({100}, Dtype::bf16), b2 = Tensor::empty({100}, Dtype::bf16);
  Tensor y2 = Tensor::empty({100}, Dtype::bf16);
  for (int i = 0; i < 100; ++i) {
    a2.data_as<uint16_t>()[i] = f32_to_bf16(0.1f * i);
    b2.data_as<uint16_t>()[i] = f32_to_bf16(2.0f);
  }
  plan.run(Stream(), {}, FusedArgs{{a2, b2}, {y2}});
  for (int i = 0; i < 100; ++i) {
    const float av = bf16_to_f32(a2.data_as<uint16_t>()[i]);
    EXPECT_EQ(y2.data_as<uint16_t>()[i], f32_to_bf16(jit_math::lb_silu(av) * 2.0f));
  }
}

TEST(FusionCpu, BadArgumentsGiveClearErrors) {
  using testing::expect_error;
  Tensor a = Tensor::empty({4, 3}, Dtype::f32), y = Tensor::empty({4, 3}, Dtype::f32);
  Tensor z = Tensor::empty({5}, Dtype::f32), i4 = Tensor::empty({4}, Dtype::i4);
  const Expr x = fusion::input(a);
  expect_error([&] { fuse({}); }, ErrorCode::invalid_argument, "no outputs");
  expect_error([&] { fuse({{z, x}}); }, ErrorCode::invalid_argument, "does not broadcast");
  expect_error([&] { fusion::input(i4); }, ErrorCode::invalid_argument, "not supported");
  expect_error(
      [&] {
        fuse({{y, x}, {z, x}});
      },
      ErrorCode::invalid_argument, "outputs share one shape");
  expect_error([&] { fusion::gelu(x, "fast"); }, ErrorCode::invalid_argument, "approximate");
  expect_error([&] { fusion::pow(x, kInf); }, ErrorCode::invalid_argument, "not finite");
  // An output that overlaps an input without being the same view.
  const TensorView shifted(a.data_as<float>() + 1, Dtype::f32, {3, 3});
  const TensorView a33(a.data(), Dtype::f32, {3, 3});
  expect_error(
      [&] {
        fuse({{shifted, fusion::input(a33) + 1.0}});
      },
      ErrorCode::invalid_argument, "overlaps input");
  expect_error(
      [&] {
        fuse({{y, x}, {y, x * 2.0}});
      },
      ErrorCode::invalid_argument, "overlap in memory");
  const TensorView bcast(y.data(), Dtype::f32, {4, 3}, {0, 1});
  expect_error([&] { fuse({{bcast, x}}); }, ErrorCode::invalid_argument, "stride 0");
  const FusedDesc desc = FusedDesc::make({{y, x + 1.0}});
  const FusedPlan plan = FusedPlan::select(desc);
  expect_error(
      [&] {
        plan.run(Stream(), {}, FusedArgs{{z}, {y}});
      },
      ErrorCode::invalid_argument, "input 0 shape");
  expect_error(
      [&] {
        plan.run(Stream(), {}, FusedArgs{{}, {y}});
      },
      ErrorCode::invalid_argument, "inputs / 1 outputs given");
}

TEST(FusionCpu, EmptyAndScalarShapes) {
  Tensor e = Tensor::empty({0, 5}, Dtype::bf16), ye = Tensor::empty({0, 5}, Dtype::bf16);
  fuse({{ye, fusion::exp(fusion::input(e))}});
  Tensor s = Tensor::empty({}, Dtype::f32), ys = Tensor::empty({}, Dtype::f4e2m1);
  s.data_as<float>()[0] = 2.4f;
  ys.data_as<uint8_t>()[0] = 0xff;
  fuse({{ys, fusion::input(s) * 2.0}});  // 4.8 -> 4 in f4e2m1, high nibble zeroed
  EXPECT_EQ(ys.data_as<uint8_t>()[0], f32_to_f4e2m1(4.8f));
  // Only constants: the value fills the output.
  Tensor yc = Tensor::empty({3, 3}, Dtype::f16);
  fuse({{yc, Expr(1.5) * 2.0}});
  for (int i = 0; i < 9; ++i) EXPECT_EQ(f16_to_f32(yc.data_as<uint16_t>()[i]), 3.0f);
}

// ---- NVRTC ------------------------------------------------------------------------------------

#if LOWBIT_HAS_CUDA
constexpr bool kHasNvrtc = true;
#else
constexpr bool kHasNvrtc = false;
#endif

#define LOWBIT_REQUIRE_NVRTC()                                          \
  do {                                                                  \
    if (!kHasNvrtc) {                                                   \
      std::printf("SKIPPED: this build has no CUDA toolkit (NVRTC)\n"); \
      GTEST_SKIP() << "no NVRTC";                                       \
    }                                                                   \
  } while (0)

/// A variant of case c's program: the vector kernel where the layout allows it (or when
/// `force_strided` is false and the coin says so), else the strided kernel.
fusion::Variant variant_of(const FusedDesc& d, std::mt19937_64& rng, bool idx64) {
  const fusion::Layout L = fusion::make_layout(d);
  fusion::Variant v;
  v.vec = L.vec_ok && rng() % 2 == 0;
  v.idx32 = L.idx32 && !idx64;
  v.nd = L.nd;
  v.cls = L.cls;
  v.pair = !v.vec && L.packed_out;
  return v;
}

TEST(FusionNvrtc, RandomExpressionsCompileForSm90a) {
  LOWBIT_REQUIRE_NVRTC();
  const int kCases = 240;
  struct Job {
    std::string what;
    fusion::KernelSource src;
    std::string kind;
    double ms = 0;
    std::string error;
  };
  std::vector<Job> jobs;
  for (int k = 0; k < kCases; ++k) {
    // Contiguous cases half the time, so that the vector kernel gets its share.
    const Case c = random_case(50000 + k, 64, k % 2 == 0);
    std::vector<TensorView> out;
    for (const Placed& p : c.outputs) out.push_back(p.view);
    const FusedDesc d = FusedDesc::make(outputs_of(c, out));
    std::mt19937_64 rng(k);
    const fusion::Variant v = variant_of(d, rng, k % 7 == 0);
    jobs.push_back({c.describe() + "\n  variant " + v.key(), fusion::generate_cuda(*d.program, v),
                    v.vec    ? "vec"
                    : v.pair ? "strided pair"
                             : "strided",
                    0.0, ""});
  }
  // NVRTC is thread-safe: compile on every core.
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      try {
        const std::string cubin =
            fusion::compile_cuda(jobs[i].src, "sm_90a", fmt::format("test{}", i), &jobs[i].ms);
        if (cubin.size() < 100) jobs[i].error = "tiny cubin";
      } catch (const Error& e) {
        jobs[i].error = e.what();
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); ++t)
    threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  std::vector<double> ms;
  std::map<std::string, int> kinds;
  for (const Job& j : jobs) {
    ASSERT_EQ(j.error, "") << j.what;
    ms.push_back(j.ms);
    ++kinds[j.kind];
  }
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double t : ms) sum += t;
  std::printf(
      "NVRTC %s, sm_90a: %d kernels (vec %d, strided %d, strided pair %d), compile ms "
      "(wall, %u threads) mean %.1f median %.1f max %.1f\n",
      fusion::nvrtc_version().c_str(), kCases, kinds["vec"], kinds["strided"],
      kinds["strided pair"], std::max(1u, std::thread::hardware_concurrency()), sum / ms.size(),
      ms[ms.size() / 2], ms.back());
  EXPECT_GT(kinds["vec"], kCases / 10);
}

TEST(FusionNvrtc, CompileErrorIsAnInternalErrorWithTheLogAndSource) {
  LOWBIT_REQUIRE_NVRTC();
  fusion::KernelSource bad;
  bad.name = "lowbit_fused";
  bad.code =
      "#include \"lowbit_jit_prelude.h\"\nextern \"C\" __global__ void lowbit_fused() { "
      "undeclared_thing(); }\n";
  try {
    double t = 0;
    fusion::compile_cuda(bad, "sm_90a", "badbadbad", &t);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    const std::string m = e.what();
    EXPECT_NE(m.find("undeclared_thing"), std::string::npos) << m;
    EXPECT_NE(m.find("lowbit_fused_badbadbad.cu(2)"), std::string::npos) << m;
    const size_t at = m.find("written to ");
    ASSERT_NE(at, std::string::npos) << m;
    const std::string path = m.substr(at + 11, m.find(". NVRTC log") - at - 11);
    EXPECT_TRUE(std::filesystem::exists(path)) << path;
    std::filesystem::remove(path);
  }
}

TEST(FusionNvrtc, AnArchNvrtcDoesNotKnowIsUnsupported) {
  LOWBIT_REQUIRE_NVRTC();
  Tensor a = Tensor::empty({64}, Dtype::bf16), y = Tensor::empty({64}, Dtype::bf16);
  const FusedDesc d = FusedDesc::make({{y, fusion::input(a) + 1.0}});
  std::mt19937_64 rng(1);
  const fusion::KernelSource src = fusion::generate_cuda(*d.program, variant_of(d, rng, false));
  testing::expect_error(
      [&] {
        double t = 0;
        fusion::compile_cuda(src, "sm_7", "badarch", &t);
      },
      ErrorCode::unsupported, "sm_7");
}

TEST(FusionNvrtc, DumpWritesSourceAndPtx) {
  LOWBIT_REQUIRE_NVRTC();
  const std::string dir = ::testing::TempDir() + fmt::format("lowbit_dump_{}", ::getpid());
  ::setenv("LOWBIT_JIT_DUMP", dir.c_str(), 1);
  Tensor a = Tensor::empty({64}, Dtype::bf16), y = Tensor::empty({64}, Dtype::bf16);
  const FusedDesc d = FusedDesc::make({{y, fusion::exp(fusion::input(a))}});
  std::mt19937_64 rng(1);
  const fusion::Variant v = variant_of(d, rng, false);
  double t = 0;
  fusion::compile_cuda(fusion::generate_cuda(*d.program, v), "sm_90a", "dumptest", &t);
  ::unsetenv("LOWBIT_JIT_DUMP");
  EXPECT_TRUE(std::filesystem::exists(dir + "/lowbit_fused_dumptest.cu"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/lowbit_fused_dumptest.ptx"));
  std::ifstream ptx(dir + "/lowbit_fused_dumptest.ptx");
  std::stringstream ss;
  ss << ptx.rdbuf();
  EXPECT_NE(ss.str().find(".entry lowbit_fused"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(FusionNvrtc, WarmUpThenCompile) {
  LOWBIT_REQUIRE_NVRTC();
  // The warm-up runs once per process on its own thread; a compile while it runs waits for
  // it (no deadlock, no failure), and one after it gives the same binary.
  fusion::warm_up();
  fusion::warm_up();
  Tensor a = Tensor::empty({64}, Dtype::f32), y = Tensor::empty({64}, Dtype::f32);
  const FusedDesc d = FusedDesc::make({{y, fusion::silu(fusion::input(a))}});
  std::mt19937_64 rng(3);
  const fusion::Variant v = variant_of(d, rng, false);
  const fusion::KernelSource src = fusion::generate_cuda(*d.program, v);
  double t = 0;
  const std::string first = fusion::compile_cuda(src, "sm_90a", "warmup1", &t);
  EXPECT_FALSE(first.empty());
  EXPECT_EQ(fusion::compile_cuda(src, "sm_90a", "warmup2", &t), first);
}

// ---- the module cache ---------------------------------------------------------------------------

struct CacheDir {
  std::string path;
  CacheDir() {
    path = ::testing::TempDir() +
           fmt::format("lowbit_cache_{}_{}/deeper/lowbit", ::getpid(),
                       std::chrono::steady_clock::now().time_since_epoch().count());
  }
  ~CacheDir() {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(path).parent_path().parent_path(), ec);
  }
};

TEST(FusionCache, MemoryDiskCorruptionAndPermissions) {
  LOWBIT_REQUIRE_NVRTC();
  CacheDir dir;
  Tensor a = Tensor::empty({64}, Dtype::bf16), b = Tensor::empty({64}, Dtype::f16);
  Tensor y = Tensor::empty({64}, Dtype::bf16);
  const FusedDesc d = FusedDesc::make({{y, fusion::tanh(fusion::input(a)) + fusion::input(b)}});
  const fusion::Layout L = fusion::make_layout(d);
  fusion::Variant v;
  v.vec = true;
  v.cls = L.cls;
  const std::string key =
      fusion::ModuleCache::key_for(d.program->canonical() + "|" + v.key(), "sm_90a");
  int generated = 0;
  auto source = [&] {
    ++generated;
    return fusion::generate_cuda(*d.program, v);
  };

  fusion::ModuleCache::Options opt;
  opt.dir = dir.path;
  fusion::ModuleCache one(opt);
  ASSERT_EQ(one.dir(), dir.path);
  struct stat st {};
  ASSERT_EQ(::stat(dir.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u) << "cache directory mode";
  // Miss: compiled and written; then a memory hit.
  auto k1 = one.get(key, "sm_90a", source);
  EXPECT_EQ(k1->origin, "compiled");
  EXPECT_EQ(one.stats().compiles, 1u);
  EXPECT_EQ(one.stats().disk_writes, 1u);
  auto k2 = one.get(key, "sm_90a", source);
  EXPECT_EQ(k2.get(), k1.get());
  EXPECT_EQ(one.stats().memory_hits, 1u);
  EXPECT_EQ(generated, 1);
  // Written through a temporary file and a rename: only the entry is left, mode 0600.
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir.path)) {
    ++files;
    EXPECT_EQ(f.path().extension(), ".lbjit") << f.path();
  }
  EXPECT_EQ(files, 1);
  const std::string entry = one.entry_path(key);
  ASSERT_EQ(::stat(entry.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A second cache (another process, as far as the disk knows) loads the entry.
  fusion::ModuleCache two(opt);
  auto k3 = two.get(key, "sm_90a", source);
  EXPECT_EQ(k3->origin, "disk");
  EXPECT_EQ(k3->cubin, k1->cubin);
  EXPECT_EQ(two.stats().disk_hits, 1u);
  EXPECT_EQ(two.stats().compiles, 0u);
  EXPECT_EQ(generated, 1);

  // One flipped byte in the middle of the cubin: detected, recompiled, replaced.
  {
    std::fstream f(entry, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const auto size = static_cast<std::streamoff>(f.tellg());
    f.seekg(size / 2);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(size / 2);
    f.write(&c, 1);
  }
  fusion::ModuleCache three(opt);
  auto k4 = three.get(key, "sm_90a", source);
  EXPECT_EQ(k4->origin, "compiled");
  EXPECT_EQ(three.stats().corrupt, 1u);
  EXPECT_EQ(k4->cubin, k1->cubin);  // NVRTC is deterministic
  fusion::ModuleCache four(opt);
  EXPECT_EQ(four.get(key, "sm_90a", source)->origin, "disk");  // the replacement is whole
  // A truncated entry too.
  std::filesystem::resize_file(entry, 40);
  fusion::ModuleCache five(opt);
  EXPECT_EQ(five.get(key, "sm_90a", source)->origin, "compiled");
  EXPECT_EQ(five.stats().corrupt, 1u);

  // Another key is another entry; the in-memory LRU evicts past its capacity.
  opt.capacity = 1;
  fusion::ModuleCache small(opt);
  small.get(key, "sm_90a", source);
  const std::string key2 =
      fusion::ModuleCache::key_for(d.program->canonical() + "|other", "sm_90a");
  small.get(key2, "sm_90a", source);
  EXPECT_EQ(small.stats().evictions, 1u);
  EXPECT_EQ(small.lookup(key), nullptr);
  EXPECT_NE(small.entry_path(key), small.entry_path(key2));

  // A directory others can write to is not used.
  const std::string open_dir = dir.path + "_open";
  std::filesystem::create_directories(open_dir);
  ::chmod(open_dir.c_str(), 0777);
  opt.dir = open_dir;
  fusion::ModuleCache unsafe(opt);
  EXPECT_EQ(unsafe.dir(), "");
  std::filesystem::remove_all(open_dir);
}

TEST(FusionCache, KeyNamesEverythingThatChangesTheBinary) {
  const std::string k = fusion::ModuleCache::key_for("CANON", "sm_90a");
  EXPECT_NE(k.find("CANON"), std::string::npos);
  EXPECT_NE(k.find("sm_90a"), std::string::npos);
  EXPECT_NE(k.find("codegen " + std::to_string(fusion::kCodegenVersion)), std::string::npos);
  EXPECT_NE(k.find("--fmad=false"), std::string::npos);
  EXPECT_NE(k.find("headers "), std::string::npos);
  if (kHasNvrtc) {
    EXPECT_NE(k.find("nvrtc " + fusion::nvrtc_version()), std::string::npos);
  }
  // Constants are kernel arguments: expressions differing only in them share a kernel.
  Tensor a = Tensor::empty({8}, Dtype::f32), y = Tensor::empty({8}, Dtype::f32);
  const Expr x = fusion::input(a);
  EXPECT_EQ(FusedDesc::make({{y, x * 2.0 + 1.0}}).program->canonical(),
            FusedDesc::make({{y, x * 3.0 + 7.0}}).program->canonical());
  EXPECT_NE(FusedDesc::make({{y, x * 2.0}}).program->canonical(),
            FusedDesc::make({{y, x + 2.0}}).program->canonical());
  EXPECT_NE(FusedDesc::make({{y, fusion::pow(x, 2.5)}}).program->canonical(),
            FusedDesc::make({{y, fusion::pow(x, 1.5)}}).program->canonical());
}

TEST(FusionCache, SameStructureImpliesTheSameCanonicalForm) {
  // The launch path finds resolved kernels by structure_hash and same_structure instead of
  // the canonical text: same_structure must never hold where the texts differ, and must
  // hold for a program built twice, or with other constants (kernel arguments).
  std::vector<std::shared_ptr<const fusion::Program>> programs;
  for (int k = 0; k < 300; ++k) {
    const Case c = random_case(70000 + k % 150, 32, k % 3 == 0);
    std::vector<TensorView> out;
    for (const Placed& p : c.outputs) out.push_back(p.view);
    programs.push_back(FusedDesc::make(outputs_of(c, out)).program);
  }
  int same = 0;
  for (size_t i = 0; i < programs.size(); ++i)
    for (size_t j = 0; j < programs.size(); ++j) {
      const fusion::Program& a = *programs[i];
      const fusion::Program& b = *programs[j];
      if (!a.same_structure(b)) continue;
      ++same;
      EXPECT_EQ(a.canonical(), b.canonical()) << i << " " << j;
      EXPECT_EQ(a.structure_hash, b.structure_hash) << i << " " << j;
    }
  EXPECT_GE(same, 2 * 300);  // at least each with itself and with its twin (k, k + 150)
  Tensor a = Tensor::empty({8}, Dtype::f32), y = Tensor::empty({8}, Dtype::f32);
  const Expr x = fusion::input(a);
  const auto p1 = FusedDesc::make({{y, fusion::pow(x, 2.5) * 3.0}}).program;
  EXPECT_TRUE(p1->same_structure(*FusedDesc::make({{y, fusion::pow(x, 2.5) * 7.0}}).program));
  EXPECT_FALSE(p1->same_structure(*FusedDesc::make({{y, fusion::pow(x, 1.5) * 3.0}}).program));
  EXPECT_FALSE(p1->same_structure(*FusedDesc::make({{y, fusion::pow(x, 2.5) + 3.0}}).program));
}

TEST(FusionCache, ResolvedKernelTableSharesOnlyWhatTheKeyWouldShare) {
  LOWBIT_REQUIRE_NVRTC();
  // resolve_kernel's table (hash, then full comparison of canonical form, variant and
  // arch) must give one kernel exactly where the full cache key would be equal.
  Tensor a = Tensor::empty({64}, Dtype::f32), y = Tensor::empty({64}, Dtype::f32);
  const Expr x = fusion::input(a);
  auto program = [&](const Expr& e) { return FusedDesc::make({{y, e}}).program; };
  fusion::Variant v;
  v.vec = true;
  v.cls = {fusion::Layout::Class::full, fusion::Layout::Class::full};
  const std::string arch = "sm_90a";
  const auto p1 = program(x * 2.0 + 1.0);
  const auto r1 = fusion::resolve_kernel(p1, v, arch);
  ASSERT_NE(r1->compiled, nullptr);
  EXPECT_FALSE(r1->compiled->cubin.empty());
  EXPECT_EQ(r1->variant, v);
  EXPECT_EQ(r1->shape.group, fusion::generate_cuda(*p1, v, false).group);
  // Same structure, other constants (kernel arguments): the same kernel, no new compile.
  const auto compiles = fusion::ModuleCache::global().stats().compiles;
  EXPECT_EQ(fusion::resolve_kernel(program(x * 3.0 + 7.0), v, arch).get(), r1.get());
  EXPECT_EQ(fusion::resolve_kernel(p1, v, arch).get(), r1.get());
  EXPECT_EQ(fusion::ModuleCache::global().stats().compiles, compiles);
  // Another structure, variant field or arch: another kernel, under its own full key.
  const auto other = fusion::resolve_kernel(program(x + 2.0), v, arch);
  EXPECT_NE(other.get(), r1.get());
  EXPECT_NE(other->compiled->key, r1->compiled->key);
  for (int field = 0; field < 4; ++field) {
    fusion::Variant w = v;
    if (field == 0) w.idx32 = false;
    if (field == 1) w.fast = true;
    if (field == 2) w.cls[0] = fusion::Layout::Class::scalar;
    if (field == 3) w.vec = false;
    const auto r = fusion::resolve_kernel(p1, w, arch);
    EXPECT_NE(r.get(), r1.get()) << "variant field " << field;
    EXPECT_EQ(r->compiled->key,
              fusion::ModuleCache::key_for(p1->canonical() + "|" + w.key(), arch));
  }
  const auto r90 = fusion::resolve_kernel(p1, v, "sm_90");
  EXPECT_NE(r90.get(), r1.get());
  EXPECT_NE(r90->compiled->key, r1->compiled->key);
  // Clearing the global cache's memory empties the table: the kernel is resolved again.
  fusion::ModuleCache::global().clear_memory();
  const auto again = fusion::resolve_kernel(p1, v, arch);
  EXPECT_NE(again.get(), r1.get());
  EXPECT_EQ(again->compiled->cubin, r1->compiled->cubin);
}

// ---- GPU ----------------------------------------------------------------------------------------

/// A copy of host placement p on `device` with the same layout.
struct DevicePlaced {
  Tensor base;
  TensorView view;
};

DevicePlaced to_device(const Placed& p, Device device) {
  DevicePlaced d;
  d.base = testing::to_device(p.base, device);
  const int64_t off =
      static_cast<const char*>(p.view.data()) - static_cast<const char*>(p.base.data());
  d.view = TensorView(static_cast<char*>(d.base.data()) + off, p.view.dtype(), p.view.shape(),
                      p.view.strides(), device);
  return d;
}

/// True if the two outputs hold the same values (NaN payloads and signs aside).
std::string same_values(const TensorView& want, const TensorView& got, const Shape& shape) {
  const int64_t n = numel(shape);
  for (int64_t e = 0; e < n; ++e) {
    const double a = read_value(want.data(), want.dtype(), offset_in(want, shape, e));
    const double b = read_value(got.data(), got.dtype(), offset_in(got, shape, e));
    // NaN payloads and signs are not specified (x86 and GPUs make different default NaNs;
    // compilers may swap the operands of commutative ops). f4e2m1, which has no NaN, takes
    // every NaN as +NaN in both kernels (lb_f4e2m1_code), so its zeros do agree.
    if (std::isnan(a) && std::isnan(b)) continue;
    if (std::memcmp(&a, &b, sizeof a) != 0)
      return fmt::format("element {}: want {} ({:a}), got {} ({:a})", e, a, a, b, b);
  }
  return {};
}

// ---- generated kernels on a host emulator ------------------------------------------------

/// Minimal CUDA built-ins for running a generated kernel on the CPU, one thread at a time
/// (the kernels use no shared memory or barriers, so sequential threads are exact).
const char* const kHostShim = R"(#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static Dim3 blockIdx, threadIdx, gridDim, blockDim;
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline double __longlong_as_double(long long u) { return std::bit_cast<double>(u); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
using std::exp; using std::log; using std::sqrt; using std::tanh; using std::erf;
using std::log1p; using std::pow; using std::trunc;
inline float sqrtf(float x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
inline uint4 __ldg(const uint4* p) { return *p; }
)";

const char* const kHostMain = R"(
extern "C" int lowbit_emulate(const void* params, unsigned blocks) {
  Params p;
  std::memcpy(&p, params, sizeof p);
  gridDim.x = blocks;
  blockDim.x = 256;
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < 256; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      lowbit_fused(p);
    }
  return static_cast<int>(sizeof(Params));
}
)";

/// A directory with the JIT's headers and the shim, in which generated kernels are compiled
/// by the host's C++ compiler, loaded and run thread by thread (available() is false without
/// a host compiler). Removed with the object.
class HostEmulator {
 public:
  explicit HostEmulator(const std::string& name) {
    const char* cxx_env = std::getenv("CXX");
    cxx_ = cxx_env && *cxx_env ? cxx_env : "c++";
    available_ = std::system((cxx_ + " --version > /dev/null 2>&1").c_str()) == 0;
    if (!available_) {
      std::printf("SKIPPED: no host C++ compiler (%s) to emulate kernels\n", cxx_.c_str());
      return;
    }
    dir_ = ::testing::TempDir() + fmt::format("{}_{}", name, ::getpid());
    std::filesystem::create_directories(dir_ + "/lowbit");
    const fusion::HeaderSet& h = fusion::jit_headers();
    for (size_t i = 0; i < h.names.size(); ++i) {
      if (h.names[i] == "cstdint" || h.names[i] == "bit") continue;  // the host's own
      std::ofstream(dir_ + "/" + h.names[i]) << h.contents[i];
    }
    std::ofstream(dir_ + "/shim.h") << kHostShim;
  }
  ~HostEmulator() {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  HostEmulator(const HostEmulator&) = delete;
  HostEmulator& operator=(const HostEmulator&) = delete;
  bool available() const { return available_; }

  /// Runs `src` over `blocks` blocks of 256 threads with `params`; returns the kernel's
  /// sizeof(Params), or -1 after reporting a failure to build or load it.
  int run(const fusion::KernelSource& src, const std::vector<unsigned char>& params,
          const std::string& stem_name, unsigned blocks) const {
    const std::string stem = dir_ + "/" + stem_name;
    std::ofstream(stem + ".cpp") << "#include \"shim.h\"\n" << src.code << kHostMain;
    const std::string cmd = fmt::format("{} -std=c++20 -O0 -w -fPIC -shared -I{} {}.cpp -o {}.so",
                                        cxx_, dir_, stem, stem);
    if (std::system(cmd.c_str()) != 0) {
      ADD_FAILURE() << cmd << "\n" << src.code;
      return -1;
    }
    void* so = ::dlopen((stem + ".so").c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!so) {
      ADD_FAILURE() << ::dlerror();
      return -1;
    }
    auto fn = reinterpret_cast<int (*)(const void*, unsigned)>(::dlsym(so, "lowbit_emulate"));
    const int size = fn ? fn(params.data(), blocks) : -1;
    if (!fn) ADD_FAILURE() << "no lowbit_emulate in " << stem << ".so";
    ::dlclose(so);
    return size;
  }

 private:
  std::string cxx_, dir_;
  bool available_ = false;
};

// The generated CUDA source, compiled by the host's C++ compiler against the shim above and
// run thread by thread: checks codegen's indexing, lanes, partial groups, element pairs and
// the parameter block against the CPU kernel without a GPU (the formulas are the CPU's
// here; the GPU test checks the device's arithmetic). Skipped without a host compiler.
TEST(FusionCodegen, KernelsRunOnAHostEmulator) {
  const HostEmulator emu_dir("lowbit_emu");
  if (!emu_dir.available()) GTEST_SKIP() << "no host compiler";
  int kernels = 0;
  std::map<std::string, int> kinds;
  for (int k = 0; k < 12; ++k) {
    const Case c = random_case(70000 + k, k % 4 == 3 ? 3000 : 200, k % 2 == 0);
    const std::vector<TensorView> want = poisoned_outputs(c);
    fuse(outputs_of(c, want));
    std::vector<Placed> emu;
    std::vector<TensorView> views;
    for (const Placed& p : c.outputs) {
      Placed q;
      q.base = Tensor::empty(p.base.shape(), p.base.dtype());
      q.layout = p.layout;
      const int64_t off =
          static_cast<const char*>(p.view.data()) - static_cast<const char*>(p.base.data());
      q.view = TensorView(static_cast<char*>(q.base.data()) + off, p.view.dtype(), p.view.shape(),
                          p.view.strides());
      views.push_back(q.view);
      emu.push_back(std::move(q));
    }
    const FusedDesc d = FusedDesc::make(outputs_of(c, views));
    const FusedArgs args = d.bound_args();
    const fusion::Layout L = fusion::make_layout(d);
    for (int vec = 0; vec < 2; ++vec) {
      if (vec && !L.vec_ok) continue;
      bool aligned = true;
      for (size_t q = 0; q < L.cls.size(); ++q)
        if (L.cls[q] == fusion::Layout::Class::full) {
          const void* ptr = q < args.inputs.size() ? args.inputs[q].data()
                                                   : args.outputs[q - args.inputs.size()].data();
          aligned = aligned && reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
        }
      if (vec && !aligned) continue;
      for (Placed& q : emu)
        std::memset(q.base.data(), kPoison, static_cast<size_t>(q.base.nbytes()));
      fusion::Variant v;
      v.vec = vec;
      v.idx32 = L.idx32 && k % 3 != 0;
      v.nd = L.nd;
      v.cls = L.cls;
      v.pair = !v.vec && L.packed_out;
      const fusion::KernelSource src = fusion::generate_cuda(*d.program, v);
      const std::vector<unsigned char> params = fusion::pack_params(*d.program, v, L, args);
      // Three blocks: the grid-stride loops wrap for the larger cases.
      const int size = emu_dir.run(src, params, fmt::format("k{}_{}", k, vec), 3);
      ASSERT_GE(size, 0);
      EXPECT_EQ(size, src.param_bytes) << "Params layout differs between host and kernel";
      for (size_t o = 0; o < views.size(); ++o) {
        ASSERT_EQ(same_values(want[o], views[o], c.shape), "")
            << c.describe() << "\n  variant " << v.key();
        ASSERT_EQ(check_gaps(emu[o], c.shape), "") << c.describe() << "\n  variant " << v.key();
      }
      ++kernels;
      ++kinds[v.key().substr(0, 3)];
    }
  }
  std::printf("emulated %d generated kernels (vec %d, strided %d) on the host\n", kernels,
              kinds["vec"], kinds["str"]);
  EXPECT_GT(kinds["vec"], 0);
  EXPECT_GT(kinds["str"], 0);
}

/// Broadcast row and column cases (Variant::rows / cols): the output's shape, each input's
/// shape and dtype (all filled at random), the output dtype, and whether the vector kernel
/// can take them.
struct RowCase {
  Shape out;
  std::vector<std::pair<Shape, Dtype>> in;
  Dtype out_dtype;
  bool vec;
};
const RowCase kRowCases[] = {
    {{37, 64}, {{{37, 64}, Dtype::bf16}, {{64}, Dtype::bf16}}, Dtype::bf16, true},
    {{3, 5, 128},
     {{{3, 5, 128}, Dtype::f32}, {{1, 5, 128}, Dtype::f32}, {{128}, Dtype::bf16}},
     Dtype::f32,
     true},
    {{16, 40}, {{{16, 40}, Dtype::bf16}, {{40}, Dtype::f32}}, Dtype::bf16, true},
    {{9, 2, 24}, {{{9, 1, 24}, Dtype::f16}, {{2, 24}, Dtype::f16}}, Dtype::f16, true},
    {{7, 36}, {{{7, 36}, Dtype::bf16}, {{36}, Dtype::bf16}}, Dtype::bf16, false},  // 36 % 8
    {{5, 40}, {{{5, 40}, Dtype::u8}, {{40}, Dtype::bf16}}, Dtype::f32, false},     // 40 % 16
    {{6, 48}, {{{6, 48}, Dtype::u8}, {{48}, Dtype::bf16}}, Dtype::f32, true},
    // Columns: a per-row value (rstd[M, 1]), with and without a row (RMSNorm's weight[N]).
    {{37, 64},
     {{{37, 64}, Dtype::bf16}, {{37, 1}, Dtype::f32}, {{64}, Dtype::bf16}},
     Dtype::bf16,
     true},
    {{16, 40}, {{{16, 40}, Dtype::bf16}, {{16, 1}, Dtype::bf16}}, Dtype::bf16, true},
    {{3, 4, 32}, {{{3, 4, 32}, Dtype::f32}, {{3, 4, 1}, Dtype::f16}}, Dtype::f32, true},
    {{7, 36}, {{{7, 36}, Dtype::bf16}, {{7, 1}, Dtype::f32}}, Dtype::bf16, false},  // 36 % 8
};

/// gelu(x0 * x1 + x2 ...) over a row case, with its inputs on `dev` (same values each time).
struct RowRun {
  std::vector<Tensor> inputs;
  Tensor out;
  Expr value = Expr(0.0);
};
RowRun row_run(const RowCase& c, Device dev) {
  RowRun r;
  std::mt19937_64 rng(41);
  Expr sum = Expr(0.0);
  for (size_t i = 0; i < c.in.size(); ++i) {
    Tensor h = Tensor::empty(c.in[i].first, c.in[i].second);
    fill_values(h, rng);
    r.inputs.push_back(dev.is_cuda() ? testing::to_device(h, dev) : std::move(h));
    const Expr x = fusion::input(r.inputs.back());
    sum = i == 0 ? x : i % 2 ? sum * x : sum + x;
  }
  r.value = fusion::gelu(sum);
  // Poisoned, so that an element the kernel leaves unwritten shows.
  Tensor out = Tensor::empty(c.out, c.out_dtype);
  std::memset(out.data(), kPoison, static_cast<size_t>(out.nbytes()));
  r.out = dev.is_cuda() ? testing::to_device(out, dev) : std::move(out);
  return r;
}

// The vector kernel with broadcast rows, run on the host emulator against the CPU kernel
// (NVRTC and a GPU are not needed): the layouts that allow it take it, the others not.
TEST(FusionCodegen, BroadcastRowsRunOnAHostEmulator) {
  const HostEmulator emu("lowbit_emu_rows");
  if (!emu.available()) GTEST_SKIP() << "no host compiler";
  int emulated = 0;
  for (size_t ci = 0; ci < std::size(kRowCases); ++ci) {
    const RowCase& c = kRowCases[ci];
    RowRun r = row_run(c, Device::cpu());
    Tensor want = Tensor::empty(c.out, c.out_dtype);
    fuse({{want, r.value}});
    const FusedDesc d = FusedDesc::make({{r.out, r.value}});
    const fusion::Layout L = fusion::make_layout(d);
    const fusion::BroadcastInputs b = fusion::broadcast_inputs(d, L);
    ASSERT_EQ((b.rows | b.cols) != 0, c.vec) << "case " << ci << " " << c.out.str();
    if (!c.vec) continue;
    for (const bool idx32 : {true, false}) {
      std::memset(r.out.data(), kPoison, static_cast<size_t>(r.out.nbytes()));
      fusion::Variant v;
      v.vec = true;
      v.idx32 = idx32;
      v.nd = L.nd;
      v.cls = L.cls;
      v.rows = b.rows;
      v.cols = b.cols;
      const fusion::KernelSource src = fusion::generate_cuda(*d.program, v);
      // NVRTC compiles it for the H100 too (in CI, without a GPU).
      if (kHasNvrtc) EXPECT_FALSE(fusion::compile_cuda(src, "sm_90a", "rows", nullptr).empty());
      const std::vector<unsigned char> params =
          fusion::pack_params(*d.program, v, L, d.bound_args());
      EXPECT_EQ(emu.run(src, params, fmt::format("r{}_{}", ci, idx32), 1), src.param_bytes)
          << "Params layout differs (or the kernel did not build)";
      ASSERT_EQ(same_values(want, r.out, c.out), "") << "case " << ci << " variant " << v.key();
      ++emulated;
    }
  }
  std::printf("emulated %d broadcast row / column kernels on the host\n", emulated);
  EXPECT_GT(emulated, 0);
}

TEST(FusionCuda, BroadcastRowsTakeTheVectorKernel) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  for (size_t ci = 0; ci < std::size(kRowCases); ++ci) {
    const RowCase& c = kRowCases[ci];
    const RowRun hr = row_run(c, Device::cpu());
    Tensor want = Tensor::empty(c.out, c.out_dtype);
    fuse({{want, hr.value}});
    RowRun r = row_run(c, gpu);
    const FusedDesc d = FusedDesc::make({{r.out, r.value}});
    FusedPlan::select(d).run(Stream::default_for(gpu), {}, d.bound_args());
    Stream::default_for(gpu).synchronize();
    const auto& vec_kernel = d.state->kernels[0];
    EXPECT_EQ(vec_kernel != nullptr, c.vec) << "case " << ci;
    if (vec_kernel)
      EXPECT_NE(vec_kernel->variant.rows | vec_kernel->variant.cols, 0u) << "case " << ci;
    const Tensor back = testing::to_host(r.out);
    EXPECT_EQ(same_values(want, back, c.out), "") << "case " << ci;
  }
}

TEST(FusionCuda, RandomExpressionsMatchTheCpuKernel) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const int kCases = 400;
  int64_t checked = 0, vacuous = 0;
  int exact = 0;
  for (int k = 0; k < kCases; ++k) {
    const Case c = random_case(90000 + k, k % 50 == 0 ? 70000 : 300, k % 3 != 0);
    // Poisoned outputs on both devices, inputs of the same layouts on the GPU.
    const std::vector<TensorView> cpu_out = poisoned_outputs(c);
    std::vector<DevicePlaced> din, dout;
    for (size_t i = 0; i < c.inputs.size(); ++i) din.push_back(to_device(c.inputs[i], gpu));
    for (const Placed& p : c.outputs) dout.push_back(to_device(p, gpu));
    // The CPU kernel's results, then the same program on the GPU.
    fuse(outputs_of(c, cpu_out));
    // Rebind the expression's inputs to the device tensors: same program, other args.
    std::vector<TensorView> dviews;
    for (const DevicePlaced& p : dout) dviews.push_back(p.view);
    const FusedDesc desc = FusedDesc::make(outputs_of(c, cpu_out));
    FusedDesc ddesc = desc;
    ddesc.device = gpu;
    FusedArgs args;
    for (const TensorView& bound : desc.program->bound_inputs)  // the program's input order
      for (size_t i = 0; i < c.inputs.size(); ++i)
        if (c.inputs[i].view.data() == bound.data()) args.inputs.push_back(din[i].view);
    args.outputs = dviews;
    ddesc.state = std::make_shared<fusion::PlanState>();
    const FusedPlan plan = FusedPlan::select(ddesc);
    ASSERT_EQ(plan.sku().backend, Backend::cuda);
    try {
      plan.run(Stream::default_for(gpu), {}, args);
      Stream::default_for(gpu).synchronize();
    } catch (const Error& e) {
      FAIL() << c.describe() << "\n  threw " << e.what();
    }
    std::vector<TensorView> got;
    std::vector<Placed> host;  // the device outputs copied back, laid out as on the device
    for (size_t o = 0; o < dout.size(); ++o) {
      Placed h;
      h.base = testing::to_host(dout[o].base);
      h.layout = c.outputs[o].layout;
      const int64_t off = static_cast<const char*>(c.outputs[o].view.data()) -
                          static_cast<const char*>(c.outputs[o].base.data());
      h.view = TensorView(static_cast<char*>(h.base.data()) + off, c.outputs[o].view.dtype(),
                          c.outputs[o].view.shape(), c.outputs[o].view.strides());
      got.push_back(h.view);
      ASSERT_EQ(check_gaps(h, c.shape), "") << c.describe() << " (cuda)";
      host.push_back(std::move(h));
    }
    const std::string why = check_case(c, got, &checked, &vacuous);
    ASSERT_EQ(why, "") << "(cuda)";
    if (!desc.program->f64_transcendental) {
      for (size_t o = 0; o < got.size(); ++o)
        ASSERT_EQ(same_values(cpu_out[o], got[o], c.shape), "") << c.describe();
      ++exact;
    }
  }
  std::printf(
      "cuda: %d random expressions (%d compared bit for bit with the cpu), %lld "
      "elements checked\n",
      kCases, exact, static_cast<long long>(checked));
}

// FusedDesc::fast_math: the opt-in approximate kernels against the exact CPU kernel, within
// the bounds docs/jit.md states (hardware exp2 with its argument rounded to f32: relative
// 2^-16 on exp for |x| <= 88; 2-ulp division; contracted multiply-adds), on inputs of
// normal(0, 2) and a range sweep; and the plan reports them as not bit-stable.
TEST(FusionCuda, FastMathStaysWithinItsBounds) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const int64_t n = (int64_t{1} << 16) + 5;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  struct Kind {
    const char* name;
    std::function<Expr(const Expr&, const Expr&)> f;
    double rtol;  // relative to max(|exact|, 1): the expressions' terms are O(1)
  };
  using namespace fusion;
  const Kind kinds[] = {
      {"exp", [](const Expr& a, const Expr&) { return exp(a); }, 0x1p-15},
      {"sigmoid", [](const Expr& a, const Expr&) { return sigmoid(a); }, 0x1p-15},
      {"silu(a)*b", [](const Expr& a, const Expr& b) { return silu(a) * b; }, 0x1p-14},
      {"softplus", [](const Expr& a, const Expr&) { return softplus(a); }, 0x1p-15},
      {"a/b", [](const Expr& a, const Expr& b) { return a / (abs(b) + 0.5); }, 0x1p-20},
      {"chain8",
       [](const Expr& a, const Expr& b) {
         return clamp(silu(a * 1.25 + b) * b - a * 0.5, -8.0, 8.0);
       },
       0x1p-13},
  };
  for (Dtype dt : {Dtype::f32, Dtype::bf16}) {
    Tensor ha = Tensor::empty({n}, Dtype::f32), hb = Tensor::empty({n}, Dtype::f32);
    for (int64_t i = 0; i < n; ++i) {
      // A sweep over exp's whole range in the first 4096 elements, normal values after.
      ha.data_as<float>()[i] =
          i < 4096 ? -90.0f + 180.0f * static_cast<float>(i) / 4096.0f : normal(rng);
      hb.data_as<float>()[i] = normal(rng);
    }
    Tensor ca = Tensor::empty({n}, dt), cb = Tensor::empty({n}, dt);
    convert(ca, ha);
    convert(cb, hb);
    const Tensor da = testing::to_device(ca, gpu), db = testing::to_device(cb, gpu);
    for (const Kind& k : kinds) {
      Tensor want = Tensor::empty({n}, Dtype::f32);
      fuse({{want, k.f(input(ca), input(cb))}});
      Tensor dy = Tensor::empty({n}, Dtype::f32, gpu);
      FusedDesc d = FusedDesc::make({{dy, k.f(input(da), input(db))}});
      d.fast_math = true;
      const FusedPlan plan = FusedPlan::select(d);
      EXPECT_FALSE(plan.precision().bit_stable) << k.name;
      plan.run(Stream::default_for(gpu), {}, d.bound_args());
      Stream::default_for(gpu).synchronize();
      ASSERT_NE(d.state->kernels[fusion::PlanState::kSlots], nullptr) << "no fast vec kernel";
      EXPECT_NE(d.state->kernels[fusion::PlanState::kSlots]->variant.key().find("fast"),
                std::string::npos);
      const Tensor got = testing::to_host(dy);
      double worst = 0;
      int64_t at = -1;
      for (int64_t i = 0; i < n; ++i) {
        const double w = want.data_as<float>()[i], g = got.data_as<float>()[i];
        if (std::isnan(w) || std::isinf(w)) {
          ASSERT_TRUE(std::isnan(w) ? std::isnan(g) : g == w) << k.name << " at " << i;
          continue;
        }
        const double err = std::fabs(g - w) / std::max(std::fabs(w), 1.0);
        if (!(err <= worst)) {
          worst = err;
          at = i;
        }
      }
      EXPECT_LE(worst, k.rtol) << k.name << " " << dtype_name(dt) << " worst at " << at << ": a "
                               << ha.data_as<float>()[at] << " b " << hb.data_as<float>()[at];
      std::printf(
          "fast math %-10s %-4s: worst error %.2e (bound %.2e) relative to max(|exact|, 1)\n",
          k.name, std::string(dtype_name(dt)).c_str(), worst, k.rtol);
    }
  }
}

TEST(FusionCuda, AlignedContiguousUsesTheVectorKernelAndMisalignedFallsBack) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const int64_t n = (int64_t{1} << 20) + 3;
  std::mt19937_64 rng(3);
  Tensor ha = Tensor::empty({n + 1}, Dtype::bf16), hb = Tensor::empty({n + 1}, Dtype::bf16);
  fill_values(ha, rng);
  fill_values(hb, rng);
  Tensor da = testing::to_device(ha, gpu), db = testing::to_device(hb, gpu);
  Tensor dy = Tensor::empty({n + 1}, Dtype::bf16, gpu);
  Tensor hy = Tensor::empty({n + 1}, Dtype::bf16);
  for (int shift : {0, 1}) {
    auto view = [&](const Tensor& t, Device dev) {
      return TensorView(static_cast<uint16_t*>(t.data()) + shift, Dtype::bf16, {n}, dev);
    };
    const Expr e = fusion::silu(fusion::input(view(da, gpu))) * fusion::input(view(db, gpu));
    const FusedDesc d = FusedDesc::make({{view(dy, gpu), e}});
    FusedPlan::select(d).run(Stream::default_for(gpu), {}, d.bound_args());
    Stream::default_for(gpu).synchronize();
    // 16-byte aligned: the vector kernel; one element off: the strided one.
    EXPECT_EQ(d.state->kernels[0] != nullptr, shift == 0);
    EXPECT_EQ(d.state->kernels[1] != nullptr, shift == 1);
    const Expr ec = fusion::silu(fusion::input(view(ha, Device::cpu()))) *
                    fusion::input(view(hb, Device::cpu()));
    fuse({{view(hy, Device::cpu()), ec}});
    Tensor back = testing::to_host(dy);
    // Bit for bit, NaN as NaN (their signs differ between x86 and the GPU).
    EXPECT_EQ(same_values(view(hy, Device::cpu()), view(back, Device::cpu()), Shape{n}), "")
        << "shift " << shift;
  }
  const auto st = fusion::ModuleCache::global().stats();
  std::printf("global cache: %llu compiles, %llu disk hits, %llu memory hits\n",
              static_cast<unsigned long long>(st.compiles),
              static_cast<unsigned long long>(st.disk_hits),
              static_cast<unsigned long long>(st.memory_hits));
}

}  // namespace
}  // namespace lowbit
