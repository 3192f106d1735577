// bench_cpu_harness: what the CPU benchmarks share: the command-line walk, the timers
// (median of runs, best of runs, implementations interleaved rep by rep: their best, or
// every run's wall and thread CPU time), page
// prefaulting, the streaming ceilings (parallel memcpy, parallel u64 sum), the roughly
// normal inputs, opening ggml-python's libggml, and the first-seen order that groups a
// table's rows.
#pragma once

#include <dlfcn.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace bench {

// ---- the command line -----------------------------------------------------------------------

/// Walks argv one `--name [value]` option at a time:
///   for (bench::ArgWalker a(argc, argv); a.next();) if (a.name() == "--reps") ... a.value() ...
class ArgWalker {
 public:
  ArgWalker(int argc, char** argv) : argc_(argc), argv_(argv) {}
  /// Moves to the next argument; false past the last one.
  bool next() {
    if (++i_ >= argc_) return false;
    name_ = argv_[i_];
    return true;
  }
  /// The current argument.
  const std::string& name() const { return name_; }
  /// The argument after the current one (consumed); exits with status 2 and "<name> needs a
  /// value" when there is none.
  const char* value() {
    if (i_ + 1 >= argc_) {
      std::fprintf(stderr, "%s needs a value\n", name_.c_str());
      std::exit(2);
    }
    return argv_[++i_];
  }

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string name_;
};

// ---- timers ---------------------------------------------------------------------------------

/// Seconds of one call of f.
inline double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Median seconds of `reps` runs of f after one warm-up run.
inline double median_seconds(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) t.push_back(seconds_of(f));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Best (shortest) of `reps` timed runs after one warm-up run: on a machine shared with
/// other work the minimum is the stable estimate of what the code can do.
inline double best_seconds(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) best = std::min(best, seconds_of(f));
  return best;
}

/// Best of `reps` for each of several implementations of one operation, run in turn rep by
/// rep after one warm-up run each, so that a busy moment of the machine does not fall on one
/// of them only. With `settle_short_calls`, a call whose warm-up took under 50 ms is preceded
/// by an untimed one of the same implementation in every rep: thread pools (ggml's, libgomp's)
/// keep their threads spinning for a while after a call, and the timed call then never shares
/// the cores with the other side's spinning threads.
inline std::vector<double> best_interleaved(int reps, const std::vector<std::function<void()>>& fs,
                                            bool settle_short_calls = false) {
  std::vector<double> best(fs.size(), 1e30);
  std::vector<bool> short_call(fs.size());
  for (size_t i = 0; i < fs.size(); ++i) {
    const double warm_up = seconds_of(fs[i]);
    short_call[i] = settle_short_calls && warm_up < 0.05;
  }
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < fs.size(); ++i) {
      if (short_call[i]) fs[i]();
      best[i] = std::min(best[i], seconds_of(fs[i]));
    }
  return best;
}

/// CPU seconds the calling thread has used so far.
inline double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// Every timed run of one implementation: wall-clock seconds and the calling thread's CPU
/// seconds, run by run.
struct RunTimes {
  std::vector<double> wall, cpu;
};

/// The smallest of samples.
inline double best_of(const std::vector<double>& v) {
  return *std::min_element(v.begin(), v.end());
}

/// The median of samples (the upper one of an even count).
inline double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Several implementations run in turn rep by rep after one warm-up run each (as
/// best_interleaved runs them), keeping every run's wall and thread CPU time: on a shared
/// machine the two differ by the time other processes held the core.
inline std::vector<RunTimes> interleaved_runs(int reps,
                                              const std::vector<std::function<void()>>& fs) {
  for (const auto& f : fs) f();  // warm-up
  std::vector<RunTimes> t(fs.size());
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < fs.size(); ++i) {
      const double c0 = thread_cpu_seconds();
      t[i].wall.push_back(seconds_of(fs[i]));
      t[i].cpu.push_back(thread_cpu_seconds() - c0);
    }
  return t;
}

// ---- memory and ceilings --------------------------------------------------------------------

/// Touches every page (in parallel, as the runs will) so that page faults stay out of the
/// timings.
inline void prefault(void* p, int64_t bytes) {
  auto* c = static_cast<uint8_t*>(p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < bytes; i += 4096) c[i] = 0;
}

/// The copy ceiling: memcpy split in 64-byte-aligned slices over the OpenMP threads.
inline void parallel_memcpy(void* dst, const void* src, int64_t bytes) {
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t per = (bytes / n) & ~int64_t{63};
    const int64_t lo = per * t, hi = t == n - 1 ? bytes : lo + per;
    std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo,
                static_cast<size_t>(hi - lo));
  }
}

/// The streaming-read ceiling: a u64 sum over the OpenMP threads.
inline uint64_t parallel_sum(const uint64_t* p, int64_t words) {
  uint64_t sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
  for (int64_t i = 0; i < words; ++i) sum += p[i];
  return sum;
}

// ---- inputs ---------------------------------------------------------------------------------

/// Roughly normal f32 values (mean 0, sigma 1: a sum of four uniforms on [-1, 1] scaled by
/// sqrt(3) / 2), made in parallel with one generator per OpenMP thread; only the spread
/// matters to the timings.
inline void fill_roughly_normal(float* x, int64_t n) {
#pragma omp parallel
  {
    std::mt19937 rng(1234u + static_cast<unsigned>(omp_get_thread_num()));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] = (u(rng) + u(rng) + u(rng) + u(rng)) * 0.8660254f;
  }
}

// ---- ggml (dlopen) --------------------------------------------------------------------------

/// Opens ggml-python's libggml-base.so and libggml-cpu.so (RTLD_GLOBAL) from the first
/// directory that has both and whose symbols `bind(base, cpu)` finds: `dir_opt` if given,
/// then $LOWBIT_GGML_DIR, then this checkout's .venv. `bind` returns "" when it found what
/// it needs, else why not. `why` ends as "libggml from DIR", or the reasons every directory
/// failed ("DIR: reason; ..."). Returns whether one succeeded.
inline bool open_ggml(const std::string& dir_opt,
                      const std::function<std::string(void* base, void* cpu)>& bind,
                      std::string& why) {
  why.clear();
  std::vector<std::string> dirs;
  if (!dir_opt.empty()) dirs.push_back(dir_opt);
  if (const char* env = std::getenv("LOWBIT_GGML_DIR")) dirs.push_back(env);
  const std::string here = __FILE__;  // <repo>/bench/bench_cpu_harness.hpp
  const size_t cut = here.rfind("/bench/");
  if (cut != std::string::npos)
    dirs.push_back(here.substr(0, cut) + "/.venv/lib/python3.11/site-packages/ggml/lib");
  for (const std::string& d : dirs) {
    void* base = dlopen((d + "/libggml-base.so").c_str(), RTLD_NOW | RTLD_GLOBAL);
    void* cpu = base ? dlopen((d + "/libggml-cpu.so").c_str(), RTLD_NOW | RTLD_GLOBAL) : nullptr;
    if (!base || !cpu) {
      why += fmt::format("{}: {}; ", d, dlerror());
      continue;
    }
    const std::string missing = bind(base, cpu);
    if (!missing.empty()) {
      why += d + ": " + missing + "; ";
      continue;
    }
    why = "libggml from " + d;
    return true;
  }
  if (why.empty()) why = "no directory to look in";
  return false;
}

// ---- tables ---------------------------------------------------------------------------------

/// The distinct keys of `rows` in the order they first appear: a table printed key by key
/// keeps each key's rows together.
template <class Row, class Key>
std::vector<std::string> first_seen_order(const std::vector<Row>& rows, Key&& key) {
  std::vector<std::string> order;
  for (const Row& r : rows)
    if (std::find(order.begin(), order.end(), key(r)) == order.end()) order.push_back(key(r));
  return order;
}

}  // namespace bench
