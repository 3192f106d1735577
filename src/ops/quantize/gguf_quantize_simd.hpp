// The target-independent part of the GGUF SIMD quantize kernel (gguf_quantize_simd.cpp):
// the argument block of one call, which its per-target rows functions receive.
#pragma once

#include <atomic>
#include <cstdint>

namespace lowbit::gguf_simd {

/// One call: the source, its rows of K values, and the output rows.
struct Call {
  const void* src;
  int64_t k;          ///< values per row (a multiple of 32)
  uint8_t* codes;     ///< rows of row_bytes bytes
  int64_t row_bytes;  ///< bytes per output row
  bool check_finite;
  std::atomic<bool>* refuse;  ///< set when quantize_reference must judge the call
};

using RowsFn = void (*)(const Call&, int64_t, int64_t);

}  // namespace lowbit::gguf_simd
