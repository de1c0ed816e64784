#pragma once
// ReformerConfig: the hyper-parameters of a Reformer model, the causal language model and the
// encoder models alike (docs/DESIGN.md 1, 7.5).
//
// Field names follow Hugging Face's `ReformerConfig` so a config can be read from / written to
// the JSON of an HF checkpoint (io/config_json.hpp). Extensions over HF: the "full" layer kind
// (dense attention, the O(T^2) baseline), `attention_head_size = 0` meaning hidden_size /
// num_attention_heads, and `seed` (one seed for initialisation, LSH rotations and dropout).
//
// validate() checks every field and every combination and throws reformer::ConfigError naming
// the field(s) and their values; a model is only ever built from a validated config. As in HF,
// is_decoder = true refuses look-ahead chunks, and padded_length() gives the length HF's model
// pads a sequence to (a multiple of every chunk length in use).
#include "reformer/core/checked_size.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/lsh_bucketing.hpp"  // lsh_max_rotation_columns
#include "reformer/ops/activations.hpp"       // Activation

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace reformer {

/// The attention kind of one layer (`attn_layers` entries "lsh", "local", "full").
enum class LayerKind { kLsh, kLocal, kFull };

inline const char* to_string(LayerKind k) {
  static constexpr const char* kNames[] = {"lsh", "local", "full"};  // enum order
  const auto i = static_cast<std::size_t>(k);
  return i < std::size(kNames) ? kNames[i] : "?";
}

/// Upper bounds of ReformerConfig's fields: far above any real model, low enough that every
/// size the library derives from a valid config (tensor shapes, windows, position and bucket
/// counts) is computed without overflow.
struct ConfigLimits {
  static constexpr Index kMaxVocab = Index{1} << 31;           ///< token ids fit int32
  static constexpr Index kMaxWidth = Index{1} << 16;           ///< hidden_size, head size
  static constexpr Index kMaxHeads = Index{1} << 12;           ///< num_attention_heads
  static constexpr Index kMaxFeedForward = Index{1} << 22;     ///< feed_forward_size
  static constexpr Index kMaxLayers = Index{1} << 12;          ///< attn_layers entries
  static constexpr Index kMaxPositions = Index{1} << 31;       ///< sequence length, chunk sizes
  static constexpr Index kMaxAdjacentChunks = Index{1} << 10;  ///< *_num_chunks_before/after
  static constexpr Index kMaxHashes = 16;                      ///< num_hashes (kLshMaxHashes)
  static constexpr Index kMaxBuckets = Index{1} << 30;         ///< product of num_buckets
  static constexpr Index kMaxLabels = Index{1} << 20;          ///< num_labels
  static constexpr double kMaxInitStd = 10.0;  ///< initializer_range, axial_norm_std
  static constexpr double kMaxLayerNormEps = 1.0;
};

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
  /// Causal attention. A causal LM needs true, and then no look-ahead chunks in the layer kinds
  /// it uses (HF's ReformerModelWithLMHead refuses them); the encoder models
  /// (model/encoder_models.hpp) take false.
  bool is_decoder = true;
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
  /// Tokens per head / loss chunk; 0 (HF's default) = automatic: the heads' per-chunk buffers
  /// within tuning::kHeadChunkScalars (1152 tokens for V = 256, D = 256).
  Index chunk_size_lm_head = 0;
  double initializer_range = 0.02;  ///< std of normal-initialised weights
  double axial_norm_std = 1.0;      ///< std of the axial position tables
  std::uint64_t seed = 0;           ///< initialisation, LSH rotations, dropout

  // --- padding, heads ----------------------------------------------------------------------
  /// The token the models append when they pad a sequence to a multiple of the chunk lengths
  /// (padded_length(), docs/DESIGN.md 7.4); HF pad_token_id.
  Index pad_token_id = 0;
  /// Outputs of the sequence-classification head (1 = regression); HF num_labels.
  Index num_labels = 2;
  /// Dropout of the classification head (HF classifier_dropout); negative = unset (HF's None):
  /// hidden_dropout_prob.
  double classifier_dropout = -1.0;

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
  /// (kMaxIndex when the product overflows, which validate() refuses.)
  Index max_length() const {
    if (axial_pos_embds) return checked_product(axial_pos_shape).value_or(kMaxIndex);
    return max_position_embeddings;
  }

  /// Product of the bucket factors (0 when auto; kMaxIndex when it overflows, which validate()
  /// refuses).
  Index total_buckets() const {
    if (num_buckets.empty()) return 0;
    return checked_product(num_buckets).value_or(kMaxIndex);
  }

  /// Sum of f/2 over the bucket factors: the columns of one LSH rotation (0 when auto).
  Index rotation_columns() const {
    Index n = 0;
    for (Index f : num_buckets) n = checked_add(n, f > 0 ? f / 2 : 0).value_or(kMaxIndex);
    return n;
  }

  /// Whether layer kind `k` appears in attn_layers.
  bool uses(LayerKind k) const {
    for (Index i = 0; i < num_layers(); ++i) {
      if (layer_kind(i) == k) return true;
    }
    return false;
  }

  /// The least common multiple of the chunk lengths of the layer kinds in use (LSH and local;
  /// full attention has none), 1 when there is none (HF _get_least_common_mult_chunk_len).
  Index chunk_length_lcm() const {
    Index m = 1;
    for (const auto& [kind, len] : {std::pair{LayerKind::kLsh, lsh_attn_chunk_length},
                                    std::pair{LayerKind::kLocal, local_attn_chunk_length}}) {
      if (uses(kind)) m = m / std::gcd(m, len) * len;  // bounded by validate()
    }
    return m;
  }

  /// The length a model runs a sequence of length t at, as HF's ReformerModel: t itself when it
  /// is a multiple of chunk_length_lcm() or not longer than the shortest chunk length in use,
  /// else the next multiple of chunk_length_lcm() (the model appends pad_token_id, masked).
  Index padded_length(Index t) const {
    const Index m = chunk_length_lcm();
    Index shortest = kMaxIndex;
    if (uses(LayerKind::kLsh)) shortest = std::min(shortest, lsh_attn_chunk_length);
    if (uses(LayerKind::kLocal)) shortest = std::min(shortest, local_attn_chunk_length);
    if (m <= 1 || t % m == 0 || t <= shortest) return t;
    return (t / m + 1) * m;
  }

  /// Throws ConfigError naming the offending field(s) and values unless the config is usable.
  void validate() const {
    using L = ConfigLimits;
    const char* where = "ReformerConfig::validate";
    auto in_range = [&](const char* field, Index v, Index lo, Index hi) {
      REFORMER_REQUIRE(v >= lo && v <= hi, ConfigError, where, field, " = ", v, " must be in [", lo,
                       ", ", hi, "]");
    };
    auto probability = [&](const char* field, double p) {
      REFORMER_REQUIRE(std::isfinite(p) && p >= 0.0 && p < 1.0, ConfigError, where, field, " = ", p,
                       " must be in [0, 1)");
    };
    auto list_entries = [&](const char* field, const std::vector<Index>& list, Index lo, Index hi) {
      for (std::size_t i = 0; i < list.size(); ++i) {
        REFORMER_REQUIRE(list[i] >= lo && list[i] <= hi, ConfigError, where, field, " = ",
                         detail::list_to_string(list), ": entry ", i, " = ", list[i],
                         " must be in [", lo, ", ", hi, "]");
      }
    };

    REFORMER_REQUIRE(vocab_size >= 1, ConfigError, where, "vocab_size = ", vocab_size,
                     " must be >= 1");
    REFORMER_REQUIRE(vocab_size <= L::kMaxVocab, ConfigError, where, "vocab_size = ", vocab_size,
                     " must fit token ids in int32 (<= 2^31)");
    in_range("hidden_size", hidden_size, 1, L::kMaxWidth);
    in_range("num_attention_heads", num_attention_heads, 1, L::kMaxHeads);
    in_range("attention_head_size", attention_head_size, 0, L::kMaxWidth);
    if (attention_head_size == 0) {
      REFORMER_REQUIRE(hidden_size % num_attention_heads == 0, ConfigError, where,
                       "attention_head_size = 0 (auto) needs hidden_size = ", hidden_size,
                       " divisible by num_attention_heads = ", num_attention_heads);
    }
    in_range("feed_forward_size", feed_forward_size, 1, L::kMaxFeedForward);
    REFORMER_REQUIRE(is_activation_name(hidden_act), ConfigError, where, "hidden_act = '",
                     hidden_act, "' is not one of ", kActivationNames);

    REFORMER_REQUIRE(!attn_layers.empty(), ConfigError, where,
                     "attn_layers is empty, need at least one layer");
    REFORMER_REQUIRE(num_layers() <= L::kMaxLayers, ConfigError, where, "attn_layers has ",
                     num_layers(), " entries, at most ", L::kMaxLayers);
    for (std::size_t i = 0; i < attn_layers.size(); ++i) {
      const std::string& k = attn_layers[i];
      REFORMER_REQUIRE(k == "lsh" || k == "local" || k == "full", ConfigError, where,
                       "attn_layers[", i, "] = '", k.substr(0, 40), k.size() > 40 ? "..." : "",
                       "' is not one of 'lsh', 'local', 'full'");
    }

    in_range("lsh_attn_chunk_length", lsh_attn_chunk_length, 1, L::kMaxPositions);
    in_range("local_attn_chunk_length", local_attn_chunk_length, 1, L::kMaxPositions);
    in_range("lsh_num_chunks_before", lsh_num_chunks_before, 0, L::kMaxAdjacentChunks);
    in_range("lsh_num_chunks_after", lsh_num_chunks_after, 0, L::kMaxAdjacentChunks);
    in_range("local_num_chunks_before", local_num_chunks_before, 0, L::kMaxAdjacentChunks);
    in_range("local_num_chunks_after", local_num_chunks_after, 0, L::kMaxAdjacentChunks);
    // The attention window of a chunk: (before + 1 + after) chunks of keys.
    size_product<ConfigError>(
        where,
        "LSH window (lsh_num_chunks_before + 1 + lsh_num_chunks_after) x lsh_attn_chunk_length",
        {lsh_num_chunks_before + 1 + lsh_num_chunks_after, lsh_attn_chunk_length},
        L::kMaxPositions);
    size_product<ConfigError>(
        where,
        "local window (local_num_chunks_before + 1 + local_num_chunks_after) x "
        "local_attn_chunk_length",
        {local_num_chunks_before + 1 + local_num_chunks_after, local_attn_chunk_length},
        L::kMaxPositions);
    in_range("num_hashes", num_hashes, 1, L::kMaxHashes);
    // HF's causal LM refuses look-ahead chunks: with the causal mask they would only add
    // masked keys, and the circular window would bring the first chunks into the last ones.
    for (const auto& [kind, field, after] :
         {std::tuple{LayerKind::kLsh, "lsh_num_chunks_after", lsh_num_chunks_after},
          std::tuple{LayerKind::kLocal, "local_num_chunks_after", local_num_chunks_after}}) {
      REFORMER_REQUIRE(!is_decoder || after == 0 || !uses(kind), ConfigError, where, field, " = ",
                       after,
                       " with is_decoder = true: a causal model takes no look-ahead chunks "
                       "(set it to 0, or is_decoder = false for an encoder model)");
    }
    // Padding to a multiple of every chunk length in use must stay a valid length.
    {
      const Index a = uses(LayerKind::kLsh) ? lsh_attn_chunk_length : 1;
      const Index b = uses(LayerKind::kLocal) ? local_attn_chunk_length : 1;
      size_product<ConfigError>(where,
                                "least common multiple of lsh_attn_chunk_length and "
                                "local_attn_chunk_length",
                                {a / std::gcd(a, b), b}, L::kMaxPositions);
    }
    for (std::size_t i = 0; i < num_buckets.size(); ++i) {
      REFORMER_REQUIRE(
          num_buckets[i] >= 2 && num_buckets[i] % 2 == 0 && num_buckets[i] <= L::kMaxBuckets,
          ConfigError, where, "num_buckets = ", detail::list_to_string(num_buckets), ": entry ", i,
          " = ", num_buckets[i], " must be even and in [2, ", L::kMaxBuckets, "]");
    }
    REFORMER_REQUIRE(checked_product(num_buckets, L::kMaxBuckets).has_value(), ConfigError, where,
                     "num_buckets = ", detail::list_to_string(num_buckets),
                     " has more than 2^30 buckets");

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
      list_entries("axial_pos_shape", axial_pos_shape, 1, L::kMaxPositions);
      list_entries("axial_pos_embds_dim", axial_pos_embds_dim, 1, L::kMaxWidth);
      REFORMER_REQUIRE(axial_pos_embds_dim[0] + axial_pos_embds_dim[1] == hidden_size, ConfigError,
                       where, "axial_pos_embds_dim = ", detail::list_to_string(axial_pos_embds_dim),
                       " sums to ", axial_pos_embds_dim[0] + axial_pos_embds_dim[1],
                       ", must equal hidden_size = ", hidden_size);
      REFORMER_REQUIRE(checked_product(axial_pos_shape, L::kMaxPositions).has_value(), ConfigError,
                       where, "axial_pos_shape = ", detail::list_to_string(axial_pos_shape),
                       " covers more than 2^31 positions");
    }
    in_range("max_position_embeddings", max_position_embeddings, 1, L::kMaxPositions);
    if (!num_buckets.empty()) {
      // Hashing costs rotation_columns() per token, head and round: bounded by the longest
      // sequence the positions allow (lsh_max_rotation_columns).
      const Index padded = max_length();
      const Index allowed = lsh_max_rotation_columns(padded, lsh_attn_chunk_length);
      REFORMER_REQUIRE(rotation_columns() <= allowed, ConfigError, where,
                       "num_buckets = ", detail::list_to_string(num_buckets), " needs ",
                       rotation_columns(), " rotation columns per head and round, more than ",
                       allowed, " (max(", kLshMaxRotationColumns,
                       ", longest sequence / lsh_attn_chunk_length)); factorise the buckets, "
                       "e.g. (f1, f2) with f1 * f2 buckets and (f1 + f2) / 2 columns");
    }

    REFORMER_REQUIRE(std::isfinite(layer_norm_eps) && layer_norm_eps > 0.0 &&
                         layer_norm_eps <= L::kMaxLayerNormEps,
                     ConfigError, where, "layer_norm_eps = ", layer_norm_eps, " must be in (0, ",
                     L::kMaxLayerNormEps, "]");
    in_range("chunk_size_feed_forward", chunk_size_feed_forward, 0, L::kMaxPositions);
    in_range("chunk_size_lm_head", chunk_size_lm_head, 0, L::kMaxPositions);
    REFORMER_REQUIRE(pad_token_id >= 0 && pad_token_id < vocab_size, ConfigError, where,
                     "pad_token_id = ", pad_token_id, " must be in [0, vocab_size = ", vocab_size,
                     ")");
    in_range("num_labels", num_labels, 1, L::kMaxLabels);
    REFORMER_REQUIRE(std::isfinite(classifier_dropout) && classifier_dropout < 1.0, ConfigError,
                     where, "classifier_dropout = ", classifier_dropout,
                     " must be in [0, 1), or negative for hidden_dropout_prob");
    REFORMER_REQUIRE(std::isfinite(initializer_range) && initializer_range >= 0.0 &&
                         initializer_range <= L::kMaxInitStd,
                     ConfigError, where, "initializer_range = ", initializer_range,
                     " must be in [0, ", L::kMaxInitStd, "]");
    REFORMER_REQUIRE(
        std::isfinite(axial_norm_std) && axial_norm_std >= 0.0 && axial_norm_std <= L::kMaxInitStd,
        ConfigError, where, "axial_norm_std = ", axial_norm_std, " must be in [0, ", L::kMaxInitStd,
        "]");
  }
};

}  // namespace reformer
