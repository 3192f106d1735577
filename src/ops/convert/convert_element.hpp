// One element of convert, on the host and on the device: load any float dtype as f32
// (or f64), store f32 as any float dtype. Kernels of every backend build on these, so
// their bits agree by construction; the tests check that anyway.
#pragma once

#include <cstdint>

#include "lowbit/dtype.hpp"
#include "lowbit/numeric.hpp"

namespace lowbit::convert_detail {

/// Element i of a contiguous-or-strided buffer, at element offset `i`, as f32.
/// f64 rounds to f32 (the documented double-rounding rule).
LOWBIT_HD float load_f32(const void* base, Dtype dtype, int64_t i) {
  switch (dtype) {
    case Dtype::f64:
      return f64_to_f32(static_cast<const double*>(base)[i]);
    case Dtype::f32:
      return static_cast<const float*>(base)[i];
    case Dtype::f16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case Dtype::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case Dtype::f8e4m3fn:
      return f8e4m3fn_to_f32(static_cast<const uint8_t*>(base)[i]);
    case Dtype::f8e5m2:
      return f8e5m2_to_f32(static_cast<const uint8_t*>(base)[i]);
    case Dtype::e8m0:
      return e8m0_to_f32(static_cast<const uint8_t*>(base)[i]);
    case Dtype::f4e2m1: {
      const uint8_t byte = static_cast<const uint8_t*>(base)[i >> 1];
      return f4e2m1_to_f32((i & 1) ? static_cast<uint8_t>(byte >> 4)
                                   : static_cast<uint8_t>(byte & 0xf));
    }
    default:
      return 0.0f;  // non-float dtypes are refused by ConvertOp::validate
  }
}

/// Encodes f32 `v` as a code of `dtype` (not f64; f4e2m1 in the low nibble).
LOWBIT_HD uint32_t encode_f32(float v, Dtype dtype, Saturation sat) {
  switch (dtype) {
    case Dtype::f16:
      return f32_to_f16(v, sat);
    case Dtype::bf16:
      return f32_to_bf16(v, sat);
    case Dtype::f8e4m3fn:
      return f32_to_f8e4m3fn(v, sat);
    case Dtype::f8e5m2:
      return f32_to_f8e5m2(v, sat);
    case Dtype::e8m0:
      return f32_to_e8m0(v, sat);
    case Dtype::f4e2m1:
      return f32_to_f4e2m1(v);
    default:
      return 0u;
  }
}

/// Stores f32 `v` into element i of a non-packed destination of `dtype`.
LOWBIT_HD void store_f32(void* base, Dtype dtype, int64_t i, float v, Saturation sat) {
  switch (dtype) {
    case Dtype::f64:
      static_cast<double*>(base)[i] = f32_to_f64(v);
      return;
    case Dtype::f32:
      static_cast<float*>(base)[i] = v;
      return;
    case Dtype::f16:
    case Dtype::bf16:
      static_cast<uint16_t*>(base)[i] = static_cast<uint16_t>(encode_f32(v, dtype, sat));
      return;
    default:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(encode_f32(v, dtype, sat));
      return;
  }
}

}  // namespace lowbit::convert_detail
