#pragma once
// Per-layer caches of incremental decoding (docs/DESIGN.md 5): what one attention core needs to
// compute the output of a new last token without recomputing the past, for a single sequence.
//
// Each cache holds, for the tokens appended so far (positions 0 .. T-1), the keys and values
// the core's full forward would compute from the same normalised inputs, and offers
//   prefill(params, xn, tape)   xn: D x T normalised inputs of the first T tokens (replaces the
//                               cache); tape: the buckets the full forward recorded, or null
//   append(params, xn, a)       xn: D, the next token's normalised input; a: H*Dh, its output
// append() computes exactly what the core's forward computes for the last column of the whole
// sequence of cached inputs (rounding aside): the same masks, chunk windows and round
// combination. The caches:
//   FullAttentionCache   all keys and values:            O(T * H * Dh)
//   LocalAttentionCache  the keys and values of the last window (chunks_before + 1 chunks):
//                        O(C * H * Dh), independent of T; when the core's circular window
//                        holds the last chunk more than once, its keys are weighted as often
//   LshAttentionCache    every token's normalised shared-QK key and value, its bucket in each
//                        round, and per (head, round) the positions of each bucket in order
//                        plus a Fenwick tree of the bucket counts: the new token's sorted place
//                        (it is the last of its bucket) and the positions of every place of its
//                        chunk window are found in O(log NB) per run of places, without sorting.
//                        O(T * H * (2 Dh + 2 R)) scalars and indices.
//
// LSH: the full forward at length T pads to Tp = ceil(T / C) * C, sorts the R * Tp slots by
// (round, bucket, position) with the padded positions last in their round, and lets chunk c of
// C sorted places attend to chunks c - before .. c + after, circularly over all R * Tp places,
// with the causal (-1e9), self (-1e5) and padding (-1e9) masks. For the last token every real
// key is in its past, so only the self mask and padding apply; a padded place scores -1e9 and
// contributes exactly 0, so it is skipped. With T <= C the core attends densely (one round, no
// hashing), and so does the cache. The bucket layout is fixed by the caller (`layout`), and the
// rotations are those of RNG step 0 and the layer's index, as in inference.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/lsh_bucketing.hpp"
#include "reformer/ops/softmax.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace reformer {

namespace detail {

/// Softmax attention of one query over the keys `k` (Dh x n, columns already scaled) with
/// scores replaced where masked[j]: o = v p (Dv), returns lse. Same formula as the chunk kernel:
/// mx = max s, p = exp(s - mx) / sum, lse = mx + log(sum).
template <class S>
S attend_one(const Vector<S>& scores, ConstMatrixRef<S> v, VectorRef<S> o, Vector<S>& p) {
  const S mx = scores.maxCoeff();
  assign_exp(p.array(), scores.array() - mx);  // as the chunk kernel
  const S sum = p.sum();
  p /= sum;
  o.noalias() = v * p;
  return mx + std::log(sum);
}

/// Grows `m` (rows x cols) to hold at least `cols` columns, doubling up to `limit` columns
/// (the longest sequence), keeping its contents.
template <class S>
void grow_columns(Matrix<S>& m, Index rows, Index cols, Index limit) {
  if (m.cols() >= cols && m.rows() == rows) return;
  const Index doubled = std::min(limit, std::max<Index>(16, 2 * m.cols()));
  m.conservativeResize(rows, std::max(cols, doubled));
}

}  // namespace detail

/// Cache of a FullAttention core: every token's scaled key and value.
template <class S>
class FullAttentionCache {
 public:
  /// `max_length`: the longest sequence (bounds the growth of the buffers).
  FullAttentionCache(const FullAttention<S>& core, Index max_length)
      : core_(&core), max_length_(max_length) {}

  Index length() const { return n_; }

  void prefill(const Parameters<S>& params, ConstMatrixRef<S> xn) {
    n_ = 0;
    const Index t = xn.cols();
    reserve(std::min(max_length_, 2 * t));  // room to generate without copying soon
    project(params, xn, k_.leftCols(t), v_.leftCols(t));
    n_ = t;
  }

  void append(const Parameters<S>& params, ConstMatrixRef<S> xn, VectorRef<S> a) {
    reserve(n_ + 1);
    project(params, xn, k_.col(n_), v_.col(n_));
    const Index dh = head_size();
    // q = W_q xn (all heads)
    q_.noalias() = params.value(core_->query_slot()) * xn;
    ++n_;
    for (Index h = 0; h < num_heads(); ++h) {
      const auto keys = k_.block(h * dh, 0, dh, n_);  // Dh x T
      scores_.noalias() = keys.transpose() * q_.segment(h * dh, dh);
      detail::attend_one<S>(scores_, v_.block(h * dh, 0, dh, n_), a.segment(h * dh, dh), p_);
    }
  }

  /// Bytes held by the cached keys and values of the current tokens.
  std::size_t bytes() const { return static_cast<std::size_t>(2 * k_.rows() * n_) * sizeof(S); }

 private:
  Index head_size() const { return core_->config().head_size; }
  Index num_heads() const { return core_->config().num_heads; }
  void reserve(Index cols) {
    const Index rows = num_heads() * head_size();
    detail::grow_columns(k_, rows, cols, max_length_);
    detail::grow_columns(v_, rows, cols, max_length_);
  }
  // k = W_k xn / sqrt(Dh), v = W_v xn (as the core's projections)
  template <class K, class V>
  void project(const Parameters<S>& params, ConstMatrixRef<S> xn, K&& k, V&& v) const {
    k.noalias() = params.value(core_->key_slot()) * xn;
    k *= S(1) / std::sqrt(S(head_size()));
    v.noalias() = params.value(core_->value_slot()) * xn;
  }

  const FullAttention<S>* core_;
  Index max_length_;
  Matrix<S> k_, v_;  // H*Dh x capacity
  Index n_ = 0;
  Vector<S> q_, scores_, p_;
};

/// Cache of a LocalAttention core: the scaled keys and values of the positions the next token's
/// window can reach, [(c - chunks_before) * C, T) for its chunk c.
template <class S>
class LocalAttentionCache {
 public:
  explicit LocalAttentionCache(const LocalAttention<S>& core) : core_(&core) {
    const auto& c = core.config();
    // window (before + 1 chunks) plus one chunk of slack before the columns shift
    capacity_ = (c.chunks_before + 2) * c.chunk_length;
  }

  Index length() const { return n_; }

  void prefill(const Parameters<S>& params, ConstMatrixRef<S> xn) {
    const Index t = xn.cols();
    const Index keep0 = window_begin(t);  // the first position the next token's window reaches
    const Index rows = num_heads() * head_size();
    k_.resize(rows, capacity_);
    v_.resize(rows, capacity_);
    project(params, xn.rightCols(t - keep0), k_.leftCols(t - keep0), v_.leftCols(t - keep0));
    base_ = keep0;
    n_ = t;
  }

  void append(const Parameters<S>& params, ConstMatrixRef<S> xn, VectorRef<S> a) {
    const Index p = n_;  // position of the new token
    const Index k0 = window_begin(p);
    if (k_.cols() == 0) {
      k_.resize(num_heads() * head_size(), capacity_);
      v_.resize(num_heads() * head_size(), capacity_);
    }
    if (p - base_ >= capacity_) {  // drop the columns before the window
      const Index drop = k0 - base_, keep = p - k0;
      k_.leftCols(keep) = k_.middleCols(drop, keep).eval();
      v_.leftCols(keep) = v_.middleCols(drop, keep).eval();
      base_ = k0;
    }
    project(params, xn, k_.col(p - base_), v_.col(p - base_));
    n_ = p + 1;
    const Index dh = head_size(), first = k0 - base_, nk = p + 1 - k0;
    // The core's circular window (layers/local_attention.hpp): an offset of at least the number
    // of chunks in magnitude gives the query's own chunk again, so with chunks_before >= n
    // (n = p / C + 1 chunks, more than one) the keys [c C, p] of its own chunk appear
    // `copies` more times (before the window [k0, p], as in the core's window order).
    const Index cl = core_->config().chunk_length, before = core_->config().chunks_before;
    const Index chunks = p / cl + 1;
    const Index copies = p + 1 > cl && before >= chunks ? before - chunks + 1 : 0;
    const Index own = p + 1 - (p / cl) * cl;  // keys of the own chunk, the tail of the window
    q_.noalias() = params.value(core_->query_slot()) * xn;
    for (Index h = 0; h < num_heads(); ++h) {
      // keys [(c - before) C, p]: none lies after the query, so no mask applies
      scores_.noalias() = k_.block(h * dh, first, dh, nk).transpose() * q_.segment(h * dh, dh);
      if (copies == 0) {
        detail::attend_one<S>(scores_, v_.block(h * dh, first, dh, nk), a.segment(h * dh, dh), p_);
        continue;
      }
      // softmax over [own x copies, window]; each copy's weight is added to its key's.
      const S mx = scores_.maxCoeff();
      detail::assign_exp(p_.array(), scores_.array() - mx);
      const S sum = p_.sum() + S(copies) * p_.tail(own).sum();
      p_.tail(own) *= S(1 + copies);
      p_ /= sum;
      a.segment(h * dh, dh).noalias() = v_.block(h * dh, first, dh, nk) * p_;
    }
  }

  std::size_t bytes() const {
    return static_cast<std::size_t>(2 * k_.rows() * (n_ - base_)) * sizeof(S);
  }

 private:
  Index head_size() const { return core_->config().head_size; }
  Index num_heads() const { return core_->config().num_heads; }
  /// First key position of the window of the query at position p.
  Index window_begin(Index p) const {
    const Index c = core_->config().chunk_length;
    return std::max<Index>(0, (p / c - core_->config().chunks_before) * c);
  }
  template <class X, class K, class V>
  void project(const Parameters<S>& params, const X& xn, K&& k, V&& v) const {
    k.noalias() = params.value(core_->key_slot()) * xn;
    k *= S(1) / std::sqrt(S(head_size()));
    v.noalias() = params.value(core_->value_slot()) * xn;
  }

  const LocalAttention<S>* core_;
  Index capacity_ = 0;
  Matrix<S> k_, v_;  // H*Dh x capacity: positions base_ .. n_-1
  Index base_ = 0, n_ = 0;
  Vector<S> q_, scores_, p_;
};

/// Counts of the buckets of one (head, round) with prefix sums and searches in O(log NB).
class BucketCounts {
 public:
  void reset(Index num_buckets) {
    tree_.assign(static_cast<std::size_t>(num_buckets + 1), 0);
    top_ = 1;
    while (top_ * 2 <= num_buckets) top_ *= 2;
  }
  void add(Index bucket) {
    for (Index i = bucket + 1; i < size(); i += i & -i) ++tree_[at(i)];
  }
  /// Tokens in buckets [0, bucket).
  Index prefix(Index bucket) const {
    Index s = 0;
    for (Index i = bucket; i > 0; i -= i & -i) s += tree_[at(i)];
    return s;
  }
  /// The bucket holding sorted offset o (0 <= o < total), and o's rank inside it.
  void find(Index o, Index& bucket, Index& rank) const {
    Index b = 0, rest = o;
    for (Index step = top_; step > 0; step /= 2) {
      if (b + step < size() && tree_[at(b + step)] <= rest) {
        b += step;
        rest -= tree_[at(b)];
      }
    }
    bucket = b;  // buckets [0, b) hold <= o tokens, so o lies in bucket b
    rank = rest;
  }

 private:
  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }
  Index size() const { return static_cast<Index>(tree_.size()); }
  std::vector<Index> tree_;
  Index top_ = 1;
};

/// Cache of an LshAttention core (see the file comment).
template <class S>
class LshAttentionCache {
 public:
  /// `layout`: the bucket layout every length uses; `ctx`: the layer's inference context (its
  /// seed, step and layer index key the rotations); `max_length`: the longest sequence;
  /// `pad_multiple`, `pad_above`: a sequence longer than pad_above is padded to a multiple of
  /// pad_multiple, as the model pads its input (ReformerConfig::padded_length: the chunk
  /// lengths' lcm and the shortest chunk length in use; 0 = the chunk length).
  LshAttentionCache(const LshAttention<S>& core, LshBucketLayout layout, const Context& ctx,
                    Index max_length, Index pad_multiple = 0, Index pad_above = 0)
      : core_(&core),
        layout_(std::move(layout)),
        max_length_(max_length),
        pad_multiple_(pad_multiple > 0 ? pad_multiple : core.config().chunk_length),
        pad_above_(pad_above > 0 ? pad_above : core.config().chunk_length) {
    const auto& c = core.config();
    for (Index h = 0; h < c.num_heads; ++h)
      for (Index r = 0; r < c.num_hashes; ++r)
        rot_.push_back(lsh_rotations<S>(lsh_rotation_key(ctx, h, r), c.head_size, layout_));
    reset();
  }

  const LshBucketLayout& layout() const { return layout_; }
  Index length() const { return n_; }

  /// Bucket of position t in (head h, round r).
  std::int32_t bucket(Index h, Index r, Index t) const { return head(h).bucket[at(r)][at(t)]; }

  /// Fills the cache from the normalised inputs of the first T tokens; `tape` ([1, H, R, T])
  /// gives their buckets when the full forward hashed them (T > C), else they are hashed here.
  void prefill(const Parameters<S>& params, ConstMatrixRef<S> xn, const BucketTape* tape) {
    reset();
    const Index t = xn.cols(), dh = head_size(), rounds = num_rounds();
    Matrix<S> qk = params.value(core_->query_key_slot()) * xn;  // H*Dh x T
    Matrix<S> v = params.value(core_->value_slot()) * xn;
    const bool taped = tape != nullptr && !tape->empty();
    if (taped) {
      REFORMER_REQUIRE(tape->batch == 1 && tape->heads == num_heads() && tape->rounds == rounds &&
                           tape->length == t,
                       InvalidArgument, "LshAttentionCache::prefill", "the bucket tape has shape [",
                       tape->batch, ", ", tape->heads, ", ", tape->rounds, ", ", tape->length,
                       "], expected [1, ", num_heads(), ", ", rounds, ", ", t, "]");
    }
    std::vector<std::int32_t> hashed(static_cast<std::size_t>(t));
    for (Index h = 0; h < num_heads(); ++h) {
      HeadCache& hc = head(h);
      reserve(hc, std::min(max_length_, 2 * t));  // room to generate without copying soon
      const auto x = qk.middleRows(h * dh, dh);
      for (Index i = 0; i < t; ++i)
        hc.k.col(i) = x.col(i) * detail::lsh_key_scale<S>(x.col(i));  // as gather_places
      hc.v.leftCols(t) = v.middleRows(h * dh, dh);
      for (Index r = 0; r < rounds; ++r) {
        if (taped) {
          for (Index i = 0; i < t; ++i) hashed[at(i)] = tape->at(0, h, r, i);
        } else {
          lsh_hash<S>(x, rot_[at(h * rounds + r)], layout_, hashed.data());
        }
        for (Index i = 0; i < t; ++i) insert(hc, r, i, hashed[at(i)]);
      }
    }
    n_ = t;
  }

  void append(const Parameters<S>& params, ConstMatrixRef<S> xn, VectorRef<S> a) {
    const Index p = n_, dh = head_size(), rounds = num_rounds();
    qk_.noalias() = params.value(core_->query_key_slot()) * xn;
    vv_.noalias() = params.value(core_->value_slot()) * xn;
    std::int32_t b = 0;
    for (Index h = 0; h < num_heads(); ++h) {
      HeadCache& hc = head(h);
      reserve(hc, p + 1);
      const auto x = qk_.segment(h * dh, dh);
      hc.k.col(p) = x * detail::lsh_key_scale<S>(x);
      hc.v.col(p) = vv_.segment(h * dh, dh);
      for (Index r = 0; r < rounds; ++r) {
        lsh_hash<S>(x, rot_[at(h * rounds + r)], layout_, &b);
        insert(hc, r, p, b);
      }
    }
    n_ = p + 1;
    for (Index h = 0; h < num_heads(); ++h)
      attend(head(h), qk_.segment(h * dh, dh), a.segment(h * dh, dh));
  }

  /// Bytes held for the current tokens: keys and values, buckets and position lists.
  std::size_t bytes() const {
    const auto per_token = static_cast<std::size_t>(num_heads()) *
                           (2 * static_cast<std::size_t>(head_size()) * sizeof(S) +
                            static_cast<std::size_t>(num_rounds()) * 2 * sizeof(std::int32_t));
    return per_token * static_cast<std::size_t>(n_);
  }

 private:
  struct HeadCache {
    Matrix<S> k, v;                                          // Dh x capacity, by position
    std::vector<std::vector<std::int32_t>> bucket;           // [round][position]
    std::vector<std::vector<std::vector<std::int32_t>>> at;  // [round][bucket] -> positions
    std::vector<BucketCounts> counts;                        // [round]
  };

  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }
  Index head_size() const { return core_->config().head_size; }
  Index num_heads() const { return core_->config().num_heads; }
  Index num_rounds() const { return core_->config().num_hashes; }
  Index chunk() const { return core_->config().chunk_length; }
  HeadCache& head(Index h) { return heads_[at(h)]; }
  const HeadCache& head(Index h) const { return heads_[at(h)]; }

  void reset() {
    const Index nb = layout_.num_buckets();
    heads_.assign(at(num_heads()), HeadCache{});
    for (HeadCache& hc : heads_) {
      hc.bucket.assign(at(num_rounds()), {});
      hc.at.assign(at(num_rounds()), std::vector<std::vector<std::int32_t>>(at(nb)));
      hc.counts.assign(at(num_rounds()), BucketCounts{});
      for (BucketCounts& c : hc.counts) c.reset(nb);
    }
    n_ = 0;
  }
  void reserve(HeadCache& hc, Index cols) const {
    detail::grow_columns(hc.k, head_size(), cols, max_length_);
    detail::grow_columns(hc.v, head_size(), cols, max_length_);
  }
  static void insert(HeadCache& hc, Index r, Index t, std::int32_t b) {
    hc.bucket[at(r)].push_back(b);
    hc.at[at(r)][static_cast<std::size_t>(b)].push_back(static_cast<std::int32_t>(t));
    hc.counts[at(r)].add(b);
  }

  /// Appends to `keys` the positions of the sorted offsets [o0, o1) of round r at length T
  /// (offsets >= T are padding and left out).
  void positions(const HeadCache& hc, Index r, Index o0, Index o1, Index len,
                 std::vector<Index>& keys) const {
    o1 = std::min(o1, len);
    Index o = o0;
    while (o < o1) {
      Index b = 0, rank = 0;
      hc.counts[at(r)].find(o, b, rank);
      const auto& list = hc.at[at(r)][at(b)];
      for (; rank < static_cast<Index>(list.size()) && o < o1; ++rank, ++o)
        keys.push_back(list[at(rank)]);
    }
  }

  /// Output of the last token (position T-1) of one head: what LshAttention::forward computes
  /// for the last column of the whole sequence.
  void attend(const HeadCache& hc, ConstVectorRef<S> q, VectorRef<S> out) {
    const Index len = n_, last = len - 1, cl = chunk();
    const auto self_score = static_cast<S>(kSelfMaskValue);
    // The length the model runs at: padded to a multiple of every chunk length in use.
    const Index m = pad_multiple_;
    const Index tp = len <= pad_above_ || len % m == 0 ? len : (len / m + 1) * m;
    if (tp <= cl) {  // dense: every position, one round
      scores_.noalias() = hc.k.leftCols(len).transpose() * q;
      scores_(last) = self_score;
      detail::attend_one<S>(scores_, hc.v.leftCols(len), out, p_);
      return;
    }
    const Index rounds = num_rounds();
    const Index per_round = tp / cl, chunks = rounds * per_round;
    const auto& cfg = core_->config();
    o_.resize(head_size(), rounds);
    S lse[kLshMaxHashes];
    for (Index r = 0; r < rounds; ++r) {
      // The last token is the last real slot of its bucket in round r.
      const std::int32_t b = hc.bucket[at(r)][at(last)];
      const Index place = r * tp + hc.counts[at(r)].prefix(b) +
                          static_cast<Index>(hc.at[at(r)][static_cast<std::size_t>(b)].size()) - 1;
      const Index c = place / cl;
      keys_.clear();
      for (Index w = c - cfg.chunks_before; w <= c + cfg.chunks_after; ++w) {
        const Index cc = adjacent_chunk(c, w - c, chunks), rr = cc / per_round;
        const Index o0 = (cc % per_round) * cl;
        positions(hc, rr, o0, o0 + cl, len, keys_);
      }
      const Index nk = static_cast<Index>(keys_.size());
      kbuf_.resize(head_size(), nk);
      vbuf_.resize(head_size(), nk);
      for (Index j = 0; j < nk; ++j) {
        kbuf_.col(j) = hc.k.col(keys_[at(j)]);
        vbuf_.col(j) = hc.v.col(keys_[at(j)]);
      }
      scores_.noalias() = kbuf_.transpose() * q;
      for (Index j = 0; j < nk; ++j)
        if (keys_[at(j)] == last) scores_(j) = self_score;
      lse[r] = detail::attend_one<S>(scores_, vbuf_, o_.col(r), p_);
    }
    // w_r = exp(lse_r - mx) / sum_r' exp(lse_r' - mx),  out = sum_r w_r o_r  (as the core)
    S mx = -std::numeric_limits<S>::infinity();
    for (Index r = 0; r < rounds; ++r) mx = std::max(mx, lse[r]);
    S w[kLshMaxHashes], sum = 0;
    for (Index r = 0; r < rounds; ++r) {
      w[r] = std::exp(lse[r] - mx);
      sum += w[r];
    }
    for (Index r = 0; r < rounds; ++r) w[r] /= sum;
    out = w[0] * o_.col(0);
    for (Index r = 1; r < rounds; ++r) out += w[r] * o_.col(r);
  }

  const LshAttention<S>* core_;
  LshBucketLayout layout_;
  Index max_length_;
  Index pad_multiple_, pad_above_;  // how the model pads (see the constructor)
  std::vector<Matrix<S>> rot_;      // entry h * R + r
  std::vector<HeadCache> heads_;
  Index n_ = 0;
  Vector<S> qk_, vv_, scores_, p_;
  Matrix<S> o_, kbuf_, vbuf_;
  std::vector<Index> keys_;
};

}  // namespace reformer
