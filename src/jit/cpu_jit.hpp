// The CPU JIT of the fusion op: a Program compiled into one loop of vectors by the host's
// C++ compiler at run time (docs/jit.md, "The CPU JIT").
//
//   codegen_cpu.cpp     Program -> C++ source over Highway vectors (the interpreter's formulas)
//   cpu_compile.cpp     the toolchain, the compile, the in-memory and on-disk caches, dlopen
//   cpu_jit_kernel.cpp  the fused_cpu_jit kernel of the plan API
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "jit/jit.hpp"

namespace lowbit::fusion {

/// Part of every CPU cache key: bump when generated code changes for the same program.
inline constexpr int kCpuCodegenVersion = 1;

/// A compiled kernel's entry point: elements [begin, end) of the iteration space. `in` has
/// each input's data pointer (scalar inputs are read through `uniform` instead), `out` each
/// output's; `uniform` holds, per step of the program, its f32 value where the step is
/// uniform (uniform_values' floats); `stream` allows non-temporal stores of the outputs
/// (the kernel fences them before it returns).
using CpuKernelFn = void (*)(const void* const* in, void* const* out, const float* uniform,
                             int64_t begin, int64_t end, int stream);

/// Why the generator does not take `p` over `L` ("" if it does).
std::string cpu_codegen_unsupported(const Program& p, const Layout& L);

/// The translation unit of `p` (which cpu_codegen_unsupported takes), exporting
/// `lowbit_fused_cpu` (a CpuKernelFn) and `lowbit_fused_cpu_key` (`key`, which the loader
/// compares with the key it looked for). `fast`: FusedDesc::fast_math.
std::string generate_cpu(const Program& p, const std::vector<uint8_t>& uniform, bool fast,
                         const std::string& key);

/// The headers generated code includes besides Highway's (names and texts).
const HeaderSet& cpu_jit_headers();

/// The host compiler and Highway's headers, found once per process.
struct CpuToolchain {
  std::string cxx;          ///< the compiler's path
  std::string version;      ///< the first line of `cxx --version`
  std::string hwy_include;  ///< the directory holding hwy/highway.h
  std::string flags;        ///< the flags every compile uses
  std::string cpu;          ///< what -march=native targets (model name and flags): key part
  std::string why_not;      ///< non-empty: no usable toolchain (then the other fields may be empty)
};
const CpuToolchain& cpu_toolchain();

struct CpuCompiled {
  CpuKernelFn fn = nullptr;
  std::string key;        ///< the full key: cpu_jit_key's and the source's hash
  std::string origin;     ///< "compiled", "disk" or "memory"
  double compile_ms = 0;  ///< the compiler's wall time (0 unless origin is "compiled")
};

/// The full cache key of a program's canonical form.
std::string cpu_jit_key(const std::string& canonical, bool fast);

/// The kernel of `source` (generate_cpu's, embedding `key`): from this process's table,
/// else from the disk cache (an object named by the hash of the key and the source's own
/// hash, whose embedded key must equal `key`), else compiled and stored. Throws
/// Error(internal) with the compiler's output when the source does not compile, and
/// Error(unsupported) without a toolchain. `fast`: compiled with FMA contraction (the key
/// says so: cpu_jit_key's `fast`).
std::shared_ptr<const CpuCompiled> cpu_compile(const std::string& key, const std::string& source,
                                               bool fast);

/// The disk cache's file for (key, source), "" without a disk cache (tests).
std::string cpu_jit_entry_path(const std::string& key, const std::string& source);

/// Forgets the in-memory table (the loaded objects stay mapped): tests of the disk cache.
void cpu_jit_clear_memory();

}  // namespace lowbit::fusion
