// Expressions: nodes with their promoted types, scalar folding, the Program (evaluation
// order with every conversion explicit), its canonical key, and the collapsed Layout of a
// call's operands.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <unordered_map>

#include "jit/jit.hpp"
#include "jit/jit_math_host.hpp"
#include "jit/node_alloc.hpp"

namespace lowbit::fusion {

std::string_view op_name(Op op) {
  switch (op) {
    case Op::input:
      return "input";
    case Op::constant:
      return "const";
    case Op::add:
      return "add";
    case Op::sub:
      return "sub";
    case Op::mul:
      return "mul";
    case Op::div:
      return "div";
    case Op::neg:
      return "neg";
    case Op::abs:
      return "abs";
    case Op::minimum:
      return "minimum";
    case Op::maximum:
      return "maximum";
    case Op::clamp:
      return "clamp";
    case Op::where:
      return "where";
    case Op::lt:
      return "lt";
    case Op::le:
      return "le";
    case Op::gt:
      return "gt";
    case Op::ge:
      return "ge";
    case Op::eq:
      return "eq";
    case Op::ne:
      return "ne";
    case Op::exp:
      return "exp";
    case Op::log:
      return "log";
    case Op::sqrt:
      return "sqrt";
    case Op::rsqrt:
      return "rsqrt";
    case Op::tanh:
      return "tanh";
    case Op::sigmoid:
      return "sigmoid";
    case Op::relu:
      return "relu";
    case Op::leaky_relu:
      return "leaky_relu";
    case Op::gelu:
      return "gelu";
    case Op::gelu_tanh:
      return "gelu_tanh";
    case Op::silu:
      return "silu";
    case Op::softplus:
      return "softplus";
    case Op::pow:
      return "pow";
    case Op::cast:
      return "cast";
  }
  return "?";
}

namespace {

using NodePtr = std::shared_ptr<const Node>;

NodePtr make_constant(double value, Type type) {
  auto n = std::allocate_shared<Node>(NodeAllocator<Node>());
  n->op = Op::constant;
  n->type = type;
  n->value = value;
  return n;
}

/// The value of `op` on scalar operands, computed on the host in f64 (as Python would).
double fold(Op op, const double* v, double param) {
  using namespace jit_math;
  switch (op) {
    case Op::add:
      return v[0] + v[1];
    case Op::sub:
      return v[0] - v[1];
    case Op::mul:
      return v[0] * v[1];
    case Op::div:
      return v[0] / v[1];
    case Op::neg:
      return -v[0];
    case Op::abs:
      return lb_abs(v[0]);
    case Op::minimum:
      return lb_min(v[0], v[1]);
    case Op::maximum:
      return lb_max(v[0], v[1]);
    case Op::clamp:
      return lb_clamp(v[0], v[1], v[2]);
    case Op::where:
      return lb_where(v[0], v[1], v[2]);
    case Op::lt:
      return lb_lt(v[0], v[1]);
    case Op::le:
      return lb_le(v[0], v[1]);
    case Op::gt:
      return lb_gt(v[0], v[1]);
    case Op::ge:
      return lb_ge(v[0], v[1]);
    case Op::eq:
      return lb_eq(v[0], v[1]);
    case Op::ne:
      return lb_ne(v[0], v[1]);
    case Op::exp:
      return lb_exp(v[0]);
    case Op::log:
      return lb_log(v[0]);
    case Op::sqrt:
      return lb_sqrt(v[0]);
    case Op::rsqrt:
      return lb_rsqrt(v[0]);
    case Op::tanh:
      return lb_tanh(v[0]);
    case Op::sigmoid:
      return lb_sigmoid(v[0]);
    case Op::relu:
      return lb_relu(v[0]);
    case Op::leaky_relu:
      return lb_leaky_relu(v[0], param);
    case Op::gelu:
      return lb_gelu_erf(v[0]);
    case Op::gelu_tanh:
      return lb_gelu_tanh(v[0]);
    case Op::silu:
      return lb_silu(v[0]);
    case Op::softplus:
      return lb_softplus(v[0]);
    case Op::pow:
      return lb_pow(v[0], param);
    default:
      return 0.0;
  }
}

/// The value of scalar `v` as a value of `dtype` (cast semantics).
double round_to(double v, Dtype dtype) {
  if (dtype == Dtype::f64) return v;
  if (is_int(dtype)) return jit_math::lb_to_int(v, int_min(dtype), int_max(dtype));
  const float f = f64_to_f32(v);
  switch (dtype) {
    case Dtype::f32:
      return f;
    case Dtype::f16:
      return f16_to_f32(f32_to_f16(f));
    case Dtype::bf16:
      return bf16_to_f32(f32_to_bf16(f));
    case Dtype::f8e4m3fn:
      return f8e4m3fn_to_f32(f32_to_f8e4m3fn(f));
    case Dtype::f8e5m2:
      return f8e5m2_to_f32(f32_to_f8e5m2(f));
    case Dtype::f4e2m1:
      return f4e2m1_to_f32(f32_to_f4e2m1(f));
    case Dtype::e8m0:
      return e8m0_to_f32(f32_to_e8m0(f));
    default:
      return f;
  }
}

void check_operand(const Expr& e, const char* what) {
  if (!e.node())
    throw_error(ErrorCode::invalid_argument, fmt::format("fusion: {} is an empty Expr", what));
}

/// The node of `op` on `args` (n of them, already checked non-empty by the callers) with
/// result type `type`; scalar operands fold.
// Runs for every op of every expression a caller builds (per call, in a loop that makes a
// new descriptor each time): one allocation, the node (its operands are held in it). The
// operands come by pointer: an initializer_list of Exprs copied each one (two atomic
// reference-count updates per operand).
Expr make(Op op, Type type, std::initializer_list<const Expr*> args, double param = 0) {
  bool all_scalar = true;
  for (const Expr* a : args) all_scalar = all_scalar && a->is_scalar();
  if (all_scalar && op != Op::cast) {
    double v[3] = {};
    size_t i = 0;
    for (const Expr* a : args) v[i++] = a->node()->value;
    return Expr(make_constant(fold(op, v, param), type));
  }
  auto n = std::allocate_shared<Node>(NodeAllocator<Node>());
  n->op = op;
  n->type = type;
  n->value = param;
  for (const Expr* a : args) n->args.push_back(a->node());
  return Expr(std::move(n));
}

Expr binary(Op op, const Expr& a, const Expr& b) {
  check_operand(a, "lhs");
  check_operand(b, "rhs");
  Type t = promote(a.node()->type, b.node()->type);
  if (op == Op::div) t = to_float(t);
  return make(op, t, {&a, &b});
}

Expr compare(Op op, const Expr& a, const Expr& b) {
  check_operand(a, "lhs");
  check_operand(b, "rhs");
  const bool weak = a.is_scalar() && b.is_scalar();
  return make(op, Type{Dtype::u8, true, weak}, {&a, &b});
}

Expr float_unary(Op op, const Expr& x, double param = 0) {
  check_operand(x, op_name(op).data());
  return make(op, to_float(x.node()->type), {&x}, param);
}

Expr same_unary(Op op, const Expr& x, double param = 0) {
  check_operand(x, op_name(op).data());
  Type t = x.node()->type;
  if (t.boolean) t = {Dtype::u8, false, t.weak};
  return make(op, t, {&x}, param);
}

}  // namespace

// ---- Expr ----------------------------------------------------------------------------------

Expr::Expr(double value) : node_(make_constant(value, Type{Dtype::f64, false, true})) {}
Expr::Expr(int value) : node_(make_constant(value, Type{Dtype::i32, false, true})) {}
Expr::Expr(std::shared_ptr<const Node> node) : node_(std::move(node)) {}

Op Expr::op() const { return node_ ? node_->op : Op::constant; }
Dtype Expr::dtype() const {
  if (!node_) return Dtype::f32;
  if (node_->type.weak && !node_->type.boolean)
    return is_float(node_->type.dtype) ? Dtype::f32 : Dtype::i32;
  return node_->type.dtype;
}
bool Expr::is_bool() const { return node_ && node_->type.boolean; }
bool Expr::is_scalar() const { return node_ && node_->op == Op::constant; }

std::string Expr::str() const {
  if (!node_) return "<empty>";
  std::unordered_map<const Node*, int> inputs;
  auto rec = [&](auto&& self, const Node& n) -> std::string {
    if (n.op == Op::input) {
      auto [it, fresh] = inputs.try_emplace(&n, static_cast<int>(inputs.size()));
      return fmt::format("in{}:{}", it->second, dtype_name(n.view->dtype()));
    }
    if (n.op == Op::constant) return fmt::format("{}", n.value);
    std::string s = std::string(op_name(n.op)) + "(";
    for (size_t i = 0; i < n.args.size(); ++i) s += (i ? ", " : "") + self(self, *n.args[i]);
    if (n.op == Op::leaky_relu || n.op == Op::pow) s += fmt::format(", {}", n.value);
    s += ")";
    if (n.type.boolean) return s + ":bool";
    return s + ":" + std::string(dtype_name(n.type.dtype));
  };
  return rec(rec, *node_);
}

Expr input(const TensorView& view) {
  if (!supported_dtype(view.dtype()))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fusion: input dtype {} is not supported (float dtypes and i8, u8, "
                            "i16, i32, u32 are)",
                            dtype_name(view.dtype())));
  // Not from NodeAllocator: its free list holds blocks of one size, the ops' nodes.
  auto n = std::make_shared<InputNode>();
  n->op = Op::input;
  n->type = Type{view.dtype(), false, false};
  n->tensor = view;
  n->view = &n->tensor;
  return Expr(std::move(n));
}

Expr add(const Expr& a, const Expr& b) { return binary(Op::add, a, b); }
Expr sub(const Expr& a, const Expr& b) { return binary(Op::sub, a, b); }
Expr mul(const Expr& a, const Expr& b) { return binary(Op::mul, a, b); }
Expr div(const Expr& a, const Expr& b) { return binary(Op::div, a, b); }
Expr minimum(const Expr& a, const Expr& b) { return binary(Op::minimum, a, b); }
Expr maximum(const Expr& a, const Expr& b) { return binary(Op::maximum, a, b); }
Expr neg(const Expr& x) { return same_unary(Op::neg, x); }
Expr abs(const Expr& x) { return same_unary(Op::abs, x); }
Expr relu(const Expr& x) { return same_unary(Op::relu, x); }

Expr clamp(const Expr& x, const Expr& lo, const Expr& hi) {
  check_operand(x, "clamp");
  check_operand(lo, "clamp lo");
  check_operand(hi, "clamp hi");
  const Type t = promote(promote(x.node()->type, lo.node()->type), hi.node()->type);
  return make(Op::clamp, t, {&x, &lo, &hi});
}

Expr where(const Expr& cond, const Expr& a, const Expr& b) {
  check_operand(cond, "where cond");
  check_operand(a, "where a");
  check_operand(b, "where b");
  return make(Op::where, promote(a.node()->type, b.node()->type), {&cond, &a, &b});
}

Expr lt(const Expr& a, const Expr& b) { return compare(Op::lt, a, b); }
Expr le(const Expr& a, const Expr& b) { return compare(Op::le, a, b); }
Expr gt(const Expr& a, const Expr& b) { return compare(Op::gt, a, b); }
Expr ge(const Expr& a, const Expr& b) { return compare(Op::ge, a, b); }
Expr eq(const Expr& a, const Expr& b) { return compare(Op::eq, a, b); }
Expr ne(const Expr& a, const Expr& b) { return compare(Op::ne, a, b); }

Expr exp(const Expr& x) { return float_unary(Op::exp, x); }
Expr log(const Expr& x) { return float_unary(Op::log, x); }
Expr sqrt(const Expr& x) { return float_unary(Op::sqrt, x); }
Expr rsqrt(const Expr& x) { return float_unary(Op::rsqrt, x); }
Expr tanh(const Expr& x) { return float_unary(Op::tanh, x); }
Expr sigmoid(const Expr& x) { return float_unary(Op::sigmoid, x); }
Expr silu(const Expr& x) { return float_unary(Op::silu, x); }
Expr softplus(const Expr& x) { return float_unary(Op::softplus, x); }

Expr leaky_relu(const Expr& x, double slope) {
  if (!std::isfinite(slope))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fusion: leaky_relu slope {} is not finite", slope));
  return float_unary(Op::leaky_relu, x, slope);
}

Expr gelu(const Expr& x, std::string_view approximate) {
  if (approximate == "none") return float_unary(Op::gelu, x);
  if (approximate == "tanh") return float_unary(Op::gelu_tanh, x);
  throw_error(ErrorCode::invalid_argument,
              fmt::format("fusion: gelu approximate '{}' is not 'none' or 'tanh'", approximate));
}

Expr pow(const Expr& x, double exponent) {
  check_operand(x, "pow");
  if (!std::isfinite(exponent))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fusion: pow exponent {} is not finite", exponent));
  const Type t = x.node()->type;
  const bool keep =
      (!t.boolean && is_float(t.dtype)) || (exponent == std::trunc(exponent) && exponent >= 0);
  Type r = keep ? t : to_float(t);
  if (r.boolean) r = {Dtype::u8, false, r.weak};
  return make(Op::pow, r, {&x}, exponent);
}

Expr scale(const Expr& x, double factor) { return mul(x, Expr(factor)); }

Expr cast(const Expr& x, Dtype dtype) {
  check_operand(x, "cast");
  if (!supported_dtype(dtype))
    throw_error(ErrorCode::invalid_argument,
                fmt::format("fusion: cannot cast to {}", dtype_name(dtype)));
  if (x.is_scalar())
    return Expr(make_constant(round_to(x.node()->value, dtype), Type{dtype, false, false}));
  return make(Op::cast, Type{dtype, false, false}, {&x});
}

// ---- Program ------------------------------------------------------------------------------

namespace {

Num num_of_dtype(Dtype d) { return num_of(Type{d, false, false}); }

bool transcendental(Op op) {
  switch (op) {
    case Op::exp:
    case Op::log:
    case Op::tanh:
    case Op::sigmoid:
    case Op::gelu:
    case Op::gelu_tanh:
    case Op::silu:
    case Op::softplus:
    case Op::pow:
      return true;
    default:
      return false;
  }
}

class Builder {
 public:
  explicit Builder(Program& p) : p_(p) {
    // Sizes that hold typical expressions in one allocation per list (building a
    // descriptor is on the per-call path of a new descriptor).
    p_.code.reserve(32);
    p_.constants.reserve(8);
    p_.bound_inputs.reserve(4);
    p_.input_dtypes.reserve(4);
  }

  // A flat list in the builder itself, searched linearly while expressions are small (tens
  // of nodes: no allocation), a hash map past kFlat entries.
  int value(const NodePtr& node) {
    if (memo_n_ <= kFlat) {
      for (size_t i = 0; i < memo_n_; ++i)
        if (memo_[i].first == node.get()) return memo_[i].second;
    } else if (auto it = big_memo_.find(node.get()); it != big_memo_.end()) {
      return it->second;
    }
    const int r = emit(*node);
    if (memo_n_ < kFlat) {
      memo_[memo_n_++] = {node.get(), r};
    } else {
      if (memo_n_ == kFlat)
        for (size_t i = 0; i < kFlat; ++i) big_memo_.emplace(memo_[i].first, memo_[i].second);
      memo_n_ = kFlat + 1;
      big_memo_.emplace(node.get(), r);
    }
    return r;
  }

  /// Step r converted to `num` (a cast step, made once per step and Num).
  int to_num(int r, Num num) {
    if (p_.code[r].num == num) return r;
    const uint64_t key = static_cast<uint64_t>(r) * 2 + (num == Num::f64 ? 1 : 0);
    for (size_t i = 0; i < conv_n_; ++i)
      if (conv_[i].first == key) return conv_[i].second;
    for (const auto& [k, s] : big_conv_)
      if (k == key) return s;
    Instr in;
    in.op = Op::cast;
    in.num = num;
    in.arg_num = p_.code[r].num;
    in.dtype = num == Num::f64 ? Dtype::f64 : Dtype::f32;
    in.a = r;
    const int s = push(in);
    if (conv_n_ < conv_.size())
      conv_[conv_n_++] = {key, s};
    else
      big_conv_.emplace_back(key, s);
    return s;
  }

  int push(const Instr& in) {
    p_.code.push_back(in);
    return static_cast<int>(p_.code.size()) - 1;
  }

  int constant(double v) {
    Instr in;
    in.op = Op::constant;
    in.num = Num::f64;
    in.arg_num = Num::f64;
    in.dtype = Dtype::f64;
    in.slot = static_cast<int>(p_.constants.size());
    p_.constants.push_back(v);
    return push(in);
  }

 private:
  int emit(const Node& n) {
    const Num num = num_of(n.type);
    Instr in;
    in.op = n.op;
    in.num = num;
    in.arg_num = num;
    in.dtype = n.type.dtype;
    switch (n.op) {
      case Op::input: {
        in.slot = static_cast<int>(p_.bound_inputs.size());
        in.num = num_of_dtype(n.view->dtype());
        in.arg_num = in.num;
        in.dtype = n.view->dtype();
        p_.bound_inputs.push_back(*n.view);
        p_.input_dtypes.push_back(n.view->dtype());
        return push(in);
      }
      case Op::constant:
        return constant(n.value);
      case Op::lt:
      case Op::le:
      case Op::gt:
      case Op::ge:
      case Op::eq:
      case Op::ne: {
        const Num common = num_of(promote(n.args[0]->type, n.args[1]->type));
        in.num = Num::f32;
        in.arg_num = common;
        in.a = to_num(value(n.args[0]), common);
        in.b = to_num(value(n.args[1]), common);
        return push(in);
      }
      case Op::where: {
        in.a = value(n.args[0]);
        in.arg_num = p_.code[in.a].num;
        in.b = to_num(value(n.args[1]), num);
        in.c = to_num(value(n.args[2]), num);
        return push(in);
      }
      case Op::cast: {
        in.a = value(n.args[0]);
        in.arg_num = p_.code[in.a].num;
        return push(in);
      }
      case Op::leaky_relu: {  // the slope is an operand: a constant step
        in.a = to_num(value(n.args[0]), num);
        in.b = to_num(constant(n.value), num);
        return push(in);
      }
      case Op::pow:
        return emit_pow(n, num);
      default: {
        int* operands[3] = {&in.a, &in.b, &in.c};
        for (size_t i = 0; i < n.args.size() && i < 3; ++i)
          *operands[i] = to_num(value(n.args[i]), num);
        if (num == Num::f64 && transcendental(n.op)) p_.f64_transcendental = true;
        return push(in);
      }
    }
  }

  /// pow by small integers and +-1/2 become multiplications, divisions and square roots
  /// (what PyTorch's kernels do for these exponents); other exponents call lb_pow.
  int emit_pow(const Node& n, Num num) {
    const double p = n.value;
    const int x = to_num(value(n.args[0]), num);
    auto op2 = [&](Op op, int a, int b) {
      Instr in;
      in.op = op;
      in.num = num;
      in.arg_num = num;
      in.dtype = n.type.dtype;
      in.a = a;
      in.b = b;
      return push(in);
    };
    auto one = [&] { return to_num(constant(1.0), num); };
    if (p == 0) return one();
    if (p == 1) return x;
    if (p == 2) return op2(Op::mul, x, x);
    if (p == 3) return op2(Op::mul, op2(Op::mul, x, x), x);
    if (p == -1) return op2(Op::div, one(), x);
    if (p == -2) return op2(Op::div, one(), op2(Op::mul, x, x));
    if (p == 0.5) return op2(Op::sqrt, x, -1);
    if (p == -0.5) return op2(Op::rsqrt, x, -1);
    Instr in;
    in.op = Op::pow;
    in.num = num;
    in.arg_num = num;
    in.dtype = n.type.dtype;
    in.a = x;
    in.param = p;
    if (num == Num::f64) p_.f64_transcendental = true;
    return push(in);
  }

  Program& p_;
  static constexpr size_t kFlat = 64;
  // Trivial entries: the arrays are left uninitialised (std::pair's constructor zeroed
  // 1.5 KB per program built).
  template <class K>
  struct Entry {
    K first;
    int second;
  };
  std::array<Entry<const Node*>, kFlat> memo_;
  size_t memo_n_ = 0;  // kFlat + 1 once big_memo_ holds every entry
  std::unordered_map<const Node*, int> big_memo_;
  std::array<Entry<uint64_t>, 32> conv_;
  size_t conv_n_ = 0;
  std::vector<std::pair<uint64_t, int>> big_conv_;  // past conv_'s 32
};

char num_char(Num n) { return n == Num::f64 ? 'd' : 'f'; }

}  // namespace

std::shared_ptr<const Program> build_program(const std::vector<FusedOutput>& outputs) {
  auto p = std::make_shared<Program>();
  build_program(outputs, *p);
  return p;
}

std::shared_ptr<const Program> structure_copy(const Program& src) {
  auto p = std::make_shared<Program>();
  p->code = src.code;
  p->constants = src.constants;
  p->outputs = src.outputs;
  p->input_dtypes = src.input_dtypes;
  p->output_dtypes = src.output_dtypes;
  p->structure_hash = src.structure_hash;
  p->f64_transcendental = src.f64_transcendental;
  p->quantized_output = src.quantized_output;
  p->scheme = src.scheme;
  p->check_finite = src.check_finite;
  return p;
}

void build_program(const std::vector<FusedOutput>& outputs, Program& program) {
  Program* p = &program;
  Builder b(*p);
  for (const FusedOutput& o : outputs) {
    if (!o.value.node())
      throw_error(ErrorCode::invalid_argument, "fusion: an output's value is an empty Expr");
    Dtype dt = o.dst.dtype();
    if (o.quantized) {
      if (p->quantized_output >= 0)
        throw_error(ErrorCode::unsupported,
                    "fusion: a call has at most one quantized output (quantize epilogue); "
                    "quantize the others in another call");
      // The value quantize() would read from the unfused result: the expression stored in
      // its own dtype (f64 rounds to f32 first, as quantize does).
      const Type t = o.value.node()->type;
      dt = t.dtype == Dtype::f64 ? Dtype::f32 : t.dtype;
      if (t.boolean || (dt != Dtype::f32 && dt != Dtype::f16 && dt != Dtype::bf16))
        throw_error(ErrorCode::invalid_argument,
                    fmt::format("fusion: a quantized output needs an f32, f16, bf16 or f64 "
                                "expression (quantize's source dtypes); this one is {} (cast it)",
                                t.boolean ? "bool" : dtype_name(t.dtype)));
      p->quantized_output = static_cast<int>(p->outputs.size());
      p->scheme = o.qdst.scheme;
      p->check_finite = o.check_finite;
      p->bound_quantized = o.qdst;
    }
    if (!supported_dtype(dt))
      throw_error(ErrorCode::invalid_argument,
                  fmt::format("fusion: output dtype {} is not supported", dtype_name(dt)));
    const int r = b.value(o.value.node());
    p->outputs.push_back(b.to_num(r, num_of_dtype(dt)));
    p->output_dtypes.push_back(dt);
    p->bound_outputs.push_back(o.quantized ? TensorView() : o.dst);
  }
  // Beside a quantized output the other outputs are stored by the epilogue's row kernels,
  // which write whole elements (no packed pairs).
  if (p->quantized_output >= 0)
    for (size_t o = 0; o < p->outputs.size(); ++o)
      if (static_cast<int>(o) != p->quantized_output && is_packed(p->output_dtypes[o]))
        throw_error(ErrorCode::unsupported,
                    fmt::format("fusion: output {} is {} (packed 4-bit); beside a quantized "
                                "output the other outputs need whole-byte dtypes",
                                o, dtype_name(p->output_dtypes[o])));
  // The structure's hash, for the launch path's table of resolved kernels (the canonical
  // text is made only when a kernel is new).
  size_t h = p->code.size();
  auto mix = [&h](uint64_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
  for (const Instr& in : p->code) {
    mix(static_cast<uint64_t>(in.op) | static_cast<uint64_t>(in.num) << 8 |
        static_cast<uint64_t>(in.arg_num) << 16 | static_cast<uint64_t>(in.dtype) << 24 |
        static_cast<uint64_t>(static_cast<uint32_t>(in.slot)) << 32);
    mix(static_cast<uint64_t>(static_cast<uint32_t>(in.a)) |
        static_cast<uint64_t>(static_cast<uint32_t>(in.b)) << 21 |
        static_cast<uint64_t>(static_cast<uint32_t>(in.c)) << 42);
    if (in.op == Op::pow) mix(std::bit_cast<uint64_t>(in.param));
  }
  for (size_t o = 0; o < p->outputs.size(); ++o)
    mix(static_cast<uint64_t>(p->outputs[o]) << 8 | static_cast<uint64_t>(p->output_dtypes[o]));
  mix(static_cast<uint64_t>(p->quantized_output + 1));
  p->structure_hash = h;
}

const std::string& Program::canonical() const {
  if (canonical_ready_.load(std::memory_order_acquire)) return canonical_;
  std::lock_guard<std::mutex> lock(canonical_mutex_);
  if (canonical_ready_.load(std::memory_order_relaxed)) return canonical_;
  const Program* p = this;
  std::string s;
  s.reserve(24 * p->code.size() + 16 * p->outputs.size());
  auto num = [&](int v) {
    char buf[16];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    s.append(buf, r.ptr);
  };
  for (const Instr& in : p->code) {
    s += op_name(in.op);
    s += num_char(in.num);
    s += num_char(in.arg_num);
    if (in.op == Op::input || in.op == Op::cast) {
      s += ':';
      s += dtype_name(in.dtype);
    }
    if (in.op == Op::input) {
      s += '#';
      num(in.slot);
    }
    if (in.op == Op::constant) {
      s += '@';
      num(in.slot);
    }
    if (in.op == Op::pow) s += fmt::format("^{:a}", in.param);
    const int ops[3] = {in.a, in.b, in.c};
    for (int k = 0; k < 3 && ops[k] >= 0; ++k) {
      s += k ? ',' : '(';
      num(ops[k]);
    }
    if (in.a >= 0) s += ')';
    s += ';';
  }
  for (size_t o = 0; o < p->outputs.size(); ++o) {
    s += "out";
    num(static_cast<int>(o));
    s += '=';
    num(p->outputs[o]);
    s += ':';
    s += dtype_name(p->output_dtypes[o]);
    s += ';';
  }
  if (p->quantized_output >= 0) {
    s += "quantize:";
    s += p->scheme.str();
    s += p->check_finite ? ":check;" : ":nocheck;";
  }
  canonical_ = std::move(s);
  canonical_ready_.store(true, std::memory_order_release);
  return canonical_;
}

bool Program::same_structure(const Program& o) const {
  if (code.size() != o.code.size() || outputs != o.outputs || output_dtypes != o.output_dtypes ||
      input_dtypes != o.input_dtypes || quantized_output != o.quantized_output)
    return false;
  for (size_t i = 0; i < code.size(); ++i) {
    const Instr& x = code[i];
    const Instr& y = o.code[i];
    if (x.op != y.op || x.num != y.num || x.arg_num != y.arg_num || x.dtype != y.dtype ||
        x.a != y.a || x.b != y.b || x.c != y.c || x.slot != y.slot ||
        std::bit_cast<uint64_t>(x.param) != std::bit_cast<uint64_t>(y.param))
      return false;
  }
  return quantized_output < 0 || (scheme == o.scheme && check_finite == o.check_finite);
}

// ---- Layout ---------------------------------------------------------------------------------

std::string Variant::key() const {
  std::string s = fmt::format("{}{}", vec ? "vec" : "strided", idx32 ? "32" : "64");
  if (!vec || rows || cols) s += fmt::format("nd{}", nd);
  if (rows) s += fmt::format("rows{:x}", rows);
  if (cols) s += fmt::format("cols{:x}", cols);
  if (pair) s += "pair";
  if (quant)
    s += qstats       ? "qstats"
         : qlane      ? "quantl"
         : qrecompute ? "quantc"
         : qreg > 0   ? fmt::format("quantr{}", qreg)
         : qstore     ? "quantv"
                      : "quant";
  if (fast) s += "fast";
  s += ":";
  for (Layout::Class c : cls)
    s += c == Layout::Class::full ? 'c' : c == Layout::Class::scalar ? 's' : 'x';
  return s;
}

Layout make_layout(const FusedDesc& d) {
  Layout L;
  make_layout(d, L);
  return L;
}

void make_layout(const FusedDesc& d, Layout& L) {
  {  // a fresh layout, keeping the lists' memory (a recycled descriptor's: fused_op.cpp)
    auto strides = std::move(L.strides);
    auto cls = std::move(L.cls);
    strides.clear();
    cls.clear();
    L = Layout();
    L.strides = std::move(strides);
    L.cls = std::move(cls);
  }
  const int nd0 = d.shape.size();
  const size_t nops = d.inputs.size() + d.outputs.size();
  // Per operand strides over the output's dims (broadcast dims: 0); on the stack for up
  // to 8 operands (this runs for every new descriptor's first run).
  std::array<std::array<int64_t, kMaxDims>, 8> st_small;
  std::vector<std::array<int64_t, kMaxDims>> st_big(nops > st_small.size() ? nops : 0);
  std::array<int64_t, kMaxDims>* st = nops > st_small.size() ? st_big.data() : st_small.data();
  for (size_t k = 0; k < nops; ++k) {
    const bool is_in = k < d.inputs.size();
    const FusedOperand& op = is_in ? d.inputs[k] : d.outputs[k - d.inputs.size()];
    st[k].fill(0);
    const int off = nd0 - op.shape.size();
    for (int i = 0; i < op.shape.size(); ++i) st[k][off + i] = op.shape[i] == 1 ? 0 : op.strides[i];
    L.packed = L.packed || is_packed(op.dtype);
    if (!is_in && is_packed(op.dtype)) L.packed_out = true;
  }
  L.strides.assign(nops, {});
  L.numel = d.numel();
  // Collapse: skip extent-1 dims, merge a dim into the previous one when it nests in
  // every operand.
  for (int i = 0; i < nd0; ++i) {
    if (d.shape[i] == 1) continue;
    if (L.nd > 0) {
      const int k = L.nd - 1;
      bool nest = true;
      for (size_t o = 0; o < nops && nest; ++o) nest = L.strides[o][k] == st[o][i] * d.shape[i];
      if (nest) {
        L.extent[k] *= d.shape[i];
        for (size_t o = 0; o < nops; ++o) L.strides[o][k] = st[o][i];
        continue;
      }
    }
    L.extent[L.nd] = d.shape[i];
    for (size_t o = 0; o < nops; ++o) L.strides[o][L.nd] = st[o][i];
    ++L.nd;
  }
  if (L.nd == 0) {  // one element (or none)
    L.extent[0] = L.numel;
    for (size_t o = 0; o < nops; ++o) L.strides[o][0] = 0;
    L.nd = 1;
  }
  L.cls.resize(nops);
  constexpr int64_t kLimit = int64_t{1} << 31;
  L.idx32 = L.numel < kLimit;
  L.vec_ok = !L.packed;
  for (size_t o = 0; o < nops; ++o) {
    bool zero = true, full = true;
    int64_t expect = 1, last = 0;
    for (int k = L.nd - 1; k >= 0; --k) {
      zero = zero && L.strides[o][k] == 0;
      full = full && L.strides[o][k] == expect;
      expect *= L.extent[k];
      last += (L.extent[k] - 1) * L.strides[o][k];
    }
    L.cls[o] = zero ? Layout::Class::scalar : full ? Layout::Class::full : Layout::Class::strided;
    if (L.numel == 1) L.cls[o] = Layout::Class::scalar;
    if (L.cls[o] == Layout::Class::strided) L.vec_ok = false;
    if (o >= d.inputs.size() && L.cls[o] != Layout::Class::full) L.vec_ok = false;
    L.idx32 = L.idx32 && last < kLimit;
  }
}

}  // namespace lowbit::fusion
