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
// shapes; inside a wave every phase is a parallel_for over fixed items (blocks of positions, or
// blocks of sorted chunks of one round), each writing its own slice, so results are bitwise
// identical for any thread count, and a single long head still keeps every thread busy.
// A block of chunks copies its queries, keys and values, and those of the chunks its windows
// reach, from the Dh x T matrices once (prefetching the scattered columns ahead), so every chunk
// of the block reads its window as a contiguous slice. Nothing of size Dh per sorted place is
// kept: the rounds are combined into a as each round's blocks finish (a running softmax over
// the rounds, attend_rounds), and backward recomputes a (for da . a per position, and for the
// output projection's gradient), then adds each block's gradients straight into the by-position
// gradients of qk and v (attend_forward_backward explains the order). The last round's blocks
// run their backward right after their forward, from the probabilities they have just computed.
// Per head the buffers are O(R*Tp) scalars and indices; per thread one block's copy
// (O((block + window) * C * Dh)) and O(C^2) scores. No T x T and no per-place (Dh x R*T) matrix
// is formed. The one all-chunks buffer is the backward's store of the probabilities of every chunk
// of the rounds before the last ((R-1)*Tp x W*C per head): the recomputing forward writes them
// and the chunk backward takes them instead of recomputing the scores and softmax, only while a
// wave's store fits tuning::kLshStoredProbabilityScalars (Plan::store_probs).
//
// Kept activations (the optional keeping members, layers/attention_sublayer.hpp): when a caller
// gives memory for it, forward_keeping() also keeps qk, v and the per-place lse with the
// per-position top and total of the rounds' softmax. backward_from_kept() then skips the
// projections, the hashing and the whole chunk forward: it sorts the replayed buckets again
// (cheap), takes a_dot = da . a from a, and runs the same chunk backward (in the same round
// order, so both paths give the same bits). Per head and sequence
// that is 2 T Dh + R*Tp + 2 Tp scalars; short sequences (T <= C) keep nothing (kept_bytes 0).
#include "reformer/core/checked_size.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/growing_matrix.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/prefetch.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/detail/head_projection.hpp"
#include "reformer/layers/detail/key_padding.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/lsh_bucketing.hpp"
#include "reformer/layers/projection_input.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <array>
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

  /// Matrices forward_keeping() keeps, numbered first .. first + kKeptMatrices - 1: qk, v
  /// (heads.count*Dh x N) and the softmax statistics (R*Tp + 2 Tp per head item: lse, top,
  /// total).
  static constexpr std::size_t kKeptMatrices = 3;

  /// Bytes forward_keeping() keeps for `heads` and N = n columns under ctx (see the file
  /// comment); 0 when the sequence is not hashed (T <= C), which keeps nothing.
  std::size_t kept_bytes(Index n, const Context& ctx, HeadRange heads = HeadRange::all()) const;

  /// forward(), bitwise, also keeping its activations in kept matrices first .. (above).
  /// InvalidArgument for a sequence that is not hashed.
  void forward_keeping(const Parameters<S>& params, const ProjectionInput<S>& input, MatrixRef<S> a,
                       const Context& ctx, HeadRange heads, KeptActivations<S>& kept,
                       std::size_t first) const;

  /// backward() from what forward_keeping() kept (the same context, heads and `first`), with
  /// a the output that forward wrote: the same gradients, bitwise, without recomputing the
  /// forward pass. The kept matrices stay as they are.
  void backward_from_kept(Parameters<S>& params, const ProjectionInput<S>& input,
                          ConstMatrixRef<S> da, const ProjectionInputGrad<S>& dinput,
                          ConstMatrixRef<S> a, const Context& ctx, HeadRange heads,
                          KeptActivations<S>& kept, std::size_t first) const;

 private:
  /// Shapes of one call, derived from the inputs only (never from the thread count).
  struct Plan {
    Index batch = 1, length = 0, padded = 0, rounds = 1, chunk = 1;
    Index slots = 0;             // R * Tp sorted places per head
    Index chunks = 0;            // slots / C
    Index chunks_per_round = 0;  // Tp / C
    Index window = 1;            // chunks attended per chunk: before + 1 + after
    Index block = 1;             // chunks per block (the work item of the attention phases)
    Index blocks_per_round = 0;
    HeadRange heads;           // the heads of this call
    Index num_head_items = 0;  // batch * heads.count; item hi = (b, local head j)
    Index wave = 1;            // head items processed together
    // backward: the recomputing forward stores the probabilities of every chunk of the rounds
    // before the last for the chunk backward (when the wave's store fits
    // tuning::kLshStoredProbabilityScalars), each chunk's Ck x C matrix probs_stride scalars
    // after the previous one (64-byte aligned); the last round's chunks run their backward
    // straight after their forward (attend_forward_backward) and need no store
    bool store_probs = false;
    Index stored_chunks = 0;  // (R - 1) * Tp / C
    Index probs_stride = 0;
    LshBucketLayout layout;
    bool dense = false;
    detail::KeyPadding padding;  // ctx.mask, checked; any(): the pad bucket NB is in use

    Index batch_of(Index hi) const { return hi / heads.count; }
    Index head_of(Index hi) const { return hi % heads.count; }  // local head j
  };

  /// Per-(sequence, head) state of one call. Sorted places s in [0, R*Tp); place s holds
  /// position pos[s] (>= T: padding).
  struct HeadBuffers {
    ScratchArray<Index> pos;  // sorted place -> position
    Scratch<S> key_scale;     // Tp x 1: the key of position t is qk_t * key_scale_t (0 if
                              // padded)
    Scratch<S> lse;           // R*Tp x 1: the logsumexp of each place's query
    Scratch<S> top, total;    // Tp x 1: per position, the largest lse over the rounds so
                              // far and sum_r exp(lse_r - top) (the rounds' softmax)
    Scratch<S> a_dot;         // backward, Tp x 1: da_t . a_t
    Scratch<S> probs;         // backward with pl.store_probs, probs_stride x stored_chunks:
                              // column c holds chunk c's probabilities (Ck x C) from
                              // attend_rounds
  };

  /// A thread's copy of one block of sorted chunks with the chunks its windows reach (the
  /// extended range: chunks_before chunks before the block, its own, chunks_after after it).
  /// Kept by the thread (ThreadLocalBuffer, core/thread_buffers.hpp): once grown to the largest
  /// block, work items allocate nothing, whatever the head sizes of the layers using it.
  struct BlockScratch {
    std::vector<Index> chunks;          // the chunks of the extended range, in window order
    std::vector<Index> pos;             // E*C positions of its places (>= T: padding)
    GrowingMatrix<S> q, k, v;           // Dh x E*C queries (qk), keys (qk * key scale), values
    GrowingMatrix<S> dk, dv;            // Dh x E*C gradients of those keys and values
    GrowingMatrix<S> dq;                // Dh x E*C: the block's own columns, its queries' gradients
    GrowingMatrix<S> o;                 // Dh x C one chunk's outputs; backward: d(o)
    Vector<S> shift;                    // C: dlse - delta of one chunk's queries (backward)
    GrowingMatrix<S> p;                 // W*C x C one chunk's probabilities (last round, backward)
    GrowingMatrix<S> wk, wv, wdk, wdv;  // a window that is not a slice of the range (few chunks)
    std::vector<Index> wpos;
  };
  /// The sizes a BlockScratch is reserved for: {Dh x E*C (queries, keys, values), E*C (positions),
  /// Dh x C (outputs), C (softmax shifts), Dh x E*C (query, key and value gradients), W*C x C
  /// (one chunk's probabilities)}; 0 = not needed.
  struct BlockScratchKind {
    using Buffer = BlockScratch;
    static constexpr std::size_t kSizes = 6;
    static void grow(BlockScratch& sc, const std::array<Index, kSizes>& n) {
      sc.q.reserve(n[0]);
      sc.k.reserve(n[0]);
      sc.v.reserve(n[0]);
      if (sc.pos.size() < at(n[1])) sc.pos.resize(at(n[1]));
      sc.o.reserve(n[2]);
      if (sc.shift.size() < n[3]) sc.shift.setZero(n[3]);
      sc.dk.reserve(n[4]);
      sc.dv.reserve(n[4]);
      sc.dq.reserve(n[4]);
      sc.p.reserve(n[5]);
    }
  };
  using ThreadBlockScratch = ThreadLocalBuffer<BlockScratchKind>;
  /// Columns of the largest extended range: a thread's BlockScratch grows to it at its first
  /// block, so later blocks (in any step) find their pages in.
  Index block_columns(const Plan& pl) const {
    return (pl.block + cfg_.chunks_before + cfg_.chunks_after) * pl.chunk;
  }

  // The kept matrices, after `first` (forward_keeping).
  enum KeptMatrix : std::size_t { kKeptQk, kKeptV, kKeptStatistics };

  // forward(); with `kept`, forward_keeping() (matrices from `first`).
  void forward_pass(const char* where, const Parameters<S>& params, const ProjectionInput<S>& input,
                    MatrixRef<S> a, const Context& ctx, HeadRange heads, KeptActivations<S>* kept,
                    std::size_t first) const;

  // InvalidArgument naming `where` unless the call's sequences are hashed (the keeping members).
  void require_hashed(const char* where, const Plan& pl) const {
    REFORMER_REQUIRE(!pl.dense, InvalidArgument, where, "T = ", pl.length,
                     " <= chunk_length = ", cfg_.chunk_length,
                     ": a sequence that is not hashed keeps nothing (kept_bytes() is 0)");
  }

  // dqk, dv = 0, in parallel blocks of positions (they gather every block's contributions).
  static void zero_by_blocks(MatrixRef<S> dqk, MatrixRef<S> dv) {
    const Index n = dqk.cols(), blocks = (n + kPositionsPerItem - 1) / kPositionsPerItem;
    parallel_for(blocks, [&](Index z) {
      const Index c0 = z * kPositionsPerItem, nc = std::min(kPositionsPerItem, n - c0);
      dqk.middleCols(c0, nc).setZero();
      dv.middleCols(c0, nc).setZero();
    });
  }

  /// da_t . u over the rows of local head j, for column `col` of da (u: Dh contiguous
  /// scalars). Every dot product of da with an output, kept or recomputed, goes through here,
  /// so both backward paths round alike.
  S head_dot(const ConstMatrixRef<S>& da, Index col, Index j, const S* u) const {
    const Index dh = cfg_.head_size;
    return da.col(col).segment(j * dh, dh).dot(Eigen::Map<const Vector<S>>(u, dh));
  }

  /// Positions (or sorted places) per parallel work item of the per-head phases.
  static constexpr Index kPositionsPerItem = tuning::kLshPositionsPerItem;
  /// How many columns ahead the scattered gathers prefetch.
  static constexpr Index kPrefetchDistance = tuning::kLshPrefetchDistance;
  /// Scalars of per-head buffers a wave may hold (bounds the peak memory for long inputs).
  static constexpr Index kWaveScalars = tuning::kLshWaveScalars;
  /// Work items a wave aims for (more heads per wave only help short sequences).
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
    p.chunks_per_round = p.padded / p.chunk;
    p.window = cfg_.chunks_before + 1 + cfg_.chunks_after;
    // Every other block's extended ranges must be disjoint (for_backward_blocks).
    p.block = std::max<Index>(tuning::kLshChunksPerItem, cfg_.chunks_before + cfg_.chunks_after);
    p.blocks_per_round = (p.chunks_per_round + p.block - 1) / p.block;
    p.layout = bucket_layout(p.length);
    // Per head: positions (Index) and lse per place; key scale, top, total and a_dot per
    // position, in scalars.
    const Index index_scalars = static_cast<Index>(sizeof(Index) / sizeof(S));
    const Index per_head = (index_scalars + 1) * p.slots + 4 * p.padded;
    // Heads per wave: enough blocks to keep the threads busy (kWaveItems), within the memory
    // budget (kWaveScalars). Depends on the shapes only.
    const Index wanted = (kWaveItems + p.blocks_per_round - 1) / p.blocks_per_round;
    p.wave = std::max<Index>(1, std::min({p.num_head_items, wanted, kWaveScalars / per_head}));
    const Index align = static_cast<Index>(64 / sizeof(S));
    p.probs_stride = (p.window * p.chunk * p.chunk + align - 1) / align * align;
    p.stored_chunks = (p.rounds - 1) * p.chunks_per_round;
    p.store_probs = p.stored_chunks > 0 && p.wave * p.stored_chunks * p.probs_stride <=
                                               tuning::kLshStoredProbabilityScalars;
    return p;
  }

  /// Offset of (b, global head of local head j, round 0, position 0) in a [B, H, R, T] tape.
  std::size_t bucket_offset(const Plan& pl, Index b, Index j) const {
    const Index h = pl.heads.global(j);
    return static_cast<std::size_t>(((b * cfg_.num_heads + h) * pl.rounds) * pl.length);
  }

  /// The rotations of every (head of the range, round), side by side (drawn from the
  /// workspace): block j * R + r of rotation_columns() columns for local head j.
  Scratch<S> rotations(const Plan& pl, const Context& ctx) const {
    const Index cols = pl.layout.rotation_columns();
    Scratch<S> rot(ctx.workspace, cfg_.head_size, pl.heads.count * pl.rounds * cols);
    parallel_for(pl.heads.count * pl.rounds, [&](Index i) {
      const Index h = pl.heads.global(i / pl.rounds);
      lsh_draw_rotations<S>(lsh_rotation_key(ctx, h, i % pl.rounds), pl.layout,
                            rot.map().middleCols(i * cols, cols));
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
  void hash_heads(const Plan& pl, ConstMatrixRef<S> qk, const Scratch<S>& rot, Index h0, Index nh,
                  std::int32_t* tape) const {
    const Index cols = pl.layout.rotation_columns();
    const Index blocks = (pl.length + kPositionsPerItem - 1) / kPositionsPerItem;
    parallel_for(nh * pl.rounds * blocks, [&](Index item) {
      const Index hi = h0 + item / (pl.rounds * blocks);
      const Index r = item / blocks % pl.rounds, t0 = (item % blocks) * kPositionsPerItem;
      const Index nt = std::min(kPositionsPerItem, pl.length - t0);
      const Index b = pl.batch_of(hi), j = pl.head_of(hi);
      std::int32_t* out = tape + bucket_offset(pl, b, j) + r * pl.length + t0;
      lsh_hash<S>(head_block(qk, pl, b, j).middleCols(t0, nt),
                  rot.map().middleCols((j * pl.rounds + r) * cols, cols), pl.layout, out);
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

  /// Sorts the slots of every head item of a wave by bucket (the positions of the sorted
  /// places) and computes the key scale of every position. `tape` holds
  /// [B, H, R, T] buckets; padded positions get the pad bucket NB, so they sort last in their
  /// round.
  void sort_heads(const Plan& pl, ConstMatrixRef<S> qk, const std::int32_t* tape, Index h0,
                  Index nh, std::vector<HeadBuffers>& bufs, Workspace* ws) const {
    parallel_for(nh, [&](Index i) {
      const Index b = pl.batch_of(h0 + i), j = pl.head_of(h0 + i);
      sort_head(pl, tape + bucket_offset(pl, b, j), bufs[at(i)], ws);
    });
    for_position_blocks(pl, nh, [&](Index i, Index t0, Index t1) {
      const auto x = head_block(qk, pl, pl.batch_of(h0 + i), pl.head_of(h0 + i));
      S* scale = bufs[at(i)].key_scale.map().data();
      // x's columns are H*Dh scalars apart: prefetched ahead, as the hardware does not.
      const Index end = std::min(t1, pl.length);
      for (Index t = t0; t < t1; ++t) {
        if (t + kPrefetchDistance < end)
          detail::prefetch_read(x.col(t + kPrefetchDistance).data(), x.rows());
        scale[t] = t < pl.length ? detail::lsh_key_scale<S>(x.col(t)) : S(0);
      }
    });
  }

  /// The sort of one head item (`buckets`: R x T, row r = round r); sizes its buffers (drawn
  /// from ws).
  void sort_head(const Plan& pl, const std::int32_t* buckets, HeadBuffers& hb,
                 Workspace* ws) const {
    const Index len = pl.length, tp = pl.padded, rounds = pl.rounds;
    const auto nb = static_cast<std::int32_t>(pl.layout.num_buckets());
    ScratchArray<std::int32_t> slot_buckets(ws, pl.slots);
    for (Index r = 0; r < rounds; ++r)
      for (Index t = 0; t < tp; ++t)
        slot_buckets[at(r * tp + t)] = t < len ? buckets[r * len + t] : nb;
    ScratchArray<Index> order(ws, pl.slots);
    ScratchArray<Index> inverse(ws, pl.slots);  // the sort's other output, not needed later
    ScratchArray<Index> counts(ws, lsh_counting_sort_scratch(tp, Index{nb} + 1));
    lsh_counting_sort(slot_buckets.data(), rounds, tp, Index{nb} + 1, order.data(), inverse.data(),
                      counts.data());
    hb.pos.resize(ws, pl.slots);
    for (Index s = 0; s < pl.slots; ++s) hb.pos[at(s)] = order[at(s)] - (s / tp) * tp;
    hb.key_scale.resize(ws, tp, 1);
    hb.lse.resize(ws, pl.slots, 1);
    hb.top.resize(ws, tp, 1);
    hb.total.resize(ws, tp, 1);
  }

  /// Copies the extended range of the block of chunks [c0, c1) (one round's) of head item hi:
  /// chunks_before chunks before it, its own, chunks_after after it, circular over all chunks
  /// as the windows are (adjacent_chunk): the positions of its places, their queries, keys
  /// (qk * key scale) and values, zero at padded places (their keys are masked, their queries'
  /// outputs discarded). The scattered columns are prefetched kPrefetchDistance places ahead.
  void gather_block(const Plan& pl, const ConstMatrixRef<S>& qk, const ConstMatrixRef<S>& v,
                    Index hi, const HeadBuffers& hb, Index c0, Index c1, BlockScratch& sc) const {
    const Index dh = cfg_.head_size, len = pl.length, cl = pl.chunk;
    const Index before = cfg_.chunks_before, own = c1 - c0;
    const Index ext = before + own + cfg_.chunks_after, cols = ext * cl;
    const Index largest = block_columns(pl);
    ThreadBlockScratch::reserve({dh * largest, largest, dh * cl, cl, 0, 0});
    sc.o.reshape(dh, cl);
    auto q_range = sc.q.reshape(dh, largest);  // Dh x E*C
    auto k_range = sc.k.reshape(dh, largest);
    auto v_range = sc.v.reshape(dh, largest);
    sc.chunks.resize(at(ext));
    for (Index e = 0; e < ext; ++e) {
      sc.chunks[at(e)] = e < before ? adjacent_chunk(c0, e - before, pl.chunks)
                         : e < before + own
                             ? c0 + e - before
                             : adjacent_chunk(c1 - 1, e - before - own + 1, pl.chunks);
    }
    const auto x = head_block(qk, pl, pl.batch_of(hi), pl.head_of(hi));
    const auto xv = head_block(v, pl, pl.batch_of(hi), pl.head_of(hi));
    const S* scale = hb.key_scale.map().data();
    auto place = [&](Index col) { return sc.chunks[at(col / cl)] * cl + col % cl; };
    for (Index col = 0; col < cols; ++col) {
      if (col + kPrefetchDistance < cols) {
        const Index ahead = hb.pos[at(place(col + kPrefetchDistance))];
        if (ahead < len) {
          detail::prefetch_read(x.col(ahead).data(), dh);
          detail::prefetch_read(xv.col(ahead).data(), dh);
        }
      }
      const Index t = hb.pos[at(place(col))];
      sc.pos[at(col)] = t;
      if (t < len) {
        q_range.col(col) = x.col(t);
        k_range.col(col) = x.col(t) * scale[t];
        v_range.col(col) = xv.col(t);
      } else {
        q_range.col(col).setZero();
        k_range.col(col).setZero();
        v_range.col(col).setZero();
      }
    }
  }

  /// Whether the window of chunk c (chunks c - before .. c + after, adjacent_chunk) is the
  /// slice of the block's extended range that starts at c's own index in the block: always,
  /// except when the sequence has so few chunks that adjacent_chunk stops wrapping around.
  bool window_is_slice(const Plan& pl, const BlockScratch& sc, Index c0, Index c) const {
    for (Index i = 0; i < pl.window; ++i) {
      if (sc.chunks[at(c - c0 + i)] != adjacent_chunk(c, i - cfg_.chunks_before, pl.chunks))
        return false;
    }
    return true;
  }

  /// The window of chunk c gathered on its own (when it is not a slice of its block's range):
  /// keys, values and positions into sc.wk, sc.wv and sc.wpos.
  void gather_window(const Plan& pl, const ConstMatrixRef<S>& qk, const ConstMatrixRef<S>& v,
                     Index hi, const HeadBuffers& hb, Index c, BlockScratch& sc) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, wl = pl.window * cl, len = pl.length;
    const auto x = head_block(qk, pl, pl.batch_of(hi), pl.head_of(hi));
    const auto xv = head_block(v, pl, pl.batch_of(hi), pl.head_of(hi));
    auto wk = sc.wk.reshape(dh, wl);
    auto wv = sc.wv.reshape(dh, wl);
    sc.wpos.resize(at(wl));
    for (Index col = 0; col < wl; ++col) {
      const Index src = adjacent_chunk(c, col / cl - cfg_.chunks_before, pl.chunks) * cl;
      const Index t = hb.pos[at(src + col % cl)];
      sc.wpos[at(col)] = t;
      if (t < len) {
        wk.col(col) = x.col(t) * hb.key_scale.map()(t);
        wv.col(col) = xv.col(t);
      } else {
        wk.col(col).setZero();
        wv.col(col).setZero();
      }
    }
  }

  /// Calls f(i, c0, c1) for the blocks [c0, c1) of round r of the head items i in [0, nh) that
  /// `select(block index in the round)` accepts, in parallel.
  template <class Select, class F>
  void for_round_blocks(const Plan& pl, Index nh, Index r, Select&& select, F&& f) const {
    std::vector<Index>& picked = thread_block_list();
    picked.clear();
    for (Index k = 0; k < pl.blocks_per_round; ++k)
      if (select(k)) picked.push_back(k);
    const Index nb = static_cast<Index>(picked.size());
    const Index first = r * pl.chunks_per_round, end = first + pl.chunks_per_round;
    parallel_for(nh * nb, [&](Index item) {
      const Index c0 = first + picked[at(item % nb)] * pl.block;
      f(item / nb, c0, std::min(end, c0 + pl.block));
    });
  }
  static std::vector<Index>& thread_block_list() {
    thread_local std::vector<Index> list;
    return list;
  }

  /// Forward of the chunks of rounds [0, rounds) of the head items of a wave, and their
  /// combination into a, round by round (a round holds every position once, so its blocks write
  /// disjoint columns and run in parallel):
  ///   per place:     o_r(t), lse_r(t) of its chunk's attention (chunk_attention.hpp)
  ///   per position:  w_r = exp(lse_r - logsumexp_r' lse_r')   (softmax over the rounds)
  ///                  a = sum_r w_r o_r
  /// computed as a running sum with top = max_r lse_r so far and total = sum_r exp(lse_r - top),
  /// rescaled when top grows, and a /= total once every round is in (finish_output: in the
  /// last round, by each chunk for its queries right after adding its part); never
  /// forming logsumexp_r' lse_r' itself, whose magnitude reaches 1e5 when a slot sees only itself
  /// (in float its rounding would move the weights by ~0.4%). The per-place outputs are never
  /// stored: only lse per place is kept (and, in the backward with pl.store_probs, every chunk's
  /// probabilities).
  void attend_rounds(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                     const ConstMatrixRef<S>& v, MatrixRef<S> a, Index h0, Index nh,
                     std::vector<HeadBuffers>& bufs, Index rounds) const {
    for (Index r = 0; r < rounds; ++r) {
      const bool finish = r == pl.rounds - 1;
      for_round_blocks(
          pl, nh, r, [](Index) { return true; },
          [&](Index i, Index c0, Index c1) {
            forward_block(pl, ctx, qk, v, a, h0 + i, bufs[at(i)], c0, c1, finish);
          });
    }
  }

  /// The forward of a wave: every round (attend_rounds), the last one completing a (a /= total
  /// per position, as each of its chunks adds its part).
  void attend_forward(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                      const ConstMatrixRef<S>& v, MatrixRef<S> a, Index h0, Index nh,
                      std::vector<HeadBuffers>& bufs) const {
    attend_rounds(pl, ctx, qk, v, a, h0, nh, bufs, pl.rounds);
  }

  /// a_t /= total_t once every round is in, the output of position t (< T) of local head j of
  /// sequence b; with da (backward), also a_dot_t = da_t . a_t.
  void finish_output(const Plan& pl, MatrixRef<S>& a, const ConstMatrixRef<S>* da, HeadBuffers& hb,
                     Index b, Index j, Index t) const {
    const Index dh = cfg_.head_size, col = b * pl.length + t;
    auto out = a.col(col).segment(j * dh, dh);
    out /= hb.total.map()(t);
    if (da != nullptr) hb.a_dot.map()(t) = head_dot(*da, col, j, out.data());
  }

  /// Hints the columns that chunk c of head item hi will read or write by position, in the
  /// head block `m`: the positions of its C query places. For long inputs these columns are
  /// scattered over a large matrix, so the hint is given a chunk kernel ahead of their use.
  template <class M>
  void prefetch_query_columns(const Plan& pl, const HeadBuffers& hb, Index c, const M& m,
                              bool for_write) const {
    const Index* qpos = hb.pos.data() + c * pl.chunk;
    for (Index i = 0; i < pl.chunk; ++i) {
      const Index t = qpos[i];
      if (t >= pl.length) continue;
      if (for_write)
        detail::prefetch_write(m.col(t).data(), cfg_.head_size);
      else
        detail::prefetch_read(m.col(t).data(), cfg_.head_size);
    }
  }

  /// Where chunk c's probabilities are stored (hb.probs), or null when they are not.
  static S* stored_probs(HeadBuffers& hb, Index c) {
    return c < hb.probs.map().cols() ? hb.probs.map().col(c).data() : nullptr;
  }

  /// attend_rounds for the chunks [c0, c1) of one round of head item hi; with `finish` (the
  /// last round), each chunk then completes the output of its queries (finish_output).
  void forward_block(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                     const ConstMatrixRef<S>& v, MatrixRef<S>& a, Index hi, HeadBuffers& hb,
                     Index c0, Index c1, bool finish) const {
    BlockScratch& sc = ThreadBlockScratch::mine();
    gather_block(pl, qk, v, hi, hb, c0, c1, sc);
    ChunkAttentionWorkspace<S>& ws =
        thread_chunk_workspace<S>(pl.chunk, pl.window * pl.chunk, cfg_.head_size);
    const ChunkAttentionOptions opts = chunk_options(pl, ctx, hi, c0);
    for (Index c = c0; c < c1; ++c) {
      forward_chunk(pl, qk, v, a, hi, hb, sc, ws, opts, c0, c, stored_probs(hb, c));
      if (finish) finish_chunk_outputs(pl, a, nullptr, hi, hb, sc, c0, c);
    }
  }

  /// finish_output for the queries of chunk c of a gathered block (first chunk c0) whose
  /// positions are real.
  void finish_chunk_outputs(const Plan& pl, MatrixRef<S>& a, const ConstMatrixRef<S>* da, Index hi,
                            HeadBuffers& hb, const BlockScratch& sc, Index c0, Index c) const {
    const Index cl = pl.chunk;
    const Index* qpos = sc.pos.data() + (cfg_.chunks_before + c - c0) * cl;
    for (Index i = 0; i < cl; ++i)
      if (qpos[i] < pl.length)
        finish_output(pl, a, da, hb, pl.batch_of(hi), pl.head_of(hi), qpos[i]);
  }

  /// The chunk options of head item hi in the round of chunk c0.
  ChunkAttentionOptions chunk_options(const Plan& pl, const Context& ctx, Index hi,
                                      Index c0) const {
    return options(pl, ctx, pl.batch_of(hi), pl.heads.global(pl.head_of(hi)),
                   c0 / pl.chunks_per_round);
  }

  /// The forward of chunk c of a gathered block (first chunk c0) and its outputs' part of the
  /// rounds' combination into a; its probabilities go to `probs` when it is non-null.
  void forward_chunk(const Plan& pl, const ConstMatrixRef<S>& qk, const ConstMatrixRef<S>& v,
                     MatrixRef<S>& a, Index hi, HeadBuffers& hb, BlockScratch& sc,
                     ChunkAttentionWorkspace<S>& ws, const ChunkAttentionOptions& opts, Index c0,
                     Index c, S* probs) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, wl = pl.window * cl, len = pl.length;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi), r = c0 / pl.chunks_per_round;
    const Index k = c - c0;
    const Index* qpos = sc.pos.data() + (cfg_.chunks_before + k) * cl;
    S* top = hb.top.map().data();
    S* total = hb.total.map().data();
    // The columns of a this chunk's outputs go to, used after its kernel.
    prefetch_query_columns(pl, hb, c, head_block(a, pl, b, j), true);
    auto o = sc.o.map();
    S* lse = hb.lse.map().data() + c * cl;
    const auto q = sc.q.map().middleCols((cfg_.chunks_before + k) * cl, cl);
    if (window_is_slice(pl, sc, c0, c)) {
      chunk_attention_forward<S>(q, sc.k.map().middleCols(k * cl, wl),
                                 sc.v.map().middleCols(k * cl, wl), qpos, sc.pos.data() + k * cl,
                                 opts, o, lse, ws, probs);
    } else {
      gather_window(pl, qk, v, hi, hb, c, sc);
      chunk_attention_forward<S>(q, sc.wk.map(), sc.wv.map(), qpos, sc.wpos.data(), opts, o, lse,
                                 ws, probs);
    }
    for (Index i = 0; i < cl; ++i) {
      const Index t = qpos[i];
      if (t >= len) continue;  // a padded query's output is discarded
      auto out = a.col(b * len + t).segment(j * dh, dh);
      if (r == 0) {
        out = o.col(i);
        top[t] = lse[i];
        total[t] = 1;
      } else if (lse[i] > top[t]) {
        const S rescale = std::exp(top[t] - lse[i]);
        out = out * rescale + o.col(i);
        total[t] = total[t] * rescale + 1;
        top[t] = lse[i];
      } else {
        const S w = std::exp(lse[i] - top[t]);
        out += w * o.col(i);
        total[t] += w;
      }
    }
  }

  /// The recomputing backward of a wave: adds the gradients of the queries and keys into dqk
  /// and of the values into dv, by position, and leaves the recomputed a.
  /// Per query place (r, t), with w_r = exp(lse_r - top) / total, the rounds' combination
  /// a = sum_r w_r o_r gives
  ///   do_r = w_r da,   dlse_r = w_r (da . o_r - da . a).
  /// The chunk kernel's softmax backward needs dlse_r - delta_r, with delta_r = sum_j p_j dp_j
  /// over the window and dp = m (v^T do_r) (m: the dropout factors), so
  ///   delta_r = w_r sum_j p_j m_j (v_j . da) = w_r (da . o_r)       (o_r = sum_j p_j m_j v_j)
  /// and the shift is exactly
  ///   dlse_r - delta_r = -w_r (da . a),
  /// which needs no dot product with o_r: the kernel gets it as given
  /// (chunk_attention_backward_shifted). It then gives dq, dk and dv of its window, and
  /// k = qk * g(qk) gives
  ///   dqk += dq + g dk - g^3 (dk . qk) qk                    (lsh_normalize_key_backward)
  ///
  /// Order: a place's backward needs the final w_r and da . a of its position, known once
  /// every round's forward is in. The rounds before the last run their forward first
  /// (attend_rounds, storing their probabilities with pl.store_probs). Then each block of the
  /// last round runs its forward, which completes a for its queries (finish_output), and right
  /// away its backward from the probabilities it has just computed: that round's scores and
  /// softmax are computed once and its chunks gathered once. Then the backward of the other
  /// rounds (attend_backward_round). backward_from_kept takes the rounds in the same order
  /// (backward_round), so both paths add the gradients alike.
  void attend_forward_backward(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                               const ConstMatrixRef<S>& v, const ConstMatrixRef<S>& da,
                               MatrixRef<S> a, MatrixRef<S> dqk, MatrixRef<S> dv, Index h0,
                               Index nh, std::vector<HeadBuffers>& bufs) const {
    const Index last = pl.rounds - 1;
    attend_rounds(pl, ctx, qk, v, a, h0, nh, bufs, last);
    for_backward_blocks(pl, nh, last, [&](Index i, Index c0, Index c1) {
      last_round_block(pl, ctx, qk, v, da, a, dqk, dv, h0 + i, bufs[at(i)], c0, c1);
    });
    for (Index r = 0; r < last; ++r)
      attend_backward_round(pl, ctx, qk, v, da, dqk, dv, h0, nh, bufs, r);
  }

  /// The k-th round (k in [0, R)) in the order in which the rounds' backward adds its
  /// gradients: the last round, then the others from the first (see attend_forward_backward).
  static Index backward_round(const Plan& pl, Index k) { return k == 0 ? pl.rounds - 1 : k - 1; }

  /// Calls f(i, c0, c1) for every block [c0, c1) of round r of the head items i in [0, nh), in
  /// an order that lets blocks add gradients into the positions of their extended ranges
  /// deterministically. A block accumulates its window gradients in its own copy of the extended
  /// range, then adds them to the positions. Within one round every position has one place, so
  /// blocks whose extended ranges are disjoint touch disjoint positions: the blocks of a round
  /// whose range stays inside it run in two parallel passes (even, then odd block index: the
  /// ranges of every other block are disjoint as blocks span at least before + after chunks),
  /// then the blocks whose range leaves the round (the first, and the last when chunks_after > 0)
  /// one after another. Every position therefore receives its contributions in the same order
  /// for any thread count.
  template <class F>
  void for_backward_blocks(const Plan& pl, Index nh, Index r, F&& f) const {
    const Index before = cfg_.chunks_before, after = cfg_.chunks_after;
    auto inside = [&](Index k) {
      return k * pl.block - before >= 0 &&
             std::min(pl.chunks_per_round, (k + 1) * pl.block) + after <= pl.chunks_per_round;
    };
    for (Index parity = 0; parity < 2; ++parity)
      for_round_blocks(
          pl, nh, r, [&](Index k) { return k % 2 == parity && inside(k); }, f);
    parallel_for(nh, [&](Index i) {
      const Index first = r * pl.chunks_per_round, end = first + pl.chunks_per_round;
      for (Index k = 0; k < pl.blocks_per_round; ++k) {
        if (inside(k)) continue;
        const Index c0 = first + k * pl.block;
        f(i, c0, std::min(end, c0 + pl.block));
      }
    });
  }

  /// The backward of every chunk of round r of the head items of a wave, after the forward of
  /// every round (a_dot known): see attend_forward_backward.
  void attend_backward_round(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                             const ConstMatrixRef<S>& v, const ConstMatrixRef<S>& da,
                             MatrixRef<S> dqk, MatrixRef<S> dv, Index h0, Index nh,
                             std::vector<HeadBuffers>& bufs, Index r) const {
    for_backward_blocks(pl, nh, r, [&](Index i, Index c0, Index c1) {
      backward_block(pl, ctx, qk, v, da, dqk, dv, h0 + i, bufs[at(i)], c0, c1);
    });
  }

  /// The gradients of a block, gathered in the thread's copy of its extended range (Dh x E*C
  /// each): of the keys and values, zeroed; of the queries, in the block's own columns, each
  /// written once by its chunk's backward (backward_chunk).
  struct RangeGrads {
    typename GrowingMatrix<S>::MapType& dk;
    typename GrowingMatrix<S>::MapType& dv;
    typename GrowingMatrix<S>::MapType& dq;
  };
  RangeGrads zeroed_range_grads(const Plan& pl, BlockScratch& sc) const {
    const Index dh = cfg_.head_size, cols = static_cast<Index>(sc.chunks.size()) * pl.chunk;
    ThreadBlockScratch::reserve({0, 0, 0, 0, dh * block_columns(pl), 0});
    auto& dk_range = sc.dk.reshape(dh, block_columns(pl));
    auto& dv_range = sc.dv.reshape(dh, block_columns(pl));
    dk_range.leftCols(cols).setZero();
    dv_range.leftCols(cols).setZero();
    return {dk_range, dv_range, sc.dq.reshape(dh, block_columns(pl))};
  }

  /// attend_backward_round for the chunks [c0, c1) of one round of head item hi.
  void backward_block(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                      const ConstMatrixRef<S>& v, const ConstMatrixRef<S>& da, MatrixRef<S>& dqk,
                      MatrixRef<S>& dv, Index hi, HeadBuffers& hb, Index c0, Index c1) const {
    BlockScratch& sc = ThreadBlockScratch::mine();
    prefetch_query_columns(pl, hb, c0, head_block(da, pl, pl.batch_of(hi), pl.head_of(hi)), false);
    gather_block(pl, qk, v, hi, hb, c0, c1, sc);
    const RangeGrads grads = zeroed_range_grads(pl, sc);
    ChunkAttentionWorkspace<S>& ws =
        thread_chunk_workspace<S>(pl.chunk, pl.window * pl.chunk, cfg_.head_size);
    const ChunkAttentionOptions opts = chunk_options(pl, ctx, hi, c0);
    for (Index c = c0; c < c1; ++c)
      backward_chunk(pl, qk, v, da, dqk, dv, hi, hb, sc, grads, ws, opts, c0, c1, c,
                     stored_probs(hb, c));
    add_range_key_grads(pl, dqk, dv, hi, sc, grads);
  }

  /// The blocks [c0, c1) of the last round of head item hi in the recomputing backward: per
  /// chunk the forward (its probabilities into the thread's buffer), which completes the output
  /// of its queries, and then its backward from those probabilities (attend_forward_backward).
  void last_round_block(const Plan& pl, const Context& ctx, const ConstMatrixRef<S>& qk,
                        const ConstMatrixRef<S>& v, const ConstMatrixRef<S>& da, MatrixRef<S>& a,
                        MatrixRef<S>& dqk, MatrixRef<S>& dv, Index hi, HeadBuffers& hb, Index c0,
                        Index c1) const {
    const Index cl = pl.chunk, wl = pl.window * cl;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi);
    BlockScratch& sc = ThreadBlockScratch::mine();
    // da of the first chunk's queries (finish_output reads it; backward_chunk hints the next).
    prefetch_query_columns(pl, hb, c0, head_block(da, pl, b, j), false);
    gather_block(pl, qk, v, hi, hb, c0, c1, sc);
    const RangeGrads grads = zeroed_range_grads(pl, sc);
    ThreadBlockScratch::reserve({0, 0, 0, 0, 0, wl * cl});
    S* probs = sc.p.reshape(wl, cl).data();  // Ck x C
    ChunkAttentionWorkspace<S>& ws = thread_chunk_workspace<S>(cl, wl, cfg_.head_size);
    const ChunkAttentionOptions opts = chunk_options(pl, ctx, hi, c0);
    for (Index c = c0; c < c1; ++c) {
      forward_chunk(pl, qk, v, a, hi, hb, sc, ws, opts, c0, c, probs);
      finish_chunk_outputs(pl, a, &da, hi, hb, sc, c0, c);
      backward_chunk(pl, qk, v, da, dqk, dv, hi, hb, sc, grads, ws, opts, c0, c1, c, probs);
    }
    add_range_key_grads(pl, dqk, dv, hi, sc, grads);
  }

  /// The backward of chunk c of a gathered block [c0, c1): dq, dk and dv into the block's range
  /// gradients (dk and dv of a window that is not a slice of the range straight to the
  /// positions). probs: the chunk's probabilities, or null to recompute them.
  void backward_chunk(const Plan& pl, const ConstMatrixRef<S>& qk, const ConstMatrixRef<S>& v,
                      const ConstMatrixRef<S>& da, MatrixRef<S>& dqk, MatrixRef<S>& dv, Index hi,
                      HeadBuffers& hb, BlockScratch& sc, const RangeGrads& grads,
                      ChunkAttentionWorkspace<S>& ws, const ChunkAttentionOptions& opts, Index c0,
                      Index c1, Index c, S* probs) const {
    const Index dh = cfg_.head_size, cl = pl.chunk, wl = pl.window * cl, len = pl.length;
    const Index b = pl.batch_of(hi), j = pl.head_of(hi), k = c - c0;
    const Index* qpos = sc.pos.data() + (cfg_.chunks_before + k) * cl;
    // da of the next chunk's queries, read before its kernel.
    if (c + 1 < c1) prefetch_query_columns(pl, hb, c + 1, head_block(da, pl, b, j), false);
    auto d_o = sc.o.map();
    S* shift = sc.shift.data();  // dlse - delta (attend_forward_backward)
    for (Index i = 0; i < cl; ++i) {
      const Index t = qpos[i], s = c * cl + i;
      if (t >= len) {  // padded queries receive no gradient
        d_o.col(i).setZero();
        shift[i] = 0;
        continue;
      }
      const S w = std::exp(hb.lse.map()(s) - hb.top.map()(t)) / hb.total.map()(t);
      d_o.col(i) = w * da.col(b * len + t).segment(j * dh, dh);
      shift[i] = -w * hb.a_dot.map()(t);
    }
    const auto q = sc.q.map().middleCols((cfg_.chunks_before + k) * cl, cl);
    auto dq = grads.dq.middleCols((cfg_.chunks_before + k) * cl, cl);  // overwritten
    if (window_is_slice(pl, sc, c0, c)) {
      chunk_attention_backward_shifted<S>(
          q, sc.k.map().middleCols(k * cl, wl), sc.v.map().middleCols(k * cl, wl), qpos,
          sc.pos.data() + k * cl, opts, d_o, shift, dq, grads.dk.middleCols(k * cl, wl),
          grads.dv.middleCols(k * cl, wl), ws, probs);
    } else {  // only in blocks that run one after another (see for_backward_blocks)
      gather_window(pl, qk, v, hi, hb, c, sc);
      auto wdk = sc.wdk.reshape(dh, wl);  // zeroed for every window
      auto wdv = sc.wdv.reshape(dh, wl);
      wdk.setZero();
      wdv.setZero();
      chunk_attention_backward_shifted<S>(q, sc.wk.map(), sc.wv.map(), qpos, sc.wpos.data(), opts,
                                          d_o, shift, dq, wdk, wdv, ws, probs);
      const auto x = head_block(qk, pl, b, j);
      auto dx = head_block(dqk, pl, b, j);
      auto dxv = head_block(dv, pl, b, j);
      for (Index col = 0; col < wl; ++col) {
        const Index t = sc.wpos[at(col)];
        if (t >= len) continue;  // padding receives no gradient
        detail::lsh_normalize_key_backward<S>(x.col(t), wdk.col(col), dx.col(t));
        dxv.col(t) += wdv.col(col);
      }
    }
  }

  /// Adds a block's range gradients to the positions of its places, one read-modify-write of
  /// each position's dqk and dv columns (prefetched ahead). With k = qk * g, the key gradient's
  /// part
  ///   dqk_t += g dk - g^3 (dk . qk_t) qk_t             (lsh_normalize_key_backward)
  /// takes qk_t from the block's gathered copy (sc.q); in the block's own columns it is first
  /// added to the query gradient dq, so those positions get dq + that in one addition.
  ///   dv_t += dv
  void add_range_key_grads(const Plan& pl, MatrixRef<S>& dqk, MatrixRef<S>& dv, Index hi,
                           const BlockScratch& sc, const RangeGrads& grads) const {
    const Index dh = cfg_.head_size, len = pl.length, cl = pl.chunk;
    const Index cols = static_cast<Index>(sc.chunks.size()) * cl;
    const Index own0 = cfg_.chunks_before * cl, own1 = cols - cfg_.chunks_after * cl;
    const auto q = sc.q.map();
    auto dx = head_block(dqk, pl, pl.batch_of(hi), pl.head_of(hi));
    auto dxv = head_block(dv, pl, pl.batch_of(hi), pl.head_of(hi));
    for (Index col = 0; col < cols; ++col) {
      if (col + kPrefetchDistance < cols) {
        const Index ahead = sc.pos[at(col + kPrefetchDistance)];
        if (ahead < len) {
          detail::prefetch_read(dx.col(ahead).data(), dh);
          detail::prefetch_read(dxv.col(ahead).data(), dh);
        }
      }
      const Index t = sc.pos[at(col)];
      if (t >= len) continue;  // padding receives no gradient
      if (col >= own0 && col < own1) {
        auto dq = grads.dq.col(col);
        detail::lsh_normalize_key_backward<S>(q.col(col), grads.dk.col(col), dq);
        dx.col(t) += dq;
      } else {
        detail::lsh_normalize_key_backward<S>(q.col(col), grads.dk.col(col), dx.col(t));
      }
      dxv.col(t) += grads.dv.col(col);
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
  forward_pass("LshAttention::forward", params, input, a, ctx, heads, nullptr, 0);
}

template <class S>
void LshAttention<S>::forward_keeping(const Parameters<S>& params, const ProjectionInput<S>& input,
                                      MatrixRef<S> a, const Context& ctx, HeadRange heads,
                                      KeptActivations<S>& kept, std::size_t first) const {
  forward_pass("LshAttention::forward_keeping", params, input, a, ctx, heads, &kept, first);
}

template <class S>
std::size_t LshAttention<S>::kept_bytes(Index n, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const Index len = ctx.length("LshAttention::kept_bytes", n);
  if (!hashes(len)) return 0;
  const Index tp = padded_length(len), slots = cfg_.num_hashes * tp;
  const Index items = ctx.batch * heads.count, dh = cfg_.head_size;
  // qk and v, and lse, top and total.
  const Index scalars = 2 * heads.count * dh * n + items * (slots + 2 * tp);
  return static_cast<std::size_t>(scalars) * sizeof(S);
}

template <class S>
void LshAttention<S>::forward_pass(const char* where, const Parameters<S>& params,
                                   const ProjectionInput<S>& input, MatrixRef<S> a,
                                   const Context& ctx, HeadRange heads, KeptActivations<S>* kept,
                                   std::size_t first) const {
  heads = heads.resolve(cfg_.num_heads);
  const Plan pl = plan(where, input, ctx, heads);
  const Index n = input.cols(), dh = cfg_.head_size, rows = pl.heads.count * dh;
  check_shape(where, "a", a.rows(), a.cols(), rows, n);
  if (kept != nullptr) require_hashed(where, pl);
  // qk = W_qk xn, v = W_v xn: this group's heads (in the kept matrices when keeping)
  Scratch<S> qk_buf, v_buf;
  const auto projection = [&](Scratch<S>& buf, KeptMatrix i) -> MatrixRef<S> {
    if (kept != nullptr) return kept->matrix(first + i, rows, n);
    buf.resize(ctx.workspace, rows, n);
    return buf.map();
  };
  MatrixRef<S> qk = projection(qk_buf, kKeptQk), v = projection(v_buf, kKeptV);
  detail::project_heads<S>(params, heads, dh, input, {{qk_slot_, qk}, {v_slot_, v}}, ctx.workspace);
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
  const Scratch<S> rot = record != nullptr ? rotations(pl, ctx) : Scratch<S>{};
  // Kept: lse, top and total, R*Tp + 2 Tp per head item.
  const Index stat_rows = pl.slots + 2 * pl.padded;
  S* keep_stats = nullptr;
  if (kept != nullptr)
    keep_stats = kept->matrix(first + kKeptStatistics, stat_rows, pl.num_head_items).data();
  std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
  for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
    const Index nh = std::min(pl.wave, pl.num_head_items - h0);
    if (record != nullptr) hash_heads(pl, qk, rot, h0, nh, record);
    sort_heads(pl, qk, buckets, h0, nh, bufs, ctx.workspace);
    attend_forward(pl, ctx, qk, v, a, h0, nh, bufs);
    if (kept != nullptr) {
      parallel_for(nh, [&](Index i) {
        const HeadBuffers& hb = bufs[at(i)];
        Eigen::Map<Vector<S>>(keep_stats + (h0 + i) * stat_rows, stat_rows) << hb.lse.map(),
            hb.top.map(), hb.total.map();
      });
    }
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
  Scratch<S> dqk_buf(ws, rows, n), dv_buf(ws, rows, n);
  auto &dqk = dqk_buf.map(), &dv = dv_buf.map();
  if (pl.dense) {
    dense_backward(pl, qk, v, da, a, dqk, dv, ctx);
  } else {
    const std::int32_t* buckets = replayed_buckets(where, pl, ctx);
    zero_by_blocks(dqk, dv);
    std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
    for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
      const Index nh = std::min(pl.wave, pl.num_head_items - h0);
      sort_heads(pl, qk, buckets, h0, nh, bufs, ws);
      for (Index i = 0; i < nh; ++i) {
        bufs[at(i)].a_dot.resize(ws, pl.padded, 1);
        if (pl.store_probs) bufs[at(i)].probs.resize(ws, pl.probs_stride, pl.stored_chunks);
      }
      attend_forward_backward(pl, ctx, qk, v, da, a, dqk, dv, h0, nh, bufs);
    }
  }
  qk_buf.reset();  // the projections and the per-head buffers are no longer read
  v_buf.reset();
  // qk = W_qk x, v = W_v x  =>  dW_qk += dqk x^T, dW_v += dv x^T, dx += W_qk^T dqk + W_v^T dv
  // (the rows of this group's heads).
  detail::project_heads_backward<S>(params, heads, cfg_.head_size, input,
                                    {{qk_slot_, dqk}, {v_slot_, dv}}, dinput, ws);
}

template <class S>
void LshAttention<S>::backward_from_kept(Parameters<S>& params, const ProjectionInput<S>& input,
                                         ConstMatrixRef<S> da, const ProjectionInputGrad<S>& dinput,
                                         ConstMatrixRef<S> a, const Context& ctx, HeadRange heads,
                                         KeptActivations<S>& kept, std::size_t first) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "LshAttention::backward_from_kept";
  const Plan pl = plan(where, input, ctx, heads);
  const Index n = input.cols(), dh = cfg_.head_size, rows = pl.heads.count * dh;
  const Index len = pl.length;
  dinput.check_matches(where, input);
  detail::check_core_backward_buffers<S>(where, da, dinput.dx(), a, rows, hidden_, n);
  require_hashed(where, pl);
  const ConstMatrixRef<S> qk = kept.kept(where, first + kKeptQk, rows, n);
  const ConstMatrixRef<S> v = kept.kept(where, first + kKeptV, rows, n);
  const ConstMatrixRef<S> stats =
      kept.kept(where, first + kKeptStatistics, pl.slots + 2 * pl.padded, pl.num_head_items);
  Workspace* ws = ctx.workspace;
  Scratch<S> dqk_buf(ws, rows, n), dv_buf(ws, rows, n);
  auto &dqk = dqk_buf.map(), &dv = dv_buf.map();
  zero_by_blocks(dqk, dv);
  const std::int32_t* buckets = replayed_buckets(where, pl, ctx);
  std::vector<HeadBuffers> bufs(at(pl.wave));  // reused by every wave
  for (Index h0 = 0; h0 < pl.num_head_items; h0 += pl.wave) {
    const Index nh = std::min(pl.wave, pl.num_head_items - h0);
    // The sorted order and key scales again (the forward's, from the same buckets and qk); the
    // softmax statistics as the forward left them.
    sort_heads(pl, qk, buckets, h0, nh, bufs, ws);
    parallel_for(nh, [&](Index i) {
      HeadBuffers& hb = bufs[at(i)];
      const auto col = stats.col(h0 + i);
      hb.lse.map() = col.head(pl.slots);
      hb.top.map() = col.segment(pl.slots, pl.padded);
      hb.total.map() = col.tail(pl.padded);
      hb.a_dot.resize(ws, pl.padded, 1);
    });
    // a_dot = da_t . a_t, the dot product the recompute takes in finish_output, from a.
    for_position_blocks(pl, nh, [&](Index i, Index t0, Index t1) {
      const Index hi = h0 + i, b = pl.batch_of(hi), j = pl.head_of(hi);
      HeadBuffers& hb = bufs[at(i)];
      for (Index t = t0; t < std::min(t1, len); ++t)
        hb.a_dot.map()(t) = head_dot(da, b * len + t, j, a.col(b * len + t).data() + j * dh);
    });
    for (Index k = 0; k < pl.rounds; ++k) {
      attend_backward_round(pl, ctx, qk, v, da, dqk, dv, h0, nh, bufs, backward_round(pl, k));
    }
  }
  // qk = W_qk x, v = W_v x  =>  dW_qk += dqk x^T, dW_v += dv x^T, dx += W_qk^T dqk + W_v^T dv
  // (the rows of this group's heads).
  detail::project_heads_backward<S>(params, heads, dh, input, {{qk_slot_, dqk}, {v_slot_, dv}},
                                    dinput, ws);
}

}  // namespace reformer
