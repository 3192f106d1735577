// Generated CUDA source -> cubin with NVRTC (no GPU needed), with the compile logged and,
// under LOWBIT_JIT_DUMP=dir, the source and PTX written there.
//
// Flags: C++20 (numeric.hpp needs it), IEEE division and square root, no flush to zero,
// and no FMA contraction (--fmad=false): the CPU evaluator runs the same formulas without
// contraction, so both give the same bits. --use_fast_math is never set.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "jit/jit.hpp"
#include "lowbit/error.hpp"

#if LOWBIT_HAS_CUDA
#include <nvrtc.h>
#endif

namespace lowbit::fusion {

uint64_t fnv1a64(const void* data, std::size_t size, uint64_t seed) {
  uint64_t h = seed;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

bool jit_verbose() { return plan_detail::verbose("jit"); }

namespace {

const char* const kFlags[] = {"-std=c++20", "--fmad=false", "--ftz=false", "--prec-div=true",
                              "--prec-sqrt=true"};
/// FusedDesc::fast_math: contraction and approximate division and square root; subnormals
/// are still kept. Its variant key says "fast", so these need no place in the cache key.
[[maybe_unused]] const char* const kFastFlags[] = {"-std=c++20", "--fmad=true", "--ftz=false",
                                                   "--prec-div=false", "--prec-sqrt=false"};

/// Writes `text` to `path` (best effort); true on success.
[[maybe_unused]] bool write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return false;
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  return static_cast<bool>(f);
}

/// $LOWBIT_JIT_DUMP, created if needed; empty if unset.
[[maybe_unused]] std::filesystem::path dump_dir() {
  const char* d = std::getenv("LOWBIT_JIT_DUMP");
  if (!d || !*d) return {};
  std::error_code ec;
  std::filesystem::create_directories(d, ec);
  return d;
}

}  // namespace

std::string nvrtc_flags() {
  std::string s;
  for (const char* f : kFlags) {
    if (!s.empty()) s += ' ';
    s += f;
  }
  return s;
}

#if LOWBIT_HAS_CUDA

std::string nvrtc_version() {
  int major = 0, minor = 0;
  if (nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return "unknown";
  return fmt::format("{}.{}", major, minor);
}

namespace {

/// Compiles take it shared (they may run concurrently); the warm-up takes it exclusive, so
/// that a compile arriving during the warm-up waits for NVRTC's start-up to finish once
/// rather than running beside it.
std::shared_mutex g_warm_up_mutex;

/// The warm-up thread, joined at exit (NVRTC must not be torn down under it).
struct WarmUp {
  std::thread thread;
  ~WarmUp() {
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

void start_nvrtc_warm_up() {
  static WarmUp warm_up;
  static std::once_flag once;
  std::call_once(once, [] {
    warm_up.thread = std::thread([] {
      const std::unique_lock<std::shared_mutex> lock(g_warm_up_mutex);
      const HeaderSet& headers = jit_headers();
      std::vector<const char*> text, names;
      for (size_t i = 0; i < headers.names.size(); ++i) {
        text.push_back(headers.contents[i].c_str());
        names.push_back(headers.names[i].c_str());
      }
      // An empty kernel with the headers: NVRTC loads its builtins and starts its front
      // end, NVVM and ptxas; errors are ignored (the real compile reports its own).
      nvrtcProgram prog = nullptr;
      if (nvrtcCreateProgram(&prog,
                             "#include \"lowbit_jit_prelude.h\"\n"
                             "extern \"C\" __global__ void lowbit_warm_up() {}\n",
                             "lowbit_warm_up.cu", static_cast<int>(text.size()), text.data(),
                             names.data()) != NVRTC_SUCCESS)
        return;
      const char* opts[] = {"-std=c++20", "--gpu-architecture=sm_90"};
      nvrtcCompileProgram(prog, 2, opts);
      size_t size = 0;
      nvrtcGetCUBINSize(prog, &size);
      nvrtcDestroyProgram(&prog);
      if (jit_verbose()) std::fprintf(stderr, "[lowbit jit] NVRTC warmed up\n");
    });
  });
}

std::string compile_cuda(const KernelSource& source, const std::string& arch,
                         const std::string& hash, double* milliseconds) {
  const std::shared_lock<std::shared_mutex> warm(g_warm_up_mutex);
  const HeaderSet& headers = jit_headers();
  std::vector<const char*> hdr_text, hdr_name;
  for (size_t i = 0; i < headers.names.size(); ++i) {
    hdr_text.push_back(headers.contents[i].c_str());
    hdr_name.push_back(headers.names[i].c_str());
  }
  const std::string file = "lowbit_fused_" + hash + ".cu";
  const auto t0 = std::chrono::steady_clock::now();
  nvrtcProgram prog = nullptr;
  nvrtcResult r =
      nvrtcCreateProgram(&prog, source.code.c_str(), file.c_str(),
                         static_cast<int>(hdr_text.size()), hdr_text.data(), hdr_name.data());
  if (r != NVRTC_SUCCESS)
    throw_error(ErrorCode::internal,
                fmt::format("fusion: nvrtcCreateProgram: {}", nvrtcGetErrorString(r)));
  struct Destroy {
    nvrtcProgram* p;
    ~Destroy() { nvrtcDestroyProgram(p); }
  } destroy{&prog};
  std::vector<const char*> opts =
      source.fast ? std::vector<const char*>(std::begin(kFastFlags), std::end(kFastFlags))
                  : std::vector<const char*>(std::begin(kFlags), std::end(kFlags));
  const std::string arch_flag = "--gpu-architecture=" + arch;
  opts.push_back(arch_flag.c_str());
  r = nvrtcCompileProgram(prog, static_cast<int>(opts.size()), opts.data());
  std::string log;
  size_t log_size = 0;
  if (nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    nvrtcGetProgramLog(prog, log.data());
    while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  }
  const std::filesystem::path dump = dump_dir();
  if (r == NVRTC_ERROR_INVALID_OPTION)  // e.g. an arch this NVRTC does not know
    throw_error(
        ErrorCode::unsupported,
        fmt::format("fusion: NVRTC {} refused the options for {}: {}", nvrtc_version(), arch, log));
  if (r != NVRTC_SUCCESS) {
    // A bug in codegen: keep the source for the report.
    std::filesystem::path where = dump;
    if (where.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      where = tmp && *tmp ? tmp : "/tmp";
    }
    const std::filesystem::path path =
        where / fmt::format("lowbit_fused_{}_{}.cu", hash, static_cast<long>(getpid()));
    const bool saved = write_file(path, source.code);
    throw_error(ErrorCode::internal,
                fmt::format("fusion: NVRTC could not compile generated kernel {} for {} ({}; "
                            "this is a lowbit bug, please report it). Source {}. NVRTC log:\n{}",
                            file, arch, nvrtcGetErrorString(r),
                            saved ? "written to " + path.string() : "could not be written", log));
  }
  size_t size = 0;
  r = nvrtcGetCUBINSize(prog, &size);
  std::string cubin(size, '\0');
  if (r == NVRTC_SUCCESS && size > 0) r = nvrtcGetCUBIN(prog, cubin.data());
  if (r != NVRTC_SUCCESS || size == 0)
    throw_error(ErrorCode::internal, fmt::format("fusion: NVRTC gave no cubin for {} ({}); log: {}",
                                                 arch, nvrtcGetErrorString(r), log));
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (milliseconds) *milliseconds = ms;
  if (!dump.empty()) {
    write_file(dump / (file), source.code);
    size_t ptx_size = 0;
    if (nvrtcGetPTXSize(prog, &ptx_size) == NVRTC_SUCCESS && ptx_size > 1) {
      std::string ptx(ptx_size, '\0');
      if (nvrtcGetPTX(prog, ptx.data()) == NVRTC_SUCCESS) {
        ptx.resize(ptx_size - 1);
        write_file(dump / ("lowbit_fused_" + hash + ".ptx"), ptx);
      }
    }
  }
  if (jit_verbose())
    std::fprintf(stderr, "[lowbit jit] compiled %s for %s in %.1f ms (nvrtc %s, %zu bytes)%s\n",
                 hash.c_str(), arch.c_str(), ms, nvrtc_version().c_str(), cubin.size(),
                 log.empty() ? "" : ("; log: " + log).c_str());
  return cubin;
}

#else

std::string nvrtc_version() { return ""; }

void start_nvrtc_warm_up() {}

std::string compile_cuda(const KernelSource&, const std::string& arch, const std::string&,
                         double*) {
  throw_error(
      ErrorCode::unsupported,
      "fusion: this build of lowbit has no CUDA toolkit, so no NVRTC to compile for " + arch);
}

#endif

}  // namespace lowbit::fusion
