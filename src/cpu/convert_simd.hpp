// What the convert SIMD kernel (ops/convert/convert_simd.cpp) tells its tests about the
// Highway targets behind it.
#pragma once

#include <cstdint>
#include <string>

namespace lowbit::convert_simd_detail {

/// The Highway targets compiled into the kernel (HWY_TARGETS of its translation unit),
/// as a mask of HWY_* target bits. Tests intersect it with hwy::SupportedTargets() and
/// force each one with hwy::SetSupportedTargetsForTest.
int64_t compiled_targets();

/// Highway's name ("AVX3", "AVX2", "SSE4", "EMU128", ...) of the target that the
/// kernel's dynamic dispatch picks now; it is also the arch of the kernel's KernelSku.
std::string dispatched_target();

/// Bytes (read + written) from which a call streams its output past the caches with
/// non-temporal stores; tests size a tensor past it to cover that path.
int64_t stream_threshold_bytes();

}  // namespace lowbit::convert_simd_detail
