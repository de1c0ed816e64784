#pragma once
// LSH self-attention core (DESIGN 1.2): the Reformer's attention whose cost grows linearly with
// the sequence length. Per sequence and head (x: D x T normalised inputs):
//
//   qk = W_qk x,  v = W_v x                      Dh x T; queries and keys share W_qk, no biases
//   if T <= C:  dense shared-QK attention (below) over all T positions, one round, no hashing
//   pad T to Tp (a multiple of C); padded positions get the pad bucket NB and are masked keys
//   b_r(t) = lsh_hash(qk_t, rotation of round r)                      (lsh_bucketing.hpp)
//   sort the R*Tp slots (r, t) by (r, b_r(t), t)  ->  sorted place s, position pos(s)
//   k_t  = qk_t / sqrt(mean(qk_t^2) + 1e-6) / sqrt(Dh)                queries are not scaled
//   chunk c (C consecutive sorted places, over all R*Tp places) attends to chunks
//   c - before .. c + after (circular over the R*Tp places, as HF/trax), with the chunk kernel
//   (chunk_attention.hpp): s_ij = qk_i . k_j, masks replacing s_ij (causal -1e9, self -1e5,
//   padding -1e9), lse_i = logsumexp_j s_ij, p = exp(s - lse) (dropped), o_i = sum_j p_ij v_j
//   unsort, combine the rounds per position:
//     w_r(t) = exp(lse_r(t) - logsumexp_r' lse_r'(t)),   o(t) = sum_r w_r(t) o_r(t)
//   a = [o_head0; o_head1; ...]                                        H*Dh x T
// The output projection W_o belongs to the AttentionSublayer wrapper.
//
// Buckets (DESIGN 3.3): forward hashes (rotations from ctx.rng, see lsh_bucketing.hpp) and
// records the buckets into *ctx.buckets ([B, H, R, T], no round offsets) when it is non-null, or
// replays them when ctx.replay_buckets is set. backward always replays: it never re-hashes.
// Short sequences (T <= C) do not hash; their tape is cleared and never read.
//
// Dropout on the attention probabilities (training only) is keyed by
// ctx.rng(stream::kAttentionProbsDropout).derive(b).derive(h).derive(round of the query), draw
// index query position * Tp + key position, so backward sees the forward's mask.
//
// Work and memory: (sequence, head) pairs are processed in waves whose size depends only on the
// shapes; inside a wave every phase is a parallel_for over fixed items (heads or groups of
// chunks), each writing its own slice, so results are bitwise identical for any thread count.
// Each chunk gathers its queries and its window's keys and values on the fly (O(W*C*Dh) copies
// next to O(W*C^2*Dh) products). Per head the buffers are O(R*Tp*Dh): the per-place outputs,
// and in backward the per-place gradients of queries, keys and values; per work item O(C^2)
// scores. No T x T and no all-chunks (R*T x W*C) score buffer is ever formed.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/detail/sublayer_util.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/lsh_bucketing.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

namespace reformer {

/// Most hash rounds an LshAttention accepts.
inline constexpr Index kLshMaxHashes = 16;

/// Configuration of the LSH attention core (Hugging Face field in brackets).
struct LshAttentionConfig {
  Index num_heads = 2;                  ///< H [num_attention_heads]
  Index head_size = 64;                 ///< Dh [attention_head_size]
  Index chunk_length = 64;              ///< C [lsh_attn_chunk_length]
  Index num_hashes = 1;                 ///< R, 1..16 [num_hashes]
  std::vector<Index> num_buckets = {};  ///< empty = auto, {NB} or {f1, f2} [num_buckets]
  Index chunks_before = 1;              ///< [lsh_num_chunks_before]
  Index chunks_after = 0;               ///< [lsh_num_chunks_after]
  bool causal = true;                   ///< [is_decoder]
  double dropout = 0.0;        ///< attention-prob dropout [lsh_attention_probs_dropout_prob]
  Index max_positions = 4096;  ///< for the auto bucket rule [max_position_embeddings]

  /// Throws ConfigError naming the offending field.
  void validate(const char* where = "LshAttentionConfig") const {
    REFORMER_REQUIRE(num_heads >= 1, ConfigError, where, "num_heads = ", num_heads,
                     " must be >= 1");
    REFORMER_REQUIRE(head_size >= 1, ConfigError, where, "head_size = ", head_size,
                     " must be >= 1");
    REFORMER_REQUIRE(chunk_length >= 1, ConfigError, where, "chunk_length = ", chunk_length,
                     " must be >= 1");
    REFORMER_REQUIRE(num_hashes >= 1 && num_hashes <= kLshMaxHashes, ConfigError, where,
                     "num_hashes = ", num_hashes, " must be in [1, ", kLshMaxHashes, "]");
    REFORMER_REQUIRE(chunks_before >= 0 && chunks_after >= 0, ConfigError, where,
                     "chunks_before = ", chunks_before, " and chunks_after = ", chunks_after,
                     " must be >= 0");
    REFORMER_REQUIRE(dropout >= 0.0 && dropout < 1.0, ConfigError, where, "dropout = ", dropout,
                     " must be in [0, 1)");
    REFORMER_REQUIRE(max_positions >= 1, ConfigError, where, "max_positions = ", max_positions,
                     " must be >= 1");
    validate_lsh_num_buckets(where, num_buckets);
  }
};

namespace detail {

inline constexpr double kLshKeyNormEps = 1e-6;

/// Key normalisation, column by column (qk, k: Dh x n):
///   k = qk * g,  g = 1 / (sqrt(mean(qk^2) + 1e-6) * sqrt(Dh))
template <class S>
void lsh_normalize_keys(ConstMatrixRef<S> qk, MatrixRef<S> k) {
  const S dh = static_cast<S>(qk.rows());
  const S inv_sqrt_dh = S(1) / std::sqrt(dh);
  for (Index t = 0; t < qk.cols(); ++t) {
    const S mean_sq = qk.col(t).squaredNorm() / dh;
    k.col(t) =
        qk.col(t) * (S(1) / std::sqrt(mean_sq + static_cast<S>(kLshKeyNormEps))) * inv_sqrt_dh;
  }
}

/// Backward of the key normalisation for one column: with g as above,
///   dk/dqk = g I - g^3 qk qk^T   =>   dqk += g dk - g^3 (dk . qk) qk
template <class S, class Q, class DK, class DQ>
void lsh_normalize_key_backward(const Q& qk, const DK& dk, DQ&& dqk) {
  const S dh = static_cast<S>(qk.rows());
  const S mean_sq = qk.squaredNorm() / dh;
  const S g = S(1) / (std::sqrt(mean_sq + static_cast<S>(kLshKeyNormEps)) * std::sqrt(dh));
  const S g3_dot = g * g * g * dk.dot(qk);
  dqk += g * dk - g3_dot * qk;
}

inline Index lsh_mod(Index a, Index n) { return ((a % n) + n) % n; }

}  // namespace detail

template <class S>
class LshAttention {
 public:
  using Scalar = S;
  using Config = LshAttentionConfig;

  /// Registers `<prefix>self_attention.query_key.weight` and `<prefix>self_attention.value.weight`
  /// ([H*Dh, hidden] each). Throws ConfigError on a bad config.
  LshAttention(const Config& cfg, Index hidden, Parameters<S>& params,
               const std::string& prefix = "")
      : cfg_(validated(cfg, hidden)),
        hidden_(hidden),
        qk_slot_(params.add(prefix + "self_attention.query_key.weight",
                            {cfg.num_heads * cfg.head_size, hidden})),
        v_slot_(params.add(prefix + "self_attention.value.weight",
                           {cfg.num_heads * cfg.head_size, hidden})) {}

  const Config& config() const { return cfg_; }
  Index hidden_size() const { return hidden_; }
  Index out_features() const { return cfg_.num_heads * cfg_.head_size; }
  SlotId query_key_slot() const { return qk_slot_; }
  SlotId value_slot() const { return v_slot_; }

  /// HF initialisation: both weights ~ normal(0, std).
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    detail::init_normal(params, qk_slot_, rng.derive(0), std);
    detail::init_normal(params, v_slot_, rng.derive(1), std);
  }

  /// Whether a sequence of `length` tokens is hashed (false: the T <= C dense fallback).
  bool hashes(Index length) const { return length > cfg_.chunk_length; }

  /// Length after padding to a multiple of the chunk length.
  Index padded_length(Index length) const {
    return (length + cfg_.chunk_length - 1) / cfg_.chunk_length * cfg_.chunk_length;
  }

  /// The bucket layout used for sequences of `length` tokens (the auto rule sees the padded
  /// length, like HF, which pads before attention).
  LshBucketLayout bucket_layout(Index length) const {
    return lsh_bucket_layout(cfg_.num_buckets, padded_length(length), cfg_.chunk_length,
                             cfg_.max_positions);
  }

  /// Hashes only: writes the buckets [B, H, R, T] the forward pass would draw into `tape`
  /// (cleared when T <= C, where nothing is hashed). Lets users inspect the hashing.
  void compute_buckets(const Parameters<S>& params, ConstMatrixRef<S> xn, const Context& ctx,
                       BucketTape& tape) const {
    const char* where = "LshAttention::compute_buckets";
    const Plan pl = plan(where, xn, ctx, all_heads());
    if (pl.dense) {
      tape.clear();
      return;
    }
    Matrix<S> qk(out_features(), xn.cols());
    detail::parallel_product(qk, params.value(qk_slot_), xn, false);
    tape.resize(pl.batch, cfg_.num_heads, pl.rounds, pl.length);
    const std::vector<Matrix<S>> rot = rotations(pl, ctx);
    parallel_for(pl.num_head_items, [&](Index hi) {
      const Index b = pl.batch_of(hi), j = pl.head_of(hi);
      hash_head(pl, qk, rot, b, j, tape.data.data() + bucket_offset(pl, b, j));
    });
  }

  /// a = LshAttention(xn): xn is hidden x N, a is H*Dh x N (N = ctx.batch * T).
  void forward(const Parameters<S>& params, ConstMatrixRef<S> xn, MatrixRef<S> a,
               const Context& ctx) const {
    forward(params, xn, a, ctx, all_heads());
  }

  /// The rows of `heads` only: a is heads.count*Dh x N. When recording, writes the buckets of
  /// these heads into the tape (resized to [B, H, R, T] if its shape differs).
  void forward(const Parameters<S>& params, ConstMatrixRef<S> xn, MatrixRef<S> a,
               const Context& ctx, HeadRange heads) const {
    const char* where = "LshAttention::forward";
    const Plan pl = plan(where, xn, ctx, heads);
    check_shape(where, "a", a.rows(), a.cols(), pl.heads.count * cfg_.head_size, xn.cols());
    Matrix<S> qk(a.rows(), xn.cols()), v(a.rows(), xn.cols());  // this group's heads
    detail::parallel_product(qk, weight_rows(params, qk_slot_, heads), xn, false);
    detail::parallel_product(v, weight_rows(params, v_slot_, heads), xn, false);
    if (pl.dense) {
      if (ctx.buckets != nullptr && !ctx.replay_buckets) ctx.buckets->clear();
      dense_forward(pl, qk, v, a, ctx);
      return;
    }
    const std::int32_t* buckets = nullptr;
    std::int32_t* record = nullptr;
    BucketTape scratch_tape;
    if (ctx.replay_buckets) {
      buckets = replayed_buckets(where, pl, ctx);
    } else {
      BucketTape& tape = ctx.buckets != nullptr ? *ctx.buckets : scratch_tape;
      if (tape.batch != pl.batch || tape.heads != cfg_.num_heads || tape.rounds != pl.rounds ||
          tape.length != pl.length) {
        tape.resize(pl.batch, cfg_.num_heads, pl.rounds, pl.length);
      }
      record = tape.data.data();
      buckets = record;
    }
    const std::vector<Matrix<S>> rot =
        record != nullptr ? rotations(pl, ctx) : std::vector<Matrix<S>>{};
    std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
    for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
      const Index nh = std::min(pl.wave, pl.num_head_items - h0);
      parallel_for(nh, [&](Index i) {
        const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
        if (record != nullptr) hash_head(pl, qk, rot, b, j, record + bucket_offset(pl, b, j));
        prepare_head(pl, qk, buckets + bucket_offset(pl, b, j), b, j, bufs[at(i)]);
      });
      attend_forward(pl, ctx, qk, v, h0, nh, bufs);
      parallel_for(nh, [&](Index i) { combine_head(pl, h0 + i, bufs[at(i)], nullptr, a); });
    }
  }

  /// Recomputes the forward pass from xn and the replayed buckets (ctx.buckets, required when
  /// T > C); writes dxn (overwritten) and a (the recomputed output); accumulates the gradients
  /// of W_qk and W_v.
  void backward(Parameters<S>& params, ConstMatrixRef<S> xn, ConstMatrixRef<S> da, MatrixRef<S> dxn,
                MatrixRef<S> a, const Context& ctx) const {
    check_shape("LshAttention::backward", "dxn", dxn.rows(), dxn.cols(), hidden_, xn.cols());
    dxn.setZero();
    backward(params, xn, da, dxn, a, ctx, all_heads());
  }

  /// The rows of `heads` only (da and a: heads.count*Dh x N): ADDS this group's gradient to dxn,
  /// writes the group's rows of a and accumulates the group's rows of dW_qk and dW_v.
  void backward(Parameters<S>& params, ConstMatrixRef<S> xn, ConstMatrixRef<S> da, MatrixRef<S> dxn,
                MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
    const char* where = "LshAttention::backward";
    const Plan pl = plan(where, xn, ctx, heads);
    const Index n = xn.cols(), rows = pl.heads.count * cfg_.head_size;
    check_shape(where, "da", da.rows(), da.cols(), rows, n);
    check_shape(where, "dxn", dxn.rows(), dxn.cols(), hidden_, n);
    check_shape(where, "a", a.rows(), a.cols(), rows, n);
    Matrix<S> qk(rows, n), v(rows, n);
    detail::parallel_product(qk, weight_rows(params, qk_slot_, heads), xn, false);
    detail::parallel_product(v, weight_rows(params, v_slot_, heads), xn, false);
    Matrix<S> dqk(rows, n), dv(rows, n);
    if (pl.dense) {
      dense_backward(pl, qk, v, da, a, dqk, dv, ctx);
    } else {
      const std::int32_t* buckets = replayed_buckets(where, pl, ctx);
      std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
      for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
        const Index nh = std::min(pl.wave, pl.num_head_items - h0);
        parallel_for(nh, [&](Index i) {
          const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
          prepare_head(pl, qk, buckets + bucket_offset(pl, b, j), b, j, bufs[at(i)]);
        });
        attend_forward(pl, ctx, qk, v, h0, nh, bufs);
        // a, and in place: o -> d(o), lse -> d(lse) of every sorted place.
        parallel_for(nh, [&](Index i) { combine_head(pl, h0 + i, bufs[at(i)], &da, a); });
        attend_backward(pl, ctx, qk, v, h0, nh, bufs);
        parallel_for(nh, [&](Index i) { reduce_head(pl, h0 + i, bufs[at(i)], qk, dqk, dv); });
      }
    }
    // qk = W_qk x, v = W_v x  =>  dW_qk += dqk x^T, dW_v += dv x^T, dx += W_qk^T dqk + W_v^T dv
    // (the rows of this group's heads).
    const Index r0 = heads.first * cfg_.head_size;
    detail::linear_weight_grads<S>(dqk, xn, params.grad(qk_slot_).middleRows(r0, rows));
    detail::linear_weight_grads<S>(dv, xn, params.grad(v_slot_).middleRows(r0, rows));
    detail::parallel_product(dxn, weight_rows(params, qk_slot_, heads).transpose(), dqk, true);
    detail::parallel_product(dxn, weight_rows(params, v_slot_, heads).transpose(), dv, true);
  }

 private:
  /// Shapes of one call, derived from the inputs only (never from the thread count).
  struct Plan {
    Index batch = 1, length = 0, padded = 0, rounds = 1, chunk = 1;
    Index slots = 0;           // R * Tp sorted places per head
    Index chunks = 0;          // slots / C
    Index window = 1;          // chunks attended per chunk: before + 1 + after
    HeadRange heads;           // the heads of this call
    Index num_head_items = 0;  // batch * heads.count; item hi = (b, local head j)
    Index wave = 1;            // head items processed together
    LshBucketLayout layout;
    bool dense = false;

    Index batch_of(Index hi) const { return hi / heads.count; }
    Index head_of(Index hi) const { return hi % heads.count; }  // local head j
  };

  /// Per-(sequence, head) state of one call. Sorted places s in [0, R*Tp): slot (r, t) sits at
  /// place inverse[r*Tp + t]; place s holds position pos[s] (>= T: padding).
  struct HeadBuffers {
    std::vector<Index> pos;      // sorted place -> position
    std::vector<Index> inverse;  // slot r*Tp + t -> sorted place
    Matrix<S> keys;              // Dh x T normalised keys, by position
    Matrix<S> o;                 // Dh x R*Tp per-place outputs (backward: their gradients)
    Vector<S> lse;               // R*Tp per-place logsumexps (backward: their gradients)
    Matrix<S> dq;                // backward: Dh x R*Tp gradient of the queries, by place
    Matrix<S> dk, dv;            // backward: Dh x R*Tp gradients of the keys / values, by place
  };

  /// Sorted chunks per parallel work item.
  static constexpr Index kChunksPerItem = 4;
  /// Scalars of per-head buffers a wave may hold (bounds the peak memory for long inputs).
  static constexpr Index kWaveScalars = Index{1} << 24;
  /// Chunk groups a wave aims for (more heads per wave only help short sequences).
  static constexpr Index kWaveItems = 64;

  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }

  static const Config& validated(const Config& cfg, Index hidden) {
    cfg.validate("LshAttention");
    REFORMER_REQUIRE(hidden >= 1, ConfigError, "LshAttention", "hidden = ", hidden,
                     " must be >= 1");
    return cfg;
  }

  HeadRange all_heads() const { return HeadRange{0, cfg_.num_heads}; }

  /// Rows of `heads` of a [H*Dh, hidden] weight.
  auto weight_rows(const Parameters<S>& params, SlotId slot, HeadRange heads) const {
    return params.value(slot).middleRows(heads.first * cfg_.head_size,
                                         heads.count * cfg_.head_size);
  }

  Plan plan(const char* where, const ConstMatrixRef<S>& xn, const Context& ctx,
            HeadRange heads) const {
    REFORMER_REQUIRE(xn.rows() == hidden_, InvalidArgument, where, "xn.rows() = ", xn.rows(),
                     " must equal hidden_size = ", hidden_);
    detail::check_head_range(where, heads, cfg_.num_heads);
    Plan p;
    p.length = ctx.length(where, xn.cols());
    p.batch = ctx.batch;
    p.chunk = cfg_.chunk_length;
    p.heads = heads;
    p.num_head_items = p.batch * heads.count;
    p.dense = !hashes(p.length);
    if (p.dense) {
      p.padded = p.length;
      return p;
    }
    p.padded = padded_length(p.length);
    p.rounds = cfg_.num_hashes;
    p.slots = p.rounds * p.padded;
    p.chunks = p.slots / p.chunk;
    p.window = cfg_.chunks_before + 1 + cfg_.chunks_after;
    p.layout = bucket_layout(p.length);
    // o, dq, dk, dv and the keys, per head, in scalars.
    const Index per_head = 4 * cfg_.head_size * p.slots + cfg_.head_size * p.length;
    // Heads per wave: enough chunk groups to keep the threads busy (kWaveItems), within the
    // memory budget (kWaveScalars). Depends on the shapes only.
    const Index groups = (p.chunks + kChunksPerItem - 1) / kChunksPerItem;
    const Index wanted = (kWaveItems + groups - 1) / groups;
    p.wave = std::max<Index>(1, std::min({p.num_head_items, wanted, kWaveScalars / per_head}));
    return p;
  }

  /// Offset of (b, global head of local head j, round 0, position 0) in a [B, H, R, T] tape.
  std::size_t bucket_offset(const Plan& pl, Index b, Index j) const {
    const Index h = pl.heads.global(j);
    return static_cast<std::size_t>(((b * cfg_.num_heads + h) * pl.rounds) * pl.length);
  }

  /// The rotations of every (head of the range, round): entry j * R + r for local head j.
  std::vector<Matrix<S>> rotations(const Plan& pl, const Context& ctx) const {
    std::vector<Matrix<S>> rot(at(pl.heads.count * pl.rounds));
    parallel_for(pl.heads.count * pl.rounds, [&](Index i) {
      const Index h = pl.heads.global(i / pl.rounds);
      rot[at(i)] =
          lsh_rotations<S>(lsh_rotation_key(ctx, h, i % pl.rounds), cfg_.head_size, pl.layout);
    });
    return rot;
  }

  /// Columns of sequence b in the rows of local head j of a heads.count*Dh x N matrix.
  template <class M>
  auto head_block(M& m, const Plan& pl, Index b, Index j) const {
    return m.block(j * cfg_.head_size, b * pl.length, cfg_.head_size, pl.length);
  }

  /// Buckets of sequence b, local head j, for every round into out[r * T + t].
  void hash_head(const Plan& pl, const Matrix<S>& qk, const std::vector<Matrix<S>>& rot, Index b,
                 Index j, std::int32_t* out) const {
    const auto x = head_block(qk, pl, b, j);
    for (Index r = 0; r < pl.rounds; ++r)
      lsh_hash<S>(x, rot[at(j * pl.rounds + r)], pl.layout, out + r * pl.length);
  }

  /// The caller's tape, checked for shape and range.
  const std::int32_t* replayed_buckets(const char* where, const Plan& pl,
                                       const Context& ctx) const {
    REFORMER_REQUIRE(ctx.buckets != nullptr, InvalidArgument, where,
                     "ctx.buckets is null, but the buckets must be replayed (T = ", pl.length,
                     " > chunk_length = ", cfg_.chunk_length, ")");
    const BucketTape& t = *ctx.buckets;
    REFORMER_REQUIRE(
        t.batch == pl.batch && t.heads == cfg_.num_heads && t.rounds == pl.rounds &&
            t.length == pl.length &&
            static_cast<Index>(t.data.size()) == pl.batch * cfg_.num_heads * pl.rounds * pl.length,
        InvalidArgument, where, "ctx.buckets has shape [", t.batch, ", ", t.heads, ", ", t.rounds,
        ", ", t.length, "] (", t.data.size(),
        " values), expected [batch, heads, rounds, length] = [", pl.batch, ", ", cfg_.num_heads,
        ", ", pl.rounds, ", ", pl.length, "]");
    const Index nb = pl.layout.num_buckets();
    for (std::size_t i = 0; i < t.data.size(); ++i) {
      REFORMER_REQUIRE(t.data[i] >= 0 && t.data[i] < nb, InvalidArgument, where,
                       "ctx.buckets value ", t.data[i], " at flat index ", i,
                       " is outside [0, num_buckets = ", nb, ")");
    }
    return t.data.data();
  }

  /// Attention options of the chunks of (b, h) whose queries belong to round r.
  ChunkAttentionOptions options(const Plan& pl, const Context& ctx, Index b, Index h,
                                Index r) const {
    ChunkAttentionOptions o;
    o.causal = cfg_.causal;
    o.self_mask = true;
    o.valid_length = pl.length;
    if (ctx.training && cfg_.dropout > 0.0) {
      o.dropout_rate = cfg_.dropout;
      o.dropout_rng = ctx.rng(stream::kAttentionProbsDropout)
                          .derive(static_cast<std::uint64_t>(b))
                          .derive(static_cast<std::uint64_t>(h))
                          .derive(static_cast<std::uint64_t>(r));
      o.draw_stride = pl.padded;
    }
    return o;
  }

  /// Sorts the slots of (b, h) by bucket (the inverse permutation and the positions of the
  /// sorted places) and normalises the head's keys. `buckets` holds R x T buckets (row r =
  /// round r); padded positions get the pad bucket NB, so they sort last in their round.
  void prepare_head(const Plan& pl, const Matrix<S>& qk, const std::int32_t* buckets, Index b,
                    Index j, HeadBuffers& hb) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded, rounds = pl.rounds;
    const auto nb = static_cast<std::int32_t>(pl.layout.num_buckets());
    std::vector<std::int32_t> slot_buckets(at(pl.slots));
    for (Index r = 0; r < rounds; ++r)
      for (Index t = 0; t < tp; ++t)
        slot_buckets[at(r * tp + t)] = t < len ? buckets[r * len + t] : nb;
    std::vector<Index> order(at(pl.slots)), counts;
    hb.inverse.resize(at(pl.slots));
    lsh_counting_sort(slot_buckets.data(), rounds, tp, Index{nb} + 1, order.data(),
                      hb.inverse.data(), counts);
    hb.pos.resize(at(pl.slots));
    for (Index s = 0; s < pl.slots; ++s) hb.pos[at(s)] = order[at(s)] - (s / tp) * tp;
    hb.keys.resize(dh, len);  // k: Dh x T
    detail::lsh_normalize_keys<S>(head_block(qk, pl, b, j), hb.keys);
    hb.o.resize(dh, pl.slots);
    hb.lse.resize(pl.slots);
  }

  /// The gathered operands of one chunk: queries (Dh x C), and the keys and values of its window
  /// (Dh x W*C: chunks c - before .. c + after, circular over the R*Tp places) with their
  /// positions. Padded positions gather zero vectors (their keys are masked, their queries'
  /// outputs discarded). Gathering per chunk costs O(W*C*Dh), next to the O(W*C^2*Dh) products.
  struct ChunkOperands {
    Matrix<S> q, k, v;
    std::vector<Index> kpos;
  };
  void gather_chunk(const Plan& pl, const Matrix<S>& qk, const Matrix<S>& v, const HeadBuffers& hb,
                    Index b, Index j, Index c, ChunkOperands& op) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, len = pl.length;
    const auto x = head_block(qk, pl, b, j);
    const auto xv = head_block(v, pl, b, j);
    op.q.resize(dh, cl);
    op.k.resize(dh, pl.window * cl);
    op.v.resize(dh, pl.window * cl);
    op.kpos.resize(at(pl.window * cl));
    for (Index i = 0; i < cl; ++i) {
      const Index t = hb.pos[at(c * cl + i)];
      if (t < len) {
        op.q.col(i) = x.col(t);
      } else {
        op.q.col(i).setZero();
      }
    }
    for (Index w = 0; w < pl.window; ++w) {
      const Index src = detail::lsh_mod(c - cfg_.chunks_before + w, pl.chunks);
      for (Index j = 0; j < cl; ++j) {
        const Index t = hb.pos[at(src * cl + j)];
        const Index col = w * cl + j;
        op.kpos[at(col)] = t;
        if (t < len) {
          op.k.col(col) = hb.keys.col(t);
          op.v.col(col) = xv.col(t);
        } else {
          op.k.col(col).setZero();
          op.v.col(col).setZero();
        }
      }
    }
  }

  /// Per-place outputs o and logsumexps lse of every chunk of the heads of a wave.
  void attend_forward(const Plan& pl, const Context& ctx, const Matrix<S>& qk, const Matrix<S>& v,
                      Index h0, Index nh, std::vector<HeadBuffers>& bufs) const {
    const Index groups = (pl.chunks + kChunksPerItem - 1) / kChunksPerItem;
    const Index cl = pl.chunk, chunks_per_round = pl.padded / cl;
    parallel_for(nh * groups, [&](Index item) {
      const Index i = item / groups, g = item % groups;
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      HeadBuffers& hb = bufs[at(i)];
      ChunkAttentionWorkspace<S> ws(cl, pl.window * cl);
      ChunkOperands op;
      const Index c_end = std::min(pl.chunks, (g + 1) * kChunksPerItem);
      for (Index c = g * kChunksPerItem; c < c_end; ++c) {
        gather_chunk(pl, qk, v, hb, b, j, c, op);
        chunk_attention_forward<S>(op.q, op.k, op.v, hb.pos.data() + c * cl, op.kpos.data(),
                                   options(pl, ctx, b, pl.heads.global(j), c / chunks_per_round),
                                   hb.o.middleCols(c * cl, cl), hb.lse.data() + c * cl, ws);
      }
    });
  }

  /// Unsorts and combines the rounds of head item hi into a; with da, also turns hb.o / hb.lse
  /// into the gradients of the per-slot outputs and logsumexps (in place).
  ///   forward:   w_r = exp(lse_r - logsumexp_r' lse_r') (softmax over rounds),  o = sum_r w_r o_r
  ///   backward:  do_r = w_r do,   dlse_r = w_r (do . o_r - do . o)
  void combine_head(const Plan& pl, Index hi, HeadBuffers& hb, const ConstMatrixRef<S>* da,
                    MatrixRef<S> a) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded, rounds = pl.rounds;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi);
    Index place[kLshMaxHashes];
    S w[kLshMaxHashes];
    for (Index t = 0; t < len; ++t) {
      S mx = -std::numeric_limits<S>::infinity();
      for (Index r = 0; r < rounds; ++r) {
        place[r] = hb.inverse[at(r * tp + t)];
        mx = std::max(mx, hb.lse[place[r]]);
      }
      // w_r = exp(lse_r - mx) / sum_r' exp(lse_r' - mx): the same as exp(lse_r - L), but
      // without rounding L, whose magnitude reaches 1e5 when a slot sees only itself (then, in
      // float, exp(lse_r - L) would be off by ~0.4%).
      S sum = 0;
      for (Index r = 0; r < rounds; ++r) {
        w[r] = std::exp(hb.lse[place[r]] - mx);
        sum += w[r];
      }
      for (Index r = 0; r < rounds; ++r) w[r] /= sum;
      auto out = a.col(b * len + t).segment(j * dh, dh);
      out = w[0] * hb.o.col(place[0]);
      for (Index r = 1; r < rounds; ++r) out += w[r] * hb.o.col(place[r]);
      if (da != nullptr) {
        const auto g = da->col(b * len + t).segment(j * dh, dh);
        const S g_dot_o = g.dot(out);
        for (Index r = 0; r < rounds; ++r) {
          const S g_dot_or = g.dot(hb.o.col(place[r]));
          hb.lse[place[r]] = w[r] * (g_dot_or - g_dot_o);
          hb.o.col(place[r]) = w[r] * g;
        }
      }
    }
    if (da != nullptr) {  // padded queries receive no gradient
      for (Index r = 0; r < rounds; ++r) {
        for (Index t = len; t < tp; ++t) {
          const Index s = hb.inverse[at(r * tp + t)];
          hb.o.col(s).setZero();
          hb.lse[s] = 0;
        }
      }
    }
  }

  /// Backward of every chunk of the heads of a wave, given hb.o = d(o) and hb.lse = d(lse):
  /// hb.dq (each chunk's own places, overwritten) and hb.dk / hb.dv (accumulated over the
  /// windows that contain each place).
  ///
  /// Determinism without per-window copies: the chunks c < full = (chunks / W) * W with
  /// c % W == p form pass p; their windows are disjoint runs of W chunks, so one pass
  /// accumulates into dk / dv in parallel without two chunks touching the same place. The
  /// remaining chunks run one after another in a last pass. Every place therefore receives its
  /// contributions in the same order for any thread count.
  void attend_backward(const Plan& pl, const Context& ctx, const Matrix<S>& qk, const Matrix<S>& v,
                       Index h0, Index nh, std::vector<HeadBuffers>& bufs) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, wl = pl.window * cl;
    const Index chunks_per_round = pl.padded / cl;
    parallel_for(nh, [&](Index i) {
      HeadBuffers& hb = bufs[at(i)];
      hb.dq.resize(dh, pl.slots);
      hb.dk.setZero(dh, pl.slots);
      hb.dv.setZero(dh, pl.slots);
    });
    struct Scratch {
      ChunkAttentionWorkspace<S> ws;
      ChunkOperands op;
      Matrix<S> dk, dv;  // a wrapped window's gradients, before they are added to their places
    };
    auto chunk_backward = [&](Index i, Index c, Scratch& sc) {
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      HeadBuffers& hb = bufs[at(i)];
      gather_chunk(pl, qk, v, hb, b, j, c, sc.op);
      const ChunkAttentionOptions opts =
          options(pl, ctx, b, pl.heads.global(j), c / chunks_per_round);
      const Index first = c - cfg_.chunks_before;
      const bool contiguous = first >= 0 && c + cfg_.chunks_after < pl.chunks;
      if (contiguous) {  // the window's places are consecutive: accumulate in place
        chunk_attention_backward<S>(
            sc.op.q, sc.op.k, sc.op.v, hb.pos.data() + c * cl, sc.op.kpos.data(), opts,
            hb.o.middleCols(c * cl, cl), hb.lse.data() + c * cl, hb.dq.middleCols(c * cl, cl),
            hb.dk.middleCols(first * cl, wl), hb.dv.middleCols(first * cl, wl), sc.ws);
        return;
      }
      sc.dk.setZero(dh, wl);
      sc.dv.setZero(dh, wl);
      chunk_attention_backward<S>(sc.op.q, sc.op.k, sc.op.v, hb.pos.data() + c * cl,
                                  sc.op.kpos.data(), opts, hb.o.middleCols(c * cl, cl),
                                  hb.lse.data() + c * cl, hb.dq.middleCols(c * cl, cl), sc.dk,
                                  sc.dv, sc.ws);
      for (Index w = 0; w < pl.window; ++w) {
        const Index dst = detail::lsh_mod(first + w, pl.chunks);
        hb.dk.middleCols(dst * cl, cl) += sc.dk.middleCols(w * cl, cl);
        hb.dv.middleCols(dst * cl, cl) += sc.dv.middleCols(w * cl, cl);
      }
    };
    const Index full = pl.chunks / pl.window * pl.window, per_pass = full / pl.window;
    const Index groups = (per_pass + kChunksPerItem - 1) / kChunksPerItem;
    for (Index p = 0; p < pl.window && per_pass > 0; ++p) {
      parallel_for(nh * groups, [&](Index item) {
        const Index i = item / groups, g = item % groups;
        Scratch sc;
        const Index k_end = std::min(per_pass, (g + 1) * kChunksPerItem);
        for (Index k = g * kChunksPerItem; k < k_end; ++k) chunk_backward(i, k * pl.window + p, sc);
      });
    }
    if (full < pl.chunks) {
      parallel_for(nh, [&](Index i) {
        Scratch sc;
        for (Index c = full; c < pl.chunks; ++c) chunk_backward(i, c, sc);
      });
    }
  }

  /// Gathers the gradients of head item hi back to positions, summing the rounds in order, and
  /// through the key normalisation: dqk = dq + (dk/dqk)^T dk, and dv.
  void reduce_head(const Plan& pl, Index hi, const HeadBuffers& hb, const Matrix<S>& qk,
                   Matrix<S>& dqk, Matrix<S>& dv) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi);
    Vector<S> dk(dh);
    for (Index t = 0; t < len; ++t) {
      auto dq_t = dqk.col(b * len + t).segment(j * dh, dh);
      auto dv_t = dv.col(b * len + t).segment(j * dh, dh);
      dq_t.setZero();
      dv_t.setZero();
      dk.setZero();
      for (Index r = 0; r < pl.rounds; ++r) {
        const Index s = hb.inverse[at(r * tp + t)];
        dq_t += hb.dq.col(s);
        dk += hb.dk.col(s);
        dv_t += hb.dv.col(s);
      }
      detail::lsh_normalize_key_backward<S>(qk.col(b * len + t).segment(j * dh, dh), dk, dq_t);
    }
  }

  /// T <= C: dense shared-QK attention over the whole sequence, one round, no hashing.
  void dense_forward(const Plan& pl, const Matrix<S>& qk, const Matrix<S>& v, MatrixRef<S> a,
                     const Context& ctx) const {
    const Index dh = cfg_.head_size, len = pl.length;
    parallel_for(pl.num_head_items, [&](Index hi) {
      const Index b = pl.batch_of(hi), j = pl.head_of(hi), h = pl.heads.global(j);
      const auto x = head_block(qk, pl, b, j);
      Matrix<S> keys(dh, len);
      detail::lsh_normalize_keys<S>(x, keys);
      std::vector<Index> pos(at(len));
      for (Index t = 0; t < len; ++t) pos[at(t)] = t;
      ChunkAttentionWorkspace<S> ws(len, len);
      chunk_attention_forward<S>(x, keys, head_block(v, pl, b, j), pos.data(), pos.data(),
                                 options(pl, ctx, b, h, 0), head_block(a, pl, b, j),
                                 static_cast<S*>(nullptr), ws);
    });
  }

  void dense_backward(const Plan& pl, const Matrix<S>& qk, const Matrix<S>& v,
                      const ConstMatrixRef<S>& da, MatrixRef<S> a, Matrix<S>& dqk, Matrix<S>& dv,
                      const Context& ctx) const {
    const Index dh = cfg_.head_size, len = pl.length;
    parallel_for(pl.num_head_items, [&](Index hi) {
      const Index b = pl.batch_of(hi), j = pl.head_of(hi), h = pl.heads.global(j);
      const auto x = head_block(qk, pl, b, j);
      const auto xv = head_block(v, pl, b, j);
      Matrix<S> keys(dh, len);
      detail::lsh_normalize_keys<S>(x, keys);
      std::vector<Index> pos(at(len));
      for (Index t = 0; t < len; ++t) pos[at(t)] = t;
      ChunkAttentionWorkspace<S> ws(len, len);
      Matrix<S> dk = Matrix<S>::Zero(dh, len);
      auto dq = head_block(dqk, pl, b, j);
      auto dvb = head_block(dv, pl, b, j);
      dvb.setZero();
      // One pass: the recomputed output a (no round combination depends on it here) and the
      // gradients of queries, keys and values.
      chunk_attention_forward_backward<S>(
          x, keys, xv, pos.data(), pos.data(), options(pl, ctx, b, h, 0), head_block(da, pl, b, j),
          static_cast<const S*>(nullptr), head_block(a, pl, b, j), dq, dk, dvb, ws);
      // k = normalise(qk)  =>  dqk += (dk/dqk)^T dk
      for (Index t = 0; t < len; ++t)
        detail::lsh_normalize_key_backward<S>(x.col(t), dk.col(t), dq.col(t));
    });
  }

  Config cfg_;
  Index hidden_;
  SlotId qk_slot_, v_slot_;
};

}  // namespace reformer
