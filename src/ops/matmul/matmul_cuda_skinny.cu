// matmul_cuda_skinny_tc: weight-only y = x · dequant(W)^T for a few rows of x (M <= 32: kMaxM),
// bf16 / f16 activations, on tensor cores (mma.sync.m16n8k16) over the prepared
// "cuda_tc16x128" weight layout (matmul_cuda_layout.cuh).
//
// Shape of the work (W: [N, K], x: [M, K], y: [M, N]):
//   block = one 16-row tile of W (grid.y), 16 rows of x (grid.x), all of K; its 4 (or, when
//           blocks are few, 8) warps take the 128-k segments in turn, so that a block streams
//           contiguous memory. Blocks of the same tile run side by side, so that W comes from
//           HBM once and from L2 for the other rows of x.
//   warp  = per segment: 2 x 16 bytes of codes per lane (4-bit; 2 x 32 for 8-bit), 16-byte
//           loads that skip L1, issued 4 (8-bit: 2) segments ahead; the segment's scales one
//           segment ahead; 8 mma steps of 16 k, each with the 16 x 16 weight operand decoded in
//           registers and x^T [16 k, 8 rows of x] as the B operand (8 bytes of x per lane and
//           step, from L1 / L2); NT = 1 or 2 mmas per step for 8 or 16 rows of x.
// Numbers: the operand is the exact code (u - 8, the byte, the fp8 / e2m1 value); the mma
// multiplies it by x exactly and sums a scale group's 16..128 products in f32; the group's
// scale (and offset, times the group's sum of x from an mma with an all-ones operand, for
// affine formats) is applied to that f32 partial sum. The warps' partial sums are added in
// warp order through shared memory: deterministic, no atomics.
#include <cuda_runtime.h>

#include "ops/matmul/matmul_cuda_common.cuh"
#include "ops/matmul/matmul_kernels.hpp"

namespace lowbit {
namespace {

using tc::Code;
using tc::Scale;
using tc::TcWeights;

constexpr int kMaxWarps = 8;  // warps per block: 8 for few tiles, else 4 (see launch)
// x rows: blocks take 16 each (grid.x), the W re-reads come from L2. The kernel is right up to
// 256 rows, but measured on the H200 (BENCHMARKS.md) it beats dequantize + cuBLASLt only up to
// 16-32 rows of x (M = 64: 0.118 ms against 0.111 for int4:block128 8192x8192).
constexpr int kMaxM = 32;

struct SkinnyArgs {
  TcWeights w;
  const uint8_t* x = nullptr;
  int64_t x_stride = 0;  ///< elements
  void* y = nullptr;
  int64_t y_stride = 0;
  Dtype y_dtype = Dtype::bf16;
  const void* bias = nullptr;
  int m = 0;
  int64_t n = 0;
};

template <bool kBf16>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  // volatile: the loads below are volatile too, so that the order written here (every load of
  // a segment before its arithmetic) is the order issued.
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

/// A 16-byte load of data read once (not kept in L1: x keeps it), issued only when `on`.
__device__ __forceinline__ void load_stream16(uint4& v, const void* p, bool on) {
  asm volatile(
      "{ .reg .pred q; setp.ne.b32 q, %5, 0;\n"
      "  @q ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4]; }"
      : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)
      : "l"(p), "r"(static_cast<int>(on)));
}

/// 8 bytes of x (read by every block: kept in L1), or zeros when not `on`.
__device__ __forceinline__ uint2 load_x8(const void* p, bool on) {
  uint2 v = make_uint2(0u, 0u);
  asm volatile(
      "{ .reg .pred q; setp.ne.b32 q, %3, 0;\n"
      "  @q ld.global.nc.v2.u32 {%0,%1}, [%2]; }"
      : "+r"(v.x), "+r"(v.y)
      : "l"(p), "r"(static_cast<int>(on)));
  return v;
}

/// The inner loop is one basic block per segment (no branches): format-dependent work is
/// resolved at compile time, the affine term is always computed for the formats that can have
/// one (an extra mma, tensor pipe to spare) and added by selection, loads are predicated.
template <Code C, Scale S, int kStepsLog2, bool kBf16, int NT>
__global__ void __launch_bounds__(kMaxWarps * 32, 2) skinny_tc_kernel(SkinnyArgs p) {
  constexpr int kBits = (C == Code::u4 || C == Code::fp4) ? 4 : 8;
  constexpr int kVec = kBits == 4 ? 1 : 2;                 // 16-byte code vectors per half
  constexpr int kDepth = (kBits == 4 && NT == 1) ? 4 : 2;  // segments of codes in flight
  constexpr int kGS = 1 << kStepsLog2;                     // steps per scale group
  constexpr float kF = (C == Code::fp4 && !kBf16) ? tc::kFp4F16Factor : 1.0f;
  constexpr uint32_t kOnes = kBf16 ? 0x3f803f80u : 0x3c003c00u;  // (1.0, 1.0)
  constexpr int kLaneBytes = 16 * kVec;
  constexpr bool kAffine = S == Scale::q4k || S == Scale::integer;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nwarps = static_cast<int>(blockDim.x >> 5);
  const int r = lane >> 2, q = lane & 3;
  const int m0 = 16 * static_cast<int>(blockIdx.x);  // this block's rows of x
  const int64_t tile = blockIdx.y;
  const int64_t row0 = tile * 16 + r, row1 = row0 + 8;
  const int64_t segs = p.w.segments;
  const bool zero = S == Scale::integer && p.w.zero != nullptr;
  const bool use_b = S == Scale::q4k || zero;

  // This lane's codes: (tile, segment s, half h) at codes_t + (2 s + h) * 32 * kLaneBytes.
  const uint8_t* codes_t = p.w.codes + (tile * segs * 64 + lane) * kLaneBytes;
  auto load_codes = [&](int64_t s, uint4(&c)[2][kVec]) {
    const bool on = s < segs;
    const uint8_t* at = codes_t + (on ? s : 0) * 64 * kLaneBytes;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int v = 0; v < kVec; ++v) load_stream16(c[h][v], at + h * 32 * kLaneBytes + 16 * v, on);
  };
  // x^T operand rows: c = m0 + 8 t + r (rows past M read as zeros).
  const uint8_t* xrow[NT];
  bool xon[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int c = m0 + 8 * t + r;
    xon[t] = c < p.m;
    xrow[t] = p.x + (static_cast<int64_t>(xon[t] ? c : 0) * p.x_stride + 4 * q) * 2;
  }

  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

  // In flight: codes kDepth segments ahead, scales one segment ahead.
  uint4 ring[kDepth][2][kVec];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int v = 0; v < kVec; ++v) ring[d][h][v] = make_uint4(0u, 0u, 0u, 0u);
    load_codes(warp + d * nwarps, ring[d]);
  }
  tc::SegScales sn0{}, sn1{};
  if (warp < segs) {
    sn0 = tc::load_seg_scales<S, kStepsLog2>(p.w, row0, warp);
    sn1 = tc::load_seg_scales<S, kStepsLog2>(p.w, row1, warp);
  }
  for (int64_t base = warp; base < segs; base += kDepth * nwarps) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int64_t s = base + d * nwarps;
      if (s >= segs) break;
      // This segment's x, then the loads for later segments, then the arithmetic.
      uint2 xv[NT][8];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[t][j] = load_x8(xrow[t] + (s * 128 + 16 * j) * 2, xon[t]);
      const tc::SegScales cs0 = sn0, cs1 = sn1;
      uint32_t w0[4 * kVec], w1[4 * kVec];
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        w0[4 * v] = ring[d][0][v].x, w0[4 * v + 1] = ring[d][0][v].y;
        w0[4 * v + 2] = ring[d][0][v].z, w0[4 * v + 3] = ring[d][0][v].w;
        w1[4 * v] = ring[d][1][v].x, w1[4 * v + 1] = ring[d][1][v].y;
        w1[4 * v + 2] = ring[d][1][v].z, w1[4 * v + 3] = ring[d][1][v].w;
      }
      load_codes(s + kDepth * nwarps, ring[d]);
      if (s + nwarps < segs) {
        sn0 = tc::load_seg_scales<S, kStepsLog2>(p.w, row0, s + nwarps);
        sn1 = tc::load_seg_scales<S, kStepsLog2>(p.w, row1, s + nwarps);
      }

      float g[NT][4], g1[NT][4];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) g[t][i] = g1[t][i] = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t c0 = w0[tc::step_word(kBits, j)], c1 = w1[tc::step_word(kBits, j)];
        const int p0 = tc::step_pair(kBits, j, 0), p1 = tc::step_pair(kBits, j, 1);
        const uint32_t a0 = tc::decode_pair<C, kBf16>(c0, p0);
        const uint32_t a1 = tc::decode_pair<C, kBf16>(c1, p0);
        const uint32_t a2 = tc::decode_pair<C, kBf16>(c0, p1);
        const uint32_t a3 = tc::decode_pair<C, kBf16>(c1, p1);
#pragma unroll
        for (int t = 0; t < NT; ++t) mma16816<kBf16>(g[t], a0, a1, a2, a3, xv[t][j].x, xv[t][j].y);
        if constexpr (kAffine) {
#pragma unroll
          for (int t = 0; t < NT; ++t)
            mma16816<kBf16>(g1[t], kOnes, kOnes, kOnes, kOnes, xv[t][j].x, xv[t][j].y);
        }
        if ((j & (kGS - 1)) == kGS - 1) {
          const int f = j >> kStepsLog2;
          float a0s, b0s, a1s, b1s;
          tc::seg_group_ab<S>(cs0, f, zero, a0s, b0s);
          tc::seg_group_ab<S>(cs1, f, zero, a1s, b1s);
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            acc[t][0] += a0s * (g[t][0] * kF);
            acc[t][1] += a0s * (g[t][1] * kF);
            acc[t][2] += a1s * (g[t][2] * kF);
            acc[t][3] += a1s * (g[t][3] * kF);
            if constexpr (kAffine) {
              // Selected, not multiplied by 0: an infinite x must not turn into NaN here.
              acc[t][0] += use_b ? b0s * g1[t][0] : 0.0f;
              acc[t][1] += use_b ? b0s * g1[t][1] : 0.0f;
              acc[t][2] += use_b ? b1s * g1[t][2] : 0.0f;
              acc[t][3] += use_b ? b1s * g1[t][3] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) g[t][i] = g1[t][i] = 0.0f;
          }
        }
      }
    }
  }

  // The warps' sums, added in warp order.
  __shared__ float red[kMaxWarps - 1][NT * 4][32];
  if (warp > 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp - 1][4 * t + i][lane] = acc[t][i];
  }
  __syncthreads();
  if (warp != 0) return;
  for (int w = 0; w + 1 < nwarps; ++w)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][i] += red[w][4 * t + i][lane];

  const float global = S == Scale::e4m3 ? p.w.global[0] : 1.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i < 2 ? row0 : row1;
      const int c = m0 + 8 * t + 2 * q + (i & 1);
      if (c >= p.m || row >= p.n) continue;
      float v = acc[t][i];
      if (S == Scale::e4m3) v *= global;
      if (p.bias) v += quant_cuda::load_any(p.bias, p.y_dtype, static_cast<uint64_t>(row));
      quant_cuda::store_any(p.y, p.y_dtype, static_cast<uint64_t>(c * p.y_stride + row), v);
    }
}

// ---- dispatch ---------------------------------------------------------------------------------

using Launcher = void (*)(const SkinnyArgs&, int64_t tiles, int warps, cudaStream_t);

template <Code C, Scale S, int SL, bool kBf16, int NT>
void launch(const SkinnyArgs& a, int64_t tiles, int warps, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.m + 15) / 16), static_cast<unsigned>(tiles));
  skinny_tc_kernel<C, S, SL, kBf16, NT><<<grid, warps * 32, 0, stream>>>(a);
  mm_cuda::check_launch("skinny_tc_kernel");
}

template <Code C, Scale S, int SL>
Launcher pick(bool bf16, int nt) {
  if (bf16) return nt == 1 ? &launch<C, S, SL, true, 1> : &launch<C, S, SL, true, 2>;
  return nt == 1 ? &launch<C, S, SL, false, 1> : &launch<C, S, SL, false, 2>;
}

/// The instantiation for a format, or null (with the reason) when none is built.
Launcher launcher_for(const tc::Format& f, bool bf16, int nt, std::string* why) {
  const int sl = f.steps_log2;
  switch (f.scale) {
    case Scale::integer:
      if (sl == 0) break;
      if (f.code == Code::u4)
        return sl == 1   ? pick<Code::u4, Scale::integer, 1>(bf16, nt)
               : sl == 2 ? pick<Code::u4, Scale::integer, 2>(bf16, nt)
                         : pick<Code::u4, Scale::integer, 3>(bf16, nt);
      return sl == 1   ? pick<Code::i8, Scale::integer, 1>(bf16, nt)
             : sl == 2 ? pick<Code::i8, Scale::integer, 2>(bf16, nt)
                       : pick<Code::i8, Scale::integer, 3>(bf16, nt);
    case Scale::f32:
      if (sl != 3) break;
      return f.code == Code::e4m3 ? pick<Code::e4m3, Scale::f32, 3>(bf16, nt)
                                  : pick<Code::e5m2, Scale::f32, 3>(bf16, nt);
    case Scale::e4m3:
      return pick<Code::fp4, Scale::e4m3, 0>(bf16, nt);
    case Scale::e8m0:
      return pick<Code::fp4, Scale::e8m0, 1>(bf16, nt);
    case Scale::f16d:
      return f.code == Code::u4 ? pick<Code::u4, Scale::f16d, 1>(bf16, nt)
                                : pick<Code::i8, Scale::f16d, 1>(bf16, nt);
    case Scale::q4k:
      return pick<Code::u4, Scale::q4k, 1>(bf16, nt);
    case Scale::q6k:
      return pick<Code::i8, Scale::q6k, 0>(bf16, nt);
  }
  if (why)
    *why = "scale groups of " + std::to_string(f.group) +
           " elements have no instantiation here (the dequantize path serves them)";
  return nullptr;
}

class MatmulCudaSkinny final : public MatmulKernel {
 public:
  std::string_view name() const override { return "matmul_cuda_skinny_tc"; }

  std::string decline(const MatmulDesc& d) const override {
    std::string why = mm_cuda::cuda_device_decline(
        d, reinterpret_cast<const void*>(&skinny_tc_kernel<Code::u4, Scale::integer, 1, true, 1>));
    if (!why.empty()) return why;
    if (d.x_scheme) return "weight-only kernel (x_scheme is set: W8A8)";
    if (d.x != Dtype::bf16 && d.x != Dtype::f16)
      return "x is " + std::string(dtype_name(d.x)) + "; the tensor-core operands are bf16 / f16";
    if (d.m > kMaxM)
      return "M = " + std::to_string(d.m) + " > " + std::to_string(kMaxM) +
             " (a GEMV kernel: each 16 rows of x re-read W from L2; larger M goes to a GEMM)";
    const auto f = tc::format_of(d.w, d.n, d.k, &why);
    if (!f) return why;
    if (!launcher_for(*f, true, 1, &why)) return why;
    return {};
  }

  KernelSku sku(const MatmulDesc& d) const override {
    return {"matmul",
            Backend::cuda,
            std::string(dtype_name(d.x)) + "x" + d.w.str() + "->" + std::string(dtype_name(d.y)),
            d.w.str(),
            d.device.is_cuda() ? mm_cuda::cuda_arch(d.device.index) : "sm_90",
            std::string(name())};
  }

  PrecisionGuarantee precision(const MatmulDesc&) const override {
    return {
        "exact codes times x on tensor cores (mma.sync bf16/f16), f32 sums per scale group, "
        "group scale applied in f32; 4 k-slices added in a fixed order",
        Dtype::f32, true, false};
  }

  std::string weight_layout(const MatmulDesc&) const override { return tc::kLayoutName; }
  int64_t prepared_bytes(const MatmulDesc& d) const override {
    return mm_cuda::tc_plan(d).layout.bytes;
  }
  void prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
               const Stream& stream) const override {
    mm_cuda::tc_prepare(d, w, packed, stream);
  }

  /// Room for a copy of x when it is not 8-byte aligned (used only then).
  std::size_t workspace_size(const MatmulDesc& d) const override {
    return static_cast<std::size_t>(d.m * d.k * 2);
  }

  void run(const MatmulDesc& d, const MatmulArgs& a, const Stream& stream,
           Workspace ws) const override {
    if (d.m == 0 || d.n == 0) return;
    if (!a.w_packed.data())
      throw_error(ErrorCode::invalid_argument,
                  "matmul: matmul_cuda_skinny_tc needs the prepared weight (prepare_weight)");
    const mm_cuda::TcPlan tp = mm_cuda::tc_plan(d);
    mm_cuda::DeviceScope scope(d.device.index);
    SkinnyArgs sa;
    sa.w = mm_cuda::tc_weights(tp.format, tp.layout, a.w_packed.data());
    sa.x = static_cast<const uint8_t*>(a.x.data());
    sa.x_stride = d.x_stride();
    if (!quant_cuda::aligned(a.x.data(), 8) || sa.x_stride % 4 != 0) {
      // The kernel reads x 8 bytes at a time: an unaligned x is copied into the workspace.
      mm_cuda::check_cuda(
          cudaMemcpy2DAsync(ws.data, static_cast<size_t>(d.k) * 2, a.x.data(),
                            static_cast<size_t>(sa.x_stride) * 2, static_cast<size_t>(d.k) * 2,
                            static_cast<size_t>(d.m), cudaMemcpyDeviceToDevice,
                            static_cast<cudaStream_t>(stream.native_handle())),
          "matmul: copying x");
      sa.x = static_cast<const uint8_t*>(ws.data);
      sa.x_stride = d.k;
    }
    sa.y = a.y.data();
    sa.y_stride = d.y_stride();
    sa.y_dtype = d.y;
    sa.bias = d.bias ? a.bias.data() : nullptr;
    sa.m = static_cast<int>(d.m);
    sa.n = d.n;
    const Launcher l = launcher_for(tp.format, d.x == Dtype::bf16, d.m > 8 ? 2 : 1, nullptr);
    if (tp.layout.tiles > 65535)
      throw_error(ErrorCode::unsupported, "matmul_cuda_skinny_tc: N > 1048560");
    // 8 warps per block when there are few tiles (more loads in flight per SM), else 4.
    const int sms = mm_cuda::sm_count(d.device.index);
    const int64_t blocks = tp.layout.tiles * ((d.m + 15) / 16);
    const int warps = blocks < 3 * static_cast<int64_t>(sms) ? 8 : 4;
    l(sa, tp.layout.tiles, warps, static_cast<cudaStream_t>(stream.native_handle()));
  }
};

}  // namespace

const MatmulKernel& matmul_cuda_skinny_kernel() {
  static const MatmulCudaSkinny kernel;
  return kernel;
}

}  // namespace lowbit
