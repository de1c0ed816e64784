#pragma once
// The reversible residual block (DESIGN 1.1, 3.2; Gomez et al. 2017, used by the Reformer):
//
//   y1 = x1 + F(x2)          F: the attention sublayer
//   y2 = x2 + G(y1)          G: the feed-forward sublayer
//
// Its inputs are recomputable from its outputs,
//
//   x2 = y2 - G(y1)
//   x1 = y1 - F(x2)
//
// so a stack of blocks trains without storing per-layer activations: the backward pass walks
// the stack from the top and reconstructs each block's inputs from its outputs.
//
// F and G are sublayers (docs/ARCHITECTURE.md): const configuration plus parameter slots,
//   void forward(const Parameters<S>&, ConstMatrixRef<S> x, MatrixRef<S> y, const Context&) const;
//   void backward(Parameters<S>&, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
//                 MatrixRef<S> dx /* overwritten */, MatrixRef<S> fx /* f(x), recomputed */,
//                 const Context&) const;    // parameter gradients +=
// All matrices are D x N (N = ctx.batch * T). Both sublayers of a block get the same Context
// (same layer index, step and bucket tape); their randomness is told apart by stream tags.
//
// Every function works in place on the caller's buffers (the model keeps only two streams and
// two gradient streams). Forward uses a ReversibleWorkspace for one D x N temporary; backward
// needs none when the sublayers provide backward_inverse (both of ours do), else two.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/parallel.hpp"

#include <cstddef>
#include <type_traits>
#include <utility>

namespace reformer {

/// D x N scratch reused by every block of a stack (allocated once per shape): fx in forward,
/// fx and dx in backward for sublayers without backward_inverse.
template <class S>
struct ReversibleWorkspace {
  Matrix<S> fx;  ///< F(x2) / G(y1)
  Matrix<S> dx;  ///< F'^T dy1 / G'^T dy2

  /// Sizes fx only (forward needs no dx).
  void resize_fx(Index rows, Index cols) {
    if (fx.rows() != rows || fx.cols() != cols) fx.resize(rows, cols);
  }
  void resize(Index rows, Index cols) {
    resize_fx(rows, cols);
    if (dx.rows() != rows || dx.cols() != cols) dx.resize(rows, cols);
  }
  std::size_t bytes_held() const {
    return static_cast<std::size_t>(fx.size() + dx.size()) * sizeof(S);
  }
};

namespace detail {
inline void check_stream_pair(const char* where, const char* a_name, Index a_rows, Index a_cols,
                              const char* b_name, Index b_rows, Index b_cols) {
  REFORMER_REQUIRE(a_rows == b_rows && a_cols == b_cols, InvalidArgument, where, a_name,
                   " has shape ", a_rows, " x ", a_cols, " but ", b_name, " has shape ", b_rows,
                   " x ", b_cols);
}
}  // namespace detail

/// In place: (x1, x2) -> (y1, y2) = (x1 + F(x2), x2 + G(x1 + F(x2))).
template <class S, class F, class G>
void reversible_forward(const F& f, const G& g, const Parameters<S>& params, MatrixRef<S> x1,
                        MatrixRef<S> x2, const Context& ctx, ReversibleWorkspace<S>& ws) {
  detail::check_stream_pair("reversible_forward", "x1", x1.rows(), x1.cols(), "x2", x2.rows(),
                            x2.cols());
  ws.resize_fx(x1.rows(), x1.cols());
  f.forward(params, x2, ws.fx, ctx);  // F(x2)
  add_parallel<S>(x1, ws.fx, S(1));   // y1 = x1 + F(x2)
  g.forward(params, x1, ws.fx, ctx);  // G(y1)
  add_parallel<S>(x2, ws.fx, S(1));   // y2 = x2 + G(y1)
}

namespace detail {
/// True when the sublayer L provides backward_inverse (dx_acc += f'^T dy, y_sub -= f(x)).
template <class L, class S, class = void>
struct has_backward_inverse : std::false_type {};
template <class L, class S>
struct has_backward_inverse<L, S,
                            std::void_t<decltype(std::declval<const L&>().backward_inverse(
                                std::declval<Parameters<S>&>(), std::declval<ConstMatrixRef<S>>(),
                                std::declval<ConstMatrixRef<S>>(), std::declval<MatrixRef<S>>(),
                                std::declval<MatrixRef<S>>(), std::declval<const Context&>()))>>
    : std::true_type {};
}  // namespace detail

/// The reversible backward of one block, in place:
///   (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2)
/// Forward: y1 = x1 + F(x2), y2 = x2 + G(y1). With gradients dy1, dy2 of y1, y2:
///   G at y1, recomputed:   g = G(y1),  dG = G'(y1)^T dy2
///   x2  = y2 - g
///   dy1 += dG                                  (total gradient of y1)
///   F at x2, recomputed:   f = F(x2),  dF = F'(x2)^T dy1
///   x1  = y1 - f
///   dx2 = dy2 + dF,  dx1 = dy1
/// Parameter gradients of F and G are accumulated into params.grads().
///
/// When both sublayers provide backward_inverse, the updates happen inside them and the
/// workspace stays empty: no D x N scratch (2 of the 12 GiB of a step at T = 2^20, D = 256).
/// Otherwise g.backward / f.backward write dG, G(y1) and dF, F(x2) into the workspace.
template <class S, class F, class G>
void reversible_backward(const F& f, const G& g, Parameters<S>& params, MatrixRef<S> y1,
                         MatrixRef<S> y2, MatrixRef<S> dy1, MatrixRef<S> dy2, const Context& ctx,
                         ReversibleWorkspace<S>& ws) {
  const char* where = "reversible_backward";
  detail::check_stream_pair(where, "y2", y2.rows(), y2.cols(), "y1", y1.rows(), y1.cols());
  detail::check_stream_pair(where, "dy1", dy1.rows(), dy1.cols(), "y1", y1.rows(), y1.cols());
  detail::check_stream_pair(where, "dy2", dy2.rows(), dy2.cols(), "y1", y1.rows(), y1.cols());
  if constexpr (detail::has_backward_inverse<F, S>::value &&
                detail::has_backward_inverse<G, S>::value) {
    g.backward_inverse(params, y1, dy2, dy1, y2, ctx);  // dy1 += G'^T dy2, x2 = y2 - G(y1)
    f.backward_inverse(params, y2, dy1, dy2, y1, ctx);  // dx2 = dy2 + F'^T dy1, x1 = y1 - F(x2)
  } else {
    ws.resize(y1.rows(), y1.cols());

    g.backward(params, y1, dy2, ws.dx, ws.fx, ctx);  // dG = G'^T dy2, fx = G(y1)
    add_parallel<S>(y2, ws.fx, S(-1));               // x2 = y2 - G(y1)
    add_parallel<S>(dy1, ws.dx, S(1));               // dy1 + G'^T dy2

    f.backward(params, y2, dy1, ws.dx, ws.fx, ctx);  // dF = F'^T dy1, fx = F(x2)
    add_parallel<S>(y1, ws.fx, S(-1));               // x1 = y1 - F(x2)
    add_parallel<S>(dy2, ws.dx, S(1));               // dx2 = dy2 + F'^T dy1
  }
  // dx1 = dy1: already in place.
}

/// Ordinary backprop through one block whose sublayer inputs were stored in forward
/// (x2 = F's input, y1 = G's input): in place (dy1, dy2) -> (dx1, dx2), with
///   dy1 += G'(y1)^T dy2,   dx2 = dy2 + F'(x2)^T dy1,   dx1 = dy1.
/// This is the stored-activation oracle of reversible_backward (nothing is reconstructed).
template <class S, class F, class G>
void stored_backward(const F& f, const G& g, Parameters<S>& params, ConstMatrixRef<S> x2,
                     ConstMatrixRef<S> y1, MatrixRef<S> dy1, MatrixRef<S> dy2, const Context& ctx,
                     ReversibleWorkspace<S>& ws) {
  const char* where = "stored_backward";
  detail::check_stream_pair(where, "x2", x2.rows(), x2.cols(), "y1", y1.rows(), y1.cols());
  detail::check_stream_pair(where, "dy1", dy1.rows(), dy1.cols(), "y1", y1.rows(), y1.cols());
  detail::check_stream_pair(where, "dy2", dy2.rows(), dy2.cols(), "y1", y1.rows(), y1.cols());
  ws.resize(y1.rows(), y1.cols());

  g.backward(params, y1, dy2, ws.dx, ws.fx, ctx);  // dG = G'^T dy2
  add_parallel<S>(dy1, ws.dx, S(1));
  f.backward(params, x2, dy1, ws.dx, ws.fx, ctx);  // dF = F'^T dy1
  add_parallel<S>(dy2, ws.dx, S(1));
}

}  // namespace reformer
