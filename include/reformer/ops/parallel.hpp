#pragma once
// Deterministic parallel loops: work is split into fixed-size blocks whose boundaries depend
// only on the shapes, never on the thread count, and each block is computed by the same code
// whichever thread runs it, writing its own slice of the output. Results are therefore bitwise
// identical for any number of threads.
//
//   parallel_items(n, flops, f)          f(i) for i in [0, n), in parallel when flops is large
//   for_column_blocks(n, flops_col, f)   f(c0, nc) for blocks of tuning::kColumnBlock columns
//   add_parallel(dst, src, sign)         dst += sign * src       (D x N, over column blocks)
//   copy_parallel(src, dst)              dst = src               (D x N, over column blocks)
#include "reformer/core/error.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"

#include <algorithm>

namespace reformer {

/// Rounds n up to a multiple of m (m > 0).
inline Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }

/// Number of blocks of `block` items covering n items (the last one may be partial).
inline Index num_blocks(Index n, Index block) { return (n + block - 1) / block; }

/// Runs f(i) for i in [0, n): through parallel_for when `flops` (the loop's total work) is at
/// least tuning::kMinParallelFlops, else serially on the calling thread.
template <class F>
void parallel_items(Index n, double flops, F&& f) {
  if (flops < tuning::kMinParallelFlops) {
    for (Index i = 0; i < n; ++i) f(i);
  } else {
    parallel_for(n, f);
  }
}

/// Runs f(c0, nc) for the fixed blocks [c0, c0 + nc) of tuning::kColumnBlock columns of
/// [0, n); in parallel when `flops_per_column * n` is large enough.
template <class F>
void for_column_blocks(Index n, double flops_per_column, F&& f) {
  constexpr Index kBlock = tuning::kColumnBlock;
  parallel_items(num_blocks(n, kBlock), flops_per_column * double(n), [&](Index blk) {
    const Index c0 = blk * kBlock;
    f(c0, std::min(kBlock, n - c0));
  });
}

/// dst += sign * src (sign = +1 or -1), in parallel over column blocks (e.g. the reversible
/// streams' updates: memory-bound, D x N each).
template <class S>
void add_parallel(MatrixRef<S> dst, ConstMatrixRef<S> src, S sign) {
  REFORMER_ASSERT(dst.rows() == src.rows() && dst.cols() == src.cols());
  for_column_blocks(dst.cols(), double(dst.rows()), [&](Index c0, Index nc) {
    if (sign > 0) {
      dst.middleCols(c0, nc) += src.middleCols(c0, nc);
    } else {
      dst.middleCols(c0, nc) -= src.middleCols(c0, nc);
    }
  });
}

/// dst = src, in parallel over column blocks.
template <class S>
void copy_parallel(ConstMatrixRef<S> src, MatrixRef<S> dst) {
  REFORMER_ASSERT(dst.rows() == src.rows() && dst.cols() == src.cols());
  for_column_blocks(dst.cols(), double(dst.rows()),
                    [&](Index c0, Index nc) { dst.middleCols(c0, nc) = src.middleCols(c0, nc); });
}

}  // namespace reformer
