// The kernel of matmul_cuda_skinny_tc (weight-only y = x · dequant(W)^T for M <= 32 rows of
// bf16 / f16 x) as a template, instantiated per (code, scale, group, x dtype, M tile, affine)
// by matmul_cuda_skinny_{int4,int8,float}.cu; the plan code is in matmul_cuda_skinny.cu.
//
// Shape of the work (W: [N, K] in the "cuda_tc16x128" layout, x: [M, K], y: [M, N]):
//   block = one 16-row tile of W (grid.x) and 8 NT rows of x (grid.y); its `split` warps
//           (1..16, blockDim.x = 32 split) take the tile's 128-k segments in turn (warp w:
//           segments w, w + split, ...), so the block streams one contiguous stretch of W;
//           the host picks split so that tiles x split fills the GPU's warp slots once.
//   warp  = per segment: 2 x 16 bytes of codes per lane (4-bit; 2 x 32 for 8-bit), 16-byte
//           loads that skip L1, issued kDepth segments ahead; the segment's scales one segment
//           ahead; 8 mma.m16n8k16 steps of 16 k, each with the 16 x 16 weight operand decoded
//           in registers and x^T [16 k, 8 rows of x] (8 bytes per lane and step, from L1) as
//           the B operand, NT = 1 or 2 mmas per step for 8 or 16 rows of x.
//   end   = the warps' f32 sums added in warp order through shared memory (deterministic, no
//           atomics), then bias and one rounding to y by warp 0.
// Why it is lean (the previous version issued 368 warp instructions per 2048 weights and was
// issue-bound at 22% occupancy, BENCHMARKS.md): 80-128 registers (kRegs: 16-25 warps per
// SM), the zero-point mma only in affine instantiations, x read without
// predicates (a row past M re-reads row M - 1: B's columns are independent, those outputs are
// never stored), 32-bit segment offsets, group scales applied to the f32 partial sums, one
// kernel per M tile.
// Numbers: the operand is the exact code (u - 8, the byte, the fp8 / e2m1 value); the mma
// multiplies it by x exactly and sums a scale group's 16..128 products in f32; the group's
// scale (and offset times the group's sum of x, for affine formats) is applied to that f32
// partial sum; the warps' sums are added in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

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
};

/// Launches one instantiation for `tiles` 16-row tiles on a device with `sms` multiprocessors.
using Launcher = void (*)(const Args&, int64_t tiles, int sms, cudaStream_t);

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

/// Registers per thread: about as few as the instantiation needs without spilling in its loop
/// (ptxas -v), so that 16-25 warps fit on a multiprocessor (8-bit codes hold twice the bytes).
template <int kBits, int NT, bool kAffine>
inline constexpr int kRegs = kBits == 4 ? (NT == 1 ? (kAffine ? 88 : 80) : (kAffine ? 128 : 104))
                                        : 128;

template <Code C, Scale S, int kStepsLog2, bool kBf16, int NT, bool kAffine>
__global__ void __launch_bounds__(kMaxSplit * 32)
    __maxnreg__((kRegs < (C == Code::u4 || C == Code::fp4) ? 4 : 8, NT, kAffine >))
        skinny_kernel(Args p) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kVec = kBits == 4 ? 1 : 2;  // 16-byte code vectors per half
  constexpr int kDepth = 2;                 // segments of codes in flight beyond the current
  constexpr int kGS = 1 << kStepsLog2;      // steps per scale group
  constexpr float kF = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  constexpr uint32_t kOnes = kBf16 ? 0x3f803f80u : 0x3c003c00u;  // (1.0, 1.0)
  constexpr int kLaneBytes = 16 * kVec;

  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int split = static_cast<int>(blockDim.x >> 5);
  const int r = lane >> 2, q = lane & 3;
  const int64_t tile = blockIdx.x;
  const int m0 = static_cast<int>(blockIdx.y) * 8 * NT;  // this block's rows of x
  const int segs = static_cast<int>(p.w.segments);
  const int64_t row0 = tile * 16 + r, row1 = row0 + 8;

  // This lane's codes of segment s, half h: codes_t + s * 64 kLaneBytes + h * 32 kLaneBytes.
  const uint8_t* codes_t = pinned(p.w.codes + (tile * segs * 64 + lane) * kLaneBytes);
  auto load_codes = [&](int s, uint4(&c)[2][kVec]) {
    const uint8_t* at = codes_t + min(s, segs - 1) * (64 * kLaneBytes);
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int v = 0; v < kVec; ++v) c[h][v] = load_stream16(at + h * 32 * kLaneBytes + 16 * v);
  };
  // x^T operand columns c = m0 + 8 t + r; past M, row M - 1 stands in (its outputs are dropped).
  const uint8_t* xrow[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int c = min(m0 + 8 * t + r, p.m - 1);
    xrow[t] = pinned(p.x + (static_cast<int64_t>(c) * p.x_stride + 4 * q) * 2);
  }

  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

  uint4 ring[kDepth][2][kVec];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) load_codes(warp + d * split, ring[d]);
  constexpr bool kZero = S == Scale::integer && kAffine;
  const RowScales<S, kStepsLog2, kZero> rs0(p.w, row0), rs1(p.w, row1);
  // (The host keeps split <= segments: every warp has a first segment.)
  tc::SegScales sn0 = rs0.load(warp), sn1 = rs1.load(warp);
  for (int base = warp; base < segs; base += kDepth * split) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int s = base + d * split;
      if (s >= segs) break;
      // This segment's x, then the loads for later segments, then the arithmetic.
      const int xk = s * 256;  // byte offset of the segment in a row of x
      uint2 xv[NT][8];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[t][j] = load_x8(xrow[t] + xk + 32 * j);
      const tc::SegScales cs0 = sn0, cs1 = sn1;
      uint32_t w0[4 * kVec], w1[4 * kVec];
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        w0[4 * v] = ring[d][0][v].x, w0[4 * v + 1] = ring[d][0][v].y;
        w0[4 * v + 2] = ring[d][0][v].z, w0[4 * v + 3] = ring[d][0][v].w;
        w1[4 * v] = ring[d][1][v].x, w1[4 * v + 1] = ring[d][1][v].y;
        w1[4 * v + 2] = ring[d][1][v].z, w1[4 * v + 3] = ring[d][1][v].w;
      }
      load_codes(s + kDepth * split, ring[d]);
      sn0 = rs0.load(min(s + split, segs - 1));  // past the end: a re-read, not a branch
      sn1 = rs1.load(min(s + split, segs - 1));

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
  }

  // The warps' sums, added in warp order: [split - 1][NT * 4][32] f32 in dynamic shared memory.
  extern __shared__ float red[];
  if (warp > 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[((warp - 1) * NT * 4 + 4 * t + i) * 32 + lane] = acc[t][i];
  }
  __syncthreads();
  if (warp != 0) return;
  for (int w = 0; w + 1 < split; ++w)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][i] += red[(w * NT * 4 + 4 * t + i) * 32 + lane];

  const float global = S == Scale::e4m3 ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i < 2 ? row0 : row1;
      const int c = m0 + 8 * t + 2 * q + (i & 1);
      if (c >= p.m || row >= p.n) continue;
      float v = acc[t][i];
      if (S == Scale::e4m3) v *= global;
      if (p.bias) v += quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row));
      quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row), v);
    }
}

/// Warps of `kernel` that fit on one multiprocessor (its registers decide; cached by the caller):
/// asked for blocks of one warp, which no other limit (32 blocks per SM) binds first.
inline int warps_per_sm(const void* kernel) {
  int blocks = 0;
  mm_cuda::check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, 32, 0),
                      "matmul: occupancy of skinny_kernel");
  return std::max(1, blocks);
}

/// split = warps per tile: as many as fill the GPU's warp slots in one wave (at least 1, at
/// most kMaxSplit and the tile's segments).
template <Code C, Scale S, int SL, bool kBf16, int NT, bool kAffine>
void launch(const Args& a, int64_t tiles, int sms, cudaStream_t stream) {
  const auto kernel = &skinny_kernel<C, S, SL, kBf16, NT, kAffine>;
  static const int per_sm = warps_per_sm(reinterpret_cast<const void*>(kernel));
  const int64_t mblocks = (a.m + 8 * NT - 1) / (8 * NT);
  const int64_t slots = static_cast<int64_t>(sms) * per_sm;
  const int split = static_cast<int>(std::clamp<int64_t>(
      slots / (tiles * mblocks), 1, std::min<int64_t>(kMaxSplit, a.w.segments)));
  const size_t smem = static_cast<size_t>(split - 1) * NT * 4 * 32 * 4;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(mblocks));
  kernel<<<grid, split * 32, smem, stream>>>(a);
  mm_cuda::check_launch("skinny_kernel");
}

template <Code C, Scale S, int SL, bool kAffine>
Launcher pick(bool bf16, int nt) {
  if (bf16)
    return nt == 1 ? &launch<C, S, SL, true, 1, kAffine> : &launch<C, S, SL, true, 2, kAffine>;
  return nt == 1 ? &launch<C, S, SL, false, 1, kAffine> : &launch<C, S, SL, false, 2, kAffine>;
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
