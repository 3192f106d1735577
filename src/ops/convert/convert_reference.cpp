// The reference convert kernel: one element at a time, any strides, on the CPU.
// It is the definition the other kernels are tested against.
#include <array>

#include "ops/convert/convert_element.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {
namespace {

class ConvertReference final : public Kernel<ConvertOp> {
 public:
  std::string_view name() const override { return "convert_reference"; }

  std::string decline(const ConvertDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    return {};
  }

  KernelSku sku(const ConvertDesc& d) const override {
    return {"convert", Backend::cpu, fmt_dtypes(d), "", "generic", std::string(name())};
  }

  PrecisionGuarantee precision(const ConvertDesc&) const override {
    return {"exact: one round-to-nearest-even per element (f64 sources via f32)", std::nullopt,
            true, true};
  }

  void run(const ConvertDesc& d, const ConvertArgs& a, const Stream&, Workspace) const override {
    const int nd = d.shape.size();
    std::array<int64_t, kMaxDims> idx{};
    const int64_t n = d.numel();
    uint8_t* packed_dst = is_packed(d.dst) ? static_cast<uint8_t*>(a.dst.data()) : nullptr;
    for (int64_t e = 0; e < n; ++e) {
      int64_t so = 0, dof = 0;
      for (int i = 0; i < nd; ++i) {
        so += idx[i] * d.src_strides[i];
        dof += idx[i] * d.dst_strides[i];
      }
      if (d.src == Dtype::f64 && d.dst == Dtype::f64) {
        a.dst.data_as<double>()[dof] = a.src.data_as<const double>()[so];  // exact copy
      } else {
        const float v = convert_detail::load_f32(a.src.data(), d.src, so);
        if (packed_dst) {
          const uint8_t code =
              static_cast<uint8_t>(convert_detail::encode_f32(v, d.dst, d.saturation));
          uint8_t& byte = packed_dst[dof >> 1];
          byte = (dof & 1) ? static_cast<uint8_t>((byte & 0x0f) | (code << 4))
                           : static_cast<uint8_t>((byte & 0xf0) | code);
        } else {
          convert_detail::store_f32(a.dst.data(), d.dst, dof, v, d.saturation);
        }
      }
      for (int i = nd - 1; i >= 0; --i) {
        if (++idx[i] < d.shape[i]) break;
        idx[i] = 0;
      }
    }
    // An odd count of packed elements leaves the last byte's high nibble unused: write 0.
    if (packed_dst && (n & 1)) packed_dst[n >> 1] &= 0x0f;
  }

 private:
  static std::string fmt_dtypes(const ConvertDesc& d) {
    return std::string(lowbit::dtype_name(d.src)) + "->" + std::string(lowbit::dtype_name(d.dst));
  }
};

}  // namespace

const Kernel<ConvertOp>& convert_reference_kernel() {
  static const ConvertReference kernel;
  return kernel;
}

}  // namespace lowbit
