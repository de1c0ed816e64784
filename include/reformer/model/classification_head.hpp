#pragma once
// The sequence-classification head of an encoder (Hugging Face's final encoder LayerNorm and
// dropout, then ReformerClassificationHead), on the first position of every sequence:
//
//   for sequence b (column c = b*T of the D x B*T streams):
//   cat  = [x1; x2](:, c)                     2D    the two streams of the last block
//   e    = Dropout_enc(LN(cat))               2D    key ctx.rng(stream::kEncoderOutputDropout),
//                                                   draw c * 2D + row (as the LM head draws it)
//   p    = Dropout_cls(e)                     2D    key kClassifierInputDropout, draw b * 2D + row
//   a    = tanh(W_d p + b_d)                  D     W_d: [D, 2D], b_d: [D]
//   q    = Dropout_cls(a)                     D     key kClassifierHiddenDropout, draw b * D + row
//   logits(:, b) = W_o q + b_o                L     W_o: [L, D], b_o: [L]
//
// The two classifier dropouts use HF's classifier_dropout (hidden_dropout_prob when unset); their
// keys are children of the encoder-output stream (ctx.rng(kEncoderOutputDropout).derive(tag)).
// Only the B first positions are normalised: the other columns of the streams never reach the
// output, and backward writes zeros there.
//
// Loss, as HF's problem_type logic:
//   num_labels > 1 (single-label classification): loss_b = cross_entropy(logits(:, b), label_b),
//     label_b in [0, L); a negative label marks an ignored example (HF's -100);
//   num_labels == 1 (regression): loss_b = (logits(0, b) - value_b)^2.
//   HF's loss is the mean over the counted examples: result.mean.
//
// Parameters (HF names, state-dict order): reformer.encoder.layer_norm.weight / .bias [2D],
// classifier.dense.weight [D, 2D], classifier.dense.bias [D], classifier.out_proj.weight [L, D],
// classifier.out_proj.bias [L].
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/tokens.hpp"

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace reformer {

namespace detail {
/// Whether a model configuration has a `classifier_dropout` field.
template <class M, class = void>
struct has_classifier_dropout : std::false_type {};
template <class M>
struct has_classifier_dropout<M, std::void_t<decltype(std::declval<const M&>().classifier_dropout)>>
    : std::true_type {};
}  // namespace detail

struct ClassificationHeadConfig {
  Index hidden_size = 0;                         ///< D (the head reads 2D features)
  Index num_labels = 0;                          ///< L; 1 = regression
  double layer_norm_eps = kLayerNormDefaultEps;  ///< HF layer_norm_eps
  double dropout = 0.0;             ///< HF hidden_dropout_prob (after the final LayerNorm)
  double classifier_dropout = 0.0;  ///< HF classifier_dropout (before dense and out_proj)

  /// The head of a model configuration (a ReformerConfig): HF's classifier_dropout when the
  /// configuration has that field and it is set (>= 0), else hidden_dropout_prob.
  template <class ModelConfig>
  static ClassificationHeadConfig from(const ModelConfig& m) {
    ClassificationHeadConfig c;
    c.hidden_size = m.hidden_size;
    c.num_labels = m.num_labels;
    c.layer_norm_eps = m.layer_norm_eps;
    c.dropout = m.hidden_dropout_prob;
    c.classifier_dropout = m.hidden_dropout_prob;
    if constexpr (detail::has_classifier_dropout<ModelConfig>::value) {
      if (static_cast<double>(m.classifier_dropout) >= 0.0) {
        c.classifier_dropout = static_cast<double>(m.classifier_dropout);
      }
    }
    return c;
  }

  /// Throws ConfigError unless the sizes are positive and the dropouts lie in [0, 1).
  void validate() const {
    const char* where = "ClassificationHeadConfig";
    REFORMER_REQUIRE(hidden_size > 0, ConfigError, where, "hidden_size = ", hidden_size,
                     " must be positive");
    REFORMER_REQUIRE(num_labels > 0, ConfigError, where, "num_labels = ", num_labels,
                     " must be positive (1 = regression)");
    REFORMER_REQUIRE(dropout >= 0.0 && dropout < 1.0, ConfigError, where,
                     "dropout (hidden_dropout_prob) = ", dropout, " must lie in [0, 1)");
    REFORMER_REQUIRE(classifier_dropout >= 0.0 && classifier_dropout < 1.0, ConfigError, where,
                     "classifier_dropout = ", classifier_dropout, " must lie in [0, 1)");
  }
};

/// The targets of a batch for the classification head (a non-owning view): one class id per
/// sequence when num_labels > 1, one real value per sequence when num_labels == 1.
class ClassificationTargets {
 public:
  ClassificationTargets(TokenSpan classes)  // NOLINT(google-explicit-constructor): a view
      : classes_(classes), size_(classes.size()) {}
  ClassificationTargets(const std::vector<Token>& classes)  // NOLINT: a view
      : ClassificationTargets(TokenSpan(classes)) {}
  ClassificationTargets(const std::vector<double>& values)  // NOLINT: a view
      : values_(values.data()), size_(static_cast<Index>(values.size())), regression_(true) {}

  bool regression() const { return regression_; }
  Index size() const { return size_; }
  Token label(Index b) const { return classes_[b]; }
  double value(Index b) const {
    REFORMER_ASSERT(b >= 0 && b < size_);
    return values_[b];
  }

 private:
  TokenSpan classes_;
  const double* values_ = nullptr;
  Index size_ = 0;
  bool regression_ = false;
};

template <class S>
class ClassificationHead {
 public:
  using Config = ClassificationHeadConfig;

  /// Dropout key tags below the encoder-output stream (see the header comment).
  static constexpr std::uint64_t kClassifierInputDropout = 1;
  static constexpr std::uint64_t kClassifierHiddenDropout = 2;

  ClassificationHead(const Config& cfg, Parameters<S>& params)
      : cfg_((cfg.validate(), cfg)),
        ln_weight_(params.add("reformer.encoder.layer_norm.weight", {2 * cfg.hidden_size})),
        ln_bias_(params.add("reformer.encoder.layer_norm.bias", {2 * cfg.hidden_size})),
        dense_weight_(
            params.add("classifier.dense.weight", {cfg.hidden_size, 2 * cfg.hidden_size})),
        dense_bias_(params.add("classifier.dense.bias", {cfg.hidden_size})),
        out_weight_(params.add("classifier.out_proj.weight", {cfg.num_labels, cfg.hidden_size})),
        out_bias_(params.add("classifier.out_proj.bias", {cfg.num_labels})) {}

  const Config& config() const { return cfg_; }

  /// HF initialisation: weights ~ normal(0, std) (dense from rng.derive(0), out_proj from
  /// rng.derive(1)), biases 0, LayerNorm weight 1 and bias 0.
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    params.value_vector(ln_weight_).setOnes();
    params.value_vector(ln_bias_).setZero();
    init_normal(params, dense_weight_, rng.derive(0), std);
    params.value_vector(dense_bias_).setZero();
    init_normal(params, out_weight_, rng.derive(1), std);
    params.value_vector(out_bias_).setZero();
  }

  /// logits: L x B, column b from the first position of sequence b.
  Matrix<S> logits(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                   const Context& ctx) const {
    return Forward(*this, params, x1, x2, ctx).logits;
  }

  /// Sum, count and mean of the per-example losses (cross-entropy, or the squared error when
  /// num_labels == 1) over the counted examples; targets: one per sequence.
  CrossEntropyResult loss(const Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                          const ClassificationTargets& targets, const Context& ctx) const {
    check_targets("ClassificationHead::loss", targets, ctx.batch);
    const Forward f(*this, params, x1, x2, ctx);
    return loss_and_dlogits(f.logits, targets, nullptr, 0.0, Reduction::kSum);
  }

  /// Backward of scale * (sum of the counted per-example losses) (Reduction::kSum, the model
  /// interface), or of scale * their mean (kMean, HF's loss): writes every column of dcat
  /// (2D x B*T: the gradients of x1 on top of those of x2; zero except the first column of each
  /// sequence) and accumulates the parameter gradients. Returns the loss as loss() does.
  CrossEntropyResult backward(Parameters<S>& params, ConstMatrixRef<S> x1, ConstMatrixRef<S> x2,
                              const ClassificationTargets& targets, double scale,
                              const Context& ctx, MatrixRef<S> dcat,
                              Reduction reduction = Reduction::kSum) const {
    constexpr const char* kWhere = "ClassificationHead::backward";
    const Index d = cfg_.hidden_size;
    check_shape(kWhere, "dcat", dcat.rows(), dcat.cols(), 2 * d, x1.cols());
    check_targets(kWhere, targets, ctx.batch);
    REFORMER_REQUIRE(std::isfinite(scale), InvalidArgument, kWhere, "scale = ", scale,
                     " must be finite");
    const Forward f(*this, params, x1, x2, ctx);
    const Index batch = f.logits.cols(), length = x1.cols() / batch;
    Matrix<S> dlogits(cfg_.num_labels, batch);  // L x B
    const CrossEntropyResult result =
        loss_and_dlogits(f.logits, targets, &dlogits, scale, reduction);

    // logits = W_o q + b_o  =>  dq, dW_o +=, db_o +=
    Matrix<S> dq(d, batch);  // D x B
    linear_backward<S>(params.value(out_weight_), f.q, dlogits, dq, params.grad(out_weight_),
                       params.grad_vector(out_bias_));
    // q = Dropout(a), a = tanh(z)  =>  dz = mask .* dq / (1 - p) .* (1 - a^2)
    dropout_backward<S>(f.hidden_rng, f.p_cls, 0, dq, dq);
    const Matrix<S> dz = dq.cwiseProduct((S(1) - f.a.array().square()).matrix());  // D x B
    // z = W_d p + b_d  =>  dp, dW_d +=, db_d +=
    Matrix<S> dp(2 * d, batch);  // 2D x B
    linear_backward<S>(params.value(dense_weight_), f.p, dz, dp, params.grad(dense_weight_),
                       params.grad_vector(dense_bias_));
    // p = Dropout_cls(e), e = Dropout_enc(h)  =>  dh
    dropout_backward<S>(f.input_rng, f.p_cls, 0, dp, dp);
    for (Index b = 0; b < batch; ++b) {
      dropout_backward<S>(f.enc_rng, f.p_enc, b * length * 2 * d, dp.col(b), dp.col(b));
    }
    // h = LN(cat)  =>  dcat at the first position of each sequence, zero elsewhere
    Matrix<S> dcat_first(2 * d, batch);  // 2D x B
    layer_norm_backward<S>(f.cat, params.value_vector(ln_weight_), cfg_.layer_norm_eps, dp,
                           dcat_first, params.grad_vector(ln_weight_),
                           params.grad_vector(ln_bias_));
    dcat.setZero();
    for (Index b = 0; b < batch; ++b) dcat.col(b * length) = dcat_first.col(b);
    return result;
  }

 private:
  // The forward intermediates of a batch (all small: B columns).
  struct Forward {
    Forward(const ClassificationHead& head, const Parameters<S>& params, ConstMatrixRef<S> x1,
            ConstMatrixRef<S> x2, const Context& ctx)
        : enc_rng(ctx.rng(stream::kEncoderOutputDropout)),
          input_rng(enc_rng.derive(kClassifierInputDropout)),
          hidden_rng(enc_rng.derive(kClassifierHiddenDropout)),
          p_enc(ctx.training ? head.cfg_.dropout : 0.0),
          p_cls(ctx.training ? head.cfg_.classifier_dropout : 0.0) {
      const char* where = "ClassificationHead";
      const Index d = head.cfg_.hidden_size;
      const Index length = ctx.length(where, x1.cols()), batch = ctx.batch;
      check_shape(where, "x1", x1.rows(), x1.cols(), d, x1.cols());
      check_shape(where, "x2", x2.rows(), x2.cols(), d, x1.cols());
      cat.resize(2 * d, batch);
      for (Index b = 0; b < batch; ++b) {
        cat.col(b).head(d) = x1.col(b * length);
        cat.col(b).tail(d) = x2.col(b * length);
      }
      p.resize(2 * d, batch);
      layer_norm_forward<S>(cat, params.value_vector(head.ln_weight_),
                            params.value_vector(head.ln_bias_), head.cfg_.layer_norm_eps, p);
      for (Index b = 0; b < batch; ++b) {
        dropout_inplace<S>(enc_rng, p_enc, b * length * 2 * d, p.col(b));
      }
      dropout_inplace<S>(input_rng, p_cls, 0, p);
      a.resize(d, batch);
      linear_forward<S>(params.value(head.dense_weight_), params.value_vector(head.dense_bias_), p,
                        a);
      a = a.array().tanh().matrix();
      q.resize(d, batch);
      dropout_forward<S>(hidden_rng, p_cls, 0, a, q);
      logits.resize(head.cfg_.num_labels, batch);
      linear_forward<S>(params.value(head.out_weight_), params.value_vector(head.out_bias_), q,
                        logits);
    }

    Rng enc_rng, input_rng, hidden_rng;
    double p_enc, p_cls;
    Matrix<S> cat;     // 2D x B   first columns of [x1; x2]
    Matrix<S> p;       // 2D x B   the dense layer's input
    Matrix<S> a;       // D x B    tanh(W_d p + b_d)
    Matrix<S> q;       // D x B    the out-projection's input
    Matrix<S> logits;  // L x B
  };

  void check_targets(const char* where, const ClassificationTargets& targets, Index batch) const {
    REFORMER_REQUIRE(targets.size() == batch, InvalidArgument, where,
                     "targets.size() = ", targets.size(), " must equal the batch = ", batch,
                     " (one target per sequence)");
    if (cfg_.num_labels == 1) {
      REFORMER_REQUIRE(targets.regression(), InvalidArgument, where,
                       "num_labels = 1 is a regression: the targets must be real values");
      for (Index b = 0; b < batch; ++b) {
        REFORMER_REQUIRE(std::isfinite(targets.value(b)), InvalidArgument, where, "targets[", b,
                         "] = ", targets.value(b), " must be finite");
      }
      return;
    }
    REFORMER_REQUIRE(!targets.regression(), InvalidArgument, where,
                     "num_labels = ", cfg_.num_labels,
                     " is a classification: the targets must be class ids");
    for (Index b = 0; b < batch; ++b) {
      REFORMER_REQUIRE(targets.label(b) < cfg_.num_labels, InvalidArgument, where, "targets[", b,
                       "] = ", targets.label(b),
                       " is out of range [0, num_labels = ", cfg_.num_labels,
                       ") (a negative label marks an ignored example)");
    }
  }

  // Per-example losses of logits (L x B); with dlogits, also the gradient of scale * sum
  // (kSum) or scale * mean (kMean) of the counted losses.
  CrossEntropyResult loss_and_dlogits(const Matrix<S>& logits, const ClassificationTargets& targets,
                                      Matrix<S>* dlogits, double scale, Reduction reduction) const {
    const Index batch = logits.cols();
    CrossEntropyResult r;
    for (Index b = 0; b < batch; ++b) r.count += targets.regression() || targets.label(b) >= 0;
    double s = scale;
    if (reduction == Reduction::kMean) s = r.count > 0 ? scale / static_cast<double>(r.count) : 0.0;
    for (Index b = 0; b < batch; ++b) {
      auto col = logits.col(b);
      if (targets.regression()) {
        const double diff = static_cast<double>(col(0)) - targets.value(b);
        r.sum += diff * diff;
        if (dlogits) (*dlogits)(0, b) = static_cast<S>(2.0 * s * diff);
        continue;
      }
      const Token t = targets.label(b);
      if (t < 0) {
        if (dlogits) dlogits->col(b).setZero();
        continue;
      }
      const S m = col.maxCoeff();
      const S z = m + std::log((col.array() - m).exp().sum());  // logsumexp
      r.sum += static_cast<double>(z) - static_cast<double>(col(t));
      if (dlogits) {
        dlogits->col(b) = ((col.array() - z).exp() * static_cast<S>(s)).matrix();
        (*dlogits)(t, b) -= static_cast<S>(s);
      }
    }
    r.mean = r.count > 0 ? r.sum / static_cast<double>(r.count) : 0.0;
    return r;
  }

  Config cfg_;
  SlotId ln_weight_, ln_bias_, dense_weight_, dense_bias_, out_weight_, out_bias_;
};

}  // namespace reformer
