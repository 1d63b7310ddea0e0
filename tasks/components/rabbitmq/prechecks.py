"""What a restore checks before it changes anything: an import that RabbitMQ would refuse or fail
half-way (a live object with other properties, a queue limit, a missing plugin), or one that
would lock the restore itself out of the broker. Each names what to do; nothing is changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any

import httpx

from blocks.rabbitmq import RabbitMQTarget
from blocks.store import StoreBlock
from tasks.components.rabbitmq.api import _get, _raise_for, _vhost_exists, connect, q
from tasks.components.rabbitmq.definitions import (
    FEDERATION_POLICY_KEYS,
    PLUGIN_COMPONENTS,
    VHOST_KINDS,
    _load,
    differences,
    shown,
    vhost_definitions,
    without_movers,
)
from tasks.components.rabbitmq.movers import refuse_into_copy
from tasks.components.rabbitmq.written import narrowed
from tasks.errors import BadInput
from tasks.models import Manifest

if TYPE_CHECKING:  # the options are the component's own (its __init__ imports this module)
    from tasks.components.rabbitmq import RestoreOptions


def check_restore(
    target: RabbitMQTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> None:
    """Before a checklist, safety backup or approval: a copy under into_vhost goes aside, into a
    vhost that does not exist. Into an existing one the import merged with what was there (and
    the approval form said 'aside'), and no rollback takes a merge apart."""
    if options.into_vhost and not options.vhost:
        raise BadInput("into_vhost needs vhost: say which vhost of the backup to import under the new name")
    refuse_into_copy(options.import_message_movers, options.into_vhost)
    if options.vhost:  # a vhost the backup lacks, refused before a safety backup and an approval
        held = manifest.engine.get("vhost_metadata")  # every vhost backed up (older backups: none)
        vhost_definitions({v: {} for v in held} if held else _load(store, manifest), options.vhost)
    if options.into_vhost:
        with connect(target) as client:
            if _vhost_exists(target, client, options.into_vhost):
                raise BadInput(
                    f"into_vhost {options.into_vhost!r} exists on the broker: a copy goes aside, into a "
                    "new vhost; name one that does not exist (or delete that one first), or restore "
                    f"vhost {options.vhost!r} itself without into_vhost; nothing was done"
                )


def refuse_before_restore(
    target: RabbitMQTarget,
    client: httpx.Client,
    plan: dict[str, dict[str, Any]],
    broker_doc: dict[str, Any] | None,
) -> None:
    """BadInput, before anything is changed, if importing `plan` (and, for a whole-broker restore,
    `broker_doc`) would fail half-way or lock the restore out."""
    # an existing queue/exchange/policy with other properties would make the import fail
    # half-way (RabbitMQ does not replace them)
    conflicts = [
        d
        for vhost, defs in plan.items()
        for d in [
            *differences(target, client, vhost, defs, True),
            *limit_conflicts(target, client, vhost, defs),
        ]
    ]
    if conflicts:
        raise BadInput(
            "restore refused, nothing was changed: these exist with other properties "
            "(delete them, or restore into another vhost with into_vhost): " + "; ".join(conflicts[:20])
        )
    if dangling := [
        d for vhost, defs in plan.items() for d in dangling_bindings(target, client, vhost, defs)
    ]:
        raise BadInput(
            "restore refused, nothing was changed: these bindings name a queue or exchange that neither "
            "the backup nor the broker holds (the export ran while they changed, or the backup was "
            "edited), and RabbitMQ's import would drop them without a word after importing the rest: "
            "declare them first, or restore another backup: " + "; ".join(dangling[:20])
        )
    if lacking := feature_conflicts(target, client, plan):
        raise BadInput(
            "restore refused, nothing was changed: this broker lacks what the backup uses: "
            + "; ".join(lacking[:20])
        )
    if refused := unimportable(target, client, plan):
        raise BadInput(
            "restore refused, nothing was changed: this broker refuses the backup's policies or runtime "
            "parameters (a backup of a newer RabbitMQ, or edited?), and its import would stop there "
            "half-way, the definitions before them imported: " + "; ".join(refused[:20])
        )
    if broker_doc is not None and (lockout := self_lockout(target, broker_doc)):
        raise BadInput(
            "restore refused, nothing was changed: the import would lock this restore out "
            "before it could check what it brought back: " + "; ".join(lockout)
        )


def dangling_bindings(
    target: RabbitMQTarget, client: httpx.Client, vhost: str, defs: dict[str, Any]
) -> list[str]:
    """The bindings of `defs` whose source exchange or destination is neither in `defs` nor in the
    live `vhost` (the default exchanges, "" and amq.*, are in every vhost)."""
    held = {
        "exchange": {e["name"] for e in defs.get("exchanges") or []},
        "queue": {i["name"] for i in defs.get("queues") or []},
    }

    def absent(b: dict[str, Any]) -> list[tuple[str, str]]:
        ends = [("exchange", b["source"]), (b.get("destination_type", "queue"), b["destination"])]
        return [
            (kind, name)
            for kind, name in ends
            if name not in held.get(kind, set())
            and not (kind == "exchange" and name.startswith("amq."))
            and name != ""
        ]

    wanted = {end for b in defs.get("bindings") or [] for end in absent(b)}
    for kind in {k for k, _ in wanted}:  # one listing per kind, only when the backup lacks one
        held[kind] = held.get(kind, set()) | {
            i["name"] for i in _get(target, client, f"/{kind}s/{q(vhost)}", f"list {kind}s") or []
        }
    return [
        f"binding {b['source']!r} -> {b['destination']!r} ({b.get('routing_key')!r}) in vhost {vhost!r}: "
        + ", ".join(f"{kind} {name!r} is missing" for kind, name in gone)
        for b in defs.get("bindings") or []
        if (gone := absent(b))
    ]


def _shapes(vhost_index: int, defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """One queue and one exchange of each kind (type, flags, arguments) in `defs`, under scratch
    names (the same name may have two shapes in two vhosts), and {scratch name: real name}."""
    out: dict[str, Any] = {"queues": [], "exchanges": []}
    names: dict[str, str] = {}
    for kind in out:
        seen = set()
        for item in defs.get(kind) or []:
            shape = json.dumps({k: v for k, v in item.items() if k != "name"}, sort_keys=True)
            if shape not in seen:
                seen.add(shape)
                scratch = f"klb-check-{vhost_index}-{kind[0]}{len(seen)}"
                out[kind].append({**item, "name": scratch})
                names[scratch] = item["name"]
    return out, names


def unimportable(target: RabbitMQTarget, client: httpx.Client, plan: dict[str, dict[str, Any]]) -> list[str]:
    """Why the broker refuses each vhost's queues, exchanges, policies or runtime parameters (a
    queue type or argument, a policy key, a parameter component it does not know): it validates
    each only while importing it, after what comes before. Tried in a scratch vhost of our own,
    always deleted: one queue and one exchange of each kind, then the policies and parameters;
    shovels, federation upstreams and federation keys left out (they would start moving
    messages; feature_conflicts checks their plugins)."""
    tried = [(v, without_movers(d, "")[0]) for v, d in plan.items()]
    tried = [(v, d) for v, d in tried if any(d.get(k) for k in VHOST_KINDS if k != "bindings")]
    if not tried:
        return []
    scratch = f"klb-check-{secrets.token_hex(6)}"
    _raise_for(target, client.put(f"/vhosts/{q(scratch)}", json={}), "create a scratch vhost")
    out = []
    try:
        for i, (vhost, defs) in enumerate(tried):
            shapes, names = _shapes(i, defs)
            for part in (shapes, {k: defs.get(k) or [] for k in ("policies", "parameters")}):
                resp = client.post(f"/definitions/{q(scratch)}", content=json.dumps(part))
                if resp.status_code == 400:
                    reason = str(resp.json().get("reason", resp.text)).replace(scratch, vhost)
                    for fake, real in sorted(names.items(), key=lambda n: -len(n[0])):
                        reason = reason.replace(fake, real)
                    out.append(f"vhost {vhost!r}: {shown(reason)[:300]}")
                    break
                _raise_for(target, resp, "check the backup's definitions in a scratch vhost")
    finally:
        client.delete(f"/vhosts/{q(scratch)}")
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


def feature_conflicts(
    target: RabbitMQTarget, client: httpx.Client, plan: dict[str, dict[str, Any]]
) -> list[str]:
    """Exchange types, plugin parameters and federation policies of the backup that this broker
    lacks: RabbitMQ checks them only while importing, after users and vhosts are in, and fails
    half-way."""
    wanted_types = {(e["type"], v) for v, defs in plan.items() for e in defs.get("exchanges") or []}
    wanted_plugins = {
        (PLUGIN_COMPONENTS[p["component"]], f"parameter component {p['component']!r}", v)
        for v, defs in plan.items()
        for p in defs.get("parameters") or []
        if p.get("component") in PLUGIN_COMPONENTS
    }
    wanted_plugins |= {
        ("rabbitmq_federation", f"policy {p['name']!r} ({', '.join(sorted(keys))})", v)
        for v, defs in plan.items()
        for p in defs.get("policies") or []
        if (keys := FEDERATION_POLICY_KEYS & set(p.get("definition") or {}))
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
        for plugin, what, vhost in sorted(wanted_plugins):
            lacking = [
                n["name"] for n in nodes if plugin not in {a["name"] for a in n.get("applications") or []}
            ]
            if lacking or not nodes:
                out.append(
                    f"{what} (vhost {vhost!r}) needs plugin {plugin}, not "
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


def narrow(
    docs: dict[str | None, dict[str, Any]], only: list[str] | None
) -> dict[str | None, dict[str, Any]]:
    """The backup's definitions, or with `only` those it names (refused if it holds not all)."""
    if only is None:
        return docs
    kept, absent = narrowed(docs, only)
    if absent:
        raise BadInput(
            f"the backup does not hold {absent[:20]} (`only`): restore from the backup taken before "
            "the restore that wrote them (its safety backup), or put them back by hand"
        )
    return kept


def only_plan(
    target: RabbitMQTarget, client: httpx.Client, plan: dict[str, dict[str, Any]], only: list[str]
) -> dict[str, dict[str, Any]]:
    """The vhosts of `plan` that hold something `only` names; each must exist: importing into one
    deleted since would create it, which is more than putting back what a restore overwrote."""
    kept = {v: defs for v, defs in plan.items() if any(defs.get(k) for k in VHOST_KINDS)}
    gone = [v for v in kept if not _vhost_exists(target, client, v)]
    if gone:
        raise BadInput(
            f"vhost(s) {gone} were deleted since: putting back {only[:20]} would create them again. "
            "Restore them whole (without `only`) if they are wanted; nothing was done"
        )
    return kept
