#pragma once
// Token and position embeddings of the Reformer LM (DESIGN 1.1, 1.6), as Hugging Face's
// ReformerEmbeddings:
//
//   e(:, n) = Dropout_w(E[tok_n, :]^T) + Dropout_p(P(:, t_n))       D x N, N = batch * T,
//                                                                    t_n = n mod T
// Word embeddings E: `reformer.embeddings.word_embeddings.weight` [V, D].
// Positions, one of
//   axial (cfg.axial_pos_embds):  `reformer.embeddings.position_embeddings.weights.0` [s1, 1, d1]
//                                 `reformer.embeddings.position_embeddings.weights.1` [1, s2, d2]
//        P(:, t) = [P1[i]; P2[j]]  with t = i * s2 + j   (any T <= s1 * s2)
//   learned (otherwise):          `reformer.embeddings.position_embeddings.embedding.weight`
//                                 [max_position_embeddings, D],   P(:, t) = row t
//
// Dropout (training only, p = hidden_dropout_prob, inverted scaling 1 / (1 - p), keep iff the
// uniform draw >= p, as HF):
//   words:            element (r, n) of the D x N matrix, key ctx.rng(stream::kEmbeddingDropout),
//                     draw n * D + r
//   learned positions: the same on the position term, key ctx.rng(stream::kPositionDropout)
//   axial positions:  HF's dropout2d: per (sequence b, second axial index j) the whole D x s1
//                     plane of positions t = i * s2 + j is kept or dropped together, key
//                     ctx.rng(stream::kPositionDropout), draw b * s2 + j
//
// Backward is a scatter-add of de into the table rows a token / position used (sequential over
// tokens, so the sum order is fixed whatever the thread count).
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/detail/sublayer_util.hpp"
#include "reformer/model/config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace reformer {

/// Token id type of the model's inputs.
using TokenId = std::int32_t;

template <class S>
class Embeddings {
 public:
  using Scalar = S;

  /// Registers the embedding tables (HF names and order) in `params`. `cfg` must be valid.
  Embeddings(const ReformerConfig& cfg, Parameters<S>& params)
      : vocab_(cfg.vocab_size),
        hidden_(cfg.hidden_size),
        axial_(cfg.axial_pos_embds),
        dropout_(cfg.hidden_dropout_prob),
        max_length_(cfg.max_length()) {
    word_ = params.add("reformer.embeddings.word_embeddings.weight", {vocab_, hidden_});
    if (axial_) {
      s1_ = cfg.axial_pos_shape[0];
      s2_ = cfg.axial_pos_shape[1];
      d1_ = cfg.axial_pos_embds_dim[0];
      d2_ = cfg.axial_pos_embds_dim[1];
      REFORMER_REQUIRE(d1_ + d2_ == hidden_, ConfigError, "Embeddings",
                       "axial_pos_embds_dim sums to ", d1_ + d2_,
                       ", must equal hidden_size = ", hidden_);
      pos0_ = params.add("reformer.embeddings.position_embeddings.weights.0", {s1_, 1, d1_});
      pos1_ = params.add("reformer.embeddings.position_embeddings.weights.1", {1, s2_, d2_});
    } else {
      pos0_ = params.add("reformer.embeddings.position_embeddings.embedding.weight",
                         {cfg.max_position_embeddings, hidden_});
    }
  }

  Index hidden_size() const { return hidden_; }
  Index vocab_size() const { return vocab_; }
  /// Longest sequence the position table covers.
  Index max_length() const { return max_length_; }
  bool axial() const { return axial_; }

  SlotId word_slot() const { return word_; }
  /// Axial: P1 (weights.0); learned: the table.
  SlotId position_slot() const { return pos0_; }
  /// Axial: P2 (weights.1); learned: -1.
  SlotId position2_slot() const { return pos1_; }

  /// HF initialisation: word and learned position tables ~ normal(0, initializer_range), axial
  /// tables ~ normal(0, axial_norm_std).
  void init(Parameters<S>& params, const Rng& rng, double initializer_range,
            double axial_norm_std) const {
    detail::init_normal(params, word_, rng.derive(0), initializer_range);
    if (axial_) {
      detail::init_normal(params, pos0_, rng.derive(1), axial_norm_std);
      detail::init_normal(params, pos1_, rng.derive(2), axial_norm_std);
    } else {
      detail::init_normal(params, pos0_, rng.derive(1), initializer_range);
    }
  }

  /// Throws InvalidArgument unless `tokens` holds ctx.batch sequences of a length within the
  /// position table, every id in [0, V). Returns T.
  Index check_tokens(const char* where, const std::vector<TokenId>& tokens,
                     const Context& ctx) const {
    const Index n = static_cast<Index>(tokens.size());
    REFORMER_REQUIRE(ctx.batch >= 1, InvalidArgument, where, "batch = ", ctx.batch,
                     " must be >= 1");
    REFORMER_REQUIRE(n > 0 && n % ctx.batch == 0, InvalidArgument, where, "tokens.size() = ", n,
                     " is not a positive multiple of batch = ", ctx.batch);
    const Index t = n / ctx.batch;
    REFORMER_REQUIRE(t <= max_length_, InvalidArgument, where, "sequence length T = ", t,
                     " exceeds the position embeddings' maximum length ", max_length_,
                     axial_ ? " (axial_pos_shape s1 * s2)" : " (max_position_embeddings)");
    for (Index i = 0; i < n; ++i) {
      const TokenId id = tokens[static_cast<std::size_t>(i)];
      REFORMER_REQUIRE(id >= 0 && id < vocab_, InvalidArgument, where, "tokens[", i, "] = ", id,
                       " (sequence ", i / t, ", position ", i % t,
                       ") is outside [0, vocab_size = ", vocab_, ")");
    }
    return t;
  }

  /// e = word + position embeddings (with dropout in training). e is D x tokens.size().
  void forward(const Parameters<S>& params, const std::vector<TokenId>& tokens, MatrixRef<S> e,
               const Context& ctx) const {
    const char* where = "Embeddings::forward";
    const Index t = check_tokens(where, tokens, ctx);
    const Index n = static_cast<Index>(tokens.size());
    check_shape(where, "e", e.rows(), e.cols(), hidden_, n);
    const auto word = params.value(word_);  // V x D row-major: row = one token's vector
    const bool drop = ctx.training && dropout_ > 0;
    const Rng word_rng = ctx.rng(stream::kEmbeddingDropout);
    const Rng pos_rng = ctx.rng(stream::kPositionDropout);
    const S scale = drop ? S(1) / S(1 - dropout_) : S(1);
    for (Index c = 0; c < n; ++c) {
      e.col(c) = word.row(tokens[static_cast<std::size_t>(c)]).transpose();
      if (drop) apply_mask(e.col(c), word_rng, c);
    }
    for (Index c = 0; c < n; ++c) {
      const Index b = c / t, pos = c % t;
      if (axial_) {
        const Index i = pos / s2_, j = pos % s2_;
        if (drop && !keep(pos_rng, static_cast<std::uint64_t>(b * s2_ + j))) continue;
        e.col(c).head(d1_) += scale * params.value(pos0_).row(i).transpose();
        e.col(c).tail(d2_) += scale * params.value_vector(pos1_).segment(j * d2_, d2_);
      } else if (drop) {
        Vector<S> p = params.value(pos0_).row(pos).transpose();
        apply_mask(p, pos_rng, c);
        e.col(c) += p;
      } else {
        e.col(c) += params.value(pos0_).row(pos).transpose();
      }
    }
  }

  /// Accumulates the table gradients from de (D x tokens.size()), recomputing the dropout masks.
  void backward(Parameters<S>& params, const std::vector<TokenId>& tokens, ConstMatrixRef<S> de,
                const Context& ctx) const {
    const char* where = "Embeddings::backward";
    const Index t = check_tokens(where, tokens, ctx);
    const Index n = static_cast<Index>(tokens.size());
    check_shape(where, "de", de.rows(), de.cols(), hidden_, n);
    const bool drop = ctx.training && dropout_ > 0;
    const Rng word_rng = ctx.rng(stream::kEmbeddingDropout);
    const Rng pos_rng = ctx.rng(stream::kPositionDropout);
    const S scale = drop ? S(1) / S(1 - dropout_) : S(1);
    auto dword = params.grad(word_);
    Vector<S> g(hidden_);
    for (Index c = 0; c < n; ++c) {
      // e = Dropout(E[tok]) + ...  =>  dE[tok] += mask .* de
      g = de.col(c);
      if (drop) apply_mask(g, word_rng, c);
      dword.row(tokens[static_cast<std::size_t>(c)]) += g.transpose();
    }
    for (Index c = 0; c < n; ++c) {
      const Index b = c / t, pos = c % t;
      if (axial_) {
        // P(:, t) = [P1[i]; P2[j]]  =>  dP1[i] += de(:d1), dP2[j] += de(d1:)
        const Index i = pos / s2_, j = pos % s2_;
        if (drop && !keep(pos_rng, static_cast<std::uint64_t>(b * s2_ + j))) continue;
        params.grad(pos0_).row(i) += scale * de.col(c).head(d1_).transpose();
        params.grad_vector(pos1_).segment(j * d2_, d2_) += scale * de.col(c).tail(d2_);
      } else {
        g = de.col(c);
        if (drop) apply_mask(g, pos_rng, c);
        params.grad(pos0_).row(pos) += g.transpose();
      }
    }
  }

 private:
  bool keep(const Rng& rng, std::uint64_t index) const { return rng.uniform(index) >= dropout_; }

  // Inverted dropout of column c of a D x N matrix (draw index = linear element index).
  template <class Col>
  void apply_mask(Col&& col, const Rng& rng, Index c) const {
    const S scale = S(1) / S(1 - dropout_);
    for (Index r = 0; r < hidden_; ++r) {
      col(r) = keep(rng, static_cast<std::uint64_t>(c * hidden_ + r)) ? col(r) * scale : S(0);
    }
  }

  Index vocab_, hidden_;
  bool axial_;
  double dropout_;
  Index max_length_;
  Index s1_ = 0, s2_ = 0, d1_ = 0, d2_ = 0;
  SlotId word_ = -1, pos0_ = -1, pos1_ = -1;
};

}  // namespace reformer
