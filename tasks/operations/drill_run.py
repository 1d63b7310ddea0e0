"""One restore drill: each component drilled into isolation, timed and measured, then the verdict.

The flow (flows/drill.py) composes these; they hold the rules: what counts as verified, covered
or failed, how RTO and RPO are measured, and when production counts as changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.components.registry import load, load_target
from tasks.errors import ConfigurationError, IsolationTaken, NotFound
from tasks.models import Manifest
from tasks.operations.drills import (
    ComponentDrill,
    DrillRecord,
    HealthCheck,
    Status,
    rpo_figures,
    run_health_check,
)
from tasks.operations.recovery import get_recovery_point, member_manifests
from tasks.operations.scope import backup_for, recovery_point_gap, scope_gap
from tasks.storage.catalog import LATEST, list_backups
from tasks.storage.health import Status as HealthStatus
from tasks.storage.health import health_of
from tasks.verbs import drill_cleanup_task, drill_task


def describe_safely(module: Any, target: Block) -> tuple[dict | None, str | None]:
    try:
        return module.describe_current_state(target), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def drill_source(
    store: StoreBlock, recovery_point: str | None, targets: dict[str, str | Block] | None = None
) -> tuple[str | None, dict[str, Manifest], dict]:
    if not recovery_point:
        return None, {}, {}
    # 'latest': the newest point whose members cover the drilled targets (operations/scope.py)
    rp = get_recovery_point(store, recovery_point, recovery_point_gap(store, targets))
    return rp.id, member_manifests(store, rp), rp.failed


def good_backups(store: StoreBlock, component: str, target: Any) -> list[Manifest]:
    """The backups the worst gap is measured between: those 'latest' could restore from. Not a
    backup known damaged (the sweep or a failed read found it bad), nor a safety or forensic copy
    (a forensic one holds the broken state), nor one narrower than the drilled target (fewer
    steps, databases, namespaces, vhosts: operations/scope.py): counted, they hid the gap they leave."""
    damaged = {i for i, h in health_of(store, component).items() if h.status == HealthStatus.damaged}
    covers = scope_gap(component, target)
    return [
        m for m in list_backups(store, component) if m.routine and m.id not in damaged and covers(m) is None
    ]


def drill_component(
    name: str,
    explicit: bool,
    target_ref: str | Block | None,
    store: StoreBlock,
    drill_id: str,
    drill_start: datetime,
    window: timedelta,
    rp: tuple[str | None, dict[str, Manifest], dict],
    checks: list[HealthCheck],
    fail_on_production_change: bool,
    rpo_target_hours: float,
) -> ComponentDrill:
    def not_configured(reason: str) -> ComponentDrill:
        return ComponentDrill(component=name, status=Status.not_covered, configured=False, reason=reason)

    def failed(reason: str, **kw: Any) -> ComponentDrill:
        return ComponentDrill(component=name, status=Status.failed, reason=reason, **kw)

    module = load(name)
    try:
        target = load_target(name, target_ref)
    except ConfigurationError as exc:
        return failed(f"not configured: {exc}") if explicit else not_configured(f"not configured: {exc}")
    rp_id, rp_manifests, rp_failed = rp
    try:
        if rp_id:
            manifest = rp_manifests.get(name)
            if manifest is None:
                why = rp_failed.get(name, "it was not configured when the point was taken")
                return failed(f"configured, but recovery point {rp_id} has no {name} backup: {why}")
        else:
            manifest = backup_for(store, LATEST, name, target)  # one that covers the whole target
    except NotFound as exc:
        return failed(f"configured, but nothing to restore: {exc}")
    age, gap = rpo_figures(manifest, good_backups(store, name, target), drill_start, window)
    result = ComponentDrill(
        component=name,
        status=Status.failed,
        backup_id=manifest.id,
        size=manifest.raw_size,
        source_time=manifest.source_time,
        rpo_age_seconds=age,
        worst_gap_seconds=gap,
        rpo_target_hours=rpo_target_hours,
    )
    before, before_err = describe_safely(module, target)
    result.restore_started = datetime.now(UTC)
    taken = False  # the drill's isolation names belong to something else: nothing of ours to clean
    try:
        report = drill_task(name, target, manifest, store, drill_id)
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {exc}"
        report, taken = None, isinstance(exc, IsolationTaken)
    finally:
        result.rto_phases["restore"] = _since(result.restore_started)
        cleanup_from = datetime.now(UTC)
        try:
            if not taken:
                drill_cleanup_task(name, target, drill_id)
            result.rto_phases["cleanup"] = _since(cleanup_from)
        except Exception as exc:
            result.status, report = Status.failed, None
            result.reason = (result.reason + "; " if result.reason else "") + f"cleanup failed: {exc}"
    if report is not None:
        result.checks = report
        # a hook may know better (PITR: the newest archived WAL, not the base backup's age)
        for field in ("rpo_age_seconds", "worst_gap_seconds"):
            if isinstance(report.get(field), int | float):
                setattr(result, field, float(report[field]))
        if report.get("covered") is False:
            result.status, result.reason = (
                Status.not_covered,
                report.get("reason", "the hook covered nothing"),
            )
        elif not report.get("verified"):
            result.reason = report.get("reason") or "the drill hook did not verify the restore"
        else:
            checked_from = datetime.now(UTC)
            result.health = [run_health_check(c, drill_id) for c in checks if c.component == name]
            result.rto_phases["health checks"] = _since(checked_from)
            bad = [h for h in result.health if not h.ok]
            # parts of the backup the hook skipped were never shown to restore: like a configured
            # component that is not covered, they fail the drill (passed, half a backup was proven)
            uncovered = report.get("not_covered") or {}
            if bad:
                result.reason = "health checks failed: " + "; ".join(f"{h.name}: {h.detail}" for h in bad)
            elif uncovered:
                result.reason = "configured but partly not verified: not covered " + ", ".join(
                    f"{k} ({v})" for k, v in uncovered.items()
                )
            else:
                result.status, result.verified_at = Status.verified, datetime.now(UTC)
                result.rto_seconds = (result.verified_at - result.restore_started).total_seconds()
    after, after_err = describe_safely(module, target)
    if before_err or after_err:
        when = "before" if before_err else "after"
        note = f"production state unknown {when} the drill ({before_err or after_err})"
        if fail_on_production_change and result.status is Status.verified:
            # the isolation check could not run: a drill that relies on it proves nothing about
            # production, so it is never PASSED on a restore alone
            result.status, result.verified_at, result.rto_seconds = Status.failed, None, None
            note = (
                f"isolation unchecked: {note}; fix what stops describing production, or run the "
                "drill with fail_on_production_change=False to accept a drill without that check"
            )
        result.reason = f"{result.reason}; {note}" if result.reason else note
    else:
        result.production_unchanged = before == after
        if not result.production_unchanged and fail_on_production_change:
            result.status, result.verified_at, result.rto_seconds = Status.failed, None, None
            result.reason = "production changed during the drill (describe_current_state before != after)"
    return result


def _since(start: datetime) -> float:
    return round((datetime.now(UTC) - start).total_seconds(), 2)


def drill_verdict(record: DrillRecord, rto_target_minutes: float) -> list[str]:
    """Every reason the drill failed (none: it passed)."""
    return [line for lines in failures_by_component(record, rto_target_minutes).values() for line in lines]


def failures_by_component(record: DrillRecord, rto_target_minutes: float) -> dict[str | None, list[str]]:
    """The drill's failures, per component; under None those of the whole drill (its RTO, its
    overall health checks, nothing covered), which every component's outcome shares."""
    out: dict[str | None, list[str]] = {None: []}

    def fail(component: str | None, line: str) -> None:
        out.setdefault(component, []).append(line)

    for c in record.components:
        if c.status is Status.failed:
            fail(c.component, f"{c.component}: {c.reason}")
    for h in record.health:
        if not h.ok:
            fail(None, f"health check {h.name}: {h.detail}")
    for c in record.components:
        if c.configured and c.status is Status.not_covered:
            fail(c.component, f"{c.component}: configured but not verified: {c.reason}")
    if not any(c.status is Status.verified for c in record.components):
        fail(None, "no component was covered: this drill proves nothing")
    if record.rto_seconds is not None and record.rto_seconds >= rto_target_minutes * 60:
        fail(None, f"RTO {record.rto_seconds / 60:.4f} min missed the target of {rto_target_minutes:g} min")
    for c in record.components:
        if c.status is Status.not_covered or c.rpo_target_hours is None:
            continue
        limit = c.rpo_target_hours * 3600
        if c.rpo_age_seconds is not None and c.rpo_age_seconds >= limit:
            fail(
                c.component,
                f"{c.component}: RPO {c.rpo_age_seconds / 3600:.2f} h (age of the restored data) "
                f"missed the target of {c.rpo_target_hours:g} h",
            )
        if c.worst_gap_seconds is not None and c.worst_gap_seconds >= limit:
            fail(
                c.component,
                f"{c.component}: worst gap between good backups {c.worst_gap_seconds / 3600:.2f} h "
                f"missed the target of {c.rpo_target_hours:g} h",
            )
    return out


def passed_for(record: DrillRecord, component: str, rto_target_minutes: float) -> bool:
    """What the component's drill metrics say: verified, and no failure of its own or of the
    whole drill (a verified restore that missed its RPO or the RTO is a failed drill)."""
    failures = failures_by_component(record, rto_target_minutes)
    verified = record.component(component).status is Status.verified
    return verified and not failures.get(component) and not failures[None]
