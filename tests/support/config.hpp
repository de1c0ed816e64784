#pragma once
// A small valid ReformerConfig for tests, changed through named tweaks that set the fields which
// belong together (heads and head size, hash buckets and rounds, the three dropouts, ...):
//
//   const ReformerConfig c = test::SmallConfig()
//                                .vocab(13)
//                                .layers({"lsh", "local"})
//                                .lsh_hashing({4}, /*rounds=*/2)
//                                .seed(7);
//
// Converting a SmallConfig to a ReformerConfig validates it (ConfigError on a bad combination).
// A test that checks one field's effect still sets that field where the reader sees it.
#include "reformer/core/types.hpp"
#include "reformer/model/config.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace reformer::test {

class SmallConfig {
 public:
  /// V = 16, D = 8, H = 2 heads of Dh = 4, F = 16 (relu), layers {local, lsh}, chunk lengths 4,
  /// automatic buckets with one hash round, axial positions 4 x 4 with dims 4 + 4 (T <= 16),
  /// no dropout, feed-forward and LM-head chunks of 8 tokens, seed 0; every other field keeps its
  /// default.
  SmallConfig() {
    vocab(16);
    heads(2, 4);
    feed_forward(16);
    layers({"local", "lsh"});
    chunk_lengths(4, 4);
    lsh_hashing({}, 1);
    axial_positions({4, 4}, {4, 4});
    dropout(0.0, 0.0, 0.0);
    c_.chunk_size_feed_forward = 8;
    c_.chunk_size_lm_head = 8;
  }

  SmallConfig& vocab(Index v) {
    c_.vocab_size = v;
    return *this;
  }
  /// H heads of Dh (0 = hidden_size / H).
  SmallConfig& heads(Index count, Index head_size) {
    c_.num_attention_heads = count;
    c_.attention_head_size = head_size;
    return *this;
  }
  SmallConfig& feed_forward(Index size, std::string activation = "relu") {
    c_.feed_forward_size = size;
    c_.hidden_act = std::move(activation);
    return *this;
  }
  SmallConfig& layers(std::vector<std::string> kinds) {
    c_.attn_layers = std::move(kinds);
    return *this;
  }
  /// Tokens per attention chunk of the LSH and of the local layers.
  SmallConfig& chunk_lengths(Index lsh, Index local) {
    c_.lsh_attn_chunk_length = lsh;
    c_.local_attn_chunk_length = local;
    return *this;
  }
  /// Bucket factors ({} = automatic) and hash rounds R.
  SmallConfig& lsh_hashing(std::vector<Index> buckets, Index rounds) {
    c_.num_buckets = std::move(buckets);
    c_.num_hashes = rounds;
    return *this;
  }
  /// Axial positions (s1, s2) with dims (d1, d2), d1 + d2 = D: sets hidden_size = d1 + d2 and
  /// max_position_embeddings = s1 * s2 too.
  SmallConfig& axial_positions(std::vector<Index> shape, std::vector<Index> dims) {
    c_.axial_pos_embds = true;
    c_.hidden_size = dims.at(0) + dims.at(1);
    c_.max_position_embeddings = shape.at(0) * shape.at(1);
    c_.axial_pos_shape = std::move(shape);
    c_.axial_pos_embds_dim = std::move(dims);
    return *this;
  }
  /// Learned absolute positions for T <= max_length.
  SmallConfig& learned_positions(Index max_length) {
    c_.axial_pos_embds = false;
    c_.max_position_embeddings = max_length;
    return *this;
  }
  /// Dropout after each sublayer and on the LSH / local attention probabilities.
  SmallConfig& dropout(double hidden, double lsh_probs, double local_probs) {
    c_.hidden_dropout_prob = hidden;
    c_.lsh_attention_probs_dropout_prob = lsh_probs;
    c_.local_attention_probs_dropout_prob = local_probs;
    return *this;
  }
  SmallConfig& seed(std::uint64_t s) {
    c_.seed = s;
    return *this;
  }
  /// The two-layer model the checkpoint tests save and resume: layers {lsh, local} with 4 buckets
  /// and 2 hash rounds, F = 12 (relu).
  SmallConfig& lsh_local_model() {
    feed_forward(12);
    layers({"lsh", "local"});
    return lsh_hashing({4}, /*rounds=*/2);
  }

  /// The validated config.
  ReformerConfig get() const {
    c_.validate();
    return c_;
  }
  operator ReformerConfig() const { return get(); }  // NOLINT(google-explicit-constructor)

 private:
  ReformerConfig c_;
};

/// `count` tokens (i * step + offset) mod vocab for i = 0, 1, ...: a fixed sequence that visits
/// every id when step and vocab are coprime.
inline std::vector<Token> cycling_tokens(int count, int step, int offset, int vocab) {
  std::vector<Token> t;
  for (int i = 0; i < count; ++i) t.push_back(static_cast<Token>((i * step + offset) % vocab));
  return t;
}

}  // namespace reformer::test
