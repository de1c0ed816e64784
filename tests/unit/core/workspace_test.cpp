// Workspace (a cache of large blocks) and Scratch (matrices drawn from it).
#include "reformer/core/workspace.hpp"

#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/threading.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <thread>
#include <utility>
#include <vector>

namespace reformer {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

TEST(Workspace, BlockSizesAreWholePages) {
  EXPECT_EQ(Workspace::block_size(1), 4096u);
  EXPECT_EQ(Workspace::block_size(4096), 4096u);
  EXPECT_EQ(Workspace::block_size(4097), 8192u);
  EXPECT_EQ(Workspace::block_size(2 * kMiB + 1), 2 * kMiB + 4096);
}

TEST(Workspace, ReusesAReleasedBlock) {
  Workspace ws;
  void* a = ws.acquire(100000);
  ws.release(a, 100000);
  void* b = ws.acquire(100001);  // the same pages
  EXPECT_EQ(a, b);
  // Another size fits in the free rest of the same region.
  void* c = ws.acquire(300000);
  EXPECT_NE(c, b);
  EXPECT_EQ(ws.stats().mappings, 1u);
  ws.release(b, 100001);
  ws.release(c, 300000);
}

TEST(Workspace, StatsCountBytesInUseCachedAndThePeak) {
  Workspace ws;
  const std::size_t a_bytes = 3 * kMiB, b_bytes = 128 << 10;
  void* a = ws.acquire(a_bytes);  // maps a 4 MiB region
  void* b = ws.acquire(b_bytes);  // from its free rest
  Workspace::Stats s = ws.stats();
  EXPECT_EQ(s.in_use_bytes, 3 * kMiB + (128u << 10));
  EXPECT_EQ(s.in_use_bytes + s.cached_bytes, 4 * kMiB);
  EXPECT_EQ(s.peak_bytes, 4 * kMiB);
  EXPECT_EQ(s.mappings, 1u);
  ws.release(a, a_bytes);
  s = ws.stats();
  EXPECT_EQ(s.in_use_bytes, 128u << 10);
  EXPECT_EQ(s.cached_bytes, 4 * kMiB - (128u << 10));
  ws.trim();  // the region still holds b: nothing goes
  EXPECT_EQ(ws.stats().cached_bytes, 4 * kMiB - (128u << 10));
  ws.release(b, b_bytes);
  ws.trim();
  s = ws.stats();
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.peak_bytes, 4 * kMiB);
}

TEST(Workspace, RegionsAreHugePageAligned) {
  Workspace ws;
  void* p = ws.acquire(5 * kMiB);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % Workspace::kHugePage, 0u);
  static_cast<char*>(p)[5 * kMiB - 1] = 1;  // the whole block is usable
  void* q = ws.acquire(100000);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(q) % 4096, 0u);
  ws.release(p, 5 * kMiB);
  ws.release(q, 100000);
}

TEST(Workspace, FreeMemoryServesAnySize) {
  Workspace ws;
  // Two 4 MiB blocks at once, then released: they merge into one free extent of 8 MiB, which
  // holds a 6 MiB block and then two of 3 MiB without mapping anything.
  void* a = ws.acquire(4 * kMiB);
  void* b = ws.acquire(4 * kMiB);
  EXPECT_EQ(ws.stats().mappings, 2u);
  ws.release(a, 4 * kMiB);
  ws.release(b, 4 * kMiB);
  // Nothing fits 9 MiB: both wholly free regions go, one region of 9 MiB replaces them.
  void* c = ws.acquire(9 * kMiB);
  Workspace::Stats s = ws.stats();
  EXPECT_EQ(s.mappings, 3u);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.in_use_bytes + s.cached_bytes, 10 * kMiB);  // whole 2 MiB pages
  ws.release(c, 9 * kMiB);
  void* d = ws.acquire(6 * kMiB);
  void* e = ws.acquire(3 * kMiB);
  EXPECT_EQ(ws.stats().mappings, 3u);
  EXPECT_EQ(static_cast<char*>(e), static_cast<char*>(d) + 6 * kMiB);
  ws.release(d, 6 * kMiB);
  ws.release(e, 3 * kMiB);
  // After a smaller step the footprint stays: a 10 MiB block fits the merged region again.
  void* f = ws.acquire(10 * kMiB);
  EXPECT_EQ(ws.stats().mappings, 3u);
  ws.release(f, 10 * kMiB);
}

TEST(Workspace, TheFootprintFollowsTheBytesInUseNotTheSizes) {
  // A step asking for many different sizes, at most 8 MiB at once.
  Workspace ws;
  for (std::size_t mib = 1; mib <= 8; ++mib) {
    void* p = ws.acquire(mib * kMiB);
    ws.release(p, mib * kMiB);
  }
  EXPECT_LE(ws.stats().peak_bytes, 8 * kMiB);
}

TEST(Workspace, SteadyStepsMapNothingNew) {
  Workspace ws;
  std::size_t mappings_after_first = 0;
  for (int step = 0; step < 4; ++step) {
    void* a = ws.acquire(3 * kMiB);
    void* b = ws.acquire(200000);
    ws.release(a, 3 * kMiB);
    void* c = ws.acquire(5 * kMiB);
    ws.release(b, 200000);
    ws.release(c, 5 * kMiB);
    if (step == 0) mappings_after_first = ws.stats().mappings;
  }
  EXPECT_EQ(ws.stats().mappings, mappings_after_first);
}

TEST(Workspace, BestFitAndMergesMatchAPlainOracle) {
  // Random draws and returns inside one region against a plain model of the policy: the
  // smallest free extent that holds the request (the lowest address among equals), carved from
  // its start; a returned block merges with free neighbours.
  constexpr std::size_t kRegion = std::size_t{8} << 20;
  Workspace ws;
  const auto base = reinterpret_cast<std::uintptr_t>(ws.acquire(kRegion));
  ws.release(reinterpret_cast<void*>(base), kRegion);
  std::map<std::uintptr_t, std::size_t> oracle{{base, kRegion}};  // free extents
  std::vector<std::pair<void*, std::size_t>> held;
  std::uint64_t state = 12345;
  const auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  for (int op = 0; op < 4000; ++op) {
    if (held.empty() || (held.size() < 120 && next() % 3 != 0)) {
      const std::size_t bytes = 1 + next() % (32 << 10);  // up to 8 pages
      const std::size_t size = Workspace::block_size(bytes);
      auto fit = oracle.end();
      for (auto it = oracle.begin(); it != oracle.end(); ++it) {
        if (it->second >= size && (fit == oracle.end() || it->second < fit->second)) fit = it;
      }
      ASSERT_NE(fit, oracle.end());
      const std::uintptr_t expected = fit->first;
      const std::size_t len = fit->second;
      oracle.erase(fit);
      if (len > size) oracle.emplace(expected + size, len - size);
      void* p = ws.acquire(bytes);
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p), expected) << "draw " << op;
      held.emplace_back(p, bytes);
    } else {
      const std::size_t k = next() % held.size();
      auto addr = reinterpret_cast<std::uintptr_t>(held[k].first);
      std::size_t size = Workspace::block_size(held[k].second);
      ws.release(held[k].first, held[k].second);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
      auto after = oracle.lower_bound(addr);
      if (after != oracle.end() && after->first == addr + size) {
        size += after->second;
        after = oracle.erase(after);
      }
      if (after != oracle.begin() && std::prev(after)->first + std::prev(after)->second == addr) {
        addr = std::prev(after)->first;
        size += std::prev(after)->second;
        oracle.erase(std::prev(after));
      }
      oracle.emplace(addr, size);
    }
  }
  EXPECT_EQ(ws.stats().mappings, 1u);
  for (const auto& [p, bytes] : held) ws.release(p, bytes);
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
  ws.trim();  // one free extent again: the region goes back
  EXPECT_EQ(ws.stats().cached_bytes, 0u);
}

TEST(Workspace, ThreadsDrawAndReturnBlocksConcurrently) {
  Workspace ws;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&ws, t] {
      for (int i = 0; i < 200; ++i) {
        const std::size_t bytes =
            (std::size_t{64} << 10) * static_cast<std::size_t>(1 + (i + t) % 3);
        auto* p = static_cast<unsigned char*>(ws.acquire(bytes));
        p[0] = static_cast<unsigned char>(t);
        p[bytes - 1] = static_cast<unsigned char>(i);
        EXPECT_EQ(p[0], static_cast<unsigned char>(t));
        ws.release(p, bytes);
      }
    });
  }
  for (auto& th : threads) th.join();
  const Workspace::Stats s = ws.stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_LE(s.mappings, 4u);  // at most 12 blocks of 64-192 KiB at once
}

TEST(Scratch, DrawsLargeMatricesFromTheWorkspaceAndGivesThemBack) {
  Workspace ws;
  {
    Scratch<float> m(&ws, 256, 1024);  // 1 MiB
    EXPECT_EQ(m.rows(), 256);
    EXPECT_EQ(m.cols(), 1024);
    m.map().setConstant(2.0f);
    EXPECT_EQ(m.map().sum(), 2.0f * 256 * 1024);
    EXPECT_EQ(ws.stats().in_use_bytes, kMiB);
  }
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
  EXPECT_EQ(ws.stats().cached_bytes, 2 * kMiB);  // the whole region (2 MiB pages) is free
  Scratch<float> again(&ws, 1024, 256);          // the same bytes: the same block
  EXPECT_EQ(ws.stats().mappings, 1u);
  again.reset();
  EXPECT_EQ(again.rows(), 0);
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
}

TEST(Scratch, SmallMatricesComeFromTheWorkspaceAndANullWorkspaceUsesTheHeap) {
  // A small heap block freed every step let glibc trim and regrow its heap (page faults in a
  // steady state): with a workspace every block, however small, is one of its pages.
  Workspace ws;
  Scratch<double> small(&ws, 4, 4);
  EXPECT_EQ(ws.stats().mappings, 1u);
  EXPECT_EQ(ws.stats().in_use_bytes, 4096u);
  small.map().setIdentity();
  EXPECT_EQ(small.map().trace(), 4.0);
  ScratchArray<std::int64_t> counts(&ws, 3);
  EXPECT_EQ(ws.stats().in_use_bytes, 2 * 4096u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(counts.data()) % 4096, 0u);
  counts.reset();
  small.reset();
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
  Scratch<double> heap(nullptr, 512, 512);  // 2 MiB, no workspace
  heap.map().setZero();
  EXPECT_EQ(heap.map().size(), 512 * 512);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(heap.map().data()) % 64, 0u);
  EXPECT_EQ(ws.stats().mappings, 1u);
}

TEST(ThreadBuffer, GrowsKeepsItsMemoryAndIsAlignedForEigen) {
  struct Tag;
  float* a = thread_buffer<float, Tag>(100);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a) % EIGEN_MAX_ALIGN_BYTES, 0u);
  a[99] = 1.0f;
  EXPECT_EQ((thread_buffer<float, Tag>(50)), a);  // smaller: the same memory
  EXPECT_EQ((thread_buffer<float, Tag>(100)), a);
  float* b = thread_buffer<float, Tag>(1 << 20);  // larger: grows
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % EIGEN_MAX_ALIGN_BYTES, 0u);
  EXPECT_EQ((thread_buffer<float, Tag>(100)), b);
  struct Other;
  EXPECT_NE((thread_buffer<float, Other>(100)), b);  // another tag: another buffer
}

// grow_thread_buffers() sizes every thread's buffers to the largest any thread asked for: a
// buffer grown on the calling thread alone is then grown on the worker too, and a registered
// scratch of another kind as well; without the call the worker's stays empty.
struct GrowAllTag;
struct RegisteredScratch {
  inline static std::atomic<Index> largest{0};
  static std::vector<double>& mine() {
    thread_local std::vector<double> v;
    return v;
  }
  static void grow_to_largest() {
    const auto n = static_cast<std::size_t>(largest.load());
    if (mine().size() < n) mine().resize(n);
  }
};

TEST(ThreadBuffer, GrowThreadBuffersSizesEveryThread) {
  const int before = num_threads();
  set_num_threads(2);
  if (num_threads() < 2) GTEST_SKIP() << "built without OpenMP";
  std::vector<std::size_t> sizes(2), scratch(2);
  auto record = [&] {
    const auto i = static_cast<std::size_t>(thread_index());
    sizes[i] = ThreadLocalBuffer<detail::ThreadVector<float, GrowAllTag>>::mine().size();
    scratch[i] = RegisteredScratch::mine().size();
  };
  thread_buffer<float, GrowAllTag>(1000);  // on this thread only
  static const bool registered = register_thread_buffer(&RegisteredScratch::grow_to_largest);
  EXPECT_TRUE(registered);
  RegisteredScratch::largest = 300;
  RegisteredScratch::mine().resize(300);
  on_every_thread(record);
  EXPECT_EQ(sizes, (std::vector<std::size_t>{1000, 0}));  // the worker has not grown its own
  EXPECT_EQ(scratch, (std::vector<std::size_t>{300, 0}));
  grow_thread_buffers();
  on_every_thread(record);
  EXPECT_EQ(sizes, (std::vector<std::size_t>{1000, 1000}));
  EXPECT_EQ(scratch, (std::vector<std::size_t>{300, 300}));
  set_num_threads(before);
}

TEST(Scratch, MovesHandOverTheBlock) {
  Workspace ws;
  Scratch<float> a(&ws, 128, 512);  // 256 KiB
  float* data = a.map().data();
  Scratch<float> b(std::move(a));
  EXPECT_EQ(b.map().data(), data);
  EXPECT_EQ(a.rows(), 0);  // NOLINT(bugprone-use-after-move): a moved-from scratch is empty
  Scratch<float> c;
  c = std::move(b);
  EXPECT_EQ(c.map().data(), data);
  EXPECT_EQ(c.rows(), 128);
  EXPECT_EQ(ws.stats().in_use_bytes, 256u << 10);
  c = Scratch<float>();
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
}

TEST(Scratch, ResizeKeepsTheBlockWhenTheBytesAreTheSame) {
  Workspace ws;
  Scratch<float> m(&ws, 256, 256);
  float* data = m.map().data();
  m.resize(&ws, 512, 128);
  EXPECT_EQ(m.map().data(), data);
  EXPECT_EQ(m.rows(), 512);
  m.resize(&ws, 512, 512);
  EXPECT_EQ(m.cols(), 512);
  EXPECT_EQ(ws.stats().in_use_bytes, kMiB);
}

}  // namespace
}  // namespace reformer
