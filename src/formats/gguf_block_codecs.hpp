// Private to the GGUF block codecs: the per-type entry points that gguf_blocks.cpp
// dispatches to (defined in gguf_legacy.cpp and gguf_kquants.cpp), and the small helpers
// both codec files need to restate ggml's reference arithmetic exactly.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#include "lowbit/gguf_blocks.hpp"
#include "lowbit/numeric.hpp"

namespace lowbit::gguf::detail {

static_assert(std::endian::native == std::endian::little,
              "GGUF blocks are little-endian; the codecs copy fields with memcpy");

inline constexpr int kQK = 32;     ///< values per legacy block (QK4_0 ... QK8_1 in ggml-common.h)
inline constexpr int kQK_K = 256;  ///< values per K-quant super-block (QK_K)

// ---- per-type codecs: `nblocks` consecutive blocks; the caller has validated everything --

void quantize_q4_0(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q4_1(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q5_0(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q5_1(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q8_0(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q8_1(const float* x, uint8_t* y, int64_t nblocks);
void dequantize_q4_0(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q4_1(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q5_0(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q5_1(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q8_0(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q8_1(const uint8_t* y, float* x, int64_t nblocks);

void quantize_q2_K(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q3_K(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q4_K(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q5_K(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q6_K(const float* x, uint8_t* y, int64_t nblocks);
void quantize_q8_K(const float* x, uint8_t* y, int64_t nblocks);
void dequantize_q2_K(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q3_K(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q4_K(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q5_K(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q6_K(const uint8_t* y, float* x, int64_t nblocks);
void dequantize_q8_K(const uint8_t* y, float* x, int64_t nblocks);

// ---- field access (little-endian, unaligned) -------------------------------------------

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, sizeof v); }

/// GGML_FP16_TO_FP32: exact.
inline float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }

/// Stores GGML_FP32_TO_FP16(v) (round to nearest even, as F16C's vcvtps2ph and ggml's
/// software fallback do) for a block's scale or min field. Where ggml would store +-Inf
/// (|v| >= 65520) this throws lowbit::Error(invalid_argument) naming the type, the block
/// and the field: such a block dequantizes to Inf/NaN, so the input does not fit the format.
void store_scale_f16(uint8_t* p, float v, GgmlType type, const char* field, int64_t block);

// ---- ggml's rounding helpers -----------------------------------------------------------

/// ggml's nearest_int (ggml-quants.c): adding 1.5 * 2^23 moves the rounding point to the
/// f32 unit bit, so the hardware's round-to-nearest-even does the rounding, and the low 23
/// mantissa bits hold the result offset by 2^22. Exact RNE for |f| <= 2^22 - 1 (ggml
/// asserts that in debug builds); outside that range it returns what ggml's release build
/// returns, which is why it is restated bit for bit rather than replaced by lrintf.
inline int nearest_int(float f) {
  const float biased = f + 12582912.0f;
  const int32_t bits = std::bit_cast<int32_t>(biased);
  return (bits & 0x007fffff) - 0x00400000;
}

/// A C cast of a float to int8_t/uint8_t as ggml's x86-64 reference build executes it:
/// cvttss2si truncates toward zero into 32 bits, giving INT32_MIN for NaN and for values
/// outside int32, and the narrowing keeps the low byte. C leaves the out-of-range case
/// undefined; it only arises in ggml's quantizers when 1/d overflows (blocks of values
/// near FLT_MIN), and restating it keeps those blocks byte-identical too.
inline uint8_t float_to_byte_x86(float v) {
  int32_t i = INT32_MIN;
  if (v >= -2147483648.0f && v < 2147483648.0f) i = static_cast<int32_t>(v);
  return static_cast<uint8_t>(static_cast<uint32_t>(i));
}
inline int8_t float_to_int8_x86(float v) { return static_cast<int8_t>(float_to_byte_x86(v)); }

}  // namespace lowbit::gguf::detail
