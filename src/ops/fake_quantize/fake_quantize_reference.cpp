// The reference kernels of fake_quantize and its backward: the rules of docs/formats.md
// ("Fake quantization and its gradients", fake_quantize_math.hpp) element by element on the
// CPU, one thread. The definition every other kernel is tested against.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "formats/groups.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/fake_quantize/fake_quantize_kernels.hpp"
#include "ops/fake_quantize/fake_quantize_math.hpp"

namespace lowbit {
namespace {

/// Visits the elements of a view of `shape` and `strides` in row-major order: fn(flat, offset).
template <class Fn>
void for_each_offset(const Shape& shape, const Strides& strides, Fn&& fn) {
  const int64_t n = numel(shape);
  const int nd = shape.size();
  std::array<int64_t, kMaxDims> idx{};
  int64_t off = 0;
  for (int64_t e = 0; e < n; ++e) {
    fn(e, off);
    for (int i = nd - 1; i >= 0; --i) {
      off += strides[i];
      if (++idx[i] < shape[i]) break;
      off -= idx[i] * strides[i];
      idx[i] = 0;
    }
  }
}

/// A view's elements as f32 in row-major order (f64 rounds to f32 first).
std::vector<float> gather_f32(const TensorView& v) {
  std::vector<float> x(static_cast<size_t>(v.numel()));
  for_each_offset(v.shape(), v.strides(), [&](int64_t e, int64_t off) {
    x[static_cast<size_t>(e)] = convert_detail::load_f32(v.data(), v.dtype(), off);
  });
  return x;
}

void reject_non_finite(std::string_view op, std::string_view which, const std::vector<float>& x,
                       const Shape& shape) {
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i])) fq::throw_non_finite(op, which, shape, static_cast<int64_t>(i), x[i]);
}

Dtype scale_dtype(const QuantScheme& s) { return s.is_integer() ? s.scale_dtype : Dtype::f32; }
bool is_affine(const QuantScheme& s) { return s.is_integer() && !s.symmetric; }

/// Parameters of every group from given scales and zero points, validated (check) like
/// quantize's given scales.
std::vector<fq::Params> given_params(std::string_view op, const QuantScheme& s,
                                     const TensorView& scale, const TensorView& zero, int64_t count,
                                     bool check) {
  std::vector<fq::Params> p(static_cast<size_t>(count));
  for (int64_t g = 0; g < count; ++g) {
    const float sc = convert_detail::load_f32(scale.data(), scale_dtype(s), g);
    const int32_t z = is_affine(s) ? zero.data_as<const int32_t>()[g] : 0;
    if (check) {
      if (!fq::given_scale_ok(sc)) fq::throw_bad_scale(op, sc, g);
      if (s.is_integer() && (z < s.qmin() || z > s.qmax()))
        fq::throw_bad_zero(op, z, g, s.qmin(), s.qmax());
    }
    p[static_cast<size_t>(g)] = fq::given_params(sc, z);
  }
  return p;
}

class FakeQuantizeReference final : public Kernel<FakeQuantizeOp> {
 public:
  std::string_view name() const override { return "fake_quantize_reference"; }
  std::string decline(const FakeQuantizeDesc& d) const override {
    return d.device.is_cpu() ? std::string() : std::string("runs on the cpu only");
  }
  KernelSku sku(const FakeQuantizeDesc& d) const override {
    return {"fake_quantize",
            Backend::cpu,
            std::string(dtype_name(d.src)) + "->" + std::string(dtype_name(d.dst)),
            d.scheme.str(),
            "generic",
            std::string(name())};
  }
  PrecisionGuarantee precision(const FakeQuantizeDesc&) const override {
    return {"quantize then dequantize (docs/formats.md) in f32, one rounding to dst", std::nullopt,
            true, true};
  }

  void run(const FakeQuantizeDesc& d, const FakeQuantizeArgs& a, const Stream&,
           Workspace) const override {
    const std::vector<float> x = gather_f32(a.src);
    if (d.check_finite) reject_non_finite("fake_quantize", "src", x, d.shape);
    const QuantScheme& s = d.scheme;
    const formats::GroupMap gm = formats::GroupMap::make(s, d.shape);
    const int64_t n = static_cast<int64_t>(x.size());
    const bool fp8 = !s.is_integer();
    const bool e5m2 = s.format == QuantFormat::fp8e5m2;
    std::vector<fq::Params> params;
    if (d.given_scales) {
      params = given_params("fake_quantize", s, a.scale, a.zero, gm.count, d.check_finite);
    } else {
      // quantize_reference's statistics: max |x|, min(0, min x), max(0, max x).
      std::vector<float> amax(static_cast<size_t>(gm.count), 0.0f), lo(amax), hi(amax);
      for (int64_t i = 0; i < n; ++i) {
        const size_t g = static_cast<size_t>(gm.group_of(i));
        const float v = x[static_cast<size_t>(i)];
        if (std::isnan(v)) {
          amax[g] = v;  // only without check_finite: the group's values become NaN
          continue;
        }
        if (!std::isnan(amax[g])) amax[g] = std::max(amax[g], std::fabs(v));
        lo[g] = std::min(lo[g], v);
        hi[g] = std::max(hi[g], v);
      }
      params.resize(static_cast<size_t>(gm.count));
      for (int64_t g = 0; g < gm.count; ++g) {
        const size_t gi = static_cast<size_t>(g);
        fq::Params p = fp8 ? fq::fp8_dynamic_params(amax[gi], e5m2)
                           : fq::int_dynamic_params(amax[gi], lo[gi], hi[gi], s.symmetric, s.qmin(),
                                                    s.qmax(), s.scale_dtype);
        convert_detail::store_f32(a.scale.data(), scale_dtype(s), g, p.scale, Saturation::finite);
        if (is_affine(s)) a.zero.data_as<int32_t>()[g] = static_cast<int32_t>(p.zero);
        params[gi] = p;
      }
    }
    const float qmin = s.is_integer() ? static_cast<float>(s.qmin()) : 0.0f;
    const float qmax = s.is_integer() ? static_cast<float>(s.qmax()) : 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const fq::Params& p = params[static_cast<size_t>(gm.group_of(i))];
      const float xi = x[static_cast<size_t>(i)];
      const float y = fp8 ? fq::forward_fp8(xi, p, e5m2) : fq::forward_int(xi, p, qmin, qmax);
      convert_detail::store_f32(a.dst.data(), d.dst, i, y, Saturation::none);
    }
  }
};

/// dx element i: dy's element (its bits, in dy's dtype) where inside, else only its sign bit.
void store_dx(void* dx, const void* dy, Dtype dtype, int64_t i, int64_t off, bool inside) {
  const int bytes = bit_width(dtype) / 8;
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const uint8_t*>(dy) + off * bytes, static_cast<size_t>(bytes));
  if (!inside) bits &= uint64_t{1} << (8 * bytes - 1);
  std::memcpy(static_cast<uint8_t*>(dx) + i * bytes, &bits, static_cast<size_t>(bytes));
}

class FakeQuantizeBackwardReference final : public Kernel<FakeQuantizeBackwardOp> {
 public:
  std::string_view name() const override { return "fake_quantize_backward_reference"; }
  std::string decline(const FakeQuantizeBackwardDesc& d) const override {
    return d.device.is_cpu() ? std::string() : std::string("runs on the cpu only");
  }
  KernelSku sku(const FakeQuantizeBackwardDesc& d) const override {
    return {"fake_quantize_backward",
            Backend::cpu,
            std::string(dtype_name(d.x)) + "," + std::string(dtype_name(d.dy)),
            d.scheme.str(),
            "generic",
            std::string(name())};
  }
  PrecisionGuarantee precision(const FakeQuantizeBackwardDesc&) const override {
    return {
        "dx exact; dscale / dzero: exact sums of exact products on a 2^-61 grid of the "
        "group's bound, rounded once to f32 (docs/formats.md)",
        Dtype::f32, true, true};
  }

  void run(const FakeQuantizeBackwardDesc& d, const FakeQuantizeBackwardArgs& a, const Stream&,
           Workspace) const override {
    constexpr std::string_view op = "fake_quantize_backward";
    const std::vector<float> x = gather_f32(a.x);
    const std::vector<float> dy = gather_f32(a.dy);
    if (d.check_finite) {
      reject_non_finite(op, "x", x, d.shape);
      reject_non_finite(op, "dy", dy, d.shape);
    }
    const QuantScheme& s = d.scheme;
    const formats::GroupMap gm = formats::GroupMap::make(s, d.shape);
    const int64_t n = static_cast<int64_t>(x.size());
    const std::vector<fq::Params> params =
        given_params(op, s, a.scale, a.zero, gm.count, d.check_finite);
    const bool fp8 = !s.is_integer();
    const bool e5m2 = s.format == QuantFormat::fp8e5m2;
    const float qmin = s.is_integer() ? static_cast<float>(s.qmin()) : 0.0f;
    const float qmax = s.is_integer() ? static_cast<float>(s.qmax()) : 0.0f;
    const bool sums = d.scale_grad || d.zero_grad;

    // The grid of each group's sums, from max |dy| (as bits: NaN above every number).
    std::vector<int> ks, kz;
    if (sums) {
      std::vector<uint32_t> dmax(static_cast<size_t>(gm.count), 0);
      for (int64_t i = 0; i < n; ++i) {
        const size_t g = static_cast<size_t>(gm.group_of(i));
        dmax[g] =
            std::max(dmax[g], numeric_detail::bits_of(dy[static_cast<size_t>(i)]) & 0x7fffffffu);
      }
      ks.resize(static_cast<size_t>(gm.count));
      kz.resize(static_cast<size_t>(gm.count));
      for (int64_t g = 0; g < gm.count; ++g) {
        const size_t gi = static_cast<size_t>(g);
        const int ed = fq::bound_exp(dmax[gi]);
        const int ec =
            fp8 ? fq::coeff_exp_fp8(e5m2) : fq::coeff_exp_int(qmin, qmax, params[gi].zero);
        ks[gi] = fq::grid_k(ed + ec);
        kz[gi] = fq::grid_k(ed);
      }
    }

    std::vector<fq::ExactSum> ssum(sums ? static_cast<size_t>(gm.count) : 0), zsum(ssum);
    for_each_offset(d.shape, d.dy_strides, [&](int64_t i, int64_t off) {
      const int64_t g = gm.group_of(i);
      const size_t gi = static_cast<size_t>(g);
      const fq::Params& p = params[gi];
      const float xi = x[static_cast<size_t>(i)];
      const fq::Grad gr = fp8 ? fq::grad_fp8(xi, p, e5m2) : fq::grad_int(xi, p, qmin, qmax);
      store_dx(a.dx.data(), a.dy.data(), d.dy, i, off, gr.inside);
      if (!sums) return;
      const double dyi = static_cast<double>(dy[static_cast<size_t>(i)]);
      fq::exact_add(ssum[gi], fq::grid_round(dyi * static_cast<double>(gr.c) * fq::pow2(ks[gi])));
      if (!gr.inside) fq::exact_add(zsum[gi], fq::grid_round(dyi * fq::pow2(kz[gi])));
    });
    if (!sums) return;
    const float lsq_q = fp8 ? fq::fp8_max(e5m2) : qmax;
    for (int64_t g = 0; g < gm.count; ++g) {
      const size_t gi = static_cast<size_t>(g);
      const float gf = d.lsq_grad_scale ? fq::lsq_factor(fq::group_numel(gm, n, g), lsq_q) : 1.0f;
      if (d.scale_grad)
        a.dscale.data_as<float>()[g] = fq::finish_dscale(ssum[gi], ks[gi], gf, d.lsq_grad_scale);
      if (d.zero_grad)
        a.dzero.data_as<float>()[g] =
            fq::finish_dzero(zsum[gi], kz[gi], params[gi].scale, gf, d.lsq_grad_scale);
    }
  }
};

}  // namespace

const Kernel<FakeQuantizeOp>& fake_quantize_reference_kernel() {
  static const FakeQuantizeReference kernel;
  return kernel;
}

const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_reference_kernel() {
  static const FakeQuantizeBackwardReference kernel;
  return kernel;
}

}  // namespace lowbit
