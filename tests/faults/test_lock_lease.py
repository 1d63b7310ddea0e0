"""Issue 15, attack 8: a crashed holder of a component lock frees it within about a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# --- 8. a crashed lock holder --------------------------------------------------------------------

HOLDER = """
import sys, time
from flows.locks import component_lock
with component_lock(sys.argv[1], timeout_seconds=60):
    print("held", flush=True)
    time.sleep(3600)
"""


@pytest.fixture
def real_prefect_server(tmp_path):
    """A real `prefect server start`: the test harness's ephemeral server runs no repossessor,
    the service that revokes expired leases, so only a real server shows a lease expiring."""
    from sandbox.services import free_port, http_ok, wait_until

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=url,
        PREFECT_UI_ENABLED="0",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_SERVICES_FOREMAN_ENABLED="false",
        PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED="true",
    )
    log = tmp_path / "prefect-server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: http_ok(f"{url}/health"), 600, "a real Prefect server", proc=server, log=log)
        yield url, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


HOLDER = """
import sys, time
from flows.locks import component_lock
with component_lock(sys.argv[1], timeout_seconds=60):
    print("held", flush=True)
    time.sleep(3600)
"""


@pytest.mark.fault(
    "catalog",
    "8. the process holding the rabbitmq component lock is killed (SIGKILL) mid-backup",
    "the lock is free again after the 60 s lease (+ the server's repossessor sweep): the next run "
    "takes it, waiting at most 150 s (Prefect's default 300 s lease would make it time out)",
)
def test_a_killed_holder_frees_the_component_lock(real_prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.locks import LEASE_SECONDS, component_lock

    url, env = real_prefect_server
    env = {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "rabbitmq"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert LEASE_SECONDS <= 60
    # Prefect keeps one slot-acquiring service per set of limit names, with the client of the API
    # it first talked to. Drained before: one an earlier test of this worker started would take
    # the slot below on the session's test server, where it is free, and the test would pass
    # without this server's lease ever expiring (and leave that slot held there). Drained after:
    # this worker's later rabbitmq locks would all go to this test's server, gone by then.
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService

    ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=30, at_exit=False)
    # the holder printed "held" only once it had the slot, so the slot was taken when it died
    from prefect.client.orchestration import get_client

    from flows.locks import lock_name

    def held_here() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(lock_name("rabbitmq")).active_slots

    try:
        with temporary_settings({PREFECT_API_URL: url}):
            assert held_here() == 1  # the dead holder's, on this server
            with component_lock("rabbitmq", timeout_seconds=150):
                assert held_here() == 1  # ours now, taken on this server once the lease ran out
            assert held_here() == 0
    finally:
        ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=30, at_exit=False)
