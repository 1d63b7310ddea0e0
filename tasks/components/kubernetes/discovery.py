"""Resource type names (a restore's `resources` / `exclude_resources`, a backup's
`include_resources` / `exclude_resources`) checked against the cluster's API discovery before
anything happens.

Velero resolves these names through its discovery helper (pkg/util/collections/
includes_excludes.go GetResourceIncludesExcludes -> helper.ResourceFor: client-go's restmapper
over the server's discovery, with its short names) and keeps a name it cannot resolve as it is,
which then matches no resource: `exclude_resources: ["secretz"]` excluded nothing and the
Secrets were restored (or backed up), `resources: ["configmap.apps"]` restored nothing of that
type, and Velero only logged it. So each name is resolved here as the restmapper does
(`resource[.group]`; a short name of a resource in that group, as spelt, unless it is a
resource's own name; then, lower-cased, a plural or singular, i.e. the lower-case kind: 'cm',
'ConfigMap', 'configmaps', 'deployments.apps' resolve, 'CM' does not; the core group first,
then the order of /apis), and a name the cluster does not serve is refused (BadInput).

Discovery (/api, /apis and their group versions) is allowed to every authenticated user by the
cluster's bootstrap ClusterRole system:discovery: deployments/k8s/rbac.yaml needs no rule for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from tasks.components.kubernetes.api import Kube, canonical_resource
from tasks.errors import BadInput, NotFound, TransientError


@dataclass(frozen=True)
class ApiResource:
    plural: str
    singular: str
    group: str
    short_names: tuple[str, ...]
    version: str = ""  # the group version it was listed under (the preferred one first)
    namespaced: bool = True
    verbs: tuple[str, ...] = ()

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _get(k: Kube, path: str, fn: Any, *args: str) -> dict[str, Any]:
    """One discovery document as JSON (raw: the typed models refuse what they do not know)."""
    resp = k.call(f"discover the API at {path}", fn, *args, _preload_content=False)
    try:
        return json.loads(resp.data)
    except ValueError:
        raise TransientError(f"discover the API at {path}: the API server sent unreadable JSON") from None


def served_resources(k: Kube) -> tuple[list[ApiResource], list[str]]:
    """-> (the resources the cluster serves, in the restmapper's priority: core, then the groups
    in /apis's order, each group's preferred version first; group versions whose discovery
    failed, e.g. an aggregated API that is down, which kubectl and Velero skip too)."""
    lists: list[tuple[str, Any, tuple[str, ...]]] = [("/api/v1", k.core.get_api_resources, ())]
    for group in _get(k, "/apis", client.ApisApi(k.api).get_api_versions).get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("groupVersion")
        versions = [v["groupVersion"] for v in group.get("versions") or []]
        for gv in sorted(versions, key=lambda gv: gv != preferred):
            lists.append((f"/apis/{gv}", k.custom.get_api_resources, tuple(gv.split("/", 1))))
    out: list[ApiResource] = []
    failed: list[str] = []
    for path, fn, args in lists:
        try:
            listed = _get(k, path, fn, *args)
        except (NotFound, TransientError):
            failed.append(path.removeprefix("/apis/").removeprefix("/api/"))
            continue
        group, _, version = (listed.get("groupVersion") or "v1").rpartition("/")
        for entry in listed.get("resources") or []:
            if "/" in entry["name"]:  # a subresource (deployments/scale)
                continue
            singular = entry.get("singularName") or str(entry.get("kind", "")).lower()
            out.append(
                ApiResource(
                    entry["name"],
                    singular,
                    group,
                    tuple(entry.get("shortNames") or ()),
                    version,
                    bool(entry.get("namespaced", True)),
                    tuple(entry.get("verbs") or ()),
                )
            )
    return out, failed


def resolve(served: list[ApiResource], name: str) -> ApiResource | None:
    """The resource `name` means, as restmapper.NewShortcutExpander(NewDiscoveryRESTMapper(...))
    resolves it for Velero and kubectl, or None."""
    resource, _, group = name.partition(".")  # schema.ParseGroupResource: case kept

    def in_group(res: ApiResource) -> bool:
        return group in ("", res.group)

    # ShortcutExpander (case-sensitive, as the server spells short names): a short name of a
    # resource in the named group, unless it is a resource's own plural or singular
    if not any(resource in (r.plural, r.singular) and in_group(r) for r in served):
        short = next((r for r in served if resource in r.short_names and in_group(r)), None)
        if short is not None:
            resource, group = short.plural, short.group
    resource = resource.lower()  # DefaultRESTMapper: coerceResourceForMatching lower-cases it
    return next((r for r in served if resource in (r.plural, r.singular) and in_group(r)), None)


def check_resource_names(k: Kube, **fields: list[str] | None) -> None:
    """BadInput naming every name in `fields` (option name -> names) that is not a resource type
    the cluster serves; nothing is asked of the cluster when no names are given."""
    if not any(fields.values()):
        return
    served, failed = served_resources(k)
    unknown = {
        field: bad
        for field, names in fields.items()
        if (bad := [n for n in names or [] if n != "*" and resolve(served, n) is None])
    }
    if not unknown:
        return
    said = "; ".join(f"{field} {names}" for field, names in unknown.items())
    partly = f" (discovery of {failed} failed: if a name is theirs, retry when they answer)" if failed else ""
    raise BadInput(
        f"{said}: not resource types this cluster serves{partly}, so Velero would ignore them "
        "(an exclusion that excludes nothing, an inclusion that includes nothing). Name each as its "
        "plural ('configmaps'), plural.group ('deployments.apps'), kind or short name ('cm'); "
        "`kubectl api-resources` lists them. Nothing was done"
    )


def as_kinds(k: Kube, names: list[str] | None) -> list[str] | None:
    """`names` as the inventory keys kinds, resolved as Velero resolves them ('ksvc' ->
    'services.serving.knative.dev', 'cm' -> 'configmaps'): planned as spelt, a short name of a
    custom kind matched no kind of the inventory while Velero restored (or excluded) that kind,
    so what it wrote went unreported and what it left out was called missing. '*' and a name
    the cluster does not serve (refused by check_resource_names) stay as given."""
    if not names:
        return names
    served, _ = served_resources(k)
    out = []
    for name in names:
        res = resolve(served, name) if name != "*" else None
        out.append(canonical_resource(res.group_resource) if res is not None else name)
    return out
