"""Strategic merge patch as the API server applies it to the built-in kinds the emulator serves
(k8s.io/apimachinery/pkg/util/strategicpatch; the patch strategies are the `patchStrategy` /
`patchMergeKey` tags of k8s.io/api's types,
https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/).

A JSON merge patch replaces every list it names; a strategic one merges the lists that declare
a merge key (containers by name, env by name, ports by containerPort, volumes by name, ...)
item by item, unions the primitive lists declared `merge` (metadata.finalizers), and replaces
the others (tolerations, args, accessModes, RBAC rules). Directives: `$patch` (replace, delete,
merge), `$deleteFromPrimitiveList/<field>`, `$retainKeys`, `$setElementOrder/<field>`.
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.k8s_emulator.errors import ApiError

# A schema maps a field to: a nested schema (a struct), (merge key, item schema) for a list
# merged by key, or SET for a list of primitives merged as a set. Fields not named: maps merge
# as in a JSON merge patch, lists are replaced.
SET = "set"
Schema = dict[str, Any]

CONTAINER: Schema = {
    "ports": ("containerPort", {}),
    "env": ("name", {}),
    "volumeMounts": ("mountPath", {}),
    "volumeDevices": ("devicePath", {}),
}
POD_SPEC: Schema = {
    "containers": ("name", CONTAINER),
    "initContainers": ("name", CONTAINER),
    "ephemeralContainers": ("name", CONTAINER),
    "volumes": ("name", {}),
    "imagePullSecrets": ("name", {}),
    "hostAliases": ("ip", {}),
    "topologySpreadConstraints": ("topologyKey", {}),
    "schedulingGates": ("name", {}),
    "resourceClaims": ("name", {}),
}
META: Schema = {"finalizers": SET, "ownerReferences": ("uid", {})}
CONDITIONS: Schema = {"conditions": ("type", {})}
WORKLOAD: Schema = {
    "metadata": META,
    "spec": {"template": {"metadata": META, "spec": POD_SPEC}},
    "status": CONDITIONS,
}
BY_KIND: dict[str, Schema] = {
    "pods": {
        "metadata": META,
        "spec": POD_SPEC,
        "status": {**CONDITIONS, "containerStatuses": ("name", {}), "podIPs": ("ip", {})},
    },
    "deployments": WORKLOAD,
    "services": {"metadata": META, "spec": {"ports": ("port", {})}},
    "serviceaccounts": {"metadata": META, "secrets": ("name", {})},
    "persistentvolumeclaims": {"metadata": META, "status": CONDITIONS},
    "namespaces": {"metadata": META, "status": CONDITIONS},
}

DIRECTIVE = "$patch"
DELETE_FROM = "$deleteFromPrimitiveList/"
ORDER = "$setElementOrder/"
RETAIN = "$retainKeys"


def strategic_merge(doc: dict[str, Any], patch: dict[str, Any], plural: str) -> dict[str, Any]:
    """`patch` applied to `doc` (an object of the built-in kind `plural`) as the API server does."""
    return _merge_map(doc, patch, BY_KIND.get(plural, {"metadata": META}))


def _merge_map(original: Any, patch: dict[str, Any], schema: Schema) -> Any:
    directive = patch.get(DIRECTIVE)
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != DIRECTIVE}
    if directive not in (None, "merge"):
        raise bad(f"Unknown patch type: {directive}")
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key == DIRECTIVE or key.startswith(ORDER):
            continue  # the order of the merged list: the emulator keeps the original order
        if key.startswith(DELETE_FROM):
            field = key[len(DELETE_FROM) :]
            if not isinstance(value, list):
                raise bad("invalid patch format for a primitive list: not a list")
            if isinstance(out.get(field), list):
                out[field] = [v for v in out[field] if v not in value]
            continue
        if key == RETAIN:
            continue
        if value is None:
            out.pop(key, None)
            continue
        merged = _merge_value(out.get(key), value, schema.get(key))
        if merged is None:
            out.pop(key, None)
        else:
            out[key] = merged
    if RETAIN in patch:  # the fields not retained are cleared (patchStrategy retainKeys)
        keep = patch[RETAIN]
        if not isinstance(keep, list):
            raise bad("invalid patch format for retainKeys: not a list")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def _merge_value(original: Any, value: Any, spec: Any) -> Any:
    if isinstance(value, dict):
        return _merge_map(original, value, spec if isinstance(spec, dict) else {})
    if not isinstance(value, list):
        return copy.deepcopy(value)
    if spec == SET:
        base = list(original) if isinstance(original, list) else []
        return base + [copy.deepcopy(v) for v in value if v not in base]
    if isinstance(spec, tuple):
        return _merge_keyed(original if isinstance(original, list) else [], value, *spec)
    return copy.deepcopy(value)  # no strategy declared: the list is replaced


def _merge_keyed(original: list[Any], patch: list[Any], key: str, item_schema: Schema) -> list[Any]:
    """Items with the key of an original item are merged into it, in place; `$patch: delete`
    removes it; new items are appended; `{"$patch": "replace"}` makes the list the patch's."""
    if any(isinstance(i, dict) and i.get(DIRECTIVE) == "replace" and len(i) == 1 for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and DIRECTIVE in i)]
    out = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(500, "InternalError", f"map: {item} does not contain declared merge key: {key}")
        at = next((n for n, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get(DIRECTIVE) == "delete":
            if at is not None:
                out.pop(at)
            continue
        if at is None:
            out.append(_merge_map({}, item, item_schema))
        else:
            out[at] = _merge_map(out[at], item, item_schema)
    return out


def bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
