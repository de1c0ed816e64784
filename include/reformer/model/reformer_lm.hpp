#pragma once
// ReformerLM: the Reformer causal language model (docs/DESIGN.md 1.1), Hugging Face's
// ReformerModelWithLMHead with is_decoder = true, made of three parts:
//
//   e        = Embeddings(tok)                              D x N, N = B*T   (embeddings.hpp)
//   (x1, x2) = ReversibleStack(e, e)                        D x N each  (reversible_stack.hpp)
//              block l: y1 = x1 + Attn_l(x2), y2 = x2 + FFN_l(y1)
//   loss     = LmHead(x1, x2, targets)                      (lm_head.hpp)
//              target of (b, t) = tok(b, t+1) for t < T-1; the last position is not counted
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
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/embeddings.hpp"
#include "reformer/model/lm_head.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace reformer {

/// One parameter seen by name: its slot (name, shape) and flat views of value and gradient.
template <class S>
struct NamedParameter {
  const ParamSlot* slot;
  VectorMap<S> value;
  VectorMap<S> grad;

  const std::string& name() const { return slot->name; }
  const std::vector<Index>& shape() const { return slot->shape; }
};

template <class S>
class ReformerLM {
 public:
  using Scalar = S;
  using LshSublayer = AttentionSublayer<S, LshAttention<S>>;
  using LocalSublayer = AttentionSublayer<S, LocalAttention<S>>;
  using FullSublayer = AttentionSublayer<S, FullAttention<S>>;

  /// Validates `config` (ConfigError naming the field), registers every parameter and
  /// initialises them as HF does from config.seed.
  explicit ReformerLM(const ReformerConfig& config, BackpropMode mode = BackpropMode::kReversible);

  const ReformerConfig& config() const { return cfg_; }
  Index num_layers() const { return stack_.size(); }
  BackpropMode backprop_mode() const { return mode_; }
  void set_backprop_mode(BackpropMode mode) { mode_ = mode; }

  const Embeddings<S>& embeddings() const { return embeddings_; }
  const ReversibleStack<S>& stack() const { return stack_; }
  const LmHead<S>& head() const { return head_; }

  // ---- parameters --------------------------------------------------------------------------

  Parameters<S>& parameters() { return params_; }
  const Parameters<S>& parameters() const { return params_; }
  /// Every parameter in HF state-dict order.
  std::vector<NamedParameter<S>> named_parameters();
  /// Slot of an HF parameter name (also the alias `lm_head.decoder.bias`), or nullopt.
  std::optional<SlotId> find_parameter(const std::string& name) const {
    return params_.find(name == "lm_head.decoder.bias" ? std::string("lm_head.bias") : name);
  }
  /// Value / gradient of a parameter by HF name (row-major view of shape[0] x rest);
  /// InvalidArgument naming it when unknown.
  WeightMap<S> parameter(const std::string& name) { return params_.value(slot_of(name)); }
  ConstWeightMap<S> parameter(const std::string& name) const {
    return params_.value(slot_of(name));
  }
  WeightMap<S> gradient(const std::string& name) { return params_.grad(slot_of(name)); }
  ConstWeightMap<S> gradient(const std::string& name) const { return params_.grad(slot_of(name)); }
  void zero_grad() { params_.zero_grad(); }

  /// Hugging Face initialisation from `seed`: weights ~ normal(0, initializer_range), axial
  /// position tables ~ normal(0, axial_norm_std), biases 0, LayerNorm weight 1 / bias 0.
  /// Zeroes the gradients.
  void init(std::uint64_t seed);

  // ---- RNG step ----------------------------------------------------------------------------

  /// The step the next train_step(tokens, batch) uses.
  std::uint64_t step() const { return step_; }
  void set_step(std::uint64_t step) { step_ = step; }

  // ---- work buffers ------------------------------------------------------------------------

  /// The cache the passes draw their work buffers from (its stats() show the memory held).
  Workspace& workspace() const { return *workspace_.get(); }
  /// Gives the cached work buffers back to the system (e.g. after training, before inference
  /// of another shape). The next pass maps them again.
  void release_workspace() { workspace_.get()->trim(); }

  // ---- inference ---------------------------------------------------------------------------

  /// Logits (V x B*T, sequence b in columns [b*T, (b+1)*T)) of `batch` sequences of equal
  /// length laid out one after another in `tokens`. LSH layers hash with RNG step 0.
  Matrix<S> logits(TokenSpan tokens, Index batch) const {
    BucketRecord buckets;
    return logits(tokens, batch, buckets);
  }
  /// As above, recording the LSH buckets into `buckets`, or replaying them with buckets.replay.
  Matrix<S> logits(TokenSpan tokens, Index batch, BucketRecord& buckets) const;

  // ---- training ----------------------------------------------------------------------------

  /// Training forward pass at RNG step `step` (dropout on, fresh LSH rotations): returns the
  /// mean next-token loss and fills `tape` for backward(). `targets` (optional, B*T ids, a
  /// negative id = not counted, e.g. padding) replaces the default targets tok(b, t+1).
  double forward_loss(TokenSpan tokens, Index batch, Tape<S>& tape, std::uint64_t step,
                      TokenSpan targets = {});

  /// Backward pass of the last forward_loss() on `tape`: accumulates (+=) the gradients of
  /// grad_scale * loss into parameters().grads(). Consumes the tape.
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  /// forward_loss + backward at the model's step, which then advances. Gradients accumulate
  /// (call zero_grad first for a fresh step). Returns the loss.
  double train_step(TokenSpan tokens, Index batch, TokenSpan targets = {}) {
    return train_step(tokens, batch, step_, targets);
  }
  /// The same at an explicit step (the counter becomes step + 1).
  double train_step(TokenSpan tokens, Index batch, std::uint64_t step, TokenSpan targets = {}) {
    const double loss = forward_loss(tokens, batch, tape_, step, targets);
    backward(tape_);
    return loss;
  }

 private:
  static const ReformerConfig& validated(const ReformerConfig& cfg);
  static ReversibleStack<S> make_stack(const ReformerConfig& cfg, Parameters<S>& params);
  SlotId slot_of(const std::string& name) const;

  /// The context of a pass (validates tokens and batch): the model-level layer index
  /// num_layers; the stack sets each block's own.
  Context pass_context(const char* where, TokenSpan tokens, Index batch, bool training,
                       std::uint64_t step) const;

  ReformerConfig cfg_;
  BackpropMode mode_;
  Parameters<S> params_;
  Embeddings<S> embeddings_;
  ReversibleStack<S> stack_;
  LmHead<S> head_;
  std::uint64_t step_ = 0;
  Tape<S> tape_;  // train_step's tape, reused across steps

  // The model's Workspace: movable with the model, a fresh one in a copy (a moved-from model
  // gets a new one when used again). Shared with the tapes whose streams it holds, so a tape
  // may outlive the model.
  class OwnedWorkspace {
   public:
    OwnedWorkspace() = default;
    OwnedWorkspace(const OwnedWorkspace&) {}
    OwnedWorkspace& operator=(const OwnedWorkspace&) { return *this; }
    OwnedWorkspace(OwnedWorkspace&&) noexcept = default;
    OwnedWorkspace& operator=(OwnedWorkspace&&) noexcept = default;
    Workspace* get() const { return shared().get(); }
    const std::shared_ptr<Workspace>& shared() const {
      if (!p_) p_ = std::make_shared<Workspace>();
      return p_;
    }

   private:
    mutable std::shared_ptr<Workspace> p_ = std::make_shared<Workspace>();
  };
  OwnedWorkspace workspace_;
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class ReformerLM<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
ReformerLM<S>::ReformerLM(const ReformerConfig& config, BackpropMode mode)
    : cfg_(validated(config)),
      mode_(mode),
      embeddings_(cfg_, params_),
      stack_(make_stack(cfg_, params_)),
      head_(LmHeadConfig::from(cfg_), params_) {
  init(cfg_.seed);
}

template <class S>
const ReformerConfig& ReformerLM<S>::validated(const ReformerConfig& cfg) {
  cfg.validate();
  REFORMER_REQUIRE(cfg.is_decoder, ConfigError, "ReformerLM",
                   "is_decoder = false: a causal language model needs is_decoder = true");
  return cfg;
}

template <class S>
ReversibleStack<S> ReformerLM<S>::make_stack(const ReformerConfig& cfg, Parameters<S>& params) {
  ReversibleStack<S> stack;
  for (Index l = 0; l < cfg.num_layers(); ++l) {
    const std::string prefix = "reformer.encoder.layers." + std::to_string(l) + ".";
    // Attention before feed-forward: the HF state-dict order of the registered parameters.
    std::optional<Sublayer<S>> attention;
    switch (cfg.layer_kind(l)) {
      case LayerKind::kLsh:
        attention.emplace(
            LshSublayer(LshSublayer::Config::from(cfg), params, prefix + "attention."));
        break;
      case LayerKind::kLocal:
        attention.emplace(
            LocalSublayer(LocalSublayer::Config::from(cfg), params, prefix + "attention."));
        break;
      case LayerKind::kFull:
        attention.emplace(
            FullSublayer(FullSublayer::Config::from(cfg), params, prefix + "attention."));
        break;
    }
    FeedForward<S> feed_forward(FeedForwardConfig::from(cfg), params, prefix + "feed_forward.");
    stack.add(std::move(*attention), std::move(feed_forward));
  }
  return stack;
}

template <class S>
std::vector<NamedParameter<S>> ReformerLM<S>::named_parameters() {
  std::vector<NamedParameter<S>> out;
  out.reserve(static_cast<std::size_t>(params_.num_slots()));
  for (SlotId id = 0; id < params_.num_slots(); ++id) {
    out.push_back({&params_.slot(id), params_.value_vector(id), params_.grad_vector(id)});
  }
  return out;
}

template <class S>
SlotId ReformerLM<S>::slot_of(const std::string& name) const {
  const auto id = find_parameter(name);
  REFORMER_REQUIRE(id.has_value(), InvalidArgument, "ReformerLM::parameter", "no parameter named '",
                   name, "'");
  return *id;
}

template <class S>
void ReformerLM<S>::init(std::uint64_t seed) {
  const Rng root = Rng(seed).derive(stream::kInit);
  const double range = cfg_.initializer_range;
  embeddings_.init(params_, root.derive(0), range, cfg_.axial_norm_std);
  stack_.init(params_, root.derive(1), root.derive(2), range);
  head_.init(params_, root.derive(3), range);
  params_.zero_grad();
}

template <class S>
Context ReformerLM<S>::pass_context(const char* where, TokenSpan tokens, Index batch, bool training,
                                    std::uint64_t step) const {
  REFORMER_REQUIRE(batch >= 1, InvalidArgument, where, "batch = ", batch, " must be >= 1");
  Context ctx;
  ctx.batch = batch;
  ctx.training = training;
  ctx.seed = cfg_.seed;
  ctx.step = step;
  ctx.layer = static_cast<std::uint32_t>(num_layers());
  ctx.workspace = workspace_.get();
  embeddings_.check_tokens(where, tokens, ctx);
  return ctx;
}

template <class S>
Matrix<S> ReformerLM<S>::logits(TokenSpan tokens, Index batch, BucketRecord& buckets) const {
  const Context ctx = pass_context("ReformerLM::logits", tokens, batch, false, 0);
  Scratch<S> x1(ctx.workspace, cfg_.hidden_size, tokens.size());
  Scratch<S> x2(ctx.workspace, cfg_.hidden_size, tokens.size());
  embeddings_.forward(params_, tokens, x1.map(), ctx);  // e
  x2.map() = x1.map();
  stack_.forward(params_, x1.map(), x2.map(), ctx, buckets);
  Matrix<S> out = head_.logits(params_, x1.map(), x2.map(), ctx);
  x1.reset();
  x2.reset();
  return out;
}

template <class S>
double ReformerLM<S>::forward_loss(TokenSpan tokens, Index batch, Tape<S>& tape, std::uint64_t step,
                                   TokenSpan targets) {
  const char* where = "ReformerLM::forward_loss";
  const Context ctx = pass_context(where, tokens, batch, true, step);
  const Index n = tokens.size(), t = n / batch;
  REFORMER_REQUIRE(!targets.empty() || t >= 2, InvalidArgument, where, "sequence length T = ", t,
                   " leaves no next-token target; need T >= 2 or explicit targets");
  REFORMER_REQUIRE(targets.empty() || targets.size() == n, InvalidArgument, where,
                   "targets.size() = ", targets.size(), " must equal tokens.size() = ", n);
  for (Index i = 0; i < targets.size(); ++i) {
    REFORMER_REQUIRE(targets[i] < cfg_.vocab_size, InvalidArgument, where, "targets[", i,
                     "] = ", targets[i], " is outside [0, vocab_size = ", cfg_.vocab_size,
                     ") (negative = not counted)");
  }
  step_ = step + 1;
  tape.ready = false;
  tape.batch = batch;
  tape.length = t;
  tape.step = step;
  tape.mode = mode_;
  tape.tokens.assign(tokens.begin(), tokens.end());
  if (targets.empty()) {  // next-token targets; the last position of each sequence has none
    tape.targets.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      tape.targets[static_cast<std::size_t>(i)] = (i % t == t - 1) ? Token{-1} : tokens[i + 1];
    }
  } else {
    tape.targets.assign(targets.begin(), targets.end());
  }
  const bool store = mode_ == BackpropMode::kStoredActivations;
  if (!store) tape.stored.clear();  // stored mode reuses the per-layer matrices of the last step

  // The streams come from the workspace: huge pages, reused by the next step of this shape.
  tape.x1.resize(workspace_.shared(), cfg_.hidden_size, n);
  tape.x2.resize(workspace_.shared(), cfg_.hidden_size, n);
  auto x1 = tape.x1.map(), x2 = tape.x2.map();
  embeddings_.forward(params_, tokens, x1, ctx);  // x1 = x2 = e
  x2 = x1;
  stack_.forward(params_, x1, x2, ctx, tape.buckets, store ? &tape.stored : nullptr);
  const CrossEntropyResult ce = head_.loss(params_, x1, x2, TokenSpan(tape.targets), ctx);
  tape.loss = ce.mean;
  tape.loss_count = ce.count;
  tape.ready = true;
  return ce.mean;
}

template <class S>
void ReformerLM<S>::backward(Tape<S>& tape, double grad_scale) {
  const char* where = "ReformerLM::backward";
  REFORMER_REQUIRE(tape.ready, InvalidArgument, where,
                   "the tape holds no forward pass (run forward_loss first; backward consumes "
                   "the tape)");
  const Index n = tape.batch * tape.length, d = cfg_.hidden_size;
  REFORMER_REQUIRE(
      tape.x1.rows() == d && tape.x1.cols() == n && tape.x2.rows() == d && tape.x2.cols() == n,
      InvalidArgument, where, "the tape does not belong to this model (x1 is ", tape.x1.rows(),
      " x ", tape.x1.cols(), ", expected ", d, " x ", n, ")");
  tape.ready = false;
  const Context ctx = pass_context(where, TokenSpan(tape.tokens), tape.batch, true, tape.step);

  // loss = mean over the counted targets  =>  d loss / d (sum) = grad_scale / count.
  const double scale = tape.loss_count > 0 ? grad_scale / static_cast<double>(tape.loss_count) : 0;
  Scratch<S> dcat(ctx.workspace, 2 * d, n);  // [dy1; dy2]: gradients of the last block's outputs
  head_.backward(params_, tape.x1.map(), tape.x2.map(), TokenSpan(tape.targets), scale, ctx,
                 dcat.map());
  auto dy1 = dcat.map().topRows(d);
  auto dy2 = dcat.map().bottomRows(d);

  // Blocks, from the top: (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2).
  if (tape.mode == BackpropMode::kReversible) {
    stack_.backward(params_, tape.x1.map(), tape.x2.map(), dy1, dy2, ctx, tape.buckets);
  } else {
    stack_.backward_stored(params_, tape.stored, dy1, dy2, ctx, tape.buckets);
  }

  // x1 = x2 = e  =>  de = dx1 + dx2 (in dy1's place)
  dy1 += dy2;
  embeddings_.backward(params_, TokenSpan(tape.tokens), dy1, ctx);
  dcat.reset();
}

}  // namespace reformer
