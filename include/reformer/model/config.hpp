#pragma once
// ReformerConfig: the hyper-parameters of a Reformer causal language model (docs/DESIGN.md 1).
//
// Field names follow Hugging Face's `ReformerConfig` so a config can be read from / written to
// the JSON of an HF checkpoint (io/config_json.hpp). Extensions over HF: the "full" layer kind
// (dense attention, the O(T^2) baseline), `attention_head_size = 0` meaning hidden_size /
// num_attention_heads, and `seed` (one seed for initialisation, LSH rotations and dropout).
//
// validate() checks every field and every combination and throws reformer::ConfigError naming
// the field(s) and their values; a ReformerLM is only ever built from a validated config.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/activations.hpp"  // Activation

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

namespace reformer {

/// The attention kind of one layer (`attn_layers` entries "lsh", "local", "full").
enum class LayerKind { kLsh, kLocal, kFull };

inline const char* to_string(LayerKind k) {
  static constexpr const char* kNames[] = {"lsh", "local", "full"};  // enum order
  const auto i = static_cast<std::size_t>(k);
  return i < std::size(kNames) ? kNames[i] : "?";
}

struct ReformerConfig {
  // --- sizes -------------------------------------------------------------------------------
  Index vocab_size = 320;           ///< V
  Index hidden_size = 128;          ///< D (d_model)
  Index num_attention_heads = 2;    ///< H
  Index attention_head_size = 64;   ///< Dh; 0 = hidden_size / num_attention_heads
  Index feed_forward_size = 512;    ///< F (d_ff)
  std::string hidden_act = "relu";  ///< "relu" | "gelu" | "gelu_new" | "silu" (= "swish")

  // --- layers ------------------------------------------------------------------------------
  /// One entry per layer: "lsh", "local" or "full".
  std::vector<std::string> attn_layers = {"local", "lsh", "local", "lsh"};

  // --- LSH attention -----------------------------------------------------------------------
  Index lsh_attn_chunk_length = 64;
  /// Buckets per hash round: empty = auto (HF's rule, lsh_bucket_layout in
  /// layers/lsh_bucketing.hpp), {NB} = NB buckets (even), {f1, f2, ...} = factorised buckets
  /// f1 * f2 * ... (each factor even), as HF's int or list.
  std::vector<Index> num_buckets = {};
  Index num_hashes = 1;  ///< R, hash rounds
  Index lsh_num_chunks_before = 1;
  Index lsh_num_chunks_after = 0;

  // --- local attention ---------------------------------------------------------------------
  Index local_attn_chunk_length = 64;
  Index local_num_chunks_before = 1;
  Index local_num_chunks_after = 0;

  // --- masking, dropout --------------------------------------------------------------------
  bool is_decoder = true;  ///< causal attention (a causal LM needs true)
  double hidden_dropout_prob = 0.05;
  double lsh_attention_probs_dropout_prob = 0.0;
  double local_attention_probs_dropout_prob = 0.05;

  // --- positions (docs/DESIGN.md 1.6) -----------------------------------------------------
  bool axial_pos_embds = true;  ///< axial (true) or learned absolute (false) positions
  std::vector<Index> axial_pos_shape = {64, 64};      ///< (s1, s2): T <= s1 * s2
  std::vector<Index> axial_pos_embds_dim = {64, 64};  ///< (d1, d2): d1 + d2 = hidden_size
  Index max_position_embeddings = 4096;  ///< learned table rows (T limit when not axial)

  // --- numerics, chunking, initialisation --------------------------------------------------
  double layer_norm_eps = 1e-12;
  Index chunk_size_feed_forward = 128;  ///< tokens per feed-forward chunk; 0 = all at once
  Index chunk_size_lm_head = 128;       ///< tokens per LM-head / loss chunk; 0 = default 128
  double initializer_range = 0.02;      ///< std of normal-initialised weights
  double axial_norm_std = 1.0;          ///< std of the axial position tables
  std::uint64_t seed = 0;               ///< initialisation, LSH rotations, dropout

  // --- derived -----------------------------------------------------------------------------
  Index num_layers() const { return static_cast<Index>(attn_layers.size()); }

  /// Dh, resolving attention_head_size = 0.
  Index head_size() const {
    return attention_head_size > 0
               ? attention_head_size
               : (num_attention_heads > 0 ? hidden_size / num_attention_heads : 0);
  }

  /// H * Dh: width of the concatenated head outputs.
  Index all_head_size() const { return num_attention_heads * head_size(); }

  /// The kind of layer `i` (the config must be valid).
  LayerKind layer_kind(Index i) const {
    REFORMER_REQUIRE(i >= 0 && i < num_layers(), InvalidArgument, "ReformerConfig::layer_kind",
                     "layer ", i, " out of range [0, ", num_layers(), ")");
    const std::string& k = attn_layers[static_cast<std::size_t>(i)];
    if (k == "lsh") return LayerKind::kLsh;
    if (k == "local") return LayerKind::kLocal;
    if (k == "full") return LayerKind::kFull;
    raise<ConfigError>("ReformerConfig::layer_kind", "attn_layers[", i, "] = '", k,
                       "' is not one of 'lsh', 'local', 'full'");
  }

  /// The feed-forward activation named by hidden_act (ConfigError when unknown).
  Activation activation() const { return activation_from_string(hidden_act); }

  /// Longest sequence the position embeddings cover: s1 * s2 (axial) or
  /// max_position_embeddings (learned).
  Index max_length() const {
    if (axial_pos_embds) {
      Index n = 1;
      for (Index s : axial_pos_shape) n *= s;
      return n;
    }
    return max_position_embeddings;
  }

  /// Product of the bucket factors (0 when auto).
  Index total_buckets() const {
    if (num_buckets.empty()) return 0;
    Index n = 1;
    for (Index f : num_buckets) n *= f;
    return n;
  }

  /// Throws ConfigError naming the offending field(s) and values unless the config is usable.
  void validate() const {
    const char* where = "ReformerConfig::validate";
    auto positive = [&](const char* field, Index v) {
      REFORMER_REQUIRE(v >= 1, ConfigError, where, field, " = ", v, " must be >= 1");
    };
    auto non_negative = [&](const char* field, Index v) {
      REFORMER_REQUIRE(v >= 0, ConfigError, where, field, " = ", v, " must be >= 0");
    };
    auto probability = [&](const char* field, double p) {
      REFORMER_REQUIRE(std::isfinite(p) && p >= 0.0 && p < 1.0, ConfigError, where, field, " = ", p,
                       " must be in [0, 1)");
    };

    positive("vocab_size", vocab_size);
    REFORMER_REQUIRE(vocab_size <= Index{1} << 31, ConfigError, where, "vocab_size = ", vocab_size,
                     " must fit token ids in int32 (<= 2^31)");
    positive("hidden_size", hidden_size);
    positive("num_attention_heads", num_attention_heads);
    non_negative("attention_head_size", attention_head_size);
    if (attention_head_size == 0) {
      REFORMER_REQUIRE(hidden_size % num_attention_heads == 0, ConfigError, where,
                       "attention_head_size = 0 (auto) needs hidden_size = ", hidden_size,
                       " divisible by num_attention_heads = ", num_attention_heads);
    }
    positive("feed_forward_size", feed_forward_size);
    REFORMER_REQUIRE(is_activation_name(hidden_act), ConfigError, where, "hidden_act = '",
                     hidden_act, "' is not one of ", kActivationNames);

    REFORMER_REQUIRE(!attn_layers.empty(), ConfigError, where,
                     "attn_layers is empty, need at least one layer");
    for (std::size_t i = 0; i < attn_layers.size(); ++i) {
      const std::string& k = attn_layers[i];
      REFORMER_REQUIRE(k == "lsh" || k == "local" || k == "full", ConfigError, where,
                       "attn_layers[", i, "] = '", k, "' is not one of 'lsh', 'local', 'full'");
    }

    positive("lsh_attn_chunk_length", lsh_attn_chunk_length);
    positive("local_attn_chunk_length", local_attn_chunk_length);
    non_negative("lsh_num_chunks_before", lsh_num_chunks_before);
    non_negative("lsh_num_chunks_after", lsh_num_chunks_after);
    non_negative("local_num_chunks_before", local_num_chunks_before);
    non_negative("local_num_chunks_after", local_num_chunks_after);
    positive("num_hashes", num_hashes);
    for (std::size_t i = 0; i < num_buckets.size(); ++i) {
      REFORMER_REQUIRE(num_buckets[i] >= 2 && num_buckets[i] % 2 == 0, ConfigError, where,
                       "num_buckets = ", detail::list_to_string(num_buckets), ": entry ", i, " = ",
                       num_buckets[i], " must be even and >= 2");
    }
    REFORMER_REQUIRE(total_buckets() <= Index{1} << 30, ConfigError, where,
                     "num_buckets = ", detail::list_to_string(num_buckets),
                     " has too many buckets (> 2^30)");

    probability("hidden_dropout_prob", hidden_dropout_prob);
    probability("lsh_attention_probs_dropout_prob", lsh_attention_probs_dropout_prob);
    probability("local_attention_probs_dropout_prob", local_attention_probs_dropout_prob);

    if (axial_pos_embds) {
      REFORMER_REQUIRE(axial_pos_shape.size() == 2, ConfigError, where,
                       "axial_pos_shape = ", detail::list_to_string(axial_pos_shape),
                       " must have 2 entries (s1, s2)");
      REFORMER_REQUIRE(axial_pos_embds_dim.size() == 2, ConfigError, where,
                       "axial_pos_embds_dim = ", detail::list_to_string(axial_pos_embds_dim),
                       " must have 2 entries (d1, d2)");
      for (std::size_t i = 0; i < 2; ++i) {
        REFORMER_REQUIRE(axial_pos_shape[i] >= 1, ConfigError, where,
                         "axial_pos_shape = ", detail::list_to_string(axial_pos_shape), ": entry ",
                         i, " = ", axial_pos_shape[i], " must be >= 1");
        REFORMER_REQUIRE(axial_pos_embds_dim[i] >= 1, ConfigError, where,
                         "axial_pos_embds_dim = ", detail::list_to_string(axial_pos_embds_dim),
                         ": entry ", i, " = ", axial_pos_embds_dim[i], " must be >= 1");
      }
      REFORMER_REQUIRE(axial_pos_embds_dim[0] + axial_pos_embds_dim[1] == hidden_size, ConfigError,
                       where, "axial_pos_embds_dim = ", detail::list_to_string(axial_pos_embds_dim),
                       " sums to ", axial_pos_embds_dim[0] + axial_pos_embds_dim[1],
                       ", must equal hidden_size = ", hidden_size);
      REFORMER_REQUIRE(axial_pos_shape[0] <= (Index{1} << 31) / axial_pos_shape[1], ConfigError,
                       where, "axial_pos_shape = ", detail::list_to_string(axial_pos_shape),
                       " covers more than 2^31 positions");
    }
    positive("max_position_embeddings", max_position_embeddings);

    REFORMER_REQUIRE(std::isfinite(layer_norm_eps) && layer_norm_eps > 0.0, ConfigError, where,
                     "layer_norm_eps = ", layer_norm_eps, " must be finite and > 0");
    non_negative("chunk_size_feed_forward", chunk_size_feed_forward);
    non_negative("chunk_size_lm_head", chunk_size_lm_head);
    REFORMER_REQUIRE(std::isfinite(initializer_range) && initializer_range >= 0.0, ConfigError,
                     where, "initializer_range = ", initializer_range, " must be finite and >= 0");
    REFORMER_REQUIRE(std::isfinite(axial_norm_std) && axial_norm_std >= 0.0, ConfigError, where,
                     "axial_norm_std = ", axial_norm_std, " must be finite and >= 0");
  }
};

}  // namespace reformer
