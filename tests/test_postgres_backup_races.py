"""What other sessions do while a backup runs must not change what it holds, nor make it
unrestorable. Found by an adversarial review: with large tables in parts, the main pg_dump ends
first and lets its locks go while the fingerprint still scans (and the parts are still to read):
a TRUNCATE or a table rewrite (neither is MVCC-safe) committed then emptied the table in the
backup, fingerprint included (a silent loss); and sequences, read live by the fingerprint after
its scan of the large tables, were recorded ahead of the value pg_dump saved, so with any insert
during the backup every restore of it was refused as 'behind'."""

from __future__ import annotations

import psycopg
import pytest

import tasks.components.postgres as pg
from tasks.components.postgres import table_parts
from tasks.components.postgres.common import connect
from tests.pg_helpers import db_names, drop, exec_in, new_name, scalar, target_for
from tests.test_postgres import take_backup

DDL = {
    "truncate": "TRUNCATE z_small",
    "rewrite": "ALTER TABLE z_small ALTER COLUMN v TYPE varchar(100)",  # a new relfilenode
}


@pytest.fixture(scope="module")
def busy(postgres):
    """a_big, large enough that the fingerprint still scans it when the parts start; z_small after
    it (by name); events with a bigserial that the application goes on using."""
    admin_target, name = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {name}")
    exec_in(
        admin_target,
        name,
        """CREATE TABLE a_big (id int, pad text);
           INSERT INTO a_big SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 1500000) i;
           CREATE TABLE events (id bigserial PRIMARY KEY, what text);
           INSERT INTO events (what) SELECT 'old' FROM generate_series(1, 100);
           CREATE TABLE z_small (id int PRIMARY KEY, v text);
           INSERT INTO z_small SELECT i, md5(i::text) FROM generate_series(1, 5000) i;""",
    )
    yield admin_target, name
    drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(name)])


def _meanwhile(monkeypatch, statement, admin_target, db) -> dict:
    """Run `statement` from an application session once the main pg_dump has ended, just before
    the parts are read (the fingerprint is still scanning a_big)."""
    outcome: dict = {}
    real = table_parts.dump

    def hook(*args, **kwargs):
        with connect(admin_target, db, autocommit=True, own_settings=False) as conn:
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute(statement)
                outcome["committed"] = True
            except psycopg.errors.LockNotAvailable:
                outcome["committed"] = False  # it waits for the backup, as it waits for pg_dump
        return real(*args, **kwargs)

    monkeypatch.setattr(table_parts, "dump", hook)
    return outcome


def _restore(target, manifest, store, db) -> dict:
    copy = f"{db}_c{new_name()[-4:]}"
    report = pg.restore(
        target, manifest, store, pg.RestoreOptions(rename_to={db: copy}, include_globals=False)
    )
    assert report["databases"][copy]["fingerprint_equal"] is True
    return {"copy": copy}


@pytest.mark.parametrize(
    ("ddl", "split"),
    [("truncate", 0), ("truncate", None), ("rewrite", 0)],
    ids=["truncate-parts", "truncate", "rewrite-parts"],
)
def test_ddl_that_is_not_mvcc_safe_waits_for_the_backup(busy, local_store, monkeypatch, ddl, split):
    admin_target, db = busy
    target = admin_target.model_copy(update={"databases": [db], "split_tables_from_mib": split})
    store = local_store()
    outcome = _meanwhile(monkeypatch, DDL[ddl], admin_target, db)
    manifest = take_backup(target, store)
    monkeypatch.undo()
    assert outcome == {"committed": False}
    assert manifest.fingerprint["databases"][db]["tables"]["public.z_small"]["rows"] == 5000
    restored = _restore(target, manifest, store, db)["copy"]
    assert scalar(admin_target, restored, "SELECT count(*) FROM z_small") == 5000


def test_inserts_during_a_backup_in_parts_leave_it_restorable(busy, local_store, monkeypatch):
    admin_target, db = busy
    target = admin_target.model_copy(update={"databases": [db], "split_tables_from_mib": 0})
    store = local_store()
    outcome = _meanwhile(
        monkeypatch, "INSERT INTO events (what) SELECT 'late' FROM generate_series(1, 10)", admin_target, db
    )
    manifest = take_backup(target, store)
    monkeypatch.undo()
    assert outcome == {"committed": True}  # inserts never wait for a backup
    restored = _restore(target, manifest, store, db)["copy"]
    assert (
        scalar(admin_target, restored, "SELECT count(*) FROM events WHERE what = 'late'") == 0
    )  # after the snapshot
