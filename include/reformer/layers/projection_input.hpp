#pragma once
// The input of an attention core's head projections, and where its gradient goes.
//
// A core projects its input with per-head weights (layers/detail/head_projection.hpp). The
// input is either
//   - a plain matrix xn (D x N), projected as it is, or
//   - x with a LayerNorm: xn = LN(x) * gamma + beta (ops/layer_norm.hpp) is never formed whole;
//     the projections normalise one fixed block of columns at a time into a small buffer.
// Likewise the gradient of the input is either added to a plain matrix (dxn += J^T dq ...) or
// taken through the LayerNorm block by block (dx += LN'(x)^T dxn_block, dgamma and dbeta +=).
// LN backward is linear in dxn, so the second form is the first followed by layer_norm_backward,
// up to rounding. The attention sublayer uses the LayerNorm form, so a call holds no D x N
// normalised input or its gradient.
// A LayerNorm input normalised several times (by the projections of several head groups, and in
// the backward by the recomputed projections and their gradient) can carry the per-column
// statistics of x (use_statistics, 2 x N): every normalisation then takes one pass over a column
// instead of three, with bitwise the same results.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/layer_norm.hpp"

namespace reformer {

/// What a core projects: xn itself, or LN(x) computed block by block (see the file comment).
template <class S>
class ProjectionInput {
 public:
  /// An already normalised input xn (D x N), projected as it is.
  explicit ProjectionInput(ConstMatrixRef<S> xn) : x_(xn), gamma_(nullptr, 0), beta_(nullptr, 0) {}

  /// xn = LN(x) * gamma + beta with epsilon eps (x: D x N, gamma, beta: D). Throws
  /// InvalidArgument on mismatched shapes or a bad eps.
  ProjectionInput(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, ConstVectorRef<S> beta, double eps)
      : x_(x),
        gamma_(gamma.data(), gamma.size()),
        beta_(beta.data(), beta.size()),
        eps_(eps),
        layer_norm_(true) {
    detail::check_layer_norm_args("ProjectionInput", x.rows(), x.cols(), gamma.rows(), gamma.cols(),
                                  beta.rows(), beta.cols(), eps);
  }

  Index rows() const { return x_.rows(); }
  Index cols() const { return x_.cols(); }
  /// Whether the projections normalise the input (false: x() is xn itself).
  bool has_layer_norm() const { return layer_norm_; }
  /// The input: xn, or the x the LayerNorm normalises.
  const ConstMatrixRef<S>& x() const { return x_; }
  const ConstVectorMap<S>& gamma() const { return gamma_; }
  const ConstVectorMap<S>& beta() const { return beta_; }
  double eps() const { return eps_; }

  /// Normalises with the statistics `stats` of x (2 x N: mean and rstd per column, from
  /// layer_norm_statistics of x() with eps()). Only a view is kept: the matrix must outlive this
  /// input's use. Throws InvalidArgument without a LayerNorm or on a shape mismatch.
  void use_statistics(const ConstMatrixRef<S>& stats) {
    REFORMER_REQUIRE(layer_norm_, InvalidArgument, "ProjectionInput::use_statistics",
                     "the input has no LayerNorm to take statistics");
    detail::check_layer_norm_statistics("ProjectionInput::use_statistics", stats.rows(),
                                        stats.cols(), x_.cols());
    stats_ = stats.data();
    stats_stride_ = stats.outerStride();
  }

  /// xn of the columns [c0, c0 + nc) into out (D x nc): LN of those columns, or a copy.
  template <class Out>
  void normalised_columns(Index c0, Index nc, Out&& out) const {
    if (!layer_norm_) {
      out = x_.middleCols(c0, nc);
    } else if (stats_ != nullptr) {
      layer_norm_forward_from_statistics<S>(x_.middleCols(c0, nc), statistics(c0, nc), gamma_,
                                            beta_, out);
    } else {
      layer_norm_forward<S>(x_.middleCols(c0, nc), gamma_, beta_, eps_, out);
    }
  }

  /// The LayerNorm's backward for the columns [c0, c0 + nc): dx = LN'(x)^T dxn (dx may alias
  /// dxn), dgamma and dbeta +=. Only for an input with a LayerNorm.
  template <class Dxn, class Dx, class Dg, class Db>
  void layer_norm_backward_columns(Index c0, Index nc, const Dxn& dxn, Dx&& dx, Dg&& dgamma,
                                   Db&& dbeta) const {
    if (stats_ != nullptr) {
      layer_norm_backward_from_statistics<S>(x_.middleCols(c0, nc), statistics(c0, nc), gamma_, dxn,
                                             dx, dgamma, dbeta);
    } else {
      layer_norm_backward<S>(x_.middleCols(c0, nc), gamma_, eps_, dxn, dx, dgamma, dbeta);
    }
  }

 private:
  using StatisticsMap = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;
  StatisticsMap statistics(Index c0, Index nc) const {
    return StatisticsMap(stats_ + stats_stride_ * c0, 2, nc, Eigen::OuterStride<>(stats_stride_));
  }

  ConstMatrixRef<S> x_;
  ConstVectorMap<S> gamma_, beta_;
  double eps_ = 0.0;
  bool layer_norm_ = false;
  const S* stats_ = nullptr;  // 2 x N, column-major, columns stats_stride_ apart (use_statistics)
  Index stats_stride_ = 2;
};

/// Where the gradient of a ProjectionInput goes: dxn += (plain input), or through the LayerNorm
/// into dx +=, dgamma += and dbeta +=. A view, like an Eigen::Map: a const view still writes to
/// the matrices it refers to.
template <class S>
class ProjectionInputGrad {
 public:
  /// The gradient of a plain input: dxn (D x N) accumulates.
  explicit ProjectionInputGrad(MatrixRef<S> dxn)
      : dx_(dxn), dgamma_(nullptr, 0), dbeta_(nullptr, 0) {}

  /// The gradients of a LayerNorm input: dx (D x N), dgamma and dbeta (D) accumulate. Throws
  /// InvalidArgument unless dgamma and dbeta have dx.rows() entries.
  ProjectionInputGrad(MatrixRef<S> dx, VectorRef<S> dgamma, VectorRef<S> dbeta)
      : dx_(dx),
        dgamma_(dgamma.data(), dgamma.size()),
        dbeta_(dbeta.data(), dbeta.size()),
        layer_norm_(true) {
    check_shape("ProjectionInputGrad", "dgamma", dgamma.rows(), dgamma.cols(), dx.rows(), 1);
    check_shape("ProjectionInputGrad", "dbeta", dbeta.rows(), dbeta.cols(), dx.rows(), 1);
  }

  bool has_layer_norm() const { return layer_norm_; }
  /// dxn, or the dx of the LayerNorm's input.
  MatrixRef<S>& dx() const { return dx_; }
  VectorMap<S>& dgamma() const { return dgamma_; }
  VectorMap<S>& dbeta() const { return dbeta_; }

  /// Throws InvalidArgument unless the input and its gradient have the same form and shape.
  void check_matches(const char* where, const ProjectionInput<S>& input) const {
    REFORMER_REQUIRE(layer_norm_ == input.has_layer_norm(), InvalidArgument, where, "the input ",
                     input.has_layer_norm() ? "has" : "has no", " LayerNorm but its gradient ",
                     layer_norm_ ? "has" : "has no", " LayerNorm");
    check_shape(where, layer_norm_ ? "dx" : "dxn", dx_.rows(), dx_.cols(), input.rows(),
                input.cols());
  }

 private:
  mutable MatrixRef<S> dx_;
  mutable VectorMap<S> dgamma_, dbeta_;
  bool layer_norm_ = false;
};

}  // namespace reformer
