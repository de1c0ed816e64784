#pragma once
// Which code computes the library's matrix products (GEMM) in this translation unit.
//
//   eigen     Eigen's own products (the default)
//   openblas  Eigen hands its large products to OpenBLAS: compiled with EIGEN_USE_BLAS and
//             REFORMER_OPENBLAS, linked with -lopenblas (CMake: REFORMER_GEMM for this
//             repository's programs, the imported target reformer::openblas for consumers)
//   blas      EIGEN_USE_BLAS with some other BLAS; its threading is not controlled here
//
// With OpenBLAS the library's parallel loops own the threads: each product is a single call on
// the calling thread (keep_gemm_backend_single_threaded), so results stay bitwise identical for
// any thread count.

#if defined(REFORMER_OPENBLAS)
extern "C" int openblas_get_num_threads(void);
extern "C" void openblas_set_num_threads(int num_threads);
extern "C" char* openblas_get_corename(void);
#endif

namespace reformer {

/// "eigen", "openblas" or "blas" (see above).
inline const char* gemm_backend_name() {
#if defined(REFORMER_OPENBLAS)
  return "openblas";
#elif defined(EIGEN_USE_BLAS)
  return "blas";
#else
  return "eigen";
#endif
}

/// OpenBLAS's name for the kernels it chose for this CPU (e.g. "Haswell", "SkylakeX"), or "" when
/// the products do not go to OpenBLAS.
inline const char* gemm_backend_core() {
#if defined(REFORMER_OPENBLAS)
  const char* core = openblas_get_corename();
  return core != nullptr ? core : "";
#else
  return "";
#endif
}

/// Keeps OpenBLAS's own threads off (one thread per call) when the products go to it.
inline void keep_gemm_backend_single_threaded() {
#if defined(REFORMER_OPENBLAS)
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
#endif
}

}  // namespace reformer
