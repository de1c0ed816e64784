#pragma once
// Per-thread buffers that outlive a call, and the means to size them on every thread at once.
//
// Small per-call vectors of the ops (a D-vector per layer norm, bucket counters) and the
// layers' per-thread scratch (a chunk's scores, an LSH block's copies) live as long as their
// thread and only grow, so a steady state (same shapes every step) allocates nothing. But a
// thread grows a buffer only when it first runs work that needs it, and the parallel loops hand
// out items dynamically: under load, a thread may take no item of some kind for a whole step and
// first grow (allocate, fault in) its buffer steps later. So every kind of per-thread buffer
// records the largest size any thread has asked for, and registers, at its first growth, a
// function that grows the calling thread's buffer to that size; grow_thread_buffers() runs those
// on every thread of the team. Called once at the start of every training step, it makes each
// thread's buffers independent of which items it happened to take: the first step sets the
// sizes, the second grows every thread to them, and later steps allocate nothing.
#include "reformer/core/error.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <atomic>
#include <cstddef>
#include <mutex>
#include <type_traits>
#include <vector>

namespace reformer {

namespace detail {

/// The grow-to-largest functions of every kind of per-thread buffer registered so far.
class ThreadBufferRegistry {
 public:
  static ThreadBufferRegistry& instance() {
    static ThreadBufferRegistry registry;
    return registry;
  }
  /// Registers `grow` (idempotent per function); returns true so it can initialise a static.
  bool add(void (*grow)()) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto* g : growers_)
      if (g == grow) return true;
    growers_.push_back(grow);
    return true;
  }
  /// Runs every registered function on the calling thread (without allocating: it runs in
  /// steady-state steps).
  void grow_all() {
    for (std::size_t i = 0;; ++i) {
      void (*grow)() = nullptr;
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        if (i >= growers_.size()) return;
        grow = growers_[i];
      }
      grow();
    }
  }

 private:
  std::mutex mutex_;
  std::vector<void (*)()> growers_;
};

/// a = max(a, v).
inline void atomic_max(std::atomic<Index>& a, Index v) {
  Index current = a.load(std::memory_order_relaxed);
  while (current < v && !a.compare_exchange_weak(current, v, std::memory_order_relaxed)) {
  }
}

/// The storage of thread_buffer<T, Tag>.
template <class T, class Tag>
struct ThreadBuffer {
  inline static std::atomic<Index> largest{0};  // the largest size any thread asked for

  static std::vector<T, Eigen::aligned_allocator<T>>& mine() {
    thread_local std::vector<T, Eigen::aligned_allocator<T>> buffer;
    return buffer;
  }
  /// Grows the calling thread's buffer to `size` (written: value-initialised).
  static void grow(Index size) {
    static const bool registered = ThreadBufferRegistry::instance().add(&grow_to_largest);
    (void)registered;
    atomic_max(largest, size);
    mine().resize(static_cast<std::size_t>(size));
  }
  static void grow_to_largest() {
    const Index size = largest.load(std::memory_order_relaxed);
    if (mine().size() < static_cast<std::size_t>(size))
      mine().resize(static_cast<std::size_t>(size));
  }
};

}  // namespace detail

/// The calling thread's buffer for `Tag`: at least `size` elements of T, aligned as Eigen's
/// own vectors (EIGEN_MAX_ALIGN_BYTES), contents unspecified. It lives as long as the thread and
/// only grows, so the per-call vectors of a steady state (a D-vector per layer norm, bucket
/// counters) allocate nothing after the first call (and, with grow_thread_buffers() once per
/// step, on no thread after the second step). A caller must not hold two of one Tag at once (a
/// distinct Tag per call site keeps nested users apart).
template <class T, class Tag>
T* thread_buffer(Index size) {
  static_assert(std::is_trivially_copyable_v<T>, "thread_buffer holds trivially copyable values");
  REFORMER_ASSERT(size >= 0);
  auto& buffer = detail::ThreadBuffer<T, Tag>::mine();
  if (buffer.size() < static_cast<std::size_t>(size)) detail::ThreadBuffer<T, Tag>::grow(size);
  return buffer.data();
}

/// Registers a kind of per-thread buffer that is not a thread_buffer (a layer's thread_local
/// scratch object): `grow` must grow the calling thread's instance to the largest size any
/// thread has asked for. Returns true (to initialise a function-local static: register once).
inline bool register_thread_buffer(void (*grow)()) {
  return detail::ThreadBufferRegistry::instance().add(grow);
}

/// Grows every registered per-thread buffer of every thread of the team (parallel_for's
/// threads) to the largest size any thread has asked for so far. Outside parallel code only
/// (inside a parallel region it grows the calling thread's buffers alone).
inline void grow_thread_buffers() {
  on_every_thread([] { detail::ThreadBufferRegistry::instance().grow_all(); });
}

}  // namespace reformer
