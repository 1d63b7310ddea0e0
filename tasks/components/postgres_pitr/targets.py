"""What a recovery goes to: an aware time, 'latest', an LSN or a named restore point, each parsed
strictly (one spelling; anything else is BadInput saying how to write it, never a guess)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator

from tasks.components.postgres_pitr.engines import format_lsn, parse_lsn
from tasks.errors import BadInput


class RecoveryTarget(BaseModel):
    kind: Literal["time", "latest", "lsn", "name"]
    time: AwareDatetime | None = None
    lsn: str | None = None
    name: str | None = None

    def describe(self) -> str:
        return {
            "time": lambda: f"time {self.time.isoformat()}",
            "latest": lambda: "latest",
            "lsn": lambda: f"LSN {self.lsn}",
            "name": lambda: f"restore point {self.name!r}",
        }[self.kind]()


# One spelling only: date, time to the minute at least, at most microseconds (PostgreSQL's
# resolution), and the zone if any. fromisoformat alone also reads '2026-01-15T14+01:00' (14:00),
# '20260115T1430Z', week dates, and drops digits past the microsecond.
_TIME = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?)\s*(?P<zone>Z|[+-]\d\d:\d\d)?",
    re.IGNORECASE,
)


def _number_as_text(value: Any) -> Any:
    """A number given for a time (JSON 1733000000) as its text: pydantic's datetime would read it
    as a Unix time (seconds, or milliseconds past 2e10) before _parse_time refuses it."""
    if isinstance(value, (int, float)):  # bool included: True would be 1970-01-01T00:00:01Z
        return str(value)
    return value


# target_time of a flow parameter or of RestoreOptions: an aware datetime (from Python) or text
# (the form, JSON); a number reaches parse_target as text and is refused there, saying how to
# write a time. The schema stays date-time-or-string for the Prefect UI form.
TargetTime = Annotated[datetime | str, BeforeValidator(_number_as_text)]


def _parse_time(text: str) -> datetime:
    if re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?(e[+-]?[0-9]+)?|inf|nan)|True|False", text, re.IGNORECASE):
        raise BadInput(
            f"target time {text[:60]!r} is a number, not a time (a Unix time is never guessed): "
            "write it as text, YYYY-MM-DDTHH:MM[:SS[.ffffff]] with its zone, e.g. "
            "2026-01-15T14:30:00+00:00 or 2026-01-15T14:30:00Z, or 'latest'"
        )
    match = _TIME.fullmatch(text)
    try:
        if not match:
            raise ValueError(text)
        zone = (match["zone"] or "").upper().replace("Z", "+00:00")
        return datetime.fromisoformat(match["time"].replace(" ", "T") + zone)
    except ValueError:
        raise BadInput(
            f"target time {text[:60]!r} is not a time: write it as YYYY-MM-DDTHH:MM[:SS[.ffffff]] with "
            "its zone, e.g. 2026-01-15T14:30:00+00:00 or 2026-01-15T14:30:00Z, or 'latest'"
        ) from None


def parse_target(
    target_time: datetime | str | int | float | None = None,
    target_lsn: str | None = None,
    target_name: str | None = None,
) -> RecoveryTarget:
    """Exactly one target: an aware time (or 'latest'), an LSN, or a named restore point."""
    given = [x for x in (target_time, target_lsn, target_name) if x not in (None, "")]
    if len(given) != 1:
        raise BadInput(
            "give exactly one target: target_time (with zone, or 'latest'), target_lsn or target_name"
        )
    if target_lsn:
        lsn = parse_lsn(target_lsn)
        return RecoveryTarget(kind="lsn", lsn=format_lsn(lsn))
    if target_name:
        if not re.fullmatch(r"[A-Za-z0-9 ._:-]{1,63}", target_name):
            raise BadInput(f"restore point name {target_name!r}: use letters, digits, ' ._:-', at most 63")
        return RecoveryTarget(kind="name", name=target_name)
    target_time = _number_as_text(target_time)
    if isinstance(target_time, str):
        text = target_time.strip()
        if text.lower() == "latest":
            return RecoveryTarget(kind="latest")
        target_time = _parse_time(text)
    if not isinstance(target_time, datetime):
        raise BadInput(f"target time {target_time!r:.60} is not a time: give an aware datetime or its text")
    if target_time.tzinfo is None or target_time.utcoffset() is None:
        raise BadInput(
            f"target time {target_time.isoformat()} has no time zone: PITR will not guess one; "
            "add it, e.g. '+00:00' or 'Z'"
        )
    if target_time > datetime.now(UTC):
        raise BadInput(f"target time {target_time.isoformat()} is in the future")
    return RecoveryTarget(kind="time", time=target_time.astimezone(UTC))
