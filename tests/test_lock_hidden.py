"""A kept, locked backup hidden by delete markers on EVERY key of its folder (manifest and
objects: one plain `aws s3 rm --recursive` with the worker's credentials) is still a backup: on
moto's S3 server, which enforces Object Lock, its locked versions stay, so the catalog must still
list it, 'latest' and restores must still find it, retention must keep (and re-lock) it, and the
sweep must say it was hidden and what to do."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from sandbox.s3 import make_bucket, s3_store
from tasks.errors import IntegrityError
from tasks.ids import new_backup_id
from tasks.storage import object_lock
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.index import list_component
from tasks.storage.layout import layout
from tasks.storage.session import backup_session, read_object
from tasks.table import policy

APP = "app-state"
RETENTION = policy(APP).retention


def old_kept_backup(store, age: timedelta, payload: bytes):
    """A backup started `age` ago (id and source time), locked to its expiry + margin as usual."""
    started = datetime.now(UTC) - age
    with backup_session(store, APP) as s:
        s.started_at, s.id, s.source_time = started, new_backup_id(APP, started), started
        s.write("state", [payload])
        return s.commit(retention=RETENTION)


def relock(client, bucket: str, keys: list[tuple[str, str]], until: datetime) -> None:
    """What enforce_retention's hold did on an earlier run: the kept backup locked past its age."""
    for key, vid in keys:
        client.put_object_retention(
            Bucket=bucket, Key=key, VersionId=vid, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}
        )


def test_a_kept_locked_backup_with_every_key_delete_marked_is_still_found(moto, prefect_server):
    from flows.maintenance import enforce_retention, verify_backups

    bucket, client = make_bucket(moto.url, "klb-hide-" + secrets.token_hex(5), object_lock=True)
    store = s3_store(moto.url, bucket, object_lock_mode="COMPLIANCE")
    payload = b"orders: 42\n" * 300
    # older than retention + margin + a day: its first lock alone would have ended
    last = old_kept_backup(store, RETENTION + timedelta(days=store.object_lock_margin_days + 5), payload)
    mkey = layout(store).manifest_key(last.id)
    mversion = client.head_object(Bucket=bucket, Key=mkey)["VersionId"]
    pinned = [(o.key, o.version_id) for o in last.objects] + [(mkey, mversion)]
    relock(client, bucket, pinned, datetime.now(UTC) + RETENTION)

    folder = mkey.rsplit("/", 1)[0]
    every = sorted(
        k for k in backend_for(store).list_keys(layout(store).component_dir(APP)) if k.startswith(folder)
    )
    assert mkey in every and all(o.key in every for o in last.objects)
    backend_for(store).delete_keys(every)  # delete markers on every key of the folder
    assert not list(backend_for(store).list_keys(folder))

    # the catalog still finds it, reads the locked versions, and so does 'latest'
    assert [m.id for m in list_backups(store, APP)] == [last.id]
    latest = get_backup(store, "latest", APP)
    assert latest == last
    assert b"".join(read_object(store, latest.objects[0])) == payload
    listing = list_component(store, APP, use_index=False)
    assert [m.id for m in listing.manifests] == [last.id]
    assert all(o.key in listing.keys for o in last.objects)  # hidden, not gone

    # retention keeps it as the last good backup, with no orphan, and locks it again
    applied = enforce_retention(dry_run=False, store=store, components=[APP])["components"][APP]
    assert applied["deleted"] == [] and applied["orphans"] == []
    assert last.id in applied["object_lock_hold"]

    # the sweep re-reads it whole, and fails naming the hiding and how to undo it
    with pytest.raises(IntegrityError, match="failed verification") as err:
        verify_backups(components=[APP], store=store)
    assert f"primary:{last.id}" not in str(err.value)  # the backup itself reads whole
    assert f"primary:{mkey}" in str(err.value)
    why = object_lock.pinned_version_problems(backend_for(store), layout(store).component_dir(APP), [last])
    assert "hidden by a delete marker" in why[mkey] and "delete-object --version-id" in why[mkey]
