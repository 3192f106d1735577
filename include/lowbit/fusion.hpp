// Element-wise fusion: an expression over tensors, evaluated in one pass over memory.
//
//   using namespace lowbit::fusion;
//   Expr a = input(x), b = input(y);           // TensorViews: any dtype, broadcastable
//   lowbit::fuse({{out, silu(a * 1.25 + b) * b}});         // one kernel, one pass
//   lowbit::fuse({{out1, relu(a) + b}, {out2, maximum(a, b)}});  // several outputs
//   QuantizedTensor q = QuantizedTensor::allocate(QuantScheme::parse("fp8e4m3:token"), shape, dev);
//   lowbit::fuse({{q.view(), silu(a) * b}});   // quantize epilogue: row scales in the same pass
//
// On CUDA the expression becomes a small kernel compiled at run time with NVRTC and kept
// in an in-memory and an on-disk cache; on the CPU one tiled pass evaluates it. Both run
// the same f32 formulas, so they give the same bits (docs/jit.md; the exceptions are
// transcendental functions of f64 values, where libm and CUDA's libdevice may differ in
// the last place).
//
// Types follow PyTorch's promotion: bf16 + f16 -> f32, f16 + f32 -> f32, int + float ->
// the float, a float scalar keeps a tensor's float dtype (x_bf16 * 0.5 is bf16) and makes
// an integer tensor f32. Math runs in f32 for every dtype narrower than f32 (intermediate
// values are not rounded to bf16 between ops: "opmath", as torch.compile does) and in
// f64 for f64 and integer values. An output tensor of another dtype than its expression
// receives the value converted as convert() would (one rounding, numeric.hpp's rules).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/check_report.hpp"
#include "lowbit/dtype.hpp"
#include "lowbit/plan.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {
namespace fusion {

/// What an expression node computes.
enum class Op : uint8_t {
  input,     ///< an input tensor
  constant,  ///< a scalar
  add,
  sub,
  mul,
  div,  ///< true division (int / int is f32)
  neg,
  abs,
  minimum,  ///< NaN-propagating, as torch.minimum
  maximum,
  clamp,  ///< clamp(x, lo, hi) = minimum(maximum(x, lo), hi)
  where,  ///< where(cond, a, b): a where cond != 0 (NaN counts as true)
  lt,
  le,
  gt,
  ge,
  eq,
  ne,
  exp,
  log,
  sqrt,
  rsqrt,
  tanh,
  sigmoid,
  relu,
  leaky_relu,  ///< x > 0 ? x : slope * x
  gelu,        ///< x/2 (1 + erf(x / sqrt 2))
  gelu_tanh,   ///< x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  silu,
  softplus,  ///< log(1 + exp(x)), x itself above 20 (PyTorch's threshold)
  pow,       ///< x ^ p for a constant p
  cast,      ///< round to a dtype (numeric.hpp's rules; to integers: truncate, saturate)
};
std::string_view op_name(Op op);

struct Node;  // the graph's nodes (src/jit/jit.hpp)

/// One value of an element-wise expression: an input tensor, a scalar, or an op applied
/// to other expressions. Cheap to copy (a shared pointer to an immutable node).
class Expr {
 public:
  Expr(double value);  ///< a float scalar: takes the dtype of the tensors it meets
  Expr(int value);     ///< an integer scalar
  explicit Expr(std::shared_ptr<const Node> node);

  Op op() const;
  /// The promoted dtype of the value (bool results of comparisons read as u8).
  Dtype dtype() const;
  bool is_bool() const;    ///< a comparison result
  bool is_scalar() const;  ///< a constant (scalars fold: 2.0 * 3.0 is the scalar 6)
  /// The expression as text, e.g. "mul(silu(in0:bf16), in1:bf16):bf16".
  std::string str() const;
  const std::shared_ptr<const Node>& node() const { return node_; }

 private:
  std::shared_ptr<const Node> node_;
};

/// An input tensor. Its dtype may be any float dtype or i8, u8, i16, i32, u32; its shape
/// broadcasts against the outputs' shape (right-aligned, extent 1 stretches); any strides.
Expr input(const TensorView& view);

Expr add(const Expr& a, const Expr& b);
Expr sub(const Expr& a, const Expr& b);
Expr mul(const Expr& a, const Expr& b);
Expr div(const Expr& a, const Expr& b);
Expr neg(const Expr& x);
Expr abs(const Expr& x);
Expr minimum(const Expr& a, const Expr& b);
Expr maximum(const Expr& a, const Expr& b);
Expr clamp(const Expr& x, const Expr& lo, const Expr& hi);
Expr where(const Expr& cond, const Expr& a, const Expr& b);
Expr lt(const Expr& a, const Expr& b);
Expr le(const Expr& a, const Expr& b);
Expr gt(const Expr& a, const Expr& b);
Expr ge(const Expr& a, const Expr& b);
Expr eq(const Expr& a, const Expr& b);
Expr ne(const Expr& a, const Expr& b);
Expr exp(const Expr& x);
Expr log(const Expr& x);
Expr sqrt(const Expr& x);
Expr rsqrt(const Expr& x);
Expr tanh(const Expr& x);
Expr sigmoid(const Expr& x);
Expr relu(const Expr& x);
Expr leaky_relu(const Expr& x, double slope = 0.01);
/// approximate: "none" (erf) or "tanh", as torch.nn.functional.gelu.
Expr gelu(const Expr& x, std::string_view approximate = "none");
Expr silu(const Expr& x);
Expr softplus(const Expr& x);
Expr pow(const Expr& x, double exponent);
Expr scale(const Expr& x, double factor);  ///< x * factor
Expr cast(const Expr& x, Dtype dtype);

inline Expr operator+(const Expr& a, const Expr& b) { return add(a, b); }
inline Expr operator-(const Expr& a, const Expr& b) { return sub(a, b); }
inline Expr operator*(const Expr& a, const Expr& b) { return mul(a, b); }
inline Expr operator/(const Expr& a, const Expr& b) { return div(a, b); }
inline Expr operator-(const Expr& x) { return neg(x); }
inline Expr operator<(const Expr& a, const Expr& b) { return lt(a, b); }
inline Expr operator<=(const Expr& a, const Expr& b) { return le(a, b); }
inline Expr operator>(const Expr& a, const Expr& b) { return gt(a, b); }
inline Expr operator>=(const Expr& a, const Expr& b) { return ge(a, b); }

/// Optional: starts NVRTC on a background thread (once per process) so that the first
/// CUDA kernel this process compiles does not pay NVRTC's start-up (most of a cold
/// compile: docs/jit.md, "Costs"). Call it early, e.g. while a model loads; a compile that
/// comes while the warm-up runs waits for it. Returns at once; nothing happens in builds
/// without NVRTC.
void warm_up();

struct Program;  // an expression compiled for evaluation (src/jit/jit.hpp)
struct PlanState;

}  // namespace fusion

/// One output of a fused expression: the tensor it is written to, and its value.
///
/// Quantize epilogue: with a QuantizedView as the destination, the expression's value
/// (rounded to the expression's dtype, which must be f32, f16, bf16 or f64, as if it had
/// been stored) is quantized with dst.scheme in the same pass, scales computed from the
/// values: the bits quantize() gives on the unfused result. Schemes with row-local groups:
/// int8 / uint8 / int4 / uint4 and fp8e4m3 / fp8e5m2 per token or per block along the
/// last axis (any scale dtype, symmetric or affine), mxfp4, mxfp8e4m3, mxfp8e5m2; and
/// nvfp4, whose global scale needs the whole tensor's absmax first: the expression is
/// evaluated twice (on CUDA a statistics kernel, then the row kernel; the plan's
/// workspace_size() holds the absmax word). A call has at most one quantized output; other
/// outputs beside it (not packed 4-bit dtypes) are stored by the same pass (nvfp4: by its
/// second), e.g. a residual sum kept in bf16 and its activation quantized. On a refusal they
/// may be partly written.
/// Non-finite values are refused with Error(invalid_argument) naming the first one, as quantize()
/// does, unless check_finite is false (the CUDA check costs a stream synchronisation; then such
/// values give unspecified codes).
struct FusedOutput {
  FusedOutput(TensorView dst_, fusion::Expr value_)
      : dst(std::move(dst_)), value(std::move(value_)) {}
  FusedOutput(const QuantizedView& dst_, fusion::Expr value_, bool check_finite_ = true)
      : value(std::move(value_)), quantized(true), qdst(dst_), check_finite(check_finite_) {}

  TensorView dst;  ///< empty for a quantized output
  fusion::Expr value;
  bool quantized = false;
  QuantizedView qdst;  ///< the quantized output's parts
  bool check_finite = true;
};

/// Dtype, shape and strides of one operand of a fused expression.
struct FusedOperand {
  Dtype dtype = Dtype::f32;
  Shape shape;
  Strides strides;
};

struct FusedArgs {
  std::vector<TensorView> inputs;   ///< in FusedDesc::inputs order
  std::vector<TensorView> outputs;  ///< in FusedDesc::outputs order (the quantized one: unused)
  QuantizedView quantized;          ///< the quantized output's parts, if the plan has one
  /// With a checked quantize epilogue on a CUDA device: record a refused input here instead
  /// of waiting for the kernel (check_report.hpp). Null: a refused input throws from run().
  CheckReport* report = nullptr;
};

struct FusedDesc {
  /// The expression in evaluation order (shared, immutable).
  std::shared_ptr<const fusion::Program> program;
  /// The inputs, in order of first use (outputs left to right, operands depth first).
  std::vector<FusedOperand> inputs;
  std::vector<FusedOperand> outputs;
  Shape shape;  ///< every output's shape: the iteration space
  Device device = Device::cpu();
  /// The quantize epilogue: the output quantized with `scheme` (its FusedOperand is the
  /// expression's value, contiguous, never stored), or -1.
  int quantized_output = -1;
  QuantScheme scheme;
  bool check_finite = true;
  /// Opt-in approximate math on CUDA (hardware exp2 and division, contracted multiply-adds;
  /// docs/jit.md gives the error bounds): faster where the exact kernel is bound by its
  /// arithmetic, but not bit-identical to the CPU kernel (the plan's precision says so).
  /// The CPU kernel stays exact. Set it before the first run of a plan.
  bool fast_math = false;
  /// Per-plan memory of compiled kernels (shared by copies of this descriptor).
  std::shared_ptr<fusion::PlanState> state;

  /// The descriptor of writing `outputs`: checks shapes, broadcasting, devices, dtypes.
  static FusedDesc make(const std::vector<FusedOutput>& outputs);
  /// The tensors the expression was built from, for running the plan on them.
  FusedArgs bound_args() const;
  int64_t numel() const;
};

struct FusedOp {
  static constexpr std::string_view name = "fused";
  using Desc = FusedDesc;
  using Args = FusedArgs;
  static void validate(const Desc& desc);
  static void check_args(const Desc& desc, const Args& args);
  static std::string describe(const Desc& desc);
  static KernelList<FusedOp> kernels();
};

using FusedPlan = Plan<FusedOp>;

/// One-liner: evaluates every output's expression in one pass and writes it to its
/// tensor. With a CUDA stream the work is queued on it; without one, it runs on the
/// device's default stream and is finished on return. `fast_math`: FusedDesc::fast_math
/// (approximate exp / sigmoid / silu and contraction where the kernel has them; docs/jit.md).
void fuse(const std::vector<FusedOutput>& outputs, const Stream* stream = nullptr,
          bool fast_math = false);

}  // namespace lowbit
