"""User code that a restore's load runs may write to other tables: a CHECK constraint (of a table
or a domain) or a generated column calling a function that logs into an audit table runs for
every row COPY loads. A table in an object of its own was fingerprinted right after its own COPY:
an audit table loaded first matched the backup, then the next table's load added rows to it, and
the restore verified and cut over with rows the backup never had. Where such code exists, every
table is compared after the whole build."""

from __future__ import annotations

import threading

import pytest

import tasks.components.postgres as pg
from tasks.components.postgres import load
from tasks.errors import IntegrityError
from tests.pg_helpers import db_names, drop, exec_in, new_name, scalar, target_for
from tests.test_postgres import take_backup

# the audit table is the larger one: loaded (and read) first, then `t`'s rows write into it
AUDIT = """
CREATE TABLE public.audit (v int, pad text);
CREATE FUNCTION public.log_it(v int) RETURNS boolean LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN INSERT INTO public.audit VALUES (v, 'load'); RETURN true; END $$;
-- declared immutable, as a generated column requires; it still calls the volatile one
CREATE FUNCTION public.pure(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
  $$ BEGIN PERFORM public.log_it(v); RETURN v * 2; END $$;
"""
USES = {
    "check": "CREATE TABLE public.t (v int CHECK (public.log_it(v)));",
    "domain_check": "CREATE DOMAIN public.logged AS int CHECK (public.log_it(VALUE));"
    " CREATE TABLE public.t (v public.logged);",
    "generated": "CREATE TABLE public.t (v int, twice int GENERATED ALWAYS AS (public.pure(v)) STORED);",
    # a row loaded into its partition is checked against the partition's bounds: the key is run
    "partition_key": "CREATE TABLE public.t (v int) PARTITION BY RANGE (public.pure(v));"
    " CREATE TABLE public.t_all PARTITION OF public.t FOR VALUES FROM (0) TO (100);",
}


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("objects_from", [0, None], ids=["tables-in-objects", "pg_dump"])
def test_rows_written_by_the_load_s_own_checks_are_seen_and_refused(
    postgres, local_store, monkeypatch, use, objects_from
):
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(admin_target, db, AUDIT + USES[use])
        exec_in(admin_target, db, "INSERT INTO public.t (v) VALUES (1), (2), (3)")
        exec_in(admin_target, db, "UPDATE public.audit SET pad = repeat('x', 5000)")  # the largest
        assert scalar(admin_target, db, "SELECT count(*) FROM public.audit") == 3
        target = admin_target.model_copy(
            update={"databases": [db], "table_objects_from_mib": objects_from, "split_tables_from_mib": None}
        )
        store = local_store()
        manifest = take_backup(target, store)
        monkeypatch.setattr(load, "POST_DATA_JOBS", 1)  # one table after the other: audit first
        before = db_names(admin_target)
        with pytest.raises(IntegrityError, match=r"table public\.audit: backup"):
            pg.restore(
                target, manifest, store, pg.RestoreOptions(include_globals=False, rename_to={db: f"{db}_c"})
            )
        assert db_names(admin_target) == before  # the side database is gone, nothing cut over
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


def test_checks_of_built_in_functions_keep_the_fast_path(postgres):
    """Only a function that is not built in may write: a CHECK of built-in functions and a user
    function's default (COPY gives every column, so no default runs) leave the early reads on."""
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(
            admin_target,
            db,
            AUDIT + "CREATE TABLE public.u (v text CHECK (length(v) < 10), w int DEFAULT public.pure(1));",
        )
        assert load.checks_may_write(admin_target, db) is False
        # an extension's function counts too (dblink_exec could write): only built-in ones do not
        exec_in(
            admin_target,
            db,
            "CREATE EXTENSION pg_trgm; ALTER TABLE public.u ADD CHECK (similarity(v, 'x') < 2)",
        )
        assert load.checks_may_write(admin_target, db) is True
        exec_in(admin_target, db, "ALTER TABLE public.u DROP CONSTRAINT u_v_check1")
        assert load.checks_may_write(admin_target, db) is False
        exec_in(admin_target, db, USES["check"])
        assert load.checks_may_write(admin_target, db) is True
    finally:
        drop(admin_target, db)


def test_rows_written_by_an_index_build_are_seen_and_refused(postgres, local_store, monkeypatch):
    """An expression index's function (declared immutable, calling a volatile one) runs for every
    row when post-data builds the index, beside the fingerprint's scan: a table scanned before the
    build wrote to it matched the backup. Here the scan ends before the build starts."""
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(
            admin_target,
            db,
            AUDIT + "CREATE TABLE public.t (v int); CREATE INDEX ON public.t (public.pure(v));",
        )
        exec_in(admin_target, db, "INSERT INTO public.t VALUES (1), (2), (3)")
        target = admin_target.model_copy(update={"databases": [db]})
        store = local_store()
        manifest = take_backup(target, store)
        scanned = threading.Event()
        real_check, real_build = load.check_fingerprint, load.build_post_data

        def check(*args, **kwargs):
            try:
                return real_check(*args, **kwargs)
            finally:
                scanned.set()

        def build(*args, **kwargs):
            scanned.wait(60)
            return real_build(*args, **kwargs)

        monkeypatch.setattr(load, "check_fingerprint", check)
        monkeypatch.setattr(load, "build_post_data", build)
        before = db_names(admin_target)
        with pytest.raises(IntegrityError, match=r"table public\.audit: backup"):
            pg.restore(
                target, manifest, store, pg.RestoreOptions(include_globals=False, rename_to={db: f"{db}_c"})
            )
        assert db_names(admin_target) == before
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


@pytest.mark.parametrize("objects_from", [0, None], ids=["tables-in-objects", "pg_dump"])
def test_triggers_and_rules_that_write_are_made_after_the_rows_and_never_fire(
    postgres, local_store, objects_from
):
    """A trigger or a rule writing into the audit table on each insert comes with post-data, after
    every row is loaded (parts included): the restore adds nothing, verifies, and keeps them."""
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(
            admin_target,
            db,
            AUDIT
            + """CREATE TABLE public.t (v int);
                 CREATE FUNCTION public.on_insert() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM public.log_it(NEW.v); RETURN NEW; END $$;
                 CREATE TRIGGER logged AFTER INSERT ON public.t
                   FOR EACH ROW EXECUTE FUNCTION public.on_insert();
                 CREATE TABLE public.r (v int);
                 CREATE RULE logged AS ON INSERT TO public.r
                   DO ALSO INSERT INTO public.audit VALUES (NEW.v, 'rule');
                 INSERT INTO public.t VALUES (1), (2); INSERT INTO public.r VALUES (3);""",
        )
        assert scalar(admin_target, db, "SELECT count(*) FROM public.audit") == 3
        target = admin_target.model_copy(
            update={"databases": [db], "table_objects_from_mib": objects_from, "split_tables_from_mib": None}
        )
        store = local_store()
        manifest = take_backup(target, store)
        copy = f"{db}_c"
        options = pg.RestoreOptions(include_globals=False, rename_to={db: copy})
        assert pg.restore(target, manifest, store, options)["databases"][copy]["fingerprint_equal"] is True
        assert scalar(admin_target, copy, "SELECT count(*) FROM public.audit") == 3
        exec_in(admin_target, copy, "INSERT INTO public.t VALUES (4); INSERT INTO public.r VALUES (5)")
        assert scalar(admin_target, copy, "SELECT count(*) FROM public.audit") == 5  # both came back
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])
