#pragma once
// Software prefetch for gathers and scatters whose addresses are known ahead (e.g. the columns of a
// sorted permutation): hides the memory latency of scattered columns of large matrices.
// A hint only: no effect on results; a no-op on compilers without __builtin_prefetch.
#include "reformer/core/types.hpp"

#include <cstddef>

namespace reformer::detail {

/// Hints that the `count` scalars from `p` will be accessed soon (every 64-byte line): read
/// (kWrite false) or written (kWrite true, which fetches the lines for ownership).
template <bool kWrite, class S>
inline void prefetch_lines(const S* p, Index count) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr std::size_t kLine = 64;
  const char* bytes = reinterpret_cast<const char*>(p);
  const std::size_t n = static_cast<std::size_t>(count) * sizeof(S);
  for (std::size_t off = 0; off < n; off += kLine) __builtin_prefetch(bytes + off, kWrite, 3);
#else
  (void)p;
  (void)count;
#endif
}

template <class S>
inline void prefetch_read(const S* p, Index count) {
  prefetch_lines<false>(p, count);
}

template <class S>
inline void prefetch_write(const S* p, Index count) {
  prefetch_lines<true>(p, count);
}

}  // namespace reformer::detail
