// C ABI over lowbit's safetensors reader and writer (include/lowbit/io.hpp) for
// tests/python/test_files.py:
//
//   int lowbit_io_write(const char* path, int n, const char* const* names,
//                       const char* const* dtypes, const int64_t* shapes, const int* ndims,
//                       const void* const* data, int n_meta, const char* const* keys,
//                       const char* const* values, int overwrite)
//       Writes a safetensors file with SafetensorsWriter. `shapes` holds the n shapes back
//       to back (ndims[i] extents each); dtypes are safetensors names ("F32", "BF16", ...);
//       data[i] points to the tensor's bytes.
//   int lowbit_io_check(const char* path)
//       Opens and validates a file: 0, or -1 with the error in lowbit_io_last_error.
//   int lowbit_io_check_bytes(const void* bytes, int64_t n)
//       The same for a file in memory.
//   int64_t lowbit_io_tensor_bytes(const char* path, const char* name, void* out, int64_t cap)
//       Copies a stored tensor's bytes (up to cap) into out; returns its size, or -1.
//   int lowbit_io_last_error_code(void)       the ErrorCode of the last error, as an int
//   const char* lowbit_io_last_error(void)    its what(), per thread
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/io.hpp"

#define LOWBIT_SHIM_API extern "C" __attribute__((visibility("default")))

namespace {

using namespace lowbit;

thread_local std::string g_error;
thread_local int g_code = -1;

template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    g_error.clear();
    g_code = -1;
    return 0;
  } catch (const Error& e) {
    g_error = e.what();
    g_code = static_cast<int>(e.code());
  } catch (const std::exception& e) {
    g_error = e.what();
    g_code = 100;
  } catch (...) {
    g_error = "unknown exception";
    g_code = 100;
  }
  return -1;
}

}  // namespace

LOWBIT_SHIM_API int lowbit_io_write(const char* path, int n, const char* const* names,
                                    const char* const* dtypes, const int64_t* shapes,
                                    const int* ndims, const void* const* data, int n_meta,
                                    const char* const* keys, const char* const* values,
                                    int overwrite) {
  return guarded([&] {
    io::SafetensorsWriter w(path, {.overwrite = overwrite != 0});
    for (int i = 0; i < n_meta; ++i) w.set_metadata(keys[i], values[i]);
    std::vector<Shape> shape_of;
    const int64_t* s = shapes;
    for (int i = 0; i < n; ++i) {
      const auto dt = io::parse_st_dtype(dtypes[i]);
      if (!dt) throw_error(ErrorCode::invalid_argument, std::string("unknown dtype ") + dtypes[i]);
      Shape shape{std::span<const int64_t>(s, static_cast<size_t>(ndims[i]))};
      s += ndims[i];
      w.add_tensor(names[i], *dt, shape);
      shape_of.push_back(shape);
    }
    w.begin();
    for (int i = 0; i < n; ++i) {
      const io::StDtype dt = *io::parse_st_dtype(dtypes[i]);
      const int64_t bytes = numel(shape_of[static_cast<size_t>(i)]) * io::st_dtype_bits(dt) / 8;
      w.write(names[i], std::span<const uint8_t>(static_cast<const uint8_t*>(data[i]),
                                                 static_cast<size_t>(bytes)));
    }
    w.commit();
  });
}

LOWBIT_SHIM_API int lowbit_io_check(const char* path) {
  return guarded([&] { io::SafetensorsReader::open(path); });
}

LOWBIT_SHIM_API int lowbit_io_check_bytes(const void* bytes, int64_t n) {
  return guarded([&] {
    io::SafetensorsReader::parse(
        std::span<const uint8_t>(static_cast<const uint8_t*>(bytes), static_cast<size_t>(n)));
  });
}

LOWBIT_SHIM_API int64_t lowbit_io_tensor_bytes(const char* path, const char* name, void* out,
                                               int64_t cap) {
  int64_t size = -1;
  const int rc = guarded([&] {
    const io::SafetensorsReader r = io::SafetensorsReader::open(path);
    const io::StTensor* t = r.find(name);
    if (t == nullptr) throw_error(ErrorCode::invalid_argument, std::string("no tensor ") + name);
    const auto b = r.bytes(*t);
    size = static_cast<int64_t>(b.size());
    std::memcpy(out, b.data(), static_cast<size_t>(std::min(size, cap)));
  });
  return rc == 0 ? size : -1;
}

LOWBIT_SHIM_API int lowbit_io_last_error_code(void) { return g_code; }
LOWBIT_SHIM_API const char* lowbit_io_last_error(void) { return g_error.c_str(); }
