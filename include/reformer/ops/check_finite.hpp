#pragma once
// check_finite: reject NaN / Inf inputs at public entry points with a message naming the
// function, the argument and the first offending element.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <cmath>

namespace reformer {

/// Throws InvalidArgument "<where>: <name>(r, c) = nan is not finite" for the first non-finite
/// element in column-major order; does nothing for a finite matrix.
template <class Derived>
void check_finite(const char* where, const char* name, const Eigen::DenseBase<Derived>& m) {
  if (m.derived().allFinite()) return;
  for (Index c = 0; c < m.cols(); ++c) {
    for (Index r = 0; r < m.rows(); ++r) {
      if (!std::isfinite(m(r, c))) {
        raise(where, name, "(", r, ", ", c, ") = ", m(r, c), " is not finite");
      }
    }
  }
}

}  // namespace reformer
