#pragma once
// Masking a batch for masked-LM training (BERT's rule, as Hugging Face's
// DataCollatorForLanguageModeling applies it):
//
//   every real, non-special position is selected with probability `probability` (15%);
//   a selected position becomes the mask token with probability `mask_fraction` (80%), a token
//   drawn uniformly from [0, vocab_size) with probability `random_fraction` (10%), and keeps its
//   token otherwise (10%); its label is its original token;
//   every other position keeps its token and gets the label `ignore_label` (-100: the LM head's
//   loss skips negative targets).
//
// Padding (an AttentionMask's zeros) and the listed special tokens are never selected.
// Randomness: position i = b * T + t draws
//   selected:    rng.derive(kSelect).uniform(i) < probability
//   replacement: u = rng.derive(kReplace).uniform(i); mask if u < mask_fraction, random token
//                if u < mask_fraction + random_fraction, else kept
//   random id:   rng.derive(kRandomToken).below(i, vocab_size)
// so the result is a pure function of (tokens, mask, config, rng): the same for any thread count
// or batch split that keeps the positions. Pass a fresh key per step, e.g.
// Rng(seed).derive(stream::kData).derive(step).
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace reformer {

struct MaskingConfig {
  Index vocab_size = 0;          ///< random replacements are drawn from [0, vocab_size)
  Token mask_token = -1;         ///< the id that replaces a masked position, in [0, vocab_size)
  double probability = 0.15;     ///< HF mlm_probability: chance that a real position is selected
  double mask_fraction = 0.8;    ///< of the selected: replaced by mask_token
  double random_fraction = 0.1;  ///< of the selected: replaced by a random token
  std::vector<Token> special_tokens;  ///< never selected (e.g. the pad, CLS or SEP ids)
  Token ignore_label = -100;          ///< label of the positions that are not selected (< 0)

  /// Throws ConfigError unless the ids and probabilities are usable.
  void validate() const {
    const char* where = "MaskingConfig";
    REFORMER_REQUIRE(vocab_size > 0 && vocab_size <= (Index{1} << 31) - 1, ConfigError, where,
                     "vocab_size = ", vocab_size, " must lie in [1, 2^31)");
    REFORMER_REQUIRE(mask_token >= 0 && mask_token < vocab_size, ConfigError, where,
                     "mask_token = ", mask_token, " must lie in [0, vocab_size = ", vocab_size,
                     ")");
    REFORMER_REQUIRE(probability >= 0.0 && probability <= 1.0, ConfigError, where,
                     "probability = ", probability, " must lie in [0, 1]");
    REFORMER_REQUIRE(
        mask_fraction >= 0.0 && random_fraction >= 0.0 && mask_fraction + random_fraction <= 1.0,
        ConfigError, where, "mask_fraction = ", mask_fraction,
        " and random_fraction = ", random_fraction, " must be >= 0 with a sum of at most 1");
    REFORMER_REQUIRE(ignore_label < 0, ConfigError, where, "ignore_label = ", ignore_label,
                     " must be negative (the loss skips negative targets)");
  }
};

/// A masked batch: the model's input tokens and the masked-LM labels (both batch x T, sequence b
/// at [b*T, b*T + T)).
struct MaskedBatch {
  std::vector<Token> tokens;  ///< the input with the selected positions replaced
  std::vector<Token> labels;  ///< the original token at selected positions, ignore_label elsewhere
  Index selected = 0;         ///< number of selected positions
};

/// Draw tags below the caller's key (see the header comment).
inline constexpr std::uint64_t kMaskingSelect = 0;
inline constexpr std::uint64_t kMaskingReplace = 1;
inline constexpr std::uint64_t kMaskingRandomToken = 2;

/// Masks `tokens` (batch sequences of equal length side by side) by BERT's rule. `mask` may be
/// null or empty (every position real); otherwise it must be batch x T.
inline MaskedBatch mask_tokens(TokenSpan tokens, Index batch, const AttentionMask* mask,
                               const MaskingConfig& cfg, const Rng& rng) {
  const char* where = "mask_tokens";
  cfg.validate();
  REFORMER_REQUIRE(batch >= 1 && tokens.size() > 0 && tokens.size() % batch == 0, InvalidArgument,
                   where, "tokens.size() = ", tokens.size(),
                   " must be a positive multiple of batch = ", batch);
  const Index length = tokens.size() / batch;
  if (mask != nullptr) mask->check(where, batch, length);
  const bool masked = mask != nullptr && !mask->empty();

  const Rng select = rng.derive(kMaskingSelect);
  const Rng replace = rng.derive(kMaskingReplace);
  const Rng random_token = rng.derive(kMaskingRandomToken);
  const auto is_special = [&](Token t) {
    return std::find(cfg.special_tokens.begin(), cfg.special_tokens.end(), t) !=
           cfg.special_tokens.end();
  };

  MaskedBatch out;
  out.tokens.assign(tokens.begin(), tokens.end());
  out.labels.assign(static_cast<std::size_t>(tokens.size()), cfg.ignore_label);
  for (Index i = 0; i < tokens.size(); ++i) {
    const Index b = i / length, pos = i % length;
    if (masked && !mask->real(b, pos)) continue;  // padding: whatever it holds stays
    const Token t = tokens[i];
    REFORMER_REQUIRE(t >= 0 && t < cfg.vocab_size, InvalidArgument, where, "tokens[", i, "] = ", t,
                     " is out of range [0, vocab_size = ", cfg.vocab_size, ")");
    if (is_special(t)) continue;
    const auto k = static_cast<std::uint64_t>(i);
    if (!(select.uniform(k) < cfg.probability)) continue;
    ++out.selected;
    const auto s = static_cast<std::size_t>(i);
    out.labels[s] = t;
    const double u = replace.uniform(k);
    if (u < cfg.mask_fraction) {
      out.tokens[s] = cfg.mask_token;
    } else if (u < cfg.mask_fraction + cfg.random_fraction) {
      out.tokens[s] =
          static_cast<Token>(random_token.below(k, static_cast<std::uint64_t>(cfg.vocab_size)));
    }
  }
  return out;
}

}  // namespace reformer
