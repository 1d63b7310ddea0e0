"""The recoverable window: base backups from the catalog + the engine's list of archived WAL.

A window starts at the end (consistent point) of a base backup whose stop segment is in the
archive, and runs through every following segment with no gap. It ends, for time targets, at the
last transaction (commit/abort) in the last archived segment: PostgreSQL stops replay only when it
meets a transaction *after* the target, so a target at or past the last one cannot be reached
(it ends with "recovery ended before configured recovery target was reached").

Timelines: after a recovery or a failover promoted a server that archives here, the archive holds
a history file for the new timeline, naming where it branched off its parent. Recovery stays on
the base backup's timeline (recovery_target_timeline 'current'), so past that branch point it
would replay the abandoned history: a window ends there, and 'latest' from it is refused until a
base backup on the newer timeline exists.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, Field

from blocks.pitr import PitrTarget
from tasks import proc
from tasks.components.postgres_pitr.engines import (
    ArchiveReader,
    PitrEngine,
    format_lsn,
    is_segment,
    parse_lsn,
    segment_name,
    segment_number,
    segment_of,
)
from tasks.components.postgres_pitr.targets import RecoveryTarget
from tasks.errors import BadInput, NotFound
from tasks.models import Manifest

COMPONENT = "postgres-pitr"
_HISTORY = re.compile(r"[0-9A-F]{8}\.history")
_XACT = re.compile(
    r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)\S* (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
)


class BaseBackupRef(BaseModel):
    id: str
    end_time: AwareDatetime
    start_lsn: str
    stop_lsn: str
    timeline: int


class Window(BaseModel):
    """One gap-free stretch of archived WAL that a base backup can start."""

    timeline: int
    start_time: AwareDatetime = Field(description="end of the earliest usable base backup")
    start_lsn: str
    end_time: AwareDatetime | None = Field(description="last transaction in the archive (exclusive)")
    end_lsn: str = Field(description="end of the last archived segment of the stretch")
    last_xact_lsn: str | None = Field(default=None, description="last transaction: LSN targets end here")
    first_segment: str
    last_segment: str
    segments: int
    base_backups: list[BaseBackupRef]
    branched_to: int | None = Field(
        default=None, description="a later timeline branched off this one at end_lsn: the window ends there"
    )

    def last_target_lsn(self) -> int | None:
        """The last LSN a target may name. Recovery stops after the first record at or past it,
        so one must be archived: the last transaction is (pg_waldump read it whole); the end
        of the last segment (a switch's padding, WAL not archived yet) is not."""
        if self.last_xact_lsn is None or parse_lsn(self.last_xact_lsn) < parse_lsn(self.start_lsn):
            return None
        return parse_lsn(self.last_xact_lsn)

    def describe(self) -> str:
        end = self.end_time.isoformat() if self.end_time else "(no transaction archived yet)"
        has_lsns = self.last_target_lsn() is not None
        lsns = f"LSN {self.start_lsn} .. {self.last_xact_lsn} (inclusive)" if has_lsns else "no LSN target"
        if self.branched_to is not None:
            return (
                f"{self.start_time.isoformat()} .. {end} (exclusive; {lsns}) on timeline {self.timeline}, "
                f"where timeline {self.branched_to} branched off at LSN {self.end_lsn}"
            )
        return f"{self.start_time.isoformat()} .. {end} (exclusive; {lsns}; 'latest' = LSN {self.end_lsn})"


class ArchiveReport(BaseModel):
    engine: str
    archive: str
    server_name: str
    wal_files: int
    last_archived_segment: str | None
    missing_segments: list[str] = Field(description="first missing segment after each gap")
    windows: list[Window]
    checked_at: AwareDatetime

    @property
    def current(self) -> Window | None:
        return self.windows[-1] if self.windows else None

    def describe(self) -> str:
        if not self.windows:
            return "no recoverable window (no base backup whose WAL is archived)"
        return "; ".join(w.describe() for w in self.windows)


def base_backup_refs(backups: list[Manifest], target: PitrTarget) -> list[BaseBackupRef]:
    """The catalog's base backups of this server (same archive and server name)."""
    refs = []
    for m in backups:
        e = m.engine
        if e.get("archive_url") != target.archive_url or e.get("server_name") != target.server_name:
            continue
        refs.append(
            BaseBackupRef(
                id=m.id,
                end_time=e["end_time"],
                start_lsn=e["start_lsn"],
                stop_lsn=e["stop_lsn"],
                timeline=e["timeline"],
            )
        )
    return sorted(refs, key=lambda r: (r.end_time, r.id))


def _runs(segments: list[str], seg_size: int) -> tuple[dict[int, list[list[int]]], list[str]]:
    """Gap-free runs of segment numbers per timeline, and the first missing segment of each gap."""
    by_tli: dict[int, list[int]] = {}
    for name in segments:
        tli, segno = segment_number(name, seg_size)
        by_tli.setdefault(tli, []).append(segno)
    runs: dict[int, list[list[int]]] = {}
    missing: list[str] = []
    for tli, numbers in by_tli.items():
        numbers.sort()
        current = [numbers[0]]
        runs[tli] = [current]
        for n in numbers[1:]:
            if n != current[-1] + 1:
                missing.append(segment_name(tli, current[-1] + 1, seg_size))
                current = [n]
                runs[tli].append(current)
            else:
                current.append(n)
    return runs, missing


def branch_points(archive: ArchiveReader, names: list[str]) -> dict[int, tuple[int, int]]:
    """Per timeline, the earliest point where a later timeline in the archive left it:
    {timeline: (switch LSN, the timeline whose history file says so)}. A history file
    `0000000N.history` lists each ancestor of N and the LSN at which N's history left it."""
    out: dict[int, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="klb-history-") as tmp:
        for name in names:
            if not _HISTORY.fullmatch(name):
                continue
            path = Path(tmp) / name
            archive.fetch(name, path)
            for line in path.read_text(errors="replace").splitlines():
                fields = line.split()
                if len(fields) < 2 or not fields[0].isdigit():
                    continue  # a comment or blank line
                parent, lsn = int(fields[0]), parse_lsn(fields[1])
                if parent not in out or lsn < out[parent][0]:
                    out[parent] = (lsn, int(name[:8], 16))
    return out


def last_transaction(
    archive: ArchiveReader,
    tli: int,
    run: list[int],
    seg_size: int,
    bindir: Path,
    before_lsn: int | None = None,
    floor: int | None = None,
) -> tuple[datetime, str] | None:
    """Time and LSN of the last commit/abort in the run (pg_waldump), before `before_lsn` when
    given (where a later timeline branched off), reading segments from the end back to `floor`
    (the base backup's last one: an earlier transaction cannot end its window). It stops at the
    first segment with one, so it reads one or two segments unless the archive ends in a
    stretch without transactions (a long bulk load or index build, uncommitted yet): a fixed
    look-back then found nothing and refused every time target as 'after the window'."""
    with tempfile.TemporaryDirectory(prefix="klb-waldump-") as tmp:
        for segno in reversed([n for n in run if floor is None or n >= floor]):
            name = segment_name(tli, segno, seg_size)
            path = Path(tmp) / name
            archive.fetch(name, path)
            # pg_waldump exits 1 at the end of a switched/zero-filled segment: read what it printed.
            out = proc.run(
                [str(bindir / "pg_waldump"), "--rmgr=Transaction", str(path)],
                env={"TZ": "UTC"},
                timeout=120,
                ok_codes=(0, 1),
            )
            path.unlink()
            found = [
                (lsn, ts)
                for lsn, ts in _XACT.findall(out)
                if before_lsn is None or parse_lsn(lsn) < before_lsn
            ]
            if found:
                lsn, ts = found[-1]
                return datetime.fromisoformat(ts).replace(tzinfo=UTC), lsn
    return None


def archive_report(
    engine: PitrEngine, target: PitrTarget, backups: list[Manifest], seg_size: int, bindir: Path
) -> ArchiveReport:
    # one reader for the plan: the listing, history files and the last segments for pg_waldump
    with engine.reader(target) as archive:
        return _report(archive, engine.name, target, backups, seg_size, bindir)


def _report(
    archive: ArchiveReader,
    engine: str,
    target: PitrTarget,
    backups: list[Manifest],
    seg_size: int,
    bindir: Path,
) -> ArchiveReport:
    wal = archive.names
    segments = [w for w in wal if is_segment(w)]
    refs = base_backup_refs(backups, target)
    runs, missing = _runs(segments, seg_size) if segments else ({}, [])
    branches = branch_points(archive, wal)
    windows: list[Window] = []
    for tli, tli_runs in runs.items():
        branch_lsn, child = branches.get(tli, (None, None))
        for run in tli_runs:
            if branch_lsn is not None:  # past the branch this timeline's WAL is an abandoned history
                run = [n for n in run if n <= segment_of(branch_lsn, seg_size)]
                if not run:
                    continue
            lo, hi = run[0], run[-1]
            usable = [
                r
                for r in refs
                if r.timeline == tli
                and lo <= segment_of(parse_lsn(r.stop_lsn), seg_size) <= hi
                and (branch_lsn is None or parse_lsn(r.stop_lsn) <= branch_lsn)
            ]
            if not usable:
                continue
            floor = segment_of(parse_lsn(usable[0].stop_lsn), seg_size)
            last = last_transaction(archive, tli, run, seg_size, bindir, branch_lsn, floor)
            end_time, xact_lsn = last if last else (None, None)
            if end_time is not None and end_time <= usable[0].end_time:
                end_time = None  # nothing committed after the base backup: only 'latest' applies
            end_lsn = (hi + 1) * seg_size if branch_lsn is None else min((hi + 1) * seg_size, branch_lsn)
            windows.append(
                Window(
                    timeline=tli,
                    start_time=usable[0].end_time,
                    start_lsn=usable[0].stop_lsn,
                    end_time=end_time,
                    end_lsn=format_lsn(end_lsn),
                    last_xact_lsn=xact_lsn,
                    first_segment=segment_name(tli, lo, seg_size),
                    last_segment=segment_name(tli, hi, seg_size),
                    segments=len(run),
                    base_backups=usable,
                    branched_to=child,
                )
            )
    windows.sort(key=lambda w: w.start_time)
    return ArchiveReport(
        engine=engine,
        archive=target.archive_url,
        server_name=target.server_name,
        wal_files=len(wal),
        last_archived_segment=max(segments, key=lambda s: segment_number(s, seg_size)) if segments else None,
        missing_segments=missing,
        windows=windows,
        checked_at=datetime.now(UTC),
    )


def choose_base_backup(report: ArchiveReport, goal: RecoveryTarget) -> tuple[Window, BaseBackupRef]:
    """The newest base backup from which `goal` is reachable, or BadInput stating the window."""
    if not report.windows:
        raise NotFound(
            f"no recoverable window in {report.archive} ({report.server_name}): take a base backup "
            "(backup_component('postgres-pitr')) and check archiving (check_wal_archive)"
        )
    gaps = f"; missing WAL segments: {', '.join(report.missing_segments)}" if report.missing_segments else ""
    where = f"the recoverable window is {report.describe()}{gaps}"
    if goal.kind in ("latest", "name"):
        window = report.windows[-1]
        if goal.kind == "latest" and window.branched_to is not None:
            raise BadInput(
                f"the newest history is on timeline {window.branched_to}, which branched off timeline "
                f"{window.timeline} at LSN {window.end_lsn} (a recovery or failover promoted a server "
                "that archives here), and no base backup on it is in a window: recovering timeline "
                f"{window.timeline} to its end would bring back the abandoned history. Take a base "
                "backup (backup_component('postgres-pitr')) and recover from it, or give a target "
                f"before the branch: {where}. Nothing was changed."
            )
        if goal.kind == "name" and window.branched_to is not None:
            # where the restore point is is known only once replay meets it: past the branch that
            # is the abandoned history, and recovery (on the base backup's timeline) would stop there
            raise BadInput(
                f"restore point {goal.name!r} cannot be placed before recovery, and timeline "
                f"{window.branched_to} branched off timeline {window.timeline} at LSN {window.end_lsn}: "
                "a restore point past it is in the abandoned history, which recovery would bring back. "
                "Give its LSN (what pg_create_restore_point returned) as target_lsn, or a target_time, "
                f"before the branch; or take a base backup on timeline {window.branched_to} and recover "
                f"from it: {where}. Nothing was changed."
            )
        gap = [
            m for m in report.missing_segments if m[:8] == window.last_segment[:8] and m > window.last_segment
        ]
        if goal.kind == "latest" and gap:
            # recovery would stop at the gap and promote: the WAL archived after it silently lost
            raise BadInput(
                f"'latest' cannot be reached: WAL segment {gap[0]} is missing from the archive, so "
                f"recovery would stop at LSN {window.end_lsn} without the WAL archived after it. Put "
                "the segment back if a copy exists, or give a target time or LSN inside the window, or "
                f"take a base backup (backup_component('postgres-pitr')) and recover from it: {where}. "
                "Nothing was changed."
            )
        # a named restore point's LSN is unknown here: start from the earliest backup of the stretch
        return window, window.base_backups[-1] if goal.kind == "latest" else window.base_backups[0]
    for window in reversed(report.windows):
        if goal.kind == "time":
            assert goal.time is not None
            if goal.time < window.start_time:
                continue
            if window.end_time is None or goal.time >= window.end_time:
                if window is report.windows[-1]:
                    hint = (
                        "For the newest state use target 'latest'."
                        if window.branched_to is None
                        else f"Past the branch, take a base backup on timeline {window.branched_to} and "
                        "recover from it."
                    )
                    raise BadInput(
                        f"target {goal.describe()} is after the last archived transaction: {where}. "
                        f"{hint} Nothing was changed."
                    )
                continue
            ok = [b for b in window.base_backups if b.end_time <= goal.time]
        else:
            lsn, last = parse_lsn(goal.lsn or ""), window.last_target_lsn()
            if last is None or not parse_lsn(window.start_lsn) <= lsn <= last:
                continue
            ok = [b for b in window.base_backups if parse_lsn(b.stop_lsn) <= lsn]
        if ok:
            return window, ok[-1]
    raise BadInput(
        f"target {goal.describe()} is outside the recoverable window: {where}. Nothing was changed."
    )
