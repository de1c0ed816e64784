#!/usr/bin/env bash
# Formats the C++ sources with the repository's .clang-format.
# Usage: bash scripts/format.sh [--check]   (--check: change nothing, fail if a file needs formatting)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=(-i)
if [ "${1:-}" = "--check" ]; then
  mode=(--dry-run --Werror)
elif [ $# -gt 0 ]; then
  echo "scripts/format.sh: unknown argument '$1' (expected --check)" >&2
  exit 2
fi

command -v clang-format >/dev/null 2>&1 || {
  echo "clang-format not found (Debian: apt-get install clang-format)" >&2
  exit 1
}

dirs=()
for d in include tests benchmarks examples; do
  [ -d "$d" ] && dirs+=("$d")
done
find "${dirs[@]}" -type f \( -name '*.hpp' -o -name '*.cpp' -o -name '*.h' -o -name '*.cc' \) \
  -not -path 'tests/data/*' -print0 | xargs -0 -r clang-format "${mode[@]}"
