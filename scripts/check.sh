#!/usr/bin/env bash
# Every check CI runs, in one command, from any directory:  scripts/check.sh  [extra pytest args]
# Lint, formatting and types first (seconds), then the whole test suite (which also runs the
# examples, builds and installs the wheel, and re-checks lint/types as tests).
# Fix formatting with:  ruff format src tests examples benchmarks scripts && ruff check --fix src tests examples benchmarks scripts
set -euo pipefail
cd "$(dirname "$0")/.."
PATHS=(src tests examples benchmarks scripts)
set -x
ruff check "${PATHS[@]}"
ruff format --check "${PATHS[@]}"
mypy src/dctps
python -m pytest -q -n 2 "$@"
