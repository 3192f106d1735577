// The allocator of expression nodes: a per-thread free list of node-sized blocks.
//
// Why: a caller that builds its expression per call (a launch loop making a new descriptor
// each time) allocates and frees every node per call, all of one size. glibc's per-thread
// cache keeps only 7 free blocks of a size; chain8 frees 11 nodes at once, and the rest went
// through malloc's slow free path (callgrind: _int_free was the largest item of the cached
// launch path's host time). Blocks here are kept for reuse by the thread that frees them
// (nodes may die on another thread than the one that made them; any block serves any node),
// up to kKeep per thread, and returned to operator delete past that and at thread exit.
#pragma once

#include <cstddef>
#include <new>

namespace lowbit::fusion {

namespace node_alloc_detail {

/// A thread's free blocks. Trivially destructible, so that it stays usable after the
/// thread's other thread_local objects are destroyed (`closed` then sends blocks to
/// operator delete).
struct FreeList {
  void* head = nullptr;
  size_t count = 0;
  size_t block = 0;  ///< the block size this list holds (the first one asked for)
  bool closed = false;
};

inline FreeList& free_list() {
  thread_local FreeList list;
  return list;
}

/// Empties the thread's list at thread exit.
struct Reaper {
  ~Reaper() {
    FreeList& l = free_list();
    while (l.head) {
      void* next = *static_cast<void**>(l.head);
      ::operator delete(l.head);
      l.head = next;
    }
    l.count = 0;
    l.closed = true;
  }
};

inline constexpr size_t kKeep = 256;

inline void* take(size_t bytes) {
  FreeList& l = free_list();
  if (l.head && l.block == bytes) {
    void* p = l.head;
    l.head = *static_cast<void**>(p);
    --l.count;
    return p;
  }
  return ::operator new(bytes);
}

inline void give(void* p, size_t bytes) {
  FreeList& l = free_list();
  if (l.closed || l.count >= kKeep || (l.block != 0 && l.block != bytes) || bytes < sizeof(void*)) {
    ::operator delete(p);
    return;
  }
  if (!l.head) {  // the list holds blocks from here on: its thread empties it at exit
    thread_local Reaper reaper;
    (void)reaper;
  }
  l.block = bytes;
  *static_cast<void**>(p) = l.head;
  l.head = p;
  ++l.count;
}

}  // namespace node_alloc_detail

/// std::allocate_shared's allocator for nodes (the control block and the node in one block).
template <class T>
struct NodeAllocator {
  using value_type = T;
  NodeAllocator() = default;
  template <class U>
  NodeAllocator(const NodeAllocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    return static_cast<T*>(node_alloc_detail::take(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) { node_alloc_detail::give(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const NodeAllocator<U>&) const {
    return true;
  }
};

}  // namespace lowbit::fusion
