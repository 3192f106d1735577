// matmul_cuda_w8a8_lt: W8A8 through cuBLASLt on sm_90.
//
//  * int8 x int8 (x per token or per tensor, W per channel or per tensor, symmetric): an IMMA
//    GEMM with exact i32 sums into the workspace, then an epilogue kernel
//    y = f32(acc) * sx[m] * sw[n] (+ bias[n]) rounded once to y.
//  * fp8 x fp8 (e4m3 / e5m2; not e5m2 x e5m2): cuBLASLt's fp8 GEMM with the scales applied by
//    cuBLASLt (tensor-wise: scalars; per token x per channel: OUTER_VEC_32F; x in 1 x 128
//    blocks x W in 128 x 128 tiles: VEC128_32F x BLK128x128_32F with the scale tables
//    re-laid-out in the workspace as cuBLASLt reads them), f32 accumulation without fast
//    accumulation, bias in its epilogue, output straight to y.
// A float x (desc.x float, x_scheme set) is quantized first by the quantize op's CUDA kernel
// into the workspace (the reference's codes). Shapes cuBLASLt has no algorithm for are
// declined (select probes its heuristic), and matmul_cuda_dequant_lt serves them. On sm_90a,
// matmul_cuda_w8a8_wgmma comes first in select() for per-token / per-channel scales (it
// applies them to its accumulators: no f32 round trip); this plan keeps per-tensor fp8,
// block-scaled fp8, short grids and other devices.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_common.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

constexpr int kThreads = 256;

/// int8: IMMA + epilogue; fp8: scales applied by cuBLASLt; fp8_epilogue: per-token /
/// per-channel fp8 where cuBLASLt has no OUTER_VEC_32F algorithm: an unscaled fp8 GEMM into
/// f32 sums, then the int8 path's epilogue; fp8_block: 1x128 x 128x128 blocks.
enum class Kind { int8, fp8, fp8_epilogue, fp8_block };

using mm_cuda::is_fp8;
using mm_cuda::per_row;

/// The kind of product for a descriptor, or the reason there is none.
std::optional<Kind> kind_of(const MatmulDesc& d, std::string* why) {
  const QuantScheme& xs = *d.x_scheme;
  const QuantScheme& ws = d.w;
  if (xs.format == QuantFormat::int8 && ws.format == QuantFormat::int8) {
    if (!xs.symmetric || !ws.symmetric) {
      *why = "int8 W8A8 here takes symmetric schemes (zero points need a correction term)";
      return std::nullopt;
    }
    if ((xs.granularity != Granularity::tensor && !per_row(xs)) ||
        (ws.granularity != Granularity::tensor && !per_row(ws))) {
      *why = "int8 W8A8 here takes per-tensor / per-token x and per-tensor / per-channel W";
      return std::nullopt;
    }
    return Kind::int8;
  }
  if (is_fp8(xs.format) && is_fp8(ws.format)) {
    if (xs.format == QuantFormat::fp8e5m2 && ws.format == QuantFormat::fp8e5m2) {
      *why = "cuBLASLt has no e5m2 x e5m2 GEMM";
      return std::nullopt;
    }
    if (d.y == Dtype::f32) {
      *why =
          "f32 y promises 1e-5 relative; sm_90's fp8 tensor cores sum with about 2^-14 relative "
          "error (measured 7e-5 of the products' scale at K = 1024); the dequantize path "
          "serves f32 y";
      return std::nullopt;
    }
    const bool xt = xs.granularity == Granularity::tensor,
               wt = ws.granularity == Granularity::tensor;
    if ((xt || per_row(xs)) && (wt || per_row(ws))) return Kind::fp8;
    if (xs.granularity == Granularity::block && xs.block == 128 &&
        ws.granularity == Granularity::block2d && ws.block == 128) {
      if (d.m % 4 != 0) {
        *why = "block-scaled fp8 through cuBLASLt needs M a multiple of 4 (its x scale layout)";
        return std::nullopt;
      }
      return Kind::fp8_block;
    }
    *why =
        "fp8 W8A8 here takes tensor / token x with tensor / channel W, or 1x128 x with "
        "128x128 W";
    return std::nullopt;
  }
  *why = "x " + xs.str() + " with W " + ws.str() + " is not an int8 x int8 or fp8 x fp8 pair";
  return std::nullopt;
}

int scale_mode(const QuantScheme& s) {
  if (s.granularity == Granularity::tensor) return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  if (s.granularity == Granularity::block) return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  if (s.granularity == Granularity::block2d) return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
}

int64_t i32_ld(const MatmulDesc& d) { return (d.n + 3) / 4 * 4; }

mm_cuda::LtGemm gemm_of(const MatmulDesc& d, Kind kind) {
  mm_cuda::LtGemm g;
  g.device = d.device.index;
  g.a_type = mm_cuda::cuda_type(d.w.code_dtype());
  g.b_type = mm_cuda::cuda_type(d.x_scheme->code_dtype());
  g.n = d.n;
  g.m = d.m;
  g.k = d.k;
  g.lda = d.k;
  g.ldb = d.k;
  if (kind == Kind::int8) {
    g.d_type = CUDA_R_32I;
    g.compute = CUBLAS_COMPUTE_32I;
    g.scale_type = CUDA_R_32I;
    g.ldd = i32_ld(d);
  } else if (kind == Kind::fp8_epilogue) {
    g.d_type = CUDA_R_32F;
    g.compute = CUBLAS_COMPUTE_32F;
    g.scale_type = CUDA_R_32F;
    g.ldd = i32_ld(d);
  } else {
    g.d_type = mm_cuda::cuda_type(d.y);
    g.compute = CUBLAS_COMPUTE_32F;
    g.scale_type = CUDA_R_32F;
    g.ldd = d.y_stride();
    g.a_scale_mode = scale_mode(d.w);
    g.b_scale_mode = scale_mode(*d.x_scheme);
    g.bias = d.bias;
    g.bias_type = mm_cuda::cuda_type(d.y);
  }
  return g;
}

/// Workspace: x's codes / scales (dynamic x), the i32 sums (int8) or the re-laid-out block
/// scale tables (fp8 blocks), and cuBLASLt's own.
struct Pieces {
  size_t xq = 0, mid = 0, mid2 = 0, lt = 0, total = 0;
};

int64_t kblocks(const MatmulDesc& d) { return (d.k + 127) / 128; }
int64_t kblocks4(const MatmulDesc& d) { return (kblocks(d) + 3) / 4 * 4; }

Pieces pieces_of(const MatmulDesc& d, Kind kind) {
  Pieces p;
  size_t at = 0;
  p.xq = at;
  at = mm_cuda::align_up(at + mm_cuda::x_quant_bytes(d), 256);
  p.mid = at;
  if (kind == Kind::int8 || kind == Kind::fp8_epilogue) {
    at = mm_cuda::align_up(at + static_cast<size_t>(d.m * i32_ld(d)) * 4, 256);
  } else if (kind == Kind::fp8_block) {
    at = mm_cuda::align_up(at + static_cast<size_t>(kblocks(d) * d.m) * 4, 256);  // x: [kb][m]
    p.mid2 = at;
    at = mm_cuda::align_up(at + static_cast<size_t>(((d.n + 127) / 128) * kblocks4(d)) * 4, 256);
  }
  p.lt = at;
  p.total = at + mm_cuda::kLtWorkspace;
  return p;
}

/// y[m][n] = f32(acc[m][n]) * sx * sw (+ bias[n]).
template <class Acc>
__global__ void __launch_bounds__(kThreads)
    scale_epilogue_kernel(const Acc* acc, int64_t ld, const void* sx, Dtype sxd, bool sx_row,
                          const void* sw, Dtype swd, bool sw_row, const void* bias, void* y,
                          Dtype yd, int64_t y_stride, int64_t m, int64_t n) {
  const int64_t total = m * n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += step) {
    const int64_t r = i / n, c = i - r * n;
    const float a = quant_cuda::load_scale(sx, sxd, static_cast<uint64_t>(sx_row ? r : 0));
    const float b = quant_cuda::load_scale(sw, swd, static_cast<uint64_t>(sw_row ? c : 0));
    float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[r * ld + c]), a), b);
    if (bias) v = __fadd_rn(v, quant_cuda::load_any(bias, yd, static_cast<uint64_t>(c)));
    quant_cuda::store_any(y, yd, static_cast<uint64_t>(r * y_stride + c), v);
  }
}

/// x's [m][kb] block scales -> [kb][m] (cuBLASLt's VEC128_32F operand B: outer dimension
/// fastest); W's [nb][kb] tile scales -> [nb][kb rounded up to 4] (BLK128x128_32F).
__global__ void __launch_bounds__(kThreads)
    block_scales_kernel(const float* sx, int64_t m, int64_t kb, float* sx_t, const float* sw,
                        int64_t nb, int64_t kb4, float* sw_p) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = i0; i < m * kb; i += step) {
    const int64_t r = i / kb, c = i - r * kb;
    sx_t[c * m + r] = sx[i];
  }
  for (int64_t i = i0; i < nb * kb4; i += step) {
    const int64_t r = i / kb4, c = i - r * kb4;
    sw_p[i] = c < kb ? sw[r * kb + c] : 0.0f;
  }
}

__global__ void probe_kernel() {}

class MatmulCudaW8A8 final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_w8a8_lt"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(d, reinterpret_cast<const void*>(&probe_kernel));
    if (!why.empty()) return why;
    if (!d.x_scheme) return "W8A8 only (x_scheme is not set)";
    if (!resolve(d, &why)) return why;
    return {};
  }

  /// The kind for `d` after asking cuBLASLt (per-row fp8 falls back to the epilogue form).
  static std::optional<Kind> resolve(const MatmulDesc& d, std::string* why) {
    auto kind = kind_of(d, why);
    if (!kind) return kind;
    if (d.m == 0 || d.n == 0) return kind;
    std::string lt_why;
    if (mm_cuda::lt_available(gemm_of(d, *kind), &lt_why)) return kind;
    if (*kind == Kind::fp8) {
      std::string e_why;
      if (mm_cuda::lt_available(gemm_of(d, Kind::fp8_epilogue), &e_why)) return Kind::fp8_epilogue;
      *why = "the GEMM with cuBLASLt's scales: " + lt_why + "; unscaled: " + e_why;
      return std::nullopt;
    }
    *why = "the GEMM: " + lt_why;
    return std::nullopt;
  }
  KernelSku sku(const MatmulDesc& d) const override {
    return mm_cuda::cuda_sku(d, mm_cuda::w8a8_dtypes(d), name());
  }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    std::string why;
    const auto kind = resolve(d, &why);
    if (kind == Kind::int8)
      return {
          "int8 codes multiplied and summed exactly in i32 (cuBLASLt IMMA), then "
          "f32(sum) * sx * sw (+ bias), one rounding to y",
          Dtype::i32, true, false};
    return {
        "fp8 codes on tensor cores (cuBLASLt, no fast accumulation), f32 sums with the "
        "scales applied by cuBLASLt",
        Dtype::f32, true, false};
  }
  std::size_t workspace_size(const MatmulDesc& d) const override {
    std::string why;
    return pieces_of(d, resolve(d, &why).value_or(Kind::fp8_epilogue)).total;
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace workspace) const override {
    if (d.m == 0 || d.n == 0) return;
    std::string why;
    const Kind kind = *resolve(d, &why);
    const Pieces p = pieces_of(d, kind);
    auto* ws = static_cast<uint8_t*>(workspace.data);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    const QuantizedView xq = mm_cuda::activations(d, a, ws + p.xq, stream);
    const mm_cuda::LtGemm g = gemm_of(d, kind);
    const int sms = mm_cuda::sm_count(d.device.index);
    if (kind == Kind::int8 || kind == Kind::fp8_epilogue) {
      const int32_t one_i = 1;
      const float one_f = 1.0f;
      mm_cuda::lt_run(
          g, a.w.codes.data(), xq.codes.data(), ws + p.mid, nullptr, nullptr, nullptr,
          kind == Kind::int8 ? static_cast<const void*>(&one_i) : static_cast<const void*>(&one_f),
          ws + p.lt, mm_cuda::kLtWorkspace, s);
      const unsigned grid = quant_cuda::grid_of(static_cast<uint64_t>(d.m * d.n), kThreads,
                                                static_cast<uint32_t>(sms * 8));
      const bool sx_row = xq.scheme.granularity != Granularity::tensor;
      const bool sw_row = d.w.granularity != Granularity::tensor;
      const void* bias = d.bias ? a.bias.data() : nullptr;
      if (kind == Kind::int8)
        scale_epilogue_kernel<int32_t><<<grid, kThreads, 0, s>>>(
            reinterpret_cast<const int32_t*>(ws + p.mid), i32_ld(d), xq.scale.data(),
            xq.scale.dtype(), sx_row, a.w.scale.data(), a.w.scale.dtype(), sw_row, bias, a.y.data(),
            d.y, d.y_stride(), d.m, d.n);
      else
        scale_epilogue_kernel<float><<<grid, kThreads, 0, s>>>(
            reinterpret_cast<const float*>(ws + p.mid), i32_ld(d), xq.scale.data(),
            xq.scale.dtype(), sx_row, a.w.scale.data(), a.w.scale.dtype(), sw_row, bias, a.y.data(),
            d.y, d.y_stride(), d.m, d.n);
      mm_cuda::check_launch("scale_epilogue_kernel");
      return;
    }
    const void* sa = a.w.scale.data();
    const void* sb = xq.scale.data();
    if (kind == Kind::fp8_block) {
      auto* sx_t = reinterpret_cast<float*>(ws + p.mid);
      auto* sw_p = reinterpret_cast<float*>(ws + p.mid2);
      const int64_t nb = (d.n + 127) / 128;
      const unsigned grid =
          quant_cuda::grid_of(static_cast<uint64_t>(std::max(d.m * kblocks(d), nb * kblocks4(d))),
                              kThreads, static_cast<uint32_t>(sms * 4));
      block_scales_kernel<<<grid, kThreads, 0, s>>>(
          xq.scale.data_as<const float>(), d.m, kblocks(d), sx_t, a.w.scale.data_as<const float>(),
          nb, kblocks4(d), sw_p);
      mm_cuda::check_launch("block_scales_kernel");
      sa = sw_p;
      sb = sx_t;
    }
    const float one = 1.0f;
    mm_cuda::lt_run(g, a.w.codes.data(), xq.codes.data(), a.y.data(),
                    d.bias ? a.bias.data() : nullptr, sa, sb, &one, ws + p.lt,
                    mm_cuda::kLtWorkspace, s);
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_w8a8_kernel() {
  static const MatmulCudaW8A8 kernel;
  return kernel;
}

}  // namespace lowbit
