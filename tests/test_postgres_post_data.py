"""Post-data (indexes, constraints, triggers) as its own object, built with `pg_restore -j` from a
private file: a damaged post-data object is refused before cut-over, a failing index build drops
the side database, and backups made before the split (one stream with everything) still restore."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.components.postgres as pg
import tasks.components.postgres.dump as pg_dump
import tasks.components.postgres.load as pg_load
from tasks.errors import ComponentFailed, IntegrityError
from tasks.storage.session import backup_session
from tests.pg_helpers import db_names, drop, exec_in, make_db, new_name, scalar, state, target_for
from tests.test_postgres import take_backup
from tests.test_postgres_one_read import DAMAGES


@pytest.fixture
def sample(postgres):
    name = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, name)
    exec_in(target_for(postgres), name, "CREATE INDEX logs_at ON public.logs (at)")
    yield target_for(postgres, databases=[name]), name
    drop(admin_target, *[d for d in db_names(admin_target) if d == name or d.startswith(name + "__")])


def _indexes(target, db: str) -> set[str]:
    return set(
        scalar(
            target,
            db,
            "SELECT coalesce(array_agg(indexname::text), '{}') FROM pg_indexes"
            " WHERE schemaname IN ('app', 'public')",
        )
    )


def test_post_data_is_its_own_object_and_the_restore_builds_it(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    facts = manifest.engine["databases"][db]
    assert facts["post_data_object"] == facts["object"].removesuffix(".pgdump") + ".postdata.pgdump"
    report = pg.verify(target, manifest, store)[db]
    assert report["table_data_entries"] == 2 and report["post_data_entries"] >= 2  # the PK, logs_at

    exec_in(target, db, "DROP INDEX public.logs_at; DELETE FROM app.items WHERE id < 50")
    pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert state(target, db)["tables"] == manifest.fingerprint["databases"][db]["tables"]
    assert _indexes(target, db) == {"items_pkey", "logs_at"}


@pytest.mark.parametrize("options", ["one-database", "everything"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_post_data_object_is_refused_before_cut_over(sample, local_store, damage, options):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs WHERE msg < '5'")
    changed, names = state(target, db), db_names(target)
    obj = manifest.object(manifest.engine["databases"][db]["post_data_object"])
    path = Path(store.path) / obj.key
    path.write_bytes(DAMAGES[damage](path.read_bytes()))

    # one database: the one-read path; everything: globals first, so all is verified up front
    opts = pg.RestoreOptions(databases=[db]) if options == "one-database" else pg.RestoreOptions()
    with pytest.raises(IntegrityError, match=obj.key):
        pg.restore(target, manifest, store, opts)
    assert state(target, db) == changed
    assert db_names(target) == names  # the side database is gone too


def test_a_restore_failing_while_building_post_data_drops_the_side_database(sample, local_store, monkeypatch):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM app.items WHERE id > 100")
    changed, names = state(target, db), db_names(target)
    real_build = pg_load.build_post_data

    def clashing_build(target_, path, db_, side, no_owner):
        # the primary key's index name is taken: pg_restore --exit-on-error fails half-way
        exec_in(target_, side, "CREATE INDEX items_pkey ON app.items (name)")
        real_build(target_, path, db_, side, no_owner)

    monkeypatch.setattr(pg_load, "build_post_data", clashing_build)
    with pytest.raises(ComponentFailed, match="post-data"):
        pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert state(target, db) == changed
    assert db_names(target) == names


def test_a_backup_from_before_the_split_restores_by_the_single_stream(sample, local_store, monkeypatch):
    target, db = sample
    store = local_store()
    real_argv = pg_dump._pg_dump

    def whole(
        target_, db_, snapshot, sections, encoding, options=()
    ):  # as before: one archive, every section
        argv = real_argv(target_, db_, snapshot, sections, encoding, options)
        return [a for a in argv if not a.startswith("--section")]

    monkeypatch.setattr(pg_dump, "_pg_dump", whole)
    with backup_session(store, "postgres") as session:
        pg.backup(target, session)
        post = session.engine["databases"][db].pop("post_data_object")
        assert session.engine["databases"][db].pop("table_parts") == []  # nor tables in parts
        session.backend.delete_keys([o.key for o in session.objects if o.name == post])
        session.objects = [o for o in session.objects if o.name != post]
        session.commit()
    manifest = session.manifest
    monkeypatch.undo()
    assert "post_data_object" not in manifest.engine["databases"][db]
    assert len(manifest.objects) == 2
    assert "post_data_entries" not in pg.verify(target, manifest, store)[db]

    exec_in(target, db, "DROP INDEX public.logs_at; DELETE FROM app.items WHERE id < 50")
    builds = []
    monkeypatch.setattr(pg_load, "build_post_data", lambda *a: builds.append(a))
    report = pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert report["databases"][db]["fingerprint_equal"] is True
    assert state(target, db)["tables"] == manifest.fingerprint["databases"][db]["tables"]
    assert _indexes(target, db) == {"items_pkey", "logs_at"}  # from the one stream
    assert builds == []


def test_event_triggers_come_back_but_never_fire_during_the_restore(sample, local_store):
    """pg_restore creates event triggers before it refreshes materialized views: a DDL-audit
    trigger logged the restore's own REFRESH into the restored table (a row the backup never had),
    and one whose function names its table without a schema failed every restore (pg_restore runs
    with an empty search_path). They are now created last, after the fingerprint and the build."""
    target, db = sample
    exec_in(
        target,
        db,
        "CREATE TABLE public.ddl_log (tag text); "
        "CREATE MATERIALIZED VIEW public.totals AS SELECT count(*) AS n FROM app.items; "
        "CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.ddl_log VALUES (tg_tag); END $$; "
        "CREATE FUNCTION public.log_ddl_bare() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO ddl_log VALUES (tg_tag || ' (bare)'); END $$; "
        "CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl(); "
        "CREATE EVENT TRIGGER log_ddl_bare ON ddl_command_end EXECUTE FUNCTION public.log_ddl_bare(); "
        "COMMENT ON EVENT TRIGGER log_ddl IS 'audit'; "
        "CREATE INDEX items_name ON app.items (name)",
    )
    logged = "SELECT array_agg(tag ORDER BY tag) FROM public.ddl_log"
    before = scalar(target, db, logged)
    assert before == ["CREATE INDEX", "CREATE INDEX (bare)"]
    store = local_store()
    manifest = take_backup(target, store)
    copy = db + "_copy"  # the sample fixture drops it with `db`

    pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={db: copy}))

    assert scalar(target, copy, logged) == before
    triggers = "SELECT array_agg(evtname || ':' || evtenabled::text ORDER BY evtname) FROM pg_event_trigger"
    assert scalar(target, copy, triggers) == ["log_ddl:O", "log_ddl_bare:O"]
    assert (
        scalar(
            target,
            copy,
            "SELECT obj_description(oid, 'pg_event_trigger') FROM pg_event_trigger WHERE evtname = 'log_ddl'",
        )
        == "audit"
    )
    assert scalar(target, copy, "SELECT n FROM public.totals") == 200
    assert {"items_pkey", "logs_at", "items_name"} <= _indexes(target, copy)
    exec_in(target, copy, "CREATE INDEX later ON public.ddl_log (tag)")  # and they work after it
    assert len(scalar(target, copy, logged)) == 4
