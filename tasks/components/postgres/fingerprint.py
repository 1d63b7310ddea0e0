"""The content fingerprint of a database: per table, the row count and an order-independent sum
of 64-bit row hashes; per sequence, its value. Taken in the dump's snapshot at backup and from the
side database at restore; the two must be equal before a restore may cut over.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from blocks.postgres import PostgresTarget
from tasks.components.postgres import partitions
from tasks.components.postgres.common import connect
from tasks.errors import IntegrityError

# Per table: row count and the sum of a 64-bit hash of each row's text. v2 hashes with
# hashtextextended (PostgreSQL's own 64-bit hash, the one hash partitioning uses): the same
# 64 bits per row as v1's truncated md5, at a fraction of the CPU, and its sum accumulates in
# 128-bit integers instead of numeric. Backups record which one they used; a restore checks
# with that one, so backups fingerprinted with v1 still verify.
_FINGERPRINT_SUMS = {
    "rows+sum64(md5(row::text))/v1": (
        "coalesce(sum(('x' || left(md5(klb_r::text), 16))::bit(64)::bigint::numeric), 0)::text"
    ),
    "rows+sum64(hashtextextended(row::text,0))/v2": (
        "coalesce(sum(hashtextextended(klb_r::text, 0)), 0)::text"
    ),
}
V2 = "rows+sum64(hashtextextended(row::text,0))/v2"
# v2 as servers before 14 record it since partitions.py: v2, and the partitions of a hierarchy with
# hash partitioning in it compared at their root, as v6 does (below); a row of those as its text
# with the columns in the root's order
V2_AT_ROOT = "rows+sum64(hashtextextended(row::text,0))/v2, hash partitions at their root"
_FINGERPRINT_SUMS[V2_AT_ROOT] = _FINGERPRINT_SUMS[V2]
# and each table's own rows only (as v7, below), what servers before 14 record since
V2_OWN_ROWS = f"{V2_AT_ROOT}, own rows"
_FINGERPRINT_SUMS[V2_OWN_ROWS] = _FINGERPRINT_SUMS[V2]
# v3: per row, hash_record_extended over the columns (PostgreSQL 14+). A column whose type's
# equality is byte identity is hashed by its type's own hash function (no text made for it: the
# row's text was nearly all of v2's cost, measured in docs/performance.md); every other column
# by its text, in the "C" collation, as v2 did (numeric 1.0 and 1.00, float -0 and 0, json
# have equal hashes by type, and a case-insensitive collation would make 'a' hash as 'A').
V3 = "rows+sum64(hash_record_extended(typed columns,0))/v3"
# v4 is v3 with two holes closed: a table's key is its quoted name (v3's `schema.name` gave
# `a."b.c"` and `"a.b".c` one key, so one of the two tables went unchecked), and a column whose
# type is (a domain over) bpchar goes by its output text: its cast to text drops trailing blanks,
# so in an unbounded bpchar 'a ' and 'a' hashed alike; and it covers large objects (below).
V4 = "rows+sum64(hash_record_extended(typed columns,0))/v4"
# v5 closes two more. hash_record_extended combines its columns linearly (h = 31 * h + column's
# hash), so v3/v4's sum over rows was only a weighted sum of per-column sums: two rows swapping an
# email, a balance or a NULL (or two large objects swapping content) left it unchanged. v5 hashes
# each row's hash again (hashtextextended of its decimal text, a full 64-bit mix), so a value
# counts with the row it is in. And int8, timestamp and timestamptz went by hashint8, which folds
# 64 bits to 32 (0 and 4294967297 hash alike): v5 hashes their 8 bytes (their binary send form).
V5 = "rows+sum64(hashtextextended(hash_record_extended(typed columns,0)::text,0))/v5"
# v6 is v5 for every table but the partitions of a hierarchy with hash partitioning in it
# (partitions.py): a row of those may be in another partition after a restore, so they are
# compared at their root (`compared_at_root`: partition -> root, recorded with the tables), and a
# row of them is hashed with its columns in the root's order (a partition attached with its
# own column order would hash a row otherwise than the partition it moves to).
V6 = "rows+sum64(hashtextextended(hash_record_extended(typed columns,0)::text,0))/v6"
# v7 is v6 with each table's own rows only (`FROM ONLY`), as pg_dump dumps them: v6's scan of a
# parent of inheritance read its children's rows too, so every child's rows counted twice and a
# row moved between a parent and its child left the parent's entry as it was.
FINGERPRINT_ALGORITHM = "rows+sum64(hashtextextended(hash_record_extended(typed columns,0)::text,0))/v7"
_MIXED = {V5, V6, FINGERPRINT_ALGORITHM}  # each row's hash hashed again (v5 and after)
_AT_ROOT = {V2_AT_ROOT, V2_OWN_ROWS, V6, FINGERPRINT_ALGORITHM}  # with `compared_at_root`
_OWN_ROWS = {V2_OWN_ROWS, FINGERPRINT_ALGORITHM}  # own rows, not its inheritance children's
_PER_COLUMN = {V3, V4, *_MIXED}
_BPCHAR = 1042
# the 8-byte types hashint8 folds, and the function that gives their bytes (v5)
_WIDE = {20: "int8send", 1114: "timestamp_send", 1184: "timestamptz_send"}
# v4 also sums large objects (pg_dump dumps them with the data; v3 and before left them out, so a
# changed or missing one went unseen): per 1 MiB piece, a hash of (oid, offset, bytes), read with
# lo_get in the caller's snapshot. Pieces, not whole objects: lo_get of one over 1 GB fails.
# {piece} is the hash of one piece: v5 mixes it as it mixes a row's.
_LARGE_OBJECTS = """
    WITH RECURSIVE piece(loid, off, data) AS (
        SELECT oid, 0::bigint, lo_get(oid, 0, 1048576) FROM pg_largeobject_metadata
        UNION ALL
        SELECT loid, off + 1048576, lo_get(loid, off + 1048576, 1048576)
        FROM piece WHERE length(data) = 1048576)
    SELECT count(*) FILTER (WHERE off = 0), coalesce(sum({piece}), 0)::text
    FROM piece"""
_PIECE = "hash_record_extended(ROW(loid, off, data), 0)"
_MIX = "hashtextextended(({})::text, 0)"
# bool, bytea, int8, int2, int4, text, oid, varchar, date, timestamp, timestamptz, uuid: exact
# type oids (a domain over one of them goes by its text); text types hashed in "C" (bytes)
_TYPE_HASHED = {16, 17, 20, 21, 23, 25, 26, 1043, 1082, 1114, 1184, 2950}
_TEXT_TYPES = {25, 1043}
# Row text must not depend on session settings, or the same rows would hash differently.
_STABLE_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
)


def fingerprint_sum(algorithm: str) -> str | None:
    """The SQL expression over `klb_r` (a table's rows) that `algorithm` names; None for one built
    per table from its columns (v3, v4)."""
    if algorithm in _PER_COLUMN:
        return None
    try:
        return _FINGERPRINT_SUMS[algorithm]
    except KeyError:
        raise IntegrityError(
            f"fingerprint algorithm {algorithm!r} is unknown to this version: restore it with the "
            f"version that made the backup (known: {sorted([*_FINGERPRINT_SUMS, *_PER_COLUMN])})"
        ) from None


def algorithm_for(conn: psycopg.Connection) -> str:
    """The fingerprint a new backup of this server records: the latest where the server has
    hash_record_extended (PostgreSQL 14+), v2 before."""
    return FINGERPRINT_ALGORITHM if conn.info.server_version >= 140000 else V2_OWN_ROWS


def _per_column_sum(conn: psycopg.Connection, oid: int, algorithm: str) -> sql.Composable:
    # each column's type, and the base type under its domains (a domain over a domain...)
    cols = conn.execute(
        """WITH RECURSIVE base(attnum, typ) AS (
               SELECT attnum, atttypid FROM pg_attribute
               WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
               UNION ALL
               SELECT b.attnum, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.typ
               WHERE t.typtype = 'd')
           SELECT a.attname, a.atttypid,
                  (SELECT b.typ FROM base b JOIN pg_type t ON t.oid = b.typ
                   WHERE b.attnum = a.attnum AND t.typtype <> 'd')
           FROM pg_attribute a
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid, oid),
    ).fetchall()
    if not cols:  # no columns: the row count is all there is
        return sql.SQL("'0'")
    parts = []
    for name, typ, base in cols:
        col = sql.SQL("klb_r.{}").format(sql.Identifier(name))
        if base == _BPCHAR and algorithm != V3:
            # its output function keeps the blanks; NULL stays NULL (both are strict)
            parts.append(sql.SQL('textin(bpcharout({})) COLLATE "C"').format(col))
        elif typ in _WIDE and algorithm in _MIXED:
            parts.append(sql.SQL("{}({})").format(sql.SQL(_WIDE[typ]), col))  # strict: NULL stays
        elif typ in _TEXT_TYPES:
            parts.append(sql.SQL('{} COLLATE "C"').format(col))
        elif typ in _TYPE_HASHED:
            parts.append(col)
        else:
            parts.append(sql.SQL('{}::text COLLATE "C"').format(col))
    row = sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))
    if algorithm in _MIXED:
        row = sql.SQL(_MIX).format(row)
    return sql.SQL("coalesce(sum({}), 0)::text").format(row)


def _columns(conn: psycopg.Connection, oid: int) -> sql.Composable:
    names = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        (oid,),
    ).fetchall()
    return sql.SQL(", ").join(sql.Identifier(name) for (name,) in names)


def recorded_algorithm(fingerprint: dict[str, Any] | None) -> str:
    """The algorithm a backup's fingerprint was made with (backups before v2 did not all say)."""
    return (fingerprint or {}).get("algorithm") or "rows+sum64(md5(row::text))/v1"


def fingerprint(
    conn: psycopg.Connection,
    algorithm: str | None = None,
    kinds: str = "rSm",
    read: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per table: row count and an order-independent checksum (sum of 64-bit row hashes).

    A sum needs no sort, so it costs one sequential scan and constant memory, and it is the same
    whatever the physical order of the rows after a restore. Sequences: last value and is_called
    (read now: sequences are not transactional, see diff_fingerprints).
    Runs in the caller's transaction, so it sees exactly that transaction's snapshot.
    `kinds`: of relations, r(tables, with the large objects), S(equences), m(aterialized views).
    `read`: tables already read by table_fingerprint (key -> rows and sum), taken as they are.
    """
    algorithm = algorithm or algorithm_for(conn)
    fingerprint_sum(algorithm)  # an algorithm this version knows
    for stmt in _STABLE_SETTINGS:
        conn.execute(stmt)
    rels = conn.execute(
        """SELECT n.nspname, c.relname, c.relkind, c.oid,
                  quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                  (SELECT x.extcondition[array_position(x.extconfig, c.oid)] FROM pg_extension x
                   WHERE c.oid = ANY(x.extconfig) AND c.relkind = 'r')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = ANY(%s)
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
             AND (NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                              AND e.objid = c.oid AND e.deptype = 'e')
                  OR (c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_extension x
                                                  WHERE c.oid = ANY(x.extconfig))))
           ORDER BY 1, 2""",
        (list(kinds),),
    ).fetchall()
    tables: dict[str, Any] = {}
    sequences: dict[str, Any] = {}
    views: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    # before v4 the key was `schema.name`, ambiguous with a dot in a name; kept for those backups
    old_keys = algorithm in _FINGERPRINT_SUMS or algorithm == V3
    # v6 (and v2 at root): partitions compared at their root, rows in its column order
    at_root = partitions.hashed(conn) if algorithm in _AT_ROOT and "r" in kinds else {}
    roots: dict[str, str] = {}
    for schema, name, kind, oid, quoted, condition in rels:
        ident = sql.Identifier(schema, name)
        key = f"{schema}.{name}" if old_keys else quoted
        if condition is not None and old_keys:
            continue  # fingerprints before v4 had no extension configuration tables
        if kind == "S":
            last, called = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(ident)
            ).fetchone()
            # its direction: what "behind" means for it (diff_fingerprints)
            step = conn.execute("SELECT seqincrement FROM pg_sequence WHERE seqrelid = %s", (oid,)).fetchone()
            sequences[key] = {"last_value": last, "is_called": called, "increment": step[0]}
            continue
        if kind == "m" and old_keys:
            continue  # fingerprints before v4 had no materialized views
        if (
            kind == "m"
            and not conn.execute("SELECT relispopulated FROM pg_class WHERE oid = %s", (oid,)).fetchone()[0]
        ):
            views[key] = {"populated": False}  # WITH NO DATA: reading it is an error
            continue
        # the root's columns are a partition's, by name: in its order a row hashes alike in each
        part = at_root.get(oid) if kind == "r" and condition is None else None
        if part:
            roots[key] = f"{part['schema']}.{part['table']}" if old_keys else part["root_key"]
        elif kind == "r" and condition is None and key in (read or {}):
            tables[key] = read[key]  # type: ignore[index]
            continue
        (views if kind == "m" else configs if condition is not None else tables)[key] = _rows_and_sum(
            conn, ident, oid, algorithm, part, condition, only=kind == "r"
        )
    out: dict[str, Any] = {"tables": tables, "sequences": sequences}
    if algorithm in _AT_ROOT and "r" in kinds:
        out["compared_at_root"] = roots
    if not old_keys and "m" in kinds:
        # pg_dump keeps no rows of a materialized view: pg_restore refreshes it, from the restored
        # tables; compared on their own (materialized_view_differences), once they are refreshed
        out["materialized_views"] = views
    if not old_keys and "r" in kinds:
        out["extension_config"] = configs  # on their own: fingerprints before had none
        piece = _MIX.format(_PIECE) if algorithm in _MIXED else _PIECE
        count, total = conn.execute(_LARGE_OBJECTS.format(piece=piece)).fetchone()
        out["large_objects"] = {"count": count, "sum": total}
    return out


def _rows_and_sum(
    conn: psycopg.Connection,
    ident: sql.Identifier,
    oid: int,
    algorithm: str,
    part: dict[str, Any] | None = None,
    condition: str | None = None,
    only: bool = True,
) -> dict[str, Any]:
    """One relation's row count and sum. `part`: a partition compared at its root (its rows
    hashed in the root's column order); `condition`: an extension configuration table's; `only`:
    a table (not a materialized view), whose own rows v7 reads."""
    expression = fingerprint_sum(algorithm)  # a constant of this module, never input
    own = only and algorithm in _OWN_ROWS
    rows_of: sql.Composable = sql.SQL("ONLY {}").format(ident) if own else ident
    if expression is None:
        row_sum: sql.Composable = _per_column_sum(conn, part["root_oid"] if part else oid, algorithm)
    else:
        row_sum = sql.SQL(expression)
        if part:
            rows_of = sql.SQL("(SELECT {} FROM ONLY {})").format(_columns(conn, part["root_oid"]), ident)
    if condition is not None:
        # an extension's configuration table (pg_extension_config_dump): pg_dump keeps the
        # rows its condition selects (the rest CREATE EXTENSION makes); the condition is the
        # extension's SQL, which pg_dump runs as it is too (without ONLY, as here)
        rows_of = sql.SQL("(SELECT * FROM {} {})").format(ident, sql.SQL(condition))
    rows, total = conn.execute(
        sql.SQL("SELECT count(*), {} FROM {} AS klb_r").format(row_sum, rows_of)
    ).fetchone()
    return {"rows": rows, "sum": total}


def table_fingerprint(conn: psycopg.Connection, schema: str, table: str, algorithm: str) -> dict[str, Any]:
    """One ordinary table's entry of fingerprint(), {key: {rows, sum}}, read now: for a restore
    that reads each table as soon as its rows are all loaded (table_parts.load), so the scan runs
    beside the other tables' loading instead of beside the index builds. Empty where the entry
    cannot be read on its own: a partition (rows may be routed into it from elsewhere, and hash
    partitions are compared at their root), a parent of inheritance before v7 (its scan reads its
    children's rows, loaded by others), or a fingerprint from before v4 (other keys)."""
    if algorithm in _FINGERPRINT_SUMS or algorithm == V3:
        return {}
    found = conn.execute(
        """SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r' AND NOT c.relispartition
             AND (%s OR NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid))""",
        (schema, table, algorithm in _OWN_ROWS),
    ).fetchone()
    if found is None:
        return {}
    for stmt in _STABLE_SETTINGS:
        conn.execute(stmt)
    return {found[1]: _rows_and_sum(conn, sql.Identifier(schema, table), found[0], algorithm)}


def fingerprint_database(
    target: PostgresTarget,
    dbname: str,
    algorithm: str | None = None,
    kinds: str = "rSm",
    table_by_table: bool = False,
    read: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`table_by_table`: each table read in a transaction of its own, its lock let go once read,
    for a database nobody writes to but a restore's own post-data build (a side database): in
    one transaction every table read stays locked to its end, and post-data's ADD PRIMARY KEY
    on any of them (ACCESS EXCLUSIVE) waits for the whole scan, holding a build job idle.
    `read`: tables already read (fingerprint)."""
    conn = connect(target, dbname, autocommit=table_by_table)
    try:
        if table_by_table:
            conn.execute("SET default_transaction_read_only = on")
        else:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        return fingerprint(conn, algorithm, kinds, read)
    finally:
        conn.rollback()
        conn.close()
