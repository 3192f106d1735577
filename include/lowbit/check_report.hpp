// CheckReport: where checked calls on a CUDA stream report a refused input instead of
// waiting for their kernels (the pattern of cuSOLVER's `devInfo`).
//
// A checked CUDA call (QuantizeDesc::check_finite, the default; the fusion JIT's quantize
// epilogue likewise) refuses NaN / Inf inputs with an Error naming the first one, which means
// that run() waits for its kernels: the host learns the answer only when they are done, the
// stream drains before the next call is launched, and the call cannot be captured into a
// CUDA graph. Given a CheckReport in its arguments, the same call checks the same things but
// does not wait: its kernels record the first refusal in the report and run() returns as an
// unchecked call does. The caller asks the report after synchronising the stream:
//
//   lowbit::CheckReport report(lowbit::Device::cuda(0));
//   for (...) plan.run(stream, {}, {x, q, &report});   // no waits
//   stream.synchronize();
//   report.throw_if_failed();   // Error naming the first refused call and element
//
// The outputs of a refused call are unspecified (memory-safe), as with check_finite off; the
// report keeps the first refusal in stream order and counts the calls of each op. Rules:
//  * calls given one report must be ordered on one stream (their kernels share its words),
//    and the report must outlive them (their kernels write into its memory);
//  * failed() / throw_if_failed() / clear() are meaningful only once those calls are done
//    (after synchronising their stream);
//  * CPU kernels run synchronously: given a report they still throw at once, as without one;
//  * with check_finite off a report is ignored.
// Ops that take one: quantize (QuantizeArgs::report: quantize_cuda, gguf_quantize_cuda),
// fake_quantize and its backward (FakeQuantizeArgs / FakeQuantizeBackwardArgs::report) and
// the fusion JIT's quantize epilogue (FusedArgs::report).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lowbit/device.hpp"

namespace lowbit {

class CheckReport {
 public:
  /// A report for calls on `device` (a CUDA device: pinned, mapped host memory and a few
  /// device words; a CPU device: nothing to allocate, nothing is ever recorded).
  explicit CheckReport(Device device);
  ~CheckReport();
  CheckReport(CheckReport&&) noexcept;
  CheckReport& operator=(CheckReport&&) noexcept;
  CheckReport(const CheckReport&) = delete;
  CheckReport& operator=(const CheckReport&) = delete;

  Device device() const;
  /// Whether a call given this report refused its input (since creation or clear()).
  bool failed() const;
  /// The first refusal as an Error's text ("" when none).
  std::string message() const;
  /// Throws Error(invalid_argument) with message() if a call refused its input, after
  /// clearing the refusal (the call counts stay).
  void throw_if_failed();
  /// Forgets a refusal (the call counts stay).
  void clear();

  struct Impl;
  /// The ops' access to the report's memory; throws Error(invalid_argument) after a move.
  Impl& impl() const;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowbit
