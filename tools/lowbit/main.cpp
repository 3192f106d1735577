// The lowbit command-line tool. Each command lives in its own file (cmd_*.cpp) and
// registers itself here with one line.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "commands.hpp"
#include "lowbit/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"lowbit: low-precision kernels for ML inference"};
  app.set_version_flag("--version", std::string("lowbit ") + LOWBIT_VERSION);
  app.require_subcommand(1);

  lowbit::cli::add_info_command(app);
  lowbit::cli::add_quantize_command(app);
  lowbit::cli::add_dequantize_command(app);
  lowbit::cli::add_inspect_command(app);
  lowbit::cli::add_verify_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // --help, --version, and usage errors (exit code 106+)
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "lowbit: error: %s\n", e.what());
    return lowbit::cli::exit_code(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit: internal error: %s\n", e.what());
    return 70;
  }
  return 0;
}
