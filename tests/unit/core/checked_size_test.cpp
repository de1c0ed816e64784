// The overflow-checked size products (core/checked_size.hpp) and their use in Parameters::add.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/parameters.hpp"

#include "support/errors.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace reformer {
namespace checked_size_test {

TEST(CheckedSize, ProductsWithinTheLimit) {
  EXPECT_EQ(checked_mul(3, 4), 12);
  EXPECT_EQ(checked_mul(0, kMaxIndex), 0);
  EXPECT_EQ(checked_mul(kMaxIndex, 1), kMaxIndex);
  EXPECT_EQ(checked_product({2, 3, 7}), 42);
  EXPECT_EQ(checked_product(std::vector<Index>{}), 1);
  EXPECT_EQ(checked_product({kMaxIndex, kMaxIndex, 0}), 0);  // a zero factor wins
  EXPECT_EQ(checked_product({4, 4}, 16), 16);
  EXPECT_EQ(checked_add(kMaxIndex - 1, 1), kMaxIndex);
}

TEST(CheckedSize, OverflowAndNegativeFactorsAreReported) {
  EXPECT_FALSE(checked_mul(Index{1} << 32, Index{1} << 31).has_value());
  EXPECT_FALSE(checked_mul(-1, 2).has_value());
  EXPECT_FALSE(checked_product({Index{1} << 62, Index{1} << 62}).has_value());
  EXPECT_FALSE(checked_product({Index{1} << 40, 2, Index{1} << 22}).has_value());
  EXPECT_FALSE(checked_product({4, 5}, 16).has_value());
  EXPECT_FALSE(checked_add(kMaxIndex, 1).has_value());
  test::expect_throw_with<InvalidArgument>(
      [] {
        size_product("f", "shape of 'w'", {Index{1} << 62, 8});
      },
      {"f: shape of 'w' = 4611686018427387904 x 8", "exceeds"});
  test::expect_throw_with<ConfigError>(
      [] {
        size_product<ConfigError>("g", "window", {3, 4}, 10);
      },
      {"g: window = 3 x 4"});
}

TEST(CheckedSize, ParametersRefuseOverflowingShapesBeforeAllocating) {
  Parameters<float> p;
  p.add("a", {2, 3});
  test::expect_throw_with<InvalidArgument>(
      [&] {
        p.add("huge", {Index{1} << 61, 16});
      },
      {"Parameters::add", "shape of 'huge'"});
  test::expect_throw_with<InvalidArgument>(
      [&] {
        p.add("too_big", {Index{1} << 30, Index{1} << 12});
      },
      {"shape of 'too_big'"});
  EXPECT_EQ(p.size(), 6);  // unchanged
  EXPECT_EQ(p.num_slots(), 1);
}

}  // namespace checked_size_test
}  // namespace reformer
