#pragma once
// The per-head input projections of the attention cores, restricted to a range of heads
// (head_range.hpp): the rows [first*Dh, (first+count)*Dh) of [H*Dh, hidden] weights.
//
//   forward:   y = W[heads] xn                       count*Dh x N
//   backward:  dW[heads] += dy xn^T,  dxn += W[heads]^T dy
//
// Full and local attention project queries, keys and values with three weights and scale the
// keys by 1/sqrt(Dh) (project_qkv); LSH attention projects shared query-keys and values.
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/ops/linear.hpp"

#include <cmath>
#include <string>

namespace reformer::detail {

/// Rows of `heads` of a [H*Dh, hidden] weight: count*Dh x hidden.
template <class S>
auto head_rows(const Parameters<S>& params, SlotId slot, HeadRange heads, Index head_size) {
  return params.value(slot).middleRows(heads.first * head_size, heads.count * head_size);
}

/// y = W[heads] xn; y is resized to count*Dh x N.
template <class S>
void project_heads(const Parameters<S>& params, SlotId slot, HeadRange heads, Index head_size,
                   const ConstMatrixRef<S>& xn, Matrix<S>& y) {
  y.resize(heads.count * head_size, xn.cols());
  parallel_product(y, head_rows(params, slot, heads, head_size), xn, false);
}

/// Backward of y = W[heads] xn:  dW[heads] += dy xn^T,  dxn += W[heads]^T dy.
template <class S>
void project_heads_backward(Parameters<S>& params, SlotId slot, HeadRange heads, Index head_size,
                            const ConstMatrixRef<S>& xn, const Matrix<S>& dy, MatrixRef<S> dxn) {
  linear_weight_grads<S>(
      dy, xn, params.grad(slot).middleRows(heads.first * head_size, heads.count * head_size));
  parallel_product(dxn, head_rows(params, slot, heads, head_size).transpose(), dy, true);
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

/// q = W_q[heads] xn,  k = W_k[heads] xn / sqrt(Dh),  v = W_v[heads] xn  (count*Dh x N each).
template <class S>
void project_qkv(const Parameters<S>& params, QkvSlots w, HeadRange heads, Index head_size,
                 const ConstMatrixRef<S>& xn, Matrix<S>& q, Matrix<S>& k, Matrix<S>& v) {
  project_heads(params, w.query, heads, head_size, xn, q);
  project_heads(params, w.key, heads, head_size, xn, k);
  project_heads(params, w.value, heads, head_size, xn, v);
  k *= S(1) / std::sqrt(S(head_size));
}

/// Backward of project_qkv given the gradients of q, the scaled k and v: the 1/sqrt(Dh) factor
/// moves onto dk (scaled in place), then dW[heads] += d(.) xn^T and
/// dxn += W_q^T dq + W_k^T dk + W_v^T dv.
template <class S>
void project_qkv_backward(Parameters<S>& params, QkvSlots w, HeadRange heads, Index head_size,
                          const ConstMatrixRef<S>& xn, const Matrix<S>& dq, Matrix<S>& dk,
                          const Matrix<S>& dv, MatrixRef<S> dxn) {
  dk *= S(1) / std::sqrt(S(head_size));
  project_heads_backward(params, w.query, heads, head_size, xn, dq, dxn);
  project_heads_backward(params, w.key, heads, head_size, xn, dk, dxn);
  project_heads_backward(params, w.value, heads, head_size, xn, dv, dxn);
}

}  // namespace reformer::detail
