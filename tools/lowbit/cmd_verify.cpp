// `lowbit verify FILE`: full validation of a model file; a non-zero exit on any defect.
//
// Opening checks the container (docs/formats.md, "Files"): header, dtypes, shapes, offsets,
// metadata, and the parts of every quantized tensor. verify then reads every byte and
// checks the values a quantized tensor's parts may hold: scales finite and >= 0 (e4m3
// block scales not NaN, e8m0 scales not the NaN code 0xff), zero points within the code
// range, global scales finite and >= 0.
#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "commands.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/numeric.hpp"
#include "model_files.hpp"

namespace lowbit::cli {
namespace {

struct VerifyOptions {
  std::string path;
  bool quiet = false;
};

float scale_value(const uint8_t* p, Dtype d, int64_t i) {
  switch (d) {
    case Dtype::f32: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case Dtype::f16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return f16_to_f32(h);
    }
    case Dtype::bf16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return bf16_to_f32(h);
    }
    default:
      return 0;
  }
}

/// Defects of a quantized tensor's values (at most a few named), or empty.
std::vector<std::string> check_values(const io::SafetensorsReader& f, const io::StQuantized& q) {
  std::vector<std::string> defects;
  auto defect = [&](std::string s) {
    if (defects.size() < 5) defects.push_back(std::move(s));
  };
  const QuantizedView v = f.quantized_view(q);
  if (v.scale.numel() > 0) {
    const auto* p = static_cast<const uint8_t*>(v.scale.data());
    for (int64_t i = 0; i < v.scale.numel(); ++i) {
      const Dtype d = v.scale.dtype();
      if (d == Dtype::e8m0) {
        if (p[i] == 0xff) defect(fmt::format("scale [{}] is the e8m0 NaN code 0xff", i));
      } else if (d == Dtype::f8e4m3fn) {
        if ((p[i] & 0x7f) == 0x7f)
          defect(fmt::format("scale [{}] is the e4m3 NaN code", i));
        else if (p[i] & 0x80 && p[i] != 0x80)
          defect(fmt::format("scale [{}] is negative (e4m3 0x{:02x})", i, p[i]));
      } else {
        const float s = scale_value(p, d, i);
        if (!std::isfinite(s) || s < 0)
          defect(fmt::format("scale [{}] = {} (must be finite, >= 0)", i, s));
      }
    }
  }
  if (v.zero.numel() > 0) {
    const auto* p = static_cast<const uint8_t*>(v.zero.data());
    for (int64_t i = 0; i < v.zero.numel(); ++i) {
      int32_t z;
      std::memcpy(&z, p + 4 * i, 4);
      if (z < q.scheme.qmin() || z > q.scheme.qmax())
        defect(fmt::format("zero point [{}] = {} is outside [{}, {}]", i, z, q.scheme.qmin(),
                           q.scheme.qmax()));
    }
  }
  if (v.global_scale.numel() > 0) {
    const float g = scale_value(static_cast<const uint8_t*>(v.global_scale.data()), Dtype::f32, 0);
    if (!std::isfinite(g) || g < 0)
      defect(fmt::format("global scale = {} (must be finite, >= 0)", g));
  }
  return defects;
}

void run_verify(const VerifyOptions& o) {
  const ModelInput in = ModelInput::open(o.path);  // container checks: throws corrupt_file
  std::vector<std::string> defects;
  uint64_t checksum = 0;  // touch every byte, so unreadable pages show here
  int64_t n_quantized = 0;
  for (const InputTensor& t : in.tensors) {
    const std::span<const uint8_t> bytes = t.quantized ? std::span<const uint8_t>() : t.data;
    for (uint8_t b : bytes) checksum += b;
    if (t.quantized) {
      ++n_quantized;
      auto touch = [&](const TensorView& v) {
        const auto* p = static_cast<const uint8_t*>(v.data());
        for (int64_t i = 0; i < storage_bytes(v.dtype(), v.numel()); ++i) checksum += p[i];
      };
      touch(t.qview.codes);
      touch(t.qview.scale);
      touch(t.qview.zero);
      touch(t.qview.global_scale);
      if (t.st_file)
        for (const std::string& d : check_values(*t.st_file, *t.st_entry.quantized))
          defects.push_back(fmt::format("{}: quantized tensor '{}' ({}): {}", t.st_file->path(),
                                        t.name, t.type_text, d));
    }
    t.release();
  }
  if (!defects.empty()) {
    for (const std::string& d : defects) fmt::print(stderr, "lowbit: defect: {}\n", d);
    throw_error(ErrorCode::corrupt_file,
                fmt::format("{}: {} defect{} found", o.path, defects.size(),
                            defects.size() == 1 ? "" : "s"));
  }
  if (!o.quiet)
    fmt::print("{}: ok ({}, {} tensors, {} quantized, {})\n", o.path, in.format, in.tensors.size(),
               n_quantized, human_bytes(in.total_bytes));
  __asm__ volatile("" : : "g"(checksum) : "memory");  // keep the reads
}

}  // namespace

void add_verify_command(CLI::App& app) {
  auto o = std::make_shared<VerifyOptions>();
  CLI::App* cmd = app.add_subcommand(
      "verify", "Validate a model file completely; exit 7 (corrupt file) on any defect");
  cmd->add_option("FILE", o->path, "model.safetensors, model.safetensors.index.json or model.gguf")
      ->required();
  cmd->add_flag("--quiet,-q", o->quiet, "Print nothing when the file is valid");
  cmd->callback([o] { run_verify(*o); });
}

}  // namespace lowbit::cli
