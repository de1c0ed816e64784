#pragma once
// Token batches of the example programs and what is measured on them: argmax accuracy and the
// cross-entropy of a block of logits over the counted targets.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace reformer::examples {

/// Token type of the examples (the library's token id, int32).
using Tok = std::int32_t;

/// A batch of B sequences of length T, stored one after the other (B*T entries each).
struct TokenBatch {
  Index batch = 0, length = 0;
  std::vector<Tok> tokens;   ///< inputs
  std::vector<Tok> targets;  ///< targets[b*T + t] = class predicted at position t, or -1 (ignored)
};

/// Counts of a prediction accuracy measurement.
struct Accuracy {
  std::int64_t correct = 0;
  std::int64_t total = 0;
  std::int64_t sequences_correct = 0;  ///< sequences with every counted prediction right
  std::int64_t sequences = 0;

  double token_accuracy() const {
    return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
  }
  double sequence_accuracy() const {
    return sequences > 0 ? static_cast<double>(sequences_correct) / static_cast<double>(sequences)
                         : 0.0;
  }
  Accuracy& operator+=(const Accuracy& o) {
    correct += o.correct;
    total += o.total;
    sequences_correct += o.sequences_correct;
    sequences += o.sequences;
    return *this;
  }
};

/// Accuracy of argmax predictions on the counted targets of `batch`: `logits` is V x (B*T).
template <class Derived>
Accuracy argmax_accuracy(const Eigen::MatrixBase<Derived>& logits, const TokenBatch& batch) {
  REFORMER_REQUIRE(logits.cols() == batch.batch * batch.length, InvalidArgument, "argmax_accuracy",
                   "logits.cols() = ", logits.cols(),
                   " must equal B*T = ", batch.batch * batch.length);
  Accuracy acc;
  for (Index b = 0; b < batch.batch; ++b) {
    bool all = true;
    bool any = false;
    for (Index t = 0; t < batch.length; ++t) {
      const Index n = b * batch.length + t;
      const Tok target = batch.targets[static_cast<std::size_t>(n)];
      if (target < 0) continue;
      Index best = 0;
      logits.col(n).maxCoeff(&best);
      const bool ok = best == target;
      acc.correct += ok ? 1 : 0;
      acc.total += 1;
      all = all && ok;
      any = true;
    }
    if (any) {
      acc.sequences += 1;
      acc.sequences_correct += all ? 1 : 0;
    }
  }
  return acc;
}

/// (sum of the cross-entropy losses in nats, number of counted targets) of `logits` (V x N)
/// against `targets` (N ids, negative = not counted), in double.
template <class Derived>
std::pair<double, std::int64_t> cross_entropy_of_logits(const Eigen::MatrixBase<Derived>& logits,
                                                        const std::vector<Tok>& targets) {
  REFORMER_REQUIRE(static_cast<std::size_t>(logits.cols()) == targets.size(), InvalidArgument,
                   "cross_entropy_of_logits", "logits.cols() = ", logits.cols(),
                   " must equal targets.size() = ", targets.size());
  double sum = 0.0;
  std::int64_t count = 0;
  for (Index n = 0; n < logits.cols(); ++n) {
    const Tok t = targets[static_cast<std::size_t>(n)];
    if (t < 0) continue;
    const auto col = logits.col(n).template cast<double>();
    const double m = col.maxCoeff();
    sum += m + std::log((col.array() - m).exp().sum()) - col(t);
    ++count;
  }
  return {sum, count};
}

}  // namespace reformer::examples
