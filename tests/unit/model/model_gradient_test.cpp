// Whole-model gradients: finite differences in double (buckets frozen), reversible vs
// stored-activation backprop (double and float), with and without kept activations,
// reconstruction of the block inputs.
#include "reformer/core/context.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace reformer {
namespace {

// The loss of `model` at RNG step `step` with the LSH buckets of `frozen` replayed.
double frozen_loss(ReformerLM<double>& model, const std::vector<Token>& tokens, Index batch,
                   const Tape<double>& frozen, std::uint64_t step, Tape<double>& tape) {
  tape.buckets = frozen.buckets;
  tape.buckets.replay = true;
  return model.forward_loss(tokens, batch, tape, step);
}

// kept_budget: the model's kept-activation budget (bytes; 0 keeps nothing).
void check_model_gradients(ReformerConfig cfg, BackpropMode mode, std::size_t kept_budget = 0) {
  // Thousands of tiny forward passes: one thread avoids the fork/join cost per layer (thread
  // counts are covered by the determinism tests).
  test::ThreadCountGuard guard;
  set_num_threads(1);
  ReformerLM<double> model(cfg, mode);
  model.set_kept_activation_budget(kept_budget);
  const Index batch = 2, length = 10;  // padded to 12, the chunk lengths' lcm
  const std::vector<Token> tokens = test::random_tokens(batch, length, cfg.vocab_size, 5);
  const std::uint64_t step = 3;
  Tape<double> frozen;  // records the buckets once; every later pass replays them
  model.forward_loss(tokens, batch, frozen, step);
  for (Index l = 0; l < cfg.num_layers(); ++l) {
    const BucketTape& b = frozen.buckets.layers[static_cast<std::size_t>(l)];
    if (cfg.layer_kind(l) == LayerKind::kLsh) {
      EXPECT_EQ(b.rounds, 2);
      EXPECT_EQ(b.length, cfg.padded_length(length));  // 12: HF pads to the chunk lengths' lcm
    } else {
      EXPECT_TRUE(b.empty());
    }
  }

  auto forward = [&] {
    Tape<double> tape;
    Matrix<double> l(1, 1);
    l(0, 0) = frozen_loss(model, tokens, batch, frozen, step, tape);
    return l;
  };
  auto backward = [&](const Matrix<double>& w) {
    Tape<double> tape;
    frozen_loss(model, tokens, batch, frozen, step, tape);
    // With a budget that holds them all, every feed-forward and LSH attention backward runs
    // from kept activations.
    if (kept_budget == SIZE_MAX) {
      std::size_t keeping = static_cast<std::size_t>(cfg.num_layers());
      for (Index l = 0; l < cfg.num_layers(); ++l) keeping += cfg.layer_kind(l) == LayerKind::kLsh;
      EXPECT_EQ(tape.kept.filled(), keeping);
    }
    model.zero_grad();
    model.backward(tape, w(0, 0));
  };
  testing::GradCheckOptions opt;
  opt.step = 1e-4;
  opt.max_coords = 12;  // a seeded sample per tensor (always including its largest gradient)
  testing::GradientChecker check(forward, backward, opt);
  int checked = 0;
  for (auto& p : model.named_parameters()) {
    const Vector<double> g = p.grad;  // snapshot: the checker's forward passes do not touch it
    const auto r = check(p.value, g, p.name());
    EXPECT_TRUE(r.passed()) << r;
    ++checked;
  }
  EXPECT_EQ(checked, model.parameters().num_slots());
}

TEST(ModelGradients, ReversibleMatchesFiniteDifferences) {
  check_model_gradients(test::tiny_config(), BackpropMode::kReversible);
}

TEST(ModelGradients, ReversibleWithDropoutMatchesFiniteDifferences) {
  // Dropout masks are pure functions of (seed, step, layer, stream): the backward pass redraws
  // exactly the forward masks, so finite differences at a fixed step see the same function.
  ReformerConfig cfg = test::tiny_config();
  cfg.hidden_dropout_prob = 0.2;
  cfg.lsh_attention_probs_dropout_prob = 0.15;
  cfg.local_attention_probs_dropout_prob = 0.1;
  cfg.attn_layers = {"local", "lsh", "full", "lsh"};
  cfg.hidden_act = "gelu";  // smooth: with ReLU a finite-difference step may cross a kink
  check_model_gradients(cfg, BackpropMode::kReversible);
}

TEST(ModelGradients, KeptActivationsMatchFiniteDifferences) {
  ReformerConfig cfg = test::tiny_config();
  cfg.hidden_dropout_prob = 0.2;
  cfg.attn_layers = {"local", "lsh", "full"};
  cfg.hidden_act = "gelu";
  check_model_gradients(cfg, BackpropMode::kReversible, SIZE_MAX);
}

TEST(ModelGradients, LearnedPositionsMatchFiniteDifferences) {
  ReformerConfig cfg = test::tiny_config();
  cfg.axial_pos_embds = false;
  check_model_gradients(cfg, BackpropMode::kReversible);
}

// Gradients of the reversible path minus those of ordinary backprop, relative to the latter.
// kept_budget: the reversible model's kept-activation budget.
template <class S>
double reversible_vs_stored(const ReformerConfig& cfg, Index batch, Index length,
                            std::size_t kept_budget = 0) {
  ReformerLM<S> rev(cfg, BackpropMode::kReversible), sto(cfg, BackpropMode::kStoredActivations);
  rev.set_kept_activation_budget(kept_budget);
  sto.set_kept_activation_budget(kept_budget);  // ignored in the stored mode
  const std::vector<Token> tokens = test::random_tokens(batch, length, cfg.vocab_size, 9);
  Tape<S> a, b;
  const double la = rev.forward_loss(tokens, batch, a, 7);
  const double lb = sto.forward_loss(tokens, batch, b, 7);
  EXPECT_EQ(b.kept.bytes_held(), 0u);
  EXPECT_EQ(la, lb);  // the forward passes are the same computation, kept activations or not
  EXPECT_EQ(a.buckets.layers[1].data, b.buckets.layers[1].data);
  rev.backward(a);
  sto.backward(b);
  EXPECT_GT(sto.parameters().grads().norm(), 0);
  return test::relative_error(rev.parameters().grads(), sto.parameters().grads());
}

ReformerConfig six_layer_dropout_config() {
  ReformerConfig cfg = test::tiny_config();
  cfg.attn_layers = {"local", "lsh", "full", "lsh", "local", "lsh"};
  cfg.hidden_dropout_prob = 0.1;
  cfg.lsh_attention_probs_dropout_prob = 0.1;
  cfg.local_attention_probs_dropout_prob = 0.1;
  return cfg;
}

TEST(ModelGradients, ReversibleEqualsStoredActivationsInDouble) {
  EXPECT_LT(reversible_vs_stored<double>(six_layer_dropout_config(), 2, 10), 1e-9);
}

// The sublayers that can keep (feed-forward, LSH attention) and fit what is left of the budget
// keep their activations, the feed-forwards first: all of them, some, or none (a budget below the
// smallest). The gradients are those of ordinary backprop in every case.
TEST(ModelGradients, KeptActivationsEqualStoredActivationsInDouble) {
  ReformerConfig cfg = six_layer_dropout_config();
  cfg.hidden_act = "gelu";
  const Index batch = 2, length = 10, n = batch * cfg.padded_length(length);
  Context ctx;
  ctx.batch = batch;
  // Each slot's bytes in the order the stack considers them (G0 .. G5, then F0 .. F5): 0 for
  // local and full attention.
  std::vector<std::size_t> slots;
  {
    const ReformerLM<double> probe(cfg);
    const Index layers = probe.stack().size();
    for (Index l = 0; l < layers; ++l) {
      slots.push_back(probe.stack().feed_forward(l).kept_bytes(n, ctx));
      EXPECT_EQ(slots.back(),
                static_cast<std::size_t>((2 * cfg.hidden_size + cfg.feed_forward_size) * n) *
                    sizeof(double));
    }
    for (Index l = 0; l < layers; ++l) {
      slots.push_back(probe.stack().attention(l).kept_bytes(n, ctx));
      EXPECT_EQ(slots.back() > 0, cfg.layer_kind(l) == LayerKind::kLsh) << l;
    }
  }
  const std::size_t ff = slots[0], lsh = slots[7];  // layer 1 is LSH
  // The rule: each slot in order that keeps and fits what is left.
  const auto expected = [&](std::size_t budget) {
    std::pair<std::size_t, std::size_t> kept{0, 0};  // slots, bytes
    for (const std::size_t bytes : slots) {
      if (bytes > 0 && bytes <= budget) {
        budget -= bytes;
        ++kept.first;
        kept.second += bytes;
      }
    }
    return kept;
  };
  EXPECT_EQ(expected(SIZE_MAX).first, 9u);  // six feed-forwards, three LSH attentions
  // All; the six feed-forwards and one LSH attention; three feed-forwards; none.
  const std::size_t six_and_one = 6 * ff + lsh + lsh / 2, three = 3 * ff + ff / 2;
  for (const std::size_t budget : {SIZE_MAX, six_and_one, three, std::min(ff, lsh) - 1}) {
    SCOPED_TRACE(::testing::Message() << "budget " << budget);
    EXPECT_LT(reversible_vs_stored<double>(cfg, batch, length, budget), 1e-9);
    ReformerLM<double> model(cfg);
    model.set_kept_activation_budget(budget);
    EXPECT_EQ(model.kept_activation_budget(), budget);
    Tape<double> tape;
    model.forward_loss(test::random_tokens(batch, length, cfg.vocab_size, 9), batch, tape, 7);
    const auto [kept, bytes] = expected(budget);
    if (budget == six_and_one) {
      EXPECT_EQ(kept, 7u);
      EXPECT_TRUE(tape.kept.attention_kept.at(1));
      EXPECT_FALSE(tape.kept.attention_kept.at(3));
    }
    if (budget == three) {
      EXPECT_EQ(kept, lsh <= ff / 2 ? 4u : 3u);
      EXPECT_TRUE(tape.kept.feed_forward_kept.at(2));
      EXPECT_FALSE(tape.kept.feed_forward_kept.at(3));
    }
    EXPECT_EQ(tape.kept.filled(), kept);
    EXPECT_EQ(tape.kept.bytes_held(), bytes);
    EXPECT_EQ(tape.activation_bytes(),
              2 * static_cast<std::size_t>(cfg.hidden_size * n) * sizeof(double) + bytes);
    model.backward(tape);
    EXPECT_EQ(tape.kept.filled(), 0u) << "the backward consumes them";
  }
}

TEST(ModelGradients, KeptActivationsMatchStoredActivationsInFloat) {
  ReformerConfig cfg = six_layer_dropout_config();
  cfg.hidden_act = "gelu";
  EXPECT_LT(reversible_vs_stored<float>(cfg, 2, 10, SIZE_MAX), 1e-3);
}

// In float the reconstructed inputs differ from the stored ones by rounding (x2 = y2 - G(y1)
// loses the low bits of x2 when |G(y1)| >> |x2|), which then flows into the gradients. With six
// layers and dropout the relative gradient difference stays below 1e-3 (observed 4e-6).
TEST(ModelGradients, ReversibleMatchesStoredActivationsInFloat) {
  EXPECT_LT(reversible_vs_stored<float>(six_layer_dropout_config(), 2, 10), 1e-3);
}

// Reconstruction: the block inputs the backward walk recovers from the outputs match those of
// the forward pass. Float, 12 layers of a model's stack, walked block by block with the model's
// contexts (dropout on, buckets recorded then replayed); tolerance 1e-4 relative to the largest
// activation (observed 2e-7: each layer adds a few ulps of the residual stream's magnitude).
TEST(ModelGradients, BackwardReconstructsTheBlockInputsInFloat) {
  ReformerConfig cfg = test::tiny_config();
  cfg.attn_layers.clear();
  for (int i = 0; i < 4; ++i) {
    for (const char* k : {"lsh", "local", "full"}) cfg.attn_layers.emplace_back(k);
  }
  cfg.initializer_range = 0.1;
  cfg.hidden_dropout_prob = 0.1;
  ReformerLM<float> model(cfg);
  const ReversibleStack<float>& stack = model.stack();
  ASSERT_EQ(stack.size(), 12);
  Context ctx;
  ctx.batch = 2;
  ctx.training = true;
  ctx.seed = cfg.seed;
  ctx.step = 1;
  const Index n = 20;
  Matrix<float> x1 = test::random_matrix<float>(cfg.hidden_size, n, 3);
  Matrix<float> x2 = x1;  // as the model: x1 = x2 = e
  std::vector<Matrix<float>> fwd1(12), fwd2(12), bwd1(12), bwd2(12);
  BucketRecord buckets;
  buckets.layers.resize(12);
  ReversibleWorkspace<float> ws;
  for (Index l = 0; l < 12; ++l) {
    fwd1[static_cast<std::size_t>(l)] = x1;
    fwd2[static_cast<std::size_t>(l)] = x2;
    stack.forward_block(l, model.parameters(), x1, x2, stack.block_context(ctx, l, buckets, false),
                        ws);
  }
  Matrix<float> dy1 = test::random_matrix<float>(cfg.hidden_size, n, 5);
  Matrix<float> dy2 = test::random_matrix<float>(cfg.hidden_size, n, 6);
  for (Index l = 11; l >= 0; --l) {
    stack.backward_block(l, model.parameters(), x1, x2, dy1, dy2,
                         stack.block_context(ctx, l, buckets, true));
    bwd1[static_cast<std::size_t>(l)] = x1;
    bwd2[static_cast<std::size_t>(l)] = x2;
  }
  double worst = 0;
  for (std::size_t l = 0; l < 12; ++l) {
    ASSERT_EQ(bwd1[l].cols(), 20) << "layer " << l << " was not reconstructed";
    worst = std::max(worst, test::relative_error(bwd1[l], fwd1[l]));
    worst = std::max(worst, test::relative_error(bwd2[l], fwd2[l]));
  }
  EXPECT_LT(worst, 1e-4);
  EXPECT_GT(fwd1[11].cwiseAbs().maxCoeff(), 0.f);
  // The first block's inputs are the embeddings: x1 = x2 = e.
  EXPECT_EQ(fwd1[0], fwd2[0]);
}

}  // namespace
}  // namespace reformer
