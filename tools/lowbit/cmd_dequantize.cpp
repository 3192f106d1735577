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
  io::SafetensorsWriter out(o.out, {.overwrite = o.force});
  std::vector<std::string> dropped;
  for (const InputTensor& it : in.tensors)
    if (it.entry.quantized) {
      dropped.push_back(io::scheme_key(it.name()));
      dropped.push_back(io::shape_key(it.name()));
    }
  for (const auto& [k, v] : in.metadata)
    if (std::find(dropped.begin(), dropped.end(), k) == dropped.end()) out.set_metadata(k, v);
  int64_t n = 0;
  for (const InputTensor& it : in.tensors) {
    if (it.entry.plain) {
      out.add_tensor(it.name(), it.entry.plain->st_dtype, it.entry.plain->shape);
    } else {
      out.add_tensor(it.name(), st, it.entry.quantized->shape);
      ++n;
    }
  }
  out.begin();
  Progress progress(static_cast<int64_t>(in.tensors.size()), true);
  for (const InputTensor& it : in.tensors) {
    progress.step(it.name());
    const io::SafetensorsReader& f = *it.file;
    if (it.entry.plain) {
      out.write(it.name(), f.bytes(*it.entry.plain));
      f.release(*it.entry.plain);
      continue;
    }
    const io::StQuantized& q = *it.entry.quantized;
    QuantizedTensor storage;
    const QuantizedView v = aligned(f.quantized_view(q), storage);
    Tensor y;
    try {
      y = dequantize(v, dtype);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("tensor '{}': {}", q.name, e.message()));
    }
    out.write(it.name(), y.view());
    for (int idx : {q.codes, q.scale, q.zero, q.global_scale})
      if (idx >= 0) f.release(f.tensors()[static_cast<size_t>(idx)]);
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
  cmd->add_option("IN", o->in, "Input: .safetensors (or .safetensors.index.json)")->required();
  cmd->add_option("OUT", o->out, "Output .safetensors file (written atomically)")->required();
  cmd->add_option("--dtype", o->dtype, "f32, f16 or bf16")->capture_default_str();
  cmd->add_flag("--force,-f", o->force, "Replace OUT if it exists");
  cmd->add_flag("--quiet,-q", o->quiet, "Print nothing on success");
  cmd->callback([o] { run_dequantize(*o); });
}

}  // namespace lowbit::cli
