#pragma once
// from_pretrained: a ReformerLM from a Hugging Face model folder, as `save_pretrained` writes it.
//
//   auto model = io::from_pretrained<float>("path/to/reformer-model");
//
// The folder holds
//   config.json         HF ReformerConfig keys ("model_type": "reformer"; a key HF left out
//                       takes HF's default, io/config_json.hpp)
//   model.safetensors   the state dict under HF's names: reformer.embeddings.word_embeddings
//                       .weight, ..., reformer.encoder.layer_norm.bias, lm_head.decoder.weight,
//                       and the LM-head bias as lm_head.bias or lm_head.decoder.bias (HF ties
//                       the two names; either or both may be present)
// Tensors may be F32, F64, F16 or BF16; each is converted to S. Every parameter of the model
// must be present with its exact shape and finite values (in the file and after conversion).
// Tensors that match no parameter are an error by default, since a file for another
// architecture would otherwise load half-way; `LoadOptions::allow_unknown` skips them instead.
// Every failure is a reformer::IoError naming the file and the tensor or config key.
#include "reformer/core/error.hpp"
#include "reformer/io/checkpoint.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/io/json_reader.hpp"
#include "reformer/io/safetensors.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/reformer_lm.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace reformer::io {

inline constexpr const char* kPretrainedConfigFile = "config.json";
inline constexpr const char* kPretrainedWeightsFile = "model.safetensors";

/// The config of an HF model folder (`dir`/config.json), validated; IoError naming the file.
inline ReformerConfig pretrained_config(const std::string& dir) {
  const char* where = "pretrained_config";
  const std::string path = (std::filesystem::path(dir) / kPretrainedConfigFile).string();
  std::ifstream in(path, std::ios::binary);
  if (!in) raise<IoError>(where, "cannot open '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  JsonReadResult parsed = read_json(text);  // nesting at most kMaxJsonDepth levels
  if (!parsed.ok()) raise<IoError>(where, "'", path, "': ", parsed.error);
  const nlohmann::json& j = parsed.value;
  if (!j.is_object() || j.value("model_type", std::string()) != "reformer") {
    raise<IoError>(where, "'", path, "' is not a Reformer config (\"model_type\" must be ",
                   "\"reformer\")");
  }
  try {
    ReformerConfig c = config_from_json(j);
    c.validate();
    return c;
  } catch (const ConfigError& e) {
    raise<IoError>(where, "'", path, "': ", e.what());
  }
}

/// A ReformerLM<S> with the config and weights of the HF model folder `dir` (see above).
template <class S>
ReformerLM<S> from_pretrained(const std::string& dir, const LoadOptions& options = {}) {
  const ReformerConfig config = pretrained_config(dir);
  const std::string weights = (std::filesystem::path(dir) / kPretrainedWeightsFile).string();
  const SafetensorsFile file = SafetensorsFile::load(weights);
  check_tensors_for_config(file, config, false, options);  // before the model is allocated
  ReformerLM<S> model(config);
  load_parameters(file, model.parameters(), options);
  return model;
}

}  // namespace reformer::io
