// LshAttention with key padding (docs/DESIGN.md 7.1, 7.3): the pad bucket, the plain reference
// with masks (valid lengths and holes, hashed and dense), padding that never leaks into real
// positions, what the amount of padding changes (the look-back across rounds), thread
// independence and clear errors.
#include "lsh_test_util.hpp"
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/threading.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace reformer::test::lsh_mask {
namespace {

constexpr Index kHidden = 6;

Context masked_ctx(Index batch, const AttentionMask* mask, BucketTape* tape, bool replay) {
  Context ctx;
  ctx.batch = batch;
  ctx.mask = mask;
  ctx.buckets = tape;
  ctx.replay_buckets = replay;
  ctx.seed = 3;
  return ctx;
}

std::vector<AttentionMask> test_masks(Index t) {
  std::vector<int> holes(static_cast<std::size_t>(2 * t), 1);
  for (Index i = 0; i < 2 * t; ++i)
    if (i % 3 == 2 || i % 7 == 0) holes[static_cast<std::size_t>(i)] = 0;
  return {AttentionMask::from_lengths({t, std::max<Index>(1, t - 5)}, t),
          AttentionMask::from_lengths({2, t}, t), AttentionMask::from_flags(holes, 2, t)};
}

struct MaskedRun {
  Matrix<double> a, dx;
  Vector<double> grads;
  BucketTape tape;
};

// Forward (hashing and recording), then backward of L = sum(da .* a) replaying the tape.
MaskedRun run(const LshSetup& s, const Matrix<double>& xn, const Matrix<double>& da, Index batch,
              const AttentionMask* mask) {
  MaskedRun r;
  r.a.resize(s.out(), xn.cols());
  s.core.forward(s.params, xn, r.a, masked_ctx(batch, mask, &r.tape, false));
  Parameters<double> p = s.params;
  p.zero_grad();
  r.dx = Matrix<double>::Zero(s.hidden, xn.cols());
  Matrix<double> ra(da.rows(), da.cols());
  s.core.backward(p, xn, da, r.dx, ra, masked_ctx(batch, mask, &r.tape, true));
  EXPECT_EQ(ra, r.a);
  r.grads = p.grads();
  return r;
}

// Hashing with padding: padded positions get the pad bucket NB, real ones their own bucket
// (the same as without a mask); without any padding in the batch nothing changes.
TEST(LshMask, PaddedPositionsGetThePadBucket) {
  LshSetup s(lsh_config(2, 3, 4, 2, false, {4}), kHidden);
  const Index t = 12;
  const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(1));
  BucketTape plain, masked, full;
  s.core.compute_buckets(s.params, xn, masked_ctx(2, nullptr, nullptr, false), plain);
  const AttentionMask mask = test_masks(t)[2];
  s.core.compute_buckets(s.params, xn, masked_ctx(2, &mask, nullptr, false), masked);
  const AttentionMask none = AttentionMask::from_lengths({t, t}, t);
  s.core.compute_buckets(s.params, xn, masked_ctx(2, &none, nullptr, false), full);
  EXPECT_EQ(full.data, plain.data);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h)
      for (Index r = 0; r < 2; ++r)
        for (Index i = 0; i < t; ++i) {
          EXPECT_LT(plain.at(b, h, r, i), 4);
          EXPECT_EQ(masked.at(b, h, r, i), mask.real(b, i) ? plain.at(b, h, r, i) : 4);
        }
}

// The hashed path against reference_lsh (lsh_test_util.hpp) with the recorded buckets and the
// key flags, and the dense path (T <= C) against dense shared-QK attention with the flags.
TEST(LshMask, EqualsThePlainReference) {
  struct Case {
    Index rounds, t, before, after;
    bool causal;
  };
  for (const Case& c : std::vector<Case>{{1, 16, 1, 0, true},
                                         {2, 16, 1, 0, false},
                                         {2, 14, 1, 0, true},  // T not a multiple of C as well
                                         {3, 12, 1, 1, false},
                                         {2, 8, 2, 1, false},  // chunks twice in a window
                                         {2, 4, 1, 0, true},   // dense
                                         {1, 3, 1, 0, false}}) {
    auto cfg = lsh_config(2, 3, 4, c.rounds, c.causal, {4});
    cfg.chunks_before = c.before;
    cfg.chunks_after = c.after;
    LshSetup s(cfg, kHidden);
    const Matrix<double> xn = random_matrix(kHidden, 2 * c.t, Rng(11));
    for (const AttentionMask& mask : test_masks(c.t)) {
      if (mask.real_count(0) == 0 || mask.real_count(1) == 0) continue;
      BucketTape tape;
      Matrix<double> a(s.out(), xn.cols());
      s.core.forward(s.params, xn, a, masked_ctx(2, &mask, &tape, false));
      for (Index b = 0; b < 2; ++b)
        for (Index h = 0; h < 2; ++h) {
          const Matrix<double> qk = s.qk_head(xn, b, c.t, h), v = s.v_head(xn, b, c.t, h);
          const Matrix<double> ref =
              c.t <= 4 ? reference_dense(qk, v, c.causal, mask.sequence(b))
                       : reference_lsh(qk, v, tape_head(tape, b, h), c.rounds, 4, 4, c.before,
                                       c.after, c.causal, mask.sequence(b));
          EXPECT_LT(rel_error(a.block(h * 3, b * c.t, 3, c.t), ref), 1e-11)
              << "R " << c.rounds << " T " << c.t << " causal " << c.causal << " b " << b;
        }
    }
  }
}

// Whatever stands at padded positions, the real positions' outputs and gradients are bitwise
// the same (upstream gradient zero at padded positions): padded positions always hash to the
// pad bucket, so the sort does not depend on them either.
TEST(LshMask, PaddingNeverLeaks) {
  for (bool causal : {true, false}) {
    for (Index t : {12, 4}) {  // hashed, dense
      auto cfg = lsh_config(2, 3, 4, 2, causal, {4});
      cfg.chunks_after = causal ? 0 : 1;
      LshSetup s(cfg, kHidden);
      for (const AttentionMask& mask : test_masks(t)) {
        if (mask.real_count(0) == 0 || mask.real_count(1) == 0) continue;
        const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(5));
        Matrix<double> da = random_matrix(s.out(), 2 * t, Rng(6));
        Matrix<double> other = xn;
        for (Index i = 0; i < 2 * t; ++i)
          if (!mask.real(i / t, i % t)) {
            da.col(i).setZero();
            other.col(i) = random_matrix(kHidden, 1, Rng(70 + i), 40.0);
          }
        const MaskedRun r1 = run(s, xn, da, 2, &mask), r2 = run(s, other, da, 2, &mask);
        EXPECT_EQ(r1.tape.data, r2.tape.data);
        for (Index i = 0; i < 2 * t; ++i) {
          if (!mask.real(i / t, i % t)) continue;
          EXPECT_EQ(r1.a.col(i), r2.a.col(i)) << causal << " T " << t << " column " << i;
          EXPECT_EQ(r1.dx.col(i), r2.dx.col(i)) << causal << " T " << t << " column " << i;
        }
        EXPECT_EQ(r1.grads, r2.grads) << causal << " T " << t;
      }
    }
  }
}

// The amount of padding (docs/DESIGN.md 7.3): padded positions sort last in each round, so
// the first chunk of round r + 1 looks back at the end of round r (and chunk 0 at the end of
// the last round), whose content depends on how many padded positions there are. A sequence
// of 10 real tokens padded to 12 or to 16, with the same buckets at the real positions:
// a position none of whose slots lies in the first chunk of a round gets bitwise the same
// output; the others may differ (they do here, without the causal mask); both results are the
// reference's.
TEST(LshMask, TheAmountOfPaddingChangesOnlyTheFirstChunkOfEachRound) {
  for (bool causal : {false, true}) {
    LshSetup s(lsh_config(1, 3, 4, 2, causal, {4}), kHidden, 9);
    const Index real = 10, rounds = 2;
    const Matrix<double> x = random_matrix(kHidden, real, Rng(12));
    BucketTape first_tape;
    Matrix<double> out[2];
    std::vector<bool> first_chunk(static_cast<std::size_t>(real), false);
    for (int k = 0; k < 2; ++k) {
      const Index t = k == 0 ? 12 : 16;
      const AttentionMask mask = AttentionMask::from_lengths({real}, t);
      Matrix<double> xn = random_matrix(kHidden, t, Rng(13));
      xn.leftCols(real) = x;
      BucketTape tape;
      s.core.compute_buckets(s.params, xn, masked_ctx(1, &mask, nullptr, false), tape);
      if (k == 0) first_tape = tape;
      for (Index r = 0; r < rounds; ++r)
        for (Index i = 0; i < real; ++i) ASSERT_EQ(tape.at(0, 0, r, i), first_tape.at(0, 0, r, i));
      Matrix<double> a(s.out(), t);
      s.core.forward(s.params, xn, a, masked_ctx(1, &mask, &tape, true));
      const std::vector<std::int32_t> buckets = tape_head(tape, 0, 0);
      EXPECT_LT(rel_error(a, reference_lsh(s.qk_head(xn, 0, t, 0), s.v_head(xn, 0, t, 0), buckets,
                                           rounds, 4, 4, 1, 0, causal, mask.sequence(0))),
                1e-11);
      out[k] = a.leftCols(real);
      if (k == 0) {
        // The rank of each real position inside its round (padded ones sort last).
        for (Index r = 0; r < rounds; ++r)
          for (Index i = 0; i < real; ++i) {
            Index rank = 0;
            for (Index j = 0; j < real; ++j) {
              const auto bi = buckets[static_cast<std::size_t>(r * t + i)];
              const auto bj = buckets[static_cast<std::size_t>(r * t + j)];
              rank += (bj < bi || (bj == bi && j < i)) ? 1 : 0;
            }
            if (rank < 4) first_chunk[static_cast<std::size_t>(i)] = true;
          }
      }
    }
    Index changed = 0;
    for (Index i = 0; i < real; ++i) {
      if (!first_chunk[static_cast<std::size_t>(i)]) {
        EXPECT_EQ(out[0].col(i), out[1].col(i)) << "causal " << causal << " position " << i;
      } else if ((out[0].col(i) - out[1].col(i)).norm() > 1e-9) {
        ++changed;
      }
    }
    if (!causal) {
      EXPECT_GT(changed, 0);
    }
  }
}

TEST(LshMask, ResultsAreBitwiseIndependentOfThreadCount) {
  for (bool causal : {true, false}) {
    auto cfg = lsh_config(3, 3, 4, 3, causal, {4});
    cfg.chunks_after = causal ? 0 : 1;
    LshSetup s(cfg, kHidden);
    const Index t = 40;
    const AttentionMask mask = test_masks(t)[2];
    const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(1));
    const Matrix<double> da = random_matrix(s.out(), 2 * t, Rng(2));
    MaskedRun r[2];
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      r[threads - 1] = run(s, xn, da, 2, &mask);
    }
    EXPECT_EQ(r[0].tape.data, r[1].tape.data);
    EXPECT_EQ(r[0].a, r[1].a);
    EXPECT_EQ(r[0].dx, r[1].dx);
    EXPECT_EQ(r[0].grads, r[1].grads);
  }
  set_num_threads(2);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong type: ") + e.what();
  }
  return "no exception";
}

TEST(LshMask, WrongShapeAllPaddingAndPadBucketsWithoutMaskThrow) {
  LshSetup s(lsh_config(2, 3, 4, 2, true, {4}), kHidden);
  const Index t = 8;
  const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(1));
  Matrix<double> a(s.out(), 2 * t);
  BucketTape tape;
  const AttentionMask wrong = AttentionMask::from_lengths({8, 8, 8}, t);
  std::string e =
      error_of([&] { s.core.forward(s.params, xn, a, masked_ctx(2, &wrong, &tape, false)); });
  EXPECT_NE(e.find("LshAttention::forward"), std::string::npos) << e;
  EXPECT_NE(e.find("3 x 8"), std::string::npos) << e;
  const AttentionMask empty = AttentionMask::from_lengths({8, 0}, t);
  e = error_of([&] { s.core.forward(s.params, xn, a, masked_ctx(2, &empty, &tape, false)); });
  EXPECT_NE(e.find("all padding"), std::string::npos) << e;
  const Matrix<double> short_xn = random_matrix(kHidden, 2 * 3, Rng(1));  // dense path too
  const AttentionMask short_empty = AttentionMask::from_lengths({0, 3}, 3);
  Matrix<double> short_a(s.out(), 6);
  e = error_of([&] {
    s.core.forward(s.params, short_xn, short_a, masked_ctx(2, &short_empty, &tape, false));
  });
  EXPECT_NE(e.find("sequence 0"), std::string::npos) << e;
  // A tape recorded with padding holds the pad bucket, valid only with the mask.
  const AttentionMask mask = AttentionMask::from_lengths({8, 5}, t);
  s.core.forward(s.params, xn, a, masked_ctx(2, &mask, &tape, false));
  e = error_of([&] { s.core.forward(s.params, xn, a, masked_ctx(2, nullptr, &tape, true)); });
  EXPECT_NE(e.find("outside [0, num_buckets = 4)"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] { s.core.forward(s.params, xn, a, masked_ctx(2, &mask, &tape, true)); }),
            "no exception");
}

}  // namespace
}  // namespace reformer::test::lsh_mask
