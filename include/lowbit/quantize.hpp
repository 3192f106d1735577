// quantize / dequantize / fake_quantize: plans and one-liners.
//
//   QuantizedTensor q = quantize(x, QuantScheme::parse("int4:block32:asym"));
//   Tensor y = dequantize(q, Dtype::bf16);
//
// Dynamic quantization computes scales from the data (the rules of docs/formats.md);
// static quantization (QuantizeDesc::given_scales) takes the scales and zero points already
// in the destination and only computes codes. Every kernel is bit-identical to the
// reference on every backend.
//
// Non-finite inputs: quantization refuses NaN and +-Inf with Error(invalid_argument) that
// names the first bad element's index (in row-major order of the logical shape): a NaN
// would otherwise poison a whole group's scale and give silently wrong finite codes.
#pragma once

#include <string>
#include <string_view>

#include "lowbit/check_report.hpp"
#include "lowbit/plan.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

// ---- quantize -------------------------------------------------------------------------------

struct QuantizeDesc {
  Shape shape;
  Dtype src = Dtype::f32;  ///< f32, f16, bf16 (f64: reference kernel only; rounds to f32 first)
  Strides src_strides;
  QuantScheme scheme;
  Device device = Device::cpu();
  bool given_scales = false;  ///< static: scale / zero / global_scale are inputs
  /// Refuse NaN / +-Inf inputs with an Error naming the first one (the default). On CUDA
  /// a checked run() waits for its kernels before it returns (every output is written
  /// then; the stream itself may still be retiring the last block, and a flagged call
  /// synchronises it before throwing); a caller that knows its inputs are finite may turn
  /// it off. What `false` changes depends on the kernel:
  ///  * quantize_cuda, gguf_quantize_cuda: no check runs at all and run() does not
  ///    synchronise. Non-finite inputs, invalid given scales / zero points / NVFP4 global
  ///    scales, and GGUF blocks whose f16 scale overflows all give unspecified (but
  ///    memory-safe) codes, no Error.
  ///  * quantize_simd, gguf_quantize_simd: non-finite inputs give unspecified (memory-safe)
  ///    codes, no Error. Invalid given scales / zero points / global scales and GGUF f16
  ///    scale overflow are still refused: the call goes to quantize_reference, which throws
  ///    (its NaN / Inf error, if the input also holds one).
  ///  * quantize_reference ignores the flag: it always refuses non-finite inputs, invalid
  ///    given scales and GGUF overflow. It also serves what the SIMD kernels decline on the
  ///    CPU (f64 or strided sources), so those calls refuse NaN / Inf even with
  ///    check_finite = false.
  /// (fake_quantize.hpp's check_finite means the same on every kernel: all checks or none.)
  bool check_finite = true;

  static QuantizeDesc for_views(const QuantizedView& dst, const TensorView& src,
                                bool given_scales = false);
};

struct QuantizeArgs {
  TensorView src;
  QuantizedView dst;
  /// With check_finite on a CUDA device: record a refused input here instead of waiting for
  /// the kernels (check_report.hpp); run() then returns as an unchecked call does. Null: a
  /// refused input throws from run(). CPU kernels throw at once either way.
  CheckReport* report = nullptr;
};

struct QuantizeOp {
  static constexpr std::string_view name = "quantize";
  using Desc = QuantizeDesc;
  using Args = QuantizeArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<QuantizeOp> kernels();
};
using QuantizePlan = Plan<QuantizeOp>;

// ---- dequantize -----------------------------------------------------------------------------

struct DequantizeDesc {
  QuantScheme scheme;
  Shape shape;
  Dtype dst = Dtype::f32;  ///< f32, f16, bf16 (or f64 on the reference)
  Device device = Device::cpu();

  static DequantizeDesc for_views(const TensorView& dst, const QuantizedView& src);
};

struct DequantizeArgs {
  QuantizedView src;
  TensorView dst;  ///< contiguous
};

struct DequantizeOp {
  static constexpr std::string_view name = "dequantize";
  using Desc = DequantizeDesc;
  using Args = DequantizeArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<DequantizeOp> kernels();
};
using DequantizePlan = Plan<DequantizeOp>;

// ---- one-liners -----------------------------------------------------------------------------

/// Quantizes `src` dynamically with `scheme` on src's device.
QuantizedTensor quantize(const TensorView& src, const QuantScheme& scheme);
/// Quantizes `src` into `dst`; with given_scales, dst's scales / zero points are used as is.
void quantize_into(const QuantizedView& dst, const TensorView& src, bool given_scales = false,
                   const Stream* stream = nullptr);
/// Dequantizes `src` to a new tensor of `dtype` on src's device.
Tensor dequantize(const QuantizedView& src, Dtype dtype = Dtype::f32);
void dequantize_into(const TensorView& dst, const QuantizedView& src,
                     const Stream* stream = nullptr);
/// quantize then dequantize (same dtype as src): what the scheme does to the values.
Tensor fake_quantize(const TensorView& src, const QuantScheme& scheme);

}  // namespace lowbit
