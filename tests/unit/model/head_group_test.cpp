// Head groups (layers/head_range.hpp): the attention sublayer streams its heads through the core
// in groups so long inputs hold one group's per-head matrices instead of all heads'. For every
// core, streaming one or two heads at a time must give the results of all heads at once (to
// rounding), record the same LSH buckets, and have finite-difference-exact gradients.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/testing/gradcheck.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace reformer::test::head_groups {

constexpr Index kHidden = 8, kHeads = 3, kHeadSize = 4, kBatch = 2, kLength = 24;
constexpr Index kTokens = kBatch * kLength;
// head_group_scalars for 1 head per group, 2 heads per group (+ 1), and all heads at once.
constexpr Index kOneHead = 1, kTwoHeads = 2 * kHeadSize * kTokens, kAllHeads = Index{1} << 40;

template <class Core>
using Layer = AttentionSublayer<double, Core>;

template <class Core>
typename Layer<Core>::Config make_config(Index group_scalars, double output_dropout = 0.1) {
  typename Layer<Core>::Config cfg;
  cfg.hidden_size = kHidden;
  cfg.output_dropout = output_dropout;
  cfg.head_group_scalars = group_scalars;
  cfg.core.num_heads = kHeads;
  cfg.core.head_size = kHeadSize;
  cfg.core.causal = true;
  cfg.core.dropout = 0.1;
  if constexpr (!std::is_same_v<Core, FullAttention<double>>) cfg.core.chunk_length = 4;
  if constexpr (std::is_same_v<Core, LshAttention<double>>) {
    cfg.core.num_hashes = 2;
    cfg.core.num_buckets = {4};
  }
  return cfg;
}

Matrix<double> random_input(Index rows, Index cols, std::uint64_t seed) {
  const Rng rng(seed);
  Matrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
  return m;
}

double max_abs_diff(const Matrix<double>& a, const Matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

/// One sublayer with its parameters (every value drawn normal(0, 0.5), LayerNorm included) and a
/// training context that records its LSH buckets into `tape`.
template <class Core>
struct Setup {
  Parameters<double> params;
  Layer<Core> layer;
  BucketTape tape;
  Context ctx;

  explicit Setup(Index group_scalars, double output_dropout = 0.1)
      : layer(make_config<Core>(group_scalars, output_dropout), params) {
    const Rng rng(5);
    for (Index i = 0; i < params.size(); ++i) {
      params.values()[i] = 0.5 * rng.normal(static_cast<std::uint64_t>(i));
    }
    ctx.batch = kBatch;
    ctx.training = true;
    ctx.seed = 17;
    ctx.step = 2;
    ctx.layer = 1;
    ctx.buckets = &tape;
  }
};

template <class Core>
class HeadGroups : public ::testing::Test {};
using Cores = ::testing::Types<FullAttention<double>, LocalAttention<double>, LshAttention<double>>;
TYPED_TEST_SUITE(HeadGroups, Cores);

TYPED_TEST(HeadGroups, StreamingHeadsMatchesAllHeadsAtOnce) {
  const Matrix<double> x = random_input(kHidden, kTokens, 1);
  const Matrix<double> dy = random_input(kHidden, kTokens, 2);
  Setup<TypeParam> all(kAllHeads);
  ASSERT_EQ(all.layer.heads_per_group(kTokens), kHeads);
  Matrix<double> y_all(kHidden, kTokens), dx_all(kHidden, kTokens), fx_all(kHidden, kTokens);
  all.layer.forward(all.params, x, y_all, all.ctx);
  all.ctx.replay_buckets = true;
  all.params.zero_grad();
  backward_out_of_place(all.layer, all.params, x, dy, dx_all, fx_all, all.ctx);
  EXPECT_LT(max_abs_diff(fx_all, y_all), 1e-12);

  for (const Index scalars : {kOneHead, kTwoHeads}) {
    SCOPED_TRACE(scalars == kOneHead ? "one head per group" : "groups of two heads and one");
    Setup<TypeParam> grp(scalars);
    ASSERT_EQ(grp.layer.heads_per_group(kTokens), scalars == kOneHead ? 1 : 2);
    Matrix<double> y(kHidden, kTokens), dx(kHidden, kTokens), fx(kHidden, kTokens);
    grp.layer.forward(grp.params, x, y, grp.ctx);
    EXPECT_EQ(grp.tape.data, all.tape.data) << "the same buckets, whatever the grouping";
    EXPECT_LT(max_abs_diff(y, y_all), 1e-12);
    grp.ctx.replay_buckets = true;
    grp.params.zero_grad();
    backward_out_of_place(grp.layer, grp.params, x, dy, dx, fx, grp.ctx);
    EXPECT_LT(max_abs_diff(dx, dx_all), 1e-12);
    EXPECT_LT(max_abs_diff(fx, fx_all), 1e-12);
    EXPECT_LT((grp.params.grads() - all.params.grads()).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_GT(grp.params.grads().cwiseAbs().maxCoeff(), 1e-3) << "gradients are not trivially 0";
  }
}

// backward (the contract's in-place step) gives dx_acc + dx and y_sub - f(x) of the out-of-place
// form, to rounding: without output dropout it subtracts each head group's term from
// y_sub directly, with dropout it needs the whole sum first.
TYPED_TEST(HeadGroups, BackwardAccumulatesAndSubtractsInPlace) {
  const Matrix<double> x = random_input(kHidden, kTokens, 4);
  const Matrix<double> dy = random_input(kHidden, kTokens, 5);
  const Matrix<double> acc0 = random_input(kHidden, kTokens, 6);
  const Matrix<double> y0 = random_input(kHidden, kTokens, 7);
  for (const double dropout : {0.0, 0.1}) {
    for (const Index scalars : {kOneHead, kAllHeads}) {
      SCOPED_TRACE(std::string(scalars == kOneHead ? "one head per group" : "all heads") +
                   ", output dropout " + std::to_string(dropout));
      Setup<TypeParam> s(scalars, dropout);
      Matrix<double> y(kHidden, kTokens), dx(kHidden, kTokens), fx(kHidden, kTokens);
      s.layer.forward(s.params, x, y, s.ctx);
      s.ctx.replay_buckets = true;
      s.params.zero_grad();
      backward_out_of_place(s.layer, s.params, x, dy, dx, fx, s.ctx);
      const Vector<double> grads = s.params.grads();
      s.params.zero_grad();
      Matrix<double> acc = acc0, y_sub = y0;
      s.layer.backward(s.params, x, dy, acc, y_sub, s.ctx);
      EXPECT_LT(max_abs_diff(acc, acc0 + dx), 1e-12);
      EXPECT_LT(max_abs_diff(y_sub, y0 - fx), 1e-12);
      EXPECT_LT((s.params.grads() - grads).cwiseAbs().maxCoeff(), 1e-12);
      EXPECT_GT(dx.cwiseAbs().maxCoeff(), 1e-3);
      EXPECT_GT(fx.cwiseAbs().maxCoeff(), 1e-3);
    }
  }
}

TYPED_TEST(HeadGroups, OneHeadPerGroupMatchesFiniteDifferences) {
  Setup<TypeParam> s(kOneHead);
  Matrix<double> x = random_input(kHidden, kTokens, 3);
  Matrix<double> y(kHidden, kTokens);
  s.layer.forward(s.params, x, y, s.ctx);  // records the buckets; every evaluation replays them
  s.ctx.replay_buckets = true;
  auto forward = [&] {
    Matrix<double> out(kHidden, kTokens);
    s.layer.forward(s.params, x, out, s.ctx);
    return out;
  };
  Matrix<double> dx(kHidden, kTokens), fx(kHidden, kTokens);
  auto backward = [&](const Matrix<double>& w) {
    s.params.zero_grad();
    backward_out_of_place(s.layer, s.params, x, w, dx, fx, s.ctx);
  };
  testing::GradCheckOptions opts;
  opts.tolerance = 1e-6;
  testing::GradientChecker check(forward, backward, opts);
  EXPECT_TRUE(check(x, dx, "x")) << check.last();
  for (SlotId id = 0; id < s.params.num_slots(); ++id) {
    EXPECT_TRUE(check(s.params.value(id), s.params.grad(id), s.params.slot(id).name))
        << check.last();
  }
}

TYPED_TEST(HeadGroups, CoreRejectsHeadRangesOutsideItsHeads) {
  Setup<TypeParam> s(kAllHeads);
  const TypeParam& core = s.layer.core();
  const Matrix<double> xn = random_input(kHidden, kTokens, 4);
  Matrix<double> a(2 * kHeadSize, kTokens), dxn = Matrix<double>::Zero(kHidden, kTokens);
  s.ctx.training = false;
  for (const HeadRange bad : {HeadRange{2, 2}, HeadRange{-1, 2}, HeadRange{0, 0}}) {
    EXPECT_THROW(core.forward(s.params, xn, a, s.ctx, bad), InvalidArgument);
  }
  s.ctx.replay_buckets = false;
  core.forward(s.params, xn, a, s.ctx, HeadRange{1, 2});  // heads 1 and 2: records their buckets
  s.ctx.replay_buckets = true;
  EXPECT_THROW(core.backward(s.params, xn, a, dxn, a, s.ctx, HeadRange{2, 2}), InvalidArgument);
  Matrix<double> wrong_rows(kHeadSize, kTokens);
  EXPECT_THROW(core.forward(s.params, xn, wrong_rows, s.ctx, HeadRange{1, 2}), InvalidArgument);
}

TEST(HeadGroupsConfig, NegativeBudgetIsRejected) {
  Parameters<double> params;
  auto cfg = make_config<FullAttention<double>>(-1);
  try {
    Layer<FullAttention<double>> layer(cfg, params);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("head_group_scalars = -1"), std::string::npos) << e.what();
  }
}

}  // namespace reformer::test::head_groups
