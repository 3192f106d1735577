// Placeholder until the cuda kernel lands: declines every descriptor.
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {
class Placeholder final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "quantize_cuda"; }
  std::string decline(const QuantizeDesc&) const override { return "not implemented yet"; }
  KernelSku sku(const QuantizeDesc&) const override { return {"quantize", Backend::cuda, "", "", "", "quantize_cuda"}; }
  PrecisionGuarantee precision(const QuantizeDesc&) const override { return {}; }
  void run(const QuantizeDesc&, const QuantizeArgs&, const Stream&, Workspace) const override {}
};
}  // namespace
const Kernel<QuantizeOp>& quantize_cuda_kernel() {
  static const Placeholder kernel;
  return kernel;
}
}  // namespace lowbit
