// The CUDA kernel of quantize: bit-identical to quantize_reference.cpp for f32, f16 and bf16
// sources (contiguous), every non-GGUF scheme, and GGUF q8_0 / q4_0.
//
// Paths, chosen per call under the one kernel name (views that miss an alignment fall back
// to the generic path, which gives the same bits):
//  - rows: int8 / uint8 / int4 / uint4 / fp8 whose scale groups are contiguous runs of G
//    elements (token: G = K; channel on axis 0, or any axis with only extent-1 dims before
//    it: G = the product of the later extents; blockG when K is a multiple of G). A team of
//    threads owns a group: a power-of-two slice of a warp (up to 32 lanes) for short groups,
//    a whole block (up to 1024 threads) for long rows. Each thread loads its share (up to
//    four 16-byte vectors, strided by the team size so that loads coalesce), reduces absmax
//    (and min / max for affine schemes) in registers, then across the team with warp
//    shuffles (and shared memory for a block), and quantizes from the registers it loaded:
//    one read of x, one write of the codes and scales.
//  - tensor: per-tensor int / fp8 scales, two kernels. The first reduces absmax (min, max)
//    over the tensor: per thread in registers, per block through shuffles and shared
//    memory, then one atomicMax per block on the f32 bits of the (non-negative) statistic:
//    max is order-independent, so the result is the same on every run. The second kernel
//    computes the scale from those words and quantizes (the rows kernel in "global" mode).
//  - blocks: nvfp4, mxfp4, mxfp8 and GGUF q8_0 / q4_0: a warp takes 128 consecutive
//    16-byte source vectors per step, lane l the vectors l, l + 32, l + 64, l + 96 (every
//    load instruction reads 512 contiguous bytes); a format block then lies in 2, 4 or 8
//    consecutive lanes, which reduce its absmax with shuffles and store their own codes
//    (consecutive across the warp). nvfp4's global scale comes from a first absmax pass like
//    the tensor path's (two reads of x: the given-global-scale path needs one), and the
//    second pass walks the tensor backwards so that it starts on what the first left in L2. nvfp4's
//    x / (global * block scale) is a reciprocal product corrected to the IEEE quotient
//    (Markstein), and the e2m1 codes of nvfp4 and mxfp4 come from FP32 clamps and roundings
//    (e2m1_round): the integer pipe, half as fast, had bounded them.
//    GGUF blocks (18 or 34 bytes, 2-byte aligned) are staged per warp in shared memory and
//    written out with 16-byte stores.
//  - generic: everything else (per-channel on a later axis, 2-d blocks, fp8 blocks over a
//    ragged last axis, odd shapes, misaligned views, given scales): a statistics kernel
//    (atomicMax per group, warp-aggregated where a warp shares a group), a per-group
//    parameter kernel that writes the scales, and an element-wise kernel that writes each
//    code (each byte of a packed code stream is written by one thread, so neighbouring
//    groups never race on a shared byte).
//
// Checks: the reference refuses NaN / Inf inputs (naming the first one), GGUF blocks whose
// f16 scale overflows, and invalid given scales / zero points. With desc.check_finite (the
// default) the kernels atomicMax the complement of the first offending flat index (element,
// block or group) into a check word, and run() WAITS FOR THE KERNELS before it returns, then
// throws the reference's exact Error text. On the rows / tensor / blocks paths the words are
// the host thread's own (kept zero between calls) and the last block of the last kernel hands
// them to mapped host memory, zeroes them and raises a `done` word there (hand_off): no memset
// before the kernels, no copy after them, and run() spins on `done` instead of synchronising
// the stream (when it returns every output is written; the stream itself may still be
// finishing that last block). A flagged call synchronises the stream before it throws. The
// generic path uses a per-call buffer, zeroed on the stream and copied back (a
// synchronisation). The finiteness test costs one compare per thread: the absmax that every
// path reduces anyway reaches Inf's bits only when a NaN / Inf is present, and only then are
// the elements searched. With check_finite off none of these three checks runs and run() does
// not wait; such inputs then give unspecified (but memory-safe) codes and no Error (the SIMD
// kernel still refuses GGUF overflow and bad given scales there: those refusals would cost
// this kernel the same wait). Given a CheckReport (QuantizeArgs::report) a checked call runs
// the same checks on the report's words and does not wait: the last block records a refusal
// in the report (hand_off's deferred branch), the generic path queues the record kernel
// (check_report_cuda.cu). An empty nvfp4 tensor's given global scale, which no kernel reads,
// is then not checked.
//
// Arithmetic: formats/quant_math.hpp's functions, compiled for the device (they are written
// so that each f32 operation rounds once; no product there feeds an addition, so FMA
// contraction cannot change them). GGUF q4_0's x * id + 8.5 is spelled __fmul_rn /
// __fadd_rn: ggml's reference (x86-64, no FMA) rounds twice and nvcc would otherwise fuse it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/check_report_impl.hpp"
#include "cuda/hand_off.hpp"
#include "formats/groups.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit {
namespace {

using namespace quant_cuda;

constexpr int kThreads = 256;
constexpr int kMaxTeam = 1024;     ///< largest block team (rows path)
constexpr int kVecsPerThread = 4;  ///< 16-byte vectors a rows-path thread holds

// ---- check words ------------------------------------------------------------------------------

struct CheckWords {
  unsigned long long nonfinite;  ///< first NaN / Inf element
  unsigned long long overflow;   ///< first GGUF block whose f16 scale overflows
  unsigned long long given;      ///< first group with an invalid given scale / zero point
  unsigned long long done;       ///< device: blocks of the last kernel that finished; host: 1
                                 ///< once the words are handed off (hand_off)
  uint32_t stats[4];             ///< tensor absmax, -min, max (f32 bits of non-negative values)
};
// A CheckReport's quantize region holds these words, its call count after them.
static_assert(sizeof(CheckWords) <= check_report::kCallsOffset);

/// The end of the last kernel of a checked call on the rows / tensor / blocks paths: the
/// last block to finish copies the flag words into `host` (pinned, mapped host memory),
/// zeroes the device words for the thread's next call, then sets host->done. run() then needs
/// neither a memset before the kernels nor a device-to-host copy after them, nor a stream
/// synchronisation: it spins on host->done (each of these steps took microseconds off the
/// check's cost). With a CheckReport (`record` set, `host` null) the words are the report's:
/// the last block counts the call, zeroes the words and writes the record only if this call
/// refused its input and no earlier one did; nobody waits. Every thread of every block calls
/// it (no early returns).
__device__ __forceinline__ void hand_off(CheckWords* words, CheckWords* host,
                                         check_report::CheckRecord* record) {
  __syncthreads();  // this block's reports (each fenced by report()) come first
  if (threadIdx.x != 0) return;
  __threadfence();
  if (atomicAdd(&words->done, 1ull) != gridDim.x - 1) return;
  __threadfence();
  const unsigned long long nonfinite = atomicExch(&words->nonfinite, 0ull);
  const unsigned long long overflow = atomicExch(&words->overflow, 0ull);
  const unsigned long long given = atomicExch(&words->given, 0ull);
#pragma unroll
  for (int k = 0; k < 4; ++k) atomicExch(&words->stats[k], 0u);
  atomicExch(&words->done, 0ull);
  if (record) {
    auto* calls = reinterpret_cast<unsigned long long*>(reinterpret_cast<unsigned char*>(words) +
                                                        check_report::kCallsOffset);
    const unsigned long long call = atomicAdd(calls, 1ull) + 1;
    if (!(nonfinite | overflow | given)) return;
    volatile check_report::CheckRecord* rec = record;
    if (rec->seq != 0) return;  // an earlier call's refusal stays
    using check_report::Kind;
    rec->op = static_cast<uint32_t>(check_report::Op::quantize);
    rec->kind = static_cast<uint32_t>(nonfinite ? Kind::non_finite
                                      : given   ? Kind::given
                                                : Kind::overflow);
    rec->word = nonfinite ? nonfinite : given ? given : overflow;
    __threadfence_system();  // the fields reach the host before seq does
    rec->seq = call;
    __threadfence_system();
    return;
  }
  host->nonfinite = nonfinite;
  host->overflow = overflow;
  host->given = given;
  __threadfence_system();  // the flag words reach the host before `done` does
  *reinterpret_cast<volatile unsigned long long*>(&host->done) = 1ull;
  __threadfence_system();
}

// ---- per-element statistics as the bits of non-negative floats -----------------------------

struct Stats {
  uint32_t amax = 0;  ///< |x|
  uint32_t nlo = 0;   ///< -min(x, 0)
  uint32_t hi = 0;    ///< max(x, 0)
  __device__ __forceinline__ void add(float x, bool affine) {
    const uint32_t b = __float_as_uint(x);
    amax = max(amax, b & 0x7fffffffu);
    if (affine) {
      // The reference's min / max start at 0; only the sign of x decides which one moves.
      nlo = max(nlo, (b >> 31) ? (b & 0x7fffffffu) : 0u);
      hi = max(hi, (b >> 31) ? 0u : b);
    }
  }
  __device__ __forceinline__ void shfl_max(int offset) {
    amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    nlo = max(nlo, __shfl_xor_sync(0xffffffffu, nlo, offset));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  __device__ __forceinline__ void warp_max() {
    amax = __reduce_max_sync(0xffffffffu, amax);
    nlo = __reduce_max_sync(0xffffffffu, nlo);
    hi = __reduce_max_sync(0xffffffffu, hi);
  }
};

/// Reduces `s` over the block; every thread gets the result. `smem` holds 2 x 3 x 32 words
/// (double-buffered by `parity`, so one __syncthreads per call suffices).
__device__ __forceinline__ void block_max(Stats& s, uint32_t* smem, int parity) {
  s.warp_max();
  uint32_t* buf = smem + parity * 96;
  const int warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
  if ((threadIdx.x & 31) == 0) {
    buf[warp] = s.amax;
    buf[32 + warp] = s.nlo;
    buf[64 + warp] = s.hi;
  }
  __syncthreads();
  Stats r;
  for (int w = 0; w < nwarps; ++w) {
    r.amax = max(r.amax, buf[w]);
    r.nlo = max(r.nlo, buf[32 + w]);
    r.hi = max(r.hi, buf[64 + w]);
  }
  s = r;
}

// ---- scaled formats (int8 / uint8 / int4 / uint4 / fp8) -------------------------------------

enum class Code : int { i8, i4, e4m3, e5m2 };

template <Code C>
constexpr int kCodeBits = C == Code::i4 ? 4 : 8;

/// What a scaled scheme needs at run time.
struct ScaledConf {
  int qmin = 0;
  int qmax = 0;
  bool affine = false;
  Dtype scale_dtype = Dtype::f32;
};

/// A group's parameters: the stored scale, its reciprocal (0 for scale 0), the zero point;
/// integer codes also the range [qmin - zero, qmax - zero] of rne(x * inv) as f32.
struct Params {
  float scale;
  float inv;
  int32_t zero;
  float lo, hi;
};

template <Code C>
__device__ __forceinline__ Params params_from_stats(const Stats& s, const ScaledConf& c) {
  Params p;
  if constexpr (C == Code::i8 || C == Code::i4) {
    const formats::IntParams q =
        c.affine ? formats::int_affine_params(-__uint_as_float(s.nlo), __uint_as_float(s.hi),
                                              c.qmin, c.qmax, c.scale_dtype)
                 : formats::int_symmetric_params(__uint_as_float(s.amax), c.qmax, c.scale_dtype);
    p.scale = q.scale;
    p.inv = q.inv_scale;
    p.zero = q.zero;
    p.lo = static_cast<float>(c.qmin - q.zero);
    p.hi = static_cast<float>(c.qmax - q.zero);
  } else {
    p.scale = formats::fp8_scale(__uint_as_float(s.amax), C == Code::e5m2);
    p.inv = p.scale == 0.0f ? 0.0f : 1.0f / p.scale;
    p.zero = 0;
  }
  return p;
}

/// formats::int_quantize (clamp(rne(x * inv) + zero, qmin, qmax)) without conversion
/// instructions, which run on the SM's conversion unit at a small fraction of the FP32
/// rate (the reference's form needs two per element: rint and the float-to-int). Clamping
/// x * inv to [qmin - zero, qmax - zero] (integers) before rounding gives the same code, as
/// rounding is monotonic; a NaN product clamps to an end, where the reference's code is
/// unspecified too (NaN inputs are refused with the check on). The clamped value v is
/// within +-2^9, so v + 1.5 * 2^23 rounds it to an integer in the f32's low bits (ulp 1,
/// ties to even), two's complement around 0x4B400000; adding the zero point there leaves
/// the code in the low 8 (or 4) bits.
template <Code C>
__device__ __forceinline__ uint32_t int_code(float x, const Params& p) {
  const float v = fminf(fmaxf(__fmul_rn(x, p.inv), p.lo), p.hi);
  const uint32_t r = __float_as_uint(__fadd_rn(v, 12582912.0f)) + static_cast<uint32_t>(p.zero);
  return C == Code::i8 ? (r & 0xffu) : (r & 0xfu);
}

/// The codes of one 16-byte source vector, packed little-endian into w (E code bytes or
/// E / 2 for 4-bit codes).
template <Dtype S, Code C>
__device__ __forceinline__ void vector_codes(const uint4& v, const Params& p, const ScaledConf& c,
                                             uint32_t (&w)[2]) {
  constexpr int E = Src<S>::kVec;
  w[0] = w[1] = 0u;
  if constexpr (C == Code::e4m3 || C == Code::e5m2) {
    // fp8_quantize: fp8(x * inv, satfinite), two elements per cvt.
#pragma unroll
    for (int i = 0; i < E; i += 2)
      w[i / 4] |= fp8x2_satfinite<C == Code::e5m2>(__fmul_rn(Src<S>::element(v, i), p.inv),
                                                   __fmul_rn(Src<S>::element(v, i + 1), p.inv))
                  << (8 * (i % 4));
  } else {
    constexpr int kBits = kCodeBits<C>;
#pragma unroll
    for (int i = 0; i < E; ++i)
      w[(i * kBits) / 32] |= int_code<C>(Src<S>::element(v, i), p) << ((i * kBits) % 32);
  }
}

/// Stores the codes of vector `vec`.
template <Dtype S, Code C>
__device__ __forceinline__ void store_vector(uint8_t* codes, uint64_t vec, const uint32_t (&w)[2]) {
  constexpr int kBytes = Src<S>::kVec * kCodeBits<C> / 8;  // 8, 4 or 2
  if constexpr (kBytes == 8) {
    reinterpret_cast<uint2*>(codes)[vec] = make_uint2(w[0], w[1]);
  } else if constexpr (kBytes == 4) {
    reinterpret_cast<uint32_t*>(codes)[vec] = w[0];
  } else {
    reinterpret_cast<uint16_t*>(codes)[vec] = static_cast<uint16_t>(w[0]);
  }
}

/// Records the first non-finite element of vector `vec` in `bad` (min of flat indices).
template <Dtype S>
__device__ __forceinline__ void check_vector(const uint4& v, uint64_t vec, uint64_t& bad) {
  constexpr int E = Src<S>::kVec;
  uint32_t mask = 0;
#pragma unroll
  for (int i = 0; i < E; ++i)
    mask |= static_cast<uint32_t>(non_finite_bits(__float_as_uint(Src<S>::element(v, i)))) << i;
  if (mask) bad = min(bad, static_cast<uint64_t>(vec * E + (__ffs(mask) - 1)));
}

struct RowsArgs {
  const uint4* x;
  uint8_t* codes;
  void* scale;
  int32_t* zero;        ///< null for symmetric schemes
  uint64_t groups;      ///< groups (global mode: chunks of kVecsPerThread vectors)
  uint32_t group_vecs;  ///< 16-byte vectors per group
  uint64_t total_vecs;  ///< vectors in the tensor
  ScaledConf conf;
  const uint32_t* stats;          ///< global mode: the tensor's statistics; else null
  unsigned long long* nonfinite;  ///< null: no check
  bool wide;          ///< one thread per group whose codes are whole, aligned 16-byte units
  CheckWords* words;  ///< with host / record: the call's check words, handed off at the end
  CheckWords* host;   ///< null: no hand-off (run() reads the words itself, or no check)
  check_report::CheckRecord* record;  ///< a CheckReport's record: the deferred hand-off
};

/// The rows path (see the file comment). kBlockTeam: a block owns a group; else teams of
/// 2^team_log2 lanes. All loops are uniform per block, so shuffles and barriers are safe.
template <Dtype S, Code C, bool kBlockTeam>
__global__ void __launch_bounds__(kBlockTeam ? kMaxTeam : kThreads, kBlockTeam ? 1 : 3)
    quantize_rows_kernel(RowsArgs a, int team_log2) {
  constexpr int V = kVecsPerThread;
  __shared__ uint32_t smem[2 * 96];
  const uint32_t ts = kBlockTeam ? blockDim.x : (1u << team_log2);
  const uint32_t lane = kBlockTeam ? threadIdx.x : (threadIdx.x & (ts - 1));
  const uint64_t teams_per_block = kBlockTeam ? 1 : blockDim.x / ts;
  const uint64_t team = kBlockTeam ? 0 : threadIdx.x / ts;
  const bool global = a.stats != nullptr;
  Params gp{};
  if (global) {
    Stats s;
    s.amax = a.stats[0];
    s.nlo = a.stats[1];
    s.hi = a.stats[2];
    gp = params_from_stats<C>(s, a.conf);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      store_scale(a.scale, a.conf.scale_dtype, 0, gp.scale);
      if (a.zero) a.zero[0] = gp.zero;
    }
  }
  uint64_t bad = ~uint64_t{0};
  int parity = 0;
  // Global mode (per-tensor scale) walks the tensor from the end: the statistics pass read
  // it from the start, so its tail is still in L2.
  auto group_of = [&](uint64_t base) {
    return global ? a.groups - 1 - (base + team) : base + team;
  };
  // Software pipelining: the next step's vectors are loaded before this step's reduction
  // and arithmetic, so that loads stay in flight while the team computes. Not in block
  // teams: their 1024-thread bound leaves 64 registers, and the extra vectors would spill.
  // (A 256-thread instantiation with prefetch for rows of up to 1024 vectors, 80 registers
  // and 3 blocks per SM, measured 87.3% of copy for bf16 -> int8:token against this one's
  // 88.9%, and 92.3% against 91.4% for fp8e4m3:token, H100 2026-11-22: not kept. Nor was
  // a block team reading its group from shared memory, where a TMA bulk copy had put it two
  // groups ahead (no registers for the prefetch, 14 groups in flight per SM): 83.7-84.1% for
  // int8:token against 91.6% here, 90.7% against 93.1-93.4% for fp8e4m3:token, check off,
  // H100 2026-11-24, alternating processes.)
  constexpr bool kPrefetch = !kBlockTeam;
  const uint64_t step = gridDim.x * teams_per_block;
  uint4 next[V];
  auto fetch = [&](uint64_t base) {
    const bool act = base + team < a.groups;
    const uint64_t g = group_of(base);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const uint32_t k = lane + j * ts;
      const uint64_t idx = g * a.group_vecs + k;
      // Block teams load with the evict-first hint (ld.global.cs): H100, bf16 -> int8:token
      // 91.3% of copy against 88.1% (fp8e4m3:token 92.7% against 90.7%); the hint lost 6-7
      // points on the prefetching kernels (int4:block32, and q8_0 on the blocks path).
      const uint4 zero = make_uint4(0, 0, 0, 0);
      if (!(act && k < a.group_vecs && idx < a.total_vecs)) {
        next[j] = zero;
      } else if constexpr (kBlockTeam) {
        next[j] = __ldcs(a.x + idx);
      } else {
        next[j] = a.x[idx];
      }
    }
  };
  const uint64_t first = blockIdx.x * teams_per_block;
  if (kPrefetch && first < a.groups) fetch(first);
  for (uint64_t base = first; base < a.groups; base += step, parity ^= 1) {
    const bool active = base + team < a.groups;
    const uint64_t g = group_of(base);
    uint4 v[V];
    uint64_t vi[V];
    bool ok[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const uint32_t k = lane + j * ts;
      vi[j] = g * a.group_vecs + k;
      ok[j] = active && k < a.group_vecs && vi[j] < a.total_vecs;
      if constexpr (kPrefetch) v[j] = next[j];
    }
    if constexpr (kPrefetch) {
      if (base + step < a.groups) fetch(base + step);
    } else {
      fetch(base);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = next[j];
    }
    Params p = gp;
    if (!global) {
      // Zero vectors (lanes past the group) change nothing: the statistics start at 0.
      Stats s;
#pragma unroll
      for (int j = 0; j < V; ++j)
#pragma unroll
        for (int i = 0; i < Src<S>::kVec; ++i) s.add(Src<S>::element(v[j], i), a.conf.affine);
      // The finiteness check costs one compare unless this thread holds a NaN / Inf.
      if (a.nonfinite && s.amax >= 0x7f800000u) {
#pragma unroll
        for (int j = 0; j < V; ++j) check_vector<S>(v[j], vi[j], bad);
      }
      if constexpr (kBlockTeam) {
        block_max(s, smem, parity);
      } else {
        for (uint32_t off = ts >> 1; off > 0; off >>= 1) s.shfl_max(static_cast<int>(off));
      }
      p = params_from_stats<C>(s, a.conf);
      if (active && lane == 0) {
        store_scale(a.scale, a.conf.scale_dtype, g, p.scale);
        if (a.zero) a.zero[g] = p.zero;
      }
    }
    uint32_t w[V][2];
#pragma unroll
    for (int j = 0; j < V; ++j) vector_codes<S, C>(v[j], p, a.conf, w[j]);
    if (!kBlockTeam && a.wide) {
      // One thread holds the whole group: its codes are contiguous and whole 16-byte units.
      if (active) {
        constexpr int kBytes = Src<S>::kVec * kCodeBits<C> / 8;
        uint32_t out[2 * V];
#pragma unroll
        for (int k = 0; k < 2 * V; ++k) out[k] = 0;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if constexpr (kBytes == 8) {
            out[2 * j] = w[j][0];
            out[2 * j + 1] = w[j][1];
          } else if constexpr (kBytes == 4) {
            out[j] = w[j][0];
          } else {
            out[j / 2] |= (w[j][0] & 0xffffu) << (16 * (j % 2));
          }
        }
        const uint32_t units = a.group_vecs * kBytes / 16;
        uint4* dst = reinterpret_cast<uint4*>(a.codes + g * a.group_vecs * kBytes);
#pragma unroll
        for (int q = 0; q < 2 * V / 4; ++q)
          if (q < units)
            dst[q] = make_uint4(out[4 * q], out[4 * q + 1], out[4 * q + 2], out[4 * q + 3]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (ok[j]) store_vector<S, C>(a.codes, vi[j], w[j]);
    }
  }
  if (a.nonfinite && bad != ~uint64_t{0}) report(a.nonfinite, bad);
  if (a.host || a.record) hand_off(a.words, a.host, a.record);
}

/// Tensor statistics (absmax; -min and max when affine) into stats[0..2], and the first
/// non-finite element. x is 16-byte aligned; the n % E tail is read element by element.
template <Dtype S>
__global__ void __launch_bounds__(kThreads)
    tensor_stats_kernel(const uint4* x, uint64_t n, bool affine, uint32_t* stats,
                        unsigned long long* nonfinite) {
  constexpr int E = Src<S>::kVec;
  constexpr int U = 4;
  __shared__ uint32_t smem[2 * 96];
  const uint64_t nv = n / E;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  uint64_t bad = ~uint64_t{0};
  Stats s;
  for (uint64_t v0 = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; v0 < nv;
       v0 += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t k = v0 + u * stride;
      v[u] = k < nv ? x[k] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < E; ++i) s.add(Src<S>::element(v[u], i), affine);
    // The running absmax reaches Inf's bits only once a NaN / Inf has been read: then this
    // batch holds the thread's first one (earlier batches were finite).
    if (nonfinite && bad == ~uint64_t{0} && s.amax >= 0x7f800000u) {
#pragma unroll
      for (int u = 0; u < U; ++u) check_vector<S>(v[u], v0 + u * stride, bad);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x < n - nv * E) {
    const uint64_t i = nv * E + threadIdx.x;
    const float f = Src<S>::load(x, i);
    if (nonfinite && non_finite_bits(__float_as_uint(f))) bad = min(bad, i);
    s.add(f, affine);
  }
  if (nonfinite && bad != ~uint64_t{0}) report(nonfinite, bad);
  block_max(s, smem, 0);
  if (threadIdx.x == 0) {
    if (s.amax) atomicMax(stats + 0, s.amax);
    if (s.nlo) atomicMax(stats + 1, s.nlo);
    if (s.hi) atomicMax(stats + 2, s.hi);
  }
}

// ---- one thread per block: nvfp4, mx, GGUF q8_0 / q4_0 --------------------------------------

enum class Blk : int { nvfp4, mxfp4, mxe4m3, mxe5m2, q8_0, q4_0 };

template <Blk B>
constexpr int kBlockElems = B == Blk::nvfp4 ? 16 : 32;
template <Blk B>
constexpr bool kGguf = B == Blk::q8_0 || B == Blk::q4_0;
template <Blk B>
constexpr int kGgufBytes = B == Blk::q8_0 ? kQ8_0Bytes : kQ4_0Bytes;

struct BlocksArgs {
  const void* x;
  uint8_t* codes;
  uint8_t* scales;  ///< nvfp4 / mx: one byte per block
  uint64_t blocks;
  float* global_scale;                ///< nvfp4: written (dynamic) or read (given)
  const uint32_t* stats;              ///< nvfp4 dynamic: the tensor absmax bits
  unsigned long long* nonfinite;      ///< null: no check
  unsigned long long* overflow;       ///< GGUF: first block with an f16 overflow; null: no check
  unsigned long long* given_bad;      ///< nvfp4 given global scale check; null: none
  bool reverse;                       ///< walk the blocks from the end (second pass over x)
  CheckWords* words;                  ///< with host / record: the call's check words, handed off
  CheckWords* host;                   ///< null: no hand-off
  check_report::CheckRecord* record;  ///< a CheckReport's record: the deferred hand-off
};

/// ggml's Q8_0 element (quantize_q8_0 in gguf_legacy.cpp): roundf(x * id), half away from
/// zero, as the x86 build's byte (id = 1 / d, d = amax / 127; 0 for an all-zero block).
__device__ __forceinline__ uint32_t gguf_q8_0_code(float x, float id) {
  return float_to_byte_x86(roundf(__fmul_rn(x, id)));
}

/// ggml's Q4_0 element: min(15, (int8)(x * id + 8.5)) with the product and the sum rounded
/// separately, as ggml's non-FMA build does (__fmul_rn / __fadd_rn keep nvcc from
/// contracting them into an FMA).
__device__ __forceinline__ uint32_t gguf_q4_0_code(float x, float id) {
  const int q = static_cast<int8_t>(float_to_byte_x86(__fadd_rn(__fmul_rn(x, id), 8.5f)));
  return static_cast<uint32_t>(min(15, q)) & 0xfu;
}

/// gguf_q8_0_code for a block whose d is 0 or a normal f32, without conversion
/// instructions: then |x * id| <= 127 * (1 + 3 * 2^-24) (d, id and the product each round
/// once), so v + 1.5 * 2^23 rounds v to an integer (ties to even) in the f32's low bits,
/// and a tie (v - r = +-0.5 on v's side) moves one step further from zero, roundf's rule.
__device__ __forceinline__ uint32_t gguf_q8_0_code_normal(float x, float id) {
  const float v = __fmul_rn(x, id);
  const float t = __fadd_rn(v, 12582912.0f);
  const float diff = __fsub_rn(v, __fsub_rn(t, 12582912.0f));  // exact
  uint32_t q = __float_as_uint(t);
  q += diff == 0.5f && v > 0.0f ? 1u : 0u;
  q -= diff == -0.5f && v < 0.0f ? 1u : 0u;
  return q & 0xffu;
}

/// gguf_q4_0_code for a block whose d is 0 or a normal f32: then |x * id| <= 8 * (1 + 2 *
/// 2^-24), so w = x * id + 8.5 lies in (0.49, 16.51), where the truncation is floor: the
/// rounded integer of w + 1.5 * 2^23, less one where it rounded up.
__device__ __forceinline__ uint32_t gguf_q4_0_code_normal(float x, float id) {
  const float w = __fadd_rn(__fmul_rn(x, id), 8.5f);
  const float t = __fadd_rn(w, 12582912.0f);
  uint32_t q = __float_as_uint(t) - 0x4B400000u;
  q -= __fsub_rn(t, 12582912.0f) > w ? 1u : 0u;
  return min(q, 15u);
}

/// One lane's elements (or codes) by value, for the out-of-line rare paths below: they get
/// them in registers, where taking the address of the kernel's arrays would move those to
/// local memory. The rare paths are __noinline__ so that the compiler cannot if-convert
/// them into the common path (predicated, their instructions would issue for every block).
template <int E>
struct LaneFloats {
  float v[E];
};
template <int E>
struct LaneCodes {
  uint32_t q[E];
};

/// Q8_0 / Q4_0 codes of a block whose d is subnormal: ggml's arithmetic as written.
template <int E, bool kQ8>
__device__ __noinline__ LaneCodes<E> gguf_codes_tiny_d(LaneFloats<E> x, float id) {
  LaneCodes<E> c;
#pragma unroll
  for (int i = 0; i < E; ++i)
    c.q[i] = kQ8 ? gguf_q8_0_code(x.v[i], id) : gguf_q4_0_code(x.v[i], id);
  return c;
}

/// rcp.approx.ftz.f32: 1 / x within 1 ulp (PTX ISA), one MUFU instruction.
__device__ __forceinline__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

struct CodeWords {
  uint32_t w[2];  ///< up to 16 e2m1 codes, element i in nibble i % 8 of word i / 8
};
/// NVFP4 codes by IEEE division (x / total), for a lane whose total scale or quotients lie
/// outside the range of nvfp4_lane's corrected reciprocal product.
template <int E>
__device__ __noinline__ CodeWords nvfp4_codes_dividing(LaneFloats<E> x, float total) {
  CodeWords c{{0u, 0u}};
#pragma unroll
  for (int i = 0; i < E; ++i)
    c.w[i / 8] |= e2m1_from_f32(__fdiv_rn(x.v[i], total)) << (4 * (i % 8));
  return c;
}

/// nvfp4's block scale code as formats::nvfp4_block_scale computes it (two IEEE divisions,
/// the hardware e4m3 conversion: exact, the clamped quotient is never NaN for finite inputs),
/// for the blocks whose estimate lay near an e4m3 rounding boundary (see the blocks kernel).
__device__ __noinline__ uint32_t nvfp4_scale_dividing(float amax, float global) {
  float q = amax / 6.0f / global;
  q = q < formats::kNvfp4BlockScaleMin ? formats::kNvfp4BlockScaleMin : (q > 448.0f ? 448.0f : q);
  return fp8x2_satfinite<false>(q, 0.0f) & 0xffu;
}

// ---- e2m1 codes on the FP32 pipe (nvfp4, mxfp4) -------------------------------------------
//
// The integer pipe (LOP3, IADD3, SHF, ISETP, integer min / max) issues at half the FP32
// pipe's rate on Hopper, and a bit-twiddling e2m1 encoder spends about ten instructions per
// element there: that, not memory, bounded these kernels (nvfp4 ~50% of copy). These helpers
// use FP32 instructions. With a = |v| / 2 (exact):
//   u1 = sat(a), u2 = sat(a - 1), u3 = sat(a - 2)          (sat: clamp to [0, 1]; all exact)
//   code = rne(4 u1) + rne(2 u2 + u3)
// rne(4 u1) = rne(2 min(|v|, 2)) counts the steps of 0.5 below 2 (codes 0..4); 2 u2 + u3 is
// |v| - 2 in [2, 4] (steps of 1: codes 4..6) and 2 + (|v| / 2 - 2) in [4, 6] (the step of 2:
// codes 6, 7), exact in one FFMA (u3 > 0 only where u2 = 1, and 2 + u3 keeps u3's ulp); each
// rne's ties (0.25, 0.75, ..., 5) fall on e2m1's own ties-to-even, and values past 6
// saturate to 7. Both roundings are one addition to 1.5 * 2^23 (whose ulp is 1: the integer
// lands in the low bits): the second adds 2 u2 + u3 to M + rne(4 u1), which is M + 4 (even)
// whenever 2 u2 + u3 > 0, so its ties still go to even. 6 FP32 instructions per element;
// checked against f32_to_f4e2m1 (every f32 in [2^-5, 8), every bf16) and against
// formats::nvfp4_quantize / mxfp4_quantize (1.9e9 cases) on the host, whose IEEE single
// operations are the same.

constexpr float kRoundMagic = 12582912.0f;  ///< 1.5 * 2^23
constexpr uint32_t kRoundMagicBits = 0x4b400000u;

/// M + e2m1's magnitude code from the clamped terms (see above), as f32 bits.
__device__ __forceinline__ uint32_t e2m1_round(float u1, float u2, float u3) {
  return __float_as_uint(__fadd_rn(__fmaf_rn(u2, 2.0f, u3), __fmaf_rn(u1, 4.0f, kRoundMagic)));
}

/// M + e2m1's magnitude code of 2 h (h = the value / 2, exact).
__device__ __forceinline__ uint32_t e2m1_mag_biased(float h) {
  const float a = fabsf(h);
  return e2m1_round(__saturatef(a), __saturatef(__fadd_rn(a, -1.0f)),
                    __saturatef(__fadd_rn(a, -2.0f)));
}

/// M + e2m1's magnitude code of x * 2 fh, fh a power of two (mxfp4: 2^-e / 2): where
/// x * 2 fh >= 0.125 (all that can give a nonzero code) the products are exact, so each
/// term rounds once as above; below, every term is 0 or under 1/16 either way.
__device__ __forceinline__ uint32_t e2m1_mag_biased(float x, float fh) {
  const float a = fabsf(x);
  return e2m1_round(__saturatef(__fmul_rn(a, fh)), __saturatef(__fmaf_rn(a, fh, -1.0f)),
                    __saturatef(__fmaf_rn(a, fh, -2.0f)));
}

/// N codes (element i in nibble i) from their biased magnitudes, `signs` (bit 4 i + 3:
/// element i's sign) OR-ed in. A NaN value gives magnitude 0 (sat flushes NaN to 0).
template <int N>
__device__ __forceinline__ uint32_t e2m1_word(const uint32_t* mag, uint32_t signs) {
  static_assert(N <= 8);
  uint32_t w = 0, bias = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    w += mag[i] * (1u << (4 * i));  // one IMAD each: the nibbles never carry
    bias += kRoundMagicBits * (1u << (4 * i));
  }
  return (w - bias) | signs;
}

/// The sign bits of a 16-byte source vector's elements at their e2m1 nibbles' bit 3 (element
/// i: bit 4 i + 3), by byte permutes: the bytes holding the signs of the even elements land
/// on byte k's bit 7 and move to bit 3 with one shift, the odd elements' already sit on bit 7.
template <Dtype S>
__device__ __forceinline__ uint32_t e2m1_sign_bits(const uint4& v) {
  if constexpr (S == Dtype::f32) {  // 4 elements: the signs are bit 31 of each word
    const uint32_t even = __byte_perm(v.x, v.z, 0x0073);  // el 0, 2 -> bits 7, 15
    const uint32_t odd = __byte_perm(v.y, v.w, 0x0073);   // el 1, 3 -> bits 7, 15
    return ((even >> 4) & 0x0808u) | (odd & 0x8080u);
  } else {  // 8 elements: bit 15 (even) and 31 (odd) of each word
    const uint32_t lo = __byte_perm(v.x, v.y, 0x7531);  // el 0, 1, 2, 3 -> bits 7, 15, 23, 31
    const uint32_t hi = __byte_perm(v.z, v.w, 0x7531);  // el 4, 5, 6, 7
    const uint32_t even = __byte_perm(lo, hi, 0x6420);  // el 0, 2, 4, 6 -> bits 7, 15, 23, 31
    const uint32_t odd = __byte_perm(lo, hi, 0x7531);   // el 1, 3, 5, 7
    return ((even >> 4) & 0x08080808u) | (odd & 0x80808080u);
  }
}

/// The same from the elements as f32 (the unaligned path, which has no raw vector).
template <int N>
__device__ __forceinline__ uint32_t e2m1_sign_bits(const float (&x)[N]) {
  uint32_t s = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) s |= (__float_as_uint(x[i]) >> 31) << (4 * i + 3);
  return s;
}

/// Max of |x| as f32 bits over `n` values (the bits order like the values; NaN > Inf).
template <int N>
__device__ __forceinline__ uint32_t amax_bits(const float (&x)[N]) {
  uint32_t m = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) m = max(m, __float_as_uint(x[i]) & 0x7fffffffu);
  return m;
}

/// Max of |x| as f32 bits over a 16-byte source vector, from its raw bits: 16-bit sources
/// take the max of both halves at once (VIMNMX.U16x2: the f16 / bf16 magnitude bits order
/// like the values, NaN above Inf), which costs half the integer instructions of widening.
template <Dtype S>
__device__ __forceinline__ uint32_t amax_bits(const uint4& v) {
  if constexpr (S == Dtype::f32) {
    return max(max(v.x & 0x7fffffffu, v.y & 0x7fffffffu),
               max(v.z & 0x7fffffffu, v.w & 0x7fffffffu));
  } else {
    constexpr uint32_t kMag = 0x7fff7fffu;
    const uint32_t m = __vmaxu2(__vmaxu2(v.x & kMag, v.y & kMag), __vmaxu2(v.z & kMag, v.w & kMag));
    const uint32_t m16 = max(m & 0xffffu, m >> 16);
    if constexpr (S == Dtype::bf16) return m16 << 16;
    // f16: cvt.f32.f16 is exact and monotonic on magnitudes (NaN stays NaN, above Inf).
    return __float_as_uint(__half2float(__ushort_as_half(static_cast<unsigned short>(m16))));
  }
}

/// The first non-finite element of x (index base + i) folded into `bad`.
template <int N>
__device__ __forceinline__ void first_non_finite(const float (&x)[N], uint64_t base,
                                                 uint64_t& bad) {
  uint32_t mask = 0;
#pragma unroll
  for (int i = 0; i < N; ++i)
    mask |= static_cast<uint32_t>(non_finite_bits(__float_as_uint(x[i]))) << i;
  if (mask) bad = min(bad, base + (__ffs(mask) - 1));
}

/// nvfp4's per-call constants: the global scale, and 1 / (6 global) for the block scale
/// estimate where `fast_scale` (global in [2^-126, 2^100], where neither the reciprocal nor
/// the estimate's bound fails).
struct Nvfp4Global {
  float global;
  float inv6g;
  bool fast_scale;
};

/// nvfp4 for a lane's N elements (8 or 16) of one block whose absmax is `amax`: returns
/// the block's scale code and writes the lane's codes to w[0 .. N / 8] (element i in nibble
/// i % 8 of word i / 8); sgn: the elements' sign bits, one word per 8 elements, as
/// e2m1_word takes them.
template <int N>
__device__ __forceinline__ uint8_t nvfp4_lane(const float* x, const uint32_t* sgn, float amax,
                                              const Nvfp4Global& g, uint32_t* w) {
  constexpr int kWords = (N + 7) / 8, kPerWord = N < 8 ? N : 8;
  // nvfp4_quantize: e2m1(clamp(x / (global * block_scale), -6, 6)); the encoder saturates,
  // so the clamp is implied. formats::nvfp4_block_scale with the hardware e4m3 conversion
  // (exact: the clamped quotient is never NaN for finite inputs), and the code (a normal
  // e4m3, >= 2^-6) widened by placing its bits in an f32 and scaling by 2^120.
  // The block scale e4m3(clamp(amax / 6 / global, 2^-6, 448)) decides the code only through
  // which side of e4m3's rounding boundaries (midpoints, values, the clamp limits: in
  // [2^-6, 448] each a multiple of 2^19 in f32 bits) the quotient falls on. The estimate
  // amax * inv6g (inv6g = RN(1 / RN(6 * global))) is within 3 roundings of amax / (6 *
  // global) and the reference's quotient within 2, so within 5 ulps of each other: where
  // the estimate is more than 8 ulps from every boundary it gives the same code, and only
  // the rest divide (out of line). Below 2^-7 or above 480 the clamp decides alone.
  uint8_t sc;
  if (g.global == 0.0f) {
    sc = 0;
  } else if (g.fast_scale) {
    const float q = __fmul_rn(amax, g.inv6g);
    const uint32_t qb = __float_as_uint(q);
    if (((qb + 8u) & 0x7ffffu) < 16u && qb >= 0x3c000000u && qb <= 0x43f00000u) {
      sc = static_cast<uint8_t>(nvfp4_scale_dividing(amax, g.global));
    } else {
      const float c = fminf(fmaxf(q, formats::kNvfp4BlockScaleMin), 448.0f);
      sc = static_cast<uint8_t>(fp8x2_satfinite<false>(c, 0.0f));
    }
  } else {
    sc = static_cast<uint8_t>(nvfp4_scale_dividing(amax, g.global));
  }
  const float total =
      __fmul_rn(g.global, __fmul_rn(__uint_as_float(static_cast<uint32_t>(sc) << 20), 0x1p120f));
  // x / total as IEEE division gives it (RN), by Markstein's correction: with y =
  // RN(1 / total) and q0 = RN(x y), the remainder r = x - total q0 is exact in one FMA and
  // RN(q0 + r y) is the correctly rounded quotient, barring overflow and underflow
  // (P. Markstein, IBM J. Res. Dev. 34(1), 1990; also checked on the host): total in
  // [2^-90, 2^90] and |x| y <= 2^90 keep r and q clear of both (the values that round into a
  // nonzero code are normal). Halving y and q0 gives h = q / 2 exactly for e2m1_mag_biased.
  // Outside that range (clamped block scales, extreme global scales) the lane divides, out
  // of line.
  // y: rcp.rn's own arithmetic for normal operands (one Newton step from the MUFU
  // estimate, which its slow path only replaces near the exponent range's ends).
  const float y0 = rcp_approx(total);
  const float y = __fmaf_rn(y0, __fmaf_rn(-total, y0, 1.0f), y0);
  if (total >= 0x1p-90f && total <= 0x1p90f && __fmul_rn(amax, y) <= 0x1p90f) {
    const float yh = 0.5f * y, t2 = 2.0f * total;
    uint32_t mag[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float q0h = __fmul_rn(x[i], yh);
      mag[i] = e2m1_mag_biased(__fmaf_rn(__fmaf_rn(-t2, q0h, x[i]), yh, q0h));
    }
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = e2m1_word<kPerWord>(mag + 8 * k, sgn[k]);
  } else {
    LaneFloats<N> xs;
#pragma unroll
    for (int i = 0; i < N; ++i) xs.v[i] = x[i];
    const CodeWords c = nvfp4_codes_dividing<N>(xs, total);
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = c.w[k];
  }
  if (g.global == 0.0f) {
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = 0;
  }
  return sc;
}

/// Max over the T consecutive lanes of a team (T a power of two, every lane of the warp
/// taking part).
template <int T>
__device__ __forceinline__ uint32_t team_max(uint32_t v) {
#pragma unroll
  for (int off = 1; off < T; off <<= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

/// Q4_0's signed absmax over a team: the value of largest magnitude, the first one (lowest
/// element index) on ties, as ggml's `if (amax < fabsf(x))` scan finds it. `amax` / `mx`
/// hold the lane's own (first) maximum; lanes hold the block's elements in lane order.
template <int T>
__device__ __forceinline__ float team_signed_max(float amax, float mx) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int off = 1; off < T; off <<= 1) {
    const float oa = __shfl_xor_sync(0xffffffffu, amax, off);
    const float om = __shfl_xor_sync(0xffffffffu, mx, off);
    // The lower half of each pair keeps its value on ties; the upper half takes the other's.
    const bool take = (lane & off) ? !(amax > oa) : (oa > amax);
    amax = take ? oa : amax;
    mx = take ? om : mx;
  }
  return mx;
}

/// The blocks path (see the file comment): a warp owns a run of 32 * kBlockVecs 16-byte
/// source vectors; lane l loads vectors l, l + 32, l + 64, l + 96 (each load instruction
/// reads 512 contiguous bytes), so a format block of N elements lies in T = N / E
/// consecutive lanes, which reduce its absmax with shuffles. Codes leave from registers
/// (4-, 8- or 2-byte stores, consecutive across the warp); GGUF blocks (18 or 34 bytes,
/// 2-byte aligned) are assembled per warp in shared memory and written out with 16-byte
/// stores. kVec: x is 16-byte aligned (else element loads, same layout).
constexpr int kBlockVecs = 4;  ///< 16-byte source vectors a lane holds per step

template <Dtype S, Blk B, bool kVec>
__global__ void __launch_bounds__(kThreads) quantize_blocks_kernel(BlocksArgs a) {
  constexpr int N = kBlockElems<B>;
  constexpr int E = Src<S>::kVec;
  constexpr int T = N / E;  // lanes per format block: 2, 4 or 8
  constexpr int V = kBlockVecs;
  constexpr int kWarpBlocks = 32 * V / T;
  constexpr int kStage = kGguf<B> ? kWarpBlocks * kGgufBytes<B> : 16;  // bytes per warp
  static_assert(32 % T == 0 && kStage % 16 == 0);
  __shared__ __align__(16) uint8_t stage[kThreads / 32][kStage];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int t = lane % T;  // the lane's place in its block

  Nvfp4Global nv{0.0f, 0.0f, false};
  if constexpr (B == Blk::nvfp4) {
    float global;
    if (a.stats) {
      global = formats::nvfp4_global_scale(__uint_as_float(a.stats[0]));
      if (blockIdx.x == 0 && threadIdx.x == 0) a.global_scale[0] = global;
    } else {
      global = a.global_scale[0];
      if (a.given_bad && blockIdx.x == 0 && threadIdx.x == 0 &&
          (!(global >= 0.0f && global <= 3.40282347e38f) ||
           (global > 0.0f && global < formats::kMinScale)))
        report(a.given_bad, 0);
    }
    nv.global = global;
    nv.fast_scale = global >= 0x1p-126f && global <= 0x1p100f;
    if (nv.fast_scale) nv.inv6g = 1.0f / (6.0f * global);
  }
  uint64_t bad = ~uint64_t{0}, ovf = ~uint64_t{0};
  const uint64_t total_vecs = a.blocks * T;
  const uint64_t chunks = (total_vecs + 32 * V - 1) / (32 * V);  // a chunk: one warp's step
  const uint64_t warps = static_cast<uint64_t>(gridDim.x) * (blockDim.x / 32);
  // The loop is uniform per warp (shuffles, and GGUF's staging uses __syncwarp). `reverse`
  // walks the chunks from the end, so that a second pass over x starts where the first one
  // ended and finds that part still in L2.
  // Aligned sources are software-pipelined: the next step's vectors are loaded before this
  // step's arithmetic, so that loads stay in flight while the warp computes (without it a
  // warp alternates between waiting and computing, and the H200's bandwidth needs more
  // bytes in flight than that leaves).
  // Vector j of the lane in its chunk. kPair (GGUF, nvfp4, mxfp4): vectors 2 p and 2 p + 1
  // of a lane are adjacent (2 E elements of one block per lane, T / 2 lanes per block: half
  // the shuffles and the per-block work of E elements per lane, which bound these kernels'
  // issue). (Measured on the H100: GGUF q4_0 68 -> 94% of copy, mxfp4 77 -> 84%; nvfp4 with
  // the FP32-pipe e2m1 encoder 89.3 -> 93.6%, where before it, at 50.9%, pairs lost 1.7
  // points.)
  constexpr bool kPair = B != Blk::mxe4m3 && B != Blk::mxe5m2;
  constexpr bool kE2m1 = B == Blk::nvfp4 || B == Blk::mxfp4;
  auto vec_of = [&](int j) { return kPair ? (j >> 1) * 64 + 2 * lane + (j & 1) : j * 32 + lane; };
  uint4 next[V];
  auto fetch = [&](uint64_t c) {
    const uint64_t chunk = a.reverse ? chunks - 1 - c : c;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const uint64_t k = chunk * (32 * V) + vec_of(j);
      next[j] = k < total_vecs ? static_cast<const uint4*>(a.x)[k] : make_uint4(0, 0, 0, 0);
    }
  };
  const uint64_t first = blockIdx.x * static_cast<uint64_t>(blockDim.x / 32) + warp;
  if (kVec && first < chunks) fetch(first);
  for (uint64_t c0 = first; c0 < chunks; c0 += warps) {
    const uint64_t chunk = a.reverse ? chunks - 1 - c0 : c0;
    uint4 cur[V];
    if constexpr (kVec) {
#pragma unroll
      for (int j = 0; j < V; ++j) cur[j] = next[j];
      if (c0 + warps < chunks) fetch(c0 + warps);
    }
    float x[V][E];
    uint64_t vi[V];
    bool ok[V];
    uint32_t sgn[V];  // e2m1 formats: the elements' sign bits at their nibbles' bit 3
#pragma unroll
    for (int j = 0; j < V; ++j) {
      vi[j] = chunk * (32 * V) + vec_of(j);
      ok[j] = vi[j] < total_vecs;  // whole blocks: T divides 32
      if constexpr (kVec) {
#pragma unroll
        for (int i = 0; i < E; ++i) x[j][i] = Src<S>::element(cur[j], i);
        if constexpr (kE2m1) sgn[j] = e2m1_sign_bits<S>(cur[j]);
      } else {
#pragma unroll
        for (int i = 0; i < E; ++i) x[j][i] = ok[j] ? Src<S>::load(a.x, vi[j] * E + i) : 0.0f;
        if constexpr (kE2m1) sgn[j] = e2m1_sign_bits(x[j]);
      }
    }
    uint32_t am[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      uint32_t mine;
      if constexpr (kVec) {
        mine = amax_bits<S>(cur[j]);
      } else {
        mine = amax_bits(x[j]);
      }
      // The finiteness check costs a compare unless the lane holds a NaN / Inf.
      if (a.nonfinite && mine >= 0x7f800000u) first_non_finite(x[j], vi[j] * E, bad);
      am[j] = mine;
      if constexpr (!kPair) am[j] = team_max<T>(mine);
    }
    if constexpr (kGguf<B>) {
      uint8_t* st = stage[warp];
      constexpr int E2 = 2 * E;  // a lane's elements of its block
      constexpr int TL = T / 2;  // lanes per block
      const int tl = lane % TL;  // the lane's place in its block
#pragma unroll
      for (int pj = 0; pj < V / 2; ++pj) {
        const int j = 2 * pj;
        float xs2[E2];
#pragma unroll
        for (int i = 0; i < E; ++i) xs2[i] = x[j][i], xs2[E + i] = x[j + 1][i];
        const int local = (pj * 32 + lane) / TL;  // the block's index within the chunk
        uint8_t* blk = st + local * kGgufBytes<B>;
        float d;
        uint32_t q[E2];
        if constexpr (B == Blk::q8_0) {
          d = __uint_as_float(team_max<TL>(max(am[j], am[j + 1]))) / 127.0f;
          const float id = d != 0.0f ? 1.0f / d : 0.0f;
#pragma unroll
          for (int i = 0; i < E2; ++i) q[i] = gguf_q8_0_code_normal(xs2[i], id);
          if (d > 0.0f && d < 0x1p-126f) {
            LaneFloats<E2> xs;
#pragma unroll
            for (int i = 0; i < E2; ++i) xs.v[i] = xs2[i];
            const LaneCodes<E2> c = gguf_codes_tiny_d<E2, true>(xs, id);
#pragma unroll
            for (int i = 0; i < E2; ++i) q[i] = c.q[i];
          }
        } else {
          float amax = 0.0f, mx = 0.0f;
#pragma unroll
          for (int i = 0; i < E2; ++i) {
            if (amax < fabsf(xs2[i])) {
              amax = fabsf(xs2[i]);
              mx = xs2[i];
            }
          }
          d = team_signed_max<TL>(amax, mx) / -8.0f;
          const float id = d != 0.0f ? 1.0f / d : 0.0f;
#pragma unroll
          for (int i = 0; i < E2; ++i) q[i] = gguf_q4_0_code_normal(xs2[i], id);
          if (fabsf(d) > 0.0f && fabsf(d) < 0x1p-126f) {
            LaneFloats<E2> xs;
#pragma unroll
            for (int i = 0; i < E2; ++i) xs.v[i] = xs2[i];
            const LaneCodes<E2> c = gguf_codes_tiny_d<E2, false>(xs, id);
#pragma unroll
            for (int i = 0; i < E2; ++i) q[i] = c.q[i];
          }
        }
        // f32_to_f16(d) by the hardware conversion: the same bits for every non-NaN d
        // (round to nearest even, subnormals kept, overflow to Inf).
        const uint16_t d16 = __half_as_ushort(__float2half_rn(d));
        const uint64_t b = vi[j] / T;
        if (a.overflow && ok[j] && tl == 0 && (d16 & 0x7fffu) == 0x7c00u) ovf = min(ovf, b);
        uint16_t* h = reinterpret_cast<uint16_t*>(blk);  // 2-byte aligned
        if (tl == 0) h[0] = d16;
        if constexpr (B == Blk::q8_0) {
          // Elements tl E2 .. tl E2 + E2 - 1 are bytes 2 + tl E2 ...
#pragma unroll
          for (int i = 0; i < E2; i += 2) h[1 + (tl * E2 + i) / 2] = q[i] | (q[i + 1] << 8);
        } else {
          // Byte k (k < 16) holds element k (low nibble) and k + 16 (high): lanes tl < TL / 2
          // hold the low halves and take the high ones from lane tl + TL / 2.
          uint32_t mine = 0;
#pragma unroll
          for (int i = 0; i < 8; ++i) mine |= q[i] << (4 * i);
          uint32_t mine2 = 0;
#pragma unroll
          for (int i = 8; i < E2; ++i) mine2 |= q[i] << (4 * (i - 8));
          const uint32_t other = __shfl_xor_sync(0xffffffffu, mine, TL / 2);
          const uint32_t other2 = E2 > 8 ? __shfl_xor_sync(0xffffffffu, mine2, TL / 2) : 0u;
          if (tl < TL / 2) {
#pragma unroll
            for (int i = 0; i < E2; i += 2) {
              const uint32_t o = i < 8 ? other : other2;
              const int sh = 4 * (i % 8);
              const uint32_t b0 = (q[i] | (((o >> sh) & 0xfu) << 4));
              const uint32_t b1 = (q[i + 1] | (((o >> (sh + 4)) & 0xfu) << 4));
              h[1 + (tl * E2 + i) / 2] = static_cast<uint16_t>(b0 | (b1 << 8));
            }
          }
        }
      }
      __syncwarp();
      const uint64_t b0 = chunk * kWarpBlocks;
      const uint64_t nb = a.blocks - b0 < kWarpBlocks ? a.blocks - b0 : kWarpBlocks;
      const uint32_t bytes = static_cast<uint32_t>(nb) * kGgufBytes<B>;
      uint8_t* out = a.codes + b0 * kGgufBytes<B>;
      if (aligned(out, 16)) {
        for (uint32_t k = lane; k < bytes / 16; k += 32)
          reinterpret_cast<uint4*>(out)[k] = reinterpret_cast<const uint4*>(st)[k];
        for (uint32_t k = bytes / 16 * 16 + lane; k < bytes; k += 32) out[k] = st[k];
      } else {
        for (uint32_t k = lane; k < bytes; k += 32) out[k] = st[k];
      }
      __syncwarp();
    } else if constexpr (kPair) {  // nvfp4, mxfp4: per pair of vectors
      constexpr int E2 = 2 * E;
      constexpr int TL = T / 2;
      const int tl = lane % TL;
#pragma unroll
      for (int pj = 0; pj < V / 2; ++pj) {
        const int j = 2 * pj;
        const float amax = __uint_as_float(team_max<TL>(max(am[j], am[j + 1])));
        float xs2[E2];
#pragma unroll
        for (int i = 0; i < E; ++i) xs2[i] = x[j][i], xs2[E + i] = x[j + 1][i];
        uint32_t sg[2];  // sign bits per 8 elements
        if constexpr (E2 == 16) {
          sg[0] = sgn[j], sg[1] = sgn[j + 1];
        } else {
          sg[0] = sgn[j] | (sgn[j + 1] << 16), sg[1] = 0;
        }
        uint32_t w[2] = {0u, 0u};  // the lane's 2 E codes, little-endian
        uint8_t sc;
        if constexpr (B == Blk::nvfp4) {
          sc = nvfp4_lane<E2>(xs2, sg, amax, nv, w);
        } else {
          sc = formats::mx_scale_code(amax, 2);
          const float fh = formats::mx_unscale(0.5f, sc);  // 2^-e / 2, exact
          uint32_t mag[E2];
#pragma unroll
          for (int i = 0; i < E2; ++i) mag[i] = e2m1_mag_biased(xs2[i], fh);
#pragma unroll
          for (int k = 0; k < E2 / 8; ++k) w[k] = e2m1_word<8>(mag + 8 * k, sg[k]);
        }
        if (!ok[j]) continue;
        if (tl == 0) a.scales[vi[j] / T] = sc;
        // The lane's two vectors are adjacent: its E2 / 2 code bytes start at vector vi[j]'s.
        if constexpr (E2 == 16) {
          reinterpret_cast<uint2*>(a.codes)[vi[j] / 2] = make_uint2(w[0], w[1]);
        } else {
          reinterpret_cast<uint32_t*>(a.codes)[vi[j] / 2] = w[0];
        }
      }
    } else {  // MXFP8, one vector at a time (E codes of one byte per lane)
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const uint8_t sc =
            formats::mx_scale_code(__uint_as_float(am[j]), B == Blk::mxe4m3 ? 8 : 15);
        const float f = formats::mx_unscale(1.0f, sc);
        uint32_t w[2] = {0u, 0u};  // the lane's codes, little-endian
#pragma unroll
        for (int i = 0; i < E; i += 2)
          w[i / 4] |=
              fp8x2_satfinite<B == Blk::mxe5m2>(__fmul_rn(x[j][i], f), __fmul_rn(x[j][i + 1], f))
              << (8 * (i % 4));
        if (!ok[j]) continue;
        if (t == 0) a.scales[vi[j] / T] = sc;
        if constexpr (E == 8) {
          reinterpret_cast<uint2*>(a.codes)[vi[j]] = make_uint2(w[0], w[1]);
        } else {
          reinterpret_cast<uint32_t*>(a.codes)[vi[j]] = w[0];
        }
      }
    }
  }
  if (a.nonfinite && bad != ~uint64_t{0}) report(a.nonfinite, bad);
  if (a.overflow && ovf != ~uint64_t{0}) report(a.overflow, ovf);
  if (a.host || a.record) hand_off(a.words, a.host, a.record);
}

// ---- the generic path -------------------------------------------------------------------------

struct GenericArgs {
  const void* x;
  Dtype src;
  uint64_t n;
  formats::GroupMap gm;
  QuantFormat format;
  bool affine;
  uint32_t* amax;         ///< per group
  uint32_t* nlo;          ///< per group (affine)
  uint32_t* hi;           ///< per group (affine)
  uint32_t* tensor_amax;  ///< nvfp4: the tensor's absmax
  unsigned long long* nonfinite;
};

/// Per-group statistics: each lane takes 8 consecutive elements per step; runs of one group
/// are merged in registers and flushed with atomicMax (one per warp where the whole warp
/// shares a group, as for per-tensor scales).
__global__ void __launch_bounds__(kThreads) generic_stats_kernel(GenericArgs a) {
  __shared__ uint32_t smem[2 * 96];
  const uint64_t chunks = (a.n + 7) / 8;
  const int lane = threadIdx.x & 31;
  const uint64_t warps = static_cast<uint64_t>(gridDim.x) * (blockDim.x / 32);
  uint64_t bad = ~uint64_t{0};
  Stats cur, tensor;
  int64_t cur_g = -1;
  auto flush = [&] {
    if (cur_g < 0) return;
    if (cur.amax) atomicMax(a.amax + cur_g, cur.amax);
    if (cur.nlo) atomicMax(a.nlo + cur_g, cur.nlo);
    if (cur.hi) atomicMax(a.hi + cur_g, cur.hi);
  };
  for (uint64_t base =
           (blockIdx.x * static_cast<uint64_t>(blockDim.x / 32) + threadIdx.x / 32) * 32;
       base < chunks; base += warps * 32) {
    const uint64_t c = base + lane;
    for (int j = 0; j < 8; ++j) {
      const uint64_t i = c * 8 + j;
      if (c >= chunks || i >= a.n) break;
      const float x = load_any(a.x, a.src, i);
      if (a.nonfinite && non_finite_bits(__float_as_uint(x))) bad = min(bad, i);
      const int64_t g = a.gm.group_of(static_cast<int64_t>(i));
      if (g != cur_g) {
        flush();
        cur = Stats();
        cur_g = g;
      }
      cur.add(x, a.affine);
      tensor.add(x, false);
    }
  }
  // A warp whose lanes all hold the same group flushes once.
  const int64_t g0 = __shfl_sync(0xffffffffu, cur_g, 0);
  if (__all_sync(0xffffffffu, cur_g == g0 || cur_g < 0) && g0 >= 0) {
    cur.warp_max();
    if (lane == 0) flush();
  } else {
    flush();
  }
  if (a.nonfinite && bad != ~uint64_t{0}) report(a.nonfinite, bad);
  if (a.tensor_amax) {
    block_max(tensor, smem, 0);
    if (threadIdx.x == 0 && tensor.amax) atomicMax(a.tensor_amax, tensor.amax);
  }
}

struct ParamsArgs {
  QuantFormat format;
  ScaledConf conf;
  bool given;
  uint64_t count;
  const uint32_t* amax;
  const uint32_t* nlo;
  const uint32_t* hi;
  const uint32_t* tensor_amax;
  void* scale;
  int32_t* zero;
  float* global_scale;
  float* inv;   ///< per group: 1 / scale (int, fp8)
  int32_t* zw;  ///< per group: zero point (int)
  unsigned long long* given_bad;
};

/// check_given_scale's condition: finite, >= 0, and 0 or at least 2^-126.
__device__ __forceinline__ bool bad_given_scale(float s) {
  return !(s >= 0.0f && s <= 3.40282347e38f) || (s > 0.0f && s < formats::kMinScale);
}

__global__ void __launch_bounds__(kThreads) generic_params_kernel(ParamsArgs a) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t g = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; g < a.count;
       g += stride) {
    Stats s;
    s.amax = a.amax[g];
    s.nlo = a.nlo[g];
    s.hi = a.hi[g];
    switch (a.format) {
      case QuantFormat::int8:
      case QuantFormat::uint8:
      case QuantFormat::int4:
      case QuantFormat::uint4: {
        Params p;
        if (a.given) {
          const float sc = load_scale(a.scale, a.conf.scale_dtype, g);
          const int32_t z = a.conf.affine ? a.zero[g] : 0;
          if (a.given_bad && (bad_given_scale(sc) || z < a.conf.qmin || z > a.conf.qmax))
            report(a.given_bad, g);
          const formats::IntParams q = formats::int_params_from_scale(sc, z);
          p = {q.scale, q.inv_scale, q.zero};
        } else {
          p = params_from_stats<Code::i8>(s, a.conf);
          store_scale(a.scale, a.conf.scale_dtype, g, p.scale);
          if (a.conf.affine) a.zero[g] = p.zero;
        }
        a.inv[g] = p.inv;
        a.zw[g] = p.zero;
        break;
      }
      case QuantFormat::fp8e4m3:
      case QuantFormat::fp8e5m2: {
        float sc;
        if (a.given) {
          sc = static_cast<const float*>(a.scale)[g];
          if (a.given_bad && bad_given_scale(sc)) report(a.given_bad, g);
        } else {
          sc = formats::fp8_scale(__uint_as_float(s.amax), a.format == QuantFormat::fp8e5m2);
          static_cast<float*>(a.scale)[g] = sc;
        }
        a.inv[g] = sc == 0.0f ? 0.0f : 1.0f / sc;
        break;
      }
      case QuantFormat::nvfp4: {
        float global;
        if (a.given) {
          global = a.global_scale[0];
          if (g == 0 && a.given_bad && bad_given_scale(global)) report(a.given_bad, 0);
        } else {
          global = formats::nvfp4_global_scale(__uint_as_float(*a.tensor_amax));
          if (g == 0) a.global_scale[0] = global;
        }
        static_cast<uint8_t*>(a.scale)[g] =
            global == 0.0f ? 0 : formats::nvfp4_block_scale(__uint_as_float(s.amax), global);
        break;
      }
      default: {  // mx
        const int emax =
            a.format == QuantFormat::mxfp4 ? 2 : (a.format == QuantFormat::mxfp8e4m3 ? 8 : 15);
        static_cast<uint8_t*>(a.scale)[g] = formats::mx_scale_code(__uint_as_float(s.amax), emax);
        break;
      }
    }
  }
}

struct ElementsArgs {
  const void* x;
  Dtype src;
  uint64_t n;
  formats::GroupMap gm;
  QuantFormat format;
  ScaledConf conf;
  uint8_t* codes;
  const uint8_t* scale_codes;  ///< nvfp4 / mx
  const float* global_scale;   ///< nvfp4
  const float* inv;
  const int32_t* zw;
};

__device__ __forceinline__ uint32_t generic_code(const ElementsArgs& a, uint64_t i) {
  const float x = load_any(a.x, a.src, i);
  const auto g = static_cast<uint64_t>(a.gm.group_of(static_cast<int64_t>(i)));
  switch (a.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
    case QuantFormat::int4:
    case QuantFormat::uint4: {
      formats::IntParams q;
      q.inv_scale = a.inv[g];
      q.zero = a.zw[g];
      return static_cast<uint32_t>(formats::int_quantize(x, q, a.conf.qmin, a.conf.qmax));
    }
    case QuantFormat::fp8e4m3:
    case QuantFormat::fp8e5m2:
      return formats::fp8_quantize(x, a.inv[g], a.format == QuantFormat::fp8e5m2);
    case QuantFormat::nvfp4:
      return formats::nvfp4_quantize(x, a.global_scale[0], a.scale_codes[g]);
    case QuantFormat::mxfp4:
      return formats::mxfp4_quantize(x, a.scale_codes[g]);
    default:
      return formats::mxfp8_quantize(x, a.scale_codes[g], a.format == QuantFormat::mxfp8e5m2);
  }
}

/// One thread per code byte: packed formats combine elements 2u and 2u + 1 (the high
/// nibble of an odd count's last byte is 0, as in the reference's zeroed buffer).
__global__ void __launch_bounds__(kThreads) generic_elements_kernel(ElementsArgs a, bool packed) {
  const uint64_t units = packed ? (a.n + 1) / 2 : a.n;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t u = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; u < units;
       u += stride) {
    if (packed) {
      const uint32_t lo = generic_code(a, 2 * u) & 0xfu;
      const uint32_t hi = 2 * u + 1 < a.n ? generic_code(a, 2 * u + 1) & 0xfu : 0u;
      a.codes[u] = static_cast<uint8_t>(lo | (hi << 4));
    } else {
      a.codes[u] = static_cast<uint8_t>(generic_code(a, u));
    }
  }
}

// ---- host side --------------------------------------------------------------------------------

bool is_scaled(QuantFormat f) {
  return f == QuantFormat::int8 || f == QuantFormat::uint8 || f == QuantFormat::int4 ||
         f == QuantFormat::uint4 || f == QuantFormat::fp8e4m3 || f == QuantFormat::fp8e5m2;
}

bool is_contiguous(const QuantizeDesc& d) {
  const Strides c = contiguous_strides(d.shape);
  for (int i = 0; i < d.shape.size(); ++i)
    if (d.shape[i] != 1 && d.src_strides[i] != c[i]) return false;
  return true;
}

enum class Path { rows, tensor, blocks, generic };

/// The path a descriptor takes when its views are aligned.
Path choose_path(const QuantizeDesc& d) {
  const QuantScheme& s = d.scheme;
  const int64_t n = numel(d.shape);
  if (s.format == QuantFormat::gguf) return Path::blocks;
  if (n == 0) return Path::generic;
  if (s.format == QuantFormat::nvfp4 || is_mx(s.format)) return Path::blocks;
  if (d.given_scales) return Path::generic;
  const int E = 16 / static_cast<int>(bit_width(d.src) / 8);
  if (s.granularity == Granularity::tensor) return n % E == 0 ? Path::tensor : Path::generic;
  const int64_t g = flat_group_length(s, d.shape, n);
  if (g <= 0 || g % E != 0 || g / E > int64_t{kMaxTeam} * kVecsPerThread) return Path::generic;
  return Path::rows;
}

/// Everything one run needs on the host side.
struct Call {
  const QuantizeDesc& d;
  const QuantizeArgs& a;
  cudaStream_t stream;
  int sms;
  CheckWords* words;  ///< device
  bool check;
  CheckWords* host = nullptr;  ///< the hand-off's mapped host copy (checked fast paths)
  check_report::CheckRecord* record = nullptr;  ///< a CheckReport's record (deferred check)
};

template <Dtype S, Code C>
void launch_rows(const Call& c, RowsArgs ra, uint64_t group_vecs, bool global) {
  constexpr int V = kVecsPerThread;
  if (global) {
    ra.group_vecs = V;
    ra.groups = (ra.total_vecs + V - 1) / V;
    auto kernel = quantize_rows_kernel<S, C, false>;
    const uint32_t grid = balanced_grid(ra.groups, kThreads, stream_grid(kernel, kThreads, c.sms));
    kernel<<<grid, kThreads, 0, c.stream>>>(ra, 0);
    check_launch("quantize_rows_kernel");
    return;
  }
  ra.group_vecs = static_cast<uint32_t>(group_vecs);
  const uint64_t need = (group_vecs + V - 1) / V;  // threads per group
  if (need <= 32) {
    int log2 = 0;
    while ((1u << log2) < need) ++log2;
    auto kernel = quantize_rows_kernel<S, C, false>;
    const uint64_t teams_per_block = kThreads >> log2;
    const uint32_t grid =
        balanced_grid(ra.groups, teams_per_block, stream_grid(kernel, kThreads, c.sms));
    kernel<<<grid, kThreads, 0, c.stream>>>(ra, log2);
  } else {
    const int threads = static_cast<int>((need + 31) / 32 * 32);
    auto kernel = quantize_rows_kernel<S, C, true>;
    const uint32_t grid = balanced_grid(ra.groups, 1, stream_grid(kernel, threads, c.sms));
    kernel<<<grid, threads, 0, c.stream>>>(ra, 0);
  }
  check_launch("quantize_rows_kernel");
}

template <Dtype S>
void launch_tensor_stats(const Call& c, bool affine) {
  auto kernel = tensor_stats_kernel<S>;
  const uint64_t n = static_cast<uint64_t>(numel(c.d.shape));
  const uint32_t grid =
      balanced_grid(n / Src<S>::kVec + 1, kThreads * 4, resident_grid(kernel, kThreads, c.sms));
  kernel<<<grid, kThreads, 0, c.stream>>>(static_cast<const uint4*>(c.a.src.data()), n, affine,
                                          c.words->stats, c.check ? &c.words->nonfinite : nullptr);
  check_launch("tensor_stats_kernel");
}

/// The rows / tensor paths; false if the views are not aligned for them.
template <Dtype S>
bool run_scaled(const Call& c, Path path) {
  const QuantScheme& s = c.d.scheme;
  const int64_t n = numel(c.d.shape);
  constexpr int E = Src<S>::kVec;
  const int code_bits = bit_width(s.code_dtype());
  const int store_bytes = E * code_bits / 8;
  if (!aligned(c.a.src.data(), 16) || !aligned(c.a.dst.codes.data(), store_bytes)) return false;
  RowsArgs ra{};
  ra.x = static_cast<const uint4*>(c.a.src.data());
  ra.codes = static_cast<uint8_t*>(c.a.dst.codes.data());
  ra.scale = c.a.dst.scale.data();
  ra.zero = s.is_integer() && !s.symmetric ? static_cast<int32_t*>(c.a.dst.zero.data()) : nullptr;
  ra.total_vecs = static_cast<uint64_t>(n / E);
  ra.conf.affine = s.is_integer() && !s.symmetric;
  ra.conf.qmin = s.is_integer() ? s.qmin() : 0;
  ra.conf.qmax = s.is_integer() ? s.qmax() : 0;
  ra.conf.scale_dtype = s.is_integer() ? s.scale_dtype : Dtype::f32;
  ra.nonfinite = c.check ? &c.words->nonfinite : nullptr;
  ra.words = c.words;
  ra.host = c.host;
  ra.record = c.record;
  const bool global = path == Path::tensor;
  uint64_t group_vecs = 0;
  if (global) {
    launch_tensor_stats<S>(c, ra.conf.affine);
    ra.stats = c.words->stats;
    ra.nonfinite = nullptr;  // checked by the statistics pass
  } else {
    const int64_t g = flat_group_length(s, c.d.shape, n);
    group_vecs = static_cast<uint64_t>(g / E);
    ra.groups = static_cast<uint64_t>(n / g);
    ra.wide =
        group_vecs <= kVecsPerThread && group_vecs * store_bytes % 16 == 0 && aligned(ra.codes, 16);
  }
  switch (s.format) {
    case QuantFormat::int8:
    case QuantFormat::uint8:
      launch_rows<S, Code::i8>(c, ra, group_vecs, global);
      break;
    case QuantFormat::int4:
    case QuantFormat::uint4:
      launch_rows<S, Code::i4>(c, ra, group_vecs, global);
      break;
    case QuantFormat::fp8e4m3:
      launch_rows<S, Code::e4m3>(c, ra, group_vecs, global);
      break;
    default:
      launch_rows<S, Code::e5m2>(c, ra, group_vecs, global);
      break;
  }
  return true;
}

template <Dtype S, Blk B>
void launch_blocks_kernel(const Call& c, const BlocksArgs& ba, bool vec) {
  auto kernel = vec ? quantize_blocks_kernel<S, B, true> : quantize_blocks_kernel<S, B, false>;
  constexpr uint64_t kChunkBlocks = 32 * kBlockVecs / (kBlockElems<B> / Src<S>::kVec);
  const uint64_t chunks = (ba.blocks + kChunkBlocks - 1) / kChunkBlocks;
  const uint32_t grid = balanced_grid(chunks, kThreads / 32, stream_grid(kernel, kThreads, c.sms));
  kernel<<<grid, kThreads, 0, c.stream>>>(ba);
  check_launch("quantize_blocks_kernel");
}

/// nvfp4 / mx / GGUF; false if the views are not aligned (nvfp4 / mx only: GGUF has a
/// per-element variant).
template <Dtype S>
bool run_blocks(const Call& c) {
  const QuantScheme& s = c.d.scheme;
  const int64_t n = numel(c.d.shape);
  BlocksArgs ba{};
  ba.x = c.a.src.data();
  ba.codes = static_cast<uint8_t*>(c.a.dst.codes.data());
  ba.nonfinite = c.check ? &c.words->nonfinite : nullptr;
  ba.words = c.words;
  ba.host = c.host;
  ba.record = c.record;
  const bool x_aligned = aligned(ba.x, 16);
  if (s.format == QuantFormat::gguf) {
    ba.blocks = static_cast<uint64_t>(n / 32);
    ba.overflow = c.check ? &c.words->overflow : nullptr;
    if (ba.blocks == 0) return true;
    if (s.gguf_type == static_cast<uint32_t>(gguf::GgmlType::q8_0))
      launch_blocks_kernel<S, Blk::q8_0>(c, ba, x_aligned);
    else
      launch_blocks_kernel<S, Blk::q4_0>(c, ba, x_aligned);
    return true;
  }
  // The widest code store is 8 bytes (a lane's mxfp8 codes of a bf16 / f16 vector).
  if (!x_aligned || !aligned(ba.codes, 8)) return false;
  ba.scales = static_cast<uint8_t*>(c.a.dst.scale.data());
  if (s.format == QuantFormat::nvfp4) {
    ba.blocks = static_cast<uint64_t>(n / 16);
    ba.global_scale = c.a.dst.global_scale.data_as<float>();
    if (c.d.given_scales) {
      ba.given_bad = c.check ? &c.words->given : nullptr;
    } else {
      launch_tensor_stats<S>(c, false);
      ba.stats = c.words->stats;
      ba.nonfinite = nullptr;  // checked by the statistics pass
    }
    ba.reverse = ba.stats != nullptr;  // the second pass over x starts where the first ended
    launch_blocks_kernel<S, Blk::nvfp4>(c, ba, true);
    return true;
  }
  ba.blocks = static_cast<uint64_t>(n / 32);
  if (s.format == QuantFormat::mxfp4)
    launch_blocks_kernel<S, Blk::mxfp4>(c, ba, true);
  else if (s.format == QuantFormat::mxfp8e4m3)
    launch_blocks_kernel<S, Blk::mxe4m3>(c, ba, true);
  else
    launch_blocks_kernel<S, Blk::mxe5m2>(c, ba, true);
  return true;
}

/// The generic path: statistics, parameters, codes. `scratch` is a device buffer kept alive
/// by the caller until the stream has run these kernels.
void run_generic(const Call& c, Buffer& scratch, const Stream& stream) {
  const QuantizeDesc& d = c.d;
  const QuantScheme& s = d.scheme;
  const uint64_t n = static_cast<uint64_t>(numel(d.shape));
  const formats::GroupMap gm = formats::GroupMap::make(s, d.shape);
  const auto count = static_cast<uint64_t>(gm.count);
  const bool affine = s.is_integer() && !s.symmetric;
  // Per group: amax, -min, max (stats), 1/scale, zero point.
  scratch = Buffer(static_cast<int64_t>(std::max<uint64_t>(count, 1) * 5 * 4), d.device, &stream);
  auto* ws = static_cast<uint32_t*>(scratch.data());
  uint32_t* amax = ws;
  uint32_t* nlo = ws + count;
  uint32_t* hi = ws + 2 * count;
  auto* inv = reinterpret_cast<float*>(ws + 3 * count);
  auto* zw = reinterpret_cast<int32_t*>(ws + 4 * count);
  check_cuda(cudaMemsetAsync(ws, 0, count * 3 * 4, c.stream), "quantize: cudaMemsetAsync");
  // Given int / fp8 scales need no statistics (but the finiteness check reads x anyway);
  // nvfp4's block scales always come from the data.
  const bool need_stats = !d.given_scales || !is_scaled(s.format) || c.check;
  if (n > 0 && need_stats) {
    GenericArgs ga{};
    ga.x = c.a.src.data();
    ga.src = d.src;
    ga.n = n;
    ga.gm = gm;
    ga.format = s.format;
    ga.affine = affine;
    ga.amax = amax;
    ga.nlo = nlo;
    ga.hi = hi;
    ga.tensor_amax = s.format == QuantFormat::nvfp4 ? c.words->stats : nullptr;
    ga.nonfinite = c.check ? &c.words->nonfinite : nullptr;
    const uint32_t grid =
        grid_of((n + 7) / 8, kThreads, resident_grid(generic_stats_kernel, kThreads, c.sms));
    generic_stats_kernel<<<grid, kThreads, 0, c.stream>>>(ga);
    check_launch("generic_stats_kernel");
  }
  if (s.format == QuantFormat::nvfp4 && count == 0 && !d.given_scales) {
    // No block to write the global scale: the reference still stores global(0) = 0.
    check_cuda(cudaMemsetAsync(c.a.dst.global_scale.data(), 0, 4, c.stream),
               "quantize: cudaMemsetAsync");
  }
  if (count > 0) {
    ParamsArgs pa{};
    pa.format = s.format;
    pa.conf.affine = affine;
    pa.conf.qmin = s.is_integer() ? s.qmin() : 0;
    pa.conf.qmax = s.is_integer() ? s.qmax() : 0;
    pa.conf.scale_dtype = s.is_integer() ? s.scale_dtype : Dtype::f32;
    pa.given = d.given_scales;
    pa.count = count;
    pa.amax = amax;
    pa.nlo = nlo;
    pa.hi = hi;
    pa.tensor_amax = c.words->stats;
    pa.scale = c.a.dst.scale.data();
    pa.zero = affine ? c.a.dst.zero.data_as<int32_t>() : nullptr;
    pa.global_scale =
        s.format == QuantFormat::nvfp4 ? c.a.dst.global_scale.data_as<float>() : nullptr;
    pa.inv = inv;
    pa.zw = zw;
    pa.given_bad = c.check && d.given_scales ? &c.words->given : nullptr;
    const uint32_t grid =
        grid_of(count, kThreads, resident_grid(generic_params_kernel, kThreads, c.sms));
    generic_params_kernel<<<grid, kThreads, 0, c.stream>>>(pa);
    check_launch("generic_params_kernel");
  }
  if (n > 0) {
    ElementsArgs ea{};
    ea.x = c.a.src.data();
    ea.src = d.src;
    ea.n = n;
    ea.gm = gm;
    ea.format = s.format;
    ea.conf.affine = affine;
    ea.conf.qmin = s.is_integer() ? s.qmin() : 0;
    ea.conf.qmax = s.is_integer() ? s.qmax() : 0;
    ea.codes = static_cast<uint8_t*>(c.a.dst.codes.data());
    ea.scale_codes = static_cast<const uint8_t*>(c.a.dst.scale.data());
    ea.global_scale =
        s.format == QuantFormat::nvfp4 ? c.a.dst.global_scale.data_as<float>() : nullptr;
    ea.inv = inv;
    ea.zw = zw;
    const bool packed = is_packed(s.code_dtype());
    const uint64_t units = packed ? (n + 1) / 2 : n;
    const uint32_t grid =
        grid_of(units, kThreads * 4, resident_grid(generic_elements_kernel, kThreads, c.sms));
    generic_elements_kernel<<<grid, kThreads, 0, c.stream>>>(ea, packed);
    check_launch("generic_elements_kernel");
  }
}

// ---- host side: turning check words into the reference's errors -----------------------------

float host_element(const QuantizeDesc& d, const void* src, uint64_t i) {
  const int bytes = bit_width(d.src) / 8;
  uint32_t raw = 0;
  check_cuda(
      cudaMemcpy(&raw, static_cast<const uint8_t*>(src) + i * bytes, bytes, cudaMemcpyDeviceToHost),
      "quantize: reading a source element");
  switch (d.src) {
    case Dtype::f32:
      return float_of(raw);
    case Dtype::bf16:
      return bf16_to_f32(static_cast<uint16_t>(raw));
    default:
      return f16_to_f32(static_cast<uint16_t>(raw));
  }
}

void throw_non_finite(const QuantizeDesc& d, const void* src, uint64_t i) {
  const float v = host_element(d, src, i);
  throw_error(ErrorCode::invalid_argument,
              "quantize: src element " + index_str(d.shape, static_cast<int64_t>(i)) +
                  " (flat index " + std::to_string(i) + ") is " + (std::isnan(v) ? "NaN" : "Inf") +
                  "; quantization needs finite inputs (replace or mask non-finite values first)");
}

/// Re-runs the reference GGUF quantizer on the row holding block `b`, so that the error
/// (block index within the row, values, field, value) is the reference's own text.
void throw_gguf_overflow(const QuantizeDesc& d, const void* src, uint64_t b) {
  const int64_t k = last_dim(d.shape);
  const int64_t row = static_cast<int64_t>(b) / (k / 32);
  const int bytes = bit_width(d.src) / 8;
  std::vector<uint8_t> raw(static_cast<size_t>(k * bytes));
  check_cuda(cudaMemcpy(raw.data(), static_cast<const uint8_t*>(src) + row * k * bytes, raw.size(),
                        cudaMemcpyDeviceToHost),
             "quantize: reading a source row");
  std::vector<float> x(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    uint32_t v = 0;
    std::memcpy(&v, raw.data() + j * bytes, static_cast<size_t>(bytes));
    x[static_cast<size_t>(j)] = d.src == Dtype::f32    ? float_of(v)
                                : d.src == Dtype::bf16 ? bf16_to_f32(static_cast<uint16_t>(v))
                                                       : f16_to_f32(static_cast<uint16_t>(v));
  }
  const auto type = static_cast<gguf::GgmlType>(d.scheme.gguf_type);
  std::vector<uint8_t> out(static_cast<size_t>(gguf::row_bytes(type, k)));
  gguf::quantize_row_reference(type, x.data(), out.data(), k);
  throw_error(ErrorCode::internal, "quantize_cuda: block " + std::to_string(b) +
                                       " overflowed on the GPU but not in the reference");
}

void throw_given(const QuantizeDesc& d, const QuantizeArgs& a, uint64_t g) {
  const QuantScheme& s = d.scheme;
  float sc = 0.0f;
  int32_t z = 0;
  if (s.format == QuantFormat::nvfp4) {
    check_cuda(cudaMemcpy(&sc, a.dst.global_scale.data(), 4, cudaMemcpyDeviceToHost),
               "quantize: reading the global scale");
  } else {
    const Dtype sdt = s.is_integer() ? s.scale_dtype : Dtype::f32;
    const int bytes = bit_width(sdt) / 8;
    uint32_t raw = 0;
    check_cuda(cudaMemcpy(&raw, static_cast<const uint8_t*>(a.dst.scale.data()) + g * bytes, bytes,
                          cudaMemcpyDeviceToHost),
               "quantize: reading a given scale");
    sc = load_scale(&raw, sdt, 0);
    if (s.is_integer() && !s.symmetric)
      check_cuda(cudaMemcpy(&z, a.dst.zero.data_as<int32_t>() + g, 4, cudaMemcpyDeviceToHost),
                 "quantize: reading a given zero point");
  }
  if (!std::isfinite(sc) || sc < 0.0f || (sc > 0.0f && sc < formats::kMinScale))
    throw_error(ErrorCode::invalid_argument,
                "quantize: given scale " + fmt_float(sc) + " of group " + std::to_string(g) +
                    " must be finite and >= 0, and 0 or at least 2^-126 (the reciprocal of a "
                    "smaller scale overflows)");
  throw_error(ErrorCode::invalid_argument, "quantize: given zero point " + std::to_string(z) +
                                               " of group " + std::to_string(g) + " is outside [" +
                                               std::to_string(s.qmin()) + ", " +
                                               std::to_string(s.qmax()) + "]");
}

// ---- check words kept per host thread and device (checked fast paths) -----------------------

/// A checked call waits for its kernels before it returns, so one set of words per host thread and
/// device is never used by two calls at once. The hand-off leaves the device words zero
/// for the next call; `clean` is cleared while a call runs, so that a call that threw
/// before its synchronisation makes the next one zero them with a memset. Kept for the
/// thread's lifetime (96 bytes of device and pinned host memory).
struct CheckState {
  CheckWords* device = nullptr;
  CheckWords* host = nullptr;  ///< pinned, mapped (device-visible)
  CheckWords* host_on_device = nullptr;
  bool clean = false;
  bool failed = false;  ///< allocation failed: use per-call words
};

CheckState* check_state(int device) {
  thread_local std::array<CheckState, 64> states;
  CheckState& st = states[static_cast<size_t>(device)];
  if (st.failed) return nullptr;
  if (!st.device) {
    hand_off::Words w;
    if (!hand_off::allocate(sizeof(CheckWords), w)) {
      st.failed = true;
      return nullptr;
    }
    st.device = static_cast<CheckWords*>(w.device);
    st.host = static_cast<CheckWords*>(w.host);
    st.host_on_device = static_cast<CheckWords*>(w.host_on_device);
  }
  return &st;
}

// ---- the kernel object --------------------------------------------------------------------------

class QuantizeCuda final : public Kernel<QuantizeOp> {
 public:
  std::string_view name() const override { return "quantize_cuda"; }

  std::string decline(const QuantizeDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    const DeviceFacts& f = facts(d.device.index);
    if (!f.has_image)
      return "this build has no kernel image for " + f.arch + " (" + f.image_error +
             "; add it to LOWBIT_CUDA_ARCHS)";
    if (d.src == Dtype::f64)
      return "f64 sources are not supported on CUDA (the reference kernel takes them, on the "
             "CPU only); convert to f32 first";
    if (d.src != Dtype::f32 && d.src != Dtype::f16 && d.src != Dtype::bf16)
      return "src must be f32, f16 or bf16";
    if (!is_contiguous(d))
      return "strided sources are not supported on CUDA (the reference kernel takes them, on "
             "the CPU only); make the source contiguous";
    if (d.scheme.format == QuantFormat::gguf &&
        d.scheme.gguf_type != static_cast<uint32_t>(gguf::GgmlType::q8_0) &&
        d.scheme.gguf_type != static_cast<uint32_t>(gguf::GgmlType::q4_0))
      return "GGUF " + d.scheme.str() +
             " has no CUDA kernel (q8_0 and q4_0 do; the reference kernel serves the other "
             "types, on the CPU only)";
    return {};
  }

  KernelSku sku(const QuantizeDesc& d) const override {
    // One kernel name for every path (rows, tensor, blocks, generic: see the file comment);
    // the path follows from the scheme, the shape and the views' alignment.
    return {"quantize",
            Backend::cuda,
            std::string(dtype_name(d.src)),
            d.scheme.str(),
            facts(d.device.index).arch,
            std::string(name())};
  }

  PrecisionGuarantee precision(const QuantizeDesc&) const override {
    return {
        "the rules of docs/formats.md in f32, round-to-nearest-even (bit-identical to the "
        "reference; max reductions are order-independent)",
        std::nullopt, true, true};
  }

  void run(const QuantizeDesc& d, const QuantizeArgs& a, const Stream& stream,
           Workspace) const override {
    DeviceScope scope(d.device.index);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const Path path = choose_path(d);
    // Check words and tensor statistics: a small per-call buffer from the stream-ordered
    // pool, zeroed on the stream; skipped (a memset kernel less per call) when nothing
    // reads them: no check, and a one-pass path without tensor statistics. The generic
    // path, which an unaligned view falls back to, allocates them below.
    Buffer words;
    auto make_words = [&] {
      words = Buffer(sizeof(CheckWords), d.device, &stream);
      check_cuda(cudaMemsetAsync(words.data(), 0, sizeof(CheckWords), s),
                 "quantize: cudaMemsetAsync");
    };
    // A checked call given a CheckReport uses the report's words (kept zero between calls by
    // the deferred hand-off, or on the generic path by the record kernel) and never waits.
    const CheckReport::Impl* report = check_report::for_call(a.report, d.check_finite);
    // Checked calls on the fast paths use the thread's persistent words and the hand-off.
    CheckState* cs =
        d.check_finite && !report && path != Path::generic ? check_state(d.device.index) : nullptr;
    const bool dynamic_nvfp4 = d.scheme.format == QuantFormat::nvfp4 && !d.given_scales;
    if (report) {
      // Nothing to prepare: the words are zero.
    } else if (cs) {
      if (!cs->clean)
        check_cuda(cudaMemsetAsync(cs->device, 0, sizeof(CheckWords), s),
                   "quantize: cudaMemsetAsync");
      cs->clean = false;
      std::memset(cs->host, 0, sizeof(CheckWords));  // what a call that launches nothing reads
    } else if (d.check_finite || path == Path::tensor || path == Path::generic || dynamic_nvfp4) {
      make_words();
    }
    Buffer scratch;
    auto* report_words =
        report ? static_cast<CheckWords*>(report->region(check_report::Op::quantize)) : nullptr;
    Call c{d,
           a,
           s,
           facts(d.device.index).multiprocessors,
           report ? report_words
           : cs   ? cs->device
                  : static_cast<CheckWords*>(words.data()),
           d.check_finite,
           cs ? cs->host_on_device : nullptr,
           report ? report->host_on_device : nullptr};
    bool done = false;
    switch (d.src) {
      case Dtype::f32:
        done = dispatch<Dtype::f32>(c, path);
        break;
      case Dtype::bf16:
        done = dispatch<Dtype::bf16>(c, path);
        break;
      default:
        done = dispatch<Dtype::f16>(c, path);
        break;
    }
    if (!done) {  // unaligned views: the generic path, with per-call words
      if (cs) {
        cs->clean = true;  // nothing was launched on the thread's words
        cs = nullptr;
        c.host = nullptr;
      }
      c.record = nullptr;  // the generic kernels do not hand off: the record kernel does
      if (!report && !words.data()) make_words();
      if (!report) c.words = static_cast<CheckWords*>(words.data());
      run_generic(c, scratch, stream);
      if (report) {
        // Flags in CheckWords order; the statistics words are zeroed with them.
        static constexpr check_report::Kind kinds[] = {check_report::Kind::non_finite,
                                                       check_report::Kind::overflow,
                                                       check_report::Kind::given};
        check_report::enqueue_record(*report, check_report::Op::quantize, 3, kinds, s,
                                     sizeof(CheckWords) / 8);
      }
    }
    if (!d.check_finite || report) return;
    uint64_t w[3];
    if (cs) {
      // Wait for the last block's hand-off rather than for the stream: when `done` reaches
      // the host, every block has written its outputs (each fenced before it counted
      // itself), and the host learns it a few microseconds before a cudaStreamSynchronize
      // would return (H100: the check cost 8.7 us instead of 12.3 us per call). The stream
      // is polled too, for calls that launched nothing and for launch failures; a flagged
      // call synchronises before it reads the source for its error text.
      const volatile CheckWords* h = cs->host;
      const cudaError_t q = hand_off::wait(&h->done, s);
      if (q != cudaErrorNotReady && q != cudaSuccess) check_cuda(q, "quantize: cudaStreamQuery");
      if (h->nonfinite | h->overflow | h->given)
        check_cuda(cudaStreamSynchronize(s), "quantize: cudaStreamSynchronize");
      w[0] = h->nonfinite;
      w[1] = h->overflow;
      w[2] = h->given;
      cs->clean = true;
    } else {
      read_flags(words.data(), w, 3, s);  // synchronises the stream
    }
    uint64_t index;
    if (flagged(w[0], index)) throw_non_finite(d, a.src.data(), index);
    if (flagged(w[2], index)) throw_given(d, a, index);
    if (flagged(w[1], index)) throw_gguf_overflow(d, a.src.data(), index);
    if (d.given_scales && d.scheme.format == QuantFormat::nvfp4 && numel(d.shape) == 0) {
      // No block, so no kernel looked at the given global scale; the reference still
      // refuses an invalid one. (The kernels are done: see above.)
      float global = 0.0f;
      check_cuda(cudaMemcpy(&global, a.dst.global_scale.data(), 4, cudaMemcpyDeviceToHost),
                 "quantize: reading the global scale");
      if (!std::isfinite(global) || global < 0.0f || (global > 0.0f && global < formats::kMinScale))
        throw_given(d, a, 0);
    }
  }

 private:
  static const DeviceFacts& facts(int device) {
    return device_facts(device, generic_params_kernel);
  }

  template <Dtype S>
  static bool dispatch(const Call& c, Path path) {
    switch (path) {
      case Path::rows:
      case Path::tensor:
        return run_scaled<S>(c, path);
      case Path::blocks:
        return run_blocks<S>(c);
      default:
        return false;
    }
  }
};

}  // namespace

const Kernel<QuantizeOp>& quantize_cuda_kernel() {
  static const QuantizeCuda kernel;
  return kernel;
}

}  // namespace lowbit
