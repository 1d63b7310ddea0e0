"""Backup: `pg_dumpall --globals-only` and, per database, two `pg_dump -Fc` objects of one exported
snapshot streamed into the store: pre-data + data (the bulk), and post-data (indexes, constraints,
triggers: DDL only, kilobytes) on its own, so a restore can stream the bulk and still build the
indexes in parallel (`pg_restore -j` needs a seekable file: the small object can be one, the
bulk need not). Each with the fingerprint of the snapshot it dumped; verify reads each archive's
table of contents.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg

from blocks.postgres import PostgresTarget
from blocks.store import StoreBlock
from tasks.components.postgres import extension_tables, locks, partitions, properties, table_parts
from tasks.components.postgres.common import (
    admin,
    connect,
    conninfo_dbname,
    databases,
    dump_encoding,
    engine_env,
    parse_aside,
    server_version,
    tool,
)
from tasks.components.postgres.fingerprint import algorithm_for, fingerprint
from tasks.components.postgres.locks import lock_what_it_reads
from tasks.errors import ComponentFailed, IntegrityError, NotFound
from tasks.models import Manifest, StoredObject
from tasks.proc import feed_stdin, stream_stdout
from tasks.storage.session import BackupSession, read_object

log = logging.getLogger(__name__)
GLOBALS = "globals.sql"
GLOBALS_MAX = 64 * 1024 * 1024  # roles and tablespaces: kilobytes in practice


def _object_name(index: int, db: str) -> str:
    return f"db-{index:03d}-{re.sub(r'[^A-Za-z0-9_-]', '_', db)[:60]}.pgdump"


def post_data_name(main: str) -> str:
    """`db-000-x.pgdump` -> `db-000-x.postdata.pgdump`."""
    return main.removesuffix(".pgdump") + ".postdata.pgdump"


def _select(target: PostgresTarget, present: dict[str, dict[str, Any]]) -> list[str]:
    if target.databases:
        missing = [d for d in target.databases if d not in present]
        if missing:
            raise NotFound(
                f"database(s) {missing} not found on {target.host}:{target.port}: fix the target "
                f"block's databases (present: {sorted(present)})"
            )
        return list(target.databases)
    # everything a user owns; our own side databases and closed ones are not data to back up
    return [d for d, info in present.items() if info["allow_connections"] and parse_aside(d) is None]


def _pg_dump(
    target: PostgresTarget,
    db: str,
    snapshot: str,
    sections: list[str],
    encoding: str,
    options: list[str] = (),
) -> list[str]:
    return [
        tool(target, "pg_dump"),
        "--format=custom",
        "--compress=0",  # the store compresses (zstd), far faster than pg_dump's zlib
        f"--snapshot={snapshot}",
        f"--encoding={dump_encoding(encoding)}",
        *(f"--section={s}" for s in sections),
        *options,
        "--no-password",
        "--dbname",
        conninfo_dbname(db),
    ]


def _dump_database(
    target: PostgresTarget, db: str, encoding: str, name: str, session: BackupSession, algorithm: str
) -> tuple[dict[str, Any], datetime, StoredObject, StoredObject, list[dict[str, Any]]]:
    conn = connect(target, db)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot, taken_at = conn.execute("SELECT pg_export_snapshot(), statement_timestamp()").fetchone()
        named = locks.relations(conn)  # what the snapshot calls each relation it reads
        try:
            lock_what_it_reads(conn)  # before anything reads: no TRUNCATE or rewrite until we are done
            # sequences are read live, not in the snapshot: ours before pg_dump reads its own, so a
            # restored value (pg_dump's) is ahead of the recorded one or equal, never behind
            # (diff_fingerprints); read after the large tables' scan it was behind under any writes
            sequences = fingerprint(conn, algorithm, kinds="S")["sequences"]
        except psycopg.ProgrammingError:
            # a name gone or now another kind of relation ("does not exist", "is not a table")
            locks.explain_failure(target, db, named)
            raise
        # each name locked (a sequence, read) is the snapshot's relation: a rename or a swap
        # committed before the locks would have us read another table's rows under its name
        locks.check_same(target, db, named, "before its locks")
        # partitions whose rows may belong to another one when restored: through their root
        hashed = partitions.hashed(conn)
        large = table_parts.plan(conn, target, hashed)  # before the fingerprint takes `conn`
        # it is for every partition in the dump, so only where there are such: the others then
        # load through their root too, which routes each row back into its partition
        via_root = ["--load-via-partition-root"] if hashed else []
        with ThreadPoolExecutor(1, thread_name_prefix="pg-fingerprint") as pool:
            # the fingerprint scans the same snapshot while pg_dump streams it
            future = pool.submit(fingerprint, conn, algorithm, "rm")
            try:
                with engine_env(target, db) as env:
                    with stream_stdout(
                        _pg_dump(
                            target,
                            db,
                            snapshot,
                            ["pre-data", "data"],
                            encoding,
                            [*table_parts.exclusions(large), *via_root],
                        ),
                        env,
                        name=f"pg_dump {db}",
                    ) as out:
                        obj = session.write(name, out, meta={"database": db, "format": "custom"})
                    base = name.removesuffix(".pgdump")
                    parts = table_parts.dump(target, db, encoding, snapshot, base, large, session)
                    # the same snapshot: it stays importable while `conn` keeps its transaction
                    with stream_stdout(
                        _pg_dump(target, db, snapshot, ["post-data"], encoding),
                        env,
                        name=f"pg_dump --section=post-data {db}",
                    ) as out:
                        post = session.write(
                            post_data_name(name),
                            out,
                            meta={"database": db, "format": "custom", "section": "post-data"},
                        )
            except Exception:
                # a failed fingerprint ends the transaction whose snapshot pg_dump reads: its
                # error is the cause, pg_dump's "could not import the requested snapshot" is not
                cause = future.exception() if future.done() else None  # before our cancel below
                conn.cancel_safe()
                # a relation renamed or dropped meanwhile (not locked: a materialized view) says why
                locks.explain_failure(target, db, named)
                if isinstance(cause, psycopg.Error):
                    raise ComponentFailed(f"the fingerprint of {db!r} failed: {str(cause).strip()}") from None
                raise
            except BaseException:
                conn.cancel_safe()
                raise
            fp = {**future.result(), "sequences": sequences}
        # ALTER SCHEMA ... RENAME takes no table lock: a schema swap moved names while we read
        locks.check_same(target, db, named, "during the backup")
        return fp, taken_at.astimezone(UTC), obj, post, parts
    finally:
        if not conn.closed:
            try:
                conn.rollback()
            finally:
                conn.close()


def backup(target: PostgresTarget, session: BackupSession) -> None:
    with admin(target) as conn:
        version = server_version(conn)
        algorithm = algorithm_for(conn)
        present = databases(conn)
        # ALTER ROLE ALL SET (every role, every database): pg_dumpall --globals-only leaves it out
        every_role = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = 0 AND setrole = 0"
        ).fetchone()
    wanted = _select(target, present)
    # left out without a word would read as "backed up": say which, in the log and the manifest
    closed = sorted(
        d for d, info in present.items() if not info["allow_connections"] and parse_aside(d) is None
    )
    if closed and not target.databases:
        log.warning(
            "not backed up: %s refuse connections (ALLOW_CONNECTIONS false); pg_dump cannot read "
            "them. Allow connections, or accept that they are not in this backup",
            closed,
        )
    with (
        engine_env(target) as env,
        stream_stdout(
            [tool(target, "pg_dumpall"), "--globals-only", "--no-password", "-l", target.maintenance_db],
            env,
            name="pg_dumpall --globals-only",
        ) as out,
    ):
        session.write(GLOBALS, out, meta={"kind": "globals"})
    fingerprints: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    times = []
    for index, db in enumerate(wanted):
        name = _object_name(index, db)
        fp, taken_at, obj, post, parts = _dump_database(
            target, db, present[db]["encoding"], name, session, algorithm
        )
        with admin(target) as conn:  # after the dump: what the restored database must carry
            props = properties.read(conn, db)
            subscriptions = properties.subscriptions(conn, db)
        with connect(target, db, autocommit=True) as conn:  # and what it cannot (pg_dump's gap)
            not_dumped = extension_tables.row_counts(conn)
        fingerprints[db] = fp
        in_parts = table_parts.object_names({"table_parts": parts})
        times.append(taken_at)
        facts[db] = {
            **present[db],
            "object": name,
            # indexes, constraints, triggers; a backup without it has them in `object`
            "post_data_object": post.name,
            "snapshot_time": taken_at.isoformat(),
            # large tables' data in block-range parts, loaded in parallel (table_parts.py)
            "table_parts": parts,
            "dump_bytes": sum(o.raw_size for o in session.objects if o.name in {name, *in_parts}),
            "properties": props,
            "subscriptions": subscriptions,
            # rows of an extension's own tables, which pg_dump leaves out (extension_tables.py)
            "extension_tables": not_dumped,
        }
        log.info("dumped %s: %d tables, %d bytes", db, len(fp["tables"]), obj.raw_size)
    session.engine.update(
        {
            "server_version": version,
            "server": f"{target.host}:{target.port}",
            "format": "pg_dump custom (-Fc): pre-data+data, and post-data on its own; large tables' "
            "data as COPY parts, binary or text (table_parts); uncompressed inside; store-compressed",
            "databases": facts,
            "globals": GLOBALS,
            "every_role_settings": list(every_role[0]) if every_role else [],
            "not_backed_up": {d: "refuses connections" for d in closed} if not target.databases else {},
            # the scope it was asked for (None: every database): 'latest' of a wider scope skips it
            "selected": list(target.databases) or None,
        }
    )
    session.fingerprint = {"algorithm": algorithm, "databases": fingerprints}
    session.source_time = min(times) if times else datetime.now(UTC)


# pg_restore older than the pg_dump that wrote the archive: "unsupported version (1.16) in file
# header". A damaged header reads as nonsense (-1.-1): that is damage, this is not.
_NEWER_ARCHIVE = re.compile(r"unsupported version \(1\.\d{1,2}\) in file header")


def _list(pg_restore: str, manifest: Manifest, store: StoreBlock, db: str, name: str) -> str:
    """The archive's table of contents, read by pg_restore. The bytes it reads are the ones the
    catalog checked (sha256), so an archive it cannot parse is a broken dump: IntegrityError (the
    sweep records it damaged; 'latest' skips it), not an engine failure, which would be retried
    and leave the backup merely 'unverified'. A pg_restore too old for the archive, killed or
    timed out stays ComponentFailed: the dump may be fine."""
    try:
        return feed_stdin(
            [pg_restore, "--list"],
            read_object(store, manifest.object(name)),
            name=f"pg_restore --list {db} ({name})",
        )
    except ComponentFailed as exc:
        text = str(exc)
        if "exited with status" not in text or _NEWER_ARCHIVE.search(text):
            raise
        why = text.split("\n", 1)[-1].strip()
        raise IntegrityError(
            f"backup {manifest.id}: the dump of {db!r} ({name}) cannot be read by pg_restore ({why}): "
            "the archive is damaged; restore an older backup or take a new one"
        ) from exc


def verify(target: PostgresTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    """pg_restore reads each archive's table of contents: every fingerprinted table has data (in
    the archive or in parts, not both), and the post-data archive (where there is one) is
    readable and holds no data. The bytes of every object are the catalog's check, run first."""
    pg_restore = tool(target, "pg_restore") if target else "pg_restore"
    report = {}
    stored = {o.name for o in manifest.objects}
    for db, info in manifest.engine.get("databases", {}).items():
        toc = _list(pg_restore, manifest, store, db, info["object"])
        data_entries = sum(1 for line in toc.splitlines() if " TABLE DATA " in line)
        # the tables in parts: each part an object of this backup (whose bytes the catalog's
        # check reads), and none of their data in the archive too
        missing = [p for p in table_parts.object_names(info) if p not in stored]
        if missing:
            raise IntegrityError(
                f"backup {manifest.id}: the parts {missing} of {db!r} are not among its objects"
            )
        data_entries += table_parts.check_toc(manifest, db, info, toc)
        expected = len(manifest.fingerprint["databases"][db]["tables"]) if manifest.fingerprint else 0
        if data_entries < expected:
            raise IntegrityError(
                f"backup {manifest.id}: archive of {db!r} has data for {data_entries} tables, the "
                f"fingerprint lists {expected}: the dump is incomplete"
            )
        report[db] = {"table_data_entries": data_entries}
        if post := info.get("post_data_object"):
            post_toc = _list(pg_restore, manifest, store, db, post)
            if any(" TABLE DATA " in line for line in post_toc.splitlines()):
                raise IntegrityError(f"backup {manifest.id}: post-data archive of {db!r} holds table data")
            report[db]["post_data_entries"] = sum(
                1 for line in post_toc.splitlines() if line and not line.startswith(";")
            )
    return report
