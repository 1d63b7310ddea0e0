"""What the fake Velero keeps in its "object storage" for a backup, and the include/exclude rules
shared by backups and restores (pkg/util/collections/includes_excludes.go)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sandbox.k8s_emulator.discovery import resolve
from sandbox.k8s_emulator.store import BY_PATH, WORKLOAD, Resource

VELERO = "velero.io/v1"
BACKUPS, RESTORES = BY_PATH[(VELERO, "backups")], BY_PATH[(VELERO, "restores")]
DBRS, PVBS = BY_PATH[(VELERO, "deletebackuprequests")], BY_PATH[(VELERO, "podvolumebackups")]
PVRS = BY_PATH[(VELERO, "podvolumerestores")]
NAMESPACES, CONFIGMAPS = BY_PATH[("v1", "namespaces")], BY_PATH[("v1", "configmaps")]
PVCS, PVS, PODS = (
    BY_PATH[("v1", "persistentvolumeclaims")],
    BY_PATH[("v1", "persistentvolumes")],
    BY_PATH[("v1", "pods")],
)
SERVICES = BY_PATH[("v1", "services")]
TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}
__all__ = ["WORKLOAD"]


def group_resource(name: str, custom: Sequence[Resource] = ()) -> str:
    """collections.GetResourceIncludesExcludes: a name resolved through the discovery helper
    (short names, kinds, singulars, `plural.group`) to its 'plural.group'; one it cannot resolve
    is kept as it is ("If we can't resolve it, return it as-is"), and so matches nothing.
    `custom`: the custom resources the cluster serves (crds.served), resolved too."""
    res = resolve(name, custom=custom)
    return res.group_resource if res is not None else name


def wanted(
    res: Resource, include: list[str] | None, exclude: list[str] | None, custom: Sequence[Resource] = ()
) -> bool:
    def hit(names: list[str]) -> bool:
        return any(n == "*" or group_resource(n, custom) == res.group_resource for n in names)

    return (not include or hit(include)) and not (exclude and hit(exclude))


def ns_wanted(ns: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    return (not include or "*" in include or ns in include) and not (exclude and ns in exclude)


def cluster_scoped_wanted(spec: dict[str, Any]) -> bool:
    """includeClusterResources: true includes cluster-scoped resources, false never; unset
    ("auto") only when every namespace is included (IncludesExcludes.IncludeEverything: no
    excludes, includes empty or '*'), for backups (backup_test.go "should not include
    cluster-scoped resource if backing up subset of namespaces and IncludeClusterResources=nil")
    and restores alike (restore.go getOrderedResourceCollection)."""
    flag = spec.get("includeClusterResources")
    if flag is not None:
        return bool(flag)
    include = spec.get("includedNamespaces") or []
    return not spec.get("excludedNamespaces") and (not include or include == ["*"])


@dataclass
class Snapshot:
    """What Velero would keep in its object storage for one backup."""

    items: list[tuple[Resource, dict[str, Any]]] = field(default_factory=list)
    volumes: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pvc) snapshots
    pod_volumes: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (ns, pod, volume)


def duration(text: str) -> timedelta:
    total = 0.0
    for amount, unit in re.findall(r"([\d.]+)([hms])", text):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return timedelta(seconds=total)
