"""PostgreSQL component against a real, isolated PostgreSQL cluster (the session `postgres`)."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

import tasks.components.postgres as pg
import tasks.components.postgres.load as pg_load
import tasks.components.postgres.restores as pg_restores
from tasks.components.postgres.common import connect, parse_aside
from tasks.errors import BadInput, ComponentFailed, IntegrityError, IsolationTaken
from tasks.storage.backends import backend_for
from tasks.storage.catalog import latest_backup, list_backups
from tasks.storage.health import damaged_ids, is_damage
from tasks.storage.session import backup_session
from tasks.verbs import verify_component_backup
from tests.pg_helpers import (
    db_names,
    drop,
    exec_in,
    kill_child,
    make_db,
    new_name,
    scalar,
    state,
    target_for,
)


def take_backup(target, store, session_hook=None):
    with backup_session(store, "postgres") as session:
        if session_hook:
            session_hook(session)
        pg.backup(target, session)
        session.commit()
    return session.manifest


@pytest.fixture
def sample(postgres):
    """A fresh sample database and a target that backs up only it."""
    name = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, name)
    yield target_for(postgres, databases=[name]), name
    drop(admin_target, *[d for d in db_names(admin_target) if d == name or d.startswith(name + "__")])


def test_backup_alter_restore_gives_back_the_recorded_fingerprint(sample, local_store):
    target, db = sample
    store = local_store()
    exec_in(target, "postgres", f"ALTER DATABASE {db} SET search_path = app, public")
    exec_in(target, "postgres", f"ALTER DATABASE {db} SET work_mem = '8MB'")
    before = state(target, db)
    manifest = take_backup(target, store)

    assert manifest.fingerprint["databases"][db] == before
    assert before["tables"]["app.items"]["rows"] == 200
    assert manifest.engine["databases"][db]["size"] > 0
    assert manifest.engine["server_version"].startswith("15")
    facts = manifest.engine["databases"][db]
    assert {o.name for o in manifest.objects} == {"globals.sql", facts["object"], facts["post_data_object"]}

    exec_in(target, db, "DELETE FROM app.items WHERE id % 2 = 0; UPDATE public.logs SET msg = 'x'")
    exec_in(target, db, "SELECT nextval('app.items_id_seq')")
    assert state(target, db) != before

    report = pg.restore(target, manifest, store, pg.RestoreOptions())
    assert state(target, db) == manifest.fingerprint["databases"][db]
    kept = report["databases"][db]["kept_as"]
    assert parse_aside(kept)[:2] == (db, "rollback")
    assert (
        scalar(target, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (kept,))
        is False
    )
    assert report["databases"][db]["fingerprint_equal"] is True
    # where the restore's time went, to the cut-over
    assert set(report["databases"][db]["seconds"]) == {"load", "fingerprint+post_data", "cut-over"}
    assert not [d for d in db_names(target) if "__restore_" in d]
    # database-level settings came back with the database
    assert scalar(target, db, "SHOW search_path") == "app, public"
    assert scalar(target, db, "SHOW work_mem") == "8MB"
    assert scalar(target, db, "SELECT count(*) FROM items") == 200  # found through search_path


def test_writes_during_the_dump_are_not_in_the_fingerprint_or_the_dump(sample, local_store):
    target, db = sample
    store = local_store()
    before = state(target, db)

    def hook(session):
        write = session.write

        def write_after_concurrent_commit(name, source, **kw):
            if name != "globals.sql":  # the snapshot is taken: commit changes, then dump
                exec_in(target, db, "INSERT INTO app.items (name) VALUES ('late'); DELETE FROM public.logs")
            return write(name, source, **kw)

        session.write = write_after_concurrent_commit

    manifest = take_backup(target, store, hook)
    # tables are read in the snapshot; sequences are not transactional (see diff_fingerprints)
    assert manifest.fingerprint["databases"][db]["tables"] == before["tables"]
    assert state(target, db)["tables"] != before["tables"]  # the writes did land

    pg.restore(target, manifest, store, pg.RestoreOptions())
    assert state(target, db)["tables"] == before["tables"]
    assert scalar(target, db, "SELECT count(*) FROM app.items WHERE name = 'late'") == 0


def test_killed_pg_dump_leaves_no_backup(postgres, local_store):
    admin_target = target_for(postgres)
    db = new_name()
    make_db(admin_target, db, rows=100_000)
    target = target_for(postgres, databases=[db])
    store = local_store()

    def hook(session):
        write = session.write

        def write_and_kill(name, source, **kw):
            if name == "globals.sql":
                return write(name, source, **kw)

            def chunks():
                for i, chunk in enumerate(source):
                    if i == 0:
                        kill_child("pg_dump")
                    yield chunk

            return write(name, chunks(), **kw)

        session.write = write_and_kill

    try:
        with pytest.raises(ComponentFailed, match="pg_dump .* killed by signal 9"):
            take_backup(target, store, hook)
        assert list_backups(store, "postgres") == []
        stored = [p for p in (Path(store.path)).rglob("*") if p.is_file()]
        assert stored == []
    finally:
        drop(admin_target, db)


def test_corrupted_object_is_refused_before_the_target_is_touched(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs")
    changed = state(target, db)
    names = db_names(target)

    obj = manifest.object(manifest.engine["databases"][db]["object"])
    path = Path(store.path) / obj.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match="sha256"):
        pg.restore(target, manifest, store, pg.RestoreOptions())
    assert state(target, db) == changed
    assert db_names(target) == names


def test_restore_whose_sql_fails_leaves_the_target_as_it_was(postgres, local_store):
    admin_target = target_for(postgres)
    role, db = new_name("r"), new_name()
    exec_in(admin_target, "postgres", f"CREATE ROLE {role}")
    make_db(admin_target, db, owner=role)
    # the database itself is the superuser's (a missing database owner is refused before
    # pg_restore: see below); a table in it is the role's
    exec_in(admin_target, "postgres", f"ALTER DATABASE {db} OWNER TO postgres")
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        manifest = take_backup(target, store)
        # the role the dump assigns ownership to is gone: ALTER ... OWNER TO fails
        exec_in(admin_target, db, "DELETE FROM app.items WHERE id < 50")
        exec_in(admin_target, db, f"REASSIGN OWNED BY {role} TO postgres")
        exec_in(admin_target, "postgres", f"ALTER DATABASE {db} OWNER TO postgres")
        exec_in(admin_target, "postgres", f"DROP ROLE {role}")
        changed = state(target, db)
        names = db_names(target)

        with pytest.raises(ComponentFailed, match="pg_restore .*exited with status 1"):
            pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=False))
        assert state(target, db) == changed
        assert db_names(target) == names

        # a backup whose database owner is gone is refused before anything is loaded
        exec_in(admin_target, "postgres", f"CREATE ROLE {role}")
        exec_in(admin_target, "postgres", f"ALTER DATABASE {db} OWNER TO {role}")
        owned = take_backup(target, store)
        exec_in(admin_target, "postgres", f"ALTER DATABASE {db} OWNER TO postgres")
        exec_in(admin_target, "postgres", f"DROP ROLE {role}")
        with pytest.raises(ComponentFailed, match=f'cannot create .*role "{role}" does not exist.*no_owner'):
            pg.restore(target, owned, store, pg.RestoreOptions(include_globals=False))
        assert state(target, db) == changed
        assert db_names(target) == names

        # asked to skip ownership, the same backup restores cleanly
        pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=False, no_owner=True))
        assert state(target, db) == manifest.fingerprint["databases"][db]
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


def test_pg_restore_killed_mid_way_leaves_the_target_as_it_was(postgres, local_store, monkeypatch):
    admin_target = target_for(postgres)
    db = new_name()
    make_db(admin_target, db, rows=100_000)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        manifest = take_backup(target, store)
        exec_in(target, db, "DELETE FROM app.items WHERE id < 1000")
        changed = state(target, db)
        names = db_names(target)
        real_read = pg_load.read_object

        def read_and_kill(store_, obj, *a):
            for i, chunk in enumerate(real_read(store_, obj, *a)):
                if i == 1 and obj.name != "globals.sql":
                    kill_child("pg_restore")
                yield chunk

        monkeypatch.setattr(pg_load, "read_object", read_and_kill)
        with pytest.raises(ComponentFailed, match="pg_restore .*signal 9"):
            pg.restore(target, manifest, store, pg.RestoreOptions())
        assert state(target, db) == changed
        assert db_names(target) == names
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


def test_restore_to_another_name_leaves_the_source_alone_and_cut_over_false_touches_nothing(
    sample, local_store
):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs")
    changed = state(target, db)
    copy = db + "_copy"

    report = pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={db: copy}))
    assert report["databases"][copy]["kept_as"] is None
    assert state(target, copy) == manifest.fingerprint["databases"][db]
    assert state(target, db) == changed

    report = pg.restore(target, manifest, store, pg.RestoreOptions(cut_over=False))
    aside = report["databases"][db]["restored_aside_as"]
    assert state(target, aside) == manifest.fingerprint["databases"][db]
    assert state(target, db) == changed
    drop(target, copy, aside)


def test_bad_restore_options_are_refused(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    with pytest.raises(BadInput, match="not in backup"):
        pg.restore(target, manifest, store, pg.RestoreOptions(databases=["nope"]))
    with pytest.raises(BadInput, match="rename_to"):
        pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={"nope": "x"}))
    with pytest.raises(ValueError):
        pg.RestoreOptions(rename_to={db: "bad\x01name"})
    # names the project reads as its own: a kept copy's (cleanup drops it, a backup skips it, a
    # rollback swaps it in) or template0 (no backup has it, CREATE DATABASE copies it)
    for reserved in (f"{db}__rollback_20200101000000", "x__restore_20200101000000ab12", "template0"):
        with pytest.raises(ValueError, match="reserved"):
            pg.RestoreOptions(rename_to={db: reserved})


def test_drill_restores_aside_verifies_and_always_drops(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    before = db_names(target)
    result = pg.drill(target, manifest, store, "d1")
    assert result["verified"] is True
    assert result["checks"][db]["fingerprint_equal"] is True
    assert result["checks"][db]["rows"] == 400
    assert set(result["checks"][db]["seconds"]) == {"load", "fingerprint+post_data"}  # the RTO's parts
    assert db_names(target) == before

    # every object is checked: the streamed ones as they load, globals (not applied) on its own
    for name in (manifest.engine["databases"][db]["object"], "globals.sql"):
        path = Path(store.path) / manifest.object(name).key
        good = path.read_bytes()
        path.write_bytes(good[:-10])
        with pytest.raises(IntegrityError):
            pg.drill(target, manifest, store, "d2")
        assert db_names(target) == before
        path.write_bytes(good)


def test_a_drill_whose_side_database_name_is_taken_refuses_and_leaves_it(prefect_server, sample, local_store):
    """A database already under the drill's side name is not the drill's to drop: the drill fails
    saying so, and neither the drill nor the flow's cleanup of crashed drills touches it."""
    from flows.drill import DrillFailed, restore_drill

    target, db = sample
    store = local_store()
    take_backup(target, store)
    taken = f"drill_taken_0_{db}"
    make_db(target, taken, rows=3)
    try:
        with pytest.raises(IsolationTaken, match="already exists"):
            pg.drill(target, latest_backup(store, "postgres"), store, "taken")
        with pytest.raises(DrillFailed, match="IsolationTaken: database 'drill_taken_0_"):
            restore_drill(
                components=["postgres"], targets={"postgres": target}, store=store, drill_id="taken"
            )
        assert taken in db_names(target) and scalar(target, taken, "SELECT count(*) FROM app.items") == 3
    finally:
        drop(target, taken)


def test_describe_current_state_and_verify(sample, local_store):
    target, db = sample
    store = local_store()
    described = pg.describe_current_state(target)
    assert list(described["databases"]) == [db]
    assert described["databases"][db]["fingerprint"]["tables"]["app.items"]["rows"] == 200
    manifest = take_backup(target, store)
    assert pg.verify(target, manifest, store)[db]["table_data_entries"] == 2


def _stored_again(store, manifest, db, change):
    """The backup stored once more, the dump of `db` changed by `change` and checksummed as it
    now is: what a pg_dump that wrote a broken archive and exited 0 (or a re-sealed forgery)
    leaves. `store` keeps objects as they are (no compression, no key)."""
    backend = backend_for(store)
    dump = manifest.engine["databases"][db]["object"]
    with backup_session(store, "postgres") as s:
        for obj in manifest.objects:
            data = backend.get_bytes(obj.key)
            s.write(obj.name, [change(data) if obj.name == dump else data])
        s.engine.update(manifest.engine)
        s.fingerprint = manifest.fingerprint
        s.source_time = manifest.source_time
        return s.commit()


@pytest.mark.parametrize(
    "change",
    [lambda d: d[:300], lambda d: b"not a dump at all", lambda d: d[:5] + b"\xff" * 64 + d[69:]],
    ids=["truncated-in-its-toc", "not-a-dump", "header-overwritten"],
)
def test_a_dump_pg_restore_cannot_read_is_damage_not_an_engine_failure(sample, local_store, change):
    """pg_restore --list failing on an archive whose bytes are as stored (checksums match) proves
    the dump itself broken: IntegrityError (so the sweep records it damaged and 'latest' never
    picks it), not ComponentFailed (an engine that failed, retried, the backup left 'unverified')."""
    target, db = sample
    store = local_store(compression="none")
    broken = _stored_again(store, take_backup(target, store), db, change)
    with pytest.raises(IntegrityError, match=f"{broken.id}.*{db}.*cannot be read") as err:
        verify_component_backup(broken, store, target)  # what a restore, a drill, the sweep run
    assert is_damage(err.value)
    assert broken.id in damaged_ids(store, "postgres")


def test_cut_over_ends_sessions_on_the_target_and_describe_reports_missing_databases(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs")
    client = connect(target, db, autocommit=True)  # an app still connected to the old database
    try:
        pg.restore(target, manifest, store, pg.RestoreOptions())
        assert client.closed or client.broken or _dead(client)
    finally:
        client.close()
    assert state(target, db) == manifest.fingerprint["databases"][db]

    gone = target.model_copy(update={"databases": [db, "lost_db"]})
    described = pg.describe_current_state(gone)
    assert described["missing"] == ["lost_db"]
    assert list(described["databases"]) == [db]
    assert any(parse_aside(d)[0] == db for d in described["aside"])


def test_template1_is_cut_over_when_it_is_also_the_maintenance_database(postgres):
    """The renames run from another database than the three they touch (the current database
    cannot be renamed): with maintenance_db template1, that was template1 again."""
    from tasks.components.postgres.cutover import swap

    target = target_for(postgres, maintenance_db="template1")
    side, keep, back = new_name("side"), new_name("keep"), new_name("back")
    exec_in(target, "postgres", f"CREATE DATABASE {side} TEMPLATE template1 IS_TEMPLATE true")
    try:
        assert swap(target, side, "template1", keep) == {"database": "template1", "kept_as": keep}
        swap(target, keep, "template1", back)  # and back, as a rollback does
        assert scalar(target, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = 'template1'")
    finally:
        drop(target, *({side, keep, back} & db_names(target)))


def _dead(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_restore_runs_inside_the_quiesce_window_and_leaves_it_on_failure(
    sample, local_store, monkeypatch, kube_api, prefect_server
):
    """Against the Kubernetes API emulator (deployments, pods, scale): the restore (globals,
    restore aside, cut-over) happens while the namespace is scaled down, the replica counts come
    back exactly, also when the restore fails; bad input scales nothing."""
    from tasks.components.kubernetes import api as kube
    from tasks.components.kubernetes import quiesce

    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    ns = "lambda-" + secrets.token_hex(3)
    ctl = kube_api.controller
    ctl.seed_namespace(ns)
    ctl.seed_deployment(ns, "api", 2)
    ctl.seed_deployment(ns, "worker", 3)
    block = "kube-" + secrets.token_hex(3)
    kube_api.target().save(block)  # as an operator configures it: a KubernetesTarget block
    k = kube.connect(kube_api.target())

    def replicas() -> dict[str, int]:
        return {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k, ns)}

    def running_pods() -> int:
        return len(k.core.list_namespaced_pod(ns).items)

    events = []
    real_aside, real_unquiesce = pg_restores.restore_aside, quiesce.unquiesce

    def observed_aside(*args, **kwargs):  # the real restore, observed when it starts
        events.append(("restore", replicas(), running_pods()))
        return real_aside(*args, **kwargs)

    def observed_unquiesce(*args, **kwargs):  # the real scale-up, observed when it starts
        events.append(("up", sorted(db_names(target))))
        return real_unquiesce(*args, **kwargs)

    monkeypatch.setattr(pg_restores, "restore_aside", observed_aside)
    monkeypatch.setattr(quiesce, "unquiesce", observed_unquiesce)
    report = pg.restore(target, manifest, store, pg.RestoreOptions(quiesce_namespace=ns, kube_block=block))
    assert report["quiesced"] == {"namespace": ns, "replicas": {"api": 2, "worker": 3}}
    assert events[0] == ("restore", {"api": 0, "worker": 0}, 0)  # down, and the pods gone
    assert events[1][0] == "up" and any("__rollback_" in d for d in events[1][1])  # cut over first
    assert replicas() == {"api": 2, "worker": 3}

    events.clear()
    writes = len(ctl.writes)
    with pytest.raises(BadInput):
        pg.restore(
            target,
            manifest,
            store,
            pg.RestoreOptions(quiesce_namespace=ns, kube_block=block, databases=["nope"]),
        )
    assert events == [] and ctl.writes[writes:] == []  # refused before anything was scaled
    monkeypatch.setattr(
        pg_restores, "restore_aside", lambda *a, **k: (_ for _ in ()).throw(ComponentFailed("boom"))
    )
    with pytest.raises(ComponentFailed, match="boom"):
        pg.restore(target, manifest, store, pg.RestoreOptions(quiesce_namespace=ns, kube_block=block))
    assert [e[0] for e in events] == ["up"]
    assert replicas() == {"api": 2, "worker": 3}


def test_a_rollback_takes_only_its_own_database_s_kept_copies(postgres):
    """`app` and `app_staging`: the kept copy of `app` is not one of `app_staging`, though its
    name starts the same (a rollback of `app_staging` put `app`'s old data in its place). Names
    too long to keep whole are recognised by their cut, and two that begin alike past the room
    (`..._q1`, `..._q2`) do not share kept copies."""
    from tasks.components.postgres.common import aside_name
    from tasks.components.postgres.kept_copies import rollback_task
    from tasks.errors import NotFound

    admin_target = target_for(postgres)
    app = new_name("app")
    staging, long_name = app + "_staging", app + "_" + "l" * 52
    q1, q2 = app + "_events_partitioned_2024_q1", app + "_events_partitioned_2024_q2"
    kept = {db: aside_name(db, "rollback") for db in (app, long_name, q1)}
    for db in (app, staging, long_name, q1, q2, *kept.values()):
        exec_in(admin_target, "postgres", f'CREATE DATABASE "{db}"')
    exec_in(admin_target, staging, "CREATE TABLE mine (x int)")
    try:
        assert parse_aside(kept[long_name])[0] != long_name  # cut to fit 63 bytes
        with pytest.raises(NotFound, match="no kept copy"):
            rollback_task.fn(admin_target, staging)
        with pytest.raises(NotFound, match="is not a kept copy"):
            rollback_task.fn(admin_target, staging, kept[app])
        assert scalar(admin_target, staging, "SELECT count(*) FROM pg_class WHERE relname = 'mine'") == 1
        with pytest.raises(NotFound, match="no kept copy"):
            rollback_task.fn(admin_target, q2)
        assert rollback_task.fn(admin_target, q1)["restored_from"] == kept[q1]
        assert rollback_task.fn(admin_target, long_name)["restored_from"] == kept[long_name]
        assert rollback_task.fn(admin_target, app)["restored_from"] == kept[app]
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(app)])
