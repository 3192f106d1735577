// convert: cast a tensor from one float dtype to another, element by element.
//
// Every element goes through f32: src -> f32 is exact for every dtype but f64, and
// f32 -> dst rounds once to nearest even (numeric.hpp). f64 sources round to f32 first,
// as ml_dtypes and PyTorch do; f64 destinations are exact. Results are bit-identical on
// every backend. docs/numerics.md has the rules.
#pragma once

#include <string>
#include <string_view>

#include "lowbit/numeric.hpp"
#include "lowbit/plan.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

struct ConvertDesc {
  Shape shape;
  Dtype src = Dtype::f32;
  Dtype dst = Dtype::bf16;
  Device device = Device::cpu();
  Strides src_strides;  ///< in elements
  Strides dst_strides;
  Saturation saturation = Saturation::none;

  /// The descriptor of converting `src` into `dst` (their shapes, dtypes, strides, device).
  static ConvertDesc for_views(const TensorView& dst, const TensorView& src,
                               Saturation saturation = Saturation::none);
  bool src_contiguous() const;
  bool dst_contiguous() const;
  int64_t numel() const;
};

struct ConvertArgs {
  TensorView src;
  TensorView dst;
};

struct ConvertOp {
  static constexpr std::string_view name = "convert";
  using Desc = ConvertDesc;
  using Args = ConvertArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<ConvertOp> kernels();
};

using ConvertPlan = Plan<ConvertOp>;

/// One-liner: selects a plan and runs it. With a CUDA stream the work is queued on
/// it; without one, it runs on the device's default stream and is finished on return.
void convert(const TensorView& dst, const TensorView& src, Saturation saturation = Saturation::none,
             const Stream* stream = nullptr);

}  // namespace lowbit
