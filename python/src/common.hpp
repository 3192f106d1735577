// What the extension's binding files share (module.cpp defines these): conversions between
// Python values and lowbit's, owning results, plan introspection, and the bind_* entry
// points of the other files.
#pragma once

#include <nanobind/nanobind.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dlpack.hpp"
#include "files.hpp"
#include "lowbit/plan.hpp"
#include "lowbit/quantized.hpp"
#include "lowbit/scheme.hpp"
#include "lowbit/tensor.hpp"

namespace lowbit::python {

nanobind::tuple to_tuple(const Dims& d);
Shape to_shape(const std::vector<int64_t>& v);
/// A lowbit.Scheme or its text form; TypeError for anything else.
QuantScheme to_scheme(nanobind::handle h);
/// An Array owning a freshly made Tensor.
Array own(Tensor t);
/// A lowbit.QuantizedTensor owning a freshly made QuantizedTensor.
PyQuantized own(QuantizedTensor q);

/// lowbit.PlanInfo: the kernel a plan selected, what it promises, and why others declined.
struct PlanInfo {
  std::string op;
  std::string description;
  KernelSku sku;
  PrecisionGuarantee precision;
  std::vector<std::pair<std::string, std::string>> declined;
  size_t workspace_size = 0;
  std::optional<std::string> weight_layout;  ///< matmul: the layout the kernel reads W in
  int64_t prepared_bytes = 0;                ///< matmul: bytes of that prepared weight
};

template <class P>
PlanInfo plan_info_of(const P& plan, std::string_view op, const std::string& description) {
  PlanInfo info;
  info.op = op;
  info.description = description;
  info.sku = plan.sku();
  info.precision = plan.precision();
  for (const Declined& d : plan.declined()) info.declined.emplace_back(d.kernel, d.reason);
  info.workspace_size = plan.workspace_size();
  return info;
}

/// lowbit.matmul, lowbit.QuantizedLinear (matmul.cpp).
void bind_matmul(nanobind::module_& m);
/// lowbit.fx expressions and lowbit.fuse (fuse.cpp).
void bind_fuse(nanobind::module_& m);

}  // namespace lowbit::python
