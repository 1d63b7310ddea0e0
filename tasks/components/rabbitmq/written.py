"""What one RabbitMQ restore wrote to the broker: the definitions it created and those it
overwrote, from the broker's definitions export before and after its import.

An import of definitions identical to what the broker holds writes nothing, yet was recorded
`restored` and could be rolled back; and a rollback of a vhost restore re-imported the safety
backup's whole vhost, over objects the restore never touched. So the restore names every object
it may import by a key (`key`), compares the export before and after, and its rollback imports
from the safety backup exactly the objects it overwrote (`only`), or is refused.

Compared (GET /api/definitions, only what the restore imports): vhosts (with their description, tags
and default queue type from GET /vhosts: the export before 3.11 carries only a name), users (with
password hash, tags and limits), permissions, topic permissions, policies, queues, exchanges,
bindings, runtime parameters (vhost limits, operator policies, shovels, federation upstreams:
RabbitMQ exports an operator policy as a parameter of component operator_policy) and global
parameters, and any other list a newer broker exports (item by item). Not compared: messages
(not definitions), definitions the import deleted (it deletes none), and writes someone else
made to the same definitions while the import ran, which count as the restore's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from blocks.rabbitmq import RabbitMQTarget
from tasks.components.rabbitmq.api import _get, q, vhost_access, vhost_metadata
from tasks.errors import BadInput

# the broker's own, never written by an import (definitions.py _OWN_GLOBALS)
_SKIP_GLOBALS = {"internal_cluster_id"}
_VERSION_KEYS = {"rabbit_version", "rabbitmq_version", "product_name", "product_version"}
COMPARED = (
    "created and overwritten: the definitions the restore imports (every vhost, user, permission, "
    "topic permission, policy, queue, exchange, binding, runtime parameter (operator policies "
    "included) and global parameter, user limits, vhost description, tags and default queue type) "
    "that differ after the import from before it. Not seen: writes others made to the same "
    "definitions while the import ran, which count as the restore's"
)


def _canon(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def key(kind: str, item: dict[str, Any], vhost: str | None = None) -> str:
    """The name of one definition: the same for the object whatever its properties, so that an
    object whose properties changed is `overwritten`, not created. `vhost` for per-vhost
    documents, whose items carry none."""
    v = item.get("vhost", vhost)
    if kind == "vhosts":
        return f"vhost {item['name']!r}"
    if kind == "users":
        return f"user {item['name']!r}"
    if kind == "permissions":
        return f"permissions of user {item['user']!r} on vhost {v!r}"
    if kind == "topic_permissions":
        return f"topic permissions of user {item['user']!r} for exchange {item['exchange']!r} on vhost {v!r}"
    if kind in ("queues", "exchanges", "policies"):
        return f"{kind[:-1] if kind != 'policies' else 'policy'} {item['name']!r} in vhost {v!r}"
    if kind == "parameters":
        return f"parameter {item['component']} {item['name']!r} in vhost {v!r}"
    if kind == "global_parameters":
        return f"global parameter {item['name']!r}"
    if kind == "bindings":  # a binding is all identity: it is created or left, never overwritten
        ident = [item["source"], item["destination_type"], item["destination"]]
        ident += [item.get("routing_key", ""), item.get("arguments") or {}]
        return f"binding {_canon(ident)} in vhost {v!r}"
    return f"{kind} {_canon(item)}"  # a kind this code does not know: the item is its own name


def keyed(doc: dict[str, Any], vhost: str | None = None) -> dict[str, str]:
    """{key: the definition, canonical} of every definition in `doc` (a broker export, or one
    vhost's with `vhost`)."""
    out: dict[str, str] = {}
    for kind, items in doc.items():
        if kind in _VERSION_KEYS or not isinstance(items, list):
            continue
        for item in items:
            if kind == "global_parameters" and item.get("name") in _SKIP_GLOBALS:
                continue
            out[key(kind, item, vhost)] = _canon({k: v for k, v in item.items() if k != "vhost"})
    return out


def importable(
    plan: dict[str, dict[str, Any]], broker: dict[str, Any] | None, broker_wide: bool, access_of: list[str]
) -> set[str]:
    """The keys of every definition an import of `plan` (destination vhost: its definitions) may
    write: those vhosts and their objects; a whole-broker import's every definition (`broker`);
    on the vhosts `access_of`, the permissions `broker` holds (a broker backup's, or those a
    per-vhost backup recorded). Nothing else is compared, so writes made meanwhile to what the
    restore does not import are never counted as its own."""
    out = {f"vhost {v!r}" for v in plan} | {k for v, defs in plan.items() for k in keyed(defs, v)}
    if broker is not None and broker_wide:
        out |= set(keyed(broker))
    elif broker is not None and access_of:
        perms = {kind: broker.get(kind) or [] for kind in ("permissions", "topic_permissions")}
        out |= {k for k in keyed(perms) if k.endswith(tuple(f" on vhost {v!r}" for v in access_of))}
    return out


def snapshot(target: RabbitMQTarget, client: httpx.Client, wanted: set[str]) -> dict[str, str]:
    """What the broker holds now of the definitions named `wanted`, vhost metadata included."""
    doc = _get(target, client, "/definitions", "export definitions") or {}
    out = {k: v for k, v in keyed(doc).items() if k in wanted}
    names = [v["name"] for v in doc.get("vhosts") or [] if f"vhost {v['name']!r}" in wanted]
    for name, meta in vhost_metadata(target, client, names).items():
        out[f"vhost {name!r}"] = _canon({"name": name, **meta})
    return out


def compare(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """{"created": [...], "overwritten": [...]} between two snapshots of one scope. What is gone
    after is not listed: an import deletes nothing (a user's limits the restore cleared since the
    backup make that user overwritten)."""
    return {
        "created": sorted(k for k in after if k not in before),
        "overwritten": sorted(k for k in after if k in before and before[k] != after[k]),
    }


def narrowed(
    docs: dict[str | None, dict[str, Any]], only: list[str]
) -> tuple[dict[str | None, dict[str, Any]], list[str]]:
    """`docs` (a backup's, as _load returns them) with only the definitions named by `only`, and
    the vhost entries their objects are in (a vhost restore needs its vhost; existing ones keep
    their own metadata); with the names of `only` the backup does not hold."""
    wanted = set(only)
    out: dict[str | None, dict[str, Any]] = {}
    found: set[str] = set()
    for vhost, doc in docs.items():
        kept: dict[str, Any] = {}
        for kind, items in doc.items():
            if kind in _VERSION_KEYS or not isinstance(items, list):
                kept[kind] = items
                continue
            if kind == "vhosts":  # kept whole: which vhosts the backup holds, not what is imported
                kept[kind] = items
                found |= {key(kind, i) for i in items} & wanted
                continue
            picked = [i for i in items if key(kind, i, vhost) in wanted]
            found |= {key(kind, i, vhost) for i in picked}
            kept[kind] = picked
        out[vhost] = kept
    return out, sorted(wanted - found)


def refuse_unsafe_rollback(overwritten: list[str], safety_id: str) -> None:
    """BadInput when what the restore overwrote cannot be put back by an import: RabbitMQ does not
    replace a queue or exchange that exists with other properties (only deleting it would, with
    its messages), and a vhost's description and tags are set only when it is created."""
    by_hand = [k for k in overwritten if k.startswith(("queue ", "exchange ", "vhost "))]
    if by_hand:
        raise BadInput(
            f"the restore overwrote {by_hand[:20]}, which an import cannot put back (RabbitMQ keeps a "
            f"queue, exchange or vhost that exists as it is): put them back by hand from safety backup "
            f"{safety_id}; nothing was done"
        )


def wrote(report: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """What a restore that ended with `report` wrote; None when it cannot tell: no report (it
    failed before it could say, or its run died), or one from before reports said it."""
    if not report or "created" not in report or "overwritten" not in report:
        return None
    return {"created": list(report["created"]), "overwritten": list(report["overwritten"])}


ACCESS_KINDS = ("permissions", "topic_permissions")
BEYOND_NOTE = (
    "not_in_backup: definitions the broker holds in the restored scope that the backup does not "
    "(created since it was taken). An import deletes nothing, so they stay, and the scope is the "
    "backup's plus exactly these: delete them (and restore again) if it must be the backup's alone"
)


def _access_on(doc: dict[str, Any] | None, vhost: str) -> dict[str, list[Any]]:
    """The permissions and topic permissions on `vhost` that `doc` holds."""
    return {k: [i for i in (doc or {}).get(k) or [] if i.get("vhost", vhost) == vhost] for k in ACCESS_KINDS}


def beyond_backup(
    target: RabbitMQTarget,
    client: httpx.Client,
    backed_up: dict[str, dict[str, Any]],
    access: dict[str | None, dict[str, Any] | None],
    broker: dict[str, Any] | None,
) -> list[str]:
    """The keys of what the broker holds now and the backup does not: with `broker` (a whole-broker
    restore, its document), every definition of the broker; else in each destination vhost of
    `backed_up` ({vhost: the backup's definitions for it, movers included}), its definitions and,
    for the vhosts in `access` ({vhost: the document holding the backup's permissions on it}),
    the permissions and topic permissions on it."""
    if broker is not None:
        live = set(keyed(_get(target, client, "/definitions", "export definitions") or {}))
        return sorted(live - set(keyed(broker)))
    out: set[str] = set()
    for vhost, defs in backed_up.items():
        doc = _get(target, client, f"/definitions/{q(vhost)}", f"export vhost {vhost!r}") or {}
        live, held = set(keyed(doc, vhost)), set(keyed(defs, vhost))
        if vhost in access:
            live |= set(keyed(vhost_access(target, client, vhost)))
            held |= set(keyed(_access_on(access[vhost], vhost)))
        out |= live - held
    return sorted(out)


NOTHING_NOTE = (
    "the restore wrote nothing: every definition it would import was on the broker already, as "
    "backed up (what it left out is in `not_imported`). The broker is as it was and there is "
    "nothing to roll back"
)


def report_note(done: dict[str, list[str]], beyond: list[str] | None) -> dict[str, str]:
    """The report's `note`: a restore that wrote nothing, and what the broker holds beyond the backup."""
    notes = [NOTHING_NOTE] * (not (done["created"] or done["overwritten"])) + [BEYOND_NOTE] * bool(beyond)
    return {"note": ". ".join(notes)} if notes else {}
