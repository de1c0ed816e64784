#pragma once
// LSH self-attention core (docs/DESIGN.md 1.2): the Reformer's attention whose cost grows
// linearly with the sequence length. Per sequence and head (x: D x T normalised inputs):
//
//   qk = W_qk x,  v = W_v x                      Dh x T; queries and keys share W_qk, no biases
//   if T <= C:  dense shared-QK attention (below) over all T positions, one round, no hashing
//   pad T to Tp (a multiple of C); padded positions get the pad bucket NB and are masked keys
//   b_r(t) = lsh_hash(qk_t, rotation of round r)                      (lsh_bucketing.hpp)
//   sort the R*Tp slots (r, t) by (r, b_r(t), t)  ->  sorted place s, position pos(s)
//   k_t  = qk_t / sqrt(mean(qk_t^2) + 1e-6) / sqrt(Dh)                queries are not scaled
//   chunk c (C consecutive sorted places, over all R*Tp places) attends to chunks
//   adjacent_chunk(c, i, R*Tp/C), i = -before .. after (circular over the R*Tp places, as
//   HF/trax), with the chunk kernel (chunk_attention.hpp): s_ij = qk_i . k_j, masks replacing
//   s_ij (causal -1e9, key padding -1e9, self -1e5, length padding -1e9), lse_i =
//   logsumexp_j s_ij, p = exp(s - lse) (dropped), o_i = sum_j p_ij v_j
//   unsort, combine the rounds per position:
//     w_r(t) = exp(lse_r(t) - logsumexp_r' lse_r'(t)),   o(t) = sum_r w_r(t) o_r(t)
//   a = [o_head0; o_head1; ...]                                        H*Dh x T
// The output projection W_o belongs to the AttentionSublayer wrapper.
//
// Key padding (ctx.mask, docs/DESIGN.md 7.1, 7.3), as Hugging Face: when any position of the
// batch is padding, every padded position hashes to the extra bucket NB (recorded as NB in the
// tape; a replayed tape may hold NB only then), so it sorts after the real positions of its
// round; as a key it is masked (-1e9, before the self mask); as a query it is computed like any
// other, from its own query/key and value vectors. Without padding nothing changes.
//
// Buckets (docs/DESIGN.md 3.3): forward hashes (rotations from ctx.rng, see lsh_bucketing.hpp) and
// records the buckets into *ctx.buckets ([B, H, R, T], no round offsets) when it is non-null, or
// replays them when ctx.replay_buckets is set. backward always replays: it never re-hashes.
// Short sequences (T <= C) do not hash; their tape is cleared and never read.
//
// Dropout on the attention probabilities (training only) is keyed by
// ctx.rng(stream::kAttentionProbsDropout).derive(b).derive(h).derive(round of the query), draw
// index query position * Tp + key position, so backward sees the forward's mask.
//
// Work and memory: (sequence, head) pairs are processed in waves whose size depends only on the
// shapes; inside a wave every phase is a parallel_for over fixed items (blocks of positions or
// places of a head, or groups of chunks), each writing its own slice, so results are bitwise
// identical for any thread count, and a single long head still keeps every thread busy.
// Each head's queries (qk) and values are gathered once into sorted order (prefetching the
// scattered columns ahead), so a chunk reads its queries, values and positions as contiguous
// slices of those buffers and only copies its window's keys (k = qk * key scale), instead of
// gathering W*C scattered columns per chunk from the Dh x T matrices (which leave the caches for
// long inputs). Per head the buffers are O(R*Tp*Dh): sorted queries and values, the per-place
// outputs, and in backward the per-place gradients of queries, keys and values; per work item
// O(C^2) scores. No T x T and no all-chunks (R*T x W*C) score buffer is ever formed.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/prefetch.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/detail/head_projection.hpp"
#include "reformer/layers/detail/key_padding.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/lsh_bucketing.hpp"
#include "reformer/layers/projection_input.hpp"

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

  /// The LSH attention of a model configuration (a ReformerConfig, model/config.hpp).
  template <class ModelConfig>
  static LshAttentionConfig from(const ModelConfig& m) {
    return {/*num_heads=*/m.num_attention_heads,
            /*head_size=*/m.head_size(),
            /*chunk_length=*/m.lsh_attn_chunk_length,
            /*num_hashes=*/m.num_hashes,
            /*num_buckets=*/m.num_buckets,
            /*chunks_before=*/m.lsh_num_chunks_before,
            /*chunks_after=*/m.lsh_num_chunks_after,
            /*causal=*/m.is_decoder,
            /*dropout=*/m.lsh_attention_probs_dropout_prob,
            /*max_positions=*/m.max_position_embeddings};
  }

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
    const auto adjacent = checked_add(chunks_before, chunks_after, kMaxIndex - 1);
    REFORMER_REQUIRE(
        adjacent && checked_mul(*adjacent + 1, chunk_length, Index{1} << 31), ConfigError, where,
        "the window (chunks_before + 1 + chunks_after) x "
        "chunk_length = (",
        chunks_before, " + 1 + ", chunks_after, ") x ", chunk_length, " exceeds 2^31 positions");
    REFORMER_REQUIRE(dropout >= 0.0 && dropout < 1.0, ConfigError, where, "dropout = ", dropout,
                     " must be in [0, 1)");
    REFORMER_REQUIRE(max_positions >= 1, ConfigError, where, "max_positions = ", max_positions,
                     " must be >= 1");
    validate_lsh_num_buckets(where, num_buckets);
  }
};

namespace detail {

inline constexpr double kLshKeyNormEps = 1e-6;

/// The key scale of one qk column (Dh entries): g = 1 / (sqrt(mean(qk^2) + 1e-6) * sqrt(Dh)).
template <class S, class Q>
S lsh_key_scale(const Q& qk) {
  const S dh = static_cast<S>(qk.rows());
  const S mean_sq = qk.squaredNorm() / dh;
  return S(1) / (std::sqrt(mean_sq + static_cast<S>(kLshKeyNormEps)) * std::sqrt(dh));
}

/// Key normalisation, column by column (qk, k: Dh x n):  k = qk * g  (g = lsh_key_scale).
template <class S>
void lsh_normalize_keys(ConstMatrixRef<S> qk, MatrixRef<S> k) {
  for (Index t = 0; t < qk.cols(); ++t) k.col(t) = qk.col(t) * lsh_key_scale<S>(qk.col(t));
}

/// Backward of the key normalisation for one column: with g as above,
///   dk/dqk = g I - g^3 qk qk^T   =>   dqk += g dk - g^3 (dk . qk) qk
template <class S, class Q, class DK, class DQ>
void lsh_normalize_key_backward(const Q& qk, const DK& dk, DQ&& dqk) {
  const S g = lsh_key_scale<S>(qk);
  const S g3_dot = g * g * g * dk.dot(qk);
  dqk += g * dk - g3_dot * qk;
}

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
    init_normal(params, qk_slot_, rng.derive(0), std);
    init_normal(params, v_slot_, rng.derive(1), std);
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
  /// (cleared when T <= C, where nothing is hashed). Lets users inspect the hashing. The input
  /// is a plain xn or x with a LayerNorm (layers/projection_input.hpp).
  void compute_buckets(const Parameters<S>& params, const ProjectionInput<S>& input,
                       const Context& ctx, BucketTape& tape) const;
  /// compute_buckets() of a plain normalised input xn (hidden x N).
  void compute_buckets(const Parameters<S>& params, ConstMatrixRef<S> xn, const Context& ctx,
                       BucketTape& tape) const {
    compute_buckets(params, ProjectionInput<S>(xn), ctx, tape);
  }

  /// a = LshAttention(input): the input (layers/projection_input.hpp) is hidden x N,
  /// N = ctx.batch * T, a plain xn or x with a LayerNorm; a holds the rows of `heads` (all heads
  /// by default): heads.count*Dh x N. When recording, writes the buckets of these heads into the
  /// tape (resized to [B, H, R, T] if its shape differs).
  void forward(const Parameters<S>& params, const ProjectionInput<S>& input, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const;
  /// forward() of a plain normalised input xn (hidden x N).
  void forward(const Parameters<S>& params, ConstMatrixRef<S> xn, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const {
    forward(params, ProjectionInput<S>(xn), a, ctx, heads);
  }

  /// Recomputes the forward pass of `heads` (all by default; da and a: heads.count*Dh x N),
  /// ADDS their gradient w.r.t. the input to `dinput` (dxn += J^T da, or through the input's
  /// LayerNorm into dx, dgamma and dbeta), writes their recomputed rows of a and accumulates
  /// their rows of dW_qk and dW_v.
  void backward(Parameters<S>& params, const ProjectionInput<S>& input, ConstMatrixRef<S> da,
                const ProjectionInputGrad<S>& dinput, MatrixRef<S> a, const Context& ctx,
                HeadRange heads = HeadRange::all()) const;
  /// backward() of a plain normalised input xn: dxn += J^T da.
  void backward(Parameters<S>& params, ConstMatrixRef<S> xn, ConstMatrixRef<S> da, MatrixRef<S> dxn,
                MatrixRef<S> a, const Context& ctx, HeadRange heads = HeadRange::all()) const {
    backward(params, ProjectionInput<S>(xn), da, ProjectionInputGrad<S>(dxn), a, ctx, heads);
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
    detail::KeyPadding padding;  // ctx.mask, checked; any(): the pad bucket NB is in use

    Index batch_of(Index hi) const { return hi / heads.count; }
    Index head_of(Index hi) const { return hi % heads.count; }  // local head j
  };

  /// Per-(sequence, head) state of one call. Sorted places s in [0, R*Tp): slot (r, t) sits at
  /// place inverse[r*Tp + t]; place s holds position pos[s] (>= T: padding).
  struct HeadBuffers {
    ScratchArray<Index> pos;      // sorted place -> position
    ScratchArray<Index> inverse;  // slot r*Tp + t -> sorted place
    Scratch<S> q;                 // Dh x R*Tp queries (qk) by place, zero at padded places
    Scratch<S> v;                 // Dh x R*Tp values by place, zero at padded places
    Scratch<S> key_scale;         // R*Tp x 1: the key of place s is q_s * key_scale_s (0 if padded)
    Scratch<S> o;                 // Dh x R*Tp per-place outputs; backward: their gradients, then
                                  // (in place, chunk by chunk) the gradients of the queries
    Scratch<S> lse;               // R*Tp x 1 per-place logsumexps (backward: their gradients)
    Scratch<S> dk, dv;            // backward: Dh x R*Tp gradients of the keys / values, by place
  };

  /// Sorted chunks per parallel work item.
  static constexpr Index kChunksPerItem = tuning::kLshChunksPerItem;
  /// Positions (or sorted places) per parallel work item of the per-head phases.
  static constexpr Index kPositionsPerItem = tuning::kLshPositionsPerItem;
  /// How many columns ahead the scattered gathers prefetch.
  static constexpr Index kPrefetchDistance = tuning::kLshPrefetchDistance;
  /// Scalars of per-head buffers a wave may hold (bounds the peak memory for long inputs).
  static constexpr Index kWaveScalars = tuning::kLshWaveScalars;
  /// Chunk groups a wave aims for (more heads per wave only help short sequences).
  static constexpr Index kWaveItems = tuning::kLshWaveItems;

  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }

  static const Config& validated(const Config& cfg, Index hidden) {
    cfg.validate("LshAttention");
    REFORMER_REQUIRE(hidden >= 1, ConfigError, "LshAttention", "hidden = ", hidden,
                     " must be >= 1");
    return cfg;
  }

  HeadRange all_heads() const { return HeadRange::all().resolve(cfg_.num_heads); }

  Plan plan(const char* where, const ProjectionInput<S>& input, const Context& ctx,
            HeadRange heads) const {
    REFORMER_REQUIRE(input.rows() == hidden_, InvalidArgument, where, "xn.rows() = ", input.rows(),
                     " must equal hidden_size = ", hidden_);
    detail::check_head_range(where, heads, cfg_.num_heads);
    Plan p;
    p.length = ctx.length(where, input.cols());
    p.batch = ctx.batch;
    p.chunk = cfg_.chunk_length;
    p.heads = heads;
    p.num_head_items = p.batch * heads.count;
    p.padding = detail::KeyPadding(where, ctx, p.length);
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
    // Sorted q and v, o (later dq), dk and dv, per head, in scalars.
    const Index per_head = 5 * cfg_.head_size * p.slots;
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

  /// Calls f(i, t0, t1) for the blocks [t0, t1) of kPositionsPerItem positions in [0, Tp) of
  /// the head items i in [0, nh), in parallel (items fixed by the shapes).
  template <class F>
  void for_position_blocks(const Plan& pl, Index nh, F&& f) const {
    const Index blocks = (pl.padded + kPositionsPerItem - 1) / kPositionsPerItem;
    parallel_for(nh * blocks, [&](Index item) {
      const Index i = item / blocks, t0 = (item % blocks) * kPositionsPerItem;
      f(i, t0, std::min(pl.padded, t0 + kPositionsPerItem));
    });
  }

  /// Buckets of the head items [h0, h0 + nh) for every round into their [B, H, R, T] rows of
  /// `tape`, in blocks of positions.
  void hash_heads(const Plan& pl, ConstMatrixRef<S> qk, const std::vector<Matrix<S>>& rot, Index h0,
                  Index nh, std::int32_t* tape) const {
    const Index blocks = (pl.length + kPositionsPerItem - 1) / kPositionsPerItem;
    parallel_for(nh * pl.rounds * blocks, [&](Index item) {
      const Index hi = h0 + item / (pl.rounds * blocks);
      const Index r = item / blocks % pl.rounds, t0 = (item % blocks) * kPositionsPerItem;
      const Index nt = std::min(kPositionsPerItem, pl.length - t0);
      const Index b = pl.batch_of(hi), j = pl.head_of(hi);
      std::int32_t* out = tape + bucket_offset(pl, b, j) + r * pl.length + t0;
      lsh_hash<S>(head_block(qk, pl, b, j).middleCols(t0, nt), rot[at(j * pl.rounds + r)],
                  pl.layout, out);
      // Key padding (as HF): every padded position gets the extra bucket NB.
      if (const std::uint8_t* flags = pl.padding.flags(b)) {
        const auto pad = static_cast<std::int32_t>(pl.layout.num_buckets());
        for (Index t = 0; t < nt; ++t)
          if (flags[t0 + t] == 0) out[t] = pad;
      }
    });
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
    // With key padding the pad bucket NB is a valid value too.
    const Index nb = pl.layout.num_buckets(), bins = nb + (pl.padding.any() ? 1 : 0);
    for (std::size_t i = 0; i < t.data.size(); ++i) {
      REFORMER_REQUIRE(t.data[i] >= 0 && t.data[i] < bins, InvalidArgument, where,
                       "ctx.buckets value ", t.data[i], " at flat index ", i,
                       " is outside [0, num_buckets = ", nb, ")",
                       pl.padding.any() ? " plus the pad bucket " : "",
                       pl.padding.any() ? std::to_string(nb) : std::string());
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
    o.key_flags = pl.padding.flags(b);
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

  /// Sorts the slots of every head item of a wave by bucket (the inverse permutation and the
  /// positions of the sorted places), then gathers its queries and values into sorted order.
  /// `tape` holds [B, H, R, T] buckets; padded positions get the pad bucket NB, so they sort last
  /// in their round.
  void sort_and_gather(const Plan& pl, ConstMatrixRef<S> qk, ConstMatrixRef<S> v,
                       const std::int32_t* tape, Index h0, Index nh, std::vector<HeadBuffers>& bufs,
                       Workspace* ws) const {
    parallel_for(nh, [&](Index i) {
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      sort_head(pl, tape + bucket_offset(pl, b, j), bufs[at(i)], ws);
    });
    const Index blocks = (pl.slots + kPositionsPerItem - 1) / kPositionsPerItem;
    parallel_for(nh * blocks, [&](Index item) {
      const Index i = item / blocks, s0 = (item % blocks) * kPositionsPerItem;
      gather_places(pl, qk, v, h0 + i, bufs[at(i)], s0, std::min(pl.slots, s0 + kPositionsPerItem));
    });
  }

  /// The sort of one head item (`buckets`: R x T, row r = round r); sizes its buffers (drawn
  /// from ws).
  void sort_head(const Plan& pl, const std::int32_t* buckets, HeadBuffers& hb,
                 Workspace* ws) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded, rounds = pl.rounds;
    const auto nb = static_cast<std::int32_t>(pl.layout.num_buckets());
    ScratchArray<std::int32_t> slot_buckets(ws, pl.slots);
    for (Index r = 0; r < rounds; ++r)
      for (Index t = 0; t < tp; ++t)
        slot_buckets[at(r * tp + t)] = t < len ? buckets[r * len + t] : nb;
    ScratchArray<Index> order(ws, pl.slots);
    std::vector<Index> counts;
    hb.inverse.resize(ws, pl.slots);
    lsh_counting_sort(slot_buckets.data(), rounds, tp, Index{nb} + 1, order.data(),
                      hb.inverse.data(), counts);
    hb.pos.resize(ws, pl.slots);
    for (Index s = 0; s < pl.slots; ++s) hb.pos[at(s)] = order[at(s)] - (s / tp) * tp;
    hb.q.resize(ws, dh, pl.slots);
    hb.v.resize(ws, dh, pl.slots);
    hb.key_scale.resize(ws, pl.slots, 1);
    hb.o.resize(ws, dh, pl.slots);
    hb.lse.resize(ws, pl.slots, 1);
  }

  /// Places [s0, s1) of head item hi: q_s = qk_pos(s), v_s = v_pos(s), key_scale_s =
  /// lsh_key_scale(qk_pos(s)); zero at padded places (their keys are masked, their queries'
  /// outputs discarded). The scattered columns are prefetched kPrefetchDistance places ahead.
  void gather_places(const Plan& pl, const ConstMatrixRef<S>& qk, const ConstMatrixRef<S>& v,
                     Index hi, HeadBuffers& hb, Index s0, Index s1) const {
    const Index dh = cfg_.head_size, len = pl.length;
    const auto x = head_block(qk, pl, pl.batch_of(hi), pl.head_of(hi));
    const auto xv = head_block(v, pl, pl.batch_of(hi), pl.head_of(hi));
    for (Index s = s0; s < s1; ++s) {
      if (s + kPrefetchDistance < s1) {
        const Index ahead = hb.pos[at(s + kPrefetchDistance)];
        if (ahead < len) {
          detail::prefetch_read(x.col(ahead).data(), dh);
          detail::prefetch_read(xv.col(ahead).data(), dh);
        }
      }
      const Index t = hb.pos[at(s)];
      if (t < len) {
        hb.q.map().col(s) = x.col(t);
        hb.v.map().col(s) = xv.col(t);
        hb.key_scale.map()(s) = detail::lsh_key_scale<S>(x.col(t));
      } else {
        hb.q.map().col(s).setZero();
        hb.v.map().col(s).setZero();
        hb.key_scale.map()(s) = 0;
      }
    }
  }

  /// The window of chunk c: chunks c - before .. c + after, circular over the R*Tp places.
  /// `keys` receives its keys (Dh x W*C, k = q * key scale). When the window does not wrap
  /// (returns true) its values and positions are the contiguous slices of hb.v and hb.pos from
  /// place (c - before) * C; otherwise they are copied into `values` and `kpos`.
  struct Window {
    Matrix<S> keys, values;
    std::vector<Index> kpos;
  };
  bool gather_window(const Plan& pl, const HeadBuffers& hb, Index c, Window& w) const {
    const Index cl = pl.chunk, wl = pl.window * cl, first = c - cfg_.chunks_before;
    w.keys.resize(cfg_.head_size, wl);
    if (first >= 0 && c + cfg_.chunks_after < pl.chunks) {
      w.keys.noalias() = hb.q.map().middleCols(first * cl, wl) *
                         hb.key_scale.map().col(0).segment(first * cl, wl).asDiagonal();
      return true;
    }
    w.values.resize(cfg_.head_size, wl);
    w.kpos.resize(at(wl));
    for (Index k = 0; k < pl.window; ++k) {
      const Index src = adjacent_chunk(c, k - cfg_.chunks_before, pl.chunks) * cl;
      w.keys.middleCols(k * cl, cl).noalias() =
          hb.q.map().middleCols(src, cl) * hb.key_scale.map().col(0).segment(src, cl).asDiagonal();
      w.values.middleCols(k * cl, cl) = hb.v.map().middleCols(src, cl);
      std::copy_n(hb.pos.begin() + src, cl, w.kpos.begin() + k * cl);
    }
    return false;
  }

  /// Per-place outputs o and logsumexps lse of every chunk of the heads of a wave.
  void attend_forward(const Plan& pl, const Context& ctx, Index h0, Index nh,
                      std::vector<HeadBuffers>& bufs) const {
    const Index groups = (pl.chunks + kChunksPerItem - 1) / kChunksPerItem;
    const Index cl = pl.chunk, wl = pl.window * cl, chunks_per_round = pl.padded / cl;
    parallel_for(nh * groups, [&](Index item) {
      const Index i = item / groups, g = item % groups;
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      HeadBuffers& hb = bufs[at(i)];
      ChunkAttentionWorkspace<S>& ws = thread_chunk_workspace<S>(cl, wl);
      thread_local Window w;  // kept by the thread: work items allocate nothing
      const Index c_end = std::min(pl.chunks, (g + 1) * kChunksPerItem);
      for (Index c = g * kChunksPerItem; c < c_end; ++c) {
        const Index first = (c - cfg_.chunks_before) * cl;
        const bool slices = gather_window(pl, hb, c, w);
        chunk_attention_forward<S>(
            hb.q.map().middleCols(c * cl, cl), w.keys,
            slices ? ConstMatrixRef<S>(hb.v.map().middleCols(first, wl))
                   : ConstMatrixRef<S>(w.values),
            hb.pos.data() + c * cl, slices ? hb.pos.data() + first : w.kpos.data(),
            options(pl, ctx, b, pl.heads.global(j), c / chunks_per_round),
            hb.o.map().middleCols(c * cl, cl), hb.lse.map().data() + c * cl, ws);
      }
    });
  }

  /// Unsorts and combines the rounds at positions [t0, t1) of head item hi into a; with da,
  /// also turns hb.o / hb.lse of those positions' places into the gradients of the per-slot
  /// outputs and logsumexps (in place). Padded positions (t >= T) only get zero gradients.
  ///   forward:   w_r = exp(lse_r - logsumexp_r' lse_r') (softmax over rounds),  o = sum_r w_r o_r
  ///   backward:  do_r = w_r do,   dlse_r = w_r (do . o_r - do . o)
  void combine_positions(const Plan& pl, Index hi, HeadBuffers& hb, const ConstMatrixRef<S>* da,
                         MatrixRef<S> a, Index t0, Index t1) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded, rounds = pl.rounds;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi);
    Index place[kLshMaxHashes];
    S w[kLshMaxHashes];
    for (Index t = t0; t < std::min(t1, len); ++t) {
      if (t + kPrefetchDistance < std::min(t1, len)) {
        for (Index r = 0; r < rounds; ++r)
          detail::prefetch_read(
              hb.o.map().col(hb.inverse[at(r * tp + t + kPrefetchDistance)]).data(), dh);
      }
      S mx = -std::numeric_limits<S>::infinity();
      for (Index r = 0; r < rounds; ++r) {
        place[r] = hb.inverse[at(r * tp + t)];
        mx = std::max(mx, hb.lse.map()(place[r]));
      }
      // w_r = exp(lse_r - mx) / sum_r' exp(lse_r' - mx): the same as exp(lse_r - L), but
      // without rounding L, whose magnitude reaches 1e5 when a slot sees only itself (then, in
      // float, exp(lse_r - L) would be off by ~0.4%).
      S sum = 0;
      for (Index r = 0; r < rounds; ++r) {
        w[r] = std::exp(hb.lse.map()(place[r]) - mx);
        sum += w[r];
      }
      for (Index r = 0; r < rounds; ++r) w[r] /= sum;
      auto out = a.col(b * len + t).segment(j * dh, dh);
      out = w[0] * hb.o.map().col(place[0]);
      for (Index r = 1; r < rounds; ++r) out += w[r] * hb.o.map().col(place[r]);
      if (da != nullptr) {
        const auto g = da->col(b * len + t).segment(j * dh, dh);
        const S g_dot_o = g.dot(out);
        for (Index r = 0; r < rounds; ++r) {
          const S g_dot_or = g.dot(hb.o.map().col(place[r]));
          hb.lse.map()(place[r]) = w[r] * (g_dot_or - g_dot_o);
          hb.o.map().col(place[r]) = w[r] * g;
        }
      }
    }
    if (da != nullptr) {  // padded queries receive no gradient
      for (Index r = 0; r < rounds; ++r) {
        for (Index t = std::max(t0, len); t < t1; ++t) {
          const Index s = hb.inverse[at(r * tp + t)];
          hb.o.map().col(s).setZero();
          hb.lse.map()(s) = 0;
        }
      }
    }
  }

  /// Backward of every chunk of the heads of a wave, given hb.o = d(o) and hb.lse = d(lse):
  /// the gradients of the queries replace d(o) in hb.o chunk by chunk (each chunk's own places;
  /// the kernel reads d(o) before it writes dq), and hb.dk / hb.dv accumulate over the windows
  /// that contain each place.
  ///
  /// Determinism without per-window copies: the chunks c < full = (chunks / W) * W with
  /// c % W == p form pass p; their windows are disjoint runs of W chunks, so one pass
  /// accumulates into dk / dv in parallel without two chunks touching the same place. The
  /// remaining chunks run one after another in a last pass. Every place therefore receives its
  /// contributions in the same order for any thread count.
  void attend_backward(const Plan& pl, const Context& ctx, Index h0, Index nh,
                       std::vector<HeadBuffers>& bufs) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, wl = pl.window * cl;
    const Index chunks_per_round = pl.padded / cl;
    parallel_for(nh, [&](Index i) {
      HeadBuffers& hb = bufs[at(i)];
      hb.dk.resize(ctx.workspace, dh, pl.slots);
      hb.dv.resize(ctx.workspace, dh, pl.slots);
      hb.dk.map().setZero();
      hb.dv.map().setZero();
    });
    struct Scratch {  // one per thread, kept (thread_local below): work items allocate nothing
      ChunkAttentionWorkspace<S> ws;
      Window w;
      Matrix<S> dk, dv;  // a wrapped window's gradients, before they are added to their places
    };
    auto chunk_backward = [&](Index i, Index c, Scratch& sc) {
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      HeadBuffers& hb = bufs[at(i)];
      const ChunkAttentionOptions opts =
          options(pl, ctx, b, pl.heads.global(j), c / chunks_per_round);
      const Index first = c - cfg_.chunks_before;
      if (gather_window(pl, hb, c, sc.w)) {  // consecutive places: accumulate in place
        chunk_attention_backward<S>(
            hb.q.map().middleCols(c * cl, cl), sc.w.keys, hb.v.map().middleCols(first * cl, wl),
            hb.pos.data() + c * cl, hb.pos.data() + first * cl, opts,
            hb.o.map().middleCols(c * cl, cl), hb.lse.map().data() + c * cl,
            hb.o.map().middleCols(c * cl, cl), hb.dk.map().middleCols(first * cl, wl),
            hb.dv.map().middleCols(first * cl, wl), sc.ws);
        return;
      }
      sc.dk.setZero(dh, wl);
      sc.dv.setZero(dh, wl);
      chunk_attention_backward<S>(hb.q.map().middleCols(c * cl, cl), sc.w.keys, sc.w.values,
                                  hb.pos.data() + c * cl, sc.w.kpos.data(), opts,
                                  hb.o.map().middleCols(c * cl, cl), hb.lse.map().data() + c * cl,
                                  hb.o.map().middleCols(c * cl, cl), sc.dk, sc.dv, sc.ws);
      for (Index w = 0; w < pl.window; ++w) {
        const Index dst = adjacent_chunk(c, w - cfg_.chunks_before, pl.chunks);
        hb.dk.map().middleCols(dst * cl, cl) += sc.dk.middleCols(w * cl, cl);
        hb.dv.map().middleCols(dst * cl, cl) += sc.dv.middleCols(w * cl, cl);
      }
    };
    const Index full = pl.chunks / pl.window * pl.window, per_pass = full / pl.window;
    const Index groups = (per_pass + kChunksPerItem - 1) / kChunksPerItem;
    for (Index p = 0; p < pl.window && per_pass > 0; ++p) {
      parallel_for(nh * groups, [&](Index item) {
        const Index i = item / groups, g = item % groups;
        thread_local Scratch sc;
        const Index k_end = std::min(per_pass, (g + 1) * kChunksPerItem);
        for (Index k = g * kChunksPerItem; k < k_end; ++k) chunk_backward(i, k * pl.window + p, sc);
      });
    }
    if (full < pl.chunks) {
      parallel_for(nh, [&](Index i) {
        thread_local Scratch sc;
        for (Index c = full; c < pl.chunks; ++c) chunk_backward(i, c, sc);
      });
    }
  }

  /// Gathers the gradients at positions [t0, t1) of head item hi back from their places,
  /// summing the rounds in order, and through the key normalisation: dqk = dq + (dk/dqk)^T dk,
  /// and dv.
  void reduce_positions(const Plan& pl, Index hi, const HeadBuffers& hb,
                        const ConstMatrixRef<S>& qk, MatrixRef<S>& dqk, MatrixRef<S>& dv, Index t0,
                        Index t1) const {
    const Index dh = cfg_.head_size, len = pl.length, tp = pl.padded;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi), end = std::min(t1, len);
    Vector<S> dk(dh);
    for (Index t = t0; t < end; ++t) {
      if (t + kPrefetchDistance < end) {
        for (Index r = 0; r < pl.rounds; ++r) {
          const Index ahead = hb.inverse[at(r * tp + t + kPrefetchDistance)];
          detail::prefetch_read(hb.o.map().col(ahead).data(), dh);
          detail::prefetch_read(hb.dk.map().col(ahead).data(), dh);
          detail::prefetch_read(hb.dv.map().col(ahead).data(), dh);
        }
      }
      auto dq_t = dqk.col(b * len + t).segment(j * dh, dh);
      auto dv_t = dv.col(b * len + t).segment(j * dh, dh);
      dq_t.setZero();
      dv_t.setZero();
      dk.setZero();
      for (Index r = 0; r < pl.rounds; ++r) {
        const Index s = hb.inverse[at(r * tp + t)];
        dq_t += hb.o.map().col(s);  // d(q) by now
        dk += hb.dk.map().col(s);
        dv_t += hb.dv.map().col(s);
      }
      detail::lsh_normalize_key_backward<S>(qk.col(b * len + t).segment(j * dh, dh), dk, dq_t);
    }
  }
  /// What one head of the dense path (T <= C) needs: its normalised keys, the positions
  /// 0 .. T-1 and a workspace for the whole sequence.
  struct DenseHead {
    Matrix<S> keys;
    std::vector<Index> pos;
    ChunkAttentionWorkspace<S> ws;

    template <class QK>
    DenseHead(const QK& qk, Index len) : keys(qk.rows(), len), pos(at(len)), ws(len, len) {
      detail::lsh_normalize_keys<S>(qk, keys);
      for (Index t = 0; t < len; ++t) pos[at(t)] = t;
    }
  };

  /// T <= C: dense shared-QK attention over the whole sequence, one round, no hashing.
  void dense_forward(const Plan& pl, ConstMatrixRef<S> qk, ConstMatrixRef<S> v, MatrixRef<S> a,
                     const Context& ctx) const {
    parallel_for(pl.num_head_items, [&](Index hi) {
      const Index b = pl.batch_of(hi), j = pl.head_of(hi), h = pl.heads.global(j);
      const auto x = head_block(qk, pl, b, j);
      DenseHead d(x, pl.length);
      chunk_attention_forward<S>(x, d.keys, head_block(v, pl, b, j), d.pos.data(), d.pos.data(),
                                 options(pl, ctx, b, h, 0), head_block(a, pl, b, j),
                                 static_cast<S*>(nullptr), d.ws);
    });
  }

  void dense_backward(const Plan& pl, ConstMatrixRef<S> qk, ConstMatrixRef<S> v,
                      const ConstMatrixRef<S>& da, MatrixRef<S> a, MatrixRef<S> dqk,
                      MatrixRef<S> dv, const Context& ctx) const {
    const Index dh = cfg_.head_size, len = pl.length;
    parallel_for(pl.num_head_items, [&](Index hi) {
      const Index b = pl.batch_of(hi), j = pl.head_of(hi), h = pl.heads.global(j);
      const auto x = head_block(qk, pl, b, j);
      const auto xv = head_block(v, pl, b, j);
      DenseHead d(x, len);
      Matrix<S> dk = Matrix<S>::Zero(dh, len);
      auto dq = head_block(dqk, pl, b, j);
      auto dvb = head_block(dv, pl, b, j);
      dvb.setZero();
      // One pass: the recomputed output a (no round combination depends on it here) and the
      // gradients of queries, keys and values.
      chunk_attention_forward_backward<S>(x, d.keys, xv, d.pos.data(), d.pos.data(),
                                          options(pl, ctx, b, h, 0), head_block(da, pl, b, j),
                                          static_cast<const S*>(nullptr), head_block(a, pl, b, j),
                                          dq, dk, dvb, d.ws);
      // k = normalise(qk)  =>  dqk += (dk/dqk)^T dk
      for (Index t = 0; t < len; ++t)
        detail::lsh_normalize_key_backward<S>(x.col(t), dk.col(t), dq.col(t));
    });
  }

  Config cfg_;
  Index hidden_;
  SlotId qk_slot_, v_slot_;
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class LshAttention<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
void LshAttention<S>::compute_buckets(const Parameters<S>& params, const ProjectionInput<S>& input,
                                      const Context& ctx, BucketTape& tape) const {
  const char* where = "LshAttention::compute_buckets";
  const Plan pl = plan(where, input, ctx, all_heads());
  if (pl.dense) {
    tape.clear();
    return;
  }
  Scratch<S> qk(ctx.workspace, out_features(), input.cols());
  detail::project_heads<S>(params, all_heads(), cfg_.head_size, input, {{qk_slot_, qk.map()}},
                           ctx.workspace);
  tape.resize(pl.batch, cfg_.num_heads, pl.rounds, pl.length);
  hash_heads(pl, qk.map(), rotations(pl, ctx), 0, pl.num_head_items, tape.data.data());
}

template <class S>
void LshAttention<S>::forward(const Parameters<S>& params, const ProjectionInput<S>& input,
                              MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "LshAttention::forward";
  const Plan pl = plan(where, input, ctx, heads);
  const Index n = input.cols(), rows = pl.heads.count * cfg_.head_size;
  check_shape(where, "a", a.rows(), a.cols(), rows, n);
  // qk = W_qk xn, v = W_v xn: this group's heads
  Scratch<S> qk_buf(ctx.workspace, rows, n), v_buf(ctx.workspace, rows, n);
  auto &qk = qk_buf.map(), &v = v_buf.map();
  detail::project_heads<S>(params, heads, cfg_.head_size, input, {{qk_slot_, qk}, {v_slot_, v}},
                           ctx.workspace);
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
    if (record != nullptr) hash_heads(pl, qk, rot, h0, nh, record);
    sort_and_gather(pl, qk, v, buckets, h0, nh, bufs, ctx.workspace);
    attend_forward(pl, ctx, h0, nh, bufs);
    for_position_blocks(pl, nh, [&](Index i, Index t0, Index t1) {
      combine_positions(pl, h0 + i, bufs[at(i)], nullptr, a, t0, t1);
    });
  }
}

template <class S>
void LshAttention<S>::backward(Parameters<S>& params, const ProjectionInput<S>& input,
                               ConstMatrixRef<S> da, const ProjectionInputGrad<S>& dinput,
                               MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "LshAttention::backward";
  const Plan pl = plan(where, input, ctx, heads);
  const Index n = input.cols(), rows = pl.heads.count * cfg_.head_size;
  dinput.check_matches(where, input);
  detail::check_core_backward_buffers<S>(where, da, dinput.dx(), a, rows, hidden_, n);
  Workspace* ws = ctx.workspace;
  Scratch<S> qk_buf(ws, rows, n), v_buf(ws, rows, n);
  auto &qk = qk_buf.map(), &v = v_buf.map();
  detail::project_heads<S>(params, heads, cfg_.head_size, input, {{qk_slot_, qk}, {v_slot_, v}},
                           ws);
  Scratch<S> dqk_buf, dv_buf;
  if (pl.dense) {
    dqk_buf.resize(ws, rows, n);
    dv_buf.resize(ws, rows, n);
    dense_backward(pl, qk, v, da, a, dqk_buf.map(), dv_buf.map(), ctx);
  } else {
    const std::int32_t* buckets = replayed_buckets(where, pl, ctx);
    std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
    for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
      const Index nh = std::min(pl.wave, pl.num_head_items - h0);
      const bool last_wave = h0 + nh == pl.num_head_items;
      sort_and_gather(pl, qk, v, buckets, h0, nh, bufs, ws);
      // Peak memory of long inputs (one wave): v, by position, is no longer read.
      if (last_wave) v_buf.reset();
      attend_forward(pl, ctx, h0, nh, bufs);
      // a, and in place: o -> d(o), lse -> d(lse) of every sorted place.
      for_position_blocks(pl, nh, [&](Index i, Index t0, Index t1) {
        combine_positions(pl, h0 + i, bufs[at(i)], &da, a, t0, t1);
      });
      attend_backward(pl, ctx, h0, nh, bufs);  // d(o) -> d(q) in place
      if (last_wave) {                         // the sorted queries and values are no longer read
        for (Index i = 0; i < nh; ++i) {
          bufs[at(i)].q.reset();
          bufs[at(i)].v.reset();
        }
      }
      if (dqk_buf.cols() == 0) {  // allocated once, at the first wave's reduction
        dqk_buf.resize(ws, rows, n);
        dv_buf.resize(ws, rows, n);
      }
      MatrixRef<S> dqk = dqk_buf.map(), dv = dv_buf.map();
      for_position_blocks(pl, nh, [&](Index i, Index t0, Index t1) {
        reduce_positions(pl, h0 + i, bufs[at(i)], qk, dqk, dv, t0, t1);
      });
    }
  }
  qk_buf.reset();  // the projections and the per-head buffers are no longer read
  v_buf.reset();
  // qk = W_qk x, v = W_v x  =>  dW_qk += dqk x^T, dW_v += dv x^T, dx += W_qk^T dqk + W_v^T dv
  // (the rows of this group's heads).
  detail::project_heads_backward<S>(params, heads, cfg_.head_size, input,
                                    {{qk_slot_, dqk_buf.map()}, {v_slot_, dv_buf.map()}}, dinput,
                                    ws);
}

}  // namespace reformer
