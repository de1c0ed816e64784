// Training steps of the Reformer language model (forward, loss, reversible backward): speed
// against sequence length, and memory against depth.
//
// Model (common/model.hpp): layers alternating (lsh, local), D = 256, H = 4, Dh = 64, F = 1024,
// R = 2, C = 64, V = 256, batch 1, float, dropout 0.
//
// Families (argument T or number of layers):
//   model_step/L6/reversible         T = 1024 .. 65536 (--tmin / --tmax), 6 layers
//   model_step/L6/encoder            the same model bidirectional (is_decoder = false, one
//                                    look-ahead chunk), as a masked LM (ReformerForMaskedLM):
//                                    labels at every 7th position, the last eighth padding
//   model_depth/reversible           layers = 1, 6, 12 at T = --depth_t (default 16384)
//   model_depth/stored               the same with the stored-activation backward (ordinary
//                                    backprop: every block's inputs kept from the forward pass)
//   attention/lsh_r2/fwd_bwd_alone   LSH (R = 2) attention sublayer alone at T = --depth_t, for
//                                    the "LSH alone" efficiency target (as attention_scaling)
//   model_step/hf_config             T = 1024 .. 65536 (--tmin / --tmax): the model of the
//                                    comparison with Hugging Face transformers
//                                    (hf_model_config in common/model.hpp: 6 LSH layers, gelu,
//                                    buckets T / 64, axial (64, T / 64), FF chunks T / 8)
//   model_step/hf_config/kept        the same with a kept-activation budget of --kept_mib MiB
//                                    (default 2048): the feed-forward and LSH attention
//                                    sublayers that fit keep their activations and skip their
//                                    recompute (kept_feed_forward, kept_attention)
//   model_step/hf_config/vs_gemm     T <= 16384: the default step with the GEMM reference's
//                                    proj, ffn_in and ffn_out products at T columns run between
//                                    its iterations (AdjacentGemm): gemm_adjacent_GFLOP/s (the
//                                    best shape) and of_gemm_adjacent (the step's GFLOP/s over
//                                    it). Its peak_bytes include the products' operands.
//   attention/hf_config              the same T: that model's LSH attention sublayer alone,
//                                    forward + backward
//   feed_forward/hf_config/fused     that model's feed-forward sublayer alone, forward + backward:
//   feed_forward/hf_config/unfused   the fused kernel (default) and the chunked reference
//   gemm/...                         the GEMM reference
// Counters: tokens/s, GFLOP/s (model_step_flops: 4 x forward products + hashing, less the kept
// sublayers' recomputes and the LSH backward's stored score products), cpus_busy, peak_bytes,
// peak_extra_bytes (the step's memory above the model's parameters), param_bytes, tape_bytes,
// kept_feed_forward, kept_attention; the hf_config families also tokens_per_second (= tokens/s, the
// name benchmarks/peers uses).
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

#include <algorithm>
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

// An LSH attention sublayer alone, forward + backward (as attention_scaling), at T = `t`.
void attention_alone(benchmark::State& state,
                     const reformer::AttentionSublayerConfig<reformer::LshAttentionConfig>& cfg,
                     const reformer_bench::AttentionShape& shape, Index t) {
  reformer_bench::PeakMeter peak;
  reformer::Parameters<float> params;
  const reformer::AttentionSublayer<float, reformer::LshAttention<float>> layer(cfg, params, "");
  layer.init(params, reformer::Rng(1), 0.02);
  std::srand(7);
  const reformer::Matrix<float> x = reformer::Matrix<float>::Random(shape.hidden, t);
  const reformer::Matrix<float> dy = reformer::Matrix<float>::Random(shape.hidden, t);
  reformer::Matrix<float> y(shape.hidden, t), dx = reformer::Matrix<float>::Zero(shape.hidden, t);
  reformer::BucketTape tape;
  reformer::Workspace workspace;
  reformer::Context ctx;
  ctx.training = true;
  ctx.buckets = &tape;
  ctx.workspace = &workspace;
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

// The LSH (R = 2) attention sublayer alone, forward + backward, in the default shape.
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
  attention_alone(state, cfg, shape, t);
}

// The feed-forward sublayer alone, forward + backward, in the hf_config shape (D = 256,
// F = 1024, gelu, chunks of T/8): the fused kernel (the default) or the chunked reference.
void feed_forward_alone(benchmark::State& state, Index t, bool fused) {
  reformer::FeedForwardConfig cfg =
      reformer::FeedForwardConfig::from(reformer_bench::hf_model_config(t));
  cfg.fused = fused;
  reformer_bench::PeakMeter peak;
  reformer::Parameters<float> params;
  const reformer::FeedForward<float> layer(cfg, params, "");
  layer.init(params, reformer::Rng(1), 0.02);
  std::srand(7);
  const Index d = cfg.hidden_size;
  const reformer::Matrix<float> x = reformer::Matrix<float>::Random(d, t);
  const reformer::Matrix<float> dy = reformer::Matrix<float>::Random(d, t);
  reformer::Matrix<float> y(d, t), dx = reformer::Matrix<float>::Zero(d, t);
  reformer::Workspace workspace;
  reformer::Context ctx;
  ctx.training = true;
  ctx.workspace = &workspace;
  const reformer_bench::WallClock clock = reformer_bench::time_iterations(state, [&] {
    layer.forward(params, x, y, ctx);
    layer.backward(params, x, dy, dx, y, ctx);  // dx += J^T dy, y -= f(x)
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  });
  // Forward: W1 and W2, 2 * 2 * D * F per token; forward + backward with its recomputation: 4x.
  const double flops = 4.0 * 4.0 * double(d) * double(cfg.feed_forward_size) * double(t);
  reformer_bench::report(state, clock, double(t), flops, peak);
}

// The hf_config families report tokens/s also under the peer's counter name.
void add_peer_counters(benchmark::State& state) {
  state.counters["tokens_per_second"] = state.counters["tokens/s"];
}

// A training step of the bidirectional masked LM of the same sizes as model_step/L6 at T = `t`:
// one look-ahead chunk in both attention kinds, the last eighth of the sequence padding (masked),
// a label at every 7th real position.
void encoder_step(benchmark::State& state, const Options& o, Index t) {
  ModelSpec m;
  m.layers = alternating(6);
  m.length = t;
  reformer::ReformerConfig config = reformer_bench::model_config(m, o);
  config.is_decoder = false;
  config.lsh_num_chunks_after = config.local_num_chunks_after = 1;
  reformer::ReformerForMaskedLM<float> model(config);
  const std::vector<reformer::Token> tokens = reformer_bench::model_tokens(t, config.vocab_size);
  const Index real = t - t / 8;
  const reformer::AttentionMask mask = reformer::AttentionMask::from_lengths({real}, t);
  std::vector<reformer::Token> labels(static_cast<std::size_t>(t), reformer::Token{-100});
  for (Index i = 0; i < real; i += 7) labels[static_cast<std::size_t>(i)] = tokens[i];
  reformer_bench::PeakMeter peak;
  reformer::Tape<float> tape;
  std::uint64_t step = 0;
  double loss = 0;
  const reformer_bench::WallClock clock = reformer_bench::time_iterations(state, [&] {
    model.zero_grad();
    loss = model.forward_loss(tokens, 1, mask, labels, tape, step++);
    model.backward(tape);
    benchmark::DoNotOptimize(model.parameters().grads().data());
    benchmark::ClobberMemory();
  });
  reformer_bench::report(state, clock, double(t), reformer_bench::model_step_flops(config, t, 1),
                         peak);
  state.counters["loss"] = loss;
}

// Registers the hf_config families at T = powers of two in [lo, hi] (none when empty).
void register_hf_config(const Options& o) {
  const Index lo = std::max<Index>(o.lo(1024), 128), hi = o.hi(Index{1} << 16, Index{1} << 16);
  if (lo > hi) return;
  const std::size_t kept_budget = static_cast<std::size_t>(o.get("kept_mib")) << 20;
  for (const bool keep : {false, true}) {
    const std::string name = std::string("model_step/hf_config") + (keep ? "/kept" : "");
    benchmark::RegisterBenchmark(name.c_str(),
                                 [keep, kept_budget](benchmark::State& st) {
                                   const Index t = st.range(0);
                                   reformer_bench::model_step(
                                       st, reformer_bench::hf_model_config(t), t, 1,
                                       reformer::BackpropMode::kReversible, keep ? kept_budget : 0);
                                   add_peer_counters(st);
                                 })
        ->RangeMultiplier(2)
        ->Range(lo, hi)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // The default step against the GEMM products run between its iterations (T <= 16384: the
  // products add about a tenth to each iteration's wall time, outside the timing).
  if (const Index vs_hi = std::min<Index>(hi, Index{1} << 14); lo <= vs_hi) {
    benchmark::RegisterBenchmark("model_step/hf_config/vs_gemm",
                                 [](benchmark::State& st) {
                                   const Index t = st.range(0);
                                   reformer_bench::AdjacentGemm gemm(t);
                                   reformer_bench::model_step(
                                       st, reformer_bench::hf_model_config(t), t, 1,
                                       reformer::BackpropMode::kReversible, 0, &gemm);
                                   add_peer_counters(st);
                                 })
        ->RangeMultiplier(2)
        ->Range(lo, vs_hi)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark(
      "attention/hf_config",
      [](benchmark::State& st) {
        const Index t = st.range(0);
        const reformer::ReformerConfig c = reformer_bench::hf_model_config(t);
        attention_alone(st,
                        reformer::AttentionSublayerConfig<reformer::LshAttentionConfig>::from(c),
                        reformer_bench::attention_shape(c, 0), t);
        add_peer_counters(st);
      })
      ->RangeMultiplier(2)
      ->Range(lo, hi)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (const bool fused : {true, false}) {
    const std::string name = std::string("feed_forward/hf_config/") + (fused ? "fused" : "unfused");
    benchmark::RegisterBenchmark(
        name.c_str(), [fused](benchmark::State& st) { feed_forward_alone(st, st.range(0), fused); })
        ->RangeMultiplier(2)
        ->Range(lo, hi)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
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

  benchmark::RegisterBenchmark("model_step/L6/encoder",
                               [o](benchmark::State& st) {
                                 encoder_step(st, o, st.range(0));
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

  register_hf_config(o);

  if (o.gemm) reformer_bench::register_gemm_reference();
}

}  // namespace

int main(int argc, char** argv) {
  return reformer_bench::run_main(
      argc, argv, register_all, {{"depth_t", 16384}, {"kept_mib", 2048}},
      "  --depth_t=T    sequence length of the depth family "
      "(default 16384)\n"
      "  --kept_mib=M   kept-activation budget of model_step/hf_config/kept "
      "in MiB (default 2048)");
}
