// Checkpoints of a real ReformerLM: an HF-style checkpoint (HF names, HF config JSON, the tied
// lm_head.decoder.bias) loads and reproduces HF's logits; save -> load gives identical logits;
// a resumed training run (model + Adam + schedule + clipping) continues bit-identically; every
// truncation of a model checkpoint is rejected and the model keeps its weights.
#include "reformer/io/checkpoint.hpp"
#include "reformer/model/reformer_lm.hpp"

#include "support/compare.hpp"
#include "support/config.hpp"
#include "support/fixture.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace reformer::io {
namespace {

namespace fs = std::filesystem;

ReformerConfig tiny_config() {
  return test::SmallConfig().lsh_local_model().vocab(13).seed(7).dropout(
      /*hidden=*/0.1, /*lsh_probs=*/0.0, /*local_probs=*/0.1);
}

std::vector<Token> tiny_tokens() { return test::cycling_tokens(2 * 16, 5, 3, 13); }

using test::bitwise_equal;

class ModelCheckpoint : public test::TempDirTest {
 protected:
  ModelCheckpoint() : TempDirTest("model_ckpt_") {}
};

TEST_F(ModelCheckpoint, HuggingFaceStyleCheckpointReproducesHfLogits) {
  // Rebuild the file HF's save_pretrained would give: HF names, both LM-head bias names, the
  // HF config JSON in the metadata.
  const test::Fixture fx("model_local_lsh");
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("config", fx.meta("config"));
  for (const auto& name : fx.file().names()) {
    if (name.rfind("param.", 0) != 0) continue;
    w.add(name.substr(6), DType::F64, fx.shape(name), fx.values(name));
  }
  if (!w.contains("lm_head.decoder.bias")) {
    w.add("lm_head.decoder.bias", DType::F64, fx.shape("param.lm_head.bias"),
          fx.values("param.lm_head.bias"));
  }
  w.write(path("hf.safetensors"));

  ReformerLM<double> model(load_config(path("hf.safetensors")));
  const CheckpointInfo info = load_model(path("hf.safetensors"), model);
  EXPECT_EQ(info.tensors_loaded, static_cast<std::size_t>(model.parameters().num_slots()));
  std::vector<Token> tokens;
  for (std::int64_t t : fx.ints("tokens")) tokens.push_back(static_cast<Token>(t));
  BucketRecord buckets;
  buckets.layers.resize(static_cast<std::size_t>(model.num_layers()));
  buckets.layers[1] = fx.buckets("buckets.1");
  buckets.replay = true;
  const Matrix<double> logits = model.logits(tokens, fx.batch(), buckets);
  EXPECT_LT(test::relative_error(logits, fx.activations("logits")), 1e-9);
}

TEST_F(ModelCheckpoint, SaveLoadGivesIdenticalLogits) {
  const ReformerLM<float> a(tiny_config());
  save_model(path("a.safetensors"), a);
  const ReformerConfig cfg = load_config(path("a.safetensors"));
  EXPECT_EQ(config_to_json_string(cfg), config_to_json_string(a.config()));
  // The same config (its seed also keys the LSH rotations), other initial weights.
  ReformerLM<float> b(cfg);
  b.init(99);
  EXPECT_FALSE(bitwise_equal(b.parameters().values(), a.parameters().values()));
  load_model(path("a.safetensors"), b);
  EXPECT_TRUE(bitwise_equal(b.parameters().values(), a.parameters().values()));
  const auto tokens = tiny_tokens();
  const Matrix<float> la = a.logits(tokens, 2), lb = b.logits(tokens, 2);
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), sizeof(float) * la.size()), 0);

  // A model of another size rejects the file and keeps its weights.
  ReformerConfig wider = tiny_config();
  wider.feed_forward_size = 16;
  ReformerLM<float> c(wider);
  const Vector<float> before = c.parameters().values();
  EXPECT_THROW(load_model(path("a.safetensors"), c), IoError);
  EXPECT_TRUE(bitwise_equal(c.parameters().values(), before));
}

template <class S>
void train_steps(ReformerLM<S>& model, Adam<S>& opt, const LrSchedule& schedule, int steps) {
  const auto tokens = tiny_tokens();
  for (int k = 0; k < steps; ++k) {
    model.zero_grad();
    model.train_step(tokens, 2, static_cast<std::uint64_t>(opt.step_count()));
    clip_grad_norm(model.parameters(), 1.0);
    opt.step(model.parameters(), schedule);
  }
}

template <class S>
void check_resume(const std::string& file) {
  const auto schedule = LrSchedule::warmup_rsqrt(3e-3, 2);
  ReformerLM<S> a(tiny_config());
  Adam<S> opt_a(a.parameters(), AdamOptions::adamw(3e-3, 0.01), decay_except_bias_and_norm);
  train_steps(a, opt_a, schedule, 3);
  save_training_state(file, a, opt_a);
  train_steps(a, opt_a, schedule, 3);

  ReformerConfig cfg = load_config(file);
  cfg.seed = tiny_config().seed;  // the run's seed drives LSH rotations and dropout
  ReformerLM<S> b(cfg);
  Adam<S> opt_b(b.parameters(), AdamOptions::adamw(3e-3, 0.01), decay_except_bias_and_norm);
  load_training_state(file, b, opt_b);
  train_steps(b, opt_b, schedule, 3);
  EXPECT_TRUE(bitwise_equal(b.parameters().values(), a.parameters().values()));
  EXPECT_TRUE(bitwise_equal(opt_b.exp_avg_sq(), opt_a.exp_avg_sq()));
  EXPECT_EQ(opt_b.step_count(), 6);
}

TEST_F(ModelCheckpoint, ResumedTrainingIsBitIdentical) {
  check_resume<float>(path("f.safetensors"));
  check_resume<double>(path("d.safetensors"));
}

TEST_F(ModelCheckpoint, EveryTruncationIsRejectedAndTheModelKeepsItsWeights) {
  const ReformerLM<float> a(tiny_config());
  save_model(path("a.safetensors"), a);
  const auto full = SafetensorsFile::load(path("a.safetensors"));
  std::vector<char> bytes;
  {
    SafetensorsWriter w;  // re-serialise to get the bytes in memory
    for (const auto& kv : full.metadata()) w.set_metadata(kv.first, kv.second);
    for (const auto& name : full.names())
      w.add(name, DType::F32, full.info(name).shape, full.read<float>(name));
    bytes = w.serialize();
  }
  ReformerConfig other = tiny_config();
  other.seed = 3;
  ReformerLM<float> b(other);
  const Vector<float> before = b.parameters().values();
  // Every offset through the header and the first tensors, then a stride through the data
  // (the safetensors and checkpoint suites cut a small file at every single offset).
  for (std::size_t n = 0; n < bytes.size(); n += n < 4096 ? 1 : 37) {
    const std::vector<char> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(load_parameters(SafetensorsFile::parse(cut, "cut"), b.parameters()), IoError) << n;
  }
  EXPECT_TRUE(bitwise_equal(b.parameters().values(), before));
  load_parameters(SafetensorsFile::parse(bytes, "full"), b.parameters());
  EXPECT_TRUE(bitwise_equal(b.parameters().values(), a.parameters().values()));
}

}  // namespace
}  // namespace reformer::io
