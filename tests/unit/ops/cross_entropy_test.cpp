#include "reformer/ops/cross_entropy.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace reformer::ops_test {
namespace {

constexpr Index kV = 11, kK = 6, kN = 20;  // N is not a multiple of 7

/// Targets with a few ignored (negative) positions.
std::vector<Token> make_targets() {
  const Rng rng(42);
  std::vector<Token> t(kN);
  for (Index n = 0; n < kN; ++n)
    t[static_cast<std::size_t>(n)] =
        static_cast<Token>(rng.below(static_cast<std::uint64_t>(n), kV));
  t[3] = -1;
  t[10] = -100;
  t[19] = -1;
  return t;
}

struct Reference {
  double sum = 0;
  Index count = 0;
  Matrix<double> dh;
  RowMajorMatrix<double> dW;
  Vector<double> db;
};

/// Unchunked reference with the full V x N logits: loss and gradients of the mean.
Reference reference(const Matrix<double>& h, const RowMajorMatrix<double>& W,
                    const Vector<double>& b, const std::vector<Token>& t) {
  Matrix<double> logits = W * h;
  logits.colwise() += b;
  Reference r;
  Matrix<double> dlogits = Matrix<double>::Zero(kV, h.cols());
  for (Index n = 0; n < h.cols(); ++n) {
    const Token target = t[static_cast<std::size_t>(n)];
    if (target < 0) continue;
    double z = 0;
    for (Index v = 0; v < kV; ++v) z += std::exp(logits(v, n));
    r.sum += std::log(z) - logits(target, n);
    ++r.count;
    for (Index v = 0; v < kV; ++v) dlogits(v, n) = std::exp(logits(v, n)) / z;
    dlogits(target, n) -= 1.0;
  }
  dlogits /= static_cast<double>(r.count);
  r.dh = W.transpose() * dlogits;
  r.dW = dlogits * h.transpose();
  r.db = dlogits.rowwise().sum();
  return r;
}

class CrossEntropy : public ::testing::Test {
 protected:
  Matrix<double> h = random_matrix(kK, kN, 1, -2.0, 2.0);
  RowMajorMatrix<double> W = random_weight(kV, kK, 2);
  Vector<double> b = random_vector(kV, 3);
  std::vector<Token> targets = make_targets();
};

TEST_F(CrossEntropy, ChunkedEqualsUnchunkedReference) {
  const Reference ref = reference(h, W, b, targets);
  EXPECT_EQ(ref.count, kN - 3);
  for (Index chunk : {Index(1), Index(7), kN, Index(1000)}) {
    SCOPED_TRACE(chunk);
    const CrossEntropyResult fwd = cross_entropy_forward<double>(h, W, b, targets, chunk);
    EXPECT_EQ(fwd.count, ref.count);
    EXPECT_NEAR(fwd.sum, ref.sum, 1e-12 * ref.sum);
    EXPECT_NEAR(fwd.mean, ref.sum / ref.count, 1e-12);
    Matrix<double> dh(kK, kN);
    RowMajorMatrix<double> dW = RowMajorMatrix<double>::Zero(kV, kK);
    Vector<double> db = Vector<double>::Zero(kV);
    const CrossEntropyResult fb =
        cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW, db, chunk);
    EXPECT_EQ(fb.count, ref.count);
    EXPECT_EQ(fb.sum, fwd.sum);
    EXPECT_LT(test::relative_error(dh, ref.dh), 1e-13);
    EXPECT_LT(test::relative_error(dW, ref.dW), 1e-13);
    EXPECT_LT(test::relative_error(db, ref.db), 1e-13);
    for (Index n : {3, 10, 19}) EXPECT_EQ(dh.col(n), Vector<double>::Zero(kK));
  }
}

TEST_F(CrossEntropy, IgnoredPositionsDoNotMatter) {
  std::vector<Token> other = targets;
  Matrix<double> h2 = h;
  h2.col(3).setConstant(50.0);  // wild hidden state at an ignored position
  const auto a = cross_entropy_forward<double>(h, W, b, targets, 7);
  const auto c = cross_entropy_forward<double>(h2, W, b, other, 7);
  EXPECT_EQ(a.sum, c.sum);
  std::vector<Token> none(kN, -1);
  Matrix<double> dh(kK, kN);
  RowMajorMatrix<double> dW = RowMajorMatrix<double>::Zero(kV, kK);
  Vector<double> db = Vector<double>::Zero(kV);
  const auto r = cross_entropy_forward_backward<double>(h, W, b, none, dh, dW, db, 7);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.mean, 0.0);
  EXPECT_TRUE(dh.isZero(0.0));
  EXPECT_TRUE(dW.isZero(0.0));
  EXPECT_TRUE(db.isZero(0.0));
}

TEST_F(CrossEntropy, Gradients) {
  Matrix<double> dh(kK, kN);
  RowMajorMatrix<double> dW(kV, kK);
  Vector<double> db(kV);
  auto forward = [&] {
    Matrix<double> loss(1, 1);
    loss(0, 0) = cross_entropy_forward<double>(h, W, b, targets, 7).mean;
    return loss;
  };
  auto backward = [&](const Matrix<double>& w) {
    dW.setZero();
    db.setZero();
    cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW, db, 7, Reduction::kMean,
                                           w(0, 0));
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(h, dh, "h")) << check.last();
  EXPECT_TRUE(check(W, dW, "W")) << check.last();
  EXPECT_TRUE(check(b, db, "b")) << check.last();
}

TEST_F(CrossEntropy, SumReductionAndGradScale) {
  Matrix<double> dh_mean(kK, kN), dh_sum(kK, kN);
  RowMajorMatrix<double> dW_mean = RowMajorMatrix<double>::Zero(kV, kK), dW_sum = dW_mean;
  Vector<double> db_mean = Vector<double>::Zero(kV), db_sum = db_mean;
  const auto rm = cross_entropy_forward_backward<double>(h, W, b, targets, dh_mean, dW_mean,
                                                         db_mean, 5, Reduction::kMean);
  // Sum reduction scaled by 1/count reproduces the mean's gradients.
  const auto rs = cross_entropy_forward_backward<double>(h, W, b, targets, dh_sum, dW_sum, db_sum,
                                                         5, Reduction::kSum, 1.0 / rm.count);
  EXPECT_EQ(rm.sum, rs.sum);
  EXPECT_LT(test::relative_error(dh_sum, dh_mean), 1e-15);
  EXPECT_LT(test::relative_error(dW_sum, dW_mean), 1e-15);
  EXPECT_LT(test::relative_error(db_sum, db_mean), 1e-15);
  // Two halves with kSum accumulate to the whole.
  RowMajorMatrix<double> dW_halves = RowMajorMatrix<double>::Zero(kV, kK);
  Vector<double> db_halves = Vector<double>::Zero(kV);
  Matrix<double> dh_halves(kK, kN);
  const TokenSpan all(targets);
  double sum = 0;
  for (Index c0 : {Index(0), Index(9)}) {
    const Index c = c0 == 0 ? 9 : kN - 9;
    sum += cross_entropy_forward_backward<double>(h.middleCols(c0, c), W, b, all.subspan(c0, c),
                                                  dh_halves.middleCols(c0, c), dW_halves, db_halves,
                                                  4, Reduction::kSum, 1.0 / rm.count)
               .sum;
  }
  EXPECT_NEAR(sum, rm.sum, 1e-12);
  EXPECT_LT(test::relative_error(dh_halves, dh_mean), 1e-13);
  EXPECT_LT(test::relative_error(dW_halves, dW_mean), 1e-13);
  EXPECT_LT(test::relative_error(db_halves, db_mean), 1e-13);
}

TEST_F(CrossEntropy, FloatAgreesWithDouble) {
  Matrix<double> dh(kK, kN);
  RowMajorMatrix<double> dW = RowMajorMatrix<double>::Zero(kV, kK);
  Vector<double> db = Vector<double>::Zero(kV);
  const auto rd = cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW, db, 7);
  Matrix<float> dhf(kK, kN);
  RowMajorMatrix<float> dWf = RowMajorMatrix<float>::Zero(kV, kK);
  Vector<float> dbf = Vector<float>::Zero(kV);
  const RowMajorMatrix<float> Wf = W.cast<float>();
  const auto rf = cross_entropy_forward_backward<float>(h.cast<float>(), Wf, b.cast<float>(),
                                                        targets, dhf, dWf, dbf, 7);
  EXPECT_NEAR(rf.mean, rd.mean, 1e-5 * rd.mean);
  EXPECT_LT(test::relative_error(dhf.cast<double>(), dh), 1e-5);
  EXPECT_LT(test::relative_error(dWf.cast<double>(), dW), 1e-5);
  EXPECT_LT(test::relative_error(dbf.cast<double>(), db), 1e-5);
}

TEST_F(CrossEntropy, LogitsHelper) {
  Matrix<double> logits(kV, 2);
  lm_logits<double>(h.rightCols(2), W, b, logits);
  Matrix<double> ref = W * h.rightCols(2);
  ref.colwise() += b;
  EXPECT_LT(test::relative_error(logits, ref), 1e-15);
  Matrix<double> bad(kV, 3);
  expect_throw_with([&] { lm_logits<double>(h.rightCols(2), W, b, bad); }, {"lm_logits", "logits"});
  expect_throw_with([&] { lm_logits<double>(h.topRows(2), W, b, logits); },
                    {"lm_logits", "h.rows() = 2"});
  expect_throw_with([&] { lm_logits<double>(h.rightCols(2), W, b.head(3), logits); },
                    {"lm_logits", "b"});
}

TEST_F(CrossEntropy, RejectsBadArguments) {
  Matrix<double> dh(kK, kN);
  RowMajorMatrix<double> dW(kV, kK);
  Vector<double> db(kV);
  std::vector<Token> bad_target = targets;
  bad_target[5] = kV;
  expect_throw_with([&] { cross_entropy_forward<double>(h, W, b, bad_target, 7); },
                    {"cross_entropy_forward", "targets[5] = 11", "V = 11"});
  expect_throw_with(
      [&] { cross_entropy_forward_backward<double>(h, W, b, bad_target, dh, dW, db, 7); },
      {"cross_entropy_forward_backward", "targets[5] = 11"});
  const std::vector<Token> short_targets(kN - 1, 0);
  expect_throw_with([&] { cross_entropy_forward<double>(h, W, b, short_targets, 7); },
                    {"cross_entropy_forward", "targets.size() = 19", "h.cols() = 20"});
  expect_throw_with([&] { cross_entropy_forward<double>(h, W, b, targets, 0); },
                    {"cross_entropy_forward", "chunk = 0"});
  expect_throw_with([&] { cross_entropy_forward<double>(h.topRows(3), W, b, targets, 7); },
                    {"cross_entropy_forward", "h.rows() = 3", "W.cols() = 6"});
  expect_throw_with([&] { cross_entropy_forward<double>(h, W, b.head(4), targets, 7); },
                    {"cross_entropy_forward", "b"});
  Matrix<double> dh_bad(kK, kN - 1);
  RowMajorMatrix<double> dW_bad(kV, kK + 1);
  Vector<double> db_bad(kV + 1);
  expect_throw_with(
      [&] { cross_entropy_forward_backward<double>(h, W, b, targets, dh_bad, dW, db, 7); },
      {"cross_entropy_forward_backward", "dh"});
  expect_throw_with(
      [&] { cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW_bad, db, 7); },
      {"cross_entropy_forward_backward", "dW"});
  expect_throw_with(
      [&] { cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW, db_bad, 7); },
      {"cross_entropy_forward_backward", "db"});
  expect_throw_with(
      [&] {
        cross_entropy_forward_backward<double>(h, W, b, targets, dh, dW, db, 7, Reduction::kMean,
                                               std::nan(""));
      },
      {"cross_entropy_forward_backward", "grad_scale = nan"});
}

}  // namespace
}  // namespace reformer::ops_test
