"""Known passwords through the postgres and rabbitmq backup and restore flows, on an encrypted S3
store whose Prefect task results persist in the store (`_prefect-results`): no password in any
argv (read while pg_dump runs), log, artifact, run record, block document, stored object,
manifest, persisted result or error message."""

from __future__ import annotations

import logging
import secrets
import threading
import time

import httpx
import pytest
from psycopg import sql
from pydantic import SecretStr

from blocks.rabbitmq import RabbitMQTarget
from flows.backup import backup_component
from flows.restore import restore_component
from tasks.components.postgres.common import admin
from tests.faults.helpers import make_s3_store, random_secret
from tests.faults.secret_scan import EVERY_PLACE, SecretScan
from tests.faults.test_restore_kill import _drop_with_asides
from tests.pg_helpers import children, make_db, new_name, target_for


@pytest.fixture
def pg_user(postgres):
    """A superuser of its own with a known, long password."""
    name, password = new_name("leak"), random_secret("pgpw")
    with admin(target_for(postgres)) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with admin(target_for(postgres)) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def rmq_user(rabbitmq):
    """An administrator of its own with a known password, and a vhost with a queue."""
    name, password = "leak-" + secrets.token_hex(4), random_secret("rmqpw")
    vhost = "klb-leak-" + secrets.token_hex(4)
    with httpx.Client(base_url=rabbitmq.extra["url"] + "/api", auth=("guest", "guest"), timeout=30) as api:
        assert (
            api.put(f"/users/{name}", json={"password": password, "tags": "administrator"}).status_code == 201
        )
        assert api.put(f"/vhosts/{vhost}", json={}).status_code in (201, 204)
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        assert api.put(f"/permissions/{vhost}/{name}", json=perms).status_code in (201, 204)
        assert api.put(f"/queues/{vhost}/orders", json={"durable": True}).status_code in (201, 204)
        yield name, password, vhost
        api.delete(f"/vhosts/{vhost}")
        api.delete(f"/users/{name}")


@pytest.mark.fault(
    "secrets",
    "postgres and rabbitmq backup + restore flows, a wrong-password backup of each, with known DB and "
    "RabbitMQ passwords, on an encrypted S3 store that also holds Prefect's persisted task results",
    "no password in any process argv (read while pg_dump runs), python or Prefect log, artifact, "
    "flow/task run record, block document, stored object, manifest, persisted result "
    "(_prefect-results) or error message",
)
def test_no_component_password_leaks_anywhere(
    prefect_server, postgres, rabbitmq, pg_user, rmq_user, moto, s3_bucket, caplog
):
    caplog.set_level(logging.DEBUG)
    (pg_name, pg_pw), (rmq_name, rmq_pw, vhost) = pg_user, rmq_user
    scan = SecretScan(
        {
            "PostgreSQL password": pg_pw,
            "RabbitMQ password": rmq_pw,
            "S3 secret key": (s3_secret := random_secret("s3secret")),
            "encryption key": (enc := random_secret("enckey")),
        }
    )
    bucket, _ = s3_bucket
    store = make_s3_store(moto.url, bucket, secret=s3_secret, encryption_key=SecretStr(enc))
    db = new_name("leakdb")
    make_db(target_for(postgres), db, rows=20_000)
    try:
        pg = target_for(postgres, user=pg_name, password=pg_pw, databases=[db])
        rmq = RabbitMQTarget(
            url=rabbitmq.extra["url"], username=rmq_name, password=SecretStr(rmq_pw), vhosts=[vhost]
        )

        seen: list[int] = []

        def scan_while_pg_dump_runs():
            while not children("pg_dump") and not done.is_set():
                time.sleep(0.002)
            if children("pg_dump"):
                seen.extend(children("pg_dump"))
                scan.proc_argv()

        done = threading.Event()
        watcher = threading.Thread(target=scan_while_pg_dump_runs)
        watcher.start()
        pg_backup = backup_component("postgres", target=pg, store=store)
        done.set()
        watcher.join()
        assert seen, "pg_dump's argv was not scanned while it ran"
        rmq_backup = backup_component("rabbitmq", target=rmq, store=store)

        restore_component("postgres", backup_id=pg_backup.id, target=pg, store=store)
        restore_component("rabbitmq", backup_id=rmq_backup.id, target=rmq, store=store)

        # wrong passwords: the errors name the user, never a password (the right or the wrong one)
        for component, bad in (
            ("postgres", pg.model_copy(update={"password": SecretStr(rmq_pw)})),
            ("rabbitmq", rmq.model_copy(update={"password": SecretStr(pg_pw)})),
        ):
            state = backup_component(component, target=bad, store=store, return_state=True)
            assert state.is_failed() and "ConfigurationError" in state.message, state.message
            scan.text("error message", state.message)
            with pytest.raises(Exception) as err:
                state.result()
            scan.text("error message", str(err.value))
    finally:
        _drop_with_asides(target_for(postgres), db)

    scan.logs(caplog.text)
    scan.store(store)
    scan.prefect()
    scan.assert_clean(require=EVERY_PLACE)
