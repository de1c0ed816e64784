#pragma once
// Random test data shared by the attention test suites.
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <cstdint>

namespace reformer::test {

/// rows x cols matrix of N(0, scale^2) draws from `rng`.
inline Matrix<double> random_matrix(Index rows, Index cols, const Rng& rng, double scale = 1.0) {
  Matrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) {
    m.data()[i] = scale * rng.normal(static_cast<std::uint64_t>(i));
  }
  return m;
}

}  // namespace reformer::test
