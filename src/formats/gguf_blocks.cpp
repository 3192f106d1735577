// GGUF block formats: the layout table, type-name parsing, argument checks and dispatch to
// the per-type codecs (gguf_legacy.cpp, gguf_kquants.cpp).
#include "lowbit/gguf_blocks.hpp"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <cmath>
#include <cstring>

#include "formats/gguf_block_codecs.hpp"
#include "lowbit/error.hpp"
#include "lowbit/numeric.hpp"

namespace lowbit::gguf {

namespace {

using QuantizeFn = void (*)(const float*, uint8_t*, int64_t);
using DequantizeFn = void (*)(const uint8_t*, float*, int64_t);

// The plain types are one-element blocks with trivial codecs.
void quantize_f32(const float* x, uint8_t* y, int64_t n) {
  std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
}
void dequantize_f32(const uint8_t* y, float* x, int64_t n) {
  std::memcpy(x, y, static_cast<size_t>(n) * sizeof(float));
}
void quantize_f16(const float* x, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = f32_to_f16(x[i]);
    if ((h & 0x7fffu) == 0x7c00u) {
      throw_error(
          ErrorCode::invalid_argument,
          fmt::format("quantize f16: value {} at index {} overflows f16 (max 65504)", x[i], i));
    }
    detail::store_u16(y + 2 * i, h);
  }
}
void dequantize_f16(const uint8_t* y, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = detail::load_f16(y + 2 * i);
}
void quantize_bf16(const float* x, uint8_t* y, int64_t n) {
  // ggml_compute_fp32_to_bf16: round to nearest even (its NaN branch is unreachable here).
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = f32_to_bf16(x[i]);
    if ((h & 0x7fffu) == 0x7f80u) {
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("quantize bf16: value {} at index {} overflows bf16", x[i], i));
    }
    detail::store_u16(y + 2 * i, h);
  }
}
void dequantize_bf16(const uint8_t* y, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = bf16_to_f32(detail::load_u16(y + 2 * i));
}

struct TypeEntry {
  GgmlType type;
  BlockLayout layout;
  QuantizeFn quantize;
  DequantizeFn dequantize;
};

// Sizes are sizeof(block_*) in ggml-common.h. (The gguf Python package's GGML_QUANT_SIZES
// still lists Q8_1 as 40 bytes, from before ggml made its d and s fields f16; ggml's own
// type_size is 36, which is what a GGUF tensor of that type occupies.)
constexpr std::array<TypeEntry, 15> kTypes{{
    {GgmlType::f32, {1, 4, "f32"}, quantize_f32, dequantize_f32},
    {GgmlType::f16, {1, 2, "f16"}, quantize_f16, dequantize_f16},
    {GgmlType::q4_0, {32, 18, "q4_0"}, detail::quantize_q4_0, detail::dequantize_q4_0},
    {GgmlType::q4_1, {32, 20, "q4_1"}, detail::quantize_q4_1, detail::dequantize_q4_1},
    {GgmlType::q5_0, {32, 22, "q5_0"}, detail::quantize_q5_0, detail::dequantize_q5_0},
    {GgmlType::q5_1, {32, 24, "q5_1"}, detail::quantize_q5_1, detail::dequantize_q5_1},
    {GgmlType::q8_0, {32, 34, "q8_0"}, detail::quantize_q8_0, detail::dequantize_q8_0},
    {GgmlType::q8_1, {32, 36, "q8_1"}, detail::quantize_q8_1, detail::dequantize_q8_1},
    {GgmlType::q2_K, {256, 84, "q2_K"}, detail::quantize_q2_K, detail::dequantize_q2_K},
    {GgmlType::q3_K, {256, 110, "q3_K"}, detail::quantize_q3_K, detail::dequantize_q3_K},
    {GgmlType::q4_K, {256, 144, "q4_K"}, detail::quantize_q4_K, detail::dequantize_q4_K},
    {GgmlType::q5_K, {256, 176, "q5_K"}, detail::quantize_q5_K, detail::dequantize_q5_K},
    {GgmlType::q6_K, {256, 210, "q6_K"}, detail::quantize_q6_K, detail::dequantize_q6_K},
    {GgmlType::q8_K, {256, 292, "q8_K"}, detail::quantize_q8_K, detail::dequantize_q8_K},
    {GgmlType::bf16, {1, 2, "bf16"}, quantize_bf16, dequantize_bf16},
}};

const TypeEntry* find_entry(GgmlType type) {
  for (const TypeEntry& e : kTypes)
    if (e.type == type) return &e;
  return nullptr;
}

/// The entry for `type` and the block count of a row of n values, or throws.
const TypeEntry& checked_entry(GgmlType type, int64_t n, const char* what) {
  const TypeEntry* e = find_entry(type);
  if (e == nullptr) {
    throw_error(ErrorCode::invalid_argument, fmt::format("{}: ggml type id {} is not supported",
                                                         what, static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % e->layout.block_elems != 0) {
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("{} {}: row length n = {} is not a non-negative multiple of the block size {}",
                    what, e->layout.name, n, e->layout.block_elems));
  }
  return *e;
}

}  // namespace

namespace detail {

void store_scale_f16(uint8_t* p, float v, GgmlType type, const char* field, int64_t block) {
  const uint16_t h = f32_to_f16(v);
  if ((h & 0x7fffu) == 0x7c00u) {
    const BlockLayout* layout = block_layout(type);
    throw_error(ErrorCode::invalid_argument,
                fmt::format("quantize {}: block {} (values {}..{}) needs {} = {}, which overflows "
                            "f16 (max 65504): the values are too large for this format",
                            layout->name, block, block * layout->block_elems,
                            (block + 1) * layout->block_elems - 1, field, v));
  }
  store_u16(p, h);
}

}  // namespace detail

const BlockLayout* block_layout(GgmlType type) {
  const TypeEntry* e = find_entry(type);
  return e != nullptr ? &e->layout : nullptr;
}

std::optional<GgmlType> parse_ggml_type(std::string_view text) {
  for (const TypeEntry& e : kTypes) {
    const std::string_view name = e.layout.name;
    if (name.size() != text.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(name[i])) ==
             std::tolower(static_cast<unsigned char>(text[i]));
    }
    if (same) return e.type;
  }
  return std::nullopt;
}

int64_t row_bytes(GgmlType type, int64_t n) {
  const TypeEntry& e = checked_entry(type, n, "row_bytes");
  return n / e.layout.block_elems * e.layout.block_bytes;
}

void quantize_row_reference(GgmlType type, const float* src, void* dst, int64_t n) {
  const TypeEntry& e = checked_entry(type, n, "quantize");
  if (n == 0) return;
  if (src == nullptr || dst == nullptr) {
    throw_error(ErrorCode::invalid_argument,
                fmt::format("quantize {}: null src or dst for n = {}", e.layout.name, n));
  }
  // ggml would quantize NaN/Inf into a block of garbage without a word; we name the first.
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(src[i])) {
      throw_error(
          ErrorCode::invalid_argument,
          fmt::format("quantize {}: non-finite value {} at index {}", e.layout.name, src[i], i));
    }
  }
  e.quantize(src, static_cast<uint8_t*>(dst), n / e.layout.block_elems);
}

void dequantize_row_reference(GgmlType type, const void* src, float* dst, int64_t n) {
  const TypeEntry& e = checked_entry(type, n, "dequantize");
  if (n == 0) return;
  if (src == nullptr || dst == nullptr) {
    throw_error(ErrorCode::invalid_argument,
                fmt::format("dequantize {}: null src or dst for n = {}", e.layout.name, n));
  }
  e.dequantize(static_cast<const uint8_t*>(src), dst, n / e.layout.block_elems);
}

}  // namespace lowbit::gguf
