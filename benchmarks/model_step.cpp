// Training steps of the Reformer language model (forward, loss, reversible backward): speed
// against sequence length, and memory against depth.
//
// Model (common/model.hpp): layers alternating (lsh, local), D = 256, H = 4, Dh = 64, F = 1024,
// R = 2, C = 64, V = 256, batch 1, float, dropout 0.
//
// Families (argument T or number of layers):
//   model_step/L6/reversible         T = 1024 .. 65536 (--tmin / --tmax), 6 layers
//   model_depth/reversible           layers = 1, 6, 12 at T = --depth_t (default 16384)
//   model_depth/stored               the same with the stored-activation backward (ordinary
//                                    backprop: every block's inputs kept from the forward pass)
//   attention/lsh_r2/fwd_bwd_alone   LSH (R = 2) attention sublayer alone at T = --depth_t, for
//                                    the "LSH alone" efficiency target (as attention_scaling)
//   gemm/...                         the GEMM reference
// Counters: tokens/s, GFLOP/s (model_step_flops: 4 x forward products + hashing), peak_bytes,
// peak_extra_bytes (the step's memory above the model's parameters), param_bytes, tape_bytes.
//
// Run:  model_step --benchmark_out=model.json --benchmark_out_format=json [--threads=N]
#include "common/counters.hpp"
#include "common/flops.hpp"
#include "common/gemm_reference.hpp"
#include "common/memory.hpp"
#include "common/model.hpp"
#include "common/options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/reformer.hpp>

#include <cstdlib>
#include <string>
#include <vector>

namespace {

using reformer::Index;
using reformer_bench::ModelSpec;
using reformer_bench::Options;

std::vector<std::string> alternating(Index layers) {
  std::vector<std::string> kinds;
  for (Index l = 0; l < layers; ++l) kinds.push_back(l % 2 == 0 ? "lsh" : "local");
  return kinds;
}

// The LSH (R = 2) attention sublayer alone, forward + backward (as attention_scaling).
void lsh_alone(benchmark::State& state, Index t) {
  reformer_bench::AttentionShape shape;
  shape.rounds = 2;
  shape.max_positions = t;
  reformer::AttentionSublayerConfig<reformer::LshAttentionConfig> cfg;
  cfg.hidden_size = shape.hidden;
  cfg.core.num_heads = shape.heads;
  cfg.core.head_size = shape.head_size;
  cfg.core.chunk_length = shape.chunk;
  cfg.core.num_hashes = shape.rounds;
  cfg.core.max_positions = t;
  reformer_bench::PeakMeter peak;
  reformer::Parameters<float> params;
  const reformer::AttentionSublayer<float, reformer::LshAttention<float>> layer(cfg, params, "");
  layer.init(params, reformer::Rng(1), 0.02);
  std::srand(7);
  const reformer::Matrix<float> x = reformer::Matrix<float>::Random(shape.hidden, t);
  const reformer::Matrix<float> dy = reformer::Matrix<float>::Random(shape.hidden, t);
  reformer::Matrix<float> y(shape.hidden, t), dx = reformer::Matrix<float>::Zero(shape.hidden, t);
  reformer::BucketTape tape;
  reformer::Context ctx;
  ctx.training = true;
  ctx.buckets = &tape;
  reformer::Context replay = ctx;
  replay.replay_buckets = true;
  const reformer_bench::WallClock clock = reformer_bench::time_iterations(state, [&] {
    layer.forward(params, x, y, ctx);
    layer.backward(params, x, dy, dx, y, replay);  // dx += J^T dy, y -= f(x)
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  });
  reformer_bench::report(state, clock, double(t), reformer_bench::attention_fwd_bwd_flops(shape, t),
                         peak);
}

void register_all(const Options& o) {
  const Index lo = o.lo(1024), hi = o.hi(Index{1} << 16, Index{1} << 17);
  benchmark::RegisterBenchmark("model_step/L6/reversible",
                               [o](benchmark::State& st) {
                                 ModelSpec m;
                                 m.layers = alternating(6);
                                 m.length = st.range(0);
                                 reformer_bench::model_step(st, m, o);
                                 st.SetComplexityN(st.range(0));
                               })
      ->RangeMultiplier(2)
      ->Range(lo, hi)
      ->Complexity()
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);

  const Index depth_t = o.get("depth_t");
  for (const auto mode :
       {reformer::BackpropMode::kReversible, reformer::BackpropMode::kStoredActivations}) {
    const std::string name =
        std::string("model_depth/") +
        (mode == reformer::BackpropMode::kReversible ? "reversible" : "stored");
    benchmark::RegisterBenchmark(name.c_str(),
                                 [o, mode, depth_t](benchmark::State& st) {
                                   ModelSpec m;
                                   m.layers = alternating(st.range(0));
                                   m.length = depth_t;
                                   m.mode = mode;
                                   reformer_bench::model_step(st, m, o);
                                   st.counters["T"] = double(depth_t);
                                 })
        ->Arg(1)
        ->Arg(6)
        ->Arg(12)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }

  benchmark::RegisterBenchmark("attention/lsh_r2/fwd_bwd_alone",
                               [depth_t](benchmark::State& st) { lsh_alone(st, depth_t); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);

  if (o.gemm) reformer_bench::register_gemm_reference();
}

}  // namespace

int main(int argc, char** argv) {
  return reformer_bench::run_main(argc, argv, register_all, {{"depth_t", 16384}},
                                  "  --depth_t=T    sequence length of the depth family "
                                  "(default 16384)");
}
