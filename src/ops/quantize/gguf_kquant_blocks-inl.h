// The GGUF K-quant super-blocks of the SIMD quantize kernel (gguf_quantize_simd.cpp):
// Q4_K / Q5_K (KBlock), Q6_K, Q2_K, Q3_K and Q8_K, each one 256-value super-block of f32
// values: the sub-block fits of gguf_kquant_fit-inl.h, then gguf_kquants.cpp's scalar scale
// quantization, re-rounding and bit packing. For Highway's foreach_target pattern; the
// including file turns FMA contraction off.
#if defined(LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_BLOCKS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_BLOCKS_INL_H_
#undef LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_BLOCKS_INL_H_
#else
#define LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_BLOCKS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "formats/gguf_block_codecs.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/numeric.hpp"
#include "ops/quantize/gguf_kquant_fit-inl.h"
#include "ops/quantize/gguf_quant_lanes-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace gguf_simd {

using gguf::GgmlType;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

// ---- Q4_K / Q5_K -------------------------------------------------------------------------------

/// One Q4_K / Q5_K super-block from the f32 values x (gguf_kquants.cpp's quantize_q4_K /
/// quantize_q5_K). False: an f16 field overflows (quantize_reference must judge).
template <GgmlType T>
HWY_INLINE bool KBlock(const float* x, uint8_t* y) {
  constexpr bool k5 = T == GgmlType::q5_K;
  constexpr int nmax = k5 ? 31 : 15;
  uint8_t L[256];
  float scales[8], mins[8];
  const int nl = static_cast<int>(hn::Lanes(hn::CappedTag<float, 8>()));
  for (int s0 = 0; s0 < 8; s0 += nl)
    FitQkx2Lanes<32, false>(x, s0, nmax, k5 ? -0.5f : -1.0f, 0.1f, k5 ? 15 : 20, L, scales, mins);
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  // finish_k4_superblock.
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<uint8_t>(
        63, static_cast<uint8_t>(gguf::detail::nearest_int(inv_scale * scales[j])));
    lm[j] =
        std::min<uint8_t>(63, static_cast<uint8_t>(gguf::detail::nearest_int(inv_min * mins[j])));
  }
  uint8_t* sc = y + 4;
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = ls[j];
      sc[j + 4] = lm[j];
    } else {
      sc[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      sc[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      sc[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
  const uint16_t hd = f32_to_f16(max_scale / 63.0f);
  const uint16_t hm = f32_to_f16(max_min / 63.0f);
  if ((hd & 0x7fffu) == 0x7c00u || (hm & 0x7fffu) == 0x7c00u) return false;
  std::memcpy(y, &hd, 2);
  std::memcpy(y + 2, &hm, 2);
  const float d_all = f16_to_f32(hd);
  const float dmin_all = f16_to_f32(hm);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    if (j < 4) {
      s = sc[j] & 63;
      m = sc[j + 4] & 63;
    } else {
      s = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
      m = static_cast<uint8_t>((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
    }
    const float dd = d_all * static_cast<float>(s);
    if (dd == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(m);
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] = static_cast<uint8_t>(
          std::clamp(gguf::detail::nearest_int((x[32 * j + i] + dm) / dd), 0, nmax));
  }
  if constexpr (!k5) {
    uint8_t* q = y + 16;
    for (int j = 0; j < 256; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  } else {
    uint8_t* qh = y + 16;
    uint8_t* ql = y + 48;
    std::memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < 256; n += 64, ql += 32) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[n + j];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        int l2 = L[n + j + 32];
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 = static_cast<uint8_t>(m1 << 2);
      m2 = static_cast<uint8_t>(m2 << 2);
    }
  }
  return true;
}

// ---- Q6_K --------------------------------------------------------------------------------------

/// One Q6_K super-block (gguf_kquants.cpp's quantize_q6_K). False: d overflows f16.
HWY_INLINE bool Q6Block(const float* x, uint8_t* y) {
  int8_t L[256];
  float scales[16];
  const int nl = static_cast<int>(hn::Lanes(DQ()));
  for (int s0 = 0; s0 < 16; s0 += nl) FitQ6Lanes(x, s0, L, scales);
  float max_scale = 0.0f, max_abs_scale = 0.0f;
  for (int ib = 0; ib < 16; ++ib) {
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < 1e-15f) {
    std::memset(y, 0, 210);
    return true;
  }
  auto* scales_out = reinterpret_cast<int8_t*>(y + 192);
  const float iscale = -128.0f / max_scale;
  const uint16_t hd = f32_to_f16(1.0f / iscale);
  if ((hd & 0x7fffu) == 0x7c00u) return false;
  std::memcpy(y + 208, &hd, 2);
  for (int ib = 0; ib < 16; ++ib)
    scales_out[ib] =
        static_cast<int8_t>(std::min(127, gguf::detail::nearest_int(iscale * scales[ib])));
  const float d_all = f16_to_f32(hd);
  for (int j = 0; j < 16; ++j) {
    const float dd = d_all * static_cast<float>(scales_out[j]);
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(
          std::clamp(gguf::detail::nearest_int(x[16 * j + i] / dd), -32, 31) + 32);
  }
  uint8_t* ql = y;
  uint8_t* qh = y + 128;
  for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int v0 = L[j + l], v1 = L[j + l + 32], v2 = L[j + l + 64], v3 = L[j + l + 96];
      ql[l] = static_cast<uint8_t>((v0 & 0xF) | ((v2 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((v1 & 0xF) | ((v3 & 0xF) << 4));
      qh[l] =
          static_cast<uint8_t>((v0 >> 4) | ((v1 >> 4) << 2) | ((v2 >> 4) << 4) | ((v3 >> 4) << 6));
    }
  }
  return true;
}

// ---- Q2_K: make_qkx2_quants (|x| weights, absolute errors) with one sub-block per lane ----------

/// One Q2_K super-block (gguf_kquants.cpp's quantize_q2_K). False: an f16 field overflows.
HWY_INLINE bool Q2Block(const float* x, uint8_t* y) {
  constexpr float kQ4Scale = 15.0f;
  uint8_t L[256];
  float scales[16], mins[16];
  const int nl = static_cast<int>(hn::Lanes(hn::CappedTag<float, 16>()));
  for (int s0 = 0; s0 < 16; s0 += nl)
    FitQkx2Lanes<16, true>(x, s0, 3, -0.5f, 0.1f, 15, L, scales, mins);
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 16; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  uint8_t* scales_out = y;
  uint8_t* d_out = y + 80;
  if (max_scale > 0.0f) {
    const float iscale = kQ4Scale / max_scale;
    for (int j = 0; j < 16; ++j)
      scales_out[j] = static_cast<uint8_t>(gguf::detail::nearest_int(iscale * scales[j]));
    const uint16_t h = f32_to_f16(max_scale / kQ4Scale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(d_out, &h, 2);
  } else {
    std::memset(scales_out, 0, 16);
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(d_out, &h, 2);
  }
  if (max_min > 0.0f) {
    const float iscale = kQ4Scale / max_min;
    for (int j = 0; j < 16; ++j) {
      const auto l = static_cast<uint32_t>(gguf::detail::nearest_int(iscale * mins[j]));
      scales_out[j] = static_cast<uint8_t>(scales_out[j] | (l << 4));
    }
    const uint16_t h = f32_to_f16(max_min / kQ4Scale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(d_out + 2, &h, 2);
  } else {
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(d_out + 2, &h, 2);
  }
  uint16_t hd, hm;
  std::memcpy(&hd, d_out, 2);
  std::memcpy(&hm, d_out + 2, 2);
  const float d_all = f16_to_f32(hd);
  const float dmin_all = f16_to_f32(hm);
  for (int j = 0; j < 16; ++j) {
    const float dd = d_all * static_cast<float>(scales_out[j] & 0xF);
    if (dd == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(scales_out[j] >> 4);
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<uint8_t>(
          std::clamp(gguf::detail::nearest_int((x[16 * j + i] + dm) / dd), 0, 3));
  }
  uint8_t* qs = y + 16;
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
  return true;
}

// ---- Q3_K --------------------------------------------------------------------------------------

/// One Q3_K super-block (gguf_kquants.cpp's quantize_q3_K). False: d overflows f16.
HWY_INLINE bool Q3Block(const float* x, uint8_t* y) {
  uint8_t* hmask = y;
  uint8_t* scales_out = y + 96;
  int8_t L[256];
  float scales[16];
  const int nl = static_cast<int>(hn::Lanes(DQ()));
  for (int s0 = 0; s0 < 16; s0 += nl) FitQ3Lanes(x, s0, L, scales);
  float max_scale = 0.0f, amax = 0.0f;
  for (int j = 0; j < 16; ++j) {
    const float scale = std::fabs(scales[j]);
    if (scale > amax) {
      amax = scale;
      max_scale = scales[j];
    }
  }
  std::memset(scales_out, 0, 12);
  if (max_scale != 0.0f) {
    const float iscale = -32.0f / max_scale;
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(gguf::detail::nearest_int(iscale * scales[j]));
      l = static_cast<int8_t>(std::clamp<int>(l, -32, 31) + 32);
      if (j < 8) {
        scales_out[j] = static_cast<uint8_t>(l & 0xF);
      } else {
        scales_out[j - 8] = static_cast<uint8_t>(scales_out[j - 8] | ((l & 0xF) << 4));
      }
      l = static_cast<int8_t>(l >> 4);
      scales_out[j % 4 + 8] = static_cast<uint8_t>(scales_out[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    const uint16_t h = f32_to_f16(1.0f / iscale);
    if ((h & 0x7fffu) == 0x7c00u) return false;
    std::memcpy(y + 108, &h, 2);
  } else {
    const uint16_t h = f32_to_f16(0.0f);
    std::memcpy(y + 108, &h, 2);
  }
  uint16_t hd;
  std::memcpy(&hd, y + 108, 2);
  const float d_all = f16_to_f32(hd);
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (scales_out[j] & 0xF) : (scales_out[j - 8] >> 4);
    const int high = (scales_out[8 + j % 4] >> (2 * (j / 4))) & 3;
    const float dd = d_all * static_cast<float>((low | (high << 4)) - 32);
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] =
          static_cast<int8_t>(std::clamp(gguf::detail::nearest_int(x[16 * j + i] / dd), -4, 3) + 4);
  }
  std::memset(hmask, 0, 32);
  uint8_t low[256];
  for (int j = 0; j < 256; ++j) {
    int l = L[j];
    if (l > 3) {
      hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1u << (j / 32)));
      l -= 4;
    }
    low[j] = static_cast<uint8_t>(l);
  }
  uint8_t* qs = y + 32;
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(low[j + l] | (low[j + l + 32] << 2) |
                                           (low[j + l + 64] << 4) | (low[j + l + 96] << 6));
  return true;
}

// ---- Q8_K --------------------------------------------------------------------------------------

/// gguf_kquants.cpp's quantize_q8_K: the first value of largest |x| maps to -127, q =
/// MIN(127, nearest_int(iscale * x)), sums of 16 codes as int16, d = 1 / iscale as f32.
HWY_INLINE void Q8KBlock(const float* x, uint8_t* y) {
  const DF df;
  const DI di;
  float max = 0.0f, amax = 0.0f;
  for (int j = 0; j < 256; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  if (amax == 0.0f) {
    std::memset(y, 0, 292);
    return;
  }
  const float iscale = -127.0f / max;
  const VF vs = hn::Set(df, iscale);
  HWY_ALIGN int32_t q[256];
  for (int64_t v = 0; v < 256; v += kN)
    hn::Store(hn::Min(GgmlNearestIntV(hn::Mul(vs, hn::Load(df, x + v))), hn::Set(di, 127)), di,
              q + v);
  for (int j = 0; j < 256; ++j) y[4 + j] = static_cast<uint8_t>(static_cast<int8_t>(q[j]));
  for (int j = 0; j < 16; ++j) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += static_cast<int8_t>(q[16 * j + i]);
    const auto s16 = static_cast<int16_t>(sum);
    std::memcpy(y + 4 + 256 + 2 * j, &s16, 2);
  }
  const float d = 1.0f / iscale;
  std::memcpy(y, &d, 4);
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace gguf_simd
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_QUANTIZE_GGUF_KQUANT_BLOCKS_INL_H_
