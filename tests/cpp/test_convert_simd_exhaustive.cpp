// Exhaustive proof that the convert_simd kernel gives numeric.hpp's bits:
//  - all 2^32 f32 bit patterns into every narrow format in both Saturation modes (and a
//    rotating 1/32 of them into f32 and f64);
//  - every code of f16, bf16, f8e4m3fn, f8e5m2, e8m0 and f4e2m1 into every float dtype;
//  - f64 sources at every f32 rounding position (ties, ties +- 1 ulp, subnormal cuts);
//  - the streaming-store path (tensors past the threshold) with misaligned destinations,
//    odd counts and 1 or 2 threads.
// Each check runs on every Highway target compiled into the kernel that this CPU
// supports, forced in turn with hwy::SetSupportedTargetsForTest, so every target the
// dispatcher may pick is covered, not only the best one; the plan's SKU must name the
// forced target. Every check covers every target in full except the 2^32 sweep, which
// runs in full on AVX3 and AVX2 (the targets of x86-64 CPUs of the last decade) and on 1/32
// of the inputs, in slices spread over every exponent, on SSE4, SSSE3 and SCALAR
// (numeric.hpp's own loop), to stay near a minute on 2 cores. LOWBIT_SWEEP_ALL_TARGETS=1
// sweeps every target in full (several minutes).
//
// tests/cpp/test_convert.cpp runs every kernel against the reference on random
// awkward shapes; this file is the exhaustive one. Timings are printed.
#include <gtest/gtest.h>
#include <hwy/targets.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/convert_simd.hpp"
#include "lowbit/convert.hpp"
#include "lowbit/numeric.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace {

using lowbit::ConvertDesc;
using lowbit::ConvertPlan;
using lowbit::Dtype;
using lowbit::Saturation;
using lowbit::Shape;
using lowbit::TensorView;
namespace simd = lowbit::convert_simd_detail;

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

const char* sat_name(Saturation s) { return s == Saturation::finite ? "finite" : "none"; }
constexpr Saturation kSats[] = {Saturation::none, Saturation::finite};
std::string name(Dtype d) { return std::string(lowbit::dtype_name(d)); }

// ---- targets ---------------------------------------------------------------------------

struct Target {
  int64_t bit;
  std::string name;
  bool full_sweep;  ///< the whole f32 sweep, not 1/32 of it
};

/// Every target compiled into the kernel that this CPU can run, best first.
const std::vector<Target>& targets() {
  static const std::vector<Target> list = [] {
    hwy::SetSupportedTargetsForTest(0);
    const int64_t mask = simd::compiled_targets() & hwy::SupportedTargets();
    // LOWBIT_SWEEP_ALL_TARGETS=1: the whole f32 sweep on every target (several minutes;
    // for qualifying a new compiler or Highway version).
    const char* env = std::getenv("LOWBIT_SWEEP_ALL_TARGETS");
    const bool all = env && std::string(env) == "1";
    std::vector<Target> t;
    std::string names;
    for (int64_t m = mask; m != 0; m &= m - 1) {
      const int64_t bit = m & -m;
      const bool full = all || (bit & (HWY_AVX3_DL | HWY_AVX3 | HWY_AVX2)) != 0;
      t.push_back({bit, hwy::TargetName(bit), full});
      names += " " + t.back().name + (full ? "" : "(1/32 of the f32 sweep)");
    }
    std::printf("[ targets  ] compiled and supported:%s\n", names.c_str());
    return t;
  }();
  return list;
}

/// Forces the kernel's dispatch onto one target for its lifetime.
class ForceTarget {
 public:
  explicit ForceTarget(const Target& t) { hwy::SetSupportedTargetsForTest(t.bit); }
  ~ForceTarget() { hwy::SetSupportedTargetsForTest(0); }
  ForceTarget(const ForceTarget&) = delete;
  ForceTarget& operator=(const ForceTarget&) = delete;
};

/// Runs convert_simd (and only it) on contiguous views and checks that the plan reports
/// the forced target as its arch, so the output is that target's.
::testing::AssertionResult run_simd(const TensorView& dst, const TensorView& src, Saturation sat,
                                    const Target& t) {
  const ConvertPlan plan = ConvertPlan::select(ConvertDesc::for_views(dst, src, sat),
                                               lowbit::Preference{.kernel = "convert_simd"});
  if (plan.sku().arch != t.name)
    return ::testing::AssertionFailure()
           << "forced " << t.name << " but the plan dispatches to " << plan.sku().arch;
  plan.run(lowbit::Stream{}, {}, {src, dst});
  return ::testing::AssertionSuccess();
}

constexpr uint8_t kPoison = 0xA5;

/// Index of the first byte where `got` differs from `want`, or -1; then fills `got` with
/// kPoison again, so that the next run's unwritten bytes show. One pass over
/// cache-sized blocks.
int64_t compare_and_repoison(const uint8_t* want, uint8_t* got, size_t bytes) {
  constexpr size_t kBlock = size_t{1} << 14;
  int64_t first = -1;
  for (size_t lo = 0; lo < bytes; lo += kBlock) {
    const size_t len = std::min(kBlock, bytes - lo);
    if (first < 0 && std::memcmp(want + lo, got + lo, len) != 0)
      for (size_t i = lo; i < lo + len; ++i)
        if (want[i] != got[i]) {
          first = static_cast<int64_t>(i);
          break;
        }
    std::memset(got + lo, kPoison, len);
  }
  return first;
}

/// Index of the first differing byte, or -1.
int64_t first_difference(const uint8_t* a, const uint8_t* b, size_t bytes) {
  if (std::memcmp(a, b, bytes) == 0) return -1;
  for (size_t i = 0;; ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
}

// ---- the scalar side: numeric.hpp, element by element ------------------------------------

size_t elem_bytes(Dtype d) { return static_cast<size_t>(lowbit::bit_width(d) / 8); }

float decode(Dtype d, uint32_t code) {
  switch (d) {
    case Dtype::f32:
      return std::bit_cast<float>(code);
    case Dtype::f16:
      return lowbit::f16_to_f32(static_cast<uint16_t>(code));
    case Dtype::bf16:
      return lowbit::bf16_to_f32(static_cast<uint16_t>(code));
    case Dtype::f8e4m3fn:
      return lowbit::f8e4m3fn_to_f32(static_cast<uint8_t>(code));
    case Dtype::f8e5m2:
      return lowbit::f8e5m2_to_f32(static_cast<uint8_t>(code));
    case Dtype::e8m0:
      return lowbit::e8m0_to_f32(static_cast<uint8_t>(code));
    case Dtype::f4e2m1:
      return lowbit::f4e2m1_to_f32(static_cast<uint8_t>(code));
    default:
      ADD_FAILURE() << "decode: unexpected dtype " << name(d);
      return 0.0f;
  }
}

/// numeric.hpp's encoder of dtype D (f32: the bits; f4e2m1 has no Saturation parameter).
template <Dtype D>
uint32_t encode(float x, Saturation s) {
  if constexpr (D == Dtype::f32) return std::bit_cast<uint32_t>(x);
  if constexpr (D == Dtype::f16) return lowbit::f32_to_f16(x, s);
  if constexpr (D == Dtype::bf16) return lowbit::f32_to_bf16(x, s);
  if constexpr (D == Dtype::f8e4m3fn) return lowbit::f32_to_f8e4m3fn(x, s);
  if constexpr (D == Dtype::f8e5m2) return lowbit::f32_to_f8e5m2(x, s);
  if constexpr (D == Dtype::e8m0) return lowbit::f32_to_e8m0(x, s);
  if constexpr (D == Dtype::f4e2m1) return lowbit::f32_to_f4e2m1(x);
  return 0;
}

/// out[0, n) in dtype D (packed for f4e2m1, n even there) = numeric.hpp of f32 x[0, n).
template <Dtype D, class Load>
void expect_from_f32(Load x, int64_t n, Saturation s, uint8_t* out) {
  if constexpr (D == Dtype::f4e2m1) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t k = 0; k < n / 2; ++k)
      out[k] = static_cast<uint8_t>(encode<D>(x(2 * k), s) | encode<D>(x(2 * k + 1), s) << 4);
  } else if constexpr (D == Dtype::f64) {
    auto* o = reinterpret_cast<double*>(out);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t k = 0; k < n; ++k) o[k] = lowbit::f32_to_f64(x(k));
  } else {
    using Code =
        std::conditional_t<lowbit::bit_width(D) == 32, uint32_t,
                           std::conditional_t<lowbit::bit_width(D) == 16, uint16_t, uint8_t>>;
    auto* o = reinterpret_cast<Code*>(out);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t k = 0; k < n; ++k) o[k] = static_cast<Code>(encode<D>(x(k), s));
  }
}

/// expect_from_f32 with the destination dtype chosen at run time.
template <class Load>
void expect_from_f32(Dtype d, Load x, int64_t n, Saturation s, uint8_t* out) {
  switch (d) {
    case Dtype::f64:
      return expect_from_f32<Dtype::f64>(x, n, s, out);
    case Dtype::f32:
      return expect_from_f32<Dtype::f32>(x, n, s, out);
    case Dtype::f16:
      return expect_from_f32<Dtype::f16>(x, n, s, out);
    case Dtype::bf16:
      return expect_from_f32<Dtype::bf16>(x, n, s, out);
    case Dtype::f8e4m3fn:
      return expect_from_f32<Dtype::f8e4m3fn>(x, n, s, out);
    case Dtype::f8e5m2:
      return expect_from_f32<Dtype::f8e5m2>(x, n, s, out);
    case Dtype::e8m0:
      return expect_from_f32<Dtype::e8m0>(x, n, s, out);
    case Dtype::f4e2m1:
      return expect_from_f32<Dtype::f4e2m1>(x, n, s, out);
    default:
      ADD_FAILURE() << "expect_from_f32: unexpected dtype " << name(d);
  }
}

/// expect_from_f32 for the sweep: f32 bit patterns in[0, n) (n even), in loops the
/// compiler vectorizes for the CPU at hand (they are numeric.hpp's functions all the
/// same); the expectations would otherwise cost more than all targets together.
// GCC clones the template for each target; clang takes target_clones on plain functions
// only (it stops with "multiversioned functions do not yet support function templates"):
// there the sweep's expectations run for the baseline target, slower but the same.
#if defined(__clang__)
#define LB_EXPECT_CLONES
#else
#define LB_EXPECT_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
template <Dtype D>
LB_EXPECT_CLONES void expect_block(const uint32_t* in, int64_t n, Saturation s, uint8_t* out) {
  if constexpr (D == Dtype::f4e2m1) {
#pragma omp simd
    for (int64_t k = 0; k < n / 2; ++k)
      out[k] = static_cast<uint8_t>(encode<D>(std::bit_cast<float>(in[2 * k]), s) |
                                    encode<D>(std::bit_cast<float>(in[2 * k + 1]), s) << 4);
  } else {
    using Code = std::conditional_t<lowbit::bit_width(D) == 16, uint16_t, uint8_t>;
    auto* o = reinterpret_cast<Code*>(out);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k)
      o[k] = static_cast<Code>(encode<D>(std::bit_cast<float>(in[k]), s));
  }
}

void expect_sweep(Dtype d, const uint32_t* in, int64_t n, Saturation s, uint8_t* out) {
  switch (d) {
    case Dtype::f16:
      return expect_block<Dtype::f16>(in, n, s, out);
    case Dtype::bf16:
      return expect_block<Dtype::bf16>(in, n, s, out);
    case Dtype::f8e4m3fn:
      return expect_block<Dtype::f8e4m3fn>(in, n, s, out);
    case Dtype::f8e5m2:
      return expect_block<Dtype::f8e5m2>(in, n, s, out);
    case Dtype::e8m0:
      return expect_block<Dtype::e8m0>(in, n, s, out);
    case Dtype::f4e2m1:
      return expect_block<Dtype::f4e2m1>(in, n, s, out);
    default:
      ADD_FAILURE() << "expect_sweep: unexpected dtype " << name(d);
  }
}

const Dtype kFloatDtypes[] = {Dtype::f64,      Dtype::f32,    Dtype::f16,  Dtype::bf16,
                              Dtype::f8e4m3fn, Dtype::f8e5m2, Dtype::e8m0, Dtype::f4e2m1};

/// Describes the element behind byte `at` of a dst of dtype d.
int64_t element_of_byte(Dtype d, int64_t at) {
  return d == Dtype::f4e2m1 ? at * 2 : at / static_cast<int64_t>(elem_bytes(d));
}

// ---- all 2^32 f32 inputs ------------------------------------------------------------------

TEST(ConvertSimdExhaustive, AllF32Inputs) {
  // Each thread takes its own chunk of 2^20 consecutive inputs, computes numeric.hpp's
  // codes for every dtype and mode once, and checks every target's output against them;
  // the kernel runs single-threaded inside (nested OpenMP is off). The threads meet only
  // to switch the target (the dispatch mock is process-wide): a few thousand barriers
  // for the whole sweep, so a busy machine does not turn spinning into minutes.
  // The 1/32 targets, and the f32 and f64 destinations (plain copies and widenings, also
  // covered by every code below), take a 1/32 slice of each chunk at a position that
  // rotates through the mantissas.
  constexpr int kChunkBits = 20;
  constexpr int64_t kChunk = int64_t{1} << kChunkBits;
  constexpr int64_t kSlice = kChunk / 32;
  constexpr int64_t kChunks = int64_t{1} << (32 - kChunkBits);
  int64_t stride = 1;
  if (const char* env = std::getenv("LOWBIT_SWEEP_STRIDE")) {
    // Developer knob for a quick look: only every k-th chunk (of 4096), still spread
    // over all exponents. Never set in CI.
    stride = std::max<int64_t>(1, std::atoll(env));
    std::printf("[ note     ] LOWBIT_SWEEP_STRIDE=%lld: partial sweep\n",
                static_cast<long long>(stride));
  }
  constexpr Dtype kDsts[] = {Dtype::f16,  Dtype::bf16,   Dtype::f8e4m3fn, Dtype::f8e5m2,
                             Dtype::e8m0, Dtype::f4e2m1, Dtype::f32,      Dtype::f64};
  constexpr int kNumDsts = static_cast<int>(std::size(kDsts));
  const auto wide = [](Dtype d) { return d == Dtype::f32 || d == Dtype::f64; };
  const std::vector<Target>& tgts = targets();
  const int64_t swept = (kChunks + stride - 1) / stride;

  omp_set_max_active_levels(1);
  const int threads = omp_get_max_threads();
  const int64_t rounds = (swept + threads - 1) / threads;
  // Thread-seconds per phase, summed over threads.
  double t_numeric = 0, t_compare = 0;
  std::vector<double> t_target(tgts.size(), 0.0);
  std::vector<std::string> failures;
  Timer total;

#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    std::vector<uint32_t> in(kChunk);
    std::vector<uint8_t> want[kNumDsts][2];
    for (int k = 0; k < kNumDsts; ++k)
      for (auto& w : want[k])
        w.resize(
            static_cast<size_t>(lowbit::storage_bytes(kDsts[k], wide(kDsts[k]) ? kSlice : kChunk)));
    std::vector<uint8_t> got(static_cast<size_t>(kChunk) * 2, kPoison);
    double my_numeric = 0, my_compare = 0;
    std::vector<double> my_target(tgts.size(), 0.0);
    std::vector<std::string> my_failures;

    for (int64_t round = 0; round < rounds; ++round) {
      const int64_t k = round * threads + tid;
      const bool active = k < swept && my_failures.size() < 4;
      const int64_t c = k * stride;
      const int64_t slice_begin = (c % 32) * kSlice;
      if (active) {
        const uint32_t base = static_cast<uint32_t>(c) << kChunkBits;
        for (int64_t i = 0; i < kChunk; ++i) in[i] = base + static_cast<uint32_t>(i);
        Timer tn;
        for (int j = 0; j < kNumDsts; ++j) {
          const Dtype d = kDsts[j];
          for (int s = 0; s < 2; ++s) {
            if (wide(d)) {
              const auto x = [&](int64_t i) { return std::bit_cast<float>(in[slice_begin + i]); };
              expect_from_f32(d, x, kSlice, kSats[s], want[j][s].data());
            } else if (d == Dtype::f4e2m1 && s == 1) {
              want[j][1] = want[j][0];  // f32_to_f4e2m1 has no Saturation parameter
            } else {
              expect_sweep(d, in.data(), kChunk, kSats[s], want[j][s].data());
            }
          }
        }
        my_numeric += tn.seconds();
      }
      for (size_t t = 0; t < tgts.size(); ++t) {
#pragma omp barrier
#pragma omp single
        hwy::SetSupportedTargetsForTest(tgts[t].bit);
        if (!active) continue;
        for (int j = 0; j < kNumDsts; ++j) {
          const Dtype d = kDsts[j];
          const bool full = tgts[t].full_sweep && !wide(d);
          const int64_t begin = full ? 0 : slice_begin;
          const int64_t n = full ? kChunk : kSlice;
          // want holds the whole chunk, or (wide dsts) only the slice.
          const int64_t want_byte0 = wide(d) ? 0 : lowbit::storage_bytes(d, begin);
          const size_t bytes = static_cast<size_t>(lowbit::storage_bytes(d, n));
          const TensorView src(in.data() + begin, Dtype::f32, Shape{n});
          const TensorView dst(got.data(), d, Shape{n});
          for (int s = 0; s < 2; ++s) {
            Timer tt;
            const ::testing::AssertionResult ran = run_simd(dst, src, kSats[s], tgts[t]);
            my_target[t] += tt.seconds();
            if (!ran) {
              my_failures.push_back(ran.message());
              continue;
            }
            Timer tc;
            const int64_t at =
                compare_and_repoison(want[j][s].data() + want_byte0, got.data(), bytes);
            my_compare += tc.seconds();
            if (at >= 0) {
              // got was re-poisoned: rerun to show the wrong byte.
              (void)run_simd(dst, src, kSats[s], tgts[t]);
              my_failures.push_back(tgts[t].name + " f32->" + name(d) + " sat " +
                                    sat_name(kSats[s]) + ": first difference at input " +
                                    hex(in[begin + element_of_byte(d, at)]) + " (byte " +
                                    std::to_string(at) + "): got " + hex(got[at]) + ", want " +
                                    hex(want[j][s][want_byte0 + at]));
              std::memset(got.data(), kPoison, bytes);
            }
          }
        }
      }
    }
#pragma omp barrier
#pragma omp single
    hwy::SetSupportedTargetsForTest(0);
#pragma omp critical(lowbit_sweep_totals)
    {
      t_numeric += my_numeric;
      t_compare += my_compare;
      for (size_t t = 0; t < tgts.size(); ++t) t_target[t] += my_target[t];
      failures.insert(failures.end(), my_failures.begin(), my_failures.end());
    }
  }
  for (const std::string& f : failures) ADD_FAILURE() << f;

  std::printf(
      "[ timing   ] %lld x 2^%d f32 inputs -> 8 dtypes x 2 modes: %.1f s on %d threads; "
      "thread-seconds: numeric.hpp %.1f, compare %.1f",
      static_cast<long long>(swept), kChunkBits, total.seconds(), threads, t_numeric, t_compare);
  for (size_t t = 0; t < tgts.size(); ++t)
    std::printf(", %s %.1f", tgts[t].name.c_str(), t_target[t]);
  std::printf("\n");
}

// ---- every code of the narrow formats ------------------------------------------------------

/// Runs src (n elements of dtype sd at `src`, whose f32 values are x(i)) into every float
/// dtype in both modes on every target, against numeric.hpp. `what` names the case.
template <class Load>
void check_all_destinations(const void* src, Dtype sd, int64_t n, Load x, const std::string& what) {
  std::vector<uint8_t> want(static_cast<size_t>(n) * 8 + 8), got(static_cast<size_t>(n) * 8 + 72);
  for (Dtype d : kFloatDtypes) {
    // Odd element counts into f4e2m1 end on a half byte: numeric.hpp pads with a 0 nibble.
    const int64_t bytes = lowbit::storage_bytes(d, n);
    for (Saturation s : kSats) {
      if (sd == Dtype::f64 && d == Dtype::f64) {
        std::memcpy(want.data(), src, static_cast<size_t>(bytes));  // exact copy
      } else {
        std::memset(want.data(), 0, static_cast<size_t>(bytes));
        const int64_t even = n & ~int64_t{1};
        expect_from_f32(d, x, even, s, want.data());
        if (even != n) {
          std::vector<uint8_t> last(8, 0);
          const auto one = [&](int64_t) { return x(n - 1); };
          if (d == Dtype::f4e2m1) {
            want[static_cast<size_t>(n / 2)] =
                static_cast<uint8_t>(encode<Dtype::f4e2m1>(x(n - 1), s));
          } else {
            expect_from_f32(d, one, 1, s, last.data());
            std::memcpy(want.data() + (n - 1) * elem_bytes(d), last.data(), elem_bytes(d));
          }
        }
      }
      for (const Target& t : targets()) {
        ForceTarget force(t);
        // An odd byte offset inside a 64-byte-aligned buffer: unaligned vector stores.
        uint8_t* out = got.data() + (d == Dtype::f4e2m1 ? 1 : elem_bytes(d));
        std::memset(out, kPoison, static_cast<size_t>(bytes));
        ASSERT_TRUE(run_simd(TensorView(out, d, Shape{n}),
                             TensorView(const_cast<void*>(src), sd, Shape{n}), s, t));
        const int64_t at = first_difference(want.data(), out, static_cast<size_t>(bytes));
        EXPECT_LT(at, 0) << t.name << " " << what << " -> " << name(d) << " sat " << sat_name(s)
                         << ": first difference at element " << element_of_byte(d, at) << ": got "
                         << hex(out[at]) << ", want " << hex(want[at]);
      }
    }
  }
}

TEST(ConvertSimdExhaustive, AllCodesOfNarrowFormats) {
  Timer timer;
  struct Case {
    Dtype dtype;
    int code_bits;
  };
  for (const Case c : {Case{Dtype::f16, 16}, Case{Dtype::bf16, 16}, Case{Dtype::f8e4m3fn, 8},
                       Case{Dtype::f8e5m2, 8}, Case{Dtype::e8m0, 8}, Case{Dtype::f4e2m1, 4}}) {
    // Every code; for f4e2m1 every byte (every pair of codes), i.e. 512 elements.
    const int64_t n = c.code_bits == 4 ? 512 : int64_t{1} << c.code_bits;
    std::vector<uint8_t> src(static_cast<size_t>(lowbit::storage_bytes(c.dtype, n)) + 64);
    std::vector<uint32_t> codes(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (c.code_bits == 16) {
        const uint16_t v = static_cast<uint16_t>(i);
        std::memcpy(src.data() + 2 * i, &v, 2);
        codes[i] = v;
      } else if (c.code_bits == 8) {
        src[i] = static_cast<uint8_t>(i);
        codes[i] = static_cast<uint32_t>(i);
      } else {
        src[i / 2] = static_cast<uint8_t>(i / 2);
        codes[i] = (i & 1) ? static_cast<uint32_t>(i / 2) >> 4 : static_cast<uint32_t>(i / 2) & 0xf;
      }
    }
    const auto x = [&](int64_t i) { return decode(c.dtype, codes[i]); };
    check_all_destinations(src.data(), c.dtype, n, x, "all " + name(c.dtype) + " codes");
    // The same codes from an odd start with an odd count: unaligned loads, scalar tails.
    const int64_t skip = c.code_bits == 4 ? 2 : 1;  // f4e2m1 views start on a byte
    const auto xs = [&](int64_t i) { return x(i + skip); };
    check_all_destinations(src.data() + lowbit::storage_bytes(c.dtype, skip), c.dtype, n - skip - 2,
                           xs, "shifted " + name(c.dtype) + " codes");
  }
  std::printf("[ timing   ] every code of 6 formats -> 8 dtypes x 2 modes x %zu targets: %.2f s\n",
              targets().size(), timer.seconds());
}

// ---- f64 sources ------------------------------------------------------------------------

TEST(ConvertSimdExhaustive, F64AtEveryRoundingPosition) {
  // f64 -> f32 rounds at bit 29 of the mantissa for normal f32 results and further up
  // for subnormal ones: for every f64 exponent and every cut position k, the patterns
  // around 2^k (just below, at and just above a tie) with random upper bits, plus random
  // patterns.
  Timer timer;
  std::mt19937_64 rng(0x5eed64);
  std::vector<uint64_t> in;
  for (uint64_t sign : {uint64_t{0}, uint64_t{1} << 63})
    for (uint64_t e = 0; e < 2048; ++e) {
      // Exponents far outside f32's range (zero or overflow either way): every 8th.
      if ((e < 1023 - 160 || e > 1023 + 130) && e % 8 != 0 && e != 2047) continue;
      for (int k = 0; k < 52; ++k) {
        const uint64_t tie = uint64_t{1} << k;
        const uint64_t upper = (rng() & 0xfffffffffffffull) & ~((tie << 1) - 1);
        for (uint64_t low : {tie - 1, tie, tie + 1, tie | (tie - 1)})
          for (uint64_t up : {uint64_t{0}, upper})
            in.push_back(sign | (e << 52) | ((up | low) & 0xfffffffffffffull));
      }
    }
  for (int i = 0; i < (1 << 18); ++i) in.push_back(rng());
  const int64_t n = static_cast<int64_t>(in.size());
  const auto x = [&](int64_t i) { return lowbit::f64_to_f32(std::bit_cast<double>(in[i])); };
  check_all_destinations(in.data(), Dtype::f64, n, x, "f64 rounding positions");
  std::printf("[ timing   ] %lld f64 inputs -> 8 dtypes x 2 modes x %zu targets: %.2f s\n",
              static_cast<long long>(n), targets().size(), timer.seconds());
}

// ---- streaming stores, alignment peel, tails, threads ------------------------------------

TEST(ConvertSimdExhaustive, StreamingPathAlignmentAndThreads) {
  Timer timer;
  const int64_t threshold = simd::stream_threshold_bytes();
  struct Pair {
    Dtype src, dst;
  };
  std::mt19937_64 rng(0xface);
  for (const Pair p : {Pair{Dtype::f32, Dtype::bf16}, Pair{Dtype::f32, Dtype::f4e2m1},
                       Pair{Dtype::bf16, Dtype::f32}, Pair{Dtype::f16, Dtype::f64},
                       Pair{Dtype::f64, Dtype::f8e4m3fn}, Pair{Dtype::f4e2m1, Dtype::f32},
                       Pair{Dtype::bf16, Dtype::f4e2m1}}) {
    const double per_elem = lowbit::bit_width(p.src) / 8.0 + lowbit::bit_width(p.dst) / 8.0;
    const int64_t n = static_cast<int64_t>(threshold / per_elem) + 4099;  // odd, past the threshold
    const int64_t src_bytes = lowbit::storage_bytes(p.src, n),
                  dst_bytes = lowbit::storage_bytes(p.dst, n);
    lowbit::Tensor src = lowbit::Tensor::empty(Shape{src_bytes / 8 + 1}, Dtype::f64);
    auto* s8 = static_cast<uint8_t*>(src.data());
    for (int64_t i = 0; i < src_bytes; i += 8) {
      const uint64_t r = rng();
      std::memcpy(s8 + i, &r, static_cast<size_t>(std::min<int64_t>(8, src_bytes - i)));
    }
    const auto x = [&](int64_t i) -> float {
      switch (p.src) {
        case Dtype::f64: {
          double v;
          std::memcpy(&v, s8 + 8 * i, 8);
          return lowbit::f64_to_f32(v);
        }
        case Dtype::f32: {
          uint32_t v;
          std::memcpy(&v, s8 + 4 * i, 4);
          return std::bit_cast<float>(v);
        }
        case Dtype::f4e2m1:
          return decode(p.src, (s8[i / 2] >> (4 * (i % 2))) & 0xf);
        default: {
          uint16_t v;
          std::memcpy(&v, s8 + 2 * i, 2);
          return decode(p.src, v);
        }
      }
    };
    std::vector<uint8_t> want(static_cast<size_t>(dst_bytes));
    std::memset(want.data(), 0, want.size());
    expect_from_f32(p.dst, x, n & ~int64_t{1}, Saturation::none, want.data());
    if (n & 1) {
      if (p.dst == Dtype::f4e2m1) {
        want[static_cast<size_t>(n / 2)] =
            static_cast<uint8_t>(encode<Dtype::f4e2m1>(x(n - 1), Saturation::none));
      } else {
        std::vector<uint8_t> last(8, 0);
        expect_from_f32(
            p.dst, [&](int64_t) { return x(n - 1); }, 1, Saturation::none, last.data());
        std::memcpy(want.data() + (n - 1) * elem_bytes(p.dst), last.data(), elem_bytes(p.dst));
      }
    }
    lowbit::Tensor dst = lowbit::Tensor::empty(Shape{dst_bytes / 8 + 16}, Dtype::f64);
    for (const Target& t : targets()) {
      ForceTarget force(t);
      // 64-byte aligned, then one element (or byte) off: the kernel peels up to alignment.
      for (int64_t off :
           {int64_t{0},
            p.dst == Dtype::f4e2m1 ? int64_t{1} : static_cast<int64_t>(elem_bytes(p.dst))}) {
        for (int threads : {1, 2}) {
          if (threads == 2 && &t != &targets().front())
            continue;  // threading is target-independent
          omp_set_num_threads(threads);
          uint8_t* out = static_cast<uint8_t*>(dst.data()) + off;
          std::memset(out, kPoison, static_cast<size_t>(dst_bytes));
          ASSERT_TRUE(run_simd(TensorView(out, p.dst, Shape{n}), TensorView(s8, p.src, Shape{n}),
                               Saturation::none, t));
          const int64_t at = first_difference(want.data(), out, static_cast<size_t>(dst_bytes));
          EXPECT_LT(at, 0) << t.name << " " << name(p.src) << "->" << name(p.dst) << " n " << n
                           << " dst offset " << off << " threads " << threads
                           << ": first difference at element " << element_of_byte(p.dst, at)
                           << ": got " << hex(out[at]) << ", want " << hex(want[at]);
        }
      }
    }
    omp_set_num_threads(omp_get_num_procs());
  }
  std::printf("[ timing   ] streaming path (threshold %lld MiB), 7 pairs x %zu targets: %.2f s\n",
              static_cast<long long>(threshold >> 20), targets().size(), timer.seconds());
}

// ---- what the kernel accepts and promises ---------------------------------------------------

TEST(ConvertSimd, DeclinesStridedAndReportsItsGuarantees) {
  const auto& k = lowbit::convert_simd_kernel();
  ConvertDesc d;
  d.shape = Shape{4, 6};
  d.src = Dtype::f32;
  d.dst = Dtype::bf16;
  d.src_strides = lowbit::contiguous_strides(d.shape);
  d.dst_strides = lowbit::contiguous_strides(d.shape);
  EXPECT_EQ(k.decline(d), "");
  const lowbit::PrecisionGuarantee g = k.precision(d);
  EXPECT_TRUE(g.deterministic);
  EXPECT_TRUE(g.bit_stable);
  EXPECT_EQ(k.sku(d).arch, simd::dispatched_target());

  ConvertDesc strided = d;
  strided.src_strides = Shape{12, 1};
  EXPECT_EQ(k.decline(strided), "src not contiguous");
  strided = d;
  strided.dst_strides = Shape{1, 4};
  EXPECT_EQ(k.decline(strided), "dst not contiguous");
  ConvertDesc gpu = d;
  gpu.device = lowbit::Device::cuda(0);
  EXPECT_EQ(k.decline(gpu), "runs on the cpu only");
}

}  // namespace
