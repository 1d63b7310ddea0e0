#!/usr/bin/env bash
# README command 2: set up, lint, then the whole suite against real services it starts itself.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_store.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PYTHONPATH="$PWD" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -40; exit 1; }
exec .venv/bin/python -m pytest "$@"
