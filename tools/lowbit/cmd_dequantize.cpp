// `lowbit dequantize IN OUT --dtype bf16`: every quantized tensor back to a float dtype;
// other tensors and the metadata (less the lowbit.* entries of the tensors dequantized) kept.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "commands.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"
#include "model_files.hpp"

namespace lowbit::cli {
namespace {

struct DequantizeOptions {
  std::string in, out;
  std::string dtype = "f32";
  bool force = false;
  bool quiet = false;
};

void run_dequantize(const DequantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const Dtype dtype = parse_dtype(o.dtype);
  if (dtype != Dtype::f32 && dtype != Dtype::f16 && dtype != Dtype::bf16)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("--dtype {}: must be f32, f16 or bf16", o.dtype));
  const io::StDtype st = *io::to_st_dtype(dtype);

  ModelInput in = ModelInput::open(o.in);
  check_not_input(in, o.out);
  ModelOutput out(o.out, o.force);
  std::vector<std::string> dropped;
  for (const InputTensor& t : in.tensors)
    if (t.quantized) {
      dropped.push_back(io::scheme_key(t.name));
      dropped.push_back(io::shape_key(t.name));
    }
  out.copy_metadata(in, dropped);
  int64_t n = 0;
  for (const InputTensor& t : in.tensors) {
    if (!t.quantized) {
      out.add_plain(t.name, t.st_dtype, t.shape);
    } else {
      out.add_plain(t.name, st, t.shape);
      ++n;
    }
  }
  out.begin();
  Progress progress(static_cast<int64_t>(in.tensors.size()), true);
  for (const InputTensor& t : in.tensors) {
    progress.step(t.name);
    if (!t.quantized) {
      out.write_plain(t.name, t.data);
      t.release();
      continue;
    }
    QuantizedTensor storage;
    const QuantizedView v = aligned(t.qview, storage);
    Tensor y;
    try {
      y = dequantize(v, dtype);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("tensor '{}': {}", t.name, e.message()));
    }
    out.write_plain(
        t.name, std::span<const uint8_t>(static_cast<const uint8_t*>(y.data()),
                                         static_cast<size_t>(storage_bytes(y.dtype(), y.numel()))));
    t.release();
  }
  progress.done();
  out.commit();
  if (!o.quiet)
    fmt::print(
        "lowbit dequantize {} -> {}: {} tensors to {}, {} kept; {} -> {}; {:.2f} s; peak "
        "RSS {}\n",
        o.in, o.out, n, dtype_name(dtype), in.tensors.size() - static_cast<size_t>(n),
        human_bytes(in.total_bytes), human_bytes(out.file_size()),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
        human_bytes(peak_rss_bytes()));
}

}  // namespace

void add_dequantize_command(CLI::App& app) {
  auto o = std::make_shared<DequantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "dequantize", "Dequantize every quantized tensor of a model file to a float dtype");
  cmd->add_option("IN", o->in, "Input: .safetensors, .safetensors.index.json or .gguf")->required();
  cmd->add_option("OUT", o->out, "Output .safetensors or .gguf file (written atomically)")
      ->required();
  cmd->add_option("--dtype", o->dtype, "f32, f16 or bf16")->capture_default_str();
  cmd->add_flag("--force,-f", o->force, "Replace OUT if it exists");
  cmd->add_flag("--quiet,-q", o->quiet, "Print nothing on success");
  cmd->callback([o] { run_dequantize(*o); });
}

}  // namespace lowbit::cli
