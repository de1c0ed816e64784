#pragma once
// Internal helpers of the dense sublayers (attention wrapper, full attention, feed-forward):
// deterministic multi-threaded products and column-parallel wrappers around the ops, and the
// Hugging Face style initialisation.
//
// Determinism (DESIGN 3.6): every helper splits its work into fixed-size blocks whose boundaries
// depend only on the shapes, never on the thread count, and each block is computed by the same
// code whichever thread runs it, writing its own slice of the output. Products are split over
// their OUTPUT (rows or columns), never over the reduction dimension, so a weight gradient
// dW += dy x^T reduces over all tokens inside one product in one fixed order. Reductions that
// are split (LayerNorm's dgamma/dbeta) go through per-block partial sums added in block order.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace reformer {
namespace detail {

/// Column block of token-parallel work (elementwise ops, products split over columns).
inline constexpr Index kColumnBlock = 128;
/// Products split over their output rows (e.g. weight gradients) use at most kMaxRowBlocks
/// blocks of at least kMinRowBlock rows: every block re-packs the whole right-hand operand, so
/// fewer, taller blocks waste less.
inline constexpr Index kMinRowBlock = 32;
inline constexpr Index kMaxRowBlocks = 8;

/// The row block for a product with `rows` output rows (a function of the shape only).
inline Index row_block(Index rows) {
  const Index even_split = (rows + kMaxRowBlocks - 1) / kMaxRowBlocks;
  return std::max(kMinRowBlock, (even_split + 15) / 16 * 16);
}

/// Rough cost of one dropout draw (counter hashing) in flops, for the parallel threshold.
inline constexpr double kDropoutFlopsPerElement = 20.0;

inline Index num_blocks(Index n, Index block) { return (n + block - 1) / block; }

/// Below this many floating-point operations a loop runs on the calling thread: starting a
/// parallel region costs more than it saves. The blocks are the same either way, so results do
/// not depend on the choice.
inline constexpr double kMinParallelFlops = 1 << 20;

/// Runs f(i) for i in [0, n): through parallel_for when `flops` (the loop's total work) is
/// large enough, else serially.
template <class F>
void parallel_items(Index n, double flops, F&& f) {
  if (flops < kMinParallelFlops) {
    for (Index i = 0; i < n; ++i) f(i);
  } else {
    parallel_for(n, f);
  }
}

/// Runs f(c0, nc) for the fixed blocks [c0, c0 + nc) of kColumnBlock columns of [0, n); in
/// parallel when `flops_per_column * n` is large enough.
template <class F>
void for_column_blocks(Index n, double flops_per_column, F&& f) {
  parallel_items(num_blocks(n, kColumnBlock), flops_per_column * double(n), [&](Index blk) {
    const Index c0 = blk * kColumnBlock;
    f(c0, std::min(kColumnBlock, n - c0));
  });
}

/// out = lhs * rhs (or out += lhs * rhs when `accumulate`), in parallel over fixed blocks of
/// out's columns when it is wide, else of its rows. The choice depends on the shapes only. `out`
/// must not alias the operands; lhs / rhs may be any Eigen expressions (e.g. transposes of
/// row-major weight maps).
template <class Out, class Lhs, class Rhs>
void parallel_product(Out&& out, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  REFORMER_ASSERT(lhs.cols() == rhs.rows() && out.rows() == lhs.rows() && out.cols() == rhs.cols());
  const double flops_per_column = 2.0 * double(out.rows()) * double(lhs.cols());
  if (out.cols() >= 2 * kColumnBlock) {
    for_column_blocks(out.cols(), flops_per_column, [&](Index c0, Index nc) {
      if (accumulate) {
        out.middleCols(c0, nc).noalias() += lhs * rhs.middleCols(c0, nc);
      } else {
        out.middleCols(c0, nc).noalias() = lhs * rhs.middleCols(c0, nc);
      }
    });
  } else {
    const Index rows = out.rows();
    const Index rb = row_block(rows);
    parallel_items(num_blocks(rows, rb), flops_per_column * double(out.cols()), [&](Index blk) {
      const Index r0 = blk * rb;
      const Index nr = std::min(rb, rows - r0);
      if (accumulate) {
        out.middleRows(r0, nr).noalias() += lhs.middleRows(r0, nr) * rhs;
      } else {
        out.middleRows(r0, nr).noalias() = lhs.middleRows(r0, nr) * rhs;
      }
    });
  }
}

/// Parameter gradients of y = W x (+ b): dW += dy x^T (and db += row sums of dy), split over
/// fixed blocks of dW's rows. dy: out x N, x: in x N, dW: out x in.
template <class S, class GW>
void linear_weight_grads(ConstMatrixRef<S> dy, ConstMatrixRef<S> x, GW&& dW,
                         VectorMap<S>* db = nullptr) {
  REFORMER_ASSERT(dy.cols() == x.cols() && dW.rows() == dy.rows() && dW.cols() == x.rows());
  const Index rows = dy.rows();
  const double flops = 2.0 * double(rows) * double(x.rows()) * double(x.cols());
  const Index rb = row_block(rows);
  parallel_items(num_blocks(rows, rb), flops, [&](Index blk) {
    const Index r0 = blk * rb;
    const Index nr = std::min(rb, rows - r0);
    dW.middleRows(r0, nr).noalias() += dy.middleRows(r0, nr) * x.transpose();
    if (db != nullptr) db->segment(r0, nr) += dy.middleRows(r0, nr).rowwise().sum();
  });
}

/// y = LayerNorm(x) (ops/layer_norm.hpp), in parallel over column blocks.
template <class S>
void layer_norm_forward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma,
                                 ConstVectorRef<S> beta, double eps, MatrixRef<S> y) {
  for_column_blocks(x.cols(), 8.0 * double(x.rows()), [&](Index c0, Index nc) {
    layer_norm_forward<S>(x.middleCols(c0, nc), gamma, beta, eps, y.middleCols(c0, nc));
  });
}

/// LayerNorm backward (ops/layer_norm.hpp), in parallel over column blocks: dx overwritten,
/// dgamma / dbeta accumulated from per-block partial sums added in block order.
template <class S>
void layer_norm_backward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, double eps,
                                  ConstMatrixRef<S> dy, MatrixRef<S> dx, VectorRef<S> dgamma,
                                  VectorRef<S> dbeta) {
  const Index d = x.rows();
  const Index blocks = num_blocks(x.cols(), kColumnBlock);
  if (blocks <= 1) {
    layer_norm_backward<S>(x, gamma, eps, dy, dx, dgamma, dbeta);
    return;
  }
  Matrix<S> partial = Matrix<S>::Zero(d, 2 * blocks);  // [dgamma_0, dbeta_0, dgamma_1, ...]
  for_column_blocks(x.cols(), 16.0 * double(d), [&](Index c0, Index nc) {
    const Index blk = c0 / kColumnBlock;
    layer_norm_backward<S>(x.middleCols(c0, nc), gamma, eps, dy.middleCols(c0, nc),
                           dx.middleCols(c0, nc), partial.col(2 * blk), partial.col(2 * blk + 1));
  });
  for (Index blk = 0; blk < blocks; ++blk) {
    dgamma += partial.col(2 * blk);
    dbeta += partial.col(2 * blk + 1);
  }
}

/// out = Dropout(in) for the block of columns [c0, c0 + in.cols()) of a full matrix (draw index
/// = the element's linear index in the full matrix, ops/dropout.hpp), in parallel over column
/// blocks. `out` may alias `in`. p == 0 is a copy.
template <class S>
void dropout_parallel(const Rng& rng, double p, Index c0, ConstMatrixRef<S> in, MatrixRef<S> out) {
  if (p == 0.0) {
    if (out.data() != in.data()) out = in;
    return;
  }
  const Index rows = in.rows();
  for_column_blocks(in.cols(), kDropoutFlopsPerElement * double(rows), [&](Index b0, Index nc) {
    dropout_forward<S>(rng, p, (c0 + b0) * rows, in.middleCols(b0, nc), out.middleCols(b0, nc));
  });
}

/// values of `slot` = std * normal draws of `rng` (draw i = flat element i of the slot).
template <class S>
void init_normal(Parameters<S>& params, SlotId slot, const Rng& rng, double std) {
  REFORMER_REQUIRE(std >= 0 && std::isfinite(std), InvalidArgument, "init", "std = ", std, " for '",
                   params.slot(slot).name, "' must be finite and non-negative");
  auto v = params.value_vector(slot);
  for (Index i = 0; i < v.size(); ++i) {
    v[i] = static_cast<S>(std * rng.normal(static_cast<std::uint64_t>(i)));
  }
}

}  // namespace detail
}  // namespace reformer
