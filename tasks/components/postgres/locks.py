"""The relations a backup reads are the ones its snapshot names.

The backup's transaction exports its snapshot, then locks what it reads. Its queries of pg_class
see the snapshot's catalog, but every statement that names a relation (LOCK TABLE, pg_dump's and
the parts' COPY, the fingerprint's scans, a sequence's read) finds it by that name in the catalog
as it is now. A rename, a swap (a -> tmp, b -> a, tmp -> b) or a drop committed between the
export and the locks therefore made the backup read b's rows as a's, in the dump and in the
fingerprint alike (so the restore verified), or fail on a bare "relation does not exist". Once
locked (ACCESS SHARE), a table can no longer be renamed or dropped, but its schema can: a schema
swap moves every name in it at any time. And a TRUNCATE or a rewrite committed before the locks
left the snapshot an empty new file (neither is MVCC-safe). So each name is checked against the
snapshot's oid (and a table's file) after the locks and again once everything is read; a
mismatch is a TransientError naming the relation, and the retry takes a new snapshot. (A swap
undone again before the end check goes unseen: known, docs/postgres.md.)
"""

from __future__ import annotations

import psycopg

from blocks.postgres import PostgresTarget
from tasks.components.postgres.common import connect
from tasks.errors import TransientError

# every table pg_dump dumps and the fingerprint reads (not an extension's own, but its
# configuration tables): quoted names, for LOCK TABLE (which takes no materialized view)
_READ = """SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
      AND (NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                       AND e.objid = c.oid AND e.deptype = 'e')
           OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY(x.extconfig)))
    ORDER BY 1"""
LOCK_BATCH = 1000

# what the backup reads by name, as the snapshot's catalog has it: tables, partitioned tables
# (their definitions), sequences, materialized views; the extension-owned ones are not read. A
# table's file too: TRUNCATE and rewrites (ALTER ... TYPE) give it a new one whose rows an older
# snapshot does not see, so committed before the locks they showed it empty to the whole backup
_NAMED = """SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.oid::int8, c.relkind,
           CASE WHEN c.relkind = 'r' THEN c.relfilenode::int8 ELSE 0 END
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'S', 'm') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
      AND (NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                       AND e.objid = c.oid AND e.deptype = 'e')
           OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY(x.extconfig)))"""
# the names whose relation is now another one, or none, or a table in another file (a fresh
# session: the current catalog)
_MOVED = """SELECT name FROM unnest(%s::text[], %s::oid[], %s::oid[]) AS s(name, oid, file)
    WHERE to_regclass(name) IS DISTINCT FROM oid
       OR (file <> 0 AND pg_relation_filenode(oid) IS DISTINCT FROM file) ORDER BY 1"""
_KINDS = {"r": "table", "p": "partitioned table", "S": "sequence", "m": "materialized view"}


def lock_what_it_reads(conn: psycopg.Connection) -> None:
    """ACCESS SHARE, in the caller's (snapshot's) transaction, on every table the fingerprint
    reads, as pg_dump locks what it dumps. TRUNCATE and table rewrites are not MVCC-safe: one
    committed after the snapshot showed the table empty to whatever read it later in that
    snapshot (the fingerprint still scanning larger tables, a large table's parts after pg_dump
    had ended and let its locks go), though it had rows in the snapshot. Held until the backup's
    transaction ends, so such DDL (and a rename or drop) waits for the backup, as it waits for
    pg_dump. Which relation each name locked is for check_same to say."""
    names = [row[0] for row in conn.execute(_READ).fetchall()]
    for i in range(0, len(names), LOCK_BATCH):
        listed = ", ".join(f"ONLY {name}" for name in names[i : i + LOCK_BATCH])
        conn.execute(f"LOCK TABLE {listed} IN ACCESS SHARE MODE")  # names quoted by the server


Named = dict[str, tuple[int, str, int]]  # quoted name -> (oid, relkind, a table's file or 0)


def relations(conn: psycopg.Connection) -> Named:
    """Each relation the backup reads, as the caller's snapshot has it."""
    return {name: (oid, kind, file) for name, oid, kind, file in conn.execute(_NAMED).fetchall()}


def moved(target: PostgresTarget, db: str, named: Named) -> list[str]:
    """The names of `named` that now lead to another relation than the snapshot's, or to none, or
    to a table whose rows are in another file."""
    if not named:
        return []
    oids, files = [v[0] for v in named.values()], [v[2] for v in named.values()]
    with connect(target, db, autocommit=True) as conn:
        rows = conn.execute(_MOVED, ([*named], oids, files)).fetchall()
    return [name for (name,) in rows]


def check_same(target: PostgresTarget, db: str, named: Named, when: str) -> None:
    """TransientError when a relation the backup reads by name is no longer the snapshot's."""
    names = moved(target, db, named)
    if names:
        listed = ", ".join(f"{_KINDS[named[n][1]]} {n}" for n in names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        raise TransientError(
            f"database {db!r}: {listed}{more} was renamed, dropped, replaced, truncated or rewritten "
            f"since the backup's snapshot ({when}): the backup would hold another relation's rows "
            "under that name, or none. "
            "This attempt is abandoned; a retry takes a new snapshot. If it keeps failing, pause the job "
            "that renames or swaps tables while the backup runs"
        )


def explain_failure(target: PostgresTarget, db: str, named: Named) -> None:
    """After the backup failed: TransientError if a relation moved meanwhile (why it failed);
    nothing if not, or if the check cannot run (the server gone): the failure says more then."""
    try:
        names = moved(target, db, named)
    except Exception:  # noqa: BLE001 - the caller raises the failure itself
        return
    if names:
        check_same(target, db, {n: named[n] for n in names}, "during the backup")
