#pragma once
// The training tape of ReformerLM: what forward_loss() leaves for backward() (DESIGN 3.2).
//
// With the reversible path (the default) the tape holds
//   - the outputs (x1, x2) of the LAST block only: 2 x D x N scalars,
//   - the LSH buckets of every LSH layer: [B, H, R, T] int32 per layer (backward never re-hashes),
//   - the token ids and loss targets (N ints each), the RNG step and the batch shape,
// so its size does not depend on the number of layers except for the bucket ints. Every other
// activation is reconstructed by the backward walk from the block outputs, and every dropout
// mask is redrawn from the counter-based RNG key (seed, step, layer, stream).
//
// With BackpropMode::kStoredActivations the tape additionally keeps every block's sublayer
// inputs (x2 for the attention, y1 for the feed-forward): 2 x D x N scalars per layer. That is
// ordinary backprop, the oracle of the reversible path and a choice for short sequences.
//
// backward() consumes the tape: it walks (x1, x2) back down to the embeddings in place.
#include "reformer/core/context.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace reformer {

/// How ReformerLM::backward obtains each block's inputs.
enum class BackpropMode {
  kReversible,        ///< reconstruct them from the block outputs (memory independent of depth)
  kStoredActivations  ///< keep them from the forward pass (ordinary backprop)
};

template <class S>
struct Tape {
  // --- filled by ReformerLM::forward_loss ----------------------------------------------------
  Index batch = 0;         ///< B
  Index length = 0;        ///< T
  std::uint64_t step = 0;  ///< RNG step of the forward pass (rotations, dropout masks)
  BackpropMode mode = BackpropMode::kReversible;
  std::vector<Token> tokens;   ///< B * T input ids
  std::vector<Token> targets;  ///< B * T loss targets (negative = not counted)
  double loss = 0.0;           ///< mean loss over the counted targets
  Index loss_count = 0;        ///< number of counted targets
  Matrix<S> x1, x2;            ///< outputs of the last block, D x (B*T)
  /// Per layer: the LSH buckets [B, H, R, T] (empty for local / full layers and for LSH
  /// layers whose sequences are not hashed, T <= chunk length).
  std::vector<BucketTape> buckets;
  /// kStoredActivations only, per layer: the attention input x2 and the feed-forward input y1.
  std::vector<Matrix<S>> attention_inputs, feed_forward_inputs;
  bool ready = false;  ///< forward done, backward not yet run

  // --- set by the caller ---------------------------------------------------------------------
  /// When true, forward_loss() uses `buckets` as they are instead of hashing (they must hold
  /// [B, H, R, T] for every LSH layer that hashes): replaying reference buckets, or freezing the
  /// hashing across several forward passes (finite-difference checks).
  bool replay_buckets = false;

  /// Bytes of the LSH bucket ints.
  std::size_t bucket_bytes() const {
    std::size_t n = 0;
    for (const auto& b : buckets) n += b.bytes_held();
    return n;
  }

  /// Bytes of the stored activations (x1, x2 and, in kStoredActivations mode, the per-layer
  /// sublayer inputs).
  std::size_t activation_bytes() const {
    std::size_t n = static_cast<std::size_t>(x1.size() + x2.size());
    for (const auto& m : attention_inputs) n += static_cast<std::size_t>(m.size());
    for (const auto& m : feed_forward_inputs) n += static_cast<std::size_t>(m.size());
    return n * sizeof(S);
  }

  /// Everything the tape holds: activations, bucket ints, token ids and targets.
  std::size_t bytes_held() const {
    return activation_bytes() + bucket_bytes() +
           (tokens.capacity() + targets.capacity()) * sizeof(Token);
  }

  /// Releases everything (keeps replay_buckets).
  void clear() {
    batch = length = 0;
    step = 0;
    tokens.clear();
    targets.clear();
    x1.resize(0, 0);
    x2.resize(0, 0);
    buckets.clear();
    attention_inputs.clear();
    feed_forward_inputs.clear();
    ready = false;
  }
};

}  // namespace reformer
