# ctest: the example programs refuse NaN and out-of-range seeds at parse time, report a failed
# write of their output, and a resumed run keeps its evaluation and checkpoint settings and a
# metrics log without repeated steps.
# Variables: TRAIN_COPY, TRAIN_TEXT (programs), WORK_DIR (scratch directory).
include("${CMAKE_CURRENT_LIST_DIR}/check_util.cmake")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(text "${WORK_DIR}/corpus.txt")
write_line_corpus("${text}")
set(out --out-dir "${WORK_DIR}/bad")

# expect_usage_error(<regex> <command> <args>...): exit code 2 and a one-line error.
function(expect_usage_error pattern)
  run_example(bad ${ARGN})
  string(REPLACE ";" " " cmd "${ARGN}")
  if(NOT "${bad_rc}" STREQUAL "2" OR NOT bad_err MATCHES "${pattern}")
    message(FATAL_ERROR "'${cmd}' exited with ${bad_rc}, expected 2 and '${pattern}':\n${bad_err}")
  endif()
endfunction()

foreach(flag --clip --lr --dropout --target)
  expect_usage_error("${flag}.*finite" "${TRAIN_COPY}" ${flag} nan ${out})
endforeach()
foreach(flag --temperature --top-p --valid-fraction)
  expect_usage_error("${flag}.*finite" "${TRAIN_TEXT}" "${text}" ${flag} nan ${out})
endforeach()
expect_usage_error("--seed.*2\\^64" "${TRAIN_COPY}" --seed -1 ${out})
expect_usage_error("--seed.*2\\^64" "${TRAIN_COPY}" --seed 18446744073709551616 ${out})
expect_usage_error("--sample-seed.*2\\^64" "${TRAIN_TEXT}" "${text}" --sample-seed -1 ${out})

set(model --length 16 --chunk 8 --layers 1 --attention local --d-model 16 --d-ff 16 --heads 2
          --batch 2 --warmup 0 --progress plain)
set(run "${WORK_DIR}/run")
# Four steps with explicit evaluation and checkpoint settings.
run_example(first "${TRAIN_TEXT}" "${text}" ${model} --steps 4 --eval-every 2 --checkpoint-every 2
  --eval-windows 3 --threads 1 --out-dir "${run}")
expect_success(first "train_text (4 steps)")
# An invocation killed after its checkpoint would have logged later steps: simulate them, and a
# temporary file of a killed checkpoint write.
file(APPEND "${run}/metrics.jsonl" "{\"event\":\"train\",\"step\":5,\"loss\":1.0}\n")
file(WRITE "${run}/checkpoint.safetensors.tmp.2147483646.1" "partial")

# Resume to 8 without repeating the settings: they come from the checkpoint.
run_example(second "${TRAIN_TEXT}" --resume "${run}/checkpoint.safetensors" --steps 8)
expect_success(second "train_text --resume")
metrics_values(evals "${run}/metrics.jsonl" eval step)
if(NOT evals STREQUAL "2;4;6;8")
  message(FATAL_ERROR "evaluations at steps '${evals}', expected 2;4;6;8 (--eval-every 2 kept)")
endif()
metrics_values(checkpoints "${run}/metrics.jsonl" checkpoint step)
if(NOT checkpoints STREQUAL "2;4;6;8")
  message(FATAL_ERROR "checkpoints at steps '${checkpoints}', expected 2;4;6;8")
endif()
metrics_values(steps "${run}/metrics.jsonl" train step)
if(NOT steps STREQUAL "1;2;3;4;5;6;7;8")
  message(FATAL_ERROR "training records at steps '${steps}', expected each of 1..8 once")
endif()
if(EXISTS "${run}/checkpoint.safetensors.tmp.2147483646.1")
  message(FATAL_ERROR "the stale checkpoint temporary was not removed")
endif()
if(NOT second_out MATCHES "\\(3 windows per evaluation\\)")
  message(FATAL_ERROR "the resumed run does not keep --eval-windows 3:\n${second_out}")
endif()

# A run that diverges is told so.
run_example(diverge "${TRAIN_TEXT}" "${text}" --length 32 --chunk 8 --layers 1 --attention local
  --d-model 32 --d-ff 32 --heads 2 --batch 4 --lr 10 --clip 0 --warmup 0 --steps 10 --threads 1
  --progress plain --out-dir "${WORK_DIR}/diverge")
if(NOT diverge_out MATCHES "warning: step [0-9]+: loss .* is far above ln V = 5.545.*diverging")
  message(FATAL_ERROR "a diverging run (--lr 10 --clip 0) is not warned about:\n${diverge_out}"
                      "\n${diverge_err}")
endif()

# Output that cannot be written (a full disk) is an error.
if(EXISTS /dev/full)
  execute_process(COMMAND sh -c "\"$0\" --checkpoint \"$1\" --generate 20 > /dev/full"
    "${TRAIN_TEXT}" "${run}/checkpoint.safetensors"
    RESULT_VARIABLE full_rc ERROR_VARIABLE full_err)
  if(full_rc EQUAL 0 OR NOT full_err MATCHES "standard output")
    message(FATAL_ERROR "generation to /dev/full exited with ${full_rc}:\n${full_err}")
  endif()
endif()
message(STATUS "hardening: NaN and bad seeds refused, resume keeps its settings, divergence "
               "warned about, /dev/full fails")
