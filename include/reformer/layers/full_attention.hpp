#pragma once
// FullAttention: dense multi-head self-attention (docs/DESIGN.md 1.4), an attention core for
// AttentionSublayer. It is the O(T^2) baseline of the benchmarks and the oracle of the tests.
//
// Per sequence b (columns [b*T, (b+1)*T) of xn) and head h (rows [h*Dh, (h+1)*Dh)):
//   q = W_q xn,  k = W_k xn / sqrt(Dh),  v = W_v xn                 Dh x T each
//   s(j, i) = k_j . q_i                     row = key j, column = query i
//   causal: s(j, i) = -1e9 where j > i      (replaces the score)
//   key padding (ctx.mask, core/attention_mask.hpp): s(j, i) = -1e9 where key j is padding
//        (replaces the score, as Hugging Face; docs/DESIGN.md 7.1)
//   p(:, i) = softmax(s(:, i))              per query column, over all keys
//   p~ = Dropout(p)                         training only; key
//        ctx.rng(stream::kAttentionProbsDropout).derive(b).derive(h), draw index i*T + j
//        (the column-major linear index of p(j, i) in the T x T matrix: independent of the
//        blocking below and of threads)
//   o = v p~                                Dh x T, rows [h*Dh, (h+1)*Dh) of the output a
// Sequences never attend to each other.
//
// The T x T matrix is never held whole: queries are processed in panels of kQueryBlock columns,
// each an exact softmax over all (visible) keys, so a thread holds a few T x kQueryBlock
// buffers that stay in cache. Causal panels stop at the last visible key (i0 + nq): the masked
// upper part, whose probability is exactly 0, is never computed. With a key mask the panels span
// the keys up to the sequence's last real position, causal or not (the padding after it weighs
// exactly 0 for every query with an allowed key), and the query panels are cut from [0, last
// real + 1) and then from the rest, so appending padding changes nothing for real positions; a
// padded query with no allowed key has all these scores equal and averages their values; masked
// scores are constants, so their gradient is zeroed explicitly (the softmax backward would not give
// 0 for such a query).
//
// Parameters: <prefix>self_attention.query.weight, .key.weight, .value.weight, each [H*Dh, D]
// (no biases), the Hugging Face local-attention names.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/detail/head_projection.hpp"
#include "reformer/layers/detail/key_padding.hpp"
#include "reformer/layers/detail/qkv_core.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/projection_input.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"
#include "reformer/ops/softmax.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace reformer {

struct FullAttentionConfig {
  Index num_heads = 1;   ///< H
  Index head_size = 64;  ///< Dh
  bool causal = true;    ///< mask keys after the query
  double dropout = 0.0;  ///< dropout on the attention probabilities (training only)

  /// The full attention of a model configuration (a ReformerConfig, model/config.hpp). HF has
  /// no dropout setting of its own for it: it uses local_attention_probs_dropout_prob.
  template <class ModelConfig>
  static FullAttentionConfig from(const ModelConfig& m) {
    return {/*num_heads=*/m.num_attention_heads, /*head_size=*/m.head_size(),
            /*causal=*/m.is_decoder, /*dropout=*/m.local_attention_probs_dropout_prob};
  }
};

template <class S>
class FullAttention : public detail::QkvCore<S, FullAttentionConfig> {
  using Base = detail::QkvCore<S, FullAttentionConfig>;

 public:
  using Scalar = S;
  using Config = FullAttentionConfig;

  /// The score of a masked (query, key) pair (replaces the score, as Hugging Face does).
  static constexpr double kMaskValue = -1e9;

  FullAttention(const Config& cfg, Index hidden, Parameters<S>& params,
                const std::string& prefix = "")
      : Base("FullAttention", cfg, hidden, params, prefix) {}

  /// a = attention(input): the input (layers/projection_input.hpp) is D x N, N = ctx.batch * T,
  /// a plain xn or x with a LayerNorm; a holds the rows of `heads` (all heads by default):
  /// heads.count*Dh x N.
  void forward(const Parameters<S>& params, const ProjectionInput<S>& input, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const;
  /// forward() of a plain normalised input xn (D x N).
  void forward(const Parameters<S>& params, ConstMatrixRef<S> xn, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const {
    forward(params, ProjectionInput<S>(xn), a, ctx, heads);
  }

  /// Recomputes the forward pass of `heads` (all by default; da and a: heads.count*Dh x N),
  /// ADDS their gradient w.r.t. the input to `dinput` (dxn += J^T da, or through the input's
  /// LayerNorm into dx, dgamma and dbeta), writes their recomputed rows of a and accumulates
  /// their rows of dW_q, dW_k, dW_v.
  void backward(Parameters<S>& params, const ProjectionInput<S>& input, ConstMatrixRef<S> da,
                const ProjectionInputGrad<S>& dinput, MatrixRef<S> a, const Context& ctx,
                HeadRange heads = HeadRange::all()) const;
  /// backward() of a plain normalised input xn: dxn += J^T da.
  void backward(Parameters<S>& params, ConstMatrixRef<S> xn, ConstMatrixRef<S> da, MatrixRef<S> dxn,
                MatrixRef<S> a, const Context& ctx, HeadRange heads = HeadRange::all()) const {
    backward(params, ProjectionInput<S>(xn), da, ProjectionInputGrad<S>(dxn), a, ctx, heads);
  }

 private:
  using Base::cfg_;
  using Base::hidden_;
  using Base::qkv_;
  Index check_io(const char* where, const ProjectionInput<S>& input, const Context& ctx,
                 HeadRange heads) const {
    return this->check_input(where, input, ctx, heads);
  }

  // Queries per panel (fixed: the blocking must not depend on the thread count).
  static constexpr Index kQueryBlock = tuning::kFullAttentionQueryBlock;

  // One past the sequence's last real key (flags: its key flags, or null = t).
  static Index key_end(Index t, const std::uint8_t* flags) {
    Index end = t;
    while (flags != nullptr && end > 0 && flags[end - 1] == 0) --end;
    return end;
  }

  // Keys visible to the query panel [i0, i0 + nq): all, or up to the panel's last query; with a
  // key mask, the keys up to the sequence's last real one (`end`).
  Index visible_keys(Index t, Index i0, Index nq, Index end, const std::uint8_t* flags) const {
    if (flags != nullptr) return end;
    return cfg_.causal ? i0 + nq : t;
  }

  // Query panel `panel` of a sequence: the blocks of kQueryBlock queries of [0, end), then those
  // of [end, t) (end = key_end: t without a mask), so the panels that hold real queries do not
  // depend on how much padding follows. False for an unused index; at most
  // num_blocks(t, kQueryBlock) + 1 panels.
  static bool query_panel(Index t, Index end, Index panel, Index& i0, Index& nq) {
    const Index first = num_blocks(end, kQueryBlock);
    if (panel < first) {
      i0 = panel * kQueryBlock;
      nq = std::min(kQueryBlock, end - i0);
      return true;
    }
    i0 = end + (panel - first) * kQueryBlock;
    nq = std::min(kQueryBlock, t - i0);
    return i0 < t;
  }

  // Work of one forward panel (upper bound): two T x kQueryBlock x Dh products, softmax, dropout.
  double panel_flops(Index t) const {
    return double(t) * double(kQueryBlock) * (4.0 * double(cfg_.head_size) + 20.0);
  }

  // The (b, h) block of a count*Dh x N matrix: rows of local head h, columns of sequence b.
  template <class M>
  auto block(M& m, Index b, Index h, Index t) const {
    return m.block(h * cfg_.head_size, b * t, cfg_.head_size, t);
  }

  // p = column-wise softmax of the masked scores s = k^T q of the query panel starting at
  // query i0 (p: nk x nq; column c is query i0 + c).
  // flags: the sequence's key flags (1 = real) or null.
  template <class Q, class K>
  void probabilities(const Q& q, const K& k, Index i0, const std::uint8_t* flags,
                     Matrix<S>& p) const {
    product(p, k.transpose(), q, false);
    if (cfg_.causal) {
      // Keys j > i: rows i + 1 .. nk - 1 of column i - i0 (only the panel's diagonal block).
      for (Index c = 0; c < p.cols(); ++c) {
        const Index first_masked = std::min(p.rows(), i0 + c + 1);
        p.col(c).tail(p.rows() - first_masked).setConstant(S(kMaskValue));
      }
    }
    if (flags != nullptr) {
      for (Index c = 0; c < p.cols(); ++c)
        for (Index j = 0; j < p.rows(); ++j)
          if (flags[j] == 0) p(j, c) = S(kMaskValue);
    }
    softmax_cols<S>(p, p);
  }

  // ds = 0 at every masked score of the panel starting at query i0 (only with a key mask: the
  // softmax backward already gives exactly 0 there when a query has an allowed key).
  void zero_masked_gradients(Index i0, const std::uint8_t* flags, Matrix<S>& ds) const {
    if (flags == nullptr) return;
    for (Index c = 0; c < ds.cols(); ++c) {
      for (Index j = 0; j < ds.rows(); ++j)
        if (flags[j] == 0 || (cfg_.causal && j > i0 + c)) ds(j, c) = S(0);
    }
  }

  // m = Dropout(m) for the panel starting at query i0, with the (b, h) probability-dropout key;
  // element (j, c) is p(j, i0 + c) of the T x T matrix, draw index (i0 + c) * T + j.
  void apply_dropout(Matrix<S>& m, const Context& ctx, Index b, Index h, Index t, Index i0) const {
    if (!ctx.training || cfg_.dropout <= 0) return;
    const Rng rng = ctx.rng(stream::kAttentionProbsDropout)
                        .derive(static_cast<std::uint64_t>(b))
                        .derive(static_cast<std::uint64_t>(h));
    for (Index c = 0; c < m.cols(); ++c) {
      dropout_inplace<S>(rng, cfg_.dropout, (i0 + c) * t, m.col(c));
    }
  }
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class FullAttention<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
void FullAttention<S>::forward(const Parameters<S>& params, const ProjectionInput<S>& input,
                               MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "FullAttention::forward";
  const Index t = check_io(where, input, ctx, heads);
  const detail::KeyPadding padding(where, ctx, t);
  const Index n = input.cols(), rows = heads.count * cfg_.head_size;
  check_shape(where, "a", a.rows(), a.cols(), rows, n);
  Scratch<S> q_buf(ctx.workspace, rows, n), k_buf(ctx.workspace, rows, n),
      v_buf(ctx.workspace, rows, n);
  auto &q = q_buf.map(), &k = k_buf.map(), &v = v_buf.map();
  detail::project_qkv<S>(params, qkv_, heads, cfg_.head_size, input, q, k, v, ctx.workspace);
  // Items: (sequence, local head, query panel); each writes its own block of a.
  const Index panels = num_blocks(t, kQueryBlock) + (padding.any() ? 1 : 0);
  const Index items = ctx.batch * heads.count * panels;
  parallel_items(items, double(items) * panel_flops(t), [&](Index item) {
    const Index bh = item / panels;
    const Index b = bh / heads.count, h = bh % heads.count;
    const std::uint8_t* flags = padding.flags(b);
    const Index end = key_end(t, flags);
    Index i0 = 0, nq = 0;
    if (!query_panel(t, end, item % panels, i0, nq)) return;
    const Index nk = visible_keys(t, i0, nq, end, flags);
    Matrix<S> p(nk, nq);
    probabilities(block(q, b, h, t).middleCols(i0, nq), block(k, b, h, t).leftCols(nk), i0, flags,
                  p);
    apply_dropout(p, ctx, b, heads.global(h), t, i0);
    // o = v p~
    product(block(a, b, h, t).middleCols(i0, nq), block(v, b, h, t).leftCols(nk), p, false);
  });
}

template <class S>
void FullAttention<S>::backward(Parameters<S>& params, const ProjectionInput<S>& input,
                                ConstMatrixRef<S> da, const ProjectionInputGrad<S>& dinput,
                                MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "FullAttention::backward";
  const Index t = check_io(where, input, ctx, heads);
  const detail::KeyPadding padding(where, ctx, t);
  const Index n = input.cols(), rows = heads.count * cfg_.head_size;
  dinput.check_matches(where, input);
  detail::check_core_backward_buffers<S>(where, da, dinput.dx(), a, rows, input.rows(), n);
  Workspace* ws = ctx.workspace;
  Scratch<S> q_buf(ws, rows, n), k_buf(ws, rows, n), v_buf(ws, rows, n);
  auto &q = q_buf.map(), &k = k_buf.map(), &v = v_buf.map();
  detail::project_qkv<S>(params, qkv_, heads, cfg_.head_size, input, q, k, v, ws);
  Scratch<S> dq_buf(ws, rows, n), dk_buf(ws, rows, n), dv_buf(ws, rows, n);
  auto &dq = dq_buf.map(), &dk = dk_buf.map(), &dv = dv_buf.map();
  const bool dropout = ctx.training && cfg_.dropout > 0;

  // Items: (sequence, local head); the query panels of an item run in order, accumulating dk
  // and dv of that (sequence, head) block in a fixed order.
  const Index items = ctx.batch * heads.count;
  const Index panels = num_blocks(t, kQueryBlock) + (padding.any() ? 1 : 0);
  parallel_items(items, 3.0 * double(items * panels) * panel_flops(t), [&](Index item) {
    const Index b = item / heads.count, h = item % heads.count, hg = heads.global(h);
    const auto qb = block(q, b, h, t), kb = block(k, b, h, t), vb = block(v, b, h, t);
    auto dkb = block(dk, b, h, t), dvb = block(dv, b, h, t);
    dkb.setZero();
    dvb.setZero();
    const std::uint8_t* flags = padding.flags(b);
    const Index end = key_end(t, flags);
    Matrix<S> p, pd, dp;  // nk x nq panels
    for (Index panel = 0; panel < panels; ++panel) {
      Index i0 = 0, nq = 0;
      if (!query_panel(t, end, panel, i0, nq)) continue;
      const Index nk = visible_keys(t, i0, nq, end, flags);
      const auto q_i = qb.middleCols(i0, nq);
      const auto k_v = kb.leftCols(nk), v_v = vb.leftCols(nk);  // the visible keys / values
      const auto do_i = block(da, b, h, t).middleCols(i0, nq);
      // Forward (recomputed):  p = softmax(s),  p~ = Dropout(p),  o = v p~.
      p.resize(nk, nq);
      probabilities(q_i, k_v, i0, flags, p);
      if (dropout) {
        pd = p;
        apply_dropout(pd, ctx, b, hg, t, i0);
      }
      const Matrix<S>& p_used = dropout ? pd : p;  // p~
      product(block(a, b, h, t).middleCols(i0, nq), v_v, p_used, false);
      // o = v p~          =>  dv += do p~^T,   dp~ = v^T do.
      product(dvb.leftCols(nk), do_i, p_used.transpose(), true);
      dp.resize(nk, nq);
      product(dp, v_v.transpose(), do_i, false);
      // p~ = Dropout(p)   =>  dp = the same mask and scale applied to dp~.
      apply_dropout(dp, ctx, b, hg, t, i0);
      // p = softmax(s)    =>  ds(:, i) = p(:, i) .* (dp(:, i) - p(:, i) . dp(:, i)).
      // Masked scores are constants: p is exactly 0 there, so ds is too.
      Matrix<S>& ds = dp;
      softmax_cols_backward<S>(p, dp, ds);
      zero_masked_gradients(i0, flags, ds);
      // s = k^T q         =>  dq = k ds,  dk += q ds^T  (w.r.t. the scaled k).
      product(block(dq, b, h, t).middleCols(i0, nq), k_v, ds, false);
      product(dkb.leftCols(nk), q_i, ds.transpose(), true);
    }
  });

  q_buf.reset();  // q, k and v are no longer read
  k_buf.reset();
  v_buf.reset();
  // q = W_q xn, k = W_k xn / sqrt(Dh), v = W_v xn  =>  dW += d(.) xn^T,
  // dxn += W_q^T dq + W_k^T dk + W_v^T dv, the 1/sqrt(Dh) moved onto dk (this group's rows).
  detail::project_qkv_backward<S>(params, qkv_, heads, cfg_.head_size, input, dq, dk, dv, dinput,
                                  ws);
}

/// The full-attention sublayer a user instantiates: LN -> FullAttention -> W_o (-> dropout).
template <class S>
using FullAttentionLayer = AttentionSublayer<S, FullAttention<S>>;
template <class S>
using FullAttentionLayerConfig = typename FullAttentionLayer<S>::Config;

}  // namespace reformer
