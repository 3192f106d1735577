// lowbit::Error: every failure the library reports, with a code a caller can act on.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace lowbit {

enum class ErrorCode {
  invalid_argument,  ///< a caller's value is wrong (shape, dtype, alignment, range, text)
  unsupported,       ///< valid, but no kernel / backend / build option here implements it
  out_of_memory,     ///< host or device allocation failed
  device_error,      ///< the CUDA runtime or driver reported a failure
  io_error,          ///< a file could not be opened, read, written or renamed
  corrupt_file,      ///< a file's contents break its format's rules
  internal,          ///< a bug in lowbit (a broken invariant); please report it
};

std::string_view to_string(ErrorCode code);

/// The exception lowbit throws. what() reads "<code>: <message>"; the message names
/// the argument and the value at fault, e.g. "convert: dst.shape [7] != src.shape [8]".
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message);
  ErrorCode code() const noexcept { return code_; }
  /// The message without the "<code>: " prefix.
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorCode code_;
  std::string message_;
};

[[noreturn]] void throw_error(ErrorCode code, const std::string& message);

}  // namespace lowbit
