// SafetensorsReader: validation of a safetensors file (docs/formats.md, "Files").
//
// The header is parsed with nlohmann::json's SAX interface into exactly the structure the
// format allows (an object of tensor objects and one string->string `__metadata__` map),
// so a hostile header is refused at its first unexpected token: no generic DOM is built,
// nesting never goes deeper than the format's, and duplicate keys (which a DOM would
// silently merge) are seen.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "io/io_util.hpp"
#include "lowbit/error.hpp"
#include "lowbit/io.hpp"

namespace lowbit::io {
namespace {

using json = nlohmann::json;

struct RawTensor {
  std::string name;
  std::string dtype;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  std::vector<int64_t> shape;
  std::vector<int64_t> offsets;
};

/// The SAX handler: a state machine over the format's three levels.
class HeaderSax : public nlohmann::json_sax<json> {
 public:
  std::vector<RawTensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  bool has_metadata = false;
  std::string error;  // set when a callback refuses the input
  std::optional<size_t> error_pos;

  bool null() override { return bad_value("null"); }
  bool boolean(bool) override { return bad_value("a boolean"); }
  bool number_integer(number_integer_t v) override {
    if (level_ == Level::array && v >= 0) return number_unsigned(static_cast<uint64_t>(v));
    if (level_ == Level::array)
      return fail(fmt::format("{}: {}[{}] is {} (must be >= 0)", where(), field_name(),
                              current_array().size(), v));
    return bad_value("a number");
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (level_ != Level::array) return bad_value("a number");
    std::vector<int64_t>& arr = current_array();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return fail(
          fmt::format("{}: {}[{}] = {} is too large", where(), field_name(), arr.size(), v));
    if (field_ == Field::shape && arr.size() >= static_cast<size_t>(kMaxDims))
      return fail(fmt::format("{}: shape has more than {} dims (lowbit supports at most {})",
                              where(), kMaxDims, kMaxDims));
    if (field_ == Field::offsets && arr.size() >= 2)
      return fail(fmt::format("{}: data_offsets has more than 2 entries", where()));
    arr.push_back(static_cast<int64_t>(v));
    return true;
  }
  bool number_float(number_float_t, const string_t& s) override {
    if (level_ == Level::array)
      return fail(fmt::format("{}: {}[{}] is {} (must be an integer)", where(), field_name(),
                              current_array().size(), s));
    return bad_value("a number");
  }
  bool string(string_t& s) override {
    if (level_ == Level::metadata) {
      metadata.emplace_back(std::move(key_), std::move(s));
      return true;
    }
    if (level_ == Level::tensor && field_ == Field::dtype) {
      cur_.dtype = std::move(s);
      cur_.has_dtype = true;
      return true;
    }
    return bad_value("a string");
  }
  bool binary(binary_t&) override { return bad_value("binary data"); }

  bool start_object(std::size_t) override {
    switch (level_) {
      case Level::start:
        level_ = Level::top;
        return true;
      case Level::top:
        if (key_ == "__metadata__") {
          has_metadata = true;
          level_ = Level::metadata;
        } else {
          cur_ = RawTensor{};
          cur_.name = std::move(key_);
          level_ = Level::tensor;
        }
        keys_.clear();
        return true;
      default:
        return bad_value("an object");
    }
  }
  bool key(string_t& k) override {
    if (level_ == Level::top) {
      if (!top_keys_.insert(k).second)
        return fail(fmt::format("duplicate tensor name {}", quote_name(k)));
      key_ = std::move(k);
      return true;
    }
    if (level_ == Level::metadata) {
      if (!keys_.insert(k).second)
        return fail(fmt::format("__metadata__: duplicate key {}", quote_name(k)));
      key_ = std::move(k);
      return true;
    }
    if (level_ == Level::tensor) {
      if (!keys_.insert(k).second)
        return fail(fmt::format("{}: duplicate field {}", where(), quote_name(k)));
      if (k == "dtype")
        field_ = Field::dtype;
      else if (k == "shape")
        field_ = Field::shape;
      else if (k == "data_offsets")
        field_ = Field::offsets;
      else
        return fail(fmt::format("{}: unknown field {} (expected dtype, shape, data_offsets)",
                                where(), quote_name(k)));
      return true;
    }
    return fail("internal: key at an unexpected level");
  }
  bool end_object() override {
    switch (level_) {
      case Level::top:
        level_ = Level::done;
        return true;
      case Level::metadata:
        level_ = Level::top;
        return true;
      case Level::tensor:
        if (!cur_.has_dtype) return fail(fmt::format("{}: missing field 'dtype'", where()));
        if (!cur_.has_shape) return fail(fmt::format("{}: missing field 'shape'", where()));
        if (!cur_.has_offsets)
          return fail(fmt::format("{}: missing field 'data_offsets'", where()));
        if (cur_.offsets.size() != 2)
          return fail(fmt::format("{}: data_offsets has {} entries (must be 2)", where(),
                                  cur_.offsets.size()));
        tensors.push_back(std::move(cur_));
        level_ = Level::top;
        return true;
      default:
        return fail("internal: end of object at an unexpected level");
    }
  }
  bool start_array(std::size_t) override {
    if (level_ == Level::tensor && (field_ == Field::shape || field_ == Field::offsets)) {
      (field_ == Field::shape ? cur_.has_shape : cur_.has_offsets) = true;
      level_ = Level::array;
      return true;
    }
    return bad_value("an array");
  }
  bool end_array() override {
    level_ = Level::tensor;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    std::string what = ex.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 7: ..." -> from "parse error"
    if (const size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    error = fmt::format("header is not valid JSON (byte {} of the header): {}", position, what);
    return false;
  }

 private:
  enum class Level { start, top, metadata, tensor, array, done };
  enum class Field { dtype, shape, offsets };

  bool fail(std::string message) {
    error = std::move(message);
    return false;
  }
  std::string where() const { return fmt::format("tensor {}", quote_name(cur_.name)); }
  const char* field_name() const { return field_ == Field::shape ? "shape" : "data_offsets"; }
  std::vector<int64_t>& current_array() {
    return field_ == Field::shape ? cur_.shape : cur_.offsets;
  }
  bool bad_value(const char* found) {
    switch (level_) {
      case Level::start:
        return fail(fmt::format("the header must be a JSON object, found {}", found));
      case Level::top:
        if (key_ == "__metadata__")
          return fail(fmt::format("__metadata__ must be an object, found {}", found));
        return fail(fmt::format("tensor {}: must be an object, found {}", quote_name(key_), found));
      case Level::metadata:
        return fail(fmt::format("__metadata__: value of {} must be a string, found {}",
                                quote_name(key_), found));
      case Level::tensor:
        if (field_ == Field::dtype)
          return fail(fmt::format("{}: dtype must be a string, found {}", where(), found));
        return fail(fmt::format("{}: {} must be an array of integers, found {}", where(),
                                field_name(), found));
      case Level::array:
        return fail(fmt::format("{}: {}[{}] must be an integer, found {}", where(), field_name(),
                                current_array().size(), found));
      case Level::done:
        return fail("data after the header object");
    }
    return fail("internal: unexpected level");
  }

  Level level_ = Level::start;
  Field field_ = Field::dtype;
  std::string key_;
  RawTensor cur_;
  std::unordered_set<std::string> top_keys_;
  std::unordered_set<std::string> keys_;
};

}  // namespace

SafetensorsReader SafetensorsReader::open(const std::string& path) {
  auto file = std::make_shared<MappedFile>(MappedFile::open(path));
  SafetensorsReader r;
  r.bytes_ = file->bytes();
  r.file_ = std::move(file);
  r.label_ = path;
  r.parse_header();
  r.parse_quantized();
  return r;
}

SafetensorsReader SafetensorsReader::parse(std::span<const uint8_t> bytes,
                                           const std::string& label) {
  SafetensorsReader r;
  r.bytes_ = bytes;
  r.label_ = label;
  r.parse_header();
  r.parse_quantized();
  return r;
}

void SafetensorsReader::parse_header() {
  auto corrupt = [&](const std::string& msg) {
    throw_error(ErrorCode::corrupt_file, fmt::format("{}: {}", label_, msg));
  };
  const int64_t size = static_cast<int64_t>(bytes_.size());
  if (size < 8)
    corrupt(fmt::format("file is {} bytes, shorter than the 8-byte header length", size));
  const uint64_t n = load_le64(bytes_.data());
  if (n > static_cast<uint64_t>(kMaxHeaderBytes))
    corrupt(fmt::format("header length {} exceeds the limit of {} bytes", n, kMaxHeaderBytes));
  if (static_cast<int64_t>(n) > size - 8)
    corrupt(
        fmt::format("header length {} runs past the end of the file ({} bytes after the "
                    "8-byte length)",
                    n, size - 8));
  if (n < 2) corrupt(fmt::format("header length {} is too short for a JSON object", n));
  header_size_ = static_cast<int64_t>(n);
  const std::string_view header(reinterpret_cast<const char*>(bytes_.data()) + 8, n);
  if (header[0] != '{')
    corrupt(fmt::format("header must start with '{{', found byte 0x{:02x}",
                        static_cast<uint8_t>(header[0])));
  if (const int64_t bad = first_invalid_utf8(header); bad >= 0)
    corrupt(fmt::format("header is not valid UTF-8 (byte {} of the header is 0x{:02x})", bad,
                        static_cast<uint8_t>(header[static_cast<size_t>(bad)])));

  // nlohmann's lexer takes a NUL byte for the end of the input: refuse NULs here, or
  // "{}\0<anything>" would parse. (JSON allows none outside strings, and none raw inside.)
  if (const size_t nul = header.find('\0'); nul != std::string_view::npos)
    corrupt(fmt::format("header contains a NUL byte (byte {} of the header)", nul));

  HeaderSax sax;
  bool ok = false;
  try {
    ok = json::sax_parse(header.begin(), header.end(), &sax, json::input_format_t::json,
                         /*strict=*/true, /*ignore_comments=*/false);
  } catch (const std::exception& e) {
    corrupt(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!ok) corrupt(sax.error.empty() ? std::string("header is not valid JSON") : sax.error);

  metadata_ = std::move(sax.metadata);
  const int64_t data_size = size - 8 - header_size_;
  tensors_.reserve(sax.tensors.size());
  for (RawTensor& raw : sax.tensors) {
    const std::string q = quote_name(raw.name);
    StTensor t;
    const auto st = parse_st_dtype(raw.dtype);
    if (!st) corrupt(fmt::format("tensor {}: unknown dtype {}", q, quote_name(raw.dtype)));
    t.st_dtype = *st;
    t.dtype = to_dtype(*st);
    int64_t count = 1;
    for (size_t i = 0; i < raw.shape.size(); ++i) {
      if (!checked_mul(count, raw.shape[i], count))
        corrupt(fmt::format("tensor {}: the element count of shape {} overflows", q,
                            fmt::join(raw.shape, ", ")));
      t.shape.push_back(raw.shape[i]);
    }
    int64_t bits = 0;
    if (!checked_mul(count, st_dtype_bits(*st), bits))
      corrupt(fmt::format("tensor {}: the byte size of shape {} of {} overflows", q, t.shape.str(),
                          raw.dtype));
    if (bits % 8 != 0)
      corrupt(fmt::format("tensor {}: {} elements of {} are not a whole number of bytes", q, count,
                          raw.dtype));
    t.begin = raw.offsets[0];
    t.end = raw.offsets[1];
    if (t.end < t.begin)
      corrupt(
          fmt::format("tensor {}: data_offsets [{}, {}] end before they begin", q, t.begin, t.end));
    if (t.end > data_size)
      corrupt(
          fmt::format("tensor {}: data_offsets [{}, {}] run past the end of the data section "
                      "({} bytes)",
                      q, t.begin, t.end, data_size));
    if (t.end - t.begin != bits / 8)
      corrupt(
          fmt::format("tensor {}: shape {} of {} is {} bytes, but data_offsets [{}, {}] hold {}", q,
                      t.shape.str(), raw.dtype, bits / 8, t.begin, t.end, t.end - t.begin));
    t.name = std::move(raw.name);
    tensors_.push_back(std::move(t));
  }
  // Any key order, as in the reference; sorted by offsets the tensors must tile the data
  // section exactly: from 0, no hole, no overlap, nothing after the last one.
  std::stable_sort(tensors_.begin(), tensors_.end(), [](const StTensor& a, const StTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  int64_t pos = 0;
  const StTensor* prev = nullptr;
  for (const StTensor& t : tensors_) {
    if (t.begin > pos) {
      if (prev == nullptr)
        corrupt(
            fmt::format("tensor {}: data_offsets [{}, {}] leave a hole of {} bytes at the "
                        "start of the data section",
                        quote_name(t.name), t.begin, t.end, t.begin));
      corrupt(fmt::format(
          "tensor {}: data_offsets [{}, {}] leave a hole of {} bytes after tensor "
          "{} (which ends at {})",
          quote_name(t.name), t.begin, t.end, t.begin - pos, quote_name(prev->name), pos));
    }
    if (t.begin < pos)
      corrupt(fmt::format("tensor {}: data_offsets [{}, {}] overlap tensor {} [{}, {}]",
                          quote_name(t.name), t.begin, t.end, quote_name(prev->name), prev->begin,
                          prev->end));
    pos = t.end;
    prev = &t;
  }
  if (pos != data_size)
    corrupt(
        fmt::format("the tensors cover {} bytes but the data section has {} ({} bytes after "
                    "the last tensor)",
                    pos, data_size, data_size - pos));
}

void SafetensorsReader::parse_quantized() {
  auto corrupt = [&](const std::string& msg) {
    throw_error(ErrorCode::corrupt_file, fmt::format("{}: {}", label_, msg));
  };
  std::unordered_map<std::string_view, int> index;
  index.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) index.emplace(tensors_[i].name, static_cast<int>(i));
  part_of_.assign(tensors_.size(), -1);
  std::unordered_map<std::string_view, const std::string*> meta;
  meta.reserve(metadata_.size());
  for (const auto& [k, v] : metadata_) meta.emplace(k, &v);
  auto meta_value = [&](const std::string& k) -> const std::string* {
    const auto it = meta.find(k);
    return it == meta.end() ? nullptr : it->second;
  };

  constexpr std::string_view kScheme = "lowbit.scheme.";
  constexpr std::string_view kShape = "lowbit.shape.";
  for (const auto& [key, value] : metadata_) {
    if (key.starts_with(kShape)) {
      const std::string_view name = std::string_view(key).substr(kShape.size());
      if (meta_value(scheme_key(name)) == nullptr)
        corrupt(fmt::format("metadata {} has no matching {}", quote_name(key),
                            quote_name(scheme_key(name))));
      continue;
    }
    if (!key.starts_with(kScheme)) continue;
    const std::string name = key.substr(kScheme.size());
    const std::string q = quote_name(name);
    StQuantized qt;
    qt.name = name;
    try {
      qt.scheme = QuantScheme::parse(value);
    } catch (const Error& e) {
      corrupt(fmt::format("metadata {}: {}", quote_name(key), e.message()));
    }
    const std::string* shape_text = meta_value(shape_key(name));
    if (shape_text == nullptr)
      corrupt(fmt::format("quantized tensor {}: metadata {} is missing", q,
                          quote_name(shape_key(name))));
    const auto shape = parse_shape_text(*shape_text);
    if (!shape)
      corrupt(fmt::format("metadata {}: {} is not a shape like [768, 384]",
                          quote_name(shape_key(name)), quote_name(*shape_text)));
    qt.shape = *shape;
    std::vector<StoredPart> parts;
    try {
      parts = stored_parts(qt.scheme, qt.shape);
    } catch (const Error& e) {
      corrupt(fmt::format("quantized tensor {}: {}", q, e.message()));
    }
    const int self = static_cast<int>(quantized_.size());
    for (const StoredPart& p : parts) {
      const std::string part_name = name + std::string(p.suffix);
      const auto it = index.find(part_name);
      if (it == index.end())
        corrupt(fmt::format("quantized tensor {} ({}): part {} is missing", q, qt.scheme.str(),
                            quote_name(part_name)));
      const StTensor& t = tensors_[static_cast<size_t>(it->second)];
      if (t.st_dtype != p.st_dtype || !(t.shape == p.file_shape))
        corrupt(fmt::format(
            "quantized tensor {} ({}, shape {}): part {} is {} {}, the scheme "
            "stores {} {}",
            q, qt.scheme.str(), qt.shape.str(), quote_name(part_name), st_dtype_name(t.st_dtype),
            t.shape.str(), st_dtype_name(p.st_dtype), p.file_shape.str()));
      int& owner = part_of_[static_cast<size_t>(it->second)];
      if (owner >= 0)
        corrupt(fmt::format("tensor {} is a part of two quantized tensors ({} and {})",
                            quote_name(part_name),
                            quote_name(quantized_[static_cast<size_t>(owner)].name), q));
      owner = self;
      qt.nbytes += t.nbytes();
      (p.kind == StoredPart::codes   ? qt.codes
       : p.kind == StoredPart::scale ? qt.scale
       : p.kind == StoredPart::zero  ? qt.zero
                                     : qt.global_scale) = it->second;
    }
    for (std::string_view suffix : {".scale", ".zero", ".global_scale"}) {
      const bool expected = std::any_of(parts.begin(), parts.end(),
                                        [&](const StoredPart& p) { return p.suffix == suffix; });
      if (!expected && index.count(name + std::string(suffix)))
        corrupt(fmt::format("quantized tensor {}: scheme {} has no {} part, but tensor {} exists",
                            q, qt.scheme.str(), suffix.substr(1),
                            quote_name(name + std::string(suffix))));
    }
    quantized_.push_back(std::move(qt));
  }
  // In the order of their codes in the file.
  std::vector<size_t> order(quantized_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return quantized_[a].codes < quantized_[b].codes; });
  std::vector<StQuantized> sorted;
  sorted.reserve(order.size());
  std::vector<int> remap(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    remap[order[i]] = static_cast<int>(i);
    sorted.push_back(std::move(quantized_[order[i]]));
  }
  quantized_ = std::move(sorted);
  for (int& o : part_of_)
    if (o >= 0) o = remap[static_cast<size_t>(o)];
}

const StTensor* SafetensorsReader::find(std::string_view name) const {
  for (const StTensor& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const std::string* SafetensorsReader::metadata_value(std::string_view key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

std::span<const uint8_t> SafetensorsReader::bytes(const StTensor& t) const {
  return bytes_.subspan(static_cast<size_t>(data_offset() + t.begin),
                        static_cast<size_t>(t.nbytes()));
}

TensorView SafetensorsReader::view(const StTensor& t) const {
  void* p = const_cast<uint8_t*>(bytes(t).data());
  if (!t.dtype) return TensorView(p, Dtype::u8, Shape{t.nbytes()});
  return TensorView(p, *t.dtype, t.shape);
}

bool SafetensorsReader::is_aligned(const StTensor& t) const {
  const int bits = t.dtype ? bit_width(*t.dtype) : 8;
  const uintptr_t align = static_cast<uintptr_t>(std::max(1, bits / 8));
  return reinterpret_cast<uintptr_t>(bytes(t).data()) % align == 0;
}

const StQuantized* SafetensorsReader::find_quantized(std::string_view name) const {
  for (const StQuantized& q : quantized_)
    if (q.name == name) return &q;
  return nullptr;
}

QuantizedView SafetensorsReader::quantized_view(const StQuantized& q) const {
  QuantizedView v;
  v.scheme = q.scheme;
  v.shape = q.shape;
  for (const StoredPart& p : stored_parts(q.scheme, q.shape)) {
    const int idx = p.kind == StoredPart::codes   ? q.codes
                    : p.kind == StoredPart::scale ? q.scale
                    : p.kind == StoredPart::zero  ? q.zero
                                                  : q.global_scale;
    void* data = const_cast<uint8_t*>(bytes(tensors_[static_cast<size_t>(idx)]).data());
    TensorView tv(data, p.dtype, p.shape);
    (p.kind == StoredPart::codes   ? v.codes
     : p.kind == StoredPart::scale ? v.scale
     : p.kind == StoredPart::zero  ? v.zero
                                   : v.global_scale) = tv;
  }
  return v;
}

std::vector<StEntry> SafetensorsReader::entries() const {
  std::vector<StEntry> out;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const int owner = part_of_[i];
    if (owner < 0) {
      out.push_back({&tensors_[i], nullptr});
    } else {
      const StQuantized& q = quantized_[static_cast<size_t>(owner)];
      if (q.codes == static_cast<int>(i)) out.push_back({nullptr, &q});
    }
  }
  return out;
}

void SafetensorsReader::release(const StTensor& t) const {
  if (file_) file_->release(data_offset() + t.begin, t.nbytes());
}

}  // namespace lowbit::io
