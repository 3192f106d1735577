// matmul_cuda_wgmma_ws128_tc's instantiations for integer 8-bit codes in groups along K: int8
// / uint8 in blocks of 32, 64 or 128 and more (symmetric and affine; uint8 is always affine),
// and GGUF q8_0 (f16 scale per 32) (matmul_cuda_wgmma_ws.cuh). Each operand is dequantize()'s
// value rounded to x's dtype (wgmma::decode8).
#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"

namespace lowbit::wgmma {

Launcher launcher_int8_groups(const tc::Format& f, bool bf16, std::string* why) {
  if (f.scale == Scale::f16d) return pick<Code::i8, Scale::f16d, 1, false>(bf16);
  switch (f.steps_log2) {
    case 1:
      return f.zero ? pick<Code::i8, Scale::integer, 1, true>(bf16)
                    : pick<Code::i8, Scale::integer, 1, false>(bf16);
    case 2:
      return f.zero ? pick<Code::i8, Scale::integer, 2, true>(bf16)
                    : pick<Code::i8, Scale::integer, 2, false>(bf16);
    case 3:
      return f.zero ? pick<Code::i8, Scale::integer, 3, true>(bf16)
                    : pick<Code::i8, Scale::integer, 3, false>(bf16);
    default:
      break;
  }
  if (why)
    *why = "8-bit groups of " + std::to_string(f.group) +
           " elements have no instantiation here (the dequantize path serves them)";
  return {};
}

}  // namespace lowbit::wgmma
