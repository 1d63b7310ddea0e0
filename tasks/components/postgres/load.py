"""Loading one database's backup into a side database, each object read once and checked as it
is read: the bulk (pre-data + data) streams into `pg_restore`; the post-data object (indexes,
constraints, triggers: DDL, kilobytes) goes to a private temporary file so `pg_restore -j` can
build them in parallel; the fingerprint of the side database is compared with the manifest's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any

from blocks.postgres import PostgresTarget
from blocks.store import StoreBlock
from tasks.components.postgres.common import connect, conninfo_dbname, engine_env, tool
from tasks.components.postgres.fingerprint import fingerprint_database, recorded_algorithm
from tasks.components.postgres.fingerprint_diff import diff_fingerprints, materialized_view_differences
from tasks.errors import IntegrityError
from tasks.models import Manifest, StoredObject
from tasks.private_files import private_dir
from tasks.proc import feed_stdin, run
from tasks.storage.session import consume_checked, read_object

# index builds at a time: pg_restore -j opens this many connections; past the cores they only
# queue (and each CREATE INDEX may add parallel maintenance workers of its own)
POST_DATA_JOBS = max(1, min(4, os.cpu_count() or 1))


def _pg_restore(target: PostgresTarget, side: str, no_owner: bool, *options: str) -> list[str]:
    argv = [
        tool(target, "pg_restore"),
        "--exit-on-error",
        *options,
        "--no-password",
        "--dbname",
        conninfo_dbname(side),
    ]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    return argv


def load_stream(
    target: PostgresTarget,
    store: StoreBlock,
    obj: StoredObject,
    db: str,
    side: str,
    no_owner: bool,
    single_transaction: bool,
) -> None:
    """The one read of the bulk object: checked as it streams, so refused before any cut-over."""
    argv = _pg_restore(target, side, no_owner, *(["--single-transaction"] if single_transaction else []))
    with engine_env(target, side) as env:
        consume_checked(
            read_object(store, obj),
            lambda s: feed_stdin(argv, s, env, name=f"pg_restore {db}"),
        )


def _write_all(fh: IO[bytes], chunks: Iterator[bytes]) -> int:
    size = 0
    for chunk in chunks:
        fh.write(chunk)
        size += len(chunk)
    return size


@contextmanager
def post_data_file(store: StoreBlock, obj: StoredObject) -> Iterator[str]:
    """The post-data object read and checked into a private file (0600 in a 0700 directory,
    removed on exit): `pg_restore -j` needs to seek in its archive, and this one is DDL only.
    Read before the bulk load, so a damaged one is refused before the long part starts."""
    with private_dir() as folder:
        path = os.path.join(folder, "post-data.pgdump")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            consume_checked(read_object(store, obj), lambda s: _write_all(fh, s))
        yield path


# an event trigger's entries in `pg_restore -l` (its comment and security label go with it)
_EVENT_TRIGGER = re.compile(r"^\d+; \d+ \d+ (?:(?:COMMENT|SECURITY LABEL) - )?EVENT TRIGGER ")


def _split_event_triggers(
    target: PostgresTarget, path: str, env: dict[str, str | None]
) -> tuple[str, str] | None:
    """List files for `pg_restore -L`: everything but the event triggers, then only them; None
    when there are none. pg_restore creates event triggers before it refreshes materialized
    views, so a DDL-audit trigger would log the restore's own REFRESH into the restored data (a
    row the backup never had), or fail it (pg_restore's search_path is empty)."""
    # `env` as every engine's: an inherited PGPASSWORD is not passed on, even to one that only reads
    toc = run([tool(target, "pg_restore"), "--list", path], env, name="pg_restore --list (post-data)")
    lines = toc.splitlines()
    events = [line for line in lines if _EVENT_TRIGGER.match(line)]
    if not events:
        return None
    folder = os.path.dirname(path)  # the post-data file's private directory
    lists = []
    for name, chosen in (
        ("rest.list", [x for x in lines if not _EVENT_TRIGGER.match(x)]),
        ("events.list", events),
    ):
        lists.append(os.path.join(folder, name))
        with open(lists[-1], "w") as fh:
            fh.write("\n".join(chosen) + "\n")
    return lists[0], lists[1]


def build_post_data(target: PostgresTarget, path: str, db: str, side: str, no_owner: bool) -> None:
    """Indexes, constraints and triggers, POST_DATA_JOBS at a time; event triggers last, when no
    DDL of the restore is left to fire them."""
    argv = _pg_restore(target, side, no_owner, f"--jobs={POST_DATA_JOBS}", "--section=post-data")
    # each job sorts its index in memory up to this, not in temporary files (default 64MB)
    with engine_env(target, side, {"maintenance_work_mem": target.restore_index_memory}) as env:
        lists = _split_event_triggers(target, path, env)
        # no timeout: an index build on a large table takes as long as it takes
        name = f"pg_restore --section=post-data {db}"
        run([*argv, *(["--use-list", lists[0]] if lists else []), path], env, timeout=None, name=name)
        if lists:
            last = _pg_restore(target, side, no_owner, "--section=post-data", "--use-list", lists[1])
            run([*last, path], env, timeout=None, name=f"pg_restore (event triggers) {db}")


# A function (or operator) not built in (an oid past FirstNormalObjectId: a user's or an
# extension's, dblink_exec too) that `{what}` depends on. A built-in one never writes to a table;
# any other may, volatile or not: one declared IMMUTABLE can still call a volatile one that logs
# into an audit table. Seeing one costs only speed (no reads beside the load or the build)
_USER_CODE = """
SELECT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass) AND d.refobjid >= 16384
      AND ({what}))"""
# what loading rows runs: CHECK constraints of tables and of domains, generated columns'
# expressions, partition keys' expressions (a row is routed by its key, or checked against its
# partition's bounds); COPY names every other column, so no default runs; triggers and rules are
# post-data, made after the rows
_ON_LOAD = _USER_CODE.format(
    what="""EXISTS (SELECT 1 FROM pg_constraint c
                   WHERE d.classid = 'pg_constraint'::regclass AND c.oid = d.objid AND c.contype = 'c')
           OR EXISTS (SELECT 1 FROM pg_class p WHERE d.classid = 'pg_class'::regclass
                      AND p.oid = d.objid AND p.relkind = 'p')
           OR EXISTS (SELECT 1 FROM pg_attrdef a JOIN pg_attribute t
                          ON t.attrelid = a.adrelid AND t.attnum = a.adnum
                      WHERE d.classid = 'pg_attrdef'::regclass AND a.oid = d.objid
                        AND t.attgenerated <> '')"""
)
# what post-data's build runs over the rows: index expressions and predicates, and constraints
# (exclusion, foreign keys) through their operators
_IN_BUILD = _USER_CODE.format(
    what="""d.classid = 'pg_constraint'::regclass
           OR EXISTS (SELECT 1 FROM pg_class i WHERE d.classid = 'pg_class'::regclass
                      AND i.oid = d.objid AND i.relkind IN ('i', 'I'))"""
)


def _runs_user_code(target: PostgresTarget, side: str, query: str) -> bool:
    with connect(target, side, autocommit=True) as conn:
        return bool(conn.execute(query).fetchone()[0])


def checks_may_write(target: PostgresTarget, side: str) -> bool:
    """Whether loading `side` (its pre-data restored) runs a user's function, which may write to
    other tables than the one being loaded. Then a table read right after its own load may still
    change: every table is compared after the whole build instead (restores.restore_aside)."""
    return _runs_user_code(target, side, _ON_LOAD)


def build_may_write(target: PostgresTarget, side: str) -> bool:
    """Whether post-data's build (done) ran a user's function over the rows: one that wrote may
    have done so after the fingerprint, which runs beside the build, had read that table."""
    return _runs_user_code(target, side, _IN_BUILD)


def _side_fingerprint(
    target: PostgresTarget, manifest: Manifest, side: str, kinds: str, read: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The side database's fingerprint by the backup's algorithm, table by table: nothing changes
    it but post-data's DDL, which runs beside the scan (fingerprint_database)."""
    algorithm = recorded_algorithm(manifest.fingerprint)
    return fingerprint_database(target, side, algorithm, kinds=kinds, table_by_table=True, read=read)


def check_fingerprint(
    target: PostgresTarget, manifest: Manifest, db: str, side: str, read: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The side database's fingerprint (heap rows and sequences only), which must equal the
    manifest's; raises IntegrityError with the differences otherwise. `read`: tables read as
    they loaded (table_parts.load), taken as they are."""
    expected = (manifest.fingerprint or {}).get("databases", {}).get(db)
    if expected is None:
        raise IntegrityError(f"backup {manifest.id} has no fingerprint for {db!r}: cannot verify the restore")
    # materialized views are not refreshed yet (post-data): check_materialized_views, after
    actual = _side_fingerprint(target, manifest, side, kinds="rS", read=read)
    diff = diff_fingerprints(expected, actual)
    if diff:
        raise IntegrityError(f"restored {db!r} does not match backup {manifest.id}: " + "; ".join(diff[:10]))
    return actual


def check_materialized_views(
    target: PostgresTarget, manifest: Manifest, db: str, side: str
) -> dict[str, str]:
    """Once post-data has refreshed them: each materialized view populated as at backup (else
    IntegrityError), and those whose rows differ from the backup's, named (see
    materialized_view_differences)."""
    expected = (manifest.fingerprint or {}).get("databases", {}).get(db, {})
    if "materialized_views" not in expected:
        return {}
    actual = _side_fingerprint(target, manifest, side, kinds="m")
    try:
        return materialized_view_differences(expected, actual)
    except IntegrityError as exc:
        raise IntegrityError(f"restored {db!r} does not match backup {manifest.id}: {exc}") from None


def refreshes_views(manifest: Manifest, db: str) -> bool:
    """Whether post-data refreshes materialized views of `db` (populated ones in the backup)."""
    views = (manifest.fingerprint or {}).get("databases", {}).get(db, {}).get("materialized_views") or {}
    return any(v.get("populated", True) for v in views.values())


def fingerprint_while_building(
    target: PostgresTarget,
    manifest: Manifest,
    db: str,
    side: str,
    post_path: str,
    no_owner: bool,
    read: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint scan (heap only) runs while post-data builds: CREATE INDEX lets it read;
    an ADD PRIMARY KEY waits for the scan of its table (each table read in a transaction of its
    own). Measured at scale 1 on 2 cores: 12.4 s for both together against 8.1 s + 7.7 s one
    after the other (docs/performance.md)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="pg-fingerprint")
    try:
        future = pool.submit(check_fingerprint, target, manifest, db, side, read)
        try:
            build_post_data(target, post_path, db, side, no_owner)
        except Exception:
            # the data's verdict first: rows that differ from the backup explain a failing build
            # (a constraint they break); only on a restore that is failing anyway
            if isinstance(found := future.exception(), IntegrityError):
                raise found from None
            raise
        return future.result()
    finally:
        # on any failure the caller drops the side database WITH (FORCE), which ends the scan
        pool.shutdown(wait=False, cancel_futures=True)
