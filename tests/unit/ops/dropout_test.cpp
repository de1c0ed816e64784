#include "reformer/ops/dropout.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace reformer::ops_test {
namespace {

Matrix<double> ones(Index r, Index c) { return Matrix<double>::Ones(r, c); }

TEST(Dropout, SameKeySameMaskDifferentKeyDifferentMask) {
  const Matrix<double> x = ones(16, 32);
  Matrix<double> a(16, 32), b(16, 32), c(16, 32);
  const Rng key = Rng(5).derive(1).derive(stream::kFeedForwardActDropout);
  dropout_forward<double>(key, 0.3, 0, x, a);
  dropout_forward<double>(Rng(5).derive(1).derive(stream::kFeedForwardActDropout), 0.3, 0, x, b);
  dropout_forward<double>(Rng(5).derive(2).derive(stream::kFeedForwardActDropout), 0.3, 0, x, c);
  EXPECT_EQ(a, b);
  Index differ = 0;
  for (Index k = 0; k < a.size(); ++k) differ += (a(k) == 0.0) != (c(k) == 0.0);
  // Independent masks with keep rate 0.7 disagree on 2 * 0.7 * 0.3 = 42% of 512 elements.
  EXPECT_GT(differ, 150);
  EXPECT_LT(differ, 280);
}

TEST(Dropout, KeepRateAndScale) {
  const double p = 0.25;
  const Matrix<double> x = ones(100, 200);
  Matrix<double> y(100, 200);
  dropout_forward<double>(Rng(9), p, 0, x, y);
  Index kept = 0;
  for (Index k = 0; k < y.size(); ++k) {
    if (y(k) != 0.0) {
      ++kept;
      EXPECT_EQ(y(k), 1.0 / (1.0 - p));
    }
  }
  // Binomial(20000, 0.75): sd = sqrt(20000 * 0.75 * 0.25) = 61.2; allow 5 sd.
  const double mean = 20000 * 0.75, sd = std::sqrt(20000 * 0.75 * 0.25);
  EXPECT_GT(static_cast<double>(kept), mean - 5 * sd);
  EXPECT_LT(static_cast<double>(kept), mean + 5 * sd);
}

TEST(Dropout, ChunkedEqualsUnchunkedThroughOffset) {
  const Matrix<double> x = random_matrix(7, 23, 1);
  const Rng key = Rng(3).derive(4);
  Matrix<double> full(7, 23), chunked(7, 23);
  dropout_forward<double>(key, 0.4, 0, x, full);
  for (Index c0 = 0; c0 < 23; c0 += 5) {
    const Index c = std::min<Index>(5, 23 - c0);
    dropout_forward<double>(key, 0.4, c0 * 7, x.middleCols(c0, c), chunked.middleCols(c0, c));
  }
  EXPECT_EQ(full, chunked);
  // The keep decisions are those of dropout_keeps at the linear index.
  for (Index c = 0; c < 23; ++c) {
    for (Index r = 0; r < 7; ++r) {
      EXPECT_EQ(full(r, c) != 0.0, dropout_keeps(key, 0.4, static_cast<std::uint64_t>(c * 7 + r)));
    }
  }
}

TEST(Dropout, BackwardReusesTheMaskAndPassesGradcheck) {
  Matrix<double> x = random_matrix(5, 6, 2);
  const Rng key = Rng(11);
  Matrix<double> dx(5, 6);
  auto forward = [&] {
    Matrix<double> y(5, 6);
    dropout_forward<double>(key, 0.5, 3, x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) { dropout_backward<double>(key, 0.5, 3, dy, dx); };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  // Zero pattern of the gradient equals the forward mask.
  const Matrix<double> y = forward();
  for (Index k = 0; k < y.size(); ++k) EXPECT_EQ(y(k) == 0.0, dx(k) == 0.0);
}

TEST(Dropout, ZeroRateCopiesAndInPlaceMatches) {
  const Matrix<double> x = random_matrix(4, 4, 3);
  Matrix<double> y(4, 4);
  dropout_forward<double>(Rng(1), 0.0, 0, x, y);
  EXPECT_EQ(y, x);
  Matrix<double> inplace = x, out(4, 4);
  dropout_forward<double>(Rng(2), 0.6, 8, x, out);
  dropout_inplace<double>(Rng(2), 0.6, 8, inplace);
  EXPECT_EQ(inplace, out);
  Matrix<float> xf = x.cast<float>(), yf(4, 4);
  dropout_forward<float>(Rng(2), 0.6, 8, xf, yf);
  for (Index k = 0; k < 16; ++k) EXPECT_EQ(yf(k) == 0.0f, out(k) == 0.0);
}

TEST(Dropout, RejectsBadArguments) {
  const Matrix<double> x = random_matrix(3, 3, 4);
  Matrix<double> y(3, 3), bad(3, 2);
  expect_throw_with([&] { dropout_forward<double>(Rng(1), 1.0, 0, x, y); },
                    {"dropout_forward", "p = 1", "[0, 1)"});
  expect_throw_with([&] { dropout_forward<double>(Rng(1), -0.1, 0, x, y); },
                    {"dropout_forward", "p = -0.1"});
  expect_throw_with([&] { dropout_forward<double>(Rng(1), std::nan(""), 0, x, y); },
                    {"dropout_forward", "p = nan"});
  expect_throw_with([&] { dropout_forward<double>(Rng(1), 0.1, -1, x, y); },
                    {"dropout_forward", "offset = -1"});
  expect_throw_with([&] { dropout_forward<double>(Rng(1), 0.1, 0, x, bad); },
                    {"dropout_forward", "y"});
  expect_throw_with([&] { dropout_backward<double>(Rng(1), 0.1, 0, x, bad); },
                    {"dropout_backward", "dx"});
  expect_throw_with([&] { dropout_backward<double>(Rng(1), 2.0, 0, x, y); },
                    {"dropout_backward", "p = 2"});
  expect_throw_with([&] { dropout_inplace<double>(Rng(1), 1.5, 0, y); },
                    {"dropout_inplace", "p = 1.5"});
}

}  // namespace
}  // namespace reformer::ops_test
