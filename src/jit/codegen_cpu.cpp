// Program -> C++ for the CPU JIT: the whole expression as one loop over Highway vectors,
// four vectors per iteration, every step's value in registers. Each op is the expression
// the interpreter's vector steps compute (cpu_ops_simd-inl.h's LB_FOR_EACH_OP, on
// cpu_math_simd-inl.h's formulas: both given to the compiler as text), so an exact kernel
// gives the interpreter's bits, and so fused_cuda's. What the interpreter pays and this
// loop does not: a dispatch per op and block of vectors, and tiles in memory between ops
// that do not chain (docs/jit.md, "The CPU JIT").
//
// The generator takes the programs of the interpreter's vector path over contiguous
// operands: f32 and bf16 inputs and outputs (scalar inputs of any dtype, through the
// uniform values), f32 arithmetic of the vectorised ops and casts to f32 / bf16. Others go
// to the interpreter (cpu_codegen_unsupported says why).
#include <fmt/format.h>

#include <algorithm>

#include "jit/cpu_jit.hpp"
#include "jit/cpu_jit_headers.hpp"
#include "jit/cpu_ops_simd-inl.h"  // LB_FOR_EACH_OP (its op names only)

namespace lowbit::fusion {
namespace {

/// The ops LB_FOR_EACH_OP defines (their generated functions are op_<name>): the list
/// itself, so the generator takes exactly the ops the generated code can call.
bool vector_op(Op op) {
  switch (op) {
#define LB_CASE(name, k, expr) case Op::name:
    LB_FOR_EACH_OP(LB_CASE)
#undef LB_CASE
    return true;
    default:
      return false;
  }
}

bool vector_dtype(Dtype d) { return d == Dtype::f32 || d == Dtype::bf16; }

/// Fast-math replacements (FusedDesc::fast_math), on AVX-512 and AVX2 (elsewhere the exact
/// formulas serve): e^x as 2^(x log2 e) with a degree-4 polynomial on [-1/2, 1/2], scaled
/// by vscalefps (AVX2: two exact power-of-two factors), sigmoid and silu by one division,
/// and bf16 outputs by vcvtneps2bf16 where the CPU has AVX512-BF16 (which flushes subnormal
/// values to zero). Errors: docs/jit.md.
constexpr const char* kFastMath = R"(
#if HWY_TARGET <= HWY_AVX2
#define LB_FAST 1
/// 2^y for y clamped to [-150, 128] (NaN passes): 0 below, infinity above, as e^x
/// underflows and overflows. 2^f on [-0.5, 0.5] by a degree-4 minimax polynomial (relative
/// error 2.9e-6 in f32; with the rounding of x log2 e, e^x within 6.5e-6 for |x| <= 88,
/// tighter than CUDA's __expf there), scaled by 2^round(y): vscalefps on AVX-512; on AVX2
/// two exact power-of-two factors 2^k1 2^k2 (k1 = k >> 1, each normal for k in [-150, 128]),
/// so that the product rounds once there too. (Degree 5, 1.8e-7, took 7% more time for
/// chain8; f = y - floor(y) by vreduceps with scalef by y itself, 1-2% more.)
HWY_INLINE V fast_exp2(V y) {
  y = gt_select(F(-150.0f), lt_select(F(128.0f), y));
  const V k = hn::Round(y);
  const V f = y - k;
  V p = F(9.582830106e-3f);
  p = hn::MulAdd(p, f, F(5.590639966e-2f));
  p = hn::MulAdd(p, f, F(2.402409885e-1f));
  p = hn::MulAdd(p, f, F(6.931241964e-1f));
  p = hn::MulAdd(p, f, F(1.0f));
#if HWY_TARGET <= HWY_AVX3
  return V{_mm512_scalef_ps(p.raw, k.raw)};
#else
  // A NaN y gives a NaN p (and garbage scales): the product stays NaN.
  const VI ki{_mm256_cvtps_epi32(k.raw)};  // k is an integer: no rounding, no fix-up
  const VI k1 = hn::ShiftRight<1>(ki);
  return (p * from_bits(hn::ShiftLeft<23>(k1 + I(127)))) *
         from_bits(hn::ShiftLeft<23>(ki - k1 + I(127)));
#endif
}
/// 1 / (1 + e^-x) and x / (1 + e^-x) by one division: 2^y for y >= 128 is infinity, where
/// the quotient is 0 (or NaN for silu(-inf), as -inf / inf is in the exact form); NaN
/// passes. (A division per vector costs less on Zen 4 than the rcp14, Newton step, range mask
/// and multiply it replaced: chain8 in cache 0.281 against 0.315 ns per element.)
HWY_INLINE V fast_one_plus_exp_neg(V x) {
  return fast_exp2(x * F(-1.44269504088896341f)) + F(1.0f);
}
HWY_INLINE V fast_op_sigmoid(V x) { return F(1.0f) / fast_one_plus_exp_neg(x); }
HWY_INLINE V fast_op_silu(V x) { return x / fast_one_plus_exp_neg(x); }
HWY_INLINE V fast_op_exp(V x) { return fast_exp2(x * F(1.44269504088896341f)); }
#endif
)";

/// bf16 stores through AVX512-BF16's conversions where the CPU has them (the JIT compiles
/// for the CPU it runs on). vcvtneps2bf16 rounds to nearest even as lb_bf16_code does, except
/// for subnormal inputs (flushed to zero) and NaN (its payload kept): exact kernels redo a
/// vector that holds one of those (rare) with lb_bf16_code; fast math keeps the flush.
constexpr const char* kBf16Cvt = R"(
#if HWY_TARGET <= HWY_AVX3 && defined(__AVX512BF16__)
#define LB_CVT_BF16 1
HWY_INLINE bool lb_cvt_differs(V v) {
  return _mm512_fpclass_ps_mask(v.raw, 0xA1) != 0;  // QNaN, SNaN, subnormal
}
/// vpermw's order that interleaves two vectors' bf16 codes: word 2k from word k, 2k + 1
/// from word 16 + k (vcvtne2ps2bf16 puts its second operand's codes first).
HWY_INLINE __m512i lb_pair_order() {
  alignas(64) static constexpr uint16_t kOrder[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                      21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                      11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_load_si512(kOrder);
}
#endif
using DH = hn::Rebind<uint16_t, D>;
/// A vector's N bf16 codes (kFast: subnormals may flush).
template <bool kFast>
HWY_INLINE hn::Vec<DH> lb_bf16_codes(V v) {
#if defined(LB_CVT_BF16)
  if (kFast || HWY_LIKELY(!lb_cvt_differs(v)))
    return hn::Vec<DH>{(__m256i)_mm512_cvtneps_pbh(v.raw)};
#endif
  return hn::DemoteTo(DH(), hn::BitCast(DI(), lb_bf16_code(v)));
}
/// Two vectors' codes as N words, word k holding lo's lane k (low half) and hi's (high).
template <bool kFast>
HWY_INLINE VU lb_bf16_pair_codes(V lo, V hi) {
#if defined(LB_CVT_BF16)
  // vcvtne2ps2bf16 puts lo's codes in words 0..N-1 and hi's in N..2N-1: one vpermw
  // interleaves them.
  if (kFast || HWY_LIKELY(!lb_cvt_differs(lo) && !lb_cvt_differs(hi)))
    return VU{_mm512_permutexvar_epi16(lb_pair_order(),
                                       (__m512i)_mm512_cvtne2ps_pbh(hi.raw, lo.raw))};
#endif
  return hn::Or(lb_bf16_code(lo), hn::ShiftLeft<16>(lb_bf16_code(hi)));
}
)";

std::string ident(const char* kind, size_t i) { return fmt::format("{}{}", kind, i); }

}  // namespace

const HeaderSet& cpu_jit_headers() {
  static const HeaderSet set = make_header_set({"cpu_math_simd-inl.h", "cpu_ops_simd-inl.h"},
                                               {kCpuMathSimdText, kCpuOpsSimdText});
  return set;
}

std::string cpu_codegen_unsupported(const Program& p, const Layout& L) {
  if (p.quantized_output >= 0) return "the quantize epilogue runs in the interpreter";
  if (!L.vec_ok) return "an operand is strided, broadcast along an axis, or packed";
  const std::vector<uint8_t> uniform = uniform_steps(p, L);
  for (size_t i = 0; i < p.code.size(); ++i) {
    const Instr& in = p.code[i];
    if (uniform[i]) continue;
    if (in.op == Op::input) {
      if (!vector_dtype(in.dtype))
        return fmt::format("input {} is {} (the generator reads f32 and bf16)", in.slot,
                           dtype_name(in.dtype));
      continue;
    }
    if (in.num != Num::f32 || in.arg_num != Num::f32)
      return fmt::format("step {} ({}) computes in f64", i, op_name(in.op));
    if (in.op == Op::cast) {
      if (!vector_dtype(in.dtype))
        return fmt::format("step {} casts to {}", i, dtype_name(in.dtype));
      continue;
    }
    if (!vector_op(in.op)) return fmt::format("step {} ({}) has no vector form", i, op_name(in.op));
    for (int x : {in.a, in.b, in.c})
      if (x >= 0 && uniform[static_cast<size_t>(x)] &&
          p.code[static_cast<size_t>(x)].num != Num::f32)
        return fmt::format("step {} reads an f64 uniform value", i);
  }
  for (size_t o = 0; o < p.outputs.size(); ++o) {
    if (!vector_dtype(p.output_dtypes[o]))
      return fmt::format("output {} is {} (the generator writes f32 and bf16)", o,
                         dtype_name(p.output_dtypes[o]));
    if (p.code[static_cast<size_t>(p.outputs[o])].num != Num::f32)
      return fmt::format("output {} is an f64 value", o);
  }
  return {};
}

std::string generate_cpu(const Program& p, const std::vector<uint8_t>& uniform, bool fast,
                         const std::string& key) {
  const size_t ni = p.input_dtypes.size(), no = p.outputs.size(), ns = p.code.size();
  std::string s;
  s += "// lowbit CPU fusion kernel, generated by codegen_cpu.cpp.\n";
  s += "#include <hwy/highway.h>\n#include <immintrin.h>\n#include <cstdint>\n#include <cstring>\n";
  s += "#include \"cpu_math_simd-inl.h\"\n#include \"cpu_ops_simd-inl.h\"\n";
  s += "HWY_BEFORE_NAMESPACE();\nnamespace lowbit {\nnamespace HWY_NAMESPACE {\nnamespace "
       "fusion_simd {\n";
  s += "#if !(HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2)\n";
  s += "#error \"lowbit's CPU JIT needs x86 with AVX2 and FMA\"\n#endif\n";
  s += "#define LB_DEF(op, k, expr) \\\n  HWY_INLINE V op_##op(V x, V y, V z) { (void)y; (void)z; "
       "return expr; }\n";
  s += "LB_FOR_EACH_OP(LB_DEF)\n#undef LB_DEF\n";
  s += kBf16Cvt;
  if (fast) s += kFastMath;
  // Operand pointers.
  s += "struct Ptrs {\n";
  for (size_t k = 0; k < ni; ++k)
    s += fmt::format("  const {}* in{};\n", p.input_dtypes[k] == Dtype::bf16 ? "uint16_t" : "float",
                     k);
  for (size_t o = 0; o < no; ++o)
    s += fmt::format("  {}* out{};\n", p.output_dtypes[o] == Dtype::bf16 ? "uint16_t" : "float", o);
  s += "};\n";
  const size_t niv = std::max<size_t>(ni, 1), nov = std::max<size_t>(no, 1);
  // The inputs read per element (a uniform one comes through u[]: it may be one value).
  std::vector<int> loaded;
  for (size_t i = 0; i < ns; ++i)
    if (p.code[i].op == Op::input && !uniform[i]) loaded.push_back(p.code[i].slot);
  std::sort(loaded.begin(), loaded.end());
  loaded.erase(std::unique(loaded.begin(), loaded.end()), loaded.end());
  // One vector of every such input at element j.
  s += "HWY_INLINE void load(const Ptrs& p, int64_t j, V* x) {\n  (void)p; (void)j; (void)x;\n";
  for (int k : loaded)
    s += p.input_dtypes[static_cast<size_t>(k)] == Dtype::bf16
             ? fmt::format("  x[{0}] = load_bf16(p.in{0} + j);\n", k)
             : fmt::format("  x[{0}] = hn::LoadU(D(), p.in{0} + j);\n", k);
  s += "}\n";
  // Every output from one vector of every input.
  // kPlain: every bound the plain forms below test is known not to be NaN (the common case,
  // decided once per call), so that the unrolled loop has no per-vector branch.
  s += "template <bool kPlain>\n";
  s += "HWY_INLINE void body(const V* x, const V* u, const bool* pl, V* r) {\n";
  std::vector<int> plain_flags;
  s += "  (void)x; (void)u; (void)pl;\n";
  auto val = [&](int x) {
    return uniform[static_cast<size_t>(x)] ? fmt::format("u[{}]", x)
                                           : ident("t", static_cast<size_t>(x));
  };
  for (size_t i = 0; i < ns; ++i) {
    const Instr& in = p.code[i];
    if (uniform[i]) continue;
    const std::string t = ident("t", i);
    if (in.op == Op::input) {
      s += fmt::format("  const V {} = x[{}];\n", t, in.slot);
      continue;
    }
    if (in.op == Op::cast) {
      s += in.dtype == Dtype::bf16
               ? fmt::format("  const V {} = lb_bf16_round({});\n", t, val(in.a))
               : fmt::format("  const V {} = {};\n", t, val(in.a));
      continue;
    }
    const std::string a = val(in.a), b = in.b >= 0 ? val(in.b) : a, c = in.c >= 0 ? val(in.c) : a;
    const std::string name(op_name(in.op));
    // Bounds that are one value, not NaN (known per call): x86's minps / maxps alone give
    // jit_math's bits (the interpreter's `plain` operands, cpu_eval_simd.cpp's apply).
    auto plain = [&](int x) { return x >= 0 && uniform[static_cast<size_t>(x)]; };
    if (in.op == Op::clamp && plain(in.b) && plain(in.c)) {
      s += fmt::format(
          "  const V {0} = (kPlain || (pl[{3}] && pl[{4}])) ? lt_select({2}, gt_select({1}, {5})) "
          ": op_clamp({5}, {1}, {2});\n",
          t, b, c, in.b, in.c, a);
      plain_flags.push_back(in.b);
      plain_flags.push_back(in.c);
      continue;
    }
    if ((in.op == Op::minimum || in.op == Op::maximum) && plain(in.b)) {
      s += fmt::format(
          "  const V {0} = (kPlain || pl[{1}]) ? {2}({3}, {4}) : op_{5}({4}, {3}, {4});\n", t, in.b,
          in.op == Op::minimum ? "lt_select" : "gt_select", b, a, name);
      plain_flags.push_back(in.b);
      continue;
    }
    if (fast && (in.op == Op::exp || in.op == Op::sigmoid || in.op == Op::silu)) {
      s += fmt::format(
          "#ifdef LB_FAST\n  const V {0} = fast_op_{1}({2});\n#else\n"
          "  const V {0} = op_{1}({2}, {3}, {4});\n#endif\n",
          t, name, a, b, c);
    } else {
      s += fmt::format("  const V {} = op_{}({}, {}, {});\n", t, name, a, b, c);
    }
  }
  for (size_t o = 0; o < no; ++o) s += fmt::format("  r[{}] = {};\n", o, val(p.outputs[o]));
  s += "}\n";
  // Stores of every output at element j.
  const char* fast_arg = fast ? "true" : "false";
  s += "HWY_INLINE void store(const Ptrs& p, int64_t j, const V* r, bool stream) {\n";
  s += "  (void)stream;\n";
  for (size_t o = 0; o < no; ++o) {
    if (p.output_dtypes[o] == Dtype::bf16)
      s += fmt::format(
          "  {{ const auto c = lb_bf16_codes<{1}>(r[{0}]);\n"
          "    if (stream) hn::Stream(c, DH(), p.out{0} + j); else hn::StoreU(c, DH(), p.out{0} + "
          "j); }}\n",
          o, fast_arg);
    else
      s += fmt::format(
          "  if (stream) hn::Stream(r[{0}], D(), p.out{0} + j); else hn::StoreU(r[{0}], D(), "
          "p.out{0} + j);\n",
          o);
  }
  s += "}\n";
  // All-bf16 programs take pairs of vectors: 2N consecutive bf16 values loaded as N 32-bit
  // words, whose low halves (shifted up) are the even elements' f32 values and whose high
  // halves (masked) the odd ones'; outputs go back the same way. That is two instructions
  // per 2N elements of an input instead of four, and the element-wise steps do not care
  // which elements share a vector. (Zen 4, chain8 in cache: 8% less time with fast math.)
  bool pairs = no > 0;
  for (int k : loaded) pairs = pairs && p.input_dtypes[static_cast<size_t>(k)] == Dtype::bf16;
  for (size_t o = 0; o < no; ++o) pairs = pairs && p.output_dtypes[o] == Dtype::bf16;
  if (pairs) {
    s += "#define LB_PAIRS 1\n";
    s += "HWY_INLINE void load_pair(const Ptrs& p, int64_t j, V* lo, V* hi) {\n";
    s += "  (void)p; (void)j; (void)lo; (void)hi;\n  const VU m = hn::Set(DU(), 0xffff0000u);\n";
    for (int k : loaded)
      s += fmt::format(
          "  {{ const VU w = hn::LoadU(DU(), reinterpret_cast<const uint32_t*>(p.in{0} + j));\n"
          "    lo[{0}] = from_bits(hn::ShiftLeft<16>(w));\n    hi[{0}] = from_bits(hn::And(w, m)); "
          "}}\n",
          k);
    s += "}\n";
    s += "HWY_INLINE void store_pair(const Ptrs& p, int64_t j, const V* lo, const V* hi, bool "
         "stream) {\n";
    for (size_t o = 0; o < no; ++o)
      s += fmt::format(
          "  {{ const VU c = lb_bf16_pair_codes<{1}>(lo[{0}], hi[{0}]);\n"
          "    uint32_t* q = reinterpret_cast<uint32_t*>(p.out{0} + j);\n"
          "    if (stream) hn::Stream(c, DU(), q); else hn::StoreU(c, DU(), q); }}\n",
          o, fast_arg);
    s += "}\n";
  }
  // The main loop, U vectors per iteration, fully unrolled.
  s += "template <bool kPlain>\n";
  s += "HWY_INLINE int64_t main_loop(const Ptrs& p, const V* u, const bool* pl, int64_t i, "
       "int64_t e, bool st) {\n";
  s += "  constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(D()));\n";
  // 8 vectors per iteration, unrolled by the pragmas: independent chains in flight, no
  // stack round trip between the steps and the stores (without the pragmas GCC kept a loop
  // over the 8 and the loop's 8 results in memory: chain8 in cache 0.42 -> 0.36 ns per
  // element with them, together with the kPlain versions).
  s += "  constexpr int U = 8;\n";
  s += "  for (; i + U * N <= e; i += U * N) {\n";
  s += fmt::format("    V r[U][{}];\n", nov);
  if (pairs) {
    s += "#pragma GCC unroll 16\n";
    s += fmt::format(
        "    for (int v = 0; v < U / 2; ++v) {{\n      V lo[{0}], hi[{0}];\n"
        "      load_pair(p, i + 2 * v * N, lo, hi);\n"
        "      body<kPlain>(lo, u, pl, r[2 * v]);\n      body<kPlain>(hi, u, pl, r[2 * v + 1]);\n"
        "    }}\n",
        niv);
    s += "#pragma GCC unroll 16\n";
    s += "    for (int v = 0; v < U / 2; ++v) store_pair(p, i + 2 * v * N, r[2 * v], r[2 * v + 1], "
         "st);\n";
  } else {
    s += "#pragma GCC unroll 16\n";
    s += fmt::format(
        "    for (int v = 0; v < U; ++v) {{ V x[{}]; load(p, i + v * N, x); body<kPlain>(x, u, pl, "
        "r[v]); }}\n",
        niv);
    s += "#pragma GCC unroll 16\n";
    s += "    for (int v = 0; v < U; ++v) store(p, i + v * N, r[v], st);\n";
  }
  s += "  }\n  return i;\n}\n";
  s += "void run(const void* const* in, void* const* out, const float* uf, int64_t b, int64_t e, "
       "int stream) {\n";
  s += "  const D d;\n  constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(D()));\n";
  s += "  Ptrs p{";
  for (size_t k = 0; k < ni; ++k)
    s += fmt::format("static_cast<const {}*>(in[{}]), ",
                     p.input_dtypes[k] == Dtype::bf16 ? "uint16_t" : "float", k);
  for (size_t o = 0; o < no; ++o)
    s += fmt::format("static_cast<{}*>(out[{}]), ",
                     p.output_dtypes[o] == Dtype::bf16 ? "uint16_t" : "float", o);
  s += "};\n  (void)in;\n";
  s += fmt::format("  V u[{}];\n", std::max<size_t>(ns, 1));
  s += fmt::format("  bool pl[{}];  // uniform values that are not NaN\n", std::max<size_t>(ns, 1));
  s += fmt::format(
      "  for (int k = 0; k < {}; ++k) {{ u[k] = hn::Set(d, uf[k]); pl[k] = uf[k] == uf[k]; }}\n",
      ns);
  // Non-temporal stores need every output's vectors aligned from b on.
  s += "  bool st = stream != 0;\n";
  for (size_t o = 0; o < no; ++o)
    s += fmt::format("  st = st && reinterpret_cast<uintptr_t>(p.out{0} + b) % 64 == 0;\n", o);
  std::string all_plain = "true";
  for (int k : plain_flags) all_plain += fmt::format(" && pl[{}]", k);
  s += "  const bool all_plain = " + all_plain + ";\n";
  s += "  int64_t i = all_plain ? main_loop<true>(p, u, pl, b, e, st) : main_loop<false>(p, u, pl, "
       "b, e, st);\n";
  s += "  for (; i < e; i += N) {\n";
  s += fmt::format("    V r[{}];\n", nov);
  s += "    V x[" + std::to_string(niv) +
       "];\n    if (e - i >= N) {\n      load(p, i, x);\n      body<false>(x, u, pl, r);\n      "
       "store(p, i, r, false);\n      "
       "continue;\n    }\n";
  s += "    // The last partial vector: through zero-padded copies, nothing past e touched.\n";
  s += "    const size_t rest = static_cast<size_t>(e - i);\n";
  s += "    Ptrs q = p;\n";
  // (Only the inputs read per element: a uniform one may hold a single value.)
  for (int k : loaded) {
    const bool h = p.input_dtypes[static_cast<size_t>(k)] == Dtype::bf16;
    s += fmt::format("    alignas(64) {0} bi{1}[N] = {{}};\n", h ? "uint16_t" : "float", k);
    s += fmt::format("    if (p.in{0}) std::memcpy(bi{0}, p.in{0} + i, rest * {1});\n", k,
                     h ? 2 : 4);
    s += fmt::format("    q.in{0} = bi{0};\n", k);
  }
  for (size_t o = 0; o < no; ++o) {
    const bool h = p.output_dtypes[o] == Dtype::bf16;
    s += fmt::format("    alignas(64) {0} bo{1}[N];\n    q.out{1} = bo{1};\n",
                     h ? "uint16_t" : "float", o);
  }
  s += "    load(q, 0, x);\n    body<false>(x, u, pl, r);\n    store(q, 0, r, false);\n";
  for (size_t o = 0; o < no; ++o)
    s += fmt::format("    std::memcpy(p.out{0} + i, bo{0}, rest * {1});\n", o,
                     p.output_dtypes[o] == Dtype::bf16 ? 2 : 4);
  s += "  }\n  if (st) _mm_sfence();  // order the non-temporal stores before returning\n}\n";
  s += "}  // namespace fusion_simd\n}  // namespace HWY_NAMESPACE\n}  // namespace "
       "lowbit\nHWY_AFTER_NAMESPACE();\n";
  s += "extern \"C\" {\n";
  s += "__attribute__((visibility(\"default\"))) extern const char lowbit_fused_cpu_key[];\n";
  s += "const char lowbit_fused_cpu_key[] = R\"lb_key(" + key + ")lb_key\";\n";
  s += "__attribute__((visibility(\"default\"))) void lowbit_fused_cpu(const void* const* in, "
       "void* const* out, const float* u, int64_t b, int64_t e, int stream) {\n";
  s += "  lowbit::HWY_NAMESPACE::fusion_simd::run(in, out, u, b, e, stream);\n}\n}\n";
  return s;
}

}  // namespace lowbit::fusion
