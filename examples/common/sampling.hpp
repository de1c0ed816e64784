#pragma once
// Choosing the next token from a vector of logits: temperature, top-k and top-p (nucleus)
// sampling, as in common LM toolkits.
//
//   p_i = softmax(logits / temperature)_i              (temperature 0: greedy argmax)
//   keep the k most probable tokens (top_k > 0), then the smallest prefix of them, in order of
//   decreasing probability, whose mass reaches top_p (at least one token); renormalise; draw.
// Ties in probability are broken by the smaller token id, so the choice is a pure function of
// the logits and the uniform draw `u`.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace reformer::examples {

struct SamplingOptions {
  double temperature = 1.0;  ///< >= 0; 0 = greedy
  Index top_k = 0;           ///< >= 0; 0 = no limit
  double top_p = 1.0;        ///< in (0, 1]

  void validate() const {
    REFORMER_REQUIRE(std::isfinite(temperature) && temperature >= 0.0, InvalidArgument,
                     "SamplingOptions", "temperature = ", temperature, " must be >= 0");
    REFORMER_REQUIRE(top_k >= 0, InvalidArgument, "SamplingOptions", "top_k = ", top_k,
                     " must be >= 0");
    REFORMER_REQUIRE(std::isfinite(top_p) && top_p > 0.0 && top_p <= 1.0, InvalidArgument,
                     "SamplingOptions", "top_p = ", top_p, " must be in (0, 1]");
  }
};

/// The token chosen from `logits` (a vector of V scores) with the uniform draw u in [0, 1).
template <class Derived>
Index sample_token(const Eigen::MatrixBase<Derived>& logits, const SamplingOptions& opt, double u) {
  opt.validate();
  const Index V = logits.size();
  REFORMER_REQUIRE(V >= 1, InvalidArgument, "sample_token", "logits.size() = ", V, " must be >= 1");
  if (opt.temperature == 0.0 || opt.top_k == 1) {
    Index best = 0;
    for (Index i = 1; i < V; ++i) {
      if (logits(i) > logits(best)) best = i;  // first maximum wins
    }
    return best;
  }
  // Probabilities in double, stabilised by the maximum.
  std::vector<double> p(static_cast<std::size_t>(V));
  double m = -INFINITY;
  for (Index i = 0; i < V; ++i) m = std::max(m, static_cast<double>(logits(i)));
  for (Index i = 0; i < V; ++i) {
    p[static_cast<std::size_t>(i)] =
        std::exp((static_cast<double>(logits(i)) - m) / opt.temperature);
  }
  // Token ids by decreasing probability (stable: equal probabilities keep id order).
  std::vector<Index> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
    return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)];
  });
  std::size_t keep = order.size();
  if (opt.top_k > 0) keep = std::min(keep, static_cast<std::size_t>(opt.top_k));
  double total = 0.0;
  for (std::size_t i = 0; i < keep; ++i) total += p[static_cast<std::size_t>(order[i])];
  if (opt.top_p < 1.0) {
    double mass = 0.0;
    std::size_t n = 0;
    while (n < keep) {
      mass += p[static_cast<std::size_t>(order[n])];
      ++n;
      if (mass >= opt.top_p * total) break;
    }
    keep = n;
    total = mass;
  }
  // Inverse CDF over the kept tokens.
  const double target = u * total;
  double acc = 0.0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += p[static_cast<std::size_t>(order[i])];
    if (target < acc) return order[i];
  }
  return order[keep - 1];  // u * total rounded up to the total
}

}  // namespace reformer::examples
