"""Plain-text output for `klb`: ages, sizes, aligned tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.storage.progress import human_bytes

__all__ = ["age", "ago", "table", "human_bytes", "when"]


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(int(seconds), size)
            sub = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // sub[1]
            return f"{whole}{unit}{part}{sub[0]}" if part and whole < 10 else f"{whole}{unit}"
    return f"{seconds:.0f}s"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    delta = ((now or datetime.now(UTC)) - when).total_seconds()
    return f"{age(delta)} ago" if delta >= 0 else f"in {age(-delta)}"


def when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def every(interval: timedelta) -> str:
    return age(interval.total_seconds())


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
