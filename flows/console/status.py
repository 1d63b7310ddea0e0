"""`klb status`: per component, is the newest good backup within its schedule interval, how big,
when verified, what the last drill proved (RTO/RPO; a drill that failed to restore it is a
problem), and what is not configured; a drill record that is unreadable or that no key of the
store signed is named (and makes the status unhealthy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from blocks.store import StoreBlock
from flows.console.fmt import age, ago, every, human_bytes, table
from flows.console.known import backups_of, known_state
from tasks.components.registry import SPECS, load_target
from tasks.errors import BackupError
from tasks.operations.drill_run import passed_for
from tasks.operations.drills import DrillRecord, list_drill_records
from tasks.operations.drills import Status as DrillStatus
from tasks.operations.scope import scope_gap
from tasks.storage.catalog import from_the_future
from tasks.storage.codec import key_id
from tasks.storage.keys import read_keys
from tasks.storage.layout import DRILLS
from tasks.storage.records import refused_records
from tasks.table import policy

# a scheduled backup takes time and a worker may start it late: overdue once it is this much later
GRACE = 0.25


@dataclass
class ComponentStatus:
    component: str
    interval: timedelta
    newest: str = "-"
    age_seconds: float | None = None
    size: int | None = None
    verified: str = "-"
    drill: str = "no drill recorded"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    configured: bool = True

    @property
    def state(self) -> str:
        if self.problems:
            return "; ".join(self.problems)
        return "ok" if self.configured or self.newest != "-" else "not configured"


def _configured(component: str) -> tuple[Any, str | None, str | None]:
    """(the default target, why no target is configured, why it could not be checked): the
    target (block/env) and (None, None) when it loads."""
    try:
        return load_target(component, None), None, None
    except BackupError as exc:
        return None, str(exc).splitlines()[0].split(". ")[0], None  # its first sentence: a summary
    except Exception as exc:  # e.g. the Prefect API that holds the named block does not answer
        return None, None, f"{type(exc).__name__}: {str(exc)[:120]}"


def _drill_line(component: str, drills: list[DrillRecord]) -> tuple[str, str | None]:
    """(the LAST DRILL cell, the problem when the newest drill that covered it FAILED)."""
    for rec in reversed(drills):  # the newest drill that covered this component
        for c in rec.components:
            if c.component == component and c.status != DrillStatus.not_covered:
                rto = age(c.rto_seconds)
                rpo = age(c.rpo_age_seconds)
                line = f"{c.status.value} {ago(rec.started_at)} (drill {rec.id}, RTO {rto}, RPO {rpo})"
                # its restore is not proven until a later drill passes for it: not 'ok'. As its
                # drill metrics say (passed_for): a failure of the whole drill (RTO over target,
                # a drill-wide health check) fails it too, though its own restore verified
                passed = passed_for(rec, component, rec.rto_target_minutes)
                return line, None if passed else f"DRILL FAILED (drill {rec.id})"
    return "no drill covered it", None


def component_status(
    store: StoreBlock, component: str, drills: list[DrillRecord], now: datetime
) -> ComponentStatus:
    pol = policy(component)
    st = ComponentStatus(component, pol.interval)
    backups, damaged = backups_of(store, component)
    states = {m.id: known_state(store, m) for m in backups}
    # damage found after the write (the sweep, a failed read) counts as much as an unreadable manifest
    damaged |= {m.id: states[m.id].detail for m in backups if states[m.id].status == "damaged"}
    # the newest good backup is one 'latest' would restore: routine, not from the future, not damaged
    usable = [m for m in backups if m.routine and not from_the_future(m, now)]
    good = [m for m in usable if m.id not in damaged]
    target, not_configured, unchecked = _configured(component)
    if target is not None:
        # the newest good backup is the newest that covers the whole target, as 'latest' for a
        # restore of the component is (tasks/operations/scope.py): a newer one-database or
        # one-namespace backup must not make a component whose full backups stopped look fresh
        try:
            gap = scope_gap(component, target)
        except BackupError as exc:  # a status report that cannot check scope still reports the rest
            st.notes.append(f"scope not checked: {exc}")
            gap = lambda m: None  # noqa: E731
        lacks = {m.id: gap(m) for m in good}
        narrower = [m for m in good if lacks[m.id]]
        good = [m for m in good if not lacks[m.id]]
        since = good[-1].source_time if good else None
        newer = [f"{m.id} {lacks[m.id]}" for m in narrower if since is None or m.source_time > since]
        if newer:
            st.notes.append(f"newer backups cover less than its target: {'; '.join(newer[-3:])}")
    st.configured = not not_configured
    if not_configured:
        st.notes.append(f"target not configured: {not_configured}")
    if unchecked:  # not "not configured": a target is named, and nobody can tell if it is right
        st.problems.append("UNKNOWN: its target could not be checked")
        st.notes.append(f"target could not be checked: {unchecked}")
    if good:
        newest = good[-1]
        known = states[newest.id]
        st.newest, st.size = newest.id, newest.size
        st.age_seconds = (now - newest.source_time).total_seconds()
        st.verified = f"{known.status} {ago(known.when, now)}" if known.when else known.status
        if st.age_seconds > pol.interval.total_seconds() * (1 + GRACE):
            st.problems.append(f"OVERDUE (every {every(pol.interval)})")
    elif not not_configured:
        whole = " of its whole target" if target is not None else ""
        st.problems.append(f"OVERDUE (no good backup{whole})")
    if damaged:
        st.problems.append(f"DAMAGED: {len(damaged)} backup(s) ({', '.join(sorted(damaged))})")
    st.drill, drill_failed = _drill_line(component, drills)
    if drill_failed:
        st.problems.append(drill_failed)
    return st


def status(store: StoreBlock, components: list[str] | None = None) -> tuple[str, bool]:
    """(report text, healthy)."""
    now = datetime.now(UTC)
    drills = list_drill_records(store)
    rows = [("COMPONENT", "EVERY", "NEWEST GOOD BACKUP", "AGE", "SIZE", "VERIFIED", "LAST DRILL", "STATE")]
    notes: list[str] = []
    healthy = True
    for name in components or list(SPECS):
        st = component_status(store, name, drills, now)
        healthy = healthy and not st.problems
        rows.append(
            (
                name,
                every(st.interval),
                st.newest,
                age(st.age_seconds),
                human_bytes(st.size) if st.size is not None else "-",
                st.verified,
                st.drill,
                st.state,
            )
        )
        notes += [f"{name}: {n}" for n in st.notes]
    lines = [table(rows)]
    ids = [key_id(k) for k in read_keys(store)]
    if ids:
        writes = f"writes with key {ids[0]}" if store.encryption_key else "writes unencrypted"
        lines.append(f"encryption: {writes}; reads keys {', '.join(ids)}")
    if drills:
        last = drills[-1]
        verdict = "PASSED" if last.passed else "FAILED: " + "; ".join(last.failures)[:200]
        lines.append(f"last drill: {last.id} {ago(last.started_at, now)}: {verdict}")
    # a drill record no key of the store signed (forged) is left out of the drills above: say so
    refused = refused_records(store, (DRILLS,))
    for key, why in refused.items():
        lines.append(f"REFUSED drill record {key}: {why}")
    lines += notes
    return "\n".join(lines), healthy and not refused
