// The deterministic multi-threaded kernels of ops/ against their serial references:
//   parallel_product, linear_weight_grads (ops/linear.hpp)  vs plain Eigen products (double)
//   linear_weight_grads_alongside                           its blocks, vs linear_weight_grads
//   layer_norm_*_parallel (ops/layer_norm.hpp)            vs layer_norm_forward / _backward
//   dropout_parallel (ops/dropout.hpp)                    vs dropout_forward
//   add_parallel, copy_parallel (ops/parallel.hpp)        vs plain Eigen
// and their thread independence (float, the same bits for 1 and 2 threads).
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"

#include <gtest/gtest.h>

#include "support/compare.hpp"
#include "unit/ops/helpers.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace reformer {
namespace {

template <class S, class M>
bool products_same_bits(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0;
}

TEST(ProductBlocks, ColumnBlocksAreWideAndDependOnTheShapeOnly) {
  EXPECT_EQ(product_column_block(512), 256);       // minimum width
  EXPECT_EQ(product_column_block(4096), 512);      // 8 blocks
  EXPECT_EQ(product_column_block(1 << 20), 1024);  // maximum width
  EXPECT_EQ(product_column_block(3000) % 64, 0);
}

// out (+)= lhs * rhs for a wide output (column blocks, ragged last block), a narrow one (row
// blocks) and a transposed row-major weight as the left operand.
TEST(ParallelProduct, MatchesThePlainProduct) {
  set_num_threads(2);
  for (const Index n : {Index(100), Index(600), Index(3001)}) {
    for (const bool accumulate : {false, true}) {
      const RowMajorMatrix<double> w = RowMajorMatrix<double>::Random(70, 96);  // [out, in]
      const Matrix<double> x = Matrix<double>::Random(96, n);
      const Matrix<double> dy = Matrix<double>::Random(70, n);
      const Matrix<double> init = Matrix<double>::Random(70, n);

      Matrix<double> y = init;  // y (+)= W x
      parallel_product(y, w, x, accumulate);
      const Matrix<double> y_ref = (accumulate ? init : Matrix<double>::Zero(70, n)) + w * x;
      EXPECT_LT(test::relative_error(y, y_ref), 1e-13) << "n = " << n;

      Matrix<double> dx = Matrix<double>::Random(96, n);  // dx (+)= W^T dy
      const Matrix<double> dx0 = dx;
      parallel_product(dx, w.transpose(), dy, accumulate);
      const Matrix<double> dx_ref =
          (accumulate ? dx0 : Matrix<double>::Zero(96, n)) + w.transpose() * dy;
      EXPECT_LT(test::relative_error(dx, dx_ref), 1e-13) << "n = " << n;
    }
  }
}

// Every storage-order combination of the views parallel_product and product pass to Eigen
// (detail::ProductView): a column- or row-major output, each operand plain or transposed, all
// of them blocks with an outer stride larger than their rows; a wide and a narrow output, small
// and large enough for OpenBLAS / Eigen's blocked product. Expressions without direct memory
// (a scaled matrix) and the serial product() against the same plain product.
TEST(ParallelProduct, EveryStorageOrderOfOutputAndOperands) {
  set_num_threads(2);
  const Index m = 37, k = 29;
  for (const Index n : {Index(5), Index(600)}) {
    // Backing matrices with two spare rows and columns, so each operand is a strided block.
    const Matrix<double> a_col = Matrix<double>::Random(m + 2, k + 2);  // lhs: m x k
    const Matrix<double> a_t = Matrix<double>::Random(k + 2, m + 2);    // lhs^T stored
    const Matrix<double> b_col = Matrix<double>::Random(k + 2, n + 2);  // rhs: k x n
    const Matrix<double> b_t = Matrix<double>::Random(n + 2, k + 2);    // rhs^T stored
    const Matrix<double> init = Matrix<double>::Random(m, n);
    const auto l_view = a_col.block(1, 1, m, k);
    const auto l_view_t = a_t.block(1, 1, k, m).transpose();
    const auto r_view = b_col.block(1, 1, k, n);
    const auto r_view_t = b_t.block(1, 1, n, k).transpose();
    for (const bool lhs_t : {false, true}) {
      for (const bool rhs_t : {false, true}) {
        for (const bool out_row_major : {false, true}) {
          for (const bool accumulate : {false, true}) {
            const Matrix<double> lhs = lhs_t ? Matrix<double>(l_view_t) : Matrix<double>(l_view);
            const Matrix<double> rhs = rhs_t ? Matrix<double>(r_view_t) : Matrix<double>(r_view);
            const Matrix<double> expected =
                (accumulate ? init : Matrix<double>::Zero(m, n)) + lhs * rhs;
            // The output: a block of a larger column- or row-major matrix, holding init.
            const auto run = [&](auto&& product_fn) {
              const auto into = [&](auto out) {
                auto o = out.block(2, 1, m, n);
                o = init;
                product_fn(o);
                return Matrix<double>(o);
              };
              return out_row_major ? into(RowMajorMatrix<double>::Random(m + 3, n + 1).eval())
                                   : into(Matrix<double>::Random(m + 3, n + 1).eval());
            };
            const auto call = [&](auto& o, bool parallel) {
              const auto go = [&](const auto& l, const auto& r) {
                if (parallel) {
                  parallel_product(o, l, r, accumulate);
                } else {
                  product(o, l, r, accumulate);
                }
              };
              if (lhs_t) {
                rhs_t ? go(l_view_t, r_view_t) : go(l_view_t, r_view);
              } else {
                rhs_t ? go(l_view, r_view_t) : go(l_view, r_view);
              }
            };
            const std::string what = "n = " + std::to_string(n) + ", lhs^T " +
                                     std::to_string(lhs_t) + ", rhs^T " + std::to_string(rhs_t) +
                                     ", row-major out " + std::to_string(out_row_major) +
                                     ", accumulate " + std::to_string(accumulate);
            EXPECT_LT(test::relative_error(run([&](auto& o) { call(o, true); }), expected), 1e-13)
                << "parallel_product, " << what;
            EXPECT_LT(test::relative_error(run([&](auto& o) { call(o, false); }), expected), 1e-13)
                << "product, " << what;
          }
        }
      }
    }
    // An operand without memory of its own: Eigen evaluates the expression as it is.
    Matrix<double> y = init;
    parallel_product(y, 2.0 * l_view, r_view, true);
    const Matrix<double> y_ref = init + 2.0 * l_view * r_view;
    EXPECT_LT(test::relative_error(y, y_ref), 1e-13) << "n = " << n;
  }
}

// With the library's internal assertions (the sanitizer build's test suites), both products
// reject operands whose shapes do not chain, whichever path they take.
TEST(ParallelProduct, MismatchedShapesFailTheAssertion) {
#if defined(REFORMER_ENABLE_ASSERTS)
  const Matrix<double> a = Matrix<double>::Random(4, 3), b = Matrix<double>::Random(2, 5);
  Matrix<double> out(4, 5);
  EXPECT_THROW(product(out, a, b, false), Error);
  EXPECT_THROW(parallel_product(out, a, b, false), Error);
  EXPECT_THROW(product(out, 2.0 * a, b, false), Error);
  EXPECT_THROW(parallel_product(out, 2.0 * a, b, false), Error);
  Matrix<double> wrong_out(4, 4);
  EXPECT_THROW(product(wrong_out, a, Matrix<double>::Random(3, 5), false), Error);
#else
  GTEST_SKIP() << "built without REFORMER_ENABLE_ASSERTS";
#endif
}

// dW += dy x^T, db += row sums of dy: through the serial path (one token block), spans of one
// block and spans of two (with a ragged last block), into a row-major weight and into a block
// of its rows (how the attention cores pass one head's rows).
TEST(LinearWeightGrads, MatchesThePlainProduct) {
  set_num_threads(2);
  for (const Index n : {Index(100), Index(300), Index(4000)}) {
    const Matrix<double> dy = Matrix<double>::Random(48, n);
    const Matrix<double> x = Matrix<double>::Random(40, n);
    const RowMajorMatrix<double> dw0 = RowMajorMatrix<double>::Random(48, 40);
    const Vector<double> db0 = Vector<double>::Random(48);

    RowMajorMatrix<double> dw = dw0;
    Vector<double> db = db0;
    VectorMap<double> db_map(db.data(), db.size());
    linear_weight_grads<double>(dy, x, dw, &db_map);
    const RowMajorMatrix<double> dw_ref = dw0 + dy * x.transpose();
    const Vector<double> db_ref = db0 + dy.rowwise().sum();
    EXPECT_LT(test::relative_error(dw, dw_ref), 1e-13) << "n = " << n;
    EXPECT_LT(test::relative_error(db, db_ref), 1e-13) << "n = " << n;

    RowMajorMatrix<double> big = RowMajorMatrix<double>::Random(100, 40);
    const RowMajorMatrix<double> big0 = big;
    Eigen::Map<RowMajorMatrix<double>> big_map(big.data(), big.rows(), big.cols());
    linear_weight_grads<double>(dy, x, big_map.middleRows(16, 48));
    EXPECT_LT(test::relative_error(big.middleRows(16, 48), dw_ref - dw0 + big0.middleRows(16, 48)),
              1e-13);
    EXPECT_TRUE(big.topRows(16) == big0.topRows(16));
    EXPECT_TRUE(big.bottomRows(36) == big0.bottomRows(36));
  }
}

// linear_weight_grads_alongside: bitwise linear_weight_grads' dW and db, and the callback sees
// every token block of tuning::kGradTokenBlock exactly once, through the serial path (a small
// call: the same fixed blocks, in order) and the parallel one (spans of two blocks, ragged last
// block), so work done alongside can rely on the block boundaries.
TEST(LinearWeightGrads, AlongsideVisitsEveryTokenBlockOnce) {
  constexpr Index kBlock = tuning::kGradTokenBlock;
  for (const int threads : {1, 2}) {
    set_num_threads(threads);
    for (const Index n : {Index(100), Index(600), Index(4000)}) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", threads " + std::to_string(threads));
      // 4 x 3 x 600 is below the parallel threshold; 48 x 40 x 4000 splits into 8 spans.
      const Index out = n == 600 ? 4 : 48, in = n == 600 ? 3 : 40;
      const Matrix<double> dy = Matrix<double>::Random(out, n);
      const Matrix<double> x = Matrix<double>::Random(in, n);
      RowMajorMatrix<double> dw = RowMajorMatrix<double>::Random(out, in);
      RowMajorMatrix<double> dw_ref = dw;
      Vector<double> db = Vector<double>::Random(out), db_ref = db;
      VectorMap<double> db_map(db.data(), out), db_ref_map(db_ref.data(), out);
      linear_weight_grads<double>(dy, x, dw_ref, &db_ref_map);
      std::vector<int> visits(static_cast<std::size_t>(n), 0);
      std::vector<Index> starts;
      std::mutex m;
      linear_weight_grads_alongside<double>(dy, x, dw, &db_map, nullptr, [&](Index t0, Index nt) {
        const std::lock_guard<std::mutex> lock(m);
        starts.push_back(t0);
        EXPECT_EQ(t0 % kBlock, 0);
        EXPECT_EQ(nt, std::min(kBlock, n - t0));
        for (Index t = t0; t < t0 + nt; ++t) ++visits[static_cast<std::size_t>(t)];
      });
      EXPECT_TRUE(products_same_bits<double>(dw, dw_ref));
      EXPECT_TRUE(test::bitwise_equal<double>(db, db_ref));
      EXPECT_EQ(static_cast<Index>(starts.size()), (n + kBlock - 1) / kBlock);
      EXPECT_EQ(std::count(visits.begin(), visits.end(), 1), n) << "every token exactly once";
    }
  }
  set_num_threads(2);
}

// The same bits for 1 and 2 threads: the blocks and the order partial sums are added in depend
// on the shapes only.
TEST(ParallelProduct, ThreadIndependent) {
  const Index n = 5000;
  const RowMajorMatrix<float> w = RowMajorMatrix<float>::Random(64, 256);
  const Matrix<float> x = Matrix<float>::Random(256, n);
  const Matrix<float> dy = Matrix<float>::Random(64, n);
  std::vector<std::tuple<Matrix<float>, Matrix<float>, RowMajorMatrix<float>, Vector<float>>> runs;
  for (const int threads : {1, 2}) {
    set_num_threads(threads);
    Matrix<float> y(64, n), dx(256, n);
    parallel_product(y, w, x, false);
    parallel_product(dx, w.transpose(), dy, false);
    RowMajorMatrix<float> dw = RowMajorMatrix<float>::Zero(64, 256);
    Vector<float> db = Vector<float>::Zero(64);
    VectorMap<float> db_map(db.data(), db.size());
    linear_weight_grads<float>(dy, x, dw, &db_map);
    runs.emplace_back(y, dx, dw, db);
  }
  set_num_threads(2);
  EXPECT_TRUE(products_same_bits<float>(std::get<0>(runs[0]), std::get<0>(runs[1])));
  EXPECT_TRUE(products_same_bits<float>(std::get<1>(runs[0]), std::get<1>(runs[1])));
  EXPECT_TRUE(products_same_bits<float>(std::get<2>(runs[0]), std::get<2>(runs[1])));
  EXPECT_TRUE(test::bitwise_equal<float>(std::get<3>(runs[0]), std::get<3>(runs[1])));
}

TEST(AddParallel, AddsAndSubtractsExactly) {
  set_num_threads(2);
  const Matrix<float> a = Matrix<float>::Random(256, 4100);
  const Matrix<float> b = Matrix<float>::Random(256, 4100);
  Matrix<float> sum = a, diff = a, copy(256, 4100);
  add_parallel<float>(sum, b, 1.0f);
  add_parallel<float>(diff, b, -1.0f);
  copy_parallel<float>(a, copy);
  const Matrix<float> sum_ref = a + b, diff_ref = a - b;
  EXPECT_TRUE(products_same_bits<float>(sum, sum_ref));
  EXPECT_TRUE(products_same_bits<float>(diff, diff_ref));
  EXPECT_TRUE(products_same_bits<float>(copy, a));
}

// LayerNorm over column blocks: every column is normalised by the same code as the serial
// version (the same bits); dgamma / dbeta are summed per block, then in block order (the same
// up to rounding). Covers one block, several with a ragged last one, and accumulating dx.
TEST(LayerNormParallel, MatchesTheSerialVersion) {
  set_num_threads(2);
  const Index d = 24;
  const double eps = 1e-5;
  const Vector<double> gamma = ops_test::random_vector(d, 1, 0.5, 1.5);
  const Vector<double> beta = ops_test::random_vector(d, 2);
  for (const Index n : {Index(50), Index(1000)}) {
    const Matrix<double> x = ops_test::random_matrix(d, n, 3, -2.0, 2.0);
    const Matrix<double> dy = ops_test::random_matrix(d, n, 4);

    Matrix<double> y(d, n), y_ref(d, n);
    layer_norm_forward_parallel<double>(x, gamma, beta, eps, y);
    layer_norm_forward<double>(x, gamma, beta, eps, y_ref);
    EXPECT_TRUE(products_same_bits<double>(y, y_ref)) << "n = " << n;

    const Vector<double> dg0 = ops_test::random_vector(d, 5), db0 = ops_test::random_vector(d, 6);
    Matrix<double> dx(d, n), dx_ref(d, n);
    Vector<double> dg = dg0, db = db0, dg_ref = dg0, db_ref = db0;
    layer_norm_backward_parallel<double>(x, gamma, eps, dy, dx, dg, db);
    layer_norm_backward<double>(x, gamma, eps, dy, dx_ref, dg_ref, db_ref);
    EXPECT_TRUE(products_same_bits<double>(dx, dx_ref)) << "n = " << n;
    EXPECT_LT(test::relative_error(dg, dg_ref), 1e-13) << "n = " << n;
    EXPECT_LT(test::relative_error(db, db_ref), 1e-13) << "n = " << n;

    const Matrix<double> dx0 = ops_test::random_matrix(d, n, 7);
    Matrix<double> dx_acc = dx0;
    layer_norm_backward_parallel<double>(x, gamma, eps, dy, dx_acc, dg, db, true);
    EXPECT_LT(test::relative_error(dx_acc, dx0 + dx_ref), 1e-13) << "n = " << n;
  }
}

TEST(LayerNormParallel, ThreadIndependent) {
  const Index d = 128, n = 1100;  // enough work to run in parallel
  const Matrix<float> x = ops_test::random_matrix<float>(d, n, 11, -2.0, 2.0);
  const Matrix<float> dy = ops_test::random_matrix<float>(d, n, 12);
  const Vector<float> gamma = ops_test::random_vector<float>(d, 13, 0.5, 1.5);
  const Vector<float> beta = ops_test::random_vector<float>(d, 14);
  std::vector<std::tuple<Matrix<float>, Matrix<float>, Vector<float>, Vector<float>>> runs;
  for (const int threads : {1, 2}) {
    set_num_threads(threads);
    Matrix<float> y(d, n), dx(d, n);
    Vector<float> dg = Vector<float>::Zero(d), db = Vector<float>::Zero(d);
    layer_norm_forward_parallel<float>(x, gamma, beta, 1e-12, y);
    layer_norm_backward_parallel<float>(x, gamma, 1e-12, dy, dx, dg, db);
    runs.emplace_back(y, dx, dg, db);
  }
  set_num_threads(2);
  EXPECT_TRUE(products_same_bits<float>(std::get<0>(runs[0]), std::get<0>(runs[1])));
  EXPECT_TRUE(products_same_bits<float>(std::get<1>(runs[0]), std::get<1>(runs[1])));
  EXPECT_TRUE(test::bitwise_equal<float>(std::get<2>(runs[0]), std::get<2>(runs[1])));
  EXPECT_TRUE(test::bitwise_equal<float>(std::get<3>(runs[0]), std::get<3>(runs[1])));
}

// dropout_parallel on columns [c0, c0 + n) of a full matrix draws the mask of dropout_forward
// with offset c0 * rows, out of place and in place, for 1 and 2 threads; p = 0 copies.
TEST(DropoutParallel, MatchesDropoutForwardForAnyThreadCount) {
  const Index rows = 64, n = 1000, c0 = 300;  // enough work to run in parallel
  const Rng rng(21);
  const double p = 0.3;
  const Matrix<float> in = ops_test::random_matrix<float>(rows, n, 22);
  Matrix<float> ref(rows, n);
  dropout_forward<float>(rng, p, c0 * rows, in, ref);
  for (const int threads : {1, 2}) {
    set_num_threads(threads);
    Matrix<float> out(rows, n);
    dropout_parallel<float>(rng, p, c0, in, out);
    EXPECT_TRUE(products_same_bits<float>(out, ref)) << threads << " threads";
    Matrix<float> inplace = in;
    dropout_parallel<float>(rng, p, c0, inplace, inplace);
    EXPECT_TRUE(products_same_bits<float>(inplace, ref)) << threads << " threads, in place";
  }
  set_num_threads(2);
  Matrix<float> copy(rows, n);
  dropout_parallel<float>(rng, 0.0, c0, in, copy);
  EXPECT_TRUE(products_same_bits<float>(copy, in));
}

}  // namespace
}  // namespace reformer
