#!/usr/bin/env bash
# Builds the examples (release preset) and runs the example training on its default task.
# Arguments are passed to the training program (try --help).
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
exec build/release/examples/train_copy "$@"
