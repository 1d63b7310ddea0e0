"""Live progress of a long backup or restore: bytes and objects streamed, reported as a Prefect
progress artifact and a log line, each at most every `KLB_PROGRESS_SECONDS` (default 5).

The flow's task opens a `tracking(...)` scope; the store's write and read paths
(tasks/storage/session.py) call the `ticker()` they captured when the stream began, so engine
feeder threads (which do not inherit context variables) still count. Reporting never fails a
backup: a Prefect API error is logged once and reporting stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

_current: ContextVar[Progress | None] = ContextVar("klb_progress", default=None)


def interval_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("KLB_PROGRESS_SECONDS", "5")))
    except ValueError:
        return 5.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _run_logger() -> Any:
    """The Prefect run logger when inside a flow/task run (its lines reach the UI), else ours."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # MissingContextError: a plain call outside Prefect
        return log


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return bool(FlowRunContext.get() or TaskRunContext.get())


class Progress:
    """Counts bytes/objects; reports when `interval` has passed since the last report."""

    def __init__(self, title: str, key: str, total_bytes: int | None = None, interval: float | None = None):
        self.title, self.key, self.total = title, key, total_bytes
        self.interval = interval_seconds() if interval is None else interval
        self.bytes = self.objects = 0
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._logger = _run_logger()
        self._artifact: Any = None
        self._broken = False
        if _in_run():  # created where the run context is; updates by id work from any thread
            self._publish(0.0, f"{title}: started", create=True)

    def describe(self) -> str:
        done = human_bytes(self.bytes)
        if self.total:
            done += f" of {human_bytes(self.total)}"
        return f"{self.title}: {done} streamed, {self.objects} object(s) done"

    def percent(self) -> float:
        if not self.total:
            return 0.0  # unknown size: the description carries the bytes
        return min(99.0, 100.0 * self.bytes / self.total)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes
            due = time.monotonic() - self._last >= self.interval
            if due:
                self._last = time.monotonic()
        if due:
            self._report()

    def object_done(self) -> None:
        with self._lock:
            self.objects += 1

    def _report(self) -> None:
        text = self.describe()
        self._logger.info("%s", text)
        self._publish(self.percent(), text)

    def finish(self, ok: bool) -> None:
        text = self.describe() + ("" if ok else " (FAILED)")
        self._logger.info("%s", text)
        self._publish(100.0 if ok else self.percent(), text)

    def _publish(self, percent: float, text: str, create: bool = False) -> None:
        if self._broken or (self._artifact is None and not create):
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if create:
                self._artifact = create_progress_artifact(percent, key=self.key, description=text)
            else:
                update_progress_artifact(self._artifact, percent, description=text)
        except Exception as exc:  # progress is a courtesy: never let it fail the backup
            self._broken = True
            log.warning("progress reporting stopped: %s", exc)


def current() -> Progress | None:
    return _current.get()


def ticker(progress: Progress | None) -> Callable[[int], None]:
    """The byte counter of `progress`, or a no-op for None (e.g. a verification read)."""
    return progress.advance if progress else (lambda n: None)


@contextmanager
def tracking(title: str, key: str, total_bytes: int | None = None) -> Iterator[Progress]:
    """Report the streams that start inside this block; the final line says whether it ended well."""
    progress = Progress(title, key, total_bytes)
    token = _current.set(progress)
    ok = False
    try:
        yield progress
        ok = True
    finally:
        _current.reset(token)
        progress.finish(ok)
