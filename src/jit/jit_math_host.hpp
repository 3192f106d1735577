// The shared formulas of jit_math.inc, compiled for the host (the CPU evaluator, scalar
// folding, tests). Generated CUDA code gets the same text through jit_headers().
#pragma once

#include <cmath>
#include <cstdint>

#include "lowbit/numeric.hpp"

#define JM_FN inline __attribute__((always_inline))
#define JM_SQRTF(x) __builtin_sqrtf(x)
#define JM_FMAF(a, b, c) __builtin_fmaf(a, b, c)
/// __saturatef on the host: [0, 1], NaN to 0.
inline float lowbit_jm_satf(float v) { return v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; }
#define JM_SATF(x) lowbit_jm_satf(x)
#define JM_MINC(c, x) ((c) < (x) ? (c) : (x))
#define JM_D_EXP(x) std::exp(x)
#define JM_D_LOG(x) std::log(x)
#define JM_D_SQRT(x) std::sqrt(x)
#define JM_D_TANH(x) std::tanh(x)
#define JM_D_ERF(x) std::erf(x)
#define JM_D_LOG1P(x) std::log1p(x)
#define JM_D_POW(x, p) std::pow(x, p)
#define JM_D_TRUNC(x) std::trunc(x)
#define JM_RINTF(x) std::nearbyint(x)
#define LOWBIT_JIT_SOURCE(...) __VA_ARGS__
#include "jit/jit_math.inc"
#undef LOWBIT_JIT_SOURCE
