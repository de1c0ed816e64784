#pragma once
// Comparison helpers for tests.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace reformer::test {

/// max_i |a_i - b_i| / max_i |b_i|: the largest error relative to the reference's scale
/// (elementwise relative error would be dominated by near-zero entries).
template <class A, class B>
double relative_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const double scale = std::max(static_cast<double>(b.cwiseAbs().maxCoeff()), 1e-300);
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

/// True when a and b have the same size and the same bits.
template <class S>
bool bitwise_equal(const Eigen::Matrix<S, Eigen::Dynamic, 1>& a,
                   const Eigen::Matrix<S, Eigen::Dynamic, 1>& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0);
}

}  // namespace reformer::test
