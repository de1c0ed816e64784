#pragma once
// Helpers of the ops test suite.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/testing/gradcheck.hpp"

#include "support/errors.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace reformer::ops_test {

using test::expect_throw_with;
using testing::GradientChecker;

/// A deterministic R x C matrix with entries uniform in [lo, hi), drawn from Rng(seed).
template <class S = double>
Matrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double lo = -1.0,
                        double hi = 1.0) {
  const Rng rng = Rng(seed).derive(77);
  Matrix<S> m(rows, cols);
  for (Index k = 0; k < m.size(); ++k) {
    m(k) = static_cast<S>(lo + (hi - lo) * rng.uniform(static_cast<std::uint64_t>(k)));
  }
  return m;
}

template <class S = double>
RowMajorMatrix<S> random_weight(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  return RowMajorMatrix<S>(random_matrix<S>(rows, cols, seed, -scale, scale));
}

template <class S = double>
Vector<S> random_vector(Index n, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return Vector<S>(random_matrix<S>(n, 1, seed, lo, hi));
}

}  // namespace reformer::ops_test
