"""What the integrity sweep (flows/maintenance.py verify_backups) reads and checks beyond the
backups themselves: which backups to re-read, the tamper evidence and lock census of a store,
and the verified backups that vanished."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from blocks.store import StoreBlock
from tasks.ids import parse_backup_id
from tasks.models import Manifest
from tasks.storage import object_lock
from tasks.storage.backends import backend_for
from tasks.storage.catalog import from_the_future
from tasks.storage.health import Status, health_of
from tasks.storage.index import ComponentListing
from tasks.storage.layout import layout


def sweep_choice(manifests: list[Manifest], newest: int) -> list[Manifest]:
    """The newest `newest` routine backups and the newest `newest` safety/forensic ones. Those
    from the future (a skewed clock) are counted apart: they sort last, and would otherwise
    take the place of the newest backups 'latest' and retention actually rely on."""
    now = datetime.now(UTC)
    routine = [m for m in manifests if m.routine and not from_the_future(m, now)]
    future = [m for m in manifests if m.routine and from_the_future(m, now)]
    special = [m for m in manifests if not m.routine]
    chosen = routine[-newest:] + future[-newest:] + special[-newest:]
    return sorted(chosen, key=lambda m: (m.source_time, m.id))


def lock_sweep(
    block: StoreBlock, where: str, name: str, manifests: list[Manifest], fail: Callable[[str, str], None]
) -> dict[str, float]:
    """Tamper evidence (an object whose current version is not the pinned one: `fail(key, why)`)
    and the lock census of the store as metrics: objects without a lock, earliest
    retain-until."""
    backend = backend_for(block)
    for key, why in object_lock.pinned_version_problems(
        backend, layout(block).component_dir(name), manifests
    ).items():
        fail(key, why)
    counted = object_lock.census(backend, manifests, datetime.now(UTC))
    # one group per component: the DR store's census beside the primary's
    return counted.gauges("verify" if where == "primary" else f"verify_{where}") if counted else {}


def vanished(block: StoreBlock, component: str, listing: ComponentListing) -> dict[str, str]:
    """Backups a sweep verified whose manifest is gone while their retention (backup-table.yaml,
    from their start) still runs: backup id -> why, and what to do. Retention deletes a backup's
    health records with it, and never a routine backup within its window; so these were deleted
    by something else (by hand, a sync tool, someone with write access), and 'latest' silently
    gives an older backup. A damaged one deleted by hand is what an operator does: not reported."""
    keep = object_lock.table_retention(component)
    if keep is None:
        return {}
    now, listed = datetime.now(UTC), {m.id for m in listing.manifests}
    out: dict[str, str] = {}
    for backup_id, known in health_of(block, component).items():
        if backup_id in listed or known.status != Status.verified:
            continue
        if any(f"/{backup_id}/" in key for key in listing.unreadable):  # reported as unreadable
            continue
        if now - parse_backup_id(backup_id)[1] > keep:
            continue
        records = ", ".join(layout(block).health_keys(backup_id))
        out[backup_id] = (
            f"verified {known.checked_at:%Y-%m-%d %H:%M:%SZ}, its manifest is gone from {block.location} "
            f"within its retention ({keep.days} d), which retention never deletes: deleted outside "
            f"retention? 'latest' now gives an older backup. Restore it from the DR store if that "
            f"holds it; if it was deleted on purpose, delete its health records ({records})"
        )
    return out


def missing_objects(manifests: list[Manifest], present: set[str]) -> dict[str, str]:
    """backup id -> "objects missing from the store: ...", for those of `manifests` with an
    object whose key is not in `present` (the store's keys, pinned versions already weighed:
    index.pinned_presence). The sweep and the console (`klb backups`) both judge by it."""
    return {
        m.id: f"objects missing from the store: {', '.join(gone[:3])}"
        for m in manifests
        if (gone := [o.name for o in m.objects if o.key not in present])
    }


def objects_gone(listing: ComponentListing) -> dict[str, str]:
    """Listed backups whose objects the listing lacks (deleted behind their manifest's back; a
    version a delete marker hides while the manifest pins it counts as there): backup id -> why.
    The listing is at hand: every backup is checked, not only the newest the sweep re-reads."""
    return {
        backup_id: f"{why} (deleted behind its manifest's back: a restore of it fails); restore them "
        "from the DR store, or delete the backup"
        for backup_id, why in missing_objects(listing.manifests, set(listing.keys)).items()
    }
