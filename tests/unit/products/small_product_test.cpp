#include "reformer/ops/small_product.hpp"
#include "reformer/core/error.hpp"

#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>

namespace reformer::ops_test {
namespace {

// The row counts cross every path of the kernels for any packet width up to 16 lanes: whole
// register tiles, one-packet tiles and the scalar rows after them. The column counts cross
// whole tiles of four or six columns and every narrower tile after them (one to five columns).
constexpr std::initializer_list<Index> kRows = {1,  3,  4,  7,  8,  9,  15,  16, 17,
                                                31, 32, 33, 47, 64, 65, 128, 130};
constexpr std::initializer_list<Index> kCols = {1, 2, 3, 4, 5, 6, 7, 9, 11, 64};
constexpr std::initializer_list<Index> kDepths = {0, 1, 5, 64, 128};

// c_expected = c0 + a b (or a b), summed in long double.
template <class S>
Matrix<double> reference(const Matrix<S>& a, const Matrix<S>& b, const Matrix<S>& c0,
                         bool accumulate) {
  Matrix<double> out(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i) {
    for (Index j = 0; j < b.cols(); ++j) {
      long double sum = accumulate ? c0(i, j) : 0.0L;
      for (Index k = 0; k < a.cols(); ++k) sum += static_cast<long double>(a(i, k)) * b(k, j);
      out(i, j) = static_cast<double>(sum);
    }
  }
  return out;
}

// Runs small_product and small_product_bt on operands that are blocks of larger matrices (outer
// strides above their row counts) and checks them against the long double sums: max error
// over max(1, |expected|) below tol.
template <class S>
void check_products(double tol) {
  std::uint64_t seed = 1;
  for (const Index m : kRows) {
    for (const Index n : kCols) {
      for (const Index depth : kDepths) {
        const Matrix<S> a_store = random_matrix<S>(m + 3, depth + 1, ++seed);
        const Matrix<S> b_store = random_matrix<S>(depth + 2, n + 1, ++seed);
        const Matrix<S> c0 = random_matrix<S>(m, n, ++seed);
        const auto a = a_store.block(1, 1, m, depth);
        const auto b = b_store.block(2, 1, depth, n);
        const Matrix<S> bt_store = [&] {
          Matrix<S> t = Matrix<S>::Zero(n + 5, depth);
          t.bottomRows(n) = b.transpose();
          return t;
        }();
        const auto bt = bt_store.bottomRows(n);
        for (const bool accumulate : {false, true}) {
          const Matrix<double> expected = reference<S>(a, b, c0, accumulate);
          Matrix<S> c_store = Matrix<S>::Constant(m + 2, n, S(7));
          auto c = c_store.bottomRows(m);
          c = c0;
          small_product<S>(a, b, c, accumulate);
          const double scale = std::max(1.0, expected.cwiseAbs().maxCoeff());
          EXPECT_LT((c.template cast<double>() - expected).cwiseAbs().maxCoeff() / scale, tol)
              << "small_product m=" << m << " n=" << n << " k=" << depth << " acc=" << accumulate;
          EXPECT_TRUE((c_store.topRows(2).array() == S(7)).all()) << "wrote outside c";
          c = c0;
          small_product_bt<S>(a, bt, c, accumulate);
          EXPECT_LT((c.template cast<double>() - expected).cwiseAbs().maxCoeff() / scale, tol)
              << "small_product_bt m=" << m << " n=" << n << " k=" << depth
              << " acc=" << accumulate;
        }
      }
    }
  }
}

TEST(SmallProduct, MatchesLongDoubleSumsInDouble) { check_products<double>(1e-14); }

TEST(SmallProduct, MatchesLongDoubleSumsInFloat) { check_products<float>(2e-6); }

// The kernel is a function of the shapes: a column of c is the same, bit for bit, whether it is
// computed in a four-column tile or alone, and a row block the same whatever rows follow it.
TEST(SmallProduct, ColumnsAndRowsDoNotDependOnTheirNeighbours) {
  const Matrix<float> a = random_matrix<float>(70, 96, 11);
  const Matrix<float> b = random_matrix<float>(96, 9, 12);
  Matrix<float> whole(70, 9), one(70, 1), top(64, 9);
  small_product<float>(a, b, whole, false);
  for (Index j = 0; j < 9; ++j) {
    small_product<float>(a, b.col(j), one, false);
    EXPECT_TRUE((one.col(0).array() == whole.col(j).array()).all()) << "column " << j;
  }
  small_product<float>(a.topRows(64), b, top, false);
  EXPECT_TRUE((top.array() == whole.topRows(64).array()).all());
}

TEST(SmallProduct, RejectsMismatchedShapes) {
  const Matrix<double> a = random_matrix<double>(4, 3, 1), b = random_matrix<double>(2, 5, 2);
  Matrix<double> c(4, 5);
  EXPECT_THROW(small_product<double>(a, b, c, false), InvalidArgument);
  const Matrix<double> b_ok = random_matrix<double>(3, 5, 3);
  Matrix<double> c_bad(4, 4);
  EXPECT_THROW(small_product<double>(a, b_ok, c_bad, false), InvalidArgument);
  EXPECT_THROW(small_product_bt<double>(a, b_ok, c, false), InvalidArgument);  // bt: 5 x 3
}

TEST(TransposeSmall, MatchesEigenTransposeOnEveryEdge) {
  for (const Index rows : {1, 3, 4, 8, 15, 16, 17, 33, 64, 70}) {
    for (const Index cols : {1, 2, 5, 8, 16, 31, 64, 128}) {
      const Matrix<float> src_store =
          random_matrix<float>(rows + 2, cols, std::uint64_t(rows * 1000 + cols));
      const auto src = src_store.bottomRows(rows);
      Matrix<float> dst_store = Matrix<float>::Constant(cols + 1, rows, 5.f);
      auto dst = dst_store.bottomRows(cols);
      transpose_small<float>(src, dst);
      EXPECT_TRUE((dst.array() == src.transpose().array()).all()) << rows << " x " << cols;
      EXPECT_TRUE((dst_store.topRows(1).array() == 5.f).all()) << "wrote outside dst";
    }
  }
  Matrix<float> wrong(3, 3);
  EXPECT_THROW(transpose_small<float>(Matrix<float>(3, 4), wrong), InvalidArgument);
}

}  // namespace
}  // namespace reformer::ops_test
