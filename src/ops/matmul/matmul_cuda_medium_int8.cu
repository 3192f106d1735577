// matmul_cuda_medium_tc's instantiations for 8-bit integer codes: int8 / uint8 (groups of 32,
// 64, 128 or more; symmetric and affine), GGUF q8_0 and q6_K (matmul_cuda_medium.cuh).
#include "ops/matmul/matmul_cuda_medium.cuh"

namespace lowbit::medium {

Launcher launcher_int8(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.scale) {
    case Scale::integer:
      if (f.steps_log2 == 0) break;
      return pick_integer<Code::i8>(f, bf16);
    case Scale::f16d:
      return pick<Code::i8, Scale::f16d, 1, false>(bf16);
    case Scale::q6k:
      return pick<Code::i8, Scale::q6k, 0, false>(bf16);
    default:
      break;
  }
  if (why)
    *why = "8-bit groups of " + std::to_string(f.group) +
           " elements have no instantiation here (the dequantize path serves them)";
  return {};
}

}  // namespace lowbit::medium
