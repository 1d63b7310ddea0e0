"""The pre-restore checklist of one checklist restore (or rollback), item by item, each line
published as soon as it is known and kept in its record (restores.py): integrity, contents, the
window, the people told, the current state, the safety backup, the approval; after a wait, the
window checked again and the safety backup taken again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect.blocks.core import Block

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from tasks.models import Manifest
from tasks.operations.approval import RestoreCancelled, deadline_of, decide, form_markdown, size
from tasks.operations.checklist import (
    ITEMS,
    ChecklistLine,
    Mark,
    Refused,
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
from tasks.operations.restores import RestoreRecord, mark_safety, publish_progress
from tasks.storage.catalog import get_backup, latest_candidates, list_backups
from tasks.storage.health import damaged_ids
from tasks.storage.records import get_record
from tasks.verbs import writes_target


def newer_backup(store: StoreBlock, manifest: Manifest) -> Manifest | None:
    """The newest backup of the component that 'latest' could pick with data newer than
    `manifest`'s, if any: the approval form offers it as the better choice. Never a safety or
    forensic copy (they hold the state being replaced), one dated in the future (a skewed
    clock), nor one known damaged (storage/health.py): offered, it was the one to pick instead."""
    damaged = damaged_ids(store, manifest.component)
    newer = [
        m
        for m in latest_candidates(list_backups(store, manifest.component), datetime.now(UTC))
        if m.source_time > manifest.source_time and m.id != manifest.id and m.id not in damaged
    ]
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
    mark_safety(store, earlier, record.id, "superseded", note)
