#pragma once
// Helpers private to the LSH test suite: random data and plain (loop-based,
// unoptimised) reference implementations of shared-QK attention and of the whole LSH attention
// given its buckets, written from docs/DESIGN.md 1.2 without sharing code with the library.
#include "reformer/core/context.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/lsh_attention.hpp"

#include "support/finite_differences.hpp"
#include "support/random.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

namespace reformer::test {

/// The core's config: `heads` heads of `dh`, chunks of `chunk` tokens, `rounds` hash rounds of
/// `nb` bucket factors.
inline LshAttentionConfig lsh_config(Index heads, Index dh, Index chunk, Index rounds, bool causal,
                                     std::vector<Index> nb = {4}) {
  LshAttentionConfig c;
  c.num_heads = heads;
  c.head_size = dh;
  c.chunk_length = chunk;
  c.num_hashes = rounds;
  c.num_buckets = std::move(nb);
  c.causal = causal;
  return c;
}

/// max |a - b| / max |b|.
inline double rel_error(const Matrix<double>& a, const Matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() / std::max(b.cwiseAbs().maxCoeff(), 1e-300);
}

/// Keys of the LSH attention, column by column: k = qk / sqrt(mean(qk^2) + 1e-6) / sqrt(Dh).
inline Matrix<double> reference_keys(const Matrix<double>& qk) {
  Matrix<double> k(qk.rows(), qk.cols());
  const double dh = static_cast<double>(qk.rows());
  for (Index t = 0; t < qk.cols(); ++t) {
    double ms = 0;
    for (Index d = 0; d < qk.rows(); ++d) ms += qk(d, t) * qk(d, t);
    ms /= dh;
    for (Index d = 0; d < qk.rows(); ++d) k(d, t) = qk(d, t) / std::sqrt(ms + 1e-6) / std::sqrt(dh);
  }
  return k;
}

/// One query attending to a list of (position, key column, value column) entries with the LSH
/// masks (causal -1e9, then key padding -1e9 where flags[pos] == 0 (flags may be null), then
/// self -1e5, then padding beyond the length -1e9, each replacing the score).
/// Returns the logsumexp; writes the output column into `out`.
struct RefKey {
  Index pos;     // position of the key (>= valid_length: padding)
  Index column;  // column in k / v (ignored for padding keys: zero vectors)
};
inline double reference_query(const Matrix<double>& qk, const Matrix<double>& k,
                              const Matrix<double>& v, Index qpos, const std::vector<RefKey>& keys,
                              bool causal, Index valid_length, double* out,
                              const std::uint8_t* flags = nullptr) {
  std::vector<double> s(keys.size());
  for (std::size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    const bool pad = keys[j].pos >= valid_length;
    if (!pad)
      for (Index d = 0; d < qk.rows(); ++d)
        dot += (qpos < valid_length ? qk(d, qpos) : 0.0) * k(d, keys[j].column);
    if (causal && keys[j].pos > qpos) dot = -1e9;
    if (flags != nullptr && !pad && flags[keys[j].pos] == 0) dot = -1e9;
    if (keys[j].pos == qpos) dot = -1e5;
    if (pad) dot = -1e9;
    s[j] = dot;
  }
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double x : s) sum += std::exp(x - mx);
  const double lse = mx + std::log(sum);
  for (Index d = 0; d < v.rows(); ++d) out[d] = 0;
  for (std::size_t j = 0; j < keys.size(); ++j) {
    if (keys[j].pos >= valid_length) continue;  // zero value vector
    const double p = std::exp(s[j] - lse);
    for (Index d = 0; d < v.rows(); ++d) out[d] += p * v(d, keys[j].column);
  }
  return lse;
}

/// Dense shared-QK attention of one head (qk, v: Dh x T) with the self mask.
inline Matrix<double> reference_dense(const Matrix<double>& qk, const Matrix<double>& v,
                                      bool causal, const std::uint8_t* flags = nullptr) {
  const Index len = qk.cols();
  const Matrix<double> k = reference_keys(qk);
  std::vector<RefKey> keys;
  for (Index t = 0; t < len; ++t) keys.push_back({t, t});
  Matrix<double> o(v.rows(), len);
  for (Index t = 0; t < len; ++t)
    reference_query(qk, k, v, t, keys, causal, len, o.col(t).data(), flags);
  return o;
}

/// The LSH attention of one head given its buckets (R x T, row r = round r), straight from
/// docs/DESIGN.md 1.2: pad to a multiple of C (pad bucket NB), std::stable_sort of R*Tp slots by
/// (round, bucket), chunks of C sorted slots attending to chunks c - before .. c + after
/// (circular as HF: adjacent_chunk), per-slot logsumexp, combination of the rounds. With key
/// flags (may be null), padded keys are masked (the buckets must hold the pad bucket there).
inline Matrix<double> reference_lsh(const Matrix<double>& qk, const Matrix<double>& v,
                                    const std::vector<std::int32_t>& buckets, Index rounds,
                                    Index num_buckets, Index chunk, Index before, Index after,
                                    bool causal, const std::uint8_t* flags = nullptr) {
  const Index len = qk.cols();
  const Index tp = (len + chunk - 1) / chunk * chunk;
  const Matrix<double> k = reference_keys(qk);
  std::vector<Index> slots(static_cast<std::size_t>(rounds * tp));
  std::iota(slots.begin(), slots.end(), Index{0});
  auto bucket_of = [&](Index slot) -> Index {
    const Index r = slot / tp, t = slot % tp;
    return r * (num_buckets + 1) +
           (t < len ? buckets[static_cast<std::size_t>(r * len + t)] : num_buckets);
  };
  std::stable_sort(slots.begin(), slots.end(),
                   [&](Index a, Index b) { return bucket_of(a) < bucket_of(b); });
  const Index n = rounds * tp, chunks = n / chunk;
  Matrix<double> so(v.rows(), n);
  std::vector<double> slse(static_cast<std::size_t>(n));
  for (Index s = 0; s < n; ++s) {
    const Index c = s / chunk;
    std::vector<RefKey> keys;
    for (Index w = -before; w <= after; ++w) {
      const Index src = adjacent_chunk(c, w, chunks);
      for (Index j = 0; j < chunk; ++j) {
        const Index pos = slots[static_cast<std::size_t>(src * chunk + j)] % tp;
        keys.push_back({pos, std::min(pos, len - 1)});
      }
    }
    slse[static_cast<std::size_t>(s)] =
        reference_query(qk, k, v, slots[static_cast<std::size_t>(s)] % tp, keys, causal, len,
                        so.col(s).data(), flags);
  }
  std::vector<Index> where(static_cast<std::size_t>(n));
  for (Index s = 0; s < n; ++s)
    where[static_cast<std::size_t>(slots[static_cast<std::size_t>(s)])] = s;
  Matrix<double> o = Matrix<double>::Zero(v.rows(), len);
  for (Index t = 0; t < len; ++t) {
    double mx = -1e300;
    for (Index r = 0; r < rounds; ++r)
      mx =
          std::max(mx, slse[static_cast<std::size_t>(where[static_cast<std::size_t>(r * tp + t)])]);
    double sum = 0;
    for (Index r = 0; r < rounds; ++r)
      sum += std::exp(slse[static_cast<std::size_t>(where[static_cast<std::size_t>(r * tp + t)])] -
                      mx);
    const double all = mx + std::log(sum);
    for (Index r = 0; r < rounds; ++r) {
      const Index s = where[static_cast<std::size_t>(r * tp + t)];
      o.col(t) += std::exp(slse[static_cast<std::size_t>(s)] - all) * so.col(s);
    }
  }
  return o;
}

/// A small LSH core with random weights and its parameter store.
struct LshSetup {
  LshAttentionConfig cfg;
  Index hidden;
  Parameters<double> params;
  LshAttention<double> core;

  LshSetup(const LshAttentionConfig& c, Index d, std::uint64_t seed = 7)
      : cfg(c), hidden(d), core(c, d, params, "") {
    core.init(params, Rng(seed), 0.5);
  }
  Index out() const { return cfg.num_heads * cfg.head_size; }
  /// qk and v of head h for sequence b of xn (D x B*T).
  Matrix<double> qk_head(const Matrix<double>& xn, Index b, Index len, Index h) const {
    return (params.value(core.query_key_slot()) * xn)
        .block(h * cfg.head_size, b * len, cfg.head_size, len);
  }
  Matrix<double> v_head(const Matrix<double>& xn, Index b, Index len, Index h) const {
    return (params.value(core.value_slot()) * xn)
        .block(h * cfg.head_size, b * len, cfg.head_size, len);
  }
};

/// Buckets of (b, h) from a tape as an R x T row-major vector.
inline std::vector<std::int32_t> tape_head(const BucketTape& tape, Index b, Index h) {
  std::vector<std::int32_t> out;
  for (Index r = 0; r < tape.rounds; ++r)
    for (Index t = 0; t < tape.length; ++t) out.push_back(tape.at(b, h, r, t));
  return out;
}

}  // namespace reformer::test
