"""Sample systems for the demo (sandbox/demo.py): each starts a throwaway service with sample data
on 127.0.0.1 (or uses the machine's RabbitMQ), registers its stop on the ExitStack, and returns
the component's target block.

PostgreSQL: an initdb cluster with a `lambda` database. Kubernetes + volumes: the API emulator
with a fake Velero (sandbox/k8s_emulator: no cluster can run here). etcd: a throwaway member with
ConfigMap-like keys. RabbitMQ: a vhost `klb-demo-<random>` (its own each run). App state: a
directory captured by tar. PostgreSQL PITR: a server archiving its WAL into moto's S3 server.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
from prefect.blocks.core import Block
from pydantic import SecretStr

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.etcd import EtcdTarget
from blocks.kubernetes import KubernetesTarget, VeleroTarget
from blocks.pitr import PitrTarget
from blocks.postgres import PostgresTarget
from blocks.rabbitmq import RabbitMQTarget
from tasks.errors import ConfigurationError
from tasks.proc import free_port

RABBITMQ_URL = os.environ.get("KLB_DEMO_RABBITMQ_URL", "http://127.0.0.1:15672")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def etcd(stack: ExitStack, workdir: Path) -> EtcdTarget:
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    d = workdir / "etcd"
    d.mkdir(parents=True, exist_ok=True)
    argv = [
        "etcd", "--name", "demo", "--data-dir", str(d / "data"),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"demo={peer}",
    ]  # fmt: skip
    with open(d / "etcd.log", "wb") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise ConfigurationError("etcd is not installed: run scripts/setup.sh") from None
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 30
    while True:
        with suppress(OSError), urllib.request.urlopen(f"{client}/health", timeout=1):  # noqa: S310
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise ConfigurationError(f"the demo etcd did not start: see {d / 'etcd.log'}")
        time.sleep(0.1)
    env = {**os.environ, "ETCDCTL_API": "3"}
    for i, name in enumerate(("lambda-config", "feature-flags", "cold-start-cache")):
        key = f"/registry/configmaps/lambda-system/{name}"
        subprocess.run(["etcdctl", "--endpoints", client, "put", key, f"sample-{i}"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    return EtcdTarget(endpoints=[client], work_dir=str(d))


def _delete_vhost(target: RabbitMQTarget, vhost: str) -> None:
    with suppress(httpx.HTTPError), target.client() as api:
        api.delete(f"/vhosts/{vhost}")


def rabbitmq(stack: ExitStack, workdir: Path) -> RabbitMQTarget:
    vhost = f"klb-demo-{secrets.token_hex(3)}"  # its own: a demo and a test may run at once
    target = RabbitMQTarget(url=RABBITMQ_URL, vhosts=[vhost])
    try:
        with target.client() as api:
            api.put(f"/vhosts/{vhost}", json={}).raise_for_status()
            api.put(f"/exchanges/{vhost}/lambda.events", json={"type": "topic", "durable": True})
            api.put(
                f"/queues/{vhost}/lambda.invocations",
                json={"durable": True, "arguments": {"x-queue-type": "quorum"}},
            )
            api.put(f"/queues/{vhost}/lambda.dead-letters", json={"durable": True})
            api.post(
                f"/bindings/{vhost}/e/lambda.events/q/lambda.invocations", json={"routing_key": "invoke.#"}
            )
            api.put(f"/policies/{vhost}/dlx", json={"pattern": "^lambda\\.invocations$", "apply-to": "queues",
                    "definition": {"dead-letter-exchange": ""}, "priority": 1})  # fmt: skip
        stack.callback(_delete_vhost, target, vhost)
    except httpx.HTTPError as exc:
        raise ConfigurationError(
            f"RabbitMQ management API at {RABBITMQ_URL} is not usable ({exc}): run scripts/setup.sh"
        ) from None
    return target


def app_state(stack: ExitStack, workdir: Path) -> AppStateTarget:
    src = workdir / "app-state"
    (src / "sessions").mkdir(parents=True, exist_ok=True)
    (src / "sessions" / "active.json").write_text('{"active_sessions": 1284}\n')
    (src / "feature-flags.yaml").write_text("cold_start_cache: true\nmax_concurrency: 64\n")
    restored = workdir / "app-state-restored"
    restored.mkdir(exist_ok=True)
    step = AppStateStep(
        name="app-files",
        backup_command=["tar", "-C", str(src), "-cf", "-", "."],
        restore_command=["tar", "-C", str(restored), "-xf", "-"],
        drill_restore_command=["tar", "-xf", "-"],  # into $KLB_DRILL_DIR (the working directory)
        verify_command=["test", "-s", "sessions/active.json"],
    )
    return AppStateTarget(steps=[step])


SAMPLE_SQL = """
CREATE TABLE functions (id serial PRIMARY KEY, name text UNIQUE NOT NULL, runtime text NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE invocations (id bigserial PRIMARY KEY, function_id int REFERENCES functions(id),
                          latency_ms int NOT NULL, payload text NOT NULL);
INSERT INTO functions (name, runtime)
  SELECT 'fn-' || g, (ARRAY['python3.11','node20','go1.22'])[1 + g % 3] FROM generate_series(1, 50) g;
INSERT INTO invocations (function_id, latency_ms, payload)
  SELECT 1 + g % 50, (random() * 500)::int, md5(random()::text) FROM generate_series(1, 20000) g;
"""


def postgres(stack: ExitStack, workdir: Path) -> PostgresTarget:
    import psycopg

    from sandbox.services import start_postgres

    password = secrets.token_urlsafe(18)
    service = start_postgres(password, name="demo-postgres")
    stack.callback(service.stop)
    dsn = dict(host="127.0.0.1", port=service.port, user="postgres", password=password)
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as conn:
        conn.execute("CREATE DATABASE lambda")
    with psycopg.connect(dbname="lambda", autocommit=True, **dsn) as conn:
        conn.execute(SAMPLE_SQL)
    return PostgresTarget(port=service.port, password=SecretStr(password), databases=["lambda"])


def _kube_api(stack: ExitStack, workdir: Path):
    from sandbox.k8s_emulator import start_kube_api

    if not hasattr(stack, "klb_kube_api"):  # one emulated cluster for both Velero components
        api = start_kube_api(workdir / "kube-api")
        stack.callback(api.server.stop)
        ctl = api.controller
        for ns, apps in (
            ("lambda-system", {"api": 2, "worker": 5, "cron": 1}),
            ("database", {"pgbouncer": 2}),
        ):
            ctl.seed_namespace(ns, {"team": "lambda"})
            for name, replicas in apps.items():
                ctl.seed_deployment(ns, name, replicas)
            ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "settings"}, "data": {"mode": "prod"}})
            ctl.seed("v1", "services", ns, {"metadata": {"name": "api"}, "spec": {"ports": [{"port": 80}]}})
            ctl.seed_pvc(ns, "data", content=f"{ns} volume contents")
        stack.klb_kube_api = api  # type: ignore[attr-defined]
    return stack.klb_kube_api  # type: ignore[attr-defined]


def _velero(api) -> VeleroTarget:
    return VeleroTarget(
        kube=KubernetesTarget(kubeconfig_path=str(api.kubeconfig_path)),
        include_namespaces=["lambda-system", "database"],
        poll_interval_seconds=0.05, backup_timeout_seconds=120, restore_timeout_seconds=120,
    )  # fmt: skip


def kubernetes(stack: ExitStack, workdir: Path) -> VeleroTarget:
    return _velero(_kube_api(stack, workdir))


def volumes(stack: ExitStack, workdir: Path) -> VeleroTarget:
    return _velero(_kube_api(stack, workdir))


def postgres_pitr(stack: ExitStack, workdir: Path) -> PitrTarget:
    """A PostgreSQL server archiving its WAL with barman-cloud-wal-archive into an S3 bucket on
    moto's server (loopback, stopped at the end): PITR needs an S3 archive, and the demo has no
    cloud."""
    import shutil
    import tempfile

    from sandbox import s3
    from sandbox.services import ServiceMissing, start_moto, start_postgres, wait_until
    from tasks.components.postgres_pitr.engines import BarmanCloud, write_credentials_file

    try:
        moto = start_moto()
    except ServiceMissing as exc:
        raise ConfigurationError(f"{exc}: run scripts/setup.sh") from None
    stack.callback(moto.stop)
    bucket, _ = s3.make_bucket(moto.url, "klb-demo-pitr-" + secrets.token_hex(3))
    password = secrets.token_urlsafe(18)
    target = PitrTarget(
        port=1,  # set once the server runs
        password=SecretStr(password),
        server_name="demo",
        archive_url=f"s3://{bucket}/wal",
        endpoint_url=moto.url,
        region=s3.REGION,
        aws_access_key_id=SecretStr(s3.KEY_ID),
        aws_secret_access_key=SecretStr(s3.SECRET),
    )
    # the server's archive_command runs as `postgres`, which must reach the file: a private
    # directory of its own under the system temp dir (`workdir` may sit below a root-only one)
    aws_dir = Path(tempfile.mkdtemp(prefix="klb-demo-pitr-aws-"))
    stack.callback(shutil.rmtree, aws_dir, True)
    shutil.chown(aws_dir, "postgres")
    creds = write_credentials_file(target, aws_dir / "credentials", "postgres")
    archive = BarmanCloud().archive_command(target, creds)
    service = start_postgres(
        password,
        name="demo-postgres-pitr",
        extra_conf={"archive_mode": "on", "archive_command": "'" + archive.replace("'", "''") + "'"},
    )
    stack.callback(service.stop)
    target = target.model_copy(update={"port": service.port})
    import psycopg

    dsn = dict(host="127.0.0.1", port=service.port, user="postgres", password=password, autocommit=True)
    with psycopg.connect(dbname="postgres", **dsn) as conn:
        conn.execute(SAMPLE_SQL)
        segment = conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("select pg_switch_wal()")

        def archived() -> bool:  # the base backup refuses a server whose archiving never worked
            row = conn.execute("select last_archived_wal from pg_stat_archiver").fetchone()
            return (row[0] or "") >= segment

        wait_until(archived, 120, "WAL archiving to the demo's S3", log=service.workdir / "server.log")
    return target


# component -> sets up its sample and returns its target block
DEMO_SETUPS: dict[str, Callable[[ExitStack, Path], Block]] = {
    "postgres": postgres,
    "kubernetes": kubernetes,
    "volumes": volumes,
    "etcd": etcd,
    "rabbitmq": rabbitmq,
    "app-state": app_state,
    "postgres-pitr": postgres_pitr,
}
