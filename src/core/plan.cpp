#include "lowbit/plan.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace lowbit {

std::string_view to_string(Backend backend) {
  switch (backend) {
    case Backend::cpu:
      return "cpu";
    case Backend::cuda:
      return "cuda";
  }
  return "unknown";
}

std::string KernelSku::str() const {
  std::string s = fmt::format("{}/{}/{}", op, to_string(backend), dtypes);
  if (!scheme.empty()) s += "/" + scheme;
  return s + fmt::format("/{}/{}", arch, kernel);
}

std::string PrecisionGuarantee::str() const {
  return fmt::format("math: {}; accumulator: {}; deterministic: {}; bit-stable: {}", math,
                     accumulator ? std::string(dtype_name(*accumulator)) : std::string("none"),
                     deterministic ? "yes" : "no", bit_stable ? "yes" : "no");
}

namespace plan_detail {

bool verbose(std::string_view category) {
  // Read on every call so that tests can set it; getenv is cheap next to select().
  const char* env = std::getenv("LOWBIT_VERBOSE");
  if (!env) return false;
  std::string_view list(env);
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    if (item == category || item == "all") return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

void log_dispatch(std::string_view op, const std::string& desc, std::string_view chosen,
                  const KernelSku& sku, const std::vector<Declined>& declined) {
  std::string line =
      fmt::format("[lowbit dispatch] {} {}: chose {} ({})", op, desc, chosen, sku.str());
  for (const Declined& d : declined)
    line += fmt::format("\n    declined {}: {}", d.kernel, d.reason);
  std::fprintf(stderr, "%s\n", line.c_str());
}

void throw_no_kernel(std::string_view op, const std::string& desc,
                     const std::vector<Declined>& declined) {
  std::string msg = fmt::format("{}: no kernel implements {}", op, desc);
  for (const Declined& d : declined) msg += fmt::format("; {}: {}", d.kernel, d.reason);
  throw_error(ErrorCode::unsupported, msg);
}

}  // namespace plan_detail
}  // namespace lowbit
