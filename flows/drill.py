"""The monthly restore drill and the full cluster restore (runbook "Monthly Restore Drill
Procedure", "Full Cluster Restore", "Scenario 1: Complete Cluster Loss").

The drill restores each component into isolation through the component's own `drill` hook
(docs/components.md), so it cannot touch production by construction; it times each restore
(RTO), measures how old the restored data is and the worst gap between good backups (RPO),
checks production did not change, records the result in the store and as an artifact, and fails
when a covered component fails or a target is missed. A component without a hook, not built, or
not configured is reported "not covered", never passed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

from blocks.store import StoreBlock
from flows.common import load_store
from tasks.components.registry import SPECS, ComponentName, load, load_target
from tasks.errors import BackupError, BadInput, ComponentFailed, ConfigurationError, NotFound
from tasks.ids import new_backup_id
from tasks.metrics import record_drill
from tasks.models import Manifest
from tasks.operations.drills import (
    CheckResult,
    ComponentDrill,
    DrillRecord,
    HealthCheck,
    Status,
    drill_report_markdown,
    drill_report_text,
    list_drill_records,
    new_drill_id,
    rpo_figures,
    run_health_check,
    save_drill_record,
)
from tasks.operations.plan import DR_STEPS, ORDER, PLAN_ONLY, build_plan, plan_markdown
from tasks.operations.recovery import get_recovery_point, member_manifests
from tasks.storage.catalog import latest_backup, list_backups
from tasks.storage.layout import layout
from tasks.storage.records import get_record, put_record
from tasks.verbs import restore_task, verify_task

__all__ = ["restore_drill", "full_cluster_restore", "drill_report_text", "last_drill_report", "DrillFailed"]


class DrillFailed(BackupError):
    """The drill ran, and recoverability is NOT proven: see the record and the artifact."""


@task(task_run_name="drill-{component}", cache_policy=NO_CACHE)
def drill_task(component: str, target: Block, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict:
    """The component's drill hook: restore into isolation, verify, clean up (always)."""
    return load(component).drill(target, manifest, store, drill_id)


@task(task_run_name="drill-cleanup-{component}", cache_policy=NO_CACHE)
def drill_cleanup_task(component: str, target: Block, drill_id: str) -> None:
    """Second line of cleanup: removes anything named after the drill that a crashed hook left."""
    load(component).drill_cleanup(target, drill_id)


def _describe(module: Any, target: Block) -> tuple[dict | None, str | None]:
    try:
        return module.describe_current_state(target), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _source(store: StoreBlock, recovery_point: str | None) -> tuple[str | None, dict[str, Manifest], dict]:
    if not recovery_point:
        return None, {}, {}
    rp = get_recovery_point(store, recovery_point)
    return rp.id, member_manifests(store, rp), rp.failed


def _drill_one(
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
    def not_covered(reason: str) -> ComponentDrill:
        return ComponentDrill(component=name, status=Status.not_covered, reason=reason)

    def failed(reason: str, **kw: Any) -> ComponentDrill:
        return ComponentDrill(component=name, status=Status.failed, reason=reason, **kw)

    module = load(name)
    try:
        target = load_target(name, target_ref)
    except ConfigurationError as exc:
        return failed(f"not configured: {exc}") if explicit else not_covered(f"not configured: {exc}")
    rp_id, rp_manifests, rp_failed = rp
    try:
        if rp_id:
            manifest = rp_manifests.get(name)
            if manifest is None:
                why = rp_failed.get(name, "it was not configured when the point was taken")
                return failed(f"configured, but recovery point {rp_id} has no {name} backup: {why}")
        else:
            manifest = latest_backup(store, name)
    except NotFound as exc:
        return failed(f"configured, but nothing to restore: {exc}")
    age, gap = rpo_figures(manifest, list_backups(store, name), drill_start, window)
    result = ComponentDrill(
        component=name,
        status=Status.failed,
        backup_id=manifest.id,
        source_time=manifest.source_time,
        rpo_age_seconds=age,
        worst_gap_seconds=gap,
        rpo_target_hours=rpo_target_hours,
    )
    before, before_err = _describe(module, target)
    result.restore_started = datetime.now(UTC)
    try:
        report = drill_task(name, target, manifest, store, drill_id)
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {exc}"
        report = None
    finally:
        try:
            drill_cleanup_task(name, target, drill_id)
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
            result.health = [run_health_check(c, drill_id) for c in checks if c.component == name]
            bad = [h for h in result.health if not h.ok]
            if bad:
                result.reason = "health checks failed: " + "; ".join(f"{h.name}: {h.detail}" for h in bad)
            else:
                result.status, result.verified_at = Status.verified, datetime.now(UTC)
                result.rto_seconds = (result.verified_at - result.restore_started).total_seconds()
                uncovered = report.get("not_covered") or {}
                if uncovered:
                    result.reason = "partly: not covered " + ", ".join(
                        f"{k} ({v})" for k, v in uncovered.items()
                    )
    after, after_err = _describe(module, target)
    if before_err or after_err:
        note = f"production state unknown ({before_err or after_err})"
        result.reason = f"{result.reason}; {note}" if result.reason else note
    else:
        result.production_unchanged = before == after
        if not result.production_unchanged and fail_on_production_change:
            result.status, result.verified_at, result.rto_seconds = Status.failed, None, None
            result.reason = "production changed during the drill (describe_current_state before != after)"
    return result


def _verdict(record: DrillRecord, rto_target_minutes: float) -> list[str]:
    failures = [f"{c.component}: {c.reason}" for c in record.components if c.status is Status.failed]
    failures += [f"health check {h.name}: {h.detail}" for h in record.health if not h.ok]
    if not any(c.status is Status.verified for c in record.components):
        failures.append("no component was covered: this drill proves nothing")
    if record.rto_seconds is not None and record.rto_seconds >= rto_target_minutes * 60:
        failures.append(
            f"RTO {record.rto_seconds / 60:.4f} min missed the target of {rto_target_minutes:g} min"
        )
    for c in record.components:
        if c.status is Status.not_covered or c.rpo_target_hours is None:
            continue
        limit = c.rpo_target_hours * 3600
        if c.rpo_age_seconds is not None and c.rpo_age_seconds >= limit:
            failures.append(
                f"{c.component}: RPO {c.rpo_age_seconds / 3600:.2f} h (age of the restored data) "
                f"missed the target of {c.rpo_target_hours:g} h"
            )
        if c.worst_gap_seconds is not None and c.worst_gap_seconds >= limit:
            failures.append(
                f"{c.component}: worst gap between good backups {c.worst_gap_seconds / 3600:.2f} h "
                f"missed the target of {c.rpo_target_hours:g} h"
            )
    return failures


@flow(name="restore-drill")
def restore_drill(
    components: list[ComponentName] | None = None,
    recovery_point: str | None = None,
    targets: dict[str, str | Block] | None = None,
    store: str | StoreBlock | None = None,
    rto_target_minutes: float = 30,
    rpo_target_hours: float = 6,
    rpo_window_hours: float = 7 * 24,
    rpo_targets_hours: dict[str, float] | None = None,
    health_checks: list[HealthCheck] | None = None,
    fail_on_production_change: bool = True,
    drill_id: str | None = None,
) -> DrillRecord:
    """Restore the newest backups (or a recovery point: 'latest' or an id) of every component
    (or the listed ones) into isolation; verify; measure RTO/RPO against the targets; clean up.
    Fails when any covered component fails or a target is missed; the record is stored either way."""
    logger = get_run_logger()
    per_component = dict(rpo_targets_hours or {})
    if min([rto_target_minutes, rpo_target_hours, rpo_window_hours, *per_component.values()]) <= 0:
        raise BadInput("RTO/RPO targets and the RPO window must be positive")
    if set(per_component) - set(SPECS):
        raise BadInput(
            f"rpo_targets_hours names unknown components {sorted(set(per_component) - set(SPECS))}"
        )
    store_block = load_store(store)
    drill_id = drill_id or new_drill_id()
    if not re.fullmatch(r"[a-z0-9]{1,40}", drill_id):
        raise BadInput(f"drill id {drill_id!r}: use lower-case letters and digits only")
    explicit = bool(components)
    names = [ComponentName(c).value for c in components] if components else list(SPECS)
    names = [c for c in ORDER if c in names]
    checks = list(health_checks or [])
    unknown = [c.component for c in checks if c.component and c.component not in SPECS]
    if unknown:
        raise BadInput(f"health checks name unknown components {unknown}")
    started = datetime.now(UTC)
    rp = _source(store_block, recovery_point)
    results = []
    for name in names:
        try:
            results.append(
                _drill_one(
                    name,
                    explicit,
                    (targets or {}).get(name),
                    store_block,
                    drill_id,
                    started,
                    timedelta(hours=rpo_window_hours),
                    rp,
                    checks,
                    fail_on_production_change,
                    per_component.get(name, rpo_target_hours),
                )
            )
        except Exception as exc:  # one component's surprise must not cost the others their drill
            logger.exception("drill of %s failed unexpectedly", name)
            results.append(
                ComponentDrill(component=name, status=Status.failed, reason=f"{type(exc).__name__}: {exc}")
            )
    overall: list[CheckResult] = [run_health_check(c, drill_id) for c in checks if not c.component]
    finished = datetime.now(UTC)
    verified = [c for c in results if c.status is Status.verified]
    rto = None
    if verified:
        end = finished if overall else max(c.verified_at for c in verified)
        rto = (end - min(c.restore_started for c in verified)).total_seconds()
    covered = [c for c in results if c.rpo_age_seconds is not None and c.status is not Status.not_covered]
    record = DrillRecord(
        id=drill_id,
        started_at=started,
        finished_at=finished,
        recovery_point=rp[0],
        rto_target_minutes=rto_target_minutes,
        rpo_target_hours=rpo_target_hours,
        rpo_window_hours=rpo_window_hours,
        components=results,
        health=overall,
        rto_seconds=rto,
        rpo_seconds=max((c.rpo_age_seconds for c in covered), default=None),
        worst_gap_seconds=max((c.worst_gap_seconds for c in covered), default=None),
        failures=[],
    )
    record.failures = _verdict(record, rto_target_minutes)
    record = save_drill_record(store_block, record)
    for c in record.components:  # metrics (tasks/metrics.py): one outcome per covered component
        if c.status is not Status.not_covered:
            record_drill(c.component, c.status is Status.verified, c.rto_seconds or 0.0, c.rpo_age_seconds)
    create_markdown_artifact(
        key="restore-drill", markdown=drill_report_markdown(record), description=f"restore drill {drill_id}"
    )
    logger.info("%s", drill_report_text(record))
    if record.failures:
        raise DrillFailed(f"restore drill {drill_id} FAILED ({record.key}): " + "; ".join(record.failures))
    return record


def last_drill_report(store: str | StoreBlock | None = None) -> str:
    """The newest stored drill as plain text (for the demo, also after a failed drill)."""
    records = list_drill_records(load_store(store))
    if not records:
        raise NotFound("no restore drill has been recorded in this store yet: run restore_drill()")
    return drill_report_text(records[-1])


# --- full cluster restore (DR scenario 1) -----------------------------------------------------


def _step_key(store: StoreBlock, run_id: str, index: int, step: str) -> str:
    return layout(store).dr_step_key(run_id, index, step)


def _read(store: StoreBlock, key: str) -> dict | None:
    try:
        return get_record(store, key)
    except NotFound:
        return None


def _etcd_plan(manifest: Manifest) -> dict[str, Any]:
    """etcd comes back by rebuilding members from the snapshot: the commands, not an action."""
    snap = manifest.objects[0]
    return {
        "snapshot_backup": manifest.id,
        "object": snap.key,
        "raw_sha256": snap.raw_sha256,
        "steps": [
            f"download and check: restore_component('etcd', '{manifest.id}') or read_object -> snapshot.db",
            "ETCDCTL_API=3 etcdctl snapshot status snapshot.db -w json  # revision, hash",
            "ETCDCTL_API=3 etcdctl snapshot restore snapshot.db --data-dir <new dir> "
            "--name <member> --initial-cluster <...> --initial-advertise-peer-urls <...>",
            "start each member on its new data dir, then check `etcdctl endpoint health`",
        ],
    }


def _verify_restored(
    done: dict[str, dict], manifests: dict[str, Manifest], targets: dict[str, str | Block]
) -> dict[str, Any]:
    """Each restored component as it is now; where both sides have a fingerprint, they must match."""
    out: dict[str, Any] = {}
    mismatched = []
    for name, rec in done.items():
        if rec.get("status") != "done" or not rec.get("restored"):
            continue
        state = load(name).describe_current_state(load_target(name, targets.get(name)))
        expected = manifests[name].fingerprint
        match = None if expected is None or "fingerprint" not in state else state["fingerprint"] == expected
        out[name] = {"state": state, "fingerprint_matches": match}
        if match is False:
            mismatched.append(name)
    if mismatched:
        raise ComponentFailed(f"after the restore, {mismatched} do not match their backups' fingerprints")
    return out


def _run_step(
    component: str | None,
    plan_action: str,
    manifests: dict[str, Manifest],
    targets: dict[str, str | Block],
    store: StoreBlock,
    options: dict[str, Any] | None,
    done: dict[str, dict],
) -> dict[str, Any]:
    if component is None:
        return {"status": "done", "verified": _verify_restored(done, manifests, targets)}
    manifest = manifests.get(component)
    if manifest is None or plan_action == "skip":
        return {"status": "skipped", "reason": "nothing to restore or not configured (see the plan)"}
    if component in PLAN_ONLY:
        return {"status": "done", "restored": False, "plan": _etcd_plan(manifest)}
    target = load_target(component, targets.get(component))
    verify_task(manifest, store, target)
    report = restore_task(manifest, target, store, options)
    return {"status": "done", "restored": True, "backup_id": manifest.id, "report": report}


@flow(name="full-cluster-restore")
def full_cluster_restore(
    recovery_point: str = "latest",
    targets: dict[str, str | Block] | None = None,
    store: str | StoreBlock | None = None,
    dry_run: bool = True,
    run_id: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """DR scenario 1: bring every component back from one recovery point, in order (namespaces
    and CRDs, volumes, databases, etcd plan, RabbitMQ, app state, verify). Shows the plan first;
    `dry_run=False` to act. Each step's record is kept under <prefix>/dr-runs/<run-id>/: re-run
    with the same `run_id` to resume, completed steps are skipped."""
    logger = get_run_logger()
    store_block = load_store(store)
    run_key = layout(store_block).dr_run_key(run_id or "-")
    run = _read(store_block, run_key) if run_id else None
    if run_id and not dry_run and run is None:
        raise NotFound(f"no full cluster restore run {run_id} to resume in {store_block.location}")
    if run is not None:
        if recovery_point not in ("latest", run["recovery_point"]):
            raise BadInput(
                f"run {run_id} restores recovery point {run['recovery_point']}, not {recovery_point}: "
                "resume it with the same point, or start a new run"
            )
        recovery_point = run["recovery_point"]
    plan = build_plan(store_block, recovery_point=recovery_point, targets=targets)
    create_markdown_artifact(
        key="full-cluster-restore-plan",
        markdown=plan_markdown(plan, "Full cluster restore plan" + (" (dry run)" if dry_run else "")),
    )
    if dry_run:
        return {"dry_run": True, "recovery_point": plan.source, "plan": plan.model_dump(mode="json")}
    rp = get_recovery_point(store_block, plan.source)
    manifests = member_manifests(store_block, rp)
    if run is None:
        run_id = new_backup_id("dr")
        run_key = layout(store_block).dr_run_key(run_id)
        put_record(
            store_block, run_key, {"run_id": run_id, "recovery_point": rp.id, "created": datetime.now(UTC)}
        )
    done: dict[str, dict] = {}
    statuses: dict[str, str] = {}
    for index, (step, component) in enumerate(DR_STEPS, start=1):
        key = _step_key(store_block, run_id, index, step)
        previous = _read(store_block, key)
        if previous and previous.get("status") == "done":
            logger.info("step %s already done in run %s: skipped", step, run_id)
            statuses[step] = "done (earlier run)"
            if component:
                done[component] = previous
            continue
        action = plan.step(component).action if component else "verify"
        started = datetime.now(UTC)
        try:
            outcome = _run_step(
                component,
                action,
                manifests,
                targets or {},
                store_block,
                (options or {}).get(component) if component else None,
                done,
            )
        except Exception as exc:
            put_record(
                store_block, key, {"step": step, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            )
            raise RuntimeError(
                f"full cluster restore step {step} failed: {exc}. Fix it and resume with run_id={run_id!r}"
            ) from exc
        outcome |= {"step": step, "component": component, "started": started, "finished": datetime.now(UTC)}
        put_record(store_block, key, outcome)
        statuses[step] = outcome["status"]
        if component:
            done[component] = outcome
    rows = "".join(f"| {i} | {s} | {statuses[s]} |\n" for i, (s, _) in enumerate(DR_STEPS, start=1))
    create_markdown_artifact(
        key="full-cluster-restore",
        markdown=f"# Full cluster restore {run_id} from {rp.id}\n\n"
        f"| # | step | status |\n|---|---|---|\n{rows}",
    )
    return {"dry_run": False, "run_id": run_id, "recovery_point": rp.id, "steps": statuses}
