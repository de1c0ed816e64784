# ctest: train_text on a small generated file: train 12 steps straight; train 6 steps, save,
# resume to 12 and check the resumed losses are bit-identical; then generate 50 bytes from the
# checkpoint and check their number; then generate greedily with the per-layer caches and with
# --no-cache (recomputing the context for every byte) and check the bytes are identical.
# Variables: PROGRAM (train_text), WORK_DIR (scratch directory).
include("${CMAKE_CURRENT_LIST_DIR}/check_util.cmake")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(text "${WORK_DIR}/corpus.txt")
write_line_corpus("${text}")

set(model --length 32 --chunk 8 --layers 2 --attention local,lsh --d-model 32 --d-ff 64 --heads 2
          --batch 4 --lr 3e-3 --warmup 2 --schedule constant --eval-every 4 --eval-windows 4
          --threads 1 --progress plain)

# 1. Straight run.
run_example(straight "${PROGRAM}" "${text}" ${model} --steps 12 --out-dir "${WORK_DIR}/straight")
expect_success(straight "train_text (12 steps)")
expect_file("${WORK_DIR}/straight/metrics.jsonl")
expect_file("${WORK_DIR}/straight/checkpoint.safetensors")
metrics_values(bpb "${WORK_DIR}/straight/metrics.jsonl" eval eval_bpb)
list(LENGTH bpb n_eval)
if(NOT n_eval EQUAL 3)
  message(FATAL_ERROR "expected 3 validation records, got ${n_eval}")
endif()

# 2. Six steps, then resume to twelve: the same losses as the straight run.
run_example(first "${PROGRAM}" "${text}" ${model} --steps 6 --out-dir "${WORK_DIR}/resumed")
expect_success(first "train_text (6 steps)")
run_example(second "${PROGRAM}" --resume "${WORK_DIR}/resumed/checkpoint.safetensors" --steps 12
  --threads 1 --progress plain)
expect_success(second "train_text --resume")
if(NOT second_out MATCHES "resuming at step 6")
  message(FATAL_ERROR "the resumed run does not say where it resumes:\n${second_out}")
endif()
metrics_values(straight_losses "${WORK_DIR}/straight/metrics.jsonl" train loss)
metrics_values(resumed_losses "${WORK_DIR}/resumed/metrics.jsonl" train loss)
list(LENGTH resumed_losses n_resumed)
if(NOT n_resumed EQUAL 12)
  message(FATAL_ERROR "the resumed run's log has ${n_resumed} training records, expected 12")
endif()
if(NOT straight_losses STREQUAL resumed_losses)
  message(FATAL_ERROR "resumed losses differ from the straight run:\n"
                      "straight: ${straight_losses}\nresumed:  ${resumed_losses}")
endif()

# 3. Generation from the checkpoint: prompt + 50 bytes.
set(sample "${WORK_DIR}/sample.txt")
run_example(gen "${PROGRAM}" --checkpoint "${WORK_DIR}/resumed/checkpoint.safetensors"
  --generate 50 --prompt "Line " --temperature 0.7 --top-k 20 --top-p 0.9 --output "${sample}")
expect_success(gen "train_text --generate")
file(SIZE "${sample}" size)
if(NOT size EQUAL 55)
  message(FATAL_ERROR "the sample has ${size} bytes, expected 5 (prompt) + 50")
endif()

# 4. Cached and recomputing generation agree byte for byte at temperature 0 (prompt longer than a
#    chunk of 8; prompt + bytes fit the context of 32).
foreach(mode cached recomputed)
  set(extra "")
  if(mode STREQUAL "recomputed")
    set(extra --no-cache)
  endif()
  run_example(${mode} "${PROGRAM}" --checkpoint "${WORK_DIR}/resumed/checkpoint.safetensors"
    --generate 18 --prompt "Line 1: the " --temperature 0 ${extra}
    --output "${WORK_DIR}/greedy_${mode}.txt")
  expect_success(${mode} "train_text --generate (${mode})")
  file(READ "${WORK_DIR}/greedy_${mode}.txt" greedy_${mode} HEX)
endforeach()
string(LENGTH "${greedy_cached}" hex_length)
if(NOT hex_length EQUAL 60)
  message(FATAL_ERROR "the greedy sample has ${hex_length} hex digits, expected 2 * (12 + 18)")
endif()
if(NOT greedy_cached STREQUAL greedy_recomputed)
  message(FATAL_ERROR "cached and --no-cache generation differ:\n"
                      "cached:     ${greedy_cached}\nrecomputed: ${greedy_recomputed}")
endif()
message(STATUS "train_text: validation bits/byte ${bpb}; resumed losses identical; sample ok; "
               "cached and --no-cache generation identical")
