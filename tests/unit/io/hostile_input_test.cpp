// Hostile files and configs: deep nesting, huge values and checkpoints that promise more than
// they hold are clear errors naming the field or tensor, never a crash or a huge allocation.
#include "reformer/io/checkpoint.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/io/json_reader.hpp"
#include "reformer/io/safetensors.hpp"
#include "reformer/model/parameter_layout.hpp"
#include "reformer/model/reformer_lm.hpp"

#include "support/config.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace reformer::io {
namespace hostile_input_test {

using test::expect_throw_with;
// Qualified: another file of this unity-built suite has a fixture named Checkpoint.
using CheckpointFile = ::reformer::io::Checkpoint;

/// `levels` nested arrays around 1: [[[...1...]]].
std::string nested(int levels) {
  return std::string(static_cast<std::size_t>(levels), '[') + "1" +
         std::string(static_cast<std::size_t>(levels), ']');
}

/// A safetensors file whose header is `header` (padded to 8 bytes) and no data.
std::vector<char> file_with_header(std::string header) {
  while (header.size() % 8 != 0) header.push_back(' ');
  std::string bytes;
  for (int k = 0; k < 8; ++k) bytes.push_back(static_cast<char>(header.size() >> (8 * k)));
  bytes += header;
  return std::vector<char>(bytes.begin(), bytes.end());
}

/// A checkpoint header holding only `config` as metadata (no tensors).
std::vector<char> config_only_file(const std::string& config_json) {
  return file_with_header(nlohmann::json{{"__metadata__", {{"config", config_json}}}}.dump());
}

TEST(JsonReader, RejectsDeepNestingBeforeParsing) {
  EXPECT_TRUE(read_json(nested(kMaxJsonDepth)).ok());
  const auto r = read_json(nested(100000));
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error.find("deeper than 64 levels"), std::string::npos) << r.error;
  // Brackets inside strings do not count.
  EXPECT_TRUE(read_json("{\"a\": \"" + std::string(1000, '[') + "\"}").ok());
}

TEST(JsonReader, ExcerptsAreShortWhateverTheValue) {
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  EXPECT_LE(json_excerpt(big).size(), kJsonExcerptChars + 3);
  EXPECT_LE(json_excerpt(nlohmann::json(std::string(1 << 20, 'x'))).size(), kJsonExcerptChars + 3);
  EXPECT_EQ(json_excerpt(nlohmann::json::parse("[1,[2,{\"a\":3}]]")), "[1,[2,{\"a\":3}]]");
}

TEST(HostileJson, DeepSafetensorsHeaderIsAnIoError) {
  expect_throw_with<IoError>(
      [] { SafetensorsFile::parse(file_with_header("{\"a\":" + nested(100000) + "}"), "deep"); },
      {"'deep'", "deeper than 64 levels"});
}

TEST(HostileJson, DeepConfigIsAConfigError) {
  expect_throw_with<ConfigError>(
      [] { config_from_json_string("{\"vocab_size\":" + nested(100000) + "}"); },
      {"config_from_json_string", "deeper than 64 levels"});
  // Through a checkpoint's metadata: an IoError naming the file.
  expect_throw_with<IoError>(
      [] {
        (void)CheckpointFile(SafetensorsFile::parse(
            config_only_file("{\"vocab_size\":" + nested(100000) + "}"), "ckpt"));
      },
      {"'ckpt'", "deeper than 64 levels"});
}

TEST(HostileJson, DeepUserSettingsAreAnIoError) {
  const std::string user = "{\"lr\":" + nested(100000) + "}";
  expect_throw_with<IoError>(
      [&] {
        (void)CheckpointFile(SafetensorsFile::parse(
            file_with_header(nlohmann::json{{"__metadata__", {{"user", user}}}}.dump()), "u"));
      },
      {"'u'", "metadata 'user'", "deeper than 64 levels"});
}

TEST(HostileJson, LongWrongValuesAreQuotedShortly) {
  std::string list = "[";
  for (int i = 0; i < 100000; ++i) list += (i ? "," : "") + std::to_string(i);
  list += "]";
  try {
    config_from_json_string("{\"hidden_act\": " + list + "}");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'hidden_act'"), std::string::npos) << what;
    EXPECT_LT(what.size(), 300u) << what;
  }
}

/// config_from_json_string of the small test config with `key` set to the JSON `value`.
ReformerConfig config_with(const std::string& key, const std::string& value) {
  nlohmann::json j = ReformerConfig(test::SmallConfig().lsh_local_model());
  j[key] = nlohmann::json::parse(value);
  return config_from_json_string(j.dump());
}

TEST(HostileConfig, HugeValuesAreConfigErrorsNamingTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lsh_num_chunks_before", "4611686018427387904"},  // 2^62
      {"lsh_num_chunks_after", "4611686018427387904"},
      {"local_num_chunks_before", "4611686018427387904"},
      {"local_num_chunks_after", "4611686018427387904"},
      {"attention_head_size", "2305843009213693952"},  // 2^61
      {"hidden_size", "4611686018427387904"},
      {"feed_forward_size", "4611686018427387904"},
      {"vocab_size", "4611686018427387904"},
      {"num_attention_heads", "4611686018427387904"},
      {"lsh_attn_chunk_length", "4611686018427387904"},
      {"chunk_size_feed_forward", "4611686018427387904"},
      {"num_buckets", "[4294967296, 4294967296]"},  // 2^32 x 2^32
      {"num_buckets", "[4611686018427387904, 4]"},
      {"axial_pos_embds_dim", "[4611686018427387904, 4611686018427387904]"},
      {"axial_pos_shape", "[4611686018427387904, 4611686018427387904]"},
      {"initializer_range", "1e300"},
      {"axial_norm_std", "1e300"},
      {"layer_norm_eps", "1e300"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.first + " = " + c.second);
    expect_throw_with<ConfigError>([&] { config_with(c.first, c.second); }, {c.first});
  }
  // Learned positions: the table would have 2^62 rows.
  nlohmann::json j = ReformerConfig(test::SmallConfig().lsh_local_model());
  j["axial_pos_embds"] = false;
  j["max_position_embeddings"] = std::int64_t{1} << 62;
  expect_throw_with<ConfigError>([&] { config_from_json_string(j.dump()); },
                                 {"max_position_embeddings"});
}

TEST(HostileConfig, UnsignedValuesArePrintedAsGiven) {
  expect_throw_with<ConfigError>([] { config_with("num_buckets", "18446744073709551614"); },
                                 {"num_buckets", "18446744073709551614"});
  expect_throw_with<ConfigError>([] { config_with("num_buckets", "[18446744073709551614]"); },
                                 {"num_buckets", "18446744073709551614"});
  expect_throw_with<ConfigError>([] { config_with("vocab_size", "18446744073709551614"); },
                                 {"vocab_size", "18446744073709551614"});
}

TEST(HostileConfig, BucketCountsBeyondTheLengthAreRefused) {
  // One unfactorised 2^24-bucket layout would need a 2^23-column rotation per head and round.
  expect_throw_with<ConfigError>([] { config_with("num_buckets", "16777216"); },
                                 {"num_buckets = (16777216)", "rotation columns"});
  expect_throw_with<ConfigError>([] { config_with("num_buckets", "1073741824"); },
                                 {"num_buckets", "rotation columns"});
  // The same count factorised hashes cheaply and is accepted; so is HF's enwik8 layout.
  EXPECT_NO_THROW(config_with("num_buckets", "[4096, 4096]"));
  EXPECT_NO_THROW(config_with("num_buckets", "[64, 128]"));
}

TEST(HostileConfig, AttentionLayersRefuseOverflowingWindows) {
  LshAttentionConfig lsh;
  lsh.chunks_before = Index{1} << 62;
  expect_throw_with<ConfigError>([&] { lsh.validate(); }, {"window", "4611686018427387904"});
  lsh.chunks_before = 1;
  lsh.chunks_after = kMaxIndex;
  expect_throw_with<ConfigError>([&] { lsh.validate(); }, {"window"});
  LocalAttentionConfig local;
  local.chunks_after = Index{1} << 62;
  Parameters<float> params;
  expect_throw_with<InvalidArgument>([&] { LocalAttention<float>(local, 8, params); },
                                     {"window", "4611686018427387904"});
}

// ---- checkpoints that promise more than they hold ------------------------------------------

TEST(HostileCheckpoint, HugeConfigWithoutTensorsFailsBeforeAnyAllocation) {
  ReformerConfig c;
  c.attn_layers.assign(64, "local");
  c.hidden_size = 8192;
  c.axial_pos_embds_dim = {4096, 4096};
  c.num_attention_heads = 64;
  c.attention_head_size = 128;
  c.feed_forward_size = Index{1} << 20;
  c.validate();  // a valid config: only the file is too small for it
  const auto bytes = config_only_file(config_to_json_string(c));
  ASSERT_LT(bytes.size(), 4096u);
  expect_throw_with<IoError>([&] { (void)CheckpointFile(SafetensorsFile::parse(bytes, "tiny")); },
                             {"'tiny'", "parameters", "bytes of tensors"});
}

class HostileCheckpointFile : public test::TempDirTest {
 protected:
  HostileCheckpointFile() : TempDirTest("hostile_ckpt_") {}
};

TEST_F(HostileCheckpointFile, MissingOrMisshapenTensorIsNamed) {
  const ReformerConfig c = test::SmallConfig().lsh_local_model();
  ReformerLM<float> model(c);
  const std::string good = path("good.safetensors");
  CheckpointFile::save(good, model);
  EXPECT_NO_THROW(CheckpointFile::open(good));

  // The same tensors, but a config with a wider feed-forward: the shapes do not match.
  const SafetensorsFile file = SafetensorsFile::load(good);
  SafetensorsWriter w;
  for (const auto& name : file.names()) {
    const TensorInfo& ti = file.info(name);
    w.add(name, ti.dtype, ti.shape, file.read<float>(name));
  }
  ReformerConfig wider = c;
  wider.feed_forward_size *= 2;
  w.set_metadata("config", config_to_json_string(wider));
  const std::string bad = path("bad.safetensors");
  w.write(bad);
  expect_throw_with<IoError>([&] { CheckpointFile::open(bad); },
                             {"bad.safetensors", "feed_forward.dense.dense.weight", "shape"});

  // A config with one more layer: the file lacks its tensors.
  ReformerConfig deeper = c;
  deeper.attn_layers.push_back("local");
  w.set_metadata("config", config_to_json_string(deeper));
  w.write(bad);
  expect_throw_with<IoError>([&] { CheckpointFile::open(bad); }, {"no tensor", "layers.2."});
}

TEST(ParameterLayout, ListsExactlyWhatTheModelRegisters) {
  const std::vector<ReformerConfig> configs = {
      test::SmallConfig().lsh_local_model(),
      test::SmallConfig().layers({"full", "lsh"}).learned_positions(64),
  };
  for (const auto& c : configs) {
    ReformerLM<float> model(c);
    const auto layout = reformer_parameter_layout(c);
    ASSERT_EQ(static_cast<Index>(layout.size()), model.parameters().num_slots());
    for (SlotId id = 0; id < model.parameters().num_slots(); ++id) {
      const ParamSlot& slot = model.parameters().slot(id);
      EXPECT_EQ(layout[static_cast<std::size_t>(id)].name, slot.name);
      EXPECT_EQ(layout[static_cast<std::size_t>(id)].shape, slot.shape) << slot.name;
    }
    EXPECT_EQ(parameter_count(layout), model.parameters().size());
  }
}

}  // namespace hostile_input_test
}  // namespace reformer::io
