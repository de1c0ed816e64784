// A training step in steady state (same shapes every step) makes no large allocation, a few
// small ones, and no page fault.
//
// This executable replaces the global operator new / delete and interposes malloc, calloc,
// realloc, aligned_alloc, posix_memalign and memalign (Eigen allocates with std::malloc), all
// forwarding to glibc's __libc_* functions. While recording, every request is counted, and the
// first kMaxRecords are noted with their size and call stack (into fixed storage: nothing
// allocates inside the allocator). A small but real ReformerLM (LSH + local layers, chunked
// feed-forward, one sequence of T = 4096, dropout on; and an all-LSH GELU model over two
// sequences) runs two warm-up steps, then three recorded steps must
//   - make no allocation of at least kLargeBytes (128 KiB: glibc's default mmap threshold),
//   - make at most a few small allocations per step (what they are: above the tests at the end)
//     and take no minor page fault,
//   - map no new workspace region.
// Page faults in a steady state came from heap blocks of any size: a block freed at the top of
// glibc's heap lets it trim the heap (or a thread arena) and fault the pages in again on the
// next step; a per-thread buffer grown but written only later faults in that later step. The
// workspace serves every Scratch block, small ones too, per-call vectors live in the workspace
// or in per-thread buffers that keep their capacity, and those are written when they grow. On
// failure the sizes and the call stacks are printed.
//
// Not built with sanitizers (they replace the allocator themselves): tests/CMakeLists.txt.
#include <reformer/reformer.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
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
std::atomic<bool> g_stacks{false};  // backtrace() itself may fault: off in the measured steps
std::atomic<int> g_count{0};        // large allocations
std::atomic<long> g_all{0};         // allocations of any size
std::atomic<int> g_small{0};        // records of allocations below kLargeBytes
Record g_records[kMaxRecords];      // large ones
Record g_small_records[kMaxRecords];
thread_local bool t_in_hook = false;  // backtrace() may allocate: do not recurse

void note(std::size_t bytes) {
  if (!g_recording.load(std::memory_order_relaxed) || t_in_hook) return;
  g_all.fetch_add(1, std::memory_order_relaxed);
  const bool large = bytes >= kLargeBytes;
  const int i = (large ? g_count : g_small).fetch_add(1, std::memory_order_relaxed);
  if (i >= kMaxRecords) return;
  Record& r = (large ? g_records : g_small_records)[i];
  t_in_hook = true;
  r.bytes = bytes;
  r.frames = g_stacks.load(std::memory_order_relaxed) ? ::backtrace(r.stack, kMaxFrames) : 0;
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
std::string report_records(const Record* records, int count) {
  const int n = std::min(count, kMaxRecords);
  std::ostringstream sizes;
  for (int i = 0; i < n; ++i) sizes << (i ? ", " : "") << records[i].bytes;
  if (count > kMaxRecords) sizes << ", ... (" << count << " in all)";
  for (int i = 0; i < n; ++i) {
    bool seen = false;
    for (int j = 0; j < i && !seen; ++j) {
      seen = records[j].frames == records[i].frames &&
             std::memcmp(records[j].stack, records[i].stack,
                         sizeof(void*) * static_cast<std::size_t>(records[i].frames)) == 0;
    }
    if (seen) continue;
    std::fprintf(stderr, "---- allocation of %zu bytes at:\n", records[i].bytes);
    ::backtrace_symbols_fd(records[i].stack, records[i].frames, STDERR_FILENO);
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

/// All-LSH (the Hugging Face pretrained layout), GELU, two sequences of 1024.
reformer::ReformerConfig lsh_gelu_config() {
  reformer::ReformerConfig c = steady_config();
  c.attn_layers = {"lsh", "lsh"};
  c.hidden_act = "gelu";
  c.axial_pos_shape = {32, 32};
  return c;
}

// What a steady-state step may still cost: heap allocations per step, and minor page faults
// over the recorded steps (see the tests below for what they are).
struct Allowance {
  long allocations_per_step;
  long faults;
};

// Runs `step` twice (warm-up: the workspace, the tape and the per-thread buffers fill up), then
// three recorded steps that must stay within `allowed`; `workspace` is the one the steps use.
template <class Step>
void expect_steady_steps(Step&& train_step, const reformer::Workspace& workspace,
                         Allowance allowed) {
  {
    void* warm[2];
    ::backtrace(warm, 2);  // loads the unwinder now, not inside the first recorded allocation
  }
  for (int step = 0; step < 2; ++step) train_step();

  constexpr int kSteps = 3;
  const auto record_steps = [&](int steps, bool stacks) {
    g_count.store(0);
    g_small.store(0);
    g_all.store(0);
    g_stacks.store(stacks);
    g_recording.store(true);
    for (int step = 0; step < steps; ++step) train_step();
    g_recording.store(false);
  };
  // The record arrays are zero-initialised statics: touch their pages now, or the first note
  // on a new page would count as a fault of the step.
  std::memset(static_cast<void*>(g_records), 0, sizeof g_records);
  std::memset(static_cast<void*>(g_small_records), 0, sizeof g_small_records);
  const std::size_t mappings_before = workspace.stats().mappings;
  const long faults_before = minor_faults();
  record_steps(kSteps, false);
  const long faults = minor_faults() - faults_before;
  const long allocations = g_all.load();
  const int large = g_count.load();
  EXPECT_EQ(workspace.stats().mappings, mappings_before)
      << "the workspace mapped new blocks in steady state";
  std::printf("steps 3-5: %ld minor page faults, %ld heap allocations\n", faults, allocations);
  if (large == 0 && allocations <= kSteps * allowed.allocations_per_step &&
      faults <= allowed.faults) {
    return;
  }
  // One more step, with call stacks, for the report.
  record_steps(1, true);
  const std::string small_sizes = report_records(g_small_records, g_small.load());
  EXPECT_EQ(large, 0) << "allocations of at least " << kLargeBytes
                      << " bytes in steps 3-5 (in step 6: "
                      << report_records(g_records, g_count.load()) << "; call stacks on stderr)";
  EXPECT_LE(allocations, kSteps * allowed.allocations_per_step)
      << "heap allocations in steps 3-5 (step 6 made: " << small_sizes
      << "; call stacks on stderr)";
  EXPECT_LE(faults, allowed.faults)
      << "minor page faults in steps 3-5 (step 6 allocated: " << small_sizes
      << "; call stacks on stderr)";
}

// kept_budget: the model's kept-activation budget (bytes).
void expect_steady_state(const reformer::ReformerConfig& config, reformer::Index batch,
                         reformer::Index length, Allowance allowed, std::size_t kept_budget = 0) {
  reformer::ReformerLM<float> model(config);
  model.set_kept_activation_budget(kept_budget);
  std::vector<reformer::Token> tokens(static_cast<std::size_t>(batch * length));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<reformer::Token>((i * 7 + i / 5) % 256);
  }
  expect_steady_steps(
      [&] {
        model.zero_grad();
        model.train_step(tokens, batch);
      },
      model.workspace(), allowed);
}

// No page fault at all in steady state, and a handful of small heap allocations per step, all
// of them below glibc's per-thread cache sizes (the LSH core's std::vector of per-head buffer
// handles and its bucket layout's factor list, per LSH layer and call: 4 a step in the first
// model, 8 in the second). Nothing else allocates: every Scratch block comes from the
// workspace, and per-thread buffers keep their capacity and are written when they grow.
TEST(SteadyState, TrainingStepsMakeNoLargeAllocationAndNoPageFault) {
  expect_steady_state(steady_config(), 1, 4096, {4, 0});
}

TEST(SteadyState, AllLshGeluModelOverTwoSequences) {
  expect_steady_state(lsh_gelu_config(), 2, 1024, {8, 0});
}

// The same with every feed-forward keeping its activations: the kept matrices keep their memory
// from step to step, so the steady state is unchanged.
TEST(SteadyState, KeptActivationsKeepTheirMemory) {
  expect_steady_state(lsh_gelu_config(), 2, 1024, {8, 0}, SIZE_MAX);
}

// A stack of the user's own composition whose attention layers differ in head size: LSH with
// Dh = 64 then 32, local with 64 then 32. The cores' per-thread scratch keeps its memory
// whichever head size a block uses (a matrix sized for one head size must not be reallocated
// for the other), so the steady state is that of a single head size: the LSH cores' 4 small
// allocations per layer and step, no page fault.
TEST(SteadyState, StackWithMixedHeadSizes) {
  using namespace reformer;
  constexpr Index kHidden = 128, kTokens = 2048;
  Parameters<float> params;
  ReversibleStack<float> stack;
  FeedForwardConfig ff;
  ff.hidden_size = kHidden;
  ff.feed_forward_size = 256;
  ff.dropout = 0.05;
  int layer = 0;
  auto prefix = [&] { return "layers." + std::to_string(layer++) + "."; };
  for (const Index dh : {Index{64}, Index{32}}) {
    AttentionSublayer<float, LshAttention<float>>::Config lsh;
    lsh.hidden_size = kHidden;
    lsh.core.num_heads = 2;
    lsh.core.head_size = dh;
    lsh.core.num_hashes = 2;
    lsh.core.dropout = 0.05;
    const std::string p = prefix();
    stack.add(AttentionSublayer<float, LshAttention<float>>(lsh, params, p + "attention."),
              FeedForward<float>(ff, params, p + "feed_forward."));
  }
  for (const Index dh : {Index{64}, Index{32}}) {
    AttentionSublayer<float, LocalAttention<float>>::Config local;
    local.hidden_size = kHidden;
    local.core.num_heads = 2;
    local.core.head_size = dh;
    const std::string p = prefix();
    stack.add(AttentionSublayer<float, LocalAttention<float>>(local, params, p + "attention."),
              FeedForward<float>(ff, params, p + "feed_forward."));
  }
  stack.init(params, Rng(1), Rng(2), 0.02);

  Workspace workspace;
  const Matrix<float> input = Matrix<float>::Random(kHidden, kTokens);
  Matrix<float> x1(kHidden, kTokens), x2(kHidden, kTokens);
  Matrix<float> dy1(kHidden, kTokens), dy2(kHidden, kTokens);
  BucketRecord buckets;
  std::uint64_t step = 0;
  expect_steady_steps(
      [&] {
        grow_thread_buffers();  // as ReformerBackbone does at the start of a training step
        Context ctx;
        ctx.training = true;
        ctx.workspace = &workspace;
        ctx.step = step++;
        x1 = input;
        x2 = input;
        stack.forward(params, x1, x2, ctx, buckets);
        dy1 = x1 - input;
        dy2 = x2 - input;
        params.zero_grad();
        stack.backward(params, x1, x2, dy1, dy2, ctx, buckets);
      },
      workspace, {8, 0});
}

}  // namespace
