#!/usr/bin/env bash
# README command 2: set up, lint, then the whole suite against real services it starts itself.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_store.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PYTHONPATH="$PWD" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -40; exit 1; }
# Workers side by side (pytest-xdist), one test file per worker at a time: most of a test's time
# is spent waiting on servers, so three workers on two cores finish in about half the time.
# KLB_TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${KLB_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
