"""CustomResourceDefinitions (apiextensions.k8s.io/v1) and the custom resources they serve, as
the apiextensions-apiserver does, as far as the project's calls need it.

- A CRD is a cluster-scoped object named `<spec.names.plural>.<spec.group>` (422 otherwise);
  `spec.group` holds a dot, `spec.scope` is Namespaced or Cluster, `spec.versions` has exactly
  one `storage` version, each with `schema.openAPIV3Schema` (apiextensions v1 requires one).
  `spec.group`, `spec.names.plural` and `spec.scope` do not change on update (the real server
  refuses a scope change and a rename changes which resource is served; here both are a 422).
- It is established at once (conditions NamesAccepted and Established True, `acceptedNames`,
  `storedVersions`): the real controller takes a moment, the project never races it.
- Its resource is served at `/apis/<group>/<storage version>/[namespaces/<ns>/]<plural>` and
  listed in discovery (plural, singular, kind, scope, short names, `<plural>/status` when
  `subresources.status` is declared). Only the storage version is served: other served versions
  would need conversion, which the project never calls.
- Custom resources are generic objects: the server sets uid, resourceVersion, creationTimestamp,
  generation (bumped when `spec` changes), apiVersion and kind. Their schema is checked cheaply:
  `type` (object, array, string, integer, number, boolean), `required`, `enum`; fields the schema
  does not declare are pruned (`x-kubernetes-preserve-unknown-fields` keeps them), or refused
  with `fieldValidation=Strict` (400 "strict decoding error", like the built-in kinds).
- Deleting a CRD deletes every custom resource it served (the `customresourcecleanup`
  finalizer's work, done at once here).
Watches are not emulated (for no resource): the project never watches.
"""

from __future__ import annotations

from typing import Any

from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.resources import CRDS, Resource
from sandbox.k8s_emulator.validation import invalid

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
TOP_LEVEL = ("apiVersion", "kind", "metadata")  # never pruned, never checked against the schema


def storage_version(crd: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage"))


def resource_of(crd: dict[str, Any]) -> Resource:
    """The resource an (established) CRD serves, at its storage version."""
    spec = crd["spec"]
    names = spec["names"]
    version = storage_version(crd)
    return Resource(
        f"{spec['group']}/{version['name']}",
        names["plural"],
        names["kind"],
        namespaced=spec["scope"] == "Namespaced",
        custom=True,
        status_declared="status" in (version.get("subresources") or {}),
        short_names=tuple(names.get("shortNames") or ()),
    )


def established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def served(store: Any) -> list[Resource]:
    """The custom resources the cluster serves now (established CRDs not being deleted)."""
    return [
        resource_of(crd)
        for crd in store.list(CRDS)
        if established(crd) and not crd["metadata"].get("deletionTimestamp")
    ]


def by_path(store: Any) -> dict[tuple[str, str], Resource]:
    return {(r.group_version, r.plural): r for r in served(store)}


def crd_of(store: Any, res: Resource) -> dict[str, Any] | None:
    return store.find(CRDS, "", f"{res.plural}.{res.group}")


def _crd_errors(crd: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group") or "", names.get("plural") or ""
    causes = []
    if "." not in group:
        causes.append(f'spec.group: Invalid value: "{group}": should be a domain with at least one dot')
    if not plural or plural != plural.lower():
        causes.append(f'spec.names.plural: Invalid value: "{plural}": a lowercase plural is required')
    if not names.get("kind"):
        causes.append("spec.names.kind: Required value")
    if crd["metadata"]["name"] != f"{plural}.{group}":
        name = crd["metadata"]["name"]
        causes.append(f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        scope = spec.get("scope")
        causes.append(f'spec.scope: Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"')
    versions = spec.get("versions") or []
    if sum(bool(v.get("storage")) for v in versions) != 1:
        causes.append("spec.versions: Invalid value: must have exactly one version marked as storage version")
    for i, version in enumerate(versions):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            causes.append(f"spec.versions[{i}].schema.openAPIV3Schema: Required value: an object schema")
    if old is not None:
        before = old.get("spec") or {}
        for field, was, now in (
            ("spec.group", before.get("group"), group),
            ("spec.names.plural", (before.get("names") or {}).get("plural"), plural),
            ("spec.scope", before.get("scope"), spec.get("scope")),
        ):
            if was != now:
                causes.append(f"{field}: Invalid value: {now!r}: field is immutable")
    return causes


def _establish(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    accepted = {"plural": names["plural"], "kind": names["kind"]}
    accepted["singular"] = names.get("singular") or names["kind"].lower()
    accepted["listKind"] = names.get("listKind") or f"{names['kind']}List"
    if names.get("shortNames"):
        accepted["shortNames"] = list(names["shortNames"])
    crd["status"] = {
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
        ],
        "acceptedNames": accepted,
        "storedVersions": [storage_version(crd)["name"]],
    }


def check(schema: dict[str, Any], value: Any, path: str, errors: list[str], unknown: list[str]) -> Any:
    """`value` checked against `schema` (type, required, enum) and pruned of undeclared fields;
    -> the pruned value. Paths of pruned fields go to `unknown`."""
    kind = schema.get("type")
    if kind in TYPES and (
        not isinstance(value, TYPES[kind]) or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        got = type(value).__name__
        errors.append(f'{path}: Invalid value: "{got}": {path} in body must be of type {kind}')
        return value
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: Unsupported value: {value!r}: supported values: {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{path}.{key}: Required value")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
        out = {}
        for key, item in value.items():
            if key in props:
                out[key] = check(props[key], item, f"{path}.{key}", errors, unknown)
            elif isinstance(schema.get("additionalProperties"), dict):
                out[key] = check(schema["additionalProperties"], item, f"{path}.{key}", errors, unknown)
            elif keep:
                out[key] = item
            else:
                unknown.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [check(schema["items"], v, f"{path}[{i}]", errors, unknown) for i, v in enumerate(value)]
    return value


def admit(store: Any, res: Resource, obj: dict[str, Any], old: dict[str, Any] | None, strict: bool) -> None:
    """What the apiextensions-apiserver checks on a write of a CRD or a custom resource; `obj`
    is changed in place (pruned; a new CRD established). Raises the API's error otherwise."""
    name = obj["metadata"].get("name", "")
    if res == CRDS:
        causes = _crd_errors(obj, old)
        if causes:
            raise invalid("CustomResourceDefinition.apiextensions.k8s.io", name, causes)
        if old is None:
            _establish(obj)
        return
    crd = crd_of(store, res)
    if crd is None:  # deleted meanwhile
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    schema = storage_version(crd)["schema"]["openAPIV3Schema"]
    errors: list[str] = []
    unknown: list[str] = []
    body = {k: v for k, v in obj.items() if k not in TOP_LEVEL}
    pruned = check(schema, body, "", errors, unknown)
    unknown = [u.lstrip(".") for u in unknown]
    if strict and unknown:
        raise ApiError(
            400,
            "BadRequest",
            f"{res.kind} in version {res.group_version.rpartition('/')[2]!r} cannot be handled as a "
            f"{res.kind}: strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown),
        )
    if errors:
        raise invalid(f"{res.kind}.{res.group}", name, [e.lstrip(".") for e in errors])
    for key in [k for k in obj if k not in TOP_LEVEL]:
        del obj[key]
    obj.update(pruned)


def removed(store: Any, crd: dict[str, Any]) -> None:
    """A CRD is gone: so is every object of its resource (called under the store's lock)."""
    try:
        res = resource_of(crd)
    except (KeyError, StopIteration):
        return
    for key in [k for k in store.objects if k[0] == res]:
        store._remove(*key)
