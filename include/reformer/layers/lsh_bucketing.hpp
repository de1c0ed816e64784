#pragma once
// Locality-sensitive hashing of vectors into buckets, and the sort of hashed positions by
// bucket (docs/DESIGN.md 1.2). Usable on its own; LshAttention (layers/lsh_attention.hpp)
// builds on it.
//
// Hashing one vector x (Dh) with a random rotation R (Dh x NB/2), "angular LSH":
//   b(x) = argmax_j [ R^T x ; -R^T x ]_j                 in [0, NB), the first maximum wins
// Factorised buckets (f1, f2, ...): R is the concatenation of one Dh x f_i/2 block per factor
// (in order), each factor is hashed on its own block, and b = b1 + f1 * b2 + f1 * f2 * b3 ...
// (the Hugging Face / trax layout). Every count and factor is even.
// The rotated values of a block of tokens are laid out tokens x columns, so the argmax runs over
// a packet of tokens at once, each lane with the plain scan's comparisons in their order
// (detail::lsh_argmax_lanes).
//
// Rotations come from the library's counter-based RNG: element (d, j) of the rotation of
// (head, round) is `key.normal(d * cols + j)` with key = ctx.rng(stream::kLshRotation)
// .derive(head).derive(round), so the seed, the training step and the layer change them and
// nothing random needs to be stored.
//
// Sorting: all R*L slots of a head (round r, position t) are ordered by (r, bucket, t) with a
// stable counting sort per round in O(R * (L + bins)) (a comparison sort when the bins outnumber
// the positions); padded positions carry the pad bucket NB (one past the real ones) so they sort
// after every real position of their round.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/detail/packets.hpp"
#include "reformer/ops/linear.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace reformer {

/// The concrete bucket factors of one hashing call: {NB} or {f1, f2, ...}, each even >= 2.
struct LshBucketLayout {
  std::vector<Index> factors;

  /// NB: the number of real buckets (product of the factors).
  Index num_buckets() const {
    Index n = 1;
    for (Index f : factors) n *= f;
    return n;
  }
  /// Columns of a rotation: sum of f/2 over the factors.
  Index rotation_columns() const {
    Index n = 0;
    for (Index f : factors) n += f / 2;
    return n;
  }
};

namespace detail {
/// floor(sqrt(n)) for n >= 0, exact.
inline Index lsh_isqrt(Index n) {
  Index r = 0;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}
}  // namespace detail

/// Rotation columns (the sum of f/2 over the bucket factors: what hashing costs per token,
/// head and round) allowed for any sequence length.
inline constexpr Index kLshMaxRotationColumns = Index{1} << 13;

/// The most rotation columns allowed for sequences of (padded) length `length` hashed for
/// chunks of `chunk_length`: max(kLshMaxRotationColumns, length / chunk_length). Hugging Face's
/// automatic rule never needs more than about 2 * length / chunk_length buckets, i.e. at most
/// length / chunk_length columns.
inline Index lsh_max_rotation_columns(Index length, Index chunk_length) {
  const Index per_length = chunk_length > 0 ? length / chunk_length : 0;
  return std::max(per_length, kLshMaxRotationColumns);
}

/// Throws ConfigError unless `num_buckets` is empty (automatic), one even count >= 2, or a list
/// of even factors >= 2 (product <= 2^30).
inline void validate_lsh_num_buckets(const char* where, const std::vector<Index>& num_buckets) {
  for (std::size_t i = 0; i < num_buckets.size(); ++i) {
    const Index f = num_buckets[i];
    REFORMER_REQUIRE(f >= 2 && f % 2 == 0, ConfigError, where,
                     "num_buckets = ", detail::list_to_string(num_buckets), ": entry ", i, " = ", f,
                     " must be even and >= 2");
  }
  REFORMER_REQUIRE(checked_product(num_buckets, Index{1} << 30).has_value(), ConfigError, where,
                   "num_buckets = ", detail::list_to_string(num_buckets),
                   " has more than 2^30 buckets");
}

/// The bucket layout for a (padded) sequence of `length` tokens hashed for chunks of
/// `chunk_length`. A non-empty `num_buckets` is used as given (validated). Empty = Hugging Face's
/// rule:
///   p  = bit_length(2 * (length / C)) - 1,  NB = 2^p   (at least 2)
///   limit = 2 * max(floor(sqrt(max_positions / C)), C)
///   NB > limit  ->  factors (2^(p/2), 2^(p - p/2))
inline LshBucketLayout lsh_bucket_layout(const std::vector<Index>& num_buckets, Index length,
                                         Index chunk_length, Index max_positions) {
  const char* where = "lsh_bucket_layout";
  validate_lsh_num_buckets(where, num_buckets);
  REFORMER_REQUIRE(chunk_length >= 1, InvalidArgument, where, "chunk_length = ", chunk_length,
                   " must be >= 1");
  if (!num_buckets.empty()) {
    const LshBucketLayout layout{num_buckets};
    REFORMER_REQUIRE(layout.rotation_columns() <= lsh_max_rotation_columns(length, chunk_length),
                     ConfigError, where, "num_buckets = ", detail::list_to_string(num_buckets),
                     " needs ", layout.rotation_columns(),
                     " rotation columns per head and round; sequences of length ", length,
                     " with chunk_length ", chunk_length, " allow at most ",
                     lsh_max_rotation_columns(length, chunk_length),
                     " (factorise the buckets: (f1, f2) hashes f1 * f2 buckets with (f1 + f2) / 2 "
                     "columns)");
    return layout;
  }
  REFORMER_REQUIRE(length >= 1, InvalidArgument, where, "length = ", length, " must be >= 1");
  REFORMER_REQUIRE(max_positions >= 1, InvalidArgument, where, "max_positions = ", max_positions,
                   " must be >= 1");
  const Index target = 2 * (length / chunk_length);
  Index p = 0;  // bit_length(target) - 1
  while ((Index{2} << p) <= target) ++p;
  if (p < 1) p = 1;
  const Index nb = Index{1} << p;
  const Index limit = 2 * std::max(detail::lsh_isqrt(max_positions / chunk_length), chunk_length);
  if (nb > limit) return LshBucketLayout{{Index{1} << (p / 2), Index{1} << (p - p / 2)}};
  return LshBucketLayout{{nb}};
}

/// The RNG key of the rotation of (head, round) for one sublayer call.
inline Rng lsh_rotation_key(const Context& ctx, Index head, Index round) {
  return ctx.rng(stream::kLshRotation)
      .derive(static_cast<std::uint64_t>(head))
      .derive(static_cast<std::uint64_t>(round));
}

/// rotations (Dh x layout.rotation_columns()) = normal draws of `key`, element (d, j) drawn with
/// index d * cols + j.
template <class S>
void lsh_draw_rotations(const Rng& key, const LshBucketLayout& layout, MatrixRef<S> rotations) {
  const Index cols = layout.rotation_columns();
  check_shape("lsh_draw_rotations", "rotations", rotations.rows(), rotations.cols(), -1, cols);
  for (Index d = 0; d < rotations.rows(); ++d)
    for (Index j = 0; j < cols; ++j)
      rotations(d, j) = static_cast<S>(key.normal(static_cast<std::uint64_t>(d * cols + j)));
}

/// Convenience: a freshly drawn Dh x rotation_columns() rotation.
template <class S>
Matrix<S> lsh_rotations(const Rng& key, Index head_size, const LshBucketLayout& layout) {
  REFORMER_REQUIRE(head_size >= 1, InvalidArgument, "lsh_rotations", "head_size = ", head_size,
                   " must be >= 1");
  Matrix<S> r(head_size, layout.rotation_columns());
  lsh_draw_rotations<S>(key, layout, r);
  return r;
}

namespace detail {

/// The bucket of one factor: argmax over [r_0 .. r_{h-1}, -r_0 .. -r_{h-1}] (r_j at
/// r[j * stride]), the first maximum winning (comparisons as `>`, so a NaN is never a new
/// maximum).
template <class S>
Index lsh_argmax_reference(const S* r, Index h, Index stride = 1) {
  Index best = 0;
  S best_value = r[0];
  for (Index j = 1; j < h; ++j) {
    if (r[j * stride] > best_value) {
      best_value = r[j * stride];
      best = j;
    }
  }
  for (Index j = 0; j < h; ++j) {
    if (-r[j * stride] > best_value) {
      best_value = -r[j * stride];
      best = h + j;
    }
  }
  return best;
}

/// lsh_argmax_reference for k tokens at once (k = the packet size): lane l of the result is the
/// bucket of token l, whose h values lie at r[l + j * stride] (j < h). The lanes run the
/// reference's comparisons in its order (first r_j, then -r_j, each `>` the best so far), so
/// every lane gives exactly its answer: ties, signed zeros, infinities and NaNs included. The
/// indices are held as scalars of S: 2h must not exceed 2^digits (lsh_argmax_lanes_exact).
template <class S>
Packet<S> lsh_argmax_lanes(const S* r, Index stride, Index h) {
  namespace ei = Eigen::internal;
  using P = Packet<S>;
  P best_value = ei::ploadu<P>(r);
  P best = ei::pzero(best_value);
  for (Index j = 1; j < h; ++j) {
    const P v = ei::ploadu<P>(r + j * stride);
    const P better = ei::pcmp_lt(best_value, v);  // v > best_value
    best_value = ei::pselect(better, v, best_value);
    best = ei::pselect(better, ei::pset1<P>(static_cast<S>(j)), best);
  }
  for (Index j = 0; j < h; ++j) {
    const P v = ei::pnegate(ei::ploadu<P>(r + j * stride));
    const P better = ei::pcmp_lt(best_value, v);  // -r_j > best_value
    best_value = ei::pselect(better, v, best_value);
    best = ei::pselect(better, ei::pset1<P>(static_cast<S>(h + j)), best);
  }
  return best;
}

/// Whether lsh_argmax_lanes holds every index of a factor of `half` columns exactly.
template <class S>
bool lsh_argmax_lanes_exact(Index half) {
  return 2 * half <= (Index{1} << std::numeric_limits<S>::digits);
}

}  // namespace detail

/// Buckets of the columns of `vectors` (Dh x T) under `rotations` (Dh x rotation_columns):
/// buckets[t] in [0, NB). `buckets` must hold vectors.cols() entries.
template <class S>
void lsh_hash(ConstMatrixRef<S> vectors, ConstMatrixRef<S> rotations, const LshBucketLayout& layout,
              std::int32_t* buckets) {
  const char* where = "lsh_hash";
  validate_lsh_num_buckets(where, layout.factors);
  REFORMER_REQUIRE(!layout.factors.empty(), InvalidArgument, where,
                   "layout.factors must not be empty");
  REFORMER_REQUIRE(rotations.rows() == vectors.rows(), InvalidArgument, where,
                   "rotations.rows() = ", rotations.rows(), " must equal the head size ",
                   "vectors.rows() = ", vectors.rows());
  check_shape(where, "rotations", rotations.rows(), rotations.cols(), vectors.rows(),
              layout.rotation_columns());
  REFORMER_REQUIRE(buckets != nullptr || vectors.cols() == 0, InvalidArgument, where,
                   "buckets must not be null");
  const Index n = vectors.cols();
  const Index cols = rotations.cols();
  // Blocks of tokens, so the rotated buffer stays small: rotated(t, j) = x_t . R_j, one column
  // per rotation column with the block's tokens side by side, so a packet holds one column's
  // values for k tokens and the argmax runs over k tokens at once. Rows past the block's tokens
  // are zero (their buckets are computed and dropped).
  constexpr Index k = detail::kPacketSize<S>;
  constexpr Index kBlock = tuning::kLshHashTokenBlock;
  const Index rows = (std::min(n, kBlock) + k - 1) / k * k;
  struct RotatedTag;
  Eigen::Map<Matrix<S>, Eigen::AlignedMax> rotated(thread_buffer<S, RotatedTag>(rows * cols), rows,
                                                   cols);  // the calling thread's buffer
  for (Index t0 = 0; t0 < n; t0 += kBlock) {
    const Index nt = std::min(kBlock, n - t0);
    const Index padded = (nt + k - 1) / k * k;
    // rotated: nt x cols = x^T R
    product(rotated.topRows(nt), vectors.middleCols(t0, nt).transpose(), rotations, false);
    rotated.middleRows(nt, padded - nt).setZero();
    for (Index t = t0; t < t0 + nt; ++t) buckets[t] = 0;
    Index scale = 1, col0 = 0;
    for (Index f : layout.factors) {
      const Index half = f / 2;
      if (!detail::lsh_argmax_lanes_exact<S>(half)) {
        for (Index t = 0; t < nt; ++t)
          buckets[t0 + t] += static_cast<std::int32_t>(
              scale * detail::lsh_argmax_reference<S>(&rotated(t, col0), half, rows));
      } else {
        for (Index t = 0; t < nt; t += k) {
          S best[k];
          Eigen::internal::pstoreu(best,
                                   detail::lsh_argmax_lanes<S>(&rotated(t, col0), rows, half));
          for (Index l = 0; l < std::min(k, nt - t); ++l)
            buckets[t0 + t + l] += static_cast<std::int32_t>(scale * static_cast<Index>(best[l]));
        }
      }
      scale *= f;
      col0 += half;
    }
  }
}

/// Stable counting sort of the R*L slots of one head by (round, bucket, position).
///   buckets: R x L row-major (slot r*L + t), values in [0, num_bins)
///   order[s]   = r*L + t of the slot at sorted place s (round r's slots stay in [r*L, (r+1)*L))
///   inverse[r*L + t] = s  (order[inverse[i]] == i)
///   counts: scratch of lsh_counting_sort_scratch(length, num_bins) entries
/// O(R * (L + num_bins)) by counting when num_bins <= 2 * L + 1, else O(R * L log L) by
/// comparison, so the cost never grows with the bucket count; slots with equal buckets keep
/// their position order.
inline void lsh_counting_sort(const std::int32_t* buckets, Index rounds, Index length,
                              Index num_bins, Index* order, Index* inverse, Index* counts);

/// The scratch entries lsh_counting_sort needs: num_bins + 1, or L when the bins outnumber the
/// positions.
inline Index lsh_counting_sort_scratch(Index length, Index num_bins) {
  return num_bins > 2 * length + 1 ? length : num_bins + 1;
}

/// lsh_counting_sort with its scratch in `counts` (resized).
inline void lsh_counting_sort(const std::int32_t* buckets, Index rounds, Index length,
                              Index num_bins, Index* order, Index* inverse,
                              std::vector<Index>& counts) {
  counts.resize(
      static_cast<std::size_t>(std::max(lsh_counting_sort_scratch(length, num_bins), Index{0})));
  lsh_counting_sort(buckets, rounds, length, num_bins, order, inverse, counts.data());
}

/// lsh_counting_sort with its scratch in the calling thread's buffer (core/workspace.hpp): no
/// allocation once the thread has sorted a head of this size.
inline void lsh_counting_sort(const std::int32_t* buckets, Index rounds, Index length,
                              Index num_bins, Index* order, Index* inverse) {
  struct CountsTag;
  Index* counts = thread_buffer<Index, CountsTag>(
      std::max(lsh_counting_sort_scratch(length, num_bins), Index{0}));
  lsh_counting_sort(buckets, rounds, length, num_bins, order, inverse, counts);
}

inline void lsh_counting_sort(const std::int32_t* buckets, Index rounds, Index length,
                              Index num_bins, Index* order, Index* inverse, Index* counts) {
  const char* where = "lsh_counting_sort";
  REFORMER_REQUIRE(rounds >= 1 && length >= 1, InvalidArgument, where, "rounds = ", rounds,
                   " and length = ", length, " must be >= 1");
  REFORMER_REQUIRE(num_bins >= 1, InvalidArgument, where, "num_bins = ", num_bins, " must be >= 1");
  REFORMER_REQUIRE(
      buckets != nullptr && order != nullptr && inverse != nullptr && counts != nullptr,
      InvalidArgument, where, "buckets, order, inverse and counts must not be null");
  if (num_bins > 2 * length + 1) {
    // More bins than positions: sort the positions by (bucket, position) instead of counting.
    for (Index r = 0; r < rounds; ++r) {
      const std::int32_t* b = buckets + r * length;
      for (Index t = 0; t < length; ++t) {
        REFORMER_REQUIRE(b[t] >= 0 && b[t] < num_bins, InvalidArgument, where, "bucket of round ",
                         r, ", position ", t, " = ", b[t], " is outside [0, ", num_bins, ")");
        counts[t] = t;
      }
      std::sort(counts, counts + length,
                [b](Index x, Index y) { return b[x] != b[y] ? b[x] < b[y] : x < y; });
      for (Index k = 0; k < length; ++k) {
        const Index s = r * length + k, slot = r * length + counts[k];
        order[s] = slot;
        inverse[slot] = s;
      }
    }
    return;
  }
  for (Index r = 0; r < rounds; ++r) {
    const std::int32_t* b = buckets + r * length;
    std::fill(counts, counts + num_bins + 1, Index{0});
    for (Index t = 0; t < length; ++t) {
      REFORMER_REQUIRE(b[t] >= 0 && b[t] < num_bins, InvalidArgument, where, "bucket of round ", r,
                       ", position ", t, " = ", b[t], " is outside [0, ", num_bins, ")");
      ++counts[b[t] + 1];
    }
    // counts[k] = first sorted place of bin k (exclusive prefix sum), offset by the round.
    counts[0] = r * length;
    for (Index k = 1; k <= num_bins; ++k) counts[k] += counts[k - 1];
    for (Index t = 0; t < length; ++t) {
      const Index s = counts[b[t]]++;
      order[s] = r * length + t;
      inverse[r * length + t] = s;
    }
  }
}

/// The result of lsh_sort.
struct LshSortedSlots {
  std::vector<Index> order;    ///< sorted place -> slot r*L + t
  std::vector<Index> inverse;  ///< slot r*L + t -> sorted place
};

/// Convenience overload of lsh_counting_sort allocating its outputs.
inline LshSortedSlots lsh_sort(const std::vector<std::int32_t>& buckets, Index rounds, Index length,
                               Index num_bins) {
  REFORMER_REQUIRE(static_cast<Index>(buckets.size()) == rounds * length, InvalidArgument,
                   "lsh_sort", "buckets.size() = ", buckets.size(),
                   " must equal rounds * length = ", rounds, " * ", length);
  LshSortedSlots s;
  s.order.resize(buckets.size());
  s.inverse.resize(buckets.size());
  std::vector<Index> counts;
  lsh_counting_sort(buckets.data(), rounds, length, num_bins, s.order.data(), s.inverse.data(),
                    counts);
  return s;
}

}  // namespace reformer
