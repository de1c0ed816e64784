# ctest driver of the fuzz targets (tests/fuzz/CMakeLists.txt): configures and builds them with
# clang, replays every regression input, then fuzzes each target for a bounded number of runs
# from its seed corpus. Any crash, sanitizer report or leak fails the test.
# Variables: SOURCE_DIR (tests/fuzz), BINARY_DIR (scratch build directory), CLANGXX, RUNS.
if(NOT RUNS)
  set(RUNS 20000)
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}"
  -DCMAKE_CXX_COMPILER=${CLANGXX} -DCMAKE_BUILD_TYPE=
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the fuzz targets failed:\n${out}\n${err}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BINARY_DIR}" -j 2
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the fuzz targets failed:\n${out}\n${err}")
endif()

foreach(target safetensors config_json checkpoint)
  set(exe "${BINARY_DIR}/fuzz_${target}")
  # 1. Every input that once crashed a reader, run once each.
  file(GLOB regressions "${SOURCE_DIR}/regression/${target}/*")
  if(regressions)
    execute_process(COMMAND "${exe}" -rss_limit_mb=2048 ${regressions}
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "fuzz_${target}: a regression input fails:\n${err}")
    endif()
  endif()
  # 2. Bounded fuzzing from the seed corpus (new inputs go to a scratch copy).
  set(work "${BINARY_DIR}/corpus_${target}")
  file(REMOVE_RECURSE "${work}")
  file(MAKE_DIRECTORY "${work}")
  execute_process(COMMAND "${exe}" -runs=${RUNS} -seed=1 -max_len=8192 -rss_limit_mb=2048
      -timeout=20 "${work}" "${SOURCE_DIR}/corpus/${target}"
    WORKING_DIRECTORY "${BINARY_DIR}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fuzz_${target} found a failure (the input is in ${BINARY_DIR}):\n${err}")
  endif()
  string(REGEX MATCH "Done [0-9]+ runs[^\n]*" done "${err}")
  message(STATUS "fuzz_${target}: ${done}")
endforeach()
