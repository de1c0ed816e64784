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
// would. Blocks of at least kMinCachedBytes come from the workspace; smaller ones from the heap.
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
#include "reformer/core/types.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace reformer {

/// Large, aligned memory blocks carved from reused regions (see the file comment).
class Workspace {
 public:
  /// Blocks below this size come from the heap, never from the workspace.
  static constexpr std::size_t kMinCachedBytes = std::size_t{64} << 10;
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;

  struct Stats {
    std::size_t in_use_bytes = 0;  ///< handed out and not yet released
    std::size_t cached_bytes = 0;  ///< free memory of the mapped regions, kept for reuse
    std::size_t peak_bytes = 0;    ///< maximum of in_use + cached
    std::size_t mappings = 0;      ///< regions obtained from the system so far
    std::size_t evictions = 0;     ///< wholly free regions given back (merged into a new one)
  };

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&&) = delete;
  Workspace& operator=(Workspace&&) = delete;
  ~Workspace() {
    for (const auto& [base, size] : regions_) unmap_region(base, size);
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
    auto fit = by_size_.lower_bound({size, 0});
    if (fit == by_size_.end()) {
      map_region_for(size);  // throws std::bad_alloc
      fit = by_size_.lower_bound({size, 0});
      REFORMER_ASSERT(fit != by_size_.end());
    }
    const auto [len, addr] = *fit;
    remove_free(addr, len);
    if (len > size) insert_free(addr + size, len - size);
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
    const auto region = region_of(addr);
    const std::uintptr_t lo = region->first, hi = region->first + region->second;
    auto next = by_addr_.lower_bound(addr);
    if (next != by_addr_.end() && next->first == addr + size && next->first < hi) {
      size += next->second;
      remove_free(next->first, next->second);
    }
    auto prev = by_addr_.lower_bound(addr);
    if (prev != by_addr_.begin()) {
      --prev;
      if (prev->first >= lo && prev->first + prev->second == addr) {
        addr = prev->first;
        size += prev->second;
        remove_free(prev->first, prev->second);
      }
    }
    insert_free(addr, size);
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
  void insert_free(std::uintptr_t addr, std::size_t len) {
    by_addr_.emplace(addr, len);
    by_size_.emplace(len, addr);
  }
  void remove_free(std::uintptr_t addr, std::size_t len) {
    by_addr_.erase(addr);
    by_size_.erase({len, addr});
  }

  std::map<std::uintptr_t, std::size_t>::iterator region_of(std::uintptr_t addr) {
    auto it = regions_.upper_bound(addr);
    REFORMER_ASSERT(it != regions_.begin());
    return std::prev(it);
  }

  // Unmaps every region that is one free extent; returns the bytes given back.
  std::size_t release_free_regions() noexcept {
    std::size_t freed = 0;
    for (auto it = regions_.begin(); it != regions_.end();) {
      const auto extent = by_addr_.find(it->first);
      if (extent != by_addr_.end() && extent->second == it->second) {
        remove_free(extent->first, extent->second);
        unmap_region(it->first, it->second);
        stats_.cached_bytes -= it->second;
        stats_.evictions += 1;
        freed += it->second;
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
    regions_.emplace(base, region);
    insert_free(base, region);
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

  mutable std::mutex mutex_;
  std::map<std::uintptr_t, std::size_t> regions_;             // base -> bytes
  std::map<std::uintptr_t, std::size_t> by_addr_;             // free extents: addr -> bytes
  std::set<std::pair<std::size_t, std::uintptr_t>> by_size_;  // the same, by (bytes, addr)
  Stats stats_;
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
