// Accuracy of the vectorised GELU / gelu_new / silu kernels, forward and backward, float and
// double, against long-double ground truth (testing/activation_oracle.hpp, accurate::) and
// against the scalar Hugging Face formulas (formula::) on a dense grid over [-12, 12], plus the
// special values. Guaranteed bounds (eps = numeric_limits<S>::epsilon()):
//
//   relative error of the value            <= 8 eps             gelu, silu
//                                          <= 8 eps (1 + |w|)   gelu_new, w = its sigmoid argument
//   relative error of the derivative,      <= 8 eps             gelu, silu
//     scaled by the sum of |its terms|     <= 8 eps (1 + |w|)   gelu_new
//   absolute error against the formula     <= 8 eps max(1, |x|) all, value and derivative
//
// for every x whose exact result is at least 2^-115 (float) / 2^-1000 (double) in magnitude
// (below that the kernels may return the limits instead, see ops/detail/activation_packets.hpp;
// FloatTailLimits checks those), both for the separate forward and backward and for
// activation_forward_with_derivative (value and derivative from one evaluation). gelu_new's
// argument w = 1.6 (x + 0.045 x^3) is rounded in the working precision, which the exact tail
// exp(-|w|) amplifies by |w|; the formula oracle has the same error.
#include "reformer/ops/activations.hpp"
#include "reformer/testing/activation_oracle.hpp"

#include "unit/ops/helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace reformer::activation_accuracy_test {
namespace {

namespace exact = reformer::testing::accurate;
namespace formula = reformer::testing::formula;
using Long = long double;

constexpr Activation kSmooth[] = {Activation::kGelu, Activation::kGeluNew, Activation::kSilu};

/// Exact value and derivative (with its term scale) of activation a at x, in long double.
struct Exact {
  Long value, grad, grad_scale, w;
};
Exact exact_at(Activation a, Long x) {
  switch (a) {
    case Activation::kGelu: {
      const auto g = exact::gelu_grad(x);
      return {exact::gelu(x), g.value, g.scale, 0};
    }
    case Activation::kGeluNew: {
      const auto g = exact::gelu_new_grad(x);
      return {exact::gelu_new(x), g.value, g.scale, exact::gelu_new_arg(x)};
    }
    default: {
      const auto g = exact::silu_grad(x);
      return {exact::silu(x), g.value, g.scale, 0};
    }
  }
}

template <class S>
void formula_at(Activation a, S x, S& value, S& grad) {
  switch (a) {
    case Activation::kGelu:
      value = formula::gelu(x), grad = formula::gelu_grad(x);
      return;
    case Activation::kGeluNew:
      value = formula::gelu_new(x), grad = formula::gelu_new_grad(x);
      return;
    default:
      value = formula::silu(x), grad = formula::silu_grad(x);
      return;
  }
}

/// Below this magnitude a result may be returned as its limit (ops/detail/activation_packets.hpp).
template <class S>
Long flush_bound() {
  return std::is_same_v<S, float> ? std::ldexp(Long(1), -115) : std::ldexp(Long(1), -1000);
}

/// Maximum errors, in units of eps (as in the header comment).
struct Errors {
  double value_rel = 0, grad_rel = 0, value_abs = 0, grad_abs = 0;
  double worst_value_x = 0, worst_grad_x = 0;
};

/// y = act(x) and d = act'(x): by activation_forward and activation_backward (dy = 1), or
/// `together` by activation_forward_with_derivative.
template <class S>
void evaluate(Activation a, const Matrix<S>& x, bool together, Matrix<S>& y, Matrix<S>& d) {
  y.resize(x.rows(), x.cols());
  d.resize(x.rows(), x.cols());
  if (together) {
    activation_forward_with_derivative<S>(a, x, y, d);
  } else {
    activation_forward<S>(a, x, y);
    activation_backward<S>(a, x, Matrix<S>::Ones(x.rows(), x.cols()), d);
  }
}

const char* mode_name(bool together) { return together ? "together" : "separate"; }

template <class S>
Errors measure(Activation a, const Matrix<S>& x, bool together) {
  const Index n = x.size();
  Matrix<S> y, dx;
  evaluate<S>(a, x, together, y, dx);
  const Long eps = std::numeric_limits<S>::epsilon();
  const Long tiny = flush_bound<S>();
  Errors e;
  for (Index i = 0; i < n; ++i) {
    const S xi = x(i);
    const Exact t = exact_at(a, xi);
    const Long amp = 1 + std::fabs(t.w);
    if (std::fabs(t.value) >= tiny) {
      const double r = double(std::fabs((Long(y(i)) - t.value) / t.value) / (eps * amp));
      if (r > e.value_rel) e.value_rel = r, e.worst_value_x = double(xi);
    }
    if (t.grad_scale >= tiny) {
      const double r = double(std::fabs(Long(dx(i)) - t.grad) / t.grad_scale / (eps * amp));
      if (r > e.grad_rel) e.grad_rel = r, e.worst_grad_x = double(xi);
    }
    S fv, fg;
    formula_at<S>(a, xi, fv, fg);
    const Long scale = eps * std::max<Long>(1, std::fabs(Long(xi)));
    e.value_abs = std::max(e.value_abs, double(std::fabs(Long(y(i)) - Long(fv)) / scale));
    e.grad_abs = std::max(e.grad_abs, double(std::fabs(Long(dx(i)) - Long(fg)) / scale));
  }
  return e;
}

template <class S>
Matrix<S> dense_grid() {
  const Index n = 480001;  // step 5e-5 over [-12, 12]
  Matrix<S> x(n, 1);
  for (Index i = 0; i < n; ++i) x(i) = S(-12.0 + 24.0 * double(i) / double(n - 1));
  return x;
}

// Relative bound in eps. GELU's exp(-u^2/2) takes the low part of u^2 from an FMA; without FMA
// hardware that part is 0 and the tail's relative error grows like u^2/2 eps (72 at u = 12).
#if defined(__FMA__)
constexpr double kGeluTailBound = 8.0;
#else
constexpr double kGeluTailBound = 8.0 + 72.0;
#endif
// The same beyond the grid, up to u = U (12.9 float, 37.5 double; the tail-limit tests).
template <class S>
double gelu_far_tail_bound() {
#if defined(__FMA__)
  return 8.0;
#else
  const double u = double(detail::MillsPolynomial<S>::kNormal);
  return 8.0 + 0.5 * u * u;
#endif
}

template <class S>
void expect_bounds(const char* type) {
  const Matrix<S> x = dense_grid<S>();
  for (bool together : {false, true})
    for (Activation a : kSmooth) {
      const Errors e = measure<S>(a, x, together);
      const std::string what =
          std::string(type) + " " + activation_name(a) + " " + mode_name(together);
      const double bound = a == Activation::kGelu ? kGeluTailBound : 8.0;
      EXPECT_LE(e.value_rel, bound) << what << " value, worst at x = " << e.worst_value_x;
      EXPECT_LE(e.grad_rel, bound) << what << " derivative, worst at x = " << e.worst_grad_x;
      EXPECT_LE(e.value_abs, 8.0) << what << " value against the formula";
      EXPECT_LE(e.grad_abs, 8.0) << what << " derivative against the formula";
      // Measured maxima (units of eps), printed for the record.
      std::printf(
          "[ accuracy ] %-6s %-8s %-8s value rel %.2f (x = %g)  grad rel %.2f (x = %g)  "
          "vs formula: value %.2f grad %.2f\n",
          type, activation_name(a), mode_name(together), e.value_rel, e.worst_value_x, e.grad_rel,
          e.worst_grad_x, e.value_abs, e.grad_abs);
    }
}

TEST(ActivationAccuracy, FloatWithinBoundsOnDenseGrid) { expect_bounds<float>("float"); }
TEST(ActivationAccuracy, DoubleWithinBoundsOnDenseGrid) { expect_bounds<double>("double"); }

template <class S>
void expect_special_values() {
  using L = std::numeric_limits<S>;
  const S inf = L::infinity(), huge = L::max(), big = S(1e30), nan = L::quiet_NaN();
  const std::vector<S> xs = {S(0),
                             -S(0),
                             inf,
                             -inf,
                             nan,
                             huge,
                             -huge,
                             big,
                             -big,
                             L::denorm_min(),
                             -L::denorm_min(),
                             L::min() / 4,
                             -L::min() / 4,
                             L::min(),
                             -L::min()};
  Matrix<S> x(Index(xs.size()), 1);
  for (Index i = 0; i < x.rows(); ++i) x(i) = xs[std::size_t(i)];
  for (bool together : {false, true})
    for (Activation a : kSmooth) {
      SCOPED_TRACE(std::string(activation_name(a)) + " " + mode_name(together));
      Matrix<S> y, d;
      evaluate<S>(a, x, together, y, d);
      EXPECT_EQ(y(0), S(0));
      EXPECT_FALSE(std::signbit(y(0)));
      EXPECT_EQ(y(1), S(0));
      EXPECT_TRUE(std::signbit(y(1)));
      EXPECT_LE(std::fabs(d(0) - S(0.5)), L::epsilon());
      EXPECT_LE(std::fabs(d(1) - S(0.5)), L::epsilon());
      EXPECT_EQ(y(2), inf);
      EXPECT_EQ(d(2), S(1));
      EXPECT_EQ(y(3), S(0));  // the limit, not inf * 0
      EXPECT_EQ(d(3), S(0));
      EXPECT_TRUE(std::isnan(y(4)));
      EXPECT_TRUE(std::isnan(d(4)));
      for (Index i : {Index(5), Index(7)}) {
        EXPECT_EQ(y(i), x(i));
        EXPECT_EQ(d(i), S(1));
        EXPECT_EQ(y(i + 1), S(0));
        EXPECT_EQ(d(i + 1), S(0));
      }
      // Subnormal and smallest normal inputs: act(x) = x / 2 and act'(x) = 1/2 to rounding.
      for (Index i = 9; i < x.rows(); ++i) {
        EXPECT_LE(std::fabs(y(i) - x(i) / 2), L::denorm_min()) << "x = " << x(i);
        EXPECT_LE(std::fabs(d(i) - S(0.5)), L::epsilon()) << "x = " << x(i);
      }
    }
}

TEST(ActivationAccuracy, FloatSpecialValues) { expect_special_values<float>(); }
TEST(ActivationAccuracy, DoubleSpecialValues) { expect_special_values<double>(); }

// y may be x and dx may be dy; strided blocks with partial packets give the same values as the
// contiguous matrix (every element is a function of its input alone).
template <class S>
void expect_alias_and_position_independence() {
  const Matrix<double> xd = ops_test::random_matrix(37, 9, 41, -6.0, 6.0);
  const Matrix<double> dyd = ops_test::random_matrix(37, 9, 42);
  const Matrix<S> x = xd.cast<S>(), dy = dyd.cast<S>();
  for (Activation a : kSmooth) {
    SCOPED_TRACE(activation_name(a));
    Matrix<S> y(37, 9), dx(37, 9);
    activation_forward<S>(a, x, y);
    activation_backward<S>(a, x, dy, dx);
    Matrix<S> inplace = x;
    activation_forward<S>(a, inplace, inplace);
    EXPECT_EQ(inplace, y);
    Matrix<S> dinplace = dy;
    activation_backward<S>(a, x, dinplace, dinplace);
    EXPECT_EQ(dinplace, dx);
    // A 30 x 7 block of the matrices (outer stride 37, row offset 5): same values.
    Matrix<S> yb = Matrix<S>::Zero(37, 9), dxb = Matrix<S>::Zero(37, 9);
    activation_forward<S>(a, x.block(5, 1, 30, 7), yb.block(5, 1, 30, 7));
    activation_backward<S>(a, x.block(5, 1, 30, 7), dy.block(5, 1, 30, 7), dxb.block(5, 1, 30, 7));
    EXPECT_EQ(yb.block(5, 1, 30, 7), y.block(5, 1, 30, 7));
    EXPECT_EQ(dxb.block(5, 1, 30, 7), dx.block(5, 1, 30, 7));
    EXPECT_EQ(yb(0, 0), S(0));  // nothing outside the block is written
    EXPECT_EQ(yb(36, 8), S(0));
  }
  // activation_forward_with_derivative, relu included: the same values with y or d in place of
  // x and on a strided block. Its value is the forward's, and d .* dy is the backward's dx up
  // to rounding (exactly for relu).
  for (Activation a :
       {Activation::kRelu, Activation::kGelu, Activation::kGeluNew, Activation::kSilu}) {
    SCOPED_TRACE(activation_name(a));
    Matrix<S> y, d, forward_y(37, 9), dx(37, 9);
    evaluate<S>(a, x, true, y, d);
    activation_forward<S>(a, x, forward_y);
    activation_backward<S>(a, x, dy, dx);
    const Matrix<S> product = d.cwiseProduct(dy);
    const S tol = 8 * std::numeric_limits<S>::epsilon();
    for (Index i = 0; i < x.size(); ++i) {
      EXPECT_LE(std::fabs(y(i) - forward_y(i)), tol * std::max(S(1), std::fabs(forward_y(i))));
      EXPECT_LE(std::fabs(product(i) - dx(i)), tol * std::max(S(1), std::fabs(dx(i))));
    }
    if (a == Activation::kRelu) {
      EXPECT_EQ(y, forward_y);
      EXPECT_EQ(product, dx);
    }
    Matrix<S> y_in_x = x, d_other(37, 9);
    activation_forward_with_derivative<S>(a, y_in_x, y_in_x, d_other);
    EXPECT_EQ(y_in_x, y);
    EXPECT_EQ(d_other, d);
    Matrix<S> d_in_x = x, y_other(37, 9);
    activation_forward_with_derivative<S>(a, d_in_x, y_other, d_in_x);
    EXPECT_EQ(y_other, y);
    EXPECT_EQ(d_in_x, d);
    Matrix<S> yb = Matrix<S>::Zero(37, 9), db = Matrix<S>::Zero(37, 9);
    activation_forward_with_derivative<S>(a, x.block(5, 1, 30, 7), yb.block(5, 1, 30, 7),
                                          db.block(5, 1, 30, 7));
    EXPECT_EQ(yb.block(5, 1, 30, 7), y.block(5, 1, 30, 7));
    EXPECT_EQ(db.block(5, 1, 30, 7), d.block(5, 1, 30, 7));
    EXPECT_EQ(db(0, 0), S(0));
    EXPECT_EQ(db(36, 8), S(0));
    Matrix<S> same(37, 9);
    EXPECT_THROW(activation_forward_with_derivative<S>(a, x, same, same), InvalidArgument);
    Matrix<S> wrong(36, 9);
    EXPECT_THROW(activation_forward_with_derivative<S>(a, x, y_other, wrong), InvalidArgument);
  }
}

TEST(ActivationAccuracy, AliasingAndBlocksFloat) {
  expect_alias_and_position_independence<float>();
}
TEST(ActivationAccuracy, AliasingAndBlocksDouble) {
  expect_alias_and_position_independence<double>();
}

// No kernel computes on subnormal numbers (x86 runs those through microcode, 8-24x slower per
// element on the test host of docs/benchmarks.md): for every input of magnitude at least 2^-30
// (float) / 2^-400 (double), and for 0,
// +-inf and NaN, evaluating the kernels raises no underflow. Dense grids over the bands where
// the tails of the results fall through the subnormal range (gelu |x| in [12, 16], gelu_new's
// sigmoid argument |w| in [80, 110] at |x| in [9.5, 11], silu |x| in [80, 115]) and a sweep of
// every binade.
template <class S>
Matrix<S> underflow_grid() {
  std::vector<S> xs = {S(0), -S(0), std::numeric_limits<S>::infinity(),
                       -std::numeric_limits<S>::infinity(), std::numeric_limits<S>::quiet_NaN()};
  const auto band = [&](double lo, double hi, double step) {
    for (double v = lo; v <= hi; v += step) xs.push_back(S(v)), xs.push_back(S(-v));
  };
  if (std::is_same_v<S, float>) {
    band(12.0, 16.0, 1e-4);
    band(9.5, 11.0, 1e-4);
    band(80.0, 115.0, 1e-3);
  } else {
    band(36.0, 41.0, 1e-4);
    band(20.5, 23.0, 1e-4);
    band(700.0, 760.0, 1e-3);
  }
  const int lowest = std::is_same_v<S, float> ? -30 : -400;
  for (int k = lowest; k < std::numeric_limits<S>::max_exponent; ++k)
    for (int j = 0; j < 64; ++j) {
      const S v = std::ldexp(S(1) + S(j) / S(64), k);
      xs.push_back(v), xs.push_back(-v);
    }
  Matrix<S> x(Index(xs.size()), 1);
  for (Index i = 0; i < x.rows(); ++i) x(i) = xs[std::size_t(i)];
  return x;
}

template <class S>
void expect_no_underflow() {
  const Matrix<S> x = underflow_grid<S>();
  for (bool together : {false, true})
    for (Activation a : kSmooth) {
      Matrix<S> y, d;
      std::feclearexcept(FE_ALL_EXCEPT);
      evaluate<S>(a, x, together, y, d);
      const bool raised = std::fetestexcept(FE_UNDERFLOW) != 0;
      EXPECT_FALSE(raised) << activation_name(a) << " " << mode_name(together);
      if (!raised) continue;
      // Name the first input that underflows, one at a time.
      for (Index i = 0; i < x.rows(); ++i) {
        Matrix<S> xi = x.row(i), yi, di;
        std::feclearexcept(FE_ALL_EXCEPT);
        evaluate<S>(a, xi, together, yi, di);
        if (std::fetestexcept(FE_UNDERFLOW) != 0) {
          ADD_FAILURE() << activation_name(a) << " underflows at x = " << double(x(i));
          break;
        }
      }
    }
}

TEST(ActivationAccuracy, FloatKernelsNeverUnderflow) { expect_no_underflow<float>(); }
TEST(ActivationAccuracy, DoubleKernelsNeverUnderflow) { expect_no_underflow<double>(); }

// Beyond the point where an exact result would fall below the smallest normal number, the
// kernels return the limits: act(x) = x, act'(x) = 1 for large x; -0 and -0 (gelu) or -0 and 0
// (silu, gelu_new, as at -inf) for large -x. The error that costs is below 2^-115 (float) /
// 2^-1000 (double) absolute, checked against the long-double values.

/// |x| beyond which activation a returns its limits exactly (its pieces at the last normal point).
template <class S>
S limit_point(Activation a) {
  switch (a) {
    case Activation::kGelu:
      return detail::MillsPolynomial<S>::kNormal;
    case Activation::kGeluNew:  // w(x) = 1.6 x + 0.071 x^3 beyond SigmoidClamp::kNormal
      return std::is_same_v<S, float> ? S(10.7) : S(21.6);
    default:
      return detail::SigmoidClamp<S>::kNormal;
  }
}

template <class S>
void expect_tail_limits() {
  const Long bound = flush_bound<S>();
  const Matrix<S> x = underflow_grid<S>();
  for (bool together : {false, true})
    for (Activation a : kSmooth) {
      Matrix<S> y, d;
      evaluate<S>(a, x, together, y, d);
      for (Index i = 0; i < x.rows(); ++i) {
        const S xi = x(i);
        if (!std::isfinite(xi) || std::fabs(xi) < S(1)) continue;
        const Exact t = exact_at(a, xi);
        // Without FMA hardware GELU's relative error grows like u^2/2 eps up to u = U.
        const Long amp =
            (1 + std::fabs(t.w)) * (a == Activation::kGelu ? gelu_far_tail_bound<S>() / 8 : 1);
        const Long eps = std::numeric_limits<S>::epsilon();
        const Long value_err = std::fabs(Long(y(i)) - t.value);
        const Long grad_err = std::fabs(Long(d(i)) - t.grad);
        EXPECT_TRUE(value_err <= bound || value_err <= 8 * eps * amp * std::fabs(t.value))
            << activation_name(a) << " " << mode_name(together) << " value at x = " << xi;
        EXPECT_TRUE(grad_err <= bound || grad_err <= 8 * eps * amp * t.grad_scale)
            << activation_name(a) << " " << mode_name(together) << " derivative at x = " << xi;
        if (std::fabs(xi) <= limit_point<S>(a)) continue;
        EXPECT_EQ(y(i), xi > 0 ? xi : S(0)) << activation_name(a) << " at x = " << xi;
        EXPECT_EQ(d(i), xi > 0 ? S(1) : S(0)) << activation_name(a) << " at x = " << xi;
      }
    }
}

TEST(ActivationAccuracy, FloatTailLimits) { expect_tail_limits<float>(); }
TEST(ActivationAccuracy, DoubleTailLimits) { expect_tail_limits<double>(); }

}  // namespace
}  // namespace reformer::activation_accuracy_test
