#!/usr/bin/env bash
# Builds the examples (release preset), runs the example training on its default task, then
# draws the metrics of the run (loss, held-out accuracy) as a PNG next to its metrics log and
# prints where it is. Arguments are passed to the training program (try --help).
# Usage: bash scripts/train.sh [training options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

ensure_packages "${REFORMER_PACKAGES[@]}"

if [ ! -f examples/CMakeLists.txt ] || [ ! -f examples/train_copy.cpp ]; then
  echo "scripts/train.sh: this tree has no examples/train_copy.cpp yet, so there is no training" >&2
  echo "program to run." >&2
  echo "The library and its tests build with: bash scripts/test.sh" >&2
  exit 1
fi

cmake --preset release
cmake --build --preset release --target train_copy -j"$(reformer_jobs)"

# The run's output directory: --out-dir when given, else the folder of a --resume checkpoint,
# else a new runs/copy-<date>-<time> (passed to the program so the plot can find it).
out_dir="" resume="" wants_help=0 prev=""
for arg in "$@"; do
  case "$prev" in
    --out-dir) out_dir="$arg" ;;
    --resume) resume="$arg" ;;
  esac
  case "$arg" in
    --out-dir=*) out_dir="${arg#--out-dir=}" ;;
    --resume=*) resume="${arg#--resume=}" ;;
    -h | --help) wants_help=1 ;;
  esac
  prev="$arg"
done
if [ "$wants_help" -eq 1 ]; then
  exec build/release/examples/train_copy "$@"
fi
extra=()
if [ -z "$out_dir" ]; then
  if [ -n "$resume" ]; then
    out_dir="$(dirname "$resume")"
  else
    out_dir="runs/copy-$(date +%Y%m%d-%H%M%S)"
    extra=(--out-dir "$out_dir")
  fi
fi

status=0
build/release/examples/train_copy "$@" "${extra[@]}" || status=$?

# The plot, also of an interrupted run (exit code 130); not when the run never started.
metrics="$out_dir/metrics.jsonl"
if [ -s "$metrics" ]; then
  png="$out_dir/metrics.png"
  if /usr/bin/python3 scripts/plot_metrics.py "$metrics" -o "$png" >/dev/null; then
    echo "Accuracy plot: $png"
  else
    echo "scripts/train.sh: plotting $metrics failed (the run itself is unaffected)" >&2
  fi
fi
exit "$status"
