// matmul: y[M, N] = x[M, K] · dequant(W)[N, K]^T (+ bias[N]).
//
//   Tensor y = matmul(x, w.view());                 // one-liner (prepares the weight per call)
//   QuantizedLinear layer(std::move(w));            // caches plans and prepared weights
//   Tensor y = layer(x);
//
// Two families share the op:
//  * weight-only: x is f32 / f16 / bf16; W is any quantized scheme; the kernel dequantizes
//    W on the fly and accumulates in f32.
//  * W8A8: x is quantized too (MatmulDesc::x_scheme set). Either x arrives quantized
//    (MatmulArgs::xq, desc.x = its code dtype), or x arrives as floats and the plan
//    quantizes it dynamically in front (desc.x float, the codes go to the workspace).
//    int8 x int8 accumulates in i32, fp8 x fp8 in f32; scales are applied in the epilogue.
//
// Weight layout: a kernel may want W repacked (interleaved nibbles, tensor-core fragment
// order, ...). It says so through weight_layout(plan) != "plain"; prepare_weight() then
// writes prepared_bytes(plan) bytes once, offline, and run() takes them in
// MatmulArgs::w_packed. The on-disk form stays plain.
//
// Precision: the reference dequantizes W (and a quantized x) with the dequantize op's rules
// to f32, then multiplies and accumulates in f64 and rounds once to y's dtype. Fast
// kernels accumulate in f32 (i32 for int8 x int8), in a fixed order: deterministic, not
// bit-identical to the reference. docs/matmul.md states each kernel's order and the
// tolerances the tests hold them to.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "lowbit/plan.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

struct MatmulDesc {
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  /// Activation dtype: f32, f16 or bf16 (float x); with x_scheme and a quantized x, the
  /// scheme's code dtype (i8, f8e4m3fn, f8e5m2).
  Dtype x = Dtype::bf16;
  /// W8A8: the scheme of the quantized activations (e.g. int8:token, fp8e4m3:token,
  /// fp8e4m3:tensor, fp8e4m3:block128). Empty: weight-only.
  std::optional<QuantScheme> x_scheme;
  QuantScheme w;             ///< the weight's scheme; W's logical shape is [n, k]
  Dtype y = Dtype::bf16;     ///< f32, f16 or bf16
  bool bias = false;         ///< bias [n] of dtype y
  int64_t x_row_stride = 0;  ///< elements between rows of a float x (0: k)
  int64_t y_row_stride = 0;  ///< elements between rows of y (0: n)
  Device device = Device::cpu();

  /// True when x arrives quantized (xq) rather than as floats.
  bool x_quantized() const {
    return x_scheme.has_value() && x != Dtype::f32 && x != Dtype::f16 && x != Dtype::bf16;
  }
  int64_t x_stride() const { return x_row_stride ? x_row_stride : k; }
  int64_t y_stride() const { return y_row_stride ? y_row_stride : n; }

  /// Weight-only: y = x · dequant(w)^T (+ bias).
  static MatmulDesc for_views(const TensorView& y, const TensorView& x, const QuantizedView& w,
                              bool bias = false);
  /// W8A8 with an already quantized x.
  static MatmulDesc for_views(const TensorView& y, const QuantizedView& xq, const QuantizedView& w,
                              bool bias = false);
};

struct MatmulArgs {
  TensorView x;         ///< [m, k] float x (weight-only, or W8A8 quantized by the plan)
  QuantizedView xq;     ///< [m, k] quantized x (W8A8 with desc.x_quantized())
  QuantizedView w;      ///< [n, k] plain layout (only scheme and shape used when packed)
  TensorView w_packed;  ///< u8 [prepared_bytes]: the kernel's own layout; empty if plain
  TensorView bias;      ///< [n] of dtype y, or empty
  TensorView y;         ///< [m, n], rows y_stride() apart
};

struct MatmulOp {
  static constexpr std::string_view name = "matmul";
  using Desc = MatmulDesc;
  using Args = MatmulArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<MatmulOp> kernels();
};
using MatmulPlan = Plan<MatmulOp>;

/// Every matmul kernel derives from this: a Kernel<MatmulOp> that may want its own
/// weight layout.
class MatmulKernel : public Kernel<MatmulOp> {
 public:
  /// "plain" (reads MatmulArgs::w as the quantize op wrote it) or the name of its layout.
  virtual std::string weight_layout(const MatmulDesc&) const { return "plain"; }
  virtual int64_t prepared_bytes(const MatmulDesc&) const { return 0; }
  /// Writes prepared_bytes() bytes of the kernel's layout of `w` into `packed` (u8, on the
  /// plan's device).
  virtual void prepare(const MatmulDesc&, const QuantizedView& /*w*/, const TensorView& /*packed*/,
                       const Stream&) const {}
};

/// The layout `plan`'s kernel reads W in ("plain" or its own).
std::string weight_layout(const MatmulPlan& plan);
/// Bytes of the prepared weight `plan` wants (0 for the plain layout).
int64_t prepared_bytes(const MatmulPlan& plan);
/// Repacks `w` into `packed` for `plan` (nothing to do for the plain layout). Without a
/// stream it runs on the device's default stream and waits.
void prepare_weight(const MatmulPlan& plan, const QuantizedView& w, const TensorView& packed,
                    const Stream* stream = nullptr);

// ---- one-liners -----------------------------------------------------------------------------

/// y = x · dequant(w)^T (+ bias) for x of shape [..., K] (rows contiguous); y has x's
/// leading shape, N columns and x's dtype unless `y_dtype` says otherwise. Prepares the
/// weight per call when the chosen kernel wants its own layout: use QuantizedLinear to
/// prepare once.
Tensor matmul(const TensorView& x, const QuantizedView& w, const TensorView* bias = nullptr,
              std::optional<Dtype> y_dtype = std::nullopt);
/// The same into an existing y.
void matmul_into(const TensorView& y, const TensorView& x, const QuantizedView& w,
                 const TensorView* bias = nullptr, const Stream* stream = nullptr);

/// A linear layer over a quantized weight: picks a plan per (M, x dtype), prepares the
/// weight once per layout and keeps it. Thread-safe.
class QuantizedLinear {
 public:
  explicit QuantizedLinear(QuantizedTensor w, std::optional<Tensor> bias = std::nullopt);
  /// y = x · dequant(W)^T (+ bias); x of shape [..., K] on the weight's device.
  Tensor operator()(const TensorView& x, std::optional<Dtype> y_dtype = std::nullopt) const;
  /// The plan a call with `m` rows of `x_dtype` would use.
  MatmulPlan plan_for(int64_t m, Dtype x_dtype, std::optional<Dtype> y_dtype = std::nullopt) const;
  const QuantizedTensor& weight() const { return w_; }

 private:
  const TensorView& packed_for(const MatmulPlan& plan) const;
  QuantizedTensor w_;
  std::optional<Tensor> bias_;
  mutable std::mutex mu_;
  mutable std::map<std::string, Tensor> packed_;  // layout name -> prepared bytes
};

}  // namespace lowbit
