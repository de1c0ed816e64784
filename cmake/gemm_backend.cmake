# The GEMM backend of our own executables (tests, benchmarks, examples): Eigen's own product, or
# Eigen's products handed to OpenBLAS (EIGEN_USE_BLAS + REFORMER_OPENBLAS). Included by the
# top-level CMakeLists.txt of a standalone build, after the -march check (REFORMER_NATIVE,
# REFORMER_MARCH), because the probe must be compiled like our executables: with
# -march=haswell it times the AVX2 + FMA kernels that build will run, not this host's AVX-512 ones.
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
#   REFORMER_OPENBLAS_CORETYPE = "" (default: $ENV{OPENBLAS_CORETYPE} at the first configure)
#     The OpenBLAS kernels the probe times (OPENBLAS_CORETYPE of a DYNAMIC_ARCH OpenBLAS such as
#     Debian's, e.g. Haswell); empty: the ones OpenBLAS picks for this CPU. It only sets the
#     probe's environment: run the programs with the same OPENBLAS_CORETYPE (the avx2 preset
#     and scripts/run_benchmarks.sh --march haswell use Haswell).
#
# Sets REFORMER_GEMM_BACKEND (eigen | openblas) and REFORMER_GEMM_SUMMARY (for the configure
# summary). Needs BLAS_FOUND / BLAS::BLAS from find_package(BLAS) with BLA_VENDOR OpenBLAS, and
# REFORMER_MARCH_FLAG (-march=<REFORMER_MARCH>, unset without REFORMER_NATIVE or when the
# compiler rejects -march=native).
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
set(REFORMER_OPENBLAS_CORETYPE "$ENV{OPENBLAS_CORETYPE}" CACHE STRING
    "OpenBLAS kernels (OPENBLAS_CORETYPE) the GEMM probe times; empty: OpenBLAS's choice")

# OpenBLAS is faster only if its summed time over the probe's shapes is at most this fraction of
# Eigen's: a smaller gain is within the noise of the measurement and not worth the dependency.
set(_reformer_gemm_margin_percent 95)

# _reformer_openblas_core_advice(core isa): a warning when OpenBLAS runs kernels older than the
# CPU (core: openblas_get_corename(); isa: avx512f, avx2 or older). A DYNAMIC_ARCH OpenBLAS that
# does not recognise a CPU falls back to old kernels: Debian's 0.3.21 picks Prescott (SSE3) on
# a Sapphire Rapids Xeon VM, a quarter of Eigen's speed there, and about Eigen's speed with
# OPENBLAS_CORETYPE=SkylakeX. The probe then measured those old kernels; the user can choose.
function(_reformer_openblas_core_advice core isa)
  if(REFORMER_OPENBLAS_CORETYPE)
    return()  # the user chose the kernels
  endif()
  if(isa STREQUAL "avx512f" AND NOT core MATCHES "^(SkylakeX|Cooperlake|SapphireRapids)$")
    set(_suggested SkylakeX)
  elseif(isa STREQUAL "avx2" AND NOT core MATCHES
         "^(Haswell|Zen|SkylakeX|Cooperlake|SapphireRapids)$")
    set(_suggested Haswell)
  else()
    return()
  endif()
  message(WARNING "GEMM probe: OpenBLAS runs its ${core} kernels on this CPU, which has ${isa}: "
                  "it did not recognise the CPU, and the probe timed those older kernels. To time "
                  "OpenBLAS's ${_suggested} kernels, configure with "
                  "-DREFORMER_OPENBLAS_CORETYPE=${_suggested} (it measures again) and run "
                  "the programs with OPENBLAS_CORETYPE=${_suggested} in their environment.")
endfunction()

# _reformer_gemm_probe(): measures; sets REFORMER_GEMM_SELECTED and REFORMER_GEMM_PROBE (cache).
function(_reformer_gemm_probe)
  set(_flags "${CMAKE_CXX_FLAGS_RELEASE}")
  if(REFORMER_MARCH_FLAG)
    string(APPEND _flags " ${REFORMER_MARCH_FLAG}")
  endif()
  separate_arguments(_flags UNIX_COMMAND "${_flags}")
  # The probe runs as a child of this process: it inherits the environment set here (a function
  # scope does not confine ENV, so the previous value is put back below).
  set(_coretype_before "$ENV{OPENBLAS_CORETYPE}")
  if(REFORMER_OPENBLAS_CORETYPE)
    set(ENV{OPENBLAS_CORETYPE} "${REFORMER_OPENBLAS_CORETYPE}")
  else()
    unset(ENV{OPENBLAS_CORETYPE})
  endif()
  set(_how "one thread")
  if(REFORMER_MARCH_FLAG)
    string(APPEND _how ", ${REFORMER_MARCH_FLAG}")
  endif()
  if(REFORMER_OPENBLAS_CORETYPE)
    string(APPEND _how ", OPENBLAS_CORETYPE=${REFORMER_OPENBLAS_CORETYPE}")
  endif()
  message(STATUS "GEMM probe: timing Eigen and OpenBLAS products (${_how})")
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
  if(_coretype_before STREQUAL "")
    unset(ENV{OPENBLAS_CORETYPE})
  else()
    set(ENV{OPENBLAS_CORETYPE} "${_coretype_before}")
  endif()
  set(_choice eigen)
  if(NOT _compile_result)
    message(WARNING "GEMM probe did not compile; using Eigen's products.\n${_compile_output}")
    set(_figures "probe did not compile")
  elseif(NOT _run_result EQUAL 0)
    message(WARNING "GEMM probe failed (${_run_result}); using Eigen's products.\n${_run_output}")
    set(_figures "probe failed")
  else()
    foreach(_key eigen_us openblas_us eigen_gflops openblas_gflops openblas_core cpu_isa)
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
${_openblas_gflops} GFLOP/s, ${_how}")
    _reformer_openblas_core_advice("${_openblas_core}" "${_cpu_isa}")
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
    # (-march=native and OpenBLAS's own kernels keep the key of the builds that predate them.)
    if(NOT REFORMER_MARCH_FLAG MATCHES "^(-march=native)?$" OR REFORMER_OPENBLAS_CORETYPE)
      string(APPEND _key ";${REFORMER_MARCH_FLAG};${REFORMER_OPENBLAS_CORETYPE}")
    endif()
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
