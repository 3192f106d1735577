// Exhaustive tests of include/lowbit/numeric.hpp against the independent reference in
// numeric_reference.hpp: every f32 bit pattern for every narrow format and saturation
// mode, every code's decode and round trip, and f32 <-> f64.
// tests/python/test_numeric_ml_dtypes.py checks the same functions against ml_dtypes.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "lowbit/numeric.hpp"
#include "numeric_reference.hpp"

namespace {

using lowbit::Saturation;
namespace ref = lowbit::ref;

constexpr uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }
constexpr float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
constexpr uint64_t bits(double d) { return std::bit_cast<uint64_t>(d); }
constexpr double from_bits64(uint64_t u) { return std::bit_cast<double>(u); }

// ---- constexpr-ness: these are evaluated by the compiler ------------------------------

static_assert(lowbit::f32_to_f16(1.0f) == 0x3c00);
static_assert(lowbit::f32_to_f16(65520.0f) == 0x7c00);  // rounds past 65504: Inf
static_assert(lowbit::f32_to_f16(65520.0f, Saturation::finite) == 0x7bff);
static_assert(lowbit::f16_to_f32(0x0001) == 0x1p-24f);
static_assert(lowbit::f32_to_bf16(1.00390625f) == 0x3f80);  // tie to even (down)
static_assert(lowbit::f32_to_bf16(1.01171875f) == 0x3f82);  // tie to even (up)
static_assert(lowbit::bf16_to_f32(0xc040) == -3.0f);
static_assert(lowbit::f32_to_f8e4m3fn(464.0f) == 0x7e);  // tie between 448 and 480: even
static_assert(lowbit::f32_to_f8e4m3fn(465.0f) == 0x7f);  // overflow: NaN
static_assert(lowbit::f32_to_f8e4m3fn(465.0f, Saturation::finite) == 0x7e);
static_assert(lowbit::f8e4m3fn_to_f32(0x01) == 0x1p-9f);
static_assert(lowbit::f32_to_f8e5m2(61440.0f) == 0x7c);  // tie past 57344: Inf
static_assert(lowbit::f32_to_f8e5m2(-1e30f, Saturation::finite) == 0xfb);
static_assert(lowbit::f8e5m2_to_f32(0x7b) == 57344.0f);
static_assert(lowbit::f32_to_f4e2m1(2.5f) == 0x4);  // tie between 2 and 3: even (2)
static_assert(lowbit::f32_to_f4e2m1(-100.0f) == 0xf);
static_assert(lowbit::f4e2m1_to_f32(0x5) == 3.0f);
static_assert(lowbit::f32_to_e8m0(1.5f) == 0x80);  // half up: 2
static_assert(lowbit::f32_to_e8m0(0.0f) == 0xff);
static_assert(lowbit::f32_to_e8m0(0x1p-127f) == 0x00);
static_assert(lowbit::f32_to_e8m0(0x1.4p-127f) == 0x01);  // ml_dtypes' quirk: not 0x00
static_assert(lowbit::e8m0_to_f32(0x7f) == 1.0f);
static_assert(lowbit::f64_to_f32(1.0 + 0x1p-24) == 1.0f);  // tie to even
static_assert(lowbit::f32_to_f64(0.1f) == static_cast<double>(0.1f));

// ---- helpers -------------------------------------------------------------------------

struct Timer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

struct Mismatch {
  uint32_t input;
  bool finite;
  uint32_t got, want;
};

std::string describe(const std::vector<Mismatch>& ms) {
  std::string s;
  for (const Mismatch& m : ms) {
    s += "  f32 " + hex(m.input) + (m.finite ? " (finite)" : " (none)") + ": got " + hex(m.got) +
         ", want " + hex(m.want) + "\n";
  }
  return s;
}

// ---- exhaustive encode ---------------------------------------------------------------

/// Checks enc(x, sat) against the reference for all 2^32 f32 patterns x, in both modes when
/// kHasSat (otherwise only Saturation::none, whose reference the format fixes anyway).
template <bool kHasSat, class Enc>
void exhaustive_encode(const ref::Format& fmt, Enc enc) {
  Timer timer;
  const ref::Encoder r(fmt);
  const std::vector<uint32_t>& thr = r.thresholds();
  std::vector<Mismatch> mismatches;
  uint64_t mismatch_count = 0;
  auto record = [&](uint32_t x, bool finite, uint32_t got, uint32_t want) {
#pragma omp critical(lowbit_numeric_mismatch)
    {
      ++mismatch_count;
      if (mismatches.size() < 16) mismatches.push_back({x, finite, got, want});
    }
  };

  // Finite non-zero magnitudes, walked run by run: every input in [thr[i], thr[i+1])
  // rounds to entry i. Both signs are checked together.
  constexpr uint32_t kEnd = 0x7f800000u;
  constexpr uint32_t kBlock = 1u << 22;
  const int64_t blocks = (kEnd + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const uint32_t lo = std::max<uint32_t>(1u, static_cast<uint32_t>(blk) * kBlock);
    const uint32_t hi = std::min<uint64_t>(kEnd, static_cast<uint64_t>(blk + 1) * kBlock);
    size_t i = r.entry_of(lo);
    for (uint32_t a = lo; a < hi; ++i) {
      const uint32_t run_end = i + 1 < thr.size() ? std::min(hi, thr[i + 1]) : hi;
      const uint32_t pn = r.entry_code(i, false, false), nn = r.entry_code(i, true, false);
      const uint32_t pf = r.entry_code(i, false, true), nf = r.entry_code(i, true, true);
      uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
      for (uint32_t u = a; u < run_end; ++u) {
        const float p = from_bits(u), n = from_bits(u | 0x80000000u);
        bad |= (enc(p, Saturation::none) ^ pn) | (enc(n, Saturation::none) ^ nn);
        if constexpr (kHasSat) {
          bad |= (enc(p, Saturation::finite) ^ pf) | (enc(n, Saturation::finite) ^ nf);
        }
      }
      if (bad) {  // find the culprits, slowly
        for (uint32_t u = a; u < run_end; ++u) {
          for (int fin = 0; fin < (kHasSat ? 2 : 1); ++fin) {
            const Saturation s = fin ? Saturation::finite : Saturation::none;
            const uint32_t gp = enc(from_bits(u), s), gn = enc(from_bits(u | 0x80000000u), s);
            if (gp != (fin ? pf : pn)) record(u, fin, gp, fin ? pf : pn);
            if (gn != (fin ? nf : nn)) record(u | 0x80000000u, fin, gn, fin ? nf : nn);
          }
        }
      }
      a = run_end;
    }
  }

  // Zeros, Infs and every NaN, one by one against the reference's scalar rules.
  std::vector<uint32_t> specials = {0u, 0x80000000u, 0x7f800000u, 0xff800000u};
#pragma omp parallel for
  for (uint32_t m = 0x7f800001u; m <= 0x7fffffffu; ++m) {
    for (uint32_t x : {m, m | 0x80000000u}) {
      for (int fin = 0; fin < (kHasSat ? 2 : 1); ++fin) {
        const uint32_t got = enc(from_bits(x), fin ? Saturation::finite : Saturation::none);
        const uint32_t want = r.encode(x, fin);
        if (got != want) record(x, fin, got, want);
      }
    }
  }
  for (uint32_t x : specials) {
    for (int fin = 0; fin < (kHasSat ? 2 : 1); ++fin) {
      const uint32_t got = enc(from_bits(x), fin ? Saturation::finite : Saturation::none);
      const uint32_t want = r.encode(x, fin);
      if (got != want) record(x, fin, got, want);
    }
  }

  EXPECT_EQ(mismatch_count, 0u) << fmt.name << ": first mismatches:\n" << describe(mismatches);
  std::printf("[ timing   ] %s: all 2^32 f32 inputs x %d mode(s) in %.2f s (%d threads)\n",
              fmt.name, kHasSat ? 2 : 1, timer.seconds(), omp_get_max_threads());
}

TEST(NumericExhaustive, F16) {
  exhaustive_encode<true>(
      ref::kF16, [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_f16(x, s); });
}
TEST(NumericExhaustive, BF16) {
  exhaustive_encode<true>(
      ref::kBF16, [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_bf16(x, s); });
}
TEST(NumericExhaustive, F8E4M3FN) {
  exhaustive_encode<true>(ref::kF8E4M3FN, [](float x, Saturation s) -> uint32_t {
    return lowbit::f32_to_f8e4m3fn(x, s);
  });
}
TEST(NumericExhaustive, F8E5M2) {
  exhaustive_encode<true>(
      ref::kF8E5M2, [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_f8e5m2(x, s); });
}
TEST(NumericExhaustive, F4E2M1) {
  // f4e2m1 always saturates: there is no Saturation parameter.
  exhaustive_encode<false>(
      ref::kF4E2M1, [](float x, Saturation) -> uint32_t { return lowbit::f32_to_f4e2m1(x); });
}
TEST(NumericExhaustive, E8M0) {
  exhaustive_encode<true>(
      ref::kE8M0, [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_e8m0(x, s); });
}

// ---- every code: decode and round trip ----------------------------------------------

struct CodeOps {
  const ref::Format* fmt;
  float (*decode)(uint32_t);
  uint32_t (*encode)(float, Saturation);
};

const CodeOps kCodeOps[] = {
    {&ref::kF16, [](uint32_t c) { return lowbit::f16_to_f32(static_cast<uint16_t>(c)); },
     [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_f16(x, s); }},
    {&ref::kBF16, [](uint32_t c) { return lowbit::bf16_to_f32(static_cast<uint16_t>(c)); },
     [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_bf16(x, s); }},
    {&ref::kF8E4M3FN, [](uint32_t c) { return lowbit::f8e4m3fn_to_f32(static_cast<uint8_t>(c)); },
     [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_f8e4m3fn(x, s); }},
    {&ref::kF8E5M2, [](uint32_t c) { return lowbit::f8e5m2_to_f32(static_cast<uint8_t>(c)); },
     [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_f8e5m2(x, s); }},
    {&ref::kF4E2M1, [](uint32_t c) { return lowbit::f4e2m1_to_f32(static_cast<uint8_t>(c)); },
     [](float x, Saturation) -> uint32_t { return lowbit::f32_to_f4e2m1(x); }},
    {&ref::kE8M0, [](uint32_t c) { return lowbit::e8m0_to_f32(static_cast<uint8_t>(c)); },
     [](float x, Saturation s) -> uint32_t { return lowbit::f32_to_e8m0(x, s); }},
};

TEST(NumericCodes, DecodeMatchesDefinition) {
  for (const CodeOps& ops : kCodeOps) {
    const ref::Format& f = *ops.fmt;
    int failures = 0;
    for (uint32_t c = 0; c < f.code_count(); ++c) {
      const uint32_t got = bits(ops.decode(c));
      const double want = ref::decode(f, c);
      const bool neg = (c & f.sign_bit()) != 0;
      bool ok;
      if (std::isnan(want)) {
        if (f.kind == ref::Kind::ieee) {
          // f16 and bf16 keep the payload (widened); f8e5m2 gives the canonical quiet NaN.
          const uint32_t payload = c & ((1u << f.man_bits) - 1u);
          const uint32_t expect =
              f.man_bits == 2 ? 0x7fc00000u : 0x7f800000u | (payload << (23 - f.man_bits));
          ok = got == ((neg ? 0x80000000u : 0u) | expect);
        } else {
          ok = got == ((neg ? 0x80000000u : 0u) | 0x7fc00000u);
        }
      } else {
        ok = static_cast<double>(from_bits(got)) == want && ((got >> 31) != 0) == neg;
      }
      if (!ok && ++failures <= 8) {
        ADD_FAILURE() << f.name << " code " << hex(c) << " decodes to f32 " << hex(got) << ", want "
                      << want;
      }
    }
  }
}

TEST(NumericCodes, EveryCodeRoundTrips) {
  for (const CodeOps& ops : kCodeOps) {
    const ref::Format& f = *ops.fmt;
    const ref::Encoder r(f);
    int failures = 0;
    for (uint32_t c = 0; c < f.code_count(); ++c) {
      const bool neg = (c & f.sign_bit()) != 0;
      for (Saturation s : {Saturation::none, Saturation::finite}) {
        const uint32_t got = ops.encode(ops.decode(c), s);
        uint32_t want = c;
        if (ref::is_nan_code(f, c)) {
          if (f.kind == ref::Kind::no_specials) continue;
          // Canonical NaN, except f16 (numpy keeps the payload, and it survives f32).
          if (f.man_bits != 10) want = r.nan_result(neg ? 0xffc00000u : 0x7fc00000u);
        } else if (ref::is_inf_code(f, c) && s == Saturation::finite) {
          want = (neg ? f.sign_bit() : 0u) | r.max_code();
        }
        if (got != want && ++failures <= 8) {
          ADD_FAILURE() << f.name << " code " << hex(c) << " -> f32 " << hex(bits(ops.decode(c)))
                        << " -> " << hex(got) << ", want " << hex(want)
                        << (s == Saturation::finite ? " (finite)" : "");
        }
      }
    }
  }
}

// ---- f32 <-> f64 ---------------------------------------------------------------------

// x86-64's cvtss2sd / cvtsd2ss (SSE, default MXCSR: no FTZ/DAZ) are a second oracle here:
// they round to nearest even and quiet NaNs, keeping the top of the payload.
TEST(NumericF64, F32ToF64AllPatterns) {
  Timer timer;
  // The value of an f32 pattern is its integer significand times 2^(e - 150) (e = 1 for
  // subnormals): both factors are exact in double, and so is their product.
  double scale[256];
  for (int e = 0; e < 256; ++e) scale[e] = std::ldexp(1.0, (e == 0 ? 1 : e) - 150);
  uint64_t bad = 0;
#pragma omp parallel for reduction(+ : bad)
  for (int64_t i = 0; i < (int64_t{1} << 32); ++i) {
    const uint32_t u = static_cast<uint32_t>(i);
    const uint64_t got = bits(lowbit::f32_to_f64(from_bits(u)));
    uint64_t want;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      want = (static_cast<uint64_t>(u >> 31) << 63) | 0x7ff8000000000000ull |
             (static_cast<uint64_t>(u & 0x7fffffu) << 29);
    } else {
      const uint32_t e = (u >> 23) & 0xffu;
      const uint32_t m = (u & 0x7fffffu) | (e ? 0x800000u : 0u);
      const double v = e == 0xffu ? INFINITY : static_cast<double>(m) * scale[e];
      want = bits((u >> 31) ? -v : v);
    }
    bad += got != want;
  }
  EXPECT_EQ(bad, 0u);
  std::printf("[ timing   ] f32_to_f64: all 2^32 f32 inputs in %.2f s\n", timer.seconds());
}

TEST(NumericF64, F64ToF32SpotChecks) {
  struct Case {
    uint64_t in;
    uint32_t out;
  };
  const Case cases[] = {
      {bits(1.0), 0x3f800000u},
      {bits(1.0 + 0x1p-24), 0x3f800000u},            // tie, even is down
      {bits(1.0 + 0x3p-24), 0x3f800002u},            // tie, even is up
      {bits(1.0 + 0x1p-24 + 0x1p-52), 0x3f800001u},  // just past the tie
      {bits(1.0 + 0x1p-24 - 0x1p-53), 0x3f800000u},  // just below the tie
      {bits(0x1.fffffep127), 0x7f7fffffu},           // max finite
      {bits(0x1.fffffefffffffp127), 0x7f7fffffu},    // just below max + half ulp
      {bits(0x1.ffffffp127), 0x7f800000u},           // max + half ulp: tie, rounds to Inf
      {bits(-1e300), 0xff800000u},
      {bits(0x1p-149), 0x00000001u},                // smallest subnormal
      {bits(0x1p-150), 0x00000000u},                // half of it: tie to even (zero)
      {bits(0x1.0000000000001p-150), 0x00000001u},  // just past: rounds up
      {bits(0x3p-150), 0x00000002u},                // 1.5 units: tie to even (up)
      {bits(-0x1p-151), 0x80000000u},               // underflow keeps the sign
      {0x0000000000000001ull, 0x00000000u},         // f64 subnormal
      {0x8000000000000001ull, 0x80000000u},
      {bits(0x1p-126 - 0x1p-150), 0x00800000u},  // tie between max subnormal and min normal
      {bits(0x1p-126 - 0x1p-149), 0x007fffffu},  // max subnormal, exact
      {bits(0x1.7ffff8p-128), 0x002fffffu},      // a subnormal with an exact result
      {0x7ff0000000000000ull, 0x7f800000u},      // Inf
      {0xfff0000000000000ull, 0xff800000u},
      {0x7ff0000000000001ull, 0x7fc00000u},  // signalling NaN, payload below f32's: quieted
      {0xfff4000000000000ull, 0xffe00000u},  // payload top bits kept, quiet bit set
      {0x7ff8000000000000ull, 0x7fc00000u},
      {0x7fffffffffffffffull, 0x7fffffffu},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(bits(lowbit::f64_to_f32(from_bits64(c.in))), c.out) << "f64 " << hex(c.in);
    volatile double hw_in = from_bits64(c.in);
    EXPECT_EQ(bits(static_cast<float>(hw_in)), c.out) << "f64 " << hex(c.in) << " (x86 cvtsd2ss)";
  }
}

TEST(NumericF64, F64ToF32RandomAgainstHardware) {
  // Random doubles concentrated where f32 rounding is interesting: exponents spanning
  // f32's range and beyond, and low mantissa bits at, next to, or away from a tie.
  constexpr int64_t kSamples = int64_t{1} << 25;
  uint64_t bad = 0;
  uint64_t first_bad = 0;
#pragma omp parallel reduction(+ : bad)
  {
    std::mt19937_64 rng(12345 + omp_get_thread_num());
#pragma omp for
    for (int64_t i = 0; i < kSamples; ++i) {
      const uint64_t r = rng();
      uint64_t d;
      switch (r & 3) {
        case 0:
          d = rng();
          break;  // anything, NaN payloads included
        default: {
          const uint64_t exp = 1023 - 160 + (rng() % 300);  // around f32's range
          uint64_t man = rng() & 0xfffffffffffffull;
          const uint64_t low = (r >> 2) & 7;
          const uint64_t drop_bits = exp >= 1023 - 126 ? 29 : 29 + (1023 - 126 - exp);
          if (drop_bits < 53) {
            const uint64_t half = 1ull << (drop_bits - 1);
            const uint64_t mask = (1ull << drop_bits) - 1;
            if (low == 0) man = (man & ~mask) | half;  // exact tie
            if (low == 1) man = (man & ~mask) | (half + 1);
            if (low == 2) man = (man & ~mask) | (half - 1);
            if (low == 3) man = man & ~mask;  // exact
            man &= 0xfffffffffffffull;
          }
          d = ((r >> 63) << 63) | (exp << 52) | man;
        }
      }
      volatile double hw_in = from_bits64(d);
      const uint32_t want = bits(static_cast<float>(hw_in));
      const uint32_t got = bits(lowbit::f64_to_f32(from_bits64(d)));
      if (got != want) {
        ++bad;
        first_bad = d;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << "e.g. f64 " << hex(first_bad);
}

TEST(NumericF64, F64SourcesRoundTwice) {
  // lowbit converts f64 to a narrow format through f32 (ml_dtypes and PyTorch do the
  // same); numpy's direct f64 -> f16 rounds once and can differ. 1 + 2^-11 + 2^-40 is just
  // above the f16 tie 1 + 2^-11, but f32 rounds it onto the tie, which then goes to even.
  const double d = 1.0 + 0x1p-11 + 0x1p-40;
  EXPECT_EQ(bits(lowbit::f64_to_f32(d)), bits(1.0f + 0x1p-11f));
  EXPECT_EQ(lowbit::f32_to_f16(lowbit::f64_to_f32(d)), 0x3c00);  // direct rounding: 0x3c01
}

}  // namespace
