"""The steps of one full cluster restore run (flows/scenarios.py:full_cluster_restore), each
recorded in the store so that the run can be resumed. The caller holds the full cluster restore
lock; each step that changes a component holds that component's lock too, and reads and writes
its step record under it."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.store import StoreBlock
from flows.common import TargetBlock
from flows.locks import component_lock
from tasks.errors import BackupError, ComponentFailed
from tasks.ids import new_backup_id
from tasks.markdown import table
from tasks.metrics import tracked
from tasks.operations.full_restore import (
    left_out,
    not_verified,
    read_step,
    run_key,
    run_settings,
    run_step,
    step_key,
    verify_pending,
)
from tasks.operations.plan import DR_STEPS, RestorePlan
from tasks.operations.recovery import get_recovery_point, member_manifests
from tasks.storage.records import put_record


def run_steps(
    store_block: StoreBlock,
    plan: RestorePlan,
    run: dict[str, Any] | None,
    run_id: str | None,
    settings: dict[str, Any] | None,
    targets: dict[str, str | TargetBlock] | None,
    options: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """Every step of a full cluster restore (`run`: the one resumed, None: a new one)."""
    logger = get_run_logger()
    rp = get_recovery_point(store_block, plan.source)
    manifests = member_manifests(store_block, rp)
    # every backup the run will restore, checked before it changes anything
    checked = verify_pending(store_block, run_id if run else None, rp.id, plan, manifests, targets or {})
    if run is not None and settings is not None:  # a target configured since: held to it from now on
        put_record(store_block, run_key(store_block, run_id), {**run, "settings": settings})
    if run is None:
        run_id = new_backup_id("dr")
        put_record(
            store_block,
            run_key(store_block, run_id),
            {
                "run_id": run_id,
                "recovery_point": rp.id,
                "created": datetime.now(UTC),
                "settings": run_settings(targets or {}, options or {}),
            },
        )
    done: dict[str, dict] = {}
    statuses: dict[str, str] = {}
    for index, (step, component) in enumerate(DR_STEPS, start=1):
        key = step_key(store_block, run_id, index, step)
        action = plan.step(component).action if component else "verify"
        args = (action, manifests, targets or {}, store_block, (options or {}).get(component), done)
        try:
            outcome, earlier = _step(store_block, key, step, component, args, component in checked)
        except Exception as exc:
            message = (
                f"full cluster restore step {step} failed: {exc}. Fix it and resume with run_id={run_id!r}"
            )
            # a failure the project names (BackupError) stays one: one line, no traceback; a bug
            # (any other exception) keeps its traceback
            raise (ComponentFailed if isinstance(exc, BackupError) else RuntimeError)(message) from exc
        if earlier:
            logger.info("step %s already done in run %s: skipped", step, run_id)
            statuses[step] = "done (earlier run)"
        else:
            statuses[step] = outcome["status"]
            if unchecked := not_verified(outcome):  # "done" must not read as verified
                why = "; ".join(f"{n} ({why})" for n, why in unchecked.items())
                statuses[step] += "; not verified: " + why
        if component:
            done[component] = outcome
    # a component of the point that did not come back: never a run that reads as done
    missed = left_out(rp, done, targets or {})
    for step, component in DR_STEPS:
        if component in missed:
            statuses[step] = f"NOT RESTORED: {missed[component]}"
    rows = [(i, s, statuses[s]) for i, (s, _) in enumerate(DR_STEPS, start=1)]
    create_markdown_artifact(
        key="full-cluster-restore",
        markdown=f"# Full cluster restore {run_id} from {rp.id}\n\n" + table(["#", "step", "status"], rows),
    )
    if missed:
        raise ComponentFailed(
            f"full cluster restore {run_id} from {rp.id} did not restore "
            + "; ".join(f"{c}: {why}" for c, why in missed.items())
            + f". The other steps are done; resume with run_id={run_id!r} once that is fixed"
        )
    # the restore record of each step that wrote (an earlier run's too): what a rollback checks
    records = {c: o["restore_id"] for c, o in done.items() if c and o.get("restore_id")}
    return {
        "dry_run": False,
        "run_id": run_id,
        "recovery_point": rp.id,
        "steps": statuses,
        "restore_ids": records,
    }


def _step(
    store: StoreBlock, key: str, step: str, component: str | None, args: tuple, verified: bool
) -> tuple[dict[str, Any], bool]:
    """One step of a run: (its record, whether an earlier run did it). The step that changes a
    component holds its lock, and its record is read and written under it: two resumes of one
    run both wait for the lock, and the second finds the step done by the first (read before
    the lock, both restored it). A step that restores pushes its restore metrics (a failure too)."""
    with component_lock(component) if component else contextlib.nullcontext():
        previous = read_step(store, key)
        if previous and previous.get("status") == "done":
            return previous, True
        started = datetime.now(UTC)
        restores = component is not None and args[0] in ("create", "replace")
        try:
            with tracked("restore", component) if restores else contextlib.nullcontext():
                outcome = run_step(component, *args, verified)
        except Exception as exc:
            failed = {"step": step, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            put_record(store, key, failed)
            raise
        outcome |= {"step": step, "component": component, "started": started, "finished": datetime.now(UTC)}
        put_record(store, key, outcome)
        return outcome, False
