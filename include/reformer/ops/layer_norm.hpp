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
// recomputes them from x; nothing is stored between forward and backward. A caller that
// normalises the same x several times can compute them once (layer_norm_statistics: 2 x N,
// mean and rstd per column) and pass them to the _from_statistics versions, which give bitwise
// the same results in one pass over x.
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

/// The statistics of one column: sets mean, writes xhat = x - mean and returns
/// rstd = 1 / sqrt(var + eps).
template <class S, class In, class Out>
S layer_norm_centre_column(const In& x, Out& xhat, S eps, S& mean) {
  mean = x.mean();
  xhat = x.array() - mean;
  const S var = xhat.squaredNorm() / static_cast<S>(x.size());
  return S(1) / std::sqrt(var + eps);
}

/// Writes xhat = (x - mean) / sqrt(var + eps) of one column and returns rstd.
template <class S, class In, class Out>
S layer_norm_normalise_column(const In& x, Out& xhat, S eps) {
  S mean;
  const S rstd = layer_norm_centre_column<S>(x, xhat, eps, mean);
  xhat *= rstd;
  return rstd;
}

/// xhat of one column from its statistics: the same two roundings as
/// layer_norm_normalise_column (x - mean, then * rstd), so bitwise its result.
template <class S, class In, class Out>
void layer_norm_apply_statistics(const In& x, S mean, S rstd, Out& xhat) {
  xhat = (x.array() - mean) * rstd;
}

/// Throws InvalidArgument unless dy and dx have x's shape and dgamma, dbeta its D rows.
inline void check_layer_norm_backward_shapes(const char* where, Index d, Index n, Index dy_rows,
                                             Index dy_cols, Index dx_rows, Index dx_cols,
                                             Index dgamma_rows, Index dgamma_cols, Index dbeta_rows,
                                             Index dbeta_cols) {
  check_shape(where, "dy", dy_rows, dy_cols, d, n);
  check_shape(where, "dx", dx_rows, dx_cols, d, n);
  check_shape(where, "dgamma", dgamma_rows, dgamma_cols, d, 1);
  check_shape(where, "dbeta", dbeta_rows, dbeta_cols, d, 1);
}

/// Throws InvalidArgument unless stats is 2 x cols.
inline void check_layer_norm_statistics(const char* where, Index rows, Index cols, Index x_cols) {
  check_shape(where, "stats", rows, cols, 2, x_cols);
}

/// y = xhat .* gamma + beta column by column, xhat of column n from normalise(n, xhat).
template <class S, class Normalise>
void layer_norm_forward_columns(Index d, Index n_cols, ConstVectorRef<S> gamma,
                                ConstVectorRef<S> beta, MatrixRef<S> y, Normalise&& normalise) {
  struct XhatTag;
  Eigen::Map<Vector<S>, Eigen::AlignedMax> xhat(thread_buffer<S, XhatTag>(d), d);  // D
  for (Index n = 0; n < n_cols; ++n) {
    normalise(n, xhat);
    y.col(n) = xhat.cwiseProduct(gamma) + beta;
  }
}

/// The backward of layer_norm_forward_columns (see layer_norm_backward), xhat of column n and
/// its rstd from normalise(n, xhat).
template <class S, class Normalise>
void layer_norm_backward_columns(Index d, Index n_cols, ConstVectorRef<S> gamma,
                                 ConstMatrixRef<S> dy, MatrixRef<S> dx, VectorRef<S> dgamma,
                                 VectorRef<S> dbeta, Normalise&& normalise) {
  const S inv_d = S(1) / static_cast<S>(d);
  struct XhatTag;
  struct GradTag;
  Eigen::Map<Vector<S>, Eigen::AlignedMax> xhat(thread_buffer<S, XhatTag>(d), d);  // D
  Eigen::Map<Vector<S>, Eigen::AlignedMax> g(thread_buffer<S, GradTag>(d), d);     // D: dL/dxhat
  for (Index n = 0; n < n_cols; ++n) {
    const S rstd = normalise(n, xhat);
    g = dy.col(n).cwiseProduct(gamma);
    dgamma += dy.col(n).cwiseProduct(xhat);
    dbeta += dy.col(n);
    const S mean_g = g.sum() * inv_d;
    const S mean_gx = g.dot(xhat) * inv_d;
    dx.col(n) = rstd * (g.array() - mean_g - xhat.array() * mean_gx).matrix();
  }
}
}  // namespace detail

/// The statistics of every column of x (D x N) into stats (2 x N): stats(0, n) = mu_n,
/// stats(1, n) = rstd_n, exactly as layer_norm_forward computes them.
template <class S>
void layer_norm_statistics(ConstMatrixRef<S> x, double eps, MatrixRef<S> stats) {
  detail::check_layer_norm_args("layer_norm_statistics", x.rows(), x.cols(), x.rows(), 1, x.rows(),
                                1, eps);
  detail::check_layer_norm_statistics("layer_norm_statistics", stats.rows(), stats.cols(),
                                      x.cols());
  const S e = static_cast<S>(eps);
  struct CentredTag;
  Eigen::Map<Vector<S>, Eigen::AlignedMax> centred(thread_buffer<S, CentredTag>(x.rows()),
                                                   x.rows());  // D
  for (Index n = 0; n < x.cols(); ++n)
    stats(1, n) = detail::layer_norm_centre_column<S>(x.col(n), centred, e, stats(0, n));
}

/// layer_norm_statistics in parallel over column blocks (the same results).
template <class S>
void layer_norm_statistics_parallel(ConstMatrixRef<S> x, double eps, MatrixRef<S> stats) {
  detail::check_layer_norm_statistics("layer_norm_statistics_parallel", stats.rows(), stats.cols(),
                                      x.cols());
  for_column_blocks(x.cols(), 4.0 * double(x.rows()), [&](Index c0, Index nc) {
    layer_norm_statistics<S>(x.middleCols(c0, nc), eps, stats.middleCols(c0, nc));
  });
}

/// y = LayerNorm(x) * gamma + beta (see the header comment). `y` may alias `x`.
template <class S>
void layer_norm_forward(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, ConstVectorRef<S> beta,
                        double eps, MatrixRef<S> y) {
  detail::check_layer_norm_args("layer_norm_forward", x.rows(), x.cols(), gamma.rows(),
                                gamma.cols(), beta.rows(), beta.cols(), eps);
  check_shape("layer_norm_forward", "y", y.rows(), y.cols(), x.rows(), x.cols());
  const S e = static_cast<S>(eps);
  detail::layer_norm_forward_columns<S>(
      x.rows(), x.cols(), gamma, beta, y,
      [&](Index n, auto& xhat) { detail::layer_norm_normalise_column<S>(x.col(n), xhat, e); });
}

/// layer_norm_forward with the statistics of x given (stats: 2 x N, layer_norm_statistics with
/// the same eps): bitwise the same y, in one pass over each column.
template <class S>
void layer_norm_forward_from_statistics(ConstMatrixRef<S> x, ConstMatrixRef<S> stats,
                                        ConstVectorRef<S> gamma, ConstVectorRef<S> beta,
                                        MatrixRef<S> y) {
  constexpr const char* kWhere = "layer_norm_forward_from_statistics";
  detail::check_layer_norm_args(kWhere, x.rows(), x.cols(), gamma.rows(), gamma.cols(), beta.rows(),
                                beta.cols(), 0.0);
  detail::check_layer_norm_statistics(kWhere, stats.rows(), stats.cols(), x.cols());
  check_shape(kWhere, "y", y.rows(), y.cols(), x.rows(), x.cols());
  detail::layer_norm_forward_columns<S>(
      x.rows(), x.cols(), gamma, beta, y, [&](Index n, auto& xhat) {
        detail::layer_norm_apply_statistics<S>(x.col(n), stats(0, n), stats(1, n), xhat);
      });
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
  detail::check_layer_norm_backward_shapes(kWhere, x.rows(), x.cols(), dy.rows(), dy.cols(),
                                           dx.rows(), dx.cols(), dgamma.rows(), dgamma.cols(),
                                           dbeta.rows(), dbeta.cols());
  const S e = static_cast<S>(eps);
  detail::layer_norm_backward_columns<S>(
      x.rows(), x.cols(), gamma, dy, dx, dgamma, dbeta, [&](Index n, auto& xhat) {
        return detail::layer_norm_normalise_column<S>(x.col(n), xhat, e);
      });
}

/// layer_norm_backward with the statistics of x given (stats: 2 x N, layer_norm_statistics with
/// the same eps): bitwise the same results, in one pass over each column of x.
template <class S>
void layer_norm_backward_from_statistics(ConstMatrixRef<S> x, ConstMatrixRef<S> stats,
                                         ConstVectorRef<S> gamma, ConstMatrixRef<S> dy,
                                         MatrixRef<S> dx, VectorRef<S> dgamma, VectorRef<S> dbeta) {
  constexpr const char* kWhere = "layer_norm_backward_from_statistics";
  detail::check_layer_norm_args(kWhere, x.rows(), x.cols(), gamma.rows(), gamma.cols(),
                                gamma.rows(), gamma.cols(), 0.0);
  detail::check_layer_norm_statistics(kWhere, stats.rows(), stats.cols(), x.cols());
  detail::check_layer_norm_backward_shapes(kWhere, x.rows(), x.cols(), dy.rows(), dy.cols(),
                                           dx.rows(), dx.cols(), dgamma.rows(), dgamma.cols(),
                                           dbeta.rows(), dbeta.cols());
  detail::layer_norm_backward_columns<S>(
      x.rows(), x.cols(), gamma, dy, dx, dgamma, dbeta, [&](Index n, auto& xhat) {
        const S rstd = stats(1, n);
        detail::layer_norm_apply_statistics<S>(x.col(n), stats(0, n), rstd, xhat);
        return rstd;
      });
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
