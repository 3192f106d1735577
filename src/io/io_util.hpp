// Helpers shared by the file readers and writers: errors, checked arithmetic, little-endian
// loads, UTF-8 validation, and an atomic output file.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "lowbit/error.hpp"

namespace lowbit::io {

/// Error(io_error) "<path>: <what>: <strerror(errno)>".
[[noreturn]] inline void throw_errno(const std::string& path, std::string_view what) {
  const int err = errno;
  throw_error(ErrorCode::io_error, fmt::format("{}: {}: {}", path, what, std::strerror(err)));
}

inline bool checked_mul(int64_t a, int64_t b, int64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}
inline bool checked_add(int64_t a, int64_t b, int64_t& out) {
  return !__builtin_add_overflow(a, b, &out);
}

inline uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline void store_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

/// Index of the first byte that breaks UTF-8 (RFC 3629: no overlong forms, no surrogates,
/// nothing above U+10FFFF), or -1 if `s` is valid.
int64_t first_invalid_utf8(std::string_view s);

/// Appends `s` as a JSON string the way serde_json (the safetensors reference) writes it:
/// UTF-8 kept, `"` and `\` escaped, control characters as \b \f \n \r \t or \u00xx.
void append_json_string(std::string& out, std::string_view s);

/// A printable, bounded rendering of a name from a file for error messages.
std::string quote_name(std::string_view name);

/// A file written to a temporary name in the destination's directory and renamed into
/// place by commit(); removed by the destructor if not committed.
class AtomicFile {
 public:
  AtomicFile() = default;
  /// Throws Error(io_error) if `path` exists and !overwrite, or the temp file cannot be made.
  void create(const std::string& path, bool overwrite);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  void truncate(int64_t size);
  /// pwrite of all of [data, data + size) at `offset`, retrying short writes.
  void pwrite_all(const void* data, int64_t size, int64_t offset);
  /// fsync, close, rename (no replace unless overwrite), fsync the directory.
  void commit();

 private:
  std::string path_;
  std::string tmp_path_;
  bool overwrite_ = false;
  int fd_ = -1;
  bool committed_ = false;
};

/// Throws Error(io_error) if `path` exists and !overwrite (checked again at commit).
void check_can_create(const std::string& path, bool overwrite);

}  // namespace lowbit::io
