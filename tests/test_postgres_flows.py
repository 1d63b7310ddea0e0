"""PostgreSQL through the Prefect flows, whole-cluster restore, the errors an operator sees, and
where the password is not."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks.components.postgres as pg
from flows.backup import backup_component
from flows.postgres import cleanup_postgres_rollbacks, demo_postgres, rollback_postgres
from flows.restore import restore_component
from sandbox.services import free_port
from tasks.components.postgres.common import parse_aside
from tasks.errors import ConfigurationError, NotFound
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.session import backup_session
from tests.pg_helpers import db_names, drop, exec_in, make_db, new_name, scalar, state, target_for

ROOT = Path(__file__).resolve().parent.parent


def _asides_of(target, db: str) -> list[str]:
    return [d for d in db_names(target) if (p := parse_aside(d)) and p[0] == db]


def _prefect_records() -> str:
    """Everything the Prefect server kept: logs, artifacts, flow and task run parameters."""
    from prefect.client.orchestration import get_client

    from tests.faults.secret_scan import all_pages

    with get_client(sync_client=True) as client:
        logs = list(all_pages(client.read_logs))
        artifacts = list(all_pages(client.read_artifacts))
        flow_runs = list(all_pages(client.read_flow_runs))
        task_runs = list(all_pages(client.read_task_runs))
    parts = [log.message for log in logs]
    parts += [json.dumps(a.model_dump(mode="json")) for a in artifacts]
    parts += [json.dumps(fr.model_dump(mode="json")) for fr in flow_runs]
    parts += [json.dumps(tr.model_dump(mode="json")) for tr in task_runs]
    return "\n".join(parts)


def test_flows_backup_restore_rollback_cleanup_and_the_password_is_nowhere(
    prefect_server, postgres, local_store, caplog
):
    caplog.set_level(logging.DEBUG)
    db = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, db)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        result = backup_component("postgres", target=target, store=store)
        manifest = get_backup(store, result.id)
        assert result.verified and manifest.fingerprint["databases"][db] == state(target, db)

        exec_in(target, db, "DELETE FROM app.items WHERE id > 10")
        changed = state(target, db)
        # globals on a live server: existing roles (postgres) must not fail the restore
        report = restore_component(
            "postgres", backup_id="latest", target=target, store=store, options={"include_globals": True}
        )
        assert report["backup_id"] == result.id
        assert state(target, db) == manifest.fingerprint["databases"][db]

        back = rollback_postgres(db, target=target)
        assert parse_aside(back["restored_from"])[1] == "rollback"
        assert state(target, db) == changed
        assert [parse_aside(d)[1] for d in _asides_of(target, db)] == ["undone"]

        dropped = cleanup_postgres_rollbacks(older_than_hours=0, target=target)
        assert dropped["dropped"] == _asides_of(admin_target, db) + dropped["dropped"]
        assert _asides_of(target, db) == []
        with pytest.raises(NotFound, match="no kept copy"):
            rollback_postgres(db, target=target)

        password = postgres.extra["password"]
        assert len(password) >= 16
        stored = list(Path(store.path).rglob("*"))
        # `_prefect-results` is scanned too when present (the shared backup_task uses NO_CACHE,
        # with which Prefect 3.8.8 persists no result); what the flows return is scanned below
        assert any(p.name == "manifest.json" for p in stored)
        for path in stored:
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
        assert password not in caplog.text
        assert password not in _prefect_records()
        returned = [
            result.model_dump_json(),
            json.dumps(report, default=str),
            json.dumps(back),
            json.dumps(dropped),
        ]
        assert password not in "".join(returned)
    finally:
        drop(admin_target, db, *_asides_of(admin_target, db))


def test_whole_cluster_restore_brings_back_roles_and_every_database(postgres, local_store):
    admin_target = target_for(postgres)  # databases empty: the whole cluster
    role, db = new_name("r"), new_name()
    exec_in(admin_target, "postgres", f"CREATE ROLE {role} LOGIN PASSWORD 'app-secret' CONNECTION LIMIT 7")
    make_db(admin_target, db, owner=role)
    closed = new_name("closed")  # pg_dump cannot read it: left out, and the backup says so
    make_db(admin_target, closed)
    exec_in(admin_target, "postgres", f"ALTER DATABASE {closed} ALLOW_CONNECTIONS false")
    store = local_store()
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(admin_target, session)
            session.commit()
        manifest = session.manifest
        assert {"postgres", db} <= set(manifest.engine["databases"])
        assert closed not in manifest.engine["databases"]
        assert manifest.engine["not_backed_up"][closed] == "refuses connections"

        drop(admin_target, db)
        exec_in(admin_target, "postgres", f"DROP ROLE {role}")
        report = pg.restore(admin_target, manifest, store, pg.RestoreOptions())

        assert report["globals"]["roles"] >= 2  # postgres (kept) and ours
        assert (
            scalar(admin_target, "postgres", "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (role,))
            == 7
        )
        assert scalar(
            admin_target, "postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
        )
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s"
        assert scalar(admin_target, "postgres", owner, (db,)) == role
        assert scalar(admin_target, db, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'") == role
        for name in manifest.engine["databases"]:
            assert state(admin_target, name)["tables"] == manifest.fingerprint["databases"][name]["tables"]
        # the maintenance database was replaced too, and its previous self kept
        assert report["databases"]["postgres"]["kept_as"].startswith("postgres__rollback_")
    finally:
        asides = [d for d in db_names(admin_target) if parse_aside(d)]
        drop(admin_target, db, closed, *asides)
        exec_in(admin_target, "postgres", f"DROP ROLE IF EXISTS {role}")


_RESTORE_SCRIPT = """
import json, os, sys
import tasks.components.postgres as pg
from blocks.postgres import PostgresTarget
from blocks.store import LocalStore
from tasks.storage.catalog import get_backup
args = json.loads(sys.argv[1])
target = PostgresTarget(password=os.environ["KLB_TEST_PGPASSWORD"], **args["target"])
store = LocalStore(path=args["store"])
pg.restore(target, get_backup(store, args["id"]), store, pg.RestoreOptions())
"""


def test_restore_process_killed_mid_way_leaves_the_target_and_cleanup_removes_the_leftover(
    prefect_server, postgres, local_store
):
    admin_target = target_for(postgres)
    db = new_name()
    make_db(admin_target, db, rows=150_000)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(target, session)
            session.commit()
        exec_in(target, db, "UPDATE app.items SET name = 'changed' WHERE id < 100")
        changed = state(target, db)

        args = {
            "target": target.model_dump(include={"host", "port", "user", "bin_dir", "databases"}),
            "store": store.path,
            "id": session.manifest.id,
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KLB_TEST_PGPASSWORD": postgres.extra["password"]}
        proc = subprocess.Popen([sys.executable, "-c", _RESTORE_SCRIPT, json.dumps(args)], env=env, cwd=ROOT)
        size = "SELECT coalesce(max(pg_database_size(datname)), 0) FROM pg_database WHERE datname LIKE %s"
        deadline = time.monotonic() + 60
        while scalar(admin_target, "postgres", size, (db + "\\_\\_restore\\_%",)) < 20_000_000:
            assert proc.poll() is None, "the restore ended before it could be killed"
            assert time.monotonic() < deadline, "the restore never started"
            time.sleep(0.05)
        proc.kill()
        proc.wait()

        assert state(target, db) == changed
        leftover = _asides_of(target, db)
        assert [parse_aside(d)[1] for d in leftover] == ["restore"]
        assert cleanup_postgres_rollbacks(older_than_hours=0, target=target)["dropped"] == leftover
        assert _asides_of(target, db) == []
        assert state(target, db) == changed
    finally:
        drop(admin_target, db, *_asides_of(admin_target, db))


def test_operator_errors_say_what_to_fix_and_change_nothing(prefect_server, postgres, local_store):
    store = local_store()
    db = new_name()
    make_db(target_for(postgres), db)
    try:
        wrong = target_for(postgres, databases=[db])
        wrong.password = type(wrong.password)("not-the-password")
        refused = pytest.raises(ConfigurationError, match="refused the password of user 'postgres'")
        with refused as err, backup_session(store, "postgres") as session:
            pg.backup(wrong, session)
        assert err.value.__suppress_context__  # one clear line, not a libpq traceback chain

        port = free_port()
        with pytest.raises(ConfigurationError, match=f"cannot reach PostgreSQL at 127.0.0.1:{port}"):
            pg.describe_current_state(target_for(postgres, port=port))

        missing = pytest.raises(NotFound, match=r"database\(s\) \['no_such_db'\] not found")
        with missing, backup_session(store, "postgres") as session:
            pg.backup(target_for(postgres, databases=["no_such_db"]), session)

        with pytest.raises(NotFound, match="no backup postgres-20200101T000000Z-abcdef"):
            restore_component(
                "postgres",
                backup_id="postgres-20200101T000000Z-abcdef",
                target=target_for(postgres, databases=[db]),
                store=store,
            )
        assert list_backups(store, "postgres") == []
        assert _asides_of(target_for(postgres), db) == []
    finally:
        drop(target_for(postgres), db)


@pytest.fixture(scope="module")
def other_server(request):
    """A second isolated cluster: the 'different server' a restore or a drill goes to."""
    from sandbox import services

    try:
        svc = services.start_postgres(secrets.token_hex(16), "pg-other-" + secrets.token_hex(3))
    except services.ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    request.addfinalizer(svc.stop)
    return svc


def test_restore_to_another_server_leaves_the_source_untouched(postgres, other_server, local_store):
    db = new_name()
    source = target_for(postgres, databases=[db])
    make_db(target_for(postgres), db)
    store = local_store()
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(source, session)
            session.commit()
        before, names = state(source, db), db_names(source)

        other = target_for(other_server, databases=[db])
        report = pg.restore(other, session.manifest, store, pg.RestoreOptions(rename_to={db: "copy"}))
        assert report["databases"]["copy"]["kept_as"] is None
        assert state(other, "copy") == session.manifest.fingerprint["databases"][db]
        assert state(source, db) == before and db_names(source) == names
    finally:
        drop(target_for(postgres), db)


def test_demo_flow_backs_up_a_sample_and_restores_it_aside(prefect_server, postgres, local_store):
    target = target_for(postgres)
    db = new_name("demo")
    try:
        result = demo_postgres(target=target, store=local_store(), database=db)
        assert result["fingerprints_equal"] is True
        assert scalar(target, db + "_restored", "SELECT count(*) FROM functions") == 1000
    finally:
        drop(target, db, db + "_restored")


def test_a_restore_that_fails_before_the_cut_over_says_so_and_refuses_a_rollback(
    prefect_server, postgres, local_store
):
    """The load fails (a table's owner role is gone from the server): the side database is
    dropped, the target is as it was, the record says the target was not changed, and a
    rollback (which would put the safety backup over writes made since) is refused."""
    from flows.recovery import restore_with_checklist, rollback_restore
    from tasks.errors import BadInput
    from tasks.operations.restores import load_restore_record, safety_mark
    from tasks.storage.backends import backend_for

    db, role = new_name(), f"gone_{secrets.token_hex(3)}"
    admin_target = target_for(postgres)
    make_db(admin_target, db)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        exec_in(admin_target, db, f"CREATE ROLE {role}; ALTER TABLE app.items OWNER TO {role}")
        backup_component("postgres", target=target, store=store)
        exec_in(admin_target, db, f"REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}")
        exec_in(admin_target, "postgres", f"DROP ROLE {role}")
        exec_in(target, db, "DELETE FROM app.items WHERE id > 10")  # the state now, kept as it is
        now = state(target, db)
        before = db_names(admin_target)

        run = restore_with_checklist(
            "postgres", target=target, store=store, options={"include_globals": False}, return_state=True
        )
        assert run.is_failed()
        keys = [k for k in backend_for(store).list_keys(store.prefix) if k.endswith("/record.json")]
        assert len(keys) == 1
        record = load_restore_record(store, keys[0].split("/")[-2])
        assert record.status == "failed" and record.target_changed is False
        assert role in (record.error or "")
        assert state(target, db) == now and db_names(admin_target) == before  # side database gone
        assert "failed before it changed anything" in safety_mark(store, record.safety_backup_id)["note"]
        with pytest.raises(BadInput, match="failed before it changed postgres"):
            rollback_restore(record.id, target=target, store=store)
        assert state(target, db) == now
    finally:
        exec_in(admin_target, "postgres", f"DROP ROLE IF EXISTS {role}")
        drop(admin_target, db, *_asides_of(admin_target, db))


def test_a_restore_with_globals_that_fails_before_the_cut_over_leaves_the_roles_as_they_were(
    postgres, local_store
):
    """The roles were applied to the live server before the databases were loaded: a restore that
    then failed (a fingerprint that does not match, here) had already put back every role's old
    password and attributes (an application's rotated password with it) and re-created roles
    dropped since, while its databases stayed as they were. Now only the missing roles are made
    (bare) before the load, and dropped again on failure; the rest is applied after every
    database is verified, just before the cut-over."""
    from tasks.errors import IntegrityError

    admin_target = target_for(postgres)
    app, gone, db = new_name("app"), new_name("gone"), new_name()
    exec_in(admin_target, "postgres", f"CREATE ROLE {app} LOGIN PASSWORD 'old-pw'; CREATE ROLE {gone} LOGIN")
    make_db(admin_target, db, owner=app)
    exec_in(admin_target, db, f"GRANT SELECT ON app.items TO {gone}")
    target = target_for(postgres, databases=[db])
    store = local_store()
    roles = "SELECT rolname, rolpassword, rolconnlimit FROM pg_authid WHERE rolname IN (%s, %s) ORDER BY 1"
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(target, session)
            session.commit()
        exec_in(admin_target, db, f"REVOKE SELECT ON app.items FROM {gone}")
        exec_in(
            admin_target,
            "postgres",
            f"DROP ROLE {gone}; ALTER ROLE {app} PASSWORD 'rotated' CONNECTION LIMIT 5",
        )
        exec_in(
            admin_target,
            "postgres",
            f"ALTER ROLE {app} VALID UNTIL '2030-01-01'; ALTER ROLE {app} SET search_path = nowhere",
        )
        with pg.common.admin(admin_target) as conn:
            now = conn.execute(roles, (app, gone)).fetchall()
        changed, names = state(target, db), db_names(admin_target)
        fp = session.manifest.fingerprint
        lie = {**fp, "databases": {db: {**fp["databases"][db], "tables": {}}}}
        manifest = session.manifest.model_copy(update={"fingerprint": lie})

        with pytest.raises(IntegrityError, match="not in the backup") as failed:
            pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=True))

        assert getattr(failed.value, "target_untouched", False) is True
        with pg.common.admin(admin_target) as conn:
            assert conn.execute(roles, (app, gone)).fetchall() == now  # rotated, and still gone
        assert state(target, db) == changed and db_names(admin_target) == names

        # and the same backup, unaltered, brings the roles back as they were at the backup
        report = pg.restore(target, session.manifest, store, pg.RestoreOptions(include_globals=True))
        assert report["databases"][db]["fingerprint_equal"] is True
        with pg.common.admin(admin_target) as conn:
            (back,) = [r for r in conn.execute(roles, (app, gone)).fetchall() if r[0] == app]
        assert back[1] != now[0][1]  # the password as it was at the backup, not the rotated one
        # and what was added since is gone: no connection limit, no expiry, no setting
        attrs = """SELECT r.rolconnlimit, coalesce(r.rolvaliduntil = 'infinity', true), s.setconfig
                   FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
                   WHERE r.rolname = %s"""
        with pg.common.admin(admin_target) as conn:
            assert conn.execute(attrs, (app,)).fetchone() == (-1, True, None)
        assert scalar(admin_target, db, f"SELECT has_table_privilege('{gone}', 'app.items', 'SELECT')")
    finally:
        drop(admin_target, db, *_asides_of(admin_target, db))
        exec_in(admin_target, "postgres", f"DROP ROLE IF EXISTS {gone}; DROP ROLE IF EXISTS {app}")


def test_a_restore_left_aside_is_never_rolled_back_over_the_live_database(
    prefect_server, postgres, local_store
):
    """cut_over=False restores into a side database and touches nothing live, yet the record
    said 'restored' and rollback_restore put its safety copy over the live database, undoing
    every write made since. The record now says the target was not changed; a rollback is
    refused and changes nothing."""
    from flows.recovery import restore_with_checklist, rollback_restore
    from tasks.errors import BadInput

    db = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, db)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        backup_component("postgres", target=target, store=store)
        exec_in(target, db, "DELETE FROM app.items WHERE id > 10")
        record = restore_with_checklist(
            "postgres", target=target, store=store, options={"cut_over": False, "include_globals": False}
        )
        assert record.status == "restored" and record.target_changed is False
        # it writes nothing live: no safety copy of the live databases is taken for it
        assert record.safety_backup_id is None
        exec_in(target, db, "DELETE FROM app.items WHERE id > 5")  # written since: must stay
        now = state(target, db)

        with pytest.raises(BadInput, match="by its options wrote nothing to postgres"):
            rollback_restore(record.id, target=target, store=store)

        assert state(target, db) == now
    finally:
        drop(admin_target, db, *_asides_of(admin_target, db))


def test_a_rollback_of_one_database_puts_back_that_database_only(prefect_server, postgres, local_store):
    """The rollback of a restore of databases=[a] put back every database of the safety backup:
    b, which the restore never touched, lost the writes made to it since."""
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore

    a, b = new_name(), new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, a)
    make_db(admin_target, b)
    target = target_for(postgres, databases=[a, b])
    store = local_store()
    try:
        backup_component("postgres", target=target, store=store)
        exec_in(target, a, "DELETE FROM app.items WHERE id > 10")
        a_before = state(target, a)
        record = restore_with_checklist("postgres", target=target, store=store, options={"databases": [a]})
        exec_in(target, b, "DELETE FROM app.items WHERE id > 3")  # b, written since
        b_now = state(target, b)

        rolled = rollback_restore(record.id, target=target, store=store)

        assert state(target, a) == a_before and state(target, b) == b_now
        rollback = load_restore_record(store, rolled.rolled_back_by)
        assert rollback.options == {"include_globals": False, "databases": [a]}
    finally:
        drop(admin_target, a, b, *_asides_of(admin_target, a), *_asides_of(admin_target, b))


def test_a_publisher_s_slots_stay_with_its_kept_copy_and_cleanup_keeps_that_copy_saying_why(
    request, local_store, prefect_server
):
    """Logical replication slots belong to a database, not to its name: an in-place restore
    leaves them on the kept copy (its report says so, and what to do: they hold WAL), and
    cleanup, which PostgreSQL would refuse for that copy, keeps it with why and drops the rest."""
    from sandbox import services

    svc = services.start_postgres(
        secrets.token_hex(16), "pg-logical-" + secrets.token_hex(3), {"wal_level": "logical"}
    )
    request.addfinalizer(svc.stop)
    db, other = new_name(), new_name()
    admin_target = target_for(svc)
    make_db(admin_target, db)
    make_db(admin_target, other)
    target = target_for(svc, databases=[db, other])
    store = local_store()
    with backup_session(store, "postgres") as session:
        pg.backup(target, session)
        session.commit()
    exec_in(target, db, "SELECT pg_create_logical_replication_slot('orders_sub', 'pgoutput')")

    report = restore_component("postgres", backup_id="latest", target=target, store=store)

    kept = report["databases"][db]["kept_as"]
    assert report["databases"][db]["replication_slots_left_on_kept_copy"] == ["orders_sub"]
    assert "replication_slots_left_on_kept_copy" not in report["databases"][other]
    dropped = cleanup_postgres_rollbacks(older_than_hours=0, target=target)
    assert dropped["dropped"] == [report["databases"][other]["kept_as"]]
    assert (
        list(dropped["kept"]) == [kept] and "pg_drop_replication_slot('orders_sub')" in dropped["kept"][kept]
    )
    assert kept in db_names(target)
    exec_in(target, "postgres", "SELECT pg_drop_replication_slot('orders_sub')")
    assert cleanup_postgres_rollbacks(older_than_hours=0, target=target) == {"dropped": [kept]}
