// SafetensorsWriter: the reference writer's layout and header bytes, written atomically.
#include <fmt/format.h>

#include <algorithm>
#include <unordered_set>

#include "io/io_util.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"

namespace lowbit::io {
namespace {

void check_text(std::string_view what, std::string_view s) {
  if (first_invalid_utf8(s) >= 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: {} {} is not valid UTF-8", what, quote_name(s)));
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(std::string path, WriteOptions options)
    : path_(std::move(path)), options_(options) {
  check_can_create(path_, options_.overwrite);
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  if (begun_)
    throw_error(ErrorCode::invalid_argument, "safetensors writer: metadata after begin()");
  check_text("metadata key", key);
  check_text("metadata value", value);
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = value;
      return;
    }
  metadata_.emplace_back(key, value);
}

void SafetensorsWriter::add_tensor(const std::string& name, StDtype dtype, const Shape& shape) {
  if (begun_)
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("safetensors writer: tensor {} declared after begin()", quote_name(name)));
  check_text("tensor name", name);
  if (name == "__metadata__")
    throw_error(ErrorCode::invalid_argument, "safetensors writer: '__metadata__' is reserved");
  for (const Slot& s : slots_)
    if (s.name == name)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("safetensors writer: duplicate tensor name {}", quote_name(name)));
  int64_t bits = 0;
  if (!checked_mul(numel(shape), st_dtype_bits(dtype), bits) || bits % 8 != 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: tensor {}: shape {} of {} is not whole bytes",
                            quote_name(name), shape.str(), st_dtype_name(dtype)));
  Slot s;
  s.name = name;
  s.dtype = dtype;
  s.shape = shape;
  s.nbytes = bits / 8;
  slots_.push_back(std::move(s));
}

void SafetensorsWriter::add_quantized(const std::string& name, const QuantScheme& scheme,
                                      const Shape& shape) {
  for (const StoredPart& p : stored_parts(scheme, shape))
    add_tensor(name + std::string(p.suffix), p.st_dtype, p.file_shape);
  set_metadata(scheme_key(name), scheme.str());
  set_metadata(shape_key(name), shape.str());
}

void SafetensorsWriter::begin() {
  if (begun_) throw_error(ErrorCode::invalid_argument, "safetensors writer: begin() called twice");
  // The reference's order: dtype (its enum order) descending, then name ascending. Every
  // size of a larger dtype is a multiple of the smaller ones' sizes, so data stay aligned.
  std::sort(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;
  });
  std::string header = "{";
  bool first = true;
  if (!metadata_.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata_.size(); ++i) {
      if (i) header += ',';
      append_json_string(header, metadata_[i].first);
      header += ':';
      append_json_string(header, metadata_[i].second);
    }
    header += '}';
    first = false;
  }
  int64_t offset = 0;
  for (Slot& s : slots_) {
    s.begin = offset;
    if (!checked_add(offset, s.nbytes, offset))
      throw_error(ErrorCode::invalid_argument, "safetensors writer: total size overflows");
    if (!first) header += ',';
    first = false;
    append_json_string(header, s.name);
    header += fmt::format(R"(:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})",
                          st_dtype_name(s.dtype), fmt::join(s.shape, ","), s.begin, offset);
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (static_cast<int64_t>(header.size()) > kMaxHeaderBytes)
    throw_error(
        ErrorCode::invalid_argument,
        fmt::format("safetensors writer: the header would be {} bytes, over the limit of {}",
                    header.size(), kMaxHeaderBytes));
  data_offset_ = 8 + static_cast<int64_t>(header.size());
  data_size_ = offset;

  file_ = std::make_unique<AtomicFile>();
  file_->create(path_, options_.overwrite);
  file_->truncate(data_offset_ + data_size_);
  std::string head(8, '\0');
  store_le64(reinterpret_cast<uint8_t*>(head.data()), header.size());
  head += header;
  file_->pwrite_all(head.data(), static_cast<int64_t>(head.size()), 0);
  begun_ = true;
}

SafetensorsWriter::Slot& SafetensorsWriter::slot(std::string_view name) {
  if (!begun_ || committed_)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: write of {} outside begin() ... commit()",
                            quote_name(name)));
  for (Slot& s : slots_)
    if (s.name == name) return s;
  throw_error(ErrorCode::invalid_argument,
              fmt::format("safetensors writer: tensor {} was not declared", quote_name(name)));
}

void SafetensorsWriter::write(std::string_view name, std::span<const uint8_t> bytes) {
  Slot& s = slot(name);
  if (static_cast<int64_t>(bytes.size()) != s.nbytes)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: tensor {} is {} bytes, {} given", quote_name(name),
                            s.nbytes, bytes.size()));
  if (s.written && s.nbytes > 0)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: tensor {} written twice", quote_name(name)));
  file_->pwrite_all(bytes.data(), s.nbytes, data_offset_ + s.begin);
  s.written = true;
}

void SafetensorsWriter::write(std::string_view name, const TensorView& view) {
  if (!view.device().is_cpu() || !view.is_contiguous())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: tensor {}: need a contiguous CPU view, got {}",
                            quote_name(name), view.str()));
  const Slot& s = slot(name);
  const auto st = to_st_dtype(view.dtype());
  if (view.dtype() != Dtype::u8 && st != s.dtype)
    throw_error(ErrorCode::invalid_argument,
                fmt::format("safetensors writer: tensor {} is {}, given a view of {}",
                            quote_name(name), st_dtype_name(s.dtype), dtype_name(view.dtype())));
  const int64_t n = storage_bytes(view.dtype(), view.numel());
  write(name,
        std::span<const uint8_t>(static_cast<const uint8_t*>(view.data()), static_cast<size_t>(n)));
}

void SafetensorsWriter::write_quantized(std::string_view name, const QuantizedView& q) {
  for (const StoredPart& p : stored_parts(q.scheme, q.shape)) {
    const TensorView& v = p.kind == StoredPart::codes   ? q.codes
                          : p.kind == StoredPart::scale ? q.scale
                          : p.kind == StoredPart::zero  ? q.zero
                                                        : q.global_scale;
    const std::string part = std::string(name) + std::string(p.suffix);
    if (v.dtype() != p.dtype || !(v.shape() == p.shape) || !v.device().is_cpu() ||
        !v.is_contiguous())
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("safetensors writer: part {} of {} {}: need a contiguous CPU {} {}, "
                              "got {}",
                              quote_name(part), q.scheme.str(), q.shape.str(), dtype_name(p.dtype),
                              p.shape.str(), v.str()));
    write(part, std::span<const uint8_t>(static_cast<const uint8_t*>(v.data()),
                                         static_cast<size_t>(p.nbytes)));
  }
}

void SafetensorsWriter::commit() {
  if (!begun_) begin();
  if (committed_) throw_error(ErrorCode::invalid_argument, "safetensors writer: committed twice");
  for (const Slot& s : slots_)
    if (!s.written && s.nbytes > 0)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("safetensors writer: tensor {} was declared but never written",
                              quote_name(s.name)));
  file_->commit();
  committed_ = true;
}

}  // namespace lowbit::io
