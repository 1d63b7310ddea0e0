"""Field selectors on list, as the API server serves them: `metadata.name` and
`metadata.namespace` for every resource, a few more per kind (pkg/registry/*/strategy.go
...ToSelectableFields: a pod's spec.nodeName or status.phase, a Secret's type, a namespace's
status.phase), terms joined by commas (all must hold), each `=`, `==` or `!=`. A field the
resource does not serve is a 400 "field label not supported", never ignored: a selector the
emulator dropped would answer with every object."""

from __future__ import annotations

from typing import Any

from sandbox.k8s_emulator.errors import ApiError

POD_FIELDS = {
    "spec.nodeName": ("spec", "nodeName"),
    "spec.restartPolicy": ("spec", "restartPolicy"),
    "spec.schedulerName": ("spec", "schedulerName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
    "spec.hostNetwork": ("spec", "hostNetwork"),
    "status.phase": ("status", "phase"),
    "status.podIP": ("status", "podIP"),
    "status.nominatedNodeName": ("status", "nominatedNodeName"),
}
# builtin plural -> selectable field -> its path in the object
KIND_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "pods": POD_FIELDS,
    "secrets": {"type": ("type",)},
    "namespaces": {"status.phase": ("status", "phase")},
}


def _value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def _terms(selector: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d` -> [(field, op, value)]; 400 for a term that is none of `=`, `==`, `!=`."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        for op in ("!=", "==", "="):
            field, found, value = term.partition(op)
            if found:
                terms.append((field.strip(), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise ApiError(400, "BadRequest", f'invalid field selector: "{term}": no operator')
    return terms


def select(
    builtin: str, namespaced: bool, items: list[dict[str, Any]], selector: str
) -> list[dict[str, Any]]:
    """The items `selector` matches; 400 for a field the resource `builtin` ('' for a custom
    resource) does not serve."""
    paths = {"metadata.name": ("metadata", "name"), **KIND_FIELDS.get(builtin, {})}
    if namespaced:
        paths["metadata.namespace"] = ("metadata", "namespace")
    terms = _terms(selector)
    for field, _, _ in terms:
        if field not in paths:
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
    return [
        item
        for item in items
        if all((_value(item, paths[field]) == value) == (op == "=") for field, op, value in terms)
    ]
