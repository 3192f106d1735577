// The kernels of the matmul op; matmul_op.cpp lists them in order.
#pragma once

#include "lowbit/matmul.hpp"

namespace lowbit {

const MatmulKernel& matmul_reference_kernel();  // matmul_reference.cpp
#if LOWBIT_HAS_CUDA
const MatmulKernel& matmul_cuda_skinny_w8a8_kernel();  // matmul_cuda_skinny_w8a8.cu
const MatmulKernel& matmul_cuda_w8a8_wgmma_kernel();   // matmul_cuda_w8a8_wgmma.cu
const MatmulKernel& matmul_cuda_w8a8_kernel();         // matmul_cuda_w8a8.cu
const MatmulKernel& matmul_cuda_skinny_kernel();       // matmul_cuda_skinny.cu
const MatmulKernel& matmul_cuda_wgmma_kernel();        // matmul_cuda_wgmma.cu
const MatmulKernel& matmul_cuda_wgmma_ws_kernel();     // matmul_cuda_wgmma.cu
const MatmulKernel& matmul_cuda_wgmma_ws64_kernel();   // matmul_cuda_wgmma.cu
const MatmulKernel& matmul_cuda_wgmma_ws128_kernel();  // matmul_cuda_wgmma.cu
const MatmulKernel& matmul_cuda_medium_kernel();       // matmul_cuda_medium.cu
const MatmulKernel& matmul_cuda_dequant_tc_kernel();   // matmul_cuda_dequant.cu
const MatmulKernel& matmul_cuda_dequant_kernel();      // matmul_cuda_dequant.cu
#endif
const MatmulKernel& matmul_cpu_avx512_vnni_packed_kernel();  // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx512_vnni_kernel();         // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx512_kernel();              // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx2_int8_packed_kernel();    // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx2_int8_kernel();           // matmul_cpu_kernels.cpp
const MatmulKernel& matmul_cpu_avx2_kernel();                // matmul_cpu_kernels.cpp

}  // namespace lowbit
