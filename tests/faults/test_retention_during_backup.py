"""Retention runs (for real, dry_run=False) while a backup is being written: the backup in flight
is objects without a manifest plus an open multipart upload, younger than the grace; retention
leaves both alone and the backup completes, listed and verified."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.maintenance import enforce_retention
from sandbox.services import wait_until
from tasks.errors import IntegrityError
from tasks.ids import new_backup_id
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups, verify_backup
from tasks.storage.session import BackupSession
from tests.faults.helpers import pid_of, restorer_argv, streamer_argv

# writes 12 MiB (5 MiB parts go up, the multipart upload stays open), waits for argv[2],
# writes 1 MiB more
HALF = """
import os, sys, time
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid())); os.replace(sys.argv[1] + ".tmp", sys.argv[1])
for _ in range(12):
    sys.stdout.buffer.write(os.urandom(1 << 20)); sys.stdout.flush()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.stdout.buffer.write(os.urandom(1 << 20))
"""


@pytest.mark.fault(
    "concurrency",
    "enforce_retention(dry_run=False) runs while an app-state backup is half written (one object "
    "stored, the next one an open multipart upload, no manifest yet)",
    "retention deletes nothing of it (no orphan, no incomplete write removed); the backup then "
    "completes and is listed and verified",
)
def test_retention_during_a_backup_leaves_it_alone(prefect_server, s3_store, tmp_path):
    store = s3_store(part_size_mib=5)
    gate = tmp_path / "go"
    steps = [
        AppStateStep(
            name="first",
            backup_command=streamer_argv(tmp_path / "first.pid", 1),
            restore_command=restorer_argv(tmp_path / "first.out"),
        ),
        AppStateStep(
            name="second",
            backup_command=[sys.executable, "-c", HALF, str(tmp_path / "second.pid"), str(gate)],
            restore_command=restorer_argv(tmp_path / "second.out"),
        ),
    ]
    earlier = backup_component("app-state", target=AppStateTarget(steps=steps[:1]), store=store)
    (tmp_path / "first.pid").unlink()
    backend = backend_for(store)
    result: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: result.update(
            m=backup_component("app-state", target=AppStateTarget(steps=steps), store=store)
        )
    )
    runner.start()
    try:
        pid_of(tmp_path / "second.pid")

        def in_flight() -> bool:
            stored = [
                k for k in backend.list_keys(store.prefix) if k.endswith("/first") and earlier.id not in k
            ]
            return bool(stored) and bool(backend.incomplete_writes(store.prefix))

        wait_until(
            in_flight, 60, "the second backup to store its first object and open an upload for the next"
        )
        summary = enforce_retention(dry_run=False, store=store, components=["app-state"])
    finally:
        gate.touch()
        runner.join()
    app = summary["components"]["app-state"]
    assert app["orphans"] == [] and app["deleted"] == []
    assert summary["incomplete_writes_removed"] == []
    listed = {m.id: m for m in list_backups(store, "app-state")}
    assert sorted(listed) == sorted([earlier.id, result["m"].id])
    manifest = listed[result["m"].id]
    verify_backup(store, manifest)
    assert [o.name for o in manifest.objects] == ["first", "second"]
    assert manifest.objects[1].raw_size == 13 * 1024 * 1024


@pytest.mark.fault(
    "concurrency",
    "an app-state backup runs longer than retention's orphan grace; enforce_retention(dry_run=False) "
    "collects its stored object as an abandoned write before the manifest is written",
    "the backup fails naming the vanished object and writes no manifest: nothing is listed as a "
    "good backup whose data is gone",
)
def test_a_backup_whose_objects_retention_collected_is_never_committed(prefect_server, s3_store):
    store = s3_store()
    session = BackupSession(store, "app-state")
    # a backup started two days ago and still running: to retention, past the grace, abandoned
    session.started_at = datetime.now(UTC) - timedelta(days=2)
    session.id = new_backup_id("app-state", session.started_at)
    session.write("data", [b"x" * 1000])
    summary = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert summary["components"]["app-state"]["orphans"] == [session.prefix]
    with pytest.raises(IntegrityError, match="data vanished"):
        session.commit()
    assert list_backups(store, "app-state") == []


@pytest.mark.fault(
    "concurrency",
    "enforce_retention(dry_run=False) while a restore of app-state holds the component lock and "
    "reads an old backup past the window",
    "retention deletes nothing of app-state, fails naming it as left for the next run; once the "
    "restore is done, the next run deletes the old backup",
)
def test_retention_never_deletes_what_a_running_restore_may_read(prefect_server, s3_store, monkeypatch):
    from flows.locks import component_lock
    from tasks.errors import TransientError
    from tests.test_retention_flow import old_backup

    store = s3_store()
    old = old_backup(store, "app-state", timedelta(days=40))
    newest = old_backup(store, "app-state", timedelta(hours=1))
    monkeypatch.setenv("KLB_COMPONENT_LOCK_WAIT_SECONDS", "1")
    with component_lock("app-state", timeout_seconds=30):  # what restore_component holds as it reads
        with pytest.raises(TransientError, match="app-state was left for the next run"):
            enforce_retention(dry_run=False, store=store, components=["app-state"])
        assert [m.id for m in list_backups(store, "app-state")] == [old.id, newest.id]
    done = enforce_retention(dry_run=False, store=store, components=["app-state"])
    assert done["components"]["app-state"]["deleted"] == [old.id]
    assert [m.id for m in list_backups(store, "app-state")] == [newest.id]
