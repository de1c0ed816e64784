// The README's "Encoder models" example, compiled and checked here so the README stays true.
// The code between the readme markers is copied verbatim into README.md.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

// clang-format off
// [readme-encoder-begin]
#include "reformer/reformer.hpp"

using namespace reformer;

// Two sequences of 128 token ids, one after the other; the second has 90 real tokens.
Matrix<float> classify(const std::vector<Token>& tokens, double& loss) {
  ReformerConfig config;
  config.is_decoder = false;  // bidirectional; look-ahead chunks allowed
  config.lsh_num_chunks_after = config.local_num_chunks_after = 1;
  config.num_labels = 10;
  ReformerForSequenceClassification<float> model(config);

  const auto mask = AttentionMask::from_lengths({128, 90}, /*length=*/128);
  const std::vector<Token> labels = {3, 7};
  model.zero_grad();
  loss = model.train_step(tokens, /*batch=*/2, mask, labels);  // + the recomputing backward
  return model.logits(tokens, /*batch=*/2, mask);              // 10 x 2
}
// [readme-encoder-end]
// clang-format on

TEST(Readme, EncoderExampleTrainsAndClassifies) {
  std::vector<Token> tokens(256);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<Token>(1 + i % 50);
  double loss = 0;
  const Matrix<float> logits = classify(tokens, loss);
  EXPECT_EQ(logits.rows(), 10);
  EXPECT_EQ(logits.cols(), 2);
  EXPECT_TRUE(logits.allFinite());
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 0.0);  // cross-entropy of 10 classes at initialisation: about log(10)
  EXPECT_LT(loss, 5.0);

  // What stands at the padded positions of the second sequence changes nothing.
  std::vector<Token> repadded = tokens;
  for (std::size_t i = 128 + 90; i < 256; ++i) repadded[i] = 0;
  double loss2 = 0;
  EXPECT_EQ(classify(repadded, loss2), logits);
  EXPECT_EQ(loss2, loss);
}
