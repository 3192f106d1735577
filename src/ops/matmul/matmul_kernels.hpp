// The kernels of the matmul op; matmul_op.cpp lists them in order.
#pragma once

#include "lowbit/matmul.hpp"

namespace lowbit {

const MatmulKernel& matmul_reference_kernel();  // matmul_reference.cpp
#if LOWBIT_HAS_CUDA
#endif
const MatmulKernel& matmul_cpu_avx512_vnni_packed_kernel();  // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx512_vnni_kernel();         // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx512_kernel();              // matmul_cpu_kernels.cpp

}  // namespace lowbit
