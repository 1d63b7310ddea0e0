"""Settings that change how data is read or written, set as a default of the database (backup) or
of the role in the restore's database (`ALTER ROLE ... [IN DATABASE ...] SET`, as an operator
may have set them), must not change what a backup holds or what a restore loads. Neither pg_dump
nor pg_restore sets `array_nulls`: with it off, the element NULL of a dumped `{NULL}` loaded as
the string "NULL". `standard_conforming_strings = off` made the fingerprint's own `pg\\_toast%`
pattern a wildcard: a schema named `pgxtoast` was left out of the backup's check unseen."""

from __future__ import annotations

import pytest
from psycopg import sql

import tasks.components.postgres as pg
from tasks.components.postgres import properties
from tests.pg_helpers import db_names, drop, exec_in, new_name, scalar, target_for
from tests.test_postgres import take_backup

# as an operator's default would set them, all at once: each changes reading or writing values
ODD = {
    "array_nulls": "off",
    "standard_conforming_strings": "off",
    "extra_float_digits": "-15",
    "bytea_output": "escape",
    "IntervalStyle": "sql_standard",
    "DateStyle": "SQL, DMY",
    "TimeZone": "Pacific/Chatham",
}
DATA = """
CREATE SCHEMA pgxtoast;
CREATE TABLE pgxtoast.t (id int, a text[], n int[], b bytea, f float8, i interval, ts timestamptz,
                         s text, addr inet);  -- inet: text COPY in a table's own object
INSERT INTO pgxtoast.t VALUES
  (1, '{NULL,"NULL",x}', '{1,NULL}', '\\x00ff5c'::bytea, 0.1, '-1 day +02:03:04', '2024-02-29 23:59:59.5+13',
   E'back\\\\slash', '10.0.0.1/8'),
  (2, ARRAY[NULL]::text[], NULL, NULL, 1e-300, '1 year -2 mons', 'infinity', 'it''s', NULL);
"""


@pytest.mark.parametrize("objects_from", [None, 0], ids=["pg_dump", "tables-in-objects"])
def test_database_and_role_defaults_change_nothing_that_is_backed_up_or_restored(
    postgres, local_store, monkeypatch, objects_from
):
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(admin_target, db, DATA)
        for name, value in ODD.items():
            exec_in(admin_target, "postgres", f"ALTER DATABASE {db} SET \"{name}\" = '{value}'")
        expected = scalar(admin_target, db, "SELECT array_agg(t::text ORDER BY id) FROM pgxtoast.t")
        target = admin_target.model_copy(
            update={"databases": [db], "table_objects_from_mib": objects_from, "split_tables_from_mib": None}
        )
        store = local_store()
        manifest = take_backup(target, store)
        assert manifest.fingerprint["databases"][db]["tables"]["pgxtoast.t"]["rows"] == 2

        real = properties.create_side

        def with_role_defaults(conn, side, *args, **kwargs):
            real(conn, side, *args, **kwargs)
            for name, value in ODD.items():  # our role's defaults in the side database: at load
                conn.execute(
                    sql.SQL("ALTER ROLE postgres IN DATABASE {} SET {} = {}").format(
                        sql.Identifier(side), sql.Identifier(name), sql.Literal(value)
                    )
                )

        real_apply = properties.apply

        def without_them(conn, side, *args, **kwargs):  # loaded: the backup's own settings now
            conn.execute(sql.SQL("ALTER ROLE postgres IN DATABASE {} RESET ALL").format(sql.Identifier(side)))
            return real_apply(conn, side, *args, **kwargs)

        monkeypatch.setattr(properties, "create_side", with_role_defaults)
        monkeypatch.setattr(properties, "apply", without_them)
        copy = f"{db}_c"
        options = pg.RestoreOptions(include_globals=False, rename_to={db: copy})
        assert pg.restore(target, manifest, store, options)["databases"][copy]["fingerprint_equal"] is True
        assert scalar(admin_target, copy, "SELECT array_agg(t::text ORDER BY id) FROM pgxtoast.t") == expected
        assert scalar(
            admin_target, copy, "SELECT a[1] IS NULL AND a[2] = 'NULL' FROM pgxtoast.t WHERE id = 1"
        )
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


def test_a_database_that_quotes_every_identifier_backs_up_and_restores(postgres, local_store):
    """The fingerprint's keys are quote_ident's: a database's `quote_all_identifiers = on` made
    them `"public"."t"` at backup and `public.t` in the side database (its settings come after
    the load), so every table was 'missing after restore' and no backup of it restored."""
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(admin_target, db, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        exec_in(admin_target, "postgres", f"ALTER DATABASE {db} SET quote_all_identifiers = on")
        target = admin_target.model_copy(update={"databases": [db]})
        store = local_store()
        manifest = take_backup(target, store)
        assert "public.t" in manifest.fingerprint["databases"][db]["tables"]
        copy = f"{db}_c"
        options = pg.RestoreOptions(include_globals=False, rename_to={db: copy})
        assert pg.restore(target, manifest, store, options)["databases"][copy]["fingerprint_equal"] is True
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])
