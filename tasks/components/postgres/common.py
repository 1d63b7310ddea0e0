"""PostgreSQL plumbing shared by backup, restore, drill and the rollback flows.

Connections (with errors that say what to fix) and the environment for pg_dump/pg_restore/psql,
both with the session settings the project depends on (a database's or role's own settings never
apply to our sessions); the engines' password in a private password file, names of side
databases. The content fingerprint is in fingerprint.py.
"""

from __future__ import annotations

import hashlib
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
from tasks.errors import ConfigurationError, NotFound, TransientError
from tasks.private_files import private_file
from tasks.proc import find_binary

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
    # a database's client_encoding = LATIN1 made every name outside LATIN1 an error in our queries
    "client_encoding": "UTF8",
    # money is written and read in the session's lc_monetary: a database whose lc_monetary was
    # de_DE dumped `1.234,50 €`, which the restore (into a new database: the server's C) read
    # as another amount or refused. Dumped and loaded in one locale, it keeps its exact value
    "lc_monetary": "C",
    # neither pg_dump nor pg_restore sets it: off, a dumped '{NULL}' loaded as the string "NULL"
    "array_nulls": "on",
    # off, our own '...\\_...' patterns lost their backslash: `pg\_toast%` matched a user's schema
    # `pgxtoast` (left out of the fingerprint). pg_dump and pg_restore set it on for themselves
    "standard_conforming_strings": "on",
    # the fingerprint's keys are quote_ident's: a database's `on` made them `"public"."t"` at
    # backup and `public.t` in the side database (its settings come after the load)
    "quote_all_identifiers": "off",
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


def psql(target: PostgresTarget) -> list[str]:
    """psql as the engines run it: no psqlrc, quiet, no password prompt, stop at the first error."""
    return [tool(target, "psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def engine_env(
    target: PostgresTarget, dbname: str | None = None, settings: dict[str, str] | None = None
) -> Iterator[dict[str, str | None]]:
    """libpq settings for pg_dump & co. The password is in a 0600 password file (PGPASSFILE) in a
    private directory removed on exit: never in argv, never in the environment (readable in
    /proc/<pid>/environ and inherited by every child). An inherited PGPASSWORD is removed: it
    would take precedence over the file. `settings`: more server settings for these sessions."""
    env: dict[str, str | None] = {
        "PGHOST": target.host,
        "PGPORT": str(target.port),
        "PGUSER": target.user,
        "PGSSLMODE": target.sslmode,
        "PGCONNECT_TIMEOUT": str(target.connect_timeout),
        "PGAPPNAME": "klb",
        "PGDATABASE": dbname or target.maintenance_db,
        "PGOPTIONS": " ".join([SESSION_OPTIONS, *(f"-c {k}={v}" for k, v in (settings or {}).items())]),
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


def _aside_base(base: str, kind: str) -> str:
    """What an aside name of `kind` carries of `base`: all of it when it fits; else a cut marked
    with 8 hex of its sha256, so two long names that begin alike (`events_2024_q1`, `..._q2`
    past the room) never share kept copies."""
    room = 63 - len(f"__{kind}_") - 14 - 4
    if len(base.encode()) <= room:
        return base
    mark = "~" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return base.encode()[: room - len(mark)].decode(errors="ignore") + mark


def aside_name(base: str, kind: str, when: datetime | None = None) -> str:
    """`<base>__<kind>_<YYYYmmddHHMMSS><4 hex>`, base as _aside_base makes it fit 63 bytes."""
    suffix = f"__{kind}_{(when or datetime.now(UTC)).strftime(_TS)}{secrets.token_hex(2)}"
    return _aside_base(base, kind) + suffix


def parse_aside(name: str) -> tuple[str, str, datetime] | None:
    match = ASIDE_RE.match(name)
    if not match:
        return None
    return match["base"], match["kind"], datetime.strptime(match["ts"], _TS).replace(tzinfo=UTC)


def same_base(database: str, base: str, kind: str) -> bool:
    """Does `base`, of a `<base>__<kind>_...` name, name `database`? Only what aside_name makes of
    it counts: a mere prefix would give `app_staging` the kept copies of `app`. Names made before
    the mark were cut bare (and before the 4 random hex digits, with 4 bytes more room): still
    recognised, so copies kept by an earlier version can be rolled back to."""
    if base == _aside_base(database, kind):
        return True
    bare = 63 - len(f"__{kind}_") - 14
    return len(database.encode()) > bare - 4 and base in {
        database.encode()[:room].decode(errors="ignore") for room in (bare - 4, bare)
    }


# --- catalog queries ----------------------------------------------------------------------


def dump_encoding(encoding: str | None) -> str:
    """The client encoding a database's data is dumped and loaded in: UTF8 (every encoding
    converts to it), except for SQL_ASCII, whose bytes are in no encoding at all: converted to
    UTF8, one byte over 127 that was not UTF-8 failed the whole backup; as SQL_ASCII they pass
    as they are, both ways."""
    return "SQL_ASCII" if encoding == "SQL_ASCII" else "UTF8"


def databases(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Every database but template0 (never changed, and closed). template1 is one: what an
    operator put there (extensions, tables, grants, settings) seeds each database created later,
    and pg_dumpall keeps it; a whole-cluster backup that left it out lost it unseen."""
    rows = conn.execute(
        """SELECT d.datname, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
                  pg_get_userbyid(d.datdba), pg_database_size(d.oid), d.datallowconn,
                  coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                            WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')
           FROM pg_database d WHERE d.datname <> 'template0' ORDER BY d.datname"""
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


def terminate(conn: psycopg.Connection, dbname: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    )


def _detach_subscriptions(conn: psycopg.Connection, dbname: str) -> None:
    """DROP DATABASE refuses one that has subscriptions. Those of a database we drop (a side
    database, a drill's, a kept copy) are copies of a live one: each is disabled and detached
    from its slot first, so that dropping it never drops the slot on the publisher, which the
    live subscription (or the one a rollback brings back) goes on with."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
            " WHERE d.datname = %s",
            (dbname,),
        )
    ]
    if not names:
        return
    # a kept copy refuses connections
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
    params = {**conn.info.get_parameters(), "dbname": dbname}
    with psycopg.connect(**params, password=conn.info.password, autocommit=True) as inside:
        for name in names:
            for step in ("ALTER SUBSCRIPTION {} DISABLE", "ALTER SUBSCRIPTION {} SET (slot_name = NONE)"):
                inside.execute(sql.SQL(step).format(sql.Identifier(name)))
            inside.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(name)))


def drop_database(conn: psycopg.Connection, dbname: str) -> None:
    # a restored template database (IS_TEMPLATE true) cannot be dropped until it is not one
    if conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (dbname,)).fetchone() == (
        True,
    ):
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(dbname)))
    _detach_subscriptions(conn, dbname)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
