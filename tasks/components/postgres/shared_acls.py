"""Tablespaces and parameter privileges put back as the backup has them.

pg_dumpall's globals write a tablespace's owner in its CREATE TABLESPACE (skipped for one that
exists: roles.py), and its privileges, options and comment, like the privileges on parameters
(GRANT SET ON PARAMETER, 15+), as GRANTs and settings over the default: re-run on a live server
they add, but never take away what was granted or set since. So before the globals run, in the
same transaction, each of the backup's tablespaces that exists is given back its owner, default
privileges, options and no comment, and every privilege on a parameter is revoked; the
backup's statements that follow give back what it had. Tablespaces not in the backup are left.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import psycopg
from psycopg import sql

_IDENT = r'(?:[^\s"]+|"(?:[^"]|"")+")'
_CREATE_TABLESPACE = re.compile(rf"CREATE TABLESPACE ({_IDENT}) OWNER ({_IDENT}) LOCATION ")
_OPTIONS = "seq_page_cost, random_page_cost, effective_io_concurrency, maintenance_io_concurrency"


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _grantees(conn: psycopg.Connection, query: str, *params: object) -> list[sql.Composable]:
    rows = conn.execute(query, params).fetchall()
    return [sql.SQL("PUBLIC") if name is None else sql.Identifier(name) for (name,) in rows]


def resets(conn: psycopg.Connection, statements: Iterable[str]) -> list[str]:
    """The statements that take the backup's existing tablespaces, and the parameters'
    privileges, back to what the globals' statements start from."""
    out: list[sql.Composable] = []
    for line in statements:
        space = _CREATE_TABLESPACE.match(line)
        if not space:
            continue
        name, owner = _unquote(space[1]), _unquote(space[2])
        if not conn.execute("SELECT 1 FROM pg_tablespace WHERE spcname = %s", (name,)).fetchone():
            continue  # made by the globals as the backup has it
        ts, own = sql.Identifier(name), sql.Identifier(owner)
        out.append(sql.SQL("ALTER TABLESPACE {} OWNER TO {}").format(ts, own))
        grantees = _grantees(
            conn,
            """SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
               FROM pg_tablespace t, aclexplode(t.spcacl) a WHERE t.spcname = %s""",
            name,
        )
        for grantee in grantees:
            out.append(sql.SQL("REVOKE ALL ON TABLESPACE {} FROM {} CASCADE").format(ts, grantee))
        if grantees:  # the default: its owner may do everything
            out.append(sql.SQL("GRANT ALL ON TABLESPACE {} TO {}").format(ts, own))
        out.append(sql.SQL("ALTER TABLESPACE {} RESET (" + _OPTIONS + ")").format(ts))
        out.append(sql.SQL("COMMENT ON TABLESPACE {} IS NULL").format(ts))
    if conn.execute("SELECT to_regclass('pg_catalog.pg_parameter_acl')").fetchone()[0]:  # 15+
        rows = conn.execute(
            """SELECT DISTINCT p.parname,
                      CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
               FROM pg_parameter_acl p, aclexplode(p.paracl) a ORDER BY 1, 2"""
        ).fetchall()
        for parameter, grantee in rows:
            who = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
            # a parameter's name is letters, digits, '_' and '.' (a custom one's prefix)
            param = (
                sql.SQL(parameter)
                if re.fullmatch(r"[A-Za-z0-9_.]+", parameter)
                else sql.Identifier(parameter)
            )
            out.append(sql.SQL("REVOKE ALL ON PARAMETER {} FROM {} CASCADE").format(param, who))
    return [stmt.as_string(conn) + ";" for stmt in out]
