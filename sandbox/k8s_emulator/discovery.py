"""API discovery as the kube-apiserver serves it, and resource names resolved from it as
client-go's restmapper does.

- Paths (k8s.io/apiserver pkg/endpoints/discovery): `/api` (APIVersions), `/api/v1`
  (APIResourceList), `/apis` (APIGroupList, the groups in priority order, core excluded),
  `/apis/<group>` (APIGroup), `/apis/<group>/<version>` (APIResourceList). A trailing slash is
  the same path. velero.io is served only while Velero's CRDs are installed. They are
  non-resource URLs for RBAC (RequestInfoFactory: fewer than three parts after the prefix), which
  the bootstrap ClusterRole system:discovery grants every authenticated user (seeding.py).
- Each resource has its `name` (plural), `singularName`, `namespaced`, `kind`, `verbs` and the
  `shortNames` the real server gives it; subresources are listed as `<plural>/<sub>`.
- `resolve` is restmapper.NewShortcutExpander over NewDiscoveryRESTMapper, i.e. what kubectl and
  Velero's discovery helper (pkg/discovery/helper.go ResourceFor) do with a name such as 'cm',
  'ConfigMap', 'configmap', 'configmaps' or 'deployments.apps': parsed as `resource[.group]`
  (schema.ParseGroupResource), a short name expanded (as spelt: 'CM' is none), then, lower-cased,
  matched against plurals and singulars (the lower-case kind), the core group first, then
  /apis's order.
- The custom resources of established CRDs (crds.py) are served and resolved like the built-in
  ones (their group after the built-in groups), with the CRD's short names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sandbox.k8s_emulator.store import RESOURCES, Resource

# the real server's short names (kubectl api-resources) for the kinds the emulator serves
SHORT_NAMES = {
    "namespaces": ["ns"],
    "persistentvolumes": ["pv"],
    "persistentvolumeclaims": ["pvc"],
    "configmaps": ["cm"],
    "services": ["svc"],
    "pods": ["po"],
    "serviceaccounts": ["sa"],
    "deployments": ["deploy"],
    "storageclasses": ["sc"],
    "backupstoragelocations": ["bsl"],
}
SUBRESOURCES = {
    "namespaces": ["finalize", "status"],
    "persistentvolumes": ["status"],
    "persistentvolumeclaims": ["status"],
    "services": ["status"],
    "pods": ["log", "status"],
    "deployments": ["scale", "status"],
    "serviceaccounts": ["token"],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# /apis lists groups by priority: the built-in ones by their groupPriorityMinimum (apps 17800,
# rbac 17000, storage 16800, apiextensions 16700), then those of CRDs (velero.io among them),
# which all have 1000, by name (kube-aggregator's apiservice sorting)
GROUP_ORDER = ["apps", "rbac.authorization.k8s.io", "storage.k8s.io", "apiextensions.k8s.io"]
Custom = Sequence[Resource]  # the custom resources the established CRDs serve (crds.served)


def _served(installed: bool, custom: Custom = ()) -> list[Resource]:
    builtin = [r for r in RESOURCES if installed or r.group != "velero.io"]
    taken = {(r.group_version, r.plural) for r in builtin}
    return builtin + [r for r in custom if (r.group_version, r.plural) not in taken]


def _priority(group_version: str) -> tuple[int, str]:
    group = group_version.split("/")[0]
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def _group_versions(installed: bool, custom: Custom = ()) -> list[str]:
    """The API groups' versions in priority order, core ("v1") first."""
    present = {r.group_version for r in _served(installed, custom)}
    named = sorted((gv for gv in present if "/" in gv), key=_priority)
    return ["v1", *named]


def _resource_list(group_version: str, installed: bool, custom: Custom = ()) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for res in _served(installed, custom):
        if res.group_version != group_version:
            continue
        entry: dict[str, Any] = {
            "name": res.plural,
            "singularName": res.kind.lower(),
            "namespaced": res.namespaced,
            "kind": res.kind,
            "verbs": VERBS,
        }
        shorts = _short_names(res)
        if shorts:
            entry["shortNames"] = shorts
        items.append(entry)
        subs = (["status"] if res.status_declared else []) if res.custom else SUBRESOURCES.get(res.plural, [])
        for sub in subs:
            kind = "Scale" if sub == "scale" else res.kind
            items.append(
                {
                    "name": f"{res.plural}/{sub}",
                    "singularName": "",
                    "namespaced": res.namespaced,
                    "kind": kind,
                }
                | {"verbs": ["get", "patch", "update"]}
            )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items}


def _short_names(res: Resource) -> list[str]:
    return list(res.short_names) if res.custom else SHORT_NAMES.get(res.plural, [])


def _group(group_version: str) -> dict[str, Any]:
    name, _, version = group_version.partition("/")
    gv = {"groupVersion": group_version, "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def is_discovery(path: str) -> bool:
    """`/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>` (a non-resource URL)."""
    parts = [p for p in path.split("/") if p]
    return (parts[:1] == ["api"] and len(parts) <= 2) or (parts[:1] == ["apis"] and len(parts) <= 3)


def serve(path: str, installed: bool, custom: Custom = ()) -> dict[str, Any] | None:
    """The discovery document at `path`, or None (404) for a group or version not served."""
    parts = [p for p in path.split("/") if p]
    versions = _group_versions(installed, custom)
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if parts == ["api", "v1"]:
        return _resource_list("v1", installed, custom)
    if parts == ["apis"]:
        groups = [_group(gv) for gv in versions if "/" in gv]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if len(parts) == 2:
        found = [gv for gv in versions if gv.split("/")[0] == parts[1] and "/" in gv]
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(found[0])} if found else None
    if len(parts) == 3 and f"{parts[1]}/{parts[2]}" in versions:
        return _resource_list(f"{parts[1]}/{parts[2]}", installed, custom)
    return None


def resolve(name: str, installed: bool = True, custom: Custom = ()) -> Resource | None:
    """The resource `name` means (restmapper: short names expanded, plural or singular, with
    an optional `.group`, the core group first), or None when the cluster serves no such one."""
    resource, _, group = name.partition(".")  # schema.ParseGroupResource: case kept
    versions = _group_versions(installed, custom)
    ordered = sorted(_served(installed, custom), key=lambda r: versions.index(r.group_version))
    # ShortcutExpander, case-sensitive: a short name of a resource in the named group (any group
    # when none is named) is its plural and group, unless the name is a resource's own plural or
    # singular; then DefaultRESTMapper lower-cases the resource (coerceResourceForMatching)
    if not any(resource in (r.plural, r.kind.lower()) and group in ("", r.group) for r in ordered):
        for res in ordered:
            if resource in _short_names(res) and group in ("", res.group):
                resource, group = res.plural, res.group
                break
    resource = resource.lower()
    for res in ordered:
        if resource in (res.plural, res.kind.lower()) and group in ("", res.group):
            return res
    return None
