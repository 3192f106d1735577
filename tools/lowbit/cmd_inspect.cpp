// `lowbit inspect FILE`: tensors, dtypes, shapes, schemes, sizes and metadata of a model.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "lowbit/io.hpp"
#include "model_files.hpp"

namespace lowbit::cli {
namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
  bool raw = false;
};

nlohmann::json shape_json(const Shape& s) { return std::vector<int64_t>(s.begin(), s.end()); }

void run_inspect(const InspectOptions& o) {
  const ModelInput in = ModelInput::open(o.path);
  int64_t n_quantized = 0, n_stored = 0;
  for (const auto& f : in.files) {
    n_quantized += static_cast<int64_t>(f->quantized().size());
    n_stored += static_cast<int64_t>(f->tensors().size());
  }

  if (o.json) {
    nlohmann::json j;
    j["path"] = o.path;
    j["format"] = "safetensors";
    j["files"] = in.paths;
    j["file_bytes"] = in.total_bytes;
    j["metadata"] = nlohmann::json::object();
    for (const auto& [k, v] : in.metadata) j["metadata"][k] = v;
    j["tensors"] = nlohmann::json::array();
    for (const InputTensor& it : in.tensors) {
      nlohmann::json t;
      t["name"] = it.name();
      t["bytes"] = it.nbytes();
      if (it.entry.plain) {
        const io::StTensor& p = *it.entry.plain;
        t["dtype"] = io::st_dtype_name(p.st_dtype);
        t["shape"] = shape_json(p.shape);
        t["data_offsets"] = {p.begin, p.end};
      } else {
        const io::StQuantized& q = *it.entry.quantized;
        t["scheme"] = q.scheme.str();
        t["shape"] = shape_json(q.shape);
        t["parts"] = nlohmann::json::array();
        for (int idx : {q.codes, q.scale, q.zero, q.global_scale}) {
          if (idx < 0) continue;
          const io::StTensor& p = it.file->tensors()[static_cast<size_t>(idx)];
          t["parts"].push_back({{"name", p.name},
                                {"dtype", io::st_dtype_name(p.st_dtype)},
                                {"shape", shape_json(p.shape)},
                                {"data_offsets", {p.begin, p.end}}});
        }
      }
      j["tensors"].push_back(std::move(t));
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }

  fmt::print("{}: safetensors, {} in {} file{}; {} tensors ({} quantized), {} stored\n", o.path,
             human_bytes(in.total_bytes), in.files.size(), in.files.size() == 1 ? "" : "s",
             in.tensors.size(), n_quantized, n_stored);
  for (const auto& f : in.files)
    if (in.files.size() > 1)
      fmt::print("  {}: {}, header {} bytes\n", f->path(), human_bytes(f->file_size()),
                 f->header_size());
  fmt::print("metadata ({} entries){}\n", in.metadata.size(), in.metadata.empty() ? "" : ":");
  for (const auto& [k, v] : in.metadata) {
    std::string shown = v.size() > 100 ? v.substr(0, 97) + "..." : v;
    fmt::print("  {} = {}\n", k, shown);
  }
  size_t w = 6;
  for (const InputTensor& it : in.tensors) w = std::max(w, it.name().size());
  w = std::min<size_t>(w, 64);
  fmt::print("{:<{}}  {:<20} {:>16} {:>10}\n", "tensor", w, "dtype / scheme", "shape", "bytes");
  for (const InputTensor& it : in.tensors) {
    if (it.entry.plain) {
      const io::StTensor& p = *it.entry.plain;
      fmt::print("{:<{}}  {:<20} {:>16} {:>10}\n", p.name, w, io::st_dtype_name(p.st_dtype),
                 p.shape.str(), human_bytes(p.nbytes()));
      continue;
    }
    const io::StQuantized& q = *it.entry.quantized;
    fmt::print("{:<{}}  {:<20} {:>16} {:>10}\n", q.name, w, q.scheme.str(), q.shape.str(),
               human_bytes(q.nbytes));
    if (!o.raw) continue;
    for (int idx : {q.codes, q.scale, q.zero, q.global_scale}) {
      if (idx < 0) continue;
      const io::StTensor& p = it.file->tensors()[static_cast<size_t>(idx)];
      fmt::print("  {:<{}}{:<20} {:>16} {:>10}\n", p.name, w, io::st_dtype_name(p.st_dtype),
                 p.shape.str(), human_bytes(p.nbytes()));
    }
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "List a model file's tensors (dtype or scheme, shape, size) and metadata");
  cmd->add_option("FILE", o->path, "model.safetensors or model.safetensors.index.json")->required();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_flag("--parts", o->raw, "Also list the stored parts of quantized tensors");
  cmd->callback([o] { run_inspect(*o); });
}

}  // namespace lowbit::cli
