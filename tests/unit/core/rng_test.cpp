#include "reformer/core/rng.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>

namespace reformer {
namespace {

TEST(Rng, SameKeySameDraws) {
  const Rng a = Rng(42).derive(3).derive(7);
  const Rng b = Rng(42).derive(3).derive(7);
  for (std::uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(a.bits(i), b.bits(i));
    EXPECT_EQ(a.normal(i), b.normal(i));
  }
}

TEST(Rng, DifferentKeysDiffer) {
  const std::array<Rng, 5> keys = {Rng(1), Rng(2), Rng(1).derive(0), Rng(1).derive(1),
                                   Rng(1).derive(0).derive(0)};
  for (std::size_t i = 0; i < keys.size(); ++i) {
    for (std::size_t j = i + 1; j < keys.size(); ++j) {
      int equal = 0;
      for (std::uint64_t k = 0; k < 256; ++k) equal += keys[i].bits(k) == keys[j].bits(k);
      EXPECT_EQ(equal, 0) << "keys " << i << " and " << j;
    }
  }
}

TEST(Rng, DeriveOrderMatters) {
  EXPECT_NE(Rng(9).derive(1).derive(2).bits(0), Rng(9).derive(2).derive(1).bits(0));
}

TEST(Rng, NormalMeanAndVariance) {
  const Rng r = Rng(123).derive(5);
  constexpr int kN = 200000;
  double sum = 0, sum2 = 0, sum4 = 0;
  for (int i = 0; i < kN; ++i) {
    const double z = r.normal(static_cast<std::uint64_t>(i));
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sum2 += z * z;
    sum4 += z * z * z * z;
  }
  const double mean = sum / kN, var = sum2 / kN - mean * mean, kurt = sum4 / kN;
  // Standard errors: mean 1/sqrt(N) = 0.0022, variance sqrt(2/N) = 0.0032; bounds are ~5 sigma.
  EXPECT_NEAR(mean, 0.0, 0.011);
  EXPECT_NEAR(var, 1.0, 0.016);
  EXPECT_NEAR(kurt, 3.0, 0.1);
}

TEST(Rng, UniformChiSquare) {
  const Rng r = Rng(7).derive(11);
  constexpr int kBins = 100, kN = 100000;
  std::array<int, kBins> counts{};
  for (int i = 0; i < kN; ++i) {
    const double u = r.uniform(static_cast<std::uint64_t>(i));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ++counts[static_cast<std::size_t>(u * kBins)];
  }
  double chi2 = 0;
  const double expected = static_cast<double>(kN) / kBins;
  for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  // 99 degrees of freedom: the 0.999 quantile is 148.2.
  EXPECT_LT(chi2, 148.2);
  EXPECT_GT(chi2, 50.0);  // suspiciously uniform would also be a bug (0.0001 quantile ~ 57)
}

TEST(Rng, BelowIsInRangeAndUniform) {
  const Rng r(99);
  std::array<int, 6> counts{};
  constexpr int kN = 60000;
  for (int i = 0; i < kN; ++i) {
    const auto v = r.below(static_cast<std::uint64_t>(i), 6);
    ASSERT_LT(v, 6u);
    ++counts[v];
  }
  double chi2 = 0;
  for (int c : counts) chi2 += (c - kN / 6.0) * (c - kN / 6.0) / (kN / 6.0);
  EXPECT_LT(chi2, 20.5);  // 5 dof, 0.999 quantile
}

}  // namespace
}  // namespace reformer
