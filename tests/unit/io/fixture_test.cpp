// The fixture loader reads every reference file into the library's types.
#include "support/fixture.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer::test {
namespace {

TEST(Fixture, AttentionFileActivationsAndBuckets) {
  Fixture fx("lsh_attention_causal");
  EXPECT_EQ(fx.batch(), 2);
  EXPECT_EQ(fx.length(), 24);
  EXPECT_EQ(fx.meta("kind"), "lsh");
  const auto cfg = fx.config();
  EXPECT_EQ(cfg.at("hidden_size").get<int>(), 24);
  EXPECT_EQ(cfg.at("num_hashes").get<int>(), 2);

  const Matrix<double> x = fx.activations("input");
  ASSERT_EQ(x.rows(), 24);
  ASSERT_EQ(x.cols(), 2 * 24);
  // Column (b*T + t) holds input[b, t, :]: compare with the flat row-major values.
  const auto flat = fx.values("input");
  const Index b = 1, t = 5, d = 7;
  EXPECT_EQ(x(d, b * 24 + t), flat[static_cast<std::size_t>((b * 24 + t) * 24 + d)]);
  const Matrix<float> xf = fx.activations<float>("input");
  EXPECT_EQ(xf(d, b * 24 + t), static_cast<float>(x(d, b * 24 + t)));

  const BucketTape tape = fx.buckets();
  EXPECT_EQ(tape.batch, 2);
  EXPECT_EQ(tape.heads, 2);
  EXPECT_EQ(tape.rounds, 2);
  EXPECT_EQ(tape.length, 24);
  const auto ints = fx.ints("buckets");
  for (std::size_t i = 0; i < ints.size(); ++i) {
    ASSERT_EQ(tape.data[i], ints[i]);
    ASSERT_GE(tape.data[i], 0);
    ASSERT_LT(tape.data[i], 4);
  }
}

TEST(Fixture, LoadParamsAndCompareGradients) {
  Fixture fx("local_attention_causal");
  Parameters<double> p;
  p.add("attn.layer_norm.weight", {24});
  p.add("attn.layer_norm.bias", {24});
  p.add("attn.self_attention.query.weight", {12, 24});
  p.add("attn.self_attention.key.weight", {12, 24});
  p.add("attn.self_attention.value.weight", {12, 24});
  p.add("attn.output.dense.weight", {24, 12});
  p.add("other.weight", {3});  // outside the prefix: ignored
  EXPECT_EQ(fx.load_params(p, "attn."), 6u);
  const auto ref = fx.values("param.self_attention.key.weight");
  const auto w = p.value(p.id_of("attn.self_attention.key.weight"));
  EXPECT_EQ(w(3, 5), ref[3 * 24 + 5]);  // [out, in] row-major

  // Gradients equal to the reference → error 0; perturb one → that tensor is reported.
  for (SlotId id = 0; id + 1 < p.num_slots(); ++id) {
    const auto g = fx.values("grad." + p.slot(id).name.substr(5));
    for (Index i = 0; i < p.slot(id).size; ++i)
      p.grad_vector(id)[i] = g[static_cast<std::size_t>(i)];
  }
  GradError e = fx.max_grad_error(p, "attn.");
  EXPECT_EQ(e.error, 0.0);
  EXPECT_EQ(e.compared, 6u);
  const SlotId v = p.id_of("attn.self_attention.value.weight");
  const double scale = p.grad_vector(v).cwiseAbs().maxCoeff();
  p.grad_vector(v)[7] += 1e-3 * scale;
  e = fx.max_grad_error(p, "attn.");
  EXPECT_EQ(e.name, "attn.self_attention.value.weight");
  EXPECT_NEAR(e.error, 1e-3, 1e-12);
}

TEST(Fixture, MismatchesThrow) {
  Fixture fx("lsh_attention_causal");
  Parameters<double> wrong_shape;
  wrong_shape.add("layer_norm.weight", {23});
  EXPECT_THROW(fx.load_params(wrong_shape), IoError);
  Parameters<double> missing;
  missing.add("not_in_file.weight", {2});
  EXPECT_THROW(fx.load_params(missing), IoError);
  EXPECT_THROW(fx.activations("buckets"), IoError);
  EXPECT_THROW(fx.buckets("input"), IoError);
  EXPECT_THROW(fx.values("no_such_tensor"), IoError);
  EXPECT_THROW(fx.meta("no_such_key"), IoError);
  EXPECT_THROW(Fixture("no_such_fixture"), IoError);
}

TEST(Fixture, ModelFileLoadsIntoAStoreWithHfNames) {
  Fixture fx("model_lsh_3rounds");
  Parameters<double> p;
  for (const auto& n : fx.file().names()) {
    if (n.rfind("param.", 0) != 0 || n == "param.lm_head.decoder.bias") continue;
    std::vector<Index> shape(fx.shape(n).begin(), fx.shape(n).end());
    p.add(n.substr(6), shape);
  }
  EXPECT_EQ(fx.load_params(p), static_cast<std::size_t>(p.num_slots()));
  EXPECT_EQ(fx.buckets("buckets.2").rounds, 3);
  EXPECT_EQ(fx.activations("logits").rows(), 29);
  EXPECT_EQ(fx.ints("tokens").size(), 48u);
}

}  // namespace
}  // namespace reformer::test
