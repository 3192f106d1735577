// quantize_cuda / dequantize_cuda on the GPU against the reference kernels, bit for bit:
// the benchmark's schemes on 16384 x 8192 tensors; a sweep of schemes x shapes x sources
// (odd shapes, misaligned views, given scales, arbitrary code bytes for dequantize) that
// reaches every path of the CUDA kernels (rows, tensor, blocks, chunks, generic); the error
// texts (non-finite inputs, GGUF scale overflow, invalid given scales); check_finite off;
// and identical bits over repeated runs. Skips visibly without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lowbit/convert.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/quantize.hpp"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::compare_bytes;

constexpr const char* kRef = "quantize_reference";
constexpr const char* kCuda = "quantize_cuda";
constexpr const char* kDqRef = "dequantize_reference";
constexpr const char* kDqCuda = "dequantize_cuda";

// ---- buffers with chosen misalignment ---------------------------------------------------------

/// A contiguous tensor view `offset` elements into a larger allocation (offset 0: aligned).
struct OffsetTensor {
  Tensor storage;
  TensorView view;
  static OffsetTensor make(const Shape& shape, Dtype dtype, Device device, int64_t offset_bytes) {
    OffsetTensor t;
    const int64_t bytes = storage_bytes(dtype, numel(shape)) + offset_bytes;
    t.storage = Tensor::empty({std::max<int64_t>(bytes, 1) + 16}, Dtype::u8, device);
    fill_bytes(t.storage, testing::kPoison);
    t.view =
        TensorView(static_cast<uint8_t*>(t.storage.data()) + offset_bytes, dtype, shape, device);
    return t;
  }
};

/// The parts of a quantized tensor, each at a chosen byte offset (0: as allocated).
struct QBuf {
  OffsetTensor codes, scale, zero, global;
  QuantizedView view;
  static QBuf make(const QuantScheme& s, const Shape& shape, Device device, bool misalign) {
    const QuantizedTensor proto = QuantizedTensor::allocate(s, shape, Device::cpu());
    QBuf b;
    auto part = [&](const Tensor& p, OffsetTensor& out) -> TensorView {
      if (p.data() == nullptr && p.numel() == 0 && p.shape().empty()) return {};
      const int64_t elem = std::max<int64_t>(1, bit_width(p.dtype()) / 8);
      out = OffsetTensor::make(p.shape(), p.dtype(), device, misalign ? elem : 0);
      return out.view;
    };
    b.view.scheme = s;
    b.view.shape = shape;
    b.view.codes = part(proto.codes, b.codes);
    b.view.scale = part(proto.scale, b.scale);
    b.view.zero = part(proto.zero, b.zero);
    b.view.global_scale = part(proto.global_scale, b.global);
    return b;
  }
};

bool has_part(const TensorView& v) { return v.data() != nullptr || !v.shape().empty(); }

/// Copies every part of `src` into the parts of `dst` (same scheme and shape).
void copy_parts(const QuantizedView& dst, const QuantizedView& src) {
  copy(dst.codes, src.codes);
  if (has_part(src.scale)) copy(dst.scale, src.scale);
  if (has_part(src.zero)) copy(dst.zero, src.zero);
  if (has_part(src.global_scale)) copy(dst.global_scale, src.global_scale);
}

/// Empty if every part holds the same bytes, else which part differs and how.
std::string compare_parts(const QuantizedView& want, const QuantizedView& got) {
  const char* names[] = {"codes", "scale", "zero", "global_scale"};
  const TensorView* w[] = {&want.codes, &want.scale, &want.zero, &want.global_scale};
  const TensorView* g[] = {&got.codes, &got.scale, &got.zero, &got.global_scale};
  for (int i = 0; i < 4; ++i) {
    if (!has_part(*w[i])) continue;
    const std::string d = compare_bytes(testing::to_host(*w[i]), testing::to_host(*g[i]));
    if (!d.empty()) return std::string(names[i]) + ": " + d;
  }
  return {};
}

// ---- running one kernel
// --------------------------------------------------------------------------

/// Runs the named quantize kernel; returns the error text, or "" on success.
std::string run_quantize(const char* kernel, const TensorView& x, const QuantizedView& q,
                         bool given = false, bool check = true) {
  try {
    QuantizeDesc d = QuantizeDesc::for_views(q, x, given);
    d.check_finite = check;
    Preference p;
    p.kernel = kernel;
    const QuantizePlan plan = QuantizePlan::select(d, p);
    const Stream s = Stream::default_for(x.device());
    plan.run(s, {}, {x, q});
    s.synchronize();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
  return {};
}

std::string run_dequantize(const char* kernel, const QuantizedView& q, const TensorView& y) {
  try {
    Preference p;
    p.kernel = kernel;
    const DequantizePlan plan = DequantizePlan::select(DequantizeDesc::for_views(y, q), p);
    const Stream s = Stream::default_for(y.device());
    plan.run(s, {}, {q, y});
    s.synchronize();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
  return {};
}

std::string sku_of(const TensorView& x, const QuantizedView& q) {
  return QuantizePlan::select(QuantizeDesc::for_views(q, x)).sku().str();
}

// ---- inputs
// ---------------------------------------------------------------------------------------

/// Finite test values, row by row: normal values with a random per-row magnitude, all-zero
/// rows, rows of special finite values (ties of the narrow formats, subnormals, format
/// maxima), and (unless `tame`) rows of random finite f32 bit patterns over the whole range.
void fill_values(float* x, int64_t rows, int64_t k, std::mt19937_64& rng, bool tame) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-20, 20);
  static const float specials[] = {0.0f,   -0.0f,   448.0f, 464.0f,   6.0f,     5.0f,
                                   0.25f,  1.5f,    0.75f,  1.0f,     -1.0f,    3.0f,
                                   1e-40f, -1e-39f, 1e-30f, 65504.0f, 127.0f,   -8.0f,
                                   0.5f,   2.5f,    1.25f,  -0.125f,  57344.0f, 1e-3f};
  for (int64_t r = 0; r < rows; ++r) {
    const int mode = static_cast<int>(rng() % (tame ? 3 : 4));
    const float scale = std::ldexp(1.0f, expo(rng));
    for (int64_t j = 0; j < k; ++j) {
      float v;
      switch (mode) {
        case 0:
          v = normal(rng) * scale;
          break;
        case 1:
          v = (rng() % 16 == 0) ? normal(rng) * 1e-3f : 0.0f;
          break;
        case 2:
          v = rng() % 4 ? specials[rng() % std::size(specials)] * scale
                        : specials[rng() % std::size(specials)];
          break;
        default: {
          uint32_t b = static_cast<uint32_t>(rng());
          if ((b & 0x7f800000u) == 0x7f800000u) b ^= 0x40000000u;
          v = numeric_detail::float_of(b);
          break;
        }
      }
      // Tame data stays below 2e5, where no GGUF block's f16 scale overflows.
      x[r * k + j] = tame ? std::fmax(-2e5f, std::fmin(2e5f, v)) : v;
    }
  }
}

/// A host tensor of `dtype` holding `values` (rounded; values that f16 cannot hold finitely
/// are clamped first).
Tensor host_source(const std::vector<float>& values, const Shape& shape, Dtype dtype) {
  std::vector<float> v = values;
  if (dtype == Dtype::f16)
    for (float& f : v)
      if (std::isfinite(f)) f = std::fmax(-65000.0f, std::fmin(65000.0f, f));
  Tensor f32 = Tensor::empty(shape, Dtype::f32);
  std::memcpy(f32.data(), v.data(), v.size() * sizeof(float));
  if (dtype == Dtype::f32) return f32;
  Tensor out = Tensor::empty(shape, dtype);
  convert(out, f32);
  return out;
}

/// A device copy of a host tensor, `offset_elems` elements into its allocation.
OffsetTensor device_source(const Tensor& host, int64_t offset_elems) {
  OffsetTensor t = OffsetTensor::make(host.shape(), host.dtype(), Device::cuda(0),
                                      offset_elems * (bit_width(host.dtype()) / 8));
  copy(t.view, host);
  return t;
}

bool fits(const QuantScheme& s, const Shape& shape) {
  try {
    code_shape(s, shape);
    scale_shape(s, shape);
    return true;
  } catch (const Error&) {
    return false;
  }
}

/// Quantizes `host` with the reference (host) and with CUDA (device, at the given
/// misalignment), then dequantizes both results with both kernels; returns "" if every byte
/// and every error text agrees.
std::string check_case(const QuantScheme& s, const Tensor& host, bool misalign, bool check = true) {
  const Shape& shape = host.shape();
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  const std::string ref_err = run_quantize(kRef, host, ref.view, false, check);
  OffsetTensor x = device_source(host, misalign ? 1 : 0);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  const std::string dev_err = run_quantize(kCuda, x.view, dev.view, false, check);
  if (ref_err != dev_err) return "quantize: reference '" + ref_err + "' vs cuda '" + dev_err + "'";
  if (!ref_err.empty()) return {};
  if (std::string d = compare_parts(ref.view, dev.view); !d.empty()) return "quantize " + d;
  // Dequantize the (identical) parts with both kernels to every destination.
  for (Dtype dt : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
    OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
    OffsetTensor got =
        OffsetTensor::make(shape, dt, Device::cuda(0), misalign ? bit_width(dt) / 8 : 0);
    const std::string e1 = run_dequantize(kDqRef, ref.view, want.view);
    const std::string e2 = run_dequantize(kDqCuda, dev.view, got.view);
    if (e1 != e2) return "dequantize: reference '" + e1 + "' vs cuda '" + e2 + "'";
    if (std::string d = compare_bytes(want.view, testing::to_host(got.view)); !d.empty())
      return std::string("dequantize to ") + std::string(dtype_name(dt)) + ": " + d;
  }
  return {};
}

/// Dequantizes arbitrary bytes (NaN / Inf codes and scales included) with both kernels.
std::string check_dequantize_random(const QuantScheme& s, const Shape& shape, bool misalign,
                                    std::mt19937_64& rng) {
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  auto randomize = [&](const TensorView& v) {
    if (!has_part(v)) return;
    auto* p = static_cast<uint8_t*>(v.data());
    if (v.dtype() == Dtype::i32) {  // zero points: mostly in range, some anywhere
      for (int64_t i = 0; i < v.numel(); ++i) {
        const int32_t z =
            rng() % 8 ? static_cast<int32_t>(rng() % 256) - 128 : static_cast<int32_t>(rng());
        std::memcpy(p + 4 * i, &z, 4);
      }
    } else {
      testing::fill_random(p, v.dtype(), v.numel(), rng);
    }
  };
  // Scales without NaN: where both factors of a product are NaN, which NaN x86 returns
  // depends on the operand order the reference's compiler chose (no kernel promises it).
  // NaN codes, Inf scales and 0 * Inf stay in.
  auto no_nan = [&](const TensorView& v) {
    if (!has_part(v)) return;
    auto* p = static_cast<uint8_t*>(v.data());
    for (int64_t i = 0; i < v.numel(); ++i) {
      switch (v.dtype()) {
        case Dtype::f32: {
          uint32_t b;
          std::memcpy(&b, p + 4 * i, 4);
          if ((b & 0x7fffffffu) > 0x7f800000u) b = 0x3f800000u;
          std::memcpy(p + 4 * i, &b, 4);
          break;
        }
        case Dtype::f16:
        case Dtype::bf16: {
          uint16_t h;
          std::memcpy(&h, p + 2 * i, 2);
          const bool nan =
              v.dtype() == Dtype::f16 ? (h & 0x7fffu) > 0x7c00u : (h & 0x7fffu) > 0x7f80u;
          if (nan) h = 0x3c00u;
          std::memcpy(p + 2 * i, &h, 2);
          break;
        }
        case Dtype::f8e4m3fn:
          if ((p[i] & 0x7fu) == 0x7fu) p[i] = 0x38u;
          break;
        case Dtype::e8m0:
          if (p[i] == 0xffu) p[i] = 0x7fu;
          break;
        default:
          break;
      }
    }
  };
  randomize(ref.view.codes);
  randomize(ref.view.scale);
  randomize(ref.view.zero);
  randomize(ref.view.global_scale);
  no_nan(ref.view.scale);
  no_nan(ref.view.global_scale);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  copy_parts(dev.view, ref.view);
  for (Dtype dt : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
    OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
    OffsetTensor got =
        OffsetTensor::make(shape, dt, Device::cuda(0), misalign ? bit_width(dt) / 8 : 0);
    const std::string e1 = run_dequantize(kDqRef, ref.view, want.view);
    const std::string e2 = run_dequantize(kDqCuda, dev.view, got.view);
    if (e1 != e2) return "dequantize: reference '" + e1 + "' vs cuda '" + e2 + "'";
    if (std::string d = compare_bytes(want.view, testing::to_host(got.view)); !d.empty())
      return std::string("dequantize random bytes to ") + std::string(dtype_name(dt)) + ": " + d;
  }
  return {};
}

std::string dims(const Shape& s) {
  std::string out;
  for (int i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out.empty() ? "scalar" : out;
}

// ---- the kernels' fast conversions against numeric.hpp, on every input -------------------------

enum Conv : int {
  kE4m3Lo,
  kE4m3Hi,
  kE5m2Lo,
  kE5m2Hi,
  kE2m1,
  kBf16Lo,
  kBf16Hi,
  kF16Lo,
  kF16Hi,
  kConvs
};
const char* const kConvNames[kConvs] = {"fp8x2_satfinite<e4m3> low",
                                        "fp8x2_satfinite<e4m3> high",
                                        "fp8x2_satfinite<e5m2> low",
                                        "fp8x2_satfinite<e5m2> high",
                                        "e2m1_from_f32",
                                        "bf16x2_rn low",
                                        "bf16x2_rn high",
                                        "f16x2_rn low",
                                        "f16x2_rn high"};

/// Every f32 pattern u (and its partner u * 0x9e3779b9 in the other half of the pair
/// conversions) through each fast encoder and numeric.hpp's; mismatches counted, the first
/// input of each kept. fp8 and e2m1 skip NaN inputs (the quantizers never convert NaN).
__global__ void sweep_encoders(unsigned long long* mismatches, unsigned int* first) {
  using namespace quant_cuda;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
       i < (uint64_t{1} << 32); i += stride) {
    const uint32_t u = static_cast<uint32_t>(i);
    const uint32_t v = u * 0x9e3779b9u;
    const float x = __uint_as_float(u), y = __uint_as_float(v);
    const bool xnan = (u & 0x7fffffffu) > 0x7f800000u, ynan = (v & 0x7fffffffu) > 0x7f800000u;
    bool bad[kConvs] = {};
    {
      const uint32_t r = fp8x2_satfinite<false>(x, y);
      bad[kE4m3Lo] = !xnan && (r & 0xffu) != f32_to_f8e4m3fn(x, Saturation::finite);
      bad[kE4m3Hi] = !ynan && (r >> 8) != f32_to_f8e4m3fn(y, Saturation::finite);
    }
    {
      const uint32_t r = fp8x2_satfinite<true>(x, y);
      bad[kE5m2Lo] = !xnan && (r & 0xffu) != f32_to_f8e5m2(x, Saturation::finite);
      bad[kE5m2Hi] = !ynan && (r >> 8) != f32_to_f8e5m2(y, Saturation::finite);
    }
    bad[kE2m1] = !xnan && e2m1_from_f32(x) != f32_to_f4e2m1(x);
    {
      const uint32_t r = bf16x2_rn(x, y);
      bad[kBf16Lo] = (r & 0xffffu) != f32_to_bf16(x);
      bad[kBf16Hi] = (r >> 16) != f32_to_bf16(y);
    }
    {
      const uint32_t r = f16x2_rn(x, y);
      bad[kF16Lo] = (r & 0xffffu) != f32_to_f16(x);
      bad[kF16Hi] = (r >> 16) != f32_to_f16(y);
    }
    for (int k = 0; k < kConvs; ++k)
      if (bad[k]) {
        if (atomicAdd(mismatches + k, 1ull) == 0) first[k] = u;
      }
  }
}

/// Every code through the fast decoders and numeric.hpp's (bits compared).
__global__ void sweep_decoders(unsigned int* mismatches) {
  using namespace quant_cuda;
  const uint32_t c = threadIdx.x;  // 256 threads
  if (__float_as_uint(e4m3_to_f32(c)) != __float_as_uint(f8e4m3fn_to_f32(static_cast<uint8_t>(c))))
    atomicAdd(mismatches + 0, 1u);
  if (__float_as_uint(e5m2_to_f32(c)) != __float_as_uint(f8e5m2_to_f32(static_cast<uint8_t>(c))))
    atomicAdd(mismatches + 1, 1u);
  if (c < 16 &&
      __float_as_uint(e2m1_to_f32(c)) != __float_as_uint(f4e2m1_to_f32(static_cast<uint8_t>(c))))
    atomicAdd(mismatches + 2, 1u);
}

/// mul_x86 on the device against the host's own f32 product (this test runs on x86-64).
__global__ void products(const float* a, const float* b, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = quant_cuda::mul_x86(a[i], b[i]);
}

TEST(QuantizeCuda, FastConversionsEqualNumericOnEveryInput) {
  LOWBIT_REQUIRE_CUDA();
  unsigned long long* mism = nullptr;
  unsigned int* first = nullptr;
  unsigned int* dmism = nullptr;
  ASSERT_EQ(cudaMalloc(&mism, sizeof(unsigned long long) * kConvs), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&first, sizeof(unsigned int) * kConvs), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dmism, sizeof(unsigned int) * 3), cudaSuccess);
  cudaMemset(mism, 0, sizeof(unsigned long long) * kConvs);
  cudaMemset(first, 0, sizeof(unsigned int) * kConvs);
  cudaMemset(dmism, 0, sizeof(unsigned int) * 3);
  sweep_encoders<<<4096, 256>>>(mism, first);
  sweep_decoders<<<1, 256>>>(dmism);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  unsigned long long hm[kConvs];
  unsigned int hf[kConvs], hd[3];
  cudaMemcpy(hm, mism, sizeof hm, cudaMemcpyDeviceToHost);
  cudaMemcpy(hf, first, sizeof hf, cudaMemcpyDeviceToHost);
  cudaMemcpy(hd, dmism, sizeof hd, cudaMemcpyDeviceToHost);
  for (int k = 0; k < kConvs; ++k)
    EXPECT_EQ(hm[k], 0u) << kConvNames[k] << ": first mismatch at input 0x" << std::hex << hf[k];
  EXPECT_EQ(hd[0], 0u) << "e4m3_to_f32";
  EXPECT_EQ(hd[1], 0u) << "e5m2_to_f32";
  EXPECT_EQ(hd[2], 0u) << "e2m1_to_f32";
  cudaFree(mism);
  cudaFree(first);
  cudaFree(dmism);

  // mul_x86: products of special values (NaN payloads, Inf, zeros, subnormals) and random
  // ones; pairs of two NaNs are left out (x86 returns the first operand, and which one is
  // first is the compiler's choice).
  const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                               0xffc00000u, 0x7f800001u, 0xffa00005u, 0x7fbfffffu, 0x00000001u,
                               0x80400000u, 0x3f800000u, 0xc0000000u, 0x7f7fffffu, 0x00800000u};
  auto rng = testing::make_rng(11);
  std::vector<float> a, b;
  for (uint32_t x : specials)
    for (uint32_t y : specials) {
      a.push_back(numeric_detail::float_of(x));
      b.push_back(numeric_detail::float_of(y));
    }
  for (int i = 0; i < 100000; ++i) {
    a.push_back(numeric_detail::float_of(static_cast<uint32_t>(rng())));
    b.push_back(numeric_detail::float_of(static_cast<uint32_t>(rng())));
  }
  const int n = static_cast<int>(a.size());
  float *da, *db, *dout;
  cudaMalloc(&da, n * 4);
  cudaMalloc(&db, n * 4);
  cudaMalloc(&dout, n * 4);
  cudaMemcpy(da, a.data(), n * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), n * 4, cudaMemcpyHostToDevice);
  products<<<(n + 255) / 256, 256>>>(da, db, dout, n);
  std::vector<float> got(n);
  cudaMemcpy(got.data(), dout, n * 4, cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    volatile float va = a[i], vb = b[i];
    const float want = va * vb;
    if (numeric_detail::bits_of(want) != numeric_detail::bits_of(got[i]) && ++bad <= 5)
      ADD_FAILURE() << std::hex << "mul_x86(0x" << numeric_detail::bits_of(a[i]) << ", 0x"
                    << numeric_detail::bits_of(b[i]) << "): host 0x"
                    << numeric_detail::bits_of(want) << ", device 0x"
                    << numeric_detail::bits_of(got[i]);
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dout);
}

// ---- a sweep over schemes, shapes, sources and alignments ---------------------------------------

TEST(QuantizeCuda, SweepMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA();
  const char* schemes[] = {"int8:tensor",
                           "int8:tensor:asym",
                           "uint8:tensor",
                           "int4:tensor",
                           "uint4:tensor",
                           "int8:token",
                           "int8:token:asym",
                           "uint8:token:scale=bf16",
                           "int4:token",
                           "uint4:token",
                           "int8:channel",
                           "int8:channel:axis=1",
                           "uint8:channel:axis=-1",
                           "int4:channel",
                           "int8:block16:scale=f16",
                           "int8:block32:asym",
                           "int4:block32",
                           "uint4:block64:scale=bf16",
                           "int4:block128:asym",
                           "int8:block256",
                           "fp8e4m3:tensor",
                           "fp8e5m2:tensor",
                           "fp8e4m3:token",
                           "fp8e5m2:token",
                           "fp8e4m3:channel",
                           "fp8e5m2:channel:axis=1",
                           "fp8e4m3:block128",
                           "fp8e5m2:block32",
                           "fp8e4m3:block128x128",
                           "fp8e5m2:block16x16",
                           "nvfp4",
                           "mxfp4",
                           "mxfp8e4m3",
                           "mxfp8e5m2",
                           "q8_0",
                           "q4_0"};
  const Shape shapes[] = {{4, 64},   {3, 5, 96}, {1, 4096},    {7, 128},   {2, 1, 640}, {130, 256},
                          {5, 7},    {0, 64},    {256, 24},    {9, 1024},  {3, 33},     {1000},
                          {2, 4100}, {1, 40960}, {1, 1, 2048}, {300, 160}, {3, 16384}};
  auto rng = testing::make_rng(202);
  int cases = 0, failures = 0;
  for (const char* text : schemes) {
    const QuantScheme s = QuantScheme::parse(text);
    const bool tame = s.format == QuantFormat::gguf;
    for (const Shape& shape : shapes) {
      if (!fits(s, shape)) continue;
      const int64_t n = numel(shape);
      const int64_t k = shape.size() ? shape[shape.size() - 1] : 1;
      std::vector<float> values(static_cast<size_t>(n));
      if (n > 0) fill_values(values.data(), n / k, k, rng, tame);
      for (Dtype src : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
        const Tensor host = host_source(values, shape, src);
        for (bool misalign : {false, true}) {
          ++cases;
          const std::string d = check_case(s, host, misalign);
          if (!d.empty() && ++failures <= 40)
            ADD_FAILURE() << text << " " << dims(shape) << " " << dtype_name(src)
                          << (misalign ? " misaligned" : "") << ": " << d;
        }
      }
      for (bool misalign : {false, true}) {
        const std::string d = check_dequantize_random(s, shape, misalign, rng);
        if (!d.empty() && ++failures <= 40)
          ADD_FAILURE() << text << " " << dims(shape) << (misalign ? " misaligned" : "") << ": "
                        << d;
      }
    }
  }
  std::printf("  %d quantize cases (+ dequantize of each), %d failures\n", cases, failures);
}

TEST(QuantizeCuda, GivenScalesMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(303);
  for (const char* text : {"int8:token", "uint8:tensor", "int4:block32:asym", "uint4:channel",
                           "fp8e4m3:token", "fp8e5m2:block128x128", "nvfp4"}) {
    const QuantScheme s = QuantScheme::parse(text);
    const Shape shape{130, 256};
    std::vector<float> values(130 * 256);
    fill_values(values.data(), 130, 256, rng, true);
    const Tensor host = host_source(values, shape, Dtype::f32);
    // Scales (and zero points) from a dynamic quantization of other data, then scaled.
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    std::vector<float> other(values.size());
    fill_values(other.data(), 130, 256, rng, true);
    ASSERT_EQ(run_quantize(kRef, host_source(other, shape, Dtype::f32), ref.view), "") << text;
    for (bool misalign : {false, true}) {
      QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
      copy_parts(dev.view, ref.view);
      OffsetTensor x = device_source(host, misalign ? 1 : 0);
      const std::string e1 = run_quantize(kRef, host, ref.view, true);
      const std::string e2 = run_quantize(kCuda, x.view, dev.view, true);
      EXPECT_EQ(e1, e2) << text;
      EXPECT_EQ(compare_parts(ref.view, dev.view), "") << text << (misalign ? " misaligned" : "");
    }
  }
}

// ---- nvfp4 near its rounding boundaries -------------------------------------------------------

/// f32 `steps` ulps from v (v positive, normal).
float ulps_from(float v, int steps) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b = static_cast<uint32_t>(static_cast<int64_t>(b) + steps);
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

/// The CUDA kernel estimates nvfp4's block scale (amax / 6 / global) and element quotients
/// (x / total) with products of approximate reciprocals and divides only near a rounding
/// boundary: blocks whose amax puts the quotient on, or within 3 ulps of, every e4m3 value
/// and midpoint in [2^-6, 448] (and elements on, or 1 ulp from, e2m1's midpoints) must give
/// the reference's bits, for global scales inside and outside the estimate's range.
TEST(QuantizeCuda, Nvfp4NearRoundingBoundariesMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA();
  // e4m3 values from 2^-6 to 448 and the midpoints between them (and 464, past 448).
  std::vector<float> targets;
  for (int e = -6; e <= 8; ++e)
    for (int m = 0; m < 8; ++m) {
      const float v = std::ldexp(1.0f + m / 8.0f, e);
      if (v > 448.0f) break;
      targets.push_back(v);
      targets.push_back(std::ldexp(1.0f + (2 * m + 1) / 16.0f, e));
    }
  const float mids[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  auto rng = testing::make_rng(515);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (float global : {1.0f, 0.3f, 1e-3f, 0x1p-120f, 0x1p90f, 0x1p101f}) {
    std::vector<float> values;
    for (float t : targets)
      for (int k = -3; k <= 3; ++k) {
        const float amax = ulps_from(t * 6.0f * global, k);
        const uint8_t sc = formats::nvfp4_block_scale(amax, global);
        const float total = global * f8e4m3fn_to_f32(sc);
        float block[16];
        block[0] = (k & 1) ? -amax : amax;
        for (int i = 1; i < 16; ++i) {
          // Elements on and around e2m1's midpoints (times the block's total scale), kept
          // under the block's amax.
          const float mid = mids[(i + k + 3) % 7] * total;
          const float v = ulps_from(mid, (i % 3) - 1);
          block[i] = std::fabs(v) < amax ? (i % 2 ? -v : v) : amax * unit(rng);
        }
        values.insert(values.end(), block, block + 16);
      }
    const int64_t k = 16;
    const Shape shape{static_cast<int64_t>(values.size()) / k, k};
    ASSERT_EQ(values.size() % k, 0u);
    const QuantScheme s = QuantScheme::parse("nvfp4");
    const Tensor host = host_source(values, shape, Dtype::f32);
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    *static_cast<float*>(ref.view.global_scale.data()) = global;
    QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
    copy_parts(dev.view, ref.view);
    OffsetTensor x = device_source(host, 0);
    ASSERT_EQ(run_quantize(kRef, host, ref.view, true), "") << global;
    ASSERT_EQ(run_quantize(kCuda, x.view, dev.view, true), "") << global;
    EXPECT_EQ(compare_parts(ref.view, dev.view), "") << "global " << global;
  }
}

/// The kernels compute e2m1 codes with FP32 arithmetic (clamps and magic-constant roundings)
/// and nvfp4's x / total by Markstein's correction of a reciprocal product: every bf16
/// mantissa, within the five binades under each block's amax (the quotients 6 / 32 .. 6 that
/// cross all of e2m1's midpoints), for nvfp4 (computed and given global scales, the latter
/// across the range where the kernel's fast path ends) and mxfp4, from bf16 and f16
/// sources, must give the reference's bits.
TEST(QuantizeCuda, E2m1FormatsOnEveryMantissaMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(516);
  std::uniform_int_distribution<int> mant(0, 127), exp5(0, 4), amax_exp(-20, 20);
  for (Dtype src : {Dtype::bf16, Dtype::f16}) {
    const int kBlocks = 8192, k = 64;  // rows of 4 nvfp4 / 2 mxfp4 blocks
    std::vector<float> values(static_cast<size_t>(kBlocks) * 16);
    for (int b = 0; b < kBlocks; ++b) {
      // amax: an arbitrary bf16 (f16-representable for f16 sources: |exponent| <= 12).
      const int ea = src == Dtype::f16 ? amax_exp(rng) % 12 : amax_exp(rng);
      const float amax = std::ldexp(1.0f + mant(rng) / 128.0f, ea);
      float* blk = values.data() + static_cast<size_t>(b) * 16;
      blk[b % 16] = (b & 1) ? -amax : amax;
      for (int i = 0; i < 16; ++i) {
        if (i == b % 16) continue;
        const float v = std::ldexp(1.0f + mant(rng) / 128.0f, ea - 1 - exp5(rng));
        blk[i] = (i + b) % 3 ? v : -v;
      }
    }
    // Every bf16 mantissa at least once per exponent offset: overwrite the first blocks'
    // non-amax elements with a sweep.
    for (int m = 0, b = 0; m < 128 * 5; ++b) {
      float* blk = values.data() + static_cast<size_t>(b) * 16;
      const float amax = std::fabs(blk[b % 16]);
      int e;
      std::frexp(amax, &e);  // amax in [2^(e-1), 2^e)
      for (int i = 0; i < 16 && m < 128 * 5; ++i) {
        if (i == b % 16) continue;
        blk[i] = std::ldexp(1.0f + (m % 128) / 128.0f, e - 2 - m / 128);
        ++m;
      }
    }
    const Shape shape{static_cast<int64_t>(values.size()) / k, k};
    const Tensor host = host_source(values, shape, src);
    for (const char* text : {"nvfp4", "mxfp4"}) {
      const QuantScheme s = QuantScheme::parse(text);
      const bool nv = s.format == QuantFormat::nvfp4;
      for (float global : {0.0f, 1.0f, 0x1p-100f, 0x1p-80f, 0x1p80f}) {  // 0: computed
        if (!nv && global != 0.0f) continue;
        QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
        QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
        if (global != 0.0f) {
          *static_cast<float*>(ref.view.global_scale.data()) = global;
          copy_parts(dev.view, ref.view);
        }
        OffsetTensor x = device_source(host, 0);
        ASSERT_EQ(run_quantize(kRef, host, ref.view, global != 0.0f), "") << text;
        ASSERT_EQ(run_quantize(kCuda, x.view, dev.view, global != 0.0f), "") << text;
        EXPECT_EQ(compare_parts(ref.view, dev.view), "")
            << text << " " << dtype_name(src) << " global " << global;
      }
    }
  }
}

// ---- error texts
// ---------------------------------------------------------------------------------

/// The reference's and CUDA's error texts for `values` quantized with `text`.
void expect_same_error(const char* text, const Shape& shape, const std::vector<float>& values,
                       Dtype src = Dtype::f32, bool misalign = false) {
  const QuantScheme s = QuantScheme::parse(text);
  const Tensor host = host_source(values, shape, src);
  QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
  const std::string e1 = run_quantize(kRef, host, ref.view);
  OffsetTensor x = device_source(host, misalign ? 1 : 0);
  QBuf dev = QBuf::make(s, shape, Device::cuda(0), misalign);
  const std::string e2 = run_quantize(kCuda, x.view, dev.view);
  EXPECT_NE(e1, "") << text;
  EXPECT_EQ(e1, e2) << text << " " << dtype_name(src) << " " << sku_of(x.view, dev.view);
}

TEST(QuantizeCuda, NonFiniteInputsGiveTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{64, 512};
  std::vector<float> base(64 * 512);
  auto rng = testing::make_rng(404);
  fill_values(base.data(), 64, 512, rng, true);
  const char* schemes[] = {"int8:token",
                           "int8:tensor",
                           "uint8:tensor",
                           "int4:block32",
                           "fp8e4m3:token",
                           "int8:channel:axis=1",
                           "fp8e4m3:block128x128",
                           "nvfp4",
                           "mxfp4",
                           "mxfp8e5m2",
                           "q8_0",
                           "q4_0"};
  for (const char* text : schemes) {
    for (Dtype src : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
      // A NaN after an Inf (the Inf is first), and a lone NaN, in different rows.
      std::vector<float> v = base;
      v[3 * 512 + 77] = INFINITY;
      v[40 * 512 + 5] = NAN;
      expect_same_error(text, shape, v, src);
      v = base;
      v[63 * 512 + 511] = -NAN;
      v[64 * 512 - 2] = -INFINITY;
      expect_same_error(text, shape, v, src, true);
    }
  }
  // A large tensor: the first bad element wins over later ones in other blocks.
  std::vector<float> big(4096 * 1024, 0.5f);
  big[4095 * 1024 + 3] = NAN;
  big[2000 * 1024 + 1000] = INFINITY;
  big[2000 * 1024 + 1001] = NAN;
  for (const char* text : {"int8:token", "int8:tensor", "nvfp4", "q8_0"})
    expect_same_error(text, {4096, 1024}, big, Dtype::bf16);
}

TEST(QuantizeCuda, GgufScaleOverflowGivesTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  std::vector<float> v(8 * 256, 1.0f);
  v[5 * 256 + 100] = 3e7f;  // row 5, block 3: d = 3e7 / 127 overflows f16
  v[6 * 256 + 10] = -9e6f;
  expect_same_error("q8_0", {8, 256}, v);
  expect_same_error("q4_0", {8, 256}, v);
  expect_same_error("q8_0", {8, 256}, v, Dtype::bf16, true);
}

TEST(QuantizeCuda, InvalidGivenScalesGiveTheReferenceErrorText) {
  LOWBIT_REQUIRE_CUDA();
  const Shape shape{16, 64};
  const std::vector<float> values(16 * 64, 0.25f);
  const Tensor host = host_source(values, shape, Dtype::f32);
  struct Case {
    const char* scheme;
    int64_t group;
    float scale;
    int32_t zero;
  };
  const Case cases[] = {{"int8:token", 5, -1.0f, 0},
                        {"int8:token", 3, 1e-40f, 0},
                        {"uint8:token", 7, 0.5f, 300},
                        {"uint4:block32", 4, 0.5f, -1},
                        {"fp8e4m3:token", 2, NAN, 0},
                        {"fp8e5m2:tensor", 0, INFINITY, 0},
                        {"nvfp4", 0, -2.0f, 0},
                        {"int8:token:scale=bf16", 9, -1e-3f, 0},
                        {"int8:block16:scale=f16", 11, 65504.0f * 2, 0}};
  for (const Case& c : cases) {
    const QuantScheme s = QuantScheme::parse(c.scheme);
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    ASSERT_EQ(run_quantize(kRef, host, ref.view), "") << c.scheme;
    if (s.format == QuantFormat::nvfp4) {
      ref.view.global_scale.data_as<float>()[0] = c.scale;
    } else {
      Tensor one = Tensor::empty({1}, Dtype::f32);
      one.data_as<float>()[0] = c.scale;
      // The group's scale in the scale dtype (flat index c.group).
      Tensor conv = Tensor::empty({1}, ref.view.scale.dtype());
      convert(conv, one);
      const int64_t bytes = bit_width(ref.view.scale.dtype()) / 8;
      std::memcpy(static_cast<uint8_t*>(ref.view.scale.data()) + c.group * bytes, conv.data(),
                  static_cast<size_t>(bytes));
      if (has_part(ref.view.zero)) ref.view.zero.data_as<int32_t>()[c.group] = c.zero;
    }
    QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
    copy_parts(dev.view, ref.view);
    OffsetTensor x = device_source(host, 0);
    const std::string e1 = run_quantize(kRef, host, ref.view, true);
    const std::string e2 = run_quantize(kCuda, x.view, dev.view, true);
    EXPECT_NE(e1, "") << c.scheme;
    EXPECT_EQ(e1, e2) << c.scheme;
  }
}

// ---- check_finite = false
// ------------------------------------------------------------------------

TEST(QuantizeCuda, CheckFiniteOffGivesTheSameBitsAndSkipsTheCheck) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(505);
  const Shape shape{96, 1024};
  std::vector<float> values(96 * 1024);
  fill_values(values.data(), 96, 1024, rng, true);
  for (const char* text : {"int8:token", "int8:tensor", "int4:block32", "fp8e4m3:token", "nvfp4",
                           "mxfp4", "q8_0", "q4_0", "fp8e4m3:block128x128"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (Dtype src : {Dtype::f32, Dtype::bf16}) {
      const Tensor host = host_source(values, shape, src);
      EXPECT_EQ(check_case(s, host, false, /*check=*/false), "") << text;
      // Non-finite inputs: no error, no fault; the stream stays usable.
      std::vector<float> bad = values;
      bad[17] = NAN;
      bad[5000] = INFINITY;
      OffsetTensor x = device_source(host_source(bad, shape, src), 0);
      QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
      EXPECT_EQ(run_quantize(kCuda, x.view, dev.view, false, /*check=*/false), "") << text;
      EXPECT_NE(run_quantize(kCuda, x.view, dev.view, false, /*check=*/true), "") << text;
    }
  }
}

// ---- determinism
// ---------------------------------------------------------------------------------

TEST(QuantizeCuda, RepeatedRunsGiveIdenticalBits) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(606);
  const Shape shape{2048, 2048};
  std::vector<float> values(2048 * 2048);
  fill_values(values.data(), 2048, 2048, rng, true);
  const Tensor host = host_source(values, shape, Dtype::bf16);
  OffsetTensor x = device_source(host, 0);
  OffsetTensor xm = device_source(host, 1);
  for (const char* text :
       {"int8:tensor", "uint8:tensor", "fp8e4m3:tensor", "nvfp4", "int8:channel:axis=1",
        "uint8:channel:axis=1", "fp8e4m3:block128x128", "int8:token", "mxfp4", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (bool misalign : {false, true}) {
      const TensorView& src = misalign ? xm.view : x.view;
      QBuf first = QBuf::make(s, shape, Device::cuda(0), false);
      ASSERT_EQ(run_quantize(kCuda, src, first.view), "") << text;
      for (int rep = 0; rep < 3; ++rep) {
        QBuf again = QBuf::make(s, shape, Device::cuda(0), false);
        ASSERT_EQ(run_quantize(kCuda, src, again.view), "") << text;
        EXPECT_EQ(compare_parts(first.view, again.view), "") << text << " run " << rep;
      }
    }
  }
}

/// The 4-bit integer formats (to bf16 / f16) and GGUF q8_0 / q4_0 (to f32) dequantize
/// through shared memory and TMA bulk stores, a block's step being 2048 chunks of 8 elements
/// (256 GGUF blocks): one step's part, exact multiples of a step and partial last steps,
/// each against the reference, with the 4 KiB after the output checked untouched (a bulk
/// store that runs past the end shows). Every destination dtype is run for every scheme.
TEST(QuantizeCuda, BulkDequantizeWritesExactlyItsOutput) {
  LOWBIT_REQUIRE_CUDA();
  auto rng = testing::make_rng(707);
  constexpr int64_t kGuard = 4096;
  int cases = 0;
  for (const char* text :
       {"int4:block32", "uint4:block32:asym", "int4:token", "uint4:tensor", "q8_0", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (int64_t chunks : {8, 2040, 2048, 2056, 4096, 6152, 20008}) {
      const Shape shape{2, chunks * 4};  // chunks x 8 elements, rows a multiple of 32
      std::vector<float> values(static_cast<size_t>(chunks * 8));
      // GGUF: finite scales only (a block's d overflowing f16 is an error, tested elsewhere).
      fill_values(values.data(), 2, chunks * 4, rng, s.format == QuantFormat::gguf);
      const Tensor host = host_source(values, shape, Dtype::f32);
      QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
      ASSERT_EQ(run_quantize(kRef, host, ref.view), "") << text;
      QBuf dev = QBuf::make(s, shape, Device::cuda(0), false);
      copy_parts(dev.view, ref.view);
      for (Dtype dt : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
        ++cases;
        const int64_t bytes = storage_bytes(dt, chunks * 8);
        OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
        ASSERT_EQ(run_dequantize(kDqRef, ref.view, want.view), "") << text;
        Tensor storage = Tensor::empty({bytes + kGuard}, Dtype::u8, Device::cuda(0));
        fill_bytes(storage, testing::kPoison);
        const TensorView got(storage.data(), dt, shape, Device::cuda(0));
        ASSERT_EQ(run_dequantize(kDqCuda, dev.view, got), "") << text;
        EXPECT_EQ(compare_bytes(want.view, testing::to_host(got)), "")
            << text << " " << chunks << " chunks to " << dtype_name(dt);
        const Tensor after = testing::to_host(storage);
        const auto* tail = static_cast<const uint8_t*>(after.data()) + bytes;
        int64_t touched = 0;
        for (int64_t i = 0; i < kGuard; ++i) touched += tail[i] != testing::kPoison;
        EXPECT_EQ(touched, 0) << text << " " << chunks << " chunks to " << dtype_name(dt)
                              << ": bytes written past the output";
      }
    }
  }
  std::printf("  %d dequantize cases with a guarded tail\n", cases);
}

/// The lanes' stores, which pre-Hopper devices run for the formats that take the bulk path
/// on sm_90 (int4 / uint4 -> bf16 / f16, GGUF -> f32), forced with LOWBIT_DEQUANT_BULK=0:
/// random bytes (NaN / Inf codes and scales included) against the reference.
TEST(QuantizeCuda, LanesStoresOfTheBulkFormatsMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  ::setenv("LOWBIT_DEQUANT_BULK", "0", 1);
  auto rng = testing::make_rng(909);
  int failures = 0;
  for (const char* text : {"int4:block32", "uint4:block64:asym", "int4:token", "q8_0", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    for (const Shape& shape : {Shape{4, 64}, Shape{130, 256}, Shape{3, 16384}, Shape{1, 40960}}) {
      for (bool misalign : {false, true}) {
        const std::string d = check_dequantize_random(s, shape, misalign, rng);
        if (!d.empty() && ++failures <= 20)
          ADD_FAILURE() << text << " " << dims(shape) << (misalign ? " misaligned" : "") << ": "
                        << d;
      }
    }
  }
  ::unsetenv("LOWBIT_DEQUANT_BULK");
}

/// Kernels that opt in to more than 48 KiB of dynamic shared memory must do so on every
/// device they run on (the attribute belongs to the function in each device's context): the
/// bulk dequantize paths on each GPU in turn, device 0 first. Needs two GPUs.
TEST(QuantizeCuda, BulkDequantizeRunsOnEveryDevice) {
  LOWBIT_REQUIRE_CUDA();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (devices < 2)
    GTEST_SKIP() << "needs two CUDA devices (this machine has " << devices
                 << "): the shared-memory opt-in of a second device is not exercised";
  auto rng = testing::make_rng(808);
  const Shape shape{64, 4096};
  std::vector<float> values(64 * 4096);
  fill_values(values.data(), 64, 4096, rng, true);
  const Tensor host = host_source(values, shape, Dtype::f32);
  for (const char* text : {"int4:block32", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    const Dtype dt = s.format == QuantFormat::gguf ? Dtype::f32 : Dtype::bf16;
    QBuf ref = QBuf::make(s, shape, Device::cpu(), false);
    ASSERT_EQ(run_quantize(kRef, host, ref.view), "") << text;
    OffsetTensor want = OffsetTensor::make(shape, dt, Device::cpu(), 0);
    ASSERT_EQ(run_dequantize(kDqRef, ref.view, want.view), "") << text;
    for (int dev = 0; dev < devices; ++dev) {
      QBuf q = QBuf::make(s, shape, Device::cuda(dev), false);
      copy_parts(q.view, ref.view);
      OffsetTensor got = OffsetTensor::make(shape, dt, Device::cuda(dev), 0);
      ASSERT_EQ(run_dequantize(kDqCuda, q.view, got.view), "") << text << " on cuda:" << dev;
      EXPECT_EQ(compare_bytes(want.view, testing::to_host(got.view)), "")
          << text << " on cuda:" << dev;
    }
  }
}

// ---- the benchmark's schemes, full size --------------------------------------------------------

TEST(QuantizeCuda, BenchmarkSchemesAtFullSizeMatchTheReference) {
  LOWBIT_REQUIRE_CUDA();
  const int64_t rows = 16384, k = 8192;
  auto rng = testing::make_rng(101);
  std::vector<float> values(static_cast<size_t>(rows * k));
  // Normal values with a per-row magnitude (the bench's data is plain N(0, 1)).
  {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> expo(-8, 8);
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = std::ldexp(1.0f, expo(rng));
      for (int64_t j = 0; j < k; ++j) values[static_cast<size_t>(r * k + j)] = normal(rng) * scale;
    }
  }
  const Tensor bf16 = host_source(values, {rows, k}, Dtype::bf16);
  const Tensor f32 = host_source(values, {rows, k}, Dtype::f32);
  for (const char* text :
       {"int8:token", "fp8e4m3:token", "int4:block32", "nvfp4", "mxfp4", "q8_0", "q4_0"}) {
    const QuantScheme s = QuantScheme::parse(text);
    const bool gguf = s.format == QuantFormat::gguf;
    const Tensor& host = gguf ? f32 : bf16;
    SCOPED_TRACE(text);
    QBuf ref = QBuf::make(s, {rows, k}, Device::cpu(), false);
    ASSERT_EQ(run_quantize(kRef, host, ref.view), "");
    OffsetTensor x = device_source(host, 0);
    QBuf dev = QBuf::make(s, {rows, k}, Device::cuda(0), false);
    std::printf("  %-14s %s\n", text, sku_of(x.view, dev.view).c_str());
    ASSERT_EQ(run_quantize(kCuda, x.view, dev.view), "");
    EXPECT_EQ(compare_parts(ref.view, dev.view), "");
    const Dtype dt = gguf ? Dtype::f32 : Dtype::bf16;
    OffsetTensor want = OffsetTensor::make({rows, k}, dt, Device::cpu(), 0);
    OffsetTensor got = OffsetTensor::make({rows, k}, dt, Device::cuda(0), 0);
    ASSERT_EQ(run_dequantize(kDqRef, ref.view, want.view), "");
    ASSERT_EQ(run_dequantize(kDqCuda, dev.view, got.view), "");
    EXPECT_EQ(compare_bytes(want.view, testing::to_host(got.view)), "");
  }
}

}  // namespace
}  // namespace lowbit
