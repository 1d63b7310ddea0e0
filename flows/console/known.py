"""What is known about one backup: verified, damaged or unverified, and since when.

The ONE place `klb` asks this (status, backups list, describe). The knowledge is the backup's
health record (tasks/storage/health.py: the sweep's verdict, or the reason a read failed), else
the manifest's `verified_at` (every object checked after the write), and a manifest that does not
load (damaged).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, NotFound
from tasks.models import Manifest
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.health import finding
from tasks.storage.index import pinned_presence
from tasks.storage.layout import backup_id_of, layout
from tasks.storage.sweep import missing_objects


@dataclass
class Known:
    status: str  # "verified" | "damaged" | "unverified"
    when: datetime | None = None
    detail: str = ""


def known_state(store: StoreBlock, manifest: Manifest) -> Known:
    found = finding(store, manifest.id)
    if found is not None:
        return Known(found.status.value, found.checked_at, found.reason or "checked by the sweep")
    if manifest.verified_at is not None:
        return Known("verified", manifest.verified_at, "read back and checked after the write")
    return Known("unverified", None, "never read back")


def damaged_backups(store: StoreBlock, component: str, good: list[Manifest]) -> dict[str, str]:
    """backup id -> why, for backups whose manifest exists but does not load (the catalog skips
    them; an operator must see them), and for listed backups whose objects the store no longer
    holds (deleted behind the manifest's back: a restore of it would fail). One listing."""
    seen = {m.id for m in good}
    out: dict[str, str] = {}
    where = layout(store)
    backend, folder = backend_for(store), where.component_dir(component)
    keys = list(backend.list_keys(folder))
    for key in keys:
        # only a backup's own manifest key, as the catalog lists them: a manifest.json anywhere
        # else (a copy under another day, another component's id, no id) is no backup of this one
        backup_id = backup_id_of(key)
        if backup_id is None or backup_id in seen or not where.is_manifest_of(key, component):
            continue
        try:
            get_backup(store, backup_id, component)
        except (IntegrityError, NotFound) as exc:
            out[backup_id] = str(exc)
    return out | objects_gone(store, good, folder, keys)


def objects_gone(
    store: StoreBlock, manifests: list[Manifest], folder: str, keys: list[str] | None = None
) -> dict[str, str]:
    """backup id -> why, for those of `manifests` whose objects the store no longer holds (deleted
    behind the manifest's back: a restore of it would fail). `keys`: the listing of `folder`."""
    backend = backend_for(store)
    present = set(backend.list_keys(folder) if keys is None else keys)
    # a pinned version a delete marker hides is still there (a locked backup); one purged is not
    hidden, purged = pinned_presence(backend, folder, manifests, present)
    return missing_objects(manifests, (present - purged) | hidden)


def backups_of(store: StoreBlock, component: str) -> tuple[list[Manifest], dict[str, str]]:
    """(loadable manifests oldest first, damaged id -> why)."""
    good = list_backups(store, component)
    return good, damaged_backups(store, component, good)
