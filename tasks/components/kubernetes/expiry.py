"""Velero's own expiry, held back for the backups our retention keeps.

Velero garbage-collects a Backup once `status.expiration` (creation + TTL) has passed
(pkg/controller/gc_controller.go), whatever our catalog says. Retention keeps some backups past
their window (the newest good one after weeks of failing backups, each part's last holder, a
recovery point's members, GFS picks): without this, Velero would delete the data under a catalog
entry that still lists it as the backup to restore. The Backup CRD has no status subresource, so
the expiration is set on the object itself (what `kubectl edit backup` does; Velero honours it,
velero-io/velero#3042), with its resourceVersion as a precondition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes.api import connect
from tasks.components.kubernetes.velero import _call
from tasks.errors import NotFound
from tasks.models import Manifest


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def keep_until(target: VeleroTarget, manifests: list[Manifest], until: datetime) -> dict[str, str]:
    """Make each backup's Velero expiration no earlier than `until`; -> backup id: what was done.
    A Velero backup already gone is reported, not an error here (the sweep records it damaged)."""
    k = connect(target.kube)
    done: dict[str, str] = {}
    for m in manifests:
        name = m.engine.get("velero_backup")
        if not name:
            done[m.id] = "no Velero backup recorded"
            continue
        try:
            cr: dict[str, Any] = _call(
                k, f"read Velero backup {name}", "get", "backups", target.namespace, name
            )
        except NotFound:
            done[m.id] = f"Velero backup {name} is gone"
            continue
        current = (cr.get("status") or {}).get("expiration")
        if not current:  # Velero never collects it: setting one would make it expire
            done[m.id] = "no expiration"
            continue
        if datetime.fromisoformat(current.replace("Z", "+00:00")) >= until:
            done[m.id] = f"expires {current}"
            continue
        patch = {
            "metadata": {"resourceVersion": cr["metadata"]["resourceVersion"]},
            "status": {"expiration": _stamp(until)},
        }
        _call(
            k, f"extend Velero backup {name}'s expiration", "patch", "backups", target.namespace, name, patch
        )
        done[m.id] = f"expiration {current} -> {_stamp(until)}"
    return done
