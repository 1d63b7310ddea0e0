"""What each backup holds, for retention's rule 2 (storage/retention.py): the newest good backup
holding each part (a database, an app-state step, a vhost, a Kubernetes namespace) is kept, so a
narrower newer backup never costs the other parts their last copy.

A part is what an object is, never its position (postgres and RabbitMQ name objects db-000-x,
vhost-000.json). A Velero backup holds its namespaces only as far as its scope reaches: one
narrowed to some labels or resources is no copy of the rest of them ('latest' of a wider scope
passes over it: operations/scope.py), so it replaces only the holders whose scope it covers.
"""

from __future__ import annotations

from typing import NamedTuple

from tasks.models import Manifest


class _Reach(NamedTuple):
    """How far a Velero backup reaches within its namespaces (empty: everything in them)."""

    labels: frozenset[tuple[str, str]]
    include: frozenset[str]
    exclude: frozenset[str]

    def covers(self, other: _Reach) -> bool:
        """Restoring `other`'s scope from this backup brings back all `other` holds. Resource
        names are compared as written: a spelling apart keeps both (never deletes)."""
        return (
            self.labels <= other.labels
            and (not self.include or bool(other.include) and other.include <= self.include)
            and self.exclude <= other.exclude
        )


def _reach(m: Manifest) -> _Reach:
    scope = m.engine.get("scope")
    scope = scope if isinstance(scope, dict) else {}  # RabbitMQ's is a word: its parts say it
    return _Reach(
        frozenset((scope.get("label_selector") or {}).items()),
        frozenset(r.lower() for r in scope.get("include_resources") or []),
        frozenset(r.lower() for r in scope.get("exclude_resources") or []),
    )


def parts(m: Manifest) -> list[str]:
    """Each object's database or vhost, else its name; each namespace (Velero); and each vhost
    a backup of a whole RabbitMQ broker lists (any one restores from it)."""
    held = [
        f"vhost {o.meta['vhost']}" if o.meta.get("vhost") else str(o.meta.get("database") or o.name)
        for o in m.objects
    ]
    held += [f"namespace {ns}" for ns in m.engine.get("namespaces") or []]
    if any(o.meta.get("scope") == "broker" for o in m.objects):
        held += [f"vhost {v}" for v in m.engine.get("vhost_metadata") or {}]
    return held


def last_holders(good: list[Manifest]) -> dict[str, list[str]]:
    """backup id -> the parts it is the newest good backup of (`good`: oldest first). Of one
    part, an older backup still holds it when no newer one covers its reach."""
    newest: dict[str, list[tuple[_Reach, str]]] = {}
    for m in reversed(good):  # newest first
        reach = _reach(m)
        for part in dict.fromkeys(parts(m)):
            kept = newest.setdefault(part, [])
            if not any(r.covers(reach) for r, _ in kept):
                kept.append((reach, m.id))
    holders: dict[str, list[str]] = {}
    for part, kept in sorted(newest.items()):
        for _, backup_id in kept:
            holders.setdefault(backup_id, []).append(part)
    return holders
