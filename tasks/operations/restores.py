"""Restore records: what one checklist restore (or rollback) did, kept in the store at
<prefix>/restores/<YYYY-MM-DD>/<restore-id>/record.json, its artifacts, its metrics, and the mark
on its safety backup (<prefix>/restores/safety-backups/<backup-id>.json: which restore it
belongs to and how that restore ended)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from pydantic import AwareDatetime, BaseModel, Field

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from tasks.errors import ConfigurationError, IntegrityError, NotFound
from tasks.metrics import record_run
from tasks.models import Manifest
from tasks.named_blocks import load_named
from tasks.operations.approval import RestoreCancelled, deadline_of, decide, form_markdown, size
from tasks.operations.checklist import (
    ITEMS,
    ChecklistLine,
    Mark,
    Refused,
    checklist_markdown,
    confirm_contents,
    document_current_state,
    maintenance_window,
    no_safety_backup_needed,
    notify_stakeholders,
    prepare_rollback,
    still_as_verified,
    verify_integrity,
)
from tasks.operations.plan import action_of, short_state, target_label
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.layout import layout
from tasks.storage.records import get_record, put_record
from tasks.verbs import writes_target

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


def load_guard(ref: str | RestoreGuard | None) -> RestoreGuard:
    if isinstance(ref, RestoreGuard):
        return ref
    if not ref:
        return RestoreGuard()
    guard = load_named(RestoreGuard, ref)
    if guard is None:
        raise ConfigurationError(f"no klb-restore-guard block named {ref!r}: create it or pass none")
    return guard


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


def _mark_safety(store: StoreBlock, backup_id: str, restore_id: str, status: str, note: str) -> None:
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
        _mark_safety(store, record.safety_backup_id, record.id, record.status, _safety_note(record))
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


def newer_backup(store: StoreBlock, manifest: Manifest) -> Manifest | None:
    """The newest routine backup of the component with data newer than `manifest`'s, if any
    (safety and forensic copies do not count: they hold the state being replaced)."""
    routine = [
        m
        for m in list_backups(store, manifest.component)
        if m.labels.get("purpose") != "pre-restore-safety"
        and m.labels.get("kind") not in ("safety", "forensic")
    ]
    newer = [m for m in routine if m.source_time > manifest.source_time and m.id != manifest.id]
    return newer[-1] if newer else None


def run_checklist(record: RestoreRecord, *args: Any, **kwargs: Any) -> None:
    """Every item in order (`_items`); a refusal's own line is kept in the record too."""
    try:
        _items(record, *args, **kwargs)
    except Refused as exc:
        record.checklist.append(exc.line)
        raise


def _items(
    record: RestoreRecord,
    manifest: Manifest,
    store: StoreBlock,
    target: Block,
    guard: RestoreGuard,
    force: bool,
    required_objects: list[str] | None,
    needs_approval: bool,
    without_rollback: bool,
    options: Any = None,
) -> None:
    """Every item in order, each line published as soon as it is known. Raises Refused (the
    record holds every line so far) or RestoreCancelled (cancelled while paused). `options`:
    the component's RestoreOptions, checked already; the approval form shows them."""

    def add(line: ChecklistLine) -> None:
        record.checklist.append(line)
        publish_progress(record)

    what = "Rollback" if record.kind == "rollback" else "Restore"
    newer = newer_backup(store, manifest)
    publish_progress(record)
    add(verify_integrity(manifest, store, target))
    add(confirm_contents(manifest, required_objects))
    add(maintenance_window(guard, force))
    add(
        notify_stakeholders(
            guard,
            f"{what} of {record.component} starting ({record.id})",
            f"{record.component} will be restored from backup {manifest.id} "
            f"(data from {manifest.source_time.isoformat()}). Restore id {record.id}.",
        )
    )
    writes = writes_target(record.component, record.options)
    line, record.current_state_key = document_current_state(
        record.component, target, store, record.id, without_rollback, writes
    )
    add(line)
    if writes:
        line, record.safety_backup_id = prepare_rollback(
            record.component, target, store, record.id, without_rollback
        )
    else:  # a PITR into a new instance, etcd without the swap, postgres aside only
        line = no_safety_backup_needed(record.component)
    add(line)
    if not needs_approval:
        # the audit trail says who decided: the guard, or the caller over the guard's word
        skipped = "the guard requires it; skipped by the caller (require_approval=False)"
        detail = skipped if guard.require_approval else "not required by the guard"
        add(
            ChecklistLine(item=ITEMS[6], mark=Mark.warn if guard.require_approval else Mark.ok, detail=detail)
        )
        # the safety backup may have taken an hour: the window and the backup are checked again
        _window_still_open(guard, force, "took its safety backup")
        still_as_verified(manifest, store)
        return
    state = get_record(store, record.current_state_key) if record.current_state_key else None
    safety = get_backup(store, record.safety_backup_id, record.component) if record.safety_backup_id else None
    now_there = (
        f"{size(safety.raw_size)} in safety backup `{safety.id}`"
        + (f", fingerprint {short_state(safety.fingerprint)}" if safety.fingerprint else "")
        if safety
        else "unknown (no safety backup)"
        if writes_target(record.component, record.options)
        else "left as it is: with these options the restore writes nothing to it"
    )
    if state:
        now_there += f"; configured as {short_state(state)}"
    timeout = guard.approval_timeout_seconds
    description = form_markdown(
        record.id,
        manifest,
        newer,
        target_label(target),
        now_there,
        action_of(record.component, options),
        safety,
        record.checklist,
        deadline_of(timeout),
        record.options,
    )
    try:
        line, record.approved_by = decide(description, timeout, record.id)
    except RestoreCancelled:
        line = ChecklistLine(
            item=ITEMS[6], mark=Mark.cancelled, detail="the run was cancelled while it waited for approval"
        )
        record.checklist.append(line)
        raise
    add(line)
    # the window was checked before the wait: an answer that comes after it closed is too late
    _window_still_open(guard, force, "waited for approval", "approved, but ")
    if record.safety_backup_id:
        _retake_safety_backup(record, store, target, without_rollback, add)
    still_as_verified(manifest, store)  # what was approved is what runs, or nothing does


def _window_still_open(guard: RestoreGuard, force: bool, doing: str, prefix: str = "") -> None:
    """Refused when the maintenance window, open at the checklist's window item, closed since
    (while the restore `doing`): the restore step itself must start inside it."""
    if guard.window is not None and not guard.window.contains(datetime.now(UTC)) and not force:
        raise Refused(
            ChecklistLine(
                item=ITEMS[2],
                mark=Mark.refused,
                detail=f"{prefix}{guard.window.describe()} closed while the restore {doing}: nothing "
                "was changed; run it again in the window, or with force=True",
            )
        )


def _retake_safety_backup(
    record: RestoreRecord,
    store: StoreBlock,
    target: Block,
    without_rollback: bool,
    add: Callable[[ChecklistLine], None],
) -> None:
    """The form showed a safety backup taken before the wait; writes made while a person decided
    are not in it. Take it again now, so a rollback puts back what was there just before the
    restore; the first one is marked superseded (kept, never what a rollback uses)."""
    earlier = record.safety_backup_id
    line, fresh = prepare_rollback(record.component, target, store, record.id, without_rollback)
    if fresh is None:  # without_rollback and it failed: the earlier one is still a rollback point
        add(
            line.model_copy(
                update={"detail": line.detail + f"; rollback uses {earlier}, taken before approval"}
            )
        )
        return
    add(line.model_copy(update={"detail": line.detail + " (after approval: holds writes made meanwhile)"}))
    record.safety_backup_id = fresh
    note = f"taken before approval; superseded by {fresh}, taken after approval"
    _mark_safety(store, earlier, record.id, "superseded", note)
