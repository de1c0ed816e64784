#pragma once
// The finiteness checks of the library: reject NaN / Inf at public entry points with a message
// naming the function, the argument and the first offending element.
//
//   check_finite(where, name, m)                 "<where>: <name>(r, c) = nan is not finite"
//   check_finite_elements<E>(where, what, v, s)  "<where>: <what> element i = inf is not finite<s>"
//
// Both report the first non-finite element in column-major order (first_non_finite) and cost
// one allFinite() pass when everything is finite.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <cmath>
#include <string>

namespace reformer {

/// Column-major linear index of the first non-finite element of m, or -1 when all are finite.
template <class Derived>
Index first_non_finite(const Eigen::DenseBase<Derived>& m) {
  if (m.derived().allFinite()) return -1;
  for (Index c = 0; c < m.cols(); ++c) {
    for (Index r = 0; r < m.rows(); ++r) {
      if (!std::isfinite(m(r, c))) return c * m.rows() + r;
    }
  }
  return -1;
}

/// Throws InvalidArgument "<where>: <name>(r, c) = nan is not finite" for the first non-finite
/// element in column-major order; does nothing for a finite matrix.
template <class Derived>
void check_finite(const char* where, const char* name, const Eigen::DenseBase<Derived>& m) {
  const Index k = first_non_finite(m);
  if (k < 0) return;
  const Index r = k % m.rows(), c = k / m.rows();
  raise(where, name, "(", r, ", ", c, ") = ", m(r, c), " is not finite");
}

/// Throws E "<where>: <what> element i = nan is not finite<suffix>" for the first non-finite
/// element of m, i its column-major linear index (the flat index of a vector); does nothing when
/// all are finite. For flat stores, e.g. what = "gradient of 'encoder.layer_norm.weight'".
template <class E = InvalidArgument, class Derived>
void check_finite_elements(const char* where, const std::string& what,
                           const Eigen::DenseBase<Derived>& m, const char* suffix = "") {
  const Index k = first_non_finite(m);
  if (k < 0) return;
  const Index r = k % m.rows(), c = k / m.rows();
  raise<E>(where, what, " element ", k, " = ", m(r, c), " is not finite", suffix);
}

}  // namespace reformer
