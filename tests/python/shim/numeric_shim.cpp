// C ABI over include/lowbit/numeric.hpp for tests/python/test_numeric_ml_dtypes.py (ctypes).
//
//   int lowbit_shim_encode(const char* fmt, int saturate, const float* src, void* dst, int64_t n)
//   int lowbit_shim_decode(const char* fmt, const void* src, float* dst, int64_t n)
//
// fmt is one of "f16", "bf16" (two bytes a code), "f8e4m3fn", "f8e5m2", "e8m0" (one byte),
// "f4e2m1" (one code a byte, in the low nibble; decode ignores the high nibble).
// saturate != 0 selects Saturation::finite (f4e2m1 always saturates). Both return 0, or
// -1 for an unknown fmt. Large arrays are split across std::threads (this library is not
// compiled with OpenMP flags).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "lowbit/numeric.hpp"

namespace {

using lowbit::Saturation;

template <class Fn>
void parallel_for(int64_t n, Fn fn) {
  constexpr int64_t kMinPerThread = int64_t{1} << 16;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min(hw, (n + kMinPerThread - 1) / kMinPerThread);
  if (threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t lo = t * per, hi = std::min(n, lo + per);
    if (lo < hi) pool.emplace_back(fn, lo, hi);
  }
  for (std::thread& th : pool) th.join();
}

template <class Code, class Enc>
void encode_all(const float* src, void* dst, int64_t n, Enc enc) {
  Code* out = static_cast<Code*>(dst);
  parallel_for(n, [=](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = enc(src[i]);
  });
}

template <class Code, class Dec>
void decode_all(const void* src, float* dst, int64_t n, Dec dec) {
  const Code* in = static_cast<const Code*>(src);
  parallel_for(n, [=](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dst[i] = dec(in[i]);
  });
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int lowbit_shim_encode(const char* fmt,
                                                                         int saturate,
                                                                         const float* src,
                                                                         void* dst, int64_t n) {
  const Saturation s = saturate ? Saturation::finite : Saturation::none;
  if (std::strcmp(fmt, "f16") == 0) {
    encode_all<uint16_t>(src, dst, n, [s](float x) { return lowbit::f32_to_f16(x, s); });
  } else if (std::strcmp(fmt, "bf16") == 0) {
    encode_all<uint16_t>(src, dst, n, [s](float x) { return lowbit::f32_to_bf16(x, s); });
  } else if (std::strcmp(fmt, "f8e4m3fn") == 0) {
    encode_all<uint8_t>(src, dst, n, [s](float x) { return lowbit::f32_to_f8e4m3fn(x, s); });
  } else if (std::strcmp(fmt, "f8e5m2") == 0) {
    encode_all<uint8_t>(src, dst, n, [s](float x) { return lowbit::f32_to_f8e5m2(x, s); });
  } else if (std::strcmp(fmt, "f4e2m1") == 0) {
    encode_all<uint8_t>(src, dst, n, [](float x) { return lowbit::f32_to_f4e2m1(x); });
  } else if (std::strcmp(fmt, "e8m0") == 0) {
    encode_all<uint8_t>(src, dst, n, [s](float x) { return lowbit::f32_to_e8m0(x, s); });
  } else {
    return -1;
  }
  return 0;
}

extern "C" __attribute__((visibility("default"))) int lowbit_shim_decode(const char* fmt,
                                                                         const void* src,
                                                                         float* dst, int64_t n) {
  if (std::strcmp(fmt, "f16") == 0) {
    decode_all<uint16_t>(src, dst, n, [](uint16_t c) { return lowbit::f16_to_f32(c); });
  } else if (std::strcmp(fmt, "bf16") == 0) {
    decode_all<uint16_t>(src, dst, n, [](uint16_t c) { return lowbit::bf16_to_f32(c); });
  } else if (std::strcmp(fmt, "f8e4m3fn") == 0) {
    decode_all<uint8_t>(src, dst, n, [](uint8_t c) { return lowbit::f8e4m3fn_to_f32(c); });
  } else if (std::strcmp(fmt, "f8e5m2") == 0) {
    decode_all<uint8_t>(src, dst, n, [](uint8_t c) { return lowbit::f8e5m2_to_f32(c); });
  } else if (std::strcmp(fmt, "f4e2m1") == 0) {
    decode_all<uint8_t>(src, dst, n, [](uint8_t c) { return lowbit::f4e2m1_to_f32(c); });
  } else if (std::strcmp(fmt, "e8m0") == 0) {
    decode_all<uint8_t>(src, dst, n, [](uint8_t c) { return lowbit::e8m0_to_f32(c); });
  } else {
    return -1;
  }
  return 0;
}
