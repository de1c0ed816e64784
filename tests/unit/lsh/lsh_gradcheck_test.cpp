// Finite-difference gradient checks (double) of the LSH attention core's hand-written backward:
// d/dxn, d/dW_qk and d/dW_v of L = sum(a .* G), buckets frozen (recorded once, then replayed for
// every evaluation, since hashing is piecewise constant and has no gradient).
#include "lsh_test_util.hpp"

#include <gtest/gtest.h>

#include <tuple>

namespace reformer::test {
namespace {

struct GradcheckCase {
  Index rounds, len, heads;
  bool causal;
  Index batch = 1, before = 1, after = 0;
  double dropout = 0.0;
  std::vector<Index> num_buckets = {4};
  std::vector<int> flags = {};  // batch x len key flags (1 = real); empty = no mask
};

void run_gradcheck(const GradcheckCase& gc) {
  const Index dh = 3, hidden = 4, chunk = 4;
  LshAttentionConfig cfg;
  cfg.num_heads = gc.heads;
  cfg.head_size = dh;
  cfg.chunk_length = chunk;
  cfg.num_hashes = gc.rounds;
  cfg.num_buckets = gc.num_buckets;
  cfg.causal = gc.causal;
  cfg.chunks_before = gc.before;
  cfg.chunks_after = gc.after;
  cfg.dropout = gc.dropout;
  LshSetup s(cfg, hidden, 5);
  const Index n = gc.batch * gc.len;
  Matrix<double> xn = random_matrix(hidden, n, Rng(21));
  const Matrix<double> g = random_matrix(s.out(), n, Rng(22));

  BucketTape tape;
  Context ctx;
  ctx.batch = gc.batch;
  ctx.training = gc.dropout > 0;
  ctx.step = 3;
  ctx.buckets = &tape;
  const AttentionMask mask =
      gc.flags.empty() ? AttentionMask() : AttentionMask::from_flags(gc.flags, gc.batch, gc.len);
  ctx.mask = &mask;
  Matrix<double> a(s.out(), n);
  s.core.forward(s.params, xn, a, ctx);  // hashes and records
  ASSERT_EQ(tape.empty(), gc.len <= chunk);
  ctx.replay_buckets = true;

  Matrix<double> dxn(hidden, n), a2(s.out(), n);
  s.params.zero_grad();
  dxn.setZero();  // the core adds its gradient
  s.core.backward(s.params, xn, g, dxn, a2, ctx);
  EXPECT_EQ((a2 - a).cwiseAbs().maxCoeff(), 0.0) << "backward recomputes the same output";
  const Vector<double> dwqk = s.params.grad_vector(s.core.query_key_slot());
  const Vector<double> dwv = s.params.grad_vector(s.core.value_slot());

  auto loss = [&] {
    s.core.forward(s.params, xn, a, ctx);
    return a.cwiseProduct(g).sum();
  };
  EXPECT_LT(gradcheck_error(dxn, finite_differences(xn, loss)), 1e-6);
  auto wqk = s.params.value_vector(s.core.query_key_slot());
  EXPECT_LT(gradcheck_error(dwqk, finite_differences(wqk, loss)), 1e-6);
  auto wv = s.params.value_vector(s.core.value_slot());
  EXPECT_LT(gradcheck_error(dwv, finite_differences(wv, loss)), 1e-6);
}

// R in {1, 2, 4} x causal / non-causal x T multiple (12) / not multiple (10) of C = 4 x H in {1,
// 3}.
class LshGradcheck : public ::testing::TestWithParam<std::tuple<Index, bool, Index, Index>> {};

TEST_P(LshGradcheck, BackwardMatchesFiniteDifferences) {
  const auto [rounds, causal, len, heads] = GetParam();
  run_gradcheck({rounds, len, heads, causal});
}

INSTANTIATE_TEST_SUITE_P(Grid, LshGradcheck,
                         ::testing::Combine(::testing::Values(Index{1}, Index{2}, Index{4}),
                                            ::testing::Bool(),
                                            ::testing::Values(Index{12}, Index{10}),
                                            ::testing::Values(Index{1}, Index{3})));

TEST(LshGradcheckExtra, TwoSequencesFactorisedBuckets) {
  GradcheckCase gc{2, 9, 2, true};
  gc.batch = 2;
  gc.num_buckets = {2, 4};
  run_gradcheck(gc);
}

TEST(LshGradcheckExtra, LookAheadAndTwoChunksBefore) {
  GradcheckCase gc{2, 14, 1, false};
  gc.before = 2;
  gc.after = 1;
  run_gradcheck(gc);
}

TEST(LshGradcheckExtra, WindowWiderThanTheRingOfChunks) {
  // 2 sorted chunks, window of 4 (2 before, 1 after): chunks appear twice in a window.
  GradcheckCase gc{1, 8, 2, false};
  gc.before = 2;
  gc.after = 1;
  run_gradcheck(gc);
  gc.causal = true;
  run_gradcheck(gc);
}

// Long enough for several blocks of sorted chunks per round (attend_backward): blocks whose
// windows stay inside their round (accumulated in parallel passes) and blocks whose windows
// reach the neighbouring round or wrap around (accumulated one after another).
TEST(LshGradcheckExtra, ManyBlocksPerRound) {
  run_gradcheck({2, 150, 1, true});  // 38 chunks per round
  GradcheckCase ahead{2, 131, 2, false};
  ahead.before = 2;
  ahead.after = 1;
  run_gradcheck(ahead);
  GradcheckCase padded{3, 97, 1, true};
  padded.batch = 2;
  padded.flags.assign(2 * 97, 1);
  for (Index t = 80; t < 97; ++t) padded.flags[static_cast<std::size_t>(97 + t)] = 0;
  padded.flags[5] = 0;
  run_gradcheck(padded);
}

TEST(LshGradcheckExtra, WithAttentionDropout) {
  GradcheckCase gc{2, 12, 2, true};
  gc.dropout = 0.3;
  run_gradcheck(gc);
}

// Key padding (docs/DESIGN.md 7.1, 7.3): valid lengths and a mask with holes, causal and not,
// hashed and dense (T <= C).
TEST(LshGradcheckExtra, KeyPadding) {
  for (bool causal : {false, true}) {
    GradcheckCase gc{2, 10, 2, causal};
    gc.batch = 2;
    gc.flags = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
    run_gradcheck(gc);
    gc.flags = {0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1};
    run_gradcheck(gc);
    GradcheckCase dense{1, 4, 2, causal};
    dense.batch = 2;
    dense.flags = {1, 1, 0, 0, 0, 1, 1, 0};
    run_gradcheck(dense);
  }
}

TEST(LshGradcheckExtra, ShortSequenceDenseFallback) {
  run_gradcheck({3, 4, 2, true});
  run_gradcheck({3, 3, 1, false});
  GradcheckCase gc{1, 1, 2, true};  // a single token
  gc.batch = 2;
  run_gradcheck(gc);
}

}  // namespace
}  // namespace reformer::test
