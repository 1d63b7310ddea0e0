"""Scheduled backups as runs: a transient failure is retried within the run (minutes, not the next
slot), the run is named after the component and then the backup, and the manifest records the
flow run that made it."""

from __future__ import annotations

import threading
import time

from prefect.client.orchestration import get_client

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.locks import component_lock
from tasks.storage.catalog import get_backup


def _target(tmp_path) -> AppStateTarget:
    state = tmp_path / "state.json"
    state.write_text('{"sessions": 3}')
    step = AppStateStep(name="state", backup_command=["cat", str(state)], restore_command=["true"])
    return AppStateTarget(steps=[step])


def test_run_is_named_after_the_backup_and_the_manifest_records_the_run(
    prefect_server, local_store, tmp_path
):
    store = local_store()
    state = backup_component("app-state", target=_target(tmp_path), store=store, return_state=True)
    result = state.result()
    manifest = get_backup(store, result.id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert manifest.labels["flow_run_id"] == str(run.id)
    assert run.name == f"backup-{result.id}"  # was backup-app-state until the id was known


def test_a_transient_failure_is_retried_within_the_run(prefect_server, local_store, tmp_path, monkeypatch):
    """Another run holds the component's lock past the wait: TransientError, retried after the
    delay, and the backup is made in the same flow run."""
    monkeypatch.setenv("KLB_COMPONENT_LOCK_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("KLB_BACKUP_RETRIES", "2")
    monkeypatch.setenv("KLB_BACKUP_RETRY_DELAY_SECONDS", "1.5")
    held = threading.Event()

    def hold() -> None:
        with component_lock("app-state", timeout_seconds=30):
            held.set()
            time.sleep(2)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    try:
        result = backup_component("app-state", target=_target(tmp_path), store=local_store())
    finally:
        holder.join()
    assert result.verified


def test_a_run_the_schedule_made_is_labelled_scheduled_and_one_asked_for_is_on_demand(
    prefect_server, local_store, tmp_path, caplog
):
    """The deployment's schedule makes auto-scheduled runs (here a backfill through the server's
    own scheduling endpoint); a run asked for by hand is on-demand. Each backup says which."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.flow_engine import run_flow

    store, target = local_store(), _target(tmp_path)
    deployment_id = backup_component.to_deployment(
        name=f"kinds-{time.monotonic_ns()}",
        schedule=IntervalSchedule(interval=timedelta(hours=1)),
        parameters={"component": "app-state"},
    ).apply()
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        client.request(
            "POST",
            "/deployments/{id}/schedule",
            path_params={"id": deployment_id},
            json={
                "start_time": (now - timedelta(hours=3)).isoformat(),
                "end_time": now.isoformat(),
                "max_runs": 1,
            },
        )
        mine = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        [scheduled] = client.read_flow_runs(deployment_filter=mine)  # the backfill, made by the schedule
        assert scheduled.deployment_id == deployment_id and scheduled.auto_scheduled
        by_hand = client.create_flow_run_from_deployment(deployment_id)
    kinds = {}
    for run in (scheduled, by_hand):
        result = run_flow(
            backup_component,
            flow_run=run,
            parameters={"component": "app-state", "target": target, "store": store},
        )
        kinds[run.id] = get_backup(store, result.id).labels["kind"]
    assert kinds == {scheduled.id: "scheduled", by_hand.id: "on-demand"}
    assert "could not tell whether a schedule started this run" not in caplog.text
