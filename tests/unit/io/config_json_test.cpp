// ReformerConfig <-> JSON: round trips, the reference fixtures' HF configs, HF defaults, and
// strict field types.
#include "reformer/io/config_json.hpp"

#include "support/fixture.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer {
namespace {

TEST(ConfigJson, RoundTripKeepsEveryField) {
  // Every field differs from its default; reading it and writing it back gives every value again.
  const nlohmann::json every_field = nlohmann::json::parse(R"({
    "vocab_size": 77, "hidden_size": 48, "num_attention_heads": 3, "attention_head_size": 0,
    "feed_forward_size": 96, "hidden_act": "gelu", "attn_layers": ["lsh", "full", "local"],
    "lsh_attn_chunk_length": 8, "num_buckets": [2, 4], "num_hashes": 3,
    "lsh_num_chunks_before": 2, "lsh_num_chunks_after": 1, "local_attn_chunk_length": 16,
    "local_num_chunks_before": 0, "local_num_chunks_after": 2, "is_decoder": false,
    "hidden_dropout_prob": 0.125, "lsh_attention_probs_dropout_prob": 0.25,
    "local_attention_probs_dropout_prob": 0.0, "axial_pos_embds": false,
    "axial_pos_shape": [8, 16], "axial_pos_embds_dim": [16, 32], "max_position_embeddings": 512,
    "layer_norm_eps": 1e-5, "chunk_size_feed_forward": 33, "chunk_size_lm_head": 17,
    "initializer_range": 0.01, "axial_norm_std": 0.5, "seed": 18446744073709551615,
    "pad_token_id": 3, "num_labels": 5, "classifier_dropout": 0.375})");
  ReformerConfig c = config_from_json(every_field);
  const nlohmann::json written(c);
  for (const auto& [key, value] : every_field.items()) EXPECT_EQ(written.at(key), value) << key;
  // ... and nothing else but "model_type", "architectures" and "tie_word_embeddings".
  EXPECT_EQ(written.size(), every_field.size() + 3) << written.dump();
  EXPECT_EQ(c.seed, 18446744073709551615ULL);
  const std::string text = config_to_json_string(c);
  const ReformerConfig r = config_from_json_string(text);
  EXPECT_EQ(config_to_json_string(r), text);
  EXPECT_EQ(r.num_buckets, c.num_buckets);
  EXPECT_EQ(r.seed, c.seed);
  EXPECT_EQ(r.layer_norm_eps, c.layer_norm_eps);
  EXPECT_EQ(r.attn_layers, c.attn_layers);
  EXPECT_FALSE(r.axial_pos_embds);

  // num_buckets: auto is null, one value an integer.
  c.num_buckets = {};
  EXPECT_TRUE(nlohmann::json(c).at("num_buckets").is_null());
  EXPECT_TRUE(config_from_json(nlohmann::json(c)).num_buckets.empty());
  c.num_buckets = {8};
  EXPECT_EQ(nlohmann::json(c).at("num_buckets"), 8);
  EXPECT_EQ(nlohmann::json(c).get<ReformerConfig>().num_buckets, (std::vector<Index>{8}));
}

TEST(ConfigJson, ReadsTheFixturesHfConfigs) {
  const auto f = config_from_json(test::Fixture("lsh_attention_factorised").config());
  EXPECT_EQ(f.num_buckets, (std::vector<Index>{2, 4}));
  EXPECT_EQ(f.axial_pos_shape, (std::vector<Index>{4, 8}));
  EXPECT_NO_THROW(f.validate());
  const auto m = config_from_json(test::Fixture("model_lsh_3rounds").config());
  EXPECT_EQ(m.attn_layers, (std::vector<std::string>{"lsh", "local", "lsh"}));
  EXPECT_EQ(m.num_hashes, 3);
  EXPECT_EQ(m.hidden_act, "relu");
  EXPECT_EQ(m.vocab_size, 29);
  EXPECT_EQ(m.attention_head_size, 6);
  EXPECT_TRUE(m.is_decoder);
  EXPECT_EQ(m.layer_norm_eps, 1e-12);
  EXPECT_NO_THROW(m.validate());
  EXPECT_FALSE(config_from_json(test::Fixture("model_learned_positions").config()).axial_pos_embds);
}

TEST(ConfigJson, HfJsonWithOnlyChangedFieldsGetsHfDefaults) {
  const auto c = config_from_json(nlohmann::json::parse(
      R"({"model_type": "reformer", "is_decoder": true, "vocab_size": 100, "use_cache": true})"));
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.axial_pos_embds_dim, (std::vector<Index>{64, 192}));
  EXPECT_EQ(c.attn_layers.size(), 6u);
  EXPECT_TRUE(c.is_decoder);
  EXPECT_NO_THROW(c.validate());
}

void expect_config_error(const std::string& text, const std::string& needle) {
  try {
    (void)config_from_json_string(text);
    ADD_FAILURE() << "no ConfigError for " << text;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ConfigJson, WrongTypesAndInvalidConfigsAreConfigErrors) {
  expect_config_error("{\"hidden_size\": 2.5}", "field 'hidden_size' = 2.5 must be an integer");
  expect_config_error("{\"hidden_size\": \"128\"}", "'hidden_size' = \"128\"");
  expect_config_error("{\"attn_layers\": \"lsh\"}", "'attn_layers'");
  expect_config_error("{\"attn_layers\": [\"lsh\", 3]}", "'attn_layers'");
  expect_config_error("{\"num_buckets\": \"4\"}", "'num_buckets'");
  expect_config_error("{\"num_buckets\": [2, 4.5]}", "'num_buckets'");
  expect_config_error("{\"is_decoder\": 1}", "'is_decoder' = 1 must be true or false");
  expect_config_error("{\"seed\": -1}", "'seed'");
  expect_config_error("{\"layer_norm_eps\": null}", "'layer_norm_eps'");
  expect_config_error("{\"axial_pos_shape\": {\"a\": 1}}", "'axial_pos_shape'");
  expect_config_error("{\"hidden_size\": 9223372036854775808}", "'hidden_size'");
  expect_config_error("[1, 2]", "expected an object");
  expect_config_error("{\"vocab_size\": ", "not valid JSON");
  // Valid JSON, invalid config: validate() names the fields.
  expect_config_error("{\"axial_pos_embds_dim\": [10, 10]}", "axial_pos_embds_dim");
  expect_config_error("{\"num_buckets\": 3}", "num_buckets");
  expect_config_error("{\"attn_layers\": [\"lsh\", \"dense\"]}", "attn_layers[1] = 'dense'");
}

}  // namespace
}  // namespace reformer

namespace reformer {
namespace {

TEST(ConfigJson, LabelsAndClassifierDropoutReadAsHuggingFaceWritesThem) {
  // HF writes the label names, not their number, and null for an unset classifier dropout.
  const ReformerConfig c = config_from_json(nlohmann::json::parse(
      R"({"model_type": "reformer", "id2label": {"0": "neg", "1": "neutral", "2": "pos"},
          "classifier_dropout": null})"));
  EXPECT_EQ(c.num_labels, 3);
  EXPECT_LT(c.classifier_dropout, 0.0);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_TRUE(nlohmann::json(c).at("classifier_dropout").is_null());
  EXPECT_EQ(config_from_json(nlohmann::json::parse(R"({"num_labels": 7})")).num_labels, 7);
  EXPECT_THROW(config_from_json(nlohmann::json::parse(R"({"classifier_dropout": "x"})")),
               ConfigError);
}

}  // namespace
}  // namespace reformer
