#pragma once
// Linear map y = W x (+ b) on column-major activations, and its backward pass.
//
//   W: out x in, [out, in] row-major (the PyTorch / Hugging Face layout)
//   x: in x N        y: out x N        b: out
//
// Callers pass the scalar explicitly (the Eigen::Ref parameters do not deduce it):
//   linear_forward<S>(W, b, x, y);
//   linear_backward<S>(W, x, dy, dx, dW, db);
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

namespace reformer {

namespace detail {
inline void check_linear_io(const char* where, Index out, Index in, Index x_rows, Index x_cols,
                            Index y_rows, Index y_cols, const char* y_name) {
  REFORMER_REQUIRE(x_rows == in, InvalidArgument, where, "x.rows() = ", x_rows,
                   " must equal the weight's in_features = ", in);
  check_shape(where, y_name, y_rows, y_cols, out, x_cols);
}
}  // namespace detail

/// y = W x. `y` (out x N) is overwritten and must not alias `x`.
template <class S>
void linear_forward(ConstWeightRef<S> W, ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_linear_io("linear_forward", W.rows(), W.cols(), x.rows(), x.cols(), y.rows(),
                          y.cols(), "y");
  y.noalias() = W * x;
}

/// y = W x + b (b broadcast over the N columns). `y` must not alias `x`.
template <class S>
void linear_forward(ConstWeightRef<S> W, ConstVectorRef<S> b, ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_linear_io("linear_forward", W.rows(), W.cols(), x.rows(), x.cols(), y.rows(),
                          y.cols(), "y");
  check_shape("linear_forward", "b", b.rows(), b.cols(), W.rows(), 1);
  y.noalias() = W * x;
  y.colwise() += b;
}

/// Input gradient of y = W x (+ b): dx = W^T dy (overwritten; in x N). `dx` must not alias `dy`.
template <class S>
void linear_backward_input(ConstWeightRef<S> W, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  REFORMER_REQUIRE(dy.rows() == W.rows(), InvalidArgument, "linear_backward_input",
                   "dy.rows() = ", dy.rows(), " must equal the weight's out_features = ", W.rows());
  check_shape("linear_backward_input", "dx", dx.rows(), dx.cols(), W.cols(), dy.cols());
  dx.noalias() = W.transpose() * dy;
}

/// Weight gradient of y = W x: dW += dy x^T (out x in, accumulated).
template <class S>
void linear_backward_weight(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, WeightRef<S> dW) {
  check_shape("linear_backward_weight", "dy", dy.rows(), dy.cols(), dW.rows(), x.cols());
  check_shape("linear_backward_weight", "x", x.rows(), x.cols(), dW.cols(), dy.cols());
  dW.noalias() += dy * x.transpose();
}

/// Weight and bias gradients of y = W x + b: dW += dy x^T, db += sum over columns of dy.
template <class S>
void linear_backward_weight(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, WeightRef<S> dW,
                            VectorRef<S> db) {
  check_shape("linear_backward_weight", "db", db.rows(), db.cols(), dW.rows(), 1);
  linear_backward_weight<S>(x, dy, dW);
  db.noalias() += dy.rowwise().sum();
}

/// Full backward of y = W x: dx = W^T dy (overwritten), dW += dy x^T.
template <class S>
void linear_backward(ConstWeightRef<S> W, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                     MatrixRef<S> dx, WeightRef<S> dW) {
  detail::check_linear_io("linear_backward", W.rows(), W.cols(), x.rows(), x.cols(), dy.rows(),
                          dy.cols(), "dy");
  check_shape("linear_backward", "dW", dW.rows(), dW.cols(), W.rows(), W.cols());
  check_shape("linear_backward", "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  dW.noalias() += dy * x.transpose();
  dx.noalias() = W.transpose() * dy;
}

/// Full backward of y = W x + b: dx = W^T dy (overwritten), dW += dy x^T, db += row sums of dy.
template <class S>
void linear_backward(ConstWeightRef<S> W, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                     MatrixRef<S> dx, WeightRef<S> dW, VectorRef<S> db) {
  check_shape("linear_backward", "db", db.rows(), db.cols(), W.rows(), 1);
  linear_backward<S>(W, x, dy, dx, dW);
  db.noalias() += dy.rowwise().sum();
}

}  // namespace reformer
