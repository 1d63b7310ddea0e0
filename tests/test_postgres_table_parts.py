"""Large tables backed up in block-range parts and loaded in parallel (table_parts.py) come back
exactly: `pg_dump` of the database before and after identical, whatever the database's own
settings for how values are written; a damaged or missing part is refused before any cut-over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tasks.components.postgres as pg
from tasks.components.postgres import table_parts
from tasks.components.postgres.common import connect, engine_env, tool
from tasks.components.postgres.fingerprint import V3, V6, algorithm_for, fingerprint, table_fingerprint
from tasks.errors import ComponentFailed, IntegrityError, NotFound
from tasks.proc import run
from tests.pg_helpers import db_names, drop, dump_lines, exec_in, make_db, new_name, scalar, state, target_for
from tests.test_postgres import take_backup

# what a database may set that changes how values are written as text, and awkward names
ODD_TABLE = '"we.ird s"."t ""a"",b"'
ODD = '''
ALTER DATABASE {db} SET "DateStyle" = 'SQL, DMY';
ALTER DATABASE {db} SET "IntervalStyle" = 'sql_standard';
ALTER DATABASE {db} SET extra_float_digits = -15;
ALTER DATABASE {db} SET bytea_output = 'escape';
ALTER DATABASE {db} SET xmloption = 'document';
ALTER DATABASE {db} SET search_path = app;
CREATE SCHEMA "we.ird s";
COMMENT ON SCHEMA "we.ird s" IS 'a schema';
CREATE TABLE "we.ird s"."t ""a"",b" (
    id int, gone text, f float8, r real, d date, ts timestamptz, iv interval, x xml, b bytea,
    money_ money, arr text[], rc regclass, "Ünï ""col""" text, twice int GENERATED ALWAYS AS (id * 2) STORED);
ALTER TABLE "we.ird s"."t ""a"",b" DROP COLUMN gone;
INSERT INTO "we.ird s"."t ""a"",b" (id, f, r, d, ts, iv, x, b, money_, arr, rc, "Ünï ""col""")
SELECT i, 0.1 + i / 3.0, 1.0 / (i + 7), date '2026-02-03' + i,
       timestamptz '2026-02-03 04:05:06.789+05' + i * interval '1 min', make_interval(0, 1, 0, 2, 3, 4, 5.5),
       xmlparse(content 'a<b>' || i || '</b>c'), decode('00ff5c' || lpad(to_hex(i % 256), 2, '0'), 'hex'),
       i * 1.25, ARRAY['x' || i, NULL, E'tab\\there', 'quote"s\\\\'], 'app.items'::regclass,
       E'line\\nbreak \\\\. ' || i
FROM generate_series(1, 3000) i;
INSERT INTO "we.ird s"."t ""a"",b" (id, f) VALUES (-1, 'NaN'), (-2, '-Infinity'), (-3, -0.0);
-- every column of a type with exact binary I/O: its parts are binary COPY (BINARY_EXACT)
CREATE TABLE "we.ird s".bin (
    id int8, f4 real, f8 float8, n numeric, n2 numeric(7,3), ts timestamp(3), tz timestamptz, d date,
    t time, ttz timetz, iv interval, c char(5), v varchar(9), tx text, b bytea, ok bool, u uuid,
    j json, jb jsonb, o oid, s int2, arr float8[], tarr text[], narr numeric[][]);
INSERT INTO "we.ird s".bin
SELECT i, 1.0 / (i + 3), 0.1 + i / 3.0, i / 7.0, i / 9.0,
       timestamp '2026-02-03 04:05:06.789' + i * interval '1 s',
       timestamptz '2026-02-03 04:05:06.789+05' + i * interval '1 min', date '2026-02-03' + i,
       time '23:59:59.999999', timetz '04:05:06+05:30', make_interval(0, 1, 0, 2, 3, 4, 5.5), 'ab',
       E'é\\\\.\\n' || i % 10, E'tab\\there \\\\. "q"', decode('00ff5c0a', 'hex'), i % 2 = 0,
       md5(i::text)::uuid, '{{"b": 1,  "a": [1.0, 1e2]}}', '{{"b": 1, "a": 1.50}}', i, i % 32000,
       ARRAY[1.0 / 3, 'NaN', '-Infinity', -0.0, NULL], '[0:1]={{x,NULL}}', '{{{{1.10,2}},{{NULL,NaN}}}}'
FROM generate_series(1, 2000) i;
INSERT INTO "we.ird s".bin (id, f4, f8, n, ts, tz, d, iv, c, tx, jb) VALUES
    (-1, 'NaN', '-Infinity', 'NaN', 'infinity', '-infinity', 'infinity', '-178000000 years', '', '', 'null'),
    (-2, '-0', '-0', '-0.000', '-infinity', 'infinity', '-infinity', '0', NULL, NULL, '"s"'),
    (-3, 'Infinity', 1e308, 'Infinity', NULL, NULL, NULL, NULL, 'x    ', 'x    ', '[]');
CREATE TABLE "we.ird s".nocols ();
INSERT INTO "we.ird s".nocols SELECT FROM generate_series(1, 5);
'''


# tables in parts, and their COPY format: binary where every column's type has exact binary I/O
PARTS = {"items": "binary", "logs": "binary", "bin": "binary", 't "a",b': None}


def _pg_dump(target, db: str) -> list[str]:
    with engine_env(target, db) as env:
        out = run([tool(target, "pg_dump"), "--no-password", "-d", f"dbname={db}"], env, name="pg_dump")
    return dump_lines(out)


@pytest.fixture
def odd(postgres):
    name = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, name, rows=3000)
    exec_in(admin_target, name, ODD.format(db=name))
    # every table in parts, however small
    yield target_for(postgres, databases=[name], split_tables_from_mib=0), name
    drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(name)])  # and `<name>_copy`


def test_tables_in_parts_come_back_exactly_whatever_the_database_s_settings(odd, local_store):
    target, db = odd
    store = local_store()
    before = _pg_dump(target, db)
    manifest = take_backup(target, store)
    info = manifest.engine["databases"][db]
    # not a table with no column to copy: pg_dump keeps it
    assert {t["table"]: t.get("format") for t in info["table_parts"]} == PARTS
    assert all(len(t["objects"]) >= 2 for t in info["table_parts"])  # more than one block each
    assert pg.verify(target, manifest, store)[db]["table_data_entries"] == 5  # nocols in the archive
    exec_in(target, db, "DELETE FROM app.items WHERE id % 3 = 0; DROP TABLE " + ODD_TABLE)

    report = pg.restore(target, manifest, store, pg.RestoreOptions())

    assert report["databases"][db]["fingerprint_equal"] is True
    assert _pg_dump(target, db) == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_or_missing_part_is_refused_before_cut_over(odd, local_store, damage):
    target, db = odd
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs")
    changed, names = state(target, db), db_names(target)
    info = manifest.engine["databases"][db]
    obj = manifest.object(info["table_parts"][-1]["objects"][-1])
    path = Path(store.path) / obj.key
    if damage == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data) if damage == "flip" else bytes(data[:-50]))

    with pytest.raises((IntegrityError, NotFound), match=re.escape(obj.key)):
        pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert state(target, db) == changed
    assert db_names(target) == names  # the side database is gone too


def test_an_archive_that_also_holds_a_part_table_s_data_is_refused(odd, local_store):
    target, db = odd
    manifest = take_backup(target, local_store())
    info = manifest.engine["databases"][db]
    table = info["table_parts"][0]
    toc = f"3350; 0 {table['oid']} TABLE DATA {table['schema']} {table['table']} postgres\n"
    with pytest.raises(IntegrityError, match="load twice"):
        table_parts.check_toc(manifest, db, info, toc)
    assert table_parts.check_toc(manifest, db, info, "3350; 0 1 TABLE DATA public other postgres\n") == 4


def test_tables_under_the_threshold_stay_in_the_archive(postgres, local_store):
    name = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, name)
    try:
        manifest = take_backup(target_for(postgres, databases=[name]), local_store())
        assert manifest.engine["databases"][name]["table_parts"] == []
        assert [o.name for o in manifest.objects if o.name.endswith(".copy")] == []
    finally:
        drop(admin_target, name)


def test_parts_read_the_dump_s_snapshot_not_what_was_written_meanwhile(odd, local_store, monkeypatch):
    """Rows committed while the parts are dumped (after the snapshot was exported) are in
    neither the parts nor the fingerprint: each part's session imports the dump's snapshot."""
    target, db = odd
    store = local_store()
    real_dump = table_parts.dump

    def write_meanwhile(*args, **kwargs):
        exec_in(target, db, "INSERT INTO app.items (name) SELECT 'late' FROM generate_series(1, 500)")
        exec_in(target, db, "DELETE FROM public.logs WHERE msg < '8'")
        return real_dump(*args, **kwargs)

    monkeypatch.setattr(table_parts, "dump", write_meanwhile)
    manifest = take_backup(target, store)
    monkeypatch.undo()
    rows = manifest.fingerprint["databases"][db]["tables"]
    assert rows["app.items"]["rows"] == 3000 and rows["public.logs"]["rows"] == 3000

    report = pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={db: db + "_copy"}))

    assert report["databases"][db + "_copy"]["rows"] == sum(t["rows"] for t in rows.values())
    assert scalar(target, db + "_copy", "SELECT count(*) FROM app.items WHERE name = 'late'") == 0


def test_a_backup_in_parts_drills_and_restores_without_owners(odd, local_store):
    target, db = odd
    store = local_store()
    manifest = take_backup(target, store)
    expected = manifest.fingerprint["databases"][db]["tables"]

    drill = pg.drill(target, manifest, store, "parts")
    assert drill["verified"] is True and drill["checks"][db]["fingerprint_equal"] is True
    report = pg.restore(
        target,
        manifest,
        store,
        pg.RestoreOptions(rename_to={db: db + "_copy"}, no_owner=True, cut_over=False),
    )
    side = report["databases"][db + "_copy"]["restored_aside_as"]
    assert state(target, side)["tables"] == expected


@pytest.mark.parametrize("split", [None, 10**6])
def test_mid_sized_tables_are_objects_of_their_own_whole_and_come_back_exactly(
    odd, local_store, split, monkeypatch
):
    """Tables of at least `table_objects_from_mib` and under `split_tables_from_mib` (or with
    splitting off): one object each, the whole table, loaded beside the others at restore."""
    target, db = odd
    target = target.model_copy(update={"table_objects_from_mib": 0, "split_tables_from_mib": split})
    store = local_store()
    before = _pg_dump(target, db)
    manifest = take_backup(target, store)
    info = manifest.engine["databases"][db]
    assert {t["table"]: t.get("format") for t in info["table_parts"]} == PARTS
    assert all(len(t["objects"]) == 1 for t in info["table_parts"])
    exec_in(target, db, "DELETE FROM app.items WHERE id % 3 = 0; DROP TABLE " + ODD_TABLE)
    seen = _counting_reads(monkeypatch)

    report = pg.restore(target, manifest, store, pg.RestoreOptions())

    assert report["databases"][db]["fingerprint_equal"] is True
    assert _pg_dump(target, db) == before
    assert sorted(seen) == sorted(PARTS)  # each read for the fingerprint as it loaded


def _counting_reads(monkeypatch) -> list[str]:
    """The tables table_parts.load reads for the fingerprint as they load."""
    seen: list[str] = []
    real = table_parts.table_fingerprint

    def counted(conn, schema, table, algorithm):
        seen.append(table)
        return real(conn, schema, table, algorithm)

    monkeypatch.setattr(table_parts, "table_fingerprint", counted)
    return seen


@pytest.mark.parametrize("lost", ["row", "value"])
def test_a_whole_table_object_read_as_it_loads_still_fails_the_check_on_a_lost_row(
    odd, local_store, monkeypatch, lost
):
    """A whole-table object is read for the fingerprint right after its COPY (table_parts.load),
    not beside post-data: an object that lost a row, or holds a changed value, while its bytes
    are intact (so every checksum passes) is still refused before cut-over, naming the table;
    the target and the database list are as they were."""
    target, db = odd
    target = target.model_copy(update={"table_objects_from_mib": 0, "split_tables_from_mib": None})
    store = local_store()
    real_copy_out = table_parts._copy_out

    def losing(table, start, end):
        statement = real_copy_out(table, start, end)
        if table["table"] != "items":
            return statement
        if lost == "row":
            return statement.replace(" WHERE ", " WHERE id <> 7 AND ")
        return statement.replace('"name"', "CASE WHEN id = 7 THEN 'x' ELSE \"name\" END", 1)

    monkeypatch.setattr(table_parts, "_copy_out", losing)
    manifest = take_backup(target, store)
    monkeypatch.undo()
    assert all(len(t["objects"]) == 1 for t in manifest.engine["databases"][db]["table_parts"])
    exec_in(target, db, "DELETE FROM public.logs")
    changed, names = state(target, db), db_names(target)
    seen = _counting_reads(monkeypatch)

    with pytest.raises(IntegrityError, match=r"table app\.items: backup"):
        pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))

    assert "items" in seen  # read as it loaded, not only by the scan after
    assert state(target, db) == changed
    assert db_names(target) == names


def test_a_table_read_on_its_own_has_the_whole_scan_s_entry(postgres):
    """table_fingerprint gives exactly fingerprint()'s entry for an ordinary table (awkward names,
    every column type of the odd database), and nothing for what cannot be read on its own: a
    partition, a parent of inheritance before v7 (its scan read its children), a fingerprint
    before v4."""
    admin_target, db = target_for(postgres), new_name()
    make_db(admin_target, db, rows=300)
    exec_in(admin_target, db, ODD.format(db=db))
    exec_in(
        admin_target,
        db,
        """CREATE TABLE public.parted (id int) PARTITION BY HASH (id);
           CREATE TABLE public.parted_0 PARTITION OF public.parted FOR VALUES WITH (MODULUS 2, REMAINDER 0);
           CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES WITH (MODULUS 2, REMAINDER 1);
           INSERT INTO public.parted SELECT generate_series(1, 20);
           CREATE TABLE public.parent (id int);
           CREATE TABLE public.child () INHERITS (public.parent);
           INSERT INTO public.parent VALUES (1); INSERT INTO public.child VALUES (2);""",
    )
    try:
        with connect(admin_target, db, autocommit=True) as conn:
            algorithm = algorithm_for(conn)
            whole = fingerprint(conn)["tables"]
            ordinary = [("app", "items"), ("public", "logs"), ("we.ird s", 't "a",b'), ("we.ird s", "bin")]
            alone = [("we.ird s", "nocols"), ("public", "child"), ("public", "parent")]
            for schema, table in [*ordinary, *alone]:
                entry = table_fingerprint(conn, schema, table, algorithm)
                assert len(entry) == 1 and entry == {k: whole[k] for k in entry}, (schema, table)
            assert table_fingerprint(conn, "public", "parted_0", algorithm) == {}
            assert table_fingerprint(conn, "public", "parent", V6) == {}
            assert table_fingerprint(conn, "app", "items", V3) == {}
    finally:
        drop(admin_target, db)


def test_no_table_has_objects_of_its_own_when_both_thresholds_are_empty(odd, local_store):
    target, db = odd
    target = target.model_copy(update={"table_objects_from_mib": None, "split_tables_from_mib": None})
    manifest = take_backup(target, local_store())
    assert manifest.engine["databases"][db]["table_parts"] == []


def test_binary_copy_is_only_for_the_built_in_types_it_names(postgres):
    """BINARY_TYPES's fixed OIDs are the types (and their arrays) it names, on this server."""
    query = (
        "SELECT t.typname, t.oid::int, a.oid::int FROM pg_type t JOIN pg_type a ON a.oid = t.typarray "
        "WHERE t.oid = ANY(%s::oid[])"
    )
    scalars = [oid for oid, _ in table_parts.BINARY_TYPES.values()]
    with connect(target_for(postgres), "postgres") as conn:
        found = {name: (oid, array) for name, oid, array in conn.execute(query, (scalars,))}
    assert found == table_parts.BINARY_TYPES


def test_a_text_part_holding_an_end_of_data_marker_or_failing_its_copy_is_refused(postgres):
    """A text COPY stops silently at an end-of-data marker (an unescaped backslash-period, on a
    line of its own or after a row's data) and drops the rest: a part holding one is refused
    once read whole, and none of its rows stays. Escaped backslashes are data, also split over
    two chunks. A COPY the server rejects fails naming the part."""
    admin_target, db = target_for(postgres), new_name()
    make_db(admin_target, db, rows=10)
    exec_in(admin_target, db, "CREATE TABLE public.t (a int, b text)")
    settings = list(table_parts._exact("UTF8"))

    def load(chunks) -> int:
        consume = table_parts._copy_in(
            admin_target, db, settings, "COPY public.t (a, b) FROM STDIN", True, "COPY public.t", "k.copy"
        )
        exec_in(admin_target, db, "TRUNCATE public.t")
        consume(iter(chunks))
        return scalar(admin_target, db, "SELECT count(*) FROM public.t")

    try:
        assert load([b"1\tx\n2\t\\\\.\n", b"3\t\\\\.\\N\n"]) == 3
        assert load([b"1\tx\\", b"\\.\n2\t\\\\", b".\n"]) == 2  # an escape split over two chunks
        for marker in (
            [b"1\tx\n", b"\\.\n2\ty\n"],  # on its own line
            [b"1\tx\n3\tz\\", b".\n2\ty\n"],  # after a row's data, over two chunks
            [b"1\tx\n3\tz\\\\\\.\n2\ty\n"],  # after an escaped backslash
        ):
            with pytest.raises(IntegrityError, match=r"k\.copy: holds an end-of-data marker"):
                load(marker)
            assert scalar(admin_target, db, "SELECT count(*) FROM public.t") == 0
        with pytest.raises(ComponentFailed, match=r"COPY public\.t failed: .*invalid input syntax"):
            load([b"1\tx\n", b"no\tnumber\n"])

        def damaged():  # bytes the server refuses, then the check that fails at the end
            yield b"no\tnumber\n" * 100_000
            raise IntegrityError("k.copy: sha256 does not match the manifest")

        with pytest.raises(IntegrityError, match="sha256 does not match"):  # the damage, not the COPY
            load(damaged())
    finally:
        drop(admin_target, db)
