// C ABI over include/lowbit/gguf_blocks.hpp for tests/python/test_gguf_oracle.py (ctypes).
//
//   int lowbit_shim_gguf_quantize(uint32_t type, const float* src, void* dst, int64_t n)
//   int lowbit_shim_gguf_dequantize(uint32_t type, const void* src, float* dst, int64_t n)
//   int64_t lowbit_shim_gguf_row_bytes(uint32_t type, int64_t n)   // -1 on error
//   const char* lowbit_shim_gguf_last_error(void)
//
// `type` is ggml's type id. The functions return 0, or -1 after a lowbit::Error (or any
// other exception), whose what() lowbit_shim_gguf_last_error then returns (per thread).
#include <cstdint>
#include <exception>
#include <string>

#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"

namespace {

thread_local std::string g_last_error;

template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    g_last_error.clear();
    return 0;
  } catch (const std::exception& e) {
    g_last_error = e.what();
  } catch (...) {
    g_last_error = "unknown exception";
  }
  return -1;
}

lowbit::gguf::GgmlType as_type(uint32_t id) { return static_cast<lowbit::gguf::GgmlType>(id); }

}  // namespace

extern "C" __attribute__((visibility("default"))) int lowbit_shim_gguf_quantize(uint32_t type,
                                                                                const float* src,
                                                                                void* dst,
                                                                                int64_t n) {
  return guarded([&] { lowbit::gguf::quantize_row_reference(as_type(type), src, dst, n); });
}

extern "C" __attribute__((visibility("default"))) int lowbit_shim_gguf_dequantize(uint32_t type,
                                                                                  const void* src,
                                                                                  float* dst,
                                                                                  int64_t n) {
  return guarded([&] { lowbit::gguf::dequantize_row_reference(as_type(type), src, dst, n); });
}

extern "C" __attribute__((visibility("default"))) int64_t lowbit_shim_gguf_row_bytes(uint32_t type,
                                                                                     int64_t n) {
  int64_t bytes = -1;
  guarded([&] { bytes = lowbit::gguf::row_bytes(as_type(type), n); });
  return bytes;
}

extern "C" __attribute__((visibility("default"))) const char* lowbit_shim_gguf_last_error() {
  return g_last_error.c_str();
}
