#pragma once
// Internal helpers shared by the dense sublayers (attention wrapper, full attention,
// feed-forward): deterministic multi-threaded products and HF-style initialisation.
//
// Determinism (DESIGN 3.6): every helper splits its work into fixed-size blocks whose boundaries
// depend only on the shapes, never on the thread count, and each block is one Eigen product
// writing its own slice. Reductions over tokens (weight gradients) are split over the OUTPUT rows
// of the gradient, so every element is still reduced by one product in one fixed order.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace reformer {
namespace detail {

/// Column block of the token-parallel products (a multiple of the GEMM micro-kernel widths).
inline constexpr Index kProductColumnBlock = 128;
/// Row block of the weight-gradient products.
inline constexpr Index kGradientRowBlock = 32;

inline Index num_blocks(Index n, Index block) { return (n + block - 1) / block; }

/// out = w * in, computed over fixed blocks of columns in parallel. `w` is any Eigen matrix
/// expression (e.g. a row-major weight map or its transpose); `out` must not alias `in`.
template <class S, class W>
void product_by_columns(const W& w, ConstMatrixRef<S> in, MatrixRef<S> out) {
  REFORMER_ASSERT(w.cols() == in.rows() && out.rows() == w.rows() && out.cols() == in.cols());
  const Index n = in.cols();
  parallel_for(num_blocks(n, kProductColumnBlock), [&](Index blk) {
    const Index c0 = blk * kProductColumnBlock;
    const Index nc = std::min(kProductColumnBlock, n - c0);
    out.middleCols(c0, nc).noalias() = w * in.middleCols(c0, nc);
  });
}

/// grad += lhs * rhs^T (lhs: R x N, rhs: K x N, grad: R x K), computed over fixed blocks of
/// grad's rows in parallel; each element's reduction over N is one product, in a fixed order.
template <class S, class G>
void accumulate_outer_by_rows(ConstMatrixRef<S> lhs, ConstMatrixRef<S> rhs, G&& grad) {
  REFORMER_ASSERT(lhs.cols() == rhs.cols() && grad.rows() == lhs.rows() &&
                  grad.cols() == rhs.rows());
  const Index r = lhs.rows();
  parallel_for(num_blocks(r, kGradientRowBlock), [&](Index blk) {
    const Index r0 = blk * kGradientRowBlock;
    const Index nr = std::min(kGradientRowBlock, r - r0);
    grad.middleRows(r0, nr).noalias() += lhs.middleRows(r0, nr) * rhs.transpose();
  });
}

/// values of `slot` = std * normal draws of `rng` (draw i = flat element i of the slot).
template <class S>
void init_normal(Parameters<S>& params, SlotId slot, const Rng& rng, double std) {
  REFORMER_REQUIRE(std >= 0, InvalidArgument, "init", "std = ", std, " must be non-negative");
  auto v = params.value_vector(slot);
  for (Index i = 0; i < v.size(); ++i) {
    v[i] = static_cast<S>(std * rng.normal(static_cast<std::uint64_t>(i)));
  }
}

// ---- Temporary stand-ins until reformer/ops/ lands (then these forward to the ops). ----

/// y = (x - mean) / sqrt(var + eps) * gamma + beta per column over the D rows.
template <class S>
void layer_norm_fwd(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, ConstVectorRef<S> beta,
                    double eps, MatrixRef<S> y) {
  const Index d = x.rows();
  parallel_for(num_blocks(x.cols(), kProductColumnBlock), [&](Index blk) {
    const Index c0 = blk * kProductColumnBlock;
    const Index c1 = std::min(x.cols(), c0 + kProductColumnBlock);
    for (Index c = c0; c < c1; ++c) {
      const S mean = x.col(c).sum() / S(d);
      const S var = (x.col(c).array() - mean).square().sum() / S(d);
      const S rstd = S(1) / std::sqrt(var + S(eps));
      y.col(c) = ((x.col(c).array() - mean) * rstd) * gamma.array() + beta.array();
    }
  });
}

/// LayerNorm backward: dx (overwrite), dgamma +=, dbeta +=.
template <class S, class GG, class GB>
void layer_norm_bwd(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, double eps, ConstMatrixRef<S> dy,
                    MatrixRef<S> dx, GG&& dgamma, GB&& dbeta) {
  const Index d = x.rows();
  Matrix<S> xhat(d, x.cols());
  for (Index c = 0; c < x.cols(); ++c) {
    const S mean = x.col(c).sum() / S(d);
    const S var = (x.col(c).array() - mean).square().sum() / S(d);
    const S rstd = S(1) / std::sqrt(var + S(eps));
    xhat.col(c) = (x.col(c).array() - mean) * rstd;
    const Vector<S> g = dy.col(c).cwiseProduct(gamma);
    const S mg = g.mean();
    const S mgx = g.cwiseProduct(xhat.col(c)).mean();
    dx.col(c) = rstd * (g.array() - mg - xhat.col(c).array() * mgx);
  }
  dgamma += dy.cwiseProduct(xhat).rowwise().sum();
  dbeta += dy.rowwise().sum();
}

/// out = inverted dropout of in (may alias): element i (linear index + offset) kept iff
/// rng.uniform(offset + i) >= p, kept values scaled by 1 / (1 - p).
template <class S>
void dropout_apply(ConstMatrixRef<S> in, const Rng& rng, double p, std::uint64_t offset,
                   MatrixRef<S> out) {
  const S scale = S(1) / S(1 - p);
  const Index rows = in.rows();
  for (Index c = 0; c < in.cols(); ++c) {
    for (Index r = 0; r < rows; ++r) {
      const auto idx = offset + static_cast<std::uint64_t>(c * rows + r);
      out(r, c) = rng.uniform(idx) >= p ? in(r, c) * scale : S(0);
    }
  }
}

}  // namespace detail
}  // namespace reformer
