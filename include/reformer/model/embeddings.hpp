#pragma once
// Token and position embeddings of the Reformer LM (docs/DESIGN.md 1.1, 1.6), as Hugging Face's
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
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/model/config.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/embedding.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace reformer {

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
            double axial_norm_std) const;

  /// Throws InvalidArgument unless `tokens` holds ctx.batch sequences of a length within the
  /// position table, every id in [0, V). Returns T.
  Index check_tokens(const char* where, TokenSpan tokens, const Context& ctx) const {
    const Index n = tokens.size();
    REFORMER_REQUIRE(ctx.batch >= 1, InvalidArgument, where, "batch = ", ctx.batch,
                     " must be >= 1");
    REFORMER_REQUIRE(n > 0 && n % ctx.batch == 0, InvalidArgument, where, "tokens.size() = ", n,
                     " is not a positive multiple of batch = ", ctx.batch);
    const Index t = n / ctx.batch;
    REFORMER_REQUIRE(t <= max_length_, InvalidArgument, where, "sequence length T = ", t,
                     " exceeds the position embeddings' maximum length ", max_length_,
                     axial_ ? " (axial_pos_shape s1 * s2)" : " (max_position_embeddings)");
    for (Index i = 0; i < n; ++i) {
      REFORMER_REQUIRE(tokens[i] >= 0 && tokens[i] < vocab_, InvalidArgument, where, "tokens[", i,
                       "] = ", tokens[i], " (sequence ", i / t, ", position ", i % t,
                       ") is outside [0, vocab_size = ", vocab_, ")");
    }
    return t;
  }

  /// e = word + position embeddings (with dropout in training). e is D x tokens.size().
  void forward(const Parameters<S>& params, TokenSpan tokens, MatrixRef<S> e,
               const Context& ctx) const;

  /// Accumulates the table gradients from de (D x tokens.size()), recomputing the dropout masks.
  void backward(Parameters<S>& params, TokenSpan tokens, ConstMatrixRef<S> de,
                const Context& ctx) const;

 private:
  /// check_tokens(where, tokens, ctx), and that the matrix `name` (rows x cols) is
  /// D x tokens.size(). Returns T.
  Index check_tokens(const char* where, TokenSpan tokens, const char* name, Index rows, Index cols,
                     const Context& ctx) const {
    const Index t = check_tokens(where, tokens, ctx);
    check_shape(where, name, rows, cols, hidden_, tokens.size());
    return t;
  }

  /// Visits the n = B * T columns c = b * T + pos of the position embeddings. Axial: calls
  /// axial(c, i, j) with (i, j) = (pos / s2, pos % s2) for every column whose P2[j] the
  /// position dropout (probability p, one draw per sequence and j) keeps. Learned: calls
  /// learned(c, pos, rng) for every column, rng being the position dropout's stream (its masks
  /// are per element).
  template <class Axial, class Learned>
  void for_each_position(Index t, Index n, double p, const Context& ctx, Axial&& axial,
                         Learned&& learned) const {
    const Rng pos_rng = ctx.rng(stream::kPositionDropout);
    for (Index c = 0; c < n; ++c) {
      const Index b = c / t, pos = c % t;
      if (!axial_) {
        learned(c, pos, pos_rng);
        continue;
      }
      const Index i = pos / s2_, j = pos % s2_;
      if (dropout_keeps(pos_rng, p, static_cast<std::uint64_t>(b * s2_ + j))) axial(c, i, j);
    }
  }

  Index vocab_, hidden_;
  bool axial_;
  double dropout_;
  Index max_length_;
  Index s1_ = 0, s2_ = 0, d1_ = 0, d2_ = 0;
  SlotId word_ = -1, pos0_ = -1, pos1_ = -1;
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class Embeddings<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
void Embeddings<S>::init(Parameters<S>& params, const Rng& rng, double initializer_range,
                         double axial_norm_std) const {
  init_normal(params, word_, rng.derive(0), initializer_range);
  if (axial_) {
    init_normal(params, pos0_, rng.derive(1), axial_norm_std);
    init_normal(params, pos1_, rng.derive(2), axial_norm_std);
  } else {
    init_normal(params, pos0_, rng.derive(1), initializer_range);
  }
}

template <class S>
void Embeddings<S>::forward(const Parameters<S>& params, TokenSpan tokens, MatrixRef<S> e,
                            const Context& ctx) const {
  const Index t = check_tokens("Embeddings::forward", tokens, "e", e.rows(), e.cols(), ctx);
  const Index n = tokens.size();
  const double p = ctx.training ? dropout_ : 0.0;

  // e = Dropout_w(E[tok])
  embedding_forward<S>(params.value(word_), tokens, e);
  dropout_inplace<S>(ctx.rng(stream::kEmbeddingDropout), p, 0, e);

  // e += Dropout_p(P(:, t))
  const S scale = static_cast<S>(1.0 / (1.0 - p));
  Scratch<S> pcol_memory(ctx.workspace, hidden_, 1);  // D x 1
  auto& pcol = pcol_memory.map();
  for_each_position(
      t, n, p, ctx,
      [&](Index c, Index i, Index j) {
        e.col(c).head(d1_) += scale * params.value(pos0_).row(i).transpose();
        e.col(c).tail(d2_) += scale * params.value_vector(pos1_).segment(j * d2_, d2_);
      },
      [&](Index c, Index pos, const Rng& pos_rng) {
        pcol = params.value(pos0_).row(pos).transpose();
        dropout_inplace<S>(pos_rng, p, c * hidden_, pcol);  // draw index c * D + r
        e.col(c) += pcol;
      });
}

template <class S>
void Embeddings<S>::backward(Parameters<S>& params, TokenSpan tokens, ConstMatrixRef<S> de,
                             const Context& ctx) const {
  const Index t = check_tokens("Embeddings::backward", tokens, "de", de.rows(), de.cols(), ctx);
  const Index n = tokens.size();
  const double p = ctx.training ? dropout_ : 0.0;

  // e = Dropout_w(E[tok]) + ...  =>  dE[tok_n] += mask_n .* de(:, n)   (scatter-add)
  Scratch<S> dword(ctx.workspace, hidden_, n);  // D x N
  dropout_backward<S>(ctx.rng(stream::kEmbeddingDropout), p, 0, de, dword.map());
  embedding_backward<S>(tokens, dword.map(), params.grad(word_));
  dword.reset();

  const S scale = static_cast<S>(1.0 / (1.0 - p));
  Scratch<S> pcol_memory(ctx.workspace, hidden_, 1);  // D x 1
  auto& pcol = pcol_memory.map();
  for_each_position(
      t, n, p, ctx,
      [&](Index c, Index i, Index j) {
        // P(:, t) = [P1[i]; P2[j]]  =>  dP1[i] += de(:d1, n),  dP2[j] += de(d1:, n)
        params.grad(pos0_).row(i) += scale * de.col(c).head(d1_).transpose();
        params.grad_vector(pos1_).segment(j * d2_, d2_) += scale * de.col(c).tail(d2_);
      },
      [&](Index c, Index pos, const Rng& pos_rng) {
        // dP[t] += mask .* de(:, n)
        dropout_backward<S>(pos_rng, p, c * hidden_, de.col(c), pcol);
        params.grad(pos0_).row(pos) += pcol.transpose();
      });
}

}  // namespace reformer
