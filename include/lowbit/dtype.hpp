// Dtype: the runtime tag of a tensor's element type, and its one traits table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit {

enum class Dtype : uint8_t {
  f64,
  f32,
  f16,
  bf16,
  i32,
  u32,
  i16,
  i8,
  u8,
  i4,        ///< packed two per byte, element 2k in the low nibble of byte k
  u4,        ///< packed like i4
  f8e4m3fn,  ///< OCP FP8 E4M3 (no Inf, one NaN per sign)
  f8e5m2,    ///< OCP FP8 E5M2 (IEEE-like)
  f4e2m1,    ///< OCP MX FP4, packed like i4
  e8m0,      ///< OCP MX scale: unsigned power of two 2^(c - 127), 0xff is NaN
};

inline constexpr int kDtypeCount = 15;

struct DtypeTraits {
  Dtype dtype;
  std::string_view name;   ///< canonical text form, e.g. "bf16", "f8e4m3fn"
  std::string_view alias;  ///< a second accepted spelling ("" if none), e.g. "f8e4m3"
  uint8_t bits;            ///< bits per element
  bool is_signed;
  bool is_float;
  uint8_t per_byte;  ///< elements per byte: 2 for packed 4-bit types, else 1
};

// One row per Dtype, in enum order (checked below).
inline constexpr std::array<DtypeTraits, kDtypeCount> kDtypeTraits{{
    {Dtype::f64, "f64", "float64", 64, true, true, 1},
    {Dtype::f32, "f32", "float32", 32, true, true, 1},
    {Dtype::f16, "f16", "float16", 16, true, true, 1},
    {Dtype::bf16, "bf16", "bfloat16", 16, true, true, 1},
    {Dtype::i32, "i32", "int32", 32, true, false, 1},
    {Dtype::u32, "u32", "uint32", 32, false, false, 1},
    {Dtype::i16, "i16", "int16", 16, true, false, 1},
    {Dtype::i8, "i8", "int8", 8, true, false, 1},
    {Dtype::u8, "u8", "uint8", 8, false, false, 1},
    {Dtype::i4, "i4", "int4", 4, true, false, 2},
    {Dtype::u4, "u4", "uint4", 4, false, false, 2},
    {Dtype::f8e4m3fn, "f8e4m3fn", "f8e4m3", 8, true, true, 1},
    {Dtype::f8e5m2, "f8e5m2", "", 8, true, true, 1},
    {Dtype::f4e2m1, "f4e2m1", "fp4", 4, true, true, 2},
    {Dtype::e8m0, "e8m0", "f8e8m0fnu", 8, false, true, 1},
}};

constexpr bool dtype_table_in_enum_order() {
  for (int i = 0; i < kDtypeCount; ++i)
    if (static_cast<int>(kDtypeTraits[i].dtype) != i) return false;
  return true;
}
static_assert(dtype_table_in_enum_order(), "kDtypeTraits rows must follow the Dtype enum");

constexpr const DtypeTraits& traits(Dtype d) { return kDtypeTraits[static_cast<size_t>(d)]; }
constexpr std::string_view dtype_name(Dtype d) { return traits(d).name; }
constexpr bool is_float(Dtype d) { return traits(d).is_float; }
constexpr bool is_packed(Dtype d) { return traits(d).per_byte > 1; }
constexpr int bit_width(Dtype d) { return traits(d).bits; }

/// Bytes that `numel` contiguous elements of `d` occupy (packed types round up).
constexpr int64_t storage_bytes(Dtype d, int64_t numel) {
  return traits(d).per_byte > 1 ? (numel + 1) / 2 : numel * (traits(d).bits / 8);
}

/// Parses a dtype's name or alias ("bf16", "bfloat16", "f8e4m3"); nullopt if unknown.
std::optional<Dtype> try_parse_dtype(std::string_view text);
/// Parses like try_parse_dtype; throws Error(invalid_argument) naming the text and the
/// accepted names if unknown.
Dtype parse_dtype(std::string_view text);

}  // namespace lowbit
