// The umbrella header compiles on its own (in its own translation unit) and is enough for a
// minimal training step.
#include "reformer/reformer.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace {

TEST(Umbrella, IsSelfSufficientForATrainingStep) {
  reformer::ReformerConfig cfg;
  cfg.vocab_size = 16;
  cfg.hidden_size = 8;
  cfg.attention_head_size = 4;
  cfg.feed_forward_size = 16;
  cfg.attn_layers = {"local", "lsh"};
  cfg.lsh_attn_chunk_length = 4;
  cfg.local_attn_chunk_length = 4;
  cfg.axial_pos_shape = {4, 4};
  cfg.axial_pos_embds_dim = {4, 4};
  cfg.validate();
  reformer::ReformerLM<float> model(cfg);
  reformer::Adam<float> adam(model.parameters());
  const std::vector<reformer::Token> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  model.zero_grad();
  const double loss = model.train_step(tokens, 1, 0);
  adam.step(model.parameters());
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 0.0);
  EXPECT_STRNE(reformer::version_string(), "");
}

}  // namespace
