"""Seconds per phase of a restore or a drill: what its RTO is made of. A component reports them
under `seconds` (per thing it restored, or for itself), and the drill's report shows them
(tasks/operations/drills.rto_phases_text)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Adds the time the block takes, failing or not, to `seconds[phase]`."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.monotonic() - started


def rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {phase: round(value, 2) for phase, value in seconds.items()}
