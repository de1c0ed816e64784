#pragma once
// Choosing the next token from a vector of logits: greedy, temperature, top-k, top-p (nucleus)
// sampling and a repetition penalty, as in common LM toolkits.
//
//   l_i = logits_i, with the repetition penalty rho applied to every token already in the
//         context:  l_i / rho if l_i > 0, l_i * rho otherwise   (rho = 1: no penalty)
//   p_i = softmax(l / temperature)_i                  (temperature 0: greedy argmax)
//   keep the k most probable tokens (top_k > 0), then the smallest prefix of them, in order of
//   decreasing probability, whose mass reaches top_p (at least one token); renormalise; draw.
// Ties in probability are broken by the smaller token id, so the choice is a pure function of
// the logits and the uniform draw `u`. A Sampler draws u = Rng(seed).uniform(i) for its i-th
// token, so a run is reproducible from its seed whatever the thread count.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/tokens.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

namespace reformer {

struct SamplingOptions {
  double temperature = 1.0;         ///< >= 0; 0 = greedy
  Index top_k = 0;                  ///< >= 0; 0 = no limit
  double top_p = 1.0;               ///< in (0, 1]
  double repetition_penalty = 1.0;  ///< > 0; 1 = none; > 1 discourages tokens of the context
  std::vector<Token> stop_tokens;   ///< generation ends after one of these (Sampler::is_stop)

  void validate() const {
    const char* where = "SamplingOptions";
    REFORMER_REQUIRE(std::isfinite(temperature) && temperature >= 0.0, InvalidArgument, where,
                     "temperature = ", temperature, " must be >= 0");
    REFORMER_REQUIRE(top_k >= 0, InvalidArgument, where, "top_k = ", top_k, " must be >= 0");
    REFORMER_REQUIRE(std::isfinite(top_p) && top_p > 0.0 && top_p <= 1.0, InvalidArgument, where,
                     "top_p = ", top_p, " must be in (0, 1]");
    REFORMER_REQUIRE(std::isfinite(repetition_penalty) && repetition_penalty > 0.0, InvalidArgument,
                     where, "repetition_penalty = ", repetition_penalty, " must be > 0");
  }
};

/// The token chosen from `logits` (a vector of V scores) with the uniform draw u in [0, 1)
/// (no repetition penalty: see apply_repetition_penalty).
template <class Derived>
Index sample_token(const Eigen::MatrixBase<Derived>& logits, const SamplingOptions& opt, double u) {
  opt.validate();
  const Index V = logits.size();
  REFORMER_REQUIRE(V >= 1, InvalidArgument, "sample_token", "logits.size() = ", V, " must be >= 1");
  REFORMER_REQUIRE(u >= 0.0 && u < 1.0, InvalidArgument, "sample_token", "u = ", u,
                   " must be in [0, 1)");
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

/// Applies the repetition penalty to `logits` (V, in place) for every distinct token of
/// `context`: l / penalty when l > 0, l * penalty otherwise. InvalidArgument on a token id
/// outside [0, V) or a penalty <= 0.
template <class S>
void apply_repetition_penalty(VectorRef<S> logits, TokenSpan context, double penalty) {
  const char* where = "apply_repetition_penalty";
  REFORMER_REQUIRE(std::isfinite(penalty) && penalty > 0.0, InvalidArgument, where,
                   "penalty = ", penalty, " must be > 0");
  if (penalty == 1.0) return;
  const Index V = logits.size();
  std::vector<bool> seen(static_cast<std::size_t>(V), false);
  for (Index i = 0; i < context.size(); ++i) {
    const Token t = context[i];
    REFORMER_REQUIRE(t >= 0 && t < V, InvalidArgument, where, "context[", i, "] = ", t,
                     " is outside [0, V = ", V, ")");
    if (seen[static_cast<std::size_t>(t)]) continue;
    seen[static_cast<std::size_t>(t)] = true;
    S& l = logits(t);
    l = l > S(0) ? static_cast<S>(l / penalty) : static_cast<S>(l * penalty);
  }
}

/// Seeded, deterministic token choice: the i-th call of next() draws Rng(seed).uniform(i).
class Sampler {
 public:
  explicit Sampler(SamplingOptions options = {}, std::uint64_t seed = 0)
      : Sampler(std::move(options), Rng(seed)) {}
  /// The same with an explicit key: the i-th draw is key.uniform(i).
  Sampler(SamplingOptions options, const Rng& key) : opt_(std::move(options)), rng_(key) {
    opt_.validate();
  }

  const SamplingOptions& options() const { return opt_; }
  /// Tokens chosen so far (the index of the next draw).
  std::uint64_t draws() const { return draws_; }

  /// The next token from `logits` (V), penalising the tokens of `context`.
  template <class S>
  Token next(const Vector<S>& logits, TokenSpan context = {}) {
    const double u = rng_.uniform(draws_++);
    if (opt_.repetition_penalty == 1.0 || context.empty()) {
      return static_cast<Token>(sample_token(logits, opt_, u));
    }
    penalised_ = logits.template cast<double>();
    apply_repetition_penalty<double>(penalised_, context, opt_.repetition_penalty);
    return static_cast<Token>(sample_token(penalised_, opt_, u));
  }

  /// Whether `token` ends generation.
  bool is_stop(Token token) const {
    return std::find(opt_.stop_tokens.begin(), opt_.stop_tokens.end(), token) !=
           opt_.stop_tokens.end();
  }

 private:
  SamplingOptions opt_;
  Rng rng_;
  std::uint64_t draws_ = 0;
  Vector<double> penalised_;
};

}  // namespace reformer
