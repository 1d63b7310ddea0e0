"""enforce_retention on moto S3: dry run changes nothing; applied, it deletes exactly the plan
(manifest first), collects old orphans, leaves young ones (in flight) and damaged backups alone.
On a versioned bucket deletes leave delete markers (the documented choice)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.errors import IntegrityError
from tasks.ids import new_backup_id
from tasks.storage.backends import backend_for
from tasks.storage.catalog import latest_backup, list_backups
from tasks.storage.index import list_component
from tasks.storage.layout import backup_prefix, layout
from tasks.storage.session import BackupSession


def old_backup(store, component: str, age: timedelta, verified: bool = True, labels=None, parts=("data",)):
    """A real backup (objects `parts`, checksums, manifest last) that started `age` ago."""
    session = BackupSession(store, component, labels)
    started = datetime.now(UTC) - age
    session.started_at = session.source_time = started
    session.id = new_backup_id(component, started)
    for part in parts:
        session.write(part, [b"payload " * 100])
    manifest = session.commit()
    if not verified:  # as if the read-back had been skipped
        manifest = manifest.model_copy(update={"verified_at": None}).sealed()
        session.backend.put_bytes(layout(store).manifest_key(session.id), manifest.model_dump_json().encode())
    return manifest


def orphan(store, component: str, age: timedelta) -> str:
    backup_id = new_backup_id(component, datetime.now(UTC) - age)
    key = layout(store).object_key(backup_id, "data")
    backend_for(store).put_bytes(key, b"half-written")
    return key


@pytest.fixture
def history(s3_store):
    store = s3_store()
    b = {
        "ancient": old_backup(store, "etcd", timedelta(days=20)),
        "old_unverified": old_backup(store, "etcd", timedelta(days=9), verified=False),
        "old": old_backup(store, "etcd", timedelta(days=8)),
        "recent": old_backup(store, "etcd", timedelta(hours=2)),
        "damaged": old_backup(store, "etcd", timedelta(days=30)),
    }
    damaged_key = layout(store).manifest_key(b["damaged"].id)
    backend_for(store).put_bytes(damaged_key, b'{"not": "a manifest"}')
    orphans = {
        "young": orphan(store, "etcd", timedelta(hours=1)),
        "stale": orphan(store, "etcd", timedelta(days=3)),
    }
    return store, b, orphans


def keys(store) -> set[str]:
    return set(backend_for(store).list_keys(layout(store).component_dir("etcd")))


def test_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(prefect_server, history):
    from flows.maintenance import enforce_retention

    store, b, orphans = history
    before = keys(store)
    plan = enforce_retention(store=store, components=["etcd"])
    assert plan["dry_run"] is True
    etcd = plan["components"]["etcd"]
    assert set(etcd["would_delete"]) == {b["ancient"].id, b["old_unverified"].id, b["old"].id}
    assert keys(store) == before

    done = enforce_retention(dry_run=False, store=store, components=["etcd"])
    etcd = done["components"]["etcd"]
    assert set(etcd["deleted"]) == {b["ancient"].id, b["old_unverified"].id, b["old"].id}
    assert [m.id for m in list_backups(store, "etcd")] == [b["recent"].id]
    after = keys(store)
    for gone in ("ancient", "old_unverified", "old"):
        assert not any(f"/{b[gone].id}/" in k for k in after)
    assert orphans["young"] in after and orphans["stale"] not in after  # in flight vs abandoned
    assert any(f"/{b['damaged'].id}/" in k for k in after)  # evidence for the sweep: left alone
    assert etcd["unreadable_left_alone"]


def test_the_newest_good_backup_survives_when_everything_is_past_the_window(prefect_server, s3_store):
    from flows.maintenance import enforce_retention

    store = s3_store()
    older = old_backup(store, "app-state", timedelta(days=60))
    newest_good = old_backup(store, "app-state", timedelta(days=40))
    newer_bad = old_backup(store, "app-state", timedelta(days=30), verified=False)
    done = enforce_retention(dry_run=False, store=store, components=["app-state"], keep_last_good=1)
    assert set(done["components"]["app-state"]["deleted"]) == {older.id, newer_bad.id}
    assert [m.id for m in list_backups(store, "app-state")] == [newest_good.id]


def test_a_narrower_or_emptied_newer_backup_never_costs_a_part_its_last_good_copy(prefect_server, s3_store):
    """All past the window: a full app-state backup (steps orders + users), a newer one of the
    orders step only, and a newest full one whose users object was deleted by hand. The users
    step's last good copy is the oldest backup: it stays; the emptied one is not good."""
    from flows.maintenance import enforce_retention

    store = s3_store()
    full = old_backup(store, "app-state", timedelta(days=60), parts=("orders", "users"))
    orders_only = old_backup(store, "app-state", timedelta(days=40), parts=("orders",))
    emptied = old_backup(store, "app-state", timedelta(days=35), parts=("orders", "users"))
    backend_for(store).delete_keys([emptied.object("users").key])
    newest = old_backup(store, "app-state", timedelta(hours=1), parts=("orders", "users"))
    backend_for(store).delete_keys([newest.object("orders").key])
    done = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert done["components"]["app-state"]["deleted"] == [emptied.id]
    assert [m.id for m in list_backups(store, "app-state")] == [full.id, orders_only.id, newest.id]
    with pytest.raises(IntegrityError, match=f"{newest.id} is damaged .objects missing"):
        latest_backup(store, "app-state")  # recorded: 'latest' never picks a backup whose data is gone


def test_members_of_the_newest_recovery_point_are_kept(prefect_server, s3_store):
    from flows.maintenance import enforce_retention

    store = s3_store()
    rp_member = old_backup(store, "postgres", timedelta(days=45), labels={"recovery_point": "rp-2"})
    old_backup(store, "rabbitmq", timedelta(days=45), labels={"recovery_point": "rp-2"})
    old_backup(store, "rabbitmq", timedelta(days=50), labels={"recovery_point": "rp-1"})
    newest = old_backup(store, "postgres", timedelta(days=1))
    done = enforce_retention(dry_run=False, store=store, components=["postgres", "rabbitmq"])
    assert done["recovery_point"] == "rp-2"
    assert [m.id for m in list_backups(store, "postgres")] == [rp_member.id, newest.id]
    assert len(done["components"]["rabbitmq"]["deleted"]) == 1


def test_versioned_bucket_deletes_leave_delete_markers(prefect_server, s3_store, s3_bucket):
    from flows.maintenance import enforce_retention

    bucket, client = s3_bucket
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = s3_store()
    gone = old_backup(store, "app-state", timedelta(days=40))
    old_backup(store, "app-state", timedelta(hours=1))
    enforce_retention(dry_run=False, store=store, components=["app-state"])
    versions = client.list_object_versions(Bucket=bucket, Prefix=backup_prefix(store, gone.id))
    assert {m["Key"].rsplit("/", 1)[1] for m in versions.get("DeleteMarkers", [])} == {
        "data",
        "manifest.json",
    }
    assert len(versions.get("Versions", [])) == 2  # recoverable until the lifecycle rule expires them


def test_the_manifest_index_is_a_cache_never_the_truth(s3_store):
    store = s3_store()
    first = old_backup(store, "etcd", timedelta(hours=3))
    assert [m.id for m in list_component(store, "etcd").manifests] == [first.id]
    # a manifest written behind the index's back, and a garbage index: both handled
    second = old_backup(store, "etcd", timedelta(hours=1))
    listing = list_component(store, "etcd")
    assert [m.id for m in listing.manifests] == [first.id, second.id] and listing.fetched == 1
    backend_for(store).put_bytes(layout(store).index_key("etcd"), b"garbage")
    assert [m.id for m in list_component(store, "etcd").manifests] == [first.id, second.id]
    backend_for(store).delete_keys([layout(store).manifest_key(first.id)])
    assert [m.id for m in list_component(store, "etcd").manifests] == [second.id]


def test_a_forged_index_entry_is_never_taken_for_the_stored_manifest(s3_store):
    """The index is written by whoever can write the bucket: an entry whose body is another
    (self-consistent) manifest under the real manifest's ETag was used as it was, and retention
    planned on it (a backup relabelled 'safety' went past its retention) while get_backup read
    the truth (found by an adversarial review). A cached body is used only when its MD5 is the
    listed ETag: the stored manifest, byte for byte."""
    import json

    store = s3_store()
    real = old_backup(store, "etcd", timedelta(hours=3))
    list_component(store, "etcd")  # writes the index
    backend, ikey = backend_for(store), layout(store).index_key("etcd")
    index = json.loads(backend.get_bytes(ikey))
    entry = index["entries"][layout(store).manifest_key(real.id)]
    forged = real.model_copy(update={"labels": {**real.labels, "kind": "safety"}}).sealed()
    entry["body"] = forged.model_dump_json(indent=2)
    backend.put_bytes(ikey, json.dumps(index).encode())
    listing = list_component(store, "etcd")
    assert [m.labels for m in listing.manifests] == [real.labels] and listing.fetched == 1


def test_bad_parameters_are_refused_before_anything_is_read(prefect_server):
    from flows.maintenance import enforce_retention
    from tasks.errors import BadInput

    with pytest.raises(BadInput, match="keep_last_good must be at least 1"):
        enforce_retention(dry_run=False, keep_last_good=0, store="no-such-store-block")


def test_retention_on_the_local_store(prefect_server, local_store):
    from flows.maintenance import enforce_retention

    store = local_store()
    gone = old_backup(store, "rabbitmq", timedelta(days=45))
    kept = old_backup(store, "rabbitmq", timedelta(days=2))
    stale = orphan(store, "rabbitmq", timedelta(days=2))
    done = enforce_retention(dry_run=False, store=store, components=["rabbitmq"])
    assert done["components"]["rabbitmq"]["deleted"] == [gone.id]
    assert [m.id for m in list_backups(store, "rabbitmq")] == [kept.id]
    assert not any(f"/{gone.id}/" in k or k == stale for k in backend_for(store).list_keys(store.prefix))


def test_retention_keeps_the_recovery_point_latest_restores(prefect_server, s3_store):
    """A complete recovery point, then a newer incomplete one (rabbitmq failed in that backup-all):
    retention protected the newest point by its members' labels, the incomplete one, and deleted
    the members of the complete one, the point 'latest' restores (found by an adversarial review)."""
    from flows.maintenance import enforce_retention
    from tasks.operations.recovery import (
        get_recovery_point,
        member_manifests,
        new_recovery_point_id,
        write_recovery_point,
    )

    store = s3_store()
    rp1 = new_recovery_point_id(datetime.now(UTC) - timedelta(days=45))
    p1 = old_backup(store, "postgres", timedelta(days=45), labels={"recovery_point": rp1})
    r1 = old_backup(store, "rabbitmq", timedelta(days=45), labels={"recovery_point": rp1})
    write_recovery_point(store, rp1, {"postgres": p1, "rabbitmq": r1})
    rp2 = new_recovery_point_id(datetime.now(UTC) - timedelta(days=40))
    p2 = old_backup(store, "postgres", timedelta(days=40), labels={"recovery_point": rp2})
    write_recovery_point(store, rp2, {"postgres": p2}, failed={"rabbitmq": "broker down"})
    old_backup(store, "postgres", timedelta(days=1))  # the scheduled backups go on
    old_backup(store, "rabbitmq", timedelta(days=1))
    assert get_recovery_point(store, "latest").id == rp1
    done = enforce_retention(dry_run=False, store=store, components=["postgres", "rabbitmq"])
    assert done["recovery_point"] == rp1
    members = member_manifests(store, get_recovery_point(store, "latest"))
    assert {c: m.id for c, m in members.items()} == {"postgres": p1.id, "rabbitmq": r1.id}
