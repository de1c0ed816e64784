// ClassificationHead: gradients (double, with and without dropout), HF's semantics (first
// position, cross-entropy or squared error, ignored labels), configuration and target errors.
#include "reformer/model/classification_head.hpp"

#include "head_test_util.hpp"
#include "support/errors.hpp"
#include "support/random.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace reformer {
namespace {

using test::random_matrix;

struct HeadFixture {
  HeadFixture(Index d, Index labels, double dropout, double classifier_dropout) {
    ClassificationHeadConfig cfg;
    cfg.hidden_size = d;
    cfg.num_labels = labels;
    cfg.dropout = dropout;
    cfg.classifier_dropout = classifier_dropout;
    cfg.layer_norm_eps = 1e-12;
    head.emplace(cfg, params);
    head->init(params, Rng(5), 0.3);
    // Non-trivial LayerNorm affine parameters and biases.
    for (SlotId id = 0; id < params.num_slots(); ++id) {
      const std::string& name = params.slot(id).name;
      if (name.find("bias") != std::string::npos || name.find("layer_norm") != std::string::npos) {
        auto v = params.value_vector(id);
        for (Index i = 0; i < v.size(); ++i) {
          v[i] +=
              0.2 * Rng(40 + static_cast<std::uint64_t>(id)).normal(static_cast<std::uint64_t>(i));
        }
      }
    }
  }
  Parameters<double> params;
  std::optional<ClassificationHead<double>> head;
};

void check_classification(Index labels, double dropout, bool training, Reduction reduction) {
  const Index d = 6, batch = 3, length = 4;
  HeadFixture f(d, labels, dropout, dropout / 2);
  Matrix<double> x1 = random_matrix(d, batch * length, Rng(1));
  Matrix<double> x2 = random_matrix(d, batch * length, Rng(2));
  const Context ctx = test::head_context(batch, training);
  const std::vector<Token> classes = {2, 0, 1};
  const std::vector<double> values = {0.5, -1.0, 2.0};
  const ClassificationTargets targets =
      labels == 1 ? ClassificationTargets(values) : ClassificationTargets(classes);
  auto loss = [&] {
    const CrossEntropyResult r = f.head->loss(f.params, x1, x2, targets, ctx);
    return reduction == Reduction::kMean ? r.mean : r.sum;
  };
  auto backward = [&](double scale, MatrixRef<double> dcat) {
    f.head->backward(f.params, x1, x2, targets, scale, ctx, dcat, reduction);
  };
  test::check_head_gradients(f.params, x1, x2, loss, backward);
}

TEST(ClassificationHead, GradientsClassification) {
  check_classification(3, 0.0, false, Reduction::kSum);
  check_classification(3, 0.0, false, Reduction::kMean);
}

TEST(ClassificationHead, GradientsClassificationWithDropout) {
  check_classification(3, 0.3, true, Reduction::kSum);
}

TEST(ClassificationHead, GradientsRegression) {
  check_classification(1, 0.0, false, Reduction::kMean);
  check_classification(1, 0.3, true, Reduction::kSum);
}

TEST(ClassificationHead, ReadsOnlyTheFirstPositionAndMatchesAPlainForward) {
  const Index d = 4, batch = 2, length = 5, labels = 3;
  HeadFixture f(d, labels, 0.0, 0.0);
  Matrix<double> x1 = random_matrix(d, batch * length, Rng(3));
  Matrix<double> x2 = random_matrix(d, batch * length, Rng(4));
  const Context ctx = test::head_context(batch, false);
  const Matrix<double> logits = f.head->logits(f.params, x1, x2, ctx);
  ASSERT_EQ(logits.rows(), labels);
  ASSERT_EQ(logits.cols(), batch);
  // Plain recomputation of HF's head on position 0.
  const auto& p = f.params;
  for (Index b = 0; b < batch; ++b) {
    Vector<double> cat(2 * d);
    cat << x1.col(b * length), x2.col(b * length);
    const double mean = cat.mean();
    const double var = (cat.array() - mean).square().mean();
    const Vector<double> h =
        ((cat.array() - mean) / std::sqrt(var + 1e-12))
            .matrix()
            .cwiseProduct(p.value_vector(p.id_of("reformer.encoder.layer_norm.weight"))) +
        p.value_vector(p.id_of("reformer.encoder.layer_norm.bias"));
    const Vector<double> a = (p.value(p.id_of("classifier.dense.weight")) * h +
                              p.value_vector(p.id_of("classifier.dense.bias")))
                                 .array()
                                 .tanh()
                                 .matrix();
    const Vector<double> expect = p.value(p.id_of("classifier.out_proj.weight")) * a +
                                  p.value_vector(p.id_of("classifier.out_proj.bias"));
    for (Index l = 0; l < labels; ++l) EXPECT_NEAR(logits(l, b), expect(l), 1e-12);
  }
  // The other positions do not matter.
  x1.col(1).setConstant(7.0);
  x2.col(length + 3).setConstant(-3.0);
  EXPECT_EQ(f.head->logits(f.params, x1, x2, ctx), logits);
}

TEST(ClassificationHead, LossIsHfMeanAndSkipsNegativeLabels) {
  const Index d = 4, batch = 3, length = 2;
  HeadFixture f(d, 3, 0.0, 0.0);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(5));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(6));
  const Context ctx = test::head_context(batch, false);
  const Matrix<double> logits = f.head->logits(f.params, x1, x2, ctx);
  const std::vector<Token> labels = {1, -100, 2};
  auto ce = [&](Index b, Index t) {
    return std::log(logits.col(b).array().exp().sum()) - logits(t, b);
  };
  const CrossEntropyResult r = f.head->loss(f.params, x1, x2, labels, ctx);
  EXPECT_EQ(r.count, 2);
  EXPECT_NEAR(r.sum, ce(0, 1) + ce(2, 2), 1e-12);
  EXPECT_NEAR(r.mean, r.sum / 2, 1e-15);

  // An ignored example contributes no gradient.
  Matrix<double> dcat(2 * d, batch * length);
  f.params.zero_grad();
  f.head->backward(f.params, x1, x2, labels, 1.0, ctx, dcat);
  EXPECT_EQ(dcat.col(1 * length).norm(), 0.0);
  EXPECT_GT(dcat.col(0).norm(), 0.0);
  EXPECT_EQ(dcat.col(1).norm(), 0.0);  // not a first position
}

TEST(ClassificationHead, RegressionIsTheSquaredError) {
  const Index d = 4, batch = 2, length = 3;
  HeadFixture f(d, 1, 0.0, 0.0);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(7));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(8));
  const Context ctx = test::head_context(batch, false);
  const Matrix<double> logits = f.head->logits(f.params, x1, x2, ctx);
  const std::vector<double> values = {0.25, -2.0};
  const CrossEntropyResult r = f.head->loss(f.params, x1, x2, values, ctx);
  const double e0 = logits(0, 0) - 0.25, e1 = logits(0, 1) + 2.0;
  EXPECT_NEAR(r.sum, e0 * e0 + e1 * e1, 1e-12);
  EXPECT_NEAR(r.mean, (e0 * e0 + e1 * e1) / 2, 1e-12);
}

TEST(ClassificationHead, DropoutOnlyInTraining) {
  const Index d = 8, batch = 2, length = 3;
  HeadFixture f(d, 3, 0.4, 0.4);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(9));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(10));
  const Matrix<double> eval = f.head->logits(f.params, x1, x2, test::head_context(batch, false));
  const Matrix<double> train = f.head->logits(f.params, x1, x2, test::head_context(batch, true));
  EXPECT_GT((eval - train).norm(), 1e-3);
  EXPECT_EQ(train, f.head->logits(f.params, x1, x2, test::head_context(batch, true)));
}

TEST(ClassificationHead, ParameterNamesAndShapes) {
  HeadFixture f(5, 4, 0.0, 0.0);
  const auto& p = f.params;
  const std::vector<std::pair<std::string, std::vector<Index>>> expect = {
      {"reformer.encoder.layer_norm.weight", {10}}, {"reformer.encoder.layer_norm.bias", {10}},
      {"classifier.dense.weight", {5, 10}},         {"classifier.dense.bias", {5}},
      {"classifier.out_proj.weight", {4, 5}},       {"classifier.out_proj.bias", {4}}};
  ASSERT_EQ(p.num_slots(), static_cast<Index>(expect.size()));
  for (SlotId id = 0; id < p.num_slots(); ++id) {
    EXPECT_EQ(p.slot(id).name, expect[static_cast<std::size_t>(id)].first);
    EXPECT_EQ(p.slot(id).shape, expect[static_cast<std::size_t>(id)].second);
  }
  // HF initialisation: zero biases, unit LayerNorm weight, normal weights.
  Parameters<double> fresh;
  ClassificationHeadConfig cfg;
  cfg.hidden_size = 5;
  cfg.num_labels = 4;
  ClassificationHead<double> head(cfg, fresh);
  head.init(fresh, Rng(1), 0.02);
  EXPECT_EQ(fresh.value_vector(fresh.id_of("classifier.dense.bias")).norm(), 0.0);
  EXPECT_EQ(fresh.value_vector(fresh.id_of("reformer.encoder.layer_norm.weight")).sum(), 10.0);
  EXPECT_GT(fresh.value_vector(fresh.id_of("classifier.out_proj.weight")).norm(), 0.0);
  EXPECT_NE(fresh.value(fresh.id_of("classifier.out_proj.weight"))(0, 0),
            fresh.value(fresh.id_of("classifier.dense.weight"))(0, 0));
}

struct ModelConfigWithoutClassifierDropout {
  Index hidden_size = 8;
  Index num_labels = 3;
  double layer_norm_eps = 1e-6;
  double hidden_dropout_prob = 0.1;
};
struct ModelConfigWithClassifierDropout : ModelConfigWithoutClassifierDropout {
  double classifier_dropout = -1.0;
};

TEST(ClassificationHead, ConfigFromModelConfig) {
  const auto a = ClassificationHeadConfig::from(ModelConfigWithoutClassifierDropout{});
  EXPECT_EQ(a.hidden_size, 8);
  EXPECT_EQ(a.num_labels, 3);
  EXPECT_EQ(a.layer_norm_eps, 1e-6);
  EXPECT_EQ(a.classifier_dropout, 0.1);
  ModelConfigWithClassifierDropout m;
  EXPECT_EQ(ClassificationHeadConfig::from(m).classifier_dropout, 0.1);  // unset
  m.classifier_dropout = 0.25;
  EXPECT_EQ(ClassificationHeadConfig::from(m).classifier_dropout, 0.25);
  EXPECT_EQ(ClassificationHeadConfig::from(m).dropout, 0.1);
}

TEST(ClassificationHead, Errors) {
  const Index d = 4, batch = 2, length = 3;
  HeadFixture f(d, 3, 0.0, 0.0);
  const Matrix<double> x1 = random_matrix(d, batch * length, Rng(11));
  const Matrix<double> x2 = random_matrix(d, batch * length, Rng(12));
  const Context ctx = test::head_context(batch, false);
  Matrix<double> dcat(2 * d, batch * length);
  test::expect_throw_with(
      [&] {
        f.head->loss(f.params, x1, x2, std::vector<Token>{0, 3}, ctx);
      },
      {"ClassificationHead::loss", "targets[1] = 3", "num_labels = 3"});
  test::expect_throw_with(
      [&] {
        f.head->backward(f.params, x1, x2, std::vector<Token>{0, 7}, 1.0, ctx, dcat);
      },
      {"ClassificationHead::backward", "targets[1] = 7"});
  test::expect_throw_with([&] { f.head->loss(f.params, x1, x2, std::vector<Token>{0}, ctx); },
                          {"targets.size() = 1", "batch = 2"});
  test::expect_throw_with(
      [&] {
        f.head->loss(f.params, x1, x2, std::vector<double>{0.5, 1.0}, ctx);
      },
      {"num_labels = 3", "class ids"});
  test::expect_throw_with(
      [&] {
        Matrix<double> small(2 * d, 1);
        f.head->backward(f.params, x1, x2, std::vector<Token>{0, 1}, 1.0, ctx, small);
      },
      {"dcat"});
  test::expect_throw_with([&] { f.head->logits(f.params, x1, x2.leftCols(4), ctx); }, {"x2"});
  const Context odd = test::head_context(4, false);
  test::expect_throw_with([&] { f.head->logits(f.params, x1, x2, odd); }, {"ctx.batch = 4"});

  HeadFixture r(d, 1, 0.0, 0.0);
  test::expect_throw_with(
      [&] {
        r.head->loss(r.params, x1, x2, std::vector<Token>{0, 0}, ctx);
      },
      {"regression", "real values"});
  test::expect_throw_with(
      [&] {
        r.head->loss(r.params, x1, x2, std::vector<double>{0.5, NAN}, ctx);
      },
      {"targets[1]", "finite"});

  Parameters<double> p;
  ClassificationHeadConfig bad;
  bad.hidden_size = 4;
  bad.num_labels = 0;
  test::expect_throw_with<ConfigError>([&] { ClassificationHead<double> h(bad, p); },
                                       {"num_labels = 0"});
  bad.num_labels = 2;
  bad.classifier_dropout = 1.0;
  test::expect_throw_with<ConfigError>([&] { ClassificationHead<double> h(bad, p); },
                                       {"classifier_dropout = 1"});
}

}  // namespace
}  // namespace reformer
