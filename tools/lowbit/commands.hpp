// The CLI's commands. Exit codes: 0 ok, 2 bad usage or argument, 3 unsupported,
// 4 out of memory, 5 device error, 6 I/O error, 7 corrupt file, 70 internal error.
#pragma once

#include <CLI/CLI.hpp>

#include "lowbit/error.hpp"

namespace lowbit::cli {

int exit_code(ErrorCode code);

void add_info_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_dequantize_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_verify_command(CLI::App& app);

}  // namespace lowbit::cli
