// GGUF files: round trips through GgufWriter / GgufReader, and a corpus of hand-made hostile
// files (ggml's checks and ours), each refused with Error(corrupt_file) (or unsupported for a
// type lowbit lacks) and a message naming the defect.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "lowbit/gguf_blocks.hpp"
#include "lowbit/io.hpp"
#include "lowbit/quantize.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using io::GgufReader;
using io::GgufWriter;
using testing::expect_error;
namespace fs = std::filesystem;

/// Builds GGUF bytes field by field.
struct G {
  std::string s;
  G& raw(std::string_view b) {
    s += b;
    return *this;
  }
  G& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) s += static_cast<char>(v >> (8 * i));
    return *this;
  }
  G& u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) s += static_cast<char>(v >> (8 * i));
    return *this;
  }
  G& str(std::string_view v) { return u64(v.size()).raw(v); }
  G& pad(size_t a = 32) {
    s.append((a - s.size() % a) % a, '\0');
    return *this;
  }
  G& data(size_t n) {
    for (size_t i = 0; i < n; ++i) s += static_cast<char>(i * 13 + 5);
    return *this;
  }
  std::vector<uint8_t> bytes() const { return std::vector<uint8_t>(s.begin(), s.end()); }
};

G header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  G g;
  g.raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  return g;
}

/// A tensor info: name, dims (ggml order, innermost first), type, offset.
G& info(G& g, std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
  g.str(name).u32(static_cast<uint32_t>(ne.size()));
  for (uint64_t d : ne) g.u64(d);
  return g.u32(type).u64(offset);
}

/// The valid base file: 2 metadata entries, f32 [2, 4] and q8_0 [32].
std::vector<uint8_t> good() {
  G g = header(2, 2);
  g.str("general.alignment").u32(4).u32(32);
  g.str("general.name").u32(8).str("tiny");
  info(g, "a", {4, 2}, 0, 0);
  info(g, "b", {32}, 8, 32);
  return g.pad().data(32).data(34).pad().bytes();
}

GgufReader parse(const std::vector<uint8_t>& b) {
  return GgufReader::parse(std::span<const uint8_t>(b.data(), b.size()), "mem");
}

TEST(GgufFiles, TheBaseFileIsValid) {
  const auto b = good();
  const GgufReader r = parse(b);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32);
  ASSERT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.tensors()[0].shape, (Shape{2, 4}));
  EXPECT_EQ(r.tensors()[1].nbytes, 34);
  EXPECT_TRUE(r.is_quantized(r.tensors()[1]));
  EXPECT_EQ(r.quantized_view(r.tensors()[1]).scheme.str(), "q8_0");
  EXPECT_EQ(*r.find_kv("general.name")->as_string(), "tiny");
  EXPECT_EQ(r.find_kv("general.alignment")->json(), "32");
}

TEST(GgufFiles, WriterRoundTripsPlainAndQuantizedTensors) {
  std::string tmpl = (fs::temp_directory_path() / "lowbit-gguf-XXXXXX").string();
  const std::string dir = ::mkdtemp(tmpl.data());
  const std::string path = dir + "/m.gguf";
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  Tensor x = Tensor::empty({8, 256}, Dtype::f32);
  for (int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = nd(rng);
  const QuantizedTensor q = quantize(x, QuantScheme::parse("q4_K"));
  {
    GgufWriter w(path);
    w.set_string("general.architecture", "test");
    w.set_u32("general.alignment", 64);
    w.add_tensor("x", 0, x.shape());
    w.add_tensor("q", q.scheme.gguf_type, q.shape);
    w.begin();
    w.write("q", std::span<const uint8_t>(static_cast<const uint8_t*>(q.codes.data()),
                                          static_cast<size_t>(q.codes.nbytes())));
    w.write("x", std::span<const uint8_t>(static_cast<const uint8_t*>(x.data()),
                                          static_cast<size_t>(x.nbytes())));
    w.commit();
  }
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.alignment(), 64);
  EXPECT_EQ(r.data_offset() % 64, 0);
  EXPECT_EQ(r.find("q")->offset % 64, 0);
  EXPECT_EQ(testing::compare_bytes(x, r.view(*r.find("x"))), "");
  const QuantizedView v = r.quantized_view(*r.find("q"));
  EXPECT_EQ(v.scheme, q.scheme);
  EXPECT_EQ(testing::compare_bytes(q.codes, v.codes), "");
  EXPECT_EQ(testing::compare_bytes(dequantize(q.view()), dequantize(v)), "");
  expect_error([&] { GgufWriter w(path); }, ErrorCode::io_error, "exists");
  fs::remove_all(dir);
}

TEST(GgufFilesHostile, TruncatedAtEveryByte) {
  const auto b = good();
  for (size_t len = 0; len < b.size(); ++len) {
    SCOPED_TRACE(len);
    // Cutting only the last tensor's padding leaves a valid file (as for gguf-py's output).
    if (len >= b.size() - 30) continue;
    const std::vector<uint8_t> cut(b.begin(), b.begin() + static_cast<long>(len));
    expect_error([&] { parse(cut); }, ErrorCode::corrupt_file, "mem: ");
  }
}

struct Hostile {
  const char* what;
  std::vector<uint8_t> file;
  const char* needle;
  ErrorCode code = ErrorCode::corrupt_file;
};

std::vector<Hostile> corpus() {
  std::vector<Hostile> c;
  auto one_kv = [](auto&& add_kv) {
    G g = header(0, 1);
    add_kv(g);
    return g.bytes();
  };
  auto one_tensor = [](std::string_view name, std::vector<uint64_t> ne, uint32_t type,
                       uint64_t offset, size_t data) {
    G g = header(1, 0);
    info(g, name, ne, type, offset);
    return g.pad().data(data).pad().bytes();
  };
  {
    auto b = good();
    b[0] = 'X';
    c.push_back({"bad magic", b, "bad magic"});
  }
  c.push_back({"version 1", header(0, 0, 1).bytes(), "version 1"});
  c.push_back({"version 4", header(0, 0, 4).bytes(), "unsupported GGUF version 4"});
  c.push_back({"big-endian", header(0, 0, 0x03000000).bytes(), "big-endian"});
  c.push_back({"huge metadata count", header(0, uint64_t{1} << 62).bytes(), "metadata count"});
  c.push_back({"huge tensor count", header(uint64_t{1} << 62, 0).bytes(), "tensor count"});
  c.push_back({"key length 2^64-1", one_kv([](G& g) { g.u64(~uint64_t{0}).raw("xxxxxxxxxxxxx"); }),
               "runs past the end"});
  c.push_back({"string value past the end",
               one_kv([](G& g) { g.str("k").u32(8).u64(1000).raw("abc"); }), "runs past the end"});
  c.push_back({"value type 13", one_kv([](G& g) { g.str("k").u32(13).u32(0); }),
               "value type 13 out of range"});
  c.push_back(
      {"nested array", one_kv([](G& g) { g.str("k").u32(9).u32(9).u64(0); }), "nested arrays"});
  c.push_back({"array element type 99", one_kv([](G& g) { g.str("k").u32(9).u32(99).u64(0); }),
               "element type 99"});
  c.push_back({"huge array", one_kv([](G& g) { g.str("k").u32(9).u32(4).u64(uint64_t{1} << 61); }),
               "runs past the end"});
  c.push_back({"huge string array",
               one_kv([](G& g) { g.str("k").u32(9).u32(8).u64(uint64_t{1} << 61); }),
               "cannot fit"});
  c.push_back({"bad UTF-8 key", one_kv([](G& g) { g.str("k\xff").u32(4).u32(1); }), "UTF-8"});
  c.push_back(
      {"bad UTF-8 string", one_kv([](G& g) { g.str("k").u32(8).str("\xc0\x80"); }), "UTF-8"});
  c.push_back({"boolean 2", one_kv([](G& g) { g.str("k").u32(7).raw("\x02"); }), "boolean byte 2"});
  {
    G g = header(0, 2);
    g.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    c.push_back({"duplicate key", g.bytes(), "duplicate metadata key 'k'"});
  }
  c.push_back({"alignment as u64", one_kv([](G& g) { g.str("general.alignment").u32(10).u64(32); }),
               "must be u32"});
  c.push_back({"alignment 0", one_kv([](G& g) { g.str("general.alignment").u32(4).u32(0); }),
               "not a power of two"});
  c.push_back({"alignment 24", one_kv([](G& g) { g.str("general.alignment").u32(4).u32(24); }),
               "not a power of two"});
  c.push_back({"name of 64 bytes", one_tensor(std::string(64, 'n'), {1}, 0, 0, 4), "too long"});
  {
    G g = header(2, 0);
    info(g, "a", {8}, 0, 0);
    info(g, "a", {8}, 0, 32);
    c.push_back({"duplicate tensor name", g.pad().data(64).bytes(), "duplicate tensor name 'a'"});
  }
  c.push_back({"n_dims 5", one_tensor("a", {1, 1, 1, 1, 1}, 0, 0, 4), "n_dims 5"});
  c.push_back({"negative dim", one_tensor("a", {uint64_t{1} << 63}, 0, 0, 4), "negative"});
  c.push_back({"element count overflow",
               one_tensor("a", {uint64_t{1} << 32, uint64_t{1} << 32, 4}, 0, 0, 4), "overflows"});
  c.push_back({"byte size overflow", one_tensor("a", {uint64_t{1} << 62}, 0, 0, 4), "overflows"});
  c.push_back({"type id 99", one_tensor("a", {4}, 99, 0, 4), "type id 99 out of range"});
  c.push_back(
      {"type iq2_xxs", one_tensor("a", {256}, 16, 0, 66), "not supported", ErrorCode::unsupported});
  c.push_back({"row not whole blocks", one_tensor("a", {33}, 8, 0, 64), "not a whole number"});
  c.push_back(
      {"misaligned offset", one_tensor("a", {4}, 0, 1, 64), "not a multiple of the alignment"});
  {
    G g = header(2, 0);
    info(g, "a", {8}, 0, 0);
    info(g, "b", {8}, 0, 64);
    c.push_back({"hole between tensors", g.pad().data(96).bytes(), "offset 64, expected 32"});
  }
  {
    G g = header(2, 0);
    info(g, "a", {8}, 0, 32);
    info(g, "b", {8}, 0, 0);
    c.push_back({"tensors out of order", g.pad().data(64).bytes(), "offset 32, expected 0"});
  }
  {
    G g = header(2, 0);
    info(g, "a", {8}, 0, 0);
    info(g, "b", {8}, 0, 0);
    c.push_back({"overlapping tensors", g.pad().data(64).bytes(), "offset 0, expected 32"});
  }
  c.push_back({"offset 2^62", one_tensor("a", {4}, 0, uint64_t{1} << 62, 32), "expected 0"});
  c.push_back({"data past the end", one_tensor("a", {64}, 0, 0, 100), "the file has"});
  {
    auto b = good();
    b.resize(b.size() + 32, 0);
    c.push_back({"trailing bytes", b, "32 bytes after the tensor data"});
  }
  return c;
}

TEST(GgufFilesHostile, EachFileGivesAClearError) {
  for (const Hostile& h : corpus()) {
    SCOPED_TRACE(h.what);
    expect_error([&] { parse(h.file); }, h.code, h.needle);
  }
}

/// Writes every hostile file and the good file truncated at every byte to
/// $LOWBIT_HOSTILE_DIR (a temporary folder when unset) with a gguf-manifest.tsv of
/// "file <TAB> error code <TAB> message needle <TAB> what" lines; tests/python/test_files.py
/// runs the CLI on each file and checks its exit code and the message on stderr.
TEST(GgufFilesHostile, CorpusForTheCli) {
  const char* env = std::getenv("LOWBIT_HOSTILE_DIR");
  const std::string tmp = (fs::temp_directory_path() / fmt::format("lowbit-gguf-{}", ::getpid()));
  const std::string dir = env ? std::string(env) : tmp;
  fs::create_directories(dir);
  std::ofstream manifest(dir + "/gguf-manifest.tsv");
  int n = 0;
  auto put = [&](const std::string& what, const std::vector<uint8_t>& bytes, ErrorCode code,
                 const char* needle) {
    const std::string name = fmt::format("gguf-{:04}.gguf", n++);
    std::ofstream(dir + "/" + name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<long>(bytes.size()));
    manifest << name << '\t' << to_string(code) << '\t' << needle << '\t' << what << '\n';
  };
  for (const Hostile& h : corpus()) put(h.what, h.file, h.code, h.needle);
  const auto b = good();
  for (size_t len = 0; len + 30 < b.size(); ++len)  // as in TruncatedAtEveryByte
    put(fmt::format("truncated to {} bytes", len),
        std::vector<uint8_t>(b.begin(), b.begin() + static_cast<long>(len)),
        ErrorCode::corrupt_file, "");
  manifest.close();
  EXPECT_GT(n, 150);
  if (!env) fs::remove_all(tmp);
}

TEST(GgufFilesHostile, RandomByteFlipsNeverCrash) {
  const auto b = good();
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> f = b;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) f[rng() % f.size()] = static_cast<uint8_t>(rng());
    try {
      const GgufReader r = parse(f);
      for (const io::GgufTensor& t : r.tensors())
        if (r.is_quantized(t)) dequantize(r.quantized_view(t));
      for (const io::GgufKV& kv : r.metadata()) kv.json();
    } catch (const Error& e) {
      ASSERT_TRUE(e.code() == ErrorCode::corrupt_file || e.code() == ErrorCode::unsupported)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace lowbit
