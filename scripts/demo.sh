#!/usr/bin/env bash
# README command 1: set up, then back up every component into the embedded local store and
# run a restore drill with its report. Throwaway services live under .run/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PYTHONPATH="$PWD" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m sandbox.demo "$@"
