#pragma once
// Inverted dropout driven by the counter-based Rng: the mask is a pure function of the key, so
// the backward pass (and any recomputation) redraws it instead of storing it.
//
//   keep(k) = rng.uniform(k) >= p,    k = offset + c * rows + r    (element (r, c) of the block)
//   y(r, c) = keep(k) ? x(r, c) / (1 - p) : 0
//
// The draw index k is the element's column-major linear index in the FULL matrix when the block
// is `full.middleCols(c0, n)` and `offset = c0 * full.rows()`. A caller that processes a D x N
// matrix in chunks of columns therefore draws exactly the mask of the unchunked call.
// p must lie in [0, 1); p == 0 is a plain copy (no draws).
//
// dropout_parallel draws the same mask as dropout_forward over fixed blocks of
// tuning::kColumnBlock columns (ops/parallel.hpp), in parallel when the matrix is large.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/parallel.hpp"

#include <cmath>
#include <cstdint>

namespace reformer {

namespace detail {
inline void check_dropout_args(const char* where, double p, Index offset) {
  REFORMER_REQUIRE(p >= 0.0 && p < 1.0, InvalidArgument, where, "p = ", p, " must lie in [0, 1)");
  REFORMER_REQUIRE(offset >= 0, InvalidArgument, where, "offset = ", offset, " must be >= 0");
}

/// y = mask .* x / (1 - p) with the mask of (rng, offset); y may alias x.
template <class S>
void apply_dropout_mask(const Rng& rng, double p, Index offset, ConstMatrixRef<S> x,
                        MatrixRef<S> y) {
  if (p == 0.0) {
    if (y.data() != x.data()) y = x;
    return;
  }
  const S scale = static_cast<S>(1.0 / (1.0 - p));
  const Index rows = x.rows();
  for (Index c = 0; c < x.cols(); ++c) {
    const auto base = static_cast<std::uint64_t>(offset + c * rows);
    for (Index r = 0; r < rows; ++r) {
      const bool keep = rng.uniform(base + static_cast<std::uint64_t>(r)) >= p;
      y(r, c) = keep ? x(r, c) * scale : S(0);
    }
  }
}
}  // namespace detail

/// y = dropout(x). x, y: R x C (y may alias x). See the header comment for rng and offset.
template <class S>
void dropout_forward(const Rng& rng, double p, Index offset, ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_dropout_args("dropout_forward", p, offset);
  check_shape("dropout_forward", "y", y.rows(), y.cols(), x.rows(), x.cols());
  detail::apply_dropout_mask<S>(rng, p, offset, x, y);
}

/// dx = mask .* dy / (1 - p) with the same (rng, p, offset) as the forward call.
/// dy, dx: R x C (dx may alias dy).
template <class S>
void dropout_backward(const Rng& rng, double p, Index offset, ConstMatrixRef<S> dy,
                      MatrixRef<S> dx) {
  detail::check_dropout_args("dropout_backward", p, offset);
  check_shape("dropout_backward", "dx", dx.rows(), dx.cols(), dy.rows(), dy.cols());
  detail::apply_dropout_mask<S>(rng, p, offset, dy, dx);
}

/// In-place x = dropout(x).
template <class S>
void dropout_inplace(const Rng& rng, double p, Index offset, MatrixRef<S> x) {
  detail::check_dropout_args("dropout_inplace", p, offset);
  detail::apply_dropout_mask<S>(rng, p, offset, x, x);
}

/// Whether element k (see the header comment) survives dropout with probability p of dropping.
inline bool dropout_keeps(const Rng& rng, double p, std::uint64_t k) {
  return p == 0.0 || rng.uniform(k) >= p;
}

/// out = dropout(in) as dropout_forward for the block of columns [c0, c0 + in.cols()) of a full
/// matrix (offset = c0 * in.rows(), see the header comment), in parallel over column blocks.
/// `out` may alias `in`. p == 0 is a copy.
template <class S>
void dropout_parallel(const Rng& rng, double p, Index c0, ConstMatrixRef<S> in, MatrixRef<S> out) {
  if (p == 0.0) {
    if (out.data() != in.data()) copy_parallel<S>(in, out);
    return;
  }
  const Index rows = in.rows();
  const double flops_per_column = tuning::kDropoutFlopsPerElement * double(rows);
  for_column_blocks(in.cols(), flops_per_column, [&](Index b0, Index nc) {
    dropout_forward<S>(rng, p, (c0 + b0) * rows, in.middleCols(b0, nc), out.middleCols(b0, nc));
  });
}

}  // namespace reformer
