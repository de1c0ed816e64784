#pragma once
// Embedding lookup (a column gather) and its scatter-add backward.
//
//   E:      V x D, [V, D] row-major (the PyTorch layout): row v is the embedding of token v
//   tokens: N ids in [0, V)
//   y:      D x N,  y(:, n) = E(tokens[n], :)^T
//   dE(tokens[n], :) += dy(:, n)^T     for n = 0, 1, ..., N-1 in this order (deterministic)
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/tokens.hpp"

namespace reformer {

namespace detail {
/// Throws InvalidArgument naming the first id outside [0, vocab), its position and the vocab.
inline void check_token_ids(const char* where, const char* name, TokenSpan tokens, Index vocab) {
  for (Index n = 0; n < tokens.size(); ++n) {
    const Index id = tokens[n];
    if (id < 0 || id >= vocab) {
      raise(where, name, "[", n, "] = ", id, " is out of range [0, V = ", vocab, ")");
    }
  }
}
}  // namespace detail

/// y(:, n) = E(tokens[n], :)^T.  E: V x D row-major; y: D x N (overwritten).
template <class S>
void embedding_forward(ConstWeightRef<S> E, TokenSpan tokens, MatrixRef<S> y) {
  check_shape("embedding_forward", "y", y.rows(), y.cols(), E.cols(), tokens.size());
  detail::check_token_ids("embedding_forward", "tokens", tokens, E.rows());
  for (Index n = 0; n < tokens.size(); ++n) y.col(n) = E.row(tokens[n]).transpose();
}

/// dE(tokens[n], :) += dy(:, n)^T in the order n = 0..N-1.  dE: V x D row-major; dy: D x N.
template <class S>
void embedding_backward(TokenSpan tokens, ConstMatrixRef<S> dy, WeightRef<S> dE) {
  check_shape("embedding_backward", "dy", dy.rows(), dy.cols(), dE.cols(), tokens.size());
  detail::check_token_ids("embedding_backward", "tokens", tokens, dE.rows());
  for (Index n = 0; n < tokens.size(); ++n) dE.row(tokens[n]) += dy.col(n).transpose();
}

}  // namespace reformer
