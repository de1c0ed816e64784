#pragma once
// Element-wise activations of the feed-forward and their backward passes (Hugging Face
// `hidden_act` names):
//
//   "relu"      relu(x)     = max(x, 0)                          relu'(x) = [x > 0]
//   "gelu"      gelu(x)     = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))   (exact erf form)
//                                                                gelu'(x) = Phi(x) + x phi(x)
//   "gelu_new"  gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (tanh form)
//   "silu"      silu(x)     = x sigmoid(x)                       silu'(x) = s (1 + x (1 - s))
//   "swish"     the same as "silu"
//
// Forward:  <act>_forward(x, y)         y = act(x)           x, y: any R x C (y may alias x)
// Backward: <act>_backward(x, dy, dx)   dx = act'(x) .* dy   x is the PRE-activation input
//                                                            (dx may alias dy)
// Both:     activation_forward_with_derivative(a, x, y, d)   y = act(x), d = act'(x) in one
//           evaluation, for a backward pass that recomputes the forward (layers/feed_forward.hpp)
// gelu, gelu_new and silu run vectorised kernels (ops/detail/activation_packets.hpp): max error
// against the exact functions a few ulp relative for float and double (tests/unit/ops/
// activation_accuracy_test.cpp states and checks the bounds). Every element's result is a
// function of its input alone, so results are bitwise identical for any thread count or
// column split. The scalar formulas remain as test oracles in testing/activation_oracle.hpp.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/detail/activation_packets.hpp"

#include <string>

namespace reformer {

/// Activations of the feed-forward layer (HF `hidden_act`).
enum class Activation { kRelu, kGelu, kGeluNew, kSilu };

/// The accepted hidden_act names, for error messages.
inline constexpr const char* kActivationNames =
    "\"relu\", \"gelu\", \"gelu_new\", \"silu\" or \"swish\"";

/// True for a name activation_from_string accepts.
inline bool is_activation_name(const std::string& name) {
  return name == "relu" || name == "gelu" || name == "gelu_new" || name == "silu" ||
         name == "swish";
}

/// "relu" / "gelu" / "gelu_new" / "silu" / "swish" → Activation; anything else → ConfigError
/// naming the value.
inline Activation activation_from_string(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new") return Activation::kGeluNew;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  raise<ConfigError>("activation_from_string", "unknown activation '", name, "' (expected ",
                     kActivationNames, ")");
}

/// The name accepted by activation_from_string ("silu" for kSilu).
inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kRelu:
      return "relu";
    case Activation::kGelu:
      return "gelu";
    case Activation::kGeluNew:
      return "gelu_new";
    case Activation::kSilu:
      return "silu";
  }
  return "unknown";
}

namespace detail {
inline void check_same_shape(const char* where, const char* name, Index rows, Index cols,
                             const char* ref_name, Index ref_rows, Index ref_cols) {
  if (rows != ref_rows || cols != ref_cols) {
    raise(where, name, " has shape ", rows, " x ", cols, ", expected the shape of ", ref_name,
          " = ", ref_rows, " x ", ref_cols);
  }
}

inline void check_backward_shapes(const char* where, Index xr, Index xc, Index dyr, Index dyc,
                                  Index dxr, Index dxc) {
  check_same_shape(where, "dy", dyr, dyc, "x", xr, xc);
  check_same_shape(where, "dx", dxr, dxc, "x", xr, xc);
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
  detail::check_backward_shapes("relu_backward", x.rows(), x.cols(), dy.rows(), dy.cols(),
                                dx.rows(), dx.cols());
  dx.array() = (x.array() > S(0)).select(dy.array(), S(0));
}

/// y = 0.5 x (1 + erf(x / sqrt 2)).
template <class S>
void gelu_forward(ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_same_shape("gelu_forward", "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  detail::map_elementwise<S>(x, y, [](const auto& p) { return detail::packet::gelu(p); });
}

/// dx = (Phi(x) + x phi(x)) .* dy.
template <class S>
void gelu_backward(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_backward_shapes("gelu_backward", x.rows(), x.cols(), dy.rows(), dy.cols(),
                                dx.rows(), dx.cols());
  detail::map_elementwise_grad<S>(x, dy, dx,
                                  [](const auto& p) { return detail::packet::gelu_grad(p); });
}

/// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class S>
void gelu_new_forward(ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_same_shape("gelu_new_forward", "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  detail::map_elementwise<S>(x, y, [](const auto& p) { return detail::packet::gelu_new(p); });
}

/// dx = gelu_new'(x) .* dy.
template <class S>
void gelu_new_backward(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_backward_shapes("gelu_new_backward", x.rows(), x.cols(), dy.rows(), dy.cols(),
                                dx.rows(), dx.cols());
  detail::map_elementwise_grad<S>(x, dy, dx,
                                  [](const auto& p) { return detail::packet::gelu_new_grad(p); });
}

/// y = x sigmoid(x).
template <class S>
void silu_forward(ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_same_shape("silu_forward", "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  detail::map_elementwise<S>(x, y, [](const auto& p) { return detail::packet::silu(p); });
}

/// dx = sigmoid(x) (1 + x (1 - sigmoid(x))) .* dy.
template <class S>
void silu_backward(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  detail::check_backward_shapes("silu_backward", x.rows(), x.cols(), dy.rows(), dy.cols(),
                                dx.rows(), dx.cols());
  detail::map_elementwise_grad<S>(x, dy, dx,
                                  [](const auto& p) { return detail::packet::silu_grad(p); });
}

/// y = act(x) for a runtime-chosen activation.
template <class S>
void activation_forward(Activation a, ConstMatrixRef<S> x, MatrixRef<S> y) {
  switch (a) {
    case Activation::kRelu:
      relu_forward<S>(x, y);
      return;
    case Activation::kGelu:
      gelu_forward<S>(x, y);
      return;
    case Activation::kGeluNew:
      gelu_new_forward<S>(x, y);
      return;
    case Activation::kSilu:
      silu_forward<S>(x, y);
      return;
  }
}

/// y = act(x) and d = act'(x) from one evaluation per element; either y or d (not both) may
/// alias x. d .* dy is then activation_backward's dx up to rounding (the same formulas, each
/// within its stated error), except for relu, whose d = [x > 0] times a non-finite dy gives NaN
/// where relu_backward gives 0.
template <class S>
void activation_forward_with_derivative(Activation a, ConstMatrixRef<S> x, MatrixRef<S> y,
                                        MatrixRef<S> d) {
  const char* where = "activation_forward_with_derivative";
  detail::check_same_shape(where, "y", y.rows(), y.cols(), "x", x.rows(), x.cols());
  detail::check_same_shape(where, "d", d.rows(), d.cols(), "x", x.rows(), x.cols());
  REFORMER_REQUIRE(y.data() != d.data() || y.size() == 0, InvalidArgument, where,
                   "y and d must be different matrices");
  switch (a) {
    case Activation::kRelu:
      // The output that aliases x (if any) is written last.
      if (y.data() == x.data()) {
        d.array() = (x.array() > S(0)).template cast<S>();
        y = x.cwiseMax(S(0));
      } else {
        y = x.cwiseMax(S(0));
        d.array() = (x.array() > S(0)).template cast<S>();
      }
      return;
    case Activation::kGelu:
      detail::map_elementwise_with_grad<S>(x, y, d, [](const auto& p, auto& v, auto& g) {
        detail::packet::gelu_with_grad(p, v, g);
      });
      return;
    case Activation::kGeluNew:
      detail::map_elementwise_with_grad<S>(x, y, d, [](const auto& p, auto& v, auto& g) {
        detail::packet::gelu_new_with_grad(p, v, g);
      });
      return;
    case Activation::kSilu:
      detail::map_elementwise_with_grad<S>(x, y, d, [](const auto& p, auto& v, auto& g) {
        detail::packet::silu_with_grad(p, v, g);
      });
      return;
  }
}

/// dx = act'(x) .* dy for a runtime-chosen activation (x is the pre-activation input).
template <class S>
void activation_backward(Activation a, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  switch (a) {
    case Activation::kRelu:
      relu_backward<S>(x, dy, dx);
      return;
    case Activation::kGelu:
      gelu_backward<S>(x, dy, dx);
      return;
    case Activation::kGeluNew:
      gelu_new_backward<S>(x, dy, dx);
      return;
    case Activation::kSilu:
      silu_backward<S>(x, dy, dx);
      return;
  }
}

}  // namespace reformer
