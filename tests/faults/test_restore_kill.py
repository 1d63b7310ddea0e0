"""The flow process is SIGKILLed in the middle of a restore: the target keeps its old state
(never a mix), and a rerun completes.

RESTORE_KILLS is the table; a component adds a row with its target, how to read its state, and
how to tell that its restore is under way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.restore import restore_component
from tasks.store import backup_session
from tests.services import ROOT, wait_until

# restore: write the stdin aside slowly, rename at the end of input (a careful script)
SLOW_RESTORER = """
import os, sys, time
dest = sys.argv[1]
open(dest + ".pid", "w").write(str(os.getpid()))
with open(dest + ".new", "wb") as fh:
    while chunk := sys.stdin.buffer.read(65536):
        fh.write(chunk); fh.flush()
        time.sleep(0.005)
os.replace(dest + ".new", dest)
"""
CHILD = """
import json, sys
from blocks.app_state import AppStateTarget
from blocks.store import LocalStore
from flows.restore import restore_component
args = json.loads(sys.argv[1])
restore_component("app-state", backup_id=args["id"], target=AppStateTarget.model_validate(args["target"]),
                  store=LocalStore.model_validate(args["store"]))
"""


@dataclass(frozen=True)
class RestoreKill:
    component: str
    # (request, tmp_path) -> (target, store, backup id, state reader, "restore is under way" check)
    setup: Callable
    category: str = "restore-kill"

    @property
    def fault(self) -> str:
        return f"the flow process is SIGKILLed while {self.component}'s restore streams into the target"

    @property
    def outcome(self) -> str:
        return "the target keeps exactly its old state (the engine dies with the flow); a rerun restores all"


def app_state_setup(request, tmp: Path):
    from blocks.app_state import AppStateStep, AppStateTarget
    from blocks.store import LocalStore

    store = LocalStore(path=str(tmp / "store"))
    data = os.urandom(8 * 1024 * 1024)
    with backup_session(store, "app-state") as session:
        session.write("sessions", [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)])
        manifest = session.commit()
    dest = tmp / "state"
    dest.write_bytes(b"old state\n")
    step = AppStateStep(
        name="sessions",
        backup_command=["true"],
        restore_command=[sys.executable, "-c", SLOW_RESTORER, str(dest)],
    )
    under_way = lambda: Path(f"{dest}.new").exists() and Path(f"{dest}.new").stat().st_size > 1 << 20  # noqa: E731
    return AppStateTarget(steps=[step]), store, manifest.id, dest.read_bytes, under_way, data


RESTORE_KILLS = [RestoreKill("app-state", app_state_setup)]


@pytest.mark.parametrize("case", RESTORE_KILLS, ids=lambda c: c.component)
def test_flow_killed_mid_restore_leaves_the_old_state(case, request, prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    target, store, backup_id, read_state, under_way, data = case.setup(request, tmp_path)
    old = read_state()
    args = json.dumps(
        {"id": backup_id, "target": target.model_dump(mode="json"), "store": store.model_dump(mode="json")}
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    flow = subprocess.Popen(
        [sys.executable, "-c", CHILD, args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: under_way() or flow.poll() is not None, 120, "the restore to stream")
        assert flow.poll() is None, "the restore flow ended before it could be killed"
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait()
    finally:
        if flow.poll() is None:
            flow.kill()
    _free_lock_of_killed_holder(case.component)
    engine = int((tmp_path / "state.pid").read_text())
    wait_until(lambda: not Path(f"/proc/{engine}").exists() or _zombie(engine), 10, "the engine to die")
    assert read_state() == old  # never a mix, never half the new state
    report = restore_component(case.component, backup_id=backup_id, target=target, store=store)
    assert report["backup_id"] == backup_id
    assert hashlib.sha256(read_state()).digest() == hashlib.sha256(data).digest()


def _free_lock_of_killed_holder(component: str) -> None:
    """The killed flow held klb-component-<c>. In production its lease expires and Prefect's
    repossessor frees the slot; the test session's server does not run it, so free it here or
    every later backup of the component waits for a dead holder."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.locks import lock_name

    with get_client(sync_client=True) as client:
        reset = GlobalConcurrencyLimitUpdate(active_slots=0)
        client.update_global_concurrency_limit(lock_name(component), reset)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
