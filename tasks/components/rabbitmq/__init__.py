"""RabbitMQ definitions through the management API: GET /api/definitions into the store, POST back.

Definitions are the broker's metadata (users, vhosts, permissions, policies, queues, exchanges,
bindings, parameters), never messages. The HTTP body streams into the store; a bounded copy is
parsed for the counts (definitions are metadata the broker itself holds in memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field

from blocks.rabbitmq import RabbitMQTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions, target_from_env
from tasks.components.rabbitmq.api import (
    _get,
    _raise_for,
    _vhost_exists,
    connect,
    create_vhost,
    metadata_differences,
    q,
    vhost_metadata,
)
from tasks.components.rabbitmq.definitions import (
    EXCHANGE_PROPS,
    KINDS,
    MAX_DEFINITIONS,
    POLICY_PROPS,
    QUEUE_PROPS,
    VHOST_KINDS,
    _load,
    backup_vhosts,
    broker_differences,
    counts,
    differences,
    drop_newer_user_limits,
    restored_differences,
    vhost_definitions,
    without_movers,
)
from tasks.components.rabbitmq.prechecks import check_restore, refuse_before_restore, self_lockout
from tasks.errors import BadInput, IntegrityError, IsolationTaken, TransientError, target_untouched
from tasks.models import Manifest
from tasks.storage.session import BackupSession

Target = RabbitMQTarget
log = logging.getLogger(__name__)
MESSAGES_NOTE = (
    "Messages are not part of definitions: restored queues are empty. Messages in flight at the "
    "time of the loss must be replayed by their producers (or recovered from a shovel/federation peer)."
)


def default_target() -> RabbitMQTarget:
    return target_from_env(RabbitMQTarget, "RabbitMQ", "KLB_RABBITMQ_TARGET")  # type: ignore[return-value]


def _stream_definitions(
    target: RabbitMQTarget, client: httpx.Client, session: BackupSession, path: str, name: str, meta: dict
) -> dict[str, Any]:
    """Stream GET `path` into the store as `name`; return the parsed definitions (bounded copy)."""
    copy = bytearray()
    with client.stream("GET", path) as resp:
        _raise_for(target, resp, f"export definitions ({path})")

        def chunks() -> Iterator[bytes]:
            for chunk in resp.iter_bytes():
                if len(copy) + len(chunk) > MAX_DEFINITIONS:
                    raise BadInput(f"definitions larger than {MAX_DEFINITIONS} bytes: back up per vhost")
                copy.extend(chunk)
                yield chunk

        session.write(name, chunks(), meta=meta)
    try:
        return json.loads(copy)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"RabbitMQ returned definitions that are not JSON: {exc}") from None


def backup(target: RabbitMQTarget, session: BackupSession) -> None:
    totals = dict.fromkeys(KINDS, 0)
    objects: dict[str, str | None] = {}
    with connect(target) as client:
        overview = _get(target, client, "/overview", "read the overview") or {}
        if target.vhosts:
            missing = [v for v in target.vhosts if not _vhost_exists(target, client, v)]
            if missing:
                raise BadInput(
                    f"unknown vhost(s) {missing} on {target.url}: fix the target's vhost filter "
                    f"(existing: {[v['name'] for v in _get(target, client, '/vhosts', 'list vhosts') or []]})"
                )
        session.source_time = datetime.now(UTC)
        if not target.vhosts:
            doc = _stream_definitions(
                target, client, session, "/definitions", "definitions.json", {"scope": "broker"}
            )
            totals = counts(doc)
            objects["definitions.json"] = None
        for i, vhost in enumerate(target.vhosts or []):
            name = f"vhost-{i:03d}.json"
            doc = _stream_definitions(
                target, client, session, f"/definitions/{q(vhost)}", name, {"scope": "vhost", "vhost": vhost}
            )
            for kind, n in counts(doc).items():
                totals[kind] += n
            totals["vhosts"] += 1
            objects[name] = vhost
        backed_up = target.vhosts or [v["name"] for v in doc.get("vhosts") or []]
        metadata = vhost_metadata(target, client, backed_up)
    session.engine.update(
        {
            "rabbitmq_version": overview.get("rabbitmq_version"),
            "scope": "vhosts" if target.vhosts else "broker",
            "vhosts": target.vhosts,
            "objects": objects,
            "counts": totals,
            "vhost_metadata": metadata,
            "messages_included": False,
        }
    )
    session.fingerprint = {"counts": totals}


def verify(target: RabbitMQTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    docs = _load(store, manifest)
    found = dict.fromkeys(KINDS, 0)
    for vhost, doc in docs.items():
        for kind, n in counts(doc).items():
            found[kind] += n
        if vhost is not None:
            found["vhosts"] += 1
    recorded = manifest.engine.get("counts")
    if recorded != found:
        raise IntegrityError(
            f"definitions of {manifest.id} do not match the manifest's counts: {recorded} != {found}"
        )
    return {"counts": found}


class RestoreOptions(StrictOptions):
    vhost: str | None = Field(default=None, description="restore only this vhost of the backup")
    into_vhost: str | None = Field(
        default=None, description="import that vhost under another name (e.g. for a drill); needs `vhost`"
    )


def _import_vhost(
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


COPY_WHY = (
    "it would consume or move the messages of production's queues (src-uri amqp:// is this broker) "
    "while the copy exists; restore the vhost itself (without into_vhost) to bring it back"
)


def _plan(
    docs: dict[str | None, dict[str, Any]], options: RestoreOptions
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({destination vhost: its definitions}, {what was left out: why}) of what to restore; the
    broker-wide part is separate. A copy under into_vhost is not production: no shovels or
    federation in it."""
    if options.into_vhost and not options.vhost:
        raise BadInput("into_vhost needs vhost: say which vhost of the backup to import under the new name")
    if options.into_vhost:
        defs, left_out = without_movers(vhost_definitions(docs, options.vhost), COPY_WHY)
        return {options.into_vhost: defs}, left_out
    if options.vhost:
        return {options.vhost: vhost_definitions(docs, options.vhost)}, {}
    return {v: vhost_definitions(docs, v) for v in backup_vhosts(docs)}, {}


def _restore_vhost_access(
    target: RabbitMQTarget, client: httpx.Client, broker: dict[str, Any], vhost: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A broker backup's permissions and topic permissions on `vhost`, put back for the users that
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


def restore(
    target: RabbitMQTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    try:
        check_restore(target, manifest, store, options)
    except BadInput as exc:  # before anything: a rollback must find nothing to undo
        raise target_untouched(exc) from None
    docs = _load(store, manifest)
    plan, left_out = _plan(docs, options)
    broker_wide = None in docs and not options.vhost
    backed_up = manifest.engine.get("vhost_metadata") or {}  # older backups have none
    meta = {v: backed_up.get(options.vhost or v) for v in plan}
    with connect(target) as client:
        refuse_before_restore(target, client, plan, docs[None] if broker_wide else None)
        if broker_wide:  # users, vhosts, permissions, global parameters and everything else at once
            created = [v for v in plan if not _vhost_exists(target, client, v)]
            # the import sets every vhost's description and tags from its entry (blank if absent):
            # created vhosts get the backed-up ones, existing vhosts keep their own
            meta |= vhost_metadata(target, client, [v for v in plan if v not in created])
            resp = client.post("/definitions", content=json.dumps(_with_metadata(docs[None], meta)))
            _raise_for(target, resp, "import the broker's definitions")
            drop_newer_user_limits(target, client, docs[None])
        else:
            created = [v for v, defs in plan.items() if _import_vhost(target, client, v, defs, meta[v])]
        access, skipped = None, {}
        if None in docs and options.vhost and not options.into_vhost:  # one vhost of a broker backup
            access, skipped = _restore_vhost_access(target, client, docs[None], options.vhost)
        missing = [d for vhost, defs in plan.items() for d in differences(target, client, vhost, defs, False)]
        missing += [
            d
            for v in (plan if broker_wide else created)
            for d in metadata_differences(target, client, v, meta[v])
        ]
        if broker_wide or access:
            missing += broker_differences(target, client, docs[None] if broker_wide else access)
        missing += restored_differences(target, client, plan, docs[None] if broker_wide else None)
    if missing:
        raise IntegrityError(
            f"definitions imported but not all present as backed up: {'; '.join(missing[:20])}"
        )
    return {
        "restored_vhosts": {v: {k: len(defs[k]) for k in VHOST_KINDS} for v, defs in plan.items()},
        "created_vhosts": created,
        "broker_wide": broker_wide,
        **({"permissions_not_restored": skipped} if skipped else {}),
        **({"not_imported": left_out} if left_out else {}),
        "verified": "every vhost, queue, exchange, binding, policy and runtime parameter (vhost limits, "
        "shovels, federation upstreams) the restore imported exists with the same properties; every "
        "vhost the restore created has its description, tags and default queue type; a whole-broker "
        "restore also has every user, permission, topic permission and global parameter back",
        "messages": MESSAGES_NOTE,
    }


def _drill_vhost(target: RabbitMQTarget | None, docs: dict[str | None, dict[str, Any]]) -> str:
    names = backup_vhosts(docs)
    if target and target.vhosts and target.vhosts[0] in names:
        return target.vhosts[0]
    if not names:
        raise BadInput("the backup holds no vhost to drill")

    def weight(v: str) -> int:
        defs = vhost_definitions(docs, v)
        return len(defs["queues"]) + len(defs["exchanges"])

    return max(names, key=weight)


def drill(target: RabbitMQTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Import one vhost's definitions into `drill-<id>`, verify, and always delete that vhost."""
    docs = _load(store, manifest)
    source = _drill_vhost(target, docs)
    drill_vhost = f"drill-{drill_id}"
    # a shovel, federation upstream or federation policy would start consuming the broker's real
    # queues the moment it is imported, and what it moved into the drill vhost is deleted with it
    defs, not_drilled = without_movers(
        vhost_definitions(docs, source),
        "it would move messages of the broker's real queues while the drill runs",
    )
    with connect(target) as client:
        if _vhost_exists(target, client, drill_vhost):
            raise IsolationTaken(f"vhost {drill_vhost!r} already exists: use a new drill id")
        try:
            _import_vhost(
                target, client, drill_vhost, defs, (manifest.engine.get("vhost_metadata") or {}).get(source)
            )
            missing = differences(target, client, drill_vhost, defs, False)
            missing += restored_differences(target, client, {drill_vhost: defs}, None)
        finally:
            resp = client.delete(f"/vhosts/{q(drill_vhost)}")
            if resp.status_code not in (204, 404):
                log.error("could not delete drill vhost %s: HTTP %s", drill_vhost, resp.status_code)
    if missing:
        raise IntegrityError(
            f"drill of {manifest.id} ({source!r} into {drill_vhost!r}): {'; '.join(missing[:20])}"
        )
    return {
        "verified": True,
        "checks": {
            "source_vhost": source,
            "drill_vhost": drill_vhost,
            **{k: len(defs[k]) for k in VHOST_KINDS},
        },
        "not_drilled": not_drilled,
    }


def drill_cleanup(target: RabbitMQTarget, drill_id: str) -> None:
    """Delete the `drill-<id>` vhost a crashed drill left."""
    with connect(target) as client:
        resp = client.delete(f"/vhosts/{q(f'drill-{drill_id}')}")
        if resp.status_code not in (204, 404):
            raise TransientError(f"could not delete vhost drill-{drill_id}: HTTP {resp.status_code}")


def describe_current_state(target: RabbitMQTarget) -> dict[str, Any]:
    with connect(target) as client:
        overview = _get(target, client, "/overview", "read the overview") or {}
        queues = _get(target, client, "/queues?columns=vhost,name,messages", "list queues") or []
        vhosts = [v["name"] for v in _get(target, client, "/vhosts", "list vhosts") or []]
    per_vhost = {
        v: {
            "queues": sum(1 for x in queues if x["vhost"] == v),
            "messages": sum(x.get("messages") or 0 for x in queues if x["vhost"] == v),
        }
        for v in vhosts
    }
    return {
        "rabbitmq_version": overview.get("rabbitmq_version"),
        "object_totals": {k: (overview.get("object_totals") or {}).get(k) for k in ("queues", "exchanges")},
        "vhosts": per_vhost,
        "note": MESSAGES_NOTE,
    }


__all__ = [
    "EXCHANGE_PROPS",
    "KINDS",
    "MAX_DEFINITIONS",
    "MESSAGES_NOTE",
    "POLICY_PROPS",
    "QUEUE_PROPS",
    "RestoreOptions",
    "Target",
    "VHOST_KINDS",
    "backup",
    "backup_vhosts",
    "broker_differences",
    "connect",
    "counts",
    "default_target",
    "describe_current_state",
    "differences",
    "drill",
    "drill_cleanup",
    "q",
    "restore",
    "self_lockout",
    "verify",
    "vhost_definitions",
]
