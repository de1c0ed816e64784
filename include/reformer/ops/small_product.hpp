#pragma once
// Products of small matrices that are already in cache: the attention chunk kernel's
// (layers/chunk_attention.hpp, docs/DESIGN.md 1.2), a few dozen KiB per operand, used once.
//
//   small_product<S>(a, b, c, accumulate)      c = a b     (c += a b when accumulate)
//   small_product_bt<S>(a, bt, c, accumulate)  c = a bt^T  (c += a bt^T when accumulate)
//   transpose_small<S>(src, dst)               dst = src^T
//
//   a: M x K,  b: K x N (bt: N x K),  c: M x N; column-major, unit inner stride, any outer
//   stride; c must not alias a or b.
//
// Eigen's GEMM copies ("packs") both operands into its panel layout and zeroes c before an "="
// product. For operands this small the copies, the zeroing and the blocking logic cost a third
// of the arithmetic. These kernels read the operands where they lie: a register tile of
// kTileRowPackets packets of rows x kTileCols columns of c is accumulated over k from the
// contiguous rows of a's column k and one broadcast entry of b per column, then stored (added
// to c when accumulating). The columns left after the last whole tile form one narrower tile;
// rows past the last whole tile go through one-packet tiles, then scalars.
//
// Every element is c(i, j) = (..((0 + a(i,0) b(0,j)) + a(i,1) b(1,j)) + ...) in k order, each
// step Eigen's multiply-add (pmadd: fused where the ISA has FMA), then c(i, j) + that when
// accumulating. Which path computes an element depends on the shapes only, so results do not
// depend on the thread that runs them.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/detail/packets.hpp"

#include <Eigen/Core>
#include <type_traits>
#include <utility>

namespace reformer {

namespace detail {

/// The register tile: kTileRowPackets packets of rows by kTileCols columns of c. With 32 vector
/// registers (AVX-512, AArch64) 4 x 4: 16 accumulators, 4 row packets and a broadcast. With 16
/// (AVX2, SSE) 2 x 6: 12 accumulators, enough independent multiply-adds to cover the FMA latency
/// on both ports (2 x 4 measured 109-111 GFLOP/s on one core on the chunk shapes, 2 x 6 123-127).
inline constexpr bool kWideRegisterFile = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32;
inline constexpr int kTileRowPackets = kWideRegisterFile ? 4 : 2;
inline constexpr int kTileCols = kWideRegisterFile ? 4 : 6;

/// b(k, j) of a product's right operand: stored as b (K x N) or, kTransposedB, as bt (N x K).
template <bool kTransposedB, class S>
EIGEN_ALWAYS_INLINE S right_entry(const S* b, Index ldb, Index k, Index j) {
  return kTransposedB ? b[j + k * ldb] : b[k + j * ldb];
}

/// c(0 : kRowPackets * w, 0 : kCols) (+)= a(same rows, :) b(:, 0 : kCols), w the packet size.
template <int kRowPackets, int kCols, bool kTransposedB, class S>
EIGEN_ALWAYS_INLINE void small_product_tile(const S* a, Index lda, const S* b, Index ldb, S* c,
                                            Index ldc, Index depth, bool accumulate) {
  namespace ei = Eigen::internal;
  using Pk = Packet<S>;
  constexpr int w = kPacketSize<S>;
  Pk acc[kCols][kRowPackets];
  for (int j = 0; j < kCols; ++j)
    for (int r = 0; r < kRowPackets; ++r) acc[j][r] = ei::pset1<Pk>(S(0));
  for (Index k = 0; k < depth; ++k) {
    Pk column[kRowPackets];  // a(rows, k)
    for (int r = 0; r < kRowPackets; ++r) column[r] = ei::ploadu<Pk>(a + k * lda + r * w);
    for (int j = 0; j < kCols; ++j) {
      const Pk bkj = ei::pset1<Pk>(right_entry<kTransposedB>(b, ldb, k, j));
      for (int r = 0; r < kRowPackets; ++r) acc[j][r] = ei::pmadd(column[r], bkj, acc[j][r]);
    }
  }
  for (int j = 0; j < kCols; ++j) {
    for (int r = 0; r < kRowPackets; ++r) {
      S* out = c + j * ldc + r * w;
      ei::pstoreu(out, accumulate ? ei::padd(ei::ploadu<Pk>(out), acc[j][r]) : acc[j][r]);
    }
  }
}

/// The tile of the columns left after the whole tiles: small_product_tile with kCols = `cols`,
/// picked at run time among the widths 1 .. kTileCols - 1 (`cols` = 0 does nothing).
template <int kRowPackets, bool kTransposedB, class S, int... kWidths>
void tail_tile(std::integer_sequence<int, kWidths...>, Index cols, const S* a, Index lda,
               const S* b, Index ldb, S* c, Index ldc, Index depth, bool accumulate) {
  const auto one = [&](auto width) {
    constexpr int kCols = decltype(width)::value;
    if constexpr (kCols > 0) {
      if (cols == kCols)
        small_product_tile<kRowPackets, kCols, kTransposedB>(a, lda, b, ldb, c, ldc, depth,
                                                             accumulate);
    }
  };
  (one(std::integral_constant<int, kWidths>{}), ...);
}

/// The rows [0, kRowPackets * w) of c, every column: tiles of kTileCols columns, then one tile
/// of the columns left (fewer than kTileCols).
template <int kRowPackets, bool kTransposedB, class S>
void small_product_rows(const S* a, Index lda, const S* b, Index ldb, S* c, Index ldc, Index n,
                        Index depth, bool accumulate) {
  const auto column_of_b = [&](Index j) { return kTransposedB ? b + j : b + j * ldb; };
  Index j = 0;
  for (; j + kTileCols <= n; j += kTileCols) {
    small_product_tile<kRowPackets, kTileCols, kTransposedB>(a, lda, column_of_b(j), ldb,
                                                             c + j * ldc, ldc, depth, accumulate);
  }
  tail_tile<kRowPackets, kTransposedB>(std::make_integer_sequence<int, kTileCols>{}, n - j, a, lda,
                                       column_of_b(j), ldb, c + j * ldc, ldc, depth, accumulate);
}

template <bool kTransposedB, class S>
void small_product_impl(const char* where, ConstMatrixRef<S> a, ConstMatrixRef<S> b, MatrixRef<S> c,
                        bool accumulate) {
  const Index m = a.rows(), depth = a.cols();
  const Index n = kTransposedB ? b.rows() : b.cols();
  REFORMER_REQUIRE((kTransposedB ? b.cols() : b.rows()) == depth, InvalidArgument, where,
                   "the operands' inner dimensions differ: a is ", m, " x ", depth, ", ",
                   kTransposedB ? "bt" : "b", " is ", b.rows(), " x ", b.cols());
  check_shape(where, "c", c.rows(), c.cols(), m, n);
  constexpr Index w = kPacketSize<S>;
  constexpr Index tile_rows = kTileRowPackets * w;
  const Index lda = a.outerStride(), ldb = b.outerStride(), ldc = c.outerStride();
  Index i = 0;
  for (; i + tile_rows <= m; i += tile_rows) {
    small_product_rows<kTileRowPackets, kTransposedB>(a.data() + i, lda, b.data(), ldb,
                                                      c.data() + i, ldc, n, depth, accumulate);
  }
  for (; i + w <= m; i += w) {
    small_product_rows<1, kTransposedB>(a.data() + i, lda, b.data(), ldb, c.data() + i, ldc, n,
                                        depth, accumulate);
  }
  for (; i < m; ++i) {  // the last rows, fewer than a packet
    for (Index j = 0; j < n; ++j) {
      S sum(0);
      for (Index k = 0; k < depth; ++k)
        sum = Eigen::internal::pmadd(a(i, k), right_entry<kTransposedB>(b.data(), ldb, k, j), sum);
      c(i, j) = accumulate ? c(i, j) + sum : sum;
    }
  }
}

}  // namespace detail

/// c = a b (c += a b when `accumulate`); a: M x K, b: K x N, c: M x N, c not aliasing a or b.
template <class S>
void small_product(ConstMatrixRef<S> a, ConstMatrixRef<S> b, MatrixRef<S> c, bool accumulate) {
  detail::small_product_impl<false, S>("small_product", a, b, c, accumulate);
}

/// c = a bt^T (c += a bt^T when `accumulate`); a: M x K, bt: N x K, c: M x N, c not aliasing
/// a or bt.
template <class S>
void small_product_bt(ConstMatrixRef<S> a, ConstMatrixRef<S> bt, MatrixRef<S> c, bool accumulate) {
  detail::small_product_impl<true, S>("small_product_bt", a, bt, c, accumulate);
}

/// dst = src^T; src: R x C, dst: C x R, not aliasing src. Blocks of w x w (w the packet size)
/// are transposed in registers, the edges element by element.
template <class S>
void transpose_small(ConstMatrixRef<S> src, MatrixRef<S> dst) {
  namespace ei = Eigen::internal;
  using Pk = detail::Packet<S>;
  // The packet as a template argument drops its alignment attribute, which PacketBlock (an array
  // of packets) does not need: GCC's warning about it is silenced here only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
  using Block = ei::PacketBlock<Pk, detail::kPacketSize<S>>;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  constexpr int w = detail::kPacketSize<S>;
  const Index rows = src.rows(), cols = src.cols();
  check_shape("transpose_small", "dst", dst.rows(), dst.cols(), cols, rows);
  const S* in = src.data();
  S* out = dst.data();
  const Index ld_in = src.outerStride(), ld_out = dst.outerStride();
  Index r = 0;
  for (; r + w <= rows; r += w) {
    Index c = 0;
    for (; c + w <= cols; c += w) {
      Block block;  // packet i: src(r : r + w, c + i), then src(r + i, c : c + w)
      for (int i = 0; i < w; ++i) block.packet[i] = ei::ploadu<Pk>(in + r + (c + i) * ld_in);
      ei::ptranspose(block);
      for (int i = 0; i < w; ++i) ei::pstoreu(out + c + (r + i) * ld_out, block.packet[i]);
    }
    for (; c < cols; ++c)
      for (Index i = 0; i < w; ++i) out[c + (r + i) * ld_out] = in[r + i + c * ld_in];
  }
  for (; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) out[c + r * ld_out] = in[r + c * ld_in];
}

}  // namespace reformer
