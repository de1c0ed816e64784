#pragma once
// The sublayer contract: what a block of a ReversibleStack (reversible_stack.hpp) is made of.
//
// A sublayer is a map y = f(x) from D x N activations to D x N activations (N = ctx.batch * T,
// tokens in columns) with parameters in a Parameters<S> store. It provides exactly:
//
//   void init(Parameters<S>& params, const Rng& rng, double std) const;
//       initialise its parameters (weights drawn from rng);
//   void forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
//                const Context& ctx) const;
//       y = f(x)  (y overwritten; y does not alias x);
//   void backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
//                 MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx) const;
//       recompute f from x, then, in place:
//         dx += (df/dx)^T dy        the input gradient, accumulated
//         params.grads() += ...     the parameter gradients, accumulated
//         y  -= f(x)                the reversible inverse (x1 = y1 - F(x2))
//       dx and y alias neither x, dy nor each other.
//
// The backward form is the one a reversible block needs: it reconstructs its inputs and
// accumulates the gradients of the residual stream without any D x N scratch buffer. Code that
// wants the ordinary form (tests, finite-difference checks) uses backward_out_of_place().
//
// Optionally, a sublayer may keep what its backward would recompute (kept_activations.hpp),
// for stacks given a memory budget for it (ReversibleStack). It then also provides all of:
//
//   std::size_t kept_bytes(Index n, const Context& ctx) const;
//       the bytes its forward keeps for n columns under ctx (batch, mask); 0 when this
//       configuration keeps nothing;
//   void forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
//                        const Context& ctx, KeptActivations<S>& kept) const;
//       forward(), and fills `kept`;
//   void backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
//                           MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
//                           KeptActivations<S>& kept) const;
//       backward() with the same context, taking f and its intermediates from `kept` instead
//       of recomputing them (it may overwrite them: `kept` is consumed). x is the input as the
//       caller has it (a reversible stack's reconstruction); the result may differ from
//       backward() at x only by rounding.
//
// `is_keeping_sublayer_v<L, S>` tells whether L provides them.
//
// `static_assert(is_sublayer_v<L, S>)` (or require_sublayer<L, S>()) checks a type against
// the contract when compiling: a wrong signature is a compile error naming the contract.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/kept_activations.hpp"

#include <cstddef>
#include <type_traits>
#include <utility>

namespace reformer {

namespace detail {
template <class T>
struct NonDeducedImpl {
  using type = T;
};
/// T in a position that does not take part in template argument deduction.
template <class T>
using NonDeduced = typename NonDeducedImpl<T>::type;

template <class L, class S, class = void>
struct has_sublayer_init : std::false_type {};
template <class L, class S>
struct has_sublayer_init<L, S,
                         std::void_t<decltype(std::declval<const L&>().init(
                             std::declval<Parameters<S>&>(), std::declval<const Rng&>(), 0.0))>>
    : std::true_type {};

template <class L, class S, class = void>
struct has_sublayer_forward : std::false_type {};
template <class L, class S>
struct has_sublayer_forward<
    L, S,
    std::void_t<decltype(std::declval<const L&>().forward(
        std::declval<const Parameters<S>&>(), std::declval<ConstMatrixRef<S>>(),
        std::declval<MatrixRef<S>>(), std::declval<const Context&>()))>> : std::true_type {};

template <class L, class S, class = void>
struct has_sublayer_backward : std::false_type {};
template <class L, class S>
struct has_sublayer_backward<L, S,
                             std::void_t<decltype(std::declval<const L&>().backward(
                                 std::declval<Parameters<S>&>(), std::declval<ConstMatrixRef<S>>(),
                                 std::declval<ConstMatrixRef<S>>(), std::declval<MatrixRef<S>>(),
                                 std::declval<MatrixRef<S>>(), std::declval<const Context&>()))>>
    : std::true_type {};

template <class L, class S, class = void>
struct has_sublayer_keeping : std::false_type {};
template <class L, class S>
struct has_sublayer_keeping<
    L, S,
    std::void_t<decltype(std::declval<const L&>().kept_bytes(Index{0},
                                                             std::declval<const Context&>())),
                decltype(std::declval<const L&>().forward_keeping(
                    std::declval<const Parameters<S>&>(), std::declval<ConstMatrixRef<S>>(),
                    std::declval<MatrixRef<S>>(), std::declval<const Context&>(),
                    std::declval<KeptActivations<S>&>())),
                decltype(std::declval<const L&>().backward_from_kept(
                    std::declval<Parameters<S>&>(), std::declval<ConstMatrixRef<S>>(),
                    std::declval<ConstMatrixRef<S>>(), std::declval<MatrixRef<S>>(),
                    std::declval<MatrixRef<S>>(), std::declval<const Context&>(),
                    std::declval<KeptActivations<S>&>()))>>
    : std::is_convertible<decltype(std::declval<const L&>().kept_bytes(
                              Index{0}, std::declval<const Context&>())),
                          std::size_t> {};
}  // namespace detail

/// True when L meets the sublayer contract for scalar S (see the top of this file).
template <class L, class S>
inline constexpr bool is_sublayer_v = detail::has_sublayer_init<L, S>::value&&
    detail::has_sublayer_forward<L, S>::value&& detail::has_sublayer_backward<L, S>::value;

/// True when L also provides the optional members that keep activations (top of this file).
template <class L, class S>
inline constexpr bool is_keeping_sublayer_v = detail::has_sublayer_keeping<L, S>::value;

/// Compile-time check with one message per missing member.
template <class L, class S>
constexpr void require_sublayer() {
  static_assert(detail::has_sublayer_init<L, S>::value,
                "reformer sublayer contract: missing `void init(Parameters<S>&, const Rng&, "
                "double std) const`");
  static_assert(detail::has_sublayer_forward<L, S>::value,
                "reformer sublayer contract: missing `void forward(const Parameters<S>&, "
                "ConstMatrixRef<S> x, MatrixRef<S> y, const Context&) const`");
  static_assert(detail::has_sublayer_backward<L, S>::value,
                "reformer sublayer contract: missing `void backward(Parameters<S>&, "
                "ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx /* += */, "
                "MatrixRef<S> y /* -= f(x) */, const Context&) const`");
}

namespace detail {
/// Configuration checks of the library's sublayers: "<name> = <value> must be positive" and
/// "<name> = <value> must be in [0, 1)" (InvalidArgument naming `where`).
template <class T>
void require_positive(const char* where, const char* name, T value) {
  REFORMER_REQUIRE(value > 0, InvalidArgument, where, name, " = ", value, " must be positive");
}
inline void require_dropout(const char* where, const char* name, double p) {
  REFORMER_REQUIRE(p >= 0 && p < 1, InvalidArgument, where, name, " = ", p, " must be in [0, 1)");
}
}  // namespace detail

/// Argument checks for sublayer implementations (InvalidArgument naming `where`): x has `hidden`
/// rows and holds ctx.batch sequences of equal length.
template <class S>
void check_sublayer_input(const char* where, const ConstMatrixRef<S>& x, Index hidden,
                          const Context& ctx) {
  REFORMER_REQUIRE(x.rows() == hidden, InvalidArgument, where, "x.rows() = ", x.rows(),
                   " must equal hidden_size = ", hidden);
  (void)ctx.length(where, x.cols());
}

/// dy, dx and y of a backward call have the shape of x.
template <class S>
void check_backward_buffers(const char* where, const ConstMatrixRef<S>& x,
                            const ConstMatrixRef<S>& dy, const MatrixRef<S>& dx,
                            const MatrixRef<S>& y) {
  check_shape(where, "dy", dy.rows(), dy.cols(), x.rows(), x.cols());
  check_shape(where, "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  check_shape(where, "y", y.rows(), y.cols(), x.rows(), x.cols());
}

/// The ordinary (out-of-place) backward of any sublayer:
///   dx = (df/dx)^T dy,   fx = f(x),   parameter gradients +=.
/// dx and fx are overwritten (D x N each) and alias neither x, dy nor each other.
/// The scalar type is deduced from `params` alone.
template <class S, class L>
void backward_out_of_place(const L& layer, Parameters<S>& params,
                           detail::NonDeduced<ConstMatrixRef<S>> x,
                           detail::NonDeduced<ConstMatrixRef<S>> dy,
                           detail::NonDeduced<MatrixRef<S>> dx, detail::NonDeduced<MatrixRef<S>> fx,
                           const Context& ctx) {
  require_sublayer<L, S>();
  const char* where = "backward_out_of_place";
  check_shape(where, "dy", dy.rows(), dy.cols(), x.rows(), x.cols());
  check_shape(where, "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  check_shape(where, "fx", fx.rows(), fx.cols(), x.rows(), x.cols());
  dx.setZero();
  fx.setZero();
  layer.backward(params, x, dy, dx, fx, ctx);  // dx = J^T dy, fx = -f(x)
  fx = -fx;
}

}  // namespace reformer
