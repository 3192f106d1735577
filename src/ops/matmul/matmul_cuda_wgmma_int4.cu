// matmul_cuda_wgmma_tc's instantiations for 4-bit integer codes: int4 / uint4 with groups of
// 32, 64, 128 or more (channel), symmetric and affine, and GGUF q4_0 (matmul_cuda_wgmma.cuh).
#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"

namespace lowbit::wgmma {

Launcher launcher_int4(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.scale) {
    case Scale::integer: {
      const int sl = f.steps_log2;
      if (sl == 0) break;
      if (f.zero)
        return sl == 1   ? pick<Code::u4, Scale::integer, 1, true>(bf16)
               : sl == 2 ? pick<Code::u4, Scale::integer, 2, true>(bf16)
                         : pick<Code::u4, Scale::integer, 3, true>(bf16);
      return sl == 1   ? pick<Code::u4, Scale::integer, 1, false>(bf16)
             : sl == 2 ? pick<Code::u4, Scale::integer, 2, false>(bf16)
                       : pick<Code::u4, Scale::integer, 3, false>(bf16);
    }
    case Scale::f16d:
      return pick<Code::u4, Scale::f16d, 1, false>(bf16);
    default:
      break;
  }
  if (why)
    *why = f.scale == Scale::integer
               ? "4-bit groups of " + std::to_string(f.group) +
                     " elements have no instantiation here (the dequantize path serves them)"
               : std::string("q4_K has no instantiation here (the dequantize path serves it)");
  return {};
}

}  // namespace lowbit::wgmma
