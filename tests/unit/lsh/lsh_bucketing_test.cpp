// LSH bucketing on its own: the bucket-count rule, rotations keyed by the RNG, the hash
// (first-maximum argmax, factorised buckets), the LSH property, and the stable counting sort.
#include "reformer/layers/lsh_bucketing.hpp"
#include "lsh_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>

namespace reformer::test {
namespace {

TEST(LshBucketLayout, AutomaticRuleFollowsHuggingFace) {
  // p = bit_length(2 * (T / C)) - 1, NB = 2^p; factorised (2^(p/2), 2^(p - p/2)) above
  // 2 * max(floor(sqrt(max_positions / C)), C).
  EXPECT_EQ(lsh_bucket_layout({}, 24, 4, 24).factors, std::vector<Index>({8}));
  EXPECT_EQ(lsh_bucket_layout({}, 8, 4, 4096).factors, std::vector<Index>({4}));
  EXPECT_EQ(lsh_bucket_layout({}, 20, 4, 4096).factors, std::vector<Index>({8}));  // 2*5 -> 8
  EXPECT_EQ(lsh_bucket_layout({}, 1024, 4, 1024).factors, std::vector<Index>({16, 32}));
  EXPECT_EQ(lsh_bucket_layout({}, 4096, 64, 4096).factors, std::vector<Index>({128}));
  EXPECT_EQ(lsh_bucket_layout({}, 65536, 64, 65536).factors, std::vector<Index>({32, 64}));
  EXPECT_EQ(lsh_bucket_layout({}, 4, 4, 4096).factors, std::vector<Index>({2}));  // at least 2
  // Explicit counts are used as given.
  EXPECT_EQ(lsh_bucket_layout({6}, 1000, 4, 4096).factors, std::vector<Index>({6}));
  EXPECT_EQ(lsh_bucket_layout({2, 4}, 8, 4, 4096).factors, std::vector<Index>({2, 4}));
  const LshBucketLayout f{{2, 4}};
  EXPECT_EQ(f.num_buckets(), 8);
  EXPECT_EQ(f.rotation_columns(), 3);
}

TEST(LshBucketLayout, RejectsOddOrTinyCounts) {
  EXPECT_THROW(lsh_bucket_layout({5}, 24, 4, 24), ConfigError);
  EXPECT_THROW(lsh_bucket_layout({4, 3}, 24, 4, 24), ConfigError);
  EXPECT_THROW(lsh_bucket_layout({0}, 24, 4, 24), ConfigError);
  try {
    validate_lsh_num_buckets("f", {7});
    FAIL() << "no throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("num_buckets"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("7"), std::string::npos) << e.what();
  }
}

TEST(LshRotations, KeyedBySeedStepLayerHeadRound) {
  const LshBucketLayout layout{{8}};
  Context ctx;
  ctx.seed = 1;
  ctx.step = 4;
  ctx.layer = 2;
  const Matrix<double> r0 = lsh_rotations<double>(lsh_rotation_key(ctx, 1, 0), 5, layout);
  EXPECT_EQ(r0.rows(), 5);
  EXPECT_EQ(r0.cols(), 4);
  // Same key -> same rotation, bitwise.
  EXPECT_EQ(r0, lsh_rotations<double>(lsh_rotation_key(ctx, 1, 0), 5, layout));
  // Any component of the key changes it.
  auto differs = [&](const Context& c, Index head, Index round) {
    return (lsh_rotations<double>(lsh_rotation_key(c, head, round), 5, layout) - r0)
               .cwiseAbs()
               .minCoeff() > 0;
  };
  Context other = ctx;
  other.step = 5;
  EXPECT_TRUE(differs(other, 1, 0));
  other = ctx;
  other.seed = 2;
  EXPECT_TRUE(differs(other, 1, 0));
  other = ctx;
  other.layer = 3;
  EXPECT_TRUE(differs(other, 1, 0));
  EXPECT_TRUE(differs(ctx, 0, 0));
  EXPECT_TRUE(differs(ctx, 1, 1));
  // Element (d, j) is draw d * cols + j of the key.
  EXPECT_EQ(r0(3, 2), lsh_rotation_key(ctx, 1, 0).normal(3 * 4 + 2));
  // Roughly standard normal.
  const Matrix<double> big =
      lsh_rotations<double>(lsh_rotation_key(ctx, 0, 0), 64, LshBucketLayout{{128}});
  EXPECT_NEAR(big.mean(), 0.0, 0.05);
  EXPECT_NEAR(big.squaredNorm() / static_cast<double>(big.size()), 1.0, 0.05);
}

TEST(LshHash, ArgmaxOverRotationAndNegationFirstMaximumWins) {
  // Rotation = identity columns: R^T x = x, so the bucket is the argmax of [x; -x].
  Matrix<double> rot = Matrix<double>::Identity(3, 3);
  Matrix<double> x(3, 5);
  x.col(0) << 1, 2, 3;    // max 3 at j = 2
  x.col(1) << -1, -5, 2;  // max of [x; -x] = 5 at 3 + 1
  x.col(2) << 0, 0, 0;    // all ties: first maximum, bucket 0
  x.col(3) << 2, -2, 1;   // 2 at j = 0 and at 3 + 1: first wins -> 0
  x.col(4) << -1, 1, -3;  // 3 at 3 + 2
  std::int32_t b[5];
  lsh_hash<double>(x, rot, LshBucketLayout{{6}}, b);
  EXPECT_EQ(std::vector<std::int32_t>(b, b + 5), std::vector<std::int32_t>({2, 4, 0, 0, 5}));
}

// The argmax of a packet of tokens against the plain scan of each token, on lists full of ties
// (small integers), signed zeros, infinities and NaNs, for lengths around the packet sizes; the
// tokens' values lie `stride` apart, as in lsh_hash's buffer.
template <class S>
void expect_argmax_matches_reference() {
  constexpr Index k = detail::kPacketSize<S>;
  const Rng rng(41);
  std::uint64_t draw = 0;
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  for (Index h : {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 512, 513}) {
    for (int trial = 0; trial < 50; ++trial) {
      const Index stride = k + trial % 3;  // the lanes, and sometimes a gap after them
      std::vector<S> r(static_cast<std::size_t>(h * stride), S(0));
      for (Index l = 0; l < k; ++l) {
        const int kind = (trial + static_cast<int>(l)) % 4;
        for (Index j = 0; j < h; ++j) {
          S& v = r[static_cast<std::size_t>(l + j * stride)];
          const double u = rng.uniform(draw++);
          if (kind == 0) {
            v = static_cast<S>(std::floor(7 * u) - 3);  // -3 .. 3: ties between r and -r
          } else if (kind == 1) {
            v = u < 0.5 ? S(0) : S(-0.0);  // signed zeros only
          } else {
            v = static_cast<S>(rng.normal(draw++));
          }
        }
        const auto pick = [&](Index salt) {
          return static_cast<std::size_t>(l + ((trial + salt * l) % h) * stride);
        };
        if ((trial + l) % 5 == 3) r[pick(3)] = (trial + l) % 2 == 0 ? inf : -inf;
        if ((trial + l) % 7 == 2) r[pick(5)] = nan;
        if ((trial + l) % 11 == 4) r[static_cast<std::size_t>(l)] = nan;  // r_0 itself
      }
      S got[k];
      Eigen::internal::pstoreu(got, detail::lsh_argmax_lanes<S>(r.data(), stride, h));
      for (Index l = 0; l < k; ++l) {
        EXPECT_EQ(static_cast<Index>(got[l]),
                  detail::lsh_argmax_reference<S>(r.data() + l, h, stride))
            << "h = " << h << ", trial " << trial << ", lane " << l;
      }
    }
  }
}

TEST(LshHash, ArgmaxOfAPacketOfTokensEqualsThePlainScan) {
  expect_argmax_matches_reference<float>();
  expect_argmax_matches_reference<double>();
}

// lsh_hash on integer-valued inputs (exact products, many ties) gives, factor by factor, the
// plain scan's bucket: for one token, a part of a packet, and a block and a half of tokens.
TEST(LshHash, BucketsEqualThePlainScanWithTies) {
  const Rng rng(43);
  for (const auto& factors : {std::vector<Index>{2}, std::vector<Index>{64},
                              std::vector<Index>{1024}, std::vector<Index>{4, 32}}) {
    const LshBucketLayout layout{factors};
    const Index dh = 8;
    for (Index n : {1, 5, 300}) {
      Matrix<float> x(dh, n), rot(dh, layout.rotation_columns());
      std::uint64_t draw = 0;
      for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::floor(5 * rng.uniform(draw++)) - 2;
      for (Index i = 0; i < rot.size(); ++i)
        rot.data()[i] = std::floor(5 * rng.uniform(draw++)) - 2;
      std::vector<std::int32_t> b(static_cast<std::size_t>(n));
      lsh_hash<float>(x, rot, layout, b.data());
      const Matrix<float> rotated = rot.transpose() * x;  // small integers: exact
      for (Index t = 0; t < n; ++t) {
        Index bucket = 0, scale = 1, col0 = 0;
        for (Index f : factors) {
          bucket += scale * detail::lsh_argmax_reference<float>(&rotated(col0, t), f / 2);
          scale *= f;
          col0 += f / 2;
        }
        EXPECT_EQ(b[static_cast<std::size_t>(t)], bucket) << "n = " << n << ", t = " << t;
      }
    }
  }
}

TEST(LshHash, FactorisedBucketsCombineFactorHashes) {
  // Two factors (2, 4): columns [c0 | c1 c2]; b = b1 + 2 * b2.
  Matrix<double> rot = Matrix<double>::Identity(3, 3);
  Matrix<double> x(3, 2);
  x.col(0) << -1, 0.5, -2;  // b1 = argmax(-1, 1) = 1; b2 = argmax(0.5, -2, -0.5, 2) = 3
  x.col(1) << 1, 3, 0;      // b1 = 0; b2 = 0
  std::int32_t b[2];
  lsh_hash<double>(x, rot, LshBucketLayout{{2, 4}}, b);
  EXPECT_EQ(b[0], 1 + 2 * 3);
  EXPECT_EQ(b[1], 0);
}

TEST(LshHash, BucketsCoverExactlyAllValues) {
  for (const auto& factors : {std::vector<Index>{8}, std::vector<Index>{2, 4},
                              std::vector<Index>{4, 2}, std::vector<Index>{4, 4}}) {
    const LshBucketLayout layout{factors};
    const Index n = 4000;
    const Matrix<double> x = random_matrix(6, n, Rng(1));
    const Matrix<double> rot = lsh_rotations<double>(Rng(2), 6, layout);
    std::vector<std::int32_t> b(static_cast<std::size_t>(n));
    lsh_hash<double>(x, rot, layout, b.data());
    const std::set<std::int32_t> seen(b.begin(), b.end());
    ASSERT_EQ(static_cast<Index>(seen.size()), layout.num_buckets());
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), layout.num_buckets() - 1);
  }
}

TEST(LshHash, ScaleInvariantAndIdenticalVectorsShareBuckets) {
  const LshBucketLayout layout{{8}};
  Matrix<double> x = random_matrix(5, 40, Rng(3));
  x.col(7) = x.col(3);
  x.col(9) = 2.5 * x.col(3);  // a positive multiple hashes like the vector itself
  for (Index round = 0; round < 6; ++round) {
    const Matrix<double> rot =
        lsh_rotations<double>(Rng(4).derive(static_cast<std::uint64_t>(round)), 5, layout);
    std::vector<std::int32_t> b(40);
    lsh_hash<double>(x, rot, layout, b.data());
    EXPECT_EQ(b[7], b[3]);
    EXPECT_EQ(b[9], b[3]);
  }
}

TEST(LshHash, FloatAndDoubleAgreeOnClearCases) {
  const LshBucketLayout layout{{4}};
  const Matrix<double> x = random_matrix(4, 200, Rng(8));
  const Matrix<double> rot = lsh_rotations<double>(Rng(9), 4, layout);
  std::vector<std::int32_t> bd(200), bf(200);
  lsh_hash<double>(x, rot, layout, bd.data());
  lsh_hash<float>(x.cast<float>(), rot.cast<float>(), layout, bf.data());
  Index same = 0;
  for (std::size_t i = 0; i < bd.size(); ++i) same += bd[i] == bf[i];
  EXPECT_GE(same, 198);  // only near-ties may flip
}

// The LSH property: the probability that two vectors share a bucket falls with their angle.
// For each angle, 3000 independent (pair, rotation) draws (fixed seeds); each rate must be below
// 0.8 times the previous one, a margin far above the sampling noise (standard error < 0.01),
// and the rate is 1 at angle 0.
TEST(LshHash, CollisionRateFallsWithAngle) {
  const Index dh = 16, trials = 3000;
  const LshBucketLayout layout{{8}};
  const std::vector<double> angles = {0.0, 0.3, 0.7, 1.1, 1.5, 2.0, 2.6};
  std::vector<double> rate;
  for (std::size_t ai = 0; ai < angles.size(); ++ai) {
    Index hits = 0;
    for (Index i = 0; i < trials; ++i) {
      const Rng key = Rng(100).derive(ai).derive(static_cast<std::uint64_t>(i));
      // u, w orthonormal; y at angle theta from u.
      Matrix<double> uw = random_matrix(dh, 2, key.derive(0));
      Vector<double> u = uw.col(0).normalized();
      Vector<double> w = uw.col(1) - u.dot(uw.col(1)) * u;
      w.normalize();
      Matrix<double> pair(dh, 2);
      pair.col(0) = u;
      pair.col(1) = std::cos(angles[ai]) * u + std::sin(angles[ai]) * w;
      const Matrix<double> rot = lsh_rotations<double>(key.derive(1), dh, layout);
      std::int32_t b[2];
      lsh_hash<double>(pair, rot, layout, b);
      hits += b[0] == b[1];
    }
    rate.push_back(static_cast<double>(hits) / static_cast<double>(trials));
  }
  EXPECT_EQ(rate[0], 1.0);
  for (std::size_t i = 1; i < rate.size(); ++i) {
    EXPECT_LT(rate[i], 0.8 * rate[i - 1])
        << "angle " << angles[i] << ": " << rate[i] << " vs " << rate[i - 1];
  }
  EXPECT_LT(rate.back(), 0.05);  // nearly opposite vectors almost never collide
}

// ---- the stable counting sort --------------------------------------------------------------

void expect_sort_matches_reference(const std::vector<std::int32_t>& buckets, Index rounds,
                                   Index length, Index bins) {
  const LshSortedSlots got = lsh_sort(buckets, rounds, length, bins);
  std::vector<Index> ref(buckets.size());
  std::iota(ref.begin(), ref.end(), Index{0});
  // Key (round, bucket); std::stable_sort keeps positions in order within equal keys.
  std::stable_sort(ref.begin(), ref.end(), [&](Index a, Index b) {
    const Index ka = (a / length) * bins + buckets[static_cast<std::size_t>(a)];
    const Index kb = (b / length) * bins + buckets[static_cast<std::size_t>(b)];
    return ka < kb;
  });
  EXPECT_EQ(got.order, ref);
  for (std::size_t s = 0; s < ref.size(); ++s)
    EXPECT_EQ(got.inverse[static_cast<std::size_t>(got.order[s])], static_cast<Index>(s));
  // The overload with its scratch in the calling thread's buffer sorts the same (twice: the
  // buffer's contents from an earlier call must not matter).
  for (int call = 0; call < 2; ++call) {
    std::vector<Index> order(buckets.size()), inverse(buckets.size());
    lsh_counting_sort(buckets.data(), rounds, length, bins, order.data(), inverse.data());
    EXPECT_EQ(order, got.order);
    EXPECT_EQ(inverse, got.inverse);
  }
}

TEST(LshSort, CountingSortEqualsStableSort) {
  const Rng rng(42);
  for (Index trial = 0; trial < 20; ++trial) {
    const Index rounds = 1 + trial % 4, length = 1 + (trial * 7) % 37, bins = 1 + trial % 9;
    std::vector<std::int32_t> b(static_cast<std::size_t>(rounds * length));
    for (std::size_t i = 0; i < b.size(); ++i)
      b[i] = static_cast<std::int32_t>(
          rng.derive(static_cast<std::uint64_t>(trial)).below(i, static_cast<std::uint64_t>(bins)));
    expect_sort_matches_reference(b, rounds, length, bins);
  }
}

TEST(LshSort, ManyMoreBinsThanPositionsSortByComparison) {
  // bins > 2 * length + 1 takes the comparison path; both paths must agree with the reference.
  const Rng rng(7);
  for (const Index bins : {Index{64}, Index{1000}, Index{1} << 20}) {
    const Index rounds = 3, length = 17;
    std::vector<std::int32_t> b(static_cast<std::size_t>(rounds * length));
    for (std::size_t i = 0; i < b.size(); ++i)
      b[i] = static_cast<std::int32_t>(rng.below(i, static_cast<std::uint64_t>(bins)));
    b[3] = b[5];  // a tie: positions keep their order
    expect_sort_matches_reference(b, rounds, length, bins);
  }
}

TEST(LshSort, CostDoesNotGrowWithTheBucketCount) {
  // 2^30 bins (the largest count a config accepts, plus the pad bin): no per-bin array.
  const Index bins = (Index{1} << 30) + 1;
  const std::vector<std::int32_t> b = {1 << 29, 5, (1 << 30) - 1, 5, 0, 1 << 30};
  std::vector<Index> order(b.size()), inverse(b.size()), counts;
  lsh_counting_sort(b.data(), 2, 3, bins, order.data(), inverse.data(), counts);
  EXPECT_EQ(order, std::vector<Index>({1, 0, 2, 4, 3, 5}));
  EXPECT_LE(counts.capacity(), 16u);
}

TEST(LshBucketLayout, RefusesRotationsBeyondTheLengthsNeed) {
  // An unfactorised 2^24-bucket layout needs 2^23 rotation columns per head and round.
  try {
    lsh_bucket_layout({Index{1} << 24}, 256, 64, 256);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("rotation columns"), std::string::npos) << e.what();
  }
  EXPECT_EQ(lsh_bucket_layout({4096, 4096}, 256, 64, 256).num_buckets(), Index{1} << 24);
  EXPECT_EQ(lsh_max_rotation_columns(Index{1} << 30, 2), Index{1} << 29);  // grows with T
  EXPECT_THROW(lsh_bucket_layout({Index{1} << 32, Index{1} << 32}, 256, 64, 256), ConfigError);
}

TEST(LshSort, AllEqualBucketsKeepPositionalOrder) {
  const std::vector<std::int32_t> b(3 * 10, 2);
  expect_sort_matches_reference(b, 3, 10, 4);
  const LshSortedSlots s = lsh_sort(b, 3, 10, 4);
  for (Index i = 0; i < 30; ++i) EXPECT_EQ(s.order[static_cast<std::size_t>(i)], i);
}

TEST(LshSort, RejectsOutOfRangeBuckets) {
  EXPECT_THROW(lsh_sort({0, 1, 4}, 1, 3, 4), InvalidArgument);
  EXPECT_THROW(lsh_sort({0, -1, 2}, 1, 3, 4), InvalidArgument);
  EXPECT_THROW(lsh_sort({0, 1}, 1, 3, 4), InvalidArgument);
}

TEST(LshHash, RejectsRotationOfWrongHeadSize) {
  const Matrix<double> x = random_matrix(4, 3, Rng(1));
  const Matrix<double> rot = random_matrix(5, 2, Rng(2));
  std::int32_t b[3];
  try {
    lsh_hash<double>(x, rot, LshBucketLayout{{4}}, b);
    FAIL() << "no throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("rotations.rows() = 5"), std::string::npos) << e.what();
  }
  const Matrix<double> rot3 = random_matrix(4, 3, Rng(2));  // 3 columns, layout needs 2
  EXPECT_THROW(lsh_hash<double>(x, rot3, LshBucketLayout{{4}}, b), InvalidArgument);
}

}  // namespace
}  // namespace reformer::test
