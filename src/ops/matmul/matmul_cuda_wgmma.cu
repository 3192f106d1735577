// matmul_cuda_wgmma_ws_tc, matmul_cuda_wgmma_ws64_tc and matmul_cuda_wgmma_tc: weight-only
// y = x · dequant(W)^T for bf16 / f16 x on Hopper (sm_90a), wgmma with W decoded in registers
// while the tensor cores run (select() order: the skinny kernel up to M = 32, the
// warp-specialized kernel with 256-row tiles of x for 129 <= M <= 1024 and with 64-row tiles
// for 33 <= M <= 128, then the one-wave kernel (65 <= M <= 256: taken only by preference now,
// the ws kernels being as fast or faster on every measured shape), the medium kernel up to 128
// (GPUs without sm_90a), dequantize + cuBLASLt), over the prepared "cuda_tc16x128" layout of the
// skinny and medium kernels (one prepared copy serves them all). This file is the plans: what
// the kernels take, why they decline, the split-K choice; the kernels are
// matmul_cuda_wgmma_ws.cuh and matmul_cuda_wgmma.cuh (their file comments have the tiling and
// the arithmetic), instantiated by matmul_cuda_wgmma_{int4,fp4}.cu.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>

#include "ops/matmul/matmul_cuda_wgmma_ws.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {

namespace wgmma {

/// Writes 1 where this build has the sm_90a code of the kernels (wgmma), else 0: a build
/// whose CUDA archs lack 90a runs other code on an H100 (a plain sm_90 or older PTX).
__global__ void probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

/// "" where the device runs this build's sm_90a kernels, else why not (cached per device).
std::string sm90a_decline(int device) {
  static std::mutex mutex;
  static std::map<int, std::string> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  std::string why;
  const CudaDeviceProperties p = cuda_device_properties(device);
  if (p.sm_major != 9 || p.sm_minor != 0) {
    why = "needs sm_90a (Hopper) for wgmma; this is sm_" + std::to_string(p.sm_major) +
          std::to_string(p.sm_minor);
  } else {
    mm_cuda::DeviceScope scope(device);
    int* flag = nullptr;
    int host = 0;
    cudaError_t err = cudaMalloc(&flag, sizeof(int));
    if (err == cudaSuccess) {
      wgmma::probe_kernel<<<1, 1>>>(flag);
      err = cudaGetLastError();
      if (err == cudaSuccess) err = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
      cudaFree(flag);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      why = std::string("the sm_90a probe failed (") + cudaGetErrorName(err) + ")";
    } else if (host != 1) {
      why = "this build has no sm_90a code (add 90a to LOWBIT_CUDA_ARCHS)";
    }
  }
  return cache.emplace(device, why).first->second;
}

/// The driver's cuTensorMapEncodeTiled (asked once).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (!encode) throw_error(ErrorCode::internal, "matmul: the driver has no cuTensorMapEncodeTiled");
  return encode;
}

CUtensorMap tensor_map_swizzled(const void* data, CUtensorMapDataType type, int elem_bytes,
                                int64_t rows, int64_t cols, int64_t stride, uint32_t box_rows,
                                CUtensorMapL2promotion promotion, const char* what) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * elem_bytes};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(128 / elem_bytes), box_rows};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r =
      tensor_map_encoder()(&map, type, 2, const_cast<void*>(data), dims, strides, box, elem,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promotion,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw_error(ErrorCode::internal, "matmul: cuTensorMapEncodeTiled failed (" +
                                         std::to_string(static_cast<int>(r)) + ") for " + what +
                                         " [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                         "]");
  return map;
}

}  // namespace wgmma

namespace {

using wgmma::sm90a_decline;
using wgmma::tensor_map_encoder;

using tc::Code;
using tc::Scale;
using wgmma::Launcher;

Launcher launcher_for(const tc::Format& f, int64_t k, bool bf16, std::string* why) {
  switch (f.code) {
    case Code::u4:
      return wgmma::launcher_int4(f, bf16, why);
    case Code::fp4:
      return wgmma::launcher_fp4(f, bf16, why);
    default:
      return wgmma::launcher_int8(f, k, bf16, why);
  }
}

/// A [rows][cols] matrix of 16-bit elements (rows `stride` elements apart) in boxes of 64
/// columns x `box_rows` rows with the 128-byte swizzle (the kernels' shared-memory layout).
CUtensorMap tensor_map_16bit(const void* data, int64_t rows, int64_t cols, int64_t stride,
                             uint32_t box_rows, CUtensorMapL2promotion promotion,
                             const char* what) {
  return wgmma::tensor_map_swizzled(data, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, rows, cols, stride,
                                    box_rows, promotion, what);
}

/// x [m][k]: boxes of 64 k x `rows` rows, rows past M read as zeros.
CUtensorMap x_tensor_map(const void* x, int64_t m, int64_t k, int64_t stride, uint32_t rows) {
  return tensor_map_16bit(x, m, k, stride, rows, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, "x");
}

/// y [m][n] for the ws kernels' stores through the copy engine (Args::y_tma): boxes of 64 n x
/// `rows` rows of x, whatever lies past M or N not written.
CUtensorMap y_tensor_map(void* y, int64_t m, int64_t n, int64_t stride, uint32_t rows) {
  return tensor_map_16bit(y, m, n, stride, rows, CU_TENSOR_MAP_L2_PROMOTION_NONE, "y");
}

/// What both wgmma plans share: the device and dtype checks, the formats (one instantiation
/// list), the precision, the workspace of split-K partial sums and the launch. A variant says
/// its name, its range of M (and any other limit), its split of K, its tensor map's box and
/// which of the instantiation's launches it takes.
class WgmmaPlan : public mm_cuda::TcWeightOnlyKernel {
 public:
  std::string decline(const MatmulDesc& d) const final {
    std::string why = weight_only_decline(d, reinterpret_cast<const void*>(&wgmma::probe_kernel));
    if (!why.empty()) return why;
    why = sm90a_decline(d.device.index);
    if (!why.empty()) return why;
    if (d.y != d.x)
      return "y is " + std::string(dtype_name(d.y)) + ": W rounded to x's dtype (" +
             std::string(dtype_name(d.x)) +
             ") would not give sums of that precision (the dequantize path computes in f32)";
    const auto f = tc::format_of(d.w, d.n, d.k, &why);
    if (!f) return why;
    const Launcher l = launcher_for(*f, d.k, true, &why);
    if (!l) return why;
    if (!l.has(ws_tiling()))
      return tc::Format::wide(f->code)
                 ? "8-bit codes run on matmul_cuda_wgmma_ws128_tc's 128-row tiles (their 2 KB "
                   "per tile and segment leave no room for this kernel's stages)"
                 : "4-bit codes run on the 256- and 64-row tiles (matmul_cuda_wgmma_ws_tc, "
                   "matmul_cuda_wgmma_ws64_tc): no 128-row instantiation";
    why = decline_m(d.m, d.k, *f);
    if (!why.empty()) return why;
    return decline_grid(d, *f, tc::layout_of(*f, d.n, d.k).tiles);
  }

  PrecisionGuarantee precision(const MatmulDesc&) const final {
    return {
        "W decoded to x's dtype in registers (8-bit codes with one scale per row: the code's "
        "value, exact, and each row's f32 sums times its scale in f32; 8-bit codes in groups, "
        "4-bit integer formats and q4_0: dequantize()'s value "
        "rounded once, the bits of dequantize to x's dtype, except int4 / uint4 in groups of "
        ">= 64 and q4_0 on the 64-row kernel (33 <= M <= 128): the code's integer value, exact, "
        "and each group's partial sum of a 64-k unit times its scale in f32; e2m1 formats: the "
        "code times its "
        "block scale, exact, nvfp4's global scale applied in f32), products summed in f32 on "
        "tensor cores (wgmma); split-K ranges added in a fixed order (no atomics): " +
            split_note(),
        Dtype::f32, true, false};
  }

  std::size_t workspace_size(const MatmulDesc& d) const final {
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    const wgmma_ws::WsSplit sp = split_of(d, tp);
    const size_t base = medium::workspace_bytes(d, sp.workspace_ranges());
    return sp.chained() ? wgmma_ws::chain_area(base, d.m, d.n, tp.layout.tiles, rows_x()).end
                        : base;
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace ws) const final {
    if (d.m == 0 || d.n == 0) return;
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    require_prepared(a, tp);
    mm_cuda::DeviceScope scope(d.device.index);
    const auto cs = static_cast<cudaStream_t>(stream.native_handle());
    // The copy engine needs x 16-byte aligned with rows a multiple of 16 bytes apart: args_for
    // copies any other x into the workspace.
    const wgmma_ws::WsSplit sp = split_of(d, tp);
    wgmma::Args wa = medium::args_for(d, a, tp, sp.workspace_ranges(), ws, cs);
    wa.split = sp.split;
    wa.cluster_split = sp.in_cluster;
    if (sp.chained()) {  // after what args_for uses: the flags, then the first pair's sums
      const wgmma_ws::ChainArea ca = wgmma_ws::chain_area(
          medium::workspace_bytes(d, sp.workspace_ranges()), d.m, d.n, tp.layout.tiles, rows_x());
      wa.flags = reinterpret_cast<unsigned long long*>(static_cast<uint8_t*>(ws.data) + ca.flags);
      wa.partial = reinterpret_cast<float*>(static_cast<uint8_t*>(ws.data) + ca.sums);
      wa.tag = chain_tag();
    }
    const CUtensorMap x_map = x_tensor_map(wa.x, d.m, d.k, wa.x_stride, box_rows());
    const Launcher l = launcher_for(tp.format, d.k, d.x == Dtype::bf16, nullptr);
    if (ws_tiling() < 0) return l.launch(wa, x_map, cs);
    // y through the copy engine where one k-range writes it and its rows are 16-byte aligned.
    wa.y_tma = wa.split == 1 && reinterpret_cast<uintptr_t>(wa.y) % 16 == 0 &&
               wa.y_stride % 8 == 0 && bit_width(d.y) == 16;
#ifdef LOWBIT_WS_TRACE  // diagnostics: the row loop's epilogue timed against the copy engine's
    if (std::getenv("LOWBIT_WS_ROW_LOOP")) wa.y_tma = false;
#endif
    const CUtensorMap y_map =
        wa.y_tma ? y_tensor_map(wa.y, d.m, d.n, wa.y_stride, rows_x()) : CUtensorMap{};
    l.launch_ws[ws_tiling()](wa, x_map, y_map, cs);
  }

 protected:
  virtual std::string decline_m(int64_t m, int64_t k, const tc::Format& f) const = 0;
  virtual std::string decline_grid(const MatmulDesc&, const tc::Format&, int64_t) const {
    return {};
  }
  virtual wgmma_ws::WsSplit split_of(const MatmulDesc& d, const mm_cuda::TcPlan& tp) const = 0;
  virtual uint32_t box_rows() const = 0;
  /// -1: the one-wave kernel; 0 / 1 / 2: the warp-specialized kernel with 256 / 64 / 128 rows
  /// of x.
  virtual int ws_tiling() const = 0;
  int rows_x() const {
    return ws_tiling() == 0 ? 256 : ws_tiling() == 1 ? 64 : ws_tiling() == 2 ? 128 : wgmma::kRowsX;
  }
  /// A value no flag of a chained call's workspace holds: the flags are lowered after each
  /// call, and a workspace's first contents match a random 64-bit tag only by a 2^-64 chance
  /// (so a captured CUDA graph, which repeats its tag, finds them lowered too).
  static unsigned long long chain_tag() {
    static std::atomic<unsigned long long> next{[] {
      std::random_device rd;
      return (static_cast<unsigned long long>(rd()) << 32) ^ rd();
    }()};
    unsigned long long t = 0;
    while (t == 0) t = next.fetch_add(1, std::memory_order_relaxed);
    return t;
  }
  virtual std::string split_note() const = 0;
};

/// Rows of x this kernel takes (64 < M <= 256, only where its blocks fit in one wave: one
/// block per SM). select() puts both warp-specialized tilings first (33-128 and 129-1024 /
/// 2048), which decline for the same reasons as this kernel, so it runs by preference only.
/// Measured on the H100 (BENCHMARKS.md, 4-bit formats): against the medium kernel it takes
/// 0.47-0.83x the time at M = 80 and 0.53-1.00x at M = 128 (but 1.07-1.24x with int4:block128 /
/// mxfp4 on 14336x4096), and 0.94-1.07x at M = 64, where half its 128-row tile of x is padding;
/// against dequantize + cuBLASLt at M = 256 0.50-0.91x on 8192x8192 (128 blocks) and 4096x14336 (64
/// blocks, K split in two), 1.03-1.36x on 14336x4096 (224 blocks: two waves of 32-segment blocks);
/// at M = 2048 2.5-2.9x.
constexpr int64_t kMinM = 65;
constexpr int64_t kMaxM = 256;

class MatmulCudaWgmma final : public WgmmaPlan {
 public:
  std::string_view name() const override { return "matmul_cuda_wgmma_tc"; }

 protected:
  std::string decline_m(int64_t m, int64_t, const tc::Format&) const override {
    if (m < kMinM)
      return "M = " + std::to_string(m) + " < " + std::to_string(kMinM) +
             " (a 128-row tile of x would be half padding: the skinny and medium kernels are as "
             "fast there)";
    if (m > kMaxM)
      return "M = " + std::to_string(m) + " > " + std::to_string(kMaxM) +
             " (this kernel's pipeline tops out at 240-340 TFLOP/s; dequantize + a cuBLASLt "
             "GEMM is faster there)";
    return {};
  }
  std::string decline_grid(const MatmulDesc& d, const tc::Format&, int64_t tiles) const override {
    const int64_t blocks = wgmma::blocks_for(d.m, tiles), sms = mm_cuda::sm_count(d.device.index);
    if (blocks > sms)
      return std::to_string(blocks) + " blocks of 128 x 128 for " + std::to_string(sms) +
             " SMs: more than one wave (dequantize + a cuBLASLt GEMM is faster there)";
    return {};
  }
  wgmma_ws::WsSplit split_of(const MatmulDesc& d, const mm_cuda::TcPlan& tp) const override {
    const int64_t slots = mm_cuda::sm_count(d.device.index);  // one block per SM
    return {wgmma::split_for(d.m, tp.layout.tiles, tp.layout.segments, slots), false};
  }
  uint32_t box_rows() const override { return wgmma::kRowsX; }
  int ws_tiling() const override { return -1; }
  std::string split_note() const override {
    return "up to 16 ranges, partial sums through the workspace";
  }
};

/// Rows of x the warp-specialized kernel takes with 256 rows of x per block (first in select()
/// order among the M > 32 kernels). Measured on the H100 (BENCHMARKS.md, 4-bit formats, three
/// shapes): at M = 256 0.67-0.92x the one-wave kernel's time and 0.41-0.65x dequantize +
/// cuBLASLt's. At M = 2048 (2026-11-23, e8m0 scales without branches) it takes 0.83-1.04x
/// dequantize + cuBLASLt's time for nvfp4 and mxfp4 (faster on two of three shapes, 4% slower
/// on 14336x4096) but 0.98-1.18x for int4 (its exact f32 decode costs more), so e2m1 formats
/// go to 2048, the others to 1024 on any grid (the crossover measured there in the first
/// version: the kernel's 530-600 TFLOP/s against the dequantize's fixed cost plus cuBLASLt's
/// 600-800) and to 2048 where its blocks fill their waves (kWsMinWaveFill).
/// Below 129 a 256-row tile of x is mostly padding: the 64-row tiling takes those.
constexpr int64_t kWsMinM = 129;
constexpr int64_t kWsMaxM = 1024;
constexpr int64_t kWsMaxMe2m1 = 2048;
/// The other formats (int4, q4_0) from 1025 to 2048 only where the grid's blocks fill its
/// waves to at least this share: on the H100 (BENCHMARKS.md, session 15) at M = 2048 (3.9-6.8
/// waves, 97% full) the kernel takes 0.92-0.97x dequantize + cuBLASLt's time, at M = 1536 on
/// 8192x8192 (2.9 waves) 0.88x, but on 4096x14336 (1.45 waves, 73%) about 1.1x.
constexpr int64_t kWsMaxMWaves = 2048;
constexpr double kWsMinWaveFill = 0.9;
/// The same kernel with 64 rows of x per block (m64n64k16) for 33 <= M <= 128. On the H100
/// (BENCHMARKS.md, 8192x8192, 14336x4096, 4096x14336): at M = 64 0.038-0.044 ms against the
/// medium kernel's 0.051-0.062; at M = 128 0.069 against the one-wave kernel's 0.071 and the
/// medium's 0.080. At M = 32 the skinny kernel is as fast (0.039 ms) and keeps it.
constexpr int64_t kWs64MinM = 33;
constexpr int64_t kWs64MaxM = 128;
/// The 128-row tiling, for 8-bit codes (docs/matmul.md, select() step 3c). From 33 (the
/// skinny kernel takes M <= 32): on the H100 (BENCHMARKS.md, session 26) at M = 48-64 it took
/// 0.041-0.051 ms against the medium kernel's 0.046-0.068 once a half tile of x lying wholly
/// past M is no longer asked of the copy engine (before that, 0.073-0.079 ms on two shapes).
constexpr int64_t kWs128MinM = 33;
constexpr int64_t kWs128MaxM = 1024;
/// 8-bit codes in groups along K (int8 / uint8 blocks, q8_0, fp8 blocks of 128) on the same
/// tiling: their rounded decode costs more, so the crossover with dequantize + cuBLASLt comes
/// earlier.
constexpr int64_t kWs128GroupsMaxM = 512;

/// The warp-specialized kernel with RX (256, 128 or 64) rows of x per block.
template <int RX>
class MatmulCudaWgmmaWs final : public WgmmaPlan {
 public:
  std::string_view name() const override {
    return RX == 256   ? "matmul_cuda_wgmma_ws_tc"
           : RX == 128 ? "matmul_cuda_wgmma_ws128_tc"
                       : "matmul_cuda_wgmma_ws64_tc";
  }

 protected:
  static constexpr int64_t kMin = RX == 256 ? kWsMinM : RX == 128 ? kWs128MinM : kWs64MinM;
  std::string decline_m(int64_t m, int64_t k, const tc::Format& f) const override {
    const int64_t kMax = RX == 256   ? (f.code == tc::Code::fp4 ? kWsMaxMe2m1 : kWsMaxMWaves)
                         : RX == 128 ? (wgmma::row_scaled(f, k) ? kWs128MaxM : kWs128GroupsMaxM)
                                     : kWs64MaxM;
    if (m < kMin)
      return "M = " + std::to_string(m) + " < " + std::to_string(kMin) +
             (RX == 256   ? " (a 256-row tile of x would be mostly padding: "
                            "matmul_cuda_wgmma_ws64_tc takes these)"
              : RX == 128 ? " (the skinny kernel takes these)"
                          : " (a 64-row tile of x would be mostly padding: the skinny kernel "
                            "takes these)");
    if (m > kMax)
      return "M = " + std::to_string(m) + " > " + std::to_string(kMax) +
             (RX == 64 ? " (matmul_cuda_wgmma_ws_tc's 256-row tiles take these)"
                       : " (for this format dequantize + a cuBLASLt GEMM is as fast or faster "
                         "there)");
    return {};
  }
  std::string decline_grid(const MatmulDesc& d, const tc::Format& f, int64_t tiles) const override {
    if (RX != 256 || f.code == tc::Code::fp4 || d.m <= kWsMaxM) return {};
    // Blocks of W in pairs (clusters), one block per SM.
    const int64_t wblocks = (tiles + wgmma_ws::kTilesPerBlock - 1) / wgmma_ws::kTilesPerBlock;
    const int64_t blocks = (d.m + RX - 1) / RX * ((wblocks + 1) / 2 * 2);
    const int64_t sms = mm_cuda::sm_count(d.device.index);
    const int64_t waves = (blocks + sms - 1) / sms;
    const double fill = static_cast<double>(blocks) / static_cast<double>(waves * sms);
    if (fill >= kWsMinWaveFill) return {};
    return "M = " + std::to_string(d.m) + " > " + std::to_string(kWsMaxM) + " and " +
           std::to_string(blocks) + " blocks fill " + std::to_string(waves) + " wave(s) of " +
           std::to_string(sms) + " SMs to " + std::to_string(static_cast<int>(fill * 100)) +
           "% (< 90%: dequantize + a cuBLASLt GEMM is faster there)";
  }
  wgmma_ws::WsSplit split_of(const MatmulDesc& d, const mm_cuda::TcPlan& tp) const override {
    const int64_t slots = mm_cuda::sm_count(d.device.index);  // one block per SM
    const Launcher l = launcher_for(tp.format, d.k, d.x == Dtype::bf16, nullptr);
    return wgmma_ws::split_for(d.m, tp.layout.tiles, tp.layout.segments, RX, slots,
                               l.ws_max_pairs[ws_tiling()]());
  }
  std::string split_note() const override {
    return "two ranges of a cluster's blocks added through distributed shared memory; four as "
           "two such pairs, the first pair's sums handed to the second through the workspace "
           "((r0 + r1) + (r2 + r3)); or up to 16 through the workspace";
  }
  // Each block of a pair asks for its half of x's rows (multicast to both).
  uint32_t box_rows() const override { return RX / wgmma_ws::kClusterBlocks; }
  int ws_tiling() const override { return RX == 256 ? 0 : RX == 128 ? 2 : 1; }
};

}  // namespace

const MatmulKernel& matmul_cuda_wgmma_kernel() {
  static const MatmulCudaWgmma kernel;
  return kernel;
}

const MatmulKernel& matmul_cuda_wgmma_ws_kernel() {
  static const MatmulCudaWgmmaWs<256> kernel;
  return kernel;
}

const MatmulKernel& matmul_cuda_wgmma_ws64_kernel() {
  static const MatmulCudaWgmmaWs<64> kernel;
  return kernel;
}

const MatmulKernel& matmul_cuda_wgmma_ws128_kernel() {
  static const MatmulCudaWgmmaWs<128> kernel;
  return kernel;
}

}  // namespace lowbit
