// matmul_cuda_wgmma_ws128_tc's instantiations for 8-bit codes with one scale per row (channel
// or tensor: int8 symmetric, fp8 e4m3 / e5m2) and for fp8 in blocks of 128 along K (1-D
// blocks and 128x128 tiles) (matmul_cuda_wgmma_ws.cuh). Row scales: the codes are exact in
// bf16 and f16 and the row's scale multiplies the f32 sums once, so the loop has no per-group
// arithmetic. Integer codes in groups and q8_0 are in matmul_cuda_wgmma_int8_groups.cu (the two
// files compile in parallel).
#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"

namespace lowbit::wgmma {

Launcher launcher_int8(const tc::Format& f, int64_t k, bool bf16, std::string* why) {
  const bool row_scale = row_scaled(f, k);
  if (f.scale == Scale::integer || f.scale == Scale::f16d) {
    if (row_scale && f.scale == Scale::integer)
      return pick<Code::i8, Scale::integer, kRowSteps, false>(bf16);
    return launcher_int8_groups(f, bf16, why);
  }
  if (f.scale == Scale::f32) {
    if (row_scale)
      return f.code == Code::e4m3 ? pick<Code::e4m3, Scale::f32, kRowSteps, false>(bf16)
                                  : pick<Code::e5m2, Scale::f32, kRowSteps, false>(bf16);
    if (f.steps_log2 == 3)
      return f.code == Code::e4m3 ? pick<Code::e4m3, Scale::f32, 3, false>(bf16)
                                  : pick<Code::e5m2, Scale::f32, 3, false>(bf16);
    if (why)
      *why = "fp8 in blocks of " + std::to_string(f.group) +
             " along K has no instantiation here (blocks of 128 or more do: the dequantize path "
             "serves it)";
    return {};
  }
  if (why) *why = "q6_K has no instantiation here (the dequantize path serves it)";
  return {};
}

}  // namespace lowbit::wgmma
