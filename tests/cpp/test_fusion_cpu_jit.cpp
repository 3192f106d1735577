// The CPU JIT of the fusion op (src/jit/codegen_cpu.cpp, cpu_compile.cpp,
// cpu_jit_kernel.cpp): compiled kernels against the interpreter.
//
//  - Random expressions of the ops the generator takes, over contiguous f32 / bf16 inputs
//    and scalar inputs of any dtype (constants include NaN bounds), at sizes that leave
//    partial last vectors and split across threads: the exact kernel's outputs (poisoned
//    before the run) must have the interpreter's bits.
//  - Fast math: exp, sigmoid, silu on swept f32 values within their error bounds, specials
//    exact.
//  - What the kernel declines, and why; the disk cache (a reload, a corrupt entry, an
//    entry of another key); a source that does not compile.
//
// Each distinct expression costs a compile of about a second: the random test runs a few
// dozen expressions, each at many sizes (one kernel per expression).
#pragma GCC optimize("fp-contract=off")
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include "jit/cpu_jit.hpp"
#include "jit/jit.hpp"
#include "lowbit/fusion.hpp"
#include "lowbit/numeric.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using fusion::Expr;

/// Every call compiles (the default leaves calls under 2^20 elements to the interpreter)
/// and failures throw; restored when the test ends.
struct JitAlways {
  std::string old;
  bool had = false;
  explicit JitAlways(const char* value = "1") {
    if (const char* v = std::getenv("LOWBIT_FUSION_CPU_JIT")) {
      old = v;
      had = true;
    }
    setenv("LOWBIT_FUSION_CPU_JIT", value, 1);
  }
  ~JitAlways() {
    if (had) {
      setenv("LOWBIT_FUSION_CPU_JIT", old.c_str(), 1);
    } else {
      unsetenv("LOWBIT_FUSION_CPU_JIT");
    }
  }
};

/// The toolchain's reason to decline, or "" when the JIT runs here.
std::string jit_unavailable() { return fusion::cpu_toolchain().why_not; }

#define SKIP_WITHOUT_JIT()                                     \
  if (const std::string why = jit_unavailable(); !why.empty()) \
  GTEST_SKIP() << "SKIPPED: the CPU JIT does not run here: " << why

Preference only(const char* kernel) {
  Preference p;
  p.kernel = kernel;
  return p;
}

bool same_bits(const Tensor& a, const Tensor& b, int64_t i) {
  if (a.dtype() == Dtype::f32) {
    const float x = a.data_as<float>()[i], y = b.data_as<float>()[i];
    return std::bit_cast<uint32_t>(x) == std::bit_cast<uint32_t>(y) || (x != x && y != y);
  }
  const uint16_t x = a.data_as<uint16_t>()[i], y = b.data_as<uint16_t>()[i];
  const bool nx = (x & 0x7f80) == 0x7f80 && (x & 0x7f), ny = (y & 0x7f80) == 0x7f80 && (y & 0x7f);
  return x == y || (nx && ny);
}

/// Expressions of the ops the generator takes (casts to f32 / bf16 only).
Expr random_expr(std::mt19937_64& rng, const std::vector<Expr>& leaves, int depth) {
  if (depth == 0 || rng() % 6 == 0) {
    if (rng() % 5 == 0) {
      static const double consts[] = {0.0, 1.0, -2.0, 0.5, 1.25, -8.0, 8.0, 1e-3, 30.0, -0.0, 1e30};
      return Expr(consts[rng() % std::size(consts)]);
    }
    return leaves[rng() % leaves.size()];
  }
  auto sub = [&] { return random_expr(rng, leaves, depth - 1); };
  switch (rng() % 26) {
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
      return fusion::minimum(sub(), rng() % 2 ? sub() : Expr(std::nan("")));
    case 7:
      return fusion::maximum(sub(), rng() % 2 ? sub() : Expr(0.25));
    case 8:
      return fusion::clamp(sub(), rng() % 4 ? -8.0 : std::nan(""), 8.0);
    case 9:
      return fusion::clamp(sub(), sub(), sub());
    case 10:
      return fusion::where(sub() > sub(), sub(), sub());
    case 11:
      return fusion::lt(sub(), sub()) + fusion::ne(sub(), sub());
    case 12:
      return fusion::exp(sub());
    case 13:
      return fusion::log(sub());
    case 14:
      return fusion::sqrt(sub()) + fusion::rsqrt(sub());
    case 15:
      return fusion::tanh(sub());
    case 16:
      return fusion::sigmoid(sub());
    case 17:
      return fusion::relu(sub());
    case 18:
      return fusion::leaky_relu(sub(), 0.2);
    case 19:
      return fusion::gelu(sub());
    case 20:
      return fusion::gelu(sub(), "tanh");
    case 21:
      return fusion::silu(sub());
    case 22:
      return fusion::softplus(sub());
    case 23:
      return fusion::cast(sub(), Dtype::bf16);
    case 24:
      return fusion::silu(sub() * 1.25 + sub()) * sub() - sub() * 0.5;
    default:
      return fusion::ge(sub(), 0.0) * sub();
  }
}

TEST(FusionCpuJit, RandomExpressionsGiveTheInterpretersBits) {
  SKIP_WITHOUT_JIT();
  JitAlways always;
  static const int64_t sizes[] = {1, 7, 16, 17, 127, 128, 129, 4099, 70001};
  const int kCases = 28;
  int compiled = 0;
  int64_t elements = 0;
  for (int k = 0; k < kCases; ++k) {
    std::mt19937_64 rng(9100 + k);
    const int n_in = 1 + static_cast<int>(rng() % 3);
    // Every third case all bf16 (the generator's pairs of vectors), scalars aside.
    const bool all_bf16 = k % 3 == 0;
    std::vector<Dtype> in_dt;
    std::vector<bool> scalar;
    for (int i = 0; i < n_in; ++i) {
      scalar.push_back(rng() % 5 == 0);
      in_dt.push_back(scalar.back() ? (rng() % 2 ? Dtype::f16 : Dtype::f32)
                                    : (all_bf16 || rng() % 2 ? Dtype::bf16 : Dtype::f32));
    }
    const Dtype out_dt = all_bf16 || rng() % 2 ? Dtype::bf16 : Dtype::f32;
    const Dtype out1_dt = all_bf16 ? Dtype::bf16 : Dtype::f32;
    const int depth = 1 + static_cast<int>(rng() % 4);
    const uint64_t expr_seed = rng();
    bool taken = false;
    for (int64_t n : sizes) {
      std::vector<Tensor> ins;
      std::vector<Expr> leaves;
      for (int i = 0; i < n_in; ++i) {
        ins.push_back(Tensor::empty(scalar[i] ? Shape{} : Shape{n}, in_dt[i]));
        testing::fill_random(ins.back().data(), in_dt[i], numel(ins.back().shape()), rng);
        leaves.push_back(fusion::input(ins.back().view()));
      }
      std::mt19937_64 erng(expr_seed);  // the same expression at every size
      const Expr e = random_expr(erng, leaves, depth);
      const Expr e2 = fusion::silu(e) * leaves[0];
      Tensor jit0 = Tensor::empty({n}, out_dt), jit1 = Tensor::empty({n}, out1_dt);
      Tensor ref0 = Tensor::empty({n}, out_dt), ref1 = Tensor::empty({n}, out1_dt);
      for (Tensor* t : {&jit0, &jit1, &ref0, &ref1})
        std::memset(t->data(), testing::kPoison, static_cast<size_t>(t->nbytes()));
      const FusedDesc dj = FusedDesc::make({{jit0.view(), e}, {jit1.view(), e2}});
      const std::string why = fused_cpu_jit_kernel().decline(dj);
      const std::string what = fmt::format("case {} n {}: {} (declined: {})", k, n, e.str(), why);
      const FusedDesc dr = FusedDesc::make({{ref0.view(), e}, {ref1.view(), e2}});
      FusedPlan::select(dr, only("fused_cpu")).run(Stream{}, {}, dr.bound_args());
      if (!why.empty()) {
        // Only what the generator does not take (f16 inputs, f64 or integer arithmetic such
        // as sums of comparisons), never the layout of these contiguous operands, except
        // at one element (every operand a scalar: no vector axis).
        EXPECT_TRUE(why.find("strided") == std::string::npos || n == 1) << what;
        continue;
      }
      taken = true;
      omp_set_num_threads(n >= 4099 ? 2 : 1);  // two ranges: each thread its own part
      FusedPlan::select(dj, only("fused_cpu_jit")).run(Stream{}, {}, dj.bound_args());
      omp_set_num_threads(omp_get_num_procs());
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_TRUE(same_bits(jit0, ref0, i)) << what << " element " << i;
        ASSERT_TRUE(same_bits(jit1, ref1, i)) << what << " second output, element " << i;
      }
      elements += 2 * n;
    }
    compiled += taken;
  }
  std::printf("%d of %d random expressions compiled, %lld elements identical\n", compiled, kCases,
              static_cast<long long>(elements));
  EXPECT_GE(compiled, kCases / 2);
}

/// Fast math on bf16 operands takes pairs of vectors (even and odd elements apart, put back
/// together by vcvtne2ps2bf16 and a word permutation): a chain like chain8 against the exact
/// interpreter, within one bf16 step, at sizes around the pair (32 elements) and the unrolled
/// iteration.
TEST(FusionCpuJit, FastMathPairsOfBf16VectorsKeepTheirOrder) {
  SKIP_WITHOUT_JIT();
  JitAlways always;
  std::mt19937_64 rng(77);
  // Positive operands and a sum: no cancellation to magnify fast math's error (6.5e-6 at
  // most per exp) past one bf16 step.
  std::uniform_real_distribution<float> dist(0.25f, 6.0f);
  for (int64_t n : {2, 31, 32, 33, 255, 256, 257, 4099, 70001}) {
    Tensor a = Tensor::empty({n}, Dtype::bf16), b = Tensor::empty({n}, Dtype::bf16);
    for (int64_t i = 0; i < n; ++i) {
      a.data_as<uint16_t>()[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(dist(rng)) >> 16);
      b.data_as<uint16_t>()[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(dist(rng)) >> 16);
    }
    const Expr ea = fusion::input(a.view()), eb = fusion::input(b.view());
    const Expr e = fusion::clamp(fusion::silu(ea * 1.25 + eb) * eb + ea * 0.5, -8.0, 8.0);
    Tensor fast = Tensor::empty({n}, Dtype::bf16), exact = Tensor::empty({n}, Dtype::bf16);
    std::memset(fast.data(), testing::kPoison, static_cast<size_t>(fast.nbytes()));
    FusedDesc df = FusedDesc::make({{fast.view(), e}});
    df.fast_math = true;
    FusedPlan::select(df, only("fused_cpu_jit")).run(Stream{}, {}, df.bound_args());
    const FusedDesc dr = FusedDesc::make({{exact.view(), e}});
    FusedPlan::select(dr, only("fused_cpu")).run(Stream{}, {}, dr.bound_args());
    for (int64_t i = 0; i < n; ++i) {
      const int x = fast.data_as<uint16_t>()[i], y = exact.data_as<uint16_t>()[i];
      // Same sign, codes at most one apart (+0 and -0 aside).
      const bool close = ((x ^ y) & 0x8000) == 0 ? std::abs(x - y) <= 1 : ((x | y) & 0x7fff) == 0;
      ASSERT_TRUE(close) << "n " << n << " element " << i << ": fast " << std::hex << x << " exact "
                         << y;
    }
  }
}

TEST(FusionCpuJit, BoundsThatAreNaNPropagateAsInTheInterpreter) {
  SKIP_WITHOUT_JIT();
  JitAlways always;
  const int64_t n = 1000;
  std::mt19937_64 rng(4);
  Tensor x = Tensor::empty({n}, Dtype::f32);
  testing::fill_random(x.data(), Dtype::f32, n, rng);  // NaN, infinities, subnormals included
  const Expr ex = fusion::input(x.view());
  const double nan = std::nan("");
  const Expr cases[] = {fusion::clamp(ex, nan, 8.0),         fusion::clamp(ex, -8.0, nan),
                        fusion::clamp(ex, -8.0, 8.0),        fusion::minimum(ex, nan),
                        fusion::maximum(ex, Expr(nan)),      fusion::maximum(ex, 0.5),
                        fusion::minimum(Expr(nan) + ex, 1.0)};
  for (const Expr& e : cases) {
    Tensor got = Tensor::empty({n}, Dtype::f32), want = Tensor::empty({n}, Dtype::f32);
    std::memset(got.data(), testing::kPoison, static_cast<size_t>(got.nbytes()));
    const FusedDesc dj = FusedDesc::make({{got.view(), e}});
    FusedPlan::select(dj, only("fused_cpu_jit")).run(Stream{}, {}, dj.bound_args());
    const FusedDesc dr = FusedDesc::make({{want.view(), e}});
    FusedPlan::select(dr, only("fused_cpu")).run(Stream{}, {}, dr.bound_args());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_TRUE(same_bits(got, want, i))
          << e.str() << " element " << i << " x " << x.data_as<float>()[i];
  }
}

/// Runs y = f(x) through the fast-math kernel and the exact interpreter over `xs`.
void fast_vs_exact(const char* name, Expr (*f)(const Expr&), const std::vector<float>& xs,
                   double rel, bool finite_clamp) {
  const int64_t n = static_cast<int64_t>(xs.size());
  Tensor x = Tensor::empty({n}, Dtype::f32), fast = Tensor::empty({n}, Dtype::f32),
         exact = Tensor::empty({n}, Dtype::f32);
  std::memcpy(x.data(), xs.data(), xs.size() * 4);
  FusedDesc df = FusedDesc::make({{fast.view(), f(fusion::input(x.view()))}});
  df.fast_math = true;
  const FusedPlan pf = FusedPlan::select(df, only("fused_cpu_jit"));
  EXPECT_FALSE(pf.precision().bit_stable);
  pf.run(Stream{}, {}, df.bound_args());
  const FusedDesc de = FusedDesc::make({{exact.view(), f(fusion::input(x.view()))}});
  FusedPlan::select(de, only("fused_cpu")).run(Stream{}, {}, de.bound_args());
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float a = fast.data_as<float>()[i], b = exact.data_as<float>()[i];
    if (std::isnan(b) || std::isinf(b)) {
      // exp's overflow and specials: the same class of value (NaN, the same infinity).
      if (finite_clamp && std::isinf(b)) continue;
      ASSERT_TRUE((std::isnan(a) && std::isnan(b)) || a == b)
          << name << "(" << xs[i] << "): " << a << " vs " << b;
      continue;
    }
    const double err =
        std::fabs(static_cast<double>(a) - b) / std::max(std::fabs(static_cast<double>(b)), 1e-30);
    if (std::fabs(b) < 1e-30 && std::fabs(a) < 1e-30) continue;  // underflow: both tiny
    worst = std::max(worst, err);
    ASSERT_LE(err, rel) << name << "(" << xs[i] << "): fast " << a << " exact " << b;
  }
  std::printf("%s fast math: worst relative error %.2e over %lld values\n", name, worst,
              static_cast<long long>(n));
}

TEST(FusionCpuJit, FastMathStaysWithinItsBounds) {
  SKIP_WITHOUT_JIT();
  JitAlways always;
  std::vector<float> xs;
  for (float v = -110.0f; v <= 110.0f; v += 0.00371f) xs.push_back(v);
  for (float v : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 88.0f, 88.7f, 89.0f, -87.0f, -103.0f,
                  1e-40f, -1e-40f, 3e38f, -3e38f})
    xs.push_back(v);
  fast_vs_exact(
      "exp", [](const Expr& x) { return fusion::exp(x); }, xs, 7e-6, false);
  fast_vs_exact(
      "sigmoid", [](const Expr& x) { return fusion::sigmoid(x); }, xs, 7e-6, false);
  fast_vs_exact(
      "silu", [](const Expr& x) { return fusion::silu(x); }, xs, 7e-6, false);
}

TEST(FusionCpuJit, DeclinesWhatTheGeneratorDoesNotTake) {
  SKIP_WITHOUT_JIT();
  const int64_t n = 4096;
  Tensor a = Tensor::empty({n}, Dtype::f32), y = Tensor::empty({n}, Dtype::f32);
  Tensor h = Tensor::empty({n}, Dtype::f16), wide = Tensor::empty({2, n}, Dtype::f32);
  Tensor y2 = Tensor::empty({2, n}, Dtype::f32);
  auto why = [&](const std::vector<FusedOutput>& outs) {
    return fused_cpu_jit_kernel().decline(FusedDesc::make(outs));
  };
  {
    JitAlways always;
    EXPECT_EQ(why({{y.view(), fusion::exp(fusion::input(a.view()))}}), "");
    EXPECT_NE(why({{y.view(), fusion::input(h.view()) * 2.0}}).find("f16"), std::string::npos);
    EXPECT_NE(why({{y.view(), fusion::pow(fusion::input(a.view()), 0.3)}}).find("pow"),
              std::string::npos)
        << why({{y.view(), fusion::pow(fusion::input(a.view()), 0.3)}});
    // A row broadcast along the other axis: a strided operand.
    EXPECT_NE(
        why({{y2.view(), fusion::input(wide.view()) + fusion::input(a.view())}}).find("strided"),
        std::string::npos);
  }
  {
    JitAlways automatic("");  // the default: small calls stay with the interpreter
    unsetenv("LOWBIT_FUSION_CPU_JIT");
    EXPECT_NE(why({{y.view(), fusion::exp(fusion::input(a.view()))}}).find("fewer than"),
              std::string::npos);
    const FusedDesc d = FusedDesc::make({{y.view(), fusion::exp(fusion::input(a.view()))}});
    EXPECT_EQ(FusedPlan::select(d).sku().kernel, "fused_cpu_tiled");
  }
  {
    JitAlways off("0");
    EXPECT_NE(
        why({{y.view(), fusion::exp(fusion::input(a.view()))}}).find("LOWBIT_FUSION_CPU_JIT=0"),
        std::string::npos);
  }
}

/// generate_cpu's source for y = x * 3 + 1 (f32): a small kernel for the cache tests.
std::string small_source(const std::string& key, Tensor& x, Tensor& y) {
  const FusedDesc d = FusedDesc::make({{y.view(), fusion::input(x.view()) * 3.0 + 1.0}});
  const fusion::Layout& L = d.state->get_layout(d);
  return fusion::generate_cpu(*d.program, fusion::uniform_steps(*d.program, L), false, key);
}

TEST(FusionCpuJit, TheDiskCacheReloadsAndReplacesBadEntries) {
  SKIP_WITHOUT_JIT();
  Tensor x = Tensor::empty({8}, Dtype::f32), y = Tensor::empty({8}, Dtype::f32);
  const std::string key = "test-key " + std::to_string(::getpid());
  const std::string src = small_source(key, x, y);
  const std::string path = fusion::cpu_jit_entry_path(key, src);
  if (path.empty()) GTEST_SKIP() << "SKIPPED: no disk cache here (LOWBIT_CACHE_DIR)";
  std::remove(path.c_str());
  fusion::cpu_jit_clear_memory();
  EXPECT_EQ(fusion::cpu_compile(key, src, false)->origin, "compiled");
  EXPECT_EQ(fusion::cpu_compile(key, src, false)->origin, "compiled");  // the table's entry
  fusion::cpu_jit_clear_memory();
  EXPECT_EQ(fusion::cpu_compile(key, src, false)->origin, "disk");
  // A corrupt entry (not a shared object) is compiled again (a key this process has not
  // loaded: the state a new process finds).
  const std::string bad_key = key + " corrupt", bad_src = small_source(bad_key, x, y);
  const std::string bad_path = fusion::cpu_jit_entry_path(bad_key, bad_src);
  {
    std::ofstream f(bad_path, std::ios::binary | std::ios::trunc);
    f << "not an ELF file";
  }
  EXPECT_EQ(fusion::cpu_compile(bad_key, bad_src, false)->origin, "compiled");
  // An entry holding another key (a copy of another kernel) is compiled again.
  const std::string moved_key = key + " moved", moved_src = small_source(moved_key, x, y);
  const std::string moved_path = fusion::cpu_jit_entry_path(moved_key, moved_src);
  {
    std::ifstream in(path, std::ios::binary);
    std::ofstream out(moved_path, std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
  }
  const auto c = fusion::cpu_compile(moved_key, moved_src, false);
  EXPECT_EQ(c->origin, "compiled");
  fusion::cpu_jit_clear_memory();
  EXPECT_EQ(fusion::cpu_compile(moved_key, moved_src, false)->origin, "disk");  // now its own
  // And the kernel computes: y = x * 3 + 1.
  for (int i = 0; i < 8; ++i) x.data_as<float>()[i] = static_cast<float>(i);
  std::vector<double> values;
  const FusedDesc d = FusedDesc::make({{y.view(), fusion::input(x.view()) * 3.0 + 1.0}});
  const auto uniform = fusion::uniform_steps(*d.program, d.state->get_layout(d));
  fusion::uniform_values(*d.program, d.bound_args(), uniform, values);
  std::vector<float> uf(values.size());
  for (size_t i = 0; i < values.size(); ++i) std::memcpy(&uf[i], &values[i], 4);
  const void* in[] = {x.data()};
  void* out[] = {y.data()};
  c->fn(in, out, uf.data(), 0, 8, 0);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(y.data_as<float>()[i], 3.0f * i + 1.0f);
  for (const std::string& f : {path, bad_path, moved_path}) std::remove(f.c_str());
}

TEST(FusionCpuJit, ASourceThatDoesNotCompileIsAClearError) {
  SKIP_WITHOUT_JIT();
  try {
    fusion::cpu_compile("broken " + std::to_string(::getpid()), "this is not C++;\n", false);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    EXPECT_NE(std::string(e.what()).find("failed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
