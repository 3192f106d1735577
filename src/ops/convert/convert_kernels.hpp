// The kernels of the convert op, one per file; convert_op.cpp lists them in order.
#pragma once

#include "lowbit/convert.hpp"

namespace lowbit {

const Kernel<ConvertOp>& convert_reference_kernel();  // convert_reference.cpp
const Kernel<ConvertOp>& convert_simd_kernel();       // convert_simd.cpp
#if LOWBIT_HAS_CUDA
const Kernel<ConvertOp>& convert_cuda_kernel();  // convert_cuda.cu
#endif

}  // namespace lowbit
