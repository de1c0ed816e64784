#pragma once
// Element-wise activations and their backward passes:
//
//   relu(x) = max(x, 0)                       relu'(x) = [x > 0]
//   gelu(x) = x * Phi(x)                      gelu'(x) = Phi(x) + x * phi(x)
//           = 0.5 x (1 + erf(x / sqrt 2))     (the exact erf form, torch's default "gelu")
//
// Forward:  act_forward(x, y)         y = act(x)           x, y: any R x C (y may alias x)
// Backward: act_backward(x, dy, dx)   dx = act'(x) .* dy   x is the PRE-activation input
//                                                          (dx may alias dy)
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <cmath>
#include <string>

namespace reformer {

/// Activations of the feed-forward layer (HF `hidden_act`).
enum class Activation { kRelu, kGelu };

/// "relu" / "gelu" → Activation; anything else → ConfigError naming the value.
inline Activation activation_from_string(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  raise<ConfigError>("activation_from_string", "unknown activation '", name,
                     "' (expected \"relu\" or \"gelu\")");
}

/// The name accepted by activation_from_string.
inline const char* activation_name(Activation a) {
  return a == Activation::kRelu ? "relu" : "gelu";
}

namespace detail {
inline void check_same_shape(const char* where, const char* name, Index rows, Index cols,
                             const char* ref_name, Index ref_rows, Index ref_cols) {
  if (rows != ref_rows || cols != ref_cols) {
    raise(where, name, " has shape ", rows, " x ", cols, ", expected the shape of ", ref_name,
          " = ", ref_rows, " x ", ref_cols);
  }
}

template <class S>
S gelu_scalar(S x) {
  constexpr S kInvSqrt2 = static_cast<S>(0.70710678118654752440084436210485);
  return S(0.5) * x * (S(1) + std::erf(x * kInvSqrt2));
}

template <class S>
S gelu_grad_scalar(S x) {
  constexpr S kInvSqrt2 = static_cast<S>(0.70710678118654752440084436210485);
  constexpr S kInvSqrt2Pi = static_cast<S>(0.39894228040143267793994605993438);
  const S cdf = S(0.5) * (S(1) + std::erf(x * kInvSqrt2));
  const S pdf = kInvSqrt2Pi * std::exp(S(-0.5) * x * x);
  return cdf + x * pdf;
}
}  // namespace detail

/// y = max(x, 0).
template <class S>
void relu_forward(ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_same_shape("relu_forward", "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  y = x.cwiseMax(S(0));
}

/// dx = [x > 0] .* dy.
template <class S>
void relu_backward(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_same_shape("relu_backward", "dy", dy.rows(), dy.cols(), "x", x.rows(), x.cols());
  detail::check_same_shape("relu_backward", "dx", dx.rows(), dx.cols(), "x", x.rows(), x.cols());
  dx.array() = (x.array() > S(0)).select(dy.array(), S(0));
}

/// y = 0.5 x (1 + erf(x / sqrt 2)).
template <class S>
void gelu_forward(ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_same_shape("gelu_forward", "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  for (Index c = 0; c < x.cols(); ++c) {
    for (Index r = 0; r < x.rows(); ++r) y(r, c) = detail::gelu_scalar<S>(x(r, c));
  }
}

/// dx = (Phi(x) + x phi(x)) .* dy.
template <class S>
void gelu_backward(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_same_shape("gelu_backward", "dy", dy.rows(), dy.cols(), "x", x.rows(), x.cols());
  detail::check_same_shape("gelu_backward", "dx", dx.rows(), dx.cols(), "x", x.rows(), x.cols());
  for (Index c = 0; c < x.cols(); ++c) {
    for (Index r = 0; r < x.rows(); ++r) dx(r, c) = detail::gelu_grad_scalar<S>(x(r, c)) * dy(r, c);
  }
}

/// y = act(x) for a runtime-chosen activation.
template <class S>
void activation_forward(Activation a, ConstMatrixRef<S> x, MatrixRef<S> y) {
  if (a == Activation::kRelu) {
    relu_forward<S>(x, y);
  } else {
    gelu_forward<S>(x, y);
  }
}

/// dx = act'(x) .* dy for a runtime-chosen activation (x is the pre-activation input).
template <class S>
void activation_backward(Activation a, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  if (a == Activation::kRelu) {
    relu_backward<S>(x, dy, dx);
  } else {
    gelu_backward<S>(x, dy, dx);
  }
}

}  // namespace reformer
