// safetensors files: round trips (plain and quantized tensors, bit for bit with the
// in-memory ops), the reference writer's exact header bytes, atomic writes, and a corpus
// of hand-made hostile files that must each give Error(corrupt_file) with a clear message.
#include <dirent.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using io::SafetensorsReader;
using io::SafetensorsWriter;
using io::StDtype;
using testing::expect_error;

namespace fs = std::filesystem;

/// A fresh directory per test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "lowbit-st-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  /// Names in the directory (to see stray temporary files).
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

/// A file from a header text and a data section; `pad` pads the header with spaces to 8.
std::vector<uint8_t> make_file(std::string header, size_t data_bytes, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  std::string s;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s += static_cast<char>(n >> (8 * i));
  s += header;
  for (size_t i = 0; i < data_bytes; ++i) s += static_cast<char>(i * 7 + 1);
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::vector<uint8_t> with_length(std::vector<uint8_t> file, uint64_t n) {
  for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  return file;
}

SafetensorsReader parse(const std::vector<uint8_t>& bytes) {
  return SafetensorsReader::parse(std::span<const uint8_t>(bytes.data(), bytes.size()), "mem");
}

Tensor normal_tensor(const Shape& shape, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  Tensor t = Tensor::empty(shape, Dtype::f32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = dist(rng);
  return t;
}

std::string bytes_of(const void* p, int64_t n) {
  return std::string(static_cast<const char*>(p), static_cast<size_t>(n));
}

// ---- round trips ------------------------------------------------------------------------------

TEST(Safetensors, HeaderBytesMatchTheReferenceWriter) {
  // safetensors 0.8.0: save({"a": zeros(1, f32)}) writes exactly this header.
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  SafetensorsWriter w(path);
  w.add_tensor("a", StDtype::F32, {1});
  w.begin();
  const float zero = 0.0f;
  w.write("a", std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&zero), 4));
  w.commit();
  const std::vector<uint8_t> bytes = read_file(path);
  const std::string expected = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  )";
  ASSERT_EQ(bytes.size(), 8 + expected.size() + 4);
  EXPECT_EQ(bytes[0], expected.size());
  EXPECT_EQ(bytes_of(bytes.data() + 8, static_cast<int64_t>(expected.size())), expected);
}

TEST(Safetensors, PlainTensorsRoundTripInTheReferenceOrder) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::mt19937_64 rng(1);
  struct Item {
    std::string name;
    StDtype dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Item> items = {
      {"b", StDtype::U8, {2, 3}, {}},    {"a", StDtype::F32, {2, 2}, {}},
      {"e", StDtype::F32, {0, 4}, {}},   {"c", StDtype::F16, {3}, {}},
      {"z", StDtype::F64, {1}, {}},      {"bf", StDtype::BF16, {3}, {}},
      {"i64", StDtype::I64, {2}, {}},    {"f4", StDtype::F4, {2, 3}, {}},
      {"bool", StDtype::BOOL, {5}, {}},  {"s", StDtype::F32, {}, {}},
      {"f8", StDtype::F8_E4M3, {7}, {}}, {"name \"q\"\n\xc3\xa9", StDtype::I8, {1}, {}}};
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    w.set_metadata("k\t", "v\x01");
    for (Item& it : items) {
      w.add_tensor(it.name, it.dtype, it.shape);
      const int64_t n = numel(it.shape) * io::st_dtype_bits(it.dtype) / 8;
      for (int64_t i = 0; i < n; ++i) it.bytes.push_back(static_cast<uint8_t>(rng()));
    }
    w.begin();
    for (const Item& it : items) w.write(it.name, it.bytes);
    w.commit();
  }
  const SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_EQ(r.header_size() % 8, 0);
  ASSERT_EQ(r.tensors().size(), items.size());
  // The reference's order: dtype descending (its enum order), then name.
  std::vector<std::string> order;
  for (const io::StTensor& t : r.tensors()) order.push_back(t.name);
  const std::vector<std::string> expected_order = {
      "i64", "z", "a", "e", "s", "bf", "c", "f8", "name \"q\"\n\xc3\xa9", "b", "f4", "bool"};
  EXPECT_EQ(order, expected_order);
  for (const Item& it : items) {
    const io::StTensor* t = r.find(it.name);
    ASSERT_NE(t, nullptr) << it.name;
    EXPECT_EQ(t->st_dtype, it.dtype);
    EXPECT_EQ(t->shape, it.shape);
    const auto b = r.bytes(*t);
    EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.end()), it.bytes) << it.name;
    EXPECT_TRUE(r.is_aligned(*t)) << it.name;
  }
  ASSERT_EQ(r.metadata().size(), 2u);
  EXPECT_EQ(*r.metadata_value("format"), "pt");
  EXPECT_EQ(*r.metadata_value("k\t"), "v\x01");
  const TensorView v = r.view(*r.find("a"));
  EXPECT_EQ(v.dtype(), Dtype::f32);
  EXPECT_EQ(v.shape(), (Shape{2, 2}));
  EXPECT_EQ(r.view(*r.find("i64")).dtype(), Dtype::u8);  // no lowbit dtype: raw bytes
  EXPECT_EQ(r.view(*r.find("i64")).shape(), (Shape{16}));
  EXPECT_EQ(r.view(*r.find("f4")).dtype(), Dtype::f4e2m1);
}

TEST(Safetensors, EmptyFileHasTheReferenceHeader) {
  TempDir dir;
  SafetensorsWriter w(dir.file("e.safetensors"));
  w.commit();
  const std::vector<uint8_t> bytes = read_file(dir.file("e.safetensors"));
  EXPECT_EQ(bytes_of(bytes.data() + 8, static_cast<int64_t>(bytes.size()) - 8), "{}      ");
  EXPECT_EQ(SafetensorsReader::open(dir.file("e.safetensors")).tensors().size(), 0u);
}

const char* kQuantSchemes[] = {"int8:tensor",
                               "int8:channel",
                               "int8:token",
                               "int4:block32:asym",
                               "uint4:block64:scale=bf16",
                               "uint8:channel:axis=1",
                               "int8:block16:scale=f16",
                               "fp8e4m3:token",
                               "fp8e5m2:block128x128",
                               "fp8e4m3:block128",
                               "nvfp4",
                               "mxfp4",
                               "mxfp8e4m3",
                               "q8_0",
                               "q4_0",
                               "q5_1",
                               "q4_K",
                               "q6_K",
                               "q2_K"};

TEST(Safetensors, QuantizedTensorsRoundTripBitForBit) {
  TempDir dir;
  const Shape shape{12, 512};
  const Tensor x = normal_tensor(shape, 7);
  for (const char* text : kQuantSchemes) {
    SCOPED_TRACE(text);
    const QuantScheme scheme = QuantScheme::parse(text);
    const QuantizedTensor q = quantize(x, scheme);
    const std::string path = dir.file(fmt::format("{}.safetensors", text));
    {
      SafetensorsWriter w(path);
      w.add_quantized("layer.weight", scheme, shape);
      w.add_tensor("layer.bias", StDtype::F32, {12});
      w.begin();
      w.write_quantized("layer.weight", q.view());
      w.write("layer.bias", TensorView(x.data(), Dtype::f32, {12}));
      w.commit();
    }
    const SafetensorsReader r = SafetensorsReader::open(path);
    ASSERT_EQ(r.quantized().size(), 1u);
    const io::StQuantized& sq = r.quantized()[0];
    EXPECT_EQ(sq.name, "layer.weight");
    EXPECT_EQ(sq.scheme, scheme);
    EXPECT_EQ(sq.shape, shape);
    EXPECT_EQ(sq.nbytes, q.nbytes());
    const QuantizedView v = r.quantized_view(sq);
    EXPECT_EQ(testing::compare_bytes(q.codes, v.codes), "");
    if (q.scale.numel()) EXPECT_EQ(testing::compare_bytes(q.scale, v.scale), "");
    if (q.zero.numel()) EXPECT_EQ(testing::compare_bytes(q.zero, v.zero), "");
    if (q.global_scale.numel())
      EXPECT_EQ(testing::compare_bytes(q.global_scale, v.global_scale), "");
    const Tensor a = dequantize(q.view(), Dtype::f32);
    const Tensor b = dequantize(v, Dtype::f32);
    EXPECT_EQ(testing::compare_bytes(a, b), "");
    const auto entries = r.entries();
    ASSERT_EQ(entries.size(), 2u);
    int quantized = 0;
    for (const io::StEntry& e : entries) quantized += e.quantized != nullptr;
    EXPECT_EQ(quantized, 1);
    // The parts are plain tensors a reader without lowbit sees.
    EXPECT_NE(r.find("layer.weight"), nullptr);
    EXPECT_EQ(r.find("layer.weight.scale") != nullptr, q.scale.numel() > 0);
    EXPECT_EQ(r.find("layer.weight.zero") != nullptr, q.zero.numel() > 0);
    EXPECT_EQ(*r.metadata_value("lowbit.scheme.layer.weight"), scheme.str());
    EXPECT_EQ(*r.metadata_value("lowbit.shape.layer.weight"), "[12, 512]");
  }
}

TEST(Safetensors, PackedCodesWithAnOddRowAreFlat) {
  const auto parts = io::stored_parts(QuantScheme::parse("int4:tensor"), {3, 5});
  EXPECT_EQ(parts[0].file_shape, (Shape{8}));
  EXPECT_EQ(parts[0].st_dtype, StDtype::U8);
  const auto even = io::stored_parts(QuantScheme::parse("int4:tensor"), {3, 6});
  EXPECT_EQ(even[0].file_shape, (Shape{3, 3}));
  const auto i8 = io::stored_parts(QuantScheme::parse("int8:channel"), {3, 6});
  EXPECT_EQ(i8[0].st_dtype, StDtype::I8);
  EXPECT_EQ(i8[1].file_shape, (Shape{3}));
}

TEST(Safetensors, WriterIsAtomicAndRefusesToOverwrite) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  {
    SafetensorsWriter w(path);
    w.add_tensor("a", StDtype::U8, {3});
    w.begin();
    EXPECT_FALSE(fs::exists(path));    // nothing at the destination before commit
    EXPECT_EQ(dir.list().size(), 1u);  // the temporary file
    // destroyed without commit: the temporary file goes away
  }
  EXPECT_TRUE(dir.list().empty());
  {
    SafetensorsWriter w(path);
    w.add_tensor("a", StDtype::U8, {3});
    w.begin();
    const uint8_t data[3] = {1, 2, 3};
    w.write("a", data);
    w.commit();
  }
  expect_error([&] { SafetensorsWriter w(path); }, ErrorCode::io_error, "exists");
  {
    SafetensorsWriter w(path, {.overwrite = true});
    w.add_tensor("b", StDtype::U8, {1});
    w.begin();
    const uint8_t data[1] = {9};
    expect_error([&] { w.commit(); }, ErrorCode::invalid_argument, "never written");
    w.write("b", data);
    expect_error([&] { w.write("b", data); }, ErrorCode::invalid_argument, "twice");
    w.commit();
  }
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.safetensors"});
  EXPECT_NE(SafetensorsReader::open(path).find("b"), nullptr);
  // A file created between the writer's start and its commit is not replaced.
  const std::string late = dir.file("late.safetensors");
  SafetensorsWriter w(late);
  w.begin();
  std::ofstream(late) << "someone else's";
  expect_error([&] { w.commit(); }, ErrorCode::io_error, "exists");
  EXPECT_EQ(read_file(late).size(), 14u);
}

TEST(Safetensors, WriterRefusesBadDeclarations) {
  TempDir dir;
  SafetensorsWriter w(dir.file("x.safetensors"));
  w.add_tensor("a", StDtype::U8, {1});
  expect_error([&] { w.add_tensor("a", StDtype::U8, {1}); }, ErrorCode::invalid_argument,
               "duplicate");
  expect_error([&] { w.add_tensor("__metadata__", StDtype::U8, {1}); }, ErrorCode::invalid_argument,
               "reserved");
  expect_error([&] { w.add_tensor("bad\xff", StDtype::U8, {1}); }, ErrorCode::invalid_argument,
               "UTF-8");
  expect_error([&] { w.add_tensor("f4", StDtype::F4, {3}); }, ErrorCode::invalid_argument,
               "whole bytes");
  expect_error(
      [&] {
        w.add_quantized("a", QuantScheme::parse("int4:block32"), {2, 32});
      },
      ErrorCode::invalid_argument, "duplicate");
  expect_error(
      [&] {
        w.add_quantized("q", QuantScheme::parse("int4:block32"), {2, 33});
      },
      ErrorCode::invalid_argument, "multiple");
}

TEST(Safetensors, ReaderAcceptsAnyKeyOrder) {
  // Keys out of offset order (the reference accepts them too): sorted by data_offsets.
  const auto file = make_file(R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                              R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                              6);
  const SafetensorsReader r = parse(file);
  ASSERT_EQ(r.tensors().size(), 3u);
  EXPECT_EQ(r.tensors()[0].name, "a");
  EXPECT_EQ(r.tensors()[2].name, "b");
}

// ---- hostile files ----------------------------------------------------------------------------

const std::string kGood =
    R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})";

TEST(SafetensorsHostile, TruncatedAtEveryByte) {
  const std::vector<uint8_t> good = make_file(kGood, 19);
  ASSERT_NO_THROW(parse(good));
  for (size_t len = 0; len < good.size(); ++len) {
    SCOPED_TRACE(len);
    const std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(len));
    expect_error([&] { parse(cut); }, ErrorCode::corrupt_file, "mem: ");
  }
  // And with the length field adjusted to the truncated header (a short JSON).
  for (size_t n = 0; n + 8 < good.size() - 19; ++n) {
    SCOPED_TRACE(n);
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(8 + n));
    expect_error([&] { parse(with_length(cut, n)); }, ErrorCode::corrupt_file, "mem: ");
  }
}

struct Hostile {
  const char* what;
  std::vector<uint8_t> file;
  const char* needle;
};

std::vector<Hostile> hostile_corpus() {
  auto one = [](const std::string& tensor_json, size_t data) {
    return make_file("{" + tensor_json + "}", data);
  };
  const std::vector<uint8_t> good = make_file(kGood, 19);
  std::vector<Hostile> c;
  c.push_back({"empty file", {}, "shorter than the 8-byte header length"});
  c.push_back({"7 bytes", std::vector<uint8_t>(7, 0), "shorter than the 8-byte header length"});
  c.push_back({"header length 2^64-1", with_length(good, ~uint64_t{0}), "exceeds the limit"});
  c.push_back({"header length 100 MB + 1", with_length(good, 100'000'001), "exceeds the limit"});
  c.push_back({"header length past the end", with_length(good, good.size() - 7),
               "runs past the end of the file"});
  c.push_back({"header length 0", with_length(make_file("", 0), 0), "too short"});
  c.push_back({"header not an object", make_file("[1,2]", 0), "must start with '{'"});
  c.push_back({"UTF-8 BOM", make_file("\xef\xbb\xbf{}", 0), "must start with '{'"});
  c.push_back({"leading space", make_file(" {}", 0), "must start with '{'"});
  c.push_back({"trailing garbage", make_file("{}x", 0, false), "not valid JSON"});
  c.push_back(
      {"NUL padding", make_file(std::string("{}\0\0\0\0\0\0", 8), 0, false), "NUL byte (byte 2"});
  c.push_back({"unterminated JSON", make_file("{\"a\":", 0), "not valid JSON"});
  c.push_back({"NUL inside", make_file(std::string("{\"a\0\":{}}", 9), 0), "NUL byte"});
  c.push_back({"bad UTF-8 in a name",
               one("\"w\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1),
               "not valid UTF-8"});
  c.push_back({"overlong UTF-8", one("\"\xc0\xae\":{}", 0), "not valid UTF-8"});
  c.push_back({"UTF-8 surrogate", one("\"\xed\xa0\x80\":{}", 0), "not valid UTF-8"});
  c.push_back({"truncated UTF-8 sequence", make_file("{\"\xe2\x82\"", 0, false), "UTF-8"});
  c.push_back({"lone surrogate escape",
               one(R"("\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})", 1),
               "not valid JSON"});
  c.push_back({"duplicate tensor name",
               make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                         R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                         2),
               "duplicate tensor name 'a'"});
  c.push_back({"duplicate __metadata__", make_file(R"({"__metadata__":{},"__metadata__":{}})", 0),
               "duplicate"});
  c.push_back({"duplicate metadata key", make_file(R"({"__metadata__":{"k":"1","k":"2"}})", 0),
               "duplicate key 'k'"});
  c.push_back({"duplicate field",
               one(R"("a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]})", 1),
               "duplicate field 'dtype'"});
  c.push_back({"unknown field",
               one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1})", 1),
               "unknown field 'x'"});
  c.push_back({"missing dtype", one(R"("a":{"shape":[1],"data_offsets":[0,1]})", 1),
               "missing field 'dtype'"});
  c.push_back({"missing shape", one(R"("a":{"dtype":"U8","data_offsets":[0,1]})", 1),
               "missing field 'shape'"});
  c.push_back({"missing data_offsets", one(R"("a":{"dtype":"U8","shape":[1]})", 1),
               "missing field 'data_offsets'"});
  c.push_back({"unknown dtype", one(R"("a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]})", 1),
               "unknown dtype 'F7'"});
  c.push_back({"lower-case dtype",
               one(R"("a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]})", 4),
               "unknown dtype 'f32'"});
  c.push_back({"dtype a number", one(R"("a":{"dtype":5,"shape":[1],"data_offsets":[0,1]})", 1),
               "dtype must be a string"});
  c.push_back({"tensor not an object", one(R"("a":[1])", 0), "must be an object"});
  c.push_back({"shape not an array", one(R"("a":{"dtype":"U8","shape":1,"data_offsets":[0,1]})", 1),
               "shape must be an array"});
  c.push_back({"negative dim", one(R"("a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]})", 1),
               "shape[0] is -1"});
  c.push_back({"fractional dim", one(R"("a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]})", 1),
               "must be an integer"});
  c.push_back({"dim past int64",
               one(R"("a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]})", 1),
               "too large"});
  c.push_back({"dim past uint64",
               one(R"("a":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,1]})", 1),
               "must be an integer"});
  c.push_back({"nested array in shape",
               one(R"("a":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]})", 1),
               "must be an integer"});
  c.push_back({"9 dims",
               one(R"("a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]})", 1),
               "more than 8 dims"});
  c.push_back({"element count overflows",
               one(R"("a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]})", 1),
               "overflows"});
  c.push_back({"byte size overflows",
               one(R"("a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]})", 8),
               "overflows"});
  c.push_back({"size disagrees with the shape",
               one(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]})", 4),
               "is 8 bytes, but data_offsets [0, 4] hold 4"});
  c.push_back({"F4 with an odd count",
               one(R"("a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]})", 2),
               "not a whole number of bytes"});
  c.push_back({"3 data offsets", one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})", 1),
               "more than 2 entries"});
  c.push_back({"1 data offset", one(R"("a":{"dtype":"U8","shape":[0],"data_offsets":[0]})", 0),
               "has 1 entries"});
  c.push_back({"end before begin", one(R"("a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]})", 1),
               "end before they begin"});
  c.push_back({"offsets out of range",
               one(R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]})", 2),
               "run past the end of the data section"});
  c.push_back({"offset past int64",
               one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775808,0]})", 1),
               "too large"});
  c.push_back({"hole at the start",
               one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]})", 2),
               "hole of 1 bytes at the start"});
  c.push_back({"hole between tensors",
               make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                         R"("b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
                         3),
               "hole of 1 bytes after tensor 'a'"});
  c.push_back({"overlapping tensors",
               make_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
                         3),
               "overlap tensor 'a' [0, 2]"});
  c.push_back({"aliasing tensors",
               make_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
                         2),
               "overlap"});
  c.push_back({"trailing data", one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})", 5),
               "4 bytes after the last tensor"});
  c.push_back({"metadata not an object", make_file(R"({"__metadata__":["a"]})", 0),
               "__metadata__ must be an object"});
  c.push_back({"metadata value a number", make_file(R"({"__metadata__":{"k":1}})", 0),
               "value of 'k' must be a string"});
  c.push_back({"metadata value an object", make_file(R"({"__metadata__":{"k":{}}})", 0),
               "value of 'k' must be a string"});
  c.push_back({"metadata value null", make_file(R"({"__metadata__":{"k":null}})", 0),
               "must be a string, found null"});
  // lowbit's quantized layout
  const std::string w = R"("w":{"dtype":"I8","shape":[2,32],"data_offsets":[0,64]})";
  const std::string ws = R"("w.scale":{"dtype":"F32","shape":[2],"data_offsets":[64,72]})";
  c.push_back(
      {"unknown scheme",
       make_file(R"({"__metadata__":{"lowbit.scheme.w":"int9","lowbit.shape.w":"[2, 32]"},)" + w +
                     "," + ws + "}",
                 72),
       "metadata 'lowbit.scheme.w': scheme 'int9'"});
  c.push_back(
      {"missing shape entry",
       make_file(R"({"__metadata__":{"lowbit.scheme.w":"int8:channel"},)" + w + "," + ws + "}", 72),
       "metadata 'lowbit.shape.w' is missing"});
  c.push_back(
      {"malformed shape entry",
       make_file(R"({"__metadata__":{"lowbit.scheme.w":"int8:channel","lowbit.shape.w":"2x32"},)" +
                     w + "," + ws + "}",
                 72),
       "is not a shape"});
  c.push_back(
      {"shape entry without scheme",
       make_file(R"({"__metadata__":{"lowbit.shape.w":"[2, 32]"},)" + w + "," + ws + "}", 72),
       "has no matching 'lowbit.scheme.w'"});
  c.push_back(
      {"missing scale part",
       make_file(
           R"({"__metadata__":{"lowbit.scheme.w":"int8:channel","lowbit.shape.w":"[2, 32]"},)" + w +
               "}",
           64),
       "part 'w.scale' is missing"});
  c.push_back(
      {"scale part of the wrong shape",
       make_file(
           R"({"__metadata__":{"lowbit.scheme.w":"int8:tensor","lowbit.shape.w":"[2, 32]"},)" + w +
               "," + ws + "}",
           72),
       "part 'w.scale' is F32 [2], the scheme stores F32 [1]"});
  c.push_back(
      {"stray zero part",
       make_file(
           R"({"__metadata__":{"lowbit.scheme.w":"int8:channel","lowbit.shape.w":"[2, 32]"},)" + w +
               "," + ws + R"(,"w.zero":{"dtype":"I32","shape":[2],"data_offsets":[72,80]}})",
           80),
       "has no zero part"});
  c.push_back(
      {"shape does not fit the scheme",
       make_file(
           R"({"__metadata__":{"lowbit.scheme.w":"int4:block64","lowbit.shape.w":"[2, 32]"},)" + w +
               "," + ws + "}",
           72),
       "not a multiple"});
  return c;
}

TEST(SafetensorsHostile, EachFileGivesACorruptFileError) {
  for (const Hostile& h : hostile_corpus()) {
    SCOPED_TRACE(h.what);
    expect_error([&] { parse(h.file); }, ErrorCode::corrupt_file, h.needle);
  }
}

TEST(SafetensorsHostile, ThroughTheFileSystemToo) {
  TempDir dir;
  int i = 0;
  for (const Hostile& h : hostile_corpus()) {
    SCOPED_TRACE(h.what);
    const std::string path = dir.file(fmt::format("h{}.safetensors", i++));
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(h.file.data()), static_cast<long>(h.file.size()));
    expect_error([&] { SafetensorsReader::open(path); }, ErrorCode::corrupt_file, path);
  }
  expect_error([&] { SafetensorsReader::open(dir.file("missing")); }, ErrorCode::io_error,
               "No such file");
  expect_error([&] { SafetensorsReader::open(dir.file("")); }, ErrorCode::io_error,
               "not a regular file");
}

/// Writes every hostile file, and the good file truncated at every byte (with and without
/// its length field adjusted), to $LOWBIT_HOSTILE_DIR (a temporary folder when unset) with
/// a manifest.tsv of "file <TAB> error code <TAB> message needle <TAB> what" lines.
/// tests/python/test_files.py runs the CLI on each file and checks its exit code and the
/// message on stderr.
TEST(SafetensorsHostile, CorpusForTheCli) {
  const char* env = std::getenv("LOWBIT_HOSTILE_DIR");
  TempDir tmp;
  const std::string dir = env ? std::string(env) : tmp.file("");
  fs::create_directories(dir);
  std::ofstream manifest(dir + "/safetensors-manifest.tsv");
  int n = 0;
  auto put = [&](const std::string& what, const std::vector<uint8_t>& bytes, const char* needle) {
    const std::string name = fmt::format("st-{:04}.safetensors", n++);
    std::ofstream(dir + "/" + name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<long>(bytes.size()));
    manifest << name << '\t' << to_string(ErrorCode::corrupt_file) << '\t' << needle << '\t' << what
             << '\n';
  };
  for (const Hostile& h : hostile_corpus()) put(h.what, h.file, h.needle);
  const std::vector<uint8_t> good = make_file(kGood, 19);
  for (size_t len = 0; len < good.size(); ++len)
    put(fmt::format("truncated to {} bytes", len),
        std::vector<uint8_t>(good.begin(), good.begin() + static_cast<long>(len)), "");
  for (size_t len = 0; len + 8 < good.size() - 19; ++len)
    put(fmt::format("header truncated to {} bytes, length field to match", len),
        with_length(std::vector<uint8_t>(good.begin(), good.begin() + static_cast<long>(8 + len)),
                    len),
        "");
  manifest.close();
  EXPECT_GT(n, 300);
  EXPECT_TRUE(fs::exists(dir + "/st-0000.safetensors"));
}

TEST(SafetensorsHostile, RandomByteFlipsNeverCrash) {
  const std::vector<uint8_t> good = make_file(kGood, 19);
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> f = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) f[rng() % f.size()] = static_cast<uint8_t>(rng());
    try {
      parse(f);
    } catch (const Error& e) {
      ASSERT_EQ(e.code(), ErrorCode::corrupt_file) << e.what();
    }
  }
}

}  // namespace
}  // namespace lowbit
