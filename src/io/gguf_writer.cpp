// GgufWriter: GGUF v3, atomically (the same temporary-file discipline as the safetensors
// writer). Layout as gguf-py and ggml write it: header, metadata, tensor infos, zero padding
// to the alignment, then each tensor at its aligned offset, zero-padded.
#include <fmt/format.h>

#include "io/io_util.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"

namespace lowbit::io {
namespace {

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>(v >> (8 * i));
}
void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>(v >> (8 * i));
}
void put_str(std::string& out, std::string_view s) {
  put_u64(out, s.size());
  out += s;
}

}  // namespace

GgufWriter::GgufWriter(std::string path, WriteOptions options)
    : path_(std::move(path)), options_(options) {
  check_can_create(path_, options_.overwrite);
}

GgufWriter::~GgufWriter() = default;

void GgufWriter::set(Kv kv) {
  if (begun_) throw_error(ErrorCode::invalid_argument, "gguf writer: metadata after begin()");
  if (first_invalid_utf8(kv.key) >= 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("gguf writer: key {} is not valid UTF-8", quote_name(kv.key)));
  for (Kv& k : kvs_)
    if (k.key == kv.key) {
      k = std::move(kv);
      return;
    }
  kvs_.push_back(std::move(kv));
}

void GgufWriter::set_string(const std::string& key, const std::string& value) {
  if (first_invalid_utf8(value) >= 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("gguf writer: value of {} is not valid UTF-8", quote_name(key)));
  Kv kv{key, static_cast<uint32_t>(GgufValueType::string), {}};
  put_str(kv.encoded, value);
  set(std::move(kv));
}

void GgufWriter::set_u32(const std::string& key, uint32_t value) {
  Kv kv{key, static_cast<uint32_t>(GgufValueType::u32), {}};
  put_u32(kv.encoded, value);
  set(std::move(kv));
}

void GgufWriter::set_kv(const GgufKV& in) {
  Kv kv{in.key, static_cast<uint32_t>(in.type), {}};
  if (in.type == GgufValueType::array) {
    put_u32(kv.encoded, static_cast<uint32_t>(in.elem_type));
    put_u64(kv.encoded, in.count);
  }
  kv.encoded.append(reinterpret_cast<const char*>(in.value.data()), in.value.size());
  set(std::move(kv));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t ggml_type, const Shape& shape) {
  if (begun_) throw_error(ErrorCode::invalid_argument, "gguf writer: tensor after begin()");
  if (name.size() >= 64 || first_invalid_utf8(name) >= 0 || name.find('\0') != std::string::npos)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("gguf writer: tensor name {} must be valid UTF-8 of at most 63 bytes "
                            "(ggml's limit)",
                            quote_name(name)));
  if (shape.size() > 4)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("gguf writer: tensor {} has {} dims (GGUF holds at most 4)",
                            quote_name(name), shape.size()));
  for (const Slot& s : slots_)
    if (s.name == name)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("gguf writer: duplicate tensor name {}", quote_name(name)));
  Slot s;
  s.name = name;
  s.type = ggml_type;
  s.shape = shape;
  s.nbytes = ggml_nbytes(ggml_type, shape);
  slots_.push_back(std::move(s));
}

void GgufWriter::begin() {
  if (begun_) throw_error(ErrorCode::invalid_argument, "gguf writer: begin() called twice");
  int64_t alignment = 32;
  for (const Kv& kv : kvs_)
    if (kv.key == "general.alignment") {
      if (kv.type != static_cast<uint32_t>(GgufValueType::u32))
        throw_error(ErrorCode::invalid_argument, "gguf writer: general.alignment must be u32");
      alignment = load_le32(reinterpret_cast<const uint8_t*>(kv.encoded.data()));
      if (alignment == 0 || (alignment & (alignment - 1)) != 0)
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("gguf writer: alignment {} is not a power of two", alignment));
    }
  std::string h = "GGUF";
  put_u32(h, 3);
  put_u64(h, slots_.size());
  put_u64(h, kvs_.size());
  for (const Kv& kv : kvs_) {
    put_str(h, kv.key);
    put_u32(h, kv.type);
    h += kv.encoded;
  }
  int64_t offset = 0;
  for (Slot& s : slots_) {
    put_str(h, s.name);
    put_u32(h, static_cast<uint32_t>(s.shape.size()));
    for (int d = s.shape.size() - 1; d >= 0; --d) put_u64(h, static_cast<uint64_t>(s.shape[d]));
    put_u32(h, s.type);
    s.offset = offset;
    put_u64(h, static_cast<uint64_t>(offset));
    offset = (offset + s.nbytes + alignment - 1) / alignment * alignment;
  }
  data_offset_ = (static_cast<int64_t>(h.size()) + alignment - 1) / alignment * alignment;
  h.append(static_cast<size_t>(data_offset_) - h.size(), '\0');
  file_size_ = data_offset_ + offset;
  file_ = std::make_unique<AtomicFile>();
  file_->create(path_, options_.overwrite);
  file_->truncate(file_size_);  // the padding reads as zeros
  file_->pwrite_all(h.data(), static_cast<int64_t>(h.size()), 0);
  begun_ = true;
}

void GgufWriter::write(std::string_view name, std::span<const uint8_t> bytes) {
  if (!begun_ || committed_)
    throw_error(ErrorCode::invalid_argument, "gguf writer: write outside begin() ... commit()");
  for (Slot& s : slots_) {
    if (s.name != name) continue;
    if (static_cast<int64_t>(bytes.size()) != s.nbytes)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("gguf writer: tensor {} is {} bytes, {} given", quote_name(s.name),
                              s.nbytes, bytes.size()));
    if (s.written && s.nbytes > 0)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("gguf writer: tensor {} written twice", quote_name(s.name)));
    file_->pwrite_all(bytes.data(), s.nbytes, data_offset_ + s.offset);
    s.written = true;
    return;
  }
  throw_error(ErrorCode::invalid_argument,
              fmt::format("gguf writer: tensor {} was not declared", quote_name(name)));
}

void GgufWriter::commit() {
  if (!begun_) begin();
  if (committed_) throw_error(ErrorCode::invalid_argument, "gguf writer: committed twice");
  for (const Slot& s : slots_)
    if (!s.written && s.nbytes > 0)
      throw_error(
          ErrorCode::invalid_argument,
          fmt::format("gguf writer: tensor {} was declared but never written", quote_name(s.name)));
  file_->commit();
  committed_ = true;
}

}  // namespace lowbit::io
