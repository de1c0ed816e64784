// The ListOps generator (examples/common/listops.hpp): values checked by an independent
// evaluator and by hand, lengths, depth, determinism and disjoint splits.
#include "common/listops.hpp"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace reformer::examples {
namespace {

using namespace listops;

Token digit(int v) { return static_cast<Token>(kDigit0 + v); }

TEST(ListOps, OperatorsByHand) {
  EXPECT_EQ(apply_operator(kMin, {4, 2, 9}), 2);
  EXPECT_EQ(apply_operator(kMax, {4, 2, 9}), 9);
  EXPECT_EQ(apply_operator(kMed, {4, 2, 9}), 4);
  EXPECT_EQ(apply_operator(kMed, {1, 8, 2, 9}), 5);  // (2 + 8) / 2
  EXPECT_EQ(apply_operator(kMed, {1, 4}), 2);        // 2.5 rounded down
  EXPECT_EQ(apply_operator(kSumMod, {7, 8, 9}), 4);  // 24 mod 10
  // [CLS] [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]  ->  5
  const std::vector<Token> seq = {kCls,     kMax,     digit(4), digit(3), kMin,   digit(2),
                                  digit(3), kClose,   digit(1), digit(0), kMed,   digit(1),
                                  digit(5), digit(8), digit(9), digit(2), kClose, kClose};
  EXPECT_EQ(evaluate(seq), 5);
  EXPECT_EQ(to_string(seq), "[CLS] [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]");
  EXPECT_THROW(evaluate(std::vector<Token>{kCls, kMax, digit(1)}), InvalidArgument);
  EXPECT_THROW(evaluate(std::vector<Token>{kCls, digit(1), kClose}), InvalidArgument);
}

TEST(ListOps, ExamplesAreValidLongAndLabelled) {
  ListOpsConfig cfg;
  cfg.min_length = 40;
  cfg.max_length = 200;
  const ListOpsGenerator gen(cfg, 7);
  std::set<int> labels;
  Index max_depth_seen = 0;
  for (const ListOpsExample& ex : gen.examples(ListOpsGenerator::kTrain, 0, 300)) {
    const Index n = static_cast<Index>(ex.tokens.size());
    ASSERT_GE(n, 40);
    ASSERT_LE(n, 200);
    ASSERT_EQ(ex.tokens[0], kCls);
    ASSERT_EQ(evaluate(ex.tokens), ex.label) << to_string(ex.tokens);
    labels.insert(ex.label);
    Index depth = 0;
    for (Token t : ex.tokens) {
      if (t >= kMin && t <= kSumMod) max_depth_seen = std::max(max_depth_seen, ++depth);
      if (t == kClose) --depth;
    }
  }
  EXPECT_EQ(labels.size(), 10u);
  EXPECT_LE(max_depth_seen, cfg.max_depth - 1);  // operators stop above max_depth
  EXPECT_GE(max_depth_seen, 4);
}

TEST(ListOps, DeterministicAndSplitsDiffer) {
  ListOpsConfig cfg;
  cfg.min_length = 20;
  cfg.max_length = 100;
  const ListOpsGenerator a(cfg, 3), b(cfg, 3), c(cfg, 4);
  const auto train = a.examples(ListOpsGenerator::kTrain, 10, 5);
  const auto again = b.examples(ListOpsGenerator::kTrain, 10, 5);
  for (std::size_t i = 0; i < train.size(); ++i) {
    EXPECT_EQ(train[i].tokens, again[i].tokens);
    EXPECT_EQ(train[i].tokens, a.example(ListOpsGenerator::kTrain, 10 + Index(i)).tokens);
  }
  EXPECT_NE(train[0].tokens, a.example(ListOpsGenerator::kValidation, 10).tokens);
  EXPECT_NE(train[0].tokens, c.example(ListOpsGenerator::kTrain, 10).tokens);
}

TEST(ListOps, LraLengthsAndErrors) {
  const ListOpsGenerator lra(ListOpsConfig{}, 1);  // LRA: lengths in [500, 2000]
  for (const ListOpsExample& ex : lra.examples(ListOpsGenerator::kValidation, 0, 3)) {
    EXPECT_GE(ex.tokens.size(), 500u);
    EXPECT_LE(ex.tokens.size(), 2000u);
    EXPECT_EQ(evaluate(ex.tokens), ex.label);
  }
  ListOpsConfig bad;
  bad.min_length = 300;
  bad.max_length = 200;
  EXPECT_THROW(ListOpsGenerator(bad, 1), InvalidArgument);
  ListOpsConfig shallow;  // depth 2: at most 1 + 1 + 10 + 1 tokens
  shallow.max_depth = 2;
  shallow.min_length = 50;
  shallow.max_length = 60;
  shallow.max_attempts = 50;
  EXPECT_THROW(ListOpsGenerator(shallow, 1).example(ListOpsGenerator::kTrain, 0), InvalidArgument);
}

}  // namespace
}  // namespace reformer::examples
