#pragma once
// Linear map y = W x (+ b) on column-major activations, and its backward pass.
//
//   W: out x in, [out, in] row-major (the PyTorch / Hugging Face layout)
//   x: in x N        y: out x N        b: out
//
// Callers pass the scalar explicitly (the Eigen::Ref parameters do not deduce it):
//   linear_forward<S>(W, b, x, y);
//   linear_backward<S>(W, x, dy, dx, dW, db);
//
// The serial functions check their arguments and are the reference the tests compare the
// deterministic multi-threaded kernels of the layers against:
//   parallel_product(out, lhs, rhs, accumulate)   out (+)= lhs rhs over fixed output blocks
//   linear_weight_grads<S>(dy, x, dW, &db)        dW += dy x^T, db += row sums of dy
//   linear_weight_grads_alongside<S>(..., f)      the same, with f(t0, nt) run on each token
//                                                 block while its columns are in cache
// and every other product of the layers, on the calling thread:
//   product(out, lhs, rhs, accumulate)            out (+)= lhs rhs
//
// Block sizes and packing: Eigen's GEMM copies ("packs") both operands into its own panel
// layout. A block of a product split over output columns re-packs the whole left operand (the
// weight), a block split over output rows re-packs the whole right operand. Products therefore
// use wide column blocks (product_column_block), and weight gradients are split over the
// tokens (each partial product packs only its own tokens) instead of over dW's rows; the
// measurements behind the block sizes are in core/tuning.hpp. Split reductions go through
// per-block partial sums added in block order, so results do not depend on the thread count.
#include "reformer/core/error.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/ops/parallel.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

namespace reformer {

namespace detail {
inline void check_linear_io(const char* where, Index out, Index in, Index x_rows, Index x_cols,
                            Index y_rows, Index y_cols, const char* y_name) {
  REFORMER_REQUIRE(x_rows == in, InvalidArgument, where, "x.rows() = ", x_rows,
                   " must equal the weight's in_features = ", in);
  check_shape(where, y_name, y_rows, y_cols, out, x_cols);
}
}  // namespace detail

/// y = W x. `y` (out x N) is overwritten and must not alias `x`.
template <class S>
void linear_forward(ConstWeightRef<S> W, ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_linear_io("linear_forward", W.rows(), W.cols(), x.rows(), x.cols(), y.rows(),
                          y.cols(), "y");
  y.noalias() = W * x;
}

/// y = W x + b (b broadcast over the N columns). `y` must not alias `x`.
template <class S>
void linear_forward(ConstWeightRef<S> W, ConstVectorRef<S> b, ConstMatrixRef<S> x, MatrixRef<S> y) {
  detail::check_linear_io("linear_forward", W.rows(), W.cols(), x.rows(), x.cols(), y.rows(),
                          y.cols(), "y");
  check_shape("linear_forward", "b", b.rows(), b.cols(), W.rows(), 1);
  y.noalias() = W * x;
  y.colwise() += b;
}

/// Input gradient of y = W x (+ b): dx = W^T dy (overwritten; in x N). `dx` must not alias `dy`.
template <class S>
void linear_backward_input(ConstWeightRef<S> W, ConstMatrixRef<S> dy, MatrixRef<S> dx) {
  REFORMER_REQUIRE(dy.rows() == W.rows(), InvalidArgument, "linear_backward_input",
                   "dy.rows() = ", dy.rows(), " must equal the weight's out_features = ", W.rows());
  check_shape("linear_backward_input", "dx", dx.rows(), dx.cols(), W.cols(), dy.cols());
  dx.noalias() = W.transpose() * dy;
}

/// Weight gradient of y = W x: dW += dy x^T (out x in, accumulated).
template <class S>
void linear_backward_weight(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, WeightRef<S> dW) {
  check_shape("linear_backward_weight", "dy", dy.rows(), dy.cols(), dW.rows(), x.cols());
  check_shape("linear_backward_weight", "x", x.rows(), x.cols(), dW.cols(), dy.cols());
  dW.noalias() += dy * x.transpose();
}

/// Weight and bias gradients of y = W x + b: dW += dy x^T, db += sum over columns of dy.
template <class S>
void linear_backward_weight(ConstMatrixRef<S> x, ConstMatrixRef<S> dy, WeightRef<S> dW,
                            VectorRef<S> db) {
  check_shape("linear_backward_weight", "db", db.rows(), db.cols(), dW.rows(), 1);
  linear_backward_weight<S>(x, dy, dW);
  db.noalias() += dy.rowwise().sum();
}

/// Full backward of y = W x: dx = W^T dy (overwritten), dW += dy x^T.
template <class S>
void linear_backward(ConstWeightRef<S> W, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                     MatrixRef<S> dx, WeightRef<S> dW) {
  detail::check_linear_io("linear_backward", W.rows(), W.cols(), x.rows(), x.cols(), dy.rows(),
                          dy.cols(), "dy");
  check_shape("linear_backward", "dW", dW.rows(), dW.cols(), W.rows(), W.cols());
  check_shape("linear_backward", "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  dW.noalias() += dy * x.transpose();
  dx.noalias() = W.transpose() * dy;
}

/// Full backward of y = W x + b: dx = W^T dy (overwritten), dW += dy x^T, db += row sums of dy.
template <class S>
void linear_backward(ConstWeightRef<S> W, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                     MatrixRef<S> dx, WeightRef<S> dW, VectorRef<S> db) {
  check_shape("linear_backward", "db", db.rows(), db.cols(), W.rows(), 1);
  linear_backward<S>(W, x, dy, dx, dW);
  db.noalias() += dy.rowwise().sum();
}

// ---- Deterministic multi-threaded kernels ------------------------------------------------------

/// The row block of a product with `rows` output rows: at most tuning::kMaxRowBlocks blocks of
/// at least tuning::kMinRowBlock rows, a multiple of 16 (a function of the shape only).
inline Index row_block(Index rows) {
  const Index even_split = (rows + tuning::kMaxRowBlocks - 1) / tuning::kMaxRowBlocks;
  return std::max(tuning::kMinRowBlock, round_up(even_split, 16));
}

/// The column block of a product with `cols` output columns: about tuning::kProductColumnBlocks
/// blocks, a multiple of 64 in [kMinProductColumns, kMaxProductColumns] (shape only).
inline Index product_column_block(Index cols) {
  const Index even_split = (cols + tuning::kProductColumnBlocks - 1) / tuning::kProductColumnBlocks;
  return std::clamp(round_up(even_split, 64), tuning::kMinProductColumns,
                    tuning::kMaxProductColumns);
}

namespace detail {

/// A matrix in memory as every product sees it: a column-major matrix `stored_rows x
/// stored_cols` with unit inner stride and outer stride `stride`, or its transpose (a row-major
/// matrix, or a transposed view). T is S or const S. The products of the library go through
/// views, so Eigen's product code is compiled for a handful of types per scalar instead of once
/// per expression type of every caller (most of the compile time of the layers).
template <class T>
struct ProductView {
  T* data = nullptr;
  Index stored_rows = 0, stored_cols = 0, stride = 0;
  bool transposed = false;

  Index rows() const { return transposed ? stored_cols : stored_rows; }
  Index cols() const { return transposed ? stored_rows : stored_cols; }
  /// The view's columns [c0, c0 + n) / rows [r0, r0 + n).
  ProductView middle_cols(Index c0, Index n) const {
    return transposed ? ProductView{data + c0, n, stored_cols, stride, true}
                      : ProductView{data + c0 * stride, stored_rows, n, stride, false};
  }
  ProductView middle_rows(Index r0, Index n) const {
    return transposed ? ProductView{data + r0 * stride, stored_rows, n, stride, true}
                      : ProductView{data + r0, n, stored_cols, stride, false};
  }
  ProductView<const std::remove_const_t<T>> as_const() const {
    return {data, stored_rows, stored_cols, stride, transposed};
  }
  ProductView transpose() const { return {data, stored_rows, stored_cols, stride, !transposed}; }
  Eigen::Map<Matrix<std::remove_const_t<T>>, 0, Eigen::OuterStride<>> stored() const {
    static_assert(!std::is_const_v<T>, "a read-only view has no writable matrix");
    return {data, stored_rows, stored_cols, Eigen::OuterStride<>(stride)};
  }
  Eigen::Map<const Matrix<std::remove_const_t<T>>, 0, Eigen::OuterStride<>> stored_const() const {
    return {data, stored_rows, stored_cols, Eigen::OuterStride<>(stride)};
  }
};

/// Whether an Eigen expression X can be seen as a ProductView: direct access to memory with unit
/// inner stride, and not a vector at compile time (those keep Eigen's matrix-vector products).
template <class X>
constexpr bool kHasProductView = (int(X::Flags) & Eigen::DirectAccessBit) != 0 &&
                                 int(X::InnerStrideAtCompileTime) == 1 &&
                                 int(X::RowsAtCompileTime) != 1 && int(X::ColsAtCompileTime) != 1;

/// Whether a product out (+)= lhs rhs goes through views (all three have one).
template <class Out, class Lhs, class Rhs>
constexpr bool product_through_views() {
  return kHasProductView<Out> && kHasProductView<Lhs> && kHasProductView<Rhs>;
}

template <class X>
auto product_view(X& x) {
  using T = std::remove_pointer_t<decltype(x.data())>;
  // A row-major matrix is the transpose of the column-major matrix with the same memory.
  if constexpr (bool(std::decay_t<X>::IsRowMajor)) {
    return ProductView<T>{x.data(), x.cols(), x.rows(), x.outerStride(), true};
  } else {
    return ProductView<T>{x.data(), x.rows(), x.cols(), x.outerStride(), false};
  }
}

/// out = lhs rhs (out += lhs rhs when `accumulate`) on the calling thread.
///   lhs: M x K,  rhs: K x N,  out: M x N
template <class S>
void product_of_views(ProductView<S> out, ProductView<const S> lhs, ProductView<const S> rhs,
                      bool accumulate) {
  // A transposed output: out^T = rhs^T lhs^T, into the column-major matrix out^T is.
  if (out.transposed) {
    product_of_views<S>(out.transpose(), rhs.transpose(), lhs.transpose(), accumulate);
    return;
  }
  auto y = out.stored();
  const auto a = lhs.stored_const();
  const auto b = rhs.stored_const();
  const auto assign = [&](const auto& l, const auto& r) {
    if (accumulate) {
      y.noalias() += l * r;
    } else {
      y.noalias() = l * r;
    }
  };
  if (lhs.transposed) {
    if (rhs.transposed) {
      assign(a.transpose(), b.transpose());
    } else {
      assign(a.transpose(), b);
    }
  } else if (rhs.transposed) {
    assign(a, b.transpose());
  } else {
    assign(a, b);
  }
}

/// The blocks of parallel_product for an output `rows x cols` of a product with inner dimension
/// `depth`: column_block(c0, nc) for fixed blocks of its columns (product_column_block) when it
/// is wide, else row_block_of(r0, nr) for fixed blocks of its rows (row_block), in parallel. The
/// choice and the blocks depend on the shape only.
template <class ColumnBlock, class RowBlock>
void for_product_blocks(Index rows, Index cols, Index depth, ColumnBlock&& column_block,
                        RowBlock&& row_block_of) {
  const double flops = 2.0 * double(rows) * double(depth) * double(cols);
  if (cols >= 2 * tuning::kMinProductColumns) {
    const Index cb = product_column_block(cols);
    parallel_items(num_blocks(cols, cb), flops, [&](Index blk) {
      const Index c0 = blk * cb;
      column_block(c0, std::min(cb, cols - c0));
    });
  } else {
    const Index rb = row_block(rows);
    parallel_items(num_blocks(rows, rb), flops, [&](Index blk) {
      const Index r0 = blk * rb;
      row_block_of(r0, std::min(rb, rows - r0));
    });
  }
}

/// parallel_product on views.
template <class S>
void parallel_product_of_views(ProductView<S> out, ProductView<const S> lhs,
                               ProductView<const S> rhs, bool accumulate) {
  for_product_blocks(
      out.rows(), out.cols(), lhs.cols(),
      [&](Index c0, Index nc) {
        product_of_views<S>(out.middle_cols(c0, nc), lhs, rhs.middle_cols(c0, nc), accumulate);
      },
      [&](Index r0, Index nr) {
        product_of_views<S>(out.middle_rows(r0, nr), lhs.middle_rows(r0, nr), rhs, accumulate);
      });
}

}  // namespace detail

/// out = lhs * rhs (or out += lhs * rhs when `accumulate`), on the calling thread. Operands with
/// memory of unit inner stride (matrices, maps, blocks, their transposes) go through one product
/// per storage-order combination (detail::product_of_views); other expressions are evaluated by
/// Eigen as they are. `out` must not alias the operands.
template <class Out, class Lhs, class Rhs>
void product(Out&& out, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  using O = std::decay_t<Out>;
  using S = typename O::Scalar;
  REFORMER_ASSERT(lhs.cols() == rhs.rows() && out.rows() == lhs.rows() && out.cols() == rhs.cols());
  if constexpr (detail::product_through_views<O, Lhs, Rhs>()) {
    detail::product_of_views<S>(detail::product_view(out), detail::product_view(lhs).as_const(),
                                detail::product_view(rhs).as_const(), accumulate);
  } else if (accumulate) {
    out.noalias() += lhs * rhs;
  } else {
    out.noalias() = lhs * rhs;
  }
}

/// out = lhs * rhs (or out += lhs * rhs when `accumulate`), in parallel over fixed blocks of
/// out's columns (product_column_block) when it is wide, else of its rows (row_block). The
/// choice depends on the shapes only. `out` must not alias the operands; lhs / rhs may be any
/// Eigen expressions (e.g. transposes of row-major weight maps); those with memory of unit inner
/// stride go through detail::parallel_product_of_views.
///   lhs: M x K,  rhs: K x N,  out: M x N
template <class Out, class Lhs, class Rhs>
void parallel_product(Out&& out, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  using O = std::decay_t<Out>;
  using S = typename O::Scalar;
  REFORMER_ASSERT(lhs.cols() == rhs.rows() && out.rows() == lhs.rows() && out.cols() == rhs.cols());
  if constexpr (detail::product_through_views<O, Lhs, Rhs>()) {
    detail::parallel_product_of_views<S>(detail::product_view(out),
                                         detail::product_view(lhs).as_const(),
                                         detail::product_view(rhs).as_const(), accumulate);
  } else {
    detail::for_product_blocks(
        out.rows(), out.cols(), lhs.cols(),
        [&](Index c0, Index nc) {
          reformer::product(out.middleCols(c0, nc), lhs, rhs.middleCols(c0, nc), accumulate);
        },
        [&](Index r0, Index nr) {
          reformer::product(out.middleRows(r0, nr), lhs.middleRows(r0, nr), rhs, accumulate);
        });
  }
}

/// linear_weight_grads (bitwise its dW and db), calling `alongside(t0, nt)` for every token
/// block [t0, t0 + nt) of tuning::kGradTokenBlock tokens (the last one shorter) in the task that
/// adds the block's product to its span's partial, right after it: work over the same tokens
/// (e.g. other products of dy or x) finds their columns in cache instead of reading them from
/// memory once more. The spans of blocks run in parallel, so `alongside` must only write what its
/// own tokens own. A call too small to split calls it for the same blocks, in order, after
/// dW += dy x^T.
template <class S, class GW, class F>
void linear_weight_grads_alongside(ConstMatrixRef<S> dy, ConstMatrixRef<S> x, GW&& dW,
                                   VectorMap<S>* db, Workspace* ws, F&& alongside) {
  REFORMER_ASSERT(dy.cols() == x.cols() && dW.rows() == dy.rows() && dW.cols() == x.rows());
  constexpr Index kTokenBlock = tuning::kGradTokenBlock;
  constexpr Index kPartials = tuning::kGradPartials;
  const Index out = dy.rows(), in = x.rows(), n = x.cols();
  if (db != nullptr) {
    const Index rb = row_block(out);
    parallel_items(num_blocks(out, rb), double(out) * double(n), [&](Index blk) {
      const Index r0 = blk * rb;
      const Index nr = std::min(rb, out - r0);
      db->segment(r0, nr) += dy.middleRows(r0, nr).rowwise().sum();
    });
  }
  const Index blocks = num_blocks(n, kTokenBlock);
  const double flops_per_token = 2.0 * double(out) * double(in);
  if (blocks <= 1 || flops_per_token * double(n) < tuning::kMinParallelFlops) {
    dW.noalias() += dy * x.transpose();
    for (Index t0 = 0; t0 < n; t0 += kTokenBlock) alongside(t0, std::min(kTokenBlock, n - t0));
    return;
  }
  // out x in in dW's storage order, over scratch memory: one partial per span of blocks
  using Partial = Eigen::Map<typename std::decay_t<GW>::PlainObject, Eigen::Aligned64>;
  const Index spans = std::min(blocks, kPartials);
  std::array<Scratch<S>, static_cast<std::size_t>(kPartials)> partial_memory;  // no heap use
  for (Index i = 0; i < spans; ++i) partial_memory[static_cast<std::size_t>(i)].resize(ws, out, in);
  const auto partial = [&](Index i) {
    return Partial(partial_memory[static_cast<std::size_t>(i)].map().data(), out, in);
  };
  // Span i sums the token blocks [first_block(i), first_block(i + 1)) into partial i, in order.
  const auto first_block = [&](Index i) { return blocks * i / spans; };
  parallel_items(spans, flops_per_token * double(n), [&](Index i) {
    Partial p = partial(i);
    for (Index b = first_block(i); b < first_block(i + 1); ++b) {
      const Index t0 = b * kTokenBlock;
      const Index nt = std::min(kTokenBlock, n - t0);
      if (b == first_block(i)) {
        p.noalias() = dy.middleCols(t0, nt) * x.middleCols(t0, nt).transpose();
      } else {
        p.noalias() += dy.middleCols(t0, nt) * x.middleCols(t0, nt).transpose();
      }
      alongside(t0, nt);
    }
  });
  // dW += partial_0 + partial_1 + ... (in span order, split over dW's rows)
  const Index rb = row_block(out);
  parallel_items(num_blocks(out, rb), double(spans) * double(out) * double(in), [&](Index blk) {
    const Index r0 = blk * rb;
    const Index nr = std::min(rb, out - r0);
    for (Index i = 0; i < spans; ++i) dW.middleRows(r0, nr) += partial(i).middleRows(r0, nr);
  });
}

/// Parameter gradients of y = W x (+ b): dW += dy x^T (and db += row sums of dy).
/// dy: out x N, x: in x N, dW: out x in (any Eigen block or map, row- or column-major).
///
///   dW += sum over spans i (in order) of  sum over the token blocks b of span i (in order) of
///         dy_b x_b^T
///
/// The token blocks hold tuning::kGradTokenBlock tokens; the B blocks form
/// P = min(B, tuning::kGradPartials) spans of consecutive blocks (span i: blocks [B i / P,
/// B (i + 1) / P)), a function of the shape only. The spans' partial products run in parallel
/// and are added to dW in span order, so the result does not depend on the thread count; db
/// sums each row over all N tokens in column order (split over rows).
///
/// The partials are drawn from `ws` when given (core/workspace.hpp), from the heap otherwise.
template <class S, class GW>
void linear_weight_grads(ConstMatrixRef<S> dy, ConstMatrixRef<S> x, GW&& dW,
                         VectorMap<S>* db = nullptr, Workspace* ws = nullptr) {
  linear_weight_grads_alongside<S>(dy, x, std::forward<GW>(dW), db, ws, [](Index, Index) {});
}

}  // namespace reformer
