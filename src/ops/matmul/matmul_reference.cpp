// The reference matmul: W (and a quantized x) dequantized with the dequantize op's rules
// to f32, products accumulated in f64 in k order, one rounding to y (f64 -> f32 -> y, the
// library's f64 rule). Slow and obviously right: the tests' oracle for every other kernel.
#include <vector>

#include "lowbit/quantize.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

std::vector<float> dequantized_f32(const QuantizedView& q) {
  Tensor t = dequantize(q, Dtype::f32);
  const auto* p = t.data_as<const float>();
  return std::vector<float>(p, p + t.numel());
}

class MatmulReference final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_reference"; }
  std::string decline(const MatmulDesc& d) const override {
    return d.device.is_cpu() ? std::string() : std::string("runs on the cpu only");
  }
  KernelSku sku(const MatmulDesc& d) const override {
    std::string dtypes =
        std::string(dtype_name(d.x)) + "x" + d.w.str() + "->" + std::string(dtype_name(d.y));
    return {"matmul", Backend::cpu, dtypes, d.w.str(), "generic", std::string(name())};
  }
  PrecisionGuarantee precision(const MatmulDesc&) const override {
    return {"dequantize to f32, f64 products and sums in k order, one rounding to y", Dtype::f64,
            true, true};
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream&, Workspace) const override {
    const int64_t m = d.m, n = d.n, k = d.k;
    if (m == 0 || n == 0) return;
    const std::vector<float> w = dequantized_f32(a.w);
    std::vector<float> x;
    if (d.x_quantized()) {
      x = dequantized_f32(a.xq);
    } else if (d.x_scheme) {
      // W8A8 with a float x: the plan quantizes x dynamically first, as a fast kernel would.
      const TensorView xv(a.x.data(), a.x.dtype(), {m, k}, {d.x_stride(), 1}, a.x.device());
      x = dequantized_f32(quantize(xv, *d.x_scheme).view());
    } else {
      x.resize(static_cast<size_t>(m * k));
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < k; ++j)
          x[static_cast<size_t>(i * k + j)] =
              convert_detail::load_f32(a.x.data(), d.x, i * d.x_stride() + j);
    }
    for (int64_t i = 0; i < m; ++i) {
      const float* xr = x.data() + i * k;
      for (int64_t j = 0; j < n; ++j) {
        const float* wr = w.data() + j * k;
        double acc = 0.0;
        for (int64_t t = 0; t < k; ++t) acc += static_cast<double>(xr[t]) * wr[t];
        if (d.bias) acc += convert_detail::load_f32(a.bias.data(), d.y, j);
        convert_detail::store_f32(a.y.data(), d.y, i * d.y_stride() + j, f64_to_f32(acc),
                                  Saturation::none);
      }
    }
  }
};

}  // namespace

const MatmulKernel& matmul_reference_kernel() {
  static const MatmulReference kernel;
  return kernel;
}

}  // namespace lowbit
