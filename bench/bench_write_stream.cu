// What a write-heavy stream (a dequantizer's traffic: read R bytes, write K x R) reaches on
// this GPU, by the kernel's way of storing, against the copy and memset ceilings measured in
// the same process. No arithmetic: each output vector is its input vector xor its index.
//
// Rows (all evict-first stores unless said otherwise):
//  - lanes: the dequantizers' shape: 16-byte loads, U per thread in flight, K 16-byte stores
//    per load, each warp store writing 512 contiguous bytes (bench_quantize_cuda's expand);
//  - lanes, input in L2: the same, but the input index wraps inside 4 MiB, so that DRAM sees
//    the writes alone (a diagnostic: is the read / write mix the limit, or the SM side?);
//  - block chunks: the lanes' stores, a block's loads of a step contiguous (not grid-strided);
//  - bulk: a block's 4 or 8 KiB of input expanded into shared memory and written by one TMA
//    bulk store (cp.async.bulk.global.shared::cta) of K x that, 2-4 stage buffers;
//  - write-only lanes: the stores alone, to compare with cudaMemsetAsync;
//  - cudaMemcpyAsync of the input's size and of 4 x it (the copy's own size effect).
// The second table block repeats the variants twice (rounds) to show the run-to-run spread.
// What dequantize_cuda took from it: docs/formats.md, BENCHMARKS.md "Issue 3 in session 18".
//   bench_write_stream [--reps N] [--mib M]   (M: MiB of input; default 64, issue 3's int4 size)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_cuda_harness.cuh"

namespace {

constexpr int kThreads = 256;

template <bool kPlain>
__device__ __forceinline__ void store16(uint4* p, uint4 v) {
  if (kPlain) {
    *p = v;
  } else {
    __stcs(p, v);
  }
}

/// The dequantizers' shape (bench_quantize_cuda's expand); `wrap` (a power of two, in
/// vectors) folds the input index so that it stays in L2; 0: no wrap.
template <int K, int U, bool kPlain>
__global__ void __launch_bounds__(kThreads)
    expand_lanes(const uint4* x, uint64_t n, uint64_t wrap, uint4* y) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t j = i + u * stride;
      v[u] = j < n ? x[wrap ? j & (wrap - 1) : j] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t j = i + u * stride;
      if (j >= n) continue;
      uint4* o = y + (j / 32) * 32 * K + j % 32;
#pragma unroll
      for (int k = 0; k < K; ++k)
        store16<kPlain>(o + 32 * k, make_uint4(v[u].x ^ k, v[u].y, v[u].z, v[u].w));
    }
  }
}

/// The lanes' stores, but a block's U x 256 vectors of a step are contiguous (chunk c of the
/// grid-stride loop over chunks), as the bulk kernel's are: is its gain the TMA store or the
/// block-contiguous order?
template <int K, int U>
__global__ void __launch_bounds__(kThreads)
    expand_block_chunks(const uint4* x, uint64_t n, uint64_t, uint4* y) {
  constexpr int kChunk = kThreads * U;
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  for (uint64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t j = c * kChunk + u * kThreads + threadIdx.x;
      v[u] = j < n ? __ldcs(x + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t j = c * kChunk + u * kThreads + threadIdx.x;
      if (j >= n) continue;
      uint4* o = y + (j / 32) * 32 * K + j % 32;
#pragma unroll
      for (int k = 0; k < K; ++k)
        __stcs(o + 32 * k, make_uint4(v[u].x ^ k, v[u].y, v[u].z, v[u].w));
    }
  }
}

/// Stores only: n vectors, U per thread per step (the lanes' store pattern without loads).
template <int U>
__global__ void __launch_bounds__(kThreads) write_lanes(uint64_t n, uint4* y) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += U * stride) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t j = i + u * stride;
      if (j < n) __stcs(y + j, make_uint4(static_cast<uint32_t>(j), 1, 2, 3));
    }
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// A block's input chunks (kV x 4 KiB: kV vectors per thread, the next chunk's loads in
/// flight while this one is stored) expanded into shared memory and written by one thread's
/// TMA bulk store of K x the chunk; kStages buffers, a buffer reused once its store has read
/// it. kEvictFirst: the bulk store carries an L2 evict-first policy. n: a multiple of the
/// chunk.
template <int K, int kStages, bool kEvictFirst, int kV = 1>
__global__ void __launch_bounds__(kThreads) expand_bulk(const uint4* x, uint64_t n, uint4* y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) uint4 smem[];
  constexpr int kChunk = kThreads * kV;  // vectors
  const uint64_t chunks = n / kChunk;
  const uint32_t t = threadIdx.x;
  uint64_t policy = 0;
  if (kEvictFirst)
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  uint64_t c = blockIdx.x;
  uint4 v[kV];
#pragma unroll
  for (int u = 0; u < kV; ++u)
    v[u] = c < chunks ? __ldcs(x + c * kChunk + u * kThreads + t) : make_uint4(0, 0, 0, 0);
  for (int it = 0; c < chunks; c += gridDim.x, ++it) {
    const uint64_t cn = c + gridDim.x;
    uint4 vn[kV];
#pragma unroll
    for (int u = 0; u < kV; ++u)
      vn[u] = cn < chunks ? __ldcs(x + cn * kChunk + u * kThreads + t) : make_uint4(0, 0, 0, 0);
    uint4* buf = smem + (it % kStages) * kChunk * K;
    if (t == 0) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kV; ++u) {
      const uint32_t j = u * kThreads + t;  // the vector's index in the chunk
#pragma unroll
      for (int k = 0; k < K; ++k)
        buf[(j / 32) * 32 * K + 32 * k + j % 32] = make_uint4(v[u].x ^ k, v[u].y, v[u].z, v[u].w);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (t == 0) {
      uint4* dst = y + c * kChunk * K;
      constexpr uint32_t kBytes = kChunk * K * 16;
      if (kEvictFirst) {
        asm volatile(
            "cp.async.bulk.global.shared::cta.bulk_group.L2::cache_hint [%0], [%1], %2, %3;" ::"l"(
                dst),
            "r"(smem_addr(buf)), "n"(kBytes), "l"(policy)
            : "memory");
      } else {
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst),
                     "r"(smem_addr(buf)), "n"(kBytes)
                     : "memory");
      }
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
#pragma unroll
    for (int u = 0; u < kV; ++u) v[u] = vn[u];
  }
  if (t == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

struct Result {
  std::string what;
  double bytes = 0;
  double ms = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bench::program = "bench_write_stream";
  int reps = 30;
  int64_t mib = 64;
  if (!bench::CommandLine()
           .value("--reps", [&](const char* v) { reps = std::max(1, std::atoi(v)); })
           .value("--mib", [&](const char* v) { mib = std::max<int64_t>(1, std::atoll(v)); })
           .parse(argc, argv, "[--reps N] [--mib M]"))
    return 2;
  if (bench::skip_without_gpu()) return 0;
  cudaDeviceProp props{};
  bench::check(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
  const int sms = props.multiProcessorCount;
  cudaStream_t s;
  bench::check(cudaStreamCreate(&s), "cudaStreamCreate");
  const int warmup = 3;
  const uint64_t in_bytes = static_cast<uint64_t>(mib) << 20;
  const uint64_t max_out = 8 * in_bytes;
  void *in = nullptr, *out = nullptr;
  bench::check(cudaMalloc(&in, std::max<uint64_t>(in_bytes, 1ull << 30)), "cudaMalloc");
  bench::check(cudaMalloc(&out, std::max<uint64_t>(max_out, 1ull << 30)), "cudaMalloc");
  bench::check(cudaMemsetAsync(in, 3, in_bytes, s), "cudaMemsetAsync");
  std::vector<Result> rows;

  const uint64_t gib = 1ull << 30;
  rows.push_back({"cudaMemcpyAsync d2d 1 GiB (copy ceiling)", 2.0 * gib,
                  bench::median_ms(s, warmup, reps, [&] {
                    bench::check(cudaMemcpyAsync(out, in, gib, cudaMemcpyDeviceToDevice, s),
                                 "cudaMemcpyAsync");
                  })});
  const double copy_gbps = rows[0].bytes / rows[0].ms / 1e6;
  rows.push_back(
      {"cudaMemsetAsync 4 x input", 4.0 * in_bytes, bench::median_ms(s, warmup, reps, [&] {
         bench::check(cudaMemsetAsync(out, 0, 4 * in_bytes, s), "cudaMemsetAsync");
       })});

  auto resident = [&](const void* kernel, size_t smem) {
    int per_sm = 0;
    bench::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                     &per_sm, reinterpret_cast<const void*>(kernel), kThreads, smem),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return per_sm * sms;
  };
  const uint64_t n = in_bytes / 16;
  auto lanes = [&](const char* what, auto kernel, int k, uint64_t wrap, int grid_mult) {
    const int grid = grid_mult * resident(reinterpret_cast<const void*>(kernel), 0);
    rows.push_back({what, (1.0 + k) * in_bytes, bench::median_ms(s, warmup, reps, [&] {
                      kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint4*>(in), n, wrap,
                                                       static_cast<uint4*>(out));
                    })});
    bench::check(cudaGetLastError(), what);
  };
  lanes("lanes 1:1 (our copy)", expand_lanes<1, 4, false>, 1, 0, 1);
  lanes("lanes 1:2", expand_lanes<2, 4, false>, 2, 0, 1);
  lanes("lanes 1:4", expand_lanes<4, 4, false>, 4, 0, 1);
  lanes("lanes 1:4, 2 x resident grid", expand_lanes<4, 4, false>, 4, 0, 2);
  lanes("lanes 1:4, plain stores", expand_lanes<4, 4, true>, 4, 0, 1);
  lanes("lanes 1:8", expand_lanes<8, 4, false>, 8, 0, 1);
  lanes("lanes 1:4, input in L2 (4 MiB)", expand_lanes<4, 4, false>, 4, (4u << 20) / 16, 1);
  lanes("lanes 1:8, input in L2 (4 MiB)", expand_lanes<8, 4, false>, 8, (4u << 20) / 16, 1);
  {
    const uint64_t nw = 4 * n;
    const int grid = resident(reinterpret_cast<const void*>(write_lanes<4>), 0);
    rows.push_back(
        {"write-only lanes, 4 x input", 4.0 * in_bytes, bench::median_ms(s, warmup, reps, [&] {
           write_lanes<4><<<grid, kThreads, 0, s>>>(nw, static_cast<uint4*>(out));
         })});
    bench::check(cudaGetLastError(), "write_lanes");
  }
  auto bulk = [&](const char* what, auto kernel, int k, int stages, int grid_mult, int kv = 1) {
    const size_t smem = static_cast<size_t>(stages) * kThreads * kv * k * 16;
    bench::check(
        cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "cudaFuncSetAttribute");
    const int grid = grid_mult * resident(reinterpret_cast<const void*>(kernel), smem);
    rows.push_back({what, (1.0 + k) * in_bytes, bench::median_ms(s, warmup, reps, [&] {
                      kernel<<<grid, kThreads, smem, s>>>(static_cast<const uint4*>(in), n,
                                                          static_cast<uint4*>(out));
                    })});
    bench::check(cudaGetLastError(), what);
  };
  for (int round = 0; round < 2; ++round) {
    lanes("lanes 1:4 (again)", expand_lanes<4, 4, false>, 4, 0, 1);
    lanes("lanes 1:4, 2 x resident grid (again)", expand_lanes<4, 4, false>, 4, 0, 2);
    lanes("block chunks 1:2, U = 4", expand_block_chunks<2, 4>, 2, 0, 1);
    lanes("block chunks 1:4, U = 2", expand_block_chunks<4, 2>, 4, 0, 1);
    lanes("block chunks 1:4, U = 4", expand_block_chunks<4, 4>, 4, 0, 1);
    lanes("block chunks 1:4, U = 4, 2 x resident grid", expand_block_chunks<4, 4>, 4, 0, 2);
    lanes("block chunks 1:8, U = 4", expand_block_chunks<8, 4>, 8, 0, 1);
    bulk("bulk 1:2, 2 stages, 8 KiB chunks", expand_bulk<2, 2, false, 2>, 2, 2, 1, 2);
    bulk("bulk 1:8, 2 stages, 8 KiB chunks", expand_bulk<8, 2, false, 2>, 8, 2, 1, 2);
    bulk("bulk 1:1, 3 stages", expand_bulk<1, 3, false>, 1, 3, 1);
    bulk("bulk 1:2, 3 stages", expand_bulk<2, 3, false>, 2, 3, 1);
    bulk("bulk 1:4, 2 stages", expand_bulk<4, 2, false>, 4, 2, 1);
    bulk("bulk 1:4, 3 stages", expand_bulk<4, 3, false>, 4, 3, 1);
    bulk("bulk 1:4, 4 stages", expand_bulk<4, 4, false>, 4, 4, 1);
    bulk("bulk 1:4, 3 stages, evict-first", expand_bulk<4, 3, true>, 4, 3, 1);
    bulk("bulk 1:4, 2 stages, 8 KiB chunks", expand_bulk<4, 2, false, 2>, 4, 2, 1, 2);
    bulk("bulk 1:4, 3 stages, 8 KiB chunks", expand_bulk<4, 3, false, 2>, 4, 3, 1, 2);
    bulk("bulk 1:8, 3 stages", expand_bulk<8, 3, false>, 8, 3, 1);
    lanes("lanes 1:8 (again)", expand_lanes<8, 4, false>, 8, 0, 1);
  }
  rows.push_back({"cudaMemcpyAsync d2d, the input's size", 2.0 * in_bytes,
                  bench::median_ms(s, warmup, reps, [&] {
                    bench::check(cudaMemcpyAsync(out, in, in_bytes, cudaMemcpyDeviceToDevice, s),
                                 "cudaMemcpyAsync");
                  })});
  rows.push_back({"cudaMemcpyAsync d2d, 4 x the input's size", 8.0 * in_bytes,
                  bench::median_ms(s, warmup, reps, [&] {
                    bench::check(
                        cudaMemcpyAsync(out, in, 4 * in_bytes, cudaMemcpyDeviceToDevice, s),
                        "cudaMemcpyAsync");
                  })});

  // Correctness of the bulk and lanes layouts: the same output for 1:4 (a test that fails
  // if a store is lost or misplaced).
  {
    std::vector<uint4> a(4 * n), b(4 * n);
    const int grid_l = resident(reinterpret_cast<const void*>(expand_lanes<4, 4, false>), 0);
    bench::check(cudaMemsetAsync(out, 0xff, 4 * in_bytes, s), "poison");
    expand_lanes<4, 4, false>
        <<<grid_l, kThreads, 0, s>>>(static_cast<const uint4*>(in), n, 0, static_cast<uint4*>(out));
    bench::check(cudaMemcpyAsync(a.data(), out, 4 * in_bytes, cudaMemcpyDeviceToHost, s), "d2h");
    bench::check(cudaMemsetAsync(out, 0xee, 4 * in_bytes, s), "poison");
    const size_t smem = 2ull * kThreads * 4 * 16;
    expand_bulk<4, 2, false><<<sms * 3, kThreads, smem, s>>>(static_cast<const uint4*>(in), n,
                                                             static_cast<uint4*>(out));
    bench::check(cudaMemcpyAsync(b.data(), out, 4 * in_bytes, cudaMemcpyDeviceToHost, s), "d2h");
    bench::check(cudaStreamSynchronize(s), "sync");
    const bool same = std::memcmp(a.data(), b.data(), a.size() * sizeof(uint4)) == 0;
    std::printf("bulk 1:4 output equals lanes 1:4 output: %s\n", same ? "yes" : "NO");
  }

  std::printf(
      "\n%s, input %lld MiB, median of %d\n| kernel | GB/s | %% of copy |\n| --- | --- | --- |\n",
      props.name, static_cast<long long>(mib), reps);
  for (const Result& r : rows) {
    const double gbps = r.bytes / r.ms / 1e6;
    std::printf("| %s | %.0f | %.1f%% |\n", r.what.c_str(), gbps, 100.0 * gbps / copy_gbps);
  }
  cudaFree(in);
  cudaFree(out);
  return 0;
}
