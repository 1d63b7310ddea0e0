"""Partition hierarchies whose rows may be in other partitions after a restore, and so are loaded
through their root and compared at their root.

A hash partition is chosen by the hash of the partition key, and not every hash is the same on
the restored server: an enum's is the OID of its value (CREATE TYPE at restore makes new ones),
as are the reg* types'; an array, range, multirange, record or domain hashes what it holds, so
one over an enum does too; a nondeterministic collation hashes by its ICU version's sort key;
float and numeric hash their bytes in memory (another architecture, another hash); a
user-defined operator class hashes as it likes. Restored, a row belongs to the partition the new
hash gives, so loaded into the one it was dumped from (pg_dump's COPY into each leaf, our parts'
COPY) it breaks the partition constraint, and the backup never restores. PostgreSQL 16's pg_dump
loads through the root by itself only for a hash key whose operator class is enum_ops (an enum,
or a domain over one): not an array or range of one, nor the other cases above. Telling the safe
keys apart is a bet on each type's hash function; loading through the root costs tuple routing
only, and comparing the rows at the root loses nothing (the partition constraints, restored
with the schema, put each row into the one partition the restored server wants). So the rule
here is every hierarchy with a hash-partitioned table in it, at any level (a hash partition
partitioned again, or a range partition partitioned by hash): its leaves load through the
topmost root, as pg_dump's --load-via-partition-root does, and are compared at it. Range and
list partitions are chosen by comparing values, the same after a restore: loaded into their leaf
and compared per leaf, exactly, as before.
"""

from __future__ import annotations

from typing import Any

import psycopg

# each leaf (a table with rows: relkind 'r') of a hierarchy whose tables include a hash-partitioned
# one, with its topmost root (its name, and quoted, as the fingerprint keys tables)
_HASHED = """
WITH RECURSIVE tree(root, rel) AS (
    SELECT c.oid, c.oid FROM pg_class c WHERE c.relkind = 'p' AND NOT c.relispartition
    UNION ALL
    SELECT t.root, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.rel
)
SELECT leaf.oid::int8, root.oid::int8, rn.nspname, root.relname,
       quote_ident(rn.nspname) || '.' || quote_ident(root.relname)
FROM tree t
JOIN pg_class leaf ON leaf.oid = t.rel AND leaf.relkind = 'r'
JOIN pg_class root ON root.oid = t.root
JOIN pg_namespace rn ON rn.oid = root.relnamespace
WHERE EXISTS (SELECT 1 FROM tree u JOIN pg_partitioned_table p ON p.partrelid = u.rel
              WHERE u.root = t.root AND p.partstrat = 'h')
ORDER BY 1
"""


def hashed(conn: psycopg.Connection) -> dict[int, dict[str, Any]]:
    """Leaf oid -> its root's `root_oid`, `schema`, `table` and `root_key` (quoted): the leaves
    to load through their root and compare at it. Read in the caller's transaction (the dump's
    snapshot at backup)."""
    if conn.info.server_version < 110000:
        return {}  # no hash partitioning before PostgreSQL 11
    return {
        oid: {
            "root_oid": root_oid,
            "schema": schema,
            "table": table,
            "root_key": root_key,
        }
        for oid, root_oid, schema, table, root_key in conn.execute(_HASHED).fetchall()
    }


def root_differences(roots: dict[str, str], expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """The leaves in `roots` (leaf key -> root key, as the backup recorded them) compared at their
    root: row counts and hash sums added up over its leaves on each side (both are sums over rows,
    so a row counts the same whichever leaf it is in). A leaf missing on one side is named by the
    caller; its rows count as none here."""
    totals: dict[str, list[list[int]]] = {}
    for leaf, root in roots.items():
        both = totals.setdefault(root, [[0, 0], [0, 0]])
        for side, tables in enumerate((expected, actual)):
            if leaf in tables:
                both[side][0] += tables[leaf]["rows"]
                both[side][1] += int(tables[leaf]["sum"])
    return [
        f"partitioned table {root} (hash partitioned, compared over all its partitions: a row may be "
        f"in another one after a restore): backup {_shown(was)} != restored {_shown(now)}"
        for root, (was, now) in sorted(totals.items())
        if was != now
    ]


def _shown(total: list[int]) -> dict[str, Any]:
    return {"rows": total[0], "sum": str(total[1])}
