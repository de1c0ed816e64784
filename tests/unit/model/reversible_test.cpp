// The reversible block and ReversibleStack with toy sublayers: inversion, gradients vs stored
// activations and vs finite differences, argument checks; the sublayer contract's trait.
#include "reformer/layers/reversible.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/layers/sublayer.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

namespace reformer {
namespace {

using test::random_matrix;
using test::relative_error;
using test::TanhSublayer;

struct Block {
  explicit Block(Index d) : f(d, params, "f."), g(d, params, "g.") {
    f.init(params, Rng(1), 0.6);
    g.init(params, Rng(2), 0.6);
  }
  Parameters<double> params;
  TanhSublayer<double> f, g;
};

TEST(Reversible, ForwardComputesTheResidualFormula) {
  const Index d = 5, n = 7;
  Block blk(d);
  const Matrix<double> x1 = random_matrix<double>(d, n, 11), x2 = random_matrix<double>(d, n, 12);
  Matrix<double> y1 = x1, y2 = x2, fx(d, n), gy(d, n);
  ReversibleWorkspace<double> ws;
  const Context ctx;
  reversible_forward<double>(blk.f, blk.g, blk.params, y1, y2, ctx, ws);
  blk.f.forward(blk.params, x2, fx, ctx);
  EXPECT_LT(relative_error(y1, Matrix<double>(x1 + fx)), 1e-15);
  blk.g.forward(blk.params, y1, gy, ctx);
  EXPECT_LT(relative_error(y2, Matrix<double>(x2 + gy)), 1e-15);
}

TEST(Reversible, BackwardReconstructsInputsAndMatchesStoredActivations) {
  const Index d = 6, n = 9;
  Block rev(d), sto(d);
  const Matrix<double> x1 = random_matrix<double>(d, n, 21), x2 = random_matrix<double>(d, n, 22);
  const Matrix<double> dy1 = random_matrix<double>(d, n, 23);
  const Matrix<double> dy2 = random_matrix<double>(d, n, 24);
  const Context ctx;
  ReversibleWorkspace<double> ws;

  Matrix<double> y1 = x1, y2 = x2;
  reversible_forward<double>(rev.f, rev.g, rev.params, y1, y2, ctx, ws);
  Matrix<double> f_in = x2, g_in = y1;  // the stored sublayer inputs

  Matrix<double> r1 = y1, r2 = y2, g1 = dy1, g2 = dy2;
  reversible_backward<double>(rev.f, rev.g, rev.params, r1, r2, g1, g2, ctx);
  EXPECT_LT(relative_error(r1, x1), 1e-14);
  EXPECT_LT(relative_error(r2, x2), 1e-14);

  Matrix<double> s1 = dy1, s2 = dy2;
  stored_backward<double>(sto.f, sto.g, sto.params, f_in, g_in, s1, s2, ctx, ws);
  EXPECT_LT(relative_error(g1, s1), 1e-12);
  EXPECT_LT(relative_error(g2, s2), 1e-12);
  EXPECT_LT(relative_error(rev.params.grads(), sto.params.grads()), 1e-12);
  EXPECT_GT(rev.params.grads().norm(), 0.0);
}

TEST(Reversible, GradientsMatchFiniteDifferences) {
  const Index d = 4, n = 5;
  Block blk(d);
  Matrix<double> x1 = random_matrix<double>(d, n, 31), x2 = random_matrix<double>(d, n, 32);
  const Matrix<double> c1 = random_matrix<double>(d, n, 33), c2 = random_matrix<double>(d, n, 34);
  const Context ctx;
  ReversibleWorkspace<double> ws;
  // L = <c1, y1> + <c2, y2>
  auto loss = [&]() {
    Matrix<double> y1 = x1, y2 = x2;
    reversible_forward<double>(blk.f, blk.g, blk.params, y1, y2, ctx, ws);
    return c1.cwiseProduct(y1).sum() + c2.cwiseProduct(y2).sum();
  };
  Matrix<double> y1 = x1, y2 = x2, dx1 = c1, dx2 = c2;
  reversible_forward<double>(blk.f, blk.g, blk.params, y1, y2, ctx, ws);
  blk.params.zero_grad();
  reversible_backward<double>(blk.f, blk.g, blk.params, y1, y2, dx1, dx2, ctx);

  Eigen::Map<Eigen::VectorXd> v1(x1.data(), x1.size()), v2(x2.data(), x2.size());
  const Eigen::VectorXd fd1 = test::finite_differences(v1, loss);
  const Eigen::VectorXd fd2 = test::finite_differences(v2, loss);
  const Eigen::VectorXd fdp = test::finite_differences(blk.params.values(), loss);
  EXPECT_LT(test::gradient_error(Eigen::Map<const Eigen::VectorXd>(dx1.data(), dx1.size()), fd1),
            1e-6);
  EXPECT_LT(test::gradient_error(Eigen::Map<const Eigen::VectorXd>(dx2.data(), dx2.size()), fd2),
            1e-6);
  EXPECT_LT(test::gradient_error(blk.params.grads(), fdp), 1e-6);
}

TEST(Reversible, RejectsMismatchedStreams) {
  Block blk(3);
  Matrix<double> a(3, 4), b(3, 5), c(3, 4), e(3, 4);
  a.setZero();
  b.setZero();
  c.setZero();
  e.setZero();
  ReversibleWorkspace<double> ws;
  const Context ctx;
  EXPECT_THROW(reversible_forward<double>(blk.f, blk.g, blk.params, a, b, ctx, ws),
               InvalidArgument);
  EXPECT_THROW(reversible_backward<double>(blk.f, blk.g, blk.params, a, c, b, e, ctx),
               InvalidArgument);
  try {
    reversible_forward<double>(blk.f, blk.g, blk.params, a, b, ctx, ws);
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("reversible_forward"), std::string::npos);
    EXPECT_NE(std::string(err.what()).find("3 x 5"), std::string::npos);
  }
}

// ---- the sublayer contract -----------------------------------------------------------------

// The library's sublayers meet the contract (a compile-time check: the stack's add() and the
// reversible block would not compile otherwise).
static_assert(is_sublayer_v<FeedForward<double>, double>);
static_assert(is_sublayer_v<AttentionSublayer<double, LshAttention<double>>, double>);
static_assert(is_sublayer_v<AttentionSublayer<float, LocalAttention<float>>, float>);
static_assert(is_sublayer_v<AttentionSublayer<double, FullAttention<double>>, double>);
static_assert(is_sublayer_v<test::TanhSublayer<double>, double>);

// Near misses do not: the out-of-place form without the const qualifier, a missing init.
struct NonConstBackward {
  void init(Parameters<double>&, const Rng&, double) const {}
  void forward(const Parameters<double>&, ConstMatrixRef<double>, MatrixRef<double>,
               const Context&) const {}
  void backward(Parameters<double>&, ConstMatrixRef<double>, ConstMatrixRef<double>,
                MatrixRef<double>, MatrixRef<double>, const Context&) {}
};
struct NoInit {
  void forward(const Parameters<double>&, ConstMatrixRef<double>, MatrixRef<double>,
               const Context&) const {}
  void backward(Parameters<double>&, ConstMatrixRef<double>, ConstMatrixRef<double>,
                MatrixRef<double>, MatrixRef<double>, const Context&) const {}
};
static_assert(!is_sublayer_v<NonConstBackward, double>);
static_assert(!is_sublayer_v<NoInit, double>);
static_assert(!is_sublayer_v<test::TanhSublayer<float>, double>, "the scalar type must match");

TEST(SublayerContract, OutOfPlaceAdapterGivesTheJacobianProductAndTheOutput) {
  const Index d = 4, n = 6;
  Block blk(d);
  const Matrix<double> x = random_matrix<double>(d, n, 41), dy = random_matrix<double>(d, n, 42);
  const Context ctx;
  Matrix<double> dx = Matrix<double>::Constant(d, n, 7.0), fx = dx, y(d, n);
  backward_out_of_place(blk.f, blk.params, x, dy, dx, fx, ctx);  // overwrites dx and fx
  blk.f.forward(blk.params, x, y, ctx);
  EXPECT_LT(relative_error(fx, y), 1e-15);
  // tanh: dx = W^T (dy .* (1 - y^2))
  const Matrix<double> dz = dy.cwiseProduct((1.0 - y.array().square()).matrix());
  EXPECT_LT(relative_error(dx, Matrix<double>(blk.params.value(0).transpose() * dz)), 1e-14);
  Matrix<double> bad(d, n + 1);
  EXPECT_THROW(backward_out_of_place(blk.f, blk.params, x, dy, bad, fx, ctx), InvalidArgument);
}

// ---- ReversibleStack -------------------------------------------------------------------------

struct ToyStack {
  explicit ToyStack(Index d, Index blocks) {
    for (Index l = 0; l < blocks; ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      test::TanhSublayer<double> f(d, params, p + "f.");
      test::TanhSublayer<double> g(d, params, p + "g.");
      stack.add(f, g);
    }
    stack.init(params, Rng(5), Rng(6), 0.5);
  }
  Parameters<double> params;
  ReversibleStack<double> stack;
};

TEST(ReversibleStack, ForwardIsTheBlocksInOrderAndBackwardMatchesStoredActivations) {
  const Index d = 5, n = 8, blocks = 3;
  ToyStack rev(d, blocks), sto(d, blocks);
  ASSERT_EQ(rev.stack.size(), blocks);
  ASSERT_NE(rev.stack.attention(1).get<test::TanhSublayer<double>>(), nullptr);
  EXPECT_EQ(rev.stack.attention(1).get<FeedForward<double>>(), nullptr);
  const Matrix<double> x1 = random_matrix<double>(d, n, 51), x2 = random_matrix<double>(d, n, 52);
  Context ctx;
  ctx.layer = 99;  // the stack sets each block's own layer index

  // Forward: the blocks one after another.
  Matrix<double> m1 = x1, m2 = x2;
  ReversibleWorkspace<double> ws;
  BucketRecord manual;
  manual.layers.resize(blocks);
  for (Index l = 0; l < blocks; ++l) {
    reversible_forward<double>(*rev.stack.attention(l).get<test::TanhSublayer<double>>(),
                               *rev.stack.feed_forward(l).get<test::TanhSublayer<double>>(),
                               rev.params, m1, m2, rev.stack.block_context(ctx, l, manual, false),
                               ws);
  }
  Matrix<double> y1 = x1, y2 = x2;
  BucketRecord buckets;
  rev.stack.forward(rev.params, y1, y2, ctx, buckets);
  EXPECT_EQ(y1, m1);
  EXPECT_EQ(y2, m2);
  EXPECT_EQ(buckets.layers.size(), std::size_t(blocks));

  // Stored activations, for the oracle.
  Matrix<double> s1 = x1, s2 = x2;
  StoredInputs<double> stored;
  BucketRecord sb;
  sto.stack.forward(sto.params, s1, s2, ctx, sb, &stored);
  EXPECT_EQ(s1, y1);
  ASSERT_EQ(stored.attention.size(), std::size_t(blocks));

  const Matrix<double> dy1 = random_matrix<double>(d, n, 53), dy2 = random_matrix<double>(d, n, 54);
  Matrix<double> g1 = dy1, g2 = dy2, h1 = dy1, h2 = dy2;
  rev.stack.backward(rev.params, y1, y2, g1, g2, ctx, buckets);
  sto.stack.backward_stored(sto.params, stored, h1, h2, ctx, sb);
  EXPECT_LT(relative_error(y1, x1), 1e-13) << "inputs reconstructed";
  EXPECT_LT(relative_error(y2, x2), 1e-13);
  EXPECT_LT(relative_error(g1, h1), 1e-12);
  EXPECT_LT(relative_error(g2, h2), 1e-12);
  EXPECT_LT(relative_error(rev.params.grads(), sto.params.grads()), 1e-12);
  EXPECT_GT(rev.params.grads().norm(), 0.0);
}

// Blocks of a toy F and a FeedForward G (which can keep its activations).
struct KeepingStack {
  explicit KeepingStack(Index d, Index blocks) {
    FeedForwardConfig cfg;
    cfg.hidden_size = d;
    cfg.feed_forward_size = 7;
    cfg.dropout = 0.2;
    for (Index l = 0; l < blocks; ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      test::TanhSublayer<double> f(d, params, p + "f.");
      stack.add(f, FeedForward<double>(cfg, params, p + "g."));
    }
    stack.init(params, Rng(7), Rng(8), 0.5);
  }
  Parameters<double> params;
  ReversibleStack<double> stack;
};

static_assert(!is_keeping_sublayer_v<test::TanhSublayer<double>, double>);
static_assert(is_keeping_sublayer_v<Sublayer<double>, double>, "the handle forwards them");

// Kept activations within a budget: the feed-forward sublayers that fit (the first ones) keep,
// the toy sublayers never do; the backward matches ordinary backprop either way and consumes
// what was kept.
TEST(ReversibleStack, KeptActivationsWithinABudgetMatchStoredActivations) {
  const Index d = 5, n = 8, blocks = 3;
  KeepingStack sto(d, blocks);
  Context ctx;
  ctx.training = true;
  const Matrix<double> x1 = random_matrix<double>(d, n, 61), x2 = random_matrix<double>(d, n, 62);
  const Matrix<double> dy1 = random_matrix<double>(d, n, 63), dy2 = random_matrix<double>(d, n, 64);
  Matrix<double> s1 = x1, s2 = x2, h1 = dy1, h2 = dy2;
  StoredInputs<double> stored;
  BucketRecord sb;
  sto.stack.forward(sto.params, s1, s2, ctx, sb, &stored);
  sto.stack.backward_stored(sto.params, stored, h1, h2, ctx, sb);

  const std::size_t one = sto.stack.feed_forward(0).kept_bytes(n, ctx);
  ASSERT_EQ(one, static_cast<std::size_t>((2 * d + 7) * n) * sizeof(double));
  EXPECT_EQ(sto.stack.attention(0).kept_bytes(n, ctx), 0u);
  for (const std::size_t budget : {std::size_t{0}, one, 2 * one + 1, SIZE_MAX}) {
    SCOPED_TRACE(::testing::Message() << "budget " << budget);
    const std::size_t expected = std::min<std::size_t>(budget / one, blocks);
    KeepingStack rev(d, blocks);
    KeptRecord<double> kept;
    kept.budget_bytes = budget;
    Matrix<double> y1 = x1, y2 = x2, g1 = dy1, g2 = dy2;
    BucketRecord buckets;
    rev.stack.forward(rev.params, y1, y2, ctx, buckets, nullptr, &kept);
    EXPECT_EQ(kept.filled(), expected);
    EXPECT_EQ(kept.bytes_held(), expected * one);
    for (Index l = 0; l < blocks; ++l) {
      EXPECT_EQ(kept.feed_forward[static_cast<std::size_t>(l)].filled,
                l < static_cast<Index>(expected));
    }
    EXPECT_LT(relative_error(y1, s1), 1e-13);
    rev.stack.backward(rev.params, y1, y2, g1, g2, ctx, buckets, &kept);
    EXPECT_EQ(kept.filled(), 0u);
    EXPECT_LT(relative_error(y1, x1), 1e-13) << "inputs reconstructed";
    EXPECT_LT(relative_error(y2, x2), 1e-13);
    EXPECT_LT(relative_error(g1, h1), 1e-12);
    EXPECT_LT(relative_error(g2, h2), 1e-12);
    EXPECT_LT(relative_error(rev.params.grads(), sto.params.grads()), 1e-12);
  }

  // Misuse: stored inputs and kept activations together; a record of another depth.
  KeepingStack rev(d, blocks);
  KeptRecord<double> kept;
  kept.budget_bytes = SIZE_MAX;
  Matrix<double> y1 = x1, y2 = x2, g1 = dy1, g2 = dy2;
  BucketRecord buckets;
  EXPECT_THROW(rev.stack.forward(rev.params, y1, y2, ctx, buckets, &stored, &kept),
               InvalidArgument);
  rev.stack.forward(rev.params, y1, y2, ctx, buckets, nullptr, &kept);
  KeptRecord<double> other;
  EXPECT_THROW(rev.stack.backward(rev.params, y1, y2, g1, g2, ctx, buckets, &other),
               InvalidArgument);
}

TEST(ReversibleStack, RejectsBucketRecordsOfAnotherDepth) {
  ToyStack s(3, 2);
  Matrix<double> a = random_matrix<double>(3, 4, 1), b = a, da = a, db = a;
  BucketRecord wrong;
  wrong.layers.resize(3);
  wrong.replay = true;
  EXPECT_THROW(s.stack.forward(s.params, a, b, Context{}, wrong), InvalidArgument);
  EXPECT_THROW(s.stack.backward(s.params, a, b, da, db, Context{}, wrong), InvalidArgument);
  StoredInputs<double> none;
  BucketRecord two;
  two.layers.resize(2);
  EXPECT_THROW(s.stack.backward_stored(s.params, none, da, db, Context{}, two), InvalidArgument);
}

}  // namespace
}  // namespace reformer
