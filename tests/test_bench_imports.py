"""The benchmarks are not run by the suite (speed is never asserted in a test), but each must
still import: a refactor of one bench once left two others unable to start."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCH = sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCH)
def test_every_bench_imports(name):
    importlib.import_module(f"bench.{name}")
