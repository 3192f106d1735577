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

/// The stored parts of a tensor: (name, dtype, shape, begin, end) in the data section.
struct Part {
  std::string name, dtype;
  Shape shape;
  int64_t begin, end;
};
std::vector<Part> parts_of(const InputTensor& t) {
  std::vector<Part> out;
  if (t.gguf_tensor) {
    const io::GgufTensor& g = *t.gguf_tensor;
    out.push_back(
        {g.name, io::ggml_type_name(g.ggml_type), g.shape, g.offset, g.offset + g.nbytes});
    return out;
  }
  auto add = [&](const io::StTensor& p) {
    out.push_back({p.name, std::string(io::st_dtype_name(p.st_dtype)), p.shape, p.begin, p.end});
  };
  if (t.st_entry.plain) {
    add(*t.st_entry.plain);
    return out;
  }
  const io::StQuantized& q = *t.st_entry.quantized;
  for (int idx : {q.codes, q.scale, q.zero, q.global_scale})
    if (idx >= 0) add(t.st_file->tensors()[static_cast<size_t>(idx)]);
  return out;
}

void run_inspect(const InspectOptions& o) {
  const ModelInput in = ModelInput::open(o.path);
  int64_t n_quantized = 0, n_stored = 0;
  for (const InputTensor& t : in.tensors) {
    n_quantized += t.quantized;
    n_stored += static_cast<int64_t>(parts_of(t).size());
  }

  if (o.json) {
    nlohmann::json j;
    j["path"] = o.path;
    j["format"] = in.format;
    j["files"] = in.paths;
    j["file_bytes"] = in.total_bytes;
    if (in.gguf) {
      j["gguf_version"] = in.gguf->version();
      j["alignment"] = in.gguf->alignment();
    }
    j["metadata"] = nlohmann::json::object();
    for (const auto& [k, v] : in.metadata) j["metadata"][k] = v;
    j["tensors"] = nlohmann::json::array();
    for (const InputTensor& it : in.tensors) {
      nlohmann::json t;
      t["name"] = it.name;
      t["bytes"] = it.nbytes;
      t["shape"] = shape_json(it.shape);
      const std::vector<Part> parts = parts_of(it);
      if (it.quantized) t["scheme"] = it.qview.scheme.str();
      if (!it.quantized) t["dtype"] = it.type_text;  // safetensors' dtype names
      if (in.gguf) t["ggml_type"] = parts[0].dtype;
      if (!it.quantized || in.gguf) {
        t["data_offsets"] = {parts[0].begin, parts[0].end};
      } else {
        t["parts"] = nlohmann::json::array();
        for (const Part& p : parts)
          t["parts"].push_back({{"name", p.name},
                                {"dtype", p.dtype},
                                {"shape", shape_json(p.shape)},
                                {"data_offsets", {p.begin, p.end}}});
      }
      j["tensors"].push_back(std::move(t));
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }

  fmt::print("{}: {}{}, {} in {} file{}; {} tensors ({} quantized), {} stored\n", o.path, in.format,
             in.gguf ? fmt::format(" v{}", in.gguf->version()) : std::string(),
             human_bytes(in.total_bytes), in.paths.size(), in.paths.size() == 1 ? "" : "s",
             in.tensors.size(), n_quantized, n_stored);
  fmt::print("metadata ({} entries){}\n", in.metadata.size(), in.metadata.empty() ? "" : ":");
  for (const auto& [k, v] : in.metadata) {
    std::string shown = v.size() > 100 ? v.substr(0, 97) + "..." : v;
    fmt::print("  {} = {}\n", k, shown);
  }
  size_t w = 6;
  for (const InputTensor& it : in.tensors) w = std::max(w, it.name.size());
  w = std::min<size_t>(w, 64);
  fmt::print("{:<{}}  {:<20} {:>16} {:>10}\n", "tensor", w, "dtype / scheme", "shape", "bytes");
  for (const InputTensor& it : in.tensors) {
    fmt::print("{:<{}}  {:<20} {:>16} {:>10}\n", it.name, w, it.type_text, it.shape.str(),
               human_bytes(it.nbytes));
    if (!o.raw || !it.quantized || in.gguf) continue;
    for (const Part& p : parts_of(it))
      fmt::print("  {:<{}}{:<20} {:>16} {:>10}\n", p.name, w, p.dtype, p.shape.str(),
                 human_bytes(p.end - p.begin));
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "List a model file's tensors (dtype or scheme, shape, size) and metadata");
  cmd->add_option("FILE", o->path, "model.safetensors, model.safetensors.index.json or model.gguf")
      ->required();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_flag("--parts", o->raw, "Also list the stored parts of quantized tensors");
  cmd->callback([o] { run_inspect(*o); });
}

}  // namespace lowbit::cli
