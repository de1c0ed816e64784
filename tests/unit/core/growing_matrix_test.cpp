// GrowingMatrix: views of any shape over storage that only grows.
#include <reformer/core/growing_matrix.hpp>

#include <gtest/gtest.h>

namespace reformer {
namespace {

TEST(GrowingMatrix, ReshapesWithoutReallocatingWhenTheStorageSuffices) {
  GrowingMatrix<float> m;
  EXPECT_EQ(m.capacity(), 0);
  auto& a = m.reshape(64, 10);  // new storage: zeros
  EXPECT_EQ(m.capacity(), 640);
  EXPECT_EQ(a.rows(), 64);
  EXPECT_EQ(a.cols(), 10);
  EXPECT_EQ(a.outerStride(), 64);  // contiguous, whatever the storage held before
  EXPECT_TRUE(a.isZero(0));
  a.setConstant(1.0f);
  const float* data = a.data();

  // Another head size, the same or fewer scalars: the same memory, a contiguous view.
  auto& b = m.reshape(32, 20);
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(b.rows(), 32);
  EXPECT_EQ(b.cols(), 20);
  EXPECT_EQ(b.outerStride(), 32);
  EXPECT_EQ(m.reshape(16, 8).data(), data);
  EXPECT_EQ(m.reshape(64, 10).data(), data);
  EXPECT_EQ(m.capacity(), 640);
  EXPECT_EQ(m.map()(63, 9), 1.0f);  // contents are kept as scalars

  // More scalars: new storage, zeros.
  auto& c = m.reshape(32, 30);
  EXPECT_EQ(m.capacity(), 960);
  EXPECT_TRUE(c.isZero(0));
  EXPECT_EQ(c.rows(), 32);
  EXPECT_EQ(c.cols(), 30);
}

TEST(GrowingMatrix, ReserveGrowsTheStorageAndKeepsTheShape) {
  GrowingMatrix<double> m;
  m.reshape(4, 5);
  m.reserve(10);  // fewer than held: nothing changes
  EXPECT_EQ(m.capacity(), 20);
  m.reserve(100);
  EXPECT_EQ(m.capacity(), 100);
  EXPECT_EQ(m.map().rows(), 4);
  EXPECT_EQ(m.map().cols(), 5);
  const double* data = m.map().data();
  EXPECT_EQ(m.reshape(10, 10).data(), data);  // within the reserved storage
  EXPECT_TRUE(m.map().isZero(0));
}

}  // namespace
}  // namespace reformer
