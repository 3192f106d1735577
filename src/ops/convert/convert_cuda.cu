// Placeholder until the CUDA kernel lands: declines every descriptor.
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {
namespace {
class ConvertCuda final : public Kernel<ConvertOp> {
 public:
  std::string_view name() const override { return "convert_cuda"; }
  std::string decline(const ConvertDesc&) const override { return "not implemented yet"; }
  KernelSku sku(const ConvertDesc&) const override { return {"convert", Backend::cuda, "", "", "", "convert_cuda"}; }
  PrecisionGuarantee precision(const ConvertDesc&) const override { return {}; }
  void run(const ConvertDesc&, const ConvertArgs&, const Stream&, Workspace) const override {}
};
}  // namespace
const Kernel<ConvertOp>& convert_cuda_kernel() {
  static const ConvertCuda kernel;
  return kernel;
}
}  // namespace lowbit
