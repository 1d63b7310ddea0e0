"""Restore into `<db>__restore_<ts>`, compare the fingerprint with the manifest, then cut over
(the old database is kept as `<db>__rollback_<ts>`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql
from pydantic import Field, field_validator

from blocks.postgres import PostgresTarget, check_db_name
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.postgres import load, memberships, properties
from tasks.components.postgres.common import (
    admin,
    aside_name,
    drop_database,
    engine_env,
    server_version,
    tool,
)
from tasks.components.postgres.cutover import swap
from tasks.components.postgres.dump import GLOBALS, GLOBALS_MAX
from tasks.errors import BadInput, ComponentFailed, IntegrityError, IsolationTaken, target_untouched
from tasks.models import Manifest
from tasks.proc import feed_stdin
from tasks.storage.session import read_object, verify_object

log = logging.getLogger(__name__)


class RestoreOptions(StrictOptions):
    databases: list[str] | None = Field(
        default=None, description="restore only these (default: all in the backup)"
    )
    rename_to: dict[str, str] = Field(default_factory=dict, description="backup name -> name on the target")
    include_globals: bool | None = Field(
        default=None,
        description="restore roles/tablespaces too: missing ones before the load, the rest just "
        "before the cut-over (default: when restoring every database)",
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
    from tasks.components.kubernetes import quiesce as kube  # imported only when asked for

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


def _statement_starts(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """Each line, and whether it starts outside a quoted literal or identifier: a role's comment
    or setting (`ALTER ROLE me SET search_path = '"a<newline>CREATE ROLE x;"'`, which any role may
    set on itself) spans lines, and its inner lines are text, never statements to rewrite.
    pg_dumpall writes standard_conforming_strings literals: '' and "" inside, no backslashes."""
    quote: str | None = None
    for line in lines:
        yield line, quote is None
        for i, char in enumerate(line):
            if quote is None:
                if line.startswith("--", i):
                    break  # a comment, to the end of the line
                if char in "'\"":
                    quote = char
            elif char == quote:
                quote = None  # a doubled quote opens again at the next character


def _globals_script(
    raw: bytes, user: str, tablespaces: set[str], expiring: frozenset[str] = frozenset()
) -> tuple[str, bool]:
    """Make pg_dumpall's globals re-runnable on a live server: existing roles and tablespaces
    are kept (not an error), and the connecting user's password is left as it is now. An
    existing role is put back as the backup has it: pg_dumpall leaves out what is the default (no
    connection limit, no expiry, no settings), so what was added since is reset explicitly
    (`expiring`: roles that have an expiry now; NULL cannot be given back, 'infinity' means the
    same)."""
    out, creates_tablespace = [], False
    me = _ident_forms(user)
    for line, statement in _statement_starts(raw.decode().splitlines()):
        if not statement:
            out.append(line)
            continue
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
        if alter:  # its settings follow, further down: none but those
            out.append(f"ALTER ROLE {alter[1]} RESET ALL;")
            if not re.search(r" CONNECTION LIMIT -?\d+", line):
                line = line[:-1] + " CONNECTION LIMIT -1;"
            if " VALID UNTIL '" not in line and _unquote(alter[1]) in expiring:
                line = line[:-1] + " VALID UNTIL 'infinity';"
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


def _read_globals(manifest: Manifest, store: StoreBlock) -> bytes:
    obj = manifest.object(GLOBALS)
    if obj.raw_size > GLOBALS_MAX:
        raise IntegrityError(
            f"{GLOBALS} of {manifest.id} is {obj.raw_size} bytes: too large to be roles only"
        )
    return b"".join(read_object(store, obj))


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _make_missing(target: PostgresTarget, raw: bytes) -> dict[str, list[str]]:
    """Before the load, only what it needs, and nothing that changes what is there: the backup's
    roles the server lacks, created bare (no login, password, attribute or membership: objects
    can be owned by and granted to them), and its tablespaces the server lacks. What was made is
    returned, to be dropped again if the restore fails before the cut-over."""
    made: dict[str, list[str]] = {"roles": [], "tablespaces": []}
    with admin(target) as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        for line, statement in _statement_starts(raw.decode().splitlines()):
            role = re.fullmatch(r"CREATE ROLE (.+);", line) if statement else None
            if role and _unquote(role[1]) not in roles:
                conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(_unquote(role[1]))))
                made["roles"].append(_unquote(role[1]))
            space = re.match(r'CREATE TABLESPACE (\S+|"(?:[^"]|"")+") ', line) if statement else None
            if space and _unquote(space[1]) not in spaces:
                conn.execute(line.encode())  # as pg_dumpall wrote it (its owner: made above)
                made["tablespaces"].append(_unquote(space[1]))
    return made


def _drop_made(target: PostgresTarget, made: dict[str, list[str]]) -> bool:
    """Undo _make_missing once the side databases are gone; False if something could not be."""
    if not any(made.values()):
        return True
    try:
        with admin(target) as conn:
            for space in made["tablespaces"]:
                conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(space)))
            for role in made["roles"]:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    except Exception as exc:  # the restore's own error is the one to raise
        log.warning("could not drop what this restore created (%s): %s", made, exc)
        return False
    return True


def _apply_globals(target: PostgresTarget, raw: bytes) -> dict[str, Any]:
    with admin(target) as conn:
        spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        expiring = "SELECT rolname FROM pg_roles WHERE rolvaliduntil IS NOT NULL"
        dated = frozenset(r[0] for r in conn.execute(expiring))
        lines = [line for line, start in _statement_starts(raw.decode().splitlines()) if start]
        revokes, revoked = memberships.revocations(conn, lines)
    script, has_tablespace = _globals_script(raw, target.user, spaces, dated)
    # first, in the same transaction: the backup's GRANTs below give back what it has
    script = "".join(line + "\n" for line in revokes) + script
    argv = [tool(target, "psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]
    if not has_tablespace:  # CREATE TABLESPACE cannot run inside a transaction block
        argv.append("--single-transaction")
    with engine_env(target) as env:
        feed_stdin(argv, [script.encode()], env, name="psql (globals)")
    return {
        "roles": len(re.findall(r"^DO \$klb\$ BEGIN CREATE ROLE", script, re.M)),
        "memberships_revoked": revoked,
    }


def restore_aside(
    target: PostgresTarget,
    manifest: Manifest,
    store: StoreBlock,
    db: str,
    side: str,
    no_owner: bool = False,
) -> dict[str, Any]:
    """Restore backup database `db` into a new database `side`, check its fingerprint, then put
    the recorded database properties on it (after the load: a read-only default or a short
    statement_timeout must not apply to it). Drops `side` on any failure; never touches any
    other database."""
    info = manifest.engine["databases"][db]
    obj = manifest.object(info["object"])
    post = manifest.object(info["post_data_object"]) if info.get("post_data_object") else None
    props = info.get("properties") or properties.legacy(info)
    with admin(target) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (side,)).fetchone():
            raise IsolationTaken(f"database {side!r} already exists: drop it or pick another name")
        properties.create_side(conn, side, props, no_owner)
    seconds: dict[str, float] = {}  # per phase: what a drill's RTO is made of
    try:
        if post is None:  # a backup from before post-data had its own object: all in one stream
            with _timed(seconds, "load"):
                load.load_stream(target, store, obj, db, side, no_owner, single_transaction=True)
            with _timed(seconds, "fingerprint"):
                actual = load.check_fingerprint(target, manifest, db, side)
        else:
            with load.post_data_file(store, post) as post_path:  # kilobytes: checked first
                # no --single-transaction: the side database already makes the restore all or
                # nothing (dropped on any failure), and one transaction over every table can run
                # out of lock slots (max_locks_per_transaction) on a database with many tables
                with _timed(seconds, "load"):
                    load.load_stream(target, store, obj, db, side, no_owner, single_transaction=False)
                with _timed(seconds, "fingerprint+post_data"):
                    actual = load.fingerprint_while_building(target, manifest, db, side, post_path, no_owner)
        with _timed(seconds, "materialized_views"):  # refreshed by now, in either way
            views = load.check_materialized_views(target, manifest, db, side)
        with admin(target) as conn:
            properties.apply(conn, side, props, no_owner)
    except BaseException:
        with admin(target) as conn:
            drop_database(conn, side)
        raise
    rows = sum(t["rows"] for t in actual["tables"].values())
    if views:
        log.warning("restored %s: materialized views differ from the backup: %s", db, views)
    return {
        "tables": len(actual["tables"]),
        "rows": rows,
        "fingerprint_equal": True,
        **({"materialized_views_differ": views} if views else {}),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


@contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[phase] = time.monotonic() - started


def restore(
    target: PostgresTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    plan = _plan(manifest, options)
    with_globals = options.include_globals if options.include_globals is not None else not options.databases
    # every byte checks out before anything on the server changes
    facts = manifest.engine["databases"]
    parts = ("object", "post_data_object")  # backups from before the split have no post-data
    needed = [manifest.object(facts[d][p]) for d in plan for p in parts if p in facts[d]]
    if with_globals:
        needed.insert(0, manifest.object(GLOBALS))
    changed = False  # the live server changes with the roles (globals) or at the cut-over
    made: dict[str, list[str]] = {"roles": [], "tablespaces": []}
    try:
        if with_globals or options.quiesce_namespace:  # these change the live server before the load
            for obj in needed:
                verify_object(store, obj)
        with admin(target) as conn:  # reachable, password right: before quiescing anything
            version = server_version(conn)
        report: dict[str, Any] = {"server_version": version, "databases": {}}
        sides: dict[str, str] = {}
        with _quiesced(options) as replicas:
            if replicas is not None:
                report["quiesced"] = {"namespace": options.quiesce_namespace, "replicas": replicas}
            raw = _read_globals(manifest, store) if with_globals else b""
            if with_globals:  # what the load needs; the roles as they are now stay as they are
                made = _make_missing(target, raw)
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
                if with_globals:  # the aside copies need them; nothing live was changed
                    report["globals"] = {"applied": False, "created_bare": made}
                return report
            changed = True
            if with_globals:  # every database is verified: now the roles as the backup has them
                try:
                    report["globals"] = {**_apply_globals(target, raw), "created_bare": made}
                except BaseException:
                    with admin(target) as conn:
                        for side in sides.values():
                            drop_database(conn, side)
                    raise
            _cut_over_all(target, sides, report, with_globals)
    except BaseException as exc:
        # every side database is gone; what the load needed is dropped again
        if not changed and _drop_made(target, made):
            target_untouched(exc)
        raise
    return report


def _cut_over_all(target: PostgresTarget, sides: dict[str, str], report: dict[str, Any], roles: bool) -> None:
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
                + ("; the roles were already put back as the backup has them" if roles else "")
            ) from None
        done.append(name)
