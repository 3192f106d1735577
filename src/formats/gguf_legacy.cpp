// GGUF's legacy 32-value blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//
// Each quantizer restates ggml's quantize_row_<type>_ref and each dequantizer ggml's
// dequantize_row_<type> (ggml/src/ggml-quants.c), keeping every float operation, its
// operand order and its conversions, because byte identity with ggml depends on them: e.g.
// Q4_0 truncates x/d + 8.5 (a round-half-up in disguise), Q8_0 uses roundf (half away
// from zero), and neither may be swapped for the other. Block layouts are ggml-common.h's;
// docs/formats/gguf.md walks through each.
#include <algorithm>
#include <cfloat>
#include <cmath>

#include "formats/gguf_block_codecs.hpp"

// ggml's reference is built for baseline x86-64, without FMA, so every a*b+c in it rounds
// twice. GCC would fuse such pairs (even across statements) when this file is compiled with
// -march flags that enable FMA, and a fused result can differ in the last bit, which moves a
// rounding decision and changes a byte. Contraction is therefore off for this file whatever
// the build flags are (checked: no vfmadd with -march=haswell).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lowbit::gguf::detail {

namespace {

// Block sizes in bytes (sizeof(block_q*) in ggml-common.h).
constexpr int kQ4_0Bytes = 2 + kQK / 2;          // f16 d; 16 bytes of nibbles
constexpr int kQ4_1Bytes = 2 + 2 + kQK / 2;      // f16 d, f16 m; nibbles
constexpr int kQ5_0Bytes = 2 + 4 + kQK / 2;      // f16 d; u32 qh (5th bits); nibbles
constexpr int kQ5_1Bytes = 2 + 2 + 4 + kQK / 2;  // f16 d, f16 m; u32 qh; nibbles
constexpr int kQ8_0Bytes = 2 + kQK;              // f16 d; 32 x int8
constexpr int kQ8_1Bytes = 2 + 2 + kQK;          // f16 d, f16 s = d * sum(q); 32 x int8

/// The value of largest magnitude in a block, with its sign (the first one on ties), as
/// Q4_0/Q5_0 pick it: the scale maps exactly this value to the most negative code.
float signed_absmax(const float* x) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

struct MinMax {
  float min;
  float max;
};
MinMax block_min_max(const float* x) {
  MinMax r{FLT_MAX, -FLT_MAX};
  for (int j = 0; j < kQK; ++j) {
    if (x[j] < r.min) r.min = x[j];
    if (x[j] > r.max) r.max = x[j];
  }
  return r;
}

/// Q5_0/Q5_1 store the low nibbles like Q4 and gather the fifth bits into a u32:
/// bit j for element j, bit j + 16 for element j + 16.
void pack_5bit(const uint8_t* q, uint8_t* qh_out, uint8_t* qs_out) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t lo = q[j];
    const uint8_t hi = q[j + kQK / 2];
    qs_out[j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
    qh |= ((lo & 0x10u) >> 4) << j;
    qh |= ((hi & 0x10u) >> 4) << (j + kQK / 2);
  }
  store_u32(qh_out, qh);
}

/// The 5-bit codes of a Q5 block, unpacked.
void unpack_5bit(const uint8_t* qh_in, const uint8_t* qs, int* q) {
  const uint32_t qh = load_u32(qh_in);
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) << 4) & 0x10);
    q[j + kQK / 2] = (qs[j] >> 4) | static_cast<int>((qh >> (j + 12)) & 0x10);
  }
}

}  // namespace

// ---- Q4_0: x = d * (q - 8), q in 0..15 --------------------------------------------------

void quantize_q4_0(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ4_0Bytes) {
    // d maps the extreme value to -8 exactly, so the other end of the range (+7) is where
    // values get clipped, never the extreme itself.
    const float max = signed_absmax(x);
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_scale_f16(y, d, GgmlType::q4_0, "d", b);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[j + kQK / 2] * id;
      // ggml: MIN(15, (int8_t)(x0 + 8.5f)): truncation of a value >= 0 after adding
      // 8 + 0.5, i.e. rounding half up, then clipping the +8 code down to 15.
      const int q0 = std::min(15, static_cast<int>(float_to_int8_x86(x0 + 8.5f)));
      const int q1 = std::min(15, static_cast<int>(float_to_int8_x86(x1 + 8.5f)));
      y[2 + j] = static_cast<uint8_t>(static_cast<uint8_t>(q0) | (static_cast<uint8_t>(q1) << 4));
    }
  }
}

void dequantize_q4_0(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ4_0Bytes, x += kQK) {
    const float d = load_f16(y);
    const uint8_t* qs = y + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      x[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      x[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// ---- Q4_1: x = d * q + m, q in 0..15 ----------------------------------------------------

void quantize_q4_1(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ4_1Bytes) {
    const MinMax mm = block_min_max(x);
    const float d = (mm.max - mm.min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_scale_f16(y, d, GgmlType::q4_1, "d", b);
    store_scale_f16(y + 2, mm.min, GgmlType::q4_1, "m", b);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = (x[j] - mm.min) * id;
      const float x1 = (x[j + kQK / 2] - mm.min) * id;
      const int q0 = std::min(15, static_cast<int>(float_to_int8_x86(x0 + 0.5f)));
      const int q1 = std::min(15, static_cast<int>(float_to_int8_x86(x1 + 0.5f)));
      y[4 + j] = static_cast<uint8_t>(static_cast<uint8_t>(q0) | (static_cast<uint8_t>(q1) << 4));
    }
  }
}

void dequantize_q4_1(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ4_1Bytes, x += kQK) {
    const float d = load_f16(y);
    const float m = load_f16(y + 2);
    const uint8_t* qs = y + 4;
    for (int j = 0; j < kQK / 2; ++j) {
      x[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      x[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// ---- Q5_0: x = d * (q - 16), q in 0..31 -------------------------------------------------

void quantize_q5_0(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ5_0Bytes) {
    const float max = signed_absmax(x);
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_scale_f16(y, d, GgmlType::q5_0, "d", b);
    uint8_t q[kQK];
    for (int j = 0; j < kQK; ++j) {
      // ggml: MIN(31, (int8_t)(x*id + 16.5f)), stored in a uint8_t.
      q[j] = static_cast<uint8_t>(
          std::min(31, static_cast<int>(float_to_int8_x86(x[j] * id + 16.5f))));
    }
    pack_5bit(q, y + 2, y + 6);
  }
}

void dequantize_q5_0(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ5_0Bytes, x += kQK) {
    const float d = load_f16(y);
    int q[kQK];
    unpack_5bit(y + 2, y + 6, q);
    for (int j = 0; j < kQK; ++j) x[j] = static_cast<float>(q[j] - 16) * d;
  }
}

// ---- Q5_1: x = d * q + m, q in 0..31 ----------------------------------------------------

void quantize_q5_1(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ5_1Bytes) {
    const MinMax mm = block_min_max(x);
    const float d = (mm.max - mm.min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_scale_f16(y, d, GgmlType::q5_1, "d", b);
    store_scale_f16(y + 2, mm.min, GgmlType::q5_1, "m", b);
    uint8_t q[kQK];
    for (int j = 0; j < kQK; ++j) {
      // ggml: (uint8_t)(x0 + 0.5f) with no clip: x0 <= 31 up to rounding, so it cannot
      // reach 31.5.
      q[j] = float_to_byte_x86((x[j] - mm.min) * id + 0.5f);
    }
    pack_5bit(q, y + 4, y + 8);
  }
}

void dequantize_q5_1(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ5_1Bytes, x += kQK) {
    const float d = load_f16(y);
    const float m = load_f16(y + 2);
    int q[kQK];
    unpack_5bit(y + 4, y + 8, q);
    for (int j = 0; j < kQK; ++j) x[j] = static_cast<float>(q[j]) * d + m;
  }
}

// ---- Q8_0 / Q8_1: x = d * q, q in -127..127 ---------------------------------------------

namespace {

/// Q8_0's and Q8_1's shared core: d = amax / 127 and q = roundf(x / d) (half away from
/// zero), computed as x * (1/d) like ggml. Returns d.
float quantize_q8_codes(const float* x, int8_t* q) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) q[j] = float_to_int8_x86(std::round(x[j] * id));
  return d;
}

}  // namespace

void quantize_q8_0(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ8_0Bytes) {
    int8_t q[kQK];
    const float d = quantize_q8_codes(x, q);
    store_scale_f16(y, d, GgmlType::q8_0, "d", b);
    std::memcpy(y + 2, q, kQK);
  }
}

void dequantize_q8_0(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ8_0Bytes, x += kQK) {
    const float d = load_f16(y);
    for (int j = 0; j < kQK; ++j) x[j] = static_cast<float>(static_cast<int8_t>(y[2 + j])) * d;
  }
}

void quantize_q8_1(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK, y += kQ8_1Bytes) {
    int8_t q[kQK];
    const float d = quantize_q8_codes(x, q);
    int sum = 0;
    for (int j = 0; j < kQK; ++j) sum += q[j];
    store_scale_f16(y, d, GgmlType::q8_1, "d", b);
    // s = d * sum(q) lets a dot product with a Q4_1/Q5_1 block add the min's term cheaply.
    store_scale_f16(y + 2, static_cast<float>(sum) * d, GgmlType::q8_1, "s", b);
    std::memcpy(y + 4, q, kQK);
  }
}

void dequantize_q8_1(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ8_1Bytes, x += kQK) {
    const float d = load_f16(y);
    for (int j = 0; j < kQK; ++j) x[j] = static_cast<float>(static_cast<int8_t>(y[4 + j])) * d;
  }
}

}  // namespace lowbit::gguf::detail
