// FeedForward: values against a naive reference, gradients by finite differences, chunked ==
// unchunked, dropout and thread determinism.
#include "dense_test_util.hpp"
#include "support/compare.hpp"

#include "reformer/layers/feed_forward.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

namespace reformer {
namespace {

using test::FeedForwardSetup;
using test::random_matrix;

// The formula of docs/DESIGN.md 1.5 on the whole matrix with scalar loops (no dropout).
Matrix<double> reference_feed_forward(const Parameters<double>& p, const Matrix<double>& x,
                                      Activation act, double eps) {
  const Index d = x.rows(), n = x.cols();
  const auto gamma = p.value_vector(p.id_of("layer_norm.weight"));
  const auto beta = p.value_vector(p.id_of("layer_norm.bias"));
  const auto w1 = p.value(p.id_of("dense.dense.weight"));
  const auto b1 = p.value_vector(p.id_of("dense.dense.bias"));
  const auto w2 = p.value(p.id_of("output.dense.weight"));
  const auto b2 = p.value_vector(p.id_of("output.dense.bias"));
  Matrix<double> y(d, n);
  for (Index c = 0; c < n; ++c) {
    double mean = 0, var = 0;
    for (Index r = 0; r < d; ++r) mean += x(r, c) / double(d);
    for (Index r = 0; r < d; ++r) var += (x(r, c) - mean) * (x(r, c) - mean) / double(d);
    Vector<double> xn(d);
    for (Index r = 0; r < d; ++r)
      xn[r] = (x(r, c) - mean) / std::sqrt(var + eps) * gamma[r] + beta[r];
    Vector<double> g(w1.rows());
    for (Index f = 0; f < w1.rows(); ++f) {
      double h = b1[f];
      for (Index r = 0; r < d; ++r) h += w1(f, r) * xn[r];
      g[f] = act == Activation::kRelu ? std::max(h, 0.0)
                                      : 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
    }
    for (Index r = 0; r < d; ++r) {
      double z = b2[r];
      for (Index f = 0; f < w1.rows(); ++f) z += w2(r, f) * g[f];
      y(r, c) = z;
    }
  }
  return y;
}

class FeedForwardGrad : public ::testing::TestWithParam<std::tuple<Activation, Index /*chunk*/>> {};

TEST_P(FeedForwardGrad, MatchesReferenceAndFiniteDifferences) {
  FeedForwardSetup s;
  s.activation = std::get<0>(GetParam());
  s.chunk = std::get<1>(GetParam());
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  test::randomise(params, 31);
  Context ctx;
  ctx.batch = 2;
  const Matrix<double> x = random_matrix(s.hidden, 2 * 4, 12);
  EXPECT_LT(test::relative_error(test::run_forward(ff, params, x, ctx),
                                 reference_feed_forward(params, x, s.activation, 1e-12)),
            1e-12);
  test::expect_sublayer_gradients(ff, params, x, ctx);
}

INSTANTIATE_TEST_SUITE_P(ActivationsAndChunks, FeedForwardGrad,
                         ::testing::Combine(::testing::Values(Activation::kRelu, Activation::kGelu),
                                            ::testing::Values(Index{0}, Index{3})));

TEST(FeedForward, GradientsWithDropoutAndFixedContext) {
  const Context ctx = test::training_context(2);
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    FeedForwardSetup s;
    s.activation = act;
    s.dropout = 0.3;
    s.chunk = 3;
    test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 32, 2 * 4, 13);
    EXPECT_GT(test::dropout_effect(c.layer, c.params, c.x, ctx), 1e-3);
    test::expect_sublayer_gradients(c.layer, c.params, c.x, ctx);
  }
}

// Chunking changes only the order of floating-point sums: outputs, dx, fx and every parameter
// gradient agree with the unchunked layer to rounding, with dropout on (same masks).
TEST(FeedForward, ChunkedEqualsUnchunked) {
  const Index t = 17, batch = 2, n = t * batch;  // n is not a multiple of 7
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    FeedForwardSetup s;
    s.hidden = 8;
    s.ff = 20;
    s.activation = act;
    s.dropout = 0.2;
    Parameters<double> p0;
    FeedForward<double> whole(test::feed_forward_config(s), p0);
    test::randomise(p0, 40);
    const Context ctx = test::training_context(batch);
    const Matrix<double> x = random_matrix(s.hidden, n, 41);
    const Matrix<double> dy = random_matrix(s.hidden, n, 42);
    const Matrix<double> y0 = test::run_forward(whole, p0, x, ctx);
    const auto r0 = test::run_backward(whole, p0, x, dy, ctx);
    for (Index chunk : {Index{1}, Index{7}, t, n, Index{1000}}) {
      s.chunk = chunk;
      Parameters<double> p;
      FeedForward<double> ff(test::feed_forward_config(s), p);
      p.values() = p0.values();
      const Matrix<double> y = test::run_forward(ff, p, x, ctx);
      const auto r = test::run_backward(ff, p, x, dy, ctx);
      EXPECT_LT(test::relative_error(y, y0), 1e-14) << "chunk " << chunk;
      EXPECT_LT(test::relative_error(r.fx, y0), 1e-14) << "chunk " << chunk;
      EXPECT_LT(test::relative_error(r.dx, r0.dx), 1e-13) << "chunk " << chunk;
      for (SlotId id = 0; id < p.num_slots(); ++id) {
        const auto& slot = p.slot(id);
        EXPECT_LT(test::relative_error(r.grads.segment(slot.offset, slot.size),
                                       r0.grads.segment(slot.offset, slot.size)),
                  1e-13)
            << "chunk " << chunk << ", " << slot.name;
      }
    }
  }
}

TEST(FeedForward, BackwardReturnsForwardOutputAndAccumulates) {
  FeedForwardSetup s;
  s.dropout = 0.25;
  s.chunk = 2;
  test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 50, 5, 51);
  const Context ctx = test::training_context(1);
  const Matrix<double> dy = random_matrix(s.hidden, 5, 52);
  const auto r = test::run_backward(c.layer, c.params, c.x, dy, ctx);
  EXPECT_EQ((r.fx - test::run_forward(c.layer, c.params, c.x, ctx)).cwiseAbs().maxCoeff(), 0.0);
  // A second backward adds the same gradients again (accumulation, not overwrite).
  Matrix<double> dx(c.x.rows(), c.x.cols()), fx(c.x.rows(), c.x.cols());
  backward_out_of_place(c.layer, c.params, c.x, dy, dx, fx, ctx);
  EXPECT_LT(test::relative_error(c.params.grads(), 2.0 * r.grads), 1e-15);
  EXPECT_EQ((dx - r.dx).cwiseAbs().maxCoeff(), 0.0);
}

// backward (the contract's in-place step) gives dx_acc + dx and y_sub - f(x) with
// the same bits as backward() followed by the additions, and the same parameter gradients.
TEST(FeedForward, BackwardAccumulatesAndSubtractsInPlaceBitwise) {
  const Context ctx = test::training_context(2);
  for (const double dropout : {0.0, 0.25}) {
    FeedForwardSetup s;
    s.dropout = dropout;
    s.chunk = 3;
    test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 60, 8, 61);
    const Matrix<double> dy = random_matrix(s.hidden, 8, 62);
    const Matrix<double> acc0 = random_matrix(s.hidden, 8, 63);
    const Matrix<double> y0 = random_matrix(s.hidden, 8, 64);
    const auto r = test::run_backward(c.layer, c.params, c.x, dy, ctx);
    c.params.zero_grad();
    Matrix<double> acc = acc0, y = y0;
    c.layer.backward(c.params, c.x, dy, acc, y, ctx);
    const Matrix<double> acc_ref = acc0 + r.dx, y_ref = y0 - r.fx;
    EXPECT_EQ((acc - acc_ref).cwiseAbs().maxCoeff(), 0.0) << "dropout " << dropout;
    EXPECT_EQ((y - y_ref).cwiseAbs().maxCoeff(), 0.0) << "dropout " << dropout;
    EXPECT_EQ((c.params.grads() - r.grads).cwiseAbs().maxCoeff(), 0.0) << "dropout " << dropout;
    EXPECT_GT(r.dx.cwiseAbs().maxCoeff(), 1e-3);
  }
}

TEST(FeedForward, DropoutIsAPureFunctionOfTheContext) {
  FeedForwardSetup s;
  s.dropout = 0.3;
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  test::randomise(params, 60);
  const Context ctx = test::training_context(1, 8);
  const Matrix<double> x = random_matrix(s.hidden, 6, 61);
  const Matrix<double> y = test::run_forward(ff, params, x, ctx);
  EXPECT_EQ((test::run_forward(ff, params, x, ctx) - y).cwiseAbs().maxCoeff(), 0.0);
  Context other = ctx;
  other.step = 9;
  EXPECT_GT((test::run_forward(ff, params, x, other) - y).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(FeedForward, BitwiseIdenticalForAnyThreadCount) {
  for (Index chunk : {Index{0}, Index{64}}) {
    FeedForwardSetup s;
    s.hidden = 64;  // big enough that even a 64-token chunk's products run in parallel
    s.ff = 200;
    s.dropout = 0.1;
    s.chunk = chunk;
    Parameters<double> params;
    FeedForward<double> ff(test::feed_forward_config(s), params);
    ff.init(params, Rng(70), 0.2);
    const Context ctx = test::training_context(2);
    const Matrix<double> x = random_matrix(s.hidden, 2 * 170, 71);
    const Matrix<double> dy = random_matrix(s.hidden, 2 * 170, 72);
    const auto one = test::run_with_threads(1, ff, params, x, dy, ctx);
    const auto two = test::run_with_threads(2, ff, params, x, dy, ctx);
    EXPECT_EQ((one.y - two.y).cwiseAbs().maxCoeff(), 0.0) << "chunk " << chunk;
    EXPECT_EQ((one.back.dx - two.back.dx).cwiseAbs().maxCoeff(), 0.0) << "chunk " << chunk;
    EXPECT_EQ((one.back.grads - two.back.grads).cwiseAbs().maxCoeff(), 0.0) << "chunk " << chunk;
  }
}

TEST(FeedForward, FloatAgreesWithDouble) {
  FeedForwardSetup s;
  s.chunk = 3;
  Parameters<double> pd;
  Parameters<float> pf;
  FeedForward<double> fd(test::feed_forward_config(s), pd);
  FeedForward<float> ffl(test::feed_forward_config(s), pf);
  test::randomise(pd, 80);
  pf.values() = pd.values().cast<float>();
  Context ctx;
  const Matrix<double> x = random_matrix(s.hidden, 7, 81);
  const Matrix<double> dy = random_matrix(s.hidden, 7, 82);
  const test::FloatErrors e = test::float_vs_double(ffl, pf, fd, pd, x, dy, ctx);
  EXPECT_LT(e.y, 1e-5);
  EXPECT_LT(e.dx, 1e-4);
  EXPECT_LT(e.grads, 1e-4);
}

TEST(FeedForward, RegistersHuggingFaceNamesAndInitialises) {
  FeedForwardSetup s;
  Parameters<float> params;
  FeedForward<float> ff(test::feed_forward_config(s), params, "l.3.feed_forward.");
  const char* names[] = {"layer_norm.weight", "layer_norm.bias",     "dense.dense.weight",
                         "dense.dense.bias",  "output.dense.weight", "output.dense.bias"};
  ASSERT_EQ(params.num_slots(), 6);
  for (SlotId i = 0; i < 6; ++i)
    EXPECT_EQ(params.slot(i).name, std::string("l.3.feed_forward.") + names[i]);
  EXPECT_EQ(params.slot(2).shape, (std::vector<Index>{7, 5}));
  EXPECT_EQ(params.slot(4).shape, (std::vector<Index>{5, 7}));
  test::randomise(params, 1);
  ff.init(params, Rng(2), 0.1);
  EXPECT_EQ(params.value_vector(0), Vector<float>::Ones(5));
  EXPECT_EQ(params.value_vector(1), Vector<float>::Zero(5));
  EXPECT_EQ(params.value_vector(3), Vector<float>::Zero(7));
  EXPECT_EQ(params.value_vector(5), Vector<float>::Zero(5));
  EXPECT_GT(params.value_vector(2).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_LT(params.value_vector(2).cwiseAbs().maxCoeff(), 0.6f);
}

}  // namespace
}  // namespace reformer
