// The reference quantize kernel: the formats' rules (formats/quant_math.hpp, the GGUF
// reference quantizers) applied element by element on the CPU. The definition every
// other quantize kernel is tested against.
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <vector>

#include "formats/groups.hpp"
#include "formats/quant_math.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

/// src (any strides) as f32 in row-major logical order; f64 rounds to f32 first.
std::vector<float> gather_f32(const TensorView& src) {
  std::vector<float> x(static_cast<size_t>(src.numel()));
  const int nd = src.ndim();
  std::array<int64_t, kMaxDims> idx{};
  for (int64_t e = 0; e < src.numel(); ++e) {
    int64_t off = 0;
    for (int i = 0; i < nd; ++i) off += idx[i] * src.stride(i);
    x[static_cast<size_t>(e)] = convert_detail::load_f32(src.data(), src.dtype(), off);
    for (int i = nd - 1; i >= 0; --i) {
      if (++idx[i] < src.dim(i)) break;
      idx[i] = 0;
    }
  }
  return x;
}

/// The row-major multi-index of flat element `e` of `shape`, as "[i, j, k]".
std::string index_str(const Shape& shape, int64_t e) {
  std::vector<int64_t> idx(static_cast<size_t>(shape.size()));
  for (int i = shape.size() - 1; i >= 0; --i) {
    idx[static_cast<size_t>(i)] = shape[i] ? e % shape[i] : 0;
    e = shape[i] ? e / shape[i] : 0;
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}

void reject_non_finite(const std::vector<float>& x, const Shape& shape) {
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]))
      throw_error(
          ErrorCode::invalid_argument,
          fmt::format("quantize: src element {} (flat index {}) is {}; quantization needs finite "
                      "inputs (replace or mask non-finite values first)",
                      index_str(shape, static_cast<int64_t>(i)), i,
                      std::isnan(x[i]) ? "NaN" : "Inf"));
}

float read_scale(const TensorView& scale, int64_t g) {
  return convert_detail::load_f32(scale.data(), scale.dtype(), g);
}

void write_scale(const TensorView& scale, int64_t g, float value) {
  convert_detail::store_f32(scale.data(), scale.dtype(), g, value, Saturation::finite);
}

/// Sets code `i` of a packed 4-bit stream (the buffer starts zeroed).
void put_nibble(uint8_t* codes, int64_t i, uint32_t code) {
  codes[i >> 1] |= static_cast<uint8_t>((code & 0xfu) << ((i & 1) * 4));
}

void check_given_scale(float s, int64_t g) {
  if (!std::isfinite(s) || s < 0.0f || (s > 0.0f && s < formats::kMinScale))
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("quantize: given scale {} of group {} must be finite and >= 0, and 0 or at "
                    "least 2^-126 (the reciprocal of a smaller scale overflows)",
                    s, g));
}

class QuantizeReference final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "quantize_reference"; }
  std::string decline(const QuantizeDesc& d) const override {
    return d.device.is_cpu() ? std::string() : std::string("runs on the cpu only");
  }
  KernelSku sku(const QuantizeDesc& d) const override {
    return {"quantize",     Backend::cpu, std::string(dtype_name(d.src)),
            d.scheme.str(), "generic",    std::string(name())};
  }
  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {"the rules of docs/formats.md in f32, round-to-nearest-even", std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream&, Workspace) const override {
    const std::vector<float> x = gather_f32(a.src);
    reject_non_finite(x, d.shape);
    const QuantScheme& s = d.scheme;
    const QuantizedView& q = a.dst;
    const int64_t n = static_cast<int64_t>(x.size());
    auto* codes = static_cast<uint8_t*>(q.codes.data());
    if (s.format == QuantFormat::gguf) {
      const auto type = static_cast<gguf::GgmlType>(s.gguf_type);
      const int64_t k = d.shape[d.shape.size() - 1];
      const int64_t rb = gguf::row_bytes(type, k);
      for (int64_t r = 0; k > 0 && r < n / k; ++r)
        gguf::quantize_row_reference(type, x.data() + r * k, codes + r * rb, k);
      return;
    }
    const formats::GroupMap gm = formats::GroupMap::make(s, d.shape);
    const Dtype cd = s.code_dtype();
    if (is_packed(cd)) std::fill(codes, codes + storage_bytes(cd, n), uint8_t{0});

    // Per-group statistics: absmax, min, max.
    std::vector<float> amax(static_cast<size_t>(gm.count), 0.0f), lo(amax), hi(amax);
    for (int64_t i = 0; i < n; ++i) {
      const size_t g = static_cast<size_t>(gm.group_of(i));
      amax[g] = std::max(amax[g], std::fabs(x[static_cast<size_t>(i)]));
      lo[g] = std::min(lo[g], x[static_cast<size_t>(i)]);
      hi[g] = std::max(hi[g], x[static_cast<size_t>(i)]);
    }

    switch (s.format) {
      case QuantFormat::int8:
      case QuantFormat::uint8:
      case QuantFormat::int4:
      case QuantFormat::uint4: {
        std::vector<formats::IntParams> params(static_cast<size_t>(gm.count));
        for (int64_t g = 0; g < gm.count; ++g) {
          formats::IntParams& p = params[static_cast<size_t>(g)];
          if (d.given_scales) {
            const float sc = read_scale(q.scale, g);
            check_given_scale(sc, g);
            const int32_t z = s.symmetric ? 0 : q.zero.data_as<int32_t>()[g];
            if (z < s.qmin() || z > s.qmax())
              throw_error(
                  ErrorCode::invalid_argument,
                  fmt::format("quantize: given zero point {} of group {} is outside [{}, {}]", z, g,
                              s.qmin(), s.qmax()));
            p = formats::int_params_from_scale(sc, z);
          } else {
            p = s.symmetric ? formats::int_symmetric_params(amax[static_cast<size_t>(g)], s.qmax(),
                                                            s.scale_dtype)
                            : formats::int_affine_params(lo[static_cast<size_t>(g)],
                                                         hi[static_cast<size_t>(g)], s.qmin(),
                                                         s.qmax(), s.scale_dtype);
            write_scale(q.scale, g, p.scale);
            if (!s.symmetric) q.zero.data_as<int32_t>()[g] = p.zero;
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          const int32_t c = formats::int_quantize(x[static_cast<size_t>(i)],
                                                  params[static_cast<size_t>(gm.group_of(i))],
                                                  s.qmin(), s.qmax());
          if (is_packed(cd))
            put_nibble(codes, i, static_cast<uint32_t>(c));
          else
            codes[i] = static_cast<uint8_t>(c);
        }
        return;
      }
      case QuantFormat::fp8e4m3:
      case QuantFormat::fp8e5m2: {
        const bool e5m2 = s.format == QuantFormat::fp8e5m2;
        std::vector<float> inv(static_cast<size_t>(gm.count));
        for (int64_t g = 0; g < gm.count; ++g) {
          float sc;
          if (d.given_scales) {
            sc = read_scale(q.scale, g);
            check_given_scale(sc, g);
          } else {
            sc = formats::fp8_scale(amax[static_cast<size_t>(g)], e5m2);
            write_scale(q.scale, g, sc);
          }
          inv[static_cast<size_t>(g)] = sc == 0.0f ? 0.0f : 1.0f / sc;
        }
        for (int64_t i = 0; i < n; ++i)
          codes[i] = formats::fp8_quantize(x[static_cast<size_t>(i)],
                                           inv[static_cast<size_t>(gm.group_of(i))], e5m2);
        return;
      }
      case QuantFormat::nvfp4: {
        float global;
        if (d.given_scales) {
          global = q.global_scale.data_as<float>()[0];
          check_given_scale(global, 0);
        } else {
          float tensor_amax = 0.0f;
          for (float v : amax) tensor_amax = std::max(tensor_amax, v);
          global = formats::nvfp4_global_scale(tensor_amax);
          q.global_scale.data_as<float>()[0] = global;
        }
        auto* block_codes = static_cast<uint8_t*>(q.scale.data());
        for (int64_t g = 0; g < gm.count; ++g)
          block_codes[g] =
              global == 0.0f ? 0 : formats::nvfp4_block_scale(amax[static_cast<size_t>(g)], global);
        for (int64_t i = 0; i < n; ++i)
          put_nibble(codes, i,
                     formats::nvfp4_quantize(x[static_cast<size_t>(i)], global,
                                             block_codes[gm.group_of(i)]));
        return;
      }
      case QuantFormat::mxfp4:
      case QuantFormat::mxfp8e4m3:
      case QuantFormat::mxfp8e5m2: {
        const int emax =
            s.format == QuantFormat::mxfp4 ? 2 : (s.format == QuantFormat::mxfp8e4m3 ? 8 : 15);
        auto* scale_codes = static_cast<uint8_t*>(q.scale.data());
        for (int64_t g = 0; g < gm.count; ++g)
          scale_codes[g] = formats::mx_scale_code(amax[static_cast<size_t>(g)], emax);
        for (int64_t i = 0; i < n; ++i) {
          const uint8_t sc = scale_codes[gm.group_of(i)];
          const float v = x[static_cast<size_t>(i)];
          if (s.format == QuantFormat::mxfp4)
            put_nibble(codes, i, formats::mxfp4_quantize(v, sc));
          else
            codes[i] = formats::mxfp8_quantize(v, sc, s.format == QuantFormat::mxfp8e5m2);
        }
        return;
      }
      case QuantFormat::gguf:
        return;  // handled above
    }
  }
};

}  // namespace

const Kernel<QuantizeOp>& quantize_reference_kernel() {
  static const QuantizeReference kernel;
  return kernel;
}

}  // namespace lowbit
