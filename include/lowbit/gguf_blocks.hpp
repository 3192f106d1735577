// GGUF / ggml block-quantized tensor formats: layouts, and a scalar reference quantizer and
// dequantizer for each.
//
// A ggml quantized row is a sequence of fixed-size blocks; each block encodes `block_elems`
// consecutive floats in `block_bytes` bytes (struct layouts: ggml/src/ggml-common.h;
// docs/formats/gguf.md describes every field bit by bit). The functions here are the
// bit-exact reference the faster kernels are tested against:
//
//  * dequantize_row_reference gives, for any bytes, the floats ggml's dequantize_row_*
//    (and the gguf Python package's dequantize) give, bit for bit.
//  * quantize_row_reference gives the bytes ggml's quantize_row_*_ref gives (the quantizer
//    ggml_quantize_chunk uses without an importance matrix), byte for byte, for every input
//    ggml handles well. It departs from ggml in two places, both where ggml would write a
//    useless block without a word: it rejects NaN/Inf inputs, and it rejects a block whose
//    f16 scale or min would overflow to Inf (from |x| ~ 1e4 for q8_1 to ~3e8 for q6_K, by
//    format; docs/formats/gguf.md lists the limits).
//
// Byte order: every multi-byte field is little-endian, as in GGUF files.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit::gguf {

/// ggml's tensor type ids (enum ggml_type), as stored in a GGUF file's tensor infos.
/// Only the types lowbit implements are named; the ids are ggml's.
enum class GgmlType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q8_1 = 9,
  q2_K = 10,
  q3_K = 11,
  q4_K = 12,
  q5_K = 13,
  q6_K = 14,
  q8_K = 15,
  bf16 = 30,
};

/// How a type packs a row: `block_elems` values in `block_bytes` bytes (ggml's blck_size
/// and type_size). Plain types (f32, f16, bf16) are blocks of one element.
struct BlockLayout {
  int64_t block_elems;
  int64_t block_bytes;
  std::string_view name;  ///< ggml's spelling: "q4_0", "q4_K", "bf16"
};

/// The layout of `type`, or nullptr if lowbit does not know that id.
const BlockLayout* block_layout(GgmlType type);

/// Parses a type name, ignoring case: "q4_K", "Q4_K", "q4_k", "bf16"; nullopt if unknown.
std::optional<GgmlType> parse_ggml_type(std::string_view text);

/// Bytes that a row of `n` values of `type` occupies. Throws lowbit::Error
/// (invalid_argument) if the type is unknown, n is negative or n is not a multiple of the
/// type's block size (the message names n and the block size).
int64_t row_bytes(GgmlType type, int64_t n);

/// Quantizes `n` floats at `src` into row_bytes(type, n) bytes at `dst`, following ggml's
/// reference quantizer for the type (quantize_row_<type>_ref) operation for operation, so
/// the bytes match ggml's. f32 is copied; f16 and bf16 round to nearest even and reject a
/// value that would round to Inf.
///
/// Throws lowbit::Error(invalid_argument) if n is not a multiple of the block size, if any
/// value is NaN or +-Inf ("... non-finite value inf at index i", naming the first one), or
/// if a block's f16 scale or min would overflow to Inf (naming the block and the field).
/// Nothing is promised about `dst` after a throw.
void quantize_row_reference(GgmlType type, const float* src, void* dst, int64_t n);

/// Decodes `n` values from row_bytes(type, n) bytes at `src` into `dst`, following ggml's
/// dequantize_row_<type> operation for operation, so every float is bit-identical to
/// ggml's (and to the gguf package's). Any bytes are accepted: an f16 scale that holds
/// Inf or NaN decodes to Inf/NaN values, as in ggml. q8_1 (which ggml never dequantizes)
/// decodes as d * q, ignoring its sum field. Throws like row_bytes for a bad n.
void dequantize_row_reference(GgmlType type, const void* src, float* dst, int64_t n);

}  // namespace lowbit::gguf
