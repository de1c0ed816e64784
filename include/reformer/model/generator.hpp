#pragma once
// Generator: incremental decoding of one sequence with a trained ReformerLM (docs/DESIGN.md 5).
//
//   Generator<float> gen(model);              // copies the weights, fixes the bucket layout
//   gen.prefill(prompt);                      // one batched forward pass over the prompt
//   for (...) {
//     const Vector<float>& logits = gen.next_logits();   // V scores of the next token
//     gen.append(sample(logits));             // one token through every layer, O(window)
//   }
//
// Every layer keeps a cache (model/attention_cache.hpp): local layers the keys and values of the
// last window, full layers all keys and values, LSH layers every token's key, value and buckets
// with per-bucket position lists. append() runs one column through the embeddings, the blocks
// (LayerNorm, projections, the cached attention, W_o, the feed-forward) and the head.
//
// Contract. The generator works on reference_model(): the model with the bucket layout fixed to
// the one of max_length() (with explicit num_buckets that is the model's own layout; with the
// automatic rule the layout would otherwise change with T) and inference rotations (RNG step 0).
//  - After prefill(prompt), next_logits() is the last column of reference_model().logits(prompt)
//    (the prefill is that forward pass), for every stack.
//  - Every attention layer computes for an appended token exactly what its core's forward
//    computes for the last column of the sequence of its cached inputs: the same masks, chunk
//    windows (for LSH: the sorted place of the token in each round, the chunks before and after
//    it, circularly over all rounds, padding as at that length) and round combination.
//  - Hence, for stacks whose layers' outputs at a position do not depend on later tokens -- local
//    and full layers, and an LSH layer that is the last attention layer -- next_logits() after
//    append() equals the last column of reference_model().logits() on the whole prefix. Below
//    another layer an LSH layer breaks this for every cache: in the full forward, adding a token
//    shifts the sorted places, so the chunk windows and outputs of earlier tokens change. There
//    each token's layer inputs are those of the step it was appended in, as in every cached
//    decoder (and unlike Hugging Face's cached LSH decoding, the new token still sees exactly
//    the window the full forward would give it, not only the past tokens of its own buckets).
// Agreement is up to rounding (the single-column products sum in another order).
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/lsh_bucketing.hpp"
#include "reformer/layers/reversible.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/model/attention_cache.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/sampling.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <variant>
#include <vector>

namespace reformer {

template <class S>
class Generator {
 public:
  using Model = ReformerLM<S>;

  /// Copies the weights of `model`; `max_length` (0 = the model's position limit) bounds the
  /// sequence and fixes the LSH bucket layout. InvalidArgument when it exceeds the limit.
  explicit Generator(const Model& model, Index max_length = 0)
      : max_length_(checked_max_length(model, max_length)),
        model_(fixed_layout_config(model.config(), max_length_)) {
    model_.parameters().values() = model.parameters().values();
    make_caches();
  }

  /// The model the generator computes (its weights, the fixed bucket layout): the reference of
  /// the exactness contract.
  const Model& reference_model() const { return model_; }
  /// The configuration with num_buckets fixed to the layout of sequences of `max_length`.
  static ReformerConfig fixed_layout_config(const ReformerConfig& cfg, Index max_length) {
    ReformerConfig c = cfg;
    if (c.num_buckets.empty()) {
      // As HF: from the padded length, a multiple of every chunk length in use.
      const auto lsh = LshAttentionConfig::from(cfg);
      const Index m = cfg.chunk_length_lcm();
      const Index padded = (max_length + m - 1) / m * m;
      c.num_buckets = lsh_bucket_layout({}, padded, lsh.chunk_length, lsh.max_positions).factors;
    }
    return c;
  }

  Index max_length() const { return max_length_; }
  /// Tokens in the sequence (prompt and appended).
  Index length() const { return static_cast<Index>(tokens_.size()); }
  const std::vector<Token>& tokens() const { return tokens_; }

  /// Starts a new sequence: one forward pass over `prompt` (1 <= size <= max_length) fills every
  /// cache and the logits of the next token.
  void prefill(TokenSpan prompt);
  /// Adds `token` (in [0, V)) at the end and computes the logits of the token after it.
  /// InvalidArgument when the sequence would exceed max_length() or before prefill().
  void append(Token token);
  /// Logits (V) of the next token; InvalidArgument before prefill().
  const Vector<S>& next_logits() const {
    REFORMER_REQUIRE(!tokens_.empty(), InvalidArgument, "Generator::next_logits",
                     "no sequence: call prefill(prompt) first");
    return logits_;
  }

  /// The buckets of every LSH layer's tokens so far ([1, H, R, Tp] at the model's padded length,
  /// the pad bucket after T; empty for other layers), in the layout of reference_model(): replaying
  /// them reproduces the generator's hashing.
  BucketRecord buckets() const;
  /// Bytes held by the caches of layer l / of all layers.
  std::size_t cache_bytes(Index l) const;
  std::size_t cache_bytes() const {
    std::size_t n = 0;
    for (Index l = 0; l < model_.num_layers(); ++l) n += cache_bytes(l);
    return n;
  }

 private:
  using Cache = std::variant<LocalAttentionCache<S>, FullAttentionCache<S>, LshAttentionCache<S>>;
  struct Layer {
    SlotId ln_weight, ln_bias, out_weight;
    double eps;
    Cache cache;
  };

  static Index checked_max_length(const Model& model, Index max_length) {
    const Index limit = model.config().max_length();
    REFORMER_REQUIRE(max_length >= 0 && max_length <= limit, InvalidArgument, "Generator",
                     "max_length = ", max_length, " must be in [0, ", limit,
                     "] (0 = the position embeddings' limit)");
    return max_length == 0 ? limit : max_length;
  }

  // The shortest chunk length in use: the model pads no sequence up to it.
  static Index shortest_chunk(const ReformerConfig& c) {
    Index s = kMaxIndex;
    if (c.uses(LayerKind::kLsh)) s = std::min(s, c.lsh_attn_chunk_length);
    if (c.uses(LayerKind::kLocal)) s = std::min(s, c.local_attn_chunk_length);
    return s;
  }

  Context layer_context(Index l) const {
    Context ctx;
    ctx.batch = 1;
    ctx.training = false;
    ctx.seed = model_.config().seed;
    ctx.step = 0;
    ctx.layer = static_cast<std::uint32_t>(l);
    return ctx;
  }

  template <class Sub>
  static Layer layer_of(const Sub& sub, Cache cache) {
    return Layer{sub.layer_norm_weight_slot(), sub.layer_norm_bias_slot(), sub.output_weight_slot(),
                 sub.config().layer_norm_eps, std::move(cache)};
  }

  void make_caches() {
    layers_.clear();
    const auto& stack = model_.stack();
    for (Index l = 0; l < stack.size(); ++l) {
      const Sublayer<S>& f = stack.attention(l);
      if (const auto* s = f.template get<typename Model::LocalSublayer>()) {
        layers_.push_back(layer_of(*s, Cache(LocalAttentionCache<S>(s->core()))));
      } else if (const auto* s = f.template get<typename Model::FullSublayer>()) {
        layers_.push_back(layer_of(*s, Cache(FullAttentionCache<S>(s->core(), max_length_))));
      } else if (const auto* s = f.template get<typename Model::LshSublayer>()) {
        layers_.push_back(layer_of(
            *s, Cache(LshAttentionCache<S>(
                    s->core(), s->core().bucket_layout(max_length_), layer_context(l), max_length_,
                    model_.config().chunk_length_lcm(), shortest_chunk(model_.config())))));
      } else {
        raise<InvalidArgument>("Generator", "layer ", l, " has an unknown attention kind");
      }
    }
  }

  /// Position embedding of position t added to the word embedding of `token` (as Embeddings).
  void embed(Token token, Index t, VectorRef<S> e) const;
  void check_token(const char* where, Token token) const {
    const Index v = model_.config().vocab_size;
    REFORMER_REQUIRE(token >= 0 && token < v, InvalidArgument, where, "token id ", token,
                     " is outside [0, vocab_size = ", v, ")");
  }

  Index max_length_;
  Model model_;
  std::vector<Layer> layers_;
  std::vector<Token> tokens_;
  Vector<S> logits_;
  Matrix<S> x1_, x2_, xn_, a_, y_;  // one column each
};

/// Generates up to `max_new_tokens` tokens after `prompt` with `sampler` (which sees the whole
/// sequence for its repetition penalty): prefill, then choose and append one token at a time.
/// Stops after a stop token or when prompt and new tokens reach gen.max_length(). Returns the
/// new tokens (the last one is chosen but not appended).
template <class S>
std::vector<Token> generate(Generator<S>& gen, TokenSpan prompt, Index max_new_tokens,
                            Sampler& sampler) {
  REFORMER_REQUIRE(max_new_tokens >= 0, InvalidArgument, "generate",
                   "max_new_tokens = ", max_new_tokens, " must be >= 0");
  gen.prefill(prompt);
  std::vector<Token> out;
  for (Index i = 0; i < max_new_tokens && gen.length() < gen.max_length(); ++i) {
    const Token next = sampler.next(gen.next_logits(), TokenSpan(gen.tokens()));
    out.push_back(next);
    if (sampler.is_stop(next)) break;
    if (i + 1 < max_new_tokens) gen.append(next);
  }
  return out;
}

// ---- member definitions -------------------------------------------------------------------------

template <class S>
void Generator<S>::embed(Token token, Index t, VectorRef<S> e) const {
  const auto& cfg = model_.config();
  const auto& emb = model_.embeddings();
  const auto& p = model_.parameters();
  e = p.value(emb.word_slot()).row(token).transpose();
  if (cfg.axial_pos_embds) {
    const Index s2 = cfg.axial_pos_shape[1], d1 = cfg.axial_pos_embds_dim[0];
    const Index d2 = cfg.axial_pos_embds_dim[1];
    e.head(d1) += p.value(emb.position_slot()).row(t / s2).transpose();
    e.tail(d2) += p.value_vector(emb.position2_slot()).segment((t % s2) * d2, d2);
  } else {
    e += p.value(emb.position_slot()).row(t).transpose();
  }
}

template <class S>
void Generator<S>::prefill(TokenSpan prompt) {
  const char* where = "Generator::prefill";
  const Index t = prompt.size();
  REFORMER_REQUIRE(t >= 1, InvalidArgument, where, "the prompt is empty (need at least one token)");
  REFORMER_REQUIRE(t <= max_length_, InvalidArgument, where, "the prompt has ", t,
                   " tokens, more than max_length = ", max_length_);
  for (Index i = 0; i < t; ++i) check_token(where, prompt[i]);
  tokens_.clear();
  const auto& params = model_.parameters();
  const Index d = model_.config().hidden_size;
  // The full forward pass of the model on the prompt: padded as the model pads (pad tokens after
  // the prompt, masked), so every layer sees what the reference model's layers see.
  const Index tp = model_.padded_length(t);
  std::vector<Token> padded(prompt.begin(), prompt.end());
  padded.resize(static_cast<std::size_t>(tp), static_cast<Token>(model_.config().pad_token_id));
  const AttentionMask mask = tp != t ? AttentionMask::from_lengths({t}, tp) : AttentionMask();
  Context ctx = layer_context(model_.num_layers());
  ctx.workspace = &model_.workspace();
  ctx.mask = mask.empty() ? nullptr : &mask;
  Matrix<S> x1(d, tp), x2, xin, xn(d, t);
  model_.embeddings().forward(params, TokenSpan(padded), x1, ctx);
  x2 = x1;
  BucketRecord record;
  record.layers.resize(layers_.size());
  ReversibleWorkspace<S> ws;
  for (Index l = 0; l < model_.num_layers(); ++l) {
    Layer& layer = layers_[static_cast<std::size_t>(l)];
    xin = x2;  // the block's attention input
    Context c = model_.stack().block_context(ctx, l, record, false);
    model_.stack().forward_block(l, params, x1, x2, c, ws);
    layer_norm_forward<S>(xin.leftCols(t), params.value_vector(layer.ln_weight),
                          params.value_vector(layer.ln_bias), layer.eps, xn);
    std::visit(
        [&](auto& cache) {
          using C = std::decay_t<decltype(cache)>;
          if constexpr (std::is_same_v<C, LshAttentionCache<S>>) {
            // The prompt's buckets: the first t positions of the padded pass.
            const BucketTape& all = record.layers[static_cast<std::size_t>(l)];
            BucketTape prompt_buckets;
            if (!all.empty()) {
              prompt_buckets.resize(1, all.heads, all.rounds, t);
              for (Index h = 0; h < all.heads; ++h)
                for (Index r = 0; r < all.rounds; ++r)
                  for (Index i = 0; i < t; ++i) prompt_buckets.at(0, h, r, i) = all.at(0, h, r, i);
            }
            cache.prefill(params, xn, all.empty() ? nullptr : &prompt_buckets);
          } else {
            cache.prefill(params, xn);
          }
        },
        layer.cache);
  }
  logits_ = model_.head().logits(params, x1.middleCols(t - 1, 1), x2.middleCols(t - 1, 1), ctx);
  tokens_.assign(prompt.begin(), prompt.end());
}

template <class S>
void Generator<S>::append(Token token) {
  const char* where = "Generator::append";
  REFORMER_REQUIRE(!tokens_.empty(), InvalidArgument, where,
                   "no sequence: call prefill(prompt) first");
  check_token(where, token);
  const Index t = length();
  REFORMER_REQUIRE(t < max_length_, InvalidArgument, where, "the sequence already has ", t,
                   " tokens, max_length = ", max_length_);
  const auto& params = model_.parameters();
  const Index d = model_.config().hidden_size;
  x1_.resize(d, 1);
  xn_.resize(d, 1);
  y_.resize(d, 1);
  embed(token, t, x1_.col(0));
  x2_ = x1_;
  for (Index l = 0; l < model_.num_layers(); ++l) {
    Layer& layer = layers_[static_cast<std::size_t>(l)];
    // y1 = x1 + W_o Attn(LN(x2))
    layer_norm_forward<S>(x2_, params.value_vector(layer.ln_weight),
                          params.value_vector(layer.ln_bias), layer.eps, xn_);
    const auto w_o = params.value(layer.out_weight);
    a_.resize(w_o.cols(), 1);
    std::visit([&](auto& cache) { cache.append(params, xn_, a_.col(0)); }, layer.cache);
    y_.noalias() = w_o * a_;
    x1_ += y_;
    // y2 = x2 + FFN(y1)
    model_.stack().feed_forward(l).forward(params, x1_, y_, layer_context(l));
    x2_ += y_;
  }
  logits_ = model_.head().logits(params, x1_, x2_, layer_context(model_.num_layers()));
  tokens_.push_back(token);
}

template <class S>
BucketRecord Generator<S>::buckets() const {
  BucketRecord record;
  record.layers.resize(layers_.size());
  const Index t = length();
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const auto* cache = std::get_if<LshAttentionCache<S>>(&layers_[l].cache);
    if (cache == nullptr || t == 0) continue;
    const auto& cfg = model_.stack()
                          .attention(static_cast<Index>(l))
                          .template get<typename Model::LshSublayer>()
                          ->core()
                          .config();
    // At the model's padded length: the positions the model appends hold the pad bucket NB.
    BucketTape& tape = record.layers[l];
    const Index tp = model_.padded_length(t);
    const auto pad_bucket = static_cast<std::int32_t>(cache->layout().num_buckets());
    tape.resize(1, cfg.num_heads, cfg.num_hashes, tp);
    for (Index h = 0; h < cfg.num_heads; ++h)
      for (Index r = 0; r < cfg.num_hashes; ++r)
        for (Index i = 0; i < tp; ++i)
          tape.at(0, h, r, i) = i < t ? cache->bucket(h, r, i) : pad_bucket;
  }
  return record;
}

template <class S>
std::size_t Generator<S>::cache_bytes(Index l) const {
  REFORMER_REQUIRE(l >= 0 && l < model_.num_layers(), InvalidArgument, "Generator::cache_bytes",
                   "layer ", l, " out of range [0, ", model_.num_layers(), ")");
  return std::visit([](const auto& cache) { return cache.bytes(); },
                    layers_[static_cast<std::size_t>(l)].cache);
}

}  // namespace reformer
