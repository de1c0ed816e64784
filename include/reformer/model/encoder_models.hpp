#pragma once
// The encoder models (docs/DESIGN.md 7.5), Hugging Face's ReformerForMaskedLM,
// ReformerForSequenceClassification and ReformerForQuestionAnswering: a ReformerBackbone
// (reformer_backbone.hpp: embeddings -> reversible stack, HF's padding to the chunk lengths) and
// a head, with HF's parameter names and losses.
//
//   ReformerForMaskedLM            LmHead (lm_head.hpp), logits V x B*T; loss = mean
//                                  cross-entropy over the labelled positions (label < 0, e.g.
//                                  HF's -100, is not counted; no shift). Needs is_decoder = false.
//   ReformerForSequenceClassification  ClassificationHead (classification_head.hpp) on the first
//                                  position, logits L x B; loss = mean cross-entropy (a negative
//                                  label is not counted), or the mean squared error when
//                                  num_labels = 1 (regression).
//   ReformerForQuestionAnswering   QuestionAnsweringHead (question_answering_head.hpp), logits
//                                  2 x B*T (start, end); loss = HF's (mean start CE + mean end
//                                  CE) / 2.
//
// Every pass takes the batch's AttentionMask (B x T, 1 = real; empty = no padding), which
// reaches the attention layers through Context::mask and is recorded in the tape. Attention is
// bidirectional when config.is_decoder is false, with the look-ahead chunks of the config.
// Training is as ReformerLM's: forward_loss fills a Tape, backward recomputes every block from
// the last one's outputs (or uses stored activations) and accumulates (+=) the gradients;
// train_step does both at the model's step counter.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/model/classification_head.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/lm_head.hpp"
#include "reformer/model/parameter_layout.hpp"
#include "reformer/model/question_answering_head.hpp"
#include "reformer/model/reformer_backbone.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstdint>
#include <vector>

namespace reformer {

// ---- masked language model ------------------------------------------------------------------

template <class S>
class ReformerForMaskedLM : public ReformerBackbone<S> {
  using Base = ReformerBackbone<S>;

 public:
  using Scalar = S;
  static constexpr Architecture kArchitecture = Architecture::kMaskedLm;

  /// Validates `config` (ConfigError naming the field; is_decoder must be false, as HF), registers
  /// every parameter and initialises them as HF does from config.seed.
  explicit ReformerForMaskedLM(const ReformerConfig& config,
                               BackpropMode mode = BackpropMode::kReversible);

  const LmHead<S>& head() const { return head_; }
  void init(std::uint64_t seed);

  /// Logits V x B*T (sequence b in columns [b*T, (b+1)*T)), key padding `mask` (B x T or empty).
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask = {}) const {
    BucketRecord buckets;
    return logits(tokens, batch, mask, buckets);
  }
  /// As above, recording the LSH buckets into `buckets` or replaying them (buckets.replay).
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                   BucketRecord& buckets) const;

  /// Training forward at RNG step `step`: the mean cross-entropy over the positions whose label
  /// (B*T ids) is in [0, V); a negative label is not counted. Fills `tape`.
  double forward_loss(TokenSpan tokens, Index batch, const AttentionMask& mask, TokenSpan labels,
                      Tape<S>& tape, std::uint64_t step);
  /// Accumulates (+=) the gradients of grad_scale * loss. Consumes the tape.
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  /// forward_loss + backward at the model's step (which advances); returns the loss.
  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask, TokenSpan labels) {
    return train_step(tokens, batch, mask, labels, this->step_);
  }
  /// The same at an explicit step (the counter becomes step + 1).
  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask, TokenSpan labels,
                    std::uint64_t step) {
    const double loss = forward_loss(tokens, batch, mask, labels, tape_, step);
    backward(tape_);
    return loss;
  }

 private:
  static const ReformerConfig& validated(const ReformerConfig& cfg);

  LmHead<S> head_;
  Tape<S> tape_;
};

// ---- sequence classification ----------------------------------------------------------------

template <class S>
class ReformerForSequenceClassification : public ReformerBackbone<S> {
  using Base = ReformerBackbone<S>;

 public:
  using Scalar = S;
  static constexpr Architecture kArchitecture = Architecture::kSequenceClassification;

  /// Validates `config` (ConfigError naming the field), registers every parameter and
  /// initialises them as HF does from config.seed. config.num_labels outputs.
  explicit ReformerForSequenceClassification(const ReformerConfig& config,
                                             BackpropMode mode = BackpropMode::kReversible);

  const ClassificationHead<S>& head() const { return head_; }
  Index num_labels() const { return this->cfg_.num_labels; }
  void init(std::uint64_t seed);

  /// Logits L x B (column b: sequence b), key padding `mask` (B x T or empty).
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask = {}) const {
    BucketRecord buckets;
    return logits(tokens, batch, mask, buckets);
  }
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                   BucketRecord& buckets) const;

  /// Training forward at RNG step `step`: `labels` holds B class ids in [0, num_labels) (a
  /// negative one is not counted) or, when num_labels = 1, B real values. Returns the mean loss.
  double forward_loss(TokenSpan tokens, Index batch, const AttentionMask& mask,
                      const ClassificationTargets& labels, Tape<S>& tape, std::uint64_t step);
  /// Accumulates (+=) the gradients of grad_scale * loss. Consumes the tape.
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask,
                    const ClassificationTargets& labels) {
    return train_step(tokens, batch, mask, labels, this->step_);
  }
  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask,
                    const ClassificationTargets& labels, std::uint64_t step) {
    const double loss = forward_loss(tokens, batch, mask, labels, tape_, step);
    backward(tape_);
    return loss;
  }

 private:
  ClassificationTargets targets_of(const Tape<S>& tape) const {
    if (this->cfg_.num_labels == 1) return ClassificationTargets(tape.values);
    return ClassificationTargets(tape.targets);
  }

  ClassificationHead<S> head_;
  Tape<S> tape_;
};

// ---- question answering ---------------------------------------------------------------------

template <class S>
class ReformerForQuestionAnswering : public ReformerBackbone<S> {
  using Base = ReformerBackbone<S>;

 public:
  using Scalar = S;
  static constexpr Architecture kArchitecture = Architecture::kQuestionAnswering;

  explicit ReformerForQuestionAnswering(const ReformerConfig& config,
                                        BackpropMode mode = BackpropMode::kReversible);

  const QuestionAnsweringHead<S>& head() const { return head_; }
  void init(std::uint64_t seed);

  /// Logits 2 x B*T (row 0 start, row 1 end), key padding `mask` (B x T or empty).
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask = {}) const {
    BucketRecord buckets;
    return logits(tokens, batch, mask, buckets);
  }
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                   BucketRecord& buckets) const;

  /// Training forward at RNG step `step`: HF's loss of the answer spans (B starts, B ends;
  /// clamped to [0, T], T = not counted).
  double forward_loss(TokenSpan tokens, Index batch, const AttentionMask& mask,
                      const QuestionAnsweringTargets& spans, Tape<S>& tape, std::uint64_t step);
  /// Accumulates (+=) the gradients of grad_scale * loss. Consumes the tape.
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask,
                    const QuestionAnsweringTargets& spans) {
    return train_step(tokens, batch, mask, spans, this->step_);
  }
  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask,
                    const QuestionAnsweringTargets& spans, std::uint64_t step) {
    const double loss = forward_loss(tokens, batch, mask, spans, tape_, step);
    backward(tape_);
    return loss;
  }

 private:
  QuestionAnsweringHead<S> head_;
  Tape<S> tape_;
};

// ---- member definitions -------------------------------------------------------------------------
// Defined outside the class bodies (not implicitly inline), see instances/reformer_instances.hpp.

template <class S>
ReformerForMaskedLM<S>::ReformerForMaskedLM(const ReformerConfig& config, BackpropMode mode)
    : Base(validated(config), mode), head_(LmHeadConfig::from(this->cfg_), this->params_) {
  init(this->cfg_.seed);
}

template <class S>
const ReformerConfig& ReformerForMaskedLM<S>::validated(const ReformerConfig& cfg) {
  cfg.validate();
  REFORMER_REQUIRE(!cfg.is_decoder, ConfigError, "ReformerForMaskedLM",
                   "is_decoder = true: a masked language model is bidirectional, it needs "
                   "is_decoder = false (ReformerLM is the causal one)");
  return cfg;
}

template <class S>
void ReformerForMaskedLM<S>::init(std::uint64_t seed) {
  const Rng root = this->init_backbone(seed);
  head_.init(this->params_, root.derive(3), this->cfg_.initializer_range);
  this->params_.zero_grad();
}

template <class S>
Matrix<S> ReformerForMaskedLM<S>::logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                                         BucketRecord& buckets) const {
  return this->infer("ReformerForMaskedLM::logits", tokens, batch, mask, buckets,
                     [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                       return head_.logits(this->params_, x1, x2, ctx);
                     });
}

template <class S>
double ReformerForMaskedLM<S>::forward_loss(TokenSpan tokens, Index batch,
                                            const AttentionMask& mask, TokenSpan labels,
                                            Tape<S>& tape, std::uint64_t step) {
  const char* where = "ReformerForMaskedLM::forward_loss";
  PaddedBatch in = this->padded_batch(where, tokens, batch, mask, &tape.tokens);
  REFORMER_REQUIRE(labels.size() == tokens.size(), InvalidArgument, where,
                   "labels.size() = ", labels.size(), " must equal tokens.size() = ", tokens.size(),
                   " (one label per position, negative = not counted)");
  const Index v = this->cfg_.vocab_size;
  for (Index i = 0; i < labels.size(); ++i) {
    REFORMER_REQUIRE(labels[i] < v, InvalidArgument, where, "labels[", i, "] = ", labels[i],
                     " (sequence ", i / in.length, ", position ", i % in.length,
                     ") is outside [0, vocab_size = ", v, ") (negative = not counted)");
  }
  tape.targets.assign(labels.begin(), labels.end());
  const CrossEntropyResult ce =
      this->train_forward(std::move(in), tape, step,
                          [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                            return head_.loss(this->params_, x1, x2, TokenSpan(tape.targets), ctx);
                          });
  tape.loss = ce.mean;
  tape.loss_count = ce.count;
  tape.ready = true;
  return ce.mean;
}

template <class S>
void ReformerForMaskedLM<S>::backward(Tape<S>& tape, double grad_scale) {
  const double scale = tape.loss_count > 0 ? grad_scale / static_cast<double>(tape.loss_count) : 0;
  this->train_backward(
      "ReformerForMaskedLM::backward", tape,
      [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx, MatrixRef<S> dcat) {
        head_.backward(this->params_, x1, x2, TokenSpan(tape.targets), scale, ctx, dcat);
      });
}

template <class S>
ReformerForSequenceClassification<S>::ReformerForSequenceClassification(
    const ReformerConfig& config, BackpropMode mode)
    : Base((config.validate(), config), mode),
      head_(ClassificationHeadConfig::from(this->cfg_), this->params_) {
  init(this->cfg_.seed);
}

template <class S>
void ReformerForSequenceClassification<S>::init(std::uint64_t seed) {
  const Rng root = this->init_backbone(seed);
  head_.init(this->params_, root.derive(3), this->cfg_.initializer_range);
  this->params_.zero_grad();
}

template <class S>
Matrix<S> ReformerForSequenceClassification<S>::logits(TokenSpan tokens, Index batch,
                                                       const AttentionMask& mask,
                                                       BucketRecord& buckets) const {
  return this->infer("ReformerForSequenceClassification::logits", tokens, batch, mask, buckets,
                     [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                       return head_.logits(this->params_, x1, x2, ctx);
                     });
}

template <class S>
double ReformerForSequenceClassification<S>::forward_loss(TokenSpan tokens, Index batch,
                                                          const AttentionMask& mask,
                                                          const ClassificationTargets& labels,
                                                          Tape<S>& tape, std::uint64_t step) {
  const char* where = "ReformerForSequenceClassification::forward_loss";
  PaddedBatch in = this->padded_batch(where, tokens, batch, mask, &tape.tokens);
  const Index l = this->cfg_.num_labels;
  REFORMER_REQUIRE(labels.size() == batch, InvalidArgument, where,
                   "labels.size() = ", labels.size(), " must equal batch = ", batch,
                   " (one label per sequence)");
  REFORMER_REQUIRE(
      labels.regression() == (l == 1), InvalidArgument, where, "num_labels = ", l,
      l == 1 ? ": a regression takes real-valued labels" : ": a classification takes class ids");
  tape.targets.clear();
  tape.values.clear();
  for (Index b = 0; b < batch; ++b) {
    if (labels.regression()) {
      tape.values.push_back(labels.value(b));
    } else {
      REFORMER_REQUIRE(labels.label(b) < l, InvalidArgument, where, "labels[", b,
                       "] = ", labels.label(b), " is outside [0, num_labels = ", l,
                       ") (negative = not counted)");
      tape.targets.push_back(labels.label(b));
    }
  }
  const CrossEntropyResult r =
      this->train_forward(std::move(in), tape, step,
                          [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                            return head_.loss(this->params_, x1, x2, targets_of(tape), ctx);
                          });
  tape.loss = r.count > 0 ? r.sum / static_cast<double>(r.count) : 0.0;
  tape.loss_count = r.count;
  tape.ready = true;
  return tape.loss;
}

template <class S>
void ReformerForSequenceClassification<S>::backward(Tape<S>& tape, double grad_scale) {
  this->train_backward(
      "ReformerForSequenceClassification::backward", tape,
      [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx, MatrixRef<S> dcat) {
        head_.backward(this->params_, x1, x2, targets_of(tape), grad_scale, ctx, dcat,
                       Reduction::kMean);
      });
}

template <class S>
ReformerForQuestionAnswering<S>::ReformerForQuestionAnswering(const ReformerConfig& config,
                                                              BackpropMode mode)
    : Base((config.validate(), config), mode),
      head_(QuestionAnsweringHeadConfig::from(this->cfg_), this->params_) {
  init(this->cfg_.seed);
}

template <class S>
void ReformerForQuestionAnswering<S>::init(std::uint64_t seed) {
  const Rng root = this->init_backbone(seed);
  head_.init(this->params_, root.derive(3), this->cfg_.initializer_range);
  this->params_.zero_grad();
}

template <class S>
Matrix<S> ReformerForQuestionAnswering<S>::logits(TokenSpan tokens, Index batch,
                                                  const AttentionMask& mask,
                                                  BucketRecord& buckets) const {
  return this->infer("ReformerForQuestionAnswering::logits", tokens, batch, mask, buckets,
                     [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                       return head_.logits(this->params_, x1, x2, ctx);
                     });
}

template <class S>
double ReformerForQuestionAnswering<S>::forward_loss(TokenSpan tokens, Index batch,
                                                     const AttentionMask& mask,
                                                     const QuestionAnsweringTargets& spans,
                                                     Tape<S>& tape, std::uint64_t step) {
  const char* where = "ReformerForQuestionAnswering::forward_loss";
  PaddedBatch in = this->padded_batch(where, tokens, batch, mask, &tape.tokens);
  REFORMER_REQUIRE(
      spans.start_positions.size() == batch && spans.end_positions.size() == batch, InvalidArgument,
      where, "start_positions.size() = ", spans.start_positions.size(),
      " and end_positions.size() = ", spans.end_positions.size(), " must equal batch = ", batch);
  tape.targets.assign(spans.start_positions.begin(), spans.start_positions.end());
  tape.targets.insert(tape.targets.end(), spans.end_positions.begin(), spans.end_positions.end());
  const QuestionAnsweringLoss r = this->train_forward(
      std::move(in), tape, step,
      [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
        const TokenSpan all(tape.targets);
        return head_.loss(this->params_, x1, x2, {all.subspan(0, batch), all.subspan(batch, batch)},
                          ctx);
      });
  tape.loss = r.mean;
  tape.loss_count = r.start.count + r.end.count;
  tape.ready = true;
  return r.mean;
}

template <class S>
void ReformerForQuestionAnswering<S>::backward(Tape<S>& tape, double grad_scale) {
  this->train_backward(
      "ReformerForQuestionAnswering::backward", tape,
      [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx, MatrixRef<S> dcat) {
        const TokenSpan all(tape.targets);
        const Index b = tape.batch;
        head_.backward(this->params_, x1, x2, {all.subspan(0, b), all.subspan(b, b)}, grad_scale,
                       ctx, dcat, Reduction::kMean);
      });
}

}  // namespace reformer
