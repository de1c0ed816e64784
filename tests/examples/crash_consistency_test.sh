#!/usr/bin/env bash
# ctest: SIGKILL train_text at several points while it saves a checkpoint after every step. After
# every kill the checkpoint must load (generating one byte from it succeeds) and --resume must
# continue from it; a last resume runs to its end and leaves no temporary files behind.
# Usage: crash_consistency_test.sh <train_text> <scratch directory>
set -u
prog=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
fail() {
  echo "crash consistency: $*" >&2
  exit 1
}

corpus="$work/corpus.txt"
for i in $(seq 1 300); do echo "Line $i: the quick brown fox jumps over the lazy dog."; done >"$corpus"
dir="$work/run"
ckpt="$dir/checkpoint.safetensors"
model=(--length 16 --chunk 8 --layers 1 --attention local --d-model 8 --d-ff 8 --heads 2
  --batch 2 --warmup 0 --eval-every 100000 --eval-windows 1 --threads 1 --progress plain)

# last_step: the highest "step" of a training record in the metrics log (0 when none).
last_step() {
  grep -o '"event":"train"[^}]*' "$dir/metrics.jsonl" 2>/dev/null |
    grep -o '"step":[0-9]*' | cut -d: -f2 | sort -n | tail -1
}

previous=0
for delay in 0.05 0.3 0.11 0.6 0.23; do
  if [ -f "$ckpt" ]; then
    "$prog" --resume "$ckpt" --steps 1000000 --threads 1 --progress plain >"$work/out" 2>&1 &
  else
    "$prog" "$corpus" "${model[@]}" --steps 1000000 --checkpoint-every 1 --out-dir "$dir" \
      >"$work/out" 2>&1 &
  fi
  pid=$!
  # Wait for a checkpoint newer than the last one, then kill at a point that varies.
  for _ in $(seq 1 400); do
    step=$(last_step)
    [ "${step:-0}" -gt "$previous" ] && break
    sleep 0.05
  done
  sleep "$delay"
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  [ -f "$ckpt" ] || fail "no checkpoint after the kill (delay $delay): $(cat "$work/out")"
  "$prog" --checkpoint "$ckpt" --generate 1 --output "$work/sample.txt" >"$work/gen" 2>&1 ||
    fail "the checkpoint left by a kill (delay $delay) does not load: $(cat "$work/gen")"
  step=$(last_step)
  [ "${step:-0}" -ge "$previous" ] || fail "the run went back from step $previous to $step"
  previous=${step:-0}
done

# A last resume to a few steps past the log: it must finish and clean up.
target=$((previous + 3))
"$prog" --resume "$ckpt" --steps "$target" --threads 1 --progress plain >"$work/out" 2>&1 ||
  fail "the final --resume failed: $(cat "$work/out")"
grep -q "resuming at step" "$work/out" || fail "the final run did not resume: $(cat "$work/out")"
[ "$(last_step)" = "$target" ] || fail "the final run ended at step $(last_step), not $target"
if ls "$dir" | grep -q '\.tmp\.'; then fail "temporary files remain: $(ls "$dir")"; fi
duplicates=$(grep -o '"event":"train"[^}]*' "$dir/metrics.jsonl" | grep -o '"step":[0-9]*' |
  sort | uniq -d | head -3)
[ -z "$duplicates" ] || fail "metrics.jsonl repeats training steps: $duplicates"
echo "crash consistency: 5 kills, checkpoint always loaded, resumed to step $target"
