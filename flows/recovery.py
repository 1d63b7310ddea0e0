"""Restores with the pre-restore checklist, their rollback, and restore plans (dry runs).

`restore_with_checklist` is the restore an SRE runs by hand: integrity and contents checked,
window enforced, people told, current state documented, a safety backup taken, an optional human
approval (a paused run whose form shows what is about to happen), then the component's own
restore. Each checklist line is published as soon as it is known (artifact `restore-checklist`)
and kept in the restore record (tasks/operations/restores.py; the checklist run:
restore_checklist.py). `rollback_restore` puts the safety backup back, as a restore of its own:
same checklist, its own safety backup, its own record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.states import Cancelled, State
from pydantic import AwareDatetime

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from flows.common import StoreRef, TargetBlock, TargetRef, load_store
from flows.inputs import component_names, object_names, per_component
from flows.locks import component_lock
from tasks.components.registry import ComponentName, load_target
from tasks.errors import BadInput
from tasks.ids import new_backup_id
from tasks.models import Manifest
from tasks.operations.approval import RestoreCancelled
from tasks.operations.checklist import Refused
from tasks.operations.plan import build_plan, plan_markdown
from tasks.operations.restore_checklist import run_checklist
from tasks.operations.restores import (
    RestoreRecord,
    finish,
    load_guard,
    load_restore_record,
    record_key_of,
    settle,
    settle_failure,
    target_digest,
)
from tasks.operations.rollback_checks import (
    check_rollback_allowed,
    check_still_rolled_back,
    decide_rollback,
    rollback_target,
)
from tasks.operations.scope import backup_and_target
from tasks.storage.records import put_record
from tasks.verbs import check_restore, restore_options, restore_task

__all__ = [
    "restore_plan",
    "restore_with_checklist",
    "rollback_restore",
    "load_restore_record",
    "RestoreRecord",
]


@flow(name="restore-plan")
def restore_plan(
    recovery_point: str | None = None,
    backup_id: str | None = None,
    components: list[ComponentName] | None = None,
    at: AwareDatetime | None = None,
    targets: dict[str, str | TargetBlock] | None = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """Dry run of a restore asked for any way: a recovery point ('latest' or an id), a backup id,
    backup_id='latest' with components, or the newest backups at or before `at`. Changes nothing.

    Args:
        recovery_point: 'latest' or a recovery point id (a set of backups taken together by
            backup-all); empty: see backup_id and at.
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3. With 'latest', name the components.
        components: The components to include (empty: every component).
        at: Plan from the newest backups taken at or before this time (with a timezone).
        targets: Component name -> name of its target block (from Python, block objects); empty:
            each component's default target.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
    """
    names = None if components is None else component_names(components)  # [] is a mistake
    targets = per_component("targets", targets)
    store_block = load_store(store)
    plan = build_plan(store_block, recovery_point, backup_id, names, targets, at)
    create_markdown_artifact(key="restore-plan", markdown=plan_markdown(plan), description="dry run")
    return plan.model_dump(mode="json")


def _checked_restore(
    record: RestoreRecord,
    manifest: Manifest,
    store: StoreBlock,
    target: Block,
    guard: RestoreGuard,
    checklist: dict[str, Any],
    options: dict[str, Any] | None,
    decide: Callable[[], tuple[Manifest, dict[str, Any]]] | None = None,
    then: Callable[[RestoreRecord], None] | None = None,
) -> RestoreRecord | State:
    """The checklist and the restore, both under the component's lock: a second restore of the
    component waits for this one to end before its own checklist, so its safety backup, its
    "there now" and its approval see what this one restored (with the lock taken only for the
    restore step, the second put its restore over the first, and its rollback point was the
    state before both). `decide()` (under the lock) makes the run's decisions again from what
    holds now (a rollback's: what to put back), refusing when it is moot, and returns the backup
    and options to restore; `then(record)`, still under the lock, follows a restore that ran
    (a rollback marks the restore it undid). The record is finished (stored, artifact, metrics)
    however it ends; a cancellation ends the run Cancelled."""
    # never while a backup or restore of it runs (nor of kubernetes, when it scales apps)
    with component_lock(record.component, options=record.options):
        if decide is not None:
            manifest, options = decide()
        outcome = _locked_restore(record, manifest, store, target, guard, checklist, options)
        if then is not None and isinstance(outcome, RestoreRecord):
            then(outcome)
        return outcome


def _locked_restore(
    record: RestoreRecord,
    manifest: Manifest,
    store: StoreBlock,
    target: Block,
    guard: RestoreGuard,
    checklist: dict[str, Any],
    options: dict[str, Any] | None,
) -> RestoreRecord | State:
    logger = get_run_logger()
    record.locked_at = datetime.now(UTC)  # the order of changes to the target (order_of)
    try:
        run_checklist(record, manifest, store, target, guard, **checklist)
    except Refused as exc:
        record.status, record.error = "refused", str(exc)
        finish(store, record)
        logger.error("%s refused by the checklist: %s", record.id, exc)
        raise
    except RestoreCancelled as exc:
        record.status, record.error = "cancelled", str(exc)
        finish(store, record)
        logger.warning("%s cancelled while waiting for approval; nothing was restored", record.id)
        return Cancelled(
            message=f"restore {record.id} cancelled while waiting for approval: nothing restored"
        )
    except Exception as exc:  # e.g. the Prefect API while pausing: the checklist changed nothing
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.target_changed = False
        finish(store, record)
        raise
    started = datetime.now(UTC)
    # stored before the target is touched: a run killed during the restore leaves a 'running'
    # record with its safety backup, which a rollback can act on (else no record at all)
    put_record(store, record_key_of(store, record.id), record)
    try:
        record.report = restore_task(manifest, target, store, options)
        settle(record)  # 'restored', or 'nothing restored' when it wrote nothing it could have
    except Exception as exc:
        settle_failure(record, exc)
        raise
    finally:
        record.finished_at = datetime.now(UTC)
        record.duration_seconds = (record.finished_at - started).total_seconds()
        finish(store, record)
    logger.info(
        "%s: %s from %s; safety backup %s", record.id, record.status, manifest.id, record.safety_backup_id
    )
    return record


def _new_record(
    component: str, manifest: Manifest, force: bool, target: Block, **extra: Any
) -> RestoreRecord:
    return RestoreRecord(
        id=new_backup_id("restore"),
        component=component,
        backup_id=manifest.id,
        size=manifest.raw_size,
        status="running",
        started_at=datetime.now(UTC),
        forced=force,
        target=getattr(target, "_block_document_name", None),
        target_digest=target_digest(target),
        **extra,
    )


@flow(name="restore-with-checklist")
def restore_with_checklist(
    component: ComponentName,
    backup_id: str = "latest",
    target: TargetRef = None,
    store: StoreRef = None,
    options: dict[str, Any] | None = None,
    guard: str | RestoreGuard | None = None,
    force: bool = False,
    required_objects: list[str] | None = None,
    require_approval: bool | None = None,
    without_rollback: bool = False,
) -> RestoreRecord:
    """Restore one component through the pre-restore checklist. Refuses (changing nothing) when
    an item fails; the safety backup is taken before anything is replaced. `without_rollback=True`
    lets a restore go ahead when the current state cannot be described or backed up (it is gone).
    Cancelling the run while it waits for approval ends it Cancelled, with a 'cancelled' record.

    Args:
        component: Which component: kubernetes, volumes, postgres, postgres-pitr, etcd, rabbitmq or
            app-state (backup-table.yaml lists them).
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
        options: Restore options of the component (its RestoreOptions fields, docs/components.md),
            e.g. {"namespaces": ["lambda"], "existing_resource_policy": "update"} for kubernetes.
            Unknown fields are refused.
        guard: Name of the klb-restore-guard block (maintenance window, notifications, approval);
            empty: no window, no notification, no approval.
        force: Go ahead outside the maintenance window (an emergency); recorded as forced.
        required_objects: Object names the backup must hold (its manifest's objects), else the
            restore is refused.
        require_approval: Pause for a person to approve in the UI before anything changes (empty:
            as the guard block says).
        without_rollback: Go ahead even when the current state cannot be described or backed up
            (it is gone): there will be nothing to roll back to.
    """
    component = ComponentName(component).value
    # checked before anything (no safety backup, no record): a typo is refused, never found only
    # after the approval, and what is approved is exactly what runs (the form shows them)
    opts = restore_options(component, options)
    required_objects = object_names("required_objects", required_objects)
    store_block = load_store(store)
    guard_block = load_guard(guard)
    # 'latest' of this scope: never a newer, narrower backup
    manifest, target_block = backup_and_target(store_block, backup_id, component, target, opts)
    given = opts.model_dump(mode="json", exclude_unset=True)
    check_restore(manifest, target_block, store_block, given)  # what the restore would refuse, refused now
    record = _new_record(component, manifest, force, target_block, options=given)
    needs_approval = guard_block.require_approval if require_approval is None else require_approval
    checklist = {
        "force": force,
        "required_objects": required_objects,
        "needs_approval": needs_approval,
        "without_rollback": without_rollback,
        "options": opts,
    }
    return _checked_restore(record, manifest, store_block, target_block, guard_block, checklist, given)


@flow(name="rollback-restore")
def rollback_restore(
    restore_id: str,
    target: TargetRef = None,
    store: StoreRef = None,
    guard: str | RestoreGuard | None = None,
    force: bool = False,
    require_approval: bool | None = None,
) -> RestoreRecord:
    """Put back the safety backup a checklist restore took, through the same checklist (its own
    safety backup first, so the rollback can itself be rolled back; approval when the guard asks).
    Only a restore that changed something ('restored' or 'failed') can be rolled back; a second
    call on a rolled-back restore changes nothing. Refused when a later restore into the same
    target is in force, a write outside the checklist included (restore_component, a DR scenario,
    rollback_postgres: their records), and for such a write's own record (no safety backup).
    Returns the original restore's record.

    Args:
        restore_id: The restore to undo: its id is in the restore-with-checklist run's result and
            its checklist artifact (restore-<YYYYMMDDTHHMMSSZ>-<6 hex>).
        target: Name of the component's target block; empty: the one the restore went into (its
            record names it), else the default from the KLB_*_TARGET setting. Another target than
            the restore's is refused. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
        guard: Name of the klb-restore-guard block (maintenance window, notifications, approval);
            empty: no window, no notification, no approval.
        force: Go ahead outside the maintenance window (an emergency); recorded as forced.
        require_approval: Pause for a person to approve in the UI before anything changes (empty:
            as the guard block says).
    """
    logger = get_run_logger()
    store_block = load_store(store)
    guard_block = load_guard(guard)
    original = load_restore_record(store_block, restore_id)
    if original.status == "rolled back":
        check_still_rolled_back(store_block, original)  # not when its rollback was rolled back
        logger.info(
            "restore %s was already rolled back by %s: nothing to do", restore_id, original.rolled_back_by
        )
        return original
    check_rollback_allowed(original)  # before the target is looked up: the record's own refusal first
    target_block = load_target(original.component, rollback_target(original, target))
    # decided now (refused at once, changing nothing), and again under the lock (decide)
    plan = decide_rollback(store_block, original, target_block)
    record = _new_record(
        original.component,
        plan.safety,
        force,
        target_block,
        kind="rollback",
        rolls_back=restore_id,
        options=plan.options,
    )
    needs_approval = guard_block.require_approval if require_approval is None else require_approval
    checklist = {
        "force": force,
        "required_objects": None,
        "needs_approval": needs_approval,
        "without_rollback": False,
    }

    read = [original]  # the restore's record as read under the lock

    def decide() -> tuple[Manifest, dict[str, Any]]:
        """Under the lock, from the record as it is now: a concurrent rollback of it may have
        run, a restore 'running' when asked has ended since and says what it wrote (the lock
        waited for it), another restore into the target ran meanwhile. The checklist, its
        approval form and the restore act on this answer, never on the one made before."""
        now = read[0] = load_restore_record(store_block, restore_id)
        if now.status == "rolled back":
            raise BadInput(f"restore {restore_id} was rolled back meanwhile: nothing more to do")
        final = decide_rollback(store_block, now, target_block)
        record.backup_id, record.size = final.safety.id, final.safety.raw_size
        record.options, record.left_in_place, checklist["options"] = final.options, final.left, final.checked
        if final.left:
            logger.warning(
                "rollback of %s leaves what that restore created: %s", restore_id, ", ".join(final.left)
            )
        return final.safety, final.options

    def rolled_back(done: RestoreRecord) -> None:  # under the lock: the next rollback sees it
        now = read[0]  # never the record read before the lock: its report may be out of date
        now.status, now.rolled_back_at, now.rolled_back_by = "rolled back", datetime.now(UTC), done.id
        put_record(store_block, record_key_of(store_block, restore_id), now)

    outcome = _checked_restore(
        record,
        plan.safety,
        store_block,
        target_block,
        guard_block,
        checklist,
        plan.options,
        decide,
        then=rolled_back,
    )
    if not isinstance(outcome, RestoreRecord):
        return outcome  # cancelled while waiting for approval
    logger.info(
        "restore %s rolled back by %s (its safety backup %s)", restore_id, record.id, record.safety_backup_id
    )
    return read[0]
