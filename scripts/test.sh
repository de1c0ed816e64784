#!/usr/bin/env bash
# Builds and runs the whole test suite:
#   1. the `release` preset (tests, benchmarks and examples are all built; ctest runs the tests),
#   2. the `asan` preset (AddressSanitizer + UndefinedBehaviorSanitizer; the unit tests).
# Usage: bash scripts/test.sh [--no-sanitizers]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh

sanitizers=1
for arg in "$@"; do
  case "$arg" in
    --no-sanitizers) sanitizers=0 ;;
    -h | --help)
      sed -n '2,5s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    *)
      echo "scripts/test.sh: unknown argument '$arg' (expected --no-sanitizers)" >&2
      exit 2
      ;;
  esac
done

ensure_packages "${REFORMER_PACKAGES[@]}"
# ctest runs two test programs at once on two cores: OpenMP threads that spin while waiting would
# steal the other program's core, so let idle threads sleep (results do not depend on it).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
jobs=$(reformer_jobs)

run_preset() {
  local preset=$1 start=$SECONDS
  echo "==> preset '$preset': configure, build, test"
  cmake --preset "$preset"
  cmake --build --preset "$preset" -j"$jobs"
  ctest --preset "$preset" -j"$jobs"
  echo "==> preset '$preset' passed in $((SECONDS - start)) s"
}

run_preset release
if [ "$sanitizers" -eq 1 ]; then
  run_preset asan
fi
