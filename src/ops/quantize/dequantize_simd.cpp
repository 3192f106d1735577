// Placeholder until the cpu kernel lands: declines every descriptor.
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {
class Placeholder final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "dequantize_simd"; }
  std::string decline(const DequantizeDesc&) const override { return "not implemented yet"; }
  KernelSku sku(const DequantizeDesc&) const override { return {"dequantize", Backend::cpu, "", "", "", "dequantize_simd"}; }
  PrecisionGuarantee precision(const DequantizeDesc&) const override { return {}; }
  void run(const DequantizeDesc&, const DequantizeArgs&, const Stream&, Workspace) const override {}
};
}  // namespace
const Kernel<DequantizeOp>& dequantize_simd_kernel() {
  static const Placeholder kernel;
  return kernel;
}
}  // namespace lowbit
