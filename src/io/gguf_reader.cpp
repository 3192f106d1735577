// GgufReader: validation of a GGUF v2 / v3 file with ggml's discipline (gguf.cpp's
// gguf_init_from_file_impl) and stricter checks (docs/formats.md, "GGUF files").
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_set>

#include "io/io_util.hpp"
#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "lowbit/io.hpp"

namespace lowbit::io {
namespace {

constexpr uint32_t kGgmlTypeCount = 42;  // ggml's GGML_TYPE_COUNT (gguf 0.19: up to Q1_0 = 41)
constexpr size_t kGgmlMaxName = 64;      // GGML_MAX_NAME, with the NUL
constexpr int kGgmlMaxDims = 4;

struct PlainType {
  uint32_t id;
  StDtype st;
  const char* name;
};
constexpr PlainType kPlain[] = {
    {0, StDtype::F32, "f32"},  {1, StDtype::F16, "f16"},  {30, StDtype::BF16, "bf16"},
    {24, StDtype::I8, "i8"},   {25, StDtype::I16, "i16"}, {26, StDtype::I32, "i32"},
    {27, StDtype::I64, "i64"}, {28, StDtype::F64, "f64"},
};

int scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8:
    case GgufValueType::i8:
    case GgufValueType::boolean:
      return 1;
    case GgufValueType::u16:
    case GgufValueType::i16:
      return 2;
    case GgufValueType::u32:
    case GgufValueType::i32:
    case GgufValueType::f32:
      return 4;
    case GgufValueType::u64:
    case GgufValueType::i64:
    case GgufValueType::f64:
      return 8;
    default:
      return 0;  // string, array
  }
}

const char* type_name(GgufValueType t) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  return static_cast<uint32_t>(t) < 13 ? names[static_cast<uint32_t>(t)] : "?";
}

class Cursor {
 public:
  Cursor(std::span<const uint8_t> b, const std::string& label) : b_(b), label_(label) {}
  [[noreturn]] void corrupt(const std::string& msg) const {
    throw_error(ErrorCode::corrupt_file, fmt::format("{}: {}", label_, msg));
  }
  int64_t pos() const { return pos_; }
  int64_t left() const { return static_cast<int64_t>(b_.size()) - pos_; }
  void need(int64_t n, const std::string& what) const {
    if (n < 0 || n > left())
      corrupt(
          fmt::format("truncated: {} at byte {} needs {} bytes, {} left", what, pos_, n, left()));
  }
  const uint8_t* take(int64_t n, const std::string& what) {
    need(n, what);
    const uint8_t* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint32_t u32(const std::string& what) { return load_le32(take(4, what)); }
  uint64_t u64(const std::string& what) { return load_le64(take(8, what)); }
  std::string_view str(const std::string& what) {
    const uint64_t n = u64(what + " length");
    if (n > static_cast<uint64_t>(left()))
      corrupt(fmt::format("{}: length {} at byte {} runs past the end of the file ({} bytes left)",
                          what, n, pos_ - 8, left()));
    const uint8_t* p = take(static_cast<int64_t>(n), what);
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(n)};
  }

 private:
  std::span<const uint8_t> b_;
  const std::string& label_;
  int64_t pos_ = 0;
};

void append_scalar_json(std::string& out, GgufValueType t, const uint8_t* p) {
  uint64_t v = 0;
  const int size = scalar_size(t);
  for (int i = size - 1; i >= 0; --i) v = (v << 8) | p[i];
  switch (t) {
    case GgufValueType::u8:
    case GgufValueType::u16:
    case GgufValueType::u32:
    case GgufValueType::u64:
      out += fmt::format("{}", v);
      break;
    case GgufValueType::i8:
      out += fmt::format("{}", static_cast<int8_t>(v));
      break;
    case GgufValueType::i16:
      out += fmt::format("{}", static_cast<int16_t>(v));
      break;
    case GgufValueType::i32:
      out += fmt::format("{}", static_cast<int32_t>(v));
      break;
    case GgufValueType::i64:
      out += fmt::format("{}", static_cast<int64_t>(v));
      break;
    case GgufValueType::boolean:
      out += v ? "true" : "false";
      break;
    case GgufValueType::f32: {
      float f;
      const uint32_t b = static_cast<uint32_t>(v);
      std::memcpy(&f, &b, 4);
      out += std::isfinite(f) ? fmt::format("{}", f) : "null";
      break;
    }
    case GgufValueType::f64: {
      double d;
      std::memcpy(&d, &v, 8);
      out += std::isfinite(d) ? fmt::format("{}", d) : "null";
      break;
    }
    default:
      out += "null";
  }
}

}  // namespace

// ---- types ----------------------------------------------------------------------------------

std::optional<StDtype> ggml_plain_st_dtype(uint32_t ggml_type) {
  for (const PlainType& p : kPlain)
    if (p.id == ggml_type) return p.st;
  return std::nullopt;
}

std::optional<uint32_t> ggml_type_of(StDtype dtype) {
  for (const PlainType& p : kPlain)
    if (p.st == dtype) return p.id;
  return std::nullopt;
}

std::string ggml_type_name(uint32_t ggml_type) {
  for (const PlainType& p : kPlain)
    if (p.id == ggml_type) return p.name;
  if (const auto* l = gguf::block_layout(static_cast<gguf::GgmlType>(ggml_type)))
    return std::string(l->name);
  return fmt::format("type {}", ggml_type);
}

int64_t ggml_nbytes(uint32_t ggml_type, const Shape& shape) {
  int64_t count = 1;
  for (int64_t d : shape)
    if (d < 0 || !checked_mul(count, d, count))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("shape {}: negative or overflowing", shape.str()));
  if (const auto st = ggml_plain_st_dtype(ggml_type)) {
    int64_t bytes = 0;
    if (!checked_mul(count, st_dtype_bits(*st) / 8, bytes))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("shape {}: size overflows", shape.str()));
    return bytes;
  }
  const auto* l = gguf::block_layout(static_cast<gguf::GgmlType>(ggml_type));
  if (l == nullptr)
    throw_error(ErrorCode::unsupported,
                fmt::format("ggml type {} is not supported by lowbit", ggml_type));
  const int64_t k = shape.empty() ? 1 : shape[shape.size() - 1];
  if (k % l->block_elems != 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("a row of {} elements is not a whole number of {} blocks of {}", k,
                            l->name, l->block_elems));
  if (count == 0) return 0;
  int64_t bytes = 0;
  if (!checked_mul(count / l->block_elems, l->block_bytes, bytes))
    throw_error(ErrorCode::invalid_argument, fmt::format("shape {}: size overflows", shape.str()));
  return bytes;
}

// ---- metadata values ------------------------------------------------------------------------

std::string GgufKV::json() const {
  std::string out;
  if (type == GgufValueType::string) {
    append_json_string(
        out, std::string_view(reinterpret_cast<const char*>(value.data()) + 8, value.size() - 8));
    return out;
  }
  if (type != GgufValueType::array) {
    append_scalar_json(out, type, value.data());
    return out;
  }
  out += '[';
  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (i) out += ',';
    if (elem_type == GgufValueType::string) {
      const uint64_t n = load_le64(value.data() + pos);
      append_json_string(out,
                         std::string_view(reinterpret_cast<const char*>(value.data()) + pos + 8,
                                          static_cast<size_t>(n)));
      pos += 8 + static_cast<size_t>(n);
    } else {
      append_scalar_json(out, elem_type, value.data() + pos);
      pos += static_cast<size_t>(scalar_size(elem_type));
    }
  }
  out += ']';
  return out;
}

std::optional<std::string> GgufKV::as_string() const {
  if (type != GgufValueType::string) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(value.data()) + 8, value.size() - 8);
}

// ---- reading --------------------------------------------------------------------------------

GgufReader GgufReader::open(const std::string& path) {
  auto file = std::make_shared<MappedFile>(MappedFile::open(path));
  GgufReader r;
  r.bytes_ = file->bytes();
  r.file_ = std::move(file);
  r.label_ = path;
  r.parse_all();
  return r;
}

GgufReader GgufReader::parse(std::span<const uint8_t> bytes, const std::string& label) {
  GgufReader r;
  r.bytes_ = bytes;
  r.label_ = label;
  r.parse_all();
  return r;
}

void GgufReader::parse_all() {
  Cursor c(bytes_, label_);
  const uint8_t* magic = c.take(4, "the magic");
  if (std::memcmp(magic, "GGUF", 4) != 0)
    c.corrupt(fmt::format("bad magic {:02x} {:02x} {:02x} {:02x} (expected 'GGUF')", magic[0],
                          magic[1], magic[2], magic[3]));
  version_ = c.u32("the version");
  if (version_ == 1) c.corrupt("GGUF version 1 is no longer supported (ggml refuses it too)");
  if ((version_ & 0xFFFF) == 0)
    c.corrupt(fmt::format("version 0x{:08x}: a big-endian file (unsupported)", version_));
  if (version_ != 2 && version_ != 3)
    c.corrupt(fmt::format("unsupported GGUF version {} (lowbit reads 2 and 3)", version_));
  const uint64_t n_tensors = c.u64("the tensor count");
  const uint64_t n_kv = c.u64("the metadata count");
  // Each entry takes at least 8 + 4 (+ 1) bytes (key length, type, value); each tensor info
  // 8 + 4 + 4 + 8 (name length, n_dims, type, offset): counts the file cannot hold are refused
  // before anything is allocated.
  if (n_kv > static_cast<uint64_t>(c.left()) / 13)
    c.corrupt(fmt::format("metadata count {} cannot fit in the {} bytes left", n_kv, c.left()));
  if (n_tensors > static_cast<uint64_t>(c.left()) / 24)
    c.corrupt(fmt::format("tensor count {} cannot fit in the {} bytes left", n_tensors, c.left()));

  std::unordered_set<std::string> keys;
  kvs_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKV kv;
    const std::string_view key = c.str(fmt::format("metadata entry {}: key", i));
    if (const int64_t bad = first_invalid_utf8(key); bad >= 0)
      c.corrupt(fmt::format("metadata entry {}: key is not valid UTF-8 (byte {})", i, bad));
    kv.key = std::string(key);
    if (!keys.insert(kv.key).second)
      c.corrupt(fmt::format("duplicate metadata key {}", quote_name(kv.key)));
    const std::string where = fmt::format("metadata {}", quote_name(kv.key));
    const uint32_t type = c.u32(where + ": type");
    if (type > 12) c.corrupt(fmt::format("{}: value type {} out of range (0..12)", where, type));
    kv.type = static_cast<GgufValueType>(type);
    const int64_t start = c.pos();
    if (kv.type == GgufValueType::string) {
      const std::string_view s = c.str(where);
      if (first_invalid_utf8(s) >= 0)
        c.corrupt(fmt::format("{}: string is not valid UTF-8", where));
    } else if (kv.type == GgufValueType::array) {
      const uint32_t et = c.u32(where + ": array element type");
      if (et > 12) c.corrupt(fmt::format("{}: array element type {} out of range", where, et));
      kv.elem_type = static_cast<GgufValueType>(et);
      if (kv.elem_type == GgufValueType::array)
        c.corrupt(fmt::format("{}: nested arrays are not supported (as in ggml)", where));
      kv.count = c.u64(where + ": array length");
      if (kv.elem_type == GgufValueType::string) {
        if (kv.count > static_cast<uint64_t>(c.left()) / 8)
          c.corrupt(fmt::format("{}: array of {} strings cannot fit in the {} bytes left", where,
                                kv.count, c.left()));
        for (uint64_t k = 0; k < kv.count; ++k) {
          const std::string_view s = c.str(fmt::format("{}[{}]", where, k));
          if (first_invalid_utf8(s) >= 0)
            c.corrupt(fmt::format("{}[{}]: string is not valid UTF-8", where, k));
        }
      } else {
        const int64_t size = scalar_size(kv.elem_type);
        if (kv.count > static_cast<uint64_t>(c.left()) / static_cast<uint64_t>(size))
          c.corrupt(fmt::format("{}: array of {} {} runs past the end of the file", where, kv.count,
                                type_name(kv.elem_type)));
        c.take(static_cast<int64_t>(kv.count) * size, where);
      }
      kv.value = bytes_.subspan(static_cast<size_t>(start + 12),
                                static_cast<size_t>(c.pos() - start - 12));
      kvs_.push_back(std::move(kv));
      continue;
    } else {
      c.take(scalar_size(kv.type), where);
    }
    kv.value = bytes_.subspan(static_cast<size_t>(start), static_cast<size_t>(c.pos() - start));
    if (kv.type == GgufValueType::boolean && kv.value[0] > 1)
      c.corrupt(fmt::format("{}: boolean byte {} (must be 0 or 1)", where, kv.value[0]));
    kvs_.push_back(std::move(kv));
  }
  if (const GgufKV* a = find_kv("general.alignment")) {
    if (a->type != GgufValueType::u32)
      c.corrupt(fmt::format("general.alignment has type {} (must be u32)", type_name(a->type)));
    const uint32_t v = load_le32(a->value.data());
    if (v == 0 || (v & (v - 1)) != 0)
      c.corrupt(fmt::format("general.alignment {} is not a power of two", v));
    alignment_ = v;
  }

  std::unordered_set<std::string> names;
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    const std::string_view name = c.str(fmt::format("tensor info {}: name", i));
    if (name.size() >= kGgmlMaxName)
      c.corrupt(fmt::format("tensor info {}: name of {} bytes is too long (ggml's limit is {})", i,
                            name.size(), kGgmlMaxName - 1));
    if (first_invalid_utf8(name) >= 0 || name.find('\0') != std::string_view::npos)
      c.corrupt(fmt::format("tensor info {}: name is not valid UTF-8 (or has a NUL)", i));
    t.name = std::string(name);
    if (!names.insert(t.name).second)
      c.corrupt(fmt::format("duplicate tensor name {}", quote_name(t.name)));
    const std::string where = fmt::format("tensor {}", quote_name(t.name));
    const uint32_t n_dims = c.u32(where + ": n_dims");
    if (n_dims > static_cast<uint32_t>(kGgmlMaxDims))
      c.corrupt(fmt::format("{}: n_dims {} (at most {})", where, n_dims, kGgmlMaxDims));
    int64_t ne[kGgmlMaxDims] = {1, 1, 1, 1};
    int64_t count = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = c.u64(fmt::format("{}: ne[{}]", where, d));
      if (v > static_cast<uint64_t>(INT64_MAX))
        c.corrupt(fmt::format("{}: ne[{}] = {} is negative as int64", where, d, v));
      ne[d] = static_cast<int64_t>(v);
      if (!checked_mul(count, ne[d], count))
        c.corrupt(fmt::format("{}: the element count overflows", where));
    }
    for (int d = static_cast<int>(n_dims) - 1; d >= 0; --d) t.shape.push_back(ne[d]);
    t.ggml_type = c.u32(where + ": type");
    if (t.ggml_type >= kGgmlTypeCount)
      c.corrupt(fmt::format("{}: ggml type id {} out of range (0..{})", where, t.ggml_type,
                            kGgmlTypeCount - 1));
    const uint64_t offset = c.u64(where + ": offset");
    if (offset > static_cast<uint64_t>(INT64_MAX))
      c.corrupt(fmt::format("{}: offset {} too large", where, offset));
    t.offset = static_cast<int64_t>(offset);
    if (!ggml_plain_st_dtype(t.ggml_type) &&
        gguf::block_layout(static_cast<gguf::GgmlType>(t.ggml_type)) == nullptr)
      throw_error(ErrorCode::unsupported,
                  fmt::format("{}: {}: ggml type {} is not supported by lowbit", label_, where,
                              t.ggml_type));
    try {
      t.nbytes = ggml_nbytes(t.ggml_type, t.shape);
    } catch (const Error& e) {
      c.corrupt(fmt::format("{} ({}, shape {}): {}", where, ggml_type_name(t.ggml_type),
                            t.shape.str(), e.message()));
    }
    tensors_.push_back(std::move(t));
  }
  // The data section: aligned after the header; tensors in order, each at the running size
  // padded to the alignment (ggml's rule), all within the file.
  const int64_t header_end = c.pos();
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
  int64_t expected = 0, end = 0;
  for (const GgufTensor& t : tensors_) {
    if (t.offset % alignment_ != 0)
      c.corrupt(fmt::format("tensor {}: offset {} is not a multiple of the alignment {}",
                            quote_name(t.name), t.offset, alignment_));
    if (t.offset != expected)
      c.corrupt(
          fmt::format("tensor {}: offset {}, expected {} (tensors must follow each other, "
                      "each padded to the alignment)",
                      quote_name(t.name), t.offset, expected));
    if (!checked_add(t.offset, t.nbytes, end))
      c.corrupt(fmt::format("tensor {}: the end offset overflows", quote_name(t.name)));
    const int64_t padded = (end + alignment_ - 1) / alignment_ * alignment_;
    expected = padded;
  }
  const int64_t size = file_size();
  if (!tensors_.empty() || data_offset_ <= size) {
    if (data_offset_ > size || end > size - data_offset_)
      c.corrupt(fmt::format("the tensor data end at byte {} but the file has {} bytes",
                            data_offset_ + end, size));
    if (size - data_offset_ > expected)
      c.corrupt(fmt::format("{} bytes after the tensor data", size - data_offset_ - expected));
  }
}

const GgufKV* GgufReader::find_kv(std::string_view key) const {
  for (const GgufKV& kv : kvs_)
    if (kv.key == key) return &kv;
  return nullptr;
}

const GgufTensor* GgufReader::find(std::string_view name) const {
  for (const GgufTensor& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

std::span<const uint8_t> GgufReader::bytes(const GgufTensor& t) const {
  return bytes_.subspan(static_cast<size_t>(data_offset_ + t.offset),
                        static_cast<size_t>(t.nbytes));
}

bool GgufReader::is_quantized(const GgufTensor& t) const {
  return !ggml_plain_st_dtype(t.ggml_type);
}

TensorView GgufReader::view(const GgufTensor& t) const {
  void* p = const_cast<uint8_t*>(bytes(t).data());
  const auto st = ggml_plain_st_dtype(t.ggml_type);
  const auto d = st ? to_dtype(*st) : std::nullopt;
  if (!d) return TensorView(p, Dtype::u8, Shape{t.nbytes});
  return TensorView(p, *d, t.shape);
}

QuantizedView GgufReader::quantized_view(const GgufTensor& t) const {
  QuantizedView v;
  v.scheme = QuantScheme::parse(ggml_type_name(t.ggml_type));
  v.shape = t.shape.empty() ? Shape{1} : t.shape;
  const Shape cs = code_shape(v.scheme, v.shape);
  v.codes = TensorView(const_cast<uint8_t*>(bytes(t).data()), Dtype::u8, cs);
  return v;
}

void GgufReader::release(const GgufTensor& t) const {
  if (file_) file_->release(data_offset_ + t.offset, t.nbytes);
}

}  // namespace lowbit::io
