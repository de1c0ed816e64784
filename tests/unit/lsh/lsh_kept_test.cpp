// The LSH attention sublayer's kept activations (forward_keeping / backward_from_kept, the
// optional part of the sublayer contract): the keeping forward is bitwise forward(); at the same
// input the backward from what it kept gives bitwise the input and parameter gradients of the
// backward that recomputes, and subtracts the kept f(x) from y; over padding, key masks,
// dropout, several head groups, look-ahead and windows wider than the ring of chunks. Its
// gradients pass a finite-difference check; 1 and 2 threads agree bitwise; misuse throws.
#include "lsh_test_util.hpp"
#include "support/compare.hpp"

#include "reformer/core/attention_mask.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/sublayer.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <ostream>
#include <vector>

namespace reformer::test {
namespace {

using LshSublayer = AttentionSublayer<double, LshAttention<double>>;
static_assert(is_keeping_sublayer_v<LshSublayer, double>);
static_assert(LshSublayer::kCoreKeeps);
static_assert(!AttentionSublayer<double, LocalAttention<double>>::kCoreKeeps);

struct KeptCase {
  Index batch, len, heads, rounds;
  bool causal;
  Index before = 1, after = 0;
  double probs_dropout = 0.0, output_dropout = 0.0;
  bool one_head_per_group = false;
  std::vector<int> flags = {};  // batch x len key flags (1 = real); empty = no mask
};

std::ostream& operator<<(std::ostream& os, const KeptCase& c) {
  return os << "B " << c.batch << " T " << c.len << " H " << c.heads << " R " << c.rounds
            << (c.causal ? " causal" : "") << " window -" << c.before << "/+" << c.after
            << " dropout " << c.probs_dropout << "/" << c.output_dropout
            << (c.one_head_per_group ? " one head per group" : "")
            << (c.flags.empty() ? "" : " masked");
}

constexpr Index kHidden = 6, kHeadSize = 4, kChunk = 4;

LshSublayer::Config sublayer_config(const KeptCase& c) {
  LshSublayer::Config cfg;
  cfg.core = lsh_config(c.heads, kHeadSize, kChunk, c.rounds, c.causal, {4});
  cfg.core.chunks_before = c.before;
  cfg.core.chunks_after = c.after;
  cfg.core.dropout = c.probs_dropout;
  cfg.hidden_size = kHidden;
  cfg.output_dropout = c.output_dropout;
  if (c.one_head_per_group) cfg.head_group_scalars = kHeadSize * c.batch * c.len;
  return cfg;
}

// A layer with its parameters, inputs and a context whose buckets the first forward records.
struct KeptSetup {
  KeptCase c;
  Parameters<double> params;
  LshSublayer layer;
  Index n;
  Matrix<double> x;
  AttentionMask mask;
  BucketTape tape;
  Context ctx;

  explicit KeptSetup(const KeptCase& kc)
      : c(kc), layer(sublayer_config(kc), params), n(kc.batch * kc.len) {
    layer.init(params, Rng(131), 0.5);
    x = random_matrix(kHidden, n, Rng(132));
    if (!c.flags.empty()) mask = AttentionMask::from_flags(c.flags, c.batch, c.len);
    ctx.batch = c.batch;
    ctx.mask = c.flags.empty() ? nullptr : &mask;
    ctx.training = true;
    ctx.step = 3;
    ctx.buckets = &tape;
  }

  // forward(), recording the buckets; every later call replays them.
  Matrix<double> record() {
    Matrix<double> y(kHidden, n);
    ctx.replay_buckets = false;
    layer.forward(params, x, y, ctx);
    ctx.replay_buckets = true;
    return y;
  }
};

// Short cases (finite differences are run on these).
std::vector<KeptCase> short_cases() {
  std::vector<KeptCase> cases;
  cases.push_back({1, 12, 2, 2, true});
  // Padding (10 -> 12), look-ahead, dropout on both, one head per group.
  KeptCase padded{2, 10, 3, 3, false, 1, 1, 0.1, 0.2, true};
  cases.push_back(padded);
  // Five heads, one per group: the forward adds their outputs to y in three products (2 + 2 + 1).
  cases.push_back({2, 10, 5, 2, true, 1, 0, 0.1, 0.2, true});
  // Key padding: the pad bucket and masked keys.
  KeptCase masked{2, 9, 2, 2, true, 1, 0, 0.1, 0.2};
  masked.flags = {1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  cases.push_back(masked);
  // Two sorted chunks and a window of four: windows that are not slices of their block.
  cases.push_back({1, 8, 2, 1, false, 2, 1});
  return cases;
}

// The short cases and some with many blocks per round: the recomputing backward runs the last
// round's backward with its forward, block by block, so one round (R = 1) is all of it, and a
// look-ahead window adds blocks whose ranges leave the round.
std::vector<KeptCase> all_cases() {
  std::vector<KeptCase> cases = short_cases();
  cases.push_back({1, 200, 2, 2, true, 1, 0, 0.1, 0.0});
  cases.push_back({2, 150, 2, 1, false, 1, 1, 0.1, 0.0});
  cases.push_back({1, 180, 1, 3, false, 2, 1});
  return cases;
}

class LshKept : public ::testing::TestWithParam<KeptCase> {};
class LshKeptGradcheck : public ::testing::TestWithParam<KeptCase> {};

TEST_P(LshKept, BackwardFromKeptIsTheRecomputingBackwardBitwise) {
  KeptSetup s(GetParam());
  const Matrix<double> y_forward = s.record();
  const Matrix<double> dy = random_matrix(kHidden, s.n, Rng(133));
  const Matrix<double> acc0 = random_matrix(kHidden, s.n, Rng(134));
  const Matrix<double> y0 = random_matrix(kHidden, s.n, Rng(135));

  // The recomputing backward, in place on non-zero dx and y.
  Matrix<double> dx_r = acc0, y_r = y0;
  s.params.zero_grad();
  s.layer.backward(s.params, s.x, dy, dx_r, y_r, s.ctx);
  const Vector<double> grads_r = s.params.grads();

  KeptActivations<double> kept;
  Matrix<double> fx(kHidden, s.n);
  s.layer.forward_keeping(s.params, s.x, fx, s.ctx, kept);
  EXPECT_EQ((fx - y_forward).cwiseAbs().maxCoeff(), 0.0) << "the keeping forward is forward()";
  EXPECT_EQ(kept.bytes_held(), s.layer.kept_bytes(s.n, s.ctx));
  EXPECT_GT(kept.bytes_held(), 0u);

  Matrix<double> dx_k = acc0, y_k = y0;
  s.params.zero_grad();
  s.layer.backward_from_kept(s.params, s.x, dy, dx_k, y_k, s.ctx, kept);
  EXPECT_EQ((dx_k - dx_r).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ((s.params.grads() - grads_r).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(s.params.grads().norm(), 0.0);
  EXPECT_EQ((y_k - (y0 - fx)).cwiseAbs().maxCoeff(), 0.0) << "y -= the kept f(x)";
  EXPECT_LT(relative_error(y_k, y_r), 1e-12);

  // The kept matrices stay as they were: a second backward gives the same again.
  Matrix<double> dx_2 = acc0, y_2 = y0;
  s.params.zero_grad();
  s.layer.backward_from_kept(s.params, s.x, dy, dx_2, y_2, s.ctx, kept);
  EXPECT_EQ((dx_2 - dx_r).cwiseAbs().maxCoeff(), 0.0);
}

// L = sum(f(x) .* G), buckets and dropout masks fixed: the kept path's dx and parameter
// gradients against central differences.
TEST_P(LshKeptGradcheck, GradientsMatchFiniteDifferences) {
  KeptSetup s(GetParam());
  s.record();
  const Matrix<double> g = random_matrix(kHidden, s.n, Rng(136));
  KeptActivations<double> kept;
  Matrix<double> fx(kHidden, s.n), dx = Matrix<double>::Zero(kHidden, s.n);
  s.params.zero_grad();
  s.layer.forward_keeping(s.params, s.x, fx, s.ctx, kept);
  s.layer.backward_from_kept(s.params, s.x, g, dx, fx, s.ctx, kept);
  const Vector<double> grads = s.params.grads();
  Matrix<double> y(kHidden, s.n);
  auto loss = [&] {
    s.layer.forward(s.params, s.x, y, s.ctx);
    return y.cwiseProduct(g).sum();
  };
  EXPECT_LT(gradcheck_error(dx, finite_differences(s.x, loss)), 1e-6);
  Vector<double>& values = s.params.values();
  EXPECT_LT(gradcheck_error(grads, finite_differences(values, loss)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, LshKept, ::testing::ValuesIn(all_cases()));
INSTANTIATE_TEST_SUITE_P(Cases, LshKeptGradcheck, ::testing::ValuesIn(short_cases()));

TEST(LshKeptPath, BitwiseIdenticalForOneAndTwoThreads) {
  KeptCase c{2, 70, 3, 3, true, 1, 0, 0.1, 0.1};
  auto run = [&](int threads, Matrix<double>& fx, Matrix<double>& dx, Vector<double>& grads) {
    set_num_threads(threads);
    KeptSetup s(c);
    s.record();
    const Matrix<double> dy = random_matrix(kHidden, s.n, Rng(137));
    KeptActivations<double> kept;
    fx.resize(kHidden, s.n);
    dx = Matrix<double>::Zero(kHidden, s.n);
    s.layer.forward_keeping(s.params, s.x, fx, s.ctx, kept);
    Matrix<double> y = fx;
    s.params.zero_grad();
    s.layer.backward_from_kept(s.params, s.x, dy, dx, y, s.ctx, kept);
    grads = s.params.grads();
  };
  const int saved = num_threads();
  Matrix<double> f1, f2, d1, d2;
  Vector<double> g1, g2;
  run(1, f1, d1, g1);
  run(2, f2, d2, g2);
  set_num_threads(saved);
  EXPECT_EQ(f1, f2);
  EXPECT_EQ(d1, d2);
  EXPECT_EQ(g1, g2);
}

TEST(LshKeptPath, ReusesItsMemoryAndCopiesHoldTheirOwn) {
  KeptSetup s(KeptCase{1, 64, 2, 2, true});
  s.record();
  KeptActivations<double> kept;
  Matrix<double> fx(kHidden, s.n);
  s.layer.forward_keeping(s.params, s.x, fx, s.ctx, kept);
  const std::size_t bytes = kept.bytes_held();
  const KeptActivations<double> copy = kept;
  s.layer.forward_keeping(s.params, s.x, fx, s.ctx, kept);
  EXPECT_EQ(kept.bytes_held(), bytes);
  EXPECT_EQ(copy.bytes_held(), bytes);
  // The copy drives the same backward.
  KeptActivations<double> from_copy = copy;
  const Matrix<double> dy = random_matrix(kHidden, s.n, Rng(138));
  Matrix<double> dx1 = Matrix<double>::Zero(kHidden, s.n), dx2 = dx1, y1 = fx, y2 = fx;
  s.layer.backward_from_kept(s.params, s.x, dy, dx1, y1, s.ctx, kept);
  s.layer.backward_from_kept(s.params, s.x, dy, dx2, y2, s.ctx, from_copy);
  EXPECT_EQ(dx1, dx2);
}

TEST(LshKeptPath, MisuseThrows) {
  // A sequence of at most one chunk is not hashed: nothing is kept.
  KeptSetup short_seq(KeptCase{1, kChunk, 2, 2, true});
  short_seq.record();
  EXPECT_EQ(short_seq.layer.kept_bytes(short_seq.n, short_seq.ctx), 0u);
  KeptActivations<double> kept;
  Matrix<double> y(kHidden, short_seq.n);
  EXPECT_THROW(
      short_seq.layer.forward_keeping(short_seq.params, short_seq.x, y, short_seq.ctx, kept),
      InvalidArgument);

  // Nothing kept, or kept for another length.
  KeptSetup s(KeptCase{1, 12, 2, 2, true});
  s.record();
  Matrix<double> dx = Matrix<double>::Zero(kHidden, s.n), fx(kHidden, s.n);
  const Matrix<double> dy = random_matrix(kHidden, s.n, Rng(139));
  KeptActivations<double> empty;
  EXPECT_THROW(s.layer.backward_from_kept(s.params, s.x, dy, dx, fx, s.ctx, empty),
               InvalidArgument);
  KeptSetup other(KeptCase{1, 16, 2, 2, true});
  other.record();
  KeptActivations<double> wrong;
  Matrix<double> fo(kHidden, other.n);
  other.layer.forward_keeping(other.params, other.x, fo, other.ctx, wrong);
  EXPECT_THROW(s.layer.backward_from_kept(s.params, s.x, dy, dx, fx, s.ctx, wrong),
               InvalidArgument);

  // A core without keeping members: 0 bytes, and the keeping forward throws.
  using LocalSublayer = AttentionSublayer<double, LocalAttention<double>>;
  LocalSublayer::Config lc;
  lc.core.num_heads = 2;
  lc.core.head_size = kHeadSize;
  lc.core.chunk_length = kChunk;
  lc.hidden_size = kHidden;
  Parameters<double> lp;
  const LocalSublayer local(lc, lp);
  EXPECT_EQ(local.kept_bytes(s.n, s.ctx), 0u);
  EXPECT_THROW(local.forward_keeping(lp, s.x, fx, s.ctx, kept), InvalidArgument);
}

}  // namespace
}  // namespace reformer::test
