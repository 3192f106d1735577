// An independent reference for the f32 -> narrow-float conversions of
// include/lowbit/numeric.hpp, written from the format definitions rather than from
// numeric.hpp's bit tricks:
//
//  * every finite code of the target format is decoded with exact double arithmetic
//    (std::ldexp of the integer significand), giving a sorted table of values;
//  * one virtual entry is appended past the largest finite value, at max + ulp of the
//    top binade (2 * max for e8m0): an input that rounds to it has overflowed;
//  * an input rounds to the nearest table value; on an exact tie the entry with the even
//    code (LSB 0) wins (IEEE round-to-nearest-even), or, for e8m0, the larger one
//    (ml_dtypes rounds e8m0 half up), except that between e8m0's two smallest codes the
//    boundary is 2^-127 itself (ml_dtypes' quirk, see the constructor);
//  * the boundaries between neighbouring entries are turned into f32 bit-pattern
//    thresholds once (by bisection over f32 patterns, comparing in double), so that the
//    entry of a non-negative f32 pattern is the number of thresholds at or below it;
//  * NaN, Inf, zero and sign rules are then applied per format as ml_dtypes (numpy for
//    f16) defines them; docs/numerics.md lists them.
//
// Because non-negative f32 patterns are ordered like their values, an exhaustive test can
// walk all 2^31 magnitudes threshold by threshold: each run of inputs between two
// thresholds must encode to one code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace lowbit::ref {

enum class Kind {
  ieee,         ///< exponent all ones is Inf (mantissa 0) or NaN: f16, bf16, f8e5m2
  nan_only,     ///< only S.1...1 is NaN, no Inf: f8e4m3fn
  no_specials,  ///< no Inf, no NaN: f4e2m1
  e8m0,         ///< unsigned power of two 2^(c - bias); 0xff is NaN
};

struct Format {
  const char* name;
  int exp_bits;
  int man_bits;
  int bias;
  Kind kind;

  int width() const { return kind == Kind::e8m0 ? 8 : 1 + exp_bits + man_bits; }
  uint32_t sign_bit() const { return kind == Kind::e8m0 ? 0u : 1u << (exp_bits + man_bits); }
  uint32_t code_count() const { return 1u << width(); }
};

inline const Format kF16{"f16", 5, 10, 15, Kind::ieee};
inline const Format kBF16{"bf16", 8, 7, 127, Kind::ieee};
inline const Format kF8E4M3FN{"f8e4m3fn", 4, 3, 7, Kind::nan_only};
inline const Format kF8E5M2{"f8e5m2", 5, 2, 15, Kind::ieee};
inline const Format kF4E2M1{"f4e2m1", 2, 1, 1, Kind::no_specials};
inline const Format kE8M0{"e8m0", 8, 0, 127, Kind::e8m0};

/// The exact value of the f32 bit pattern `u` (any sign; NaN/Inf as such), in double.
inline double f32_value(uint32_t u) {
  const uint32_t e = (u >> 23) & 0xffu;
  const uint32_t m = u & 0x7fffffu;
  double v;
  if (e == 0xffu) {
    v = m ? std::nan("") : INFINITY;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -149);
  } else {
    v = std::ldexp(static_cast<double>(m | 0x800000u), static_cast<int>(e) - 150);
  }
  return (u >> 31) ? -v : v;
}

/// Whether `code` (sign bit included) is a NaN of format f.
inline bool is_nan_code(const Format& f, uint32_t code) {
  const uint32_t mag = code & (f.sign_bit() ? f.sign_bit() - 1u : 0xffu);
  switch (f.kind) {
    case Kind::ieee:
      return (mag >> f.man_bits) == (1u << f.exp_bits) - 1u && (mag & ((1u << f.man_bits) - 1u));
    case Kind::nan_only:
      return mag == (1u << (f.exp_bits + f.man_bits)) - 1u;
    case Kind::no_specials:
      return false;
    case Kind::e8m0:
      return code == 0xffu;
  }
  return false;
}

/// Whether `code` is an Inf of format f.
inline bool is_inf_code(const Format& f, uint32_t code) {
  if (f.kind != Kind::ieee) return false;
  const uint32_t mag = code & (f.sign_bit() - 1u);
  return mag == ((1u << f.exp_bits) - 1u) << f.man_bits;
}

/// The value of `code` from the format's definition, exact in double (NaN, +-Inf as such).
inline double decode(const Format& f, uint32_t code) {
  if (f.kind == Kind::e8m0) {
    if (code == 0xffu) return std::nan("");
    return std::ldexp(1.0, static_cast<int>(code) - f.bias);
  }
  const bool neg = (code & f.sign_bit()) != 0;
  if (is_nan_code(f, code)) return neg ? -std::nan("") : std::nan("");
  if (is_inf_code(f, code)) return neg ? -INFINITY : INFINITY;
  const uint32_t mag = code & (f.sign_bit() - 1u);
  const int e = static_cast<int>(mag >> f.man_bits);
  const uint32_t m = mag & ((1u << f.man_bits) - 1u);
  const double v =
      e == 0 ? std::ldexp(static_cast<double>(m), 1 - f.bias - f.man_bits)
             : std::ldexp(static_cast<double>(m + (1u << f.man_bits)), e - f.bias - f.man_bits);
  return neg ? -v : v;
}

/// Slow-to-build, fast-to-query reference encoder f32 -> format f.
class Encoder {
 public:
  explicit Encoder(const Format& f) : f_(f) {
    // Non-negative finite codes in increasing code order, with their exact values.
    for (uint32_t c = 0; c < (f.sign_bit() ? f.sign_bit() : 0x100u); ++c) {
      if (is_nan_code(f, c) || is_inf_code(f, c)) continue;
      codes_.push_back(c);
      values_.push_back(decode(f, c));
    }
    for (size_t i = 1; i < values_.size(); ++i) {
      if (!(values_[i - 1] < values_[i])) fail("table not increasing");
    }
    max_code_ = codes_.back();
    // The virtual overflow entry: one step past max (the top binade's spacing), which is
    // the value an unbounded exponent range would give the next code, max_code + 1.
    const size_t n = values_.size();
    const double step = f.kind == Kind::e8m0 ? values_[n - 1] : values_[n - 1] - values_[n - 2];
    codes_.push_back(max_code_ + 1u);
    values_.push_back(values_[n - 1] + step);
    // thresholds_[i]: the smallest non-negative f32 pattern whose value rounds to entry i
    // or above (thresholds_[0] = 0). 0x7f800000 (Inf) when no finite f32 does.
    thresholds_.assign(values_.size(), 0u);
    for (size_t i = 1; i < values_.size(); ++i) {
      const double lo = values_[i - 1];
      const double hi = values_[i];
      double mid = (lo + hi) / 2;  // exact: both have few significant bits
      if (mid - lo != hi - mid) fail("inexact midpoint");
      bool upper_wins_tie = f.kind == Kind::e8m0 || (codes_[i] & 1u) == 0;
      if (f.kind == Kind::e8m0 && i == 1) {
        // ml_dtypes' (and PyTorch's) quirk: rounding between 2^-127 (code 0) and 2^-126
        // (code 1) happens as if code 0 were zero: the boundary is 2^-127 itself, and
        // a tie (2^-127 exactly) goes to code 0.
        mid = lo;
        upper_wins_tie = false;
      }
      auto rounds_up = [&](uint32_t u) {
        const double x = f32_value(u);
        return x > mid || (x == mid && upper_wins_tie);
      };
      uint32_t a = 0, b = 0x7f800000u;  // invariant: !rounds_up(a - 1), rounds_up(b) or b = Inf
      while (a < b) {
        const uint32_t c = a + (b - a) / 2;
        if (rounds_up(c)) {
          b = c;
        } else {
          a = c + 1;
        }
      }
      thresholds_[i] = a;
    }
  }

  const Format& format() const { return f_; }
  /// Entry thresholds over non-negative f32 patterns; see the constructor.
  const std::vector<uint32_t>& thresholds() const { return thresholds_; }
  size_t entries() const { return codes_.size(); }
  double entry_value(size_t i) const { return values_[i]; }
  uint32_t max_code() const { return max_code_; }

  /// The entry a finite non-negative f32 pattern rounds to.
  size_t entry_of(uint32_t mag) const {
    return static_cast<size_t>(std::upper_bound(thresholds_.begin(), thresholds_.end(), mag) -
                               thresholds_.begin()) -
           1u;
  }

  /// The code of a finite non-zero input that rounds to entry i, by sign and saturation
  /// mode (finite = clamp overflow to max finite).
  uint32_t entry_code(size_t i, bool negative, bool finite) const {
    const bool overflow = i + 1 == codes_.size();
    if (f_.kind == Kind::e8m0) {
      if (negative) return 0xffu;
      if (overflow) return finite ? max_code_ : 0xffu;
      return codes_[i];
    }
    uint32_t mag = codes_[i];
    if (overflow) {
      if (finite || f_.kind == Kind::no_specials) {
        mag = max_code_;
      } else if (f_.kind == Kind::ieee) {
        mag = ((1u << f_.exp_bits) - 1u) << f_.man_bits;  // Inf
      } else {
        mag = (1u << (f_.exp_bits + f_.man_bits)) - 1u;  // the only NaN
      }
    }
    return (negative ? f_.sign_bit() : 0u) | mag;
  }

  /// The reference result for any f32 bit pattern.
  uint32_t encode(uint32_t x, bool finite) const {
    const bool neg = (x >> 31) != 0;
    const uint32_t mag = x & 0x7fffffffu;
    const uint32_t sign = neg ? f_.sign_bit() : 0u;
    if (mag > 0x7f800000u) return nan_result(x);
    if (f_.kind == Kind::e8m0 && (neg || mag == 0)) return 0xffu;  // no zero, no sign
    if (mag == 0x7f800000u) {
      if (f_.kind == Kind::e8m0) return finite ? max_code_ : 0xffu;
      // Inf behaves like an overflowing finite value.
      return entry_code(codes_.size() - 1, neg, finite);
    }
    if (mag == 0) return sign;
    return entry_code(entry_of(mag), neg, finite);
  }

  /// NaN inputs (ml_dtypes; numpy for f16). Same in both saturation modes.
  uint32_t nan_result(uint32_t x) const {
    const bool neg = (x >> 31) != 0;
    const uint32_t sign = neg ? f_.sign_bit() : 0u;
    switch (f_.kind) {
      case Kind::e8m0:
        return 0xffu;
      case Kind::no_specials:
        return neg ? 0u : f_.sign_bit();  // zero of the opposite sign
      case Kind::nan_only:
        return sign | ((1u << (f_.exp_bits + f_.man_bits)) - 1u);
      case Kind::ieee:
        break;
    }
    const uint32_t inf = ((1u << f_.exp_bits) - 1u) << f_.man_bits;
    if (f_.man_bits == 10) {
      // numpy's f16: keep the top 10 payload bits, no quieting; 1 if none survive.
      uint32_t payload = (x & 0x7fffffu) >> 13;
      if (payload == 0) payload = 1;
      return sign | inf | payload;
    }
    return sign | inf | (1u << (f_.man_bits - 1));  // the canonical quiet NaN
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    std::fprintf(stderr, "lowbit::ref::Encoder(%s): %s\n", f_.name, what);
    std::abort();
  }

  Format f_;
  std::vector<uint32_t> codes_;
  std::vector<double> values_;
  std::vector<uint32_t> thresholds_;
  uint32_t max_code_ = 0;
};

}  // namespace lowbit::ref
