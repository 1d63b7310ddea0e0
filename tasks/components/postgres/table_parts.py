"""Tables in objects of their own: at backup, each table of at least the target's
`table_objects_from_mib` is dumped by `COPY (SELECT ... WHERE ctid >= ...) TO STDOUT` in the
dump's exported snapshot, and one of at least `split_tables_from_mib` as several block ranges
(a TID range scan each), each part its own object; `pg_dump` leaves those tables' data out. At
restore, the parts load by parallel `COPY ... FROM STDIN` sessions after the pre-data has
created the tables, before post-data builds their indexes. Through `pg_restore`'s one stream
every table would load one after the other, one core however many the server has: the parts
are what lets a restore keep up with `pg_restore -j`, for many mid-sized tables as for one
large table.

A table whose every column is of a built-in type with exact binary I/O (BINARY_EXACT) is copied
in COPY's binary format: the server neither formats nor parses its values (at scale 0.25, one
table of the bench's shape: COPY out 0.71 -> 0.46 s, COPY in 1.76 -> 0.80 s), and a float, a
timestamptz or an interval travels as its stored bits, whatever DateStyle, TimeZone or
extra_float_digits say. Any other table (a domain, an enum, xml, money, an extension's type)
is copied as text, in the same session settings both ways (SESSION_SETTINGS, plus what pg_dump
sets for exact values: the dump encoding, extra_float_digits 3, xmloption content), so every
value reads back as it was written. Either way the restore's fingerprint check compares every
row with the backup's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import psycopg

from blocks.postgres import PostgresTarget
from blocks.store import StoreBlock
from tasks.components.postgres.common import connect, conninfo_dbname, dump_encoding, engine_env, psql, scrub
from tasks.components.postgres.fingerprint import table_fingerprint
from tasks.errors import ComponentFailed, IntegrityError
from tasks.models import Manifest, StoredObject
from tasks.proc import stream_stdout
from tasks.storage.session import BackupSession, consume_checked, read_object

MIN_SERVER = 140000  # TID range scans: before 14, each part would read the whole table
MIB = 1024 * 1024
PART_BYTES = 1024 * MIB  # a split table: a part per GiB of heap at most...
MIN_PARTS, MAX_PARTS = 4, 256  # ...and at least as many as a restore's parallel sessions

# built-in types whose binary send/receive carry the stored value exactly and read no setting but
# client_encoding (for text, which _exact sets both ways): name -> (its fixed OID, its array's)
# (tests/test_postgres_table_parts.py checks them against pg_type)
BINARY_TYPES = {
    "bool": (16, 1000),
    "bytea": (17, 1001),
    "int8": (20, 1016),
    "int2": (21, 1005),
    "int4": (23, 1007),
    "text": (25, 1009),
    "oid": (26, 1028),
    "json": (114, 199),
    "float4": (700, 1021),
    "float8": (701, 1022),
    "bpchar": (1042, 1014),
    "varchar": (1043, 1015),
    "date": (1082, 1182),
    "time": (1083, 1183),
    "timestamp": (1114, 1115),
    "timestamptz": (1184, 1185),
    "interval": (1186, 1187),
    "timetz": (1266, 1270),
    "numeric": (1700, 1231),
    "uuid": (2950, 2951),
    "jsonb": (3802, 3807),
}
BINARY_EXACT = frozenset(oid for pair in BINARY_TYPES.values() for oid in pair)


def _exact(encoding: str | None) -> tuple[str, ...]:
    """pg_dump's settings for values that read back exactly, beside SESSION_SETTINGS (PGOPTIONS),
    in the database's dump encoding (common.dump_encoding), the same both ways."""
    return (
        f"SET client_encoding = '{dump_encoding(encoding)}'",
        "SET extra_float_digits = 3",
        "SET xmloption = content",
    )


# ordinary tables whose data pg_dump would dump: no temporary ones, none of an extension (its
# configuration tables are dumped with their filter) or in an extension's schema; largest first
_LARGE = """
SELECT c.oid::int8, n.nspname, c.relname, pg_relation_size(c.oid), pg_table_size(c.oid),
       array(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)::text[],
       array(SELECT a.atttypid::int8 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.deptype = 'e' AND (
      (d.classid = 'pg_class'::regclass AND d.objid = c.oid)
      OR (d.classid = 'pg_namespace'::regclass AND d.objid = n.oid)))
  AND pg_table_size(c.oid) >= %s
  -- a table with no column to copy (none, or only generated ones) stays with pg_dump
  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
              AND NOT a.attisdropped AND a.attgenerated = '')
ORDER BY 5 DESC, 2, 3
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pattern(schema: str, table: str) -> str:
    """pg_dump's pattern for exactly this table: within double quotes nothing is a wildcard."""
    return f"{_ident(schema)}.{_ident(table)}"


def plan(
    conn: psycopg.Connection, target: PostgresTarget, hashed: dict[int, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The tables to dump in parts, read in the exported snapshot's transaction (`conn`). A
    partition in `hashed` (partitions.hashed) loads through its root (`load_into`): restored, its
    rows may belong to another partition."""
    thresholds = [t for t in (target.table_objects_from_mib, target.split_tables_from_mib) if t is not None]
    if conn.info.server_version < MIN_SERVER or not thresholds:
        return []
    split = target.split_tables_from_mib
    block = int(conn.execute("SELECT current_setting('block_size')").fetchone()[0])
    tables = []
    # parts by heap blocks; their number by the table's size with its TOAST (large values
    # stored out of line are read with their rows, so block ranges share them out too)
    for oid, schema, table, heap, size, columns, types in conn.execute(
        _LARGE, (min(thresholds) * MIB,)
    ).fetchall():
        blocks = heap // block
        if split is None or size < split * MIB:
            parts = 1  # a mid-sized table: loaded beside the others, not split
        else:
            parts = max(1, min(blocks, max(MIN_PARTS, min(MAX_PARTS, math.ceil(size / PART_BYTES)))))
        step = math.ceil(blocks / parts) if blocks else 1
        # block ranges; the last is open-ended (the snapshot's rows cannot be past it, but a
        # table that grew since pg_relation_size must not lose a page to a rounding)
        starts = [i * step for i in range(parts) if i * step < max(blocks, 1)]
        tables.append({"oid": oid, "schema": schema, "table": table, "columns": columns, "starts": starts})
        if BINARY_EXACT.issuperset(types):
            tables[-1]["format"] = "binary"  # absent: text (and every backup from before binary)
        if root := (hashed or {}).get(oid):
            tables[-1]["load_into"] = {"schema": root["schema"], "table": root["table"]}
    return tables


def exclusions(tables: list[dict[str, Any]]) -> list[str]:
    """pg_dump options that leave these tables' data to their parts."""
    return [f"--exclude-table-data={_pattern(t['schema'], t['table'])}" for t in tables]


def _format(table: dict[str, Any]) -> str:
    """COPY's options for this table's parts: binary where plan() chose it, else text."""
    return " (FORMAT binary)" if table.get("format") == "binary" else ""


def _copy_out(table: dict[str, Any], start: int, end: int | None) -> str:
    columns = ", ".join(_ident(c) for c in table["columns"])
    where = f"ctid >= '({start},0)'::tid" + (f" AND ctid < '({end},0)'::tid" if end is not None else "")
    source = _pattern(table["schema"], table["table"])
    return f"COPY (SELECT {columns} FROM ONLY {source} WHERE {where}) TO STDOUT{_format(table)}"  # noqa: S608


def _psql(target: PostgresTarget, db: str, statements: list[str]) -> list[str]:
    argv = [*psql(target), "-d", conninfo_dbname(db)]
    for statement in statements:
        argv += ["-c", statement]
    return argv


def dump(
    target: PostgresTarget,
    db: str,
    encoding: str,
    snapshot: str,
    base: str,
    tables: list[dict[str, Any]],
    session: BackupSession,
) -> list[dict[str, Any]]:
    """Each table's parts, one after the other, each read in `snapshot` (its exporting transaction
    must stay open), stored as `<base>.t<i>-p<j>.copy`; returns the manifest's record of them.
    One at a time: two were no faster (scale 1: 4.30 s against 4.38 s for the whole table: the
    server's COPY sets the pace) and held two writers' upload buffers (292 MiB peak on S3)."""
    record = []
    with engine_env(target, db) as env:
        for i, table in enumerate(tables):
            starts, names = table["starts"], []
            for j, start in enumerate(starts):
                end = starts[j + 1] if j + 1 < len(starts) else None
                statements = [
                    *_exact(encoding),
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    f"SET TRANSACTION SNAPSHOT '{snapshot}'",
                    _copy_out(table, start, end),
                ]
                names.append(f"{base}.t{i:03d}-p{j:03d}.copy")
                label = f"COPY {table['schema']}.{table['table']} part {j + 1}/{len(starts)} ({db})"
                with stream_stdout(_psql(target, db, statements), env, name=label) as out:
                    meta = {
                        "database": db,
                        "format": f"copy {table.get('format', 'text')}",
                        "part_of": table["table"],
                    }
                    session.write(names[-1], out, meta=meta)
            kept = ("oid", "schema", "table", "columns", "format", "load_into")
            record.append({**{k: table[k] for k in kept if k in table}, "objects": names})
    return record


def _all_or_first_error(work: list[Callable[[], Any]], jobs: int) -> None:
    """Run `work`, `jobs` at a time; the first failure is raised once the running ones end
    (the caller then drops what they made), and nothing more is started."""
    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pg-load")
    try:
        futures = [pool.submit(job) for job in work]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
    finally:
        # nothing new starts; the running ones end with their part (a COPY into a database
        # being dropped would be left behind otherwise)
        pool.shutdown(wait=True, cancel_futures=True)


def object_names(info: dict[str, Any]) -> list[str]:
    return [name for table in info.get("table_parts", []) for name in table["objects"]]


def check_toc(manifest: Manifest, db: str, info: dict[str, Any], toc: str) -> int:
    """The main archive holds no data of a table stored in parts (it would load twice); returns
    how many tables the parts hold."""
    tables = info.get("table_parts", [])
    oids = {str(t["oid"]) for t in tables}
    for line in toc.splitlines():
        fields = line.split(" ", 5)  # "<id>; <catalog> <oid> TABLE DATA <schema> <name> <owner>"
        if len(fields) == 6 and fields[2] in oids and fields[3:5] == ["TABLE", "DATA"]:
            raise IntegrityError(
                f"backup {manifest.id}: the archive of {db!r} also holds data of a table stored in "
                "parts (it would load twice): take the backup again"
            )
    return len(tables)


def _marker(chunk: bytes, escaped: bool) -> tuple[bool, bool]:
    """Does this chunk of text COPY data hold an end-of-data marker, and does it end inside an
    escape (`escaped`: its first byte is the escaped one)? The server's own rule: a backslash
    escapes the byte after it, and a backslash escaping a period ends the COPY, silently, the
    rest dropped (PostgreSQL 15, tried: on a line of its own or after a row's data). COPY TO
    doubles every backslash of the data, so no backup holds one. Without a backslash (most
    chunks) one memchr pass; else every escaped backslash is dropped, left to right as the
    server pairs them, and what is left holds the marker or not (counting the rows loaded
    against the lines instead cost 0.27 CPU-s per 580 MiB)."""
    if escaped and chunk:
        if chunk[:1] == b".":
            return True, False
        chunk = chunk[1:]
    if chunk.find(b"\\") < 0:
        return False, False
    rest = chunk.replace(b"\\\\", b"")
    return b"\\." in rest, rest.endswith(b"\\")


def _copy_in(
    target: PostgresTarget, side: str, statements: list[str], copy_in: str, text: bool, label: str, key: str
) -> Callable[[Iterator[bytes]], None]:
    """Feed a part's checked stream to `copy_in` in a session of our own (connect: the password
    never leaves this process; SESSION_SETTINGS as psql had them through PGOPTIONS), after
    `statements` (_exact). In this process, not through a `psql` per part: no process to start,
    no pipe to copy every byte through (docs/performance.md). A failed check raises from the
    stream inside the COPY, which then ends with CopyFail: the server keeps none of its rows."""

    def consume(stream: Iterator[bytes]) -> None:
        marker = escaped = False
        try:
            with connect(target, side, autocommit=True) as conn:
                for statement in statements:
                    conn.execute(statement)
                with conn.cursor().copy(copy_in) as copy:
                    for chunk in stream:
                        copy.write(memoryview(chunk))  # sent in slices: no copy of each
                        if text and not marker:
                            marker, escaped = _marker(chunk, escaped)
                    # the whole object read and checked (psql's read_all), the COPY still open:
                    # a text part the server would have cut short at a marker is refused whole
                    if marker:
                        raise IntegrityError(
                            f"{key}: holds an end-of-data marker (a COPY would load part of it)"
                        )
        except psycopg.Error as exc:
            raise ComponentFailed(f"{label} failed: {scrub(target, str(exc)).strip()}") from None

    return consume


def load(
    target: PostgresTarget,
    store: StoreBlock,
    manifest: Manifest,
    info: dict[str, Any],
    db: str,
    side: str,
    jobs: int,
    fingerprint_with: str | None = None,
) -> dict[str, Any]:
    """Every part into `side` (its tables made by pre-data, empty), `jobs` COPY sessions at a
    time, each part checked as it streams; after the first failure no other part starts (the
    caller then drops `side`). With `fingerprint_with` (an algorithm), a table in one object
    loaded into itself is read for the fingerprint right after its COPY, in the same job: it then
    holds exactly that object's rows, and nothing but post-data's DDL comes after. Returns those
    tables' fingerprint entries (fingerprint.table_fingerprint)."""
    work: list[tuple[dict[str, Any], StoredObject]] = [
        (table, manifest.object(name)) for table in info.get("table_parts", []) for name in table["objects"]
    ]
    read: dict[str, Any] = {}
    if not work:
        return read

    def one(table: dict[str, Any], obj: StoredObject) -> Callable[[], None]:
        columns = ", ".join(_ident(c) for c in table["columns"])
        # a partition whose rows may belong to another one here: its root routes them (its
        # columns are the partition's, by name); recorded since partitions.py, else the table
        into = table.get("load_into") or table
        copy_in = f"COPY {_pattern(into['schema'], into['table'])} ({columns}) FROM STDIN{_format(table)}"
        label = f"COPY {table['schema']}.{table['table']} ({obj.name}, {db})"
        text = table.get("format") != "binary"
        consume = _copy_in(target, side, list(_exact(info.get("encoding"))), copy_in, text, label, obj.key)
        whole = len(table["objects"]) == 1 and "load_into" not in table

        def job() -> None:
            # the whole object is read and checked before the COPY ends, and even if it failed
            consume_checked(read_object(store, obj), consume)
            if whole and (algorithm := fingerprint_with) is not None:
                with connect(target, side, autocommit=True) as conn:
                    conn.execute("SET default_transaction_read_only = on")
                    read.update(table_fingerprint(conn, table["schema"], table["table"], algorithm))

        return job

    _all_or_first_error([one(table, obj) for table, obj in work], jobs)
    return read
