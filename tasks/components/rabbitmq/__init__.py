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
    metadata_differences,
    q,
    vhost_access,
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
    restored_differences,
    vhost_definitions,
    without_movers,
    without_own_globals,
)
from tasks.components.rabbitmq.drill import drill, drill_cleanup
from tasks.components.rabbitmq.importing import attach_written, import_definitions
from tasks.components.rabbitmq.movers import broker_identity, decide, leave_out, recorded_identity
from tasks.components.rabbitmq.prechecks import (
    check_restore,
    narrow,
    only_plan,
    refuse_before_restore,
    self_lockout,
)
from tasks.components.rabbitmq.written import (
    COMPARED,
    beyond_backup,
    compare,
    importable,
    report_note,
    snapshot,
)
from tasks.components.rabbitmq.written import wrote as _wrote
from tasks.errors import BadInput, IntegrityError, target_untouched
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
    access: dict[str, dict[str, list]] = {}
    with connect(target) as client:
        overview = _get(target, client, "/overview", "read the overview") or {}
        # which broker this is: a restore elsewhere leaves its shovels and federation out (movers.py)
        identity = broker_identity(target, client)
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
            access[vhost] = vhost_access(target, client, vhost)
            for kind, n in counts({**doc, **access[vhost]}).items():
                totals[kind] += n
            totals["vhosts"] += 1
            objects[name] = vhost
        backed_up = target.vhosts or [v["name"] for v in doc.get("vhosts") or []]
        metadata = vhost_metadata(target, client, backed_up)
    session.engine.update(
        {
            "rabbitmq_version": overview.get("rabbitmq_version"),
            "broker": identity,
            "scope": "vhosts" if target.vhosts else "broker",
            "vhosts": target.vhosts,
            "objects": objects,
            "counts": totals,
            "vhost_metadata": metadata,
            **({"access": access} if target.vhosts else {}),
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
    only: list[str] | None = Field(
        default=None,
        description="import only these definitions of the backup, named as a restore's report names "
        "them (`overwritten`): what a rollback puts back, and nothing the restore left alone",
    )
    import_message_movers: bool | None = Field(
        default=None,
        description="shovels, federation upstreams and federation policy keys: None imports them only "
        "into the broker the backup was taken from; true also into another (production's replacement "
        "after a disaster); false never",
    )


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


def _access_doc(docs: dict[str | None, dict[str, Any]]) -> dict[str, Any] | None:
    """The permissions a per-vhost backup recorded on its vhosts, as a broker document holds them."""
    kinds = ("permissions", "topic_permissions")
    out = {k: [i for doc in docs.values() for i in doc.get(k) or []] for k in kinds}
    return out if any(out.values()) else None


def restore(
    target: RabbitMQTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    importing: list[bool] = []  # set as the import starts: from then on the broker may have changed
    try:
        return _restore(target, manifest, store, options, importing)
    except Exception as exc:
        if not importing:  # refused (or failed) before its import: a rollback must find nothing to undo
            target_untouched(exc)
        raise


def _restore(
    target: RabbitMQTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions, importing: list
) -> dict[str, Any]:
    check_restore(target, manifest, store, options)
    docs = narrow(_load(store, manifest), options.only)
    plan, left_out = _plan(docs, options)
    broker_wide = None in docs and not options.vhost
    backed_up = manifest.engine.get("vhost_metadata") or {}  # older backups have none
    meta = {v: backed_up.get(options.vhost or v) for v in plan}
    # permissions: a broker backup's, or those a per-vhost backup recorded on its vhosts
    broker = without_own_globals(docs.get(None)) or _access_doc(docs)  # never another broker's id
    access_of = [] if options.into_vhost else [options.vhost] if options.vhost else list(plan)
    with connect(target) as client:
        why = decide(
            options.import_message_movers,
            options.into_vhost,
            recorded_identity(manifest, docs),
            broker_identity(target, client),
            manifest.id,
        )
        if why is not None:  # not into the broker backed up: no shovel or federation moves its messages
            plan, broker, movers = leave_out(plan, broker, why)
            left_out |= movers
        if options.only is not None:
            plan = only_plan(target, client, plan, options.only)
            if broker is not None:  # no vhost entry beyond those holding what is put back
                broker = {**broker, "vhosts": [e for e in broker.get("vhosts") or [] if e["name"] in plan]}
        refuse_before_restore(target, client, plan, broker if broker_wide else None)
        # what the restore writes is what differs after it from before: the report says it, a
        # restore that wrote nothing is `nothing restored`, and a rollback puts back exactly that
        access_of = (
            [] if broker_wide else [v for v in access_of if v in plan or _vhost_exists(target, client, v)]
        )
        wanted = importable(plan, broker, broker_wide, access_of)
        before = snapshot(target, client, wanted)
        importing.append(True)
        try:
            created, access, skipped = import_definitions(
                target, client, plan, meta, broker, broker_wide, access_of
            )
        except Exception as exc:
            attach_written(exc, target, client, wanted, before)
            raise
        done = compare(before, snapshot(target, client, wanted))
        # a rollback (`only`) puts back a part on purpose: what else is there is not its business
        beyond = None if options.only is not None else beyond_backup(
            target, client, {v: vhost_definitions(docs, options.vhost or v) for v in plan},
            {v: broker for v in access_of}, docs[None] if broker_wide else None,
        )  # fmt: skip
        # an import sets a vhost's description and tags only when it creates it: say what differs
        kept = [] if options.only is not None else [
            d for v in plan if v not in created
            for d in metadata_differences(target, client, v, backed_up.get(options.vhost or v))
        ]  # fmt: skip
        missing = [d for vhost, defs in plan.items() for d in differences(target, client, vhost, defs, False)]
        missing += [
            d
            for v in (plan if broker_wide else created)
            for d in metadata_differences(target, client, v, meta[v])
        ]
        if broker_wide or access:
            missing += broker_differences(target, client, broker if broker_wide else access)
        missing += restored_differences(target, client, plan, broker if broker_wide else None)
    if missing:
        exc = IntegrityError(
            f"definitions imported but not all present as backed up: {'; '.join(missing[:20])}"
        )
        exc.partial_report = done  # type: ignore[attr-defined]
        raise exc
    return {
        "restored_vhosts": {v: {k: len(defs[k]) for k in VHOST_KINDS} for v, defs in plan.items()},
        "created_vhosts": created,
        "broker_wide": broker_wide,
        **done,
        **({} if beyond is None else {"not_in_backup": beyond}),
        **({"differs_from_backup": kept} if kept else {}),
        **report_note(done, beyond),
        **({"permissions_not_restored": skipped} if skipped else {}),
        **({"not_imported": left_out} if left_out else {}),
        **(
            {"warning": MOVERS_WARNING.format(sorted(left_out))}
            if left_out and not options.into_vhost
            else {}
        ),
        "verified": "every vhost, queue, exchange, binding, policy and runtime parameter (vhost limits, "
        "shovels, federation upstreams) the restore imported exists with the same properties; every "
        "vhost the restore created has its description, tags and default queue type; a whole-broker "
        "restore also has every user, permission, topic permission and global parameter back; what "
        "the scope holds beyond the backup is in `not_in_backup`",
        "compared": COMPARED,
        "messages": MESSAGES_NOTE,
    }


MOVERS_WARNING = (
    "LEFT OUT, not imported: {} (shovels, federation upstreams, federation policy keys: they would "
    "move the messages of the broker backed up into this one; see `not_imported`). If this broker "
    "replaces the one backed up, restore again with import_message_movers: true"
)


def wrote(options: RestoreOptions, report: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """What a restore wrote, from its report: {"created": [...], "overwritten": [...]}, the
    definitions of its scope that differ after its import from before it (written.py). None when
    it cannot tell (no report: it failed before it could say, or its run died)."""
    return _wrote(report)


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
    "wrote",
]
