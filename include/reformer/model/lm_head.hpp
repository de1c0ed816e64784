#pragma once
// The language-model head of the Reformer LM (Hugging Face's final encoder LayerNorm, dropout
// and ReformerOnlyLMHead):
//
//   cat    = [x1; x2]                          2D x N   the two streams of the last block
//   h      = Dropout(LN(cat))                  2D x N   key ctx.rng(stream::kEncoderOutputDropout),
//                                                       draw index = column * 2D + row
//   logits = W h + b                           V x N    W: [V, 2D], b: [V]
//   loss   = mean over counted n of cross_entropy(logits(:, n), target_n)   (target < 0: not
//            counted)
//
// The head works in chunks of `chunk_size` tokens, in forward and backward alike: training
// never holds a V x N logits buffer, nor a 2D x N h. Backward recomputes each chunk's h and
// writes the chunk's columns of dcat = d loss / d [x1; x2].
//
// Parameters (HF names, state-dict order): reformer.encoder.layer_norm.weight / .bias [2D],
// lm_head.bias [V], lm_head.decoder.weight [V, 2D].
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/parallel.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>

namespace reformer {

struct LmHeadConfig {
  Index hidden_size = 0;                         ///< D (the head reads 2D features)
  Index vocab_size = 0;                          ///< V
  double layer_norm_eps = kLayerNormDefaultEps;  ///< HF layer_norm_eps
  double dropout = 0.0;                          ///< HF hidden_dropout_prob
  Index chunk_size = 0;  ///< tokens per chunk (HF chunk_size_lm_head); 0 = automatic

  /// The head of a model configuration (a ReformerConfig, model/config.hpp).
  template <class ModelConfig>
  static LmHeadConfig from(const ModelConfig& m) {
    return {/*hidden_size=*/m.hidden_size, /*vocab_size=*/m.vocab_size,
            /*layer_norm_eps=*/m.layer_norm_eps, /*dropout=*/m.hidden_dropout_prob,
            /*chunk_size=*/m.chunk_size_lm_head};
  }
};

template <class S>
class LmHead {
 public:
  using Config = LmHeadConfig;

  LmHead(const Config& cfg, Parameters<S>& params)
      : cfg_(cfg),
        ln_weight_(params.add("reformer.encoder.layer_norm.weight", {2 * cfg.hidden_size})),
        ln_bias_(params.add("reformer.encoder.layer_norm.bias", {2 * cfg.hidden_size})),
        bias_(params.add("lm_head.bias", {cfg.vocab_size})),
        weight_(params.add("lm_head.decoder.weight", {cfg.vocab_size, 2 * cfg.hidden_size})) {}

  const Config& config() const { return cfg_; }

  /// HF initialisation: W ~ normal(0, std) from rng, b = 0, LayerNorm weight 1 and bias 0.
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    params.value_vector(ln_weight_).setOnes();
    params.value_vector(ln_bias_).setZero();
    init_normal(params, weight_, rng, std);
    params.value_vector(bias_).setZero();
  }

  /// logits = W Dropout(LN([x1; x2])) + b: V x N. The chunks run in parallel (inference).
  Matrix<S> logits(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                   const Context& ctx) const {
    Matrix<S> out(cfg_.vocab_size, x1.cols());
    for_chunks_parallel(params, x1, x2, ctx, [&](Index, Index c0, Index c, MatrixRef<S> h) {
      lm_logits<S>(h, params.value(weight_), params.value_vector(bias_), out.middleCols(c0, c));
    });
    return out;
  }

  /// Sum and count of the cross-entropy over the counted targets (N ids, negative = skip).
  /// The chunks run in parallel; their sums are added in chunk order (any thread count gives
  /// the same result).
  CrossEntropyResult loss(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                          TokenSpan targets, const Context& ctx) const {
    REFORMER_REQUIRE(targets.size() == x1.cols(), InvalidArgument, "LmHead::loss",
                     "targets.size() = ", targets.size(), " must equal the number of tokens ",
                     x1.cols());
    const Index chunks = num_blocks(x1.cols(), chunk(x1.cols()));
    ScratchArray<CrossEntropyResult> parts(ctx.workspace, chunks);
    for_chunks_parallel(params, x1, x2, ctx, [&](Index blk, Index c0, Index c, MatrixRef<S> h) {
      parts[blk] = cross_entropy_forward<S>(h, params.value(weight_), params.value_vector(bias_),
                                            targets.subspan(c0, c), c, ctx.workspace);
    });
    CrossEntropyResult ce;
    for (Index blk = 0; blk < chunks; ++blk) {
      ce.sum += parts[blk].sum;
      ce.count += parts[blk].count;
    }
    ce.mean = ce.count > 0 ? ce.sum / static_cast<double>(ce.count) : 0.0;
    return ce;
  }

  /// Backward of scale * (sum of the counted cross-entropies), recomputed chunk by chunk:
  /// writes dcat (2D x N: the gradients of x1 on top of those of x2) and accumulates dW, db and
  /// the LayerNorm's gradients.
  void backward(Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                TokenSpan targets, double scale, const Context& ctx, MatrixRef<S> dcat) const {
    const Index d = cfg_.hidden_size;
    check_shape("LmHead::backward", "dcat", dcat.rows(), dcat.cols(), 2 * d, x1.cols());
    const Rng drop_rng = ctx.rng(stream::kEncoderOutputDropout);
    Scratch<S> dh(ctx.workspace, 2 * d, chunk(x1.cols()));
    for_chunks(params, x1, x2, ctx, [&](Index c0, Index c, MatrixRef<S> cat, MatrixRef<S> h) {
      auto dh_c = dh.map().leftCols(c);
      // logits = W hd + b, loss = CE  =>  dhd, dW +=, db += (V x c logits at a time)
      cross_entropy_forward_backward<S>(h, params.value(weight_), params.value_vector(bias_),
                                        targets.subspan(c0, c), dh_c, params.grad(weight_),
                                        params.grad_vector(bias_), c, Reduction::kSum, scale,
                                        ctx.workspace);
      // hd = Dropout(h)  =>  dh = mask .* dhd / (1 - p)
      dropout_backward<S>(drop_rng, dropout_p(ctx), c0 * 2 * d, dh_c, dh_c);
      // h = LN(cat)      =>  dcat, dgamma +=, dbeta +=
      layer_norm_backward<S>(cat, params.value_vector(ln_weight_), cfg_.layer_norm_eps, dh_c,
                             dcat.middleCols(c0, c), params.grad_vector(ln_weight_),
                             params.grad_vector(ln_bias_));
    });
  }

  /// Tokens per chunk for N tokens: chunk_size, or with 0 as many as keep the chunk's V logits
  /// and its three 2D buffers (cat, h, dh) within tuning::kHeadChunkScalars (head_chunk_tokens).
  Index chunk(Index n) const {
    return head_chunk_tokens(n, cfg_.chunk_size, cfg_.vocab_size + 6 * cfg_.hidden_size);
  }

 private:
  double dropout_p(const Context& ctx) const { return ctx.training ? cfg_.dropout : 0.0; }

  void check_streams(const ConstMatrixRef<S>& x1, const ConstMatrixRef<S>& x2) const {
    check_shape("LmHead", "x1", x1.rows(), x1.cols(), cfg_.hidden_size, x1.cols());
    check_shape("LmHead", "x2", x2.rows(), x2.cols(), cfg_.hidden_size, x1.cols());
  }

  // cat = [x1; x2] and h = Dropout(LN(cat)) of the columns [c0, c0 + cat.cols()) (dropout draw
  // indices as for the whole 2D x N matrix).
  template <class M>
  void chunk_hidden(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                    const Context& ctx, Index c0, M&& cat, M&& h) const {
    const Index d = cfg_.hidden_size, c = cat.cols();
    cat.topRows(d) = x1.middleCols(c0, c);
    cat.bottomRows(d) = x2.middleCols(c0, c);
    layer_norm_forward<S>(cat, params.value_vector(ln_weight_), params.value_vector(ln_bias_),
                          cfg_.layer_norm_eps, h);
    dropout_inplace<S>(ctx.rng(stream::kEncoderOutputDropout), dropout_p(ctx), c0 * 2 * d, h);
  }

  // Calls f(c0, c, cat, h) for the chunks [c0, c0 + c), in order, with cat and h of the chunk
  // (2D x c each, as chunk_hidden).
  template <class F>
  void for_chunks(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                  const Context& ctx, F&& f) const {
    check_streams(x1, x2);
    const Index d = cfg_.hidden_size, n = x1.cols(), len = chunk(n);
    Scratch<S> cat(ctx.workspace, 2 * d, len), h(ctx.workspace, 2 * d, len);
    for (Index c0 = 0; c0 < n; c0 += len) {
      const Index c = std::min(len, n - c0);
      auto cat_c = cat.map().leftCols(c);
      auto h_c = h.map().leftCols(c);
      chunk_hidden(params, x1, x2, ctx, c0, cat_c, h_c);
      f(c0, c, MatrixRef<S>(cat_c), MatrixRef<S>(h_c));
    }
  }

  // Calls f(blk, c0, c, h) for the chunks blk = [c0, c0 + c) in parallel, each with its own
  // h (2D x c, as chunk_hidden) drawn from the workspace by the thread that runs it.
  template <class F>
  void for_chunks_parallel(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                           const Context& ctx, F&& f) const {
    check_streams(x1, x2);
    const Index d = cfg_.hidden_size, n = x1.cols(), len = chunk(n);
    parallel_for(num_blocks(n, len), [&](Index blk) {
      const Index c0 = blk * len, c = std::min(len, n - c0);
      Scratch<S> cat(ctx.workspace, 2 * d, c), h(ctx.workspace, 2 * d, c);
      chunk_hidden(params, x1, x2, ctx, c0, cat.map(), h.map());
      f(blk, c0, c, MatrixRef<S>(h.map()));
    });
  }

  Config cfg_;
  SlotId ln_weight_, ln_bias_, bias_, weight_;
};

}  // namespace reformer
