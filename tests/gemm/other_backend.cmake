# cmake -DSOURCE_DIR=<tree> -DBINARY_DIR=<dir> -DGEMM=<EIGEN|OPENBLAS|> -DSUITES=<a,b,...>
#       [-DCXX_COMPILER=...] [-DCXX_FLAGS=...] [-DBUILD_TYPE=...] [-DNATIVE=ON|OFF]
#       [-DMARCH=<-march value>] [-DOPENBLAS_CORETYPE=...] [-DJOBS=N]
#       -P other_backend.cmake
# The ctest gemm.other_backend (tests/CMakeLists.txt): configures this source tree again in
# BINARY_DIR with REFORMER_GEMM=GEMM (the backend the enclosing build did not choose) and the
# enclosing build's compiler, flags and -march (REFORMER_MARCH), tests only, builds the unit
# suites SUITES (reformer_test_<suite>) and runs their executables. An empty GEMM means the other
# backend is not available here: the test reports itself skipped.
if(NOT GEMM)
  message("gemm.other_backend: skipped, OpenBLAS is not installed (apt-get install libopenblas-dev)")
  return()
endif()
foreach(_var SOURCE_DIR BINARY_DIR SUITES)
  if(NOT ${_var})
    message(FATAL_ERROR "other_backend.cmake: ${_var} is not set")
  endif()
endforeach()
if(NOT JOBS)
  set(JOBS 2)
endif()
string(REPLACE "," ";" _suites "${SUITES}")

set(_configure -S "${SOURCE_DIR}" -B "${BINARY_DIR}" "-DREFORMER_GEMM=${GEMM}"
  -DREFORMER_BUILD_TESTS=ON -DREFORMER_BUILD_BENCHMARKS=OFF -DREFORMER_BUILD_EXAMPLES=OFF
  -DREFORMER_INSTALL=OFF)
foreach(_pair CXX_COMPILER:CMAKE_CXX_COMPILER BUILD_TYPE:CMAKE_BUILD_TYPE NATIVE:REFORMER_NATIVE
              MARCH:REFORMER_MARCH OPENBLAS_CORETYPE:REFORMER_OPENBLAS_CORETYPE)
  string(REPLACE ":" ";" _pair "${_pair}")
  list(GET _pair 0 _in)
  list(GET _pair 1 _out)
  if(DEFINED ${_in} AND NOT "${${_in}}" STREQUAL "")
    list(APPEND _configure "-D${_out}=${${_in}}")
  endif()
endforeach()
if(DEFINED CXX_FLAGS)
  list(APPEND _configure "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
endif()

message("gemm.other_backend: REFORMER_GEMM=${GEMM}, suites ${SUITES}, in ${BINARY_DIR}")
execute_process(COMMAND "${CMAKE_COMMAND}" ${_configure} COMMAND_ERROR_IS_FATAL ANY)

set(_targets)
foreach(_suite IN LISTS _suites)
  list(APPEND _targets reformer_test_${_suite})
endforeach()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BINARY_DIR}" -j${JOBS} --target ${_targets}
  COMMAND_ERROR_IS_FATAL ANY)

# Each suite's executable runs all its tests in one process (cheaper than one process per test).
foreach(_suite IN LISTS _suites)
  execute_process(COMMAND "${BINARY_DIR}/tests/reformer_test_${_suite}" --gtest_brief=1
    WORKING_DIRECTORY "${BINARY_DIR}/tests"
    COMMAND_ERROR_IS_FATAL ANY)
endforeach()
