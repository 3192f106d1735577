// Scalar conversions between f32/f64 and the narrow float formats lowbit stores.
//
// Every function here is constexpr on the host and callable from CUDA device code
// (LOWBIT_HD), and is written with integer operations only, so the same input gives
// the same bits on every backend, independent of FTZ/DAZ modes or the hardware's
// own NaN canonicalisation. The reference for each rule is the `ml_dtypes` package
// (numpy for f16); docs/numerics.md lists every case.
#pragma once

#include <bit>
#include <cstdint>

#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__ __forceinline__
#else
#define LOWBIT_HD inline
#endif

namespace lowbit {

/// How a conversion treats finite values past the largest finite code and +-Inf.
enum class Saturation : uint8_t {
  none,    ///< ml_dtypes' default: overflow gives Inf, or NaN where the format has no Inf
  finite,  ///< like PTX cvt.satfinite: overflow and +-Inf clamp to +-max_finite; NaN stays NaN
};

namespace numeric_detail {

LOWBIT_HD constexpr uint32_t bits_of(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}
LOWBIT_HD constexpr float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}
LOWBIT_HD constexpr uint64_t bits_of(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  return std::bit_cast<uint64_t>(d);
#endif
}
LOWBIT_HD constexpr double double_of(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  return std::bit_cast<double>(u);
#endif
}

/// Index of the most significant set bit of a non-zero value.
LOWBIT_HD constexpr int msb_index(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(v);
#else
  return 31 - std::countl_zero(v);
#endif
}

/// Which special values a format encodes.
enum class Specials : uint8_t {
  ieee,      ///< exponent all ones: Inf (mantissa 0) and NaN (f16, bf16, f8e5m2, f32)
  nan_only,  ///< "fn": only S.1111.111 is NaN, no Inf (f8e4m3fn)
  none,      ///< "fn" without NaN or Inf (f4e2m1)
};

/// A sign-magnitude binary float format: 1 sign bit, E exponent bits, M mantissa bits.
struct MiniFloat {
  int exp_bits;
  int man_bits;
  int bias;
  Specials specials;

  LOWBIT_HD constexpr int width() const { return 1 + exp_bits + man_bits; }
  LOWBIT_HD constexpr uint32_t sign_bit() const { return 1u << (exp_bits + man_bits); }
  LOWBIT_HD constexpr uint32_t inf_code() const { return ((1u << exp_bits) - 1u) << man_bits; }
  /// The NaN that conversions produce (ml_dtypes' choice: quiet, payload dropped).
  LOWBIT_HD constexpr uint32_t nan_code() const {
    return specials == Specials::ieee ? inf_code() | (1u << (man_bits - 1))
                                      : (1u << (exp_bits + man_bits)) - 1u;
  }
  /// The largest finite magnitude, as a code without its sign bit.
  LOWBIT_HD constexpr uint32_t max_code() const {
    switch (specials) {
      case Specials::ieee:
        return inf_code() - 1u;
      case Specials::nan_only:
        return (1u << (exp_bits + man_bits)) - 2u;
      case Specials::none:
        return (1u << (exp_bits + man_bits)) - 1u;
    }
    return 0;
  }
};

inline constexpr MiniFloat kF32{8, 23, 127, Specials::ieee};
inline constexpr MiniFloat kF16{5, 10, 15, Specials::ieee};
inline constexpr MiniFloat kBF16{8, 7, 127, Specials::ieee};
inline constexpr MiniFloat kF8E4M3FN{4, 3, 7, Specials::nan_only};
inline constexpr MiniFloat kF8E5M2{5, 2, 15, Specials::ieee};
inline constexpr MiniFloat kF4E2M1{2, 1, 1, Specials::none};

/// Rounds the f32 bit pattern `x` to format F, round-to-nearest-even. NaN gives
/// F's canonical NaN with the input's sign (for formats without NaN: see below).
template <MiniFloat F>
LOWBIT_HD constexpr uint32_t encode_from_f32(uint32_t x, Saturation sat) {
  constexpr int shift = 23 - F.man_bits;  // mantissa bits dropped in the normal range
  constexpr int emin = 1 - F.bias;        // unbiased exponent of F's smallest normal
  constexpr uint32_t min_normal_src = static_cast<uint32_t>(emin + 127) << 23;
  const uint32_t sign = (x >> 31) ? F.sign_bit() : 0u;
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) {
    // ml_dtypes maps NaN into a format without NaN as a zero of the opposite sign;
    // we match it bit for bit. Quantizers reject NaN before they get here.
    if constexpr (F.specials == Specials::none) return sign ^ F.sign_bit();
    return sign | F.nan_code();
  }
  if (a == 0x7f800000u) {
    if (F.specials == Specials::ieee && sat == Saturation::none) return sign | F.inf_code();
    if (F.specials == Specials::nan_only && sat == Saturation::none) return sign | F.nan_code();
    return sign | F.max_code();
  }
  uint32_t code;
  if (a >= min_normal_src) {
    // Normal result: re-bias the exponent in place, then round the mantissa to
    // nearest-even. A carry out of the mantissa correctly bumps the exponent.
    uint32_t r = a - (static_cast<uint32_t>(127 - F.bias) << 23);
    r += ((1u << (shift - 1)) - 1u) + ((r >> shift) & 1u);
    code = r >> shift;
  } else {
    // Subnormal or zero result: value = m * 2^(e - 23); F's subnormal unit is
    // 2^(emin - M), so the code is m >> s rounded to nearest-even.
    const uint32_t expf = a >> 23;
    const uint32_t m = expf ? ((a & 0x7fffffu) | 0x800000u) : a;
    const int e = expf ? static_cast<int>(expf) - 127 : -126;
    const int s = 23 + emin - F.man_bits - e;  // >= shift + 1
    if (s > 25) {
      code = 0;  // m < 2^24, so m / 2^s < 1/2: rounds to zero
    } else {
      const uint32_t q = m >> s;
      const uint32_t rem = m & ((1u << s) - 1u);
      const uint32_t half = 1u << (s - 1);
      code = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    }
  }
  if (code > F.max_code()) {
    if (sat == Saturation::finite || F.specials == Specials::none) {
      code = F.max_code();
    } else {
      code = F.specials == Specials::ieee ? F.inf_code() : F.nan_code();
    }
  }
  return sign | code;
}

/// Widens a code of format F to the f32 bit pattern of the same value (exact).
/// NaN gives f32's quiet NaN 0x7fc00000 with the code's sign (ml_dtypes).
template <MiniFloat F>
LOWBIT_HD constexpr uint32_t decode_to_f32(uint32_t code) {
  const uint32_t sign = (code & F.sign_bit()) ? 0x80000000u : 0u;
  const uint32_t mag = code & (F.sign_bit() - 1u);
  const uint32_t expf = mag >> F.man_bits;
  const uint32_t man = mag & ((1u << F.man_bits) - 1u);
  if constexpr (F.specials == Specials::ieee) {
    if (expf == (1u << F.exp_bits) - 1u) return sign | (man ? 0x7fc00000u : 0x7f800000u);
  } else if constexpr (F.specials == Specials::nan_only) {
    if (mag == F.nan_code()) return sign | 0x7fc00000u;
  }
  if (expf == 0) {
    if (man == 0) return sign;
    // Subnormal: man * 2^(1 - bias - M), a normal number in f32 for every F here.
    const int p = msb_index(man);
    const uint32_t e32 = static_cast<uint32_t>(1 - F.bias - F.man_bits + p + 127);
    return sign | (e32 << 23) | ((man << (23 - p)) & 0x7fffffu);
  }
  return sign | ((expf - F.bias + 127) << 23) | (man << (23 - F.man_bits));
}

}  // namespace numeric_detail

// ---- f32 -> f64 and back, bit-defined (x86 semantics, also on the GPU) -------------

/// f32 -> f64, exact. NaN keeps its payload and is quieted, as x86's cvtss2sd does.
LOWBIT_HD constexpr double f32_to_f64(float x) {
  const uint32_t b = numeric_detail::bits_of(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    const uint64_t s = static_cast<uint64_t>(b >> 31) << 63;
    return numeric_detail::double_of(s | 0x7ff8000000000000ull |
                                     (static_cast<uint64_t>(b & 0x7fffffu) << 29));
  }
  return static_cast<double>(x);  // exact for every non-NaN f32
}

/// f64 -> f32, round to nearest even; overflow gives Inf; NaN keeps the top of its
/// payload and is quieted (cvtsd2ss). Written with integers so FTZ modes cannot change it.
LOWBIT_HD constexpr float f64_to_f32(double d) {
  const uint64_t b = numeric_detail::bits_of(d);
  const uint32_t sign = static_cast<uint32_t>(b >> 63) << 31;
  const uint64_t a = b & 0x7fffffffffffffffull;
  if (a > 0x7ff0000000000000ull)
    return numeric_detail::float_of(sign | 0x7fc00000u |
                                    static_cast<uint32_t>((a >> 29) & 0x7fffffu));
  if (a == 0x7ff0000000000000ull) return numeric_detail::float_of(sign | 0x7f800000u);
  const int e = static_cast<int>(a >> 52) - 1023;
  uint32_t code;
  if (e >= -126) {
    uint64_t r = a - (static_cast<uint64_t>(1023 - 127) << 52);
    r += ((1ull << 28) - 1u) + ((r >> 29) & 1u);
    r >>= 29;
    code = r >= 0x7f800000ull ? 0x7f800000u : static_cast<uint32_t>(r);
  } else {
    const uint64_t expf = a >> 52;
    const uint64_t m = expf ? ((a & 0xfffffffffffffull) | (1ull << 52)) : a;
    const int ee = expf ? e : -1022;
    const int s = 52 + (-126) - 23 - ee;  // subnormal unit of f32 is 2^-149
    if (s > 54) {
      code = 0;
    } else {
      const uint64_t q = m >> s;
      const uint64_t rem = m & ((1ull << s) - 1u);
      const uint64_t half = 1ull << (s - 1);
      code = static_cast<uint32_t>(q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u));
    }
  }
  return numeric_detail::float_of(sign | code);
}

// ---- f16 (IEEE binary16; numpy's rules) ---------------------------------------------

/// f32 -> f16 bits, round to nearest even. NaN keeps the top 10 payload bits, as
/// numpy does (a payload that would vanish becomes 1), without quieting.
LOWBIT_HD constexpr uint16_t f32_to_f16(float x, Saturation sat = Saturation::none) {
  const uint32_t b = numeric_detail::bits_of(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    uint32_t h = 0x7c00u + ((b & 0x7fffffu) >> 13);
    if (h == 0x7c00u) h = 0x7c01u;
    return static_cast<uint16_t>(((b >> 16) & 0x8000u) | h);
  }
  return static_cast<uint16_t>(numeric_detail::encode_from_f32<numeric_detail::kF16>(b, sat));
}
/// f16 bits -> f32, exact. NaN keeps its payload (numpy), not quieted.
LOWBIT_HD constexpr float f16_to_f32(uint16_t h) {
  if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) {
    return numeric_detail::float_of((static_cast<uint32_t>(h & 0x8000u) << 16) | 0x7f800000u |
                                    (static_cast<uint32_t>(h & 0x3ffu) << 13));
  }
  return numeric_detail::float_of(numeric_detail::decode_to_f32<numeric_detail::kF16>(h));
}

// ---- bf16 ---------------------------------------------------------------------------

/// f32 -> bf16 bits, round to nearest even; NaN gives 0x7fc0 with the input's sign.
LOWBIT_HD constexpr uint16_t f32_to_bf16(float x, Saturation sat = Saturation::none) {
  return static_cast<uint16_t>(
      numeric_detail::encode_from_f32<numeric_detail::kBF16>(numeric_detail::bits_of(x), sat));
}
/// bf16 bits -> f32, exact (the top half of the f32 pattern; NaN payloads kept).
LOWBIT_HD constexpr float bf16_to_f32(uint16_t h) {
  return numeric_detail::float_of(static_cast<uint32_t>(h) << 16);
}

// ---- fp8 ----------------------------------------------------------------------------

/// f32 -> f8e4m3fn bits (OCP FP8 E4M3: bias 7, max 448, only S.1111.111 is NaN).
/// Saturation::none: |x| > 464 and +-Inf give NaN (ml_dtypes). finite: clamp to +-448.
LOWBIT_HD constexpr uint8_t f32_to_f8e4m3fn(float x, Saturation sat = Saturation::none) {
  return static_cast<uint8_t>(
      numeric_detail::encode_from_f32<numeric_detail::kF8E4M3FN>(numeric_detail::bits_of(x), sat));
}
LOWBIT_HD constexpr float f8e4m3fn_to_f32(uint8_t c) {
  return numeric_detail::float_of(numeric_detail::decode_to_f32<numeric_detail::kF8E4M3FN>(c));
}

/// f32 -> f8e5m2 bits (OCP FP8 E5M2: IEEE-like, bias 15, max 57344, Inf and NaN).
LOWBIT_HD constexpr uint8_t f32_to_f8e5m2(float x, Saturation sat = Saturation::none) {
  return static_cast<uint8_t>(
      numeric_detail::encode_from_f32<numeric_detail::kF8E5M2>(numeric_detail::bits_of(x), sat));
}
LOWBIT_HD constexpr float f8e5m2_to_f32(uint8_t c) {
  return numeric_detail::float_of(numeric_detail::decode_to_f32<numeric_detail::kF8E5M2>(c));
}

// ---- fp4 ----------------------------------------------------------------------------

/// f32 -> f4e2m1 code in the low nibble (OCP MX FP4: bias 1, values 0..6, no Inf/NaN).
/// Overflow and +-Inf always saturate to +-6 (the format has nothing else to give);
/// NaN gives a zero of the opposite sign, as ml_dtypes does.
LOWBIT_HD constexpr uint8_t f32_to_f4e2m1(float x) {
  return static_cast<uint8_t>(numeric_detail::encode_from_f32<numeric_detail::kF4E2M1>(
      numeric_detail::bits_of(x), Saturation::finite));
}
LOWBIT_HD constexpr float f4e2m1_to_f32(uint8_t c) {
  return numeric_detail::float_of(numeric_detail::decode_to_f32<numeric_detail::kF4E2M1>(c & 0xfu));
}

// ---- e8m0 (OCP MX scale: 2^(code - 127), 0xff is NaN, no zero, no sign) --------------

/// f32 -> e8m0 bits, as ml_dtypes (and PyTorch) do it: the f32 pattern is rounded to its
/// exponent field, so for normal inputs the exponent rounds half up (1.5 * 2^k -> 2^(k+1));
/// an f32 subnormal (under 2^-126) gives code 0 (2^-127) up to and including 2^-127 and
/// code 1 (2^-126) above it (the rounding treats code 0 as if it were zero, so 1.25 * 2^-127
/// goes to 2^-126 although 2^-127 is nearer); zero, negatives, Inf and NaN give NaN (0xff);
/// values from 1.5 * 2^127 up give NaN, or 0xfe (2^127) with Saturation::finite.
LOWBIT_HD constexpr uint8_t f32_to_e8m0(float x, Saturation sat = Saturation::none) {
  const uint32_t b = numeric_detail::bits_of(x);
  if ((b >> 31) || b == 0u || b > 0x7f800000u) return 0xffu;
  if (b == 0x7f800000u) return sat == Saturation::finite ? 0xfeu : 0xffu;
  const uint32_t expf = b >> 23;
  // Normal: round the mantissa half up into the exponent. Subnormal (expf == 0): the
  // pattern b is 0.m * 2^-126, rounded to nearest-even onto {0, 1} * 2^-126.
  const uint32_t code = expf != 0 ? expf + ((b >> 22) & 1u) : (b > 0x400000u ? 1u : 0u);
  if (code >= 0xffu) return sat == Saturation::finite ? 0xfeu : 0xffu;
  return static_cast<uint8_t>(code);
}
/// e8m0 bits -> f32: 2^(c - 127) (code 0 is the f32 subnormal 2^-127, code 1 the smallest
/// normal 2^-126), 0xff -> NaN (0x7fc00000).
LOWBIT_HD constexpr float e8m0_to_f32(uint8_t c) {
  // One expression of selects: as two early returns nvcc compiled it to branches, which in the
  // wgmma kernels' decode (a scale per 32 elements: 234 instructions per unit, now 183) cost
  // mxfp4 on the H100 a fifth of its M = 64 time (0.047-0.050 ms, now 0.038-0.042).
  return numeric_detail::float_of(c == 0xffu ? 0x7fc00000u
                                  : c == 0u  ? 0x00400000u
                                             : static_cast<uint32_t>(c) << 23);
}

}  // namespace lowbit
