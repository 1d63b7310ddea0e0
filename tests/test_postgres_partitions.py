"""Hash-partitioned tables come back whole. A hash partition is chosen by the hash of the key,
and an enum's hash is its value's OID, which a restore makes anew: restored, a row belongs to
another partition than it was dumped from. Loaded into its partition (pg_dump's COPY into each
leaf, the parts' COPY), it broke the partition constraint, so every such backup verified and
none restored. Such hierarchies now load through their root, and their rows are compared at
the root: every row back, whichever partition it now lives in."""

from __future__ import annotations

import pytest

import tasks.components.postgres as pg
import tasks.components.postgres.dump as pg_dump
import tasks.components.postgres.load as pg_load
from tasks.components.postgres.common import connect, engine_env, tool
from tasks.components.postgres.fingerprint import (
    FINGERPRINT_ALGORITHM,
    V2_AT_ROOT,
    V5,
    fingerprint_database,
)
from tasks.components.postgres.fingerprint_diff import diff_fingerprints
from tasks.errors import IntegrityError
from tasks.proc import feed_stdin, run
from tasks.storage.session import read_object
from tests.pg_helpers import db_names, drop, dump_lines, exec_in, new_name, target_for
from tests.test_postgres import take_backup
from tests.test_postgres_roundtrip import _cluster

LABELS = ", ".join(f"'{chr(ord('a') + i)}'" for i in range(12))
SCHEMA = f"""
CREATE TYPE mood AS ENUM ({LABELS});
-- hash on an enum; one partition with its own column order, one partitioned again (by range)
CREATE TABLE t (m mood, v int, note text) PARTITION BY HASH (m);
CREATE TABLE t0 PARTITION OF t FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE t1 (note text, v int, m mood);
ALTER TABLE t ATTACH PARTITION t1 FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE t2 PARTITION OF t FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE t3 PARTITION OF t FOR VALUES WITH (MODULUS 4, REMAINDER 3) PARTITION BY RANGE (v);
CREATE TABLE t3a PARTITION OF t3 FOR VALUES FROM (MINVALUE) TO (1500);
CREATE TABLE t3b PARTITION OF t3 FOR VALUES FROM (1500) TO (MAXVALUE);
INSERT INTO t SELECT (enum_range(NULL::mood))[1 + i % 12], i, md5(i::text) FROM generate_series(1, 3000) i;
-- range on top, and below it hash on an array of enums (its hash is its elements' OIDs)
CREATE TABLE s (k int, tags mood[]) PARTITION BY RANGE (k);
CREATE TABLE s_lo PARTITION OF s FOR VALUES FROM (0) TO (100) PARTITION BY HASH (tags);
CREATE TABLE s_lo0 PARTITION OF s_lo FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE s_lo1 PARTITION OF s_lo FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE s_hi PARTITION OF s FOR VALUES FROM (100) TO (200);
INSERT INTO s SELECT i % 200, ARRAY[(enum_range(NULL::mood))[1 + i % 12], (enum_range(NULL::mood))[1 + i % 7]]
FROM generate_series(1, 1000) i;
-- range partitioning alone: each row's partition is the same after a restore
CREATE TABLE r (id int, x text) PARTITION BY RANGE (id);
CREATE TABLE r1 PARTITION OF r FOR VALUES FROM (0) TO (500);
CREATE TABLE r2 PARTITION OF r FOR VALUES FROM (500) TO (1000);
INSERT INTO r SELECT i, 'x' || i FROM generate_series(0, 999) i;
"""
CONTENT = {
    "t": "SELECT m::text, v, note FROM public.t ORDER BY v",
    "s": "SELECT k, tags::text FROM public.s ORDER BY 1, 2",
    "r": "SELECT id, x FROM public.r ORDER BY id",
}
AT_ROOT = {leaf: "t" for leaf in ("t0", "t1", "t2", "t3a", "t3b")} | {
    leaf: "s" for leaf in ("s_lo0", "s_lo1", "s_hi")
}
WHERE = "SELECT tableoid::regclass::text, {} FROM {} ORDER BY 2"


def _content(target, db: str) -> dict[str, list[tuple]]:
    with connect(target, db) as conn:
        return {table: conn.execute(query).fetchall() for table, query in CONTENT.items()}


def _where(target, db: str) -> list[tuple]:
    """Which partition each row of t is in."""
    with connect(target, db) as conn:
        return conn.execute(WHERE.format("v", "public.t")).fetchall()


def _schema(target, db: str) -> list[str]:
    with engine_env(target, db) as env:
        out = run([tool(target, "pg_dump"), "--no-password", "-s", "-d", f"dbname={db}"], env, name="pg_dump")
    return dump_lines(out)


@pytest.fixture
def hashed(postgres):
    admin_target, db = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    exec_in(admin_target, db, SCHEMA)
    yield admin_target, db
    drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(db)])


def _backup(admin_target, db: str, split, local_store, at_root=AT_ROOT):
    target = admin_target.model_copy(update={"databases": [db], "split_tables_from_mib": split})
    store = local_store()
    manifest = take_backup(target, store)
    parts = manifest.engine["databases"][db]["table_parts"]
    in_parts = {t["table"] for t in parts}
    # t's partitions loaded through the root; r's into themselves
    for table in parts:
        assert table.get("load_into") == (
            {"schema": "public", "table": at_root[table["table"]]} if table["table"] in at_root else None
        )
    # some partition of t in several parts, so parallel COPYs through the root are tested (which
    # ones depends on the enum's OIDs in this cluster: a partition that drew few labels fits in a
    # page or two, one part; of 3000 rows in 4 partitions one holds at least 750)
    assert split is None or any(len(t["objects"]) >= 2 for t in parts if t["table"].startswith("t"))
    # in parts: every leaf (however small); whole: none
    assert in_parts == (set() if split is None else {*at_root, "r1", "r2"})
    # compared at the root: the leaves under hash partitioning; r's are compared one by one
    roots = manifest.fingerprint["databases"][db]["compared_at_root"]
    assert roots == {f"public.{leaf}": f"public.{root}" for leaf, root in at_root.items()}
    return target, manifest, store


@pytest.mark.parametrize("split", [None, 0], ids=["whole", "in-parts"])
def test_a_table_hash_partitioned_on_an_enum_comes_back_whole_aside_and_in_place(hashed, local_store, split):
    admin_target, db = hashed
    content, schema = _content(admin_target, db), _schema(admin_target, db)
    target, manifest, store = _backup(admin_target, db, split, local_store)
    assert pg.verify(target, manifest, store)[db]["table_data_entries"] == 10

    copy = f"{db}_c"
    report = pg.restore(
        target, manifest, store, pg.RestoreOptions(include_globals=False, rename_to={db: copy})
    )
    assert report["databases"][copy]["fingerprint_equal"] is True
    assert _content(admin_target, copy) == content
    assert _schema(admin_target, copy) == schema
    # the enum's OIDs are new: rows did move between t's partitions (else this tests nothing)
    assert _where(admin_target, copy) != _where(admin_target, db)

    exec_in(admin_target, db, "DELETE FROM t WHERE v % 3 = 0; UPDATE s SET tags = '{}'; TRUNCATE r1")
    pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=False))
    assert _content(admin_target, db) == content
    assert _schema(admin_target, db) == schema


def test_a_table_hash_partitioned_on_an_enum_comes_back_into_another_cluster(request, hashed, local_store):
    admin_target, db = hashed
    content, schema = _content(admin_target, db), _schema(admin_target, db)
    target, manifest, store = _backup(admin_target, db, 0, local_store)
    other = target_for(_cluster(request, "pg-part"))

    pg.restore(other, manifest, store, pg.RestoreOptions(include_globals=False))

    assert _content(other, db) == content
    assert _schema(other, db) == schema


@pytest.mark.parametrize("split", [None, 0], ids=["whole", "in-parts"])
@pytest.mark.parametrize(
    "loss",
    ["DELETE FROM t WHERE v = 7", "UPDATE t SET note = 'changed' WHERE v = 8", "DELETE FROM s WHERE k = 3"],
)
def test_a_row_lost_or_changed_under_a_hash_partitioned_root_is_refused(
    hashed, local_store, monkeypatch, split, loss
):
    """The comparison at the root still sees every row: one missing or changed after the load
    (as if the backup had lost it) refuses the restore; nothing is left behind."""
    admin_target, db = hashed
    target, manifest, store = _backup(admin_target, db, split, local_store)
    real = pg_load.check_fingerprint

    def lose_a_row(target, manifest, db, side, read=None):
        exec_in(admin_target, side, loss)  # partitions: never read as they load (table_parts)
        return real(target, manifest, db, side, read)

    monkeypatch.setattr(pg_load, "check_fingerprint", lose_a_row)
    root = "public.s" if " s " in loss else "public.t"
    with pytest.raises(IntegrityError, match=rf"partitioned table {root}\b"):
        pg.restore(
            target, manifest, store, pg.RestoreOptions(include_globals=False, rename_to={db: f"{db}_c"})
        )
    assert [d for d in db_names(admin_target) if d.startswith(f"{db}_c")] == []


def _copies(target, manifest, store, db: str) -> set[str]:
    """The tables the archive's data entries COPY into."""
    obj = manifest.object(manifest.engine["databases"][db]["object"])
    out = feed_stdin(
        [tool(target, "pg_restore"), "--data-only", "-f", "-"], read_object(store, obj), name="x"
    )
    return {
        line.split(" (")[0].removeprefix("COPY ") for line in out.splitlines() if line.startswith("COPY ")
    }


def test_only_a_database_with_hash_partitioning_is_dumped_through_the_partition_roots(hashed, local_store):
    """pg_dump's --load-via-partition-root is for every partition of the dump: given only where a
    hierarchy needs it; elsewhere each partition loads into itself, as before."""
    admin_target, db = hashed
    target, manifest, store = _backup(admin_target, db, None, local_store)
    assert _copies(target, manifest, store, db) == {"public.t", "public.s", "public.r"}

    exec_in(admin_target, db, "DROP TABLE public.t, public.s")
    target, manifest, store = _backup(admin_target, db, None, local_store, at_root={})
    assert _copies(target, manifest, store, db) == {"public.r1", "public.r2"}


INT_HASH = """
CREATE TABLE h (id int, x text) PARTITION BY HASH (id);
CREATE TABLE h0 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE h1 PARTITION OF h FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO h SELECT i, 'x' || i FROM generate_series(1, 500) i;
"""


def test_a_backup_fingerprinted_before_v6_is_checked_partition_by_partition_as_before(hashed, local_store):
    """A v5 fingerprint has no `compared_at_root`: each partition is compared on its own, as
    when it was recorded (a hash on int gives every row its partition again); in v6 the same
    partitions count only at their root."""
    admin_target, db = hashed
    exec_in(admin_target, db, "DROP TABLE public.t, public.s;" + INT_HASH)
    target, manifest, store = _backup(admin_target, db, None, local_store, at_root={"h0": "h", "h1": "h"})
    v5 = fingerprint_database(admin_target, db, V5)
    assert "compared_at_root" not in v5
    old = manifest.model_copy(update={"fingerprint": {"algorithm": V5, "databases": {db: v5}}})
    report = pg.restore(
        target, old, store, pg.RestoreOptions(include_globals=False, rename_to={db: f"{db}_c"})
    )
    assert report["databases"][f"{db}_c"]["fingerprint_equal"] is True

    # the rows of h0 and h1 swapped: v5 names each partition, v6 sees the same rows under h
    for algorithm, fp in ((V5, v5), (FINGERPRINT_ALGORITHM, manifest.fingerprint["databases"][db])):
        tables = fp["tables"]
        swapped = {
            **fp,
            "tables": {**tables, "public.h0": tables["public.h1"], "public.h1": tables["public.h0"]},
        }
        diff = diff_fingerprints(swapped, fingerprint_database(admin_target, f"{db}_c", algorithm))
        assert diff == (
            []
            if algorithm == FINGERPRINT_ALGORITHM
            else [
                f"table public.h0: backup {tables['public.h1']} != restored {tables['public.h0']}",
                f"table public.h1: backup {tables['public.h0']} != restored {tables['public.h1']}",
            ]
        )


def test_servers_before_14_compare_hash_partitions_at_their_root_too(hashed, local_store, monkeypatch):
    """A server before PostgreSQL 14 has no hash_record_extended: its backups record v2, now with
    the same comparison at the root (each row's text in the root's column order)."""
    admin_target, db = hashed
    content = _content(admin_target, db)
    monkeypatch.setattr(pg_dump, "algorithm_for", lambda conn: V2_AT_ROOT)
    target, manifest, store = _backup(admin_target, db, None, local_store)
    assert manifest.fingerprint["algorithm"] == V2_AT_ROOT

    copy = f"{db}_c"
    pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=False, rename_to={db: copy}))
    assert _content(admin_target, copy) == content
    assert _where(admin_target, copy) != _where(admin_target, db)

    exec_in(admin_target, copy, "DELETE FROM t WHERE v = 7")
    diff = diff_fingerprints(
        manifest.fingerprint["databases"][db], fingerprint_database(admin_target, copy, V2_AT_ROOT)
    )
    assert len(diff) == 1 and diff[0].startswith("partitioned table public.t ")
