#pragma once
// The language-model head's cross-entropy, computed in chunks of tokens so that only a
// V x chunk block of logits exists at any time (never V x N).
//
//   h:       K x N        hidden states (K = 2D for the Reformer LM head)
//   W:       V x K        [V, K] row-major,  b: V
//   targets: N ids; targets[n] in [0, V) is the class of column n, a NEGATIVE target marks an
//            ignored position (excluded from the loss, the count and the gradients)
//
//   logits(:, n) = W h(:, n) + b
//   loss_n       = logsumexp(logits(:, n)) - logits(targets[n], n)
//   sum          = sum over counted n of loss_n,   mean = sum / count  (0 when count == 0)
//
// Backward of L = scale * sum (scale = 1/count for Reduction::kMean, 1 for kSum, times the
// caller's grad_scale):
//   dlogits(:, n) = scale * (softmax(logits(:, n)) - onehot(targets[n]))   (0 when ignored)
//   dh(:, n) = W^T dlogits(:, n)   (overwritten)
//   dW += dlogits h^T,  db += sum_n dlogits(:, n)   (accumulated)
// Losses are summed in double in column order, so the result does not depend on the chunk size
// up to the rounding of the per-chunk products. Each chunk's products run in parallel over fixed
// output blocks (parallel_product), so results are the same for any thread count.
#include "reformer/core/error.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>
#include <cmath>

namespace reformer {

/// Loss of a cross_entropy_* call.
struct CrossEntropyResult {
  double sum = 0.0;   ///< sum of the per-token losses over counted positions
  Index count = 0;    ///< number of counted (non-ignored) positions
  double mean = 0.0;  ///< sum / count, or 0 when count == 0
};

/// How the loss the gradients belong to is reduced over positions.
enum class Reduction {
  kMean,  ///< gradients of sum / count (the LM loss)
  kSum    ///< gradients of sum (to combine several calls, scale with grad_scale yourself)
};

/// Default number of tokens per chunk (logits buffer = V x chunk).
inline constexpr Index kCrossEntropyDefaultChunk = tuning::kCrossEntropyDefaultChunk;

/// Tokens per chunk of a head over n tokens: `requested` when positive, else as many as keep
/// `scalars_per_token` (the head's per-token buffer scalars, e.g. V logits + 3 x 2D) within
/// tuning::kHeadChunkScalars, a multiple of kCrossEntropyDefaultChunk and at least that; never
/// more than n (and at least 1). Depends on the shapes only, never on the thread count.
inline Index head_chunk_tokens(Index n, Index requested, Index scalars_per_token) {
  Index c = requested;
  if (c <= 0) {
    constexpr Index kStep = kCrossEntropyDefaultChunk;
    const Index fit = tuning::kHeadChunkScalars / std::max<Index>(1, scalars_per_token);
    c = std::max(kStep, fit / kStep * kStep);
  }
  return std::max<Index>(1, std::min(c, n));
}

namespace detail {
inline void check_cross_entropy_args(const char* where, Index h_rows, Index h_cols, Index w_rows,
                                     Index w_cols, Index b_rows, Index b_cols, TokenSpan targets,
                                     Index chunk) {
  REFORMER_REQUIRE(w_rows > 0, InvalidArgument, where, "W.rows() = ", w_rows,
                   " (the vocabulary size) must be positive");
  REFORMER_REQUIRE(h_rows == w_cols, InvalidArgument, where, "h.rows() = ", h_rows,
                   " must equal W.cols() = ", w_cols);
  check_shape(where, "b", b_rows, b_cols, w_rows, 1);
  REFORMER_REQUIRE(targets.size() == h_cols, InvalidArgument, where,
                   "targets.size() = ", targets.size(), " must equal h.cols() = ", h_cols);
  REFORMER_REQUIRE(chunk > 0, InvalidArgument, where, "chunk = ", chunk, " must be positive");
  for (Index n = 0; n < targets.size(); ++n) {
    REFORMER_REQUIRE(targets[n] < w_rows, InvalidArgument, where, "targets[", n, "] = ", targets[n],
                     " is out of range [0, V = ", w_rows,
                     ") (negative targets mark ignored positions)");
  }
}

/// Turns one chunk of logits (V x c) into per-column losses; when `grad` is set, overwrites the
/// logits with softmax - onehot, scaled by `scale` (zero columns for ignored positions).
template <class S>
void cross_entropy_chunk(MatrixRef<S> logits, TokenSpan targets, bool grad, S scale,
                         CrossEntropyResult& acc) {
  for (Index n = 0; n < logits.cols(); ++n) {
    const Index t = targets[n];
    if (t < 0) {
      if (grad) logits.col(n).setZero();
      continue;
    }
    auto col = logits.col(n);
    const S m = col.maxCoeff();
    const S z = m + std::log((col.array() - m).exp().sum());  // logsumexp
    acc.sum += static_cast<double>(z) - static_cast<double>(col(t));
    ++acc.count;
    if (grad) {
      col = ((col.array() - z).exp() * scale).matrix();
      col(t) -= scale;
    }
  }
}
/// Calls f(c0, c, logits) for the chunks [c0, c0 + c) of `chunk` tokens of h (K x N), with the
/// chunk's logits = W h(:, c0:c0+c) + b (V x c) in one reused V x chunk buffer drawn from `ws`
/// (the heap when null).
template <class S, class F>
void for_each_logits_chunk(ConstMatrixRef<S> h, ConstWeightRef<S> W, ConstVectorRef<S> b,
                           Index chunk, Workspace* ws, F&& f) {
  const Index n_total = h.cols();
  Scratch<S> buffer(ws, W.rows(), std::min(chunk, n_total));  // V x chunk
  for (Index c0 = 0; c0 < n_total; c0 += chunk) {
    const Index c = std::min(chunk, n_total - c0);
    auto logits = buffer.map().leftCols(c);
    parallel_product(logits, W, h.middleCols(c0, c), /*accumulate=*/false);
    logits.colwise() += b;
    f(c0, c, logits);
  }
}

}  // namespace detail

/// Logits of the given columns: logits = W h + b.  h: K x n, logits: V x n (overwritten).
/// For inference on a few positions (e.g. the last one): pass h.rightCols(1).
template <class S>
void lm_logits(ConstMatrixRef<S> h, ConstWeightRef<S> W, ConstVectorRef<S> b, MatrixRef<S> logits) {
  REFORMER_REQUIRE(h.rows() == W.cols(), InvalidArgument, "lm_logits", "h.rows() = ", h.rows(),
                   " must equal W.cols() = ", W.cols());
  check_shape("lm_logits", "b", b.rows(), b.cols(), W.rows(), 1);
  check_shape("lm_logits", "logits", logits.rows(), logits.cols(), W.rows(), h.cols());
  logits.noalias() = W * h;
  logits.colwise() += b;
}

/// Cross-entropy of the LM head (loss only), in chunks of `chunk` tokens. The V x chunk logits
/// buffer comes from `ws` (the heap when null).
template <class S>
CrossEntropyResult cross_entropy_forward(ConstMatrixRef<S> h, ConstWeightRef<S> W,
                                         ConstVectorRef<S> b, TokenSpan targets,
                                         Index chunk = kCrossEntropyDefaultChunk,
                                         Workspace* ws = nullptr) {
  detail::check_cross_entropy_args("cross_entropy_forward", h.rows(), h.cols(), W.rows(), W.cols(),
                                   b.rows(), b.cols(), targets, chunk);
  CrossEntropyResult r;
  detail::for_each_logits_chunk<S>(h, W, b, chunk, ws, [&](Index c0, Index c, MatrixRef<S> logits) {
    detail::cross_entropy_chunk<S>(logits, targets.subspan(c0, c), false, S(0), r);
  });
  r.mean = r.count > 0 ? r.sum / static_cast<double>(r.count) : 0.0;
  return r;
}

/// Cross-entropy with its gradients, recomputing each chunk's logits (V x chunk) once:
/// returns the loss, overwrites dh (K x N), accumulates dW (V x K) and db (V). The gradients
/// are those of `grad_scale * mean` (Reduction::kMean) or `grad_scale * sum` (kSum). The
/// V x chunk logits buffer comes from `ws` (the heap when null).
template <class S>
CrossEntropyResult cross_entropy_forward_backward(
    ConstMatrixRef<S> h, ConstWeightRef<S> W, ConstVectorRef<S> b, TokenSpan targets,
    MatrixRef<S> dh, WeightRef<S> dW, VectorRef<S> db, Index chunk = kCrossEntropyDefaultChunk,
    Reduction reduction = Reduction::kMean, double grad_scale = 1.0, Workspace* ws = nullptr) {
  constexpr const char* kWhere = "cross_entropy_forward_backward";
  detail::check_cross_entropy_args(kWhere, h.rows(), h.cols(), W.rows(), W.cols(), b.rows(),
                                   b.cols(), targets, chunk);
  check_shape(kWhere, "dh", dh.rows(), dh.cols(), h.rows(), h.cols());
  check_shape(kWhere, "dW", dW.rows(), dW.cols(), W.rows(), W.cols());
  check_shape(kWhere, "db", db.rows(), db.cols(), W.rows(), 1);
  REFORMER_REQUIRE(std::isfinite(grad_scale), InvalidArgument, kWhere, "grad_scale = ", grad_scale,
                   " must be finite");

  Index count = 0;
  for (Index n = 0; n < targets.size(); ++n) count += targets[n] >= 0 ? 1 : 0;
  double scale = grad_scale;
  if (reduction == Reduction::kMean) scale = count > 0 ? grad_scale / count : 0.0;
  const S s = static_cast<S>(scale);

  CrossEntropyResult r;
  detail::for_each_logits_chunk<S>(h, W, b, chunk, ws, [&](Index c0, Index c, MatrixRef<S> block) {
    detail::cross_entropy_chunk<S>(block, targets.subspan(c0, c), true, s, r);  // → dlogits
    const auto hc = h.middleCols(c0, c);                                        // K x c
    parallel_product(dh.middleCols(c0, c), W.transpose(), block, /*accumulate=*/false);
    parallel_product(dW, block, hc.transpose(), /*accumulate=*/true);
    db.noalias() += block.rowwise().sum();
  });
  r.mean = r.count > 0 ? r.sum / static_cast<double>(r.count) : 0.0;
  return r;
}

}  // namespace reformer
