"""PostgreSQL: logical backup with a content fingerprint; restore aside, verify, cut over.

Backup: `pg_dumpall --globals-only` (roles, tablespaces) and one `pg_dump -Fc` per database,
each streamed into the store. The fingerprint (rows + checksum per table, sequence values) is
computed in a REPEATABLE READ transaction whose exported snapshot `pg_dump --snapshot` reads,
so it describes exactly the dumped data. Restore: into `<db>__restore_<ts>`, with
`pg_restore --exit-on-error --single-transaction`, fingerprint compared with the manifest, then
renamed in place in one transaction; the old database is kept as `<db>__rollback_<ts>`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field, field_validator

from blocks.postgres import PostgresTarget, check_db_name
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.postgres.common import (
    FINGERPRINT_ALGORITHM,
    admin,
    aside_name,
    connect,
    conninfo_dbname,
    databases,
    diff_fingerprints,
    drop_database,
    fingerprint,
    fingerprint_database,
    parse_aside,
    server_version,
    tool,
    tool_env,
)
from tasks.components.postgres.cutover import swap
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError, NotFound
from tasks.models import Manifest, StoredObject
from tasks.proc import feed_stdin, stream_stdout
from tasks.storage.session import BackupSession, read_object, verify_object

log = logging.getLogger(__name__)
Target = PostgresTarget
GLOBALS = "globals.sql"
GLOBALS_MAX = 64 * 1024 * 1024  # roles and tablespaces: kilobytes in practice


def default_target() -> PostgresTarget:
    ref = os.environ.get("KLB_POSTGRES_TARGET")
    if ref:
        try:
            return PostgresTarget.load(ref)
        except ValueError:
            raise ConfigurationError(
                f"no postgres target block named {ref!r} (from KLB_POSTGRES_TARGET)"
            ) from None
    raise ConfigurationError(
        "no postgres target: create a 'klb-postgres-target' block and pass its name, "
        "or set KLB_POSTGRES_TARGET"
    )


# --- backup --------------------------------------------------------------------------------


def _object_name(index: int, db: str) -> str:
    return f"db-{index:03d}-{re.sub(r'[^A-Za-z0-9_-]', '_', db)[:60]}.pgdump"


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


def _dump_database(
    target: PostgresTarget, db: str, name: str, session: BackupSession
) -> tuple[dict[str, Any], datetime, StoredObject]:
    conn = connect(target, db)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot, taken_at = conn.execute("SELECT pg_export_snapshot(), statement_timestamp()").fetchone()
        argv = [
            tool(target, "pg_dump"),
            "--format=custom",
            "--compress=0",  # the store compresses (zstd), far faster than pg_dump's zlib
            f"--snapshot={snapshot}",
            "--no-password",
            "--dbname",
            conninfo_dbname(db),
        ]
        with ThreadPoolExecutor(1, thread_name_prefix="pg-fingerprint") as pool:
            # the fingerprint scans the same snapshot while pg_dump streams it
            future = pool.submit(fingerprint, conn)
            try:
                with stream_stdout(argv, tool_env(target, db), name=f"pg_dump {db}") as out:
                    obj = session.write(name, out, meta={"database": db, "format": "custom"})
            except BaseException:
                conn.cancel_safe()
                raise
            fp = future.result()
        return fp, taken_at.astimezone(UTC), obj
    finally:
        if not conn.closed:
            try:
                conn.rollback()
            finally:
                conn.close()


def backup(target: PostgresTarget, session: BackupSession) -> None:
    with admin(target) as conn:
        version = server_version(conn)
        present = databases(conn)
    wanted = _select(target, present)
    with stream_stdout(
        [tool(target, "pg_dumpall"), "--globals-only", "--no-password", "-l", target.maintenance_db],
        tool_env(target),
        name="pg_dumpall --globals-only",
    ) as out:
        session.write(GLOBALS, out, meta={"kind": "globals"})
    fingerprints: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    times = []
    for index, db in enumerate(wanted):
        name = _object_name(index, db)
        fp, taken_at, obj = _dump_database(target, db, name, session)
        fingerprints[db] = fp
        times.append(taken_at)
        facts[db] = {
            **present[db],
            "object": name,
            "snapshot_time": taken_at.isoformat(),
            "dump_bytes": obj.raw_size,
        }
        log.info("dumped %s: %d tables, %d bytes", db, len(fp["tables"]), obj.raw_size)
    session.engine.update(
        {
            "server_version": version,
            "server": f"{target.host}:{target.port}",
            "format": "pg_dump custom (-Fc), uncompressed inside; store-compressed",
            "databases": facts,
            "globals": GLOBALS,
        }
    )
    session.fingerprint = {"algorithm": FINGERPRINT_ALGORITHM, "databases": fingerprints}
    session.source_time = min(times) if times else datetime.now(UTC)


# --- verify --------------------------------------------------------------------------------


def verify(target: PostgresTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    """pg_restore reads each archive's table of contents: every fingerprinted table has data."""
    pg_restore = tool(target, "pg_restore") if target else "pg_restore"
    report = {}
    for db, info in manifest.engine.get("databases", {}).items():
        toc = feed_stdin(
            [pg_restore, "--list"],
            read_object(store, manifest.object(info["object"])),
            name=f"pg_restore --list {db}",
        )
        data_entries = sum(1 for line in toc.splitlines() if " TABLE DATA " in line)
        expected = len(manifest.fingerprint["databases"][db]["tables"]) if manifest.fingerprint else 0
        if data_entries < expected:
            raise IntegrityError(
                f"backup {manifest.id}: archive of {db!r} has data for {data_entries} tables, the "
                f"fingerprint lists {expected}: the dump is incomplete"
            )
        report[db] = {"table_data_entries": data_entries}
    return report


# --- restore -------------------------------------------------------------------------------


class RestoreOptions(StrictOptions):
    databases: list[str] | None = Field(
        default=None, description="restore only these (default: all in the backup)"
    )
    rename_to: dict[str, str] = Field(default_factory=dict, description="backup name -> name on the target")
    include_globals: bool | None = Field(
        default=None, description="apply roles/tablespaces first (default: when restoring every database)"
    )
    cut_over: bool = Field(default=True, description="False: leave the verified copy aside, touch nothing")
    no_owner: bool = Field(
        default=False, description="skip ownership and grants (a server without the roles)"
    )
    quiesce_namespace: str | None = Field(
        default=None, description="scale this namespace to 0 during the restore"
    )
    kube_block: str | None = Field(default=None, description="KubernetesTarget block name for quiescing")

    @field_validator("rename_to")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            check_db_name(name)
        return value


@contextmanager
def _quiesced(options: RestoreOptions) -> Iterator[dict[str, int] | None]:
    if not options.quiesce_namespace:
        yield None
        return
    from tasks.components.kubernetes import api as kube  # issue #5; imported only when asked for

    block = None
    if options.kube_block:
        from blocks.kubernetes import KubernetesTarget

        block = KubernetesTarget.load(options.kube_block)
    with kube.quiesced(block, options.quiesce_namespace) as replicas:
        yield replicas


def _plan(manifest: Manifest, options: RestoreOptions) -> dict[str, str]:
    """backup database -> target database name; refuses anything unclear."""
    in_backup = manifest.engine.get("databases", {})
    wanted = options.databases or list(in_backup)
    unknown = [d for d in wanted if d not in in_backup]
    if unknown:
        raise BadInput(f"database(s) {unknown} are not in backup {manifest.id} (it has {sorted(in_backup)})")
    stray = [d for d in options.rename_to if d not in wanted]
    if stray:
        raise BadInput(f"rename_to names {stray}, which are not being restored ({wanted})")
    plan = {d: options.rename_to.get(d, d) for d in wanted}
    if len(set(plan.values())) != len(plan):
        raise BadInput(f"two databases would be restored to the same name: {plan}")
    if not plan:
        raise BadInput(f"backup {manifest.id} has no databases to restore")
    return plan


def _ident_forms(name: str) -> set[str]:
    return {name, '"' + name.replace('"', '""') + '"'}


def _globals_script(raw: bytes, user: str, tablespaces: set[str]) -> tuple[str, bool]:
    """Make pg_dumpall's globals re-runnable on a live server: existing roles and tablespaces
    are kept (not an error), and the connecting user's password is left as it is now."""
    out, creates_tablespace = [], False
    me = _ident_forms(user)
    for line in raw.decode().splitlines():
        role = re.fullmatch(r"CREATE ROLE (.+);", line)
        if role:
            out.append(
                f"DO $klb$ BEGIN {line} EXCEPTION WHEN duplicate_object THEN "
                f"RAISE NOTICE 'role % exists, kept', {_literal(role[1])}; END $klb$;"
            )
            continue
        alter = re.fullmatch(r"ALTER ROLE (\S+|\"(?:[^\"]|\"\")+\") WITH (.*);", line)
        if alter and alter[1] in me:
            line = re.sub(r" PASSWORD '(?:[^']|'')*'", "", line)
        space = re.match(r"CREATE TABLESPACE (\S+|\"(?:[^\"]|\"\")+\") ", line)
        if space:
            if any(space[1] in _ident_forms(t) for t in tablespaces):
                out.append(f"-- tablespace {space[1]} exists, kept")
                continue
            creates_tablespace = True
        out.append(line)
    return "\n".join(out) + "\n", creates_tablespace


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _apply_globals(target: PostgresTarget, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    obj = manifest.object(GLOBALS)
    if obj.raw_size > GLOBALS_MAX:
        raise IntegrityError(
            f"{GLOBALS} of {manifest.id} is {obj.raw_size} bytes: too large to be roles only"
        )
    raw = b"".join(read_object(store, obj))
    with admin(target) as conn:
        spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace")}
    script, has_tablespace = _globals_script(raw, target.user, spaces)
    argv = [tool(target, "psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]
    if not has_tablespace:  # CREATE TABLESPACE cannot run inside a transaction block
        argv.append("--single-transaction")
    feed_stdin(argv, [script.encode()], tool_env(target), name="psql (globals)")
    return {"roles": len(re.findall(r"^DO \$klb\$ BEGIN CREATE ROLE", script, re.M))}


def _create_side(conn, target: PostgresTarget, side: str, info: dict[str, Any], no_owner: bool) -> None:
    owner_ok = (
        not no_owner
        and info.get("owner")
        and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (info["owner"],)).fetchone()
    )
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(side))]
    if info.get("encoding"):
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(info["encoding"])))
    if info.get("collate"):
        parts.append(
            sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(info["collate"]), sql.Literal(info["ctype"])
            )
        )
    if owner_ok:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(info["owner"])))
    conn.execute(sql.SQL(" ").join(parts))
    for setting in info.get("settings", []):
        key, _, value = setting.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            log.warning("database setting %r not re-applied (unexpected name)", key)
            continue
        # list settings are stored already quoted (search_path="$user", public): keep them raw
        is_list = key in {"search_path", "temp_tablespaces"} or key.endswith("preload_libraries")
        val = sql.SQL(value) if is_list else sql.Literal(value)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(side), sql.Identifier(key), val)
        )


def restore_aside(
    target: PostgresTarget,
    manifest: Manifest,
    store: StoreBlock,
    db: str,
    side: str,
    no_owner: bool = False,
) -> dict[str, Any]:
    """Restore backup database `db` into a new database `side` and check its fingerprint.
    Drops `side` on any failure; never touches any other database."""
    info = manifest.engine["databases"][db]
    obj = manifest.object(info["object"])
    with admin(target) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (side,)).fetchone():
            raise BadInput(f"database {side!r} already exists: drop it or pick another name")
        _create_side(conn, target, side, info, no_owner)
    try:
        argv = [
            tool(target, "pg_restore"),
            "--exit-on-error",
            "--single-transaction",
            "--no-password",
            "--dbname",
            conninfo_dbname(side),
        ]
        if no_owner:
            argv += ["--no-owner", "--no-privileges"]
        feed_stdin(argv, read_object(store, obj), tool_env(target, side), name=f"pg_restore {db}")
        actual = fingerprint_database(target, side)
        expected = (manifest.fingerprint or {}).get("databases", {}).get(db)
        if expected is None:
            raise IntegrityError(
                f"backup {manifest.id} has no fingerprint for {db!r}: cannot verify the restore"
            )
        diff = diff_fingerprints(expected, actual)
        if diff:
            raise IntegrityError(
                f"restored {db!r} does not match backup {manifest.id}: " + "; ".join(diff[:10])
            )
    except BaseException:
        with admin(target) as conn:
            drop_database(conn, side)
        raise
    rows = sum(t["rows"] for t in actual["tables"].values())
    return {"tables": len(actual["tables"]), "rows": rows, "fingerprint_equal": True}


def restore(
    target: PostgresTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    plan = _plan(manifest, options)
    with_globals = options.include_globals if options.include_globals is not None else not options.databases
    # every byte checks out before anything on the server changes
    needed = [manifest.object(manifest.engine["databases"][d]["object"]) for d in plan]
    if with_globals:
        needed.insert(0, manifest.object(GLOBALS))
    for obj in needed:
        verify_object(store, obj)
    with admin(target) as conn:  # reachable, password right: before quiescing anything
        version = server_version(conn)
    report: dict[str, Any] = {"server_version": version, "databases": {}}
    sides: dict[str, str] = {}
    with _quiesced(options) as replicas:
        if replicas is not None:
            report["quiesced"] = {"namespace": options.quiesce_namespace, "replicas": replicas}
        if with_globals:
            report["globals"] = _apply_globals(target, manifest, store)
        try:
            for db, name in plan.items():
                side = aside_name(name, "restore")
                report["databases"][name] = {
                    "from": db,
                    **restore_aside(target, manifest, store, db, side, options.no_owner),
                }
                sides[name] = side
        except BaseException:
            with admin(target) as conn:
                for side in sides.values():
                    drop_database(conn, side)
            raise
        if not options.cut_over:
            for name, side in sides.items():
                report["databases"][name]["restored_aside_as"] = side
            return report
        _cut_over_all(target, sides, report)
    return report


def _cut_over_all(target: PostgresTarget, sides: dict[str, str], report: dict[str, Any]) -> None:
    """Each database is swapped atomically; if one swap fails, say exactly where things stand."""
    done: list[str] = []
    for name, side in sides.items():
        try:
            report["databases"][name].update(swap(target, side, name, aside_name(name, "rollback")))
        except Exception as exc:
            left = {n: s for n, s in sides.items() if n not in done}
            raise ComponentFailed(
                f"cut-over of {name!r} failed ({exc}); already cut over: {done or 'none'} (undo each "
                f"with rollback_postgres); verified copies left aside, not in use: {left}"
            ) from None
        done.append(name)


# --- drill and state -----------------------------------------------------------------------


def drill(target: PostgresTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore every database of `manifest` into `drill_<id>_<db>` on the same server, compare
    fingerprints, and always drop them. Roles and production databases are not touched."""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,24}", drill_id):
        raise BadInput(f"drill id {drill_id!r}: use 1-24 letters, digits or '_'")
    checks: dict[str, Any] = {}
    created: list[str] = []
    try:
        for obj in manifest.objects:
            verify_object(store, obj)
        for index, db in enumerate(manifest.engine.get("databases", {})):
            side = f"drill_{drill_id}_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', db)}".encode()[:63].decode(
                errors="ignore"
            )
            created.append(side)
            checks[db] = {"database": side, **restore_aside(target, manifest, store, db, side)}
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
            db: {
                "size": present[db]["size"],
                "owner": present[db]["owner"],
                "fingerprint": fingerprint_database(target, db),
            }
            for db in wanted
            if db in present
        },
        "aside": aside,
    }


__all__ = [
    "Target",
    "RestoreOptions",
    "default_target",
    "backup",
    "verify",
    "restore",
    "restore_aside",
    "drill",
    "describe_current_state",
]
