// Shared pieces of the model-file commands (quantize, dequantize, inspect, verify): the
// input model (one safetensors file or a sharded index), row slices of quantized tensors,
// error metrics, a progress bar, and formatting.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/io.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit::cli {

/// One logical tensor of the input, from a safetensors file or a GGUF file.
struct InputTensor {
  std::string name;
  bool quantized = false;
  // plain tensors
  io::StDtype st_dtype = io::StDtype::U8;
  std::optional<Dtype> dtype;  ///< nullopt: raw bytes only
  Shape shape;                 ///< the logical shape (quantized too)
  std::span<const uint8_t> data;
  TensorView view;  ///< zero-copy (u8 [nbytes] without a lowbit dtype); may be misaligned
  // quantized tensors
  QuantizedView qview;    ///< zero-copy parts; may be misaligned
  int64_t nbytes = 0;     ///< bytes stored (all parts)
  std::string type_text;  ///< "F32", "int4:block32:asym", "q4_K" (for reports)
  // where it lives
  const io::SafetensorsReader* st_file = nullptr;
  io::StEntry st_entry;
  const io::GgufReader* gguf_file = nullptr;
  const io::GgufTensor* gguf_tensor = nullptr;
  /// Drops the tensor's pages from the resident set.
  void release() const;
};

/// A model to read: a .safetensors file, a sharded one through its
/// model.safetensors.index.json (every shard validated; the index must list exactly the
/// shards' tensors), or a .gguf file.
struct ModelInput {
  std::string format;              ///< "safetensors" or "gguf"
  std::vector<std::string> paths;  ///< the files read (the index first, if any)
  std::vector<std::unique_ptr<io::SafetensorsReader>> files;
  std::unique_ptr<io::GgufReader> gguf;
  std::vector<InputTensor> tensors;                           ///< shard by shard, file order
  std::vector<std::pair<std::string, std::string>> metadata;  ///< safetensors: the shards' (first
                                                              ///< wins); GGUF: key -> JSON value
  int64_t total_bytes = 0;                                    ///< sizes of all files

  static ModelInput open(const std::string& path);
};

/// A model to write: .gguf (GGUF v3) by the extension, else safetensors; atomic either way.
/// GGUF holds plain F32 F16 BF16 F64 I8 I16 I32 I64 tensors of at most 4 dims and GGUF
/// schemes (q8_0 ... q8_K); anything else is Error(unsupported) naming the tensor.
class ModelOutput {
 public:
  ModelOutput(const std::string& path, bool force);
  bool is_gguf() const { return gguf_ != nullptr; }
  /// Copies the input's metadata: safetensors string entries as they are; GGUF entries as
  /// they are into GGUF, as "gguf.<key>" = JSON text into safetensors. `skip` drops keys.
  void copy_metadata(const ModelInput& in, const std::vector<std::string>& skip = {});
  void add_plain(const std::string& name, io::StDtype dtype, const Shape& shape);
  void add_quantized(const std::string& name, const QuantScheme& scheme, const Shape& shape);
  void begin();
  void write_plain(const std::string& name, std::span<const uint8_t> bytes);
  void write_quantized(const std::string& name, const QuantizedView& q);
  void commit();
  int64_t file_size() const;

 private:
  std::unique_ptr<io::SafetensorsWriter> st_;
  std::unique_ptr<io::GgufWriter> gguf_;
};

/// Throws Error(invalid_argument) if `out` is (a link to) one of the input's files.
void check_not_input(const ModelInput& in, const std::string& out);

/// Rows [r0, r1) of a 2-D quantized tensor, as a view of the same memory. Granularities
/// whose groups span rows keep their whole scale (tensor, channel along axis 1) or need
/// r0, r1 on tile edges (block2d). Packed codes need r0 * K even.
QuantizedView row_slice(const QuantizedView& q, int64_t r0, int64_t r1);
/// True if quantizing row slices separately gives the whole tensor's bits (the groups do
/// not span rows and no scale is tensor-wide).
bool rows_are_independent(const QuantScheme& scheme, const Shape& shape);
/// The row multiple that row_slice needs for `scheme` on `shape`.
int64_t row_alignment(const QuantScheme& scheme, const Shape& shape);

/// The aligned, contiguous CPU copy of a view if it is misaligned for its dtype.
bool is_aligned(const TensorView& v);
Tensor copy_of(const TensorView& v);
/// A quantized view whose parts are all aligned (copies into `storage` when needed).
QuantizedView aligned(const QuantizedView& q, QuantizedTensor& storage);

/// Error statistics of an approximation `y` of `x` (same shape; f32/f16/bf16/f64), in f64.
struct ErrorStats {
  double sum_sq_err = 0;
  double sum_sq_ref = 0;
  double max_abs_err = 0;
  int64_t count = 0;
  void add(const ErrorStats& o);
  double nmse() const;    ///< sum (x - y)^2 / sum x^2 (0 when both are 0, inf when only x is)
  double snr_db() const;  ///< -10 log10(nmse); inf for an exact copy
};
ErrorStats compare(const TensorView& x, const TensorView& y);

/// Quantizes a 2-D or N-D float tensor with `threads` threads (row chunks when the rows
/// are independent; one call otherwise), and measures the error by dequantizing to f32,
/// in row chunks, in parallel. Bit-identical to quantize(src, scheme).
struct QuantizeResult {
  QuantizedTensor q;
  ErrorStats stats;
};
QuantizeResult quantize_measured(const TensorView& src, const QuantScheme& scheme, int threads,
                                 Device device);

/// "1.5 MiB".
std::string human_bytes(int64_t bytes);
/// Peak resident set size of this process so far, in bytes (VmHWM of /proc/self/status;
/// getrusage where that is missing).
int64_t peak_rss_bytes();
/// Matches `name` against shell globs (fnmatch; '*' crosses dots).
bool matches_any(const std::string& name, const std::vector<std::string>& globs);

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class Progress {
 public:
  Progress(int64_t total, bool enabled);
  ~Progress();
  void step(const std::string& label);
  void done();

 private:
  int64_t total_;
  int64_t n_ = 0;
  bool on_;
};

}  // namespace lowbit::cli
