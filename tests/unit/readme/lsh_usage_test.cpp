// The README's "LSH attention" example, compiled and checked here so the README stays true.
// The code between the readme markers is copied verbatim into README.md.
#include <gtest/gtest.h>

#include <algorithm>

// The aligned comments are part of the README:
// clang-format off
// [readme-lsh-begin]
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/lsh_attention.hpp"

using namespace reformer;
using LshLayer = AttentionSublayer<float, LshAttention<float>>;

void lsh_example(Matrix<float>& y, Matrix<float>& dx, BucketTape& buckets) {
  Parameters<float> params;
  LshLayer::Config cfg;
  cfg.hidden_size = 256;        // D
  cfg.core.num_heads = 4;       // H
  cfg.core.head_size = 64;      // Dh
  cfg.core.chunk_length = 64;   // C: each chunk of sorted tokens sees itself and the previous one
  cfg.core.num_hashes = 2;      // R hash rounds; buckets: HF's automatic rule (here 64)
  LshLayer attention(cfg, params, "attention.");  // registers HF-named parameters
  attention.init(params, Rng(/*seed=*/1), /*std=*/0.02);

  const Index T = 2048;  // one sequence; activations are D x T, one token per column
  const Matrix<float> x = Matrix<float>::Random(256, T);
  y.resize(256, T);
  Workspace workspace;  // keeps the work buffers for the next call (no page faults)
  Context ctx;
  ctx.training = true;
  ctx.step = 0;                 // new random rotations every training step
  ctx.buckets = &buckets;       // forward records the buckets: [batch, H, R, T]
  ctx.workspace = &workspace;   // optional: without it buffers come from the heap
  attention.forward(params, x, y, ctx);

  // Backward recomputes everything from x and replays the recorded buckets (never re-hashes).
  // It works in place, as a reversible block needs: dx += J^T dy, params.grads() += ..., and
  // y -= f(x), so y now holds the forward output minus its recomputation: zero up to rounding.
  const Matrix<float> dy = Matrix<float>::Random(256, T);
  dx.setZero(256, T);
  attention.backward(params, x, dy, dx, y, ctx);
}
// [readme-lsh-end]
// clang-format on

TEST(Readme, LshExampleRunsAndRecordsBuckets) {
  Matrix<float> y, dx;
  BucketTape buckets;
  lsh_example(y, dx, buckets);
  ASSERT_EQ(buckets.batch, 1);
  ASSERT_EQ(buckets.heads, 4);
  ASSERT_EQ(buckets.rounds, 2);
  ASSERT_EQ(buckets.length, 2048);
  // 2048 / 64 = 32 chunks -> HF's rule: the largest power of two <= 2 * 32, i.e. 64 buckets.
  int max_bucket = 0, min_bucket = 1 << 30;
  for (auto b : buckets.data) {
    max_bucket = std::max<int>(max_bucket, b);
    min_bucket = std::min<int>(min_bucket, b);
  }
  EXPECT_GE(min_bucket, 0);
  EXPECT_LT(max_bucket, 64);
  EXPECT_GT(max_bucket, 4);  // tokens are spread over many buckets
  EXPECT_LT(y.cwiseAbs().maxCoeff(), 1e-5f) << "y - f(x) with f(x) recomputed";
  EXPECT_TRUE(dx.allFinite());
  EXPECT_GT(dx.norm(), 0.0f);
}
