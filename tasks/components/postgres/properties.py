"""Database-level properties: what `pg_dump` without `--create` leaves out, kept as data.

Owner, encoding, locale and provider, tablespace, connection limit, template flag, comment, the
ACL (GRANT/REVOKE ... ON DATABASE, in its exact order and with its grantors), the database's own
settings and the per-role-in-database settings (pg_db_role_setting).

Why data and not pg_dump's `--create` entries: those are SQL text naming the original
database (and `\\connect`-ing to it), while a restore goes into a side database of another name
and is renamed at cut-over; and `--create` puts the settings on the database before the data is
loaded, so a read-only default breaks the load. Here the encoding, locale, owner and tablespace
are given at CREATE DATABASE (they cannot change later), everything else is applied after the
data is loaded and its fingerprint verified, then read back and compared.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from tasks.errors import ComponentFailed, IntegrityError

log = logging.getLogger(__name__)
# settings PostgreSQL stores already quoted (GUC_LIST_QUOTE): re-quoting them would change them
_LIST_QUOTED = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
}
_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}
# what a restore without the roles (no_owner) does not bring back
_ROLE_BOUND = ("owner", "acl", "role_settings")


def read(conn: psycopg.Connection, db: str) -> dict[str, Any]:
    """The properties of database `db`, as data (names, never oids)."""
    row = conn.execute(
        """SELECT to_jsonb(d) - 'datacl', pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
                  (SELECT spcname FROM pg_tablespace t WHERE t.oid = d.dattablespace),
                  shobj_description(d.oid, 'pg_database'), d.datacl IS NULL,
                  (SELECT coalesce(jsonb_agg(jsonb_build_array(
                              CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                              pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable) ORDER BY a.n),
                          '[]')
                   FROM aclexplode(d.datacl) WITH ORDINALITY a(grantor, grantee, privilege_type,
                                                                 is_grantable, n)),
                  (SELECT coalesce(jsonb_agg(jsonb_build_array(
                              CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
                              s.setconfig) ORDER BY s.ctid), '[]')
                   FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
           FROM pg_database d WHERE d.datname = %s""",
        (db,),
    ).fetchone()
    if row is None:
        raise ComponentFailed(f"database {db!r} vanished while its properties were read")
    cols, owner, encoding, tablespace, comment, acl_default, acl_rows, setting_rows = row
    acl: list[dict[str, Any]] = []
    for grantee, grantor, privilege, grantable in acl_rows:
        # one aclitem per (grantee, grantor), in array order: GRANT appends in the same order
        item = next((i for i in acl if (i["grantee"], i["grantor"]) == (grantee, grantor)), None)
        if item is None:
            item = {"grantee": grantee, "grantor": grantor, "privileges": [], "grantable": []}
            acl.append(item)
        item["privileges"].append(privilege)
        if grantable:
            item["grantable"].append(privilege)
    provider = cols.get("datlocprovider", "c")
    return {
        "owner": owner,
        "encoding": encoding,
        "collate": cols["datcollate"],
        "ctype": cols["datctype"],
        "locale_provider": _PROVIDERS.get(provider, provider),
        "locale": cols.get("datlocale") or cols.get("daticulocale"),  # icu/builtin (PG 15+)
        "icu_rules": cols.get("daticurules"),  # PG 16+
        "tablespace": tablespace,
        "connection_limit": cols["datconnlimit"],
        "is_template": cols["datistemplate"],
        "allow_connections": cols["datallowconn"],
        "comment": comment,
        "acl": None if acl_default else acl,  # None: the default ACL, never GRANTed or REVOKEd
        "settings": next((list(c) for r, c in setting_rows if r is None), []),
        "role_settings": [{"role": r, "settings": list(c)} for r, c in setting_rows if r is not None],
    }


def subscriptions(conn: psycopg.Connection, db: str) -> dict[str, bool]:
    """Database `db`'s subscriptions: name -> enabled. pg_dump makes each disabled (`connect =
    false`): the restore names those that were enabled at backup (restores.py)."""
    rows = conn.execute(
        """SELECT s.subname, s.subenabled FROM pg_subscription s
           JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = %s ORDER BY 1""",
        (db,),
    ).fetchall()
    return dict(rows)


def legacy(info: dict[str, Any]) -> dict[str, Any]:
    """Properties of a backup made before they were recorded: what its manifest has."""
    return {
        "owner": info.get("owner"),
        "encoding": info.get("encoding"),
        "collate": info.get("collate"),
        "ctype": info.get("ctype"),
        "settings": info.get("settings", []),
    }


def create_side(conn: psycopg.Connection, side: str, props: dict[str, Any], no_owner: bool) -> None:
    """CREATE DATABASE `side` with what can only be given at creation, and nothing that changes
    how a session behaves (settings come after the load)."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(side))]
    options = [
        ("ENCODING", props.get("encoding")),
        ("LC_COLLATE", props.get("collate")),
        ("LC_CTYPE", props.get("ctype")),
    ]
    provider = props.get("locale_provider")
    if provider and provider != "libc":
        options.append(("LOCALE_PROVIDER", provider))
        options.append(("ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE", props.get("locale")))
        options.append(("ICU_RULES", props.get("icu_rules")))
    if props.get("tablespace") and props["tablespace"] != "pg_default":
        options.append(("TABLESPACE", sql.Identifier(props["tablespace"])))
    if props.get("owner") and not no_owner:
        options.append(("OWNER", sql.Identifier(props["owner"])))
    for key, value in options:
        if value is not None:
            literal = value if isinstance(value, sql.Composable) else sql.Literal(value)
            parts.append(sql.SQL(key + " {}").format(literal))
    try:
        conn.execute(sql.SQL(" ").join(parts))
    except psycopg.Error as exc:
        raise ComponentFailed(
            f"cannot create {side!r} as the backup recorded it ({str(exc).strip()}): the server "
            "needs the recorded owner, tablespace, encoding and locale (restore the globals first, "
            "or use no_owner when the roles are not there)"
        ) from None


def _list_elements(value: str) -> list[str]:
    """The elements of a stored GUC_LIST_QUOTE value (`"$user", public`, `""`): comma-separated,
    each bare or double-quoted with "" for a quote, as PostgreSQL's SplitGUCList reads it."""
    out, i, n = [], 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            j, elem = i + 1, []
            while j < n and not (value[j] == '"' and value[j + 1 : j + 2] != '"'):
                elem.append(value[j])
                j += 2 if value[j] == '"' else 1
            out.append("".join(elem))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != ",":
                j += 1
            out.append(value[i:j].strip())
            i = j
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            return out
        if value[i] != ",":
            raise IntegrityError(f"recorded list setting {value!r} is malformed: it cannot be re-applied")
        i += 1


def setting(key_value: str) -> tuple[sql.Composable, sql.Composable]:
    """`name=value` as recorded -> (name, value) for `SET name = value`. A list setting stored
    quoted (search_path) goes back as one literal per element, as pg_dump does: its stored text
    is identifiers (`""` for an empty path), never SQL to paste."""
    key, _, value = key_value.partition("=")
    if key.lower() in _LIST_QUOTED:
        val: sql.Composable = sql.SQL(", ").join(sql.Literal(e) for e in _list_elements(value))
    else:
        val = sql.Literal(value)
    return sql.Identifier(key), val


def _statements(side: str, props: dict[str, Any], no_owner: bool) -> list[tuple[str | None, sql.Composed]]:
    """(role to run as, statement): in the order that reproduces the recorded catalog rows."""
    db = sql.Identifier(side)
    out: list[tuple[str | None, sql.Composed]] = []
    limit = int(props.get("connection_limit", -1))
    if limit != -1:
        out.append((None, sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(limit))))
    if props.get("comment") is not None:
        out.append((None, sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props["comment"]))))
    acl = props.get("acl")
    if acl is not None and not no_owner:
        # from nothing: the default (PUBLIC and the owner) revoked, then each item granted back
        # in array order, by its own grantor (a superuser's GRANT would be recorded as the owner's)
        out.append((None, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db)))
        owner = sql.Identifier(props["owner"])
        out.append((None, sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, owner)))
        for item in acl:
            grantee = sql.Identifier(item["grantee"]) if item["grantee"] else sql.SQL("PUBLIC")
            grantor = None if item["grantor"] == props["owner"] else item["grantor"]
            plain = [p for p in item["privileges"] if p not in item["grantable"]]
            # no grant option back to one's own grantor (the owner's own item): it is implicit
            grantable = [p for p in item["grantable"] if item["grantee"] != item["grantor"]]
            for privs, option in ((plain, ""), (grantable, " WITH GRANT OPTION")):
                if privs:
                    stmt = sql.SQL("GRANT {} ON DATABASE {} TO {}" + option).format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privs), db, grantee
                    )
                    out.append((grantor, stmt))
    for entry in props.get("settings", []):
        out.append((None, sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, *setting(entry))))
    if not no_owner:
        for row in props.get("role_settings", []):
            for entry in row["settings"]:
                stmt = sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    sql.Identifier(row["role"]), db, *setting(entry)
                )
                out.append((None, stmt))
    if props.get("is_template"):
        out.append((None, sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(db)))
    return out


def apply(conn: psycopg.Connection, side: str, props: dict[str, Any], no_owner: bool) -> None:
    """Put the recorded properties on `side` (loaded and verified), in one transaction, then
    read them back: a property that did not come back is an error, not a silent difference."""
    try:
        with conn.transaction():
            for role, stmt in _statements(side, props, no_owner):
                if role:
                    conn.execute(sql.SQL("SET LOCAL SESSION AUTHORIZATION {}").format(sql.Identifier(role)))
                conn.execute(stmt)
                if role:
                    conn.execute("RESET SESSION AUTHORIZATION")
    except psycopg.Error as exc:
        raise ComponentFailed(
            f"cannot put the recorded database properties on {side!r} ({str(exc).strip()}): restore "
            "the globals first (include_globals), or use no_owner when the roles are not there"
        ) from None
    if "acl" not in props:
        return  # a backup from before properties were recorded: nothing to compare with
    got = read(conn, side)
    skip = {"allow_connections", *(_ROLE_BOUND if no_owner else ())}
    differ = sorted(k for k in props if k not in skip and props[k] != got.get(k))
    if differ:
        raise IntegrityError(
            f"database properties of {side!r} differ from the backup after applying them: "
            + "; ".join(f"{k}: backup {props[k]!r}, now {got.get(k)!r}" for k in differ)
        )
