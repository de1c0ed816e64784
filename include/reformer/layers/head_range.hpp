#pragma once
// A contiguous group of attention heads. Attention cores compute the output rows of one group
// at a time when asked to, so the AttentionSublayer can stream head groups through a layer and
// hold the per-head buffers (projections, outputs and their gradients) of one group instead of
// all heads: that bounds a layer's memory for long sequences (README, design notes).
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

namespace reformer {

/// Heads [first, first + count) of an attention core. Matrices passed with a range hold the
/// rows of those heads only (count * Dh rows; local head j is global head first + j). Everything
/// keyed by a head (random rotations, dropout masks, the bucket tape) uses the global index, so
/// the results do not depend on how the heads are grouped.
///
/// The default-constructed range, HeadRange::all(), stands for all heads of the core it is
/// passed to (resolve()).
struct HeadRange {
  Index first = 0;
  Index count = -1;  ///< -1 with first = 0: all heads

  static constexpr HeadRange all() { return HeadRange{0, -1}; }
  bool is_all() const { return first == 0 && count == -1; }
  /// This range, or [0, num_heads) for all().
  HeadRange resolve(Index num_heads) const { return is_all() ? HeadRange{0, num_heads} : *this; }

  Index end() const { return first + count; }
  Index global(Index local) const { return first + local; }
};

namespace detail {
/// Throws InvalidArgument unless `heads` is a non-empty range inside [0, num_heads).
inline void check_head_range(const char* where, HeadRange heads, Index num_heads) {
  REFORMER_REQUIRE(heads.first >= 0 && heads.count >= 1 && heads.end() <= num_heads,
                   InvalidArgument, where, "head range [", heads.first, ", ", heads.end(),
                   ") must be non-empty and inside [0, num_heads = ", num_heads, ")");
}

/// The buffers of a core's backward call: da and a hold the `rows` = heads.count*Dh rows of the
/// call's heads, dxn is hidden x N (InvalidArgument naming `where` and the buffer).
template <class S>
void check_core_backward_buffers(const char* where, const ConstMatrixRef<S>& da,
                                 const ConstMatrixRef<S>& dxn, const ConstMatrixRef<S>& a,
                                 Index rows, Index hidden, Index n) {
  check_shape(where, "da", da.rows(), da.cols(), rows, n);
  check_shape(where, "dxn", dxn.rows(), dxn.cols(), hidden, n);
  check_shape(where, "a", a.rows(), a.cols(), rows, n);
}
}  // namespace detail

}  // namespace reformer
