"""Session-wide real services: each starts once, on loopback, and stops at the end.

A service that cannot start fails the tests that need it, with how to get it.
Under pytest-xdist (scripts/test.sh runs the suite on several workers) every worker is its own
session: its own servers, Prefect server, store directory and temp directory. The one thing the
workers share is the machine's RabbitMQ, which `_rabbitmq_sharing` arbitrates.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import services

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# a leaked component lock must fail a test with its message, not hang it for the 6 h default
os.environ.setdefault("KLB_COMPONENT_LOCK_WAIT_SECONDS", "120")
# backups retry transient failures after minutes in production; tests that want it say so
os.environ.setdefault("KLB_BACKUP_RETRIES", "0")
# a flow called outside the session's server starts Prefect's ephemeral one: its 20 s default,
# missed once on a busy machine, failed every later test of that worker (like sandbox/demo.py)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
# Each xdist worker gets its own temp directory, so a test that checks it left no temp files
# behind does not see another worker's. Like /tmp, anyone may use it (the PostgreSQL servers run
# as `postgres` and read their credential files from it); removed when the worker exits, after
# Prefect's test harness has removed its own (atexit runs last-registered first).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _worker_tmp = tempfile.mkdtemp(prefix=f"klb-{os.environ['PYTEST_XDIST_WORKER']}-")
    os.chmod(_worker_tmp, 0o1777)
    atexit.register(shutil.rmtree, _worker_tmp, ignore_errors=True)
    os.environ["TMPDIR"] = _worker_tmp
    tempfile.tempdir = None


def _one_certificate_bundle() -> str:
    """A CA file of one certificate (certifi's first) for Prefect's API clients to load.

    Every Prefect client builds a verifying TLS context when it is made, loading certifi's whole
    bundle (~140 certificates, ~28 ms of CPU), and a flow run makes several clients: about a
    tenth of a test process's CPU. The session's API is plain HTTP on loopback (the harness's
    server, the e2e and lease tests' servers), so the context is never used to verify anything;
    a one-certificate file builds it in under a millisecond."""
    import certifi

    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    fd, path = tempfile.mkstemp(prefix="klb-one-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as out:
        out.write(bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)] + "\n")
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


if "PREFECT_API_SSL_CERT_FILE" not in os.environ:  # xdist workers inherit the controller's
    os.environ["PREFECT_API_SSL_CERT_FILE"] = _one_certificate_bundle()


DURATIONS = Path(__file__).with_name("durations.json")
NEW_FILE_SECONDS = 60.0  # a file not timed yet: start it among the long ones rather than last


def pytest_collection_modifyitems(config, items):
    """Longest files first. scripts/test.sh gives each worker one file at a time, in this order
    (--dist loadfile --no-loadscope-reorder; xdist's own order, most tests first, left the few
    long PostgreSQL files to run one after another on one worker at the end). Seconds per file
    from an earlier run: tests/durations.json (scripts/test_durations.py). A stable sort: the
    tests of a file keep their order."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], NEW_FILE_SECONDS))


def _start(request, starter, *args, **kwargs) -> services.Service:
    try:
        svc = starter(*args, **kwargs)
    except services.ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    request.addfinalizer(svc.stop)
    return svc


@pytest.fixture(scope="session", autouse=True)
def _session_dirs(tmp_path_factory):
    """Flows called with no store use the embedded local store: keep it inside the test run."""
    store_dir = tmp_path_factory.mktemp("default-store")
    os.environ["KLB_STORE_DIR"] = str(store_dir)
    yield
    run = services.RUN_DIR / f"test-{os.getpid()}"
    shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # No flow-run heartbeats (None, which no environment variable can say): the heartbeat thread
    # sleeps in 1 s steps and every flow run, subflows included, joined it on exit, so each
    # run took up to a second longer than its work. Nothing here reads heartbeats (they feed the
    # server's detection of crashed runs, a Prefect feature the project does not configure).
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=300),  # a busy machine
    ):
        yield


@pytest.fixture(autouse=True)
def _component_locks_freed(request):
    """After each test on the Prefect test server, free any `klb-component-*` slot still held.

    A real server's repossessor revokes a dead holder's lease a minute after its renewals stop
    (flows/locks.py); the test harness's ephemeral server runs no repossessor, so a holder a test
    killed (or one whose release call was lost) kept its slot for the rest of that worker's
    session, and every later test of the component waited out KLB_COMPONENT_LOCK_WAIT_SECONDS and
    failed, in whichever file xdist happened to run next on that worker. This does what the
    repossessor (or the operator's `prefect gcl delete`) would, and names the test that left it."""
    yield
    if "prefect_server" not in request.fixturenames:
        return
    from prefect.client.orchestration import get_client

    from flows.locks import PREFIX

    with get_client(sync_client=True) as client:
        held = [
            limit.name
            for limit in client.read_global_concurrency_limits(limit=200, offset=0)
            if limit.name.startswith(PREFIX) and limit.active_slots
        ]
        for name in held:
            client.delete_global_concurrency_limit_by_name(name)  # recreated on next use
    if held:
        import warnings

        warnings.warn(f"{request.node.nodeid} left {held} held; freed them", stacklevel=1)


@pytest.fixture(scope="session")
def moto(request) -> services.Service:
    return _start(request, services.start_moto)


@pytest.fixture(scope="session")
def postgres(request) -> services.Service:
    return _start(request, services.start_postgres, "pg-" + secrets.token_hex(12))


@pytest.fixture(scope="session")
def etcd(request) -> services.Service:
    return _start(request, services.start_etcd)


@pytest.fixture(scope="session")
def pushgateway(request) -> services.Service:
    return _start(request, services.start_pushgateway)


@pytest.fixture(scope="session")
def rabbitmq(request) -> services.Service:
    return _start(request, services.rabbitmq_management)


@pytest.fixture
def api(rabbitmq) -> Iterator[httpx.Client]:
    """The machine's RabbitMQ management API, as its administrator (the RabbitMQ tests)."""
    with httpx.Client(base_url=rabbitmq.extra["url"] + "/api", auth=("guest", "guest"), timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def _rabbitmq_sharing(request):
    """Tests on the machine's broker work in vhosts of their own and may run side by side; a test
    marked `broker_wide` (it restores the whole broker, bringing back every vhost it backed up, or
    checks that no drill vhost is left on it) runs alone on it (tests/rabbitmq_helpers.broker_lock).
    A fixture that takes the broker by getfixturevalue and keeps a vhost across tests takes the
    shared lock itself, for as long as it keeps the vhost."""
    from tests.rabbitmq_helpers import broker_lock

    exclusive = request.node.get_closest_marker("broker_wide") is not None
    if not exclusive and "rabbitmq" not in request.fixturenames:
        yield
        return
    with broker_lock(exclusive):
        yield


@pytest.fixture(scope="session")
def kube_server():
    """The Kubernetes API emulator with a fake Velero (sandbox/k8s_emulator), and its kubeconfig."""
    from sandbox.k8s_emulator import start_kube_api

    api = start_kube_api(services.session_dir("kube-api"))
    yield api
    api.server.stop()


@pytest.fixture
def kube_api(kube_server):
    """The emulator, as a freshly installed cluster: nothing a test did leaks into the next."""
    kube_server.reset()
    yield kube_server
    kube_server.reset()


@pytest.fixture
def ctl(kube_api):
    """The emulator's controller (its fake Velero, seeding), reset before and after the test."""
    kube_api.controller.reset()
    yield kube_api.controller
    kube_api.controller.reset()


@pytest.fixture
def short_waits(monkeypatch):
    """Waits for the cluster cut short, so a test of a flow that would hang fails in seconds:
    claims deleted under a pod that still uses them stay Terminating (pvc-protection)."""
    from tasks.operations import disaster

    monkeypatch.setattr(disaster, "PVC_DELETE_TIMEOUT", 3.0)


@pytest.fixture
def s3_bucket(moto):
    """A fresh bucket on the session's moto server: (name, boto3 client)."""
    from sandbox.s3 import make_bucket

    return make_bucket(moto.url)


@pytest.fixture
def s3_store(moto, s3_bucket):
    """A factory of S3Store blocks on the `s3_bucket` bucket: s3_store(**S3Store fields)."""
    from sandbox import s3

    name, _ = s3_bucket

    def make(**kwargs):
        return s3.s3_store(moto.url, name, **kwargs)

    return make


@pytest.fixture
def local_store(tmp_path):
    from blocks.store import LocalStore

    def make(**kwargs) -> LocalStore:
        return LocalStore(path=str(tmp_path / "store"), **kwargs)

    return make


@pytest.fixture(params=["local", "s3"])
def any_store(request):
    """Every store test runs against both backends."""
    if request.param == "local":
        return request.getfixturevalue("local_store")
    return request.getfixturevalue("s3_store")
