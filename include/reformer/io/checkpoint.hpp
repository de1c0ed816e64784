#pragma once
// Checkpoints: a Parameters<S> store (and optionally the Adam state) as a safetensors file.
//
// Tensors: every parameter under its slot name (the Hugging Face names, docs/DESIGN.md 2) with its
// PyTorch shape, dtype F32 or F64 (chosen on save; both load into float and double stores).
// With the optimizer: `optimizer.m.<name>` and `optimizer.v.<name>` (first / second moments,
// always in the store's own dtype so a resumed run continues bit-identically).
// Metadata ("__metadata__", strings only):
//   format = "pt"                      as HF writes it (PyTorch layout)
//   reformer.checkpoint = "1"          this layout's version
//   reformer.version = "0.1.0"         the library that wrote it
//   config = {...}                     the model config as JSON (io/config_json.hpp), if given
//   optimizer.type / .step / .lr / .beta1 / .beta2 / .eps / .weight_decay   with the optimizer
//   user = {...}                       the caller's JSON object (Checkpoint::save), if given
//
// Opening a checkpoint (Checkpoint::open) with a config checks, before any model is built, that
// the file holds every tensor that config needs with the right shape and a floating dtype
// (check_tensors_for_config), so a small hostile file cannot make the program allocate a model
// far larger than itself.
// Loading validates everything — every slot present, shapes equal, floating dtypes, finite
// values, no unknown tensors (unless allowed), a matching optimizer layout — into temporaries
// and only then replaces the store's values (and the optimizer state): on any problem it throws
// reformer::IoError naming the file and the tensor, and the store is unchanged.
// Writes are atomic (SafetensorsWriter::write: temporary file in the same folder, fsync, rename).
// Non-finite values are refused on save (InvalidArgument) and on load (IoError).
//
// The class Checkpoint (at the end) is the one-stop API: open a file once, read its config,
// step and user JSON, restore a model (and optimizer); save them in one call. The free
// functions are its building blocks, for files with other contents.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/io/config_json.hpp"
#include "reformer/io/json_reader.hpp"
#include "reformer/io/safetensors.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/parameter_layout.hpp"
#include "reformer/ops/check_finite.hpp"
#include "reformer/version.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace reformer::io {

inline constexpr const char* kCheckpointLayoutVersion = "1";

struct LoadOptions {
  /// Ignore file tensors that match no slot (default: an IoError naming the first one).
  bool allow_unknown = false;
  /// Other names of a slot: a file tensor `alias` fills slot `target` when the file has no
  /// tensor `target` itself (and is skipped when it has). Default: HF's tied LM-head bias.
  std::map<std::string, std::string> aliases = {{"lm_head.decoder.bias", "lm_head.bias"}};
};

/// What a load found besides the tensors.
struct CheckpointInfo {
  std::map<std::string, std::string> metadata;
  std::size_t tensors_loaded = 0;
  /// The stored config JSON ("" when the file has none).
  std::string config_json() const {
    auto it = metadata.find("config");
    return it == metadata.end() ? std::string() : it->second;
  }
};

namespace detail {

inline std::vector<std::int64_t> shape64(const std::vector<Index>& shape) {
  return std::vector<std::int64_t>(shape.begin(), shape.end());
}

inline std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline std::string number_string(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

inline bool is_optimizer_tensor(const std::string& name) {
  return name.rfind("optimizer.", 0) == 0;
}

/// Adds caller metadata; keys the checkpoint layout uses itself are refused.
inline void add_extra_metadata(SafetensorsWriter& w, const char* where,
                               const std::map<std::string, std::string>& extra) {
  for (const auto& kv : extra) {
    const std::string& k = kv.first;
    REFORMER_REQUIRE(k != "format" && k != "config" && k != "user" &&
                         k.rfind("reformer.", 0) != 0 && k.rfind("optimizer.", 0) != 0,
                     InvalidArgument, where, "metadata key '", k,
                     "' is reserved (format, config, user, reformer.*, optimizer.*)");
    w.set_metadata(k, kv.second);
  }
}

/// InvalidArgument naming the first non-finite parameter (ops/check_finite.hpp).
template <class S>
void check_finite_values(const char* where, const Parameters<S>& params) {
  if (params.values().allFinite()) return;
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    const std::string name = "parameter '" + params.slot(id).name + "'";
    check_finite(where, name.c_str(), params.value_vector(id));
  }
}

/// Adds every parameter and the standard metadata to `w`.
template <class S>
void add_parameters(SafetensorsWriter& w, const char* where, const Parameters<S>& params,
                    const std::string& config_json, DType dtype) {
  REFORMER_REQUIRE(dtype == DType::F32 || dtype == DType::F64, InvalidArgument, where,
                   "dtype = ", dtype_name(dtype), " must be F32 or F64");
  check_finite_values(where, params);
  w.set_metadata("format", "pt");
  w.set_metadata("reformer.checkpoint", kCheckpointLayoutVersion);
  w.set_metadata("reformer.version", REFORMER_VERSION_STRING);
  if (!config_json.empty()) w.set_metadata("config", config_json);
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    const ParamSlot& slot = params.slot(id);
    REFORMER_REQUIRE(!is_optimizer_tensor(slot.name), InvalidArgument, where, "parameter '",
                     slot.name, "': names starting with 'optimizer.' are reserved");
    const auto v = params.value_vector(id);
    w.add(slot.name, dtype, shape64(slot.shape), v.data(), static_cast<std::size_t>(v.size()));
  }
}

template <class S>
void check_optimizer_layout(const char* where, const Adam<S>& opt, const Parameters<S>& params) {
  bool same = opt.exp_avg().size() == params.size() &&
              opt.slot_names().size() == static_cast<std::size_t>(params.num_slots());
  for (SlotId id = 0; same && id < params.num_slots(); ++id)
    same = opt.slot_names()[static_cast<std::size_t>(id)] == params.slot(id).name;
  REFORMER_REQUIRE(same, InvalidArgument, where,
                   "the optimizer was built for another parameter layout (",
                   opt.slot_names().size(), " slots / ", opt.exp_avg().size(),
                   " scalars) than the store (", params.num_slots(), " / ", params.size(), ")");
}

template <class S>
void add_optimizer(SafetensorsWriter& w, const char* where, const Adam<S>& opt,
                   const Parameters<S>& params) {
  check_optimizer_layout(where, opt, params);
  const AdamOptions& o = opt.options();
  w.set_metadata("format", "pt");
  w.set_metadata("reformer.checkpoint", kCheckpointLayoutVersion);
  w.set_metadata("reformer.version", REFORMER_VERSION_STRING);
  w.set_metadata("optimizer.type", o.decoupled_weight_decay ? "adamw" : "adam");
  w.set_metadata("optimizer.step", std::to_string(opt.step_count()));
  w.set_metadata("optimizer.lr", number_string(o.lr));
  w.set_metadata("optimizer.beta1", number_string(o.beta1));
  w.set_metadata("optimizer.beta2", number_string(o.beta2));
  w.set_metadata("optimizer.eps", number_string(o.eps));
  w.set_metadata("optimizer.weight_decay", number_string(o.weight_decay));
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    const ParamSlot& slot = params.slot(id);
    const auto n = static_cast<std::size_t>(slot.size);
    w.add("optimizer.m." + slot.name, dtype_of<S>(), shape64(slot.shape),
          opt.exp_avg().data() + slot.offset, n);
    w.add("optimizer.v." + slot.name, dtype_of<S>(), shape64(slot.shape),
          opt.exp_avg_sq().data() + slot.offset, n);
  }
}

/// Reads tensor `tensor` of `file` (validated: shape == slot's, floating dtype, finite after
/// conversion to S) into dst[0, slot.size).
template <class S>
void read_slot_tensor(const char* where, const SafetensorsFile& file, const std::string& tensor,
                      const ParamSlot& slot, S* dst) {
  const TensorInfo& ti = file.info(tensor);
  if (ti.shape != shape64(slot.shape)) {
    raise<IoError>(where, "'", file.source(), "': tensor '", tensor, "' has shape ",
                   shape_string(ti.shape), ", parameter '", slot.name, "' needs ",
                   shape_string(shape64(slot.shape)));
  }
  if (!dtype_is_floating(ti.dtype)) {
    raise<IoError>(where, "'", file.source(), "': tensor '", tensor, "' has dtype ",
                   dtype_name(ti.dtype), ", expected a floating-point dtype (F32 or F64)");
  }
  file.read_into(tensor, dst, static_cast<std::size_t>(slot.size));
  // Non-finite in the file, or after conversion to S (1e300 as float): a corrupt file.
  const std::string file_where = std::string(where) + ": '" + file.source() + "'";
  const std::string name = "tensor '" + tensor + "'";
  try {
    check_finite(file_where.c_str(), name.c_str(), Eigen::Map<const Vector<S>>(dst, slot.size));
  } catch (const InvalidArgument& e) {
    throw IoError(e.what());
  }
}

inline void check_layout_version(const char* where, const SafetensorsFile& file) {
  auto it = file.metadata().find("reformer.checkpoint");
  if (it != file.metadata().end() && it->second != kCheckpointLayoutVersion) {
    raise<IoError>(where, "'", file.source(), "': checkpoint layout version '", it->second,
                   "' is not supported (this library reads version ", kCheckpointLayoutVersion,
                   ")");
  }
}

/// All parameter values of `file` in the store's layout; throws IoError on any mismatch.
template <class S>
Vector<S> read_parameters(const char* where, const SafetensorsFile& file,
                          const Parameters<S>& params, const LoadOptions& options,
                          std::size_t& loaded) {
  check_layout_version(where, file);
  Vector<S> values(params.size());
  std::set<std::string> used;
  loaded = 0;
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    const ParamSlot& slot = params.slot(id);
    std::string tensor = slot.name;
    if (!file.contains(tensor)) {
      for (const auto& alias : options.aliases) {
        if (alias.second == slot.name && file.contains(alias.first)) {
          tensor = alias.first;
          break;
        }
      }
    }
    if (!file.contains(tensor)) {
      raise<IoError>(where, "'", file.source(), "': no tensor for parameter '", slot.name,
                     "' (shape ", shape_string(shape64(slot.shape)), ")");
    }
    read_slot_tensor(where, file, tensor, slot, values.data() + slot.offset);
    used.insert(tensor);
    ++loaded;
  }
  if (!options.allow_unknown) {
    for (const auto& name : file.names()) {
      if (used.count(name) || is_optimizer_tensor(name)) continue;
      auto alias = options.aliases.find(name);
      if (alias != options.aliases.end() && params.find(alias->second)) continue;
      raise<IoError>(where, "'", file.source(), "': tensor '", name,
                     "' matches no parameter of the model (LoadOptions::allow_unknown skips it)");
    }
  }
  return values;
}

/// The optimizer's update count (metadata "optimizer.step"); IoError when absent or malformed.
inline std::int64_t read_optimizer_step(const char* where, const SafetensorsFile& file) {
  auto it = file.metadata().find("optimizer.step");
  if (it == file.metadata().end()) {
    raise<IoError>(where, "'", file.source(),
                   "': no optimizer state (metadata 'optimizer.step' is missing)");
  }
  const std::string& s = it->second;
  bool ok = !s.empty() && s.size() <= 18;
  std::int64_t step = 0;
  for (char c : s) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) step = step * 10 + (c - '0');
  }
  if (!ok) {
    raise<IoError>(where, "'", file.source(), "': metadata 'optimizer.step' = '", s,
                   "' is not a non-negative integer");
  }
  return step;
}

template <class S>
struct OptimizerState {
  std::int64_t step = 0;
  Vector<S> m, v;
};

/// The optimizer state of `file` for the store's layout; throws IoError on any mismatch.
template <class S>
OptimizerState<S> read_optimizer(const char* where, const SafetensorsFile& file, const Adam<S>& opt,
                                 const Parameters<S>& params) {
  check_layout_version(where, file);
  check_optimizer_layout(where, opt, params);  // a caller error: InvalidArgument
  OptimizerState<S> state;
  state.step = read_optimizer_step(where, file);
  state.m.resize(params.size());
  state.v.resize(params.size());
  const std::pair<const char*, Vector<S>*> parts[] = {{"optimizer.m.", &state.m},
                                                      {"optimizer.v.", &state.v}};
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    const ParamSlot& slot = params.slot(id);
    for (const auto& part : parts) {
      const std::string tensor = part.first + slot.name;
      if (!file.contains(tensor)) {
        raise<IoError>(where, "'", file.source(), "': no optimizer tensor '", tensor, "'");
      }
      read_slot_tensor(where, file, tensor, slot, part.second->data() + slot.offset);
    }
  }
  if (state.v.size() > 0 && state.v.minCoeff() < S(0)) {
    raise<IoError>(where, "'", file.source(), "': a second moment 'optimizer.v.*' is negative");
  }
  for (const auto& name : file.names()) {
    if (!is_optimizer_tensor(name)) continue;
    const bool m = name.rfind("optimizer.m.", 0) == 0, v = name.rfind("optimizer.v.", 0) == 0;
    if (!(m || v) || !params.find(name.substr(12))) {
      raise<IoError>(where, "'", file.source(), "': optimizer tensor '", name,
                     "' matches no parameter of the model");
    }
  }
  return state;
}

}  // namespace detail

// ---- building blocks for custom files ----------------------------------------------------------

/// Adds every parameter (dtype F32 or F64) and the standard metadata (with `config_json` when
/// non-empty) to `w`; add more metadata with w.set_metadata and write with w.write(path).
template <class S>
void add_parameters(SafetensorsWriter& w, const Parameters<S>& params,
                    const std::string& config_json = "", DType dtype = dtype_of<S>()) {
  detail::add_parameters(w, "add_parameters", params, config_json, dtype);
}

/// Adds the optimizer state (step, m, v, informational options) of `opt`, built for `params`.
template <class S>
void add_optimizer_state(SafetensorsWriter& w, const Adam<S>& opt, const Parameters<S>& params) {
  detail::add_optimizer(w, "add_optimizer_state", opt, params);
}

// ---- parameters ------------------------------------------------------------------------------

/// Saves every parameter of `params` (dtype F32 or F64) with `config_json` (may be empty) in
/// the metadata. InvalidArgument for another dtype or a non-finite parameter (nothing written);
/// IoError when the file cannot be written (an existing file is then unchanged).
/// `extra_metadata`: more string entries for "__metadata__" (reserved keys are refused).
template <class S>
void save_parameters(const std::string& path, const Parameters<S>& params,
                     const std::string& config_json = "", DType dtype = dtype_of<S>(),
                     const std::map<std::string, std::string>& extra_metadata = {}) {
  SafetensorsWriter w;
  detail::add_parameters(w, "save_parameters", params, config_json, dtype);
  detail::add_extra_metadata(w, "save_parameters", extra_metadata);
  w.write(path);
}

/// Replaces every parameter value of `params` with the file's (gradients are untouched).
template <class S>
CheckpointInfo load_parameters(const SafetensorsFile& file, Parameters<S>& params,
                               const LoadOptions& options = {}) {
  CheckpointInfo info;
  Vector<S> values =
      detail::read_parameters("load_parameters", file, params, options, info.tensors_loaded);
  info.metadata = file.metadata();
  params.values().swap(values);
  return info;
}
template <class S>
CheckpointInfo load_parameters(const std::string& path, Parameters<S>& params,
                               const LoadOptions& options = {}) {
  return load_parameters(SafetensorsFile::load(path), params, options);
}

// ---- optimizer state -------------------------------------------------------------------------

/// Saves the optimizer state (step, m, v) of `opt`, built for the layout of `params`.
template <class S>
void save_optimizer(const std::string& path, const Adam<S>& opt, const Parameters<S>& params) {
  SafetensorsWriter w;
  detail::add_optimizer(w, "save_optimizer", opt, params);
  w.write(path);
}

/// Restores the optimizer state; `opt` must be built for the layout of `params`. The options
/// (lr, betas, ...) are the caller's: the file's are only informational metadata.
template <class S>
void load_optimizer(const SafetensorsFile& file, Adam<S>& opt, const Parameters<S>& params) {
  auto state = detail::read_optimizer("load_optimizer", file, opt, params);
  opt.set_state(state.step, std::move(state.m), std::move(state.v));
}
template <class S>
void load_optimizer(const std::string& path, Adam<S>& opt, const Parameters<S>& params) {
  load_optimizer(SafetensorsFile::load(path), opt, params);
}

// ---- both in one file --------------------------------------------------------------------------

/// Parameters (dtype `dtype`) and optimizer state in one file: what a resumable run saves.
template <class S>
void save_checkpoint(const std::string& path, const Parameters<S>& params, const Adam<S>& opt,
                     const std::string& config_json = "", DType dtype = dtype_of<S>(),
                     const std::map<std::string, std::string>& extra_metadata = {}) {
  SafetensorsWriter w;
  detail::add_parameters(w, "save_checkpoint", params, config_json, dtype);
  detail::add_optimizer(w, "save_checkpoint", opt, params);
  detail::add_extra_metadata(w, "save_checkpoint", extra_metadata);
  w.write(path);
}

/// Loads parameters and optimizer state together: either both are replaced or neither.
template <class S>
CheckpointInfo load_checkpoint(const SafetensorsFile& file, Parameters<S>& params, Adam<S>& opt,
                               const LoadOptions& options = {}) {
  CheckpointInfo info;
  Vector<S> values =
      detail::read_parameters("load_checkpoint", file, params, options, info.tensors_loaded);
  auto state = detail::read_optimizer("load_checkpoint", file, opt, params);
  info.metadata = file.metadata();
  opt.set_state(state.step, std::move(state.m), std::move(state.v));  // validated: cannot throw
  params.values().swap(values);
  return info;
}
template <class S>
CheckpointInfo load_checkpoint(const std::string& path, Parameters<S>& params, Adam<S>& opt,
                               const LoadOptions& options = {}) {
  return load_checkpoint(SafetensorsFile::load(path), params, opt, options);
}

// ---- models ----------------------------------------------------------------------------------
// For any model type with `parameters()` and `config()` (a ReformerConfig), e.g. ReformerLM<S>.
// A model class's `kArchitecture` (model/parameter_layout.hpp) is written into the stored config's
// "architectures" (as HF's config.json) and checked on restore; a type without one counts as the
// language model.

namespace detail {
template <class Model, class = void>
struct has_architecture : std::false_type {};
template <class Model>
struct has_architecture<Model, std::void_t<decltype(Model::kArchitecture)>> : std::true_type {};

template <class Model>
constexpr Architecture architecture_of() {
  if constexpr (has_architecture<Model>::value) {
    return Model::kArchitecture;
  } else {
    return Architecture::kLanguageModel;
  }
}

template <class Model>
std::string config_json_of(const Model& model) {
  return config_to_json_string(model.config(), architecture_name(architecture_of<Model>()));
}

/// The architecture named by the stored config's "architectures" (the language model when the
/// field is absent, as in files written before it existed); IoError when it names another class.
inline Architecture stored_architecture(const SafetensorsFile& file) {
  const char* where = "Checkpoint::open";
  auto it = file.metadata().find("config");
  if (it == file.metadata().end()) return Architecture::kLanguageModel;
  const JsonReadResult parsed = read_json(it->second);
  if (!parsed.ok() || !parsed.value.is_object() || !parsed.value.contains("architectures")) {
    return Architecture::kLanguageModel;
  }
  const nlohmann::json& names = parsed.value.at("architectures");
  if (names.is_null()) return Architecture::kLanguageModel;
  if (!names.is_array() || names.size() != 1 || !names[0].is_string()) {
    raise<IoError>(where, "'", file.source(), "': config 'architectures' = ", json_excerpt(names),
                   " must list one class name");
  }
  const auto a = architecture_from_name(names[0].get<std::string>());
  if (!a) {
    raise<IoError>(where, "'", file.source(), "': config 'architectures' names ",
                   json_excerpt(names[0]),
                   ", not one of ReformerModelWithLMHead, ReformerForMaskedLM, "
                   "ReformerForSequenceClassification, ReformerForQuestionAnswering");
  }
  return *a;
}
}  // namespace detail

/// Throws IoError (naming the file and the first missing or mismatched tensor) unless `file`
/// holds every parameter of the `architecture` model of `config` (reformer_parameter_layout)
/// with its shape and a floating dtype (or an alias of LoadOptions::aliases), and, with
/// `with_optimizer`, both Adam moments of each. Checks sizes only: nothing is read or allocated
/// beyond the layout itself.
inline void check_tensors_for_config(const SafetensorsFile& file, const ReformerConfig& config,
                                     bool with_optimizer = false, const LoadOptions& options = {},
                                     Architecture architecture = Architecture::kLanguageModel) {
  const char* where = "check_tensors_for_config";
  std::vector<ParameterSpec> layout;
  try {
    layout = reformer_parameter_layout(config, architecture);
  } catch (const InvalidArgument& e) {
    raise<IoError>(where, "'", file.source(), "': ", e.what());
  }
  // Every tensor is at least 2 bytes an element (F16), and all of them lie inside the file.
  const auto count = checked_product({parameter_count(layout), with_optimizer ? 3 : 1});
  if (!count || *count > static_cast<Index>(file.tensor_bytes() / 2)) {
    raise<IoError>(where, "'", file.source(), "': its config needs ", parameter_count(layout),
                   " parameters", with_optimizer ? " (and their Adam moments)" : "",
                   ", more than its ", file.tensor_bytes(), " bytes of tensors can hold");
  }
  auto expect = [&](const std::string& tensor, const std::string& parameter,
                    const std::vector<Index>& shape) {
    std::string name = tensor;
    if (!file.contains(name)) {
      for (const auto& alias : options.aliases) {
        if (alias.second == tensor && file.contains(alias.first)) name = alias.first;
      }
    }
    if (!file.contains(name)) {
      raise<IoError>(where, "'", file.source(), "': no tensor '", tensor, "' (shape ",
                     detail::shape_string(detail::shape64(shape)), ") for parameter '", parameter,
                     "' of its config (", architecture_name(architecture), ")");
    }
    const TensorInfo& ti = file.info(name);
    if (ti.shape != detail::shape64(shape) || !dtype_is_floating(ti.dtype)) {
      raise<IoError>(where, "'", file.source(), "': tensor '", name, "' has shape ",
                     detail::shape_string(ti.shape), " and dtype ", dtype_name(ti.dtype),
                     ", its config needs shape ", detail::shape_string(detail::shape64(shape)),
                     " and a floating dtype");
    }
  };
  for (const auto& p : layout) {
    expect(p.name, p.name, p.shape);
    if (with_optimizer) {
      expect("optimizer.m." + p.name, p.name, p.shape);
      expect("optimizer.v." + p.name, p.name, p.shape);
    }
  }
}

/// The config stored in a checkpoint (validated; IoError when the file has none).
inline ReformerConfig load_config(const SafetensorsFile& file) {
  auto it = file.metadata().find("config");
  if (it == file.metadata().end()) {
    raise<IoError>("load_config", "'", file.source(), "' has no 'config' metadata");
  }
  try {
    return config_from_json_string(it->second);
  } catch (const ConfigError& e) {
    raise<IoError>("load_config", "'", file.source(), "': ", e.what());
  }
}
inline ReformerConfig load_config(const std::string& path) {
  return load_config(SafetensorsFile::load(path));
}

/// Saves the model's parameters with its config.
template <class Model>
void save_model(const std::string& path, const Model& model,
                DType dtype = dtype_of<typename Model::Scalar>()) {
  save_parameters(path, model.parameters(), detail::config_json_of(model), dtype);
}

/// Loads parameters into an existing model (built from a config with the same shapes, e.g.
/// `ReformerLM<S> model(load_config(path))`).
template <class Model>
CheckpointInfo load_model(const std::string& path, Model& model, const LoadOptions& options = {}) {
  return load_parameters(path, model.parameters(), options);
}

/// Saves what a resumable run needs: parameters in the model's dtype, config, optimizer state.
template <class Model, class S>
void save_training_state(const std::string& path, const Model& model, const Adam<S>& opt,
                         const std::map<std::string, std::string>& extra_metadata = {}) {
  save_checkpoint(path, model.parameters(), opt, detail::config_json_of(model), dtype_of<S>(),
                  extra_metadata);
}

/// Restores parameters and optimizer state (all or nothing).
template <class Model, class S>
CheckpointInfo load_training_state(const std::string& path, Model& model, Adam<S>& opt,
                                   const LoadOptions& options = {}) {
  return load_checkpoint(path, model.parameters(), opt, options);
}

// ---- a checkpoint opened once ------------------------------------------------------------------

/// Metadata key of the caller's JSON object (Checkpoint::save's `user`): the settings of a
/// program, its progress (elapsed time, ...), anything it needs to resume.
inline constexpr const char* kUserMetadataKey = "user";

/// A checkpoint file read and validated once, then queried and restored from:
///
///   Checkpoint::save(path, model, opt, {{"elapsed_s", 12.5}});   // atomic write
///   const auto ck = Checkpoint::open(path);
///   ReformerLM<float> model(ck.config());
///   Adam<float> opt(model.parameters(), AdamOptions::adam(1e-3));
///   ck.restore(model, opt);      // parameters and Adam state, all or nothing
///   ck.step();                   // updates made so far (the RNG streams are keyed by it)
///   ck.user_value<double>("elapsed_s");
///
/// Every error is an IoError naming the file and what is wrong with it.
class Checkpoint {
 public:
  /// Reads `path`, its config (when it has one) and its user JSON (when it has one).
  static Checkpoint open(const std::string& path) {
    return Checkpoint(SafetensorsFile::load(path));
  }

  /// Parses a file already in memory (`file.source()` names it in errors).
  explicit Checkpoint(SafetensorsFile file) : file_(std::move(file)) {
    const auto& meta = file_.metadata();
    if (meta.count("config")) {
      config_ = load_config(file_);
      architecture_ = detail::stored_architecture(file_);
      check_tensors_for_config(file_, *config_, has_optimizer(), {}, architecture_);
    }
    auto it = meta.find(kUserMetadataKey);
    if (it != meta.end()) {
      JsonReadResult parsed = read_json(it->second);  // nesting at most kMaxJsonDepth levels
      if (!parsed.ok()) {
        raise<IoError>("Checkpoint::open", "'", path(), "': metadata '", kUserMetadataKey,
                       "': ", parsed.error);
      }
      user_ = std::move(parsed.value);
      if (!user_.is_object()) {
        raise<IoError>("Checkpoint::open", "'", path(), "': metadata '", kUserMetadataKey,
                       "' is not a JSON object");
      }
    }
    if (has_optimizer()) step_ = detail::read_optimizer_step("Checkpoint::open", file_);
  }

  const std::string& path() const { return file_.source(); }
  const SafetensorsFile& file() const { return file_; }
  const std::map<std::string, std::string>& metadata() const { return file_.metadata(); }

  bool has_config() const { return config_.has_value(); }
  /// The model config stored in the file (validated); IoError when it has none.
  const ReformerConfig& config() const {
    if (!config_) raise<IoError>("Checkpoint::config", "'", path(), "' has no 'config' metadata");
    return *config_;
  }

  /// The model class the file was saved from (config "architectures"; the language model when
  /// the file names none).
  Architecture architecture() const { return architecture_; }

  /// Whether the file holds an optimizer state (restore(model, optimizer) needs one).
  bool has_optimizer() const { return file_.metadata().count("optimizer.step") != 0; }
  /// The optimizer's update count when saved (0 without optimizer state).
  std::int64_t step() const { return step_; }

  /// The caller's JSON object given to save() (an empty object when there was none).
  const nlohmann::json& user() const { return user_; }
  /// `user()[key]` as a T; IoError naming the file and the key when absent or of another type.
  template <class T>
  T user_value(const std::string& key) const {
    if (!user_.contains(key)) {
      raise<IoError>("Checkpoint::user_value", "'", path(), "' lacks the user setting '", key, "'");
    }
    try {
      return user_.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      raise<IoError>("Checkpoint::user_value", "'", path(), "': user setting '", key,
                     "' has the wrong type (", json_excerpt(user_.at(key)), ")");
    }
  }

  /// Replaces the model's parameters (the model must have the stored shapes, e.g. be built
  /// from config()); on any mismatch an IoError and the model is unchanged.
  /// IoError when the model is of another class than the file's architecture().
  template <class Model>
  CheckpointInfo restore(Model& model, const LoadOptions& options = {}) const {
    check_architecture<Model>();
    return load_parameters(file_, model.parameters(), options);
  }
  /// Replaces parameters and optimizer state together: both or neither.
  template <class Model, class S>
  CheckpointInfo restore(Model& model, Adam<S>& optimizer, const LoadOptions& options = {}) const {
    check_architecture<Model>();
    return load_checkpoint(file_, model.parameters(), optimizer, options);
  }

  /// Writes the model's parameters (its dtype), config and `user` (a JSON object) atomically:
  /// a temporary file in the same folder, flushed to disk, renamed over `path`.
  template <class Model>
  static void save(const std::string& path, const Model& model,
                   const nlohmann::json& user = nlohmann::json::object()) {
    SafetensorsWriter w;
    detail::add_parameters(w, "Checkpoint::save", model.parameters(), detail::config_json_of(model),
                           dtype_of<typename Model::Scalar>());
    add_user(w, user);
    w.write(path);
  }
  /// The same with the optimizer state (its step count is the checkpoint's step()).
  template <class Model, class S>
  static void save(const std::string& path, const Model& model, const Adam<S>& optimizer,
                   const nlohmann::json& user = nlohmann::json::object()) {
    SafetensorsWriter w;
    detail::add_parameters(w, "Checkpoint::save", model.parameters(), detail::config_json_of(model),
                           dtype_of<S>());
    detail::add_optimizer(w, "Checkpoint::save", optimizer, model.parameters());
    add_user(w, user);
    w.write(path);
  }

 private:
  template <class Model>
  void check_architecture() const {
    const Architecture model = detail::architecture_of<Model>();
    if (has_config() && model != architecture_) {
      raise<IoError>("Checkpoint::restore", "'", path(), "' holds a ",
                     architecture_name(architecture_), ", not a ", architecture_name(model));
    }
  }

  static void add_user(SafetensorsWriter& w, const nlohmann::json& user) {
    REFORMER_REQUIRE(user.is_object(), InvalidArgument, "Checkpoint::save",
                     "user = ", json_excerpt(user), " must be a JSON object");
    if (!user.empty()) w.set_metadata(kUserMetadataKey, user.dump());
  }

  SafetensorsFile file_;
  std::optional<ReformerConfig> config_;
  Architecture architecture_ = Architecture::kLanguageModel;
  nlohmann::json user_ = nlohmann::json::object();
  std::int64_t step_ = 0;
};

}  // namespace reformer::io
