"""The engine dies mid-stream, the disk fills up, two backups race: nothing partial survives.

ENGINE_KILLS is the table of engines to kill. A component adds a row: how to build its target
and how to find its engine's pid while it streams (see `EngineKill`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.backup import backup_component
from sandbox.services import wait_until
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups, verify_backup
from tests.faults.helpers import app_target, dir_state, pid_of


@dataclass(frozen=True)
class EngineKill:
    component: str
    store: str  # "local" | "s3"
    # (request, tmp_path) -> (target block, () -> pid of the engine once it streams)
    start: Callable[[pytest.FixtureRequest, Path], tuple[object, Callable[[], int]]]
    message: str  # a fragment of the flow's failure message
    category: str = "engine"

    @property
    def fault(self) -> str:
        return f"{self.component}'s engine is SIGKILLed mid-stream ({self.store} store)"

    @property
    def outcome(self) -> str:
        return (
            f"flow Failed with '{self.message}'; nothing listed, no object, "
            "no multipart upload or partial file left; the pushgateway shows backup_failure_total+1, "
            "a fresh backup_last_failure_timestamp_seconds and backup_last_status 0"
        )


def app_state_streaming(request, tmp_path: Path):
    target = app_target(tmp_path, mib=0, pause=0.02)  # streams until killed
    return target, lambda: pid_of(tmp_path / "sessions.pid")


def _frozen_once_streaming(name: str, written: int = 1 << 20) -> int:
    """The pid of our child `name`, SIGSTOPped once it has written `written` bytes: it is then
    certainly mid-stream, however fast the dump would otherwise be."""
    from tests.pg_helpers import children

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in children(name):
            try:
                io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            except OSError:
                continue
            if int(io["wchar"]) >= written:
                os.kill(pid, signal.SIGSTOP)
                return pid
        time.sleep(0.005)
    raise AssertionError(f"{name} never wrote {written} bytes")


def postgres_streaming(request, tmp_path: Path):
    from tests.pg_helpers import target_for

    db = request.getfixturevalue("pg_big_db")
    target = target_for(request.getfixturevalue("postgres"), databases=[db])
    return target, lambda: _frozen_once_streaming("pg_dump")


ENGINE_KILLS = [
    EngineKill("app-state", "local", app_state_streaming, "app-state sessions was killed by signal 9"),
    EngineKill("app-state", "s3", app_state_streaming, "app-state sessions was killed by signal 9"),
    EngineKill("postgres", "local", postgres_streaming, "was killed by signal 9"),
]


def _store(request, kind: str):
    if kind == "local":
        return request.getfixturevalue("local_store")()
    return request.getfixturevalue("s3_store")(part_size_mib=5)


def _everything(store) -> list[str]:
    """Every key or file under the store's prefix except Prefect's own results."""
    return [k for k in backend_for(store).list_keys(store.prefix) if "/_prefect-results/" not in k]


@pytest.fixture(scope="session")
def pg_big_db(postgres):
    """A database whose dump takes long enough to be caught mid-stream (~8 MB)."""
    from tests.pg_helpers import drop, make_db, new_name, target_for

    name = new_name("fault_dump")
    make_db(target_for(postgres), name, rows=30_000)
    yield name
    drop(target_for(postgres), name)


@pytest.mark.parametrize("case", ENGINE_KILLS, ids=lambda c: f"{c.component}-{c.store}")
def test_engine_killed_mid_stream_leaves_nothing(
    case, request, prefect_server, pushgateway, monkeypatch, tmp_path
):
    from tests.test_metrics import scrape, value

    monkeypatch.setenv("KLB_PUSHGATEWAY_URL", pushgateway.url)
    failures = value(scrape(pushgateway), "backup_failure_total", case.component) or 0
    started = time.time()
    store = _store(request, case.store)
    target, engine_pid = case.start(request, tmp_path)
    backend = backend_for(store)
    killed = []

    def kill_once_data_flows():
        pid = engine_pid()
        # bytes are being stored: a multipart upload is open / a partial file exists
        wait_until(lambda: backend.incomplete_writes(store.prefix), 30, "the stream to reach the store")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_once_data_flows)
    killer.start()
    state = backup_component(case.component, target=target, store=store, return_state=True)
    killer.join()
    assert killed, "the engine was never killed"
    assert state.is_failed() and case.message in state.message
    assert "Traceback" not in state.message
    assert list_backups(store, case.component) == []
    assert _everything(store) == []
    assert backend.incomplete_writes(store.prefix) == []
    # the failure is on the dashboard: one more failure, a fresh last-failure time, status 0
    samples = scrape(pushgateway)
    assert value(samples, "backup_failure_total", case.component) == failures + 1
    assert value(samples, "backup_last_failure_timestamp_seconds", case.component) >= int(started)
    assert value(samples, "backup_last_status", case.component) == 0


@pytest.mark.fault(
    "disk",
    "the local store's disk fills up mid-backup (a real 4 MiB tmpfs, 6 MiB of incompressible state)",
    "flow Failed with 'local store is full (...): free space or point KLB_STORE_DIR / the store block "
    "elsewhere'; nothing listed; no partial file; the space is free again",
)
def test_full_disk_fails_clearly_and_frees_the_space(prefect_server, tiny_disk, tmp_path):
    from blocks.store import LocalStore

    store = LocalStore(path=str(tiny_disk))
    free_before = os.statvfs(tiny_disk).f_bavail
    target = app_target(tmp_path / "steps", mib=6)
    state = backup_component("app-state", target=target, store=store, return_state=True)
    assert state.is_failed()
    assert f"local store is full ({tiny_disk}/backups/app-state/" in state.message
    assert "free space or point KLB_STORE_DIR / the store block elsewhere" in state.message
    assert list_backups(store, "app-state") == []
    # only Prefect's record of the failed task run remains (a few hundred bytes), no backup data
    left = dir_state(tiny_disk)
    assert all(k.startswith("backups/_prefect-results/") for k in left) and len(left) <= 1
    assert os.statvfs(tiny_disk).f_bavail >= free_before - 2


@pytest.mark.fault(
    "concurrency",
    "two backups of the same component started at the same moment against the same store",
    "one runs, the other waits for the component lock (klb-component-app-state) and starts only "
    "when the first is done; both complete as separate backups with distinct ids, listed and verified",
)
def test_two_backups_of_one_component_at_once(prefect_server, s3_store, tmp_path):
    store = s3_store()
    gate = tmp_path / "go"
    targets = [app_target(tmp_path / f"run{i}", mib=2, gate=gate) for i in range(2)]
    pidfiles = [tmp_path / f"run{i}" / "sessions.pid" for i in range(2)]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = backup_component("app-state", target=targets[i], store=store, return_state=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: any(p.exists() for p in pidfiles), 30, "one backup's engine to start")
    time.sleep(1)  # the other had all the time it needs to start too, if it were not locked out
    assert sum(p.exists() for p in pidfiles) == 1, "both backups ran at once"
    gate.touch()
    for t in threads:
        t.join()
    assert all(p.exists() for p in pidfiles)  # the second ran after the first
    ids = sorted(results[i].result().id for i in range(2))
    assert ids[0] != ids[1]
    listed = list_backups(store, "app-state")
    assert sorted(m.id for m in listed) == ids
    for manifest in listed:
        verify_backup(store, manifest)
        assert manifest.objects[0].raw_size == 2 * 1024 * 1024
