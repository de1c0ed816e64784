#pragma once
// Parameter initialisation in the Hugging Face style: weights ~ normal(0, std), drawn from the
// counter-based Rng so that the values depend only on the key, never on the thread count or on
// the order in which layers are initialised.
//
//   value(slot)[i] = std * rng.normal(i)      i = flat element index within the slot
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <cmath>
#include <cstdint>

namespace reformer {

/// Fills the values of `slot` with std * normal draws of `rng` (draw i = flat element i of the
/// slot). Throws InvalidArgument unless std is finite and non-negative.
template <class S>
void init_normal(Parameters<S>& params, SlotId slot, const Rng& rng, double std) {
  REFORMER_REQUIRE(std >= 0 && std::isfinite(std), InvalidArgument, "init", "std = ", std, " for '",
                   params.slot(slot).name, "' must be finite and non-negative");
  auto v = params.value_vector(slot);
  for (Index i = 0; i < v.size(); ++i) {
    v[i] = static_cast<S>(std * rng.normal(static_cast<std::uint64_t>(i)));
  }
}

}  // namespace reformer
