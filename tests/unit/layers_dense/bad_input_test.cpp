// Bad configurations and shapes are rejected with reformer::InvalidArgument naming the argument.
#include "dense_test_util.hpp"

#include "reformer/core/error.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace reformer {
namespace {

// Runs f, expects an InvalidArgument whose message contains every string in `needles`.
void expect_invalid(const std::function<void()>& f, std::initializer_list<const char*> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning " << *needles.begin();
  } catch (const InvalidArgument& e) {
    for (const char* needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message '" << e.what() << "' does not mention '" << needle << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

using test::AttentionSetup;
using test::FeedForwardSetup;

TEST(DenseBadInput, AttentionConfig) {
  auto build = [](AttentionSetup s) {
    Parameters<double> p;
    FullAttentionLayer<double> layer(test::attention_config<double>(s), p);
  };
  AttentionSetup s;
  s.heads = 0;
  expect_invalid([&] { build(s); }, {"FullAttention", "num_heads = 0"});
  s = AttentionSetup{};
  s.head_size = -2;
  expect_invalid([&] { build(s); }, {"head_size = -2"});
  s = AttentionSetup{};
  s.hidden = 0;
  expect_invalid([&] { build(s); }, {"AttentionSublayer", "hidden_size = 0"});
  s = AttentionSetup{};
  s.output_dropout = 1.0;
  expect_invalid([&] { build(s); }, {"output_dropout = 1"});
  s = AttentionSetup{};
  s.probs_dropout = -0.1;
  expect_invalid([&] { build(s); }, {"dropout = -0.1"});
  auto cfg = test::attention_config<double>(AttentionSetup{});
  cfg.layer_norm_eps = 0.0;
  expect_invalid(
      [&] {
        Parameters<double> p;
        FullAttentionLayer<double> layer(cfg, p);
      },
      {"layer_norm_eps = 0"});
}

TEST(DenseBadInput, AttentionShapes) {
  AttentionSetup s;  // D = 6, H = 2, Dh = 3
  Parameters<double> p;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), p);
  Context ctx;
  ctx.batch = 2;
  Matrix<double> x(6, 8), y(6, 8), dx(6, 8), fx(6, 8);
  x.setOnes();
  Matrix<double> x_bad_rows(5, 8), y_bad(6, 7);
  expect_invalid([&] { layer.forward(p, x_bad_rows, y, ctx); }, {"forward", "x.rows() = 5"});
  expect_invalid([&] { layer.forward(p, x, y_bad, ctx); }, {"forward", "y has shape 6 x 7"});
  expect_invalid([&] { layer.backward(p, x, y_bad, dx, fx, ctx); },
                 {"AttentionSublayer::backward", "dy"});
  expect_invalid([&] { layer.backward(p, x, y, y_bad, fx, ctx); },
                 {"AttentionSublayer::backward", "dx has shape 6 x 7"});
  expect_invalid([&] { layer.backward(p, x, y, dx, y_bad, ctx); },
                 {"AttentionSublayer::backward", "y has shape 6 x 7"});
  expect_invalid([&] { backward_out_of_place(layer, p, x, y, dx, y_bad, ctx); },
                 {"backward_out_of_place", "fx"});
  ctx.batch = 3;  // 8 columns are not 3 sequences of equal length
  expect_invalid([&] { layer.forward(p, x, y, ctx); }, {"ctx.batch = 3"});
  expect_invalid([&] { layer.backward(p, x, y, dx, fx, ctx); }, {"ctx.batch = 3"});
  ctx.batch = 0;
  expect_invalid([&] { layer.forward(p, x, y, ctx); }, {"ctx.batch = 0"});

  // The core's own entry points: the head output must be H*Dh x N.
  ctx.batch = 1;
  const FullAttention<double>& core = layer.core();
  Matrix<double> a_bad(5, 8), a(6, 8), da_bad(4, 8);
  expect_invalid([&] { core.forward(p, x, a_bad, ctx); },
                 {"FullAttention::forward", "a has shape 5 x 8"});
  expect_invalid([&] { core.backward(p, x, da_bad, dx, a, ctx); },
                 {"FullAttention::backward", "da has shape 4 x 8"});
  expect_invalid([&] { core.forward(p, x_bad_rows, a, ctx); }, {"xn.rows() = 5"});
}

TEST(DenseBadInput, FeedForwardConfig) {
  auto build = [](FeedForwardConfig cfg) {
    Parameters<double> p;
    FeedForward<double> ff(cfg, p);
  };
  FeedForwardConfig cfg = test::feed_forward_config(FeedForwardSetup{});
  cfg.hidden_size = 0;
  expect_invalid([&] { build(cfg); }, {"FeedForward", "hidden_size = 0"});
  cfg = test::feed_forward_config(FeedForwardSetup{});
  cfg.feed_forward_size = -1;
  expect_invalid([&] { build(cfg); }, {"feed_forward_size = -1"});
  cfg = test::feed_forward_config(FeedForwardSetup{});
  cfg.dropout = 1.5;
  expect_invalid([&] { build(cfg); }, {"dropout = 1.5"});
  cfg = test::feed_forward_config(FeedForwardSetup{});
  cfg.chunk_size = -4;
  expect_invalid([&] { build(cfg); }, {"chunk_size = -4"});
  cfg = test::feed_forward_config(FeedForwardSetup{});
  cfg.layer_norm_eps = -1e-5;
  expect_invalid([&] { build(cfg); }, {"layer_norm_eps"});
}

TEST(DenseBadInput, FeedForwardShapes) {
  Parameters<double> p;
  FeedForward<double> ff(test::feed_forward_config(FeedForwardSetup{}), p);  // D = 5
  Context ctx;
  ctx.batch = 2;
  Matrix<double> x(5, 6), y(5, 6), dx(5, 6), fx(5, 6), bad_rows(4, 6), bad_cols(5, 5);
  x.setOnes();
  expect_invalid([&] { ff.forward(p, bad_rows, y, ctx); },
                 {"FeedForward::forward", "x.rows() = 4"});
  expect_invalid([&] { ff.forward(p, x, bad_cols, ctx); }, {"y has shape 5 x 5"});
  expect_invalid([&] { ff.backward(p, x, bad_cols, dx, fx, ctx); },
                 {"FeedForward::backward", "dy"});
  expect_invalid([&] { ff.backward(p, x, y, dx, bad_cols, ctx); },
                 {"FeedForward::backward", "y has shape 5 x 5"});
  expect_invalid([&] { backward_out_of_place(ff, p, x, y, bad_cols, fx, ctx); }, {"dx"});
  expect_invalid([&] { backward_out_of_place(ff, p, x, y, dx, bad_cols, ctx); }, {"fx"});
  ctx.batch = 4;
  expect_invalid([&] { ff.forward(p, x, y, ctx); }, {"ctx.batch = 4"});
}

TEST(DenseBadInput, InitRejectsNegativeStd) {
  Parameters<double> p;
  FeedForward<double> ff(test::feed_forward_config(FeedForwardSetup{}), p);
  expect_invalid([&] { ff.init(p, Rng(1), -0.1); }, {"std = -0.1"});
}

}  // namespace
}  // namespace reformer
