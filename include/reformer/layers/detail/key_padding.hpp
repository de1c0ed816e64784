#pragma once
// KeyPadding: the key padding of one attention call, read from Context::mask once and checked
// against the call's batch and length (docs/DESIGN.md 7.1). A mask without any padded position
// counts as no mask (every key is real either way), so the layers then take their unmasked path.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/types.hpp"

#include <cstdint>

namespace reformer::detail {

class KeyPadding {
 public:
  /// No padding.
  KeyPadding() = default;
  /// Throws InvalidArgument (prefixed by `where`) when ctx.mask is not batch x length or has a
  /// sequence without any real position.
  KeyPadding(const char* where, const Context& ctx, Index length) {
    if (ctx.mask == nullptr || ctx.mask->empty()) return;
    ctx.mask->check(where, ctx.batch, length);
    if (ctx.mask->any_padding()) mask_ = ctx.mask;
  }

  /// Whether any position of the batch is padding.
  bool any() const { return mask_ != nullptr; }
  /// The `length` flags of sequence b (1 = real), or null when nothing is padded.
  const std::uint8_t* flags(Index b) const {
    return mask_ != nullptr ? mask_->sequence(b) : nullptr;
  }

 private:
  const AttentionMask* mask_ = nullptr;
};

}  // namespace reformer::detail
