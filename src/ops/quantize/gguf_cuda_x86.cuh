// Device helpers the GGUF CUDA kernels (gguf_quantize_cuda.cu, gguf_dequantize_cuda.cu) share:
// f32 arithmetic as ggml's x86 build does it, and the block fields both directions read.
//
// One rounding per operation (explicit __f*_rn, so nvcc cannot contract a multiply and an
// add into an FMA the reference does not have), and x86's NaN results: a NaN operand comes
// back quieted (the first one when both are NaN), an invalid operation (0 * Inf, Inf - Inf,
// 0 / 0, Inf / Inf) gives SSE's default NaN 0xffc00000 where the GPU would give 0x7fffffff.
// The bits matter: blocks of values near FLT_MIN make 1/d overflow, 0 * Inf follows, and
// nearest_int reads the NaN's mantissa bits into a code; a dequantized NaN keeps its payload.
#pragma once

#include <cstdint>

#include "lowbit/numeric.hpp"  // f16_to_f32

namespace lowbit::gguf_cuda {

/// The NaN x86's SSE arithmetic returns for operands a, b whose result is NaN.
__device__ __forceinline__ float x86_nan(float a, float b) {
  const uint32_t ab = __float_as_uint(a), bb = __float_as_uint(b);
  if ((ab & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(ab | 0x00400000u);
  if ((bb & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(bb | 0x00400000u);
  return __uint_as_float(0xffc00000u);
}
__device__ __forceinline__ float mul(float a, float b) {
  const float r = __fmul_rn(a, b);
  return r == r ? r : x86_nan(a, b);
}
__device__ __forceinline__ float add(float a, float b) {
  const float r = __fadd_rn(a, b);
  return r == r ? r : x86_nan(a, b);
}
__device__ __forceinline__ float sub(float a, float b) {
  const float r = __fsub_rn(a, b);
  return r == r ? r : x86_nan(a, b);
}
__device__ __forceinline__ float fl(int v) { return static_cast<float>(v); }

/// The little-endian f16 at p, widened exactly.
__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return lowbit::f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}

/// gguf_kquants.cpp's scale_min_k4 (ggml's get_scale_min_k4): sub-block j's 6-bit scale
/// and min from Q4_K / Q5_K's 12 scale bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/// gguf_kquants.cpp's q3_k_scale: Q3_K's sub-block j scale, -32..31.
__device__ __forceinline__ int q3_k_scale(const uint8_t* s, int j) {
  const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

}  // namespace lowbit::gguf_cuda
