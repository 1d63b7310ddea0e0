"""Whole objects of the built-in kinds, as raw JSON: read, created and replaced as the API server
has them. The client's typed models know only the fields of their release: an object read
through one and written back loses every field they do not know (a newer API server's, an
alpha field), so a copy put in place by name would not be what the backup held."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from tasks.components.kubernetes.api import GROUPS, Kube
from tasks.errors import NotFound, TransientError

# what the API server owns in an object's metadata: set by it on every write, never copied
# (restore.go resetMetadata keeps name, namespace, labels, annotations and finalizers only)
SERVER_OWNED = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
)


def read(k: Kube, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as the API server has it (every field), or None when there is none."""
    try:
        return _request(k, f"read {plural} {namespace}/{name}", "GET", _path(plural, namespace, name))
    except NotFound:
        return None


def create(k: Kube, plural: str, namespace: str, body: dict[str, Any], dry_run: bool = False) -> None:
    what = f"create {plural} {namespace}/{body['metadata']['name']}"
    _request(k, what, "POST", _path(plural, namespace), body, dry_run)


def replace(k: Kube, plural: str, namespace: str, body: dict[str, Any], dry_run: bool = False) -> None:
    """Replace the object `body` names; its metadata.resourceVersion is the one it replaces."""
    name = body["metadata"]["name"]
    _request(k, f"replace {plural} {namespace}/{name}", "PUT", _path(plural, namespace, name), body, dry_run)


def _path(plural: str, namespace: str, name: str | None = None) -> str:
    group = GROUPS[plural]
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    tail = f"/{quote(name, safe='')}" if name else ""
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}{tail}"


def _request(
    k: Kube, what: str, method: str, path: str, body: dict[str, Any] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """One request with a raw JSON body and answer. Not through the typed methods: the client
    checks a body against its models first, and refuses a field they do not know."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    query = [("dryRun", "All")] if dry_run else []

    def send(_request_timeout: float) -> dict[str, Any]:
        request = k.api.param_serialize(
            method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = k.api.call_api(*request, _request_timeout=_request_timeout)
        resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(http_resp=resp)
        return _loaded(resp.data, what)

    return k.call(what, send)


def copy_of(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`obj` to be created in `namespace`: whole, without what the API server owns and its status."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    for key in SERVER_OWNED:
        meta.pop(key, None)
    meta["namespace"] = namespace
    out.pop("status", None)
    return out


def _loaded(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise TransientError(f"{what}: the API server sent an unreadable object") from None
    if not isinstance(obj, dict):
        raise TransientError(f"{what}: the API server sent an unreadable object")
    return obj
