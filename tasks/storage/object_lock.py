"""S3 Object Lock as this project uses it: what a backup's retain-until is, the pre-flight of a
locked store, which backups are still locked (retention), which stored versions are not the ones
a manifest pinned (the sweep), and the lock census (metrics).

A backup's objects and its manifest are locked until its expiry (backup-table.yaml retention
from the end of the backup) plus the store's margin. Only S3 stores lock; every function here
answers "nothing locked" for a local store. Requests go through tasks/storage/backends/s3_lock.py.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from blocks.store import StoreBlock
from tasks.errors import ConfigurationError, NotFound
from tasks.models import Manifest
from tasks.storage.backends import Backend, S3Backend
from tasks.storage.backends.s3_lock import DELETE_MARKER, BucketLock, ceil_second
from tasks.storage.layout import is_manifest_key, manifest_key_beside

log = logging.getLogger(__name__)
LEGAL_HOLD = "legal hold"  # a lock with no date: until someone lifts it (s3api put-object-legal-hold)


def lock_mode(store: StoreBlock) -> str | None:
    """GOVERNANCE / COMPLIANCE when the store block asks for a lock on every write."""
    return getattr(store, "object_lock_mode", None)


def table_retention(component: str) -> timedelta | None:
    from tasks.table import policy

    try:
        return policy(component).retention
    except NotFound:
        return None


def lock_until(store: StoreBlock, expires_at: datetime) -> datetime | None:
    """Retain-until of a backup that expires at `expires_at` (None: the store does not lock)."""
    if not lock_mode(store):
        return None
    return ceil_second(expires_at + timedelta(days=store.object_lock_margin_days))


def _put_lock_cmd(bucket: str, days: int) -> str:
    return (
        f"aws s3api put-object-lock-configuration --bucket {bucket} --object-lock-configuration "
        f"'ObjectLockEnabled=Enabled,Rule={{DefaultRetention={{Mode=COMPLIANCE,Days={days}}}}}'"
    )


def check_bucket(status: BucketLock, mode: str | None, component: str, retention: timedelta | None) -> None:
    """Pure: refuse a store/bucket pair that cannot protect `component`'s backups for their
    whole retention; the message says what to change. Changes nothing."""
    b = status.bucket
    if mode and status.versioning != "Enabled":
        raise ConfigurationError(
            f"the store block asks for object lock ({mode}) but bucket {b} has versioning "
            f"{status.versioning or 'never enabled'}: object lock needs versioning on "
            f"(aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled), "
            "or unset object_lock_mode"
        )
    if mode and not status.lock_enabled:
        raise ConfigurationError(
            f"the store block asks for object lock ({mode}) but bucket {b} does not have object "
            f"lock enabled: enable it (aws s3api put-object-lock-configuration --bucket {b} "
            "--object-lock-configuration ObjectLockEnabled=Enabled), or use a bucket created with "
            "--object-lock-enabled-for-bucket, or unset object_lock_mode"
        )
    if mode or not status.default_days or retention is None:
        return  # explicit per-backup locks always reach the expiry; no default: nothing to compare
    days = -(-int(retention.total_seconds()) // 86400)
    if status.default_days < days:
        raise ConfigurationError(
            f"bucket {b} locks new objects for {status.default_days} days by default "
            f"({status.default_mode}) but {component} keeps backups {days} days: in their last "
            f"{days - status.default_days} days they could be deleted with the worker's credentials. "
            f"Set object_lock_mode on the store block (each backup is then locked to its own expiry), "
            f"or raise the default retention to at least {days} days ({_put_lock_cmd(b, days)})"
        )


def preflight(
    store: StoreBlock, backend: Backend, component: str, retention: timedelta | None
) -> BucketLock | None:
    """Before a backup of `component` starts: check and report the bucket's lock configuration.
    Two requests on an S3 store; nothing for a local one."""
    if not isinstance(backend, S3Backend):
        return None
    mode = lock_mode(store)
    try:
        status = backend.bucket_lock()
    except ConfigurationError as exc:
        if mode:
            raise
        # a server without the lock API (some S3-compatible ones) cannot have locked anything
        log.info("bucket %s: no object lock information (%s)", store.bucket, exc)
        return None
    check_bucket(status, mode, component, retention or table_retention(component))
    if mode:
        log.info(
            "%s; backups of %s are locked (%s) until their expiry + %d day(s)",
            status.describe(),
            component,
            mode,
            store.object_lock_margin_days,
        )
    elif status.lock_enabled and not status.default_mode:
        log.warning(
            "%s and the store block sets no object_lock_mode: backups are NOT locked", status.describe()
        )
    else:
        log.info("%s", status.describe())
    return status


def pin_current(backend: Backend, key: str, until: datetime | None) -> str | None:
    """The version id of `key`'s current version (None where the store keeps no versions),
    locked until `until` when given."""
    if not isinstance(backend, S3Backend):
        return None
    if until is not None:
        return backend.ensure_lock(key, None, until)
    version = backend.current_version(key)
    return None if version in (None, "null") else version


def _bucket_locks(backend: Backend) -> bool | None:
    """Whether the bucket has Object Lock on; None when its configuration cannot be read (a
    server without the lock API, or a worker not allowed to read it: AccessDenied). Unknown is
    never 'no lock': whoever deletes or counts asks each version's lock instead (a HEAD answers
    with no lock where there is none)."""
    if not isinstance(backend, S3Backend):
        return False
    try:
        return backend.bucket_lock().lock_enabled
    except ConfigurationError as exc:
        log.warning("the bucket's Object Lock configuration cannot be read (%s): asking each object", exc)
        return None


def written_manifests(
    store: StoreBlock, backend: Backend, folder: str, now: datetime
) -> dict[str, str] | None:
    """On a store whose bucket locks: each manifest key under `folder` -> the version to read,
    the FIRST one written (a manifest is written once: a later version is a forgery, and it
    could pin other bytes). A manifest hidden by a delete marker while its version is still
    locked is kept: the project never deletes before a lock ends, so someone hid it. None on a
    store that keeps no locked versions: read the current version."""
    if not isinstance(backend, S3Backend):
        return None
    try:
        enabled = backend.bucket_lock().lock_enabled
    except ConfigurationError:  # a server without the lock API, or a worker not allowed to ask
        enabled = bool(lock_mode(store))  # the store block says it locks (each backup checked it)
    if not enabled:
        return None
    out: dict[str, str] = {}
    hidden: list[tuple[str, str]] = []
    for key, vids in backend.key_versions(folder).items():
        written = [v for v in vids if v != DELETE_MARKER]
        if not is_manifest_key(key) or not written:
            continue
        if vids[0] == DELETE_MARKER:
            hidden.append((key, written[-1]))
            continue
        if len(written) > 1:
            log.warning("manifest %s was replaced (%d versions): reading the first", key, len(written))
        out[key] = written[-1]
    # Every hidden manifest's lock is asked, whatever the backup's age: a backup retention keeps
    # past its window is locked again by each run, so an old one hidden with ALL its objects
    # (delete markers on every key of its folder) is still locked, and must not vanish from
    # 'latest' and retention. The cost is one HEAD per deleted manifest whose version the
    # bucket's lifecycle rule has not yet expired (docs/operations.md), made in parallel.
    if hidden:
        found = _retention_of_keys(backend, hidden)
        for (key, version), (_, until, held) in zip(hidden, found, strict=True):
            if not (held or (until is not None and until > now)):
                continue  # deleted by retention once its lock ran out
            log.warning(
                "manifest %s is hidden by a delete marker while its version %s is locked: someone "
                "hid the backup (still listed, restorable from its locked versions); see who in the "
                "bucket's access logs, then remove the delete markers of its folder (aws s3api "
                "list-object-versions --prefix %s, then delete-object --version-id <marker>)",
                key,
                version,
                key.rsplit("/", 1)[0] + "/",
            )
            out[key] = version
    return out


def _retention_of_keys(
    backend: S3Backend, keys: list[tuple[str, str | None]]
) -> list[tuple[str | None, datetime | None, bool]]:
    def one(kv: tuple[str, str | None]) -> tuple[str | None, datetime | None, bool]:
        try:
            return backend.retention_of(*kv)
        except NotFound:
            return None, None, False

    with ThreadPoolExecutor(max_workers=10) as pool:
        return list(pool.map(one, keys))


def locked_until(
    backend: Backend, groups: dict[str, list[str] | list[tuple[str, str | None]]], now: datetime
) -> dict[str, tuple[str, datetime | None]]:
    """Of `groups` (name -> a backup's keys, or (key, pinned version id) pairs), those with a
    version locked past `now` or under a legal hold: name -> (mode, latest retain-until), and
    (LEGAL_HOLD, None) when any version is held (no date: it lasts until someone lifts it). A
    bare key means its current version. Retention asks this before it deletes."""
    if not groups or _bucket_locks(backend) is False:
        return {}
    assert isinstance(backend, S3Backend)
    flat = [(name, k if isinstance(k, tuple) else (k, None)) for name, keys in groups.items() for k in keys]
    found = _retention_of_keys(backend, [kv for _, kv in flat])
    out: dict[str, tuple[str, datetime | None]] = {}
    for (name, _), (mode, until, held) in zip(flat, found, strict=True):
        have = out.get(name)
        if held:
            out[name] = (LEGAL_HOLD, None)
        elif mode and until and until > now and (have is None or (have[1] is not None and until > have[1])):
            out[name] = (mode, until)
    return out


def extend_locks(
    store: StoreBlock, backend: Backend, manifests: list[Manifest], until: datetime, now: datetime
) -> int:
    """Lengthen the lock of every pinned version of `manifests` (objects, and each manifest as
    first written) to at least `until`; a lock is never shortened. Returns the versions asked.
    Retention calls this for the backups it keeps past their window: their first lock ran out
    with the window, and a backup retention keeps but nothing locks is one a stolen credential
    deletes for good. Nothing for a store that does not lock (no mode asked, or local)."""
    if not lock_mode(store) or not isinstance(backend, S3Backend) or not manifests:
        return 0
    pinned: list[tuple[str, str | None]] = [(o.key, o.version_id) for m in manifests for o in m.objects]
    for m in manifests:  # the manifest's first version: the one the catalog reads
        mkey = manifest_key_beside(m.objects[0].key)
        written = written_manifests(store, backend, mkey.rsplit("/", 1)[0], now) or {}
        pinned.append((mkey, written.get(mkey)))
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda kv: backend.ensure_lock(kv[0], kv[1], until), pinned))
    return len(pinned)


def pinned_version_problems(
    backend: Backend, component_dir: str, manifests: list[Manifest]
) -> dict[str, str]:
    """Tamper evidence: key -> why, for each object whose current version is not the one its
    manifest pinned (overwritten, or hidden by a delete marker), and each manifest stored more
    than once (manifests are written once). A restore still reads the pinned versions; someone
    with write access tried to change a backup. Needs a versioned bucket: else {}."""
    if not isinstance(backend, S3Backend) or not any(o.version_id for m in manifests for o in m.objects):
        return {}
    versions = backend.key_versions(component_dir)
    problems: dict[str, str] = {}
    for m in manifests:
        for o in m.objects:
            now_at = (versions.get(o.key) or [DELETE_MARKER])[0]
            if o.version_id and now_at != o.version_id:
                what = "a delete marker" if now_at == DELETE_MARKER else f"version {now_at}"
                problems[o.key] = (
                    f"current version is {what}, not the version {o.version_id} backup {m.id} pinned: "
                    "overwritten or deleted since (restores still read the pinned version)"
                )
        mkey = manifest_key_beside(m.objects[0].key) if m.objects else None
        if mkey and (versions.get(mkey) or [None])[0] == DELETE_MARKER:
            problems[mkey] = (
                f"the manifest of {m.id} is hidden by a delete marker while its version is locked: "
                "someone hid the backup (the catalog still lists it and restores read the locked "
                "versions); remove the delete markers of its folder (aws s3api list-object-versions "
                "--prefix <its folder>, then delete-object --version-id <marker>)"
            )
        elif mkey and len(versions.get(mkey, [])) > 1:
            problems[mkey] = (
                f"the manifest of {m.id} has {len(versions[mkey])} versions but is written once: it was "
                "replaced; compare the versions (aws s3api list-object-versions) before trusting it"
            )
    return problems


@dataclass
class LockCensus:
    objects: int
    unlocked: int  # objects whose current version has no lock, or one already past
    earliest_retain_until: datetime | None

    def gauges(self, kind: str) -> dict[str, float]:
        out = {f"{kind}_objects_without_lock": float(self.unlocked)}
        if self.earliest_retain_until is not None:
            out[f"{kind}_lock_earliest_retain_until_timestamp_seconds"] = (
                self.earliest_retain_until.timestamp()
            )
        return out


def census(backend: Backend, manifests: list[Manifest], now: datetime) -> LockCensus | None:
    """Every object of `manifests` (the pinned versions): how many are not locked now, and the
    earliest retain-until among those that are. None for a local store (it cannot lock)."""
    if not isinstance(backend, S3Backend):
        return None
    pinned: list[tuple[str, str | None]] = [(o.key, o.version_id) for m in manifests for o in m.objects]
    if _bucket_locks(backend) is False:
        return LockCensus(objects=len(pinned), unlocked=len(pinned), earliest_retain_until=None)
    found: list[Any] = _retention_of_keys(backend, pinned)
    dated = [until for mode, until, _ in found if mode and until and until > now]
    held = sum(1 for mode, until, on_hold in found if on_hold and not (mode and until and until > now))
    return LockCensus(
        objects=len(pinned),
        unlocked=len(pinned) - len(dated) - held,
        earliest_retain_until=min(dated, default=None),
    )


def check_wal_archive(status: BucketLock, retention: timedelta, component: str = "postgres-pitr") -> None:
    """Pure: base backups are locked, so the WAL they need must be too. barman-cloud-wal-archive
    sends no Object Lock headers: the archive bucket's default retention is the only lock WAL
    gets. A segment archived at t is needed by the base backup before it, which expires at most
    `retention` after t, so the default must be at least `retention`."""
    days = -(-int(retention.total_seconds()) // 86400)
    if status.lock_enabled and status.default_days and status.default_days >= days:
        return
    raise ConfigurationError(
        f"the store locks {component} base backups, but the WAL archive ({status.describe()}) does "
        f"not lock WAL for the {days} days they are kept: barman-cloud-wal-archive cannot set "
        "object lock headers, so give the archive bucket a default retention of at least "
        f"{days} days ({_put_lock_cmd(status.bucket, days)}), or unset object_lock_mode"
    )
