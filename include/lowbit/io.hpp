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

// ---- GGUF -----------------------------------------------------------------------------------

/// GGUF metadata value types (gguf_type), as stored.
enum class GgufValueType : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

/// One metadata entry of a GGUF file: its key, type and encoded value (a view of the file).
struct GgufKV {
  std::string key;
  GgufValueType type = GgufValueType::u8;
  GgufValueType elem_type = GgufValueType::u8;  ///< arrays only
  uint64_t count = 0;                           ///< arrays only: element count
  std::span<const uint8_t> value;  ///< the bytes after the type id (arrays: after elem type, count)
  /// The value as JSON text: numbers, true/false, "strings", [arrays].
  std::string json() const;
  /// The value of a string entry (nullopt for other types).
  std::optional<std::string> as_string() const;
};

/// A tensor of a GGUF file.
struct GgufTensor {
  std::string name;
  uint32_t ggml_type = 0;
  Shape shape;         ///< outermost first (numpy order): ggml's ne[] reversed
  int64_t offset = 0;  ///< in the data section
  int64_t nbytes = 0;
};

/// ggml type ids lowbit reads and writes: f32, f16, bf16, f64, i8, i16, i32, i64 (plain) and
/// the block types of gguf_blocks.hpp. Returns the safetensors dtype of a plain type.
std::optional<StDtype> ggml_plain_st_dtype(uint32_t ggml_type);
std::optional<uint32_t> ggml_type_of(StDtype dtype);
/// ggml's name of a type id ("f32", "q4_K", "i8"); "type <id>" if unknown.
std::string ggml_type_name(uint32_t ggml_type);
/// Bytes of a tensor of `shape` (numpy order) of `ggml_type`; throws Error(invalid_argument)
/// for an unknown type, a shape that does not fit its blocks, or overflow.
int64_t ggml_nbytes(uint32_t ggml_type, const Shape& shape);

/// A validated GGUF (v2 / v3) file, memory-mapped, with ggml's checks and stricter ones
/// (docs/formats.md, "GGUF files"). Move-only.
class GgufReader {
 public:
  static GgufReader open(const std::string& path);
  static GgufReader parse(std::span<const uint8_t> bytes, const std::string& label = "<memory>");

  const std::string& path() const { return label_; }
  uint32_t version() const { return version_; }
  int64_t alignment() const { return alignment_; }
  int64_t data_offset() const { return data_offset_; }
  int64_t file_size() const { return static_cast<int64_t>(bytes_.size()); }
  const std::vector<GgufKV>& metadata() const { return kvs_; }
  const GgufKV* find_kv(std::string_view key) const;
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(std::string_view name) const;
  std::span<const uint8_t> bytes(const GgufTensor& t) const;
  /// Block-quantized (a GGUF scheme) rather than plain.
  bool is_quantized(const GgufTensor& t) const;
  /// Plain tensors: a zero-copy view (types without a lowbit dtype: u8 [nbytes]).
  TensorView view(const GgufTensor& t) const;
  /// Block types: the scheme (q4_K, ...) and codes u8 [rows, row bytes], zero-copy.
  QuantizedView quantized_view(const GgufTensor& t) const;
  void release(const GgufTensor& t) const;

 private:
  void parse_all();
  std::shared_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  std::string label_;
  uint32_t version_ = 0;
  int64_t alignment_ = 32;
  int64_t data_offset_ = 0;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensor> tensors_;
};

/// Writes a GGUF v3 file atomically (like SafetensorsWriter): declare, begin(), write in any
/// order, commit(). Tensors are laid out in declaration order, each at an offset aligned to
/// `general.alignment` (32 unless set), zero-padded.
class GgufWriter {
 public:
  explicit GgufWriter(std::string path, WriteOptions options = {});
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  void set_string(const std::string& key, const std::string& value);
  void set_u32(const std::string& key, uint32_t value);
  /// Copies an entry of another file (its encoded value).
  void set_kv(const GgufKV& kv);
  void add_tensor(const std::string& name, uint32_t ggml_type, const Shape& shape);
  void begin();
  void write(std::string_view name, std::span<const uint8_t> bytes);
  void commit();
  int64_t file_size() const { return file_size_; }

 private:
  struct Kv {
    std::string key;
    uint32_t type;
    std::string encoded;  ///< the value's bytes (arrays: elem type, count, elements)
  };
  struct Slot {
    std::string name;
    uint32_t type;
    Shape shape;
    int64_t nbytes = 0;
    int64_t offset = 0;
    bool written = false;
  };
  void set(Kv kv);
  std::string path_;
  WriteOptions options_;
  std::vector<Kv> kvs_;
  std::vector<Slot> slots_;
  std::unique_ptr<AtomicFile> file_;
  bool begun_ = false;
  bool committed_ = false;
  int64_t data_offset_ = 0;
  int64_t file_size_ = 0;
};

}  // namespace lowbit::io
