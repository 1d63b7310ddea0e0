"""What is known about each backup (and recovery point): verified when, or damaged why.

One small record per backup at `<prefix>/_health/<component>/<backup-id>.json`, written by the
integrity sweep and by every read that finds the backup damaged (a restore's verification, a
manifest that does not check out). Everything that chooses a backup reads it: `latest`, the
catalog listing, retention, drills, restore plans. The newest finding wins: a backup found
damaged and later re-read whole (repaired from the DR copy) is verified again.

One record per backup, not one file per component: the sweep and concurrent restores each
write their own key, so no two writers race on one object. Writing a finding is best effort:
failing to record it must not hide the error that produced it (that error is raised anyway).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ValidationError

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, NotFound
from tasks.ids import parse_backup_id
from tasks.storage.backends import backend_for
from tasks.storage.layout import layout

log = logging.getLogger(__name__)


class Status(StrEnum):
    verified = "verified"
    damaged = "damaged"


class BackupHealth(BaseModel):
    id: str
    status: Status
    checked_at: AwareDatetime
    reason: str = ""

    def describe(self) -> str:
        when = f"{self.checked_at:%Y-%m-%d %H:%M:%SZ}"
        return f"{self.status.value} {when}" + (f": {self.reason}" if self.reason else "")


def record(store: StoreBlock, backup_id: str, status: Status, reason: str = "") -> BackupHealth | None:
    """Store a finding about `backup_id`; log (never raise) if it cannot be stored."""
    try:
        key = layout(store).health_key(backup_id)
    except BadInput:
        return None  # not an id of ours: nothing to record it under
    finding = BackupHealth(id=backup_id, status=status, checked_at=datetime.now(UTC), reason=reason[:500])
    try:
        backend_for(store).put_bytes(key, finding.model_dump_json(indent=2).encode())
    except Exception as exc:
        log.warning("could not record that %s is %s: %s", backup_id, status.value, exc)
        return None
    return finding


def is_damage(exc: BaseException) -> bool:
    """A failure that proves the stored backup damaged (not a wrong key, not a network error)."""
    if isinstance(exc, IntegrityError):
        return exc.proves_damage
    return isinstance(exc, NotFound)


def mark_damaged(store: StoreBlock, backup_id: str, reason: str) -> None:
    log.error("backup %s is damaged: %s", backup_id, reason)
    record(store, backup_id, Status.damaged, reason)


def mark_verified(store: StoreBlock, backup_id: str) -> None:
    record(store, backup_id, Status.verified)


def _parse(data: bytes, key: str) -> BackupHealth | None:
    try:
        return BackupHealth.model_validate_json(data)
    except ValidationError:
        log.warning("health record %s is unreadable: ignored", key)
        return None


def health_of(store: StoreBlock, component: str) -> dict[str, BackupHealth]:
    """backup id -> what is known about it, for every backup of `component` with a record."""
    backend = backend_for(store)
    found: dict[str, BackupHealth] = {}
    for key in backend.list_keys(layout(store).health_dir(component)):
        if not key.endswith(".json"):
            continue
        try:
            finding = _parse(backend.get_bytes(key), key)
        except NotFound:
            continue  # deleted by retention while we listed
        if finding is not None and key == layout(store).health_key(finding.id):
            found[finding.id] = finding
    return found


def finding(store: StoreBlock, backup_id: str) -> BackupHealth | None:
    """What is known about one backup, or None."""
    parse_backup_id(backup_id)
    key = layout(store).health_key(backup_id)
    try:
        found = _parse(backend_for(store).get_bytes(key), key)
    except NotFound:
        return None
    return found if found is not None and found.id == backup_id else None  # another's: not this one's


def damaged_ids(store: StoreBlock, component: str) -> dict[str, str]:
    """backup id -> why, for the backups of `component` last found damaged."""
    return {i: h.reason for i, h in health_of(store, component).items() if h.status == Status.damaged}
