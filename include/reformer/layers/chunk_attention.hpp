#pragma once
// The per-chunk attention kernel shared by local attention (docs/DESIGN.md 1.3) and LSH attention
// (docs/DESIGN.md 1.2): a block of Cq query columns attends to a window of Ck key/value columns
// that the caller has already prepared (keys scaled or length-normalised, the window gathered, e.g.
// [previous chunk, own chunk]).
//
// Forward, for query i (column of q) and key j (column of k / v):
//   s_ij   = q_i . k_j
//   masks REPLACE s_ij, applied in this order (later masks win), Hugging Face's order:
//            causal       kpos(j) >  qpos(i)                -> -1e9   (when opts.causal)
//            key padding  opts.key_flags[kpos(j)] == 0      -> -1e9   (when key_flags is set)
//            self         kpos(j) == qpos(i)                -> -1e5   (when opts.self_mask)
//            length       kpos(j) >= opts.valid_length      -> -1e9
//   so a query whose window holds no allowed key but itself attends to itself (LSH). The
//   last one is LSH's own padding of T to a multiple of C (keys that do not exist).
//   A query whose every key is masked gets equal weights over its window (all scores equal);
//   the gradient never flows through a masked score (it is a constant).
//   lse_i  = log sum_j exp(s_ij)                     (of the undropped scores)
//   p_ij   = exp(s_ij - lse_i)
//   pd_ij  = p_ij * m_ij                              (dropout: m_ij = keep_ij / (1 - rate))
//   o_i    = sum_j pd_ij v_j
// keep_ij is a pure function of (opts.dropout_rng, qpos(i) * opts.draw_stride + kpos(j)), so the
// backward pass reproduces the forward's mask and nothing random is stored.
//
// Internally the scores are kept transposed, st = k^T q (Ck x Cq), so that the softmax of one
// query runs down a contiguous column. The products go through ops/small_product.hpp (register
// tiles on the operands where they lie, no packing); the two whose left operand is a transpose,
// k^T q and v^T do, first transpose k or v into the workspace. The caller provides a
// ChunkAttentionWorkspace (one per thread / work item) sized for the largest chunk, so no
// allocation happens per chunk.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/detail/packets.hpp"
#include "reformer/ops/small_product.hpp"
#include "reformer/ops/softmax.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace reformer {

/// Mask values (docs/DESIGN.md 1.2 / 1.3); they replace the score.
inline constexpr double kCausalMaskValue = -1e9;
inline constexpr double kSelfMaskValue = -1e5;
inline constexpr double kPaddingMaskValue = -1e9;

/// What the kernel masks and whether it drops attention probabilities.
struct ChunkAttentionOptions {
  bool causal = true;      ///< keys after the query's position get kCausalMaskValue
  bool self_mask = false;  ///< a key at the query's own position gets kSelfMaskValue (LSH)
  /// Keys at positions >= valid_length are padding (kPaddingMaskValue). Default: no padding.
  Index valid_length = std::numeric_limits<Index>::max();
  /// Key padding of the sequence (core/attention_mask.hpp), indexed by key position (entries
  /// below valid_length are read): 0 = padded key (kPaddingMaskValue). Null = no key padding,
  /// and then nothing is looked up per key.
  const std::uint8_t* key_flags = nullptr;
  /// Attention-probability dropout (inverted). Active when dropout_rate > 0; must be < 1.
  double dropout_rate = 0.0;
  Rng dropout_rng{};      ///< key of the dropout mask (already derived per batch/head/round)
  Index draw_stride = 0;  ///< draw index = qpos * draw_stride + kpos; must exceed every kpos
};

/// Scratch for the kernel: two Ck x Cq buffers of the largest chunk, and a Ck x D buffer for a
/// transposed key or value window (D the larger head size). Reused across chunks.
/// The views are always contiguous matrices, whatever size the workspace grew to before:
/// Eigen's vectorised column reductions (the softmax) start their packets at the first aligned
/// element, so a leading dimension that depended on earlier calls would change the rounding with
/// the history of the thread that runs a chunk.
template <class S>
class ChunkAttentionWorkspace {
 public:
  ChunkAttentionWorkspace() = default;
  ChunkAttentionWorkspace(Index max_queries, Index max_keys, Index max_rows = 0) {
    reserve(max_queries, max_keys, max_rows);
  }

  /// Grows the buffers to hold at least max_queries x max_keys scores and max_keys x max_rows
  /// transposed keys or values (never shrinks). Grown buffers are written once (zeros), so their
  /// pages are in when a later call first uses them: a thread that ran only forward chunks so
  /// far must not fault in grads_ in a steady step.
  void reserve(Index max_queries, Index max_keys, Index max_rows = 0) {
    if (max_keys > max_keys_ || max_queries > max_queries_ || max_rows > max_rows_) {
      max_keys_ = std::max(max_keys, max_keys_);
      max_queries_ = std::max(max_queries, max_queries_);
      max_rows_ = std::max(max_rows, max_rows_);
      probs_.setZero(max_keys_ * max_queries_);
      grads_.setZero(max_keys_ * max_queries_);
      transposed_.setZero(max_keys_ * max_rows_);
    }
  }
  Index max_queries() const { return max_queries_; }
  Index max_keys() const { return max_keys_; }
  Index max_rows() const { return max_rows_; }

  /// Ck x Cq views (the kernels use them; exposed for tests and diagnostics).
  Eigen::Map<Matrix<S>> probs(Index keys, Index queries) { return view(probs_, keys, queries); }
  Eigen::Map<Matrix<S>> grads(Index keys, Index queries) { return view(grads_, keys, queries); }
  /// A Ck x D view for k^T or v^T (D <= max_rows()).
  Eigen::Map<Matrix<S>> transposed(Index keys, Index rows) {
    REFORMER_REQUIRE(keys <= max_keys_ && rows <= max_rows_, InvalidArgument,
                     "ChunkAttentionWorkspace", "a ", keys, " x ", rows,
                     " transposed view exceeds the reserved ", max_keys_, " x ", max_rows_);
    return Eigen::Map<Matrix<S>>(transposed_.data(), keys, rows);
  }

 private:
  Eigen::Map<Matrix<S>> view(Vector<S>& buffer, Index keys, Index queries) {
    REFORMER_REQUIRE(keys <= max_keys_ && queries <= max_queries_, InvalidArgument,
                     "ChunkAttentionWorkspace", "a ", keys, " x ", queries,
                     " view exceeds the reserved ", max_keys_, " x ", max_queries_);
    return Eigen::Map<Matrix<S>>(buffer.data(), keys, queries);
  }

  Index max_keys_ = 0, max_queries_ = 0, max_rows_ = 0;
  Vector<S> probs_;       // scores, then probabilities (dropped in forward)
  Vector<S> grads_;       // dpd -> dp -> ds (backward only)
  Vector<S> transposed_;  // k^T, then v^T (backward)
};

namespace detail {
/// The kind of per-thread kernel scratch behind thread_chunk_workspace (core/thread_buffers.hpp):
/// sizes {queries, keys, rows}.
template <class S>
struct ThreadChunkWorkspace {
  using Buffer = ChunkAttentionWorkspace<S>;
  static constexpr std::size_t kSizes = 3;
  static void grow(Buffer& ws, const std::array<Index, kSizes>& n) { ws.reserve(n[0], n[1], n[2]); }
};
}  // namespace detail

/// The calling thread's kernel scratch, grown to at least max_queries x max_keys scores and
/// max_keys x max_rows transposed keys or values (max_rows: the larger of the key and value
/// head sizes; the kernel grows it itself when short, on the first call). It lives as
/// long as the thread, so the work items of parallel loops do not allocate it again (glibc would
/// trim its heap after each item and fault the pages in again for the next), and
/// grow_thread_buffers() grows every thread's to the largest any thread asked for. One per
/// scalar type and thread: a caller must not hold two at once.
template <class S>
ChunkAttentionWorkspace<S>& thread_chunk_workspace(Index max_queries, Index max_keys,
                                                   Index max_rows) {
  using Buffers = ThreadLocalBuffer<detail::ThreadChunkWorkspace<S>>;
  ChunkAttentionWorkspace<S>& ws = Buffers::mine();
  if (max_queries > ws.max_queries() || max_keys > ws.max_keys() || max_rows > ws.max_rows())
    return Buffers::reserve({max_queries, max_keys, max_rows});
  return ws;
}

/// The chunk at `offset` from chunk c in a window over `chunks` chunks, as Hugging Face's
/// look-back / look-ahead (`_look_adjacent`): (c + offset) mod chunks when |offset| < chunks;
/// an offset of at least the number of chunks in magnitude shifts nothing, i.e. gives chunk c
/// itself (HF concatenates the slices [offset:] and [:offset], one of which is then empty).
/// A window can therefore hold the same chunk more than once.
inline Index adjacent_chunk(Index c, Index offset, Index chunks) {
  if (offset >= chunks || -offset >= chunks) return c;
  return ((c + offset) % chunks + chunks) % chunks;
}

namespace detail {

/// Whether s_ij is masked; if so `value` receives the mask value that replaces it.
template <class P>
inline bool chunk_mask(P qpos, P kpos, const ChunkAttentionOptions& opts, double& value) {
  bool masked = false;
  if (opts.causal && kpos > qpos) {
    value = kCausalMaskValue;
    masked = true;
  }
  const bool exists = static_cast<Index>(kpos) < opts.valid_length;
  if (opts.key_flags != nullptr && exists && opts.key_flags[kpos] == 0) {
    value = kPaddingMaskValue;
    masked = true;
  }
  if (opts.self_mask && kpos == qpos) {
    value = kSelfMaskValue;
    masked = true;
  }
  if (!exists) {
    value = kPaddingMaskValue;
    masked = true;
  }
  return masked;
}

/// Dropout factor m_ij: 0 when dropped, 1 / (1 - rate) when kept.
template <class S, class P>
inline S chunk_dropout_factor(P qpos, P kpos, const ChunkAttentionOptions& opts) {
  const auto index =
      static_cast<std::uint64_t>(qpos) * static_cast<std::uint64_t>(opts.draw_stride) +
      static_cast<std::uint64_t>(kpos);
  return opts.dropout_rng.uniform(index) < opts.dropout_rate
             ? S(0)
             : static_cast<S>(1.0 / (1.0 - opts.dropout_rate));
}

template <class S, class P>
void chunk_check(const char* where, ConstMatrixRef<S> q, ConstMatrixRef<S> k, ConstMatrixRef<S> v,
                 const char* out_name, Index o_rows, Index o_cols, const P* qpos, const P* kpos,
                 const ChunkAttentionOptions& opts) {
  REFORMER_REQUIRE(q.cols() >= 1 && k.cols() >= 1, InvalidArgument, where, "q.cols() = ", q.cols(),
                   " and k.cols() = ", k.cols(), " must be >= 1");
  check_shape(where, "k", k.rows(), k.cols(), q.rows(), -1);
  check_shape(where, "v", v.rows(), v.cols(), -1, k.cols());
  check_shape(where, out_name, o_rows, o_cols, v.rows(), q.cols());
  REFORMER_REQUIRE(qpos != nullptr && kpos != nullptr, InvalidArgument, where,
                   "query and key positions must not be null");
  REFORMER_REQUIRE(opts.dropout_rate >= 0.0 && opts.dropout_rate < 1.0, InvalidArgument, where,
                   "opts.dropout_rate = ", opts.dropout_rate, " must be in [0, 1)");
  REFORMER_REQUIRE(opts.dropout_rate == 0.0 || opts.draw_stride > 0, InvalidArgument, where,
                   "opts.draw_stride = ", opts.draw_stride, " must be > 0 with dropout");
}

/// The key-only part of the masks of one kernel call, laid out for packet code: each key's
/// position as a scalar, and all-ones lanes where a key is padding (key_flags) or does not exist
/// (position >= valid_length). `active` is false when no score of the call can be masked.
/// `vector` is false when a position is not exact in S (from 2^24 in float): the masks are then
/// applied per score by chunk_mask.
template <class S>
struct ChunkKeyMasks {
  bool active = false;
  bool vector = false;
  const S* pos = nullptr;
  const S* padded = nullptr;
  const S* missing = nullptr;
};

struct ChunkKeyMasksBuffer;  // the tag of its per-thread storage

template <class S, class P>
ChunkKeyMasks<S> chunk_key_masks(const P* qpos, Index cq, const P* kpos, Index ck,
                                 const ChunkAttentionOptions& opts) {
  ChunkKeyMasks<S> km;
  // positions below 2^digits are exact in S (a float holds every integer up to 2^24)
  constexpr Index kExact = Index(1) << std::min(std::numeric_limits<S>::digits, 62);
  auto is_exact = [](P p) { return p >= 0 && static_cast<Index>(p) < kExact; };
  bool exact = true, any_key_mask = false;
  for (Index j = 0; j < ck; ++j) {
    const bool exists = static_cast<Index>(kpos[j]) < opts.valid_length;
    any_key_mask =
        any_key_mask || !exists || (opts.key_flags != nullptr && opts.key_flags[kpos[j]] == 0);
    exact = exact && is_exact(kpos[j]);
  }
  for (Index i = 0; i < cq; ++i) exact = exact && is_exact(qpos[i]);
  km.active = opts.causal || opts.self_mask || any_key_mask;
  km.vector = exact;
  if (!km.active || !exact) return km;
  S* buf = thread_buffer<S, ChunkKeyMasksBuffer>(3 * ck);
  S* pos = buf;
  S* padded = buf + ck;
  S* missing = buf + 2 * ck;
  const S all_ones = Eigen::internal::ptrue(S(0));
  for (Index j = 0; j < ck; ++j) {
    const bool exists = static_cast<Index>(kpos[j]) < opts.valid_length;
    pos[j] = static_cast<S>(kpos[j]);
    padded[j] =
        exists && opts.key_flags != nullptr && opts.key_flags[kpos[j]] == 0 ? all_ones : S(0);
    missing[j] = exists ? S(0) : all_ones;
  }
  km.pos = pos;
  km.padded = padded;
  km.missing = missing;
  return km;
}

/// The lanes of the scores s_ij, keys j .. j + lanes - 1 of query position qp, that chunk_mask
/// replaces: by -1e9 (`far`: causal or key padding, and not the query itself under self_mask;
/// or a key that does not exist) and by -1e5 (`self`, when the key exists).
template <class S>
struct ChunkMaskLanes {
  Packet<S> far, self;
};

/// The key-only lanes j .. j + lanes - 1 of a call's masks (ChunkKeyMasks), loaded once for
/// every query that masks them.
template <class S>
struct ChunkKeyLanes {
  Packet<S> pos, padded, missing;
};

template <class S>
ChunkKeyLanes<S> chunk_key_lanes(const ChunkKeyMasks<S>& km, Index j) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  return {ei::ploadu<P>(km.pos + j), ei::ploadu<P>(km.padded + j), ei::ploadu<P>(km.missing + j)};
}

template <class S>
ChunkMaskLanes<S> chunk_mask_lanes(const ChunkKeyLanes<S>& keys, const Packet<S>& qp,
                                   const ChunkAttentionOptions& opts) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  P far = keys.padded;
  if (opts.causal) far = ei::por(far, ei::pcmp_lt(qp, keys.pos));
  P self = ei::pzero(qp);
  if (opts.self_mask) {
    self = ei::pandnot(ei::pcmp_eq(keys.pos, qp), keys.missing);
    far = ei::pandnot(far, self);
  }
  return {ei::por(far, keys.missing), self};
}

template <class S>
ChunkMaskLanes<S> chunk_mask_lanes(const ChunkKeyMasks<S>& km, Index j, const Packet<S>& qp,
                                   const ChunkAttentionOptions& opts) {
  return chunk_mask_lanes<S>(chunk_key_lanes<S>(km, j), qp, opts);
}

/// Replaces the masked scores of one query (position qp) over the keys 0 .. ck-1 (col: ck
/// scores) by the mask values, as chunk_mask; returns the largest (masked) score.
template <class S, class P>
S mask_scores(S* col, Index ck, P qp, const P* kpos, const ChunkKeyMasks<S>& km,
              const ChunkAttentionOptions& opts) {
  namespace ei = Eigen::internal;
  using Pk = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  Index j = 0;
  S mx = -std::numeric_limits<S>::infinity();
  if (!km.active || km.vector) {
    const Pk q = ei::pset1<Pk>(static_cast<S>(qp));
    const Pk far_value = ei::pset1<Pk>(static_cast<S>(kCausalMaskValue));
    const Pk self_value = ei::pset1<Pk>(static_cast<S>(kSelfMaskValue));
    Pk top = ei::pset1<Pk>(mx);
    for (; j + k <= ck; j += k) {
      Pk x = ei::ploadu<Pk>(col + j);
      if (km.active) {
        const ChunkMaskLanes<S> m = chunk_mask_lanes<S>(km, j, q, opts);
        x = ei::pselect(m.far, far_value, ei::pselect(m.self, self_value, x));
        ei::pstoreu(col + j, x);
      }
      top = ei::pmax(top, x);
    }
    mx = ei::predux_max(top);
  }
  double value = 0.0;
  for (; j < ck; ++j) {
    if (km.active && chunk_mask(qp, kpos[j], opts, value)) col[j] = static_cast<S>(value);
    mx = std::max(mx, col[j]);
  }
  return mx;
}

/// The softmax of one query (position qp) over its ck masked scores, in place (col):
///   s_j masked (mask_scores),  mx = max_j s_j,  e_j = exp(s_j - mx) (flushed),
///   sum = sum_j e_j,  p_j = e_j * (1 / sum);
/// writes lse = mx + log(sum) when lse is non-null.
template <class S, class P>
void masked_softmax_column(S* col, Index ck, P qp, const P* kpos, const ChunkKeyMasks<S>& km,
                           const ChunkAttentionOptions& opts, S* lse) {
  const S mx = mask_scores<S>(col, ck, qp, kpos, km, opts);
  // exp flushed to exactly 0 below the smallest normal: a masked key's weight is then 0 on
  // every instruction set, so nothing at a padded key reaches a real query, not even a
  // subnormal.
  const S sum = exp_shifted_flushed_sum<S>(col, ck, mx);
  Eigen::Map<Vector<S>>(col, ck) *= S(1) / sum;
  if (lse != nullptr) *lse = mx + std::log(sum);
}

/// masked_softmax_column of the G queries at positions qpos[0 .. G-1] (scores in cols[0 ..
/// G-1]), bitwise the same results: the same packet operations in the same order per query,
/// with the G queries' steps interleaved. One query's maximum and sum are chains of dependent
/// packet operations over only ck / lanes packets; G independent chains keep the vector units
/// busy. Needs packet masks (!km.active || km.vector) and ck a multiple of the packet size.
template <int G, class S, class P>
void masked_softmax_columns(S* const* cols, Index ck, const P* qpos, const ChunkKeyMasks<S>& km,
                            const ChunkAttentionOptions& opts, S* lse) {
  namespace ei = Eigen::internal;
  using Pk = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  REFORMER_ASSERT(ck % k == 0 && (!km.active || km.vector));
  const Pk far_value = ei::pset1<Pk>(static_cast<S>(kCausalMaskValue));
  const Pk self_value = ei::pset1<Pk>(static_cast<S>(kSelfMaskValue));
  Pk top[G], acc[G], scale[G];  // per query: the maximum, then the shift; the sum; 1 / sum
  S mx[G];
  for (int g = 0; g < G; ++g) top[g] = ei::pset1<Pk>(-std::numeric_limits<S>::infinity());
  // masks and maxima (mask_scores)
  for (Index j = 0; j < ck; j += k) {
    if (km.active) {
      const ChunkKeyLanes<S> keys = chunk_key_lanes<S>(km, j);
      for (int g = 0; g < G; ++g) {
        const ChunkMaskLanes<S> m =
            chunk_mask_lanes<S>(keys, ei::pset1<Pk>(static_cast<S>(qpos[g])), opts);
        const Pk x = ei::pselect(m.far, far_value,
                                 ei::pselect(m.self, self_value, ei::ploadu<Pk>(cols[g] + j)));
        ei::pstoreu(cols[g] + j, x);
        top[g] = ei::pmax(top[g], x);
      }
    } else {
      for (int g = 0; g < G; ++g) top[g] = ei::pmax(top[g], ei::ploadu<Pk>(cols[g] + j));
    }
  }
  // exponentials and sums (exp_shifted_flushed_sum)
  const FlushedExp<S> exp_flushed;
  for (int g = 0; g < G; ++g) {
    mx[g] = ei::predux_max(top[g]);
    top[g] = ei::pset1<Pk>(mx[g]);  // the shift
    acc[g] = ei::pzero(top[g]);
  }
  for (Index j = 0; j < ck; j += k) {
    for (int g = 0; g < G; ++g) {
      const Pk e = exp_flushed(ei::psub(ei::ploadu<Pk>(cols[g] + j), top[g]));
      ei::pstoreu(cols[g] + j, e);
      acc[g] = ei::padd(acc[g], e);
    }
  }
  // probabilities and log-sum-exps
  for (int g = 0; g < G; ++g) {
    const S sum = ei::predux(acc[g]);
    scale[g] = ei::pset1<Pk>(S(1) / sum);
    if (lse != nullptr) lse[g] = mx[g] + std::log(sum);
  }
  for (Index j = 0; j < ck; j += k)
    for (int g = 0; g < G; ++g)
      ei::pstoreu(cols[g] + j, ei::pmul(ei::ploadu<Pk>(cols[g] + j), scale[g]));
}

/// The softmax of every query (column of st: Ck x Cq) over its masked scores, in place; writes
/// lse (Cq) when non-null. Groups of tuning::kSoftmaxQueries queries go through
/// masked_softmax_columns when the masks allow packets, the rest one by one: the same results
/// bit for bit either way.
template <class S, class P>
void masked_softmax_chunk(Eigen::Map<Matrix<S>> st, const P* qpos, const P* kpos,
                          const ChunkKeyMasks<S>& km, const ChunkAttentionOptions& opts, S* lse) {
  constexpr int G = tuning::kSoftmaxQueries;
  const Index cq = st.cols(), ck = st.rows();
  Index i = 0;
  if (ck % kPacketSize<S> == 0 && (!km.active || km.vector)) {
    for (; i + G <= cq; i += G) {
      std::array<S*, G> cols;
      for (int g = 0; g < G; ++g) cols[g] = st.col(i + g).data();
      masked_softmax_columns<G, S>(cols.data(), ck, qpos + i, km, opts,
                                   lse != nullptr ? lse + i : nullptr);
    }
  }
  for (; i < cq; ++i)
    masked_softmax_column<S>(st.col(i).data(), ck, qpos[i], kpos, km, opts,
                             lse != nullptr ? lse + i : nullptr);
}

/// probs(:, :) = softmax over keys of the masked scores k^T q; writes lse when non-null.
/// kt: Ck x Dh scratch for k^T.
template <class S, class P>
void chunk_probabilities(ConstMatrixRef<S> q, ConstMatrixRef<S> k, const P* qpos, const P* kpos,
                         const ChunkAttentionOptions& opts, const ChunkKeyMasks<S>& km,
                         Eigen::Map<Matrix<S>> kt, Eigen::Map<Matrix<S>> st, S* lse) {
  // st: Ck x Cq, st(j, i) = k_j . q_i = s_ij
  transpose_small<S>(k, kt);
  small_product<S>(kt, q, st, false);
  masked_softmax_chunk<S>(st, qpos, kpos, km, opts, lse);
}

/// ds(:, i) = p(:, i) .* (dp(:, i) + shift), 0 where the score s_ij is masked (a constant).
/// ds may be dp.  p, dp, ds: ck scores of the query at position qp.
template <class S, class P>
void masked_softmax_grad(const S* p, const S* dp, S* ds, Index ck, S shift, P qp, const P* kpos,
                         const ChunkKeyMasks<S>& km, const ChunkAttentionOptions& opts) {
  namespace ei = Eigen::internal;
  using Pk = Packet<S>;
  constexpr Index k = kPacketSize<S>;
  const Pk sh = ei::pset1<Pk>(shift);
  const Pk q = ei::pset1<Pk>(static_cast<S>(qp));
  const bool lanes = !km.active || km.vector;
  Index j = 0;
  for (; lanes && j + k <= ck; j += k) {
    Pk g = ei::pmul(ei::ploadu<Pk>(p + j), ei::padd(ei::ploadu<Pk>(dp + j), sh));
    if (km.active) {
      const ChunkMaskLanes<S> m = chunk_mask_lanes<S>(km, j, q, opts);
      g = ei::pandnot(g, ei::por(m.far, m.self));
    }
    ei::pstoreu(ds + j, g);
  }
  double value = 0.0;
  for (; j < ck; ++j) {
    const bool masked = km.active && chunk_mask(qp, kpos[j], opts, value);
    ds[j] = masked ? S(0) : p[j] * (dp[j] + shift);
  }
}

}  // namespace detail

/// Forward of one chunk (see the header comment for the formulas).
///   q:    Dh x Cq queries          qpos: Cq query positions
///   k:    Dh x Ck keys (scaled)    kpos: Ck key positions
///   v:    Dv x Ck values
///   o:    Dv x Cq output (overwritten)
///   lse:  Cq log-sum-exps of the undropped scores (written when non-null)
///   probs_out: when non-null, Ck x Cq contiguous scalars (aligned like the workspace's buffers,
///         64 bytes) that receive the undropped probabilities p, for chunk_attention_backward to
///         take instead of computing the scores and softmax again
template <class S, class P>
void chunk_attention_forward(ConstMatrixRef<S> q, ConstMatrixRef<S> k, ConstMatrixRef<S> v,
                             const P* qpos, const P* kpos, const ChunkAttentionOptions& opts,
                             MatrixRef<S> o, S* lse, ChunkAttentionWorkspace<S>& ws,
                             S* probs_out = nullptr) {
  const char* where = "chunk_attention_forward";
  const Index cq = q.cols(), ck = k.cols();
  detail::chunk_check<S>(where, q, k, v, "o", o.rows(), o.cols(), qpos, kpos, opts);
  ws.reserve(cq, ck, q.rows());
  // p: Ck x Cq, in probs_out when given, else in the workspace
  auto pt = probs_out != nullptr ? Eigen::Map<Matrix<S>>(probs_out, ck, cq) : ws.probs(ck, cq);
  const auto km = detail::chunk_key_masks<S>(qpos, cq, kpos, ck, opts);
  detail::chunk_probabilities<S>(q, k, qpos, kpos, opts, km, ws.transposed(ck, q.rows()), pt, lse);
  if (opts.dropout_rate > 0.0) {
    auto pd = ws.probs(ck, cq);  // pd = p * m (in place unless p is in probs_out)
    for (Index i = 0; i < cq; ++i)
      for (Index j = 0; j < ck; ++j)
        pd(j, i) = pt(j, i) * detail::chunk_dropout_factor<S>(qpos[i], kpos[j], opts);
    small_product<S>(v, pd, o, false);  // o: Dv x Cq = v (Dv x Ck) * pd^T (Ck x Cq)
  } else {
    small_product<S>(v, pt, o, false);
  }
}

namespace detail {

/// How the chunk backward gets the per-query term shift_i = dlse_i - delta_i of
/// ds_ij = p_ij (dp_ij + shift_i).
enum class SoftmaxShift {
  kFromLse,  ///< the argument is dlse (null = 0); the kernel computes delta_i = sum_j p_ij dp_ij
  kGiven,    ///< the argument is shift itself (the caller knows it in closed form); no delta
};

/// The backward pass of one chunk; also writes the recomputed output o when `o` is non-null.
/// `term`: dlse or shift, as `mode` says.
template <class S, class P>
void chunk_backward_impl(const char* where, ConstMatrixRef<S> q, ConstMatrixRef<S> k,
                         ConstMatrixRef<S> v, const P* qpos, const P* kpos,
                         const ChunkAttentionOptions& opts, ConstMatrixRef<S> d_o, const S* term,
                         SoftmaxShift mode, MatrixRef<S> dq, MatrixRef<S> dk, MatrixRef<S> dv,
                         ChunkAttentionWorkspace<S>& ws, MatrixRef<S>* o, S* probs) {
  const Index dh = q.rows(), cq = q.cols(), ck = k.cols();
  chunk_check<S>(where, q, k, v, "d_o", d_o.rows(), d_o.cols(), qpos, kpos, opts);
  check_shape(where, "dq", dq.rows(), dq.cols(), dh, cq);
  check_shape(where, "dk", dk.rows(), dk.cols(), dh, ck);
  check_shape(where, "dv", dv.rows(), dv.cols(), v.rows(), ck);
  if (o != nullptr) check_shape(where, "o", o->rows(), o->cols(), v.rows(), cq);
  REFORMER_REQUIRE(mode == SoftmaxShift::kFromLse || term != nullptr, InvalidArgument, where,
                   "the shift must not be null");
  const bool given = mode == SoftmaxShift::kGiven;
  ws.reserve(cq, ck, std::max(dh, v.rows()));
  // p, later pd (Ck x Cq): the forward's when given, else recomputed into the workspace
  auto pt = probs != nullptr ? Eigen::Map<Matrix<S>>(probs, ck, cq) : ws.probs(ck, cq);
  auto gt = ws.grads(ck, cq);  // dpd -> dp -> ds (Ck x Cq)
  const auto km = chunk_key_masks<S>(qpos, cq, kpos, ck, opts);
  if (probs == nullptr) {
    chunk_probabilities<S>(q, k, qpos, kpos, opts, km, ws.transposed(ck, dh), pt,
                           static_cast<S*>(nullptr));
  }
  // dpd^T: Ck x Cq = v^T (Ck x Dv) * do (Dv x Cq)
  auto vt = ws.transposed(ck, v.rows());
  transpose_small<S>(v, vt);
  small_product<S>(vt, d_o, gt, false);
  const bool dropout = opts.dropout_rate > 0.0;
  for (Index i = 0; i < cq; ++i) {
    S delta = 0;
    if (dropout) {
      for (Index j = 0; j < ck; ++j) {
        const S m = chunk_dropout_factor<S>(qpos[i], kpos[j], opts);
        gt(j, i) *= m;  // dp
        if (!given) delta += pt(j, i) * gt(j, i);
      }
    } else if (!given) {
      delta = pt.col(i).dot(gt.col(i));
    }
    const S shift = given ? term[i] : (term != nullptr ? term[i] : S(0)) - delta;
    // ds
    masked_softmax_grad<S>(&pt(0, i), &gt(0, i), &gt(0, i), ck, shift, qpos[i], kpos, km, opts);
    if (dropout) {
      for (Index j = 0; j < ck; ++j)
        pt(j, i) *= chunk_dropout_factor<S>(qpos[i], kpos[j], opts);  // pd
    }
  }
  if (o != nullptr) small_product<S>(v, pt, *o, false);  // o = v pd^T
  // dv += do pd (Dv x Ck): the last read of d_o (dq may alias it)
  small_product_bt<S>(d_o, pt, dv, true);
  // dk += q ds (Dh x Ck): the last read of q (dq may alias it)
  small_product_bt<S>(q, gt, dk, true);
  small_product<S>(k, gt, dq, false);  // dq = k ds^T: Dh x Cq
}

}  // namespace detail

/// Backward of one chunk, recomputing the scores and probabilities (nothing is stored).
/// Forward (above):  s = q^T k (masked),  lse = logsumexp_j s,  p = exp(s - lse),
///                   pd = p * m,  o = v pd^T.
/// Given do (Dv x Cq) and dlse (Cq entries, may be null = zero):
///   dv   += do pd                            (Dv x Ck)
///   dpd   = do^T v,  dp = dpd * m            (gradient w.r.t. the undropped probabilities)
///   delta_i = sum_j p_ij dp_ij
///   ds_ij = p_ij (dp_ij - delta_i + dlse_i)  (softmax and logsumexp backward; 0 where masked,
///                                             the mask value being a constant)
///   dq    = k ds^T                           (Dh x Cq, overwritten)
///   dk   += q ds                             (Dh x Ck)
/// dq may alias d_o (when Dv = Dh) or q: both are read completely before dq is written.
/// probs: null (the probabilities are recomputed), or the probabilities chunk_attention_forward
/// wrote to its probs_out for this chunk with the same arguments; they are taken instead of the
/// recompute (the same values, so the same results bit for bit) and overwritten.
template <class S, class P>
void chunk_attention_backward(ConstMatrixRef<S> q, ConstMatrixRef<S> k, ConstMatrixRef<S> v,
                              const P* qpos, const P* kpos, const ChunkAttentionOptions& opts,
                              ConstMatrixRef<S> d_o, const S* dlse, MatrixRef<S> dq,
                              MatrixRef<S> dk, MatrixRef<S> dv, ChunkAttentionWorkspace<S>& ws,
                              S* probs = nullptr) {
  detail::chunk_backward_impl<S>("chunk_attention_backward", q, k, v, qpos, kpos, opts, d_o, dlse,
                                 detail::SoftmaxShift::kFromLse, dq, dk, dv, ws,
                                 static_cast<MatrixRef<S>*>(nullptr), probs);
}

/// chunk_attention_backward for a caller that knows the softmax term of each query in closed
/// form: shift (Cq entries, not null) is dlse_i - delta_i itself, and
///   ds_ij = p_ij (dp_ij + shift_i)   (0 where masked)
/// with no delta computed here. LSH attention uses it: there dlse_i - delta_i = -w (da . a)
/// (layers/lsh_attention.hpp, attend_backward). Everything else as chunk_attention_backward.
template <class S, class P>
void chunk_attention_backward_shifted(ConstMatrixRef<S> q, ConstMatrixRef<S> k, ConstMatrixRef<S> v,
                                      const P* qpos, const P* kpos,
                                      const ChunkAttentionOptions& opts, ConstMatrixRef<S> d_o,
                                      const S* shift, MatrixRef<S> dq, MatrixRef<S> dk,
                                      MatrixRef<S> dv, ChunkAttentionWorkspace<S>& ws,
                                      S* probs = nullptr) {
  detail::chunk_backward_impl<S>("chunk_attention_backward_shifted", q, k, v, qpos, kpos, opts, d_o,
                                 shift, detail::SoftmaxShift::kGiven, dq, dk, dv, ws,
                                 static_cast<MatrixRef<S>*>(nullptr), probs);
}

/// chunk_attention_backward that also writes the recomputed forward output o (Dv x Cq,
/// overwritten) from the same probabilities, for callers whose upstream gradient does not
/// depend on o (local attention); saves a second score GEMM and softmax.
template <class S, class P>
void chunk_attention_forward_backward(ConstMatrixRef<S> q, ConstMatrixRef<S> k, ConstMatrixRef<S> v,
                                      const P* qpos, const P* kpos,
                                      const ChunkAttentionOptions& opts, ConstMatrixRef<S> d_o,
                                      const S* dlse, MatrixRef<S> o, MatrixRef<S> dq,
                                      MatrixRef<S> dk, MatrixRef<S> dv,
                                      ChunkAttentionWorkspace<S>& ws) {
  detail::chunk_backward_impl<S>("chunk_attention_forward_backward", q, k, v, qpos, kpos, opts, d_o,
                                 dlse, detail::SoftmaxShift::kFromLse, dq, dk, dv, ws, &o,
                                 static_cast<S*>(nullptr));
}

}  // namespace reformer
