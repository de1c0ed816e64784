#pragma once
// The model configurations of the benchmarks and one timed training step.
//
// Model: V = 256 (bytes), D = 256, H = 4, Dh = 64, F = 1024 (relu), C = 64 for local and LSH
// attention (one chunk of look-back), causal, LSH buckets by the default rule with
// max_position_embeddings = T, axial positions (ceil(T / 256), 256) x (128, 128), dropout 0
// unless --dropout, feed-forward chunks of --ffn_chunk tokens (default 1024).
// A training step is forward_loss + backward (zero_grad first); no optimizer update.
//
// hf_model_config(T): the configuration of the side-by-side comparison with Hugging Face
// transformers (benchmarks/peers/hf_reformer.py times the same model there): six LSH layers,
// R = 2, buckets T / 64, gelu, axial positions (64, T / 64) x (64, 192), feed-forward chunks
// of T / 8 tokens, dropout 0.
#include "counters.hpp"
#include "flops.hpp"
#include "gemm_reference.hpp"
#include "memory.hpp"
#include "options.hpp"

#include <benchmark/benchmark.h>
#include <reformer/reformer.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace reformer_bench {

struct ModelSpec {
  std::vector<std::string> layers;  ///< attn_layers, e.g. {"lsh", "local"}
  Index length = 1024;              ///< T
  Index batch = 1;                  ///< B
  Index hashes = 2;                 ///< R
  reformer::BackpropMode mode = reformer::BackpropMode::kReversible;
};

inline constexpr Index kAxialColumns = 256;

inline reformer::ReformerConfig model_config(const ModelSpec& m, const Options& o) {
  reformer::ReformerConfig c;
  c.vocab_size = 256;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.attention_head_size = 64;
  c.feed_forward_size = 1024;
  c.hidden_act = "relu";
  c.attn_layers = m.layers;
  c.lsh_attn_chunk_length = 64;
  c.local_attn_chunk_length = 64;
  c.num_hashes = m.hashes;
  c.num_buckets = {};
  c.is_decoder = true;
  c.hidden_dropout_prob = o.dropout;
  c.lsh_attention_probs_dropout_prob = o.dropout;
  c.local_attention_probs_dropout_prob = o.dropout;
  c.axial_pos_embds = true;
  c.axial_pos_shape = {(m.length + kAxialColumns - 1) / kAxialColumns, kAxialColumns};
  c.axial_pos_embds_dim = {128, 128};
  c.max_position_embeddings = m.length;
  c.chunk_size_feed_forward = o.ffn_chunk;
  c.chunk_size_lm_head = 0;  // automatic
  c.seed = 11;
  return c;
}

/// The model of the Hugging Face comparison at sequence length `t` (a multiple of 64, >= 128:
/// the T / 64 buckets must be even): the same fields as benchmarks/peers/hf_reformer.py sets.
inline reformer::ReformerConfig hf_model_config(Index t) {
  REFORMER_REQUIRE(t >= 128 && t % 64 == 0, reformer::InvalidArgument, "hf_model_config", "T = ", t,
                   " must be a multiple of 64 and >= 128");
  reformer::ReformerConfig c;
  c.vocab_size = 256;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.attention_head_size = 64;
  c.feed_forward_size = 1024;
  c.hidden_act = "gelu";
  c.attn_layers = std::vector<std::string>(6, "lsh");
  c.lsh_attn_chunk_length = 64;
  c.num_buckets = {t / 64};
  c.num_hashes = 2;
  c.lsh_num_chunks_before = 1;
  c.lsh_num_chunks_after = 0;
  c.is_decoder = true;
  c.hidden_dropout_prob = 0.0;
  c.lsh_attention_probs_dropout_prob = 0.0;
  c.local_attention_probs_dropout_prob = 0.0;
  c.axial_pos_embds = true;
  c.axial_pos_shape = {64, t / 64};
  c.axial_pos_embds_dim = {64, 192};
  c.max_position_embeddings = t;
  c.chunk_size_feed_forward = t / 8;
  c.chunk_size_lm_head = 0;  // HF's default; here the library's automatic chunk
  c.seed = 11;
  return c;
}

/// `n` token ids in [0, vocab), a fixed pseudo-random sequence.
inline std::vector<reformer::Token> model_tokens(Index n, Index vocab) {
  std::vector<reformer::Token> tokens(static_cast<std::size_t>(n));
  const reformer::Rng rng(5);
  for (Index i = 0; i < n; ++i) {
    tokens[static_cast<std::size_t>(i)] = static_cast<reformer::Token>(
        rng.bits(static_cast<std::uint64_t>(i)) % static_cast<std::uint64_t>(vocab));
  }
  return tokens;
}

/// Parameter values + gradients held by a model.
template <class Model>
std::size_t parameter_bytes(const Model& model) {
  return 2 * static_cast<std::size_t>(model.parameters().size()) * sizeof(float);
}

/// Benchmarks training steps of a model of configuration `config` on `batch` sequences of
/// `length` tokens: counters of common/counters.hpp plus loss, param_bytes (values +
/// gradients, allocated before the peak is reset), tape_bytes, kept_feed_forward and
/// kept_attention (the sublayers whose activations fit `kept_budget`,
/// ReformerBackbone::set_kept_activation_budget).
inline void model_step(benchmark::State& state, const reformer::ReformerConfig& config,
                       Index length, Index batch, reformer::BackpropMode mode,
                       std::size_t kept_budget = 0, AdjacentGemm* gemm = nullptr) {
  reformer::ReformerLM<float> model(config, mode);
  model.set_kept_activation_budget(kept_budget);
  const std::vector<reformer::Token> tokens = model_tokens(length * batch, config.vocab_size);
  PeakMeter peak;  // the step's own memory: everything below, not the parameters
  reformer::Tape<float> tape;
  std::uint64_t step = 0;
  double loss = 0;
  const auto train_step = [&] {
    model.zero_grad();
    loss = model.forward_loss(tokens, batch, tape, step++);
    model.backward(tape);
    benchmark::DoNotOptimize(model.parameters().grads().data());
    benchmark::ClobberMemory();
  };
  const WallClock clock = gemm != nullptr
                              ? time_iterations(state, train_step, [gemm] { gemm->run(); })
                              : time_iterations(state, train_step);
  // The sublayers the last step kept.
  const auto count = [](const std::vector<bool>& kept) {
    return static_cast<Index>(std::count(kept.begin(), kept.end(), true));
  };
  const Index kept_feed_forward = count(tape.kept.feed_forward_kept);
  const Index kept_attention = count(tape.kept.attention_kept);
  report(state, clock, double(length * batch),
         model_step_flops(config, length, batch, kept_feed_forward, tape.kept.attention_kept),
         peak);
  state.counters["loss"] = loss;
  using C = benchmark::Counter;
  state.counters["param_bytes"] = C(double(parameter_bytes(model)), C::kDefaults, C::kIs1024);
  state.counters["tape_bytes"] = C(double(tape.bytes_held()), C::kDefaults, C::kIs1024);
  state.counters["kept_feed_forward"] = double(kept_feed_forward);
  state.counters["kept_attention"] = double(kept_attention);
  if (gemm != nullptr) {  // the step against the products run between its iterations
    state.counters["gemm_adjacent_GFLOP/s"] = gemm->best_gflops();
    state.counters["of_gemm_adjacent"] = state.counters["GFLOP/s"].value / gemm->best_gflops();
  }
}

/// Benchmarks training steps of the model `m` (model_config).
inline void model_step(benchmark::State& state, const ModelSpec& m, const Options& o) {
  model_step(state, model_config(m, o), m.length, m.batch, m.mode);
}

}  // namespace reformer_bench
