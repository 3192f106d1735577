// The kernel of matmul_cuda_wgmma_tc (weight-only y = x · dequant(W)^T for a few hundred rows
// of bf16 / f16 x, Hopper sm_90a) as a template, instantiated per (code,
// scale, group, x dtype, zero points) by matmul_cuda_wgmma_{int4,fp4}.cu; the plan code is in
// matmul_cuda_wgmma.cu.
//
// Why another kernel: the mma.sync kernels (skinny, medium) issue the decode, the scale
// flushes and the mmas from one instruction stream and top out at 120-260 TFLOP/s; past
// M = 128 they lose to dequantize + cuBLASLt, which itself pays a full write and read of a
// dequantized W. Here the tensor cores run asynchronously (wgmma) while the same warps
// decode the next segment's W operands in registers:
//
//   y^T = W · x^T with wgmma.m64n128k16: W is the A operand, from registers (decoded in the
//   kernel from the prepared "cuda_tc16x128" codes, the layout the skinny and medium kernels
//   read: one prepared copy serves all three), x^T the B operand, from shared memory (x rows
//   are K-major: the wgmma's natural B layout, 128-byte swizzled), f32 accumulators.
//
//   block = 2 warpgroups (256 threads): 128 rows of W (warpgroup g: rows 64 g .. 64 g + 63,
//           warp w: the layout's 16-row tile w) x 128 rows of x (grid.x, fastest: the blocks
//           that share a stretch of W run together and find it in L2) x one k-range
//           (grid.z: deterministic split-K as in the medium kernel, partial sums added in a
//           fixed order by medium::reduce_kernel).
//   stage = one 128-k segment of x [128 rows][128 k] in shared memory (two 64-k halves of
//           128-byte rows, 128-byte swizzle), brought by the tensor-memory accelerator (two
//           boxes, one mbarrier per stage), kStages deep. (cp.async needs a proxy fence
//           before the tensor cores read what it wrote, and that fence waits for the
//           thread's outstanding loads of W: 8-11% slower.)
//   W     = each lane loads its 16-byte code chunks (rows r, r + 8 of its warp's tile) from
//           global memory two segments ahead, with the rows' scales. The layout orders a
//           step's k for mma.sync's B registers (lane q holds k 4q .. 4q + 3); wgmma reads
//           B from shared memory in natural k order, so the operands are moved into natural
//           order instead: lane q's k {2q, 2q + 1} live in lane q / 2, {2q + 8, 2q + 9} in
//           lane 2 + q / 2 (the nibble pair 2 (j % 2) + q % 2 of their word j / 2): two
//           shuffles per code word, once per segment.
//   step  = 16 k: 4 A registers per lane decoded to x's dtype, one wgmma per warpgroup.
//   loop  = segment i: wait for its stage; fence, 8 wgmmas (segment i), commit; wait until
//           segment i - 1's wgmmas are done (their A registers and shared-memory stage are
//           free); decode segment i + 1's operands while segment i's run; barrier; thread 0
//           asks for segment i + kStages - 1 in the freed stage.
// Speed (H100, BENCHMARKS.md, docs/matmul.md): 240-340 TFLOP/s; without any decode the same
// loop reaches only 340-490, so the pipeline (one block of 2 warpgroups per SM in lock step, a
// barrier per segment, 2 warps per scheduler) bounds it more than the decode does. At M = 256
// it beats dequantize + cuBLASLt where its grid fits one wave and loses where it does not, and
// at M = 2048 it takes 2.5-2.9x that path's time (select(): kMaxM and the one-wave rule in
// matmul_cuda_wgmma.cu); a warp-specialized version (a producer warpgroup, empty / full
// barriers per stage, larger tiles, a persistent grid) is the next step.
// Numbers: each W operand is the dequantized weight in x's dtype: integer formats (and
// q4_0) dequantize()'s f32 value (A - z) · s rounded once to bf16 / f16, the same bits as
// dequantize to x's dtype; e2m1 formats the code times its block scale, exact in bf16 (and
// for nvfp4 in f16), nvfp4's global scale applied to the f32 sums; then f32 accumulation
// on the tensor cores (the dequantize + cuBLASLt path's numbers, without its W round trip).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_async.cuh"
#include "ops/matmul/matmul_cuda_medium.cuh"

namespace lowbit::wgmma {

using async::mbar_expect_tx;
using async::mbar_init;
using async::mbar_wait;
using medium::Args;
using tc::Code;
using tc::Scale;

inline constexpr int kThreads = 256;             ///< 2 warpgroups, 4 tiles of 16 rows of W each
inline constexpr int kTilesPerBlock = 8;         ///< 128 rows of W per block
inline constexpr int kRowsX = 128;               ///< rows of x per block: the wgmma's N
inline constexpr int kHalfBytes = kRowsX * 128;  ///< one 64-k half of a stage
inline constexpr int kStageBytes = 2 * kHalfBytes;
inline constexpr int kStages = 5;
/// The stages, their barriers, and room to align the stages to 1024 bytes.
inline constexpr int kSmemBytes = kStages * kStageBytes + 8 * kStages + 1024;

/// Blocks of the grid before any split of K: 128 rows of x by 128 rows of W each.
inline int64_t blocks_for(int64_t m, int64_t tiles) {
  return ((m + kRowsX - 1) / kRowsX) * ((tiles + kTilesPerBlock - 1) / kTilesPerBlock);
}

/// k-ranges per block: enough blocks for one wave of `slots`, each range at least 4 segments.
inline int split_for(int64_t m, int64_t tiles, int64_t segments, int64_t slots) {
  const int64_t blocks = blocks_for(m, tiles);
  const int64_t want = (slots + blocks / 2) / std::max<int64_t>(blocks, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::clamp<int64_t>(segments / 4, 1, 16)));
}

/// Whether a weight [n, k] of format `f` takes the ws kernel's row-scale mode: 8-bit codes with
/// one scale per row (integer symmetric or fp8; channel, tensor, or a group as long as K), the
/// codes exact operands and the scale applied to the f32 sums (matmul_cuda_wgmma_ws.cuh).
inline bool row_scaled(const tc::Format& f, int64_t k) {
  return tc::Format::wide(f.code) && f.group >= k && !f.zero &&
         (f.scale == Scale::integer || f.scale == Scale::f32);
}

#if defined(__CUDACC__)

// ---- wgmma --------------------------------------------------------------------------------

/// Shared-memory matrix descriptor of a K-major operand with the 128-byte swizzle: rows of
/// 128 bytes, 8-row groups 1024 bytes apart (the stride byte offset); the leading byte
/// offset is unused for swizzled K-major layouts (1 by convention).
__device__ __forceinline__ uint64_t desc_k128(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}
/// Pins the accumulators here: no read or copy of them moves across (they are written by
/// the tensor cores until the wait).
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/// d += A · B, m64n128k16, A from registers (this lane's fragment), B from shared memory.
template <bool kBf16>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LB_WGMMA_RS(TYPE)                                                                          \
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                        \
               " "                                                                                 \
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, " \
               "{%64, %65, %66, %67}, %68, 1, 1, 1, 0;"                                            \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),           \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),         \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),     \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),     \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),     \
                 "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),     \
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),     \
                 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),     \
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),     \
                 "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),     \
                 "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b))
  if constexpr (kBf16) {
    LB_WGMMA_RS("bf16");
  } else {
    LB_WGMMA_RS("f16");
  }
#undef LB_WGMMA_RS
#else
  (void)d, (void)a, (void)b;
#endif
}

// ---- decode: 4-bit codes to operands in x's dtype -----------------------------------------

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));
  return r;
}

template <bool kBf16>
__device__ __forceinline__ uint32_t pack_rn(float lo, float hi) {
  if constexpr (kBf16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

/// A scale group as the decode uses it: integer formats s and c = 136 + z (f32); e2m1
/// formats the block scale as a 16-bit pair in x's dtype (exact) and as f32.
struct Group {
  float s = 0.0f, c = 136.0f;
  uint32_t s2 = 0;
};

template <Scale S, bool kBf16, bool kZero>
__device__ __forceinline__ Group group_of(const tc::SegScales& r, int f) {
  Group g;
  if constexpr (S == Scale::integer) {
    g.s = numeric_detail::float_of(r.w[f]);
    if constexpr (kZero)
      g.c = 136.0f + static_cast<float>(static_cast<int8_t>(tc::byte_of(r.aux, f)));
  } else if constexpr (S == Scale::f16d) {
    g.s = tc::h2f((r.w[f >> 1] >> (16 * (f & 1))) & 0xffffu);
  } else {
    g.s = S == Scale::e4m3 ? tc::e4m3_2f(tc::byte_of(r.w, f))
                           : e8m0_to_f32(static_cast<uint8_t>(tc::byte_of(r.w, f)));
    g.s2 = pack_rn<kBf16>(g.s, g.s);  // exact where the kernel uses it (see decode)
  }
  return g;
}

/// The operand register (values k, k + 1) of the nibble pair at bits 0-3 / 16-19 of `t`.
template <Code C, Scale S, bool kBf16>
__device__ __forceinline__ uint32_t decode(uint32_t t, const Group& g) {
  if constexpr (C == Code::u4) {
    // 128 + u exactly in f32 (u at mantissa bits 16-19 of 2^7), minus 136 + z: A - z exactly;
    // times s rounded once: dequantize()'s f32 value, then rounded to x's dtype.
    float lo = __uint_as_float(lop3_and_or(t << 16, 0x000f0000u, 0x43000000u));
    float hi = __uint_as_float(lop3_and_or(t, 0x000f0000u, 0x43000000u));
    lo = __fmul_rn(__fsub_rn(lo, g.c), g.s);
    hi = __fmul_rn(__fsub_rn(hi, g.c), g.s);
    return pack_rn<kBf16>(lo, hi);
  } else {
    // e2m1: the layout's 16-bit pattern (tc::pattern4), exact after one power-of-two product.
    if constexpr (kBf16) {
      const uint32_t pat = ((t & 0x00070007u) << 6) | ((t & 0x00080008u) << 12);
      const uint32_t two126 = 0x7e807e80u;
      __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pat),
                                 *reinterpret_cast<const __nv_bfloat162*>(&two126));
      // e2m1 (2 significant bits) times an e4m3 or e8m0 scale (at most 4): exact in bf16,
      // whose exponent range is f32's.
      v = __hmul2(v, *reinterpret_cast<const __nv_bfloat162*>(&g.s2));
      return *reinterpret_cast<const uint32_t*>(&v);
    } else if constexpr (S == Scale::e4m3) {
      const uint32_t pat = ((t & 0x00070007u) << 9) | ((t & 0x00080008u) << 12);
      const uint32_t two14 = 0x74007400u;
      __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&pat),
                          *reinterpret_cast<const __half2*>(&two14));
      // e2m1 times an e4m3 scale: 0.5 · 2^-9 .. 6 · 448, exact in f16.
      v = __hmul2(v, *reinterpret_cast<const __half2*>(&g.s2));
      return *reinterpret_cast<const uint32_t*>(&v);
    } else {
      // mxfp4 for f16 x: e8m0 scales leave f16's range, so the f32 value is rounded once.
      const uint32_t pat = ((t & 0x00070007u) << 6) | ((t & 0x00080008u) << 12);
      const uint32_t two126 = 0x7e807e80u;
      const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pat),
                                       *reinterpret_cast<const __nv_bfloat162*>(&two126));
      const uint32_t e = *reinterpret_cast<const uint32_t*>(&v);
      const float lo = __fmul_rn(__uint_as_float(e << 16), g.s);
      const float hi = __fmul_rn(__uint_as_float(e & 0xffff0000u), g.s);
      return pack_rn<false>(lo, hi);
    }
  }
}

/// The steps_log2 template argument of 8-bit codes whose group is the whole row (channel,
/// tensor): the ws kernel's row-scale mode (matmul_cuda_wgmma_ws.cuh).
inline constexpr int kRowSteps = 4;

/// A scale group of 8-bit codes as decode8 uses it: w = (A - z) · s with c = 2^23 + 128 + z
/// (integer formats, q8_0: z = 0), fp8 w = value · s.
struct Group8 {
  float s = 0.0f, c = 8388736.0f;
};

template <Scale S, bool kZero>
__device__ __forceinline__ Group8 group8_of(const tc::SegScales& r, int f) {
  Group8 g;
  if constexpr (S == Scale::integer || S == Scale::f32) {
    g.s = numeric_detail::float_of(r.w[f]);
    if constexpr (kZero)
      g.c = 8388736.0f + static_cast<float>(static_cast<int8_t>(tc::byte_of(r.aux, f)));
  } else {  // f16d (q8_0)
    g.s = tc::h2f((r.w[f >> 1] >> (16 * (f & 1))) & 0xffffu);
  }
  return g;
}

/// The operand register of bytes 2p, 2p + 1 of an 8-bit code word: each code's dequantize()
/// value in f32 (tc::dense_value's operations: (A - z) · s, or the fp8 value times s, one
/// rounding), rounded once to x's dtype. Signed bytes: the byte ^ 0x80 under the f32 pattern
/// of 2^23 reads 2^23 + 128 + A exactly, and subtracting c leaves A - z exactly.
template <Code C, bool kBf16>
__device__ __forceinline__ uint32_t decode8(uint32_t word, int p, const Group8& g) {
  float lo, hi;
  if constexpr (C == Code::i8) {
    const uint32_t w = word ^ 0x80808080u;
    lo = __uint_as_float(__byte_perm(w, 0x4b000000u, p ? 0x7542u : 0x7540u));
    hi = __uint_as_float(__byte_perm(w, 0x4b000000u, p ? 0x7543u : 0x7541u));
    lo = __fsub_rn(lo, g.c), hi = __fsub_rn(hi, g.c);
  } else {
    const uint32_t h2 = tc::fp8_pair_f16<C>(word, p);
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h2));
    lo = f.x, hi = f.y;
  }
  return pack_rn<kBf16>(__fmul_rn(lo, g.s), __fmul_rn(hi, g.s));
}

/// The 4-bit integer decode without shifts (the warp-specialized kernels): the same values as
/// decode<Code::u4>, one instruction fewer per operand register and no shift of each code word.
/// A nibble at bits b .. b + 3 of a word, OR-ed into the f32 pattern of 2^(23 - b), reads as
/// 2^(23 - b) + u exactly for any b <= 19; subtracting 2^(23 - b) + c - 128 (an integer below
/// 2^24: exact) leaves u - 8 - z exactly, which is then multiplied by s as in decode. A lane of
/// quad position q reads the nibbles of its words at bits 4 (q % 2) + {0, 8} and, of the word
/// shifted right by 12, at 4 (q % 2) + {4, 12}: all below 20, so one shift serves a word's two
/// operand registers (pairs 0 and 1 of decode's `t >> sh`, `t >> sh >> 8`).
struct NibbleDecoder {
  uint32_t mask[4], magic[4];
  float base[4];  ///< 2^(23 - b) - 128: plus the group's c, the value to subtract
  __device__ __forceinline__ explicit NibbleDecoder(int sh) {
    constexpr int kAt[4] = {0, 8, 4, 12};  // lo even, lo odd (word); hi even, hi odd (word >> 12)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int b = kAt[i] + sh;
      mask[i] = 0xfu << b;
      magic[i] = static_cast<uint32_t>(150 - b) << 23;
      base[i] = __uint_as_float(magic[i]) - 128.0f;  // exact: 2^(23 - b) >= 16
    }
  }
  /// Operand registers of pair 0 (`even`) and pair 1 (`odd`) of code word `w` (unshifted).
  template <bool kBf16>
  __device__ __forceinline__ void word(uint32_t w, const Group& g, uint32_t& even,
                                       uint32_t& odd) const {
    const uint32_t w12 = w >> 12;
    auto value = [&](uint32_t t, int i) {
      return __fmul_rn(
          __fsub_rn(__uint_as_float(lop3_and_or(t, mask[i], magic[i])), __fadd_rn(base[i], g.c)),
          g.s);
    };
    even = pack_rn<kBf16>(value(w, 0), value(w12, 2));
    odd = pack_rn<kBf16>(value(w, 1), value(w12, 3));
  }
};

/// One lane's codes (rows r and r + 8 of its warp's tile: 16 bytes each) and scales of a
/// segment.
struct SegW {
  uint32_t w[2][4];
  tc::SegScales s[2];
};

// ---- x through the tensor-memory accelerator ----------------------------------------------

/// One 64-k x 128-row box of x (128-byte swizzled, rows past M zero-filled) into `dst`.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int k0, int row0,
                                         uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k0), "r"(row0), "r"(bar)
      : "memory");
}

template <Code C, Scale S, int kStepsLog2, bool kBf16, bool kZero>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_kernel(Args p, const __grid_constant__ CUtensorMap x_map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;        // swizzle atoms are 1024-byte aligned
  const uint32_t bars = base + kStages * kStageBytes;  // kStages mbarriers: stage s landed

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31, r = lane >> 2, q = lane & 3;
  const int m0 = static_cast<int>(blockIdx.x) * kRowsX;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTilesPerBlock;
  const int segs = static_cast<int>(p.w.segments);
  const int s_begin = static_cast<int>(blockIdx.z) * segs / p.split;
  const int nseg = static_cast<int>(blockIdx.z + 1) * segs / p.split - s_begin;

  // x: thread 0 asks the copy engine for segment i's two 64-k halves (rows m0 .. m0 + 127;
  // rows past M arrive as zeros and their outputs are dropped); stage i % kStages's barrier
  // counts the bytes. The tensor cores read them through the same (async) proxy: no fence.
  auto issue = [&](int i) {
    const uint32_t st = base + static_cast<uint32_t>((i % kStages) * kStageBytes);
    const uint32_t bar = bars + 8u * static_cast<uint32_t>(i % kStages);
    const int k0 = (s_begin + i) * 128;
    mbar_expect_tx(bar, kStageBytes);
    tma_load(st, &x_map, k0, m0, bar);
    tma_load(st + kHalfBytes, &x_map, k0 + 64, m0, bar);
  };
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&x_map)) : "memory");
#pragma unroll
    for (int s = 0; s < kStages; ++s) mbar_init(bars + 8u * s, 1);
    async::mbar_init_fence();
  }
  __syncthreads();
  if (tid == 0)
    for (int i = 0; i < kStages - 1 && i < nseg; ++i) issue(i);

  // This lane's W: the warp's tile (tiles past the last: the last one; rows past N are never
  // stored), rows r and r + 8.
  const int64_t my_tile = min(tile0 + warp, p.tiles - 1);
  using RS = skinny::RowScales<S, kStepsLog2, kZero>;
  const RS rs0(p.w, my_tile * 16 + r), rs1(p.w, my_tile * 16 + r + 8);
  const uint8_t* code0 =
      p.w.codes + tc::lane_code_offset(segs, 16, my_tile, 0, 0, lane);  // segment 0, half 0
  auto load_w = [&](int i,
                    SegW& w) {  // segment s_begin + min(i, nseg - 1): past the end, a re-read
    const int s = s_begin + min(i, nseg - 1);
    tc::load_words<16>(code0 + static_cast<int64_t>(s) * 2 * 32 * 16, w.w[0]);
    tc::load_words<16>(code0 + (static_cast<int64_t>(s) * 2 + 1) * 32 * 16, w.w[1]);
    w.s[0] = rs0.load(s);
    w.s[1] = rs1.load(s);
  };

  // Natural k order (file comment): lane q takes words from lanes q / 2 and 2 + q / 2.
  const int src_lo = (lane & ~3) | (q >> 1), src_hi = src_lo + 2;
  const int sh = 4 * (q & 1);
  struct Words {
    uint32_t lo[2][4], hi[2][4];
  };
  auto shuffle = [&](const SegW& w, Words& o) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        o.lo[h][v] = __shfl_sync(0xffffffffu, w.w[h][v], src_lo) >> sh;
        o.hi[h][v] = __shfl_sync(0xffffffffu, w.w[h][v], src_hi) >> sh;
      }
  };
  auto decode_step = [&](int j, const Words& o, const SegW& w, uint32_t(&a)[4]) {
    const int f = j >> kStepsLog2;
    const Group g0 = group_of<S, kBf16, kZero>(w.s[0], f);
    const Group g1 = group_of<S, kBf16, kZero>(w.s[1], f);
    const int pr = 8 * (j & 1);  // nibble pair 2 (j % 2) (+ q % 2, in sh)
    a[0] = decode<C, S, kBf16>(o.lo[0][j >> 1] >> pr, g0);  // row r, k 2q, 2q + 1
    a[1] = decode<C, S, kBf16>(o.lo[1][j >> 1] >> pr, g1);  // row r + 8
    a[2] = decode<C, S, kBf16>(o.hi[0][j >> 1] >> pr, g0);  // row r, k 2q + 8, 2q + 9
    a[3] = decode<C, S, kBf16>(o.hi[1][j >> 1] >> pr, g1);  // row r + 8
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  SegW ring[2];
  uint32_t a[2][8][4];
  load_w(0, ring[0]);
  load_w(1, ring[1]);
  {
    Words o;
    shuffle(ring[0], o);
#pragma unroll
    for (int j = 0; j < 8; ++j) decode_step(j, o, ring[0], a[0][j]);
  }
  load_w(2, ring[0]);

  // One segment: P = i % 2 (compile-time, so the register arrays are never indexed at run time).
  // Measured on the H100 (docs/matmul.md): one commit per segment is 6-11% faster than a commit
  // per step with each step's decode after its wgmma, and without any decode the loop runs only
  // 1.4-1.6x faster: the pipeline itself, more than the decode, bounds this kernel.
  auto segment = [&](auto parity, int i) {
    constexpr int P = decltype(parity)::value;
    const uint32_t st = base + static_cast<uint32_t>((i % kStages) * kStageBytes);
    const bool next = i + 1 < nseg;
    Words o;
    if (next) shuffle(ring[1 - P], o);
    mbar_wait(bars + 8u * static_cast<uint32_t>(i % kStages),
              static_cast<uint32_t>((i / kStages) & 1));
    fence_acc(acc);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 8; ++j)
      wgmma_rs<kBf16>(acc, a[P][j], desc_k128(st + (j >> 2) * kHalfBytes + (j & 3) * 32));
    wgmma_commit();
    wgmma_wait<1>();  // segment i - 1 is done: a[1 - P] and its stage are free
    fence_acc(acc);
    if (next) {
#pragma unroll
      for (int j = 0; j < 8; ++j) decode_step(j, o, ring[1 - P], a[1 - P][j]);
      load_w(i + 3, ring[1 - P]);
    }
    __syncthreads();  // every warpgroup is done with segment i - 1: refill its stage
    if (tid == 0 && i + kStages - 1 < nseg) issue(i + kStages - 1);
  };
  for (int i = 0; i < nseg; i += 2) {
    segment(std::integral_constant<int, 0>{}, i);
    if (i + 1 < nseg) segment(std::integral_constant<int, 1>{}, i + 1);
  }
  wgmma_wait<0>();
  fence_acc(acc);

  // Accumulator fragment: acc[4 t + e] is row (of W) 16 warp + r + 8 (e / 2), column (row of
  // x) 8 t + 2 q + e % 2.
  const float global = S == Scale::e4m3 && !p.partial ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int t = 0; t < 16; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = (tile0 + warp) * 16 + r + (e < 2 ? 0 : 8);
      const int c = m0 + 8 * t + 2 * q + (e & 1);
      if (c >= p.m || row >= p.n) continue;
      medium::store_result(p, global, c, row, acc[4 * t + e]);
    }
#else
  (void)p, (void)x_map;
#endif
}

/// One instantiation's launches: this file's kernel and the warp-specialized one
/// (matmul_cuda_wgmma_ws.cuh, whose `pick` fills them: 4-bit codes this file's kernel and
/// the ws kernel's 256- and 64-row tilings, 8-bit codes the 128-row tiling alone).
struct Launcher {
  using Launch = void (*)(const Args&, const CUtensorMap&, cudaStream_t);
  /// The ws kernels take y's tensor map too (used where Args::y_tma).
  using LaunchWs = void (*)(const Args&, const CUtensorMap&, const CUtensorMap&, cudaStream_t);
  Launch launch = nullptr;
  LaunchWs launch_ws[3] = {};     ///< the ws kernel: 256 / 64 / 128 rows of x
  int (*ws_max_pairs[3])() = {};  ///< its clusters of two at once
  /// Whether the kernel of `tiling` (-1: this file's; 0, 1, 2: the ws kernel's) is here.
  bool has(int tiling) const {
    return tiling < 0 ? launch != nullptr : launch_ws[tiling] != nullptr;
  }
  explicit operator bool() const { return has(-1) || has(0) || has(1) || has(2); }
};

template <Code C, Scale S, int SL, bool kBf16, bool kZero>
void launch(const Args& a, const CUtensorMap& x_map, cudaStream_t stream) {
  const auto kernel = &wgmma_kernel<C, S, SL, kBf16, kZero>;
  static mm_cuda::SmemOptIn optin;
  mm_cuda::check_cuda(optin.allow(kernel, kSmemBytes), "matmul: shared memory of wgmma_kernel");
  const dim3 grid(static_cast<unsigned>((a.m + kRowsX - 1) / kRowsX),
                  static_cast<unsigned>((a.tiles + kTilesPerBlock - 1) / kTilesPerBlock),
                  static_cast<unsigned>(a.split));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, x_map);
  mm_cuda::check_launch("wgmma_kernel");
  if (a.split > 1) medium::launch_reduce(a, stream);
}

#endif  // __CUDACC__

/// "" where `device` runs this build's sm_90a kernels (wgmma, setmaxnreg), else why not
/// (cached per device; matmul_cuda_wgmma.cu).
std::string sm90a_decline(int device);
/// The driver's cuTensorMapEncodeTiled (asked once; throws if the driver has none).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();
/// The copy engine's description of a [rows][cols] matrix of `elem_bytes`-byte elements (rows
/// `stride` elements apart) in boxes of one 128-byte row x `box_rows` rows with the 128-byte
/// swizzle, rows and columns past the matrix read as zeros (throws if the driver refuses).
CUtensorMap tensor_map_swizzled(const void* data, CUtensorMapDataType type, int elem_bytes,
                                int64_t rows, int64_t cols, int64_t stride, uint32_t box_rows,
                                CUtensorMapL2promotion promotion, const char* what);

#if defined(__CUDACC__)
/// The instantiation for a format and x dtype, or an empty Launcher (with the reason in `why`).
Launcher launcher_int4(const tc::Format& f, bool bf16, std::string* why);
Launcher launcher_fp4(const tc::Format& f, bool bf16, std::string* why);
Launcher launcher_int8(const tc::Format& f, int64_t k, bool bf16, std::string* why);
/// Integer 8-bit codes in groups along K and q8_0 (launcher_int8 asks it).
Launcher launcher_int8_groups(const tc::Format& f, bool bf16, std::string* why);
#endif

}  // namespace lowbit::wgmma
