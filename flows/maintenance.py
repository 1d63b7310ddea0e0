"""Maintenance: integrity sweeps (primary and DR stores) and retention."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.store import StoreBlock
from flows.common import StoreRef, TargetBlock, load_store
from flows.inputs import MAX_HOURS, component_names, count, number, per_component
from flows.locks import component_lock
from tasks.components.registry import ComponentName
from tasks.errors import BadInput, ComponentFailed, IntegrityError, TransientError
from tasks.metrics import record_run
from tasks.models import Manifest
from tasks.notify import Severity, notify
from tasks.operations.engine_expiry import hold_kept_backups
from tasks.operations.recovery import check_recovery_point, scan_recovery_points
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.health import damaged_ids, is_damage, mark_damaged, mark_verified
from tasks.storage.index import list_component
from tasks.storage.layout import layout
from tasks.storage.leftovers import sweep_incomplete_writes
from tasks.storage.records import refused_records
from tasks.storage.replicate import check_not_primary, dr_copy_problems, dr_only_problems, load_dr_store
from tasks.storage.retention import newest_recovery_point
from tasks.storage.retention_locks import hold_kept_locks, plan_component
from tasks.storage.retention_report import locks_markdown, plan_markdown
from tasks.storage.retention_types import RetentionPlan, RetentionPolicy
from tasks.storage.sweep import lock_sweep, objects_gone, sweep_choice, vanished
from tasks.verbs import check_target, verify_task


@flow(name="verify-backups")
def verify_backups(
    components: list[ComponentName] | None = None,
    newest: int = 1,
    store: StoreRef = None,
    dr_store: StoreRef = None,
    targets: dict[str, str | TargetBlock] | None = None,
) -> dict[str, Any]:
    """Integrity sweep: re-read the newest `newest` backups of each component in the primary store
    and in the DR store (`dr_store` or $KLB_DR_STORE, when set): sha256 of every object against its
    manifest, then the component's own check (kubernetes, volumes: Velero still holds the backup,
    Completed; without their target that backup fails the sweep). In the DR store, a backup that
    the primary has and the DR copy lacks (of the newest), or whose copy differs (any), fails.
    The newest `newest` recovery points of the primary are checked too (record intact, members
    there and sound), and (a sweep of every component) each drill, restore and full-cluster-restore
    record must read and, on a store with keys, be signed by one (a forged one fails the sweep,
    naming it). A backup whose only good copy is the DR store's (the primary's damaged, or lost
    within its retention) fails as `dr-only:<id>`, saying how to restore it from there.
    Every finding is recorded (storage/health.py): what `latest`, the catalog, retention and the
    drills see. Fails if any is bad.

    Args:
        components: The components to include (empty: every component).
        newest: How many of the newest backups (and recovery points) to re-read, at least 1.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
        dr_store: Name of the disaster-recovery copy's store block; empty: $KLB_DR_STORE, if set.
        targets: Component name -> name of its target block, for the components whose check asks
            their engine (kubernetes, volumes: Velero); empty: from the environment
            ($KLB_VELERO_TARGET, $KLB_VOLUMES_TARGET).
    """
    newest = count("newest", newest, 1)
    targets = per_component("targets", targets)
    names = component_names(components)
    logger = get_run_logger()
    stores: dict[str, StoreBlock] = {"primary": load_store(store)}
    dr = load_dr_store(dr_store)
    if dr is not None:
        check_not_primary(stores["primary"], dr)  # before anything is read or recorded
        stores["dr"] = dr
    results: dict[str, Any] = {}
    bad: list[str] = []
    failed_components: set[str] = set()
    checked: set[str] = set()  # components with backups: those get a verify outcome
    started = time.monotonic()

    def fail(where: str, what: str, error: str, component: str) -> None:
        logger.error("%s %s failed verification: %s", where, what, error)
        results[f"{where}:{what}"] = {"ok": False, "error": error}
        bad.append(f"{where}:{what}")
        failed_components.add(component)

    newest_primary: dict[str, list[Manifest]] = {}
    primary_ids: dict[str, set[str]] = {}  # components the primary could list: all its backup ids
    primary_all: dict[str, list[Manifest]] = {}  # and their manifests (each DR copy is compared)
    lock_gauges: dict[str, dict[str, float]] = {}
    for where, block in stores.items():
        for name in names:
            try:
                listing = list_component(block, name)
            except Exception as exc:  # a store that is gone must not hide the other one
                fail(where, name, f"cannot list {block.location}: {exc}", name)
                continue
            for key, why in listing.unreadable.items():
                fail(where, key, why, name)
            for backup_id, why in vanished(block, name, listing).items():
                fail(where, backup_id, why, name)
            try:
                on_problem = partial(fail, where, component=name)
                gauges = lock_sweep(block, where, name, listing.manifests, on_problem)
                lock_gauges.setdefault(name, {}).update(gauges)
            except Exception as exc:  # a sweep that cannot look must say so, not pass
                fail(where, name, f"object versions / locks unreadable in {block.location}: {exc}", name)
            chosen = sweep_choice(listing.manifests, newest)
            if where == "dr":  # a newer backup only the DR store has must not spare these a re-read
                wanted = {m.id for m in chosen} | {m.id for m in newest_primary.get(name, [])}
                chosen = [m for m in listing.manifests if m.id in wanted]
            if chosen:
                checked.add(name)
            for backup_id, why in objects_gone(listing).items():  # the chosen: found by their re-read
                if backup_id not in {m.id for m in chosen}:
                    mark_damaged(block, backup_id, why)  # 'latest', at-or-before, retention see it
                    fail(where, backup_id, why, name)
            reread: dict[str, Manifest] = {}
            for manifest in chosen:
                read_from = datetime.now(UTC)  # damage recorded after this is not disproved by this read
                try:
                    # the manifest itself is read again (never a cached copy, on a locked store
                    # the version first written), checked against its checksum and its folder
                    manifest = get_backup(block, manifest.id, name)
                    reread[manifest.id] = manifest
                    target = check_target(name, targets.get(name))  # before anything is read
                    results[f"{where}:{manifest.id}"] = {"ok": True, **verify_task(manifest, block, target)}
                    mark_verified(block, manifest.id, read_from)
                except Exception as exc:
                    if is_damage(exc):  # e.g. the component's own check found it
                        mark_damaged(block, manifest.id, str(exc))
                    fail(where, manifest.id, str(exc), name)
            as_read = [reread.get(m.id, m) for m in (chosen if where == "primary" else listing.manifests)]
            if where == "primary":
                newest_primary[name], primary_ids[name] = as_read, {m.id for m in listing.manifests}
                primary_all[name] = listing.manifests
            else:  # the DR store must hold what the primary's newest are, identically; and every
                # copy it holds of an older one must be that backup (both listings are at hand)
                held = {m.id for m in as_read}
                newest_ids = {m.id for m in newest_primary.get(name, [])}
                older = [m for m in primary_all.get(name, []) if m.id in held and m.id not in newest_ids]
                compared = [*newest_primary.get(name, []), *older]
                for backup_id, why in dr_copy_problems(compared, as_read).items():
                    if backup_id in held:  # a copy that is not the primary's backup: recorded,
                        mark_damaged(block, backup_id, why)  # so DR's latest/retention never trust it
                    fail(where, backup_id, why, name)
                if name in primary_ids:  # and what only the DR store still holds good is said
                    good = [m for m in as_read if results.get(f"dr:{m.id}", {}).get("ok", True)]
                    read = {m.id for m in good if m.id in reread}
                    lost = damaged_ids(stores["primary"], name)
                    for backup_id, why in dr_only_problems(primary_ids[name], lost, good, read).items():
                        fail("dr-only", backup_id, why, name)
        if where == "primary" and components is None:
            # drill, restore and full-cluster-restore records that are unreadable or that no key
            # of the store signed (forged): left out of every listing, and named here
            for key, why in refused_records(block).items():
                fail(where, key, why, "records")
            points, damaged_points = scan_recovery_points(block)
            for rp_id, why in damaged_points.items():
                fail(where, rp_id, why, "recovery-point")
            for rp in points[-newest:]:
                try:
                    check_recovery_point(block, rp)
                    results[f"{where}:{rp.id}"] = {"ok": True, "members": len(rp.members)}
                except Exception as exc:
                    fail(where, rp.id, str(exc), "recovery-point")
    rows = "".join(
        f"| {key} | {'ok' if r['ok'] else 'FAILED: ' + r['error']} |\n" for key, r in results.items()
    )
    create_markdown_artifact(
        key="verify-backups",
        markdown="# Integrity sweep\n\n"
        + "".join(f"- {w}: {b.location}\n" for w, b in stores.items())
        + "\n| store:backup | result |\n|---|---|\n"
        + (rows or "| (none) | |\n"),
    )
    failed_components -= {"recovery-point", "records"}  # not components: their failures fail the run below
    for name in sorted(checked | failed_components):  # one outcome per component (BackupVerifyFailed)
        record_run(
            "verify", name, name not in failed_components, time.monotonic() - started, lock_gauges.get(name)
        )
    if bad:  # the reasons too: this message is what the Failed-run notification carries, as
        # one line of the project's own error type (a bare RuntimeError read as a crash, with a traceback)
        why = "; ".join(f"{k}: {results[k]['error'][:200]}" for k in dict.fromkeys(bad[:10]))
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise IntegrityError(
            f"{len(bad)} backup(s) failed verification: {', '.join(bad)}. Why: {why}{more}. "
            "Every result: the verify-backups artifact of this run"
        )
    return results


@task(task_run_name="delete-{what}", cache_policy=NO_CACHE)
def delete_keys_task(store: StoreBlock, keys: list[str], what: str) -> int:
    """Batched deletes (S3 DeleteObjects, 1,000 keys a call)."""
    if keys:
        backend_for(store).delete_keys(keys)
    return len(keys)


def _apply(block: StoreBlock, plan: RetentionPlan) -> int:
    """Manifests first (the backups stop existing at once) with their health records, then their
    objects, then orphans. Returns the keys deleted. The records go with the manifests: objects a
    crash leaves behind are then orphans the next run collects, never a verified backup's data
    whose manifest went missing (kept: storage/retention.py, rule 1)."""
    c = plan.component
    objects = [k for d in plan.deletions for k in d.keys[1:]]
    first = [d.keys[0] for d in plan.deletions]
    first += [k for d in plan.deletions for k in layout(block).health_keys(d.id)]
    deleted = delete_keys_task(block, first, f"{c}-manifests")
    deleted += delete_keys_task(block, objects, f"{c}-objects")
    return deleted + delete_keys_task(
        block, [k for o in plan.orphan_deletions for k in o.keys], f"{c}-orphans"
    )


@flow(name="enforce-retention")
def enforce_retention(
    dry_run: bool = True,
    store: StoreRef = None,
    components: list[ComponentName] | None = None,
    keep_last_good: int = 1,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    orphan_grace_hours: float = 24.0,
    special_retention_days: float | None = None,
    targets: dict[str, str | TargetBlock] | None = None,
) -> dict[str, Any]:
    """Delete backups past their retention (backup-table.yaml), never the newest good one,
    never fewer than `keep_last_good` good ones, never a member of the newest recovery point.
    Velero is told to keep those too: it expires a backup at its TTL whatever the catalog keeps.
    Dry run by default: the plan is the artifact `retention-plan`, with the leftovers of failed
    writes it would sweep. Objects with no manifest older than `orphan_grace_hours` (abandoned
    writes) are collected as a separate step. A backup the sweep (or a failed read) found damaged
    never counts as good. Safety and forensic backups are kept `special_retention_days` (default:
    the component's retention) and never protect older backups (docs/operations.md).

    Deletions of a component are planned again and applied holding its lock (flows/locks.py), as
    backups and restores do: never while a restore reads a backup that would go, nor while a
    backup writes objects that would look abandoned. A component whose lock stays held past
    $KLB_COMPONENT_LOCK_WAIT_SECONDS is left for the next run; the others are done, and the run
    fails naming it.

    On a versioned bucket a delete adds a delete marker: the data stays as a noncurrent
    version until the bucket's lifecycle rule expires it (docs/operations.md).

    Args:
        dry_run: True: only show what would be done; False: do it.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
        components: The components to include (empty: every component).
        keep_last_good: Always keep at least this many newest good backups per component (>= 1).
        keep_daily: Also keep the newest good backup of each of the last N days.
        keep_weekly: Also keep the newest good backup of each of the last N weeks.
        keep_monthly: Also keep the newest good backup of each of the last N months.
        orphan_grace_hours: Objects without a manifest younger than this are left alone (a backup
            may be writing them); at least 1.
        special_retention_days: How long safety and forensic backups are kept (empty: the
            component's retention).
        targets: Component name -> name of its target block, for the components whose engine
            expires backups itself (kubernetes, volumes: Velero); empty: from the environment
            ($KLB_VELERO_TARGET).
    """
    if not isinstance(keep_last_good, int) or isinstance(keep_last_good, bool) or keep_last_good < 1:
        raise BadInput("keep_last_good must be at least 1: the newest good backup is never deleted")
    for tier, value in (
        ("keep_daily", keep_daily),
        ("keep_weekly", keep_weekly),
        ("keep_monthly", keep_monthly),
    ):
        count(tier, value, 0)
    grace = number("orphan_grace_hours", orphan_grace_hours, 1, " (a write may still be running)")
    special = (
        None
        if special_retention_days is None
        else number("special_retention_days", special_retention_days, 0, maximum=MAX_HOURS / 24)
    )
    targets = per_component("targets", targets)
    logger = get_run_logger()
    block = load_store(store)
    now = datetime.now(UTC)
    names = component_names(components)
    listings = {name: list_component(block, name) for name in names}
    # the point 'latest' restores (the newest complete one) keeps its members; with none
    # complete, the newest by its members' labels (a backup-all still running, say)
    complete = [p.id for p in scan_recovery_points(block)[0] if p.complete]
    labelled = newest_recovery_point(m for lst in listings.values() for m in lst.manifests)
    rp = complete[-1] if complete else labelled
    policies = {
        name: RetentionPolicy.from_table(
            name,
            keep_last_good=keep_last_good,
            keep_daily=keep_daily,
            keep_weekly=keep_weekly,
            keep_monthly=keep_monthly,
            orphan_grace=timedelta(hours=grace),
            special_retention=None if special is None else timedelta(days=special),
        )
        for name in names
    }
    left_alone: dict[str, list[str]] = {}
    plans: dict[str, RetentionPlan] = {}
    for name, listing in listings.items():
        plans[name], left_alone[name] = plan_component(block, policies[name], listing, now, rp)
        for backup_id, gone in plans[name].missing.items():  # recorded: 'latest' must not pick it
            mark_damaged(block, backup_id, f"objects missing from {block.location}: {', '.join(gone)}")
    incomplete = {n: sweep_incomplete_writes(block, n, timedelta(hours=grace), dry_run=True) for n in names}
    busy: dict[str, str] = {}
    if not dry_run:
        deleted, swept = 0, []
        for name, plan in plans.items():
            if not (plan.deletions or plan.orphan_deletions or incomplete[name]):
                continue
            try:
                # never while a restore reads a backup that would go, nor while a backup writes
                # objects that would look abandoned: planned again under the component's lock
                with component_lock(name):
                    listing = list_component(block, name)
                    plans[name], left_alone[name] = plan_component(
                        block, policies[name], listing, datetime.now(UTC), rp
                    )
                    deleted += _apply(block, plans[name])
                    # what the plan cannot see: open multipart uploads and partial files of dead writers
                    swept += sweep_incomplete_writes(block, name, timedelta(hours=grace))
            except TransientError as exc:  # held past the wait: left for the next run, said so
                logger.warning("retention of %s left for the next run: %s", name, exc)
                busy[name] = str(exc)
        summary_extra: dict[str, Any] = {"keys_deleted": deleted, "incomplete_writes_removed": swept}
        logger.info("retention deleted %d keys from %s", deleted, block.location)
    else:
        summary_extra = {"incomplete_writes_would_remove": [k for keys in incomplete.values() for k in keys]}
    # backups kept past their window must outlive Velero's TTL too; a failure fails the run below
    kept = {n: lst.manifests for n, lst in listings.items()}
    held, unheld = hold_kept_backups(plans, kept, targets, dry_run)
    locked, unlocked = hold_kept_locks(block, plans, kept, dry_run)  # and S3 Object Lock to keep them
    unheld = "; ".join(u for u in (unheld, unlocked) if u)
    summary: dict[str, Any] = {"dry_run": dry_run, "recovery_point": rp, "components": {}}
    for name, plan in plans.items():
        done = [] if name in busy else [d.id for d in plan.deletions]
        summary["components"][name] = {
            **plan.counts(),
            "deleted" if not dry_run else "would_delete": done,
            "orphans": [] if name in busy else [o.backup_dir for o in plan.orphan_deletions],
            "unreadable_left_alone": left_alone[name],
            "locked": {
                d.id: "legal hold" if d.legal_hold else d.locked_until.isoformat()
                for d in plan.decisions
                if d.locked_until or d.legal_hold
            },
            **({"busy": busy[name]} if name in busy else {}),
            **({"engine_hold": held[name]} if held.get(name) else {}),
            **({"object_lock_hold": locked[name]} if locked.get(name) else {}),
        }
    summary |= summary_extra
    damaged = {c: dirs for c, dirs in left_alone.items() if dirs}
    if damaged:  # nothing fails, but someone must look (P2); the sweep reports them too
        notify(
            Severity.P2,
            f"retention left {sum(map(len, damaged.values()))} backup(s) with unreadable manifests",
            "\n".join(f"{c}: {', '.join(d)}" for c, d in damaged.items()),
        )
    create_markdown_artifact(
        key="retention-plan",
        markdown=plan_markdown(list(plans.values()), dry_run, incomplete=incomplete)
        + locks_markdown(list(plans.values()))
        + "".join(f"\n**{c}: nothing deleted, left for the next run**: {why}\n" for c, why in busy.items()),
        description=f"retention of {block.location}",
    )
    if unheld:  # the rest is done; Velero or anyone could delete what retention keeps: someone must act
        notify(Severity.P1, "retention could not hold (Velero, object lock) the backups it keeps", unheld)
        raise ComponentFailed(unheld)
    if busy:  # the rest is done; these components wait for the next run, and the run says so
        raise TransientError(
            f"retention of {', '.join(busy)} was left for the next run: {'; '.join(busy.values())}"
        )
    return summary
