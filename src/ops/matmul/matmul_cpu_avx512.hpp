// The AVX-512 CPU matmul kernels (matmul_cpu_avx512.cpp) as plain data and functions.
//
// That translation unit is compiled for AVX-512 (a target pragma), so it must not compile
// anything with external linkage that another translation unit may also compile (inline
// functions, templates of lowbit's or the standard library's headers): the linker could keep
// its AVX-512 copy for the whole program and a CPU without AVX-512 would fault. This header
// therefore uses no lowbit header and no inline function; matmul_cpu_kernels.cpp translates
// descriptors and views into these structs, and calls in only after cpu_features() agreed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lowbit::matmul_cpu {

/// The weight formats the kernels decode. Every one but fp8 has small integer code values v
/// (|v| <= 128) with w = a * v + c per parameter group (c: zero points, K-quant mins).
enum class WFmt : uint8_t { i8, u8, i4, u4, e4m3, e5m2, nvfp4, mxfp4, q4_0, q8_0, q4_K, q6_K };
/// Float storage types of x, y, bias and scales.
enum class FDt : uint8_t { f32, f16, bf16 };

/// A divisor that maps every index to 0 (tensor / channel scales along k).
constexpr int64_t kNoDiv = int64_t{1} << 60;

/// W [n, k] in its plain layout. Row r's codes start at codes + r * row_bytes (GGUF: its
/// blocks). Non-GGUF scale (and zero point) of (row r, column k) is element
/// (r / scale_row_div) * scale_row_stride + k / scale_col_div of `scale` (tensor, channel,
/// 1-D blocks and 2-D tiles are all this form).
struct WeightRef {
  WFmt fmt = WFmt::i8;
  int group = 32;  ///< parameter group along k: 16 or 32 (see param_group)
  int64_t n = 0, k = 0;
  const uint8_t* codes = nullptr;
  int64_t row_bytes = 0;
  const void* scale = nullptr;  ///< f32 / f16 / bf16 (integer, fp8); e4m3 (nvfp4); e8m0 (mxfp4)
  FDt scale_dt = FDt::f32;
  bool affine = false;            ///< integer formats with zero points (c terms)
  const int32_t* zero = nullptr;  ///< their zero points (nullptr in shape-only refs)
  int64_t scale_row_div = 1, scale_row_stride = 0, scale_col_div = kNoDiv;
  float global = 0.0f;  ///< nvfp4's global scale
};

/// Float activations x [m, k], rows row_stride elements apart.
struct XFloatRef {
  const void* data = nullptr;
  FDt dt = FDt::f32;
  int64_t row_stride = 0;
};

/// Quantized activations: int8 codes [m, k] (rows row_bytes apart) with f32 / f16 / bf16
/// scales indexed like WeightRef's (row r, column k) -> r * scale_row_stride + k /
/// scale_col_div; or GGUF q8_0 / q8_K rows (row_bytes apart, scales in the blocks).
enum class XQKind : uint8_t { int8, q8_0, q8_K };
struct XQuantRef {
  XQKind kind = XQKind::int8;
  const uint8_t* data = nullptr;
  int64_t row_bytes = 0;
  const void* scale = nullptr;
  FDt scale_dt = FDt::f32;
  int64_t scale_row_stride = 0, scale_col_div = kNoDiv;
};

/// y [m, n] (rows row_stride elements apart) and an optional bias [n] of y's type.
struct YRef {
  void* data = nullptr;
  FDt dt = FDt::f32;
  int64_t row_stride = 0;
  const void* bias = nullptr;
};

/// Which loop runs: per-row dot products for few rows of x, panels of W for more.
enum class Path : uint8_t { gemv, gemm };

/// Where each piece of scratch memory lies (byte offsets into the workspace, 64-byte
/// aligned; 0 bytes for pieces a call does not use); defined in matmul_cpu_kernels.cpp so
/// that both translation units agree.
///  exact: xf   f32 [m, k] x, staged (converted, permuted like the codes)
///  int8:  xq   i8  [m, k] x codes, staged; init i32 (gemv: per 4 codes, gemm: per group)
///         -128 * sum of the codes; xs f32 x scale (per 4 codes / per group); xsq f32
///         xs * sum of the group's codes (formats with c terms)
///  both:  c    f32 [m, n] accumulators, unless y is f32 (then y itself)
struct WsLayout {
  size_t xf = 0, xq = 0, init = 0, xs = 0, xsq = 0, c = 0, total = 0;
};
WsLayout exact_layout(const WeightRef& w, int64_t m, const YRef& y, Path path);
WsLayout int8_layout(const WeightRef& w, int64_t m, const YRef& y, Path path);

/// y = x . dequant(W)^T (+ bias), x floats: f32 products and sums of the dequantized weights.
void run_exact(const WeightRef& w, const XFloatRef& x, const YRef& y, int64_t m, Path path,
               void* workspace);
/// y = dequant(xq) . dequant(W)^T (+ bias) with int8 dot products (vpdpbusd): per parameter
/// group an exact i32 sum, then f32 scales.
void run_int8(const WeightRef& w, const XQuantRef& x, const YRef& y, int64_t m, Path path,
              void* workspace);

/// The prepared layout of the int8 kernel (matmul_cpu_avx512_packed.cpp): its size, the
/// packing of a plain W (w complete), and the kernel on it (w: shape and format only; the
/// packed bytes carry everything else). Packed runs lay out the workspace as
/// int8_layout(..., Path::gemm) whatever their loop.
size_t packed_bytes(const WeightRef& w);
void pack_weight(const WeightRef& w, void* packed);
/// The header fields pack_weight writes, for checks: magic, format, n, k.
bool packed_header_matches(const WeightRef& w, const void* packed);
void run_int8_packed(const WeightRef& w, const void* packed, const XQuantRef& x, const YRef& y,
                     int64_t m, Path path, void* workspace);

}  // namespace lowbit::matmul_cpu
