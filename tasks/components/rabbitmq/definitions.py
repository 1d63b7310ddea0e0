"""Definitions as the store holds them (one document, or one per vhost), and how they differ
from each other or from what the broker holds now.
"""

from __future__ import annotations

import json
import re
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
    # a per-vhost backup's permissions on each vhost, recorded beside its export (api.vhost_access)
    for vhost, access in (manifest.engine.get("access") or {}).items():
        if vhost in docs:
            docs[vhost] = {**docs[vhost], **access}
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


# the password of a URI's userinfo (`amqp://user:password@host`): a shovel's src-uri/dest-uri and
# a federation upstream's uri carry one, and a message quoting a definition would carry it on
# into the error, the log, the run's state and the restore record
_URI_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"']*):[^\s\"']*@")


def shown(value: Any) -> str:
    """`value` (a definition or one of its properties) for a message: JSON, with the password of
    every URI in it hidden."""
    return _URI_PASSWORD.sub(
        r"\1:***@", value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    )


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
                    f"live {shown(_props(live, props))} != backup {shown(_props(item, props))}"
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


# what the import applies that the other checks compare (broker_differences, differences,
# metadata_differences, restored_differences); any other list in a broker document (a newer
# RabbitMQ's) is compared item by item with the live export
_COMPARED = {*KINDS, "topic_permissions", "global_parameters"}
# generated by the broker at its first boot: it names that broker, not what a backup restores
_OWN_GLOBALS = {"internal_cluster_id"}


def without_own_globals(broker_doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A whole-broker document without the global parameters that name the broker it came from.
    RabbitMQ's import sets them like any other: a replacement broker (import_message_movers:
    true) took the lost one's internal_cluster_id, and every later backup said it came from
    there. Into the broker backed up they are its own already."""
    if broker_doc is None or "global_parameters" not in broker_doc:
        return broker_doc
    kept = [p for p in broker_doc["global_parameters"] or [] if p.get("name") not in _OWN_GLOBALS]
    return {**broker_doc, "global_parameters": kept}


def restored_differences(
    target: RabbitMQTarget,
    client: httpx.Client,
    plan: dict[str, dict[str, Any]],
    broker_doc: dict[str, Any] | None,
) -> list[str]:
    """What the import was given and the broker does not hold now: the vhosts of `plan`, their
    runtime parameters (vhost limits, shovels, federation upstreams) and, for a whole-broker
    import (`broker_doc`), its global parameters and any other kind of definition it carries."""
    out = []
    live_vhosts = {v["name"] for v in _get(target, client, "/vhosts", "list vhosts") or []}
    out += [f"vhost {v!r} is missing" for v in plan if v not in live_vhosts]
    wanted = [(v, p) for v, defs in plan.items() for p in defs.get("parameters") or []]
    if wanted:
        live = {
            (p["vhost"], p["component"], p["name"]): p.get("value")
            for p in _get(target, client, "/parameters", "list parameters") or []
        }
        for vhost, p in wanted:
            what = f"parameter {p['component']} {p['name']!r} in vhost {vhost!r}"
            if (vhost, p["component"], p["name"]) not in live:
                out.append(f"{what} is missing")
            elif (now := live[(vhost, p["component"], p["name"])]) != p.get("value"):
                out.append(f"{what}: live {shown(now)} != backup {shown(p.get('value'))}")
    if broker_doc is None:
        return out
    globals_ = [p for p in broker_doc.get("global_parameters") or [] if p["name"] not in _OWN_GLOBALS]
    if globals_:
        live = {
            p["name"]: p.get("value")
            for p in _get(target, client, "/global-parameters", "list global parameters") or []
        }
        for p in globals_:
            if p["name"] not in live:
                out.append(f"global parameter {p['name']!r} is missing")
            elif live[p["name"]] != p.get("value"):
                what = f"global parameter {p['name']!r}"
                out.append(f"{what}: live {shown(live[p['name']])} != backup {shown(p.get('value'))}")
    others = [k for k, v in broker_doc.items() if isinstance(v, list) and v and k not in _COMPARED]
    if others:
        export = _get(target, client, "/definitions", "export definitions") or {}
        for kind in others:
            missing = [i for i in broker_doc[kind] if i not in (export.get(kind) or [])]
            out += [f"{kind} {shown(i)[:200]} is missing or different" for i in missing]
    return out


# runtime-parameter components that a plugin registers: without it, the import fails with
# "component ... not found" after it has imported users and vhosts
PLUGIN_COMPONENTS = {
    "federation-upstream": "rabbitmq_federation",
    "federation-upstream-set": "rabbitmq_federation",
    "shovel": "rabbitmq_shovel",
}

# policy keys with which the federation plugin makes matching queues and exchanges consume from
# their upstreams
FEDERATION_POLICY_KEYS = frozenset({"federation-upstream", "federation-upstream-set"})


def without_movers(defs: dict[str, Any], why: str) -> tuple[dict[str, Any], dict[str, str]]:
    """`defs` without what moves messages once imported: shovels and federation upstreams (the
    PLUGIN_COMPONENTS parameters) and the federation keys of policies (a policy with nothing else
    is left out whole). For an import that is not production (a drill, a copy under into_vhost):
    there they would consume production's queues (a `src-uri` of `amqp://` is this broker) and
    move their messages into the copy. Returns (the definitions, {what was left out: why})."""
    left: dict[str, str] = {}
    parameters = []
    for p in defs.get("parameters") or []:
        if p.get("component") in PLUGIN_COMPONENTS:
            left[f"{p['component']} {p['name']!r}"] = f"not imported: {why}"
        else:
            parameters.append(p)
    policies = []
    for p in defs.get("policies") or []:
        definition = p.get("definition") or {}
        federated = sorted(k for k in definition if k in FEDERATION_POLICY_KEYS)
        rest = {k: v for k, v in definition.items() if k not in FEDERATION_POLICY_KEYS}
        if not federated:
            policies.append(p)
        elif rest:
            policies.append({**p, "definition": rest})
            left[f"policy {p['name']!r}"] = f"imported without {', '.join(federated)}: {why}"
        else:
            left[f"policy {p['name']!r}"] = f"not imported: {why}"
    return {**defs, "parameters": parameters, "policies": policies}, left
