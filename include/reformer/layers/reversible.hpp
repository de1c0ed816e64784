#pragma once
// The reversible residual block (docs/DESIGN.md 1.1, 3.2; Gomez et al. 2017, used by the
// Reformer):
//
//   y1 = x1 + F(x2)          F: an attention-like sublayer
//   y2 = x2 + G(y1)          G: a feed-forward-like sublayer
//
// Its inputs are recomputable from its outputs,
//
//   x2 = y2 - G(y1)
//   x1 = y1 - F(x2)
//
// so a stack of blocks trains without storing per-layer activations: the backward pass walks
// the stack from the top and reconstructs each block's inputs from its outputs.
//
// F and G meet the sublayer contract (sublayer.hpp): forward y = f(x), and one in-place
// backward (dx += J^T dy, parameter gradients +=, y -= f(x)). All matrices are D x N
// (N = ctx.batch * T). Both sublayers of a block get the same Context (same layer index, step
// and bucket tape); their randomness is told apart by stream tags.
//
// Every function works in place on the caller's buffers (a stack keeps only two streams and
// two gradient streams). Forward needs one D x N temporary for f(x) (ReversibleWorkspace);
// the reversible backward needs none.
//
// Kept activations (optional): given a KeptActivations for F or G, a sublayer that can keep
// (sublayer.hpp, is_keeping_sublayer_v) fills it in forward, and the reversible backward takes
// f(x) and its intermediates from it instead of recomputing them. The inputs are still
// reconstructed (x2 = y2 - G(y1) with the kept G(y1)), so the memory of the streams stays that of
// one block; what is kept is the caller's choice (ReversibleStack keeps within a budget).
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/sublayer.hpp"
#include "reformer/ops/parallel.hpp"

namespace reformer {

/// D x N scratch reused by every block of a stack (drawn once per shape from the context's
/// workspace, or the heap): F(x2) / G(y1) in forward, the discarded f(x) of the
/// stored-activation backward.
template <class S>
struct ReversibleWorkspace {
  Scratch<S> fx;

  void resize(Workspace* ws, Index rows, Index cols) {
    if (fx.rows() != rows || fx.cols() != cols) fx.resize(ws, rows, cols);
  }
};

namespace detail {
inline void check_stream_pair(const char* where, const char* a_name, Index a_rows, Index a_cols,
                              const char* b_name, Index b_rows, Index b_cols) {
  REFORMER_REQUIRE(a_rows == b_rows && a_cols == b_cols, InvalidArgument, where, a_name,
                   " has shape ", a_rows, " x ", a_cols, " but ", b_name, " has shape ", b_rows,
                   " x ", b_cols);
}

/// The backward of a block: `other` (y2 or the stored x2), dy1 and dy2 have the shape of y1.
template <class S>
void check_block_streams(const char* where, const char* other_name, const ConstMatrixRef<S>& other,
                         const ConstMatrixRef<S>& y1, const ConstMatrixRef<S>& dy1,
                         const ConstMatrixRef<S>& dy2) {
  check_stream_pair(where, other_name, other.rows(), other.cols(), "y1", y1.rows(), y1.cols());
  check_stream_pair(where, "dy1", dy1.rows(), dy1.cols(), "y1", y1.rows(), y1.cols());
  check_stream_pair(where, "dy2", dy2.rows(), dy2.cols(), "y1", y1.rows(), y1.cols());
}
}  // namespace detail

namespace detail {
/// y = f(x); with `kept` (and a sublayer that can keep) also fills it.
template <class S, class L>
void sublayer_forward(const L& layer, const Parameters<S>& params, ConstMatrixRef<S> x,
                      MatrixRef<S> y, const Context& ctx, KeptActivations<S>* kept) {
  if constexpr (is_keeping_sublayer_v<L, S>) {
    if (kept != nullptr) {
      kept->filled = false;
      layer.forward_keeping(params, x, y, ctx, *kept);
      kept->filled = true;
      return;
    }
  }
  layer.forward(params, x, y, ctx);
}

/// The in-place backward of the sublayer contract; from `kept` when a forward filled it (it is
/// consumed either way).
template <class S, class L>
void sublayer_backward(const L& layer, Parameters<S>& params, ConstMatrixRef<S> x,
                       ConstMatrixRef<S> dy, MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                       KeptActivations<S>* kept) {
  if constexpr (is_keeping_sublayer_v<L, S>) {
    if (kept != nullptr && kept->filled) {
      kept->filled = false;
      layer.backward_from_kept(params, x, dy, dx, y, ctx, *kept);
      return;
    }
  }
  layer.backward(params, x, dy, dx, y, ctx);
}
}  // namespace detail

/// In place: (x1, x2) -> (y1, y2) = (x1 + F(x2), x2 + G(x1 + F(x2))). With keep_f / keep_g, a
/// sublayer that can keep fills them (see the file comment).
template <class S, class F, class G>
void reversible_forward(const F& f, const G& g, const Parameters<S>& params, MatrixRef<S> x1,
                        MatrixRef<S> x2, const Context& ctx, ReversibleWorkspace<S>& ws,
                        KeptActivations<S>* keep_f = nullptr,
                        KeptActivations<S>* keep_g = nullptr) {
  require_sublayer<F, S>();
  require_sublayer<G, S>();
  detail::check_stream_pair("reversible_forward", "x1", x1.rows(), x1.cols(), "x2", x2.rows(),
                            x2.cols());
  ws.resize(ctx.workspace, x1.rows(), x1.cols());
  auto fx = ws.fx.map();
  detail::sublayer_forward<S>(f, params, x2, fx, ctx, keep_f);  // F(x2)
  add_parallel<S>(x1, fx, S(1));                                // y1 = x1 + F(x2)
  detail::sublayer_forward<S>(g, params, x1, fx, ctx, keep_g);  // G(y1)
  add_parallel<S>(x2, fx, S(1));                                // y2 = x2 + G(y1)
}

/// The reversible backward of one block, in place:
///   (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2)
/// Forward: y1 = x1 + F(x2), y2 = x2 + G(y1). With gradients dy1, dy2 of y1, y2:
///   G at y1, recomputed:   dy1 += G'(y1)^T dy2   (total gradient of y1),   x2 = y2 - G(y1)
///   F at x2, recomputed:   dx2  = dy2 + F'(x2)^T dy1,                      x1 = y1 - F(x2)
///   dx1 = dy1
/// Parameter gradients of F and G are accumulated into params.grads(). No scratch buffer.
/// A sublayer whose keep_f / keep_g a forward filled takes G(y1) / F(x2) and its intermediates
/// from there instead of recomputing them.
template <class S, class F, class G>
void reversible_backward(const F& f, const G& g, Parameters<S>& params, MatrixRef<S> y1,
                         MatrixRef<S> y2, MatrixRef<S> dy1, MatrixRef<S> dy2, const Context& ctx,
                         KeptActivations<S>* keep_f = nullptr,
                         KeptActivations<S>* keep_g = nullptr) {
  require_sublayer<F, S>();
  require_sublayer<G, S>();
  detail::check_block_streams<S>("reversible_backward", "y2", y2, y1, dy1, dy2);
  // dy1 += G'^T dy2, x2 = y2 - G(y1)
  detail::sublayer_backward<S>(g, params, y1, dy2, dy1, y2, ctx, keep_g);
  // dx2 = dy2 + F'^T dy1, x1 = y1 - F(x2)
  detail::sublayer_backward<S>(f, params, y2, dy1, dy2, y1, ctx, keep_f);
  // dx1 = dy1: already in place.
}

/// Ordinary backprop through one block whose sublayer inputs were stored in forward
/// (x2 = F's input, y1 = G's input): in place (dy1, dy2) -> (dx1, dx2), with
///   dy1 += G'(y1)^T dy2,   dx2 = dy2 + F'(x2)^T dy1,   dx1 = dy1.
/// This is the stored-activation oracle of reversible_backward (nothing is reconstructed; the
/// recomputed f(x) goes to the workspace and is discarded).
template <class S, class F, class G>
void stored_backward(const F& f, const G& g, Parameters<S>& params, ConstMatrixRef<S> x2,
                     ConstMatrixRef<S> y1, MatrixRef<S> dy1, MatrixRef<S> dy2, const Context& ctx,
                     ReversibleWorkspace<S>& ws) {
  require_sublayer<F, S>();
  require_sublayer<G, S>();
  detail::check_block_streams<S>("stored_backward", "x2", x2, y1, dy1, dy2);
  ws.resize(ctx.workspace, y1.rows(), y1.cols());
  auto fx = ws.fx.map();
  g.backward(params, y1, dy2, dy1, fx, ctx);  // dy1 += G'^T dy2
  f.backward(params, x2, dy1, dy2, fx, ctx);  // dx2 = dy2 + F'^T dy1
}

}  // namespace reformer
