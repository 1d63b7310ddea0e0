"""Retention's hold on engines that expire backups on their own (Velero's TTL).

Retention keeps some backups past their window (the newest good one, each part's last holder,
the newest recovery point's members, GFS picks: `Decision.protected`). For a component whose
engine deletes backups by itself (registry: velero_owned), keeping the catalog entry is not
enough: the engine is told to keep them too, a whole retention window past this run, so they
outlive the next runs of retention even if some fail.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tasks.components.registry import load, load_target, spec
from tasks.models import Manifest
from tasks.storage.retention_types import RetentionPlan

log = logging.getLogger(__name__)
MIN_HOLD = timedelta(days=2)  # retention runs daily: a hold always outlasts the next run


def hold_kept_backups(
    plans: dict[str, RetentionPlan],
    manifests: dict[str, list[Manifest]],
    targets: dict[str, Any],
    dry_run: bool,
) -> tuple[dict[str, dict[str, str]], str]:
    """-> (component -> backup id -> what its engine was told, or would be in a dry run; what
    failed, as one message saying what to fix, or ""). Components whose engine does not expire
    backups, or with nothing protected, are left out. `targets`: component -> its target (block
    or name); a component not in it uses its default from the environment."""
    held: dict[str, dict[str, str]] = {}
    failed: list[str] = []
    for name, plan in plans.items():
        try:
            if done := _hold(plan, manifests.get(name, []), targets.get(name), dry_run):
                held[name] = done
        except Exception as exc:  # one component's failure must not spare the others their hold
            log.error("%s: Velero may expire backups retention keeps: %s", name, exc)
            failed.append(f"{name}: {exc}")
    if not failed:
        return held, ""
    return held, (
        "Velero would expire backups retention keeps (the newest good ones): "
        + "; ".join(failed)
        + ". Fix the cause (a Velero target block named by $KLB_VELERO_TARGET, RBAC `patch` on "
        "velero.io backups, the API reachable), then run enforce-retention again"
    )


def _hold(plan: RetentionPlan, manifests: list[Manifest], target: Any, dry_run: bool) -> dict[str, str]:
    if not spec(plan.component).velero_owned:
        return {}
    kept = plan.protected(manifests)
    if not kept:
        return {}
    until = plan.now + max(plan.policy.retention, MIN_HOLD)
    if dry_run:
        return {m.id: f"would keep in Velero until at least {until:%Y-%m-%dT%H:%M:%SZ}" for m in kept}
    return load(plan.component).keep_until(load_target(plan.component, target), kept, until)
