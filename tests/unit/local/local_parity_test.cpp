// Reference parity with the Hugging Face Reformer (float64): one local-attention sublayer
// (LayerNorm -> LocalSelfAttention -> output dense), causal, C = 4 (tests/data/README.md).
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

TEST(LocalAttentionParity, MatchesHuggingFaceCausalSublayer) {
  const test::Fixture fx("local_attention_causal");
  const auto cfg_json = fx.config();
  ASSERT_EQ(fx.meta("kind"), "local");
  ASSERT_EQ(fx.meta("causal"), "True");

  LocalAttentionLayerConfig<double> cfg;
  cfg.hidden_size = cfg_json.at("hidden_size").get<Index>();
  cfg.layer_norm_eps = cfg_json.at("layer_norm_eps").get<double>();
  cfg.core.num_heads = cfg_json.at("num_attention_heads").get<Index>();
  cfg.core.head_size = cfg_json.at("attention_head_size").get<Index>();
  cfg.core.chunk_length = cfg_json.at("local_attn_chunk_length").get<Index>();
  cfg.core.chunks_before = cfg_json.at("local_num_chunks_before").get<Index>();
  cfg.core.chunks_after = cfg_json.at("local_num_chunks_after").get<Index>();
  cfg.core.causal = cfg_json.at("is_decoder").get<bool>();

  Parameters<double> params;
  const LocalAttentionLayer<double> layer(cfg, params);
  EXPECT_EQ(fx.load_params(params), static_cast<std::size_t>(params.num_slots()));

  Context ctx;
  ctx.batch = fx.batch();
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

}  // namespace
}  // namespace reformer
