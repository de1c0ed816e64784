// FeedForward's kept activations (forward_keeping / backward_from_kept, the optional part of the
// sublayer contract), for every activation, with dropout, over one block and many: the keeping
// forward is bitwise forward(); at the same input the backward from what it kept gives bitwise
// the input and parameter gradients of the backward that recomputes, and subtracts the kept
// f(x) from y (the recompute's to 1e-12); its gradients pass a finite-difference check; 1 and 2
// threads agree bitwise; misuse throws.
#include "dense_test_util.hpp"
#include "support/compare.hpp"

#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/sublayer.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>

namespace reformer {
namespace {

using test::FeedForwardSetup;
using test::random_matrix;

static_assert(is_keeping_sublayer_v<FeedForward<double>, double>);
static_assert(is_keeping_sublayer_v<FeedForward<float>, float>);

// The sublayer contract's backward() run from the kept chain: forward_keeping() at x, then
// backward_from_kept(). Lets the finite-difference helpers check the kept path.
struct KeptPath {
  const FeedForward<double>& layer;

  void init(Parameters<double>& params, const Rng& rng, double std) const {
    layer.init(params, rng, std);
  }
  void forward(const Parameters<double>& params, ConstMatrixRef<double> x, MatrixRef<double> y,
               const Context& ctx) const {
    layer.forward(params, x, y, ctx);
  }
  void backward(Parameters<double>& params, ConstMatrixRef<double> x, ConstMatrixRef<double> dy,
                MatrixRef<double> dx, MatrixRef<double> y, const Context& ctx) const {
    KeptActivations<double> kept;
    Matrix<double> discarded(x.rows(), x.cols());
    layer.forward_keeping(params, x, discarded, ctx, kept);
    layer.backward_from_kept(params, x, dy, dx, y, ctx, kept);
  }
};

FeedForwardSetup setup(Activation act, double dropout) {
  FeedForwardSetup s;
  s.hidden = 8;
  s.ff = 20;
  s.activation = act;
  s.dropout = dropout;
  return s;
}

class FeedForwardKept : public ::testing::TestWithParam<Activation> {};

TEST_P(FeedForwardKept, BackwardFromKeptIsTheRecomputingBackwardBitwise) {
  // One block (products split inside it), a partial second block, and more blocks than
  // gradient groups.
  const Index block = tuning::kFeedForwardMinColumns;
  for (const Index n : {Index{100}, block + 37, 9 * block + 5}) {
    SCOPED_TRACE(::testing::Message() << "N " << n);
    const FeedForwardSetup s = setup(GetParam(), 0.2);
    Parameters<double> params;
    FeedForward<double> ff(test::feed_forward_config(s), params);
    test::randomise(params, 110);
    const Context ctx = test::training_context(1);
    const Matrix<double> x = random_matrix(s.hidden, n, 111);
    const Matrix<double> dy = random_matrix(s.hidden, n, 112);
    const Matrix<double> acc0 = random_matrix(s.hidden, n, 113);
    const Matrix<double> y0 = random_matrix(s.hidden, n, 114);

    // The recomputing backward, in place on non-zero dx and y.
    Matrix<double> dx_r = acc0, y_r = y0;
    params.zero_grad();
    ff.backward(params, x, dy, dx_r, y_r, ctx);
    const Vector<double> grads_r = params.grads();

    // The kept path.
    KeptActivations<double> kept;
    Matrix<double> fx(s.hidden, n);
    ff.forward_keeping(params, x, fx, ctx, kept);
    EXPECT_EQ(kept.bytes_held(), ff.kept_bytes(n, ctx));
    EXPECT_EQ(ff.kept_bytes(n, ctx),
              static_cast<std::size_t>((2 * s.hidden + s.ff) * n) * sizeof(double));
    EXPECT_EQ((fx - test::run_forward(ff, params, x, ctx)).cwiseAbs().maxCoeff(), 0.0)
        << "the keeping forward is forward()";

    Matrix<double> dx_k = acc0, y_k = y0;
    params.zero_grad();
    ff.backward_from_kept(params, x, dy, dx_k, y_k, ctx, kept);
    EXPECT_EQ((dx_k - dx_r).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((params.grads() - grads_r).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((y_k - (y0 - fx)).cwiseAbs().maxCoeff(), 0.0) << "y -= the kept f(x)";
    EXPECT_LT(test::relative_error(y_k, y_r), 1e-12);
  }
}

TEST_P(FeedForwardKept, GradientsMatchFiniteDifferences) {
  FeedForwardSetup s = setup(GetParam(), 0.2);
  s.hidden = 4;
  s.ff = 6;
  // Two blocks, the second partial: the gradients cross a block and a group boundary.
  test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 115,
                                         tuning::kFeedForwardMinColumns + 3, 116);
  const KeptPath kept_path{c.layer};
  test::expect_sublayer_gradients(kept_path, c.params, c.x, test::training_context(1), 1e-6, 40);
}

INSTANTIATE_TEST_SUITE_P(Activations, FeedForwardKept,
                         ::testing::Values(Activation::kRelu, Activation::kGelu,
                                           Activation::kGeluNew, Activation::kSilu));

TEST(FeedForwardKeptPath, BitwiseIdenticalForOneAndTwoThreads) {
  FeedForwardSetup s = setup(Activation::kGelu, 0.1);
  s.hidden = 64;  // enough work that every loop runs in parallel
  s.ff = 200;
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  ff.init(params, Rng(117), 0.2);
  const Context ctx = test::training_context(2);
  for (const Index n : {Index{200}, Index{4200}}) {
    const Matrix<double> x = random_matrix(s.hidden, n, 118);
    const Matrix<double> dy = random_matrix(s.hidden, n, 119);
    Matrix<double> y[2], dx[2], fx[2];
    Vector<double> grads[2];
    const int before = num_threads();
    for (int t = 0; t < 2; ++t) {
      set_num_threads(t + 1);
      KeptActivations<double> kept;
      y[t].resize(s.hidden, n);
      dx[t] = Matrix<double>::Zero(s.hidden, n);
      fx[t] = Matrix<double>::Zero(s.hidden, n);
      params.zero_grad();
      ff.forward_keeping(params, x, y[t], ctx, kept);
      ff.backward_from_kept(params, x, dy, dx[t], fx[t], ctx, kept);
      grads[t] = params.grads();
    }
    set_num_threads(before);
    EXPECT_EQ((y[0] - y[1]).cwiseAbs().maxCoeff(), 0.0) << n;
    EXPECT_EQ((fx[0] - fx[1]).cwiseAbs().maxCoeff(), 0.0) << n;
    EXPECT_EQ((dx[0] - dx[1]).cwiseAbs().maxCoeff(), 0.0) << n;
    EXPECT_EQ((grads[0] - grads[1]).cwiseAbs().maxCoeff(), 0.0) << n;
  }
}

TEST(FeedForwardKeptPath, KeptMemoryIsReusedAcrossCallsOfOneShape) {
  const FeedForwardSetup s = setup(Activation::kGelu, 0.0);
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  test::randomise(params, 120);
  const Context ctx = test::training_context(1);
  const Matrix<double> x = random_matrix(s.hidden, 300, 121);
  Matrix<double> y(s.hidden, 300);
  KeptActivations<double> kept;
  ff.forward_keeping(params, x, y, ctx, kept);
  const double* first = kept.kept("test", 0, s.hidden, 300).data();
  ff.forward_keeping(params, x, y, ctx, kept);
  EXPECT_EQ(kept.kept("test", 0, s.hidden, 300).data(), first);

  // A copy holds the same values in memory of its own, and outlives the original.
  KeptActivations<double> copy = kept;
  EXPECT_EQ(copy.bytes_held(), kept.bytes_held());
  EXPECT_EQ(copy.filled, kept.filled);
  EXPECT_NE(copy.kept("test", 0, s.hidden, 300).data(), first);
  const Matrix<double> values = kept.kept("test", 2, s.ff, 300);
  kept.release();
  EXPECT_EQ(kept.bytes_held(), 0u);
  EXPECT_TRUE(copy.kept("test", 2, s.ff, 300) == values);
}

TEST(FeedForwardKeptPath, MisuseThrows) {
  const FeedForwardSetup s = setup(Activation::kGelu, 0.0);
  const Context ctx = test::training_context(1);
  const Matrix<double> x = random_matrix(s.hidden, 100, 122);
  Matrix<double> y(s.hidden, 100), dx = Matrix<double>::Zero(s.hidden, 100);

  // The unfused reference kernel keeps nothing.
  FeedForwardConfig unfused_cfg = test::feed_forward_config(s);
  unfused_cfg.fused = false;
  Parameters<double> pu;
  FeedForward<double> unfused(unfused_cfg, pu);
  EXPECT_EQ(unfused.kept_bytes(100, ctx), 0u);
  KeptActivations<double> kept;
  EXPECT_THROW(unfused.forward_keeping(pu, x, y, ctx, kept), InvalidArgument);

  // A backward from activations kept for another length, or from none at all.
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  test::randomise(params, 123);
  KeptActivations<double> none;
  EXPECT_THROW(ff.backward_from_kept(params, x, x, dx, y, ctx, none), InvalidArgument);
  const Matrix<double> x_short = random_matrix(s.hidden, 60, 124);
  Matrix<double> y_short(s.hidden, 60);
  ff.forward_keeping(params, x_short, y_short, ctx, kept);
  EXPECT_THROW(ff.backward_from_kept(params, x, x, dx, y, ctx, kept), InvalidArgument);
}

}  // namespace
}  // namespace reformer
