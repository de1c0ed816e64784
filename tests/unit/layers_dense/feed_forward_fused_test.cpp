// FeedForward's fused column-block kernel against the unfused chunked kernel (Config::fused =
// false): forward, input and parameter gradients and the in-place backward's y agree to 1e-12
// relative in double; results are bitwise identical for 1 and 2 threads; the buffers come back
// to the workspace.
#include "dense_test_util.hpp"
#include "support/compare.hpp"

#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/feed_forward.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <tuple>

namespace reformer {
namespace {

using test::FeedForwardSetup;
using test::random_matrix;

// The block width of short inputs (column_block(N) for N <= 8 x 256).
constexpr Index kBlock = tuning::kFeedForwardMinColumns;

// A fused and an unfused layer over the same parameter values.
struct FusedPair {
  Parameters<double> pf, pu;
  FeedForward<double> fused, unfused;

  static FeedForwardConfig config(const FeedForwardSetup& s, bool fused) {
    FeedForwardConfig cfg = test::feed_forward_config(s);
    cfg.fused = fused;
    return cfg;
  }

  FusedPair(const FeedForwardSetup& s, std::uint64_t seed)
      : fused(config(s, true), pf), unfused(config(s, false), pu) {
    test::randomise(pf, seed);
    pu.values() = pf.values();
  }
};

struct Shape {
  Index batch, length;
};

std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << "batch " << s.batch << " x T " << s.length;
}

// The shapes: N below one block, N not a multiple of the block, an exact multiple, more blocks
// than gradient groups (uneven groups) with a block wider than the narrowest, and the widest
// blocks with a partial last one.
const Shape kShapes[] = {{1, 100}, {3, 150}, {1, 2 * kBlock}, {3, 800}, {1, 4100}};

class FeedForwardFused
    : public ::testing::TestWithParam<std::tuple<Activation, double /*dropout*/, Index /*chunk*/>> {
};

TEST_P(FeedForwardFused, MatchesUnfused) {
  const auto [act, dropout, chunk] = GetParam();
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(::testing::Message() << shape);
    FeedForwardSetup s;
    s.hidden = 8;
    s.ff = 20;
    s.activation = act;
    s.dropout = dropout;
    s.chunk = chunk;
    FusedPair p(s, 90);
    const Context ctx = test::training_context(shape.batch);
    const Index n = shape.batch * shape.length;
    const Matrix<double> x = random_matrix(s.hidden, n, 91);
    const Matrix<double> dy = random_matrix(s.hidden, n, 92);

    const Matrix<double> yu = test::run_forward(p.unfused, p.pu, x, ctx);
    EXPECT_LT(test::relative_error(test::run_forward(p.fused, p.pf, x, ctx), yu), 1e-12);

    const auto ru = test::run_backward(p.unfused, p.pu, x, dy, ctx);
    const auto rf = test::run_backward(p.fused, p.pf, x, dy, ctx);
    EXPECT_LT(test::relative_error(rf.fx, yu), 1e-12);
    EXPECT_LT(test::relative_error(rf.dx, ru.dx), 1e-12);
    for (SlotId id = 0; id < p.pf.num_slots(); ++id) {
      const auto& slot = p.pf.slot(id);
      EXPECT_LT(test::relative_error(rf.grads.segment(slot.offset, slot.size),
                                     ru.grads.segment(slot.offset, slot.size)),
                1e-12)
          << slot.name;
    }

    // The contract's in-place step on non-zero dx and y: dx += J^T dy, y -= f(x), grads +=.
    const Matrix<double> acc0 = random_matrix(s.hidden, n, 93);
    const Matrix<double> y0 = random_matrix(s.hidden, n, 94);
    Matrix<double> acc_f = acc0, y_f = y0, acc_u = acc0, y_u = y0;
    p.fused.backward(p.pf, x, dy, acc_f, y_f, ctx);
    p.unfused.backward(p.pu, x, dy, acc_u, y_u, ctx);
    EXPECT_LT(test::relative_error(acc_f, acc_u), 1e-12);
    EXPECT_LT(test::relative_error(y_f, y_u), 1e-12);
    EXPECT_LT(test::relative_error(p.pf.grads(), p.pu.grads()), 1e-12);
    EXPECT_LT(test::relative_error(p.pf.grads(), 2.0 * rf.grads), 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(ActivationsDropoutChunks, FeedForwardFused,
                         ::testing::Combine(::testing::Values(Activation::kRelu, Activation::kGelu,
                                                              Activation::kGeluNew,
                                                              Activation::kSilu),
                                            ::testing::Values(0.0, 0.2),
                                            ::testing::Values(Index{0}, Index{5})));

// The block width is a function of N alone: about tuning::kFeedForwardBlocks blocks, a multiple
// of 64 within [kFeedForwardMinColumns, kFeedForwardMaxColumns].
TEST(FeedForwardFusedKernel, ColumnBlockDependsOnTheLengthOnly) {
  EXPECT_EQ(FeedForward<float>::column_block(1), tuning::kFeedForwardMinColumns);
  EXPECT_EQ(FeedForward<float>::column_block(2048), 256);
  EXPECT_EQ(FeedForward<float>::column_block(2049), 320);
  EXPECT_EQ(FeedForward<float>::column_block(4096), 512);
  EXPECT_EQ(FeedForward<float>::column_block(Index{1} << 20), tuning::kFeedForwardMaxColumns);
  for (Index n = 1; n < 20000; n += 97) {
    const Index w = FeedForward<double>::column_block(n);
    EXPECT_EQ(w % 64, 0) << n;
    EXPECT_GE(w, tuning::kFeedForwardMinColumns) << n;
    EXPECT_LE(w, tuning::kFeedForwardMaxColumns) << n;
    if (w > tuning::kFeedForwardMinColumns && w < tuning::kFeedForwardMaxColumns) {
      // the narrowest multiple of 64 that gives at most kFeedForwardBlocks blocks
      EXPECT_LE(num_blocks(n, w), tuning::kFeedForwardBlocks) << n;
      EXPECT_GT(num_blocks(n, w - 64), tuning::kFeedForwardBlocks) << n;
    }
  }
}

// Dropout off in inference even when configured: fused and unfused agree there too.
TEST(FeedForwardFusedKernel, InferenceIgnoresDropout) {
  FeedForwardSetup s;
  s.hidden = 8;
  s.ff = 20;
  s.dropout = 0.3;
  FusedPair p(s, 95);
  Context ctx;
  ctx.batch = 3;
  const Matrix<double> x = random_matrix(s.hidden, 3 * 150, 96);
  EXPECT_LT(test::relative_error(test::run_forward(p.fused, p.pf, x, ctx),
                                 test::run_forward(p.unfused, p.pu, x, ctx)),
            1e-12);
}

TEST(FeedForwardFusedKernel, GradientsMatchFiniteDifferencesAcrossBlocks) {
  FeedForwardSetup s;
  s.hidden = 4;
  s.ff = 6;
  s.dropout = 0.2;
  // Two blocks, the second partial: the gradients cross a block and a group boundary.
  test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 97, kBlock + 3, 98);
  test::expect_sublayer_gradients(c.layer, c.params, c.x, test::training_context(1), 1e-6, 40);
}

TEST(FeedForwardFusedKernel, BitwiseIdenticalForOneAndTwoThreads) {
  // One block (products split inside it), a few blocks, wider blocks (N = 2600: 384 columns),
  // and more blocks than gradient groups (N = 4200: 9 blocks of 512).
  for (const Index length : {Index{100}, Index{700}, Index{1300}, Index{2100}}) {
    FeedForwardSetup s;
    s.hidden = 64;  // enough work that every loop runs in parallel
    s.ff = 200;
    s.dropout = 0.1;
    Parameters<double> params;
    FeedForward<double> ff(test::feed_forward_config(s), params);
    ff.init(params, Rng(99), 0.2);
    const Context ctx = test::training_context(2);
    const Matrix<double> x = random_matrix(s.hidden, 2 * length, 100);
    const Matrix<double> dy = random_matrix(s.hidden, 2 * length, 101);
    const auto one = test::run_with_threads(1, ff, params, x, dy, ctx);
    const auto two = test::run_with_threads(2, ff, params, x, dy, ctx);
    EXPECT_EQ((one.y - two.y).cwiseAbs().maxCoeff(), 0.0) << "T " << length;
    EXPECT_EQ((one.back.fx - two.back.fx).cwiseAbs().maxCoeff(), 0.0) << "T " << length;
    EXPECT_EQ((one.back.dx - two.back.dx).cwiseAbs().maxCoeff(), 0.0) << "T " << length;
    EXPECT_EQ((one.back.grads - two.back.grads).cwiseAbs().maxCoeff(), 0.0) << "T " << length;
  }
}

// With a workspace every block buffer and gradient partial is returned after the call, and a
// second call with the same shapes maps no new memory; the results do not change. One thread,
// so that the number of buffers held at once is the same in both calls.
TEST(FeedForwardFusedKernel, DrawsItsBuffersFromTheWorkspace) {
  const int threads = num_threads();
  set_num_threads(1);
  FeedForwardSetup s;
  s.hidden = 64;
  s.ff = 200;
  s.dropout = 0.1;
  Parameters<double> params;
  FeedForward<double> ff(test::feed_forward_config(s), params);
  ff.init(params, Rng(102), 0.2);
  Context ctx = test::training_context(2);
  const Index n = 2 * 1300;
  const Matrix<double> x = random_matrix(s.hidden, n, 103);
  const Matrix<double> dy = random_matrix(s.hidden, n, 104);
  const Matrix<double> y_heap = test::run_forward(ff, params, x, ctx);
  const auto r_heap = test::run_backward(ff, params, x, dy, ctx);

  Workspace ws;
  ctx.workspace = &ws;
  for (int pass = 0; pass < 2; ++pass) {
    const std::size_t mappings = ws.stats().mappings;
    const Matrix<double> y = test::run_forward(ff, params, x, ctx);
    const auto r = test::run_backward(ff, params, x, dy, ctx);
    EXPECT_EQ(ws.stats().in_use_bytes, 0u);
    if (pass == 0) {
      EXPECT_GT(ws.stats().mappings, 0u);  // F x block buffers and the gradient partials
    } else {
      EXPECT_EQ(ws.stats().mappings, mappings) << "steady state maps no new memory";
    }
    EXPECT_EQ((y - y_heap).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((r.dx - r_heap.dx).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((r.grads - r_heap.grads).cwiseAbs().maxCoeff(), 0.0);
  }
  set_num_threads(threads);
}

}  // namespace
}  // namespace reformer
