"""Cut-over: put a database in place of another by renames in one transaction.

The target name then names either the old database or the new one, never a mix; the old one
is kept under another name (for rollback) and nobody can connect to it by accident.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from blocks.postgres import PostgresTarget
from tasks.components.postgres.common import admin, terminate
from tasks.errors import ComponentFailed, NotFound

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


def swap(target: PostgresTarget, new: str, name: str, keep_as: str) -> dict[str, Any]:
    """Rename `new` to `name`; an existing `name` becomes `keep_as` (closed to connections).

    All in one transaction: until it commits nothing has changed, so a failure or a kill at
    any point leaves `name` exactly as it was. Sessions on either database are terminated in
    the transaction; RENAME itself waits (up to 5 s) for them to exit, and a client that
    reconnects in between makes us try again.
    """
    busy = {new, name, keep_as}
    # never from one of them (the current database cannot be renamed); `new` and `keep_as` are
    # aside names, so of template1 and postgres at most one is busy
    admin_db = next(d for d in (target.maintenance_db, "template1", "postgres") if d not in busy)
    deadline = time.monotonic() + DRAIN_SECONDS
    with admin(target, admin_db) as conn:
        while True:
            try:
                with conn.transaction():
                    if not _exists(conn, new):
                        raise NotFound(f"database {new!r} is gone: nothing to cut over to")
                    had_old = _exists(conn, name)
                    terminate(conn, new)
                    if had_old:
                        terminate(conn, name)
                        conn.execute(_rename(name, keep_as))
                        _allow(conn, keep_as, False)  # a kept copy nobody uses by accident
                    conn.execute(_rename(new, name))
                    _allow(conn, name, True)
                break
            except psycopg.errors.ObjectInUse as exc:
                if time.monotonic() > deadline:
                    raise ComponentFailed(
                        f"cut-over of {name!r} gave up after {DRAIN_SECONDS}s: clients keep "
                        f"reconnecting ({exc}); quiesce them (quiesce_namespace) and retry. "
                        f"{name!r} is unchanged."
                    ) from None
                log.info("sessions still on %s; retrying the cut-over", name)
                time.sleep(0.2)
        slots = logical_slots(conn, keep_as) if had_old else []  # committed: under its new name
    log.info(
        "cut over: %s is now %s%s", new, name, f"; the previous one is kept as {keep_as}" if had_old else ""
    )
    report: dict[str, Any] = {"database": name, "kept_as": keep_as if had_old else None}
    if slots:
        report["replication_slots_left_on_kept_copy"] = slots
        log.warning("%s: %s", name, slots_note(keep_as, slots))
    return report


def logical_slots(conn: psycopg.Connection, database: str) -> list[str]:
    """The logical replication slots of `database`: they belong to it, not to its name."""
    rows = conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical' AND database = %s ORDER BY 1",
        (database,),
    )
    return [r[0] for r in rows]


def slots_note(kept: str, slots: list[str]) -> str:
    """What a cut-over that leaves logical slots on the kept copy means, and what to do."""
    drops = "; ".join(f"SELECT pg_drop_replication_slot('{s}')" for s in slots)
    return (
        f"the logical replication slots {slots} stay with the kept copy {kept!r}: the restored "
        "database has none, so its subscribers stop, and the slots hold WAL on the server until "
        "dropped. Re-create the subscriptions against the restored database; once no rollback to "
        f"{kept!r} is wanted, drop them ({drops}) and cleanup_postgres_rollbacks can drop the copy"
    )


def _rename(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
