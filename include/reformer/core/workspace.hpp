#pragma once
// Work buffers that outlive a call: a cache of large blocks, and scratch matrices drawn from it.
//
// Every forward and backward call needs temporaries of D x T and larger. Allocated with the
// ordinary allocator, glibc serves them with fresh mmap'd pages (or trims its heap after the
// call), so each training step pays page faults and the kernel's zeroing of the pages it frees
// and asks for again moments later. A Workspace keeps freed blocks and hands them out again: in
// a steady state (same shapes every step) it maps no new memory at all.
//
//   Workspace ws;                               // usually owned by the model (ReformerLM)
//   ctx.workspace = &ws;                        // the layers draw their buffers from it
//   Scratch<S> q(ctx.workspace, dh, t);         // q.map(): dh x t, uninitialised
//   q.reset();                                  // back to the cache before the end of scope
//
// Without a workspace (ctx.workspace == nullptr) Scratch allocates from the heap, as a Matrix
// would. Blocks of at least kMinCachedBytes come from the cache; smaller ones from the heap
// (glibc reuses those from its arenas without faults). Large blocks are mapped with 2 MiB
// alignment and madvise(MADV_HUGEPAGE) where the system has it.
//
// Memory policy. Blocks are cached by size class (4 KiB pages below 2 MiB, whole 2 MiB pages
// above) and a request is served only from its own class. A cache that kept every size ever
// released would raise the peak when the shapes change (a longer sequence, an evaluation batch):
// the blocks of the old sizes would sit next to the new ones. So the owner marks the end of each
// complete pass with end_step(); the largest footprint (in_use + cached) seen at any completed
// step becomes the limit, and a request that misses the cache first gives cached blocks of
// other sizes back to the system (largest first) until the new block fits under the limit. In a
// steady state every request hits the cache and nothing is evicted; after a change of shapes the
// footprint stays at the old peak unless the blocks in use alone need more. trim() empties the
// cache at any time.
//
// Thread safety: acquire() and release() lock a mutex, so parallel loops may draw scratch.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace reformer {

/// A cache of large, aligned memory blocks (see the file comment).
class Workspace {
 public:
  /// Blocks below this size come from the heap, never from the cache.
  static constexpr std::size_t kMinCachedBytes = std::size_t{64} << 10;
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;

  struct Stats {
    std::size_t in_use_bytes = 0;  ///< handed out and not yet released
    std::size_t cached_bytes = 0;  ///< released, kept for reuse
    std::size_t peak_bytes = 0;    ///< maximum of in_use + cached
    std::size_t mappings = 0;      ///< blocks obtained from the system so far
    std::size_t evictions = 0;     ///< cached blocks given back to stay under limit_bytes
    std::size_t limit_bytes = 0;   ///< largest in_use + cached of a completed step (0: none yet)
  };

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&&) = delete;
  Workspace& operator=(Workspace&&) = delete;
  ~Workspace() { trim(); }

  /// The size a request of `bytes` is served with (the cache's size classes: 4 KiB pages below
  /// 2 MiB, whole 2 MiB pages above).
  static std::size_t block_size(std::size_t bytes) {
    const std::size_t unit = bytes >= kHugePage ? kHugePage : std::size_t{4096};
    return (bytes + unit - 1) / unit * unit;
  }

  /// A block of at least `bytes` bytes (64-byte aligned; 2 MiB aligned when that large). Reuses
  /// a cached block of the same size class when there is one.
  void* acquire(std::size_t bytes) {
    const std::size_t size = block_size(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        stats_.cached_bytes -= size;
        stats_.in_use_bytes += size;
        return p;
      }
      evict_for(size);
      stats_.in_use_bytes += size;
      stats_.mappings += 1;
      note_peak();
      step_peak_ = std::max(step_peak_, stats_.in_use_bytes + stats_.cached_bytes);
    }
    void* p = map_block(size);
    if (p == nullptr) {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.in_use_bytes -= size;
      stats_.mappings -= 1;
      throw std::bad_alloc();
    }
    return p;
  }

  /// Returns a block from acquire(bytes) to the cache.
  void release(void* p, std::size_t bytes) noexcept {
    if (p == nullptr) return;
    const std::size_t size = block_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(size, p);
    stats_.in_use_bytes -= size;
    stats_.cached_bytes += size;
  }

  /// Marks the end of a complete pass (a training step): the largest footprint seen since the
  /// previous mark raises the limit the cache keeps under (see the file comment).
  void end_step() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.limit_bytes = std::max(stats_.limit_bytes, step_peak_);
    step_peak_ = stats_.in_use_bytes + stats_.cached_bytes;
  }

  /// Gives every cached block back to the system (blocks in use stay valid).
  void trim() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [size, p] : free_) unmap_block(p, size);
    free_.clear();
    stats_.cached_bytes = 0;
    step_peak_ = stats_.in_use_bytes;
  }

  Stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  void note_peak() {
    const std::size_t total = stats_.in_use_bytes + stats_.cached_bytes;
    if (total > stats_.peak_bytes) stats_.peak_bytes = total;
  }

  // A miss of `size` bytes: unmaps cached blocks, largest first, while in_use + cached + size
  // would exceed the limit. Called with the mutex held.
  void evict_for(std::size_t size) noexcept {
    if (stats_.limit_bytes == 0) return;
    while (!free_.empty() &&
           stats_.in_use_bytes + stats_.cached_bytes + size > stats_.limit_bytes) {
      auto largest = std::prev(free_.end());
      unmap_block(largest->second, largest->first);
      stats_.cached_bytes -= largest->first;
      stats_.evictions += 1;
      free_.erase(largest);
    }
  }

  static void* map_block(std::size_t size) {
#if defined(__linux__)
    // Over-map by one huge page and cut the ends so the block starts on a 2 MiB boundary.
    const std::size_t align = size >= kHugePage ? kHugePage : std::size_t{4096};
    const std::size_t span = size + (align > 4096 ? align : 0);
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t start = (base + align - 1) / align * align;
    if (start > base) ::munmap(raw, start - base);
    const std::uintptr_t end = start + size;
    const std::uintptr_t span_end = base + span;
    if (span_end > end) ::munmap(reinterpret_cast<void*>(end), span_end - end);
#if defined(MADV_HUGEPAGE)
    if (size >= kHugePage) ::madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(start);
#else
    return std::aligned_alloc(64, size);
#endif
  }

  static void unmap_block(void* p, std::size_t size) noexcept {
#if defined(__linux__)
    ::munmap(p, size);
#else
    (void)size;
    std::free(p);
#endif
  }

  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;
  Stats stats_;
  std::size_t step_peak_ = 0;  // largest in_use + cached since the last end_step()
};

/// Raw scratch memory: `bytes` bytes, 64-byte aligned, uninitialised, from a workspace's cache
/// (blocks of at least Workspace::kMinCachedBytes) or from the heap. Movable, not copyable;
/// returns its memory on release() or destruction. The typed buffers below are built on it.
class ScratchBlock {
 public:
  ScratchBlock() = default;
  ScratchBlock(Workspace* ws, std::size_t bytes) { allocate(ws, bytes); }
  ScratchBlock(const ScratchBlock&) = delete;
  ScratchBlock& operator=(const ScratchBlock&) = delete;
  ScratchBlock(ScratchBlock&& other) noexcept
      : ws_(std::exchange(other.ws_, nullptr)),
        data_(std::exchange(other.data_, nullptr)),
        bytes_(std::exchange(other.bytes_, 0)) {}
  ScratchBlock& operator=(ScratchBlock&& other) noexcept {
    if (this != &other) {
      release();
      ws_ = std::exchange(other.ws_, nullptr);
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ~ScratchBlock() { release(); }

  /// Holds `bytes` bytes from `ws` afterwards; keeps the current memory (and contents) when it
  /// has that size and source already.
  void resize(Workspace* ws, std::size_t bytes) {
    if (ws == ws_ && bytes == bytes_) return;
    release();
    allocate(ws, bytes);
  }

  /// Returns the memory (to the workspace's cache or the heap).
  void release() noexcept {
    if (data_ != nullptr) {
      if (ws_ != nullptr && bytes_ >= Workspace::kMinCachedBytes) {
        ws_->release(data_, bytes_);
      } else {
        std::free(data_);
      }
    }
    data_ = nullptr;
    bytes_ = 0;
    ws_ = nullptr;
  }

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void allocate(Workspace* ws, std::size_t bytes) {
    ws_ = ws;
    bytes_ = bytes;
    if (bytes == 0) {
      data_ = nullptr;
    } else if (ws != nullptr && bytes >= Workspace::kMinCachedBytes) {
      data_ = ws->acquire(bytes);
    } else {
      data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      if (data_ == nullptr) {
        bytes_ = 0;
        throw std::bad_alloc();
      }
    }
  }

  Workspace* ws_ = nullptr;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

namespace detail {
inline std::size_t scratch_bytes(Index count, std::size_t element_size) {
  REFORMER_ASSERT(count >= 0);
  return static_cast<std::size_t>(count) * element_size;
}
}  // namespace detail

/// A rows x cols column-major scratch matrix, uninitialised, drawn from a workspace (or from the
/// heap when `ws` is null). Movable, not copyable; returns its memory on reset() or destruction.
/// map() is an ordinary Eigen::Map, usable wherever a MatrixRef<S> is.
template <class S>
class Scratch {
 public:
  using MapType = Eigen::Map<Matrix<S>, Eigen::Aligned64>;

  Scratch() = default;
  Scratch(Workspace* ws, Index rows, Index cols) { resize(ws, rows, cols); }
  Scratch(Scratch&& other) noexcept
      : block_(std::move(other.block_)), map_(data(), other.rows(), other.cols()) {
    other.remap(0, 0);
  }
  Scratch& operator=(Scratch&& other) noexcept {
    if (this != &other) {
      block_ = std::move(other.block_);
      remap(other.rows(), other.cols());
      other.remap(0, 0);
    }
    return *this;
  }

  /// Re-shapes to rows x cols (contents are lost unless the byte size is unchanged).
  void resize(Workspace* ws, Index rows, Index cols) {
    REFORMER_ASSERT(rows >= 0 && cols >= 0);
    block_.resize(ws, detail::scratch_bytes(rows * cols, sizeof(S)));
    remap(rows, cols);
  }

  /// Returns the memory (to the workspace's cache or the heap); the matrix becomes 0 x 0.
  void reset() noexcept {
    block_.release();
    remap(0, 0);
  }

  MapType& map() { return map_; }
  const MapType& map() const { return map_; }
  Index rows() const { return map_.rows(); }
  Index cols() const { return map_.cols(); }

 private:
  S* data() const { return static_cast<S*>(block_.data()); }
  void remap(Index rows, Index cols) { new (&map_) MapType(data(), rows, cols); }

  ScratchBlock block_;
  MapType map_{nullptr, 0, 0};
};

/// `size` elements of a trivially copyable T (indices, positions, bucket ids), uninitialised,
/// drawn from a workspace (or the heap when `ws` is null). Movable, not copyable.
template <class T>
class ScratchArray {
  static_assert(std::is_trivially_copyable_v<T>, "ScratchArray holds trivially copyable values");

 public:
  ScratchArray() = default;
  ScratchArray(Workspace* ws, Index size) { resize(ws, size); }
  ScratchArray(ScratchArray&& other) noexcept
      : block_(std::move(other.block_)), size_(std::exchange(other.size_, 0)) {}
  ScratchArray& operator=(ScratchArray&& other) noexcept {
    if (this != &other) {
      block_ = std::move(other.block_);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  /// Holds `size` elements afterwards (contents are lost unless the size is unchanged).
  void resize(Workspace* ws, Index size) {
    block_.resize(ws, detail::scratch_bytes(size, sizeof(T)));
    size_ = size;
  }
  void reset() noexcept {
    block_.release();
    size_ = 0;
  }

  T* data() { return static_cast<T*>(block_.data()); }
  const T* data() const { return static_cast<const T*>(block_.data()); }
  Index size() const { return size_; }
  T* begin() { return data(); }
  T* end() { return data() + size_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size_; }
  T& operator[](Index i) { return data()[i]; }
  const T& operator[](Index i) const { return data()[i]; }

 private:
  ScratchBlock block_;
  Index size_ = 0;
};

}  // namespace reformer
