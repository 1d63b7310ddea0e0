"""Shovels and federation: what moves messages once imported, and whether a restore imports it.

A restore of production's definitions into another broker (staging, a test broker) imported
production's shovels and federation upstreams and policies: that broker then consumed
production's queues and moved their messages out. They belong only on the broker the backup was
taken from, or on the one that replaces it after a disaster (the SRE says so with
`import_message_movers: true`). Which broker a backup came from is its `internal_cluster_id`
(a global parameter each broker generates at its first boot): recorded at backup, and held by
any whole-broker backup. A cluster name is not enough: staging's is often production's.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from blocks.rabbitmq import RabbitMQTarget
from tasks.components.rabbitmq.api import _get
from tasks.components.rabbitmq.definitions import without_movers
from tasks.errors import BadInput
from tasks.models import Manifest

log = logging.getLogger(__name__)
OPTION = "import_message_movers"


def broker_identity(target: RabbitMQTarget, client: httpx.Client) -> dict[str, Any]:
    """{internal_cluster_id, cluster_name} of the broker (None where it does not say)."""
    overview = _get(target, client, "/overview", "read the overview") or {}
    own = _get(target, client, "/global-parameters/internal_cluster_id", "read the cluster id") or {}
    return {"internal_cluster_id": own.get("value"), "cluster_name": overview.get("cluster_name")}


def recorded_identity(manifest: Manifest, docs: dict[str | None, dict[str, Any]]) -> dict[str, Any]:
    """The source broker's identity as the backup holds it: recorded (since this module), or the
    `internal_cluster_id` a whole-broker backup carries among its global parameters."""
    out = dict(manifest.engine.get("broker") or {})
    if not out.get("internal_cluster_id") and None in docs:
        globals_ = docs[None].get("global_parameters") or []
        out["internal_cluster_id"] = next(
            (p.get("value") for p in globals_ if p.get("name") == "internal_cluster_id"), None
        )
    return out


def other_broker(recorded: dict[str, Any], live: dict[str, Any]) -> str | None:
    """Why the target is not (or cannot be shown to be) the broker the backup came from; None
    when it is. Unknown counts as another: importing movers there is what moves messages."""
    source = recorded.get("internal_cluster_id")
    if not source:
        return "the backup does not record which broker it was taken from (taken before this was recorded)"
    if source != live.get("internal_cluster_id"):
        return (
            f"it was taken from broker {recorded.get('cluster_name') or '?'!r} ({source}); this is "
            f"{live.get('cluster_name') or '?'!r} ({live.get('internal_cluster_id')})"
        )
    return None


def _why(reason: str, manifest_id: str) -> str:
    return (
        f"this broker is not the one backup {manifest_id} was taken from ({reason}): imported, it would "
        "consume that broker's queues and move their messages here. If this broker replaces the one "
        f"backed up, restore again with {OPTION}: true"
    )


def refuse_into_copy(option: bool | None, into_vhost: str | None) -> None:
    """A copy under into_vhost never gets them: asking for them there is refused, before anything."""
    if option and into_vhost:
        raise BadInput(
            f"{OPTION}: true with into_vhost: a copy next to production never gets shovels or federation "
            "(they would move production's messages into it); restore the vhost itself, without "
            "into_vhost, to import them. Nothing was done"
        )


def decide(
    option: bool | None,
    into_vhost: str | None,
    recorded: dict[str, Any],
    live: dict[str, Any],
    manifest_id: str,
) -> str | None:
    """Why the restore leaves the movers out, or None to import them. None (default): only into
    the broker the backup came from; True: always (production's replacement); False: never."""
    refuse_into_copy(option, into_vhost)
    if option is True:
        return None
    if option is False:
        return f"{OPTION} is false: restore again with {OPTION}: true (or unset, into the broker backed up)"
    reason = other_broker(recorded, live)
    return None if reason is None else _why(reason, manifest_id)


def leave_out(
    plan: dict[str, dict[str, Any]], broker: dict[str, Any] | None, why: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, dict[str, str]]:
    """`plan` and the whole-broker document (which a broker restore posts as it is) without
    shovels, federation upstreams and federation policy keys. Returns (plan, broker, {what was
    left out, by name and vhost: why})."""
    left: dict[str, str] = {}
    kept = {}
    for vhost, defs in plan.items():
        kept[vhost], out = without_movers(defs, why)
        left |= {f"{name} in vhost {vhost!r}": reason for name, reason in out.items()}
    if broker is not None:
        broker, _ = without_movers(broker, why)  # the same items, named above by vhost
    if left:
        log.warning("restore leaves out shovels and federation: %s", "; ".join(sorted(left)))
    return kept, broker, left
