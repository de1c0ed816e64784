#include "reformer/ops/embedding.hpp"
#include "reformer/ops/check_finite.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace reformer::ops_test {
namespace {

TEST(Embedding, LookupGathersRows) {
  const RowMajorMatrix<double> E = random_weight(7, 3, 1);
  const std::vector<Token> tokens = {4, 0, 6, 4};
  Matrix<double> y(3, 4);
  embedding_forward<double>(E, tokens, y);
  for (Index n = 0; n < 4; ++n) {
    EXPECT_EQ(y.col(n), E.row(tokens[static_cast<std::size_t>(n)]).transpose());
  }
}

TEST(Embedding, BackwardScatterAddsRepeatedIds) {
  const std::vector<Token> tokens = {2, 5, 2, 2, 0};
  const Matrix<double> dy = random_matrix(3, 5, 2);
  RowMajorMatrix<double> dE = RowMajorMatrix<double>::Ones(6, 3);
  embedding_backward<double>(tokens, dy, dE);
  EXPECT_EQ(dE.row(2), RowVector<double>(RowVector<double>::Ones(3) + dy.col(0).transpose() +
                                         dy.col(2).transpose() + dy.col(3).transpose()));
  EXPECT_EQ(dE.row(1), RowVector<double>::Ones(3));
  EXPECT_EQ(dE.row(0), RowVector<double>(RowVector<double>::Ones(3) + dy.col(4).transpose()));
}

TEST(Embedding, Gradient) {
  RowMajorMatrix<double> E = random_weight(6, 4, 3);
  const std::vector<Token> tokens = {1, 3, 1, 5, 0, 1};
  RowMajorMatrix<double> dE(6, 4);
  auto forward = [&] {
    Matrix<double> y(4, 6);
    embedding_forward<double>(E, tokens, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) {
    dE.setZero();
    embedding_backward<double>(tokens, dy, dE);
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(E, dE, "E")) << check.last();
  EXPECT_EQ(dE.row(2), RowVector<double>::Zero(4));  // unused ids get no gradient
}

TEST(Embedding, TokenSpanViews) {
  const Eigen::Matrix<Token, Eigen::Dynamic, 1> ids =
      (Eigen::Matrix<Token, 3, 1>() << 2, 0, 1).finished();
  const RowMajorMatrix<float> E = random_weight<float>(3, 2, 4);
  Matrix<float> a(2, 3), b(2, 3), c(2, 1);
  embedding_forward<float>(E, ids, a);
  const Token raw[] = {2, 0, 1};
  embedding_forward<float>(E, TokenSpan(raw, 3), b);
  EXPECT_EQ(a, b);
  embedding_forward<float>(E, TokenSpan(raw, 3).subspan(2, 1), c);
  EXPECT_EQ(c.col(0), a.col(2));
  expect_throw_with([&] { TokenSpan(raw, 3).subspan(2, 2); }, {"TokenSpan::subspan"});
  expect_throw_with([&] { TokenSpan(nullptr, 2); }, {"TokenSpan", "size = 2"});
}

TEST(Embedding, RejectsOutOfRangeIdsAndWrongShapes) {
  const RowMajorMatrix<double> E = random_weight(5, 3, 5);
  Matrix<double> y(3, 3), bad(2, 3);
  RowMajorMatrix<double> dE(5, 3);
  expect_throw_with(
      [&] {
        embedding_forward<double>(E, std::vector<Token>{0, 5, 1}, y);
      },
      {"embedding_forward", "tokens[1] = 5", "V = 5"});
  expect_throw_with(
      [&] {
        embedding_forward<double>(E, std::vector<Token>{0, 1, -1}, y);
      },
      {"embedding_forward", "tokens[2] = -1"});
  expect_throw_with(
      [&] {
        embedding_backward<double>(std::vector<Token>{7, 1, 1}, y, dE);
      },
      {"embedding_backward", "tokens[0] = 7", "V = 5"});
  expect_throw_with(
      [&] {
        embedding_forward<double>(E, std::vector<Token>{0, 1}, y);
      },
      {"embedding_forward", "y", "3 x 3"});
  expect_throw_with(
      [&] {
        embedding_forward<double>(E, std::vector<Token>{0, 1, 2}, bad);
      },
      {"embedding_forward", "y", "2 x 3"});
  expect_throw_with(
      [&] {
        embedding_backward<double>(std::vector<Token>{0, 1, 2}, bad, dE);
      },
      {"embedding_backward", "dy"});
}

TEST(CheckFinite, NamesTheFirstBadElement) {
  Matrix<double> m = random_matrix(3, 4, 6);
  EXPECT_NO_THROW(check_finite("model_forward", "x", m));
  m(2, 1) = std::numeric_limits<double>::quiet_NaN();
  m(0, 3) = std::numeric_limits<double>::infinity();
  expect_throw_with([&] { check_finite("model_forward", "x", m); },
                    {"model_forward", "x(2, 1) = nan", "not finite"});
  Matrix<float> f = Matrix<float>::Zero(2, 2);
  f(1, 1) = -std::numeric_limits<float>::infinity();
  expect_throw_with([&] { check_finite("f", "weights", f.col(1)); }, {"weights(1, 0) = -inf"});
}

}  // namespace
}  // namespace reformer::ops_test
