// safetensors dtypes and the layout of lowbit's quantized tensors in safetensors files.
#include <fmt/format.h>

#include <array>
#include <charconv>

#include "lowbit/error.hpp"
#include "lowbit/io.hpp"

namespace lowbit::io {
namespace {

struct StDtypeInfo {
  StDtype st;
  std::string_view name;
  int bits;
  std::optional<Dtype> dtype;
};

constexpr std::array<StDtypeInfo, kStDtypeCount> kStDtypes{{
    {StDtype::BOOL, "BOOL", 8, std::nullopt},
    {StDtype::F4, "F4", 4, Dtype::f4e2m1},
    {StDtype::F6_E2M3, "F6_E2M3", 6, std::nullopt},
    {StDtype::F6_E3M2, "F6_E3M2", 6, std::nullopt},
    {StDtype::U8, "U8", 8, Dtype::u8},
    {StDtype::I8, "I8", 8, Dtype::i8},
    {StDtype::F8_E5M2, "F8_E5M2", 8, Dtype::f8e5m2},
    {StDtype::F8_E4M3, "F8_E4M3", 8, Dtype::f8e4m3fn},
    {StDtype::F8_E8M0, "F8_E8M0", 8, Dtype::e8m0},
    {StDtype::I16, "I16", 16, Dtype::i16},
    {StDtype::U16, "U16", 16, std::nullopt},
    {StDtype::F16, "F16", 16, Dtype::f16},
    {StDtype::BF16, "BF16", 16, Dtype::bf16},
    {StDtype::I32, "I32", 32, Dtype::i32},
    {StDtype::U32, "U32", 32, Dtype::u32},
    {StDtype::F32, "F32", 32, Dtype::f32},
    {StDtype::C64, "C64", 64, std::nullopt},
    {StDtype::F64, "F64", 64, Dtype::f64},
    {StDtype::I64, "I64", 64, std::nullopt},
    {StDtype::U64, "U64", 64, std::nullopt},
}};

constexpr bool st_table_in_order() {
  for (int i = 0; i < kStDtypeCount; ++i)
    if (static_cast<int>(kStDtypes[i].st) != i) return false;
  return true;
}
static_assert(st_table_in_order(), "kStDtypes rows must follow the StDtype enum");

const StDtypeInfo& info(StDtype d) { return kStDtypes[static_cast<size_t>(d)]; }

StDtype file_dtype_of(Dtype d) {
  switch (d) {
    case Dtype::i8:
      return StDtype::I8;
    case Dtype::f32:
      return StDtype::F32;
    case Dtype::f16:
      return StDtype::F16;
    case Dtype::bf16:
      return StDtype::BF16;
    case Dtype::i32:
      return StDtype::I32;
    default:
      return StDtype::U8;  // u8, packed 4-bit codes, fp8 bits, e8m0 bits, GGUF blocks
  }
}

}  // namespace

std::string_view st_dtype_name(StDtype d) { return info(d).name; }

std::optional<StDtype> parse_st_dtype(std::string_view text) {
  for (const StDtypeInfo& i : kStDtypes)
    if (i.name == text) return i.st;
  return std::nullopt;
}

int st_dtype_bits(StDtype d) { return info(d).bits; }

std::optional<Dtype> to_dtype(StDtype d) { return info(d).dtype; }

std::optional<StDtype> to_st_dtype(Dtype d) {
  for (const StDtypeInfo& i : kStDtypes)
    if (i.dtype == d) return i.st;
  return std::nullopt;
}

std::string scheme_key(std::string_view name) { return fmt::format("lowbit.scheme.{}", name); }
std::string shape_key(std::string_view name) { return fmt::format("lowbit.shape.{}", name); }

std::optional<Shape> parse_shape_text(std::string_view text) {
  if (text.size() < 2 || text.front() != '[' || text.back() != ']') return std::nullopt;
  std::string_view body = text.substr(1, text.size() - 2);
  Shape shape;
  if (body.empty()) return shape;
  while (true) {
    int64_t v = 0;
    if (body.empty() || body[0] < '0' || body[0] > '9') return std::nullopt;
    auto [p, ec] = std::from_chars(body.data(), body.data() + body.size(), v);
    if (ec != std::errc() || v < 0) return std::nullopt;
    if (shape.size() == kMaxDims) return std::nullopt;
    shape.push_back(v);
    body.remove_prefix(static_cast<size_t>(p - body.data()));
    if (body.empty()) break;
    if (!body.starts_with(", ")) return std::nullopt;
    body.remove_prefix(2);
  }
  return shape;
}

std::vector<StoredPart> stored_parts(const QuantScheme& scheme, const Shape& shape) {
  std::vector<StoredPart> parts;
  const int64_t n = numel(shape);
  const Shape cs = code_shape(scheme, shape);  // validates the shape against the scheme
  const bool gguf = scheme.format == QuantFormat::gguf;
  const Dtype code_dtype = gguf ? Dtype::u8 : scheme.code_dtype();
  StoredPart codes{StoredPart::codes, "", file_dtype_of(code_dtype),           cs,
                   code_dtype,        cs, storage_bytes(code_dtype, numel(cs))};
  if (is_packed(code_dtype)) {
    // Two codes a byte, low nibble first: [..., K / 2] when K is even, else flat.
    const int nd = shape.size();
    if (nd >= 1 && shape[nd - 1] % 2 == 0) {
      Shape fs = shape;
      fs[nd - 1] = shape[nd - 1] / 2;
      codes.file_shape = fs;
    } else {
      codes.file_shape = Shape{(n + 1) / 2};
    }
  }
  parts.push_back(codes);
  if (gguf) return parts;

  const Shape ss = scale_shape(scheme, shape);
  Dtype scale_dtype = Dtype::f32;
  if (scheme.is_integer()) scale_dtype = scheme.scale_dtype;
  if (scheme.format == QuantFormat::nvfp4) scale_dtype = Dtype::f8e4m3fn;
  if (scheme.format == QuantFormat::mxfp4 || scheme.format == QuantFormat::mxfp8e4m3 ||
      scheme.format == QuantFormat::mxfp8e5m2)
    scale_dtype = Dtype::e8m0;
  parts.push_back({StoredPart::scale, ".scale", file_dtype_of(scale_dtype), ss, scale_dtype, ss,
                   storage_bytes(scale_dtype, numel(ss))});
  if (scheme.is_integer() && !scheme.symmetric)
    parts.push_back({StoredPart::zero, ".zero", StDtype::I32, ss, Dtype::i32, ss,
                     storage_bytes(Dtype::i32, numel(ss))});
  if (scheme.format == QuantFormat::nvfp4)
    parts.push_back({StoredPart::global_scale, ".global_scale", StDtype::F32, Shape{1}, Dtype::f32,
                     Shape{1}, 4});
  return parts;
}

}  // namespace lowbit::io
