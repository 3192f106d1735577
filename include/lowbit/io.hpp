// Model files: a memory-mapped safetensors reader (zero-copy views), an atomic safetensors
// writer, and the layout of lowbit's quantized tensors inside a safetensors file.
//
//   io::SafetensorsReader in = io::SafetensorsReader::open("model.safetensors");
//   for (const io::StTensor& t : in.tensors()) TensorView v = in.view(t);   // no copy
//
//   io::SafetensorsWriter out("q.safetensors");        // refuses an existing file
//   out.add_quantized("w", q.scheme, q.shape);          // declare everything first,
//   out.add_tensor("b", io::StDtype::F32, {384});
//   out.begin();                                        // header -> temp file
//   out.write_quantized("w", q.view());                 // then the data, in any order
//   out.write("b", bias_view);
//   out.commit();                                       // fsync + rename
//
// docs/formats.md ("Files") specifies the validation rules and the quantized layout.
// Every defect of a file is Error(corrupt_file) naming the file, the tensor and the field;
// failing system calls are Error(io_error) with the path and strerror.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/dtype.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit::io {

// ---- safetensors dtypes ---------------------------------------------------------------------

/// The dtypes of the safetensors format, in the order of the reference implementation's
/// enum (the writer sorts tensors by this order, largest first, like the reference).
enum class StDtype : uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};
inline constexpr int kStDtypeCount = 20;

/// "F32", "BF16", "F8_E4M3", ...
std::string_view st_dtype_name(StDtype d);
/// Parses a safetensors dtype name (exact spelling); nullopt if unknown.
std::optional<StDtype> parse_st_dtype(std::string_view text);
/// Bits per element (4 for F4, 6 for the F6 types, 1 byte for BOOL).
int st_dtype_bits(StDtype d);
/// The lowbit Dtype with the same element encoding; nullopt for BOOL, U16, I64, U64, C64,
/// F6_E2M3, F6_E3M2 (such tensors are read and written as raw bytes).
std::optional<Dtype> to_dtype(StDtype d);
/// The safetensors dtype of a lowbit Dtype; nullopt for i4 and u4 (no safetensors type).
std::optional<StDtype> to_st_dtype(Dtype d);

// ---- memory-mapped files --------------------------------------------------------------------

/// A read-only, private memory mapping of a whole regular file. Move-only.
class MappedFile {
 public:
  MappedFile() = default;
  /// Throws Error(io_error) naming the path and the reason (missing, not a regular file...).
  static MappedFile open(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, static_cast<size_t>(size_)}; }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  /// Drops the pages of [offset, offset + length) from this process's resident set (they
  /// stay in the page cache and are read again on the next access). Lets a streaming pass
  /// over a file larger than RAM keep its peak RSS near one tensor.
  void release(int64_t offset, int64_t length) const;

 private:
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0;
  std::string path_;
};

// ---- quantized tensors in files -------------------------------------------------------------

/// How one part of a quantized tensor is stored: tensor `<name><suffix>` with safetensors
/// dtype `st_dtype` and shape `file_shape`; in memory it is `dtype` of `shape` (the part of
/// QuantizedTensor::allocate).
struct StoredPart {
  enum Kind : uint8_t { codes, scale, zero, global_scale };
  Kind kind;
  std::string_view suffix;  ///< "", ".scale", ".zero", ".global_scale"
  StDtype st_dtype;
  Shape file_shape;
  Dtype dtype;
  Shape shape;
  int64_t nbytes;
};

/// The parts that `scheme` applied to `shape` stores, codes first. Throws
/// Error(invalid_argument) if the shape does not fit the scheme.
std::vector<StoredPart> stored_parts(const QuantScheme& scheme, const Shape& shape);

/// Metadata keys of a quantized tensor: "lowbit.scheme.<name>", "lowbit.shape.<name>".
std::string scheme_key(std::string_view name);
std::string shape_key(std::string_view name);
/// Parses a shape as Dims::str() writes it ("[768, 384]", "[]"); nullopt if malformed.
std::optional<Shape> parse_shape_text(std::string_view text);

// ---- reading --------------------------------------------------------------------------------

/// A tensor as stored in a safetensors file.
struct StTensor {
  std::string name;
  StDtype st_dtype = StDtype::U8;
  std::optional<Dtype> dtype;  ///< to_dtype(st_dtype)
  Shape shape;
  int64_t begin = 0;  ///< byte offsets in the data section (after the header)
  int64_t end = 0;
  int64_t nbytes() const { return end - begin; }
};

/// A lowbit quantized tensor: its scheme and logical shape (from the metadata) and the
/// indices (into SafetensorsReader::tensors()) of its parts, -1 where absent.
struct StQuantized {
  std::string name;
  QuantScheme scheme;
  Shape shape;
  int codes = -1;
  int scale = -1;
  int zero = -1;
  int global_scale = -1;
  int64_t nbytes = 0;  ///< all parts together
};

/// One logical tensor of a file: a plain tensor or a quantized one (exactly one is set).
struct StEntry {
  const StTensor* plain = nullptr;
  const StQuantized* quantized = nullptr;
  const std::string& name() const { return plain ? plain->name : quantized->name; }
};

/// Largest accepted header (the reference implementation's limit).
inline constexpr int64_t kMaxHeaderBytes = 100'000'000;

/// A validated safetensors file. Opening checks everything docs/formats.md lists; the
/// tensors' bytes are then read lazily, straight from the mapping. Move-only.
class SafetensorsReader {
 public:
  /// Maps and validates `path`; throws Error(io_error) or Error(corrupt_file).
  static SafetensorsReader open(const std::string& path);
  /// Validates an in-memory file (the caller keeps `bytes` alive while the reader is used);
  /// `label` names it in error messages.
  static SafetensorsReader parse(std::span<const uint8_t> bytes,
                                 const std::string& label = "<memory>");

  const std::string& path() const { return label_; }
  int64_t file_size() const { return static_cast<int64_t>(bytes_.size()); }
  int64_t header_size() const { return header_size_; }  ///< the JSON's bytes (N)
  int64_t data_offset() const { return 8 + header_size_; }

  /// The stored tensors, in data-offset order.
  const std::vector<StTensor>& tensors() const { return tensors_; }
  const StTensor* find(std::string_view name) const;
  /// `__metadata__`, in file order (empty if absent).
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  const std::string* metadata_value(std::string_view key) const;

  /// The bytes of a tensor, in the mapping.
  std::span<const uint8_t> bytes(const StTensor& t) const;
  /// A zero-copy view (read-only memory: writing through it faults). Tensors whose dtype
  /// lowbit lacks are viewed as u8 [nbytes]. safetensors does not align tensor data: the
  /// view may be misaligned for its dtype (see is_aligned).
  TensorView view(const StTensor& t) const;
  bool is_aligned(const StTensor& t) const;

  /// The quantized tensors (from `lowbit.scheme.*` metadata), in the order of their codes.
  const std::vector<StQuantized>& quantized() const { return quantized_; }
  const StQuantized* find_quantized(std::string_view name) const;
  /// Zero-copy views of a quantized tensor's parts.
  QuantizedView quantized_view(const StQuantized& q) const;

  /// The logical tensors: each quantized tensor once (its parts folded in) and every other
  /// stored tensor, in data-offset order of their first part.
  std::vector<StEntry> entries() const;

  /// Drops a tensor's pages from the resident set (no-op for parse()d buffers).
  void release(const StTensor& t) const;

 private:
  void parse_header();
  void parse_quantized();

  std::shared_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  std::string label_;
  int64_t header_size_ = 0;
  std::vector<StTensor> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::vector<StQuantized> quantized_;
  std::vector<int> part_of_;  ///< per tensor: index of its StQuantized, or -1
};

// ---- writing --------------------------------------------------------------------------------

class AtomicFile;

struct WriteOptions {
  bool overwrite = false;  ///< replace an existing file (otherwise Error(io_error))
};

/// Writes a safetensors file atomically: the header and data go to a temporary file in the
/// destination's directory, which commit() fsyncs and renames into place; a writer
/// destroyed before commit() removes it. Tensors are laid out like the reference writer
/// (by dtype, largest first, then by name), so every tensor is aligned to its element size.
class SafetensorsWriter {
 public:
  /// Throws Error(io_error) if `path` exists and !options.overwrite.
  explicit SafetensorsWriter(std::string path, WriteOptions options = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  /// Sets a `__metadata__` entry (a later value for the same key replaces the earlier one).
  /// The header has a `__metadata__` object iff at least one entry is set.
  void set_metadata(const std::string& key, const std::string& value);
  /// Declares a tensor. Throws Error(invalid_argument) for a duplicate or empty name, or a
  /// shape whose bytes are not whole (F4 / F6 element counts).
  void add_tensor(const std::string& name, StDtype dtype, const Shape& shape);
  /// Declares a quantized tensor: its parts (stored_parts) and its two metadata entries.
  void add_quantized(const std::string& name, const QuantScheme& scheme, const Shape& shape);

  /// Creates the temporary file and writes the header; no declarations after this.
  void begin();
  /// Writes a declared tensor's bytes (exactly its size), in any order, each once.
  void write(std::string_view name, std::span<const uint8_t> bytes);
  /// Writes a declared tensor from a contiguous CPU view of its size.
  void write(std::string_view name, const TensorView& view);
  void write_quantized(std::string_view name, const QuantizedView& q);
  /// Checks every tensor was written, fsyncs, renames into place (without replacing an
  /// existing file unless overwrite), and fsyncs the directory.
  void commit();

  int64_t file_size() const { return data_offset_ + data_size_; }
  const std::string& path() const { return path_; }

 private:
  struct Slot {
    std::string name;
    StDtype dtype;
    Shape shape;
    int64_t nbytes = 0;
    int64_t begin = 0;
    bool written = false;
  };
  Slot& slot(std::string_view name);

  std::string path_;
  WriteOptions options_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::vector<Slot> slots_;
  std::unique_ptr<AtomicFile> file_;
  bool begun_ = false;
  bool committed_ = false;
  int64_t data_offset_ = 0;
  int64_t data_size_ = 0;
};

}  // namespace lowbit::io
