"""S3 misbehaving under a backup or a restore: errors, throttling, slowness, cut bodies, death."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import timedelta

import pytest

from flows.backup import backup_component
from sandbox.services import wait_until
from tasks.errors import ConfigurationError, IntegrityError, TransientError
from tasks.storage.catalog import list_backups, verify_backup
from tasks.storage.layout import layout
from tasks.storage.leftovers import sweep_incomplete_writes
from tasks.storage.session import backup_session, read_object
from tests.faults.helpers import app_target, multipart_uploads, s3_keys
from tests.faults.s3_fault_proxy import Rule

MIB = 1024 * 1024
PART = {"method": "PUT", "query": "partNumber"}


def backup_bytes(store, payload: bytes, first: bytes | None = None):
    """A backup of `payload` as object 'data', after a small object 'first' if given."""
    with backup_session(store, "app-state") as session:
        if first is not None:
            session.write("first", [first])
        session.write("data", [payload[i : i + MIB] for i in range(0, len(payload), MIB)])
        return session.commit()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.fault(
    "s3",
    "upload parts answer 503 SlowDown (twice), 500 InternalError, and one stalls past the 1 s read timeout",
    "retried by botocore with backoff; the backup completes and its objects verify byte for byte",
)
def test_throttled_and_failing_upload_parts_are_retried(proxied_store, fault_proxy, s3_bucket):
    bucket, client = s3_bucket
    store = proxied_store(
        part_size_mib=5, max_concurrency=1, compression="none", client_config={"read_timeout": 1}
    )
    slow = {"status": 503, "code": "SlowDown"}
    rules = [
        fault_proxy.add(Rule("error", **PART, times=2, **slow)),
        fault_proxy.add(Rule("error", **PART, skip=1, times=1, status=500, code="InternalError")),
        fault_proxy.add(Rule("delay", **PART, skip=2, times=1, delay=1.5)),
    ]
    payload = os.urandom(12 * MIB)
    manifest = backup_bytes(store, payload)
    assert [r.fired for r in rules] == [2, 1, 1]
    assert len(fault_proxy.requests("PUT", "partNumber")) == 3 + 4  # 3 parts + 4 retried attempts
    assert b"".join(read_object(store, manifest.object("data"))) == payload
    assert multipart_uploads(client, bucket) == []
    assert [m.id for m in list_backups(store, "app-state")] == [manifest.id]


@pytest.mark.fault(
    "s3",
    "a download's body is cut mid-way (twice), and a GET answers 503 before its body",
    "S3Backend.read resumes with a Range request from the last byte, pinned to the object's ETag; "
    "the bytes and sha256 match",
)
def test_download_cut_mid_body_resumes_from_the_last_byte(proxied_store, fault_proxy):
    store = proxied_store(compression="none", verify_after_write=False)
    payload = os.urandom(6 * MIB)
    manifest = backup_bytes(store, payload)
    fault_proxy.clear()
    fault_proxy.add(Rule("error", method="GET", path="/data$", times=1, status=503, code="SlowDown"))
    fault_proxy.add(Rule("drop_response", method="GET", path="/data$", times=2))
    got = b"".join(read_object(store, manifest.object("data")))
    assert sha(got) == sha(payload) and len(got) == len(payload)
    gets = fault_proxy.requests("GET", "/data")
    assert [g[2].split(" ")[0] for g in gets] == ["error", "drop_response", "drop_response", "forwarded"]
    ranges = [g[2].split(" ", 1)[1] for g in gets[2:]]
    assert all(r.startswith("range=bytes=") and r.endswith("-") for r in ranges)
    first, second = (int(r.split("=")[2].rstrip("-")) for r in ranges)
    assert 0 < first < second < len(payload)  # each resume starts where the last one stopped


@pytest.mark.fault(
    "s3",
    "a download whose body is cut every time",
    "TransientError after 5 resumes ('broke 6 times ... retry later'); no partial data passes",
)
def test_download_cut_every_time_fails_clearly(proxied_store, fault_proxy, monkeypatch):
    monkeypatch.setattr("tasks.storage.backends.s3.RESUME_DELAY", 0.01)  # same code path, shorter waits
    store = proxied_store(compression="none", verify_after_write=False)
    manifest = backup_bytes(store, os.urandom(2 * MIB))
    fault_proxy.add(Rule("drop_response", method="GET", path="/data$", times=None))
    with pytest.raises(TransientError, match=r"download of s3://.*/data broke 6 times .*retry later"):
        verify_backup(store, manifest)


@pytest.mark.fault(
    "s3",
    "every upload of a part answers 500 (S3 down for writes)",
    "TransientError 'S3 is failing on s3://.../data (InternalError); retry later'; nothing listed, "
    "no object, the multipart upload aborted",
)
def test_persistent_upload_failure_fails_cleanly(proxied_store, fault_proxy, s3_bucket):
    bucket, client = s3_bucket
    store = proxied_store(part_size_mib=5)
    fault_proxy.add(Rule("error", **PART, times=None))
    with pytest.raises(TransientError, match=r"S3 is failing on s3://.*/data \(InternalError\); retry later"):
        backup_bytes(store, os.urandom(11 * MIB), first=b"small")
    assert s3_keys(client, bucket) == []  # 'first' was deleted, 'data' never completed
    assert multipart_uploads(client, bucket) == []
    assert list_backups(store, "app-state") == []


@pytest.mark.fault(
    "s3",
    "the S3 server dies mid-upload (connections cut, port closed) and comes back later",
    "ConfigurationError 'cannot reach the S3 endpoint'; nothing listed; the orphaned multipart upload "
    "and object are removed by sweep_incomplete_writes (run by the enforce-retention flow) once S3 is back",
)
def test_s3_dies_mid_upload_and_the_sweep_removes_the_orphans(proxied_store, fault_proxy, s3_bucket):
    bucket, client = s3_bucket
    store = proxied_store(part_size_mib=5, max_concurrency=1)
    fault_proxy.add(Rule("delay", **PART, skip=1, times=1, delay=2))  # part 2 hangs: S3 dies then

    def kill_when_part_two_is_in_flight():
        wait_until(lambda: len(fault_proxy.requests("PUT", "partNumber=2")) == 1, 30, "part 2")
        fault_proxy.stop()

    killer = threading.Thread(target=kill_when_part_two_is_in_flight)
    killer.start()
    with pytest.raises(ConfigurationError, match=r"cannot reach the S3 endpoint for s3://.*/data"):
        backup_bytes(store, os.urandom(12 * MIB), first=b"small")
    killer.join()
    # S3 is back: the failed backup could not clean up while it was down
    fault_proxy.start()
    orphans = multipart_uploads(client, bucket) + s3_keys(client, bucket)
    assert len(orphans) == 2 and all("/app-state/" in k for k in orphans)
    assert list_backups(store, "app-state") == []
    assert sweep_incomplete_writes(store, "app-state") == []  # the 24 h default spares young ones
    removed = sweep_incomplete_writes(store, "app-state", older_than=timedelta(0))
    assert sorted(removed) == sorted(orphans)
    assert multipart_uploads(client, bucket) == [] and s3_keys(client, bucket) == []


@pytest.mark.fault(
    "s3",
    "S3 fails every upload of the first backup attempt (500 x3), then recovers; the flow's task retries",
    "the retry is a new backup id; the failed attempt's objects are gone; exactly one manifest; "
    "no multipart upload left",
)
def test_a_retried_backup_flow_neither_duplicates_nor_corrupts(
    prefect_server, proxied_store, fault_proxy, s3_bucket, tmp_path, flow_retries_now
):
    bucket, client = s3_bucket
    store = proxied_store(part_size_mib=5, max_concurrency=1)
    fault_proxy.add(Rule("error", **PART, times=3))  # = max_attempts: the first try gives up
    result = backup_component("app-state", target=app_target(tmp_path, mib=7), store=store)
    attempts = [k.split("/")[5] for _, k, _ in fault_proxy.requests("POST", "?uploads")]
    assert len(set(attempts)) == 2 and attempts[-1] == result.id  # two tries, two distinct ids
    keys = [k for k in s3_keys(client, bucket) if "/_prefect-results/" not in k]
    keys_of = layout(store)
    assert keys == [keys_of.manifest_key(result.id), keys_of.object_key(result.id, "sessions")]
    assert [m.id for m in list_backups(store, "app-state")] == [result.id]
    assert multipart_uploads(client, bucket) == []
    verify_backup(store, list_backups(store, "app-state")[0])


@pytest.mark.fault(
    "s3",
    "a download is cut mid-body and, before it resumes, the object is overwritten (unversioned bucket)",
    "the resume is pinned with If-Match on the first ETag: IntegrityError '... changed while it was "
    "being read: read it again', never a splice of two versions",
)
def test_resume_never_splices_two_versions(proxied_store, fault_proxy, s3_bucket):
    bucket, client = s3_bucket
    store = proxied_store(compression="none", verify_after_write=False)
    manifest = backup_bytes(store, os.urandom(3 * MIB))
    key = manifest.object("data").key

    def overwrite():
        client.put_object(Bucket=bucket, Key=key, Body=os.urandom(3 * MIB))

    fault_proxy.add(Rule("drop_response", method="GET", path="/data$", on_fire=overwrite))
    with pytest.raises(
        IntegrityError, match=rf"s3://{bucket}/{key} changed while it was being read: read it again"
    ):
        verify_backup(store, manifest)
    assert [g[2].split(" ")[0] for g in fault_proxy.requests("GET", "/data")] == [
        "drop_response",
        "forwarded",
    ]


@pytest.mark.fault(
    "s3",
    "require_bucket_encryption on a bucket that has default encryption (the positive case)",
    "the backup is written and listed",
)
def test_required_bucket_encryption_passes_when_present(s3_store, s3_bucket):
    bucket, client = s3_bucket
    client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    store = s3_store(require_bucket_encryption=True)
    manifest = backup_bytes(store, b"state")
    assert [m.id for m in list_backups(store, "app-state")] == [manifest.id]


@pytest.mark.fault(
    "s3",
    "the manifest PUT is answered after the client gave up (read timeout, every attempt); the "
    "server stores it all the same",
    "the backup fails, and its objects stay: the manifest that lands later names a whole, verified "
    "backup, never one whose objects were deleted as the failed backup was discarded",
)
def test_a_manifest_put_the_client_gave_up_on_never_lists_a_backup_without_its_objects(
    proxied_store, fault_proxy
):
    store = proxied_store(
        client_config={"read_timeout": 1, "retries": {"mode": "standard", "total_max_attempts": 2}}
    )
    fault_proxy.add(Rule("delay", method="PUT", path=r"manifest\.json$", delay=2, times=None))
    with pytest.raises(TransientError):
        backup_bytes(store, b"state\n" * 1000)
    fault_proxy.clear()
    wait_until(lambda: list_backups(store, "app-state") != [], 15, "the late manifest to land")
    (late,) = list_backups(store, "app-state")
    verify_backup(store, late)  # whole: its objects were left in place


@pytest.mark.fault(
    "s3",
    "the worker may not read the bucket's Object Lock configuration (GetObjectLockConfiguration "
    "answers 403 AccessDenied: a least-privilege policy) on a COMPLIANCE bucket, and retention "
    "runs with a backup past its window whose objects are still locked",
    "retention asks each version's lock as usual and keeps the locked backup ('locked' says until "
    "when); it never reports it deleted nor puts delete markers over it, and the catalog lists it",
)
def test_retention_never_takes_an_unreadable_lock_configuration_for_no_lock(
    moto, fault_proxy, prefect_server
):
    from datetime import UTC, datetime

    from flows.maintenance import enforce_retention
    from sandbox.s3 import make_bucket
    from sandbox.s3 import s3_store as make_store
    from tasks.ids import new_backup_id

    bucket, client = make_bucket(moto.url, object_lock=True)
    store = make_store(fault_proxy.url, bucket, object_lock_mode="COMPLIANCE")
    old = datetime.now(UTC) - timedelta(days=40)  # past its 14 days; locked 15 days from its write
    with backup_session(store, "app-state") as s:
        s.started_at, s.id, s.source_time = old, new_backup_id("app-state", old), old
        s.write("data", [b"orders: 41\n"])  # the same part as the newer one: it replaces this
        locked = s.commit(retention=timedelta(days=14))
    backup_bytes(store, b"orders: 42\n")  # the newest good backup
    fault_proxy.add(
        Rule("error", method="GET", query="object-lock", status=403, code="AccessDenied", times=None)
    )

    summary = enforce_retention(dry_run=False, store=store, components=["app-state"])["components"][
        "app-state"
    ]
    assert summary["deleted"] == [] and locked.id in summary["locked"], summary
    assert client.list_object_versions(Bucket=bucket).get("DeleteMarkers", []) == []
    fault_proxy.clear()
    assert locked.id in [m.id for m in list_backups(store, "app-state")]
