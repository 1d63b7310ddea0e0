"""Custom resources in the inventory: the kinds a CRD (or an extension API) serves in a
namespace, found through the cluster's discovery, not a fixed list.

The platform's workloads are Knative Services (`services.serving.knative.dev`), a custom
resource: Velero backs them up with their namespace, and restores them only where the cluster
serves their API. A restore of some namespaces leaves the CRDs out (they are cluster-scoped), so
on a cluster without Knative's CRD Velero skips them (1.12/1.13: an info log, the Restore
`Completed`; from 1.14 an item error). The inventory lists them, so the post-restore check names
any that did not come back, and says how to bring its CRD first.

Which kinds: every namespaced resource discovery lists with the `list` verb in a group of an
extension, i.e. a group name with a dot that is not Kubernetes' own (`*.k8s.io`) and not
Velero's (`velero.io`: its objects are its bookkeeping, not the workload). The inventory key is
the group resource (`services.serving.knative.dev`), never a bare plural, so it is never taken
for a built-in kind (api.KINDS). Listing needs RBAC `list` on each such kind
(deployments/k8s/rbac.yaml: a rule for serving.knative.dev; docs/kubernetes.md says how to add
others); a kind the flows may not list fails the backup, naming the rule to add or the
`exclude_resources` entry that leaves it out, since Velero would back it up and a restore could
drop it unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.components.kubernetes.api import METADATA_ONLY, Kube, canonical_resource, listed_names
from tasks.components.kubernetes.discovery import ApiResource, resolve, served_resources
from tasks.errors import ConfigurationError

NOT_WORKLOAD_GROUPS = ("velero.io",)


@dataclass(frozen=True)
class CustomKind:
    group: str
    version: str
    plural: str

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}"


def is_custom(kind: str) -> bool:
    """An inventory key of a custom resource ('services.serving.knative.dev'), not a built-in plural."""
    return "." in kind


def _extension(res: ApiResource) -> bool:
    group = res.group
    return (
        "." in group
        and not group.endswith(".k8s.io")
        and group not in NOT_WORKLOAD_GROUPS
        and res.namespaced
        and "list" in res.verbs
    )


def served_kinds(k: Kube) -> dict[str, CustomKind]:
    """group resource -> the custom kind the cluster serves now (its preferred version)."""
    served, _ = served_resources(k)
    out: dict[str, CustomKind] = {}
    for res in served:
        if _extension(res):
            out.setdefault(res.group_resource, CustomKind(res.group, res.version, res.plural))
    return out


def select(k: Kube, include: list[str], exclude: list[str]) -> list[str]:
    """The custom kinds (group resources) a backup with these include/exclude names holds."""
    kinds = served_kinds(k)
    if not kinds:
        return []
    served, _ = served_resources(k)

    def named(names: list[str]) -> set[str]:
        out = set()
        for name in names:
            res = resolve(served, name)
            out.add(res.group_resource if res is not None else canonical_resource(name))
        return out

    inc, exc = named(include), named(exclude)
    return sorted(kind for kind in kinds if (not inc or "*" in inc or kind in inc) and kind not in exc)


def wanted(kinds_held: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """Of the custom kinds a backup's inventory holds, those a restore with these resource
    names brings back (names as the inventory spells them, 'services.serving.knative.dev', or
    its plural.group; a short name cannot be told without the CRD, so it counts as a match
    only when spelt as the kind)."""
    inc = {canonical_resource(n) for n in include}
    exc = {canonical_resource(n) for n in exclude}
    return [k for k in kinds_held if (not inc or "*" in inc or k in inc) and k not in exc]


def list_names(
    k: Kube,
    namespace: str,
    kind: str,
    label_selector: str | None = None,
    backed_up: bool = False,
    served: dict[str, CustomKind] | None = None,
) -> list[str] | None:
    """Sorted names of the custom resources of `kind` in `namespace` (metadata only), or None when
    the cluster does not serve that kind (its CRD is missing). `served`: served_kinds(k), when
    the caller has it (one discovery for many lists)."""
    found = (served if served is not None else served_kinds(k)).get(kind)
    if found is None:
        return None
    what = f"list {kind} in {namespace}"
    try:
        resp = k.call(
            what,
            k.custom.list_namespaced_custom_object,
            found.group,
            found.version,
            namespace,
            found.plural,
            label_selector=label_selector or None,
            _headers=METADATA_ONLY,
            _preload_content=False,
        )
    except ConfigurationError as exc:
        if "forbidden by RBAC" not in str(exc):
            raise
        raise ConfigurationError(
            f"{what}: forbidden by RBAC. Velero backs up every custom resource of the namespace, so "
            f"the inventory must list them to verify a restore: add a rule to the flows' Role in "
            f"deployments/k8s/rbac.yaml (apiGroups: [{found.group}], resources: [{found.plural}], "
            f"verbs: [list]; docs/kubernetes.md), or leave the kind out of the backup with "
            f"exclude_resources: [{kind}] on the Velero target block"
        ) from None
    return listed_names(resp.data, what, backed_up)


def missing_crd_hint(kinds: set[str]) -> str:
    """What to do about custom resources a restore did not bring back because the cluster does
    not serve their kind."""
    return (
        f" The cluster serves no {sorted(kinds)}: their CustomResourceDefinition is missing, so "
        "Velero skipped them (a restore of some namespaces leaves the cluster-scoped CRDs out). "
        "Restore the CRD first: restore again with include_cluster_resources=true (the backup "
        "holds the CRDs of the custom resources it took, unless it was taken with "
        "include_cluster_resources=false), or install the operator that provides it (e.g. Knative "
        "Serving's CRDs), then restore these namespaces again."
    )
