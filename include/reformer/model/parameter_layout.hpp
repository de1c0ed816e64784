#pragma once
// The parameters a model built from a config registers (Hugging Face names and PyTorch shapes,
// docs/DESIGN.md 2), computed from the config and the model's architecture alone, without
// allocating the model. Checkpoint loading uses it to check that a file holds every tensor its
// config needs, with the right shapes, before a model of that config is built
// (io/checkpoint.hpp); a test checks that it lists exactly what each model class registers.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/config.hpp"

#include <optional>
#include <string>
#include <vector>

namespace reformer {

/// One parameter of a model: its name and PyTorch shape.
struct ParameterSpec {
  std::string name;
  std::vector<Index> shape;
};

/// The model classes, named as Hugging Face names them (config.json "architectures"). They
/// share the backbone's parameters and differ in the head's.
enum class Architecture {
  kLanguageModel,           ///< ReformerLM (HF ReformerModelWithLMHead)
  kMaskedLm,                ///< ReformerForMaskedLM
  kSequenceClassification,  ///< ReformerForSequenceClassification
  kQuestionAnswering,       ///< ReformerForQuestionAnswering
};

inline constexpr Architecture kArchitectures[] = {
    Architecture::kLanguageModel, Architecture::kMaskedLm, Architecture::kSequenceClassification,
    Architecture::kQuestionAnswering};

/// Hugging Face's class name of an architecture.
inline const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::kLanguageModel:
      return "ReformerModelWithLMHead";
    case Architecture::kMaskedLm:
      return "ReformerForMaskedLM";
    case Architecture::kSequenceClassification:
      return "ReformerForSequenceClassification";
    case Architecture::kQuestionAnswering:
      return "ReformerForQuestionAnswering";
  }
  return "?";
}

/// The architecture of a Hugging Face class name, or nullopt.
inline std::optional<Architecture> architecture_from_name(const std::string& name) {
  for (const Architecture a : kArchitectures) {
    if (name == architecture_name(a)) return a;
  }
  return std::nullopt;
}

/// Every parameter of the `architecture` model built from `config`, in registration order.
/// Validates the config (ConfigError naming the field).
inline std::vector<ParameterSpec> reformer_parameter_layout(
    const ReformerConfig& config, Architecture architecture = Architecture::kLanguageModel) {
  config.validate();
  const Index v = config.vocab_size, d = config.hidden_size, f = config.feed_forward_size;
  const Index heads = config.all_head_size();
  std::vector<ParameterSpec> out;
  out.push_back({"reformer.embeddings.word_embeddings.weight", {v, d}});
  if (config.axial_pos_embds) {
    out.push_back({"reformer.embeddings.position_embeddings.weights.0",
                   {config.axial_pos_shape[0], 1, config.axial_pos_embds_dim[0]}});
    out.push_back({"reformer.embeddings.position_embeddings.weights.1",
                   {1, config.axial_pos_shape[1], config.axial_pos_embds_dim[1]}});
  } else {
    out.push_back({"reformer.embeddings.position_embeddings.embedding.weight",
                   {config.max_position_embeddings, d}});
  }
  for (Index l = 0; l < config.num_layers(); ++l) {
    const std::string prefix = "reformer.encoder.layers." + std::to_string(l) + ".";
    const std::string attention = prefix + "attention.";
    out.push_back({attention + "layer_norm.weight", {d}});
    out.push_back({attention + "layer_norm.bias", {d}});
    if (config.layer_kind(l) == LayerKind::kLsh) {
      out.push_back({attention + "self_attention.query_key.weight", {heads, d}});
    } else {
      out.push_back({attention + "self_attention.query.weight", {heads, d}});
      out.push_back({attention + "self_attention.key.weight", {heads, d}});
    }
    out.push_back({attention + "self_attention.value.weight", {heads, d}});
    out.push_back({attention + "output.dense.weight", {d, heads}});
    const std::string ff = prefix + "feed_forward.";
    out.push_back({ff + "layer_norm.weight", {d}});
    out.push_back({ff + "layer_norm.bias", {d}});
    out.push_back({ff + "dense.dense.weight", {f, d}});
    out.push_back({ff + "dense.dense.bias", {f}});
    out.push_back({ff + "output.dense.weight", {d, f}});
    out.push_back({ff + "output.dense.bias", {d}});
  }
  out.push_back({"reformer.encoder.layer_norm.weight", {2 * d}});
  out.push_back({"reformer.encoder.layer_norm.bias", {2 * d}});
  switch (architecture) {
    case Architecture::kLanguageModel:
    case Architecture::kMaskedLm:
      out.push_back({"lm_head.bias", {v}});
      out.push_back({"lm_head.decoder.weight", {v, 2 * d}});
      break;
    case Architecture::kSequenceClassification:
      out.push_back({"classifier.dense.weight", {d, 2 * d}});
      out.push_back({"classifier.dense.bias", {d}});
      out.push_back({"classifier.out_proj.weight", {config.num_labels, d}});
      out.push_back({"classifier.out_proj.bias", {config.num_labels}});
      break;
    case Architecture::kQuestionAnswering:
      out.push_back({"qa_outputs.weight", {2, 2 * d}});
      out.push_back({"qa_outputs.bias", {2}});
      break;
  }
  return out;
}

/// The number of scalars of `layout` (InvalidArgument when it overflows an Index).
inline Index parameter_count(const std::vector<ParameterSpec>& layout) {
  Index total = 0;
  for (const auto& p : layout) {
    const Index n = size_product("parameter_count", "shape of '" + p.name + "'", p.shape);
    const auto sum = checked_add(total, n);
    REFORMER_REQUIRE(sum.has_value(), InvalidArgument, "parameter_count",
                     "the parameter count overflows at '", p.name, "'");
    total = *sum;
  }
  return total;
}

}  // namespace reformer
