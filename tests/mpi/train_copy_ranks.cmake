# cmake -DMPIEXEC=<mpirun> -DPROGRAM=<train_copy> -DWORK_DIR=<dir> -P train_copy_ranks.cmake
# train_copy under mpirun: 2 ranks train 6 steps (rank 0 alone writes the run directory), then
# 1 rank resumes the checkpoint to step 10 and 2 ranks resume it again to step 12.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(_small --length 32 --symbols 8 --batch 4 --eval-size 8 --eval-every 3 --threads 1
           --no-table2 --progress plain)

function(run ranks)
  execute_process(
    COMMAND "${MPIEXEC}" --oversubscribe --allow-run-as-root --timeout 240 -np ${ranks}
            "${PROGRAM}" ${ARGN}
    OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc TIMEOUT 300)
  message(STATUS "-np ${ranks} ${ARGN}: exit ${_rc}\n${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "train_copy on ${ranks} rank(s) failed (exit ${_rc})")
  endif()
  set(_out "${_out}" PARENT_SCOPE)
endfunction()

run(2 ${_small} --steps 6 --out-dir "${WORK_DIR}/run")
if(NOT _out MATCHES "data-parallel: 2 ranks x 2 sequences per step")
  message(FATAL_ERROR "rank 0 did not report the data-parallel layout")
endif()
# One progress report per step from rank 0 only: the others print nothing.
string(REGEX MATCHALL "final checkpoint saved" _saved "${_out}")
list(LENGTH _saved _n)
if(NOT _n EQUAL 1)
  message(FATAL_ERROR "expected one 'final checkpoint saved' line (rank 0 only), got ${_n}")
endif()
file(READ "${WORK_DIR}/run/metrics.jsonl" _log)
if(NOT _log MATCHES "\"ranks\":2")
  message(FATAL_ERROR "the metrics log does not record 2 ranks")
endif()

run(1 --resume "${WORK_DIR}/run/checkpoint.safetensors" --steps 10 --threads 1 --no-table2
    --progress plain)
run(2 --resume "${WORK_DIR}/run/checkpoint.safetensors" --steps 12 --threads 1 --no-table2
    --progress plain)
file(READ "${WORK_DIR}/run/metrics.jsonl" _log)
foreach(_step 6 10 12)
  if(NOT _log MATCHES "\"event\":\"train\",[^\n]*\"step\":${_step}[,}]")
    message(FATAL_ERROR "no train record of step ${_step} in the metrics log:\n${_log}")
  endif()
endforeach()
