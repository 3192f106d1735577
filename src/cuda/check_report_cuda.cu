// CheckReport on a CUDA device: its memory, and the record kernel for ops whose kernels do not
// hand their flags off themselves (check_report_impl.hpp has the layout).
#include <cuda_runtime.h>

#include "core/check_report_impl.hpp"
#include "cuda/cuda_kernel_common.cuh"
#include "cuda/hand_off.hpp"

namespace lowbit::check_report {

using cuda_common::check_cuda;
using cuda_common::DeviceScope;

void allocate(CheckReport::Impl& r) {
  DeviceScope scope(r.device.index);
  const size_t bytes = static_cast<size_t>(kRegions) * kRegionBytes;
  // The device words and the mapped host memory as the synchronous checks' hand-off keeps
  // them (hand_off.hpp): a region per op on the device; the record at the start of the host
  // side.
  hand_off::Words w;
  if (!hand_off::allocate(bytes, w))
    throw_error(ErrorCode::out_of_memory,
                "CheckReport: allocating its device words and its "
                "pinned, mapped record failed");
  r.device_words = w.device;
  r.host = static_cast<CheckRecord*>(w.host);
  r.host_on_device = static_cast<CheckRecord*>(w.host_on_device);
  *r.host = CheckRecord{};
  if (const cudaError_t e = cudaMemset(r.device_words, 0, bytes); e != cudaSuccess) {
    release(r);
    check_cuda(e, "CheckReport: cudaMemset");
  }
}

void release(CheckReport::Impl& r) noexcept {
  if (r.device_words) {
    int previous = 0;
    const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != r.device.index &&
                          cudaSetDevice(r.device.index) == cudaSuccess;
    cudaFree(r.device_words);
    if (switched) cudaSetDevice(previous);
  }
  if (r.host) cudaFreeHost(r.host);
  r.device_words = nullptr;
  r.host = nullptr;
  r.host_on_device = nullptr;
}

namespace {

struct RecordArgs {
  unsigned long long* flags;  ///< the region's first n words (or the op's own)
  unsigned long long* calls;  ///< the region's call count
  CheckRecord* record;        ///< mapped host memory
  uint32_t op;
  int n;
  int zero_words;
  uint32_t kinds[4];
};

/// One thread: count the call, move the first set flag into the record when no earlier call
/// refused its input (the record is read over the bus only then), zero the flags for the
/// next call. Stream order puts it after the op's kernels.
__global__ void record_kernel(RecordArgs a) {
  const unsigned long long call = ++*a.calls;
  int first = -1;
  unsigned long long word = 0;
  for (int i = 0; i < a.n; ++i) {
    const unsigned long long w = a.flags[i];
    if (w != 0 && first < 0) {
      first = i;
      word = w;
    }
  }
  for (int i = 0; i < a.zero_words; ++i) a.flags[i] = 0;
  if (first < 0) return;
  volatile CheckRecord* rec = a.record;
  if (rec->seq != 0) return;
  rec->op = a.op;
  rec->kind = a.kinds[first];
  rec->word = word;
  __threadfence_system();  // the fields reach the host before seq does
  rec->seq = call;
  __threadfence_system();
}

}  // namespace

namespace {

void launch_record(const CheckReport::Impl& r, Op op, unsigned long long* flags, int n,
                   const Kind* kinds, cudaStream_t stream, int zero_words) {
  RecordArgs a{};
  auto* region = static_cast<unsigned char*>(r.region(op));
  a.flags = flags;
  a.calls = reinterpret_cast<unsigned long long*>(region + kCallsOffset);
  a.record = r.host_on_device;
  a.op = static_cast<uint32_t>(op);
  a.n = n < 4 ? n : 4;
  // zero_words < 0: the flags are the op's own (not zeroed here).
  a.zero_words = zero_words < 0 ? 0 : zero_words > a.n ? zero_words : a.n;
  if (a.zero_words > kCallsOffset / 8) a.zero_words = kCallsOffset / 8;
  for (int i = 0; i < a.n; ++i) a.kinds[i] = static_cast<uint32_t>(kinds[i]);
  record_kernel<<<1, 1, 0, stream>>>(a);
  check_cuda(cudaGetLastError(), "CheckReport: record kernel launch");
}

}  // namespace

void enqueue_record(const CheckReport::Impl& r, Op op, int n, const Kind* kinds,
                    cudaStream_t stream, int zero_words) {
  launch_record(r, op, static_cast<unsigned long long*>(r.region(op)), n, kinds, stream,
                zero_words);
}

void enqueue_record_from(const CheckReport::Impl& r, Op op, const unsigned long long* flags, int n,
                         const Kind* kinds, cudaStream_t stream) {
  launch_record(r, op, const_cast<unsigned long long*>(flags), n, kinds, stream, -1);
}

}  // namespace lowbit::check_report
