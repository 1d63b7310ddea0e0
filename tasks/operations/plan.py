"""Restore plans (dry runs): what would be restored, where, in what order, what is there now and
whether it would be replaced or skipped, and how long it should take. Changes nothing."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import AwareDatetime, BaseModel, Field

from blocks.store import StoreBlock
from tasks.components.registry import SPECS, dr_order, load, load_target
from tasks.errors import BadInput, ConfigurationError
from tasks.models import Manifest
from tasks.operations.recovery import get_recovery_point, member_manifests
from tasks.storage.catalog import get_backup
from tasks.storage.layout import DRILLS, RESTORE_RECORD, RESTORES
from tasks.storage.records import iter_records

# Full cluster restore (runbook "Scenario 1"): the order things come back in, from the registry's
# rows, then a final verification step. Components outside it (postgres-pitr) come last.
DR_STEPS: list[tuple[str, str | None]] = [(s.dr_step, s.name) for s in SPECS.values() if s.dr_step] + [
    ("verify", None)
]
PLAN_ONLY = {s.name for s in SPECS.values() if s.plan_only}
ORDER = dr_order()

Action = Literal["create", "replace", "skip", "plan only"]


class PlanStep(BaseModel):
    order: int
    component: str
    backup_id: str | None = None
    source_time: AwareDatetime | None = None
    age_hours: float | None = None
    size: int | None = None
    target: str = Field(description="where it would go")
    current_state: dict[str, Any] | None = None
    action: Action
    reason: str
    estimated_seconds: float | None = None
    estimate_basis: str = ""


class RestorePlan(BaseModel):
    source: str = Field(description="recovery point or backup id the plan restores from")
    created_at: AwareDatetime
    steps: list[PlanStep]

    @property
    def estimated_seconds(self) -> float:
        return sum(s.estimated_seconds or 0 for s in self.steps if s.action in ("create", "replace"))

    def step(self, component: str) -> PlanStep:
        for s in self.steps:
            if s.component == component:
                return s
        raise KeyError(component)


def _target_label(target: Block) -> str:
    name = getattr(target, "_block_document_name", None)
    kind = type(target).__name__
    return f"{kind} '{name}'" if name else f"{kind} (unsaved / from the environment)"


def restore_history(store: StoreBlock) -> dict[str, list[float]]:
    """Seconds past restores and drills of each component took, oldest first."""
    out: dict[str, list[float]] = {}
    for _, rec in iter_records(store, RESTORES, "/" + RESTORE_RECORD):
        if rec.get("status") in ("restored", "rolled back") and rec.get("duration_seconds") is not None:
            out.setdefault(rec["component"], []).append(float(rec["duration_seconds"]))
    for _, rec in iter_records(store, DRILLS):
        for comp in rec.get("components", []):
            if comp.get("status") == "verified" and comp.get("rto_seconds") is not None:
                out.setdefault(comp["component"], []).append(float(comp["rto_seconds"]))
    return out


def estimate(manifest: Manifest, history: list[float]) -> tuple[float, str]:
    if history:
        recent = history[-5:]
        return statistics.median(recent), f"median of the last {len(recent)} restores/drills"
    took = (manifest.finished_at - manifest.started_at).total_seconds()
    return took, "no restore history: the backup's own duration"


def _is_empty(state: dict[str, Any]) -> bool:
    return not any(v not in (None, [], {}, "", 0) for v in state.values())


def _decide(manifest: Manifest, state: dict[str, Any]) -> tuple[Action, str]:
    current = state.get("fingerprint")
    if current is not None and manifest.fingerprint is not None and current == manifest.fingerprint:
        return "skip", "already identical: the current fingerprint equals the backup's"
    if _is_empty(state):
        return "create", "nothing there now"
    return "replace", "the current state would be replaced (restore aside, then cut over)"


def plan_step(
    order: int,
    component: str,
    manifest: Manifest | None,
    target_ref: str | Block | None,
    history: dict[str, list[float]],
    missing: str | None = None,
) -> PlanStep:
    """One line of the plan. Reads the current state; changes nothing."""
    base: dict[str, Any] = {"order": order, "component": component}
    if manifest is not None:
        base |= {
            "backup_id": manifest.id,
            "source_time": manifest.source_time,
            "age_hours": round(manifest.age() / 3600, 3),
            "size": manifest.raw_size,
        }
    try:
        module = load(component)
        target = load_target(component, target_ref)
    except ConfigurationError as exc:
        return PlanStep(**base, target="-", action="skip", reason=f"not configured: {exc}")
    if manifest is None:
        return PlanStep(**base, target=_target_label(target), action="skip", reason=missing or "no backup")
    seconds, basis = estimate(manifest, history.get(component, []))
    base |= {"target": _target_label(target), "estimated_seconds": seconds, "estimate_basis": basis}
    try:
        state = module.describe_current_state(target)
    except Exception as exc:
        state = None
        action, reason = "replace", f"current state unknown ({type(exc).__name__}: {str(exc)[:200]})"
    else:
        action, reason = _decide(manifest, state)
    if component in PLAN_ONLY:
        action, reason = "plan only", "etcd: the snapshot and its restore commands are written out"
    return PlanStep(**base, current_state=state, action=action, reason=reason)


def resolve_source(
    store: StoreBlock, recovery_point: str | None, backup_id: str | None, component: str | None = None
) -> tuple[str, dict[str, Manifest], dict[str, str]]:
    """(source label, component -> manifest, component -> why it has no backup)."""
    if recovery_point and backup_id:
        raise BadInput("give a recovery point or a backup id, not both")
    if backup_id:
        manifest = get_backup(store, backup_id, component)
        return manifest.id, {manifest.component: manifest}, {}
    if recovery_point:
        rp = get_recovery_point(store, recovery_point)
        missing = {c: f"failed in recovery point {rp.id}: {e}" for c, e in rp.failed.items()}
        return rp.id, member_manifests(store, rp), missing
    raise BadInput("say what to restore: a recovery point ('latest' or an id) or a backup id")


def build_plan(
    store: StoreBlock,
    recovery_point: str | None = None,
    backup_id: str | None = None,
    components: list[str] | None = None,
    targets: dict[str, str | Block] | None = None,
) -> RestorePlan:
    unknown = [c for c in components or [] if c not in SPECS]
    if unknown:
        raise BadInput(f"unknown components {unknown}: choose from {', '.join(SPECS)}")
    source, manifests, missing = resolve_source(store, recovery_point, backup_id)
    names = list(manifests) if backup_id else [c for c in ORDER if c in (components or ORDER)]
    history = restore_history(store)
    steps = [
        plan_step(
            i + 1,
            name,
            manifests.get(name),
            (targets or {}).get(name),
            history,
            missing.get(name, f"not in {source}"),
        )
        for i, name in enumerate(names)
    ]
    return RestorePlan(source=source, created_at=datetime.now(UTC), steps=steps)


def plan_markdown(plan: RestorePlan, title: str = "Restore plan") -> str:
    out = [
        f"# {title}: {plan.source}",
        "",
        f"Dry run made {plan.created_at.isoformat()}. Nothing was changed. "
        f"Estimated duration: {plan.estimated_seconds / 60:.1f} min.",
        "",
        "| # | component | backup | data age | to | now there | action | estimate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in plan.steps:
        now = "-" if s.current_state is None else _short(s.current_state)
        age = "-" if s.age_hours is None else f"{s.age_hours:.2f} h"
        est = "-" if s.estimated_seconds is None else f"{s.estimated_seconds:.1f} s ({s.estimate_basis})"
        out.append(
            f"| {s.order} | {s.component} | {s.backup_id or '-'} | {age} | {s.target} | {now} | "
            f"**{s.action}**: {s.reason.replace('|', '/')[:200]} | {est} |"
        )
    return "\n".join(out) + "\n"


def _short(state: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in state.items())
    return text.replace("|", "/")[:160]
