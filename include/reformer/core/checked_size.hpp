#pragma once
// Overflow-checked size arithmetic: the one place where sizes that come from configs, files or
// command lines are multiplied (tensor element counts, window x chunk products, position and
// bucket counts). A product that would exceed its limit (by default the largest Index) is
// reported instead of wrapping around:
//
//   checked_product({rows, cols})                -> std::optional<Index>, nullopt on overflow
//   size_product(where, "shape of 'w'", {r, c})  -> Index, or InvalidArgument naming "shape of 'w'"
//
// Every factor must be >= 0 (a negative factor is reported like an overflow).
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace reformer {

/// The largest value an Index holds.
inline constexpr Index kMaxIndex = std::numeric_limits<Index>::max();

/// a * b when both are >= 0 and the product is <= limit; otherwise nullopt.
inline std::optional<Index> checked_mul(Index a, Index b, Index limit = kMaxIndex) {
  if (a < 0 || b < 0 || limit < 0) return std::nullopt;
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

/// a + b when both are >= 0 and the sum is <= limit; otherwise nullopt.
inline std::optional<Index> checked_add(Index a, Index b, Index limit = kMaxIndex) {
  if (a < 0 || b < 0 || limit < 0) return std::nullopt;
  if (a > limit - b) return std::nullopt;
  return a + b;
}

/// The product of `factors` (1 for none) when every factor is >= 0 and every partial product
/// stays <= limit; otherwise nullopt. A zero factor gives 0 whatever the others are.
template <class Range>
std::optional<Index> checked_product(const Range& factors, Index limit = kMaxIndex) {
  bool negative = false, zero = false;
  for (Index f : factors) {
    negative = negative || f < 0;
    zero = zero || f == 0;
  }
  if (negative || limit < 0) return std::nullopt;
  if (zero) return Index{0};
  Index p = 1;
  for (Index f : factors) {
    const auto next = checked_mul(p, f, limit);
    if (!next) return std::nullopt;
    p = *next;
  }
  return p;
}
inline std::optional<Index> checked_product(std::initializer_list<Index> factors,
                                            Index limit = kMaxIndex) {
  return checked_product<std::initializer_list<Index>>(factors, limit);
}

namespace detail {
template <class Range>
std::string product_string(const Range& factors) {
  std::string s;
  for (Index f : factors) s += (s.empty() ? "" : " x ") + std::to_string(f);
  return s.empty() ? std::string("1") : s;
}
}  // namespace detail

/// checked_product, or an `E` "<where>: <what> = a x b x ... is negative or exceeds <limit>".
template <class E = InvalidArgument, class Range>
Index size_product(const char* where, const std::string& what, const Range& factors,
                   Index limit = kMaxIndex) {
  const auto p = checked_product(factors, limit);
  if (!p) {
    raise<E>(where, what, " = ", detail::product_string(factors),
             " has a negative factor or exceeds ", limit);
  }
  return *p;
}
template <class E = InvalidArgument>
Index size_product(const char* where, const std::string& what, std::initializer_list<Index> factors,
                   Index limit = kMaxIndex) {
  return size_product<E, std::initializer_list<Index>>(where, what, factors, limit);
}

}  // namespace reformer
