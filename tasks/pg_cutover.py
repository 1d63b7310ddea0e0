"""Cut-over: put a database in place of another by renames in one transaction.

The target name then names either the old database or the new one, never a mix; the old one
is kept under another name (for rollback) and nobody can connect to it by accident.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from psycopg import sql

from blocks.postgres import PostgresTarget
from tasks.errors import ComponentFailed, NotFound
from tasks.pg_common import admin, terminate

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30


def _exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _allow(conn, name: str, allow: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")
        )
    )


def _drain(conn, names: list[str]) -> None:
    """Terminate every session on `names` and wait until they are gone."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        for name in names:
            terminate(conn, name)
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        ).fetchone()[0]
        if not left:
            return
        if time.monotonic() > deadline:
            raise ComponentFailed(f"{left} sessions on {names} did not end within {DRAIN_SECONDS}s")
        time.sleep(0.1)


def swap(target: PostgresTarget, new: str, name: str, keep_as: str) -> dict[str, Any]:
    """Rename `new` to `name`; an existing `name` becomes `keep_as` (closed to connections)."""
    busy = {new, name, keep_as}
    admin_db = target.maintenance_db if target.maintenance_db not in busy else "template1"
    with admin(target, admin_db) as conn:
        if not _exists(conn, new):
            raise NotFound(f"database {new!r} is gone: nothing to cut over to")
        had_old = _exists(conn, name)
        if had_old:
            _allow(conn, name, False)  # no new sessions while we drain and rename
        try:
            _drain(conn, [new, name] if had_old else [new])
            with conn.transaction():
                if had_old:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(name), sql.Identifier(keep_as)
                        )
                    )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(new), sql.Identifier(name)
                    )
                )
                _allow(conn, name, True)
        except BaseException:
            if had_old:  # the renames rolled back: reopen the untouched original
                try:
                    _allow(conn, name, True)
                except Exception as exc:  # report, keep the first failure
                    log.error("could not reopen %s to connections: %s", name, exc)
            raise
    log.info(
        "cut over: %s is now %s%s", new, name, f"; the previous one is kept as {keep_as}" if had_old else ""
    )
    return {"database": name, "kept_as": keep_as if had_old else None}
