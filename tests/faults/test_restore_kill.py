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
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.restore import restore_component
from sandbox.services import ROOT, wait_until
from tasks.storage.session import backup_session

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
# the arguments travel in the environment: a target may hold a password (never argv)
CHILD = """
import importlib, json, os
from blocks.store import LocalStore
from flows.restore import restore_component
args = json.loads(os.environ["KLB_TEST_RESTORE"])
module, name = args["target_cls"].rsplit(".", 1)
target = getattr(importlib.import_module(module), name).model_validate(args["target"])
restore_component(args["component"], backup_id=args["id"], target=target,
                  store=LocalStore.model_validate(args["store"]))
"""


@dataclass(frozen=True)
class RestoreKill:
    component: str
    # (request, tmp_path) -> (target, store, backup id, state reader, "restore is under way" check)
    setup: Callable
    # (target) -> None: what must hold once the rerun is done (e.g. leftovers cleaned up)
    after: Callable | None = None
    after_text: str = ""
    category: str = "restore-kill"

    @property
    def fault(self) -> str:
        return f"the flow process is SIGKILLed while {self.component}'s restore streams into the target"

    @property
    def outcome(self) -> str:
        return (
            "the target keeps exactly its old state (the engine dies with the flow); the dead run still "
            "holds the component lock (freed by its 300 s lease, or `prefect gcl delete`); a rerun then "
            "restores all" + self.after_text
        )


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
    under_way = lambda _flow: Path(f"{dest}.new").exists() and Path(f"{dest}.new").stat().st_size > 1 << 20  # noqa: E731
    return AppStateTarget(steps=[step]), store, manifest.id, dest.read_bytes, under_way, data


def postgres_setup(request, tmp: Path):
    """A database backed up then changed; the restore is caught with pg_restore mid-way (frozen
    with SIGSTOP once it has read 256 KiB of the dump: mid-stream whatever the machine's speed)."""
    import tasks.components.postgres as pg
    from blocks.store import LocalStore
    from tests.pg_helpers import exec_in, make_db, new_name, state, target_for

    postgres = request.getfixturevalue("postgres")
    db = new_name("fault_rst")
    # 100,000 rows (about 25 MB, under table_objects_from_mib: all in pg_restore's stream): with
    # 20,000 a loaded machine let pg_restore read its whole input between two polls
    make_db(target_for(postgres), db, rows=100_000)
    request.addfinalizer(lambda: _drop_with_asides(target_for(postgres), db))
    target = target_for(postgres, databases=[db])
    store = LocalStore(path=str(tmp / "store"))
    with backup_session(store, "postgres") as session:
        pg.backup(target, session)
        manifest = session.commit()
    backed_up = _canon(state(target, db))
    exec_in(target, db, "UPDATE app.items SET name = 'changed' WHERE id < 100; DELETE FROM public.logs")
    assert _canon(state(target, db)) != backed_up
    return target, store, manifest.id, lambda: _canon(state(target, db)), _pg_restore_streaming, backed_up


def _canon(fingerprint: dict) -> bytes:
    return json.dumps(fingerprint, sort_keys=True, default=str).encode()


def _pg_restore_streaming(flow_pid: int) -> bool:
    from tests.pg_helpers import children

    for pid in children("pg_restore", flow_pid):
        try:
            text = Path(f"/proc/{pid}/io").read_text()
        except OSError:
            continue  # it ended between the listing and the read (post-data's pg_restore is short)
        io = dict(line.split(": ") for line in text.splitlines())
        if int(io["rchar"]) >= 256 << 10:  # read from the store's stream (libpq send()s: no wchar)
            os.kill(pid, signal.SIGSTOP)
            return True
    return False


def _drop_with_asides(target, db: str) -> None:
    from tasks.components.postgres.common import parse_aside
    from tests.pg_helpers import db_names, drop

    drop(target, db, *[d for d in db_names(target) if (p := parse_aside(d)) and p[0] == db])


def postgres_after(target) -> None:
    """The killed run left its `__restore_` copy; the cleanup flow removes it, and after the
    rerun's own rollback copy nothing of the database's side copies remains."""
    from flows.postgres import cleanup_postgres_rollbacks
    from tasks.components.postgres.common import parse_aside
    from tests.pg_helpers import db_names

    db = target.databases[0]
    cleanup_postgres_rollbacks(older_than_hours=0, target=target)
    assert [d for d in db_names(target) if (p := parse_aside(d)) and p[0] == db] == []


RESTORE_KILLS = [
    RestoreKill("app-state", app_state_setup),
    RestoreKill(
        "postgres",
        postgres_setup,
        postgres_after,
        "; cleanup_postgres_rollbacks(older_than_hours=0) then leaves no __restore_/__rollback_ copy",
    ),
]


@pytest.mark.parametrize("case", RESTORE_KILLS, ids=lambda c: c.component)
def test_flow_killed_mid_restore_leaves_the_old_state(case, request, prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    target, store, backup_id, read_state, under_way, data = case.setup(request, tmp_path)
    old = read_state()
    args = json.dumps(
        {
            "component": case.component,
            "id": backup_id,
            "target_cls": f"{type(target).__module__}.{type(target).__name__}",
            "target": target.model_dump(mode="json", context={"include_secrets": True}),
            "store": store.model_dump(mode="json"),
        }
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
        "KLB_TEST_RESTORE": args,
    }
    flow = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # polled fast: a small restore is over in a blink
        while not under_way(flow.pid) and flow.poll() is None:
            assert time.monotonic() < deadline, "the restore never started streaming"
            time.sleep(0.002)
        assert flow.poll() is None, "the restore flow ended before it could be killed"
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait()
    except BaseException:
        # whatever went wrong, the killed run's slot must not block every later test of the component
        if flow.poll() is None:
            flow.kill()
            flow.wait()
        _free_the_dead_runs_slot(case.component, must_be_held=False)
        raise
    if (tmp_path / "state.pid").exists():
        engine = int((tmp_path / "state.pid").read_text())
        wait_until(lambda: not Path(f"/proc/{engine}").exists() or _zombie(engine), 10, "the engine to die")
    assert read_state() == old  # never a mix, never half the new state
    _free_the_dead_runs_slot(case.component)
    report = restore_component(case.component, backup_id=backup_id, target=target, store=store)
    assert report["backup_id"] == backup_id
    assert hashlib.sha256(read_state()).digest() == hashlib.sha256(data).digest()
    if case.after is not None:
        case.after(target)


def _free_the_dead_runs_slot(component: str, must_be_held: bool = True) -> None:
    """The killed run still holds the component lock: its lease would free it after
    lease_duration (300 s). The operator's shortcut, documented in the outcome: delete the limit
    (`prefect gcl delete klb-component-<c>`); the next run recreates it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.locks import lock_name

    with get_client(sync_client=True) as client:
        if not must_be_held:  # cleaning up after a failure: whatever is there goes
            with suppress(ObjectNotFound):
                client.delete_global_concurrency_limit_by_name(lock_name(component))
            return
        held = client.read_global_concurrency_limit_by_name(lock_name(component))
        assert held.active_slots == 1, "the killed restore did not hold the component lock"
        client.delete_global_concurrency_limit_by_name(lock_name(component))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
