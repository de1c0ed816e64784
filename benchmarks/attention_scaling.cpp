// Attention cost against sequence length: one attention sublayer (LayerNorm -> core -> W_o) on
// one sequence of T tokens, for dense, local and LSH attention (R = 1, 2, 4, 8 hash rounds),
// forward and forward+backward (the library's recomputing backward, buckets replayed).
//
// Fixed configuration: D = 256, H = 4, Dh = 64, C = 64 (local and LSH), one chunk of look-back,
// causal, no dropout, float. LSH uses the default bucket rule (Hugging Face's, with
// max_position_embeddings = T): NB = 2T/C buckets, factorised into two factors when large.
//
// Families (name = attention/<kind>/<pass>, argument T):
//   attention/dense/{fwd,fwd_bwd}       T = 512 .. 8192       (--long: .. 32768, memory allowing)
//   attention/local/{fwd,fwd_bwd}       T = 512 .. 65536      (--long: .. 2^20)
//   attention/lsh_r{1,2,4,8}/{fwd,fwd_bwd}  as local
//   attention/chunk_kernel/{fwd,fwd_bwd}  the chunk kernel alone (layers/chunk_attention.hpp), T =
//   4096 gemm/...                            the GEMM reference (common/gemm_reference.hpp)
// Each family above the kernel's varies T only (RangeMultiplier(2), Complexity() fitted on
// SetComplexityN(T)). Counters: tokens/s, GFLOP/s (FLOP model in common/flops.hpp), peak resident
// bytes.
//
// Run:  attention_scaling --benchmark_out=attention.json --benchmark_out_format=json
//       [--long] [--threads=N] [--tmin=T --tmax=T] [--benchmark_filter=lsh_r2]
#include "common/counters.hpp"
#include "common/flops.hpp"
#include "common/gemm_reference.hpp"
#include "common/memory.hpp"
#include "common/options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/reformer.hpp>

#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using reformer::Index;
using reformer_bench::AttentionKind;
using reformer_bench::AttentionShape;

constexpr Index kHidden = 256, kHeads = 4, kHeadSize = 64, kChunk = 64;

AttentionShape shape_of(AttentionKind kind, Index rounds, Index t) {
  AttentionShape s;
  s.kind = kind;
  s.hidden = kHidden;
  s.heads = kHeads;
  s.head_size = kHeadSize;
  s.chunk = kChunk;
  s.rounds = rounds;
  s.max_positions = t;
  return s;
}

template <class CoreConfig>
reformer::AttentionSublayerConfig<CoreConfig> sublayer_config(const CoreConfig& core) {
  reformer::AttentionSublayerConfig<CoreConfig> c;
  c.core = core;
  c.hidden_size = kHidden;
  return c;
}

/// The configuration of core `Core` for shape `s`: heads and causal masking for every core, the
/// chunk length for local and LSH attention, the rounds and the bucket rule's length for LSH.
template <class Core>
typename Core::Config core_config(const AttentionShape& s) {
  typename Core::Config c;
  c.num_heads = s.heads;
  c.head_size = s.head_size;
  c.causal = true;
  if constexpr (!std::is_same_v<Core, reformer::FullAttention<float>>) c.chunk_length = s.chunk;
  if constexpr (std::is_same_v<Core, reformer::LshAttention<float>>) {
    c.num_hashes = s.rounds;
    c.max_positions = s.max_positions;
  }
  return c;
}

/// Rough memory need of one benchmark instance, to skip points that cannot fit. Per token, in
/// floats: the benchmark's x, y (+ dy, dx), the sublayer's LayerNorm output, core output and
/// projections with their gradients in backward (about 9 D-sized columns), and per LSH slot the
/// sorted q, k, v, o (+ dq and the window parts of dk, dv) of the head being processed.
double estimated_bytes(const AttentionShape& s, Index t, bool backward) {
  const double td = double(t), d = double(s.hidden), f = sizeof(float);
  double bytes = td * d * f * (backward ? 4.0 + 9.0 : 2.0 + 4.0);
  if (s.kind == AttentionKind::kLsh) {
    const double slot_floats = double(s.head_size) * (backward ? 9.0 : 4.0) + 6.0;
    bytes += double(s.rounds) * td * slot_floats * f;
  }  // dense attention works in query panels: no T x T buffer (layers/full_attention.hpp)
  return bytes;
}

template <class Core>
void attention(benchmark::State& state, AttentionKind kind, Index rounds, bool backward) {
  const Index t = state.range(0);
  const AttentionShape shape = shape_of(kind, rounds, t);
  if (reformer_bench::skip_if_memory_short(state, estimated_bytes(shape, t, backward))) return;
  reformer_bench::PeakMeter peak;

  reformer::Parameters<float> params;
  const reformer::AttentionSublayer<float, Core> layer(sublayer_config(core_config<Core>(shape)),
                                                       params, "");
  layer.init(params, reformer::Rng(1), 0.02);
  // The work buffers are kept from call to call; the caller's D x T matrices come from the same
  // workspace (huge pages), as a model's streams do (model/tape.hpp).
  reformer::Workspace workspace;
  std::srand(7);
  reformer::Scratch<float> x_buf(&workspace, kHidden, t), y_buf(&workspace, kHidden, t), dy_buf,
      dx_buf;
  x_buf.map() = reformer::Matrix<float>::Random(kHidden, t);
  if (backward) {
    dy_buf.resize(&workspace, kHidden, t);
    dx_buf.resize(&workspace, kHidden, t);
    dy_buf.map() = reformer::Matrix<float>::Random(kHidden, t);
    dx_buf.map().setZero();
  }
  const auto& x = x_buf.map();
  auto &y = y_buf.map(), &dy = dy_buf.map(), &dx = dx_buf.map();
  reformer::BucketTape tape;

  reformer::Context ctx;
  ctx.training = true;
  ctx.seed = 3;
  ctx.workspace = &workspace;
  reformer::Context replay = ctx;
  replay.buckets = &tape;
  replay.replay_buckets = true;
  ctx.buckets = &tape;  // forward records the LSH buckets

  const reformer_bench::WallClock clock = reformer_bench::time_iterations(state, [&] {
    layer.forward(params, x, y, ctx);
    if (backward) layer.backward(params, x, dy, dx, y, replay);  // dx += J^T dy, y -= f(x)
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  });
  const double flops = backward ? reformer_bench::attention_fwd_bwd_flops(shape, t)
                                : reformer_bench::attention_fwd_flops(shape, t);
  reformer_bench::report(state, clock, double(t), flops, peak);
  state.SetComplexityN(t);
}

// The chunk kernel on the work of the LSH R = 2 sublayer at T tokens, without the sublayer around
// it: T / 64 x 4 x 2 (chunk, head, round) calls of 64 queries against a 128-key window, causal
// with the self mask (the queries at positions 64..127, the keys at 0..127: a quarter of the
// scores masked), in the blocks gemm/chunks runs, each on operands of its own in cache. fwd:
// chunk_attention_forward (scores, softmax, o = v p^T); fwd_bwd: that, then
// chunk_attention_backward recomputing the probabilities. GFLOP/s counts the products (two
// forward, five backward, 2 x 128 x 64 x 64 flops each), so it reads against gemm/chunks.
void chunk_kernel(benchmark::State& state, Index t, bool backward) {
  using M = reformer::Matrix<float>;
  constexpr Index dh = 64, cq = 64, ck = 128, kBlocks = 16;
  const Index calls_per_block = t / cq * kHeads * 2 / kBlocks;
  reformer_bench::PeakMeter peak;
  struct Block {
    M q, k, v, o, dq, dk, dv;
    reformer::Vector<float> lse;
  };
  std::vector<Block> blocks;
  for (Index b = 0; b < kBlocks; ++b) {
    blocks.push_back({M::Random(dh, cq), M::Random(dh, ck), M::Random(dh, ck), M(dh, cq), M(dh, cq),
                      M::Zero(dh, ck), M::Zero(dh, ck), reformer::Vector<float>(cq)});
  }
  std::vector<Index> qpos(cq), kpos(ck);
  for (Index j = 0; j < ck; ++j) kpos[static_cast<std::size_t>(j)] = j;
  for (Index i = 0; i < cq; ++i) qpos[static_cast<std::size_t>(i)] = ck - cq + i;
  reformer::ChunkAttentionOptions opts;
  opts.causal = true;
  opts.self_mask = true;
  const double product_flops = 2.0 * double(ck * cq * dh);
  const double flops = product_flops * (backward ? 7.0 : 2.0) * double(calls_per_block * kBlocks);
  const reformer_bench::WallClock clock = reformer_bench::time_iterations(state, [&] {
    reformer::parallel_items(kBlocks, flops, [&](Index b) {
      Block& bl = blocks[static_cast<std::size_t>(b)];
      auto& ws = reformer::thread_chunk_workspace<float>(cq, ck, dh);
      for (Index i = 0; i < calls_per_block; ++i) {
        reformer::chunk_attention_forward<float>(bl.q, bl.k, bl.v, qpos.data(), kpos.data(), opts,
                                                 bl.o, bl.lse.data(), ws);
        if (backward) {
          reformer::chunk_attention_backward<float>(bl.q, bl.k, bl.v, qpos.data(), kpos.data(),
                                                    opts, bl.o, bl.lse.data(), bl.dq, bl.dk, bl.dv,
                                                    ws);
        }
        benchmark::DoNotOptimize(bl.o.data());
        benchmark::DoNotOptimize(bl.dq.data());
      }
    });
    benchmark::ClobberMemory();
  });
  reformer_bench::report(state, clock, double(t), flops, peak);
}

template <class Core>
void register_family(const std::string& kind_name, AttentionKind kind, Index rounds, Index lo,
                     Index hi) {
  for (const bool backward : {false, true}) {
    const std::string name = "attention/" + kind_name + (backward ? "/fwd_bwd" : "/fwd");
    benchmark::RegisterBenchmark(
        name.c_str(), [=](benchmark::State& st) { attention<Core>(st, kind, rounds, backward); })
        ->RangeMultiplier(2)
        ->Range(lo, hi)
        ->Complexity()
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

void register_all(const reformer_bench::Options& o) {
  const Index lo = o.lo(512);
  register_family<reformer::FullAttention<float>>("dense", AttentionKind::kFull, 1, lo,
                                                  o.hi(8192, 32768));
  const Index hi = o.hi(Index{1} << 16, Index{1} << 20);
  register_family<reformer::LocalAttention<float>>("local", AttentionKind::kLocal, 1, lo, hi);
  for (const Index r : {1, 2, 4, 8}) {
    register_family<reformer::LshAttention<float>>("lsh_r" + std::to_string(r), AttentionKind::kLsh,
                                                   r, lo, hi);
  }
  for (const bool backward : {false, true}) {
    const std::string name =
        std::string("attention/chunk_kernel/") + (backward ? "fwd_bwd" : "fwd");
    benchmark::RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& st) { chunk_kernel(st, 4096, backward); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  if (o.gemm) reformer_bench::register_gemm_reference();
}

}  // namespace

int main(int argc, char** argv) { return reformer_bench::run_main(argc, argv, register_all); }
