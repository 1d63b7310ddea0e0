"""The monthly restore drill (runbook "Monthly Restore Drill Procedure").

The drill restores each component into isolation through the component's own `drill` verb
(tasks/components/contract.py), so it cannot touch production by construction; it times each
restore (RTO), measures how old the restored data is and the worst gap between good backups (RPO),
checks production did not change, records the result in the store and as an artifact, and fails
when a covered component fails or a target is missed. A component that is not configured is
reported "not configured", never passed; a configured component that is not verified fails the
drill. The verdict's headline says "N of M components verified, K not configured". The rules live
in tasks/operations/drill_run.py.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from flows.common import StoreRef, TargetBlock, load_store
from flows.inputs import MAX_HOURS, component_names, positive
from flows.inputs import per_component as per_component_of
from flows.locks import component_lock, lock_name
from tasks.components.registry import SPECS, ComponentName
from tasks.errors import BackupError, BadInput, NotFound
from tasks.metrics import record_drill
from tasks.operations.drill_run import drill_component, drill_source, drill_verdict, passed_for
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
    run_health_check,
    save_drill_record,
)
from tasks.operations.plan import ORDER

__all__ = ["restore_drill", "drill_report_text", "last_drill_report", "DrillFailed"]


def _in_cluster_lock(component: str) -> contextlib.AbstractContextManager:
    """A drill of kubernetes or volumes restores into the live cluster (`restore-drill-*`
    namespaces, apps at 0 replicas, their claims): a kubernetes or volumes backup of every
    namespace in that time kept the drill's copy, and a restore of it brought that copy back. It
    holds their lock (flows/locks.py); the other components drill aside, outside production."""
    if lock_name(component) == lock_name("kubernetes"):
        return component_lock(component)
    return contextlib.nullcontext()


class DrillFailed(BackupError):
    """The drill ran, and recoverability is NOT proven: see the record and the artifact."""


@flow(name="restore-drill")
def restore_drill(
    components: list[ComponentName] | None = None,
    recovery_point: str | None = None,
    targets: dict[str, str | TargetBlock] | None = None,
    store: StoreRef = None,
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
    Fails when any covered component fails or a target is missed; the record is stored either way.

    Args:
        components: The components to include (empty: every component that has a target configured).
        recovery_point: 'latest' or a recovery point id (a set of backups taken together
            by backup-all); empty: each component's newest backup.
        targets: Component name -> name of its target block (from Python, block objects); empty:
            each component's default target.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        rto_target_minutes: Recovery time objective: a component's drill restore taking longer fails
            the drill.
        rpo_target_hours: Recovery point objective: a newest backup older than this fails the drill.
        rpo_window_hours: How far back the RPO is measured over (the largest gap between backups in
            this window).
        rpo_targets_hours: Per-component RPO overrides in hours, e.g. {"postgres": 6, "etcd": 1}.
        health_checks: Extra checks run against the restored copies (HTTP or command), each with a
            name.
        fail_on_production_change: Fail the drill if production looks different after it (isolation
            check).
        drill_id: Identifier of this drill, 1-24 lower-case letters and digits (names its isolated
            namespaces/databases); empty: generated.
    """
    logger = get_run_logger()
    positive("rto_target_minutes", rto_target_minutes, maximum=MAX_HOURS * 60)
    positive("rpo_target_hours", rpo_target_hours)
    positive("rpo_window_hours", rpo_window_hours)
    per_component = per_component_of("rpo_targets_hours", rpo_targets_hours)
    for name, value in per_component.items():
        positive(f"rpo_targets_hours[{name!r}]", value)
    targets = per_component_of("targets", targets)
    names = component_names(components)  # None: every component; [] is a mistake, never "all"
    store_block = load_store(store)
    # 24: the longest every component can name its copies from (postgres's drill_<id>; the
    # Kubernetes namespaces keep 30), so two ids never share a copy and none fails mid-drill
    if drill_id and not re.fullmatch(r"[a-z0-9]{1,24}", drill_id):
        raise BadInput(f"drill id {drill_id!r}: use 1-24 lower-case letters and digits")
    if drill_id and any(r.id == drill_id for r in list_drill_records(store_block)):
        # the record would be overwritten (the trend loses a drill) and the names of its
        # isolated copies are the earlier drill's: one id, one drill
        raise BadInput(f"drill id {drill_id!r} is the id of a recorded drill: give a new one, or none")
    drill_id = drill_id or new_drill_id()
    explicit = components is not None
    names = [c for c in ORDER if c in names]
    checks = list(health_checks or [])
    unknown = [c.component for c in checks if c.component and c.component not in SPECS]
    if unknown:
        raise BadInput(f"health checks name unknown components {unknown}")
    # a check of a component the drill leaves out would never run, and the drill would pass
    left_out = sorted({c.component for c in checks if c.component and c.component not in names})
    if left_out:
        raise BadInput(
            f"health checks are for {left_out}, which this drill does not include ({', '.join(names)}): "
            "add them to components, or drop those checks; nothing was run"
        )
    started = datetime.now(UTC)
    rp = drill_source(store_block, recovery_point, targets)
    results = []
    for name in names:
        try:
            with _in_cluster_lock(name):
                results.append(
                    drill_component(
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
    record.failures = drill_verdict(record, rto_target_minutes)
    record = save_drill_record(store_block, record)
    for c in record.components:  # metrics (tasks/metrics.py): one outcome per configured component
        # a configured component that covered nothing failed the drill: its metrics say so (left
        # out, its last success stayed the newest and the drill alert stayed quiet); a missed
        # target is a failure too, not a green drill
        if c.configured:
            ok = passed_for(record, c.component, rto_target_minutes)
            # a failed one has no RTO: its duration is the time its phases took (0 s put every
            # failure in the lowest bucket and said the drill took no time)
            spent = c.rto_seconds if c.rto_seconds is not None else sum(c.rto_phases.values())
            record_drill(c.component, ok, spent, c.rto_seconds if ok else None, c.rpo_age_seconds)
    create_markdown_artifact(
        key="restore-drill", markdown=drill_report_markdown(record), description=f"restore drill {drill_id}"
    )
    logger.info("%s", drill_report_text(record))
    if record.failures:
        raise DrillFailed(
            f"restore drill {drill_id} {record.headline} ({record.key}): " + "; ".join(record.failures)
        )
    return Completed(message=f"restore drill {drill_id} {record.headline}", data=record)


def last_drill_report(store: StoreRef = None, drill_id: str | None = None) -> str:
    """The newest stored drill (or the one named) as plain text (for the demo and `klb drill`,
    also after a failed drill)."""
    records = [r for r in list_drill_records(load_store(store)) if drill_id in (None, r.id)]
    if not records:
        raise NotFound(
            f"no restore drill {drill_id or ''} has been recorded in this store yet: run restore_drill()"
        )
    return drill_report_text(records[-1])
