"""The catalog is the set of manifests in a store: list, get, latest, newest at/before a time."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, NotFound
from tasks.ids import check_component_name, parse_backup_id
from tasks.models import MANIFEST_SCHEMA, Manifest
from tasks.storage import object_lock
from tasks.storage.backends import Backend, backend_for
from tasks.storage.health import Status, health_of, is_damage, mark_damaged
from tasks.storage.layout import StoreLayout, backup_dir_of, backup_id_of, layout
from tasks.storage.session import verify_object
from tasks.storage.signing import check_signature

LATEST = "latest"
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)
log = logging.getLogger(__name__)


def parse_manifest(data: bytes, key: str, store: StoreBlock) -> Manifest:
    """A manifest read from `key`, checked against its checksum AND against where it was found:
    the id, component and object keys it names (all inside the checksum) must be the ones of the
    folder it sits in. A manifest copied into another backup's folder is refused, so restoring
    backup A can never bring back backup B. On a store with keys, a key of the store must have
    signed it (storage/signing.py): a writer of the bucket without the key cannot make one."""
    keys = layout(store)
    try:
        manifest = Manifest.model_validate_json(data)
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"manifest {key} is unreadable: {str(exc)[:200]}") from None
    if manifest.checksum != manifest.computed_checksum():
        raise IntegrityError(f"manifest {key} was altered: its checksum does not match its content")
    if manifest.schema_version > MANIFEST_SCHEMA:
        # read as if it were ours it could mean something else: refused, and no damage recorded
        newer = IntegrityError(
            f"manifest {key} has format {manifest.schema_version}, newer than this version of "
            f"knative-lambda-backup reads ({MANIFEST_SCHEMA}): use the version that wrote it"
        )
        newer.proves_damage = False
        raise newer
    if not manifest.objects:  # never written by a backup (commit refuses one): it would verify vacuously
        raise IntegrityError(
            f"manifest {key} lists no objects: it is not the manifest of backup "
            f"{backup_id_of(key) or key} (no backup writes one); restore this folder's manifest "
            "from the DR store, or delete the folder"
        )
    home = keys.manifest_key(manifest.id)
    id_component, _ = parse_backup_id(manifest.id)
    # each object exactly at <folder>/<its name>: a prefix test would pass '<folder>/../<B>/x',
    # which a local store resolves into backup B; and one object named twice is not a backup
    strays = [o.key for o in manifest.objects if o.key != keys.object_key(manifest.id, o.name)]
    names = [o.name for o in manifest.objects]
    strays += [f"{n} (named twice)" for n in sorted({n for n in names if names.count(n) > 1})]
    if home != key or manifest.component != id_component or strays:
        found = backup_id_of(key) or key
        raise IntegrityError(
            f"manifest {key} is not the manifest of backup {found}: it names backup {manifest.id} "
            f"({manifest.component})"
            + (f" with objects outside its folder ({strays[0]})" if strays else "")
            + "; it was copied or moved: restore the backup you want by its own id, or restore this "
            "folder's manifest from the DR store"
        )
    check_signature(store, manifest, key)
    return manifest


def _load(store: StoreBlock, backend: Backend, key: str, version_id: str | None = None) -> Manifest:
    return parse_manifest(b"".join(backend.read(key, version_id)), key, store)


def _backup_id_at(key: str, keys: StoreLayout) -> str | None:
    """The backup whose manifest `key` is: only at that backup's own manifest key. A manifest
    found anywhere else (a folder copied under another day) is a stray: damage to record
    against no backup, or a stray copy would mark the real backup damaged, and retention and
    'latest' would pass it over."""
    found = backup_id_of(key)
    try:
        return found if found and keys.manifest_key(found) == key else None
    except BadInput:
        return None


def _try_load(
    store: StoreBlock, backend: Backend, key: str, version_id: str | None = None
) -> Manifest | None:
    """A damaged manifest must not hide the others: it is recorded as damaged (storage/health.py)
    and left out; the integrity sweep reports it."""
    try:
        return _load(store, backend, key, version_id)
    except IntegrityError as exc:
        if not exc.proves_damage:  # newer format, unsigned, key not held: skipped, 'latest' would be older
            raise
        if backup_id := _backup_id_at(key, layout(store)):
            mark_damaged(store, backup_id, str(exc))
        log.error("skipping backup: %s", exc)
    except NotFound as exc:  # deleted while we listed
        log.error("skipping backup: %s", exc)
    return None


def _aware(when: datetime | None, what: str) -> datetime | None:
    if when is not None and when.tzinfo is None:
        raise BadInput(f"{what} {when.isoformat()} has no time zone: give one, e.g. '...+00:00' or 'Z'")
    return when


def list_backups(
    store: StoreBlock,
    component: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Manifest]:
    """Manifests of `component`, oldest first, whose source time is within [since, until]."""
    check_component_name(component)
    since, until = _aware(since, "since"), _aware(until, "until")
    backend = backend_for(store)
    where = layout(store)
    folder = where.component_dir(component)
    # a locked store: the version each manifest was written as (object_lock.written_manifests)
    written = object_lock.written_manifests(store, backend, folder, datetime.now(UTC))
    keys = []
    for key in written if written is not None else backend.list_keys(folder):
        if not where.is_manifest_of(key, component):
            continue
        _, started = parse_backup_id(backup_id_of(key))
        if until is None or started <= until:  # a backup cannot reflect a time before it started
            keys.append(key)
    with ThreadPoolExecutor(max_workers=16) as pool:
        loaded = list(pool.map(lambda k: _try_load(store, backend, k, (written or {}).get(k)), keys))
    manifests = [m for m in loaded if m is not None]
    manifests = [
        m
        for m in manifests
        if (since is None or m.source_time >= since) and (until is None or m.source_time <= until)
    ]
    return sorted(manifests, key=lambda m: (m.source_time, m.id))


def get_backup(store: StoreBlock, backup_id: str, component: str | None = None) -> Manifest:
    """A manifest by id, or the newest one of `component` for 'latest'."""
    if backup_id == LATEST:
        if not component:
            raise BadInput("'latest' needs a component: say which component's latest backup")
        return latest_backup(store, component)
    id_component, _ = parse_backup_id(backup_id)
    if component and id_component != component:
        raise BadInput(f"backup {backup_id} belongs to component {id_component!r}, not {component!r}")
    backend, key = backend_for(store), layout(store).manifest_key(backup_id)
    try:
        written = object_lock.written_manifests(store, backend, backup_dir_of(key), datetime.now(UTC))
        if written is not None and key not in written:
            raise NotFound(key)
        return _load(store, backend, key, (written or {}).get(key))
    except NotFound:
        raise NotFound(
            f"no backup {backup_id} in {store.location}: list backups with `klb backups list {id_component}`"
        ) from None
    except IntegrityError as exc:  # every failed read is recorded: latest, retention, drills see it
        if exc.proves_damage:
            mark_damaged(store, backup_id, str(exc))
        raise


def _may_be_newer(store: StoreBlock, backup_id: str, until: datetime | None) -> bool:
    """Whether a damaged backup the listing left out may be newer than the one picked. A finding
    can outlive its backup (deleted by hand): only a stored manifest counts. One that reads
    took its snapshot after `until` (it started before): no candidate for that time at all."""
    try:
        manifest = get_backup(store, backup_id)
    except NotFound:
        return False
    except IntegrityError:  # unreadable: whatever it holds, it may be newer
        return True
    return until is None or manifest.source_time <= until


def from_the_future(manifest: Manifest, now: datetime | None = None) -> bool:
    """A source time later than now (beyond normal skew) means a clock was wrong somewhere."""
    return manifest.source_time > (now or datetime.now(UTC)) + CLOCK_SKEW_TOLERANCE


def _covering(
    store: StoreBlock, component: str, usable: list[Manifest], gap: Callable[[Manifest], str | None] | None
) -> list[Manifest]:
    """`usable` without the backups narrower than the scope asked for (`gap` says what one lacks;
    tasks/operations/scope.py). None cover it: NotFound naming them, restorable by id."""
    if gap is None or not usable:
        return usable
    lacks = {m.id: why for m in usable if (why := gap(m))}
    covering = [m for m in usable if m.id not in lacks]
    newer = usable[usable.index(covering[-1]) + 1 :] if covering else usable
    skipped = [f"{m.id} ({lacks[m.id]})" for m in newer]
    if not covering:
        raise NotFound(
            f"no {component} backup in {store.location} covers what was asked for: "
            + "; ".join(reversed(skipped[-5:]))
            + ". Restore one of them by id if that narrower scope is what you want (or narrow the "
            f"restore's options to it), or run backup_component('{component}') with the whole target"
        )
    if skipped:
        log.warning(
            "'latest' %s is %s: newer backups are narrower than what was asked for: %s",
            component,
            covering[-1].id,
            "; ".join(skipped),
        )
    return covering


def latest_candidates(backups: list[Manifest], now: datetime) -> list[Manifest]:
    """Of `backups` (oldest first), those 'latest' may pick: routine ones (never a safety or
    forensic copy) whose source time is not in the future."""
    return [m for m in backups if m.routine and not from_the_future(m, now)]


def latest_backup(
    store: StoreBlock, component: str, gap: Callable[[Manifest], str | None] | None = None
) -> Manifest:
    """The newest routine (scheduled or on-demand) backup. Never a safety or forensic backup
    (they hold the state a restore replaced, possibly the broken one), never one whose source
    time is in the future (a skewed clock; it stays listed, restorable by id). And never an
    older one in place of a newer one known to be damaged: that fails, naming both, so nobody
    restores older data than they think without saying so. With `gap`, only a backup that
    covers the scope asked for (tasks/operations/scope.py)."""
    backups = list_backups(store, component)
    now = datetime.now(UTC)
    future = [m for m in backups if m.routine and from_the_future(m, now)]
    for m in future:
        log.warning(
            "backup %s has a source time in the future (%s): clock skew? not chosen as latest; "
            "restore it by id if it is the one you want",
            m.id,
            m.source_time.isoformat(),
        )
    usable = latest_candidates(backups, now)
    if not usable:
        if future:
            raise NotFound(
                f"every {component} backup in {store.location} has a source time in the future "
                f"(clock skew): check the clocks, then restore one by id: {', '.join(m.id for m in future)}"
            )
        others = [m.id for m in backups]
        raise NotFound(
            f"no {component} backups in {store.location}"
            + (f" other than safety/forensic ones ({', '.join(others)}; restore one by id)" if others else "")
            + f": run backup_component('{component}') first"
        )
    return _not_damaged(store, component, _covering(store, component, usable, gap), {m.id for m in backups})


def _not_damaged(
    store: StoreBlock, component: str, usable: list[Manifest], loaded: set[str], until: datetime | None = None
) -> Manifest:
    """The newest of `usable`, unless it, or a newer backup whose manifest cannot be read (started
    by `until`), is known damaged: then IntegrityError naming it and the fallback."""
    newest = usable[-1]
    damaged = {i: h for i, h in health_of(store, component).items() if h.status == Status.damaged}
    newest_start = parse_backup_id(newest.id)[1]

    def newer_unreadable(backup_id: str) -> bool:
        started = parse_backup_id(backup_id)[1]
        return (
            backup_id not in loaded
            and started >= newest_start  # ids name the second: one of the same may be newer
            and (until is None or started <= until)
            and _may_be_newer(store, backup_id, until)
        )

    newer = [i for i in damaged if i == newest.id or newer_unreadable(i)]
    if newer:
        worst = max(newer)
        good = [m for m in usable if m.id not in damaged]
        fallback = (
            f"the newest backup not known to be damaged is {good[-1].id}: restore it by id "
            f"(backup_id='{good[-1].id}') if older data is acceptable"
            if good
            else "no older backup is known good either"
        )
        raise IntegrityError(
            f"the newest {component} backup {worst} is damaged ({damaged[worst].reason[:300]}); "
            f"'latest' will not silently use an older one: {fallback}, or take a new backup"
        )
    return newest


def backup_at_or_before(
    store: StoreBlock, component: str, when: datetime, gap: Callable[[Manifest], str | None] | None = None
) -> Manifest:
    """The newest backup whose source snapshot was taken at or before `when` (and, with `gap`,
    that covers the scope asked for)."""
    _aware(when, "target time")
    if when > datetime.now(UTC):
        raise BadInput(
            f"target time {when.isoformat()} is in the future: give a time up to now "
            "(with its time zone), or ask for 'latest'"
        )
    listed = list_backups(store, component, until=when)
    backups = [m for m in listed if m.routine]
    if not backups:
        oldest = list_backups(store, component)
        window = f"; the oldest is {oldest[0].source_time.isoformat()}" if oldest else ""
        raise NotFound(f"no {component} backup at or before {when.isoformat()}{window}")
    covering = _covering(store, component, backups, gap)
    return _not_damaged(store, component, covering, {m.id for m in listed}, until=when)


def verify_backup(store: StoreBlock, manifest: Manifest) -> dict[str, object]:
    """Read every object back; raise IntegrityError naming the first bad one. The finding is
    recorded either way (storage/health.py): every failed read marks the backup damaged."""
    backend = backend_for(store)
    try:
        for obj in manifest.objects:
            verify_object(store, obj, backend)
    except (IntegrityError, NotFound) as exc:
        if is_damage(exc):
            mark_damaged(store, manifest.id, str(exc))
        raise
    return {
        "id": manifest.id,
        "objects": len(manifest.objects),
        "bytes": manifest.size,
        "verified_at": datetime.now(UTC).isoformat(),
    }
