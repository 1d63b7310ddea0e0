"""Retention under S3 Object Lock: a backup (or leftover) whose objects are still locked is kept,
with the date it may go (or, under a legal hold, until the hold is lifted); the plan's report
(storage/retention_report.py) says so. And the backups retention keeps past their window stay
locked a retention window past each run (`hold_kept_locks`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from blocks.store import StoreBlock
from tasks.models import Manifest
from tasks.storage import object_lock
from tasks.storage.backends import backend_for
from tasks.storage.health import Status, health_of
from tasks.storage.index import ComponentListing
from tasks.storage.layout import backup_dir_of, layout, split_component_key
from tasks.storage.retention import plan_retention
from tasks.storage.retention_types import Action, Decision, OrphanDecision, RetentionPlan, RetentionPolicy

log = logging.getLogger(__name__)


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


def _special_kept(
    store: StoreBlock, plan: RetentionPlan, manifests: list[Manifest]
) -> list[tuple[list[Manifest], datetime]]:
    """Safety and forensic backups the plan keeps for a `special_retention` longer than the
    component's retention, each with the end of that window (+ margin): the lock their write gave
    them (the retention + margin) would otherwise run out while retention still keeps them."""
    special = plan.policy.special_retention
    if special is None or special <= plan.policy.retention:
        return []
    keeping = {d.id for d in plan.decisions if d.action == Action.keep}
    out: list[tuple[list[Manifest], datetime]] = []
    for m in manifests:
        if m.routine or m.id not in keeping or not m.objects:
            continue
        until = object_lock.lock_until(store, m.source_time + special)
        if until is not None and until > plan.now:  # a lock is only lengthened, never shortened
            out.append(([m], until))
    return out


def hold_kept_locks(
    store: StoreBlock, plans: dict[str, RetentionPlan], manifests: dict[str, list[Manifest]], dry_run: bool
) -> tuple[dict[str, dict[str, str]], str]:
    """On a store that locks: the backups a plan keeps whatever their age (`Decision.protected`:
    the newest good, each part's holder, the newest recovery point's members, GFS picks) are
    locked until a retention window (+ the store's margin) past the run; the safety and forensic
    backups it keeps for a `special_retention` longer than the retention, to that window's end.
    Their own lock ended with their window; without this the backup retention promises never to
    delete could be deleted for good by anyone with the worker's credentials once backups stop.
    -> (component
    -> backup id -> until when, or would be in a dry run; what failed, "" when nothing)."""
    held: dict[str, dict[str, str]] = {}
    failed: list[str] = []
    if not object_lock.lock_mode(store):
        return held, ""
    backend = backend_for(store)
    for name, plan in plans.items():
        kept = [m for m in plan.protected(manifests.get(name, [])) if m.objects]
        until = object_lock.lock_until(store, plan.now + plan.policy.retention)
        if until is None:
            continue
        # each group of backups with the date it must stay locked to
        groups = [(kept, until)] if kept else []
        groups += _special_kept(store, plan, manifests.get(name, []))
        if not groups:
            continue
        try:
            if not dry_run:
                for group, group_until in groups:
                    object_lock.extend_locks(store, backend, group, group_until, plan.now)
        except Exception as exc:  # one component's failure must not spare the others their lock
            log.error("%s: backups kept past their window stay unlocked: %s", name, exc)
            failed.append(f"{name}: {exc}")
            continue
        word = "would lock" if dry_run else "locked"
        held[name] = {
            m.id: f"{word} until at least {group_until:%Y-%m-%dT%H:%M:%SZ}"
            for group, group_until in groups
            for m in group
        }
    if not failed:
        return held, ""
    return held, (
        "backups retention keeps past their window could not be locked again (anyone with the "
        "worker's credentials can delete them): " + "; ".join(failed) + ". Fix the cause (the "
        "worker needs s3:PutObjectRetention on the bucket), then run enforce-retention again"
    )


def _locks(
    block: StoreBlock, plan: RetentionPlan, manifests: list[Manifest], now: datetime
) -> dict[str, tuple[str, datetime | None]]:
    """Deletions that S3 Object Lock (a retain-until or a legal hold) still holds: one HEAD per
    key of each candidate, and for the objects a manifest pinned, of the pinned version (an
    overwrite on top is not the backup)."""
    pinned = {o.key: o.version_id for m in manifests for o in m.objects}
    groups: dict[str, list] = {d.id: [(k, pinned.get(k)) for k in d.keys] for d in plan.deletions}
    groups |= {o.backup_dir: o.keys for o in plan.orphan_deletions}
    return object_lock.locked_until(backend_for(block), groups, now)


def plan_component(
    block: StoreBlock, policy: RetentionPolicy, listing: ComponentListing, now: datetime, rp: str | None
) -> tuple[RetentionPlan, list[str]]:
    """One component's retention plan, with what Object Lock still holds kept (apply_locks), and
    the folders left alone as unreadable."""
    name = policy.component
    known = health_of(block, name)
    # a backup whose manifest is unreadable is evidence for the sweep, not an orphan to collect;
    # a manifest.json higher up (a component's or day's folder) holds no backup's objects
    folder = layout(block).component_dir(name)
    bad_dirs = {backup_dir_of(k) + "/" for k in listing.unreadable if split_component_key(k, folder)}
    keys = [k for k in listing.keys if not any(k.startswith(d) for d in bad_dirs)]
    plan = plan_retention(
        listing.manifests,
        policy,
        now,
        keys=keys,
        prefix=layout(block).component_dir(name),
        damaged=[i for i, h in known.items() if h.status == Status.damaged],
        verified=[i for i, h in known.items() if h.status == Status.verified],
        recovery_point=rp,
    )
    return apply_locks(plan, _locks(block, plan, listing.manifests, now)), sorted(bad_dirs)
