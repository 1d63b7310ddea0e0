"""Bad input to the components (postgres, rabbitmq, etcd, kubernetes/Velero, PITR, drills),
through the flows: the precise error, no traceback in the failure message, and nothing changed
on the PostgreSQL server, the broker, the cluster or the store.

COMPONENT_BAD_INPUTS is the table (rows of test_bad_input.Bad; `call(world)` gets a `Systems`).
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.schemas.objects import State
from pydantic import SecretStr

from blocks.etcd import EtcdTarget
from blocks.kubernetes import VeleroTarget
from blocks.pitr import PitrTarget
from blocks.rabbitmq import RabbitMQTarget
from blocks.store import LocalStore
from flows.backup import backup_component
from flows.drill import restore_drill
from flows.pitr import pitr_postgres
from flows.restore import restore_component
from sandbox.services import free_port
from tasks.components import kubernetes as velero
from tasks.storage.session import backup_session
from tests.faults.helpers import assert_refused_clearly, dir_state
from tests.faults.test_bad_input import Bad
from tests.k8s_helpers import seed_namespaces, seed_settings
from tests.pg_helpers import db_names, drop, make_db, new_name, state, target_for
from tests.rabbitmq_helpers import broker_lock


class Systems:
    """A sample database (and a victim for injections), a vhost, two namespaces with a Velero
    backup, a local store: the world the bad inputs must leave exactly as it was."""

    def __init__(self, request, tmp: Path) -> None:
        self.tmp = tmp
        self.pg = request.getfixturevalue("postgres")
        self.admin = target_for(self.pg)
        self.db, self.victim = new_name("fdb"), new_name("y")
        make_db(self.admin, self.db, rows=20)
        make_db(self.admin, self.victim, rows=5)
        self.moto = request.getfixturevalue("moto")
        self.bucket = "klb-pitr-" + secrets.token_hex(4)
        self.rmq_url = request.getfixturevalue("rabbitmq").extra["url"]
        self.vhost = "klb-fault-" + secrets.token_hex(4)
        with self.rmq_api() as api:
            assert api.put(f"/vhosts/{self.vhost}", json={}).status_code in (201, 204)
            assert api.put(f"/queues/{self.vhost}/q1", json={"durable": True}).status_code in (201, 204)
        self.kube_api = request.getfixturevalue("kube_server")  # module-scoped: the session emulator
        self.ctl = self.kube_api.controller
        self.ctl.reset()
        self.namespaces = list(seed_namespaces(self.ctl, "shop", "db", seed=seed_settings))
        self.velero_target = self.kube_api.velero_target(include_namespaces=self.namespaces)
        self.store = LocalStore(path=str(tmp / "store"))
        with backup_session(self.store, "kubernetes") as session:
            velero.backup(self.velero_target, session)
            self.k8s_id = session.commit().id

    def pitr_archive(self) -> PitrTarget:
        """A PITR target whose WAL archive is a real, empty bucket on moto."""
        from sandbox.s3 import make_bucket

        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # moto
        make_bucket(self.moto.url, self.bucket, exist_ok=True)
        return PitrTarget(
            port=self.pg.port,
            archive_url=f"s3://{self.bucket}/pitr",
            endpoint_url=self.moto.url,
            region="us-west-2",
            **{k: SecretStr(v) for k, v in creds.items()},
        )

    def rmq_api(self) -> httpx.Client:
        return httpx.Client(base_url=self.rmq_url + "/api", auth=("guest", "guest"), timeout=30)

    def pg_target(self, **kwargs):
        return target_for(self.pg, **{"databases": [self.db], **kwargs})

    def rmq_target(self, **kwargs) -> RabbitMQTarget:
        return RabbitMQTarget(**{"url": self.rmq_url, "vhosts": [self.vhost], **kwargs})

    def snapshot(self) -> dict[str, Any]:
        with self.rmq_api() as api:
            # the broker is shared with other runs on the machine: only our vhost's family counts
            vhosts = sorted(v["name"] for v in api.get("/vhosts").json() if self.vhost[-8:] in v["name"])
            queues = sorted(q["name"] for q in api.get(f"/queues/{self.vhost}").json())
        return {
            "pg-databases": db_names(self.admin),
            "pg-sample": state(self.admin, self.db),
            "rmq": (vhosts, queues),
            "kube": self.kube_api.state(),
            # Prefect's record of a failed task run may land in _prefect-results: not backup data
            "store": {k: v for k, v in dir_state(self.tmp / "store").items() if "_prefect-results" not in k},
        }

    def cleanup(self) -> None:
        drop(self.admin, self.db, self.victim)
        with self.rmq_api() as api:
            api.delete(f"/vhosts/{self.vhost}")
        self.ctl.reset()

    def backup(self, component: str, target) -> State:
        return backup_component(component=component, target=target, store=self.store, return_state=True)

    def restore_k8s(self, **kwargs) -> State:
        kwargs.setdefault("backup_id", self.k8s_id)
        return restore_component(
            component="kubernetes", target=self.velero_target, store=self.store, return_state=True, **kwargs
        )


def pitr_target() -> PitrTarget:
    return PitrTarget(archive_url="s3://klb-no-archive/pitr", endpoint_url=f"http://127.0.0.1:{free_port()}")


def uninstall(world: Systems) -> None:
    world.ctl.installed = False


def velero_forgets(world: Systems) -> None:
    """A backup of its own whose Velero Backup is gone (expired / deleted in Velero)."""
    with backup_session(world.store, "kubernetes") as session:
        velero.backup(world.velero_target, session)
        world.gone_id = session.commit().id
    name = session.manifest.engine["velero_backup"]
    assert velero.cancel_backup(world.velero_target, name)["deleted"] is True


COMPONENT_BAD_INPUTS = [
    # --- postgres -------------------------------------------------------------------------------
    Bad(
        "pg-wrong-password",
        "postgres backup with a wrong password",
        lambda w: w.backup("postgres", w.pg_target(password=SecretStr("not-the-password-xyz"))),
        "ConfigurationError",
        "refused the password of user 'postgres'",
    ),
    Bad(
        "pg-unreachable-host",
        "postgres backup of a host:port where nothing listens",
        lambda w: w.backup("postgres", w.pg_target(port=w.free, connect_timeout=2)),
        "ConfigurationError",
        "cannot reach PostgreSQL at 127.0.0.1:{free}",
    ),
    Bad(
        "pg-databases-injection",
        "postgres backup with databases=['x; DROP DATABASE <victim>']",
        lambda w: w.backup("postgres", w.pg_target(databases=[f"x; DROP DATABASE {w.victim}"])),
        "NotFound",
        "database(s) ['x; DROP DATABASE {victim}'] not found on 127.0.0.1:",
    ),
    Bad(
        "pg-unknown-database",
        "postgres backup of a database that does not exist",
        lambda w: w.backup("postgres", w.pg_target(databases=["no_such_db_klb"])),
        "NotFound",
        "database(s) ['no_such_db_klb'] not found on 127.0.0.1:",
    ),
    Bad(
        "pg-database-name-control-char",
        "PostgresTarget(databases=['a\\nb'])",
        lambda w: w.pg_target(databases=["a\nb"]),
        "ValidationError",
        "is not a valid PostgreSQL database name",
    ),
    # --- rabbitmq -------------------------------------------------------------------------------
    Bad(
        "rmq-wrong-password",
        "rabbitmq backup with a wrong password",
        lambda w: w.backup("rabbitmq", w.rmq_target(password=SecretStr("not-the-password-xyz"))),
        "ConfigurationError",
        "refused user 'guest'",
    ),
    Bad(
        "rmq-unknown-vhost",
        "rabbitmq backup of a vhost that does not exist",
        lambda w: w.backup("rabbitmq", w.rmq_target(vhosts=["no-such-vhost-klb"])),
        "BadInput",
        "unknown vhost",
    ),
    Bad(
        "rmq-unreachable",
        "rabbitmq management API where nothing listens",
        lambda w: w.backup("rabbitmq", w.rmq_target(url=f"http://127.0.0.1:{w.free}")),
        "ConfigurationError",
        "unreachable",
    ),
    # --- etcd -----------------------------------------------------------------------------------
    Bad(
        "etcd-unreachable",
        "etcd backup of an endpoint where nothing listens",
        lambda w: w.backup(
            "etcd", EtcdTarget(endpoints=[f"http://127.0.0.1:{w.free}"], dial_timeout_seconds=1)
        ),
        "ConfigurationError",
        "etcd is unreachable",
    ),
    # --- kubernetes / Velero --------------------------------------------------------------------
    Bad(
        "k8s-invalid-namespace",
        "VeleroTarget(include_namespaces=['Shop_Prod'])",
        lambda w: VeleroTarget(include_namespaces=["Shop_Prod"]),
        "ValidationError",
        "are not valid namespace names",
    ),
    Bad(
        "k8s-empty-namespace",
        "VeleroTarget(include_namespaces=[''])",
        lambda w: VeleroTarget(include_namespaces=[""]),
        "ValidationError",
        "are not valid namespace names",
    ),
    Bad(
        "k8s-mapping-invalid-target",
        "restore with namespace_mapping={<ns>: 'Bad_Name'}",
        lambda w: w.restore_k8s(options={"namespace_mapping": {w.namespaces[0]: "Bad_Name"}}),
        "BadInput",
        "are not valid names (lower-case DNS labels",
    ),
    Bad(
        "k8s-mapping-empty-target",
        "restore with namespace_mapping={<ns>: ''}",
        lambda w: w.restore_k8s(options={"namespace_mapping": {w.namespaces[0]: ""}}),
        "BadInput",
        "are not valid names (lower-case DNS labels",
    ),
    Bad(
        "k8s-mapping-unknown-source",
        "restore with namespace_mapping={'not-in-backup': 'x'}",
        lambda w: w.restore_k8s(options={"namespace_mapping": {"not-in-backup": "x"}}),
        "BadInput",
        "not-in-backup",
    ),
    Bad(
        "k8s-missing-crds",
        "kubernetes backup on a cluster without the Velero CRDs",
        lambda w: w.backup("kubernetes", w.velero_target),
        "ConfigurationError",
        "Velero is not installed",
    ),
    Bad(
        "k8s-rbac-forbidden",
        "kubernetes backup whose service account may not create Velero backups",
        lambda w: w.backup("kubernetes", w.velero_target),
        "ConfigurationError",
        'forbidden by RBAC: backups.velero.io "" is forbidden: User "system:serviceaccount:klb:klb-flows" '
        'cannot create resource "backups" in API group "velero.io"',
    ),
    Bad(
        "k8s-rbac-forbidden-restore",
        "kubernetes restore whose service account may not create Velero restores",
        lambda w: w.restore_k8s(),
        "ConfigurationError",
        'cannot create resource "restores"',
    ),
    Bad(
        "k8s-unknown-velero-backup",
        "kubernetes restore of a backup Velero no longer has",
        lambda w: w.restore_k8s(backup_id=w.gone_id),
        "NotFound",
        "Velero has no backup",
    ),
    # --- PITR -----------------------------------------------------------------------------------
    Bad(
        "pitr-naive-time",
        "pitr_postgres target_time without a zone",
        lambda w: pitr_postgres(target_time="2026-01-15T14:30:00", target=pitr_target(), return_state=True),
        "BadInput",
        "has no time zone: PITR will not guess one",
    ),
    Bad(
        "pitr-future-time",
        "pitr_postgres target_time one hour from now",
        lambda w: pitr_postgres(
            target_time=datetime.now(UTC) + timedelta(hours=1), target=pitr_target(), return_state=True
        ),
        "BadInput",
        "is in the future",
    ),
    Bad(
        "pitr-before-window",
        "pitr_postgres target_time in 2001, before any window (a reachable, empty WAL archive)",
        lambda w: pitr_postgres(
            target_time="2001-01-01T00:00:00Z", target=w.pitr_archive(), store=w.store, return_state=True
        ),
        "NotFound",
        "no recoverable window in s3://{bucket}/pitr (pg): take a base backup",
    ),
    Bad(
        "pitr-archive-no-credentials",
        "pitr_postgres against a WAL archive with no S3 credentials configured",
        lambda w: pitr_postgres(
            target_time="latest",
            target=w.pitr_archive().model_copy(update={"aws_access_key_id": None}),
            store=w.store,
            return_state=True,
        ),
        "ConfigurationError",
        "the WAL archive s3://{bucket}/pitr has no valid S3 credentials for us: set aws_access_key_id",
    ),
    Bad(
        "pitr-two-targets",
        "pitr_postgres with both target_time and target_lsn",
        lambda w: pitr_postgres(
            target_time="latest", target_lsn="0/3000000", target=pitr_target(), return_state=True
        ),
        "BadInput",
        "give exactly one target",
    ),
    # --- drills ---------------------------------------------------------------------------------
    Bad(
        "drill-negative-rto",
        "restore_drill rto_target_minutes=-5",
        lambda w: restore_drill(rto_target_minutes=-5, store=w.store, return_state=True),
        "BadInput",
        "rto_target_minutes must be a finite number > 0, not -5",
    ),
    Bad(
        "drill-unknown-rpo-component",
        "restore_drill rpo_targets_hours={'nope': 1}",
        lambda w: restore_drill(rpo_targets_hours={"nope": 1}, store=w.store, return_state=True),
        "BadInput",
        "rpo_targets_hours names unknown components ['nope']",
    ),
    Bad(
        "drill-bad-id",
        "restore_drill drill_id='../Prod'",
        lambda w: restore_drill(drill_id="../Prod", store=w.store, return_state=True),
        "BadInput",
        "drill id '../Prod': use 1-24 lower-case letters and digits",
    ),
]


# the cluster's side of a case, set up before the "nothing changes" snapshot
PREPARE = {
    "k8s-missing-crds": uninstall,
    "k8s-rbac-forbidden": lambda w: w.ctl.deny("create", "backups"),
    "k8s-rbac-forbidden-restore": lambda w: w.ctl.deny("create", "restores"),
    "k8s-unknown-velero-backup": velero_forgets,
}


@pytest.fixture(scope="module")
def world(request, tmp_path_factory, prefect_server):
    """One world for the table (built once: a database, a vhost, a Velero backup). Its vhost lives
    from the first case to the last: a whole-broker restore elsewhere must not back it up in one
    moment and bring it back after it was dropped (the fresh-clone run of 2026-12-03)."""
    with broker_lock(exclusive=False):
        world = Systems(request, tmp_path_factory.mktemp("systems"))
        try:
            yield world
        finally:
            world.cleanup()


@pytest.fixture
def systems(world):
    world.ctl.reset()
    world.free = free_port()
    yield world
    world.ctl.reset()


@pytest.mark.parametrize("case", COMPONENT_BAD_INPUTS, ids=lambda c: c.name)
def test_component_bad_input_is_refused_and_changes_nothing(case: Bad, systems: Systems, caplog):
    caplog.set_level(logging.INFO)
    PREPARE.get(case.name, lambda w: None)(systems)
    before = systems.snapshot()
    expected = case.message.format(free=systems.free, victim=systems.victim, bucket=systems.bucket)
    assert_refused_clearly(lambda: case.call(systems), case.error, expected, caplog)
    after = systems.snapshot()
    assert after == before
    assert systems.victim in after["pg-databases"]  # the injection dropped nothing
