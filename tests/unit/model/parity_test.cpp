// Reference parity with the Hugging Face ReformerModelWithLMHead (float64 fixtures, see
// tests/data/README.md): with HF's parameters and replayed buckets, the logits, the loss
// and every parameter gradient agree within 1e-9 relative, on both backprop paths.
#include "reformer/model/reformer_lm.hpp"

#include "support/compare.hpp"
#include "support/fixture.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace reformer {
namespace {

// The HF ReformerConfig fields the fixtures use (io/config_json.hpp covers all of them; the
// test keeps its own small reader so it depends on the model only).
ReformerConfig config_of(const nlohmann::json& j) {
  ReformerConfig c;
  c.vocab_size = j.at("vocab_size").get<Index>();
  c.hidden_size = j.at("hidden_size").get<Index>();
  c.num_attention_heads = j.at("num_attention_heads").get<Index>();
  c.attention_head_size = j.at("attention_head_size").get<Index>();
  c.feed_forward_size = j.at("feed_forward_size").get<Index>();
  c.attn_layers = j.at("attn_layers").get<std::vector<std::string>>();
  c.lsh_attn_chunk_length = j.at("lsh_attn_chunk_length").get<Index>();
  c.local_attn_chunk_length = j.at("local_attn_chunk_length").get<Index>();
  const auto& nb = j.at("num_buckets");
  c.num_buckets =
      nb.is_array() ? nb.get<std::vector<Index>>() : std::vector<Index>{nb.get<Index>()};
  c.num_hashes = j.at("num_hashes").get<Index>();
  c.axial_pos_shape = j.at("axial_pos_shape").get<std::vector<Index>>();
  c.axial_pos_embds_dim = j.at("axial_pos_embds_dim").get<std::vector<Index>>();
  c.max_position_embeddings = j.at("max_position_embeddings").get<Index>();
  c.hidden_act = j.at("hidden_act").get<std::string>();
  c.layer_norm_eps = j.at("layer_norm_eps").get<double>();
  c.is_decoder = j.at("is_decoder").get<bool>();
  c.hidden_dropout_prob = j.at("hidden_dropout_prob").get<double>();
  c.lsh_attention_probs_dropout_prob = j.at("lsh_attention_probs_dropout_prob").get<double>();
  c.local_attention_probs_dropout_prob = j.at("local_attention_probs_dropout_prob").get<double>();
  c.lsh_num_chunks_before = j.at("lsh_num_chunks_before").get<Index>();
  c.lsh_num_chunks_after = j.at("lsh_num_chunks_after").get<Index>();
  c.local_num_chunks_before = j.at("local_num_chunks_before").get<Index>();
  c.local_num_chunks_after = j.at("local_num_chunks_after").get<Index>();
  c.axial_pos_embds = j.value("axial_pos_embds", true);
  c.chunk_size_lm_head = 5;  // several loss chunks, one partial
  c.chunk_size_feed_forward = 7;
  return c;
}

std::vector<Token> tokens_of(const test::Fixture& fx) {
  std::vector<Token> t;
  for (std::int64_t v : fx.ints("tokens")) t.push_back(static_cast<Token>(v));
  return t;
}

BucketRecord buckets_of(const test::Fixture& fx, const ReformerConfig& cfg) {
  BucketRecord b;
  b.replay = true;
  b.layers.resize(static_cast<std::size_t>(cfg.num_layers()));
  for (Index l = 0; l < cfg.num_layers(); ++l) {
    const std::string name = "buckets." + std::to_string(l);
    if (fx.has(name)) b.layers[static_cast<std::size_t>(l)] = fx.buckets(name);
  }
  return b;
}

void check_parity(const std::string& fixture, BackpropMode mode) {
  const test::Fixture fx(fixture);
  const ReformerConfig cfg = config_of(fx.config());
  ReformerLM<double> model(cfg, mode);
  EXPECT_EQ(fx.load_params(model.parameters()),
            static_cast<std::size_t>(model.parameters().num_slots()));
  const std::vector<Token> tokens = tokens_of(fx);
  const Index batch = fx.batch();

  // Logits (inference path) with the HF buckets.
  BucketRecord buckets = buckets_of(fx, cfg);
  const Matrix<double> logits = model.logits(tokens, batch, buckets);
  EXPECT_LT(test::relative_error(logits, fx.activations("logits")), 1e-9) << fixture;

  // Loss and gradients (training path) with the HF buckets.
  Tape<double> tape;
  tape.buckets = buckets_of(fx, cfg);
  const double loss = model.forward_loss(tokens, batch, tape, 0);
  const double ref = fx.values("loss")[0];
  EXPECT_LT(std::abs(loss - ref) / std::abs(ref), 1e-9) << fixture << ": " << loss << " vs " << ref;
  model.zero_grad();
  model.backward(tape);
  const test::GradError err = fx.max_grad_error(model.parameters());
  EXPECT_LT(err.error, 1e-9) << fixture << ": " << err;
  EXPECT_EQ(err.compared, static_cast<std::size_t>(model.parameters().num_slots()));
}

TEST(ModelParity, LocalLshReversible) {
  check_parity("model_local_lsh", BackpropMode::kReversible);
}
TEST(ModelParity, LocalLshStoredActivations) {
  check_parity("model_local_lsh", BackpropMode::kStoredActivations);
}
TEST(ModelParity, LshThreeRoundsReversible) {
  check_parity("model_lsh_3rounds", BackpropMode::kReversible);
}
TEST(ModelParity, LshThreeRoundsStoredActivations) {
  check_parity("model_lsh_3rounds", BackpropMode::kStoredActivations);
}
TEST(ModelParity, LearnedPositionsReversible) {
  check_parity("model_learned_positions", BackpropMode::kReversible);
}

TEST(ModelParity, ParameterNamesFollowTheHuggingFaceStateDict) {
  const test::Fixture fx("model_lsh_3rounds");
  ReformerLM<double> model(config_of(fx.config()));
  std::vector<std::string> expected;
  for (const auto& name : fx.file().names()) {
    if (name.rfind("param.", 0) == 0 && name != "param.lm_head.decoder.bias") {
      expected.push_back(name.substr(6));
    }
  }
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters()) names.push_back(p.name());
  std::vector<std::string> sorted_names = names, sorted_expected = expected;
  std::sort(sorted_names.begin(), sorted_names.end());
  std::sort(sorted_expected.begin(), sorted_expected.end());
  EXPECT_EQ(sorted_names, sorted_expected);
  // State-dict order: embeddings, layer by layer, final LayerNorm, LM head.
  EXPECT_EQ(names.front(), "reformer.embeddings.word_embeddings.weight");
  EXPECT_EQ(names[3], "reformer.encoder.layers.0.attention.layer_norm.weight");
  EXPECT_EQ(names.back(), "lm_head.decoder.weight");
  EXPECT_EQ(model.find_parameter("lm_head.decoder.bias"), model.find_parameter("lm_head.bias"));
}

}  // namespace
}  // namespace reformer
