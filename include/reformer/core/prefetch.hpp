#pragma once
// Software prefetch for gathers whose addresses are known ahead (e.g. the columns of a sorted
// permutation): hides the memory latency of reading scattered columns of large matrices.
// A hint only: no effect on results; a no-op on compilers without __builtin_prefetch.
#include "reformer/core/types.hpp"

#include <cstddef>

namespace reformer::detail {

/// Hints that the `count` scalars from `p` will be read soon (every 64-byte line).
template <class S>
inline void prefetch_read(const S* p, Index count) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr std::size_t kLine = 64;
  const char* bytes = reinterpret_cast<const char*>(p);
  const std::size_t n = static_cast<std::size_t>(count) * sizeof(S);
  for (std::size_t off = 0; off < n; off += kLine) __builtin_prefetch(bytes + off, 0, 3);
#else
  (void)p;
  (void)count;
#endif
}

}  // namespace reformer::detail
