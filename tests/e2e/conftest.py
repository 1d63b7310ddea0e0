"""A real `prefect server start` on loopback for the e2e tests: fresh PREFECT_HOME, SQLite."""

from __future__ import annotations

import os

import pytest

from sandbox import services

PROCESS_POOL = "klb-e2e"


@pytest.fixture(scope="module")
def e2e(request, tmp_path_factory) -> dict:
    workdir = services.session_dir("e2e-prefect")
    port = services.free_port()
    api = f"http://127.0.0.1:{port}/api"
    store_dir = tmp_path_factory.mktemp("e2e-store")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KLB_"))} | {
        "PREFECT_HOME": str(workdir / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        # a run refused by a deployment's concurrency limit is retried after this many seconds
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
        # the scheduler makes a deployment's upcoming runs on its next pass (every 60 s by
        # default): the schedule tests waited up to a minute each for it
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        # the API is plain HTTP: the clients' TLS context is never used (see tests/conftest.py)
        "PREFECT_API_SSL_CERT_FILE": os.environ["PREFECT_API_SSL_CERT_FILE"],
        "PYTHONPATH": str(services.ROOT),
        "KLB_STORE_DIR": str(store_dir),
    }
    prefect = services.need("prefect", "pip install -r requirements.lock")
    argv = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc, log = services._spawn(argv, workdir, env)
    svc = services.Service("prefect-e2e", port, proc, workdir)
    request.addfinalizer(svc.stop)
    try:
        services.wait_until(lambda: services.http_ok(f"{api}/health"), 90, "prefect server", proc, log)
    except services.ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return {"api": api, "env": env, "store_dir": store_dir, "workdir": workdir, "pool": PROCESS_POOL}
