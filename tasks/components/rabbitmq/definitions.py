"""Definitions as the store holds them (one document, or one per vhost), and how they differ
from each other or from what the broker holds now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx

from blocks.rabbitmq import RabbitMQTarget
from blocks.store import StoreBlock
from tasks.components.rabbitmq.api import _get, _raise_for, q
from tasks.errors import BadInput, IntegrityError
from tasks.models import Manifest
from tasks.storage.session import read_object

KINDS = ("users", "vhosts", "permissions", "policies", "queues", "exchanges", "bindings", "parameters")
VHOST_KINDS = ("queues", "exchanges", "bindings", "policies", "parameters")
MAX_DEFINITIONS = 256 * 1024 * 1024


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {k: len(doc.get(k) or []) for k in KINDS}


def _load(store: StoreBlock, manifest: Manifest) -> dict[str | None, dict[str, Any]]:
    """{None: broker definitions} or {vhost: that vhost's definitions}, parsed only after each
    object streamed whole and matched its sha256."""
    docs: dict[str | None, dict[str, Any]] = {}
    for obj in manifest.objects:
        body = bytearray()
        for chunk in read_object(store, obj):
            body.extend(chunk)
        try:
            docs[obj.meta.get("vhost")] = json.loads(body)
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{obj.key} is not JSON definitions: {exc}") from None
    return docs


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "vhost"}


def vhost_definitions(docs: dict[str | None, dict[str, Any]], vhost: str) -> dict[str, Any]:
    """One vhost's queues, exchanges, bindings, policies and parameters, without vhost fields."""
    if vhost in docs:
        return {k: [_strip(i) for i in docs[vhost].get(k) or []] for k in VHOST_KINDS}
    broker = docs.get(None)
    if broker is None or vhost not in {v["name"] for v in broker.get("vhosts") or []}:
        raise BadInput(f"vhost {vhost!r} is not in this backup: it has {sorted(backup_vhosts(docs))}")
    return {k: [_strip(i) for i in broker.get(k) or [] if i.get("vhost") == vhost] for k in VHOST_KINDS}


def backup_vhosts(docs: dict[str | None, dict[str, Any]]) -> list[str]:
    if None in docs:
        return [v["name"] for v in docs[None].get("vhosts") or []]
    return [v for v in docs if v is not None]


QUEUE_PROPS = ("durable", "auto_delete", "arguments")
EXCHANGE_PROPS = ("type", "durable", "auto_delete", "internal", "arguments")
POLICY_PROPS = ("pattern", "apply-to", "definition", "priority")


def _props(item: dict[str, Any], props: tuple[str, ...]) -> dict[str, Any]:
    return {p: item.get(p) for p in props}


def _binding_key(b: dict[str, Any]) -> str:
    return json.dumps(
        [
            b["source"],
            b["destination"],
            b["destination_type"],
            b.get("routing_key", ""),
            b.get("arguments") or {},
        ],
        sort_keys=True,
    )


def differences(
    target: RabbitMQTarget, client: httpx.Client, vhost: str, defs: dict[str, Any], missing_ok: bool
) -> list[str]:
    """What in `defs` is absent from (unless missing_ok) or different in the live `vhost`."""
    out = []
    for kind, props, path in (
        ("queue", QUEUE_PROPS, "queues"),
        ("exchange", EXCHANGE_PROPS, "exchanges"),
        ("policy", POLICY_PROPS, "policies"),
    ):
        if not defs.get(path):
            continue
        # one listing per vhost and kind (a missing vhost lists nothing), not one GET per object
        listed = _get(target, client, f"/{path}/{q(vhost)}", f"list {kind}s") or []
        by_name = {i["name"]: i for i in listed}
        for item in defs[path]:
            live = by_name.get(item["name"])
            if live is None:
                if not missing_ok:
                    out.append(f"{kind} {item['name']!r} is missing in vhost {vhost!r}")
            elif _props(live, props) != _props(item, props):
                out.append(
                    f"{kind} {item['name']!r} in vhost {vhost!r}: "
                    f"live {_props(live, props)} != backup {_props(item, props)}"
                )
    if not missing_ok and defs.get("bindings"):
        live_bindings = {
            _binding_key(b) for b in _get(target, client, f"/bindings/{q(vhost)}", "read bindings") or []
        }
        for b in defs["bindings"]:
            if _binding_key(b) not in live_bindings:
                out.append(
                    f"binding {b['source']!r} -> {b['destination']!r} "
                    f"({b.get('routing_key')!r}) is missing in {vhost!r}"
                )
    return out


def limit_conflicts(
    target: RabbitMQTarget, client: httpx.Client, vhost: str, defs: dict[str, Any]
) -> list[str]:
    """The live vhost's max-queues limit against the queues the import would add: RabbitMQ checks
    the live limit before it imports anything else and fails the import half-way."""
    limits = _get(target, client, f"/vhost-limits/{q(vhost)}", "read vhost limits") or []
    max_queues = next((lim["value"].get("max-queues") for lim in limits if "value" in lim), None)
    if max_queues is None or max_queues < 0 or not defs.get("queues"):
        return []
    live = {i["name"] for i in _get(target, client, f"/queues/{q(vhost)}", "list queues") or []}
    new = [i["name"] for i in defs["queues"] if i["name"] not in live]
    if new and len(live) + len(new) > max_queues:
        return [
            f"vhost {vhost!r} allows {max_queues} queues (max-queues) and has {len(live)}; the backup "
            f"adds {len(new)}: raise the limit (PUT /api/vhost-limits/{q(vhost)}/max-queues) or delete queues"
        ]
    return []


def drop_newer_user_limits(target: RabbitMQTarget, client: httpx.Client, doc: dict[str, Any]) -> None:
    """Clear the limits a backed-up user has gained since the backup: RabbitMQ's import sets the
    backed-up ones but merges them with those the user has now."""
    for user in doc.get("users") or []:
        if "limits" not in user:  # exported before RabbitMQ had user limits: nothing to compare
            continue
        live = _get(target, client, f"/users/{q(user['name'])}", "read users") or {}
        for name in set(live.get("limits") or {}) - set(user["limits"]):
            resp = client.delete(f"/user-limits/{q(user['name'])}/{q(name)}")
            _raise_for(target, resp, f"clear limit {name} of user {user['name']!r} (set since the backup)")


def broker_differences(target: RabbitMQTarget, client: httpx.Client, doc: dict[str, Any]) -> list[str]:
    """Users (with their password hash, tags and limits), permissions and topic permissions of a
    broker backup missing or different live."""
    out = []
    for user in doc.get("users") or []:
        live = _get(target, client, f"/users/{q(user['name'])}", "read users")
        if live is None or live.get("password_hash") != user.get("password_hash"):
            out.append(f"user {user['name']!r} is missing or has another password")
        elif sorted(live.get("tags") or []) != sorted(user.get("tags") or []):
            out.append(f"user {user['name']!r} has tags {live.get('tags')}, backed up {user.get('tags')}")
        elif "limits" in user and (live.get("limits") or {}) != user["limits"]:
            out.append(f"user {user['name']!r} has limits {live.get('limits')}, backed up {user['limits']}")
    for perm in doc.get("permissions") or []:
        live = _get(target, client, f"/permissions/{q(perm['vhost'])}/{q(perm['user'])}", "read permissions")
        props = ("configure", "write", "read")
        if live is None or _props(live, props) != _props(perm, props):
            out.append(f"permissions of {perm['user']!r} on {perm['vhost']!r} are missing or different")
    for perm in doc.get("topic_permissions") or []:
        path = f"/topic-permissions/{q(perm['vhost'])}/{q(perm['user'])}"
        live = _get(target, client, path, "read topic permissions") or []
        props = ("exchange", "write", "read")
        if _props(perm, props) not in [_props(i, props) for i in live]:
            out.append(
                f"topic permissions of {perm['user']!r} on {perm['vhost']!r} ({perm['exchange']!r}) "
                "are missing or different"
            )
    return out


# runtime-parameter components that a plugin registers: without it, the import fails with
# "component ... not found" after it has imported users and vhosts
PLUGIN_COMPONENTS = {
    "federation-upstream": "rabbitmq_federation",
    "federation-upstream-set": "rabbitmq_federation",
    "shovel": "rabbitmq_shovel",
}


def feature_conflicts(
    target: RabbitMQTarget, client: httpx.Client, plan: dict[str, dict[str, Any]]
) -> list[str]:
    """Exchange types and plugin parameters of the backup that this broker lacks: RabbitMQ
    checks them only while importing, after users and vhosts are in, and fails half-way."""
    wanted_types = {(e["type"], v) for v, defs in plan.items() for e in defs.get("exchanges") or []}
    wanted_plugins = {
        (PLUGIN_COMPONENTS[p["component"]], p["component"], v)
        for v, defs in plan.items()
        for p in defs.get("parameters") or []
        if p.get("component") in PLUGIN_COMPONENTS
    }
    out = []
    if wanted_types:
        overview = _get(target, client, "/overview", "read the overview") or {}
        known = {t["name"] for t in overview.get("exchange_types") or []}
        for kind, vhost in sorted(t for t in wanted_types if t[0] not in known):
            out.append(
                f"exchange type {kind!r} (vhost {vhost!r}) is not enabled on this broker: enable the "
                "plugin that provides it (rabbitmq-plugins enable ...)"
            )
    if wanted_plugins:
        nodes = _get(target, client, "/nodes?columns=name,applications", "list nodes") or []
        for plugin, component, vhost in sorted(wanted_plugins):
            lacking = [
                n["name"] for n in nodes if plugin not in {a["name"] for a in n.get("applications") or []}
            ]
            if lacking or not nodes:
                out.append(
                    f"parameter component {component!r} (vhost {vhost!r}) needs plugin {plugin}, not "
                    f"running on {lacking or 'this broker'}: rabbitmq-plugins enable {plugin}"
                )
    return out


_HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


def _password_is(user: dict[str, Any], password: str) -> bool | None:
    """Whether `password` is the one the user's stored hash holds (base64 of a 4-byte salt and
    H(salt + password)); None for a hashing algorithm we do not know."""
    algorithm = _HASHES.get(user.get("hashing_algorithm") or "rabbit_password_hashing_md5")
    if algorithm is None:
        return None
    try:
        raw = base64.b64decode(user.get("password_hash") or "", validate=True)
    except ValueError:
        return False
    if len(raw) <= 4:  # no password: the user cannot log in with one
        return False
    return hmac.compare_digest(raw[4:], algorithm(raw[:4] + password.encode()).digest())


def self_lockout(target: RabbitMQTarget, doc: dict[str, Any]) -> list[str]:
    """How a broker import would lock the restore out of the broker half-way: it sets the
    target's own user back to its backed-up password and tags, and every request after the
    import (the check of what it brought back) would then be refused."""
    user = next((u for u in doc.get("users") or [] if u.get("name") == target.username), None)
    if user is None:
        return []
    out = []
    if _password_is(user, target.password.get_secret_value()) is False:
        out.append(
            f"it sets user {target.username!r} (the target's own) back to the password it had at "
            "backup time, which is not the target's password: restore with another administrator "
            "(one not in the backup, or whose password has not changed since), or set this user's "
            "password back to the backed-up one and the target's with it"
        )
    if "administrator" not in (user.get("tags") or []):
        out.append(
            f"it takes the 'administrator' tag from user {target.username!r} (the target's own): "
            "restore with another administrator"
        )
    return out
