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
//   gemm/...                            the GEMM reference (common/gemm_reference.hpp)
// Each family varies T only (RangeMultiplier(2), Complexity() fitted on SetComplexityN(T)).
// Counters: tokens/s, GFLOP/s (FLOP model in common/flops.hpp), peak resident bytes.
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
  if (o.gemm) reformer_bench::register_gemm_reference();
}

}  // namespace

int main(int argc, char** argv) { return reformer_bench::run_main(argc, argv, register_all); }
