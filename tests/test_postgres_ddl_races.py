"""DDL that renames, swaps or drops a relation while a backup starts must not put one table's
rows under another's name. Between `pg_export_snapshot()` and the backup's ACCESS SHARE locks the
snapshot's catalog still shows the old names, but every later statement (LOCK TABLE, pg_dump's
COPY, the fingerprint's scan, the parts' COPY) resolves a name in the current catalog: a swap
(a -> tmp, b -> a, tmp -> b) committed there made the backup hold b's rows as a's, and the
fingerprint agreed, so the restore verified. A schema swap is not stopped by any table lock and
is caught at the end. Each is a retryable TransientError naming the relation."""

from __future__ import annotations

import pytest

from tasks.components.postgres import dump, table_parts
from tasks.errors import TransientError, is_retryable
from tests.pg_helpers import drop, exec_in, new_name, target_for
from tests.test_postgres import take_backup

SWAPS = {
    "table_swap": "ALTER TABLE a RENAME TO tmp; ALTER TABLE b RENAME TO a; ALTER TABLE tmp RENAME TO b",
    "table_renamed": "ALTER TABLE a RENAME TO a_old",
    "table_dropped": "DROP TABLE a",
    "table_replaced": "ALTER TABLE a RENAME TO a_old; CREATE TABLE a (v text); INSERT INTO a VALUES ('new')",
    # not MVCC-safe: the new relfilenode's rows are invisible to the older snapshot (seen empty)
    "table_truncated": "TRUNCATE a",
    "table_rewritten": "ALTER TABLE a ALTER COLUMN v TYPE varchar(50)",
    "sequence_swap": "ALTER SEQUENCE s1 RENAME TO tmp; ALTER SEQUENCE s2 RENAME TO s1;"
    " ALTER SEQUENCE tmp RENAME TO s2",
    "view_swap": "ALTER MATERIALIZED VIEW m1 RENAME TO tmp; ALTER MATERIALIZED VIEW m2 RENAME TO m1;"
    " ALTER MATERIALIZED VIEW tmp RENAME TO m2",
}
NAMED = {
    "table_swap": "public.a",
    "table_renamed": "public.a",
    "table_dropped": "public.a",
    "table_replaced": "public.a",
    "table_truncated": "public.a",
    "table_rewritten": "public.a",
    "sequence_swap": "public.s1",
    "view_swap": "public.m1",
}


@pytest.fixture
def two_tables(postgres):
    admin_target, name = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {name}")
    exec_in(
        admin_target,
        name,
        """CREATE TABLE a (v text); INSERT INTO a VALUES ('a1');
           CREATE TABLE b (v text); INSERT INTO b VALUES ('b1'), ('b2');
           CREATE SEQUENCE s1; SELECT setval('s1', 10); CREATE SEQUENCE s2; SELECT setval('s2', 20);
           CREATE MATERIALIZED VIEW m1 AS SELECT 1 AS x; CREATE MATERIALIZED VIEW m2 AS SELECT 2 AS x;
           CREATE SCHEMA s_one; CREATE SCHEMA s_two;
           CREATE TABLE s_one.t (v text); INSERT INTO s_one.t VALUES ('one');
           CREATE TABLE s_two.t (v text); INSERT INTO s_two.t VALUES ('two'), ('two');""",
    )
    yield admin_target, name
    drop(admin_target, name)


def _before_locks(monkeypatch, statement: str, admin_target, db: str) -> None:
    """Commit `statement` after the backup exported its snapshot, before it takes its locks."""
    real = dump.lock_what_it_reads

    def hook(*args, **kwargs):
        exec_in(admin_target, db, statement)
        return real(*args, **kwargs)

    monkeypatch.setattr(dump, "lock_what_it_reads", hook)


@pytest.mark.parametrize("ddl", sorted(SWAPS))
def test_a_relation_renamed_swapped_or_dropped_before_the_locks_fails_the_backup_retryably(
    two_tables, local_store, monkeypatch, ddl
):
    admin_target, db = two_tables
    target = admin_target.model_copy(update={"databases": [db], "table_objects_from_mib": 0})
    _before_locks(monkeypatch, SWAPS[ddl], admin_target, db)
    with pytest.raises(TransientError) as caught:
        take_backup(target, local_store())
    assert is_retryable(caught.value)
    assert NAMED[ddl] in str(caught.value) and db in str(caught.value)


def test_a_schema_swap_during_the_backup_fails_it_retryably(two_tables, local_store, monkeypatch):
    """No table lock stops ALTER SCHEMA ... RENAME: the parts, read after it by name, would read
    the other schema's table. The check at the end sees the names moved."""
    admin_target, db = two_tables
    target = admin_target.model_copy(update={"databases": [db], "table_objects_from_mib": 0})
    real = table_parts.dump

    def hook(*args, **kwargs):
        exec_in(
            admin_target,
            db,
            "ALTER SCHEMA s_one RENAME TO tmp; ALTER SCHEMA s_two RENAME TO s_one;"
            " ALTER SCHEMA tmp RENAME TO s_two",
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(table_parts, "dump", hook)
    with pytest.raises(TransientError, match=r"s_one\.t"):
        take_backup(target, local_store())


def test_ddl_after_the_backup_leaves_it_whole(two_tables, local_store):
    """The checks pass when nothing moved: the backup holds each table's own rows."""
    admin_target, db = two_tables
    target = admin_target.model_copy(update={"databases": [db], "table_objects_from_mib": 0})
    manifest = take_backup(target, local_store())
    tables = manifest.fingerprint["databases"][db]["tables"]
    assert tables["public.a"]["rows"] == 1 and tables["s_two.t"]["rows"] == 2
