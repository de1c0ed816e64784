// The ops that take an optional Workspace give the same bits with and without one.
#include "reformer/core/workspace.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/layer_norm.hpp"

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <vector>

namespace reformer {
namespace {

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

TEST(WorkspaceOps, CrossEntropyIsBitwiseTheSameWithAWorkspace) {
  const Index k = 16, v = 300, n = 200, chunk = 64;  // V x chunk = 150 KiB: from the cache
  const Matrix<double> h = ops_test::random_matrix(k, n, 1);
  const RowMajorMatrix<double> w = ops_test::random_weight(v, k, 2);
  const Vector<double> b = ops_test::random_vector(v, 3);
  std::vector<Token> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) targets[static_cast<std::size_t>(i)] = (i * 37) % v;

  Workspace ws;
  const CrossEntropyResult f0 = cross_entropy_forward<double>(h, w, b, targets, chunk);
  const CrossEntropyResult f1 = cross_entropy_forward<double>(h, w, b, targets, chunk, &ws);
  EXPECT_EQ(f0.sum, f1.sum);
  EXPECT_EQ(ws.stats().mappings, 1u);

  Matrix<double> dh0(k, n), dh1(k, n);
  RowMajorMatrix<double> dw0 = RowMajorMatrix<double>::Zero(v, k), dw1 = dw0;
  Vector<double> db0 = Vector<double>::Zero(v), db1 = db0;
  cross_entropy_forward_backward<double>(h, w, b, targets, dh0, dw0, db0, chunk);
  cross_entropy_forward_backward<double>(h, w, b, targets, dh1, dw1, db1, chunk, Reduction::kMean,
                                         1.0, &ws);
  EXPECT_TRUE(same_bits(dh0, dh1));
  EXPECT_TRUE(same_bits(dw0, dw1));
  EXPECT_TRUE(same_bits(db0, db1));
  EXPECT_EQ(ws.stats().mappings, 1u);  // the same V x chunk block again
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
}

TEST(WorkspaceOps, LayerNormBackwardAccumulatesTheSameBitsWithAWorkspace) {
  const Index d = 128, n = 1100;  // several column blocks of D x 128 doubles (128 KiB each)
  const Matrix<double> x = ops_test::random_matrix(d, n, 4, -2.0, 2.0);
  const Matrix<double> dy = ops_test::random_matrix(d, n, 5);
  const Vector<double> gamma = ops_test::random_vector(d, 6, 0.5, 1.5);
  const Matrix<double> dx_start = ops_test::random_matrix(d, n, 7);
  Matrix<double> dx0 = dx_start, dx1 = dx_start;
  Vector<double> dg0 = Vector<double>::Zero(d), db0 = dg0, dg1 = dg0, db1 = dg0;
  Workspace ws;
  layer_norm_backward_parallel<double>(x, gamma, 1e-12, dy, dx0, dg0, db0, true);
  layer_norm_backward_parallel<double>(x, gamma, 1e-12, dy, dx1, dg1, db1, true, &ws);
  EXPECT_TRUE(same_bits(dx0, dx1));
  EXPECT_TRUE(same_bits(dg0, dg1));
  EXPECT_TRUE(same_bits(db0, db1));
  EXPECT_GE(ws.stats().mappings, 1u);
  EXPECT_EQ(ws.stats().in_use_bytes, 0u);
}

}  // namespace
}  // namespace reformer
