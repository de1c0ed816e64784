// LocalAttention against the banded dense oracle, FullAttention, and its own properties:
// causality, partial last chunk vs padding, thread independence, bad input.
#include "reformer/layers/local_attention.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/layers/full_attention.hpp"

#include "local_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer {
namespace {

using test::banded_reference;
using test::LocalCore;
using test::random_matrix;
using test::relative_error;
using test::throws_invalid;

constexpr Index kHidden = 8;

LocalAttentionConfig config(Index heads, bool causal, Index before, Index after,
                            Index item_chunks = 0) {
  LocalAttentionConfig cfg;
  cfg.num_heads = heads;
  cfg.head_size = 4;
  cfg.chunk_length = 4;
  cfg.chunks_before = before;
  cfg.chunks_after = after;
  cfg.causal = causal;
  cfg.item_chunks = item_chunks;
  return cfg;
}

Context batch_ctx(Index batch, bool training = false) {
  Context ctx;
  ctx.batch = batch;
  ctx.training = training;
  ctx.seed = 5;
  ctx.step = 3;
  ctx.layer = 1;
  return ctx;
}

Matrix<double> run_forward(const LocalCore& lc, const Matrix<double>& xn, const Context& ctx) {
  Matrix<double> a(lc.core.out_features(), xn.cols());
  lc.core.forward(lc.params, xn, a, ctx);
  return a;
}

struct OracleCase {
  bool causal;
  Index before, after, t, item_chunks;
  double dropout;
};

TEST(LocalAttention, EqualsBandedDenseAttention) {
  const std::vector<OracleCase> cases = {
      {true, 1, 0, 12, 0, 0.0},
      {true, 1, 0, 10, 0, 0.0},
      {false, 1, 1, 12, 0, 0.0},
      {false, 1, 1, 10, 0, 0.0},
      {false, 0, 1, 11, 0, 0.0},
      {true, 2, 0, 13, 0, 0.0},
      {false, 2, 1, 23, 2, 0.0},
      {true, 1, 1, 9, 1, 0.0},
      {true, 1, 0, 3, 0, 0.0},
      {false, 1, 1, 4, 0, 0.0},
      {true, 1, 0, 14, 3, 0.3},
      {false, 1, 1, 10, 1, 0.25},
      // windows holding a chunk twice (chunks_before or chunks_after >= the number of chunks)
      {true, 3, 0, 12, 0, 0.0},
      {true, 2, 0, 8, 0, 0.0},
      {false, 2, 2, 8, 1, 0.0},
      {false, 1, 3, 10, 0, 0.2}};
  for (const auto& c : cases) {
    for (Index heads : {1, 3}) {
      auto cfg = config(heads, c.causal, c.before, c.after, c.item_chunks);
      cfg.dropout = c.dropout;
      const LocalCore lc(cfg, kHidden, 7);
      const Context ctx = batch_ctx(2, c.dropout > 0);
      const Matrix<double> xn = random_matrix(kHidden, 2 * c.t, Rng(11));
      const Matrix<double> a = run_forward(lc, xn, ctx);
      const Matrix<double> ref = banded_reference(lc, xn, ctx);
      EXPECT_LT(relative_error(a, ref), 1e-13)
          << "causal " << c.causal << " before " << c.before << " after " << c.after << " T " << c.t
          << " H " << heads << " dropout " << c.dropout;
    }
  }
}

TEST(LocalAttention, DropoutChangesTheOutputOnlyInTraining) {
  auto cfg = config(2, true, 1, 0);
  cfg.dropout = 0.3;
  const LocalCore lc(cfg, kHidden);
  const Matrix<double> xn = random_matrix(kHidden, 2 * 12, Rng(3));
  const Matrix<double> eval = run_forward(lc, xn, batch_ctx(2, false));
  const Matrix<double> train = run_forward(lc, xn, batch_ctx(2, true));
  EXPECT_GT(relative_error(train, eval), 1e-3);
  auto no_dropout = cfg;
  no_dropout.dropout = 0.0;
  const LocalCore plain(no_dropout, kHidden);
  EXPECT_EQ(run_forward(plain, xn, batch_ctx(2, true)), eval);
}

// With one chunk (T <= C), or a window covering the sequence once (chunks_before = n - 1),
// local attention is dense attention; FullAttention (same parameter names, same dropout keys) must
// agree, dropout too.
TEST(LocalAttention, EqualsFullAttentionWhenTheWindowCoversTheSequence) {
  for (const auto& [t, before, chunk] :
       std::vector<std::tuple<Index, Index, Index>>{{4, 1, 4}, {3, 1, 8}, {12, 2, 4}, {11, 2, 4}}) {
    for (double dropout : {0.0, 0.2}) {
      auto cfg = config(2, true, before, 0);
      cfg.chunk_length = chunk;
      cfg.dropout = dropout;
      const LocalCore lc(cfg, kHidden, 9);
      Parameters<double> fp;
      FullAttentionConfig fcfg;
      fcfg.num_heads = 2;
      fcfg.head_size = 4;
      fcfg.causal = true;
      fcfg.dropout = dropout;
      const FullAttention<double> full(fcfg, kHidden, fp, "attention.");
      ASSERT_EQ(fp.size(), lc.params.size());
      fp.values() = lc.params.values();
      const Context ctx = batch_ctx(2, true);
      const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(4));
      Matrix<double> af(full.out_features(), xn.cols());
      full.forward(fp, xn, af, ctx);
      EXPECT_LT(relative_error(run_forward(lc, xn, ctx), af), 1e-13)
          << "T " << t << " before " << before << " C " << chunk << " dropout " << dropout;
    }
  }
}

TEST(LocalAttention, CausalOutputsIgnoreTheFuture) {
  for (Index before : {1, 2}) {
    const LocalCore lc(config(3, true, before, 1), kHidden);
    const Index t = 14;
    const Matrix<double> xn = random_matrix(kHidden, t, Rng(21));
    const Matrix<double> a = run_forward(lc, xn, batch_ctx(1));
    for (Index cut : {0, 3, 4, 7, 12}) {
      Matrix<double> changed = xn;
      changed.rightCols(t - cut - 1) = random_matrix(kHidden, t - cut - 1, Rng(100 + cut));
      const Matrix<double> b = run_forward(lc, changed, batch_ctx(1));
      EXPECT_EQ(b.leftCols(cut + 1), a.leftCols(cut + 1)) << "cut " << cut;
      EXPECT_NE(b.rightCols(t - cut - 1), a.rightCols(t - cut - 1)) << "cut " << cut;
    }
  }
}

TEST(LocalAttention, NonCausalLooksOneChunkAheadAndWrapsAround) {
  // Non-causal with chunks_after = 1, four chunks of 4: position 0 (chunk 0) sees chunk 1 and,
  // circularly, chunk 3, but not chunk 2; position 12 (chunk 3) looks ahead at chunk 0.
  const LocalCore lc(config(1, false, 1, 1), kHidden);
  const Matrix<double> xn = random_matrix(kHidden, 16, Rng(2));
  const Matrix<double> a = run_forward(lc, xn, batch_ctx(1));
  Matrix<double> far = xn, near = xn, wrapped = xn, first = xn;
  far.col(9) = random_matrix(kHidden, 1, Rng(3));
  near.col(6) = random_matrix(kHidden, 1, Rng(3));
  wrapped.col(13) = random_matrix(kHidden, 1, Rng(3));
  first.col(1) = random_matrix(kHidden, 1, Rng(3));
  EXPECT_EQ(run_forward(lc, far, batch_ctx(1)).col(0), a.col(0));
  EXPECT_NE(run_forward(lc, near, batch_ctx(1)).col(0), a.col(0));
  EXPECT_NE(run_forward(lc, wrapped, batch_ctx(1)).col(0), a.col(0));
  EXPECT_NE(run_forward(lc, first, batch_ctx(1)).col(12), a.col(12));
  EXPECT_EQ(run_forward(lc, first, batch_ctx(1)).col(8), a.col(8));  // chunk 2: chunks 1 .. 3
}

// A partial last chunk behaves as if the sequence were padded to a multiple of C with any
// content: the real positions' outputs and gradients are those of the padded sequence (causal).
TEST(LocalAttention, PartialLastChunkEqualsPaddedSequence) {
  const LocalCore lc(config(2, true, 1, 0), kHidden);
  const Index t = 10, padded = 12;
  const Matrix<double> xn = random_matrix(kHidden, t, Rng(8));
  for (std::uint64_t junk_seed : {1u, 2u}) {
    Matrix<double> xp(kHidden, padded);
    xp.leftCols(t) = xn;
    xp.rightCols(padded - t) = random_matrix(kHidden, padded - t, Rng(junk_seed), 10.0);
    const Matrix<double> a = run_forward(lc, xn, batch_ctx(1));
    const Matrix<double> ap = run_forward(lc, xp, batch_ctx(1));
    EXPECT_LT(relative_error(ap.leftCols(t), a), 1e-14);
    // Gradients: an upstream gradient on the real positions only.
    const Matrix<double> da = random_matrix(lc.core.out_features(), t, Rng(9));
    Matrix<double> dap = Matrix<double>::Zero(lc.core.out_features(), padded);
    dap.leftCols(t) = da;
    Parameters<double> p1 = lc.params, p2 = lc.params;
    Matrix<double> dx(kHidden, t), dxp(kHidden, padded), r(da.rows(), t), rp(da.rows(), padded);
    dx.setZero();  // the core adds its gradient
    lc.core.backward(p1, xn, da, dx, r, batch_ctx(1));
    dxp.setZero();  // the core adds its gradient
    lc.core.backward(p2, xp, dap, dxp, rp, batch_ctx(1));
    EXPECT_LT(relative_error(dxp.leftCols(t), dx), 1e-13);
    EXPECT_LT(relative_error(p2.grads(), p1.grads()), 1e-13);
  }
}

TEST(LocalAttention, BackwardRecomputesTheForwardOutput) {
  auto cfg = config(3, false, 1, 1, 2);
  cfg.dropout = 0.2;
  LocalCore lc(cfg, kHidden);
  const Context ctx = batch_ctx(2, true);
  const Matrix<double> xn = random_matrix(kHidden, 2 * 18, Rng(1));
  const Matrix<double> a = run_forward(lc, xn, ctx);
  Matrix<double> dxn(kHidden, xn.cols()), ra(a.rows(), a.cols());
  dxn.setZero();  // the core adds its gradient
  lc.core.backward(lc.params, xn, random_matrix(a.rows(), a.cols(), Rng(2)), dxn, ra, ctx);
  EXPECT_EQ(ra, a);
}

TEST(LocalAttention, ResultsAreBitwiseIndependentOfThreadCount) {
  for (Index item_chunks : {0, 1, 2}) {
    auto cfg = config(3, true, 1, 1, item_chunks);
    cfg.dropout = 0.1;
    const LocalCore lc(cfg, kHidden);
    const Context ctx = batch_ctx(2, true);
    const Matrix<double> xn = random_matrix(kHidden, 2 * 30, Rng(1));
    const Matrix<double> da = random_matrix(lc.core.out_features(), xn.cols(), Rng(2));
    Matrix<double> a[2], dx[2], ra[2];
    Vector<double> grads[2];
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      Parameters<double> p = lc.params;
      a[threads - 1] = run_forward(lc, xn, ctx);
      dx[threads - 1].resize(kHidden, xn.cols());
      ra[threads - 1].resize(da.rows(), da.cols());
      dx[threads - 1].setZero();  // the core adds its gradient
      lc.core.backward(p, xn, da, dx[threads - 1], ra[threads - 1], ctx);
      grads[threads - 1] = p.grads();
    }
    EXPECT_EQ(a[0], a[1]);
    EXPECT_EQ(dx[0], dx[1]);
    EXPECT_EQ(ra[0], ra[1]);
    EXPECT_EQ(grads[0], grads[1]);
  }
  set_num_threads(2);
}

TEST(LocalAttention, ItemSplitDoesNotChangeTheForward) {
  const Matrix<double> xn = random_matrix(kHidden, 2 * 22, Rng(1));
  const LocalCore one(config(2, false, 1, 1, 1), kHidden);
  const LocalCore all(config(2, false, 1, 1, 0), kHidden);
  EXPECT_EQ(run_forward(one, xn, batch_ctx(2)), run_forward(all, xn, batch_ctx(2)));
}

TEST(LocalAttention, FloatAgreesWithDouble) {
  const auto cfg = config(2, true, 1, 0);
  const LocalCore lc(cfg, kHidden);
  Parameters<float> pf;
  const LocalAttention<float> core(cfg, kHidden, pf, "attention.");
  pf.values() = lc.params.values().cast<float>();
  const Matrix<double> xn = random_matrix(kHidden, 2 * 10, Rng(1));
  Matrix<float> af(core.out_features(), xn.cols());
  core.forward(pf, xn.cast<float>(), af, batch_ctx(2));
  EXPECT_LT(relative_error(af.cast<double>(), run_forward(lc, xn, batch_ctx(2))), 1e-5);
}

TEST(LocalAttention, BadInputThrowsNamingTheArgument) {
  Parameters<double> p;
  auto make = [&](LocalAttentionConfig cfg, Index hidden = kHidden) {
    return [&p, cfg, hidden] { LocalAttention<double>(cfg, hidden, p, "x."); };
  };
  auto cfg = config(1, true, 1, 0);
  cfg.chunk_length = 0;
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "chunk_length = 0"}));
  cfg = config(1, true, -1, 0);
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "chunks_before = -1"}));
  cfg = config(1, true, 1, -2);
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "chunks_after = -2"}));
  cfg = config(1, true, 1, 0);
  cfg.head_size = 0;
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "head_size = 0"}));
  cfg = config(0, true, 1, 0);
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "num_heads = 0"}));
  cfg = config(1, true, 1, 0);
  cfg.dropout = 1.0;
  EXPECT_TRUE(throws_invalid(make(cfg), {"LocalAttention", "dropout = 1"}));

  LocalCore lc(config(2, true, 1, 0), kHidden);
  const Matrix<double> xn = random_matrix(kHidden, 12, Rng(1));
  const Matrix<double> wrong_rows = random_matrix(kHidden + 1, 12, Rng(1));
  Matrix<double> a(lc.core.out_features(), 12), dxn(kHidden, 12);
  EXPECT_TRUE(throws_invalid([&] { lc.core.forward(lc.params, wrong_rows, a, batch_ctx(1)); },
                             {"LocalAttention::forward", "xn.rows() = 9", "hidden = 8"}));
  EXPECT_TRUE(throws_invalid([&] { lc.core.forward(lc.params, xn, a, batch_ctx(5)); },
                             {"LocalAttention::forward", "x.cols() = 12", "ctx.batch = 5"}));
  // Head size mismatch: an output with rows != H * Dh.
  Matrix<double> a_bad(lc.core.out_features() - 1, 12);
  EXPECT_TRUE(throws_invalid([&] { lc.core.forward(lc.params, xn, a_bad, batch_ctx(1)); },
                             {"LocalAttention::forward", "a has shape 7 x 12", "expected 8 x 12"}));
  const Matrix<double> da_bad = random_matrix(4, 12, Rng(1));
  EXPECT_TRUE(throws_invalid([&] { lc.core.backward(lc.params, xn, da_bad, dxn, a, batch_ctx(1)); },
                             {"LocalAttention::backward", "da has shape 4 x 12"}));
  Matrix<double> dxn_bad(kHidden, 11);
  EXPECT_TRUE(throws_invalid([&] { lc.core.backward(lc.params, xn, a, dxn_bad, a, batch_ctx(1)); },
                             {"LocalAttention::backward", "dxn has shape 8 x 11"}));
}

}  // namespace
}  // namespace reformer
