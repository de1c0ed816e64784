#pragma once
// Layer normalisation over the D features of every column (token), as torch.nn.LayerNorm:
//
//   mu_n   = mean_d x(d, n)
//   var_n  = mean_d (x(d, n) - mu_n)^2                      (biased variance)
//   rstd_n = 1 / sqrt(var_n + eps)
//   xhat   = (x - mu_n) * rstd_n
//   y      = xhat .* gamma + beta
//
// Shapes: x, y, dy, dx: D x N;  gamma, beta, dgamma, dbeta: D.
// The statistics are computed in two passes (mean, then centred variance). The backward pass
// recomputes them from x; nothing is stored between forward and backward.
//
// layer_norm_forward / layer_norm_backward check their arguments and run serially; the
// _parallel versions run them over fixed blocks of tuning::kColumnBlock columns (ops/parallel.hpp)
// with the same results bitwise for any thread count (dgamma / dbeta from per-block partial
// sums added in block order).
#include "reformer/core/error.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/parallel.hpp"

#include <cmath>

namespace reformer {

/// The Hugging Face default epsilon (ReformerConfig.layer_norm_eps).
inline constexpr double kLayerNormDefaultEps = 1e-12;

namespace detail {
inline void check_layer_norm_args(const char* where, Index x_rows, Index x_cols, Index gamma_rows,
                                  Index gamma_cols, Index beta_rows, Index beta_cols, double eps) {
  REFORMER_REQUIRE(x_rows > 0, InvalidArgument, where, "x.rows() = ", x_rows,
                   " must be positive (the number of features)");
  check_shape(where, "gamma", gamma_rows, gamma_cols, x_rows, 1);
  check_shape(where, "beta", beta_rows, beta_cols, x_rows, 1);
  REFORMER_REQUIRE(eps >= 0.0 && std::isfinite(eps), InvalidArgument, where, "eps = ", eps,
                   " must be finite and >= 0");
  (void)x_cols;
}

/// Writes xhat = (x - mean) / sqrt(var + eps) of one column and returns rstd.
template <class S, class In, class Out>
S layer_norm_normalise_column(const In& x, Out& xhat, S eps) {
  const S mean = x.mean();
  xhat = x.array() - mean;
  const S var = xhat.squaredNorm() / static_cast<S>(x.size());
  const S rstd = S(1) / std::sqrt(var + eps);
  xhat *= rstd;
  return rstd;
}
}  // namespace detail

/// y = LayerNorm(x) * gamma + beta (see the header comment). `y` may alias `x`.
template <class S>
void layer_norm_forward(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, ConstVectorRef<S> beta,
                        double eps, MatrixRef<S> y) {
  detail::check_layer_norm_args("layer_norm_forward", x.rows(), x.cols(), gamma.rows(),
                                gamma.cols(), beta.rows(), beta.cols(), eps);
  check_shape("layer_norm_forward", "y", y.rows(), y.cols(), x.rows(), x.cols());
  const S e = static_cast<S>(eps);
  struct XhatTag;
  Eigen::Map<Vector<S>, Eigen::AlignedMax> xhat(thread_buffer<S, XhatTag>(x.rows()),
                                                x.rows());  // D
  for (Index n = 0; n < x.cols(); ++n) {
    detail::layer_norm_normalise_column<S>(x.col(n), xhat, e);
    y.col(n) = xhat.cwiseProduct(gamma) + beta;
  }
}

/// Backward of layer_norm_forward, recomputing the statistics from x:
///
///   g   = dy .* gamma                                   (gradient w.r.t. xhat)
///   dx  = rstd * (g - mean_d(g) - xhat * mean_d(g .* xhat))    overwritten
///   dgamma += sum_n dy .* xhat,   dbeta += sum_n dy             accumulated
///
/// `dx` may alias `dy`.
template <class S>
void layer_norm_backward(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, double eps,
                         ConstMatrixRef<S> dy, MatrixRef<S> dx, VectorRef<S> dgamma,
                         VectorRef<S> dbeta) {
  constexpr const char* kWhere = "layer_norm_backward";
  detail::check_layer_norm_args(kWhere, x.rows(), x.cols(), gamma.rows(), gamma.cols(),
                                gamma.rows(), gamma.cols(), eps);
  check_shape(kWhere, "dy", dy.rows(), dy.cols(), x.rows(), x.cols());
  check_shape(kWhere, "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  check_shape(kWhere, "dgamma", dgamma.rows(), dgamma.cols(), x.rows(), 1);
  check_shape(kWhere, "dbeta", dbeta.rows(), dbeta.cols(), x.rows(), 1);
  const S e = static_cast<S>(eps);
  const S inv_d = S(1) / static_cast<S>(x.rows());
  struct XhatTag;
  struct GradTag;
  Eigen::Map<Vector<S>, Eigen::AlignedMax> xhat(thread_buffer<S, XhatTag>(x.rows()),
                                                x.rows());  // D
  Eigen::Map<Vector<S>, Eigen::AlignedMax> g(thread_buffer<S, GradTag>(x.rows()),
                                             x.rows());  // D: dL/dxhat
  for (Index n = 0; n < x.cols(); ++n) {
    const S rstd = detail::layer_norm_normalise_column<S>(x.col(n), xhat, e);
    g = dy.col(n).cwiseProduct(gamma);
    dgamma += dy.col(n).cwiseProduct(xhat);
    dbeta += dy.col(n);
    const S mean_g = g.sum() * inv_d;
    const S mean_gx = g.dot(xhat) * inv_d;
    dx.col(n) = rstd * (g.array() - mean_g - xhat.array() * mean_gx).matrix();
  }
}

/// y = LayerNorm(x) * gamma + beta as layer_norm_forward, in parallel over column blocks.
/// `y` may alias `x`.
template <class S>
void layer_norm_forward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma,
                                 ConstVectorRef<S> beta, double eps, MatrixRef<S> y) {
  for_column_blocks(x.cols(), 8.0 * double(x.rows()), [&](Index c0, Index nc) {
    layer_norm_forward<S>(x.middleCols(c0, nc), gamma, beta, eps, y.middleCols(c0, nc));
  });
}

/// layer_norm_backward in parallel over column blocks: dx overwritten (or dx += with
/// accumulate_dx), dgamma / dbeta accumulated from per-block partial sums added in block order.
/// With accumulate_dx each block's dx goes through a D x block buffer drawn from `ws` (the heap
/// when null).
template <class S>
void layer_norm_backward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, double eps,
                                  ConstMatrixRef<S> dy, MatrixRef<S> dx, VectorRef<S> dgamma,
                                  VectorRef<S> dbeta, bool accumulate_dx = false,
                                  Workspace* ws = nullptr) {
  const Index d = x.rows();
  const Index blocks = num_blocks(x.cols(), tuning::kColumnBlock);
  // One block's dx: written in place, or into a block-sized buffer added to dx.
  const auto block_backward = [&](Index c0, Index nc, VectorRef<S> dgamma_b, VectorRef<S> dbeta_b) {
    if (!accumulate_dx) {
      layer_norm_backward<S>(x.middleCols(c0, nc), gamma, eps, dy.middleCols(c0, nc),
                             dx.middleCols(c0, nc), dgamma_b, dbeta_b);
      return;
    }
    Scratch<S> dx_b(ws, d, nc);  // D x nc
    layer_norm_backward<S>(x.middleCols(c0, nc), gamma, eps, dy.middleCols(c0, nc), dx_b.map(),
                           dgamma_b, dbeta_b);
    dx.middleCols(c0, nc) += dx_b.map();
  };
  if (blocks <= 1) {
    block_backward(0, x.cols(), dgamma, dbeta);
    return;
  }
  Scratch<S> partial_memory(ws, d, 2 * blocks);  // [dgamma_0, dbeta_0, dgamma_1, ...]
  auto& partial = partial_memory.map();
  partial.setZero();
  for_column_blocks(x.cols(), 16.0 * double(d), [&](Index c0, Index nc) {
    const Index blk = c0 / tuning::kColumnBlock;
    block_backward(c0, nc, partial.col(2 * blk), partial.col(2 * blk + 1));
  });
  for (Index blk = 0; blk < blocks; ++blk) {
    dgamma += partial.col(2 * blk);
    dbeta += partial.col(2 * blk + 1);
  }
}

}  // namespace reformer
