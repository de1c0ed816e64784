#pragma once
// ReformerConfig <-> JSON with Hugging Face's ReformerConfig field names, so a checkpoint's
// config reads like (and can be read from) an HF `config.json`.
//
//   nlohmann::json j = config;                 // to_json (found by ADL)
//   ReformerConfig c = config_from_json(j);    // strict types, unknown keys ignored
//   std::string s = config_to_json_string(c);  // what checkpoints store in "__metadata__"
//
// Reading: a key that is present must have the right JSON type (ConfigError naming the field
// and the value otherwise; an integer field does not accept 2.5 or "2"). A missing key keeps the
// default: ReformerConfig's own defaults, or Hugging Face's ReformerConfig defaults when the
// JSON says "model_type": "reformer" (HF writes only the fields that differ from its defaults).
// HF keys this library has no use for (pad_token_id, use_cache, ...) are ignored.
// `num_buckets` is null (auto), an integer, or a list of factors, as in HF.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/config.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace reformer {

/// Hugging Face's ReformerConfig defaults (transformers' configuration_reformer.py), for JSON
/// that comes from HF and lists only the fields it changed.
inline ReformerConfig hf_default_config() {
  ReformerConfig c;
  c.vocab_size = 320;
  c.hidden_size = 256;
  c.num_attention_heads = 12;
  c.attention_head_size = 64;
  c.feed_forward_size = 512;
  c.hidden_act = "relu";
  c.attn_layers = {"local", "lsh", "local", "lsh", "local", "lsh"};
  c.lsh_attn_chunk_length = 64;
  c.num_buckets = {};
  c.num_hashes = 1;
  c.lsh_num_chunks_before = 1;
  c.lsh_num_chunks_after = 0;
  c.local_attn_chunk_length = 64;
  c.local_num_chunks_before = 1;
  c.local_num_chunks_after = 0;
  c.is_decoder = false;
  c.hidden_dropout_prob = 0.05;
  c.lsh_attention_probs_dropout_prob = 0.0;
  c.local_attention_probs_dropout_prob = 0.05;
  c.axial_pos_embds = true;
  c.axial_pos_shape = {64, 64};
  c.axial_pos_embds_dim = {64, 192};
  c.max_position_embeddings = 4096;
  c.layer_norm_eps = 1e-12;
  c.chunk_size_feed_forward = 0;
  c.chunk_size_lm_head = 0;
  c.initializer_range = 0.02;
  c.axial_norm_std = 1.0;
  return c;
}

/// Writes every field (HF names) plus "model_type": "reformer".
inline void to_json(nlohmann::json& j, const ReformerConfig& c) {
  j = nlohmann::json::object();
  j["model_type"] = "reformer";
  j["architectures"] = {"ReformerModelWithLMHead"};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["attention_head_size"] = c.attention_head_size;
  j["feed_forward_size"] = c.feed_forward_size;
  j["hidden_act"] = c.hidden_act;
  j["attn_layers"] = c.attn_layers;
  j["lsh_attn_chunk_length"] = c.lsh_attn_chunk_length;
  if (c.num_buckets.empty()) {
    j["num_buckets"] = nullptr;
  } else if (c.num_buckets.size() == 1) {
    j["num_buckets"] = c.num_buckets[0];
  } else {
    j["num_buckets"] = c.num_buckets;
  }
  j["num_hashes"] = c.num_hashes;
  j["lsh_num_chunks_before"] = c.lsh_num_chunks_before;
  j["lsh_num_chunks_after"] = c.lsh_num_chunks_after;
  j["local_attn_chunk_length"] = c.local_attn_chunk_length;
  j["local_num_chunks_before"] = c.local_num_chunks_before;
  j["local_num_chunks_after"] = c.local_num_chunks_after;
  j["is_decoder"] = c.is_decoder;
  j["hidden_dropout_prob"] = c.hidden_dropout_prob;
  j["lsh_attention_probs_dropout_prob"] = c.lsh_attention_probs_dropout_prob;
  j["local_attention_probs_dropout_prob"] = c.local_attention_probs_dropout_prob;
  j["axial_pos_embds"] = c.axial_pos_embds;
  j["axial_pos_shape"] = c.axial_pos_shape;
  j["axial_pos_embds_dim"] = c.axial_pos_embds_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["chunk_size_feed_forward"] = c.chunk_size_feed_forward;
  j["chunk_size_lm_head"] = c.chunk_size_lm_head;
  j["initializer_range"] = c.initializer_range;
  j["axial_norm_std"] = c.axial_norm_std;
  j["seed"] = c.seed;
  j["tie_word_embeddings"] = false;
}

namespace detail {

class ConfigJsonReader {
 public:
  explicit ConfigJsonReader(const nlohmann::json& j) : j_(j) {
    if (!j_.is_object()) {
      raise<ConfigError>(kWhere, "the config JSON is ", j_.type_name(), ", expected an object");
    }
  }

  void integer(const char* key, Index& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_number_integer()) wrong_type(key, *v, "an integer");
      if (v->is_number_unsigned() &&
          v->get<std::uint64_t>() >
              static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        wrong_type(key, *v, "an integer below 2^63");
      }
      out = static_cast<Index>(v->get<std::int64_t>());
    }
  }
  void unsigned_integer(const char* key, std::uint64_t& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_number_unsigned()) wrong_type(key, *v, "a non-negative integer");
      out = v->get<std::uint64_t>();
    }
  }
  void number(const char* key, double& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_number()) wrong_type(key, *v, "a number");
      out = v->get<double>();
    }
  }
  void boolean(const char* key, bool& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_boolean()) wrong_type(key, *v, "true or false");
      out = v->get<bool>();
    }
  }
  void string(const char* key, std::string& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_string()) wrong_type(key, *v, "a string");
      out = v->get<std::string>();
    }
  }
  void integer_list(const char* key, std::vector<Index>& out) const {
    if (const auto* v = find(key)) out = as_integer_list(key, *v);
  }
  void string_list(const char* key, std::vector<std::string>& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_array()) wrong_type(key, *v, "a list of strings");
      std::vector<std::string> list;
      for (const auto& e : *v) {
        if (!e.is_string()) wrong_type(key, *v, "a list of strings");
        list.push_back(e.get<std::string>());
      }
      out = std::move(list);
    }
  }
  /// null → auto (empty), integer → {n}, list → factors.
  void buckets(const char* key, std::vector<Index>& out) const {
    if (const auto* v = find(key)) {
      if (v->is_null()) {
        out.clear();
      } else if (v->is_number_integer()) {
        out = {static_cast<Index>(v->get<std::int64_t>())};
      } else if (v->is_array()) {
        out = as_integer_list(key, *v);
      } else {
        wrong_type(key, *v, "null, an integer or a list of integers");
      }
    }
  }

 private:
  static constexpr const char* kWhere = "config_from_json";

  const nlohmann::json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  std::vector<Index> as_integer_list(const char* key, const nlohmann::json& v) const {
    if (!v.is_array()) wrong_type(key, v, "a list of integers");
    std::vector<Index> list;
    for (const auto& e : v) {
      if (!e.is_number_integer()) wrong_type(key, v, "a list of integers");
      list.push_back(static_cast<Index>(e.get<std::int64_t>()));
    }
    return list;
  }
  [[noreturn]] static void wrong_type(const char* key, const nlohmann::json& v,
                                      const char* expected) {
    raise<ConfigError>(kWhere, "field '", key, "' = ", v.dump(), " must be ", expected);
  }

  const nlohmann::json& j_;
};

}  // namespace detail

/// Reads a config (see the header comment). Does not validate(): config_from_json_string does.
inline ReformerConfig config_from_json(const nlohmann::json& j) {
  detail::ConfigJsonReader r(j);
  const bool from_hf = j.contains("model_type") && j["model_type"] == "reformer" &&
                       !j.contains("seed");  // ours always writes "seed"
  ReformerConfig c = from_hf ? hf_default_config() : ReformerConfig{};
  r.integer("vocab_size", c.vocab_size);
  r.integer("hidden_size", c.hidden_size);
  r.integer("num_attention_heads", c.num_attention_heads);
  r.integer("attention_head_size", c.attention_head_size);
  r.integer("feed_forward_size", c.feed_forward_size);
  r.string("hidden_act", c.hidden_act);
  r.string_list("attn_layers", c.attn_layers);
  r.integer("lsh_attn_chunk_length", c.lsh_attn_chunk_length);
  r.buckets("num_buckets", c.num_buckets);
  r.integer("num_hashes", c.num_hashes);
  r.integer("lsh_num_chunks_before", c.lsh_num_chunks_before);
  r.integer("lsh_num_chunks_after", c.lsh_num_chunks_after);
  r.integer("local_attn_chunk_length", c.local_attn_chunk_length);
  r.integer("local_num_chunks_before", c.local_num_chunks_before);
  r.integer("local_num_chunks_after", c.local_num_chunks_after);
  r.boolean("is_decoder", c.is_decoder);
  r.number("hidden_dropout_prob", c.hidden_dropout_prob);
  r.number("lsh_attention_probs_dropout_prob", c.lsh_attention_probs_dropout_prob);
  r.number("local_attention_probs_dropout_prob", c.local_attention_probs_dropout_prob);
  r.boolean("axial_pos_embds", c.axial_pos_embds);
  r.integer_list("axial_pos_shape", c.axial_pos_shape);
  r.integer_list("axial_pos_embds_dim", c.axial_pos_embds_dim);
  r.integer("max_position_embeddings", c.max_position_embeddings);
  r.number("layer_norm_eps", c.layer_norm_eps);
  r.integer("chunk_size_feed_forward", c.chunk_size_feed_forward);
  r.integer("chunk_size_lm_head", c.chunk_size_lm_head);
  r.number("initializer_range", c.initializer_range);
  r.number("axial_norm_std", c.axial_norm_std);
  r.unsigned_integer("seed", c.seed);
  return c;
}

/// ADL hook so that `j.get<ReformerConfig>()` works.
inline void from_json(const nlohmann::json& j, ReformerConfig& c) { c = config_from_json(j); }

/// The compact JSON text checkpoints store under "__metadata__" / "config".
inline std::string config_to_json_string(const ReformerConfig& c) {
  return nlohmann::json(c).dump();
}

/// Parses and validates (ConfigError naming the field; invalid JSON is a ConfigError too).
inline ReformerConfig config_from_json_string(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    raise<ConfigError>("config_from_json_string", "the config is not valid JSON: ", e.what());
  }
  ReformerConfig c = config_from_json(j);
  c.validate();
  return c;
}

}  // namespace reformer
