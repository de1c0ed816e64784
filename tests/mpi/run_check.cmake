# cmake -DMPIEXEC=<mpirun> -DCHECK=<reformer_mpi_check> -DSCENARIO=<name> -DWORK_DIR=<dir>
#       -P run_check.cmake
# The scenarios of tests/mpi/CMakeLists.txt:
#   reproducible         2 ranks twice, 50 steps: the same bits; the one-process run of the
#                        same global batch within 1e-6 (relative) of the loss after 2 steps
#                        (the first update), with 2 ranks and with 3 (unequal segments). Over
#                        longer runs the two trajectories drift apart from rounding alone, by
#                        how much depends on the GEMM backend (docs/DESIGN.md 6.1)
#   resume               2 ranks to step 10, then 1 rank resumes to 20: within 1e-6 of 2 ranks
#                        straight to 20; 2 ranks resuming: the same bits
#   config_mismatch      rank 1 has another seed: an error on every rank, no hang
#   rank_count_mismatch  a batch of 3 over 2 ranks: an error on every rank, no hang
#   rank_dies            rank 1 exits at step 3: the job ends with an error, no hang
#   mpi_error            a failing MPI call raises a reformer::Error naming the call
#   any_rank_count       groups of one sequence (forward_backward_grouped): 1, 2 and 4 ranks
#                        give the same bits
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# run(<ranks> <out-var> <rc-var> <args>...): mpirun with at most 240 s per job (a hang guard; the
# sanitizer build on a busy machine is slow).
function(run ranks out_var rc_var)
  execute_process(
    COMMAND "${MPIEXEC}" --oversubscribe --allow-run-as-root --timeout 240 -np ${ranks}
            "${CHECK}" ${ARGN}
    OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc TIMEOUT 300)
  message(STATUS "-np ${ranks} ${ARGN}: exit ${_rc}\n${_out}${_err}")
  set(${out_var} "${_out}${_err}" PARENT_SCOPE)
  set(${rc_var} "${_rc}" PARENT_SCOPE)
endfunction()

function(require_success rc what)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc})")
  endif()
endfunction()

# The "result:" line (final loss bits and the hash of every parameter bit).
function(result_of out var)
  string(REGEX MATCH "result: [^\n]*" _line "${out}")
  if(NOT _line)
    message(FATAL_ERROR "no result line in:\n${out}")
  endif()
  set(${var} "${_line}" PARENT_SCOPE)
endfunction()

# An error on every one of `ranks` ranks matching `pattern`, and a failed job.
function(require_error_on_every_rank out rc ranks pattern)
  if(rc EQUAL 0)
    message(FATAL_ERROR "the job succeeded; expected an error")
  endif()
  math(EXPR _last "${ranks} - 1")
  foreach(_r RANGE ${_last})
    if(NOT out MATCHES "rank ${_r}: error: [^\n]*${pattern}")
      message(FATAL_ERROR "rank ${_r} did not report an error matching '${pattern}'")
    endif()
  endforeach()
endfunction()

if(SCENARIO STREQUAL "reproducible")
  run(2 _out0 _rc0 --steps 2 --batch 4 --reference)
  require_success("${_rc0}" "2 ranks against the one-process run")
  run(2 _out1 _rc1 --steps 50 --batch 4)
  require_success("${_rc1}" "the first 2-rank run")
  run(2 _out2 _rc2 --steps 50 --batch 4)
  require_success("${_rc2}" "the second 2-rank run")
  result_of("${_out1}" _a)
  result_of("${_out2}" _b)
  if(NOT _a STREQUAL _b)
    message(FATAL_ERROR "two 2-rank runs differ:\n  ${_a}\n  ${_b}")
  endif()
  # 3 ranks: segments of unequal length (the bucket is not a multiple of 3).
  run(3 _out3 _rc3 --steps 2 --batch 6 --reference)
  require_success("${_rc3}" "3 ranks against the one-process run")
elseif(SCENARIO STREQUAL "resume")
  run(2 _straight _rc --steps 20 --batch 4)
  require_success("${_rc}" "2 ranks straight to step 20")
  string(REGEX MATCH "loss: ([^\n]*)" _m "${_straight}")
  set(_loss "${CMAKE_MATCH_1}")
  run(2 _first _rc --steps 10 --batch 4 --save "${WORK_DIR}/step10.safetensors")
  require_success("${_rc}" "2 ranks to step 10")
  run(1 _one _rc --steps 20 --batch 4 --load "${WORK_DIR}/step10.safetensors"
      --expect-loss ${_loss})
  require_success("${_rc}" "1 rank resuming at step 10")
  run(2 _two _rc --steps 20 --batch 4 --load "${WORK_DIR}/step10.safetensors")
  require_success("${_rc}" "2 ranks resuming at step 10")
  result_of("${_straight}" _a)
  result_of("${_two}" _b)
  if(NOT _a STREQUAL _b)
    message(FATAL_ERROR "2 ranks resumed differ from 2 ranks straight:\n  ${_a}\n  ${_b}")
  endif()
elseif(SCENARIO STREQUAL "config_mismatch")
  run(2 _out _rc --steps 5 --seed-offset-rank 1)
  require_error_on_every_rank("${_out}" "${_rc}" 2 "configuration of rank\\(s\\) 1 differs")
elseif(SCENARIO STREQUAL "rank_count_mismatch")
  run(2 _out _rc --steps 5 --batch 3)
  require_error_on_every_rank("${_out}" "${_rc}" 2 "cannot be split evenly over 2 ranks")
elseif(SCENARIO STREQUAL "rank_dies")
  string(TIMESTAMP _start "%s" UTC)
  run(2 _out _rc --steps 50 --die-rank 1 --die-step 3)
  string(TIMESTAMP _end "%s" UTC)
  math(EXPR _seconds "${_end} - ${_start}")
  if(_rc EQUAL 0 OR _rc MATCHES "timeout" OR _out MATCHES "time limit" OR _seconds GREATER 60)
    message(FATAL_ERROR "expected the job to fail promptly, got: ${_rc} after ${_seconds} s")
  endif()
  if(NOT _out MATCHES "rank 1: exiting abruptly at step 3")
    message(FATAL_ERROR "rank 1 did not die as planned")
  endif()
elseif(SCENARIO STREQUAL "mpi_error")
  run(2 _out _rc --mpi-error)
  require_success("${_rc}" "the MPI error check")
  if(NOT _out MATCHES "rank 0: caught: MPI_Bcast: failed" OR
     NOT _out MATCHES "rank 1: caught: MPI_Bcast: failed")
    message(FATAL_ERROR "no reformer::Error naming MPI_Bcast on every rank")
  endif()
elseif(SCENARIO STREQUAL "any_rank_count")
  foreach(_ranks 1 2 4)
    run(${_ranks} _out _rc --steps 10 --batch 4 --group 1)
    require_success("${_rc}" "${_ranks} rank(s) with groups of one sequence")
    result_of("${_out}" _r${_ranks})
  endforeach()
  if(NOT _r1 STREQUAL _r2 OR NOT _r1 STREQUAL _r4)
    message(FATAL_ERROR "the rank count changed the result:\n  1: ${_r1}\n  2: ${_r2}\n  4: ${_r4}")
  endif()
else()
  message(FATAL_ERROR "unknown SCENARIO '${SCENARIO}'")
endif()
