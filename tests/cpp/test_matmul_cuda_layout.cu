// The CUDA tensor-core matmul's prepared layout and lane arithmetic, checked on the host (no GPU
// needed), plus GPU-only extras of the CUDA matmul kernels (run when a device is present).
//
// Host checks, for every scheme of the "cuda_tc16x128" layout:
//  * Dense: decoding every lane's codes with the kernels' own rules (tc::stored_code,
//    tc::dense_value) gives the dequantize op's reference values bit for bit.
//  * Skinny: an emulation of matmul_cuda_skinny_tc's warps (the same per-lane loads, the 16-bit
//    operand bit patterns of tc::pattern4 / pattern8_f16, the PTX m16n8k16 fragment layout, the
//    group flushes, the k-split over `split` warps added in warp order) matches the f64 product of
//    the dequantized weights and x to 1e-5 relative: any slip in the k mapping, the nibble order,
//    the group index or the affine term shows up as an O(1) error.
// GPU extras (skipped without a device): QuantizedLinear on CUDA picks the skinny kernel for a
// few rows and the dequantize path for many from one prepared copy; runs are bit-identical
// (determinism); block-scaled fp8 W8A8 (M a multiple of 4, which test_matmul's shapes are not);
// the ws kernels' chained cluster pairs replayed from a captured CUDA graph.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/matmul.hpp"
#include "lowbit/quantize.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/matmul/matmul_cuda_layout.cuh"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using tc::Code;
using tc::Scale;

const char* const kSchemes[] = {"int4:block32",
                                "int4:block64",
                                "int4:block128",
                                "int4:block32:asym",
                                "int4:block128:asym",
                                "int4:channel",
                                "int4:tensor",
                                "uint4:block32",
                                "int4:block32:scale=bf16",
                                "int8:block32",
                                "int8:block128:asym",
                                "int8:channel",
                                "uint8:block64",
                                "int8:channel:scale=f16",
                                "fp8e4m3:channel",
                                "fp8e5m2:channel",
                                "fp8e4m3:tensor",
                                "fp8e4m3:block128x128",
                                "fp8e4m3:block128",
                                "nvfp4",
                                "mxfp4",
                                "q4_0",
                                "q8_0",
                                "q4_K",
                                "q6_K"};

/// The arguments streamed into one string (fmt does not compile under nvcc).
template <class... T>
std::string str(const T&... v) {
  std::ostringstream o;
  o.precision(9);
  (o << ... << v);
  return o.str();
}

Tensor random_f32(const Shape& shape, std::mt19937_64& rng, float sd) {
  Tensor t = Tensor::empty(shape, Dtype::f32);
  std::normal_distribution<float> nd(0.f, sd);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = nd(rng);
  return t;
}

struct Prepared {
  tc::Format f;
  tc::Layout L;
  std::vector<uint8_t> bytes;
  tc::TcWeights w;
};

Prepared prepare(const QuantizedTensor& q) {
  Prepared p;
  std::string why;
  const auto f = tc::format_of(q.scheme, q.shape[0], q.shape[1], &why);
  if (!f) throw std::runtime_error(why);
  p.f = *f;
  p.L = tc::layout_of(p.f, q.shape[0], q.shape[1]);
  p.bytes.resize(static_cast<size_t>(p.L.bytes));
  tc::prepare_host(q.scheme, p.f, p.L, static_cast<const uint8_t*>(q.codes.data()), q.scale.data(),
                   q.zero.data_as<const int32_t>(), q.global_scale.data_as<const float>(),
                   p.bytes.data());
  const uint8_t* b = p.bytes.data();
  p.w.codes = b + p.L.codes;
  p.w.scale = b + p.L.scale;
  p.w.zero = p.L.zero >= 0 ? reinterpret_cast<const int8_t*>(b + p.L.zero) : nullptr;
  p.w.aux = p.L.aux >= 0 ? b + p.L.aux : nullptr;
  p.w.global = p.L.global >= 0 ? reinterpret_cast<const float*>(b + p.L.global) : nullptr;
  p.w.segments = p.L.segments;
  p.w.groups = p.L.groups;
  p.w.k = p.L.k;
  p.w.group_log2 = p.f.group_log2;
  p.w.scale_dtype = Dtype::f32;  // the layout stores integer scales as f32
  return p;
}

void words_of(const Prepared& p, int64_t tile, int64_t seg, int half, int lane, uint32_t* words) {
  const int lb = p.f.lane_bytes();
  std::memcpy(
      words,
      p.bytes.data() + p.L.codes + tc::lane_code_offset(p.L.segments, lb, tile, seg, half, lane),
      static_cast<size_t>(lb));
}

// ---- dense --------------------------------------------------------------------------------

template <Code C, Scale S>
std::vector<float> dense_emulated(const Prepared& p) {
  std::vector<float> out(static_cast<size_t>(p.L.n * p.L.k), NAN);
  const int bits = p.f.code_bits();
  for (int64_t t = 0; t < p.L.tiles; ++t)
    for (int64_t s = 0; s < p.L.segments; ++s)
      for (int h = 0; h < 2; ++h)
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t row = t * 16 + h * 8 + (lane >> 2);
          if (row >= p.L.n) continue;
          uint32_t words[8];
          words_of(p, t, s, h, lane, words);
          for (int j = 0; j < 8; ++j) {
            const int64_t k0 = tc::step_k(s, j, lane & 3);
            for (int i = 0; i < 4; ++i)
              out[static_cast<size_t>(row * p.L.k + k0 + i)] =
                  tc::dense_value<C, S>(tc::stored_code(words, bits, j, i), p.w, row, k0);
          }
        }
  return out;
}

// ---- skinny ------------------------------------------------------------------------------

/// The raw scales of (row, segment) as the skinny kernel loads them (its instantiations).
template <Scale S>
tc::SegScales seg_scales(const Prepared& p, int64_t row, int64_t s) {
  if constexpr (S == Scale::integer || S == Scale::f32) {
    switch (p.f.steps_log2) {
      case 1:
        return tc::load_seg_scales<S, 1>(p.w, row, s);
      case 2:
        return tc::load_seg_scales<S, 2>(p.w, row, s);
      default:
        return tc::load_seg_scales<S, 3>(p.w, row, s);
    }
  } else {
    return tc::load_seg_scales < S, S == Scale::e4m3 || S == Scale::q6k ? 0 : 1 > (p.w, row, s);
  }
}

/// The skinny kernel's arithmetic for one x dtype: y[m][n] (f32, before rounding to y).
/// `split` warps take the segments of a tile in turn (warp w: w, w + split, ...), as the kernel's
/// blocks do (the host picks split per shape; 5 here leaves warps with unequal counts).
template <Code C, Scale S, bool kBf16>
std::vector<float> skinny_emulated(const Prepared& p, const std::vector<float>& x, int m) {
  constexpr int split = 5;
  const int bits = p.f.code_bits();
  const int gs = 1 << p.f.steps_log2;
  const float F = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  const int nt_count = m > 8 ? 2 : 1;
  const int64_t n = p.L.n, k = p.L.k;
  const bool zero = S == Scale::integer && p.w.zero;
  const bool affine = S == Scale::q4k || zero;
  std::vector<float> y(static_cast<size_t>(m * n), NAN);
  for (int m0 = 0; m0 < m; m0 += 16)
    for (int64_t tile = 0; tile < p.L.tiles; ++tile) {
      float acc[split][32][2][4] = {};  // [warp][lane][nt][i]
      for (int warp = 0; warp < split; ++warp) {
        for (int64_t s = warp; s < p.L.segments; s += split) {
          uint32_t c0[32][8], c1[32][8];
          for (int lane = 0; lane < 32; ++lane) {
            words_of(p, tile, s, 0, lane, c0[lane]);
            words_of(p, tile, s, 1, lane, c1[lane]);
          }
          float g[32][2][4] = {}, g1[32][2][4] = {};
          for (int j = 0; j < 8; ++j) {
            // The fragments as matrices: A [16 rows of W][16 logical k], B [16 logical k][16].
            float A[16][16], B[16][16] = {};
            for (int lane = 0; lane < 32; ++lane) {
              const int r = lane >> 2, q = lane & 3;
              const int w = bits == 4 ? j >> 1 : j;
              const int p0 = tc::step_pair(bits, j, 0), p1 = tc::step_pair(bits, j, 1);
              tc::decode_pair_host<C, kBf16>(c0[lane][w], p0, A[r][2 * q], A[r][2 * q + 1]);
              tc::decode_pair_host<C, kBf16>(c1[lane][w], p0, A[r + 8][2 * q], A[r + 8][2 * q + 1]);
              tc::decode_pair_host<C, kBf16>(c0[lane][w], p1, A[r][2 * q + 8], A[r][2 * q + 9]);
              tc::decode_pair_host<C, kBf16>(c1[lane][w], p1, A[r + 8][2 * q + 8],
                                             A[r + 8][2 * q + 9]);
              for (int t = 0; t < nt_count; ++t) {
                const int c = m0 + 8 * t + r;
                const int64_t kk = tc::step_k(s, j, q);
                for (int i = 0; i < 4; ++i) {
                  const float v = c < m ? x[static_cast<size_t>(c * k + kk + i)] : 0.0f;
                  const int lk = (i < 2 ? 2 * q : 2 * q + 8) + (i & 1);
                  B[lk][8 * t + r] = v;
                }
              }
            }
            // D = A B (exact products, f64 sums standing in for the tensor core's), into lanes.
            for (int lane = 0; lane < 32; ++lane) {
              const int r = lane >> 2, q = lane & 3;
              for (int t = 0; t < nt_count; ++t)
                for (int i = 0; i < 4; ++i) {
                  const int row = i < 2 ? r : r + 8, col = 8 * t + 2 * q + (i & 1);
                  double d = 0, d1 = 0;
                  for (int kk = 0; kk < 16; ++kk) {
                    d += static_cast<double>(A[row][kk]) * B[kk][col];
                    d1 += B[kk][col];
                  }
                  g[lane][t][i] = static_cast<float>(g[lane][t][i] + d);
                  g1[lane][t][i] = static_cast<float>(g1[lane][t][i] + d1);
                }
            }
            if ((j & (gs - 1)) == gs - 1) {
              const int f = j >> p.f.steps_log2;
              for (int lane = 0; lane < 32; ++lane) {
                const int64_t row0 = tile * 16 + (lane >> 2), row1 = row0 + 8;
                float a0, b0, a1, b1;
                tc::seg_group_ab<S>(seg_scales<S>(p, row0, s), f, zero, a0, b0);
                tc::seg_group_ab<S>(seg_scales<S>(p, row1, s), f, zero, a1, b1);
                for (int t = 0; t < nt_count; ++t) {
                  for (int i = 0; i < 4; ++i) {
                    const float a = i < 2 ? a0 : a1, b = i < 2 ? b0 : b1;
                    acc[warp][lane][t][i] += a * (g[lane][t][i] * F);
                    if (affine) acc[warp][lane][t][i] += b * g1[lane][t][i];
                    g[lane][t][i] = g1[lane][t][i] = 0.0f;
                  }
                }
              }
            }
          }
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        const int r = lane >> 2, q = lane & 3;
        for (int t = 0; t < nt_count; ++t)
          for (int i = 0; i < 4; ++i) {
            float v = acc[0][lane][t][i];
            for (int w = 1; w < split; ++w) v += acc[w][lane][t][i];
            if (S == Scale::e4m3) v *= p.w.global[0];
            const int64_t row = tile * 16 + (i < 2 ? r : r + 8);
            const int c = m0 + 8 * t + 2 * q + (i & 1);
            if (c < m && row < n) y[static_cast<size_t>(c * n + row)] = v;
          }
      }
    }
  return y;
}

/// Dispatches a (code, scale) pair of the layout to F<C, S>.
template <template <Code, Scale> class Fn, class... Args>
auto dispatch(const tc::Format& f, Args&&... args) {
  switch (f.scale) {
    case Scale::integer:
      return f.code == Code::u4 ? Fn<Code::u4, Scale::integer>::run(args...)
                                : Fn<Code::i8, Scale::integer>::run(args...);
    case Scale::f32:
      return f.code == Code::e4m3 ? Fn<Code::e4m3, Scale::f32>::run(args...)
                                  : Fn<Code::e5m2, Scale::f32>::run(args...);
    case Scale::e4m3:
      return Fn<Code::fp4, Scale::e4m3>::run(args...);
    case Scale::e8m0:
      return Fn<Code::fp4, Scale::e8m0>::run(args...);
    case Scale::f16d:
      return f.code == Code::u4 ? Fn<Code::u4, Scale::f16d>::run(args...)
                                : Fn<Code::i8, Scale::f16d>::run(args...);
    case Scale::q4k:
      return Fn<Code::u4, Scale::q4k>::run(args...);
    default:
      return Fn<Code::i8, Scale::q6k>::run(args...);
  }
}

template <Code C, Scale S>
struct Dense {
  static std::vector<float> run(const Prepared& p) { return dense_emulated<C, S>(p); }
};
template <Code C, Scale S>
struct Skinny {
  static std::vector<float> run(const Prepared& p, const std::vector<float>& x, int m, bool bf16) {
    return bf16 ? skinny_emulated<C, S, true>(p, x, m) : skinny_emulated<C, S, false>(p, x, m);
  }
};

TEST(MatmulCudaLayout, DenseDecodeIsTheReferenceDequantize) {
  std::mt19937_64 rng(3);
  for (const char* text : kSchemes) {
    SCOPED_TRACE(text);
    const QuantScheme s = QuantScheme::parse(text);
    const int64_t n = 37, k = 512;
    const QuantizedTensor q = quantize(random_f32({n, k}, rng, 0.7f), s);
    const Prepared p = prepare(q);
    const std::vector<float> got = dispatch<Dense>(p.f, p);
    const Tensor want = dequantize(q.view(), Dtype::f32);
    int bad = 0;
    for (int64_t i = 0; i < n * k; ++i) {
      const float a = got[static_cast<size_t>(i)], b = want.data_as<float>()[i];
      if (std::memcmp(&a, &b, 4) != 0 && bad++ < 5)
        ADD_FAILURE() << str("element ", i, " (row ", i / k, ", k ", i % k, "): ", a, " vs ", b);
    }
  }
}

TEST(MatmulCudaLayout, SkinnyEmulationMatchesTheF64Product) {
  std::mt19937_64 rng(5);
  for (const char* text : kSchemes) {
    const QuantScheme s = QuantScheme::parse(text);
    const int64_t n = 40, k = 768;  // 3 tiles (one partial), 6 segments over 5 warps
    const QuantizedTensor q = quantize(random_f32({n, k}, rng, 0.5f), s);
    const Prepared p = prepare(q);
    const Tensor wd = dequantize(q.view(), Dtype::f32);
    for (bool bf16 : {true, false})
      for (int m : {1, 5, 16, 40}) {
        SCOPED_TRACE(str(text, " x=", bf16 ? "bf16" : "f16", " m=", m));
        // x rounded to the operand dtype (what the kernel reads).
        std::vector<float> x(static_cast<size_t>(m * k));
        std::normal_distribution<float> nd(0.f, 1.f);
        for (float& v : x)
          v = bf16 ? bf16_to_f32(f32_to_bf16(nd(rng))) : f16_to_f32(f32_to_f16(nd(rng)));
        const std::vector<float> y = dispatch<Skinny>(p.f, p, x, m, bf16);
        int bad = 0;
        for (int i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double ref = 0, s2 = 0;
            for (int64_t t = 0; t < k; ++t) {
              const double pr = static_cast<double>(x[static_cast<size_t>(i * k + t)]) *
                                wd.data_as<float>()[j * k + t];
              ref += pr;
              s2 += pr * pr;
            }
            const double got = y[static_cast<size_t>(i * n + j)];
            if (!(std::fabs(got - ref) <= 1e-5 * (std::fabs(ref) + std::sqrt(s2))) && bad++ < 3)
              ADD_FAILURE() << str("y[", i, ",", j, "] = ", got, " vs ", ref);
          }
        if (::testing::Test::HasFailure()) return;
      }
  }
}

TEST(MatmulCudaLayout, DeclinesWhatTheLayoutCannotHold) {
  std::string why;
  EXPECT_FALSE(tc::format_of(QuantScheme::parse("int4:block32"), 8, 4000, &why));
  EXPECT_NE(why.find("multiple of 128"), std::string::npos) << why;
  EXPECT_FALSE(tc::format_of(QuantScheme::parse("int8:channel:axis=1"), 8, 256, &why));
  EXPECT_FALSE(tc::format_of(QuantScheme::parse("q5_K"), 8, 256, &why));
  EXPECT_FALSE(tc::format_of(QuantScheme::parse("mxfp8e4m3"), 8, 256, &why));
}

// ---- GPU extras -------------------------------------------------------------------------------

bool have_gpu() { return cuda_device_count() > 0; }

/// Failures (the first 5, named by `what`) where y [m][n] (host, any float dtype) strays from
/// the f64 product of x [m][k] (host, any float dtype) and w^T (w [n][k] f32) by more than
/// `tol` times |ref| plus the norm of the products.
void expect_f64_product(const Tensor& xh, const Tensor& w, const Tensor& yh, double tol,
                        const std::string& what) {
  const int64_t m = yh.shape()[0], n = yh.shape()[1], k = w.shape()[1];
  int bad = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0, s2 = 0;
      for (int64_t t = 0; t < k; ++t) {
        const double pr =
            static_cast<double>(convert_detail::load_f32(xh.data(), xh.dtype(), i * k + t)) *
            w.data_as<float>()[j * k + t];
        ref += pr;
        s2 += pr * pr;
      }
      const double got = convert_detail::load_f32(yh.data(), yh.dtype(), i * n + j);
      if (!(std::fabs(got - ref) <= tol * (std::fabs(ref) + std::sqrt(s2))) && bad++ < 5)
        ADD_FAILURE() << str(what, "y[", i, ",", j, "] = ", got, " vs ", ref);
    }
}

TEST(MatmulCuda, QuantizedLinearSharesOnePreparedWeight) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device";
  std::mt19937_64 rng(9);
  const Device gpu = Device::cuda(0);
  const Tensor w = random_f32({96, 512}, rng, 0.5f);
  const QuantizedTensor qh = quantize(w, QuantScheme::parse("int4:block32"));
  QuantizedTensor qd;
  qd.scheme = qh.scheme;
  qd.shape = qh.shape;
  qd.codes = testing::to_device(qh.codes, gpu);
  qd.scale = testing::to_device(qh.scale, gpu);
  QuantizedLinear layer(std::move(qd));
  EXPECT_EQ(layer.plan_for(4, Dtype::bf16).sku().kernel, "matmul_cuda_skinny_tc");
  // M = 48 and 100: the warp-specialized kernel's 64-row tiling on sm_90a builds and devices,
  // else the medium kernel;
  // M = 200 and 300: the warp-specialized wgmma kernel, else dequantize + cuBLASLt; M = 1100
  // dequantize + cuBLASLt; all read the same prepared layout as the skinny kernel.
  const CudaDeviceProperties props = cuda_device_properties(0);
  const bool hopper = props.sm_major == 9 && props.sm_minor == 0;
  for (int64_t m : {48, 100})
    EXPECT_EQ(layer.plan_for(m, Dtype::bf16).sku().kernel,
              hopper ? "matmul_cuda_wgmma_ws64_tc" : "matmul_cuda_medium_tc");
  for (int64_t m : {200, 300})
    EXPECT_EQ(layer.plan_for(m, Dtype::bf16).sku().kernel,
              hopper ? "matmul_cuda_wgmma_ws_tc" : "matmul_cuda_dequant_tc_lt");
  EXPECT_EQ(layer.plan_for(1100, Dtype::bf16).sku().kernel, "matmul_cuda_dequant_tc_lt");
  for (int64_t m : {4, 48, 100, 200, 300, 1100}) {
    Tensor xh = Tensor::empty({m, 512}, Dtype::bf16);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (int64_t i = 0; i < xh.numel(); ++i)
      convert_detail::store_f32(xh.data(), Dtype::bf16, i, nd(rng), Saturation::none);
    const Tensor x = testing::to_device(xh, gpu);
    const Tensor a = layer(x), b = layer(x);
    EXPECT_EQ(testing::compare_bytes(testing::to_host(a), testing::to_host(b)), "")
        << "m=" << m << ": two runs differ (not deterministic)";
  }
}

TEST(MatmulCuda, BlockScaledFp8W8A8) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device";
  std::mt19937_64 rng(13);
  const Device gpu = Device::cuda(0);
  const int64_t m = 64, n = 256, k = 512;
  const Tensor wf = random_f32({n, k}, rng, 0.5f), xf = random_f32({m, k}, rng, 1.f);
  const QuantizedTensor wq = quantize(wf, QuantScheme::parse("fp8e4m3:block128x128"));
  const QuantizedTensor xq = quantize(xf, QuantScheme::parse("fp8e4m3:block128"));
  auto to_dev = [&](const QuantizedTensor& h) {
    QuantizedTensor q;
    q.scheme = h.scheme;
    q.shape = h.shape;
    q.codes = testing::to_device(h.codes, gpu);
    q.scale = testing::to_device(h.scale, gpu);
    return q;
  };
  const QuantizedTensor wd = to_dev(wq), xd = to_dev(xq);
  Tensor y = Tensor::empty({m, n}, Dtype::f32, gpu);
  const MatmulDesc d = MatmulDesc::for_views(y, xd.view(), wd.view());
  MatmulPlan plan = MatmulPlan::select(d);
  std::printf("block-scaled fp8 W8A8 on %s: %s\n", gpu.str().c_str(), plan.sku().str().c_str());
  for (const Declined& dc : plan.declined())
    std::printf("  declined by %s: %s\n", dc.kernel.c_str(), dc.reason.c_str());
  Buffer ws(static_cast<int64_t>(std::max<size_t>(plan.workspace_size(), 1)), gpu);
  const Stream stream = Stream::default_for(gpu);
  plan.run(stream, {ws.data(), plan.workspace_size()}, {{}, xd.view(), wd.view(), {}, {}, y});
  stream.synchronize();
  const Tensor yh = testing::to_host(y);
  expect_f64_product(dequantize(xq.view(), Dtype::f32), dequantize(wq.view(), Dtype::f32), yh, 1e-5,
                     "");
}

/// The ws kernels' chained cluster pairs (four k-ranges: the first pair's sums handed to the
/// second through the workspace under flags that the second lowers) replayed from a captured
/// CUDA graph, which repeats the call's flag tag: each replay must wait for its own hand-over,
/// so three replays over three different x give three right products (a flag left raised
/// would let the second pair read the previous replay's sums). M = 64, N = 2048, K = 2304:
/// 16 blocks of W, 18 segments, so select() splits K four ways on an H100.
TEST(MatmulCuda, ChainedPairsReplayInACudaGraph) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device";
  std::mt19937_64 rng(17);
  const Device gpu = Device::cuda(0);
  const int64_t m = 64, n = 2048, k = 2304;
  const QuantizedTensor wq =
      quantize(random_f32({n, k}, rng, 0.5f), QuantScheme::parse("int4:block128"));
  QuantizedTensor wd;
  wd.scheme = wq.scheme;
  wd.shape = wq.shape;
  wd.codes = testing::to_device(wq.codes, gpu);
  wd.scale = testing::to_device(wq.scale, gpu);
  Tensor x = Tensor::empty({m, k}, Dtype::bf16, gpu), y = Tensor::empty({m, n}, Dtype::bf16, gpu);
  const MatmulDesc d = MatmulDesc::for_views(y, x, wd.view());
  const MatmulPlan plan = MatmulPlan::select(d);
  if (plan.sku().kernel != "matmul_cuda_wgmma_ws64_tc")
    GTEST_SKIP() << "SKIPPED: " << plan.sku().kernel
                 << " runs here (not an sm_90a device or build)";
  Tensor packed = Tensor::empty({prepared_bytes(plan)}, Dtype::u8, gpu);
  prepare_weight(plan, wd.view(), packed);
  Buffer ws(static_cast<int64_t>(std::max<size_t>(plan.workspace_size(), 1)), gpu);
  const Stream stream = Stream::create(gpu);
  const MatmulArgs args{x, {}, wd.view(), packed, {}, y};
  const Tensor wdq = dequantize(wq.view(), Dtype::f32);
  std::vector<Tensor> xs;
  for (int r = 0; r < 4; ++r) {
    Tensor xh = Tensor::empty({m, k}, Dtype::bf16);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (int64_t i = 0; i < xh.numel(); ++i)
      convert_detail::store_f32(xh.data(), Dtype::bf16, i, nd(rng), Saturation::none);
    xs.push_back(std::move(xh));
  }
  auto upload = [&](const Tensor& xh) {
    ASSERT_EQ(
        cudaMemcpyAsync(x.data(), xh.data(), static_cast<size_t>(m * k * 2), cudaMemcpyHostToDevice,
                        static_cast<cudaStream_t>(stream.native_handle())),
        cudaSuccess);
  };
  auto check = [&](const Tensor& xh, int r) {
    stream.synchronize();
    expect_f64_product(xh, wdq, testing::to_host(y), 1e-2, str("replay ", r, ": "));
  };
  // A plain run first (what a user does before capturing: the plan's one-time setup).
  upload(xs[0]);
  plan.run(stream, {ws.data(), plan.workspace_size()}, args);
  check(xs[0], 0);
  const auto cs = static_cast<cudaStream_t>(stream.native_handle());
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  plan.run(stream, {ws.data(), plan.workspace_size()}, args);
  ASSERT_EQ(cudaStreamEndCapture(cs, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int r = 1; r < 4; ++r) {
    upload(xs[static_cast<size_t>(r)]);
    ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
    check(xs[static_cast<size_t>(r)], r);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace
}  // namespace lowbit
