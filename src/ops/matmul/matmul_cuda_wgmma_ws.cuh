// The warp-specialized kernel of matmul_cuda_wgmma_ws_tc (256 rows of x per block, M >= 129)
// and matmul_cuda_wgmma_ws64_tc (64 rows, m64n64k16, twice the stages; 33 <= M <= 128):
// weight-only y = x · dequant(W)^T for bf16 / f16 x, Hopper sm_90a, instantiated beside the
// one-wave kernel of matmul_cuda_wgmma.cuh by matmul_cuda_wgmma_{int4,fp4}.cu; the plans are
// in matmul_cuda_wgmma.cu.
//
// Why a second kernel: matmul_cuda_wgmma_tc's warps decode, issue the wgmmas and keep the copy
// engine fed from one instruction stream, meet at a block barrier each segment and use a 128-row
// tile of x; without any decode its loop reaches only 340-490 TFLOP/s. Here:
//
//   block = 3 warpgroups (384 threads). Warpgroup 0 is the producer: one thread asks the
//           tensor-memory accelerator for each stage (x's tile and the block's W codes) once
//           the consumers have freed it; the warpgroup gives its registers to the others
//           (setmaxnreg). Warpgroups 1 and 2 are the consumers: 64 rows of W each (warp w: the
//           layout's 16-row tile w), all kRowsX rows of x: y^T = W · x^T with
//           wgmma.m64n256k16 or m64n64k16 (W the A operand from registers, x^T the B operand
//           from shared memory, f32 accumulators: 128 or 32 per lane).
//   stage = one 128-k segment: x [kRowsX rows][128 k] (two 64-k halves of 128-byte swizzled rows,
//           two boxes) and the 8 tiles' codes of the segment (8 bulk copies of 1 KB: the
//           prepared layout keeps a tile's segment contiguous); a "full" mbarrier counts the
//           bytes, an "empty" one counts the consumer warps done with the stage (of both blocks
//           of a W pair, whose producers each write half of x into both).
//   unit  = half a segment (64 k, 4 steps of 16): the consumer issues the unit's 4 wgmmas,
//           commits, waits until the previous unit's are done (its A registers and, at a
//           segment's first unit, the previous stage are free), then decodes the next unit's
//           A operands from the codes in shared memory while this unit's run. A lane reads the
//           code words it needs straight from the other lanes' chunks (the skinny layout orders
//           k for mma.sync; wgmma wants natural order: file comment of matmul_cuda_wgmma.cuh),
//           so no shuffles.
//   grid  = (blocks of kRowsX rows of x: fastest, so the blocks that share W's stretch run
//           together and find it in L2) x (blocks of 128 rows of W) x (k-ranges). A cluster
//           is two blocks: without a split of K, neighbouring blocks of W that share x's tile
//           (each asks for half of its rows, multicast to both); with two k-ranges where the
//           grid is short of a wave, the two ranges of one block of W, whose sums are added
//           inside the cluster through distributed shared memory (no partial sums in global
//           memory, no second kernel); with four ranges, two such pairs, the first pair's
//           sums handed to the second through the workspace under a flag per half block (the
//           second adds them before its own and writes y: still no second kernel, and a
//           quarter of the partial sums' traffic); with more ranges, partial sums in the
//           workspace added in order by medium::reduce_kernel. (Clusters of 4 or 8 blocks would do
//           both, but the H100 runs only 30 / 15 of them at once: 120 of its 132 SMs.)
//   end   = one k-range and y's rows 16-byte aligned (Args::y_tma): y finished in registers,
//           stmatrix into y's two swizzled boxes in the stages, one TMA store (the copy
//           engine clips rows past M / N). Otherwise through shared memory: the fragments into
//           an f32 tile, then rows of y (or of the partial sums) 16 bytes per lane; with two
//           ranges in a cluster each block adds half the rows of both tiles (range order:
//           deterministic) and writes them.
// The numbers: the 256-row tiling's are the one-wave kernel's exactly (the same decode and
// group_of): each W operand is dequantize()'s value in x's dtype, f32 accumulation on the
// tensor cores. So are the 64-row tiling's, except for int4 / uint4 in groups of 64 or more
// (block64, block128, channel) and q4_0 ("flush" mode, kFlush below): there a 64-k unit lies
// inside one group (two for q4_0's groups of 32), the operands are the codes' integer values
// (u - 8, or u - 8 - z: exact in bf16 and f16), each group's sums go into a tile of their own
// and are added to the accumulators times the group's scale in f32 (one FFMA each). That is
// 2 instructions per operand register where dequantize()'s rounded value takes 7, and the
// weight is not rounded to x's dtype (the sums differ from the other kernels' by that
// rounding; tests: against the f64 product, as all). Measured (H100, BENCHMARKS.md): 4-11%
// less time at M = 48-128 for groups of 64 or more, 2-6% for q4_0; int4:block32 (f32 scales)
// was 1-4% slower that way and keeps the rounded decode.
#pragma once

#include "ops/matmul/matmul_cuda_wgmma.cuh"
#ifdef LOWBIT_WS_TRACE  // diagnostics: the per-block phase trace
#include "ops/matmul/matmul_cuda_wgmma_ws_trace.cuh"
#else
#define WS_MARK(cond, slot)
#define WS_SUMS
#define WS_T0(var)
#define WS_SUM(slot, t0)
#define WS_SUMS_STORE(cond)
#define WS_WORDS_LANDED(w)
#endif

namespace lowbit::wgmma_ws {

using async::bulk_load;

using medium::Args;
using tc::Code;
using tc::Scale;

inline constexpr int kThreads = 384;      ///< a producer warpgroup and two consumer warpgroups
inline constexpr int kTilesPerBlock = 8;  ///< 128 rows of W per block
inline constexpr int kConsumerWarps = 8;
inline constexpr int kClusterBlocks = 2;  ///< a W pair sharing x's tile, or two k-ranges
/// The epilogue's f32 tile [rows of x][kOutStride] (4 words of padding: the fragment's stores
/// fall in distinct banks).
inline constexpr int kOutStride = 128 + 4;

/// The tilings: 256 rows of x per block (4-bit codes, M >= 129: wgmma.m64n256k16), 64 (4-bit
/// codes, M <= 128: m64n64k16, a quarter of the x bytes per stage, so twice the stages) or 128
/// (8-bit codes: m64n128k16; their 2 KB per tile and segment leave no room for three stages
/// of 256 rows of x in 227 KB, and four stages of 128 rows fit).
template <int RX, bool kWide = false>
struct Tiling {
  static_assert(RX == 256 || RX == 128 || RX == 64);
  static constexpr int kRowsX = RX;            ///< rows of x per block: the wgmma's N
  static constexpr int kHalfBytes = RX * 128;  ///< one 64-k half of x in a stage
  static constexpr int kXBytes = 2 * kHalfBytes;
  /// One tile's codes of one segment (tc::Format::lane_bytes x 2 halves x 32 lanes).
  static constexpr int kTileWBytes = kWide ? 2048 : 1024;
  static constexpr int kWBytes = kTilesPerBlock * kTileWBytes;  ///< the block's codes
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kStages = RX == 256 ? 3 : RX == 128 ? 4 : 6;
  /// The stages, their full and empty barriers, and room to align the stages to 1024 bytes.
  static constexpr int kSmemBytes = kStages * kStageBytes + 16 * kStages + 1024;
  static constexpr int kAcc = RX / 2;  ///< f32 accumulators per lane
  static_assert(RX * kOutStride * 4 <= kStages * kStageBytes);
  static_assert(kSmemBytes <= 227 * 1024);
};

/// Blocks of the grid before any split of K, with `rows_x` rows of x per block.
inline int64_t blocks_for(int64_t m, int64_t tiles, int rows_x) {
  return ((m + rows_x - 1) / rows_x) * ((tiles + kTilesPerBlock - 1) / kTilesPerBlock);
}

/// The split of K: `split` k-ranges per block of W (and of x), added in pairs inside clusters
/// of two blocks (`in_cluster`: split 2, or 4 as two pairs whose sums are chained through the
/// workspace) or all through the workspace.
struct WsSplit {
  int split = 1;
  bool in_cluster = false;
  /// The ranges whose partial sums go through the workspace's [split][m][n] (none in clusters).
  int workspace_ranges() const { return in_cluster ? 1 : split; }
  /// Two cluster pairs: the first pair's sums handed to the second through the workspace.
  bool chained() const { return in_cluster && split > 2; }
};

/// Where the chained pairs' part of the workspace lies, in bytes from its start, after the
/// `used` bytes of the rest: a flag per half block, then the first pair's [m][n] f32 sums.
struct ChainArea {
  size_t flags = 0, sums = 0, end = 0;
};
inline ChainArea chain_area(size_t used, int64_t m, int64_t n, int64_t tiles, int rows_x) {
  const size_t flags = static_cast<size_t>((m + rows_x - 1) / rows_x) *
                       static_cast<size_t>((tiles + kTilesPerBlock - 1) / kTilesPerBlock) * 2;
  ChainArea a;
  a.flags = (used + 255) / 256 * 256;
  a.sums = a.flags + (flags * 8 + 255) / 256 * 256;
  a.end = a.sums + static_cast<size_t>(m) * static_cast<size_t>(n) * 4;
  return a;
}

/// k-ranges only where the grid is short of one wave of `slots` (each at least 4 segments):
/// two in a cluster where two fill the device about as well as more would and the device runs
/// all the clusters at once (`max_pairs`); four as two chained cluster pairs where four or five
/// would (no reduction kernel, and only the first pair's sums through memory); else up to 16
/// through the workspace (a chain of more pairs would add a hand-over per pair at the end).
inline WsSplit split_for(int64_t m, int64_t tiles, int64_t segments, int rows_x, int64_t slots,
                         int64_t max_pairs) {
  const int64_t blocks = blocks_for(m, tiles, rows_x);
  if (blocks * 3 >= slots * 2) return {};
  const int64_t want = std::clamp<int64_t>((slots + blocks / 2) / std::max<int64_t>(blocks, 1), 1,
                                           std::clamp<int64_t>(segments / 4, 1, 16));
  if (want == 1) return {};
  if (want <= 3 && blocks <= max_pairs) return {2, true};
  if (want <= 5 && blocks * 2 <= max_pairs) return {4, true};
  return {static_cast<int>(want), false};
}

#if defined(__CUDACC__)

/// d += A · B, m64n256k16, A from registers (this lane's fragment), B from shared memory.
template <bool kBf16>
__device__ __forceinline__ void wgmma_rs256(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LB_WGMMA_RS256(TYPE)                                                                       \
  asm volatile(                                                                                    \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE                                 \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "           \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "           \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "           \
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "           \
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "           \
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, "     \
      "%111, "                                                                                     \
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, " \
      "%127}, "                                                                                    \
      "{%128, %129, %130, %131}, %132, 1, 1, 1, 0;"                                                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), \
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), \
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), \
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), \
        "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),          \
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),        \
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),        \
        "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),        \
        "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b))
  if constexpr (kBf16) {
    LB_WGMMA_RS256("bf16");
  } else {
    LB_WGMMA_RS256("f16");
  }
#undef LB_WGMMA_RS256
#else
  (void)d, (void)a, (void)b;
#endif
}

/// d += A · B (kAdd) or d = A · B, m64n64k16, A from registers (this lane's fragment), B
/// from shared memory.
template <bool kBf16, bool kAdd = true>
__device__ __forceinline__ void wgmma_rs64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LB_WGMMA_RS64(TYPE)                                                                    \
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                     \
               " {"                                                                            \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "        \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, "   \
               "%31}, "                                                                        \
               "{%32, %33, %34, %35}, %36, %37, 1, 1, 0;"                                      \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),       \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),     \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
                 "+f"(d[30]), "+f"(d[31])                                                      \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kAdd ? 1 : 0))
  if constexpr (kBf16) {
    LB_WGMMA_RS64("bf16");
  } else {
    LB_WGMMA_RS64("f16");
  }
#undef LB_WGMMA_RS64
#else
  (void)d, (void)a, (void)b;
#endif
}

/// d += A · B for each tiling's wgmma.
template <bool kBf16, int N>
__device__ __forceinline__ void wgmma_rs_n(float (&d)[N], const uint32_t (&a)[4], uint64_t b) {
  if constexpr (N == 128)
    wgmma_rs256<kBf16>(d, a, b);
  else if constexpr (N == 64)
    wgmma::wgmma_rs<kBf16>(d, a, b);
  else
    wgmma_rs64<kBf16>(d, a, b);
}

/// One arrival on the barrier at `bar` (a shared::cta address) of the cluster's block `rank`.
/// Relaxed: the caller's reads of the stage it frees have completed (their values are in
/// registers, the wgmmas waited for); a release arrival fences (MEMBAR) until the lane's
/// outstanding global loads (the next segments' scales) are done, which measured as most of
/// the kernel's time on the H100 (stall reason "membar").
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
      " mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [remote];\n}" ::"r"(bar),
      "r"(rank)
      : "memory");
}

__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

/// One box of x into the same place of the blocks of `mask` (cluster ranks), counted on each
/// block's barrier at `bar`.
__device__ __forceinline__ void tma_load_multicast(uint32_t dst, const CUtensorMap* map, int k0,
                                                   int row0, uint32_t bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k0), "r"(row0), "r"(bar), "h"(mask)
      : "memory");
}

/// 16 bytes of the shared memory of the cluster's block `rank` (`addr`: a shared::cta address).
__device__ __forceinline__ float4 ld_cluster_f4(uint32_t addr, uint32_t rank) {
  float4 v;
  asm volatile(
      "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %4, %5;\n"
      " ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [remote];\n}"
      : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
      : "r"(addr), "r"(rank)
      : "memory");
  return v;
}

/// The chained pairs' flag: release store / acquire load at GPU scope.
__device__ __forceinline__ void flag_release(unsigned long long* f, unsigned long long v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(f), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long flag_acquire(const unsigned long long* f) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(f) : "memory");
  return v;
}

/// 8 bytes of shared memory.
__device__ __forceinline__ void lds64(uint32_t addr, uint32_t& a, uint32_t& b) {
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(a), "=r"(b) : "r"(addr));
}
/// 16 bytes of shared memory.
__device__ __forceinline__ void lds128(uint32_t addr, uint32_t (&w)[4]) {
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "r"(addr));
}

/// Four 8 x 8 matrices of 16-bit pairs (this lane's fragment of each: row lane / 4, columns
/// 2 (lane % 4) and + 1) into shared memory transposed: the row address lane l gives is row
/// l % 8 of matrix l / 8, and receives that matrix's column l % 8.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t a, uint32_t b, uint32_t c,
                                                  uint32_t d) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr),
               "r"(a), "r"(b), "r"(c), "r"(d)
               : "memory");
}

/// One box of shared memory at `src` into the tensor `map` at (c0, c1), through the copy
/// engine (a bulk group of this thread).
__device__ __forceinline__ void tma_store(const CUtensorMap* map, int c0, int c1, uint32_t src) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(src)
               : "memory");
}

/// The epilogue's rare cases are loops kept rolled (see the row loop; calls would make ptxas
/// spill), picking their element by selects (an indexed array would live in local memory).
__device__ __forceinline__ float pick8(const float (&v)[8], int e) {
  float x = v[7];
#pragma unroll
  for (int i = 6; i >= 0; --i) x = e == i ? v[i] : x;
  return x;
}

/// A row's first `count` (<= 8) f32 sums.
__device__ __forceinline__ void store_f32_tail(float* dst, const float (&v)[8], int count) {
#pragma unroll 1
  for (int e = 0; e < 8 && e < count; ++e) dst[e] = pick8(v, e);
}

/// y's arithmetic (medium::store_result's, unfused): a · global (+ bias), b likewise, each
/// rounded once to y's dtype, which is x's (the plans decline any other): one 16-bit pair, a
/// low. Both epilogues use it, so the copy engine's y and the row loop's have the same bits.
template <bool kBf16>
__device__ __forceinline__ uint32_t y_pair(float a, float b, float global, bool bias, float ba,
                                           float bb) {
  a = __fmul_rn(a, global), b = __fmul_rn(b, global);
  if (bias) a = __fadd_rn(a, ba), b = __fadd_rn(b, bb);
  return kBf16 ? quant_cuda::bf16x2_rn(a, b) : quant_cuda::f16x2_rn(a, b);
}

/// y = (sums of the first chained pair, if any, + v) · global (+ bias), rounded once: row c's
/// 8 outputs from row0 as one 16-byte store (y 16-byte aligned, all 8 rows inside N).
template <bool kBf16>
__device__ __forceinline__ void store_y8(const Args& p, int c, int64_t row0, float (&v)[8],
                                         const float* sums, float global, const float (&bias)[8]) {
  if (sums) {  // the second pair: the first pair's sums, then its own
    if (p.n % 4 == 0) {
      const float4 a = __ldcg(reinterpret_cast<const float4*>(sums));
      const float4 b = __ldcg(reinterpret_cast<const float4*>(sums) + 1);
      const float prev[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = __fadd_rn(prev[e], v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = __fadd_rn(__ldcg(sums + e), v[e]);
    }
  }
  uint32_t w[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    w[e] = y_pair<kBf16>(v[2 * e], v[2 * e + 1], global, p.bias, bias[2 * e], bias[2 * e + 1]);
  uint16_t* const dst = static_cast<uint16_t*>(p.y) + static_cast<int64_t>(c) * p.y_stride + row0;
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[0]), "r"(w[1]),
               "r"(w[2]), "r"(w[3])
               : "memory");
}

/// store_y8's arithmetic for the rows of a block past N, or y not 16-byte aligned (any dtype).
__device__ __forceinline__ void store_y_tail(const Args& p, int c, int64_t row0,
                                             const float (&v)[8], const float* sums, float global) {
#pragma unroll 1
  for (int e = 0; e < 8 && row0 + e < p.n; ++e) {
    float x = pick8(v, e);
    if (sums) x = __fadd_rn(__ldcg(sums + e), x);
    x = __fmul_rn(x, global);
    if (p.bias)
      x = __fadd_rn(x, quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row0 + e)));
    quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row0 + e), x);
  }
}

template <Code C, Scale S, int kStepsLog2, bool kBf16, bool kZero, int RX>
__global__ void __launch_bounds__(kThreads, 1)
    ws_kernel(Args p, const __grid_constant__ CUtensorMap x_map,
              const __grid_constant__ CUtensorMap y_map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // 8-bit codes (the 128-row tiling only) have twice the code bytes per tile. With scales
  // constant along a row (channel, tensor: kStepsLog2 == wgmma::kRowSteps) the operands are
  // the codes' values, exact in x's dtype, and each row's scale multiplies its f32 sums once
  // at the end (kRowScale); with groups along K (int8 / uint8 blocks, q8_0, fp8 blocks) each
  // operand is dequantize()'s value rounded to x's dtype (wgmma::decode8), as for 4-bit codes.
  constexpr bool kWide = tc::Format::wide(C);
  constexpr bool kRowScale = kWide && kStepsLog2 == wgmma::kRowSteps;
  static_assert(!kWide || (RX == 128 && (S == Scale::integer || S == Scale::f32 ||
                                         (S == Scale::f16d && kStepsLog2 == 1))));
  static_assert(!kRowScale || (!kZero && S != Scale::f16d));
  static_assert(kWide || kStepsLog2 <= 3);
  constexpr int SL = kRowScale ? 3 : kStepsLog2;  ///< log2(steps per group) in a segment
  using T = Tiling<RX, kWide>;
  constexpr int kRowsX = RX, kHalfBytes = T::kHalfBytes, kXBytes = T::kXBytes;
  constexpr int kStageBytes = T::kStageBytes, kStages = T::kStages;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;        // swizzle atoms are 1024-byte aligned
  const uint32_t full = base + kStages * kStageBytes;  // kStages barriers: stage s landed
  const uint32_t empty = full + 8 * kStages;           // kStages barriers: stage s consumed

  const int tid = static_cast<int>(threadIdx.x);
  WS_MARK(tid == 0, 0);
  WS_SUMS;
  const int m0 = static_cast<int>(blockIdx.x) * kRowsX;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTilesPerBlock;
  const int segs = static_cast<int>(p.w.segments);
  const int s_begin = static_cast<int>(blockIdx.z) * segs / p.split;
  const int nseg = static_cast<int>(blockIdx.z + 1) * segs / p.split - s_begin;
  // The cluster: two blocks of neighbouring rows of W (cluster y `yr`: each asks for half of
  // x's tile and the copy engine writes it into both blocks' stages), or the two k-ranges of
  // one block of W (cluster z `zr`, `ksplit`: each loads its own x).
  const bool ksplit = p.cluster_split;
  uint32_t yr, zr, rank;
  asm("mov.u32 %0, %%cluster_ctaid.y;" : "=r"(yr));
  asm("mov.u32 %0, %%cluster_ctaid.z;" : "=r"(zr));
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  if (rank != yr + zr) __trap();  // (one of them is 0: the rank order this code assumes)

  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&x_map)) : "memory");
    if (p.y_tma)
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&y_map)) : "memory");
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      async::mbar_init(full + 8u * s, 1);
      async::mbar_init(empty + 8u * s, (ksplit ? 1 : kClusterBlocks) * kConsumerWarps);
    }
    async::mbar_init_fence();
  }
  cluster_sync();  // both blocks' barriers exist before either copies into the other
  WS_MARK(tid == 0, 1);

  // Every thread of the cluster meets at its barrier once at the end (twice more with
  // k-ranges: the tiles are written; the tiles are read).
  auto producer_end = [&] {
    cluster_sync();
    if (ksplit) cluster_sync(), cluster_sync();
  };
  if (tid < 128) {  // the producer warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid != 0) {
      producer_end();
      return;
    }
    for (int i = 0; i < nseg; ++i) {
      const int st = i % kStages;
      // The stage's previous use (segment i - kStages) must be consumed: phase i / kStages - 1.
      WS_T0(t_empty);
      if (i >= kStages)
        async::mbar_wait(empty + 8u * st, static_cast<uint32_t>((i / kStages - 1) & 1));
      WS_SUM(13, t_empty);
      const uint32_t dst = base + static_cast<uint32_t>(st * kStageBytes);
      const uint32_t bar = full + 8u * st;
      const int s = s_begin + i;
      async::mbar_expect_tx(bar, kStageBytes);
      // x's rows in two boxes (the tensor map's): this block's half into both blocks of a W
      // pair, or both halves into this block alone.
      for (uint32_t h = ksplit ? 0 : yr; h < (ksplit ? 2u : yr + 1); ++h) {
        const uint32_t xh = h * (kHalfBytes / 2);
        // A half whose rows all lie past M (the last block of x, M mod RX in 1 .. RX / 2)
        // reads the first half's rows instead: the copy engine's zero fill of a box wholly
        // past the tensor measured slow (ws128 at M = 48-64 with K split: 0.073-0.079 ms
        // against 0.041-0.046), and the wgmma columns it feeds are outputs past M, never
        // stored (a column of y^T depends on its own row of x alone).
        const int xr_h = m0 + static_cast<int>(h) * (kRowsX / 2);
        const int xr = xr_h < p.m ? xr_h : m0;
        const uint16_t mask = ksplit ? static_cast<uint16_t>(1u << rank) : uint16_t{3};
        tma_load_multicast(dst + xh, &x_map, s * 128, xr, bar, mask);
        tma_load_multicast(dst + kHalfBytes + xh, &x_map, s * 128 + 64, xr, bar, mask);
      }
#pragma unroll
      for (int t = 0; t < kTilesPerBlock; ++t) {  // tiles past the last: the last one, unused
        const int64_t tile = min(tile0 + t, p.tiles - 1);
        bulk_load(dst + kXBytes + T::kTileWBytes * t,
                  p.w.codes + tc::lane_code_offset(segs, T::kTileWBytes / 64, tile, s, 0, 0),
                  T::kTileWBytes, bar);
      }
    }
    WS_SUMS_STORE(true);
    producer_end();
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");

  const int warp = (tid >> 5) - 4;  // consumer warp 0..7: the block's tile `warp`
  const int lane = tid & 31, r = lane >> 2, q = lane & 3;
  const int64_t my_tile = min(tile0 + warp, p.tiles - 1);
  using RS = skinny::RowScales<S, SL, kZero>;
  const RS rs0(p.w, my_tile * 16 + r), rs1(p.w, my_tile * 16 + r + 8);

  // Natural k order (matmul_cuda_wgmma.cuh): lane q takes its words from lanes q / 2 and
  // 2 + q / 2 of its quad, shifted by 4 (q % 2); a unit (64 k) uses two words of each row.
  // 8-bit codes: word j of a lane's 32 bytes is step j (tc::step_word), whose byte pair q % 2
  // of lane q / 2 is k 2q, 2q + 1 in natural order (and of lane 2 + q / 2 k 2q + 8, 2q + 9):
  // a unit uses four words of each row, one 16-byte load.
  constexpr uint32_t kLaneBytes = T::kTileWBytes / 64;
  const uint32_t wsrc = kXBytes + static_cast<uint32_t>(T::kTileWBytes) * warp +
                        kLaneBytes * ((lane & ~3) | (q >> 1));
  const int sh = 4 * (q & 1);
  const int pq = q & 1;                  // 8-bit codes: the byte pair
  constexpr int kWords = kWide ? 4 : 2;  ///< code words of a row per unit
  struct Words {
    uint32_t lo[2][kWords], hi[2][kWords];  // [row r / r + 8][word]
  };
  // Integer codes with f32 or f16 scales on the 64-row tiling ("flush" mode): a unit (64 k)
  // lies in one group (groups of 64 or more) or two (groups of 32, int4:block32 and q4_0),
  // so its wgmmas sum the codes' integer values (exact in x's dtype: one LOP3 and one
  // subtraction per operand register instead of seven instructions) times x into a tile of
  // its own per group, which is then added to the accumulators times the group's scale, one
  // FFMA per accumulator and group. The 256-row tiling has no registers for a second tile.
  // Groups of 32 flush only with q4_0's f16 scales: measured (H100, session 17) 2-6% faster
  // for q4_0 at M = 64-128, but 3-4% slower for int4:block32 and 1-2% for its asym form
  // (f32 scales), which keep the rounded decode.
  constexpr bool kFlush =
      RX == 64 && C == Code::u4 &&
      ((S == Scale::integer && kStepsLog2 >= 2) || (S == Scale::f16d && kStepsLog2 == 1));
  constexpr int kGroups = kStepsLog2 >= 2 ? 1 : 2;  ///< flush mode: groups per unit
  // Other 4-bit integer codes decode from the unshifted words (wgmma::NibbleDecoder), but for
  // zero points on the 256-row tiling: there its per-group constants made ptxas spill in the
  // loop.
  constexpr bool kNibbles = C == Code::u4 && !kFlush && (RX == 64 || !kZero);
  const wgmma::NibbleDecoder nibbles(sh);
#ifdef LOWBIT_WS_NODECODE  // diagnostics: the loop without the decode (wrong sums; trace header)
  constexpr bool kNoDecode = true;
#else
  constexpr bool kNoDecode = false;
#endif
  auto load_words = [&](int i, int unit, Words& o) {
    const uint32_t a = base + static_cast<uint32_t>((i % kStages) * kStageBytes) + wsrc +
                       4u * kWords * static_cast<uint32_t>(unit);
    if constexpr (kWide) {  // halves 1 KB apart, lane 2 + q / 2 64 bytes after lane q / 2
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        lds128(a + 1024u * h, o.lo[h]);
        lds128(a + 1024u * h + 64u, o.hi[h]);
      }
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        lds64(a + 512u * h, o.lo[h][0], o.lo[h][1]);
        lds64(a + 512u * h + 32u, o.hi[h][0], o.hi[h][1]);
        if constexpr (!kNibbles) {
#pragma unroll
          for (int v = 0; v < 2; ++v) o.lo[h][v] >>= sh, o.hi[h][v] >>= sh;
        }
      }
    }
  };
  // Steps 4 unit .. 4 unit + 3 of a segment into a[4][4].
  auto decode_unit = [&](int unit, const Words& o, const tc::SegScales& s0, const tc::SegScales& s1,
                         uint32_t(&a)[4][4]) {
    if constexpr (kRowScale) {  // the codes' exact values (the scale comes at the end)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        a[jj][0] = tc::decode_pair<C, kBf16>(o.lo[0][jj], pq);  // row r, k 2q, 2q + 1
        a[jj][1] = tc::decode_pair<C, kBf16>(o.lo[1][jj], pq);  // row r + 8
        a[jj][2] = tc::decode_pair<C, kBf16>(o.hi[0][jj], pq);  // k 2q + 8, 2q + 9
        a[jj][3] = tc::decode_pair<C, kBf16>(o.hi[1][jj], pq);
      }
    } else if constexpr (kWide) {  // dequantize()'s values rounded to x's dtype
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int f = (4 * unit + jj) >> SL;
        const wgmma::Group8 g0 = wgmma::group8_of<S, kZero>(s0, f);
        const wgmma::Group8 g1 = wgmma::group8_of<S, kZero>(s1, f);
        a[jj][0] = wgmma::decode8<C, kBf16>(o.lo[0][jj], pq, g0);
        a[jj][1] = wgmma::decode8<C, kBf16>(o.lo[1][jj], pq, g1);
        a[jj][2] = wgmma::decode8<C, kBf16>(o.hi[0][jj], pq, g0);
        a[jj][3] = wgmma::decode8<C, kBf16>(o.hi[1][jj], pq, g1);
      }
    } else if constexpr (kNoDecode) {  // the experiment: operands are the code words themselves
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        a[jj][0] = o.lo[0][jj >> 1] ^ s0.w[0], a[jj][1] = o.lo[1][jj >> 1] ^ s1.w[0];
        a[jj][2] = o.hi[0][jj >> 1], a[jj][3] = o.hi[1][jj >> 1];
      }
    } else if constexpr (kNibbles) {
      // Steps 2 v and 2 v + 1 share word v and a group (groups span 2 steps or more).
      static_assert(kStepsLog2 >= 1);
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const int f = (4 * unit + 2 * v) >> kStepsLog2;
        const wgmma::Group g0 = wgmma::group_of<S, kBf16, kZero>(s0, f);
        const wgmma::Group g1 = wgmma::group_of<S, kBf16, kZero>(s1, f);
        nibbles.word<kBf16>(o.lo[0][v], g0, a[2 * v][0], a[2 * v + 1][0]);
        nibbles.word<kBf16>(o.lo[1][v], g1, a[2 * v][1], a[2 * v + 1][1]);
        nibbles.word<kBf16>(o.hi[0][v], g0, a[2 * v][2], a[2 * v + 1][2]);
        nibbles.word<kBf16>(o.hi[1][v], g1, a[2 * v][3], a[2 * v + 1][3]);
      }
    } else {
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int f = (4 * unit + jj) >> kStepsLog2;
        const wgmma::Group g0 = wgmma::group_of<S, kBf16, kZero>(s0, f);
        const wgmma::Group g1 = wgmma::group_of<S, kBf16, kZero>(s1, f);
        const int pr = 8 * (jj & 1);
        a[jj][0] = wgmma::decode<C, S, kBf16>(o.lo[0][jj >> 1] >> pr, g0);  // row r, k 2q, 2q+1
        a[jj][1] = wgmma::decode<C, S, kBf16>(o.lo[1][jj >> 1] >> pr, g1);  // row r + 8
        a[jj][2] = wgmma::decode<C, S, kBf16>(o.hi[0][jj >> 1] >> pr, g0);  // k 2q + 8, 2q + 9
        a[jj][3] = wgmma::decode<C, S, kBf16>(o.hi[1][jj >> 1] >> pr, g1);
      }
    }
  };

  auto decode_int = [&](uint32_t t, uint32_t z2) {
    uint32_t v = tc::decode_pair<Code::u4, kBf16>(t, 0);  // u - 8, exact (the skinny decode)
    if constexpr (kZero) v = tc::sub2<kBf16>(v, z2);
    return v;
  };
  // fs[2 gi + h]: the scale of the unit's group gi (steps 2 gi, 2 gi + 1 with two groups) for
  // row r + 8 h.
  auto decode_unit_int = [&](int unit, const Words& o, const tc::SegScales& s0,
                             const tc::SegScales& s1, uint32_t(&a)[4][4], float(&fs)[2 * kGroups]) {
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi) {
      const int f = (4 * unit + 2 * gi) >> kStepsLog2;
      const wgmma::Group g0 = wgmma::group_of<S, kBf16, kZero>(s0, f);
      const wgmma::Group g1 = wgmma::group_of<S, kBf16, kZero>(s1, f);
      fs[2 * gi] = g0.s, fs[2 * gi + 1] = g1.s;
      uint32_t z0 = 0, z1 = 0;
      if constexpr (kZero) {  // the zero point, exact in x's dtype (an int8)
        z0 = wgmma::pack_rn<kBf16>(g0.c - 136.0f, g0.c - 136.0f);
        z1 = wgmma::pack_rn<kBf16>(g1.c - 136.0f, g1.c - 136.0f);
      }
#pragma unroll
      for (int jj = 4 * gi / kGroups; jj < 4 * (gi + 1) / kGroups; ++jj) {
        const int pr = 8 * (jj & 1);
        a[jj][0] = decode_int(o.lo[0][jj >> 1] >> pr, z0);
        a[jj][1] = decode_int(o.lo[1][jj >> 1] >> pr, z1);
        a[jj][2] = decode_int(o.hi[0][jj >> 1] >> pr, z0);
        a[jj][3] = decode_int(o.hi[1][jj >> 1] >> pr, z1);
      }
    }
  };

  float acc[T::kAcc];
#pragma unroll
  for (int i = 0; i < T::kAcc; ++i) acc[i] = 0.0f;
  // Flush mode: a unit's tiles (tmp1: its second group's, with two), the two units' scales.
  float tmp0[T::kAcc], tmp1[T::kAcc], fs0[2 * kGroups], fs1[2 * kGroups];
  // acc[4 t + e] is row r + 8 (e / 2) of the warp's tile.
  auto flush = [&](const float(&fs)[2 * kGroups]) {
    wgmma::fence_acc(tmp0);
    if constexpr (kGroups == 2) wgmma::fence_acc(tmp1);
#pragma unroll
    for (int i = 0; i < T::kAcc; ++i) {
      acc[i] = __fmaf_rn(tmp0[i], fs[(i >> 1) & 1], acc[i]);
      if constexpr (kGroups == 2) acc[i] = __fmaf_rn(tmp1[i], fs[2 + ((i >> 1) & 1)], acc[i]);
    }
  };
  auto issue_unit = [&](float(&d)[T::kAcc], const uint32_t(&a)[4][4], uint32_t at) {
    wgmma::fence_acc(d);
    if constexpr (kFlush && kGroups == 2) wgmma::fence_acc(tmp1);
    wgmma::wgmma_fence();
    if constexpr (kFlush) {
      // d (tmp0) = the unit's first step, then the others; with two groups, tmp1 = steps 2, 3.
      wgmma_rs64<kBf16, false>(d, a[0], wgmma::desc_k128(at));
      wgmma_rs64<kBf16>(d, a[1], wgmma::desc_k128(at + 32));
      if constexpr (kGroups == 2) {
        wgmma_rs64<kBf16, false>(tmp1, a[2], wgmma::desc_k128(at + 64));
        wgmma_rs64<kBf16>(tmp1, a[3], wgmma::desc_k128(at + 96));
      } else {
        wgmma_rs64<kBf16>(d, a[2], wgmma::desc_k128(at + 64));
        wgmma_rs64<kBf16>(d, a[3], wgmma::desc_k128(at + 96));
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_rs_n<kBf16>(d, a[j], wgmma::desc_k128(at + j * 32));
    }
    wgmma::wgmma_commit();
  };

  // Scales: a ring of three segments' (indexed by compile-time constants only), each loaded
  // two segments before the decode that needs it.
  uint32_t a0[4][4], a1[4][4];
  tc::SegScales sc[3][2] = {};
  if constexpr (!kRowScale) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      sc[k][0] = rs0.load(s_begin + min(k, nseg - 1));
      sc[k][1] = rs1.load(s_begin + min(k, nseg - 1));
    }
  }
  Words o;
  async::mbar_wait(full, 0);
  WS_MARK(tid == 128, 2);
  load_words(0, 0, o);
  if constexpr (kFlush)
    decode_unit_int(0, o, sc[0][0], sc[0][1], a0, fs0);
  else
    decode_unit(0, o, sc[0][0], sc[0][1], a0);

  // The consumer warps' arrival on the empty barrier of stage `i` (both blocks' producers
  // write into this block's stages, or its own alone with k-ranges in the cluster).
  auto release = [&](int i) {
    if (lane != 0) return;
    const uint32_t bar = empty + 8u * static_cast<uint32_t>(i % kStages);
    if (ksplit) {
      mbar_arrive_cluster(bar, rank);
    } else {
      mbar_arrive_cluster(bar, 0);
      mbar_arrive_cluster(bar, 1);
    }
  };
  // Segment i, whose scales are sc[I] (I = i % 3).
  auto segment = [&](auto ring, int i) {
    constexpr int I = decltype(ring)::value, N = (I + 1) % 3;
    const uint32_t st = base + static_cast<uint32_t>((i % kStages) * kStageBytes);
    const int s3 = s_begin + min(i + 3, nseg - 1);  // sc[I] is free after the unit-1 decode
    if constexpr (kFlush) {
      // A unit's tile is added once its wgmmas are done (wait<0>: ptxas serialises every
      // wgmma of a kernel that reads accumulators under a wait<1>), so the next unit's decode
      // goes between its issue and that wait.
      issue_unit(tmp0, a0, st);  // unit 0: k 0..63 of segment i (x's first half)
      load_words(i, 1, o);
      decode_unit_int(1, o, sc[I][0], sc[I][1], a1, fs1);
      sc[I][0] = rs0.load(s3);
      sc[I][1] = rs1.load(s3);
      wgmma::wgmma_wait<0>();
      flush(fs0);
      issue_unit(tmp0, a1, st + kHalfBytes);  // unit 1: k 64..127
      if (i + 1 < nseg) {
        async::mbar_wait(full + 8u * static_cast<uint32_t>((i + 1) % kStages),
                         static_cast<uint32_t>(((i + 1) / kStages) & 1));
        load_words(i + 1, 0, o);
        decode_unit_int(0, o, sc[N][0], sc[N][1], a0, fs0);
      }
      wgmma::wgmma_wait<0>();
      flush(fs1);
      release(i);
      return;
    } else {
      // Unit 0: k 0..63 of segment i (x's first half).
      WS_T0(t_i0);
      issue_unit(acc, a0, st);
      WS_SUM(15, t_i0);
      WS_T0(t_w0);
      wgmma::wgmma_wait<1>();  // segment i - 1 is done: its stage is free
      wgmma::fence_acc(acc);
      WS_SUM(12, t_w0);
      if (i > 0) release(i - 1);
      WS_T0(t_l1);
      load_words(i, 1, o);
      WS_WORDS_LANDED(o.lo[0][0] ^ o.hi[1][1]);
      WS_SUM(16, t_l1);
      WS_T0(t_d1);
      decode_unit(1, o, sc[I][0], sc[I][1], a1);
      if constexpr (!kRowScale) {
        sc[I][0] = rs0.load(s3);
        sc[I][1] = rs1.load(s3);
      }
      WS_SUM(14, t_d1);
      // Unit 1: k 64..127 (x's second half).
      WS_T0(t_i1);
      issue_unit(acc, a1, st + kHalfBytes);
      WS_SUM(15, t_i1);
      WS_T0(t_w1);
      wgmma::wgmma_wait<1>();  // unit 0 is done: a0 is free
      wgmma::fence_acc(acc);
      WS_SUM(12, t_w1);
      if (i + 1 < nseg) {
        WS_T0(t_f);
        async::mbar_wait(full + 8u * static_cast<uint32_t>((i + 1) % kStages),
                         static_cast<uint32_t>(((i + 1) / kStages) & 1));
        WS_SUM(11, t_f);
        WS_T0(t_l0);
        load_words(i + 1, 0, o);
        WS_WORDS_LANDED(o.lo[0][0] ^ o.hi[1][1]);
        WS_SUM(16, t_l0);
        WS_T0(t_d0);
        decode_unit(0, o, sc[N][0], sc[N][1], a0);
        WS_SUM(14, t_d0);
      }
    }
  };
  for (int i = 0; i < nseg; i += 3) {
    segment(std::integral_constant<int, 0>{}, i);
    if (i + 1 < nseg) segment(std::integral_constant<int, 1>{}, i + 1);
    if (i + 2 < nseg) segment(std::integral_constant<int, 2>{}, i + 2);
  }
  wgmma::wgmma_wait<0>();
  wgmma::fence_acc(acc);
  if constexpr (kRowScale) {  // acc[4 t + e] is row r + 8 (e / 2): times its scale, in f32
    const float s0 = numeric_detail::float_of(rs0.load(0).w[0]);
    const float s1 = numeric_detail::float_of(rs1.load(0).w[0]);
#pragma unroll
    for (int i = 0; i < T::kAcc; ++i) acc[i] = __fmul_rn(acc[i], (i & 2) ? s1 : s0);
  }
  WS_MARK(tid == 128, 3);
  WS_SUMS_STORE(tid == 128);
  WS_MARK(tid == 256, 4);
  cluster_arrive();  // this block is done with the other's barriers and stages

  if (p.y_tma) {
    // y through the copy engine: each lane finishes its sums in registers (y_pair), stmatrix
    // writes them transposed into y's boxes ([x row][64 W rows], 128-byte swizzle) in the
    // stages, now free, and one thread stores both boxes. Rows past M or N are not written.
    float bias2[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = tile0 * 16 + 16 * warp + r + 8 * h;
      bias2[h] = p.bias && row < p.n
                     ? quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row))
                     : 0.0f;
    }
    const float global = S == Scale::e4m3 ? p.w.global[0] : 1.0f;
    uint32_t yw[T::kAcc / 2];  // [2 t + h]: W row r + 8 h, x rows 8 t + 2 q and + 1
#pragma unroll
    for (int t = 0; t < kRowsX / 8; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        yw[2 * t + h] = y_pair<kBf16>(acc[4 * t + 2 * h], acc[4 * t + 2 * h + 1], global, p.bias,
                                      bias2[h], bias2[h]);
    asm volatile("bar.sync 1, 256;" ::: "memory");  // both warpgroups' wgmmas are done
    WS_MARK(tid == 128, 5);
    // Matrix l / 8 of each stmatrix: x rows 8 (t + l / 16) .., W rows 16 warp + 8 ((l / 8) % 2)
    // .. + 7: one 16-byte chunk of the box of the warp's half of the block's 128 W rows.
    const int mi = lane >> 3;
    const uint32_t box = base + static_cast<uint32_t>((warp >> 2) * kRowsX * 128);
    const uint32_t chunk = static_cast<uint32_t>(2 * (warp & 3) + (mi & 1));
#pragma unroll
    for (int t = 0; t < kRowsX / 8; t += 2) {
      const uint32_t xrow = static_cast<uint32_t>(8 * (t + (mi >> 1)) + (lane & 7));
      stmatrix_x4_trans(box + xrow * 128u + ((chunk ^ (xrow & 7u)) << 4), yw[2 * t], yw[2 * t + 1],
                        yw[2 * t + 2], yw[2 * t + 3]);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // visible to the copy engine
    asm volatile("bar.sync 1, 256;" ::: "memory");
    WS_MARK(tid == 128, 6);
    if (tid == 128) {
      const int n0 = static_cast<int>(tile0 * 16);
      if (n0 < p.n) tma_store(&y_map, n0, m0, base);  // (a W pair's second block may lie past N)
      if (n0 + 64 < p.n) tma_store(&y_map, n0 + 64, m0, base + kRowsX * 128);
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      // The block's shared memory must outlive the copy engine's reads of it.
      asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    }
    WS_MARK(tid == 128, 7);
    cluster_wait();
    return;
  }

  // The epilogue goes through shared memory (free once both consumer warpgroups are past
  // their last wgmma; nothing more lands there: every stage the peer filled was waited for):
  // the fragments into an f32 tile [x row][W row], then each row of y written 8 W rows per
  // lane, 16 bytes at once. Storing the fragments directly (2-byte stores, half a 32-byte
  // sector each) took 0.5 ms for a 58 MB y on the H100.
  asm volatile("bar.sync 1, 256;" ::: "memory");
  WS_MARK(tid == 128, 5);
  float* const tile = reinterpret_cast<float*>(smem_raw + (base - raw));
  // acc[4 t + e] is row (of W) 16 warp + r + 8 (e / 2), column (row of x) 8 t + 2 q + e % 2.
#pragma unroll
  for (int t = 0; t < kRowsX / 8; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      tile[(8 * t + 2 * q + (e & 1)) * kOutStride + 16 * warp + r + 8 * (e >> 1)] = acc[4 * t + e];
  asm volatile("bar.sync 1, 256;" ::: "memory");
  WS_MARK(tid == 128, 6);
  if (ksplit) {  // both blocks of the cluster have written their tiles
    cluster_wait();
    cluster_sync();
  }
  const int ct = tid - 128, j = ct & 15;
  const int64_t row0 = tile0 * 16 + 8 * j;  // this lane's 8 rows of W
  const bool mine = row0 < p.n;
  const bool whole = row0 + 8 <= p.n;
  // Chained pairs (split 4): the first pair writes its half blocks' sums to p.partial and
  // raises their flags; the second waits for its half's flag (the first pair was dispatched
  // before it, so it runs or has finished: no deadlock), adds those sums before its own
  // ((r0 + r1) + (r2 + r3): deterministic), lowers the flag for the next call and writes y.
  const bool chain = ksplit && p.split > 2;
  const bool chain_first = chain && blockIdx.z < 2;
  const bool writes_y = !p.partial || (chain && !chain_first);
  const float global = S == Scale::e4m3 && writes_y ? p.w.global[0] : 1.0f;
  const bool y_vec =
      writes_y && whole && reinterpret_cast<uintptr_t>(p.y) % 16 == 0 && p.y_stride % 8 == 0;
  float bias[8];
#pragma unroll
  for (int e = 0; e < 8; ++e)
    bias[e] = p.bias && writes_y && row0 + e < p.n
                  ? quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row0 + e))
                  : 0.0f;
  // Rows of x this block writes: all, or with two k-ranges in the cluster its half (both
  // tiles read through distributed shared memory and added in range order, as
  // medium::reduce_kernel adds the workspace's).
  const int share = ksplit ? kRowsX / 2 : kRowsX, c_end = static_cast<int>(zr + 1) * share;
  unsigned long long* const flag =
      chain ? p.flags + ((static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * 2 + zr)
            : nullptr;
  if (chain && !chain_first) {
    if (ct == 0)
      while (flag_acquire(flag) != p.tag) __nanosleep(64);
    asm volatile("bar.sync 1, 256;" ::: "memory");
  }
  for (int cc = static_cast<int>(zr) * share + (ct >> 4); mine && cc < c_end && m0 + cc < p.m;
       cc += 16) {
    const int c = m0 + cc;
    float v[8];
    float4 lo, hi;
    if (!ksplit) {
      lo = *reinterpret_cast<const float4*>(tile + cc * kOutStride + 8 * j);
      hi = *reinterpret_cast<const float4*>(tile + cc * kOutStride + 8 * j + 4);
    } else {
      const uint32_t at = base + static_cast<uint32_t>((cc * kOutStride + 8 * j) * 4);
      lo = ld_cluster_f4(at, 0), hi = ld_cluster_f4(at + 16u, 0);
      const float4 l = ld_cluster_f4(at, 1), h = ld_cluster_f4(at + 16u, 1);
      lo.x = __fadd_rn(lo.x, l.x), lo.y = __fadd_rn(lo.y, l.y);
      lo.z = __fadd_rn(lo.z, l.z), lo.w = __fadd_rn(lo.w, l.w);
      hi.x = __fadd_rn(hi.x, h.x), hi.y = __fadd_rn(hi.y, h.y);
      hi.z = __fadd_rn(hi.z, h.z), hi.w = __fadd_rn(hi.w, h.w);
    }
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
    // Only the common cases are written out here; the rest are rolled loops. (With every
    // variant unrolled this loop was ~2000 instructions and took 15 us per block: 28% of a
    // block's time at K = 4096.)
    if (!writes_y) {  // this range's partial sums (the first pair's: one [m][n] slice)
      const int64_t slice = chain ? 0 : blockIdx.z;
      float* dst = p.partial + (slice * p.m + c) * p.n + row0;
      if (whole && p.n % 4 == 0) {
        reinterpret_cast<float4*>(dst)[0] = lo;
        reinterpret_cast<float4*>(dst)[1] = hi;
      } else {
        store_f32_tail(dst, v, static_cast<int>(std::min<int64_t>(8, p.n - row0)));
      }
      continue;
    }
    const float* const sums = chain ? p.partial + static_cast<int64_t>(c) * p.n + row0 : nullptr;
    if (y_vec) {
      store_y8<kBf16>(p, c, row0, v, sums, global, bias);
    } else {
      store_y_tail(p, c, row0, v, sums, global);
    }
  }
  if (chain) {
    asm volatile("bar.sync 1, 256;" ::: "memory");  // every sum of this half block is written
    if (ct == 0) {
      if (chain_first) {
        __threadfence();
        flag_release(flag, p.tag);
      } else {
        *flag = 0ull;  // read: the next call's pairs find it lowered
      }
    }
  }
  WS_MARK(tid == 128, 7);
  if (ksplit)
    cluster_sync();  // no block leaves while the other reads its tile
  else
    cluster_wait();
#else
  (void)p, (void)x_map, (void)y_map;
#endif
}

/// The launch configuration of a grid of (x blocks, W blocks, k-ranges), clusters of two
/// blocks along W, or along K (`ksplit`); the kernel's shared memory allowed once.
template <Code C, Scale S, int SL, bool kBf16, bool kZero, int RX>
cudaLaunchConfig_t ws_config(unsigned xblocks, unsigned wblocks, int split, bool ksplit,
                             cudaLaunchAttribute& cluster) {
  constexpr auto kernel = &ws_kernel<C, S, SL, kBf16, kZero, RX>;
  using T = Tiling<RX, tc::Format::wide(C)>;
  static mm_cuda::SmemOptIn optin;
  mm_cuda::check_cuda(optin.allow(kernel, T::kSmemBytes), "matmul: shared memory of ws_kernel");
  cudaLaunchConfig_t cfg{};
  // A W pair's second block may lie past the last tile (it stores nothing).
  cfg.gridDim =
      dim3(xblocks, ksplit ? wblocks : (wblocks + 1) / 2 * 2, static_cast<unsigned>(split));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = T::kSmemBytes;
  cluster = {};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 1;
  cluster.val.clusterDim.y = ksplit ? 1 : 2;
  cluster.val.clusterDim.z = ksplit ? 2 : 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  return cfg;
}

/// Clusters of two blocks the device runs at once (asked once).
template <Code C, Scale S, int SL, bool kBf16, bool kZero, int RX>
int max_pairs() {
  static const int count = [] {
    int r = 0;
    cudaLaunchAttribute cluster;
    const cudaLaunchConfig_t cfg = ws_config<C, S, SL, kBf16, kZero, RX>(1, 1, 2, true, cluster);
    mm_cuda::check_cuda(
        cudaOccupancyMaxActiveClusters(&r, &ws_kernel<C, S, SL, kBf16, kZero, RX>, &cfg),
        "matmul: clusters of ws_kernel");
    return r;
  }();
  return count;
}

template <Code C, Scale S, int SL, bool kBf16, bool kZero, int RX>
void launch(const Args& a, const CUtensorMap& x_map, const CUtensorMap& y_map,
            cudaStream_t stream) {
  if (a.cluster_split && a.split != 2 && (a.split != 4 || !a.flags))
    throw_error(ErrorCode::internal,
                "matmul: ws_kernel adds 2 k-ranges in a cluster or 4 in two "
                "chained clusters, not " +
                    std::to_string(a.split));
  const int64_t wblocks = (a.tiles + kTilesPerBlock - 1) / kTilesPerBlock;
  cudaLaunchAttribute cluster;
  cudaLaunchConfig_t cfg = ws_config<C, S, SL, kBf16, kZero, RX>(
      static_cast<unsigned>((a.m + RX - 1) / RX), static_cast<unsigned>(wblocks), a.split,
      a.cluster_split, cluster);
  cfg.stream = stream;
  mm_cuda::check_cuda(
      cudaLaunchKernelEx(&cfg, &ws_kernel<C, S, SL, kBf16, kZero, RX>, a, x_map, y_map),
      "matmul: ws_kernel launch");
#ifdef LOWBIT_WS_TRACE
  if (std::getenv("LOWBIT_WS_TRACE")) ws_trace_report(cfg.gridDim, stream);
#endif
  if (a.split > 1 && !a.cluster_split) medium::launch_reduce(a, stream);
}

#endif  // __CUDACC__

}  // namespace lowbit::wgmma_ws

#if defined(__CUDACC__)
namespace lowbit::wgmma {

/// Both kernels' launches of one instantiation: 4-bit codes the one-wave kernel and the ws
/// kernel's 256- and 64-row tilings, 8-bit codes the ws kernel's 128-row tiling.
template <Code C, Scale S, int SL, bool kBf16, bool kZero>
Launcher pick_dtype() {
  namespace ws = wgmma_ws;
  if constexpr (tc::Format::wide(C)) {
    return {nullptr,
            {nullptr, nullptr, &ws::launch<C, S, SL, kBf16, kZero, 128>},
            {nullptr, nullptr, &ws::max_pairs<C, S, SL, kBf16, kZero, 128>}};
  } else {
    return {
        &launch<C, S, SL, kBf16, kZero>,
        {&ws::launch<C, S, SL, kBf16, kZero, 256>, &ws::launch<C, S, SL, kBf16, kZero, 64>},
        {&ws::max_pairs<C, S, SL, kBf16, kZero, 256>, &ws::max_pairs<C, S, SL, kBf16, kZero, 64>}};
  }
}
template <Code C, Scale S, int SL, bool kZero>
Launcher pick(bool bf16) {
  return bf16 ? pick_dtype<C, S, SL, true, kZero>() : pick_dtype<C, S, SL, false, kZero>();
}

}  // namespace lowbit::wgmma
#endif
