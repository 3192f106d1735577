// matmul_cuda_medium_tc: weight-only y = x · dequant(W)^T for tens to hundreds of rows of bf16 /
// f16 x (select() sends it 32 < M <= kMaxM = 128), on tensor cores (mma.sync.m16n8k16) over the
// prepared "cuda_tc16x128" layout that the skinny kernel reads (one prepared copy serves both).
// This file is the plan: what the kernel takes, why it declines, the split-K choice and its
// reduction; the kernel is matmul_cuda_medium.cuh (its file comment has the tiling and the
// arithmetic), instantiated by matmul_cuda_medium_{int4,int8,float}.cu.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_medium.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {

namespace medium {

__global__ void reduce_kernel(Args p) {
  const int64_t total = static_cast<int64_t>(p.m) * p.n;
  const float global = p.w.global ? p.w.global[0] : 1.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = p.partial[i];
    for (int z = 1; z < p.split; ++z) v += p.partial[z * total + i];
    const int64_t c = i / p.n, row = i - c * p.n;
    v *= global;
    if (p.bias) v += quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row));
    quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row), v);
  }
}

void launch_reduce(const Args& a, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(a.m) * a.n;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 4096));
  reduce_kernel<<<blocks, 256, 0, stream>>>(a);
  mm_cuda::check_launch("medium reduce_kernel");
}

size_t partial_bytes(const MatmulDesc& d, int split) {
  if (split <= 1) return 0;
  return mm_cuda::align_up(static_cast<size_t>(split) * d.m * d.n * 4, 256);
}

Args args_for(const MatmulDesc& d, const MatmulArgs& a, const mm_cuda::TcPlan& tp, int split,
              Workspace ws, cudaStream_t stream) {
  Args r;
  r.w = mm_cuda::tc_weights(tp.format, tp.layout, a.w_packed.data());
  r.x = static_cast<const uint8_t*>(a.x.data());
  r.x_stride = d.x_stride();
  if (!quant_cuda::aligned(a.x.data(), 16) || r.x_stride % 8 != 0) {
    // cp.async and the copy engine read x 16 bytes at a time: an unaligned x is copied into
    // the workspace, after the partial sums.
    uint8_t* xc = static_cast<uint8_t*>(ws.data) + partial_bytes(d, split);
    mm_cuda::check_cuda(
        cudaMemcpy2DAsync(xc, static_cast<size_t>(d.k) * 2, a.x.data(),
                          static_cast<size_t>(r.x_stride) * 2, static_cast<size_t>(d.k) * 2,
                          static_cast<size_t>(d.m), cudaMemcpyDeviceToDevice, stream),
        "matmul: copying x");
    r.x = xc;
    r.x_stride = d.k;
  }
  r.y = a.y.data();
  r.y_stride = d.y_stride();
  r.y_dtype = d.y;
  r.bias = d.bias ? a.bias.data() : nullptr;
  r.m = static_cast<int>(d.m);
  r.n = d.n;
  r.tiles = tp.layout.tiles;
  r.split = split;
  r.partial = split > 1 ? static_cast<float*>(ws.data) : nullptr;
  return r;
}

}  // namespace medium

namespace {

using medium::Launcher;
using tc::Code;
using tc::Scale;

/// Rows of x this kernel takes (select() order: the skinny kernel first, up to 32). Measured on
/// the H100 (8192x8192, BENCHMARKS.md): against dequantize + cuBLASLt it takes 0.30-0.52x the
/// time at M = 64 and 0.51-0.81x at M = 128 (two full 64-row blocks of x), but a third block
/// costs a whole pass: at M = 160 int4:block32 takes 1.22x and affine int4 1.45x (nvfp4 still
/// 0.91x), at 256 0.87-1.40x, at 512 1.8x. Hence 128.
constexpr int64_t kMaxM = 128;

Launcher launcher_for(const tc::Format& f, bool bf16, std::string* why) {
  switch (f.code) {
    case Code::u4:
      return medium::launcher_int4(f, bf16, why);
    case Code::i8:
      return medium::launcher_int8(f, bf16, why);
    default:
      return medium::launcher_float(f, bf16, why);
  }
}

/// The k-split of `d` on its device (1: no partial sums).
int split_of(const MatmulDesc& d, const mm_cuda::TcPlan& tp) {
  const Launcher l = launcher_for(tp.format, d.x == Dtype::bf16, nullptr);
  const int64_t slots = static_cast<int64_t>(mm_cuda::sm_count(d.device.index)) * l.blocks_per_sm();
  return medium::split_for(d.m, tp.layout.tiles, tp.layout.segments, slots);
}

class MatmulCudaMedium final : public mm_cuda::TcWeightOnlyKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_medium_tc"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = weight_only_decline(
        d, reinterpret_cast<const void*>(
               &medium::medium_kernel<Code::u4, Scale::integer, 1, true, false>));
    if (!why.empty()) return why;
    if (d.m > kMaxM)
      return "M = " + std::to_string(d.m) + " > " + std::to_string(kMaxM) +
             " (mma.sync with the decode in the loop; the wgmma kernel or dequantize + cuBLASLt "
             "is faster there)";
    if (d.m > std::numeric_limits<int>::max() / 2) return "M too large";
    const auto f = tc::format_of(d.w, d.n, d.k, &why);
    if (!f) return why;
    if (!launcher_for(*f, true, &why)) return why;
    return {};
  }

  PrecisionGuarantee precision(const MatmulDesc&) const override {
    return {
        "exact codes times x on tensor cores (mma.sync bf16/f16), f32 sums per scale group, "
        "group scale (and zero-point term) applied in f32; split-K ranges (up to 16) added in "
        "a fixed order through the workspace (no atomics)",
        Dtype::f32, true, false};
  }

  std::size_t workspace_size(const MatmulDesc& d) const override {
    return medium::workspace_bytes(d, split_of(d, mm_cuda::tc_plan(d)));
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    require_prepared(a, tp);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto cs = static_cast<cudaStream_t>(stream.native_handle());
    const medium::Args ma = medium::args_for(d, a, tp, split_of(d, tp), ws, cs);
    launcher_for(tp.format, d.x == Dtype::bf16, nullptr).launch(ma, cs);
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_medium_kernel() {
  static const MatmulCudaMedium kernel;
  return kernel;
}

}  // namespace lowbit
