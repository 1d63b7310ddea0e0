"""What is known about each backup (and recovery point): verified when, or damaged why.

One small record per backup at `<prefix>/_health/<component>/<backup-id>.json`, written by the
integrity sweep and by every read that finds the backup damaged (a restore's verification, a
manifest that does not check out). Everything that chooses a backup reads it: `latest`, the
catalog listing, retention, drills, restore plans. The newest finding wins: a backup found
damaged and later re-read whole (repaired from the DR copy) is verified again.

Damage wins a race. A 'verified' verdict is written by a sweep that may have read for minutes;
damage can be recorded meanwhile (another sweep, a restore that found a bad object). So the two
live in two keys per backup: damage at `<backup-id>.json`, the sweep's verdict at
`<backup-id>.verified.json`, and a verdict never overwrites a damage finding. Each verdict carries
when its read began (`read_from`): it outranks damage only if that read began after the damage was
recorded (a backup repaired, then re-read whole); else the damage stands. Damage recorded after a
verdict was written is stamped after it too, so a sweep whose clock ran ahead cannot hide damage
a later read finds. A record written before this split (a 'verified' at `<backup-id>.json`) is read
the same way.

Signed verdicts. The health records sit in the bucket beside the backups, so anyone who can
write there could write "verified" over a damaged backup. On a store with an encryption_key every
record is signed (HMAC-SHA256, with a key derived from the encryption key by scrypt under a salt of
its own): a 'verified' record that no key of the store signed is ignored (logged), as if the
backup had not been swept. Damage need not be signed: a forged damage finding can only make the
project refuse a backup, never trust a bad one. Signing cannot stop a record being deleted or
overwritten (damage then goes unrecorded until the next read finds it again; every restore
re-checks every object before it touches the target): docs/operations.md says what would. The
manifests are signed the same way (storage/signing.py, a salt of their own), and the sweep reads
each through the catalog: no verdict is written for a manifest no key of the store signed.

One record (pair) per backup, not one file per component: the sweep and concurrent restores each
write their own keys. Writing a finding is best effort: failing to record it must not hide the
error that produced it (that error is raised anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache

from pydantic import AwareDatetime, BaseModel, ValidationError

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, NotFound
from tasks.ids import parse_backup_id
from tasks.storage.backends import backend_for
from tasks.storage.codec import derive_key
from tasks.storage.keys import read_keys
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
    # verified: when the read that proved it began (damage recorded after that is not disproved)
    read_from: AwareDatetime | None = None
    signature: str | None = None  # HMAC of the rest, on a store with an encryption key

    def mac(self, secret: str) -> str:
        body = self.model_dump_json(exclude={"signature"}).encode()
        return hmac.new(_signing_key(secret), body, hashlib.sha256).hexdigest()

    @property
    def since(self) -> datetime:
        """From when this finding holds: a verdict, from its read's start; damage, when found."""
        return self.read_from or self.checked_at

    def describe(self) -> str:
        when = f"{self.checked_at:%Y-%m-%d %H:%M:%SZ}"
        return f"{self.status.value} {when}" + (f": {self.reason}" if self.reason else "")


SIGNING_SALT = b"klb health record signature v1"  # not the objects' salts: a key of its own


@lru_cache(maxsize=16)
def _signing_key(secret: str) -> bytes:
    return derive_key(secret, SIGNING_SALT)


def _trusted(store: StoreBlock, finding: BackupHealth, key: str) -> bool:
    """A verdict counts only if a key of the store signed it (when the store has keys)."""
    secrets = read_keys(store)
    if finding.status != Status.verified or not secrets:
        return True
    if finding.signature and any(hmac.compare_digest(finding.signature, finding.mac(k)) for k in secrets):
        return True
    log.warning(
        "health record %s says %s is verified but no encryption key of the store signed it: "
        "ignored (forged, or written before records were signed; the next sweep writes a signed one)",
        key,
        finding.id,
    )
    return False


def _write(store: StoreBlock, key: str, finding: BackupHealth) -> BackupHealth | None:
    try:
        if secrets := read_keys(store):
            finding = finding.model_copy(update={"signature": finding.mac(secrets[0])})
        backend_for(store).put_bytes(key, finding.model_dump_json(indent=2).encode())
    except Exception as exc:
        log.warning("could not record that %s is %s: %s", finding.id, finding.status.value, exc)
        return None
    return finding


def record(store: StoreBlock, backup_id: str, status: Status, reason: str = "") -> BackupHealth | None:
    """Store a damage finding about `backup_id` (a verdict: mark_verified, which needs when its
    read began); log (never raise) if it cannot be stored."""
    if status == Status.verified:
        raise ValueError("a 'verified' verdict needs the start of its read: use mark_verified")
    try:
        key = layout(store).health_key(backup_id)
    except BadInput:
        return None  # not an id of ours: nothing to record it under
    now = datetime.now(UTC)
    try:  # damage found after a verdict was written outranks it, whatever the two clocks say
        verdict = _read(store, layout(store).verified_key(backup_id), backup_id)
    except Exception:  # best effort, like the write: the damage is recorded all the same
        verdict = None
    if verdict is not None and verdict.since >= now:  # the sweep's clock was ahead of ours
        now = verdict.since + timedelta(milliseconds=1)
    return _write(store, key, BackupHealth(id=backup_id, status=status, checked_at=now, reason=reason[:500]))


def is_damage(exc: BaseException) -> bool:
    """A failure that proves the stored backup damaged (not a wrong key, not a network error)."""
    if isinstance(exc, IntegrityError):
        return exc.proves_damage
    return isinstance(exc, NotFound)


def mark_damaged(store: StoreBlock, backup_id: str, reason: str) -> None:
    log.error("backup %s is damaged: %s", backup_id, reason)
    record(store, backup_id, Status.damaged, reason)


def mark_verified(store: StoreBlock, backup_id: str, read_from: datetime) -> BackupHealth | None:
    """Record that a read of `backup_id` begun at `read_from` found it whole. Written to its own
    key, never over a damage finding; damage recorded at or after `read_from` still wins (what
    was read may predate it). A verdict from an older read does not replace a newer one."""
    try:
        key = layout(store).verified_key(backup_id)
    except BadInput:
        return None
    known = _read(store, key, backup_id)
    if known is not None and known.since > read_from:
        return known  # a later read already proved it: this older one adds nothing
    verdict = BackupHealth(
        id=backup_id, status=Status.verified, checked_at=datetime.now(UTC), read_from=read_from
    )
    return _write(store, key, verdict)


def _parse(data: bytes, key: str) -> BackupHealth | None:
    try:
        return BackupHealth.model_validate_json(data)
    except ValidationError:
        log.warning("health record %s is unreadable: ignored", key)
        return None


def _read(store: StoreBlock, key: str, backup_id: str) -> BackupHealth | None:
    try:
        found = _parse(backend_for(store).get_bytes(key), key)
    except NotFound:
        return None  # none, or deleted by retention while we listed
    if found is None or found.id != backup_id:  # another's: not this one's
        return None
    return found if _trusted(store, found, key) else None


def _newest(findings: list[BackupHealth]) -> BackupHealth | None:
    """What is known, from a backup's records: the newest damage finding, unless a verdict whose
    read BEGAN after it (so it read what was there after the damage was recorded) says verified."""
    damage = max(
        (f for f in findings if f.status == Status.damaged), key=lambda f: f.checked_at, default=None
    )
    verdict = max((f for f in findings if f.status == Status.verified), key=lambda f: f.since, default=None)
    if damage is None or (verdict is not None and verdict.since > damage.checked_at):
        return verdict
    return damage


def health_of(store: StoreBlock, component: str) -> dict[str, BackupHealth]:
    """backup id -> what is known about it, for every backup of `component` with a record."""
    backend, keys = backend_for(store), layout(store)
    seen: dict[str, list[BackupHealth]] = {}
    for key in backend.list_keys(keys.health_dir(component)):
        if not key.endswith(".json"):
            continue
        try:
            finding = _parse(backend.get_bytes(key), key)
        except NotFound:
            continue  # deleted by retention while we listed
        if finding is None or not _trusted(store, finding, key):
            continue
        try:
            own = key in keys.health_keys(finding.id)  # a record copied under another id: not its
        except BadInput:
            own = False
        if own:
            seen.setdefault(finding.id, []).append(finding)
    return {i: f for i, found in seen.items() if (f := _newest(found)) is not None}


def finding(store: StoreBlock, backup_id: str) -> BackupHealth | None:
    """What is known about one backup, or None."""
    parse_backup_id(backup_id)
    found = [_read(store, key, backup_id) for key in layout(store).health_keys(backup_id)]
    return _newest([f for f in found if f is not None])


def damaged_ids(store: StoreBlock, component: str) -> dict[str, str]:
    """backup id -> why, for the backups of `component` last found damaged."""
    return {i: h.reason for i, h in health_of(store, component).items() if h.status == Status.damaged}
