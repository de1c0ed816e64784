// The reversible block with toy sublayers: inversion, gradients vs stored activations and vs
// finite differences, argument checks.
#include "reformer/layers/reversible.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

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
  reversible_backward<double>(rev.f, rev.g, rev.params, r1, r2, g1, g2, ctx, ws);
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
  reversible_backward<double>(blk.f, blk.g, blk.params, y1, y2, dx1, dx2, ctx, ws);

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
  EXPECT_THROW(reversible_backward<double>(blk.f, blk.g, blk.params, a, c, b, e, ctx, ws),
               InvalidArgument);
  try {
    reversible_forward<double>(blk.f, blk.g, blk.params, a, b, ctx, ws);
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("reversible_forward"), std::string::npos);
    EXPECT_NE(std::string(err.what()).find("3 x 5"), std::string::npos);
  }
}

}  // namespace
}  // namespace reformer
