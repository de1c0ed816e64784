#pragma once
// Loading the Hugging Face reference fixtures (tests/data/*.safetensors, see
// tests/data/README.md) into the library's types.
//
//   reformer::test::Fixture fx("lsh_attention_causal");
//   Matrix<double> x = fx.activations("input");        // D x (B*T) from [B, T, D]
//   fx.load_params(params, "");                          // every param.<n> into slot <n>
//   BucketTape tape = fx.buckets();                      // [B, H, R, T]
//   ... run forward / backward ...
//   EXPECT_LT(fx.max_grad_error(params, "").error, 1e-9) << fx.max_grad_error(params, "");
//
// Every helper throws reformer::IoError with a message naming the fixture and tensor when the
// data does not match what the test asks for (missing tensor, wrong shape, wrong rank).
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#ifndef REFORMER_TEST_DATA_DIR
#error "REFORMER_TEST_DATA_DIR must be defined (tests/CMakeLists.txt does it)"
#endif

namespace reformer::test {

/// The worst per-tensor gradient error found by Fixture::max_grad_error.
struct GradError {
  double error = 0.0;        // max |a - b| / max |ref| of the worst tensor
  std::string name;          // that tensor's parameter name (empty when nothing was compared)
  std::size_t compared = 0;  // number of tensors compared
};

inline std::ostream& operator<<(std::ostream& os, const GradError& e) {
  return os << "worst gradient error " << e.error << " in '" << e.name << "' (" << e.compared
            << " tensors compared)";
}

class Fixture {
 public:
  /// Loads REFORMER_TEST_DATA_DIR "/" name ".safetensors" (a name containing '/' or ending in
  /// ".safetensors" is used as a path as it is).
  explicit Fixture(const std::string& name)
      : name_(name), file_(io::SafetensorsFile::load(path_of(name))) {}

  const std::string& name() const { return name_; }
  const io::SafetensorsFile& file() const { return file_; }

  /// The HF ReformerConfig fields stored in the metadata key "config".
  nlohmann::json config() const {
    try {
      return nlohmann::json::parse(file_.metadata("config"));
    } catch (const nlohmann::json::exception& e) {
      raise<IoError>("Fixture::config", "'", name_, "': metadata 'config' is not JSON: ", e.what());
    }
  }
  /// A metadata value ("batch", "length", "kind", "causal", ...).
  const std::string& meta(const std::string& key) const { return file_.metadata(key); }
  Index batch() const { return meta_int("batch"); }
  Index length() const { return meta_int("length"); }

  bool has(const std::string& tensor) const { return file_.contains(tensor); }
  const std::vector<std::int64_t>& shape(const std::string& tensor) const {
    return file_.info(tensor).shape;
  }
  std::vector<double> values(const std::string& tensor) const { return file_.read<double>(tensor); }
  std::vector<std::int64_t> ints(const std::string& tensor) const {
    return file_.read<std::int64_t>(tensor);
  }

  /// A [B, T, D] tensor as the D x (B*T) column-major matrix with the same bytes (sequence b
  /// in columns [b*T, (b+1)*T)). Also fits [B, T, V] logits.
  template <class S = double>
  Matrix<S> activations(const std::string& tensor) const {
    const auto& s = shape(tensor);
    if (s.size() != 3) {
      raise<IoError>("Fixture::activations", "'", name_, "': tensor '", tensor, "' has rank ",
                     s.size(), ", expected [B, T, D]");
    }
    Matrix<S> m(static_cast<Index>(s[2]), static_cast<Index>(s[0] * s[1]));
    file_.read_into(tensor, m.data(), static_cast<std::size_t>(m.size()));
    return m;
  }

  /// The LSH buckets of an int64 [B, H, R, T] tensor ("buckets", or "buckets.<layer>").
  BucketTape buckets(const std::string& tensor = "buckets") const {
    const auto& s = shape(tensor);
    if (s.size() != 4) {
      raise<IoError>("Fixture::buckets", "'", name_, "': tensor '", tensor, "' has rank ", s.size(),
                     ", expected [B, H, R, T]");
    }
    BucketTape tape;
    tape.resize(s[0], s[1], s[2], s[3]);
    file_.read_into(tensor, tape.data.data(), tape.data.size());
    return tape;
  }

  /// Copies every `param.<n>` tensor into the store's slot `prefix + n` (shapes must be equal)
  /// and checks that every store slot whose name starts with `prefix` was filled. HF's alias
  /// `lm_head.decoder.bias` (the same tensor as `lm_head.bias`) is skipped when the store has
  /// no such slot. Returns the number of tensors copied.
  template <class S>
  std::size_t load_params(Parameters<S>& params, const std::string& prefix = "") const {
    std::vector<bool> filled(static_cast<std::size_t>(params.num_slots()), false);
    std::size_t copied = 0;
    for (const auto& tensor : file_.names()) {
      if (tensor.rfind("param.", 0) != 0) continue;
      const std::string n = tensor.substr(6);
      const auto id = params.find(prefix + n);
      if (!id) {
        if (n == "lm_head.decoder.bias") continue;
        raise<IoError>("Fixture::load_params", "'", name_, "': tensor '", tensor, "' has no slot '",
                       prefix + n, "' in the store");
      }
      check_slot_shape("Fixture::load_params", tensor, params.slot(*id));
      auto v = params.value_vector(*id);
      file_.read_into(tensor, v.data(), static_cast<std::size_t>(v.size()));
      filled[static_cast<std::size_t>(*id)] = true;
      ++copied;
    }
    for (SlotId id = 0; id < params.num_slots(); ++id) {
      const auto& slot = params.slot(id);
      if (slot.name.rfind(prefix, 0) == 0 && !filled[static_cast<std::size_t>(id)]) {
        raise<IoError>("Fixture::load_params", "'", name_, "': store slot '", slot.name,
                       "' has no tensor 'param.", slot.name.substr(prefix.size()), "'");
      }
    }
    return copied;
  }

  /// Compares every `grad.<n>` with the store's gradient of slot `prefix + n`:
  /// per tensor max |g - ref| / max |ref|; returns the worst tensor. Throws like load_params
  /// when a slot is missing or has another shape.
  template <class S>
  GradError max_grad_error(const Parameters<S>& params, const std::string& prefix = "") const {
    GradError worst;
    for (const auto& tensor : file_.names()) {
      if (tensor.rfind("grad.", 0) != 0) continue;
      const std::string n = tensor.substr(5);
      const auto id = params.find(prefix + n);
      if (!id) {
        if (n == "lm_head.decoder.bias") continue;
        raise<IoError>("Fixture::max_grad_error", "'", name_, "': tensor '", tensor,
                       "' has no slot '", prefix + n, "' in the store");
      }
      check_slot_shape("Fixture::max_grad_error", tensor, params.slot(*id));
      const std::vector<double> ref = file_.read<double>(tensor);
      const auto g = params.grad_vector(*id);
      double diff = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(g[static_cast<Index>(i)]) - ref[i]));
        scale = std::max(scale, std::abs(ref[i]));
      }
      const double err = diff / std::max(scale, 1e-300);
      // NaN is the worst possible error and sticks.
      const bool worse = worst.name.empty() ||
                         (!std::isnan(worst.error) && (std::isnan(err) || err > worst.error));
      if (worse) {
        worst.error = err;
        worst.name = prefix + n;
      }
      ++worst.compared;
    }
    return worst;
  }

 private:
  static std::string path_of(const std::string& name) {
    const bool is_path =
        name.find('/') != std::string::npos ||
        (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0);
    return is_path ? name : std::string(REFORMER_TEST_DATA_DIR) + "/" + name + ".safetensors";
  }

  Index meta_int(const std::string& key) const {
    const std::string& v = meta(key);
    try {
      std::size_t used = 0;
      const long long n = std::stoll(v, &used);
      if (used == v.size()) return static_cast<Index>(n);
    } catch (const std::exception&) {
    }
    raise<IoError>("Fixture::meta_int", "'", name_, "': metadata '", key, "' = '", v,
                   "' is not an integer");
  }

  void check_slot_shape(const char* where, const std::string& tensor, const ParamSlot& slot) const {
    const auto& s = shape(tensor);
    const bool same =
        s.size() == slot.shape.size() &&
        std::equal(s.begin(), s.end(), slot.shape.begin(),
                   [](std::int64_t a, Index b) { return a == static_cast<std::int64_t>(b); });
    if (!same) {
      std::string fs, ss;
      for (auto e : s) fs += std::to_string(e) + ",";
      for (auto e : slot.shape) ss += std::to_string(e) + ",";
      raise<IoError>(where, "'", name_, "': tensor '", tensor, "' has shape [", fs, "] but slot '",
                     slot.name, "' has shape [", ss, "]");
    }
  }

  std::string name_;
  io::SafetensorsFile file_;
};

}  // namespace reformer::test
