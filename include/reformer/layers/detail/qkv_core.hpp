#pragma once
// What full and local attention share: their configuration (num_heads, head_size, dropout and
// their own fields), the hidden size and the query, key and value weights
// <prefix>self_attention.{query,key,value}.weight [H*Dh, hidden], with HF names, order and
// initialisation. The cores derive from QkvCore and add their attention pattern.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/detail/head_projection.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/projection_input.hpp"
#include "reformer/layers/sublayer.hpp"

#include <string>

namespace reformer::detail {

template <class S, class Config>
class QkvCore {
 public:
  const Config& config() const { return cfg_; }
  Index hidden_size() const { return hidden_; }
  Index out_features() const { return cfg_.num_heads * cfg_.head_size; }

  SlotId query_slot() const { return qkv_.query; }
  SlotId key_slot() const { return qkv_.key; }
  SlotId value_slot() const { return qkv_.value; }

  /// Weights ~ normal(0, std) (Hugging Face initialisation).
  void init(Parameters<S>& params, const Rng& rng, double std) const {
    qkv_.init(params, rng, std);
  }

 protected:
  /// Checks the shared fields (InvalidArgument naming `where` and the field), then registers
  /// the three weights.
  QkvCore(const char* where, const Config& cfg, Index hidden, Parameters<S>& params,
          const std::string& prefix)
      : cfg_(checked(where, cfg, hidden)),
        hidden_(hidden),
        qkv_(QkvSlots::add(params, prefix, out_features(), hidden)) {}

  /// Checks that the input has `hidden` rows and `heads` lies in [0, H); returns the sequence
  /// length.
  Index check_input(const char* where, const ProjectionInput<S>& input, const Context& ctx,
                    HeadRange heads) const {
    REFORMER_REQUIRE(input.rows() == hidden_, InvalidArgument, where, "xn.rows() = ", input.rows(),
                     " must equal hidden = ", hidden_);
    check_head_range(where, heads, cfg_.num_heads);
    return ctx.length(where, input.cols());
  }

  Config cfg_;
  Index hidden_;
  QkvSlots qkv_;

 private:
  static const Config& checked(const char* where, const Config& cfg, Index hidden) {
    require_positive(where, "num_heads", cfg.num_heads);
    require_positive(where, "head_size", cfg.head_size);
    require_positive(where, "hidden", hidden);
    require_dropout(where, "dropout", cfg.dropout);
    return cfg;
  }
};

}  // namespace reformer::detail
