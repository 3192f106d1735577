#include "lowbit/quantized.hpp"

#include <fmt/format.h>

#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"

namespace lowbit {

Shape code_shape(const QuantScheme& scheme, const Shape& shape) {
  if (scheme.format != QuantFormat::gguf) {
    scale_shape(scheme, shape);  // validates the shape against the scheme
    return shape;
  }
  if (shape.size() < 1)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("scheme {} needs a tensor of at least 1 dim", scheme.str()));
  int64_t rows = 1;
  for (int i = 0; i < shape.size() - 1; ++i) rows *= shape[i];
  const int64_t k = shape[shape.size() - 1];
  return Shape{rows, gguf::row_bytes(static_cast<gguf::GgmlType>(scheme.gguf_type), k)};
}

QuantizedTensor QuantizedTensor::allocate(const QuantScheme& scheme, const Shape& shape,
                                          Device device) {
  numel(shape);  // negative extents and overflow
  QuantizedTensor q;
  q.scheme = scheme;
  q.shape = shape;
  const Shape cs = code_shape(scheme, shape);
  q.codes = Tensor::empty(cs, scheme.format == QuantFormat::gguf ? Dtype::u8 : scheme.code_dtype(),
                          device);
  if (scheme.format == QuantFormat::gguf) return q;
  const Shape ss = scale_shape(scheme, shape);
  Dtype scale_dtype = Dtype::f32;
  if (scheme.is_integer()) scale_dtype = scheme.scale_dtype;
  if (scheme.format == QuantFormat::nvfp4) scale_dtype = Dtype::f8e4m3fn;
  if (scheme.format == QuantFormat::mxfp4 || scheme.format == QuantFormat::mxfp8e4m3 ||
      scheme.format == QuantFormat::mxfp8e5m2)
    scale_dtype = Dtype::e8m0;
  q.scale = Tensor::empty(ss, scale_dtype, device);
  if (scheme.is_integer() && !scheme.symmetric) q.zero = Tensor::empty(ss, Dtype::i32, device);
  if (scheme.format == QuantFormat::nvfp4) q.global_scale = Tensor::empty({1}, Dtype::f32, device);
  return q;
}

QuantizedView QuantizedTensor::view() const {
  return {scheme, shape, codes.view(), scale.view(), zero.view(), global_scale.view()};
}

int64_t QuantizedTensor::nbytes() const {
  return codes.nbytes() + scale.nbytes() + zero.nbytes() + global_scale.nbytes();
}

}  // namespace lowbit
