// The vector steps of the CPU fusion kernel (cpu_eval_simd.cpp): jit_math.inc's f32
// formulas restated on Highway vectors, operation for operation, so that each lane gives
// the scalar formula's bits (FMAs only where the formula has JM_FMAF, IEEE division and
// square root, the same constants, the same order).
#pragma once

#include "jit/jit.hpp"

namespace lowbit::fusion {

/// Runs one f32 step of a Program over n elements (o: the result, a / b / c: the operands'
/// values, as in cpu_eval.cpp's run_step) and returns true, or returns false, having done
/// nothing, when the step is not one it vectorises (f64 and integer arithmetic, pow, casts
/// to other dtypes than f32 and bf16): the caller then runs the scalar loop.
using SimdStepFn = bool (*)(const Instr& in, void* o, const void* a, const void* b, const void* c,
                            int n);

/// Whether SimdStepFn runs `in` (else it returns false).
using SimdHandlesFn = bool (*)(const Instr& in);

/// One op of a chain: a step, its operands' values (null where it has none; f32, or bf16
/// where `bf16` has the operand's bit: an input read in place), and which operands (bit j:
/// a, b, c) are the previous op's result instead (`chained`), or the side value
/// (`from_side`). A `side` op leaves the running value alone and puts its result in the
/// side value, which the next op reads (a chain's one branch: `t - a * 0.5` after `t`).
struct ChainOp {
  const Instr* in = nullptr;
  const void* arg[3] = {nullptr, nullptr, nullptr};
  unsigned chained = 0;
  unsigned from_side = 0;
  bool side = false;
  unsigned bf16 = 0;
  /// Bit j: operand j is one value for every element, and not NaN (minimum, maximum and
  /// clamp then skip jit_math's NaN test of that operand: x86's minps / maxps suffice).
  unsigned plain = 0;
};

/// Where a chain's result goes: f32 values to `f32`, or, when `bf16` is set, bf16 codes
/// (jit_math's lb_bf16_bits) straight to an output (non-temporal stores with `stream`
/// where the pointer is 32-byte aligned: the caller fences).
struct ChainDst {
  float* f32 = nullptr;
  uint16_t* bf16 = nullptr;
  bool stream = false;
};

/// Runs a chain of m handled steps, each reading the one before it (or the side value a
/// side op made just before it), over n elements in one loop: the running value and the
/// side value stay in registers (the steps' own results are not stored). The same bits as
/// the steps one by one.
using SimdChainFn = void (*)(const ChainOp* ops, int m, const ChainDst& dst, int n);

/// Converts n bf16 values to f32, and f32 values to bf16 (jit_math's lb_bf16_bits; with
/// `stream`, non-temporal stores where dst is 32-byte aligned: the caller fences).
using SimdBf16LoadFn = void (*)(const uint16_t* src, float* dst, int n);
using SimdBf16StoreFn = void (*)(const float* src, uint16_t* dst, int n, bool stream);

struct SimdSteps {
  SimdStepFn step = nullptr;
  SimdHandlesFn handles = nullptr;
  SimdChainFn chain = nullptr;
  SimdBf16LoadFn load_bf16 = nullptr;
  SimdBf16StoreFn store_bf16 = nullptr;
  const char* target = "";  ///< Highway's name of the target they were built for
};

/// The vector steps for the best target this CPU runs, with every field null when that
/// target is not x86 with FMA (AVX2 or AVX-512): those machines take the scalar loops.
/// Also null while disabled by set_cpu_simd_for_testing(false) or LOWBIT_FUSION_SIMD=0.
SimdSteps cpu_simd_steps();

/// Tests: plans whose CPU schedule is made after this call use (true) or skip (false) the
/// vector steps, so that both paths can run in one process and be compared bit for bit.
void set_cpu_simd_for_testing(bool enabled);

}  // namespace lowbit::fusion
