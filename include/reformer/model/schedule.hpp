#pragma once
// Learning-rate schedules: small value types with lr(step).
//
// `step` counts the updates already made (0 for the first update), i.e. the optimizer's
// step_count() before it steps; Adam::step(params, schedule) passes exactly that.
//   constant:       lr(s) = peak
//   warmup + rsqrt: lr(s) = peak * min(n / W, sqrt(W / n)),  n = s + 1
//                   (linear warmup over W updates, then decay as 1/sqrt(n): the Transformer's
//                   "Noam" schedule normalised to reach `peak` at n = W)
//   warmup + cosine: lr(s) = peak * n / W for n <= W, then
//                   floor + (peak - floor) * (1 + cos(pi * p)) / 2,  p = (n - W) / (N - W)
//                   clamped to [0, 1], so lr = floor from update N on.
#include "reformer/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace reformer {

class LrSchedule {
 public:
  enum class Kind { kConstant, kWarmupRsqrt, kWarmupCosine };

  /// The default schedule: constant 1e-3.
  LrSchedule() = default;

  static LrSchedule constant(double lr) {
    check_lr("LrSchedule::constant", "lr", lr);
    LrSchedule s;
    s.kind_ = Kind::kConstant;
    s.peak_ = lr;
    return s;
  }

  /// Linear warmup over `warmup_steps` (>= 1) updates to `peak_lr`, then peak * sqrt(W / n).
  static LrSchedule warmup_rsqrt(double peak_lr, std::int64_t warmup_steps) {
    check_lr("LrSchedule::warmup_rsqrt", "peak_lr", peak_lr);
    REFORMER_REQUIRE(warmup_steps >= 1, InvalidArgument, "LrSchedule::warmup_rsqrt",
                     "warmup_steps = ", warmup_steps, " must be >= 1");
    LrSchedule s;
    s.kind_ = Kind::kWarmupRsqrt;
    s.peak_ = peak_lr;
    s.warmup_ = warmup_steps;
    return s;
  }

  /// Linear warmup over `warmup_steps` (>= 0) updates, then a cosine from `peak_lr` down to
  /// `final_lr` (0 <= final_lr <= peak_lr) at update `total_steps` (> warmup_steps).
  static LrSchedule warmup_cosine(double peak_lr, std::int64_t warmup_steps,
                                  std::int64_t total_steps, double final_lr = 0.0) {
    const char* where = "LrSchedule::warmup_cosine";
    check_lr(where, "peak_lr", peak_lr);
    REFORMER_REQUIRE(warmup_steps >= 0, InvalidArgument, where, "warmup_steps = ", warmup_steps,
                     " must be >= 0");
    REFORMER_REQUIRE(total_steps > warmup_steps, InvalidArgument, where,
                     "total_steps = ", total_steps, " must be > warmup_steps = ", warmup_steps);
    REFORMER_REQUIRE(std::isfinite(final_lr) && final_lr >= 0.0 && final_lr <= peak_lr,
                     InvalidArgument, where, "final_lr = ", final_lr,
                     " must be in [0, peak_lr = ", peak_lr, "]");
    LrSchedule s;
    s.kind_ = Kind::kWarmupCosine;
    s.peak_ = peak_lr;
    s.warmup_ = warmup_steps;
    s.total_ = total_steps;
    s.final_ = final_lr;
    return s;
  }

  /// The learning rate of update number `step` (0-based, >= 0).
  double lr(std::int64_t step) const {
    REFORMER_REQUIRE(step >= 0, InvalidArgument, "LrSchedule::lr", "step = ", step,
                     " must be >= 0");
    const double n = static_cast<double>(step) + 1.0;
    const double w = static_cast<double>(warmup_);
    switch (kind_) {
      case Kind::kConstant:
        return peak_;
      case Kind::kWarmupRsqrt:
        return peak_ * std::min(n / w, std::sqrt(w / n));
      case Kind::kWarmupCosine: {
        if (n <= w) return peak_ * n / w;
        const double p = std::min(1.0, (n - w) / static_cast<double>(total_ - warmup_));
        constexpr double kPi = 3.14159265358979323846;
        return final_ + (peak_ - final_) * 0.5 * (1.0 + std::cos(kPi * p));
      }
    }
    return peak_;
  }
  double operator()(std::int64_t step) const { return lr(step); }

  Kind kind() const { return kind_; }
  double peak_lr() const { return peak_; }
  std::int64_t warmup_steps() const { return warmup_; }
  std::int64_t total_steps() const { return total_; }
  double final_lr() const { return final_; }

 private:
  static void check_lr(const char* where, const char* arg, double lr) {
    REFORMER_REQUIRE(std::isfinite(lr) && lr > 0.0, InvalidArgument, where, arg, " = ", lr,
                     " must be finite and > 0");
  }

  Kind kind_ = Kind::kConstant;
  double peak_ = 1e-3;
  std::int64_t warmup_ = 0;
  std::int64_t total_ = 0;
  double final_ = 0.0;
};

}  // namespace reformer
