// libFuzzer target for the GGUF reader: any input must either open or give
// Error(corrupt_file) (or unsupported, for a ggml type lowbit lacks); never a crash, a leak,
// UB or another error. An opened file's metadata is rendered and its block-quantized tensors
// dequantized (their bytes are arbitrary: the dequantizers accept any bytes).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"

using namespace lowbit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const io::GgufReader r = io::GgufReader::parse(std::span<const uint8_t>(data, size), "fuzz");
    size_t total = 0;
    for (const io::GgufKV& kv : r.metadata()) total += kv.json().size();
    for (const io::GgufTensor& t : r.tensors()) {
      if (!r.is_quantized(t)) {
        total += static_cast<size_t>(r.view(t).numel());
        continue;
      }
      QuantizedView q = r.quantized_view(t);
      if (numel(q.shape) > (int64_t{1} << 20)) continue;         // keep each run fast
      Tensor codes = Tensor::empty(q.codes.shape(), Dtype::u8);  // an aligned copy
      std::memcpy(codes.data(), q.codes.data(), static_cast<size_t>(q.codes.numel()));
      q.codes = codes.view();
      total += static_cast<size_t>(dequantize(q, Dtype::f32).numel());
    }
    if (total == SIZE_MAX) std::abort();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::corrupt_file && e.code() != ErrorCode::unsupported) {
      std::fprintf(stderr, "unexpected error: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
