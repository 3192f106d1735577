// lowbit.load / lowbit.save on top of lowbit's io layer: safetensors and GGUF files.
//
// Loading maps the whole file copy-on-write (MAP_PRIVATE, PROT_READ | PROT_WRITE), validates
// it with the io readers (SafetensorsReader / GgufReader::parse over the mapping), and hands
// out Arrays and QuantizedTensors whose views point into the mapping: no copy, and the
// mapping lives until the last of them is gone. Writes through them stay in this process
// (private pages); the file never changes. Tensors a foreign writer left misaligned for
// their dtype are copied into aligned memory (files from lowbit and from the reference
// writers are always aligned). Saving goes through the io writers (temporary file, fsync,
// rename). The GIL is released around mapping, validation, copies and writing.
#include "files.hpp"

#include <fcntl.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/io.hpp"
#include "lowbit/tensor.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace lowbit::python {
namespace {

// ---- errors of system calls ---------------------------------------------------------------------

/// A failed system call while opening a file: becomes OSError(errno, message), which Python
/// turns into the errno's subclass (FileNotFoundError, PermissionError, IsADirectoryError...).
struct ErrnoError : std::exception {
  int err;
  std::string message;
  ErrnoError(int e, std::string m) : err(e), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

[[noreturn]] void throw_errno(const std::string& path, std::string_view what) {
  const int err = errno;
  throw ErrnoError(err, path + ": " + std::string(what) + ": " + std::strerror(err));
}

void translate_errno(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const ErrnoError& e) {
    PyObject* exc = PyObject_CallFunction(PyExc_OSError, "is", e.err, e.message.c_str());
    if (!exc) return;
    PyObject* code = PyUnicode_FromString("io_error");
    if (code) {
      PyObject_SetAttrString(exc, "code", code);
      Py_DECREF(code);
    }
    PyErr_Clear();
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
  }
}

// ---- the mapping ------------------------------------------------------------------------------

/// A private, copy-on-write mapping of a whole regular file (MAP_NORESERVE: no swap is
/// reserved for pages that are never written).
struct Mapping {
  uint8_t* data = nullptr;
  size_t size = 0;
  std::string path;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
  }
  std::span<const uint8_t> bytes() const { return {data, size}; }

  static std::shared_ptr<Mapping> open(const std::string& path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a
    // regular file); it changes nothing for regular files.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw_errno(path, "cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      throw_errno(path, "cannot stat");
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
      throw ErrnoError(errno, path + ": not a regular file");
    }
    auto m = std::make_shared<Mapping>();
    m->path = path;
    m->size = static_cast<size_t>(st.st_size);
    if (m->size > 0) {
      void* p =
          ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        errno = err;
        throw_errno(path, "cannot mmap");
      }
      m->data = static_cast<uint8_t*>(p);
    }
    ::close(fd);  // the mapping keeps the file alive
    return m;
  }
};

bool aligned_for(const void* p, int64_t elem_bytes) {
  return elem_bytes <= 1 ||
         reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(elem_bytes) == 0;
}

int64_t elem_bytes(Dtype d) { return std::max(1, bit_width(d) / 8); }

/// An Array over `view` in the mapping, or over an aligned copy of it if it is misaligned
/// for `align` bytes.
Array map_array(const std::shared_ptr<Mapping>& map, const TensorView& view, int64_t align) {
  Array a;
  if (aligned_for(view.data(), align)) {
    a.owner = map;
    a.view = view;
    return a;
  }
  auto copy = std::make_shared<Tensor>(Tensor::empty(view.shape(), view.dtype()));
  std::memcpy(copy->data(), view.data(),
              static_cast<size_t>(storage_bytes(view.dtype(), view.numel())));
  a.view = copy->view();
  a.owner = std::move(copy);
  return a;
}

/// A QuantizedTensor over the parts in the mapping, or over aligned copies of them.
PyQuantized map_quantized(const std::shared_ptr<Mapping>& map, const QuantizedView& v) {
  PyQuantized q;
  bool ok = true;
  for (const TensorView* t : {&v.codes, &v.scale, &v.zero, &v.global_scale})
    ok = ok && (t->numel() == 0 || aligned_for(t->data(), elem_bytes(t->dtype())));
  if (ok) {
    q.owner = map;
    q.view = v;
    return q;
  }
  auto copy = std::make_shared<QuantizedTensor>(QuantizedTensor::allocate(v.scheme, v.shape));
  auto cp = [](const Tensor& dst, const TensorView& src) {
    if (dst.nbytes() > 0 && src.numel() > 0)
      std::memcpy(dst.data(), src.data(),
                  static_cast<size_t>(storage_bytes(src.dtype(), src.numel())));
  };
  cp(copy->codes, v.codes);
  cp(copy->scale, v.scale);
  cp(copy->zero, v.zero);
  cp(copy->global_scale, v.global_scale);
  q.view = copy->view();
  q.owner = std::move(copy);
  return q;
}

// ---- load -------------------------------------------------------------------------------------

/// One logical tensor of a loaded file.
struct Loaded {
  std::string name;
  bool quantized = false;
  Array array;       ///< plain: u8 [nbytes] for safetensors / GGUF types lowbit lacks
  PyQuantized q;     ///< quantized
  std::string type;  ///< plain: the safetensors dtype ("F32", "I64"); quantized: the scheme
  Shape shape;       ///< the logical shape
};

/// A GGUF metadata entry, undecoded (the package decodes it with its exact type).
struct GgufEntry {
  std::string key;
  uint32_t type;
  uint32_t elem_type;
  uint64_t count;
  std::string value;
};

struct LoadResult {
  std::string format;
  std::vector<Loaded> tensors;
  std::vector<std::pair<std::string, std::string>> st_metadata;
  std::vector<GgufEntry> gguf_metadata;
};

bool is_lowbit_key(std::string_view key) {
  return key.starts_with("lowbit.scheme.") || key.starts_with("lowbit.shape.");
}

LoadResult load_file(const std::string& path, const std::optional<std::string>& format,
                     bool want_tensors, bool want_metadata) {
  const std::shared_ptr<Mapping> map = Mapping::open(path);
  LoadResult r;
  if (format)
    r.format = *format;
  else
    r.format = map->size >= 4 && std::memcmp(map->data, "GGUF", 4) == 0 ? "gguf" : "safetensors";

  if (r.format == "safetensors") {
    const io::SafetensorsReader f = io::SafetensorsReader::parse(map->bytes(), path);
    if (want_metadata)
      for (const auto& [k, v] : f.metadata())
        if (!is_lowbit_key(k)) r.st_metadata.emplace_back(k, v);  // those are the QuantizedTensors
    if (want_tensors)
      for (const io::StEntry& e : f.entries()) {
        Loaded l;
        l.name = e.name();
        if (e.quantized) {
          l.quantized = true;
          l.q = map_quantized(map, f.quantized_view(*e.quantized));
          l.type = e.quantized->scheme.str();
          l.shape = e.quantized->shape;
        } else {
          const io::StTensor& t = *e.plain;
          l.array = map_array(map, f.view(t), std::max(1, io::st_dtype_bits(t.st_dtype) / 8));
          l.type = std::string(io::st_dtype_name(t.st_dtype));
          l.shape = t.shape;
        }
        r.tensors.push_back(std::move(l));
      }
  } else if (r.format == "gguf") {
    const io::GgufReader f = io::GgufReader::parse(map->bytes(), path);
    if (want_metadata)
      for (const io::GgufKV& kv : f.metadata())
        r.gguf_metadata.push_back(GgufEntry{
            kv.key, static_cast<uint32_t>(kv.type), static_cast<uint32_t>(kv.elem_type), kv.count,
            std::string(reinterpret_cast<const char*>(kv.value.data()), kv.value.size())});
    if (want_tensors)
      for (const io::GgufTensor& t : f.tensors()) {
        Loaded l;
        l.name = t.name;
        l.shape = t.shape;
        if (f.is_quantized(t)) {
          l.quantized = true;
          l.q = map_quantized(map, f.quantized_view(t));
          l.type = l.q.view.scheme.str();
          l.shape = l.q.view.shape;
        } else {
          const io::StDtype st = *io::ggml_plain_st_dtype(t.ggml_type);
          l.array = map_array(map, f.view(t), std::max(1, io::st_dtype_bits(st) / 8));
          l.type = std::string(io::st_dtype_name(st));
        }
        r.tensors.push_back(std::move(l));
      }
  } else {
    throw_error(ErrorCode::invalid_argument,
                "load: format must be \"safetensors\" or \"gguf\", got \"" + r.format + "\"");
  }
  return r;
}

nb::tuple to_tuple(const Dims& d) {
  nb::list l;
  for (int64_t v : d) l.append(v);
  return nb::tuple(l);
}

// ---- save -------------------------------------------------------------------------------------

/// One tensor to save, unpacked from Python (with the GIL) before the GIL is released.
struct ToSave {
  std::string name;
  bool quantized = false;
  Array array;
  std::optional<io::StDtype> st;  ///< plain: the file's dtype (raw types: given; else the view's)
  Shape shape;                    ///< plain: the logical shape
  PyQuantized q;
};

/// The bytes of a plain view as a contiguous host span; copies into `storage` if needed.
std::span<const uint8_t> host_bytes(const TensorView& v, Tensor& storage) {
  const int64_t n = storage_bytes(v.dtype(), v.numel());
  if (v.device().is_cpu() && v.is_contiguous())
    return {static_cast<const uint8_t*>(v.data()), static_cast<size_t>(n)};
  storage = Tensor::empty(v.shape(), v.dtype());
  if (v.device().is_cpu() || v.is_contiguous()) {
    copy(storage.view(), v);
  } else {  // strided on a GPU: gather there, then one copy to the host
    Tensor staged = Tensor::empty(v.shape(), v.dtype(), v.device());
    copy(staged.view(), v);
    copy(storage.view(), staged.view());
  }
  return {static_cast<const uint8_t*>(storage.data()), static_cast<size_t>(n)};
}

/// A quantized tensor's parts on the host (copies from a GPU into `storage`).
QuantizedView host_quantized(const QuantizedView& v, QuantizedTensor& storage) {
  if (v.device().is_cpu()) return v;
  storage = QuantizedTensor::allocate(v.scheme, v.shape);
  auto back = [](const Tensor& h, const TensorView& d) {
    if (h.nbytes() > 0 && d.numel() > 0)
      copy_bytes(h.data(), Device::cpu(), d.data(), d.device(),
                 storage_bytes(d.dtype(), d.numel()));
  };
  back(storage.codes, v.codes);
  back(storage.scale, v.scale);
  back(storage.zero, v.zero);
  back(storage.global_scale, v.global_scale);
  return storage.view();
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

void save_safetensors(const std::string& path, const std::vector<ToSave>& tensors,
                      const std::vector<std::pair<std::string, std::string>>& metadata,
                      bool overwrite) {
  io::SafetensorsWriter w(path, io::WriteOptions{overwrite});
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  for (const ToSave& t : tensors) {
    if (t.quantized)
      w.add_quantized(t.name, t.q.view.scheme, t.q.view.shape);
    else
      w.add_tensor(t.name, *t.st, t.shape);
  }
  w.begin();
  for (const ToSave& t : tensors) {
    if (t.quantized) {
      QuantizedTensor storage;
      w.write_quantized(t.name, host_quantized(t.q.view, storage));
    } else {
      Tensor storage;
      w.write(t.name, host_bytes(t.array.view, storage));
    }
  }
  w.commit();
}

void save_gguf(const std::string& path, const std::vector<ToSave>& tensors,
               const std::vector<GgufEntry>& metadata, bool overwrite) {
  io::GgufWriter w(path, io::WriteOptions{overwrite});
  for (const GgufEntry& e : metadata) {
    io::GgufKV kv;
    kv.key = e.key;
    kv.type = static_cast<io::GgufValueType>(e.type);
    kv.elem_type = static_cast<io::GgufValueType>(e.elem_type);
    kv.count = e.count;
    kv.value =
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(e.value.data()), e.value.size());
    w.set_kv(kv);
  }
  for (const ToSave& t : tensors) {
    if (t.quantized) {
      const QuantScheme& s = t.q.view.scheme;
      if (s.format != QuantFormat::gguf)
        throw_error(ErrorCode::unsupported,
                    "save: tensor " + quoted(t.name) + " is quantized with " + s.str() +
                        ", which GGUF cannot hold (GGUF stores its own block types: q8_0, q4_K, "
                        "...); save it to a .safetensors file");
      w.add_tensor(t.name, static_cast<uint32_t>(s.gguf_type), t.q.view.shape);
    } else {
      const std::optional<uint32_t> type = io::ggml_type_of(*t.st);
      if (!type)
        throw_error(ErrorCode::unsupported,
                    "save: tensor " + quoted(t.name) + " is " +
                        std::string(io::st_dtype_name(*t.st)) +
                        ", which GGUF cannot hold (it takes F32, F16, BF16, F64, I8, I16, I32, "
                        "I64 and the GGUF block types)");
      w.add_tensor(t.name, *type, t.shape);
    }
  }
  w.begin();
  for (const ToSave& t : tensors) {
    if (t.quantized) {
      QuantizedTensor storage;
      const QuantizedView h = host_quantized(t.q.view, storage);
      w.write(t.name, std::span<const uint8_t>(static_cast<const uint8_t*>(h.codes.data()),
                                               static_cast<size_t>(h.codes.numel())));
    } else {
      Tensor storage;
      w.write(t.name, host_bytes(t.array.view, storage));
    }
  }
  w.commit();
}

/// Unpacks one (name, Array | QuantizedTensor, safetensors dtype or None, shape or None).
ToSave to_save(const nb::handle& item) {
  const nb::tuple t = nb::cast<nb::tuple>(item);
  if (t.size() != 4) throw nb::type_error("_save: entries are (name, value, st_dtype, shape)");
  ToSave s;
  s.name = nb::cast<std::string>(t[0]);
  const nb::handle value = t[1];
  if (nb::isinstance<PyQuantized>(value)) {
    s.quantized = true;
    s.q = nb::cast<const PyQuantized&>(value);
    return s;
  }
  if (!nb::isinstance<Array>(value))
    throw nb::type_error(("save: tensor '" + s.name + "' is a " +
                          std::string(nb::type_name(value.type()).c_str()) +
                          ", not an array or a lowbit.QuantizedTensor")
                             .c_str());
  s.array = nb::cast<const Array&>(value);
  const TensorView& v = s.array.view;
  if (!t[2].is_none()) {
    // Raw bytes of a dtype lowbit lacks (bool, int64, ...): contiguous u8 and the true shape.
    const std::string st_text = nb::cast<std::string>(t[2]);
    s.st = io::parse_st_dtype(st_text);
    if (!s.st) throw_error(ErrorCode::invalid_argument, "save: no safetensors dtype " + st_text);
    const std::vector<int64_t> shape = nb::cast<std::vector<int64_t>>(t[3]);
    s.shape = Shape(std::span<const int64_t>(shape));
    if (v.dtype() != Dtype::u8 || !v.is_contiguous())
      throw_error(ErrorCode::internal, "save: raw bytes must be contiguous u8");
    return s;
  }
  s.st = io::to_st_dtype(v.dtype());
  if (!s.st)
    throw_error(ErrorCode::invalid_argument,
                "save: tensor '" + s.name + "' is " + std::string(dtype_name(v.dtype())) +
                    ", which safetensors and GGUF have no dtype for (quantize it, e.g. with "
                    "int4:block32, to store 4-bit integers)");
  s.shape = v.shape();
  return s;
}

}  // namespace

void bind_files(nb::module_& m) {
  nb::register_exception_translator(translate_errno);

  m.def(
      "_load",
      [](const std::string& path, std::optional<std::string> format, bool want_tensors,
         bool want_metadata) {
        LoadResult r;
        {
          nb::gil_scoped_release release;
          r = load_file(path, format, want_tensors, want_metadata);
        }
        nb::list tensors;
        for (Loaded& l : r.tensors) {
          nb::object obj = l.quantized ? nb::cast(std::move(l.q)) : nb::cast(std::move(l.array));
          tensors.append(nb::make_tuple(l.name, obj, l.type, to_tuple(l.shape)));
        }
        nb::list metadata;
        for (const auto& [k, v] : r.st_metadata) metadata.append(nb::make_tuple(k, v));
        for (const GgufEntry& e : r.gguf_metadata)
          metadata.append(nb::make_tuple(e.key, e.type, e.elem_type, e.count,
                                         nb::bytes(e.value.data(), e.value.size())));
        return nb::make_tuple(r.format, tensors, metadata);
      },
      "path"_a, "format"_a = nb::none(), "tensors"_a = true, "metadata"_a = true,
      "Maps and validates a safetensors or GGUF file: (format, [(name, Array | QuantizedTensor, "
      "dtype or scheme, shape)], metadata). The package's lowbit.load wraps it.");

  m.def(
      "_save",
      [](const std::string& path, const std::string& format, nb::list entries,
         std::vector<std::pair<std::string, std::string>> st_metadata, nb::list gguf_metadata,
         bool overwrite) {
        std::vector<ToSave> tensors;
        tensors.reserve(entries.size());
        for (nb::handle item : entries) tensors.push_back(to_save(item));
        std::vector<GgufEntry> gguf;
        for (nb::handle item : gguf_metadata) {
          const nb::tuple t = nb::cast<nb::tuple>(item);
          const nb::bytes value = nb::cast<nb::bytes>(t[4]);
          gguf.push_back(GgufEntry{nb::cast<std::string>(t[0]), nb::cast<uint32_t>(t[1]),
                                   nb::cast<uint32_t>(t[2]), nb::cast<uint64_t>(t[3]),
                                   std::string(value.c_str(), value.size())});
        }
        if (format != "safetensors" && format != "gguf")
          throw_error(ErrorCode::invalid_argument,
                      "save: format must be \"safetensors\" or \"gguf\", got \"" + format + "\"");
        nb::gil_scoped_release release;
        if (format == "safetensors")
          save_safetensors(path, tensors, st_metadata, overwrite);
        else
          save_gguf(path, tensors, gguf, overwrite);
      },
      "path"_a, "format"_a, "entries"_a, "st_metadata"_a, "gguf_metadata"_a, "overwrite"_a,
      "Writes a safetensors or GGUF file atomically. The package's lowbit.save wraps it.");
}

}  // namespace lowbit::python
