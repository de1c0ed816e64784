#pragma once
// Byte-level text data for train_text: a file's bytes are the tokens (vocabulary 256). The last
// `valid_fraction` of the file is the validation split; training draws random windows from the
// rest, validation uses consecutive windows from the start of its split.
#include "common/batch.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace reformer::examples {

/// The bytes of the file at `path` as tokens 0..255 (IoError when it cannot be read).
inline std::vector<Tok> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REFORMER_REQUIRE(in.good(), IoError, "read_bytes", "cannot open '", path, "'");
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REFORMER_REQUIRE(!in.bad(), IoError, "read_bytes", "reading '", path, "' failed");
  std::vector<Tok> out(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    out[i] = static_cast<Tok>(static_cast<unsigned char>(raw[i]));
  }
  return out;
}

/// Converts a string to byte tokens.
inline std::vector<Tok> to_tokens(const std::string& text) {
  std::vector<Tok> out(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    out[i] = static_cast<Tok>(static_cast<unsigned char>(text[i]));
  }
  return out;
}

class TextCorpus {
 public:
  /// Splits `bytes` (from `source`, for messages) into train / validation. Training windows
  /// are `length` tokens, so the training split needs at least `length` bytes and the
  /// validation split at least 2.
  TextCorpus(std::vector<Tok> bytes, double valid_fraction, Index length,
             const std::string& source) {
    const char* where = "TextCorpus";
    REFORMER_REQUIRE(std::isfinite(valid_fraction) && valid_fraction > 0.0 && valid_fraction < 1.0,
                     InvalidArgument, where, "valid_fraction = ", valid_fraction,
                     " must be in (0, 1)");
    REFORMER_REQUIRE(length >= 2, InvalidArgument, where, "length = ", length, " must be >= 2");
    const auto n = static_cast<Index>(bytes.size());
    const auto n_valid = static_cast<Index>(std::ceil(valid_fraction * static_cast<double>(n)));
    const Index n_train = n - n_valid;
    REFORMER_REQUIRE(n_train >= length && n_valid >= 2, InvalidArgument, where, "'", source,
                     "' has ", n, " bytes: too short for training windows of ", length,
                     " bytes plus a validation split of ", valid_fraction * 100.0,
                     "% (need at least ", length + 2, " bytes, better many times more)");
    train_.assign(bytes.begin(), bytes.begin() + n_train);
    valid_.assign(bytes.begin() + n_train, bytes.end());
  }

  const std::vector<Tok>& train() const { return train_; }
  const std::vector<Tok>& valid() const { return valid_; }

  /// `batch` random training windows of `length` bytes; window b starts at draw b of `rng`.
  /// Targets are the next bytes within the window (the last position has none).
  TokenBatch sample_train(const Rng& rng, Index batch, Index length) const {
    REFORMER_REQUIRE(length >= 2 && length <= static_cast<Index>(train_.size()), InvalidArgument,
                     "TextCorpus::sample_train", "length = ", length, " must be in [2, ",
                     train_.size(), "]");
    TokenBatch out;
    out.batch = batch;
    out.length = length;
    out.tokens.resize(static_cast<std::size_t>(batch * length));
    const auto starts = static_cast<std::uint64_t>(static_cast<Index>(train_.size()) - length + 1);
    for (Index b = 0; b < batch; ++b) {
      const auto start = static_cast<Index>(rng.below(static_cast<std::uint64_t>(b), starts));
      std::copy(train_.begin() + start, train_.begin() + start + length,
                out.tokens.begin() + b * length);
    }
    out.targets = next_token_targets(out.tokens, batch, length);
    return out;
  }

  /// The validation split cut into consecutive windows of `length` bytes (at most
  /// `max_windows`; a shorter last window is dropped unless it is the only one).
  std::vector<TokenBatch> valid_windows(Index length, Index max_windows) const {
    std::vector<TokenBatch> out;
    const auto n = static_cast<Index>(valid_.size());
    for (Index start = 0; start + 2 <= n && static_cast<Index>(out.size()) < max_windows;
         start += length) {
      const Index len = std::min(length, n - start);
      if (len < length && !out.empty()) break;
      TokenBatch w;
      w.batch = 1;
      w.length = len;
      w.tokens.assign(valid_.begin() + start, valid_.begin() + start + len);
      w.targets = next_token_targets(w.tokens, 1, len);
      out.push_back(std::move(w));
    }
    return out;
  }

  /// targets[b*T + t] = tokens[b*T + t + 1] for t < T-1, and -1 (ignored) at t = T-1.
  static std::vector<Tok> next_token_targets(const std::vector<Tok>& tokens, Index batch,
                                             Index length) {
    std::vector<Tok> targets(tokens.size(), -1);
    for (Index b = 0; b < batch; ++b) {
      for (Index t = 0; t + 1 < length; ++t) {
        targets[static_cast<std::size_t>(b * length + t)] =
            tokens[static_cast<std::size_t>(b * length + t + 1)];
      }
    }
    return targets;
  }

 private:
  std::vector<Tok> train_, valid_;
};

}  // namespace reformer::examples
