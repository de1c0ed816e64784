#pragma once
// Finite-difference gradient checking for your own layers (double precision).
//
// The function under test is any f: (variables) → Matrix<double>. It is reduced to the scalar
//   L = sum_ij w_ij f_ij      with w drawn once from the library Rng (standard normal),
// whose analytic gradient your backward pass computes when handed w as the output gradient.
// Each checked coordinate theta_k of a variable is perturbed in place and dL/dtheta_k is
// estimated by the fourth-order central difference
//   g_fd = (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / (12 h),   h = step * max(1, |theta_k|)
// (set GradCheckOptions::order = 2 for the plain (L(+h) - L(-h)) / 2h), and compared through
//   err_k = |g - g_fd| / max(|g + g_fd|, abs_floor)
// The floor keeps coordinates whose true gradient is ~0 from dividing rounding noise by ~0:
// below it the test is an absolute one, |g - g_fd| < tolerance * abs_floor.
// Large variables are sampled: at most max_coords coordinates (a seeded random subset that
// always includes the coordinate with the largest analytic gradient).
//
// Usage (a sublayer following the library's contract, checked w.r.t. its input and a weight):
//
//   Parameters<double> p;  MyLayer<double> layer(cfg, p, "");  layer.init(p, Rng(1), 0.1);
//   Matrix<double> x = ..., dx(x.rows(), x.cols()), fx(D, N);
//   auto forward = [&] { Matrix<double> y(D, N); layer.forward(p, x, y, ctx); return y; };
//   auto backward = [&](const Matrix<double>& w) {
//     p.zero_grad();
//     backward_out_of_place(layer, p, x, w, dx, fx, ctx);  // dx = J^T w; p.grads() += ...
//   };
//   reformer::testing::GradientChecker check(forward, backward);   // runs backward(w) once
//   EXPECT_TRUE(check(x, dx, "x")) << check.last();                // or:
//   auto r = check(p.value(id), p.grad(id), "weight");             //   any mutable Eigen lvalue
//   EXPECT_LT(r.max_rel_error, 1e-6) << r;                         //   or Map/Block/Ref view
//
// One-shot form: check_gradient(forward, backward, x, dx, "x", options).
// The variable is restored bit for bit after every perturbation. The forward closure must be
// deterministic (use a fixed Rng key for dropout) and must not modify the gradient buffers.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace reformer::testing {

struct GradCheckOptions {
  double step = 1e-4;             ///< h relative to max(1, |theta|)
  int order = 4;                  ///< 2 (central) or 4 (fourth-order central) difference
  double abs_floor = 1e-3;        ///< lower bound of the relative error's denominator
  double tolerance = 1e-6;        ///< passed() means max_rel_error < tolerance
  Index max_coords = 0;           ///< 0: check every coordinate; otherwise sample at most this many
  std::uint64_t seed = 20200113;  ///< key of the projection w and of the coordinate sample
};

/// Outcome of checking one variable.
struct GradCheckResult {
  std::string name;                      ///< label given to the check
  Index rows = 0, cols = 0;              ///< the variable's shape
  Index coords_checked = 0;              ///< coordinates compared
  double max_rel_error = 0;              ///< largest err_k
  Index worst_row = -1, worst_col = -1;  ///< coordinate of the largest error
  double analytic = 0;                   ///< g at the worst coordinate
  double numeric = 0;                    ///< g_fd at the worst coordinate
  double max_abs_grad = 0;  ///< largest |g| over the checked coordinates (scale context)
  double tolerance = 0;     ///< the tolerance of the options used

  bool passed() const { return coords_checked > 0 && max_rel_error < tolerance; }
  explicit operator bool() const { return passed(); }

  /// One line for test logs, e.g. "gradcheck 'x' (4 x 6): PASSED max rel error 3.1e-10 ...".
  std::string message() const {
    std::ostringstream os;
    os.precision(6);
    os << "gradcheck '" << name << "' (" << rows << " x " << cols
       << "): " << (passed() ? "PASSED" : "FAILED") << " max rel error " << max_rel_error
       << " (tolerance " << tolerance << ")";
    if (worst_row >= 0) {
      os.precision(12);
      os << " at (" << worst_row << ", " << worst_col << "): analytic " << analytic << ", numeric "
         << numeric;
      os.precision(6);
    }
    os << "; " << coords_checked << " of " << rows * cols << " coordinates checked, max |g| "
       << max_abs_grad;
    return os.str();
  }
};

inline std::ostream& operator<<(std::ostream& os, const GradCheckResult& r) {
  return os << r.message();
}

/// Checks analytic gradients of one function against finite differences, for any number of
/// variables (see the header comment).
class GradientChecker {
 public:
  using Forward = std::function<Matrix<double>()>;
  using Backward = std::function<void(const Matrix<double>& w)>;

  /// Runs forward() once to learn the output shape, draws the projection w, and runs
  /// backward(w) once: afterwards the analytic gradients are wherever backward put them.
  GradientChecker(Forward forward, Backward backward, GradCheckOptions options = {})
      : forward_(std::move(forward)), backward_(std::move(backward)), options_(options) {
    REFORMER_REQUIRE(forward_ && backward_, InvalidArgument, "GradientChecker",
                     "forward and backward must be callable");
    REFORMER_REQUIRE(options_.order == 2 || options_.order == 4, InvalidArgument, "GradientChecker",
                     "options.order = ", options_.order, " must be 2 or 4");
    REFORMER_REQUIRE(options_.step > 0 && options_.abs_floor > 0 && options_.tolerance > 0 &&
                         options_.max_coords >= 0,
                     InvalidArgument, "GradientChecker", "options.step = ", options_.step,
                     ", abs_floor = ", options_.abs_floor, ", tolerance = ", options_.tolerance,
                     " must be positive and max_coords = ", options_.max_coords, " >= 0");
    const Matrix<double> f0 = forward_();
    REFORMER_REQUIRE(f0.size() > 0, InvalidArgument, "GradientChecker",
                     "forward() returned an empty matrix");
    const Rng rng = Rng(options_.seed).derive(0x6772616463686bULL);  // "gradchk"
    w_.resize(f0.rows(), f0.cols());
    for (Index k = 0; k < w_.size(); ++k) w_(k) = rng.normal(static_cast<std::uint64_t>(k));
    backward_(w_);
  }

  /// The projection weights (output gradient handed to backward).
  const Matrix<double>& projection() const { return w_; }
  const GradCheckOptions& options() const { return options_; }
  /// The most recent result.
  const GradCheckResult& last() const { return last_; }

  /// The scalar L = sum(w .* forward()) at the current variables.
  double loss() const {
    const Matrix<double> f = forward_();
    REFORMER_REQUIRE(f.rows() == w_.rows() && f.cols() == w_.cols(), InvalidArgument,
                     "GradientChecker", "forward() returned ", f.rows(), " x ", f.cols(),
                     ", expected ", w_.rows(), " x ", w_.cols(), " as on the first call");
    return w_.cwiseProduct(f).sum();
  }

  /// Compares `grad` (the analytic dL/dvar that backward produced; same shape as var) with
  /// finite differences obtained by perturbing `var` in place. `var` is any mutable Eigen
  /// matrix, vector, Map, Block or Ref of doubles (temporaries such as p.value(id) are fine).
  template <class Var, class Grad>
  GradCheckResult operator()(Var&& var, const Grad& grad, const std::string& name = "") {
    return check(std::forward<Var>(var), grad, name);
  }

  template <class Var, class Grad>
  GradCheckResult check(Var&& var, const Grad& grad, const std::string& name = "") {
    const Index rows = var.rows(), cols = var.cols();
    REFORMER_REQUIRE(grad.rows() == rows && grad.cols() == cols, InvalidArgument,
                     "GradientChecker::check", "grad has shape ", grad.rows(), " x ", grad.cols(),
                     ", expected the variable '", name, "' shape ", rows, " x ", cols);
    const Matrix<double> g = grad.template cast<double>();  // snapshot of the analytic gradient

    GradCheckResult r;
    r.name = name;
    r.rows = rows;
    r.cols = cols;
    r.tolerance = options_.tolerance;
    for (Index k : coordinates(g)) {
      const Index i = k % rows, j = k / rows;
      const double numeric = numeric_derivative(var(i, j));
      const double analytic = g(i, j);
      const double denom = std::max(std::abs(analytic + numeric), options_.abs_floor);
      const double err = std::abs(analytic - numeric) / denom;
      r.max_abs_grad = std::max(r.max_abs_grad, std::abs(analytic));
      ++r.coords_checked;
      if (r.worst_row < 0 || std::isnan(err) || err > r.max_rel_error) {
        r.max_rel_error = std::isnan(err) ? HUGE_VAL : err;  // NaN counts as the worst
        r.worst_row = i;
        r.worst_col = j;
        r.analytic = analytic;
        r.numeric = numeric;
      }
    }
    last_ = r;
    return r;
  }

 private:
  /// dL/dtheta by central differences, perturbing the referenced coefficient in place.
  template <class Coeff>
  double numeric_derivative(Coeff&& theta) {
    const double original = theta;
    const double h = options_.step * std::max(1.0, std::abs(original));
    auto at = [&](double delta) {
      theta = original + delta;
      const double l = loss();
      theta = original;
      return l;
    };
    const double d1 = at(h) - at(-h);
    if (options_.order == 2) return d1 / (2 * h);
    const double d2 = at(2 * h) - at(-2 * h);
    return (8 * d1 - d2) / (12 * h);
  }

  /// Column-major linear indices to check: all, or a seeded sample of max_coords that includes
  /// the largest |g|.
  std::vector<Index> coordinates(const Matrix<double>& g) const {
    const Index n = g.size();
    std::vector<Index> all(static_cast<std::size_t>(n));
    for (Index k = 0; k < n; ++k) all[static_cast<std::size_t>(k)] = k;
    if (options_.max_coords == 0 || n <= options_.max_coords) return all;
    Index largest = 0;
    g.cwiseAbs().reshaped().maxCoeff(&largest);
    std::swap(all[0], all[static_cast<std::size_t>(largest)]);
    // Partial Fisher-Yates over positions 1..n-1.
    const Rng rng = Rng(options_.seed).derive(0x636f6f726473ULL);  // "coords"
    const Index m = options_.max_coords;
    for (Index k = 1; k < m; ++k) {
      const auto span = static_cast<std::uint64_t>(n - k);
      const Index pick = k + static_cast<Index>(rng.below(static_cast<std::uint64_t>(k), span));
      std::swap(all[static_cast<std::size_t>(k)], all[static_cast<std::size_t>(pick)]);
    }
    all.resize(static_cast<std::size_t>(m));
    std::sort(all.begin(), all.end());
    return all;
  }

  Forward forward_;
  Backward backward_;
  GradCheckOptions options_;
  Matrix<double> w_;
  GradCheckResult last_;
};

/// One-shot check of one variable: builds a GradientChecker (running backward once) and checks
/// `var` against `grad`.
template <class Var, class Grad>
GradCheckResult check_gradient(GradientChecker::Forward forward, GradientChecker::Backward backward,
                               Var&& var, const Grad& grad, const std::string& name = "",
                               GradCheckOptions options = {}) {
  GradientChecker checker(std::move(forward), std::move(backward), options);
  return checker.check(std::forward<Var>(var), grad, name);
}

}  // namespace reformer::testing
