#pragma once
// Helpers private to the local-attention test suite: random matrices,
// a LocalAttention core with its own parameters, the banded dense oracle, error expectations.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/local_attention.hpp"

#include "support/finite_differences.hpp"
#include "support/random.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <vector>

namespace reformer::test {}  // namespace reformer::test

namespace reformer::test {

/// A LocalAttention<double> core with its own parameter store, weights drawn from `seed`.
struct LocalCore {
  Parameters<double> params;
  LocalAttention<double> core;
  LocalCore(const LocalAttentionConfig& cfg, Index hidden, std::uint64_t seed = 1)
      : core(cfg, hidden, params, "attention.") {
    core.init(params, Rng(seed), 0.5);
  }
};

/// The naive oracle of docs/DESIGN.md 1.3 with one T x T score matrix per (sequence, head):
/// key j is visible to query i when chunk(j) lies in [chunk(i) - before, chunk(i) + after]
/// (no wrap-around); causal scores of j > i are replaced by -1e9; softmax over the visible keys;
/// dropout keeps (i, j) when uniform(i * T + j) >= p under the key (b, h) of the probs stream.
inline Matrix<double> banded_reference(const LocalCore& lc, const Matrix<double>& xn,
                                       const Context& ctx) {
  const auto& cfg = lc.core.config();
  const Index dh = cfg.head_size, heads = cfg.num_heads, c = cfg.chunk_length;
  const Index t = xn.cols() / ctx.batch;
  const Matrix<double> q = lc.params.value(lc.core.query_slot()) * xn;
  const Matrix<double> k =
      lc.params.value(lc.core.key_slot()) * xn / std::sqrt(static_cast<double>(dh));
  const Matrix<double> v = lc.params.value(lc.core.value_slot()) * xn;
  Matrix<double> a = Matrix<double>::Zero(heads * dh, xn.cols());
  const double p = ctx.training ? cfg.dropout : 0.0;
  for (Index b = 0; b < ctx.batch; ++b) {
    for (Index h = 0; h < heads; ++h) {
      const Rng rng = ctx.rng(stream::kAttentionProbsDropout)
                          .derive(static_cast<std::uint64_t>(b))
                          .derive(static_cast<std::uint64_t>(h));
      for (Index i = 0; i < t; ++i) {
        const Index qi = b * t + i;
        std::vector<double> s(static_cast<std::size_t>(t), 0.0);
        std::vector<bool> visible(static_cast<std::size_t>(t), false);
        double mx = -1e300;
        for (Index j = 0; j < t; ++j) {
          const Index ci = i / c, cj = j / c;
          if (cj < ci - cfg.chunks_before || cj > ci + cfg.chunks_after) continue;
          double sij = q.col(qi).segment(h * dh, dh).dot(k.col(b * t + j).segment(h * dh, dh));
          if (cfg.causal && j > i) sij = -1e9;
          s[static_cast<std::size_t>(j)] = sij;
          visible[static_cast<std::size_t>(j)] = true;
          mx = std::max(mx, sij);
        }
        double sum = 0.0;
        for (Index j = 0; j < t; ++j)
          if (visible[static_cast<std::size_t>(j)])
            sum += std::exp(s[static_cast<std::size_t>(j)] - mx);
        for (Index j = 0; j < t; ++j) {
          if (!visible[static_cast<std::size_t>(j)]) continue;
          double pij = std::exp(s[static_cast<std::size_t>(j)] - mx) / sum;
          if (p > 0) {
            const auto idx = static_cast<std::uint64_t>(i * t + j);
            pij = rng.uniform(idx) >= p ? pij / (1.0 - p) : 0.0;
          }
          a.col(qi).segment(h * dh, dh) += pij * v.col(b * t + j).segment(h * dh, dh);
        }
      }
    }
  }
  return a;
}

/// Expects f() to throw InvalidArgument whose message contains every needle.
template <class F>
::testing::AssertionResult throws_invalid(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    for (const auto& n : needles)
      if (what.find(n) == std::string::npos)
        return ::testing::AssertionFailure() << "message '" << what << "' lacks '" << n << "'";
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "wrong exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << "no exception";
}

}  // namespace reformer::test
