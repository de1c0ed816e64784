#pragma once
// The per-head input projections of the attention cores, restricted to a range of heads
// (head_range.hpp): the rows [first*Dh, (first+count)*Dh) of [H*Dh, hidden] weights.
//
//   forward:   y = W[heads] xn                       count*Dh x N
//   backward:  dW[heads] += dy xn^T,  dxn += W[heads]^T dy
//
// Full and local attention project queries, keys and values with three weights and scale the
// keys by 1/sqrt(Dh) (project_qkv); LSH attention projects shared query-keys and values.
//
// The input is a ProjectionInput (layers/projection_input.hpp). A plain xn is projected with
// parallel_product and linear_weight_grads (ops/linear.hpp). An input with a LayerNorm is
// processed in fixed blocks of kFusedProjectionBlock columns (a function of the shapes only),
// every projection of a call sharing one normalised block:
//   forward:   xn_b = LN(x_b)  (a D x block buffer),   y_b = W[heads] xn_b
//   backward:  xn_b = LN(x_b),  partial dW_s += dy_b xn_b^T (s: the block's span),
//              dxn_b = sum over projections of W[heads]^T dy_b,  then at once
//              dx_b += LN'(x_b)^T dxn_b  and the partial dgamma_s, dbeta_s +=
// The backward blocks form min(blocks, tuning::kGradPartials) spans of consecutive blocks (a
// function of the shapes only); the spans run in parallel, each summing its blocks' dW, dgamma
// and dbeta in block order into its own partials, which are then added in span order, so the
// results are bitwise identical for any thread count. No D x N normalised input or gradient is
// ever formed.
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/projection_input.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <vector>

namespace reformer::detail {

/// Columns per block of the projections of a LayerNorm input: as wide as the blocks of the
/// weight gradients (tuning::kGradTokenBlock), so one block feeds one partial dW.
inline constexpr Index kFusedProjectionBlock = tuning::kGradTokenBlock;

/// Rows of `heads` of a [H*Dh, hidden] weight: count*Dh x hidden.
template <class S>
auto head_rows(const Parameters<S>& params, SlotId slot, HeadRange heads, Index head_size) {
  return params.value(slot).middleRows(heads.first * head_size, heads.count * head_size);
}

/// One projection of a call: y = W[heads] xn, W the weight in `slot` (y: count*Dh x N).
template <class S>
struct ProjectionOutput {
  SlotId slot;
  MatrixRef<S> y;
};

/// The gradient dy (count*Dh x N) of one projection y = W[heads] xn, W the weight in `slot`.
template <class S>
struct ProjectionGradient {
  SlotId slot;
  ConstMatrixRef<S> dy;
};

/// y = W[heads] xn for every output (y sized count*Dh x N by the caller). Buffers of the
/// LayerNorm blocks come from `ws` (may be null).
template <class S>
void project_heads(const Parameters<S>& params, HeadRange heads, Index head_size,
                   const ProjectionInput<S>& input,
                   std::initializer_list<ProjectionOutput<S>> outputs, Workspace* ws) {
  if (!input.has_layer_norm()) {
    for (const ProjectionOutput<S>& o : outputs) {
      parallel_product(MatrixRef<S>(o.y), head_rows(params, o.slot, heads, head_size), input.x(),
                       false);
    }
    return;
  }
  const Index d = input.rows(), n = input.cols(), rows = heads.count * head_size;
  const Index blocks = num_blocks(n, kFusedProjectionBlock);
  const double flops = 2.0 * double(rows) * double(d) * double(n) * double(outputs.size());
  parallel_items(blocks, flops, [&](Index blk) {
    const Index c0 = blk * kFusedProjectionBlock, nc = std::min(kFusedProjectionBlock, n - c0);
    Scratch<S> xn(ws, d, nc);  // D x nc: LN of this block
    input.normalised_columns(c0, nc, xn.map());
    for (const ProjectionOutput<S>& o : outputs) {
      MatrixRef<S> y = o.y;
      product(y.middleCols(c0, nc), head_rows(params, o.slot, heads, head_size), xn.map(), false);
    }
  });
}

/// Backward of project_heads for the gradients of its outputs: dW[heads] += dy xn^T for each,
/// and the input's gradient dxn = sum W[heads]^T dy added to `dinput` (plain: dxn +=; LayerNorm:
/// through the LayerNorm, block by block, into dx, dgamma and dbeta +=).
template <class S>
void project_heads_backward(Parameters<S>& params, HeadRange heads, Index head_size,
                            const ProjectionInput<S>& input,
                            std::initializer_list<ProjectionGradient<S>> grads,
                            const ProjectionInputGrad<S>& dinput, Workspace* ws) {
  const Index rows = heads.count * head_size;
  auto weight_grad = [&](SlotId slot) {
    return params.grad(slot).middleRows(heads.first * head_size, rows);
  };
  if (!input.has_layer_norm()) {
    for (const ProjectionGradient<S>& g : grads) {
      linear_weight_grads<S>(g.dy, input.x(), weight_grad(g.slot), nullptr, ws);
      parallel_product(dinput.dx(), head_rows(params, g.slot, heads, head_size).transpose(), g.dy,
                       true);
    }
    return;
  }
  const Index d = input.rows(), n = input.cols();
  const Index np = static_cast<Index>(grads.size());
  const Index blocks = num_blocks(n, kFusedProjectionBlock);
  const Index spans = std::min(blocks, tuning::kGradPartials);
  // Per span: its partial dW of every projection (rows x D each, entry i * np + p), and its
  // partial dgamma, dbeta (columns 2i, 2i + 1).
  constexpr Index kMaxProjections = 3;  // q, k, v
  REFORMER_REQUIRE(np >= 1 && np <= kMaxProjections, InvalidArgument, "project_heads_backward",
                   "grads.size() = ", np, " must be in [1, ", kMaxProjections, "]");
  std::array<Scratch<S>, static_cast<std::size_t>(tuning::kGradPartials * kMaxProjections)>
      partial_dw;  // fixed storage: no heap use per call
  for (Index i = 0; i < spans * np; ++i)
    partial_dw[static_cast<std::size_t>(i)].resize(ws, rows, d);
  Scratch<S> partial_ln_memory(ws, d, 2 * spans);
  auto& partial_ln = partial_ln_memory.map();
  partial_ln.setZero();
  // Span i takes the blocks [first_block(i), first_block(i + 1)), in order.
  const auto first_block = [&](Index i) { return blocks * i / spans; };
  const double flops = 4.0 * double(rows) * double(d) * double(n) * double(np);
  parallel_items(spans, flops, [&](Index i) {
    Scratch<S> xn(ws, d, kFusedProjectionBlock), dxn(ws, d, kFusedProjectionBlock);
    for (Index blk = first_block(i); blk < first_block(i + 1); ++blk) {
      const Index c0 = blk * kFusedProjectionBlock;
      const Index nc = std::min(kFusedProjectionBlock, n - c0);
      auto xn_b = xn.map().leftCols(nc), dxn_b = dxn.map().leftCols(nc);  // D x nc
      input.normalised_columns(c0, nc, xn_b);
      Index p = 0;
      for (const ProjectionGradient<S>& g : grads) {
        const auto dy = g.dy.middleCols(c0, nc);
        const auto w_t = head_rows(params, g.slot, heads, head_size).transpose();
        auto partial = partial_dw[static_cast<std::size_t>(i * np + p)].map();
        product(partial, dy, xn_b.transpose(), /*accumulate=*/blk != first_block(i));
        product(dxn_b, w_t, dy, /*accumulate=*/p != 0);
        ++p;
      }
      // xn = LN(x)  =>  dx += LN'(x)^T dxn (computed in place in dxn), dgamma, dbeta partials.
      input.layer_norm_backward_columns(c0, nc, dxn_b, dxn_b, partial_ln.col(2 * i),
                                        partial_ln.col(2 * i + 1));
      dinput.dx().middleCols(c0, nc) += dxn_b;
    }
  });
  // dW += the spans' partials in span order (split over dW's rows).
  const Index rb = row_block(rows), row_blocks = num_blocks(rows, rb);
  parallel_items(np * row_blocks, double(spans * np) * double(rows) * double(d), [&](Index item) {
    const Index p = item / row_blocks, r0 = (item % row_blocks) * rb;
    const Index nr = std::min(rb, rows - r0);
    auto dw = weight_grad((grads.begin() + p)->slot).middleRows(r0, nr);
    for (Index i = 0; i < spans; ++i) {
      dw += partial_dw[static_cast<std::size_t>(i * np + p)].map().middleRows(r0, nr);
    }
  });
  for (Index i = 0; i < spans; ++i) {
    dinput.dgamma() += partial_ln.col(2 * i);
    dinput.dbeta() += partial_ln.col(2 * i + 1);
  }
}

/// The query, key and value weights of a core: <prefix>self_attention.{query,key,value}.weight,
/// each [H*Dh, hidden] (HF names, registered in HF's order).
struct QkvSlots {
  SlotId query = -1, key = -1, value = -1;

  template <class S>
  static QkvSlots add(Parameters<S>& params, const std::string& prefix, Index out, Index hidden) {
    QkvSlots w;
    w.query = params.add(prefix + "self_attention.query.weight", {out, hidden});
    w.key = params.add(prefix + "self_attention.key.weight", {out, hidden});
    w.value = params.add(prefix + "self_attention.value.weight", {out, hidden});
    return w;
  }

  /// Hugging Face initialisation: each weight ~ normal(0, std), from rng.derive(0, 1, 2).
  template <class S>
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    init_normal(params, query, rng.derive(0), std);
    init_normal(params, key, rng.derive(1), std);
    init_normal(params, value, rng.derive(2), std);
  }
};

/// q = W_q[heads] xn,  k = W_k[heads] xn / sqrt(Dh),  v = W_v[heads] xn  (count*Dh x N each,
/// sized by the caller).
template <class S>
void project_qkv(const Parameters<S>& params, QkvSlots w, HeadRange heads, Index head_size,
                 const ProjectionInput<S>& input, MatrixRef<S> q, MatrixRef<S> k, MatrixRef<S> v,
                 Workspace* ws) {
  project_heads<S>(params, heads, head_size, input, {{w.query, q}, {w.key, k}, {w.value, v}}, ws);
  k *= S(1) / std::sqrt(S(head_size));
}

/// Backward of project_qkv given the gradients of q, the scaled k and v: the 1/sqrt(Dh) factor
/// moves onto dk (scaled in place), then dW[heads] += d(.) xn^T and the input's gradient
/// W_q^T dq + W_k^T dk + W_v^T dv goes to `dinput` (project_heads_backward).
template <class S>
void project_qkv_backward(Parameters<S>& params, QkvSlots w, HeadRange heads, Index head_size,
                          const ProjectionInput<S>& input, ConstMatrixRef<S> dq, MatrixRef<S> dk,
                          ConstMatrixRef<S> dv, const ProjectionInputGrad<S>& dinput,
                          Workspace* ws) {
  dk *= S(1) / std::sqrt(S(head_size));
  project_heads_backward<S>(params, heads, head_size, input,
                            {{w.query, dq}, {w.key, dk}, {w.value, dv}}, dinput, ws);
}

}  // namespace reformer::detail
