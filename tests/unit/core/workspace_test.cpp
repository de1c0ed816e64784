// Workspace (a cache of large blocks) and Scratch (matrices drawn from it).
#include "reformer/core/workspace.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

namespace reformer {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

TEST(Workspace, BlockSizesArePagesBelowTwoMiBAndHugePagesAbove) {
  EXPECT_EQ(Workspace::block_size(1), 4096u);
  EXPECT_EQ(Workspace::block_size(4096), 4096u);
  EXPECT_EQ(Workspace::block_size(4097), 8192u);
  EXPECT_EQ(Workspace::block_size(2 * kMiB), 2 * kMiB);
  EXPECT_EQ(Workspace::block_size(2 * kMiB + 1), 4 * kMiB);
}

TEST(Workspace, ReusesAReleasedBlockOfTheSameSizeClass) {
  Workspace ws;
  void* a = ws.acquire(100000);
  ws.release(a, 100000);
  // 100000 and 100001 bytes round to the same 4 KiB class: the same block comes back.
  void* b = ws.acquire(100001);
  EXPECT_EQ(a, b);
  EXPECT_EQ(ws.stats().mappings, 1u);
  // Another class maps a new block.
  void* c = ws.acquire(300000);
  EXPECT_NE(c, b);
  EXPECT_EQ(ws.stats().mappings, 2u);
  ws.release(b, 100001);
  ws.release(c, 300000);
}

TEST(Workspace, StatsCountBytesInUseCachedAndThePeak) {
  Workspace ws;
  const std::size_t a_bytes = 3 * kMiB, b_bytes = 128 << 10;
  void* a = ws.acquire(a_bytes);
  void* b = ws.acquire(b_bytes);
  Workspace::Stats s = ws.stats();
  EXPECT_EQ(s.in_use_bytes, 4 * kMiB + (128u << 10));
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.peak_bytes, s.in_use_bytes);
  ws.release(a, a_bytes);
  s = ws.stats();
  EXPECT_EQ(s.in_use_bytes, 128u << 10);
  EXPECT_EQ(s.cached_bytes, 4 * kMiB);
  ws.trim();
  s = ws.stats();
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.peak_bytes, 4 * kMiB + (128u << 10));
  ws.release(b, b_bytes);
}

TEST(Workspace, LargeBlocksAreHugePageAligned) {
  Workspace ws;
  void* p = ws.acquire(5 * kMiB);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % Workspace::kHugePage, 0u);
  static_cast<char*>(p)[5 * kMiB - 1] = 1;  // the whole block is usable
  void* q = ws.acquire(100000);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(q) % 64, 0u);
  ws.release(p, 5 * kMiB);
  ws.release(q, 100000);
}

TEST(Workspace, AfterAStepMissesEvictOtherSizesToStayUnderThePeak) {
  Workspace ws;
  // Step 1: two 4 MiB blocks at once, then released: footprint 8 MiB.
  void* a = ws.acquire(4 * kMiB);
  void* b = ws.acquire(4 * kMiB);
  ws.release(a, 4 * kMiB);
  ws.release(b, 4 * kMiB);
  ws.end_step();
  EXPECT_EQ(ws.stats().limit_bytes, 8 * kMiB);
  // Step 2 with another shape: a 6 MiB block would make 14 MiB; one 4 MiB block goes.
  void* c = ws.acquire(6 * kMiB);
  Workspace::Stats s = ws.stats();
  EXPECT_EQ(s.evictions, 2u);  // both: 4 + 6 > 8 as well
  EXPECT_EQ(s.in_use_bytes + s.cached_bytes, 6 * kMiB);
  ws.release(c, 6 * kMiB);
  // The same shape again: a hit, nothing evicted.
  void* d = ws.acquire(6 * kMiB);
  EXPECT_EQ(d, c);
  EXPECT_EQ(ws.stats().evictions, 2u);
  ws.release(d, 6 * kMiB);
}

TEST(Workspace, SteadyStepsMapNothingNew) {
  Workspace ws;
  for (int step = 0; step < 4; ++step) {
    void* a = ws.acquire(3 * kMiB);
    void* b = ws.acquire(200000);
    ws.release(a, 3 * kMiB);
    void* c = ws.acquire(3 * kMiB);
    ws.release(b, 200000);
    ws.release(c, 3 * kMiB);
    ws.end_step();
  }
  EXPECT_EQ(ws.stats().mappings, 2u);
  EXPECT_EQ(ws.stats().evictions, 0u);
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
  EXPECT_LE(s.mappings, 12u);  // at most one block per class per thread
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
  EXPECT_EQ(ws.stats().cached_bytes, kMiB);
  Scratch<float> again(&ws, 1024, 256);  // the same bytes: the cached block
  EXPECT_EQ(ws.stats().mappings, 1u);
  again.reset();
  EXPECT_EQ(again.rows(), 0);
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
}

TEST(Scratch, SmallMatricesAndANullWorkspaceUseTheHeap) {
  Workspace ws;
  Scratch<double> small(&ws, 4, 4);
  EXPECT_EQ(ws.stats().mappings, 0u);
  small.map().setIdentity();
  EXPECT_EQ(small.map().trace(), 4.0);
  Scratch<double> heap(nullptr, 512, 512);  // 2 MiB, no workspace
  heap.map().setZero();
  EXPECT_EQ(heap.map().size(), 512 * 512);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(heap.map().data()) % 64, 0u);
  EXPECT_EQ(ws.stats().mappings, 0u);
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
