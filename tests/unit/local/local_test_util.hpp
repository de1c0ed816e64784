#pragma once
// Helpers private to the local-attention test suite: random matrices and a central-difference
// gradient of a scalar function of one matrix.
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <cstdint>
#include <functional>

namespace reformer::test {

/// rows x cols matrix of N(0, scale^2) draws from `rng`.
inline Matrix<double> random_matrix(Index rows, Index cols, const Rng& rng, double scale = 1.0) {
  Matrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = scale * rng.normal(static_cast<std::uint64_t>(i));
  return m;
}

/// Central finite differences of f with respect to every entry of x (restored afterwards).
inline Matrix<double> numeric_gradient(Matrix<double>& x, const std::function<double()>& f,
                                       double h = 1e-6) {
  Matrix<double> g(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) {
    const double saved = x.data()[i];
    x.data()[i] = saved + h;
    const double fp = f();
    x.data()[i] = saved - h;
    const double fm = f();
    x.data()[i] = saved;
    g.data()[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/// max_i |a_i - b_i| / max(|a_i + b_i|) style symmetric relative error used by the gradchecks:
/// the largest |a - b| divided by the largest |a + b| (robust to near-zero entries).
inline double gradcheck_error(const Matrix<double>& analytic, const Matrix<double>& numeric) {
  const double den = (analytic + numeric).cwiseAbs().maxCoeff();
  const double num = (analytic - numeric).cwiseAbs().maxCoeff();
  return den > 0 ? num / den : num;
}

}  // namespace reformer::test
