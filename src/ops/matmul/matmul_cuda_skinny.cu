// matmul_cuda_skinny_tc: weight-only y = x · dequant(W)^T for a few rows of x (M <= 32: kMaxM),
// bf16 / f16 activations, on tensor cores (mma.sync.m16n8k16) over the prepared
// "cuda_tc16x128" weight layout (matmul_cuda_layout.cuh). This file is the plan: what the
// kernel takes, why it declines, the launch; the kernel is matmul_cuda_skinny.cuh (its file
// comment has the shape of the work and the arithmetic), instantiated by
// matmul_cuda_skinny_{int4,int8,float}.cu.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_skinny.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {

skinny::Launcher skinny::launcher_for(const tc::Format& f, bool bf16, int nt, std::string* why) {
  switch (f.code) {
    case Code::u4:
      return launcher_int4(f, bf16, nt, why);
    case Code::i8:
      return launcher_int8(f, bf16, nt, why);
    default:
      return launcher_float(f, bf16, nt, why);
  }
}

skinny::Args skinny::plan_args(const MatmulDesc& d, const MatmulArgs& a,
                               const mm_cuda::TcPlan& tp) {
  Args sa;
  sa.w = mm_cuda::tc_weights(tp.format, tp.layout, a.w_packed.data());
  sa.y = a.y.data();
  sa.y_stride = d.y_stride();
  sa.y_dtype = d.y;
  sa.bias = d.bias ? a.bias.data() : nullptr;
  sa.m = static_cast<int>(d.m);
  sa.n = d.n;
  return sa;
}

void skinny::launch_plan(const Args& sa, const MatmulDesc& d, const mm_cuda::TcPlan& tp, bool bf16,
                         cudaStream_t stream) {
  const Launcher l = launcher_for(tp.format, bf16, d.m > 8 ? 2 : 1, nullptr);
  l(sa, tp.layout.tiles, mm_cuda::sm_count(d.device.index), stream);
}

namespace {

using skinny::kMaxM;
using skinny::Launcher;
using skinny::launcher_for;
using tc::Code;
using tc::Scale;

class MatmulCudaSkinny final : public mm_cuda::TcWeightOnlyKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_skinny_tc"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = weight_only_decline(
        d, reinterpret_cast<const void*>(
               &skinny::skinny_kernel<Code::u4, Scale::integer, 1, true, 1, false, 1, false>));
    if (!why.empty()) return why;
    if (d.m > kMaxM)
      return "M = " + std::to_string(d.m) + " > " + std::to_string(kMaxM) +
             " (a GEMV kernel: each 16 rows of x re-read W from L2; larger M goes to a GEMM)";
    const auto f = tc::format_of(d.w, d.n, d.k, &why);
    if (!f) return why;
    if (!launcher_for(*f, true, 1, &why)) return why;
    return {};
  }

  PrecisionGuarantee precision(const MatmulDesc&) const override {
    return {
        "exact codes times x on tensor cores (mma.sync bf16/f16), f32 sums per scale group, "
        "group scale (and zero-point term) applied in f32; the k-slices of up to 16 warps added "
        "in a fixed order",
        Dtype::f32, true, false};
  }

  /// Room for a copy of x when it is not 8-byte aligned (used only then).
  std::size_t workspace_size(const MatmulDesc& d) const override {
    return static_cast<std::size_t>(d.m * d.k * 2);
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    require_prepared(a, tp);
    mm_cuda::DeviceScope scope(d.device.index);
    skinny::Args sa = skinny::plan_args(d, a, tp);
    sa.x = static_cast<const uint8_t*>(a.x.data());
    sa.x_stride = d.x_stride();
    if (!quant_cuda::aligned(a.x.data(), 16) || sa.x_stride % 8 != 0) {
      // The kernel reads x 16 bytes at a time (8 where it does not stage x): rows that do not
      // start 16 bytes apart and aligned are copied into the workspace.
      mm_cuda::check_cuda(
          cudaMemcpy2DAsync(ws.data, static_cast<size_t>(d.k) * 2, a.x.data(),
                            static_cast<size_t>(sa.x_stride) * 2, static_cast<size_t>(d.k) * 2,
                            static_cast<size_t>(d.m), cudaMemcpyDeviceToDevice,
                            static_cast<cudaStream_t>(stream.native_handle())),
          "matmul: copying x");
      sa.x = static_cast<const uint8_t*>(ws.data);
      sa.x_stride = d.k;
    }
    skinny::launch_plan(sa, d, tp, d.x == Dtype::bf16,
                        static_cast<cudaStream_t>(stream.native_handle()));
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_skinny_kernel() {
  static const MatmulCudaSkinny kernel;
  return kernel;
}

}  // namespace lowbit
