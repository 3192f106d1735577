// The kernel of matmul_cuda_medium_tc (weight-only y = x · dequant(W)^T for tens to hundreds of
// rows of bf16 / f16 x) as a template, instantiated per (code, scale, group, x dtype, affine) by
// matmul_cuda_medium_{int4,int8,float}.cu; the plan code is in matmul_cuda_medium.cu.
//
// The skinny kernel (matmul_cuda_skinny.cuh) decodes each 16 x 16 weight operand for one or
// two mmas, and every 16 rows of x re-read W: past M = 32 it loses to dequantize + cuBLASLt.
// This kernel keeps the skinny kernel's arithmetic (the same prepared layout, decode, scale
// tables and group flushes) in a GEMM tiling, so that a weight is read from HBM once per 64
// rows of x and each decoded operand feeds 4 mmas:
//
//   block = 64 rows of W (4 tiles of 16, grid.y) x 64 rows of x (grid.x, fastest: the blocks
//           that share a stretch of W run together and find it in L2) x one k-range
//           (grid.z, `split` ranges of whole 128-k segments: deterministic split-K, below).
//           4 warps: warp (wn, wm) = tiles 2 wn, 2 wn + 1 (32 rows of W) x rows 32 wm .. + 31
//           of the block's x (NT = 4 mma columns of 8).
//   stage = one 128-k segment: x [64 rows][128 k] bf16 (rows kXPitch = 288 bytes apart, so the
//           8-byte B-operand loads of a warp hit 32 distinct banks per half-warp) and the 4
//           tiles' codes (4 KB for 4-bit, 8 KB for 8-bit: the layout's [tile][segment] runs are
//           contiguous), copied with cp.async 16 bytes at a time, kStages deep.
//   step  = 16 k: per warp 2 x 4 A registers decoded from shared memory as in the skinny
//           kernel, 4 B loads (ld.shared 8 bytes: x[c][k .. k + 3] in memory order, the
//           layout's k order), 8 mma.m16n8k16 (+ 4 all-ones mmas for affine formats: the
//           group's sum of x, shared by both tiles).
//   group = f32 partial sums per scale group, then `acc += a · g (+ b · sum(x))` in f32 with
//           the skinny kernel's seg_group_ab numbers (RowScales: one segment ahead).
//   end   = split == 1: global scale (nvfp4), bias and one rounding to y. split > 1: f32
//           partial sums to the workspace [split][m][n]; reduce_kernel adds them in split
//           order (no atomics), then the same epilogue.
// Numbers: those of the skinny kernel (exact code x x products on the tensor core, f32 sums
// per scale group, scales applied to f32 partial sums), with the k-ranges of a split added in
// a fixed order: deterministic, the same accuracy class and tolerances.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "ops/matmul/matmul_cuda_skinny.cuh"

namespace lowbit::medium {

using tc::Code;
using tc::Scale;
using tc::TcWeights;

inline constexpr int kThreads = 128;      ///< 4 warps: 2 along N x 2 along M
inline constexpr int kTilesPerWarp = 2;   ///< 16-row W tiles per warp
inline constexpr int kTilesPerBlock = 4;  ///< 64 rows of W per block
inline constexpr int kNT = 4;             ///< mmas per decoded operand: 32 rows of x per warp
inline constexpr int kRowsX = 64;         ///< rows of x per block
inline constexpr int kStages = 4;         ///< segments in flight (cp.async groups)
inline constexpr int kXPitch = 256 + 32;  ///< bytes per row of x in shared memory
inline constexpr int kXBytes = kRowsX * kXPitch;

/// Shared-memory bytes of one stage for codes of `bits` bits.
constexpr int stage_bytes(int bits) {
  return kXBytes + kTilesPerBlock * 64 * (bits == 4 ? 16 : 32);
}

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

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending));
}

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
  constexpr int kGS = 1 << kStepsLog2;  // steps per scale group
  constexpr float kF = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  constexpr uint32_t kOnes = kBf16 ? 0x3f803f80u : 0x3c003c00u;  // (1.0, 1.0)
  constexpr bool kZero = S == Scale::integer && kAffine;

  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31, r = lane >> 2, q = lane & 3;
  const int wn = warp & 1, wm = warp >> 1;
  const int m0 = static_cast<int>(blockIdx.x) * kRowsX;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTilesPerBlock;
  const int segs = static_cast<int>(p.w.segments);
  const int s_begin = static_cast<int>(blockIdx.z) * segs / p.split;
  const int nseg = static_cast<int>(blockIdx.z + 1) * segs / p.split - s_begin;

  // This thread's cp.async sources: x rows (tid / 16) + 8 i (past M: row M - 1, whose outputs
  // are dropped), 16-byte chunk tid % 16; code chunks tid + 128 i of the block's 4 tiles (tiles
  // past the last: the last one, rows past N are never stored).
  const uint8_t* xsrc = p.x + static_cast<int64_t>(tid & 15) * 16;
  const int xrow0 = tid >> 4;
  auto issue = [&](int i) {
    uint8_t* st = smem + (i % kStages) * kStage;
    const int s = s_begin + i;
#pragma unroll
    for (int v = 0; v < kRowsX / 8; ++v) {
      const int row = xrow0 + 8 * v;
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
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < nseg) issue(i);
    cp_async_commit();
  }

  // Row scales of this lane's four rows: tile 2 wn + tt, half h (rows r, r + 8).
  using RS = skinny::RowScales<S, kStepsLog2, kZero>;
  const int64_t my_tile0 = min(tile0 + 2 * wn, p.tiles - 1);
  const int64_t my_tile1 = min(tile0 + 2 * wn + 1, p.tiles - 1);
  const RS rs[2][2] = {{RS(p.w, my_tile0 * 16 + r), RS(p.w, my_tile0 * 16 + r + 8)},
                       {RS(p.w, my_tile1 * 16 + r), RS(p.w, my_tile1 * 16 + r + 8)}};
  tc::SegScales sn[2][2];
#pragma unroll
  for (int tt = 0; tt < 2; ++tt)
#pragma unroll
    for (int h = 0; h < 2; ++h) sn[tt][h] = rs[tt][h].load(s_begin);

  float acc[2][kNT][4];
#pragma unroll
  for (int tt = 0; tt < 2; ++tt)
#pragma unroll
    for (int t = 0; t < kNT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[tt][t][i] = 0.0f;

  for (int i = 0; i < nseg; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage i landed for all; stage i - 1 is free for segment i + kStages - 1
    if (i + kStages - 1 < nseg) issue(i + kStages - 1);
    cp_async_commit();

    const uint8_t* st = smem + (i % kStages) * kStage;
    uint32_t w[2][2][4 * kVec];  // [tile][half] this lane's code words
#pragma unroll
    for (int tt = 0; tt < 2; ++tt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const uint4 u = *reinterpret_cast<const uint4*>(
              st + kXBytes + (2 * wn + tt) * kTileBytes + (h * 32 + lane) * kLaneBytes + 16 * v);
          w[tt][h][4 * v] = u.x, w[tt][h][4 * v + 1] = u.y;
          w[tt][h][4 * v + 2] = u.z, w[tt][h][4 * v + 3] = u.w;
        }
    tc::SegScales cs[2][2];
    const int s_next = s_begin + min(i + 1, nseg - 1);  // past the end: a re-read
#pragma unroll
    for (int tt = 0; tt < 2; ++tt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        cs[tt][h] = sn[tt][h];
        sn[tt][h] = rs[tt][h].load(s_next);
      }
    const uint8_t* xs = st + (32 * wm + r) * kXPitch + 8 * q;

    float g[2][kNT][4], g1[kNT][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if ((j & (kGS - 1)) == 0) {
#pragma unroll
        for (int t = 0; t < kNT; ++t)
#pragma unroll
          for (int e = 0; e < 4; ++e) g[0][t][e] = g[1][t][e] = g1[t][e] = 0.0f;
      }
      uint2 xv[kNT];
#pragma unroll
      for (int t = 0; t < kNT; ++t)
        xv[t] = *reinterpret_cast<const uint2*>(xs + 8 * t * kXPitch + 32 * j);
#pragma unroll
      for (int tt = 0; tt < 2; ++tt) {
        const uint32_t c0 = w[tt][0][tc::step_word(kBits, j)];
        const uint32_t c1 = w[tt][1][tc::step_word(kBits, j)];
        const int p0 = tc::step_pair(kBits, j, 0), p1 = tc::step_pair(kBits, j, 1);
        const uint32_t a0 = tc::decode_pair<C, kBf16>(c0, p0);
        const uint32_t a1 = tc::decode_pair<C, kBf16>(c1, p0);
        const uint32_t a2 = tc::decode_pair<C, kBf16>(c0, p1);
        const uint32_t a3 = tc::decode_pair<C, kBf16>(c1, p1);
#pragma unroll
        for (int t = 0; t < kNT; ++t)
          skinny::mma16816<kBf16>(g[tt][t], a0, a1, a2, a3, xv[t].x, xv[t].y);
      }
      if constexpr (kAffine) {
#pragma unroll
        for (int t = 0; t < kNT; ++t)
          skinny::mma16816<kBf16>(g1[t], kOnes, kOnes, kOnes, kOnes, xv[t].x, xv[t].y);
      }
      if ((j & (kGS - 1)) == kGS - 1) {
        const int f = j >> kStepsLog2;
#pragma unroll
        for (int tt = 0; tt < 2; ++tt) {
          float a0s, b0s, a1s, b1s;
          tc::seg_group_ab<S>(cs[tt][0], f, kAffine, a0s, b0s);
          tc::seg_group_ab<S>(cs[tt][1], f, kAffine, a1s, b1s);
#pragma unroll
          for (int t = 0; t < kNT; ++t) {
            acc[tt][t][0] += a0s * (g[tt][t][0] * kF);
            acc[tt][t][1] += a0s * (g[tt][t][1] * kF);
            acc[tt][t][2] += a1s * (g[tt][t][2] * kF);
            acc[tt][t][3] += a1s * (g[tt][t][3] * kF);
            if constexpr (kAffine) {
              acc[tt][t][0] += b0s * g1[t][0];
              acc[tt][t][1] += b0s * g1[t][1];
              acc[tt][t][2] += b1s * g1[t][2];
              acc[tt][t][3] += b1s * g1[t][3];
            }
          }
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the block exits

  const float global = S == Scale::e4m3 && !p.partial ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int tt = 0; tt < 2; ++tt)
#pragma unroll
    for (int t = 0; t < kNT; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = (tile0 + 2 * wn + tt) * 16 + r + (e < 2 ? 0 : 8);
        const int c = m0 + 32 * wm + 8 * t + 2 * q + (e & 1);
        if (c >= p.m || row >= p.n) continue;
        store_result(p, global, c, row, acc[tt][t][e]);
      }
}

/// split > 1: y[c][row] = (sum over the splits in order of partial[z][c][row]) · global + bias
/// (matmul_cuda_medium.cu).
void launch_reduce(const Args& a, cudaStream_t stream);

template <Code C, Scale S, int SL, bool kBf16, bool kAffine>
void launch(const Args& a, cudaStream_t stream) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  const auto kernel = &medium_kernel<C, S, SL, kBf16, kAffine>;
  const int smem = kStages * stage_bytes(kBits);
  static const bool attr = [&] {
    mm_cuda::check_cuda(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "matmul: shared memory of medium_kernel");
    return true;
  }();
  (void)attr;
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
    const int smem = kStages * stage_bytes(kBits);
    mm_cuda::check_cuda(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
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
