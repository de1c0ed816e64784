#pragma once
// What a sublayer call needs besides parameters and activations (docs/DESIGN.md 3.2, 3.3): the
// batch layout, training mode, the RNG coordinates, and the LSH bucket tape.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace reformer {

/// LSH buckets of one layer for a batch: [batch, heads, rounds, length] row-major int32, the
/// bucket of each token in each round WITHOUT round offsets (the Hugging Face fixtures' layout).
/// Recorded by the forward pass in training, replayed by the backward pass (never re-hashed).
struct BucketTape {
  Index batch = 0, heads = 0, rounds = 0, length = 0;
  std::vector<std::int32_t> data;

  bool empty() const { return data.empty(); }
  void resize(Index b, Index h, Index r, Index t) {
    batch = b;
    heads = h;
    rounds = r;
    length = t;
    data.assign(static_cast<std::size_t>(b * h * r * t), 0);
  }
  void clear() {
    batch = heads = rounds = length = 0;
    data.clear();
    data.shrink_to_fit();
  }
  std::size_t offset(Index b, Index h, Index r, Index t) const {
    return static_cast<std::size_t>(((b * heads + h) * rounds + r) * length + t);
  }
  std::int32_t& at(Index b, Index h, Index r, Index t) { return data[offset(b, h, r, t)]; }
  std::int32_t at(Index b, Index h, Index r, Index t) const { return data[offset(b, h, r, t)]; }
  std::size_t bytes_held() const { return data.capacity() * sizeof(std::int32_t); }
};

/// Per-call context of a sublayer. Plain data; cheap to copy.
struct Context {
  Index batch = 1;          ///< x holds `batch` sequences of equal length side by side
  bool training = false;    ///< dropout active
  std::uint64_t seed = 0;   ///< model seed
  std::uint64_t step = 0;   ///< training step: new LSH rotations and dropout masks each step
  std::uint32_t layer = 0;  ///< layer index, part of every RNG key

  /// LSH bucket tape owned by the caller (may be null). forward(): when `replay_buckets` is set
  /// the tape's buckets are used instead of hashing, otherwise the layer hashes and, if the tape
  /// is non-null, records into it. backward(): always replays the tape (it must be filled).
  BucketTape* buckets = nullptr;
  bool replay_buckets = false;

  /// Cache the layers draw their work buffers from (core/workspace.hpp); owned by the caller,
  /// may be null (then buffers come from the heap).
  Workspace* workspace = nullptr;

  /// Key padding of the batch (core/attention_mask.hpp), owned by the caller; null or empty =
  /// no padding. Attention layers read it once per call (layers/detail/key_padding.hpp) and replace
  /// the scores of padded keys; other layers ignore it.
  const AttentionMask* mask = nullptr;

  /// The RNG key of one randomness stream of this call (see reformer::stream).
  Rng rng(std::uint64_t stream_tag) const {
    return Rng(seed).derive(step).derive(layer).derive(stream_tag);
  }

  /// Sequence length implied by an activation matrix with `cols` columns.
  Index length(const char* where, Index cols) const {
    REFORMER_REQUIRE(batch >= 1, InvalidArgument, where, "ctx.batch = ", batch, " must be >= 1");
    REFORMER_REQUIRE(cols % batch == 0 && cols > 0, InvalidArgument, where, "x.cols() = ", cols,
                     " is not a positive multiple of ctx.batch = ", batch);
    return cols / batch;
  }
};

}  // namespace reformer
