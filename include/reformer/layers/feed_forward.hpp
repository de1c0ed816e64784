#pragma once
// The chunked feed-forward sublayer (docs/DESIGN.md 1.5, Hugging Face ChunkReformerFeedForward):
//
//   xn = LN_f(x)              D x n
//   h  = W1 xn + b1           F x n      W1: [F, D], b1: [F]
//   hd = Dropout_1(h)                    key ctx.rng(stream::kFeedForwardActDropout)
//   g  = act(hd)              F x n      relu | gelu (exact erf form)
//   z  = W2 g + b2            D x n      W2: [D, F], b2: [D]
//   y  = Dropout_2(z)                    key ctx.rng(stream::kFeedForwardOutputDropout)
//
// Every token is independent, so the map is applied to chunks of `chunk_size` consecutive
// columns (0 = all columns at once): only F x chunk hidden buffers exist at any time, in the
// forward AND the backward pass (which recomputes each chunk's hidden activations). The dropout
// draw index is the element's linear index in the full F x N / D x N matrix, so chunked and
// unchunked calls use the same masks (and differ only by floating-point rounding order).
// Dropout is active only when ctx.training; both dropouts use `dropout` (HF hidden_dropout_prob).
//
// Parameters (HF names, state-dict order): <prefix>layer_norm.weight / .bias [D],
// <prefix>dense.dense.weight [F, D], <prefix>dense.dense.bias [F],
// <prefix>output.dense.weight [D, F], <prefix>output.dense.bias [D].
//
// Threads: chunks are processed one after another; inside a chunk every product is split over
// fixed blocks of its output (ops/linear.hpp), so the parameter gradients need
// no per-thread copies and results are bitwise identical for any thread count.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/sublayer.hpp"
#include "reformer/ops/activations.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"

#include <algorithm>
#include <string>

namespace reformer {

struct FeedForwardConfig {
  Index hidden_size = 0;                         ///< D
  Index feed_forward_size = 0;                   ///< F (HF feed_forward_size)
  Activation activation = Activation::kGelu;     ///< HF hidden_act
  double layer_norm_eps = kLayerNormDefaultEps;  ///< HF layer_norm_eps
  double dropout = 0.0;                          ///< HF hidden_dropout_prob (after W1 and W2)
  Index chunk_size = 0;  ///< tokens per chunk (HF chunk_size_feed_forward); 0 = all at once

  /// The feed-forward of a model configuration (a ReformerConfig, model/config.hpp).
  template <class ModelConfig>
  static FeedForwardConfig from(const ModelConfig& m) {
    return {/*hidden_size=*/m.hidden_size,
            /*feed_forward_size=*/m.feed_forward_size,
            /*activation=*/m.activation(),
            /*layer_norm_eps=*/m.layer_norm_eps,
            /*dropout=*/m.hidden_dropout_prob,
            /*chunk_size=*/m.chunk_size_feed_forward};
  }
};

template <class S>
class FeedForward {
 public:
  using Scalar = S;
  using Config = FeedForwardConfig;

  /// Registers the five parameters under `prefix` (e.g. "...layers.0.feed_forward.").
  /// Throws InvalidArgument on a bad config.
  FeedForward(const Config& cfg, Parameters<S>& params, const std::string& prefix = "")
      : cfg_(validated(cfg)),
        ln_weight_(params.add(prefix + "layer_norm.weight", {cfg.hidden_size})),
        ln_bias_(params.add(prefix + "layer_norm.bias", {cfg.hidden_size})),
        w1_(params.add(prefix + "dense.dense.weight", {cfg.feed_forward_size, cfg.hidden_size})),
        b1_(params.add(prefix + "dense.dense.bias", {cfg.feed_forward_size})),
        w2_(params.add(prefix + "output.dense.weight", {cfg.hidden_size, cfg.feed_forward_size})),
        b2_(params.add(prefix + "output.dense.bias", {cfg.hidden_size})) {}

  const Config& config() const { return cfg_; }
  Index hidden_size() const { return cfg_.hidden_size; }
  Index feed_forward_size() const { return cfg_.feed_forward_size; }

  SlotId layer_norm_weight_slot() const { return ln_weight_; }
  SlotId layer_norm_bias_slot() const { return ln_bias_; }
  SlotId dense_weight_slot() const { return w1_; }
  SlotId dense_bias_slot() const { return b1_; }
  SlotId output_weight_slot() const { return w2_; }
  SlotId output_bias_slot() const { return b2_; }

  /// Hugging Face initialisation: weights ~ normal(0, std) drawn from `rng`, biases 0,
  /// LayerNorm weight 1 and bias 0.
  void init(Parameters<S>& params, const Rng& rng, double std) const;

  /// y = f(x). x and y are D x (ctx.batch * T); y must not alias x.
  void forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
               const Context& ctx) const;

  /// The sublayer contract's backward (sublayer.hpp): recomputes f from x chunk by chunk and
  /// updates in place
  ///   dx += (df/dx)^T dy,   y -= f(x),
  /// accumulating the parameter gradients. dx and y alias neither x, dy nor each other.
  void backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                MatrixRef<S> y, const Context& ctx) const;

 private:
  // Rough cost of one activation (erf) in flops, for the parallel threshold.
  static constexpr double kActivationFlops = tuning::kActivationFlops;

  static const Config& validated(const Config& cfg) {
    const char* where = "FeedForward";
    detail::require_positive(where, "hidden_size", cfg.hidden_size);
    detail::require_positive(where, "feed_forward_size", cfg.feed_forward_size);
    detail::require_positive(where, "layer_norm_eps", cfg.layer_norm_eps);
    detail::require_dropout(where, "dropout", cfg.dropout);
    REFORMER_REQUIRE(cfg.chunk_size >= 0, InvalidArgument, where, "chunk_size = ", cfg.chunk_size,
                     " must be >= 0 (0 = no chunking)");
    return cfg;
  }

  Index chunk_columns(Index n) const {
    return cfg_.chunk_size == 0 ? n : std::min(cfg_.chunk_size, n);
  }
  double dropout_p(const Context& ctx) const { return ctx.training ? cfg_.dropout : 0.0; }

  // xn = LN_f(x_c), hd = Dropout_1(W1 xn + b1) for the chunk starting at global column c0.
  template <class XN, class H>
  void hidden(const Parameters<S>& params, ConstMatrixRef<S> x_c, Index c0, XN& xn, H& hd,
              const Context& ctx) const {
    layer_norm_forward_parallel<S>(x_c, params.value_vector(ln_weight_),
                                   params.value_vector(ln_bias_), cfg_.layer_norm_eps, xn);
    parallel_product(hd, params.value(w1_), xn, false);
    const auto b1 = params.value_vector(b1_);
    for_column_blocks(hd.cols(), double(hd.rows()),
                      [&](Index b0, Index nb) { hd.middleCols(b0, nb).colwise() += b1; });
    dropout_parallel<S>(ctx.rng(stream::kFeedForwardActDropout), dropout_p(ctx), c0, hd, hd);
  }

  template <class H>
  void activation_inplace(H& h) const {
    for_column_blocks(h.cols(), kActivationFlops * double(h.rows()), [&](Index b0, Index nb) {
      activation_forward<S>(cfg_.activation, h.middleCols(b0, nb), h.middleCols(b0, nb));
    });
  }

  // out = Dropout_2(W2 g + b2) for the chunk starting at global column c0.
  template <class G>
  void output(const Parameters<S>& params, const G& g, Index c0, MatrixRef<S> out,
              const Context& ctx) const {
    parallel_product(out, params.value(w2_), g, false);
    const auto b2 = params.value_vector(b2_);
    for_column_blocks(out.cols(), double(out.rows()),
                      [&](Index b0, Index nb) { out.middleCols(b0, nb).colwise() += b2; });
    dropout_parallel<S>(ctx.rng(stream::kFeedForwardOutputDropout), dropout_p(ctx), c0, out, out);
  }

  Config cfg_;
  SlotId ln_weight_, ln_bias_, w1_, b1_, w2_, b2_;
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class FeedForward<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
void FeedForward<S>::init(Parameters<S>& params, const Rng& rng, double std) const {
  params.value_vector(ln_weight_).setOnes();
  params.value_vector(ln_bias_).setZero();
  init_normal(params, w1_, rng.derive(0), std);
  params.value_vector(b1_).setZero();
  init_normal(params, w2_, rng.derive(1), std);
  params.value_vector(b2_).setZero();
}

template <class S>
void FeedForward<S>::forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                             const Context& ctx) const {
  const char* where = "FeedForward::forward";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_shape(where, "y", y.rows(), y.cols(), x.rows(), x.cols());
  const Index chunk = chunk_columns(x.cols());
  Matrix<S> xn(hidden_size(), chunk), h(feed_forward_size(), chunk);
  for (Index c0 = 0; c0 < x.cols(); c0 += chunk) {
    const Index nc = std::min(chunk, x.cols() - c0);
    auto xn_c = xn.leftCols(nc);
    auto h_c = h.leftCols(nc);
    hidden(params, x.middleCols(c0, nc), c0, xn_c, h_c, ctx);  // h_c = hd
    activation_inplace(h_c);                                   // h_c = g
    output(params, h_c, c0, y.middleCols(c0, nc), ctx);
  }
}

template <class S>
void FeedForward<S>::backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                              MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx) const {
  const char* where = "FeedForward::backward";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_backward_buffers<S>(where, x, dy, dx, y);
  const Index chunk = chunk_columns(x.cols());
  const Index d = hidden_size(), f = feed_forward_size();
  // Per-chunk buffers: D x chunk and F x chunk, reused by every chunk.
  Matrix<S> xn(d, chunk), dz(d, chunk), hd(f, chunk), g(f, chunk);
  VectorMap<S> db1 = params.grad_vector(b1_), db2 = params.grad_vector(b2_);
  const Rng rng1 = ctx.rng(stream::kFeedForwardActDropout);
  const Rng rng2 = ctx.rng(stream::kFeedForwardOutputDropout);
  const double p = dropout_p(ctx);

  for (Index c0 = 0; c0 < x.cols(); c0 += chunk) {
    const Index nc = std::min(chunk, x.cols() - c0);
    auto xn_c = xn.leftCols(nc);
    auto dz_c = dz.leftCols(nc);
    auto hd_c = hd.leftCols(nc);
    auto g_c = g.leftCols(nc);
    // Forward, recomputed: xn, hd = Dropout_1(W1 xn + b1), g = act(hd), fx = Dropout_2(z).
    hidden(params, x.middleCols(c0, nc), c0, xn_c, hd_c, ctx);
    for_column_blocks(nc, kActivationFlops * double(f), [&](Index b0, Index nb) {
      activation_forward<S>(cfg_.activation, hd_c.middleCols(b0, nb), g_c.middleCols(b0, nb));
    });
    auto fx_c = dz_c;  // f(x) of the chunk, until dz overwrites it
    output(params, g_c, c0, fx_c, ctx);
    add_parallel<S>(y.middleCols(c0, nc), fx_c, S(-1));  // y -= f(x)

    // y = Dropout_2(z)       =>  dz = mask_2 .* dy / (1 - p).
    dropout_parallel<S>(rng2, p, c0, dy.middleCols(c0, nc), dz_c);
    // z = W2 g + b2          =>  dW2 += dz g^T,  db2 += sum_n dz,  dg = W2^T dz.
    linear_weight_grads<S>(dz_c, g_c, params.grad(w2_), &db2);
    auto dg_c = g_c;  // g is no longer needed: dg overwrites it
    parallel_product(dg_c, params.value(w2_).transpose(), dz_c, false);
    // g = act(hd)            =>  dhd = act'(hd) .* dg;
    // hd = Dropout_1(h)      =>  dh = mask_1 .* dhd / (1 - p).
    auto dh_c = g_c;
    for_column_blocks(nc, kActivationFlops * double(f), [&](Index b0, Index nb) {
      activation_backward<S>(cfg_.activation, hd_c.middleCols(b0, nb), dg_c.middleCols(b0, nb),
                             dh_c.middleCols(b0, nb));
    });
    dropout_parallel<S>(rng1, p, c0, dh_c, dh_c);
    // h = W1 xn + b1         =>  dW1 += dh xn^T,  db1 += sum_n dh,  dxn = W1^T dh.
    linear_weight_grads<S>(dh_c, xn_c, params.grad(w1_), &db1);
    auto dxn_c = dz_c;  // dz is no longer needed: dxn overwrites it
    parallel_product(dxn_c, params.value(w1_).transpose(), dh_c, false);
    // xn = LN_f(x)           =>  dx +=, dgamma +=, dbeta +=.
    layer_norm_backward_parallel<S>(
        x.middleCols(c0, nc), params.value_vector(ln_weight_), cfg_.layer_norm_eps, dxn_c,
        dx.middleCols(c0, nc), params.grad_vector(ln_weight_), params.grad_vector(ln_bias_), true);
  }
}

}  // namespace reformer
