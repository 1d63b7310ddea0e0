"""The pre-restore checklist (runbook "Pre-Restore Checklist"), one Prefect task per item.

Each item returns its `ChecklistLine`; an item that must stop the restore raises `Refused`
carrying its line. Nothing here changes the target except `prepare_rollback`, which only adds a
backup (the safety copy of what is there now).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prefect import task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from pydantic import AwareDatetime, BaseModel, Field

from blocks.restore_guard import RestoreGuard
from blocks.store import StoreBlock
from tasks.errors import BackupError, NotFound
from tasks.markdown import cell
from tasks.models import Manifest
from tasks.notify import failure_text
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.layout import backup_prefix, layout
from tasks.storage.records import put_record
from tasks.verbs import backup_component, describe_component, verify_component_backup


class Mark(StrEnum):
    ok = "ok"
    warn = "warn"
    refused = "REFUSED"
    failed = "FAILED"
    cancelled = "cancelled"
    not_reached = "not reached"


class ChecklistLine(BaseModel):
    item: str
    mark: Mark
    detail: str
    at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


class Refused(BackupError):
    """The checklist stopped the restore before anything was changed."""

    def __init__(self, line: ChecklistLine):
        super().__init__(f"{line.item}: {line.detail}")
        self.line = line

    def __reduce__(self):  # survives Prefect's result serialization
        return (Refused, (self.line,))


ITEMS = [
    "verify backup integrity",
    "confirm backup contents",
    "maintenance window",
    "notify stakeholders",
    "document current state",
    "prepare rollback",
    "approval",
]


@task(task_run_name="checklist-verify-{manifest.id}", cache_policy=NO_CACHE)
def verify_integrity(manifest: Manifest, store: StoreBlock, target: Block | None) -> ChecklistLine:
    """Download every object and check its sha256, then the component's own check."""
    item = ITEMS[0]
    try:
        report = verify_component_backup(manifest, store, target)
    except Exception as exc:
        raise Refused(
            ChecklistLine(item=item, mark=Mark.refused, detail=f"{type(exc).__name__}: {exc}")
        ) from exc
    return ChecklistLine(
        item=item, mark=Mark.ok, detail=f"{report['objects']} objects, {report['bytes']} bytes, sha256 match"
    )


def still_as_verified(manifest: Manifest, store: StoreBlock) -> None:
    """Refused unless the backup verified first is still stored as it was: its manifest the same,
    every object listed. Retention takes no lock and a person may decide for an hour; what runs
    must be the backup that was checked and shown, never a half-deleted one."""
    item = ITEMS[0]
    try:
        now = get_backup(store, manifest.id, manifest.component)
    except NotFound:
        now = None
    stored = set(backend_for(store).list_keys(backup_prefix(store, manifest.id)))
    gone = [o.name for o in manifest.objects if o.key not in stored]
    if now is None or gone:
        what = "its manifest" if now is None else f"its objects {gone}"
        detail = (
            f"backup {manifest.id} was verified, but {what} left the store since (retention?): "
            "nothing was changed; restore another backup (klb backups list)"
        )
    elif now.checksum != manifest.checksum:
        detail = (
            f"the manifest of backup {manifest.id} changed since it was verified: nothing was "
            "changed; check the store before restoring it"
        )
    else:
        return
    raise Refused(ChecklistLine(item=item, mark=Mark.refused, detail=detail))


@task(task_run_name="checklist-contents-{manifest.id}", cache_policy=NO_CACHE)
def confirm_contents(manifest: Manifest, required_objects: list[str] | None) -> ChecklistLine:
    """Show what the backup holds (objects, sizes, fingerprint); refuse if a required part is missing."""
    item = ITEMS[1]
    names = [o.name for o in manifest.objects]
    missing = [n for n in required_objects or [] if n not in names]
    if missing:
        raise Refused(
            ChecklistLine(item=item, mark=Mark.refused, detail=f"backup {manifest.id} lacks {missing}")
        )
    fp = ", ".join(f"{k}={v}" for k, v in (manifest.fingerprint or {}).items()) or "no fingerprint"
    age_h = manifest.age() / 3600
    return ChecklistLine(
        item=item,
        mark=Mark.ok,
        detail=f"{len(names)} objects ({', '.join(names)}), {manifest.raw_size} bytes raw, "
        f"data from {manifest.source_time.isoformat()} ({age_h:.2f} h old); {fp}",
    )


@task(task_run_name="checklist-window", cache_policy=NO_CACHE)
def maintenance_window(guard: RestoreGuard, force: bool, now: datetime | None = None) -> ChecklistLine:
    item = ITEMS[2]
    now = now or datetime.now(UTC)
    if guard.window is None:
        return ChecklistLine(item=item, mark=Mark.warn, detail="no maintenance window configured: allowed")
    if guard.window.contains(now):
        return ChecklistLine(
            item=item, mark=Mark.ok, detail=f"{now:%a %H:%M} UTC is in {guard.window.describe()}"
        )
    if force:
        return ChecklistLine(
            item=item, mark=Mark.warn, detail=f"outside {guard.window.describe()}, FORCED by the operator"
        )
    raise Refused(
        ChecklistLine(
            item=item,
            mark=Mark.refused,
            detail=f"{now:%a %H:%M} UTC is outside {guard.window.describe()}: wait for the window "
            "or pass force=True (emergency)",
        )
    )


@task(task_run_name="checklist-notify", cache_policy=NO_CACHE)
def notify_stakeholders(guard: RestoreGuard, subject: str, body: str) -> ChecklistLine:
    """Tell every configured notification block. A block that fails is a warning, not a stop:
    the restore may be the emergency the people are waiting for."""
    item = ITEMS[3]
    if not guard.notify:
        return ChecklistLine(
            item=item, mark=Mark.warn, detail="no notification blocks configured: nobody told"
        )
    told, failed = [], []
    for ref in guard.notify:
        try:
            block = Block.load(ref)
            if not isinstance(block, NotificationBlock):
                raise TypeError(f"{type(block).__name__} is not a notification block")
            block.notify(body, subject)
            told.append(ref)
        except Exception as exc:
            failed.append(f"{ref} ({failure_text(exc)})")
    mark = Mark.ok if not failed else Mark.warn
    detail = f"told {told}" + (f"; could not tell {failed}" if failed else "")
    return ChecklistLine(item=item, mark=mark, detail=detail)


def no_safety_backup_needed(component: str) -> ChecklistLine:
    """The line of a restore whose options write nothing to its target: a safety backup of it
    (a whole base backup of the server, for a PITR) would hold what nothing replaces."""
    return ChecklistLine(
        item=ITEMS[5],
        mark=Mark.ok,
        detail=f"no safety backup: with these options the restore writes nothing to {component}'s "
        "target, so there is nothing to roll back",
    )


def _warn_or_refuse(item: str, detail: str, without_rollback: bool, exc: Exception) -> ChecklistLine:
    """A rollback step that could not be done refuses the restore, unless the operator said
    production is gone (without_rollback): then it is a warning line and the restore goes on."""
    if without_rollback:
        return ChecklistLine(item=item, mark=Mark.warn, detail=detail + " (allowed: without_rollback)")
    refused = detail + "; if it is gone, pass without_rollback=True"
    raise Refused(ChecklistLine(item=item, mark=Mark.refused, detail=refused)) from exc


@task(task_run_name="checklist-document-{component}", cache_policy=NO_CACHE)
def document_current_state(
    component: str,
    target: Block,
    store: StoreBlock,
    restore_id: str,
    without_rollback: bool = False,
    writes: bool = True,
) -> tuple[ChecklistLine, str | None]:
    """describe_current_state, stored beside the restore record. `writes` False: the restore
    writes nothing to the target (a PITR: a new instance), so a target that cannot be described
    (the server is down: a reason to recover) is a warning, not a refusal."""
    item = ITEMS[4]
    try:
        state: dict[str, Any] = describe_component(component, target)
    except Exception as exc:
        detail = f"cannot describe the current state: {type(exc).__name__}: {exc}"
        if not writes:
            allowed = detail + " (allowed: the restore writes nothing to it)"
            return ChecklistLine(item=item, mark=Mark.warn, detail=allowed), None
        return _warn_or_refuse(item, detail, without_rollback, exc), None
    key = put_record(store, layout(store).restore_state_key(restore_id), state)
    return ChecklistLine(item=item, mark=Mark.ok, detail=f"stored at {key}"), key


@task(task_run_name="checklist-safety-backup-{component}", cache_policy=NO_CACHE)
def prepare_rollback(
    component: str, target: Block, store: StoreBlock, restore_id: str, without_rollback: bool = False
) -> tuple[ChecklistLine, str | None]:
    """A safety backup of what is there now, stored and verified, before anything is replaced."""
    item = ITEMS[5]
    try:
        manifest = backup_component(
            component,
            target,
            store,
            {"kind": "safety", "purpose": "pre-restore-safety", "restore": restore_id},
        )
    except Exception as exc:
        detail = f"the safety backup failed, so there is no rollback: {type(exc).__name__}: {exc}"
        return _warn_or_refuse(item, detail, without_rollback, exc), None
    return (
        ChecklistLine(item=item, mark=Mark.ok, detail=f"safety backup {manifest.id}, stored and verified"),
        manifest.id,
    )


# how each mark reads in an artifact: words (plain fonts, screen readers); warnings marked as such
SHOWN = {
    Mark.ok: "ok",
    Mark.warn: "⚠ WARNING",
    Mark.refused: "REFUSED",
    Mark.failed: "FAILED",
    Mark.cancelled: "cancelled",
    Mark.not_reached: "not reached",
}


def checklist_markdown(title: str, lines: list[ChecklistLine], status: str = "running") -> str:
    """The checklist as a numbered list (it wraps; a table of long details does not): every
    item, its mark and its full detail; items not reached yet are "pending" while the restore
    runs, "not reached" once it has ended."""
    done = {line.item for line in lines}
    waiting = "pending" if status == "running" else SHOWN[Mark.not_reached]
    rows = [f"1. **{line.item}**: {SHOWN[line.mark]}: {cell(line.detail)}" for line in lines]
    rows += [f"1. **{item}**: {waiting}" for item in ITEMS if item not in done]
    return f"# {title}\n\nStatus: **{status}**\n\n" + "\n".join(rows) + "\n"
