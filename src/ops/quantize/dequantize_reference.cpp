// The reference dequantize kernel: each element from its code and its group's scale, on
// the CPU, in f32, then rounded once to the destination dtype.
#include <vector>

#include "formats/groups.hpp"
#include "formats/quant_math.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

uint32_t get_nibble(const uint8_t* codes, int64_t i) {
  return (codes[i >> 1] >> ((i & 1) * 4)) & 0xfu;
}

class DequantizeReference final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "dequantize_reference"; }
  std::string decline(const DequantizeDesc& d) const override {
    return d.device.is_cpu() ? std::string() : std::string("runs on the cpu only");
  }
  KernelSku sku(const DequantizeDesc& d) const override {
    return {"dequantize",   Backend::cpu, std::string(dtype_name(d.dst)),
            d.scheme.str(), "generic",    std::string(name())};
  }
  PrecisionGuarantee precision(const DequantizeDesc&) const override {
    return {"the rules of docs/formats.md in f32, one rounding to the destination", std::nullopt,
            true, true};
  }

  void run(const DequantizeDesc& d, const DequantizeArgs& a, const Stream&,
           Workspace) const override {
    const QuantScheme& s = d.scheme;
    const QuantizedView& q = a.src;
    const int64_t n = numel(d.shape);
    const auto* codes = static_cast<const uint8_t*>(q.codes.data());
    auto store = [&](int64_t i, float v) {
      convert_detail::store_f32(a.dst.data(), d.dst, i, v, Saturation::none);
    };
    if (s.format == QuantFormat::gguf) {
      const auto type = static_cast<gguf::GgmlType>(s.gguf_type);
      const int64_t k = d.shape[d.shape.size() - 1];
      const int64_t rb = gguf::row_bytes(type, k);
      std::vector<float> row(static_cast<size_t>(k));
      for (int64_t r = 0; k > 0 && r < n / k; ++r) {
        gguf::dequantize_row_reference(type, codes + r * rb, row.data(), k);
        for (int64_t j = 0; j < k; ++j) store(r * k + j, row[static_cast<size_t>(j)]);
      }
      return;
    }
    const formats::GroupMap gm = formats::GroupMap::make(s, d.shape);
    auto scale_f32 = [&](int64_t g) {
      return convert_detail::load_f32(q.scale.data(), q.scale.dtype(), g);
    };
    switch (s.format) {
      case QuantFormat::int8:
      case QuantFormat::uint8:
      case QuantFormat::int4:
      case QuantFormat::uint4: {
        const Dtype cd = s.code_dtype();
        for (int64_t i = 0; i < n; ++i) {
          const int64_t g = gm.group_of(i);
          int32_t c;
          switch (cd) {
            case Dtype::i8:
              c = static_cast<int8_t>(codes[i]);
              break;
            case Dtype::u8:
              c = codes[i];
              break;
            case Dtype::i4:
              c = static_cast<int32_t>(get_nibble(codes, i) ^ 8u) - 8;
              break;  // sign-extend
            default:
              c = static_cast<int32_t>(get_nibble(codes, i));
              break;
          }
          const int32_t z = s.symmetric ? 0 : q.zero.data_as<const int32_t>()[g];
          store(i, formats::int_dequantize(c, scale_f32(g), z));
        }
        return;
      }
      case QuantFormat::fp8e4m3:
      case QuantFormat::fp8e5m2:
        for (int64_t i = 0; i < n; ++i)
          store(i, formats::fp8_dequantize(codes[i], scale_f32(gm.group_of(i)),
                                           s.format == QuantFormat::fp8e5m2));
        return;
      case QuantFormat::nvfp4: {
        const float global = q.global_scale.data_as<const float>()[0];
        const auto* bs = static_cast<const uint8_t*>(q.scale.data());
        for (int64_t i = 0; i < n; ++i)
          store(i, formats::nvfp4_dequantize(static_cast<uint8_t>(get_nibble(codes, i)),
                                             bs[gm.group_of(i)], global));
        return;
      }
      case QuantFormat::mxfp4:
      case QuantFormat::mxfp8e4m3:
      case QuantFormat::mxfp8e5m2: {
        const auto* sc = static_cast<const uint8_t*>(q.scale.data());
        for (int64_t i = 0; i < n; ++i) {
          float e;
          if (s.format == QuantFormat::mxfp4)
            e = f4e2m1_to_f32(static_cast<uint8_t>(get_nibble(codes, i)));
          else
            e = s.format == QuantFormat::mxfp8e4m3 ? f8e4m3fn_to_f32(codes[i])
                                                   : f8e5m2_to_f32(codes[i]);
          store(i, formats::mx_dequantize(e, sc[gm.group_of(i)]));
        }
        return;
      }
      case QuantFormat::gguf:
        return;
    }
  }
};

}  // namespace

const Kernel<DequantizeOp>& dequantize_reference_kernel() {
  static const DequantizeReference kernel;
  return kernel;
}

}  // namespace lowbit
