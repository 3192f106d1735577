// The kernels of fake_quantize and its backward (fake_quantize_op.cpp lists them in order),
// and the error texts every kernel throws (defined in fake_quantize_op.cpp, so that the CUDA
// kernel's host code throws the reference's exact messages).
#pragma once

#include <cstdint>
#include <string_view>

#include "lowbit/fake_quantize.hpp"

namespace lowbit {

const Kernel<FakeQuantizeOp>& fake_quantize_reference_kernel();  // fake_quantize_reference.cpp
const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_reference_kernel();
const Kernel<FakeQuantizeOp>& fake_quantize_simd_kernel();  // fake_quantize_simd.cpp
const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_simd_kernel();
#if LOWBIT_HAS_CUDA
const Kernel<FakeQuantizeOp>& fake_quantize_cuda_kernel();  // fake_quantize_cuda.cu
const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_cuda_kernel();
#endif

namespace fq {

/// "<op>: <which> element [i, j] (flat index N) is NaN; ..." (value: the element, as f32).
[[noreturn]] void throw_non_finite(std::string_view op, std::string_view which, const Shape& shape,
                                   int64_t flat, float value);
/// "<op>: given scale S of group G must be finite and >= 0, ..." (quantize's text).
[[noreturn]] void throw_bad_scale(std::string_view op, float scale, int64_t group);
/// "<op>: given zero point Z of group G is outside [qmin, qmax]".
[[noreturn]] void throw_bad_zero(std::string_view op, int32_t zero, int64_t group, int qmin,
                                 int qmax);

/// The largest group of `scheme` on `shape` (elements), for the exact sums' 2^31 limit.
int64_t largest_group(const QuantScheme& scheme, const Shape& shape);

}  // namespace fq
}  // namespace lowbit
