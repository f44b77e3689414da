#!/usr/bin/env bash
# The second README command (and what CI runs): set up, lint and format-check, then run the whole test suite on
# the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# ruff (pinned in the test extra, configured in pyproject.toml) first: it takes a second, pytest takes minutes.
RUFF_PATHS=(harness tests benchmarks scripts)
.venv/bin/ruff check "${RUFF_PATHS[@]}"
.venv/bin/ruff format --check "${RUFF_PATHS[@]}"
exec .venv/bin/python -m pytest "$@"
