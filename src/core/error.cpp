#include "lowbit/error.hpp"

namespace lowbit {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::unsupported:
      return "unsupported";
    case ErrorCode::out_of_memory:
      return "out_of_memory";
    case ErrorCode::device_error:
      return "device_error";
    case ErrorCode::io_error:
      return "io_error";
    case ErrorCode::corrupt_file:
      return "corrupt_file";
    case ErrorCode::internal:
      return "internal";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(std::string(to_string(code)) + ": " + message),
      code_(code),
      message_(message) {}

void throw_error(ErrorCode code, const std::string& message) { throw Error(code, message); }

}  // namespace lowbit
