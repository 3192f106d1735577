// The kernels of the quantize and dequantize ops; quantize_op.cpp lists them in order.
#pragma once

#include "lowbit/quantize.hpp"

namespace lowbit {

const Kernel<QuantizeOp>& quantize_reference_kernel();      // quantize_reference.cpp
const Kernel<DequantizeOp>& dequantize_reference_kernel();  // dequantize_reference.cpp
const Kernel<QuantizeOp>& quantize_simd_kernel();           // quantize_simd.cpp
const Kernel<DequantizeOp>& dequantize_simd_kernel();       // dequantize_simd.cpp
const Kernel<QuantizeOp>& gguf_quantize_simd_kernel();      // gguf_quantize_simd.cpp
const Kernel<DequantizeOp>& gguf_dequantize_simd_kernel();  // gguf_dequantize_simd.cpp
#if LOWBIT_HAS_CUDA
const Kernel<QuantizeOp>& quantize_cuda_kernel();           // quantize_cuda.cu
const Kernel<DequantizeOp>& dequantize_cuda_kernel();       // dequantize_cuda.cu
const Kernel<QuantizeOp>& gguf_quantize_cuda_kernel();      // gguf_quantize_cuda.cu
const Kernel<DequantizeOp>& gguf_dequantize_cuda_kernel();  // gguf_dequantize_cuda.cu
#endif

}  // namespace lowbit
