#pragma once
// The chunked feed-forward sublayer (docs/DESIGN.md 1.5, Hugging Face ChunkReformerFeedForward):
//
//   xn = LN_f(x)              D x n
//   h  = W1 xn + b1           F x n      W1: [F, D], b1: [F]
//   hd = Dropout_1(h)                    key ctx.rng(stream::kFeedForwardActDropout)
//   g  = act(hd)              F x n      relu, gelu, gelu_new or silu (ops/activations.hpp)
//   z  = W2 g + b2            D x n      W2: [D, F], b2: [D]
//   y  = Dropout_2(z)                    key ctx.rng(stream::kFeedForwardOutputDropout)
//
// Every token is independent. The dropout draw index is the element's linear index in the full
// F x N / D x N matrix (ops/dropout.hpp), so however the columns are cut the masks are those of
// the unchunked call, and results differ only by floating-point rounding order.
// Dropout is active only when ctx.training; both dropouts use `dropout` (HF hidden_dropout_prob).
//
// Two kernels compute the same maths (Config::fused chooses; the default is fused):
//
// fused (default): the N = ctx.batch * T columns are cut into fixed blocks of
//   column_block(N) columns (256 to 512, a function of N only), and each block runs the whole
//   chain LN -> W1 + b1 -> Dropout_1 -> act -> W2 + b2 -> Dropout_2 on its own D x block and F x
//   block buffers (drawn from ctx.workspace), the blocks in parallel. The backward pass recomputes
//   the chain per block. Its parameter gradients are summed in a fixed number of groups of
//   consecutive blocks, G = min(blocks, tuning::kFeedForwardGradGroups): group 0 accumulates
//   straight into the gradients, groups 1..G-1 into partials (2 F D + F + 3 D scalars each, from
//   ctx.workspace) added in group order at the end. A call with a single block splits its products
//   over output blocks (ops/linear.hpp) instead, so a short sequence still uses every thread. The
//   kernel ignores chunk_size: its blocks already bound the hidden buffers to F x block columns,
//   whatever chunk_size says. Its recompute evaluates a smooth activation once for both act(hd)
//   and act'(hd) (ops/activations.hpp), where the unfused kernel evaluates act' separately.
// unfused (the reference): chunks of `chunk_size` consecutive columns (0 = all at once), one
//   after another; inside a chunk every product is split over fixed blocks of its output
//   (ops/linear.hpp). Buffers are D x chunk and F x chunk (from ctx.workspace).
//
// Every blocking is a function of the shapes only, so both kernels give bitwise identical
// results for any thread count.
//
// Kept activations (the optional part of the sublayer contract, sublayer.hpp; fused kernel
// only): forward_keeping() computes forward()'s chain, bitwise, and keeps, for every column,
// xn (D), hd (F) and f(x) (D): kept_bytes(N, ctx) = (2 D + F) N scalars. backward_from_kept() then
// skips LN, W1 and W2: it evaluates act and act' once from the kept hd, as the recompute does,
// and runs the rest of the backward. At the same x its dx and parameter gradients are bitwise
// those of backward(); its y -= f(x) subtracts forward()'s f(x) instead of the recompute's (the
// two differ by the rounding of act, 4.3 of docs/DESIGN.md). The unfused kernel keeps nothing
// (kept_bytes = 0).
//
// Parameters (HF names, state-dict order): <prefix>layer_norm.weight / .bias [D],
// <prefix>dense.dense.weight [F, D], <prefix>dense.dense.bias [F],
// <prefix>output.dense.weight [D, F], <prefix>output.dense.bias [D].
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/sublayer.hpp"
#include "reformer/ops/activations.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"

#include <algorithm>
#include <cstddef>
#include <string>

namespace reformer {

struct FeedForwardConfig {
  Index hidden_size = 0;                         ///< D
  Index feed_forward_size = 0;                   ///< F (HF feed_forward_size)
  Activation activation = Activation::kGelu;     ///< HF hidden_act
  double layer_norm_eps = kLayerNormDefaultEps;  ///< HF layer_norm_eps
  double dropout = 0.0;                          ///< HF hidden_dropout_prob (after W1 and W2)
  /// Tokens per chunk of the unfused kernel (HF chunk_size_feed_forward); 0 = all at once.
  /// The fused kernel ignores it (see the file comment); the maths does not depend on it.
  Index chunk_size = 0;
  /// true: the fused column-block kernel; false: the unfused chunked reference kernel.
  bool fused = true;

  /// The feed-forward of a model configuration (a ReformerConfig, model/config.hpp).
  template <class ModelConfig>
  static FeedForwardConfig from(const ModelConfig& m) {
    return {/*hidden_size=*/m.hidden_size,
            /*feed_forward_size=*/m.feed_forward_size,
            /*activation=*/m.activation(),
            /*layer_norm_eps=*/m.layer_norm_eps,
            /*dropout=*/m.hidden_dropout_prob,
            /*chunk_size=*/m.chunk_size_feed_forward,
            /*fused=*/true};
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

  /// The column block of the fused kernel for N = ctx.batch * T columns (a function of N only):
  /// about tuning::kFeedForwardBlocks blocks, a multiple of 64 in
  /// [tuning::kFeedForwardMinColumns, tuning::kFeedForwardMaxColumns].
  static Index column_block(Index n) {
    const Index even_split = (n + tuning::kFeedForwardBlocks - 1) / tuning::kFeedForwardBlocks;
    return std::clamp(round_up(even_split, 64), tuning::kFeedForwardMinColumns,
                      tuning::kFeedForwardMaxColumns);
  }

  /// y = f(x). x and y are D x (ctx.batch * T); y must not alias x.
  void forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
               const Context& ctx) const;

  /// The sublayer contract's backward (sublayer.hpp): recomputes f from x block by block (or
  /// chunk by chunk) and updates in place
  ///   dx += (df/dx)^T dy,   y -= f(x),
  /// accumulating the parameter gradients. dx and y alias neither x, dy nor each other.
  void backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                MatrixRef<S> y, const Context& ctx) const;

  /// Bytes forward_keeping() keeps for n columns: (2 D + F) n scalars; 0 for the unfused
  /// kernel, which keeps nothing.
  std::size_t kept_bytes(Index n, const Context& /*ctx*/) const {
    if (!cfg_.fused) return 0;
    return static_cast<std::size_t>(2 * hidden_size() + feed_forward_size()) *
           static_cast<std::size_t>(n) * sizeof(S);
  }

  /// y = f(x), bitwise forward()'s, keeping xn, hd and f(x) in `kept` (see the file comment).
  /// InvalidArgument for the unfused kernel.
  void forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                       const Context& ctx, KeptActivations<S>& kept) const;

  /// backward() from what forward_keeping() kept instead of a recompute (same context): in place
  ///   dx += (df/dx)^T dy,   y -= f(x),   parameter gradients +=.
  /// x is the input as the caller has it now (its LayerNorm statistics are taken from it). The
  /// kept matrices are overwritten.
  void backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                          MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                          KeptActivations<S>& kept) const;

 private:
  // Rough cost of one activation (erf) in flops, for the parallel threshold.
  static constexpr double kActivationFlops = tuning::kActivationFlops;

  // The kept matrices (forward_keeping).
  enum KeptMatrix : std::size_t { kKeptXn, kKeptOutput, kKeptHidden };

  // Where one group of the fused backward accumulates its parameter gradients. dW1 and dW2 are
  // held transposed (column-major D x F and F x D: the memory of the row-major [F, D] / [D, F]
  // gradients).
  struct GradSink {
    MatrixRef<S> dw1_t;               // D x F
    MatrixRef<S> dw2_t;               // F x D
    VectorRef<S> db1;                 // F
    VectorRef<S> db2, dgamma, dbeta;  // D
  };

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

  // out = lhs rhs (out += lhs rhs when `accumulate`): split over fixed output blocks
  // (parallel_product) when `split`, else one product on the calling thread.
  template <class Out, class Lhs, class Rhs>
  static void product(Out&& out, const Lhs& lhs, const Rhs& rhs, bool accumulate, bool split) {
    if (split) {
      parallel_product(out, lhs, rhs, accumulate);
    } else {
      reformer::product(out, lhs, rhs, accumulate);
    }
  }

  // xn = LN_f(x_c), hd = Dropout_1(W1 xn + b1) for the columns starting at global column c0.
  template <class XN, class H>
  void hidden(const Parameters<S>& params, ConstMatrixRef<S> x_c, Index c0, XN& xn, H& hd,
              const Context& ctx, bool split) const {
    layer_norm_forward_parallel<S>(x_c, params.value_vector(ln_weight_),
                                   params.value_vector(ln_bias_), cfg_.layer_norm_eps, xn);
    product(hd, params.value(w1_), xn, false, split);
    const auto b1 = params.value_vector(b1_);
    for_column_blocks(hd.cols(), double(hd.rows()),
                      [&](Index b0, Index nb) { hd.middleCols(b0, nb).colwise() += b1; });
    dropout_parallel<S>(ctx.rng(stream::kFeedForwardActDropout), dropout_p(ctx), c0, hd, hd);
  }

  // g = act(hd); g may be hd.
  template <class H, class G>
  void activation(const H& hd, G& g) const {
    for_column_blocks(hd.cols(), kActivationFlops * double(hd.rows()), [&](Index b0, Index nb) {
      activation_forward<S>(cfg_.activation, hd.middleCols(b0, nb), g.middleCols(b0, nb));
    });
  }

  // Whether the fused backward keeps act'(hd) from its recompute (one evaluation of a smooth
  // activation instead of two); relu keeps its exact [hd > 0] select.
  bool keeps_derivative() const { return cfg_.activation != Activation::kRelu; }

  // What the fused backward needs of the activation: g = act(hd) and, for a smooth activation,
  // hd = act'(hd); relu leaves hd (g is not hd).
  void activation_for_backward(MatrixRef<S> hd, MatrixRef<S> g) const {
    if (keeps_derivative()) {
      activation_with_derivative(hd, g);
    } else {
      activation(hd, g);
    }
  }

  // g = act(hd) and hd = act'(hd) (g is not hd).
  template <class H, class G>
  void activation_with_derivative(H& hd, G& g) const {
    for_column_blocks(hd.cols(), kActivationFlops * double(hd.rows()), [&](Index b0, Index nb) {
      activation_forward_with_derivative<S>(cfg_.activation, hd.middleCols(b0, nb),
                                            g.middleCols(b0, nb), hd.middleCols(b0, nb));
    });
  }

  // out = Dropout_2(W2 g + b2) for the columns starting at global column c0.
  template <class G>
  void output(const Parameters<S>& params, const G& g, Index c0, MatrixRef<S> out,
              const Context& ctx, bool split) const {
    product(out, params.value(w2_), g, false, split);
    const auto b2 = params.value_vector(b2_);
    for_column_blocks(out.cols(), double(out.rows()),
                      [&](Index b0, Index nb) { out.middleCols(b0, nb).colwise() += b2; });
    dropout_parallel<S>(ctx.rng(stream::kFeedForwardOutputDropout), dropout_p(ctx), c0, out, out);
  }

  // The fused forward; with `kept`, the same chain with xn, hd and f(x) kept there.
  void forward_fused(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                     const Context& ctx, KeptActivations<S>* kept) const;
  // The fused backward; with `kept`, from the chain forward_fused kept there.
  void backward_fused(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                      MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                      KeptActivations<S>* kept) const;
  // The forward chain of the columns [c0, c0 + x_b.cols()) as the fused backward needs it:
  // xn, hd = Dropout_1(W1 xn + b1), g = act(hd), z = f(x); a smooth activation leaves
  // hd = act'(hd). xn, z: D x nc; hd, g: F x nc.
  void chain_block(const Parameters<S>& params, ConstMatrixRef<S> x_b, Index c0, MatrixRef<S> xn,
                   MatrixRef<S> hd, MatrixRef<S> g, MatrixRef<S> z, const Context& ctx,
                   bool split) const;
  // The fused backward of those columns from their chain (recomputed or kept), gradients into
  // `sink`; z and g are overwritten.
  void backward_block(const Parameters<S>& params, ConstMatrixRef<S> x_b, ConstMatrixRef<S> dy_b,
                      MatrixRef<S> dx_b, MatrixRef<S> y_b, Index c0, ConstMatrixRef<S> xn,
                      MatrixRef<S> z, ConstMatrixRef<S> hd, MatrixRef<S> g, GradSink& sink,
                      const Context& ctx, bool split) const;
  void check_kept_call(const char* where) const {
    REFORMER_REQUIRE(cfg_.fused, InvalidArgument, where,
                     "only the fused kernel keeps activations (fused = false: kept_bytes() is 0)");
  }
  void forward_unfused(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                       const Context& ctx) const;
  void backward_unfused(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                        MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx) const;

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
  if (cfg_.fused) {
    forward_fused(params, x, y, ctx, nullptr);
  } else {
    forward_unfused(params, x, y, ctx);
  }
}

template <class S>
void FeedForward<S>::backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                              MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx) const {
  const char* where = "FeedForward::backward";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_backward_buffers<S>(where, x, dy, dx, y);
  if (cfg_.fused) {
    backward_fused(params, x, dy, dx, y, ctx, nullptr);
  } else {
    backward_unfused(params, x, dy, dx, y, ctx);
  }
}

template <class S>
void FeedForward<S>::forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x,
                                     MatrixRef<S> y, const Context& ctx,
                                     KeptActivations<S>& kept) const {
  const char* where = "FeedForward::forward_keeping";
  check_kept_call(where);
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_shape(where, "y", y.rows(), y.cols(), x.rows(), x.cols());
  forward_fused(params, x, y, ctx, &kept);
}

template <class S>
void FeedForward<S>::backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x,
                                        ConstMatrixRef<S> dy, MatrixRef<S> dx, MatrixRef<S> y,
                                        const Context& ctx, KeptActivations<S>& kept) const {
  const char* where = "FeedForward::backward_from_kept";
  check_kept_call(where);
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_backward_buffers<S>(where, x, dy, dx, y);
  backward_fused(params, x, dy, dx, y, ctx, &kept);
}

// ---- fused kernel -------------------------------------------------------------------------------

template <class S>
void FeedForward<S>::forward_fused(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                                   const Context& ctx, KeptActivations<S>* kept) const {
  const Index n = x.cols(), d = hidden_size(), f = feed_forward_size();
  const Index block = column_block(n);
  const Index blocks = num_blocks(n, block);
  const Index width = std::min(block, n);  // every block's buffers have this many columns
  const bool split = blocks == 1;
  // The kept matrices (empty when nothing is kept): xn, f(x): D x n; hd: F x n.
  const auto kept_matrix = [&](KeptMatrix i, Index rows) {
    return kept != nullptr ? kept->matrix(i, rows, n) : MatrixRef<S>(y.leftCols(0));
  };
  MatrixRef<S> kxn = kept_matrix(kKeptXn, d), kz = kept_matrix(kKeptOutput, d);
  MatrixRef<S> khd = kept_matrix(kKeptHidden, f);
  parallel_items(blocks, 4.0 * double(d) * double(f) * double(n), [&](Index blk) {
    const Index c0 = blk * block;
    const Index nc = std::min(block, n - c0);
    const auto x_b = x.middleCols(c0, nc);
    if (kept != nullptr) {
      // The same chain with xn, hd and f(x) in the kept matrices; g in a block buffer.
      auto xn = kxn.middleCols(c0, nc), hd = khd.middleCols(c0, nc), z = kz.middleCols(c0, nc);
      Scratch<S> g_s(ctx.workspace, f, width);
      auto g = g_s.map().leftCols(nc);
      hidden(params, x_b, c0, xn, hd, ctx, split);
      activation(hd, g);
      output(params, g, c0, z, ctx, split);
      y.middleCols(c0, nc) = z;
      return;
    }
    Scratch<S> xn_s(ctx.workspace, d, width), h_s(ctx.workspace, f, width);
    auto xn = xn_s.map().leftCols(nc);           // D x nc
    auto h = h_s.map().leftCols(nc);             // F x nc
    hidden(params, x_b, c0, xn, h, ctx, split);  // h = hd
    activation(h, h);                            // h = g
    output(params, h, c0, y.middleCols(c0, nc), ctx, split);
  });
}

template <class S>
void FeedForward<S>::chain_block(const Parameters<S>& params, ConstMatrixRef<S> x_b, Index c0,
                                 MatrixRef<S> xn, MatrixRef<S> hd, MatrixRef<S> g, MatrixRef<S> z,
                                 const Context& ctx, bool split) const {
  hidden(params, x_b, c0, xn, hd, ctx, split);
  activation_for_backward(hd, g);
  output(params, g, c0, z, ctx, split);
}

template <class S>
void FeedForward<S>::backward_block(const Parameters<S>& params, ConstMatrixRef<S> x_b,
                                    ConstMatrixRef<S> dy_b, MatrixRef<S> dx_b, MatrixRef<S> y_b,
                                    Index c0, ConstMatrixRef<S> xn, MatrixRef<S> z,
                                    ConstMatrixRef<S> hd, MatrixRef<S> g, GradSink& sink,
                                    const Context& ctx, bool split) const {
  // xn: D x nc; z: D x nc, f(x), then dz, then dxn, then the LN input gradient;
  // hd: F x nc, act'(hd) (hd for relu); g: F x nc, g, then dg, then dh.
  const Index nc = x_b.cols();
  const double p = dropout_p(ctx);
  y_b -= z;  // y -= f(x)

  // y = Dropout_2(W2 g + b2)  =>  dz = mask_2 .* dy / (1 - p);
  //                                dW2 += dz g^T (dW2^T += g dz^T),  db2 += sum_n dz.
  dropout_parallel<S>(ctx.rng(stream::kFeedForwardOutputDropout), p, c0, dy_b, z);
  product(sink.dw2_t, g, z.transpose(), true, split);
  sink.db2 += z.rowwise().sum();
  // dg = W2^T dz (g is no longer needed: dg overwrites it).
  product(g, params.value(w2_).transpose(), z, false, split);
  // g = act(hd)  =>  dhd = act'(hd) .* dg;   hd = Dropout_1(h)  =>  dh = mask_1 .* dhd / (1 - p).
  for_column_blocks(nc, kActivationFlops * double(g.rows()), [&](Index b0, Index nb) {
    if (keeps_derivative()) {
      g.middleCols(b0, nb).array() *= hd.middleCols(b0, nb).array();  // hd: act'(hd)
    } else {
      activation_backward<S>(cfg_.activation, hd.middleCols(b0, nb), g.middleCols(b0, nb),
                             g.middleCols(b0, nb));
    }
  });
  dropout_parallel<S>(ctx.rng(stream::kFeedForwardActDropout), p, c0, g, g);
  // h = W1 xn + b1  =>  dW1 += dh xn^T (dW1^T += xn dh^T),  db1 += sum_n dh,  dxn = W1^T dh.
  product(sink.dw1_t, xn, g.transpose(), true, split);
  sink.db1 += g.rowwise().sum();
  product(z, params.value(w1_).transpose(), g, false, split);
  // xn = LN_f(x)  =>  dx += LN'(x)^T dxn,  dgamma +=, dbeta += (z: dxn, then its LN gradient).
  layer_norm_backward<S>(x_b, params.value_vector(ln_weight_), cfg_.layer_norm_eps, z, z,
                         sink.dgamma, sink.dbeta);
  dx_b += z;
}

template <class S>
void FeedForward<S>::backward_fused(Parameters<S>& params, ConstMatrixRef<S> x,
                                    ConstMatrixRef<S> dy, MatrixRef<S> dx, MatrixRef<S> y,
                                    const Context& ctx, KeptActivations<S>* kept) const {
  const Index n = x.cols(), d = hidden_size(), f = feed_forward_size();
  const Index block = column_block(n);
  const Index blocks = num_blocks(n, block);
  const Index width = std::min(block, n);
  const Index groups = std::min(blocks, tuning::kFeedForwardGradGroups);
  const bool split = blocks == 1;
  // The kept chain (empty when it is recomputed): xn, f(x): D x n; hd: F x n. InvalidArgument
  // when the forward kept them for another shape.
  const auto kept_matrix = [&](KeptMatrix i, Index rows) {
    return kept != nullptr ? kept->kept("FeedForward::backward_from_kept", i, rows, n)
                           : MatrixRef<S>(dx.leftCols(0));
  };
  MatrixRef<S> kxn = kept_matrix(kKeptXn, d), kz = kept_matrix(kKeptOutput, d);
  MatrixRef<S> khd = kept_matrix(kKeptHidden, f);

  // Partial gradients of groups 1..G-1: dW1^T (D x F) and dW2^T (F x D) side by side, and the
  // vectors [db1 (F); db2, dgamma, dbeta (D each)] one column per group.
  const Index partials = groups - 1;
  Scratch<S> pw1(ctx.workspace, d, f * partials), pw2(ctx.workspace, f, d * partials);
  Scratch<S> pvec(ctx.workspace, f + 3 * d, partials);
  // Group 0 accumulates into the gradients themselves: the row-major [F, D] storage of dW1 is
  // dW1^T column-major, likewise dW2.
  Eigen::Map<Matrix<S>> dw1_t(params.grad(w1_).data(), d, f);
  Eigen::Map<Matrix<S>> dw2_t(params.grad(w2_).data(), f, d);

  const Parameters<S>& values = params;
  parallel_items(groups, 12.0 * double(d) * double(f) * double(n), [&](Index grp) {
    // Group grp owns the blocks [blocks * grp / G, blocks * (grp + 1) / G).
    const Index first = blocks * grp / groups, last = blocks * (grp + 1) / groups;
    // The chain of a block: recomputed into the group's buffers, or kept (but g).
    Scratch<S> xn, z, hd, g(ctx.workspace, f, width);
    if (kept == nullptr) {
      xn.resize(ctx.workspace, d, width);
      z.resize(ctx.workspace, d, width);
      hd.resize(ctx.workspace, f, width);
    }
    auto sink = [&]() -> GradSink {
      if (grp == 0) {
        return {dw1_t,
                dw2_t,
                params.grad_vector(b1_),
                params.grad_vector(b2_),
                params.grad_vector(ln_weight_),
                params.grad_vector(ln_bias_)};
      }
      auto w1p = pw1.map().middleCols((grp - 1) * f, f);
      auto w2p = pw2.map().middleCols((grp - 1) * d, d);
      auto vp = pvec.map().col(grp - 1);
      w1p.setZero();
      w2p.setZero();
      vp.setZero();
      return {
          w1p, w2p, vp.head(f), vp.segment(f, d), vp.segment(f + d, d), vp.segment(f + 2 * d, d)};
    }();
    for (Index blk = first; blk < last; ++blk) {
      const Index c0 = blk * block;
      const Index nc = std::min(block, n - c0);
      const auto x_b = x.middleCols(c0, nc);
      auto g_b = g.map().leftCols(nc);
      if (kept != nullptr) {
        // xn, hd and f(x) as the forward left them; g = act(hd) (and hd = act'(hd)) from hd.
        auto hd_b = khd.middleCols(c0, nc);
        activation_for_backward(hd_b, g_b);
        backward_block(values, x_b, dy.middleCols(c0, nc), dx.middleCols(c0, nc),
                       y.middleCols(c0, nc), c0, kxn.middleCols(c0, nc), kz.middleCols(c0, nc),
                       hd_b, g_b, sink, ctx, split);
        continue;
      }
      auto xn_b = xn.map().leftCols(nc), z_b = z.map().leftCols(nc);
      auto hd_b = hd.map().leftCols(nc);
      chain_block(values, x_b, c0, xn_b, hd_b, g_b, z_b, ctx, split);
      backward_block(values, x_b, dy.middleCols(c0, nc), dx.middleCols(c0, nc),
                     y.middleCols(c0, nc), c0, xn_b, z_b, hd_b, g_b, sink, ctx, split);
    }
  });
  if (partials == 0) return;

  // gradient += partial_1 + ... + partial_{G-1}, in group order, over fixed slices.
  const auto add_partials = [&](S* grad, const S* partial, Index size) {
    constexpr Index kSlice = Index{1} << 14;
    parallel_items(num_blocks(size, kSlice), double(partials) * double(size), [&](Index s) {
      const Index i0 = s * kSlice, len = std::min(kSlice, size - i0);
      Eigen::Map<Vector<S>> out(grad + i0, len);
      for (Index k = 0; k < partials; ++k)
        out += Eigen::Map<const Vector<S>>(partial + k * size + i0, len);
    });
  };
  add_partials(dw1_t.data(), pw1.map().data(), d * f);
  add_partials(dw2_t.data(), pw2.map().data(), d * f);
  const auto vec = pvec.map();
  for (Index k = 0; k < partials; ++k) {
    params.grad_vector(b1_) += vec.col(k).head(f);
    params.grad_vector(b2_) += vec.col(k).segment(f, d);
    params.grad_vector(ln_weight_) += vec.col(k).segment(f + d, d);
    params.grad_vector(ln_bias_) += vec.col(k).segment(f + 2 * d, d);
  }
}

// ---- unfused (reference) kernel -----------------------------------------------------------------

template <class S>
void FeedForward<S>::forward_unfused(const Parameters<S>& params, ConstMatrixRef<S> x,
                                     MatrixRef<S> y, const Context& ctx) const {
  const Index chunk = chunk_columns(x.cols());
  Scratch<S> xn(ctx.workspace, hidden_size(), chunk), h(ctx.workspace, feed_forward_size(), chunk);
  for (Index c0 = 0; c0 < x.cols(); c0 += chunk) {
    const Index nc = std::min(chunk, x.cols() - c0);
    auto xn_c = xn.map().leftCols(nc);
    auto h_c = h.map().leftCols(nc);
    hidden(params, x.middleCols(c0, nc), c0, xn_c, h_c, ctx, true);  // h_c = hd
    activation(h_c, h_c);                                            // h_c = g
    output(params, h_c, c0, y.middleCols(c0, nc), ctx, true);
  }
}

template <class S>
void FeedForward<S>::backward_unfused(Parameters<S>& params, ConstMatrixRef<S> x,
                                      ConstMatrixRef<S> dy, MatrixRef<S> dx, MatrixRef<S> y,
                                      const Context& ctx) const {
  const Index chunk = chunk_columns(x.cols());
  const Index d = hidden_size(), f = feed_forward_size();
  // Per-chunk buffers: D x chunk and F x chunk, reused by every chunk.
  Scratch<S> xn(ctx.workspace, d, chunk), dz(ctx.workspace, d, chunk);
  Scratch<S> hd(ctx.workspace, f, chunk), g(ctx.workspace, f, chunk);
  VectorMap<S> db1 = params.grad_vector(b1_), db2 = params.grad_vector(b2_);
  const Rng rng1 = ctx.rng(stream::kFeedForwardActDropout);
  const Rng rng2 = ctx.rng(stream::kFeedForwardOutputDropout);
  const double p = dropout_p(ctx);

  for (Index c0 = 0; c0 < x.cols(); c0 += chunk) {
    const Index nc = std::min(chunk, x.cols() - c0);
    auto xn_c = xn.map().leftCols(nc);
    auto dz_c = dz.map().leftCols(nc);
    auto hd_c = hd.map().leftCols(nc);
    auto g_c = g.map().leftCols(nc);
    // Forward, recomputed: xn, hd = Dropout_1(W1 xn + b1), g = act(hd), fx = Dropout_2(z).
    hidden(params, x.middleCols(c0, nc), c0, xn_c, hd_c, ctx, true);
    activation(hd_c, g_c);
    auto fx_c = dz_c;  // f(x) of the chunk, until dz overwrites it
    output(params, g_c, c0, fx_c, ctx, true);
    add_parallel<S>(y.middleCols(c0, nc), fx_c, S(-1));  // y -= f(x)

    // y = Dropout_2(z)       =>  dz = mask_2 .* dy / (1 - p).
    dropout_parallel<S>(rng2, p, c0, dy.middleCols(c0, nc), dz_c);
    // z = W2 g + b2          =>  dW2 += dz g^T,  db2 += sum_n dz,  dg = W2^T dz.
    linear_weight_grads<S>(dz_c, g_c, params.grad(w2_), &db2, ctx.workspace);
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
    linear_weight_grads<S>(dh_c, xn_c, params.grad(w1_), &db1, ctx.workspace);
    auto dxn_c = dz_c;  // dz is no longer needed: dxn overwrites it
    parallel_product(dxn_c, params.value(w1_).transpose(), dh_c, false);
    // xn = LN_f(x)           =>  dx +=, dgamma +=, dbeta +=.
    layer_norm_backward_parallel<S>(x.middleCols(c0, nc), params.value_vector(ln_weight_),
                                    cfg_.layer_norm_eps, dxn_c, dx.middleCols(c0, nc),
                                    params.grad_vector(ln_weight_), params.grad_vector(ln_bias_),
                                    true, ctx.workspace);
  }
}

}  // namespace reformer
