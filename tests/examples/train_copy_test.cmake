# ctest: train_copy for a handful of steps on a tiny config (T = 16, 8 symbols, d_model 32), its
# feed-forward sublayers keeping their activations (--kept-mib). Checks the exit code, that the
# loss went down (the first training loss is about ln 7 = 1.95,
# chance over the 7 content symbols; the held-out loss after 30 steps must be below 1.0), the
# metrics log, the checkpoint, and the Table-2 row.
# Variables: PROGRAM (train_copy), WORK_DIR (scratch directory).
include("${CMAKE_CURRENT_LIST_DIR}/check_util.cmake")
file(REMOVE_RECURSE "${WORK_DIR}")

run_example(copy "${PROGRAM}" --length 16 --chunk 4 --symbols 8 --d-model 32 --d-ff 64 --heads 2
  --steps 30 --batch 16 --lr 1e-2 --warmup 5 --eval-every 10 --eval-size 32 --target 0
  --threads 1 --kept-mib 16 --progress plain --out-dir "${WORK_DIR}")
expect_success(copy "train_copy")
expect_file("${WORK_DIR}/metrics.jsonl")
expect_file("${WORK_DIR}/checkpoint.safetensors")

metrics_values(train_losses "${WORK_DIR}/metrics.jsonl" train loss)
metrics_values(eval_losses "${WORK_DIR}/metrics.jsonl" eval eval_loss)
list(LENGTH train_losses n_train)
list(LENGTH eval_losses n_eval)
if(NOT n_train EQUAL 30 OR NOT n_eval EQUAL 3)
  message(FATAL_ERROR "expected 30 train and 3 eval records, got ${n_train} and ${n_eval}")
endif()
list(GET train_losses 0 first)
list(GET eval_losses -1 last)
if(NOT first GREATER 1.5 OR NOT last LESS 1.0)
  message(FATAL_ERROR "the loss did not go down: first training loss ${first}, "
                      "final held-out loss ${last}")
endif()

foreach(text "held-out accuracy" "train\\\\eval" "LSH-8" "checkpoint saved")
  if(NOT copy_out MATCHES "${text}")
    message(FATAL_ERROR "the output lacks '${text}':\n${copy_out}")
  endif()
endforeach()
message(STATUS "train_copy: first loss ${first}, final held-out loss ${last}")
