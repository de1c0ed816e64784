// QuestionAnsweringHead: gradients (double, with and without dropout), HF's loss with clamped
// and ignored positions, chunking, errors.
#include "reformer/model/question_answering_head.hpp"

#include "head_test_util.hpp"
#include "support/errors.hpp"
#include "support/random.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace reformer {
namespace {

using test::random_matrix;

struct QaFixture {
  QaFixture(Index d, double dropout, Index chunk = 0) {
    QuestionAnsweringHeadConfig cfg;
    cfg.hidden_size = d;
    cfg.dropout = dropout;
    cfg.chunk_size = chunk;
    head.emplace(cfg, params);
    head->init(params, Rng(5), 0.3);
    for (SlotId id = 0; id < params.num_slots(); ++id) {
      if (params.slot(id).name == "qa_outputs.weight") continue;
      auto v = params.value_vector(id);
      for (Index i = 0; i < v.size(); ++i) {
        v[i] +=
            0.2 * Rng(40 + static_cast<std::uint64_t>(id)).normal(static_cast<std::uint64_t>(i));
      }
    }
  }
  Parameters<double> params;
  std::optional<QuestionAnsweringHead<double>> head;
};

void check_qa(double dropout, bool training, Reduction reduction, Index chunk) {
  const Index d = 5, batch = 3, length = 4;
  QaFixture f(d, dropout, chunk);
  Matrix<double> x1 = random_matrix(d, batch * length, Rng(1));
  Matrix<double> x2 = random_matrix(d, batch * length, Rng(2));
  const Context ctx = test::head_context(batch, training);
  // Sequence 1's end is out of range (ignored), sequence 2's start is negative (clamped to 0).
  const std::vector<Token> starts = {1, 3, -2}, ends = {2, 9, 3};
  const QuestionAnsweringTargets targets{starts, ends};
  auto loss = [&] {
    const QuestionAnsweringLoss r = f.head->loss(f.params, x1, x2, targets, ctx);
    return reduction == Reduction::kMean ? r.mean : r.sum;
  };
  auto backward = [&](double scale, MatrixRef<double> dcat) {
    f.head->backward(f.params, x1, x2, targets, scale, ctx, dcat, reduction);
  };
  test::check_head_gradients(f.params, x1, x2, loss, backward);
}

TEST(QuestionAnsweringHead, Gradients) {
  check_qa(0.0, false, Reduction::kSum, 0);
  check_qa(0.0, false, Reduction::kMean, 5);
}

TEST(QuestionAnsweringHead, GradientsWithDropout) {
  check_qa(0.3, true, Reduction::kSum, 0);
  check_qa(0.3, true, Reduction::kMean, 5);
}

TEST(QuestionAnsweringHead, LossIsHfs) {
  const Index d = 4, batch = 2, length = 3;
  QaFixture f(d, 0.0, 2);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(3));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(4));
  const Context ctx = test::head_context(batch, false);
  const Matrix<double> logits = f.head->logits(f.params, x1, x2, ctx);
  ASSERT_EQ(logits.rows(), 2);
  ASSERT_EQ(logits.cols(), batch * length);
  auto ce = [&](Index row, Index b, Index t) {
    const auto seq = logits.row(row).segment(b * length, length);
    return std::log(seq.array().exp().sum()) - seq(t);
  };
  // start: {-5 -> 0, 2}; end: {3 = T -> ignored, 1}
  const std::vector<Token> starts = {-5, 2}, ends = {3, 1};
  const QuestionAnsweringLoss r = f.head->loss(f.params, x1, x2, {starts, ends}, ctx);
  EXPECT_EQ(r.start.count, 2);
  EXPECT_EQ(r.end.count, 1);
  const double start_mean = (ce(0, 0, 0) + ce(0, 1, 2)) / 2, end_mean = ce(1, 1, 1);
  EXPECT_NEAR(r.mean, (start_mean + end_mean) / 2, 1e-12);
  EXPECT_NEAR(r.sum, (ce(0, 0, 0) + ce(0, 1, 2) + end_mean) / 2, 1e-12);

  // Chunking does not change the logits.
  QaFixture g(d, 0.0, 0);
  g.params.values() = f.params.values();
  EXPECT_TRUE(g.head->logits(g.params, x1, x2, ctx).isApprox(logits, 1e-14));

  // Nothing counted: loss 0, zero gradients.
  const std::vector<Token> none = {3, 100};
  Matrix<double> dcat(2 * d, batch * length);
  f.params.zero_grad();
  const QuestionAnsweringLoss z =
      f.head->backward(f.params, x1, x2, {none, none}, 1.0, ctx, dcat, Reduction::kMean);
  EXPECT_EQ(z.mean, 0.0);
  EXPECT_EQ(dcat.norm(), 0.0);
  EXPECT_EQ(f.params.grads().norm(), 0.0);
}

TEST(QuestionAnsweringHead, ParameterNames) {
  QaFixture f(3, 0.0);
  const std::vector<std::string> names = {"reformer.encoder.layer_norm.weight",
                                          "reformer.encoder.layer_norm.bias", "qa_outputs.weight",
                                          "qa_outputs.bias"};
  ASSERT_EQ(f.params.num_slots(), 4);
  for (SlotId id = 0; id < 4; ++id) EXPECT_EQ(f.params.slot(id).name, names[id]);
  EXPECT_EQ(f.params.slot(2).shape, (std::vector<Index>{2, 6}));
}

TEST(QuestionAnsweringHead, Errors) {
  const Index d = 4, batch = 2, length = 3;
  QaFixture f(d, 0.0);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(3));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(4));
  const Context ctx = test::head_context(batch, false);
  const std::vector<Token> two = {0, 1}, one = {0};
  test::expect_throw_with(
      [&] {
        f.head->loss(f.params, x1, x2, {one, two}, ctx);
      },
      {"start_positions.size() = 1", "batch = 2"});
  test::expect_throw_with(
      [&] {
        f.head->loss(f.params, x1, x2, {two, one}, ctx);
      },
      {"end_positions.size() = 1"});
  Matrix<double> small(d, batch * length);
  test::expect_throw_with(
      [&] {
        f.head->backward(f.params, x1, x2, {two, two}, 1.0, ctx, small);
      },
      {"dcat"});
  test::expect_throw_with([&] { f.head->logits(f.params, x1, x2, test::head_context(4, false)); },
                          {"ctx.batch = 4"});
}

}  // namespace
}  // namespace reformer
