// matmul_cuda_medium_tc's instantiations for 4-bit integer codes: int4 / uint4 (groups of 32,
// 64, 128 or more; symmetric and affine), GGUF q4_0 and q4_K (matmul_cuda_medium.cuh).
#include "ops/matmul/matmul_cuda_medium.cuh"

namespace lowbit::medium {

Launcher launcher_int4(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.scale) {
    case Scale::integer:
      if (f.steps_log2 == 0) break;
      return pick_integer<Code::u4>(f, bf16);
    case Scale::f16d:
      return pick<Code::u4, Scale::f16d, 1, false>(bf16);
    case Scale::q4k:
      return pick<Code::u4, Scale::q4k, 1, true>(bf16);
    default:
      break;
  }
  if (why)
    *why = "4-bit groups of " + std::to_string(f.group) +
           " elements have no instantiation here (the dequantize path serves them)";
  return {};
}

}  // namespace lowbit::medium
