// dequantize_cuda's bulk path: a block's step decoded into shared memory and written by one
// TMA bulk store (cp.async.bulk, global <- shared), which a write-heavy stream reaches faster
// on the H100 than 16-byte stores from the lanes (bench/bench_write_stream.cu,
// BENCHMARKS.md "Issue 3 in session 18"). The kernels and their launchers; kBulk and
// launch_chunks (dequantize_cuda.cu) say which formats take it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ops/quantize/dequantize_cuda_items.cuh"

namespace lowbit::dequant_cuda {

/// The chunks path with the stores through shared memory: a block's step is kThreads x
/// kItems consecutive items (item k * kThreads + t of the step in thread t), decoded into a
/// stage buffer and written by one TMA bulk store (cp.async.bulk, global <- shared) of the
/// whole step; kStages buffers, a buffer reused once its store has read it. A write-heavy
/// stream goes faster this way on the H100 (bench_write_stream: 1:4 92% of copy against 89-90%
/// with 16-byte stores from the lanes, 1:2 91% against 89%). Not for the GGUF formats.
template <DCode F, Dtype D, bool kQuads, int kStages, int U>
__global__ void __launch_bounds__(kThreads) dequantize_bulk_kernel(ChunkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(!kGguf<F>);
  constexpr int kPer = kQuads ? 2 : 1;
  constexpr int kItems = U * kPer;
  constexpr int N = kQuads ? 4 : 8;
  constexpr int kOut = N * (D == Dtype::f32 ? 4 : 2);
  constexpr uint32_t kStepItems = kThreads * kItems;
  extern __shared__ __align__(128) uint8_t stage[];
  float global = 0.0f;
  if constexpr (F == DCode::nvfp4) global = a.global[0];
  const uint32_t t = threadIdx.x;
  const uint64_t items = static_cast<uint64_t>(a.chunks) * kPer;
  const uint64_t steps = (items + kStepItems - 1) / kStepItems;
  ChunkRaw next[kItems];
  auto fetch = [&](uint64_t s) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint64_t i = s * kStepItems + k * kThreads + t;
      if (i < items) next[k] = load_item<F, kQuads>(a, i);
    }
  };
  uint64_t s = blockIdx.x;
  if (s < steps) fetch(s);
  for (uint32_t it = 0; s < steps; s += gridDim.x, ++it) {
    ChunkRaw r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      r[k] = next[k];
      if constexpr (kIntScale<F>)
        r[k].scale = widen_scale(__float_as_uint(r[k].scale), a.scale_dtype);
    }
    if (s + gridDim.x < steps) fetch(s + gridDim.x);
    uint8_t* buf = stage + (it % kStages) * (kStepItems * kOut);
    if (t == 0) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    __syncthreads();
    const uint64_t first = s * kStepItems;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      if (first + k * kThreads + t < items)
        decode_store<F, D, N, false>(r[k], global, buf + (k * kThreads + t) * kOut);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (t == 0) {
      const uint32_t bytes = static_cast<uint32_t>(
          (items - first < kStepItems ? items - first : uint64_t{kStepItems}) * kOut);
      asm volatile(
          "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
          "cp.async.bulk.commit_group;" ::"l"(a.dst + first * kOut),
          "r"(static_cast<uint32_t>(__cvta_generic_to_shared(buf))), "r"(bytes)
          : "memory");
    }
  }
  if (t == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

/// GGUF q8_0 / q4_0 -> f32 through the bulk path: a block's step is 256 GGUF blocks (2048
/// quads, 32 KiB of f32), their bytes loaded with 16-byte loads into a shared-memory input
/// stage (the next step's loads in flight during this step's work), each thread's 8 quads
/// decoded from there into an output stage written by one TMA bulk store. Codes 16-byte
/// aligned (ChunkArgs::staged).
template <DCode F, int kStages>
__global__ void __launch_bounds__(kThreads) dequantize_gguf_bulk_kernel(ChunkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(kGguf<F>);
  constexpr int kBytes = F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;
  constexpr uint32_t kStepBlocks = 256, kStepQuads = kStepBlocks * 8;
  constexpr uint32_t kInBytes = kStepBlocks * kBytes;  // a multiple of 16
  constexpr int kVecs = (kInBytes / 16 + kThreads - 1) / kThreads;
  constexpr int kItems = kStepQuads / kThreads;  // 8
  constexpr uint32_t kOutBytes = kStepQuads * 16;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* in = smem + kStages * kOutBytes;
  const uint32_t t = threadIdx.x;
  const uint64_t quads = static_cast<uint64_t>(a.chunks) * 2;
  const uint64_t blocks = quads / 8;
  const uint64_t steps = (blocks + kStepBlocks - 1) / kStepBlocks;
  uint4 next[kVecs];
  // Step s's input vectors into registers; a partial last step is copied later, in 2-byte
  // words (its bytes may end inside a vector).
  auto fetch = [&](uint64_t s) {
    if ((s + 1) * kStepBlocks > blocks) return;
    const uint4* src = reinterpret_cast<const uint4*>(a.codes + s * kInBytes);
#pragma unroll
    for (int v = 0; v < kVecs; ++v)
      if (v * kThreads + t < kInBytes / 16) next[v] = src[v * kThreads + t];
  };
  uint64_t s = blockIdx.x;
  if (s < steps) fetch(s);
  for (uint32_t it = 0; s < steps; s += gridDim.x, ++it) {
    uint8_t* out = smem + (it % kStages) * kOutBytes;
    if (t == 0) asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    __syncthreads();  // the stage is free, and every thread is done with the last input
    const uint64_t first_block = s * kStepBlocks;
    const uint64_t n_blocks =
        blocks - first_block < kStepBlocks ? blocks - first_block : kStepBlocks;
    if (n_blocks == kStepBlocks) {
#pragma unroll
      for (int v = 0; v < kVecs; ++v)
        if (v * kThreads + t < kInBytes / 16)
          reinterpret_cast<uint4*>(in)[v * kThreads + t] = next[v];
    } else {
      const auto* src = reinterpret_cast<const uint16_t*>(a.codes + first_block * kBytes);
      for (uint32_t k = t; k < n_blocks * kBytes / 2; k += kThreads)
        reinterpret_cast<uint16_t*>(in)[k] = src[k];
    }
    if (s + gridDim.x < steps) fetch(s + gridDim.x);
    __syncthreads();
    const uint32_t n_quads = static_cast<uint32_t>(n_blocks * 8);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const uint32_t q = k * kThreads + t;
      if (q < n_quads)
        decode_store<F, Dtype::f32, 4, false>(staged_item<F, true>(in, q), 0.0f, out + q * 16);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (t == 0) {
      asm volatile(
          "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
          "cp.async.bulk.commit_group;" ::"l"(a.dst + first_block * 8 * 16),
          "r"(static_cast<uint32_t>(__cvta_generic_to_shared(out))), "r"(n_quads * 16)
          : "memory");
    }
  }
  if (t == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

// ---- launch -----------------------------------------------------------------------------------

/// Which formats and destinations write through the bulk path (H100, 16384 x 8192 -> bf16,
/// two interleaved runs each, % of copy, lanes -> bulk with 2 stages of 8 items per thread):
/// int4:block32 87.2 / 87.3 -> 90.1 / 90.2 (3 stages of 4 items: 89.9 / 90.1). The others
/// lost: int8:token 90.0 -> 88.0-88.7, fp8e4m3:token 89.9 -> 88.3-89.6, mxfp4 89.6-89.9 ->
/// 84.5-88.6, and nvfp4 89.8 -> 52-79% (fewer stages and items per thread lost less; its
/// cause not found). f32 destinations (quads, a 64 KiB step) were not measured: lanes.
template <DCode F, Dtype D>
inline constexpr bool kBulk = (F == DCode::i4 || F == DCode::u4) && D != Dtype::f32;

/// Dynamic shared memory of the bulk kernels (their stages; GGUF: and the input stage).
template <Dtype D, int kStages, int U>
constexpr int bulk_smem() {
  return kStages * kThreads * U * 16 * (D == Dtype::f32 ? 2 : 1);
}
template <DCode F, int kStages>
constexpr int gguf_bulk_smem() {
  return kStages * 2048 * 16 + 256 * (F == DCode::q8_0 ? kQ8_0Bytes : kQ4_0Bytes);
}

template <DCode F, Dtype D, int kStages, int U>
void launch_bulk(const ChunkArgs& a, int sms, cudaStream_t stream) {
  constexpr bool kQuads = D == Dtype::f32;
  auto kernel = dequantize_bulk_kernel<F, D, kQuads, kStages, U>;
  constexpr int kSmem = bulk_smem<D, kStages, U>();
  static SmemOptIn optin;
  check_cuda(optin.allow(kernel, kSmem), "dequantize: shared memory of dequantize_bulk_kernel");
  constexpr uint64_t kPer = kQuads ? 2 : 1;  // items per chunk
  const uint32_t grid = balanced_grid(a.chunks * kPer, kThreads * U * kPer,
                                      stream_grid(kernel, kThreads, sms, kSmem));
  kernel<<<grid, kThreads, kSmem, stream>>>(a);
  check_launch("dequantize_bulk_kernel");
}

template <DCode F, int kStages>
void launch_gguf_bulk(const ChunkArgs& a, int sms, cudaStream_t stream) {
  auto kernel = dequantize_gguf_bulk_kernel<F, kStages>;
  constexpr int kSmem = gguf_bulk_smem<F, kStages>();
  static SmemOptIn optin;
  check_cuda(optin.allow(kernel, kSmem),
             "dequantize: shared memory of dequantize_gguf_bulk_kernel");
  // A step is 256 GGUF blocks of 4 chunks.
  const uint32_t grid = balanced_grid(a.chunks / 4, 256, stream_grid(kernel, kThreads, sms, kSmem));
  kernel<<<grid, kThreads, kSmem, stream>>>(a);
  check_launch("dequantize_gguf_bulk_kernel");
}

}  // namespace lowbit::dequant_cuda
