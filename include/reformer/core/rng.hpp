#pragma once
// Counter-based random numbers: every draw is a pure function of (key, index).
//
// A key is built by deriving from a seed along a path, e.g.
//   Rng(seed).derive(step).derive(layer).derive(stream::kLshRotation).derive(head).derive(round)
// and the i-th draw of that key is `uniform(i)` / `normal(i)`. Nothing is stateful, so the
// backward pass reproduces the forward pass's rotations and dropout masks exactly, results do not
// depend on how work is split across threads, and nothing random needs to be stored.
// The normal transform is our own (Box-Muller on two 53-bit uniforms), not a <random>
// distribution, whose output differs between standard libraries.
#include <cmath>
#include <cstdint>

namespace reformer {

/// Stream tags: the second-to-last component of a key, naming what the randomness is for.
namespace stream {
inline constexpr std::uint64_t kLshRotation = 1;            // LSH random rotations
inline constexpr std::uint64_t kAttentionProbsDropout = 2;  // dropout on attention probabilities
inline constexpr std::uint64_t kAttentionOutputDropout =
    3;  // dropout after the attention output dense
inline constexpr std::uint64_t kFeedForwardActDropout = 4;  // dropout after W1 (before activation)
inline constexpr std::uint64_t kFeedForwardOutputDropout = 5;  // dropout after W2
inline constexpr std::uint64_t kEmbeddingDropout = 6;          // dropout on word embeddings
inline constexpr std::uint64_t kPositionDropout = 7;           // dropout on position embeddings
inline constexpr std::uint64_t kInit = 8;                      // parameter initialisation
inline constexpr std::uint64_t kData = 9;                      // example data generation
inline constexpr std::uint64_t kEncoderOutputDropout = 10;     // dropout after the final LayerNorm
}  // namespace stream

/// SplitMix64's finaliser: a bijective 64-bit mixer with full avalanche.
inline constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// A key of the counter-based generator. Cheap to copy; all methods are const and thread-safe.
class Rng {
 public:
  constexpr explicit Rng(std::uint64_t seed = 0) : key_(mix64(seed ^ 0x5EEDULL)) {}

  /// A child key: distinct children give independent streams.
  constexpr Rng derive(std::uint64_t child) const {
    Rng r;
    r.key_ = mix64(key_ ^ mix64(child + 0xD1B54A32D192ED03ULL));
    return r;
  }

  /// 64 random bits for draw `index`.
  constexpr std::uint64_t bits(std::uint64_t index) const {
    return mix64(mix64(key_ + index * 0x9E3779B97F4A7C15ULL) ^ key_);
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform(std::uint64_t index) const {
    return static_cast<double>(bits(index) >> 11) * 0x1.0p-53;
  }

  /// Standard normal draw `index` (Box-Muller on two uniforms derived from the index).
  double normal(std::uint64_t index) const {
    // u1 in (0, 1] so the log is finite.
    const double u1 = static_cast<double>((bits(2 * index) >> 11) + 1) * 0x1.0p-53;
    const double u2 = static_cast<double>(bits(2 * index + 1) >> 11) * 0x1.0p-53;
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
  }

  /// Uniform integer in [0, n) for 0 < n <= 2^32, by multiply-shift (bias < n / 2^32).
  std::uint64_t below(std::uint64_t index, std::uint64_t n) const {
    return ((bits(index) >> 32) * n) >> 32;
  }

  /// True with probability p (dropout keep/drop decisions use this).
  bool bernoulli(std::uint64_t index, double p) const { return uniform(index) < p; }

  constexpr std::uint64_t key() const { return key_; }

 private:
  std::uint64_t key_;
};

}  // namespace reformer
