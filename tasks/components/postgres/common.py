"""PostgreSQL plumbing shared by backup, restore, drill and the rollback flows.

Connections (with errors that say what to fix) and the environment for pg_dump/pg_restore/psql,
both with the session settings the project depends on (a database's or role's own settings never
apply to our sessions); the engines' password in a private password file, names of side
databases, and the content fingerprint.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from blocks.postgres import PostgresTarget
from tasks.errors import ConfigurationError, IntegrityError, NotFound, TransientError
from tasks.proc import find_binary, private_file

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
# v3: per row, hash_record_extended over the columns (PostgreSQL 14+). A column whose type's
# equality is byte identity is hashed by its type's own hash function (no text made for it: the
# row's text was nearly all of v2's cost, measured in docs/performance.md); every other column
# by its text, in the "C" collation, as v2 did (numeric 1.0 and 1.00, float -0 and 0, json
# have equal hashes by type, and a case-insensitive collation would make 'a' hash as 'A').
FINGERPRINT_ALGORITHM = "rows+sum64(hash_record_extended(typed columns,0))/v3"
_PER_COLUMN = {FINGERPRINT_ALGORITHM}
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
# Every session we open (ours and the engines') sets what it depends on, in the startup packet,
# which outranks ALTER DATABASE/ROLE ... SET: a database with a read-only default, DateStyle
# 'SQL, DMY', a 20 ms statement_timeout, its own search_path or role must not change what we do.
# row_security=off makes a policy that would hide rows from us an error, not a silent miss.
SESSION_SETTINGS = {
    "DateStyle": "ISO,YMD",
    "IntervalStyle": "postgres",
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "default_transaction_read_only": "off",
    "search_path": "pg_catalog",
    "row_security": "off",
    # ALTER DATABASE/ROLE ... SET role = x would make us x (and a pg_dump without its rights)
    "role": "none",
}
SESSION_OPTIONS = " ".join(f"-c {k}={v}" for k, v in SESSION_SETTINGS.items())
ASIDE_RE = re.compile(
    r"^(?P<base>.+)__(?P<kind>restore|rollback|undone)_(?P<ts>\d{14})(?P<rand>[0-9a-f]{4})?$"
)
_TS = "%Y%m%d%H%M%S"


# --- secrets and errors -------------------------------------------------------------------


def _password(target: PostgresTarget) -> str | None:
    return target.password.get_secret_value() if target.password else None


def scrub(target: PostgresTarget, text: str) -> str:
    """Belt and braces: no message we raise may carry the password."""
    pw = _password(target)
    return text.replace(pw, "***") if pw else text


def _connect_error(target: PostgresTarget, dbname: str, exc: Exception, host: str, port: int) -> Exception:
    msg = scrub(target, str(exc)).strip()
    where = f"PostgreSQL at {host}:{port}"
    if "starting up" in msg or "shutting down" in msg:
        return TransientError(f"{where} is restarting")
    if "password authentication failed" in msg or "no password supplied" in msg:
        return ConfigurationError(
            f"{where} refused the password of user {target.user!r}: fix the password in the "
            "postgres target block"
        )
    if re.search(r'database ".*" does not exist', msg):
        return NotFound(
            f"database {dbname!r} does not exist on {where}: fix the target block's databases "
            "(or maintenance_db), or create it"
        )
    if re.search(r'role ".*" does not exist', msg):
        return ConfigurationError(f"user {target.user!r} does not exist on {where}: fix the target block")
    return ConfigurationError(
        f"cannot reach {where} (database {dbname!r}): {msg.splitlines()[0] if msg else exc!r}; "
        "check host, port, sslmode and that the server is running"
    )


def connect(
    target: PostgresTarget,
    dbname: str | None = None,
    autocommit: bool = False,
    host: str | None = None,
    port: int | None = None,
    own_settings: bool = True,
) -> psycopg.Connection:
    """A connection to `dbname` (default: the maintenance database) of the target's server, or of
    the server at `host`:`port` with the target's credentials (a recovered instance).
    With `own_settings` (always, in the project) the session uses SESSION_SETTINGS, whatever the
    database's or role's; False gives a session as an application would see it (tests)."""
    dbname = dbname or target.maintenance_db
    host, port = host or target.host, port or target.port
    try:
        conn = psycopg.connect(
            host=host,
            port=port,
            user=target.user,
            password=_password(target),
            dbname=dbname,
            sslmode=target.sslmode,
            connect_timeout=target.connect_timeout,
            application_name="klb",
            autocommit=autocommit,
            **({"options": SESSION_OPTIONS} if own_settings else {}),
        )
    except psycopg.OperationalError as exc:
        raise _connect_error(target, dbname, exc, host, port) from None
    return conn


@contextmanager
def admin(target: PostgresTarget, dbname: str | None = None) -> Iterator[psycopg.Connection]:
    """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction)."""
    conn = connect(target, dbname, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


# --- command-line tools -------------------------------------------------------------------


def tool(target: PostgresTarget, name: str) -> str:
    if target.bin_dir:
        return find_binary(
            name,
            [target.bin_dir],
            path=False,
            missing=f"{os.path.join(target.bin_dir, name)} is not an executable: fix bin_dir in the "
            "postgres target block",
        )
    return find_binary(name, missing=f"{name} is not installed: apt-get install postgresql-client")


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def engine_env(target: PostgresTarget, dbname: str | None = None) -> Iterator[dict[str, str | None]]:
    """libpq settings for pg_dump & co. The password is in a 0600 password file (PGPASSFILE) in a
    private directory removed on exit: never in argv, never in the environment (readable in
    /proc/<pid>/environ and inherited by every child). An inherited PGPASSWORD is removed: it
    would take precedence over the file."""
    env: dict[str, str | None] = {
        "PGHOST": target.host,
        "PGPORT": str(target.port),
        "PGUSER": target.user,
        "PGSSLMODE": target.sslmode,
        "PGCONNECT_TIMEOUT": str(target.connect_timeout),
        "PGAPPNAME": "klb",
        "PGDATABASE": dbname or target.maintenance_db,
        "PGOPTIONS": SESSION_OPTIONS,
        "PGPASSWORD": None,
    }
    pw = _password(target)
    if not pw:
        yield env
        return
    if "\n" in pw or "\r" in pw:
        raise ConfigurationError(
            "the postgres target's password contains a line break, which a libpq password file "
            "cannot hold: change the password"
        )
    line = f"*:*:*:{_pgpass_field(target.user)}:{_pgpass_field(pw)}\n"
    with private_file("pgpass", line) as path:
        yield {**env, "PGPASSFILE": path}


def conninfo_dbname(dbname: str) -> str:
    """`-d` takes a connection string: quote the name so no part of it is read as a keyword."""
    return "dbname='" + dbname.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- names of side databases --------------------------------------------------------------


def aside_name(base: str, kind: str, when: datetime | None = None) -> str:
    """`<base>__<kind>_<YYYYmmddHHMMSS><4 hex>`, with base cut so the whole fits 63 bytes."""
    suffix = f"__{kind}_{(when or datetime.now(UTC)).strftime(_TS)}{secrets.token_hex(2)}"
    raw = base.encode()[: 63 - len(suffix)]
    return raw.decode(errors="ignore") + suffix


def parse_aside(name: str) -> tuple[str, str, datetime] | None:
    match = ASIDE_RE.match(name)
    if not match:
        return None
    return match["base"], match["kind"], datetime.strptime(match["ts"], _TS).replace(tzinfo=UTC)


def same_base(database: str, base: str) -> bool:
    """Does `base` (possibly cut to fit 63 bytes) name `database`?"""
    return database == base or (len(database.encode()) > len(base.encode()) and database.startswith(base))


# --- catalog queries ----------------------------------------------------------------------


def databases(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        """SELECT d.datname, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
                  pg_get_userbyid(d.datdba), pg_database_size(d.oid), d.datallowconn,
                  coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                            WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')
           FROM pg_database d WHERE d.datname NOT IN ('template0', 'template1') ORDER BY d.datname"""
    ).fetchall()
    return {
        r[0]: {
            "encoding": r[1],
            "collate": r[2],
            "ctype": r[3],
            "owner": r[4],
            "size": r[5],
            "allow_connections": r[6],
            "settings": list(r[7]),
        }
        for r in rows
    }


def server_version(conn: psycopg.Connection) -> str:
    return conn.execute("SHOW server_version").fetchone()[0]


def fingerprint_sum(algorithm: str) -> str | None:
    """The SQL expression over `klb_r` (a table's rows) that `algorithm` names; None for one built
    per table from its columns (v3)."""
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
    """The fingerprint a new backup of this server records: v3 where the server has
    hash_record_extended (PostgreSQL 14+), v2 before."""
    return FINGERPRINT_ALGORITHM if conn.info.server_version >= 140000 else V2


def _per_column_sum(conn: psycopg.Connection, oid: int) -> sql.Composable:
    cols = conn.execute(
        """SELECT attname, atttypid FROM pg_attribute
           WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (oid,),
    ).fetchall()
    if not cols:  # no columns: the row count is all there is
        return sql.SQL("'0'")
    parts = []
    for name, typ in cols:
        col = sql.SQL("klb_r.{}").format(sql.Identifier(name))
        if typ in _TEXT_TYPES:
            parts.append(sql.SQL('{} COLLATE "C"').format(col))
        elif typ in _TYPE_HASHED:
            parts.append(col)
        else:
            parts.append(sql.SQL('{}::text COLLATE "C"').format(col))
    return sql.SQL("coalesce(sum(hash_record_extended(ROW({}), 0)), 0)::text").format(
        sql.SQL(", ").join(parts)
    )


def recorded_algorithm(fingerprint: dict[str, Any] | None) -> str:
    """The algorithm a backup's fingerprint was made with (backups before v2 did not all say)."""
    return (fingerprint or {}).get("algorithm") or "rows+sum64(md5(row::text))/v1"


def fingerprint(conn: psycopg.Connection, algorithm: str | None = None) -> dict[str, Any]:
    """Per table: row count and an order-independent checksum (sum of 64-bit row hashes).

    A sum needs no sort, so it costs one sequential scan and constant memory, and it is the same
    whatever the physical order of the rows after a restore. Sequences: last value and is_called
    (read now: sequences are not transactional, see diff_fingerprints).
    Runs in the caller's transaction, so it sees exactly that transaction's snapshot.
    """
    algorithm = algorithm or algorithm_for(conn)
    expression = fingerprint_sum(algorithm)  # a constant of this module, never input
    for stmt in _STABLE_SETTINGS:
        conn.execute(stmt)
    rels = conn.execute(
        """SELECT n.nspname, c.relname, c.relkind, c.oid FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'S')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                             AND e.objid = c.oid AND e.deptype = 'e')
           ORDER BY 1, 2"""
    ).fetchall()
    tables: dict[str, Any] = {}
    sequences: dict[str, Any] = {}
    for schema, name, kind, oid in rels:
        ident = sql.Identifier(schema, name)
        key = f"{schema}.{name}"
        if kind == "S":
            last, called = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(ident)
            ).fetchone()
            sequences[key] = {"last_value": last, "is_called": called}
            continue
        row_sum = sql.SQL(expression) if expression is not None else _per_column_sum(conn, oid)
        rows, total = conn.execute(
            sql.SQL("SELECT count(*), {} FROM {} AS klb_r").format(row_sum, ident)
        ).fetchone()
        tables[key] = {"rows": rows, "sum": total}
    return {"tables": tables, "sequences": sequences}


def fingerprint_database(target: PostgresTarget, dbname: str, algorithm: str | None = None) -> dict[str, Any]:
    conn = connect(target, dbname)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        return fingerprint(conn, algorithm)
    finally:
        conn.rollback()
        conn.close()


def diff_fingerprints(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences, empty when the restore matches the backup.

    Tables must match exactly. Sequences are outside MVCC: pg_dump reads their value when it
    reaches them, not at the snapshot, so a restored sequence may be ahead of the recorded value
    (never behind: that would hand out ids already used).
    """
    out = []
    exp, act = expected.get("tables", {}), actual.get("tables", {})
    for key in sorted(set(exp) | set(act)):
        if key not in act:
            out.append(f"table {key} missing after restore")
        elif key not in exp:
            out.append(f"table {key} not in the backup")
        elif exp[key] != act[key]:
            out.append(f"table {key}: backup {exp[key]} != restored {act[key]}")
    exp, act = expected.get("sequences", {}), actual.get("sequences", {})
    for key in sorted(set(exp) | set(act)):
        if key not in act or key not in exp:
            out.append(f"sequence {key} {'missing after restore' if key not in act else 'not in the backup'}")
        elif (act[key]["last_value"], act[key]["is_called"]) < (
            exp[key]["last_value"],
            exp[key]["is_called"],
        ):
            out.append(f"sequence {key}: restored {act[key]} is behind the backup's {exp[key]}")
    return out


def terminate(conn: psycopg.Connection, dbname: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    )


def drop_database(conn: psycopg.Connection, dbname: str) -> None:
    # a restored template database (IS_TEMPLATE true) cannot be dropped until it is not one
    if conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (dbname,)).fetchone() == (
        True,
    ):
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(dbname)))
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
