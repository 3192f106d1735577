// `lowbit info`: the backends this build and machine offer.
#include <fmt/format.h>

#include "commands.hpp"
#include "lowbit/device.hpp"

namespace lowbit::cli {

int exit_code(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return 2;
    case ErrorCode::unsupported:
      return 3;
    case ErrorCode::out_of_memory:
      return 4;
    case ErrorCode::device_error:
      return 5;
    case ErrorCode::io_error:
      return 6;
    case ErrorCode::corrupt_file:
      return 7;
    case ErrorCode::internal:
      return 70;
  }
  return 70;
}

void add_info_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("info", "Print lowbit's version and the backends found");
  cmd->callback([] {
    fmt::print("lowbit {}\n", LOWBIT_VERSION);
    fmt::print("cpu:  {}\n", cpu_features().str());
#if LOWBIT_HAS_CUDA
    fmt::print("cuda: built in ({})\n", cuda_version_string());
#else
    fmt::print("cuda: not built (configure with LOWBIT_CUDA=ON)\n");
#endif
    const int n = cuda_device_count();
    if (n == 0) fmt::print("cuda devices: none\n");
    for (int i = 0; i < n; ++i) fmt::print("cuda:{}  {}\n", i, cuda_device_properties(i).str());
  });
}

}  // namespace lowbit::cli
