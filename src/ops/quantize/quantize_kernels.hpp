// The kernels of the quantize and dequantize ops; quantize_op.cpp lists them in order.
#pragma once

#include "lowbit/quantize.hpp"

namespace lowbit {

const Kernel<QuantizeOp>& quantize_reference_kernel();      // quantize_reference.cpp
const Kernel<DequantizeOp>& dequantize_reference_kernel();  // dequantize_reference.cpp

}  // namespace lowbit
