"""Leftovers of failed writes: multipart uploads never completed and objects whose backup never
got its manifest (the writer died, or the store was down when it tried to clean up). The
enforce-retention flow sweeps them; the dry run lists them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blocks.store import StoreBlock
from tasks.errors import BadInput
from tasks.ids import parse_backup_id
from tasks.storage import object_lock
from tasks.storage.backends import backend_for
from tasks.storage.health import Status, health_of
from tasks.storage.layout import backup_id_of, is_manifest_key, layout

STALE_WRITE_AGE = timedelta(hours=24)  # longer than any backup runs: older uploads are orphans


def sweep_incomplete_writes(
    store: StoreBlock, component: str, older_than: timedelta = STALE_WRITE_AGE, dry_run: bool = False
) -> list[str]:
    """Abort multipart uploads / remove partial files that a failed backup of `component` could
    not clean up itself (the S3 server was down when it tried, or the process was killed).
    `dry_run`: change nothing, return what would be removed."""
    backend = backend_for(store)
    prefix = layout(store).component_dir(component) + "/"
    cutoff = datetime.now(UTC) - older_than

    would: list[str] = []

    def stale(key: str, initiated: datetime) -> bool:
        # our own clock first: the backup id in the key says when it started (some S3 servers
        # report no real upload time); the server's time for keys that are not ours
        try:
            old = parse_backup_id(backup_id_of(key) or "")[1] <= cutoff
        except BadInput:
            old = initiated <= cutoff
        if old and dry_run:  # listed, never aborted
            would.append(key)
            return False
        return old

    removed = backend.abort_incomplete_writes(prefix, stale) + would
    by_backup: dict[str, list[str]] = {}
    stale_dirs: dict[str, list[str]] = {}
    for key in backend.list_keys(prefix):
        backup_id = backup_id_of(key)
        if backup_id is not None:
            by_backup.setdefault(backup_id, []).append(key)
    # a backup a sweep verified had its manifest: deleted since, its objects are its data, not
    # a failed write's (retention's plan keeps them too: storage/retention.py, rule 1)
    verified = {i for i, h in health_of(store, component).items() if h.status == Status.verified}
    for backup_id, keys in by_backup.items():
        if any(is_manifest_key(k) for k in keys) or backup_id in verified:
            continue
        try:
            _, started = parse_backup_id(backup_id)
        except BadInput:
            continue  # not ours: leave it
        if started <= cutoff:  # objects whose backup never got a manifest, nor its cleanup
            stale_dirs[backup_id] = keys
    # never a delete before an object lock's retain-until: those wait for a later run
    for backup_id in object_lock.locked_until(backend, stale_dirs, datetime.now(UTC)):
        del stale_dirs[backup_id]
    for keys in stale_dirs.values():
        if not dry_run:
            backend.delete_keys(keys)
        removed += keys
    return removed
