#include "model_files.hpp"

#include <fmt/format.h>
#include <fnmatch.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unordered_set>

#include "lowbit/error.hpp"
#include "lowbit/numeric.hpp"
#include "lowbit/quantize.hpp"

namespace lowbit::cli {

// ---- input ----------------------------------------------------------------------------------

void InputTensor::release() const {
  if (gguf_file) {
    gguf_file->release(*gguf_tensor);
    return;
  }
  if (st_entry.plain) {
    st_file->release(*st_entry.plain);
    return;
  }
  const io::StQuantized& q = *st_entry.quantized;
  for (int idx : {q.codes, q.scale, q.zero, q.global_scale})
    if (idx >= 0) st_file->release(st_file->tensors()[static_cast<size_t>(idx)]);
}

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

void add_file(ModelInput& in, const std::string& path) {
  in.files.push_back(std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(path)));
  in.paths.push_back(path);
  in.total_bytes += in.files.back()->file_size();
}

}  // namespace

ModelInput ModelInput::open(const std::string& path) {
  ModelInput in;
  in.format = "safetensors";
  if (ends_with(path, ".gguf")) {
    in.format = "gguf";
    in.gguf = std::make_unique<io::GgufReader>(io::GgufReader::open(path));
    in.paths.push_back(path);
    in.total_bytes = in.gguf->file_size();
    for (const io::GgufKV& kv : in.gguf->metadata()) in.metadata.emplace_back(kv.key, kv.json());
    for (const io::GgufTensor& t : in.gguf->tensors()) {
      InputTensor it;
      it.name = t.name;
      it.shape = t.shape;
      it.nbytes = t.nbytes;
      it.gguf_file = in.gguf.get();
      it.gguf_tensor = &t;
      if (in.gguf->is_quantized(t)) {
        it.quantized = true;
        it.qview = in.gguf->quantized_view(t);
        it.type_text = it.qview.scheme.str();
      } else {
        it.st_dtype = *io::ggml_plain_st_dtype(t.ggml_type);
        it.dtype = io::to_dtype(it.st_dtype);
        it.data = in.gguf->bytes(t);
        it.view = in.gguf->view(t);
        it.type_text = std::string(io::st_dtype_name(it.st_dtype));
      }
      in.tensors.push_back(std::move(it));
    }
    return in;
  }
  if (!ends_with(path, ".index.json")) {
    add_file(in, path);
  } else {
    // {"metadata": {...}, "weight_map": {"tensor": "model-00001-of-00002.safetensors", ...}}
    const io::MappedFile index = io::MappedFile::open(path);
    if (index.size() > io::kMaxHeaderBytes)
      throw_error(ErrorCode::corrupt_file,
                  fmt::format("{}: index of {} bytes is over the limit of {}", path, index.size(),
                              io::kMaxHeaderBytes));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(index.bytes().begin(), index.bytes().end());
    } catch (const std::exception& e) {
      throw_error(ErrorCode::corrupt_file, fmt::format("{}: not valid JSON: {}", path, e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw_error(ErrorCode::corrupt_file,
                  fmt::format("{}: not a safetensors index (no \"weight_map\" object)", path));
    in.paths.push_back(path);
    in.total_bytes += index.size();
    std::map<std::string, std::string> weight_map;
    std::vector<std::string> shards;
    for (const auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string())
        throw_error(ErrorCode::corrupt_file,
                    fmt::format("{}: weight_map entry '{}' is not a file name", path, name));
      const std::string file = shard.get<std::string>();
      if (file.empty() || file[0] == '/' || file.find("..") != std::string::npos ||
          file.find('\0') != std::string::npos)
        throw_error(ErrorCode::corrupt_file,
                    fmt::format("{}: shard '{}' must be a plain name in the index's directory",
                                path, file));
      weight_map[name] = file;
      if (std::find(shards.begin(), shards.end(), file) == shards.end()) shards.push_back(file);
    }
    std::sort(shards.begin(), shards.end());
    for (const std::string& shard : shards) add_file(in, dir_of(path) + "/" + shard);
    // The index must list exactly the shards' tensors, each in its shard.
    std::set<std::string> seen;
    for (size_t f = 0; f < in.files.size(); ++f)
      for (const io::StTensor& t : in.files[f]->tensors()) {
        const auto it = weight_map.find(t.name);
        if (it == weight_map.end() || dir_of(path) + "/" + it->second != in.files[f]->path())
          throw_error(ErrorCode::corrupt_file,
                      fmt::format("{}: tensor '{}' of {} is not mapped to that shard by the index",
                                  path, t.name, in.files[f]->path()));
        seen.insert(t.name);
      }
    for (const auto& [name, shard] : weight_map)
      if (!seen.count(name))
        throw_error(ErrorCode::corrupt_file,
                    fmt::format("{}: tensor '{}' is not in its shard {}", path, name, shard));
  }
  std::unordered_set<std::string> names;
  for (const auto& f : in.files) {
    for (const io::StEntry& e : f->entries()) {
      if (!names.insert(e.name()).second)
        throw_error(ErrorCode::corrupt_file,
                    fmt::format("{}: tensor '{}' appears in two shards", path, e.name()));
      InputTensor it;
      it.name = e.name();
      it.st_file = f.get();
      it.st_entry = e;
      if (e.plain) {
        it.st_dtype = e.plain->st_dtype;
        it.dtype = e.plain->dtype;
        it.shape = e.plain->shape;
        it.data = f->bytes(*e.plain);
        it.view = f->view(*e.plain);
        it.nbytes = e.plain->nbytes();
        it.type_text = std::string(io::st_dtype_name(it.st_dtype));
      } else {
        it.quantized = true;
        it.shape = e.quantized->shape;
        it.qview = f->quantized_view(*e.quantized);
        it.nbytes = e.quantized->nbytes;
        it.type_text = e.quantized->scheme.str();
      }
      in.tensors.push_back(std::move(it));
    }
    for (const auto& entry : f->metadata()) {
      const bool known = std::any_of(in.metadata.begin(), in.metadata.end(),
                                     [&](const auto& kv) { return kv.first == entry.first; });
      if (!known) in.metadata.push_back(entry);
    }
  }
  return in;
}

// ---- output ---------------------------------------------------------------------------------

ModelOutput::ModelOutput(const std::string& path, bool force) {
  if (ends_with(path, ".gguf"))
    gguf_ = std::make_unique<io::GgufWriter>(path, io::WriteOptions{.overwrite = force});
  else
    st_ = std::make_unique<io::SafetensorsWriter>(path, io::WriteOptions{.overwrite = force});
}

void ModelOutput::copy_metadata(const ModelInput& in, const std::vector<std::string>& skip) {
  auto skipped = [&](const std::string& k) {
    return std::find(skip.begin(), skip.end(), k) != skip.end();
  };
  if (in.gguf) {
    for (const io::GgufKV& kv : in.gguf->metadata()) {
      if (skipped(kv.key)) continue;
      if (gguf_)
        gguf_->set_kv(kv);
      else if (kv.key != "general.alignment")
        st_->set_metadata("gguf." + kv.key, kv.json());
    }
    return;
  }
  for (const auto& [k, v] : in.metadata) {
    if (skipped(k)) continue;
    if (st_)
      st_->set_metadata(k, v);
    else if (!k.starts_with("lowbit."))  // GGUF stores the types of its tensors itself
      gguf_->set_string(k, v);
  }
}

void ModelOutput::add_plain(const std::string& name, io::StDtype dtype, const Shape& shape) {
  if (st_) return st_->add_tensor(name, dtype, shape);
  const auto t = io::ggml_type_of(dtype);
  if (!t)
    throw_error(ErrorCode::unsupported,
                fmt::format("tensor '{}': GGUF has no {} type", name, io::st_dtype_name(dtype)));
  gguf_->add_tensor(name, *t, shape);
}

void ModelOutput::add_quantized(const std::string& name, const QuantScheme& scheme,
                                const Shape& shape) {
  if (st_) return st_->add_quantized(name, scheme, shape);
  if (scheme.format != QuantFormat::gguf)
    throw_error(ErrorCode::unsupported,
                fmt::format("tensor '{}': a .gguf file holds GGUF block types only (q8_0, q4_0, "
                            "q4_K, ...), not {}; write a .safetensors file for it",
                            name, scheme.str()));
  gguf_->add_tensor(name, scheme.gguf_type, shape);
}

void ModelOutput::begin() { st_ ? st_->begin() : gguf_->begin(); }

void ModelOutput::write_plain(const std::string& name, std::span<const uint8_t> bytes) {
  st_ ? st_->write(name, bytes) : gguf_->write(name, bytes);
}

void ModelOutput::write_quantized(const std::string& name, const QuantizedView& q) {
  if (st_) return st_->write_quantized(name, q);
  gguf_->write(name, std::span<const uint8_t>(
                         static_cast<const uint8_t*>(q.codes.data()),
                         static_cast<size_t>(storage_bytes(q.codes.dtype(), q.codes.numel()))));
}

void ModelOutput::commit() { st_ ? st_->commit() : gguf_->commit(); }

int64_t ModelOutput::file_size() const { return st_ ? st_->file_size() : gguf_->file_size(); }

void check_not_input(const ModelInput& in, const std::string& out) {
  struct stat so {};
  if (::stat(out.c_str(), &so) != 0) return;  // does not exist yet
  for (const std::string& p : in.paths) {
    struct stat si {};
    if (::stat(p.c_str(), &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
      throw_error(
          ErrorCode::invalid_argument,
          fmt::format("output {} is the input file {}; lowbit never writes its input", out, p));
  }
}

// ---- row slices -----------------------------------------------------------------------------

namespace {

int channel_axis(const QuantScheme& s, int ndim) { return s.axis < 0 ? s.axis + ndim : s.axis; }

TensorView offset_view(const TensorView& v, int64_t elem_offset, const Shape& shape) {
  auto* p = static_cast<uint8_t*>(v.data()) + storage_bytes(v.dtype(), elem_offset);
  return TensorView(p, v.dtype(), shape, v.device());
}

}  // namespace

bool rows_are_independent(const QuantScheme& s, const Shape& shape) {
  if (shape.size() != 2) return false;
  if (s.format == QuantFormat::nvfp4) return false;  // one global scale from the whole tensor
  switch (s.granularity) {
    case Granularity::tensor:
      return false;
    case Granularity::channel:
      return channel_axis(s, 2) == 0;
    case Granularity::token:
    case Granularity::block:
    case Granularity::block2d:
      return true;
  }
  return false;
}

int64_t row_alignment(const QuantScheme& s, const Shape& shape) {
  int64_t a = 1;
  if (s.granularity == Granularity::block2d) a = s.block;
  const bool packed = s.format != QuantFormat::gguf && is_packed(s.code_dtype());
  if (packed && shape.size() == 2 && shape[1] % 2 != 0 && a % 2 != 0) a *= 2;
  return a;
}

QuantizedView row_slice(const QuantizedView& q, int64_t r0, int64_t r1) {
  const int64_t rows = q.shape[0];
  const int64_t k = q.shape[1];
  QuantizedView v = q;
  v.shape = Shape{r1 - r0, k};
  if (q.scheme.format == QuantFormat::gguf) {
    const int64_t rb = q.codes.shape()[1];
    v.codes = offset_view(q.codes, r0 * rb, Shape{r1 - r0, rb});
    return v;
  }
  v.codes = offset_view(q.codes, r0 * k, Shape{r1 - r0, k});
  auto slice_groups = [&](const TensorView& t) -> TensorView {
    if (t.numel() == 0) return t;
    switch (q.scheme.granularity) {
      case Granularity::tensor:
        return t;
      case Granularity::channel:
        if (channel_axis(q.scheme, 2) != 0) return t;
        return offset_view(t, r0, Shape{r1 - r0});
      case Granularity::token:
        return offset_view(t, r0, Shape{r1 - r0});
      case Granularity::block: {
        const int64_t nb = t.shape()[1];
        return offset_view(t, r0 * nb, Shape{r1 - r0, nb});
      }
      case Granularity::block2d: {
        const int64_t g = q.scheme.block;
        const int64_t nbk = t.shape()[1];
        (void)rows;
        return offset_view(t, (r0 / g) * nbk, Shape{(r1 - r0 + g - 1) / g, nbk});
      }
    }
    return t;
  };
  v.scale = slice_groups(q.scale);
  v.zero = slice_groups(q.zero);
  return v;
}

// ---- alignment ------------------------------------------------------------------------------

bool is_aligned(const TensorView& v) {
  const uintptr_t a = static_cast<uintptr_t>(std::max(1, bit_width(v.dtype()) / 8));
  return reinterpret_cast<uintptr_t>(v.data()) % a == 0;
}

Tensor copy_of(const TensorView& v) {
  Tensor t = Tensor::empty(v.shape(), v.dtype());
  std::memcpy(t.data(), v.data(), static_cast<size_t>(storage_bytes(v.dtype(), v.numel())));
  return t;
}

QuantizedView aligned(const QuantizedView& q, QuantizedTensor& storage) {
  if (is_aligned(q.codes) && is_aligned(q.scale) && is_aligned(q.zero) &&
      is_aligned(q.global_scale))
    return q;
  storage = QuantizedTensor::allocate(q.scheme, q.shape);
  auto cp = [](const Tensor& dst, const TensorView& src) {
    if (dst.nbytes() > 0)
      std::memcpy(dst.data(), src.data(),
                  static_cast<size_t>(storage_bytes(src.dtype(), src.numel())));
  };
  cp(storage.codes, q.codes);
  cp(storage.scale, q.scale);
  cp(storage.zero, q.zero);
  cp(storage.global_scale, q.global_scale);
  return storage.view();
}

// ---- error statistics -----------------------------------------------------------------------

void ErrorStats::add(const ErrorStats& o) {
  sum_sq_err += o.sum_sq_err;
  sum_sq_ref += o.sum_sq_ref;
  max_abs_err = std::max(max_abs_err, o.max_abs_err);
  count += o.count;
}

double ErrorStats::nmse() const {
  if (sum_sq_ref == 0) return sum_sq_err == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return sum_sq_err / sum_sq_ref;
}

double ErrorStats::snr_db() const {
  const double n = nmse();
  if (n == 0) return std::numeric_limits<double>::infinity();
  return -10.0 * std::log10(n);
}

namespace {

double load_f64(const void* base, Dtype d, int64_t i) {
  switch (d) {
    case Dtype::f64:
      return static_cast<const double*>(base)[i];
    case Dtype::f32:
      return static_cast<const float*>(base)[i];
    case Dtype::f16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case Dtype::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default:
      throw_error(ErrorCode::internal, fmt::format("compare: dtype {}", dtype_name(d)));
  }
}

}  // namespace

ErrorStats compare(const TensorView& x, const TensorView& y) {
  ErrorStats s;
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double a = load_f64(x.data(), x.dtype(), i);
    const double b = load_f64(y.data(), y.dtype(), i);
    const double e = a - b;
    s.sum_sq_err += e * e;
    s.sum_sq_ref += a * a;
    s.max_abs_err = std::max(s.max_abs_err, std::fabs(e));
  }
  s.count = n;
  return s;
}

// ---- quantize with measurements ---------------------------------------------------------------

namespace {

/// Runs fn(chunk) for chunks [0, n) on up to `threads` threads; rethrows the first error.
template <class Fn>
void parallel_chunks(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<int64_t>(std::max(1, threads), n));
  if (t == 1) {
    for (int64_t c = 0; c < n; ++c) fn(c);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> pool;
  for (int i = 0; i < t; ++i)
    pool.emplace_back([&] {
      while (true) {
        const int64_t c = next.fetch_add(1);
        if (c >= n) return;
        try {
          fn(c);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!error) error = std::current_exception();
          next = n;  // stop handing out work
        }
      }
    });
  for (std::thread& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

QuantizeResult quantize_measured(const TensorView& src, const QuantScheme& scheme, int threads,
                                 Device device) {
  QuantizeResult r;
  const Shape& shape = src.shape();
  const bool two_d = shape.size() == 2 && shape[0] > 0;
  const int64_t rows = two_d ? shape[0] : 1;
  const int64_t cols = two_d ? shape[1] : src.numel();
  // Chunks of about 1M elements, on the row multiple row_slice needs.
  const int64_t align = row_alignment(scheme, shape);
  int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, cols));
  chunk_rows = (chunk_rows + align - 1) / align * align;
  const int64_t nchunks = two_d ? (rows + chunk_rows - 1) / chunk_rows : 1;

  if (device.is_cuda()) {
    Tensor d_src = Tensor::empty(shape, src.dtype(), device);
    copy(d_src, src);
    const QuantizedTensor dq = quantize(d_src, scheme);
    r.q = QuantizedTensor::allocate(scheme, shape);
    auto back = [](const Tensor& h, const Tensor& d) {
      if (h.nbytes() > 0) copy_bytes(h.data(), Device::cpu(), d.data(), d.device(), h.nbytes());
    };
    back(r.q.codes, dq.codes);
    back(r.q.scale, dq.scale);
    back(r.q.zero, dq.zero);
    back(r.q.global_scale, dq.global_scale);
  } else if (two_d && nchunks > 1 && threads > 1 && rows_are_independent(scheme, shape)) {
    r.q = QuantizedTensor::allocate(scheme, shape);
    try {
      parallel_chunks(nchunks, threads, [&](int64_t c) {
        const int64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
        quantize_into(row_slice(r.q.view(), r0, r1), src.slice(0, r0, r1));
      });
    } catch (const Error&) {
      // Quantize the whole tensor again for the error: it names the element's index in
      // the whole tensor, not in a chunk.
      r.q = quantize(src, scheme);
    }
  } else {
    r.q = quantize(src, scheme);
  }

  // Error statistics: dequantize to f32 chunk by chunk and compare with the source in f64.
  std::vector<ErrorStats> stats(static_cast<size_t>(nchunks));
  const QuantizedView qv = r.q.view();
  parallel_chunks(nchunks, threads, [&](int64_t c) {
    if (!two_d) {
      const Tensor y = dequantize(qv, Dtype::f32);
      stats[0] = compare(src, y);
      return;
    }
    const int64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
    const QuantizedView part = row_slice(qv, r0, r1);
    const Tensor y = dequantize(part, Dtype::f32);
    stats[static_cast<size_t>(c)] = compare(src.slice(0, r0, r1), y);
  });
  for (const ErrorStats& s : stats) r.stats.add(s);
  return r;
}

// ---- formatting and the rest -----------------------------------------------------------------

std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

int64_t peak_rss_bytes() {
  // VmHWM: the high-water mark of this process's own address space. getrusage's ru_maxrss
  // is not: Linux carries it across execve, so it starts at the RSS the parent had when it
  // forked us (a Python test or script holding a model would be counted as ours).
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    long long kib = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %lld kB", &kib) == 1) break;
    std::fclose(f);
    if (kib >= 0) return static_cast<int64_t>(kib) * 1024;
  }
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
}

bool matches_any(const std::string& name, const std::vector<std::string>& globs) {
  for (const std::string& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

Progress::Progress(int64_t total, bool enabled)
    : total_(total), on_(enabled && ::isatty(STDERR_FILENO)) {}

Progress::~Progress() { done(); }

void Progress::step(const std::string& label) {
  ++n_;
  if (!on_) return;
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * n_ / total_) : width;
  std::string name = label.size() > 48 ? "..." + label.substr(label.size() - 45) : label;
  std::fprintf(stderr, "\r\033[K[%s%s] %lld/%lld %s",
               std::string(static_cast<size_t>(filled), '#').c_str(),
               std::string(static_cast<size_t>(width - filled), '.').c_str(),
               static_cast<long long>(n_), static_cast<long long>(total_), name.c_str());
  std::fflush(stderr);
}

void Progress::done() {
  if (!on_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  on_ = false;
}

}  // namespace lowbit::cli
