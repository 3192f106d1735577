// The fused op: descriptor construction and checks, argument checks, the kernel list, and
// the fuse() one-liner.
#include <fmt/format.h>

#include "jit/jit.hpp"

namespace lowbit {

using fusion::Program;

namespace {

FusedOperand operand_of(const TensorView& v) { return {v.dtype(), v.shape(), v.strides()}; }

bool broadcastable(const Shape& in, const Shape& out) {
  if (in.size() > out.size()) return false;
  const int off = out.size() - in.size();
  for (int i = 0; i < in.size(); ++i)
    if (in[i] != 1 && in[i] != out[off + i]) return false;
  return true;
}

/// Bytes [begin, end) a view addresses.
std::pair<const char*, const char*> span_of(const TensorView& v) {
  const auto* p = static_cast<const char*>(v.data());
  return {p, p + v.span_bytes()};
}

bool overlap(const TensorView& a, const TensorView& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto [a0, a1] = span_of(a);
  auto [b0, b1] = span_of(b);
  return a0 < b1 && b0 < a1;
}

/// A descriptor's program and plan state, in one allocation (FusedDesc::program and ::state
/// point into it, sharing its reference count).
///
/// Blocks are recycled per thread: a caller that makes a descriptor per call would
/// otherwise allocate and free the Program, its seven lists, the PlanState and the layout's
/// two lists every call (about a third of a cached launch's host work). When the last
/// reference goes, the block is constructed afresh in place (every field back to its
/// default, as a new one) but its lists keep their memory, and it waits on the releasing
/// thread's list (up to kKeep blocks; any thread's block serves any descriptor) for the next
/// FusedDesc::make of that thread. The table of resolved kernels keeps copies of programs
/// (structure_copy), never a block, so no block is held by the kernels its state holds.
struct DescBlock {
  Program program;
  fusion::PlanState state;
};

struct BlockCache {  // trivially destructible: usable after the thread's reaper has run
  DescBlock* blocks[8];
  size_t count = 0;
  bool closed = false;
};
constexpr size_t kKeep = 8;
/// Lists longer than this are not kept (a rare large expression's memory is given back).
constexpr size_t kKeepCapacity = 256;

BlockCache& block_cache() {
  thread_local BlockCache cache;
  return cache;
}

struct BlockReaper {
  ~BlockReaper() {
    BlockCache& c = block_cache();
    c.closed = true;
    while (c.count > 0) delete c.blocks[--c.count];
  }
};

template <class V>
V keep(V& v) {
  V kept;
  if (v.capacity() <= kKeepCapacity) {
    kept = std::move(v);
    kept.clear();
  }
  return kept;
}

struct Recycle {
  void operator()(DescBlock* b) const {
    BlockCache& c = block_cache();
    if (c.closed || c.count >= kKeep) {
      delete b;
      return;
    }
    Program& p = b->program;
    auto code = keep(p.code);
    auto constants = keep(p.constants);
    auto outputs = keep(p.outputs);
    auto input_dtypes = keep(p.input_dtypes);
    auto output_dtypes = keep(p.output_dtypes);
    auto bound_inputs = keep(p.bound_inputs);
    auto bound_outputs = keep(p.bound_outputs);
    auto strides = keep(b->state.layout.strides);
    auto cls = keep(b->state.layout.cls);
    b->~DescBlock();
    ::new (static_cast<void*>(b)) DescBlock();  // noexcept: only default members
    p.code = std::move(code);
    p.constants = std::move(constants);
    p.outputs = std::move(outputs);
    p.input_dtypes = std::move(input_dtypes);
    p.output_dtypes = std::move(output_dtypes);
    p.bound_inputs = std::move(bound_inputs);
    p.bound_outputs = std::move(bound_outputs);
    b->state.layout.strides = std::move(strides);
    b->state.layout.cls = std::move(cls);
    if (c.count == 0) {  // the cache holds blocks from here on: its thread empties it at exit
      thread_local BlockReaper reaper;
      (void)reaper;
    }
    c.blocks[c.count++] = b;
  }
};

std::shared_ptr<DescBlock> new_block() {
  BlockCache& c = block_cache();
  DescBlock* b = c.count > 0 ? c.blocks[--c.count] : new DescBlock();
  return std::shared_ptr<DescBlock>(b, Recycle());  // on a throw here: Recycle(b)
}

}  // namespace

std::string fused_dtypes(const FusedDesc& d) {
  std::string s;
  for (const FusedOperand& in : d.inputs) {
    if (!s.empty()) s += ',';
    s += dtype_name(in.dtype);
  }
  s += "->";
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    if (o) s += ',';
    s += dtype_name(d.outputs[o].dtype);
  }
  return s;
}

namespace fusion {

std::string quantize_epilogue_unsupported(const QuantScheme& s) {
  switch (s.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
    case QuantFormat::int4:
    case QuantFormat::uint4:
    case QuantFormat::fp8e4m3:
    case QuantFormat::fp8e5m2:
      if (s.granularity == Granularity::token || s.granularity == Granularity::block) return {};
      return "the epilogue computes scales per row (token) or per block of the last axis; " +
             s.str() + " needs groups across rows (quantize the fused result separately)";
    case QuantFormat::mxfp4:
    case QuantFormat::mxfp8e4m3:
    case QuantFormat::mxfp8e5m2:
    case QuantFormat::nvfp4:  // two passes: the global scale needs the whole tensor's absmax
      return {};
    case QuantFormat::gguf:
      return "GGUF blocks are not supported by the epilogue; quantize the fused result";
  }
  return "unknown format";
}

QuantizeDesc quantize_desc(const FusedDesc& d, const Shape& shape) {
  QuantizeDesc q;
  q.shape = shape;
  q.src = d.outputs.at(static_cast<size_t>(d.quantized_output)).dtype;
  q.src_strides = contiguous_strides(shape);
  q.scheme = d.scheme;
  q.device = d.device;
  q.check_finite = d.check_finite;
  return q;
}

TensorView quantize_src(const FusedDesc& d) {
  const FusedOperand& o = d.outputs.at(static_cast<size_t>(d.quantized_output));
  // Never read: only its dtype, shape and strides are checked (views need a non-null
  // pointer).
  alignas(64) static char placeholder[64];
  return TensorView(placeholder, o.dtype, o.shape, o.strides, d.device);
}

void warm_up() { start_nvrtc_warm_up(); }

void throw_non_finite(const FusedDesc& d, int64_t e, bool nan) {
  std::string idx;
  int64_t rest = e;
  std::vector<int64_t> at(static_cast<size_t>(d.shape.size()));
  for (int i = d.shape.size() - 1; i >= 0; --i) {
    at[static_cast<size_t>(i)] = d.shape[i] ? rest % d.shape[i] : 0;
    rest = d.shape[i] ? rest / d.shape[i] : 0;
  }
  for (size_t i = 0; i < at.size(); ++i) idx += (i ? ", " : "") + std::to_string(at[i]);
  throw_error(ErrorCode::invalid_argument,
              fmt::format("fused: quantize epilogue: the expression's value at [{}] (flat index "
                          "{}) is {}; quantization needs finite inputs (replace or mask "
                          "non-finite values first)",
                          idx, e, nan ? "NaN" : "Inf"));
}

}  // namespace fusion

FusedDesc FusedDesc::make(const std::vector<FusedOutput>& outputs) {
  if (outputs.empty()) throw_error(ErrorCode::invalid_argument, "fused: no outputs");
  FusedDesc d;
  std::shared_ptr<DescBlock> block = new_block();
  fusion::build_program(outputs, block->program);
  fusion::PlanState* state = &block->state;
  d.program = std::shared_ptr<const Program>(block, &block->program);
  d.state = std::shared_ptr<fusion::PlanState>(std::move(block), state);
  const Program& p = *d.program;
  if (p.quantized_output >= 0) {
    const QuantizedView& q = p.bound_quantized;
    if (const std::string why = fusion::quantize_epilogue_unsupported(q.scheme); !why.empty())
      throw_error(ErrorCode::unsupported,
                  "fused: quantize epilogue with " + q.scheme.str() + ": " + why);
    d.shape = q.shape;
    d.device = q.device();
    d.quantized_output = p.quantized_output;
    d.scheme = p.scheme;
    d.check_finite = p.check_finite;
  } else {
    d.shape = outputs[0].dst.shape();
    d.device = outputs[0].dst.device();
  }
  d.inputs.reserve(d.program->bound_inputs.size());
  for (const TensorView& v : d.program->bound_inputs) d.inputs.push_back(operand_of(v));
  d.outputs.reserve(outputs.size());
  for (size_t o = 0; o < outputs.size(); ++o)
    d.outputs.push_back(static_cast<int>(o) == p.quantized_output
                            ? FusedOperand{p.output_dtypes[o], d.shape, contiguous_strides(d.shape)}
                            : operand_of(outputs[o].dst));
  if (p.quantized_output >= 0)  // the parts against the scheme and shape, as quantize() checks
    QuantizeOp::check_args(fusion::quantize_desc(d, d.shape),
                           {fusion::quantize_src(d), p.bound_quantized});
  // Inputs follow the outputs onto their device; check it here too for a clear message.
  for (size_t i = 0; i < d.program->bound_inputs.size(); ++i)
    if (!(d.program->bound_inputs[i].device() == d.device))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: input {} is on {}, the outputs on {}", i,
                              d.program->bound_inputs[i].device().str(), d.device.str()));
  for (size_t o = 0; o < outputs.size(); ++o)
    if (!outputs[o].quantized && !(outputs[o].dst.device() == d.device))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: output {} is on {}, output 0 on {}", o,
                              outputs[o].dst.device().str(), d.device.str()));
  return d;
}

FusedArgs FusedDesc::bound_args() const {
  if (!program) return {};
  return {program->bound_inputs, program->bound_outputs, program->bound_quantized};
}

int64_t FusedDesc::numel() const { return lowbit::numel(shape); }

void FusedOp::validate(const Desc& d) {
  if (!d.program || !d.state)
    throw_error(ErrorCode::invalid_argument, "fused: descriptor not made by FusedDesc::make");
  const Program& p = *d.program;
  if (d.inputs.size() != p.input_dtypes.size() || d.outputs.size() != p.output_dtypes.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fused: descriptor has {} inputs / {} outputs, its program {} / {}",
                            d.inputs.size(), d.outputs.size(), p.input_dtypes.size(),
                            p.output_dtypes.size()));
  check_device(d.device);
  lowbit::numel(d.shape);
  for (size_t i = 0; i < d.inputs.size(); ++i) {
    const FusedOperand& in = d.inputs[i];
    if (in.dtype != p.input_dtypes[i])
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: input {} dtype {} != its program's {}", i,
                              dtype_name(in.dtype), dtype_name(p.input_dtypes[i])));
    if (!broadcastable(in.shape, d.shape))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: input {} of shape {} does not broadcast to the output "
                              "shape {}",
                              i, in.shape.str(), d.shape.str()));
    if (in.strides.size() != in.shape.size())
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: input {} strides {} do not match its shape {}", i,
                              in.strides.str(), in.shape.str()));
  }
  for (size_t o = 0; o < d.outputs.size(); ++o) {
    const FusedOperand& out = d.outputs[o];
    if (out.dtype != p.output_dtypes[o])
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: output {} dtype {} != its program's {}", o,
                              dtype_name(out.dtype), dtype_name(p.output_dtypes[o])));
    if (!(out.shape == d.shape))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: output {} has shape {}, output 0 {} (outputs share one "
                              "shape)",
                              o, out.shape.str(), d.shape.str()));
    if (out.strides.size() != out.shape.size())
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: output {} strides {} do not match its shape {}", o,
                              out.strides.str(), out.shape.str()));
    for (int i = 0; i < out.shape.size(); ++i)
      if (out.shape[i] > 1 && out.strides[i] == 0)
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("fused: output {} has stride 0 on dim {} of extent {}: it would "
                                "write one element many times",
                                o, i, out.shape[i]));
  }
}

void FusedOp::check_args(const Desc& d, const Args& a) {
  if (a.inputs.size() != d.inputs.size() || a.outputs.size() != d.outputs.size())
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fused: {} inputs / {} outputs given, the plan has {} / {}",
                            a.inputs.size(), a.outputs.size(), d.inputs.size(), d.outputs.size()));
  auto check = [&](const char* what, size_t i, const TensorView& v, const FusedOperand& want) {
    if (v.dtype() != want.dtype)
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: {} {} dtype {} != planned {}", what, i, dtype_name(v.dtype()),
                              dtype_name(want.dtype)));
    if (!(v.shape() == want.shape))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: {} {} shape {} != planned {}", what, i, v.shape().str(),
                              want.shape.str()));
    if (!(v.strides() == want.strides))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: {} {} strides {} != planned {}", what, i, v.strides().str(),
                              want.strides.str()));
    if (!(v.device() == d.device))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fused: {} {} is on {}, the plan runs on {}", what, i,
                              v.device().str(), d.device.str()));
    if (v.numel() > 0 && !v.data())
      throw_error(ErrorCode::invalid_argument, fmt::format("fused: {} {} has no data", what, i));
  };
  for (size_t i = 0; i < a.inputs.size(); ++i) check("input", i, a.inputs[i], d.inputs[i]);
  for (size_t o = 0; o < a.outputs.size(); ++o)
    if (static_cast<int>(o) != d.quantized_output) check("output", o, a.outputs[o], d.outputs[o]);
  const auto quantized = [&](size_t o) { return static_cast<int>(o) == d.quantized_output; };
  if (d.quantized_output >= 0) {
    const QuantizedView& q = a.quantized;
    QuantizeOp::check_args(fusion::quantize_desc(d, d.shape),
                           {fusion::quantize_src(d), q, a.report});
    for (const TensorView* part : {&q.codes, &q.scale, &q.zero, &q.global_scale}) {
      if (!part->data()) continue;
      for (size_t i = 0; i < a.inputs.size(); ++i)
        if (overlap(*part, a.inputs[i]))
          throw_error(ErrorCode::invalid_argument,
                      fmt::format("fused: the quantized output overlaps input {} in memory", i));
      for (size_t o = 0; o < a.outputs.size(); ++o)
        if (!quantized(o) && overlap(*part, a.outputs[o]))
          throw_error(ErrorCode::invalid_argument,
                      fmt::format("fused: the quantized output overlaps output {} in memory", o));
    }
  }
  // Outputs may not overlap each other. An output may be an input exactly (same memory,
  // dtype, shape and strides: every element reads its input before its output is
  // written), but not overlap one otherwise.
  for (size_t o = 0; o < a.outputs.size(); ++o) {
    if (quantized(o)) continue;
    for (size_t q = o + 1; q < a.outputs.size(); ++q)
      if (!quantized(q) && overlap(a.outputs[o], a.outputs[q]))
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("fused: outputs {} and {} overlap in memory", o, q));
    for (size_t i = 0; i < a.inputs.size(); ++i) {
      const TensorView& in = a.inputs[i];
      const TensorView& out = a.outputs[o];
      if (!overlap(in, out)) continue;
      const bool same = in.data() == out.data() && in.dtype() == out.dtype() &&
                        in.shape() == out.shape() && in.strides() == out.strides();
      if (!same)
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("fused: output {} overlaps input {} in memory (only an exact "
                                "alias, same data, dtype, shape and strides, may be written in "
                                "place)",
                                o, i));
    }
  }
}

std::string FusedOp::describe(const Desc& d) {
  std::string ins, outs;
  for (const FusedOperand& in : d.inputs)
    ins += (ins.empty() ? "" : ", ") + std::string(dtype_name(in.dtype)) + in.shape.str();
  for (const FusedOperand& out : d.outputs)
    outs += (outs.empty() ? "" : ", ") + std::string(dtype_name(out.dtype));
  return fmt::format("({}) -> ({}) {} on {}: {}", ins, outs, d.shape.str(), d.device.str(),
                     d.program ? d.program->canonical() : std::string("?"));
}

KernelList<FusedOp> FusedOp::kernels() {
  static const Kernel<FusedOp>* const list[] = {
#if LOWBIT_HAS_CUDA
    &fused_cuda_kernel(),
#endif
    &fused_cpu_jit_kernel(),
    &fused_cpu_kernel(),
  };
  return list;
}

void fuse(const std::vector<FusedOutput>& outputs, const Stream* stream, bool fast_math) {
  FusedDesc desc = FusedDesc::make(outputs);
  desc.fast_math = fast_math;
  run_plan(FusedPlan::select(desc), desc.device, stream, desc.bound_args());
}

}  // namespace lowbit
