"""Retention planning: manifests + policy + now -> keep or delete, with a reason for each.

Pure: no I/O here (flows/maintenance.py lists, plans, then deletes). The rules, in order:

1. a backup with no manifest is in flight or abandoned: it is invisible to the plan; its objects
   are "orphans", left alone while younger than `orphan_grace`, collected after (a separate step);
   never those of a backup a sweep verified (its manifest was deleted since: they are its data);
2. the newest `keep_last_good` good backups are kept whatever their age: retention by age alone
   can delete the last good backup. Good = routine (scheduled or on-demand), verified (when
   written or by the sweep) and not known damaged (storage/health.py): a damaged backup never
   counts as good, so it never protects, nor displaces, the good one before it. Nor does one
   whose source time is in the future (a skewed clock): `latest` never picks it, so it must not
   stand in for the backup `latest` does pick; it is kept (its age is negative) and says why.
   Nor does one whose objects the listing lacks (deleted behind its manifest's back). With no
   good backup at all, the newest routine one not known damaged is kept in its place. And the
   newest good backup holding each part (a database, an app-state step, a vhost, a Kubernetes
   namespace) is kept, so a narrower newer backup never costs the other parts their last copy;
3. members of the newest recovery point are kept (labels["recovery_point"]);
4. everything within the retention window is kept; for point-in-time recovery (base backups
   plus WAL) also the newest good base backup before the window: recovery to a time early in
   the window starts from it (barman's and pgBackRest's recovery-window retention);
5. GFS tiers (optional): the newest good backup of each of the last N days / ISO weeks / months;
6. everything else is deleted.

Safety backups (taken before a restore) and forensic ones (before a DR scenario) have their own
rule: kept for `special_retention` (default: the component's retention), then deleted. They are
never one of the good backups of rule 2 nor a GFS pick, so they can neither protect older
routine backups nor push one out. Velero-backed components keep their Velero side: Velero deletes
   the backup through its own TTL; we remove only our catalog copy, once past `expires_at`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from tasks.errors import BadInput
from tasks.ids import parse_backup_id
from tasks.models import Manifest
from tasks.storage.catalog import from_the_future
from tasks.storage.layout import (
    backup_dir_of,
    is_manifest_key,
    manifest_key_beside,
    split_component_key,
)
from tasks.storage.retention_parts import last_holders
from tasks.storage.retention_types import Action, Decision, OrphanDecision, RetentionPlan, RetentionPolicy

RECOVERY_POINT_LABEL = "recovery_point"


def is_good(
    manifest: Manifest,
    damaged: frozenset[str] | set[str] = frozenset(),
    verified: frozenset[str] | set[str] = frozenset(),
    now: datetime | None = None,
) -> bool:
    """Good = a routine backup, read back and checked (when written, or by a sweep since), not
    found damaged since, and not from the future (the backups `latest` may pick). Safety and
    forensic backups are never the good one."""
    checked = manifest.verified_at is not None or manifest.id in verified
    return manifest.routine and checked and manifest.id not in damaged and not from_the_future(manifest, now)


def newest_recovery_point(manifests: Iterable[Manifest]) -> str | None:
    """The recovery point whose newest member is newest (ties: the greater id)."""
    newest: dict[str, datetime] = {}
    for m in manifests:
        rp = m.labels.get(RECOVERY_POINT_LABEL)
        if rp:
            newest[rp] = max(newest.get(rp, m.source_time), m.source_time)
    if not newest:
        return None
    return max(newest, key=lambda rp: (newest[rp], rp))


def _gfs_keep(good: list[Manifest], count: int, bucket_of) -> set[str]:
    """Newest good backup of each of the newest `count` buckets (days, weeks, months)."""
    kept: set[str] = set()
    seen: set[object] = set()
    for m in reversed(good):  # newest first
        if len(seen) >= count:
            break
        bucket = bucket_of(m.source_time.astimezone(UTC))
        if bucket not in seen:
            seen.add(bucket)
            kept.add(m.id)
    return kept


def plan_retention(
    manifests: Iterable[Manifest],
    policy: RetentionPolicy,
    now: datetime,
    *,
    keys: Iterable[str] = (),
    prefix: str = "",
    damaged: Iterable[str] = (),
    verified: Iterable[str] = (),
    recovery_point: str | None = None,
) -> RetentionPlan:
    """Decide every backup of one component. `keys` (every stored key under the component's
    folder) lets the plan delete all of a backup's objects and find orphans; `prefix` is the
    component's folder (`<store prefix>/<component>`). `recovery_point` protects that recovery
    point; default: the newest one among these manifests."""
    if now.tzinfo is None:
        raise BadInput("`now` needs a time zone")
    ordered = sorted(manifests, key=lambda m: (m.source_time, m.id))
    for m in ordered:
        if m.component != policy.component:
            raise BadInput(f"backup {m.id} is a {m.component} backup, not {policy.component}")
    if recovery_point is None:
        recovery_point = newest_recovery_point(ordered)
    by_dir = _group_keys(keys, prefix)
    # with the listing at hand (`prefix`), a backup whose objects are gone is known damaged
    missing = {m.id: gone for m in ordered if prefix and (gone := _missing_objects(m, by_dir.get(m.id)))}
    damaged_ids = frozenset(damaged) | missing.keys()
    verified_ids = frozenset(verified) - damaged_ids

    good = [m for m in ordered if is_good(m, damaged_ids, verified_ids, now)]
    special = policy.special_retention or policy.retention
    last_good = {m.id for m in good[-policy.keep_last_good :]}
    holders = last_holders(good)
    # no good backup at all (none verified yet, say): the newest that may be one stays, so
    # retention alone can never leave a component with nothing to restore: the newest not known
    # damaged, else the newest whose objects are all there (a damage record, unsigned, may be
    # forged, or the damage partial: a record alone never deletes every last copy)
    candidates = [m for m in ordered if m.routine and m.id not in missing and not from_the_future(m, now)]
    candidates = [m for m in candidates if m.id not in damaged_ids] or candidates
    fallback = candidates[-1].id if not good and candidates else None
    tiers = {
        "daily": _gfs_keep(good, policy.keep_daily, lambda t: t.date()),
        "weekly": _gfs_keep(good, policy.keep_weekly, lambda t: t.isocalendar()[:2]),
        "monthly": _gfs_keep(good, policy.keep_monthly, lambda t: (t.year, t.month)),
    }

    # PITR: a time early in the window is reached from the last base backup before it
    before = [m for m in good if now - m.source_time > policy.retention] if policy.recovery_window else []
    window_base = before[-1].id if before else None
    velero = policy.velero_owned
    decisions: list[Decision] = []
    for m in ordered:
        age = now - m.source_time
        good_m = is_good(m, damaged_ids, verified_ids, now)
        if from_the_future(m, now):
            action = Action.keep
            reason = "source time in the future (clock skew?): kept, never counted as the good backup"
        elif not m.routine:  # safety / forensic: their own window, nothing else keeps them
            if age <= special:
                action, reason = Action.keep, f"{m.kind} backup within its retention ({_days(age)})"
            else:
                action, reason = Action.delete, f"{m.kind} backup past its retention ({_days(age)})"
        elif m.id in last_good:
            reason = f"one of the newest {policy.keep_last_good} good backup(s): never deleted"
            action = Action.keep
        elif m.id in holders:
            action = Action.keep
            reason = f"the newest good backup of {', '.join(holders[m.id][:3])}: never deleted"
        elif m.id == fallback:
            action = Action.keep
            reason = (
                "no good (verified) backup: the newest whose objects are all there is kept until one is"
                + (
                    " (it is recorded damaged: restore it only by id, after checking it)"
                    if m.id in damaged_ids
                    else ""
                )
            )
        elif recovery_point and m.labels.get(RECOVERY_POINT_LABEL) == recovery_point:
            action, reason = Action.keep, f"member of the newest recovery point {recovery_point}"
        elif age <= policy.retention:
            action, reason = Action.keep, f"within retention ({_days(age)} <= {_days(policy.retention)})"
        elif m.id == window_base:
            action = Action.keep
            reason = (
                f"the base backup that recovery to the start of the {_days(policy.retention)} window "
                "replays WAL from (the newest good one before it)"
            )
        elif tier := next((name for name, ids in tiers.items() if m.id in ids), None):
            action, reason = Action.keep, f"GFS {tier} tier"
        elif velero and m.expires_at is not None and now < m.expires_at:
            action, reason = Action.keep, "Velero TTL not reached yet: the catalog follows Velero"
        else:
            action = Action.delete
            reason = f"past retention ({_days(age)} > {_days(policy.retention)})"
            if m.id in missing:
                reason += f", objects missing ({', '.join(missing[m.id][:3])})"
            elif m.id in damaged_ids:
                reason += ", found damaged"
            elif not good_m:
                reason += ", not a good backup"
            if velero:
                reason += "; Velero's copy expires by its TTL (catalog entry only)"
        protected = m.routine and (
            m.id in last_good
            or m.id in holders
            or m.id == fallback
            or m.id == window_base
            or bool(recovery_point and m.labels.get(RECOVERY_POINT_LABEL) == recovery_point)
            or any(m.id in ids for ids in tiers.values())
        )
        decisions.append(
            Decision(
                id=m.id,
                source_time=m.source_time,
                kind=m.kind.value,
                good=good_m,
                action=action,
                reason=reason,
                protected=action == Action.keep and protected,
                keys=_backup_keys(m, by_dir.pop(m.id, None)) if action == Action.delete else [],
            )
        )
        by_dir.pop(m.id, None)

    orphans = [
        _orphan(backup_id, dir_keys, policy, now, backup_id in verified_ids)
        for backup_id, dir_keys in sorted(by_dir.items())
    ]
    return RetentionPlan(
        component=policy.component,
        now=now,
        policy=policy,
        recovery_point=recovery_point,
        decisions=decisions,
        orphans=orphans,
        missing=missing,
    )


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f}d"


def _group_keys(keys: Iterable[str], prefix: str) -> dict[str, list[str]]:
    """Stored keys by backup id: `<prefix>/<YYYY-MM-DD>/<backup-id>/<name>`. Keys of any other
    shape are not ours to judge: they are left out (and so left alone)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = split_component_key(key, prefix)
        if parts is not None:
            groups.setdefault(parts[1], []).append(key)
    return groups


def _missing_objects(m: Manifest, listed: list[str] | None) -> list[str]:
    """Objects of `m` the listing lacks. The listing (index.list_component) holds the keys whose
    pinned version outlives a delete marker on top; a pinned version that is gone too (purged,
    expired by a lifecycle rule) is missing like any other: a backup without its data is no
    good backup to keep in place of older ones."""
    there = set(listed or ())
    return [o.name for o in m.objects if o.key not in there]


def _backup_keys(m: Manifest, listed: list[str] | None) -> list[str]:
    """Manifest first: once it is gone the backup no longer exists; objects left by a crash
    after that are orphans, collected later."""
    manifest_keys = [k for k in (listed or []) if is_manifest_key(k)]
    if not manifest_keys and m.objects:
        manifest_keys = [manifest_key_beside(m.objects[0].key)]
    rest = sorted(set(listed or []) | {o.key for o in m.objects})
    return manifest_keys + [k for k in rest if k not in manifest_keys]


def _orphan(
    backup_id: str, keys: list[str], policy: RetentionPolicy, now: datetime, verified: bool = False
) -> OrphanDecision:
    """`verified`: a sweep read this backup whole, so its manifest was deleted since (the
    sweep fails naming it) and these objects are its data, no abandoned write."""
    backup_dir = backup_dir_of(keys[0])
    try:
        _, started = parse_backup_id(backup_id)
    except BadInput:
        return OrphanDecision(
            backup_dir=backup_dir,
            keys=sorted(keys),
            started_at=None,
            action=Action.keep,
            reason="not a backup id: not ours to delete",
        )
    age = now - started
    if verified:  # its health records go if it was deleted on purpose: then collected
        action, reason = Action.keep, "a verified backup whose manifest is gone: restore the manifest"
    elif age < policy.orphan_grace:
        action, reason = Action.keep, f"no manifest yet, {_days(age)} old: may still be in flight"
    else:
        action, reason = Action.delete, f"no manifest, {_days(age)} old (grace {_days(policy.orphan_grace)})"
    return OrphanDecision(
        backup_dir=backup_dir, keys=sorted(keys), started_at=started, action=action, reason=reason
    )
