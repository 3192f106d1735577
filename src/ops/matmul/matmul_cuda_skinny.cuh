// The kernel of matmul_cuda_skinny_tc (weight-only y = x · dequant(W)^T for M <= 32 rows of
// bf16 / f16 x) as a template, instantiated per (code, scale, group, x dtype, M tile, affine)
// by matmul_cuda_skinny_{int4,int8,float}.cu; the plan code is in matmul_cuda_skinny.cu.
//
// Shape of the work (W: [N, K] in the "cuda_tc16x128" layout, x: [M, K], y: [M, N]):
//   block = TM 16-row tiles of W (grid.x) and 8 NT rows of x (grid.y); its `split` warps
//           (1..16, blockDim.x = 32 split) take the tiles' 128-k segments in turn (warp w:
//           segments w, w + split, ...), so the block streams TM contiguous stretches of W;
//           the host picks split so that blocks x split fills the GPU's warp slots once.
//   warp  = per segment and tile: 2 x 16 bytes of codes per lane (4-bit; 2 x 32 for 8-bit),
//           16-byte loads that skip L1, issued kDepth segments ahead; the segment's scales one
//           segment ahead; 8 mma.m16n8k16 steps of 16 k, each with the 16 x 16 weight operand
//           decoded in registers and x^T [16 k, 8 rows of x] (8 bytes per lane and step) as the
//           B operand, NT = 1 or 2 mmas per step for 8 or 16 rows of x. x comes from L1 (one
//           tile per block), or, with kStageX, from the warp's two shared-memory stages that
//           cp.async fills one segment ahead.
//   end   = the warps' f32 sums added in warp order through shared memory (deterministic, no
//           atomics), then bias and one rounding to y by warp 0.
// TM = 2 with kStageX serves 16 rows of x with 4-bit codes (pick_nt): 16 rows of x (256 KB at
// K = 8192) do not stay in L1, so with one tile per block every block re-read all of x from L2
// (4x the weight's bytes at M = 16) and waited on it at the start of each segment.
// Why it is lean (the previous version issued 368 warp instructions per 2048 weights and was
// issue-bound at 22% occupancy, BENCHMARKS.md): 80-168 registers (kRegs: 12-25 warps per
// SM), the zero-point mma only in affine instantiations, x read without
// predicates (a row past M re-reads row M - 1, or is not staged: B's columns are independent,
// those outputs are never stored), 32-bit segment offsets, group scales applied to the f32
// partial sums, one kernel per M tile.
// Numbers: the operand is the exact code (u - 8, the byte, the fp8 / e2m1 value); the mma
// multiplies it by x exactly and sums a scale group's 16..128 products in f32; the group's
// scale (and offset times the group's sum of x, for affine formats) is applied to that f32
// partial sum; the warps' sums are added in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/cuda_async.cuh"
#include "ops/matmul/matmul_cuda_common.cuh"

namespace lowbit::skinny {

using tc::Code;
using tc::Scale;
using tc::TcWeights;

inline constexpr int kMaxSplit = 16;  ///< warps per block (k-split of a tile)
inline constexpr int kMaxM = 32;      ///< rows of x select() sends here (see matmul_cuda_skinny.cu)

struct Args {
  TcWeights w;
  const uint8_t* x = nullptr;
  int64_t x_stride = 0;  ///< elements
  void* y = nullptr;
  int64_t y_stride = 0;
  Dtype y_dtype = Dtype::bf16;
  const void* bias = nullptr;
  int m = 0;
  int64_t n = 0;
  int64_t tiles = 0;  ///< 16-row tiles of W (ceil(n / 16))
  /// W8A8 (matmul_cuda_skinny_w8a8): x holds the activations' exact codes and y's rows are
  /// scaled by x's f32 scales (one per row with x_scale_row, else one), after W's scales and
  /// before the bias. Null: weight-only.
  const float* x_scale = nullptr;
  bool x_scale_row = false;
};

/// Launches one instantiation for `tiles` 16-row tiles on a device with `sms` multiprocessors.
using Launcher = void (*)(const Args&, int64_t tiles, int sms, cudaStream_t);

/// The instantiation for a format of the tc layout, x dtype (bf16 or f16) and M tile, or null
/// with the reason (matmul_cuda_skinny.cu; by code width, the three below).
Launcher launcher_for(const tc::Format& f, bool bf16, int nt, std::string* why);

/// The plans' part of a launch (matmul_cuda_skinny.cu): Args with W's prepared layout, y, bias,
/// M and N from the plan (the caller sets x, x_stride and the W8A8 x scale), then the
/// instantiation for the plan's format, x dtype `bf16` and M.
Args plan_args(const MatmulDesc& d, const MatmulArgs& a, const mm_cuda::TcPlan& tp);
void launch_plan(const Args& sa, const MatmulDesc& d, const mm_cuda::TcPlan& tp, bool bf16,
                 cudaStream_t stream);

/// The instantiation for a format, x dtype and M tile (nt = 1: 8 rows, 2: 16 rows per block),
/// or null (with the reason in `why`) when none is built. One per translation unit.
Launcher launcher_int4(const tc::Format& f, bool bf16, int nt, std::string* why);
Launcher launcher_int8(const tc::Format& f, bool bf16, int nt, std::string* why);
Launcher launcher_float(const tc::Format& f, bool bf16, int nt, std::string* why);

#if defined(__CUDACC__)

template <bool kBf16>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

/// A 16-byte load of data read once (not kept in L1); volatile so that it is issued where
/// written (ahead of the arithmetic that hides its latency). Unpredicated, with fresh output
/// registers: past the last segment the kernel re-reads the last one instead of predicating,
/// which would make ptxas copy the old registers into the new ones first.
__device__ __forceinline__ uint4 load_stream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

/// 8 bytes of x (read by every block of the row: kept in L1); volatile like the code loads, so
/// that a segment's x is requested at its start, one L1 / L2 round trip per segment.
__device__ __forceinline__ uint2 load_x8(const uint8_t* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

/// `p`, opaque to the compiler: a base pointer computed once stays in two registers instead of
/// being recomputed from blockIdx in every segment (ptxas rematerializes such chains).
template <class T>
__device__ __forceinline__ T* pinned(T* p) {
  asm volatile("mov.b64 %0, %0;" : "+l"(p));
  return p;
}

/// One row's scale tables as base pointers, so that a segment's raw words are one add away (the
/// same words as tc::load_seg_scales, which the host emulation reads, without its 64-bit index
/// arithmetic per segment).
template <Scale S, int kStepsLog2, bool kZero>
struct RowScales {
  const uint8_t* a = nullptr;  ///< the row of the scale table
  const uint8_t* b = nullptr;  ///< the row of the zero-point (integer) or aux (q4_K, q6_K) table
  int gl = 0;                  ///< log2 of the group (integer, f32)

  RowScales() = default;
  __device__ __forceinline__ RowScales(const TcWeights& w, int64_t row) {
    if constexpr (S == Scale::integer || S == Scale::f32) {
      a = pinned(w.scale + row * w.groups * 4);
      if constexpr (kZero) b = pinned(reinterpret_cast<const uint8_t*>(w.zero) + row * w.groups);
      gl = w.group_log2;
    } else if constexpr (S == Scale::e4m3 || S == Scale::e8m0) {
      a = pinned(w.scale + row * w.groups);
    } else if constexpr (S == Scale::f16d) {
      a = pinned(w.scale + row * w.groups * 2);
    } else if constexpr (S == Scale::q4k) {
      a = pinned(w.scale + row * (w.k >> 8) * 4);
      b = pinned(w.aux + row * (w.k >> 5) * 2);
    } else {  // q6k
      a = pinned(w.scale + row * (w.k >> 8) * 2);
      b = pinned(w.aux + row * (w.k >> 4));
    }
  }

  __device__ __forceinline__ tc::SegScales load(int s) const {
    tc::SegScales r{};
    constexpr int kGroups = 8 >> kStepsLog2;  // groups in a segment (1 when groups >= 128)
    if constexpr (S == Scale::integer || S == Scale::f32) {
      const int g = (s * 128) >> gl;
      tc::load_words<4 * kGroups>(a + 4 * g, r.w);
      if constexpr (kZero) tc::load_words<kGroups>(b + g, r.aux);
    } else if constexpr (S == Scale::e4m3) {
      tc::load_words<8>(a + s * 8, r.w);
    } else if constexpr (S == Scale::e8m0) {
      tc::load_words<4>(a + s * 4, r.w);
    } else if constexpr (S == Scale::f16d) {
      tc::load_words<8>(a + s * 8, r.w);
    } else if constexpr (S == Scale::q4k) {
      tc::load_words<4>(a + (s >> 1) * 4, r.w);
      tc::load_words<8>(b + s * 8, r.aux);
    } else {  // q6k
      tc::load_words<2>(a + (s >> 1) * 2, r.w);
      tc::load_words<8>(b + s * 8, r.aux);
    }
    return r;
  }
};

/// One 128-k segment of one 16-row tile: 8 mma steps of 16 k, each with the 16 x 16 weight
/// operand decoded in registers from the lane's code words (w0: rows r, w1: rows r + 8) and x^T
/// (xv: 8 bytes per lane and step, NT blocks of 8 rows of x) as the B operand; a scale group's
/// f32 sums are scaled (and offset, for affine formats) into acc.
template <Code C, Scale S, int kStepsLog2, bool kBf16, int NT, bool kAffine, int kWords>
__device__ __forceinline__ void segment_mma(float (&acc)[NT][4], const uint32_t (&w0)[kWords],
                                            const uint32_t (&w1)[kWords], const uint2 (&xv)[NT][8],
                                            const tc::SegScales& cs0, const tc::SegScales& cs1) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kGS = 1 << kStepsLog2;  // steps per scale group
  constexpr float kF = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  constexpr uint32_t kOnes = kBf16 ? 0x3f803f80u : 0x3c003c00u;  // (1.0, 1.0)
  float g[NT][4], g1[NT][4];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if ((j & (kGS - 1)) == 0) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) g[t][i] = g1[t][i] = 0.0f;
    }
    const uint32_t c0 = w0[tc::step_word(kBits, j)], c1 = w1[tc::step_word(kBits, j)];
    const int p0 = tc::step_pair(kBits, j, 0), p1 = tc::step_pair(kBits, j, 1);
    const uint32_t a0 = tc::decode_pair<C, kBf16>(c0, p0);
    const uint32_t a1 = tc::decode_pair<C, kBf16>(c1, p0);
    const uint32_t a2 = tc::decode_pair<C, kBf16>(c0, p1);
    const uint32_t a3 = tc::decode_pair<C, kBf16>(c1, p1);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      mma16816<kBf16>(g[t], a0, a1, a2, a3, xv[t][j].x, xv[t][j].y);
      if constexpr (kAffine)
        mma16816<kBf16>(g1[t], kOnes, kOnes, kOnes, kOnes, xv[t][j].x, xv[t][j].y);
    }
    if ((j & (kGS - 1)) == kGS - 1) {
      const int f = j >> kStepsLog2;
      float a0s, b0s, a1s, b1s;
      tc::seg_group_ab<S>(cs0, f, kAffine, a0s, b0s);
      tc::seg_group_ab<S>(cs1, f, kAffine, a1s, b1s);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
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

/// The end of a tile: lane's sums (rows 16 tile + r (+ 8), columns m0 + 8 t + 2 q (+ 1)) times
/// the nvfp4 global scale and the W8A8 x scale, plus the bias, rounded once into y.
template <Scale S, int NT>
__device__ __forceinline__ void store_tile(const Args& p, const float (&acc)[NT][4], int64_t tile,
                                           int m0, int lane) {
  const int r = lane >> 2, q = lane & 3;
  const float global = S == Scale::e4m3 ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = tile * 16 + r + (i < 2 ? 0 : 8);
      const int c = m0 + 8 * t + 2 * q + (i & 1);
      if (c >= p.m || row >= p.n) continue;
      float v = acc[t][i];
      if (S == Scale::e4m3) v *= global;
      if (p.x_scale) v *= p.x_scale[p.x_scale_row ? c : 0];
      if (p.bias) v += quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row));
      quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row), v);
    }
}

/// Registers per thread: about as few as the instantiation needs without spilling in its loop
/// (ptxas -v), so that 16-25 warps fit on a multiprocessor (8-bit codes hold twice the bytes).
/// Two tiles per block (4-bit codes, 16 rows of x) hold twice the accumulators and scales.
template <int kBits, int NT, bool kAffine, int TM>
inline constexpr int kRegs = TM == 1
                                 ? (kBits == 4
                                        ? (NT == 1 ? (kAffine ? 88 : 80) : (kAffine ? 128 : 104))
                                        : 128)
                                 : (kAffine ? 168 : 144);

/// Segments of codes a warp keeps in flight beyond the current one: two for one tile, one per
/// tile for two (the same bytes in flight, half the registers of two deep).
template <int TM>
inline constexpr int kDepthFor = TM == 1 ? 2 : 1;

/// Threads per block at most: 16 warps, or 12 where two tiles take up to 168 registers.
template <int TM>
inline constexpr int kMaxThreads = TM == 1 ? kMaxSplit * 32 : 12 * 32;

/// x staged in shared memory (kStageX): per warp two stages of its segment's 8 NT rows x 256
/// bytes, rows 288 bytes apart so that a warp's 8-byte operand reads take two wavefronts.
inline constexpr int kXPitch = 288;
template <int NT>
inline constexpr int kXStageBytes = 8 * NT* kXPitch;

template <Code C, Scale S, int kStepsLog2, bool kBf16, int NT, bool kAffine, int TM, bool kStageX>
__global__ void __launch_bounds__(kMaxThreads<TM>)
    __maxnreg__((kRegs < (C == Code::u4 || C == Code::fp4) ? 4 : 8, NT, kAffine, TM >))
        skinny_kernel(Args p) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kVec = kBits == 4 ? 1 : 2;  // 16-byte code vectors per half
  constexpr int kDepth = kDepthFor<TM>;     // segments of codes in flight beyond the current
  constexpr int kLaneBytes = 16 * kVec;

  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int split = static_cast<int>(blockDim.x >> 5);
  const int r = lane >> 2, q = lane & 3;
  const int m0 = static_cast<int>(blockIdx.y) * 8 * NT;  // this block's rows of x
  const int segs = static_cast<int>(p.w.segments);
  // The block's TM tiles of W share every x operand it loads (x is re-read from L2 once per
  // block: TM = 2 halves that traffic, which bounds 16 rows of x). A tile past the last is read
  // as the last one (its outputs are dropped).
  int64_t tile[TM], row0[TM];
  const uint8_t* codes_t[TM];
#pragma unroll
  for (int tm = 0; tm < TM; ++tm) {
    tile[tm] = static_cast<int64_t>(blockIdx.x) * TM + tm;
    const int64_t read = min(tile[tm], p.tiles - 1);
    row0[tm] = read * 16 + r;
    // This lane's codes of segment s, half h: codes_t + s * 64 kLaneBytes + h * 32 kLaneBytes.
    codes_t[tm] = pinned(p.w.codes + (read * segs * 64 + lane) * kLaneBytes);
  }
  auto load_codes = [&](int s, uint4(&c)[TM][2][kVec]) {
#pragma unroll
    for (int tm = 0; tm < TM; ++tm) {
      const uint8_t* at = codes_t[tm] + min(s, segs - 1) * (64 * kLaneBytes);
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int v = 0; v < kVec; ++v)
          c[tm][h][v] = load_stream16(at + h * 32 * kLaneBytes + 16 * v);
    }
  };
  // x^T operand columns c = m0 + 8 t + r; past M, row M - 1 stands in (its outputs are dropped).
  const uint8_t* xrow[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int c = min(m0 + 8 * t + r, p.m - 1);
    xrow[t] = pinned(p.x + (static_cast<int64_t>(c) * p.x_stride + 4 * q) * 2);
  }
  // kStageX: the warp copies its next segment's x (8 NT rows x 256 bytes, 16 bytes per lane and
  // copy) into one of its two stages while it computes on the other, so that the x operand of a
  // segment is never an L2 round trip at the point of use (16 rows of x miss L1: BENCHMARKS.md).
  extern __shared__ __align__(16) uint8_t smem[];
  constexpr int kSums = TM * NT * 4;
  constexpr int kXStage = kXStageBytes<NT>;
  uint8_t* const xs = smem + (split - 1) * kSums * 32 * 4 + warp * 2 * kXStage;
  const uint8_t* xcopy = nullptr;  // this lane's 16 bytes of its first row, segment 0
  if constexpr (kStageX) {
    const int c = min(m0 + (lane >> 4), p.m - 1);
    xcopy = pinned(p.x + static_cast<int64_t>(c) * p.x_stride * 2 + (lane & 15) * 16);
  }
  // Rows past M are not copied: their stage bytes feed only the mma columns whose outputs are
  // dropped. The row step is made opaque per call so that the copies' addresses are computed
  // as they are issued, not kept in registers across the loop.
  const int rows_left = p.m - m0 - (lane >> 4);
  auto stage_x = [&](int s, int st) {
    int64_t step = static_cast<int64_t>(p.x_stride) * 4;  // two rows, in bytes
    asm volatile("mov.b64 %0, %0;" : "+l"(step));
    const uint8_t* src = xcopy + min(s, segs - 1) * 256;
    uint8_t* dst = xs + st * kXStage + (lane >> 4) * kXPitch + (lane & 15) * 16;
#pragma unroll
    for (int i = 0; i < 4 * NT; ++i) {  // row 2 i + lane / 16 of the block's 8 NT
      if (2 * i < rows_left) async::cp_async16(dst + 2 * i * kXPitch, src);
      src += step;
    }
    async::cp_async_commit();
  };
  int it = 0;  // segments this warp has computed (kStageX: the stage is it & 1)
  if constexpr (kStageX) stage_x(warp, 0);

  float acc[TM][NT][4];
#pragma unroll
  for (int tm = 0; tm < TM; ++tm)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[tm][t][i] = 0.0f;

  uint4 ring[kDepth][TM][2][kVec];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) load_codes(warp + d * split, ring[d]);
  constexpr bool kZero = S == Scale::integer && kAffine;
  using Rows = RowScales<S, kStepsLog2, kZero>;
  Rows rs0[TM], rs1[TM];
  tc::SegScales sn0[TM], sn1[TM];
#pragma unroll
  for (int tm = 0; tm < TM; ++tm) {
    rs0[tm] = Rows(p.w, row0[tm]);
    rs1[tm] = Rows(p.w, row0[tm] + 8);
    // (The host keeps split <= segments: every warp has a first segment.)
    sn0[tm] = rs0[tm].load(warp);
    sn1[tm] = rs1[tm].load(warp);
  }
  for (int base = warp; base < segs; base += kDepth * split) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int s = base + d * split;
      if (s >= segs) break;
      // This segment's x, then the loads for later segments, then the arithmetic.
      uint2 xv[NT][8];
      if constexpr (kStageX) {
        __syncwarp();  // every lane is done with the stage the next copy overwrites
        stage_x(s + split, (it + 1) & 1);
        async::cp_async_wait<1>();  // this segment's copy (the older group) has landed
        __syncwarp();               // ... for every lane's part of it
        const uint8_t* cur = xs + (it & 1) * kXStage + r * kXPitch + 8 * q;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int j = 0; j < 8; ++j)
            xv[t][j] = *reinterpret_cast<const uint2*>(cur + 8 * t * kXPitch + 32 * j);
      } else {
        const int xk = s * 256;  // byte offset of the segment in a row of x
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int j = 0; j < 8; ++j) xv[t][j] = load_x8(xrow[t] + xk + 32 * j);
      }
      ++it;
      tc::SegScales cs0[TM], cs1[TM];
      uint32_t w0[TM][4 * kVec], w1[TM][4 * kVec];
#pragma unroll
      for (int tm = 0; tm < TM; ++tm) {
        cs0[tm] = sn0[tm], cs1[tm] = sn1[tm];
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const uint4 h0 = ring[d][tm][0][v], h1 = ring[d][tm][1][v];
          w0[tm][4 * v] = h0.x, w0[tm][4 * v + 1] = h0.y;
          w0[tm][4 * v + 2] = h0.z, w0[tm][4 * v + 3] = h0.w;
          w1[tm][4 * v] = h1.x, w1[tm][4 * v + 1] = h1.y;
          w1[tm][4 * v + 2] = h1.z, w1[tm][4 * v + 3] = h1.w;
        }
      }
      load_codes(s + kDepth * split, ring[d]);
#pragma unroll
      for (int tm = 0; tm < TM; ++tm) {
        sn0[tm] = rs0[tm].load(min(s + split, segs - 1));  // past the end: a re-read
        sn1[tm] = rs1[tm].load(min(s + split, segs - 1));
      }

#pragma unroll
      for (int tm = 0; tm < TM; ++tm)
        segment_mma<C, S, kStepsLog2, kBf16, NT, kAffine>(acc[tm], w0[tm], w1[tm], xv, cs0[tm],
                                                          cs1[tm]);
    }
  }

  if constexpr (kStageX) async::cp_async_wait<0>();  // no copy may land after the block exits
  // The warps' sums, added in warp order: [split - 1][TM * NT * 4][32] f32 at the start of the
  // dynamic shared memory.
  float* const red = reinterpret_cast<float*>(smem);
  if (warp > 0) {
#pragma unroll
    for (int tm = 0; tm < TM; ++tm)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          red[((warp - 1) * kSums + (tm * NT + t) * 4 + i) * 32 + lane] = acc[tm][t][i];
  }
  __syncthreads();
  if (warp != 0) return;
  for (int w = 0; w + 1 < split; ++w)
#pragma unroll
    for (int tm = 0; tm < TM; ++tm)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          acc[tm][t][i] += red[(w * kSums + (tm * NT + t) * 4 + i) * 32 + lane];

#pragma unroll
  for (int tm = 0; tm < TM; ++tm) store_tile<S, NT>(p, acc[tm], tile[tm], m0, lane);
}

/// Warps of `kernel` that fit on one multiprocessor (its registers decide; cached by the caller):
/// asked for blocks of one warp, which no other limit (32 blocks per SM) binds first.
inline int warps_per_sm(const void* kernel) {
  int blocks = 0;
  mm_cuda::check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, 32, 0),
                      "matmul: occupancy of skinny_kernel");
  return std::max(1, blocks);
}

/// split = warps per block: as many as fill the GPU's warp slots in one wave (at least 1, at
/// most kMaxSplit and the tile's segments).
template <Code C, Scale S, int SL, bool kBf16, int NT, bool kAffine, int TM, bool kStageX>
void launch(const Args& a, int64_t tiles, int sms, cudaStream_t stream) {
  const auto kernel = &skinny_kernel<C, S, SL, kBf16, NT, kAffine, TM, kStageX>;
  // The largest block's shared memory (16 warps' stages and sums) is above the 48 KiB default.
  static mm_cuda::SmemOptIn optin;
  mm_cuda::check_cuda(optin.allow(kernel, 200 * 1024), "matmul: skinny_kernel's shared memory");
  static const int per_sm = warps_per_sm(reinterpret_cast<const void*>(kernel));
  const int64_t mblocks = (a.m + 8 * NT - 1) / (8 * NT);
  const int64_t tblocks = (tiles + TM - 1) / TM;
  const int64_t slots = static_cast<int64_t>(sms) * per_sm;
  int split = static_cast<int>(std::clamp<int64_t>(
      slots / (tblocks * mblocks), 1, std::min<int64_t>(kMaxThreads<TM> / 32, a.w.segments)));
  // Whole blocks share a multiprocessor: with per_sm / split of them per SM the grid must still
  // fit in one wave (19 warps per SM and 600 blocks: 4 warps each would fit only 528).
  while (split > 1 && tblocks * mblocks > static_cast<int64_t>(sms) * (per_sm / split)) --split;
  const size_t smem = static_cast<size_t>(split - 1) * TM * NT * 4 * 32 * 4 +
                      (kStageX ? static_cast<size_t>(split) * 2 * kXStageBytes<NT> : 0);
  const dim3 grid(static_cast<unsigned>(tblocks), static_cast<unsigned>(mblocks));
  Args with_tiles = a;
  with_tiles.tiles = tiles;
  kernel<<<grid, split * 32, smem, stream>>>(with_tiles);
  mm_cuda::check_launch("skinny_kernel");
}

/// The kernel's shape per M tile and code width, as measured on the H100 (BENCHMARKS.md): with
/// 16 rows of x and 4-bit codes a block takes two tiles of W and stages x (x is then read from
/// L2 once per 32 rows of W, and a segment's x is in shared memory before it is used; one tile
/// with x from L1 waited on those loads); 8-bit codes (twice the code registers) and 8 rows of
/// x gained nothing from either and keep one tile, x read in place.
template <Code C, Scale S, int SL, bool kBf16, int NT, bool kAffine>
Launcher pick_nt() {
  constexpr bool kWide = NT == 2 && (C == Code::u4 || C == Code::fp4);
  return &launch < C, S, SL, kBf16, NT, kAffine, kWide ? 2 : 1, kWide > ;
}

template <Code C, Scale S, int SL, bool kAffine>
Launcher pick(bool bf16, int nt) {
  if (bf16)
    return nt == 1 ? pick_nt<C, S, SL, true, 1, kAffine>() : pick_nt<C, S, SL, true, 2, kAffine>();
  return nt == 1 ? pick_nt<C, S, SL, false, 1, kAffine>() : pick_nt<C, S, SL, false, 2, kAffine>();
}

/// Integer formats: groups of 32 (SL 1), 64 (2), 128 and more (3); symmetric or affine.
template <Code C>
Launcher pick_integer(const tc::Format& f, bool bf16, int nt) {
  const int sl = f.steps_log2;
  if (f.zero)
    return sl == 1   ? pick<C, Scale::integer, 1, true>(bf16, nt)
           : sl == 2 ? pick<C, Scale::integer, 2, true>(bf16, nt)
                     : pick<C, Scale::integer, 3, true>(bf16, nt);
  return sl == 1   ? pick<C, Scale::integer, 1, false>(bf16, nt)
         : sl == 2 ? pick<C, Scale::integer, 2, false>(bf16, nt)
                   : pick<C, Scale::integer, 3, false>(bf16, nt);
}

#endif  // __CUDACC__

}  // namespace lowbit::skinny
