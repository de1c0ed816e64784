// io::from_pretrained on a Hugging Face style folder made here: config.json with HF key names
// (no "seed", as HF writes it) and model.safetensors with HF state-dict names. The loaded model
// gives bitwise the logits of the model that wrote the folder; every bad folder is an IoError
// naming the file and the tensor or key.
#include "reformer/io/pretrained.hpp"

#include "support/compare.hpp"
#include "support/config.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace reformer::io {
namespace pretrained_test {

namespace fs = std::filesystem;

/// Default seed: HF's config.json has none, so the loaded config keeps ReformerConfig's.
ReformerConfig hf_style_config() {
  return test::SmallConfig().vocab(17).feed_forward(12).lsh_hashing({4}, /*rounds=*/2);
}

std::vector<Token> tokens() {
  std::vector<Token> t;
  for (int i = 0; i < 2 * 16; ++i) t.push_back(static_cast<Token>((i * 5 + 1) % 17));
  return t;
}

/// What the folder's model.safetensors gets: (name, dtype, shape, values) per tensor.
struct Tensor {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<double> values;
};

class Pretrained : public test::TempDirTest {
 protected:
  Pretrained() : TempDirTest("pretrained_") {}

  /// The HF state dict of `model`: its parameters under their HF names, the LM-head bias
  /// under both of HF's names, every tensor as `dtype`.
  template <class S>
  static std::vector<Tensor> state_dict(const ReformerLM<S>& model, DType dtype) {
    std::vector<Tensor> out;
    const Parameters<S>& p = model.parameters();
    for (SlotId id = 0; id < p.num_slots(); ++id) {
      const ParamSlot& slot = p.slot(id);
      const auto v = p.value_vector(id);
      Tensor t{slot.name, dtype, std::vector<std::int64_t>(slot.shape.begin(), slot.shape.end()),
               std::vector<double>(v.data(), v.data() + v.size())};
      out.push_back(t);
      if (slot.name == "lm_head.bias") {
        t.name = "lm_head.decoder.bias";
        out.push_back(t);
      }
    }
    return out;
  }

  /// Writes config.json (HF keys, no "seed") and model.safetensors.
  void write_folder(const ReformerConfig& config, const std::vector<Tensor>& tensors) const {
    nlohmann::json j = config;
    j.erase("seed");
    std::ofstream(dir_ / "config.json") << j.dump(2);
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (const auto& t : tensors) {
      if (t.dtype == DType::I32) {
        std::vector<std::int32_t> ints(t.values.size(), 1);
        w.add(t.name, t.dtype, t.shape, ints);
      } else {
        w.add(t.name, t.dtype, t.shape, t.values);
      }
    }
    w.write((dir_ / "model.safetensors").string());
  }

  /// Expects from_pretrained<float> on the folder to throw IoError mentioning every needle.
  void expect_rejected(const std::vector<std::string>& needles,
                       const LoadOptions& options = {}) const {
    test::expect_throw_with<IoError>([&] { from_pretrained<float>(dir(), options); }, needles);
  }
};

/// A model whose weights differ from what the config's seed initialises.
template <class S>
ReformerLM<S> trained_model() {
  ReformerLM<S> model(hf_style_config());
  auto& v = model.parameters().values();
  for (Index i = 0; i < v.size(); ++i) v[i] += static_cast<S>(0.001 * static_cast<double>(i % 7));
  return model;
}

template <class S>
void expect_same_logits(const ReformerLM<S>& a, const ReformerLM<S>& b) {
  const auto t = tokens();
  const Matrix<S> la = a.logits(t, 2), lb = b.logits(t, 2);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), sizeof(S) * static_cast<std::size_t>(la.size())), 0);
}

TEST_F(Pretrained, F32FolderGivesBitwiseTheSameLogits) {
  const ReformerLM<float> original = trained_model<float>();
  write_folder(original.config(), state_dict(original, DType::F32));
  const ReformerLM<float> loaded = from_pretrained<float>(dir());
  EXPECT_EQ(config_to_json_string(loaded.config()), config_to_json_string(original.config()));
  EXPECT_TRUE(test::bitwise_equal(loaded.parameters().values(), original.parameters().values()));
  expect_same_logits(original, loaded);
}

TEST_F(Pretrained, F64FolderAndOnlyOneBiasName) {
  const ReformerLM<double> original = trained_model<double>();
  auto tensors = state_dict(original, DType::F64);
  // HF may store the LM-head bias only as lm_head.decoder.bias.
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const Tensor& t) { return t.name == "lm_head.bias"; }),
                tensors.end());
  write_folder(original.config(), tensors);
  const ReformerLM<double> loaded = from_pretrained<double>(dir());
  expect_same_logits(original, loaded);
}

TEST_F(Pretrained, ConfigUsesHuggingFaceDefaultsForMissingKeys) {
  std::ofstream(dir_ / "config.json") << R"({"model_type": "reformer", "vocab_size": 40})";
  const ReformerConfig c = pretrained_config(dir());
  EXPECT_EQ(c.vocab_size, 40);
  EXPECT_EQ(c.hidden_size, hf_default_config().hidden_size);
  EXPECT_EQ(c.attn_layers, hf_default_config().attn_layers);
}

TEST_F(Pretrained, BadFoldersAreRejectedNamingTheProblem) {
  const ReformerLM<float> original = trained_model<float>();
  const ReformerConfig config = original.config();
  const auto good = state_dict(original, DType::F32);
  const std::string word = "reformer.embeddings.word_embeddings.weight";

  expect_rejected({"config.json"});  // empty folder
  write_folder(config, good);
  fs::remove(dir_ / "model.safetensors");
  expect_rejected({"model.safetensors"});

  auto edited = [&](const std::function<void(std::vector<Tensor>&)>& edit) {
    auto tensors = good;
    edit(tensors);
    write_folder(config, tensors);
  };
  auto find = [&](std::vector<Tensor>& ts, const std::string& name) -> Tensor& {
    for (auto& t : ts)
      if (t.name == name) return t;
    throw std::logic_error(name);
  };

  edited([&](std::vector<Tensor>& ts) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const Tensor& t) { return t.name == word; }),
             ts.end());
  });
  expect_rejected({"model.safetensors", word, "no tensor"});

  edited([&](std::vector<Tensor>& ts) {
    Tensor& t = find(ts, word);
    t.shape = {t.shape[1], t.shape[0]};
  });
  expect_rejected({word, "shape"});

  edited([&](std::vector<Tensor>& ts) { find(ts, word).dtype = DType::I32; });
  expect_rejected({word, "dtype I32"});

  edited([&](std::vector<Tensor>& ts) {
    find(ts, word).values[3] = std::numeric_limits<double>::infinity();
  });
  expect_rejected({word, "not finite"});

  // Unknown tensors: an error by default, skipped with allow_unknown.
  edited([&](std::vector<Tensor>& ts) {
    ts.push_back({"classifier.weight", DType::F32, {2}, {1, 2}});
  });
  expect_rejected({"classifier.weight"});
  LoadOptions skip;
  skip.allow_unknown = true;
  expect_same_logits(original, from_pretrained<float>(dir(), skip));

  // Not a Reformer config; an invalid one.
  std::ofstream(dir_ / "config.json") << R"({"model_type": "bert"})";
  expect_rejected({"config.json", "model_type"});
  std::ofstream(dir_ / "config.json") << R"({"model_type": "reformer", "hidden_size": -4})";
  expect_rejected({"config.json", "hidden_size"});
  std::ofstream(dir_ / "config.json") << "{ not json";
  expect_rejected({"config.json", "JSON"});
}

}  // namespace pretrained_test
}  // namespace reformer::io
