#pragma once
// Checks of the training loss: a non-finite loss stops the run before the optimizer changes the
// parameters, and a loss far above the uniform baseline ln V (what predicting every token with
// probability 1/V costs) is reported as divergence.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace reformer::examples {

/// Throws reformer::Error naming the step unless `loss` is finite. Called right after the
/// forward pass, so the parameters (and the last checkpoint) are those before the failure.
inline void require_finite_loss(double loss, std::int64_t step) {
  if (std::isfinite(loss)) return;
  raise<Error>("training", "step ", step + 1, ": the loss is ", loss,
               "; stopped before the optimizer changed the parameters (the last checkpoint holds "
               "the state before it; try a lower --lr or gradient clipping with --clip)");
}

/// Warns (once) when the loss exceeds the uniform baseline ln V by a wide margin.
class DivergenceWatch {
 public:
  explicit DivergenceWatch(Index vocab)
      : baseline_(std::log(static_cast<double>(vocab > 1 ? vocab : 2))),
        threshold_(2.0 * baseline_ + 1.0) {}

  double baseline() const { return baseline_; }
  double threshold() const { return threshold_; }

  /// The warning for the loss of update `step` (counted from 1), or "" (also after the first).
  std::string check(double loss, std::int64_t step) {
    if (warned_ || !(loss > threshold_)) return std::string();
    warned_ = true;
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "warning: step %lld: loss %.4g is far above ln V = %.4g (a uniform guess): the "
                  "run is diverging (try a lower --lr, or --clip)",
                  static_cast<long long>(step), loss, baseline_);
    return buf;
  }

 private:
  double baseline_;
  double threshold_;
  bool warned_ = false;
};

}  // namespace reformer::examples
