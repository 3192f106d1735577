// The tensor cores' rate for the wgmma shapes the weight-only kernels issue, with nothing else
// in the loop (no loads, no decode): each warpgroup of one block per SM issues units of 4
// dependent wgmmas (m64nNk16, bf16, f32 accumulators, A from registers or shared memory, B from
// shared memory), commits, and waits for the unit before last, as matmul_cuda_wgmma_ws.cuh's
// consumers do. Prints TFLOP/s, the share of the dense bf16 peak, the cycles each wgmma takes
// of an SM's tensor cores, and the cycles a warpgroup spends issuing a unit. This is the
// ceiling the ws64 kernel's loop (m64n64k16) runs under at M <= 128 (docs/matmul.md).
//   bench_wgmma_rate [--iters N]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "wgmma_bench.cuh"

namespace {

using namespace lowbit;

constexpr int kSmem = 64 * 1024 + 1024;

/// kN: the wgmma's N (64, 128, 256); kSS: A from shared memory (N = 64 only).
template <int kN, bool kSS>
__global__ void __launch_bounds__(384, 1)
    rate_kernel(int iters, int warpgroups, float* out, unsigned long long* issue) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < 64 * 1024 / 4; i += blockDim.x)
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(base + 4u * i), "r"(0x3f803f80u));
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  const int wg = tid / 128;
  if (wg >= warpgroups) return;
  float d[kN / 2];
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) d[i] = 0.0f;
  const uint32_t a[4] = {0x3f803f80u ^ (tid & 1u), 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};
  unsigned long long t_issue = 0;
  for (int it = 0; it < iters; ++it) {
    const unsigned long long t0 = clock64();
    wgmma::fence_acc(d);
    wgmma::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint64_t b = wgmma::desc_k128(base + 32u * j);
      if constexpr (kSS) {
        wgmma_bench::wgmma_ss<64>(d, wgmma::desc_k128(base + 32768u + 32u * j), b);
      } else if constexpr (kN == 128) {
        wgmma::wgmma_rs<true>(d, a, b);
      } else {
        wgmma_ws::wgmma_rs_n<true>(d, a, b);
      }
    }
    wgmma::wgmma_commit();
    t_issue += clock64() - t0;
    wgmma::wgmma_wait<1>();
    wgmma::fence_acc(d);
  }
  wgmma::wgmma_wait<0>();
  wgmma::fence_acc(d);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) s += d[i];
  out[blockIdx.x * 384 + tid] = s;
  if ((tid & 127) == 0) issue[blockIdx.x * 3 + wg] = t_issue;
#else
  (void)iters, (void)warpgroups, (void)out, (void)issue;
#endif
}

void check(cudaError_t e, const char* what) { wgmma_bench::check(e, "bench_wgmma_rate", what); }

template <int kN, bool kSS>
void row(int sms, int iters, int warpgroups, int clock_khz, float* out, unsigned long long* issue) {
  auto* k = rate_kernel<kN, kSS>;
  check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem), "smem");
  const double s = wgmma_bench::seconds_per_launch(
      "bench_wgmma_rate", [&] { k<<<sms, 384, kSmem>>>(iters, warpgroups, out, issue); });
  const double wgmmas = double(sms) * warpgroups * iters * 4;
  const double flops = wgmmas * 2.0 * 64 * kN * 16;
  unsigned long long h[3] = {0, 0, 0};
  cudaMemcpy(h, issue, sizeof h, cudaMemcpyDeviceToHost);
  // Cycles at the clock the SMs ran at over the run are not known; the rated clock gives an
  // upper bound of the cycles per wgmma (an SM's tensor cores are shared by its warpgroups).
  const double cycles = s * clock_khz * 1e3 / (double(iters) * 4 * warpgroups);
  std::printf("| m64n%dk16 %s | %d | %.0f | %.2f | %.1f | %.0f |\n", kN, kSS ? "SS" : "RS",
              warpgroups, flops / s / 1e12, flops / s / 989.4e12, cycles, double(h[0]) / iters);
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 4096;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "device");
  if (prop.major != 9) {
    std::printf("bench_wgmma_rate: needs a Hopper GPU (sm_90a); %s is sm_%d%d: nothing run\n",
                prop.name, prop.major, prop.minor);
    return 0;
  }
  int clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  const int sms = prop.multiProcessorCount;
  float* out = nullptr;
  unsigned long long* issue = nullptr;
  check(cudaMalloc(&out, sizeof(float) * sms * 384), "alloc");
  check(cudaMalloc(&issue, sizeof(unsigned long long) * sms * 3), "alloc");
  std::printf("%s, %d SMs, rated clock %d MHz, %d units of 4 wgmmas per warpgroup\n\n", prop.name,
              sms, clock_khz / 1000, iters);
  std::printf(
      "| wgmma | warpgroups | TFLOP/s | of 989 | cycles / wgmma (rated clock) | "
      "issue cycles / unit |\n| --- | --- | --- | --- | --- | --- |\n");
  for (int wgs = 1; wgs <= 3; ++wgs) {
    row<64, false>(sms, iters, wgs, clock_khz, out, issue);
    row<64, true>(sms, iters, wgs, clock_khz, out, issue);
    row<128, false>(sms, iters, wgs, clock_khz, out, issue);
    if (wgs <= 2) row<256, false>(sms, iters, wgs, clock_khz, out, issue);
  }
  cudaFree(out), cudaFree(issue);
  return 0;
}
