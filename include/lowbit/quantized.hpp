// QuantizedTensor: packed codes plus scales (+ zero points, + global scale) plus scheme
// plus the logical shape; and the quantize / dequantize one-liners.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

/// Non-owning views of a quantized tensor's parts.
struct QuantizedView {
  QuantScheme scheme;
  Shape shape;              ///< the logical (dequantized) shape
  TensorView codes;         ///< scheme.code_dtype(), contiguous; GGUF: u8 [rows, row bytes]
  TensorView scale;         ///< scale_shape(scheme, shape); empty for GGUF (scales in the blocks)
  TensorView zero;          ///< i32, like scale; empty unless an affine integer scheme
  TensorView global_scale;  ///< f32 [1]; NVFP4 only
  Device device() const { return codes.device(); }
};

/// An owning quantized tensor.
struct QuantizedTensor {
  QuantScheme scheme;
  Shape shape;
  Tensor codes;
  Tensor scale;
  Tensor zero;
  Tensor global_scale;

  /// Allocates the parts for `scheme` applied to `shape` on `device` (contents undefined).
  /// Throws Error(invalid_argument) if the shape does not fit the scheme.
  static QuantizedTensor allocate(const QuantScheme& scheme, const Shape& shape,
                                  Device device = Device::cpu());
  QuantizedView view() const;
  Device device() const { return codes.device(); }
  /// Bytes of all parts together.
  int64_t nbytes() const;
};

/// Shape of the code tensor for `scheme` applied to `shape` (GGUF: [rows, row bytes]).
Shape code_shape(const QuantScheme& scheme, const Shape& shape);

}  // namespace lowbit
