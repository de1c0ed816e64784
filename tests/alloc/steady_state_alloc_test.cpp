// A training step in steady state (same shapes every step) makes no large allocation.
//
// This executable replaces the global operator new / delete and interposes malloc, calloc,
// realloc, aligned_alloc, posix_memalign and memalign (Eigen allocates with std::malloc), all
// forwarding to glibc's __libc_* functions. While recording, every request of at least
// kLargeBytes (128 KiB: glibc's default mmap threshold, above which a block comes as fresh pages
// from the kernel) is noted with its size and call stack (into fixed storage: nothing allocates
// inside the allocator). A small but real ReformerLM (LSH + local layers, chunked feed-forward,
// one sequence of T = 4096, dropout on) runs two warm-up steps, then three recorded steps must
// make no large allocation; on failure the sizes and the call stacks are printed.
//
// Not built with sanitizers (they replace the allocator themselves): tests/CMakeLists.txt.
#include <reformer/reformer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include <execinfo.h>
#include <sys/resource.h>
#include <unistd.h>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {

constexpr std::size_t kLargeBytes = std::size_t{128} << 10;
constexpr int kMaxRecords = 256;
constexpr int kMaxFrames = 24;

struct Record {
  std::size_t bytes;
  int frames;
  void* stack[kMaxFrames];
};

std::atomic<bool> g_recording{false};
std::atomic<int> g_count{0};
Record g_records[kMaxRecords];
thread_local bool t_in_hook = false;  // backtrace() may allocate: do not recurse

void note(std::size_t bytes) {
  if (bytes < kLargeBytes || !g_recording.load(std::memory_order_relaxed) || t_in_hook) return;
  const int i = g_count.fetch_add(1, std::memory_order_relaxed);
  if (i >= kMaxRecords) return;
  t_in_hook = true;
  g_records[i].bytes = bytes;
  g_records[i].frames = ::backtrace(g_records[i].stack, kMaxFrames);
  t_in_hook = false;
}

void* checked(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* aligned(std::size_t align, std::size_t bytes) {
  note(bytes);
  return __libc_memalign(align, bytes);
}

}  // namespace

// ---- C allocation functions ---------------------------------------------------------------------
extern "C" {
void* malloc(std::size_t bytes) {
  note(bytes);
  return __libc_malloc(bytes);
}
void* calloc(std::size_t count, std::size_t size) {
  note(count * size);
  return __libc_calloc(count, size);
}
void* realloc(void* p, std::size_t bytes) {
  note(bytes);
  return __libc_realloc(p, bytes);
}
void free(void* p) { __libc_free(p); }
void* aligned_alloc(std::size_t align, std::size_t bytes) { return aligned(align, bytes); }
void* memalign(std::size_t align, std::size_t bytes) { return aligned(align, bytes); }
int posix_memalign(void** out, std::size_t align, std::size_t bytes) {
  void* p = aligned(align, bytes);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
}

// ---- C++ allocation functions (all forms) -------------------------------------------------------
void* operator new(std::size_t n) { return checked(malloc(n)); }
void* operator new[](std::size_t n) { return checked(malloc(n)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return malloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  return checked(aligned(static_cast<std::size_t>(a), n));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return checked(aligned(static_cast<std::size_t>(a), n));
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return aligned(static_cast<std::size_t>(a), n);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return aligned(static_cast<std::size_t>(a), n);
}
void operator delete(void* p) noexcept { free(p); }
void operator delete[](void* p) noexcept { free(p); }
void operator delete(void* p, std::size_t) noexcept { free(p); }
void operator delete[](void* p, std::size_t) noexcept { free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { free(p); }
void operator delete(void* p, std::align_val_t) noexcept { free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { free(p); }

namespace {

long minor_faults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

/// The recorded sizes, and every distinct call stack printed to stderr.
std::string report_records() {
  const int n = std::min(g_count.load(), kMaxRecords);
  std::ostringstream sizes;
  for (int i = 0; i < n; ++i) sizes << (i ? ", " : "") << g_records[i].bytes;
  if (g_count.load() > kMaxRecords) sizes << ", ... (" << g_count.load() << " in all)";
  for (int i = 0; i < n; ++i) {
    bool seen = false;
    for (int j = 0; j < i && !seen; ++j) {
      seen = g_records[j].frames == g_records[i].frames &&
             std::memcmp(g_records[j].stack, g_records[i].stack,
                         sizeof(void*) * static_cast<std::size_t>(g_records[i].frames)) == 0;
    }
    if (seen) continue;
    std::fprintf(stderr, "---- allocation of %zu bytes at:\n", g_records[i].bytes);
    ::backtrace_symbols_fd(g_records[i].stack, g_records[i].frames, STDERR_FILENO);
  }
  return sizes.str();
}

reformer::ReformerConfig steady_config() {
  reformer::ReformerConfig c;
  c.vocab_size = 256;
  c.hidden_size = 256;  // D x N = 256 x 4096 floats = 4 MiB
  c.num_attention_heads = 4;
  c.attention_head_size = 64;
  c.feed_forward_size = 512;
  c.attn_layers = {"lsh", "local"};
  c.lsh_attn_chunk_length = 64;
  c.local_attn_chunk_length = 64;
  c.num_hashes = 2;
  c.hidden_dropout_prob = 0.05;
  c.lsh_attention_probs_dropout_prob = 0.05;
  c.local_attention_probs_dropout_prob = 0.05;
  c.axial_pos_shape = {64, 64};
  c.axial_pos_embds_dim = {128, 128};
  c.chunk_size_feed_forward = 128;
  c.chunk_size_lm_head = 128;
  return c;
}

TEST(SteadyState, TrainingStepsMakeNoLargeAllocation) {
  {
    void* warm[2];
    ::backtrace(warm, 2);  // loads the unwinder now, not inside the first recorded allocation
  }
  reformer::ReformerLM<float> model(steady_config());
  const reformer::Index batch = 1, length = 4096;
  std::vector<reformer::Token> tokens(static_cast<std::size_t>(batch * length));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<reformer::Token>((i * 7 + i / 5) % 256);
  }
  for (int step = 0; step < 2; ++step) {  // warm-up: the workspace and the tape fill up
    model.zero_grad();
    model.train_step(tokens, batch);
  }

  const std::size_t mappings_before = model.workspace().stats().mappings;
  const long faults_before = minor_faults();
  g_count.store(0);
  g_recording.store(true);
  for (int step = 0; step < 3; ++step) {
    model.zero_grad();
    model.train_step(tokens, batch);
  }
  g_recording.store(false);
  const long faults = minor_faults() - faults_before;
  EXPECT_EQ(model.workspace().stats().mappings, mappings_before)
      << "the workspace mapped new blocks in steady state";

  const int large = g_count.load();
  EXPECT_EQ(large, 0) << "allocations of at least " << kLargeBytes
                      << " bytes in steps 3-5 (sizes: " << report_records()
                      << "; call stacks on stderr)";
  std::printf("minor page faults in steps 3-5: %ld\n", faults);
  // D x N buffers outside the workspace, or Eigen's packing buffers on the heap, cost thousands
  // of faults per step. What remains (about 50-80 per step here) is glibc trimming and regrowing
  // the heaps of blocks below 128 KiB.
  EXPECT_LT(faults, 512) << "minor page faults in steps 3-5";
}

}  // namespace
