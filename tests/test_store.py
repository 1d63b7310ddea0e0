"""The store against both backends: the embedded local directory and moto's S3 over HTTP."""

from __future__ import annotations

import hashlib
import logging
import os
import sys

import pytest
from pydantic import SecretStr

from blocks.store import S3Store
from tasks.errors import BadInput, ComponentFailed, IntegrityError, NotFound
from tasks.models import MANIFEST_NAME, Compression
from tasks.proc import stream_stdout
from tasks.storage.backends import backend_for
from tasks.storage.catalog import backup_at_or_before, get_backup, list_backups, verify_backup
from tasks.storage.session import backup_session, read_object

GIB = 1024**3


def random_stream(total: int, digest):
    sent = 0
    while sent < total:
        chunk = os.urandom(min(4 * 1024 * 1024, total - sent))
        digest.update(chunk)
        sent += len(chunk)
        yield chunk


def take_backup(store, data: bytes = b"hello world\n" * 1000, names=("data",), component="app-state"):
    with backup_session(store, component) as session:
        for name in names:
            session.write(name, [data])
        return session.commit()


def all_keys(store) -> list[str]:
    return list(backend_for(store).list_keys(store.prefix))


@pytest.mark.slow
def test_one_gib_stream_round_trips_with_identical_sha256(any_store):
    store = any_store()
    sent = hashlib.sha256()
    with backup_session(store, "app-state") as session:
        session.write("big", random_stream(GIB, sent))
        manifest = session.commit()
    assert manifest.objects[0].raw_size == GIB
    assert manifest.objects[0].raw_sha256 == sent.hexdigest()
    got, size = hashlib.sha256(), 0
    for chunk in read_object(store, manifest.object("big")):
        got.update(chunk)
        size += len(chunk)
    assert (size, got.hexdigest()) == (GIB, sent.hexdigest())


def test_every_s3_object_carries_sse_aes256(s3_store, s3_bucket):
    store = s3_store(part_size_mib=5)
    take_backup(store, os.urandom(12 * 1024 * 1024), names=("multipart", "small"))
    bucket, client = s3_bucket
    keys = all_keys(store)
    assert len(keys) == 3 and any(k.endswith(MANIFEST_NAME) for k in keys)
    for key in keys:
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_versioned_bucket_pins_object_versions(s3_store, s3_bucket):
    bucket, client = s3_bucket
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = s3_store()
    manifest = take_backup(store)
    obj = manifest.object("data")
    assert obj.version_id
    client.put_object(Bucket=bucket, Key=obj.key, Body=b"overwritten", ServerSideEncryption="AES256")
    assert b"".join(read_object(store, obj)) == b"hello world\n" * 1000  # the pinned version


def _flip_byte(store, key: str, s3_bucket=None) -> None:
    backend = backend_for(store)
    data = bytearray(backend.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    backend.put_bytes(key, bytes(data))


@pytest.mark.parametrize("compression", [Compression.zstd, Compression.gzip, Compression.none])
def test_a_flipped_byte_in_any_object_fails_the_read(any_store, compression):
    store = any_store(compression=compression)
    manifest = take_backup(store, os.urandom(300_000), names=("a", "b"))
    for obj in manifest.objects:
        _flip_byte(store, obj.key)
        with pytest.raises(IntegrityError, match=obj.key.rsplit("/", 1)[-1] + "|corrupt|sha256"):
            verify_backup(store, manifest)
        _flip_byte(store, obj.key)  # undo
    verify_backup(store, manifest)
    manifest_key = obj.key.rsplit("/", 1)[0] + "/" + MANIFEST_NAME
    _flip_byte(store, manifest_key)
    with pytest.raises(IntegrityError, match="manifest"):
        get_backup(store, manifest.id)


def test_failed_stream_leaves_nothing_behind(any_store, s3_bucket):
    store = any_store()
    if isinstance(store, S3Store):  # small parts: the failure lands mid multipart upload
        store = store.model_copy(update={"part_size_mib": 5})
    script = "head -c 12000000 /dev/urandom; echo 'disk on fire' >&2; exit 3"
    with (
        pytest.raises(ComponentFailed, match="status 3") as err,
        backup_session(store, "app-state") as session,
    ):
        session.write("ok", [b"first object is fine"])
        with stream_stdout(["sh", "-c", script], name="dump") as out:
            session.write("dump", out)
        session.commit()
    assert "disk on fire" in str(err.value)
    assert list_backups(store, "app-state") == []
    assert all_keys(store) == []
    assert backend_for(store).incomplete_writes(store.prefix) == []
    if isinstance(store, S3Store):
        bucket, client = s3_bucket
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_encrypted_backup_needs_its_key_and_the_key_never_leaks(any_store, caplog):
    key = "k3y-" + os.urandom(8).hex()
    caplog.set_level(logging.DEBUG)
    store = any_store(encryption_key=SecretStr(key))
    manifest = take_backup(store, b"secret payload " * 5000)
    assert b"".join(read_object(store, manifest.object("data"))) == b"secret payload " * 5000
    for wrong, error in ((None, BadInput), (SecretStr("not-the-key"), IntegrityError)):
        other = store.model_copy(update={"encryption_key": wrong})
        with pytest.raises(error, match="encryption_key|key is wrong"):
            b"".join(read_object(other, manifest.object("data")))
    backend = backend_for(store)
    for k in all_keys(store):
        blob = backend.get_bytes(k)
        assert key.encode() not in blob and b"secret payload" not in blob
    assert key not in caplog.text and key not in manifest.model_dump_json() and key not in repr(store)


def test_bad_and_unknown_ids_are_rejected(any_store):
    store = any_store()
    take_backup(store)
    for bad in ("", "../../etc/passwd", "app-state/../x", "app-state-20260101T000000Z-zzzzzz"):
        with pytest.raises(BadInput, match="backup id"):
            get_backup(store, bad)
    with pytest.raises(NotFound, match="no backup app-state-20200101T000000Z-abcdef"):
        get_backup(store, "app-state-20200101T000000Z-abcdef")
    with pytest.raises(BadInput, match="belongs to component"):
        get_backup(store, list_backups(store, "app-state")[0].id, component="postgres")
    with pytest.raises(BadInput, match="object name"), backup_session(store, "app-state") as session:
        session.write("../escape", [b"x"])
    with pytest.raises(NotFound, match="no etcd backups"):
        get_backup(store, "latest", "etcd")


def test_catalog_latest_and_at_or_before(local_store):
    store = local_store()
    first, second = take_backup(store), take_backup(store)
    assert get_backup(store, "latest", "app-state").id == second.id
    assert backup_at_or_before(store, "app-state", first.source_time).id == first.id
    assert backup_at_or_before(store, "app-state", second.source_time).id == second.id
    assert [m.id for m in list_backups(store, "app-state", since=second.source_time)] == [second.id]
    with pytest.raises(NotFound, match="the oldest is"):
        backup_at_or_before(store, "app-state", first.source_time.replace(year=2000))
    with pytest.raises(BadInput, match="future"):
        backup_at_or_before(store, "app-state", first.source_time.replace(year=2999))
    with pytest.raises(BadInput, match="time zone"):
        backup_at_or_before(store, "app-state", first.source_time.replace(tzinfo=None))


def test_a_damaged_backup_whose_snapshot_is_after_the_time_asked_does_not_block_it(local_store):
    """A backup that started before the time asked for but took its snapshot after it (a dump's
    snapshot, a Velero backup's end) is no candidate for that time: its damage must not refuse
    the backup that is, as if it were a newer one the restore would silently pass over."""
    from datetime import UTC, datetime, timedelta

    from tasks.storage.health import mark_damaged

    store = local_store()
    before = take_backup(store)
    with backup_session(store, "app-state") as s:
        s.write("data", [b"later"])
        s.source_time = datetime.now(UTC) + timedelta(seconds=30)
        after = s.commit()
    mark_damaged(store, after.id, "object data: sha256 mismatch")
    when = max(before.source_time, after.started_at)
    assert backup_at_or_before(store, "app-state", when).id == before.id


def test_a_damaged_manifest_does_not_hide_the_others(local_store):
    store = local_store()
    good, bad = take_backup(store), take_backup(store)
    key = bad.objects[0].key.rsplit("/", 1)[0] + "/" + MANIFEST_NAME
    backend_for(store).put_bytes(key, b"{not json")
    assert [m.id for m in list_backups(store, "app-state")] == [good.id]


def test_local_store_full_disk_gives_a_clear_error(local_store, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.fail("/dev/full is needed to simulate a full disk", pytrace=False)
    store = local_store()
    from tasks.storage.backends.local import _LocalWriter

    writer = _LocalWriter(tmp_path / "store" / "x")
    writer._fh.close()
    writer._fh = open("/dev/full", "wb", buffering=0)  # noqa: SIM115
    with pytest.raises(Exception, match="local store is full"):
        writer.write(b"x" * 10)
    writer.abort()
    assert list_backups(store, "app-state") == []
    assert sys.platform.startswith("linux")


@pytest.fixture
def web_server():
    """A plain HTTP server that is not S3 (a web console, another service on the port)."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("scheme", "says"),
    [("http", "does not answer like S3"), ("https", "write endpoint_url as http://")],
)
def test_an_endpoint_that_is_not_s3_is_a_configuration_error(web_server, scheme, says):
    """Not 'object does not exist' nor a raw botocore SSLError: the message names endpoint_url."""
    from sandbox.s3 import s3_store
    from tasks.errors import ConfigurationError

    store = s3_store(
        f"{scheme}://127.0.0.1:{web_server}",
        "klb-nowhere",
        client_config={"retries": {"total_max_attempts": 1}},
    )
    backend = backend_for(store)
    with pytest.raises(ConfigurationError, match=says):
        backend.preflight()
    with pytest.raises(ConfigurationError, match=says):
        backend.get_bytes("backups/app-state/x")


@pytest.mark.parametrize("how", ["dot-dot", "other-name", "duplicate", "none"])
def test_a_manifest_must_name_its_objects_in_its_own_folder_exactly(any_store, how):
    """A manifest (checksum recomputed) whose object key leaves its folder through '..' (a local
    store resolves it into backup B), or names another object than its own name says, or names
    one object twice, is refused: backup A's manifest can never restore B's bytes. One that
    names none (it would verify vacuously and count as the newest good backup) is refused too."""
    store = any_store()
    a, b = take_backup(store, b"state A\n"), take_backup(store, b"state B\n")
    folder = a.objects[0].key.rsplit("/", 1)[0]
    evil = {
        "dot-dot": [b.objects[0].model_copy(update={"key": f"{folder}/../{b.id}/data"})],
        "other-name": [a.objects[0].model_copy(update={"key": f"{folder}/other"})],
        "duplicate": [a.objects[0], a.objects[0]],
        "none": [],
    }[how]
    forged = a.model_copy(update={"objects": evil}).sealed()
    key = a.objects[0].key.rsplit("/", 1)[0] + "/" + MANIFEST_NAME
    backend_for(store).put_bytes(key, forged.model_dump_json().encode())
    with pytest.raises(IntegrityError, match=f"is not the manifest of backup {a.id}"):
        get_backup(store, a.id)
    assert [m.id for m in list_backups(store, "app-state")] == [b.id]


def test_s3_parts_grow_so_a_long_stream_stays_under_the_part_limit(s3_store, s3_bucket, monkeypatch):
    """S3 takes 10,000 parts at most: parts grow every PARTS_PER_STEP parts (here 2), the store
    still confirms the composite checksum, and the object reads back whole."""
    from tasks.storage.backends import s3_upload

    monkeypatch.setattr(s3_upload, "PARTS_PER_STEP", 2)
    store = s3_store(part_size_mib=5, compression="none")
    data = os.urandom(40 * 1024 * 1024)
    with backup_session(store, "app-state") as session:
        session.write("big", [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)])
        manifest = session.commit()
    bucket, client = s3_bucket
    obj = manifest.object("big")
    sizes = [
        client.head_object(Bucket=bucket, Key=obj.key, PartNumber=n)["ContentLength"]
        for n in range(
            1, 1 + int(client.head_object(Bucket=bucket, Key=obj.key)["ETag"].strip('"').split("-")[1])
        )
    ]
    mib = 1024 * 1024
    assert sizes[:4] == [5 * mib, 5 * mib, 10 * mib, 10 * mib] and sum(sizes) == len(data)
    assert b"".join(read_object(store, obj)) == data


def test_s3_upload_memory_is_bounded_by_the_parts_in_flight(s3_store):
    """A stream of 24 parts holds at most max_concurrency parts in flight, counting the one being
    joined: the next part is joined only once a slot is free, and a finished part is not kept by
    the upload pool. With one part at a time, Python's allocations stay under two parts (the pieces
    of the next one and their join) whatever the stream's length; they used to pass 2.5."""
    import tracemalloc

    store = s3_store(part_size_mib=5, max_concurrency=1, compression="none")
    part = 5 * 1024 * 1024
    piece = os.urandom(1024 * 1024)
    with backup_session(store, "app-state") as session:  # botocore's models, read once per process
        session.write("small", [piece])
        session.commit()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with backup_session(store, "app-state") as session:
            session.write("long", (piece for _ in range(24 * 5)))  # 120 MiB
            session.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 2 * part, f"peak {peak / part:.1f} parts"


def test_s3_stream_past_the_part_limit_fails_clearly_and_leaves_nothing(s3_store, monkeypatch):
    from tasks.errors import ConfigurationError
    from tasks.storage.backends import s3_upload

    monkeypatch.setattr(s3_upload, "MAX_PARTS", 2)
    store = s3_store(part_size_mib=5, compression="none")
    chunks = [os.urandom(1024 * 1024) for _ in range(16)]
    with (
        pytest.raises(ConfigurationError, match="part_size_mib"),
        backup_session(store, "app-state") as session,
    ):
        session.write("big", chunks)
    assert all_keys(store) == []
    uploads = backend_for(store).client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads == []


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_local_write_is_read_back_and_decoded_before_the_manifest(local_store, encrypted, monkeypatch):
    """Where no store checks the upload, each object is read back and decoded before the
    manifest: bytes changed on disk after the write, or bytes that do not decode to what was
    dumped, are refused and nothing is recorded."""
    store = local_store(**({"encryption_key": SecretStr("k" * 32)} if encrypted else {}))
    data = os.urandom(3 << 20) + b"compressible " * 100_000

    with (
        pytest.raises(IntegrityError, match="/data: "),  # the hash, or (encrypted) the decryption
        backup_session(store, "app-state") as session,
    ):
        obj = session.write("data", [data])
        path = os.path.join(store.path, obj.key)
        with open(path, "r+b") as fh:  # changed on disk between the write and the manifest
            fh.seek(obj.size // 2)
            byte = fh.read(1)
            fh.seek(obj.size // 2)
            fh.write(bytes([byte[0] ^ 1]))
        session.commit()
    assert list_backups(store, "app-state") == [] and all_keys(store) == []

    import tasks.storage.codec as codec

    def flipped(step):  # a compressor whose output no longer decodes to its input
        def wrong(self, *args) -> bytes:
            out = step(self, *args)
            return out[:-1] + bytes([out[-1] ^ 1]) if len(out) > 64 else out

        return wrong

    # both: with threads, zstd may hold all its output until the end
    monkeypatch.setattr(codec._Compressor, "update", flipped(codec._Compressor.update))
    monkeypatch.setattr(codec._Compressor, "finish", flipped(codec._Compressor.finish))
    with pytest.raises(IntegrityError, match="/data: "):  # zstd's or gzip's error, or the hash's
        take_backup(store, data)
    monkeypatch.undo()
    assert list_backups(store, "app-state") == [] and all_keys(store) == []

    manifest = take_backup(store, data)  # and a sound write goes through
    assert b"".join(read_object(store, manifest.object("data"))) == data


def test_a_failure_after_the_manifest_is_written_keeps_the_backup_whole(local_store):
    """A cancellation landing after commit() (still inside the session) must not delete the
    objects of a backup the catalog already lists."""
    store = local_store()
    with pytest.raises(KeyboardInterrupt), backup_session(store, "app-state") as session:
        session.write("data", [b"kept" * 1000])
        session.commit()
        raise KeyboardInterrupt
    manifest = get_backup(store, "latest", "app-state")
    assert manifest.id == session.id
    assert verify_backup(store, manifest)["objects"] == 1
