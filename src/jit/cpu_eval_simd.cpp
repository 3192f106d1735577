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

#include "jit/cpu_math_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace fusion_simd {

using fusion::Instr;
using fusion::Num;
using fusion::Op;

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2

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

#include "jit/cpu_ops_simd-inl.h"  // LB_FOR_EACH_OP

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
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  int i = 0;
  for (; i + N <= n; i += N) hn::StoreU(load_bf16(s + i), d, o + i);
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

/// Operand J of a chain op for the U vectors at element i: the running value, the side
/// value, or loaded.
template <int J, int U>
HWY_INLINE void chain_operand(const fusion::ChainOp& op, int i, const V (&acc)[U],
                              const V (&side)[U], V (&v)[U]) {
  constexpr int N = static_cast<int>(hn::MaxLanes(D()));
  if (op.from_side & (1u << J)) {
    for (int u = 0; u < U; ++u) v[u] = side[u];
  } else if ((op.chained & (1u << J)) || !op.arg[J]) {
    for (int u = 0; u < U; ++u) v[u] = acc[u];
  } else if (op.bf16 & (1u << J)) {
    const auto* p = static_cast<const uint16_t*>(op.arg[J]) + i;
    for (int u = 0; u < U; ++u) v[u] = load_bf16(p + u * N);
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
    V acc[U], side[U];
    for (int u = 0; u < U; ++u) acc[u] = side[u] = hn::Zero(d);
    for (int k = 0; k < m; ++k) {
      const fusion::ChainOp& op = ops[k];
      // Named arrays indexed by constants only, so that they live in registers.
      V x[U], y[U], z[U];
      chain_operand<0, U>(op, i, acc, side, x);
      chain_operand<1, U>(op, i, acc, side, y);
      chain_operand<2, U>(op, i, acc, side, z);
      if (op.side) {
        apply<U>(*op.in, op.plain, x, y, z, side);
      } else {
        apply<U>(*op.in, op.plain, x, y, z, acc);
      }
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
  alignas(64) float tmp_side[U * N];
  alignas(64) float wide[3][U * N];
  for (int k = 0; k < m; ++k) {
    const fusion::ChainOp& op = ops[k];
    const float* p[3];
    for (int j = 0; j < 3; ++j) {
      if (op.from_side & (1u << j)) {
        p[j] = tmp_side;
      } else if (op.chained & (1u << j)) {
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
    StepF32(*op.in,
            op.side                   ? tmp_side
            : k == m - 1 && !dst.bf16 ? dst.f32 + i
                                      : tmp,
            p[0], p[1], p[2], rest);
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
