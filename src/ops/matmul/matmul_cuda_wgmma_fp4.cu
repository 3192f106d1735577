// matmul_cuda_wgmma_tc's instantiations for e2m1 codes: nvfp4 (e4m3 scales per 16, f32
// global scale) and mxfp4 (e8m0 scales per 32) (matmul_cuda_wgmma.cuh).
#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"

namespace lowbit::wgmma {

Launcher launcher_fp4(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.scale) {
    case Scale::e4m3:
      return pick<Code::fp4, Scale::e4m3, 0, false>(bf16);
    case Scale::e8m0:
      return pick<Code::fp4, Scale::e8m0, 1, false>(bf16);
    default:
      break;
  }
  if (why) *why = "this e2m1 scale has no instantiation here";
  return {};
}

}  // namespace lowbit::wgmma
