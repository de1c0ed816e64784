#pragma once
// Checkpoints of the example programs: one safetensors file holding the model parameters (HF
// names), the Adam state, the model config (metadata "config", io/config_json.hpp) and the run
// settings of the program (metadata "example.run", JSON), so `--resume <file>` continues a run
// bit-identically without repeating its flags, and `--checkpoint <file>` rebuilds the model for
// generation or evaluation. The layout is the library's (io/checkpoint.hpp); the run settings
// are one extra metadata string. Writes are atomic (temporary file + rename).
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/io/checkpoint.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/io/safetensors.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace reformer::examples {

/// Metadata key of the program's run settings.
inline constexpr const char* kRunMetadataKey = "example.run";

/// Saves parameters, optimizer state, config and the run settings `run` to `path`.
template <class Model, class S>
void save_run_checkpoint(const std::string& path, const Model& model, const Adam<S>& opt,
                         const nlohmann::json& run) {
  io::SafetensorsWriter w;
  io::add_parameters(w, model.parameters(), config_to_json_string(model.config()));
  io::add_optimizer_state(w, opt, model.parameters());
  w.set_metadata(kRunMetadataKey, run.dump());
  w.write(path);
}

/// A checkpoint file opened for reading: its config and run settings, validated.
struct RunCheckpoint {
  io::SafetensorsFile file;
  ReformerConfig config;
  nlohmann::json run;  ///< the program's run settings (an empty object when absent)

  /// Reads `path` (IoError naming the file when it is missing, corrupt or has no config).
  static RunCheckpoint open(const std::string& path) {
    RunCheckpoint c{io::SafetensorsFile::load(path), {}, nlohmann::json::object()};
    c.config = io::load_config(c.file);
    const auto& meta = c.file.metadata();
    auto it = meta.find(kRunMetadataKey);
    if (it != meta.end()) {
      try {
        c.run = nlohmann::json::parse(it->second);
      } catch (const nlohmann::json::exception&) {
        raise<IoError>("RunCheckpoint::open", "'", path, "': metadata '", kRunMetadataKey,
                       "' is not valid JSON");
      }
      if (!c.run.is_object()) {
        raise<IoError>("RunCheckpoint::open", "'", path, "': metadata '", kRunMetadataKey,
                       "' is not a JSON object");
      }
    }
    return c;
  }

  /// Run setting `key` (IoError naming it when absent or of the wrong type).
  template <class T>
  T setting(const std::string& key) const {
    if (!run.contains(key)) {
      raise<IoError>("RunCheckpoint", "'", file.source(), "' lacks the run setting '", key,
                     "' (was it written by this program?)");
    }
    try {
      return run.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      raise<IoError>("RunCheckpoint", "'", file.source(), "': run setting '", key,
                     "' has the wrong type (", run.at(key).dump(), ")");
    }
  }

  /// Restores parameters and optimizer state into a model built from `config` (all or nothing).
  template <class Model, class S>
  void restore(Model& model, Adam<S>& opt) const {
    io::load_checkpoint(file, model.parameters(), opt);
  }

  /// Restores the parameters only (generation, evaluation).
  template <class Model>
  void restore_parameters(Model& model) const {
    io::load_parameters(file, model.parameters());
  }
};

/// Copies every parameter of `dst` from the parameter of `src` with the name `source_name(name)`
/// (shapes must agree): the same weights in a model built from a modified config.
template <class S, class NameMap>
void copy_parameters_by_name(const Parameters<S>& src, Parameters<S>& dst, NameMap source_name) {
  for (SlotId id = 0; id < dst.num_slots(); ++id) {
    const ParamSlot& slot = dst.slot(id);
    const std::string from = source_name(slot.name);
    const auto sid = src.find(from);
    REFORMER_REQUIRE(sid.has_value(), InvalidArgument, "copy_parameters_by_name", "parameter '",
                     slot.name, "' has no source '", from, "'");
    REFORMER_REQUIRE(src.slot(*sid).shape == slot.shape, InvalidArgument, "copy_parameters_by_name",
                     "parameter '", slot.name, "' and its source differ in shape");
    dst.value_vector(id) = src.value_vector(*sid);
  }
}

}  // namespace reformer::examples
