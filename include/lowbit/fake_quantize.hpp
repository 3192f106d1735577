// fake_quantize and its backward: plans and one-liners (docs/formats.md, "Fake quantization
// and its gradients", is the specification).
//
//   Tensor y = fake_quantize(x, QuantScheme::parse("int8:channel"), scale);   // static
//   FakeQuantizeGrads g = fake_quantize_backward(dy, x, scheme, scale, {}, {.scale_grad = true});
//
// The forward computes y = dequantize(quantize(x)) in one pass for the integer schemes
// (int8 / uint8 / int4 / uint4, symmetric or affine, per tensor / channel / token / block)
// and fp8 (e4m3fn, e5m2; also 2-D tiles), with given (static) scales or scales computed
// from the data exactly as quantize computes them. It is bit-identical to running the
// quantize op and then the dequantize op (y in dst's dtype, scales and zero points too).
//
// The backward takes dy, x and the scales (and zero points) the forward used and gives:
//  * dx = dy where the element is inside the code range (qmin <= rne(x * inv_scale) + zero
//    <= qmax; fp8: |x * inv_scale| <= max finite), a zero of dy's sign elsewhere: the
//    straight-through estimator, bit for bit torch.fake_quantize_per_*_affine's gradient;
//  * optionally dscale (LSQ, Esser et al. 2019) and dzero, per scale group, f32: the
//    per-element products (exact in f64) on a grid of 2^-61 of the group's bound, summed
//    exactly in integers and rounded once (so the same bits on every kernel, thread count
//    and run), optionally times LSQ's gradient scale 1 / sqrt(n_group * qmax).
//
// Non-finite inputs: with check_finite (the default) NaN / Inf in x (and dy) and invalid
// given scales / zero points are an Error(invalid_argument) that names the first bad
// element / group, on every backend (CUDA synchronises the stream for it). Without it
// nothing is checked on any backend and nothing is synchronised; such inputs give
// unspecified (but memory-safe) values.
#pragma once

#include <string>
#include <string_view>

#include "lowbit/check_report.hpp"
#include "lowbit/plan.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

// ---- forward --------------------------------------------------------------------------------

struct FakeQuantizeDesc {
  Shape shape;
  Dtype src = Dtype::f32;  ///< f32, f16, bf16 (f64: reference kernel only; rounds to f32 first)
  Strides src_strides;     ///< any strides on the reference kernel; contiguous elsewhere
  Dtype dst = Dtype::f32;  ///< f32, f16, bf16 (f64: reference kernel only); dst is contiguous
  QuantScheme scheme;      ///< int8 / uint8 / int4 / uint4 / fp8e4m3 / fp8e5m2, any granularity
  Device device = Device::cpu();
  /// Static: scale (and zero) are inputs. Dynamic: they are outputs, computed from the data
  /// with quantize's rules (docs/formats.md) and written like quantize writes them.
  bool given_scales = false;
  /// Refuse NaN / Inf in src and invalid given scales / zero points (see the file comment).
  bool check_finite = true;

  static FakeQuantizeDesc for_views(const TensorView& dst, const TensorView& src,
                                    const QuantScheme& scheme, bool given_scales = false);
};

struct FakeQuantizeArgs {
  TensorView src;
  TensorView dst;    ///< same shape as src, desc.dst dtype, contiguous
  TensorView scale;  ///< scale_shape(scheme, shape), the scheme's scale dtype (fp8: f32)
  TensorView zero;   ///< i32, like scale: affine integer schemes only (else left empty)
  /// With check_finite on a CUDA device: record a refused input here instead of waiting for
  /// the kernels (check_report.hpp). Null: a refused input throws from run().
  CheckReport* report = nullptr;
};

struct FakeQuantizeOp {
  static constexpr std::string_view name = "fake_quantize";
  using Desc = FakeQuantizeDesc;
  using Args = FakeQuantizeArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<FakeQuantizeOp> kernels();
};
using FakeQuantizePlan = Plan<FakeQuantizeOp>;

// ---- backward -------------------------------------------------------------------------------

struct FakeQuantizeBackwardDesc {
  Shape shape;
  Dtype x = Dtype::f32;   ///< f32, f16, bf16 (f64: reference kernel only)
  Strides x_strides;      ///< any strides on the reference kernel; contiguous elsewhere
  Dtype dy = Dtype::f32;  ///< f32, f16, bf16 (f64: reference only); dx has dy's dtype
  Strides dy_strides;
  QuantScheme scheme;
  Device device = Device::cpu();
  bool scale_grad = false;  ///< compute dscale (f32, the scale's shape)
  bool zero_grad = false;   ///< compute dzero (f32, the zero point's shape; affine only)
  /// Multiply dscale and dzero by LSQ's g = 1 / sqrt(n_group * qmax) (fp8: qmax = the
  /// format's largest finite value), n_group the number of elements in the group.
  bool lsq_grad_scale = false;
  bool check_finite = true;  ///< refuse NaN / Inf in x or dy, invalid scales / zero points

  static FakeQuantizeBackwardDesc for_views(const TensorView& dx, const TensorView& dy,
                                            const TensorView& x, const QuantScheme& scheme,
                                            bool scale_grad = false, bool zero_grad = false);
};

struct FakeQuantizeBackwardArgs {
  TensorView dy;
  TensorView x;
  TensorView scale;   ///< the scales the forward used (scheme's scale dtype)
  TensorView zero;    ///< i32 zero points (affine schemes)
  TensorView dx;      ///< contiguous, dy's dtype and shape
  TensorView dscale;  ///< f32, scale's shape, contiguous: only with desc.scale_grad
  TensorView dzero;   ///< f32, scale's shape, contiguous: only with desc.zero_grad
  /// As FakeQuantizeArgs::report.
  CheckReport* report = nullptr;
};

struct FakeQuantizeBackwardOp {
  static constexpr std::string_view name = "fake_quantize_backward";
  using Desc = FakeQuantizeBackwardDesc;
  using Args = FakeQuantizeBackwardArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<FakeQuantizeBackwardOp> kernels();
};
using FakeQuantizeBackwardPlan = Plan<FakeQuantizeBackwardOp>;

// ---- one-liners -----------------------------------------------------------------------------
// (quantize.hpp's fake_quantize(src, scheme) is the dynamic one-liner over quantize +
// dequantize; it gives the same values as these.)

/// y = fake_quantize(src) into dst. With given_scales, scale / zero are inputs; otherwise
/// they receive the computed scales and zero points.
void fake_quantize_into(const TensorView& dst, const TensorView& src, const QuantScheme& scheme,
                        const TensorView& scale, const TensorView& zero, bool given_scales,
                        const Stream* stream = nullptr);
/// Static fake quantization with the given scale (and zero points for affine schemes);
/// the result has src's dtype and device.
Tensor fake_quantize(const TensorView& src, const QuantScheme& scheme, const TensorView& scale,
                     const TensorView& zero = {});

struct FakeQuantizeBackwardOptions {
  bool scale_grad = false;
  bool zero_grad = false;
  bool lsq_grad_scale = false;
};

struct FakeQuantizeGrads {
  Tensor dx;      ///< dy's dtype and shape
  Tensor dscale;  ///< f32, the scale's shape (empty unless scale_grad)
  Tensor dzero;   ///< f32, the scale's shape (empty unless zero_grad)
};

void fake_quantize_backward_into(const FakeQuantizeBackwardArgs& args, const QuantScheme& scheme,
                                 bool lsq_grad_scale = false, const Stream* stream = nullptr);
FakeQuantizeGrads fake_quantize_backward(const TensorView& dy, const TensorView& x,
                                         const QuantScheme& scheme, const TensorView& scale,
                                         const TensorView& zero = {},
                                         const FakeQuantizeBackwardOptions& options = {});

}  // namespace lowbit
