#pragma once
// ReformerLM: the Reformer causal language model (DESIGN 1.1), Hugging Face's
// ReformerModelWithLMHead with is_decoder = true.
//
//   e      = Dropout(E[:, tok]) + Dropout(P[:, pos])          D x N, N = B*T (embeddings.hpp)
//   x1 = x2 = e
//   for l in layers:                                          reversible blocks (reversible.hpp)
//     y1 = x1 + Attn_l(x2)                                    AttentionSublayer: LN -> core -> W_o
//     y2 = x2 + FFN_l(y1)                                     FeedForward: LN -> W1 -> act -> W2
//   h      = Dropout(LN_out([x1; x2]))                        2D x N
//   logits = W_lm h + b_lm                                    V x N
//   loss   = mean over counted n of cross_entropy(logits(:, n), target_n)
//            target of (b, t) = tok(b, t+1) for t < T-1; the last position is not counted
//
// Training: forward_loss() fills a Tape (tape.hpp) with the last block's outputs, the LSH
// buckets and the RNG step; backward() reconstructs every block's inputs from its outputs while
// walking the layers in reverse (DESIGN 3.2), replays the LSH buckets, redraws the dropout masks
// from the counter-based RNG, and accumulates every parameter gradient. The loss uses the chunked
// cross-entropy op (ops/cross_entropy.hpp): never a V x N logits buffer in training.
//
// Randomness: the key of every draw is (config.seed, step, layer, stream, ...). Layer l of the
// stack uses layer index l; the embeddings' and the final LayerNorm's dropout use layer index
// num_layers. Inference uses step 0 for the LSH rotations (no dropout).
//
// Parameters: one Parameters<S> store with the HF names, shapes and state-dict order
// (DESIGN 2); HF's `lm_head.decoder.bias` is an alias of `lm_head.bias` (find_parameter).
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/reversible.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/embeddings.hpp"
#include "reformer/model/tape.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/parallel.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
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

/// When a layer-input observer is called (ReformerLM::set_layer_input_observer).
enum class LayerPhase {
  kForward,  ///< before the block runs in forward_loss()
  kBackward  ///< after backward() reconstructed the block's inputs (reversible mode only)
};

template <class S>
class ReformerLM {
 public:
  using Scalar = S;
  using LshSublayer = AttentionSublayer<S, LshAttention<S>>;
  using LocalSublayer = AttentionSublayer<S, LocalAttention<S>>;
  using FullSublayer = AttentionSublayer<S, FullAttention<S>>;
  using AttentionLayer = std::variant<LshSublayer, LocalSublayer, FullSublayer>;
  /// Diagnostics hook: (phase, layer, x1, x2) with the block's inputs.
  using LayerInputObserver =
      std::function<void(LayerPhase, Index, ConstMatrixRef<S>, ConstMatrixRef<S>)>;

  /// Validates `config` (ConfigError naming the field), registers every parameter and
  /// initialises them as HF does from config.seed.
  explicit ReformerLM(const ReformerConfig& config, BackpropMode mode = BackpropMode::kReversible);

  const ReformerConfig& config() const { return cfg_; }
  Index num_layers() const { return cfg_.num_layers(); }
  BackpropMode backprop_mode() const { return mode_; }
  void set_backprop_mode(BackpropMode mode) { mode_ = mode; }

  const Embeddings<S>& embeddings() const { return embeddings_; }
  const AttentionLayer& attention(Index layer) const { return attention_.at(at(layer)); }
  const FeedForward<S>& feed_forward(Index layer) const { return feed_forward_.at(at(layer)); }

  /// Sets (or, with an empty function, removes) the layer-input observer.
  void set_layer_input_observer(LayerInputObserver observer) { observer_ = std::move(observer); }

  // ---- parameters --------------------------------------------------------------------------

  Parameters<S>& parameters() { return params_; }
  const Parameters<S>& parameters() const { return params_; }

  /// Every parameter in HF state-dict order.
  std::vector<NamedParameter<S>> named_parameters() {
    std::vector<NamedParameter<S>> out;
    out.reserve(static_cast<std::size_t>(params_.num_slots()));
    for (SlotId id = 0; id < params_.num_slots(); ++id) {
      out.push_back({&params_.slot(id), params_.value_vector(id), params_.grad_vector(id)});
    }
    return out;
  }

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

  // ---- inference ---------------------------------------------------------------------------

  /// Logits (V x B*T, sequence b in columns [b*T, (b+1)*T)) of `batch` sequences of equal
  /// length laid out one after another in `tokens`. LSH layers hash with RNG step 0.
  Matrix<S> logits(TokenSpan tokens, Index batch) const {
    std::vector<BucketTape> buckets;
    return logits(tokens, batch, buckets, false);
  }

  /// As above; with `replay` the LSH layers use `buckets` (one per layer, [B, H, R, T] for each
  /// LSH layer that hashes), otherwise the buckets drawn are recorded there.
  Matrix<S> logits(TokenSpan tokens, Index batch, std::vector<BucketTape>& buckets,
                   bool replay) const;

  // ---- training ----------------------------------------------------------------------------

  /// Training forward pass at RNG step `step` (dropout on, fresh LSH rotations): returns the
  /// mean next-token loss and fills `tape` for backward(). `targets` (optional, B*T ids, a
  /// negative id = not counted, e.g. padding) replaces the default targets tok(b, t+1).
  double forward_loss(TokenSpan tokens, Index batch, Tape<S>& tape, std::uint64_t step,
                      TokenSpan targets = {});

  /// Backward pass of the last forward_loss() on `tape`: accumulates (+=) the gradients of
  /// grad_scale * loss into parameters().grads(). Consumes the tape (its block outputs are
  /// walked back down to the embeddings).
  void backward(Tape<S>& tape, double grad_scale = 1.0);

  /// forward_loss + backward with an internal tape; gradients are accumulated (call zero_grad
  /// first for a fresh step). Returns the loss.
  double train_step(TokenSpan tokens, Index batch, std::uint64_t step, TokenSpan targets = {}) {
    const double loss = forward_loss(tokens, batch, tape_, step, targets);
    backward(tape_);
    return loss;
  }

 private:
  static const ReformerConfig& validated(const ReformerConfig& cfg) {
    cfg.validate();
    REFORMER_REQUIRE(cfg.is_decoder, ConfigError, "ReformerLM",
                     "is_decoder = false: a causal language model needs is_decoder = true");
    return cfg;
  }

  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }
  double range() const { return cfg_.initializer_range; }

  SlotId slot_of(const std::string& name) const {
    const auto id = find_parameter(name);
    REFORMER_REQUIRE(id.has_value(), InvalidArgument, "ReformerLM::parameter",
                     "no parameter named '", name, "'");
    return *id;
  }

  // ---- construction helpers ----------------------------------------------------------------

  template <class CoreConfig>
  AttentionSublayerConfig<CoreConfig> sublayer_config(const CoreConfig& core) const {
    AttentionSublayerConfig<CoreConfig> c;
    c.core = core;
    c.hidden_size = cfg_.hidden_size;
    c.layer_norm_eps = cfg_.layer_norm_eps;
    c.output_dropout = cfg_.hidden_dropout_prob;
    return c;
  }

  AttentionLayer make_attention(Index layer, const std::string& prefix) {
    switch (cfg_.layer_kind(layer)) {
      case LayerKind::kLsh: {
        LshAttentionConfig c;
        c.num_heads = cfg_.num_attention_heads;
        c.head_size = cfg_.head_size();
        c.chunk_length = cfg_.lsh_attn_chunk_length;
        c.num_hashes = cfg_.num_hashes;
        c.num_buckets = cfg_.num_buckets;
        c.chunks_before = cfg_.lsh_num_chunks_before;
        c.chunks_after = cfg_.lsh_num_chunks_after;
        c.causal = cfg_.is_decoder;
        c.dropout = cfg_.lsh_attention_probs_dropout_prob;
        c.max_positions = cfg_.max_position_embeddings;
        return AttentionLayer(std::in_place_type<LshSublayer>, sublayer_config(c), params_, prefix);
      }
      case LayerKind::kLocal: {
        LocalAttentionConfig c;
        c.num_heads = cfg_.num_attention_heads;
        c.head_size = cfg_.head_size();
        c.chunk_length = cfg_.local_attn_chunk_length;
        c.chunks_before = cfg_.local_num_chunks_before;
        c.chunks_after = cfg_.local_num_chunks_after;
        c.causal = cfg_.is_decoder;
        c.dropout = cfg_.local_attention_probs_dropout_prob;
        return AttentionLayer(std::in_place_type<LocalSublayer>, sublayer_config(c), params_,
                              prefix);
      }
      case LayerKind::kFull:
        break;
    }
    FullAttentionConfig c;
    c.num_heads = cfg_.num_attention_heads;
    c.head_size = cfg_.head_size();
    c.causal = cfg_.is_decoder;
    c.dropout = cfg_.local_attention_probs_dropout_prob;
    return AttentionLayer(std::in_place_type<FullSublayer>, sublayer_config(c), params_, prefix);
  }

  FeedForwardConfig feed_forward_config() const {
    FeedForwardConfig c;
    c.hidden_size = cfg_.hidden_size;
    c.feed_forward_size = cfg_.feed_forward_size;
    c.activation = cfg_.activation();
    c.layer_norm_eps = cfg_.layer_norm_eps;
    c.dropout = cfg_.hidden_dropout_prob;
    c.chunk_size = cfg_.chunk_size_feed_forward;
    return c;
  }

  // ---- forward helpers ---------------------------------------------------------------------

  /// Validates tokens / batch and returns the context shared by every layer of one pass.
  Context base_context(const char* where, TokenSpan tokens, Index batch, bool training,
                       std::uint64_t step) const {
    Context ctx;
    REFORMER_REQUIRE(batch >= 1, InvalidArgument, where, "batch = ", batch, " must be >= 1");
    ctx.batch = batch;
    ctx.training = training;
    ctx.seed = cfg_.seed;
    ctx.step = step;
    embeddings_.check_tokens(where, tokens, ctx);
    return ctx;
  }

  /// The context of model-level randomness (embeddings, final dropout): layer index L.
  Context model_context(const Context& base) const {
    Context c = base;
    c.layer = static_cast<std::uint32_t>(num_layers());
    c.buckets = nullptr;
    c.replay_buckets = false;
    return c;
  }

  Context layer_context(const Context& base, Index layer, BucketTape* buckets, bool replay) const {
    Context c = base;
    c.layer = static_cast<std::uint32_t>(layer);
    const bool lsh = cfg_.layer_kind(layer) == LayerKind::kLsh;
    c.buckets = lsh ? buckets : nullptr;
    c.replay_buckets = lsh && replay;
    return c;
  }

  void prepare_buckets(const char* where, std::vector<BucketTape>& buckets, bool replay) const {
    if (replay) {
      REFORMER_REQUIRE(buckets.size() == at(num_layers()), InvalidArgument, where,
                       "replaying buckets needs one BucketTape per layer: got ", buckets.size(),
                       " for ", num_layers(), " layers");
    } else {
      buckets.resize(at(num_layers()));
      for (Index l = 0; l < num_layers(); ++l) {
        if (cfg_.layer_kind(l) != LayerKind::kLsh) buckets[at(l)].clear();
      }
    }
  }

  /// In place: (x1, x2) = (e, e) -> outputs of the last block. With `stored`, keeps every
  /// block's sublayer inputs there (x2 before the block, y1 = x1 after it).
  void run_blocks(Matrix<S>& x1, Matrix<S>& x2, const Context& ctx,
                  std::vector<BucketTape>& buckets, bool replay, Tape<S>* stored) const {
    ReversibleWorkspace<S> ws;
    for (Index l = 0; l < num_layers(); ++l) {
      if (observer_ && ctx.training) observer_(LayerPhase::kForward, l, x1, x2);
      if (stored != nullptr) stored->attention_inputs[at(l)] = x2;
      const Context lctx = layer_context(ctx, l, &buckets[at(l)], replay);
      std::visit(
          [&](const auto& att) {
            reversible_forward<S>(att, feed_forward_[at(l)], params_, x1, x2, lctx, ws);
          },
          attention_[at(l)]);
      if (stored != nullptr) stored->feed_forward_inputs[at(l)] = x1;
    }
  }

  double dropout_p(const Context& ctx) const {
    return ctx.training ? cfg_.hidden_dropout_prob : 0.0;
  }

  /// h = Dropout(LN([x1; x2]))  (2D x N).
  void final_hidden(const Matrix<S>& x1, const Matrix<S>& x2, const Context& ctx,
                    Matrix<S>& h) const {
    const Index d = cfg_.hidden_size;
    Matrix<S> cat(2 * d, x1.cols());
    cat.topRows(d) = x1;
    cat.bottomRows(d) = x2;
    layer_norm_forward<S>(cat, params_.value_vector(ln_weight_), params_.value_vector(ln_bias_),
                          cfg_.layer_norm_eps, h);
    dropout_inplace<S>(model_context(ctx).rng(stream::kEncoderOutputDropout), dropout_p(ctx), 0, h);
  }

  /// Calls f(c0, c, cat, h) for the LM-head chunks [c0, c0 + c) of lm_chunk(N) tokens, in
  /// order, with cat = [x1; x2] and h = Dropout(LN(cat)) of the chunk (2D x c each; dropout
  /// draw indices as for the whole 2D x N matrix).
  template <class F>
  void for_head_chunks(const Matrix<S>& x1, const Matrix<S>& x2, const Context& ctx, F&& f) const {
    const Index d = cfg_.hidden_size, n = x1.cols(), chunk = lm_chunk(n);
    const Rng drop_rng = model_context(ctx).rng(stream::kEncoderOutputDropout);
    Matrix<S> cat(2 * d, chunk), h(2 * d, chunk);
    for (Index c0 = 0; c0 < n; c0 += chunk) {
      const Index c = std::min(chunk, n - c0);
      auto cat_c = cat.leftCols(c);
      auto h_c = h.leftCols(c);
      cat_c.topRows(d) = x1.middleCols(c0, c);
      cat_c.bottomRows(d) = x2.middleCols(c0, c);
      layer_norm_forward<S>(cat_c, params_.value_vector(ln_weight_), params_.value_vector(ln_bias_),
                            cfg_.layer_norm_eps, h_c);
      dropout_inplace<S>(drop_rng, dropout_p(ctx), c0 * 2 * d, h_c);
      f(c0, c, MatrixRef<S>(cat_c), MatrixRef<S>(h_c));
    }
  }

  /// Tokens per LM-head chunk (chunk_size_lm_head; 0 = the op's default).
  Index lm_chunk(Index n) const {
    const Index c =
        cfg_.chunk_size_lm_head > 0 ? cfg_.chunk_size_lm_head : kCrossEntropyDefaultChunk;
    return std::max<Index>(1, std::min(c, n));
  }

  ReformerConfig cfg_;
  BackpropMode mode_;
  Parameters<S> params_;
  Embeddings<S> embeddings_;
  std::vector<AttentionLayer> attention_;
  std::vector<FeedForward<S>> feed_forward_;
  SlotId ln_weight_ = -1, ln_bias_ = -1, lm_bias_ = -1, lm_weight_ = -1;
  LayerInputObserver observer_;
  Tape<S> tape_;  // train_step's tape, reused across steps
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class ReformerLM<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
ReformerLM<S>::ReformerLM(const ReformerConfig& config, BackpropMode mode)
    : cfg_(validated(config)), mode_(mode), embeddings_(cfg_, params_) {
  const Index d = cfg_.hidden_size;
  attention_.reserve(static_cast<std::size_t>(cfg_.num_layers()));
  feed_forward_.reserve(static_cast<std::size_t>(cfg_.num_layers()));
  for (Index l = 0; l < cfg_.num_layers(); ++l) {
    const std::string prefix = "reformer.encoder.layers." + std::to_string(l) + ".";
    attention_.push_back(make_attention(l, prefix + "attention."));
    feed_forward_.emplace_back(feed_forward_config(), params_, prefix + "feed_forward.");
  }
  ln_weight_ = params_.add("reformer.encoder.layer_norm.weight", {2 * d});
  ln_bias_ = params_.add("reformer.encoder.layer_norm.bias", {2 * d});
  lm_bias_ = params_.add("lm_head.bias", {cfg_.vocab_size});
  lm_weight_ = params_.add("lm_head.decoder.weight", {cfg_.vocab_size, 2 * d});
  init(cfg_.seed);
}

template <class S>
void ReformerLM<S>::init(std::uint64_t seed) {
  const Rng root = Rng(seed).derive(stream::kInit);
  embeddings_.init(params_, root.derive(0), cfg_.initializer_range, cfg_.axial_norm_std);
  for (Index l = 0; l < num_layers(); ++l) {
    const auto ul = static_cast<std::uint64_t>(l);
    std::visit([&](const auto& a) { a.init(params_, root.derive(1).derive(ul), range()); },
               attention_[at(l)]);
    feed_forward_[at(l)].init(params_, root.derive(2).derive(ul), range());
  }
  params_.value_vector(ln_weight_).setOnes();
  params_.value_vector(ln_bias_).setZero();
  init_normal(params_, lm_weight_, root.derive(3), range());
  params_.value_vector(lm_bias_).setZero();
  params_.zero_grad();
}

template <class S>
Matrix<S> ReformerLM<S>::logits(TokenSpan tokens, Index batch, std::vector<BucketTape>& buckets,
                                bool replay) const {
  const char* where = "ReformerLM::logits";
  const Context ctx = base_context(where, tokens, batch, false, 0);
  prepare_buckets(where, buckets, replay);
  const Index n = tokens.size();
  Matrix<S> x1(cfg_.hidden_size, n), x2;
  embeddings_.forward(params_, tokens, x1, model_context(ctx));
  x2 = x1;
  run_blocks(x1, x2, ctx, buckets, replay, nullptr);
  Matrix<S> h(2 * cfg_.hidden_size, n);
  final_hidden(x1, x2, ctx, h);
  Matrix<S> out(cfg_.vocab_size, n);
  const Index chunk = lm_chunk(n);
  parallel_for(num_blocks(n, chunk), [&](Index blk) {
    const Index c0 = blk * chunk, nc = std::min(chunk, n - c0);
    lm_logits<S>(h.middleCols(c0, nc), params_.value(lm_weight_), params_.value_vector(lm_bias_),
                 out.middleCols(c0, nc));
  });
  return out;
}

template <class S>
double ReformerLM<S>::forward_loss(TokenSpan tokens, Index batch, Tape<S>& tape, std::uint64_t step,
                                   TokenSpan targets) {
  const char* where = "ReformerLM::forward_loss";
  const Context ctx = base_context(where, tokens, batch, true, step);
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
  prepare_buckets(where, tape.buckets, tape.replay_buckets);

  tape.ready = false;
  tape.batch = batch;
  tape.length = t;
  tape.step = step;
  tape.mode = mode_;
  tape.tokens.assign(tokens.begin(), tokens.end());
  if (targets.empty()) {
    tape.targets.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      tape.targets[at(i)] = (i % t == t - 1) ? Token{-1} : tokens[i + 1];
    }
  } else {
    tape.targets.assign(targets.begin(), targets.end());
  }
  if (mode_ == BackpropMode::kStoredActivations) {
    tape.attention_inputs.resize(at(num_layers()));
    tape.feed_forward_inputs.resize(at(num_layers()));
  } else {
    tape.attention_inputs.clear();
    tape.feed_forward_inputs.clear();
  }

  tape.x1.resize(cfg_.hidden_size, n);
  embeddings_.forward(params_, tokens, tape.x1, model_context(ctx));
  tape.x2 = tape.x1;
  run_blocks(tape.x1, tape.x2, ctx, tape.buckets, tape.replay_buckets,
             mode_ == BackpropMode::kStoredActivations ? &tape : nullptr);

  // The head, chunk by chunk (never 2D x N at once): loss = CE(W Dropout(LN([x1; x2])) + b).
  CrossEntropyResult ce;
  for_head_chunks(tape.x1, tape.x2, ctx, [&](Index c0, Index c, MatrixRef<S>, MatrixRef<S> h) {
    const CrossEntropyResult part =
        cross_entropy_forward<S>(h, params_.value(lm_weight_), params_.value_vector(lm_bias_),
                                 TokenSpan(tape.targets).subspan(c0, c), c);
    ce.sum += part.sum;
    ce.count += part.count;
  });
  ce.mean = ce.count > 0 ? ce.sum / static_cast<double>(ce.count) : 0.0;
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
  REFORMER_REQUIRE(tape.x1.rows() == d && tape.x1.cols() == n && tape.x2.rows() == d &&
                       tape.x2.cols() == n &&
                       tape.buckets.size() == static_cast<std::size_t>(num_layers()),
                   InvalidArgument, where, "the tape does not belong to this model (x1 is ",
                   tape.x1.rows(), " x ", tape.x1.cols(), ", expected ", d, " x ", n, ")");
  REFORMER_REQUIRE(
      tape.mode == BackpropMode::kReversible || tape.attention_inputs.size() == at(num_layers()),
      InvalidArgument, where, "stored-activation tape without per-layer inputs");
  tape.ready = false;
  Context ctx;
  ctx.batch = tape.batch;
  ctx.training = true;
  ctx.seed = cfg_.seed;
  ctx.step = tape.step;

  // Head:  cat = [x1; x2],  h = LN(cat),  hd = Dropout(h),  loss = CE(W hd + b, targets),
  // recomputed and differentiated chunk by chunk: only dcat is 2D x N.
  Matrix<S> dcat(2 * d, n);
  {
    // d(mean)/d(logits) = d(sum)/d(logits) / count, with count over the whole batch.
    Index count = 0;
    for (const Token target : tape.targets) count += target >= 0 ? 1 : 0;
    const double scale = count > 0 ? grad_scale / static_cast<double>(count) : 0.0;
    const Rng drop_rng = model_context(ctx).rng(stream::kEncoderOutputDropout);
    Matrix<S> dh(2 * d, lm_chunk(n));
    for_head_chunks(
        tape.x1, tape.x2, ctx, [&](Index c0, Index c, MatrixRef<S> cat, MatrixRef<S> h) {
          auto dh_c = dh.leftCols(c);
          // dhd, dW_lm, db_lm (V x c logits at a time)
          cross_entropy_forward_backward<S>(
              h, params_.value(lm_weight_), params_.value_vector(lm_bias_),
              TokenSpan(tape.targets).subspan(c0, c), dh_c, params_.grad(lm_weight_),
              params_.grad_vector(lm_bias_), c, Reduction::kSum, scale);
          // dh = mask .* dhd
          dropout_backward<S>(drop_rng, dropout_p(ctx), c0 * 2 * d, dh_c, dh_c);
          layer_norm_backward<S>(cat, params_.value_vector(ln_weight_), cfg_.layer_norm_eps, dh_c,
                                 dcat.middleCols(c0, c), params_.grad_vector(ln_weight_),
                                 params_.grad_vector(ln_bias_));
        });
  }
  auto dy1 = dcat.topRows(d);
  auto dy2 = dcat.bottomRows(d);

  // Blocks, from the top: (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2).
  ReversibleWorkspace<S> ws;
  for (Index l = num_layers() - 1; l >= 0; --l) {
    const Context lctx = layer_context(ctx, l, &tape.buckets[at(l)], true);
    const auto& ff = feed_forward_[at(l)];
    std::visit(
        [&](const auto& att) {
          if (tape.mode == BackpropMode::kReversible) {
            reversible_backward<S>(att, ff, params_, tape.x1, tape.x2, dy1, dy2, lctx, ws);
          } else {
            stored_backward<S>(att, ff, params_, tape.attention_inputs[at(l)],
                               tape.feed_forward_inputs[at(l)], dy1, dy2, lctx, ws);
          }
        },
        attention_[at(l)]);
    if (observer_ && tape.mode == BackpropMode::kReversible) {
      observer_(LayerPhase::kBackward, l, tape.x1, tape.x2);
    }
  }

  // x1 = x2 = e  =>  de = dx1 + dx2
  Matrix<S> de = dy1 + dy2;
  embeddings_.backward(params_, TokenSpan(tape.tokens), de, model_context(ctx));
}

}  // namespace reformer
