// QuantScheme: what a quantized tensor's codes and scales mean, with a text form.
//
//   int8                       int8, one symmetric f32 scale for the tensor
//   int8:channel               per channel along axis 0 (rows of a weight [N, K])
//   int8:channel:axis=1        per channel along another axis
//   int8:token                 per row (one scale per index of all but the last axis)
//   int4:block32:asym          groups of 32 along the last axis, scale + zero point each
//   uint8:tensor:scale=bf16    scale stored as bf16
//   fp8e4m3:token  fp8e5m2:channel  fp8e4m3:block128  fp8e4m3:block128x128
//   nvfp4  mxfp4  mxfp8e4m3  mxfp8e5m2
//   q8_0 q4_0 q4_1 q5_0 q5_1 q2_K q3_K q4_K q5_K q6_K q8_K   (GGUF blocks)
//
// docs/formats.md defines each format bit by bit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "lowbit/dtype.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

enum class QuantFormat : uint8_t {
  int8,
  uint8,
  int4,
  uint4,
  fp8e4m3,
  fp8e5m2,
  nvfp4,      ///< e2m1 codes, 16-element blocks, e4m3 block scales, f32 global scale
  mxfp4,      ///< OCP MX: e2m1 codes, 32-element blocks, e8m0 scales
  mxfp8e4m3,  ///< OCP MX: e4m3 codes, 32-element blocks, e8m0 scales
  mxfp8e5m2,  ///< OCP MX: e5m2 codes, 32-element blocks, e8m0 scales
  gguf,       ///< a GGUF block type (QuantScheme::gguf_type)
};

enum class Granularity : uint8_t {
  tensor,   ///< one scale
  channel,  ///< one scale per index of `axis`
  token,    ///< one scale per row: per index of all dims but the last
  block,    ///< one scale per `block` consecutive elements of the last axis
  block2d,  ///< one scale per block x block tile of the last two axes
};

struct QuantScheme {
  QuantFormat format = QuantFormat::int8;
  Granularity granularity = Granularity::tensor;
  int block = 0;          ///< group size (block) or tile edge (block2d); fixed by nvfp4/mx/gguf
  int axis = 0;           ///< channel axis (Granularity::channel); negative counts from the end
  bool symmetric = true;  ///< integer formats: no zero point (signed: restricted range)
  Dtype scale_dtype = Dtype::f32;  ///< integer formats: f32, f16 or bf16; others fixed
  uint32_t gguf_type = 0;          ///< ggml type id when format == gguf

  /// Parses the text form above; throws Error(invalid_argument) naming the bad part.
  static QuantScheme parse(std::string_view text);
  /// The canonical text form (parse(str()) == *this).
  std::string str() const;

  /// The dtype of the stored codes (i8, u8, i4, u4, f8e4m3fn, f8e5m2, f4e2m1; u8 for gguf).
  Dtype code_dtype() const;
  bool is_integer() const;
  /// Smallest and largest integer code (integer formats): symmetric signed formats use
  /// the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1].
  int qmin() const;
  int qmax() const;

  friend bool operator==(const QuantScheme&, const QuantScheme&) = default;
};

/// Shape of the scale (and zero-point) tensor for `scheme` applied to `shape`.
/// Throws Error(invalid_argument) if the shape does not fit the scheme (e.g. the last
/// axis is not a multiple of the block, an axis out of range, a 0-d tensor for a
/// per-token scheme).
Shape scale_shape(const QuantScheme& scheme, const Shape& shape);

}  // namespace lowbit
