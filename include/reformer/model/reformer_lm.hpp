#pragma once
// ReformerLM: the Reformer causal language model (docs/DESIGN.md 1.1), Hugging Face's
// ReformerModelWithLMHead with is_decoder = true: a ReformerBackbone (reformer_backbone.hpp)
// and an LmHead.
//
//   e        = Embeddings(tok)                              D x N, N = B*T   (embeddings.hpp)
//   (x1, x2) = ReversibleStack(e, e)                        D x N each  (reversible_stack.hpp)
//              block l: y1 = x1 + Attn_l(x2), y2 = x2 + FFN_l(y1)
//   loss     = LmHead(x1, x2, targets)                      (lm_head.hpp)
//              target of (b, t) = tok(b, t+1) for t < T-1; the last position is not counted
//
// An optional AttentionMask (core/attention_mask.hpp) marks padding in batches of sequences of
// different lengths: no real position sees a padded key, and with the default targets a
// position counts only when it and the next one are real. A length that is not a multiple of
// the chunk lengths is padded as HF does (ReformerConfig::padded_length, DESIGN 7.4).
//
// Training: forward_loss() fills a Tape (tape.hpp) with the last block's outputs, the LSH
// buckets and the RNG step; backward() runs the head's backward, then walks the stack from the
// top reconstructing every block's inputs (docs/DESIGN.md 3.2), replaying the buckets and
// redrawing the dropout masks, and ends in the embeddings. Gradients accumulate (+=).
//
// Randomness: the key of every draw is (config.seed, step, layer, stream, ...); block l uses
// layer index l, the embeddings and the head use num_layers. The model owns a step counter:
// train_step(tokens, batch) uses it and advances it, so every step draws new rotations and
// dropout masks. Calls with an explicit step (reproducible runs, resuming) set the counter to
// step + 1. Inference uses step 0 (no dropout).
//
// Work buffers: the model owns a Workspace (core/workspace.hpp) that every pass draws its D x N
// and larger temporaries from, so a training step with the shapes of the previous one maps no
// new memory. Copies of a model get a workspace of their own; release_workspace() gives its
// free regions back to the system.
//
// Parameters: one Parameters<S> store with the HF names, shapes and state-dict order
// (docs/DESIGN.md 2); HF's `lm_head.decoder.bias` is an alias of `lm_head.bias`.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/lm_head.hpp"
#include "reformer/model/parameter_layout.hpp"
#include "reformer/model/reformer_backbone.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstdint>
#include <vector>

namespace reformer {

template <class S>
class ReformerLM : public ReformerBackbone<S> {
  using Base = ReformerBackbone<S>;

 public:
  using Scalar = S;
  static constexpr Architecture kArchitecture = Architecture::kLanguageModel;

  /// Validates `config` (ConfigError naming the field), registers every parameter and
  /// initialises them as HF does from config.seed.
  explicit ReformerLM(const ReformerConfig& config, BackpropMode mode = BackpropMode::kReversible);

  const LmHead<S>& head() const { return head_; }

  /// Hugging Face initialisation from `seed`: weights ~ normal(0, initializer_range), axial
  /// position tables ~ normal(0, axial_norm_std), biases 0, LayerNorm weight 1 / bias 0.
  /// Zeroes the gradients.
  void init(std::uint64_t seed);

  // ---- inference ---------------------------------------------------------------------------

  /// Logits (V x B*T, sequence b in columns [b*T, (b+1)*T)) of `batch` sequences of equal
  /// length laid out one after another in `tokens`, with key padding `mask` (B x T, or empty:
  /// no padding). LSH layers hash with RNG step 0.
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask = {}) const {
    BucketRecord buckets;
    return logits(tokens, batch, mask, buckets);
  }
  /// As above, recording the LSH buckets into `buckets`, or replaying them with buckets.replay
  /// (buckets at the padded length, [B, H, R, Tp]).
  Matrix<S> logits(TokenSpan tokens, Index batch, BucketRecord& buckets) const {
    return logits(tokens, batch, AttentionMask(), buckets);
  }
  Matrix<S> logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                   BucketRecord& buckets) const;

  // ---- training ----------------------------------------------------------------------------

  /// Training forward pass at RNG step `step` (dropout on, fresh LSH rotations): returns the
  /// mean next-token loss and fills `tape` for backward(). `targets` (optional, B*T ids, a
  /// negative id = not counted, e.g. padding) replaces the default targets tok(b, t+1).
  double forward_loss(TokenSpan tokens, Index batch, Tape<S>& tape, std::uint64_t step,
                      TokenSpan targets = {}) {
    return forward_loss(tokens, batch, AttentionMask(), tape, step, targets);
  }
  /// The same with key padding `mask` (B x T or empty). The default targets then count
  /// position t only when t and t+1 are both real.
  double forward_loss(TokenSpan tokens, Index batch, const AttentionMask& mask, Tape<S>& tape,
                      std::uint64_t step, TokenSpan targets = {});

  /// Backward pass of the last forward_loss() on `tape`: accumulates (+=) the gradients of
  /// grad_scale * loss into parameters().grads(). Consumes the tape.
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  /// forward_loss + backward at the model's step, which then advances. Gradients accumulate
  /// (call zero_grad first for a fresh step). Returns the loss.
  double train_step(TokenSpan tokens, Index batch, TokenSpan targets = {}) {
    return train_step(tokens, batch, this->step_, targets);
  }
  /// The same at an explicit step (the counter becomes step + 1).
  double train_step(TokenSpan tokens, Index batch, std::uint64_t step, TokenSpan targets = {}) {
    const double loss = forward_loss(tokens, batch, tape_, step, targets);
    backward(tape_);
    return loss;
  }
  /// The same with key padding `mask`, at the model's step.
  double train_step(TokenSpan tokens, Index batch, const AttentionMask& mask,
                    TokenSpan targets = {}) {
    const double loss = forward_loss(tokens, batch, mask, tape_, this->step_, targets);
    backward(tape_);
    return loss;
  }

 private:
  static const ReformerConfig& validated(const ReformerConfig& cfg);

  LmHead<S> head_;
  Tape<S> tape_;  // train_step's tape, reused across steps
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class ReformerLM<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
ReformerLM<S>::ReformerLM(const ReformerConfig& config, BackpropMode mode)
    : Base(validated(config), mode), head_(LmHeadConfig::from(this->cfg_), this->params_) {
  init(this->cfg_.seed);
}

template <class S>
const ReformerConfig& ReformerLM<S>::validated(const ReformerConfig& cfg) {
  cfg.validate();
  REFORMER_REQUIRE(cfg.is_decoder, ConfigError, "ReformerLM",
                   "is_decoder = false: a causal language model needs is_decoder = true (the "
                   "encoder models, e.g. ReformerForMaskedLM, take is_decoder = false)");
  return cfg;
}

template <class S>
void ReformerLM<S>::init(std::uint64_t seed) {
  const Rng root = this->init_backbone(seed);
  head_.init(this->params_, root.derive(3), this->cfg_.initializer_range);
  this->params_.zero_grad();
}

template <class S>
Matrix<S> ReformerLM<S>::logits(TokenSpan tokens, Index batch, const AttentionMask& mask,
                                BucketRecord& buckets) const {
  return this->infer("ReformerLM::logits", tokens, batch, mask, buckets,
                     [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx) {
                       return head_.logits(this->params_, x1, x2, ctx);
                     });
}

template <class S>
double ReformerLM<S>::forward_loss(TokenSpan tokens, Index batch, const AttentionMask& mask,
                                   Tape<S>& tape, std::uint64_t step, TokenSpan targets) {
  const char* where = "ReformerLM::forward_loss";
  PaddedBatch in = this->padded_batch(where, tokens, batch, mask, &tape.tokens);
  const Index n = tokens.size(), t = in.length;
  REFORMER_REQUIRE(!targets.empty() || t >= 2, InvalidArgument, where, "sequence length T = ", t,
                   " leaves no next-token target; need T >= 2 or explicit targets");
  REFORMER_REQUIRE(targets.empty() || targets.size() == n, InvalidArgument, where,
                   "targets.size() = ", targets.size(), " must equal tokens.size() = ", n);
  const Index v = this->cfg_.vocab_size;
  for (Index i = 0; i < targets.size(); ++i) {
    REFORMER_REQUIRE(targets[i] < v, InvalidArgument, where, "targets[", i, "] = ", targets[i],
                     " is outside [0, vocab_size = ", v, ") (negative = not counted)");
  }
  if (targets.empty()) {
    // Next-token targets; the last position of each sequence has none, and with a mask a
    // position counts only when it and the next one are real.
    tape.targets.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      const Index b = i / t, pos = i % t;
      const bool counted =
          pos < t - 1 && (mask.empty() || (mask.real(b, pos) && mask.real(b, pos + 1)));
      tape.targets[static_cast<std::size_t>(i)] = counted ? tokens[i + 1] : Token{-1};
    }
  } else {
    tape.targets.assign(targets.begin(), targets.end());
  }
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
void ReformerLM<S>::backward(Tape<S>& tape, double grad_scale) {
  // loss = mean over the counted targets  =>  d loss / d (sum) = grad_scale / count.
  const double scale = tape.loss_count > 0 ? grad_scale / static_cast<double>(tape.loss_count) : 0;
  this->train_backward(
      "ReformerLM::backward", tape,
      [&](ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, const Context& ctx, MatrixRef<S> dcat) {
        head_.backward(this->params_, x1, x2, TokenSpan(tape.targets), scale, ctx, dcat);
      });
}

}  // namespace reformer
