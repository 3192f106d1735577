#include "lowbit/dtype.hpp"

#include <string>

#include "lowbit/error.hpp"

namespace lowbit {

std::optional<Dtype> try_parse_dtype(std::string_view text) {
  for (const DtypeTraits& t : kDtypeTraits)
    if (text == t.name || (!t.alias.empty() && text == t.alias)) return t.dtype;
  return std::nullopt;
}

Dtype parse_dtype(std::string_view text) {
  if (auto d = try_parse_dtype(text)) return *d;
  std::string known;
  for (const DtypeTraits& t : kDtypeTraits) {
    if (!known.empty()) known += ", ";
    known += t.name;
  }
  throw_error(ErrorCode::invalid_argument,
              "dtype '" + std::string(text) + "' is not known (known: " + known + ")");
}

}  // namespace lowbit
