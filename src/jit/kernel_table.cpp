// The process's table of resolved kernels: a new descriptor of an expression this process
// has launched before finds its kernel here without building its cache key.
//
// The ModuleCache's key is one string (fixed parts, arch, the program's canonical form,
// the variant), a few hundred bytes built and hashed for every new descriptor's first
// launch, plus the launch shape generated again. Here the lookup combines the program's
// structure hash (computed by build_program from its steps), the variant's fields and the
// arch, then compares all three in full (Program::same_structure: every field of every
// step, which implies equal canonical forms): a hash collision costs a comparison, never a
// wrong kernel. What the key holds besides (codegen version, NVRTC version and flags, the
// headers' hash) is fixed for the life of the process, so entries never go stale.
//
// The table is bounded (kResolvedCapacity kernels): when full it is emptied, and the
// kernels come again from the ModuleCache (its LRU in memory, then disk). Entries keep
// their Compiled alive as descriptors' plans do; ModuleCache::global().clear_memory()
// empties the table too, so "clear the memory cache" still means what it says.
#include <functional>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "jit/jit.hpp"

namespace lowbit::fusion {
namespace {

size_t mix(size_t h, size_t v) {
  // boost::hash_combine's step with a 64-bit constant (the golden ratio's bits).
  return h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
}

size_t variant_hash(const Variant& v) {
  size_t h = (v.vec ? 1u : 0u) | (v.idx32 ? 2u : 0u) | (v.pair ? 4u : 0u) | (v.quant ? 8u : 0u) |
             (v.qstore ? 16u : 0u) | (v.fast ? 32u : 0u);
  h = mix(h, static_cast<size_t>(v.nd));
  h = mix(h, static_cast<size_t>(v.qreg));
  h = mix(h, static_cast<size_t>(v.rows));
  h = mix(h, static_cast<size_t>(v.cols));
  for (Layout::Class c : v.cls) h = mix(h, static_cast<size_t>(c));
  return h;
}

struct Table {
  std::mutex mutex;
  std::unordered_multimap<size_t, std::shared_ptr<const ResolvedKernel>> entries;
};

Table& table() {
  static Table t;
  return t;
}

}  // namespace

std::shared_ptr<const ResolvedKernel> resolve_kernel(const std::shared_ptr<const Program>& program,
                                                     const Variant& variant,
                                                     const std::string& arch) {
  const Program& p = *program;
  const size_t hash =
      mix(mix(p.structure_hash, variant_hash(variant)), std::hash<std::string_view>{}(arch));
  Table& t = table();
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    auto [first, last] = t.entries.equal_range(hash);
    for (auto it = first; it != last; ++it) {
      const ResolvedKernel& r = *it->second;
      if (r.variant == variant && r.arch == arch && r.program->same_structure(p)) return it->second;
    }
  }
  // Not resolved in this process yet: the ModuleCache (memory, disk, else a compile).
  auto r = std::make_shared<ResolvedKernel>();
  const std::string key = ModuleCache::key_for(p.canonical() + "|" + variant.key(), arch);
  r->compiled = ModuleCache::global().get(key, arch, [&] { return generate_cuda(p, variant); });
  r->variant = variant;
  r->shape = generate_cuda(p, variant, false);
  r->arch = arch;
  // A copy, not the descriptor's program: that one shares one allocation with the
  // descriptor's PlanState, which will hold `r` (a cycle that would never be freed).
  r->program = structure_copy(p);
  r->hash = hash;
  std::lock_guard<std::mutex> lock(t.mutex);
  if (t.entries.size() >= kResolvedCapacity) t.entries.clear();
  t.entries.emplace(hash, r);  // two threads resolving one kernel both insert: either serves
  return r;
}

void clear_resolved_kernels() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.entries.clear();
}

}  // namespace lowbit::fusion
