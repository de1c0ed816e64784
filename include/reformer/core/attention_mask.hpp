#pragma once
// AttentionMask: which positions of each sequence of a batch are real and which are padding
// (Hugging Face's `attention_mask`, [batch, length], 1 = real, 0 = padding).
//
// The mask applies to keys only (docs/DESIGN.md 7): a query's score with a padded key is replaced
// by the padding mask value, as in Hugging Face. Queries at padded positions are computed like
// any other, so what a model outputs there is defined, but nothing at a padded position reaches a
// real position's output or gradient.
//
// Built from per-sequence valid lengths (each sequence: real tokens, then padding) or from any
// 0/1 flags. Plain data, cheap to share: the layers read it through Context::mask.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace reformer {

class AttentionMask {
 public:
  /// An empty mask: every position is real.
  AttentionMask() = default;

  /// Sequence b holds lengths[b] real tokens followed by padding up to `length`.
  static AttentionMask from_lengths(const std::vector<Index>& lengths, Index length) {
    const char* where = "AttentionMask::from_lengths";
    REFORMER_REQUIRE(!lengths.empty(), InvalidArgument, where, "lengths is empty");
    REFORMER_REQUIRE(length >= 1, InvalidArgument, where, "length = ", length, " must be >= 1");
    AttentionMask m;
    m.batch_ = static_cast<Index>(lengths.size());
    m.length_ = length;
    m.flags_.assign(static_cast<std::size_t>(m.batch_ * length), 0);
    for (Index b = 0; b < m.batch_; ++b) {
      const Index n = lengths[static_cast<std::size_t>(b)];
      REFORMER_REQUIRE(n >= 0 && n <= length, InvalidArgument, where, "lengths[", b, "] = ", n,
                       " is outside [0, length = ", length, "]");
      std::fill_n(m.flags_.begin() + b * length, n, std::uint8_t{1});
    }
    return m;
  }

  /// flags: batch x length row-major (sequence b at [b*length, (b+1)*length)); each entry must
  /// be 0 (padding) or 1 (real).
  template <class T>
  static AttentionMask from_flags(const std::vector<T>& flags, Index batch, Index length) {
    const char* where = "AttentionMask::from_flags";
    REFORMER_REQUIRE(batch >= 1 && length >= 1, InvalidArgument, where, "batch = ", batch,
                     " and length = ", length, " must be >= 1");
    REFORMER_REQUIRE(static_cast<Index>(flags.size()) == batch * length, InvalidArgument, where,
                     "flags.size() = ", flags.size(), " must equal batch x length = ", batch, " x ",
                     length);
    AttentionMask m;
    m.batch_ = batch;
    m.length_ = length;
    m.flags_.resize(flags.size());
    for (std::size_t i = 0; i < flags.size(); ++i) {
      REFORMER_REQUIRE(flags[i] == T(0) || flags[i] == T(1), InvalidArgument, where, "flags[", i,
                       "] = ", +flags[i], " must be 0 or 1");
      m.flags_[i] = flags[i] == T(1) ? 1 : 0;
    }
    return m;
  }

  bool empty() const { return flags_.empty(); }
  Index batch() const { return batch_; }
  Index length() const { return length_; }

  /// The `length` flags of sequence b (1 = real, 0 = padding).
  const std::uint8_t* sequence(Index b) const {
    REFORMER_ASSERT(b >= 0 && b < batch_);
    return flags_.data() + b * length_;
  }
  bool real(Index b, Index t) const { return sequence(b)[t] != 0; }

  /// Real positions of sequence b.
  Index real_count(Index b) const {
    const std::uint8_t* f = sequence(b);
    return static_cast<Index>(std::count(f, f + length_, std::uint8_t{1}));
  }

  /// Whether any position of the batch is padding.
  bool any_padding() const {
    return std::find(flags_.begin(), flags_.end(), std::uint8_t{0}) != flags_.end();
  }

  /// The same mask with every sequence extended by padding to `length` (>= this length).
  AttentionMask padded_to(Index length) const {
    REFORMER_REQUIRE(length >= length_, InvalidArgument, "AttentionMask::padded_to",
                     "length = ", length, " is below the mask's length ", length_);
    AttentionMask m;
    m.batch_ = batch_;
    m.length_ = length;
    m.flags_.assign(static_cast<std::size_t>(batch_ * length), 0);
    for (Index b = 0; b < batch_; ++b) {
      std::copy_n(sequence(b), length_, m.flags_.begin() + b * length);
    }
    return m;
  }

  /// Throws InvalidArgument (prefixed by `where`) unless the mask is empty or has `batch`
  /// sequences of `length` positions, each with at least one real position.
  void check(const char* where, Index batch, Index length) const {
    if (empty()) return;
    REFORMER_REQUIRE(batch_ == batch && length_ == length, InvalidArgument, where,
                     "the attention mask is ", batch_, " x ", length_,
                     " (batch x length) but the input is ", batch, " x ", length);
    for (Index b = 0; b < batch_; ++b) {
      REFORMER_REQUIRE(real_count(b) > 0, InvalidArgument, where, "sequence ", b,
                       " of the attention mask is all padding");
    }
  }

 private:
  Index batch_ = 0, length_ = 0;
  std::vector<std::uint8_t> flags_;  // batch x length row-major
};

}  // namespace reformer
