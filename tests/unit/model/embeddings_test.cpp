// Word + position embeddings: values, scatter-add backward vs finite differences, dropout
// consistency between forward and backward, bad tokens.
#include "reformer/model/embeddings.hpp"

#include "model_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace reformer {
namespace {

using test::message_of;

// V = 7, D = 6, T <= 12: axial positions 3 x 4 with dims 2 + 4, or a learned 12-row table.
ReformerConfig small_config(bool axial) {
  test::SmallConfig cfg;
  cfg.vocab(7).axial_positions({3, 4}, {2, 4});
  if (!axial) cfg.learned_positions(12);
  return cfg;
}

struct Emb {
  explicit Emb(const ReformerConfig& cfg) : emb(cfg, params) { emb.init(params, Rng(5), 0.5, 1.0); }
  Parameters<double> params;
  Embeddings<double> emb;
};

const std::vector<Token> kTokens = {3, 0, 6, 3, 3, 1, 2, 5, 4, 0, 6, 6, 1, 2};  // B=2, T=7

// The 6 x 14 embeddings of kTokens as B = 2 sequences at inference (no dropout).
Matrix<double> inference_embeddings(const Emb& m) {
  Context ctx;
  ctx.batch = 2;
  Matrix<double> e(6, 14);
  m.emb.forward(m.params, kTokens, e, ctx);
  return e;
}

TEST(Embeddings, RegistersHuggingFaceNamesAndShapes) {
  Emb a(small_config(true));
  ASSERT_EQ(a.params.num_slots(), 3);
  EXPECT_EQ(a.params.slot(0).name, "reformer.embeddings.word_embeddings.weight");
  EXPECT_EQ(a.params.slot(0).shape, (std::vector<Index>{7, 6}));
  EXPECT_EQ(a.params.slot(1).name, "reformer.embeddings.position_embeddings.weights.0");
  EXPECT_EQ(a.params.slot(1).shape, (std::vector<Index>{3, 1, 2}));
  EXPECT_EQ(a.params.slot(2).name, "reformer.embeddings.position_embeddings.weights.1");
  EXPECT_EQ(a.params.slot(2).shape, (std::vector<Index>{1, 4, 4}));
  Emb l(small_config(false));
  ASSERT_EQ(l.params.num_slots(), 2);
  EXPECT_EQ(l.params.slot(1).name, "reformer.embeddings.position_embeddings.embedding.weight");
  EXPECT_EQ(l.params.slot(1).shape, (std::vector<Index>{12, 6}));
}

TEST(Embeddings, AxialForwardConcatenatesTheTwoTables) {
  Emb a(small_config(true));
  const Matrix<double> e = inference_embeddings(a);
  const auto word = a.params.value(a.emb.word_slot());
  const auto p1 = a.params.value(a.emb.position_slot());          // 3 x 2
  const auto p2 = a.params.value_vector(a.emb.position2_slot());  // 4 * 4
  for (Index n = 0; n < 14; ++n) {
    const Index t = n % 7, i = t / 4, j = t % 4;
    Eigen::VectorXd expect(6);
    expect << p1(i, 0), p1(i, 1), p2.segment(j * 4, 4);
    expect += word.row(kTokens[static_cast<std::size_t>(n)]).transpose();
    EXPECT_LT((e.col(n) - expect).cwiseAbs().maxCoeff(), 1e-15) << "column " << n;
  }
}

TEST(Embeddings, LearnedForwardAddsTheTableRow) {
  Emb l(small_config(false));
  const Matrix<double> e = inference_embeddings(l);
  for (Index n = 0; n < 14; ++n) {
    const Eigen::VectorXd expect =
        l.params.value(l.emb.word_slot()).row(kTokens[static_cast<std::size_t>(n)]).transpose() +
        l.params.value(l.emb.position_slot()).row(n % 7).transpose();
    EXPECT_LT((e.col(n) - expect).cwiseAbs().maxCoeff(), 1e-15);
  }
}

// L = <c, e>, gradients of every table checked by finite differences, with and without dropout.
void check_gradients(bool axial, bool training) {
  ReformerConfig cfg = small_config(axial);
  cfg.hidden_dropout_prob = training ? 0.4 : 0.0;
  Emb m(cfg);
  Context ctx;
  ctx.batch = 2;
  ctx.training = training;
  ctx.seed = 99;
  ctx.step = 3;
  const Matrix<double> c = test::random_matrix<double>(6, 14, 77);
  auto loss = [&]() {
    Matrix<double> e(6, 14);
    m.emb.forward(m.params, kTokens, e, ctx);
    return c.cwiseProduct(e).sum();
  };
  m.params.zero_grad();
  m.emb.backward(m.params, kTokens, c, ctx);
  const Eigen::VectorXd fd = test::finite_differences(m.params.values(), loss);
  EXPECT_LT(test::gradient_error(m.params.grads(), fd), 1e-6);
  EXPECT_GT(m.params.grads().norm(), 0.0);
}

TEST(Embeddings, AxialBackwardMatchesFiniteDifferences) { check_gradients(true, false); }
TEST(Embeddings, LearnedBackwardMatchesFiniteDifferences) { check_gradients(false, false); }
TEST(Embeddings, AxialDropoutBackwardMatchesFiniteDifferences) { check_gradients(true, true); }
TEST(Embeddings, LearnedDropoutBackwardMatchesFiniteDifferences) { check_gradients(false, true); }

TEST(Embeddings, AxialDropoutDropsWholePositionPlanes) {
  ReformerConfig cfg = small_config(true);
  cfg.hidden_dropout_prob = 0.5;
  Emb m(cfg);
  m.params.values().segment(0, 7 * 6).setZero();  // word table zero: e is the position term
  Context ctx;
  ctx.batch = 2;
  ctx.training = true;
  ctx.seed = 4;
  Matrix<double> e(6, 14);
  int dropped = 0, kept = 0;
  for (std::uint64_t step = 0; step < 8; ++step) {
    ctx.step = step;
    m.emb.forward(m.params, kTokens, e, ctx);
    // Positions t with the same (b, j = t mod 4) are dropped together.
    for (Index b = 0; b < 2; ++b) {
      for (Index j = 0; j < 4; ++j) {
        const bool zero = e.col(b * 7 + j).isZero(0.0);
        (zero ? dropped : kept)++;
        for (Index t = j; t < 7; t += 4) EXPECT_EQ(e.col(b * 7 + t).isZero(0.0), zero);
      }
    }
  }
  EXPECT_GT(dropped, 8);
  EXPECT_GT(kept, 8);
}

TEST(Embeddings, InferenceIgnoresDropout) {
  ReformerConfig cfg = small_config(false);
  cfg.hidden_dropout_prob = 0.5;
  Emb m(cfg);
  Context ctx;
  ctx.batch = 2;
  Matrix<double> a(6, 14), b(6, 14);
  m.emb.forward(m.params, kTokens, a, ctx);
  ctx.step = 17;
  m.emb.forward(m.params, kTokens, b, ctx);
  EXPECT_EQ(a, b);
  EXPECT_EQ((a.array() == 0).count(), 0);
}

TEST(Embeddings, RejectsBadTokens) {
  Emb m(small_config(true));
  Context ctx;
  ctx.batch = 2;
  Matrix<double> e(6, 14);
  std::vector<Token> bad = kTokens;
  bad[9] = 7;
  std::string msg = message_of([&] { m.emb.forward(m.params, bad, e, ctx); });
  EXPECT_NE(msg.find("tokens[9] = 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("position 2"), std::string::npos) << msg;
  bad[9] = -1;
  msg = message_of([&] { m.emb.forward(m.params, bad, e, ctx); });
  EXPECT_NE(msg.find("tokens[9] = -1"), std::string::npos) << msg;

  ctx.batch = 3;
  msg = message_of([&] { m.emb.forward(m.params, kTokens, e, ctx); });
  EXPECT_NE(msg.find("batch = 3"), std::string::npos) << msg;

  ctx.batch = 1;
  std::vector<Token> too_long(13, 1);  // 13 > s1 * s2 = 12
  Matrix<double> e13(6, 13);
  msg = message_of([&] { m.emb.forward(m.params, too_long, e13, ctx); });
  EXPECT_NE(msg.find("T = 13"), std::string::npos) << msg;
  EXPECT_NE(msg.find("12"), std::string::npos) << msg;
}

}  // namespace
}  // namespace reformer
