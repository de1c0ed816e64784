#pragma once
// An allocator policy for comparison (`--malloc tuned` of the example programs). The library
// draws its large work buffers from the model's Workspace (reformer/core/workspace.hpp), which
// keeps them across steps, so the default allocator policy costs no page faults per step. This
// tunes glibc's malloc to keep all freed memory as well (no mmap'd blocks, no heap trimming):
// the behaviour the programs had before the workspace, kept to measure the difference.
#include <cstdlib>  // defines __GLIBC__ on glibc systems

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace reformer::examples {

/// Tells glibc's malloc to keep freed memory for reuse (no-op elsewhere).
inline void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);                // every block comes from the heap...
  mallopt(M_TRIM_THRESHOLD, -1);         // ...which is never trimmed (a step that frees GiBs
                                         // would otherwise re-fault them in the next step)
  mallopt(M_TOP_PAD, 64 * 1024 * 1024);  // and grows in large steps
#endif
}

}  // namespace reformer::examples
