"""An extension's own tables (members, not configuration tables): rows pg_dump does not dump.

pg_dump leaves out an extension's member objects: CREATE EXTENSION makes them again, from the
extension's script. A member table's rows are dumped only when it is a configuration table
(pg_extension_config_dump, which the fingerprint covers); rows anyone put in another member
table (or a table added with ALTER EXTENSION ... ADD TABLE, which CREATE EXTENSION does not even
make) are in no backup, and a restore came back without them, verified and silent. The backup
records each such table's row count; the restore compares the side database's with it and names
the tables that differ (the report's `extension_tables_differ`, and a warning): they cannot be
brought back from this backup.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

_MEMBERS = """SELECT n.nspname, c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence <> 't'
      AND EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                  AND e.objid = c.oid AND e.deptype = 'e')
      AND NOT EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY(x.extconfig))
    ORDER BY 1, 2"""


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """`schema.table` -> rows, for each member table of an extension that pg_dump leaves out."""
    out = {}
    for schema, table in conn.execute(_MEMBERS).fetchall():
        count = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        out[f"{schema}.{table}"] = conn.execute(count).fetchone()[0]
    return out


def differences(recorded: dict[str, int] | None, now: dict[str, int]) -> dict[str, Any]:
    """The recorded tables whose rows the restore did not bring back as they were (None: a
    backup from before they were recorded, nothing to compare with)."""
    out: dict[str, Any] = {}
    for table, rows in (recorded or {}).items():
        if now.get(table) != rows:
            restored = "missing" if table not in now else f"{now[table]} rows"
            out[table] = f"backup {rows} rows, restored {restored}: pg_dump does not dump them"
    return out
