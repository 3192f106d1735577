// GGUF's K-quants: 256-value super-blocks with quantized sub-block scales (Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K) and Q8_K, the intermediate format of ggml's K-quant dot products.
//
// Each quantizer restates ggml's quantize_row_<type>_ref (ggml/src/ggml-quants.c; the
// quantizer ggml_quantize_chunk uses when no importance matrix is given) together with the
// scale searches it relies on (make_qx_quants, make_q3_quants, make_qkx2_quants), and each
// dequantizer ggml's dequantize_row_<type>. Every float operation keeps ggml's operands,
// order and int<->float conversions: the searches compare sums of squares, so one bit of
// difference anywhere can pick another scale and change many bytes. Where ggml's code has a
// quirk that decides the output (the min that make_qkx2_quants updates while it searches, an
// int8_t that wraps, nearest_int's magic-number rounding) the quirk is kept and commented.
// Block layouts are ggml-common.h's; docs/formats/gguf.md explains each field and step.
#include <algorithm>
#include <cmath>

#include "formats/gguf_block_codecs.hpp"

// See gguf_legacy.cpp: ggml's reference rounds a*b+c twice (no FMA), so contraction must
// stay off here whatever -march the library is built with.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lowbit::gguf::detail {

namespace {

// ggml's GROUP_MAX_EPS: a group whose largest magnitude is below this is treated as zeros.
constexpr float kGroupMaxEps = 1e-15f;

// Super-block sizes in bytes (sizeof(block_q*_K) in ggml-common.h) and field offsets.
constexpr int kQ2_KBytes = 16 + 64 + 2 + 2;             // scales[16], qs[64], f16 d, f16 dmin
constexpr int kQ3_KBytes = 32 + 64 + 12 + 2;            // hmask[32], qs[64], scales[12], f16 d
constexpr int kQ4_KBytes = 2 + 2 + 12 + 128;            // f16 d, f16 dmin, scales[12], qs[128]
constexpr int kQ5_KBytes = 2 + 2 + 12 + 32 + 128;       // d, dmin, scales[12], qh[32], qs[128]
constexpr int kQ6_KBytes = 128 + 64 + 16 + 2;           // ql[128], qh[64], int8 scales[16], d
constexpr int kQ8_KBytes = 4 + kQK_K + 2 * kQK_K / 16;  // f32 d, int8 qs[256], i16 bsums[16]

// ---- scale searches ----------------------------------------------------------------------

/// ggml's make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL), the only form the
/// reference quantizers use (Q6_K): a symmetric fit x ~ scale * l with l in
/// [-nmax, nmax - 1], weighted by x^2. It starts from the scale that maps the value of
/// largest magnitude to -nmax, then tries 18 nearby scales -(nmax + 0.1*is)/max and keeps
/// the one whose least-squares scale sum(w*x*l)/sum(w*l*l) explains most of the signal
/// (largest sumlx^2/suml2). Writes l + nmax to L and returns the scale.
float make_qx_quants_x2(int n, int nmax, const float* x, int8_t* L) {
  float max = 0.0f;
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.0f;
  }
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0.0f;
  float suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    const float fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = 0.0f;
    suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      const float fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        L[i] = static_cast<int8_t>(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

/// ggml's make_q3_quants(n, nmax, x, L, do_rmse = true) (Q3_K): the same symmetric start as
/// above, then up to 5 passes of coordinate descent: each l is re-chosen as the best level
/// for the scale the other elements imply, and kept only if the weighted fit improves
/// (slx^2/sl2 grows, compared cross-multiplied). Writes l + nmax to L; returns the scale.
float make_q3_quants_rmse(int n, int nmax, const float* x, int8_t* L) {
  float max = 0.0f;
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.0f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0.0f;
  float suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      const float li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      if (slx > 0.0f) {
        float sl2 = suml2 - w * li * li;
        const int new_l = std::clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          const float fl = static_cast<float>(new_l);
          slx += w * x[i] * fl;
          sl2 += w * fl * fl;
          if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (n_changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/// ggml's make_qkx2_quants (Q2_K, Q4_K, Q5_K): an asymmetric fit x ~ scale * l + min with
/// l in [0, nmax] and min <= 0, weighted by `weights`, error measured as sum(w*|diff|)
/// (use_mad) or sum(w*diff^2). It starts from the full range [min(x, 0), max(x)], then for
/// nstep + 1 candidate scales (nmax + rmin + rdelta*is)/(max - min) quantizes, solves the
/// 2x2 weighted least-squares problem for (scale, min), and keeps the candidate of lowest
/// error. Writes the levels to L, -min to *the_min, and returns the scale.
///
/// Quirk kept from ggml: `min` is overwritten by each improving candidate, and later
/// candidates' iscale and rounding offsets use that updated min, not the data's minimum.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                       bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    std::fill(L, L + n, uint8_t{0});
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::clamp(l, 0, nmax));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0.0f;
    float sum_l2 = 0.0f;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const float fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0.0f) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0.0f) {
        this_min = 0.0f;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0.0f;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ---- packing helpers -------------------------------------------------------------------

/// Q2_K/Q3_K store 2-bit codes four to a byte: within each 128-value half, byte l holds
/// values l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
    }
  }
}

/// Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes (ggml's
/// get_scale_min_k4 reads them back): sub-blocks 0..3 keep scale and min in the low 6 bits
/// of bytes 0..3 and 4..7; sub-blocks 4..7 keep their low nibbles in bytes 8..11 (scale
/// low, min high) and their top 2 bits in the top 2 bits of bytes 0..3 (scale) and 4..7 (min).
void pack_scales_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* scales) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] = ls[j];
      scales[j + 4] = lm[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

/// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7).
void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

/// Q3_K's sixteen 6-bit scales (stored biased by 32) in 12 bytes: low nibbles of scales
/// 0..7 in the low nibbles of bytes 0..7, of scales 8..15 in their high nibbles; the top
/// 2 bits of scale j in byte 8 + j%4 at bit 2*(j/4). Returns the signed scale (-32..31).
int q3_k_scale(const uint8_t* scales, int j) {
  const int low = j < 8 ? (scales[j] & 0xF) : (scales[j - 8] >> 4);
  const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

/// The 6-bit scale/min quantization shared by Q4_K and Q5_K's reference (after the
/// sub-block fits): 6-bit codes relative to the largest scale and the largest min, the two
/// f16 super-block factors, then every value re-rounded against the scales as stored.
void finish_k4_superblock(const float* x, const float* scales, const float* mins, float max_scale,
                          float max_min, int nmax, uint8_t* L, uint8_t* d_out, uint8_t* scales_out,
                          GgmlType type, int64_t block) {
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t ls[8];
  uint8_t lm[8];
  for (int j = 0; j < 8; ++j) {
    // ggml assigns nearest_int's int to a uint8_t before MIN(63, .): a negative value
    // wraps to >= 193 and is clipped to 63. Kept as is.
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
  }
  pack_scales_k4(ls, lm, scales_out);
  store_scale_f16(d_out, max_scale / 63.0f, type, "d", block);
  store_scale_f16(d_out + 2, max_min / 63.0f, type, "dmin", block);

  const float d_all = load_f16(d_out);
  const float dmin_all = load_f16(d_out + 2);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc;
    uint8_t m;
    scale_min_k4(j, scales_out, &sc, &m);
    const float d = d_all * static_cast<float>(sc);
    if (d == 0.0f) continue;  // keep the search's levels: they decode to -dm anyway
    const float dm = dmin_all * static_cast<float>(m);
    for (int i = 0; i < 32; ++i) {
      L[32 * j + i] =
          static_cast<uint8_t>(std::clamp(nearest_int((x[32 * j + i] + dm) / d), 0, nmax));
    }
  }
}

/// Q4_K/Q5_K's sub-block fit: weights av_x + |x| with av_x the sub-block's RMS, then
/// make_qkx2_quants with the type's search range.
void fit_k4_subblocks(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t* L,
                      float* scales, float* mins, float* max_scale, float* max_min) {
  float weights[32];
  uint8_t Laux[32];
  *max_scale = 0.0f;
  *max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta,
                                 nstep, false);
    if (scales[j] > *max_scale) *max_scale = scales[j];
    if (mins[j] > *max_min) *max_min = mins[j];
  }
}

}  // namespace

// ---- Q2_K: x = d*sc * q - dmin*m, q in 0..3; 16 sub-blocks of 16 -----------------------

void quantize_q2_K(const float* x, uint8_t* y, int64_t nblocks) {
  constexpr float kQ4Scale = 15.0f;
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ2_KBytes) {
    uint8_t* scales_out = y;
    uint8_t* qs = y + 16;
    uint8_t* d_out = y + 80;
    uint8_t L[kQK_K];
    uint8_t Laux[16];
    float weights[16];
    float scales[16];
    float mins[16];
    float max_scale = 0.0f;  // scales are >= 0 as the min is subtracted first
    float max_min = 0.0f;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f,
                                   0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }

    // ggml stores nearest_int's int in a uint8_t field: out-of-range values wrap.
    if (max_scale > 0.0f) {
      const float iscale = kQ4Scale / max_scale;
      for (int j = 0; j < 16; ++j)
        scales_out[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      store_scale_f16(d_out, max_scale / kQ4Scale, GgmlType::q2_K, "d", b);
    } else {
      std::fill(scales_out, scales_out + 16, uint8_t{0});
      store_u16(d_out, f32_to_f16(0.0f));
    }
    if (max_min > 0.0f) {
      const float iscale = kQ4Scale / max_min;
      for (int j = 0; j < 16; ++j) {
        const auto l = static_cast<uint32_t>(nearest_int(iscale * mins[j]));
        scales_out[j] = static_cast<uint8_t>(scales_out[j] | (l << 4));
      }
      store_scale_f16(d_out + 2, max_min / kQ4Scale, GgmlType::q2_K, "dmin", b);
    } else {
      store_u16(d_out + 2, f32_to_f16(0.0f));
    }

    // Re-round every value against the scales as stored.
    const float d_all = load_f16(d_out);
    const float dmin_all = load_f16(d_out + 2);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * static_cast<float>(scales_out[j] & 0xF);
      if (d == 0.0f) continue;
      const float dm = dmin_all * static_cast<float>(scales_out[j] >> 4);
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] =
            static_cast<uint8_t>(std::clamp(nearest_int((x[16 * j + i] + dm) / d), 0, 3));
      }
    }
    pack_2bit(L, qs);
  }
}

void dequantize_q2_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ2_KBytes) {
    const uint8_t* scales = y;
    const uint8_t* q = y + 16;
    const float d = load_f16(y + 80);
    const float min = load_f16(y + 82);
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part) {  // values l of bytes part*16 + l
          const uint8_t sc = scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF);
          const float ml = min * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l) {
            *x++ = dl * static_cast<float>((q[part * 16 + l] >> shift) & 3) - ml;
          }
        }
      }
    }
  }
}

// ---- Q3_K: x = d*(sc - 32) * (q - 4), q in 0..7; 16 sub-blocks of 16 --------------------

void quantize_q3_K(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ3_KBytes) {
    uint8_t* hmask = y;
    uint8_t* qs = y + 32;
    uint8_t* scales_out = y + 96;
    uint8_t* d_out = y + 108;
    int8_t L[kQK_K];
    float scales[16];
    float max_scale = 0.0f;  // the sub-block scale of largest magnitude, with its sign
    float amax = 0.0f;
    for (int j = 0; j < 16; ++j) {
      scales[j] = make_q3_quants_rmse(16, 4, x + 16 * j, L + 16 * j);
      const float scale = std::fabs(scales[j]);
      if (scale > amax) {
        amax = scale;
        max_scale = scales[j];
      }
    }

    std::fill(scales_out, scales_out + 12, uint8_t{0});
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        // ggml: int8_t l = nearest_int(.); l = MAX(-32, MIN(31, l)) + 32; then l >>= 4.
        int8_t l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
        l = static_cast<int8_t>(std::clamp<int>(l, -32, 31) + 32);
        if (j < 8) {
          scales_out[j] = static_cast<uint8_t>(l & 0xF);
        } else {
          scales_out[j - 8] = static_cast<uint8_t>(scales_out[j - 8] | ((l & 0xF) << 4));
        }
        l = static_cast<int8_t>(l >> 4);
        scales_out[j % 4 + 8] = static_cast<uint8_t>(scales_out[j % 4 + 8] | (l << (2 * (j / 4))));
      }
      store_scale_f16(d_out, 1.0f / iscale, GgmlType::q3_K, "d", b);
    } else {
      store_u16(d_out, f32_to_f16(0.0f));
    }

    const float d_all = load_f16(d_out);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * static_cast<float>(q3_k_scale(scales_out, j));
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<int8_t>(std::clamp(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
      }
    }

    // The high bit of code j goes to bit j/32 of hmask[j%32]; the low 2 bits pack like Q2_K.
    std::fill(hmask, hmask + 32, uint8_t{0});
    uint8_t low[kQK_K];
    for (int j = 0; j < kQK_K; ++j) {
      int l = L[j];
      if (l > 3) {
        hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1u << (j / 32)));
        l -= 4;
      }
      low[j] = static_cast<uint8_t>(l);
    }
    pack_2bit(low, qs);
  }
}

void dequantize_q3_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ3_KBytes) {
    const uint8_t* hm = y;
    const uint8_t* q = y + 32;
    const uint8_t* scales = y + 96;
    const float d_all = load_f16(y + 108);
    int is = 0;
    uint8_t m = 1;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, m = static_cast<uint8_t>(m << 1)) {
        for (int part = 0; part < 2; ++part) {
          const float dl = d_all * static_cast<float>(q3_k_scale(scales, is++));
          for (int l = 0; l < 16; ++l) {
            const int k = part * 16 + l;
            // A clear hmask bit means the code is q - 4 (ggml subtracts 4 when it is 0).
            const int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
            *x++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

// ---- Q4_K: x = d*sc * q - dmin*m, q in 0..15; 8 sub-blocks of 32 ------------------------

void quantize_q4_K(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ4_KBytes) {
    uint8_t L[kQK_K];
    float scales[8];
    float mins[8];
    float max_scale;
    float max_min;
    fit_k4_subblocks(x, 15, -1.0f, 0.1f, 20, L, scales, mins, &max_scale, &max_min);
    finish_k4_superblock(x, scales, mins, max_scale, max_min, 15, L, y, y + 4, GgmlType::q4_K, b);
    // 4-bit codes: within each 64-value chunk, byte l holds value l (low nibble) and
    // value l + 32 (high nibble).
    uint8_t* q = y + 16;
    for (int j = 0; j < kQK_K; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    }
  }
}

void dequantize_q4_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ4_KBytes) {
    const float d = load_f16(y);
    const float min = load_f16(y + 2);
    const uint8_t* scales = y + 4;
    const uint8_t* q = y + 16;
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc;
      uint8_t m;
      scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = min * static_cast<float>(m);
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *x++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *x++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// ---- Q5_K: x = d*sc * q - dmin*m, q in 0..31; 8 sub-blocks of 32 ------------------------

void quantize_q5_K(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ5_KBytes) {
    uint8_t L[kQK_K];
    float scales[8];
    float mins[8];
    float max_scale;
    float max_min;
    fit_k4_subblocks(x, 31, -0.5f, 0.1f, 15, L, scales, mins, &max_scale, &max_min);
    finish_k4_superblock(x, scales, mins, max_scale, max_min, 31, L, y, y + 4, GgmlType::q5_K, b);
    // Low nibbles as in Q4_K; the fifth bit of value n + j (n = 64c) goes to bit 2c of
    // qh[j], that of value n + j + 32 to bit 2c + 1.
    uint8_t* qh = y + 16;
    uint8_t* ql = y + 48;
    std::fill(qh, qh + 32, uint8_t{0});
    uint8_t m1 = 1;
    uint8_t m2 = 2;
    for (int n = 0; n < kQK_K; n += 64, ql += 32) {
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
}

void dequantize_q5_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ5_KBytes) {
    const float d = load_f16(y);
    const float min = load_f16(y + 2);
    const uint8_t* scales = y + 4;
    const uint8_t* qh = y + 16;
    const uint8_t* ql = y + 48;
    uint8_t u1 = 1;
    uint8_t u2 = 2;
    for (int is = 0; is < 8; is += 2, ql += 32) {
      uint8_t sc;
      uint8_t m;
      scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = min * static_cast<float>(m);
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        *x++ = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *x++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
      }
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

// ---- Q6_K: x = d*sc * (q - 32), q in 0..63, sc int8; 16 sub-blocks of 16 ---------------

void quantize_q6_K(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ6_KBytes) {
    uint8_t* ql = y;
    uint8_t* qh = y + 128;
    auto* scales_out = reinterpret_cast<int8_t*>(y + 192);
    uint8_t* d_out = y + 208;
    int8_t L[kQK_K];
    float scales[16];
    float max_scale = 0.0f;  // the sub-block scale of largest magnitude, with its sign
    float max_abs_scale = 0.0f;
    for (int ib = 0; ib < 16; ++ib) {
      scales[ib] = make_qx_quants_x2(16, 32, x + 16 * ib, L + 16 * ib);
      const float abs_scale = std::fabs(scales[ib]);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::fill(y, y + kQ6_KBytes, uint8_t{0});  // ggml: memset, then d = +0
      continue;
    }

    const float iscale = -128.0f / max_scale;
    store_scale_f16(d_out, 1.0f / iscale, GgmlType::q6_K, "d", b);
    for (int ib = 0; ib < 16; ++ib) {
      scales_out[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    }

    const float d_all = load_f16(d_out);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * static_cast<float>(scales_out[j]);
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] =
            static_cast<int8_t>(std::clamp(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
      }
    }

    // Within each 128-value half: ql[l] holds values l (low nibble) and l+64 (high),
    // ql[l+32] values l+32 and l+96; qh[l] holds the top 2 bits of l, l+32, l+64, l+96 at
    // bits 0, 2, 4, 6.
    for (int j = 0; j < kQK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int v0 = L[j + l];
        const int v1 = L[j + l + 32];
        const int v2 = L[j + l + 64];
        const int v3 = L[j + l + 96];
        ql[l] = static_cast<uint8_t>((v0 & 0xF) | ((v2 & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((v1 & 0xF) | ((v3 & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((v0 >> 4) | ((v1 >> 4) << 2) | ((v2 >> 4) << 4) |
                                     ((v3 >> 4) << 6));
      }
    }
  }
}

void dequantize_q6_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ6_KBytes) {
    const uint8_t* ql = y;
    const uint8_t* qh = y + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(y + 192);
    const float d = load_f16(y + 208);
    for (int n = 0; n < kQK_K; n += 128, x += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        // ggml: d * sc[is] * q, evaluated left to right.
        x[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
        x[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        x[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        x[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

// ---- Q8_K: x = d * q, d an f32, q in -128..127 (in practice -127..127) -----------------

void quantize_q8_K(const float* x, uint8_t* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, x += kQK_K, y += kQ8_KBytes) {
    auto* qs = reinterpret_cast<int8_t*>(y + 4);
    float max = 0.0f;
    float amax = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      // ggml zeroes d and qs and leaves bsums unwritten; we write zeros there too, which
      // is what they sum to.
      std::fill(y, y + kQ8_KBytes, uint8_t{0});
      continue;
    }
    // -127 rather than -128 (ggml: "needed for IQ2_XXS"): the extreme maps to -127.
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j)
      qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < kQK_K / 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += qs[16 * j + i];
      const auto s16 = static_cast<int16_t>(sum);
      std::memcpy(y + 4 + kQK_K + 2 * j, &s16, sizeof s16);
    }
    const float d = 1.0f / iscale;
    std::memcpy(y, &d, sizeof d);
  }
}

void dequantize_q8_K(const uint8_t* y, float* x, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kQ8_KBytes, x += kQK_K) {
    float d;
    std::memcpy(&d, y, sizeof d);
    for (int j = 0; j < kQK_K; ++j) x[j] = d * static_cast<float>(static_cast<int8_t>(y[4 + j]));
  }
}

}  // namespace lowbit::gguf::detail
