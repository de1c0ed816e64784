// mask_tokens: BERT's 15% / 80-10-10 rule at a fixed seed (statistics), padding and special
// tokens never selected, determinism, errors.
#include "reformer/model/masked_lm.hpp"

#include "support/errors.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <vector>

namespace reformer {
namespace {

MaskingConfig bert_config() {
  MaskingConfig c;
  c.vocab_size = 1000;
  c.mask_token = 3;
  c.special_tokens = {0, 1, 2};
  return c;
}

// Tokens in [10, 1000) so that neither the mask id nor a special id occurs in the input.
std::vector<Token> plain_tokens(Index n) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  const Rng rng(77);
  for (Index i = 0; i < n; ++i) {
    t[static_cast<std::size_t>(i)] =
        static_cast<Token>(10 + rng.below(static_cast<std::uint64_t>(i), 990));
  }
  return t;
}

TEST(MaskTokens, FollowsTheFifteenEightyTenTenRule) {
  const Index batch = 8, length = 25000, n = batch * length;
  const std::vector<Token> tokens = plain_tokens(n);
  const MaskedBatch m = mask_tokens(tokens, batch, nullptr, bert_config(), Rng(2024));
  Index selected = 0, to_mask = 0, kept = 0, changed = 0;
  for (Index i = 0; i < n; ++i) {
    const auto s = static_cast<std::size_t>(i);
    if (m.labels[s] < 0) {
      EXPECT_EQ(m.labels[s], -100);
      EXPECT_EQ(m.tokens[s], tokens[s]);
      continue;
    }
    ++selected;
    EXPECT_EQ(m.labels[s], tokens[s]);
    if (m.tokens[s] == 3) {
      ++to_mask;
    } else if (m.tokens[s] == tokens[s]) {
      ++kept;  // a random draw equal to the original also lands here (1 in 1000)
    } else {
      ++changed;
    }
  }
  EXPECT_EQ(selected, m.selected);
  // Binomial tolerances of about 4 standard deviations.
  const double p = static_cast<double>(selected) / static_cast<double>(n);
  EXPECT_NEAR(p, 0.15, 4 * std::sqrt(0.15 * 0.85 / static_cast<double>(n)));
  const double sel = static_cast<double>(selected);
  const double sd80 = 4 * std::sqrt(0.8 * 0.2 / sel), sd10 = 4 * std::sqrt(0.1 * 0.9 / sel);
  EXPECT_NEAR(to_mask / sel, 0.8, sd80);
  EXPECT_NEAR(changed / sel, 0.1 * 0.999, sd10);
  EXPECT_NEAR(kept / sel, 0.1 + 0.1 * 0.001, sd10);
  // Chi-square of the three outcomes against 80 / 10 / 10 (2 degrees of freedom, 99.9%: 13.8).
  const double expect[3] = {0.8 * sel, 0.1 * 0.999 * sel, (0.1 + 0.0001) * sel};
  const double seen[3] = {double(to_mask), double(changed), double(kept)};
  double chi2 = 0;
  for (int k = 0; k < 3; ++k) chi2 += (seen[k] - expect[k]) * (seen[k] - expect[k]) / expect[k];
  EXPECT_LT(chi2, 13.8);
}

TEST(MaskTokens, RandomReplacementsCoverTheVocabulary) {
  MaskingConfig c = bert_config();
  c.vocab_size = 20;
  c.mask_fraction = 0.0;
  c.random_fraction = 1.0;
  c.probability = 1.0;
  c.special_tokens.clear();
  const std::vector<Token> tokens(4000, 5);
  const MaskedBatch m = mask_tokens(tokens, 1, nullptr, c, Rng(3));
  std::vector<int> seen(20, 0);
  for (Token t : m.tokens) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 20);
    ++seen[static_cast<std::size_t>(t)];
  }
  for (int k : seen) EXPECT_GT(k, 120);  // 200 expected each
}

TEST(MaskTokens, NeverSelectsPaddingOrSpecialTokens) {
  const Index batch = 3, length = 200;
  std::vector<Token> tokens = plain_tokens(batch * length);
  const std::vector<Index> lengths = {200, 120, 7};
  const AttentionMask mask = AttentionMask::from_lengths(lengths, length);
  for (Index b = 0; b < batch; ++b) {
    tokens[static_cast<std::size_t>(b * length)] = 1;  // a CLS-like special token first
    for (Index t = lengths[static_cast<std::size_t>(b)]; t < length; ++t) {
      tokens[static_cast<std::size_t>(b * length + t)] = 0;  // pad
    }
  }
  MaskingConfig c = bert_config();
  c.probability = 0.9;  // select nearly everything that may be selected
  Index selected_real = 0;
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    const MaskedBatch m = mask_tokens(tokens, batch, &mask, c, Rng(seed));
    for (Index b = 0; b < batch; ++b) {
      for (Index t = 0; t < length; ++t) {
        const auto s = static_cast<std::size_t>(b * length + t);
        if (t == 0 || t >= lengths[static_cast<std::size_t>(b)]) {
          EXPECT_EQ(m.labels[s], -100) << b << " " << t;
          EXPECT_EQ(m.tokens[s], tokens[s]);
        } else {
          selected_real += m.labels[s] >= 0;
        }
      }
    }
  }
  EXPECT_GT(selected_real, 5 * 270);  // 0.9 of 5 * 324 eligible positions: about 1458
  // Whatever stands at padded positions does not change the real positions' outcome.
  std::vector<Token> other = tokens;
  for (Index t = 120; t < length; ++t) other[static_cast<std::size_t>(length + t)] = 999;
  const MaskedBatch a = mask_tokens(tokens, batch, &mask, c, Rng(9));
  const MaskedBatch b = mask_tokens(other, batch, &mask, c, Rng(9));
  for (Index t = 0; t < 120; ++t) {
    EXPECT_EQ(a.tokens[static_cast<std::size_t>(length + t)],
              b.tokens[static_cast<std::size_t>(length + t)]);
  }
}

TEST(MaskTokens, DeterministicForAKeyAndDifferentAcrossKeys) {
  const std::vector<Token> tokens = plain_tokens(2 * 500);
  const MaskingConfig c = bert_config();
  const MaskedBatch a = mask_tokens(tokens, 2, nullptr, c, Rng(5).derive(1));
  const MaskedBatch b = mask_tokens(tokens, 2, nullptr, c, Rng(5).derive(1));
  const MaskedBatch other = mask_tokens(tokens, 2, nullptr, c, Rng(5).derive(2));
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.labels, other.labels);
  // The draws belong to positions: the same tokens split as 4 sequences mask the same way.
  const MaskedBatch four = mask_tokens(tokens, 4, nullptr, c, Rng(5).derive(1));
  EXPECT_EQ(four.tokens, a.tokens);
}

TEST(MaskTokens, Errors) {
  const std::vector<Token> tokens = {10, 11, 12, 13, 14, 15};
  MaskingConfig c = bert_config();
  test::expect_throw_with([&] { mask_tokens(tokens, 4, nullptr, c, Rng(1)); },
                          {"mask_tokens", "tokens.size() = 6", "batch = 4"});
  const AttentionMask wrong = AttentionMask::from_lengths({1, 1, 1}, 2);
  test::expect_throw_with([&] { mask_tokens(tokens, 2, &wrong, c, Rng(1)); },
                          {"mask_tokens", "3 x 2"});
  const AttentionMask empty_seq = AttentionMask::from_lengths({3, 0}, 3);
  test::expect_throw_with([&] { mask_tokens(tokens, 2, &empty_seq, c, Rng(1)); },
                          {"sequence 1", "all padding"});
  const std::vector<Token> bad = {10, 11, 1000};
  test::expect_throw_with([&] { mask_tokens(bad, 1, nullptr, c, Rng(1)); },
                          {"tokens[2] = 1000", "vocab_size = 1000"});
  c.mask_token = 1000;
  test::expect_throw_with<ConfigError>([&] { mask_tokens(tokens, 1, nullptr, c, Rng(1)); },
                                       {"mask_token = 1000"});
  c = bert_config();
  c.mask_fraction = 0.95;
  test::expect_throw_with<ConfigError>([&] { mask_tokens(tokens, 1, nullptr, c, Rng(1)); },
                                       {"mask_fraction = 0.95"});
  c = bert_config();
  c.ignore_label = 0;
  test::expect_throw_with<ConfigError>([&] { mask_tokens(tokens, 1, nullptr, c, Rng(1)); },
                                       {"ignore_label = 0"});
}

}  // namespace
}  // namespace reformer
