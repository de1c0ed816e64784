// ReformerConfig::validate: one case per rule, each checking the ConfigError names the
// offending field(s) and values.
#include "reformer/model/config.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace reformer {
namespace {

struct Rule {
  std::string name;
  std::function<void(ReformerConfig&)> mutate;
  std::vector<std::string> message_parts;  // every one must appear in the error message
};

std::ostream& operator<<(std::ostream& os, const Rule& r) { return os << r.name; }

const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<Rule> rules() {
  return {
      {"VocabPositive", [](ReformerConfig& c) { c.vocab_size = 0; }, {"vocab_size = 0"}},
      {"VocabFitsInt32",
       [](ReformerConfig& c) { c.vocab_size = (Index{1} << 31) + 1; },
       {"vocab_size = 2147483649", "int32"}},
      {"HiddenPositive", [](ReformerConfig& c) { c.hidden_size = -3; }, {"hidden_size = -3"}},
      {"HeadsPositive",
       [](ReformerConfig& c) { c.num_attention_heads = 0; },
       {"num_attention_heads = 0"}},
      {"HeadSizeNonNegative",
       [](ReformerConfig& c) { c.attention_head_size = -1; },
       {"attention_head_size = -1"}},
      {"AutoHeadSizeNeedsDivisibleHidden",
       [](ReformerConfig& c) {
         c.attention_head_size = 0;
         c.num_attention_heads = 3;
       },
       {"attention_head_size = 0", "hidden_size = 128", "num_attention_heads = 3"}},
      {"FeedForwardPositive",
       [](ReformerConfig& c) { c.feed_forward_size = 0; },
       {"feed_forward_size = 0"}},
      {"KnownActivation",
       [](ReformerConfig& c) { c.hidden_act = "mish"; },
       {"hidden_act = 'mish'", "gelu_new"}},
      {"LayersNotEmpty", [](ReformerConfig& c) { c.attn_layers.clear(); }, {"attn_layers"}},
      {"KnownLayerKind",
       [](ReformerConfig& c) {
         c.attn_layers = {"lsh", "Local"};
       },
       {"attn_layers[1] = 'Local'"}},
      {"LshChunkPositive",
       [](ReformerConfig& c) { c.lsh_attn_chunk_length = 0; },
       {"lsh_attn_chunk_length = 0"}},
      {"LocalChunkPositive",
       [](ReformerConfig& c) { c.local_attn_chunk_length = 0; },
       {"local_attn_chunk_length = 0"}},
      {"LshChunksBeforeNonNegative",
       [](ReformerConfig& c) { c.lsh_num_chunks_before = -1; },
       {"lsh_num_chunks_before = -1"}},
      {"LshChunksAfterNonNegative",
       [](ReformerConfig& c) { c.lsh_num_chunks_after = -2; },
       {"lsh_num_chunks_after = -2"}},
      {"LocalChunksBeforeNonNegative",
       [](ReformerConfig& c) { c.local_num_chunks_before = -1; },
       {"local_num_chunks_before = -1"}},
      {"LocalChunksAfterNonNegative",
       [](ReformerConfig& c) { c.local_num_chunks_after = -1; },
       {"local_num_chunks_after = -1"}},
      {"HashesPositive", [](ReformerConfig& c) { c.num_hashes = 0; }, {"num_hashes = 0"}},
      {"OddBuckets", [](ReformerConfig& c) { c.num_buckets = {7}; }, {"num_buckets = (7)", "even"}},
      {"OddBucketFactor",
       [](ReformerConfig& c) {
         c.num_buckets = {4, 3};
       },
       {"num_buckets = (4, 3)", "entry 1 = 3"}},
      {"TooFewBuckets", [](ReformerConfig& c) { c.num_buckets = {0}; }, {"num_buckets = (0)"}},
      {"TooManyBuckets",
       [](ReformerConfig& c) {
         c.num_buckets = {1 << 16, 1 << 16};
       },
       {"num_buckets = (65536, 65536)", "2^30"}},
      {"HiddenDropoutRange",
       [](ReformerConfig& c) { c.hidden_dropout_prob = 1.0; },
       {"hidden_dropout_prob = 1"}},
      {"LshDropoutRange",
       [](ReformerConfig& c) { c.lsh_attention_probs_dropout_prob = -0.1; },
       {"lsh_attention_probs_dropout_prob = -0.1"}},
      {"LocalDropoutNotNaN",
       [](ReformerConfig& c) { c.local_attention_probs_dropout_prob = kNaN; },
       {"local_attention_probs_dropout_prob = nan"}},
      {"AxialShapeHasTwoEntries",
       [](ReformerConfig& c) {
         c.axial_pos_shape = {8, 8, 8};
       },
       {"axial_pos_shape = (8, 8, 8)", "2 entries"}},
      {"AxialDimsHaveTwoEntries",
       [](ReformerConfig& c) { c.axial_pos_embds_dim = {128}; },
       {"axial_pos_embds_dim = (128)", "2 entries"}},
      {"AxialShapePositive",
       [](ReformerConfig& c) {
         c.axial_pos_shape = {64, 0};
       },
       {"axial_pos_shape = (64, 0)", "entry 1 = 0"}},
      {"AxialDimsPositive",
       [](ReformerConfig& c) {
         c.axial_pos_embds_dim = {0, 128};
       },
       {"axial_pos_embds_dim = (0, 128)", "entry 0 = 0"}},
      {"AxialDimsSumToHidden",
       [](ReformerConfig& c) {
         c.axial_pos_embds_dim = {64, 32};
       },
       {"axial_pos_embds_dim = (64, 32)", "sums to 96", "hidden_size = 128"}},
      {"AxialShapeNotHuge",
       [](ReformerConfig& c) {
         c.axial_pos_shape = {Index{1} << 20, Index{1} << 20};
       },
       {"axial_pos_shape = (1048576, 1048576)", "2^31"}},
      {"MaxPositionsPositive",
       [](ReformerConfig& c) { c.max_position_embeddings = 0; },
       {"max_position_embeddings = 0"}},
      {"LayerNormEpsPositive",
       [](ReformerConfig& c) { c.layer_norm_eps = 0.0; },
       {"layer_norm_eps = 0"}},
      {"FeedForwardChunkNonNegative",
       [](ReformerConfig& c) { c.chunk_size_feed_forward = -1; },
       {"chunk_size_feed_forward = -1"}},
      {"LmHeadChunkNonNegative",
       [](ReformerConfig& c) { c.chunk_size_lm_head = -4; },
       {"chunk_size_lm_head = -4"}},
      {"InitializerRangeFinite",
       [](ReformerConfig& c) { c.initializer_range = std::numeric_limits<double>::infinity(); },
       {"initializer_range = inf"}},
      {"NumHashesWithinTheLshLimit",
       [](ReformerConfig& c) { c.num_hashes = 17; },
       {"num_hashes = 17", "[1, 16]"}},
      {"CausalRefusesLshLookAhead",
       [](ReformerConfig& c) { c.lsh_num_chunks_after = 1; },
       {"lsh_num_chunks_after = 1", "is_decoder = true"}},
      {"CausalRefusesLocalLookAhead",
       [](ReformerConfig& c) { c.local_num_chunks_after = 2; },
       {"local_num_chunks_after = 2", "is_decoder = true"}},
      {"PadTokenInVocab",
       [](ReformerConfig& c) { c.pad_token_id = 320; },
       {"pad_token_id = 320", "vocab_size = 320"}},
      {"PadTokenNonNegative",
       [](ReformerConfig& c) { c.pad_token_id = -1; },
       {"pad_token_id = -1"}},
      {"NumLabelsPositive", [](ReformerConfig& c) { c.num_labels = 0; }, {"num_labels = 0"}},
      {"NumLabelsBounded",
       [](ReformerConfig& c) { c.num_labels = (Index{1} << 20) + 1; },
       {"num_labels = 1048577"}},
      {"ClassifierDropoutBelowOne",
       [](ReformerConfig& c) { c.classifier_dropout = 1.0; },
       {"classifier_dropout = 1"}},
      {"ClassifierDropoutFinite",
       [](ReformerConfig& c) { c.classifier_dropout = kNaN; },
       {"classifier_dropout = nan"}},
      {"ChunkLengthsLcmBounded",
       [](ReformerConfig& c) {
         c.lsh_attn_chunk_length = (Index{1} << 30) + 1;
         c.local_attn_chunk_length = (Index{1} << 30) - 1;
         c.lsh_num_chunks_before = c.local_num_chunks_before = 0;
       },
       {"least common multiple"}},
      {"AxialNormStdNonNegative",
       [](ReformerConfig& c) { c.axial_norm_std = -1.0; },
       {"axial_norm_std = -1"}},
  };
}

class ConfigRule : public ::testing::TestWithParam<Rule> {};

TEST_P(ConfigRule, IsRejectedWithANamedField) {
  ReformerConfig cfg;
  ASSERT_NO_THROW(cfg.validate());
  GetParam().mutate(cfg);
  try {
    cfg.validate();
    FAIL() << "validate() accepted the config";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("ReformerConfig::validate: ", 0), 0u) << msg;
    for (const auto& part : GetParam().message_parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' missing in: " << msg;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Validate, ConfigRule, ::testing::ValuesIn(rules()),
                         [](const ::testing::TestParamInfo<Rule>& info) {
                           return info.param.name;
                         });

TEST(Config, DefaultsAreValidAndDerivedValuesFollow) {
  ReformerConfig cfg;
  EXPECT_NO_THROW(cfg.validate());
  EXPECT_EQ(cfg.num_layers(), 4);
  EXPECT_EQ(cfg.layer_kind(1), LayerKind::kLsh);
  EXPECT_EQ(cfg.layer_kind(0), LayerKind::kLocal);
  EXPECT_EQ(cfg.activation(), Activation::kRelu);
  EXPECT_EQ(cfg.max_length(), 64 * 64);
  cfg.attention_head_size = 0;
  cfg.num_attention_heads = 4;
  EXPECT_EQ(cfg.head_size(), 32);
  EXPECT_EQ(cfg.all_head_size(), 128);
  cfg.axial_pos_embds = false;
  cfg.max_position_embeddings = 100;
  EXPECT_EQ(cfg.max_length(), 100);
}

TEST(Config, LearnedPositionsIgnoreTheAxialFields) {
  ReformerConfig cfg;
  cfg.axial_pos_embds = false;
  cfg.axial_pos_embds_dim = {1, 2};  // would not sum to hidden_size
  EXPECT_NO_THROW(cfg.validate());
}

TEST(Config, HeadsTimesHeadSizeMayDifferFromHidden) {
  // As in Hugging Face: W_o maps H * Dh back to hidden_size.
  ReformerConfig cfg;
  cfg.num_attention_heads = 3;
  cfg.attention_head_size = 20;
  EXPECT_NO_THROW(cfg.validate());
  EXPECT_EQ(cfg.all_head_size(), 60);
}

TEST(Config, FactorisedAndAutoBucketsAreValid) {
  ReformerConfig cfg;
  cfg.num_buckets = {};
  EXPECT_NO_THROW(cfg.validate());
  cfg.num_buckets = {8, 16};
  EXPECT_NO_THROW(cfg.validate());
  EXPECT_EQ(cfg.total_buckets(), 128);
}

TEST(Config, LayerKindOutOfRangeThrows) {
  ReformerConfig cfg;
  EXPECT_THROW(cfg.layer_kind(4), InvalidArgument);
}

}  // namespace
}  // namespace reformer

namespace reformer {
namespace {

TEST(Config, LookAheadIsRefusedOnlyForTheKindsACausalModelUses) {
  ReformerConfig c;
  c.attn_layers = {"local", "local"};
  c.lsh_num_chunks_after = 1;  // no LSH layer: as HF, not refused
  EXPECT_NO_THROW(c.validate());
  c.is_decoder = false;
  c.local_num_chunks_after = 1;
  EXPECT_NO_THROW(c.validate());  // an encoder looks ahead
}

TEST(Config, PaddedLengthIsTheNextMultipleOfTheChunkLengthsLcm) {
  ReformerConfig c;
  c.attn_layers = {"lsh", "local"};
  c.lsh_attn_chunk_length = 16;
  c.local_attn_chunk_length = 12;
  EXPECT_EQ(c.chunk_length_lcm(), 48);
  EXPECT_EQ(c.padded_length(50), 96);
  EXPECT_EQ(c.padded_length(48), 48);
  EXPECT_EQ(c.padded_length(96), 96);
  EXPECT_EQ(c.padded_length(13), 48);  // longer than the shortest chunk (12)
  EXPECT_EQ(c.padded_length(12), 12);  // not longer: HF does not pad
  EXPECT_EQ(c.padded_length(5), 5);
  c.attn_layers = {"lsh", "full"};  // only the kinds in use count
  EXPECT_EQ(c.chunk_length_lcm(), 16);
  EXPECT_EQ(c.padded_length(50), 64);
  c.attn_layers = {"full"};
  EXPECT_EQ(c.chunk_length_lcm(), 1);
  EXPECT_EQ(c.padded_length(50), 50);
}

}  // namespace
}  // namespace reformer
