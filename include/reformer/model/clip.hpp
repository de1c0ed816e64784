#pragma once
// Gradient utilities over a Parameters<S> store: the global gradient norm, clipping by it,
// scaling, a finiteness check that names the first bad parameter, and gradient accumulation
// over several micro-batches.
//
// Gradients accumulate in the store (every backward pass adds with +=), so accumulating K
// micro-batches is: zero_grad, K backward passes, scale by 1/K — accumulate_gradients() does it.
// Everything here is a sequential flat loop: results never depend on the thread count.
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/check_finite.hpp"

#include <cmath>
#include <string>

namespace reformer {

/// Throws InvalidArgument "<where>: gradient of '<name>' element i = nan is not finite" for the
/// first non-finite gradient (in slot order); does nothing when all are finite.
template <class S>
void check_finite_grads(const char* where, const Parameters<S>& params) {
  if (params.grads().allFinite()) return;
  for (SlotId id = 0; id < params.num_slots(); ++id) {
    check_finite_elements(where, "gradient of '" + params.slot(id).name + "'",
                          params.grad_vector(id));
  }
}

/// sqrt(sum of all squared gradients), accumulated in double in a fixed order.
template <class S>
double global_grad_norm(const Parameters<S>& params) {
  const auto& g = params.grads();
  double sum = 0.0;
  for (Index i = 0; i < g.size(); ++i) {
    const double x = static_cast<double>(g[i]);
    sum += x * x;
  }
  return std::sqrt(sum);
}

/// Multiplies every gradient by `factor`.
template <class S>
void scale_grads(Parameters<S>& params, double factor) {
  REFORMER_REQUIRE(std::isfinite(factor), InvalidArgument, "scale_grads", "factor = ", factor,
                   " must be finite");
  params.grads() *= static_cast<S>(factor);
}

/// Rescales the gradients so that their global norm is at most `max_norm` (as PyTorch's
/// clip_grad_norm_: factor max_norm / (norm + 1e-6) when that is below 1) and returns the norm
/// before clipping. Throws InvalidArgument for max_norm <= 0 or non-finite gradients (naming the
/// first bad parameter); the gradients are then unchanged.
template <class S>
double clip_grad_norm(Parameters<S>& params, double max_norm) {
  REFORMER_REQUIRE(std::isfinite(max_norm) && max_norm > 0.0, InvalidArgument, "clip_grad_norm",
                   "max_norm = ", max_norm, " must be finite and > 0");
  check_finite_grads("clip_grad_norm", params);
  const double norm = global_grad_norm(params);
  REFORMER_REQUIRE(std::isfinite(norm), InvalidArgument, "clip_grad_norm",
                   "the global gradient norm overflows (", norm, ")");
  const double factor = max_norm / (norm + 1e-6);
  if (factor < 1.0) params.grads() *= static_cast<S>(factor);
  return norm;
}

/// Gradient accumulation: zeroes the gradients, calls `micro_batch(k)` for k = 0..K-1 (each call
/// runs one forward/backward that accumulates into the store and returns its loss), then scales
/// the gradients by 1/K so they are those of the mean loss. Returns the mean of the K losses.
template <class S, class F>
double accumulate_gradients(Parameters<S>& params, Index micro_batches, F&& micro_batch) {
  REFORMER_REQUIRE(micro_batches >= 1, InvalidArgument, "accumulate_gradients",
                   "micro_batches = ", micro_batches, " must be >= 1");
  params.zero_grad();
  double loss = 0.0;
  for (Index k = 0; k < micro_batches; ++k) loss += static_cast<double>(micro_batch(k));
  if (micro_batches > 1) scale_grads(params, 1.0 / static_cast<double>(micro_batches));
  return loss / static_cast<double>(micro_batches);
}

}  // namespace reformer
