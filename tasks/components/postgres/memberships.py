"""Role memberships put back as the backup has them.

pg_dumpall's globals GRANT each membership the backup had; re-running them adds what is missing
but never takes away what was granted since (a membership, an ADMIN OPTION, or in PostgreSQL 16+
an INHERIT or SET option or another grantor's grant of the same membership). So before the
globals run, in the same transaction, every membership between the backup's roles (and the
predefined `pg_*` ones) that the backup does not have, exactly as it is now, is revoked; the
backup's GRANTs that follow then give back the ones it has, with their options.
Memberships of roles the backup does not have are left: those roles are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

_IDENT = r'(?:[^\s"]+|"(?:[^"]|"")+")'
# pg_dumpall: `GRANT r TO m[ WITH ADMIN OPTION[, INHERIT TRUE|FALSE][, SET FALSE]][ GRANTED BY g];`
_GRANT = re.compile(rf"GRANT ({_IDENT}) TO ({_IDENT})(?: WITH ([A-Z ,]+?))?(?: GRANTED BY ({_IDENT}))?;")
_CREATE_ROLE = re.compile(rf"CREATE ROLE ({_IDENT});")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def parse(statements: Iterable[str]) -> tuple[set[str], list[dict[str, Any]]]:
    """The roles pg_dumpall creates, and the memberships it grants, from its statement lines."""
    roles: set[str] = set()
    grants: list[dict[str, Any]] = []
    for line in statements:
        if created := _CREATE_ROLE.fullmatch(line):
            roles.add(_unquote(created[1]))
        elif grant := _GRANT.fullmatch(line):
            options = {o.strip() for o in (grant[3] or "").split(",") if o.strip()}
            # 16+ always writes INHERIT, and SET only when FALSE; before 16 neither exists
            versioned = any(o.startswith("INHERIT ") for o in options)
            grants.append(
                {
                    "role": _unquote(grant[1]),
                    "member": _unquote(grant[2]),
                    "grantor": _unquote(grant[4]) if grant[4] else None,
                    "admin": "ADMIN OPTION" in options,
                    "inherit": ("INHERIT TRUE" in options) if versioned else None,
                    "set": ("SET FALSE" not in options) if versioned else None,
                }
            )
    return roles, grants


def _current(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT r.rolname, m.rolname, g.rolname, a.admin_option,
                  (to_jsonb(a) ->> 'inherit_option')::bool, (to_jsonb(a) ->> 'set_option')::bool
           FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid
           JOIN pg_roles m ON m.oid = a.member LEFT JOIN pg_roles g ON g.oid = a.grantor"""
    ).fetchall()
    keys = ("role", "member", "grantor", "admin", "inherit", "set")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _same(now: dict[str, Any], backup: dict[str, Any]) -> bool:
    """As the backup has it: its grantor and options (those the server and the dump both know)."""
    if now["admin"] != backup["admin"]:
        return False
    # no GRANTED BY: pg_dumpall 16+ leaves it out for a server before 16, and a grant re-run
    # without it records the restoring user: any grantor is the backup's then
    if backup["grantor"] is not None and now["grantor"] != backup["grantor"]:
        return False
    return all(backup[k] is None or now[k] is None or now[k] == backup[k] for k in ("inherit", "set"))


def revocations(conn: psycopg.Connection, statements: Iterable[str]) -> tuple[list[str], list[str]]:
    """(REVOKE statements, what each takes away in words): every membership among the backup's
    roles and the predefined ones that is not in the backup as it is now. Run before the
    backup's GRANTs, which give back those it has."""
    roles, grants = parse(statements)
    scope = lambda name: name in roles or name.startswith("pg_")  # noqa: E731
    cascade = conn.info.server_version >= 160000  # grants made with its ADMIN OPTION (16+)
    out: list[str] = []
    said: list[str] = []
    for now in _current(conn):
        if not (scope(now["role"]) and scope(now["member"])):
            continue
        if now["role"].startswith("pg_") and now["member"].startswith("pg_"):
            continue  # the server's own (pg_monitor's), which pg_dumpall leaves out too
        wanted = [g for g in grants if (g["role"], g["member"]) == (now["role"], now["member"])]
        if any(_same(now, g) for g in wanted):
            continue
        stmt = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(now["role"]), sql.Identifier(now["member"]))
        if cascade and now["grantor"]:  # before 16 one grant per membership, whoever gave it
            stmt += sql.SQL(" GRANTED BY {} CASCADE").format(sql.Identifier(now["grantor"]))
        out.append(stmt.as_string(conn) + ";")
        said.append(f"{now['role']} from {now['member']} (granted by {now['grantor']})")
    return out, said
