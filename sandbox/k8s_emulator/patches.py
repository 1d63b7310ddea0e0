"""PATCH bodies by content type, as the API server applies them
(https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply): JSON patch
(RFC 6902), merge patch (RFC 7386), and strategic merge patch (strategic.py), which custom resources refuse
with 415 (apiextensions-apiserver customresource_handler: "the body of the request was in an
unknown format - accepted media types include: application/json-patch+json,
application/merge-patch+json, application/apply-patch+yaml").
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.strategic import strategic_merge

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def apply_patch(doc: Any, patch: Any, content_type: str, custom: bool, plural: str = "") -> Any:
    """`patch` applied to `doc` the way `content_type` says; 415 for what the resource refuses.
    `plural`: the built-in kind, whose lists a strategic merge patch merges by key (strategic.py)."""
    kind = (content_type or "").split(";")[0].strip()
    accepted = [JSON_PATCH, MERGE_PATCH] + ([] if custom else [STRATEGIC])
    if kind not in accepted:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(accepted)}",
        )
    if kind == JSON_PATCH:
        if not isinstance(patch, list):
            raise ApiError(
                400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
            )
        return json_patch(doc, patch)
    if not isinstance(patch, dict):
        raise ApiError(
            400, "BadRequest", "json: cannot unmarshal array into Go value of type map[string]interface {}"
        )
    if kind == STRATEGIC:
        return strategic_merge(doc, patch, plural)
    return merge_patch(doc, patch)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: every list it names is replaced (strategic.py merges them by key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove/test, as strict as evanphx/json-patch (the apiserver's and
    Velero's): a path whose parent is missing, a replace, remove or test of a missing member, an
    index out of range are errors (422), never created or ignored."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise missing(op) from None
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" and kind == "add" else int(last) if last.isdigit() else -1
            if not 0 <= idx <= len(parent) - (kind != "add"):
                raise missing(op)
            if kind == "add":
                parent.insert(idx, op["value"])
            elif kind == "replace":
                parent[idx] = op["value"]
            elif kind == "remove":
                parent.pop(idx)
            elif kind == "test" and parent[idx] != op["value"]:
                raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
        elif not isinstance(parent, dict) or (kind != "add" and last not in parent):
            raise missing(op)
        elif kind in ("add", "replace"):
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[last]
        elif kind == "test" and parent[last] != op["value"]:
            raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
    return doc


def missing(op: dict[str, Any]) -> ApiError:
    return ApiError(422, "Invalid", f"{op['op']} operation does not apply: doc is missing path: {op['path']}")
