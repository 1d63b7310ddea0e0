"""Retention under S3 Object Lock: a backup (or leftover) whose objects are still locked is kept,
with the date it may go (or, under a legal hold, until the hold is lifted); the plan's report
(storage/retention_report.py) says so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tasks.storage.retention import Action, Decision, OrphanDecision, RetentionPlan


def _kept(item: Decision | OrphanDecision, lock: tuple[str, datetime | None]) -> dict[str, Any]:
    mode, until = lock
    if until is None:  # a legal hold: no date, an operator placed it on purpose
        note = f"; {mode} on it: kept until someone lifts it"
    else:
        note = f"; object lock {mode} until {until:%Y-%m-%d %H:%M}Z: kept until then"
    update = {"action": Action.keep, "locked_until": until, "legal_hold": until is None}
    return update | {"reason": item.reason + note}


def apply_locks(plan: RetentionPlan, locks: dict[str, tuple[str, datetime | None]]) -> RetentionPlan:
    """Keep every deletion whose objects are still locked or under a legal hold: never attempt a
    delete before the retain-until or while held (on a versioned bucket it would only add delete
    markers and hide a backup that still exists). `locks`: backup id or orphan folder -> (mode,
    retain-until; None for a legal hold), from storage/object_lock.py."""
    decisions = [
        d.model_copy(update={**_kept(d, locks[d.id]), "keys": []})
        if d.action == Action.delete and d.id in locks
        else d
        for d in plan.decisions
    ]
    orphans = [
        o.model_copy(update=_kept(o, locks[o.backup_dir]))
        if o.action == Action.delete and o.backup_dir in locks
        else o
        for o in plan.orphans
    ]
    return plan.model_copy(update={"decisions": decisions, "orphans": orphans})
