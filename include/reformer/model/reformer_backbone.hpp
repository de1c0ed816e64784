#pragma once
// ReformerBackbone: what every Reformer model shares (Hugging Face's ReformerModel without the
// final LayerNorm, which belongs to the heads): the parameters, the embeddings, the reversible
// stack, the RNG step counter, the work buffers, and the pass through them
//
//   tokens (B x T), mask   --pad-->   B x Tp                      (padded_batch, DESIGN 7.4)
//   e        = Embeddings(tok)                  D x B*Tp
//   (x1, x2) = ReversibleStack(e, e)            D x B*Tp each, ctx.mask = the padded mask
//   head input = the first T columns of every sequence of x1, x2   (HeadStreams)
//
// Padding as HF's ReformerModel: when T is not a multiple of the least common multiple of the
// chunk lengths in use (and longer than the shortest), the sequences are extended with
// config.pad_token_id to the next multiple Tp, the mask with padding (a mask is created when
// there is none), positions continue (T, T+1, ..., Tp-1) and the heads see the original T
// positions only. Gradients reaching the padded columns are zero.
//
// The models (ReformerLM, model/reformer_lm.hpp; the encoder models, model/encoder_models.hpp)
// derive from it and add a head; the head registers its parameters after the backbone's, so the
// store is in HF state-dict order.
#include "reformer/core/attention_mask.hpp"
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
#include "reformer/model/tape.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace reformer {

static_assert(ConfigLimits::kMaxHashes == kLshMaxHashes,
              "ReformerConfig::validate must refuse the num_hashes LshAttention refuses");

/// One parameter seen by name: its slot (name, shape) and flat views of value and gradient.
template <class S>
struct NamedParameter {
  const ParamSlot* slot;
  VectorMap<S> value;
  VectorMap<S> grad;

  const std::string& name() const { return slot->name; }
  const std::vector<Index>& shape() const { return slot->shape; }
};

/// A batch as the stack runs it: B sequences of Tp = padded_length tokens (the T given ones,
/// then pad tokens) and the key padding mask at that length (empty: nothing is padding).
struct PaddedBatch {
  Index batch = 0;          ///< B
  Index length = 0;         ///< T, what the caller gave and the heads see
  Index padded_length = 0;  ///< Tp >= T
  std::vector<Token> tokens;
  AttentionMask mask;

  bool padded() const { return padded_length != length; }
  /// The mask to hand to the layers (null when nothing is padding).
  const AttentionMask* mask_or_null() const { return mask.empty() ? nullptr : &mask; }
};

/// The head's view of a pass: the first T columns of every sequence of the last block's
/// streams. Without padding these are the streams themselves; with padding, compact copies
/// (D x B*T) from the workspace. scatter() spreads a head gradient (2D x B*T) back to the
/// padded layout (2D x B*Tp, zero at padded columns).
template <class S>
class HeadStreams {
 public:
  HeadStreams(ConstMatrixRef<S> x1, ConstMatrixRef<S> x2, Index batch, Index length,
              Index padded_length, Workspace* ws)
      : batch_(batch), length_(length), padded_(padded_length), x1_(x1), x2_(x2) {
    if (length_ == padded_) return;
    c1_.resize(ws, x1.rows(), batch * length);
    c2_.resize(ws, x2.rows(), batch * length);
    for (Index b = 0; b < batch; ++b) {
      c1_.map().middleCols(b * length, length) = x1.middleCols(b * padded_, length);
      c2_.map().middleCols(b * length, length) = x2.middleCols(b * padded_, length);
    }
  }

  ConstMatrixRef<S> x1() const { return length_ == padded_ ? x1_ : ConstMatrixRef<S>(c1_.map()); }
  ConstMatrixRef<S> x2() const { return length_ == padded_ ? x2_ : ConstMatrixRef<S>(c2_.map()); }

  /// dpadded = dcompact at the real columns, 0 at the padded ones.
  void scatter(ConstMatrixRef<S> dcompact, MatrixRef<S> dpadded) const {
    if (length_ == padded_) {
      dpadded = dcompact;
      return;
    }
    for (Index b = 0; b < batch_; ++b) {
      dpadded.middleCols(b * padded_, length_) = dcompact.middleCols(b * length_, length_);
      dpadded.middleCols(b * padded_ + length_, padded_ - length_).setZero();
    }
  }

 private:
  Index batch_, length_, padded_;
  ConstMatrixRef<S> x1_, x2_;
  Scratch<S> c1_, c2_;
};

template <class S>
class ReformerBackbone {
 public:
  using Scalar = S;
  using LshSublayer = AttentionSublayer<S, LshAttention<S>>;
  using LocalSublayer = AttentionSublayer<S, LocalAttention<S>>;
  using FullSublayer = AttentionSublayer<S, FullAttention<S>>;

  const ReformerConfig& config() const { return cfg_; }
  Index num_layers() const { return stack_.size(); }
  BackpropMode backprop_mode() const { return mode_; }
  void set_backprop_mode(BackpropMode mode) { mode_ = mode; }

  /// Memory the reversible backward may spend on kept activations (layers/kept_activations.hpp):
  /// the training forward keeps the intermediates of as many feed-forward and LSH attention
  /// sublayers as fit in `bytes` (about (2 D + F) x B x T and ((3 + R) H Dh + D) x B x T scalars
  /// each; ReversibleStack::forward says which first), and the backward skips their recompute.
  /// 0 (the default) keeps nothing: memory independent of depth. Results differ from the
  /// recomputing backward only by rounding. The stored-activation mode ignores it.
  void set_kept_activation_budget(std::size_t bytes) { kept_budget_ = bytes; }
  std::size_t kept_activation_budget() const { return kept_budget_; }

  const Embeddings<S>& embeddings() const { return embeddings_; }
  const ReversibleStack<S>& stack() const { return stack_; }

  /// The length a sequence of length t runs at (ReformerConfig::padded_length).
  Index padded_length(Index t) const { return cfg_.padded_length(t); }

  // ---- parameters --------------------------------------------------------------------------

  Parameters<S>& parameters() { return params_; }
  const Parameters<S>& parameters() const { return params_; }
  /// Every parameter in HF state-dict order.
  std::vector<NamedParameter<S>> named_parameters();
  /// Slot of an HF parameter name (also the alias `lm_head.decoder.bias` of `lm_head.bias`), or
  /// nullopt.
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

  // ---- RNG step ----------------------------------------------------------------------------

  /// The step the next train_step uses.
  std::uint64_t step() const { return step_; }
  void set_step(std::uint64_t step) { step_ = step; }

  // ---- work buffers ------------------------------------------------------------------------

  /// The cache the passes draw their work buffers from (its stats() show the memory held).
  Workspace& workspace() const { return *workspace_.get(); }
  /// Gives the cached work buffers back to the system. The next pass maps them again.
  void release_workspace() { workspace_.get()->trim(); }

  // ---- the pass ----------------------------------------------------------------------------

  /// Validates tokens (ids in [0, V), B sequences of equal length) and mask (empty, or B x T
  /// with a real position in every sequence), and pads them to padded_length(T). InvalidArgument
  /// naming the value otherwise, also when the position embeddings do not cover the padded
  /// length. `storage` (optional): a vector whose buffer the padded tokens take over unless
  /// `tokens` points into it (a training step passes the tape's, so a step of the shape of the
  /// previous one allocates no token buffer).
  PaddedBatch padded_batch(const char* where, TokenSpan tokens, Index batch,
                           const AttentionMask& mask, std::vector<Token>* storage = nullptr) const;

 protected:
  /// Registers the embeddings' and the stack's parameters; `config` must be valid.
  ReformerBackbone(const ReformerConfig& config, BackpropMode mode);

  /// Initialises the embeddings and the stack from root.derive(0), (1), (2) (the head uses
  /// root.derive(3)); returns root.
  Rng init_backbone(std::uint64_t seed);

  /// The context of a pass over `batch` sequences with key padding `mask` (null: none): the
  /// model-level layer index num_layers (the stack sets each block's own).
  Context pass_context(Index batch, const AttentionMask* mask, bool training,
                       std::uint64_t step) const;

  /// x1 = x2 = stack(embeddings(in.tokens)), D x B*Tp each.
  void encode(const PaddedBatch& in, const Context& ctx, MatrixRef<S> x1, MatrixRef<S> x2,
              BucketRecord& buckets, StoredInputs<S>* stored) const;

  /// Training forward: fills the tape's batch, mask, tokens, step and streams (not ready).
  Context encode_for_training(PaddedBatch in, Tape<S>& tape, std::uint64_t step);

  /// Checks that `tape` holds a forward pass of this model and marks it consumed; returns the
  /// pass's context.
  Context begin_backward(const char* where, Tape<S>& tape) const;

  /// Backward from dcat = d/d[y1; y2] of the last block's outputs (2D x B*Tp, overwritten) down
  /// to the embeddings' parameters.
  void backward_from_top(Tape<S>& tape, const Context& ctx, MatrixRef<S> dcat);

  /// Inference: pads, encodes and returns head_logits(x1, x2, ctx) on the head's view.
  template <class HeadLogits>
  Matrix<S> infer(const char* where, TokenSpan tokens, Index batch, const AttentionMask& mask,
                  BucketRecord& buckets, HeadLogits&& head_logits) const {
    const PaddedBatch in = padded_batch(where, tokens, batch, mask);
    const Context ctx = pass_context(batch, in.mask_or_null(), false, 0);
    const Index n = static_cast<Index>(in.tokens.size()), d = cfg_.hidden_size;
    Scratch<S> x1(ctx.workspace, d, n), x2(ctx.workspace, d, n);
    encode(in, ctx, x1.map(), x2.map(), buckets, nullptr);
    const HeadStreams<S> streams(x1.map(), x2.map(), batch, in.length, in.padded_length,
                                 ctx.workspace);
    return head_logits(streams.x1(), streams.x2(), ctx);
  }

  /// Training forward of a padded batch: fills the tape and returns head_loss(x1, x2, ctx) on
  /// the head's view (the caller stores the loss in the tape and marks it ready).
  template <class HeadLoss>
  auto train_forward(PaddedBatch in, Tape<S>& tape, std::uint64_t step, HeadLoss&& head_loss) {
    const Context ctx = encode_for_training(std::move(in), tape, step);
    const HeadStreams<S> streams(tape.x1.map(), tape.x2.map(), tape.batch, tape.length,
                                 tape.padded_length, ctx.workspace);
    return head_loss(streams.x1(), streams.x2(), ctx);
  }

  /// Backward of the pass on `tape`: head_backward(x1, x2, ctx, dcat) writes the head's gradient
  /// of its view (2D x B*T) and accumulates its parameters' gradients; then the stack and the
  /// embeddings. Consumes the tape.
  template <class HeadBackward>
  void train_backward(const char* where, Tape<S>& tape, HeadBackward&& head_backward) {
    const Context ctx = begin_backward(where, tape);
    const Index d = cfg_.hidden_size;
    Scratch<S> dcat(ctx.workspace, 2 * d, tape.batch * tape.padded_length);  // d [y1; y2]
    {
      const HeadStreams<S> streams(tape.x1.map(), tape.x2.map(), tape.batch, tape.length,
                                   tape.padded_length, ctx.workspace);
      if (tape.length == tape.padded_length) {
        head_backward(streams.x1(), streams.x2(), ctx, dcat.map());
      } else {
        Scratch<S> dhead(ctx.workspace, 2 * d, tape.batch * tape.length);
        head_backward(streams.x1(), streams.x2(), ctx, dhead.map());
        streams.scatter(dhead.map(), dcat.map());
      }
    }
    backward_from_top(tape, ctx, dcat.map());
    dcat.reset();
  }

  ReformerConfig cfg_;
  BackpropMode mode_;
  std::size_t kept_budget_ = 0;
  Parameters<S> params_;
  Embeddings<S> embeddings_;
  ReversibleStack<S> stack_;
  std::uint64_t step_ = 0;

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

 private:
  static ReversibleStack<S> make_stack(const ReformerConfig& cfg, Parameters<S>& params);
  SlotId slot_of(const std::string& name) const;
};

// ---- member definitions -------------------------------------------------------------------------
// Defined outside the class body (not implicitly inline), see instances/reformer_instances.hpp.

template <class S>
ReformerBackbone<S>::ReformerBackbone(const ReformerConfig& config, BackpropMode mode)
    : cfg_(config), mode_(mode), embeddings_(cfg_, params_), stack_(make_stack(cfg_, params_)) {}

template <class S>
ReversibleStack<S> ReformerBackbone<S>::make_stack(const ReformerConfig& cfg,
                                                   Parameters<S>& params) {
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
std::vector<NamedParameter<S>> ReformerBackbone<S>::named_parameters() {
  std::vector<NamedParameter<S>> out;
  out.reserve(static_cast<std::size_t>(params_.num_slots()));
  for (SlotId id = 0; id < params_.num_slots(); ++id) {
    out.push_back({&params_.slot(id), params_.value_vector(id), params_.grad_vector(id)});
  }
  return out;
}

template <class S>
SlotId ReformerBackbone<S>::slot_of(const std::string& name) const {
  const auto id = find_parameter(name);
  REFORMER_REQUIRE(id.has_value(), InvalidArgument, "ReformerModel::parameter",
                   "no parameter named '", name, "'");
  return *id;
}

template <class S>
Rng ReformerBackbone<S>::init_backbone(std::uint64_t seed) {
  const Rng root = Rng(seed).derive(stream::kInit);
  const double range = cfg_.initializer_range;
  embeddings_.init(params_, root.derive(0), range, cfg_.axial_norm_std);
  stack_.init(params_, root.derive(1), root.derive(2), range);
  return root;
}

template <class S>
PaddedBatch ReformerBackbone<S>::padded_batch(const char* where, TokenSpan tokens, Index batch,
                                              const AttentionMask& mask,
                                              std::vector<Token>* storage) const {
  Context ctx;
  ctx.batch = batch;
  embeddings_.check_tokens(where, tokens, ctx);  // ids, B x T, T within the positions
  PaddedBatch in;
  if (storage != nullptr) {
    const std::less<const Token*> before;  // a total order on pointers
    const bool aliased = !storage->empty() && tokens.size() > 0 &&
                         !before(tokens.data(), storage->data()) &&
                         before(tokens.data(), storage->data() + storage->size());
    if (!aliased) in.tokens = std::move(*storage);  // (the input may be the tape's own tokens)
  }
  in.batch = batch;
  in.length = tokens.size() / batch;
  in.padded_length = padded_length(in.length);
  mask.check(where, batch, in.length);  // shape, and a real position in every sequence
  const Index tp = in.padded_length;
  if (in.padded()) {
    REFORMER_REQUIRE(
        tp <= embeddings_.max_length(), InvalidArgument, where, "sequence length T = ", in.length,
        " is padded to ", tp, " (the next multiple of the chunk lengths' least common multiple ",
        cfg_.chunk_length_lcm(), "), beyond the position embeddings' maximum length ",
        embeddings_.max_length(),
        cfg_.axial_pos_embds ? " (axial_pos_shape s1 * s2)" : " (max_position_embeddings)");
    in.tokens.assign(static_cast<std::size_t>(batch * tp), static_cast<Token>(cfg_.pad_token_id));
    for (Index b = 0; b < batch; ++b) {
      std::copy_n(tokens.begin() + b * in.length, in.length, in.tokens.begin() + b * tp);
    }
    in.mask = mask.empty() ? AttentionMask::from_lengths(std::vector<Index>(batch, in.length), tp)
                           : mask.padded_to(tp);
  } else {
    in.tokens.assign(tokens.begin(), tokens.end());
    if (mask.any_padding()) in.mask = mask;  // an all-real mask changes nothing
  }
  return in;
}

template <class S>
Context ReformerBackbone<S>::pass_context(Index batch, const AttentionMask* mask, bool training,
                                          std::uint64_t step) const {
  Context ctx;
  ctx.batch = batch;
  ctx.training = training;
  ctx.seed = cfg_.seed;
  ctx.step = step;
  ctx.layer = static_cast<std::uint32_t>(num_layers());
  ctx.workspace = workspace_.get();
  ctx.mask = mask;
  return ctx;
}

template <class S>
void ReformerBackbone<S>::encode(const PaddedBatch& in, const Context& ctx, MatrixRef<S> x1,
                                 MatrixRef<S> x2, BucketRecord& buckets,
                                 StoredInputs<S>* stored) const {
  embeddings_.forward(params_, TokenSpan(in.tokens), x1, ctx);  // e
  x2 = x1;
  stack_.forward(params_, x1, x2, ctx, buckets, stored);
}

template <class S>
Context ReformerBackbone<S>::encode_for_training(PaddedBatch in, Tape<S>& tape,
                                                 std::uint64_t step) {
  step_ = step + 1;
  // Every thread's per-thread buffers at the sizes the last steps needed, whichever items each
  // thread then took: later steps of the same shapes allocate nothing (core/thread_buffers.hpp).
  grow_thread_buffers();
  tape.ready = false;
  tape.batch = in.batch;
  tape.length = in.length;
  tape.padded_length = in.padded_length;
  tape.step = step;
  tape.mode = mode_;
  tape.tokens = std::move(in.tokens);
  tape.mask = std::move(in.mask);
  in.tokens.clear();
  const bool store = mode_ == BackpropMode::kStoredActivations;
  if (!store) tape.stored.clear();  // stored mode reuses the per-layer matrices of the last step
  // The kept activations keep their memory for the next step of this shape and budget.
  tape.kept.budget_bytes = store ? 0 : kept_budget_;
  if (store) tape.kept.release();

  const Context ctx = pass_context(tape.batch, tape.mask_or_null(), true, step);

  // The streams come from the workspace: huge pages, reused by the next step of this shape.
  const Index n = static_cast<Index>(tape.tokens.size());
  tape.x1.resize(workspace_.shared(), cfg_.hidden_size, n);
  tape.x2.resize(workspace_.shared(), cfg_.hidden_size, n);
  auto x1 = tape.x1.map(), x2 = tape.x2.map();
  embeddings_.forward(params_, TokenSpan(tape.tokens), x1, ctx);  // x1 = x2 = e
  x2 = x1;
  stack_.forward(params_, x1, x2, ctx, tape.buckets, store ? &tape.stored : nullptr,
                 store ? nullptr : &tape.kept);
  return ctx;
}

template <class S>
Context ReformerBackbone<S>::begin_backward(const char* where, Tape<S>& tape) const {
  REFORMER_REQUIRE(tape.ready, InvalidArgument, where,
                   "the tape holds no forward pass (run forward_loss first; backward consumes "
                   "the tape)");
  const Index n = tape.batch * tape.padded_length, d = cfg_.hidden_size;
  REFORMER_REQUIRE(tape.x1.rows() == d && tape.x1.cols() == n && tape.x2.rows() == d &&
                       tape.x2.cols() == n && static_cast<Index>(tape.tokens.size()) == n,
                   InvalidArgument, where, "the tape does not belong to this model (x1 is ",
                   tape.x1.rows(), " x ", tape.x1.cols(), ", expected ", d, " x ", n, ")");
  tape.ready = false;
  Context ctx;
  ctx.batch = tape.batch;
  embeddings_.check_tokens(where, TokenSpan(tape.tokens), ctx);
  return pass_context(tape.batch, tape.mask_or_null(), true, tape.step);
}

template <class S>
void ReformerBackbone<S>::backward_from_top(Tape<S>& tape, const Context& ctx, MatrixRef<S> dcat) {
  const Index d = cfg_.hidden_size;
  auto dy1 = dcat.topRows(d);
  auto dy2 = dcat.bottomRows(d);
  // Blocks, from the top: (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2).
  if (tape.mode == BackpropMode::kReversible) {
    stack_.backward(params_, tape.x1.map(), tape.x2.map(), dy1, dy2, ctx, tape.buckets, &tape.kept);
  } else {
    stack_.backward_stored(params_, tape.stored, dy1, dy2, ctx, tape.buckets);
  }
  // x1 = x2 = e  =>  de = dx1 + dx2 (in dy1's place)
  dy1 += dy2;
  embeddings_.backward(params_, TokenSpan(tape.tokens), dy1, ctx);
}

}  // namespace reformer
