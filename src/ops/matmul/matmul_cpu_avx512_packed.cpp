// The prepared weight layout of the int8-activation kernel (matmul_cpu_avx512_vnni_packed), its
// packing and its loops.
//
// Why: from the plain layout a row's 64 codes land in one zmm, so the gemv sums 16 lanes of one
// output and needs per-lane scales (about 13 vector operations per 64 weights); with 16 rows
// interleaved a zmm holds 4 codes of 16 outputs, x is broadcast, and a group of 32 costs 8
// vpdpbusd, a few decode operations and one scale update per 16 outputs (about 4 per 64).
// The panel (gemm) loop reads the same layout without transposes. docs/matmul.md has the
// measurements.
//
// Layout "cpu_avx512_vnni_x16" of W [n, k] (k a multiple of 64): a 64-byte header (magic,
// format, n, k, nvfp4's global scale), then ceil(n / 16) strips of 16 rows (rows past n are
// zero), each strip_bytes long: codes, then parameters.
//  codes, one zmm (64 bytes) per step, dword j = row j of the strip:
//   4-bit formats (int4, uint4, q4_0, q4_K, nvfp4, mxfp4): a step holds 8 k: byte b of dword j
//     = code k+b (low nibble) | code k+4+b (high nibble). The nibble is n = v + o (int4 and
//     q4_0: o = 8; uint4, q4_K: o = 0), so u = n feeds vpdpbusd and J = sum (u - o) x comes
//     from starting at -o * sum x; nvfp4 / mxfp4 keep their e2m1 code, which a table turns
//     into u = 2 e2m1 + 12 (o = 12).
//   8-bit formats (int8, uint8, q8_0): a step holds 4 k: u = v + 128 (o = 128).
//   q6_K: the 4-bit stream of n = v + 32 (o = 32), low 4 bits, then the top 2 bits: one zmm
//     per 16 k, byte b of dword j = bits 4-5 of codes k+b, k+4+b, k+8+b, k+12+b as bit pairs
//     0-1, 2-3, 4-5, 6-7.
//  parameters:
//   q4_0, q8_0: per group of 32, the 16 rows' f16 d (as stored in their blocks).
//   integer formats: per scale block along k (one for channel and tensor scales), 16 f32 a
//     then 16 f32 c (w = a v + c, as the plain kernel computes them).
//   nvfp4: per 16, the e4m3 block scales; mxfp4: per 32, the e8m0 scales.
//   q4_K: per 256, 16 f16 d, 16 f16 dmin, then 8 x 16 six-bit scales and 8 x 16 mins (bytes).
//   q6_K: per 256, 16 f16 d, then 16 x 16 int8 scales.
// The arithmetic is the plain int8 kernel's (matmul_cpu_avx512.cpp), per group: an exact i32
// J per output, then y += (a * xs) * J + c * (xs * sum x), in k order; gemv keeps one f32
// accumulator per output, gemm adds panels of kc = 512 in k order.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ops/matmul/matmul_cpu_avx512.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(                                                                    \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c,bmi2"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c,bmi2")
#endif
#define LOWBIT_MATMUL_CPU_AVX512_TARGET 1

#include "ops/matmul/matmul_cpu_avx512_impl.hpp"

namespace lowbit::matmul_cpu {
namespace {

constexpr uint32_t kMagic = 0x31784C42;  // "BLx1"
constexpr i64 kPrefetchBytes = 4096;     // gemv: how far ahead in a strip's codes (measured)
constexpr i64 kHeader = 64;

enum class PClass : uint8_t { nib, byte, q6 };

/// The packed form of format F (an Fmt<...>).
template <class F>
struct Packed {
  static constexpr WFmt kF = F::kFmt;
  static constexpr int G = F::kG;
  static constexpr PClass kClass = (kF == WFmt::i8 || kF == WFmt::u8 || kF == WFmt::q8_0)
                                       ? PClass::byte
                                       : (kF == WFmt::q6_K ? PClass::q6 : PClass::nib);
  static constexpr bool kTab = kF == WFmt::nvfp4 || kF == WFmt::mxfp4;
  static constexpr int kO = kClass == PClass::byte                 ? 128
                            : kClass == PClass::q6                 ? 32
                            : (kF == WFmt::i4 || kF == WFmt::q4_0) ? 8
                            : kTab                                 ? 12
                                                                   : 0;
  static constexpr bool kIntScales =
      kF == WFmt::i8 || kF == WFmt::u8 || kF == WFmt::i4 || kF == WFmt::u4;

  /// Scale block along k of the integer formats.
  static i64 block(const WeightRef& w) { return w.scale_col_div >= kNoDiv ? w.k : w.scale_col_div; }
  static i64 code_bytes(i64 K) {
    return kClass == PClass::byte ? 16 * K : (kClass == PClass::q6 ? 12 * K : 8 * K);
  }
  static i64 param_bytes(const WeightRef& w) {
    const i64 K = w.k;
    if constexpr (kF == WFmt::q4_0 || kF == WFmt::q8_0) return K / 32 * 32;
    if constexpr (kF == WFmt::nvfp4) return K / 16 * 16;
    if constexpr (kF == WFmt::mxfp4) return K / 32 * 16;
    if constexpr (kF == WFmt::q4_K) return K / 256 * 320;
    if constexpr (kF == WFmt::q6_K) return K / 256 * 288;
    const i64 B = block(w);
    return (K + B - 1) / B * int_record(w.scale_dt);
  }
  /// Integer formats: bytes per scale block of a strip: 16 scales as stored (f32, f16 or
  /// bf16), then 16 f32 c when the format has c terms.
  static i64 int_record(FDt dt) { return 16 * (dt == FDt::f32 ? 4 : 2) + (F::kC ? 64 : 0); }
  static i64 strip_bytes(const WeightRef& w) {
    return (code_bytes(w.k) + param_bytes(w) + 63) & ~i64{63};
  }

  /// a and c of group g of a strip (P: the strip's parameters).
  static void params(const uint8_t* P, i64 g, i64 B, FDt sdt, float global, __m512& a, __m512& c) {
    c = _mm512_setzero_ps();
    if constexpr (kF == WFmt::q4_0 || kF == WFmt::q8_0) {
      a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + 32 * g)));
    } else if constexpr (kF == WFmt::nvfp4) {
      const __m256i b =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(P + 16 * g)));
      const __m512 bs = _mm512_mul_ps(e4m3_div256(b), _mm512_set1_ps(256.0f));
      a = _mm512_mul_ps(_mm512_mul_ps(bs, _mm512_set1_ps(global)), _mm512_set1_ps(0.5f));
    } else if constexpr (kF == WFmt::mxfp4) {
      a = _mm512_mul_ps(e8m0_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(P + 16 * g))),
                        _mm512_set1_ps(0.5f));
    } else if constexpr (kF == WFmt::q4_K) {
      __m512 d, dmin;
      super_block(P, g, d, dmin);
      q4k_group(P, g, d, dmin, a, c);
    } else if constexpr (kF == WFmt::q6_K) {
      const uint8_t* sb = P + (g >> 4) * 288;
      const int j = static_cast<int>(g & 15);
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb)));
      a = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                               reinterpret_cast<const __m128i*>(sb + 32 + 16 * j)))));
    } else {
      const uint8_t* rec = P + g * G / B * int_record(sdt);
      a = load16(rec, sdt, 0, 16);
      if constexpr (F::kC)
        c = _mm512_loadu_ps(reinterpret_cast<const float*>(rec + 16 * (sdt == FDt::f32 ? 4 : 2)));
    }
  }

  /// q4_K: the f16 d and dmin of group g's super-block (once per 8 groups in the gemv).
  static void super_block(const uint8_t* P, i64 g, __m512& d, __m512& dmin) {
    const uint8_t* sb = P + (g >> 3) * 320;
    d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb)));
    dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 32)));
  }
  /// q4_K: a = d * sc and c = -(dmin * m) of group g (ggml's d1 and -m1).
  static void q4k_group(const uint8_t* P, i64 g, __m512 d, __m512 dmin, __m512& a, __m512& c) {
    const uint8_t* sb = P + (g >> 3) * 320;
    const int j = static_cast<int>(g & 7);
    const __m512 sc = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 64 + 16 * j))));
    const __m512 mn = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 192 + 16 * j))));
    a = _mm512_mul_ps(d, sc);
    c = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dmin, mn));
  }

  /// The vpdpbusd operands of step t (4-bit / q6: 8 k, lo then hi; 8-bit: 4 k, lo only).
  static void step(const uint8_t* codes, i64 K, i64 t, __m512i& lo, __m512i& hi) {
    if constexpr (kClass == PClass::byte) {
      lo = _mm512_loadu_si512(codes + 64 * t);
      hi = lo;
    } else {
      const __m512i v = _mm512_loadu_si512(codes + 64 * t);
      const __m512i m4 = _mm512_set1_epi8(0x0F);
      if constexpr (kClass == PClass::q6) {
        // Top bits of the 16 k around step t, into bits 4-5 of each code byte.
        const __m512i h = _mm512_loadu_si512(codes + 8 * K + 64 * (t >> 1));
        const __m512i m30 = _mm512_set1_epi8(0x30);
        __m512i tl, th;
        if ((t & 1) == 0) {
          tl = _mm512_and_si512(_mm512_slli_epi16(h, 4), m30);
          th = _mm512_and_si512(_mm512_slli_epi16(h, 2), m30);
        } else {
          tl = _mm512_and_si512(h, m30);
          th = _mm512_and_si512(_mm512_srli_epi16(h, 2), m30);
        }
        lo = _mm512_ternarylogic_epi32(v, tl, m4, 0xEC);  // (v & 0x0F) | tl
        hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), th, m4, 0xEC);
      } else {
        lo = _mm512_and_si512(v, m4);
        hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        if constexpr (kTab) {
          alignas(16) static constexpr uint8_t kTab2[16] = {12, 13, 14, 15, 16, 18, 20, 24,
                                                            12, 11, 10, 9,  8,  6,  4,  0};
          const __m512i tab = bcast_bytes16(kTab2);
          lo = _mm512_shuffle_epi8(tab, lo);
          hi = _mm512_shuffle_epi8(tab, hi);
        }
      }
    }
  }
};

struct PackedView {
  const uint8_t* base;  // the first strip
  i64 strip_bytes, code_bytes, B;
  FDt sdt;  // integer formats: the scales' type
  float global;
  const uint8_t* codes(i64 s) const { return base + s * strip_bytes; }
  const uint8_t* params(i64 s) const { return base + s * strip_bytes + code_bytes; }
};

template <class F>
PackedView packed_view(const WeightRef& w, const uint8_t* packed) {
  using P = Packed<F>;
  float global;
  std::memcpy(&global, packed + 24, 4);
  return {packed + kHeader, P::strip_bytes(w), P::code_bytes(w.k), P::block(w), w.scale_dt, global};
}

// ---- packing ------------------------------------------------------------------------------------

/// e2m1 code of a doubled e2m1 value v (0, +-1, +-2, +-3, +-4, +-6, +-8, +-12).
uint8_t e2m1_code(int v) {
  const int mag = v < 0 ? -v : v;
  static constexpr int kMag[13] = {0, 1, 2, 3, 4, -1, 5, -1, 6, -1, -1, -1, 7};
  return static_cast<uint8_t>((v < 0 ? 8 : 0) | kMag[mag]);
}

template <class F>
void pack_strip(const WeightRef& w, i64 s, uint8_t* out) {
  using P = Packed<F>;
  constexpr int G = F::kG;
  const i64 K = w.k;
  // v of the strip's rows in natural k order (rows past n: 0).
  int8_t* v = static_cast<int8_t*>(std::malloc(static_cast<size_t>(16 * K)));
  std::memset(v, 0, static_cast<size_t>(16 * K));
  alignas(64) uint8_t u[64];
  for (int j = 0; j < 16; ++j) {
    const i64 r = 16 * s + j;
    if (r >= w.n) continue;
    const Row row = row_of(w, r);
    for (i64 c = 0; c < K / kChunk; ++c) {
      _mm512_store_si512(u, F::codes(row, c));
      int8_t* dst = v + j * K + kChunk * c;
      for (int e = 0; e < kChunk; ++e) {
        // Staged order -> natural: per unit of G, evens then odds for the 4-bit formats.
        int from = e;
        if constexpr (F::kPerm) {
          const int unit = e / G, in = e % G;
          from = unit * G + (in % 2 == 0 ? in / 2 : G / 2 + in / 2);
        }
        dst[e] = static_cast<int8_t>(u[from] - 128);
      }
    }
  }
  auto nib = [&](int j, i64 k) -> uint8_t {
    const int x = v[j * K + k];
    if constexpr (P::kTab) return e2m1_code(x);
    return static_cast<uint8_t>((x + P::kO) & 0x0F);
  };
  if constexpr (P::kClass == PClass::byte) {
    for (i64 t = 0; t < K / 4; ++t)
      for (int j = 0; j < 16; ++j)
        for (int b = 0; b < 4; ++b)
          out[64 * t + 4 * j + b] = static_cast<uint8_t>(v[j * K + 4 * t + b] + 128);
  } else {
    for (i64 t = 0; t < K / 8; ++t)
      for (int j = 0; j < 16; ++j)
        for (int b = 0; b < 4; ++b)
          out[64 * t + 4 * j + b] =
              static_cast<uint8_t>(nib(j, 8 * t + b) | (nib(j, 8 * t + 4 + b) << 4));
    if constexpr (P::kClass == PClass::q6) {
      uint8_t* hb = out + 8 * K;
      for (i64 t = 0; t < K / 16; ++t)
        for (int j = 0; j < 16; ++j)
          for (int b = 0; b < 4; ++b) {
            uint8_t h = 0;
            for (int q = 0; q < 4; ++q)
              h = static_cast<uint8_t>(
                  h | ((((v[j * K + 16 * t + 4 * q + b] + 32) >> 4) & 3) << (2 * q)));
            hb[64 * t + 4 * j + b] = h;
          }
    }
  }
  std::free(v);
  // Parameters.
  uint8_t* p = out + P::code_bytes(K);
  for (int j = 0; j < 16; ++j) {
    const i64 r = 16 * s + j;
    if (r >= w.n) continue;  // zero (the buffer was cleared)
    const Row row = row_of(w, r);
    if constexpr (F::kFmt == WFmt::q4_0 || F::kFmt == WFmt::q8_0) {
      const int bytes = F::kFmt == WFmt::q4_0 ? 18 : 34;
      for (i64 g = 0; g < K / 32; ++g) std::memcpy(p + 32 * g + 2 * j, row.codes + g * bytes, 2);
    } else if constexpr (F::kFmt == WFmt::nvfp4 || F::kFmt == WFmt::mxfp4) {
      const int per = F::kFmt == WFmt::nvfp4 ? 16 : 32;
      const auto* sc = static_cast<const uint8_t*>(w.scale) + row.sbase;
      for (i64 g = 0; g < K / per; ++g) p[16 * g + j] = sc[g];
    } else if constexpr (F::kFmt == WFmt::q4_K) {
      for (i64 sb = 0; sb < K / 256; ++sb) {
        const uint8_t* blk = row.codes + sb * 144;
        uint8_t* q = p + sb * 320;
        std::memcpy(q + 2 * j, blk, 2);
        std::memcpy(q + 32 + 2 * j, blk + 2, 2);
        const uint8_t* sc = blk + 4;
        for (int g = 0; g < 8; ++g) {
          uint8_t d, m;
          if (g < 4) {
            d = sc[g] & 63;
            m = sc[g + 4] & 63;
          } else {
            d = static_cast<uint8_t>((sc[g + 4] & 0xF) | ((sc[g - 4] >> 6) << 4));
            m = static_cast<uint8_t>((sc[g + 4] >> 4) | ((sc[g] >> 6) << 4));
          }
          q[64 + 16 * g + j] = d;
          q[192 + 16 * g + j] = m;
        }
      }
    } else if constexpr (F::kFmt == WFmt::q6_K) {
      for (i64 sb = 0; sb < K / 256; ++sb) {
        const uint8_t* blk = row.codes + sb * 210;
        uint8_t* q = p + sb * 288;
        std::memcpy(q + 2 * j, blk + 208, 2);
        for (int g = 0; g < 16; ++g) q[32 + 16 * g + j] = blk[192 + g];
      }
    } else {
      // Integer formats: a and c per scale block, from the plain kernel's own parameters.
      const i64 B = P::block(w), nb = (K + B - 1) / B;
      alignas(64) float a[16], c[16];
      const i64 rb = P::int_record(w.scale_dt), sb = w.scale_dt == FDt::f32 ? 4 : 2;
      for (i64 blk = 0; blk < nb; ++blk) {
        const i64 g = blk * B / G;  // first group of the block
        const i64 g16 = g & ~i64{15};
        F::params(w, row, g16, min64(16, K / G - g16), a, c);
        uint8_t* rec = p + blk * rb;
        // The scale back in its own type (exact: a is its widening).
        const float av = a[g & 15];
        if (w.scale_dt == FDt::f32) {
          std::memcpy(rec + 4 * j, &av, 4);
        } else {
          uint32_t bits;
          std::memcpy(&bits, &av, 4);
          const uint16_t h = w.scale_dt == FDt::f16 ? static_cast<uint16_t>(_cvtss_sh(av, 0))
                                                    : static_cast<uint16_t>(bits >> 16);
          std::memcpy(rec + 2 * j, &h, 2);
        }
        if constexpr (F::kC) std::memcpy(rec + 16 * sb + 4 * j, &c[g & 15], 4);
      }
    }
  }
}

// ---- loops --------------------------------------------------------------------------------------

/// The packed gemv: per strip of 16 outputs and row of x, f32 accumulators over the groups.
template <class F, int MR>
void gemv_packed(const PackedView& pv, i64 K, const int8_t* xq, const int32_t* init,
                 const float* xs, const float* xsq, float* C, i64 ldc, i64 n, i64 s0, i64 s1) {
  using P = Packed<F>;
  constexpr int G = F::kG;
  constexpr int kSteps = P::kClass == PClass::byte ? G / 4 : G / 8;
  constexpr int NJ = MR == 1 ? 4 : 2;  // independent i32 chains per row
  const i64 ng = K / G;
  for (i64 s = s0; s < s1; ++s) {
    const uint8_t* codes = pv.codes(s);
    const uint8_t* params = pv.params(s);
    __m512 acc[MR];
    for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
    __m512 d_sb = _mm512_setzero_ps(), dmin_sb = _mm512_setzero_ps();  // q4_K super-block
    for (i64 g = 0; g < ng; ++g) {
      __m512i J[MR][NJ];
      for (int i = 0; i < MR; ++i) {
        J[i][0] = _mm512_set1_epi32(init[i * ng + g]);
        for (int q = 1; q < NJ; ++q) J[i][q] = _mm512_setzero_si512();
      }
      const i64 t0 = g * kSteps;
#pragma GCC unroll 8
      for (int st = 0; st < kSteps; ++st) {
        // The codes a few groups ahead (a strip is read once, front to back).
        _mm_prefetch(reinterpret_cast<const char*>(codes + 64 * (t0 + st) + kPrefetchBytes),
                     _MM_HINT_T0);
        __m512i lo, hi;
        P::step(codes, K, t0 + st, lo, hi);
        for (int i = 0; i < MR; ++i) {
          const int8_t* xp = xq + i * K + (P::kClass == PClass::byte ? 4 : 8) * (t0 + st);
          int32_t xl;
          std::memcpy(&xl, xp, 4);
          J[i][(2 * st) % NJ] = _mm512_dpbusd_epi32(J[i][(2 * st) % NJ], lo, _mm512_set1_epi32(xl));
          if constexpr (P::kClass != PClass::byte) {
            int32_t xh;
            std::memcpy(&xh, xp + 4, 4);
            J[i][(2 * st + 1) % NJ] =
                _mm512_dpbusd_epi32(J[i][(2 * st + 1) % NJ], hi, _mm512_set1_epi32(xh));
          }
        }
      }
      __m512 a, c;
      if constexpr (F::kFmt == WFmt::q4_K) {
        if ((g & 7) == 0) P::super_block(params, g, d_sb, dmin_sb);
        P::q4k_group(params, g, d_sb, dmin_sb, a, c);
      } else {
        P::params(params, g, pv.B, pv.sdt, pv.global, a, c);
      }
      for (int i = 0; i < MR; ++i) {
        __m512i j = J[i][0];
        for (int q = 1; q < NJ; ++q) j = _mm512_add_epi32(j, J[i][q]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(j),
                                 _mm512_mul_ps(a, _mm512_set1_ps(xs[i * ng + g])), acc[i]);
        if constexpr (F::kC) acc[i] = _mm512_fmadd_ps(c, _mm512_set1_ps(xsq[i * ng + g]), acc[i]);
      }
    }
    const __mmask16 m = first_n16(n - 16 * s);
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_ps(C + i * ldc + 16 * s, m, acc[i]);
  }
}

/// Panel of strips 2p, 2p + 1 (the second may not exist), k in [k0, k0 + kc), into the plain
/// kernel's panel form (T: per 4 k, 32 columns x 4 bytes; A / Cc per group).
template <class F>
void decode_packed_panel(const PackedView& pv, i64 K, i64 strips, i64 s0, i64 k0, i64 kc,
                         uint8_t* T, float* A, float* Cc) {
  using P = Packed<F>;
  constexpr int G = F::kG;
  for (int h = 0; h < 2; ++h) {
    const i64 s = s0 + h;
    if (s >= strips) {
      for (i64 d = 0; d < kc / 4; ++d)
        _mm512_store_si512(T + 128 * d + 64 * h, _mm512_setzero_si512());
      for (i64 g = 0; g < kc / G; ++g) {
        _mm512_store_ps(A + 32 * g + 16 * h, _mm512_setzero_ps());
        _mm512_store_ps(Cc + 32 * g + 16 * h, _mm512_setzero_ps());
      }
      continue;
    }
    const uint8_t* codes = pv.codes(s);
    if constexpr (P::kClass == PClass::byte) {
      for (i64 d = 0; d < kc / 4; ++d)
        _mm512_store_si512(T + 128 * d + 64 * h, _mm512_loadu_si512(codes + 64 * (k0 / 4 + d)));
    } else {
      for (i64 t = 0; t < kc / 8; ++t) {
        __m512i lo, hi;
        P::step(codes, K, k0 / 8 + t, lo, hi);
        _mm512_store_si512(T + 128 * (2 * t) + 64 * h, lo);
        _mm512_store_si512(T + 128 * (2 * t + 1) + 64 * h, hi);
      }
    }
    for (i64 g = 0; g < kc / G; ++g) {
      __m512 a, c;
      P::params(pv.params(s), k0 / G + g, pv.B, pv.sdt, pv.global, a, c);
      _mm512_store_ps(A + 32 * g + 16 * h, a);
      _mm512_store_ps(Cc + 32 * g + 16 * h, c);
    }
  }
}

template <class F>
void int8_packed_impl(const WeightRef& w, const uint8_t* packed, const XQuantRef& x, i64 m,
                      Path path, const WsLayout& L, char* ws, float* C, i64 ldc) {
  using P = Packed<F>;
  constexpr int G = F::kG;
  const i64 K = w.k, N = w.n, ng = K / G, strips = (N + 15) / 16;
  const PackedView pv = packed_view<F>(w, packed);
  auto* xq = reinterpret_cast<int8_t*>(ws + L.xq);
  auto* init = reinterpret_cast<int32_t*>(ws + L.init);
  auto* xs = reinterpret_cast<float*>(ws + L.xs);
  auto* xsq = reinterpret_cast<float*>(ws + L.xsq);
  // x in natural order (the packed codes are), per-group sums started at -o * sum.
  stage_x8<G, false, F::kC>(x, m, K, Path::gemm, xq, init, xs, xsq, P::kO);
  if (path == Path::gemv) {
    parallel_cols(strips, 1, m * N * K, [&](i64 s0, i64 s1) {
      for (i64 i0 = 0; i0 < m; i0 += kGemvRows) {
        const int8_t* q = xq + i0 * K;
        const int32_t* in = init + i0 * ng;
        const float* sc = xs + i0 * ng;
        const float* sq = xsq + i0 * ng;
        float* cp = C + i0 * ldc;
        with_rows<kGemvRows>(m - i0, [&](auto r) {
          gemv_packed<F, decltype(r)::value>(pv, K, q, in, sc, sq, cp, ldc, N, s0, s1);
        });
      }
    });
    return;
  }
  parallel_cols(N, 32, m * N * K, [&](i64 n0, i64 n1) {
    alignas(64) uint8_t T[kKcInt8 * 32];
    alignas(64) float A[kKcInt8 / 16 * 32], Cc[kKcInt8 / 16 * 32];
    for (i64 k0 = 0; k0 < K; k0 += kKcInt8) {
      const i64 kc = min64(kKcInt8, K - k0);
      for (i64 s = n0; s < n1; s += 32) {
        const i64 nc = min64(32, n1 - s);
        decode_packed_panel<F>(pv, K, strips, s / 16, k0, kc, T, A, Cc);
        for (i64 i0 = 0; i0 < m; i0 += kRowsInt8) {
          const i64 g0 = i0 * ng + k0 / G;
          with_rows<kRowsInt8>(m - i0, [&](auto r) {
            tile_int8<decltype(r)::value, G, F::kC>(xq + i0 * K + k0, K, init + g0, xs + g0,
                                                    xsq + g0, ng, T, A, Cc, kc, C + i0 * ldc + s,
                                                    ldc, nc, k0 == 0);
          });
        }
      }
    }
  });
}

}  // namespace

size_t packed_bytes(const WeightRef& w) {
  size_t bytes = 0;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat)
      bytes = static_cast<size_t>(kHeader + (w.n + 15) / 16 * Packed<F>::strip_bytes(w));
  });
  return bytes;
}

void pack_weight(const WeightRef& w, void* out) {
  auto* o = static_cast<uint8_t*>(out);
  std::memset(o, 0, kHeader);
  const uint32_t hdr[2] = {kMagic, static_cast<uint32_t>(w.fmt)};
  std::memcpy(o, hdr, 8);
  std::memcpy(o + 8, &w.n, 8);
  std::memcpy(o + 16, &w.k, 8);
  std::memcpy(o + 24, &w.global, 4);
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat) {
      const i64 sb = Packed<F>::strip_bytes(w), strips = (w.n + 15) / 16;
      parallel_rows(strips, w.n * w.k, [&](i64 s) {
        uint8_t* dst = o + kHeader + s * sb;
        std::memset(dst, 0, static_cast<size_t>(sb));
        pack_strip<F>(w, s, dst);
      });
    }
  });
}

bool packed_header_matches(const WeightRef& w, const void* packed) {
  const auto* p = static_cast<const uint8_t*>(packed);
  uint32_t hdr[2];
  i64 n, k;
  std::memcpy(hdr, p, 8);
  std::memcpy(&n, p + 8, 8);
  std::memcpy(&k, p + 16, 8);
  return hdr[0] == kMagic && hdr[1] == static_cast<uint32_t>(w.fmt) && n == w.n && k == w.k;
}

void run_int8_packed(const WeightRef& w, const void* packed, const XQuantRef& x, const YRef& y,
                     int64_t m, Path path, void* workspace) {
  if (m == 0 || w.n == 0) return;
  const WsLayout L = int8_layout(w, m, y, Path::gemm);
  char* ws = static_cast<char*>(workspace);
  float* C = y.dt == FDt::f32 ? static_cast<float*>(y.data) : reinterpret_cast<float*>(ws + L.c);
  const i64 ldc = y.dt == FDt::f32 ? y.row_stride : w.n;
  with_format(w, [&](auto f) {
    using F = decltype(f);
    if constexpr (!F::kFloat)
      int8_packed_impl<F>(w, static_cast<const uint8_t*>(packed), x, m, path, L, ws, C, ldc);
  });
  finish(y, m, w.n, C, ldc);
}

}  // namespace lowbit::matmul_cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
