// numeric.hpp on the GPU: every f32 bit pattern through every narrow encoder (both
// saturation modes) and every code through every decoder, compared with the same functions
// on the host; then every f32 pattern and every 8/16-bit code through the convert op on
// cuda:0, so the CUDA kernels' own element code (convert_cuda.cu) is checked on every
// input it can see, at shifting alignments (vector and fallback paths, heads and tails).
// Skips visibly without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lowbit/convert.hpp"
#include "lowbit/numeric.hpp"
#include "support/testing.hpp"

namespace {

using lowbit::Device;
using lowbit::Dtype;
using lowbit::Saturation;
using lowbit::numeric_detail::bits_of;  // f32/f64 <-> bits on host and device alike
using lowbit::numeric_detail::double_of;
using lowbit::numeric_detail::float_of;

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

/// Inputs per chunk of the 2^32 sweep (128 chunks).
constexpr uint64_t kChunk = uint64_t{1} << 25;
constexpr uint64_t kAll = uint64_t{1} << 32;

/// One narrow encoder and mode of the sweep; `bytes` is its result's width.
struct Target {
  const char* name;
  Dtype dtype;
  Saturation sat;
  int bytes;
};
constexpr Target kTargets[] = {
    {"f16", Dtype::f16, Saturation::none, 2},
    {"f16 satfinite", Dtype::f16, Saturation::finite, 2},
    {"bf16", Dtype::bf16, Saturation::none, 2},
    {"bf16 satfinite", Dtype::bf16, Saturation::finite, 2},
    {"f8e4m3fn", Dtype::f8e4m3fn, Saturation::none, 1},
    {"f8e4m3fn satfinite", Dtype::f8e4m3fn, Saturation::finite, 1},
    {"f8e5m2", Dtype::f8e5m2, Saturation::none, 1},
    {"f8e5m2 satfinite", Dtype::f8e5m2, Saturation::finite, 1},
    {"f4e2m1", Dtype::f4e2m1, Saturation::none, 1},
    {"f4e2m1 satfinite", Dtype::f4e2m1, Saturation::finite, 1},
    {"e8m0", Dtype::e8m0, Saturation::none, 1},
    {"e8m0 satfinite", Dtype::e8m0, Saturation::finite, 1},
};
constexpr int kTargetCount = sizeof(kTargets) / sizeof(kTargets[0]);
/// kTargets[t].bytes, for device code.
__host__ __device__ constexpr int target_bytes(int t) { return t < 4 ? 2 : 1; }
constexpr bool target_bytes_agree() {
  for (int t = 0; t < kTargetCount; ++t)
    if (kTargets[t].bytes != target_bytes(t)) return false;
  return true;
}
static_assert(target_bytes_agree());

/// numeric.hpp's encoder for target t (the same call on host and device).
__host__ __device__ inline uint32_t encode_target(int t, uint32_t x) {
  const float f = float_of(x);
  switch (t) {
    case 0:
      return lowbit::f32_to_f16(f, Saturation::none);
    case 1:
      return lowbit::f32_to_f16(f, Saturation::finite);
    case 2:
      return lowbit::f32_to_bf16(f, Saturation::none);
    case 3:
      return lowbit::f32_to_bf16(f, Saturation::finite);
    case 4:
      return lowbit::f32_to_f8e4m3fn(f, Saturation::none);
    case 5:
      return lowbit::f32_to_f8e4m3fn(f, Saturation::finite);
    case 6:
      return lowbit::f32_to_f8e5m2(f, Saturation::none);
    case 7:
      return lowbit::f32_to_f8e5m2(f, Saturation::finite);
    case 8:
    case 9:
      return lowbit::f32_to_f4e2m1(f);
    case 10:
      return lowbit::f32_to_e8m0(f, Saturation::none);
    default:
      return lowbit::f32_to_e8m0(f, Saturation::finite);
  }
}

/// Byte offset of target t's plane in a chunk's result buffer (planes follow each other).
uint64_t plane_offset(int t) {
  uint64_t off = 0;
  for (int k = 0; k < t; ++k) off += kChunk * static_cast<uint64_t>(kTargets[k].bytes);
  return off;
}
uint64_t planes_bytes() { return plane_offset(kTargetCount); }

struct PlaneTable {
  uint8_t* plane[kTargetCount];
};

/// Device: every target's code for inputs base .. base + kChunk - 1.
__global__ void encode_planes(uint32_t base, PlaneTable planes) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < kChunk; i += stride) {
    const uint32_t x = base + i;
#pragma unroll
    for (int t = 0; t < kTargetCount; ++t) {
      const uint32_t c = encode_target(t, x);
      if (target_bytes(t) == 2) {
        reinterpret_cast<uint16_t*>(planes.plane[t])[i] = static_cast<uint16_t>(c);
      } else {
        planes.plane[t][i] = static_cast<uint8_t>(c);
      }
    }
  }
}

PlaneTable plane_table(uint8_t* base) {
  PlaneTable p{};
  for (int t = 0; t < kTargetCount; ++t) p.plane[t] = base + plane_offset(t);
  return p;
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Runs fn(begin, end) over [0, n) on all host cores.
template <class Fn>
void parallel_for(uint64_t n, Fn fn) {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned k = 0; k < threads; ++k)
    pool.emplace_back([&, k] { fn(n * k / threads, n * (k + 1) / threads); });
  for (std::thread& th : pool) th.join();
}

// ---- numeric.hpp: device == host -------------------------------------------------------

TEST(NumericCuda, EveryF32EncodesAsOnTheHost) {
  LOWBIT_REQUIRE_CUDA();
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t bytes = planes_bytes();
  // Two buffers each side: the GPU encodes and copies chunk c + 1 while the host checks c.
  uint8_t* dev[2] = {nullptr, nullptr};
  uint8_t* host[2] = {nullptr, nullptr};
  cudaEvent_t ready[2];
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int b = 0; b < 2; ++b) {
    CUDA_OK(cudaMalloc(&dev[b], bytes));
    CUDA_OK(cudaMallocHost(&host[b], bytes));
    CUDA_OK(cudaEventCreateWithFlags(&ready[b], cudaEventDisableTiming));
  }
  auto issue = [&](uint64_t chunk) {
    const int b = static_cast<int>(chunk & 1);
    encode_planes<<<1024, 256, 0, stream>>>(static_cast<uint32_t>(chunk * kChunk),
                                            plane_table(dev[b]));
    cudaMemcpyAsync(host[b], dev[b], bytes, cudaMemcpyDeviceToHost, stream);
    cudaEventRecord(ready[b], stream);
  };

  std::atomic<uint64_t> mismatches[kTargetCount] = {};
  std::vector<std::string> examples[kTargetCount];
  std::mutex examples_mutex;
  const uint64_t chunks = kAll / kChunk;
  issue(0);
  for (uint64_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) issue(c + 1);
    const int b = static_cast<int>(c & 1);
    CUDA_OK(cudaEventSynchronize(ready[b]));
    CUDA_OK(cudaGetLastError());
    const PlaneTable got = plane_table(host[b]);
    const uint32_t base = static_cast<uint32_t>(c * kChunk);
    parallel_for(kChunk, [&](uint64_t begin, uint64_t end) {
      uint64_t local[kTargetCount] = {};
      // One target at a time: the host encoder's switch leaves the inner loop.
      for (int t = 0; t < kTargetCount; ++t) {
        for (uint64_t i = begin; i < end; ++i) {
          const uint32_t x = base + static_cast<uint32_t>(i);
          const uint32_t want = encode_target(t, x);
          const uint32_t have = kTargets[t].bytes == 2
                                    ? reinterpret_cast<const uint16_t*>(got.plane[t])[i]
                                    : got.plane[t][i];
          if (have != want && local[t]++ < 3) {
            std::lock_guard<std::mutex> lock(examples_mutex);
            if (examples[t].size() < 5)
              examples[t].push_back("f32 " + hex(x) + ": device " + hex(have) + ", host " +
                                    hex(want));
          }
        }
      }
      for (int t = 0; t < kTargetCount; ++t) mismatches[t] += local[t];
    });
  }
  for (int t = 0; t < kTargetCount; ++t) {
    std::string detail;
    for (const std::string& e : examples[t]) detail += "  " + e + "\n";
    EXPECT_EQ(mismatches[t].load(), 0u) << kTargets[t].name << " differs on the device:\n"
                                        << detail;
  }
  for (int b = 0; b < 2; ++b) {
    cudaFree(dev[b]);
    cudaFreeHost(host[b]);
    cudaEventDestroy(ready[b]);
  }
  cudaStreamDestroy(stream);
  std::printf("2^32 f32 patterns x %d encoders checked in %.1f s\n", kTargetCount,
              seconds_since(t0));
}

/// Device: decodes of every code: f16 and bf16 (65536 each), f8e4m3fn, f8e5m2, e8m0 (256
/// each), f4e2m1 (16), and f32 -> f64 -> f32 of the inputs in `f32s` / f64 -> f32 of `f64s`.
__global__ void decode_all(uint32_t* out16, uint32_t* out8, uint32_t* out4, const uint64_t* f64s,
                           uint32_t* f64_out, const uint32_t* f32s, uint64_t* f32_out, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 65536; i += stride) {
    out16[2 * i] = bits_of(lowbit::f16_to_f32(static_cast<uint16_t>(i)));
    out16[2 * i + 1] = bits_of(lowbit::bf16_to_f32(static_cast<uint16_t>(i)));
    if (i < 256) {
      out8[3 * i] = bits_of(lowbit::f8e4m3fn_to_f32(static_cast<uint8_t>(i)));
      out8[3 * i + 1] = bits_of(lowbit::f8e5m2_to_f32(static_cast<uint8_t>(i)));
      out8[3 * i + 2] = bits_of(lowbit::e8m0_to_f32(static_cast<uint8_t>(i)));
    }
    if (i < 16) out4[i] = bits_of(lowbit::f4e2m1_to_f32(static_cast<uint8_t>(i)));
  }
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    f64_out[i] = bits_of(lowbit::f64_to_f32(double_of(f64s[i])));
    f32_out[i] = bits_of(lowbit::f32_to_f64(float_of(f32s[i])));
  }
}

TEST(NumericCuda, EveryCodeDecodesAsOnTheHost) {
  LOWBIT_REQUIRE_CUDA();
  // f64 and f32 samples: random patterns, plus the tests' special values (ties, subnormals,
  // Inf, NaN payloads) and the edges of f32's range in f64.
  const int n = 1 << 22;
  auto rng = lowbit::testing::make_rng(41);
  std::vector<uint64_t> f64s(n);
  std::vector<uint32_t> f32s(n);
  lowbit::testing::fill_random(f64s.data(), Dtype::f64, n / 2, rng);
  lowbit::testing::fill_random(f32s.data(), Dtype::f32, n / 2, rng);
  for (int i = n / 2; i < n; ++i) {
    f64s[i] = rng();
    f32s[i] = static_cast<uint32_t>(rng());
  }
  const double edges[] = {0x1p-149,
                          0x1p-150,
                          0x1.8p-150,
                          0x1p-126,
                          0x1.fffffep127,
                          0x1.ffffffp127,
                          0x1.fffffefffffffp127,
                          3.4028235677973366e38};
  for (int i = 0; i < 8; ++i) f64s[i] = bits_of(edges[i]);

  uint32_t *d16, *d8, *d4, *df64_out, *df32s;
  uint64_t *df64s, *df32_out;
  CUDA_OK(cudaMalloc(&d16, 65536 * 2 * 4));
  CUDA_OK(cudaMalloc(&d8, 256 * 3 * 4));
  CUDA_OK(cudaMalloc(&d4, 16 * 4));
  CUDA_OK(cudaMalloc(&df64s, n * 8));
  CUDA_OK(cudaMalloc(&df64_out, n * 4));
  CUDA_OK(cudaMalloc(&df32s, n * 4));
  CUDA_OK(cudaMalloc(&df32_out, n * 8));
  CUDA_OK(cudaMemcpy(df64s, f64s.data(), n * 8, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(df32s, f32s.data(), n * 4, cudaMemcpyHostToDevice));
  decode_all<<<512, 256>>>(d16, d8, d4, df64s, df64_out, df32s, df32_out, n);
  CUDA_OK(cudaGetLastError());
  std::vector<uint32_t> h16(65536 * 2), h8(256 * 3), h4(16), hf64_out(n);
  std::vector<uint64_t> hf32_out(n);
  CUDA_OK(cudaMemcpy(h16.data(), d16, h16.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(h8.data(), d8, h8.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(h4.data(), d4, h4.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(hf64_out.data(), df64_out, n * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(hf32_out.data(), df32_out, n * 8, cudaMemcpyDeviceToHost));
  for (void* p : {static_cast<void*>(d16), static_cast<void*>(d8), static_cast<void*>(d4),
                  static_cast<void*>(df64s), static_cast<void*>(df64_out),
                  static_cast<void*>(df32s), static_cast<void*>(df32_out)})
    cudaFree(p);

  int bad = 0;
  auto check = [&](const char* what, uint64_t code, uint64_t have, uint64_t want) {
    if (have != want && bad++ < 20)
      ADD_FAILURE() << what << " of " << hex(code) << ": device " << hex(have) << ", host "
                    << hex(want);
  };
  for (uint32_t i = 0; i < 65536; ++i) {
    check("f16_to_f32", i, h16[2 * i], bits_of(lowbit::f16_to_f32(static_cast<uint16_t>(i))));
    check("bf16_to_f32", i, h16[2 * i + 1], bits_of(lowbit::bf16_to_f32(static_cast<uint16_t>(i))));
  }
  for (uint32_t i = 0; i < 256; ++i) {
    const auto c = static_cast<uint8_t>(i);
    check("f8e4m3fn_to_f32", i, h8[3 * i], bits_of(lowbit::f8e4m3fn_to_f32(c)));
    check("f8e5m2_to_f32", i, h8[3 * i + 1], bits_of(lowbit::f8e5m2_to_f32(c)));
    check("e8m0_to_f32", i, h8[3 * i + 2], bits_of(lowbit::e8m0_to_f32(c)));
  }
  for (uint32_t i = 0; i < 16; ++i)
    check("f4e2m1_to_f32", i, h4[i], bits_of(lowbit::f4e2m1_to_f32(static_cast<uint8_t>(i))));
  for (int i = 0; i < n; ++i) {
    check("f64_to_f32", f64s[i], hf64_out[i], bits_of(lowbit::f64_to_f32(double_of(f64s[i]))));
    check("f32_to_f64", f32s[i], hf32_out[i], bits_of(lowbit::f32_to_f64(float_of(f32s[i]))));
  }
  EXPECT_EQ(bad, 0);
}

// ---- the convert op on cuda:0, on every input --------------------------------------------

__global__ void iota_u32(uint32_t* out, uint32_t base, uint32_t n) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = base + i;
}

struct Found {
  unsigned long long count;
  unsigned long long first;  ///< smallest mismatching element index
};

/// Compares the op's output (`bytes`-wide elements, or packed nibbles when bytes == 0;
/// 8 = f64, checked against f32_to_f64; 4 = f32, against the input itself) with the plane
/// of expected codes.
__global__ void compare_output(const uint8_t* out, int bytes, const uint8_t* plane, int plane_bytes,
                               uint32_t base, uint32_t n, Found* found) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    uint64_t have, want;
    if (bytes == 8) {
      have = reinterpret_cast<const uint64_t*>(out)[i];
      want = bits_of(lowbit::f32_to_f64(float_of(base + i)));
    } else if (bytes == 4) {
      have = reinterpret_cast<const uint32_t*>(out)[i];
      want = base + i;
    } else {
      want = plane_bytes == 2 ? reinterpret_cast<const uint16_t*>(plane)[i] : plane[i];
      if (bytes == 2) {
        have = reinterpret_cast<const uint16_t*>(out)[i];
      } else if (bytes == 1) {
        have = out[i];
      } else {
        have = (out[i / 2] >> (4 * (i % 2))) & 0xfu;
      }
    }
    if (have != want) {
      atomicAdd(&found->count, 1ull);
      atomicMin(&found->first, static_cast<unsigned long long>(i));
    }
  }
}

TEST(ConvertCudaExhaustive, EveryF32ThroughTheOp) {
  LOWBIT_REQUIRE_CUDA();
  const auto t0 = std::chrono::steady_clock::now();
  const Device gpu = Device::cuda(0);
  const lowbit::Stream stream = lowbit::Stream::create(gpu);
  auto s = static_cast<cudaStream_t>(stream.native_handle());
  // Slack of 64 bytes on each buffer lets chunk c start its views at shifting offsets.
  uint8_t *in, *out, *planes;
  Found* found;
  CUDA_OK(cudaMalloc(&in, kChunk * 4 + 64));
  CUDA_OK(cudaMalloc(&out, kChunk * 8 + 64));
  CUDA_OK(cudaMalloc(&planes, planes_bytes()));
  CUDA_OK(cudaMalloc(&found, sizeof(Found)));

  struct Case {
    std::string name;
    Dtype dtype;
    Saturation sat;
    int out_bytes;  // 0: packed
    int plane;      // index into kTargets, -1 for f32 / f64
  };
  std::vector<Case> cases;
  for (int t = 0; t < kTargetCount; ++t)
    cases.push_back({kTargets[t].name, kTargets[t].dtype, kTargets[t].sat,
                     kTargets[t].dtype == Dtype::f4e2m1 ? 0 : kTargets[t].bytes, t});
  cases.push_back({"f32", Dtype::f32, Saturation::none, 4, -1});
  cases.push_back({"f64", Dtype::f64, Saturation::none, 8, -1});

  std::vector<std::string> failures;
  std::vector<std::string> kernels(cases.size());
  const uint64_t chunks = kAll / kChunk;
  for (uint64_t c = 0; c < chunks && failures.size() < 10; ++c) {
    const auto base = static_cast<uint32_t>(c * kChunk);
    const int src_shift = static_cast<int>(c % 4);        // elements
    const int dst_shift = static_cast<int>((c / 4) % 8);  // elements (bytes when packed)
    auto* src = reinterpret_cast<uint32_t*>(in) + src_shift;
    iota_u32<<<1024, 256, 0, s>>>(src, base, static_cast<uint32_t>(kChunk));
    encode_planes<<<1024, 256, 0, s>>>(base, plane_table(planes));
    CUDA_OK(cudaGetLastError());
    const lowbit::TensorView src_view(src, Dtype::f32, {static_cast<int64_t>(kChunk)}, gpu);
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& cs = cases[k];
      const int esize = cs.out_bytes == 0 ? 1 : cs.out_bytes;
      uint8_t* dst = out + dst_shift * esize;
      const lowbit::TensorView dst_view(dst, cs.dtype, {static_cast<int64_t>(kChunk)}, gpu);
      const lowbit::ConvertPlan plan =
          lowbit::ConvertPlan::select(lowbit::ConvertDesc::for_views(dst_view, src_view, cs.sat));
      if (plan.sku().backend != lowbit::Backend::cuda) {
        failures.push_back(cs.name + ": the plan chose " + plan.sku().str());
        break;
      }
      kernels[k] = plan.sku().kernel;
      plan.run(stream, {}, {src_view, dst_view});
      const Found init{0, ~0ull};
      CUDA_OK(cudaMemcpyAsync(found, &init, sizeof init, cudaMemcpyHostToDevice, s));
      const uint8_t* plane = cs.plane >= 0 ? planes + plane_offset(cs.plane) : nullptr;
      const int plane_bytes = cs.plane >= 0 ? kTargets[cs.plane].bytes : 0;
      compare_output<<<1024, 256, 0, s>>>(dst, cs.out_bytes, plane, plane_bytes, base,
                                          static_cast<uint32_t>(kChunk), found);
      Found result{};
      CUDA_OK(cudaMemcpyAsync(&result, found, sizeof result, cudaMemcpyDeviceToHost, s));
      CUDA_OK(cudaStreamSynchronize(s));
      if (result.count != 0)
        failures.push_back("f32->" + cs.name + ": " + std::to_string(result.count) +
                           " mismatches in chunk " + std::to_string(c) + " (src shift " +
                           std::to_string(src_shift) + ", dst shift " + std::to_string(dst_shift) +
                           "), first at input " + hex(base + result.first));
    }
  }
  for (const std::string& f : failures) ADD_FAILURE() << f;
  cudaFree(in);
  cudaFree(out);
  cudaFree(planes);
  cudaFree(found);
  std::string used;
  for (size_t k = 0; k < cases.size(); ++k) used += " " + cases[k].name + ":" + kernels[k];
  std::printf("2^32 f32 inputs x %zu dsts through the op in %.1f s; kernels:%s\n", cases.size(),
              seconds_since(t0), used.c_str());
}

/// Every code of src (all 2^bits patterns; for f4e2m1 every byte, i.e. every nibble pair)
/// converted to every float dtype on cuda:0 and by the reference kernel on the host, both
/// contiguous and through a transposed (strided) view.
TEST(ConvertCudaExhaustive, EveryNarrowCodeToEveryDtype) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const Dtype floats[] = {Dtype::f64,      Dtype::f32,    Dtype::f16,    Dtype::bf16,
                          Dtype::f8e4m3fn, Dtype::f8e5m2, Dtype::f4e2m1, Dtype::e8m0};
  const Dtype sources[] = {Dtype::f16,    Dtype::bf16, Dtype::f8e4m3fn,
                           Dtype::f8e5m2, Dtype::e8m0, Dtype::f4e2m1};
  lowbit::Preference reference;
  reference.kernel = "convert_reference";
  for (Dtype sdt : sources) {
    const bool wide = lowbit::bit_width(sdt) == 16;
    const int64_t n = wide ? 65536 : 512;  // f4e2m1: 256 bytes = 512 nibbles
    const int64_t rows = wide ? 256 : 16, cols = n / rows;
    lowbit::Tensor host_src = lowbit::Tensor::empty({n}, sdt);
    auto* bytes = static_cast<uint8_t*>(host_src.data());
    for (int64_t i = 0; i < lowbit::storage_bytes(sdt, n); ++i)
      bytes[i] = static_cast<uint8_t>(wide ? (i % 2 ? i / 512 : (i / 2) % 256) : i);
    lowbit::Tensor dev_src = lowbit::testing::to_device(host_src, gpu);
    for (Dtype ddt : floats) {
      for (Saturation sat : {Saturation::none, Saturation::finite}) {
        for (bool strided : {false, true}) {
          // Strided: read the codes as a [cols, rows] transpose of a [rows, cols] view.
          // Packed views must stay contiguous, so a packed src is only read directly.
          if (strided && sdt == Dtype::f4e2m1) continue;
          SCOPED_TRACE(
              std::string(lowbit::dtype_name(sdt)) + "->" + std::string(lowbit::dtype_name(ddt)) +
              (sat == Saturation::finite ? " satfinite" : "") + (strided ? " transposed" : ""));
          const lowbit::TensorView hs =
              strided ? lowbit::TensorView(host_src.data(), sdt, {rows, cols}).transpose(0, 1)
                      : host_src.view();
          const lowbit::TensorView ds =
              strided ? lowbit::TensorView(dev_src.data(), sdt, {rows, cols}, gpu).transpose(0, 1)
                      : dev_src.view();
          lowbit::Tensor want = lowbit::Tensor::empty(hs.shape(), ddt);
          lowbit::Tensor got = lowbit::Tensor::empty(ds.shape(), ddt, gpu);
          lowbit::fill_bytes(want, lowbit::testing::kPoison);
          lowbit::fill_bytes(got, lowbit::testing::kPoison);
          lowbit::ConvertPlan::select(lowbit::ConvertDesc::for_views(want, hs, sat), reference)
              .run(lowbit::Stream(), {}, {hs, want});
          lowbit::convert(got, ds, sat);
          const lowbit::Tensor back = lowbit::testing::to_host(got);
          EXPECT_EQ(lowbit::testing::compare_bytes(want, back), "");
        }
      }
    }
  }
}

}  // namespace
