#pragma once
// The training tape of a Reformer model: what forward_loss() leaves for backward() (docs/DESIGN.md
// 3.2).
//
// With the reversible path (the default) the tape holds
//   - the outputs (x1, x2) of the LAST block only: 2 x D x N scalars,
//   - the LSH buckets of every layer (a BucketRecord: [B, H, R, T] int32 per LSH layer; backward
//     never re-hashes),
//   - the token ids and loss targets (N ints each), the RNG step, the batch shape and the key
//     padding mask of the pass (at the padded length, see model/reformer_backbone.hpp),
// so its size does not depend on the number of layers except for the bucket ints. Every other
// activation is reconstructed by the backward walk from the block outputs, and every dropout
// mask is redrawn from the counter-based RNG key (seed, step, layer, stream).
//
// With a kept-activation budget (ReformerBackbone::set_kept_activation_budget), the reversible
// tape also holds the activations of the feed-forward sublayers that fit the budget, so their
// backward skips the recompute (layers/kept_activations.hpp): (2 D + F) x N scalars per kept
// sublayer, and never more than the budget.
//
// With BackpropMode::kStoredActivations the tape also keeps every block's sublayer inputs
// (x2 for the attention, y1 for the feed-forward): 2 x D x N scalars per layer. That is
// ordinary backprop, the oracle of the reversible path and a choice for short sequences.
//
// backward() consumes the tape: it walks (x1, x2) back down to the embeddings in place.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/ops/tokens.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace reformer {

/// A matrix of the tape drawn from a model's workspace (core/workspace.hpp), so the streams sit
/// on huge pages and a step of the same shape reuses them. It keeps the workspace alive; a copy
/// draws its own block from the same workspace.
template <class S>
class TapeMatrix {
 public:
  using MapType = typename Scratch<S>::MapType;

  TapeMatrix() = default;
  TapeMatrix(const TapeMatrix& other) { *this = other; }
  TapeMatrix& operator=(const TapeMatrix& other) {
    if (this != &other) {
      resize(other.workspace_, other.rows(), other.cols());
      block_.map() = other.block_.map();
    }
    return *this;
  }
  TapeMatrix(TapeMatrix&& other) noexcept
      : workspace_(std::move(other.workspace_)), block_(std::move(other.block_)) {}
  TapeMatrix& operator=(TapeMatrix&& other) noexcept {
    if (this != &other) {
      block_ = std::move(other.block_);  // the old block goes back before its workspace may go
      workspace_ = std::move(other.workspace_);
    }
    return *this;
  }
  ~TapeMatrix() { block_.reset(); }

  /// rows x cols from `workspace` (or the heap when null); keeps the block (and its contents)
  /// when the workspace and the bytes are unchanged.
  void resize(std::shared_ptr<Workspace> workspace, Index rows, Index cols) {
    if (workspace != workspace_) {
      block_.reset();
      workspace_ = std::move(workspace);
    }
    block_.resize(workspace_.get(), rows, cols);
  }
  void reset() noexcept {
    block_.reset();
    workspace_.reset();
  }

  MapType& map() { return block_.map(); }
  const MapType& map() const { return block_.map(); }
  Index rows() const { return block_.rows(); }
  Index cols() const { return block_.cols(); }
  Index size() const { return rows() * cols(); }

 private:
  std::shared_ptr<Workspace> workspace_;  // outlives block_
  Scratch<S> block_;
};

/// How a model's backward obtains each block's inputs.
enum class BackpropMode {
  kReversible,        ///< reconstruct them from the block outputs (memory independent of depth)
  kStoredActivations  ///< keep them from the forward pass (ordinary backprop)
};

template <class S>
struct Tape {
  // --- filled by a model's forward_loss -------------------------------------------------------
  Index batch = 0;   ///< B
  Index length = 0;  ///< T, the length the caller gave
  Index padded_length =
      0;                   ///< Tp >= T, the length the stack ran at (ReformerConfig::padded_length)
  std::uint64_t step = 0;  ///< RNG step of the forward pass (rotations, dropout masks)
  BackpropMode mode = BackpropMode::kReversible;
  std::vector<Token> tokens;  ///< B * Tp input ids (pad tokens after each sequence's T)
  AttentionMask mask;         ///< B x Tp key padding of the pass (empty: no padding)
  /// The head's targets: next-token / masked-LM labels (B * T, negative = not counted), class
  /// labels (B), answer spans (B starts, then B ends).
  std::vector<Token> targets;
  std::vector<double> values;  ///< regression targets (B) of a one-label classifier
  double loss = 0.0;           ///< mean loss over the counted targets
  Index loss_count = 0;        ///< number of counted targets
  TapeMatrix<S> x1, x2;        ///< outputs of the last block, D x (B*Tp)
  StoredInputs<S> stored;      ///< kStoredActivations only: every block's sublayer inputs
  KeptRecord<S> kept;          ///< kReversible only: the kept activations (within a budget)
  bool ready = false;          ///< forward done, backward not yet run

  /// The LSH buckets of every layer. Recorded by forward_loss(), replayed by backward(). Set
  /// buckets.replay (with buckets.layers holding [B, H, R, T] for every LSH layer that hashes)
  /// to make forward_loss() use them instead of hashing: replaying reference buckets, or freezing
  /// the hashing across several forward passes (finite-difference checks).
  BucketRecord buckets;

  /// The mask to hand to the layers (null when nothing is padding).
  const AttentionMask* mask_or_null() const { return mask.empty() ? nullptr : &mask; }

  /// Bytes of the LSH bucket ints.
  std::size_t bucket_bytes() const { return buckets.bytes_held(); }

  /// Bytes of the stored activations (x1, x2, in kStoredActivations mode the per-layer
  /// sublayer inputs, and the kept activations).
  std::size_t activation_bytes() const {
    return static_cast<std::size_t>(x1.size() + x2.size()) * sizeof(S) + stored.bytes_held() +
           kept.bytes_held();
  }

  /// Everything the tape holds: activations, bucket ints, token ids and targets.
  std::size_t bytes_held() const {
    return activation_bytes() + bucket_bytes() +
           (tokens.capacity() + targets.capacity()) * sizeof(Token);
  }

  /// Releases everything (keeps buckets.replay).
  void clear() {
    batch = length = padded_length = 0;
    step = 0;
    tokens.clear();
    mask = AttentionMask();
    targets.clear();
    values.clear();
    x1.reset();
    x2.reset();
    buckets.layers.clear();
    stored.clear();
    kept.release();
    ready = false;
  }
};

}  // namespace reformer
