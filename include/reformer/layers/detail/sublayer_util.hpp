#pragma once
// Internal helpers of the dense sublayers (attention wrapper, full attention, feed-forward):
// deterministic multi-threaded products and column-parallel wrappers around the ops, and the
// Hugging Face style initialisation.
//
// Determinism (docs/DESIGN.md 3.6): every helper splits its work into fixed blocks whose boundaries
// depend only on the shapes, never on the thread count, and each block is computed by the same
// code whichever thread runs it, writing its own slice of the output. Activation products are
// split over their output columns (or rows). Reductions that are split (weight gradients
// dW += dy x^T over tokens, LayerNorm's dgamma/dbeta) go through per-block partial sums that
// are added in block order.
//
// Block sizes and packing: Eigen's GEMM copies ("packs") both operands into its own panel
// layout. A block of a product split over output columns re-packs the whole left operand (the
// weight), a block of a product split over output rows re-packs the whole right operand. With
// blocks of w columns that costs one packed weight element per 2w flops; at w = 128 the packing
// was 14% of the model step's CPU time (T = 4096, perf). Products therefore use wide column
// blocks (up to kMaxProductColumns), and weight gradients are split over the tokens (each
// partial product packs only its own tokens) instead of over dW's rows.
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
#include <type_traits>
#include <vector>

namespace reformer {
namespace detail {

/// Column block of token-parallel elementwise work (LayerNorm, dropout, activations).
inline constexpr Index kColumnBlock = 128;
/// Products split over their output columns aim at kProductColumnBlocks blocks of
/// kMinProductColumns .. kMaxProductColumns columns (multiples of 64): wide enough to amortise
/// re-packing the weight, enough of them to keep the threads busy.
inline constexpr Index kProductColumnBlocks = 8;
inline constexpr Index kMinProductColumns = 256;
inline constexpr Index kMaxProductColumns = 1024;
/// Products too narrow to split over columns split over their output rows instead: at most
/// kMaxRowBlocks blocks of at least kMinRowBlock rows (every block re-packs the right operand).
inline constexpr Index kMinRowBlock = 32;
inline constexpr Index kMaxRowBlocks = 8;
/// Weight gradients dW += dy x^T are summed over blocks of kGradTokenBlock tokens, at most
/// kGradPartials partial dW at a time (memory: kGradPartials x dW).
inline constexpr Index kGradTokenBlock = 256;
inline constexpr Index kGradPartials = 8;

/// Rounds n up to a multiple of m.
inline Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }

/// The row block for a product with `rows` output rows (a function of the shape only).
inline Index row_block(Index rows) {
  const Index even_split = (rows + kMaxRowBlocks - 1) / kMaxRowBlocks;
  return std::max(kMinRowBlock, round_up(even_split, 16));
}

/// The column block for a product with `cols` output columns (a function of the shape only).
inline Index product_column_block(Index cols) {
  const Index even_split = (cols + kProductColumnBlocks - 1) / kProductColumnBlocks;
  return std::clamp(round_up(even_split, 64), kMinProductColumns, kMaxProductColumns);
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

/// dst += sign * src (sign = +1 or -1), in parallel over column blocks (the reversible
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

/// out = lhs * rhs (or out += lhs * rhs when `accumulate`), in parallel over fixed blocks of
/// out's columns (product_column_block) when it is wide, else of its rows. The choice depends
/// on the shapes only. `out` must not alias the operands; lhs / rhs may be any Eigen
/// expressions (e.g. transposes of row-major weight maps).
template <class Out, class Lhs, class Rhs>
void parallel_product(Out&& out, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  REFORMER_ASSERT(lhs.cols() == rhs.rows() && out.rows() == lhs.rows() && out.cols() == rhs.cols());
  const double flops_per_column = 2.0 * double(out.rows()) * double(lhs.cols());
  if (out.cols() >= 2 * kMinProductColumns) {
    const Index n = out.cols();
    const Index cb = product_column_block(n);
    parallel_items(num_blocks(n, cb), flops_per_column * double(n), [&](Index blk) {
      const Index c0 = blk * cb;
      const Index nc = std::min(cb, n - c0);
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

/// Parameter gradients of y = W x (+ b): dW += dy x^T (and db += row sums of dy).
/// dy: out x N, x: in x N, dW: out x in.
///
///   dW += sum over token blocks b (kGradTokenBlock tokens, in order) of  dy_b x_b^T
///
/// The partial products run in parallel, kGradPartials at a time, and are added to dW in block
/// order; db sums each row over all N tokens in column order (split over rows).
template <class S, class GW>
void linear_weight_grads(ConstMatrixRef<S> dy, ConstMatrixRef<S> x, GW&& dW,
                         VectorMap<S>* db = nullptr) {
  REFORMER_ASSERT(dy.cols() == x.cols() && dW.rows() == dy.rows() && dW.cols() == x.rows());
  const Index out = dy.rows(), in = x.rows(), n = x.cols();
  if (db != nullptr) {
    const Index rb = row_block(out);
    parallel_items(num_blocks(out, rb), double(out) * double(n), [&](Index blk) {
      const Index r0 = blk * rb;
      const Index nr = std::min(rb, out - r0);
      db->segment(r0, nr) += dy.middleRows(r0, nr).rowwise().sum();
    });
  }
  const Index blocks = num_blocks(n, kGradTokenBlock);
  const double flops_per_token = 2.0 * double(out) * double(in);
  if (blocks <= 1 || flops_per_token * double(n) < kMinParallelFlops) {
    dW.noalias() += dy * x.transpose();
    return;
  }
  using Partial = typename std::decay_t<GW>::PlainObject;  // out x in, dW's storage order
  std::vector<Partial> partial(static_cast<std::size_t>(std::min(blocks, kGradPartials)));
  for (Index w0 = 0; w0 < blocks; w0 += kGradPartials) {
    const Index wave = std::min(kGradPartials, blocks - w0);
    parallel_for(wave, [&](Index i) {
      const Index t0 = (w0 + i) * kGradTokenBlock;
      const Index nt = std::min(kGradTokenBlock, n - t0);
      Partial& p = partial[static_cast<std::size_t>(i)];
      p.resize(out, in);
      p.noalias() = dy.middleCols(t0, nt) * x.middleCols(t0, nt).transpose();
    });
    // dW += partial_0 + partial_1 + ... (in block order, split over dW's rows)
    const Index rb = row_block(out);
    parallel_items(num_blocks(out, rb), double(wave) * double(out) * double(in), [&](Index blk) {
      const Index r0 = blk * rb;
      const Index nr = std::min(rb, out - r0);
      for (Index i = 0; i < wave; ++i) {
        dW.middleRows(r0, nr) += partial[static_cast<std::size_t>(i)].middleRows(r0, nr);
      }
    });
  }
}

/// y = LayerNorm(x) (ops/layer_norm.hpp), in parallel over column blocks.
template <class S>
void layer_norm_forward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma,
                                 ConstVectorRef<S> beta, double eps, MatrixRef<S> y) {
  for_column_blocks(x.cols(), 8.0 * double(x.rows()), [&](Index c0, Index nc) {
    layer_norm_forward<S>(x.middleCols(c0, nc), gamma, beta, eps, y.middleCols(c0, nc));
  });
}

/// LayerNorm backward (ops/layer_norm.hpp), in parallel over column blocks: dx overwritten (or
/// dx += with accumulate_dx), dgamma / dbeta accumulated from per-block partial sums added in
/// block order.
template <class S>
void layer_norm_backward_parallel(ConstMatrixRef<S> x, ConstVectorRef<S> gamma, double eps,
                                  ConstMatrixRef<S> dy, MatrixRef<S> dx, VectorRef<S> dgamma,
                                  VectorRef<S> dbeta, bool accumulate_dx = false) {
  const Index d = x.rows();
  const Index blocks = num_blocks(x.cols(), kColumnBlock);
  // One block's dx: written in place, or into a block-sized buffer added to dx.
  const auto block_backward = [&](Index c0, Index nc, VectorRef<S> dgamma_b, VectorRef<S> dbeta_b) {
    if (!accumulate_dx) {
      layer_norm_backward<S>(x.middleCols(c0, nc), gamma, eps, dy.middleCols(c0, nc),
                             dx.middleCols(c0, nc), dgamma_b, dbeta_b);
      return;
    }
    Matrix<S> dx_b(d, nc);
    layer_norm_backward<S>(x.middleCols(c0, nc), gamma, eps, dy.middleCols(c0, nc), dx_b, dgamma_b,
                           dbeta_b);
    dx.middleCols(c0, nc) += dx_b;
  };
  if (blocks <= 1) {
    block_backward(0, x.cols(), dgamma, dbeta);
    return;
  }
  Matrix<S> partial = Matrix<S>::Zero(d, 2 * blocks);  // [dgamma_0, dbeta_0, dgamma_1, ...]
  for_column_blocks(x.cols(), 16.0 * double(d), [&](Index c0, Index nc) {
    const Index blk = c0 / kColumnBlock;
    block_backward(c0, nc, partial.col(2 * blk), partial.col(2 * blk + 1));
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
    if (out.data() != in.data()) copy_parallel<S>(in, out);
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
