// QuantScheme's text form and the shapes of its scale tensors.
#include "lowbit/scheme.hpp"

#include <fmt/format.h>

#include <charconv>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"

namespace lowbit {
namespace {

struct FormatName {
  QuantFormat format;
  std::string_view name;
};
constexpr FormatName kFormatNames[] = {
    {QuantFormat::int8, "int8"},           {QuantFormat::uint8, "uint8"},
    {QuantFormat::int4, "int4"},           {QuantFormat::uint4, "uint4"},
    {QuantFormat::fp8e4m3, "fp8e4m3"},     {QuantFormat::fp8e5m2, "fp8e5m2"},
    {QuantFormat::nvfp4, "nvfp4"},         {QuantFormat::mxfp4, "mxfp4"},
    {QuantFormat::mxfp8e4m3, "mxfp8e4m3"}, {QuantFormat::mxfp8e5m2, "mxfp8e5m2"},
};

[[noreturn]] void bad(std::string_view text, const std::string& why) {
  throw_error(ErrorCode::invalid_argument, fmt::format("scheme '{}': {}", text, why));
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

bool parse_int(std::string_view s, int& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool is_valid_group(int g) { return g == 16 || g == 32 || g == 64 || g == 128 || g == 256; }

}  // namespace

QuantScheme QuantScheme::parse(std::string_view text) {
  const std::vector<std::string_view> parts = split(text, ':');
  QuantScheme s;
  const std::string_view head = parts[0];
  bool found = false;
  for (const FormatName& f : kFormatNames)
    if (head == f.name) {
      s.format = f.format;
      found = true;
    }
  if (!found && (head == "fp8" || head == "mxfp8")) {
    s.format = head == "fp8" ? QuantFormat::fp8e4m3 : QuantFormat::mxfp8e4m3;
    found = true;
  }
  if (!found) {
    if (auto t = gguf::parse_ggml_type(head);
        t && *t != gguf::GgmlType::f32 && *t != gguf::GgmlType::f16 && *t != gguf::GgmlType::bf16) {
      s.format = QuantFormat::gguf;
      s.gguf_type = static_cast<uint32_t>(*t);
      s.granularity = Granularity::block;
      s.block = static_cast<int>(gguf::block_layout(*t)->block_elems);
      found = true;
    }
  }
  if (!found)
    bad(text, fmt::format("unknown format '{}' (known: int8, uint8, int4, uint4, fp8e4m3, fp8e5m2, "
                          "nvfp4, mxfp4, mxfp8e4m3, mxfp8e5m2, q8_0, q4_0, q4_1, q5_0, q5_1, "
                          "q2_K, q3_K, q4_K, q5_K, q6_K, q8_K)",
                          head));
  const bool fixed_layout = s.format == QuantFormat::nvfp4 || s.format == QuantFormat::mxfp4 ||
                            s.format == QuantFormat::mxfp8e4m3 ||
                            s.format == QuantFormat::mxfp8e5m2 || s.format == QuantFormat::gguf;
  if (s.format == QuantFormat::nvfp4) {
    s.granularity = Granularity::block;
    s.block = 16;
    s.scale_dtype = Dtype::f8e4m3fn;
  } else if (fixed_layout && s.format != QuantFormat::gguf) {
    s.granularity = Granularity::block;
    s.block = 32;
    s.scale_dtype = Dtype::e8m0;
  }
  if (s.format == QuantFormat::uint8 || s.format == QuantFormat::uint4) s.symmetric = false;
  if (fixed_layout && parts.size() > 1)
    bad(text, fmt::format("{} has a fixed layout and takes no options", head));

  bool saw_sym = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string_view p = parts[i];
    int g = 0;
    if (p == "tensor") {
      s.granularity = Granularity::tensor;
    } else if (p == "channel") {
      s.granularity = Granularity::channel;
    } else if (p == "token") {
      s.granularity = Granularity::token;
    } else if (p.starts_with("block")) {
      const std::string_view size = p.substr(5);
      const size_t x = size.find('x');
      if (x == std::string_view::npos) {
        if (!parse_int(size, g) || !is_valid_group(g))
          bad(text, fmt::format("block size '{}' must be 16, 32, 64, 128 or 256", size));
        s.granularity = Granularity::block;
      } else {
        int g2 = 0;
        if (!parse_int(size.substr(0, x), g) || !parse_int(size.substr(x + 1), g2) || g != g2 ||
            !is_valid_group(g))
          bad(text, fmt::format("2-d block '{}' must be square, e.g. block128x128", size));
        s.granularity = Granularity::block2d;
      }
      s.block = g;
    } else if (p == "sym" || p == "asym") {
      s.symmetric = p == "sym";
      saw_sym = true;
    } else if (p.starts_with("axis=")) {
      if (!parse_int(p.substr(5), s.axis))
        bad(text, fmt::format("axis '{}' is not an integer", p.substr(5)));
    } else if (p.starts_with("scale=")) {
      const auto d = try_parse_dtype(p.substr(6));
      if (!d || (*d != Dtype::f32 && *d != Dtype::f16 && *d != Dtype::bf16))
        bad(text, fmt::format("scale dtype '{}' must be f32, f16 or bf16", p.substr(6)));
      s.scale_dtype = *d;
    } else {
      bad(text, fmt::format("unknown option '{}'", p));
    }
  }

  const bool integer = s.is_integer();
  if (!integer && !fixed_layout) {  // fp8
    if (saw_sym && !s.symmetric) bad(text, "fp8 formats are symmetric (no zero point)");
    if (s.scale_dtype != Dtype::f32) bad(text, "fp8 scales are f32");
  }
  if (integer) {
    if (s.granularity == Granularity::block2d)
      bad(text, "integer formats take 1-d blocks (blockG)");
    if ((s.format == QuantFormat::uint8 || s.format == QuantFormat::uint4) && s.symmetric)
      bad(text, "unsigned formats are affine (asym); use int8/int4 for symmetric");
  }
  if (s.granularity != Granularity::channel && s.axis != 0)
    bad(text, "axis= applies to per-channel schemes only");
  return s;
}

std::string QuantScheme::str() const {
  if (format == QuantFormat::gguf) {
    const auto* layout = gguf::block_layout(static_cast<gguf::GgmlType>(gguf_type));
    return layout ? std::string(layout->name) : fmt::format("gguf_type{}", gguf_type);
  }
  std::string s;
  for (const FormatName& f : kFormatNames)
    if (f.format == format) s = f.name;
  if (format == QuantFormat::nvfp4 || format == QuantFormat::mxfp4 ||
      format == QuantFormat::mxfp8e4m3 || format == QuantFormat::mxfp8e5m2)
    return s;
  switch (granularity) {
    case Granularity::tensor:
      s += ":tensor";
      break;
    case Granularity::channel:
      s += ":channel";
      break;
    case Granularity::token:
      s += ":token";
      break;
    case Granularity::block:
      s += fmt::format(":block{}", block);
      break;
    case Granularity::block2d:
      s += fmt::format(":block{}x{}", block, block);
      break;
  }
  if (granularity == Granularity::channel && axis != 0) s += fmt::format(":axis={}", axis);
  if (is_integer() && !symmetric && (format == QuantFormat::int8 || format == QuantFormat::int4))
    s += ":asym";
  if (is_integer() && scale_dtype != Dtype::f32)
    s += fmt::format(":scale={}", dtype_name(scale_dtype));
  return s;
}

Dtype QuantScheme::code_dtype() const {
  switch (format) {
    case QuantFormat::int8:
      return Dtype::i8;
    case QuantFormat::uint8:
      return Dtype::u8;
    case QuantFormat::int4:
      return Dtype::i4;
    case QuantFormat::uint4:
      return Dtype::u4;
    case QuantFormat::fp8e4m3:
    case QuantFormat::mxfp8e4m3:
      return Dtype::f8e4m3fn;
    case QuantFormat::fp8e5m2:
    case QuantFormat::mxfp8e5m2:
      return Dtype::f8e5m2;
    case QuantFormat::nvfp4:
    case QuantFormat::mxfp4:
      return Dtype::f4e2m1;
    case QuantFormat::gguf:
      return Dtype::u8;
  }
  return Dtype::u8;
}

bool QuantScheme::is_integer() const {
  return format == QuantFormat::int8 || format == QuantFormat::uint8 ||
         format == QuantFormat::int4 || format == QuantFormat::uint4;
}

int QuantScheme::qmin() const {
  switch (format) {
    case QuantFormat::int8:
      return symmetric ? -127 : -128;
    case QuantFormat::int4:
      return symmetric ? -7 : -8;
    default:
      return 0;
  }
}

int QuantScheme::qmax() const {
  switch (format) {
    case QuantFormat::int8:
      return 127;
    case QuantFormat::uint8:
      return 255;
    case QuantFormat::int4:
      return 7;
    case QuantFormat::uint4:
      return 15;
    default:
      return 0;
  }
}

Shape scale_shape(const QuantScheme& scheme, const Shape& shape) {
  const int nd = shape.size();
  auto need_dims = [&](int n) {
    if (nd < n)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("scheme {} needs a tensor of at least {} dims, got shape {}",
                              scheme.str(), n, shape.str()));
  };
  switch (scheme.granularity) {
    case Granularity::tensor:
      return Shape{1};
    case Granularity::channel: {
      need_dims(1);
      const int axis = scheme.axis < 0 ? scheme.axis + nd : scheme.axis;
      if (axis < 0 || axis >= nd)
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("scheme {}: axis {} out of range for shape {}", scheme.str(),
                                scheme.axis, shape.str()));
      return Shape{shape[axis]};
    }
    case Granularity::token: {
      need_dims(1);
      Shape s;
      for (int i = 0; i < nd - 1; ++i) s.push_back(shape[i]);
      if (s.empty()) s.push_back(1);
      return s;
    }
    case Granularity::block: {
      need_dims(1);
      const int64_t k = shape[nd - 1];
      const bool partial_ok =
          scheme.format == QuantFormat::fp8e4m3 || scheme.format == QuantFormat::fp8e5m2;
      if (!partial_ok && k % scheme.block != 0)
        throw_error(
            ErrorCode::invalid_argument,
            fmt::format("scheme {}: the last axis ({}) of shape {} is not a multiple of the block "
                        "size {}",
                        scheme.str(), k, shape.str(), scheme.block));
      Shape s;
      for (int i = 0; i < nd - 1; ++i) s.push_back(shape[i]);
      s.push_back((k + scheme.block - 1) / scheme.block);
      return s;
    }
    case Granularity::block2d: {
      need_dims(2);
      Shape s;
      for (int i = 0; i < nd - 2; ++i) s.push_back(shape[i]);
      s.push_back((shape[nd - 2] + scheme.block - 1) / scheme.block);
      s.push_back((shape[nd - 1] + scheme.block - 1) / scheme.block);
      return s;
    }
  }
  return Shape{1};
}

}  // namespace lowbit
