"""What a Kubernetes restore refuses before it changes anything: a namespace_mapping that would
merge namespaces (two sources into one, a source onto another the restore also restores, a copy
into a namespace that exists), and, before a checklist, namespaces its safety backup would not
hold. restores.py and the component's check_restore (__init__.py) call these."""

from __future__ import annotations

from typing import Any

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import Kube
from tasks.errors import BadInput


def moved(mapping: dict[str, str]) -> dict[str, str]:
    """The mapping's entries that move a namespace (a -> a moves nothing)."""
    return {source: into for source, into in mapping.items() if source != into}


def check_mapping(wanted: list[str], mapping: dict[str, str]) -> None:
    """A mapping restores each source into a namespace of its own: two sources into one, or one
    onto a namespace this restore also restores, merged them (an object of the same name from
    the second left out, with policy none) and the restore still verified and said 'restored'."""
    into: dict[str, list[str]] = {}
    for source, dest in moved(mapping).items():
        into.setdefault(dest, []).append(source)
    for dest, sources in sorted(into.items()):
        if len(sources) > 1:
            raise BadInput(
                f"namespace_mapping maps {sorted(sources)} all to {dest!r}: their objects would be merged "
                "into one namespace (one object of a name, the others left out); map each to a "
                "namespace of its own; nothing was done"
            )
    onto = sorted((s, d) for s, d in moved(mapping).items() if d in wanted)
    if onto:
        source, dest = onto[0]
        raise BadInput(
            f"namespace_mapping maps {source!r} onto {dest!r}, which this restore also restores: both "
            f"would be merged in {dest!r}; map it to a namespace of its own, or restore them in two "
            "runs; nothing was done"
        )


def refuse_live_targets(k: Kube, mapping: dict[str, str], wanted: list[str]) -> None:
    """A mapping restores aside, into a new namespace. Into one that exists, Velero merged the
    backup's objects into it (those of the same name skipped, or overwritten with policy update)
    and the restore reported success; no rollback takes a merge apart."""
    live = sorted({d for s, d in moved(mapping).items() if s in wanted and kube.namespace_exists(k, d)})
    if live:
        raise BadInput(
            f"namespace_mapping restores aside, into a new namespace: {live} exist, and the backup's "
            "objects would be merged into them. Map to a name that does not exist (or delete that "
            "namespace first), or restore the namespace itself without a mapping; nothing was done"
        )


def refuse_outside_scope(k: Kube, target: VeleroTarget, written: list[str]) -> None:
    """Before a checklist: its safety backup is a backup of the target block's namespaces, so a
    restore into another namespace that exists changes what no rollback can put back."""
    if not target.include_namespaces or "*" in target.include_namespaces:
        scope: Any = None  # every namespace but the exclusions
    else:
        scope = set(target.include_namespaces)
    outside = sorted(
        ns
        for ns in set(written)
        if (ns in target.exclude_namespaces or (scope is not None and ns not in scope))
        and kube.namespace_exists(k, ns)
    )
    if outside:
        raise BadInput(
            f"the restore writes to namespaces {outside}, which exist outside the target block's "
            f"namespaces (include {target.include_namespaces}, exclude {target.exclude_namespaces}): "
            "the safety backup (and so a rollback) would not hold them. Restore through a target "
            "block whose namespaces include them; nothing was done"
        )
