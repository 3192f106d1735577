// Program + Variant -> CUDA C++ source of one kernel, "lowbit_fused".
//
// The element computation is one inlined function, lb_eval, with a line per Program step
// taken from the op table below (op -> expression over jit_math.inc's functions). Around
// it, one of two kernels:
//  - vec: every operand is contiguous over the whole space (or a single element) and
//    16-byte aligned. A thread takes a group of G elements, G = 16 bytes over the
//    smallest element size, so that every operand moves in whole 16-byte vectors, and
//    keeps U groups' loads in flight; a grid-stride loop covers the groups, then the
//    tail elements one by one.
//  - strided: any strides (broadcast dims have stride 0) over the collapsed dims; the
//    element index is split with one division per dim. A packed (f4e2m1) output makes
//    a thread compute an element pair, one byte.
// Loads and stores go through numeric.hpp's functions, the same as convert's reference.
// Indices are 32-bit when every index and offset of the call fits (Variant::idx32).
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "jit/jit.hpp"
#include "jit/numeric_text.hpp"  // generated from include/lowbit/numeric.hpp by CMake
#include "lowbit/numeric.hpp"

namespace lowbit::fusion {
namespace {

// ---- headers given to NVRTC ------------------------------------------------------------

#define LOWBIT_JIT_SOURCE(...) #__VA_ARGS__
const char* const kMathText =
#include "jit/jit_math.inc"
    ;
#undef LOWBIT_JIT_SOURCE

const char* const kStdintStub = R"(#pragma once
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
namespace std {
using ::int8_t; using ::int16_t; using ::int32_t; using ::int64_t;
using ::uint8_t; using ::uint16_t; using ::uint32_t; using ::uint64_t;
}
)";

// numeric.hpp includes <bit> for the host's std::bit_cast; device code uses intrinsics.
const char* const kBitStub = "#pragma once\n";

const char* const kPrelude = R"(#pragma once
#include "lowbit/numeric.hpp"
#define JM_FN __device__ __forceinline__
#define JM_SQRTF(x) sqrtf(x)
#define JM_FMAF(a, b, c) fmaf(a, b, c)
#define JM_SATF(x) __saturatef(x)
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float lowbit_jm_minc(float c, float x) {
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(c), "f"(x));
  return r;
}
#define JM_MINC(c, x) lowbit_jm_minc(c, x)
#else
#define JM_MINC(c, x) ((c) < (x) ? (c) : (x))
#endif
#define JM_D_EXP(x) exp(x)
#define JM_D_LOG(x) log(x)
#define JM_D_SQRT(x) sqrt(x)
#define JM_D_TANH(x) tanh(x)
#define JM_D_ERF(x) erf(x)
#define JM_D_LOG1P(x) log1p(x)
#define JM_D_POW(x, p) pow(x, p)
#define JM_D_TRUNC(x) trunc(x)
#define JM_RINTF(x) rintf(x)
#include "lowbit_jit_math.h"
#ifndef LB_DYN_SMEM
#define LB_DYN_SMEM(T, name) extern __shared__ T name[]
#endif

namespace lbrt {
__device__ __forceinline__ unsigned word(const uint4& q, int w) {
  return w == 0 ? q.x : w == 1 ? q.y : w == 2 ? q.z : q.w;
}
__device__ __forceinline__ void or_word(uint4& q, int w, unsigned v) {
  if (w == 0) q.x |= v; else if (w == 1) q.y |= v; else if (w == 2) q.z |= v; else q.w |= v;
}
/* Element j (of B bytes: 1, 2 or 4) of an array of 16-byte vectors. */
template <int B>
__device__ __forceinline__ unsigned lane(const uint4* v, int j) {
  const int byte = j * B;
  const unsigned w = word(v[byte / 16], (byte % 16) / 4);
  return B == 4 ? w : (w >> (8 * (byte % 4))) & ((1u << (8 * B)) - 1u);
}
__device__ __forceinline__ unsigned long long lane8(const uint4* v, int j) {
  const uint4& q = v[j / 2];
  return (j % 2) ? ((unsigned long long)q.w << 32 | q.z) : ((unsigned long long)q.y << 32 | q.x);
}
template <int B>
__device__ __forceinline__ void put(uint4* v, int j, unsigned bits) {
  const int byte = j * B;
  const unsigned m = B == 4 ? bits : (bits & ((1u << (8 * B)) - 1u)) << (8 * (byte % 4));
  or_word(v[byte / 16], (byte % 16) / 4, m);
}
/* The same with a run-time element index (for the rolled element loop): selects, so the
   vectors stay in registers. V is the number of vectors. */
template <int B, int V>
__device__ __forceinline__ unsigned lane_rt(const uint4* v, int j) {
  const int byte = j * B;
  uint4 q = v[0];
#pragma unroll
  for (int i = 1; i < V; ++i) q = (byte / 16 == i) ? v[i] : q;
  const unsigned w = word(q, (byte % 16) / 4);
  return B == 4 ? w : (w >> (8 * (byte % 4))) & ((1u << (8 * B)) - 1u);
}
template <int V>
__device__ __forceinline__ unsigned long long lane8_rt(const uint4* v, int j) {
  uint4 q = v[0];
#pragma unroll
  for (int i = 1; i < V; ++i) q = (j / 2 == i) ? v[i] : q;
  return (j % 2) ? ((unsigned long long)q.w << 32 | q.z) : ((unsigned long long)q.y << 32 | q.x);
}
template <int B, int V>
__device__ __forceinline__ void put_rt(uint4* v, int j, unsigned bits) {
  const int byte = j * B;
  const unsigned m = B == 4 ? bits : (bits & ((1u << (8 * B)) - 1u)) << (8 * (byte % 4));
  const int w = (byte % 16) / 4;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (byte / 16 == i) {
      v[i].x |= w == 0 ? m : 0u;
      v[i].y |= w == 1 ? m : 0u;
      v[i].z |= w == 2 ? m : 0u;
      v[i].w |= w == 3 ? m : 0u;
    }
  }
}
template <int V>
__device__ __forceinline__ void put8_rt(uint4* v, int j, unsigned long long bits) {
  const unsigned lo = (unsigned)bits, hi = (unsigned)(bits >> 32);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (j / 2 == i) {
      if (j % 2) { v[i].z = lo; v[i].w = hi; } else { v[i].x = lo; v[i].y = hi; }
    }
  }
}
/* Two f32 values as bf16 bits (lo in the low half): lb_bf16_bits' rounding, on the GPU
   by one cvt.rn.bf16x2.f32 (round to nearest even, subnormals kept), with NaN (which the
   instruction makes canonical) taken through lb_bf16_bits for its 0x7fc0 and sign. */
__device__ __forceinline__ unsigned bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  if (lo != lo || hi != hi)
    r = lowbit::jit_math::lb_bf16_bits(lo) | (lowbit::jit_math::lb_bf16_bits(hi) << 16);
  return r;
#else
  return lowbit::jit_math::lb_bf16_bits(lo) | (lowbit::jit_math::lb_bf16_bits(hi) << 16);
#endif
}
/* Two f32 values as fp8 codes (lo in the low byte), saturating to the finite range:
   numeric.hpp's f32_to_f8e4m3fn / f32_to_f8e5m2 with Saturation::finite, on the GPU by one
   cvt.rn.satfinite instruction (NaN goes through numeric.hpp for its sign). */
__device__ __forceinline__ unsigned fp8x2(float lo, float hi, bool e5m2) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  if (e5m2)
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(h) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(h) : "f"(hi), "f"(lo));
  if (lo != lo || hi != hi)
    return lowbit::jit_math::lbq_fp8_code(lo, 1.0f, e5m2) |
           (lowbit::jit_math::lbq_fp8_code(hi, 1.0f, e5m2) << 8);
  return h;
#else
  return lowbit::jit_math::lbq_fp8_code(lo, 1.0f, e5m2) |
         (lowbit::jit_math::lbq_fp8_code(hi, 1.0f, e5m2) << 8);
#endif
}
/* The bf16 value nearest x, as f32 (lb_bf16_bits' rounding; one cvt on the GPU). A NaN
   becomes lb_bf16_bits' 0x7fc0 with x's sign, written out: the encoder itself, predicated,
   issued its eight instructions for every element. */
__device__ __forceinline__ float bf16r(float x) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return x != x ? __uint_as_float((__float_as_uint(x) & 0x80000000u) | 0x7fc00000u)
                : __uint_as_float((unsigned)h << 16);
#else
  return __uint_as_float(lowbit::jit_math::lb_bf16_bits(x) << 16);
#endif
}
/* The bf16 value nearest x for a quantize epilogue's input: bf16r without its NaN rule,
   since a NaN there is refused by the finiteness check (which sees any NaN) or, unchecked,
   gives unspecified codes (docs/jit.md); the rule's sign test and selects were 3 of the
   fp8 epilogue's 40 instructions per element. */
__device__ __forceinline__ float bf16q(float x) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return __uint_as_float((unsigned)h << 16);
#else
  return bf16r(x);
#endif
}
/* FusedDesc::fast_math: e^x by the hardware's exp2 (ex2.approx: 2 ulp, subnormal results
   kept) of x log2(e) rounded to f32 (relative error up to |x| 2^-24 ln 2, 2^-17.5 at the
   clamp), divisions by the compile's --prec-div=false (div.full: 2 ulp for divisors in
   [2^-126, 2^126], 0 beyond). f64 keeps the exact functions. */
__device__ __forceinline__ float fast_exp(float x) {
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}
__device__ __forceinline__ double fast_exp(double x) { return lowbit::jit_math::lb_exp(x); }
template <class T>
__device__ __forceinline__ T fast_sigmoid(T x) { return T(1) / (T(1) + fast_exp(-x)); }
template <class T>
__device__ __forceinline__ T fast_silu(T x) { return x / (T(1) + fast_exp(-x)); }
template <class T>
__device__ __forceinline__ T fast_softplus(T x) {
  return x > T(20) ? x : lowbit::jit_math::lb_log1p_pos(fast_exp(x));
}
/* A 16-byte load with the evict-first hint (ld.global.cs): the element-wise kernel reads
   each input once. (Measured on the H100: chain8 exact 85.7% -> 90.3% of copy; the row
   kernels of the quantize epilogue lose 2-3 points with it, so they keep plain loads.) */
__device__ __forceinline__ uint4 ldcs(const void* base, unsigned long long i) {
#if defined(__CUDA_ARCH__)
  uint4 r;
  asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"((const uint4*)base + i));
  return r;
#else
  return ((const uint4*)base)[i];
#endif
}
/* A 16-byte store with the evict-first hint (st.global.cs): the element-wise kernel's
   outputs are written once. (Measured on the H100 with the wider grid: chain8 exact 2-4
   points of copy more than plain stores.) */
__device__ __forceinline__ void stcs(void* base, unsigned long long i, const uint4& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};"
               :: "l"((uint4*)base + i), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
#else
  ((uint4*)base)[i] = v;
#endif
}
__device__ __forceinline__ void put8(uint4* v, int j, unsigned long long bits) {
  uint4& q = v[j / 2];
  if (j % 2) { q.z = (unsigned)bits; q.w = (unsigned)(bits >> 32); }
  else { q.x = (unsigned)bits; q.y = (unsigned)(bits >> 32); }
}
}  // namespace lbrt
)";

// ---- dtypes in generated code ---------------------------------------------------------------

const char* num_type(Num n) { return n == Num::f64 ? "double" : "float"; }

/// C type of one element in memory.
const char* mem_type(Dtype d) {
  switch (d) {
    case Dtype::f64:
      return "unsigned long long";
    case Dtype::f32:
    case Dtype::i32:
    case Dtype::u32:
      return "unsigned";
    case Dtype::f16:
    case Dtype::bf16:
    case Dtype::i16:
      return "unsigned short";
    default:
      return "unsigned char";
  }
}

/// Expression giving the value (in the input step's Num) of element bits `b` of dtype d.
std::string decode(Dtype d, const std::string& b) {
  switch (d) {
    case Dtype::f64:
      return fmt::format("__longlong_as_double((long long)({}))", b);
    case Dtype::f32:
      return fmt::format("__uint_as_float({})", b);
    case Dtype::f16:
      return fmt::format("lowbit::f16_to_f32((unsigned short)({}))", b);
    case Dtype::bf16:
      return fmt::format("lowbit::bf16_to_f32((unsigned short)({}))", b);
    case Dtype::f8e4m3fn:
      return fmt::format("lowbit::f8e4m3fn_to_f32((unsigned char)({}))", b);
    case Dtype::f8e5m2:
      return fmt::format("lowbit::f8e5m2_to_f32((unsigned char)({}))", b);
    case Dtype::e8m0:
      return fmt::format("lowbit::e8m0_to_f32((unsigned char)({}))", b);
    case Dtype::f4e2m1:
      return fmt::format("lowbit::f4e2m1_to_f32((unsigned char)({}))", b);
    case Dtype::i8:
      return fmt::format("(double)(signed char)({})", b);
    case Dtype::u8:
      return fmt::format("(double)(unsigned char)({})", b);
    case Dtype::i16:
      return fmt::format("(double)(short)({})", b);
    case Dtype::i32:
      return fmt::format("(double)(int)({})", b);
    case Dtype::u32:
      return fmt::format("(double)(unsigned)({})", b);
    default:
      return "0";
  }
}

/// Expression giving the element bits of dtype d for value `v` (f32, or f64 for f64 and
/// integer dtypes).
std::string encode(Dtype d, const std::string& v) {
  switch (d) {
    case Dtype::f64:
      return fmt::format("(unsigned long long)__double_as_longlong({})", v);
    case Dtype::f32:
      return fmt::format("__float_as_uint({})", v);
    case Dtype::f16:
      return fmt::format("(unsigned)lowbit::f32_to_f16({})", v);
    case Dtype::bf16:
      return fmt::format("lowbit::jit_math::lb_bf16_bits({})", v);
    case Dtype::f8e4m3fn:
      return fmt::format("(unsigned)lowbit::f32_to_f8e4m3fn({})", v);
    case Dtype::f8e5m2:
      return fmt::format("(unsigned)lowbit::f32_to_f8e5m2({})", v);
    case Dtype::e8m0:
      return fmt::format("(unsigned)lowbit::f32_to_e8m0({})", v);
    case Dtype::f4e2m1:
      return fmt::format("lowbit::jit_math::lb_f4e2m1_code({})", v);
    default: {
      const std::string t =
          fmt::format("lowbit::jit_math::lb_to_int({}, {:.1f}, {:.1f})", v, int_min(d), int_max(d));
      if (d == Dtype::u32 || d == Dtype::u8)
        return fmt::format("(unsigned)(unsigned long long)({})", t);
      return fmt::format("(unsigned)(int)({})", t);
    }
  }
}

std::string dbl(double v) { return fmt::format("{:a}", v); }

/// The value of a float dtype nearest f32 `v` (cast to a narrow float).
std::string round_float(Dtype d, const std::string& v) {
  switch (d) {
    case Dtype::f32:
      return v;
    case Dtype::f16:
      return fmt::format("lowbit::f16_to_f32(lowbit::f32_to_f16({}))", v);
    case Dtype::bf16:
      return fmt::format("lbrt::bf16r({})", v);
    case Dtype::f8e4m3fn:
      return fmt::format("lowbit::f8e4m3fn_to_f32(lowbit::f32_to_f8e4m3fn({}))", v);
    case Dtype::f8e5m2:
      return fmt::format("lowbit::f8e5m2_to_f32(lowbit::f32_to_f8e5m2({}))", v);
    case Dtype::f4e2m1:
      return fmt::format("lowbit::f4e2m1_to_f32(lowbit::jit_math::lb_f4e2m1_code({}))", v);
    case Dtype::e8m0:
      return fmt::format("lowbit::e8m0_to_f32(lowbit::f32_to_e8m0({}))", v);
    default:
      return v;
  }
}

// ---- the op table ----------------------------------------------------------------------------

/// The CUDA expression of step `in` (operands named t<i>, constants c<i>).
std::string step_expr(const Program& p, const Instr& in, bool fast = false) {
  const auto t = [](int i) { return fmt::format("t{}", i); };
  if (fast) {  // FusedDesc::fast_math (the prelude's lbrt::fast_*)
    switch (in.op) {
      case Op::exp:
        return fmt::format("lbrt::fast_exp({})", t(in.a));
      case Op::sigmoid:
        return fmt::format("lbrt::fast_sigmoid({})", t(in.a));
      case Op::silu:
        return fmt::format("lbrt::fast_silu({})", t(in.a));
      case Op::softplus:
        return fmt::format("lbrt::fast_softplus({})", t(in.a));
      default:
        break;
    }
  }
  switch (in.op) {
    case Op::input:
      return fmt::format("x{}", in.slot);
    case Op::constant:
      return fmt::format("c{}", in.slot);
    case Op::add:
      return fmt::format("lb_add({}, {})", t(in.a), t(in.b));
    case Op::sub:
      return fmt::format("lb_sub({}, {})", t(in.a), t(in.b));
    case Op::mul:
      return fmt::format("lb_mul({}, {})", t(in.a), t(in.b));
    case Op::div:
      return fmt::format("lb_div({}, {})", t(in.a), t(in.b));
    case Op::minimum:
      return fmt::format("lb_min({}, {})", t(in.a), t(in.b));
    case Op::maximum:
      return fmt::format("lb_max({}, {})", t(in.a), t(in.b));
    case Op::clamp:
      return fmt::format("lb_clamp({}, {}, {})", t(in.a), t(in.b), t(in.c));
    case Op::where:
      return fmt::format("lb_where({}, {}, {})", t(in.a), t(in.b), t(in.c));
    case Op::lt:
      return fmt::format("lb_lt({}, {})", t(in.a), t(in.b));
    case Op::le:
      return fmt::format("lb_le({}, {})", t(in.a), t(in.b));
    case Op::gt:
      return fmt::format("lb_gt({}, {})", t(in.a), t(in.b));
    case Op::ge:
      return fmt::format("lb_ge({}, {})", t(in.a), t(in.b));
    case Op::eq:
      return fmt::format("lb_eq({}, {})", t(in.a), t(in.b));
    case Op::ne:
      return fmt::format("lb_ne({}, {})", t(in.a), t(in.b));
    case Op::neg:
      return fmt::format("lb_neg({})", t(in.a));
    case Op::abs:
      return fmt::format("lb_abs({})", t(in.a));
    case Op::exp:
      return fmt::format("lb_exp({})", t(in.a));
    case Op::log:
      return fmt::format("lb_log({})", t(in.a));
    case Op::sqrt:
      return fmt::format("lb_sqrt({})", t(in.a));
    case Op::rsqrt:
      return fmt::format("lb_rsqrt({})", t(in.a));
    case Op::tanh:
      return fmt::format("lb_tanh({})", t(in.a));
    case Op::sigmoid:
      return fmt::format("lb_sigmoid({})", t(in.a));
    case Op::relu:
      return fmt::format("lb_relu({})", t(in.a));
    case Op::leaky_relu:
      return fmt::format("lb_leaky_relu({}, {})", t(in.a), t(in.b));
    case Op::gelu:
      return fmt::format("lb_gelu_erf({})", t(in.a));
    case Op::gelu_tanh:
      return fmt::format("lb_gelu_tanh({})", t(in.a));
    case Op::silu:
      return fmt::format("lb_silu({})", t(in.a));
    case Op::softplus:
      return fmt::format("lb_softplus({})", t(in.a));
    case Op::pow:
      return fmt::format("lb_pow({}, {})", t(in.a), dbl(in.param));
    case Op::cast: {
      const std::string a = t(in.a);
      if (is_int(in.dtype)) {
        const std::string v = in.arg_num == Num::f32 ? "(double)" + a : a;
        return fmt::format("lb_to_int({}, {}, {})", v, dbl(int_min(in.dtype)),
                           dbl(int_max(in.dtype)));
      }
      if (in.dtype == Dtype::f64)
        return in.arg_num == Num::f32 ? fmt::format("lowbit::f32_to_f64({})", a) : a;
      // A constant's f32 value comes converted by the host (numeric.hpp's f64_to_f32, the
      // same bits): the integer conversion inlined per constant doubled NVRTC's time.
      const Instr& src = p.code[static_cast<size_t>(in.a)];
      const std::string f =
          in.arg_num == Num::f64
              ? (src.op == Op::constant ? fmt::format("cf{}", src.slot)
                                        : fmt::format("lowbit::f64_to_f32({})", a))
              : a;
      return round_float(in.dtype, f);
    }
  }
  return "0";
}

/// sizeof(Params) of a kernel with ni inputs, no outputs and nc constants (Gen::params).
int params_size(size_t ni, size_t no, size_t nc, const Variant& v) {
  const size_t isz = v.idx32 ? 4 : 8;
  size_t b = 8 * (std::max<size_t>(ni, 1) + std::max<size_t>(no, 1) + std::max<size_t>(nc, 1));
  b += 4 * std::max<size_t>(nc, 1);  // cf
  b = (b + isz - 1) / isz * isz + isz;
  if (!v.vec || v.rows || v.cols) b += isz * v.nd * (1 + std::max<size_t>(ni + no, 1));
  if (v.quant) b = (b + 7) / 8 * 8 + 7 * 8 + 2 * isz;
  return static_cast<int>((b + 7) / 8 * 8);
}

struct Gen {
  const Program& p;
  const Variant& v;
  size_t ni, no, nc;
  std::string idx;               // the index type
  std::vector<uint8_t> uniform;  // per step: depends only on constants and single elements

  Gen(const Program& prog, const Variant& var)
      : p(prog),
        v(var),
        ni(prog.input_dtypes.size()),
        no(prog.output_dtypes.size()),
        nc(prog.constants.size()),
        idx(var.idx32 ? "unsigned" : "unsigned long long") {
    uniform.assign(p.code.size(), 0);
    for (size_t i = 0; i < p.code.size(); ++i) {
      const Instr& in = p.code[i];
      if (in.op == Op::constant) {
        uniform[i] = 1;
      } else if (in.op == Op::input) {
        uniform[i] = scalar_input(static_cast<size_t>(in.slot));
      } else {
        bool u = true;
        for (int x : {in.a, in.b, in.c})
          if (x >= 0) u = u && uniform[x];
        uniform[i] = u;
      }
    }
  }

  bool scalar_input(size_t k) const {
    return k < v.cls.size() && v.cls[k] == Layout::Class::scalar;
  }
  Num input_num(size_t k) const { return num_of(Type{p.input_dtypes[k], false, false}); }
  Num output_num(size_t o) const { return p.code[p.outputs[o]].num; }

  std::string params() const {
    std::string s = "struct Params {\n";
    s += fmt::format(
        "  const void* in[{}];\n  void* out[{}];\n  double c[{}];\n  float cf[{}];\n  {} n;\n",
        std::max<size_t>(ni, 1), std::max<size_t>(no, 1), std::max<size_t>(nc, 1),
        std::max<size_t>(nc, 1), idx);
    if (!v.vec || v.rows || v.cols)
      s += fmt::format("  {0} ext[{1}];\n  {0} st[{2}][{1}];\n", idx, v.nd,
                       std::max<size_t>(ni + no, 1));
    if (v.quant)
      s += fmt::format(
          "  void* qcodes;\n  void* qscale;\n  void* qzero;\n  unsigned long long* qflag;\n"
          "  unsigned long long* qhost;\n  unsigned* qamax;\n  float* qglobal;\n"
          "  {0} qk;\n  {0} qrows;\n",
          idx);
    return s + "};\n";
  }

  /// lb_eval's arguments: element inputs x<k>, uniform steps t<i>, outputs y<o>.
  std::vector<std::string> eval_args(bool declare) const {
    std::vector<std::string> a;
    for (size_t k = 0; k < ni; ++k)
      if (!scalar_input(k))
        a.push_back(declare ? fmt::format("{} x{}", num_type(input_num(k)), k)
                            : fmt::format("x{}", k));
    for (size_t i = 0; i < p.code.size(); ++i)
      if (uniform[i] && used_in_eval(i))
        a.push_back(declare ? fmt::format("{} t{}", num_type(p.code[i].num), i)
                            : fmt::format("t{}", i));
    for (size_t o = 0; o < no; ++o)
      a.push_back(declare ? fmt::format("{}& y{}", num_type(output_num(o)), o)
                          : fmt::format("y{}", o));
    return a;
  }

  /// Whether lb_eval reads uniform step i (a non-uniform step or an output does).
  bool used_in_eval(size_t i) const {
    for (size_t j = 0; j < p.code.size(); ++j) {
      if (uniform[j]) continue;
      const Instr& in = p.code[j];
      if (in.a == static_cast<int>(i) || in.b == static_cast<int>(i) || in.c == static_cast<int>(i))
        return true;
    }
    for (int o : p.outputs)
      if (o == static_cast<int>(i)) return true;
    return false;
  }

  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) s += ", ";
      s += v[i];
    }
    return s;
  }

  std::string eval_fn() const {
    std::string s = "__device__ __forceinline__ void lb_eval(" + join(eval_args(true)) + ") {\n";
    s += "  using namespace lowbit::jit_math;\n";
    for (size_t i = 0; i < p.code.size(); ++i) {
      if (uniform[i]) continue;
      const Instr& in = p.code[i];
      s += fmt::format("  const {} t{} = {};\n", num_type(in.num), i, step_expr(p, in, v.fast));
    }
    for (size_t o = 0; o < no; ++o) s += fmt::format("  y{} = t{};\n", o, p.outputs[o]);
    return s + "}\n";
  }

  std::string eval_call() const { return "lb_eval(" + join(eval_args(false)) + ");"; }

  /// Kernel start: indices, constants, single-element inputs and every uniform step.
  std::string prologue() const {
    std::string s = "  using namespace lowbit::jit_math;\n";
    for (size_t c = 0; c < nc; ++c)
      s += fmt::format("  const double c{0} = p.c[{0}];\n  const float cf{0} = p.cf[{0}];\n", c);
    s += fmt::format(
        "  const {0} n = p.n;\n  const {0} tid = ({0})blockIdx.x * blockDim.x + "
        "threadIdx.x;\n  const {0} nthreads = ({0})gridDim.x * blockDim.x;\n",
        idx);
    for (size_t k = 0; k < ni; ++k)
      if (scalar_input(k)) s += load_elem(k, "0", "  ");
    for (size_t i = 0; i < p.code.size(); ++i)
      if (uniform[i])
        s += fmt::format("  const {} t{} = {};\n", num_type(p.code[i].num), i,
                         step_expr(p, p.code[i], v.fast));
    return s;
  }

  std::string declare_outputs(const std::string& indent) const {
    std::string s;
    for (size_t o = 0; o < no; ++o)
      s += fmt::format("{}{} y{};\n", indent, num_type(output_num(o)), o);
    return s;
  }

  /// Memory bits of element `off` of input k.
  std::string in_bits(size_t k, const std::string& off) const {
    const Dtype d = p.input_dtypes[k];
    if (is_packed(d))
      return fmt::format(
          "((((const unsigned char*)p.in[{0}])[({1}) >> 1] >> ((({1}) & 1) * 4)) & "
          "15u)",
          k, off);
    return fmt::format("((const {}*)p.in[{}])[{}]", mem_type(d), k, off);
  }

  std::string load_elem(size_t k, const std::string& off, const std::string& indent) const {
    return fmt::format("{}const {} x{} = {};\n", indent, num_type(input_num(k)), k,
                       decode(p.input_dtypes[k], in_bits(k, off)));
  }

  std::string store_elem(size_t o, const std::string& off, const std::string& indent) const {
    const Dtype d = p.output_dtypes[o];
    return fmt::format("{}(({}*)p.out[{}])[{}] = ({}){};\n", indent, mem_type(d), o, off,
                       mem_type(d), encode(d, fmt::format("y{}", o)));
  }

  // ---- vec ----

  /// The row inputs' vectors b<k>[] and the column inputs' values x<k> of the group starting
  /// at element `e0`: a group lies in one row (the last extent is a multiple of G) and starts
  /// 16-byte aligned (launch.cpp). Plain loads: a broadcast row is read again by every row
  /// of the output.
  std::string row_vectors(const std::string& e0, int g, const std::string& indent) const {
    if (!v.rows && !v.cols) return {};
    std::string s = offsets(e0, indent, [&](size_t k) { return bcast_input(k); });
    for (size_t k = 0; k < ni; ++k)  // a column input: the group's one value, x<k> for all
      if (col_input(k)) s += load_elem(k, fmt::format("o{}", k), indent);
    for (size_t k = 0; k < ni; ++k) {
      if (!row_input(k)) continue;
      const int vk = vecs(p.input_dtypes[k], g);
      const int per = 16 / elem_bytes(p.input_dtypes[k]);
      s += fmt::format("{}uint4 b{}[{}];\n", indent, k, vk);
      s += fmt::format(
          "#pragma unroll\n{0}for (int w = 0; w < {2}; ++w) b{1}[w] = __ldg((const "
          "uint4*)p.in[{1}] "
          "+ o{1} / {3} + w);\n",
          indent, k, vk, per);
    }
    return s;
  }

  /// Whether input k is read as broadcast rows (Variant::rows).
  bool row_input(size_t k) const { return k < ni && k < 32 && ((v.rows >> k) & 1u) != 0; }
  /// Whether input k is read as a broadcast column (Variant::cols).
  bool col_input(size_t k) const { return k < ni && k < 32 && ((v.cols >> k) & 1u) != 0; }
  bool bcast_input(size_t k) const { return row_input(k) || col_input(k); }

  int group() const {
    int min_bytes = 16;
    for (size_t k = 0; k < ni + no; ++k) {
      if (v.cls[k] != Layout::Class::full && !row_input(k)) continue;
      const Dtype d = k < ni ? p.input_dtypes[k] : p.output_dtypes[k - ni];
      min_bytes = std::min(min_bytes, elem_bytes(d));
    }
    return 16 / min_bytes;
  }

  /// Groups per thread step. One 16-byte load per operand per step keeps enough bytes in
  /// flight at full occupancy; every extra group is another inlined copy of the
  /// expression (compile time), so only f32-only kernels with one input take two.
  int unroll(int g) const {
    int vecs = 0;
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full) vecs += g * elem_bytes(p.input_dtypes[k]) / 16;
    return vecs == 1 && g <= 4 ? 2 : 1;
  }

  int vecs(Dtype d, int g) const { return g * elem_bytes(d) / 16; }

  /// A rough cost of one element of the expression, in simple ops.
  int weight() const {
    int w = 0;
    for (size_t i = 0; i < p.code.size(); ++i) {
      if (uniform[i]) continue;
      switch (p.code[i].op) {
        case Op::exp:
        case Op::log:
        case Op::tanh:
        case Op::sigmoid:
        case Op::silu:
        case Op::softplus:
        case Op::gelu:
        case Op::gelu_tanh:
        case Op::pow:
          w += 12;
          break;
        case Op::div:
        case Op::sqrt:
        case Op::rsqrt:
        case Op::cast:
          w += 4;
          break;
        default:
          w += 1;
      }
    }
    for (size_t k = 0; k < ni + no; ++k) {
      const Dtype d = k < ni ? p.input_dtypes[k] : p.output_dtypes[k - ni];
      if (d != Dtype::f32 && d != Dtype::bf16 && !is_int(d)) w += 4;  // numeric.hpp's codecs
    }
    return w;
  }

  /// Whether the loop over a group's elements stays rolled: unrolled, each element is an
  /// inlined copy of the expression (fastest, but NVRTC's time grows with the copies), so
  /// big expressions on wide groups run the loop with a run-time index instead.
  bool rolled(int g) const { return weight() * g > kRollAbove; }
  static constexpr int kRollAbove = 400;

  std::string lane(Dtype d, const std::string& arr, const std::string& j, int g,
                   bool runtime) const {
    const int vk = vecs(d, g);
    if (runtime)
      return elem_bytes(d) == 8
                 ? fmt::format("lbrt::lane8_rt<{}>({}, {})", vk, arr, j)
                 : fmt::format("lbrt::lane_rt<{}, {}>({}, {})", elem_bytes(d), vk, arr, j);
    return elem_bytes(d) == 8 ? fmt::format("lbrt::lane8({}, {})", arr, j)
                              : fmt::format("lbrt::lane<{}>({}, {})", elem_bytes(d), arr, j);
  }
  std::string put(Dtype d, const std::string& arr, const std::string& j, const std::string& bits,
                  int g, bool runtime) const {
    const int vk = vecs(d, g);
    if (runtime)
      return elem_bytes(d) == 8 ? fmt::format("lbrt::put8_rt<{}>({}, {}, {})", vk, arr, j, bits)
                                : fmt::format("lbrt::put_rt<{}, {}>({}, {}, (unsigned)({}))",
                                              elem_bytes(d), vk, arr, j, bits);
    return elem_bytes(d) == 8
               ? fmt::format("lbrt::put8({}, {}, {})", arr, j, bits)
               : fmt::format("lbrt::put<{}>({}, {}, (unsigned)({}))", elem_bytes(d), arr, j, bits);
  }

  /// Loads of the u groups g0 + u * nthreads (those below `full`) into arrays
  /// <prefix><k>[u][] of whole 16-byte vectors, with the evict-first hint (lbrt::ldcs).
  std::string load_groups(const std::string& prefix, const std::string& g0, int g, int u,
                          const std::string& indent) const {
    std::string s =
        fmt::format("{}#pragma unroll\n{}for (int u = 0; u < {}; ++u) {{\n", indent, indent, u);
    s += fmt::format("{}  const {} g = {} + u * nthreads;\n", indent, idx, g0);
    s += indent + "  if (g < full) {\n";
    for (size_t k = 0; k < ni; ++k) {
      if (v.cls[k] != Layout::Class::full) continue;
      const int vk = vecs(p.input_dtypes[k], g);
      s += fmt::format(
          "#pragma unroll\n{3}    for (int w = 0; w < {1}; ++w) {2}{0}[u][w] = "
          "lbrt::ldcs(p.in[{0}], g * {1} + w);\n",
          k, vk, prefix, indent);
    }
    s += indent + "  }\n" + indent + "}\n";
    return s;
  }

  /// bf16 outputs of unrolled element loops are rounded in pairs (one conversion
  /// instruction on the GPU, lb_bf16_bits' bits).
  bool bf16_pairs(size_t o, int g) const {
    return p.output_dtypes[o] == Dtype::bf16 && !rolled(g) && g % 2 == 0;
  }

  /// Whether output o is stored element-wise by the kernel (the quantized output is not:
  /// its values go to the epilogue).
  bool stored_output(size_t o) const { return static_cast<int>(o) != p.quantized_output; }

  /// A group's stored outputs as whole 16-byte words w<o>[] (zeroed), and bf16 values kept
  /// for pair rounding yb<o>[].
  std::string output_words(int g, const std::string& indent) const {
    std::string s;
    for (size_t o = 0; o < no; ++o) {
      if (!stored_output(o)) continue;
      const int wo = vecs(p.output_dtypes[o], g);
      s += fmt::format("{}uint4 w{}[{}];\n", indent, o, wo);
      s += fmt::format(
          "#pragma unroll\n{2}for (int w = 0; w < {1}; ++w) w{0}[w] = "
          "make_uint4(0u, 0u, 0u, 0u);\n",
          o, wo, indent);
      if (bf16_pairs(o, g)) s += fmt::format("{}float yb{}[{}];\n", indent, o, g);
    }
    return s;
  }

  /// Element j's stored outputs y<o> into the group's words (unrolled: constant lanes;
  /// `runtime` for a rolled loop).
  std::string put_outputs(int g, bool runtime, const std::string& indent) const {
    std::string s;
    for (size_t o = 0; o < no; ++o) {
      if (!stored_output(o)) continue;
      const Dtype d = p.output_dtypes[o];
      if (bf16_pairs(o, g) && !runtime) {
        s += fmt::format("{}yb{}[j] = y{};\n", indent, o, o);
        continue;
      }
      s += indent +
           put(d, fmt::format("w{}", o), "j", encode(d, fmt::format("y{}", o)), g, runtime) + ";\n";
    }
    return s;
  }

  /// The group's words to memory: group `grp` of every stored output (evict-first stores),
  /// bf16 pairs rounded first.
  std::string store_words(int g, bool runtime, const std::string& grp,
                          const std::string& indent) const {
    std::string s;
    for (size_t o = 0; o < no; ++o)
      if (stored_output(o) && bf16_pairs(o, g) && !runtime)
        s += fmt::format(
            "#pragma unroll\n{2}for (int q = 0; q < {1}; ++q) lbrt::or_word(w{0}[q / 4], q % 4, "
            "lbrt::bf16x2(yb{0}[2 * q], yb{0}[2 * q + 1]));\n",
            o, g / 2, indent);
    for (size_t o = 0; o < no; ++o) {
      if (!stored_output(o)) continue;
      const int wo = vecs(p.output_dtypes[o], g);
      s += fmt::format(
          "#pragma unroll\n{3}for (int w = 0; w < {1}; ++w) lbrt::stcs(p.out[{0}], "
          "{2} * {1} + w, w{0}[w]);\n",
          o, wo, grp, indent);
    }
    return s;
  }

  /// The grid-stride loop covers the whole groups in 16-byte vectors; the next groups'
  /// loads are issued before the current ones are computed (the loop keeps two sets of
  /// input vectors), so that memory stays busy during the arithmetic. The last n % G
  /// elements (one partial group in the whole grid) follow one per thread, so the loop
  /// has no element loads or stores and NVRTC compiles one copy of them.
  /// (More blocks per SM measured slower, H100, session 21: __launch_bounds__(256, 7 or 8)
  /// holds chain8 at 32 registers, 8 bytes spilled, and it ran at 83.3-83.8% of copy
  /// against 89.7-90.3% at ptxas's 39; silu(a) * b 91.3-92.2% against 90.9-91.9%.)
  std::string vec_kernel(int g, int u) const {
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ") lowbit_fused(const Params p) {\n";
    s += prologue();
    s += fmt::format("  const {0} full = n / {1};\n", idx, g);
    s += fmt::format("  const {} step = nthreads * {};\n", idx, u);
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full)
        s += fmt::format("  uint4 q{}[{}][{}];\n", k, u, vecs(p.input_dtypes[k], g));
    s += load_groups("q", "tid", g, u, "  ");
    s += fmt::format("  for ({0} g0 = tid; g0 < full; g0 += step) {{\n", idx);
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full) {
        const int vk = vecs(p.input_dtypes[k], g);
        s += fmt::format(
            "    uint4 r{0}[{1}][{2}];\n#pragma unroll\n    for (int u = 0; u < {1}; "
            "++u)\n#pragma unroll\n      for (int w = 0; w < {2}; ++w) r{0}[u][w] = "
            "q{0}[u][w];\n",
            k, u, vk);
      }
    s += load_groups("q", "g0 + step", g, u, "    ");
    s += fmt::format("#pragma unroll\n    for (int u = 0; u < {}; ++u) {{\n", u);
    s += fmt::format("      const {} g = g0 + u * nthreads;\n      if (g >= full) break;\n", idx);
    s += output_words(g, "      ");
    s += row_vectors(fmt::format("g * {}", g), g, "      ");
    s += fmt::format("#pragma unroll{}\n      for (int j = 0; j < {}; ++j) {{\n",
                     rolled(g) ? " 1" : "", g);
    for (size_t k = 0; k < ni; ++k) {
      const Dtype d = p.input_dtypes[k];
      if (row_input(k))
        s += fmt::format("        const {} x{} = {};\n", num_type(input_num(k)), k,
                         decode(d, lane(d, fmt::format("b{}", k), "j", g, rolled(g))));
      if (v.cls[k] != Layout::Class::full) continue;
      s += fmt::format("        const {} x{} = {};\n", num_type(input_num(k)), k,
                       decode(d, lane(d, fmt::format("r{}[u]", k), "j", g, rolled(g))));
    }
    s += declare_outputs("        ");
    s += "        " + eval_call() + "\n";
    s += put_outputs(g, rolled(g), "        ");
    s += "      }\n";
    s += store_words(g, rolled(g), "g", "      ");
    s += "    }\n  }\n";
    // The tail: elements full * G .. n - 1, one per thread of the first threads.
    s += fmt::format("  {{\n    const {} e = full * {} + tid;\n    if (e < n) {{\n", idx, g);
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full) s += load_elem(k, "e", "      ");
    if (v.rows || v.cols) {
      s += offsets("e", "      ", [&](size_t k) { return bcast_input(k); });
      for (size_t k = 0; k < ni; ++k)
        if (bcast_input(k)) s += load_elem(k, fmt::format("o{}", k), "      ");
    }
    s += declare_outputs("      ");
    s += "      " + eval_call() + "\n";
    for (size_t o = 0; o < no; ++o) s += store_elem(o, "e", "      ");
    s += "    }\n  }\n}\n";
    return s;
  }

  // ---- strided ----

  /// Offsets o<k> of element `e` in the operands `keep` accepts (the strided kernels: all, a
  /// single-element input's staying 0; the vector kernel: its broadcast inputs).
  template <class Keep>
  std::string offsets(const std::string& e, const std::string& indent, Keep keep) const {
    const size_t nops = ni + no;
    std::string s = fmt::format("{}{} rem = {};\n", indent, idx, e);
    for (size_t k = 0; k < nops; ++k)
      if (keep(k)) s += fmt::format("{}{} o{} = 0;\n", indent, idx, k);
    for (int d = v.nd - 1; d >= 0; --d) {
      if (d > 0) {
        s += fmt::format("{0}{{ const {1} i = rem % p.ext[{2}]; rem /= p.ext[{2}];\n", indent, idx,
                         d);
      } else {
        s += fmt::format("{}{{ const {} i = rem;\n", indent, idx);
      }
      for (size_t k = 0; k < nops; ++k)
        if (keep(k) && (k >= ni || !scalar_input(k)))
          s += fmt::format("{}  o{} += i * p.st[{}][{}];\n", indent, k, k, d);
      s += indent + "}\n";
    }
    return s;
  }

  std::string offsets(const std::string& e, const std::string& indent) const {
    return offsets(e, indent, [](size_t) { return true; });
  }

  std::string strided_kernel() const {
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ") lowbit_fused(const Params p) {\n";
    s += prologue();
    auto element = [&](const std::string& indent, bool pair) {
      std::string b = offsets("e", indent);
      for (size_t k = 0; k < ni; ++k)
        if (!scalar_input(k)) b += load_elem(k, fmt::format("o{}", k), indent);
      b += declare_outputs(indent);
      b += indent + eval_call() + "\n";
      for (size_t o = 0; o < no; ++o) {
        if (pair && is_packed(p.output_dtypes[o])) {
          b += fmt::format("{}byte{} |= ({}) << (4 * h);\n", indent, o,
                           encode(p.output_dtypes[o], fmt::format("y{}", o)));
        } else {
          b += store_elem(o, fmt::format("o{}", ni + o), indent);
        }
      }
      return b;
    };
    if (!v.pair) {
      s += fmt::format("  for ({} e = tid; e < n; e += nthreads) {{\n", idx);
      s += element("    ", false);
      return s + "  }\n}\n";
    }
    // Element pairs: packed outputs get whole bytes.
    s += fmt::format("  const {} units = (n + 1) / 2;\n", idx);
    s += fmt::format("  for ({} u = tid; u < units; u += nthreads) {{\n", idx);
    for (size_t o = 0; o < no; ++o)
      if (is_packed(p.output_dtypes[o])) s += fmt::format("    unsigned byte{} = 0u;\n", o);
    s += "    for (int h = 0; h < 2; ++h) {\n";
    s += fmt::format("      const {} e = 2 * u + h;\n      if (e >= n) break;\n", idx);
    s += element("      ", true);
    s += "    }\n";
    for (size_t o = 0; o < no; ++o)
      if (is_packed(p.output_dtypes[o]))
        s += fmt::format("    ((unsigned char*)p.out[{0}])[u] = (unsigned char)byte{0};\n", o);
    return s + "  }\n}\n";
  }

  // ---- the quantize epilogue: a block per row ----

  /// What the scheme needs from the kernel.
  struct QuantShape {
    enum Kind { integer, fp8, mx4, mx8, nv4 } kind = integer;
    bool block = false;  ///< per-block groups (else one per row)
    int b = 0;           ///< block size
    bool affine = false;
    bool packed = false;  ///< 4-bit codes
    bool e5m2 = false;
    int qmin = 0, qmax = 0, sd = 0, emax = 0;
  };
  QuantShape quant_shape() const {
    const QuantScheme& sc = p.scheme;
    QuantShape q;
    switch (sc.format) {
      case QuantFormat::fp8e4m3:
      case QuantFormat::fp8e5m2:
        q.kind = QuantShape::fp8;
        q.e5m2 = sc.format == QuantFormat::fp8e5m2;
        break;
      case QuantFormat::mxfp4:
        q.kind = QuantShape::mx4;
        q.emax = 2;
        break;
      case QuantFormat::nvfp4:
        q.kind = QuantShape::nv4;
        break;
      case QuantFormat::mxfp8e4m3:
      case QuantFormat::mxfp8e5m2:
        q.kind = QuantShape::mx8;
        q.e5m2 = sc.format == QuantFormat::mxfp8e5m2;
        q.emax = q.e5m2 ? 15 : 8;
        break;
      default:
        q.kind = QuantShape::integer;
        q.qmin = sc.qmin();
        q.qmax = sc.qmax();
        q.affine = !sc.symmetric;
        q.sd = sc.scale_dtype == Dtype::f16 ? 1 : sc.scale_dtype == Dtype::bf16 ? 2 : 0;
        break;
    }
    q.block = sc.granularity == Granularity::block;
    q.b = q.block ? sc.block : 0;
    q.packed = is_packed(sc.code_dtype());
    return q;
  }

  /// Statements folding value `v` into the group statistics a / lo / hi.
  static std::string fold_stats(const QuantShape& q, const std::string& v, const std::string& a,
                                const std::string& lo, const std::string& hi,
                                const std::string& indent) {
    if (q.affine)
      return fmt::format("{0}{1} = {3} < {1} ? {3} : {1};\n{0}{2} = {3} > {2} ? {3} : {2};\n",
                         indent, lo, hi, v);
    // fmaxf(a, |v|): one FMNMX with an absolute-value operand (a NaN v leaves a as the
    // compare-and-select form did; a itself is never NaN).
    return fmt::format("{0}{1} = fmaxf({1}, fabsf({2}));\n", indent, a, v);
  }

  /// Statements computing a group's parameters from a / lo / hi: `inv` (float) and `z`
  /// (int: the zero point, or the MX scale code), and storing the scale (and zero) of
  /// group `g` to global memory.
  std::string group_params(const QuantShape& q, const std::string& g, const std::string& indent,
                           bool store = true) const {
    std::string s;
    switch (q.kind) {
      case QuantShape::integer:
        if (q.affine) {
          s += fmt::format("{}const float sc = lbq_int_affine_scale(lo, hi, {}, {}, {});\n", indent,
                           q.qmin, q.qmax, q.sd);
          s += fmt::format("{}const float inv = lbq_inv(sc);\n", indent);
          s += fmt::format("{}const int z = lbq_int_affine_zero(lo, inv, {}, {});\n", indent,
                           q.qmin, q.qmax);
        } else {
          s += fmt::format("{}const float sc = lbq_int_sym_scale(a, {}, {});\n", indent, q.qmax,
                           q.sd);
          s +=
              fmt::format("{}const float inv = lbq_inv(sc);\n{}const int z = 0;\n", indent, indent);
        }
        break;
      case QuantShape::fp8:
        s += fmt::format("{}const float sc = lbq_fp8_scale(a, {});\n", indent,
                         q.e5m2 ? "true" : "false");
        s += fmt::format("{}const float inv = lbq_inv(sc);\n{}const int z = 0;\n", indent, indent);
        break;
      case QuantShape::nv4:
        // The block's e4m3 scale code (the tensor's global scale is lbq_global: the kernel's
        // start, from the statistics kernel's absmax); the codes take inv = the block's
        // total scale and z = the bits of its reciprocal (lbq_nvfp4_code).
        s += fmt::format("{}const unsigned lbq_code = lbq_nvfp4_block_scale(a, lbq_global);\n",
                         indent);
        s += fmt::format("{}const float inv = lbq_nvfp4_total(lbq_global, lbq_code);\n", indent);
        s += fmt::format("{}const int z = __float_as_int(lbq_inv(inv));\n", indent);
        break;
      default:
        s += fmt::format("{}const float inv = 0.0f;\n", indent);
        s += fmt::format("{}const int z = (int)lbq_mx_scale(a, {});\n", indent, q.emax);
        break;
    }
    return store ? s + group_stores(q, g, indent) : s;
  }

  /// Stores of group g's scale (and zero point) from group_params' variables.
  std::string group_stores(const QuantShape& q, const std::string& g,
                           const std::string& indent) const {
    switch (q.kind) {
      case QuantShape::nv4:
        return fmt::format("{}((unsigned char*)p.qscale)[{}] = (unsigned char)lbq_code;\n", indent,
                           g);
      case QuantShape::mx4:
      case QuantShape::mx8:
        return fmt::format("{}((unsigned char*)p.qscale)[{}] = (unsigned char)z;\n", indent, g);
      default:
        break;
    }
    const Dtype sdt = p.scheme.is_integer() ? p.scheme.scale_dtype : Dtype::f32;
    std::string s;
    switch (sdt) {
      case Dtype::f16:
        s = fmt::format(
            "{}((unsigned short*)p.qscale)[{}] = lowbit::f32_to_f16(sc, "
            "lowbit::Saturation::finite);\n",
            indent, g);
        break;
      case Dtype::bf16:
        s = fmt::format(
            "{}((unsigned short*)p.qscale)[{}] = lowbit::f32_to_bf16(sc, "
            "lowbit::Saturation::finite);\n",
            indent, g);
        break;
      default:
        s = fmt::format("{}((float*)p.qscale)[{}] = sc;\n", indent, g);
    }
    if (q.kind == QuantShape::integer && q.affine)
      s += fmt::format("{}((int*)p.qzero)[{}] = z;\n", indent, g);
    return s;
  }

  /// The code of value `v` with parameters inv / z.
  static std::string code_of(const QuantShape& q, const std::string& v, const std::string& inv,
                             const std::string& z) {
    switch (q.kind) {
      case QuantShape::integer:
        return fmt::format("(unsigned)lbq_int_code({}, {}, {}, {}, {})", v, inv, z, q.qmin, q.qmax);
      case QuantShape::fp8:
        return fmt::format("lbq_fp8_code({}, {}, {})", v, inv, q.e5m2 ? "true" : "false");
      case QuantShape::mx4:
        return fmt::format("lbq_mxfp4_code({}, (unsigned){})", v, z);
      case QuantShape::nv4:
        return fmt::format("lbq_nvfp4_code({}, {}, __int_as_float({}))", v, inv, z);
      default:
        return fmt::format("lbq_mxfp8_code({}, (unsigned){}, {})", v, z, q.e5m2 ? "true" : "false");
    }
  }

  /// The value the quantizer reads: the output's f32 value rounded to its dtype (bf16:
  /// bf16q, whose NaN bits may differ from the unfused value's; no code depends on them).
  std::string quant_value(const std::string& y) const {
    const Dtype d = p.output_dtypes[static_cast<size_t>(p.quantized_output)];
    return d == Dtype::bf16 ? fmt::format("lbrt::bf16q({})", y) : round_float(d, y);
  }

  /// Statements after value v of flat element e is known: shared memory slot `at`, the
  /// row statistics (per-row groups) and the finiteness check.
  /// row_check (the shared-memory kernel's symmetric per-row groups): the row's absmax as an
  /// unsigned max of the values' magnitude bits, lbq_ab, which reaches Inf's bits only when
  /// a NaN or Inf is there: the finiteness check then costs nothing per element, and the
  /// row is searched only when the block's flag says so (quant_kernel).
  std::string quant_element(const QuantShape& q, const std::string& at, const std::string& indent,
                            bool row_check = false) const {
    std::string s = fmt::format("{}const float v = {};\n", indent,
                                quant_value(fmt::format("y{}", p.quantized_output)));
    if (!at.empty()) s += fmt::format("{}lbq_v[{}] = v;\n", indent, at);
    if (row_check)
      return s +
             fmt::format("{0}lbq_ab = max(lbq_ab, __float_as_uint(v) & 0x7fffffffu);\n", indent);
    if (!q.block) s += fold_stats(q, "v", "lbq_a", "lbq_lo", "lbq_hi", indent);
    if (p.check_finite)
      s += indent + "{ const unsigned vb = __float_as_uint(v);\n" +
           report_non_finite("e", indent + "  ") + indent + "}\n";
    return s;
  }

  /// A NaN / Inf among the values reports its flat element `e` (its bits in `vb`): the
  /// smallest such element wins (atomicMax of the complement; bit 0 says NaN rather than Inf).
  static std::string report_non_finite(const std::string& e, const std::string& indent) {
    return fmt::format(
        "{0}if ((vb & 0x7f800000u) == 0x7f800000u)\n"
        "{0}  atomicMax(p.qflag, ~((unsigned long long)({1}) * 2ull + ((vb & 0x7fffffu) != 0u ? "
        "1ull : 0ull)));\n",
        indent, e);
  }

  /// The statistics lbq_a (or lbq_lo / lbq_hi) folded across lanes by xor shuffles, over the
  /// offsets `loop` (a for-header opening a block) runs through.
  static std::string xor_fold(const QuantShape& q, const std::string& loop) {
    std::string s = loop;
    if (q.affine)
      s += "      const float l2 = __shfl_xor_sync(0xffffffffu, lbq_lo, o);\n"
           "      const float h2 = __shfl_xor_sync(0xffffffffu, lbq_hi, o);\n"
           "      lbq_lo = l2 < lbq_lo ? l2 : lbq_lo;\n      lbq_hi = h2 > lbq_hi ? h2 : "
           "lbq_hi;\n";
    else
      s += "      const float a2 = __shfl_xor_sync(0xffffffffu, lbq_a, o);\n"
           "      lbq_a = a2 > lbq_a ? a2 : lbq_a;\n";
    return s + "    }\n";
  }

  /// Per-row groups: each warp's share of the row's statistics into red[0..2][warp] (`red`
  /// the array expression), then the block's barrier. row_check: the magnitude bits lbq_ab
  /// (a symmetric row's absmax, the finiteness test riding on it) into red[0], by one
  /// __reduce_max_sync.
  std::string warp_partials(const QuantShape& q, const std::string& red, bool row_check) const {
    if (row_check)
      return fmt::format(
          "    lbq_ab = __reduce_max_sync(0xffffffffu, lbq_ab);\n"
          "    if (lbq_lane == 0) {}[0][lbq_warp] = __uint_as_float(lbq_ab);\n"
          "    __syncthreads();\n",
          red);
    std::string s = xor_fold(q, "    for (int o = 16; o > 0; o >>= 1) {\n");
    s += fmt::format(
        "    if (lbq_lane == 0) {{\n      {0}[0][lbq_warp] = lbq_a;\n"
        "      {0}[1][lbq_warp] = lbq_lo;\n      {0}[2][lbq_warp] = lbq_hi;\n    }}\n"
        "    __syncthreads();\n",
        red);
    return s;
  }

  /// The row's a / lo / hi from the warps' partials in `red` (row_check: also its magnitude
  /// bits `ab`, Inf's or more when the row holds a NaN / Inf).
  std::string fold_partials(const QuantShape& q, const std::string& red, const std::string& indent,
                            bool row_check) const {
    if (row_check)
      return fmt::format(
          "{0}unsigned ab = 0u;\n"
          "{0}for (int w = 0; w < lbq_nwarps; ++w) ab = max(ab, __float_as_uint({1}[0][w]));\n"
          "{0}const float a = __uint_as_float(ab), lo = 0.0f, hi = 0.0f;\n"
          "{0}(void)a; (void)lo; (void)hi;\n",
          indent, red);
    std::string s = fmt::format(
        "{0}float a = 0.0f, lo = 0.0f, hi = 0.0f;\n{0}for (int w = 0; w < lbq_nwarps; ++w) {{\n",
        indent);
    s += fold_stats(q, red + "[0][w]", "a", "lo", "hi", indent + "  ");
    if (q.affine)
      s += fmt::format(
          "{0}  lo = {1}[1][w] < lo ? {1}[1][w] : lo;\n{0}  hi = {1}[2][w] > hi ? {1}[2][w] : "
          "hi;\n",
          indent, red);
    return s + indent + "}\n" + indent + "(void)a; (void)lo; (void)hi;\n";
  }

  /// Declarations of the full inputs' vector arrays <arr><k>[] for groups of g elements.
  std::string declare_vectors(const std::string& arr, int g, const std::string& indent) const {
    std::string s;
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full)
        s += fmt::format("{}uint4 {}{}[{}];\n", indent, arr, k, vecs(p.input_dtypes[k], g));
    return s;
  }

  /// Loads of the full inputs' 16-byte vectors of group `grp` (an index expression) into
  /// <arr><k>[]: evict-first (lbrt::ldcs) for data read once, plain for data read again
  /// soon; zeros where `guard` (an expression, if given) is false.
  std::string load_vectors(const std::string& arr, const std::string& grp, int g, bool evict_first,
                           const std::string& indent, const std::string& guard = {}) const {
    std::string s;
    for (size_t k = 0; k < ni; ++k) {
      if (v.cls[k] != Layout::Class::full) continue;
      const int vk = vecs(p.input_dtypes[k], g);
      std::string src = evict_first
                            ? fmt::format("lbrt::ldcs(p.in[{}], ({}) * {} + w)", k, grp, vk)
                            : fmt::format("((const uint4*)p.in[{}])[({}) * {} + w]", k, grp, vk);
      if (!guard.empty()) src = fmt::format("{} ? {} : make_uint4(0u, 0u, 0u, 0u)", guard, src);
      s += fmt::format("#pragma unroll\n{}for (int w = 0; w < {}; ++w) {}{}[w] = {};\n", indent, vk,
                       arr, k, src);
    }
    return s;
  }

  /// The current group's vectors r<k>[] of the full inputs: copies of q<k>[], so that the
  /// next group's loads into q<k>[] can be issued before this one is computed.
  std::string take_vectors(int g, const std::string& indent) const {
    std::string s;
    for (size_t k = 0; k < ni; ++k) {
      if (v.cls[k] != Layout::Class::full) continue;
      s += fmt::format(
          "{2}uint4 r{0}[{1}];\n#pragma unroll\n{2}for (int w = 0; w < {1}; ++w) r{0}[w] = "
          "q{0}[w];\n",
          k, vecs(p.input_dtypes[k], g), indent);
    }
    return s;
  }

  /// Element j of the current group: the full inputs' values from r<k>[], the outputs y<o>
  /// declared and computed by lb_eval.
  std::string group_element(int g, const std::string& indent) const {
    std::string s;
    for (size_t k = 0; k < ni; ++k) {
      if (v.cls[k] != Layout::Class::full) continue;
      const Dtype d = p.input_dtypes[k];
      s += fmt::format("{}const {} x{} = {};\n", indent, num_type(input_num(k)), k,
                       decode(d, lane(d, fmt::format("r{}", k), "j", g, rolled(g))));
    }
    return s + declare_outputs(indent) + indent + eval_call() + "\n";
  }

  std::string quant_kernel(int g) const {
    const QuantShape q = quant_shape();
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ") lowbit_fused(const Params p) {\n";
    s += prologue();
    // Variant::qrecompute (per-row groups, vec): no row in shared memory; pass 2 evaluates
    // the row again.
    const bool recompute = v.qrecompute && v.vec && !q.block;
    if (!recompute) s += "  LB_DYN_SMEM(float, lbq_v);\n";
    s += "  __shared__ float lbq_red[3][32];\n  __shared__ float lbq_row[3];\n";
    if (q.kind == QuantShape::nv4)  // the global scale, from the statistics kernel's absmax
      s += "  const float lbq_global = lbq_nvfp4_global(__uint_as_float(*p.qamax));\n"
           "  if (blockIdx.x == 0 && threadIdx.x == 0) *p.qglobal = lbq_global;\n";
    s += fmt::format("  const {} K = p.qk;\n", idx);
    if (q.block)
      s += fmt::format(
          "  const {0} NB = K / {1};\n  float* lbq_pi = lbq_v + K;\n"
          "  int* lbq_pz = (int*)(lbq_pi + NB);\n",
          idx, q.b);
    s += "  const int lbq_lane = threadIdx.x & 31, lbq_warp = threadIdx.x >> 5;\n"
         "  const int lbq_nwarps = blockDim.x >> 5;\n";
    s += "  (void)lbq_lane; (void)lbq_warp; (void)lbq_nwarps; (void)lbq_red; (void)lbq_row;\n";
    s += fmt::format(
        "  for ({0} row = blockIdx.x; row < p.qrows; row += gridDim.x) {{\n"
        "    const {0} base = row * K;\n",
        idx);
    if (!q.block) s += "    float lbq_a = 0.0f, lbq_lo = 0.0f, lbq_hi = 0.0f;\n";
    const bool row_check = p.check_finite && !q.block && !q.affine && !recompute;
    if (row_check) s += "    unsigned lbq_ab = 0u;\n";
    // Pass 1: the values into shared memory.
    if (v.vec) {
      // The next unit's vectors load while this one is computed.
      auto load = [&](const std::string& unit, const std::string& indent) {
        return load_vectors("q", fmt::format("base / {} + ({})", g, unit), g, false, indent);
      };
      s += declare_vectors("q", g, "    ");
      s += fmt::format("    if (threadIdx.x < K / {}) {{\n", g);
      s += load("threadIdx.x", "      ");
      s += "    }\n";
      s += fmt::format(
          "    for ({0} u = threadIdx.x; u < K / {1}; u += blockDim.x) {{\n"
          "      const {0} g = base / {1} + u;\n",
          idx, g);
      s += take_vectors(g, "      ");
      s += fmt::format("      if (u + blockDim.x < K / {}) {{\n", g);
      s += load("u + blockDim.x", "        ");
      s += "      }\n";
      const bool units = g % 4 == 0 && !rolled(g) && !recompute;
      if (units) s += fmt::format("      float lbq_u[{}];\n", g);
      s += output_words(g, "      ");  // the other outputs, stored from here
      s += fmt::format("#pragma unroll{}\n      for (int j = 0; j < {}; ++j) {{\n",
                       rolled(g) ? " 1" : "", g);
      s += group_element(g, "        ");
      s += put_outputs(g, rolled(g), "        ");
      s += fmt::format("        const {} e = g * {} + j;\n        (void)e;\n", idx, g);
      if (recompute) {
        s += quant_element(q, "", "        ") + "      }\n";
      } else if (units) {
        // The unit's values leave in float4 stores.
        s += quant_element(q, "", "        ", row_check);
        s += "        lbq_u[j] = v;\n      }\n";
        s += fmt::format(
            "#pragma unroll\n      for (int w = 0; w < {0} / 4; ++w) ((float4*)lbq_v)[u * ({0} / "
            "4) "
            "+ w] = make_float4(lbq_u[4 * w], lbq_u[4 * w + 1], lbq_u[4 * w + 2], lbq_u[4 * w + "
            "3]);\n",
            g);
      } else {
        s += quant_element(q, fmt::format("u * {} + j", g), "        ", row_check);
        s += "      }\n";
      }
      s += store_words(g, rolled(g), "g", "      ") + "    }\n";
    } else {
      s += fmt::format(
          "    for ({0} j = threadIdx.x; j < K; j += blockDim.x) {{\n"
          "      const {0} e = base + j;\n",
          idx);
      s += offsets("e", "      ");
      for (size_t k = 0; k < ni; ++k)
        if (!scalar_input(k)) s += load_elem(k, fmt::format("o{}", k), "      ");
      s += declare_outputs("      ");
      s += "      " + eval_call() + "\n";
      for (size_t o = 0; o < no; ++o)
        if (stored_output(o)) s += store_elem(o, fmt::format("o{}", ni + o), "      ");
      s += quant_element(q, "j", "      ", row_check);
      s += "    }\n";
    }
    // The groups' parameters. (Every thread folding the warps' partials and computing the
    // row's parameters itself, as the register-row kernel does, saves the second barrier
    // but measured slower on the H100: the fp8 per-token epilogue 84.2-84.3% of copy
    // unchecked against 85.4-86.2%, 81.2% checked against 81.7-82.0%.)
    if (!q.block) {
      s += warp_partials(q, "lbq_red", row_check);
      s += "    if (threadIdx.x == 0) {\n";
      s += fold_partials(q, "lbq_red", "      ", row_check);
      s += group_params(q, "row", "      ");
      s += "      lbq_row[0] = inv;\n      lbq_row[1] = __int_as_float(z);\n";
      if (row_check) s += "      lbq_row[2] = __uint_as_float(ab);\n";
      s += "    }\n    __syncthreads();\n"
           "    const float lbq_inv = lbq_row[0];\n    const int lbq_z = "
           "__float_as_int(lbq_row[1]);\n"
           "    (void)lbq_inv; (void)lbq_z;\n";
      if (row_check) {
        // The check rode on the absmax, through the reduction's own barrier: a row whose
        // bits reach Inf's holds a NaN / Inf (rare), and every thread then searches part of
        // it in shared memory (index j is element base + j). No barrier of its own.
        s += "    if (__float_as_uint(lbq_row[2]) >= 0x7f800000u) {\n";
        s += fmt::format(
            "      for ({} j = threadIdx.x; j < K; j += blockDim.x) {{\n"
            "        const unsigned vb = __float_as_uint(lbq_v[j]);\n",
            idx);
        s += report_non_finite("base + j", "        ") + "      }\n    }\n";
      }
    } else {
      s += "    __syncthreads();\n";
      s += fmt::format("    for ({} gi = threadIdx.x; gi < NB; gi += blockDim.x) {{\n", idx);
      s += fmt::format("      const float* gv = lbq_v + gi * {};\n", q.b);
      s += "      float a = 0.0f, lo = 0.0f, hi = 0.0f;\n";
      // Each thread starts at another element of its group: no bank conflicts.
      s += fmt::format(
          "      for (int j = 0; j < {0}; ++j) {{\n"
          "        const float x = gv[(j + (int)threadIdx.x) % {0}];\n",
          q.b);
      s += fold_stats(q, "x", "a", "lo", "hi", "        ");
      s += "      }\n      (void)a; (void)lo; (void)hi;\n";
      s += group_params(q, "row * NB + gi", "      ");
      s += "      lbq_pi[gi] = inv;\n      lbq_pz[gi] = z;\n    }\n    __syncthreads();\n";
    }
    // Pass 2: codes.
    auto params_at = [&](const std::string& j, const std::string& indent) {
      if (!q.block)
        return indent + "const float inv = lbq_inv;\n" + indent + "const int z = lbq_z;\n";
      return fmt::format(
          "{0}const float inv = lbq_pi[({1}) / {2}];\n{0}const int z = "
          "lbq_pz[({1}) / {2}];\n{0}(void)inv; (void)z;\n",
          indent, j, q.b);
    };
    if (recompute) {
      // The row's units evaluated again (their loads mostly from L2, just read by pass 1),
      // a unit's G codes in one store.
      s += fmt::format(
          "    for ({0} u = threadIdx.x; u < K / {1}; u += blockDim.x) {{\n"
          "      const {0} g = base / {1} + u;\n",
          idx, g);
      s += declare_vectors("r", g, "      ") + load_vectors("r", "g", g, false, "      ");
      s += fmt::format("      float lbq_x[{}];\n", g);
      s += fmt::format("#pragma unroll{}\n      for (int j = 0; j < {}; ++j) {{\n",
                       rolled(g) ? " 1" : "", g);
      s += group_element(g, "        ");
      s += fmt::format("        lbq_x[j] = {};\n      }}\n",
                       quant_value(fmt::format("y{}", p.quantized_output)));
      s += params_at("0", "      ");
      s += unit_codes(q, g, "lbq_x", "g", "      ") + "    }\n";
    } else if (v.qstore) {
      // Units of 4 elements: a float4 from shared memory (consecutive threads read
      // consecutive 16 bytes: no bank conflicts) and one 4-byte (8-bit codes) or 2-byte
      // (4-bit codes) store, coalesced across the warp.
      s += fmt::format("    for ({} u = threadIdx.x; u < K / 4; u += blockDim.x) {{\n", idx);
      s += params_at("u * 4", "      ");
      s += "      const float4 f = ((const float4*)lbq_v)[u];\n";
      if (q.kind == QuantShape::fp8 || q.kind == QuantShape::mx8) {
        // fp8 codes in pairs: one conversion instruction per pair on the GPU.
        auto y = [&](const char* c) {
          return q.kind == QuantShape::fp8 ? fmt::format("f.{} * inv", c)
                                           : fmt::format("lbq_mx_unscale(f.{}, z)", c);
        };
        const char* e5 = q.e5m2 ? "true" : "false";
        s += fmt::format(
            "      ((unsigned*)p.qcodes)[base / 4 + u] = lbrt::fp8x2({}, {}, {}) | "
            "(lbrt::fp8x2({}, {}, {}) << 16);\n",
            y("x"), y("y"), e5, y("z"), y("w"), e5);
      } else {
        s += "      const unsigned c0 = " + code_of(q, "f.x", "inv", "z") + ";\n";
        s += "      const unsigned c1 = " + code_of(q, "f.y", "inv", "z") + ";\n";
        s += "      const unsigned c2 = " + code_of(q, "f.z", "inv", "z") + ";\n";
        s += "      const unsigned c3 = " + code_of(q, "f.w", "inv", "z") + ";\n";
        s += q.packed
                 ? "      ((unsigned short*)p.qcodes)[base / 4 + u] = (unsigned short)((c0 & 15u) "
                   "| ((c1 & 15u) << 4) | ((c2 & 15u) << 8) | ((c3 & 15u) << 12));\n"
                 : "      ((unsigned*)p.qcodes)[base / 4 + u] = (c0 & 255u) | ((c1 & 255u) << 8) "
                   "| ((c2 & 255u) << 16) | ((c3 & 255u) << 24);\n";
      }
      s += "    }\n";
    } else if (q.packed) {
      s += fmt::format("    for ({} j2 = threadIdx.x; j2 < K / 2; j2 += blockDim.x) {{\n", idx);
      s += params_at("2 * j2", "      ");
      s += "      const unsigned c0 = " + code_of(q, "lbq_v[2 * j2]", "inv", "z") + ";\n";
      s += "      const unsigned c1 = " + code_of(q, "lbq_v[2 * j2 + 1]", "inv", "z") + ";\n";
      s += "      ((unsigned char*)p.qcodes)[(base + 2 * j2) / 2] = (unsigned char)((c0 & 15u) | "
           "((c1 & 15u) << 4));\n    }\n";
    } else {
      s += fmt::format("    for ({} j = threadIdx.x; j < K; j += blockDim.x) {{\n", idx);
      s += params_at("j", "      ");
      s += "      ((unsigned char*)p.qcodes)[base + j] = (unsigned char)(" +
           code_of(q, "lbq_v[j]", "inv", "z") + ");\n    }\n";
    }
    s += "    __syncthreads();\n  }\n";
    return s + hand_off() + "}\n";
  }

  /// nvfp4's first pass (Variant::qstats): the quantized output's values (rounded to its
  /// dtype, as the row kernel reads them) over the whole tensor, folded into the largest
  /// magnitude bits (an unsigned max: the float max for finite values; a NaN or Inf shows as
  /// bits at or above Inf's, which the row kernel's per-value check then names); one
  /// atomicMax per block into p.qamax, skipped when the word already holds as much. vec:
  /// 16-byte loads, the next group's issued before the current one is computed.
  std::string quant_stats_kernel(int g) const {
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ") lowbit_fused(const Params p) {\n";
    s += prologue();
    s += "  unsigned lbq_ab = 0u;\n";
    const std::string fold =
        fmt::format("lbq_ab = max(lbq_ab, __float_as_uint({}) & 0x7fffffffu);\n",
                    quant_value(fmt::format("y{}", p.quantized_output)));
    if (v.vec) {
      s += fmt::format("  const {0} full = n / {1};\n", idx, g);
      auto load = [&](const std::string& group, const std::string& indent) {
        return load_vectors("q", group, g, true, indent);
      };
      s += declare_vectors("q", g, "  ");
      s += "  if (tid < full) {\n" + load("tid", "    ") + "  }\n";
      s += fmt::format("  for ({} g = tid; g < full; g += nthreads) {{\n", idx);
      s += take_vectors(g, "    ");
      s += "    if (g + nthreads < full) {\n" + load("g + nthreads", "      ") + "    }\n";
      s += fmt::format("#pragma unroll{}\n    for (int j = 0; j < {}; ++j) {{\n",
                       rolled(g) ? " 1" : "", g);
      s += group_element(g, "      ") + "      " + fold + "    }\n  }\n";
      // The last n % G elements, one per thread of the first threads.
      s += fmt::format("  {{\n    const {} e = full * {} + tid;\n    if (e < n) {{\n", idx, g);
      for (size_t k = 0; k < ni; ++k)
        if (v.cls[k] == Layout::Class::full) s += load_elem(k, "e", "      ");
    } else {
      s += fmt::format("  for ({} e = tid; e < n; e += nthreads) {{\n    {{\n", idx);
      s += offsets("e", "      ");
      for (size_t k = 0; k < ni; ++k)
        if (!scalar_input(k)) s += load_elem(k, fmt::format("o{}", k), "      ");
    }
    s += declare_outputs("      ");
    s += "      " + eval_call() + "\n      " + fold + "    }\n  }\n";
    s += "  __shared__ unsigned lbq_red[32];\n"
         "  lbq_ab = __reduce_max_sync(0xffffffffu, lbq_ab);\n"
         "  if ((threadIdx.x & 31) == 0) lbq_red[threadIdx.x >> 5] = lbq_ab;\n"
         "  __syncthreads();\n"
         "  if (threadIdx.x == 0) {\n"
         "    unsigned m = 0u;\n"
         "    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) m = max(m, lbq_red[w]);\n"
         "    if (m > *(volatile unsigned*)p.qamax) atomicMax(p.qamax, m);\n"
         "  }\n}\n";
    return s;
  }

  /// The checked epilogue's end (p.qhost set: the thread's persistent words, launch.cpp):
  /// the last block to finish moves the flag word to mapped host memory, zeroes the device
  /// words for the next call and raises `done` there, so the host spins on `done` instead
  /// of copying the word back and synchronising the stream. Every block's outputs and
  /// flag reports come before its count (barrier, then a fence). Every thread of every
  /// block reaches it.
  /// With a CheckReport (launch.cpp tags qhost's low bit; qflag is the report's region) the
  /// last block counts the call in the region's word 15 and writes the report's record
  /// (seq, op | kind << 32, word: check_report_impl.hpp's CheckRecord) only for a refusal
  /// when no earlier call refused; nobody waits for it.
  std::string hand_off() const {
    if (!p.check_finite) return {};
    return "  if (p.qhost) {\n    __syncthreads();\n    if (threadIdx.x == 0) {\n"
           "      __threadfence();\n"
           "      if (atomicAdd(p.qflag + 1, 1ull) == gridDim.x - 1) {\n"
           "        __threadfence();\n"
           "        const unsigned long long f = atomicExch(p.qflag, 0ull);\n"
           "        atomicExch(p.qflag + 1, 0ull);\n"
           "        const unsigned long long tag = (unsigned long long)p.qhost;\n"
           "        volatile unsigned long long* h = (volatile unsigned long long*)(tag & ~1ull);\n"
           "        if (tag & 1ull) {\n"
           "          const unsigned long long call = atomicAdd(p.qflag + 15, 1ull) + 1ull;\n"
           "          if (f != 0ull && h[0] == 0ull) {\n"
           "            h[1] = 3ull | (1ull << 32);  // op fused, kind non_finite\n"
           "            h[2] = f;\n"
           "            __threadfence_system();  // the fields reach the host before seq\n"
           "            h[0] = call;\n"
           "          }\n"
           "        } else {\n"
           "          h[0] = f;\n"
           "          __threadfence_system();  // the flag reaches the host before `done`\n"
           "          h[1] = 1ull;\n"
           "        }\n"
           "        __threadfence_system();\n      }\n    }\n  }\n";
  }

  /// The quantize epilogue with per-row groups and the row in registers (Variant::qreg):
  /// a block per row, each thread holding R units of G elements (unit u = threadIdx.x +
  /// r * blockDim.x). All of a row's loads are issued at once; the values stay in registers
  /// through the row's absmax (a warp shuffle, then each warp's partial through shared
  /// memory, double-buffered by row parity so one barrier per row suffices), every thread
  /// computes the row's scale from the partials itself, and each unit leaves as one store
  /// of G codes. The same values, statistics and formulas as quant_kernel: the same bits.
  std::string quant_reg_kernel(int g, int R) const {
    const QuantShape q = quant_shape();
    // (A bf16 output's values held two per register, 63-64 registers and 4 blocks per SM,
    // measured no faster on the H100: exact fp8 per token 86.5-86.7% of copy unchecked,
    // 83.8-84.8% checked; fast math 97.6-97.9% against 98.3-98.7%. Not kept.)
    // Rows of up to kQuantRegCappedUnits (4) units per thread: at least 3 blocks per SM (80
    // registers). Left to
    // ptxas, a 4-unit row took 95-96 registers (2 blocks of 256 threads per SM); capped, no
    // spills for any format, bf16 or f32 inputs (ptxas -v, R = 1-4). More units spill under
    // the cap (300-570 bytes), so they keep ptxas's choice.
    const int min_blocks = R <= kQuantRegCappedUnits ? 3 : 1;
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ", " + std::to_string(min_blocks) + ") lowbit_fused(const Params p) {\n";
    s += prologue();
    s += "  __shared__ float lbq_red[2][3][32];\n";
    s += fmt::format("  const {0} K = p.qk;\n  const {0} units = K / {1};\n", idx, g);
    s += "  const int lbq_lane = threadIdx.x & 31, lbq_warp = threadIdx.x >> 5;\n"
         "  const int lbq_nwarps = blockDim.x >> 5;\n  int parity = 0;\n";
    // The loads of row `rowv` into q<k>[R][]: issued for the first row before the loop and
    // for the next row as soon as this row's values are computed, so that they are in
    // flight during the row's reduction, barrier and code stores.
    auto load_row = [&](const std::string& rowv, const std::string& indent) {
      std::string l = fmt::format("{}if ({} < p.qrows) {{\n", indent, rowv);
      l += fmt::format("#pragma unroll\n{}  for (int r = 0; r < {}; ++r) {{\n", indent, R);
      l += fmt::format("{}    const {} u = threadIdx.x + r * blockDim.x;\n", indent, idx);
      l += fmt::format("{}    if (u < units) {{\n", indent);
      for (size_t k = 0; k < ni; ++k) {
        if (v.cls[k] != Layout::Class::full) continue;
        const int vk = vecs(p.input_dtypes[k], g);
        l += fmt::format(
            "#pragma unroll\n{2}      for (int w = 0; w < {1}; ++w) q{0}[r][w] = "
            "((const uint4*)p.in[{0}])[(({4}) * units + u) * {1} + w];\n",
            k, vk, indent, g, rowv);
      }
      l += indent + "    }\n" + indent + "  }\n" + indent + "}\n";
      return l;
    };
    for (size_t k = 0; k < ni; ++k)
      if (v.cls[k] == Layout::Class::full)
        s += fmt::format("  uint4 q{}[{}][{}];\n", k, R, vecs(p.input_dtypes[k], g));
    s += load_row("blockIdx.x", "  ");
    s += fmt::format(
        "  for ({0} row = blockIdx.x; row < p.qrows; row += gridDim.x, parity ^= 1) {{\n"
        "    const {0} gbase = row * units;\n",
        idx);
    s += fmt::format("    float lbq_x[{}][{}];\n", R, g);
    s += "    float lbq_a = 0.0f, lbq_lo = 0.0f, lbq_hi = 0.0f;\n";
    // As in quant_kernel: the finiteness test rides on the absmax of symmetric groups.
    const bool row_check = p.check_finite && !q.affine;
    if (row_check) s += "    unsigned lbq_ab = 0u;\n";
    s += fmt::format("#pragma unroll\n    for (int r = 0; r < {}; ++r) {{\n", R);
    s += fmt::format("      const {} u = threadIdx.x + r * blockDim.x;\n", idx);
    s += fmt::format("#pragma unroll\n      for (int j = 0; j < {}; ++j) lbq_x[r][j] = 0.0f;\n", g);
    s += "      if (u < units) {\n";
    s += output_words(g, "        ");  // the other outputs, stored from here
    s += fmt::format("#pragma unroll\n        for (int j = 0; j < {}; ++j) {{\n", g);
    for (size_t k = 0; k < ni; ++k) {
      if (v.cls[k] != Layout::Class::full) continue;
      const Dtype d = p.input_dtypes[k];
      s += fmt::format("          const {} x{} = {};\n", num_type(input_num(k)), k,
                       decode(d, lane(d, fmt::format("q{}[r]", k), "j", g, false)));
    }
    s += declare_outputs("          ");
    s += "          " + eval_call() + "\n";
    s += put_outputs(g, false, "          ");
    s += fmt::format("          const {} e = (gbase + u) * {} + j;\n          (void)e;\n", idx, g);
    s += quant_element(q, "", "          ", row_check);
    s += "          lbq_x[r][j] = v;\n        }\n";
    s += store_words(g, false, "(gbase + u)", "        ");
    s += "      }\n    }\n";
    s += load_row("row + gridDim.x", "    ");
    // The row's statistics: warp shuffles (or, checked, the magnitude bits' reduction),
    // then every thread folds the warps' partials.
    s += warp_partials(q, "lbq_red[parity]", row_check);
    s += fold_partials(q, "lbq_red[parity]", "    ", row_check);
    if (row_check) {
      // A row with a NaN / Inf (rare): each thread searches its own values in registers.
      s += "    if (ab >= 0x7f800000u) {\n";
      s += fmt::format("#pragma unroll\n      for (int r = 0; r < {}; ++r) {{\n", R);
      s += fmt::format("        const {} u = threadIdx.x + r * blockDim.x;\n", idx);
      s += "        if (u < units) {\n";
      s += fmt::format("#pragma unroll\n          for (int j = 0; j < {}; ++j) {{\n", g);
      s += "            const unsigned vb = __float_as_uint(lbq_x[r][j]);\n";
      s += report_non_finite(fmt::format("(gbase + u) * {} + j", g), "            ");
      s += "          }\n        }\n      }\n    }\n";
    }
    s += group_params(q, "row", "    ", false);
    s += "    (void)inv; (void)z;\n";
    s += "    if (threadIdx.x == 0) {\n" + group_params(q, "row", "      ") + "    }\n";
    // Codes: a unit's G codes in one store.
    s += fmt::format("#pragma unroll\n    for (int r = 0; r < {}; ++r) {{\n", R);
    s += fmt::format("      const {} u = threadIdx.x + r * blockDim.x;\n      if (u < units) {{\n",
                     idx);
    s += unit_codes(q, g, "lbq_x[r]", "gbase + u", "        ");
    s += "      }\n    }\n  }\n";
    return s + hand_off() + "}\n";
  }

  /// The quantize epilogue with per-block groups, element-wise (Variant::qlane): no rows,
  /// no shared memory, no barriers. A thread takes a unit of G elements (16-byte loads, as
  /// the vector kernel), a group of b elements is b / G adjacent lanes (b a multiple of G,
  /// at most a warp), whose statistics meet by xor shuffles; each lane computes its group's
  /// parameters, the group's first lane stores them, and each lane stores its unit's codes
  /// in one word. The loop over units is uniform across the block (inactive lanes past the
  /// end take part in the shuffles with zero inputs; a group is wholly in or out, as the
  /// tensor holds whole groups). The same values, statistics and formulas as quant_kernel:
  /// the same bits.
  std::string quant_lane_kernel(int g) const {
    const QuantShape q = quant_shape();
    const int lanes = q.b / g;
    std::string s = "extern \"C\" __global__ void __launch_bounds__(" + std::to_string(kThreads) +
                    ") lowbit_fused(const Params p) {\n";
    s += prologue();
    if (q.kind == QuantShape::nv4)  // the global scale, from the statistics kernel's absmax
      s += "  const float lbq_global = lbq_nvfp4_global(__uint_as_float(*p.qamax));\n"
           "  if (blockIdx.x == 0 && threadIdx.x == 0) *p.qglobal = lbq_global;\n";
    s += fmt::format("  const {0} full = n / {1};\n  const int lbq_lane = threadIdx.x & 31;\n", idx,
                     g);
    s += "  (void)lbq_lane;\n";
    s += fmt::format(
        "  for ({0} u0 = ({0})blockIdx.x * blockDim.x; u0 < full; u0 += nthreads) {{\n"
        "    const {0} g = u0 + threadIdx.x;\n    const bool act = g < full;\n",
        idx);
    s += declare_vectors("r", g, "    ") + load_vectors("r", "g", g, true, "    ", "act");
    s += output_words(g, "    ");
    s += fmt::format("    float lbq_x[{}];\n", g);
    s += "    float lbq_a = 0.0f, lbq_lo = 0.0f, lbq_hi = 0.0f;\n";
    s += fmt::format("#pragma unroll\n    for (int j = 0; j < {}; ++j) {{\n", g);
    s += group_element(g, "      ");
    s += put_outputs(g, false, "      ");
    s += fmt::format("      const float v = {};\n      lbq_x[j] = v;\n",
                     quant_value(fmt::format("y{}", p.quantized_output)));
    s += fold_stats(q, "v", "lbq_a", "lbq_lo", "lbq_hi", "      ");
    if (p.check_finite)
      s += fmt::format(
               "      if (act) {{\n        const unsigned vb = __float_as_uint(v);\n"
               "        const {} e = g * {} + j;\n",
               idx, g) +
           report_non_finite("e", "        ") + "      }\n";
    s += "    }\n";
    s += "    if (act) {\n" + store_words(g, false, "g", "      ") + "    }\n";
    if (lanes > 1)  // the group's statistics across its lanes
      s += xor_fold(
          q, fmt::format("#pragma unroll\n    for (int o = 1; o < {}; o <<= 1) {{\n", lanes));
    s += "    const float a = lbq_a, lo = lbq_lo, hi = lbq_hi;\n    (void)a; (void)lo; (void)hi;\n";
    s += fmt::format("    const {} gi = g / {};\n", idx, lanes);
    s += group_params(q, "gi", "    ", false) + "    (void)inv; (void)z;\n";
    s += fmt::format("    if (act && (lbq_lane & {}) == 0) {{\n", lanes - 1) +
         group_stores(q, "gi", "      ") + "    }\n";
    s += "    if (act) {\n" + unit_codes(q, g, "lbq_x", "g", "      ") + "    }\n";
    s += "  }\n";
    return s + hand_off() + "}\n";
  }

  /// Statements storing one unit's G codes (values `x`[j], parameters inv / z) as one word at
  /// unit index `unit` of the codes.
  std::string unit_codes(const QuantShape& q, int g, const std::string& x, const std::string& unit,
                         const std::string& indent) const {
    const int cbytes = q.packed ? g / 2 : g;  // bytes of a unit's codes: 2, 4, 8 or 16
    const char* ctype = cbytes == 16  ? "uint4"
                        : cbytes == 8 ? "uint2"
                        : cbytes == 4 ? "unsigned"
                                      : "unsigned short";
    std::string s = fmt::format("{}unsigned cw[{}] = {{}};\n", indent, std::max(1, cbytes / 4));
    if (q.kind == QuantShape::fp8) {
      const char* e5 = q.e5m2 ? "true" : "false";
      s += fmt::format(
          "#pragma unroll\n{3}for (int j = 0; j < {0}; j += 2) cw[j / 4] |= "
          "lbrt::fp8x2({2}[j] * inv, {2}[j + 1] * inv, {1}) << (8 * (j % 4));\n",
          g, e5, x, indent);
    } else if (q.packed) {
      s += fmt::format(
          "#pragma unroll\n{2}for (int j = 0; j < {0}; ++j) cw[j / 8] |= ({1} & 15u) << (4 * (j % "
          "8));\n",
          g, code_of(q, x + "[j]", "inv", "z"), indent);
    } else {
      s += fmt::format(
          "#pragma unroll\n{2}for (int j = 0; j < {0}; ++j) cw[j / 4] |= ({1} & 255u) << (8 * (j % "
          "4));\n",
          g, code_of(q, x + "[j]", "inv", "z"), indent);
    }
    if (cbytes == 16)
      s += fmt::format("{}((uint4*)p.qcodes)[{}] = make_uint4(cw[0], cw[1], cw[2], cw[3]);\n",
                       indent, unit);
    else if (cbytes == 8)
      s += fmt::format("{}((uint2*)p.qcodes)[{}] = make_uint2(cw[0], cw[1]);\n", indent, unit);
    else
      s += fmt::format("{0}(({1}*)p.qcodes)[{2}] = ({1})cw[0];\n", indent, ctype, unit);
    return s;
  }

  int param_bytes() const { return params_size(ni, no, nc, v); }
};

}  // namespace

HeaderSet make_header_set(std::vector<std::string> names, std::vector<std::string> contents) {
  HeaderSet h;
  h.names = std::move(names);
  h.contents = std::move(contents);
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < h.names.size(); ++i) {
    hash = fnv1a64(h.names[i].data(), h.names[i].size(), hash);
    hash = fnv1a64(h.contents[i].data(), h.contents[i].size(), hash);
  }
  h.hash = hash;
  return h;
}

const HeaderSet& jit_headers() {
  static const HeaderSet set = make_header_set(
      {"lowbit/numeric.hpp", "cstdint", "bit", "lowbit_jit_math.h", "lowbit_jit_prelude.h"},
      {kNumericHppText, kStdintStub, kBitStub, kMathText, kPrelude});
  return set;
}

KernelSource generate_cuda(const Program& program, const Variant& variant, bool with_code) {
  const Gen gen(program, variant);
  KernelSource ks;
  ks.name = "lowbit_fused";
  ks.param_bytes = gen.param_bytes();
  if (variant.vec) {
    ks.group = gen.group();
    ks.unroll = gen.unroll(ks.group);
  }
  if (variant.quant) ks.unroll = 1;
  ks.fast = variant.fast;
  if (!with_code) return ks;
  std::string s = fmt::format("// lowbit fused kernel (codegen v{}), variant {}\n// {}\n",
                              kCodegenVersion, variant.key(), program.canonical());
  s += "#include \"lowbit_jit_prelude.h\"\n\n";
  s += gen.params() + "\n" + gen.eval_fn() + "\n";
  if (variant.quant && variant.qstats)
    s += gen.quant_stats_kernel(ks.group);
  else if (variant.quant && variant.qreg > 0)
    s += gen.quant_reg_kernel(ks.group, variant.qreg);
  else if (variant.quant && variant.qlane)
    s += gen.quant_lane_kernel(ks.group);
  else if (variant.quant)
    s += gen.quant_kernel(ks.group);
  else
    s += variant.vec ? gen.vec_kernel(ks.group, ks.unroll) : gen.strided_kernel();
  ks.code = std::move(s);
  return ks;
}

int64_t quant_row(const Layout&, const Program&, const QuantizedView& q) {
  return q.shape.size() > 0 ? q.shape[q.shape.size() - 1] : 1;
}

void pack_params(const Program& program, const Variant& v, const Layout& L, const FusedArgs& args,
                 void* flag, void* host, std::vector<unsigned char>& buf, void* amax) {
  // Runs for every launch: counts only, no codegen state.
  const struct {
    size_t ni, no, nc;
  } gen{program.input_dtypes.size(), program.output_dtypes.size(), program.constants.size()};
  buf.assign(static_cast<size_t>(params_size(gen.ni, gen.no, gen.nc, v)), 0);
  size_t at = 0;
  auto put = [&](const void* src, size_t bytes) {
    std::memcpy(buf.data() + at, src, bytes);
    at += bytes;
  };
  auto put_idx = [&](int64_t x) {
    if (v.idx32) {
      const uint32_t y = static_cast<uint32_t>(x);
      put(&y, 4);
    } else {
      const uint64_t y = static_cast<uint64_t>(x);
      put(&y, 8);
    }
  };
  for (size_t k = 0; k < std::max<size_t>(gen.ni, 1); ++k) {
    const void* ptr = k < args.inputs.size() ? args.inputs[k].data() : nullptr;
    put(&ptr, 8);
  }
  for (size_t o = 0; o < std::max<size_t>(gen.no, 1); ++o) {
    const void* ptr = o < args.outputs.size() ? args.outputs[o].data() : nullptr;
    put(&ptr, 8);
  }
  for (size_t c = 0; c < std::max<size_t>(gen.nc, 1); ++c) {
    const double x = c < program.constants.size() ? program.constants[c] : 0.0;
    put(&x, 8);
  }
  for (size_t c = 0; c < std::max<size_t>(gen.nc, 1); ++c) {
    const float x = c < program.constants.size() ? lowbit::f64_to_f32(program.constants[c]) : 0.0f;
    put(&x, 4);
  }
  at = (at + (v.idx32 ? 3 : 7)) / (v.idx32 ? 4 : 8) * (v.idx32 ? 4 : 8);
  put_idx(L.numel);
  if (!v.vec || v.rows || v.cols) {
    for (int d = 0; d < v.nd; ++d) put_idx(L.extent[d]);
    for (size_t k = 0; k < std::max<size_t>(gen.ni + gen.no, 1); ++k)
      for (int d = 0; d < v.nd; ++d) put_idx(k < L.strides.size() ? L.strides[k][d] : 0);
  }
  if (v.quant) {
    at = (at + 7) / 8 * 8;
    const QuantizedView& q = args.quantized;
    const void* ptrs[7] = {q.codes.data(), q.scale.data(), q.zero.data(),        flag,
                           host,           amax,           q.global_scale.data()};
    for (const void* ptr : ptrs) put(&ptr, 8);
    const int64_t k = quant_row(L, program, q);
    put_idx(k);
    put_idx(k > 0 ? L.numel / k : 0);
  }
}

int elem_bytes(Dtype d) { return d == Dtype::f64 ? 8 : bit_width(d) / 8; }

}  // namespace lowbit::fusion
