"""What is under a component's folder but is no backup, and a backup whose data is gone for good:
neither may cost the catalog its listing, nor retention the backups that still restore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.maintenance import enforce_retention
from tasks.errors import IntegrityError, NotFound
from tasks.storage.backends import backend_for
from tasks.storage.catalog import latest_backup, list_backups, verify_backup
from tasks.storage.health import Status, health_of
from tasks.storage.index import list_component
from tasks.storage.layout import layout
from tasks.storage.retention import plan_retention
from tasks.storage.retention_types import RetentionPolicy
from tasks.storage.session import backup_session
from tests.test_retention_flow import old_backup


def take(store, data: bytes, component: str = "app-state"):
    with backup_session(store, component) as s:
        s.write("data", [data])
        return s.commit()


def assert_old_kept_as_good_and_new_missing(store, old, new) -> None:
    """Retention, two hours after both app-state backups with a one-hour window: `new` lacks its
    object, so `old` is the good backup it keeps."""
    listing = list_component(store, "app-state")
    plan = plan_retention(
        listing.manifests,
        RetentionPolicy(component="app-state", retention=timedelta(hours=1)),
        datetime.now(UTC) + timedelta(hours=2),
        keys=listing.keys,
        prefix=layout(store).component_dir("app-state"),
    )
    decisions = {d.id: d for d in plan.decisions}
    assert decisions[old.id].action == "keep" and decisions[old.id].good, plan.decisions
    assert plan.missing == {new.id: ["data"]}


@pytest.mark.parametrize(
    "stray",
    [
        "manifest.json",
        "2026-11-30/manifest.json",
        "2026-11-30/not-an-id/manifest.json",
        "2026-11-30/app-state-20261399T000000Z-abcdef/manifest.json",  # no such date
        "2026-11-30/etcd-20261130T000000Z-abcdef/manifest.json",  # another component's id
        "2026-01-01/app-state-20261130T000000Z-abcdef/manifest.json",  # not on the day it names
    ],
)
def test_a_stray_manifest_key_is_no_backup_and_breaks_no_listing(local_store, stray):
    """One stray key (a sync tool's leftover, a copy made by hand) made list_backups, `latest`
    and everything built on them raise 'malformed backup id'. And `klb backups list` / `klb
    verify`: they raised BadInput (another component's id, no id), or listed a backup that does
    not exist as damaged (a copy under another day)."""
    from flows.console.backups import list_text, verify_text

    store = local_store()
    good = take(store, b"good\n")
    backend_for(store).put_bytes(f"{layout(store).component_dir('app-state')}/{stray}", b"{}")
    assert [m.id for m in list_backups(store, "app-state")] == [good.id]
    assert latest_backup(store, "app-state").id == good.id
    listed = list_text(store, ["app-state"]).splitlines()
    assert len(listed) == 2 and good.id in listed[1] and "verified" in listed[1], listed
    assert verify_text(store, None)[1]
    listing = list_component(store, "app-state")
    assert [m.id for m in listing.manifests] == [good.id]
    assert list(listing.unreadable) == [
        f"{layout(store).component_dir('app-state')}/{stray}"
    ]  # for the sweep


@pytest.mark.parametrize("where", ["manifest.json", "{day}/manifest.json"])
def test_a_stray_manifest_file_does_not_make_retention_delete_good_backups(
    prefect_server, local_store, where
):
    """A stray manifest.json above the backups' folders was taken as an unreadable backup whose
    'folder' was the whole component (or day): every backup in it looked as if its objects were
    missing, was recorded damaged, and was deleted, the newest good one included."""
    store = local_store()
    old = old_backup(store, "etcd", timedelta(days=10))
    newest = old_backup(store, "etcd", timedelta(days=9))
    for m in (old, newest):
        verify_backup(store, m)
    stray = f"{layout(store).component_dir('etcd')}/{where.format(day=f'{newest.started_at:%Y-%m-%d}')}"
    backend_for(store).put_bytes(stray, b"not a manifest")
    done = enforce_retention(dry_run=False, store=store, components=["etcd"])
    remaining = list(backend_for(store).list_keys(layout(store).component_dir("etcd")))
    assert layout(store).manifest_key(newest.id) in remaining, done["components"]["etcd"]
    assert stray in remaining  # not ours: left as it is
    assert latest_backup(store, "etcd").id == newest.id


def test_a_backup_whose_pinned_versions_are_gone_is_not_the_good_one_retention_keeps(s3_store, s3_bucket):
    """On a versioned bucket, retention skipped every object with a pinned version when it looked
    for missing ones: with the newest backup's data purged (every version: a lifecycle rule, a
    hand), it still counted as the good backup, and the older one, the only one that restores,
    went past retention."""
    bucket, client = s3_bucket
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = s3_store()
    old = take(store, b"old\n")
    new = take(store, b"new\n")
    obj = new.objects[0]
    client.delete_object(Bucket=bucket, Key=obj.key, VersionId=obj.version_id)
    with pytest.raises((IntegrityError, NotFound)):
        backend_for(store).get_bytes(obj.key)
    assert_old_kept_as_good_and_new_missing(store, old, new)


def test_a_backup_whose_pinned_version_was_overwritten_then_purged_is_not_good(
    s3_store, s3_bucket, prefect_server
):
    """On a versioned bucket, the newest backup's object overwritten, then the version its
    manifest pins purged: the key still lists (the overwrite), so retention counted the backup
    good and deleted the older one, the only one that restores; the sweep's listing said nothing
    either. Presence is the pinned version's, not the key's."""
    from flows.maintenance import verify_backups

    bucket, client = s3_bucket
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = s3_store()
    old, new = take(store, b"old\n"), take(store, b"new\n")
    obj = new.objects[0]
    client.put_object(Bucket=bucket, Key=obj.key, Body=b"an overwrite")
    client.delete_object(Bucket=bucket, Key=obj.key, VersionId=obj.version_id)
    assert_old_kept_as_good_and_new_missing(store, old, new)
    st = verify_backups(components=["app-state"], store=store, newest=2, return_state=True)
    assert st.is_failed() and new.id in st.message and old.id not in st.message.split("Why:")[0]


def test_damage_records_alone_never_make_retention_delete_every_backup(local_store):
    """Damage records need no signature (a forged one can only make the project refuse a
    backup), yet retention deleted every backup of a component whose backups all carried one,
    though their objects were whole: with no good backup, the newest whose objects are all there
    stays (found by an adversarial review)."""
    from tasks.storage.health import BackupHealth
    from tasks.storage.retention_locks import plan_component

    store = local_store()
    a, b = take(store, b"a\n"), take(store, b"b\n")
    later = datetime.now(UTC) + timedelta(seconds=1)
    for m in (a, b):
        forged = BackupHealth(id=m.id, status=Status.damaged, checked_at=later, reason="forged")
        backend_for(store).put_bytes(layout(store).health_key(m.id), forged.model_dump_json().encode())
    policy = RetentionPolicy(component="app-state", retention=timedelta(hours=1))
    plan, _ = plan_component(
        store, policy, list_component(store, "app-state"), datetime.now(UTC) + timedelta(hours=2), None
    )
    assert [d.id for d in plan.decisions if d.action == "keep"] == [b.id]


def test_a_manifest_of_a_newer_format_is_refused_not_read_as_ours_nor_recorded_damaged(local_store):
    """A manifest with a schema_version this version does not know was read as if it were ours
    (found by an adversarial review): refused by name; listing the component (and so 'latest')
    fails rather than leave the newest backup out in silence; not recorded as damage (the version
    that wrote it reads it), and retention leaves its folder alone."""
    from tasks.errors import IntegrityError
    from tasks.storage.catalog import get_backup

    store = local_store()
    older, newer = take(store, b"older\n"), take(store, b"newer\n")
    future = newer.model_copy(update={"schema_version": 99}).sealed()
    backend_for(store).put_bytes(layout(store).manifest_key(newer.id), future.model_dump_json().encode())
    with pytest.raises(IntegrityError, match="format 99, newer than this version"):
        get_backup(store, newer.id)
    for listing in (list_backups, latest_backup):
        with pytest.raises(IntegrityError, match="format 99"):
            listing(store, "app-state")
    assert [m.id for m in list_component(store, "app-state").manifests] == [older.id]
    assert newer.id not in health_of(store, "app-state")
