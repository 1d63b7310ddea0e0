"""Comparing a restore's fingerprint with its backup's (fingerprint.py takes them): tables
exactly, partitions of a hash-partitioned hierarchy at their root, sequences never behind,
materialized views on their own once refreshed."""

from __future__ import annotations

from typing import Any

from tasks.components.postgres import partitions
from tasks.errors import IntegrityError


def diff_fingerprints(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences, empty when the restore matches the backup.

    Tables must match exactly (v7: each by its own rows); the partitions of a hierarchy with hash
    partitioning in it (v6's `compared_at_root`) as exactly, added up at their root
    (partitions.py). Sequences are outside
    MVCC: pg_dump reads their value when it reaches them, not at the snapshot, so a restored
    sequence may be ahead of the recorded value (never behind: that would hand out ids already
    used). Ahead is the way it counts: lower for a descending one (its increment; fingerprints
    before it was recorded have the restored one's).
    """
    out = []
    exp, act = expected.get("tables", {}), actual.get("tables", {})
    # partitions whose rows may move between them: compared at their root (v6; none before)
    roots = expected.get("compared_at_root") or {}
    for key in sorted(set(exp) | set(act)):
        if key not in act:
            out.append(f"table {key} missing after restore")
        elif key not in exp:
            out.append(f"table {key} not in the backup")
        elif exp[key] != act[key] and key not in roots:
            out.append(f"table {key}: backup {exp[key]} != restored {act[key]}")
    out += partitions.root_differences(roots, exp, act)
    if "extension_config" in expected:  # fingerprints before it was recorded have none
        exp_cfg, act_cfg = expected["extension_config"], actual.get("extension_config", {})
        for key in sorted(set(exp_cfg) | set(act_cfg)):
            if exp_cfg.get(key) != act_cfg.get(key):
                was, now = exp_cfg.get(key), act_cfg.get(key)
                out.append(f"extension configuration table {key}: backup {was} != restored {now}")
    if "large_objects" in expected and expected["large_objects"] != actual.get("large_objects"):
        out.append(
            f"large objects: backup {expected['large_objects']} != restored {actual.get('large_objects')}"
        )
    exp, act = expected.get("sequences", {}), actual.get("sequences", {})
    for key in sorted(set(exp) | set(act)):
        if key not in act or key not in exp:
            out.append(f"sequence {key} {'missing after restore' if key not in act else 'not in the backup'}")
        elif _progress(act[key], exp[key]) < _progress(exp[key], act[key]):
            out.append(f"sequence {key}: restored {act[key]} is behind the backup's {exp[key]}")
    return out


def materialized_view_differences(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, str]:
    """Materialized views whose rows differ from the backup's (one refreshed last before the backup
    while its tables changed since): view -> what differs. One populated at backup and not now,
    or the other way round, or missing, is an IntegrityError: that a restore gives back exactly."""
    exp, act = expected.get("materialized_views"), actual.get("materialized_views", {})
    if exp is None:
        return {}  # a fingerprint from before they were recorded
    wrong = []
    for key in sorted(set(exp) | set(act)):
        if key not in act or key not in exp:
            where = "missing after restore" if key not in act else "not in the backup"
            wrong.append(f"materialized view {key} {where}")
        elif exp[key].get("populated", True) != act[key].get("populated", True):
            state = "populated" if exp[key].get("populated", True) else "not populated (WITH NO DATA)"
            wrong.append(f"materialized view {key} was {state} at backup, and is not now")
    if wrong:
        raise IntegrityError("; ".join(wrong))
    return {
        key: f"backup had {exp[key]['rows']} rows (sum {exp[key]['sum']}), refreshed it has "
        f"{act[key]['rows']} rows (sum {act[key]['sum']}): it was not refreshed since its tables "
        "last changed before the backup, and pg_dump keeps no rows of a materialized view"
        for key in sorted(exp)
        if exp[key] != act[key]
    }


def _progress(seq: dict[str, Any], other: dict[str, Any]) -> tuple[int, bool]:
    """How far `seq` has counted: its value in its own direction, then whether it was used."""
    step = seq.get("increment") or other.get("increment") or 1
    return (seq["last_value"] if step > 0 else -seq["last_value"], seq["is_called"])
