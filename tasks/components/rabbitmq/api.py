"""The management API over HTTP, with errors that say what to do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from blocks.rabbitmq import RabbitMQTarget
from tasks.errors import BadInput, ConfigurationError, TransientError


def q(name: str) -> str:
    """A vhost or object name as one URL path segment ('/' is %2F)."""
    return quote(name, safe="")


def _raise_for(target: RabbitMQTarget, resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    try:  # RabbitMQ says why in the body ({"error": ..., "reason": ...}): keep it in the error
        body = resp.read().decode(errors="replace")[:300]
    except httpx.StreamConsumed:
        body = ""
    if resp.status_code == 401:
        raise ConfigurationError(
            f"RabbitMQ at {target.url} refused user {target.username!r} (wrong password?): fix the "
            "target's credentials; nothing was changed"
        )
    if resp.status_code == 403:
        raise ConfigurationError(
            f"RabbitMQ user {target.username!r} may not {what}: give it the 'administrator' tag"
        )
    if resp.status_code >= 500:
        raise TransientError(f"RabbitMQ at {target.url} failed to {what}: HTTP {resp.status_code} {body}")
    raise BadInput(f"RabbitMQ refused to {what}: HTTP {resp.status_code} {body}")


@contextmanager
def connect(target: RabbitMQTarget) -> Iterator[httpx.Client]:
    try:
        with target.client() as client:
            yield client
    except httpx.ConnectError as exc:
        raise ConfigurationError(
            f"RabbitMQ management API unreachable at {target.url} ({exc}): is the broker up and the "
            "management plugin enabled (`rabbitmq-plugins enable rabbitmq_management`)?"
        ) from None
    except httpx.TimeoutException:
        raise TransientError(
            f"RabbitMQ at {target.url} did not answer in {target.timeout_seconds}s"
        ) from None


def _get(target: RabbitMQTarget, client: httpx.Client, path: str, what: str) -> Any | None:
    """JSON of a GET, or None for 404."""
    resp = client.get(path)
    if resp.status_code == 404:
        return None
    _raise_for(target, resp, what)
    return resp.json()


def _vhost_exists(target: RabbitMQTarget, client: httpx.Client, vhost: str) -> bool:
    return _get(target, client, f"/vhosts/{q(vhost)}", f"read vhost {vhost!r}") is not None


def vhost_metadata(
    target: RabbitMQTarget, client: httpx.Client, names: list[str]
) -> dict[str, dict[str, Any]]:
    """{vhost: description, tags, default queue type} of `names`, from GET /vhosts: RabbitMQ's
    definitions export before 3.11 carries only a vhost's name, and a vhost that is re-created
    without its default queue type turns quorum queues declared without x-queue-type classic."""
    live = {v["name"]: v for v in _get(target, client, "/vhosts", "list vhosts") or []}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        v = live.get(name) or {}
        meta: dict[str, Any] = {
            "description": v.get("description") or "",
            "tags": sorted(v.get("tags") or []),
        }
        if v.get("default_queue_type") not in (None, "undefined"):
            meta["default_queue_type"] = v["default_queue_type"]
        out[name] = meta
    return out


def vhost_access(target: RabbitMQTarget, client: httpx.Client, vhost: str) -> dict[str, list[Any]]:
    """The permissions and topic permissions on `vhost`: its own export (GET /definitions/{vhost})
    carries none, and deleting the vhost deletes them, so a per-vhost backup records them."""
    what = f"read the permissions on vhost {vhost!r}"
    return {
        "permissions": _get(target, client, f"/vhosts/{q(vhost)}/permissions", what) or [],
        "topic_permissions": _get(target, client, f"/vhosts/{q(vhost)}/topic-permissions", what) or [],
    }


def create_vhost(
    target: RabbitMQTarget, client: httpx.Client, vhost: str, meta: dict[str, Any] | None
) -> None:
    """Create `vhost` with the description, tags and default queue type it was backed up with."""
    body: dict[str, Any] = dict(meta or {})
    if "tags" in body:
        body["tags"] = ",".join(body["tags"])
    _raise_for(target, client.put(f"/vhosts/{q(vhost)}", json=body), f"create vhost {vhost!r}")


def metadata_differences(
    target: RabbitMQTarget, client: httpx.Client, vhost: str, meta: dict[str, Any] | None
) -> list[str]:
    """What of the backed-up `meta` the live vhost lacks."""
    if not meta:
        return []
    live = vhost_metadata(target, client, [vhost])[vhost]
    return [
        f"vhost {vhost!r}: {key} is {live.get(key)!r}, backed up as {value!r}"
        for key, value in meta.items()
        if live.get(key) != value
    ]


def import_vhost(
    target: RabbitMQTarget,
    client: httpx.Client,
    vhost: str,
    defs: dict[str, Any],
    meta: dict[str, Any] | None,
) -> bool:
    """Create the vhost if needed (with its backed-up metadata) and POST its definitions; True if
    the vhost was created."""
    created = not _vhost_exists(target, client, vhost)
    if created:
        create_vhost(target, client, vhost, meta)
    resp = client.post(f"/definitions/{q(vhost)}", content=json.dumps(defs))
    if resp.status_code >= 400 and created:  # a refused import leaves no empty vhost behind
        client.delete(f"/vhosts/{q(vhost)}")
    _raise_for(target, resp, f"import definitions into vhost {vhost!r}")
    return created
