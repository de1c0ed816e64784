#pragma once
// The extractive question-answering head of an encoder (Hugging Face's final encoder LayerNorm
// and dropout, then ReformerForQuestionAnswering's qa_outputs), on every position:
//
//   cat    = [x1; x2]                          2D x N   the two streams of the last block
//   h      = Dropout(LN(cat))                  2D x N   key ctx.rng(stream::kEncoderOutputDropout),
//                                                       draw column * 2D + row (as the LM head)
//   logits = W h + b                           2 x N    W: [2, 2D], b: [2]
//   row 0 = start logits, row 1 = end logits; sequence b is middleCols(b*T, T).
//
// Loss, as HF: every sequence has a start and an end position, clamped to [0, T]; the clamped
// value T (HF's ignored_index) marks a term that is not counted (so a negative position counts
// as position 0, as HF's clamp makes it). Over the T positions of sequence b (padding included,
// as HF):
//   start_b = cross_entropy(logits(0, b*T : b*T+T), start_position_b), end_b likewise
//   per-example loss = (start_b + end_b) / 2,   HF's loss = (mean start_b + mean end_b) / 2
//   (a mean over no counted term is 0).
//
// The head works in chunks of columns in forward and backward alike (only the 2 x N logits are
// kept): backward recomputes each chunk's h and writes the chunk's columns of dcat.
//
// Parameters (HF names, state-dict order): reformer.encoder.layer_norm.weight / .bias [2D],
// qa_outputs.weight [2, 2D], qa_outputs.bias [2].
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>
#include <cmath>

namespace reformer {

struct QuestionAnsweringHeadConfig {
  Index hidden_size = 0;                         ///< D (the head reads 2D features)
  double layer_norm_eps = kLayerNormDefaultEps;  ///< HF layer_norm_eps
  double dropout = 0.0;                          ///< HF hidden_dropout_prob
  Index chunk_size = 0;  ///< columns per chunk; 0 = automatic (head_chunk_tokens)

  /// The head of a model configuration (a ReformerConfig).
  template <class ModelConfig>
  static QuestionAnsweringHeadConfig from(const ModelConfig& m) {
    QuestionAnsweringHeadConfig c;
    c.hidden_size = m.hidden_size;
    c.layer_norm_eps = m.layer_norm_eps;
    c.dropout = m.hidden_dropout_prob;
    return c;
  }

  /// Throws ConfigError unless hidden_size is positive and dropout lies in [0, 1).
  void validate() const {
    const char* where = "QuestionAnsweringHeadConfig";
    REFORMER_REQUIRE(hidden_size > 0, ConfigError, where, "hidden_size = ", hidden_size,
                     " must be positive");
    REFORMER_REQUIRE(dropout >= 0.0 && dropout < 1.0, ConfigError, where, "dropout = ", dropout,
                     " must lie in [0, 1)");
    REFORMER_REQUIRE(chunk_size >= 0, ConfigError, where, "chunk_size = ", chunk_size,
                     " must be >= 0");
  }
};

/// The answer spans of a batch (non-owning views): one start and one end position per sequence.
struct QuestionAnsweringTargets {
  TokenSpan start_positions;  ///< B positions (clamped to [0, T]; T = ignored)
  TokenSpan end_positions;    ///< B positions (clamped to [0, T]; T = ignored)
};

/// Loss of the question-answering head.
struct QuestionAnsweringLoss {
  CrossEntropyResult start;  ///< cross-entropies of the counted start positions
  CrossEntropyResult end;    ///< cross-entropies of the counted end positions
  double sum = 0.0;          ///< (start.sum + end.sum) / 2: the sum of the per-example losses
  double mean = 0.0;         ///< (start.mean + end.mean) / 2: HF's loss
};

template <class S>
class QuestionAnsweringHead {
 public:
  using Config = QuestionAnsweringHeadConfig;

  QuestionAnsweringHead(const Config& cfg, Parameters<S>& params)
      : cfg_((cfg.validate(), cfg)),
        ln_weight_(params.add("reformer.encoder.layer_norm.weight", {2 * cfg.hidden_size})),
        ln_bias_(params.add("reformer.encoder.layer_norm.bias", {2 * cfg.hidden_size})),
        weight_(params.add("qa_outputs.weight", {2, 2 * cfg.hidden_size})),
        bias_(params.add("qa_outputs.bias", {2})) {}

  const Config& config() const { return cfg_; }

  /// HF initialisation: W ~ normal(0, std) from rng, b = 0, LayerNorm weight 1 and bias 0.
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    params.value_vector(ln_weight_).setOnes();
    params.value_vector(ln_bias_).setZero();
    init_normal(params, weight_, rng, std);
    params.value_vector(bias_).setZero();
  }

  /// logits: 2 x N (row 0 start, row 1 end; sequence b in columns [b*T, b*T + T)).
  Matrix<S> logits(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                   const Context& ctx) const {
    Matrix<S> out(2, x1.cols());
    for_chunks(params, x1, x2, ctx, [&](Index c0, Index c, MatrixRef<S>, MatrixRef<S> h) {
      out.middleCols(c0, c).noalias() = params.value(weight_) * h;
      out.middleCols(c0, c).colwise() += params.value_vector(bias_);
    });
    return out;
  }

  /// The loss of the batch (see the header comment).
  QuestionAnsweringLoss loss(const Parameters<S>& params, ConstMatrixRef<S> x1,
                             ConstMatrixRef<S> x2, const QuestionAnsweringTargets& targets,
                             const Context& ctx) const {
    check_targets("QuestionAnsweringHead::loss", targets, ctx.batch);
    return loss_and_dlogits(logits(params, x1, x2, ctx), targets, ctx.batch, nullptr, 0.0,
                            Reduction::kSum);
  }

  /// Backward of scale * (sum of the per-example losses) (Reduction::kSum, the model interface)
  /// or of scale * HF's loss (kMean: each of the two cross-entropies averaged over its own
  /// count): writes dcat (2D x N) and accumulates the parameter gradients. Returns the loss.
  QuestionAnsweringLoss backward(Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                                 const QuestionAnsweringTargets& targets, double scale,
                                 const Context& ctx, MatrixRef<S> dcat,
                                 Reduction reduction = Reduction::kSum) const {
    constexpr const char* kWhere = "QuestionAnsweringHead::backward";
    const Index d = cfg_.hidden_size;
    check_shape(kWhere, "dcat", dcat.rows(), dcat.cols(), 2 * d, x1.cols());
    check_targets(kWhere, targets, ctx.batch);
    REFORMER_REQUIRE(std::isfinite(scale), InvalidArgument, kWhere, "scale = ", scale,
                     " must be finite");
    Matrix<S> dlogits(2, x1.cols());  // 2 x N
    const QuestionAnsweringLoss result = loss_and_dlogits(logits(params, x1, x2, ctx), targets,
                                                          ctx.batch, &dlogits, scale, reduction);
    const Rng drop_rng = ctx.rng(stream::kEncoderOutputDropout);
    Scratch<S> dh(ctx.workspace, 2 * d, chunk(x1.cols()));
    for_chunks(params, x1, x2, ctx, [&](Index c0, Index c, MatrixRef<S> cat, MatrixRef<S> h) {
      auto dh_c = dh.map().leftCols(c);
      const auto dlogits_c = dlogits.middleCols(c0, c);  // 2 x c
      // logits = W hd + b  =>  dhd = W^T dlogits, dW +=, db +=
      params.grad(weight_).noalias() += dlogits_c * h.transpose();
      params.grad_vector(bias_) += dlogits_c.rowwise().sum();
      dh_c.noalias() = params.value(weight_).transpose() * dlogits_c;
      // hd = Dropout(h)  =>  dh = mask .* dhd / (1 - p)
      dropout_backward<S>(drop_rng, dropout_p(ctx), c0 * 2 * d, dh_c, dh_c);
      // h = LN(cat)  =>  dcat, dgamma +=, dbeta +=
      layer_norm_backward<S>(cat, params.value_vector(ln_weight_), cfg_.layer_norm_eps, dh_c,
                             dcat.middleCols(c0, c), params.grad_vector(ln_weight_),
                             params.grad_vector(ln_bias_));
    });
    return result;
  }

  /// Columns per chunk for N columns: chunk_size, or with 0 as many as keep the chunk's two
  /// logits and its three 2D buffers (cat, h, dh) within tuning::kHeadChunkScalars.
  Index chunk(Index n) const {
    return head_chunk_tokens(n, cfg_.chunk_size, 2 + 6 * cfg_.hidden_size);
  }

 private:
  double dropout_p(const Context& ctx) const { return ctx.training ? cfg_.dropout : 0.0; }

  void check_targets(const char* where, const QuestionAnsweringTargets& targets,
                     Index batch) const {
    REFORMER_REQUIRE(targets.start_positions.size() == batch, InvalidArgument, where,
                     "start_positions.size() = ", targets.start_positions.size(),
                     " must equal the batch = ", batch);
    REFORMER_REQUIRE(targets.end_positions.size() == batch, InvalidArgument, where,
                     "end_positions.size() = ", targets.end_positions.size(),
                     " must equal the batch = ", batch);
  }

  // Cross-entropy of one row of logits over each sequence's T positions, at the clamped
  // positions; with drow, also its gradient times `scale` (scale / count for kMean).
  template <class Row, class GradRow>
  static CrossEntropyResult row_loss(const Row& row, TokenSpan positions, Index batch,
                                     GradRow* drow, double scale, Reduction reduction) {
    const Index length = row.cols() / batch;
    CrossEntropyResult r;
    for (Index b = 0; b < batch; ++b) r.count += positions[b] < length;  // clamp(0, T) < T
    double s = scale;
    if (reduction == Reduction::kMean) s = r.count > 0 ? scale / static_cast<double>(r.count) : 0.0;
    for (Index b = 0; b < batch; ++b) {
      const Index t = std::clamp<Index>(positions[b], 0, length);
      const auto seq = row.segment(b * length, length);
      if (t == length) {
        if (drow) drow->segment(b * length, length).setZero();
        continue;
      }
      const S m = seq.maxCoeff();
      const S z = m + std::log((seq.array() - m).exp().sum());  // logsumexp
      r.sum += static_cast<double>(z) - static_cast<double>(seq(t));
      if (drow) {
        drow->segment(b * length, length) = ((seq.array() - z).exp() * static_cast<S>(s)).matrix();
        (*drow)(b * length + t) -= static_cast<S>(s);
      }
    }
    r.mean = r.count > 0 ? r.sum / static_cast<double>(r.count) : 0.0;
    return r;
  }

  QuestionAnsweringLoss loss_and_dlogits(const Matrix<S>& logits,
                                         const QuestionAnsweringTargets& targets, Index batch,
                                         Matrix<S>* dlogits, double scale,
                                         Reduction reduction) const {
    RowVector<S> dstart, dend;
    if (dlogits) {
      dstart.resize(logits.cols());
      dend.resize(logits.cols());
    }
    // loss = (start + end) / 2: each half carries scale / 2.
    QuestionAnsweringLoss r;
    r.start = row_loss(logits.row(0), targets.start_positions, batch, dlogits ? &dstart : nullptr,
                       scale / 2, reduction);
    r.end = row_loss(logits.row(1), targets.end_positions, batch, dlogits ? &dend : nullptr,
                     scale / 2, reduction);
    r.sum = (r.start.sum + r.end.sum) / 2;
    r.mean = (r.start.mean + r.end.mean) / 2;
    if (dlogits) {
      dlogits->row(0) = dstart;
      dlogits->row(1) = dend;
    }
    return r;
  }

  // Calls f(c0, c, cat, h) for the column chunks [c0, c0 + c), in order, with cat = [x1; x2] and
  // h = Dropout(LN(cat)) of the chunk (2D x c each; dropout draws as for the whole matrix).
  template <class F>
  void for_chunks(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                  const Context& ctx, F&& f) const {
    const char* where = "QuestionAnsweringHead";
    const Index d = cfg_.hidden_size, n = x1.cols(), len = chunk(n);
    ctx.length(where, n);
    check_shape(where, "x1", x1.rows(), x1.cols(), d, n);
    check_shape(where, "x2", x2.rows(), x2.cols(), d, n);
    const Rng drop_rng = ctx.rng(stream::kEncoderOutputDropout);
    Scratch<S> cat(ctx.workspace, 2 * d, len), h(ctx.workspace, 2 * d, len);
    for (Index c0 = 0; c0 < n; c0 += len) {
      const Index c = std::min(len, n - c0);
      auto cat_c = cat.map().leftCols(c);
      auto h_c = h.map().leftCols(c);
      cat_c.topRows(d) = x1.middleCols(c0, c);
      cat_c.bottomRows(d) = x2.middleCols(c0, c);
      layer_norm_forward<S>(cat_c, params.value_vector(ln_weight_), params.value_vector(ln_bias_),
                            cfg_.layer_norm_eps, h_c);
      dropout_inplace<S>(drop_rng, dropout_p(ctx), c0 * 2 * d, h_c);
      f(c0, c, MatrixRef<S>(cat_c), MatrixRef<S>(h_c));
    }
  }

  Config cfg_;
  SlotId ln_weight_, ln_bias_, weight_, bias_;
};

}  // namespace reformer
