// What module.cpp and files.cpp share: the Python-side quantized tensor, and the binding of
// lowbit.load / lowbit.save (files.cpp) on top of lowbit's io layer (include/lowbit/io.hpp).
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "dlpack.hpp"
#include "lowbit/quantized.hpp"

namespace lowbit::python {

/// lowbit.QuantizedTensor: views of the parts plus whatever keeps them alive (a
/// lowbit::QuantizedTensor, the caller's adopted arrays, or a file's mapping).
struct PyQuantized {
  std::shared_ptr<const void> owner;  ///< a lowbit::QuantizedTensor, or the adopted parts
  QuantizedView view;
  std::string origin = "numpy";  ///< the framework dequantize returns ("numpy", "torch", "array")

  std::optional<Array> part(const TensorView& v, bool present) const {
    if (!present) return std::nullopt;
    Array a;
    a.owner = owner;
    a.view = bytes_view(v);
    return a;
  }
  int64_t nbytes() const {
    int64_t n = 0;
    for (const TensorView* v : {&view.codes, &view.scale, &view.zero, &view.global_scale})
      if (v->data() != nullptr || v->numel() > 0) n += storage_bytes(v->dtype(), v->numel());
    return n;
  }
};

/// Binds _load and _save (the package's lowbit.load / load_metadata / save call them) and
/// the translation of failed system calls to OSError subclasses by errno.
void bind_files(nanobind::module_& m);

}  // namespace lowbit::python
