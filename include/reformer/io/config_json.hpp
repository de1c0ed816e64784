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
// HF keys this library has no use for (use_cache, ...) are ignored. `num_labels` is read from
// "num_labels" or, as HF writes it, from the size of "id2label"; `classifier_dropout` may be
// null (the hidden dropout).
// `num_buckets` is null (auto), an integer, or a list of factors, as in HF.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/io/json_reader.hpp"
#include "reformer/model/config.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace reformer {

/// Hugging Face's ReformerConfig defaults (transformers' configuration_reformer.py), for JSON
/// that comes from HF and lists only the fields it changed. ReformerConfig's own defaults are
/// HF's except for the fields set here (a smaller causal model that chunks its feed-forward and
/// LM head by default).
inline ReformerConfig hf_default_config() {
  ReformerConfig c;
  c.hidden_size = 256;
  c.num_attention_heads = 12;
  c.attn_layers = {"local", "lsh", "local", "lsh", "local", "lsh"};
  c.axial_pos_embds_dim = {64, 192};
  c.is_decoder = false;
  c.chunk_size_feed_forward = 0;
  c.chunk_size_lm_head = 0;
  return c;
}

namespace detail {

/// A config's num_buckets (`List` is std::vector<Index>, const or not), told apart from the other
/// integer lists because its JSON is null (auto), an integer or a list of factors.
template <class List>
struct BucketsField {
  List& factors;
};

/// classifier_dropout (`D` is double, const or not): JSON null (HF's None) when unset (negative).
template <class D>
struct OptionalProbability {
  D& value;
};

/// Calls visit(key, field) for every ReformerConfig field under its HF key, `c` const or not;
/// num_buckets comes as a BucketsField, classifier_dropout as an OptionalProbability.
template <class Config, class Visit>
void for_each_config_field(Config& c, Visit&& visit) {
  using Buckets = BucketsField<std::remove_reference_t<decltype((c.num_buckets))>>;
  using Probability =
      OptionalProbability<std::remove_reference_t<decltype((c.classifier_dropout))>>;
  visit("vocab_size", c.vocab_size);
  visit("hidden_size", c.hidden_size);
  visit("num_attention_heads", c.num_attention_heads);
  visit("attention_head_size", c.attention_head_size);
  visit("feed_forward_size", c.feed_forward_size);
  visit("hidden_act", c.hidden_act);
  visit("attn_layers", c.attn_layers);
  visit("lsh_attn_chunk_length", c.lsh_attn_chunk_length);
  visit("num_buckets", Buckets{c.num_buckets});
  visit("num_hashes", c.num_hashes);
  visit("lsh_num_chunks_before", c.lsh_num_chunks_before);
  visit("lsh_num_chunks_after", c.lsh_num_chunks_after);
  visit("local_attn_chunk_length", c.local_attn_chunk_length);
  visit("local_num_chunks_before", c.local_num_chunks_before);
  visit("local_num_chunks_after", c.local_num_chunks_after);
  visit("is_decoder", c.is_decoder);
  visit("hidden_dropout_prob", c.hidden_dropout_prob);
  visit("lsh_attention_probs_dropout_prob", c.lsh_attention_probs_dropout_prob);
  visit("local_attention_probs_dropout_prob", c.local_attention_probs_dropout_prob);
  visit("axial_pos_embds", c.axial_pos_embds);
  visit("axial_pos_shape", c.axial_pos_shape);
  visit("axial_pos_embds_dim", c.axial_pos_embds_dim);
  visit("max_position_embeddings", c.max_position_embeddings);
  visit("layer_norm_eps", c.layer_norm_eps);
  visit("chunk_size_feed_forward", c.chunk_size_feed_forward);
  visit("chunk_size_lm_head", c.chunk_size_lm_head);
  visit("initializer_range", c.initializer_range);
  visit("axial_norm_std", c.axial_norm_std);
  visit("seed", c.seed);
  visit("pad_token_id", c.pad_token_id);
  visit("num_labels", c.num_labels);
  visit("classifier_dropout", Probability{c.classifier_dropout});
}

template <class T>
nlohmann::json json_value(const T& field) {
  return field;
}
inline nlohmann::json json_value(OptionalProbability<const double> p) {
  if (p.value < 0.0) return nullptr;
  return p.value;
}
/// null (auto), an integer (one factor) or a list of factors.
inline nlohmann::json json_value(BucketsField<const std::vector<Index>> buckets) {
  const auto& f = buckets.factors;
  if (f.empty()) return nullptr;
  if (f.size() == 1) return f[0];
  return f;
}

}  // namespace detail

/// Writes every field (HF names) plus "model_type": "reformer".
inline void to_json(nlohmann::json& j, const ReformerConfig& c) {
  j = nlohmann::json::object();
  j["model_type"] = "reformer";
  j["architectures"] = {"ReformerModelWithLMHead"};
  detail::for_each_config_field(
      c, [&j](const char* key, const auto& field) { j[key] = detail::json_value(field); });
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

  void read(const char* key, Index& out) const {
    if (const auto* v = find(key)) {
      out = as_index(key, *v, *v, "an integer");
    } else if (std::string(key) == "num_labels") {
      // HF writes the labels' names instead: {"0": "LABEL_0", ...}
      if (const auto* names = find("id2label")) {
        if (!names->is_object()) wrong_type("id2label", *names, "an object");
        out = static_cast<Index>(names->size());
      }
    }
  }
  void read(const char* key, std::uint64_t& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_number_unsigned()) wrong_type(key, *v, "a non-negative integer");
      out = v->get<std::uint64_t>();
    }
  }
  void read(const char* key, double& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_number()) wrong_type(key, *v, "a number");
      out = v->get<double>();
    }
  }
  void read(const char* key, OptionalProbability<double> p) const {
    if (const auto* v = find(key)) {
      if (v->is_null()) {
        p.value = -1.0;
        return;
      }
      if (!v->is_number()) wrong_type(key, *v, "null or a number");
      p.value = v->get<double>();
    }
  }
  void read(const char* key, bool& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_boolean()) wrong_type(key, *v, "true or false");
      out = v->get<bool>();
    }
  }
  void read(const char* key, std::string& out) const {
    if (const auto* v = find(key)) {
      if (!v->is_string()) wrong_type(key, *v, "a string");
      out = v->get<std::string>();
    }
  }
  void read(const char* key, std::vector<Index>& out) const {
    if (const auto* v = find(key)) out = as_integer_list(key, *v);
  }
  void read(const char* key, std::vector<std::string>& out) const {
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
  void read(const char* key, BucketsField<std::vector<Index>> buckets) const {
    if (const auto* v = find(key)) {
      auto& out = buckets.factors;
      if (v->is_null()) {
        out.clear();
      } else if (v->is_number_integer()) {
        out = {as_index(key, *v, *v, "null, an integer or a list of integers")};
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
    for (const auto& e : v) list.push_back(as_index(key, e, v, "a list of integers"));
    return list;
  }
  /// `e` (part of the field's value `v`) as an Index: an integer below 2^63.
  static Index as_index(const char* key, const nlohmann::json& e, const nlohmann::json& v,
                        const char* expected) {
    if (!e.is_number_integer()) wrong_type(key, v, expected);
    if (e.is_number_unsigned() &&
        e.get<std::uint64_t>() >
            static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      raise<ConfigError>(kWhere, "field '", key, "' = ", io::json_excerpt(v),
                         " holds an integer above 2^63 - 1");
    }
    return static_cast<Index>(e.get<std::int64_t>());
  }
  [[noreturn]] static void wrong_type(const char* key, const nlohmann::json& v,
                                      const char* expected) {
    raise<ConfigError>(kWhere, "field '", key, "' = ", io::json_excerpt(v), " must be ", expected);
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
  detail::for_each_config_field(c, [&r](const char* key, auto&& field) { r.read(key, field); });
  return c;
}

/// ADL hook so that `j.get<ReformerConfig>()` works.
inline void from_json(const nlohmann::json& j, ReformerConfig& c) { c = config_from_json(j); }

/// The compact JSON text checkpoints store under "__metadata__" / "config". `architecture` (HF's
/// class name) goes into "architectures", as HF's config.json has it.
inline std::string config_to_json_string(const ReformerConfig& c,
                                         const char* architecture = "ReformerModelWithLMHead") {
  nlohmann::json j(c);
  j["architectures"] = {architecture};
  return j.dump();
}

/// Parses (io::read_json: bounded nesting) and validates (ConfigError naming the field; invalid
/// JSON is a ConfigError too).
inline ReformerConfig config_from_json_string(const std::string& text) {
  io::JsonReadResult j = io::read_json(text);  // nesting at most io::kMaxJsonDepth levels
  if (!j.ok()) raise<ConfigError>("config_from_json_string", "the config: ", j.error);
  ReformerConfig c = config_from_json(j.value);
  c.validate();
  return c;
}

}  // namespace reformer
