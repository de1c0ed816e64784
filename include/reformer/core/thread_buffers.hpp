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
#include <array>
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

}  // namespace detail

/// Registers a kind of per-thread buffer (ThreadLocalBuffer does it for its kinds): `grow` must
/// grow the calling thread's instance to the largest size any thread has asked for. Returns true
/// (to initialise a function-local static: register once).
inline bool register_thread_buffer(void (*grow)()) {
  return detail::ThreadBufferRegistry::instance().add(grow);
}

/// The calling thread's instance of a kind of per-thread buffer object, and the largest sizes
/// any thread has reserved one for. `Kind` describes the object:
///   using Buffer = ...;                      the per-thread object (thread_local, lives as long
///                                            as its thread)
///   static constexpr std::size_t kSizes;     how many sizes describe what it must hold
///   static void grow(Buffer&, const std::array<Index, kSizes>&)
///                                            grows it to hold those sizes (0: nothing asked);
///                                            it never shrinks, and grown memory is written
///                                            (its pages are in)
/// reserve(sizes) records the sizes (each kept as the largest any thread asked for), registers
/// the kind at its first call, and grows the calling thread's object; grow_thread_buffers() then
/// grows every thread's object to the largest sizes.
template <class Kind>
class ThreadLocalBuffer {
 public:
  using Buffer = typename Kind::Buffer;
  using Sizes = std::array<Index, Kind::kSizes>;

  /// The calling thread's object, grown to hold `sizes`.
  static Buffer& reserve(const Sizes& sizes) {
    static const bool registered = register_thread_buffer(&grow_to_largest);
    (void)registered;
    for (std::size_t i = 0; i < sizes.size(); ++i) detail::atomic_max(largest_[i], sizes[i]);
    Buffer& b = mine();
    Kind::grow(b, sizes);
    return b;
  }
  /// The calling thread's object as it is.
  static Buffer& mine() {
    thread_local Buffer b;
    return b;
  }
  /// The largest sizes any thread has reserved so far.
  static Sizes largest() {
    Sizes s{};
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = largest_[i].load(std::memory_order_relaxed);
    return s;
  }

 private:
  static void grow_to_largest() { Kind::grow(mine(), largest()); }

  inline static std::array<std::atomic<Index>, Kind::kSizes> largest_{};
};

namespace detail {

/// The kind of thread_buffer<T, Tag>: an aligned vector of at least the size asked for.
template <class T, class Tag>
struct ThreadVector {
  using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;
  static constexpr std::size_t kSizes = 1;
  static void grow(Buffer& b, const std::array<Index, 1>& size) {
    if (b.size() < static_cast<std::size_t>(size[0])) b.resize(static_cast<std::size_t>(size[0]));
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
  using Buffers = ThreadLocalBuffer<detail::ThreadVector<T, Tag>>;
  auto& buffer = Buffers::mine();
  if (buffer.size() < static_cast<std::size_t>(size)) return Buffers::reserve({size}).data();
  return buffer.data();
}

/// Grows every registered per-thread buffer of every thread of the team (parallel_for's
/// threads) to the largest size any thread has asked for so far. Outside parallel code only
/// (inside a parallel region it grows the calling thread's buffers alone).
inline void grow_thread_buffers() {
  on_every_thread([] { detail::ThreadBufferRegistry::instance().grow_all(); });
}

}  // namespace reformer
