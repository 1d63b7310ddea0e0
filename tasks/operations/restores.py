"""Restore records: what one checklist restore (or rollback) did, kept in the store at
<prefix>/restores/<YYYY-MM-DD>/<restore-id>/record.json, its artifacts, its metrics, and the mark
on its safety backup (<prefix>/restores/safety-backups/<backup-id>.json: which restore it
belongs to and how that restore ended). A write into a target made outside the checklist
(restore_component, the DR scenarios, rollback_postgres) leaves a record too, with `via` naming
its flow and no safety backup (written_records.py): a rollback of an earlier restore sees it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from pydantic import AwareDatetime, BaseModel, Field

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from tasks.errors import ConfigurationError, IntegrityError, NotFound
from tasks.metrics import record_run
from tasks.named_blocks import load_named
from tasks.operations.checklist import ChecklistLine, checklist_markdown
from tasks.storage.layout import layout
from tasks.storage.records import get_record, put_record
from tasks.verbs import target_changed, writes_target

Status = Literal["running", "refused", "cancelled", "failed", "restored", "nothing restored", "rolled back"]
# a restore in one of these states may have changed the target: a rollback puts the safety copy back.
# 'running' is stored just before the restore step: still so when asked, its run died mid-restore
# (a live one holds the component lock, which a rollback waits for, then checks again)
CHANGED = ("restored", "failed", "running")


class RestoreRecord(BaseModel):
    id: str
    kind: Literal["restore", "rollback"] = "restore"
    component: str
    backup_id: str
    size: int | None = Field(default=None, description="raw bytes of the backup restored")
    status: Status = Field(
        description="running | refused | cancelled | failed | restored | nothing restored (it ran to its "
        "end and wrote nothing: every object was there already) | rolled back"
    )
    started_at: AwareDatetime
    locked_at: AwareDatetime | None = Field(
        default=None,
        description="when its run took the component lock: runs into one target change it in the "
        "order they held the lock, whatever order they started in (order_of)",
    )
    finished_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(default=None, description="the restore step alone")
    forced: bool = False
    checklist: list[ChecklistLine] = Field(default_factory=list)
    safety_backup_id: str | None = None
    current_state_key: str | None = None
    approved_by: str | None = None
    options: dict[str, Any] = Field(
        default_factory=dict, description="the restore options given (checked), as shown for approval"
    )
    report: dict[str, Any] | None = None
    error: str | None = None
    target_changed: bool | None = Field(
        default=None,
        description="False: the restore failed before it changed the target (nothing to roll back); "
        "None: the component cannot tell",
    )
    target: str | None = Field(default=None, description="the target block restored into (its name)")
    target_digest: str | None = Field(
        default=None, description="sha256 of the target's settings (secrets masked): where it went"
    )
    rolls_back: str | None = Field(default=None, description="for a rollback: the restore it undoes")
    rolled_back_at: AwareDatetime | None = None
    rolled_back_by: str | None = Field(default=None, description="the rollback's own restore id")
    left_in_place: list[str] = Field(
        default_factory=list, description="a rollback: what the restore created or merged that it leaves"
    )
    via: str | None = Field(
        default=None,
        description="the flow that wrote outside the checklist (restore-component, partial-restore, "
        "rollback-postgres, ...): no safety backup, never rolled back itself; None: a checklist "
        "restore or rollback",
    )


def settle(record: RestoreRecord) -> None:
    """Status of a restore that ran to its end, from its options and report: by its options it
    may have written nothing (aside only, a plan): 'restored', nothing to roll back; one that could
    have written and did not (Velero, policy none, every object there already) restored nothing,
    and its record must not say 'restored'."""
    record.target_changed = target_changed(record.component, record.options, record.report)
    wrote_by_options = writes_target(record.component, record.options)
    record.status = "nothing restored" if wrote_by_options and not record.target_changed else "restored"


def settle_failure(record: RestoreRecord, exc: BaseException) -> None:
    """Status of a restore that failed: 'failed', untouched only when its component says so, with
    what it wrote before it failed when the component can tell (a rollback puts back that)."""
    record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
    if getattr(exc, "target_untouched", False):
        record.target_changed = False
    record.report = getattr(exc, "partial_report", None) or record.report


def load_guard(ref: str | RestoreGuard | None) -> RestoreGuard:
    if isinstance(ref, RestoreGuard):
        return ref
    if not ref:
        return RestoreGuard()
    guard = load_named(RestoreGuard, ref)
    if guard is None:
        raise ConfigurationError(f"no klb-restore-guard block named {ref!r}: create it or pass none")
    return guard


def order_of(record: RestoreRecord) -> tuple[datetime, str]:
    """Sort key of restores into one target, oldest first: when each took the component lock
    (a record from before it was kept: when it started). Never the id alone: two ids of the same
    second sort by their random suffix, and a run that started first may take the lock last."""
    return (record.locked_at or record.started_at, record.id)


def record_key_of(store: StoreBlock, restore_id: str) -> str:
    return layout(store).restore_record_key(restore_id)


def load_restore_record(store: StoreBlock, restore_id: str) -> RestoreRecord:
    """The record stored under `restore_id`, naming that restore (a record copied over another's
    would make a rollback put back the wrong safety backup). On a store with keys, one no key of
    the store signed there is refused (IntegrityError, storage/signing.py): nothing is rolled
    back on the word of a forged record."""
    try:
        data = get_record(store, record_key_of(store, restore_id))
    except NotFound:
        raise NotFound(
            f"no restore {restore_id} in {store.location}: the id is in the restore's checklist "
            "artifact and in its flow run's result"
        ) from None
    return restore_record_from(data, restore_id)


def restore_record_from(data: dict[str, Any], restore_id: str) -> RestoreRecord:
    """The record read under `restore_id`'s key, which must name that very restore."""
    record = RestoreRecord.model_validate(data)
    if record.id != restore_id:
        raise IntegrityError(
            f"the record of restore {restore_id} names another restore, {record.id}: it was copied; "
            "nothing was done: check the store's restores/ records"
        )
    return record


def safety_mark_key(store: StoreBlock, backup_id: str) -> str:
    return layout(store).safety_mark_key(backup_id)


def safety_mark(store: StoreBlock, backup_id: str) -> dict[str, Any]:
    """Which restore took this safety backup, and how that restore ended."""
    return get_record(store, safety_mark_key(store, backup_id))


def mark_safety(store: StoreBlock, backup_id: str, restore_id: str, status: str, note: str) -> None:
    put_record(
        store,
        safety_mark_key(store, backup_id),
        {
            "backup_id": backup_id,
            "restore_id": restore_id,
            "restore_status": status,
            "note": note,
            "at": datetime.now(UTC),
        },
    )


def title_of(record: RestoreRecord) -> str:
    what = "Rollback" if record.kind == "rollback" else "Restore"
    return f"{what} of {record.component} from {record.backup_id} ({record.id})"


def publish_progress(record: RestoreRecord) -> None:
    """The checklist as it happens: a new version of the run's checklist artifact per item."""
    create_markdown_artifact(
        key="restore-checklist",
        markdown=checklist_markdown(title_of(record), record.checklist, record.status),
        description=f"pre-restore checklist {record.id} ({record.status})",
    )


def finish(store: StoreBlock, record: RestoreRecord) -> None:
    """Store the record, mark its safety backup, publish the final checklist, push metrics
    (a cancelled restore pushes none: nothing failed and nothing was restored)."""
    record.finished_at = record.finished_at or datetime.now(UTC)
    put_record(store, record_key_of(store, record.id), record)
    if record.safety_backup_id:
        mark_safety(store, record.safety_backup_id, record.id, record.status, _safety_note(record))
    lines = [f"\n## Result: {record.status}\n"]
    if record.error:
        lines.append(f"{record.error}\n")
    lines.append(next_step(record) + "\n")
    create_markdown_artifact(
        key="restore-checklist",
        markdown=checklist_markdown(title_of(record), record.checklist, record.status) + "\n".join(lines),
        description=f"pre-restore checklist {record.id} ({record.status})",
    )
    if record.status in ("restored", "nothing restored", "failed", "refused"):
        ok = record.status in ("restored", "nothing restored")  # a restore of what was there: no failure
        record_run("restore", record.component, ok, record.duration_seconds or 0.0)


def untouched(record: RestoreRecord) -> bool:
    """A restore that never changed its target: it failed before it did (its component says
    so), or its options write nothing there (postgres cut_over=False, etcd without the swap)."""
    return record.status in CHANGED and record.target_changed is False


def _safety_note(record: RestoreRecord) -> str:
    if record.status == "nothing restored":
        return f"restore {record.id} wrote nothing to its target (all there already): nothing to roll back"
    if untouched(record) and record.status == "restored":
        return f"restore {record.id} wrote nothing to its target (by its options): nothing to roll back"
    if untouched(record):
        return f"restore {record.id} failed before it changed anything: nothing to roll back"
    if record.status in CHANGED:
        return f"the state before restore {record.id}: roll back with rollback_restore('{record.id}')"
    return f"restore {record.id} was {record.status} before it changed anything: nothing to roll back"


def next_step(record: RestoreRecord) -> str:
    if record.status == "nothing restored":
        why = (record.report or {}).get("note") or "every object it would restore was there already"
        return (
            f"Nothing was written to {record.component}'s target: {why}. The target is as it was: "
            "there is nothing to roll back."
        )
    if untouched(record) and record.status == "restored":
        return (
            f"With these options the restore wrote nothing to {record.component}'s target (see the "
            "report for what it left aside or planned): there is nothing to roll back."
        )
    if record.status == "restored" and record.safety_backup_id:
        return f"To undo it: `rollback_restore(restore_id='{record.id}')`."
    if untouched(record):
        return (
            f"The restore failed before it changed {record.component}: the target is as it was. "
            "Fix the cause above and run the restore again; there is nothing to roll back."
        )
    if record.status == "failed" and record.safety_backup_id:
        return (
            f"The target may be part-way: check it; `rollback_restore(restore_id='{record.id}')` "
            f"puts back safety backup `{record.safety_backup_id}`."
        )
    if record.status in ("refused", "cancelled"):
        return "Nothing was restored, so there is nothing to roll back."
    return ""


def target_digest(target: Block) -> str:
    """Which place a target block points at: its settings, secrets masked (a password change
    is still the same place)."""
    settings = json.dumps(target.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()
