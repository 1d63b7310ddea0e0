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
from tasks.backends import backend_for
from tasks.catalog import list_backups, verify_backup
from tests.faults.helpers import app_target, dir_state, pid_of
from tests.services import wait_until


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
            "no multipart upload or partial file left"
        )


def app_state_streaming(request, tmp_path: Path):
    target = app_target(tmp_path, mib=0, pause=0.02)  # streams until killed
    return target, lambda: pid_of(tmp_path / "sessions.pid")


ENGINE_KILLS = [
    EngineKill("app-state", "local", app_state_streaming, "app-state sessions was killed by signal 9"),
    EngineKill("app-state", "s3", app_state_streaming, "app-state sessions was killed by signal 9"),
]


def _store(request, kind: str):
    if kind == "local":
        return request.getfixturevalue("local_store")()
    return request.getfixturevalue("s3_store")(part_size_mib=5)


def _everything(store) -> list[str]:
    """Every key or file under the store's prefix except Prefect's own results."""
    return [k for k in backend_for(store).list_keys(store.prefix) if "/_prefect-results/" not in k]


@pytest.mark.parametrize("case", ENGINE_KILLS, ids=lambda c: f"{c.component}-{c.store}")
def test_engine_killed_mid_stream_leaves_nothing(case, request, prefect_server, tmp_path):
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
    "two backups of the same component are started at the same moment against the same store",
    "one runs, the other waits on the component lock (klb-component-app-state) and runs after it: "
    "two separate backups, distinct ids, never overlapping, both listed and verified",
)
def test_two_backups_of_one_component_at_once(prefect_server, s3_store, tmp_path):
    store = s3_store()
    gate = tmp_path / "go"
    targets = [app_target(tmp_path / f"run{i}", mib=2, gate=gate) for i in range(2)]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = backup_component("app-state", target=targets[i], store=store, return_state=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    pids = [tmp_path / f"run{i}" / "sessions.pid" for i in range(2)]
    wait_until(lambda: any(p.exists() for p in pids), 60, "one backup's engine to start")
    time.sleep(2)  # the other one would have started by now, were it not waiting for the lock
    assert sum(p.exists() for p in pids) == 1, "both engines ran at once: the component lock did not hold"
    gate.touch()
    for t in threads:
        t.join()
    ids = sorted(results[i].result().id for i in range(2))
    assert ids[0] != ids[1]
    listed = list_backups(store, "app-state")
    assert sorted(m.id for m in listed) == ids
    first, second = sorted(listed, key=lambda m: m.started_at)
    assert second.started_at >= first.finished_at  # one after the other
    for manifest in listed:
        verify_backup(store, manifest)
        assert manifest.objects[0].raw_size == 2 * 1024 * 1024
