#pragma once
// The FLOP model behind every GFLOP/s counter of the benchmarks.
//
// What is counted: the matrix products the library really performs, 2 FLOPs per multiply-add,
// recomputation included. What is not: elementwise work (softmax exponentials, masks,
// LayerNorm, dropout draws, the key normalisation), gathers, sorting. GFLOP/s figures are
// therefore "useful product throughput", comparable with the GEMM reference of the same run.
//
// Forward of one attention sublayer on one sequence of T tokens (D = hidden, H heads of Dh):
//   input projections      P * 2 * D * H*Dh * T      P = 3 (q, k, v: full, local)
//                                                     P = 2 (shared qk, v: LSH)
//   output projection      2 * H*Dh * D * T          (W_o)
//   scores and outputs     per head: 2 * 2 * Dh * pairs   (s = k^T q and o = v p)
//     full, causal         pairs = T (T + 1) / 2     (only key <= query is computed)
//     full, non-causal     pairs = T^2
//     local                pairs = sum over chunks c of C_c * |window(c)|, the window of chunk c
//                          being [max(0, (c - before) C), min(T, (c + after + 1) C))
//     LSH                  pairs = R * Tp * W * C    (R * Tp sorted slots, each query chunk of C
//                          slots sees W = before + 1 + after chunks; Tp = T padded to C)
//   hashing (LSH)          per head: R * T * 2 * Dh * NB_cols   (NB_cols = rotation columns,
//                          sum of f / 2 over the bucket factors)
// Backward of a sublayer (the library's recomputing backward) = 3 x the forward products:
//   every forward product y = A x is recomputed (1x) and has two gradient products,
//   dA += dy x^T and dx = A^T dy (2x). Hashing is not redone (buckets are replayed). Less, for
//   LSH: when the backward stores the chunk probabilities of its recompute
//   (tuning::kLshStoredProbabilityScalars), the chunk backward does not compute the scores
//   s = k^T q again: per head 2 * Dh * pairs fewer (attention_stored_score_flops).
// Feed-forward sublayer forward: 2 * 2 * D * F * T (W1, W2); backward 3x.
// Language-model head (chunked cross-entropy) forward: 2 * V * 2D * T; in the training step's
// backward it recomputes the logits and forms dh and dW: 3x.
// Training step = forward_loss + backward = 4 x the forward products + hashing once.
#include <reformer/core/tuning.hpp>
#include <reformer/layers/lsh_bucketing.hpp>
#include <reformer/model/config.hpp>

#include <algorithm>
#include <vector>

namespace reformer_bench {

using reformer::Index;

enum class AttentionKind { kFull, kLocal, kLsh };

inline const char* name(AttentionKind k) {
  switch (k) {
    case AttentionKind::kFull:
      return "dense";
    case AttentionKind::kLocal:
      return "local";
    case AttentionKind::kLsh:
      return "lsh";
  }
  return "?";
}

/// Shape of one attention sublayer (one sequence).
struct AttentionShape {
  AttentionKind kind = AttentionKind::kLsh;
  Index hidden = 256;                   // D
  Index heads = 4;                      // H
  Index head_size = 64;                 // Dh
  Index chunk = 64;                     // C (local, LSH)
  Index before = 1;                     // chunks of look-back
  Index after = 0;                      // chunks of look-ahead
  Index rounds = 1;                     // R (LSH)
  bool causal = true;                   // full attention: only key <= query is computed
  Index max_positions = 4096;           // LSH auto bucket rule
  std::vector<Index> num_buckets = {};  // LSH: empty = auto rule
};

/// Query-key pairs scored per head (see the header comment).
inline double attention_pairs(const AttentionShape& s, Index t) {
  const double td = double(t);
  switch (s.kind) {
    case AttentionKind::kFull:
      return s.causal ? td * (td + 1) / 2 : td * td;
    case AttentionKind::kLocal: {
      double pairs = 0;
      for (Index c0 = 0; c0 < t; c0 += s.chunk) {
        const Index queries = std::min(s.chunk, t - c0);
        const Index k0 = std::max<Index>(0, c0 - s.before * s.chunk);
        const Index k1 = std::min(t, c0 + (s.after + 1) * s.chunk);
        pairs += double(queries) * double(k1 - k0);
      }
      return pairs;
    }
    case AttentionKind::kLsh: {
      if (t <= s.chunk) return td * td;  // dense fallback, one round
      const Index tp = (t + s.chunk - 1) / s.chunk * s.chunk;
      return double(s.rounds) * double(tp) * double(s.before + 1 + s.after) * double(s.chunk);
    }
  }
  return 0;
}

/// Forward products of one attention sublayer on one sequence (hashing excluded).
inline double attention_forward_flops(const AttentionShape& s, Index t) {
  const double hd = double(s.heads * s.head_size), d = double(s.hidden), td = double(t);
  const double projections = (s.kind == AttentionKind::kLsh ? 2.0 : 3.0) * 2.0 * d * hd * td;
  const double output = 2.0 * hd * d * td;
  const double core = double(s.heads) * 4.0 * double(s.head_size) * attention_pairs(s, t);
  return projections + output + core;
}

/// LSH hashing products of one forward pass on one sequence (0 for other kinds and T <= C).
inline double attention_hash_flops(const AttentionShape& s, Index t) {
  if (s.kind != AttentionKind::kLsh || t <= s.chunk) return 0;
  const Index tp = (t + s.chunk - 1) / s.chunk * s.chunk;
  const Index cols =
      reformer::lsh_bucket_layout(s.num_buckets, tp, s.chunk, s.max_positions).rotation_columns();
  return double(s.heads) * double(s.rounds) * double(t) * 2.0 * double(s.head_size) * double(cols);
}

/// Score products an LSH sublayer's backward skips by taking the probabilities its recompute
/// stored: per head 2 * Dh * pairs when one head's store (R * Tp chunks' W C x C scalars) fits
/// tuning::kLshStoredProbabilityScalars. The library decides per wave of heads; for chunks of 64
/// or less and R * W <= 4 a wave's store fits whenever one head's does. 0 for other kinds and
/// T <= C.
inline double attention_stored_score_flops(const AttentionShape& s, Index t) {
  if (s.kind != AttentionKind::kLsh || t <= s.chunk) return 0;
  const double pairs = attention_pairs(s, t);  // R * Tp * W * C: one head's store in scalars
  if (pairs > double(reformer::tuning::kLshStoredProbabilityScalars)) return 0;
  return double(s.heads) * 2.0 * double(s.head_size) * pairs;
}

/// One forward() call of the sublayer.
inline double attention_fwd_flops(const AttentionShape& s, Index t) {
  return attention_forward_flops(s, t) + attention_hash_flops(s, t);
}

/// forward() (hashing, recording buckets) + backward() (recompute + gradients, replayed buckets).
inline double attention_fwd_bwd_flops(const AttentionShape& s, Index t) {
  return 4.0 * attention_forward_flops(s, t) + attention_hash_flops(s, t) -
         attention_stored_score_flops(s, t);
}

/// The attention shape of layer `l` of a model config.
inline AttentionShape attention_shape(const reformer::ReformerConfig& c, Index l) {
  AttentionShape s;
  s.hidden = c.hidden_size;
  s.heads = c.num_attention_heads;
  s.head_size = c.head_size();
  s.causal = c.is_decoder;
  // The chunked cores: kind, chunk length and window (chunks before / after).
  const auto chunked = [&s](AttentionKind kind, Index chunk, Index before, Index after) {
    s.kind = kind;
    s.chunk = chunk;
    s.before = before;
    s.after = after;
  };
  switch (c.layer_kind(l)) {
    case reformer::LayerKind::kLsh:
      chunked(AttentionKind::kLsh, c.lsh_attn_chunk_length, c.lsh_num_chunks_before,
              c.lsh_num_chunks_after);
      s.rounds = c.num_hashes;
      s.num_buckets = c.num_buckets;
      s.max_positions = c.max_position_embeddings;
      break;
    case reformer::LayerKind::kLocal:
      chunked(AttentionKind::kLocal, c.local_attn_chunk_length, c.local_num_chunks_before,
              c.local_num_chunks_after);
      break;
    case reformer::LayerKind::kFull:
      s.kind = AttentionKind::kFull;
      break;
  }
  return s;
}

/// FLOPs of one training step (forward_loss + backward) of a ReformerLM on `batch` sequences
/// of `t` tokens: 4 x the forward products + the hashing of the forward pass.
/// kept_feed_forward, kept_attention: the layers whose feed-forward / attention sublayer keeps
/// its activations (kept_attention: flags in layer order); their backward skips the recompute,
/// one forward's worth of products. The other LSH layers skip their stored score products.
inline double model_step_flops(const reformer::ReformerConfig& c, Index t, Index batch = 1,
                               Index kept_feed_forward = 0,
                               const std::vector<bool>& kept_attention = {}) {
  const double td = double(t), d = double(c.hidden_size);
  const double ff_forward = 2.0 * 2.0 * d * double(c.feed_forward_size) * td;  // W1, W2
  double forward = 0, hashing = 0, skipped = double(kept_feed_forward) * ff_forward;
  for (Index l = 0; l < c.num_layers(); ++l) {
    const AttentionShape s = attention_shape(c, l);
    forward += attention_forward_flops(s, t);
    hashing += attention_hash_flops(s, t);
    forward += ff_forward;
    const auto i = static_cast<std::size_t>(l);
    if (i < kept_attention.size() && kept_attention[i]) {
      skipped += attention_forward_flops(s, t);  // no recompute, so nothing stored either
    } else {
      skipped += attention_stored_score_flops(s, t);
    }
  }
  forward += 2.0 * double(c.vocab_size) * 2.0 * d * td;  // LM head on [x1; x2]
  return double(batch) * (4.0 * forward + hashing - skipped);
}

}  // namespace reformer_bench
