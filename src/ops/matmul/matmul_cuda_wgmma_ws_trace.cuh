// The warp-specialized kernels' phase trace (matmul_cuda_wgmma_ws.cuh), included there only
// when built with -DLOWBIT_WS_TRACE (CUDAFLAGS at configure time); printed per launch to stderr
// under LOWBIT_WS_TRACE=1. Per block: clock marks at the kernel's phases (entry, cluster
// barrier, first stage, each consumer warpgroup's loop end, the epilogue's barriers, its end),
// their mean cycles, and the blocks' placement on the SMs. This is how the epilogue's 15 us
// per block was found (BENCHMARKS.md, session 14). In such a build LOWBIT_WS_ROW_LOOP=1 also
// turns the copy-engine epilogue off (matmul_cuda_wgmma.cu), to time the two side by side.
// The main loop's phases are summed per thread in registers and stored once (slots 11-16:
// the consumers' waits on full stages and on wgmmas, their code words' loads, decodes and
// wgmma issue; the producer's waits on empty stages). A build that also defines
// LOWBIT_WS_NODECODE (trace or not) skips the decode, the operands being the code words
// themselves (wrong sums): the loop's time without it (BENCHMARKS.md, session 16).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

namespace lowbit::wgmma_ws {

// Slots 0..7: clock64 at the marks; 8 / 9: globaltimer at marks 0 / 7; 10: smid.
inline constexpr int kWsTraceSlots = 17;
static __device__ unsigned long long g_ws_trace[8192][kWsTraceSlots];
__device__ __forceinline__ void ws_mark(int slot) {
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (cta >= 8192) return;
  g_ws_trace[cta][slot] = clock64();
  if (slot == 0 || slot == 7) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    g_ws_trace[cta][slot == 0 ? 8 : 9] = t;
  }
  if (slot == 0) {
    for (int i = 11; i < kWsTraceSlots; ++i) g_ws_trace[cta][i] = 0;
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    g_ws_trace[cta][10] = sm;
  }
}
#define WS_MARK(cond, slot) \
  if (cond) ws_mark(slot)
// Slots 11..16: cycles summed over the main loop in registers (WS_SUM: consumer waits on full
// stages, on wgmmas, the producer's waits on empty stages, the consumer's decodes, its wgmma
// issue, its code words' loads until they land: WS_WORDS_LANDED), stored once at its end
// (WS_SUMS_STORE) by the thread named there.
#define WS_SUMS                                       \
  unsigned long long ws_sums[6] = {0, 0, 0, 0, 0, 0}; \
  uint32_t ws_dep = 0
#define WS_T0(var) const unsigned long long var = clock64()
#define WS_SUM(slot, t0) ws_sums[(slot)-11] += clock64() - (t0)
#define WS_WORDS_LANDED(w) asm volatile("add.u32 %0, %0, %1;" : "+r"(ws_dep) : "r"(w))
#define WS_SUMS_STORE(cond)                                                              \
  if (cond) {                                                                            \
    const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); \
    if (cta < 8192)                                                                      \
      for (int i = 0; i < 6; ++i)                                                        \
        if (ws_sums[i]) g_ws_trace[cta][11 + i] = ws_sums[i] + (ws_dep == 7u);           \
  }

static void ws_trace_report(dim3 g, cudaStream_t stream) {
  cudaStreamSynchronize(stream);
  const int n = static_cast<int>(std::min<unsigned>(g.x * g.y * g.z, 8192u));
  std::vector<unsigned long long> t(static_cast<size_t>(n) * kWsTraceSlots);
  cudaMemcpyFromSymbol(t.data(), g_ws_trace, t.size() * 8);
  // entry->csync, ->first stage, ->WG1 loop end, WG2 end - WG1 end, WG1 end->bar1, ->tiles, ->y
  double ph[7] = {0, 0, 0, 0, 0, 0, 0};
  unsigned long long t0 = ~0ull, t1 = 0;
  double life = 0, sums[6] = {0, 0, 0, 0, 0, 0};
  std::vector<std::vector<std::pair<unsigned long long, unsigned long long>>> sm(256);
  for (int i = 0; i < n; ++i) {
    const unsigned long long* r = &t[static_cast<size_t>(i) * kWsTraceSlots];
    ph[0] += static_cast<double>(r[1] - r[0]);
    ph[1] += static_cast<double>(r[2] - r[1]);
    ph[2] += static_cast<double>(r[3] - r[2]);
    ph[3] += static_cast<double>(static_cast<long long>(r[4] - r[3]));
    ph[4] += static_cast<double>(r[5] - r[3]);
    ph[5] += static_cast<double>(r[6] - r[5]);
    ph[6] += static_cast<double>(r[7] - r[6]);
    for (int j = 0; j < 6; ++j) sums[j] += static_cast<double>(r[11 + j]);
    t0 = std::min(t0, r[8]);
    t1 = std::max(t1, r[9]);
    life += static_cast<double>(r[9] - r[8]);
    sm[r[10] % 256].push_back({r[8], r[9]});
  }
  double gaps = 0, last = 0;
  int ngaps = 0, nsm = 0;
  for (auto& v : sm) {
    if (v.empty()) continue;
    ++nsm;
    std::sort(v.begin(), v.end());
    last += static_cast<double>(t1 - v.back().second);
    for (size_t j = 1; j < v.size(); ++j) {
      gaps += static_cast<double>(v[j].first) - static_cast<double>(v[j - 1].second);
      ++ngaps;
    }
  }
  std::fprintf(stderr,
               "ws_trace: %d blocks / %d SMs, span %.1f us, life %.2f us; cycles: csync %.0f, "
               "first stage %.0f, loop %.0f, WG2-WG1 end %.0f, ->bar1 %.0f, tiles %.0f, y %.0f; "
               "gap %.2f us, idle after last %.2f us\n",
               n, nsm, (t1 - t0) / 1e3, life / n / 1e3, ph[0] / n, ph[1] / n, ph[2] / n, ph[3] / n,
               ph[4] / n, ph[5] / n, ph[6] / n, ngaps ? gaps / ngaps / 1e3 : 0.0,
               nsm ? last / nsm / 1e3 : 0.0);
  std::fprintf(
      stderr,
      "ws_trace: loop sums per block (cycles): consumer waits on full %.0f, on wgmmas "
      "%.0f, code words' loads %.0f, decodes %.0f, wgmma issue %.0f; producer waits on empty "
      "%.0f\n",
      sums[0] / n, sums[1] / n, sums[5] / n, sums[3] / n, sums[4] / n, sums[2] / n);
}

}  // namespace lowbit::wgmma_ws
