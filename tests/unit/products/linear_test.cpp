#include "reformer/ops/linear.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

namespace reformer::ops_test {
namespace {

TEST(Linear, ForwardMatchesNaiveSum) {
  const RowMajorMatrix<double> W = random_weight(3, 5, 1);
  const Vector<double> b = random_vector(3, 2);
  const Matrix<double> x = random_matrix(5, 4, 3);
  Matrix<double> y(3, 4), y_nb(3, 4);
  linear_forward<double>(W, b, x, y);
  linear_forward<double>(W, x, y_nb);
  for (Index o = 0; o < 3; ++o) {
    for (Index n = 0; n < 4; ++n) {
      double s = 0;
      for (Index i = 0; i < 5; ++i) s += W(o, i) * x(i, n);
      EXPECT_NEAR(y_nb(o, n), s, 1e-14);
      EXPECT_NEAR(y(o, n), s + b(o), 1e-14);
    }
  }
}

TEST(Linear, WorksOnParameterSlotsAndColumnBlocks) {
  Parameters<double> p;
  const SlotId w = p.add("dense.weight", {3, 5});
  const SlotId b = p.add("dense.bias", {3});
  p.value(w) = random_weight(3, 5, 4);
  p.value_vector(b) = random_vector(3, 5);
  const Matrix<double> x = random_matrix(5, 6, 6);
  Matrix<double> y(3, 6), y_blocks(3, 6);
  linear_forward<double>(p.value(w), p.value_vector(b), x, y);
  linear_forward<double>(p.value(w), p.value(b), x.leftCols(2), y_blocks.leftCols(2));
  linear_forward<double>(p.value(w), p.value(b), x.rightCols(4), y_blocks.rightCols(4));
  EXPECT_LT(test::relative_error(y_blocks, y), 1e-15);
}

TEST(Linear, GradientsWithBias) {
  RowMajorMatrix<double> W = random_weight(4, 3, 7);
  Vector<double> b = random_vector(4, 8);
  Matrix<double> x = random_matrix(3, 5, 9);
  Matrix<double> dx(3, 5);
  RowMajorMatrix<double> dW(4, 3);
  Vector<double> db(4);
  auto forward = [&] {
    Matrix<double> y(4, 5);
    linear_forward<double>(W, b, x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) {
    dW.setZero();
    db.setZero();
    linear_backward<double>(W, x, dy, dx, dW, db);
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  EXPECT_TRUE(check(W, dW, "W")) << check.last();
  EXPECT_TRUE(check(b, db, "b")) << check.last();
}

TEST(Linear, GradientsWithoutBiasAndSplitBackward) {
  RowMajorMatrix<double> W = random_weight(2, 6, 10);
  Matrix<double> x = random_matrix(6, 3, 11);
  Matrix<double> dx(6, 3), dx_split(6, 3);
  RowMajorMatrix<double> dW(2, 6), dW_split(2, 6);
  auto forward = [&] {
    Matrix<double> y(2, 3);
    linear_forward<double>(W, x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) {
    dW.setZero();
    linear_backward<double>(W, x, dy, dx, dW);
    dW_split.setZero();
    linear_backward_input<double>(W, dy, dx_split);
    linear_backward_weight<double>(x, dy, dW_split);
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  EXPECT_TRUE(check(W, dW, "W")) << check.last();
  EXPECT_EQ(dx, dx_split);
  EXPECT_EQ(dW, dW_split);
}

TEST(Linear, ParameterGradientsAccumulate) {
  const RowMajorMatrix<double> W = random_weight(2, 3, 12);
  const Matrix<double> x = random_matrix(3, 4, 13);
  const Matrix<double> dy = random_matrix(2, 4, 14);
  Matrix<double> dx(3, 4);
  RowMajorMatrix<double> dW = RowMajorMatrix<double>::Ones(2, 3);
  Vector<double> db = Vector<double>::Ones(2);
  linear_backward<double>(W, x, dy, dx, dW, db);
  const RowMajorMatrix<double> expected_dW =
      RowMajorMatrix<double>::Ones(2, 3) + dy * x.transpose();
  const Vector<double> expected_db = Vector<double>::Ones(2) + dy.rowwise().sum();
  EXPECT_LT(test::relative_error(dW, expected_dW), 1e-15);
  EXPECT_LT(test::relative_error(db, expected_db), 1e-15);
}

TEST(Linear, FloatAgreesWithDouble) {
  const RowMajorMatrix<double> W = random_weight(8, 16, 15);
  const Vector<double> b = random_vector(8, 16);
  const Matrix<double> x = random_matrix(16, 10, 17);
  const Matrix<double> dy = random_matrix(8, 10, 18);
  Matrix<double> y(8, 10), dx(16, 10);
  RowMajorMatrix<double> dW = RowMajorMatrix<double>::Zero(8, 16);
  Vector<double> db = Vector<double>::Zero(8);
  linear_forward<double>(W, b, x, y);
  linear_backward<double>(W, x, dy, dx, dW, db);
  Matrix<float> yf(8, 10), dxf(16, 10);
  RowMajorMatrix<float> dWf = RowMajorMatrix<float>::Zero(8, 16);
  Vector<float> dbf = Vector<float>::Zero(8);
  linear_forward<float>(W.cast<float>(), b.cast<float>(), x.cast<float>(), yf);
  linear_backward<float>(W.cast<float>(), x.cast<float>(), dy.cast<float>(), dxf, dWf, dbf);
  EXPECT_LT(test::relative_error(yf.cast<double>(), y), 1e-5);
  EXPECT_LT(test::relative_error(dxf.cast<double>(), dx), 1e-5);
  EXPECT_LT(test::relative_error(dWf.cast<double>(), dW), 1e-5);
  EXPECT_LT(test::relative_error(dbf.cast<double>(), db), 1e-5);
}

TEST(Linear, RejectsWrongShapes) {
  const RowMajorMatrix<double> W = random_weight(3, 4, 19);
  const Vector<double> b = random_vector(3, 20);
  const Matrix<double> x = random_matrix(4, 2, 21);
  Matrix<double> y(3, 2), dx(4, 2), dy(3, 2);
  RowMajorMatrix<double> dW(3, 4);
  Vector<double> db(3);
  const Matrix<double> x_bad = random_matrix(5, 2, 22);
  Matrix<double> y_bad(3, 3);
  const Vector<double> b_bad = random_vector(4, 23);
  expect_throw_with([&] { linear_forward<double>(W, x_bad, y); },
                    {"linear_forward", "x.rows() = 5", "in_features = 4"});
  expect_throw_with([&] { linear_forward<double>(W, x, y_bad); }, {"linear_forward", "y"});
  expect_throw_with([&] { linear_forward<double>(W, b_bad, x, y); }, {"linear_forward", "b"});
  expect_throw_with([&] { linear_backward<double>(W, x_bad, dy, dx, dW); },
                    {"linear_backward", "x.rows() = 5"});
  Matrix<double> dy_bad(2, 2);
  expect_throw_with([&] { linear_backward<double>(W, x, dy_bad, dx, dW, db); },
                    {"linear_backward", "dy"});
  Matrix<double> dx_bad(4, 3);
  expect_throw_with([&] { linear_backward<double>(W, x, dy, dx_bad, dW, db); },
                    {"linear_backward", "dx"});
  RowMajorMatrix<double> dW_bad(4, 3);
  expect_throw_with([&] { linear_backward<double>(W, x, dy, dx, dW_bad, db); },
                    {"linear_backward", "dW"});
  Vector<double> db_bad(2);
  expect_throw_with([&] { linear_backward<double>(W, x, dy, dx, dW, db_bad); },
                    {"linear_backward", "db"});
  expect_throw_with([&] { linear_backward_input<double>(W, dy_bad, dx); },
                    {"linear_backward_input", "dy.rows() = 2"});
  expect_throw_with([&] { linear_backward_input<double>(W, dy, dx_bad); },
                    {"linear_backward_input", "dx"});
  expect_throw_with([&] { linear_backward_weight<double>(x_bad, dy, dW); },
                    {"linear_backward_weight", "x"});
  expect_throw_with([&] { linear_backward_weight<double>(x, dy_bad, dW); },
                    {"linear_backward_weight", "dy"});
  expect_throw_with([&] { linear_backward_weight<double>(x, dy, dW, db_bad); },
                    {"linear_backward_weight", "db"});
}

}  // namespace
}  // namespace reformer::ops_test
