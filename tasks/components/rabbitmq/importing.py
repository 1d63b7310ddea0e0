"""Importing definitions into the broker: the POSTs of a restore, and what a failed one wrote."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from blocks.rabbitmq import RabbitMQTarget
from tasks.components.rabbitmq.api import _get, _raise_for, _vhost_exists, import_vhost, q, vhost_metadata
from tasks.components.rabbitmq.definitions import drop_newer_user_limits
from tasks.components.rabbitmq.written import compare, snapshot

log = logging.getLogger(__name__)


def _with_metadata(doc: dict[str, Any], meta: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The broker document with each vhost entry carrying `meta` (where known)."""
    vhosts = []
    for entry in doc.get("vhosts") or []:
        extra = meta.get(entry["name"]) or {}
        vhosts.append(
            {
                **entry,
                **extra,
                **({"metadata": {**entry["metadata"], **extra}} if "metadata" in entry else {}),
            }
        )
    return {**doc, "vhosts": vhosts}


def _restore_vhost_access(
    target: RabbitMQTarget, client: httpx.Client, broker: dict[str, Any], vhost: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The backup's permissions and topic permissions on `vhost`, put back for the users that
    exist (deleting a vhost deletes them; a per-vhost import carries none). Returns (what was put
    back, for verification; {user: why not})."""
    live_users = {u["name"] for u in _get(target, client, "/users", "list users") or []}
    put_back: dict[str, Any] = {"permissions": [], "topic_permissions": []}
    skipped: dict[str, str] = {}
    for kind, path, props in (
        ("permissions", "permissions", ("configure", "write", "read")),
        ("topic_permissions", "topic-permissions", ("exchange", "write", "read")),
    ):
        for perm in broker.get(kind) or []:
            if perm.get("vhost") != vhost:
                continue
            if perm["user"] not in live_users:
                skipped[perm["user"]] = "the user does not exist: restore the whole broker to bring it back"
                continue
            resp = client.put(f"/{path}/{q(vhost)}/{q(perm['user'])}", json={p: perm[p] for p in props})
            _raise_for(target, resp, f"set {kind} of {perm['user']!r} on vhost {vhost!r}")
            put_back[kind].append(perm)
    return put_back, skipped


def import_definitions(
    target: RabbitMQTarget,
    client: httpx.Client,
    plan: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    broker: dict[str, Any] | None,
    broker_wide: bool,
    access_of: list[str],
) -> tuple[list[str], dict[str, Any] | None, dict[str, str]]:
    """POST the definitions: (vhosts created, permissions put back on the vhosts `access_of` from
    `broker` (a broker backup's, or those a per-vhost backup recorded), {user: why not})."""
    if broker_wide and broker is not None:  # users, vhosts, permissions, global parameters at once
        created = [v for v in plan if not _vhost_exists(target, client, v)]
        # the import sets every vhost's description and tags from its entry (blank if absent):
        # created vhosts get the backed-up ones, existing vhosts keep their own
        meta |= vhost_metadata(target, client, [v for v in plan if v not in created])
        resp = client.post("/definitions", content=json.dumps(_with_metadata(broker, meta)))
        _raise_for(target, resp, "import the broker's definitions")
        drop_newer_user_limits(target, client, broker)
    else:
        created = [v for v, defs in plan.items() if import_vhost(target, client, v, defs, meta[v])]
    access: dict[str, Any] | None = None
    skipped: dict[str, str] = {}
    for vhost in access_of if broker is not None else []:
        put_back, missed = _restore_vhost_access(target, client, broker, vhost)
        access = {k: [*(access or {}).get(k, []), *put_back[k]] for k in put_back}
        skipped |= missed
    return created, access, skipped


def attach_written(
    exc: BaseException,
    target: RabbitMQTarget,
    client: httpx.Client,
    wanted: set[str],
    before: dict[str, str],
) -> None:
    """On a failed import (RabbitMQ's is not atomic: it stops at the first refused definition),
    what it wrote up to there, as the error's `partial_report`: a rollback puts back only that."""
    try:
        exc.partial_report = compare(before, snapshot(target, client, wanted))  # type: ignore[attr-defined]
    except Exception as late:  # the broker went away: the restore may have written anything
        log.warning("could not read what the failed import wrote: %s", late)
