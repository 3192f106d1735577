// libFuzzer target for the safetensors reader: any input must either open or give
// Error(corrupt_file) (or unsupported); never a crash, a leak, UB or another error. An
// opened file's tensors are viewed and its quantized tensors dequantized (their bytes are
// arbitrary), so the dequantizers see hostile data too.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"

using namespace lowbit;

namespace {

/// An aligned copy of a (possibly misaligned) part, as a caller of quantized_view must make.
Tensor copy_part(const TensorView& v) {
  if (v.numel() == 0) return Tensor();
  Tensor t = Tensor::empty(v.shape(), v.dtype());
  std::memcpy(t.data(), v.data(), static_cast<size_t>(storage_bytes(v.dtype(), v.numel())));
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const io::SafetensorsReader r =
        io::SafetensorsReader::parse(std::span<const uint8_t>(data, size), "fuzz");
    int64_t total = 0;
    for (const io::StEntry& e : r.entries()) {
      if (e.plain) {
        const TensorView v = r.view(*e.plain);
        total += storage_bytes(v.dtype(), v.numel());
        continue;
      }
      const QuantizedView q = r.quantized_view(*e.quantized);
      if (numel(q.shape) > (int64_t{1} << 20)) continue;  // keep each run fast
      const Tensor codes = copy_part(q.codes), scale = copy_part(q.scale), zero = copy_part(q.zero),
                   global = copy_part(q.global_scale);
      QuantizedView a = q;
      if (codes.numel()) a.codes = codes.view();
      if (scale.numel()) a.scale = scale.view();
      if (zero.numel()) a.zero = zero.view();
      if (global.numel()) a.global_scale = global.view();
      const Tensor y = dequantize(a, Dtype::f32);
      total += y.numel();
    }
    if (total < 0) std::abort();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::corrupt_file && e.code() != ErrorCode::unsupported) {
      std::fprintf(stderr, "unexpected error: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
