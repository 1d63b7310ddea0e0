"""Component "kubernetes": Kubernetes resources through Velero's custom resources.

Velero is the engine. We drive it as the `velero` CLI does, with Backup, Restore and
DeleteBackupRequest objects, wait for a terminal phase, and keep in our store what proves the
backup: the Backup CR as Velero left it, a describe-like summary, and an inventory of the
objects it should hold. That inventory is what restores and drills verify against.
"""

from __future__ import annotations

from typing import Any

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.contract import target_from_env
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import KINDS, canonical_resource, connect
from tasks.components.kubernetes.backups import (
    OBJECT_NAME,
    BackupSpec,
    backup,
    describe_backup,
    inventory,
    load_document,
    run_backup,
    safety_backup,
    verify,
)
from tasks.components.kubernetes.discovery import check_resource_names
from tasks.components.kubernetes.drills import SCALE_TO_ZERO, drill, drill_cleanup, drill_namespaces
from tasks.components.kubernetes.expiry import keep_until
from tasks.components.kubernetes.prechecks import refuse_live_targets, refuse_outside_scope
from tasks.components.kubernetes.restores import (
    DNS_LABEL,
    ExistingResourcePolicy,
    RestoreOptions,
    _plan,
    resolved,
    restore,
    restore_document,
)
from tasks.components.kubernetes.velero import (
    BACKUP_TERMINAL,
    GROUP,
    NOT_INSTALLED,
    RESTORE_TERMINAL,
    VERSION,
    _call,
    cancel_backup,
    get_backup_cr,
    preflight,
    run_restore,
)
from tasks.components.kubernetes.written import NOTHING_WRITTEN
from tasks.components.kubernetes.written import wrote as _wrote
from tasks.errors import ConfigurationError
from tasks.models import Manifest

Target = VeleroTarget


def default_target() -> VeleroTarget:
    return target_from_env(VeleroTarget, "Velero", "KLB_VELERO_TARGET")  # type: ignore[return-value]


def check_restore(
    target: VeleroTarget,
    manifest: Manifest,
    store: StoreBlock,
    options: RestoreOptions,
    mapping_aside: bool = True,
) -> None:
    """What the restore would refuse, refused before a checklist, safety backup or approval:
    resource types the cluster does not serve; namespaces, mappings and names against this
    backup, a mapping into a namespace that exists; and namespaces that exist outside the target
    block's, which its safety backup would not hold."""
    doc = load_document(store, manifest)
    k = connect(target.kube)
    check_resource_names(k, resources=options.resources, exclude_resources=options.exclude_resources)
    options = resolved(k, options)  # as Velero resolves the names (its spec is not made here)
    namespaces, kinds = _plan(doc, options)
    if options.names:
        from tasks.components.kubernetes.named import check_named

        check_named(doc, options, namespaces, kinds)
    elif mapping_aside:
        refuse_live_targets(k, options.namespace_mapping, namespaces)
    refuse_outside_scope(k, target, [options.namespace_mapping.get(ns, ns) for ns in namespaces])


def wrote(options: RestoreOptions, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a restore wrote, from its report: {"created": [...], "overwritten": [...]}. With
    existing_resource_policy none it overwrites nothing (a ServiceAccount Velero merged and a
    claim's rewritten data aside), and when every object exists it writes nothing at all. None
    when it cannot tell (no report: it failed or its run died)."""
    return _wrote(report)


def describe_current_state(target: VeleroTarget) -> dict[str, Any]:
    """Namespaces, object counts per kind (not those the cluster makes in every namespace), PVCs;
    and what Velero holds (pre-restore checklist)."""
    k = connect(target.kube)
    existing = kube.list_namespaces(k)
    wanted = (
        existing
        if "*" in target.include_namespaces or not target.include_namespaces
        else target.include_namespaces
    )
    state: dict[str, Any] = {"namespaces": {}, "pvcs": []}
    for ns in wanted:
        if ns not in existing:
            state["namespaces"][ns] = {"exists": False}
            continue
        counts = {p: len(kube.workload_names(p, kube.list_names(k, ns, p))) for p in KINDS}
        state["namespaces"][ns] = {"exists": True, "counts": counts}
        state["pvcs"] += kube.list_pvcs(k, ns)
    try:
        bsl = preflight(k, target)
        backups = _call(k, "list Velero backups", "list", "backups", target.namespace)["items"]
        backups.sort(key=lambda b: (b.get("status") or {}).get("completionTimestamp") or "", reverse=True)
        state["velero"] = {
            "installed": True,
            "storage_location": {
                "name": target.storage_location,
                "phase": (bsl.get("status") or {}).get("phase"),
            },
            "recent_backups": [
                {"name": b["metadata"]["name"], "phase": (b.get("status") or {}).get("phase")}
                for b in backups[:5]
            ],
        }
    except ConfigurationError as exc:
        state["velero"] = {"installed": False, "error": str(exc)}
    return state


__all__ = [
    "BACKUP_TERMINAL",
    "BackupSpec",
    "DNS_LABEL",
    "ExistingResourcePolicy",
    "GROUP",
    "NOTHING_WRITTEN",
    "NOT_INSTALLED",
    "OBJECT_NAME",
    "RESTORE_TERMINAL",
    "RestoreOptions",
    "SCALE_TO_ZERO",
    "Target",
    "VERSION",
    "backup",
    "canonical_resource",
    "cancel_backup",
    "check_restore",
    "default_target",
    "describe_backup",
    "describe_current_state",
    "drill",
    "drill_cleanup",
    "drill_namespaces",
    "get_backup_cr",
    "inventory",
    "keep_until",
    "load_document",
    "preflight",
    "restore",
    "restore_document",
    "run_backup",
    "run_restore",
    "safety_backup",
    "verify",
    "wrote",
]
