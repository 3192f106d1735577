// Placeholder until the Highway kernel lands: declines every descriptor.
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {
namespace {
class ConvertSimd final : public Kernel<ConvertOp> {
 public:
  std::string_view name() const override { return "convert_simd"; }
  std::string decline(const ConvertDesc&) const override { return "not implemented yet"; }
  KernelSku sku(const ConvertDesc&) const override { return {"convert", Backend::cpu, "", "", "", "convert_simd"}; }
  PrecisionGuarantee precision(const ConvertDesc&) const override { return {}; }
  void run(const ConvertDesc&, const ConvertArgs&, const Stream&, Workspace) const override {}
};
}  // namespace
const Kernel<ConvertOp>& convert_simd_kernel() {
  static const ConvertSimd kernel;
  return kernel;
}
}  // namespace lowbit
