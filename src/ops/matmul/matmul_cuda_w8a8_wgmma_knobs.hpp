// Knobs of matmul_cuda_w8a8_wgmma for tests and benchmarks (host code only).
#pragma once

#include <atomic>

namespace lowbit::w8a8_wgmma {

/// The tile width (rows of W per tile: 64, 128 or 256) every launch takes; 0: the plan's
/// choice (width_for). Tests sweep it so that each instantiation runs; while it is set the
/// plan also takes every case it can compute (per-tensor fp8 and short grids included, which
/// it otherwise leaves to cuBLASLt as slower there).
inline std::atomic<int> g_width{0};

}  // namespace lowbit::w8a8_wgmma
