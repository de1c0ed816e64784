# Helpers for the example programs' ctest scripts (run with cmake -P).

# run_example(<result-prefix> <command> <args>...): runs the command and sets <prefix>_rc,
# <prefix>_out and <prefix>_err in the caller's scope.
function(run_example prefix)
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 300)
  set(${prefix}_rc "${rc}" PARENT_SCOPE)
  set(${prefix}_out "${out}" PARENT_SCOPE)
  set(${prefix}_err "${err}" PARENT_SCOPE)
endfunction()

# expect_success(<prefix> <what>): fails the test unless the run exited with 0.
function(expect_success prefix what)
  if(NOT "${${prefix}_rc}" STREQUAL "0")
    message(FATAL_ERROR "${what} exited with '${${prefix}_rc}'\nstdout:\n${${prefix}_out}\n"
                        "stderr:\n${${prefix}_err}")
  endif()
endfunction()

# expect_file(<path>): fails unless the file exists and is not empty.
function(expect_file path)
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "expected file ${path} does not exist")
  endif()
  file(SIZE "${path}" size)
  if(size EQUAL 0)
    message(FATAL_ERROR "expected file ${path} is empty")
  endif()
endfunction()

# metrics_values(<out-var> <log> <event> <key>): the values of <key> in the records of
# <event> of a metrics log (JSON lines), in order.
function(metrics_values out log event key)
  file(STRINGS "${log}" lines)
  set(values)
  foreach(line IN LISTS lines)
    string(JSON ev ERROR_VARIABLE json_error GET "${line}" event)
    if(json_error)
      message(FATAL_ERROR "${log}: a line is not JSON: ${line}")
    endif()
    if(ev STREQUAL event)
      string(JSON value ERROR_VARIABLE missing GET "${line}" ${key})
      if(NOT missing)
        list(APPEND values "${value}")
      endif()
    endif()
  endforeach()
  set(${out} "${values}" PARENT_SCOPE)
endfunction()

# write_line_corpus(<path>): a small text file of 200 numbered lines, the corpus of the
# train_text checks.
function(write_line_corpus path)
  set(content "")
  foreach(i RANGE 1 200)
    string(APPEND content "Line ${i}: the quick brown fox jumps over the lazy dog.\n")
  endforeach()
  file(WRITE "${path}" "${content}")
endfunction()
