"""PostgreSQL: logical backup with a content fingerprint; restore aside, verify, cut over.

Backup: `pg_dumpall --globals-only` (roles, tablespaces) and per database `pg_dump -Fc`
(pre-data + data, and post-data on its own: dump.py), its large tables in block-range parts
(table_parts.py), each streamed into the store. The fingerprint (rows + checksum per table,
sequence values) is computed in a REPEATABLE READ transaction whose exported snapshot
`pg_dump --snapshot` and the parts read, so it describes exactly the dumped data; each
database's database-level properties (owner, ACL, settings, role-in-database settings, locale,
...) are recorded as data (properties.py).
Restore: into `<db>__restore_<ts>` (load.py, restores.py): the bulk streams into `pg_restore`,
the parts load side by side, post-data builds while the fingerprint is compared with the
manifest; database-level properties are put on it and read back, then it is renamed in place in
one transaction; the old database is kept as `<db>__rollback_<ts>`.
"""

from __future__ import annotations

import re
from typing import Any

from blocks.postgres import PostgresTarget
from blocks.store import StoreBlock
from tasks.components.contract import target_from_env
from tasks.components.postgres import table_parts
from tasks.components.postgres.common import (
    admin,
    databases,
    drop_database,
    parse_aside,
    server_version,
)
from tasks.components.postgres.dump import GLOBALS, GLOBALS_MAX, _select, backup, verify
from tasks.components.postgres.fingerprint import fingerprint_database
from tasks.components.postgres.restores import (
    RestoreOptions,
    applies_globals,
    check_restore,
    restore,
    restore_aside,
    writes_target,
)
from tasks.errors import BadInput, IsolationTaken
from tasks.models import Manifest
from tasks.storage.session import verify_object

Target = PostgresTarget


def default_target() -> PostgresTarget:
    return target_from_env(PostgresTarget, "postgres", "KLB_POSTGRES_TARGET")  # type: ignore[return-value]


def drill(target: PostgresTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore every database of `manifest` into `drill_<id>_<db>` on the same server, compare
    fingerprints, and always drop them. Roles and production databases are not touched."""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,24}", drill_id):
        raise BadInput(f"drill id {drill_id!r}: use 1-24 letters, digits or '_'")
    checks: dict[str, Any] = {}
    created: list[str] = []
    facts = manifest.engine.get("databases", {})
    # each database's objects are checked as they stream into its side database (one read, as
    # in a restore); the rest (globals: roles are not applied in a drill) is read and checked here
    streamed = {info.get(part) for info in facts.values() for part in ("object", "post_data_object")}
    streamed |= {name for info in facts.values() for name in table_parts.object_names(info)}
    try:
        for obj in manifest.objects:
            if obj.name not in streamed:
                verify_object(store, obj)
        for index, db in enumerate(facts):
            side = f"drill_{drill_id}_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', db)}".encode()[:63].decode(
                errors="ignore"
            )
            created.append(side)  # restore_aside drops it on failure; this drops it after a success
            try:
                checks[db] = {"database": side, **restore_aside(target, manifest, store, db, side)}
            except IsolationTaken:
                created.remove(side)  # not ours: left as it is
                raise
    finally:
        with admin(target) as conn:
            for side in created:
                drop_database(conn, side)
    return {"verified": True, "checks": checks}


def drill_cleanup(target: PostgresTarget, drill_id: str) -> None:
    """Drop every `drill_<id>_*` database a crashed drill left."""
    with admin(target) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (f"drill_{drill_id}_",)
        ).fetchall()
        for (name,) in rows:
            drop_database(conn, name)


def describe_current_state(target: PostgresTarget) -> dict[str, Any]:
    with admin(target) as conn:
        version = server_version(conn)
        present = databases(conn)
    wanted = target.databases or _select(target, present)
    aside = sorted(d for d in present if parse_aside(d) is not None)
    return {
        "missing": [db for db in wanted if db not in present],
        "server": f"{target.host}:{target.port}",
        "server_version": version,
        "databases": {
            # no size: it moves with autovacuum and ANALYZE, not with the content, and a drill's
            # isolation check (this, before == after) failed on it when autovacuum ran meanwhile
            db: {
                "owner": present[db]["owner"],
                "fingerprint": fingerprint_database(target, db),
            }
            for db in wanted
            if db in present
        },
        "aside": aside,
    }


__all__ = [
    "GLOBALS",
    "GLOBALS_MAX",
    "RestoreOptions",
    "Target",
    "applies_globals",
    "backup",
    "check_restore",
    "default_target",
    "describe_current_state",
    "drill",
    "drill_cleanup",
    "restore",
    "restore_aside",
    "verify",
    "writes_target",
]
