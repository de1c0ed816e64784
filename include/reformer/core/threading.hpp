#pragma once
// Threads: a thin layer over OpenMP (when the library is built with it).
//
// Determinism (docs/DESIGN.md 3.6): work is split into items whose boundaries do not depend on the
// thread count, each item is computed by the same code whichever thread runs it, and each item
// writes its own output slice; partial results (e.g. per-item gradient buffers) are summed in item
// order afterwards. No floating-point reduction clauses, no float atomics. Eigen's own GEMM
// threading is switched off so a product never changes its blocking with the thread count, and so
// is OpenBLAS's when the products go to it (core/gemm_backend.hpp).
#include "reformer/core/gemm_backend.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <exception>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace reformer {

/// Keeps Eigen's internal GEMM threading off (our parallel loops own the threads), and
/// OpenBLAS's when Eigen's products go to it (REFORMER_OPENBLAS).
inline void ensure_eigen_single_threaded() {
  if (Eigen::nbThreads() != 1) Eigen::setNbThreads(1);
  keep_gemm_backend_single_threaded();
}

/// Sets the number of threads the library's parallel loops use (n >= 1). Without a call the
/// OpenMP default applies, which honours the OMP_NUM_THREADS environment variable.
inline void set_num_threads(int n) {
  if (n < 1) n = 1;
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
  ensure_eigen_single_threaded();
}

/// Threads the next parallel loop will use.
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#endif
  return 1;  // without OpenMP
}

/// Index of the calling thread inside a parallel loop (0 outside), < num_threads().
inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#endif
  return 0;  // without OpenMP
}

/// Runs f(i) for i in [0, n) across the threads. Items must be independent. If items throw, the
/// exception of the lowest-index failing item is rethrown after the loop (never escapes a thread).
template <class F>
void parallel_for(Index n, F&& f) {
  ensure_eigen_single_threaded();
#if defined(_OPENMP)
  if (n <= 1 || omp_get_max_threads() == 1 || omp_in_parallel()) {
    for (Index i = 0; i < n; ++i) f(i);
    return;
  }
  std::exception_ptr error;
  Index error_item = n;
#pragma omp parallel for schedule(dynamic, 1)
  for (Index i = 0; i < n; ++i) {
    try {
      f(i);
    } catch (...) {
#pragma omp critical(reformer_parallel_for_error)
      {
        if (i < error_item) {
          error_item = i;
          error = std::current_exception();
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
#else
  for (Index i = 0; i < n; ++i) f(i);
#endif
}

/// Runs f() once on every thread of the team that parallel_for uses (once on the calling thread
/// without OpenMP, with one thread, or inside a parallel region): for per-thread state. If f
/// throws on some thread, one of the exceptions is rethrown after the region.
template <class F>
void on_every_thread(F&& f) {
#if defined(_OPENMP)
  if (omp_get_max_threads() > 1 && !omp_in_parallel()) {
    std::exception_ptr error;
#pragma omp parallel
    {
      try {
        f();
      } catch (...) {
#pragma omp critical(reformer_on_every_thread_error)
        {
          if (!error) error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  f();
}

}  // namespace reformer
