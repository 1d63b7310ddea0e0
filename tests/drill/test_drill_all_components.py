"""The drill over every component at once, against the real services (PostgreSQL, etcd, RabbitMQ,
app state) and the emulated Kubernetes API: the same sample systems as the demo."""

from __future__ import annotations

from contextlib import ExitStack

import psycopg
import pytest

from flows.backup import backup_all
from flows.drill import restore_drill
from sandbox.samples import DEMO_SETUPS
from tasks.components.kubernetes import api as kube
from tasks.operations.drills import Status
from tests.procs import descendants


def _etcd_processes() -> set[int]:
    """etcd members started by this test process (another run on the machine has its own)."""
    return {pid for pid, argv in descendants().items() if argv[0].endswith(b"etcd") and b"--data-dir" in argv}


def _drill_leftovers(targets: dict) -> dict[str, list[str]]:
    pg = targets["postgres"]
    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password.get_secret_value(), dbname="postgres"
    ) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'drill%'")
        databases = [r[0] for r in rows]
    with targets["rabbitmq"].client() as api:
        vhosts = [v["name"] for v in api.get("/vhosts").json() if v["name"].startswith("drill")]
    namespaces = [n for n in kube.list_namespaces(kube.connect(targets["kubernetes"].kube)) if "drill" in n]
    return {"databases": databases, "vhosts": vhosts, "namespaces": namespaces}


@pytest.mark.broker_wide  # checks that no drill vhost is left on the machine's broker
def test_drill_over_every_component_restores_into_isolation_and_leaves_nothing_behind(
    prefect_server, local_store, tmp_path, drill_tmp
):
    store = local_store()
    with ExitStack() as stack:
        targets = {name: setup(stack, tmp_path / "services") for name, setup in DEMO_SETUPS.items()}
        backups = backup_all(targets=targets, store=store)
        assert set(backups.backups) == set(DEMO_SETUPS) and not backups.failed
        etcd_before = _etcd_processes()

        record = restore_drill(components=list(targets), targets=targets, store=store)

        by_component = {c.component: c for c in record.components}
        assert {n: c.status for n, c in by_component.items()} == dict.fromkeys(targets, Status.verified)
        # isolation: production described the same before and after each component's drill
        assert all(c.production_unchanged for c in by_component.values())
        for name, drill in by_component.items():
            assert drill.backup_id == backups.backups[name].id
            assert drill.rto_seconds is not None and drill.rto_seconds < 30 * 60
        # nothing left behind: no drill database, vhost, namespace, etcd member or directory
        assert _drill_leftovers(targets) == {"databases": [], "vhosts": [], "namespaces": []}
        assert _etcd_processes() == etcd_before
        assert list(drill_tmp.iterdir()) == []
