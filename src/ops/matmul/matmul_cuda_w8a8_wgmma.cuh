// The kernel of matmul_cuda_w8a8_wgmma: W8A8 y = (x_codes · W_codes^T) * sx * sw (+ bias) for
// fp8 (e4m3 / e5m2, any pair) and int8 codes on Hopper (sm_90a), both operands from shared
// memory (wgmma SS), as a template instantiated by matmul_cuda_w8a8_wgmma.cu (the plan).
//
// Why our own GEMM: cuBLASLt 13 on sm_90 has no algorithm for fp8 with per-row scales
// (OUTER_VEC_32F), so matmul_cuda_w8a8_lt ran an unscaled fp8 GEMM into f32 sums in global
// memory and a second kernel to scale and round them, and for int8 an IMMA GEMM into i32 sums
// and the same epilogue: 4 + 6 bytes per output element of extra traffic and a second launch,
// 0.57-0.97x torch._scaled_mm (row-wise) at M >= 256 on the H100. Here the scales, the bias
// and the rounding happen on the accumulators in registers.
//
//   block = 3 warpgroups (384 threads), one per SM, persistent over the tiles. Warpgroup 0 is
//           the producer: one thread asks the tensor-memory accelerator for each stage once
//           the consumers have freed it, running ahead across tiles (so the next tile's first
//           stages load while the consumers finish a tile); it gives its registers to the
//           others (setmaxnreg). Warpgroups 1 and 2 are the consumers: rows 64 c .. 64 c + 63
//           of the tile's 128 rows of x, all BN rows of W.
//   tile  = 128 rows of x by BN rows of W (64, 128 or 256: the plan picks the one whose
//           tiles fill the SMs' waves best), tile t = (t % tiles_m, t / tiles_m): the blocks
//           running at once share a few stretches of W, which stay in L2.
//   stage = 128 k of both operands: x [128][128 bytes] and W [BN][128 bytes], 128-byte
//           swizzled (one box each; rows past M or N and k past K arrive as zeros), a "full"
//           mbarrier counting the bytes, an "empty" one the 8 consumer warps done with it.
//   step  = 32 k: per consumer one wgmma.m64nNk32 (N = min(BN, 128)) per 128 rows of W, A = x
//           (K-major, the wgmma's only layout for 8-bit types: both operands are K-major rows
//           here, as the codes lie in memory), B = W.
// Sums: int8 codes are multiplied and summed exactly in s32 (|sum| <= K * 128^2 < 2^31: the
// plan caps K at 2^17). For fp8 the tensor cores' own sums keep about 14 bits (measured, see
// matmul_cuda_w8a8.cu), so each 128-k stage is summed into a tile of its own and added to
// the f32 accumulators there ("promotion", as cuBLASLt does without fast accumulation).
// End: y[m][n] = f32(sum) * sx * sw (+ bias), each product rounded in f32 in that order, one
// rounding to y: matmul_cuda_w8a8_lt's epilogue, so int8 results are that plan's bits. The
// scales and bias are loaded at the tile's start (one per thread) into a table per consumer;
// 16-bit y leaves through each warp's staging rows (stmatrix) as 16-byte stores of whole
// 128-byte rows where the rows are aligned, element by element elsewhere.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda/cuda_async.cuh"
#include "ops/matmul/matmul_cuda_wgmma.cuh"

namespace lowbit::w8a8_wgmma {

/// The code types of x (the A operand) and W (B).
enum class Pair : int { e4m3_e4m3, e4m3_e5m2, e5m2_e4m3, e5m2_e5m2, s8_s8 };

inline constexpr int kThreads = 384;
inline constexpr int kRowsX = 128;   ///< rows of x per tile (2 consumers x 64)
inline constexpr int kStageK = 128;  ///< k per stage: one 128-byte swizzled row
inline constexpr int kXBytes = kRowsX * kStageK;
inline constexpr int kMaxK = 1 << 17;  ///< int8: |sum| < 2^31
/// Bytes between a warp's staging rows for 16-bit y (16 rows of 64 values): 16 bytes of
/// padding, so that stmatrix's 8 rows of a matrix fall in different banks.
inline constexpr int kStageRow = 144;

template <int BN>
struct Tiling {
  static constexpr int kWBytes = BN * kStageK;
  static constexpr int kStageBytes = kXBytes + kWBytes;
  /// As many stages as fit in 200 KB (8 at most): 8 / 6 / 4 for BN = 64 / 128 / 256.
  static constexpr int kStages = std::min(8, (200 * 1024) / kStageBytes);
  /// Each consumer's W scales and bias of a tile's columns, as f32.
  static constexpr int kEndBytes = 2 * 2 * BN * 4;
  /// Each consumer warp's staging rows for 16-bit y (kStageRow apart).
  static constexpr int kStagingBytes = 8 * 16 * kStageRow;
  /// The stages, their full and empty barriers, the consumers' scale tables, and room to
  /// align the stages to 1024 bytes.
  static constexpr int kSmemBytes =
      kStages * kStageBytes + 16 * kStages + kEndBytes + kStagingBytes + 1024;
};

/// What a launch needs besides the two tensor maps.
struct Params {
  int m = 0, n = 0;
  int kblocks = 0;             ///< stages per tile: ceil(K / 128)
  int tiles_m = 0;             ///< tiles along M
  int tiles = 0;               ///< tiles_m * tiles along N
  const void* sx = nullptr;    ///< x's scales: [M] (per token) or [1]
  const void* sw = nullptr;    ///< W's scales: [N] (per channel) or [1]
  const void* bias = nullptr;  ///< [N] in y's dtype, or null
  void* y = nullptr;
  int64_t y_stride = 0;  ///< elements between rows of y
  Dtype sxd = Dtype::f32, swd = Dtype::f32, yd = Dtype::bf16;
  bool sx_row = false, sw_row = false;
};

#if defined(__CUDACC__)

// ---- wgmma with 8-bit operands from shared memory -------------------------------------------
// (generated text: the operand lists of m64nNk32 with N / 2 accumulator registers per lane)

#define LB_WGMMA8_F32_N64(TYPE)                                                                    \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k32."                                                    \
      "f32." TYPE                                                                                  \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "                \
      "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                  \
      "}, %32, %33, p, 1, 1;\n}\n"                                                                 \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                         \
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate))                                          \
      : "memory")

#define LB_WGMMA8_S32_N64()                                                                        \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k32."                                                    \
      "s32.s8.s8"                                                                                  \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "                \
      "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                  \
      "}, %32, %33, p;\n}\n"                                                                       \
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),        \
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),    \
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), \
        "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), \
        "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])                                         \
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate))                                          \
      : "memory")

#define LB_WGMMA8_F32_N128(TYPE)                                                                   \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k32."                                                   \
      "f32." TYPE                                                                                  \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "                \
      "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, "                \
      "%47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "                \
      "%62, %63"                                                                                   \
      "}, %64, %65, p, 1, 1;\n}\n"                                                                 \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63])                                                                                \
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate))                                          \
      : "memory")

#define LB_WGMMA8_S32_N128()                                                                       \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k32."                                                   \
      "s32.s8.s8"                                                                                  \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, "                \
      "%17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, "                \
      "%47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "                \
      "%62, %63"                                                                                   \
      "}, %64, %65, p;\n}\n"                                                                       \
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),        \
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),    \
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), \
        "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), \
        "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), \
        "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), \
        "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), \
        "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), \
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), \
        "+r"(d[63])                                                                                \
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate))                                          \
      : "memory")

/// d (+)= A · B, one m64nNk32 step (A, B: shared-memory descriptors); `accumulate` false:
/// d = A · B.
template <Pair P, int N, class Acc>
__device__ __forceinline__ void mma(Acc (&d)[N / 2], uint64_t a, uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (P == Pair::s8_s8) {
    if constexpr (N == 64) {
      LB_WGMMA8_S32_N64();
    } else {
      LB_WGMMA8_S32_N128();
    }
  } else if constexpr (N == 64) {
    if constexpr (P == Pair::e4m3_e4m3) LB_WGMMA8_F32_N64("e4m3.e4m3");
    if constexpr (P == Pair::e4m3_e5m2) LB_WGMMA8_F32_N64("e4m3.e5m2");
    if constexpr (P == Pair::e5m2_e4m3) LB_WGMMA8_F32_N64("e5m2.e4m3");
    if constexpr (P == Pair::e5m2_e5m2) LB_WGMMA8_F32_N64("e5m2.e5m2");
  } else {
    if constexpr (P == Pair::e4m3_e4m3) LB_WGMMA8_F32_N128("e4m3.e4m3");
    if constexpr (P == Pair::e4m3_e5m2) LB_WGMMA8_F32_N128("e4m3.e5m2");
    if constexpr (P == Pair::e5m2_e4m3) LB_WGMMA8_F32_N128("e5m2.e4m3");
    if constexpr (P == Pair::e5m2_e5m2) LB_WGMMA8_F32_N128("e5m2.e5m2");
  }
#else
  (void)d, (void)a, (void)b, (void)accumulate;
#endif
}

/// Pins registers the tensor cores write: no read or copy of them moves across.
template <class Acc, int R>
__device__ __forceinline__ void pin(Acc (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if constexpr (std::is_same_v<Acc, float>)
      asm volatile("" : "+f"(d[i])::"memory");
    else
      asm volatile("" : "+r"(d[i])::"memory");
  }
}

/// y's element types as the end writes them: one compact loop per dtype (a run-time switch
/// inside the unrolled loop made the end 30-40k instructions, out of the instruction cache:
/// measured 3-4x a tile's time on the H100).
enum class Out : int { bf16, f16, f32 };

/// Two 16-bit results, rounded as f32_to_bf16 / f32_to_f16 round them (the hardware
/// conversion, NaN given the reference's pattern: quantize_cuda_common.cuh).
template <Out Y>
__device__ __forceinline__ uint32_t pack16(float lo, float hi) {
  return Y == Out::bf16 ? quant_cuda::bf16x2_rn(lo, hi) : quant_cuda::f16x2_rn(lo, hi);
}

/// The end of a tile for one dtype of y: acc[h][4 t + e] is row 16 warp + r + 8 (e / 2) of
/// the consumer's 64 rows of x, column (row of W) WN h + 8 t + 2 q + e % 2 of the tile;
/// `table` holds the tile's W scales, then its bias (f32).
template <Out Y, int BN, int WN, int H, int R, class Acc>
__device__ __forceinline__ void end_tile(const Params& p, const Acc (&acc)[H][R],
                                         const float* table, const float (&sx)[2], int row0,
                                         int col0, int q, bool pair_ok, uint32_t staging,
                                         bool wide_ok) {
  using Elem = std::conditional_t<Y == Out::f32, float, uint16_t>;
  Elem* const y = static_cast<Elem*>(p.y);
  const bool bias = p.bias != nullptr;
  auto value = [&](int h, int t, int half, int e, float sw, float b) {
    float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[h][4 * t + 2 * half + e]), sx[half]), sw);
    return bias ? __fadd_rn(v, b) : v;
  };
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int wrow0 = row0 - (lane >> 2);  // the warp's first row
#pragma unroll
  for (int h = 0; h < H; ++h)
#pragma unroll
    for (int t0 = 0; t0 < R / 4; t0 += 8) {
      // 16-bit y, the warp's 16 rows x 64 columns inside y and y's rows 16-byte aligned: the
      // fragments go through the warp's staging rows (stmatrix), then out 16 bytes per lane,
      // whole 128-byte rows per 8 lanes (the fragments' own layout writes 16 bytes of each of 8
      // rows per store instruction).
      if constexpr (Y != Out::f32) {
        const int c0 = col0 + h * WN + 8 * t0;
        if (wide_ok && wrow0 + 15 < p.m && c0 + 63 < p.n) {
#pragma unroll
          for (int t = t0; t < t0 + 8; t += 2) {
            uint32_t w[4];
#pragma unroll
            for (int k = 0; k < 4;
                 ++k) {  // matrices: (rows 0-7, t), (8-15, t), (0-7, t+1), (8-15, t+1)
              const int tt = t + (k >> 1), half = k & 1;
              const int tc = h * WN + 8 * tt + 2 * q;
              w[k] = pack16<Y>(value(h, tt, half, 0, table[tc], table[BN + tc]),
                               value(h, tt, half, 1, table[tc + 1], table[BN + tc + 1]));
            }
            const int mi = lane >> 3, ri = lane & 7;
            const uint32_t at = staging + static_cast<uint32_t>((ri + 8 * (mi & 1)) * kStageRow +
                                                                (8 * (t - t0 + (mi >> 1))) * 2);
            asm volatile(
                "stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(at),
                "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                : "memory");
          }
          __syncwarp();
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int chunk = lane + 32 * i, row = chunk >> 3, part = chunk & 7;
            uint4 v;
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                         : "r"(staging + static_cast<uint32_t>(row * kStageRow + part * 16))
                         : "memory");
            *reinterpret_cast<uint4*>(y + static_cast<int64_t>(wrow0 + row) * p.y_stride + c0 +
                                      8 * part) = v;
          }
          __syncwarp();
          continue;
        }
      }
#pragma unroll
      for (int t = t0; t < t0 + 8 && t < R / 4; ++t) {
        const int tc = h * WN + 8 * t + 2 * q;  // column within the tile
        const int col = col0 + tc;
        if (col >= p.n) continue;
        const bool both = col + 1 < p.n;
        const float sw0 = table[tc], sw1 = table[tc + 1];
        const float b0 = table[BN + tc], b1 = table[BN + tc + 1];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = row0 + 8 * half;
          if (row >= p.m) continue;
          const float v0 = value(h, t, half, 0, sw0, b0), v1 = value(h, t, half, 1, sw1, b1);
          Elem* const at = y + static_cast<int64_t>(row) * p.y_stride + col;
          if constexpr (Y == Out::f32) {
            if (both && pair_ok) {
              *reinterpret_cast<float2*>(at) = make_float2(v0, v1);
            } else {
              at[0] = v0;
              if (both) at[1] = v1;
            }
          } else {
            const uint32_t w = pack16<Y>(v0, v1);
            if (both && pair_ok) {
              *reinterpret_cast<uint32_t*>(at) = w;
            } else {
              at[0] = static_cast<uint16_t>(w);
              if (both) at[1] = static_cast<uint16_t>(w >> 16);
            }
          }
        }
      }
    }
}

template <Pair P, int BN>
__global__ void __launch_bounds__(kThreads, 1)
    w8a8_kernel(const Params p, const __grid_constant__ CUtensorMap x_map,
                const __grid_constant__ CUtensorMap w_map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = Tiling<BN>;
  constexpr bool kInt = P == Pair::s8_s8;
  constexpr int WN = BN < 128 ? BN : 128;  // one wgmma's N
  constexpr int H = BN / WN;               // wgmmas per step
  constexpr int R = WN / 2;                // accumulator registers per wgmma and lane
  using Acc = std::conditional_t<kInt, int, float>;
  constexpr int kStages = T::kStages, kStageBytes = T::kStageBytes;

  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;        // swizzle atoms are 1024-byte aligned
  const uint32_t full = base + kStages * kStageBytes;  // stage s landed
  const uint32_t empty = full + 8 * kStages;           // stage s consumed by all 8 warps
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&x_map)) : "memory");
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&w_map)) : "memory");
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      async::mbar_init(full + 8u * s, 1);
      async::mbar_init(empty + 8u * s, 8);
    }
    async::mbar_init_fence();
  }
  __syncthreads();

  if (tid < 128) {  // the producer warpgroup: one thread issues every copy
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid != 0) return;
    int st = 0;
    uint32_t phase = 0;
    for (int tile = static_cast<int>(blockIdx.x); tile < p.tiles;
         tile += static_cast<int>(gridDim.x)) {
      const int tm = tile % p.tiles_m, tn = tile / p.tiles_m;
      for (int kb = 0; kb < p.kblocks; ++kb) {
        async::mbar_wait(empty + 8u * st, phase ^ 1u);  // the first round passes at once
        const uint32_t dst = base + static_cast<uint32_t>(st * kStageBytes);
        const uint32_t bar = full + 8u * st;
        async::mbar_expect_tx(bar, kStageBytes);  // boxes count whole, zero-filled or not
        wgmma::tma_load(dst, &x_map, kb * kStageK, tm * kRowsX, bar);
        wgmma::tma_load(dst + kXBytes, &w_map, kb * kStageK, tn * BN, bar);
        if (++st == kStages) st = 0, phase ^= 1u;
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");

  const int c = (tid >> 7) - 1;  // consumer 0 / 1: rows 64 c .. 64 c + 63 of the tile
  const int warp = (tid >> 5) & 3, lane = tid & 31, r = lane >> 2, q = lane & 3;
  const int ct = tid & 127;  // thread within the consumer
  // This consumer's table: W's scales of the tile's BN columns, then the bias (f32).
  float* const end_table =
      reinterpret_cast<float*>(smem_raw + (full - raw) + 16 * kStages) + c * 2 * BN;
  constexpr int kPerThread = (BN + 127) / 128;  // table entries each thread fills
  const uint32_t staging = full + 16u * kStages + static_cast<uint32_t>(T::kEndBytes) +
                           static_cast<uint32_t>(((tid >> 5) - 4) * 16 * kStageRow);
  const bool wide_ok = (p.y_stride % 8) == 0 && (reinterpret_cast<uintptr_t>(p.y) % 16) == 0;
  const float sw_all = p.sw_row ? 0.0f : quant_cuda::load_scale(p.sw, p.swd, 0);
  const bool pair_ok = (p.y_stride % 2) == 0 &&
                       (reinterpret_cast<uintptr_t>(p.y) % (p.yd == Dtype::f32 ? 8 : 4)) == 0;
  int st = 0;
  uint32_t phase = 0;
  Acc acc[H][R];
  [[maybe_unused]] float part[R];  // fp8: one stage's sums
  if constexpr (!kInt) {
#pragma unroll
    for (int i = 0; i < R; ++i) part[i] = 0.0f;
  }
  for (int tile = static_cast<int>(blockIdx.x); tile < p.tiles;
       tile += static_cast<int>(gridDim.x)) {
    const int tm = tile % p.tiles_m, tn = tile / p.tiles_m;
#pragma unroll
    for (int h = 0; h < H; ++h)
#pragma unroll
      for (int i = 0; i < R; ++i) acc[h][i] = Acc(0);
    // The tile's scales and bias, asked for now and used at its end: loaded one per thread
    // while the tensor cores run (loaded in the end's loop instead, each waited for behind
    // the stores before it: measured 3-4x the tile's time on the H100).
    const int row0 = tm * kRowsX + c * 64 + warp * 16 + r;
    float sx[2], tab_sw[kPerThread], tab_bias[kPerThread];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = min(row0 + 8 * e, p.m - 1);
      sx[e] = quant_cuda::load_scale(p.sx, p.sxd, p.sx_row ? static_cast<uint64_t>(row) : 0);
    }
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int col = min(tn * BN + ct + 128 * i, p.n - 1);
      tab_sw[i] =
          p.sw_row ? quant_cuda::load_scale(p.sw, p.swd, static_cast<uint64_t>(col)) : sw_all;
      tab_bias[i] = p.bias ? quant_cuda::load_any(p.bias, p.yd, static_cast<uint64_t>(col)) : 0.0f;
    }

    for (int kb = 0; kb < p.kblocks; ++kb) {
      async::mbar_wait(full + 8u * st, phase);
      const uint32_t xs = base + static_cast<uint32_t>(st * kStageBytes + c * 64 * kStageK);
      const uint32_t ws = base + static_cast<uint32_t>(st * kStageBytes + kXBytes);
      if constexpr (kInt) {
#pragma unroll
        for (int h = 0; h < H; ++h) pin(acc[h]);
        wgmma::wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int h = 0; h < H; ++h)
            mma<P, WN>(acc[h], wgmma::desc_k128(xs + 32u * j),
                       wgmma::desc_k128(ws + static_cast<uint32_t>(h * WN * kStageK) + 32u * j),
                       true);
        wgmma::wgmma_commit();
        wgmma::wgmma_wait<0>();
#pragma unroll
        for (int h = 0; h < H; ++h) pin(acc[h]);
      } else {
#pragma unroll
        for (int h = 0; h < H; ++h) {
          pin(part);
          wgmma::wgmma_fence();
#pragma unroll
          for (int j = 0; j < 4; ++j)
            mma<P, WN>(part, wgmma::desc_k128(xs + 32u * j),
                       wgmma::desc_k128(ws + static_cast<uint32_t>(h * WN * kStageK) + 32u * j),
                       j > 0);
          wgmma::wgmma_commit();
          wgmma::wgmma_wait<0>();
          pin(part);
#pragma unroll
          for (int i = 0; i < R; ++i) acc[h][i] = __fadd_rn(acc[h][i], part[i]);
        }
      }
      __syncwarp();
      if (lane == 0) async::mbar_arrive(empty + 8u * st);
      if (++st == kStages) st = 0, phase ^= 1u;
    }

    // The end: the table into shared memory; the consumer's 4 warps meet at a named barrier
    // once it is written and again once it has been read (a faster warp's next tile must
    // not overwrite it early).
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
      if (ct + 128 * i < BN) {
        end_table[ct + 128 * i] = tab_sw[i];
        end_table[BN + ct + 128 * i] = tab_bias[i];
      }
    asm volatile("bar.sync %0, 128;" ::"r"(1 + c) : "memory");
    switch (p.yd) {
      case Dtype::bf16:
        end_tile<Out::bf16, BN, WN, H, R>(p, acc, end_table, sx, row0, tn * BN, q, pair_ok, staging,
                                          wide_ok);
        break;
      case Dtype::f16:
        end_tile<Out::f16, BN, WN, H, R>(p, acc, end_table, sx, row0, tn * BN, q, pair_ok, staging,
                                         wide_ok);
        break;
      default:
        end_tile<Out::f32, BN, WN, H, R>(p, acc, end_table, sx, row0, tn * BN, q, pair_ok, staging,
                                         wide_ok);
        break;
    }
    asm volatile("bar.sync %0, 128;" ::"r"(1 + c) : "memory");
  }
#else
  (void)p, (void)x_map, (void)w_map;
#endif
}

#endif  // __CUDACC__

/// One instantiation's launch (the plan fills the grid: min(tiles, SMs) blocks).
using Launch = void (*)(const Params&, const CUtensorMap&, const CUtensorMap&, int grid,
                        cudaStream_t);

}  // namespace lowbit::w8a8_wgmma
