"""Issue 15, attack 8: a crashed holder of a component lock frees it within about a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import stop

# --- 8. a crashed lock holder --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_prefect_server(tmp_path_factory):
    """A real `prefect server start`: the test harness's ephemeral server runs no repossessor,
    the service that revokes expired leases, so only a real server shows a lease expiring."""
    from sandbox.services import free_port, http_ok, wait_until

    tmp_path = tmp_path_factory.mktemp("real-prefect")
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
        # its sweep every second, not every 15 s: the lock is taken as soon as the lease expires
        # rather than up to 15 s after (the lease itself, and what the test waits for, unchanged)
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",
        # the API is plain HTTP: the clients' TLS context is never used (see tests/conftest.py)
        PREFECT_API_SSL_CERT_FILE=os.environ["PREFECT_API_SSL_CERT_FILE"],
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
        stop(server)


def held_here(component: str = "rabbitmq") -> int:
    """Slots of the component's lock held on the server PREFECT_API_URL names now."""
    from prefect.client.orchestration import get_client

    from flows.locks import lock_name

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(lock_name(component)).active_slots


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
    # the holder printed "held" only once it had the slot, so the slot was taken when it died
    with temporary_settings({PREFECT_API_URL: url}):
        assert held_here() == 1  # the dead holder's, on this server
        with component_lock("rabbitmq", timeout_seconds=150):
            assert held_here() == 1  # ours now, taken on this server once the lease ran out
        assert held_here() == 0


@pytest.mark.fault(
    "catalog",
    "8b. a notebook or script takes a component lock, then switches PREFECT_API_URL to another server",
    "the next lock is taken on the server the process uses now (Prefect's slot service, which keeps "
    "the first server's client, is drained when the API changes), and again after switching back",
)
def test_a_process_that_switches_prefect_servers_takes_the_lock_on_the_new_one(
    prefect_server, real_prefect_server
):
    """Prefect keeps one slot-acquiring service per limit name with the client of the API it
    started with: after a lock on one server, a notebook that switches PREFECT_API_URL took the
    next lock on the first server, where it meant nothing for the second (flows/locks.py)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.locks import component_lock

    url, _ = real_prefect_server
    with component_lock("rabbitmq", timeout_seconds=30):  # on the session's test server
        assert held_here() == 1
    with temporary_settings({PREFECT_API_URL: url}):
        with component_lock("rabbitmq", timeout_seconds=30):
            assert held_here() == 1  # here, on the server the process uses now
        assert held_here() == 0
    with component_lock("rabbitmq", timeout_seconds=30):  # and back
        assert held_here() == 1
    assert held_here() == 0
