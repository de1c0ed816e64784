# ctest: train_listops for a few steps on a tiny config (lengths 16-96, d_model 16). Checks the
# exit code, the printed validation accuracy and majority-class baseline, the metrics log (one
# train record per step, an eval record per evaluation, accuracies in [0, 1]) and that a
# minimum length above the maximum is a usage error.
# Variables: PROGRAM (train_listops), WORK_DIR (scratch directory).
include("${CMAKE_CURRENT_LIST_DIR}/check_util.cmake")
file(REMOVE_RECURSE "${WORK_DIR}")

run_example(listops "${PROGRAM}" --max-length 96 --min-length 16 --chunk 16 --d-model 16
  --d-ff 32 --heads 2 --steps 12 --batch 4 --pool 2 --warmup 2 --eval-every 6 --eval-size 16
  --threads 1 --progress plain --out-dir "${WORK_DIR}")
expect_success(listops "train_listops")
expect_file("${WORK_DIR}/metrics.jsonl")

metrics_values(train_losses "${WORK_DIR}/metrics.jsonl" train loss)
metrics_values(eval_accs "${WORK_DIR}/metrics.jsonl" eval eval_acc)
list(LENGTH train_losses n_train)
list(LENGTH eval_accs n_eval)
if(NOT n_train EQUAL 12 OR NOT n_eval EQUAL 2)
  message(FATAL_ERROR "expected 12 train and 2 eval records, got ${n_train} and ${n_eval}")
endif()
foreach(acc IN LISTS eval_accs)
  if(acc LESS 0 OR acc GREATER 1)
    message(FATAL_ERROR "validation accuracy ${acc} outside [0, 1]")
  endif()
endforeach()
list(GET train_losses 0 first)
if(NOT first GREATER 1.5 OR NOT first LESS 3.5)
  message(FATAL_ERROR "the first training loss ${first} is not near ln 10 = 2.30")
endif()
foreach(text "step 6: validation accuracy [0-9.]+%" "step 12: validation accuracy"
             "majority-class baseline: [0-9.]+% \\(class [0-9]\\)" "Validation accuracy [0-9.]+%")
  if(NOT listops_out MATCHES "${text}")
    message(FATAL_ERROR "the output lacks '${text}':\n${listops_out}")
  endif()
endforeach()

run_example(bad "${PROGRAM}" --max-length 32 --min-length 64 --out-dir "${WORK_DIR}/bad")
if(NOT bad_rc EQUAL 2 OR NOT bad_err MATCHES "--min-length")
  message(FATAL_ERROR "--min-length above --max-length: exit ${bad_rc}, stderr:\n${bad_err}")
endif()
message(STATUS "train_listops: first loss ${first}, validation accuracies ${eval_accs}")
