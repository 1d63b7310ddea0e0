"""The RabbitMQ drill: one vhost of a backup imported into `drill-<id>`, verified, and always
deleted (a module of its own: the restore's module holds the restore)."""

from __future__ import annotations

import logging
from typing import Any

from blocks.rabbitmq import RabbitMQTarget
from blocks.store import StoreBlock
from tasks.components.rabbitmq.api import _vhost_exists, connect, import_vhost, q
from tasks.components.rabbitmq.definitions import (
    VHOST_KINDS,
    _load,
    backup_vhosts,
    differences,
    restored_differences,
    vhost_definitions,
    without_movers,
)
from tasks.errors import BadInput, IntegrityError, IsolationTaken, TransientError
from tasks.models import Manifest

log = logging.getLogger(__name__)


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
            import_vhost(
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
