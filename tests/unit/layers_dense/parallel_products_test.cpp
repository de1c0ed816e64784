// The blocked, multi-threaded products of layers/detail/sublayer_util.hpp against plain Eigen
// products (oracle, double), and their thread independence (float, bitwise).
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/detail/sublayer_util.hpp"

#include <gtest/gtest.h>

#include "support/compare.hpp"

#include <cstring>
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
  using detail::product_column_block;
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
      detail::parallel_product(y, w, x, accumulate);
      const Matrix<double> y_ref = (accumulate ? init : Matrix<double>::Zero(70, n)) + w * x;
      EXPECT_LT(test::relative_error(y, y_ref), 1e-13) << "n = " << n;

      Matrix<double> dx = Matrix<double>::Random(96, n);  // dx (+)= W^T dy
      const Matrix<double> dx0 = dx;
      detail::parallel_product(dx, w.transpose(), dy, accumulate);
      const Matrix<double> dx_ref =
          (accumulate ? dx0 : Matrix<double>::Zero(96, n)) + w.transpose() * dy;
      EXPECT_LT(test::relative_error(dx, dx_ref), 1e-13) << "n = " << n;
    }
  }
}

// dW += dy x^T, db += row sums of dy: through the serial path (one token block), one partial
// wave and several waves (with a ragged last block), into a row-major weight and into a block
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
    detail::linear_weight_grads<double>(dy, x, dw, &db_map);
    const RowMajorMatrix<double> dw_ref = dw0 + dy * x.transpose();
    const Vector<double> db_ref = db0 + dy.rowwise().sum();
    EXPECT_LT(test::relative_error(dw, dw_ref), 1e-13) << "n = " << n;
    EXPECT_LT(test::relative_error(db, db_ref), 1e-13) << "n = " << n;

    RowMajorMatrix<double> big = RowMajorMatrix<double>::Random(100, 40);
    const RowMajorMatrix<double> big0 = big;
    Eigen::Map<RowMajorMatrix<double>> big_map(big.data(), big.rows(), big.cols());
    detail::linear_weight_grads<double>(dy, x, big_map.middleRows(16, 48));
    EXPECT_LT(test::relative_error(big.middleRows(16, 48), dw_ref - dw0 + big0.middleRows(16, 48)),
              1e-13);
    EXPECT_TRUE(big.topRows(16) == big0.topRows(16));
    EXPECT_TRUE(big.bottomRows(36) == big0.bottomRows(36));
  }
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
    detail::parallel_product(y, w, x, false);
    detail::parallel_product(dx, w.transpose(), dy, false);
    RowMajorMatrix<float> dw = RowMajorMatrix<float>::Zero(64, 256);
    Vector<float> db = Vector<float>::Zero(64);
    VectorMap<float> db_map(db.data(), db.size());
    detail::linear_weight_grads<float>(dy, x, dw, &db_map);
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
  detail::add_parallel<float>(sum, b, 1.0f);
  detail::add_parallel<float>(diff, b, -1.0f);
  detail::copy_parallel<float>(a, copy);
  const Matrix<float> sum_ref = a + b, diff_ref = a - b;
  EXPECT_TRUE(products_same_bits<float>(sum, sum_ref));
  EXPECT_TRUE(products_same_bits<float>(diff, diff_ref));
  EXPECT_TRUE(products_same_bits<float>(copy, a));
}

}  // namespace
}  // namespace reformer
