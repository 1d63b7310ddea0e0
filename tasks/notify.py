"""Escalation: P0/P1/P2 messages to the Prefect notification blocks routed for each severity.

In-process sending is for what no flow-run state shows (e.g. retention leaving damaged backups
alone). Failed and Crashed runs are routed by Prefect automations (scripts/create_automations.py),
so they alert even when the flow process dies and no in-process hook can run.
"""

from __future__ import annotations

import logging
import os
import re
from enum import StrEnum

from prefect.blocks.core import Block

from blocks.monitoring import NotificationRouting
from tasks.errors import ConfigurationError

log = logging.getLogger(__name__)


class Severity(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"


def load_routing(ref: str | NotificationRouting | None = None) -> NotificationRouting | None:
    """The routing block: given, by name, or named by $KLB_NOTIFY_ROUTING; None = notifications off."""
    if isinstance(ref, NotificationRouting):
        return ref
    ref = ref or os.environ.get("KLB_NOTIFY_ROUTING")
    if not ref:
        return None
    try:
        return NotificationRouting.load(ref)
    except ValueError:
        raise ConfigurationError(
            f"no notification routing block named {ref!r}: create a 'klb-notification-routing' block"
        ) from None


def targets(routing: NotificationRouting, severity: Severity) -> list[str]:
    return list(getattr(routing, Severity(severity).value.lower()))


def load_notifier(ref: str) -> Block:
    if "/" not in ref:
        raise ConfigurationError(f"notification target {ref!r}: write it as '<block-type-slug>/<name>'")
    try:
        block = Block.load(ref)
    except ValueError:
        raise ConfigurationError(f"no notification block {ref!r}: create it in Prefect first") from None
    if not hasattr(block, "notify"):
        raise ConfigurationError(f"block {ref!r} is a {type(block).__name__}, not a notification block")
    return block


def notify(
    severity: Severity, subject: str, body: str, routing: str | NotificationRouting | None = None
) -> list[str]:
    """Send to every block routed for `severity`; returns those that accepted it. Never raises:
    a broken notifier is logged, and the others still get the message."""
    try:
        cfg = load_routing(routing)
    except ConfigurationError as exc:
        log.error("notifications are misconfigured: %s", exc)
        return []
    if cfg is None:
        return []
    sent = []
    for ref in targets(cfg, severity):
        try:
            load_notifier(ref).notify(body=body, subject=f"[{severity}] {subject}")
            sent.append(ref)
        except Exception as exc:
            log.error("could not notify %s (%s): %s", ref, severity, failure_text(exc))
    return sent


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def failure_text(exc: BaseException) -> str:
    """What went wrong sending a notification, without the address it was sent to: a webhook's
    URL often holds its secret (a token in the path or the query, filled in from the block's
    secrets), and httpx puts the whole URL in its errors."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = f"HTTP {status}" if isinstance(status, int) else _URL.sub("<url>", str(exc))
    return f"{type(exc).__name__}: {text[:120]}"
