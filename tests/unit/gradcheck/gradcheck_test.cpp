#include "reformer/testing/gradcheck.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/ops/linear.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace reformer {
namespace {

using testing::check_gradient;
using testing::GradCheckOptions;
using testing::GradCheckResult;
using testing::GradientChecker;

/// f(x) = sin(x) .* x (element-wise): df/dx = cos(x) .* x + sin(x).
struct SinTimesX {
  Matrix<double> x;
  Matrix<double> dx;
  double error = 0.0;  // relative error injected into the analytic gradient

  explicit SinTimesX(Index r, Index c) : x(r, c), dx(r, c) {
    const Rng rng(3);
    for (Index k = 0; k < x.size(); ++k)
      x(k) = 2.0 * rng.uniform(static_cast<std::uint64_t>(k)) - 1.0;
  }
  Matrix<double> forward() const { return (x.array().sin() * x.array()).matrix(); }
  void backward(const Matrix<double>& w) {
    dx = (w.array() * (x.array().cos() * x.array() + x.array().sin())).matrix() * (1.0 + error);
  }
};

TEST(GradCheck, PassesACorrectGradient) {
  SinTimesX f(4, 5);
  const GradCheckResult r = check_gradient(
      [&] { return f.forward(); }, [&](const Matrix<double>& w) { f.backward(w); }, f.x, f.dx, "x");
  EXPECT_TRUE(r.passed()) << r;
  EXPECT_EQ(r.coords_checked, 20);
  EXPECT_LT(r.max_rel_error, 1e-8) << r;
  EXPECT_GT(r.max_abs_grad, 0.0);
}

TEST(GradCheck, CatchesAGradientOffByOnePercent) {
  SinTimesX f(4, 5);
  f.error = 0.01;
  const GradCheckResult r = check_gradient(
      [&] { return f.forward(); }, [&](const Matrix<double>& w) { f.backward(w); }, f.x, f.dx, "x");
  EXPECT_FALSE(r.passed()) << r;
  EXPECT_GT(r.max_rel_error, 1e-3);
  // The message names the variable, the verdict and the worst coordinate.
  const std::string msg = r.message();
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("FAILED"), std::string::npos) << msg;
  EXPECT_NE(msg.find("analytic"), std::string::npos) << msg;
  EXPECT_NEAR(r.analytic, r.numeric * 1.01, 1e-6 * std::abs(r.analytic) + 1e-9);
}

TEST(GradCheck, CatchesASingleWrongCoordinate) {
  SinTimesX f(3, 3);
  auto backward = [&](const Matrix<double>& w) {
    f.backward(w);
    f.dx(1, 2) += 1e-4;  // a small absolute error in one coordinate
  };
  const GradCheckResult r = check_gradient([&] { return f.forward(); }, backward, f.x, f.dx, "x");
  EXPECT_FALSE(r.passed()) << r;
  EXPECT_EQ(r.worst_row, 1);
  EXPECT_EQ(r.worst_col, 2);
}

TEST(GradCheck, RestoresTheVariableExactly) {
  SinTimesX f(3, 4);
  const Matrix<double> before = f.x;
  check_gradient([&] { return f.forward(); }, [&](const Matrix<double>& w) { f.backward(w); }, f.x,
                 f.dx, "x");
  EXPECT_EQ(f.x, before);
}

TEST(GradCheck, SecondOrderDifferencesAlsoWork) {
  SinTimesX f(2, 3);
  GradCheckOptions o;
  o.order = 2;
  o.step = 1e-5;
  const GradCheckResult r =
      check_gradient([&] { return f.forward(); }, [&](const Matrix<double>& w) { f.backward(w); },
                     f.x, f.dx, "x", o);
  EXPECT_TRUE(r.passed()) << r;
}

TEST(GradCheck, SamplesLargeTensors) {
  // y = W x on a 300 x 200 weight (60,000 coordinates): check a sample of 50.
  RowMajorMatrix<double> W(300, 200);
  Matrix<double> x(200, 2);
  const Rng rng(7);
  for (Index k = 0; k < W.size(); ++k)
    W.data()[k] = rng.normal(static_cast<std::uint64_t>(k)) * 0.05;
  for (Index k = 0; k < x.size(); ++k) x(k) = rng.derive(1).normal(static_cast<std::uint64_t>(k));
  RowMajorMatrix<double> dW(300, 200);
  Matrix<double> dx(200, 2);
  int forward_calls = 0;
  auto forward = [&] {
    ++forward_calls;
    Matrix<double> y(300, 2);
    linear_forward<double>(W, x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& w) {
    dW.setZero();
    linear_backward<double>(W, x, w, dx, dW);
  };
  GradCheckOptions o;
  o.max_coords = 50;
  GradientChecker check(forward, backward, o);
  const GradCheckResult r = check(W, dW, "W");
  EXPECT_TRUE(r.passed()) << r;
  EXPECT_EQ(r.coords_checked, 50);
  EXPECT_EQ(forward_calls, 1 + 50 * 4);  // setup + four evaluations per coordinate
  // The sample includes the coordinate with the largest |g|.
  Index rr = 0, cc = 0;
  const double largest = dW.cwiseAbs().maxCoeff(&rr, &cc);
  EXPECT_EQ(r.max_abs_grad, largest);
  // A wrong gradient is still caught through the sample.
  RowMajorMatrix<double> wrong = dW * 1.01;
  EXPECT_FALSE(check(W, wrong, "W wrong").passed());
  // The input (400 coordinates) is sampled too.
  const GradCheckResult rx = check(x, dx, "x");
  EXPECT_EQ(rx.coords_checked, 50);
  EXPECT_TRUE(rx.passed()) << rx;
}

TEST(GradCheck, SampleIsSeededAndDeterministic) {
  RowMajorMatrix<double> W = RowMajorMatrix<double>::Constant(40, 40, 0.1);
  const Matrix<double> x = Matrix<double>::Ones(40, 1);
  RowMajorMatrix<double> dW(40, 40);
  Matrix<double> dx(40, 1);
  auto forward = [&] {
    Matrix<double> y(40, 1);
    linear_forward<double>(W, x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& w) {
    dW.setZero();
    linear_backward<double>(W, x, w, dx, dW);
    dW(17, 3) *= 1.5;  // one wrong coordinate out of 1,600
  };
  GradCheckOptions o;
  o.max_coords = 1600;
  EXPECT_FALSE(check_gradient(forward, backward, W, dW, "W", o).passed());
  o.max_coords = 10;
  const auto a = check_gradient(forward, backward, W, dW, "W", o);
  const auto b = check_gradient(forward, backward, W, dW, "W", o);
  EXPECT_EQ(a.worst_row, b.worst_row);
  EXPECT_EQ(a.worst_col, b.worst_col);
  EXPECT_EQ(a.max_rel_error, b.max_rel_error);
}

TEST(GradCheck, WorksOnParameterSlots) {
  Parameters<double> p;
  const SlotId w = p.add("dense.weight", {3, 4});
  const SlotId b = p.add("dense.bias", {3});
  const Rng rng(9);
  for (Index k = 0; k < p.size(); ++k) p.values()(k) = rng.normal(static_cast<std::uint64_t>(k));
  Matrix<double> x = Matrix<double>::Random(4, 5), dx(4, 5);
  auto forward = [&] {
    Matrix<double> y(3, 5);
    linear_forward<double>(p.value(w), p.value_vector(b), x, y);
    return (y.array().tanh()).matrix().eval();
  };
  auto backward = [&](const Matrix<double>& g) {
    p.zero_grad();
    Matrix<double> y(3, 5);
    linear_forward<double>(p.value(w), p.value_vector(b), x, y);
    const Matrix<double> dy = (g.array() * (1 - y.array().tanh().square())).matrix();
    linear_backward<double>(p.value(w), x, dy, dx, p.grad(w), p.grad_vector(b));
  };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(p.value(w), p.grad(w), "dense.weight")) << check.last();
  EXPECT_TRUE(check(p.value_vector(b), p.grad_vector(b), "dense.bias")) << check.last();
  EXPECT_TRUE(check(x.middleCols(1, 3), dx.middleCols(1, 3), "x[:, 1:4]")) << check.last();
}

TEST(GradCheck, NanGradientFails) {
  SinTimesX f(2, 2);
  auto backward = [&](const Matrix<double>& w) {
    f.backward(w);
    f.dx(0, 1) = std::nan("");
  };
  const auto r = check_gradient([&] { return f.forward(); }, backward, f.x, f.dx, "x");
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.worst_row, 0);
  EXPECT_EQ(r.worst_col, 1);
}

TEST(GradCheck, RejectsBadUse) {
  SinTimesX f(2, 2);
  auto fwd = [&] { return f.forward(); };
  auto bwd = [&](const Matrix<double>& w) { f.backward(w); };
  GradCheckOptions o;
  o.order = 3;
  EXPECT_THROW(GradientChecker(fwd, bwd, o), InvalidArgument);
  o = GradCheckOptions{};
  o.step = 0;
  EXPECT_THROW(GradientChecker(fwd, bwd, o), InvalidArgument);
  GradientChecker check(fwd, bwd);
  const Matrix<double> wrong_shape(3, 2);
  try {
    check(f.x, wrong_shape, "x");
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("grad has shape 3 x 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(GradientChecker([] { return Matrix<double>(); }, bwd), InvalidArgument);
}

}  // namespace
}  // namespace reformer
