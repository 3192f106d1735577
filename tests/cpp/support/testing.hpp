// Shared test helpers: random inputs with special values, poisoned outputs, byte-exact
// comparison, backends to run on, and the visible skip for CUDA on a GPU-less machine.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "lowbit/device.hpp"
#include "lowbit/dtype.hpp"
#include "lowbit/error.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit::testing {

/// The byte every output is filled with before a kernel runs, so unwritten elements show.
inline constexpr uint8_t kPoison = 0xA5;

/// Skips the current test with a visible "SKIPPED: no CUDA device" when no GPU is usable.
#define LOWBIT_REQUIRE_CUDA()                                                       \
  do {                                                                              \
    if (::lowbit::cuda_device_count() == 0) {                                       \
      std::printf("SKIPPED: no CUDA device (%s)\n",                                 \
                  ::testing::UnitTest::GetInstance()->current_test_info()->name()); \
      GTEST_SKIP() << "SKIPPED: no CUDA device";                                    \
    }                                                                               \
  } while (0)

/// Runs `fn` and checks that it throws lowbit::Error with `code` and a message containing
/// `needle` (a test fails if it throws nothing, or something else).
template <class Fn>
void expect_error(Fn&& fn, ErrorCode code, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

/// Devices to run kernels on: the CPU, plus cuda:0 when present.
std::vector<Device> test_devices();

/// Fills `bytes` of host memory with random element bits of `dtype`: uniformly random
/// bit patterns mixed with a share of special values (zeros, +-Inf, NaN, subnormals,
/// max finite, values at rounding ties of the narrow formats) and of ordinary values.
void fill_random(void* data, Dtype dtype, int64_t numel, std::mt19937_64& rng);

/// A host tensor of `shape` filled by fill_random.
Tensor random_tensor(const Shape& shape, Dtype dtype, std::mt19937_64& rng);

/// Copies a host tensor to `device` (a plain copy for the CPU).
Tensor to_device(const Tensor& host, Device device);
/// Copies a contiguous view of any device to a new host tensor.
Tensor to_host(const TensorView& view);

/// Empty string if the two views (host) hold identical bytes over their contiguous
/// storage; else a description of the first differing element.
std::string compare_bytes(const TensorView& expected, const TensorView& actual);

/// Parses "7x4099" or "1" or "0x5" into a Shape.
Shape parse_shape(const std::string& text);

/// A seeded generator; the seed is printed on failure through SCOPED_TRACE by callers.
std::mt19937_64 make_rng(uint64_t salt);

}  // namespace lowbit::testing
