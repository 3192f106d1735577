// The cache of compiled kernels: an in-memory LRU in front of a directory of entries.
//
// Key: "lowbit-jit|codegen <v>|nvrtc <x.y>|<arch>|<flags>|headers <fnv of the headers'
// text>|<program canonical form>|<variant>". An entry's file is <fnv1a64(key)>.lbjit:
//
//   "LOWBITJIT1\n"  u64 key length, key   u64 name length, name   u64 cubin length, cubin
//   u64 FNV-1a 64 of every byte before it
//
// (little-endian). On load the magic, the lengths, the checksum and the full key are
// checked; an entry that fails is counted as corrupt, logged, recompiled and replaced,
// never used. Entries are written to a temporary file in the same directory (O_EXCL,
// 0600) and renamed over the final name, so concurrent processes see either no entry or
// a whole one; two processes compiling one key both write whole entries, and the last
// rename wins. The directory is created 0700; one that is not owned by this user, or is
// writable by others, is not used (a writable cache would let others plant code).
#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <unordered_map>

#include "jit/jit.hpp"

namespace lowbit::fusion {
namespace {

constexpr char kMagic[] = "LOWBITJIT1\n";
constexpr size_t kMagicLen = sizeof(kMagic) - 1;
constexpr uint64_t kMaxEntry = uint64_t{256} << 20;

void log(const std::string& line) {
  if (jit_verbose()) std::fprintf(stderr, "[lowbit jit] %s\n", line.c_str());
}

std::string default_dir() {
  if (const char* d = std::getenv("LOWBIT_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/lowbit";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/lowbit";
  return {};
}

void put_u64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool get_u64(const std::string& s, size_t& at, uint64_t& v) {
  if (at + 8 > s.size()) return false;
  v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  at += 8;
  return true;
}

bool get_bytes(const std::string& s, size_t& at, std::string& out) {
  uint64_t n = 0;
  if (!get_u64(s, at, n) || n > s.size() - at) return false;
  out.assign(s, at, n);
  at += n;
  return true;
}

std::string serialize(const Compiled& c) {
  std::string s(kMagic, kMagicLen);
  put_u64(s, c.key.size());
  s += c.key;
  put_u64(s, c.entry.size());
  s += c.entry;
  put_u64(s, c.cubin.size());
  s += c.cubin;
  put_u64(s, fnv1a64(s.data(), s.size()));
  return s;
}

enum class Read { ok, missing, corrupt };

/// Reads the entry at `path`; `why` says what is wrong with a corrupt one.
Read read_entry(const std::string& path, const std::string& key, Compiled& out, std::string& why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return Read::missing;
    why = fmt::format("cannot open: {}", std::strerror(errno));
    return Read::corrupt;
  }
  struct stat st {};
  std::string data;
  bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            static_cast<uint64_t>(st.st_size) <= kMaxEntry;
  if (ok) {
    data.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < data.size()) {
      const ssize_t r = ::read(fd, data.data() + got, data.size() - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    ok = got == data.size();
  }
  ::close(fd);
  if (!ok) {
    why = "unreadable or not a regular file";
    return Read::corrupt;
  }
  if (data.size() < kMagicLen + 8 || data.compare(0, kMagicLen, kMagic) != 0) {
    why = "bad magic";
    return Read::corrupt;
  }
  size_t at = data.size() - 8;
  uint64_t sum = 0;
  get_u64(data, at, sum);
  if (sum != fnv1a64(data.data(), data.size() - 8)) {
    why = "checksum mismatch";
    return Read::corrupt;
  }
  const std::string body = data.substr(0, data.size() - 8);
  at = kMagicLen;
  std::string k, name, cubin;
  if (!get_bytes(body, at, k) || !get_bytes(body, at, name) || !get_bytes(body, at, cubin) ||
      at != body.size()) {
    why = "bad lengths";
    return Read::corrupt;
  }
  if (k != key) {
    why = "key mismatch (hash collision or stale entry)";
    return Read::corrupt;
  }
  out.key = std::move(k);
  out.entry = std::move(name);
  out.cubin = std::move(cubin);
  return Read::ok;
}

}  // namespace

/// Creates `dir` and its missing parents with mode 0700; "" if it cannot be used safely,
/// with the reason in `why`.
std::string prepare_dir(const std::string& dir, std::string& why) {
  if (dir.empty()) {
    why = "no cache directory (set LOWBIT_CACHE_DIR)";
    return {};
  }
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) {
      why = fmt::format("cannot create {}: {}", part, std::strerror(errno));
      return {};
    }
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    why = dir + " is not a directory";
    return {};
  }
  if (st.st_uid != ::geteuid()) {
    why = dir + " belongs to another user";
    return {};
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    why = dir + " is writable by group or others";
    return {};
  }
  return dir;
}

/// Writes `bytes` to `path` through a temporary file and a rename.
bool write_entry(const std::string& dir, const std::string& path, const std::string& bytes,
                 std::string& why) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = fmt::format("{}/.tmp.{}.{}.{}", dir, static_cast<long>(::getpid()),
                                      counter.fetch_add(1), fnv1a64(path.data(), path.size()));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    why = fmt::format("cannot create {}: {}", tmp, std::strerror(errno));
    return false;
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  const bool ok = done == bytes.size() && ::close(fd) == 0;
  if (!ok) {
    if (done != bytes.size()) ::close(fd);
    ::unlink(tmp.c_str());
    why = fmt::format("cannot write {}", tmp);
    return false;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    why = fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(errno));
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

struct ModuleCache::Impl {
  Options options;
  std::string dir;  // "" when the disk cache is off
  mutable std::mutex mutex;
  std::list<std::shared_ptr<const Compiled>> lru;  // most recent first
  std::unordered_map<std::string, std::list<std::shared_ptr<const Compiled>>::iterator> index;
  Stats stats;

  void insert(const std::shared_ptr<const Compiled>& c) {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = index.find(c->key); it != index.end()) {
      lru.erase(it->second);
      index.erase(it);
    }
    lru.push_front(c);
    index[c->key] = lru.begin();
    while (lru.size() > std::max<size_t>(options.capacity, 1)) {
      index.erase(lru.back()->key);
      lru.pop_back();
      ++stats.evictions;
    }
  }
};

ModuleCache::ModuleCache(Options options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.disk) {
    std::string why;
    impl_->dir = prepare_dir(impl_->options.dir.empty() ? default_dir() : impl_->options.dir, why);
    if (impl_->dir.empty()) log("disk cache off: " + why);
  }
}

ModuleCache::~ModuleCache() = default;

namespace {
std::atomic<const ModuleCache*> g_global{nullptr};  // set once global() has made it
}  // namespace

ModuleCache& ModuleCache::global() {
  static ModuleCache cache(Options{});
  g_global.store(&cache, std::memory_order_relaxed);
  return cache;
}

std::string ModuleCache::key_for(const std::string& canonical, const std::string& arch) {
  // "lowbit-jit|codegen V|nvrtc M.m|<arch>|<flags>|headers <hash>|<canonical>", the fixed
  // parts formatted once (this runs for every new descriptor's first launch).
  static const std::string head =
      fmt::format("lowbit-jit|codegen {}|nvrtc {}|", kCodegenVersion, nvrtc_version());
  static const std::string mid =
      fmt::format("|{}|headers {}|", nvrtc_flags(), hex64(jit_headers().hash));
  std::string k;
  k.reserve(head.size() + arch.size() + mid.size() + canonical.size());
  k += head;
  k += arch;
  k += mid;
  k += canonical;
  return k;
}

std::shared_ptr<const Compiled> ModuleCache::lookup(const std::string& key) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->index.find(key);
  if (it == impl_->index.end()) return nullptr;
  impl_->lru.splice(impl_->lru.begin(), impl_->lru, it->second);
  ++impl_->stats.memory_hits;
  return *it->second;
}

std::string ModuleCache::entry_path(const std::string& key) const {
  if (impl_->dir.empty()) return {};
  return impl_->dir + "/" + hex64(fnv1a64(key.data(), key.size())) + ".lbjit";
}

std::shared_ptr<const Compiled> ModuleCache::load_or_compile(
    const std::string& key, const std::string& arch, const std::function<KernelSource()>& source) {
  const std::string hash = hex64(fnv1a64(key.data(), key.size()));
  const std::string path = entry_path(key);
  if (!path.empty()) {
    auto c = std::make_shared<Compiled>();
    std::string why;
    switch (read_entry(path, key, *c, why)) {
      case Read::ok: {
        c->hash = hash;
        c->origin = "disk";
        {
          std::lock_guard<std::mutex> lock(impl_->mutex);
          ++impl_->stats.disk_hits;
        }
        log(fmt::format("loaded {} from {}", hash, path));
        impl_->insert(c);
        return c;
      }
      case Read::corrupt: {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        ++impl_->stats.corrupt;
        std::fprintf(stderr, "[lowbit jit] cache entry %s is corrupt (%s): recompiling\n",
                     path.c_str(), why.c_str());
        break;
      }
      case Read::missing:
        break;
    }
  }
  auto c = std::make_shared<Compiled>();
  c->key = key;
  c->hash = hash;
  const KernelSource src = source();
  c->entry = src.name;
  c->cubin = compile_cuda(src, arch, hash, &c->compile_ms);
  c->origin = "compiled";
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    ++impl_->stats.compiles;
  }
  if (!path.empty()) {
    std::string why;
    if (write_entry(impl_->dir, path, serialize(*c), why)) {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      ++impl_->stats.disk_writes;
    } else {
      log("not cached on disk: " + why);
    }
  }
  impl_->insert(c);
  return c;
}

ModuleCache::Stats ModuleCache::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

const std::string& ModuleCache::dir() const { return impl_->dir; }

void ModuleCache::clear_memory() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->lru.clear();
    impl_->index.clear();
  }
  // The launch path's table of resolved kernels sits in front of the global cache: a
  // cleared cache must not still hand out kernels through it.
  if (g_global.load(std::memory_order_relaxed) == this) clear_resolved_kernels();
}

}  // namespace lowbit::fusion
