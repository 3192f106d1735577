// The vector steps of the CPU fusion kernel: each f32 step of a Program as one tight loop
// of Highway vectors over a tile, dispatched at run time (AVX-512 or AVX2; the pointer is
// taken once per plan, in cpu_eval.cpp's schedule).
//
// Bit-identity with the scalar loops (and so with the CUDA kernels) is the rule: every
// formula of jit_math.inc is restated here with the same operations in the same order,
// FMAs (MulAdd) exactly where the formula calls JM_FMAF and nowhere else, IEEE division
// and square root, the same f32 constants. The ternaries of jit_math map to x86 compares
// and blends with the same NaN behaviour: `a < b ? a : b` is x86's minps(a, b) and
// `a > b ? a : b` its maxps(a, b) (both return b when either is NaN), which is why only
// x86 targets with FMA take this path (elsewhere Highway's Min / Max may treat NaN
// otherwise, and MulAdd without FMA rounds twice): every other target gets null
// pointers and the scalar loops. C's `a != b` is true for NaN; Highway's operator!= is
// ordered (false), so "not equal" is written Not(a == b).
//
// tests/cpp/test_fusion_cpu_simd.cpp runs random programs of every op and dtype through
// both paths and compares the bits.
//
// Highway's foreach_target re-includes this file once per target: shared declarations
// behind the include guard, per-target code in HWY_NAMESPACE, the entry in HWY_ONCE.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")  // (clang contracts only within one expression)
#endif

#ifndef LOWBIT_JIT_CPU_EVAL_SIMD_SHARED_
#define LOWBIT_JIT_CPU_EVAL_SIMD_SHARED_

#include "jit/cpu_eval_simd.hpp"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#endif  // LOWBIT_JIT_CPU_EVAL_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "jit/cpu_eval_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace fusion_simd {

using fusion::Instr;
using fusion::Num;
using fusion::Op;

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2

namespace hn = hwy::HWY_NAMESPACE;
using D = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<D>;
using DU = hn::RebindToUnsigned<D>;
using V = hn::Vec<D>;
using VI = hn::Vec<DI>;
using VU = hn::Vec<DU>;

HWY_INLINE V F(float x) { return hn::Set(D(), x); }
HWY_INLINE VI I(int32_t x) { return hn::Set(DI(), x); }
HWY_INLINE VU U(uint32_t x) { return hn::Set(DU(), x); }
HWY_INLINE VU bits(V v) { return hn::BitCast(DU(), v); }
HWY_INLINE V from_bits(VU v) { return hn::BitCast(D(), v); }
HWY_INLINE V from_bits(VI v) { return hn::BitCast(D(), v); }

/// `a < b ? a : b` and `a > b ? a : b` (x86 minps / maxps, see the file comment).
HWY_INLINE V lt_select(V a, V b) { return hn::Min(a, b); }
HWY_INLINE V gt_select(V a, V b) { return hn::Max(a, b); }

/// c0 + z (c1 + z (c2 + ... + z cn)), plain multiplies and adds (no FMA), innermost first,
/// as jit_math's nested polynomials are written.
template <size_t K>
HWY_INLINE V horner(V z, const float (&c)[K]) {
  V acc = F(c[K - 1]);
  for (size_t i = K - 1; i-- > 0;) acc = F(c[i]) + z * acc;
  return acc;
}

// ---- jit_math.inc, f32, on vectors --------------------------------------------------------

HWY_INLINE V sign_of(V x) { return from_bits(bits(x) & U(0x80000000u)); }
HWY_INLINE V with_sign(V mag, V x) { return from_bits(bits(mag) | (bits(x) & U(0x80000000u))); }

HWY_INLINE V lb_min(V a, V b) { return hn::IfThenElse(hn::IsNaN(b), b, lt_select(b, a)); }
HWY_INLINE V lb_max(V a, V b) { return hn::IfThenElse(hn::IsNaN(b), b, gt_select(b, a)); }

/// lb_exp_poly: e^r for xc = k ln2 + r, and kb (k in its low mantissa bits).
HWY_INLINE V exp_poly(V xc, V& kb) {
  kb = hn::MulAdd(xc, F(0x1.715476p+0f), F(0x1.8p+23f));
  const V kf = kb - F(0x1.8p+23f);
  const V r = hn::MulAdd(kf, F(-0x1.7f7d1cp-20f), hn::MulAdd(kf, F(-0x1.62e4p-1f), xc));
  const V q = hn::MulAdd(hn::MulAdd(hn::MulAdd(hn::MulAdd(F(0x1.6a23ccp-10f), r, F(0x1.123a1p-7f)),
                                               r, F(0x1.5558f2p-5f)),
                                    r, F(0x1.555492p-3f)),
                         r, F(0x1.fffffcp-2f));
  return F(1.0f) + hn::MulAdd(r * r, q, r);
}
HWY_INLINE VI exp_k(V kb) { return hn::BitCast(DI(), bits(kb) - U(0x4b400000u)); }

HWY_INLINE V lb_exp(V x) {
  const V xc = gt_select(F(-104.0f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  const VI k = exp_k(kb);
  const VI k1 = hn::ShiftRight<1>(k);  // arithmetic, as C++20's >> on int
  const VI k2 = k - k1;
  const V s1 = from_bits(hn::ShiftLeft<23>(k1 + I(127)));
  const V s2 = from_bits(hn::ShiftLeft<23>(k2 + I(127)));
  return (p * s1) * s2;
}

HWY_INLINE V lb_exp_n(V x) {
  const V xc = gt_select(F(-86.5f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  return (p * from_bits(hn::ShiftLeft<23>(exp_k(kb) + I(126)))) * F(2.0f);
}

/// 1 + lb_exp_n(x) with the doubling and the addition in one FMA: p s 2 is exact (or
/// overflows, and then so does the sum), so fma(p s, 2, 1) rounds 1 + e once, as the two
/// operations do: the same bits as `1 + lb_exp_n(x)`, one instruction fewer.
HWY_INLINE V lb_exp_n1p(V x) {
  const V xc = gt_select(F(-86.5f), lt_select(F(88.8f), x));
  V kb;
  const V p = exp_poly(xc, kb);
  return hn::MulAdd(p * from_bits(hn::ShiftLeft<23>(exp_k(kb) + I(126))), F(2.0f), F(1.0f));
}

HWY_INLINE V lb_log(V x) {
  const DI di;
  const VU ux = bits(x);
  const auto sub = hn::ShiftRight<23>(ux) == U(0);  // ux < 0x00800000u
  VU ix = bits(hn::IfThenElse(hn::RebindMask(D(), sub), x * F(0x1p25f), x));
  ix = ix + U(0x3f800000u - 0x3f3504f3u);
  const VI k = hn::BitCast(di, hn::ShiftRight<23>(ix)) - I(0x7f) -
               hn::IfThenElseZero(hn::RebindMask(di, sub), I(25));
  ix = (ix & U(0x007fffffu)) + U(0x3f3504f3u);
  const V f = from_bits(ix) - F(1.0f);
  const V s = f / (F(2.0f) + f);
  const V z = s * s;
  const V w = z * z;
  const V t1 = w * (F(0xccce13.0p-25f) + w * F(0xf89e26.0p-26f));
  const V t2 = z * (F(0xaaaaaa.0p-24f) + w * F(0x91e9ee.0p-25f));
  const V R = t2 + t1;
  const V hfsq = F(0.5f) * f * f;
  const V dk = hn::ConvertTo(D(), k);
  const V r = s * (hfsq + R) + dk * F(0x1.2fefa2p-17f) - hfsq + f + dk * F(0x1.62e3p-1f);
  // The checks in the reverse order of jit_math's chain of ternaries.
  const VI sx = hn::BitCast(di, ux);
  V res = hn::IfThenElse(hn::RebindMask(D(), sx > I(0x7f7fffff)), x, r);
  res = hn::IfThenElse(hn::RebindMask(D(), sx < I(0)), from_bits(U(0x7fc00000u)), res);
  res = hn::IfThenElse(hn::RebindMask(D(), (ux & U(0x7fffffffu)) == U(0)),
                       from_bits(U(0xff800000u)), res);
  return res;
}

HWY_INLINE V lb_log1p_pos(V u) {
  const V w = F(1.0f) + u;
  const V d = w - F(1.0f);
  return hn::IfThenElse(d == F(0.0f), u, lb_log(w) * (u / d));
}

HWY_INLINE V lb_tanh(V x) {
  const V a = hn::Abs(x);
  const V e = lb_exp_n(F(2.0f) * a);
  const V z = x * x;
  static constexpr float kQ[] = {-0x1.555556p-2f, 0x1.111106p-3f,  -0x1.ba146p-5f,
                                 0x1.657ccep-6f,  -0x1.177f24p-7f, 0x1.4bb278p-9f};
  const V q = horner(z, kQ);
  const V small = x + (x * z) * q;
  const V big = F(1.0f) - F(2.0f) / (e + F(1.0f));
  return hn::IfThenElse(a < F(0.55f), small, with_sign(big, x));
}

HWY_INLINE V lb_erf(V x) {
  const V a = hn::Abs(x);
  const V z = x * x;
  static constexpr float kQ[] = {0x1.20dd74p+0f, -0x1.81273ep-2f,  0x1.ce2cf8p-4f, -0x1.b7f90cp-6f,
                                 0x1.5405acp-8f, -0x1.a3f6d8p-11f, 0x1.4969cap-14f};
  const V small = x * horner(z, kQ);
  const V ac = hn::IfThenElse(a < F(4.0f), a, F(4.0f));
  const V t = ac - F(2.5f);
  static constexpr float kH[] = {-0x1.8e8b72p+0f, -0x1.69252p-2f,   0x1.cb9fa2p-5f,
                                 -0x1.63cf98p-7f, 0x1.1bc816p-9f,   -0x1.b89558p-12f,
                                 0x1.44de6ep-14f, -0x1.be5506p-17f, 0x1.ad752ap-20f};
  const V h = horner(t, kH);
  const V big = F(1.0f) - lb_exp_n(h - ac * ac);
  const V nan_or_big = hn::IfThenElse(hn::IsNaN(x), x, with_sign(big, x));
  return hn::IfThenElse(a < F(1.0f), small, nan_or_big);
}

/// lb_bf16_bits(v) in the low 16 bits of each lane. The rounding is done on the signed pattern:
/// for every non-NaN v, |v| + 0x8000 stays below 2^31, so adding the rounding increment to
/// sign | magnitude never reaches the sign, and the shift leaves sign | rounded magnitude,
/// jit_math's `code | sign` (8 operations instead of 12).
HWY_INLINE VU lb_bf16_code(V v) {
  const VU x = bits(v);
  const VU hi = hn::ShiftRight<16>(x);
  const VU rounded = hn::ShiftRight<16>(x + U(0x7fffu) + (hi & U(1u)));
  const VU nan_code = hn::OrAnd(U(0x7fc0u), hi, U(0x8000u));  // 0x7fc0 | sign
  return hn::IfThenElse(hn::RebindMask(DU(), hn::IsNaN(v)), nan_code, rounded);
}

HWY_INLINE V lb_bf16_round(V v) {  // float_of(lb_bf16_bits(v) << 16)
  return from_bits(hn::ShiftLeft<16>(lb_bf16_code(v)));
}

// ---- loops over a tile ---------------------------------------------------------------------

/// o[i] = f(a[i], b[i], c[i]) for i < n, with K of the operands read; the last partial
/// vector goes through zero-padded copies (operand pointers may be inputs read in place,
/// so nothing past n is read or written).
template <int K, class Fn>
HWY_INLINE void map(float* o, const float* a, const float* b, const float* c, int n, Fn fn) {
  const D d;
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  int i = 0;
  for (; i + N <= n; i += N) {
    const V va = hn::LoadU(d, a + i);
    const V vb = K > 1 ? hn::LoadU(d, b + i) : va;
    const V vc = K > 2 ? hn::LoadU(d, c + i) : va;
    hn::StoreU(fn(va, vb, vc), d, o + i);
  }
  if (i == n) return;
  const int rest = n - i;
  alignas(64) float pa[N] = {}, pb[N] = {}, pc[N] = {}, po[N];
  std::memcpy(pa, a + i, sizeof(float) * rest);
  if (K > 1) std::memcpy(pb, b + i, sizeof(float) * rest);
  if (K > 2) std::memcpy(pc, c + i, sizeof(float) * rest);
  hn::Store(fn(hn::Load(d, pa), hn::Load(d, pb), hn::Load(d, pc)), d, po);
  std::memcpy(o + i, po, sizeof(float) * rest);
}

// Every vectorised op once: CASE(op, operands, value of x, y, z). cast is apart (its
// dtype picks the formula).
#define LB_FOR_EACH_OP(CASE)                                                                  \
  CASE(add, 2, x + y)                                                                         \
  CASE(sub, 2, x - y)                                                                         \
  CASE(mul, 2, x* y)                                                                          \
  CASE(div, 2, x / y)                                                                         \
  CASE(minimum, 2, lb_min(x, y))                                                              \
  CASE(maximum, 2, lb_max(x, y))                                                              \
  CASE(leaky_relu, 2, hn::IfThenElse(x > F(0.0f), x, x * y))                                  \
  CASE(lt, 2, hn::IfThenElseZero(x < y, F(1.0f)))                                             \
  CASE(le, 2, hn::IfThenElseZero(x <= y, F(1.0f)))                                            \
  CASE(gt, 2, hn::IfThenElseZero(x > y, F(1.0f)))                                             \
  CASE(ge, 2, hn::IfThenElseZero(x >= y, F(1.0f)))                                            \
  CASE(eq, 2, hn::IfThenElseZero(x == y, F(1.0f)))                                            \
  CASE(ne, 2, hn::IfThenZeroElse(x == y, F(1.0f)))                                            \
  CASE(clamp, 3, lb_min(lb_max(x, y), z))                                                     \
  CASE(where, 3, hn::IfThenElse(x == F(0.0f), z, y))                                          \
  CASE(neg, 1, hn::Neg(x))                                                                    \
  CASE(abs, 1, hn::Abs(x))                                                                    \
  CASE(relu, 1, hn::IfThenZeroElse(x <= F(0.0f), x))                                          \
  CASE(sqrt, 1, hn::Sqrt(x))                                                                  \
  CASE(rsqrt, 1, F(1.0f) / hn::Sqrt(x))                                                       \
  CASE(exp, 1, lb_exp(x))                                                                     \
  CASE(log, 1, lb_log(x))                                                                     \
  CASE(tanh, 1, lb_tanh(x))                                                                   \
  CASE(sigmoid, 1, F(1.0f) / lb_exp_n1p(hn::Neg(x)))                                          \
  CASE(silu, 1, x / lb_exp_n1p(hn::Neg(x)))                                                   \
  CASE(softplus, 1, hn::IfThenElse(x > F(20.0f), x, lb_log1p_pos(lb_exp(x))))                 \
  CASE(gelu, 1,                                                                               \
       (x * F(0.5f)) * (F(1.0f) + lb_erf(x * F(static_cast<float>(0.70710678118654752440))))) \
  CASE(gelu_tanh, 1,                                                                          \
       (F(0.5f) * x) * (F(1.0f) + lb_tanh(F(static_cast<float>(0.79788456080286535588)) *     \
                                          (x + F(static_cast<float>(0.044715)) * ((x * x) * x)))))

bool Handles(const Instr& in) {
  if (in.num != Num::f32 || in.arg_num != Num::f32) return false;
  switch (in.op) {
#define LB_CASE(op, k, expr) case Op::op:
    LB_FOR_EACH_OP(LB_CASE)
#undef LB_CASE
    return true;
    case Op::cast:
      return in.dtype == Dtype::f32 || in.dtype == Dtype::bf16;
    default:  // pow (through f64), inputs, constants, casts to other dtypes
      return false;
  }
}

bool StepF32(const Instr& in, void* out, const void* pa, const void* pb, const void* pc, int n) {
  if (!Handles(in)) return false;
  float* o = static_cast<float*>(out);
  const auto* a = static_cast<const float*>(pa);
  const auto* b = static_cast<const float*>(pb);
  const auto* c = static_cast<const float*>(pc);
  switch (in.op) {
#define LB_CASE(op, k, expr)                                             \
  case Op::op:                                                           \
    map<k>(o, a, b, c, n, [&](V x, V y, V z) HWY_ATTR { return expr; }); \
    return true;
    LB_FOR_EACH_OP(LB_CASE)
#undef LB_CASE
    case Op::cast:
      if (in.dtype == Dtype::bf16) {
        map<1>(o, a, b, c, n, [&](V x, V, V) HWY_ATTR { return lb_bf16_round(x); });
      } else if (o != a) {
        std::memcpy(o, a, sizeof(float) * static_cast<size_t>(n));
      }
      return true;
    default:
      return false;
  }
}

/// r[u] = op(x[u], y[u], z[u]) for U vectors: one dispatch for all of them.
template <int U>
HWY_INLINE void apply(const Instr& in, unsigned plain, const V (&xs)[U], const V (&ys)[U],
                      const V (&zs)[U], V (&r)[U]) {
  // Bounds that are not NaN: lb_max(x, lo) is `lo > x ? lo : x`, lb_min(x, hi) is
  // `hi < x ? hi : x` (the file comment's maxps / minps).
  if (in.op == Op::clamp && (plain & 6u) == 6u) {
    for (int u = 0; u < U; ++u) r[u] = lt_select(zs[u], gt_select(ys[u], xs[u]));
    return;
  }
  if (in.op == Op::maximum && (plain & 2u)) {
    for (int u = 0; u < U; ++u) r[u] = gt_select(ys[u], xs[u]);
    return;
  }
  if (in.op == Op::minimum && (plain & 2u)) {
    for (int u = 0; u < U; ++u) r[u] = lt_select(ys[u], xs[u]);
    return;
  }
  switch (in.op) {
#define LB_CASE(op, k, expr)                   \
  case Op::op:                                 \
    for (int u = 0; u < U; ++u) {              \
      const V x = xs[u], y = ys[u], z = zs[u]; \
      (void)y;                                 \
      (void)z;                                 \
      r[u] = expr;                             \
    }                                          \
    return;
    LB_FOR_EACH_OP(LB_CASE)
#undef LB_CASE
    case Op::cast:
      for (int u = 0; u < U; ++u) r[u] = in.dtype == Dtype::bf16 ? lb_bf16_round(xs[u]) : xs[u];
      return;
    default:
      return;
  }
}

void LoadBf16(const uint16_t* s, float* o, int n) {
  const D d;
  const hn::Rebind<uint16_t, D> d16;
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  int i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(from_bits(hn::ShiftLeft<16>(hn::PromoteTo(DU(), hn::LoadU(d16, s + i)))), d, o + i);
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(o + i, &u, 4);
  }
}

void StoreBf16(const float* s, uint16_t* o, int n, bool stream) {
  const D d;
  const hn::Rebind<uint16_t, D> d16;
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  int i = 0;
  if (stream && reinterpret_cast<uintptr_t>(o) % (2 * N) == 0) {
    for (; i + N <= n; i += N) {
      const VU code = lb_bf16_code(hn::LoadU(d, s + i));
      hn::Stream(hn::DemoteTo(d16, hn::BitCast(DI(), code)), d16, o + i);
    }
  }
  for (; i + N <= n; i += N) {
    const VU code = lb_bf16_code(hn::LoadU(d, s + i));
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(DI(), code)), d16, o + i);
  }
  if (i == n) return;
  alignas(64) float ps[N] = {};
  alignas(64) uint16_t po[N];
  std::memcpy(ps, s + i, sizeof(float) * static_cast<size_t>(n - i));
  const VU code = lb_bf16_code(hn::Load(d, ps));
  hn::Store(hn::DemoteTo(d16, hn::BitCast(DI(), code)), d16, po);
  std::memcpy(o + i, po, sizeof(uint16_t) * static_cast<size_t>(n - i));
}

/// Operand J of a chain op for the U vectors at element i: the running value, or loaded.
template <int J, int U>
HWY_INLINE void chain_operand(const fusion::ChainOp& op, int i, const V (&acc)[U], V (&v)[U]) {
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  if ((op.chained & (1u << J)) || !op.arg[J]) {
    for (int u = 0; u < U; ++u) v[u] = acc[u];
  } else if (op.bf16 & (1u << J)) {
    const hn::Rebind<uint16_t, D> d16;
    const auto* p = static_cast<const uint16_t*>(op.arg[J]) + i;
    for (int u = 0; u < U; ++u)
      v[u] = from_bits(hn::ShiftLeft<16>(hn::PromoteTo(DU(), hn::LoadU(d16, p + u * N))));
  } else {
    const auto* p = static_cast<const float*>(op.arg[J]) + i;
    for (int u = 0; u < U; ++u) v[u] = hn::LoadU(D(), p + u * N);
  }
}

/// The chain's ops over n elements, U vectors at a time with the running value in
/// registers; the last partial block goes op by op through StepF32 on local buffers.
void Chain(const fusion::ChainOp* ops, int m, const fusion::ChainDst& dst, int n) {
  const D d;
  const hn::Rebind<uint16_t, D> d16;
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  // Four independent vectors in flight hide the latency of the exp's dependent FMAs;
  // AVX2 has 16 registers, so two there.
  constexpr int U = HWY_TARGET <= HWY_AVX3 ? 4 : 2;
  const bool stream = dst.bf16 && dst.stream && reinterpret_cast<uintptr_t>(dst.bf16) % 32 == 0;
  int i = 0;
  for (; i + U * N <= n; i += U * N) {
    V acc[U];
    for (int u = 0; u < U; ++u) acc[u] = hn::Zero(d);
    for (int k = 0; k < m; ++k) {
      const fusion::ChainOp& op = ops[k];
      // Named arrays indexed by constants only, so that they live in registers.
      V x[U], y[U], z[U];
      chain_operand<0, U>(op, i, acc, x);
      chain_operand<1, U>(op, i, acc, y);
      chain_operand<2, U>(op, i, acc, z);
      apply<U>(*op.in, op.plain, x, y, z, acc);
    }
    if (dst.bf16) {
      for (int u = 0; u < U; ++u) {
        const VU code = lb_bf16_code(acc[u]);
        const auto codes = hn::DemoteTo(d16, hn::BitCast(DI(), code));
        if (stream) {
          hn::Stream(codes, d16, dst.bf16 + i + u * N);
        } else {
          hn::StoreU(codes, d16, dst.bf16 + i + u * N);
        }
      }
    } else {
      for (int u = 0; u < U; ++u) hn::StoreU(acc[u], d, dst.f32 + i + u * N);
    }
  }
  if (i == n) return;
  const int rest = n - i;
  alignas(64) float tmp[U * N];
  alignas(64) float wide[3][U * N];
  for (int k = 0; k < m; ++k) {
    const fusion::ChainOp& op = ops[k];
    const float* p[3];
    for (int j = 0; j < 3; ++j) {
      if (op.chained & (1u << j)) {
        p[j] = tmp;
      } else if (!op.arg[j]) {
        p[j] = nullptr;
      } else if (op.bf16 & (1u << j)) {
        LoadBf16(static_cast<const uint16_t*>(op.arg[j]) + i, wide[j], rest);
        p[j] = wide[j];
      } else {
        p[j] = static_cast<const float*>(op.arg[j]) + i;
      }
    }
    StepF32(*op.in, k == m - 1 && !dst.bf16 ? dst.f32 + i : tmp, p[0], p[1], p[2], rest);
  }
  if (dst.bf16) StoreBf16(tmp, dst.bf16 + i, rest, false);
}

#undef LB_FOR_EACH_OP

fusion::SimdSteps Steps() {
  return {&StepF32, &Handles, &Chain, &LoadBf16, &StoreBf16, hwy::TargetName(HWY_TARGET)};
}

#else  // not x86 with FMA: the scalar loops serve

fusion::SimdSteps Steps() { return {}; }

#endif

}  // namespace fusion_simd

// HWY_EXPORT needs the entry directly in HWY_NAMESPACE.
fusion::SimdSteps FusionSimdSteps() { return fusion_simd::Steps(); }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FusionSimdSteps);

namespace fusion {
namespace {
std::atomic<bool> g_simd_for_testing{true};
}

SimdSteps cpu_simd_steps() {
  static const bool env_off = [] {
    const char* v = std::getenv("LOWBIT_FUSION_SIMD");
    return v && v[0] == '0';
  }();
  if (env_off || !g_simd_for_testing.load(std::memory_order_relaxed)) return {};
  return HWY_DYNAMIC_DISPATCH(FusionSimdSteps)();
}

void set_cpu_simd_for_testing(bool enabled) { g_simd_for_testing.store(enabled); }

}  // namespace fusion
}  // namespace lowbit
#endif  // HWY_ONCE
