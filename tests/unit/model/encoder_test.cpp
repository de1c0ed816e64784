// The encoder models (ReformerForMaskedLM, ReformerForSequenceClassification,
// ReformerForQuestionAnswering) and HF's padding to the chunk lengths: parity with the HF
// float64 fixtures (tests/data/README.md), finite differences through the whole model with a
// mask, padding that never leaks, thread-count determinism, and the errors.
#include "reformer/io/config_json.hpp"
#include "reformer/model/encoder_models.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"
#include "support/fixture.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace reformer {
namespace {

using test::message_of;

ReformerConfig fixture_config(const test::Fixture& fx) {
  ReformerConfig c = config_from_json(fx.config());
  c.chunk_size_lm_head = 5;  // several head chunks, one partial
  c.chunk_size_feed_forward = 7;
  return c;
}

std::vector<Token> ints_of(const test::Fixture& fx, const std::string& name) {
  std::vector<Token> t;
  for (std::int64_t v : fx.ints(name)) t.push_back(static_cast<Token>(v));
  return t;
}

AttentionMask mask_of(const test::Fixture& fx) {
  return AttentionMask::from_flags(ints_of(fx, "attention_mask"), fx.batch(), fx.length());
}

BucketRecord fixture_buckets(const test::Fixture& fx, const ReformerConfig& cfg) {
  BucketRecord b;
  b.replay = true;
  b.layers.resize(static_cast<std::size_t>(cfg.num_layers()));
  for (Index l = 0; l < cfg.num_layers(); ++l) {
    const std::string name = "buckets." + std::to_string(l);
    if (fx.has(name)) b.layers[static_cast<std::size_t>(l)] = fx.buckets(name);
  }
  return b;
}

// Relative error of `got` against the [B, T, V] reference, over the real positions only
// (real = true) or over the padded ones.
double logits_error(const Matrix<double>& got, const Matrix<double>& ref, const AttentionMask& m,
                    bool real) {
  double num = 0.0, den = 0.0;
  for (Index c = 0; c < got.cols(); ++c) {
    if (m.real(c / m.length(), c % m.length()) != real) continue;
    num = std::max(num, (got.col(c) - ref.col(c)).cwiseAbs().maxCoeff());
    den = std::max(den, ref.col(c).cwiseAbs().maxCoeff());
  }
  return den > 0 ? num / den : num;
}

void expect_loss(double loss, const test::Fixture& fx) {
  const double ref = fx.values("loss")[0];
  EXPECT_LT(std::abs(loss - ref) / std::abs(ref), 1e-9) << loss << " vs " << ref;
}

template <class Model>
void expect_gradients(Model& model, const test::Fixture& fx) {
  const test::GradError err = fx.max_grad_error(model.parameters());
  EXPECT_LT(err.error, 1e-9) << err;
  EXPECT_EQ(err.compared, static_cast<std::size_t>(model.parameters().num_slots()));
}

// ---- parity ----------------------------------------------------------------------------------

class EncoderParity : public ::testing::TestWithParam<BackpropMode> {};

TEST_P(EncoderParity, MaskedLm) {
  const test::Fixture fx("encoder_masked_lm");
  const ReformerConfig cfg = fixture_config(fx);
  ReformerForMaskedLM<double> model(cfg, GetParam());
  EXPECT_EQ(fx.load_params(model.parameters()),
            static_cast<std::size_t>(model.parameters().num_slots()));
  const std::vector<Token> tokens = ints_of(fx, "tokens"), labels = ints_of(fx, "labels");
  const AttentionMask mask = mask_of(fx);
  const Index batch = fx.batch();

  BucketRecord buckets = fixture_buckets(fx, cfg);
  const Matrix<double> logits = model.logits(tokens, batch, mask, buckets);
  const Matrix<double> ref = fx.activations("logits");
  EXPECT_LT(logits_error(logits, ref, mask, true), 1e-9);
  // HF's fully masked local windows round -1e9 + log n (tests/data/README.md): ~1e-8.
  EXPECT_LT(logits_error(logits, ref, mask, false), 1e-7);

  Tape<double> tape;
  tape.buckets = fixture_buckets(fx, cfg);
  expect_loss(model.forward_loss(tokens, batch, mask, labels, tape, 0), fx);
  model.zero_grad();
  model.backward(tape);
  expect_gradients(model, fx);
}

TEST_P(EncoderParity, SequenceClassification) {
  const test::Fixture fx("encoder_classification");
  const ReformerConfig cfg = fixture_config(fx);
  ASSERT_EQ(cfg.num_labels, 3);
  ReformerForSequenceClassification<double> model(cfg, GetParam());
  EXPECT_EQ(fx.load_params(model.parameters()),
            static_cast<std::size_t>(model.parameters().num_slots()));
  const std::vector<Token> tokens = ints_of(fx, "tokens"), labels = ints_of(fx, "labels");
  const AttentionMask mask = mask_of(fx);
  const Index batch = fx.batch();

  BucketRecord buckets = fixture_buckets(fx, cfg);
  const Matrix<double> logits = model.logits(tokens, batch, mask, buckets);
  const std::vector<double> ref = fx.values("logits");  // [B, 3]
  ASSERT_EQ(logits.rows(), 3);
  ASSERT_EQ(logits.cols(), batch);
  EXPECT_LT(test::relative_error(logits, Eigen::Map<const Matrix<double>>(ref.data(), 3, batch)),
            1e-9);

  Tape<double> tape;
  tape.buckets = fixture_buckets(fx, cfg);
  expect_loss(model.forward_loss(tokens, batch, mask, labels, tape, 0), fx);
  model.zero_grad();
  model.backward(tape);
  expect_gradients(model, fx);
}

TEST_P(EncoderParity, CausalLmPaddedToTheChunkLengthsLcm) {
  const test::Fixture fx("model_padded_length");
  const ReformerConfig cfg = fixture_config(fx);
  ReformerLM<double> model(cfg, GetParam());
  EXPECT_EQ(model.padded_length(fx.length()), std::stoll(fx.meta("padded_length")));
  EXPECT_EQ(fx.load_params(model.parameters()),
            static_cast<std::size_t>(model.parameters().num_slots()));
  const std::vector<Token> tokens = ints_of(fx, "tokens");
  const Index batch = fx.batch();

  BucketRecord buckets = fixture_buckets(fx, cfg);
  const Matrix<double> logits = model.logits(tokens, batch, buckets);
  EXPECT_EQ(logits.cols(), batch * fx.length());
  EXPECT_LT(test::relative_error(logits, fx.activations("logits")), 1e-9);

  // Without replay, the automatic bucket count comes from the padded length (8, not 4).
  BucketRecord hashed;
  model.logits(tokens, batch, hashed);
  const BucketTape& b0 = hashed.layers[0];
  EXPECT_EQ(b0.length, 96);
  const Index used = std::stoll(fx.meta("num_buckets_used.0"));
  EXPECT_EQ(*std::max_element(b0.data.begin(), b0.data.end()), used);  // the pad bucket

  Tape<double> tape;
  tape.buckets = fixture_buckets(fx, cfg);
  expect_loss(model.forward_loss(tokens, batch, tape, 0), fx);
  model.zero_grad();
  model.backward(tape);
  expect_gradients(model, fx);
}

INSTANTIATE_TEST_SUITE_P(Modes, EncoderParity,
                         ::testing::Values(BackpropMode::kReversible,
                                           BackpropMode::kStoredActivations));

// ---- small models ----------------------------------------------------------------------------

ReformerConfig encoder_config() {
  ReformerConfig c = test::tiny_config();
  c.is_decoder = false;
  c.attn_layers = {"lsh", "local", "full"};
  c.lsh_num_chunks_after = 1;
  c.local_num_chunks_after = 1;
  c.num_labels = 3;
  return c;
}

const Index kEncBatch = 3, kEncLength = 12;
AttentionMask batch_mask() { return AttentionMask::from_lengths({12, 9, 5}, kEncLength); }

// Masked-LM labels at a few real positions of each sequence.
std::vector<Token> mlm_labels(const AttentionMask& m, Index vocab) {
  std::vector<Token> l(static_cast<std::size_t>(kEncBatch * kEncLength), Token{-100});
  for (Index b = 0; b < kEncBatch; ++b) {
    for (Index t = 0; t < kEncLength; t += 2) {
      if (m.real(b, t))
        l[static_cast<std::size_t>(b * kEncLength + t)] = static_cast<Token>((b + t) % vocab);
    }
  }
  return l;
}

// Finite differences of `loss(step)` against `backward(scale)` for every parameter.
template <class Model, class Loss, class Backward>
void check_encoder_gradients(Model& model, Loss&& loss, Backward&& backward) {
  test::ThreadCountGuard guard;
  set_num_threads(1);
  auto forward = [&] {
    Matrix<double> l(1, 1);
    l(0, 0) = loss();
    return l;
  };
  auto run_backward = [&](const Matrix<double>& w) {
    model.zero_grad();
    backward(w(0, 0));
  };
  testing::GradCheckOptions opt;
  opt.step = 1e-4;
  opt.max_coords = 8;
  testing::GradientChecker check(forward, run_backward, opt);
  for (auto& p : model.named_parameters()) {
    const Vector<double> g = p.grad;
    const auto r = check(p.value, g, p.name());
    EXPECT_TRUE(r.passed()) << r;
  }
}

TEST(EncoderGradients, MaskedLmWithAMaskMatchesFiniteDifferences) {
  ReformerForMaskedLM<double> model(encoder_config());
  const AttentionMask mask = batch_mask();
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, kEncLength, 11, 3);
  const std::vector<Token> labels = mlm_labels(mask, 11);
  Tape<double> frozen;
  model.forward_loss(tokens, kEncBatch, mask, labels, frozen, 2);
  auto run = [&](Tape<double>& tape) {
    tape.buckets = frozen.buckets;
    tape.buckets.replay = true;
    return model.forward_loss(tokens, kEncBatch, mask, labels, tape, 2);
  };
  check_encoder_gradients(
      model,
      [&] {
        Tape<double> t;
        return run(t);
      },
      [&](double s) {
        Tape<double> t;
        run(t);
        model.backward(t, s);
      });
}

TEST(EncoderGradients, ClassificationPaddedToTheLcmMatchesFiniteDifferences) {
  ReformerConfig cfg = encoder_config();
  cfg.hidden_dropout_prob = 0.1;  // dropout masks are redrawn in backward
  ReformerForSequenceClassification<double> model(cfg);
  const Index length = 10;  // padded to 12
  const AttentionMask mask = AttentionMask::from_lengths({10, 7, 4}, length);
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, length, 11, 4);
  const std::vector<Token> labels = {2, 0, 1};
  Tape<double> frozen;
  model.forward_loss(tokens, kEncBatch, mask, labels, frozen, 5);
  EXPECT_EQ(frozen.padded_length, 12);
  auto run = [&](Tape<double>& tape) {
    tape.buckets = frozen.buckets;
    tape.buckets.replay = true;
    return model.forward_loss(tokens, kEncBatch, mask, labels, tape, 5);
  };
  check_encoder_gradients(
      model,
      [&] {
        Tape<double> t;
        return run(t);
      },
      [&](double s) {
        Tape<double> t;
        run(t);
        model.backward(t, s);
      });
}

TEST(EncoderGradients, QuestionAnsweringMatchesFiniteDifferences) {
  ReformerForQuestionAnswering<double> model(encoder_config());
  const AttentionMask mask = batch_mask();
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, kEncLength, 11, 6);
  const std::vector<Token> starts = {1, 3, 0}, ends = {4, 8, 12};  // 12 = T: not counted
  Tape<double> frozen;
  model.forward_loss(tokens, kEncBatch, mask, {starts, ends}, frozen, 1);
  auto run = [&](Tape<double>& tape) {
    tape.buckets = frozen.buckets;
    tape.buckets.replay = true;
    return model.forward_loss(tokens, kEncBatch, mask, {starts, ends}, tape, 1);
  };
  check_encoder_gradients(
      model,
      [&] {
        Tape<double> t;
        return run(t);
      },
      [&](double s) {
        Tape<double> t;
        run(t);
        model.backward(t, s);
      });
}

// ---- padding never leaks ---------------------------------------------------------------------

// The tokens with every padded position replaced.
std::vector<Token> repadded(std::vector<Token> tokens, const AttentionMask& m, Index length,
                            Index vocab) {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const Index b = static_cast<Index>(i) / length, t = static_cast<Index>(i) % length;
    if (!m.real(b, t)) tokens[i] = static_cast<Token>((tokens[i] + 1 + b + t) % vocab);
  }
  return tokens;
}

// The loss and every gradient are bitwise the same (a masked key's attention weight is exactly
// 0, so not even a subnormal reaches a real position or the padded tokens' embedding rows).
template <class Model, class Step>
void expect_padding_never_leaks(Model& a, Model& b, Step&& step) {
  const double la = step(a, false), lb = step(b, true);
  EXPECT_EQ(la, lb);
  for (SlotId id = 0; id < a.parameters().num_slots(); ++id) {
    const auto ga = a.parameters().grad_vector(id), gb = b.parameters().grad_vector(id);
    for (Index i = 0; i < ga.size(); ++i) {
      EXPECT_EQ(ga(i), gb(i)) << a.parameters().slot(id).name << "[" << i << "]";
    }
  }
  EXPECT_GT(a.parameters().grads().norm(), 0.0);
}

TEST(EncoderPadding, PaddedTokensChangeNothingInTheMaskedLm) {
  ReformerConfig cfg = encoder_config();
  cfg.hidden_dropout_prob = 0.1;
  ReformerForMaskedLM<double> a(cfg), b(cfg);
  const AttentionMask mask = batch_mask();
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, kEncLength, 11, 8);
  const std::vector<Token> labels = mlm_labels(mask, 11);
  expect_padding_never_leaks(a, b, [&](ReformerForMaskedLM<double>& m, bool change) {
    return m.train_step(change ? repadded(tokens, mask, kEncLength, 11) : tokens, kEncBatch, mask,
                        labels, 4);
  });
}

TEST(EncoderPadding, PaddedTokensChangeNothingInTheClassifier) {
  ReformerForSequenceClassification<double> a(encoder_config()), b(encoder_config());
  const AttentionMask mask = AttentionMask::from_lengths({10, 7, 4}, 10);  // padded to 12 too
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, 10, 11, 9);
  const std::vector<Token> labels = {1, 2, 0};
  expect_padding_never_leaks(a, b, [&](ReformerForSequenceClassification<double>& m, bool c) {
    return m.train_step(c ? repadded(tokens, mask, 10, 11) : tokens, kEncBatch, mask, labels, 3);
  });
}

TEST(EncoderPadding, PaddedTokensChangeNothingInTheCausalLm) {
  ReformerConfig cfg = test::tiny_config();
  cfg.hidden_dropout_prob = 0.1;
  ReformerLM<double> a(cfg), b(cfg);
  const AttentionMask mask = batch_mask();
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, kEncLength, 11, 10);
  expect_padding_never_leaks(a, b, [&](ReformerLM<double>& m, bool change) {
    Tape<double> tape;
    const double loss = m.forward_loss(change ? repadded(tokens, mask, kEncLength, 11) : tokens,
                                       kEncBatch, mask, tape, 6);
    m.backward(tape);
    return loss;
  });
}

TEST(EncoderPadding, ATapeMayBeFedItsOwnTokens) {
  ReformerLM<double> model(test::tiny_config());
  const std::vector<Token> tokens = test::random_tokens(2, 12, 11, 3);  // 12: no padding
  Tape<double> tape;
  const double first = model.forward_loss(tokens, 2, tape, 1);
  EXPECT_EQ(model.forward_loss(tape.tokens, 2, tape, 1), first);  // the tape's storage is reused
}

TEST(EncoderPadding, TheDefaultCausalTargetsSkipPadding) {
  ReformerLM<double> model(test::tiny_config());
  const AttentionMask mask = batch_mask();  // real lengths 12, 9, 5
  Tape<double> tape;
  model.forward_loss(test::random_tokens(kEncBatch, kEncLength, 11, 1), kEncBatch, mask, tape, 0);
  EXPECT_EQ(tape.loss_count, 11 + 8 + 4);
}

// ---- determinism -----------------------------------------------------------------------------

TEST(EncoderDeterminism, AStepIsBitwiseTheSameOnOneAndTwoThreads) {
  test::ThreadCountGuard guard;
  ReformerConfig cfg = encoder_config();
  cfg.hidden_dropout_prob = 0.1;
  cfg.lsh_attention_probs_dropout_prob = 0.1;
  const AttentionMask mask = AttentionMask::from_lengths({10, 7, 4}, 10);
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, 10, 11, 12);
  const std::vector<Token> labels = {0, 1, 2};
  ReformerForSequenceClassification<float> one(cfg), two(cfg);
  set_num_threads(1);
  const double l1 = one.train_step(tokens, kEncBatch, mask, labels, 7);
  set_num_threads(2);
  const double l2 = two.train_step(tokens, kEncBatch, mask, labels, 7);
  EXPECT_EQ(l1, l2);
  EXPECT_TRUE(one.parameters().grads() == two.parameters().grads());
}

// ---- parameters, errors ----------------------------------------------------------------------

TEST(EncoderModels, ParametersCarryTheHuggingFaceNames) {
  const ReformerConfig cfg = encoder_config();
  ReformerForSequenceClassification<float> cls(cfg);
  EXPECT_TRUE(cls.find_parameter("classifier.out_proj.weight").has_value());
  EXPECT_EQ(cls.parameter("classifier.out_proj.weight").rows(), 3);
  EXPECT_TRUE(cls.find_parameter("reformer.encoder.layer_norm.weight").has_value());
  ReformerForMaskedLM<float> mlm(cfg);
  EXPECT_EQ(mlm.find_parameter("lm_head.decoder.bias"), mlm.find_parameter("lm_head.bias"));
  ReformerForQuestionAnswering<float> qa(cfg);
  EXPECT_EQ(qa.parameter("qa_outputs.weight").rows(), 2);
  EXPECT_EQ(qa.named_parameters().back().name(), "qa_outputs.bias");
}

TEST(EncoderModels, ConfigsAreCheckedAsHuggingFaceDoes) {
  ReformerConfig causal = encoder_config();
  causal.is_decoder = true;
  std::string m = message_of([&] { ReformerForMaskedLM<float> model(causal); });
  EXPECT_NE(m.find("lsh_num_chunks_after = 1"), std::string::npos) << m;
  causal.lsh_num_chunks_after = causal.local_num_chunks_after = 0;
  m = message_of([&] { ReformerForMaskedLM<float> model(causal); });
  EXPECT_NE(m.find("is_decoder = true"), std::string::npos) << m;
  m = message_of([&] { ReformerLM<float> model(encoder_config()); });
  EXPECT_NE(m.find("is_decoder"), std::string::npos) << m;
}

TEST(EncoderModels, BadInputIsNamed) {
  ReformerForSequenceClassification<double> cls(encoder_config());
  ReformerForMaskedLM<double> mlm(encoder_config());
  const std::vector<Token> tokens = test::random_tokens(kEncBatch, kEncLength, 11, 2);
  Tape<double> tape;
  const std::vector<Token> labels = {0, 1, 2};

  std::string m = message_of([&] {
    cls.forward_loss(tokens, kEncBatch, AttentionMask::from_lengths({12, 3}, 12), labels, tape, 0);
  });
  EXPECT_NE(m.find("attention mask is 2 x 12"), std::string::npos) << m;
  EXPECT_NE(m.find("input is 3 x 12"), std::string::npos) << m;
  m = message_of([&] {
    cls.logits(tokens, kEncBatch, AttentionMask::from_lengths({12, 0, 4}, 12));
  });
  EXPECT_NE(m.find("sequence 1 of the attention mask is all padding"), std::string::npos) << m;
  m = message_of([&] {
    cls.forward_loss(tokens, kEncBatch, batch_mask(), std::vector<Token>{0, 3, 1}, tape, 0);
  });
  EXPECT_NE(m.find("labels[1] = 3"), std::string::npos) << m;
  EXPECT_NE(m.find("num_labels = 3"), std::string::npos) << m;
  m = message_of([&] {
    cls.forward_loss(tokens, kEncBatch, batch_mask(), std::vector<Token>{0, 1}, tape, 0);
  });
  EXPECT_NE(m.find("labels.size() = 2"), std::string::npos) << m;

  std::vector<Token> mlm_bad = mlm_labels(batch_mask(), 11);
  mlm_bad[7] = 11;
  m = message_of([&] { mlm.forward_loss(tokens, kEncBatch, batch_mask(), mlm_bad, tape, 0); });
  EXPECT_NE(m.find("labels[7] = 11"), std::string::npos) << m;
  mlm_bad.pop_back();
  m = message_of([&] { mlm.forward_loss(tokens, kEncBatch, batch_mask(), mlm_bad, tape, 0); });
  EXPECT_NE(m.find("labels.size() = 35"), std::string::npos) << m;
  m = message_of([&] { mlm.backward(tape); });
  EXPECT_NE(m.find("no forward pass"), std::string::npos) << m;
}

TEST(EncoderModels, PaddingBeyondThePositionsIsRefused) {
  ReformerConfig cfg = encoder_config();  // chunk lengths 4 and 3: multiples of 12
  cfg.axial_pos_embds = false;
  cfg.max_position_embeddings = 20;
  ReformerForMaskedLM<float> model(cfg);
  const std::vector<Token> tokens = test::random_tokens(1, 14, 11, 1);  // padded to 24
  const std::string m = message_of([&] { model.logits(tokens, 1); });
  EXPECT_NE(m.find("T = 14 is padded to 24"), std::string::npos) << m;
  EXPECT_NE(m.find("max_position_embeddings"), std::string::npos) << m;
  EXPECT_EQ(model.logits(test::random_tokens(1, 12, 11, 1), 1).cols(), 12);
}

}  // namespace
}  // namespace reformer
