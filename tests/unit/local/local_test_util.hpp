#pragma once
// Helpers private to the local-attention test suite: random matrices,
// a LocalAttention core with its own parameters, the circular-window oracle, error expectations.
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

/// The naive oracle of docs/DESIGN.md 1.3 / 7.2, one query at a time: the key list of query i
/// is all T positions when T <= C, otherwise the positions of the chunks
/// adjacent_chunk(chunk(i), o, n) for o = -before .. after (circular, a chunk listed twice counts
/// twice); causal scores of j > i and scores of padded keys (ctx.mask) are replaced by -1e9;
/// softmax over the list; dropout keeps (i, j) when uniform(i * T + j) >= p under the key
/// (b, h) of the probs stream.
inline Matrix<double> banded_reference(const LocalCore& lc, const Matrix<double>& xn,
                                       const Context& ctx) {
  const auto& cfg = lc.core.config();
  const Index dh = cfg.head_size, heads = cfg.num_heads, c = cfg.chunk_length;
  const Index t = xn.cols() / ctx.batch, chunks = (t + c - 1) / c;
  const Matrix<double> q = lc.params.value(lc.core.query_slot()) * xn;
  const Matrix<double> k =
      lc.params.value(lc.core.key_slot()) * xn / std::sqrt(static_cast<double>(dh));
  const Matrix<double> v = lc.params.value(lc.core.value_slot()) * xn;
  Matrix<double> a = Matrix<double>::Zero(heads * dh, xn.cols());
  const double p = ctx.training ? cfg.dropout : 0.0;
  const bool masked = ctx.mask != nullptr && !ctx.mask->empty();
  for (Index b = 0; b < ctx.batch; ++b) {
    for (Index h = 0; h < heads; ++h) {
      const Rng rng = ctx.rng(stream::kAttentionProbsDropout)
                          .derive(static_cast<std::uint64_t>(b))
                          .derive(static_cast<std::uint64_t>(h));
      for (Index i = 0; i < t; ++i) {
        const Index qi = b * t + i;
        std::vector<Index> keys;
        if (chunks == 1) {
          for (Index j = 0; j < t; ++j) keys.push_back(j);
        } else {
          for (Index o = -cfg.chunks_before; o <= cfg.chunks_after; ++o) {
            const Index m = adjacent_chunk(i / c, o, chunks);
            for (Index j = m * c; j < std::min(t, (m + 1) * c); ++j) keys.push_back(j);
          }
        }
        std::vector<double> s;
        double mx = -1e300;
        for (Index j : keys) {
          double sij = q.col(qi).segment(h * dh, dh).dot(k.col(b * t + j).segment(h * dh, dh));
          if (cfg.causal && j > i) sij = -1e9;
          if (masked && !ctx.mask->real(b, j)) sij = -1e9;
          s.push_back(sij);
          mx = std::max(mx, sij);
        }
        double sum = 0.0;
        for (double sij : s) sum += std::exp(sij - mx);
        for (std::size_t n = 0; n < keys.size(); ++n) {
          const Index j = keys[n];
          double pij = std::exp(s[n] - mx) / sum;
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
