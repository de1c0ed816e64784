#include "reformer/core/parameters.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer {
namespace {

TEST(Parameters, SlotsAreContiguousAndNamed) {
  Parameters<double> p;
  const SlotId w = p.add("dense.weight", {3, 4});
  const SlotId b = p.add("dense.bias", {3});
  const SlotId a = p.add("axial.weights.0", {2, 1, 5});
  EXPECT_EQ(p.size(), 12 + 3 + 10);
  EXPECT_EQ(p.slot(b).offset, 12);
  EXPECT_EQ(p.slot(a).rows(), 2);
  EXPECT_EQ(p.slot(a).cols(), 5);
  EXPECT_EQ(p.id_of("dense.bias"), b);
  EXPECT_FALSE(p.find("nope").has_value());

  // Row-major [out, in] view: element (r, c) sits at offset r * in + c.
  p.value(w)(1, 2) = 5.0;
  EXPECT_EQ(p.values()[1 * 4 + 2], 5.0);
  p.grad_vector(b)[2] = 1.5;
  EXPECT_EQ(p.grads()[12 + 2], 1.5);
  p.zero_grad();
  EXPECT_EQ(p.grads().squaredNorm(), 0.0);
}

TEST(Parameters, RejectsBadSlots) {
  Parameters<float> p;
  p.add("x", {2});
  try {
    p.add("x", {3});
    FAIL() << "duplicate name accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(p.add("y", {2, 0}), InvalidArgument);
  EXPECT_THROW(p.add("", {2}), InvalidArgument);
  EXPECT_THROW(p.add("z", {}), InvalidArgument);
  EXPECT_THROW(p.id_of("missing"), InvalidArgument);
  EXPECT_THROW(p.slot(7), InvalidArgument);
}

}  // namespace
}  // namespace reformer
