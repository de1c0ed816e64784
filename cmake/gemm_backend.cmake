# The GEMM backend of our own executables (tests, benchmarks, examples): Eigen's own product, or
# Eigen's products handed to OpenBLAS (EIGEN_USE_BLAS + REFORMER_OPENBLAS). Included by the
# top-level CMakeLists.txt of a standalone build, after the -march=native check, because the
# probe must be compiled like our executables.
#
#   REFORMER_GEMM = AUTO (default) | EIGEN | OPENBLAS
#     AUTO      OpenBLAS when the probe (cmake/gemm_probe.cpp) measures it clearly faster than
#               Eigen on this host; Eigen without OpenBLAS, when cross-compiling, or when the
#               probe fails. The measurement is cached: REFORMER_GEMM_SELECTED (the choice) and
#               REFORMER_GEMM_PROBE (the figures); delete REFORMER_GEMM_SELECTED
#               (cmake -U REFORMER_GEMM_SELECTED) to measure again. A change of compiler, flags
#               or OpenBLAS library also measures again.
#     EIGEN     Eigen's products.
#     OPENBLAS  OpenBLAS (Debian: libopenblas-dev); a configure error without it.
#
# Sets REFORMER_GEMM_BACKEND (eigen | openblas) and REFORMER_GEMM_SUMMARY (for the configure
# summary). Needs BLAS_FOUND / BLAS::BLAS from find_package(BLAS) with BLA_VENDOR OpenBLAS, and
# REFORMER_HAS_MARCH_NATIVE when REFORMER_NATIVE is on.
#
# Why measured: which backend is faster depends on the host. On AVX2-only CPUs OpenBLAS's
# hand-written kernels beat Eigen's products; with AVX-512 Eigen's are as fast or faster.

set(_reformer_gemm_doc "GEMM backend of our executables: AUTO, EIGEN or OPENBLAS")
set(REFORMER_GEMM AUTO CACHE STRING "${_reformer_gemm_doc}")
# Deprecated spelling: -DREFORMER_USE_BLAS=ON means REFORMER_GEMM=OPENBLAS.
if(REFORMER_USE_BLAS)
  message(DEPRECATION "REFORMER_USE_BLAS is deprecated: use -DREFORMER_GEMM=OPENBLAS")
  set(REFORMER_GEMM OPENBLAS CACHE STRING "${_reformer_gemm_doc}" FORCE)
endif()
unset(REFORMER_USE_BLAS CACHE)
set_property(CACHE REFORMER_GEMM PROPERTY STRINGS AUTO EIGEN OPENBLAS)
string(TOUPPER "${REFORMER_GEMM}" _reformer_gemm)

# OpenBLAS is faster only if its summed time over the probe's shapes is at most this fraction of
# Eigen's: a smaller gain is within the noise of the measurement and not worth the dependency.
set(_reformer_gemm_margin_percent 95)

# _reformer_gemm_probe(): measures; sets REFORMER_GEMM_SELECTED and REFORMER_GEMM_PROBE (cache).
function(_reformer_gemm_probe)
  set(_flags "${CMAKE_CXX_FLAGS_RELEASE}")
  if(REFORMER_NATIVE AND REFORMER_HAS_MARCH_NATIVE)
    string(APPEND _flags " -march=native")
  endif()
  separate_arguments(_flags UNIX_COMMAND "${_flags}")
  message(STATUS "GEMM probe: timing Eigen and OpenBLAS products (one thread)")
  # Release flags (CMAKE_CXX_FLAGS_RELEASE) whatever the build type: the choice is about
  # optimised code.
  set(CMAKE_TRY_COMPILE_CONFIGURATION Release)
  try_run(_run_result _compile_result
    "${CMAKE_CURRENT_BINARY_DIR}/gemm_probe" "${CMAKE_CURRENT_LIST_DIR}/gemm_probe.cpp"
    COMPILE_DEFINITIONS ${_flags}
    LINK_LIBRARIES Eigen3::Eigen BLAS::BLAS
    CXX_STANDARD 17
    COMPILE_OUTPUT_VARIABLE _compile_output
    RUN_OUTPUT_VARIABLE _run_output)
  set(_choice eigen)
  if(NOT _compile_result)
    message(WARNING "GEMM probe did not compile; using Eigen's products.\n${_compile_output}")
    set(_figures "probe did not compile")
  elseif(NOT _run_result EQUAL 0)
    message(WARNING "GEMM probe failed (${_run_result}); using Eigen's products.\n${_run_output}")
    set(_figures "probe failed")
  else()
    foreach(_key eigen_us openblas_us eigen_gflops openblas_gflops openblas_core)
      if(NOT _run_output MATCHES "(^|\n)${_key}=([^\n]*)")
        message(FATAL_ERROR "GEMM probe: no ${_key} in its output:\n${_run_output}")
      endif()
      set(_${_key} "${CMAKE_MATCH_2}")
    endforeach()
    math(EXPR _openblas_scaled "${_openblas_us} * 100")
    math(EXPR _eigen_scaled "${_eigen_us} * ${_reformer_gemm_margin_percent}")
    if(_openblas_scaled LESS_EQUAL _eigen_scaled)
      set(_choice openblas)
    endif()
    set(_figures "Eigen ${_eigen_gflops} GFLOP/s, OpenBLAS (${_openblas_core}) \
${_openblas_gflops} GFLOP/s, one thread")
  endif()
  set(REFORMER_GEMM_SELECTED ${_choice} CACHE STRING
      "GEMM backend that REFORMER_GEMM=AUTO measured on this host (delete to measure again)" FORCE)
  set(REFORMER_GEMM_PROBE "${_figures}" CACHE STRING
      "Figures of the GEMM probe behind REFORMER_GEMM_SELECTED" FORCE)
endfunction()

if(_reformer_gemm STREQUAL "EIGEN")
  set(REFORMER_GEMM_BACKEND eigen)
  set(REFORMER_GEMM_SUMMARY "eigen (REFORMER_GEMM=EIGEN)")
elseif(_reformer_gemm STREQUAL "OPENBLAS")
  if(NOT BLAS_FOUND)
    message(FATAL_ERROR "REFORMER_GEMM=OPENBLAS but OpenBLAS was not found. On Debian/Ubuntu: "
                        "apt-get install libopenblas-dev (or configure with -DREFORMER_GEMM=AUTO)")
  endif()
  set(REFORMER_GEMM_BACKEND openblas)
  set(REFORMER_GEMM_SUMMARY "openblas (REFORMER_GEMM=OPENBLAS)")
elseif(_reformer_gemm STREQUAL "AUTO")
  if(NOT BLAS_FOUND)
    set(REFORMER_GEMM_BACKEND eigen)
    set(REFORMER_GEMM_SUMMARY "eigen (AUTO: OpenBLAS not found)")
  elseif(CMAKE_CROSSCOMPILING)
    set(REFORMER_GEMM_BACKEND eigen)
    set(REFORMER_GEMM_SUMMARY "eigen (AUTO: cross-compiling, not measured)")
  else()
    # What the cached measurement was made with; another compiler, flags or library re-measure.
    set(_key "${CMAKE_CXX_COMPILER};${CMAKE_CXX_COMPILER_VERSION};${CMAKE_CXX_FLAGS};\
${CMAKE_CXX_FLAGS_RELEASE};${REFORMER_NATIVE};${BLAS_LIBRARIES};${Eigen3_VERSION}")
    if(NOT REFORMER_GEMM_SELECTED OR NOT _key STREQUAL "${_REFORMER_GEMM_PROBE_KEY}")
      _reformer_gemm_probe()
      set(_REFORMER_GEMM_PROBE_KEY "${_key}" CACHE INTERNAL "")
      set(_how "measured now")
    else()
      set(_how "cached")
    endif()
    if(NOT REFORMER_GEMM_SELECTED MATCHES "^(eigen|openblas)$")
      message(FATAL_ERROR "REFORMER_GEMM_SELECTED='${REFORMER_GEMM_SELECTED}': expected eigen or "
                          "openblas (delete it to measure again)")
    endif()
    set(REFORMER_GEMM_BACKEND ${REFORMER_GEMM_SELECTED})
    set(REFORMER_GEMM_SUMMARY "${REFORMER_GEMM_BACKEND} (AUTO, ${_how}: ${REFORMER_GEMM_PROBE})")
  endif()
else()
  message(FATAL_ERROR "REFORMER_GEMM='${REFORMER_GEMM}': expected AUTO, EIGEN or OPENBLAS")
endif()
