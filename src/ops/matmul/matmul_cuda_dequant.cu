// The dequantize-then-GEMM matmul kernels: W (and a quantized x) are dequantized into the
// workspace, then one cuBLASLt GEMM (f32 / bf16 / f16 operands, f32 accumulation) computes
// y = x · W^T (+ bias in its epilogue). They serve every M and every scheme the faster kernels
// decline, at the cost of writing W once per call in a 16- or 32-bit dtype T:
//
//  * matmul_cuda_dequant_tc_lt: weights in the prepared "cuda_tc16x128" layout (the layout the
//    skinny kernel reads, so QuantizedLinear keeps one prepared copy for both), decoded by
//    dense_tc_kernel with the reference's arithmetic (bit-identical dequantized values).
//  * matmul_cuda_dequant_lt: weights in the plain layout through the dequantize op's CUDA
//    kernel (every non-GGUF scheme, q8_0, q4_0), and W8A8: x quantized by the quantize op's CUDA
//    kernel when it arrives as floats (check_finite off: non-finite x give unspecified codes,
//    as documented in docs/matmul.md), then dequantized like W.
//
// T is f32 when y is f32 or x is f32 (f32 GEMM, CUBLAS_COMPUTE_32F: no TF32), else x's dtype
// (weight-only) or bf16 (W8A8 with a bf16 y); a float x not of dtype T is converted first.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_common.cuh"
#include "ops/matmul/matmul_kernels.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using tc::Code;
using tc::Scale;
using tc::TcWeights;

constexpr int kThreads = 256;

/// One thread per lane unit of the layout: decodes its 32 values and writes them to the dense
/// row-major [n][k] matrix of dtype D.
template <Code C, Scale S, Dtype D>
__global__ void __launch_bounds__(kThreads)
    dense_tc_kernel(TcWeights w, int64_t n, void* dst, int64_t units) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kWords = kBits == 4 ? 4 : 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += stride) {
    const int lane = static_cast<int>(u & 31), half = static_cast<int>((u >> 5) & 1);
    const int64_t ts = u >> 6, seg = ts % w.segments, tile = ts / w.segments;
    const int64_t row = tile * 16 + half * 8 + (lane >> 2);
    const int q = lane & 3;
    if (row >= n) continue;
    uint32_t words[kWords];
    const auto* src = reinterpret_cast<const uint4*>(w.codes + u * kWords * 4);
#pragma unroll
    for (int v = 0; v < kWords / 4; ++v) {
      const uint4 t = src[v];
      words[4 * v] = t.x, words[4 * v + 1] = t.y, words[4 * v + 2] = t.z, words[4 * v + 3] = t.w;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t k0 = tc::step_k(seg, j, q);
      float v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[i] = tc::dense_value<C, S>(tc::stored_code(words, kBits, j, i), w, row, k0);
      }
      const int64_t at = row * w.k + k0;
      if constexpr (D == Dtype::f32) {
        *reinterpret_cast<float4*>(static_cast<float*>(dst) + at) =
            make_float4(v[0], v[1], v[2], v[3]);
      } else {
        const uint32_t lo =
            D == Dtype::bf16 ? quant_cuda::bf16x2_rn(v[0], v[1]) : quant_cuda::f16x2_rn(v[0], v[1]);
        const uint32_t hi =
            D == Dtype::bf16 ? quant_cuda::bf16x2_rn(v[2], v[3]) : quant_cuda::f16x2_rn(v[2], v[3]);
        *reinterpret_cast<uint2*>(static_cast<uint16_t*>(dst) + at) = make_uint2(lo, hi);
      }
    }
  }
}

/// x [m][k] (rows `stride` apart, f32 / bf16 / f16) -> contiguous D.
template <Dtype D>
__global__ void __launch_bounds__(kThreads)
    convert_rows_kernel(const void* x, Dtype xd, int64_t stride, int64_t m, int64_t k, void* dst) {
  const int64_t total = m * k;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += step) {
    const int64_t r = i / k, c = i - r * k;
    const float v = quant_cuda::load_any(x, xd, static_cast<uint64_t>(r * stride + c));
    quant_cuda::store_any(dst, D, static_cast<uint64_t>(i), v);
  }
}

using DenseLauncher = void (*)(const TcWeights&, int64_t n, void* dst, Dtype d, int sms,
                               cudaStream_t);

template <Code C, Scale S>
void dense_launch(const TcWeights& w, int64_t n, void* dst, Dtype d, int sms, cudaStream_t s) {
  const int64_t units = ((n + 15) / 16) * w.segments * 64;
  const unsigned grid =
      quant_cuda::grid_of(static_cast<uint64_t>(units), kThreads, static_cast<uint32_t>(sms * 8));
  if (d == Dtype::f32)
    dense_tc_kernel<C, S, Dtype::f32><<<grid, kThreads, 0, s>>>(w, n, dst, units);
  else if (d == Dtype::bf16)
    dense_tc_kernel<C, S, Dtype::bf16><<<grid, kThreads, 0, s>>>(w, n, dst, units);
  else
    dense_tc_kernel<C, S, Dtype::f16><<<grid, kThreads, 0, s>>>(w, n, dst, units);
  mm_cuda::check_launch("dense_tc_kernel");
}

DenseLauncher dense_launcher(const tc::Format& f) {
  switch (f.scale) {
    case Scale::integer:
      return f.code == Code::u4 ? &dense_launch<Code::u4, Scale::integer>
                                : &dense_launch<Code::i8, Scale::integer>;
    case Scale::f32:
      return f.code == Code::e4m3 ? &dense_launch<Code::e4m3, Scale::f32>
                                  : &dense_launch<Code::e5m2, Scale::f32>;
    case Scale::e4m3:
      return &dense_launch<Code::fp4, Scale::e4m3>;
    case Scale::e8m0:
      return &dense_launch<Code::fp4, Scale::e8m0>;
    case Scale::f16d:
      return f.code == Code::u4 ? &dense_launch<Code::u4, Scale::f16d>
                                : &dense_launch<Code::i8, Scale::f16d>;
    case Scale::q4k:
      return &dense_launch<Code::u4, Scale::q4k>;
    case Scale::q6k:
      return &dense_launch<Code::i8, Scale::q6k>;
  }
  return nullptr;
}

void convert_rows(const void* x, Dtype xd, int64_t stride, int64_t m, int64_t k, void* dst, Dtype d,
                  int sms, cudaStream_t s) {
  const unsigned grid =
      quant_cuda::grid_of(static_cast<uint64_t>(m * k), kThreads, static_cast<uint32_t>(sms * 8));
  if (d == Dtype::f32)
    convert_rows_kernel<Dtype::f32><<<grid, kThreads, 0, s>>>(x, xd, stride, m, k, dst);
  else if (d == Dtype::bf16)
    convert_rows_kernel<Dtype::bf16><<<grid, kThreads, 0, s>>>(x, xd, stride, m, k, dst);
  else
    convert_rows_kernel<Dtype::f16><<<grid, kThreads, 0, s>>>(x, xd, stride, m, k, dst);
  mm_cuda::check_launch("convert_rows_kernel");
}

/// The GEMM dtype T of the docs above.
Dtype gemm_dtype(const MatmulDesc& d) {
  if (d.y == Dtype::f32) return Dtype::f32;
  if (d.x_scheme) return d.y == Dtype::bf16 ? Dtype::bf16 : Dtype::f32;
  if (d.x == Dtype::f32 || d.x != d.y) return Dtype::f32;
  return d.x;
}

mm_cuda::LtGemm gemm_of(const MatmulDesc& d, Dtype t) {
  mm_cuda::LtGemm g;
  g.device = d.device.index;
  g.a_type = g.b_type = mm_cuda::cuda_type(t);
  g.d_type = mm_cuda::cuda_type(d.y);
  g.compute = CUBLAS_COMPUTE_32F;
  g.scale_type = CUDA_R_32F;
  g.n = d.n;
  g.m = d.m;
  g.k = d.k;
  g.lda = d.k;
  // x is used in place when it already has dtype T; else a contiguous copy.
  g.ldb = (!d.x_scheme && d.x == t) ? d.x_stride() : d.k;
  g.ldd = d.y_stride();
  g.bias = d.bias;
  g.bias_type = mm_cuda::cuda_type(d.y);
  return g;
}

int sms_of(int device) { return mm_cuda::sm_count(device); }

/// Workspace pieces, 256-aligned: dense W, x in T, x's codes / scales (W8A8), cuBLASLt.
struct Pieces {
  size_t w = 0, x = 0, xcodes = 0, lt = 0, total = 0;
};

Pieces pieces_of(const MatmulDesc& d) {
  const Dtype t = gemm_dtype(d);
  const size_t tb = static_cast<size_t>(bit_width(t) / 8);
  Pieces p;
  size_t at = 0;
  p.w = at;
  at = mm_cuda::align_up(at + static_cast<size_t>(d.n * d.k) * tb, 256);
  p.x = at;
  const bool x_copy = d.x_scheme || d.x != t;
  if (x_copy) at = mm_cuda::align_up(at + static_cast<size_t>(d.m * d.k) * tb, 256);
  p.xcodes = at;
  at = mm_cuda::align_up(at + mm_cuda::x_quant_bytes(d), 256);
  p.lt = at;
  p.total = at + mm_cuda::kLtWorkspace;
  return p;
}

std::string sku_dtypes(const MatmulDesc& d) {
  return std::string(dtype_name(d.x)) + (d.x_scheme ? "(" + d.x_scheme->str() + ")" : "") + "x" +
         d.w.str() + "->" + std::string(dtype_name(d.y));
}

__global__ void probe_kernel() {}

/// Runs the GEMM of `d` on dense W (in T at `wd`) and x (in T at `xd` with row stride ldb).
void run_gemm(const MatmulDesc& d, const MatmulArgs& a, const void* wd, const void* xt,
              const Pieces& p, uint8_t* ws, cudaStream_t s) {
  const Dtype t = gemm_dtype(d);
  mm_cuda::LtGemm g = gemm_of(d, t);
  if (xt != a.x.data()) g.ldb = d.k;
  const float one = 1.0f;
  mm_cuda::lt_run(g, wd, xt, a.y.data(), d.bias ? a.bias.data() : nullptr, nullptr, nullptr, &one,
                  ws + p.lt, mm_cuda::kLtWorkspace, s);
}

std::string gemm_decline(const MatmulDesc& d) {
  std::string why;
  if (d.m > 0 && d.n > 0 && !mm_cuda::lt_available(gemm_of(d, gemm_dtype(d)), &why))
    return "the GEMM: " + why;
  return {};
}

// ---- the prepared-layout kernel -----------------------------------------------------------------

class MatmulCudaDequantTc final : public mm_cuda::TcLayoutKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_dequant_tc_lt"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(d, reinterpret_cast<const void*>(&probe_kernel));
    if (!why.empty()) return why;
    if (d.x_scheme) return "weight-only kernel (x_scheme is set: W8A8)";
    if (!tc::format_of(d.w, d.n, d.k, &why)) return why;
    return gemm_decline(d);
  }
  KernelSku sku(const MatmulDesc& d) const override {
    return mm_cuda::cuda_sku(d, sku_dtypes(d), name());
  }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {"W dequantized with the reference's rules to " +
                std::string(dtype_name(gemm_dtype(d))) +
                " (one rounding), then a cuBLASLt GEMM with f32 accumulation",
            Dtype::f32, true, false};
  }
  std::size_t workspace_size(const MatmulDesc& d) const override { return pieces_of(d).total; }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace workspace) const override {
    if (d.m == 0 || d.n == 0) return;
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    require_prepared(a, tp);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int sms = sms_of(d.device.index);
    const Dtype t = gemm_dtype(d);
    const Pieces p = pieces_of(d);
    auto* ws = static_cast<uint8_t*>(workspace.data);
    const TcWeights w = mm_cuda::tc_weights(tp.format, tp.layout, a.w_packed.data());
    dense_launcher(tp.format)(w, d.n, ws + p.w, t, sms, s);
    const void* xt = a.x.data();
    if (d.x != t) {
      convert_rows(a.x.data(), d.x, d.x_stride(), d.m, d.k, ws + p.x, t, sms, s);
      xt = ws + p.x;
    }
    run_gemm(d, a, ws + p.w, xt, p, ws, s);
  }
};

// ---- the plain-layout kernel (and W8A8) ---------------------------------------------------------

bool plain_dequant_ok(const QuantScheme& s) {
  return s.format != QuantFormat::gguf || quant_cuda::is_gguf_fast(s);
}

class MatmulCudaDequant final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_dequant_lt"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(d, reinterpret_cast<const void*>(&probe_kernel));
    if (!why.empty()) return why;
    if (!plain_dequant_ok(d.w))
      return "GGUF " + d.w.str() + " has no CUDA dequantize kernel (q4_K / q6_K: the tc layout)";
    if (d.x_scheme && !plain_dequant_ok(*d.x_scheme))
      return "x's scheme " + d.x_scheme->str() + " has no CUDA dequantize kernel";
    if (d.x_scheme && d.x_scheme->format == QuantFormat::gguf && !d.x_quantized())
      return "dynamic GGUF quantization of x is not offered";
    return gemm_decline(d);
  }
  KernelSku sku(const MatmulDesc& d) const override {
    return mm_cuda::cuda_sku(d, sku_dtypes(d), name());
  }
  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    return {
        "W" + std::string(d.x_scheme ? " and x (quantized dynamically if given as floats)" : "") +
            " dequantized with the reference's rules to " + std::string(dtype_name(gemm_dtype(d))) +
            " (one rounding), then a cuBLASLt GEMM with f32 accumulation",
        Dtype::f32, true, false};
  }
  std::size_t workspace_size(const MatmulDesc& d) const override { return pieces_of(d).total; }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace workspace) const override {
    if (d.m == 0 || d.n == 0) return;
    mm_cuda::DeviceScope scope(d.device.index);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    const int sms = sms_of(d.device.index);
    const Dtype t = gemm_dtype(d);
    const Pieces p = pieces_of(d);
    auto* ws = static_cast<uint8_t*>(workspace.data);
    const Shape wshape{d.n, d.k};
    dequantize_cuda_kernel().run(DequantizeDesc{d.w, wshape, t, d.device},
                                 DequantizeArgs{a.w, TensorView(ws + p.w, t, wshape, d.device)},
                                 stream, {});
    const void* xt = a.x.data();
    const Shape xshape{d.m, d.k};
    if (d.x_scheme) {
      const QuantizedView xq = mm_cuda::activations(d, a, ws + p.xcodes, stream);
      dequantize_cuda_kernel().run(DequantizeDesc{xq.scheme, xshape, t, d.device},
                                   DequantizeArgs{xq, TensorView(ws + p.x, t, xshape, d.device)},
                                   stream, {});
      xt = ws + p.x;
    } else if (d.x != t) {
      convert_rows(a.x.data(), d.x, d.x_stride(), d.m, d.k, ws + p.x, t, sms, s);
      xt = ws + p.x;
    }
    run_gemm(d, a, ws + p.w, xt, p, ws, s);
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_dequant_tc_kernel() {
  static const MatmulCudaDequantTc kernel;
  return kernel;
}

const MatmulKernel& matmul_cuda_dequant_kernel() {
  static const MatmulCudaDequant kernel;
  return kernel;
}

}  // namespace lowbit
