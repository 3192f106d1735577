// CheckReport: construction, and a record turned into an Error's text (check_report_impl.hpp
// has the memory layout; the CUDA side is src/cuda/check_report_cuda.cu).
#include <cstring>
#include <string>

#include "core/check_report_impl.hpp"
#include "lowbit/error.hpp"

namespace lowbit {

using check_report::CheckRecord;
using check_report::Kind;
using check_report::Op;

CheckReport::CheckReport(Device device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  if (!device.is_cuda()) return;
#if LOWBIT_HAS_CUDA
  check_report::allocate(*impl_);
#else
  throw_error(ErrorCode::unsupported,
              "CheckReport: " + device.str() + " needs a build with CUDA (LOWBIT_CUDA=ON)");
#endif
}

CheckReport::~CheckReport() {
#if LOWBIT_HAS_CUDA
  if (impl_) check_report::release(*impl_);
#endif
}

CheckReport::CheckReport(CheckReport&&) noexcept = default;

CheckReport& CheckReport::operator=(CheckReport&& o) noexcept {
  if (this != &o) {
#if LOWBIT_HAS_CUDA
    if (impl_) check_report::release(*impl_);
#endif
    impl_ = std::move(o.impl_);
  }
  return *this;
}

CheckReport::Impl& CheckReport::impl() const {
  if (!impl_) throw_error(ErrorCode::invalid_argument, "CheckReport: used after being moved from");
  return *impl_;
}

Device CheckReport::device() const { return impl().device; }

namespace {

/// The record as the device last wrote it (the host side is mapped memory: read it once).
CheckRecord read_record(const CheckReport::Impl* r) {
  CheckRecord rec{};
  if (!r || !r->host) return rec;
  const volatile CheckRecord* h = r->host;
  rec.seq = h->seq;
  rec.op = h->op;
  rec.kind = h->kind;
  rec.word = h->word;
  return rec;
}

std::string nth(unsigned long long n) {
  const unsigned long long t = n % 100;
  const char* suffix = (t >= 11 && t <= 13) ? "th"
                       : n % 10 == 1        ? "st"
                       : n % 10 == 2        ? "nd"
                       : n % 10 == 3        ? "rd"
                                            : "th";
  return std::to_string(n) + suffix;
}

}  // namespace

bool CheckReport::failed() const { return read_record(impl_.get()).seq != 0; }

std::string CheckReport::message() const {
  const CheckRecord rec = read_record(impl_.get());
  if (rec.seq == 0) return {};
  const unsigned long long index = ~rec.word;
  const auto op = static_cast<Op>(rec.op);
  const char* kernel = op == Op::fused                    ? "fused_cuda"
                       : op == Op::gguf_quantize          ? "gguf_quantize_cuda"
                       : op == Op::fake_quantize          ? "fake_quantize_cuda"
                       : op == Op::fake_quantize_backward ? "fake_quantize_backward_cuda"
                                                          : "quantize_cuda";
  const char* name = op == Op::fake_quantize            ? "fake_quantize"
                     : op == Op::fake_quantize_backward ? "fake_quantize_backward"
                                                        : "quantize";
  const char* src = op == Op::fake_quantize_backward ? "x" : "src";
  const std::string call = "the " + nth(rec.seq) + " " + kernel + " call given this CheckReport";
  switch (static_cast<Kind>(rec.kind)) {
    case Kind::non_finite:
      if (op == Op::fused)
        return "fused: quantize epilogue (" + call + "): the expression's value at flat index " +
               std::to_string(index >> 1) + " is " + ((index & 1) ? "NaN" : "Inf") +
               "; quantization needs finite inputs (replace or mask non-finite values first)";
      return std::string(name) + " (" + call + "): " + src + " element at flat index " +
             std::to_string(index) +
             " is NaN or Inf; quantization needs finite inputs (replace or mask non-finite "
             "values first)";
    case Kind::non_finite_dy:
      return std::string(name) + " (" + call + "): dy element at flat index " +
             std::to_string(index) + " is NaN or Inf";
    case Kind::given:
      return std::string(name) + " (" + call +
             "): the given scale, zero point or global scale of group " + std::to_string(index) +
             " is invalid (scales must be finite, >= 0, and 0 or at least 2^-126; zero points "
             "inside the code range)";
    case Kind::overflow:
      return "quantize (" + call + "): GGUF block " + std::to_string(index) +
             "'s f16 scale or min overflows (values too large for the format)";
  }
  return "CheckReport: the " + call + " refused its input (record kind " +
         std::to_string(rec.kind) + ")";
}

void check_report::check_arg(std::string_view op, const CheckReport* r, const Device& device) {
  if (!r) return;
  const Device rd = r->device();  // throws for a moved-from report
  if (device.is_cuda() && !(rd == device))
    throw_error(ErrorCode::invalid_argument, std::string(op) + ": the CheckReport is for " +
                                                 rd.str() + ", the plan runs on " + device.str());
}

void CheckReport::throw_if_failed() {
  std::string m = message();
  if (m.empty()) return;
  clear();
  throw_error(ErrorCode::invalid_argument, m);
}

void CheckReport::clear() {
  if (!impl_ || !impl_->host) return;
  volatile CheckRecord* h = impl_->host;
  h->seq = 0;
  h->op = 0;
  h->kind = 0;
  h->word = 0;
}

}  // namespace lowbit
