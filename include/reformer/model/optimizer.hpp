#pragma once
// Adam and AdamW over a Parameters<S> store (flat loops over the named slots).
//
// One update, number t = step_count() + 1 (PyTorch's torch.optim.Adam / AdamW, amsgrad off):
//   Adam  (L2):       g <- g + wd * w
//   AdamW (decoupled): w <- w * (1 - lr * wd)
//   m <- m + (1 - beta1) * (g - m)                 first moment  (PyTorch's lerp form)
//   v <- beta2 * v + (1 - beta2) * g^2             second moment
//   w <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Defaults beta1 0.9, beta2 0.98, eps 1e-9 (the Reformer / Transformer settings). Weight decay
// can be restricted to some slots with a name predicate, e.g. decay_except_bias_and_norm.
//
// The state (step count, m, v) is public through accessors so checkpoints can save and restore
// it (io/checkpoint.hpp): a restored optimizer continues bit-identically. Updates are
// sequential per element, so results never depend on the thread count.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/model/clip.hpp"
#include "reformer/model/schedule.hpp"

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace reformer {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.98;
  double eps = 1e-9;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  ///< false: Adam (L2 in the gradient); true: AdamW

  static AdamOptions adam(double lr = 1e-3, double weight_decay = 0.0) {
    AdamOptions o;
    o.lr = lr;
    o.weight_decay = weight_decay;
    return o;
  }
  static AdamOptions adamw(double lr = 1e-3, double weight_decay = 0.01) {
    AdamOptions o = adam(lr, weight_decay);
    o.decoupled_weight_decay = true;
    return o;
  }

  /// Throws InvalidArgument naming the field unless every value is usable.
  void validate() const {
    const char* where = "AdamOptions::validate";
    REFORMER_REQUIRE(std::isfinite(lr) && lr > 0.0, InvalidArgument, where, "lr = ", lr,
                     " must be finite and > 0");
    REFORMER_REQUIRE(beta1 >= 0.0 && beta1 < 1.0, InvalidArgument, where, "beta1 = ", beta1,
                     " must be in [0, 1)");
    REFORMER_REQUIRE(beta2 >= 0.0 && beta2 < 1.0, InvalidArgument, where, "beta2 = ", beta2,
                     " must be in [0, 1)");
    REFORMER_REQUIRE(std::isfinite(eps) && eps > 0.0, InvalidArgument, where, "eps = ", eps,
                     " must be finite and > 0");
    REFORMER_REQUIRE(std::isfinite(weight_decay) && weight_decay >= 0.0, InvalidArgument, where,
                     "weight_decay = ", weight_decay, " must be finite and >= 0");
  }
};

/// Which parameters receive weight decay, by name (an empty function: all of them).
using DecayFilter = std::function<bool(const std::string& name)>;

/// The usual exclusion: no decay for biases and LayerNorm parameters.
inline bool decay_except_bias_and_norm(const std::string& name) {
  const std::string bias = ".bias";
  const bool is_bias =
      name == "bias" || (name.size() >= bias.size() &&
                         name.compare(name.size() - bias.size(), bias.size(), bias) == 0);
  return !is_bias && name.find("layer_norm") == std::string::npos;
}

template <class S>
class Adam {
 public:
  using Scalar = S;

  /// An optimizer for the store's current layout (m and v start at zero, step_count() at 0).
  explicit Adam(const Parameters<S>& params, AdamOptions options = {}, DecayFilter decays = {})
      : options_(options) {
    options_.validate();
    m_ = Vector<S>::Zero(params.size());
    v_ = Vector<S>::Zero(params.size());
    decays_.reserve(static_cast<std::size_t>(params.num_slots()));
    for (const auto& slot : params.slots()) {
      names_.push_back(slot.name);
      decays_.push_back(!decays || decays(slot.name) ? 1 : 0);
    }
  }

  const AdamOptions& options() const { return options_; }
  double lr() const { return options_.lr; }
  void set_lr(double lr) {
    REFORMER_REQUIRE(std::isfinite(lr) && lr > 0.0, InvalidArgument, "Adam::set_lr", "lr = ", lr,
                     " must be finite and > 0");
    options_.lr = lr;
  }

  /// Updates made so far.
  std::int64_t step_count() const { return step_; }
  /// Whether slot `id` receives weight decay.
  bool decays(SlotId id) const { return decays_.at(static_cast<std::size_t>(id)) != 0; }

  /// One update with the current lr. Throws InvalidArgument — leaving parameters and state
  /// untouched — when the store's layout differs from the one the optimizer was built for or a
  /// gradient is NaN/Inf (the message names the first bad parameter).
  void step(Parameters<S>& params) { step(params, options_.lr); }

  /// One update with learning rate `lr` (does not change options().lr).
  void step(Parameters<S>& params, double lr) {
    const char* where = "Adam::step";
    REFORMER_REQUIRE(std::isfinite(lr) && lr > 0.0, InvalidArgument, where, "lr = ", lr,
                     " must be finite and > 0");
    check_layout(where, params);
    check_finite_grads(where, params);

    const std::int64_t t = step_ + 1;
    const double bias_correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t));
    const double bias_correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t));
    const S step_size = static_cast<S>(lr / bias_correction1);
    const S bc2_sqrt = static_cast<S>(std::sqrt(bias_correction2));
    const S one_minus_b1 = static_cast<S>(1.0 - options_.beta1);
    const S b2 = static_cast<S>(options_.beta2);
    const S one_minus_b2 = static_cast<S>(1.0 - options_.beta2);
    const S eps = static_cast<S>(options_.eps);

    for (SlotId id = 0; id < params.num_slots(); ++id) {
      const ParamSlot& slot = params.slot(id);
      const bool decay = options_.weight_decay > 0.0 && decays(id);
      const S l2 =
          static_cast<S>(decay && !options_.decoupled_weight_decay ? options_.weight_decay : 0.0);
      const S shrink = static_cast<S>(
          decay && options_.decoupled_weight_decay ? 1.0 - lr * options_.weight_decay : 1.0);
      S* w = params.values().data() + slot.offset;
      const S* gp = params.grads().data() + slot.offset;
      S* m = m_.data() + slot.offset;
      S* v = v_.data() + slot.offset;
      for (Index i = 0; i < slot.size; ++i) {
        const S g = l2 != S(0) ? gp[i] + l2 * w[i] : gp[i];
        m[i] += one_minus_b1 * (g - m[i]);
        v[i] = b2 * v[i] + one_minus_b2 * g * g;
        const S denom = std::sqrt(v[i]) / bc2_sqrt + eps;
        w[i] = w[i] * shrink - step_size * m[i] / denom;
      }
    }
    step_ = t;
  }

  /// One update with the schedule's lr for this update: schedule.lr(step_count()).
  void step(Parameters<S>& params, const LrSchedule& schedule) { step(params, schedule.lr(step_)); }

  // --- state (for checkpoints) ----------------------------------------------------------------
  /// First and second moments, in the store's flat layout.
  const Vector<S>& exp_avg() const { return m_; }
  const Vector<S>& exp_avg_sq() const { return v_; }
  /// Parameter names the state was laid out for (the store's slots at construction).
  const std::vector<std::string>& slot_names() const { return names_; }

  /// Replaces the whole state. Throws InvalidArgument (state unchanged) unless step >= 0, both
  /// moments have the layout's size, are finite, and v >= 0.
  void set_state(std::int64_t step, Vector<S> exp_avg, Vector<S> exp_avg_sq) {
    const char* where = "Adam::set_state";
    REFORMER_REQUIRE(step >= 0, InvalidArgument, where, "step = ", step, " must be >= 0");
    REFORMER_REQUIRE(exp_avg.size() == m_.size() && exp_avg_sq.size() == v_.size(), InvalidArgument,
                     where, "moment sizes ", exp_avg.size(), " / ", exp_avg_sq.size(),
                     " must equal the parameter count ", m_.size());
    REFORMER_REQUIRE(exp_avg.allFinite() && exp_avg_sq.allFinite(), InvalidArgument, where,
                     "moments must be finite");
    REFORMER_REQUIRE(exp_avg_sq.size() == 0 || exp_avg_sq.minCoeff() >= S(0), InvalidArgument,
                     where, "exp_avg_sq must be >= 0");
    step_ = step;
    m_ = std::move(exp_avg);
    v_ = std::move(exp_avg_sq);
  }

  /// Back to the initial state (step 0, zero moments).
  void reset() {
    step_ = 0;
    m_.setZero();
    v_.setZero();
  }

 private:
  void check_layout(const char* where, const Parameters<S>& params) const {
    REFORMER_REQUIRE(
        params.size() == m_.size() && params.num_slots() == static_cast<Index>(names_.size()),
        InvalidArgument, where, "the store has ", params.num_slots(), " slots / ", params.size(),
        " scalars, the optimizer was built for ", names_.size(), " / ", m_.size());
  }

  AdamOptions options_;
  std::int64_t step_ = 0;
  Vector<S> m_, v_;
  std::vector<std::string> names_;
  std::vector<char> decays_;
};

}  // namespace reformer
