"""The fake Velero and custom resources, as Velero's code does it (checked against
vmware-tanzu/velero at d30d389b5).

- Backup (pkg/backup/backup.go): the custom resources of the included namespaces are backed up
  like any namespaced resource (item_collector.go lists every resource discovery serves). The
  CRDs come with the cluster-scoped resources (includeClusterResources true, or unset with every
  namespace); besides, `backupCRD` backs up the CRD of every custom resource it backed up when
  `customresourcedefinitions` is neither included nor excluded, i.e. with includeClusterResources
  unset and some namespaces (backup_test.go TestCRDInclusion: "include cluster resources=auto
  includes CRDs with CRs when backing up selected namespaces"), never with it false.
- Restore (pkg/restore/restore.go): CRDs come first (defaultRestorePriorities.HighPriorities
  begins with customresourcedefinitions) and are cluster-scoped: a restore of some namespaces
  without includeClusterResources leaves them out ("Skipping resource ... because it's
  cluster-scoped and only specific namespaces are included in the restore"). Discovery is
  refreshed after CRDs were restored, then a custom resource whose API the cluster does not
  serve (its CRD missing) is, by `unresolved_mode`:
  - "skip" (Velero 1.12 and 1.13, getOrderedResourceCollection before commit 00b986936):
    "Skipping restore of resource because it cannot be resolved via discovery", an info log,
    `continue`: nothing restored, nothing counted, the Restore `Completed` with no warning.
  - "error" (Velero >= 1.14): "resource cannot be resolved via discovery", an info log; the
    create then gets the API's 404, an item error ("error restoring ..."): `PartiallyFailed`.
  The project supports Velero >= 1.12, so the default is the silent one.
"""

from __future__ import annotations

from typing import Any

from sandbox.k8s_emulator import crds
from sandbox.k8s_emulator.resources import CRDS, Resource

SKIP, ERROR = "skip", "error"


def namespaced_custom(store: Any) -> list[Resource]:
    """The custom resources the cluster serves now that live in namespaces."""
    return [r for r in crds.served(store) if r.namespaced]


def crds_of_backed_up(store: Any, spec: dict[str, Any], items: list, excluded) -> list[tuple[Resource, dict]]:
    """backupCRD: the CRDs of the custom resources in `items` not already in the backup, unless
    includeClusterResources is false or `excluded(CRDS)` (an exclusion names CRDs)."""
    if spec.get("includeClusterResources") is False or excluded(CRDS):
        return []
    have = {obj["metadata"]["name"] for res, obj in items if res == CRDS}
    out = []
    for name in sorted({f"{res.plural}.{res.group}" for res, _ in items if res.custom} - have):
        crd = store.find(CRDS, "", name)
        if crd is not None:
            out.append((CRDS, crd))
    return out


def served_now(store: Any, res: Resource) -> bool:
    """Whether the cluster's discovery (refreshed after the CRDs were restored) serves `res`."""
    return not res.custom or (res.group_version, res.plural) in crds.by_path(store)


def unresolved(ctl: Any, rname: str, res: Resource, ns: str, name: str) -> int:
    """A custom resource whose API the cluster does not serve: the restore log's info line, and
    -> the item errors it counts (0 when skipped, Velero 1.12/1.13; 1 from Velero 1.14)."""
    logs = ctl.restore_logs.setdefault(rname, [])
    if ctl.unresolved_mode == ERROR:
        logs.append(
            f'level=info msg="resource cannot be resolved via discovery" resource={res.group_resource}'
        )
        logs.append(
            f'level=error msg="error restoring {res.group_resource}/{ns}/{name}: '
            'the server could not find the requested resource"'
        )
        return 1
    line = (
        'level=info msg="Skipping restore of resource because it cannot be resolved via discovery" '
        f"resource={res.group_resource}"
    )
    if line not in logs:  # once per resource, as Velero logs it
        logs.append(line)
    return 0
