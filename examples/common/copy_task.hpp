#pragma once
// The duplication task of the Reformer paper (Kitaev et al. 2020, section 5): sequences
//
//     0 w 0 w        w = w_1 .. w_n random symbols in 1 .. N-1,  n = T/2 - 1
//
// position:  0 | 1 .. T/2-1 | T/2 | T/2+1 .. T-1
// A causal LM can only predict the second copy, so loss and accuracy count exactly the
// predictions of tokens T/2+1 .. T-1 (made at positions T/2 .. T-2); all other targets are
// ignored (negative, as the library's cross-entropy expects).
//
// Randomness is the library's counter-based Rng: batch `step` of a run with seed `s` is a pure
// function of (s, step), and the held-out set is a fixed function of its own seed, so a run is
// reproducible and a resumed run sees the same batches it would have seen.
#include "common/batch.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"

#include <cstdint>
#include <vector>

namespace reformer::examples {

class CopyTask {
 public:
  /// Sequences of length `length` (even, >= 4) over `symbols` symbols (0 is the separator, so
  /// >= 3: at least two content symbols).
  CopyTask(Index length, Index symbols) : length_(length), symbols_(symbols) {
    REFORMER_REQUIRE(length >= 4 && length % 2 == 0, InvalidArgument, "CopyTask",
                     "length = ", length, " must be even and >= 4");
    REFORMER_REQUIRE(symbols >= 3 && symbols <= (Index{1} << 30), InvalidArgument, "CopyTask",
                     "symbols = ", symbols, " must be in [3, 2^30]");
  }

  Index length() const { return length_; }
  Index symbols() const { return symbols_; }
  /// |w| = T/2 - 1.
  Index word_length() const { return length_ / 2 - 1; }
  /// Counted (predictable) positions per sequence: the second copy of w.
  Index counted_per_sequence() const { return word_length(); }
  /// Whether the prediction made at position t (of token t+1) is counted.
  bool counted(Index t) const { return t >= length_ / 2 && t <= length_ - 2; }

  /// `batch` sequences drawn from `rng` (sequence b uses draws b*|w| .. (b+1)*|w|-1).
  TokenBatch sample(const Rng& rng, Index batch) const {
    REFORMER_REQUIRE(batch >= 1, InvalidArgument, "CopyTask::sample", "batch = ", batch,
                     " must be >= 1");
    TokenBatch out;
    out.batch = batch;
    out.length = length_;
    const Index T = length_, half = T / 2, n = word_length();
    out.tokens.assign(static_cast<std::size_t>(batch * T), 0);
    out.targets.assign(static_cast<std::size_t>(batch * T), -1);
    for (Index b = 0; b < batch; ++b) {
      Tok* seq = out.tokens.data() + b * T;
      for (Index i = 0; i < n; ++i) {
        const auto draw = static_cast<std::uint64_t>(b * n + i);
        const Tok symbol =
            static_cast<Tok>(1 + rng.below(draw, static_cast<std::uint64_t>(symbols_ - 1)));
        seq[1 + i] = symbol;         // first copy
        seq[half + 1 + i] = symbol;  // second copy
      }
      Tok* tgt = out.targets.data() + b * T;
      for (Index t = half; t <= T - 2; ++t) tgt[t] = seq[t + 1];
    }
    return out;
  }

 private:
  Index length_, symbols_;
};

}  // namespace reformer::examples
