// The CPU JIT's compiler and caches: generated C++ (codegen_cpu.cpp) -> a shared object,
// loaded with dlopen. The host's C++ compiler runs as a child process (posix_spawn, no
// shell) on a private temporary directory; its output replaces the cache entry by rename,
// so a crash mid-compile leaves no half-written object. Entries live in the fusion JIT's
// cache directory (ModuleCache::global().dir(), already checked to be the user's own and
// not writable by others: loading a shared object runs its code) under cpu/, named by the
// key's hash; each embeds its full key, compared after loading, so a stale or foreign file
// is recompiled, never used.
#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "jit/cpu_jit.hpp"

extern char** environ;

namespace lowbit::fusion {
namespace {

#ifndef LOWBIT_BUILD_CXX
#define LOWBIT_BUILD_CXX "c++"
#endif
#ifndef LOWBIT_BUILD_HWY_INCLUDE
#define LOWBIT_BUILD_HWY_INCLUDE "/usr/include"
#endif

void log(const std::string& line) {
  if (jit_verbose()) std::fprintf(stderr, "[lowbit jit] cpu: %s\n", line.c_str());
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_executable(const std::string& path) {
  return is_file(path) && ::access(path.c_str(), X_OK) == 0;
}

/// `name` as a path: itself if it has a slash, else the first match on $PATH.
std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return is_executable(name) ? name : std::string();
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    if (is_executable(candidate)) return candidate;
  }
  return {};
}

std::string read_file(const std::string& path, size_t limit = size_t{1} << 20) {
  std::ifstream f(path, std::ios::binary);
  std::string s;
  if (!f) return s;
  s.resize(limit);
  f.read(s.data(), static_cast<std::streamsize>(limit));
  s.resize(static_cast<size_t>(f.gcount()));
  return s;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  return static_cast<bool>(f.flush());
}

/// Runs argv with stdout and stderr into `log_path`; the exit status, or -1 if it could
/// not start.
int run_process(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int err = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// What -march=native compiles for: a machine sharing the cache directory with another
/// kind of CPU must not load its objects (they may hold instructions this one lacks).
std::string cpu_identity() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(f, line) && (model.empty() || flags.empty())) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line;
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
  }
  return model + "|" + hex64(fnv1a64(flags.data(), flags.size()));
}

CpuToolchain find_toolchain() {
  CpuToolchain t;
#if !(defined(__x86_64__) || defined(_M_X64))
  t.why_not = "the CPU JIT generates x86 vector code";
  return t;
#else
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    t.why_not = "the CPU has no AVX2 and FMA";
    return t;
  }
  const char* cxx = std::getenv("LOWBIT_CXX");
  t.cxx = find_program(cxx && *cxx ? cxx : LOWBIT_BUILD_CXX);
  if (t.cxx.empty() && !(cxx && *cxx)) t.cxx = find_program("c++");
  if (t.cxx.empty()) {
    t.why_not = fmt::format("no C++ compiler found ({}; set LOWBIT_CXX)",
                            cxx && *cxx ? cxx : LOWBIT_BUILD_CXX " or c++ on PATH");
    return t;
  }
  const char* hwy = std::getenv("LOWBIT_HWY_INCLUDE");
  t.hwy_include = hwy && *hwy ? hwy : LOWBIT_BUILD_HWY_INCLUDE;
  if (!is_file(t.hwy_include + "/hwy/highway.h")) {
    t.why_not =
        fmt::format("Highway's headers are not in {} (set LOWBIT_HWY_INCLUDE)", t.hwy_include);
    return t;
  }
  // The compiler's identity: its first line of --version (part of every key).
  char dir[] = "/tmp/lowbit-cxx-XXXXXX";
  if (::mkdtemp(dir)) {
    const std::string log_path = std::string(dir) + "/version";
    if (run_process({t.cxx, "--version"}, log_path) == 0) {
      const std::string v = read_file(log_path, 4096);
      t.version = v.substr(0, v.find('\n'));
    }
    ::unlink(log_path.c_str());
    ::rmdir(dir);
  }
  if (t.version.empty()) {
    t.why_not = t.cxx + " --version failed";
    return t;
  }
  // Bit-identity with the interpreter needs IEEE operations as written: no contraction
  // into FMAs (the formulas call MulAdd where they mean one), no reassociation.
  // HWY_COMPILE_ONLY_STATIC: Highway compiles for the target -march=native selects and no
  // other (this object runs where it is compiled); without it an older Highway stops at
  // "best baseline should be included in dynamic targets" on CPUs newer than it knows.
  t.flags =
      "-std=c++17 -O3 -march=native -DHWY_COMPILE_ONLY_STATIC=1 -ffp-contract=off "
      "-fno-math-errno -fPIC -shared -w";
  // More flags, after lowbit's (part of every key, as the flags are): e.g. -mno-avx512f
  // builds the AVX2 kernels on an AVX-512 machine (the tests run them so).
  if (const char* extra = std::getenv("LOWBIT_JIT_CXXFLAGS"); extra && *extra)
    t.flags += std::string(" ") + extra;
  t.cpu = cpu_identity();
  return t;
#endif
}

struct Table {
  std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<const CpuCompiled>> entries;
};
Table& table() {
  static Table* t = new Table;  // never destroyed: kernels may run during exit
  return *t;
}

/// The cpu/ folder of the JIT's cache directory, prepared and checked as that directory is
/// ("" when the disk cache is off or the folder is not safe to load code from).
std::string cache_dir() {
  static const std::string dir = [] {
    const std::string root = ModuleCache::global().dir();
    if (root.empty()) return std::string();
    std::string why;
    std::string d = prepare_dir(root + "/cpu", why);
    if (d.empty()) log("disk cache off: " + why);
    return d;
  }();
  return dir;
}

/// Loads `path` and returns its entry point if its embedded key is `key`.
CpuKernelFn load(const std::string& path, const std::string& key) {
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    log(fmt::format("cannot load {}: {}", path, ::dlerror()));
    return nullptr;
  }
  const auto* stored = static_cast<const char*>(::dlsym(handle, "lowbit_fused_cpu_key"));
  auto* fn = reinterpret_cast<CpuKernelFn>(::dlsym(handle, "lowbit_fused_cpu"));
  if (!stored || !fn || key != stored) {
    log(path + " holds another key: recompiling");
    ::dlclose(handle);
    return nullptr;
  }
  return fn;  // the handle stays open for the process's life
}

/// Compiles `source` into a shared object, loads it (from its private temporary file: a
/// unique name, which dlopen cannot confuse with an object loaded earlier from the cache's
/// path) and, with a `target`, stores it there by rename. Throws with the compiler's output
/// on failure.
CpuKernelFn compile_and_load(const CpuToolchain& t, const std::string& source,
                             const std::string& key, const std::string& target, bool fast,
                             double* milliseconds) {
  char tmp[] = "/tmp/lowbit-cpu-jit-XXXXXX";
  if (!::mkdtemp(tmp))
    throw_error(ErrorCode::io_error, "cpu jit: cannot create a temporary directory");
  const std::string dir = tmp;
  const HeaderSet& headers = cpu_jit_headers();
  std::vector<std::string> files;
  for (size_t i = 0; i < headers.names.size(); ++i) {
    files.push_back(dir + "/" + headers.names[i]);
    write_file(files.back(), headers.contents[i]);
  }
  const std::string src = dir + "/kernel.cpp", obj = dir + "/kernel.so", log_path = dir + "/log";
  files.insert(files.end(), {src, obj, log_path});
  write_file(src, source);
  if (const char* dump = std::getenv("LOWBIT_JIT_DUMP"); dump && *dump)
    write_file(
        std::string(dump) + "/cpu_kernel_" + hex64(fnv1a64(source.data(), source.size())) + ".cpp",
        source);
  std::vector<std::string> argv{t.cxx};
  std::stringstream flags(t.flags);
  for (std::string f; flags >> f;) {
    // Fast math contracts multiplies and adds into FMAs, as NVRTC's --fmad does.
    if (fast && f == "-ffp-contract=off") f = "-ffp-contract=fast";
    argv.push_back(f);
  }
  argv.insert(argv.end(), {"-I" + dir, "-isystem", t.hwy_include, "-o", obj, src});
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_process(argv, log_path);
  *milliseconds =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  auto cleanup = [&] {
    for (const std::string& f : files) ::unlink(f.c_str());
    ::rmdir(dir.c_str());
  };
  if (rc != 0) {
    std::string out = read_file(log_path, 8192);
    // The source is kept where LOWBIT_JIT_DUMP says (written above).
    std::string kept;
    if (const char* dump = std::getenv("LOWBIT_JIT_DUMP"); dump && *dump)
      kept = std::string(dump) + "/cpu_kernel_" + hex64(fnv1a64(source.data(), source.size())) +
             ".cpp";
    cleanup();
    throw_error(ErrorCode::internal,
                fmt::format("cpu jit: {} failed (exit {}) on a generated kernel{}:\n{}", t.cxx, rc,
                            kept.empty() ? " (set LOWBIT_JIT_DUMP=DIR to keep its source)"
                                         : " (source: " + kept + ")",
                            out));
  }
  const CpuKernelFn fn = load(obj, key);  // the mapping outlives the file
  if (fn && !target.empty()) {
    // Readers see the old entry or the whole new one; a cache that cannot be written costs
    // the next process a compile, no more.
    std::string why;
    const std::string bytes = read_file(obj, size_t{256} << 20);
    if (bytes.empty() || !write_entry(cache_dir(), target, bytes, why))
      log("cannot store " + target + ": " + why);
  }
  cleanup();
  if (!fn) throw_error(ErrorCode::internal, "cpu jit: a compiled kernel does not load");
  return fn;
}

}  // namespace

const CpuToolchain& cpu_toolchain() {
  static const CpuToolchain t = find_toolchain();
  return t;
}

std::string cpu_jit_key(const std::string& canonical, bool fast) {
  const CpuToolchain& t = cpu_toolchain();
  return fmt::format("cpu-jit v{}|{}|{}|{}|{}|headers {}|{}|{}", kCpuCodegenVersion,
                     fast ? "fast" : "exact", t.version, t.flags, t.hwy_include,
                     hex64(cpu_jit_headers().hash), t.cpu, canonical);
}

std::string cpu_jit_entry_path(const std::string& key, const std::string& source) {
  const std::string dir = cache_dir();
  if (dir.empty()) return {};
  const std::string full = key + "|source " + hex64(fnv1a64(source.data(), source.size()));
  return dir + "/" + hex64(fnv1a64(full.data(), full.size())) + ".so";
}

std::shared_ptr<const CpuCompiled> cpu_compile(const std::string& key, const std::string& source,
                                               bool fast) {
  const CpuToolchain& t = cpu_toolchain();
  if (!t.why_not.empty()) throw_error(ErrorCode::unsupported, "cpu jit: " + t.why_not);
  // The entry is the source's: a generator that changes its output (without a version
  // bump) gets a new entry, never an old object.
  const std::string full = key + "|source " + hex64(fnv1a64(source.data(), source.size()));
  Table& tab = table();
  std::lock_guard<std::mutex> lock(tab.mutex);  // one compile at a time per process
  if (auto it = tab.entries.find(full); it != tab.entries.end()) return it->second;
  auto c = std::make_shared<CpuCompiled>();
  c->key = full;
  const std::string dir = cache_dir();
  const std::string hash = hex64(fnv1a64(full.data(), full.size()));
  const std::string path = dir.empty() ? std::string() : dir + "/" + hash + ".so";
  if (!path.empty() && is_file(path)) {
    c->fn = load(path, key);
    c->origin = "disk";
  }
  if (!c->fn) {
    c->fn = compile_and_load(t, source, key, path, fast, &c->compile_ms);
    c->origin = "compiled";
    log(fmt::format("compiled {} in {:.0f} ms", hash, c->compile_ms));
  }
  tab.entries.emplace(full, c);
  return c;
}

void cpu_jit_clear_memory() {
  Table& tab = table();
  std::lock_guard<std::mutex> lock(tab.mutex);
  tab.entries.clear();
}

}  // namespace lowbit::fusion
