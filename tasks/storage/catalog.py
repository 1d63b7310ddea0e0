"""The catalog is the set of manifests in a store: list, get, latest, newest at/before a time."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, NotFound
from tasks.ids import check_component_name, parse_backup_id
from tasks.models import Manifest
from tasks.storage.backends import Backend, backend_for
from tasks.storage.layout import backup_id_of, is_manifest_key, layout
from tasks.storage.session import verify_object

LATEST = "latest"
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)
log = logging.getLogger(__name__)


def _load(backend: Backend, key: str) -> Manifest:
    try:
        manifest = Manifest.model_validate_json(backend.get_bytes(key))
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"manifest {key} is unreadable: {str(exc)[:200]}") from None
    if manifest.checksum != manifest.computed_checksum():
        raise IntegrityError(f"manifest {key} was altered: its checksum does not match its content")
    return manifest


def _try_load(backend: Backend, key: str) -> Manifest | None:
    """A damaged manifest must not hide the others: log it; the integrity sweep reports it."""
    try:
        return _load(backend, key)
    except (IntegrityError, NotFound) as exc:
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
    keys = []
    for key in backend.list_keys(layout(store).component_dir(component)):
        if not is_manifest_key(key):
            continue
        _, started = parse_backup_id(backup_id_of(key))
        if until is None or started <= until:  # a backup cannot reflect a time before it started
            keys.append(key)
    with ThreadPoolExecutor(max_workers=16) as pool:
        loaded = list(pool.map(lambda k: _try_load(backend, k), keys))
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
    try:
        return _load(backend_for(store), layout(store).manifest_key(backup_id))
    except NotFound:
        raise NotFound(
            f"no backup {backup_id} in {store.location}: list backups with `klb backups list {id_component}`"
        ) from None


def from_the_future(manifest: Manifest, now: datetime | None = None) -> bool:
    """A source time later than now (beyond normal skew) means a clock was wrong somewhere."""
    return manifest.source_time > (now or datetime.now(UTC)) + CLOCK_SKEW_TOLERANCE


def latest_backup(store: StoreBlock, component: str) -> Manifest:
    """The newest backup, never one whose source time is in the future: a skewed clock must
    not silently make it 'latest' (it stays listed; restore it by id if it is really wanted)."""
    backups = list_backups(store, component)
    if not backups:
        raise NotFound(
            f"no {component} backups in {store.location}: run backup_component('{component}') first"
        )
    now = datetime.now(UTC)
    future = [m for m in backups if from_the_future(m, now)]
    for m in future:
        log.warning(
            "backup %s has a source time in the future (%s): clock skew? not chosen as latest; "
            "restore it by id if it is the one you want",
            m.id,
            m.source_time.isoformat(),
        )
    usable = [m for m in backups if not from_the_future(m, now)]
    if not usable:
        raise NotFound(
            f"every {component} backup in {store.location} has a source time in the future "
            f"(clock skew): check the clocks, then restore one by id: {', '.join(m.id for m in future)}"
        )
    return usable[-1]


def backup_at_or_before(store: StoreBlock, component: str, when: datetime) -> Manifest:
    """The newest backup whose source snapshot was taken at or before `when`."""
    _aware(when, "target time")
    if when > datetime.now(UTC):
        raise BadInput(
            f"target time {when.isoformat()} is in the future: give a time up to now "
            "(with its time zone), or ask for 'latest'"
        )
    backups = list_backups(store, component, until=when)
    if not backups:
        oldest = list_backups(store, component)
        window = f"; the oldest is {oldest[0].source_time.isoformat()}" if oldest else ""
        raise NotFound(f"no {component} backup at or before {when.isoformat()}{window}")
    return backups[-1]


def verify_backup(store: StoreBlock, manifest: Manifest) -> dict[str, object]:
    """Read every object back; raise IntegrityError naming the first bad one."""
    backend = backend_for(store)
    for obj in manifest.objects:
        verify_object(store, obj, backend)
    return {
        "id": manifest.id,
        "objects": len(manifest.objects),
        "bytes": manifest.size,
        "verified_at": datetime.now(UTC).isoformat(),
    }
