// Token sampling (model/sampling.hpp): greedy, the distributions of temperature, top-k and top-p
// draws against their exact probabilities (chi-square at a fixed seed), the repetition penalty,
// stop tokens, determinism and bad options.
#include "reformer/model/sampling.hpp"
#include "reformer/core/error.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace reformer {
namespace {

Vector<double> example_logits() {
  Vector<double> l(6);
  l << std::log(0.35), std::log(0.25), std::log(0.2), std::log(0.1), std::log(0.06), std::log(0.04);
  return l;
}

/// Chi-square statistic of `n` draws against `expected` probabilities (zero-probability tokens
/// must never be drawn: then the statistic is infinite).
double chi_square(const Vector<double>& logits, const SamplingOptions& opt,
                  const std::vector<double>& expected, int n) {
  Sampler sampler(opt, 2024);
  std::vector<double> count(expected.size(), 0.0);
  for (int i = 0; i < n; ++i) count[static_cast<std::size_t>(sampler.next(logits))] += 1.0;
  double chi2 = 0.0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0.0) {
      if (count[i] > 0.0) return INFINITY;
      continue;
    }
    const double e = expected[i] * n;
    chi2 += (count[i] - e) * (count[i] - e) / e;
  }
  return chi2;
}

// 99.9% quantiles of the chi-square distribution with k degrees of freedom.
constexpr double kChi2Quantile999[] = {0.0, 10.83, 13.82, 16.27, 18.47, 20.52};

TEST(Sampling, GreedyAndTopKOneTakeTheFirstMaximum) {
  Vector<double> logits(4);
  logits << 0.1, 2.0, 2.0, -1.0;
  SamplingOptions greedy;
  greedy.temperature = 0.0;
  EXPECT_EQ(sample_token(logits, greedy, 0.99), 1);
  SamplingOptions k1;
  k1.top_k = 1;
  EXPECT_EQ(sample_token(logits, k1, 0.99), 1);
}

TEST(Sampling, TemperatureDrawsFollowTheSoftmax) {
  SamplingOptions opt;
  opt.temperature = 0.5;  // p_i proportional to q_i^2
  const std::vector<double> q = {0.35, 0.25, 0.2, 0.1, 0.06, 0.04};
  double z = 0.0;
  for (double x : q) z += x * x;
  std::vector<double> expected;
  for (double x : q) expected.push_back(x * x / z);
  EXPECT_LT(chi_square(example_logits(), opt, expected, 20000), kChi2Quantile999[5]);
  // A wrong distribution (the untempered one) is rejected by the same statistic.
  EXPECT_GT(chi_square(example_logits(), opt, q, 20000), kChi2Quantile999[5]);
}

TEST(Sampling, TopKDrawsFollowTheTruncatedDistribution) {
  SamplingOptions opt;
  opt.top_k = 3;  // 0.35, 0.25, 0.2 renormalised by 0.8
  const std::vector<double> expected = {0.4375, 0.3125, 0.25, 0.0, 0.0, 0.0};
  EXPECT_LT(chi_square(example_logits(), opt, expected, 20000), kChi2Quantile999[2]);
}

TEST(Sampling, TopPDrawsFollowTheNucleus) {
  SamplingOptions opt;
  opt.top_p = 0.85;  // 0.35 + 0.25 + 0.2 = 0.8 < 0.85, + 0.1 reaches it: 4 tokens of mass 0.9
  const std::vector<double> expected = {0.35 / 0.9, 0.25 / 0.9, 0.2 / 0.9, 0.1 / 0.9, 0.0, 0.0};
  EXPECT_LT(chi_square(example_logits(), opt, expected, 20000), kChi2Quantile999[3]);
  opt.top_k = 2;  // top-k first, then top-p within it: 0.35 / 0.6 = 0.58 < 0.85 keeps both
  const std::vector<double> both = {0.35 / 0.6, 0.25 / 0.6, 0.0, 0.0, 0.0, 0.0};
  EXPECT_LT(chi_square(example_logits(), opt, both, 20000), kChi2Quantile999[1]);
}

TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Vector<double> logits(4);
  logits << 2.0, -1.0, 0.5, 3.0;
  const std::vector<Token> context = {0, 1, 1};
  apply_repetition_penalty<double>(logits, context, 2.0);
  EXPECT_DOUBLE_EQ(logits(0), 1.0);   // once, although listed once
  EXPECT_DOUBLE_EQ(logits(1), -2.0);  // once, although listed twice
  EXPECT_DOUBLE_EQ(logits(2), 0.5);
  EXPECT_DOUBLE_EQ(logits(3), 3.0);
  // Greedy with the penalty avoids the repeated maximum.
  Vector<double> l2(3);
  l2 << 3.0, 2.0, 0.0;
  SamplingOptions opt;
  opt.temperature = 0.0;
  opt.repetition_penalty = 2.0;
  Sampler sampler(opt, 1);
  EXPECT_EQ(sampler.next(l2, std::vector<Token>{0}), 1);
  EXPECT_EQ(sampler.next(l2), 0);
  EXPECT_THROW(apply_repetition_penalty<double>(logits, std::vector<Token>{4}, 2.0),
               InvalidArgument);
}

TEST(Sampling, SeededSamplersAreDeterministicAndStopTokensAreReported) {
  SamplingOptions opt;
  opt.stop_tokens = {5};
  Sampler a(opt, 7), b(opt, 7), c(opt, 8);
  std::vector<Token> sa, sb, sc;
  for (int i = 0; i < 50; ++i) {
    sa.push_back(a.next(example_logits()));
    sb.push_back(b.next(example_logits()));
    sc.push_back(c.next(example_logits()));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  EXPECT_EQ(a.draws(), 50u);
  EXPECT_TRUE(a.is_stop(5));
  EXPECT_FALSE(a.is_stop(4));
}

TEST(Sampling, RejectsBadOptions) {
  const Vector<double> logits = Vector<double>::Zero(3);
  SamplingOptions o;
  o.top_p = 0.0;
  EXPECT_THROW(sample_token(logits, o, 0.5), InvalidArgument);
  o = {};
  o.temperature = -1.0;
  EXPECT_THROW(sample_token(logits, o, 0.5), InvalidArgument);
  o = {};
  o.top_k = -1;
  EXPECT_THROW(Sampler(o, 1), InvalidArgument);
  o = {};
  o.repetition_penalty = 0.0;
  EXPECT_THROW(Sampler(o, 1), InvalidArgument);
  EXPECT_THROW(sample_token(logits, SamplingOptions{}, 1.0), InvalidArgument);
}

}  // namespace
}  // namespace reformer
