// `lowbit quantize IN OUT --scheme S`: quantizes a model's 2-D weights into a new file,
// streaming tensor by tensor from the memory-mapped input.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.hpp"
#include "lowbit/device.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"
#include "model_files.hpp"

namespace lowbit::cli {
namespace {

struct QuantizeOptions {
  std::string in, out, scheme;
  std::vector<std::string> include, exclude;
  std::string device = "cpu";
  int threads = 0;
  bool force = false;
  std::string report = "text";
  bool verbose = false;
};

struct Row {
  std::string name;
  std::string action;  // "quantized", "kept", "copied" (already quantized in the input)
  std::string reason;  // why a tensor was kept
  std::string scheme;
  std::string dtype;
  Shape shape;
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  ErrorStats stats;
  double seconds = 0;
};

bool is_float_source(const InputTensor& t) {
  return t.dtype && (*t.dtype == Dtype::f32 || *t.dtype == Dtype::f16 || *t.dtype == Dtype::bf16 ||
                     *t.dtype == Dtype::f64);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// Why the default rule keeps a tensor (empty: it is a weight to quantize).
std::string default_keep_reason(const InputTensor& t) {
  const std::string n = lower(t.name);
  if (t.shape.size() != 2) return fmt::format("{}-d", t.shape.size());
  if (n.find("embed") != std::string::npos || n.find("embd") != std::string::npos ||
      n.find("wte.") != std::string::npos || n.find("wpe.") != std::string::npos)
    return "embedding";
  if (n.find("norm") != std::string::npos || n.find("ln_") != std::string::npos) return "norm";
  if (n.find("bias") != std::string::npos) return "bias";
  return "";
}

nlohmann::json metric(double v) {
  if (std::isfinite(v)) return v;
  return nullptr;  // JSON has no Inf
}

void run_quantize(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const QuantScheme scheme = QuantScheme::parse(o.scheme);
  const Device device = parse_device(o.device);
  check_device(device);
  const int threads = o.threads > 0
                          ? o.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (o.report != "text" && o.report != "json")
    throw_error(ErrorCode::invalid_argument,
                fmt::format("--report {}: must be text or json", o.report));

  ModelInput in = ModelInput::open(o.in);
  check_not_input(in, o.out);
  ModelOutput out(o.out, o.force);

  // Plan: what happens to each tensor, and the output's declarations.
  std::vector<Row> rows(in.tensors.size());
  out.copy_metadata(in);
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    const InputTensor& t = in.tensors[i];
    Row& row = rows[i];
    row.name = t.name;
    row.bytes_before = t.nbytes;
    row.shape = t.shape;
    if (t.quantized) {
      row.action = "copied";
      row.reason = "already quantized";
      row.scheme = t.qview.scheme.str();
      row.bytes_after = t.nbytes;
      out.add_quantized(t.name, t.qview.scheme, t.shape);
      continue;
    }
    row.dtype = t.type_text;
    const bool included = matches_any(t.name, o.include);
    std::string reason;
    if (included) {
      if (!is_float_source(t))
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("--include names tensor '{}' of dtype {}; only F32, F16, BF16 and "
                                "F64 tensors can be quantized",
                                t.name, row.dtype));
      io::stored_parts(scheme, t.shape);  // throws invalid_argument naming the misfit
    } else if (matches_any(t.name, o.exclude)) {
      reason = "excluded";
    } else if (!is_float_source(t)) {
      reason = fmt::format("{} data", row.dtype);
    } else {
      reason = default_keep_reason(t);
      if (reason.empty()) {
        try {
          io::stored_parts(scheme, t.shape);
        } catch (const Error& e) {
          reason = fmt::format("shape does not fit {}", scheme.str());
        }
      }
    }
    if (reason.empty()) {
      row.action = "quantized";
      row.scheme = scheme.str();
      int64_t after = 0;
      for (const io::StoredPart& p : io::stored_parts(scheme, t.shape)) after += p.nbytes;
      if (scheme.format == QuantFormat::gguf) after = io::stored_parts(scheme, t.shape)[0].nbytes;
      row.bytes_after = after;
      out.add_quantized(t.name, scheme, t.shape);
    } else {
      row.action = "kept";
      row.reason = reason;
      row.bytes_after = t.nbytes;
      out.add_plain(t.name, t.st_dtype, t.shape);
    }
  }

  // Stream: one tensor at a time from the mapping to its place in the output.
  out.begin();
  Progress progress(static_cast<int64_t>(in.tensors.size()), true);
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    const InputTensor& t = in.tensors[i];
    Row& row = rows[i];
    progress.step(row.name);
    if (row.action == "copied") {
      out.write_quantized(t.name, t.qview);
      t.release();
      continue;
    }
    if (row.action == "kept") {
      out.write_plain(t.name, t.data);
      t.release();
      continue;
    }
    const auto ts = std::chrono::steady_clock::now();
    Tensor aligned_src;
    TensorView src = t.view;
    if (!is_aligned(src)) {
      aligned_src = copy_of(src);
      src = aligned_src.view();
    }
    QuantizeResult r;
    try {
      r = quantize_measured(src, scheme, threads, device);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("tensor '{}': {}", t.name, e.message()));
    }
    out.write_quantized(t.name, r.q.view());
    t.release();
    row.stats = r.stats;
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
  }
  progress.done();
  out.commit();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t rss = peak_rss_bytes();

  int64_t before = 0, after = 0, n_quantized = 0;
  ErrorStats all;
  for (const Row& r : rows) {
    before += r.bytes_before;
    after += r.bytes_after;
    if (r.action == "quantized") {
      ++n_quantized;
      all.add(r.stats);
    }
  }
  const double ratio = after > 0 ? static_cast<double>(before) / static_cast<double>(after) : 0;

  if (o.report == "json") {
    nlohmann::json j;
    j["input"] = o.in;
    j["output"] = o.out;
    j["scheme"] = scheme.str();
    j["device"] = device.str();
    j["threads"] = threads;
    j["tensors"] = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json t;
      t["name"] = r.name;
      t["action"] = r.action;
      if (!r.reason.empty()) t["reason"] = r.reason;
      if (!r.scheme.empty()) t["scheme"] = r.scheme;
      if (!r.dtype.empty()) t["dtype"] = r.dtype;
      t["shape"] = std::vector<int64_t>(r.shape.begin(), r.shape.end());
      t["bytes_before"] = r.bytes_before;
      t["bytes_after"] = r.bytes_after;
      if (r.action == "quantized") {
        t["nmse"] = metric(r.stats.nmse());
        t["snr_db"] = metric(r.stats.snr_db());
        t["max_abs_err"] = metric(r.stats.max_abs_err);
        t["seconds"] = r.seconds;
      }
      j["tensors"].push_back(std::move(t));
    }
    j["summary"] = {{"tensors", rows.size()},
                    {"quantized", n_quantized},
                    {"tensor_bytes_before", before},
                    {"tensor_bytes_after", after},
                    {"file_bytes_before", in.total_bytes},
                    {"file_bytes_after", out.file_size()},
                    {"ratio", ratio},
                    {"nmse", metric(all.nmse())},
                    {"snr_db", metric(all.snr_db())},
                    {"max_abs_err", metric(all.max_abs_err)},
                    {"seconds", seconds},
                    {"peak_rss_bytes", rss}};
    fmt::print("{}\n", j.dump(2));
    return;
  }

  fmt::print("lowbit quantize {} -> {}  (scheme {}, {} thread{}, {})\n", o.in, o.out, scheme.str(),
             threads, threads == 1 ? "" : "s", device.str());
  size_t w = 6;
  for (const Row& r : rows)
    if (r.action != "kept" || o.verbose) w = std::max(w, r.name.size());
  w = std::min<size_t>(w, 60);
  fmt::print("{:<{}}  {:<18} {:>13} {:>10} {:>10} {:>10} {:>7} {:>10}\n", "tensor", w, "scheme",
             "shape", "before", "after", "NMSE", "SNR dB", "max|err|");
  std::map<std::string, int> kept_reasons;
  for (const Row& r : rows) {
    if (r.action == "kept") {
      ++kept_reasons[r.reason];
      if (!o.verbose) continue;
    }
    const std::string shape = fmt::format("{}", fmt::join(r.shape, "x"));
    if (r.action == "quantized")
      fmt::print("{:<{}}  {:<18} {:>13} {:>10} {:>10} {:>10.3e} {:>7.2f} {:>10.3e}\n", r.name, w,
                 r.scheme, shape, human_bytes(r.bytes_before), human_bytes(r.bytes_after),
                 r.stats.nmse(), r.stats.snr_db(), r.stats.max_abs_err);
    else
      fmt::print("{:<{}}  {:<18} {:>13} {:>10} {:>10}   {}\n", r.name, w,
                 r.action == "copied" ? r.scheme : r.dtype, shape, human_bytes(r.bytes_before),
                 human_bytes(r.bytes_after),
                 r.action == "copied" ? "(copied)" : "(kept: " + r.reason + ")");
  }
  std::string kept;
  for (const auto& [reason, n] : kept_reasons)
    kept += fmt::format("{}{} {}", kept.empty() ? "" : ", ", n, reason);
  fmt::print("kept unchanged: {} tensors ({}){}\n", rows.size() - static_cast<size_t>(n_quantized),
             kept.empty() ? "none" : kept, o.verbose ? "" : "; -v lists them");
  fmt::print(
      "summary: {} of {} tensors quantized; tensors {} -> {} ({:.2f}x); file {} -> {}; "
      "NMSE {:.3e} overall; {:.2f} s; peak RSS {}\n",
      n_quantized, rows.size(), human_bytes(before), human_bytes(after), ratio,
      human_bytes(in.total_bytes), human_bytes(out.file_size()), all.nmse(), seconds,
      human_bytes(rss));
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Quantize a model's 2-D weights (skipping norms, biases and embeddings unless --include "
      "names them) into a new file; every other tensor and the metadata are kept. IN and OUT "
      "may each be .safetensors or .gguf (GGUF output takes GGUF schemes: q8_0, q4_K, ...)");
  cmd->add_option("IN", o->in,
                  "Input: model.safetensors, model.safetensors.index.json or model.gguf")
      ->required();
  cmd->add_option("OUT", o->out, "Output .safetensors or .gguf file (written atomically)")
      ->required();
  cmd->add_option("--scheme,-s", o->scheme,
                  "Quantization scheme, e.g. int8:channel, int4:block32, fp8e4m3, nvfp4, q4_K "
                  "(docs/formats.md)")
      ->required();
  cmd->add_option("--include", o->include,
                  "Also quantize tensors whose names match this glob (repeatable; wins over "
                  "--exclude and the default rule)");
  cmd->add_option("--exclude", o->exclude,
                  "Keep tensors whose names match this glob unquantized (repeatable)");
  cmd->add_option("--device", o->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--threads,-j", o->threads, "CPU threads (default: all cores)");
  cmd->add_flag("--force,-f", o->force, "Replace OUT if it exists");
  cmd->add_option("--report", o->report, "text or json (JSON on stdout)")->capture_default_str();
  cmd->add_flag("--verbose,-v", o->verbose, "List the tensors kept unchanged too");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace lowbit::cli
