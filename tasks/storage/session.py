"""The store: any byte stream in, stored + checksummed + (optionally) encrypted objects out.

A backup is written through a `BackupSession`: objects stream in, each is checked (by the store
itself when it can: S3 verifies a SHA-256 per part on upload; otherwise read back, unless the
store block says not to), and the manifest is written last. If anything fails,
every object already written is deleted and open uploads are aborted, so a backup either
exists whole, with its manifest, or not at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from blocks.store import StoreBlock
from tasks.components.registry import SPECS, BackupKind
from tasks.errors import BadInput, IntegrityError
from tasks.ids import check_object_name, new_backup_id
from tasks.models import KIND_LABEL, Compression, Manifest, StoredObject, kind_label
from tasks.storage import object_lock, progress
from tasks.storage.backends import Backend, backend_for
from tasks.storage.codec import Decoder, Encoder, iter_chunks
from tasks.storage.keys import current_secret, read_keys
from tasks.storage.layout import MANIFEST_NAME, layout
from tasks.storage.signing import signed

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_BACK_JOBS = max(1, min(4, os.cpu_count() or 1))  # objects read back at once (commit)


def preflight(store: StoreBlock) -> None:
    """Cheap checks before any engine starts: the keys are usable, the bucket answers to us."""
    read_keys(store)
    backend_for(store).preflight()


def write_object(
    store: StoreBlock,
    key: str,
    source: Iterable[bytes] | Any,
    name: str,
    compression: Compression | None = None,
    meta: dict[str, Any] | None = None,
    backend: Backend | None = None,
    lock_until: datetime | None = None,
    tracker: progress.Progress | None = None,
) -> StoredObject:
    """Stream `source` (iterable of bytes or file-like) into `key`. Memory stays bounded.
    `lock_until`: retain-until of the object on a store that locks (S3 Object Lock).
    `tracker` (default: the flow's, tasks/storage/progress.py) counts the raw bytes streamed."""
    return _write(store, key, source, name, compression, meta, backend, lock_until, tracker)[0]


def _write(
    store: StoreBlock,
    key: str,
    source: Iterable[bytes] | Any,
    name: str,
    compression: Compression | None,
    meta: dict[str, Any] | None,
    backend: Backend | None,
    lock_until: datetime | None = None,
    tracker: progress.Progress | None = None,
) -> tuple[StoredObject, bool]:
    """write_object, and whether the store itself confirmed every byte (no read-back needed)."""
    backend = backend or backend_for(store)
    tracker = tracker or progress.current()
    tick = progress.ticker(tracker)
    kind = compression or store.compression
    encoder = Encoder(kind, current_secret(store), store.compression_level)
    writer = backend.open_writer(key, lock_until=lock_until)
    try:
        for chunk in iter_chunks(source):
            out = encoder.update(chunk)
            if out:
                writer.write(out)
            tick(len(chunk))
        writer.write(encoder.finish())
        version_id = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if tracker:
        tracker.object_done()
    obj = StoredObject(
        name=name,
        key=key,
        size=encoder.size,
        sha256=encoder.hash.hexdigest(),
        raw_size=encoder.raw_size,
        raw_sha256=encoder.raw_hash.hexdigest(),
        compression=kind,
        encryption=encoder.encryption,
        version_id=version_id,
        meta=meta or {},
    )
    return obj, bool(getattr(writer, "checked_by_store", False))


def read_object(store: StoreBlock, obj: StoredObject, backend: Backend | None = None) -> Iterator[bytes]:
    """Yield the raw (decoded) bytes of `obj`; raise IntegrityError on any mismatch.

    The stored sha256 can only be known at the end: consumers must treat the stream as
    untrusted until it is exhausted (restore aside, then cut over).
    """
    # the flow's progress is captured now: the stream is often consumed in a feeder thread
    return _read_object(store, obj, backend, progress.current())


def _read_object(store: StoreBlock, obj: StoredObject, backend: Backend | None, tracker) -> Iterator[bytes]:
    backend = backend or backend_for(store)
    tick = progress.ticker(tracker)
    decoder = Decoder(obj.compression, obj.encryption, read_keys(store))
    for chunk in backend.read(obj.key, obj.version_id):
        if decoder.size + len(chunk) > obj.size:
            raise IntegrityError(f"{obj.key} is larger than its manifest says ({obj.size} bytes)")
        out = _named(obj, decoder.update, chunk)
        tick(len(chunk))
        if out:
            yield out
    tail = _named(obj, decoder.finish)
    _check(obj, decoder)
    if tail:
        yield tail
    _check(obj, decoder, raw=True)
    if tracker:
        tracker.object_done()


def consume_checked(stream: Iterator[bytes], consume: Callable[[Iterator[bytes]], T]) -> T:
    """`consume(stream)` for a stream from `read_object`, the one read of a restore. Its checks
    run at the end of the stream, so whatever the consumer left unread (a tool that stopped
    early) is read and checked too; and when the consumer fails on bad bytes, the error says
    the backup is damaged (IntegrityError), not that the tool failed."""
    try:
        result = consume(stream)
    except IntegrityError:
        raise
    except Exception as failure:
        # were the bytes the cause? Reading the rest costs at most what the old verify-first
        # read cost up front, and only on a restore that is failing anyway
        try:
            for _ in stream:
                pass
        except IntegrityError:
            raise
        except Exception as exc:  # the store failing now says less than the consumer's error
            log.warning("could not read the rest of the backup after the restore failed: %s", exc)
        raise failure from None
    for _ in stream:
        pass
    return result


def _named(obj: StoredObject, step, *args):
    """Decoder errors (corrupt zstd, failed authentication) name the object they come from."""
    try:
        return step(*args)
    except IntegrityError as exc:
        named = type(exc)(f"{obj.key}: {exc}")  # keep the kind (KeyNotHeld is not damage)
        named.proves_damage = exc.proves_damage
        raise named from None


def _check(obj: StoredObject, decoder: Decoder, raw: bool = False) -> None:
    if not raw:
        if decoder.size != obj.size:
            raise IntegrityError(
                f"{obj.key}: stored size {decoder.size} != manifest {obj.size} (truncated or replaced)"
            )
        if decoder.hash.hexdigest() != obj.sha256:
            raise IntegrityError(f"{obj.key}: sha256 does not match the manifest (object corrupted)")
        return
    if decoder.raw_size != obj.raw_size or decoder.raw_hash.hexdigest() != obj.raw_sha256:
        raise IntegrityError(f"{obj.key}: decoded content does not match the manifest")


def verify_object(store: StoreBlock, obj: StoredObject, backend: Backend | None = None) -> None:
    """Read `obj` whole and check it; returns only if every byte matches."""
    for _ in _read_object(store, obj, backend, None):  # a check, not progress of the restore
        pass


def _with_kind(component: str, labels: dict[str, str] | None) -> dict[str, str]:
    """Every backup says why it was taken (labels["kind"], default on-demand), and only a kind
    its component makes (the registry row's `kinds`)."""
    out = dict(labels or {})
    out[KIND_LABEL] = kind_label(out.get(KIND_LABEL, BackupKind.on_demand))
    row = SPECS.get(component)
    if row is not None and out[KIND_LABEL] not in row.kinds:
        raise BadInput(
            f"{component} makes no {out[KIND_LABEL]} backups (it makes: "
            f"{', '.join(sorted(k.value for k in row.kinds))})"
        )
    return out


class BackupSession:
    """Collects the objects of one backup; `commit` verifies them and writes the manifest last.

    On a store with object lock every object is locked as it is written (until now + retention +
    margin) and, at commit, every object and the manifest until the backup's expiry + margin."""

    def __init__(
        self,
        store: StoreBlock,
        component: str,
        labels: dict[str, str] | None = None,
        retention: timedelta | None = None,
    ):
        self.store = store
        self.backend = backend_for(store)
        self.backend.preflight()
        self.retention = retention or object_lock.table_retention(component)
        object_lock.preflight(store, self.backend, component, self.retention)
        self.started_at = datetime.now(UTC)
        self.id = new_backup_id(component, self.started_at)
        self.component = component
        self.layout = layout(store)
        self.objects: list[StoredObject] = []
        self._checked_by_store: set[str] = set()  # keys the store verified on upload
        self.engine: dict[str, Any] = {}
        self.fingerprint: dict[str, Any] | None = None
        self.source_time: datetime | None = None
        self.labels = _with_kind(component, labels)
        self.manifest: Manifest | None = None
        self.progress = progress.current()  # writes may come from engine threads: keep it here
        self._manifest_in_doubt = False

    @property
    def prefix(self) -> str:
        """The backup's folder (follows `id`)."""
        return self.layout.backup_dir(self.id)

    def write(
        self,
        name: str,
        source: Iterable[bytes] | Any,
        compression: Compression | None = None,
        meta: dict[str, Any] | None = None,
    ) -> StoredObject:
        check_object_name(name)
        if name == MANIFEST_NAME or any(o.name == name for o in self.objects):
            raise BadInput(f"object name {name!r} is reserved or already used in this backup")
        key = self.layout.object_key(self.id, name)
        # locked from the first byte; commit lengthens it to the backup's exact expiry
        until = object_lock.lock_until(self.store, datetime.now(UTC) + (self.retention or timedelta()))
        obj, checked = _write(
            self.store, key, source, name, compression, meta, self.backend, until, self.progress
        )
        self.objects.append(obj)
        if checked:
            self._checked_by_store.add(key)
        log.info("stored %s (%d bytes, sha256 %s)", key, obj.size, obj.sha256[:12])
        return obj

    def commit(self, retention: timedelta | None = None) -> Manifest:
        if not self.objects:
            raise BadInput(f"backup {self.id} produced no objects: nothing to record")
        verified_at = None
        if self.store.verify_after_write:
            # a read-back only where the store could not check the upload itself (a local
            # directory, an S3-compatible server that keeps no checksums)
            # several at a time: hashing and zstd let go of the GIL, and one object read back
            # at a time left a core idle at the end of every backup (docs/performance.md)
            pending = [obj for obj in self.objects if obj.key not in self._checked_by_store]
            with ThreadPoolExecutor(READ_BACK_JOBS, thread_name_prefix="read-back") as pool:
                list(pool.map(lambda obj: verify_object(self.store, obj, self.backend), pending))
            verified_at = datetime.now(UTC)
        self._still_stored()
        finished = datetime.now(UTC)
        lock_for = retention or self.retention  # expires_at stays as before: from `retention` only
        until = object_lock.lock_until(self.store, finished + lock_for) if lock_for else None
        if object_lock.lock_mode(self.store) and until is None:
            raise BadInput(
                f"backup {self.id}: the store locks every backup until its expiry, and "
                f"{self.component} has no retention: add it to backup-table.yaml or pass one"
            )
        if until is not None:
            self.objects = [
                o.model_copy(update={"version_id": self.backend.ensure_lock(o.key, o.version_id, until)})  # type: ignore[attr-defined]
                for o in self.objects
            ]
        manifest = Manifest(
            id=self.id,
            component=self.component,
            source_time=self.source_time or self.started_at,
            started_at=self.started_at,
            finished_at=finished,
            objects=self.objects,
            engine=self.engine,
            fingerprint=self.fingerprint,
            expires_at=finished + retention if retention else None,
            verified_at=verified_at,
            labels=self.labels,
        )
        manifest = signed(manifest, self.store)  # sealed; signed on a store with keys
        body = manifest.stored()
        try:
            self.backend.put_bytes(self.layout.manifest_key(self.id), body, lock_until=until)
        except BaseException:
            # a PUT the client gave up on (a timeout, a dropped connection) may still be stored,
            # now or by a retry the server finishes later: the objects it names must stay
            self._manifest_in_doubt = True
            raise
        self.manifest = manifest
        return manifest

    def _still_stored(self) -> None:
        """Every object is still there, as the current object at its key, just before the manifest
        says so: a backup that ran longer than retention's orphan grace looks abandoned, and its
        objects may have been collected (a delete marker on a versioned bucket counts as gone).
        One listing of the backup's folder; the store's upload check cannot see a later delete."""
        listed = set(self.backend.list_keys(self.prefix))
        gone = [o.name for o in self.objects if o.key not in listed]
        if gone:
            raise IntegrityError(
                f"backup {self.id}: {', '.join(gone)} vanished from {self.prefix} before the manifest "
                "was written (collected as an abandoned write by retention, or deleted by hand): the "
                "backup is discarded; run it again, and keep enforce_retention's orphan_grace_hours "
                "above the longest backup"
            )

    def discard(self) -> None:
        """Remove whatever this session wrote (it never got its manifest). Unless the manifest's
        own write failed: whether it was stored is unknown, and a listed backup whose objects were
        deleted would be a lie; its objects stay, a whole backup if the manifest landed, else
        orphans that retention collects after its orphan grace. Nor once the manifest is written:
        a failure (a cancellation) after commit() would leave a listed backup without its objects."""
        if self.manifest is not None:
            log.warning("backup %s failed after its manifest was written: it is kept whole", self.id)
            return
        if self._manifest_in_doubt:
            log.warning(
                "backup %s: the manifest write failed and may still have been stored: its %d objects "
                "are left in place (if the manifest is not there, retention collects them as orphans)",
                self.id,
                len(self.objects),
            )
            return
        keys = [o.key for o in self.objects]
        if keys:
            self.backend.delete_keys(keys)
        self.objects.clear()


@contextmanager
def backup_session(
    store: StoreBlock,
    component: str,
    labels: dict[str, str] | None = None,
    retention: timedelta | None = None,
) -> Iterator[BackupSession]:
    """`with backup_session(...) as s: s.write(...); s.commit()` - discards on any failure.
    `retention` (default: the backup table's) is what a locked store locks each object for."""
    session = BackupSession(store, component, labels, retention)
    try:
        yield session
        if session.manifest is None:
            raise RuntimeError(f"backup {session.id} ended without commit(): call session.commit()")
    except BaseException:
        try:
            session.discard()
        except Exception as cleanup_exc:  # report, but keep the original failure
            log.error("could not remove partial backup %s: %s", session.id, cleanup_exc)
        raise
