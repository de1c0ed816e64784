// io::Checkpoint: save (model, optimizer, user JSON) -> open -> config, step, user settings,
// restore; every bad input is an error naming the file; a failed save leaves the old file.
#include "reformer/io/checkpoint.hpp"
#include "reformer/model/reformer_lm.hpp"

#include "support/compare.hpp"
#include "support/config.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace reformer::io {
namespace checkpoint_class_test {

using test::expect_throw_with;

/// HF's default dropout stays on, so the resumed steps must draw the same masks.
ReformerConfig small_config() {
  return test::SmallConfig().lsh_local_model().vocab(11).seed(5).dropout(
      /*hidden=*/0.05, /*lsh_probs=*/0.0, /*local_probs=*/0.05);
}

std::vector<Token> tokens() { return test::cycling_tokens(2 * 16, 7, 2, 11); }

/// Moves every parameter away from its initial value (other weights, same shapes).
template <class S>
void perturb(ReformerLM<S>& model, double by) {
  model.parameters().values().array() += static_cast<S>(by);
}

class CheckpointClass : public test::TempDirTest {
 protected:
  CheckpointClass() : TempDirTest("ckpt_class_") {}
};

TEST_F(CheckpointClass, SaveOpenRestoreResumesBitIdentically) {
  ReformerLM<float> model(small_config());
  Adam<float> opt(model.parameters(), AdamOptions::adam(1e-2));
  const auto t = tokens();
  for (std::uint64_t s = 0; s < 3; ++s) {
    model.zero_grad();
    model.train_step(t, 2, s);
    opt.step(model.parameters());
  }
  Checkpoint::save(path("run.safetensors"), model, opt, {{"elapsed_s", 1.5}, {"name", "run"}});

  const Checkpoint ck = Checkpoint::open(path("run.safetensors"));
  EXPECT_EQ(ck.path(), path("run.safetensors"));
  EXPECT_EQ(config_to_json_string(ck.config()), config_to_json_string(model.config()));
  EXPECT_TRUE(ck.has_optimizer());
  EXPECT_EQ(ck.step(), 3);
  EXPECT_EQ(ck.user_value<double>("elapsed_s"), 1.5);
  EXPECT_EQ(ck.user_value<std::string>("name"), "run");

  ReformerLM<float> resumed(ck.config());
  perturb(resumed, 0.25);
  Adam<float> resumed_opt(resumed.parameters(), AdamOptions::adam(1e-2));
  ck.restore(resumed, resumed_opt);
  EXPECT_EQ(resumed_opt.step_count(), 3);
  EXPECT_TRUE(test::bitwise_equal(resumed.parameters().values(), model.parameters().values()));
  EXPECT_TRUE(test::bitwise_equal(resumed_opt.exp_avg(), opt.exp_avg()));
  EXPECT_TRUE(test::bitwise_equal(resumed_opt.exp_avg_sq(), opt.exp_avg_sq()));

  // One more step on both: identical parameters.
  for (auto* m : {&model, &resumed}) {
    m->zero_grad();
    m->train_step(t, 2, 3);
  }
  opt.step(model.parameters());
  resumed_opt.step(resumed.parameters());
  EXPECT_TRUE(test::bitwise_equal(resumed.parameters().values(), model.parameters().values()));

  // The temporary file of the atomic write is gone.
  EXPECT_EQ(files_in_dir(), 1u);
}

TEST_F(CheckpointClass, ModelOnlyCheckpoint) {
  ReformerLM<double> model(small_config());
  Checkpoint::save(path("m.safetensors"), model);
  const Checkpoint ck = Checkpoint::open(path("m.safetensors"));
  EXPECT_FALSE(ck.has_optimizer());
  EXPECT_EQ(ck.step(), 0);
  EXPECT_TRUE(ck.user().empty());
  ReformerLM<double> other(ck.config());
  perturb(other, 0.25);
  ck.restore(other);
  const auto t = tokens();
  const Matrix<double> a = model.logits(t, 2), b = other.logits(t, 2);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(double) * a.size()), 0);
  // No optimizer state to restore: IoError naming the file; the model keeps its weights.
  Adam<double> opt(other.parameters(), AdamOptions::adam(1e-3));
  perturb(other, 0.5);
  const Vector<double> before = other.parameters().values();
  expect_throw_with<IoError>([&] { ck.restore(other, opt); }, {path("m.safetensors"), "optimizer"});
  EXPECT_TRUE(test::bitwise_equal(other.parameters().values(), before));
}

TEST_F(CheckpointClass, ErrorsNameTheFileAndTheProblem) {
  expect_throw_with<IoError>([&] { Checkpoint::open(path("missing.safetensors")); },
                             {"missing.safetensors"});

  ReformerLM<float> model(small_config());
  Checkpoint::save(path("a.safetensors"), model, {{"steps", 10}});
  const Checkpoint ck = Checkpoint::open(path("a.safetensors"));
  expect_throw_with<IoError>([&] { ck.user_value<int>("lr"); }, {"a.safetensors", "'lr'"});
  expect_throw_with<IoError>([&] { ck.user_value<std::string>("steps"); },
                             {"a.safetensors", "'steps'", "wrong type"});
  expect_throw_with<InvalidArgument>(
      [&] { Checkpoint::save(path("b.safetensors"), model, nlohmann::json::array()); },
      {"JSON object"});

  // A parameters-only file has no config.
  save_parameters(path("params.safetensors"), model.parameters());
  const Checkpoint plain = Checkpoint::open(path("params.safetensors"));
  EXPECT_FALSE(plain.has_config());
  expect_throw_with<IoError>([&] { plain.config(); }, {"params.safetensors", "config"});

  // User metadata that is not a JSON object.
  SafetensorsWriter w;
  add_parameters(w, model.parameters());
  w.set_metadata("user", "[1, 2");
  w.write(path("bad_user.safetensors"));
  expect_throw_with<IoError>([&] { Checkpoint::open(path("bad_user.safetensors")); },
                             {"bad_user.safetensors", "user"});
  // The layout reserves the key for Checkpoint.
  expect_throw_with<InvalidArgument>(
      [&] {
        save_parameters(path("c.safetensors"), model.parameters(), "", DType::F32,
                        {{"user", "{}"}});
      },
      {"reserved"});
}

TEST_F(CheckpointClass, FailedSaveKeepsTheOldFile) {
  ReformerLM<float> model(small_config());
  Checkpoint::save(path("a.safetensors"), model, {{"v", 1}});
  model.parameters().values()[5] = std::numeric_limits<float>::quiet_NaN();
  expect_throw_with<InvalidArgument>(
      [&] {
        Checkpoint::save(path("a.safetensors"), model, {{"v", 2}});
      },
      {"reformer.embeddings.word_embeddings.weight", "not finite"});
  EXPECT_EQ(Checkpoint::open(path("a.safetensors")).user_value<int>("v"), 1);
}

}  // namespace checkpoint_class_test
}  // namespace reformer::io
