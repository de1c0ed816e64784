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
// would. With one, every block comes from the workspace, small ones too: a heap block of a few
// KiB freed at the top of glibc's heap lets it trim the heap and fault the pages in again on the
// next step, so a steady state that kept small scratch on the heap still paid page faults.
//
// Memory policy. The workspace maps regions (2 MiB aligned, madvise(MADV_HUGEPAGE)) and carves
// blocks out of them: a request takes the smallest free extent that holds it (best fit, lowest
// address among equals), a released block merges with its free neighbours in the same region.
// Any free memory serves any size, so the footprint (in_use + cached) follows the bytes in use
// at once, not the sum over the sizes a step ever asks for. A request that fits nowhere gives
// every wholly free region back to the system and maps one region as large as those together (or
// the request, if larger): the first step settles into a few large regions, and the footprint
// after a change of shapes stays at the old peak unless the blocks in use need more. With the
// same requests every step (a steady state), every request fits and nothing is mapped. trim()
// gives every wholly free region back at any time.
//
// Thread safety: acquire() and release() lock a mutex, so parallel loops may draw scratch.
#include "reformer/core/error.hpp"
#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/types.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace reformer {

/// Large, aligned memory blocks carved from reused regions (see the file comment).
class Workspace {
 public:
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;

  struct Stats {
    std::size_t in_use_bytes = 0;  ///< handed out and not yet released
    std::size_t cached_bytes = 0;  ///< free memory of the mapped regions, kept for reuse
    std::size_t peak_bytes = 0;    ///< maximum of in_use + cached
    std::size_t mappings = 0;      ///< regions obtained from the system so far
    std::size_t evictions = 0;     ///< wholly free regions given back (merged into a new one)
  };

  Workspace() {
    regions_.reserve(16);
    free_.reserve(256);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&&) = delete;
  Workspace& operator=(Workspace&&) = delete;
  ~Workspace() {
    for (const Extent& r : regions_) unmap_region(r.addr, r.len);
  }

  /// The bytes a request of `bytes` occupies (whole 4 KiB pages).
  static std::size_t block_size(std::size_t bytes) {
    constexpr std::size_t kPage = 4096;
    return (bytes + kPage - 1) / kPage * kPage;
  }

  /// A block of at least `bytes` bytes, 4 KiB aligned, from the free memory of the regions (or
  /// a new region, see the file comment).
  void* acquire(std::size_t bytes) {
    const std::size_t size = block_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t fit = best_fit(size);
    if (fit == free_.size()) {
      map_region_for(size);  // throws std::bad_alloc
      fit = best_fit(size);
      REFORMER_ASSERT(fit != free_.size());
    }
    Extent& extent = free_[fit];
    const std::uintptr_t addr = extent.addr;
    if (extent.len > size) {
      extent.addr += size;  // stays below the next extent: the order by address holds
      extent.len -= size;
    } else {
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(fit));
    }
    stats_.cached_bytes -= size;
    stats_.in_use_bytes += size;
    return reinterpret_cast<void*>(addr);
  }

  /// Returns a block from acquire(bytes); it merges with its free neighbours.
  void release(void* p, std::size_t bytes) noexcept {
    if (p == nullptr) return;
    std::size_t size = block_size(bytes);
    auto addr = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.in_use_bytes -= size;
    stats_.cached_bytes += size;
    const Extent region = region_of(addr);
    const std::uintptr_t lo = region.addr, hi = region.addr + region.len;
    auto next = std::lower_bound(free_.begin(), free_.end(), addr, by_address);
    const bool merge_next = next != free_.end() && next->addr == addr + size && next->addr < hi;
    const bool merge_prev = next != free_.begin() && std::prev(next)->addr >= lo &&
                            std::prev(next)->addr + std::prev(next)->len == addr;
    if (merge_prev && merge_next) {
      std::prev(next)->len += size + next->len;
      free_.erase(next);
    } else if (merge_prev) {
      std::prev(next)->len += size;
    } else if (merge_next) {
      next->addr = addr;
      next->len += size;
    } else {
      free_.insert(next, Extent{addr, size});  // reuses the capacity of earlier steps
    }
  }

  /// Gives every wholly free region back to the system (blocks in use stay valid).
  void trim() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    release_free_regions();
  }

  Stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  // A free extent, or a region ([addr, addr + len)).
  struct Extent {
    std::uintptr_t addr;
    std::size_t len;
  };
  static bool by_address(const Extent& e, std::uintptr_t addr) { return e.addr < addr; }

  // The index in free_ of the smallest extent of at least `size` bytes (the lowest address
  // among equals), or free_.size(). A linear scan: a workspace holds tens of free extents.
  std::size_t best_fit(std::size_t size) const {
    std::size_t best = free_.size();
    for (std::size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].len >= size && (best == free_.size() || free_[i].len < free_[best].len)) {
        best = i;
      }
    }
    return best;
  }

  Extent region_of(std::uintptr_t addr) const {
    auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                               [](std::uintptr_t a, const Extent& r) { return a < r.addr; });
    REFORMER_ASSERT(it != regions_.begin());
    return *std::prev(it);
  }

  // Unmaps every region that is one free extent; returns the bytes given back.
  std::size_t release_free_regions() noexcept {
    std::size_t freed = 0;
    for (auto it = regions_.begin(); it != regions_.end();) {
      const auto extent = std::lower_bound(free_.begin(), free_.end(), it->addr, by_address);
      if (extent != free_.end() && extent->addr == it->addr && extent->len == it->len) {
        free_.erase(extent);
        unmap_region(it->addr, it->len);
        stats_.cached_bytes -= it->len;
        stats_.evictions += 1;
        freed += it->len;
        it = regions_.erase(it);
      } else {
        ++it;
      }
    }
    return freed;
  }

  // A request of `size` bytes fits in no free extent: the wholly free regions go back to the
  // system and one region of max(size, their bytes) replaces them. Called with the mutex held.
  void map_region_for(std::size_t size) {
    const std::size_t freed = release_free_regions();
    const std::size_t region = (std::max(size, freed) + kHugePage - 1) / kHugePage * kHugePage;
    void* p = map_region(region);
    if (p == nullptr) throw std::bad_alloc();
    const auto base = reinterpret_cast<std::uintptr_t>(p);
    const Extent fresh{base, region};
    regions_.insert(std::lower_bound(regions_.begin(), regions_.end(), base, by_address), fresh);
    free_.insert(std::lower_bound(free_.begin(), free_.end(), base, by_address), fresh);
    stats_.cached_bytes += region;
    stats_.mappings += 1;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.in_use_bytes + stats_.cached_bytes);
  }

  static void* map_region(std::size_t size) {
#if defined(__linux__)
    // Over-map by one huge page and cut the ends so the region starts on a 2 MiB boundary.
    const std::size_t span = size + kHugePage;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t start = (base + kHugePage - 1) / kHugePage * kHugePage;
    if (start > base) ::munmap(raw, start - base);
    const std::uintptr_t end = start + size;
    if (base + span > end) ::munmap(reinterpret_cast<void*>(end), base + span - end);
#if defined(MADV_HUGEPAGE)
    ::madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(start);
#else
    return std::aligned_alloc(kHugePage, size);
#endif
  }

  static void unmap_region(std::uintptr_t base, std::size_t size) noexcept {
#if defined(__linux__)
    ::munmap(reinterpret_cast<void*>(base), size);
#else
    (void)size;
    std::free(reinterpret_cast<void*>(base));
#endif
  }

  // Flat arrays sorted by address: acquire() and release() allocate nothing once their
  // capacity covers the most extents a step has at once (reserved up front for the usual case).
  mutable std::mutex mutex_;
  std::vector<Extent> regions_;
  std::vector<Extent> free_;
  Stats stats_;
};

/// Raw scratch memory: `bytes` bytes, 64-byte aligned, uninitialised, from a workspace's cache
/// (when given one) or from the heap. Movable, not copyable;
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
      if (ws_ != nullptr) {
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
    } else if (ws != nullptr) {
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
