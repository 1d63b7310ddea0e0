"""The DR store on moto (two buckets, two regions): copies are made by us (moto never
replicates), proven by sha256, restorable when the primary bucket is gone, and a tampered DR copy
is reported by the integrity sweep."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.store import S3Store
from sandbox.s3 import make_bucket, s3_store
from tasks.errors import ConfigurationError, IntegrityError, NotFound
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, list_backups, verify_backup
from tasks.storage.health import finding
from tasks.storage.replicate import copy_difference, replicate_backup, verify_replica
from tasks.storage.session import backup_session


@pytest.fixture
def dr_store(moto):
    """A second bucket in another region, with its own credentials and another prefix."""
    who = {"key_id": "dr-key", "secret": "dr-secret", "region": "us-east-1"}  # moto
    name, client = make_bucket(moto.url, "klb-dr-" + secrets.token_hex(5), **who)
    return s3_store(moto.url, name, prefix="dr/backups", **who), client


def delete_bucket(client, bucket: str) -> None:
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
    client.delete_bucket(Bucket=bucket)


def app_target(state_file) -> AppStateTarget:
    return AppStateTarget(
        steps=[
            AppStateStep(
                name="state",
                backup_command=["cat", str(state_file)],
                restore_command=["sh", "-c", 'cat > "$STATE"'],
                env={"STATE": str(state_file)},
            )
        ]
    )


def _primary_backup(s3_store, dr_store, data: bytes):
    """An app-state backup of `data` in the primary store: (primary, dr, dr_client, manifest)."""
    primary = s3_store()
    dr, dr_client = dr_store
    with backup_session(primary, "app-state") as s:
        s.write("data", [data])
        manifest = s.commit()
    return primary, dr, dr_client, manifest


def test_restore_from_dr_after_the_primary_bucket_is_deleted(
    prefect_server, s3_store, s3_bucket, dr_store, tmp_path, monkeypatch
):
    from flows.backup import backup_component
    from flows.restore import restore_component

    primary = s3_store(encryption_key="k" * 32)
    dr, _ = dr_store
    dr = dr.model_copy(update={"encryption_key": primary.encryption_key})
    dr_name = "dr-" + secrets.token_hex(4)
    dr.save(dr_name)
    monkeypatch.setenv("KLB_DR_STORE", dr_name)
    monkeypatch.delenv("KLB_DR_MODE", raising=False)

    state = tmp_path / "state.txt"
    state.write_bytes(b"orders: 42\n" * 1000)
    result = backup_component("app-state", target=app_target(state), store=primary)

    copy = get_backup(dr, result.id)  # written by the backup flow, manifest last
    assert all(o.key.startswith("dr/backups/app-state/") for o in copy.objects)
    assert [o.sha256 for o in copy.objects] == [o.sha256 for o in get_backup(primary, result.id).objects]

    bucket, client = s3_bucket
    delete_bucket(client, bucket)
    with pytest.raises(ConfigurationError, match="does not exist"):
        list_backups(primary, "app-state")

    state.write_bytes(b"lost\n")
    report = restore_component("app-state", backup_id="latest", target=app_target(state), store=dr_name)
    assert report["backup_id"] == result.id
    assert state.read_bytes() == b"orders: 42\n" * 1000


def test_a_tampered_dr_copy_is_reported_by_the_sweep(prefect_server, s3_store, dr_store):
    from flows.maintenance import verify_backups

    primary, dr, dr_client, manifest = _primary_backup(s3_store, dr_store, b"precious bytes " * 500)
    report = replicate_backup(manifest, primary, dr)
    assert report.copied == 1
    assert replicate_backup(manifest, primary, dr).copied == 0  # idempotent: the copy checks out

    assert verify_backups(components=["app-state"], store=primary, dr_store=dr)  # both clean

    key = get_backup(dr, manifest.id).objects[0].key
    body = dr_client.get_object(Bucket=dr.bucket, Key=key)["Body"].read()
    dr_client.put_object(Bucket=dr.bucket, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])
    with pytest.raises(IntegrityError, match=f"dr:{manifest.id}") as err:
        verify_backups(components=["app-state"], store=primary, dr_store=dr)
    assert f"primary:{manifest.id}" not in str(err.value)  # the primary copy is fine


def forge_dr_manifest(dr, dr_client, backup_id: str, **update) -> None:
    """Rewrite the DR copy's manifest with `update`, resealed: consistent in itself, only not
    the primary's backup any more."""
    copy = get_backup(dr, backup_id)
    forged = copy.model_copy(update=update).sealed()
    key = copy.objects[0].key.rsplit("/", 1)[0] + "/manifest.json"
    dr_client.put_object(Bucket=dr.bucket, Key=key, Body=forged.model_dump_json().encode())


def test_a_dr_copy_whose_manifest_says_something_else_fails_the_sweep(prefect_server, s3_store, dr_store):
    """Same objects, same checksums, but a DR manifest that differs from the primary's elsewhere
    (an older source time moves what at-or-before picks; another kind hides it from latest)."""
    from flows.maintenance import verify_backups

    primary, dr, dr_client, manifest = _primary_backup(s3_store, dr_store, b"precious bytes " * 50)
    replicate_backup(manifest, primary, dr)
    copy = get_backup(dr, manifest.id)
    assert copy_difference(manifest, copy) is None  # its own keys and versions: a faithful copy
    obj = copy.objects[0]
    for field, update in [
        ("source_time", {"source_time": manifest.source_time - timedelta(days=3)}),
        ("labels", {"labels": {**manifest.labels, "kind": "safety"}}),
        ("engine", {"engine": {"tool": "another"}}),
        ("fingerprint", {"fingerprint": {"rows": 1}}),
        ("raw_sha256", {"objects": [obj.model_copy(update={"raw_sha256": "0" * 64})]}),
    ]:
        assert field in (copy_difference(manifest, copy.model_copy(update=update)) or "")

    forge_dr_manifest(dr, dr_client, manifest.id, source_time=manifest.source_time - timedelta(days=3))
    with pytest.raises(IntegrityError, match=f"dr:{manifest.id}") as err:
        verify_backups(components=["app-state"], store=primary, dr_store=dr)
    assert f"primary:{manifest.id}" not in str(err.value)
    # recorded: a restore of 'latest' from the DR store, and its retention, see it
    recorded = finding(dr, manifest.id)
    assert recorded is not None and "not the primary's backup" in recorded.reason
    with pytest.raises(IntegrityError, match="source_time"):
        verify_replica(manifest, dr)


def test_an_older_dr_copy_whose_manifest_says_something_else_fails_the_sweep(
    prefect_server, s3_store, dr_store
):
    """The sweep compared the DR copy with the primary only for the newest `newest` backups: an
    older copy whose manifest says something else (another source time moves what at-or-before
    picks in the DR store) passed, and the DR store's retention and at-or-before trusted it. The
    manifests of both stores are at hand: every copy the DR store holds is compared."""
    from flows.maintenance import verify_backups

    primary, dr, dr_client, older = _primary_backup(s3_store, dr_store, b"older bytes " * 50)
    with backup_session(primary, "app-state") as s:
        s.write("data", [b"newer bytes " * 50])
        newer = s.commit()
    for m in (older, newer):
        replicate_backup(m, primary, dr)
    assert verify_backups(components=["app-state"], store=primary, dr_store=dr, newest=1)
    forge_dr_manifest(dr, dr_client, older.id, source_time=older.source_time - timedelta(days=3))
    with pytest.raises(IntegrityError, match=f"dr:{older.id}") as err:
        verify_backups(components=["app-state"], store=primary, dr_store=dr, newest=1)
    assert f"dr:{newer.id}" not in str(err.value)
    recorded = finding(dr, older.id)
    assert recorded is not None and "not the primary's backup" in recorded.reason


def test_a_newer_dr_only_backup_does_not_spare_the_copy_its_reread(prefect_server, s3_store, dr_store):
    from flows.maintenance import verify_backups

    primary, dr, dr_client, manifest = _primary_backup(s3_store, dr_store, b"precious bytes " * 50)
    replicate_backup(manifest, primary, dr)
    with backup_session(dr, "app-state") as s:  # newer than the primary's newest, only in DR
        s.write("data", [b"other bytes"])
        s.commit()
    key = get_backup(dr, manifest.id).objects[0].key
    body = dr_client.get_object(Bucket=dr.bucket, Key=key)["Body"].read()
    dr_client.put_object(Bucket=dr.bucket, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])
    with pytest.raises(IntegrityError, match=f"dr:{manifest.id}"):
        verify_backups(components=["app-state"], store=primary, dr_store=dr)


def test_native_replication_is_verified_by_checksum_not_trusted(s3_store, dr_store):
    primary, dr, dr_client, manifest = _primary_backup(s3_store, dr_store, b"x" * 4096)
    with pytest.raises(NotFound, match="not \\(yet\\) in the DR store"):
        verify_replica(manifest, dr)
    replicate_backup(manifest, primary, dr)  # stands in for S3 CRR, which moto never performs
    assert verify_replica(manifest, dr).objects == 1
    copy = get_backup(dr, manifest.id)
    dr_client.put_object(Bucket=dr.bucket, Key=copy.objects[0].key, Body=b"y" * copy.objects[0].size)
    with pytest.raises(IntegrityError, match="does not match"):
        verify_replica(manifest, dr)
    with pytest.raises(IntegrityError):
        verify_backup(dr, copy)


def test_dr_store_refuses_a_different_encryption_key_before_copying(s3_store, dr_store):
    primary = s3_store(encryption_key="a" * 32)
    dr, _ = dr_store
    with backup_session(primary, "app-state") as s:
        s.write("data", [b"secret"])
        manifest = s.commit()
    with pytest.raises(ConfigurationError, match="same client-side encryption key"):
        replicate_backup(manifest, primary, dr)
    assert list(backend_for(dr).list_keys(dr.prefix)) == []


def test_a_failed_dr_copy_fails_the_run_keeps_the_primary_and_is_pushed(
    prefect_server, pushgateway, s3_store, moto, tmp_path, monkeypatch
):
    from flows.backup import backup_component
    from tests.test_metrics import scrape, value

    primary = s3_store()
    missing = S3Store(bucket="klb-no-such-" + secrets.token_hex(4), credentials=primary.credentials)
    name = "dr-missing-" + secrets.token_hex(3)
    missing.save(name)
    monkeypatch.setenv("KLB_DR_STORE", name)
    monkeypatch.setenv("KLB_PUSHGATEWAY_URL", pushgateway.url)
    before = value(scrape(pushgateway), "replication_failure_total", "app-state", job="klb_replication") or 0

    state = tmp_path / "s"
    state.write_text("v1")
    with pytest.raises(ConfigurationError, match="does not exist"):
        backup_component("app-state", target=app_target(state), store=primary)
    kept = list_backups(primary, "app-state")
    assert len(kept) == 1 and kept[0].verified_at is not None  # the primary backup stands
    samples = scrape(pushgateway)
    assert value(samples, "replication_failure_total", "app-state", job="klb_replication") == before + 1
    assert value(samples, "backup_last_status", "app-state") == 1  # the backup itself succeeded


def test_the_sweep_reports_a_lost_primary_and_still_checks_dr(prefect_server, s3_store, s3_bucket, dr_store):
    from flows.maintenance import verify_backups

    primary, dr, _, manifest = _primary_backup(s3_store, dr_store, b"z" * 1000)
    replicate_backup(manifest, primary, dr)
    bucket, client = s3_bucket
    delete_bucket(client, bucket)
    with pytest.raises(IntegrityError, match="primary:app-state") as err:
        verify_backups(components=["app-state"], store=primary, dr_store=dr)
    assert f"dr:{manifest.id}" not in str(err.value)


def test_a_dr_store_that_is_the_primary_fails_the_sweep_before_it_reads(prefect_server, s3_store):
    """$KLB_DR_STORE set to the primary's block by mistake: each backup skips its copy (it is
    already 'there'), and a sweep comparing the store with itself found every copy identical.
    It passed, and nobody learned that no second copy exists."""
    from flows.maintenance import verify_backups

    primary = s3_store()
    with backup_session(primary, "app-state") as s:
        s.write("data", [b"only copy"])
        s.commit()
    with pytest.raises(ConfigurationError, match="DR store is the primary"):
        verify_backups(components=["app-state"], store=primary, dr_store=s3_store())
