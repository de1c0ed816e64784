// ReformerLM training behaviour: tape memory independent of depth, determinism (repeat runs,
// thread counts), overfitting one batch, logits/loss consistency, causality, bad input.
#include "reformer/core/threading.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_lm.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace reformer {
namespace {

using test::message_of;
using test::ThreadCountGuard;

ReformerConfig lsh_stack(Index layers) {
  ReformerConfig cfg = test::tiny_config();
  cfg.attn_layers.assign(static_cast<std::size_t>(layers), "lsh");
  return cfg;
}

TEST(ModelTraining, TapeMemoryIsIndependentOfDepthExceptBuckets) {
  const Index batch = 2, length = 10;
  const std::vector<Token> tokens = test::random_tokens(batch, length, 11, 1);
  ReformerLM<float> shallow(lsh_stack(1)), deep(lsh_stack(12));
  Tape<float> a, b;
  shallow.forward_loss(tokens, batch, a, 0);
  deep.forward_loss(tokens, batch, b, 0);
  // Buckets: [B, H, R, Tp] ints per LSH layer, Tp = 12 the padded length (the streams too).
  const Index padded = shallow.padded_length(length);
  ASSERT_EQ(padded, 12);
  const std::size_t per_layer = static_cast<std::size_t>(batch * 2 * 2 * padded) * 4;
  EXPECT_EQ(a.bucket_bytes(), per_layer);
  EXPECT_EQ(b.bucket_bytes(), 12 * per_layer);
  EXPECT_EQ(a.bytes_held() - a.bucket_bytes(), b.bytes_held() - b.bucket_bytes());
  // The activations held: the last block's x1 and x2 only.
  EXPECT_EQ(b.activation_bytes(), 2 * 8 * 24 * sizeof(float));

  // Ordinary backprop keeps two D x N inputs per layer: the accessor sees them.
  deep.set_backprop_mode(BackpropMode::kStoredActivations);
  Tape<float> c;
  deep.forward_loss(tokens, batch, c, 0);
  EXPECT_EQ(c.activation_bytes(), (2 + 2 * 12) * 8 * 24 * sizeof(float));
}

TEST(ModelTraining, TapeStreamsComeFromTheWorkspaceAndKeepItAlive) {
  auto ws = std::make_shared<Workspace>();
  Workspace* raw = ws.get();
  TapeMatrix<float> m;
  m.resize(ws, 64, 1024);  // 256 KiB: drawn from the workspace
  EXPECT_EQ(raw->stats().in_use_bytes, std::size_t{256} << 10);
  m.map().setConstant(3.0f);
  TapeMatrix<float> copy = m;  // a block of its own, from the same workspace
  EXPECT_EQ(raw->stats().in_use_bytes, std::size_t{512} << 10);
  EXPECT_NE(copy.map().data(), m.map().data());
  EXPECT_EQ(copy.map()(63, 1023), 3.0f);
  ws.reset();  // the matrices still hold the workspace
  m = std::move(copy);
  EXPECT_EQ(raw->stats().in_use_bytes, std::size_t{256} << 10);
  EXPECT_EQ(m.map()(0, 0), 3.0f);
  m.resize(nullptr, 2, 3);  // from the heap: the workspace goes with the last block
  EXPECT_EQ(m.rows(), 2);
  EXPECT_EQ(m.size(), 6);
}

// Five Adam steps with dropout on; returns the losses and leaves the parameters in `model`.
std::vector<double> train_five_steps(ReformerLM<double>& model) {
  const Index batch = 2, length = 10;
  const std::vector<Token> tokens = test::random_tokens(batch, length, 11, 21);
  Adam<double> adam(model.parameters(), AdamOptions::adam(1e-2));
  std::vector<double> losses;
  for (std::uint64_t step = 0; step < 5; ++step) {
    model.zero_grad();
    losses.push_back(model.train_step(tokens, batch, step));
    adam.step(model.parameters());
  }
  return losses;
}

ReformerConfig dropout_config() {
  ReformerConfig cfg = test::tiny_config();
  cfg.hidden_dropout_prob = 0.1;
  cfg.lsh_attention_probs_dropout_prob = 0.1;
  cfg.local_attention_probs_dropout_prob = 0.1;
  return cfg;
}

TEST(ModelTraining, SameSeedGivesBitwiseIdenticalTraining) {
  ReformerLM<double> a(dropout_config()), b(dropout_config());
  const std::vector<double> la = train_five_steps(a), lb = train_five_steps(b);
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(a.parameters().values() == b.parameters().values());
  EXPECT_NE(la.front(), la.back());

  ReformerConfig other = dropout_config();
  other.seed = 77;
  ReformerLM<double> c(other);
  EXPECT_NE(train_five_steps(c), la);
}

// The model owns the RNG step: train_step(tokens, batch) advances it, so two calls on the same
// parameters draw different dropout masks and rotations; an explicit step sets the counter to
// step + 1, and the same explicit step reproduces a call bit for bit.
TEST(ModelTraining, TheModelAdvancesItsOwnRngStep) {
  ReformerLM<double> model(dropout_config());
  const std::vector<Token> tokens = test::random_tokens(2, 12, model.config().vocab_size, 5);
  EXPECT_EQ(model.step(), 0u);
  model.zero_grad();
  const double first = model.train_step(tokens, 2);
  const Vector<double> g_first = model.parameters().grads();
  EXPECT_EQ(model.step(), 1u);
  model.zero_grad();
  const double second = model.train_step(tokens, 2);
  EXPECT_EQ(model.step(), 2u);
  EXPECT_NE(first, second) << "a new step draws new dropout masks";

  model.zero_grad();
  EXPECT_EQ(model.train_step(tokens, 2, std::uint64_t{0}), first) << "step 0 again";
  EXPECT_TRUE(model.parameters().grads() == g_first);
  EXPECT_EQ(model.step(), 1u);
  model.set_step(7);
  Tape<double> tape;
  model.forward_loss(tokens, 2, tape, 3);
  EXPECT_EQ(model.step(), 4u);
}

TEST(ModelTraining, OneAndTwoThreadsGiveBitwiseIdenticalTraining) {
  ThreadCountGuard guard;
  ReformerConfig cfg = dropout_config();
  cfg.attn_layers = {"lsh", "local", "full", "lsh"};
  set_num_threads(1);
  ReformerLM<double> a(cfg);
  const std::vector<double> la = train_five_steps(a);
  set_num_threads(2);
  ReformerLM<double> b(cfg);
  const std::vector<double> lb = train_five_steps(b);
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(a.parameters().values() == b.parameters().values());
}

// The same with every feed-forward keeping its activations.
TEST(ModelTraining, OneAndTwoThreadsGiveBitwiseIdenticalTrainingWithKeptActivations) {
  ThreadCountGuard guard;
  ReformerConfig cfg = dropout_config();
  cfg.attn_layers = {"lsh", "local", "full", "lsh"};
  cfg.hidden_act = "gelu";
  set_num_threads(1);
  ReformerLM<double> a(cfg);
  a.set_kept_activation_budget(SIZE_MAX);
  const std::vector<double> la = train_five_steps(a);
  set_num_threads(2);
  ReformerLM<double> b(cfg);
  b.set_kept_activation_budget(SIZE_MAX);
  const std::vector<double> lb = train_five_steps(b);
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(a.parameters().values() == b.parameters().values());
}

TEST(ModelTraining, OverfitsOneBatch) {
  ReformerConfig cfg = test::tiny_config();
  cfg.vocab_size = 8;
  cfg.hidden_size = 16;
  cfg.axial_pos_embds_dim = {6, 10};
  cfg.attention_head_size = 4;
  cfg.feed_forward_size = 32;
  cfg.attn_layers = {"local", "lsh"};
  cfg.initializer_range = 0.1;
  cfg.axial_norm_std = 0.1;
  ReformerLM<float> model(cfg);
  const std::vector<Token> tokens = test::random_tokens(2, 12, 8, 4);
  Adam<float> adam(model.parameters(), AdamOptions::adam(2e-2));
  double first = 0, loss = 0;
  for (std::uint64_t step = 0; step < 40; ++step) {
    model.zero_grad();
    loss = model.train_step(tokens, 2, step);
    if (step == 0) first = loss;
    adam.step(model.parameters());
  }
  EXPECT_GT(first, 1.8);  // about log(8) = 2.08 at initialisation
  EXPECT_LT(loss, 0.01) << "loss went from " << first << " to " << loss;
}

TEST(ModelTraining, ForwardLossEqualsTheCrossEntropyOfTheLogits) {
  ReformerConfig cfg = test::tiny_config();
  cfg.chunk_size_lm_head = 3;
  ReformerLM<double> model(cfg);
  const Index batch = 2, length = 10;
  const std::vector<Token> tokens = test::random_tokens(batch, length, 11, 8);
  BucketRecord buckets;  // recorded
  const Matrix<double> logits = model.logits(tokens, batch, buckets);
  ASSERT_EQ(logits.rows(), 11);
  ASSERT_EQ(logits.cols(), 20);
  double sum = 0;
  int count = 0;
  for (Index b = 0; b < batch; ++b) {
    for (Index t = 0; t + 1 < length; ++t) {
      const auto col = logits.col(b * length + t);
      const double lse = std::log((col.array() - col.maxCoeff()).exp().sum()) + col.maxCoeff();
      sum += lse - col(tokens[static_cast<std::size_t>(b * length + t + 1)]);
      ++count;
    }
  }
  Tape<double> tape;
  tape.buckets = buckets;
  tape.buckets.replay = true;
  EXPECT_NEAR(model.forward_loss(tokens, batch, tape, 0), sum / count, 1e-12);
  EXPECT_EQ(tape.loss_count, 18);

  // Explicit targets: a negative target is not counted.
  std::vector<Token> targets(20, -1);
  targets[4] = 3;
  const auto col = logits.col(4);
  const double lse = std::log((col.array() - col.maxCoeff()).exp().sum()) + col.maxCoeff();
  Tape<double> t2;
  t2.buckets = buckets;
  t2.buckets.replay = true;
  EXPECT_NEAR(model.forward_loss(tokens, batch, t2, 0, targets), lse - col(3), 1e-12);
  EXPECT_EQ(t2.loss_count, 1);
}

TEST(ModelTraining, LogitsAreCausal) {
  // Local and full attention are causal position by position (LSH is causal within a chunk,
  // but which keys share a chunk depends on every token's bucket).
  ReformerConfig cfg = test::tiny_config();
  cfg.attn_layers = {"local", "full", "local"};
  ReformerLM<double> model(cfg);
  std::vector<Token> tokens = test::random_tokens(1, 10, 11, 12);
  const Matrix<double> before = model.logits(tokens, 1);
  tokens[6] = static_cast<Token>((tokens[6] + 1) % 11);
  tokens[9] = static_cast<Token>((tokens[9] + 5) % 11);
  const Matrix<double> after = model.logits(tokens, 1);
  EXPECT_EQ(before.leftCols(6), after.leftCols(6));
  EXPECT_GT((before.col(6) - after.col(6)).norm(), 1e-6);
}

TEST(ModelTraining, SequencesOfABatchAreIndependent) {
  ReformerLM<double> model(test::tiny_config());
  const std::vector<Token> two = test::random_tokens(2, 10, 11, 30);
  const std::vector<Token> first(two.begin(), two.begin() + 10);
  const Matrix<double> both = model.logits(two, 2);
  const Matrix<double> one = model.logits(first, 1);
  EXPECT_LT(test::relative_error(both.leftCols(10), one), 1e-12);
}

TEST(ModelTraining, RejectsBadInput) {
  ReformerLM<double> model(test::tiny_config());
  std::vector<Token> tokens = test::random_tokens(2, 10, 11, 2);
  Tape<double> tape;

  tokens[13] = 11;
  std::string m = message_of([&] { model.forward_loss(tokens, 2, tape, 0); });
  EXPECT_NE(m.find("ReformerLM::forward_loss"), std::string::npos) << m;
  EXPECT_NE(m.find("tokens[13] = 11"), std::string::npos) << m;
  m = message_of([&] { model.logits(tokens, 2); });
  EXPECT_NE(m.find("ReformerLM::logits"), std::string::npos) << m;
  tokens[13] = 1;

  m = message_of([&] { model.forward_loss(tokens, 3, tape, 0); });
  EXPECT_NE(m.find("batch = 3"), std::string::npos) << m;
  m = message_of([&] { model.logits(tokens, 0); });
  EXPECT_NE(m.find("batch = 0"), std::string::npos) << m;

  const std::vector<Token> long_seq = test::random_tokens(1, 13, 11, 2);  // 13 > 3 * 4
  m = message_of([&] { model.forward_loss(long_seq, 1, tape, 0); });
  EXPECT_NE(m.find("T = 13"), std::string::npos) << m;

  const std::vector<Token> single(2, 1);
  m = message_of([&] { model.forward_loss(single, 2, tape, 0); });
  EXPECT_NE(m.find("T = 1"), std::string::npos) << m;

  std::vector<Token> targets(19, 0);
  m = message_of([&] { model.forward_loss(tokens, 2, tape, 0, targets); });
  EXPECT_NE(m.find("targets.size() = 19"), std::string::npos) << m;
  targets.assign(20, 0);
  targets[7] = 11;
  m = message_of([&] { model.forward_loss(tokens, 2, tape, 0, targets); });
  EXPECT_NE(m.find("targets[7] = 11"), std::string::npos) << m;

  Tape<double> empty;
  m = message_of([&] { model.backward(empty); });
  EXPECT_NE(m.find("ReformerLM::backward"), std::string::npos) << m;
  model.forward_loss(tokens, 2, tape, 0);
  model.backward(tape);
  m = message_of([&] { model.backward(tape); });  // consumed
  EXPECT_NE(m.find("forward_loss"), std::string::npos) << m;

  Tape<double> replay;
  replay.buckets.replay = true;
  m = message_of([&] { model.forward_loss(tokens, 2, replay, 0); });
  EXPECT_NE(m.find("one BucketTape per layer"), std::string::npos) << m;

  m = message_of([&] { model.parameter("lm_head.weight"); });
  EXPECT_NE(m.find("'lm_head.weight'"), std::string::npos) << m;
}

TEST(ModelTraining, RejectsANonCausalConfig) {
  ReformerConfig cfg = test::tiny_config();
  cfg.is_decoder = false;
  EXPECT_THROW(ReformerLM<double> m(cfg), ConfigError);
  cfg = test::tiny_config();
  cfg.attn_layers = {"lsh", "sparse"};
  EXPECT_THROW(ReformerLM<double> m(cfg), ConfigError);
}

TEST(ModelTraining, ParametersByName) {
  ReformerLM<double> model(test::tiny_config());
  auto w = model.parameter("lm_head.decoder.weight");
  EXPECT_EQ(w.rows(), 11);
  EXPECT_EQ(w.cols(), 16);
  EXPECT_EQ(model.parameter("lm_head.decoder.bias").data(), model.parameter("lm_head.bias").data());
  EXPECT_TRUE(model.parameter("lm_head.bias").isZero(0.0));
  EXPECT_TRUE(model.parameter("reformer.encoder.layer_norm.weight").isOnes(0.0));
  // HF initialisation: std of the weights about initializer_range (0.3 in tiny_config).
  const auto q = model.parameter("reformer.encoder.layers.1.attention.self_attention.query.weight");
  const double sd = std::sqrt(q.array().square().mean());
  EXPECT_GT(sd, 0.2);
  EXPECT_LT(sd, 0.4);
  std::size_t total = 0;
  for (const auto& p : model.named_parameters()) {
    EXPECT_EQ(p.value.data(), model.parameter(p.name()).data());
    EXPECT_EQ(p.grad.data(), model.gradient(p.name()).data());
    total += static_cast<std::size_t>(p.value.size());
  }
  EXPECT_EQ(total, static_cast<std::size_t>(model.parameters().size()));
  // Re-initialising with another seed changes the weights; the same seed restores them.
  const Vector<double> v0 = model.parameters().values();
  model.init(99);
  EXPECT_FALSE(model.parameters().values() == v0);
  model.init(test::tiny_config().seed);
  EXPECT_TRUE(model.parameters().values() == v0);
}

}  // namespace
}  // namespace reformer
