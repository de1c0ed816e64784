#include "reformer/ops/softmax.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace reformer::ops_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Naive per-column logsumexp in long double (entries of -1e9 underflow to 0 there too).
Vector<double> naive_lse_cols(const Matrix<double>& x) {
  Vector<double> out(x.cols());
  for (Index n = 0; n < x.cols(); ++n) {
    long double m = -kInf;
    for (Index i = 0; i < x.rows(); ++i) m = std::max<long double>(m, x(i, n));
    long double s = 0;
    for (Index i = 0; i < x.rows(); ++i) s += std::exp(static_cast<long double>(x(i, n)) - m);
    out(n) = static_cast<double>(m + std::log(s));
  }
  return out;
}

/// A matrix with masked entries: -1e9 in a band, and one -inf.
Matrix<double> masked_matrix() {
  Matrix<double> x = random_matrix(6, 5, 1, -3.0, 3.0);
  for (Index n = 0; n < 5; ++n) {
    for (Index i = 0; i < 6; ++i) {
      if (i > n + 1) x(i, n) = -1e9;
    }
  }
  x(0, 3) = -kInf;
  return x;
}

TEST(Softmax, ColumnsMatchNaiveFormulasWithMasks) {
  const Matrix<double> x = masked_matrix();
  Vector<double> lse(5);
  logsumexp_cols<double>(x, lse);
  const Vector<double> ref = naive_lse_cols(x);
  EXPECT_LT(test::relative_error(lse, ref), 1e-15);
  Matrix<double> p(6, 5);
  softmax_cols<double>(x, p);
  for (Index n = 0; n < 5; ++n) {
    EXPECT_NEAR(p.col(n).sum(), 1.0, 1e-15);
    for (Index i = 0; i < 6; ++i) {
      EXPECT_NEAR(p(i, n), std::exp(x(i, n) - ref(n)), 1e-15);
      if (i > n + 1) {
        EXPECT_EQ(p(i, n), 0.0);
      }
    }
  }
  EXPECT_EQ(p(0, 3), 0.0);
}

TEST(Softmax, RowsMatchColumnsOfTheTranspose) {
  const Matrix<double> xt = masked_matrix();
  const Matrix<double> x = xt.transpose();  // 5 x 6, one distribution per row
  Vector<double> lse_rows(5), lse_cols(5);
  logsumexp_rows<double>(x, lse_rows);
  logsumexp_cols<double>(xt, lse_cols);
  EXPECT_LT(test::relative_error(lse_rows, lse_cols), 1e-15);
  Matrix<double> p_rows(5, 6), p_cols(6, 5);
  softmax_rows<double>(x, p_rows);
  softmax_cols<double>(xt, p_cols);
  EXPECT_LT(test::relative_error(p_rows, Matrix<double>(p_cols.transpose())), 1e-15);
}

TEST(Softmax, LargeLogitsAndEmptyDistributions) {
  Matrix<double> x(3, 3);
  x << 1000, -kInf, 5, 999, -kInf, -1e9, 998, -kInf, -1e9;
  Vector<double> lse(3);
  logsumexp_cols<double>(x, lse);
  EXPECT_NEAR(lse(0), 1000 + std::log(1 + std::exp(-1.0) + std::exp(-2.0)), 1e-12);
  EXPECT_EQ(lse(1), -kInf);  // an all -inf column is an empty distribution
  EXPECT_EQ(lse(2), 5.0);    // -1e9 entries vanish
  Matrix<double> p(3, 3);
  softmax_cols<double>(x, p);
  EXPECT_TRUE(p.allFinite());
  EXPECT_EQ(p.col(1), Vector<double>::Zero(3));
  EXPECT_EQ(p(0, 2), 1.0);
  Matrix<double> dx(3, 3);
  const Vector<double> dlse = Vector<double>::Ones(3);
  logsumexp_cols_backward<double>(x, lse, dlse, dx);
  EXPECT_TRUE(dx.allFinite());
  EXPECT_EQ(dx.col(1), Vector<double>::Zero(3));
  // Row-wise versions on the transpose.
  const Matrix<double> xt = x.transpose();
  Vector<double> lse_rows(3);
  logsumexp_rows<double>(xt, lse_rows);
  EXPECT_EQ(lse_rows(1), -kInf);
  EXPECT_NEAR(lse_rows(0), lse(0), 1e-12);
  Matrix<double> pt(3, 3), dxt(3, 3);
  softmax_rows<double>(xt, pt);
  EXPECT_EQ(pt.row(1), RowVector<double>::Zero(3));
  logsumexp_rows_backward<double>(xt, lse_rows, dlse, dxt);
  EXPECT_TRUE(dxt.allFinite());
  EXPECT_LT(test::relative_error(dxt, Matrix<double>(dx.transpose())), 1e-15);
}

TEST(Softmax, ColumnGradients) {
  Matrix<double> x = random_matrix(5, 4, 2, -2.0, 2.0);
  x(4, 0) = -1e9;  // a masked entry gets a zero gradient
  Matrix<double> dx_soft(5, 4), dx_lse(5, 4);
  {
    auto forward = [&] {
      Matrix<double> p(5, 4);
      softmax_cols<double>(x, p);
      return p;
    };
    auto backward = [&](const Matrix<double>& dy) {
      Matrix<double> p(5, 4);
      softmax_cols<double>(x, p);
      softmax_cols_backward<double>(p, dy, dx_soft);
    };
    GradientChecker check(forward, backward);
    EXPECT_TRUE(check(x, dx_soft, "x")) << check.last();
    EXPECT_EQ(dx_soft(4, 0), 0.0);
  }
  {
    auto forward = [&] {
      Vector<double> lse(4);
      logsumexp_cols<double>(x, lse);
      return Matrix<double>(lse);
    };
    auto backward = [&](const Matrix<double>& dl) {
      Vector<double> lse(4);
      logsumexp_cols<double>(x, lse);
      logsumexp_cols_backward<double>(x, lse, dl.col(0), dx_lse);
    };
    GradientChecker check(forward, backward);
    EXPECT_TRUE(check(x, dx_lse, "x")) << check.last();
  }
}

TEST(Softmax, RowGradients) {
  Matrix<double> x = random_matrix(4, 6, 3, -2.0, 2.0);
  x(1, 5) = -1e9;
  Matrix<double> dx_soft(4, 6), dx_lse(4, 6);
  {
    auto forward = [&] {
      Matrix<double> p(4, 6);
      softmax_rows<double>(x, p);
      return p;
    };
    auto backward = [&](const Matrix<double>& dy) {
      Matrix<double> p(4, 6);
      softmax_rows<double>(x, p);
      softmax_rows_backward<double>(p, dy, dx_soft);
    };
    GradientChecker check(forward, backward);
    EXPECT_TRUE(check(x, dx_soft, "x")) << check.last();
  }
  {
    auto forward = [&] {
      Vector<double> lse(4);
      logsumexp_rows<double>(x, lse);
      return Matrix<double>(lse);
    };
    auto backward = [&](const Matrix<double>& dl) {
      Vector<double> lse(4);
      logsumexp_rows<double>(x, lse);
      logsumexp_rows_backward<double>(x, lse, dl.col(0), dx_lse);
    };
    GradientChecker check(forward, backward);
    EXPECT_TRUE(check(x, dx_lse, "x")) << check.last();
  }
}

TEST(Softmax, InPlaceAndFloat) {
  const Matrix<double> x = masked_matrix();
  const Matrix<double> dy = random_matrix(6, 5, 4);
  Matrix<double> p(6, 5), dx(6, 5);
  softmax_cols<double>(x, p);
  softmax_cols_backward<double>(p, dy, dx);
  Matrix<double> inplace = x;
  softmax_cols<double>(inplace, inplace);
  EXPECT_EQ(inplace, p);
  Matrix<double> dinplace = dy;
  softmax_cols_backward<double>(p, dinplace, dinplace);
  EXPECT_EQ(dinplace, dx);
  Matrix<float> pf(6, 5), dxf(6, 5);
  softmax_cols<float>(x.cast<float>(), pf);
  softmax_cols_backward<float>(pf, dy.cast<float>(), dxf);
  EXPECT_LT(test::relative_error(pf.cast<double>(), p), 1e-6);
  EXPECT_EQ(pf(5, 0), 0.0f);  // masked entries vanish exactly in float too
  EXPECT_EQ(pf(0, 3), 0.0f);
  EXPECT_LT(test::relative_error(dxf.cast<double>(), dx), 1e-5);
  Matrix<float> prf(5, 6);
  softmax_rows<float>(x.transpose().cast<float>(), prf);
  EXPECT_LT(test::relative_error(prf.cast<double>(), Matrix<double>(p.transpose())), 1e-6);
}

// Probabilities below the smallest normal number are exactly 0 (never a subnormal, on any
// instruction set), and the others are the exponentials to a few units in the last place.
template <class S>
void check_exp_flush() {
  const Index n = 2001;
  Matrix<S> x(n, 1);
  for (Index i = 0; i < n; ++i) x(i, 0) = static_cast<S>(-0.1 * static_cast<double>(i));  // 0..-200
  x(n - 1, 0) = static_cast<S>(-1e9);
  Matrix<S> p(n, 1);
  softmax_cols<S>(x, p);
  Vector<S> lse(1);
  logsumexp_cols<S>(x, lse);
  const S tiny = std::numeric_limits<S>::min();
  for (Index i = 0; i < n; ++i) {
    const S v = p(i, 0);
    EXPECT_TRUE(v == S(0) || v >= tiny) << "subnormal probability " << v << " at " << i;
    const long double exact = std::exp(static_cast<long double>(x(i, 0)) - lse(0));
    if (exact > 2 * static_cast<long double>(tiny)) {
      // A few ulp of exp, plus the rounding of its argument x - lse (|x - lse| ulp at most).
      const double arg = std::abs(static_cast<double>(x(i, 0) - lse(0)));
      EXPECT_NEAR(static_cast<double>(v / static_cast<S>(exact)), 1.0,
                  (4 + arg) * std::numeric_limits<S>::epsilon())
          << i;
    } else if (exact < static_cast<long double>(tiny) / 2) {
      EXPECT_EQ(v, S(0)) << i;
    }
  }
}

TEST(Softmax, TinyProbabilitiesAreFlushedToZero) {
  check_exp_flush<float>();
  check_exp_flush<double>();
}

// The fused pass of the chunk kernel: each result is the flushed exponential of its element
// whatever its index (packets and the padded tail alike), the same wherever the data lies, and
// the returned sum is the sum of the results.
template <class S>
void check_exp_shifted_flushed_sum() {
  for (const Index n : {1, 3, 8, 13, 64, 131}) {
    std::vector<S> x(static_cast<std::size_t>(n) + 1);
    for (Index i = 0; i < n; ++i) {
      // scores from 0 down to -200, a masked one (-1e9) every fifth
      x[static_cast<std::size_t>(i)] =
          i % 5 == 4 ? static_cast<S>(-1e9) : static_cast<S>(-200.0 * static_cast<double>(i) / n);
    }
    const S shift = static_cast<S>(0.5);
    std::vector<S> shifted(x.size());  // the same values one element further on
    std::copy(x.begin(), x.begin() + n, shifted.begin() + 1);
    std::vector<S> original(x.begin(), x.begin() + n);
    const S sum = detail::exp_shifted_flushed_sum<S>(x.data(), n, shift);
    const S sum_shifted = detail::exp_shifted_flushed_sum<S>(shifted.data() + 1, n, shift);
    EXPECT_EQ(sum, sum_shifted) << n;
    long double total = 0;
    const S tiny = std::numeric_limits<S>::min();
    for (Index i = 0; i < n; ++i) {
      const auto u = static_cast<std::size_t>(i);
      EXPECT_EQ(x[u], shifted[u + 1]) << n << " " << i;
      EXPECT_TRUE(x[u] == S(0) || x[u] >= tiny) << "subnormal " << x[u] << " at " << i;
      const long double exact = std::exp(static_cast<long double>(original[u] - shift));
      if (exact > 2 * static_cast<long double>(tiny)) {
        EXPECT_NEAR(static_cast<double>(x[u] / static_cast<S>(exact)), 1.0,
                    8 * std::numeric_limits<S>::epsilon())
            << n << " " << i;
      } else if (exact < static_cast<long double>(tiny) / 2) {
        EXPECT_EQ(x[u], S(0)) << n << " " << i;
      }
      total += x[u];
    }
    EXPECT_NEAR(
        static_cast<double>(sum), static_cast<double>(total),
        4 * static_cast<double>(n) * std::numeric_limits<S>::epsilon() * static_cast<double>(total))
        << n;
  }
}

TEST(Softmax, FusedExpSumMatchesExpAndIgnoresAlignment) {
  check_exp_shifted_flushed_sum<float>();
  check_exp_shifted_flushed_sum<double>();
}

TEST(Softmax, RejectsWrongShapes) {
  const Matrix<double> x = random_matrix(3, 4, 5);
  Matrix<double> ok(3, 4), bad(4, 3);
  Vector<double> lse_c(4), lse_r(3), bad_v(5);
  const Matrix<double> empty(0, 4);
  expect_throw_with([&] { logsumexp_cols<double>(x, bad_v); }, {"logsumexp_cols", "lse"});
  expect_throw_with([&] { logsumexp_rows<double>(x, bad_v); }, {"logsumexp_rows", "lse"});
  expect_throw_with([&] { logsumexp_cols<double>(empty, lse_c); },
                    {"logsumexp_cols", "x has shape 0 x 4"});
  expect_throw_with([&] { softmax_cols<double>(x, bad); }, {"softmax_cols", "p"});
  expect_throw_with([&] { softmax_rows<double>(x, bad); }, {"softmax_rows", "p"});
  expect_throw_with([&] { softmax_cols_backward<double>(x, bad, ok); },
                    {"softmax_cols_backward", "dy"});
  expect_throw_with([&] { softmax_cols_backward<double>(x, ok, bad); },
                    {"softmax_cols_backward", "dx"});
  expect_throw_with([&] { softmax_rows_backward<double>(x, bad, ok); },
                    {"softmax_rows_backward", "dy"});
  expect_throw_with([&] { softmax_rows_backward<double>(x, ok, bad); },
                    {"softmax_rows_backward", "dx"});
  expect_throw_with([&] { logsumexp_cols_backward<double>(x, bad_v, lse_c, ok); },
                    {"logsumexp_cols_backward", "lse"});
  expect_throw_with([&] { logsumexp_cols_backward<double>(x, lse_c, bad_v, ok); },
                    {"logsumexp_cols_backward", "dlse"});
  expect_throw_with([&] { logsumexp_cols_backward<double>(x, lse_c, lse_c, bad); },
                    {"logsumexp_cols_backward", "dx"});
  expect_throw_with([&] { logsumexp_rows_backward<double>(x, bad_v, lse_r, ok); },
                    {"logsumexp_rows_backward", "lse"});
  expect_throw_with([&] { logsumexp_rows_backward<double>(x, lse_r, bad_v, ok); },
                    {"logsumexp_rows_backward", "dlse"});
  expect_throw_with([&] { logsumexp_rows_backward<double>(x, lse_r, lse_r, bad); },
                    {"logsumexp_rows_backward", "dx"});
}

}  // namespace
}  // namespace reformer::ops_test
