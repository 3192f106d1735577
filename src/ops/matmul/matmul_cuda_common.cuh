// Shared by the CUDA matmul kernels: the prepared weights as the kernels see them, the group
// scales of every format, preparing on the host, activation / output access, and cuBLASLt.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "lowbit/matmul.hpp"
#include "ops/matmul/matmul_cuda_layout.cuh"
#include "ops/quantize/quantize_cuda_common.cuh"

namespace lowbit::mm_cuda {

using quant_cuda::check_cuda;
using quant_cuda::check_launch;
using quant_cuda::DeviceScope;
using quant_cuda::SmemOptIn;

// ---- the prepared weight --------------------------------------------------------------------

using tc::TcWeights;

inline TcWeights tc_weights(const tc::Format& f, const tc::Layout& L, const void* packed) {
  const auto* p = static_cast<const uint8_t*>(packed);
  TcWeights w;
  w.codes = p + L.codes;
  w.scale = p + L.scale;
  w.zero = L.zero >= 0 ? reinterpret_cast<const int8_t*>(p + L.zero) : nullptr;
  w.aux = L.aux >= 0 ? p + L.aux : nullptr;
  w.global = L.global >= 0 ? reinterpret_cast<const float*>(p + L.global) : nullptr;
  w.segments = L.segments;
  w.groups = L.groups;
  w.k = L.k;
  w.group_log2 = f.group_log2;
  w.scale_dtype = Dtype::f32;  // the layout stores integer scales as f32
  return w;
}

// ---- host helpers -----------------------------------------------------------------------------

/// The prepared layout of `d` (throws if the scheme is not in it: callers check first).
struct TcPlan {
  tc::Format format;
  tc::Layout layout;
};
TcPlan tc_plan(const MatmulDesc& d);

/// Copies `w` (on a CUDA device) to the host, repacks it, and writes the layout into `packed`.
void tc_prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
                const Stream& stream);

/// "runs on CUDA devices only" / "this build has no kernel image ..." / "" for a usable device.
std::string cuda_device_decline(const MatmulDesc& d, const void* probe_kernel);
std::string cuda_arch(int device);

/// The SKU of a CUDA matmul kernel named `kernel`, its operand dtypes spelled `dtypes`.
inline KernelSku cuda_sku(const MatmulDesc& d, std::string dtypes, std::string_view kernel) {
  return {"matmul",
          Backend::cuda,
          std::move(dtypes),
          d.w.str(),
          d.device.is_cuda() ? cuda_arch(d.device.index) : "sm_90",
          std::string(kernel)};
}
/// "bf16xint4:block32->bf16": a weight-only product's dtypes.
inline std::string weight_only_dtypes(const MatmulDesc& d) {
  return std::string(dtype_name(d.x)) + "x" + d.w.str() + "->" + std::string(dtype_name(d.y));
}
/// "f8e4m3fn(fp8e4m3:token)xfp8e4m3:channel->bf16": a W8A8 product's dtypes.
inline std::string w8a8_dtypes(const MatmulDesc& d) {
  return std::string(dtype_name(d.x)) + "(" + d.x_scheme->str() + ")x" + d.w.str() + "->" +
         std::string(dtype_name(d.y));
}
inline bool is_fp8(QuantFormat f) { return f == QuantFormat::fp8e4m3 || f == QuantFormat::fp8e5m2; }
/// A scale per row of its matrix: per token (x), or per channel along N (W's axis 0).
inline bool per_row(const QuantScheme& s) {
  return s.granularity == Granularity::token ||
         (s.granularity == Granularity::channel && (s.axis == 0 || s.axis == -2));
}

/// The kernels that read W in the prepared "cuda_tc16x128" layout (skinny, medium, wgmma,
/// dequantize + GEMM): one layout and one prepare step, so QuantizedLinear keeps one copy for
/// all of them.
class TcLayoutKernel : public MatmulKernel {
 public:
  std::string weight_layout(const MatmulDesc&) const override { return tc::kLayoutName; }
  int64_t prepared_bytes(const MatmulDesc& d) const override { return tc_plan(d).layout.bytes; }
  void prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
               const Stream& stream) const override {
    tc_prepare(d, w, packed, stream);
  }

 protected:
  /// Throws unless `a` carries the prepared weight of `tp` (prepare_weight's bytes): the
  /// kernels read the layout's parts at their offsets, so a missing or short buffer would be
  /// read out of bounds.
  void require_prepared(const MatmulArgs& a, const TcPlan& tp) const {
    if (!a.w_packed.data() || a.w_packed.numel() != tp.layout.bytes)
      throw_error(ErrorCode::invalid_argument,
                  "matmul: " + std::string(name()) + " needs prepare_weight()'s " +
                      std::to_string(tp.layout.bytes) + " bytes as w_packed (got " +
                      a.w_packed.str() + ")");
  }
};

/// The weight-only tensor-core kernels (skinny, medium, wgmma): bf16 / f16 x, weight-only SKU.
class TcWeightOnlyKernel : public TcLayoutKernel {
 public:
  KernelSku sku(const MatmulDesc& d) const override {
    return cuda_sku(d, weight_only_dtypes(d), name());
  }

 protected:
  /// "" when `d` is a weight-only product of bf16 / f16 x on a CUDA device with a kernel image
  /// (`probe`, one of the kernel's instantiations), else the reason.
  static std::string weight_only_decline(const MatmulDesc& d, const void* probe) {
    std::string why = cuda_device_decline(d, probe);
    if (!why.empty()) return why;
    if (d.x_scheme) return "weight-only kernel (x_scheme is set: W8A8)";
    if (d.x != Dtype::bf16 && d.x != Dtype::f16)
      return "x is " + std::string(dtype_name(d.x)) + "; the tensor-core operands are bf16 / f16";
    return {};
  }
};
/// Multiprocessors of `device` (cached: cudaGetDeviceProperties is slow).
int sm_count(int device);

/// 16 for bf16, f16; 32 for f32.
inline int dtype_bits(Dtype d) { return bit_width(d); }

// ---- cuBLASLt ---------------------------------------------------------------------------------

/// One cuBLASLt product D = op_T(A) * op_N(B) in column-major terms, which for lowbit's row-major
/// tensors is y[m][n] = sum_k x[m][k] * w[n][k]: A = w (k x n, ld lda), B = x (k x m, ld ldb),
/// D = y (n x m, ld ldd).
struct LtGemm {
  int device = 0;
  cudaDataType_t a_type = CUDA_R_16BF, b_type = CUDA_R_16BF, d_type = CUDA_R_16BF;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale_type = CUDA_R_32F;
  int64_t n = 0, m = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  int a_scale_mode = -1, b_scale_mode = -1;  ///< cublasLtMatmulMatrixScale_t, -1: none
  bool bias = false;
  cudaDataType_t bias_type = CUDA_R_16BF;
  int align = 256;  ///< the smallest alignment (bytes) of the pointers a call passes
  std::string key() const;
};

inline constexpr size_t kLtWorkspace = size_t{32} << 20;

/// Whether cuBLASLt has an algorithm for `g` on its device (cached); the reason if not.
bool lt_available(const LtGemm& g, std::string* why);
/// Runs `g`. alpha points to an f32 (int32 for CUBLAS_COMPUTE_32I) on the host.
void lt_run(const LtGemm& g, const void* a, const void* b, void* d, const void* bias,
            const void* a_scale, const void* b_scale, const void* alpha, void* workspace,
            size_t workspace_bytes, cudaStream_t stream);

cudaDataType_t cuda_type(Dtype d);

inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// ---- W8A8 activations -------------------------------------------------------------------------

/// Workspace bytes for x's codes and scales when the plan quantizes a float x (0 otherwise).
size_t x_quant_bytes(const MatmulDesc& d);
/// x as a quantized view: a.xq when x arrives quantized, else x quantized by the quantize op's
/// CUDA kernel (the reference's codes; check_finite off, so no synchronisation) into `ws`.
QuantizedView activations(const MatmulDesc& d, const MatmulArgs& a, void* ws, const Stream& stream);

}  // namespace lowbit::mm_cuda
