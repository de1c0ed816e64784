// Adam / AdamW: a hand-computed two-step reference, weight decay (L2 vs decoupled, per-slot
// filter), refusal of NaN gradients, layout checks, state round trip, float instantiation.
#include "reformer/model/optimizer.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace reformer {
namespace {

Parameters<double> two_params() {
  Parameters<double> p;
  p.add("w.weight", {2});
  p.add("w.bias", {1});
  p.values() << 1.0, -2.0, 0.5;
  return p;
}

TEST(Adam, MatchesAHandComputedTwoStepReference) {
  Parameters<double> p = two_params();
  const AdamOptions opt;  // lr 1e-3, betas (0.9, 0.98), eps 1e-9
  EXPECT_EQ(opt.beta1, 0.9);
  EXPECT_EQ(opt.beta2, 0.98);
  EXPECT_EQ(opt.eps, 1e-9);
  Adam<double> adam(p, AdamOptions::adam(0.1));
  const double g1[3] = {0.5, -0.25, 2.0};
  const double g2[3] = {0.1, 0.3, -1.0};

  p.grads() << g1[0], g1[1], g1[2];
  adam.step(p);
  // Step 1: m_hat = g, v_hat = g^2, so w1 = w0 - lr * g / (|g| + eps) = w0 - 0.1 * sign(g).
  EXPECT_NEAR(p.values()[0], 0.9, 1e-9);
  EXPECT_NEAR(p.values()[1], -1.9, 1e-9);
  EXPECT_NEAR(p.values()[2], 0.4, 1e-9);

  p.grads() << g2[0], g2[1], g2[2];
  adam.step(p);
  EXPECT_EQ(adam.step_count(), 2);
  // Step 2 by the textbook formula: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
  // w -= lr * (m / (1 - b1^2)) / (sqrt(v / (1 - b2^2)) + eps).
  const double w0[3] = {1.0, -2.0, 0.5};
  for (int i = 0; i < 3; ++i) {
    const double m1 = 0.1 * g1[i], v1 = 0.02 * g1[i] * g1[i];
    const double w1 = w0[i] - 0.1 * (m1 / 0.1) / (std::sqrt(v1 / 0.02) + 1e-9);
    const double m2 = 0.9 * m1 + 0.1 * g2[i];
    const double v2 = 0.98 * v1 + 0.02 * g2[i] * g2[i];
    const double m_hat = m2 / (1 - 0.81), v_hat = v2 / (1 - 0.98 * 0.98);
    const double w2 = w1 - 0.1 * m_hat / (std::sqrt(v_hat) + 1e-9);
    EXPECT_NEAR(p.values()[i], w2, 1e-14) << i;
    EXPECT_NEAR(adam.exp_avg()[i], m2, 1e-16) << i;
    EXPECT_NEAR(adam.exp_avg_sq()[i], v2, 1e-16) << i;
  }
  // Concrete numbers for element 0 (g = 0.5 then 0.1): m2 = 0.055, v2 = 0.0051,
  // w2 = 0.9 - 0.1 * (0.055 / 0.19) / sqrt(0.0051 / 0.0396) up to the eps terms (~1e-9).
  EXPECT_NEAR(p.values()[0], 0.9 - 0.1 * (0.055 / 0.19) / std::sqrt(0.0051 / 0.0396), 1e-9);
}

TEST(Adam, DecoupledWeightDecayShrinksOnlyTheFilteredSlots) {
  Parameters<double> p = two_params();
  Adam<double> adamw(p, AdamOptions::adamw(0.1, 0.5), decay_except_bias_and_norm);
  EXPECT_TRUE(adamw.decays(0));
  EXPECT_FALSE(adamw.decays(1));
  for (int k = 0; k < 3; ++k) {
    p.zero_grad();  // zero gradients: the Adam part is exactly 0, only the decay acts
    adamw.step(p);
  }
  const double shrink = std::pow(1.0 - 0.1 * 0.5, 3);
  EXPECT_DOUBLE_EQ(p.values()[0], 1.0 * shrink);
  EXPECT_DOUBLE_EQ(p.values()[1], -2.0 * shrink);
  EXPECT_EQ(p.values()[2], 0.5);  // bias: no decay
}

TEST(Adam, L2WeightDecayActsThroughTheGradient) {
  Parameters<double> p = two_params();
  Adam<double> adam(p, AdamOptions::adam(0.1, 0.5));
  p.zero_grad();
  adam.step(p);
  // g = wd * w, so the first step moves each weight by lr * sign(w), not by a factor.
  EXPECT_NEAR(p.values()[0], 0.9, 1e-9);
  EXPECT_NEAR(p.values()[1], -1.9, 1e-9);
  EXPECT_NEAR(p.values()[2], 0.4, 1e-9);
}

TEST(Adam, NonFiniteGradientIsRefusedAndNothingChanges) {
  Parameters<double> p = two_params();
  Adam<double> adam(p);
  p.grads() << 1.0, 1.0, 1.0;
  adam.step(p);
  const Vector<double> w = p.values(), m = adam.exp_avg(), v = adam.exp_avg_sq();
  p.grads() << 1.0, 1.0, std::numeric_limits<double>::quiet_NaN();
  try {
    adam.step(p);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("Adam::step"), std::string::npos) << what;
    EXPECT_NE(what.find("'w.bias'"), std::string::npos) << what;
  }
  p.grads()[2] = std::numeric_limits<double>::infinity();
  EXPECT_THROW(adam.step(p), InvalidArgument);
  EXPECT_EQ(adam.step_count(), 1);
  EXPECT_EQ(p.values(), w);
  EXPECT_EQ(adam.exp_avg(), m);
  EXPECT_EQ(adam.exp_avg_sq(), v);
}

TEST(Adam, RejectsBadOptionsAndAnotherLayout) {
  Parameters<double> p = two_params();
  auto bad = [&](auto edit) {
    AdamOptions o;
    edit(o);
    EXPECT_THROW(Adam<double>(p, o), InvalidArgument);
  };
  bad([](AdamOptions& o) { o.lr = 0.0; });
  bad([](AdamOptions& o) { o.lr = std::nan(""); });
  bad([](AdamOptions& o) { o.beta1 = 1.0; });
  bad([](AdamOptions& o) { o.beta2 = -0.1; });
  bad([](AdamOptions& o) { o.eps = 0.0; });
  bad([](AdamOptions& o) { o.weight_decay = -1.0; });
  Adam<double> adam(p);
  EXPECT_THROW(adam.step(p, -1.0), InvalidArgument);
  EXPECT_THROW(adam.set_lr(0.0), InvalidArgument);
  p.add("late", {4});
  EXPECT_THROW(adam.step(p), InvalidArgument);
  EXPECT_EQ(adam.step_count(), 0);
  EXPECT_THROW(adam.set_state(-1, Vector<double>::Zero(3), Vector<double>::Zero(3)),
               InvalidArgument);
  EXPECT_THROW(adam.set_state(1, Vector<double>::Zero(2), Vector<double>::Zero(3)),
               InvalidArgument);
  EXPECT_THROW(adam.set_state(1, Vector<double>::Zero(3), Vector<double>::Constant(3, -1.0)),
               InvalidArgument);
}

// A toy quadratic: loss = sum_i c_i (w_i - t_i)^2 / 2, gradient c_i (w_i - t_i).
template <class S>
void quadratic_grad(Parameters<S>& p) {
  for (Index i = 0; i < p.size(); ++i) {
    const S c = static_cast<S>(1 + i % 3), t = static_cast<S>(0.1 * i - 0.3);
    p.grads()[i] = c * (p.values()[i] - t);
  }
}

template <class S>
Parameters<S> quadratic_store() {
  Parameters<S> p;
  p.add("a.weight", {3, 2});
  p.add("a.bias", {3});
  for (Index i = 0; i < p.size(); ++i) p.values()[i] = static_cast<S>(std::sin(1.0 + i));
  return p;
}

TEST(Adam, RestoredStateContinuesBitIdentically) {
  const auto schedule = LrSchedule::warmup_rsqrt(0.05, 2);
  Parameters<double> straight = quadratic_store<double>();
  Adam<double> a(straight, AdamOptions::adamw(0.05, 0.1));
  for (int k = 0; k < 6; ++k) {
    quadratic_grad(straight);
    a.step(straight, schedule);
  }
  Parameters<double> resumed = quadratic_store<double>();
  Adam<double> b(resumed, AdamOptions::adamw(0.05, 0.1));
  for (int k = 0; k < 3; ++k) {
    quadratic_grad(resumed);
    b.step(resumed, schedule);
  }
  Parameters<double> copy = resumed;
  Adam<double> c(copy, AdamOptions::adamw(0.05, 0.1));
  c.set_state(b.step_count(), b.exp_avg(), b.exp_avg_sq());
  for (int k = 0; k < 3; ++k) {
    quadratic_grad(copy);
    c.step(copy, schedule);
  }
  EXPECT_EQ(copy.values(), straight.values());
  EXPECT_EQ(c.exp_avg(), a.exp_avg());
  EXPECT_EQ(c.exp_avg_sq(), a.exp_avg_sq());
}

TEST(Adam, FloatStoreConvergesOnAQuadratic) {
  Parameters<float> p = quadratic_store<float>();
  Adam<float> adam(p, AdamOptions::adam(0.05));
  for (int k = 0; k < 400; ++k) {
    quadratic_grad(p);
    adam.step(p);
  }
  for (Index i = 0; i < p.size(); ++i) EXPECT_NEAR(p.values()[i], 0.1 * i - 0.3, 1e-3) << i;
}

TEST(Adam, DecayFilterExcludesBiasesAndLayerNorms) {
  EXPECT_TRUE(
      decay_except_bias_and_norm("reformer.encoder.layers.0.attention.output.dense.weight"));
  EXPECT_TRUE(decay_except_bias_and_norm("reformer.embeddings.word_embeddings.weight"));
  EXPECT_FALSE(decay_except_bias_and_norm("lm_head.bias"));
  EXPECT_FALSE(decay_except_bias_and_norm("reformer.encoder.layer_norm.weight"));
  EXPECT_FALSE(
      decay_except_bias_and_norm("reformer.encoder.layers.1.feed_forward.dense.dense.bias"));
}

}  // namespace
}  // namespace reformer
