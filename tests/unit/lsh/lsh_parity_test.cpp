// Parity with the Hugging Face Reformer (float64 fixtures, tests/data/README.md): one
// attention sublayer LayerNorm -> LSH self-attention -> output dense, with HF's buckets replayed.
// Outputs, input gradients and every parameter gradient agree within 1e-9 relative (HF and this
// library compute the same formulas in a different order: ~1e-13 in practice).
#include "lsh_test_util.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "support/fixture.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer::test {
namespace {

using Sublayer = AttentionSublayer<double, LshAttention<double>>;

Sublayer::Config config_from(const Fixture& fx) {
  const auto j = fx.config();
  Sublayer::Config c;
  c.hidden_size = j.at("hidden_size").get<Index>();
  c.layer_norm_eps = j.at("layer_norm_eps").get<double>();
  c.core.num_heads = j.at("num_attention_heads").get<Index>();
  c.core.head_size = j.at("attention_head_size").get<Index>();
  c.core.chunk_length = j.at("lsh_attn_chunk_length").get<Index>();
  c.core.num_hashes = j.at("num_hashes").get<Index>();
  const auto& nb = j.at("num_buckets");
  c.core.num_buckets =
      nb.is_array() ? nb.get<std::vector<Index>>() : std::vector<Index>{nb.get<Index>()};
  c.core.chunks_before = j.at("lsh_num_chunks_before").get<Index>();
  c.core.chunks_after = j.at("lsh_num_chunks_after").get<Index>();
  c.core.causal = j.at("is_decoder").get<bool>();
  c.core.max_positions = j.at("max_position_embeddings").get<Index>();
  return c;
}

class LshParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LshParity, MatchesHuggingFace) {
  const Fixture fx(GetParam());
  ASSERT_EQ(fx.meta("kind"), "lsh");
  const Sublayer::Config cfg = config_from(fx);
  EXPECT_EQ(cfg.core.causal, fx.meta("causal") == "True");
  Parameters<double> params;
  const Sublayer layer(cfg, params, "");
  fx.load_params(params, "");

  const Matrix<double> x = fx.activations("input");
  const Matrix<double> dy = fx.activations("grad_output");
  const Index batch = fx.batch(), len = fx.length();
  ASSERT_EQ(x.cols(), batch * len);

  BucketTape tape;
  Context ctx;
  ctx.batch = batch;
  AttentionMask mask;
  if (fx.has("attention_mask")) {
    mask = AttentionMask::from_flags(fx.ints("attention_mask"), batch, len);
    ASSERT_TRUE(mask.any_padding());
    ctx.mask = &mask;
  }
  ctx.buckets = &tape;
  ctx.replay_buckets = true;
  const bool hashed = len > cfg.core.chunk_length;
  EXPECT_EQ(fx.has("buckets"), hashed);
  if (hashed) {
    tape = fx.buckets();
    ASSERT_EQ(tape.heads, cfg.core.num_heads);
    ASSERT_EQ(tape.rounds, cfg.core.num_hashes);
  }

  Matrix<double> y(x.rows(), x.cols());
  layer.forward(params, x, y, ctx);
  EXPECT_LT(rel_error(y, fx.activations("output")), 1e-9);

  Matrix<double> dx(x.rows(), x.cols()), fx_out(x.rows(), x.cols());
  params.zero_grad();
  backward_out_of_place(layer, params, x, dy, dx, fx_out, ctx);
  EXPECT_LT(rel_error(fx_out, fx.activations("output")), 1e-9);
  EXPECT_LT(rel_error(dx, fx.activations("grad_input")), 1e-9);
  const GradError g = fx.max_grad_error(params, "");
  EXPECT_EQ(g.compared, 5u);
  EXPECT_LT(g.error, 1e-9) << g;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LshParity,
                         ::testing::Values("lsh_attention_causal", "lsh_attention_causal_short",
                                           "lsh_attention_noncausal", "lsh_attention_factorised",
                                           "lsh_attention_masked_noncausal",
                                           "lsh_attention_causal_masked"));

// With a mask, the fixtures hold the pad bucket NB at every padded position (HF hashes into
// NB + 1 buckets when any position of the batch is padding) and real buckets elsewhere; the
// layer's own hashing records the same pad bucket at the same positions.
TEST(LshParity, MaskedFixturesHoldThePadBucketAtPaddedPositions) {
  for (const char* name : {"lsh_attention_masked_noncausal", "lsh_attention_causal_masked"}) {
    const Fixture fx(name);
    const Sublayer::Config cfg = config_from(fx);
    Parameters<double> params;
    const LshAttention<double> core(cfg.core, cfg.hidden_size, params, "");
    core.init(params, Rng(1), 0.5);
    const Index nb = core.bucket_layout(fx.length()).num_buckets();
    const Index batch = fx.batch(), len = fx.length();
    const AttentionMask mask = AttentionMask::from_flags(fx.ints("attention_mask"), batch, len);
    const BucketTape tape = fx.buckets();
    BucketTape own;
    Context ctx;
    ctx.batch = batch;
    ctx.mask = &mask;
    core.compute_buckets(params, fx.activations("input"), ctx, own);
    ASSERT_EQ(own.data.size(), tape.data.size());
    Index padded = 0;
    for (Index b = 0; b < batch; ++b)
      for (Index h = 0; h < tape.heads; ++h)
        for (Index r = 0; r < tape.rounds; ++r)
          for (Index t = 0; t < len; ++t) {
            const bool real = mask.real(b, t);
            padded += real ? 0 : 1;
            EXPECT_EQ(tape.at(b, h, r, t) == nb, !real) << name << " " << b << " " << t;
            EXPECT_EQ(own.at(b, h, r, t) == nb, !real) << name << " " << b << " " << t;
            EXPECT_LE(tape.at(b, h, r, t), nb);
          }
    EXPECT_GT(padded, 0);
  }
}

// The fixtures' buckets are consistent with this library's bucket layout and pad rule: every
// value lies in [0, NB) and each (sequence, head, round) uses several buckets.
TEST(LshParity, FixtureBucketsFitTheLayout) {
  for (const char* name : {"lsh_attention_causal", "lsh_attention_factorised"}) {
    const Fixture fx(name);
    const Sublayer::Config cfg = config_from(fx);
    Parameters<double> params;
    const LshAttention<double> core(cfg.core, cfg.hidden_size, params, "");
    const Index nb = core.bucket_layout(fx.length()).num_buckets();
    const BucketTape tape = fx.buckets();
    for (auto b : tape.data) {
      EXPECT_GE(b, 0);
      EXPECT_LT(b, nb);
    }
  }
}

}  // namespace
}  // namespace reformer::test
