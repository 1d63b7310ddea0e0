"""The backup's globals (roles, tablespaces) on a live server: the roles and tablespaces a load
needs made bare before it (and dropped again if the restore fails before the cut-over), then,
once every database is verified, pg_dumpall's globals made re-runnable and applied, with the
role memberships given since the backup revoked first (memberships.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from blocks.postgres import PostgresTarget
from blocks.store import StoreBlock
from tasks.components.postgres import memberships, properties, shared_acls
from tasks.components.postgres.common import admin, engine_env, psql
from tasks.components.postgres.dump import GLOBALS, GLOBALS_MAX
from tasks.errors import IntegrityError
from tasks.models import Manifest
from tasks.proc import feed_stdin
from tasks.storage.session import read_object

log = logging.getLogger(__name__)
# the comment of a role make_missing created bare, until the globals are applied
BARE_MARK = "klb: made bare for a restore's load; dropped if that restore does not cut over"


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
    connection limit, no expiry, no settings, no password, no comment), so what was added since
    is reset explicitly (`expiring`: roles that have an expiry now; NULL cannot be given back,
    'infinity' means the same). A role's comment follows its ALTER ROLE in pg_dumpall's output."""
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
            if alter[1] not in me and " PASSWORD '" not in line:
                line = line[:-1] + " PASSWORD NULL;"
            out.append(line)
            line = f"COMMENT ON ROLE {alter[1]} IS NULL;"  # also the mark of a bare one (make_missing)
        space = re.match(r"CREATE TABLESPACE (\S+|\"(?:[^\"]|\"\")+\") ", line)
        if space:
            if any(space[1] in _ident_forms(t) for t in tablespaces):
                out.append(f"-- tablespace {space[1]} exists, kept")
                continue
            creates_tablespace = True
        out.append(line)
    return "\n".join(out) + "\n", creates_tablespace


def role_names(raw: bytes) -> list[str]:
    """The roles pg_dumpall's globals `raw` create, unquoted, in order: statements only, never a
    line inside a quoted comment or setting that reads like one."""
    return [
        _unquote(role[1])
        for line, statement in _statement_starts(raw.decode().splitlines())
        if statement and (role := re.fullmatch(r"CREATE ROLE (.+);", line))
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def read_globals(manifest: Manifest, store: StoreBlock) -> bytes:
    obj = manifest.object(GLOBALS)
    if obj.raw_size > GLOBALS_MAX:
        raise IntegrityError(
            f"{GLOBALS} of {manifest.id} is {obj.raw_size} bytes: too large to be roles only"
        )
    return b"".join(read_object(store, obj))


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _drop_left_bare(conn: psycopg.Connection) -> list[str]:
    """Roles an earlier restore made bare and could not drop again (it was killed before the
    cut-over): dropped now, each unless something still depends on it (a side database a
    cleanup has not dropped yet: it goes at a later run). Restores of a server are one at a time
    (the component lock), so none of these is another running restore's."""
    left = conn.execute(
        "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = %s", (BARE_MARK,)
    ).fetchall()
    dropped = []
    for (role,) in left:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            dropped.append(role)
        except psycopg.errors.DependentObjectsStillExist as exc:
            log.warning("role %s, made bare by an interrupted restore, is kept: %s", role, exc)
    if dropped:
        log.info("dropped roles an interrupted restore made bare: %s", dropped)
    return dropped


def make_missing(target: PostgresTarget, raw: bytes) -> dict[str, list[str]]:
    """Before the load, only what it needs, and nothing that changes what is there: the backup's
    roles the server lacks, created bare (no login, password, attribute or membership: objects
    can be owned by and granted to them), and its tablespaces the server lacks. What was made is
    returned, to be dropped again if the restore fails before the cut-over; each role is marked
    (its comment: BARE_MARK, which the globals reset), so that one a killed restore left is
    dropped by the next (and `left_bare_dropped` says which)."""
    made: dict[str, list[str]] = {"roles": [], "tablespaces": [], "left_bare_dropped": []}
    with admin(target) as conn:
        made["left_bare_dropped"] = _drop_left_bare(conn)
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        for line, statement in _statement_starts(raw.decode().splitlines()):
            role = re.fullmatch(r"CREATE ROLE (.+);", line) if statement else None
            if role and _unquote(role[1]) not in roles:
                name = sql.Identifier(_unquote(role[1]))
                with conn.transaction():  # never one without its mark
                    conn.execute(sql.SQL("CREATE ROLE {}").format(name))
                    conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(BARE_MARK)))
                made["roles"].append(_unquote(role[1]))
            space = re.match(r'CREATE TABLESPACE (\S+|"(?:[^"]|"")+") ', line) if statement else None
            if space and _unquote(space[1]) not in spaces:
                conn.execute(line.encode())  # as pg_dumpall wrote it (its owner: made above)
                made["tablespaces"].append(_unquote(space[1]))
    return made


def drop_made(target: PostgresTarget, made: dict[str, list[str]]) -> bool:
    """Undo _make_missing once the side databases are gone; False if something could not be."""
    if not (made["roles"] or made["tablespaces"]):
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


def _every_role(conn: psycopg.Connection, settings: list[str] | None) -> list[str]:
    """ALTER ROLE ALL SET (every role, in every database) as the backup has it: what was set since
    is reset. pg_dumpall --globals-only leaves these out, so the backup records them as data;
    None (a backup from before it did): left as they are, there is nothing to compare with."""
    if settings is None:
        return []
    out = [sql.SQL("ALTER ROLE ALL RESET ALL")]
    out += [sql.SQL("ALTER ROLE ALL SET {} = {}").format(*properties.setting(e)) for e in settings]
    return [stmt.as_string(conn) + ";" for stmt in out]


def apply_globals(target: PostgresTarget, raw: bytes, every_role: list[str] | None = None) -> dict[str, Any]:
    """pg_dumpall's globals on the live server, in one transaction (unless one creates a
    tablespace), with the memberships, shared ACLs and every-role settings given since taken
    back to the backup's."""
    with admin(target) as conn:
        spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        expiring = "SELECT rolname FROM pg_roles WHERE rolvaliduntil IS NOT NULL"
        dated = frozenset(r[0] for r in conn.execute(expiring))
        lines = [line for line, start in _statement_starts(raw.decode().splitlines()) if start]
        revokes, revoked = memberships.revocations(conn, lines)
        revokes += shared_acls.resets(conn, lines)
        settings = _every_role(conn, every_role)
    script, has_tablespace = _globals_script(raw, target.user, spaces, dated)
    # first, in the same transaction: the backup's statements below give back what it has
    script = "".join(line + "\n" for line in revokes) + script + "".join(line + "\n" for line in settings)
    argv = psql(target)
    if not has_tablespace:  # CREATE TABLESPACE cannot run inside a transaction block
        argv.append("--single-transaction")
    with engine_env(target) as env:
        feed_stdin(argv, [script.encode()], env, name="psql (globals)")
    return {
        "roles": len(re.findall(r"^DO \$klb\$ BEGIN CREATE ROLE", script, re.M)),
        "memberships_revoked": revoked,
    }
