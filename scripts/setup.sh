#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the harness with its test tools. Idempotent: rerunning is cheap.
# torch is pinned to 2.13.0, whose CPU wheel pip finds locally here; see ../shared/docs/ENVIRONMENT.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and alone, so nothing else can pull a multi-GB CUDA build in its place.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
# Ray comes with the tests: the executor tests start a real local Ray cluster.
"$VENV/bin/python" -m pip install --quiet -e ".[test,ray]"
if [ "${HARNESS_WITH_VLLM:-0}" = "1" ] && [ -x scripts/install_vllm.sh ]; then
  scripts/install_vllm.sh "$VENV"
fi
# The leaderboard's browser test drives Debian's Chromium; CI (root) installs it, elsewhere the test is skipped.
if [ "${HARNESS_WITH_BROWSER:-0}" = "1" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup.sh: HARNESS_WITH_BROWSER=1 needs root and apt-get to install chromium; the browser test will be skipped" >&2
  fi
fi
echo "harness is installed in $VENV"
