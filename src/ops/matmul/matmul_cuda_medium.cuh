// The kernel of matmul_cuda_medium_tc (weight-only y = x · dequant(W)^T for tens to hundreds of
// rows of bf16 / f16 x) as a template, instantiated per (code, scale, group, x dtype, affine) by
// matmul_cuda_medium_{int4,int8,float}.cu; the plan code is in matmul_cuda_medium.cu.
//
// The skinny kernel (matmul_cuda_skinny.cuh) decodes each 16 x 16 weight operand for one or
// two mmas, and every 16 rows of x re-read W: past M = 32 it loses to dequantize + cuBLASLt.
// This kernel keeps the skinny kernel's arithmetic (the same prepared layout, decode, scale
// tables and group flushes) in a GEMM tiling, so that a weight is read from HBM once per 64
// rows of x and each decoded operand feeds 8 mmas:
//
//   block = 128 rows of W (8 tiles of 16, grid.y) x 64 rows of x (grid.x, fastest: the blocks
//           that share a stretch of W run together and find it in L2) x one k-range
//           (grid.z, `split` ranges of whole 128-k segments: deterministic split-K, below).
//           8 warps: warp w = tile w (16 rows of W) x the block's 64 rows of x (NT = 8 mma
//           columns of 8).
//   stage = one 128-k segment: x [64 rows][128 k] (rows kXPitch = 288 bytes apart, so the
//           8-byte B-operand loads of a half-warp hit 32 distinct banks) and the 8 tiles'
//           codes (8 KB for 4-bit, 16 KB for 8-bit: the layout's [tile][segment] runs are
//           contiguous), copied with cp.async 16 bytes at a time, stages(bits) deep.
//   step  = 16 k: per warp 4 A registers decoded from shared memory as in the skinny kernel,
//           8 B loads (ld.shared 8 bytes: x[c][k .. k + 3] in memory order, the layout's k
//           order), 8 mma.m16n8k16 (+ 8 all-ones mmas for affine formats: the group's sum of
//           x, as in the skinny kernel).
//   group = f32 partial sums per scale group, then `acc += a · g (+ b · sum(x))` in f32 with
//           the skinny kernel's seg_group_ab numbers (skinny::RowScales, one segment ahead).
//   end   = split == 1: global scale (nvfp4), bias and one rounding to y. split > 1: f32
//           partial sums to the workspace [split][m][n]; reduce_kernel adds them in split
//           order (no atomics), then the same epilogue.
// Numbers: those of the skinny kernel (exact code x x products on the tensor core, f32 sums
// per scale group, scales applied to f32 partial sums), with the k-ranges of a split added in
// a fixed order: deterministic, the same accuracy class and tolerances.
// Tilings tried (H100, 8192x8192, bf16, ms at M = 64 / 256, docs/matmul.md): 4 warps of 2 tiles
// x 32 rows of x (each operand 4 mmas, x read by 2 warps): int4:block32 0.057 / 0.176; this one
// (128 registers, 16 warps per SM): 0.062 / 0.167, nvfp4 0.056 / 0.166; 4 warps of 2 tiles x 64
// rows (255 registers, spills): within 10% of this one. All run at 150-260 TFLOP/s: the
// mma.sync issue and latency of a decode-in-the-loop kernel, not the bytes, bound it.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "ops/matmul/matmul_cuda_skinny.cuh"

namespace lowbit::medium {

using tc::Code;
using tc::Scale;
using tc::TcWeights;

inline constexpr int kThreads = 256;      ///< 8 warps, one 16-row W tile each
inline constexpr int kTilesPerBlock = 8;  ///< 128 rows of W per block
inline constexpr int kNT = 8;             ///< mmas per decoded operand: 64 rows of x per warp
inline constexpr int kRowsX = 64;         ///< rows of x per block
inline constexpr int kXPitch = 256 + 32;  ///< bytes per row of x in shared memory
inline constexpr int kXBytes = kRowsX * kXPitch;

/// Shared-memory bytes of one stage for codes of `bits` bits.
constexpr int stage_bytes(int bits) {
  return kXBytes + kTilesPerBlock * 64 * (bits == 4 ? 16 : 32);
}
/// Segments in flight (cp.async groups): two blocks of 4 (4-bit) or 3 (8-bit) stages fit in
/// an SM's 228 KB of shared memory.
constexpr int stages(int bits) { return bits == 4 ? 4 : 3; }

struct Args {
  TcWeights w;
  const uint8_t* x = nullptr;  ///< bf16 / f16 [m][x_stride], 16-byte aligned, x_stride % 8 == 0
  int64_t x_stride = 0;        ///< elements
  void* y = nullptr;
  int64_t y_stride = 0;
  Dtype y_dtype = Dtype::bf16;
  const void* bias = nullptr;
  float* partial = nullptr;  ///< split > 1: [split][m][n] f32 partial sums
  int m = 0;
  int64_t n = 0;
  int64_t tiles = 0;
  int split = 1;
  bool cluster_split = false;  ///< the ws kernel's k-ranges added in pairs inside clusters
  /// The ws kernel with 4 ranges in two cluster pairs (cluster_split, split 4): the first pair's
  /// sums go through `partial` ([m][n] f32), handed over by a flag per half block: `flags`
  /// [x blocks][W blocks][2], each set to `tag` when written and back to 0 when read.
  unsigned long long* flags = nullptr;
  unsigned long long tag = 0;
  /// The ws kernel writes y through the copy engine (one k-range, y 16-bit, 16-byte aligned
  /// rows): its launch's y tensor map is valid.
  bool y_tma = false;
};

/// One instantiation: its launch over a grid, and how many of its blocks fit on an SM.
struct Launcher {
  void (*launch)(const Args&, cudaStream_t) = nullptr;
  int (*blocks_per_sm)() = nullptr;
  explicit operator bool() const { return launch != nullptr; }
};

/// The instantiation for a format and x dtype, or an empty Launcher (with the reason in `why`).
Launcher launcher_int4(const tc::Format& f, bool bf16, std::string* why);
Launcher launcher_int8(const tc::Format& f, bool bf16, std::string* why);
Launcher launcher_float(const tc::Format& f, bool bf16, std::string* why);

/// k-ranges per (64 x 64) block: enough blocks for one wave of `slots` (blocks per SM x SMs),
/// each range at least 4 segments (the pipeline's depth); 1 when the grid already fills.
inline int split_for(int64_t m, int64_t tiles, int64_t segments, int64_t slots) {
  const int64_t blocks =
      ((m + kRowsX - 1) / kRowsX) * ((tiles + kTilesPerBlock - 1) / kTilesPerBlock);
  const int64_t want = (slots + blocks / 2) / std::max<int64_t>(blocks, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::clamp<int64_t>(segments / 4, 1, 16)));
}

#if defined(__CUDACC__)

using async::cp_async16;
using async::cp_async_commit;
using async::cp_async_wait;

/// Stores (or, with split > 1, parks) one f32 result of column c (row of x) and row (of W).
__device__ __forceinline__ void store_result(const Args& p, float global, int c, int64_t row,
                                             float v) {
  if (p.partial) {
    p.partial[(static_cast<int64_t>(blockIdx.z) * p.m + c) * p.n + row] = v;
    return;
  }
  v *= global;
  if (p.bias) v += quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row));
  quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row), v);
}

template <Code C, Scale S, int kStepsLog2, bool kBf16, bool kAffine>
__global__ void __launch_bounds__(kThreads, 2) medium_kernel(Args p) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kVec = kBits == 4 ? 1 : 2;  // 16-byte code vectors per half
  constexpr int kLaneBytes = 16 * kVec;
  constexpr int kTileBytes = 64 * kLaneBytes;  // one tile's codes of one segment
  constexpr int kStage = stage_bytes(kBits);
  constexpr int kSt = stages(kBits);
  constexpr int kGS = 1 << kStepsLog2;  // steps per scale group
  constexpr float kF = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  constexpr uint32_t kOnes = kBf16 ? 0x3f803f80u : 0x3c003c00u;  // (1.0, 1.0)
  constexpr bool kZero = S == Scale::integer && kAffine;

  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31, r = lane >> 2, q = lane & 3;
  const int m0 = static_cast<int>(blockIdx.x) * kRowsX;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTilesPerBlock;
  const int segs = static_cast<int>(p.w.segments);
  const int s_begin = static_cast<int>(blockIdx.z) * segs / p.split;
  const int nseg = static_cast<int>(blockIdx.z + 1) * segs / p.split - s_begin;

  // This thread's cp.async sources: x rows (tid / 16) + 16 v (past M: row M - 1, whose outputs
  // are dropped), 16-byte chunk tid % 16; code chunks tid + kThreads v of the block's tiles
  // (tiles past the last: the last one, rows past N are never stored).
  const uint8_t* xsrc = p.x + static_cast<int64_t>(tid & 15) * 16;
  const int xrow0 = tid >> 4;
  auto issue = [&](int i) {
    uint8_t* st = smem + (i % kSt) * kStage;
    const int s = s_begin + i;
#pragma unroll
    for (int v = 0; v < kRowsX * 16 / kThreads; ++v) {
      const int row = xrow0 + (kThreads / 16) * v;
      const int64_t xr = min(m0 + row, p.m - 1);
      cp_async16(st + row * kXPitch + (tid & 15) * 16, xsrc + (xr * p.x_stride + s * 128) * 2);
    }
#pragma unroll
    for (int v = 0; v < kTilesPerBlock * kTileBytes / 16 / kThreads; ++v) {
      const int c = tid + kThreads * v;
      const int tl = c / (kTileBytes / 16), off = c % (kTileBytes / 16);
      const int64_t t = min(tile0 + tl, p.tiles - 1);
      cp_async16(st + kXBytes + c * 16,
                 p.w.codes + (t * segs + s) * kTileBytes + static_cast<int64_t>(off) * 16);
    }
  };
#pragma unroll
  for (int i = 0; i < kSt - 1; ++i) {
    if (i < nseg) issue(i);
    cp_async_commit();
  }

  // Row scales of this lane's two rows of the warp's tile (r, r + 8).
  using RS = skinny::RowScales<S, kStepsLog2, kZero>;
  const int64_t my_tile = min(tile0 + warp, p.tiles - 1);
  const RS rs0(p.w, my_tile * 16 + r), rs1(p.w, my_tile * 16 + r + 8);
  tc::SegScales sn0 = rs0.load(s_begin), sn1 = rs1.load(s_begin);

  float acc[kNT][4];
#pragma unroll
  for (int t = 0; t < kNT; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[t][e] = 0.0f;

  for (int i = 0; i < nseg; ++i) {
    cp_async_wait<kSt - 2>();
    __syncthreads();  // stage i landed for all; stage i - 1 is free for segment i + kSt - 1
    if (i + kSt - 1 < nseg) issue(i + kSt - 1);
    cp_async_commit();

    const uint8_t* st = smem + (i % kSt) * kStage;
    uint32_t w0[4 * kVec], w1[4 * kVec];  // this lane's code words, rows r and r + 8
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      const uint8_t* at = st + kXBytes + warp * kTileBytes + lane * kLaneBytes + 16 * v;
      const uint4 u0 = *reinterpret_cast<const uint4*>(at);
      const uint4 u1 = *reinterpret_cast<const uint4*>(at + 32 * kLaneBytes);
      w0[4 * v] = u0.x, w0[4 * v + 1] = u0.y, w0[4 * v + 2] = u0.z, w0[4 * v + 3] = u0.w;
      w1[4 * v] = u1.x, w1[4 * v + 1] = u1.y, w1[4 * v + 2] = u1.z, w1[4 * v + 3] = u1.w;
    }
    const tc::SegScales cs0 = sn0, cs1 = sn1;
    const int s_next = s_begin + min(i + 1, nseg - 1);  // past the end: a re-read
    sn0 = rs0.load(s_next);
    sn1 = rs1.load(s_next);
    const uint8_t* xs = st + r * kXPitch + 8 * q;

    float g[kNT][4], g1[kNT][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if ((j & (kGS - 1)) == 0) {
#pragma unroll
        for (int t = 0; t < kNT; ++t)
#pragma unroll
          for (int e = 0; e < 4; ++e) g[t][e] = g1[t][e] = 0.0f;
      }
      const uint32_t c0 = w0[tc::step_word(kBits, j)], c1 = w1[tc::step_word(kBits, j)];
      const int p0 = tc::step_pair(kBits, j, 0), p1 = tc::step_pair(kBits, j, 1);
      const uint32_t a0 = tc::decode_pair<C, kBf16>(c0, p0);
      const uint32_t a1 = tc::decode_pair<C, kBf16>(c1, p0);
      const uint32_t a2 = tc::decode_pair<C, kBf16>(c0, p1);
      const uint32_t a3 = tc::decode_pair<C, kBf16>(c1, p1);
#pragma unroll
      for (int t = 0; t < kNT; ++t) {
        const uint2 xv = *reinterpret_cast<const uint2*>(xs + 8 * t * kXPitch + 32 * j);
        skinny::mma16816<kBf16>(g[t], a0, a1, a2, a3, xv.x, xv.y);
        if constexpr (kAffine)
          skinny::mma16816<kBf16>(g1[t], kOnes, kOnes, kOnes, kOnes, xv.x, xv.y);
      }
      if ((j & (kGS - 1)) == kGS - 1) {
        const int f = j >> kStepsLog2;
        float a0s, b0s, a1s, b1s;
        tc::seg_group_ab<S>(cs0, f, kAffine, a0s, b0s);
        tc::seg_group_ab<S>(cs1, f, kAffine, a1s, b1s);
#pragma unroll
        for (int t = 0; t < kNT; ++t) {
          acc[t][0] += a0s * (g[t][0] * kF);
          acc[t][1] += a0s * (g[t][1] * kF);
          acc[t][2] += a1s * (g[t][2] * kF);
          acc[t][3] += a1s * (g[t][3] * kF);
          if constexpr (kAffine) {
            acc[t][0] += b0s * g1[t][0];
            acc[t][1] += b0s * g1[t][1];
            acc[t][2] += b1s * g1[t][2];
            acc[t][3] += b1s * g1[t][3];
          }
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the block exits

  const float global = S == Scale::e4m3 && !p.partial ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int t = 0; t < kNT; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = (tile0 + warp) * 16 + r + (e < 2 ? 0 : 8);
      const int c = m0 + 8 * t + 2 * q + (e & 1);
      if (c >= p.m || row >= p.n) continue;
      store_result(p, global, c, row, acc[t][e]);
    }
}

/// split > 1: y[c][row] = (sum over the splits in order of partial[z][c][row]) · global + bias
/// (matmul_cuda_medium.cu).
void launch_reduce(const Args& a, cudaStream_t stream);

/// Workspace of a tc-layout GEMM plan (medium and wgmma kernels): `split` x [m][n] f32 partial
/// sums (none for split 1, 256-aligned), then room for a copy of x [m][k] (used only when x
/// is not 16-byte aligned or its rows are not a multiple of 16 bytes apart).
size_t partial_bytes(const MatmulDesc& d, int split);
inline size_t workspace_bytes(const MatmulDesc& d, int split) {
  return partial_bytes(d, split) + static_cast<size_t>(d.m * d.k * 2);
}
/// The kernel arguments of one call, x copied into the workspace (on `stream`) when it cannot
/// be read 16 bytes at a time in place (matmul_cuda_medium.cu).
Args args_for(const MatmulDesc& d, const MatmulArgs& a, const mm_cuda::TcPlan& tp, int split,
              Workspace ws, cudaStream_t stream);

template <Code C, Scale S, int SL, bool kBf16, bool kAffine>
void launch(const Args& a, cudaStream_t stream) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  const auto kernel = &medium_kernel<C, S, SL, kBf16, kAffine>;
  const int smem = stages(kBits) * stage_bytes(kBits);
  static mm_cuda::SmemOptIn optin;
  mm_cuda::check_cuda(optin.allow(kernel, smem), "matmul: shared memory of medium_kernel");
  const dim3 grid(static_cast<unsigned>((a.m + kRowsX - 1) / kRowsX),
                  static_cast<unsigned>((a.tiles + kTilesPerBlock - 1) / kTilesPerBlock),
                  static_cast<unsigned>(a.split));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  mm_cuda::check_launch("medium_kernel");
  if (a.split > 1) launch_reduce(a, stream);
}

template <Code C, Scale S, int SL, bool kBf16, bool kAffine>
int blocks_per_sm() {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  static const int blocks = [] {
    const auto kernel = &medium_kernel<C, S, SL, kBf16, kAffine>;
    const int smem = stages(kBits) * stage_bytes(kBits);
    mm_cuda::check_cuda(mm_cuda::SmemOptIn().allow(kernel, smem),
                        "matmul: shared memory of medium_kernel");
    int b = 0;
    mm_cuda::check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, kThreads, smem),
                        "matmul: occupancy of medium_kernel");
    return std::max(1, b);
  }();
  return blocks;
}

template <Code C, Scale S, int SL, bool kAffine>
Launcher pick(bool bf16) {
  if (bf16) return {&launch<C, S, SL, true, kAffine>, &blocks_per_sm<C, S, SL, true, kAffine>};
  return {&launch<C, S, SL, false, kAffine>, &blocks_per_sm<C, S, SL, false, kAffine>};
}

/// Integer formats: groups of 32 (SL 1), 64 (2), 128 and more (3); symmetric or affine.
template <Code C>
Launcher pick_integer(const tc::Format& f, bool bf16) {
  const int sl = f.steps_log2;
  if (f.zero)
    return sl == 1   ? pick<C, Scale::integer, 1, true>(bf16)
           : sl == 2 ? pick<C, Scale::integer, 2, true>(bf16)
                     : pick<C, Scale::integer, 3, true>(bf16);
  return sl == 1   ? pick<C, Scale::integer, 1, false>(bf16)
         : sl == 2 ? pick<C, Scale::integer, 2, false>(bf16)
                   : pick<C, Scale::integer, 3, false>(bf16);
}

#endif  // __CUDACC__

}  // namespace lowbit::medium
