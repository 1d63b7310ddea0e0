"""Restores with the pre-restore checklist, their rollback, and restore plans (dry runs).

`restore_with_checklist` is the restore an SRE runs by hand: plan shown, integrity and contents
checked, window enforced, people told, current state documented, a safety backup taken, an
optional human approval, then the component's own aside/verify/cut-over restore. Every step
leaves its line in the checklist artifact and in the restore record
(<prefix>/restores/<YYYY-MM-DD>/<restore-id>/record.json). `rollback_restore` puts the safety
backup back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import AwareDatetime, BaseModel, Field

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from flows.common import StoreRef, TargetBlock, TargetRef, load_store
from flows.locks import component_lock
from tasks.components.registry import ComponentName, load_target
from tasks.errors import BadInput, ConfigurationError
from tasks.ids import new_backup_id
from tasks.operations.checklist import (
    ITEMS,
    ChecklistLine,
    Mark,
    Refused,
    checklist_markdown,
    confirm_contents,
    document_current_state,
    maintenance_window,
    notify_stakeholders,
    prepare_rollback,
    restore_prefix,
    verify_integrity,
)
from tasks.operations.plan import build_plan, plan_markdown
from tasks.storage.catalog import get_backup
from tasks.storage.records import get_record, put_record
from tasks.verbs import restore_task, verify_task


class Approval(RunInput):
    approve: bool = Field(description="restore now?")
    by: str = Field(default="", description="who decides")
    reason: str = ""


class RestoreRecord(BaseModel):
    id: str
    component: str
    backup_id: str
    status: str = Field(description="refused | failed | restored | rolled back")
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(default=None, description="the restore step alone")
    forced: bool = False
    checklist: list[ChecklistLine] = Field(default_factory=list)
    safety_backup_id: str | None = None
    current_state_key: str | None = None
    approved_by: str | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    rolled_back_at: AwareDatetime | None = None


def load_guard(ref: str | RestoreGuard | None) -> RestoreGuard:
    if isinstance(ref, RestoreGuard):
        return ref
    if not ref:
        return RestoreGuard()
    try:
        return RestoreGuard.load(ref)
    except ValueError:
        raise ConfigurationError(
            f"no klb-restore-guard block named {ref!r}: create it or pass none"
        ) from None


def record_key_of(store: StoreBlock, restore_id: str) -> str:
    return f"{restore_prefix(store, restore_id)}/record.json"


def load_restore_record(store: StoreBlock, restore_id: str) -> RestoreRecord:
    return RestoreRecord.model_validate(get_record(store, record_key_of(store, restore_id)))


@flow(name="restore-plan")
def restore_plan(
    recovery_point: str | None = None,
    backup_id: str | None = None,
    components: list[ComponentName] | None = None,
    targets: dict[str, str | TargetBlock] | None = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """Dry run: what a restore from `recovery_point` ('latest' or an id) or `backup_id` would do.

    Args:
        recovery_point: 'latest' or a recovery point id (a set of backups taken together
            by backup-all); empty: each component's newest backup.
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        components: The components to include (empty: every component that has a target configured).
        targets: Component name -> name of its target block (from Python, block objects); empty:
            each component's default target.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    store_block = load_store(store)
    names = [ComponentName(c).value for c in components] if components else None
    plan = build_plan(store_block, recovery_point, backup_id, names, targets)
    create_markdown_artifact(key="restore-plan", markdown=plan_markdown(plan), description="dry run")
    return plan.model_dump(mode="json")


def _ask_approval(timeout: int, plan_md: str) -> tuple[ChecklistLine, str]:
    item = ITEMS[6]
    form = Approval.with_initial_data(
        description=f"Approve this restore?\n\n{plan_md}", approve=False, by="", reason=""
    )
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=min(2, timeout))
    except FlowPauseTimeout:
        raise Refused(
            ChecklistLine(item=item, mark=Mark.refused, detail=f"no approval within {timeout}s: refused")
        ) from None
    if not answer.approve:
        who = answer.by or "an operator"
        raise Refused(
            ChecklistLine(item=item, mark=Mark.refused, detail=f"declined by {who}: {answer.reason}")
        )
    return ChecklistLine(
        item=item, mark=Mark.ok, detail=f"approved by {answer.by or '?'}: {answer.reason}"
    ), answer.by


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

    Args:
        component: Which component: kubernetes, volumes, postgres, postgres-pitr, etcd, rabbitmq or
            app-state (backup-table.yaml lists them).
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        options: Restore options of the component (its RestoreOptions fields, docs/components.md),
            e.g. {"namespaces": ["lambda"], "existing_resource_policy": "update"} for kubernetes.
        guard: Name of the klb-restore-guard block (maintenance window, notifications, approval);
            empty: no window, no notification.
        force: Restore even if the checklist finds blocking problems (they are recorded).
        required_objects: Object names the backup must hold (its manifest's objects), else the restore is
            refused.
        require_approval: Pause for a person to approve the plan in the UI before anything changes
            (empty: as the guard block says).
        without_rollback: Do not keep a copy of the current state to roll back to (faster, not
            undoable).
    """
    logger = get_run_logger()
    component = ComponentName(component).value
    store_block = load_store(store)
    guard_block = load_guard(guard)
    manifest = get_backup(store_block, backup_id, component)
    target_block = load_target(component, target)
    record = RestoreRecord(
        id=new_backup_id("restore"),
        component=component,
        backup_id=manifest.id,
        status="refused",
        started_at=datetime.now(UTC),
        forced=force,
    )
    plan_md = plan_markdown(build_plan(store_block, backup_id=manifest.id, targets={component: target_block}))
    title = f"Pre-restore checklist: {component} from {manifest.id} ({record.id})"
    try:
        record.checklist.append(verify_integrity(manifest, store_block, target_block))
        record.checklist.append(confirm_contents(manifest, required_objects))
        record.checklist.append(maintenance_window(guard_block, force))
        record.checklist.append(
            notify_stakeholders(
                guard_block,
                f"Restore of {component} starting ({record.id})",
                f"{component} will be restored from backup {manifest.id} "
                f"(data from {manifest.source_time.isoformat()}). Restore id {record.id}.",
            )
        )
        line, record.current_state_key = document_current_state(
            component, target_block, store_block, record.id, without_rollback
        )
        record.checklist.append(line)
        line, record.safety_backup_id = prepare_rollback(
            component, target_block, store_block, record.id, without_rollback
        )
        record.checklist.append(line)
        needs_approval = guard_block.require_approval if require_approval is None else require_approval
        if needs_approval:
            line, record.approved_by = _ask_approval(guard_block.approval_timeout_seconds, plan_md)
        else:
            line = ChecklistLine(item=ITEMS[6], mark=Mark.ok, detail="not required")
        record.checklist.append(line)
    except Refused as exc:
        record.checklist.append(exc.line)
        record.finished_at = datetime.now(UTC)
        record.error = str(exc)
        _finish(store_block, record, title, plan_md)
        logger.error("restore refused by the checklist: %s", exc)
        raise
    started = datetime.now(UTC)
    try:
        with component_lock(component):  # never while a backup or restore of it runs
            record.report = restore_task(manifest, target_block, store_block, options)
        record.status = "restored"
    except Exception as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record.finished_at = datetime.now(UTC)
        record.duration_seconds = (record.finished_at - started).total_seconds()
        _finish(store_block, record, title, plan_md)
    logger.info("restored %s from %s; safety backup %s", component, manifest.id, record.safety_backup_id)
    return record


def _finish(store: StoreBlock, record: RestoreRecord, title: str, plan_md: str) -> None:
    put_record(store, record_key_of(store, record.id), record)
    verdict = f"\n**Result: {record.status}**" + (f": {record.error}" if record.error else "") + "\n"
    create_markdown_artifact(
        key="restore-checklist",
        markdown=checklist_markdown(title, record.checklist, plan_md) + verdict,
        description=f"pre-restore checklist {record.id}",
    )


@flow(name="rollback-restore")
def rollback_restore(restore_id: str, target: TargetRef = None, store: StoreRef = None) -> RestoreRecord:
    """Put back the safety backup a checklist restore took before it changed anything.

    Args:
        restore_id: The restore to undo (id from the restore-with-checklist report).
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    store_block = load_store(store)
    record = load_restore_record(store_block, restore_id)
    if not record.safety_backup_id:
        raise BadInput(
            f"restore {restore_id} took no safety backup (status {record.status}): nothing to roll back"
        )
    manifest = get_backup(store_block, record.safety_backup_id, record.component)
    target_block = load_target(record.component, target)
    verify_task(manifest, store_block, target_block)
    with component_lock(record.component):
        restore_task(manifest, target_block, store_block, None)
    record.status, record.rolled_back_at = "rolled back", datetime.now(UTC)
    put_record(store_block, record_key_of(store_block, restore_id), record)
    create_markdown_artifact(
        key="restore-rollback",
        markdown=f"# Rollback of {restore_id}\n\n{record.component} is back to safety backup "
        f"`{manifest.id}` (data from {manifest.source_time.isoformat()}).\n",
    )
    return record
