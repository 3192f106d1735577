// matmul_cuda_medium_tc's instantiations for floating-point codes: fp8 e4m3 / e5m2 with f32
// scales per 128 k or more (channel, tensor, 1-D and 128x128 blocks), nvfp4, mxfp4
// (matmul_cuda_medium.cuh).
#include "ops/matmul/matmul_cuda_medium.cuh"

namespace lowbit::medium {

Launcher launcher_float(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.scale) {
    case Scale::f32:
      if (f.steps_log2 != 3) break;
      return f.code == Code::e4m3 ? pick<Code::e4m3, Scale::f32, 3, false>(bf16)
                                  : pick<Code::e5m2, Scale::f32, 3, false>(bf16);
    case Scale::e4m3:
      return pick<Code::fp4, Scale::e4m3, 0, false>(bf16);
    case Scale::e8m0:
      return pick<Code::fp4, Scale::e8m0, 1, false>(bf16);
    default:
      break;
  }
  if (why)
    *why = "fp8 groups of " + std::to_string(f.group) +
           " elements have no instantiation here (the dequantize path serves them)";
  return {};
}

}  // namespace lowbit::medium
