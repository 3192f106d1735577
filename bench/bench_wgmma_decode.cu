// Where a 4-bit decode's operands should go: the ws kernels' consumers decode a unit's A
// operands (16 registers per lane, wgmma::NibbleDecoder on code words from shared memory)
// while the previous unit's wgmmas run, with A read from registers (RS). This measures, with
// nothing else in the loop (no copies, no barriers between blocks), a unit's SM cycles for
//   wgmma   the 4 wgmmas alone (as bench_wgmma_rate);
//   decode  the decode alone (code words from shared memory into 16 registers);
//   RS      both, A from registers (the ws kernels' loop); also with the decode's two halves
//           between the wgmmas, and with the pairs packed by PRMT (truncation: is F2FP the
//           contended unit?);
//   SS      both, the decoded registers stored into shared memory with stmatrix (a 128-byte
//           swizzled 64 x 64 tile per warpgroup, two of them in turn), a proxy fence and a
//           warpgroup barrier (also without it: unsafe, timing only), and A read from there;
// for 1-3 warpgroups per SM and the two wgmma shapes (m64n64k16, m64n256k16); and the other
// arrangement (split_kernel below): x as A, W decoded into B tiles by warpgroups of their own.
// Results and reading: BENCHMARKS.md, "Issue 4 in session 17". Standalone (no lowbit library):
//   nvcc -arch=sm_90a -std=c++20 --expt-relaxed-constexpr -DLOWBIT_HAS_CUDA=1 -Iinclude -Isrc \
//     bench/bench_wgmma_decode.cu
//   bench_wgmma_decode [--iters N]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "wgmma_bench.cuh"

namespace {

using namespace lowbit;
using wgmma_bench::wgmma_ss;

/// Four 8 x 8 matrices of 16-bit pairs (the mma fragment: row lane / 4, columns 2 (lane % 4)
/// and + 1 of each) into shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t (&a)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr),
               "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3])
               : "memory");
}

enum class Mode { wgmma, decode, rs, ss, ss_nobar, rs_il, decode_prmt, rs_prmt };
const char* name(Mode m) {
  switch (m) {
    case Mode::wgmma:
      return "wgmma";
    case Mode::decode:
      return "decode";
    case Mode::rs:
      return "RS";
    case Mode::ss:
      return "SS";
    case Mode::ss_nobar:
      return "SS, no barrier (unsafe)";
    case Mode::rs_il:
      return "RS, decode between the wgmmas";
    case Mode::decode_prmt:
      return "decode, pack by PRMT (truncates)";
    case Mode::rs_prmt:
      return "RS, pack by PRMT (truncates)";
  }
  return "?";
}

// Shared memory: B (x) 32 KB at 0, code words 8 KB at 32 KB, per warpgroup two A tiles of
// 8 KB from 40 KB (three warpgroups).
constexpr uint32_t kCodes = 32768, kA = 40960;
constexpr int kSmem = 40960 + 3 * 2 * 8192 + 1024;

template <int kN>
inline constexpr int kBlock = kN == 64 ? 384 : 256;  ///< up to 3 warpgroups at n = 64

template <int kN, Mode kMode>
__global__ void __launch_bounds__(kBlock<kN>, 1)
    decode_kernel(int iters, int warpgroups, float* out, unsigned long long* cycles) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < kA / 4; i += blockDim.x)  // B: bf16 ones; codes: a pattern
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(base + 4u * i),
                 "r"(i < kCodes / 4 ? 0x3f803f80u : 0x9e3779b9u * static_cast<uint32_t>(i)));
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  const int wg = tid / 128;
  if (wg >= warpgroups) return;
  const int lane = tid & 31, warp = (tid >> 5) & 3, q = lane & 3;
  const wgmma::NibbleDecoder nib(4 * (q & 1));
  wgmma::Group g;
  g.s = 0.001f * static_cast<float>(1 + (tid & 7));
  g.c = 136.0f + static_cast<float>(tid & 3);
  // A lane's code words: 16 bytes of its warp's 1 KB (as the ws kernels read theirs).
  const uint32_t words = base + kCodes + 1024u * warp + 16u * ((lane & ~3) | (q >> 1));
  // This lane's stmatrix row: matrix l / 8 (rows + 8 for odd, k + 8 for >= 2), row l % 8.
  const int mi = lane >> 3, row = 16 * warp + 8 * (mi & 1) + (lane & 7);
  const uint32_t abuf = base + kA + 16384u * wg;
  // vs: which word pairs (steps 2 v, 2 v + 1) to decode: 1, 2 or 3 (both).
  auto decode = [&](int it, uint32_t(&a)[4][4], int vs = 3) {
    uint32_t lo[2][2], hi[2][2];
    const uint32_t at = words + 8u * (it & 1) + 4096u * ((it >> 1) & 1);  // not loop-invariant
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wgmma_ws::lds64(at + 512u * h, lo[h][0], lo[h][1]);
      wgmma_ws::lds64(at + 512u * h + 32u, hi[h][0], hi[h][1]);
    }
    // The PRMT variants: NibbleDecoder::word's arithmetic, the pair packed by keeping each
    // f32's high half (a truncation: not the kernels' rounding; which pipe F2FP shares).
    auto word = [&](uint32_t w, uint32_t& even, uint32_t& odd) {
      if constexpr (kMode == Mode::decode_prmt || kMode == Mode::rs_prmt) {
        const uint32_t w12 = w >> 12;
        auto value = [&](uint32_t t, int i) {
          return __float_as_uint(
              __fmul_rn(__fsub_rn(__uint_as_float(wgmma::lop3_and_or(t, nib.mask[i], nib.magic[i])),
                                  __fadd_rn(nib.base[i], g.c)),
                        g.s));
        };
        even = __byte_perm(value(w, 0), value(w12, 2), 0x7632);
        odd = __byte_perm(value(w, 1), value(w12, 3), 0x7632);
      } else {
        nib.word<true>(w, g, even, odd);
      }
    };
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      if (!(vs >> v & 1)) continue;
      word(lo[0][v], a[2 * v][0], a[2 * v + 1][0]);
      word(lo[1][v], a[2 * v][1], a[2 * v + 1][1]);
      word(hi[0][v], a[2 * v][2], a[2 * v + 1][2]);
      word(hi[1][v], a[2 * v][3], a[2 * v + 1][3]);
    }
  };
  auto store_a = [&](int buf, const uint32_t(&a)[4][4]) {
    const uint32_t t = abuf + 8192u * buf + 128u * row;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t c = 2u * j + (mi >> 1);
      stmatrix_x4(t + ((c ^ (row & 7)) << 4), a[j]);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    if constexpr (kMode == Mode::ss) asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory");
  };
  float d[kN / 2];
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) d[i] = 0.0f;
  constexpr int kBufs = kMode == Mode::rs_il ? 3 : 2;
  uint32_t a[kBufs][4][4], sink = 0;
  decode(0, a[0]);
  constexpr bool kSS = kMode == Mode::ss || kMode == Mode::ss_nobar;
  if constexpr (kSS) store_a(0, a[0]);
  auto issue = [&](int p) {
    wgmma::fence_acc(d);
    wgmma::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint64_t b = wgmma::desc_k128(base + 32u * j);
      if constexpr (kSS)
        wgmma_ss<kN>(d, wgmma::desc_k128(abuf + 8192u * p + 32u * j), b);
      else
        wgmma_ws::wgmma_rs_n<true>(d, a[kMode == Mode::wgmma ? 0 : p][j], b);
    }
    wgmma::wgmma_commit();
  };
  const unsigned long long t0 = clock64();
  for (int it = 0; it < iters; it += kBufs) {
#pragma unroll
    for (int p = 0; p < kBufs; ++p) {
      const int nx = (p + 1) % kBufs;  // the next unit's buffer
      if constexpr (kMode == Mode::rs_il) {
        // The next unit's two halves decoded after this unit's wgmmas 0 and 2 (its buffer was
        // last read by the unit before last, done at the previous wait).
        wgmma::fence_acc(d);
        wgmma::wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          wgmma_ws::wgmma_rs_n<true>(d, a[p][j], wgmma::desc_k128(base + 32u * j));
          if (j == 0) decode(it + p + 1, a[nx], 1);
          if (j == 2) decode(it + p + 1, a[nx], 2);
        }
        wgmma::wgmma_commit();
        wgmma::wgmma_wait<1>();
        wgmma::fence_acc(d);
        continue;
      }
      constexpr bool kDecodeOnly = kMode == Mode::decode || kMode == Mode::decode_prmt;
      if constexpr (!kDecodeOnly) issue(p);
      if constexpr (!kDecodeOnly) {
        wgmma::wgmma_wait<1>();
        wgmma::fence_acc(d);
      }
      if constexpr (kMode != Mode::wgmma) {
        decode(it + p + 1, a[nx]);
        if constexpr (kSS) store_a(nx, a[nx]);
        if constexpr (kDecodeOnly) {
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) sink += a[nx][j][e];
        }
      }
    }
  }
  wgmma::wgmma_wait<0>();
  wgmma::fence_acc(d);
  const unsigned long long t1 = clock64();
  float s = static_cast<float>(sink);
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) s += d[i];
  out[blockIdx.x * 384 + tid] = s;
  if ((tid & 127) == 0) cycles[blockIdx.x * 3 + wg] = t1 - t0;
#else
  (void)iters, (void)warpgroups, (void)out, (void)cycles;
#endif
}

void check(cudaError_t e, const char* what) { wgmma_bench::check(e, "bench_wgmma_decode", what); }

template <int kN, Mode kMode>
void row(int sms, int iters, int warpgroups, float* out, unsigned long long* cycles) {
  auto* k = decode_kernel<kN, kMode>;
  check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem), "smem");
  const double s = wgmma_bench::seconds_per_launch(
      "bench_wgmma_decode", [&] { k<<<sms, kBlock<kN>, kSmem>>>(iters, warpgroups, out, cycles); });
  unsigned long long h[3] = {0, 0, 0};
  cudaMemcpy(h, cycles, sizeof h, cudaMemcpyDeviceToHost);
  const double flops = double(sms) * warpgroups * iters * 4 * 2.0 * 64 * kN * 16;
  std::printf("| m64n%dk16 | %s | %d | %.0f | %.0f |\n", kN, name(kMode), warpgroups,
              double(h[0]) / iters,
              kMode == Mode::decode || kMode == Mode::decode_prmt ? 0.0 : flops / s / 1e12);
}

// ---- the other arrangement: x as A, W as B, decoded by warpgroups of their own ----------
//
// y = x · W^T with x (64 rows) the A operand and the decoded W the B operand, both from
// shared memory: warpgroup 0 issues m64nNk16 wgmmas (N = 64 per decoder: 128 or 192 rows of
// W; 256 would need 128 accumulators per lane, more than five warpgroups leave), warpgroups 1 ..
// kDec decode 64 rows of W each into a 128-byte swizzled B tile (stmatrix, a proxy fence) and hand
// it over through mbarriers (full: 4 warps per decoder arrive; empty: the MMA warpgroup's wgmmas
// that read it are done), kStagesB tiles in turn. kDecode false: the decoders store whatever their
// registers hold (the hand-over's cost).

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

constexpr int kStagesB = 4;
template <int kDec>
inline constexpr int kSplitSmem = 8192 + kStagesB* kDec * 8192 + 8192 + 64 + 1024;

template <int kDec, bool kDecode>
__global__ void __launch_bounds__(128 * (kDec + 1), 1)
    split_kernel(int iters, float* out, unsigned long long* cycles) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kN = 64 * kDec, kTile = kN * 128;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  // x 8 KB at 0, B tiles from 8 KB, code words 8 KB after them, then the barriers.
  const uint32_t xs = base, tiles = base + 8192u, codes = tiles + kStagesB * kTile;
  const uint32_t full = codes + 8192u, empty = full + 8u * kStagesB;
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < 2048; i += blockDim.x) {
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(xs + 4u * i), "r"(0x3f803f80u));
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(codes + 4u * i),
                 "r"(0x9e3779b9u * static_cast<uint32_t>(i + 1)));
  }
  if (tid == 0) {
    for (int st = 0; st < kStagesB; ++st) {
      async::mbar_init(full + 8u * st, 4 * kDec);
      async::mbar_init(empty + 8u * st, 1);
    }
    async::mbar_init_fence();
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  const int wg = tid / 128;
  const unsigned long long t0 = clock64();
  if (wg == 0) {  // the MMA warpgroup
    float d[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) d[i] = 0.0f;
    for (int u = 0; u < iters; ++u) {
      const int st = u % kStagesB;
      async::mbar_wait(full + 8u * st, static_cast<uint32_t>((u / kStagesB) & 1));
      wgmma::fence_acc(d);
      wgmma::wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j)
        wgmma_ss<kN>(d, wgmma::desc_k128(xs + 32u * j),
                     wgmma::desc_k128(tiles + static_cast<uint32_t>(st * kTile) + 32u * j));
      wgmma::wgmma_commit();
      wgmma::wgmma_wait<1>();
      wgmma::fence_acc(d);
      if (u >= 1 && tid == 0) mbar_arrive(empty + 8u * ((u - 1) % kStagesB));
    }
    wgmma::wgmma_wait<0>();
    wgmma::fence_acc(d);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) s += d[i];
    out[blockIdx.x * 640 + tid] = s;
  } else {  // a decoder: rows 64 (wg - 1) .. + 63 of the B tiles
    const int dec = wg - 1;
    const int lane = tid & 31, warp = (tid >> 5) & 3, q = lane & 3;
    const wgmma::NibbleDecoder nib(4 * (q & 1));
    wgmma::Group g;
    g.s = 0.001f * static_cast<float>(1 + (tid & 7));
    g.c = 136.0f + static_cast<float>(tid & 3);
    const uint32_t words = codes + 1024u * ((dec * 4 + warp) & 7) + 16u * ((lane & ~3) | (q >> 1));
    const int mi = lane >> 3, row = 64 * dec + 16 * warp + 8 * (mi & 1) + (lane & 7);
    uint32_t a[4][4] = {};
    for (int u = 0; u < iters; ++u) {
      const int st = u % kStagesB;
      if constexpr (kDecode) {
        uint32_t lo[2][2], hi[2][2];
        const uint32_t at = words + 8u * (u & 1) + 512u * ((u >> 1) & 1);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          wgmma_ws::lds64(at + 256u * h, lo[h][0], lo[h][1]);
          wgmma_ws::lds64(at + 256u * h + 32u, hi[h][0], hi[h][1]);
        }
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          nib.word<true>(lo[0][v], g, a[2 * v][0], a[2 * v + 1][0]);
          nib.word<true>(lo[1][v], g, a[2 * v][1], a[2 * v + 1][1]);
          nib.word<true>(hi[0][v], g, a[2 * v][2], a[2 * v + 1][2]);
          nib.word<true>(hi[1][v], g, a[2 * v][3], a[2 * v + 1][3]);
        }
      } else {
        a[0][0] += 1;
      }
      if (u >= kStagesB)
        async::mbar_wait(empty + 8u * st, static_cast<uint32_t>((u / kStagesB - 1) & 1));
      const uint32_t t = tiles + static_cast<uint32_t>(st * kTile) + 128u * row;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t c = 2u * j + (mi >> 1);
        stmatrix_x4(t + ((c ^ (row & 7)) << 4), a[j]);
      }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane == 0) mbar_arrive(full + 8u * st);
    }
  }
  const unsigned long long t1 = clock64();
  if (tid == 0) cycles[blockIdx.x * 3] = t1 - t0;
  if (tid == 128) cycles[blockIdx.x * 3 + 1] = t1 - t0;
#else
  (void)iters, (void)out, (void)cycles;
#endif
}

template <int kDec, bool kDecode>
void split_row(int sms, int iters, float* out, unsigned long long* cycles) {
  auto* k = split_kernel<kDec, kDecode>;
  constexpr int smem = kSplitSmem<kDec>;
  check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "smem");
  const double s = wgmma_bench::seconds_per_launch(
      "bench_wgmma_decode", [&] { k<<<sms, 128 * (kDec + 1), smem>>>(iters, out, cycles); });
  unsigned long long h[2] = {0, 0};
  cudaMemcpy(h, cycles, sizeof h, cudaMemcpyDeviceToHost);
  const double flops = double(sms) * iters * 4 * 2.0 * 64 * (64 * kDec) * 16;
  // Per unit of 64 rows of W (the RS rows' unit of one warpgroup), to compare with them.
  std::printf("| m64n%dk16 SS, W as B | %s, %d decoders | %d | %.0f per 64 rows of W | %.0f |\n",
              64 * kDec, kDecode ? "decode" : "hand-over only", kDec, 1 + kDec,
              double(h[0]) / iters / kDec, flops / s / 1e12);
}

template <int kN>
void rows(int sms, int iters, int wgs, float* out, unsigned long long* cycles) {
  row<kN, Mode::wgmma>(sms, iters, wgs, out, cycles);
  row<kN, Mode::decode>(sms, iters, wgs, out, cycles);
  row<kN, Mode::rs>(sms, iters, wgs, out, cycles);
  row<kN, Mode::ss>(sms, iters, wgs, out, cycles);
  row<kN, Mode::ss_nobar>(sms, iters, wgs, out, cycles);
  row<kN, Mode::rs_il>(sms, iters, wgs, out, cycles);
  row<kN, Mode::decode_prmt>(sms, iters, wgs, out, cycles);
  row<kN, Mode::rs_prmt>(sms, iters, wgs, out, cycles);
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 4098;  // a multiple of 2 and 3 (the loops' unrolls)
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]) / 6 * 6;
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "device");
  if (prop.major != 9) {
    std::printf("bench_wgmma_decode: needs a Hopper GPU (sm_90a); %s is sm_%d%d: nothing run\n",
                prop.name, prop.major, prop.minor);
    return 0;
  }
  const int sms = prop.multiProcessorCount;
  float* out = nullptr;
  unsigned long long* cycles = nullptr;
  check(cudaMalloc(&out, sizeof(float) * sms * 640), "alloc");
  check(cudaMalloc(&cycles, sizeof(unsigned long long) * sms * 3), "alloc");
  std::printf("%s, %d SMs, %d units of 4 wgmmas (or one decode) per warpgroup\n\n", prop.name, sms,
              iters);
  std::printf(
      "| wgmma | loop | warpgroups | SM cycles / unit (clock64) | TFLOP/s |\n"
      "| --- | --- | --- | --- | --- |\n");
  for (int wgs = 1; wgs <= 3; ++wgs) {
    rows<64>(sms, iters, wgs, out, cycles);
    if (wgs <= 2) rows<256>(sms, iters, wgs, out, cycles);
  }
  split_row<2, true>(sms, iters, out, cycles);
  split_row<2, false>(sms, iters, out, cycles);
  split_row<3, true>(sms, iters, out, cycles);
  split_row<3, false>(sms, iters, out, cycles);
  cudaFree(out), cudaFree(cycles);
  return 0;
}
