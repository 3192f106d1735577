// The CPU kernel of the fused op: one tiled pass over memory.
//
// The iteration space (the outputs' shape, collapsed) is cut into tiles of kTile
// consecutive elements; OpenMP threads take tiles. For each tile, every step of the
// Program runs over the whole tile in a small scratch buffer (f32 or f64) before the next
// step: short, branch-free loops over contiguous arrays that the compiler vectorises
// (this file is built for AVX-512, AVX2 and baseline x86-64, picked at run time). Steps
// that depend only on constants and single-element inputs ("uniform") run once per
// thread. Buffers are reused once their step's last reader has run, so a tile's working
// set stays in L1/L2.
//
// Loads and stores of full, contiguous operands use convert's SIMD kernel (or, for f32
// and bf16, a copy or jit_math's lb_bf16_bits, which restates numeric.hpp's rounding), so
// their bits are convert's; strided operands go element by element through numeric.hpp.
// The formulas are jit_math.inc's, as on CUDA, compiled without FMA contraction.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lowbit/dtype.hpp"
// clang-format off: quant_math.hpp uses Dtype without including dtype.hpp
#include "formats/quant_math.hpp"
// clang-format on
#include "jit/cpu_eval_simd.hpp"
#include "jit/jit.hpp"
#include "jit/jit_math_host.hpp"
#include "ops/convert/convert_element.hpp"
#include "ops/convert/convert_kernels.hpp"

namespace lowbit {
namespace {

using fusion::Instr;
using fusion::Layout;
using fusion::Num;
using fusion::Op;
using fusion::Program;
using namespace lowbit::jit_math;

/// Elements per tile (even: packed bytes never straddle tiles). A step reads one or two
/// tiles of scratch and writes one: at 4 KiB per f32 tile a program's live tiles stay in L1.
constexpr int kTile = 1024;
/// Tiles between the one computed and the one prefetched.
constexpr int64_t kAhead = 2;
/// Below this many elements a call runs on the calling thread.
constexpr int64_t kParallelMin = int64_t{1} << 16;

#if defined(__x86_64__) && defined(__GNUC__)
// x86-64-v3 / v4 include FMA (jit_math's JM_FMAF); the baseline clone calls fmaf (the
// same bits, slower).
#define LOWBIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOWBIT_CLONES
#endif

// ---- conversions of contiguous runs ------------------------------------------------------

/// convert's SIMD kernel on `n` contiguous elements (src / dst may be packed at an even
/// element).
void convert_run(const void* src, Dtype sd, void* dst, Dtype dd, int64_t n) {
  ConvertDesc d;
  d.shape = Shape{n};
  d.src = sd;
  d.dst = dd;
  d.src_strides = Strides{1};
  d.dst_strides = Strides{1};
  const ConvertArgs a{TensorView(const_cast<void*>(src), sd, d.shape),
                      TensorView(dst, dd, d.shape)};
  static const Stream cpu;
  convert_simd_kernel().run(d, a, cpu, {});
}

LOWBIT_CLONES void bf16_to_f32_run(const uint16_t* s, float* d, int n) {
  for (int i = 0; i < n; ++i) d[i] = float_of(static_cast<uint32_t>(s[i]) << 16);
}
LOWBIT_CLONES void f32_to_bf16_run(const float* s, uint16_t* d, int n) {
  for (int i = 0; i < n; ++i) d[i] = static_cast<uint16_t>(lb_bf16_bits(s[i]));
}

template <class T>
void int_to_num(const void* base, Dtype dt, int64_t off, int64_t stride, int n, T* d) {
  switch (dt) {
    case Dtype::i8: {
      const auto* p = static_cast<const int8_t*>(base) + off;
      for (int i = 0; i < n; ++i) d[i] = static_cast<T>(p[i * stride]);
      return;
    }
    case Dtype::u8: {
      const auto* p = static_cast<const uint8_t*>(base) + off;
      for (int i = 0; i < n; ++i) d[i] = static_cast<T>(p[i * stride]);
      return;
    }
    case Dtype::i16: {
      const auto* p = static_cast<const int16_t*>(base) + off;
      for (int i = 0; i < n; ++i) d[i] = static_cast<T>(p[i * stride]);
      return;
    }
    case Dtype::i32: {
      const auto* p = static_cast<const int32_t*>(base) + off;
      for (int i = 0; i < n; ++i) d[i] = static_cast<T>(p[i * stride]);
      return;
    }
    case Dtype::u32: {
      const auto* p = static_cast<const uint32_t*>(base) + off;
      for (int i = 0; i < n; ++i) d[i] = static_cast<T>(p[i * stride]);
      return;
    }
    default:
      return;
  }
}

/// Stores f64 values (already integers in range, see lb_to_int) as integer dtype `dt`.
void num_to_int(const double* s, void* base, Dtype dt, int64_t off, int64_t stride, int n) {
  const double lo = fusion::int_min(dt), hi = fusion::int_max(dt);
  auto put = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    p += off;
    for (int i = 0; i < n; ++i) p[i * stride] = static_cast<T>(lb_to_int(s[i], lo, hi));
  };
  switch (dt) {
    case Dtype::i8:
      return put(static_cast<int8_t*>(base));
    case Dtype::u8:
      return put(static_cast<uint8_t*>(base));
    case Dtype::i16:
      return put(static_cast<int16_t*>(base));
    case Dtype::i32:
      return put(static_cast<int32_t*>(base));
    case Dtype::u32:
      return put(static_cast<uint32_t*>(base));
    default:
      return;
  }
}

/// Loads n elements of any supported dtype at element offsets off, off + stride, ... as
/// the step's Num (f32: via load_f32; f64: the value itself for f64 and integers).
void load_run(const void* base, Dtype dt, Num num, int64_t off, int64_t stride, int n, void* dst) {
  if (fusion::is_int(dt)) {
    int_to_num(base, dt, off, stride, n, static_cast<double*>(dst));
    return;
  }
  if (num == Num::f64) {  // only f64 inputs load as f64
    const double* p = static_cast<const double*>(base) + off;
    double* d = static_cast<double*>(dst);
    for (int i = 0; i < n; ++i) d[i] = p[i * stride];
    return;
  }
  float* d = static_cast<float*>(dst);
  if (stride == 1 && !is_packed(dt)) {
    if (dt == Dtype::f32) {
      std::memcpy(d, static_cast<const float*>(base) + off, sizeof(float) * n);
    } else if (dt == Dtype::bf16) {
      bf16_to_f32_run(static_cast<const uint16_t*>(base) + off, d, n);
    } else {
      convert_run(static_cast<const char*>(base) + storage_bytes(dt, off), dt, d, Dtype::f32, n);
    }
    return;
  }
  for (int i = 0; i < n; ++i) d[i] = convert_detail::load_f32(base, dt, off + i * stride);
}

/// Stores n values (f32, or f64 for f64 and integer dtypes) at element offsets off,
/// off + stride, ... of a non-packed destination.
void store_run(const void* src, Num num, void* base, Dtype dt, int64_t off, int64_t stride, int n) {
  if (fusion::is_int(dt)) {
    num_to_int(static_cast<const double*>(src), base, dt, off, stride, n);
    return;
  }
  if (num == Num::f64) {
    const double* s = static_cast<const double*>(src);
    double* p = static_cast<double*>(base) + off;
    for (int i = 0; i < n; ++i) p[i * stride] = s[i];
    return;
  }
  const float* s = static_cast<const float*>(src);
  if (stride == 1) {
    if (dt == Dtype::f32) {
      std::memcpy(static_cast<float*>(base) + off, s, sizeof(float) * n);
    } else if (dt == Dtype::bf16) {
      f32_to_bf16_run(s, static_cast<uint16_t*>(base) + off, n);
    } else {
      convert_run(s, Dtype::f32, static_cast<char*>(base) + storage_bytes(dt, off), dt, n);
    }
    return;
  }
  for (int i = 0; i < n; ++i)
    convert_detail::store_f32(base, dt, off + i * stride, s[i], Saturation::none);
}

// ---- the steps --------------------------------------------------------------------------

template <class T>
JM_FN void sqrt_run(const T* a, T* o, int n) {
  int i = 0;
#if defined(__x86_64__)
  // __builtin_sqrt keeps errno handling and does not vectorise; SSE2's sqrt is the same
  // correctly rounded operation.
  if constexpr (sizeof(T) == 4) {
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(o + i, _mm_sqrt_ps(_mm_loadu_ps(a + i)));
  } else {
    for (; i + 2 <= n; i += 2) _mm_storeu_pd(o + i, _mm_sqrt_pd(_mm_loadu_pd(a + i)));
  }
#endif
  for (; i < n; ++i) o[i] = lb_sqrt(a[i]);
}

template <class T>
JM_FN void unary_run(Op op, const T* a, T* o, int n, double p, T* e) {
  // sigmoid, silu, tanh and softplus run as two loops, the exp into `e` (a tile of
  // scratch) and then the rest: the same operations as the one-line formula. In one loop
  // GCC splits the exp's clamps into paths and executes the division once per path.
  switch (op) {
    case Op::neg:
      for (int i = 0; i < n; ++i) o[i] = lb_neg(a[i]);
      return;
    case Op::abs:
      for (int i = 0; i < n; ++i) o[i] = lb_abs(a[i]);
      return;
    case Op::exp:
      for (int i = 0; i < n; ++i) o[i] = lb_exp(a[i]);
      return;
    case Op::log:
      for (int i = 0; i < n; ++i) o[i] = lb_log(a[i]);
      return;
    case Op::sqrt:
      sqrt_run(a, o, n);
      return;
    case Op::rsqrt:
      sqrt_run(a, o, n);
      for (int i = 0; i < n; ++i) o[i] = T(1) / o[i];
      return;
    case Op::tanh:
      if constexpr (sizeof(T) == 4) {
        for (int i = 0; i < n; ++i) e[i] = lb_exp_n(lb_tanh_arg(a[i]));
        for (int i = 0; i < n; ++i) o[i] = lb_tanh_e(a[i], e[i]);
      } else {
        for (int i = 0; i < n; ++i) o[i] = lb_tanh(a[i]);
      }
      return;
    case Op::sigmoid: {
      for (int i = 0; i < n; ++i) e[i] = lb_exp_n(-a[i]);
      for (int i = 0; i < n; ++i) o[i] = lb_sigmoid_e(e[i]);
      return;
    }
    case Op::relu:
      for (int i = 0; i < n; ++i) o[i] = lb_relu(a[i]);
      return;
    case Op::gelu:
      for (int i = 0; i < n; ++i) o[i] = lb_gelu_erf(a[i]);
      return;
    case Op::gelu_tanh:
      for (int i = 0; i < n; ++i) o[i] = lb_gelu_tanh(a[i]);
      return;
    case Op::silu: {
      for (int i = 0; i < n; ++i) e[i] = lb_exp_n(-a[i]);
      for (int i = 0; i < n; ++i) o[i] = lb_silu_e(a[i], e[i]);
      return;
    }
    case Op::softplus: {
      for (int i = 0; i < n; ++i) e[i] = lb_exp(a[i]);
      for (int i = 0; i < n; ++i) o[i] = lb_softplus_e(a[i], e[i]);
      return;
    }
    case Op::pow:
      for (int i = 0; i < n; ++i) o[i] = lb_pow(a[i], p);
      return;
    default:
      return;
  }
}

template <class T>
JM_FN void binary_run(Op op, const T* a, const T* b, T* o, int n) {
  switch (op) {
    case Op::add:
      for (int i = 0; i < n; ++i) o[i] = lb_add(a[i], b[i]);
      return;
    case Op::sub:
      for (int i = 0; i < n; ++i) o[i] = lb_sub(a[i], b[i]);
      return;
    case Op::mul:
      for (int i = 0; i < n; ++i) o[i] = lb_mul(a[i], b[i]);
      return;
    case Op::div:
      for (int i = 0; i < n; ++i) o[i] = lb_div(a[i], b[i]);
      return;
    case Op::minimum:
      for (int i = 0; i < n; ++i) o[i] = lb_min(a[i], b[i]);
      return;
    case Op::maximum:
      for (int i = 0; i < n; ++i) o[i] = lb_max(a[i], b[i]);
      return;
    case Op::leaky_relu:
      for (int i = 0; i < n; ++i) o[i] = lb_leaky_relu(a[i], b[i]);
      return;
    default:
      return;
  }
}

template <class T>
JM_FN void compare_run(Op op, const T* a, const T* b, float* o, int n) {
  switch (op) {
    case Op::lt:
      for (int i = 0; i < n; ++i) o[i] = lb_lt(a[i], b[i]);
      return;
    case Op::le:
      for (int i = 0; i < n; ++i) o[i] = lb_le(a[i], b[i]);
      return;
    case Op::gt:
      for (int i = 0; i < n; ++i) o[i] = lb_gt(a[i], b[i]);
      return;
    case Op::ge:
      for (int i = 0; i < n; ++i) o[i] = lb_ge(a[i], b[i]);
      return;
    case Op::eq:
      for (int i = 0; i < n; ++i) o[i] = lb_eq(a[i], b[i]);
      return;
    case Op::ne:
      for (int i = 0; i < n; ++i) o[i] = lb_ne(a[i], b[i]);
      return;
    default:
      return;
  }
}

/// The value of a float dtype nearest each f32 value (numeric.hpp's rounding).
void round_f32_run(Dtype dt, const float* a, float* o, int n) {
  switch (dt) {
    case Dtype::f32:
      if (o != a) std::memcpy(o, a, sizeof(float) * n);
      return;
    case Dtype::bf16:
      for (int i = 0; i < n; ++i) o[i] = float_of(lb_bf16_bits(a[i]) << 16);
      return;
    case Dtype::f16:
      for (int i = 0; i < n; ++i) o[i] = f16_to_f32(f32_to_f16(a[i]));
      return;
    case Dtype::f8e4m3fn:
      for (int i = 0; i < n; ++i) o[i] = f8e4m3fn_to_f32(f32_to_f8e4m3fn(a[i]));
      return;
    case Dtype::f8e5m2:
      for (int i = 0; i < n; ++i) o[i] = f8e5m2_to_f32(f32_to_f8e5m2(a[i]));
      return;
    case Dtype::f4e2m1:
      for (int i = 0; i < n; ++i) o[i] = f4e2m1_to_f32(lb_f4e2m1_code(a[i]));
      return;
    case Dtype::e8m0:
      for (int i = 0; i < n; ++i) o[i] = e8m0_to_f32(f32_to_e8m0(a[i]));
      return;
    default:
      return;
  }
}

void cast_run(const Instr& in, const void* a, void* o, int n) {
  if (fusion::is_int(in.dtype)) {  // result f64
    const double lo = fusion::int_min(in.dtype), hi = fusion::int_max(in.dtype);
    double* d = static_cast<double*>(o);
    if (in.arg_num == Num::f32) {
      const float* s = static_cast<const float*>(a);
      for (int i = 0; i < n; ++i) d[i] = lb_to_int(static_cast<double>(s[i]), lo, hi);
    } else {
      const double* s = static_cast<const double*>(a);
      for (int i = 0; i < n; ++i) d[i] = lb_to_int(s[i], lo, hi);
    }
    return;
  }
  if (in.dtype == Dtype::f64) {
    double* d = static_cast<double*>(o);
    if (in.arg_num == Num::f32) {
      const float* s = static_cast<const float*>(a);
      for (int i = 0; i < n; ++i) d[i] = f32_to_f64(s[i]);
    } else if (d != a) {
      std::memcpy(d, a, sizeof(double) * n);
    }
    return;
  }
  float* d = static_cast<float*>(o);
  const float* s = static_cast<const float*>(a);
  if (in.arg_num == Num::f64) {
    const double* s64 = static_cast<const double*>(a);
    for (int i = 0; i < n; ++i) d[i] = f64_to_f32(s64[i]);
    s = d;
  }
  round_f32_run(in.dtype, s, d, n);
}

/// One step over n elements.
LOWBIT_CLONES void run_step(const Instr& in, void* o, const void* a, const void* b, const void* c,
                            int n, void* tmp) {
  const bool d = in.num == Num::f64;
  switch (in.op) {
    case Op::add:
    case Op::sub:
    case Op::mul:
    case Op::div:
    case Op::minimum:
    case Op::maximum:
    case Op::leaky_relu:
      if (d) {
        binary_run(in.op, static_cast<const double*>(a), static_cast<const double*>(b),
                   static_cast<double*>(o), n);
      } else {
        binary_run(in.op, static_cast<const float*>(a), static_cast<const float*>(b),
                   static_cast<float*>(o), n);
      }
      return;
    case Op::lt:
    case Op::le:
    case Op::gt:
    case Op::ge:
    case Op::eq:
    case Op::ne:
      if (in.arg_num == Num::f64) {
        compare_run(in.op, static_cast<const double*>(a), static_cast<const double*>(b),
                    static_cast<float*>(o), n);
      } else {
        compare_run(in.op, static_cast<const float*>(a), static_cast<const float*>(b),
                    static_cast<float*>(o), n);
      }
      return;
    case Op::clamp:
      if (d) {
        const auto *x = static_cast<const double*>(a), *lo = static_cast<const double*>(b),
                   *hi = static_cast<const double*>(c);
        auto* r = static_cast<double*>(o);
        for (int i = 0; i < n; ++i) r[i] = lb_clamp(x[i], lo[i], hi[i]);
      } else {
        const auto *x = static_cast<const float*>(a), *lo = static_cast<const float*>(b),
                   *hi = static_cast<const float*>(c);
        auto* r = static_cast<float*>(o);
        for (int i = 0; i < n; ++i) r[i] = lb_clamp(x[i], lo[i], hi[i]);
      }
      return;
    case Op::where: {
      auto run = [&](auto* cond, auto* x, auto* y, auto* r) {
        for (int i = 0; i < n; ++i) r[i] = lb_where(cond[i], x[i], y[i]);
      };
      const bool cd = in.arg_num == Num::f64;
      if (d && cd) {
        run(static_cast<const double*>(a), static_cast<const double*>(b),
            static_cast<const double*>(c), static_cast<double*>(o));
      } else if (d) {
        run(static_cast<const float*>(a), static_cast<const double*>(b),
            static_cast<const double*>(c), static_cast<double*>(o));
      } else if (cd) {
        run(static_cast<const double*>(a), static_cast<const float*>(b),
            static_cast<const float*>(c), static_cast<float*>(o));
      } else {
        run(static_cast<const float*>(a), static_cast<const float*>(b),
            static_cast<const float*>(c), static_cast<float*>(o));
      }
      return;
    }
    case Op::cast:
      cast_run(in, a, o, n);
      return;
    default:
      if (d) {
        unary_run(in.op, static_cast<const double*>(a), static_cast<double*>(o), n, in.param,
                  static_cast<double*>(tmp));
      } else {
        unary_run(in.op, static_cast<const float*>(a), static_cast<float*>(o), n, in.param,
                  static_cast<float*>(tmp));
      }
      return;
  }
}

// ---- the pass ------------------------------------------------------------------------------

/// What every thread needs to evaluate tiles: which steps are uniform, where each step's
/// value lives, and how operands are laid out.
struct Schedule {
  std::vector<uint8_t> uniform;  ///< per step
  std::vector<uint8_t> skip;     ///< per step: nothing reads it
  std::vector<int> slot;         ///< per step: its scratch buffer (-1: aliases the input)
  int slots = 0;
  size_t slot_bytes = kTile * 4;  ///< kTile * 8 when a step computes in f64
  /// The vector steps (cpu_eval_simd.cpp) of this CPU, or nulls: the scalar loops.
  fusion::SimdSteps simd;
  /// Chains of vector steps, each reading only the step before it, run as one loop with
  /// the running value in registers (SimdSteps::chain): per step, the chain that ends
  /// there (empty if none), and whether the step runs inside a later step's chain.
  std::vector<std::vector<int>> chain;
  std::vector<uint8_t> chained;
  /// Per step: a side op of its chain (SimdSteps::chain's ChainOp::side).
  std::vector<uint8_t> side;
  /// Per step: a full bf16 input that only chains read, in place (no f32 tile).
  std::vector<uint8_t> direct;
  /// Per step: the output a chain ending there writes as bf16 itself, else -1; per
  /// output: written by its chain (the tile loop does not store it).
  std::vector<int> chain_output;
  std::vector<uint8_t> stored_by_chain;
  /// Full bf16 outputs go out with non-temporal stores (too large to stay in cache).
  bool stream = false;
};

/// Steps per chain (the chain's operands live on the stack of SimdSteps::chain's caller).
constexpr int kMaxChain = 32;

/// Groups the steps the tile loop runs into chains for SimdSteps::chain: a step joins the
/// chain of the vector step run before it (input loads in between do not count) when it
/// is a vector step too and the only reader of that step's value (which is no output):
/// then that value never needs a tile. A vector step that does not read the chain's value
/// joins as a side op when its one reader is the next vector step and that step joins
/// (`t - a * 0.5` after `t`: the branch stays in registers too). A chain runs at its last
/// step, where every
/// operand of its steps is ready; `last` (per step: its last reader) moves to there for
/// those operands, so that their buffers are not reused before the chain reads them.
void make_chains(const Program& p, const Layout& L, Schedule& s, std::vector<int>& last) {
  const int n = static_cast<int>(p.code.size());
  s.chain.assign(n, {});
  s.chained.assign(n, 0);
  s.side.assign(n, 0);
  s.direct.assign(n, 0);
  s.chain_output.assign(n, -1);
  s.stored_by_chain.assign(p.outputs.size(), 0);
  if (!s.simd.chain) return;
  std::vector<int> uses(n, 0);  // operand references (mul(x, x) reads x twice)
  for (const Instr& in : p.code)
    for (int x : {in.a, in.b, in.c})
      if (x >= 0) ++uses[x];
  for (int o : p.outputs) uses[o] += 1 << 20;  // the store reads it too
  std::vector<std::vector<int>> chains;
  // The next step the tile loop runs after i that is not a load (-1 if none).
  auto next_step = [&](int i) {
    for (int k = i + 1; k < n; ++k)
      if (!s.uniform[k] && !s.skip[k] && p.code[k].op != Op::input) return k;
    return -1;
  };
  auto refs_to = [&](const Instr& in, int v) {
    int r = 0;
    for (int x : {in.a, in.b, in.c}) r += v >= 0 && x == v;
    return r;
  };
  int prev = -1;  // the last vector step run, while the chain can go on
  for (int i = 0; i < n; ++i) {
    if (s.uniform[i] || s.skip[i]) continue;
    const Instr& in = p.code[i];
    if (in.op == Op::input) continue;  // a load: changes no value a chain reads
    if (!s.simd.handles(in)) {
      prev = -1;
      continue;
    }
    const int refs = refs_to(in, prev);
    if (refs > 0 && refs == uses[prev] && static_cast<int>(chains.back().size()) < kMaxChain) {
      chains.back().push_back(i);
      prev = i;
      continue;
    }
    if (refs == 0 && prev >= 0 && uses[i] == 1 &&
        static_cast<int>(chains.back().size()) + 2 <= kMaxChain) {
      const int k = next_step(i);
      const int k_refs = k >= 0 ? refs_to(p.code[k], prev) : 0;
      if (k_refs > 0 && k_refs == uses[prev] && s.simd.handles(p.code[k]) &&
          refs_to(p.code[k], i) == 1) {  // k will join: the side's one reader is in the chain
        chains.back().push_back(i);      // a side op; the chain's value is still prev
        s.side[i] = 1;
        continue;
      }
    }
    chains.push_back({i});
    prev = i;
  }
  for (std::vector<int>& c : chains) {
    if (c.size() < 2) continue;  // a chain of one is a step
    const int end = c.back();
    for (int j : c) {
      if (j != end) s.chained[j] = 1;
      const Instr& in = p.code[j];
      for (int x : {in.a, in.b, in.c})
        if (x >= 0) last[x] = std::max(last[x], end);
    }
    s.chain[end] = std::move(c);
  }
  // bf16 inputs read only by chains are read by them in place.
  std::vector<uint8_t> in_chain(n, 0);
  for (int i = 0; i < n; ++i)
    for (int j : s.chain[i]) in_chain[j] = 1;
  for (int i = 0; i < n; ++i) {
    const Instr& in = p.code[i];
    if (in.op != Op::input || s.uniform[i] || s.skip[i] || in.dtype != Dtype::bf16 ||
        L.cls[in.slot] != Layout::Class::full || uses[i] >= (1 << 20))
      continue;
    bool only_chains = true;
    for (int j = 0; j < n; ++j)
      for (int x : {p.code[j].a, p.code[j].b, p.code[j].c})
        if (x == i && !in_chain[j]) only_chains = false;
    s.direct[i] = only_chains;
  }
  // A chain whose value is only stored, to a full bf16 output, stores it itself.
  const size_t nin = L.cls.size() - p.outputs.size();
  for (size_t o = 0; o < p.outputs.size(); ++o) {
    const int e = p.outputs[o];
    if (s.chain[e].empty() || uses[e] != (1 << 20) || static_cast<int>(o) == p.quantized_output ||
        p.output_dtypes[o] != Dtype::bf16 || L.cls[nin + o] != Layout::Class::full)
      continue;
    s.chain_output[e] = static_cast<int>(o);
    s.stored_by_chain[o] = 1;
  }
}

Schedule make_schedule(const Program& p, const Layout& L) {
  Schedule s;
  s.simd = fusion::cpu_simd_steps();
  const int n = static_cast<int>(p.code.size());
  s.uniform = fusion::uniform_steps(p, L);
  s.slot.assign(n, -1);
  std::vector<int> last(n, -1);
  for (int i = 0; i < n; ++i) {
    const Instr& in = p.code[i];
    for (int x : {in.a, in.b, in.c})
      if (x >= 0) last[x] = i;
  }
  for (int o : p.outputs) last[o] = n;  // stored after the last step
  s.skip.assign(n, 0);
  for (int i = 0; i < n; ++i) s.skip[i] = last[i] < 0 && !s.uniform[i];
  make_chains(p, L, s, last);
  // Full f32 / f64 inputs are read in place.
  auto aliased = [&](int i) {
    const Instr& in = p.code[i];
    return in.op == Op::input && L.cls[in.slot] == Layout::Class::full &&
           (in.dtype == Dtype::f32 || in.dtype == Dtype::f64);
  };
  for (const Instr& in : p.code)
    if (in.num == Num::f64 || in.arg_num == Num::f64) s.slot_bytes = kTile * 8;
  // Linear scan: a step's buffer returns to the pool after its last reader. A step whose
  // operands and result have one element size may write over an operand it reads last
  // (every loop reads element i before writing it); others (f32 -> f64 casts, compares
  // of f64 values, ...) get a fresh buffer.
  std::vector<int> free_slots;
  std::vector<uint8_t> owned(n, 0);  // step i's slot is a pooled one
  for (int i = 0; i < n; ++i) {
    const Instr& in = p.code[i];
    std::vector<int> dying;
    for (int x : {in.a, in.b, in.c})
      if (x >= 0 && last[x] == i && owned[x] &&
          std::find(dying.begin(), dying.end(), s.slot[x]) == dying.end())
        dying.push_back(s.slot[x]);
    const bool in_place = in.num == in.arg_num;
    if (in_place)
      for (int x : dying) free_slots.push_back(x);
    if (!aliased(i) && !(last[i] < 0 && !s.uniform[i])) {
      if (s.uniform[i] || free_slots.empty()) {
        s.slot[i] = s.slots++;  // uniform steps keep theirs
      } else {
        s.slot[i] = free_slots.back();
        free_slots.pop_back();
      }
      owned[i] = !s.uniform[i];
    }
    if (!in_place)
      for (int x : dying) free_slots.push_back(x);
  }
  s.stream = L.numel * 2 >= fusion::nontemporal_bytes();
  return s;
}

/// This thread's scratch memory, at least `bytes`, kept between calls.
char* thread_scratch(size_t bytes) {
  struct Buffer {
    char* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.size < bytes) {
    std::free(buf.p);
    buf.size = 0;
    buf.p = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!buf.p) throw_error(ErrorCode::out_of_memory, "fused_cpu: scratch allocation failed");
    buf.size = bytes;
  }
  return buf.p;
}

/// A second per-thread buffer: the quantize epilogue's rows of values.
char* quant_scratch(size_t bytes) {
  struct Buffer {
    char* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.size < bytes) {
    std::free(buf.p);
    buf.size = 0;
    buf.p = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!buf.p) throw_error(ErrorCode::out_of_memory, "fused_cpu: scratch allocation failed");
    buf.size = bytes;
  }
  return buf.p;
}

struct Pass {
  const Program& p;
  const Layout& L;
  const FusedArgs& args;
  const Schedule& s;
  /// The quantize epilogue: the quantized output's values go to qbuf, element e at
  /// e - qorigin (contiguous, in the output's dtype).
  char* qbuf = nullptr;
  int64_t qorigin = 0;
  /// Chains may store outputs themselves (Schedule::chain_output): not when an output is
  /// also an input of this call (in place), since a chain runs before the tile's last
  /// reads of the inputs.
  bool chain_stores = true;
  /// Whether the outputs other than the quantized one are stored (not in nvfp4's statistics
  /// pass: an output that is also an input must keep its values for the second pass).
  bool store_others = true;

  /// No output of `args` is also one of its inputs.
  static bool outputs_apart(const FusedArgs& args) {
    for (const TensorView& o : args.outputs)
      for (const TensorView& i : args.inputs)
        if (o.data() == i.data()) return false;
    return true;
  }

  /// Element offset of linear index e in operand k.
  int64_t offset(size_t k, int64_t e) const {
    int64_t off = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
      const int64_t i = e % L.extent[d];
      e /= L.extent[d];
      off += i * L.strides[k][d];
    }
    return off;
  }

  /// Calls fn(pos, count, offset, stride) for the runs of operand k within [e0, e0 + n):
  /// stretches along the innermost collapsed dim.
  template <class Fn>
  void runs(size_t k, int64_t e0, int n, Fn&& fn) const {
    const int64_t inner = L.extent[L.nd - 1];
    const int64_t st = L.strides[k][L.nd - 1];
    int pos = 0;
    while (pos < n) {
      const int64_t e = e0 + pos;
      const int64_t j = e % inner;
      const int count = static_cast<int>(std::min<int64_t>(n - pos, inner - j));
      fn(pos, count, offset(k, e), st);
      pos += count;
    }
  }

  void load(int step, int64_t e0, int n, void* dst, const void** ptr) const {
    const Instr& in = p.code[step];
    const size_t k = static_cast<size_t>(in.slot);
    const TensorView& v = args.inputs[k];
    const Layout::Class cls = L.cls[k];
    if (cls == Layout::Class::full) {
      if (s.slot[step] < 0) {  // read in place
        const size_t bytes = in.dtype == Dtype::f64 ? 8 : 4;
        *ptr = static_cast<const char*>(v.data()) + bytes * e0;
        return;
      }
      if (is_packed(in.dtype)) {
        convert_run(static_cast<const char*>(v.data()) + e0 / 2, in.dtype, dst, Dtype::f32, n);
      } else if (in.dtype == Dtype::bf16 && s.simd.load_bf16) {
        s.simd.load_bf16(static_cast<const uint16_t*>(v.data()) + e0, static_cast<float*>(dst), n);
      } else {
        load_run(v.data(), in.dtype, in.num, e0, 1, n, dst);
      }
    } else if (cls == Layout::Class::scalar) {
      load_run(v.data(), in.dtype, in.num, 0, 1, 1, dst);
      if (in.num == Num::f64) {
        std::fill_n(static_cast<double*>(dst) + 1, n - 1, static_cast<double*>(dst)[0]);
      } else {
        std::fill_n(static_cast<float*>(dst) + 1, n - 1, static_cast<float*>(dst)[0]);
      }
    } else {
      const size_t esize = in.num == Num::f64 ? 8 : 4;
      runs(k, e0, n, [&](int pos, int count, int64_t off, int64_t st) {
        load_run(v.data(), in.dtype, in.num, off, st, count, static_cast<char*>(dst) + esize * pos);
      });
    }
    *ptr = dst;
  }

  void store(size_t o, const void* src, int64_t e0, int n) const {
    const size_t k = args.inputs.size() + o;
    const TensorView& v = args.outputs[o];
    const Dtype dt = p.output_dtypes[o];
    const Num num = p.code[p.outputs[o]].num;
    if (static_cast<int>(o) == p.quantized_output) {
      store_run(src, num, qbuf, dt, e0 - qorigin, 1, n);
      return;
    }
    if (is_packed(dt)) {  // packed outputs are contiguous; e0 is even
      // f4e2m1: NaN as +NaN (lb_f4e2m1_code), then convert's codes.
      float canon[kTile];
      const auto* f = static_cast<const float*>(src);
      for (int i = 0; i < n; ++i) canon[i] = f[i] != f[i] ? float_of(0x7fc00000u) : f[i];
      convert_run(canon, Dtype::f32, static_cast<char*>(v.data()) + e0 / 2, dt, n);
      return;
    }
    if (L.cls[k] == Layout::Class::full) {
      if (dt == Dtype::bf16 && num == Num::f32 && s.simd.store_bf16) {
        s.simd.store_bf16(static_cast<const float*>(src), static_cast<uint16_t*>(v.data()) + e0, n,
                          s.stream);
        return;
      }
      store_run(src, num, v.data(), dt, e0, 1, n);
      return;
    }
    const size_t esize = num == Num::f64 ? 8 : 4;
    runs(k, e0, n, [&](int pos, int count, int64_t off, int64_t st) {
      store_run(static_cast<const char*>(src) + esize * pos, num, v.data(), dt, off, st, count);
    });
  }

  void step(int i, int64_t e0, int n, char* scratch, const void** ptr) const {
    const Instr& in = p.code[i];
    if (s.skip[i] || s.chained[i]) return;  // chained: runs in its chain
    if (!s.chain[i].empty()) return run_chain(i, e0, n, scratch, ptr);
    if (s.direct[i]) {  // read in place by its chains
      ptr[i] = static_cast<const uint16_t*>(args.inputs[static_cast<size_t>(in.slot)].data()) + e0;
      return;
    }
    void* own = s.slot[i] >= 0 ? scratch + static_cast<size_t>(s.slot[i]) * s.slot_bytes : nullptr;
    if (in.op == Op::input) {
      load(i, e0, n, own, &ptr[i]);
      return;
    }
    if (in.op == Op::constant) {
      std::fill_n(static_cast<double*>(own), n, p.constants[in.slot]);
      ptr[i] = own;
      return;
    }
    const void* a = in.a >= 0 ? ptr[in.a] : nullptr;
    const void* b = in.b >= 0 ? ptr[in.b] : nullptr;
    const void* c = in.c >= 0 ? ptr[in.c] : nullptr;
    if (!s.simd.step || !s.simd.step(in, own, a, b, c, n))
      run_step(in, own, a, b, c, n, scratch + static_cast<size_t>(s.slots) * s.slot_bytes);
    ptr[i] = own;
  }

  /// Runs the chain that ends at step i (Schedule::chain) over n elements.
  void run_chain(int i, int64_t e0, int n, char* scratch, const void** ptr) const {
    fusion::ChainOp ops[kMaxChain];
    int m = 0, prev = -1, side = -1;
    for (int j : s.chain[i]) {
      const Instr& in = p.code[j];
      fusion::ChainOp& op = ops[m++];
      op.in = &in;
      op.side = s.side[j] != 0;
      const int xs[3] = {in.a, in.b, in.c};
      for (int t = 0; t < 3; ++t) {
        if (xs[t] < 0) continue;
        if (xs[t] == prev) {
          op.chained |= 1u << t;
        } else if (xs[t] == side) {
          op.from_side |= 1u << t;
        } else {
          op.arg[t] = ptr[xs[t]];
          if (s.direct[xs[t]]) op.bf16 |= 1u << t;
          if (s.uniform[xs[t]]) {  // one value, f32 (a vector step's operand)
            const float v = *static_cast<const float*>(ptr[xs[t]]);
            if (v == v) op.plain |= 1u << t;
          }
        }
      }
      if (op.side) {
        side = j;
      } else {
        prev = j;
      }
    }
    fusion::ChainDst dst;
    if (chain_stores && s.chain_output[i] >= 0) {
      dst.bf16 =
          static_cast<uint16_t*>(args.outputs[static_cast<size_t>(s.chain_output[i])].data()) + e0;
      dst.stream = s.stream;
    } else {
      dst.f32 = reinterpret_cast<float*>(scratch + static_cast<size_t>(s.slot[i]) * s.slot_bytes);
      ptr[i] = dst.f32;
    }
    s.simd.chain(ops, m, dst, n);
  }

  /// The memory of tile e0's full operands, as ranges to prefetch (reads, then writes).
  static constexpr int kMaxRanges = 16;
  struct Ranges {
    const char* p[kMaxRanges];
    int64_t bytes[kMaxRanges];
    bool write[kMaxRanges];
    int count = 0;
    int64_t total = 0;  // cache lines
  };

  Ranges ranges(int64_t e0) const {
    Ranges r;
    const int64_t n = std::min<int64_t>(kTile, L.numel - e0);
    const size_t nin = args.inputs.size();
    for (size_t k = 0; k < L.cls.size() && r.count < kMaxRanges; ++k) {
      if (L.cls[k] != Layout::Class::full) continue;
      if (k >= nin && (static_cast<int>(k - nin) == p.quantized_output || !store_others))
        continue;  // scratch, or not stored in this pass
      const TensorView& v = k < nin ? args.inputs[k] : args.outputs[k - nin];
      r.p[r.count] = static_cast<const char*>(v.data()) + storage_bytes(v.dtype(), e0);
      r.bytes[r.count] = storage_bytes(v.dtype(), n);
      r.write[r.count] = k >= nin;
      r.total += (r.bytes[r.count] + 63) / 64;
      ++r.count;
    }
    return r;
  }

  /// Prefetches cache lines [from, to) of the ranges (counted across them).
  static void prefetch(const Ranges& r, int64_t from, int64_t to) {
#if defined(__GNUC__)
    int64_t base = 0;
    for (int i = 0; i < r.count; ++i) {
      const int64_t lines = (r.bytes[i] + 63) / 64;
      for (int64_t l = std::max(from - base, int64_t{0}); l < std::min(to - base, lines); ++l) {
        if (r.write[i]) {
          __builtin_prefetch(r.p[i] + 64 * l, 1, 3);
        } else {
          __builtin_prefetch(r.p[i] + 64 * l, 0, 3);
        }
      }
      base += lines;
    }
#endif
  }

  /// Evaluates tiles [t0, t1) on this thread.
  void tiles(int64_t t0, int64_t t1) const { span(t0 * kTile, std::min(t1 * kTile, L.numel)); }

  /// Evaluates elements [b, end) on this thread, in tiles of kTile from b (b even).
  void span(int64_t b, int64_t end) const {
    const int64_t t0 = 0, t1 = (end - b + kTile - 1) / kTile;
    // The slots, then one more tile for exps (see unary_run).
    char* scratch = thread_scratch(static_cast<size_t>(s.slots + 1) * s.slot_bytes);
    std::vector<const void*> ptr(p.code.size(), nullptr);
    const int steps = static_cast<int>(p.code.size());
    const int64_t numel = L.numel;
    // Uniform steps: once, on one element, then spread over a whole tile.
    for (int i = 0; i < steps; ++i) {
      if (!s.uniform[i]) continue;
      step(i, 0, 1, scratch, ptr.data());
      if (s.slot[i] < 0) continue;
      char* own = scratch + static_cast<size_t>(s.slot[i]) * s.slot_bytes;
      if (p.code[i].num == Num::f64) {
        std::fill_n(reinterpret_cast<double*>(own) + 1, kTile - 1,
                    reinterpret_cast<double*>(own)[0]);
      } else {
        std::fill_n(reinterpret_cast<float*>(own) + 1, kTile - 1, reinterpret_cast<float*>(own)[0]);
      }
    }
    // Memory runs kAhead tiles ahead of the arithmetic: the next tiles' lines are asked
    // for a few at a time between the steps (a burst of requests would be dropped).
    for (int64_t t = t0; t < std::min(t1, t0 + kAhead); ++t) {
      const Ranges r = ranges(b + t * kTile);
      prefetch(r, 0, r.total);
    }
    int work = 0;
    for (int i = 0; i < steps; ++i) work += !s.uniform[i] && !s.skip[i];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e0 = b + t * kTile;
      const int n = static_cast<int>(std::min<int64_t>(kTile, std::min(end, numel) - e0));
      const bool ahead = t + kAhead < t1;
      const Ranges r = ahead ? ranges(e0 + kAhead * kTile) : Ranges{};
      const int64_t per = (r.total + work) / std::max(work, 1);
      int64_t issued = 0;
      for (int i = 0; i < steps; ++i) {
        if (s.uniform[i] || s.skip[i]) continue;
        step(i, e0, n, scratch, ptr.data());
        if (ahead) {
          prefetch(r, issued, issued + per);
          issued += per;
        }
      }
      for (size_t o = 0; o < p.outputs.size(); ++o) {
        if (!store_others && static_cast<int>(o) != p.quantized_output) continue;
        if (!(chain_stores && s.stored_by_chain[o])) store(o, ptr[p.outputs[o]], e0, n);
      }
    }
#if defined(__x86_64__)
    if (s.stream) _mm_sfence();  // order the non-temporal stores before the call returns
#endif
  }
};

class FusedCpu final : public Kernel<FusedOp> {
 public:
  std::string_view name() const override { return "fused_cpu"; }

  std::string decline(const FusedDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    return {};
  }

  KernelSku sku(const FusedDesc& d) const override {
    // arch: the Highway target of the vector steps, else the scalar loops' clone.
    const fusion::SimdSteps simd = fusion::cpu_simd_steps();
    return {"fused",
            Backend::cpu,
            fused_dtypes(d),
            "",
            simd.step ? std::string(simd.target) : cpu_features().best_target,
            "fused_cpu_tiled"};
  }

  PrecisionGuarantee precision(const FusedDesc& d) const override {
    return {
        "f32 math for dtypes narrower than f32 (f64 for f64 and integers), no rounding "
        "between ops, one rounding per output; transcendental functions by lowbit's own "
        "f32 formulas (<= 2.5 ulp), bit-identical to fused_cuda" +
            std::string(d.program && d.program->f64_transcendental
                            ? " except f64 transcendental functions (libm)"
                            : ""),
        std::nullopt, true, true};
  }

  void run(const FusedDesc& d, const FusedArgs& a, const Stream&, Workspace) const override {
    const Layout& L = d.state->get_layout(d);
    if (L.numel == 0) {
      // As quantize(): an empty tensor's nvfp4 global scale is global(0) = 0.
      if (d.quantized_output >= 0 && d.scheme.format == QuantFormat::nvfp4)
        a.quantized.global_scale.data_as<float>()[0] = 0.0f;
      return;
    }
    const Program& p = *d.program;
    fusion::PlanState& st = *d.state;
    std::call_once(st.cpu_once, [&] {
      st.cpu_schedule = std::make_shared<const Schedule>(make_schedule(p, L));
    });
    const Schedule& s = *static_cast<const Schedule*>(st.cpu_schedule.get());
    if (d.quantized_output >= 0) return run_quantized(d, a, s, L);
    Pass pass{p, L, a, s};
    pass.chain_stores = Pass::outputs_apart(a);
    const int64_t tiles = (L.numel + kTile - 1) / kTile;
    const int threads = omp_get_max_threads();
    if (L.numel < kParallelMin || threads <= 1 || tiles < 2) {
      pass.tiles(0, tiles);
      return;
    }
    // Static contiguous ranges of tiles per thread: each thread streams its own part.
    std::exception_ptr error;
#pragma omp parallel num_threads(static_cast <int>(std::min <int64_t>(threads, tiles)))
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      try {
        pass.tiles(tiles * t / nt, tiles * (t + 1) / nt);
      } catch (...) {
#pragma omp critical
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }

 private:
  /// Elements per row tile of the quantize epilogue (its values stay in L2).
  static constexpr int64_t kQuantTile = int64_t{1} << 14;

  /// The quantize epilogue: per tile of whole rows, the expression into a scratch buffer
  /// (in the expression's dtype), then the quantize op's CPU kernel on those rows: the
  /// schemes the epilogue takes have groups within rows, so the bits are those of
  /// quantize() on the whole unfused result, and memory is read once.
  static void run_quantized(const FusedDesc& d, const FusedArgs& a, const Schedule& s,
                            const Layout& L) {
    const Program& p = *d.program;
    const QuantizedView& q = a.quantized;
    const QuantScheme& scheme = d.scheme;
    const int64_t K = d.shape.size() > 0 ? d.shape[d.shape.size() - 1] : 1;
    const int64_t R = K > 0 ? L.numel / K : 0;
    if (R == 0) return;
    const Dtype vt = p.output_dtypes[static_cast<size_t>(d.quantized_output)];
    const int64_t esize = bit_width(vt) / 8;
    int64_t rt = std::max<int64_t>(1, kQuantTile / K);
    if (K % 2) rt += rt % 2;  // tiles start at even elements (packed inputs and codes)
    rt = std::min(rt, R);
    const int64_t tiles = (R + rt - 1) / rt;
    // Per row: how many scale (and zero) elements.
    const int64_t scales_per_row = numel(scale_shape(scheme, Shape{1, K}));
    const Dtype cd = scheme.code_dtype();
    QuantizeDesc qd = fusion::quantize_desc(d, Shape{rt, K});
    qd.check_finite = false;  // checked below, with the index in the whole space
    // nvfp4: a first pass takes the tensor's absmax (and does the check), then the tiles are
    // quantized with the global scale it gives, as quantize() computes it.
    const bool nvfp4 = scheme.format == QuantFormat::nvfp4;
    qd.given_scales = nvfp4;
    const QuantizePlan full = QuantizePlan::select(qd);
    std::optional<QuantizePlan> last;
    if (R % rt) {
      qd.shape = Shape{R % rt, K};
      qd.src_strides = contiguous_strides(qd.shape);
      last.emplace(QuantizePlan::select(qd));
    }
    std::atomic<int64_t> first_bad{INT64_MAX};
    std::atomic<bool> bad_nan{false};
    std::mutex bad_mutex;
    std::atomic<uint32_t> amax_bits{0};  // nvfp4: the largest magnitude, as bits of vt
    bool stats_pass = nvfp4;
    auto work = [&](int64_t t0, int64_t t1) {
      Pass pass{p, L, a, s};
      pass.store_others = !stats_pass;
      pass.chain_stores = pass.store_others && Pass::outputs_apart(a);
      pass.qbuf = quant_scratch(static_cast<size_t>(rt * K * esize));
      static const Stream cpu;
      uint32_t tile_amax = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * rt, rows = std::min(rt, R - r0);
        const int64_t e0 = r0 * K, count = rows * K;
        if (e0 > first_bad.load(std::memory_order_relaxed)) return;
        pass.qorigin = e0;
        pass.span(e0, e0 + count);
        if (d.check_finite && (stats_pass || !nvfp4)) {
          const int64_t bad = first_non_finite(pass.qbuf, vt, count);
          if (bad >= 0) {
            std::lock_guard<std::mutex> lock(bad_mutex);
            if (e0 + bad < first_bad.load()) {
              first_bad.store(e0 + bad);
              bad_nan.store(is_nan_at(pass.qbuf, vt, bad));
            }
            return;
          }
        }
        if (stats_pass) {
          tile_amax = std::max(tile_amax, max_magnitude(pass.qbuf, vt, count));
          continue;
        }
        const Shape shape{rows, K};
        QuantizedView qv;
        qv.scheme = scheme;
        qv.shape = shape;
        qv.codes = TensorView(static_cast<char*>(q.codes.data()) + storage_bytes(cd, e0), cd,
                              code_shape(scheme, shape));
        const Shape ss = scale_shape(scheme, shape);
        qv.scale = TensorView(static_cast<char*>(q.scale.data()) +
                                  storage_bytes(q.scale.dtype(), r0 * scales_per_row),
                              q.scale.dtype(), ss);
        if (q.zero.data())
          qv.zero = TensorView(static_cast<int32_t*>(q.zero.data()) + r0 * scales_per_row,
                               Dtype::i32, ss);
        qv.global_scale = q.global_scale;
        const TensorView src(pass.qbuf, vt, shape);
        (rows == rt ? full : *last).run(cpu, {}, QuantizeArgs{src, qv});
      }
      uint32_t seen = amax_bits.load(std::memory_order_relaxed);
      while (tile_amax > seen && !amax_bits.compare_exchange_weak(seen, tile_amax)) {
      }
    };
    auto all_tiles = [&] {
      const int threads = omp_get_max_threads();
      if (L.numel < kParallelMin || threads <= 1 || tiles < 2) {
        work(0, tiles);
      } else {
        std::exception_ptr error;
#pragma omp parallel num_threads(static_cast <int>(std::min <int64_t>(threads, tiles)))
        {
          const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
          try {
            work(tiles * t / nt, tiles * (t + 1) / nt);
          } catch (...) {
#pragma omp critical
            error = std::current_exception();
          }
        }
        if (error) std::rethrow_exception(error);
      }
      if (first_bad.load() != INT64_MAX)
        fusion::throw_non_finite(d, first_bad.load(), bad_nan.load());
    };
    all_tiles();
    if (!nvfp4) return;
    // The global scale from the values' absmax (non-finite values were refused above, or,
    // unchecked, give unspecified codes), stored as quantize() stores it; then the codes.
    const uint32_t m = amax_bits.load();
    const float amax = vt == Dtype::f32    ? std::bit_cast<float>(m)
                       : vt == Dtype::bf16 ? std::bit_cast<float>(m << 16)
                                           : f16_to_f32(static_cast<uint16_t>(m));
    // (Unchecked non-finite values leave codes unspecified: a zero global scale then, not a
    // NaN one, which quantize's given-scale path would refuse.)
    q.global_scale.data_as<float>()[0] =
        std::isfinite(amax) ? formats::nvfp4_global_scale(amax) : 0.0f;
    stats_pass = false;
    all_tiles();
  }

  /// The largest magnitude among n values of dtype dt (f32, f16, bf16), as bits of dt: the
  /// largest finite value's (NaN / Inf give bits at or above Inf's).
  static uint32_t max_magnitude(const char* v, Dtype dt, int64_t n) {
    uint32_t m = 0;
    if (dt == Dtype::f32) {
      const auto* u = reinterpret_cast<const uint32_t*>(v);
      for (int64_t i = 0; i < n; ++i) m = std::max(m, u[i] & 0x7fffffffu);
    } else {
      const auto* u = reinterpret_cast<const uint16_t*>(v);
      for (int64_t i = 0; i < n; ++i) m = std::max<uint32_t>(m, u[i] & 0x7fffu);
    }
    return m;
  }

  /// The first NaN / Inf among n values of dtype dt (f32, f16, bf16), or -1.
  static int64_t first_non_finite(const char* v, Dtype dt, int64_t n) {
    if (dt == Dtype::f32) {
      const auto* u = reinterpret_cast<const uint32_t*>(v);
      for (int64_t i = 0; i < n; ++i)
        if ((u[i] & 0x7f800000u) == 0x7f800000u) return i;
    } else {
      const uint16_t mask = dt == Dtype::bf16 ? 0x7f80u : 0x7c00u;
      const auto* u = reinterpret_cast<const uint16_t*>(v);
      for (int64_t i = 0; i < n; ++i)
        if ((u[i] & mask) == mask) return i;
    }
    return -1;
  }
  static bool is_nan_at(const char* v, Dtype dt, int64_t i) {
    if (dt == Dtype::f32)
      return (reinterpret_cast<const uint32_t*>(v)[i] & 0x7fffffffu) > 0x7f800000u;
    const uint16_t u = reinterpret_cast<const uint16_t*>(v)[i] & 0x7fffu;
    return dt == Dtype::bf16 ? u > 0x7f80u : u > 0x7c00u;
  }
};

}  // namespace

const Kernel<FusedOp>& fused_cpu_kernel() {
  static const FusedCpu kernel;
  return kernel;
}

}  // namespace lowbit

namespace lowbit::fusion {

int64_t nontemporal_bytes() {
  // As convert does: outputs larger than a quarter of the last-level cache would only
  // evict the inputs.
  static const int64_t threshold = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return std::clamp<int64_t>(l3 > 0 ? l3 / 4 : 0, int64_t{4} << 20, int64_t{64} << 20);
  }();
  return threshold;
}

std::vector<uint8_t> uniform_steps(const Program& p, const Layout& L) {
  std::vector<uint8_t> u(p.code.size(), 0);
  for (size_t i = 0; i < p.code.size(); ++i) {
    const Instr& in = p.code[i];
    if (in.op == Op::constant) {
      u[i] = 1;
    } else if (in.op == Op::input) {
      u[i] = L.cls[static_cast<size_t>(in.slot)] == Layout::Class::scalar;
    } else {
      bool all = true;
      for (int x : {in.a, in.b, in.c})
        if (x >= 0) all = all && u[static_cast<size_t>(x)];
      u[i] = all;
    }
  }
  return u;
}

void uniform_values(const Program& p, const FusedArgs& a, const std::vector<uint8_t>& uniform,
                    std::vector<double>& values) {
  values.assign(p.code.size(), 0.0);
  double tmp[2] = {};  // unary_run's exp scratch, one element
  for (size_t i = 0; i < p.code.size(); ++i) {
    if (!uniform[i]) continue;
    const Instr& in = p.code[i];
    void* own = &values[i];
    if (in.op == Op::constant) {
      values[i] = p.constants[static_cast<size_t>(in.slot)];
    } else if (in.op == Op::input) {
      load_run(a.inputs[static_cast<size_t>(in.slot)].data(), in.dtype, in.num, 0, 1, 1, own);
    } else {
      auto arg = [&](int x) -> const void* {
        return x >= 0 ? &values[static_cast<size_t>(x)] : nullptr;
      };
      run_step(in, own, arg(in.a), arg(in.b), arg(in.c), 1, tmp);
    }
  }
}

}  // namespace lowbit::fusion
