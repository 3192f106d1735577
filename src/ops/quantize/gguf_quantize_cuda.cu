// A CUDA quantize kernel for every GGUF block type the reference quantizes (q4_0, q4_1, q5_0,
// q5_1, q8_0, q8_1, q2_K, q3_K, q4_K, q5_K, q6_K, q8_K) from f32, f16 or bf16 (contiguous),
// byte-identical to quantize_reference.cpp, which calls gguf::quantize_row_reference
// (formats/gguf_legacy.cpp, formats/gguf_kquants.cpp: ggml's quantize_row_*_ref).
//
// quantize_cuda (listed before this kernel) serves q8_0 and q4_0 with a tuned path; this
// kernel serves the other types, and q8_0 / q4_0 too when it is asked for by name.
//
// Work split: one thread per block (32 values) or K-quant super-block (256 values): the
// thread reads its values into local memory, runs the reference's algorithm on them (for
// the K-quants the per-sub-block scale searches, one after the other) and writes the
// block's bytes. Correctness and coverage first: the K-quant searches are long serial loops
// per thread (a few hundred operations per value), which the GPU hides only through the
// number of super-blocks in flight.
//
// Bits: each function below restates its reference counterpart line for line (same
// operands, same order, same int <-> float conversions, ggml's nearest_int and x86's
// float -> int8 cast), with every f32 operation spelled as an intrinsic that rounds once
// (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn): nvcc may not contract them into
// FMAs, and the reference is compiled without contraction. NaNs that arise inside the
// arithmetic (1/d overflowing for blocks of values near FLT_MIN, then 0 * Inf) take x86's
// bits, because nearest_int turns them into codes (see mul() below). Not promised: an
// operation on two NaNs of different bits, where x86 returns the one its compiler put first.
//
// Checks, as quantize_cuda does them: with desc.check_finite (the default) the kernel
// reports the first non-finite element and the first block whose f16 scale / min would
// overflow into two words of a per-call device buffer; run() reads them back (synchronising
// the stream) and throws the reference's own Error text (the overflow's by re-running the
// reference quantizer on that row on the host). With check_finite off there is no check and
// no synchronisation, and such inputs give unspecified (memory-safe) bytes.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <string>
#include <vector>

#include "core/check_report_impl.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/quantize.hpp"  // before quantize_cuda_common.cuh, which needs Dtype
#include "ops/quantize/gguf_cuda_x86.cuh"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using namespace quant_cuda;
using namespace gguf_cuda;
using gguf::GgmlType;

constexpr int kThreads = 128;

// ---- f32 arithmetic as ggml's x86 build does it ------------------------------------------
// (mul / add / sub and the rules in gguf_cuda_x86.cuh; the operations only quantize needs:)

__device__ __forceinline__ float dvd(float a, float b) {
  const float r = __fdiv_rn(a, b);
  return r == r ? r : x86_nan(a, b);
}
__device__ __forceinline__ float sqrt_x86(float a) {
  const float r = __fsqrt_rn(a);
  return r == r ? r : x86_nan(a, a);
}
/// -a and |a| as sign-bit operations (xorps / andps on x86; PTX leaves NaN results of
/// neg.f32 / abs.f32 unspecified).
__device__ __forceinline__ float neg(float a) {
  return __uint_as_float(__float_as_uint(a) ^ 0x80000000u);
}
__device__ __forceinline__ float absf(float a) {
  return __uint_as_float(__float_as_uint(a) & 0x7fffffffu);
}
__device__ __forceinline__ int clampi(int v, int lo, int hi) { return min(max(v, lo), hi); }

/// gguf_block_codecs.hpp's nearest_int (ggml's): add 1.5 * 2^23, read the low mantissa bits.
__device__ __forceinline__ int nearest_int(float f) {
  const float biased = add(f, 12582912.0f);
  return (__float_as_int(biased) & 0x007fffff) - 0x00400000;
}
__device__ __forceinline__ int8_t float_to_int8_x86(float v) {
  return static_cast<int8_t>(float_to_byte_x86(v));
}

// ---- block output -------------------------------------------------------------------------

/// A block being written (in local memory) and whether a scale field overflowed f16.
struct Out {
  uint8_t* y;
  bool overflow = false;
};

__device__ __forceinline__ void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
/// store_scale_f16: GGML_FP32_TO_FP16 (RNE); an overflow to +-Inf is the reference's Error.
__device__ __forceinline__ void put_scale(Out& o, int off, float v) {
  const uint16_t h = f32_to_f16(v);
  if ((h & 0x7fffu) == 0x7c00u) o.overflow = true;
  put_u16(o.y + off, h);
}

// ---- legacy 32-value blocks (gguf_legacy.cpp) ------------------------------------------------

__device__ __forceinline__ float signed_absmax(const float* x) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < absf(x[j])) {
      amax = absf(x[j]);
      max = x[j];
    }
  }
  return max;
}

__device__ __forceinline__ void block_min_max(const float* x, float& lo, float& hi) {
  lo = FLT_MAX;
  hi = -FLT_MAX;
  for (int j = 0; j < 32; ++j) {
    if (x[j] < lo) lo = x[j];
    if (x[j] > hi) hi = x[j];
  }
}

__device__ __forceinline__ void pack_5bit(const uint8_t* q, uint8_t* qh_out, uint8_t* qs_out) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const uint8_t lo = q[j];
    const uint8_t hi = q[j + 16];
    qs_out[j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
    qh |= ((lo & 0x10u) >> 4) << j;
    qh |= ((hi & 0x10u) >> 4) << (j + 16);
  }
  for (int k = 0; k < 4; ++k) qh_out[k] = static_cast<uint8_t>(qh >> (8 * k));
}

__device__ void quantize_q4_0(const float* x, Out& o) {
  const float max = signed_absmax(x);
  const float d = dvd(max, -8.0f);
  const float id = d != 0.0f ? dvd(1.0f, d) : 0.0f;
  put_scale(o, 0, d);
  for (int j = 0; j < 16; ++j) {
    const float x0 = mul(x[j], id);
    const float x1 = mul(x[j + 16], id);
    const int q0 = min(15, static_cast<int>(float_to_int8_x86(add(x0, 8.5f))));
    const int q1 = min(15, static_cast<int>(float_to_int8_x86(add(x1, 8.5f))));
    o.y[2 + j] = static_cast<uint8_t>(static_cast<uint8_t>(q0) | (static_cast<uint8_t>(q1) << 4));
  }
}

__device__ void quantize_q4_1(const float* x, Out& o) {
  float lo, hi;
  block_min_max(x, lo, hi);
  const float d = dvd(sub(hi, lo), 15.0f);
  const float id = d != 0.0f ? dvd(1.0f, d) : 0.0f;
  put_scale(o, 0, d);
  put_scale(o, 2, lo);
  for (int j = 0; j < 16; ++j) {
    const float x0 = mul(sub(x[j], lo), id);
    const float x1 = mul(sub(x[j + 16], lo), id);
    const int q0 = min(15, static_cast<int>(float_to_int8_x86(add(x0, 0.5f))));
    const int q1 = min(15, static_cast<int>(float_to_int8_x86(add(x1, 0.5f))));
    o.y[4 + j] = static_cast<uint8_t>(static_cast<uint8_t>(q0) | (static_cast<uint8_t>(q1) << 4));
  }
}

__device__ void quantize_q5_0(const float* x, Out& o) {
  const float max = signed_absmax(x);
  const float d = dvd(max, -16.0f);
  const float id = d != 0.0f ? dvd(1.0f, d) : 0.0f;
  put_scale(o, 0, d);
  uint8_t q[32];
  for (int j = 0; j < 32; ++j)
    q[j] = static_cast<uint8_t>(
        min(31, static_cast<int>(float_to_int8_x86(add(mul(x[j], id), 16.5f)))));
  pack_5bit(q, o.y + 2, o.y + 6);
}

__device__ void quantize_q5_1(const float* x, Out& o) {
  float lo, hi;
  block_min_max(x, lo, hi);
  const float d = dvd(sub(hi, lo), 31.0f);
  const float id = d != 0.0f ? dvd(1.0f, d) : 0.0f;
  put_scale(o, 0, d);
  put_scale(o, 2, lo);
  uint8_t q[32];
  for (int j = 0; j < 32; ++j) q[j] = float_to_byte_x86(add(mul(sub(x[j], lo), id), 0.5f));
  pack_5bit(q, o.y + 4, o.y + 8);
}

/// Q8_0 / Q8_1: d = amax / 127, q = roundf(x * (1/d)). `off`: where the codes start.
__device__ void quantize_q8(const float* x, Out& o, bool q8_1) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = fmaxf(amax, absf(x[j]));
  const float d = dvd(amax, 127.0f);
  const float id = d != 0.0f ? dvd(1.0f, d) : 0.0f;
  const int off = q8_1 ? 4 : 2;
  int sum = 0;
  for (int j = 0; j < 32; ++j) {
    const int8_t q = float_to_int8_x86(roundf(mul(x[j], id)));
    o.y[off + j] = static_cast<uint8_t>(q);
    sum += q;
  }
  put_scale(o, 0, d);
  if (q8_1) put_scale(o, 2, mul(fl(sum), d));
}

// ---- K-quant scale searches (gguf_kquants.cpp) ------------------------------------------------

constexpr float kGroupMaxEps = 1e-15f;

/// make_qx_quants_x2 (Q6_K): n = 16, symmetric, weights x^2, 18 candidate scales.
__device__ float make_qx_quants_x2(int n, int nmax, const float* x, int8_t* L) {
  float max = 0.0f, amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = absf(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  float iscale = dvd(fl(-nmax), max);
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = mul(x[i], x[i]);
    const float f = fl(l);
    sumlx = add(sumlx, mul(mul(w, x[i]), f));
    suml2 = add(suml2, mul(mul(w, f), f));
  }
  float scale = suml2 != 0.0f ? dvd(sumlx, suml2) : 0.0f;
  float best = mul(scale, sumlx);
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = dvd(neg(add(fl(nmax), mul(0.1f, fl(is)))), max);
    sumlx = 0.0f;
    suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
      const float w = mul(x[i], x[i]);
      const float f = fl(l);
      sumlx = add(sumlx, mul(mul(w, x[i]), f));
      suml2 = add(suml2, mul(mul(w, f), f));
    }
    if (suml2 > 0.0f && mul(sumlx, sumlx) > mul(best, suml2)) {
      for (int i = 0; i < n; ++i)
        L[i] = static_cast<int8_t>(nmax + clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1));
      scale = dvd(sumlx, suml2);
      best = mul(scale, sumlx);
    }
  }
  return scale;
}

/// make_q3_quants_rmse (Q3_K): symmetric start, then up to 5 coordinate-descent passes.
__device__ float make_q3_quants_rmse(int n, int nmax, const float* x, int8_t* L) {
  float max = 0.0f, amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = absf(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float iscale = dvd(fl(-nmax), max);
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = mul(x[i], x[i]);
    sumlx = add(sumlx, mul(mul(w, x[i]), fl(l)));
    suml2 = add(suml2, mul(mul(w, fl(l)), fl(l)));
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = mul(x[i], x[i]);
      const float li = fl(L[i]);
      float slx = sub(sumlx, mul(mul(w, x[i]), li));
      if (slx > 0.0f) {
        float sl2 = sub(suml2, mul(mul(w, li), li));
        const int new_l = clampi(nearest_int(dvd(mul(x[i], sl2), slx)), -nmax, nmax - 1);
        if (new_l != L[i]) {
          const float f = fl(new_l);
          slx = add(slx, mul(mul(w, x[i]), f));
          sl2 = add(sl2, mul(mul(w, f), f));
          if (sl2 > 0.0f && mul(mul(slx, slx), suml2) > mul(mul(sumlx, sumlx), sl2)) {
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
  return suml2 > 0.0f ? dvd(sumlx, suml2) : 0.0f;
}

/// make_qkx2_quants (Q2_K, Q4_K, Q5_K), with ggml's quirk: `min` follows the best candidate.
__device__ float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                                  float* the_min, uint8_t* Laux, float rmin, float rdelta,
                                  int nstep, bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = mul(sum_w, x[0]);
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w = add(sum_w, w);
    sum_x = add(sum_x, mul(w, x[i]));
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = neg(min);
    return 0.0f;
  }
  float iscale = dvd(fl(nmax), sub(max, min));
  float scale = dvd(1.0f, iscale);
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(mul(iscale, sub(x[i], min)));
    L[i] = static_cast<uint8_t>(clampi(l, 0, nmax));
    float diff = sub(add(mul(scale, fl(L[i])), min), x[i]);
    diff = use_mad ? absf(diff) : mul(diff, diff);
    best_error = add(best_error, mul(weights[i], diff));
  }
  if (nstep < 1) {
    *the_min = neg(min);
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = dvd(add(add(rmin, mul(rdelta, fl(is))), fl(nmax)), sub(max, min));
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(mul(iscale, sub(x[i], min))), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const float f = fl(l);
      sum_l = add(sum_l, mul(w, f));
      sum_l2 = add(sum_l2, mul(mul(w, f), f));
      sum_xl = add(sum_xl, mul(mul(w, f), x[i]));
    }
    const float D = sub(mul(sum_w, sum_l2), mul(sum_l, sum_l));
    if (D > 0.0f) {
      float this_scale = dvd(sub(mul(sum_w, sum_xl), mul(sum_x, sum_l)), D);
      float this_min = dvd(sub(mul(sum_l2, sum_x), mul(sum_l, sum_xl)), D);
      if (this_min > 0.0f) {
        this_min = 0.0f;
        this_scale = dvd(sum_xl, sum_l2);
      }
      float cur_error = 0.0f;
      for (int i = 0; i < n; ++i) {
        float diff = sub(add(mul(this_scale, fl(Laux[i])), this_min), x[i]);
        diff = use_mad ? absf(diff) : mul(diff, diff);
        cur_error = add(cur_error, mul(weights[i], diff));
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = neg(min);
  return scale;
}

// ---- K-quant packing ------------------------------------------------------------------------

__device__ void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
}

__device__ void pack_scales_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* scales) {
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

/// finish_k4_superblock: 6-bit scales / mins, d and dmin at y + 0 / 2, scales at y + 4, then
/// every value re-rounded against the stored scales.
__device__ void finish_k4_superblock(const float* x, const float* scales, const float* mins,
                                     float max_scale, float max_min, int nmax, uint8_t* L, Out& o) {
  const float inv_scale = max_scale > 0.0f ? dvd(63.0f, max_scale) : 0.0f;
  const float inv_min = max_min > 0.0f ? dvd(63.0f, max_min) : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    // nearest_int's int into a uint8_t (wraps), then MIN(63, .), as ggml.
    ls[j] = min(63, static_cast<int>(static_cast<uint8_t>(nearest_int(mul(inv_scale, scales[j])))));
    lm[j] = min(63, static_cast<int>(static_cast<uint8_t>(nearest_int(mul(inv_min, mins[j])))));
  }
  uint8_t* scales_out = o.y + 4;
  pack_scales_k4(ls, lm, scales_out);
  put_scale(o, 0, dvd(max_scale, 63.0f));
  put_scale(o, 2, dvd(max_min, 63.0f));
  const float d_all = f16_at(o.y);
  const float dmin_all = f16_at(o.y + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, scales_out, sc, m);
    const float d = mul(d_all, fl(sc));
    if (d == 0.0f) continue;
    const float dm = mul(dmin_all, fl(m));
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] =
          static_cast<uint8_t>(clampi(nearest_int(dvd(add(x[32 * j + i], dm), d)), 0, nmax));
  }
}

__device__ void fit_k4_subblocks(const float* x, int nmax, float rmin, float rdelta, int nstep,
                                 uint8_t* L, float* scales, float* mins, float& max_scale,
                                 float& max_min) {
  float weights[32];
  uint8_t Laux[32];
  max_scale = 0.0f;
  max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 = add(sum_x2, mul(xs[l], xs[l]));
    const float av_x = sqrt_x86(dvd(sum_x2, 32.0f));
    for (int l = 0; l < 32; ++l) weights[l] = add(av_x, absf(xs[l]));
    scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta,
                                 nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
}

// ---- K-quant super-blocks ---------------------------------------------------------------------

__device__ void quantize_q2_K(const float* x, Out& o) {
  constexpr float kQ4Scale = 15.0f;
  uint8_t* scales_out = o.y;
  uint8_t L[256];
  uint8_t Laux[16];
  float weights[16], scales[16], mins[16];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = absf(x[16 * j + l]);
    scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f,
                                 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0.0f) {
    const float iscale = dvd(kQ4Scale, max_scale);
    for (int j = 0; j < 16; ++j)
      scales_out[j] = static_cast<uint8_t>(nearest_int(mul(iscale, scales[j])));
    put_scale(o, 80, dvd(max_scale, kQ4Scale));
  } else {
    for (int j = 0; j < 16; ++j) scales_out[j] = 0;
    put_u16(o.y + 80, f32_to_f16(0.0f));
  }
  if (max_min > 0.0f) {
    const float iscale = dvd(kQ4Scale, max_min);
    for (int j = 0; j < 16; ++j) {
      const auto l = static_cast<uint32_t>(nearest_int(mul(iscale, mins[j])));
      scales_out[j] = static_cast<uint8_t>(scales_out[j] | (l << 4));
    }
    put_scale(o, 82, dvd(max_min, kQ4Scale));
  } else {
    put_u16(o.y + 82, f32_to_f16(0.0f));
  }
  const float d_all = f16_at(o.y + 80);
  const float dmin_all = f16_at(o.y + 82);
  for (int j = 0; j < 16; ++j) {
    const float d = mul(d_all, fl(scales_out[j] & 0xF));
    if (d == 0.0f) continue;
    const float dm = mul(dmin_all, fl(scales_out[j] >> 4));
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] =
          static_cast<uint8_t>(clampi(nearest_int(dvd(add(x[16 * j + i], dm), d)), 0, 3));
  }
  pack_2bit(L, o.y + 16);
}

__device__ void quantize_q3_K(const float* x, Out& o) {
  uint8_t* hmask = o.y;
  uint8_t* scales_out = o.y + 96;
  int8_t L[256];
  float scales[16];
  float max_scale = 0.0f, amax = 0.0f;
  for (int j = 0; j < 16; ++j) {
    scales[j] = make_q3_quants_rmse(16, 4, x + 16 * j, L + 16 * j);
    const float scale = absf(scales[j]);
    if (scale > amax) {
      amax = scale;
      max_scale = scales[j];
    }
  }
  for (int j = 0; j < 12; ++j) scales_out[j] = 0;
  if (max_scale != 0.0f) {
    const float iscale = dvd(-32.0f, max_scale);
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(nearest_int(mul(iscale, scales[j])));
      l = static_cast<int8_t>(clampi(l, -32, 31) + 32);
      if (j < 8) {
        scales_out[j] = static_cast<uint8_t>(l & 0xF);
      } else {
        scales_out[j - 8] = static_cast<uint8_t>(scales_out[j - 8] | ((l & 0xF) << 4));
      }
      l = static_cast<int8_t>(l >> 4);
      scales_out[j % 4 + 8] = static_cast<uint8_t>(scales_out[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    put_scale(o, 108, dvd(1.0f, iscale));
  } else {
    put_u16(o.y + 108, f32_to_f16(0.0f));
  }
  const float d_all = f16_at(o.y + 108);
  for (int j = 0; j < 16; ++j) {
    const float d = mul(d_all, fl(q3_k_scale(scales_out, j)));
    if (d == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(clampi(nearest_int(dvd(x[16 * j + i], d)), -4, 3) + 4);
  }
  for (int j = 0; j < 32; ++j) hmask[j] = 0;
  uint8_t low[256];
  for (int j = 0; j < 256; ++j) {
    int l = L[j];
    if (l > 3) {
      hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1u << (j / 32)));
      l -= 4;
    }
    low[j] = static_cast<uint8_t>(l);
  }
  pack_2bit(low, o.y + 32);
}

__device__ void quantize_q4_K(const float* x, Out& o) {
  uint8_t L[256];
  float scales[8], mins[8], max_scale, max_min;
  fit_k4_subblocks(x, 15, -1.0f, 0.1f, 20, L, scales, mins, max_scale, max_min);
  finish_k4_superblock(x, scales, mins, max_scale, max_min, 15, L, o);
  uint8_t* q = o.y + 16;
  for (int j = 0; j < 256; j += 64, q += 32)
    for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
}

__device__ void quantize_q5_K(const float* x, Out& o) {
  uint8_t L[256];
  float scales[8], mins[8], max_scale, max_min;
  fit_k4_subblocks(x, 31, -0.5f, 0.1f, 15, L, scales, mins, max_scale, max_min);
  finish_k4_superblock(x, scales, mins, max_scale, max_min, 31, L, o);
  uint8_t* qh = o.y + 16;
  uint8_t* ql = o.y + 48;
  for (int j = 0; j < 32; ++j) qh[j] = 0;
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

__device__ void quantize_q6_K(const float* x, Out& o) {
  auto* scales_out = reinterpret_cast<int8_t*>(o.y + 192);
  int8_t L[256];
  float scales[16];
  float max_scale = 0.0f, max_abs_scale = 0.0f;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = make_qx_quants_x2(16, 32, x + 16 * ib, L + 16 * ib);
    const float abs_scale = absf(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    for (int i = 0; i < 210; ++i) o.y[i] = 0;
    return;
  }
  const float iscale = dvd(-128.0f, max_scale);
  put_scale(o, 208, dvd(1.0f, iscale));
  for (int ib = 0; ib < 16; ++ib)
    scales_out[ib] = static_cast<int8_t>(min(127, nearest_int(mul(iscale, scales[ib]))));
  const float d_all = f16_at(o.y + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = mul(d_all, fl(scales_out[j]));
    if (d == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(clampi(nearest_int(dvd(x[16 * j + i], d)), -32, 31) + 32);
  }
  uint8_t* ql = o.y;
  uint8_t* qh = o.y + 128;
  for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int v0 = L[j + l], v1 = L[j + l + 32], v2 = L[j + l + 64], v3 = L[j + l + 96];
      ql[l] = static_cast<uint8_t>((v0 & 0xF) | ((v2 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((v1 & 0xF) | ((v3 & 0xF) << 4));
      qh[l] =
          static_cast<uint8_t>((v0 >> 4) | ((v1 >> 4) << 2) | ((v2 >> 4) << 4) | ((v3 >> 4) << 6));
    }
  }
}

__device__ void quantize_q8_K(const float* x, Out& o) {
  auto* qs = reinterpret_cast<int8_t*>(o.y + 4);
  float max = 0.0f, amax = 0.0f;
  for (int j = 0; j < 256; ++j) {
    const float ax = absf(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  if (amax == 0.0f) {
    for (int i = 0; i < 292; ++i) o.y[i] = 0;
    return;
  }
  const float iscale = dvd(-127.0f, max);
  for (int j = 0; j < 256; ++j)
    qs[j] = static_cast<int8_t>(min(127, nearest_int(mul(iscale, x[j]))));
  for (int j = 0; j < 16; ++j) {
    int sum = 0;
    for (int i = 0; i < 16; ++i) sum += qs[16 * j + i];
    put_u16(o.y + 4 + 256 + 2 * j, static_cast<uint16_t>(static_cast<int16_t>(sum)));
  }
  const uint32_t d = __float_as_uint(dvd(1.0f, iscale));
  for (int k = 0; k < 4; ++k) o.y[k] = static_cast<uint8_t>(d >> (8 * k));
}

// ---- the kernel ---------------------------------------------------------------------------------

template <GgmlType T>
constexpr int kElems = T == GgmlType::q2_K || T == GgmlType::q3_K || T == GgmlType::q4_K ||
                               T == GgmlType::q5_K || T == GgmlType::q6_K || T == GgmlType::q8_K
                           ? 256
                           : 32;
template <GgmlType T>
constexpr int kBytes = T == GgmlType::q4_0   ? 18
                       : T == GgmlType::q4_1 ? 20
                       : T == GgmlType::q5_0 ? 22
                       : T == GgmlType::q5_1 ? 24
                       : T == GgmlType::q8_0 ? 34
                       : T == GgmlType::q8_1 ? 36
                       : T == GgmlType::q2_K ? 84
                       : T == GgmlType::q3_K ? 110
                       : T == GgmlType::q4_K ? 144
                       : T == GgmlType::q5_K ? 176
                       : T == GgmlType::q6_K ? 210
                                             : 292;  // q8_K

template <GgmlType T>
__device__ __forceinline__ void quantize_block(const float* x, Out& o) {
  if constexpr (T == GgmlType::q4_0) quantize_q4_0(x, o);
  if constexpr (T == GgmlType::q4_1) quantize_q4_1(x, o);
  if constexpr (T == GgmlType::q5_0) quantize_q5_0(x, o);
  if constexpr (T == GgmlType::q5_1) quantize_q5_1(x, o);
  if constexpr (T == GgmlType::q8_0) quantize_q8(x, o, false);
  if constexpr (T == GgmlType::q8_1) quantize_q8(x, o, true);
  if constexpr (T == GgmlType::q2_K) quantize_q2_K(x, o);
  if constexpr (T == GgmlType::q3_K) quantize_q3_K(x, o);
  if constexpr (T == GgmlType::q4_K) quantize_q4_K(x, o);
  if constexpr (T == GgmlType::q5_K) quantize_q5_K(x, o);
  if constexpr (T == GgmlType::q6_K) quantize_q6_K(x, o);
  if constexpr (T == GgmlType::q8_K) quantize_q8_K(x, o);
}

struct BlockArgs {
  const void* x;
  uint8_t* codes;
  uint64_t blocks;
  unsigned long long* nonfinite;  ///< first non-finite element; null: no check
  unsigned long long* overflow;   ///< first block whose f16 scale overflows; null: no check
};

template <GgmlType T, Dtype S>
__global__ void __launch_bounds__(kThreads) gguf_quantize_kernel(BlockArgs a) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t b = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < a.blocks;
       b += stride) {
    const uint64_t first = b * kElems<T>;
    float x[kElems<T>];
    int bad = -1;
    for (int i = 0; i < kElems<T>; ++i) {
      x[i] = Src<S>::load(a.x, first + i);
      if (bad < 0 && non_finite_bits(__float_as_uint(x[i]))) bad = i;
    }
    if (a.nonfinite && bad >= 0) report(a.nonfinite, first + bad);
    uint8_t y[kBytes<T>];
    Out o{y};
    quantize_block<T>(x, o);
    if (a.overflow && o.overflow) report(a.overflow, b);
    uint8_t* dst = a.codes + b * kBytes<T>;
    for (int i = 0; i < kBytes<T>; ++i) dst[i] = y[i];
  }
}

template <GgmlType T>
void launch_type(Dtype src, const BlockArgs& a, int sms, cudaStream_t s) {
  auto go = [&](auto kernel) {
    const uint32_t grid = grid_of(a.blocks, kThreads, resident_grid(kernel, kThreads, sms));
    kernel<<<grid, kThreads, 0, s>>>(a);
    check_launch("gguf_quantize_kernel");
  };
  switch (src) {
    case Dtype::f32:
      return go(gguf_quantize_kernel<T, Dtype::f32>);
    case Dtype::f16:
      return go(gguf_quantize_kernel<T, Dtype::f16>);
    default:
      return go(gguf_quantize_kernel<T, Dtype::bf16>);
  }
}

/// Launches the kernel for `type`; false if this file has none for it.
bool launch(GgmlType type, Dtype src, const BlockArgs& a, int sms, cudaStream_t s) {
  switch (type) {
    case GgmlType::q4_0:
      launch_type<GgmlType::q4_0>(src, a, sms, s);
      break;
    case GgmlType::q4_1:
      launch_type<GgmlType::q4_1>(src, a, sms, s);
      break;
    case GgmlType::q5_0:
      launch_type<GgmlType::q5_0>(src, a, sms, s);
      break;
    case GgmlType::q5_1:
      launch_type<GgmlType::q5_1>(src, a, sms, s);
      break;
    case GgmlType::q8_0:
      launch_type<GgmlType::q8_0>(src, a, sms, s);
      break;
    case GgmlType::q8_1:
      launch_type<GgmlType::q8_1>(src, a, sms, s);
      break;
    case GgmlType::q2_K:
      launch_type<GgmlType::q2_K>(src, a, sms, s);
      break;
    case GgmlType::q3_K:
      launch_type<GgmlType::q3_K>(src, a, sms, s);
      break;
    case GgmlType::q4_K:
      launch_type<GgmlType::q4_K>(src, a, sms, s);
      break;
    case GgmlType::q5_K:
      launch_type<GgmlType::q5_K>(src, a, sms, s);
      break;
    case GgmlType::q6_K:
      launch_type<GgmlType::q6_K>(src, a, sms, s);
      break;
    case GgmlType::q8_K:
      launch_type<GgmlType::q8_K>(src, a, sms, s);
      break;
    default:
      return false;
  }
  return true;
}

// ---- host: the reference's errors ---------------------------------------------------------------

/// Source element i (on the device) as f32.
float host_element(Dtype src, const void* base, uint64_t i) {
  const int bytes = src == Dtype::f32 ? 4 : 2;
  uint32_t raw = 0;
  check_cuda(cudaMemcpy(&raw, static_cast<const uint8_t*>(base) + i * bytes, bytes,
                        cudaMemcpyDeviceToHost),
             "quantize: reading a source element");
  switch (src) {
    case Dtype::f32:
      return float_of(raw);
    case Dtype::bf16:
      return bf16_to_f32(static_cast<uint16_t>(raw));
    default:
      return f16_to_f32(static_cast<uint16_t>(raw));
  }
}

[[noreturn]] void throw_non_finite(const QuantizeDesc& d, const void* src, uint64_t i) {
  const float v = host_element(d.src, src, i);
  throw_error(ErrorCode::invalid_argument,
              "quantize: src element " + index_str(d.shape, static_cast<int64_t>(i)) +
                  " (flat index " + std::to_string(i) + ") is " + (std::isnan(v) ? "NaN" : "Inf") +
                  "; quantization needs finite inputs (replace or mask non-finite values first)");
}

/// Re-runs the reference quantizer on the row holding block `b`, so that the Error (block
/// index within the row, values, field, value) is the reference's own.
[[noreturn]] void throw_overflow(const QuantizeDesc& d, const void* src, uint64_t b) {
  const auto type = static_cast<GgmlType>(d.scheme.gguf_type);
  const int64_t k = last_dim(d.shape);
  const int64_t row = static_cast<int64_t>(b) / (k / gguf::block_layout(type)->block_elems);
  std::vector<float> x(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j)
    x[static_cast<size_t>(j)] = host_element(d.src, src, static_cast<uint64_t>(row * k + j));
  std::vector<uint8_t> out(static_cast<size_t>(gguf::row_bytes(type, k)));
  gguf::quantize_row_reference(type, x.data(), out.data(), k);
  throw_error(ErrorCode::internal, "gguf_quantize_cuda: block " + std::to_string(b) +
                                       " overflowed on the GPU but not in the reference");
}

bool block_type(const QuantScheme& s) {
  if (s.format != QuantFormat::gguf) return false;
  const gguf::BlockLayout* layout = gguf::block_layout(static_cast<GgmlType>(s.gguf_type));
  return layout != nullptr && layout->block_elems > 1;
}

class GgufQuantizeCuda final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "gguf_quantize_cuda"; }

  std::string decline(const QuantizeDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    if (!block_type(d.scheme)) return "GGUF block types only";
    const DeviceFacts& f = facts(d.device.index);
    if (!f.has_image)
      return "this build has no kernel image for " + f.arch + " (" + f.image_error +
             "; add it to LOWBIT_CUDA_ARCHS)";
    if (d.src != Dtype::f32 && d.src != Dtype::f16 && d.src != Dtype::bf16)
      return "src must be f32, f16 or bf16 (f64: the reference kernel, on the CPU only)";
    if (!(d.src_strides == contiguous_strides(d.shape)))
      return "strided sources are not supported on CUDA (the reference kernel takes them, on "
             "the CPU only); make the source contiguous";
    return {};
  }

  KernelSku sku(const QuantizeDesc& d) const override {
    return {"quantize",
            Backend::cuda,
            std::string(dtype_name(d.src)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {"ggml's quantize_row_*_ref in f32 (no FMA): byte-identical to the reference",
            std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream& stream,
           Workspace) const override {
    const int64_t n = numel(d.shape);
    if (n == 0) return;
    DeviceScope scope(d.device.index);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const auto type = static_cast<GgmlType>(d.scheme.gguf_type);
    Buffer words;
    BlockArgs ka{};
    ka.x = a.src.data();
    ka.codes = static_cast<uint8_t*>(a.dst.codes.data());
    ka.blocks = static_cast<uint64_t>(n / gguf::block_layout(type)->block_elems);
    // With a CheckReport the flags are the report's (zero between calls: the record kernel
    // after the quantizer moves them into the record and zeroes them) and nobody waits.
    const CheckReport::Impl* report = check_report::for_call(a.report, d.check_finite);
    if (report) {
      ka.nonfinite =
          static_cast<unsigned long long*>(report->region(check_report::Op::gguf_quantize));
      ka.overflow = ka.nonfinite + 1;
    } else if (d.check_finite) {
      words = Buffer(2 * sizeof(uint64_t), d.device, &stream);
      check_cuda(cudaMemsetAsync(words.data(), 0, 2 * sizeof(uint64_t), s),
                 "quantize: cudaMemsetAsync");
      ka.nonfinite = static_cast<unsigned long long*>(words.data());
      ka.overflow = ka.nonfinite + 1;
    }
    if (!launch(type, d.src, ka, facts(d.device.index).multiprocessors, s))
      throw_error(ErrorCode::internal, "gguf_quantize_cuda: no kernel for " + d.scheme.str());
    if (report) {
      static constexpr check_report::Kind kinds[] = {check_report::Kind::non_finite,
                                                     check_report::Kind::overflow};
      check_report::enqueue_record(*report, check_report::Op::gguf_quantize, 2, kinds, s, 2);
      return;
    }
    if (!d.check_finite) return;
    uint64_t w[2];
    read_flags(words.data(), w, 2, s);  // synchronises the stream
    uint64_t index;
    if (flagged(w[0], index)) throw_non_finite(d, a.src.data(), index);
    if (flagged(w[1], index)) throw_overflow(d, a.src.data(), index);
  }

 private:
  static const DeviceFacts& facts(int device) {
    return device_facts(device, gguf_quantize_kernel<GgmlType::q8_0, Dtype::f32>);
  }
};

}  // namespace

const Kernel<QuantizeOp>& gguf_quantize_cuda_kernel() {
  static const GgufQuantizeCuda kernel;
  return kernel;
}

}  // namespace lowbit
