#pragma once
// Numerical gradients for the gradient checks of the test suites.
#include "reformer/core/types.hpp"

#include <Eigen/Core>

namespace reformer::test {

/// Central finite differences of loss() with respect to every entry of x, a dense Eigen object
/// (matrix, vector or map) that loss() reads: g_i = (loss(x + h e_i) - loss(x - h e_i)) / 2h.
/// Each entry is changed in place and restored. The result has x's shape.
template <class Dense, class Loss>
Matrix<double> finite_differences(Dense& x, Loss&& loss, double h = 1e-6) {
  Matrix<double> g(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) {
    const auto saved = x.data()[i];
    x.data()[i] = saved + h;
    const double up = loss();
    x.data()[i] = saved - h;
    const double down = loss();
    x.data()[i] = saved;
    g.data()[i] = (up - down) / (2 * h);
  }
  return g;
}

/// Symmetric relative error of an analytic gradient against a numerical one: the largest
/// |a - n| divided by the largest |a + n| (robust to near-zero entries).
inline double gradcheck_error(const Matrix<double>& analytic, const Matrix<double>& numeric) {
  const double den = (analytic + numeric).cwiseAbs().maxCoeff();
  const double num = (analytic - numeric).cwiseAbs().maxCoeff();
  return den > 0 ? num / den : num;
}

}  // namespace reformer::test
