// CheckReport's insides, shared by the ops that record into it (quantize_cuda.cu,
// gguf_quantize_cuda.cu, jit/launch.cpp) and by check_report.cpp, which turns a record into
// an Error's text. Device code includes this header too: plain structs only.
//
// Memory of a report on a CUDA device:
//  * device words, zero between calls: one region of kRegionBytes per op, laid out by that
//    op (its flag words, its count of finished blocks...), whose last 8 bytes count the
//    op's calls given the report (the op's last block, or the record kernel, adds one);
//  * a CheckRecord in pinned, mapped host memory, written by the device only when a call
//    refused its input and no earlier call had (record.seq == 0): the op, what was refused,
//    the op's flag word (its own encoding of the index), then seq, the call's number.
#pragma once

#include <cstdint>
#include <string_view>

#include "lowbit/check_report.hpp"

namespace lowbit::check_report {

enum class Op : uint32_t {
  none = 0,
  quantize = 1,
  gguf_quantize = 2,
  fused = 3,
  fake_quantize = 4,
  fake_quantize_backward = 5,
};

/// What the first refusal was (the op's flag that was set, in the order the ops throw).
enum class Kind : uint32_t {
  non_finite = 1,     ///< word = ~flat element index (fused: ~(index << 1 | is_nan))
  given = 2,          ///< quantize: invalid given scale / zero point / global; word = ~group
  overflow = 3,       ///< GGUF: an f16 scale / min overflows; word = ~block
  non_finite_dy = 4,  ///< fake_quantize_backward: dy's first NaN / Inf; word = ~index
};

struct CheckRecord {
  unsigned long long seq;  ///< 0: none; else the refused call's number (per op, from 1)
  uint32_t op;
  uint32_t kind;
  unsigned long long word;
};

inline constexpr int kRegionBytes = 128;
inline constexpr int kRegions = 6;  ///< indexed by Op
/// The calls counter's offset in each region (the op's own words come before it).
inline constexpr int kCallsOffset = kRegionBytes - 8;

}  // namespace lowbit::check_report

namespace lowbit {

struct CheckReport::Impl {
  Device device = Device::cpu();
  void* device_words = nullptr;               ///< kRegions x kRegionBytes, zero
  check_report::CheckRecord* host = nullptr;  ///< pinned, mapped
  check_report::CheckRecord* host_on_device = nullptr;

  /// The op's region of device words (null for a CPU report).
  void* region(check_report::Op op) const {
    return device_words ? static_cast<unsigned char*>(device_words) +
                              static_cast<int>(op) * check_report::kRegionBytes
                        : nullptr;
  }
};

namespace check_report {

/// The report a checked CUDA call records into: null without a report, with the check off,
/// or for a CPU report (the call then checks as it would without one).
inline const CheckReport::Impl* for_call(const CheckReport* r, bool check_finite) {
  if (!r || !check_finite) return nullptr;
  const CheckReport::Impl& i = r->impl();  // throws for a moved-from report
  return i.device_words ? &i : nullptr;
}

/// The ops' check_args: a report must be usable and, for a CUDA plan, of the plan's device
/// (CPU kernels throw at once and ignore it). check_report.cpp.
void check_arg(std::string_view op, const CheckReport* r, const Device& device);

}  // namespace check_report
}  // namespace lowbit

#if LOWBIT_HAS_CUDA && !defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif
#if LOWBIT_HAS_CUDA
namespace lowbit::check_report {
/// The report's device words (zeroed) and mapped record; throws Error(device_error).
void allocate(CheckReport::Impl& r);
void release(CheckReport::Impl& r) noexcept;
/// Enqueues the record kernel on `stream` (ops whose kernels have no last-block hand-off of
/// their own): it adds one to the region's call count, moves the first set word of
/// `flags[0 .. n)` (in that order: kinds[i] names flag i) into the record if no earlier call
/// refused, and zeroes the region's first `zero_words` words (>= n: the flags and any
/// other per-call words). check_report_cuda.cu.
void enqueue_record(const CheckReport::Impl& r, Op op, int n, const Kind* kinds,
                    cudaStream_t stream, int zero_words);
/// The same with the flags elsewhere (an op's per-call device words, zeroed by the op): they
/// are read, not zeroed; the call is counted in the op's region.
void enqueue_record_from(const CheckReport::Impl& r, Op op, const unsigned long long* flags, int n,
                         const Kind* kinds, cudaStream_t stream);
}  // namespace lowbit::check_report
#endif
