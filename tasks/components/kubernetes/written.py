"""What one Velero restore wrote to the cluster: the objects it created, those it overwrote, the
namespaces it made. With existing_resource_policy `none` (the default) Velero leaves an object
that exists as it is, so a restore whose objects all exist writes nothing; it was recorded as
`restored` all the same, and its rollback put the safety backup over objects it never touched.
The checklist records from this whether the target changed, and a rollback what it may put back.

Velero labels every object it creates or updates with `velero.io/restore-name` (restore.go
addRestoreLabels; a ServiceAccount it merges into the cluster's gets them through the merge's
patch), and an object it leaves as it is keeps its own labels. So an object of the restore's
scope that carries this restore's label was written by it: created if it was not there before,
overwritten if it was. Seen are the kinds the project lists (api.KINDS); cluster-scoped objects
are not listed, and a restore that may have brought some back says so in `created`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import Kube

RESTORE_NAME = "velero.io/restore-name"


@dataclass
class Before:
    """The restore's target namespaces that were active, and their objects of its scope there."""

    namespaces: set[str]
    objects: set[str]  # "<target ns>/<plural>/<name>"


def scope_before(k: Kube, scope: dict[str, dict[str, list[str]]], mapping: dict[str, str]) -> Before:
    """`scope`: source namespace -> kind -> the names the restore may write (the backup's)."""
    namespaces, objects = set(), set()
    for ns, kinds in scope.items():
        dest = mapping.get(ns, ns)
        if not kube.namespace_active(k, dest):  # a Terminating one is made anew: its objects go
            continue
        namespaces.add(dest)
        for plural, names in kinds.items():
            there = set(kube.list_names(k, dest, plural))
            objects |= {f"{dest}/{plural}/{n}" for n in names if n in there}
    return Before(namespaces, objects)


def cluster_scoped_possible(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the restore (its spec) includes cluster-scoped objects and the backup may hold
    some: Velero backs them up with includeClusterResources, or by default when it backs up every
    namespace (backup_types.go)."""
    if not spec.get("includeClusterResources"):
        return False
    backed = (doc.get("backup") or {}).get("spec") or {}
    given = backed.get("includeClusterResources")
    if given is not None:
        return bool(given)
    return backed.get("includedNamespaces") in (None, [], ["*"])


def velero_written(
    k: Kube,
    restore_name: str,
    before: Before,
    scope: dict[str, dict[str, list[str]]],
    mapping: dict[str, str],
    cluster: bool = False,
) -> dict[str, list[str]]:
    """-> {"created": [...], "overwritten": [...]} of a Velero restore named `restore_name` that
    has ended, from what was there `before` and the restore's label on what is there now."""
    created: list[str] = []
    overwritten: list[str] = []
    selector = f"{RESTORE_NAME}={restore_name}"
    for ns, kinds in scope.items():
        dest = mapping.get(ns, ns)
        if not kube.namespace_exists(k, dest):
            continue
        if dest not in before.namespaces:
            created.append(f"namespace {dest}")
        for plural, names in sorted(kinds.items()):
            labelled = set(kube.list_names(k, dest, plural, selector))
            for name in names:
                key = f"{dest}/{plural}/{name}"
                if name in labelled:
                    (overwritten if key in before.objects else created).append(key)
    if cluster:
        created.append(
            "cluster-scoped objects of the backup that were missing (CRDs, ClusterRoles, PVs...: not "
            f"listed; `kubectl get <kind> -l {selector}` shows them)"
        )
    return {"created": created, "overwritten": overwritten}


NOTHING_WRITTEN = "the restore wrote nothing"


def nothing_written_note(policy: str) -> str:
    return (
        f"{NOTHING_WRITTEN}: every object it would restore already existed and was left as "
        f"it was (existing_resource_policy={policy}; see already_existed). The target is as it was "
        "and there is nothing to roll back; to bring the backup's versions back, restore with "
        "existing_resource_policy=update"
    )


def wrote(report: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """What a restore that ended with `report` wrote; None when it cannot tell: no report (the
    restore failed, or its run died), or one from before the report said it."""
    if not report or "created" not in report or "overwritten" not in report:
        return None
    return {"created": list(report["created"]), "overwritten": list(report["overwritten"])}
