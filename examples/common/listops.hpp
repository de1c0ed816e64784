#pragma once
// ListOps (Nangia and Bowman 2018), as the Long Range Arena uses it (Tay et al. 2021): nested
// list operations over the digits 0-9, e.g.
//
//     [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->   5
//
// Operators: MIN, MAX, MED (median; of an even count, the mean of the two middle values rounded
// down, as int(numpy.median)) and SM (sum modulo 10). The value of the expression, 0-9, is the
// class (10 classes). Tokens: an operator with its opening bracket, a closing bracket, a digit.
//
// Generation (LRA's definition): a node at depth < max_depth is an operator with probability
// operator_probability (0.25) and a uniform digit otherwise; nodes at max_depth are digits. An
// operator is uniform over the four and takes a uniform number of arguments in [2, max_args].
// The root is always an operator (the root of a digit alone is 1 token, never long enough), and
// expressions are drawn again until their token count lies in [min_length, max_length]. LRA
// uses max_depth 10, max_args 10 and lengths up to 2,000.
//
// A sequence is [CLS] followed by the expression's tokens: the classification head reads the
// first position (Hugging Face's ReformerClassificationHead), whose token is the same in every
// sequence. Example i of a split is a pure function of (seed, split, i): the splits are fixed
// and disjoint in their randomness, and any subset can be regenerated.
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/ops/tokens.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace reformer::examples {

/// The ListOps vocabulary.
namespace listops {
inline constexpr Token kPad = 0;     ///< padding (never inside a sequence)
inline constexpr Token kCls = 1;     ///< first token of every sequence
inline constexpr Token kClose = 2;   ///< ]
inline constexpr Token kMin = 3;     ///< [MIN
inline constexpr Token kMax = 4;     ///< [MAX
inline constexpr Token kMed = 5;     ///< [MED
inline constexpr Token kSumMod = 6;  ///< [SM
inline constexpr Token kDigit0 = 7;  ///< digits 0-9 are kDigit0 .. kDigit0 + 9
inline constexpr Index kVocabSize = 17;
inline constexpr Index kNumClasses = 10;

/// The value of an operator applied to its arguments (digits 0-9).
inline int apply_operator(Token op, const std::vector<int>& args) {
  REFORMER_REQUIRE(!args.empty(), InvalidArgument, "listops::apply_operator",
                   "an operator needs arguments");
  switch (op) {
    case kMin:
      return *std::min_element(args.begin(), args.end());
    case kMax:
      return *std::max_element(args.begin(), args.end());
    case kMed: {
      std::vector<int> s = args;
      std::sort(s.begin(), s.end());
      const std::size_t n = s.size();
      return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    }
    case kSumMod: {
      int sum = 0;
      for (int a : args) sum += a;
      return sum % 10;
    }
    default:
      raise<InvalidArgument>("listops::apply_operator", "token ", op, " is not an operator");
  }
}

/// The value of a sequence ([CLS] optional, then one expression), by a stack evaluator that
/// shares nothing with the generator. Throws InvalidArgument on a malformed sequence.
inline int evaluate(TokenSpan tokens) {
  const char* where = "listops::evaluate";
  struct Frame {
    Token op;
    std::vector<int> args;
  };
  std::vector<Frame> stack;
  int result = -1;
  for (Index i = 0; i < tokens.size(); ++i) {
    const Token t = tokens[i];
    if (t == kCls && i == 0) continue;
    REFORMER_REQUIRE(result < 0, InvalidArgument, where, "token ", i,
                     " follows a complete expression");
    if (t >= kMin && t <= kSumMod) {
      stack.push_back({t, {}});
    } else if (t >= kDigit0 && t < kDigit0 + 10) {
      REFORMER_REQUIRE(!stack.empty(), InvalidArgument, where, "digit at ", i, " outside a list");
      stack.back().args.push_back(t - kDigit0);
    } else if (t == kClose) {
      REFORMER_REQUIRE(!stack.empty(), InvalidArgument, where, "unmatched ] at ", i);
      const int v = apply_operator(stack.back().op, stack.back().args);
      stack.pop_back();
      if (stack.empty()) {
        result = v;
      } else {
        stack.back().args.push_back(v);
      }
    } else {
      raise<InvalidArgument>(where, "token ", i, " = ", t, " is not a ListOps token");
    }
  }
  REFORMER_REQUIRE(result >= 0 && stack.empty(), InvalidArgument, where, "incomplete expression");
  return result;
}

/// The text form, e.g. "[CLS] [MAX 4 3 ]".
inline std::string to_string(TokenSpan tokens) {
  static const char* const kNames[] = {"<pad>", "[CLS]", "]", "[MIN", "[MAX", "[MED", "[SM"};
  std::string s;
  for (Index i = 0; i < tokens.size(); ++i) {
    if (i > 0) s += ' ';
    const Token t = tokens[i];
    s += t >= kDigit0 && t < kDigit0 + 10 ? std::to_string(t - kDigit0)
         : t >= 0 && t < kDigit0          ? std::string(kNames[t])
                                          : std::string("?");
  }
  return s;
}
}  // namespace listops

struct ListOpsConfig {
  Index min_length = 500;              ///< shortest sequence, [CLS] included
  Index max_length = 2000;             ///< longest sequence, [CLS] included
  Index max_depth = 10;                ///< nesting depth of the deepest operator + 1
  Index max_args = 10;                 ///< arguments per operator, at least 2
  double operator_probability = 0.25;  ///< chance that a node above max_depth is an operator
  Index max_attempts = 100000;         ///< draws before giving up on the length range

  void validate() const {
    const char* where = "ListOpsConfig";
    REFORMER_REQUIRE(min_length >= 4 && min_length <= max_length, InvalidArgument, where,
                     "min_length = ", min_length, " and max_length = ", max_length,
                     " must satisfy 4 <= min_length <= max_length");
    REFORMER_REQUIRE(max_depth >= 1 && max_depth <= 64, InvalidArgument, where,
                     "max_depth = ", max_depth, " must lie in [1, 64]");
    REFORMER_REQUIRE(max_args >= 2, InvalidArgument, where, "max_args = ", max_args,
                     " must be >= 2");
    REFORMER_REQUIRE(operator_probability >= 0.0 && operator_probability <= 1.0, InvalidArgument,
                     where, "operator_probability = ", operator_probability, " must lie in [0, 1]");
    REFORMER_REQUIRE(max_attempts >= 1, InvalidArgument, where, "max_attempts = ", max_attempts,
                     " must be >= 1");
  }
};

/// One labelled sequence.
struct ListOpsExample {
  std::vector<Token> tokens;  ///< [CLS] expression
  int label = 0;              ///< its value, 0-9
};

class ListOpsGenerator {
 public:
  /// Splits: the examples of different splits use unrelated keys.
  enum Split : std::uint64_t { kTrain = 0, kValidation = 1, kTest = 2 };

  ListOpsGenerator(const ListOpsConfig& cfg, std::uint64_t seed) : cfg_(cfg), seed_(seed) {
    cfg_.validate();
  }

  const ListOpsConfig& config() const { return cfg_; }

  /// Example `index` of `split` (a pure function of the seed, split and index).
  ListOpsExample example(Split split, Index index) const {
    const Rng key =
        Rng(seed_).derive(stream::kData).derive(split).derive(static_cast<std::uint64_t>(index));
    ListOpsExample ex;
    for (Index attempt = 0; attempt < cfg_.max_attempts; ++attempt) {
      Draws draws{key.derive(static_cast<std::uint64_t>(attempt))};
      ex.tokens.assign(1, listops::kCls);
      int value = 0;
      if (node(draws, 1, /*root=*/true, ex.tokens, value) &&
          static_cast<Index>(ex.tokens.size()) >= cfg_.min_length) {
        ex.label = value;
        return ex;
      }
    }
    raise<InvalidArgument>("ListOpsGenerator", "no expression of length [", cfg_.min_length, ", ",
                           cfg_.max_length, "] in ", cfg_.max_attempts,
                           " draws: widen the length range or raise max_depth / max_args");
  }

  /// Examples [first, first + count) of a split.
  std::vector<ListOpsExample> examples(Split split, Index first, Index count) const {
    std::vector<ListOpsExample> out;
    out.reserve(static_cast<std::size_t>(count));
    for (Index i = 0; i < count; ++i) out.push_back(example(split, first + i));
    return out;
  }

 private:
  // Sequential draws of one attempt.
  struct Draws {
    Rng rng;
    std::uint64_t next = 0;
    double uniform() { return rng.uniform(next++); }
    Index below(Index n) {
      return static_cast<Index>(rng.below(next++, static_cast<std::uint64_t>(n)));
    }
  };

  // Appends one node at `depth` to `out` and sets its value; false once `out` exceeds
  // max_length (the attempt is then discarded).
  bool node(Draws& d, Index depth, bool root, std::vector<Token>& out, int& value) const {
    const bool is_operator =
        root || (depth < cfg_.max_depth && d.uniform() < cfg_.operator_probability);
    if (!is_operator) {
      value = static_cast<int>(d.below(10));
      out.push_back(static_cast<Token>(listops::kDigit0 + value));
      return static_cast<Index>(out.size()) <= cfg_.max_length;
    }
    const Token op = static_cast<Token>(listops::kMin + d.below(4));
    const Index args = 2 + d.below(cfg_.max_args - 1);
    out.push_back(op);
    std::vector<int> values(static_cast<std::size_t>(args));
    for (Index a = 0; a < args; ++a) {
      if (static_cast<Index>(out.size()) > cfg_.max_length) return false;
      if (!node(d, depth + 1, false, out, values[static_cast<std::size_t>(a)])) return false;
    }
    out.push_back(listops::kClose);
    value = listops::apply_operator(op, values);
    return static_cast<Index>(out.size()) <= cfg_.max_length;
  }

  ListOpsConfig cfg_;
  std::uint64_t seed_;
};

}  // namespace reformer::examples
