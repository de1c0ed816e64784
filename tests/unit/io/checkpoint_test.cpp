// Checkpoints of a Parameters store and the Adam state: bit-exact round trips in F32 / F64,
// cross-dtype loading, all-or-nothing loading of bad files (the store keeps its values), and a
// bit-identical resumed training run.
#include "reformer/io/checkpoint.hpp"

#include "support/compare.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace reformer::io {
namespace {

namespace fs = std::filesystem;

template <class S>
Parameters<S> make_store(double phase = 0.0) {
  Parameters<S> p;
  p.add("reformer.embeddings.word_embeddings.weight", {5, 4});
  p.add("reformer.encoder.layer_norm.weight", {8});
  p.add("reformer.embeddings.position_embeddings.weights.0", {3, 1, 2});
  p.add("lm_head.bias", {5});
  for (Index i = 0; i < p.size(); ++i)
    p.values()[i] = static_cast<S>(std::sin(0.7 * static_cast<double>(i) + phase) / 3.0);
  return p;
}

using test::bitwise_equal;

class Checkpoint : public test::TempDirTest {
 protected:
  Checkpoint() : TempDirTest("ckpt_") {}

  static std::vector<char> read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  }
  static void write_bytes(const std::string& p, const std::vector<char>& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  // Expects loading `file` into a fresh store to throw reformer::Error mentioning `needle` and
  // to leave the store's values bitwise unchanged.
  void expect_rejected(const std::string& file, const std::string& needle,
                       const LoadOptions& options = {}) {
    Parameters<double> p = make_store<double>(1.0);
    const Vector<double> before = p.values();
    try {
      load_parameters(file, p, options);
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(bitwise_equal(p.values(), before));
  }
};

TEST_F(Checkpoint, RoundTripIsBitExactInBothDtypes) {
  const Parameters<double> d = make_store<double>();
  save_parameters(path("d.safetensors"), d, "{\"hidden_size\": 4}");
  Parameters<double> d2 = make_store<double>(2.0);
  const CheckpointInfo info = load_parameters(path("d.safetensors"), d2);
  EXPECT_TRUE(bitwise_equal(d2.values(), d.values()));
  EXPECT_EQ(info.tensors_loaded, 4u);
  EXPECT_EQ(info.config_json(), "{\"hidden_size\": 4}");
  EXPECT_EQ(info.metadata.at("format"), "pt");
  EXPECT_EQ(info.metadata.at("reformer.checkpoint"), "1");
  EXPECT_EQ(info.metadata.at("reformer.version"), REFORMER_VERSION_STRING);
  const auto file = SafetensorsFile::load(path("d.safetensors"));
  EXPECT_EQ(file.info("reformer.embeddings.position_embeddings.weights.0").shape,
            (std::vector<std::int64_t>{3, 1, 2}));
  EXPECT_EQ(file.info("lm_head.bias").dtype, DType::F64);

  const Parameters<float> f = make_store<float>();
  save_parameters(path("f.safetensors"), f);
  Parameters<float> f2 = make_store<float>(2.0);
  load_parameters(path("f.safetensors"), f2);
  EXPECT_TRUE(bitwise_equal(f2.values(), f.values()));
  EXPECT_EQ(SafetensorsFile::load(path("f.safetensors")).info("lm_head.bias").dtype, DType::F32);

  // Saving the same store twice gives identical bytes.
  save_parameters(path("d_again.safetensors"), d, "{\"hidden_size\": 4}");
  EXPECT_EQ(read_bytes(path("d.safetensors")), read_bytes(path("d_again.safetensors")));
}

TEST_F(Checkpoint, EitherDtypeLoadsIntoEitherStore) {
  const Parameters<double> d = make_store<double>();
  save_parameters(path("as_f32.safetensors"), d, "", DType::F32);
  EXPECT_EQ(SafetensorsFile::load(path("as_f32.safetensors")).info("lm_head.bias").dtype,
            DType::F32);
  Parameters<float> f = make_store<float>(2.0);
  load_parameters(path("as_f32.safetensors"), f);
  EXPECT_TRUE(bitwise_equal(f.values(), Vector<float>(d.values().cast<float>())));
  Parameters<double> d2 = make_store<double>(2.0);
  load_parameters(path("as_f32.safetensors"), d2);
  EXPECT_TRUE(bitwise_equal(d2.values(), Vector<double>(d.values().cast<float>().cast<double>())));

  save_parameters(path("d.safetensors"), d);  // F64 into a float store: rounded
  Parameters<float> f2 = make_store<float>(2.0);
  load_parameters(path("d.safetensors"), f2);
  EXPECT_TRUE(bitwise_equal(f2.values(), Vector<float>(d.values().cast<float>())));
}

TEST_F(Checkpoint, SaveRefusesBadInput) {
  Parameters<double> p = make_store<double>();
  EXPECT_THROW(save_parameters(path("x.safetensors"), p, "", DType::I32), InvalidArgument);
  p.values()[3] = std::numeric_limits<double>::quiet_NaN();
  try {
    save_parameters(path("x.safetensors"), p);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "parameter 'reformer.embeddings.word_embeddings.weight'(3, 0) = nan"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(path("x.safetensors")));
  Parameters<double> reserved;
  reserved.add("optimizer.m.x", {1});
  EXPECT_THROW(save_parameters(path("x.safetensors"), reserved), InvalidArgument);
  EXPECT_THROW(save_parameters(path("no_dir/x.safetensors"), make_store<double>()), IoError);
}

TEST_F(Checkpoint, MismatchedFilesAreRejectedAndTheStoreKeepsItsValues) {
  const Parameters<double> good = make_store<double>();
  // Wrong shape.
  {
    Parameters<double> p;
    p.add("reformer.embeddings.word_embeddings.weight", {4, 5});
    p.add("reformer.encoder.layer_norm.weight", {8});
    p.add("reformer.embeddings.position_embeddings.weights.0", {3, 1, 2});
    p.add("lm_head.bias", {5});
    save_parameters(path("shape.safetensors"), p);
    expect_rejected(path("shape.safetensors"),
                    "has shape [4, 5], parameter "
                    "'reformer.embeddings.word_embeddings.weight' needs [5, 4]");
  }
  // Missing tensor.
  {
    Parameters<double> p;
    p.add("reformer.embeddings.word_embeddings.weight", {5, 4});
    p.add("reformer.encoder.layer_norm.weight", {8});
    p.add("lm_head.bias", {5});
    save_parameters(path("missing.safetensors"), p);
    expect_rejected(path("missing.safetensors"),
                    "no tensor for parameter 'reformer.embeddings.position_embeddings.weights.0'");
  }
  // Unknown tensor (accepted with allow_unknown).
  {
    Parameters<double> p = make_store<double>();
    p.add("extra.weight", {2});
    save_parameters(path("unknown.safetensors"), p);
    expect_rejected(path("unknown.safetensors"), "tensor 'extra.weight' matches no parameter");
    Parameters<double> q = make_store<double>(1.0);
    LoadOptions lenient;
    lenient.allow_unknown = true;
    EXPECT_EQ(load_parameters(path("unknown.safetensors"), q, lenient).tensors_loaded, 4u);
    EXPECT_TRUE(bitwise_equal(q.values(), good.values()));
  }
  // Integer dtype, non-finite value, value that overflows float.
  {
    SafetensorsWriter w;
    const auto& slots = good.slots();
    for (const auto& s : slots) {
      std::vector<std::int64_t> shape(s.shape.begin(), s.shape.end());
      if (s.name == "lm_head.bias") {
        w.add(s.name, DType::I64, shape, std::vector<std::int64_t>(5, 1));
      } else {
        w.add(s.name, DType::F64, shape, good.values().data() + s.offset,
              static_cast<std::size_t>(s.size));
      }
    }
    w.write(path("int.safetensors"));
    expect_rejected(path("int.safetensors"), "'lm_head.bias' has dtype I64");
  }
  {
    Parameters<double> p = make_store<double>();
    SafetensorsWriter w;
    for (const auto& s : p.slots()) {
      std::vector<double> v(p.values().data() + s.offset, p.values().data() + s.offset + s.size);
      if (s.name == "reformer.encoder.layer_norm.weight")
        v[2] = std::numeric_limits<double>::infinity();
      if (s.name == "lm_head.bias") v[1] = 1e300;
      w.add(s.name, DType::F64, std::vector<std::int64_t>(s.shape.begin(), s.shape.end()), v);
    }
    w.write(path("inf.safetensors"));
    expect_rejected(path("inf.safetensors"),
                    "tensor 'reformer.encoder.layer_norm.weight'(2, 0) = inf is not finite");
    // 1e300 is finite in double but not in float.
    Parameters<float> f = make_store<float>(1.0);
    const Vector<float> before = f.values();
    EXPECT_THROW(load_parameters(path("inf.safetensors"), f), IoError);
    EXPECT_TRUE(bitwise_equal(f.values(), before));
  }
  // Unsupported layout version.
  {
    SafetensorsWriter w;
    w.set_metadata("reformer.checkpoint", "99");
    for (const auto& s : good.slots())
      w.add(s.name, DType::F64, std::vector<std::int64_t>(s.shape.begin(), s.shape.end()),
            good.values().data() + s.offset, static_cast<std::size_t>(s.size));
    w.write(path("v99.safetensors"));
    expect_rejected(path("v99.safetensors"), "layout version '99' is not supported");
  }
  expect_rejected(path("does_not_exist.safetensors"), "cannot open");
}

TEST_F(Checkpoint, EveryTruncationAndCorruptHeaderIsRejected) {
  Parameters<double> small;
  small.add("a.weight", {2, 2});
  small.add("a.bias", {2});
  small.values() << 1, 2, 3, 4, 5, 6;
  save_parameters(path("small.safetensors"), small, "{\"k\": 1}");
  const std::vector<char> full = read_bytes(path("small.safetensors"));
  Parameters<double> target;
  target.add("a.weight", {2, 2});
  target.add("a.bias", {2});
  target.values().setConstant(-1.0);
  const Vector<double> before = target.values();
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::vector<char> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(load_parameters(SafetensorsFile::parse(cut, "cut"), target), IoError)
        << "cut at " << n;
    if (n % 16 == 0) {  // through a real file too (slower)
      write_bytes(path("cut.safetensors"), cut);
      EXPECT_THROW(load_parameters(path("cut.safetensors"), target), IoError) << "cut at " << n;
    }
    ASSERT_TRUE(bitwise_equal(target.values(), before)) << "cut at " << n;
  }
  // Header size beyond the file.
  std::vector<char> big = full;
  big[5] = 1;
  write_bytes(path("big.safetensors"), big);
  EXPECT_THROW(load_parameters(path("big.safetensors"), target), IoError);
  // Wrong JSON: break the opening brace's partner.
  std::vector<char> bad_json = full;
  bad_json[9] = ']';
  write_bytes(path("json.safetensors"), bad_json);
  EXPECT_THROW(load_parameters(path("json.safetensors"), target), IoError);
  EXPECT_TRUE(bitwise_equal(target.values(), before));
  // And the intact file does load.
  load_parameters(path("small.safetensors"), target);
  EXPECT_TRUE(bitwise_equal(target.values(), small.values()));
}

TEST_F(Checkpoint, HfTiedBiasAliasIsAccepted) {
  const Parameters<double> good = make_store<double>();
  // A file naming the LM-head bias only by its HF alias.
  SafetensorsWriter w;
  for (const auto& s : good.slots()) {
    const std::string name = s.name == "lm_head.bias" ? "lm_head.decoder.bias" : s.name;
    w.add(name, DType::F64, std::vector<std::int64_t>(s.shape.begin(), s.shape.end()),
          good.values().data() + s.offset, static_cast<std::size_t>(s.size));
  }
  w.write(path("alias.safetensors"));
  Parameters<double> p = make_store<double>(1.0);
  load_parameters(path("alias.safetensors"), p);
  EXPECT_TRUE(bitwise_equal(p.values(), good.values()));
  // Both names present (as in HF state dicts): the alias is skipped.
  w.add("lm_head.bias", DType::F64, {5}, std::vector<double>(5, 0.5));
  w.write(path("both.safetensors"));
  load_parameters(path("both.safetensors"), p);
  EXPECT_EQ(p.value_vector(p.id_of("lm_head.bias"))[0], 0.5);
}

// A toy quadratic loss over the store: gradient c_i (w_i - t_i).
template <class S>
void quadratic_grad(Parameters<S>& p) {
  for (Index i = 0; i < p.size(); ++i) {
    const S c = static_cast<S>(1 + i % 3), t = static_cast<S>(0.05 * static_cast<double>(i) - 0.4);
    p.grads()[i] = c * (p.values()[i] - t);
  }
}

template <class S>
void train(Parameters<S>& p, Adam<S>& opt, int steps, const LrSchedule& schedule) {
  for (int k = 0; k < steps; ++k) {
    quadratic_grad(p);
    clip_grad_norm(p, 1.0);
    opt.step(p, schedule);
  }
}

template <class S>
void resume_is_bit_identical(const std::string& file) {
  const auto schedule = LrSchedule::warmup_cosine(0.05, 2, 20, 0.001);
  const auto opts = AdamOptions::adamw(0.05, 0.01);
  Parameters<S> a = make_store<S>();
  Adam<S> opt_a(a, opts, decay_except_bias_and_norm);
  train(a, opt_a, 3, schedule);
  save_checkpoint(file, a, opt_a, "{}");
  train(a, opt_a, 3, schedule);

  Parameters<S> b = make_store<S>(5.0);  // other values, fresh optimizer
  Adam<S> opt_b(b, opts, decay_except_bias_and_norm);
  const CheckpointInfo info = load_checkpoint(file, b, opt_b);
  EXPECT_EQ(info.metadata.at("optimizer.step"), "3");
  EXPECT_EQ(info.metadata.at("optimizer.type"), "adamw");
  EXPECT_EQ(opt_b.step_count(), 3);
  train(b, opt_b, 3, schedule);
  EXPECT_TRUE(bitwise_equal(b.values(), a.values()));
  EXPECT_TRUE(bitwise_equal(opt_b.exp_avg(), opt_a.exp_avg()));
  EXPECT_TRUE(bitwise_equal(opt_b.exp_avg_sq(), opt_a.exp_avg_sq()));
  EXPECT_EQ(opt_b.step_count(), 6);
}

TEST_F(Checkpoint, ResumedTrainingIsBitIdenticalDouble) {
  resume_is_bit_identical<double>(path("d.safetensors"));
}
TEST_F(Checkpoint, ResumedTrainingIsBitIdenticalFloat) {
  resume_is_bit_identical<float>(path("f.safetensors"));
}

TEST_F(Checkpoint, SeparateOptimizerFile) {
  Parameters<double> p = make_store<double>();
  Adam<double> opt(p);
  train(p, opt, 2, LrSchedule::constant(0.01));
  save_optimizer(path("opt.safetensors"), opt, p);
  save_parameters(path("params.safetensors"), p);
  Parameters<double> q = make_store<double>(3.0);
  Adam<double> opt_q(q);
  load_parameters(path("params.safetensors"), q);
  load_optimizer(path("opt.safetensors"), opt_q, q);
  EXPECT_EQ(opt_q.step_count(), 2);
  EXPECT_TRUE(bitwise_equal(opt_q.exp_avg_sq(), opt.exp_avg_sq()));
  // A parameters-only file has no optimizer state; an optimizer-only file no parameters.
  EXPECT_THROW(load_optimizer(path("params.safetensors"), opt_q, q), IoError);
  EXPECT_THROW(load_parameters(path("opt.safetensors"), q), IoError);
  // An optimizer built for another layout is a caller error.
  Parameters<double> other;
  other.add("z", {3});
  Adam<double> opt_other(other);
  EXPECT_THROW(load_optimizer(path("opt.safetensors"), opt_other, q), InvalidArgument);
  EXPECT_THROW(save_optimizer(path("x.safetensors"), opt_other, q), InvalidArgument);
}

TEST_F(Checkpoint, ExtraMetadataAndCustomFiles) {
  Parameters<double> p = make_store<double>();
  Adam<double> opt(p);
  save_checkpoint(path("x.safetensors"), p, opt, "{}", DType::F64, {{"run.step_budget", "100"}});
  EXPECT_EQ(SafetensorsFile::load(path("x.safetensors")).metadata("run.step_budget"), "100");
  EXPECT_THROW(save_parameters(path("y.safetensors"), p, "", DType::F64, {{"config", "{}"}}),
               InvalidArgument);
  EXPECT_THROW(
      save_checkpoint(path("y.safetensors"), p, opt, "", DType::F64, {{"optimizer.step", "9"}}),
      InvalidArgument);
  EXPECT_FALSE(fs::exists(path("y.safetensors")));

  // The building blocks give the same file as save_checkpoint.
  SafetensorsWriter w;
  add_parameters(w, p, "{}");
  add_optimizer_state(w, opt, p);
  w.set_metadata("run.step_budget", "100");
  EXPECT_EQ(w.serialize(), read_bytes(path("x.safetensors")));
}

TEST_F(Checkpoint, LoadCheckpointIsAllOrNothing) {
  Parameters<double> p = make_store<double>();
  Adam<double> opt(p);
  train(p, opt, 2, LrSchedule::constant(0.01));
  // Valid parameters, but one second moment is negative.
  SafetensorsWriter w;
  w.set_metadata("optimizer.step", "2");
  for (const auto& s : p.slots()) {
    const std::vector<std::int64_t> shape(s.shape.begin(), s.shape.end());
    const auto n = static_cast<std::size_t>(s.size);
    w.add(s.name, DType::F64, shape, p.values().data() + s.offset, n);
    w.add("optimizer.m." + s.name, DType::F64, shape, opt.exp_avg().data() + s.offset, n);
    std::vector<double> v(opt.exp_avg_sq().data() + s.offset,
                          opt.exp_avg_sq().data() + s.offset + n);
    if (s.name == "lm_head.bias") v[0] = -1.0;
    w.add("optimizer.v." + s.name, DType::F64, shape, v);
  }
  w.write(path("neg.safetensors"));
  Parameters<double> q = make_store<double>(3.0);
  Adam<double> opt_q(q);
  const Vector<double> before = q.values();
  EXPECT_THROW(load_checkpoint(path("neg.safetensors"), q, opt_q), IoError);
  EXPECT_TRUE(bitwise_equal(q.values(), before));
  EXPECT_EQ(opt_q.step_count(), 0);
  EXPECT_EQ(opt_q.exp_avg().cwiseAbs().maxCoeff(), 0.0);

  // A bad step count.
  SafetensorsWriter w2;
  w2.set_metadata("optimizer.step", "-3");
  w2.add("x", DType::F64, {1}, std::vector<double>{1.0});
  w2.write(path("step.safetensors"));
  Parameters<double> r;
  r.add("x", {1});
  Adam<double> opt_r(r);
  EXPECT_THROW(load_optimizer(path("step.safetensors"), opt_r, r), IoError);
}

// save_model / load_model / load_config work for any model type with parameters() and config().
struct FakeModel {
  using Scalar = double;
  ReformerConfig cfg;
  Parameters<double> params = make_store<double>();
  const ReformerConfig& config() const { return cfg; }
  Parameters<double>& parameters() { return params; }
  const Parameters<double>& parameters() const { return params; }
};

TEST_F(Checkpoint, ModelHelpersStoreTheConfig) {
  FakeModel m;
  m.cfg.vocab_size = 77;
  m.cfg.num_buckets = {2, 4};
  m.cfg.seed = 1234567890123ULL;
  save_model(path("m.safetensors"), m);
  const ReformerConfig c = load_config(path("m.safetensors"));
  EXPECT_EQ(c.vocab_size, 77);
  EXPECT_EQ(c.num_buckets, (std::vector<Index>{2, 4}));
  EXPECT_EQ(c.seed, 1234567890123ULL);
  FakeModel m2;
  m2.params = make_store<double>(4.0);
  load_model(path("m.safetensors"), m2);
  EXPECT_TRUE(bitwise_equal(m2.params.values(), m.params.values()));

  Adam<double> opt(m.params);
  save_training_state(path("t.safetensors"), m, opt);
  Adam<double> opt2(m2.params);
  load_training_state(path("t.safetensors"), m2, opt2);
  EXPECT_EQ(load_config(path("t.safetensors")).vocab_size, 77);

  save_parameters(path("noconfig.safetensors"), m.params);
  EXPECT_THROW(load_config(path("noconfig.safetensors")), IoError);
  save_parameters(path("badconfig.safetensors"), m.params, "{\"hidden_size\": 2.5}");
  try {
    load_config(path("badconfig.safetensors"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace reformer::io
