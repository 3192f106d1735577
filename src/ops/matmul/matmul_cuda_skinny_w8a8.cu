// matmul_cuda_skinny_w8a8: fp8 W8A8 (x per token or per tensor, W per channel or per tensor, e4m3
// / e5m2) for a few rows of x (M <= 8) on the skinny GEMV kernel (matmul_cuda_skinny.cuh) over
// the prepared "cuda_tc16x128" weight layout. cuBLASLt's fp8 GEMM (matmul_cuda_w8a8_lt) reads the
// same 1-byte W but is built for tiles of many rows: at M = 1 it took 0.036-0.040 ms on the H100
// where the skinny kernel reads an fp8 W in 0.030-0.033 (BENCHMARKS.md).
//
// Numbers: every fp8 value (e4m3 and e5m2 alike) is exact in f16, so x's codes are widened to
// f16 once (a [M, K] copy in the workspace), W's codes are decoded to f16 in registers as in
// the weight-only plan, and the tensor cores multiply the codes exactly and sum in f32. W's
// scale is applied to the f32 sums (per channel: once per row), then x's (per row of x), then
// the bias, one rounding to y: the product cuBLASLt computes with its scales, summed in
// another order. A float x (x_scheme set, x float) is quantized first by the quantize op's
// CUDA kernel, as matmul_cuda_w8a8_lt does.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_skinny.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

using tc::Code;
using tc::Scale;

/// M = 1: 0.032-0.035 ms against cuBLASLt's 0.036-0.040; M = 16: 0.037-0.040 against
/// 0.036-0.040 (per tensor: 0.033-0.036), so the 16-row instantiation is left to cuBLASLt.
constexpr int64_t kMaxM = 8;
constexpr int kThreads = 256;

using mm_cuda::is_fp8;

/// fp8 codes [rows][k] (contiguous) -> f16 bit patterns, exact; 8 codes per thread and step
/// (k is a multiple of 128, so rows hold whole groups of 8).
template <bool kE5M2>
__global__ void __launch_bounds__(kThreads)
    fp8_to_f16_kernel(const uint8_t* codes, uint4* out, uint64_t groups, bool aligned8) {
  const uint64_t step = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < groups;
       i += step) {
    uint2 v;
    if (aligned8) {
      v = reinterpret_cast<const uint2*>(codes)[i];
    } else {
      const uint8_t* c = codes + 8 * i;
      v.x = c[0] | (c[1] << 8) | (c[2] << 16) | (static_cast<uint32_t>(c[3]) << 24);
      v.y = c[4] | (c[5] << 8) | (c[6] << 16) | (static_cast<uint32_t>(c[7]) << 24);
    }
    uint32_t h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const auto pair = static_cast<unsigned short>(((j < 2 ? v.x : v.y) >> (16 * (j & 1))));
      if constexpr (kE5M2) {
        asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(h[j]) : "h"(pair));
      } else {
        asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h[j]) : "h"(pair));
      }
    }
    out[i] = make_uint4(h[0], h[1], h[2], h[3]);
  }
}

class MatmulCudaSkinnyW8A8 final : public mm_cuda::TcLayoutKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_skinny_w8a8"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(
        d, reinterpret_cast<const void*>(
               &skinny::skinny_kernel<Code::u4, Scale::integer, 1, true, 1, false, 1, false>));
    if (!why.empty()) return why;
    if (!d.x_scheme) return "W8A8 only (x_scheme is not set)";
    const QuantScheme& xs = *d.x_scheme;
    if (!is_fp8(xs.format) || !is_fp8(d.w.format))
      return "fp8 x with fp8 W only (int8 W8A8 promises exact i32 sums: matmul_cuda_w8a8_lt)";
    if (xs.granularity != Granularity::token && xs.granularity != Granularity::tensor)
      return "x " + xs.str() + ": per-token or per-tensor x only";
    if (d.w.granularity != Granularity::channel && d.w.granularity != Granularity::tensor)
      return "W " + d.w.str() +
             ": per-channel or per-tensor W only (block-scaled fp8 is matmul_cuda_w8a8_lt's)";
    if (d.y == Dtype::f32)
      return "f32 y: the dequantize path serves it (as for matmul_cuda_w8a8_lt)";
    if (d.m > kMaxM)
      return "M = " + std::to_string(d.m) + " > " + std::to_string(kMaxM) +
             " (a GEMV kernel; cuBLASLt's fp8 GEMM is as fast from 16 rows)";
    const auto f = tc::format_of(d.w, d.n, d.k, &why);
    if (!f) return why;
    if (!skinny::launcher_for(*f, false, 1, &why)) return why;
    return {};
  }

  KernelSku sku(const MatmulDesc& d) const override {
    return mm_cuda::cuda_sku(d, mm_cuda::w8a8_dtypes(d), name());
  }

  PrecisionGuarantee precision(const MatmulDesc&) const override {
    return {
        "fp8 codes of x and W, exact in f16, multiplied on tensor cores (mma.sync) with f32 sums; "
        "W's scale, then x's applied in f32 (+ bias), one rounding to y; the k-slices of up to "
        "16 warps added in a fixed order",
        Dtype::f32, true, false};
  }

  std::size_t workspace_size(const MatmulDesc& d) const override {
    return mm_cuda::align_up(mm_cuda::x_quant_bytes(d), 256) + static_cast<size_t>(d.m * d.k) * 2;
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace workspace) const override {
    if (d.m == 0 || d.n == 0) return;
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    require_prepared(a, tp);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    auto* ws = static_cast<uint8_t*>(workspace.data);
    const QuantizedView xq = mm_cuda::activations(d, a, ws, stream);
    if (xq.scale.dtype() != Dtype::f32)
      throw_error(ErrorCode::invalid_argument, "matmul: " + std::string(name()) +
                                                   " takes f32 x scales (got " +
                                                   std::string(dtype_name(xq.scale.dtype())) + ")");
    // x's codes as f16, k-contiguous rows.
    auto* xh = ws + mm_cuda::align_up(mm_cuda::x_quant_bytes(d), 256);
    const uint64_t groups = static_cast<uint64_t>(d.m * d.k) / 8;
    const unsigned grid = quant_cuda::grid_of(groups, kThreads, 1024);
    const auto* codes = static_cast<const uint8_t*>(xq.codes.data());
    const bool aligned8 = quant_cuda::aligned(codes, 8);
    if (xq.scheme.format == QuantFormat::fp8e5m2)
      fp8_to_f16_kernel<true>
          <<<grid, kThreads, 0, s>>>(codes, reinterpret_cast<uint4*>(xh), groups, aligned8);
    else
      fp8_to_f16_kernel<false>
          <<<grid, kThreads, 0, s>>>(codes, reinterpret_cast<uint4*>(xh), groups, aligned8);
    mm_cuda::check_launch("fp8_to_f16_kernel");

    skinny::Args sa = skinny::plan_args(d, a, tp);
    sa.x = xh;
    sa.x_stride = d.k;
    sa.x_scale = xq.scale.data_as<const float>();
    sa.x_scale_row = xq.scheme.granularity == Granularity::token;
    skinny::launch_plan(sa, d, tp, false, s);  // f16 x; M <= 8: the 8-row instantiation
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_skinny_w8a8_kernel() {
  static const MatmulCudaSkinnyW8A8 kernel;
  return kernel;
}

}  // namespace lowbit
