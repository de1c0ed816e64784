// Checkpoints of the encoder models: the model class is stored in the config's "architectures"
// (as HF's config.json), the parameter layout of each class is known without building it, a
// file restores only into a model of its own class, and files without the field are language
// models.
#include "reformer/io/checkpoint.hpp"
#include "reformer/model/encoder_models.hpp"
#include "reformer/model/parameter_layout.hpp"
#include "reformer/model/reformer_lm.hpp"

#include "support/compare.hpp"
#include "support/config.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace reformer::io {
namespace encoder_checkpoint_test {

using test::expect_throw_with;

ReformerConfig encoder_config() {
  ReformerConfig c = test::SmallConfig().lsh_local_model().vocab(11).seed(3);
  c.is_decoder = false;
  c.lsh_num_chunks_after = 1;
  c.num_labels = 4;
  return c;
}

template <class Model>
void expect_layout_matches(const ReformerConfig& c) {
  Model model(c);
  const auto layout = reformer_parameter_layout(c, Model::kArchitecture);
  ASSERT_EQ(static_cast<Index>(layout.size()), model.parameters().num_slots());
  for (SlotId id = 0; id < model.parameters().num_slots(); ++id) {
    const ParamSlot& slot = model.parameters().slot(id);
    EXPECT_EQ(layout[static_cast<std::size_t>(id)].name, slot.name);
    EXPECT_EQ(layout[static_cast<std::size_t>(id)].shape, slot.shape) << slot.name;
  }
}

TEST(EncoderParameterLayout, ListsExactlyWhatEachModelRegisters) {
  expect_layout_matches<ReformerForMaskedLM<float>>(encoder_config());
  expect_layout_matches<ReformerForSequenceClassification<float>>(encoder_config());
  expect_layout_matches<ReformerForQuestionAnswering<float>>(encoder_config());
  for (const Architecture a : kArchitectures) {
    EXPECT_EQ(architecture_from_name(architecture_name(a)), a);
  }
  EXPECT_FALSE(architecture_from_name("ReformerModel").has_value());
}

class EncoderCheckpoint : public test::TempDirTest {
 protected:
  EncoderCheckpoint() : TempDirTest("encoder_ckpt_") {}

  /// Saves a perturbed model, opens the file, restores it into a fresh model of the stored
  /// config and compares parameters and logits bitwise.
  template <class Model>
  void round_trip(const std::string& name) {
    Model model(encoder_config());
    model.parameters().values().array() += 0.125f;
    Adam<float> opt(model.parameters(), AdamOptions::adam(1e-3));
    reformer::io::Checkpoint::save(path(name), model, opt);

    const reformer::io::Checkpoint ck = reformer::io::Checkpoint::open(path(name));
    EXPECT_EQ(ck.architecture(), Model::kArchitecture);
    EXPECT_EQ(ck.config().num_labels, 4);
    EXPECT_FALSE(ck.config().is_decoder);
    Model restored(ck.config());
    Adam<float> restored_opt(restored.parameters(), AdamOptions::adam(1e-3));
    ck.restore(restored, restored_opt);
    EXPECT_TRUE(test::bitwise_equal(restored.parameters().values(), model.parameters().values()));

    const std::vector<Token> tokens = test::cycling_tokens(2 * 16, 7, 1, 11);
    const AttentionMask mask = AttentionMask::from_lengths({16, 11}, 16);
    EXPECT_TRUE(restored.logits(tokens, 2, mask) == model.logits(tokens, 2, mask));
  }
};

TEST_F(EncoderCheckpoint, EachModelRoundTrips) {
  round_trip<ReformerForMaskedLM<float>>("mlm.safetensors");
  round_trip<ReformerForSequenceClassification<float>>("cls.safetensors");
  round_trip<ReformerForQuestionAnswering<float>>("qa.safetensors");
}

TEST_F(EncoderCheckpoint, RestoresOnlyIntoItsOwnClass) {
  ReformerForSequenceClassification<float> classifier(encoder_config());
  reformer::io::Checkpoint::save(path("cls.safetensors"), classifier);
  const reformer::io::Checkpoint ck = reformer::io::Checkpoint::open(path("cls.safetensors"));
  ReformerForMaskedLM<float> mlm(ck.config());
  const Vector<float> before = mlm.parameters().values();
  expect_throw_with<IoError>([&] { ck.restore(mlm); },
                             {"cls.safetensors", "holds a ReformerForSequenceClassification",
                              "not a ReformerForMaskedLM"});
  EXPECT_TRUE(test::bitwise_equal(mlm.parameters().values(), before));  // unchanged
}

TEST_F(EncoderCheckpoint, FilesWithoutArchitecturesAreLanguageModels) {
  ReformerLM<float> lm(test::SmallConfig().lsh_local_model().vocab(11));
  nlohmann::json config = nlohmann::json::parse(config_to_json_string(lm.config()));
  config.erase("architectures");
  save_parameters(path("old.safetensors"), lm.parameters(), config.dump());
  EXPECT_EQ(reformer::io::Checkpoint::open(path("old.safetensors")).architecture(),
            Architecture::kLanguageModel);
}

TEST_F(EncoderCheckpoint, ArchitectureAndTensorsMustAgree) {
  ReformerForSequenceClassification<float> classifier(encoder_config());

  // A classifier's tensors under a config that names the masked LM: its head is missing.
  save_parameters(path("mixed.safetensors"), classifier.parameters(),
                  config_to_json_string(classifier.config(), "ReformerForMaskedLM"));
  expect_throw_with<IoError>([&] { reformer::io::Checkpoint::open(path("mixed.safetensors")); },
                             {"no tensor 'lm_head.bias'", "ReformerForMaskedLM"});

  // An unknown class name.
  save_parameters(path("unknown.safetensors"), classifier.parameters(),
                  config_to_json_string(classifier.config(), "ReformerForTokenClassification"));
  expect_throw_with<IoError>([&] { reformer::io::Checkpoint::open(path("unknown.safetensors")); },
                             {"ReformerForTokenClassification", "not one of"});
}

}  // namespace encoder_checkpoint_test
}  // namespace reformer::io
