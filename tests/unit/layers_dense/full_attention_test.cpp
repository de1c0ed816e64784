// FullAttention inside the AttentionSublayer: values against a naive reference, gradients by
// finite differences, causality, batch independence, dropout and thread determinism.
#include "dense_test_util.hpp"
#include "support/compare.hpp"

#include "reformer/layers/full_attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

namespace reformer {
namespace {

using test::AttentionSetup;
using test::random_matrix;

// Naive dense multi-head attention written from the formulas with scalar loops (no dropout):
// y = W_o concat_h softmax_masked(k^T q / sqrt(Dh)) applied to v, on LN(x), per sequence.
Matrix<double> reference_attention(const Parameters<double>& p, const std::string& prefix,
                                   const Matrix<double>& x, Index batch, Index heads, Index dh,
                                   bool causal, double eps) {
  const Index d = x.rows(), n = x.cols(), t = n / batch;
  const auto gamma = p.value_vector(p.id_of(prefix + "layer_norm.weight"));
  const auto beta = p.value_vector(p.id_of(prefix + "layer_norm.bias"));
  const auto wq = p.value(p.id_of(prefix + "self_attention.query.weight"));
  const auto wk = p.value(p.id_of(prefix + "self_attention.key.weight"));
  const auto wv = p.value(p.id_of(prefix + "self_attention.value.weight"));
  const auto wo = p.value(p.id_of(prefix + "output.dense.weight"));
  Matrix<double> xn(d, n);
  for (Index c = 0; c < n; ++c) {
    double mean = 0, var = 0;
    for (Index r = 0; r < d; ++r) mean += x(r, c) / double(d);
    for (Index r = 0; r < d; ++r) var += (x(r, c) - mean) * (x(r, c) - mean) / double(d);
    for (Index r = 0; r < d; ++r) {
      xn(r, c) = (x(r, c) - mean) / std::sqrt(var + eps) * gamma[r] + beta[r];
    }
  }
  const Matrix<double> q = wq * xn, k = wk * xn, v = wv * xn;
  Matrix<double> a = Matrix<double>::Zero(heads * dh, n);
  for (Index b = 0; b < batch; ++b) {
    for (Index h = 0; h < heads; ++h) {
      for (Index i = 0; i < t; ++i) {
        std::vector<double> s(static_cast<size_t>(t));
        double m = -1e300;
        for (Index j = 0; j < t; ++j) {
          double dot = 0;
          for (Index e = 0; e < dh; ++e) dot += q(h * dh + e, b * t + i) * k(h * dh + e, b * t + j);
          s[size_t(j)] = (causal && j > i) ? -1e9 : dot / std::sqrt(double(dh));
          m = std::max(m, s[size_t(j)]);
        }
        double z = 0;
        for (Index j = 0; j < t; ++j) z += std::exp(s[size_t(j)] - m);
        for (Index j = 0; j < t; ++j) {
          const double pij = std::exp(s[size_t(j)] - m) / z;
          for (Index e = 0; e < dh; ++e) a(h * dh + e, b * t + i) += pij * v(h * dh + e, b * t + j);
        }
      }
    }
  }
  return wo * a;
}

class FullAttentionGrad
    : public ::testing::TestWithParam<std::tuple<bool /*causal*/, Index /*heads*/>> {};

TEST_P(FullAttentionGrad, MatchesReferenceAndFiniteDifferences) {
  AttentionSetup s;
  s.causal = std::get<0>(GetParam());
  s.heads = std::get<1>(GetParam());
  s.head_size = s.heads == 1 ? 4 : 2;  // H*Dh differs from D = 6 for H = 1
  Parameters<double> params;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), params, "attention.");
  test::randomise(params, 21);
  Context ctx;
  ctx.batch = 2;
  const Matrix<double> x = random_matrix(s.hidden, 2 * 5, 7);

  const Matrix<double> y = test::run_forward(layer, params, x, ctx);
  const Matrix<double> ref =
      reference_attention(params, "attention.", x, 2, s.heads, s.head_size, s.causal, 1e-12);
  EXPECT_LT(test::relative_error(y, ref), 1e-12);

  test::expect_sublayer_gradients(layer, params, x, ctx);
}

INSTANTIATE_TEST_SUITE_P(CausalAndHeads, FullAttentionGrad,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Values(Index{1}, Index{3})));

// T = 150 spans three query panels of the implementation (the last one partial): values against
// the reference, gradients by finite differences (sampled), causality across panel boundaries.
TEST(FullAttention, LongSequencesAcrossQueryPanels) {
  for (bool causal : {true, false}) {
    AttentionSetup s;
    s.causal = causal;
    s.hidden = 4;
    s.heads = 1;  // small enough to stay on one thread: thousands of forward calls
    s.head_size = 3;
    Parameters<double> params;
    FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
    test::randomise(params, 13);
    Context ctx;
    const Index t = 150;
    const Matrix<double> x = random_matrix(s.hidden, t, 14);
    const Matrix<double> y = test::run_forward(layer, params, x, ctx);
    EXPECT_LT(test::relative_error(
                  y, reference_attention(params, "", x, 1, s.heads, s.head_size, causal, 1e-12)),
              1e-12);
    test::expect_sublayer_gradients(layer, params, x, ctx, 1e-6, 40);
    if (causal) {
      for (Index pos : {Index{63}, Index{64}, Index{127}}) {
        Matrix<double> x2 = x;
        x2.rightCols(t - pos - 1) = random_matrix(s.hidden, t - pos - 1, 15);
        const Matrix<double> y2 = test::run_forward(layer, params, x2, ctx);
        EXPECT_EQ((y2.leftCols(pos + 1) - y.leftCols(pos + 1)).cwiseAbs().maxCoeff(), 0.0)
            << "position " << pos;
      }
    }
  }
}

TEST(FullAttention, GradientsWithDropoutAndFixedContext) {
  AttentionSetup s;
  s.heads = 3;
  s.head_size = 2;
  s.output_dropout = 0.3;
  s.probs_dropout = 0.25;
  test::DenseCase<FullAttentionLayer<double>> c(test::attention_config<double>(s), 3, 2 * 6, 8,
                                                "a.");
  const Context ctx = test::training_context(2);
  // The masks really drop something: the training output differs from the inference one.
  EXPECT_GT(test::dropout_effect(c.layer, c.params, c.x, ctx), 1e-3);
  test::expect_sublayer_gradients(c.layer, c.params, c.x, ctx);
}

TEST(FullAttention, BackwardReturnsForwardOutput) {
  for (double p : {0.0, 0.2}) {
    AttentionSetup s;
    s.output_dropout = p;
    s.probs_dropout = p;
    Parameters<double> params;
    FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
    layer.init(params, Rng(4), 0.3);
    const Context ctx = test::training_context(3);
    const Matrix<double> x = random_matrix(s.hidden, 3 * 4, 2);
    const Matrix<double> y = test::run_forward(layer, params, x, ctx);
    const auto r = test::run_backward(layer, params, x, random_matrix(s.hidden, 12, 9), ctx);
    EXPECT_EQ((r.fx - y).cwiseAbs().maxCoeff(), 0.0) << "p = " << p;
  }
}

TEST(FullAttention, CausalOutputsIgnoreLaterPositions) {
  AttentionSetup s;
  Parameters<double> params;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
  test::randomise(params, 5);
  Context ctx;
  ctx.batch = 2;
  const Index t = 8;
  const Matrix<double> x = random_matrix(s.hidden, 2 * t, 1);
  const Matrix<double> y = test::run_forward(layer, params, x, ctx);
  for (Index pos = 0; pos < t - 1; ++pos) {
    Matrix<double> x2 = x;
    for (Index b = 0; b < 2; ++b) {
      x2.middleCols(b * t + pos + 1, t - pos - 1) =
          random_matrix(s.hidden, t - pos - 1, 100 + static_cast<std::uint64_t>(pos), 3.0);
    }
    const Matrix<double> y2 = test::run_forward(layer, params, x2, ctx);
    for (Index b = 0; b < 2; ++b) {
      EXPECT_EQ(
          (y2.middleCols(b * t, pos + 1) - y.middleCols(b * t, pos + 1)).cwiseAbs().maxCoeff(), 0.0)
          << "sequence " << b << ", position " << pos;
      // ... while the later outputs do change (the test would notice a no-op).
      EXPECT_GT(
          (y2.middleCols(b * t + pos + 1, t - pos - 1) - y.middleCols(b * t + pos + 1, t - pos - 1))
              .cwiseAbs()
              .maxCoeff(),
          1e-6);
    }
  }
}

TEST(FullAttention, NonCausalOutputsSeeLaterPositions) {
  AttentionSetup s;
  s.causal = false;
  Parameters<double> params;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
  test::randomise(params, 5);
  Context ctx;
  const Matrix<double> x = random_matrix(s.hidden, 6, 1);
  Matrix<double> x2 = x;
  x2.col(5) = random_matrix(s.hidden, 1, 99);  // (a rescaling would be undone by LN)
  const Matrix<double> diff =
      test::run_forward(layer, params, x2, ctx) - test::run_forward(layer, params, x, ctx);
  EXPECT_GT(diff.col(0).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(FullAttention, SequencesOfABatchAreIndependent) {
  for (bool causal : {true, false}) {
    AttentionSetup s;
    s.causal = causal;
    s.output_dropout = 0.1;
    s.probs_dropout = 0.1;
    Parameters<double> params;
    FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
    test::randomise(params, 6);
    const Context ctx = test::training_context(3);
    const Index t = 5;
    const Matrix<double> x = random_matrix(s.hidden, 3 * t, 2);
    Matrix<double> x2 = x;
    x2.middleCols(t, t) = random_matrix(s.hidden, t, 77);  // replace sequence 1 only
    const Matrix<double> y = test::run_forward(layer, params, x, ctx);
    const Matrix<double> y2 = test::run_forward(layer, params, x2, ctx);
    EXPECT_EQ((y2.leftCols(t) - y.leftCols(t)).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((y2.rightCols(t) - y.rightCols(t)).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_GT((y2.middleCols(t, t) - y.middleCols(t, t)).cwiseAbs().maxCoeff(), 1e-6);

    // Without dropout, a batch equals its sequences run one at a time.
    Parameters<double> p0;
    s.output_dropout = s.probs_dropout = 0.0;
    FullAttentionLayer<double> plain(test::attention_config<double>(s), p0);
    p0.values() = params.values();
    Context one;
    Context three;
    three.batch = 3;
    const Matrix<double> yb = test::run_forward(plain, p0, x, three);
    for (Index b = 0; b < 3; ++b) {
      const Matrix<double> xb = x.middleCols(b * t, t);
      EXPECT_LT(
          test::relative_error(yb.middleCols(b * t, t), test::run_forward(plain, p0, xb, one)),
          1e-14);
    }
  }
}

TEST(FullAttention, DropoutIsAPureFunctionOfTheContext) {
  AttentionSetup s;
  s.output_dropout = 0.2;
  s.probs_dropout = 0.3;
  Parameters<double> params;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
  test::randomise(params, 8);
  const Context ctx = test::training_context(2, 5);
  const Matrix<double> x = random_matrix(s.hidden, 2 * 6, 3);
  const Matrix<double> y = test::run_forward(layer, params, x, ctx);
  EXPECT_EQ((test::run_forward(layer, params, x, ctx) - y).cwiseAbs().maxCoeff(), 0.0);
  Context other = ctx;
  other.step = 6;
  EXPECT_GT((test::run_forward(layer, params, x, other) - y).cwiseAbs().maxCoeff(), 1e-6);
  other = ctx;
  other.layer = 3;
  EXPECT_GT((test::run_forward(layer, params, x, other) - y).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(FullAttention, BitwiseIdenticalForAnyThreadCount) {
  // Large enough for several column blocks and row blocks in every product.
  AttentionSetup s;
  s.hidden = 40;
  s.heads = 3;
  s.head_size = 16;
  s.output_dropout = s.probs_dropout = 0.1;
  Parameters<double> params;
  FullAttentionLayer<double> layer(test::attention_config<double>(s), params);
  layer.init(params, Rng(9), 0.2);
  const Context ctx = test::training_context(2);
  const Matrix<double> x = random_matrix(s.hidden, 2 * 150, 4);
  const Matrix<double> dy = random_matrix(s.hidden, 2 * 150, 5);
  const auto one = test::run_with_threads(1, layer, params, x, dy, ctx);
  const auto two = test::run_with_threads(2, layer, params, x, dy, ctx);
  EXPECT_EQ((one.y - two.y).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ((one.back.dx - two.back.dx).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ((one.back.grads - two.back.grads).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ((one.back.fx - one.y).cwiseAbs().maxCoeff(), 0.0);
}

TEST(FullAttention, FloatAgreesWithDouble) {
  AttentionSetup s;
  Parameters<double> pd;
  Parameters<float> pf;
  FullAttentionLayer<double> ld(test::attention_config<double>(s), pd);
  FullAttentionLayer<float> lf(test::attention_config<float>(s), pf);
  ld.init(pd, Rng(1), 0.5);
  pf.values() = pd.values().cast<float>();
  Context ctx;
  ctx.batch = 2;
  const Matrix<double> x = random_matrix(s.hidden, 2 * 7, 6);
  const Matrix<double> dy = random_matrix(s.hidden, 2 * 7, 7);
  const test::FloatErrors e = test::float_vs_double(lf, pf, ld, pd, x, dy, ctx);
  EXPECT_LT(e.y, 1e-5);
  EXPECT_LT(e.dx, 1e-4);
  EXPECT_LT(e.grads, 1e-4);
}

TEST(FullAttention, RegistersHuggingFaceNamesAndInitialises) {
  AttentionSetup s;
  s.heads = 2;
  s.head_size = 4;
  Parameters<float> params;
  FullAttentionLayer<float> layer(test::attention_config<float>(s), params,
                                  "reformer.encoder.layers.0.attention.");
  const std::string pre = "reformer.encoder.layers.0.attention.";
  const char* names[] = {"layer_norm.weight",           "layer_norm.bias",
                         "self_attention.query.weight", "self_attention.key.weight",
                         "self_attention.value.weight", "output.dense.weight"};
  ASSERT_EQ(params.num_slots(), 6);
  for (SlotId i = 0; i < 6; ++i) EXPECT_EQ(params.slot(i).name, pre + names[i]);
  EXPECT_EQ(params.slot(2).shape, (std::vector<Index>{8, 6}));
  EXPECT_EQ(params.slot(5).shape, (std::vector<Index>{6, 8}));
  layer.init(params, Rng(3), 0.02);
  EXPECT_EQ(params.value_vector(0), Vector<float>::Ones(6));
  EXPECT_EQ(params.value_vector(1), Vector<float>::Zero(6));
  const auto wq = params.value_vector(2);
  const double mean = wq.cast<double>().mean();
  const double sd = std::sqrt((wq.cast<double>().array() - mean).square().mean());
  EXPECT_NEAR(sd, 0.02, 0.008);
  // Different weights get different draws.
  EXPECT_NE(params.value_vector(2), params.value_vector(3));
}

}  // namespace
}  // namespace reformer
