// The language-model head (model/lm_head.hpp) on inputs long enough for its chunks and its
// per-chunk products to run in parallel: the loss equals the cross-entropy of the head's own
// logits, the chunk size changes only rounding, and loss and gradients are bitwise the same for
// one and two threads, with and without a workspace.
#include "reformer/model/lm_head.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/tokens.hpp"

#include "model_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace reformer::test::lm_head_chunks {

// Wide enough that each chunk's products (V x 2D x chunk) split into blocks.
constexpr Index kHidden = 48, kVocab = 320, kTokens = 500;

struct HeadRun {
  CrossEntropyResult loss;
  Matrix<double> dcat;
  Vector<double> grads;
};

class LmHeadTest : public ::testing::Test {
 protected:
  LmHeadTest() : x1_(kHidden, kTokens), x2_(kHidden, kTokens), targets_(kTokens) {
    const Rng rng(3);
    for (Index i = 0; i < x1_.size(); ++i) {
      x1_.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
      x2_.data()[i] = 0.5 + rng.normal(static_cast<std::uint64_t>(x1_.size() + i));
    }
    for (Index n = 0; n < kTokens; ++n) {
      // Every seventh target is ignored (negative).
      targets_[static_cast<std::size_t>(n)] =
          n % 7 == 3 ? Token{-100} : static_cast<Token>((n * 37 + 11) % kVocab);
    }
  }

  static LmHeadConfig config(Index chunk) {
    LmHeadConfig cfg;
    cfg.hidden_size = kHidden;
    cfg.vocab_size = kVocab;
    cfg.dropout = 0.1;
    cfg.chunk_size = chunk;
    return cfg;
  }

  static Context training_context(Workspace* ws) {
    Context ctx;
    ctx.training = true;
    ctx.seed = 9;
    ctx.step = 4;
    ctx.workspace = ws;
    return ctx;
  }

  // Every parameter normal(0, 0.3) from a fixed seed, LayerNorm weights and biases included.
  static void randomise(Parameters<double>& params) {
    const Rng rng(21);
    for (Index i = 0; i < params.size(); ++i) {
      params.values()[i] = 0.3 * rng.normal(static_cast<std::uint64_t>(i));
    }
  }

  // Loss and gradients of the head (chunk `chunk`) with `threads` threads (parameters as
  // randomise).
  HeadRun run(Index chunk, int threads, Workspace* ws, double scale = 0.25) const {
    ThreadCountGuard guard;
    set_num_threads(threads);
    Parameters<double> params;
    const LmHead<double> head(config(chunk), params);
    randomise(params);
    const Context ctx = training_context(ws);
    const TokenSpan targets(targets_.data(), kTokens);
    HeadRun out;
    out.loss = head.loss(params, x1_, x2_, targets, ctx);
    out.dcat.resize(2 * kHidden, kTokens);
    head.backward(params, x1_, x2_, targets, scale, ctx, out.dcat);
    out.grads = params.grads();
    return out;
  }

  Matrix<double> x1_, x2_;
  std::vector<Token> targets_;
};

TEST_F(LmHeadTest, LossIsTheCrossEntropyOfTheHeadsLogits) {
  Parameters<double> params;
  const LmHead<double> head(config(96), params);
  randomise(params);
  const Context ctx = training_context(nullptr);
  const Matrix<double> logits = head.logits(params, x1_, x2_, ctx);  // same dropout masks
  double sum = 0.0;
  Index count = 0;
  for (Index n = 0; n < kTokens; ++n) {
    const Token t = targets_[static_cast<std::size_t>(n)];
    if (t < 0) continue;
    const double top = logits.col(n).maxCoeff();
    const double lse = top + std::log((logits.col(n).array() - top).exp().sum());
    sum += lse - logits(t, n);
    ++count;
  }
  const CrossEntropyResult ce =
      head.loss(params, x1_, x2_, TokenSpan(targets_.data(), kTokens), ctx);
  EXPECT_EQ(ce.count, count);
  EXPECT_NEAR(ce.sum, sum, 1e-12 * std::abs(sum));
  EXPECT_NEAR(ce.mean, sum / static_cast<double>(count), 1e-12 * std::abs(sum / count));
}

TEST_F(LmHeadTest, ChunkSizeChangesOnlyRounding) {
  const HeadRun a = run(96, 1, nullptr), b = run(kTokens, 1, nullptr);
  EXPECT_EQ(a.loss.count, b.loss.count);
  EXPECT_NEAR(a.loss.sum, b.loss.sum, 1e-12 * std::abs(b.loss.sum));
  EXPECT_LT((a.dcat - b.dcat).cwiseAbs().maxCoeff(), 1e-12 * b.dcat.cwiseAbs().maxCoeff());
  EXPECT_LT((a.grads - b.grads).cwiseAbs().maxCoeff(), 1e-12 * b.grads.cwiseAbs().maxCoeff());
  EXPECT_GT(b.grads.cwiseAbs().maxCoeff(), 0.0);
}

TEST_F(LmHeadTest, OneAndTwoThreadsGiveBitwiseIdenticalLossAndGradients) {
  Workspace ws;
  for (Index chunk : {Index{96}, Index{kTokens}, Index{0}}) {
    for (Workspace* w : {static_cast<Workspace*>(nullptr), &ws}) {
      const HeadRun one = run(chunk, 1, w), two = run(chunk, 2, w);
      EXPECT_EQ(one.loss.sum, two.loss.sum) << "chunk " << chunk;
      EXPECT_EQ(one.loss.count, two.loss.count);
      EXPECT_TRUE(one.dcat == two.dcat) << "chunk " << chunk;
      EXPECT_TRUE(one.grads == two.grads) << "chunk " << chunk;
    }
  }
}

// chunk_size 0: the head picks its chunk from the shapes alone (head_chunk_tokens).
TEST(HeadChunkTokens, FollowsTheBufferBudget) {
  // The benchmarks' model: V = 256, 2D = 512: 256 + 3 x 512 scalars per token.
  EXPECT_EQ(head_chunk_tokens(4096, 0, 256 + 6 * 256), 1152);
  EXPECT_EQ(head_chunk_tokens(1000, 0, 256 + 6 * 256), 1000);  // never more than n
  // A 32K vocabulary with D = 1024 gets the smallest automatic chunk.
  EXPECT_EQ(head_chunk_tokens(Index{1} << 20, 0, 32768 + 6 * 1024), 128);
  // A chunk size the caller asked for is kept (capped at n, at least 1).
  EXPECT_EQ(head_chunk_tokens(4096, 96, 256 + 6 * 256), 96);
  EXPECT_EQ(head_chunk_tokens(50, 96, 256 + 6 * 256), 50);
  EXPECT_EQ(head_chunk_tokens(0, 0, 256 + 6 * 256), 1);
  // Always a multiple of 128 when automatic and not capped by n.
  for (Index per_token : {Index{1}, Index{7}, Index{290}, Index{1792}, Index{40000}})
    EXPECT_EQ(head_chunk_tokens(Index{1} << 30, 0, per_token) % 128, 0) << per_token;
}

TEST_F(LmHeadTest, AutomaticChunkIsTheBudgetsChunk) {
  Parameters<double> params;
  const LmHead<double> head(config(0), params);
  // 320 logits + 3 x 96 per token: 2^21 / 608 = 3449 -> 3328, capped at N.
  EXPECT_EQ(head.chunk(100000), 3328);
  EXPECT_EQ(head.chunk(kTokens), kTokens);
  const HeadRun automatic = run(0, 1, nullptr), whole = run(kTokens, 1, nullptr);
  EXPECT_EQ(automatic.loss.sum, whole.loss.sum);
  EXPECT_TRUE(automatic.dcat == whole.dcat);
  EXPECT_TRUE(automatic.grads == whole.grads);
}

TEST_F(LmHeadTest, LossRejectsTargetsOfTheWrongLength) {
  Parameters<double> params;
  const LmHead<double> head(config(96), params);
  const Context ctx = training_context(nullptr);
  try {
    head.loss(params, x1_, x2_, TokenSpan(targets_.data(), kTokens - 1), ctx);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("targets.size() = 499"), std::string::npos) << e.what();
  }
}

}  // namespace reformer::test::lm_head_chunks
