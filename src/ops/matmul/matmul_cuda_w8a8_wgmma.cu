// matmul_cuda_w8a8_wgmma: W8A8 on Hopper (sm_90a) with lowbit's own GEMM (the kernel and why:
// matmul_cuda_w8a8_wgmma.cuh): int8 x int8 (symmetric) and fp8 x fp8 (e4m3 / e5m2, any pair),
// x per token or per tensor, W per channel or per tensor, the scales, the bias and the rounding
// applied to the accumulators in registers. It reads the plain codes (no prepared layout).
// select() order: matmul_cuda_skinny_w8a8 (fp8, M <= 8), this plan from kMinM rows, then
// matmul_cuda_w8a8_lt (block-scaled fp8, and what this plan declines).
#include <cuda.h>
#include <cuda_runtime.h>

#include <array>

#include "ops/matmul/matmul_cuda_common.cuh"
#include "ops/matmul/matmul_cuda_w8a8_wgmma.cuh"
#include "ops/matmul/matmul_cuda_w8a8_wgmma_knobs.hpp"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

using w8a8_wgmma::Pair;
using w8a8_wgmma::Params;

/// Below this M the skinny kernel (fp8, M <= 8) and cuBLASLt serve.
constexpr int64_t kMinM = 9;

template <Pair P, int BN>
void launch(const Params& p, const CUtensorMap& x_map, const CUtensorMap& w_map, int grid,
            cudaStream_t stream) {
  const auto kernel = &w8a8_wgmma::w8a8_kernel<P, BN>;
  constexpr int kSmem = w8a8_wgmma::Tiling<BN>::kSmemBytes;
  static mm_cuda::SmemOptIn optin;
  mm_cuda::check_cuda(optin.allow(kernel, kSmem), "matmul: shared memory of w8a8_kernel");
  kernel<<<grid, w8a8_wgmma::kThreads, kSmem, stream>>>(p, x_map, w_map);
  mm_cuda::check_launch("w8a8_kernel");
}

/// The tile widths (rows of W per tile) this file instantiates, and their launches per pair.
constexpr std::array<int, 3> kWidths = {64, 128, 256};

template <Pair P>
w8a8_wgmma::Launch launch_for(int bn) {
  switch (bn) {
    case 64:
      return &launch<P, 64>;
    case 128:
      return &launch<P, 128>;
    default:
      return &launch<P, 256>;
  }
}

w8a8_wgmma::Launch launch_for(Pair p, int bn) {
  switch (p) {
    case Pair::e4m3_e4m3:
      return launch_for<Pair::e4m3_e4m3>(bn);
    case Pair::e4m3_e5m2:
      return launch_for<Pair::e4m3_e5m2>(bn);
    case Pair::e5m2_e4m3:
      return launch_for<Pair::e5m2_e4m3>(bn);
    case Pair::e5m2_e5m2:
      return launch_for<Pair::e5m2_e5m2>(bn);
    default:
      return launch_for<Pair::s8_s8>(bn);
  }
}

using mm_cuda::per_row;

/// The pair of `d`, or the reason this plan does not take it.
std::optional<Pair> pair_of(const MatmulDesc& d, std::string* why) {
  const QuantScheme& xs = *d.x_scheme;
  const QuantScheme& ws = d.w;
  if ((xs.granularity != Granularity::tensor && xs.granularity != Granularity::token) ||
      (ws.granularity != Granularity::tensor && !per_row(ws))) {
    *why = "x " + xs.str() + " with W " + ws.str() +
           ": per-tensor / per-token x with per-tensor / per-channel W only (block-scaled fp8 is "
           "matmul_cuda_w8a8_lt's)";
    return std::nullopt;
  }
  if (xs.format == QuantFormat::int8 && ws.format == QuantFormat::int8) {
    if (!xs.symmetric || !ws.symmetric) {
      *why = "int8 W8A8 takes symmetric schemes (zero points need a correction term)";
      return std::nullopt;
    }
    if (d.k > w8a8_wgmma::kMaxK) {
      *why = "K = " + std::to_string(d.k) + " > " + std::to_string(w8a8_wgmma::kMaxK) +
             ": the i32 sums could overflow";
      return std::nullopt;
    }
    return Pair::s8_s8;
  }
  if (mm_cuda::is_fp8(xs.format) && mm_cuda::is_fp8(ws.format)) {
    if (d.y == Dtype::f32) {
      *why =
          "f32 y promises 1e-5 relative; fp8 tensor-core sums of a 128-k stage keep about 2^-14 "
          "(the dequantize path serves f32 y)";
      return std::nullopt;
    }
    const bool x5 = xs.format == QuantFormat::fp8e5m2, w5 = ws.format == QuantFormat::fp8e5m2;
    return x5 ? (w5 ? Pair::e5m2_e5m2 : Pair::e5m2_e4m3) : (w5 ? Pair::e4m3_e5m2 : Pair::e4m3_e4m3);
  }
  *why = "x " + xs.str() + " with W " + ws.str() + " is not an int8 x int8 or fp8 x fp8 pair";
  return std::nullopt;
}

/// The tile width for M x N on `sms` SMs: the fewest waves of tiles times the tile's width
/// (a tile's time grows with its rows of W), the widest on a tie (less of x read again).
int width_for(int64_t m, int64_t n, int sms) {
  const int64_t tiles_m = (m + w8a8_wgmma::kRowsX - 1) / w8a8_wgmma::kRowsX;
  int best = kWidths[0];
  int64_t best_cost = INT64_MAX;
  for (int bn : kWidths) {
    const int64_t tiles = tiles_m * ((n + bn - 1) / bn);
    const int64_t cost = (tiles + sms - 1) / sms * bn;
    if (cost <= best_cost) best = bn, best_cost = cost;
  }
  return best;
}

/// The copy engine's description of a [rows][k] matrix of 1-byte codes (rows k bytes apart), in
/// boxes of 128 k x `box_rows` rows with the 128-byte swizzle.
CUtensorMap codes_map(const void* codes, int64_t rows, int64_t k, uint32_t box_rows,
                      const char* what) {
  return wgmma::tensor_map_swizzled(codes, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, rows, k, k, box_rows,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, what);
}

class MatmulCudaW8A8Wgmma final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_w8a8_wgmma"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(
        d, reinterpret_cast<const void*>(&w8a8_wgmma::w8a8_kernel<Pair::e4m3_e4m3, 128>));
    if (!why.empty()) return why;
    if (!d.x_scheme) return "W8A8 only (x_scheme is not set)";
    why = wgmma::sm90a_decline(d.device.index);
    if (!why.empty()) return why;
    if (!pair_of(d, &why)) return why;
    if (d.m < kMinM)
      return "M = " + std::to_string(d.m) + " < " + std::to_string(kMinM) +
             " (128-row tiles of x; the skinny kernel and cuBLASLt serve a few rows)";
    if (d.k == 0 || d.k % 16 != 0)
      return "K = " + std::to_string(d.k) +
             " is not a positive multiple of 16 (the copy engine's rows of codes)";
    if (d.m > INT32_MAX - 256 || d.n > INT32_MAX - 256)
      return "M or N past 2^31 (32-bit tile coordinates)";
    if (w8a8_wgmma::g_width.load() != 0) return {};  // forced (tests): wherever it is valid
    const QuantScheme& xs = *d.x_scheme;
    if (mm_cuda::is_fp8(xs.format) && xs.granularity == Granularity::tensor &&
        d.w.granularity == Granularity::tensor)
      return "per-tensor fp8 scales: cuBLASLt applies them itself (matmul_cuda_w8a8_lt, 1.0-1.6x "
             "faster at M = 16, 64 and 2048 on the H100)";
    const int64_t tiles64 = (d.m + w8a8_wgmma::kRowsX - 1) / w8a8_wgmma::kRowsX * ((d.n + 63) / 64);
    const int sms = mm_cuda::sm_count(d.device.index);
    if (d.m <= 64 && tiles64 * 10 < sms * 9)
      return "M = " + std::to_string(d.m) + ", N = " + std::to_string(d.n) + ": " +
             std::to_string(tiles64) + " tiles for " + std::to_string(sms) +
             " SMs (cuBLASLt splits K; 1.1-1.4x faster at M = 16-64, N = 4096 on the H100)";
    return {};
  }

  KernelSku sku(const MatmulDesc& d) const override {
    return mm_cuda::cuda_sku(d, mm_cuda::w8a8_dtypes(d), name());
  }

  PrecisionGuarantee precision(const MatmulDesc& d) const override {
    std::string why;
    if (d.x_scheme && pair_of(d, &why) == Pair::s8_s8)
      return {
          "int8 codes multiplied and summed exactly in i32 (wgmma), then f32(sum) * sx * sw "
          "(+ bias), one rounding to y (matmul_cuda_w8a8_lt's bits)",
          Dtype::i32, true, false};
    return {
        "fp8 codes multiplied on tensor cores (wgmma), each 128-k stage's sums added in f32 in k "
        "order, then f32(sum) * sx * sw (+ bias), one rounding to y",
        Dtype::f32, true, false};
  }

  std::size_t workspace_size(const MatmulDesc& d) const override {
    return mm_cuda::x_quant_bytes(d);
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace workspace) const override {
    if (d.m == 0 || d.n == 0) return;
    std::string why;
    const Pair pair = *pair_of(d, &why);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto s = static_cast<cudaStream_t>(stream.native_handle());
    const QuantizedView xq = mm_cuda::activations(d, a, workspace.data, stream);
    auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (!aligned16(xq.codes.data()) || !aligned16(a.w.codes.data()))
      throw_error(ErrorCode::invalid_argument,
                  "matmul: " + std::string(name()) +
                      " reads x's and W's codes with the copy engine, which needs them 16-byte "
                      "aligned (x codes at " +
                      std::to_string(reinterpret_cast<uintptr_t>(xq.codes.data())) +
                      ", W codes at " +
                      std::to_string(reinterpret_cast<uintptr_t>(a.w.codes.data())) +
                      "); select matmul_cuda_w8a8_lt by Preference for unaligned views");
    const int sms = mm_cuda::sm_count(d.device.index);
    const int forced = w8a8_wgmma::g_width.load();
    const int bn =
        forced == 64 || forced == 128 || forced == 256 ? forced : width_for(d.m, d.n, sms);
    Params p;
    p.m = static_cast<int>(d.m);
    p.n = static_cast<int>(d.n);
    p.kblocks = static_cast<int>((d.k + w8a8_wgmma::kStageK - 1) / w8a8_wgmma::kStageK);
    p.tiles_m = static_cast<int>((d.m + w8a8_wgmma::kRowsX - 1) / w8a8_wgmma::kRowsX);
    p.tiles = p.tiles_m * static_cast<int>((d.n + bn - 1) / bn);
    p.sx = xq.scale.data();
    p.sxd = xq.scale.dtype();
    p.sx_row = xq.scheme.granularity == Granularity::token;
    p.sw = a.w.scale.data();
    p.swd = a.w.scale.dtype();
    p.sw_row = d.w.granularity != Granularity::tensor;
    p.bias = d.bias ? a.bias.data() : nullptr;
    p.y = a.y.data();
    p.yd = d.y;
    p.y_stride = d.y_stride();
    const CUtensorMap x_map = codes_map(xq.codes.data(), d.m, d.k, w8a8_wgmma::kRowsX, "x codes");
    const CUtensorMap w_map =
        codes_map(a.w.codes.data(), d.n, d.k, static_cast<uint32_t>(bn), "W codes");
    launch_for(pair, bn)(p, x_map, w_map, std::min(p.tiles, sms), s);
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_w8a8_wgmma_kernel() {
  static const MatmulCudaW8A8Wgmma kernel;
  return kernel;
}

}  // namespace lowbit
