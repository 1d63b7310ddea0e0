"""Retention under S3 Object Lock: a backup (or leftover) whose objects are still locked is kept,
with the date it may go, and the plan's report says so."""

from __future__ import annotations

from datetime import datetime

from tasks.storage.retention import Action, RetentionPlan


def apply_locks(plan: RetentionPlan, locks: dict[str, tuple[str, datetime]]) -> RetentionPlan:
    """Keep every deletion whose objects are still locked: never attempt a delete before the
    retain-until (it would only add delete markers and hide a backup that still exists).
    `locks`: backup id or orphan folder -> (mode, retain-until), from storage/object_lock.py."""

    def held(name: str, action: Action) -> tuple[str, datetime] | None:
        return locks.get(name) if action == Action.delete else None

    decisions = []
    for d in plan.decisions:
        if lock := held(d.id, d.action):
            d = d.model_copy(
                update={
                    "action": Action.keep,
                    "keys": [],
                    "locked_until": lock[1],
                    "reason": f"{d.reason}; object lock {lock[0]} until {lock[1]:%Y-%m-%d %H:%M}Z: "
                    "kept until then",
                }
            )
        decisions.append(d)
    orphans = []
    for o in plan.orphans:
        if lock := held(o.backup_dir, o.action):
            o = o.model_copy(
                update={
                    "action": Action.keep,
                    "locked_until": lock[1],
                    "reason": f"{o.reason}; object lock {lock[0]} until {lock[1]:%Y-%m-%d %H:%M}Z",
                }
            )
        orphans.append(o)
    return plan.model_copy(update={"decisions": decisions, "orphans": orphans})


def locks_markdown(plans: list[RetentionPlan]) -> str:
    """What retention left alone because it is locked, and until when (dry run and applied)."""
    rows = [
        f"| {p.component} | {d.id} | {d.locked_until:%Y-%m-%d %H:%M}Z |"
        for p in plans
        for d in p.decisions
        if d.locked_until
    ] + [
        f"| {p.component} | {o.backup_dir} (no manifest) | {o.locked_until:%Y-%m-%d %H:%M}Z |"
        for p in plans
        for o in p.orphans
        if o.locked_until
    ]
    if not rows:
        return ""
    head = [
        "",
        "## Past retention but locked (S3 Object Lock): not deleted",
        "",
        "| component | backup | locked until |",
    ]
    return "\n".join([*head, "|---|---|---|", *rows]) + "\n"
