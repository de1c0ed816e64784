// Reference parity with the Hugging Face Reformer (float64): one local-attention sublayer
// (LayerNorm -> LocalSelfAttention -> output dense), C = 4 (tests/data/README.md): causal;
// non-causal with an attention mask (valid lengths 24 and 19); causal with HF's circular window
// holding the query's own chunk twice (chunks_before 2, two chunks).
#include "reformer/core/attention_mask.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/local_attention.hpp"

#include "support/compare.hpp"
#include "support/fixture.hpp"

#include <gtest/gtest.h>

#include <iomanip>
#include <sstream>
#include <string>

namespace reformer {
namespace {

using test::relative_error;

std::string scientific(double v) {
  std::ostringstream os;
  os << std::scientific << std::setprecision(2) << v;
  return os.str();
}

class LocalAttentionParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LocalAttentionParity, MatchesHuggingFaceSublayer) {
  const test::Fixture fx(GetParam());
  const auto cfg_json = fx.config();
  ASSERT_EQ(fx.meta("kind"), "local");

  LocalAttentionLayerConfig<double> cfg;
  cfg.hidden_size = cfg_json.at("hidden_size").get<Index>();
  cfg.layer_norm_eps = cfg_json.at("layer_norm_eps").get<double>();
  cfg.core.num_heads = cfg_json.at("num_attention_heads").get<Index>();
  cfg.core.head_size = cfg_json.at("attention_head_size").get<Index>();
  cfg.core.chunk_length = cfg_json.at("local_attn_chunk_length").get<Index>();
  cfg.core.chunks_before = cfg_json.at("local_num_chunks_before").get<Index>();
  cfg.core.chunks_after = cfg_json.at("local_num_chunks_after").get<Index>();
  cfg.core.causal = cfg_json.at("is_decoder").get<bool>();
  EXPECT_EQ(cfg.core.causal, fx.meta("causal") == "True");

  Parameters<double> params;
  const LocalAttentionLayer<double> layer(cfg, params);
  EXPECT_EQ(fx.load_params(params), static_cast<std::size_t>(params.num_slots()));

  Context ctx;
  ctx.batch = fx.batch();
  AttentionMask mask;
  if (fx.has("attention_mask")) {
    mask = AttentionMask::from_flags(fx.ints("attention_mask"), fx.batch(), fx.length());
    ASSERT_TRUE(mask.any_padding());
    ctx.mask = &mask;
  }
  const Matrix<double> x = fx.activations("input");
  ASSERT_EQ(x.cols(), fx.batch() * fx.length());
  ASSERT_GT(fx.length(), cfg.core.chunk_length);  // the chunked path, not the dense one

  Matrix<double> y(x.rows(), x.cols());
  layer.forward(params, x, y, ctx);
  const double output_error = relative_error(y, fx.activations("output"));
  EXPECT_LT(output_error, 1e-9);
  RecordProperty("output_error", scientific(output_error));

  const Matrix<double> dy = fx.activations("grad_output");
  Matrix<double> dx(x.rows(), x.cols()), fx_out(x.rows(), x.cols());
  params.zero_grad();
  backward_out_of_place(layer, params, x, dy, dx, fx_out, ctx);
  const double input_grad_error = relative_error(dx, fx.activations("grad_input"));
  EXPECT_LT(input_grad_error, 1e-9);
  RecordProperty("grad_input_error", scientific(input_grad_error));
  EXPECT_LT(relative_error(fx_out, fx.activations("output")), 1e-9);
  const auto worst = fx.max_grad_error(params);
  EXPECT_EQ(worst.compared, 6u);  // LayerNorm weight and bias, W_q, W_k, W_v, W_o
  EXPECT_LT(worst.error, 1e-9) << worst;
  RecordProperty("worst_param_grad_error", scientific(worst.error));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LocalAttentionParity,
                         ::testing::Values("local_attention_causal",
                                           "local_attention_masked_noncausal",
                                           "local_attention_wrap"));

// Without the circular window, the wrap fixture's own-chunk keys would count once: the layer
// with chunks_before 1 (the same window without the repeated chunk) gives a different output.
TEST(LocalAttentionParity, TheWrapFixtureCountsTheOwnChunkTwice) {
  const test::Fixture fx("local_attention_wrap");
  ASSERT_EQ(fx.config().at("local_num_chunks_before").get<Index>(), 2);
  ASSERT_EQ(fx.length(), 2 * fx.config().at("local_attn_chunk_length").get<Index>());
  LocalAttentionLayerConfig<double> cfg;
  cfg.hidden_size = fx.config().at("hidden_size").get<Index>();
  cfg.layer_norm_eps = fx.config().at("layer_norm_eps").get<double>();
  cfg.core.num_heads = 2;
  cfg.core.head_size = 6;
  cfg.core.chunk_length = 4;
  cfg.core.chunks_before = 1;
  Parameters<double> params;
  const LocalAttentionLayer<double> layer(cfg, params);
  fx.load_params(params);
  Context ctx;
  ctx.batch = fx.batch();
  const Matrix<double> x = fx.activations("input");
  Matrix<double> y(x.rows(), x.cols());
  layer.forward(params, x, y, ctx);
  EXPECT_GT(relative_error(y, fx.activations("output")), 1e-3);
}

}  // namespace
}  // namespace reformer
