"""What one Velero restore wrote to the cluster: the objects it created, those it overwrote, the
namespaces it made. With existing_resource_policy `none` (the default) Velero leaves an object
that exists as it is, so a restore whose objects all exist writes nothing; it was recorded as
`restored` all the same, and its rollback put the safety backup over objects it never touched.
The checklist records from this whether the target changed, and a rollback what it may put back.

Velero labels every object it creates or updates with `velero.io/restore-name` (restore.go
addRestoreLabels), and an object it leaves as it is keeps its own labels. A ServiceAccount it
merges into the cluster's does not get them (the merge's patch is computed from the in-cluster
object already given them), so a merge is not seen here. So an object of the restore's
scope that carries this restore's label was written by it: created if it was not there before,
overwritten if it was. Seen are the kinds the inventory lists (api.KINDS and custom.py's);
cluster-scoped objects are not listed, and a restore that may have brought some back says so in
`created`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import Kube
from tasks.errors import BadInput

RESTORE_NAME = "velero.io/restore-name"
CLUSTER_SCOPED = "cluster-scoped objects"  # in `created` when the restore may have written some


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
    """Whether the restore (its spec) includes cluster-scoped objects, of a kind it restores, and
    the backup may hold some: Velero backs them up with includeClusterResources, or by default
    when it backs up every namespace (backup_types.go)."""
    if not spec.get("includeClusterResources"):
        return False
    asked = {kube.canonical_resource(r) for r in spec.get("includedResources") or ["*"]}
    # the kinds surely namespaced: ours, pods, and the custom kinds the inventory holds (listed
    # in namespaces); namespaces are reported on their own. Any other name may be cluster-scoped
    held = {kind for kinds in (doc.get("inventory") or {}).values() for kind in kinds}
    if asked <= set(kube.KINDS) | held | {"pods", "namespaces"}:
        return False  # only namespaced kinds: no cluster-scoped object can be written
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
            f"{CLUSTER_SCOPED} of the backup that were missing (CRDs, ClusterRoles, PVs...: not "
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


def exact_rollback(
    options: dict[str, Any],
    done: dict[str, list[str]],
    inventory: dict[str, dict[str, list[str]]],
    safety_id: str,
) -> dict[str, Any]:
    """The rollback's restore `options` (of safety backup `safety_id`, whose `inventory` is
    given), narrowed to exactly the objects the restore overwrote (`done`: what it wrote; one
    that may have written cluster-scoped objects keeps them in its rollback). Velero restores by
    namespace and kind, so options that also reach objects the restore never wrote would put
    their copies from before the restore over writes made to them since: then by name (named.py
    copies those, and only those), or BadInput saying what to put back by hand."""
    # every kind the safety backup's inventory lists: the custom ones too (a Velero rollback of
    # the namespace puts them back as well)
    held = {kind for kinds_ in inventory.values() for kind in kinds_}
    kinds = {kube.canonical_resource(r) for r in options.get("resources") or []} or set(kube.KINDS) | held
    kinds -= {kube.canonical_resource(r) for r in options.get("exclude_resources") or []}
    names = set(options.get("names") or [])
    skip = set(options.get("exclude_namespaces") or [])

    def reach(namespaces: list[str], plurals: set[str], picked: set[str]) -> set[str]:
        return {
            f"{ns}/{plural}/{name}"
            for ns in namespaces
            if ns not in skip
            for plural, held in inventory.get(ns, {}).items()
            if plural in plurals
            for name in held
            if not picked or name in picked
        }

    scope = reach(options.get("namespaces") or sorted(inventory), kinds, names)
    wrote = scope & set(done["overwritten"])
    if scope <= wrote:
        return options
    parts = [key.split("/", 2) for key in sorted(wrote)]
    by_name = {
        "namespaces": sorted({p[0] for p in parts}),
        "resources": sorted({p[1] for p in parts}),
        "names": sorted({p[2] for p in parts}),
    }
    copied = set(kube.COPIED_KINDS) - {"persistentvolumeclaims"}  # named.py: no RBAC, no claims
    if (
        parts
        and set(by_name["resources"]) <= copied
        and not any(c.startswith(CLUSTER_SCOPED) for c in done["created"])
        and reach(by_name["namespaces"], set(by_name["resources"]), set(by_name["names"])) == wrote
    ):
        keep = {k: options[k] for k in ("timeout_seconds",) if k in options}
        return {**by_name, "existing_resource_policy": "update", **keep}
    left = sorted(scope - wrote)
    raise BadInput(
        f"a rollback restores by namespace and kind, so it would also put back {left[:20]}, which the "
        "restore did not write, over any writes made to them since; and what it overwrote cannot all be "
        f"put back by name. Put back by hand what it overwrote ({sorted(wrote)[:20]}) from safety backup "
        f"{safety_id}; nothing was done"
    )
