// Plans: descriptor -> select -> can_implement -> workspace_size -> run.
//
// Each op (e.g. ConvertOp in convert.hpp) names a Desc (what to compute: shapes, dtypes,
// layouts, device), an Args (the tensors of one call) and an ordered list of kernels,
// most specialised first, reference last. select() walks that list; the first kernel
// that accepts the descriptor is chosen, and every kernel before it says why it declined
// (LOWBIT_VERBOSE=dispatch prints this). The op's list lives in the op's own file, so a
// new kernel is a new file plus one line there.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/device.hpp"
#include "lowbit/dtype.hpp"
#include "lowbit/error.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit {

enum class Backend : uint8_t { cpu, cuda };
std::string_view to_string(Backend backend);

/// A kernel's identity: enough to tell two kernels (and two instantiations) apart.
struct KernelSku {
  std::string op;  ///< "convert"
  Backend backend = Backend::cpu;
  std::string dtypes;  ///< "f32->bf16"
  std::string scheme;  ///< quantization scheme text, "" if the op has none
  std::string arch;    ///< "generic", "avx512", "sm_90", ...
  std::string kernel;  ///< "convert_cuda_vec16"
  /// "convert/cuda/f32->bf16/sm_90/convert_cuda_vec16" (scheme inserted when present).
  std::string str() const;
};

/// What a kernel promises about its numbers.
struct PrecisionGuarantee {
  std::string math;                  ///< e.g. "exact: one RNE rounding per element"
  std::optional<Dtype> accumulator;  ///< the accumulation dtype of reductions, if any
  bool deterministic = true;         ///< same inputs give the same bits on every run
  bool bit_stable = true;            ///< bit-identical to the op's reference kernel
  std::string str() const;
};

/// Caller's wishes that narrow selection.
struct Preference {
  /// If non-empty, only the kernel with exactly this name may be chosen (tests, benchmarks).
  std::string kernel;
  bool require_deterministic = false;
  bool require_bit_stable = false;
};

/// Scratch memory on the plan's device, at least workspace_size() bytes.
struct Workspace {
  void* data = nullptr;
  std::size_t size = 0;
};

/// One kernel that may implement an op.
template <class Op>
class Kernel {
 public:
  using Desc = typename Op::Desc;
  using Args = typename Op::Args;
  virtual ~Kernel() = default;
  virtual std::string_view name() const = 0;
  /// Empty if this kernel implements `desc`; otherwise the reason it does not.
  virtual std::string decline(const Desc& desc) const = 0;
  virtual KernelSku sku(const Desc& desc) const = 0;
  virtual PrecisionGuarantee precision(const Desc& desc) const = 0;
  virtual std::size_t workspace_size(const Desc& desc) const { return 0; }
  /// Runs on arguments already validated against `desc`.
  virtual void run(const Desc& desc, const Args& args, const Stream& stream,
                   Workspace workspace) const = 0;
};

template <class Op>
using KernelList = std::span<const Kernel<Op>* const>;

/// A kernel that declined a descriptor, and why.
struct Declined {
  std::string kernel;
  std::string reason;
};

namespace plan_detail {
/// True if LOWBIT_VERBOSE contains `category` (comma-separated list, or "all").
bool verbose(std::string_view category);
void log_dispatch(std::string_view op, const std::string& desc, std::string_view chosen,
                  const KernelSku& sku, const std::vector<Declined>& declined);
[[noreturn]] void throw_no_kernel(std::string_view op, const std::string& desc,
                                  const std::vector<Declined>& declined);
}  // namespace plan_detail

/// A chosen kernel for one descriptor. Cheap to copy; reusable for many calls.
///
/// Op must provide: `static constexpr std::string_view name`; `using Desc, Args`;
/// `static void validate(const Desc&)` (throws invalid_argument for malformed descriptors);
/// `static void check_args(const Desc&, const Args&)` (throws if args do not match desc);
/// `static std::string describe(const Desc&)`; `static KernelList<Op> kernels()`.
template <class Op>
class Plan {
 public:
  using Desc = typename Op::Desc;
  using Args = typename Op::Args;

  /// Picks the first kernel in Op's list that implements `desc` and meets `pref`.
  /// Throws Error(invalid_argument) for a malformed descriptor and Error(unsupported),
  /// listing every kernel's reason, when none fits.
  static Plan select(const Desc& desc, const Preference& pref = {}) {
    Op::validate(desc);
    std::vector<Declined> declined;
    for (const Kernel<Op>* k : Op::kernels()) {
      std::string why;
      if (!pref.kernel.empty() && k->name() != pref.kernel) {
        why = "not the requested kernel '" + pref.kernel + "'";
      } else {
        why = k->decline(desc);
        if (why.empty() && (pref.require_deterministic || pref.require_bit_stable)) {
          const PrecisionGuarantee p = k->precision(desc);
          if (pref.require_deterministic && !p.deterministic) why = "not deterministic";
          if (pref.require_bit_stable && !p.bit_stable) why = "not bit-stable";
        }
      }
      if (why.empty()) {
        Plan plan(desc, k, std::move(declined));
        if (plan_detail::verbose("dispatch"))
          plan_detail::log_dispatch(Op::name, Op::describe(desc), k->name(), plan.sku_,
                                    plan.declined_);
        return plan;
      }
      declined.push_back({std::string(k->name()), std::move(why)});
    }
    plan_detail::throw_no_kernel(Op::name, Op::describe(desc), declined);
  }

  /// Throws Error(invalid_argument) naming the argument if `args` do not fit this plan.
  void can_implement(const Args& args) const { Op::check_args(desc_, args); }
  std::size_t workspace_size() const { return kernel_->workspace_size(desc_); }
  /// Validates `args` (cheap) and runs the kernel on `stream`.
  void run(const Stream& stream, Workspace workspace, const Args& args) const {
    Op::check_args(desc_, args);
    if (workspace.size < workspace_size())
      throw_error(ErrorCode::invalid_argument,
                  std::string(Op::name) + ": workspace of " + std::to_string(workspace.size) +
                      " bytes < workspace_size() " + std::to_string(workspace_size()));
    kernel_->run(desc_, args, stream, workspace);
  }

  const Desc& desc() const { return desc_; }
  /// The chosen kernel (ops with kernel-specific extras, like matmul's weight layouts).
  const Kernel<Op>& kernel() const { return *kernel_; }
  const KernelSku& sku() const { return sku_; }
  PrecisionGuarantee precision() const { return kernel_->precision(desc_); }
  /// The kernels tried before the chosen one, with their reasons.
  const std::vector<Declined>& declined() const { return declined_; }

 private:
  Plan(const Desc& desc, const Kernel<Op>* kernel, std::vector<Declined> declined)
      : desc_(desc), kernel_(kernel), sku_(kernel->sku(desc)), declined_(std::move(declined)) {}
  Desc desc_;
  const Kernel<Op>* kernel_;
  KernelSku sku_;
  std::vector<Declined> declined_;
};

/// Runs `plan` the way the one-liners do: on `stream` when one is given (the caller
/// synchronises), otherwise on `device`'s default stream, waiting for the result. Scratch
/// memory of workspace_size() bytes is allocated on the device (stream-ordered on CUDA).
template <class Op>
void run_plan(const Plan<Op>& plan, Device device, const Stream* stream,
              const typename Op::Args& args) {
  const Stream fallback = stream ? Stream() : Stream::default_for(device);
  const Stream& s = stream ? *stream : fallback;
  Buffer scratch;
  Workspace workspace;
  if (const std::size_t bytes = plan.workspace_size(); bytes > 0) {
    scratch = Buffer(static_cast<int64_t>(bytes), device, &s);
    workspace = {scratch.data(), bytes};
  }
  plan.run(s, workspace, args);
  if (!stream) s.synchronize();
}

}  // namespace lowbit
