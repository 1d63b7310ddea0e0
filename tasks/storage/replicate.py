"""The DR store: a second store (another bucket, region, credentials) holding a copy of every backup.

Two modes ($KLB_DR_MODE):
- `copy` (default): after a backup is written, stream each object byte-for-byte from the primary
  to the DR store (no decode: the same stored bytes, so the same sha256), read the copy back and
  check its sha256, then write the DR manifest last. The DR manifest is the primary's with keys
  re-rooted under the DR prefix and the DR version ids (S3 version ids are per bucket), resealed
  and signed with the DR store's key (tasks/storage/signing.py).
- `verify`: the bucket has native replication (S3 CRR). Nothing is copied; the DR copy is read
  and checked by sha256, because replication status alone is not proof.

Restore from DR: every flow takes `store=`; pass the DR store's block name and it reads from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from enum import StrEnum

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.store import StoreBlock
from tasks.errors import BackupError, ConfigurationError, IntegrityError, NotFound
from tasks.models import Manifest
from tasks.storage import object_lock
from tasks.storage.backends import Backend, backend_for
from tasks.storage.keys import read_keys
from tasks.storage.layout import layout
from tasks.storage.signing import signed
from tasks.storage.stores import load_store

log = logging.getLogger(__name__)


class DRMode(StrEnum):
    copy = "copy"
    verify = "verify"


class ReplicationReport(BaseModel):
    id: str
    mode: DRMode
    location: str
    objects: int
    bytes: int
    copied: int


def load_dr_store(ref: str | StoreBlock | None = None) -> StoreBlock | None:
    """The DR store block: given, by name, or named by $KLB_DR_STORE; None when DR is not set up."""
    ref = ref or os.environ.get("KLB_DR_STORE")
    return load_store(ref) if ref else None


def dr_configured() -> bool:
    return bool(os.environ.get("KLB_DR_STORE"))


def dr_mode() -> DRMode:
    raw = os.environ.get("KLB_DR_MODE", DRMode.copy.value)
    try:
        return DRMode(raw)
    except ValueError:
        raise ConfigurationError(
            f"KLB_DR_MODE={raw!r}: use 'copy' or 'verify' (native replication)"
        ) from None


def _check_keys(source: StoreBlock, dest: StoreBlock) -> None:
    src = source.encryption_key.get_secret_value() if source.encryption_key else None
    dst = dest.encryption_key.get_secret_value() if dest.encryption_key else None
    if src != dst:
        raise ConfigurationError(
            "the DR store block must carry the same client-side encryption key as the primary "
            "(copies are byte-for-byte): set encryption_key on the DR store block"
        )
    if not set(read_keys(source)) <= set(read_keys(dest)):  # copies of older backups need theirs
        raise ConfigurationError(
            "the DR store block must also hold the primary's previous_encryption_keys (copies of "
            "backups written before a key rotation are read with them): copy them to the DR block"
        )
    check_not_primary(source, dest)


def check_not_primary(primary: StoreBlock, dest: StoreBlock) -> None:
    """A DR store that is the primary holds no second copy: a backup skips its copy, and a sweep
    comparing the store with itself finds every copy identical. Refused, naming what to fix."""
    if primary.location == dest.location:
        raise ConfigurationError(
            f"the DR store is the primary store ({dest.location}): there is no second copy; point "
            "$KLB_DR_STORE (or dr_store) at another bucket's store block"
        )


def _stored_sha256(backend: Backend, key: str, version_id: str | None, size: int) -> str:
    digest, seen = hashlib.sha256(), 0
    for chunk in backend.read(key, version_id):
        seen += len(chunk)
        if seen > size:
            break
        digest.update(chunk)
    return digest.hexdigest() if seen == size else f"size {seen} != {size}"


def dr_manifest(manifest: Manifest, dest: StoreBlock, versions: dict[str, str | None]) -> Manifest:
    keys = layout(dest)
    objects = [
        o.model_copy(update={"key": keys.object_key(manifest.id, o.name), "version_id": versions.get(o.name)})
        for o in manifest.objects
    ]
    return signed(manifest.model_copy(update={"objects": objects}), dest)  # its keys: signed anew


def _dr_lock_until(manifest: Manifest, dest: StoreBlock, dst: Backend):
    """Retain-until of the DR copy: the backup's expiry + the DR store's margin. The DR store may
    lock while the primary does not (the layering docs/operations.md recommends)."""
    if not object_lock.lock_mode(dest):
        return None
    retention = object_lock.table_retention(manifest.component)
    object_lock.preflight(dest, dst, manifest.component, retention)
    expires = manifest.expires_at or (manifest.finished_at + retention if retention else None)
    if expires is None:
        raise ConfigurationError(
            f"backup {manifest.id} has no expiry, and the DR store {dest.location} locks every copy "
            "until its expiry: add the component to backup-table.yaml"
        )
    return object_lock.lock_until(dest, expires)


def replicate_backup(manifest: Manifest, source: StoreBlock, dest: StoreBlock) -> ReplicationReport:
    """Copy one backup to the DR store and prove the copy; the DR manifest is written last.
    Idempotent: objects whose DR copy already checks out are not copied again."""
    _check_keys(source, dest)
    src, dst = backend_for(source), backend_for(dest)
    keys = layout(dest)
    until = _dr_lock_until(manifest, dest, dst)
    versions: dict[str, str | None] = {}
    copied = 0
    for obj in manifest.objects:
        key = keys.object_key(manifest.id, obj.name)
        try:
            if _stored_sha256(dst, key, None, obj.size) == obj.sha256:
                # pin (and on a locked DR store lock) the copy found, as a new one would be
                versions[obj.name] = object_lock.pin_current(dst, key, until)
                continue
        except NotFound:
            pass
        writer = dst.open_writer(key, lock_until=until)
        try:
            for chunk in src.read(obj.key, obj.version_id):
                writer.write(chunk)
            versions[obj.name] = writer.commit()
        except BaseException:
            writer.abort()
            raise
        copied += 1
        got = _stored_sha256(dst, key, versions[obj.name], obj.size)
        if got != obj.sha256:
            raise IntegrityError(f"DR copy of {obj.key} does not match the primary's sha256 ({got[:16]})")
    copy = dr_manifest(manifest, dest, versions)
    body, mkey = copy.stored(), keys.manifest_key(manifest.id)
    try:
        unchanged = dst.get_bytes(mkey) == body  # a re-run: manifests are written once
    except NotFound:
        unchanged = False
    if not unchanged:
        dst.put_bytes(mkey, body, lock_until=until)
    log.info("replicated %s to %s (%d objects copied)", manifest.id, dest.location, copied)
    return ReplicationReport(
        id=manifest.id,
        mode=DRMode.copy,
        location=f"{dest.location}",
        objects=len(manifest.objects),
        bytes=manifest.size,
        copied=copied,
    )


def verify_replica(manifest: Manifest, dest: StoreBlock) -> ReplicationReport:
    """Native replication: the DR copy must exist and every object's sha256 must match."""
    from tasks.storage.catalog import get_backup

    try:
        copy = get_backup(dest, manifest.id)
    except NotFound:
        raise NotFound(f"backup {manifest.id} is not (yet) in the DR store {dest.location}") from None
    if why := copy_difference(manifest, copy):
        raise IntegrityError(f"DR manifest of {manifest.id} {why}")
    dst = backend_for(dest)
    for have in copy.objects:
        got = _stored_sha256(dst, have.key, have.version_id, have.size)
        if got != have.sha256:
            raise IntegrityError(f"DR copy {have.key} does not match the primary's sha256")
    return ReplicationReport(
        id=manifest.id,
        mode=DRMode.verify,
        location=dest.location,
        objects=len(manifest.objects),
        bytes=manifest.size,
        copied=0,
    )


def replicate_or_verify(manifest: Manifest, source: StoreBlock, dest: StoreBlock) -> ReplicationReport:
    if dr_mode() == DRMode.verify:
        return verify_replica(manifest, dest)
    return replicate_backup(manifest, source, dest)


def _retry_transient(task_obj, task_run, state) -> bool:
    from tasks.errors import is_retryable

    try:
        state.result()
    except Exception as exc:
        return is_retryable(exc)
    return False


@task(
    task_run_name="replicate-{manifest.id}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
def replicate_task(manifest: Manifest, store: StoreBlock, dr_store: str | StoreBlock | None = None):
    """After a backup: copy it to the DR store (or verify the native replica). No-op without DR.
    A failure fails the run (the primary backup stays stored and verified) and is pushed as a
    klb_replication failure."""
    from tasks.metrics import tracked

    dest = load_dr_store(dr_store)
    if dest is None:
        return None
    if dest.location == store.location:  # written to the DR store itself (during a DR, say); a
        # DR store that is the primary by mistake is refused by the sweep (check_not_primary)
        log.warning("backup %s is in the DR store %s itself: no copy made", manifest.id, dest.location)
        return None
    with tracked("replication", manifest.component):
        try:
            return replicate_or_verify(manifest, store, dest)
        except BackupError as exc:  # same class: the retry condition still sees what it was
            raise type(exc)(
                f"backup {manifest.id} is stored and verified in {store.location}, but its DR copy "
                f"to {dest.location} failed: {exc}"
            ) from exc


def _as_copied(manifest: Manifest) -> dict:
    """What a faithful copy keeps: everything but where each object sits (the DR store's own keys
    and version ids) and the seal and signature over those."""
    body = manifest.model_dump(mode="json", exclude={"checksum", "signature"})
    for obj in body["objects"]:
        del obj["key"], obj["version_id"]
    return body


def copy_difference(primary: Manifest, copy: Manifest) -> str | None:
    """Why `copy` is not a copy of `primary` (None when it is). Every field counts, not only the
    objects' checksums: a copy whose source time, kind, engine facts, fingerprint or object
    names differ would be restored, chosen as latest or at-or-before, or kept by retention
    otherwise than the primary it claims to be."""
    want, have = _as_copied(primary), _as_copied(copy)
    if len(want["objects"]) != len(have["objects"]):
        return f"lists {len(have['objects'])} objects, the primary {len(want['objects'])}"
    for i, (w, h) in enumerate(zip(want["objects"], have["objects"], strict=True)):
        if w != h:
            field = next(k for k in sorted(w.keys() | h.keys()) if w.get(k) != h.get(k))
            return f"differs from the primary at object {i} ({w['name']}): {field}"
    field = next((k for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)), None)
    return f"differs from the primary in its {field}" if field else None


def dr_copy_problems(primary: list[Manifest], dr: list[Manifest]) -> dict[str, str]:
    """Backups of `primary` the DR store lacks, or holds as something else: backup id -> why."""
    have = {m.id: m for m in dr}
    problems: dict[str, str] = {}
    for m in primary:
        if m.id not in have:
            problems[m.id] = "missing from the DR store: replication is behind or failing"
        elif why := copy_difference(m, have[m.id]):
            problems[m.id] = f"the DR manifest {why}: the copy is not the primary's backup"
    return problems


def dr_only_problems(
    primary: set[str],
    primary_damaged: dict[str, str],
    dr: list[Manifest],
    dr_good: set[str],
    now: datetime | None = None,
) -> dict[str, str]:
    """Backups whose only good copy is the DR store's: backup id -> why, and what to do.

    `primary`: the ids the primary store lists; `primary_damaged`: id -> why, the primary's damage
    findings; `dr`: the DR store's manifests (each checked against its checksum and folder);
    `dr_good`: those the sweep just re-read whole. A backup the primary knows damaged counts
    whatever its age. One the primary lacks counts only while it is a routine backup within its
    retention (backup-table.yaml, from its source time): the primary's retention never deletes
    those, so it was lost; older ones the primary's retention may have deleted first."""
    now = now or datetime.now(UTC)
    out: dict[str, str] = {}
    for m in dr:
        if m.id in primary_damaged:
            primary_state = f"the primary's copy is damaged ({primary_damaged[m.id][:200]})"
        elif m.id not in primary:
            keep = object_lock.table_retention(m.component)
            if not m.routine or (keep is not None and now - m.source_time > keep):
                continue
            primary_state = "the primary store does not hold it (lost or deleted within its retention)"
        else:
            continue
        copy = (
            "the DR copy was read whole and checks out"
            if m.id in dr_good
            else "the DR manifest checks out but its objects were not re-read by this sweep (run it "
            "with a larger `newest`, or verify_backup on the DR store)"
        )
        out[m.id] = (
            f"only the DR store holds a good copy: {primary_state}; {copy}. Restore it from the DR "
            f"store by id (backup_id='{m.id}', store=<the DR store block>): the primary's 'latest' "
            "will not give it"
        )
    return out
