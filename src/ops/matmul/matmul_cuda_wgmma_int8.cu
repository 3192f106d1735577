// matmul_cuda_wgmma_ws128_tc's instantiations for 8-bit codes with one scale per row (channel
// or tensor): int8 / uint8 (symmetric) and fp8 e4m3 / e5m2 (matmul_cuda_wgmma_ws.cuh). The
// codes are exact in bf16 and f16 and the row's scale multiplies the f32 sums once, so these
// need no per-group arithmetic in the loop. Groups along K, zero points and GGUF q8_0 / q6_K
// have no instantiation: the dequantize path serves them.
#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"

namespace lowbit::wgmma {

Launcher launcher_int8(const tc::Format& f, int64_t k, bool bf16, std::string* why) {
  const bool row_scale = f.group >= k && !f.zero && f.steps_log2 == 3;
  if (row_scale && f.scale == Scale::integer) return pick<Code::i8, Scale::integer, 3, false>(bf16);
  if (row_scale && f.scale == Scale::f32)
    return f.code == Code::e4m3 ? pick<Code::e4m3, Scale::f32, 3, false>(bf16)
                                : pick<Code::e5m2, Scale::f32, 3, false>(bf16);
  if (why)
    *why = "8-bit codes with " +
           std::string(f.zero                   ? "zero points"
                       : f.scale == Scale::f16d ? "q8_0's f16 scales per 32"
                       : f.scale == Scale::q6k  ? "q6_K's scales"
                                               : "scales per group of " + std::to_string(f.group)) +
           " have no instantiation here (only one scale per row: the dequantize path serves "
           "them)";
  return {};
}

}  // namespace lowbit::wgmma
