// The AVX2 CPU matmul kernels (matmul_cpu_avx2.cpp): the same plain structs as the AVX-512
// kernels (matmul_cpu_avx512.hpp), for CPUs with AVX2, FMA and F16C but no AVX-512 VNNI
// (Haswell to Alder Lake clients, Zen 1-3). Like the AVX-512 translation unit, the AVX2 one is
// compiled with a target pragma and has no external linkage but these entry points.
#pragma once

#include "ops/matmul/matmul_cpu_avx512.hpp"

namespace lowbit::matmul_cpu::avx2 {

/// Scratch of the AVX2 int8 kernel (byte offsets, 64-byte aligned; defined in
/// matmul_cpu_kernels.cpp):
///  xq   i16 [m, k] x codes widened (permuted like W's codes for the 4-bit formats)
///  xs   f32 [m, groups] x scale per W parameter group
///  xsq  f32 [m, groups] xs * sum of the group's codes (formats with c terms)
///  c    f32 [m, n] accumulators, unless y is f32
WsLayout int8_layout(const WeightRef& w, int64_t m, const YRef& y);

/// y = x . dequant(W)^T (+ bias), x floats: f32 products and sums of the dequantized weights
/// (workspace: matmul_cpu::exact_layout).
void run_exact(const WeightRef& w, const XFloatRef& x, const YRef& y, int64_t m, Path path,
               void* workspace);
/// y = dequant(xq) . dequant(W)^T (+ bias): per parameter group an exact i32 dot product of
/// the codes (vpmaddwd on 16-bit codes), then f32 scales (workspace: int8_layout).
void run_int8(const WeightRef& w, const XQuantRef& x, const YRef& y, int64_t m, Path path,
              void* workspace);

/// The prepared layout `cpu_avx2_x8` (matmul_cpu_avx2_packed.cpp): its size, the packing of a
/// plain W (w complete; not fp8), the header check, and the kernel on it (m <= 16; w: shape
/// and format only). Its scratch: xq i8 [m, k] staged x codes, init i32 [m, groups] their sums,
/// xs / xsq as int8_layout's, c. run_int8_packed returns false, having written nothing, when x
/// holds a code of -128 and W has 8-bit codes (its sign trick would not be exact): the caller
/// runs run_int8 on the plain layout then.
WsLayout packed_layout(const WeightRef& w, int64_t m, const YRef& y);
size_t packed_bytes(const WeightRef& w);
void pack_weight(const WeightRef& w, void* packed);
bool packed_header_matches(const WeightRef& w, const void* packed);
bool run_int8_packed(const WeightRef& w, const void* packed, const XQuantRef& x, const YRef& y,
                     int64_t m, void* workspace);

}  // namespace lowbit::matmul_cpu::avx2
