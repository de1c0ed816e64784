#include "reformer/ops/activations.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace reformer::ops_test {
namespace {

constexpr Activation kAllActivations[] = {Activation::kRelu, Activation::kGelu,
                                          Activation::kGeluNew, Activation::kSilu};

/// Inputs bounded away from relu's kink at 0 (|x| >= 0.05), so finite differences are valid.
Matrix<double> away_from_zero(Index r, Index c, std::uint64_t seed) {
  Matrix<double> x = random_matrix(r, c, seed, -2.0, 2.0);
  for (Index k = 0; k < x.size(); ++k) {
    if (std::abs(x(k)) < 0.05) x(k) = x(k) < 0 ? -0.05 : 0.05;
  }
  return x;
}

TEST(Activations, KnownValues) {
  Matrix<double> x(1, 5);
  x << -2.0, -0.5, 0.0, 1.0, 3.0;
  Matrix<double> y(1, 5);
  relu_forward<double>(x, y);
  EXPECT_EQ(y(0, 0), 0.0);
  EXPECT_EQ(y(0, 2), 0.0);
  EXPECT_EQ(y(0, 4), 3.0);
  gelu_forward<double>(x, y);
  // 0.5 x (1 + erf(x / sqrt 2)) at x = -2, -0.5, 0, 1, 3 (Python math.erf, float64).
  EXPECT_NEAR(y(0, 0), -0.04550026389635842, 1e-15);
  EXPECT_NEAR(y(0, 1), -0.15426876936299344, 1e-15);
  EXPECT_EQ(y(0, 2), 0.0);
  EXPECT_NEAR(y(0, 3), 0.8413447460685429, 1e-15);
  EXPECT_NEAR(y(0, 4), 2.99595030590511, 1e-14);
}

TEST(Activations, ReluGradient) {
  Matrix<double> x = away_from_zero(4, 6, 1), dx(4, 6);
  auto forward = [&] {
    Matrix<double> y(4, 6);
    relu_forward<double>(x, y);
    return y;
  };
  auto backward = [&](const Matrix<double>& dy) { relu_backward<double>(x, dy, dx); };
  GradientChecker check(forward, backward);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
}

TEST(Activations, SmoothActivationGradients) {
  for (Activation a : {Activation::kGelu, Activation::kGeluNew, Activation::kSilu}) {
    Matrix<double> x = random_matrix(4, 6, 2, -4.0, 4.0), dx(4, 6);
    auto forward = [&] {
      Matrix<double> y(4, 6);
      activation_forward<double>(a, x, y);
      return y;
    };
    auto backward = [&](const Matrix<double>& dy) { activation_backward<double>(a, x, dy, dx); };
    GradientChecker check(forward, backward);
    EXPECT_TRUE(check(x, dx, "x")) << activation_name(a) << ": " << check.last();
  }
}

TEST(Activations, RuntimeDispatchAndInPlace) {
  const Matrix<double> x = random_matrix(3, 5, 3, -2.0, 2.0), dy = random_matrix(3, 5, 4);
  for (Activation a : kAllActivations) {
    Matrix<double> y(3, 5), y_direct(3, 5), dx(3, 5), dx_direct(3, 5);
    activation_forward<double>(a, x, y);
    activation_backward<double>(a, x, dy, dx);
    switch (a) {
      case Activation::kRelu:
        relu_forward<double>(x, y_direct);
        relu_backward<double>(x, dy, dx_direct);
        break;
      case Activation::kGelu:
        gelu_forward<double>(x, y_direct);
        gelu_backward<double>(x, dy, dx_direct);
        break;
      case Activation::kGeluNew:
        gelu_new_forward<double>(x, y_direct);
        gelu_new_backward<double>(x, dy, dx_direct);
        break;
      case Activation::kSilu:
        silu_forward<double>(x, y_direct);
        silu_backward<double>(x, dy, dx_direct);
        break;
    }
    EXPECT_EQ(y, y_direct);
    EXPECT_EQ(dx, dx_direct);
    Matrix<double> inplace = x;
    activation_forward<double>(a, inplace, inplace);
    EXPECT_EQ(inplace, y);
    Matrix<double> dinplace = dy;
    activation_backward<double>(a, x, dinplace, dinplace);
    EXPECT_EQ(dinplace, dx);
  }
}

TEST(Activations, FloatAgreesWithDouble) {
  const Matrix<double> x = random_matrix(8, 8, 5, -5.0, 5.0), dy = random_matrix(8, 8, 6);
  for (Activation a : kAllActivations) {
    Matrix<double> y(8, 8), dx(8, 8);
    Matrix<float> yf(8, 8), dxf(8, 8);
    activation_forward<double>(a, x, y);
    activation_backward<double>(a, x, dy, dx);
    activation_forward<float>(a, x.cast<float>(), yf);
    activation_backward<float>(a, x.cast<float>(), dy.cast<float>(), dxf);
    EXPECT_LT(test::relative_error(yf.cast<double>(), y), 1e-6) << activation_name(a);
    EXPECT_LT(test::relative_error(dxf.cast<double>(), dx), 1e-6) << activation_name(a);
  }
}

TEST(Activations, NamesRoundTripAndUnknownIsConfigError) {
  EXPECT_EQ(activation_from_string("relu"), Activation::kRelu);
  EXPECT_EQ(activation_from_string("gelu"), Activation::kGelu);
  EXPECT_EQ(activation_from_string("gelu_new"), Activation::kGeluNew);
  EXPECT_EQ(activation_from_string("silu"), Activation::kSilu);
  EXPECT_EQ(activation_from_string("swish"), Activation::kSilu);
  for (Activation a : kAllActivations) {
    EXPECT_EQ(activation_from_string(activation_name(a)), a);
    EXPECT_TRUE(is_activation_name(activation_name(a)));
  }
  EXPECT_FALSE(is_activation_name("Gelu"));
  expect_throw_with<ConfigError>(
      [] { activation_from_string("mish"); },
      {"activation_from_string", "'mish'", "relu", "gelu", "gelu_new", "silu", "swish"});
}

TEST(Activations, RejectWrongShapes) {
  const Matrix<double> x = random_matrix(3, 4, 7);
  Matrix<double> bad(4, 3), ok(3, 4);
  expect_throw_with([&] { relu_forward<double>(x, bad); }, {"relu_forward", "y", "4 x 3"});
  expect_throw_with([&] { gelu_forward<double>(x, bad); }, {"gelu_forward", "y"});
  expect_throw_with([&] { relu_backward<double>(x, bad, ok); }, {"relu_backward", "dy"});
  expect_throw_with([&] { relu_backward<double>(x, ok, bad); }, {"relu_backward", "dx"});
  expect_throw_with([&] { gelu_backward<double>(x, bad, ok); }, {"gelu_backward", "dy"});
  expect_throw_with([&] { gelu_backward<double>(x, ok, bad); }, {"gelu_backward", "dx"});
  expect_throw_with([&] { gelu_new_forward<double>(x, bad); }, {"gelu_new_forward", "y"});
  expect_throw_with([&] { gelu_new_backward<double>(x, bad, ok); }, {"gelu_new_backward", "dy"});
  expect_throw_with([&] { silu_forward<double>(x, bad); }, {"silu_forward", "y"});
  expect_throw_with([&] { silu_backward<double>(x, ok, bad); }, {"silu_backward", "dx"});
}

}  // namespace
}  // namespace reformer::ops_test
