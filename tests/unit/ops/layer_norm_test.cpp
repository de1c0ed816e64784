#include "reformer/ops/layer_norm.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace reformer::ops_test {
namespace {

TEST(LayerNorm, ForwardMatchesDefinition) {
  const Matrix<double> x = random_matrix(6, 5, 1, -2.0, 3.0);
  const Vector<double> gamma = random_vector(6, 2, 0.5, 1.5);
  const Vector<double> beta = random_vector(6, 3);
  const double eps = 1e-5;
  Matrix<double> y(6, 5);
  layer_norm_forward<double>(x, gamma, beta, eps, y);
  for (Index n = 0; n < 5; ++n) {
    double mean = 0, var = 0;
    for (Index d = 0; d < 6; ++d) mean += x(d, n) / 6;
    for (Index d = 0; d < 6; ++d) var += (x(d, n) - mean) * (x(d, n) - mean) / 6;
    for (Index d = 0; d < 6; ++d) {
      EXPECT_NEAR(y(d, n), (x(d, n) - mean) / std::sqrt(var + eps) * gamma(d) + beta(d), 1e-13);
    }
  }
}

TEST(LayerNorm, EpsilonMattersAndLargeOffsetsAreStable) {
  // A constant column normalises to beta; with a huge common offset the two-pass statistics
  // still give unit variance for the centred part.
  Matrix<double> x(4, 2);
  x.col(0).setConstant(3.0);
  x.col(1) << 1e8 + 1, 1e8 - 1, 1e8 + 1, 1e8 - 1;
  const Vector<double> gamma = Vector<double>::Ones(4), beta = random_vector(4, 5);
  Matrix<double> y(4, 2);
  layer_norm_forward<double>(x, gamma, beta, kLayerNormDefaultEps, y);
  EXPECT_LT(test::relative_error(y.col(0), beta), 1e-15);
  for (Index d = 0; d < 4; ++d) EXPECT_NEAR(y(d, 1) - beta(d), d % 2 == 0 ? 1.0 : -1.0, 1e-6);
  // eps = 1 on unit variance: y = xhat / sqrt(2).
  layer_norm_forward<double>(x, gamma, beta, 1.0, y);
  EXPECT_NEAR(y(0, 1) - beta(0), 1.0 / std::sqrt(2.0), 1e-6);
}

TEST(LayerNorm, Gradients) {
  Matrix<double> x = random_matrix(5, 4, 6, -1.0, 2.0);
  Vector<double> gamma = random_vector(5, 7, 0.5, 1.5);
  Vector<double> beta = random_vector(5, 8);
  const double eps = 1e-6;
  Matrix<double> dx(5, 4);
  Vector<double> dgamma(5), dbeta(5);
  auto forward = [&] {
    Matrix<double> y(5, 4);
    layer_norm_forward<double>(x, gamma, beta, eps, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) {
    dgamma.setZero();
    dbeta.setZero();
    layer_norm_backward<double>(x, gamma, eps, dy, dx, dgamma, dbeta);
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  EXPECT_TRUE(check(gamma, dgamma, "gamma")) << check.last();
  EXPECT_TRUE(check(beta, dbeta, "beta")) << check.last();
}

TEST(LayerNorm, BackwardInPlaceAndAccumulating) {
  const Matrix<double> x = random_matrix(7, 3, 9);
  const Vector<double> gamma = random_vector(7, 10);
  const Matrix<double> dy = random_matrix(7, 3, 11);
  Matrix<double> dx(7, 3);
  Vector<double> dg = Vector<double>::Zero(7), db = Vector<double>::Zero(7);
  layer_norm_backward<double>(x, gamma, 1e-12, dy, dx, dg, db);
  Matrix<double> inplace = dy;
  Vector<double> dg2 = Vector<double>::Ones(7), db2 = Vector<double>::Ones(7);
  layer_norm_backward<double>(x, gamma, 1e-12, inplace, inplace, dg2, db2);
  EXPECT_EQ(inplace, dx);
  EXPECT_LT(test::relative_error(dg2, (dg.array() + 1).matrix()), 1e-15);
  EXPECT_LT(test::relative_error(db2, (db.array() + 1).matrix()), 1e-15);
  // Forward in place.
  Matrix<double> y(7, 3), y_inplace = x;
  const Vector<double> beta = random_vector(7, 12);
  layer_norm_forward<double>(x, gamma, beta, 1e-12, y);
  layer_norm_forward<double>(y_inplace, gamma, beta, 1e-12, y_inplace);
  EXPECT_EQ(y, y_inplace);
}

TEST(LayerNorm, FloatAgreesWithDouble) {
  const Matrix<double> x = random_matrix(32, 9, 13, -3.0, 3.0);
  const Vector<double> gamma = random_vector(32, 14), beta = random_vector(32, 15);
  const Matrix<double> dy = random_matrix(32, 9, 16);
  Matrix<double> y(32, 9), dx(32, 9);
  Vector<double> dg = Vector<double>::Zero(32), db = Vector<double>::Zero(32);
  layer_norm_forward<double>(x, gamma, beta, 1e-12, y);
  layer_norm_backward<double>(x, gamma, 1e-12, dy, dx, dg, db);
  Matrix<float> yf(32, 9), dxf(32, 9);
  Vector<float> dgf = Vector<float>::Zero(32), dbf = Vector<float>::Zero(32);
  const Matrix<float> xf = x.cast<float>();
  const Vector<float> gf = gamma.cast<float>(), bf = beta.cast<float>();
  layer_norm_forward<float>(xf, gf, bf, 1e-12, yf);
  layer_norm_backward<float>(xf, gf, 1e-12, dy.cast<float>(), dxf, dgf, dbf);
  EXPECT_LT(test::relative_error(yf.cast<double>(), y), 1e-5);
  EXPECT_LT(test::relative_error(dxf.cast<double>(), dx), 1e-5);
  EXPECT_LT(test::relative_error(dgf.cast<double>(), dg), 1e-5);
  EXPECT_LT(test::relative_error(dbf.cast<double>(), db), 1e-5);
}

TEST(LayerNorm, RejectsBadArguments) {
  const Matrix<double> x = random_matrix(4, 3, 17);
  const Vector<double> g = random_vector(4, 18), b = random_vector(4, 19),
                       bad = random_vector(5, 20);
  Matrix<double> y(4, 3), y_bad(4, 2), dx(4, 3);
  Vector<double> dg(4), db(4), dg_bad(3);
  expect_throw_with([&] { layer_norm_forward<double>(x, bad, b, 1e-12, y); },
                    {"layer_norm_forward", "gamma", "5 x 1"});
  expect_throw_with([&] { layer_norm_forward<double>(x, g, bad, 1e-12, y); },
                    {"layer_norm_forward", "beta"});
  expect_throw_with([&] { layer_norm_forward<double>(x, g, b, 1e-12, y_bad); },
                    {"layer_norm_forward", "y"});
  expect_throw_with([&] { layer_norm_forward<double>(x, g, b, -1.0, y); },
                    {"layer_norm_forward", "eps = -1"});
  expect_throw_with([&] { layer_norm_forward<double>(x, g, b, std::nan(""), y); },
                    {"layer_norm_forward", "eps"});
  const Matrix<double> empty(0, 3);
  Matrix<double> y_empty(0, 3);
  expect_throw_with([&] { layer_norm_forward<double>(empty, g, b, 1e-12, y_empty); },
                    {"layer_norm_forward", "x.rows() = 0"});
  expect_throw_with([&] { layer_norm_backward<double>(x, bad, 1e-12, x, dx, dg, db); },
                    {"layer_norm_backward", "gamma"});
  expect_throw_with([&] { layer_norm_backward<double>(x, g, 1e-12, y_bad, dx, dg, db); },
                    {"layer_norm_backward", "dy"});
  expect_throw_with([&] { layer_norm_backward<double>(x, g, 1e-12, x, y_bad, dg, db); },
                    {"layer_norm_backward", "dx"});
  expect_throw_with([&] { layer_norm_backward<double>(x, g, 1e-12, x, dx, dg_bad, db); },
                    {"layer_norm_backward", "dgamma"});
  expect_throw_with([&] { layer_norm_backward<double>(x, g, 1e-12, x, dx, dg, dg_bad); },
                    {"layer_norm_backward", "dbeta"});
}

// The statistics computed once (layer_norm_statistics) and passed to the _from_statistics
// versions give bitwise the forward's and backward's own results, in float as in double, with
// dx in place of dy too; the statistics are the columns' mean and 1 / sqrt(var + eps).
template <class S>
void expect_statistics_bitwise(Index d, Index n, double eps) {
  const Matrix<S> x = random_matrix<S>(d, n, 41, -2.0, 3.0);
  const Vector<S> gamma = random_vector<S>(d, 42, 0.5, 1.5), beta = random_vector<S>(d, 43);
  const Matrix<S> dy = random_matrix<S>(d, n, 44);
  Matrix<S> stats(2, n), stats_parallel(2, n);
  layer_norm_statistics<S>(x, eps, stats);
  layer_norm_statistics_parallel<S>(x, eps, stats_parallel);
  EXPECT_EQ(stats_parallel, stats);
  const Matrix<double> xd = x.template cast<double>();
  for (Index c = 0; c < n; ++c) {
    const double mean = xd.col(c).mean();
    const double var = (xd.col(c).array() - mean).square().mean();
    EXPECT_NEAR(double(stats(0, c)), mean, 1e-5);
    EXPECT_NEAR(double(stats(1, c)), 1.0 / std::sqrt(var + eps), 1e-4 / std::sqrt(var + eps));
  }
  Matrix<S> y(d, n), y_stats(d, n);
  layer_norm_forward<S>(x, gamma, beta, eps, y);
  layer_norm_forward_from_statistics<S>(x, stats, gamma, beta, y_stats);
  EXPECT_EQ(y_stats, y);
  Matrix<S> dx(d, n), dx_stats = dy;  // in place: dx aliases dy
  Vector<S> dg = Vector<S>::Constant(d, S(0.25)), db = dg, dg_stats = dg, db_stats = dg;
  layer_norm_backward<S>(x, gamma, eps, dy, dx, dg, db);
  layer_norm_backward_from_statistics<S>(x, stats, gamma, dx_stats, dx_stats, dg_stats, db_stats);
  EXPECT_EQ(dx_stats, dx);
  EXPECT_EQ(dg_stats, dg);
  EXPECT_EQ(db_stats, db);
}

TEST(LayerNorm, StatisticsGiveBitwiseTheSameResults) {
  expect_statistics_bitwise<float>(256, 37, 1e-12);
  expect_statistics_bitwise<float>(7, 300, 1e-5);
  expect_statistics_bitwise<double>(33, 19, 1e-12);
}

TEST(LayerNorm, StatisticsRejectBadShapes) {
  const Matrix<double> x = random_matrix(4, 3, 45);
  const Vector<double> g = random_vector(4, 46), b = random_vector(4, 47);
  Matrix<double> stats(2, 3), stats_short(2, 2), stats_tall(3, 3), y(4, 3), dx(4, 3);
  Vector<double> dg(4), db(4);
  expect_throw_with([&] { layer_norm_statistics<double>(x, 1e-12, stats_short); },
                    {"layer_norm_statistics", "stats", "2 x 2", "2 x 3"});
  expect_throw_with([&] { layer_norm_statistics<double>(x, -1.0, stats); },
                    {"layer_norm_statistics", "eps = -1"});
  layer_norm_statistics<double>(x, 1e-12, stats);
  expect_throw_with([&] { layer_norm_forward_from_statistics<double>(x, stats_tall, g, b, y); },
                    {"layer_norm_forward_from_statistics", "stats", "3 x 3"});
  expect_throw_with(
      [&] { layer_norm_backward_from_statistics<double>(x, stats_short, g, x, dx, dg, db); },
      {"layer_norm_backward_from_statistics", "stats"});
}

}  // namespace
}  // namespace reformer::ops_test
