// The CUDA kernels of fake_quantize and its backward: bit-identical to the reference
// kernels (fake_quantize_reference.cpp) for contiguous f32 / f16 / bf16 tensors, every
// integer and fp8 scheme at every granularity, static and dynamic scales.
//
// Deliberately simple: a few grid-stride kernels, each element's group from
// formats::GroupMap::group_of, every value from fake_quantize_math.hpp's functions (the
// reference's own code, compiled for the device).
//
// Forward: [dynamic] a statistics kernel (each thread walks 64 consecutive elements and
// atomicMax-es max |x|, max(0, x), max(0, -x) as f32 bit patterns into its groups' words
// when the group changes: maxima are order-free, so the result is the same on every run),
// then one thread per group computes the parameters and writes the scale / zero point;
// [static] one thread per group reads and validates the given scale / zero point. Then one
// thread per element writes y.
//
// Backward: one thread per group validates the given scales; [sums] a max |dy| kernel like
// the statistics kernel, then one thread per group fixes the grid exponents; one pass over
// the elements writes dx and adds each element's grid integer to its group's exact sums
// (per thread while the group stays the same, then atomicAdd on 64-bit words: integer sums
// are order-free, so dscale / dzero are deterministic and equal to the reference's); one
// thread per group finishes dscale / dzero.
//
// Checks (check_finite): kernels record the first non-finite element of x / dy and the
// first invalid group in flag words (atomicMax of the complement: the minimum index,
// whatever the order); run() reads them back, SYNCHRONISING THE STREAM, and throws the
// reference's error text. Without check_finite nothing is checked or synchronised.
//
// Scratch (parameters, statistics, sums, flag words) is one stream-ordered allocation per
// call from the device's caching pool.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/check_report_impl.hpp"
#include "formats/groups.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/fake_quantize/fake_quantize_kernels.hpp"
#include "ops/fake_quantize/fake_quantize_math.hpp"
#include "ops/quantize/quantize_cuda_common.cuh"

namespace lowbit {
namespace {

using quant_cuda::check_cuda;
using quant_cuda::check_launch;
using quant_cuda::DeviceScope;
using quant_cuda::flagged;
using quant_cuda::report;

constexpr int kThreads = 256;
constexpr int64_t kRun = 64;  ///< consecutive elements per thread in the per-group passes

struct Flags {
  unsigned long long x;      ///< first non-finite element of x / src
  unsigned long long dy;     ///< first non-finite element of dy
  unsigned long long group;  ///< first group with an invalid given scale / zero point
  unsigned long long pad;
};

/// What the kernels need to know about the scheme.
struct Conf {
  formats::GroupMap gm;
  int64_t n = 0;
  bool fp8 = false;
  bool e5m2 = false;
  bool affine = false;
  bool is_int = false;
  int qmin = 0, qmax = 0;
  Dtype scale_dtype = Dtype::f32;
  bool check = true;
};

uint32_t blocks_for(int64_t items) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return static_cast<uint32_t>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ uint32_t abs_bits(float v) {
  return numeric_detail::bits_of(v) & 0x7fffffffu;
}

// ---- parameters -------------------------------------------------------------------------------

__global__ void given_params_kernel(Conf c, const void* scale, const int32_t* zero,
                                    fq::Params* params, Flags* flags) {
  for (int64_t g = global_thread(); g < c.gm.count; g += thread_count()) {
    const float sc = convert_detail::load_f32(scale, c.scale_dtype, g);
    const int32_t z = c.affine ? zero[g] : 0;
    if (c.check && (!fq::given_scale_ok(sc) || (c.is_int && (z < c.qmin || z > c.qmax))))
      report(&flags->group, static_cast<uint64_t>(g));
    params[g] = fq::given_params(sc, z);
  }
}

/// Forward statistics: max |x|, max(0, x), max(0, -x) per group as f32 bits.
template <Dtype S>
__global__ void stats_kernel(Conf c, const void* x, uint32_t* amax, uint32_t* hi, uint32_t* neglo,
                             Flags* flags) {
  const int64_t runs = (c.n + kRun - 1) / kRun;
  uint64_t bad = ~uint64_t{0};
  for (int64_t r = global_thread(); r < runs; r += thread_count()) {
    const int64_t e1 = (r + 1) * kRun < c.n ? (r + 1) * kRun : c.n;
    int64_t g = -1;
    uint32_t a = 0;
    int32_t h = 0, nl = 0;
    for (int64_t i = r * kRun; i < e1; ++i) {
      const int64_t gi = c.gm.group_of(i);
      if (gi != g) {
        if (g >= 0) {
          atomicMax(amax + g, a);
          atomicMax(hi + g, static_cast<uint32_t>(h));
          atomicMax(neglo + g, static_cast<uint32_t>(nl));
        }
        g = gi;
        a = 0;
        h = nl = 0;
      }
      const uint32_t b = numeric_detail::bits_of(convert_detail::load_f32(x, S, i));
      a = max(a, b & 0x7fffffffu);
      h = max(h, static_cast<int32_t>(b));
      nl = max(nl, static_cast<int32_t>(b ^ 0x80000000u));
      if ((b & 0x7fffffffu) >= 0x7f800000u && static_cast<uint64_t>(i) < bad) bad = i;
    }
    if (g >= 0) {
      atomicMax(amax + g, a);
      atomicMax(hi + g, static_cast<uint32_t>(h));
      atomicMax(neglo + g, static_cast<uint32_t>(nl));
    }
  }
  if (c.check && bad != ~uint64_t{0}) report(&flags->x, bad);
}

/// Dynamic parameters from the statistics; writes the scales (and zero points).
__global__ void dynamic_params_kernel(Conf c, const uint32_t* amax, const uint32_t* hi,
                                      const uint32_t* neglo, void* scale, int32_t* zero,
                                      fq::Params* params) {
  for (int64_t g = global_thread(); g < c.gm.count; g += thread_count()) {
    const float am = numeric_detail::float_of(amax[g]);
    const fq::Params p = c.fp8 ? fq::fp8_dynamic_params(am, c.e5m2)
                               : fq::int_dynamic_params(am, -numeric_detail::float_of(neglo[g]),
                                                        numeric_detail::float_of(hi[g]), !c.affine,
                                                        c.qmin, c.qmax, c.scale_dtype);
    convert_detail::store_f32(scale, c.scale_dtype, g, p.scale, Saturation::finite);
    if (c.affine) zero[g] = static_cast<int32_t>(p.zero);
    params[g] = p;
  }
}

// ---- forward ----------------------------------------------------------------------------------

template <Dtype S, Dtype D>
__global__ void forward_kernel(Conf c, const void* x, void* y, const fq::Params* params,
                               Flags* flags) {
  const float qmin = static_cast<float>(c.qmin), qmax = static_cast<float>(c.qmax);
  uint64_t bad = ~uint64_t{0};
  for (int64_t i = global_thread(); i < c.n; i += thread_count()) {
    const float xi = convert_detail::load_f32(x, S, i);
    if (abs_bits(xi) >= 0x7f800000u && static_cast<uint64_t>(i) < bad) bad = i;
    const fq::Params p = params[c.gm.group_of(i)];
    const float v = c.fp8 ? fq::forward_fp8(xi, p, c.e5m2) : fq::forward_int(xi, p, qmin, qmax);
    convert_detail::store_f32(y, D, i, v, Saturation::none);
  }
  if (c.check && bad != ~uint64_t{0}) report(&flags->x, bad);
}

// ---- backward ---------------------------------------------------------------------------------

/// max |dy| per group as f32 bits.
template <Dtype SD>
__global__ void dmax_kernel(Conf c, const void* dy, uint32_t* dmax, Flags* flags) {
  const int64_t runs = (c.n + kRun - 1) / kRun;
  uint64_t bad = ~uint64_t{0};
  for (int64_t r = global_thread(); r < runs; r += thread_count()) {
    const int64_t e1 = (r + 1) * kRun < c.n ? (r + 1) * kRun : c.n;
    int64_t g = -1;
    uint32_t a = 0;
    for (int64_t i = r * kRun; i < e1; ++i) {
      const int64_t gi = c.gm.group_of(i);
      if (gi != g) {
        if (g >= 0) atomicMax(dmax + g, a);
        g = gi;
        a = 0;
      }
      const uint32_t b = abs_bits(convert_detail::load_f32(dy, SD, i));
      a = max(a, b);
      if (b >= 0x7f800000u && static_cast<uint64_t>(i) < bad) bad = i;
    }
    if (g >= 0) atomicMax(dmax + g, a);
  }
  if (c.check && bad != ~uint64_t{0}) report(&flags->dy, bad);
}

/// The grid exponents of each group's sums: ks[g], kz[g].
__global__ void grid_kernel(Conf c, const uint32_t* dmax, const fq::Params* params, int* ks,
                            int* kz) {
  for (int64_t g = global_thread(); g < c.gm.count; g += thread_count()) {
    const int ed = fq::bound_exp(dmax[g]);
    const int ec = c.fp8 ? fq::coeff_exp_fp8(c.e5m2)
                         : fq::coeff_exp_int(static_cast<float>(c.qmin), static_cast<float>(c.qmax),
                                             params[g].zero);
    ks[g] = fq::grid_k(ed + ec);
    kz[g] = fq::grid_k(ed);
  }
}

/// dy's element i with only its sign kept unless `inside` (dx = dy or a signed zero).
template <Dtype SD>
__device__ __forceinline__ void store_dx(void* dx, const void* dy, int64_t i, bool inside) {
  if constexpr (SD == Dtype::f32) {
    const uint32_t b = static_cast<const uint32_t*>(dy)[i];
    static_cast<uint32_t*>(dx)[i] = inside ? b : (b & 0x80000000u);
  } else {
    const uint16_t b = static_cast<const uint16_t*>(dy)[i];
    static_cast<uint16_t*>(dx)[i] = inside ? b : static_cast<uint16_t>(b & 0x8000u);
  }
}

__device__ __forceinline__ void flush(unsigned long long* acc, int64_t g, const fq::ExactSum& s,
                                      const fq::ExactSum& z) {
  unsigned long long* a = acc + 4 * g;
  if (s.hi) atomicAdd(a + 0, static_cast<unsigned long long>(s.hi));
  if (s.lo) atomicAdd(a + 1, static_cast<unsigned long long>(s.lo));
  if (z.hi) atomicAdd(a + 2, static_cast<unsigned long long>(z.hi));
  if (z.lo) atomicAdd(a + 3, static_cast<unsigned long long>(z.lo));
}

template <Dtype SX, Dtype SD>
__global__ void backward_kernel(Conf c, const void* x, const void* dy, void* dx,
                                const fq::Params* params, bool want_s, bool want_z, const int* ks,
                                const int* kz, unsigned long long* acc, Flags* flags) {
  const bool sums = want_s || want_z;
  const float qmin = static_cast<float>(c.qmin), qmax = static_cast<float>(c.qmax);
  const int64_t runs = (c.n + kRun - 1) / kRun;
  uint64_t bad_x = ~uint64_t{0}, bad_dy = ~uint64_t{0};
  for (int64_t r = global_thread(); r < runs; r += thread_count()) {
    const int64_t e1 = (r + 1) * kRun < c.n ? (r + 1) * kRun : c.n;
    int64_t g = -1;
    fq::Params p;
    double ms = 0.0, mz = 0.0;
    fq::ExactSum s, z;
    for (int64_t i = r * kRun; i < e1; ++i) {
      const int64_t gi = c.gm.group_of(i);
      if (gi != g) {
        if (sums && g >= 0) flush(acc, g, s, z);
        g = gi;
        p = params[g];
        if (sums) {
          ms = fq::pow2(ks[g]);
          mz = fq::pow2(kz[g]);
        }
        s = fq::ExactSum();
        z = fq::ExactSum();
      }
      const float xi = convert_detail::load_f32(x, SX, i);
      const float di = convert_detail::load_f32(dy, SD, i);
      if (abs_bits(xi) >= 0x7f800000u && static_cast<uint64_t>(i) < bad_x) bad_x = i;
      if (abs_bits(di) >= 0x7f800000u && static_cast<uint64_t>(i) < bad_dy) bad_dy = i;
      const fq::Grad gr = c.fp8 ? fq::grad_fp8(xi, p, c.e5m2) : fq::grad_int(xi, p, qmin, qmax);
      store_dx<SD>(dx, dy, i, gr.inside);
      const double d = static_cast<double>(di);
      if (want_s)
        fq::exact_add(s, fq::grid_round(__dmul_rn(__dmul_rn(d, static_cast<double>(gr.c)), ms)));
      if (want_z && !gr.inside) fq::exact_add(z, fq::grid_round(__dmul_rn(d, mz)));
    }
    if (sums && g >= 0) flush(acc, g, s, z);
  }
  if (c.check && bad_x != ~uint64_t{0}) report(&flags->x, bad_x);
  if (c.check && bad_dy != ~uint64_t{0}) report(&flags->dy, bad_dy);
}

__global__ void finish_kernel(Conf c, const unsigned long long* acc, const int* ks, const int* kz,
                              const fq::Params* params, bool lsq, float* dscale, float* dzero) {
  const float lsq_q = c.fp8 ? fq::fp8_max(c.e5m2) : static_cast<float>(c.qmax);
  for (int64_t g = global_thread(); g < c.gm.count; g += thread_count()) {
    const float gf = lsq ? fq::lsq_factor(fq::group_numel(c.gm, c.n, g), lsq_q) : 1.0f;
    const unsigned long long* a = acc + 4 * g;
    if (dscale) {
      const fq::ExactSum s{static_cast<int64_t>(a[0]), static_cast<int64_t>(a[1])};
      dscale[g] = fq::finish_dscale(s, ks[g], gf, lsq);
    }
    if (dzero) {
      const fq::ExactSum z{static_cast<int64_t>(a[2]), static_cast<int64_t>(a[3])};
      dzero[g] = fq::finish_dzero(z, kz[g], params[g].scale, gf, lsq);
    }
  }
}

// ---- host side ------------------------------------------------------------------------------

bool cuda_dtype(Dtype d) { return d == Dtype::f32 || d == Dtype::f16 || d == Dtype::bf16; }

Conf make_conf(const QuantScheme& s, const Shape& shape, bool check) {
  Conf c;
  c.gm = formats::GroupMap::make(s, shape);
  c.n = numel(shape);
  c.fp8 = !s.is_integer();
  c.e5m2 = s.format == QuantFormat::fp8e5m2;
  c.is_int = s.is_integer();
  c.affine = s.is_integer() && !s.symmetric;
  if (s.is_integer()) {
    c.qmin = s.qmin();
    c.qmax = s.qmax();
    c.scale_dtype = s.scale_dtype;
  }
  c.check = check;
  return c;
}

/// One stream-ordered scratch allocation carved into aligned pieces.
class Scratch {
 public:
  Scratch(int64_t bytes, Device device, const Stream& stream, cudaStream_t s)
      : buffer_(bytes > 0 ? bytes : 256, device, &stream) {
    check_cuda(cudaMemsetAsync(buffer_.data(), 0, static_cast<size_t>(buffer_.size()), s),
               "fake_quantize: cudaMemsetAsync");
  }
  template <class T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(static_cast<uint8_t*>(buffer_.data()) + used_);
    used_ += (count * static_cast<int64_t>(sizeof(T)) + 255) / 256 * 256;
    return p;
  }
  static int64_t piece(int64_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  Buffer buffer_;
  int64_t used_ = 0;
};

float host_f32(const void* base, Dtype dtype, int64_t i) {
  const int bytes = bit_width(dtype) / 8;
  uint64_t raw = 0;
  check_cuda(cudaMemcpy(&raw, static_cast<const uint8_t*>(base) + i * bytes,
                        static_cast<size_t>(bytes), cudaMemcpyDeviceToHost),
             "fake_quantize: reading an element");
  return convert_detail::load_f32(&raw, dtype, 0);
}

/// Throws the reference's error for the flags read back (the stream is synchronised).
void throw_flags(std::string_view op, const Flags& f, const Shape& shape, const char* x_name,
                 const void* x, Dtype x_dtype, const void* dy, Dtype dy_dtype, const QuantScheme& s,
                 const TensorView& scale, const TensorView& zero) {
  uint64_t i;
  if (flagged(f.x, i))
    fq::throw_non_finite(op, x_name, shape, static_cast<int64_t>(i), host_f32(x, x_dtype, i));
  if (dy && flagged(f.dy, i))
    fq::throw_non_finite(op, "dy", shape, static_cast<int64_t>(i), host_f32(dy, dy_dtype, i));
  if (flagged(f.group, i)) {
    const float sc = host_f32(scale.data(), scale.dtype(), static_cast<int64_t>(i));
    if (!fq::given_scale_ok(sc)) fq::throw_bad_scale(op, sc, static_cast<int64_t>(i));
    int32_t z = 0;
    check_cuda(cudaMemcpy(&z, zero.data_as<const int32_t>() + i, 4, cudaMemcpyDeviceToHost),
               "fake_quantize: reading a zero point");
    fq::throw_bad_zero(op, z, static_cast<int64_t>(i), s.qmin(), s.qmax());
  }
}

/// With a CUDA CheckReport: queues the record kernel on this call's flags (in the call's
/// scratch, whose stream-ordered release comes after it) and returns true: run() does not
/// wait. Flags in Flags order: x / src, dy, group.
bool defer(const CheckReport* r, check_report::Op op, const Flags* flags, cudaStream_t s) {
  const CheckReport::Impl* report = check_report::for_call(r, true);  // check_finite is on
  if (!report) return false;
  static constexpr check_report::Kind kinds[] = {
      check_report::Kind::non_finite, check_report::Kind::non_finite_dy, check_report::Kind::given};
  check_report::enqueue_record_from(*report, op, reinterpret_cast<const unsigned long long*>(flags),
                                    3, kinds, s);
  return true;
}

void read_flags(const Flags* device_flags, Flags* out, cudaStream_t s) {
  uint64_t w[4];
  quant_cuda::read_flags(device_flags, w, 4, s);  // synchronises the stream
  out->x = w[0];
  out->dy = w[1];
  out->group = w[2];
}

const quant_cuda::DeviceFacts& facts(int device) {
  return quant_cuda::device_facts(device, given_params_kernel);
}

std::string cuda_decline(const Device& device) {
  if (!device.is_cuda()) return "runs on CUDA devices only";
  const quant_cuda::DeviceFacts& f = facts(device.index);
  if (!f.has_image)
    return "this build has no kernel image for " + f.arch + " (" + f.image_error +
           "; add it to LOWBIT_CUDA_ARCHS)";
  return {};
}

bool contiguous(const Shape& shape, const Strides& strides) {
  int64_t expect = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

template <template <Dtype, Dtype> class F, class... A>
void dispatch2(Dtype a, Dtype b, A&&... args) {
  auto second = [&](auto first) {
    constexpr Dtype S = decltype(first)::value;
    switch (b) {
      case Dtype::f32:
        return F<S, Dtype::f32>::run(args...);
      case Dtype::f16:
        return F<S, Dtype::f16>::run(args...);
      default:
        return F<S, Dtype::bf16>::run(args...);
    }
  };
  switch (a) {
    case Dtype::f32:
      return second(std::integral_constant<Dtype, Dtype::f32>());
    case Dtype::f16:
      return second(std::integral_constant<Dtype, Dtype::f16>());
    default:
      return second(std::integral_constant<Dtype, Dtype::bf16>());
  }
}

template <Dtype S, Dtype D>
struct LaunchForward {
  static void run(const Conf& c, const void* x, void* y, const fq::Params* params, Flags* flags,
                  cudaStream_t s) {
    if (c.n == 0) return;
    forward_kernel<S, D><<<blocks_for(c.n), kThreads, 0, s>>>(c, x, y, params, flags);
    check_launch("fake_quantize forward_kernel");
  }
};

template <Dtype S, Dtype Unused>
struct LaunchStats {
  static void run(const Conf& c, const void* x, uint32_t* amax, uint32_t* hi, uint32_t* neglo,
                  Flags* flags, cudaStream_t s) {
    if (c.n == 0) return;
    stats_kernel<S>
        <<<blocks_for((c.n + kRun - 1) / kRun), kThreads, 0, s>>>(c, x, amax, hi, neglo, flags);
    check_launch("fake_quantize stats_kernel");
  }
};

template <Dtype SD, Dtype Unused>
struct LaunchDmax {
  static void run(const Conf& c, const void* dy, uint32_t* dmax, Flags* flags, cudaStream_t s) {
    if (c.n == 0) return;
    dmax_kernel<SD><<<blocks_for((c.n + kRun - 1) / kRun), kThreads, 0, s>>>(c, dy, dmax, flags);
    check_launch("fake_quantize dmax_kernel");
  }
};

template <Dtype SX, Dtype SD>
struct LaunchBackward {
  static void run(const Conf& c, const void* x, const void* dy, void* dx, const fq::Params* params,
                  bool want_s, bool want_z, const int* ks, const int* kz, unsigned long long* acc,
                  Flags* flags, cudaStream_t s) {
    if (c.n == 0) return;
    backward_kernel<SX, SD><<<blocks_for((c.n + kRun - 1) / kRun), kThreads, 0, s>>>(
        c, x, dy, dx, params, want_s, want_z, ks, kz, acc, flags);
    check_launch("fake_quantize backward_kernel");
  }
};

class FakeQuantizeCuda final : public Kernel<FakeQuantizeOp> {
 public:
  std::string_view name() const override { return "fake_quantize_cuda"; }

  std::string decline(const FakeQuantizeDesc& d) const override {
    if (std::string why = cuda_decline(d.device); !why.empty()) return why;
    if (!cuda_dtype(d.src) || !cuda_dtype(d.dst))
      return "f64 src or dst: not on CUDA (the reference kernel takes them, on the CPU only)";
    if (!contiguous(d.shape, d.src_strides)) return "strided sources are not supported on CUDA";
    return {};
  }

  KernelSku sku(const FakeQuantizeDesc& d) const override {
    return {"fake_quantize",
            Backend::cuda,
            std::string(dtype_name(d.src)) + "->" + std::string(dtype_name(d.dst)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const FakeQuantizeDesc&) const override {
    return {
        "quantize then dequantize (docs/formats.md) in f32, bit-identical to the reference "
        "(max reductions are order-independent)",
        std::nullopt, true, true};
  }

  void run(const FakeQuantizeDesc& d, const FakeQuantizeArgs& a, const Stream& stream,
           Workspace) const override {
    DeviceScope scope(d.device.index);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const Conf c = make_conf(d.scheme, d.shape, d.check_finite);
    const int64_t count = c.gm.count;
    Scratch scratch(
        Scratch::piece(sizeof(Flags)) + Scratch::piece(count * 12) + Scratch::piece(count * 12),
        d.device, stream, s);
    Flags* flags = scratch.take<Flags>(1);
    fq::Params* params = scratch.take<fq::Params>(count);
    if (count > 0) {
      if (d.given_scales) {
        given_params_kernel<<<blocks_for(count), kThreads, 0, s>>>(
            c, a.scale.data(), c.affine ? a.zero.data_as<const int32_t>() : nullptr, params, flags);
        check_launch("fake_quantize given_params_kernel");
      } else {
        uint32_t* stats = scratch.take<uint32_t>(3 * count);
        dispatch2<LaunchStats>(d.src, d.src, c, a.src.data(), stats, stats + count,
                               stats + 2 * count, flags, s);
        dynamic_params_kernel<<<blocks_for(count), kThreads, 0, s>>>(
            c, stats, stats + count, stats + 2 * count, a.scale.data(),
            c.affine ? a.zero.data_as<int32_t>() : nullptr, params);
        check_launch("fake_quantize dynamic_params_kernel");
      }
    }
    dispatch2<LaunchForward>(d.src, d.dst, c, a.src.data(), a.dst.data(),
                             static_cast<const fq::Params*>(params), flags, s);
    if (!d.check_finite) return;
    if (defer(a.report, check_report::Op::fake_quantize, flags, s)) return;
    Flags f{};
    read_flags(flags, &f, s);
    throw_flags("fake_quantize", f, d.shape, "src", a.src.data(), d.src, nullptr, d.src, d.scheme,
                a.scale, a.zero);
  }
};

class FakeQuantizeBackwardCuda final : public Kernel<FakeQuantizeBackwardOp> {
 public:
  std::string_view name() const override { return "fake_quantize_backward_cuda"; }

  std::string decline(const FakeQuantizeBackwardDesc& d) const override {
    if (std::string why = cuda_decline(d.device); !why.empty()) return why;
    if (!cuda_dtype(d.x) || !cuda_dtype(d.dy))
      return "f64 x or dy: not on CUDA (the reference kernel takes them, on the CPU only)";
    if (!contiguous(d.shape, d.x_strides) || !contiguous(d.shape, d.dy_strides))
      return "strided x or dy are not supported on CUDA";
    return {};
  }

  KernelSku sku(const FakeQuantizeBackwardDesc& d) const override {
    return {"fake_quantize_backward",
            Backend::cuda,
            std::string(dtype_name(d.x)) + "," + std::string(dtype_name(d.dy)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const FakeQuantizeBackwardDesc&) const override {
    return {
        "dx exact; dscale / dzero: exact integer sums (64-bit atomic adds, order-free) on the "
        "reference's grid, rounded once to f32; bit-identical to the reference",
        Dtype::f32, true, true};
  }

  void run(const FakeQuantizeBackwardDesc& d, const FakeQuantizeBackwardArgs& a,
           const Stream& stream, Workspace) const override {
    DeviceScope scope(d.device.index);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const Conf c = make_conf(d.scheme, d.shape, d.check_finite);
    const int64_t count = c.gm.count;
    const bool sums = d.scale_grad || d.zero_grad;
    Scratch scratch(Scratch::piece(sizeof(Flags)) + Scratch::piece(count * 12) +
                        (sums ? Scratch::piece(count * 4) + 2 * Scratch::piece(count * 4) +
                                    Scratch::piece(count * 32)
                              : 0),
                    d.device, stream, s);
    Flags* flags = scratch.take<Flags>(1);
    fq::Params* params = scratch.take<fq::Params>(count);
    if (count > 0) {
      given_params_kernel<<<blocks_for(count), kThreads, 0, s>>>(
          c, a.scale.data(), c.affine ? a.zero.data_as<const int32_t>() : nullptr, params, flags);
      check_launch("fake_quantize given_params_kernel");
    }
    int* ks = nullptr;
    int* kz = nullptr;
    unsigned long long* acc = nullptr;
    if (sums) {
      uint32_t* dmax = scratch.take<uint32_t>(count);
      ks = scratch.take<int>(count);
      kz = scratch.take<int>(count);
      acc = scratch.take<unsigned long long>(4 * count);
      dispatch2<LaunchDmax>(d.dy, d.dy, c, a.dy.data(), dmax, flags, s);
      if (count > 0) {
        grid_kernel<<<blocks_for(count), kThreads, 0, s>>>(c, dmax, params, ks, kz);
        check_launch("fake_quantize grid_kernel");
      }
    }
    dispatch2<LaunchBackward>(d.x, d.dy, c, a.x.data(), a.dy.data(), a.dx.data(),
                              static_cast<const fq::Params*>(params), d.scale_grad, d.zero_grad,
                              static_cast<const int*>(ks), static_cast<const int*>(kz), acc, flags,
                              s);
    if (sums && count > 0) {
      finish_kernel<<<blocks_for(count), kThreads, 0, s>>>(
          c, acc, ks, kz, params, d.lsq_grad_scale,
          d.scale_grad ? a.dscale.data_as<float>() : nullptr,
          d.zero_grad ? a.dzero.data_as<float>() : nullptr);
      check_launch("fake_quantize finish_kernel");
    }
    if (!d.check_finite) return;
    if (defer(a.report, check_report::Op::fake_quantize_backward, flags, s)) return;
    Flags f{};
    read_flags(flags, &f, s);
    throw_flags("fake_quantize_backward", f, d.shape, "x", a.x.data(), d.x, a.dy.data(), d.dy,
                d.scheme, a.scale, a.zero);
  }
};

}  // namespace

const Kernel<FakeQuantizeOp>& fake_quantize_cuda_kernel() {
  static const FakeQuantizeCuda kernel;
  return kernel;
}

const Kernel<FakeQuantizeBackwardOp>& fake_quantize_backward_cuda_kernel() {
  static const FakeQuantizeBackwardCuda kernel;
  return kernel;
}

}  // namespace lowbit
