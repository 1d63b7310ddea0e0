"""S3 Object Lock on moto's S3 server, which enforces it: a locked version cannot be deleted
(COMPLIANCE: by anyone; GOVERNANCE: except with the bypass header), a plain delete only adds a
delete marker. Every test here fails when the lock is missing: it asks the server."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.monitoring import PushgatewayConfig
from blocks.store import Encryption
from sandbox.s3 import make_bucket, s3_store
from tasks.errors import ConfigurationError, IntegrityError
from tasks.storage import object_lock
from tasks.storage.backends import backend_for
from tasks.storage.backends.s3_lock import ceil_second
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.index import list_component
from tasks.storage.layout import layout
from tasks.storage.replicate import replicate_backup
from tasks.storage.retention import plan_retention
from tasks.storage.retention_locks import apply_locks
from tasks.storage.retention_report import locks_markdown
from tasks.storage.retention_types import RetentionPolicy
from tasks.storage.session import backup_session, read_object
from tasks.table import policy

RETENTION = policy("app-state").retention  # 14 days in backup-table.yaml


def locked(moto, mode: str | None = "COMPLIANCE", default: tuple[str, int] | None = None, **fields):
    """A bucket with Object Lock enabled (and a default retention, if given) and a store on it."""
    name, client = make_bucket(moto.url, "klb-lock-" + secrets.token_hex(5), object_lock=True)
    if default:
        rule = {"DefaultRetention": {"Mode": default[0], "Days": default[1]}}
        client.put_object_lock_configuration(
            Bucket=name, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
        )
    return s3_store(moto.url, name, object_lock_mode=mode, **fields), client


def run_out(client, store, pinned: list[tuple[str, str]]) -> None:
    """Each (key, version)'s lock ended a minute ago: moto lets a COMPLIANCE date be shortened
    (S3 would not), which stands in for the days passing."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    for key, vid in pinned:
        client.put_object_retention(
            Bucket=store.bucket,
            Key=key,
            VersionId=vid,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": past},
        )


def backup(store, payload: bytes = b"orders: 42\n" * 500, *, big: bytes = b"", source_time=None):
    with backup_session(store, "app-state") as s:
        if source_time is not None:
            s.source_time = source_time
        s.write("state", [payload])
        if big:
            s.write("big", [big])
        return s.commit(retention=RETENTION)


def versions(client, bucket: str) -> tuple[list[dict], list[dict]]:
    page = client.list_object_versions(Bucket=bucket)
    return page.get("Versions", []), page.get("DeleteMarkers", [])


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_object_lock_every_object_and_the_manifest_retained_until_expiry_plus_margin(moto, mode):
    store, client = locked(moto, mode, object_lock_margin_days=2, compression="none", part_size_mib=5)
    big = os.urandom(6 * 1024 * 1024)  # > one part: a multipart upload
    manifest = backup(store, big=big)

    want = ceil_second(manifest.expires_at + timedelta(days=2))
    assert manifest.expires_at == manifest.finished_at + RETENTION
    heads = [
        client.head_object(Bucket=store.bucket, Key=o.key, VersionId=o.version_id) for o in manifest.objects
    ]
    heads.append(client.head_object(Bucket=store.bucket, Key=layout(store).manifest_key(manifest.id)))
    assert len(heads) == 3
    for head in heads:
        assert head["ObjectLockMode"] == mode
        assert head["ObjectLockRetainUntilDate"] == want
    assert b"".join(read_object(store, manifest.object("big"))) == big


def test_object_lock_preflight_refuses_a_bucket_without_versioning_or_lock_and_writes_nothing(moto):
    name, client = make_bucket(moto.url)  # plain bucket: no versioning, no lock
    store = s3_store(moto.url, name, object_lock_mode="COMPLIANCE")
    with pytest.raises(ConfigurationError, match="versioning never enabled.*put-bucket-versioning"):
        backup(store)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    with pytest.raises(ConfigurationError, match="does not have object lock enabled.*object_lock_mode"):
        backup(store)
    assert versions(client, name) == ([], [])


def test_object_lock_preflight_refuses_a_default_retention_shorter_than_the_component_keeps(moto):
    store, client = locked(moto, mode=None, default=("COMPLIANCE", 7))
    with pytest.raises(ConfigurationError) as err:
        backup(store)
    msg = str(err.value)
    assert "7 days" in msg and "app-state keeps backups 14 days" in msg
    assert "object_lock_mode" in msg and "at least 14 days" in msg
    assert versions(client, store.bucket) == ([], [])

    # long enough: accepted, and every object carries the bucket's default lock
    store, client = locked(moto, mode=None, default=("COMPLIANCE", 14))
    status = object_lock.preflight(store, backend_for(store), "app-state", RETENTION)
    assert status.describe().endswith("default retention COMPLIANCE 14 days")
    manifest = backup(store)
    head = client.head_object(Bucket=store.bucket, Key=manifest.objects[0].key)
    assert head["ObjectLockMode"] == "COMPLIANCE"


def test_retention_skips_object_lock_locked_backups_and_reports_until_when(moto, prefect_server):
    from flows.maintenance import enforce_retention

    store, client = locked(moto, "COMPLIANCE")
    old = [backup(store, source_time=datetime.now(UTC) - timedelta(days=40 + i)) for i in range(2)]
    newest = backup(store)

    # the plan alone would delete both old backups; the lock keeps them, saying until when
    plan = plan_retention(
        list_backups(store, "app-state"),
        RetentionPolicy.from_table("app-state"),
        datetime.now(UTC),
        keys=list(backend_for(store).list_keys(layout(store).component_dir("app-state"))),
        prefix=layout(store).component_dir("app-state"),
    )
    assert sorted(d.id for d in plan.deletions) == sorted(m.id for m in old)
    locks = object_lock.locked_until(backend_for(store), {d.id: d.keys for d in plan.deletions}, plan.now)
    kept = apply_locks(plan, locks)
    assert kept.deletions == []
    assert all(
        d.locked_until == ceil_second(m.expires_at + timedelta(days=1))
        for d, m in zip(
            sorted((d for d in kept.decisions if d.locked_until), key=lambda d: d.id),
            sorted(old, key=lambda m: m.id),
            strict=True,
        )
    )
    assert "locked until" in locks_markdown([kept]) and old[0].id in locks_markdown([kept])

    dry = enforce_retention(dry_run=True, store=store, components=["app-state"])["components"]["app-state"]
    assert dry["would_delete"] == [] and set(dry["locked"]) == {m.id for m in old}
    applied = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert applied["components"]["app-state"]["deleted"] == [] and applied["keys_deleted"] == 0
    assert versions(client, store.bucket)[1] == []  # no delete was even attempted: no marker
    assert {m.id for m in list_backups(store, "app-state")} == {newest.id, *(m.id for m in old)}

    # once a lock has run out (moto lets a COMPLIANCE date be shortened; S3 would not), it goes
    manifest_key = layout(store).manifest_key(old[0].id)
    manifest_version = client.head_object(Bucket=store.bucket, Key=manifest_key)["VersionId"]
    pinned = [(o.key, o.version_id) for o in old[0].objects] + [(manifest_key, manifest_version)]
    run_out(client, store, pinned)
    applied = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert applied["components"]["app-state"]["deleted"] == [old[0].id]
    assert set(applied["components"]["app-state"]["locked"]) == {old[1].id}


def test_object_lock_compliance_the_workers_credentials_cannot_destroy_a_backup(moto, prefect_server):
    from flows.maintenance import verify_backups

    store, client = locked(moto, "COMPLIANCE")  # `client` holds the very credentials of the worker
    payload = os.urandom(200_000)
    manifest = backup(store, payload)
    obj = manifest.objects[0]

    # deleting the pinned version: refused
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=store.bucket, Key=obj.key, VersionId=obj.version_id)
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(
            Bucket=store.bucket, Key=obj.key, VersionId=obj.version_id, BypassGovernanceRetention=True
        )
    refused = client.delete_objects(
        Bucket=store.bucket, Delete={"Objects": [{"Key": obj.key, "VersionId": obj.version_id}]}
    )
    assert refused["Errors"][0]["Code"] == "AccessDenied"

    # overwriting: a new version on top; the restore reads the pinned one, the sweep reports it
    client.put_object(Bucket=store.bucket, Key=obj.key, Body=b"ransom note")
    assert b"".join(read_object(store, get_backup(store, manifest.id).objects[0])) == payload
    with pytest.raises(IntegrityError, match="failed verification") as err:
        verify_backups(components=["app-state"], store=store)
    assert obj.key in str(err.value)

    # a plain delete of every key only adds delete markers: the pinned versions stay
    keys = list(backend_for(store).list_keys(layout(store).component_dir("app-state")))
    backend_for(store).delete_keys(keys)
    # still listed and restorable: a delete marker over a locked manifest is someone hiding it
    assert list_backups(store, "app-state") == [manifest]
    assert b"".join(read_object(store, get_backup(store, "latest", "app-state").objects[0])) == payload
    kept = {(v["Key"], v["VersionId"]) for v in versions(client, store.bucket)[0]}
    assert (obj.key, obj.version_id) in kept
    # undelete (docs/operations.md): remove the delete markers; the backup restores exactly
    for marker in versions(client, store.bucket)[1]:
        client.delete_object(Bucket=store.bucket, Key=marker["Key"], VersionId=marker["VersionId"])
    back = get_backup(store, manifest.id)
    assert back == manifest
    assert b"".join(read_object(store, back.objects[0])) == payload


def test_governance_object_lock_holds_against_a_plain_version_delete_but_not_the_bypass(moto):
    """Why the worker must never hold s3:BypassGovernanceRetention (moto has no IAM: it grants
    the bypass to anyone who asks, as S3 does to a principal with that permission)."""
    store, client = locked(moto, "GOVERNANCE")
    manifest = backup(store)
    obj = manifest.objects[0]
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=store.bucket, Key=obj.key, VersionId=obj.version_id)
    client.delete_object(
        Bucket=store.bucket, Key=obj.key, VersionId=obj.version_id, BypassGovernanceRetention=True
    )
    assert (obj.key, obj.version_id) not in {
        (v["Key"], v["VersionId"]) for v in versions(client, store.bucket)[0]
    }


def test_object_lock_census_counts_unlocked_objects_and_the_earliest_retain_until(moto):
    store, _ = locked(moto, "COMPLIANCE")
    manifests = [backup(store) for _ in range(2)]
    counted = object_lock.census(backend_for(store), manifests, datetime.now(UTC))
    assert counted.objects == 2 and counted.unlocked == 0
    assert counted.earliest_retain_until == ceil_second(manifests[0].expires_at + timedelta(days=1))
    gauges = counted.gauges("verify")
    assert gauges["verify_objects_without_lock"] == 0
    assert (
        gauges["verify_lock_earliest_retain_until_timestamp_seconds"]
        == counted.earliest_retain_until.timestamp()
    )

    plain_name, _ = make_bucket(moto.url)
    plain = s3_store(moto.url, plain_name)
    unlocked = object_lock.census(backend_for(plain), [backup(plain)], datetime.now(UTC))
    assert unlocked.unlocked == 1 and unlocked.earliest_retain_until is None


def test_restore_from_an_object_lock_dr_store_while_the_primary_is_not_locked(
    moto, prefect_server, s3_store, s3_bucket, tmp_path, monkeypatch
):
    from flows.backup import backup_component
    from flows.restore import restore_component
    from tests.test_dr import delete_bucket

    primary = s3_store()  # unlocked, unversioned
    dr, dr_client = locked(moto, "COMPLIANCE", prefix="dr/backups", object_lock_margin_days=3)
    dr_name = "dr-lock-" + secrets.token_hex(4)
    dr.save(dr_name)
    monkeypatch.setenv("KLB_DR_STORE", dr_name)
    monkeypatch.delenv("KLB_DR_MODE", raising=False)

    state = tmp_path / "state.txt"
    state.write_bytes(b"orders: 42\n" * 1000)
    target = AppStateTarget(
        steps=[
            AppStateStep(
                name="state",
                backup_command=["cat", str(state)],
                restore_command=["sh", "-c", 'cat > "$STATE"'],
                env={"STATE": str(state)},
            )
        ]
    )
    result = backup_component("app-state", target=target, store=primary)

    copy = get_backup(dr, result.id)
    want = ceil_second(copy.expires_at + timedelta(days=3))
    for key, vid in [(o.key, o.version_id) for o in copy.objects] + [
        (layout(dr).manifest_key(result.id), None)
    ]:
        head = dr_client.head_object(Bucket=dr.bucket, Key=key, **({"VersionId": vid} if vid else {}))
        assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("COMPLIANCE", want)
    with pytest.raises(ClientError, match="AccessDenied"):
        dr_client.delete_object(
            Bucket=dr.bucket, Key=copy.objects[0].key, VersionId=copy.objects[0].version_id
        )

    bucket, client = s3_bucket
    delete_bucket(client, bucket)  # the primary is gone
    # and the attacker overwrote the DR copy with the worker's credentials: a new version on top
    dr_client.put_object(Bucket=dr.bucket, Key=copy.objects[0].key, Body=b"encrypted by ransomware")
    state.write_bytes(b"lost\n")
    report = restore_component("app-state", backup_id="latest", target=target, store=dr_name)
    assert report["backup_id"] == result.id
    assert state.read_bytes() == b"orders: 42\n" * 1000


def test_object_lock_pitr_refuses_a_wal_archive_without_a_long_enough_default_retention(moto):
    from blocks.pitr import PitrTarget
    from tasks.components.postgres_pitr.backups import check_wal_lock

    store, _ = locked(moto, "COMPLIANCE")
    days = policy("postgres-pitr").retention_days

    def target(bucket: str) -> PitrTarget:
        return PitrTarget(
            archive_url=f"s3://{bucket}/pitr",
            endpoint_url=moto.url,
            region="us-west-2",
            aws_access_key_id="wal-key",
            aws_secret_access_key="wal-secret",
        )

    plain, _ = make_bucket(moto.url)
    with pytest.raises(ConfigurationError, match=f"default retention of at least {days} days"):
        check_wal_lock(target(plain), store)
    short, _ = locked(moto, default=("COMPLIANCE", days - 1))
    with pytest.raises(ConfigurationError, match="barman-cloud-wal-archive cannot set object lock headers"):
        check_wal_lock(target(short.bucket), store)
    enough, _ = locked(moto, default=("COMPLIANCE", days))
    check_wal_lock(target(enough.bucket), store)  # accepted
    check_wal_lock(target(plain), s3_store(moto.url, plain))  # an unlocked store asks nothing


def test_object_lock_sweep_reports_a_replaced_manifest_and_not_a_rerun_replication(moto, prefect_server):
    from flows.maintenance import verify_backups

    primary, _ = locked(moto, "GOVERNANCE")
    dr, dr_client = locked(moto, "COMPLIANCE", prefix="dr/backups")
    manifest = backup(primary)
    replicate_backup(manifest, primary, dr)
    assert replicate_backup(manifest, primary, dr).copied == 0  # a retry: nothing new is written
    mkey = layout(dr).manifest_key(manifest.id)
    assert len(dr_client.list_object_versions(Bucket=dr.bucket, Prefix=mkey)["Versions"]) == 1
    assert verify_backups(components=["app-state"], store=primary, dr_store=dr)  # clean: no false alarm

    # a forged manifest (valid checksum, other labels) written over the locked one: a new version
    forged = manifest.model_copy(update={"labels": {"forged": "yes"}}).sealed()
    pkey = layout(primary).manifest_key(manifest.id)
    backend_for(primary).put_bytes(pkey, forged.model_dump_json().encode())
    with pytest.raises(IntegrityError, match="failed verification") as err:
        verify_backups(components=["app-state"], store=primary, dr_store=dr)
    assert f"primary:{pkey}" in str(err.value) and "dr:" not in str(err.value)


def test_object_lock_orphans_of_a_killed_backup_are_kept_until_their_lock_runs_out(moto, prefect_server):
    from flows.maintenance import enforce_retention
    from tasks.ids import new_backup_id
    from tasks.storage.leftovers import sweep_incomplete_writes
    from tasks.storage.session import BackupSession

    store, client = locked(moto, "COMPLIANCE")
    backup(store)
    killed = BackupSession(store, "app-state")  # written, never committed nor discarded: a kill
    killed.id = new_backup_id("app-state", datetime.now(UTC) - timedelta(days=3))
    obj = killed.write("state", [b"half a backup"])

    assert sweep_incomplete_writes(store, "app-state") == []
    result = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert result["components"]["app-state"]["orphans"] == [] and result["keys_deleted"] == 0
    assert versions(client, store.bucket)[1] == []  # no delete marker: no delete was attempted
    head = client.head_object(Bucket=store.bucket, Key=obj.key)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] > datetime.now(UTC)


def test_object_lock_sweep_pushes_unlocked_objects_and_earliest_retain_until(
    moto, prefect_server, pushgateway, monkeypatch
):
    from flows.maintenance import verify_backups
    from tasks.metrics import read_group

    monkeypatch.setenv("KLB_PUSHGATEWAY_URL", pushgateway.url)
    store, _ = locked(moto, "COMPLIANCE")
    dr_name, _ = make_bucket(moto.url)  # an unlocked DR store: every object counted as unlocked
    dr = s3_store(moto.url, dr_name, prefix="dr/backups")
    manifests = [backup(store) for _ in range(2)]
    for m in manifests:
        replicate_backup(m, store, dr)
    verify_backups(components=["app-state"], store=store, dr_store=dr)

    gauges = read_group(PushgatewayConfig(url=pushgateway.url), "verify", "app-state").gauges
    assert gauges["verify_objects_without_lock"] == 0
    earliest = ceil_second(manifests[0].expires_at + timedelta(days=1)).timestamp()
    assert gauges["verify_lock_earliest_retain_until_timestamp_seconds"] == earliest
    assert gauges["verify_dr_objects_without_lock"] == 2


def test_object_lock_a_forged_manifest_cannot_redirect_a_restore(moto):
    """With the worker's credentials an attacker writes ransom bytes as a new version of a locked
    object and a new manifest version (valid checksum) pinning them: a restore by id, 'latest'
    and the listing still read the manifest as it was written once, and the original bytes."""
    from hashlib import sha256

    store, client = locked(moto, "COMPLIANCE", compression="none")
    payload = os.urandom(50_000)
    manifest = backup(store, payload)
    obj = manifest.objects[0]
    ransom = b"pay us" * 100
    put = client.put_object(Bucket=store.bucket, Key=obj.key, Body=ransom)
    digest = sha256(ransom).hexdigest()
    bad_obj = obj.model_copy(
        update={
            "version_id": put["VersionId"],
            "size": len(ransom),
            "raw_size": len(ransom),
            "sha256": digest,
            "raw_sha256": digest,
            "encryption": Encryption.none,
        }
    )
    forged = manifest.model_copy(update={"objects": [bad_obj]}).sealed()
    client.put_object(
        Bucket=store.bucket, Key=layout(store).manifest_key(manifest.id), Body=forged.model_dump_json()
    )

    for found in (get_backup(store, manifest.id), get_backup(store, "latest", "app-state")):
        assert found == manifest
        assert b"".join(read_object(store, found.objects[0])) == payload
    assert list_backups(store, "app-state") == [manifest]
    assert list_component(store, "app-state").manifests == [manifest]  # what retention and the sweep list


def test_object_lock_a_delete_marker_on_the_newest_manifest_does_not_make_latest_older(moto):
    """A plain delete of a locked backup's manifest only hides it: 'latest' must not silently
    fall back to an older backup, and a restore by id still finds it."""
    store, client = locked(moto, "COMPLIANCE")
    older = backup(store, b"old state\n")
    newest = backup(store, b"new state\n")
    client.delete_object(Bucket=store.bucket, Key=layout(store).manifest_key(newest.id))

    assert get_backup(store, newest.id) == newest
    assert get_backup(store, "latest", "app-state") == newest
    assert [m.id for m in list_backups(store, "app-state")] == [older.id, newest.id]


def test_object_lock_retention_never_deletes_or_hides_a_backup_under_legal_hold(moto, prefect_server):
    """An operator put a legal hold on an old backup (an investigation); the store itself does
    not lock per backup. Past the window, retention keeps it and says why: a delete would only
    have put delete markers on it and hidden it from the catalog."""
    from flows.maintenance import enforce_retention

    store, client = locked(moto, None)
    held = backup(store, source_time=datetime.now(UTC) - timedelta(days=40))
    gone = backup(store, source_time=datetime.now(UTC) - timedelta(days=41))
    newest = backup(store)
    manifest_key = layout(store).manifest_key(held.id)
    hold = {"Bucket": store.bucket, "LegalHold": {"Status": "ON"}}
    client.put_object_legal_hold(Key=manifest_key, **hold)
    for o in held.objects:
        client.put_object_legal_hold(Key=o.key, VersionId=o.version_id, **hold)

    dry = enforce_retention(dry_run=True, store=store, components=["app-state"])["components"]["app-state"]
    assert dry["would_delete"] == [gone.id] and dry["locked"] == {held.id: "legal hold"}
    applied = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert applied["components"]["app-state"]["deleted"] == [gone.id]
    assert {m.id for m in list_backups(store, "app-state")} == {held.id, newest.id}
    markers = {m["Key"] for m in versions(client, store.bucket)[1]}
    assert manifest_key not in markers and not {o.key for o in held.objects} & markers
    census = object_lock.census(backend_for(store), [held, newest], datetime.now(UTC))
    assert census is not None and census.unlocked == len(newest.objects)  # held ones are protected


def test_object_lock_retention_keeps_the_lock_on_the_backup_it_keeps_past_its_window(moto, prefect_server):
    """Backups stopped (an attacker's first move is to pause them); the last good one is past its
    window and its lock has run out. Retention keeps it as the newest good backup: it must keep
    it locked too, or the worker's own credentials delete its versions for good."""
    from flows.maintenance import enforce_retention

    store, client = locked(moto, "COMPLIANCE")
    last = backup(store, source_time=datetime.now(UTC) - timedelta(days=40))
    manifest_key = layout(store).manifest_key(last.id)
    manifest_version = client.head_object(Bucket=store.bucket, Key=manifest_key)["VersionId"]
    pinned = [(o.key, o.version_id) for o in last.objects] + [(manifest_key, manifest_version)]
    run_out(client, store, pinned)

    applied = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert applied["components"]["app-state"]["deleted"] == []
    floor = datetime.now(UTC) + RETENTION
    for key, vid in pinned:
        head = client.head_object(Bucket=store.bucket, Key=key, VersionId=vid)
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] >= floor, key
        with pytest.raises(ClientError):  # the worker's credentials cannot destroy the kept backup
            client.delete_object(Bucket=store.bucket, Key=key, VersionId=vid)
    assert [m.id for m in list_backups(store, "app-state")] == [last.id]
    assert "locked until at least" in applied["components"]["app-state"]["object_lock_hold"][last.id]
    dry = enforce_retention(dry_run=True, store=store, components=["app-state"])["components"]["app-state"]
    assert dry["would_delete"] == [] and "would lock" in dry["object_lock_hold"][last.id]


def test_object_lock_a_delete_marker_on_an_old_kept_backups_manifest_does_not_hide_it(moto, prefect_server):
    """The last good backup is older than its retention + margin, and retention keeps it locked.
    A plain delete of its manifest (the worker's credentials) only hides it: the catalog must
    still list it, or 'latest' loses it and retention stops keeping (and locking) it."""
    from flows.maintenance import enforce_retention
    from tasks.ids import new_backup_id

    store, client = locked(moto, "COMPLIANCE")
    old = datetime.now(UTC) - timedelta(days=40)
    with backup_session(store, "app-state") as s:  # an id as old as its source time
        s.started_at, s.id = old, new_backup_id("app-state", old)
        s.source_time = old
        s.write("state", [b"orders: 42\n"])
        last = s.commit(retention=RETENTION)
    client.delete_object(Bucket=store.bucket, Key=layout(store).manifest_key(last.id))

    assert [m.id for m in list_backups(store, "app-state")] == [last.id]
    assert get_backup(store, "latest", "app-state") == last
    applied = enforce_retention(dry_run=False, store=store, components=["app-state"])
    summary = applied["components"]["app-state"]
    assert summary["deleted"] == [] and summary["orphans"] == [] and last.id in summary["object_lock_hold"]


def test_object_lock_a_safety_backup_kept_past_the_components_retention_stays_locked(moto, prefect_server):
    """Safety backups are kept `special_retention_days`, which may be longer than the component's
    retention: their own lock (retention + margin from the write) then runs out while retention
    still keeps them, and the worker's credentials could delete the state a restore replaced.
    Each run must lock them to the end of the window it keeps them for."""
    from flows.maintenance import enforce_retention
    from tasks.ids import new_backup_id

    store, client = locked(moto, "COMPLIANCE")
    backup(store)  # the newest good routine backup
    old = datetime.now(UTC) - timedelta(days=20)
    with backup_session(store, "app-state", {"kind": "safety"}) as s:
        s.started_at, s.id = old, new_backup_id("app-state", old)
        s.source_time = old
        s.write("state", [b"before the restore\n"])
        safety = s.commit(retention=RETENTION)
    manifest_key = layout(store).manifest_key(safety.id)
    manifest_version = client.head_object(Bucket=store.bucket, Key=manifest_key)["VersionId"]
    pinned = [(o.key, o.version_id) for o in safety.objects] + [(manifest_key, manifest_version)]
    run_out(client, store, pinned)  # its 14 (+1) days ran out

    applied = enforce_retention(
        dry_run=False, store=store, components=["app-state"], special_retention_days=30
    )["components"]["app-state"]
    assert applied["deleted"] == []  # within its 30 days: kept
    floor = old + timedelta(days=30)
    for key, vid in pinned:
        head = client.head_object(Bucket=store.bucket, Key=key, VersionId=vid)
        assert head.get("ObjectLockRetainUntilDate") and head["ObjectLockRetainUntilDate"] >= floor, key
        with pytest.raises(ClientError):  # the worker's credentials cannot destroy it
            client.delete_object(Bucket=store.bucket, Key=key, VersionId=vid)
    assert "locked until at least" in applied["object_lock_hold"][safety.id]


def test_object_lock_lengthening_a_lock_never_weakens_compliance_to_governance(moto):
    """The store block was switched from COMPLIANCE to GOVERNANCE (to be able to clean up new
    backups). Retention lengthens the locks of the backups it keeps: it must not turn their
    COMPLIANCE locks into GOVERNANCE ones, which s3:BypassGovernanceRetention deletes (AWS refuses
    the change and the run failed with a P1 every time; moto accepts it and the lock is weakened)."""
    store, client = locked(moto, "COMPLIANCE")
    kept = backup(store)
    governed = store.model_copy(update={"object_lock_mode": "GOVERNANCE"})
    now = datetime.now(UTC)
    until = now + timedelta(days=400)  # past its COMPLIANCE date: the lock must be lengthened
    assert object_lock.extend_locks(governed, backend_for(governed), [kept], until, now) == 2
    for o in kept.objects:
        head = client.head_object(Bucket=store.bucket, Key=o.key, VersionId=o.version_id)
        assert head["ObjectLockMode"] == "COMPLIANCE", o.key
        assert head["ObjectLockRetainUntilDate"] >= ceil_second(until), o.key
